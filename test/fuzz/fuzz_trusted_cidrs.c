/* libFuzzer: TS_DEBUG_TRUSTED_CIDRS (and TS_ALLOW_DEBUG_IP), read at start-up, then the
 * access decision for a few peers against what was parsed. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "metrics/internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *v = malloc(size + 1), err[256];
	struct sockaddr_in a4 = { .sin_family = AF_INET };
	struct sockaddr_in6 a6 = { .sin6_family = AF_INET6 };

	if (!v)
		return 0;
	memcpy(v, data, size);
	v[size] = '\0';
	/* the first line is TS_ALLOW_DEBUG_IP, the rest the CIDR list */
	char *nl = strchr(v, '\n');
	if (nl)
		*nl = '\0';
	setenv("TS_ALLOW_DEBUG_IP", nl ? v : "", 1);
	setenv("TS_DEBUG_TRUSTED_CIDRS", nl ? nl + 1 : v, 1);
	err[0] = '\0';
	if (debug_access_init(err, sizeof err) == 0) {
		inet_pton(AF_INET, "10.1.2.3", &a4.sin_addr);
		inet_pton(AF_INET6, "2001:db8::1", &a6.sin6_addr);
		debug_access_allowed((struct sockaddr *)&a4, 1, NULL, 0);
		debug_access_allowed((struct sockaddr *)&a6, 0, NULL, 0);
		inet_pton(AF_INET6, "::ffff:192.168.0.1", &a6.sin6_addr);
		debug_access_allowed((struct sockaddr *)&a6, 1, NULL, 0);
	} else if (!err[0]) {
		abort();
	}
	free(v);
	return 0;
}
