/* STUN (RFC 5389) as derper speaks it: a codec with no I/O, and a responder thread that
 * answers Tailscale's Binding requests on its own UDP sockets (SERVER.md §7). */
#ifndef DERPD_STUN_H
#define DERPD_STUN_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define STUN_HEADER_LEN   20
#define STUN_TXID_LEN     12
#define STUN_REQUEST_LEN  40 /* Tailscale's request: header, SOFTWARE "tailnode", FINGERPRINT */
#define STUN_RESPONSE_MAX 44 /* success response carrying an IPv6 XOR-MAPPED-ADDRESS */

/* Parse outcomes; the server counts every non-zero one as not_stun. */
enum stun_result {
	STUN_OK = 0,
	STUN_ERR_NOT_STUN = -1,             /* short, top bits set, or no magic cookie */
	STUN_ERR_NOT_BINDING_REQUEST = -2,  /* method/class other than 0x0001 */
	STUN_ERR_MALFORMED_ATTRS = -3,      /* attribute runs past the datagram, bad address */
	STUN_ERR_WRONG_SOFTWARE = -4,       /* no SOFTWARE attribute equal to "tailnode" */
	STUN_ERR_NO_FINGERPRINT = -5,       /* last attribute is not FINGERPRINT */
	STUN_ERR_WRONG_FINGERPRINT = -6,    /* CRC-32 ^ 0x5354554e mismatch */
	STUN_ERR_NOT_SUCCESS_RESPONSE = -7, /* response parser: not 0x0101 */
};

/* Upstream's "is this STUN at all": >= 20 bytes, top two bits zero, magic cookie. */
bool stun_is(const uint8_t *b, size_t n);

/* Accept only a Binding request that says it comes from Tailscale (SOFTWARE "tailnode",
 * FINGERPRINT last and correct). On STUN_OK copies the transaction ID to txid. */
int stun_parse_binding_request(const uint8_t *b, size_t n, uint8_t txid[STUN_TXID_LEN]);

/* Tailscale's 40-byte Binding request for txid (what tailscaled sends). Returns 40. */
size_t stun_build_request(const uint8_t txid[STUN_TXID_LEN], uint8_t out[STUN_REQUEST_LEN]);

/* Binding success response with one XOR-MAPPED-ADDRESS for src (AF_INET or AF_INET6).
 * IPv4 and IPv4-mapped IPv6 sources get family 0x01 (32 bytes), others family 0x02
 * (44 bytes). Returns the length, or 0 for an unsupported address family. */
size_t stun_build_response(const uint8_t txid[STUN_TXID_LEN], const struct sockaddr *src,
			   uint8_t out[STUN_RESPONSE_MAX]);

/* Parse a Binding success response as tailscaled does: XOR-MAPPED-ADDRESS (0x0020 or
 * 0x8020) wins over MAPPED-ADDRESS; IPv4-mapped results are unmapped to AF_INET. */
int stun_parse_response(const uint8_t *b, size_t n, uint8_t txid[STUN_TXID_LEN],
			struct sockaddr_storage *addr);

const char *stun_strerror(int result);

/* ---- the responder thread ---- */
struct stun_server;

/* Bind UDP sockets on host ("" = all interfaces: one IPv4 and one IPv6-only socket) and
 * port (0 = ephemeral, same port for both families), start the thread. Logs
 * "STUN server listening on <addr:port>" per socket with the real port. NULL + err on
 * failure (derpd fails start-up where derper silently ignores a bind error). */
struct stun_server *stun_start(const char *host, int port, char *err, size_t errlen);
int stun_port(const struct stun_server *s); /* the bound port */
void stun_stop(struct stun_server *s);      /* stop thread, close sockets, free */

/* stun_requests{disposition=...} and stun_addrfamily{family=...}. */
struct stun_counters {
	uint64_t read_error, not_stun, write_error, success, ipv4, ipv6;
};
void stun_counters_get(struct stun_counters *out); /* process-wide, safe from any thread */

#endif
