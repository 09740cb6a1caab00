/* ClientInfo decoding, exposed for unit tests (CONFORMANCE.md items 7-11). */
#ifndef DERPD_HANDSHAKE_H
#define DERPD_HANDSHAKE_H
#include <stddef.h>
#include <stdint.h>

struct client_info {
	int64_t version;
	int can_ack_pings, is_prober;
	int has_mesh_key;        /* present and non-zero */
	uint8_t mesh_key[32];
};

/* 0 on success; -1 with a message in err (contains "invalid mesh key" for a bad key). */
int handshake_parse_client_info(const char *json, size_t len, struct client_info *ci,
				char *err, size_t errlen);

#endif
