/* Test-only helpers shared by test/e2e/test_tls.c and test_mesh_tls.c: a test CA and
 * server certificates made in process (acme/der.c's builders, files written atomically),
 * and a raw wolfSSL client that records what the server presented: the whole chain (read
 * in the verify callback: this wolfSSL keeps no session certificates), ALPN, version.
 * Include after harness.h. */
#ifndef DERPD_TEST_TLS_UTIL_H
#define DERPD_TEST_TLS_UTIL_H
#include "acme/internal.h"

#include <wolfssl/ssl.h>
#include <wolfssl/wolfcrypt/asn.h>

#include <arpa/inet.h>
#include <errno.h>
#include <ftw.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#define TU_CA_CN "derpd test CA"
#define TU_MAX_CHAIN 4

static int tu_rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb, (void)flag, (void)ftw;
	return remove(p);
}

/* A fresh temporary directory (path in dir, >= 64 bytes). */
__attribute__((unused)) static void tu_tmpdir(char *dir, size_t cap)
{
	snprintf(dir, cap, "/tmp/derpd-tls-XXXXXX");
	if (!mkdtemp(dir))
		fail_msg("mkdtemp: %s", strerror(errno));
}

/* rm -rf dir (unless DERPD_KEEP_TMP is set). */
__attribute__((unused)) static void tu_rmdir(const char *dir)
{
	if (!getenv("DERPD_KEEP_TMP") && dir[0])
		nftw(dir, tu_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

struct tu_ca {
	ecc_key key;
	char pem_path[192]; /* the CA certificate, PEM: what clients are told to trust */
};

/* path <- data, through a temporary file and rename: a reader never sees half a file. */
__attribute__((unused)) static void tu_write(const char *path, const void *data, size_t n)
{
	char tmp[300];
	snprintf(tmp, sizeof tmp, "%s.tmp", path);
	FILE *f = fopen(tmp, "wb");
	assert_non_null(f);
	assert_int_equal(fwrite(data, 1, n, f), n);
	assert_int_equal(fclose(f), 0);
	assert_int_equal(rename(tmp, path), 0);
}

__attribute__((unused)) static void tu_ca_make(struct tu_ca *ca, const char *dir)
{
	time_t now = time(NULL);
	struct cert_tmpl t = { .cn = TU_CA_CN, .issuer_cn = TU_CA_CN, .not_before = now - 3600,
			       .not_after = now + 86400, .is_ca = 1 };
	uint8_t *der;
	size_t dl;

	assert_int_equal(eckey_generate(&ca->key), 0);
	assert_int_equal(cert_build(&ca->key, &ca->key, &t, &der, &dl), 0);
	char *pem = pem_encode("CERTIFICATE", der, dl);
	assert_non_null(pem);
	snprintf(ca->pem_path, sizeof ca->pem_path, "%s/ca.pem", dir);
	tu_write(ca->pem_path, pem, strlen(pem));
	free(pem);
	free(der);
}

__attribute__((unused)) static void tu_ca_free(struct tu_ca *ca)
{
	wc_ecc_free(&ca->key);
}

/* A server certificate for dns or ip (text), signed by ca, with a fresh key, as derpd's
 * manual mode reads it: <dir>/<base>.crt and <dir>/<base>.key. key_pem: NULL = the new
 * certificate's own key (else that key file is written instead: a mismatched pair).
 * Returns the leaf DER (malloc'd, *len) and its key PEM in *key_out if asked. */
__attribute__((unused)) static uint8_t *tu_leaf(struct tu_ca *ca, const char *dir,
						const char *base, const char *dns, const char *ip,
						const char *key_pem, size_t *len, char **key_out)
{
	time_t now = time(NULL);
	uint8_t ipb[16];
	struct cert_tmpl t = { .cn = dns ? dns : ip, .issuer_cn = TU_CA_CN, .dns = dns,
			       .not_before = now - 3600, .not_after = now + 86400 };
	uint8_t *der;
	ecc_key k;
	char path[256];

	if (ip) {
		assert_int_equal(inet_pton(AF_INET, ip, ipb), 1);
		t.ip = ipb;
		t.iplen = 4;
	}
	assert_int_equal(eckey_generate(&k), 0);
	assert_int_equal(cert_build(&k, &ca->key, &t, &der, len), 0);
	char *crt = pem_encode("CERTIFICATE", der, *len), *key = eckey_to_pem(&k);
	assert_non_null(crt);
	assert_non_null(key);
	snprintf(path, sizeof path, "%s/%s.crt", dir, base);
	tu_write(path, crt, strlen(crt));
	snprintf(path, sizeof path, "%s/%s.key", dir, base);
	tu_write(path, key_pem ? key_pem : key, strlen(key_pem ? key_pem : key));
	free(crt);
	if (key_out)
		*key_out = key;
	else
		free(key);
	wc_ecc_free(&k);
	return der;
}

/* ---- a raw TLS client ---------------------------------------------------------------- */

struct tu_tls {
	int fd;
	WOLFSSL_CTX *ctx;
	WOLFSSL *ssl;
	int verify;
	int n;                      /* certificates the server sent */
	uint8_t *der[TU_MAX_CHAIN];
	size_t len[TU_MAX_CHAIN];
	int version;                /* TLS1_2_VERSION, TLS1_3_VERSION */
	char alpn[32];
	char err[160];
};

/* The certificate is a DERP meta certificate (CN derpkey...). */
static int tu_is_meta(const uint8_t *der, size_t len)
{
	DecodedCert dc;
	int yes;

	wc_InitDecodedCert(&dc, der, (word32)len, NULL);
	yes = wc_ParseCert(&dc, CERT_TYPE, NO_VERIFY, NULL) == 0 && dc.subjectCN &&
	      dc.subjectCNLen > 7 && memcmp(dc.subjectCN, "derpkey", 7) == 0 && !dc.isCA;
	wc_FreeDecodedCert(&dc);
	return yes;
}

/* Records the chain; with verification on, ignores only the meta certificate's own
 * failure (wolfSSL checks every extra certificate as an intermediate; Go ignores
 * certificates off the path), as the DERP client library does. */
static int tu_chain_cb(int preverify, WOLFSSL_X509_STORE_CTX *store)
{
	struct tu_tls *t = store->userCtx;
	int d = store->error_depth;

	for (int i = 0; t && t->n == 0 && i < store->totalCerts && i < TU_MAX_CHAIN; i++) {
		t->len[i] = store->certs[i].length;
		t->der[i] = malloc(t->len[i]);
		assert_non_null(t->der[i]);
		memcpy(t->der[i], store->certs[i].buffer, t->len[i]);
		if (i + 1 == store->totalCerts || i + 1 == TU_MAX_CHAIN)
			t->n = i + 1;
	}
	if (!t || !t->verify)
		return 1;
	if (!preverify && d > 0 && d < store->totalCerts &&
	    tu_is_meta(store->certs[d].buffer, store->certs[d].length))
		return 1;
	return preverify;
}

__attribute__((unused)) static void tu_tls_close(struct tu_tls *t)
{
	if (t->ssl)
		wolfSSL_free(t->ssl);
	if (t->ctx)
		wolfSSL_CTX_free(t->ctx);
	if (t->fd >= 0)
		close(t->fd);
	for (int i = 0; i < t->n; i++)
		free(t->der[i]);
	memset(t, 0, sizeof *t);
	t->fd = -1;
}

/* TLS handshake with 127.0.0.1:port offering ALPN http/1.1. sni: NULL = none (may be
 * an IP: sent as given). ca_file: verify the chain against it (and the name sni, if
 * any); NULL = no verification. max_version: 0 = 1.3, 2 = 1.2, 1 = 1.1. 0, or -1 with
 * t->err (t is then closed, nothing to free). */
__attribute__((unused)) static int tu_tls_dial(uint16_t port, const char *sni,
					       const char *ca_file, int max_version,
					       struct tu_tls *t)
{
	static char alpn[] = "http/1.1";
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port) };
	struct timeval tv = { 5, 0 };
	char *proto = NULL;
	word16 plen = 0;

	memset(t, 0, sizeof *t);
	t->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(t->fd >= 0);
	inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
	setsockopt(t->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	setsockopt(t->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
	if (connect(t->fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
		snprintf(t->err, sizeof t->err, "connect: %s", strerror(errno));
		goto fail;
	}
	t->ctx = wolfSSL_CTX_new(max_version == 1 ? wolfTLSv1_1_client_method()
				 : max_version == 2 ? wolfTLSv1_2_client_method()
						    : wolfSSLv23_client_method());
	assert_non_null(t->ctx);
	t->verify = ca_file != NULL;
	if (ca_file)
		assert_int_equal(wolfSSL_CTX_load_verify_locations(t->ctx, ca_file, NULL),
				 WOLFSSL_SUCCESS);
	t->ssl = wolfSSL_new(t->ctx);
	assert_non_null(t->ssl);
	wolfSSL_set_verify(t->ssl, t->verify ? WOLFSSL_VERIFY_PEER : WOLFSSL_VERIFY_NONE,
			   tu_chain_cb);
	wolfSSL_SetCertCbCtx(t->ssl, t);
	wolfSSL_set_fd(t->ssl, t->fd);
	if (sni) {
		assert_int_equal(wolfSSL_UseSNI(t->ssl, WOLFSSL_SNI_HOST_NAME, sni,
					       (word16)strlen(sni)), WOLFSSL_SUCCESS);
		if (t->verify)
			wolfSSL_check_domain_name(t->ssl, sni);
	}
	wolfSSL_UseALPN(t->ssl, alpn, sizeof alpn - 1, WOLFSSL_ALPN_FAILED_ON_MISMATCH);
	int r = wolfSSL_connect(t->ssl);
	if (r != WOLFSSL_SUCCESS) {
		char msg[WOLFSSL_MAX_ERROR_SZ];
		int e = wolfSSL_get_error(t->ssl, r);
		snprintf(t->err, sizeof t->err, "TLS handshake: %s",
			 wolfSSL_ERR_error_string((unsigned long)e, msg));
		goto fail;
	}
	wolfSSL_SetCertCbCtx(t->ssl, NULL);
	t->version = wolfSSL_version(t->ssl);
	if (wolfSSL_ALPN_GetProtocol(t->ssl, &proto, &plen) == WOLFSSL_SUCCESS && proto)
		snprintf(t->alpn, sizeof t->alpn, "%.*s", (int)plen, proto);
	return 0;
fail:;
	char err[sizeof t->err];
	memcpy(err, t->err, sizeof err);
	tu_tls_close(t);
	memcpy(t->err, err, sizeof err);
	return -1;
}

/* One HTTP request over a fresh TLS connection (no SNI, no verification); the response
 * (head + body, NUL-terminated) is read to the server's close, or to Content-Length.
 * Returns the status or -1. */
__attribute__((unused)) static int tu_https(uint16_t port, const char *req, char *resp,
					    size_t cap)
{
	struct tu_tls t;
	size_t n = 0;
	int status = -1;

	resp[0] = '\0';
	if (tu_tls_dial(port, NULL, NULL, 0, &t) != 0)
		return -1;
	if (wolfSSL_write(t.ssl, req, (int)strlen(req)) != (int)strlen(req))
		goto out;
	for (;;) {
		int r = n + 1 < cap ? wolfSSL_read(t.ssl, resp + n, (int)(cap - 1 - n)) : 0;
		if (r <= 0)
			break;
		n += (size_t)r;
		resp[n] = '\0';
		const char *end = strstr(resp, "\r\n\r\n");
		const char *cl = strcasestr(resp, "\r\nContent-Length:");
		if (end && (strncmp(resp, "HTTP/1.1 204", 12) == 0 || strncmp(req, "HEAD", 4) == 0))
			break;
		if (end && cl && cl < end &&
		    n >= (size_t)(end + 4 - resp) + strtoul(cl + 17, NULL, 10))
			break;
	}
	if (sscanf(resp, "HTTP/1.%*d %d", &status) != 1)
		status = -1;
out:
	tu_tls_close(&t);
	return status;
}

/* The leaf's DER from a PEM file (the first certificate in it). malloc'd. */
__attribute__((unused)) static uint8_t *tu_pem_leaf(const char *path, size_t *len)
{
	size_t pl;
	char *pem = file_read(path, &pl);
	uint8_t **ders = NULL, *leaf;
	size_t *lens = NULL, n;

	assert_non_null(pem);
	n = pem_certs(pem, pl, &ders, &lens);
	assert_true(n >= 1);
	leaf = ders[0];
	*len = lens[0];
	for (size_t i = 1; i < n; i++)
		free(ders[i]);
	free(ders);
	free(lens);
	free(pem);
	return leaf;
}

#endif
