/* libFuzzer: the DERP meta certificate parser of the mesh client (mesh/client_tls.c), run
 * on every certificate a peer's TLS server presents. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mesh/client_tls.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct client_tls_meta m;
	uint8_t *der = malloc(size ? size : 1);

	if (!der)
		return 0;
	memcpy(der, data, size);
	memset(&m, 0, sizeof m);
	if (client_tls_meta_parse(der, size, &m) && (m.version < 0 || m.version > 255))
		abort();
	free(der);
	return 0;
}
