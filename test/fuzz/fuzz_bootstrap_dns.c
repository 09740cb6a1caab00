/* libFuzzer: bootstrap DNS. The first byte picks the part: a DNS answer to the TXT query
 * that sets a name's rollout percentage (what the resolver hands back), or a
 * /bootstrap-dns?q= query string from a client, answered from a small installed map. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "metrics/internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void install(double percent)
{
	static const char *const a[] = { "192.0.2.1", "2001:db8::1" };
	struct dns_map *pub = dns_map_new(), *unpub = dns_map_new();

	dns_map_set(pub, "derp.example.com", a, 2, 1.0);
	dns_map_set(pub, "empty.example.com", a, 0, 1.0);
	dns_map_set(unpub, "hidden.example.com", a + 1, 1, percent);
	bootstrap_dns_install(pub, unpub);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct sockaddr_in6 peer = { .sin6_family = AF_INET6 };
	double percent = -1;

	if (size < 1)
		return 0;
	if (data[0] & 1) {
		uint8_t *ans = malloc(size - 1 ? size - 1 : 1);
		if (!ans)
			return 0;
		memcpy(ans, data + 1, size - 1);
		int r = bootstrap_dns_txt_percent(ans, size - 1, &percent);
		free(ans);
		if (r == 1 && !(percent >= 0 && percent <= 1))
			abort();
		if (r == 1)
			install(percent);
		return 0;
	}
	static int installed;
	if (!installed++)
		install(0.5);
	char *q = malloc(size);
	if (!q)
		return 0;
	memcpy(q, data + 1, size - 1);
	q[size - 1] = '\0';
	memcpy(&peer.sin6_addr, data[0] & 2 ? "\x20\x01\x0d\xb8\0\0\0\0\0\0\0\0\0\0\0\x01" :
	       "\0\0\0\0\0\0\0\0\0\0\xff\xff\xc0\xa8\x01\x02", 16);
	size_t len = 0;
	char *body = bootstrap_dns_answer(q, (struct sockaddr *)&peer, &len);
	if (body && strlen(body) != len)
		abort();
	free(body);
	free(q);
	return 0;
}
