/* libFuzzer target for what an ACME server (or a certdir file) hands the client: the
 * directory, order, authorization, problem and renewal-info documents, RFC 3339 times,
 * PEM bundles and X.509 DER. Nothing may crash or read past the input (ASan), and what
 * parses must keep the invariants the client relies on (terminated, bounded strings;
 * tokens that are safe in a URL path). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "acme/internal.h"

#define CHECK(c) do { if (!(c)) abort(); } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_str(const char *s, size_t cap)
{
	CHECK(memchr(s, '\0', cap) != NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *b = malloc(size + 1), type[128], detail[256];
	struct acme_dir d;
	struct acme_order o;
	struct acme_authz a;
	struct cert_info ci;
	time_t s, e;
	uint8_t **ders;
	size_t *lens, n;

	if (!b)
		return 0;
	memcpy(b, data, size);
	b[size] = '\0';

	if (acme_parse_directory(b, size, &d) == 0) {
		check_str(d.new_nonce, sizeof d.new_nonce);
		check_str(d.new_order, sizeof d.new_order);
		CHECK(d.new_account[0] || 1);
	}
	acme_parse_problem(b, size, type, sizeof type, detail, sizeof detail);
	check_str(type, sizeof type);
	check_str(detail, sizeof detail);
	if (acme_parse_order(b, size, &o) == 0) {
		CHECK(o.nauthz >= 0 && o.nauthz <= 8);
		for (int i = 0; i < o.nauthz; i++)
			check_str(o.authz[i], sizeof o.authz[i]);
	}
	if (acme_parse_authz(b, size, &a) == 0) {
		CHECK(a.nchal >= 0 && a.nchal <= 4);
		for (int i = 0; i < a.nchal; i++)
			CHECK(strspn(a.chal_token[i], "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
				     "0123456789-_") == strlen(a.chal_token[i]));
	}
	if (acme_parse_renewal_info(b, size, &s, &e) == 0)
		CHECK(e >= s);
	acme_parse_time(b, &s);

	n = pem_certs(b, size, &ders, &lens);
	for (size_t i = 0; i < n; i++) {
		cert_info_parse(ders[i], lens[i], &ci);
		free(ders[i]);
	}
	free(ders);
	free(lens);
	if (cert_info_parse(data, size, &ci) == 0) {
		CHECK(ci.serial_len <= sizeof ci.serial && ci.aki_len <= sizeof ci.aki);
		check_str(ci.cn, sizeof ci.cn);
	}
	free(b);
	return 0;
}
