/* libFuzzer: ClientInfo JSON, as decoded after the NaCl box opens. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "server/handshake.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct client_info ci;
	char err[160];
	char *buf = malloc(size ? size : 1);

	memcpy(buf, data, size);
	if (handshake_parse_client_info(buf, size, &ci, err, sizeof err) != 0 && !err[0])
		abort(); /* every failure must say why */
	free(buf);
	return 0;
}
