/* acme/ protocol side without a CA: ES256 signatures (verified by wolfSSL), the JWK
 * thumbprint, CSRs (parsed and verified by wolfSSL), the ARI certificate ID (RFC 9773's
 * example), EAB key decoding (derper's two base64 forms), the ACME JSON documents (good
 * and malformed), the HTTP-01 answer table as the port-80 handler sees it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "acme/cert.h"
#include "acme/client.h"
#include "server/config.h"

#include <wolfssl/wolfcrypt/asn.h>
#include <wolfssl/wolfcrypt/sha256.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void test_es256_verifies(void **state)
{
	ecc_key k;
	uint8_t raw[64], der[80], h[32];
	word32 dl = sizeof der;
	int ok = 0;
	const char *msg = "eyJhbGciOiJFUzI1NiJ9.e30";

	(void)state;
	assert_int_equal(eckey_generate(&k), 0);
	for (int i = 0; i < 20; i++) { /* leading zero bytes of r or s must be kept */
		assert_int_equal(eckey_sign_raw(&k, (const uint8_t *)msg, strlen(msg), raw), 0);
		dl = sizeof der;
		assert_int_equal(wc_ecc_rs_raw_to_sig(raw, 32, raw + 32, 32, der, &dl), 0);
		wc_Sha256Hash((const byte *)msg, (word32)strlen(msg), h);
		assert_int_equal(wc_ecc_verify_hash(der, dl, h, sizeof h, &ok, &k), 0);
		assert_int_equal(ok, 1);
	}
	wc_ecc_free(&k);
}

/* RFC 7638: SHA-256 over {"crv","kty","x","y"} in that order, no spaces. */
static void test_jwk_thumbprint(void **state)
{
	ecc_key k;
	uint8_t x[32], y[32], h[32];
	char jwk[256], *x64, *y64, *t64;
	struct acme_client *c;

	(void)state;
	assert_int_equal(eckey_generate(&k), 0);
	assert_int_equal(eckey_xy(&k, x, y), 0);
	x64 = b64url(x, 32);
	y64 = b64url(y, 32);
	snprintf(jwk, sizeof jwk, "{\"crv\":\"P-256\",\"kty\":\"EC\",\"x\":\"%s\",\"y\":\"%s\"}", x64,
		 y64);
	wc_Sha256Hash((const byte *)jwk, (word32)strlen(jwk), h);
	t64 = b64url(h, 32);
	c = acme_client_new("https://127.0.0.1:1/dir", NULL, &k, "", "", NULL, 0, NULL);
	assert_non_null(c);
	assert_string_equal(acme_client_thumbprint(c), t64);
	assert_int_equal(strlen(t64), 43);
	acme_client_free(c);
	free(x64), free(y64), free(t64);
	wc_ecc_free(&k);
}

static void check_csr(const uint8_t *csr, size_t len)
{
	DecodedCert dc;

	wc_InitDecodedCert(&dc, csr, (word32)len, NULL);
	assert_int_equal(wc_ParseCert(&dc, CERTREQ_TYPE, VERIFY, NULL), 0);
	assert_true(dc.extSubjAltNameSet);
	wc_FreeDecodedCert(&dc);
}

static void test_csr(void **state)
{
	ecc_key k;
	uint8_t *csr, ip[4] = { 192, 0, 2, 7 };
	size_t len;

	(void)state;
	assert_int_equal(eckey_generate(&k), 0);
	assert_int_equal(csr_build(&k, "derp.example.test", NULL, 0, &csr, &len), 0);
	check_csr(csr, len);
	free(csr);
	assert_int_equal(csr_build(&k, NULL, ip, 4, &csr, &len), 0);
	check_csr(csr, len);
	/* an IP request has an empty subject: SEQUENCE { INTEGER 0, SEQUENCE {} ... } */
	{
		struct der_rd r = { csr, len }, outer, info, v;
		uint8_t tag;
		assert_int_equal(der_next(&r, &tag, &outer), 0);
		assert_int_equal(der_next(&outer, &tag, &info), 0);
		assert_int_equal(der_next(&info, &tag, &v), 0);
		assert_int_equal(tag, 0x02); /* version 0 */
		assert_int_equal(der_next(&info, &tag, &v), 0);
		assert_int_equal(tag, 0x30);
		assert_int_equal(v.n, 0);
	}
	free(csr);
	wc_ecc_free(&k);
}

/* RFC 9773 §4.1's example. */
static void test_ari_certid(void **state)
{
	static const uint8_t aki[] = { 0x69, 0x88, 0x5B, 0x6B, 0x87, 0x46, 0x40, 0x41, 0xE1, 0xB3,
				       0x7B, 0x84, 0x7B, 0xA0, 0xAE, 0x2C, 0xDE, 0x01, 0xC8, 0xD4 };
	static const uint8_t serial[] = { 0x00, 0x87, 0x65, 0x43, 0x21 };
	struct cert_info ci;
	char id[256];

	(void)state;
	memset(&ci, 0, sizeof ci);
	memcpy(ci.aki, aki, sizeof aki);
	ci.aki_len = sizeof aki;
	memcpy(ci.serial, serial, sizeof serial);
	ci.serial_len = sizeof serial;
	acme_ari_id(&ci, id, sizeof id);
	assert_string_equal(id, "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE");
}

/* derper's decodeEABKey: raw URL-safe, then padded standard. */
static void test_eab_key(void **state)
{
	uint8_t out[64];
	size_t n;

	(void)state;
	assert_int_equal(eab_key_decode("dGVzdC1rZXk", out, sizeof out, &n), 0);
	assert_int_equal(n, 8);
	assert_memory_equal(out, "test-key", 8);
	assert_int_equal(eab_key_decode("dGVzdC1rZXk=", out, sizeof out, &n), 0);
	assert_memory_equal(out, "test-key", 8);
	assert_int_equal(eab_key_decode("_-8", out, sizeof out, &n), 0); /* URL alphabet */
	assert_int_equal(eab_key_decode("/+8=", out, sizeof out, &n), 0); /* standard */
	assert_int_equal(eab_key_decode("not-valid!", out, sizeof out, &n), -1);
	assert_int_equal(eab_key_decode("dGVzdC1rZXk==", out, sizeof out, &n), -1);
}

static void test_json_directory(void **state)
{
	const char *le = "{\"keyChange\":\"https://ca/kc\",\"meta\":{\"profiles\":{\"classic\":\"x\","
			 "\"shortlived\":\"y\"},\"termsOfService\":\"https://ca/tos\"},"
			 "\"newAccount\":\"https://ca/na\",\"newNonce\":\"https://ca/nn\","
			 "\"newOrder\":\"https://ca/no\",\"renewalInfo\":\"https://ca/ari\","
			 "\"revokeCert\":\"https://ca/rc\"}";
	struct acme_dir d;

	(void)state;
	assert_int_equal(acme_parse_directory(le, strlen(le), &d), 0);
	assert_string_equal(d.new_nonce, "https://ca/nn");
	assert_string_equal(d.new_account, "https://ca/na");
	assert_string_equal(d.new_order, "https://ca/no");
	assert_string_equal(d.renewal_info, "https://ca/ari");
	assert_true(d.has_profile_shortlived);
	assert_false(d.eab_required);
	assert_int_equal(acme_parse_directory("{\"newNonce\":1}", 14, &d), -1);
	assert_int_equal(acme_parse_directory("[]", 2, &d), -1);
	assert_int_equal(acme_parse_directory("{", 1, &d), -1);
	{
		const char *g = "{\"newNonce\":\"a\",\"newAccount\":\"b\",\"newOrder\":\"c\","
				"\"meta\":{\"externalAccountRequired\":true}}";
		assert_int_equal(acme_parse_directory(g, strlen(g), &d), 0);
		assert_true(d.eab_required);
		assert_string_equal(d.renewal_info, "");
	}
}

static void test_json_order_authz(void **state)
{
	const char *order = "{\"status\":\"pending\",\"expires\":\"2025-01-01T00:00:00Z\","
			    "\"identifiers\":[{\"type\":\"dns\",\"value\":\"a.test\"}],"
			    "\"authorizations\":[\"https://ca/authz/1\",\"https://ca/authz/2\"],"
			    "\"finalize\":\"https://ca/fin\"}";
	const char *authz = "{\"status\":\"pending\",\"identifier\":{\"type\":\"dns\","
			    "\"value\":\"a.test\"},\"challenges\":[{\"type\":\"http-01\",\"url\":"
			    "\"https://ca/c/1\",\"token\":\"tok_-en\"},{\"type\":\"dns-01\",\"url\":"
			    "\"https://ca/c/2\",\"token\":\"../../etc\"},{\"type\":\"tls-alpn-01\","
			    "\"url\":\"https://ca/c/3\",\"token\":\"t2\"}]}";
	struct acme_order o;
	struct acme_authz a;
	char type[64], detail[64];

	(void)state;
	assert_int_equal(acme_parse_order(order, strlen(order), &o), 0);
	assert_string_equal(o.status, "pending");
	assert_int_equal(o.nauthz, 2);
	assert_string_equal(o.authz[1], "https://ca/authz/2");
	assert_string_equal(o.finalize, "https://ca/fin");
	assert_string_equal(o.certificate, "");
	assert_int_equal(acme_parse_order("{\"status\":\"x\",\"authorizations\":\"no\"}", 37, &o), -1);

	assert_int_equal(acme_parse_authz(authz, strlen(authz), &a), 0);
	assert_string_equal(a.ident_type, "dns");
	assert_int_equal(a.nchal, 2); /* the path-like token is dropped */
	assert_string_equal(a.chal_type[0], "http-01");
	assert_string_equal(a.chal_token[0], "tok_-en");
	assert_string_equal(a.chal_type[1], "tls-alpn-01");
	assert_int_equal(acme_parse_authz("{\"status\":\"valid\"}", 18, &a), -1);

	{
		const char *pb = "{\"type\":\"urn:ietf:params:acme:error:badNonce\","
				 "\"detail\":\"JWS has an invalid anti-replay nonce\"}";
		assert_int_equal(acme_parse_problem(pb, strlen(pb), type, sizeof type, detail,
						    sizeof detail), 0);
	}
	assert_string_equal(type, "urn:ietf:params:acme:error:badNonce");
	assert_int_equal(acme_parse_problem("{\"detail\":\"x\"}", 14, type, sizeof type, detail,
					    sizeof detail), -1);
	/* an embedded NUL never becomes a shorter string */
	assert_int_equal(acme_parse_order("{\"status\":\"a\\u0000b\"}", 21, &o), -1);
}

static void test_json_ari_and_time(void **state)
{
	const char *ari = "{\"suggestedWindow\":{\"start\":\"2025-01-02T04:00:00Z\","
			  "\"end\":\"2025-01-03T04:00:00.123456789Z\"},\"explanationURL\":\"x\"}";
	time_t s, e, t;

	(void)state;
	assert_int_equal(acme_parse_renewal_info(ari, strlen(ari), &s, &e), 0);
	assert_int_equal(s, 1735790400);
	assert_int_equal(e, 1735790400 + 86400);
	assert_int_equal(acme_parse_renewal_info("{\"suggestedWindow\":{\"start\":\"2025-01-03T00:00:00Z\","
						 "\"end\":\"2025-01-02T00:00:00Z\"}}", 83, &s, &e), -1);
	assert_int_equal(acme_parse_time("2025-01-02T05:00:00+01:00", &t), 0);
	assert_int_equal(t, 1735790400);
	assert_int_equal(acme_parse_time("2025-01-02T03:00:00-01:00", &t), 0);
	assert_int_equal(t, 1735790400);
	assert_int_equal(acme_parse_time("2025-13-02T03:00:00Z", &t), -1);
	assert_int_equal(acme_parse_time("2025-01-02 03:00:00Z", &t), -1);
	assert_int_equal(acme_parse_time("2025-01-02T03:00:00", &t), -1);
}

/* The port-80 side: only with an ACME provider, only under the challenge prefix. */
static void test_http01_table(void **state)
{
	struct config c;
	struct cert_provider *p;
	char dir[] = "/tmp/derpd-acme-unit-XXXXXX", err[256], buf[128], cmd[128];
	int n;

	(void)state;
	assert_non_null(mkdtemp(dir));
	assert_int_equal(http01_put("tok1", "tok1.thumb"), 0);
	assert_int_equal(acme_http01_response("/.well-known/acme-challenge/tok1", buf, sizeof buf), -1);
	memset(&c, 0, sizeof c);
	c.certmode = "letsencrypt";
	c.certdir = dir;
	c.hostname = "derp.example.test";
	c.acme_eab_kid = c.acme_eab_key = c.acme_email = c.acme_ca_file = "";
	c.acme_directory = "https://127.0.0.1:1/dir";
	p = cert_provider_start(&c, (const uint8_t *)"01234567890123456789012345678901", err, sizeof err);
	assert_non_null(p);
	n = acme_http01_response("/.well-known/acme-challenge/tok1", buf, sizeof buf);
	assert_int_equal(n, 10);
	assert_memory_equal(buf, "tok1.thumb", 10);
	assert_int_equal(acme_http01_response("/.well-known/acme-challenge/nope", buf, sizeof buf), 0);
	assert_int_equal(acme_http01_response("/.well-known/acme-challenge/", buf, sizeof buf), 0);
	assert_int_equal(acme_http01_response("/", buf, sizeof buf), -1);
	assert_int_equal(acme_http01_response("/generate_204", buf, sizeof buf), -1);
	assert_int_equal(acme_http01_response("/.well-known/acme-challenge/tok1", buf, 4), 0);
	http01_del("tok1");
	assert_int_equal(acme_http01_response("/.well-known/acme-challenge/tok1", buf, sizeof buf), 0);
	cert_provider_stop(p);
	assert_int_equal(acme_http01_response("/.well-known/acme-challenge/tok1", buf, sizeof buf), -1);
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
	assert_int_equal(system(cmd), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_es256_verifies),
		cmocka_unit_test(test_jwk_thumbprint),
		cmocka_unit_test(test_csr),
		cmocka_unit_test(test_ari_certid),
		cmocka_unit_test(test_eab_key),
		cmocka_unit_test(test_json_directory),
		cmocka_unit_test(test_json_order_authz),
		cmocka_unit_test(test_json_ari_and_time),
		cmocka_unit_test(test_http01_table),
	};

	wolfSSL_Init();
	return cmocka_run_group_tests(tests, NULL, NULL);
}
