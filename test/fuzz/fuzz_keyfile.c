/* libFuzzer: derper's key file (-c), as read at start-up. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "server/key.h"
#include "server/keyfile.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *buf = malloc(size ? size : 1), err[512];
	uint8_t priv[32];

	if (!buf)
		return 0;
	memcpy(buf, data, size);
	err[0] = '\0';
	if (keyfile_parse("fuzz.json", buf, size, priv, err, sizeof err) != 0) {
		if (!err[0] || !key_is_zero(priv))
			abort(); /* a refusal says why and leaves no key behind */
	} else if (key_is_zero(priv)) {
		abort(); /* the all-zero key is never accepted */
	}
	free(buf);
	return 0;
}
