/* libFuzzer: what the admission path reads from the network: tailscaled's whois answer and
 * the --verify-client-url webhook's reply, fed as libcurl hands them over (in chunks; the
 * first input byte sets the chunk size). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "server/admission.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	size_t step = data[0] & 0x7f;
	char *body = malloc(size - 1 ? size - 1 : 1);
	if (!body)
		return 0;
	memcpy(body, data + 1, size - 1);
	int hook = admission_parse_reply(1, body, size - 1, step);
	int whois = admission_parse_reply(0, body, size - 1, step);
	/* the chunking must not change the webhook's answer */
	if (hook != admission_parse_reply(1, body, size - 1, 0))
		abort();
	(void)whois;
	free(body);
	return 0;
}
