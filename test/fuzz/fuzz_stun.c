/* libFuzzer target for the STUN codec: no input may crash either parser or read outside
 * the datagram (ASan), and whatever parses must obey the invariants the server relies on. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "stun/stun.h"

#define CHECK(c) do { if (!(c)) abort(); } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Copy into an exact-size heap buffer so ASan sees any read past the datagram. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint8_t *b = malloc(size ? size : 1);
	uint8_t tx[STUN_TXID_LEN], tx2[STUN_TXID_LEN];
	uint8_t resp[STUN_RESPONSE_MAX];
	struct sockaddr_storage a;

	if (!b)
		return 0;
	memcpy(b, data, size);

	bool is = stun_is(b, size);
	int r = stun_parse_binding_request(b, size, tx);
	if (r == STUN_OK) {
		/* Accepted means: STUN, a binding request, FINGERPRINT (4 bytes) last. */
		CHECK(is);
		CHECK(b[0] == 0x00 && b[1] == 0x01);
		CHECK(size >= 36);
		CHECK(b[size - 8] == 0x80 && b[size - 7] == 0x28);
		CHECK(memcmp(tx, b + 8, STUN_TXID_LEN) == 0);
		/* What the server would send back parses to the same txid and address. */
		struct sockaddr_in6 sin6 = { .sin6_family = AF_INET6, .sin6_port = htons(41641) };
		memcpy(&sin6.sin6_addr, b + size - 16, 16); /* any address, v4-mapped too */
		size_t n = stun_build_response(tx, (struct sockaddr *)&sin6, resp);
		CHECK(n == 32 || n == 44);
		CHECK(stun_parse_response(resp, n, tx2, &a) == STUN_OK);
		CHECK(memcmp(tx, tx2, STUN_TXID_LEN) == 0);
		CHECK(ntohs(a.ss_family == AF_INET ? ((struct sockaddr_in *)&a)->sin_port
						   : ((struct sockaddr_in6 *)&a)->sin6_port) == 41641);
		CHECK(stun_parse_binding_request(resp, n, tx2) == STUN_ERR_NOT_BINDING_REQUEST);
	} else {
		CHECK(r < 0 && r >= STUN_ERR_NOT_SUCCESS_RESPONSE);
		CHECK(is || r == STUN_ERR_NOT_STUN);
	}

	r = stun_parse_response(b, size, tx, &a);
	if (r == STUN_OK) {
		CHECK(is && b[0] == 0x01 && b[1] == 0x01);
		CHECK(a.ss_family == AF_INET || a.ss_family == AF_INET6);
		/* An IPv4-mapped result is always unmapped. */
		if (a.ss_family == AF_INET6)
			CHECK(!IN6_IS_ADDR_V4MAPPED(&((struct sockaddr_in6 *)&a)->sin6_addr));
	}
	free(b);
	return 0;
}
