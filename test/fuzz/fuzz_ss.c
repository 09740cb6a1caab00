/* libFuzzer: /debug/traffic's parser of `ss -i -H -t` output. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "metrics/internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct traffic_entry e[8];
	char *text = malloc(size + 1);

	if (!text)
		return 0;
	memcpy(text, data, size);
	text[size] = '\0';
	size_t n = traffic_parse_ss(text, e, 8);
	if (n > 8)
		abort();
	for (size_t i = 0; i < n; i++)
		if (!memchr(e[i].peer, '\0', sizeof e[i].peer))
			abort();
	free(text);
	return 0;
}
