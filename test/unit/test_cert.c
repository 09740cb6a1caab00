/* acme/ certificate side: the meta certificate (bytes and fields, as Go encodes it), the
 * self-signed IP certificate, manual mode files and SNI rules over real in-process TLS
 * handshakes (served chain = [leaf, meta]), reload on demand and on file change without
 * touching a live connection, derper's flag rules and texts, the prod host policy. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "acme/cert.h"
#include "acme/internal.h"
#include "server/config.h"

#include <wolfssl/wolfcrypt/asn.h>
#include <wolfssl/wolfcrypt/ed25519.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

static char dir[64];
static const uint8_t server_pub[32] = { 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef,
					0xfe, 0xdc, 0xba, 0x98, 0x76, 0x54, 0x32, 0x10 };

static void remove_tree(const char *path)
{
	DIR *d = opendir(path);
	struct dirent *e;
	char sub[512];

	if (d == NULL) {
		unlink(path);
		return;
	}
	while ((e = readdir(d)) != NULL) {
		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
		remove_tree(sub);
	}
	closedir(d);
	rmdir(path);
}

static int setup(void **state)
{
	(void)state;
	snprintf(dir, sizeof dir, "/tmp/derpd-cert-XXXXXX");
	return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
	(void)state;
	remove_tree(dir);
	return 0;
}

static void cfg_init(struct config *c, const char *mode, const char *host)
{
	memset(c, 0, sizeof *c);
	c->certmode = mode;
	c->certdir = dir;
	c->hostname = host;
	c->acme_eab_kid = c->acme_eab_key = c->acme_email = "";
	c->acme_directory = "https://127.0.0.1:1/directory"; /* never reached in these tests */
	c->acme_ca_file = "";
	c->http_port = 80;
}

/* ---- in-process TLS ----------------------------------------------------------------- */

struct seen {
	int n;
	uint8_t der[4][2048];
	int len[4];
};
static struct seen seen;

static int capture_chain(int ok, WOLFSSL_X509_STORE_CTX *store)
{
	(void)ok;
	if (seen.n == 0)
		for (int i = 0; i < store->totalCerts && i < 4; i++) {
			memcpy(seen.der[i], store->certs[i].buffer, store->certs[i].length);
			seen.len[i] = (int)store->certs[i].length;
			seen.n++;
		}
	return 1; /* chain trust is not what these tests look at */
}

struct tls_pair {
	WOLFSSL *c, *s;
	WOLFSSL_CTX *cctx;
	int cfd, sfd;
};

static void pair_free(struct tls_pair *t)
{
	wolfSSL_free(t->c);
	wolfSSL_free(t->s);
	wolfSSL_CTX_free(t->cctx);
	close(t->cfd);
	close(t->sfd);
}

/* Connect over loopback TCP and run both handshake sides until done. 0 if both finished. */
static int tls_connect(struct cert_provider *p, const char *sni, const char *alpn, int tls12,
		       struct tls_pair *t)
{
	struct sockaddr_in a = { .sin_family = AF_INET };
	socklen_t al = sizeof a;
	int l = socket(AF_INET, SOCK_STREAM, 0), cdone = 0, sdone = 0;

	memset(&seen, 0, sizeof seen);
	memset(t, 0, sizeof *t);
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(l, (struct sockaddr *)&a, sizeof a), 0);
	assert_int_equal(listen(l, 1), 0);
	getsockname(l, (struct sockaddr *)&a, &al);
	t->cfd = socket(AF_INET, SOCK_STREAM, 0);
	assert_int_equal(connect(t->cfd, (struct sockaddr *)&a, sizeof a), 0);
	t->sfd = accept(l, NULL, NULL);
	close(l);
	fcntl(t->cfd, F_SETFL, O_NONBLOCK);
	fcntl(t->sfd, F_SETFL, O_NONBLOCK);

	t->cctx = wolfSSL_CTX_new(tls12 ? wolfTLSv1_2_client_method() : wolfSSLv23_client_method());
	wolfSSL_CTX_set_verify(t->cctx, WOLFSSL_VERIFY_PEER, capture_chain);
	t->c = wolfSSL_new(t->cctx);
	wolfSSL_set_fd(t->c, t->cfd);
	if (sni)
		wolfSSL_UseSNI(t->c, WOLFSSL_SNI_HOST_NAME, sni, (word16)strlen(sni));
	if (alpn)
		wolfSSL_UseALPN(t->c, (char *)alpn, (unsigned)strlen(alpn),
				WOLFSSL_ALPN_FAILED_ON_MISMATCH);
	t->s = cert_provider_ssl_new(p, t->sfd);
	assert_non_null(t->s);
	for (int i = 0; i < 2000 && !(cdone && sdone); i++) {
		if (!cdone) {
			int r = wolfSSL_connect(t->c), e = wolfSSL_get_error(t->c, r);
			if (r == WOLFSSL_SUCCESS)
				cdone = 1;
			else if (e != WOLFSSL_ERROR_WANT_READ && e != WOLFSSL_ERROR_WANT_WRITE)
				return -1;
		}
		if (!sdone) {
			int r = wolfSSL_accept(t->s), e = wolfSSL_get_error(t->s, r);
			if (r == WOLFSSL_SUCCESS)
				sdone = 1;
			else if (e != WOLFSSL_ERROR_WANT_READ && e != WOLFSSL_ERROR_WANT_WRITE)
				return -1;
		}
		poll(NULL, 0, 1);
	}
	return cdone && sdone ? 0 : -1;
}

/* One message each way over an established pair. */
static void tls_echo(struct tls_pair *t)
{
	char buf[16];
	int n = -1;

	assert_int_equal(wolfSSL_write(t->c, "ping", 4), 4);
	for (int i = 0; i < 1000 && n <= 0; i++, poll(NULL, 0, 1))
		n = wolfSSL_read(t->s, buf, sizeof buf);
	assert_int_equal(n, 4);
	assert_int_equal(wolfSSL_write(t->s, "pong", 4), 4);
	n = -1;
	for (int i = 0; i < 1000 && n <= 0; i++, poll(NULL, 0, 1))
		n = wolfSSL_read(t->c, buf, sizeof buf);
	assert_int_equal(n, 4);
	assert_memory_equal(buf, "pong", 4);
}

/* ---- meta certificate ----------------------------------------------------------------- */

static void test_meta_cert_bytes(void **state)
{
	uint8_t seed[32], pub[32], *der, tbs_expect[512];
	size_t len, k = 0;
	time_t now = 1700000000; /* 2023-11-14 22:13:20 UTC */
	ed25519_key key;
	char cn[72] = "derpkey";

	(void)state;
	for (int i = 0; i < 32; i++)
		seed[i] = (uint8_t)i;
	assert_int_equal(cert_build_meta(server_pub, now, seed, &der, &len), 0);
	wc_ed25519_init(&key);
	wc_ed25519_import_private_only(seed, 32, &key);
	assert_int_equal(wc_ed25519_make_public(&key, pub, 32), 0);
	for (int i = 0; i < 32; i++)
		snprintf(cn + 7 + 2 * i, 3, "%02x", server_pub[i]);

	/* What Go's x509.CreateCertificate writes for derper's template, field by field. */
#define PUT(...) do { const uint8_t b_[] = { __VA_ARGS__ }; memcpy(tbs_expect + k, b_, sizeof b_); k += sizeof b_; } while (0)
#define PUTS(s, n) do { memcpy(tbs_expect + k, s, n); k += n; } while (0)
	PUT(0x30, 0x82, 0x01, 0x15);                         /* TBSCertificate, 277 bytes */
	PUT(0xa0, 0x03, 0x02, 0x01, 0x02);                   /* version v3 */
	PUT(0x02, 0x01, 0x02);                               /* serial 2 */
	PUT(0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70);       /* Ed25519, no parameters */
	PUT(0x30, 0x52, 0x31, 0x50, 0x30, 0x4e, 0x06, 0x03, 0x55, 0x04, 0x03, 0x13, 0x47);
	PUTS(cn, 71);                                        /* issuer CN, PrintableString */
	PUT(0x30, 0x1e, 0x17, 0x0d);
	PUTS("231015221320Z", 13);                           /* now - 30 days */
	PUT(0x17, 0x0d);
	PUTS("231214221320Z", 13);                           /* now + 30 days */
	PUT(0x30, 0x52, 0x31, 0x50, 0x30, 0x4e, 0x06, 0x03, 0x55, 0x04, 0x03, 0x13, 0x47);
	PUTS(cn, 71);                                        /* subject = issuer */
	PUT(0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00);
	PUTS(pub, 32);
	/* extensions: only basicConstraints, critical, value SEQUENCE{} (cA false omitted) */
	PUT(0xa3, 0x10, 0x30, 0x0e, 0x30, 0x0c, 0x06, 0x03, 0x55, 0x1d, 0x13, 0x01, 0x01, 0xff,
	    0x04, 0x02, 0x30, 0x00);
	assert_int_equal(k, 4 + 277);
	/* Certificate: 30 82 01 63 (TBS 281 + algorithm 7 + signature 67), then the TBS */
	assert_int_equal(der[0], 0x30);
	assert_int_equal(der[1], 0x82);
	assert_int_equal(der[2], 0x01);
	assert_int_equal(der[3], 0x63);
	assert_memory_equal(der + 4, tbs_expect, k);
	/* then the algorithm and a 64-byte signature over the TBS, which verifies */
	{
		const uint8_t tail[] = { 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x41, 0x00 };
		int ok = 0;
		assert_memory_equal(der + 4 + k, tail, sizeof tail);
		assert_int_equal(len, 4 + k + sizeof tail + 64);
		assert_int_equal(wc_ed25519_import_public(pub, 32, &key), 0);
		assert_int_equal(wc_ed25519_verify_msg(der + 4 + k + sizeof tail, 64, der + 4, (word32)k,
						       &ok, &key), 0);
		assert_int_equal(ok, 1);
	}
	wc_ed25519_free(&key);
	free(der);
}

/* CONFORMANCE 62/63: wolfSSL parses it; serial 2; CN derpkey+hex; one extension. */
static void test_meta_cert_parses(void **state)
{
	uint8_t *der;
	size_t len;
	struct cert_info ci;
	DecodedCert dc;
	char want[72] = "derpkey";
	time_t now = time(NULL);

	(void)state;
	assert_int_equal(cert_build_meta(server_pub, now, NULL, &der, &len), 0);
	/* wolfSSL's certificate parser (its X509 object layer has no Ed25519 keys in 5.5) */
	wc_InitDecodedCert(&dc, der, (word32)len, NULL);
	assert_int_equal(wc_ParseCert(&dc, CERT_TYPE, NO_VERIFY, NULL), 0);
	assert_int_equal(dc.keyOID, ED25519k);
	assert_int_equal(dc.serialSz, 1);
	assert_int_equal(dc.serial[0], 2);
	assert_true(dc.extBasicConstSet);
	assert_false(dc.isCA);
	assert_false(dc.extSubjAltNameSet);
	assert_false(dc.extKeyUsageSet);
	assert_false(dc.extAuthKeyIdSet);
	assert_false(dc.extSubjKeyIdSet);
	assert_int_equal(dc.subjectCNLen, 71);
	wc_FreeDecodedCert(&dc);
	assert_int_equal(cert_info_parse(der, len, &ci), 0);
	assert_int_equal(ci.serial_len, 1);
	assert_int_equal(ci.serial[0], 2);
	for (int i = 0; i < 32; i++)
		snprintf(want + 7 + 2 * i, 3, "%02x", server_pub[i]);
	assert_string_equal(ci.cn, want);
	assert_true(ci.is_ed25519);
	assert_int_equal(ci.not_before, now - 30 * 86400);
	assert_int_equal(ci.not_after, now + 30 * 86400);
	free(der);
}

/* ---- manual mode ---------------------------------------------------------------------- */

/* CONFORMANCE 116: IP hostname, empty certdir -> self-signed files; no SNI served. */
static void test_manual_ip_selfsigned(void **state)
{
	struct config c;
	struct cert_provider *p;
	struct tls_pair t;
	struct cert_info ci;
	char err[512], path[256], sub[128];
	struct stat st;
	WOLFSSL_X509 *x;

	(void)state;
	cfg_init(&c, "manual", "127.0.0.1");
	snprintf(sub, sizeof sub, "%s/sub", dir);
	c.certdir = sub;
	p = cert_provider_start(&c, server_pub, err, sizeof err);
	assert_non_null(p);
	assert_int_equal(stat(sub, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0700);
	snprintf(path, sizeof path, "%s/sub/127.0.0.1.crt", dir);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0644);
	snprintf(path, sizeof path, "%s/sub/127.0.0.1.key", dir);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);

	assert_int_equal(tls_connect(p, NULL, NULL, 0, &t), 0);
	assert_int_equal(seen.n, 2); /* CONFORMANCE 64: [leaf, meta] */
	assert_int_equal(cert_info_parse(seen.der[1], (size_t)seen.len[1], &ci), 0);
	assert_true(ci.is_ed25519);
	assert_int_equal(cert_info_parse(seen.der[0], (size_t)seen.len[0], &ci), 0);
	assert_string_equal(ci.cn, "127.0.0.1");
	assert_true(ci.not_after - ci.not_before >= 365 * 86400);
	x = wolfSSL_X509_d2i(NULL, seen.der[0], seen.len[0]);
	assert_int_equal(wolfSSL_X509_check_ip_asc(x, "127.0.0.1", 0), WOLFSSL_SUCCESS);
	wolfSSL_X509_free(x);
	assert_string_equal(wolfSSL_get_version(t.s), "TLSv1.3");
	tls_echo(&t);
	pair_free(&t);
	/* any SNI is fine for an IP hostname */
	assert_int_equal(tls_connect(p, "whatever.example", NULL, 0, &t), 0);
	pair_free(&t);
	cert_provider_stop(p);

	/* a second start loads the same files (no regeneration) */
	p = cert_provider_start(&c, server_pub, err, sizeof err);
	assert_non_null(p);
	assert_int_equal(tls_connect(p, NULL, NULL, 0, &t), 0);
	assert_int_equal(cert_info_parse(seen.der[0], (size_t)seen.len[0], &ci), 0);
	pair_free(&t);
	assert_int_equal(cert_provider_reload(p), 1); /* unchanged */
	cert_provider_stop(p);
}

/* A certificate + key for name written as <certdir>/<file>.crt/.key. */
static void write_pair(const char *file, const char *dns, const char *ip)
{
	ecc_key k;
	uint8_t *der, ipb[16];
	size_t dl, il = 0;
	char *crt, *key, path[256];
	time_t now = time(NULL);

	if (ip)
		il = inet_pton(AF_INET, ip, ipb) == 1 ? 4 : 16;
	assert_int_equal(eckey_generate(&k), 0);
	assert_int_equal(cert_build_selfsigned(&k, dns ? dns : ip, dns, ip ? ipb : NULL, il,
					       now - 60, now + 86400, NULL, &der, &dl), 0);
	crt = pem_encode("CERTIFICATE", der, dl);
	key = eckey_to_pem(&k);
	snprintf(path, sizeof path, "%s/%s.key", dir, file);
	assert_int_equal(file_write_atomic(path, key, strlen(key), 0600), 0);
	snprintf(path, sizeof path, "%s/%s.crt", dir, file);
	assert_int_equal(file_write_atomic(path, crt, strlen(crt), 0644), 0);
	free(der);
	free(crt);
	free(key);
	wc_ecc_free(&k);
}

/* SNI rule for a DNS hostname: exactly the hostname, else the handshake fails; file names
 * drop characters outside [a-zA-Z0-9-.]. */
static void test_manual_dns_sni(void **state)
{
	struct config c;
	struct cert_provider *p;
	struct tls_pair t;
	char err[512];

	(void)state;
	write_pair("derp.example.test", "derp.example.test", NULL);
	cfg_init(&c, "manual", "derp.example.test");
	p = cert_provider_start(&c, server_pub, err, sizeof err);
	assert_non_null(p);
	assert_int_equal(tls_connect(p, "derp.example.test", NULL, 0, &t), 0);
	assert_int_equal(seen.n, 2);
	tls_echo(&t);
	pair_free(&t);
	assert_int_equal(tls_connect(p, "derp.example.test", "http/1.1", 1, &t), 0);
	assert_string_equal(wolfSSL_get_version(t.s), "TLSv1.2");
	{
		char *proto = NULL;
		unsigned short n = 0;
		assert_int_equal(wolfSSL_ALPN_GetProtocol(t.c, &proto, &n), WOLFSSL_SUCCESS);
		assert_int_equal(n, 8);
		assert_memory_equal(proto, "http/1.1", 8);
	}
	pair_free(&t);
	assert_int_not_equal(tls_connect(p, "other.example.test", NULL, 0, &t), 0);
	pair_free(&t);
	assert_int_not_equal(tls_connect(p, NULL, NULL, 0, &t), 0);
	pair_free(&t);
	/* ALPN: only http/1.1 is offered; a client wanting only h2 is refused (as Go does) */
	assert_int_not_equal(tls_connect(p, "derp.example.test", "h2", 0, &t), 0);
	pair_free(&t);
	cert_provider_stop(p);

	/* the hostname is cleaned for the file name; the cert must still match it */
	cfg_init(&c, "manual", "derp.example.test/");
	p = cert_provider_start(&c, server_pub, err, sizeof err);
	assert_null(p);
	assert_non_null(strstr(err, "cert invalid for hostname \"derp.example.test/\""));

	cfg_init(&c, "manual", "missing.example.test");
	assert_null(cert_provider_start(&c, server_pub, err, sizeof err));
	assert_non_null(strstr(err, "can not load x509 key pair for hostname \"missing.example.test\""));
	assert_non_null(strstr(err, "no such file or directory") ? err : strstr(err, "No such file"));
}

/* CONFORMANCE 115: PKCS#8 key, IP SAN, no SNI. */
static void test_manual_ip_pkcs8(void **state)
{
	struct config c;
	struct cert_provider *p;
	struct tls_pair t;
	char err[512], path[256], *pem;
	size_t n;
	uint8_t der[256];
	ecc_key k;
	word32 idx = 0;
	int dl;

	(void)state;
	write_pair("1.2.3.4", NULL, "1.2.3.4");
	/* rewrite the key as PKCS#8 "PRIVATE KEY" */
	snprintf(path, sizeof path, "%s/1.2.3.4.key", dir);
	pem = file_read(path, &n);
	assert_int_equal(eckey_from_pem(&k, pem, n), 0);
	free(pem);
	idx = sizeof der;
	dl = wc_EccPrivateKeyToPKCS8(&k, der, &idx);
	assert_true(dl >= 0);
	dl = dl > 0 ? dl : (int)idx;
	pem = pem_encode("PRIVATE KEY", der, (size_t)dl);
	assert_int_equal(file_write_atomic(path, pem, strlen(pem), 0600), 0);
	free(pem);
	wc_ecc_free(&k);

	cfg_init(&c, "manual", "1.2.3.4");
	p = cert_provider_start(&c, server_pub, err, sizeof err);
	assert_non_null(p);
	assert_int_equal(tls_connect(p, NULL, NULL, 0, &t), 0);
	pair_free(&t);
	cert_provider_stop(p);
}

static int leaf_serial_byte(void)
{
	struct cert_info ci;

	assert_int_equal(cert_info_parse(seen.der[0], (size_t)seen.len[0], &ci), 0);
	return ci.serial[ci.serial_len - 1] | ci.serial[ci.serial_len - 2] << 8;
}

/* Reload: SIGHUP path and inotify; live connections keep working; a bad cert is refused. */
static void test_manual_reload(void **state)
{
	struct config c;
	struct cert_provider *p;
	struct tls_pair live, t;
	char err[512], path[256];
	int first, second, third = -1;

	(void)state;
	write_pair("reload.example.test", "reload.example.test", NULL);
	cfg_init(&c, "manual", "reload.example.test");
	p = cert_provider_start(&c, server_pub, err, sizeof err);
	assert_non_null(p);
	assert_int_equal(tls_connect(p, "reload.example.test", NULL, 0, &live), 0);
	first = leaf_serial_byte();

	write_pair("reload.example.test", "reload.example.test", NULL);
	assert_int_equal(cert_provider_reload(p), 0);
	tls_echo(&live); /* untouched */
	assert_int_equal(tls_connect(p, "reload.example.test", NULL, 0, &t), 0);
	second = leaf_serial_byte();
	assert_int_not_equal(first, second);
	pair_free(&t);

	/* a broken certificate file: refused, the current one keeps serving */
	snprintf(path, sizeof path, "%s/reload.example.test.crt", dir);
	assert_int_equal(file_write_atomic(path, "garbage\n", 8, 0644), 0);
	assert_int_equal(cert_provider_reload(p), -1);
	assert_int_equal(tls_connect(p, "reload.example.test", NULL, 0, &t), 0);
	assert_int_equal(leaf_serial_byte(), second);
	pair_free(&t);
	/* a certificate for another name: refused too */
	write_pair("reload.example.test", "other.example.test", NULL);
	assert_int_equal(cert_provider_reload(p), -1);

	/* the watcher notices new files by itself */
	write_pair("reload.example.test", "reload.example.test", NULL);
	for (int i = 0; i < 50; i++) {
		poll(NULL, 0, 100);
		assert_int_equal(tls_connect(p, "reload.example.test", NULL, 0, &t), 0);
		third = leaf_serial_byte();
		pair_free(&t);
		if (third != second)
			break;
	}
	assert_int_not_equal(third, second);
	tls_echo(&live);
	pair_free(&live);
	cert_provider_stop(p);
}

/* ---- flags ---------------------------------------------------------------------------- */

static void expect_err(struct config *c, const char *want)
{
	char err[512];
	struct cert_provider *p = cert_provider_start(c, server_pub, err, sizeof err);

	if (p)
		cert_provider_stop(p);
	assert_null(p);
	assert_string_equal(err, want);
}

/* CONFORMANCE 117, 118, 131 and the §10 texts. */
static void test_flag_rules(void **state)
{
	struct config c;
	char err[512];
	struct cert_provider *p;

	(void)state;
	cfg_init(&c, "manual", "derp.example.test");
	c.certdir = "";
	expect_err(&c, "missing required --certdir flag");
	cfg_init(&c, "bogus", "derp.example.test");
	expect_err(&c, "unsupport cert mode: \"bogus\"");
	cfg_init(&c, "gcp", "derp.example.test");
	c.acme_ip_certs = 1;
	expect_err(&c, "--acme-ip-certs requires --certmode=letsencrypt");
	cfg_init(&c, "manual", "127.0.0.1");
	c.acme_ip_certs = 1;
	expect_err(&c, "--acme-ip-certs requires --certmode=letsencrypt");
	cfg_init(&c, "gcp", "192.0.2.1");
	expect_err(&c, "--certmode=gcp requires --hostname to be a DNS name, not an IP address");
	cfg_init(&c, "letsencrypt", "192.0.2.1");
	expect_err(&c, "--hostname is an IP address; use --certmode=manual for a self-signed "
		   "cert, or set --acme-ip-certs to get LetsEncrypt IP address certs");
	cfg_init(&c, "gcp", "derp.example.test");
	expect_err(&c, "--certmode=gcp requires --acme-eab-kid and --acme-eab-key flags");
	c.acme_eab_kid = "kid";
	expect_err(&c, "--certmode=gcp requires --acme-eab-kid and --acme-eab-key flags");
	c.acme_eab_key = "dGVzdC1rZXk";
	expect_err(&c, "--certmode=gcp requires --acme-email flag");
	c.acme_email = "ops@example.test";
	c.acme_eab_key = "not-valid!";
	expect_err(&c, "invalid base64 encoding for EAB key");
	c.acme_eab_key = "dGVzdC1rZXk";
	p = cert_provider_start(&c, server_pub, err, sizeof err);
	assert_non_null(p);
	assert_int_equal(p->eab_len, 8);
	assert_memory_equal(p->eab_key, "test-key", 8);
	cert_provider_stop(p);
	c.acme_eab_key = "dGVzdC1rZXk=";
	c.acme_directory = ""; /* gcp: Google's directory */
	p = cert_provider_start(&c, server_pub, err, sizeof err);
	assert_non_null(p);
	assert_string_equal(p->directory, "https://dv.acme-v02.api.pki.goog/directory");
	cert_provider_stop(p);

	/* letsencrypt + --acme-ip-certs: IP manager, with a hostname provider only for DNS */
	cfg_init(&c, "letsencrypt", "192.0.2.1");
	c.acme_ip_certs = 1;
	p = cert_provider_start(&c, server_pub, err, sizeof err);
	assert_non_null(p);
	assert_true(p->ip_certs);
	assert_false(p->host_acme);
	cert_provider_stop(p);
	cfg_init(&c, "letsencrypt", "derp.example.test");
	c.acme_ip_certs = 1;
	c.acme_directory = "";
	p = cert_provider_start(&c, server_pub, err, sizeof err);
	assert_non_null(p);
	assert_true(p->ip_certs);
	assert_true(p->host_acme);
	assert_string_equal(p->directory, "https://acme-v02.api.letsencrypt.org/directory");
	assert_string_equal(p->email, "");
	cert_provider_stop(p);
	cfg_init(&c, "letsencrypt", "derp.tailscale.com");
	p = cert_provider_start(&c, server_pub, err, sizeof err);
	assert_non_null(p);
	assert_string_equal(p->email, "security@tailscale.com");
	cert_provider_stop(p);
}

/* CONFORMANCE 98 */
static void test_prod_host_policy(void **state)
{
	static const char *yes[] = { "derp.tailscale.com", "derp.tailscale.com.",
				     "derp1.tailscale.com", "derp1b.tailscale.com",
				     "derp2.tailscale.com", "derp02.tailscale.com",
				     "derp-nyc.tailscale.com", "derpfoo.tailscale.com" };
	static const char *no[] = { "derp02.bar.tailscale.com", "example.net",
				    "derp.tailscale.com.evil", "xderp.tailscale.com" };

	(void)state;
	for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++)
		assert_true(acme_host_allowed("derp.tailscale.com", yes[i]));
	for (size_t i = 0; i < sizeof no / sizeof no[0]; i++)
		assert_false(acme_host_allowed("derp.tailscale.com", no[i]));
	assert_true(acme_host_allowed("derp.example.test", "derp.example.test"));
	assert_true(acme_host_allowed("derp.example.test", "DERP.example.test."));
	assert_false(acme_host_allowed("derp.example.test", "derp1.example.test"));
}

/* ACME mode before any certificate: handshakes are refused at once, never waited on. */
static void test_acme_not_ready_refuses(void **state)
{
	struct config c;
	struct cert_provider *p;
	struct tls_pair t;
	char err[512];

	(void)state;
	cfg_init(&c, "letsencrypt", "derp.example.test");
	p = cert_provider_start(&c, server_pub, err, sizeof err);
	assert_non_null(p);
	assert_int_not_equal(tls_connect(p, "derp.example.test", NULL, 0, &t), 0);
	pair_free(&t);
	assert_int_not_equal(tls_connect(p, "other.example.test", NULL, 0, &t), 0);
	pair_free(&t);
	assert_int_equal(cert_provider_reload(p), 1);
	cert_provider_stop(p);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_meta_cert_bytes),
		cmocka_unit_test(test_meta_cert_parses),
		cmocka_unit_test_setup_teardown(test_manual_ip_selfsigned, setup, teardown),
		cmocka_unit_test_setup_teardown(test_manual_dns_sni, setup, teardown),
		cmocka_unit_test_setup_teardown(test_manual_ip_pkcs8, setup, teardown),
		cmocka_unit_test_setup_teardown(test_manual_reload, setup, teardown),
		cmocka_unit_test_setup_teardown(test_flag_rules, setup, teardown),
		cmocka_unit_test(test_prod_host_policy),
		cmocka_unit_test_setup_teardown(test_acme_not_ready_refuses, setup, teardown),
	};

	wolfSSL_Init();
	return cmocka_run_group_tests(tests, NULL, NULL);
}
