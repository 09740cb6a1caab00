/* libFuzzer: ACME key material from the operator: --acme-eab-key (base64, URL-safe or
 * standard) and PEM private keys (the account key in the cert dir, SEC1 or PKCS#8). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "acme/internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *s = malloc(size + 1);
	uint8_t out[256];
	size_t n = 0;
	ecc_key k;

	if (!s)
		return 0;
	memcpy(s, data, size);
	s[size] = '\0';
	if (eab_key_decode(s, out, sizeof out, &n) == 0 && n > sizeof out)
		abort();
	memset(&k, 0, sizeof k);
	if (eckey_from_pem(&k, s, size) == 0) {
		/* a key that loads can be used: sign with it and write it back */
		uint8_t sig[64], x[32], y[32];
		char *pem = eckey_to_pem(&k);
		if (!pem || eckey_sign_raw(&k, (const uint8_t *)"m", 1, sig) != 0 ||
		    eckey_xy(&k, x, y) != 0)
			abort();
		free(pem);
	}
	wc_ecc_free(&k);
	free(s);
	return 0;
}
