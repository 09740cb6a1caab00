/* libFuzzer: the request-head parser sees the first bytes of every connection; a CONNECT
 * target goes on to the ACE target check. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "server/http_head.h"
#include "server/relay.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* A private copy with no slack after it, so any overread is caught. */
	char *buf = malloc(size ? size : 1);
	struct http_req r;

	memcpy(buf, data, size);
	int n = http_head_parse(buf, size, &r);
	if (n > 0) {
		if ((size_t)n > size || r.head_len != (size_t)n)
			abort();
		http_has_token(r.connection, "upgrade");
		http_str_ieq(r.upgrade, "derp");
		char t[300], host[256], port[8];
		if (r.target.n < sizeof t) {
			memcpy(t, r.target.p, r.target.n);
			t[r.target.n] = '\0';
			if (connect_target_allowed(t, host, sizeof host, port, sizeof port) &&
			    (!strstr(t, ".tailscale.com") || strstr(host, "derp") ||
			     (strcmp(port, "443") && strcmp(port, "80"))))
				abort(); /* allowed something the rule forbids */
		}
	}
	free(buf);
	return 0;
}
