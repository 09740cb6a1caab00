/* eckey_from_pem on keys an operator's cert dir may hold: a P-256 key loads and can be
 * written back; a private scalar longer than 256 bits (found by fuzz_acme_keys: wolfSSL
 * loaded it and then wrote past a buffer exporting it) is refused; PKCS#8 loads (it was
 * read from the wrong offset and always refused). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "acme/internal.h"

/* SEC1 with a 35-byte private key (0x04 0x23 ...), the curve and a public key. */
static const char long_scalar[] =
	"-----BEGIN EC PRIVATE KEY-----\n"
	"MHoCAQEEI////////////////////////////////////////////RhOoAoGCCqGSM49\n"
	"AwEHoUQDQgAEpuJ6Pj9PJiIYogKClwCutq8t4CnauVHf5wmjA9l3+Nu49nJDLmyr\n"
	"LmHL6+2dbOMbZbTFiLJ08OB3Df/Jgg0AKQ==\n"
	"-----END EC PRIVATE KEY-----\n";

/* PKCS#8 ("PRIVATE KEY", as openssl genpkey writes it). */
static const char pkcs8[] =
	"-----BEGIN PRIVATE KEY-----\n"
	"MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgvyOCN2pq2i64zAAk\n"
	"4ZkmHU2Q9rlo2S1Hf25OO6xv6MihRANCAATj+xpIjKwh8NVdTCuXSgAGTmC3X3w6\n"
	"qu07bjnuADeXsign3mPFDeb+AKpumjxI1Jo2Mi9AFqt44VK5k/eYzxjg\n"
	"-----END PRIVATE KEY-----\n";

static void test_pkcs8_loads(void **state)
{
	(void)state;
	ecc_key k;
	uint8_t x[32], y[32];
	memset(&k, 0, sizeof k);
	assert_int_equal(eckey_from_pem(&k, pkcs8, strlen(pkcs8)), 0);
	assert_int_equal(eckey_xy(&k, x, y), 0);
	wc_ecc_free(&k);
}

static void test_long_scalar_refused(void **state)
{
	(void)state;
	ecc_key k;
	memset(&k, 0, sizeof k);
	assert_int_equal(eckey_from_pem(&k, long_scalar, strlen(long_scalar)), -1);
	wc_ecc_free(&k);
}

static void test_generated_key_round_trip(void **state)
{
	(void)state;
	ecc_key k, k2;
	memset(&k2, 0, sizeof k2);
	assert_int_equal(eckey_generate(&k), 0);
	char *pem = eckey_to_pem(&k);
	assert_non_null(pem);
	assert_int_equal(eckey_from_pem(&k2, pem, strlen(pem)), 0);
	char *pem2 = eckey_to_pem(&k2);
	assert_non_null(pem2);
	assert_string_equal(pem, pem2);
	free(pem);
	free(pem2);
	wc_ecc_free(&k);
	wc_ecc_free(&k2);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_long_scalar_refused),
		cmocka_unit_test(test_pkcs8_loads),
		cmocka_unit_test(test_generated_key_round_trip),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
