/* libFuzzer: what -secrets-url reads from setec (the /api/get answer) and from its cache
 * file (the same object one level down). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mesh/mesh.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char out[512];
	int64_t version = -1;

	if (mesh_secrets_parse_answer((const char *)data, size, out, sizeof out, &version) == 0 &&
	    (strlen(out) >= sizeof out || version < 0))
		abort(); /* a value accepted must fit, NUL-terminated, with a version */
	return 0;
}
