/* WebSocket (RFC 6455) codec for DERP over WebSocket (spec PROTOCOL.md §3.5): the accept
 * key, frame headers, masking, close payloads, and a stream decoder that turns a client's
 * wire bytes into the DERP byte stream in place. Pure functions, no I/O, no allocation.
 * Compression is never negotiated, so every RSV bit is an error. */
#ifndef DERPD_WEBSOCKET_H
#define DERPD_WEBSOCKET_H
#include <stddef.h>
#include <stdint.h>

#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#define WS_MAX_HEADER 14        /* 2 + 8 (64-bit length) + 4 (mask) */
#define WS_MAX_CONTROL 125      /* control frame payload limit */
/* Upstream's WebSocket library closes with 1009 when one client message exceeds 32768
 * bytes (its default read limit, which derper never raises). */
#define WS_READ_LIMIT 32768

enum ws_opcode {
	WS_OP_CONT = 0x0, WS_OP_TEXT = 0x1, WS_OP_BINARY = 0x2,
	WS_OP_CLOSE = 0x8, WS_OP_PING = 0x9, WS_OP_PONG = 0xa,
};

enum ws_status {
	WS_CLOSE_NORMAL = 1000, WS_CLOSE_GOING_AWAY = 1001, WS_CLOSE_PROTOCOL = 1002,
	WS_CLOSE_UNSUPPORTED = 1003, WS_CLOSE_NO_STATUS = 1005, WS_CLOSE_INVALID_DATA = 1007,
	WS_CLOSE_POLICY = 1008,
	WS_CLOSE_TOO_BIG = 1009, WS_CLOSE_INTERNAL = 1011,
};

/* Sec-WebSocket-Accept for a client key: base64(SHA-1(key + GUID)) via wolfSSL.
 * out: 29 bytes incl NUL. 0 or -1. */
int ws_accept_key(const char *key, size_t keylen, char out[29]);
/* The Sec-WebSocket-Key value is valid as upstream checks it: after trimming surrounding
 * whitespace, standard padded base64 of exactly 16 bytes (CR/LF inside are ignored).
 * 1 or 0. */
int ws_key_valid(const char *key, size_t keylen);
/* Find token (case-insensitive) in a comma-separated header value such as
 * Sec-WebSocket-Protocol; returns the client's spelling (*toklen bytes) or NULL. */
const char *ws_header_token(const char *value, size_t len, const char *token, size_t *toklen);

struct ws_frame { uint8_t fin, opcode, masked, rsv; uint64_t len; uint8_t mask[4]; };
/* Parse a frame header at buf: >0 header length, 0 need more bytes, -1 protocol error
 * (RSV bits set, reserved opcode, control frame > 125 bytes or fragmented, 64-bit length
 * with the top bit set; with require_mask (a server reading client frames) an unmasked
 * frame). Without require_mask a masked frame is accepted (f->masked says so). */
int ws_parse_header(const uint8_t *buf, size_t len, int require_mask, struct ws_frame *f);
/* Unmask n bytes in place; offset = bytes of this frame's payload already unmasked. */
void ws_unmask(uint8_t *data, size_t n, const uint8_t mask[4], uint64_t offset);
/* Server frame header (unmasked): returns its length (2, 4 or 10). */
size_t ws_build_header(uint8_t out[10], uint8_t opcode, int fin, uint64_t len);
/* Client frame header with a mask key (for tests and tools): 6, 8 or 14 bytes. The payload
 * that follows must be masked with ws_unmask (XOR is its own inverse). */
size_t ws_build_masked_header(uint8_t out[14], uint8_t opcode, int fin, uint64_t len,
			      const uint8_t mask[4]);
/* Close frame payload: big-endian status then reason, cut to 123 bytes at a UTF-8
 * boundary. status 0 = empty payload. Returns its length. */
size_t ws_build_close(uint8_t out[2 + 123], uint16_t status, const char *reason);
/* A received close payload is acceptable (upstream's rules: empty, or a 2-byte status that
 * is 1000-1014 except 1004-1006, or 3000-4999, then a reason that is valid UTF-8, as
 * RFC 6455 7.1.6 requires). *status = 1005 when empty. 0, -1 (bad status or length), or
 * -2 (the reason is not UTF-8: answered with 1007). */
int ws_parse_close(const uint8_t *p, size_t len, uint16_t *status);

/* ---- stream decoder: client wire bytes -> DERP byte stream ---- */

enum ws_dec_result {
	WS_DEC_ERROR = -1,   /* close with d->err_status, d->err_reason */
	WS_DEC_MORE = 0,     /* all input used; call again when more arrives */
	WS_DEC_CONTROL = 1,  /* stopped after a whole control frame: d->ctl_opcode, d->ctl */
};

struct ws_decoder {
	uint64_t limit;          /* max bytes of one data message, 0 = none */
	struct ws_frame f;       /* frame whose payload is being read */
	uint64_t done;           /* payload bytes of f already consumed */
	uint64_t msg_len;        /* bytes of the current data message so far */
	uint8_t in_frame;        /* f is valid, payload pending */
	uint8_t in_message;      /* a data message has started and has not seen FIN */
	uint8_t hlen;            /* header bytes carried over from the last call */
	uint8_t hdr[WS_MAX_HEADER];
	uint8_t ctl_opcode;      /* WS_DEC_CONTROL: WS_OP_CLOSE, _PING or _PONG */
	uint8_t ctl_len;
	uint8_t ctl[WS_MAX_CONTROL]; /* unmasked control payload */
	uint16_t err_status;     /* WS_DEC_ERROR: close status to send */
	const char *err_reason;  /* WS_DEC_ERROR: why (static text) */
};

/* A server-side decoder (client frames must be masked) with upstream's WS_READ_LIMIT. */
void ws_decoder_init(struct ws_decoder *d);
/* Decode in[0..n). Payload bytes of binary messages are unmasked and written to out, which
 * may be in itself (bytes only ever move towards the front, headers are squeezed out).
 * *used = input bytes consumed, *made = output bytes written; both are set on every
 * result. A text message is an error (1003), as upstream; a message over d->limit is
 * 1009; everything malformed is 1002. A close frame with a bad payload is an error; a good
 * one is returned as WS_DEC_CONTROL like ping and pong (answer a ping with a pong carrying
 * the same payload; answer a close with a close and hang up). */
int ws_decode(struct ws_decoder *d, const uint8_t *in, size_t n, uint8_t *out, size_t *used,
	      size_t *made);

#endif
