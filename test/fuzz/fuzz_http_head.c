/* libFuzzer: the request-head parser sees the first bytes of every connection. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "server/http_head.h"

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
	}
	free(buf);
	return 0;
}
