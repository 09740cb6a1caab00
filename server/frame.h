/* DERP frame codec: the 5-byte header and the frame types (spec PROTOCOL.md §4-5).
 * Pure functions, no I/O, no allocation; shared by the server and the client. */
#ifndef DERPD_FRAME_H
#define DERPD_FRAME_H
#include <stddef.h>
#include <stdint.h>

#define FRAME_HEADER_LEN   5
#define DERP_KEY_LEN       32
#define DERP_NONCE_LEN     24
#define DERP_BOX_OVERHEAD  16
#define DERP_MAX_PACKET    65536u
#define DERP_PROTO_VERSION 2
#define DERP_MAGIC         "DERP\xf0\x9f\x94\x91"
#define DERP_MAGIC_LEN     8
#define CLIENTINFO_MIN     56u       /* key + nonce */
#define CLIENTINFO_MAX     262144u   /* server refuses longer */
#define PING_MIN           8u
#define PING_MAX           1000u
#define DISCO_MAGIC        "TS\xf0\x9f\x92\xac"
#define DISCO_MAGIC_LEN    6
#define DISCO_MIN_LEN      62u

enum frame_type {
	FRAME_SERVER_KEY     = 0x01,
	FRAME_CLIENT_INFO    = 0x02,
	FRAME_SERVER_INFO    = 0x03,
	FRAME_SEND_PACKET    = 0x04,
	FRAME_RECV_PACKET    = 0x05,
	FRAME_KEEP_ALIVE     = 0x06,
	FRAME_NOTE_PREFERRED = 0x07,
	FRAME_PEER_GONE      = 0x08,
	FRAME_PEER_PRESENT   = 0x09,
	FRAME_FORWARD_PACKET = 0x0a,
	FRAME_WATCH_CONNS    = 0x10,
	FRAME_CLOSE_PEER     = 0x11,
	FRAME_PING           = 0x12,
	FRAME_PONG           = 0x13,
	FRAME_HEALTH         = 0x14,
	FRAME_RESTARTING     = 0x15,
};

enum peer_gone_reason {
	PEER_GONE_DISCONNECTED   = 0x00,
	PEER_GONE_NOT_HERE       = 0x01,
	PEER_GONE_MESH_CONN_BROKE = 0xf0, /* never on the wire */
};

enum peer_present_flags {
	PEER_PRESENT_REGULAR   = 0x01,
	PEER_PRESENT_MESH_PEER = 0x02,
	PEER_PRESENT_PROBER    = 0x04,
	PEER_PRESENT_NOT_IDEAL = 0x08,
};

static inline uint32_t frame_get_be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static inline void frame_put_be32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);  p[3] = (uint8_t)v;
}

/* Write a header into p (5 bytes). */
static inline void frame_put_header(uint8_t *p, uint8_t type, uint32_t len)
{
	p[0] = type;
	frame_put_be32(p + 1, len);
}

/* Parse a header from p (5 bytes). */
static inline void frame_get_header(const uint8_t *p, uint8_t *type, uint32_t *len)
{
	*type = p[0];
	*len = frame_get_be32(p + 1);
}

/* A packet "looks like disco" (PROTOCOL.md §7.4). */
int frame_is_disco(const uint8_t *pkt, size_t len);

/* Builders for the small fixed frames; each returns the bytes written. */
size_t frame_server_key(uint8_t out[45], const uint8_t pub[DERP_KEY_LEN]);
size_t frame_peer_gone(uint8_t out[38], const uint8_t key[DERP_KEY_LEN], uint8_t reason);
/* ip16 is the 16-byte (IPv4-mapped for v4) address. */
size_t frame_peer_present(uint8_t out[56], const uint8_t key[DERP_KEY_LEN],
			  const uint8_t ip16[16], uint16_t port, uint8_t flags);
size_t frame_pong(uint8_t out[13], const uint8_t data[8]);
size_t frame_keep_alive(uint8_t out[5]);
size_t frame_restarting(uint8_t out[13], uint32_t reconnect_ms, uint32_t try_for_ms);

#endif
