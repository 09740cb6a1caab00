#include "mesh/client_tls.h"

#include <wolfssl/options.h>
#include <wolfssl/ssl.h>
#include <wolfssl/wolfcrypt/asn.h>

#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "server/key.h"

#define META_CN_PREFIX "derpkey"

static int64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Go's rule, for the reason given in client_tls.h. */
int client_tls_load_roots(WOLFSSL_CTX *ctx)
{
	const char *file = getenv("SSL_CERT_FILE"), *dirs = getenv("SSL_CERT_DIR");
	int ok = 0;

	if ((!file || !*file) && (!dirs || !*dirs))
		return wolfSSL_CTX_load_system_CA_certs(ctx) == WOLFSSL_SUCCESS;
	if (file && *file)
		ok |= wolfSSL_CTX_load_verify_locations(ctx, file, NULL) == WOLFSSL_SUCCESS;
	if (!dirs || !*dirs) /* Go still reads its default directories */
		return wolfSSL_CTX_load_system_CA_certs(ctx) == WOLFSSL_SUCCESS || ok;
	for (const char *d = dirs; *d;) {
		char dir[4096];
		size_t n = strcspn(d, ":");
		if (n > 0 && n < sizeof dir) {
			memcpy(dir, d, n);
			dir[n] = '\0';
			/* a directory's unreadable or non-certificate files are skipped, as Go */
			ok |= wolfSSL_CTX_load_verify_locations_ex(ctx, NULL, dir,
					WOLFSSL_LOAD_FLAG_IGNORE_ERR) == WOLFSSL_SUCCESS;
		}
		d += n + (d[n] == ':');
	}
	return ok;
}

/* wolfSSL_Init's first call is not thread-safe; tools log in from many threads. */
static pthread_once_t init_once = PTHREAD_ONCE_INIT;

static void init_wolfssl(void)
{
	wolfSSL_Init();
}

static int is_ip(const char *s)
{
	unsigned char b[16];

	return inet_pton(AF_INET, s, b) == 1 || inet_pton(AF_INET6, s, b) == 1;
}

/* Go's parseMetaCert for one certificate: CN "derpkey" + 64 hex digits, serial < 256,
 * and (so that it can never vouch for anything) not a CA. DER is parsed directly:
 * wolfSSL 5.5.4's X509 layer cannot read Ed25519 certificates. */
int client_tls_meta_parse(const uint8_t *der, size_t len, struct client_tls_meta *m)
{
	const size_t pl = sizeof META_CN_PREFIX - 1;
	DecodedCert dc;
	int ok = 0;

	wc_InitDecodedCert(&dc, der, (word32)len, NULL);
	if (wc_ParseCert(&dc, CERT_TYPE, NO_VERIFY, NULL) == 0 && dc.subjectCN && !dc.isCA &&
	    dc.subjectCNLen == (int)(pl + KEY_HEX_LEN) &&
	    memcmp(dc.subjectCN, META_CN_PREFIX, pl) == 0 &&
	    key_from_hex(m->key, dc.subjectCN + pl, KEY_HEX_LEN) == 0) {
		int i = 0;
		while (i < dc.serialSz && dc.serial[i] == 0)
			i++;
		if (dc.serialSz - i <= 1) {
			m->version = i < dc.serialSz ? dc.serial[i] : 0;
			ok = 1;
		}
	}
	wc_FreeDecodedCert(&dc);
	return ok;
}

struct verify_state {
	struct client_tls_meta *meta; /* NULL: not asked for */
	int insecure, done;
};

/* Sees the whole served chain (store->certs; this wolfSSL keeps no session certificates
 * to ask for afterwards). wolfSSL also checks every extra certificate as if it were an
 * intermediate, so the meta certificate that a DERP server appends after its chain
 * fails as unsigned: that one error is ignored, as Go's verifier ignores certificates
 * outside the path. The leaf is still verified on its own; a non-CA certificate is never
 * a signer for it. */
static int verify_cb(int preverify, WOLFSSL_X509_STORE_CTX *store)
{
	struct verify_state *s = store->userCtx;
	struct client_tls_meta tmp;
	int d = store->error_depth;

	for (int i = 0; s && s->meta && !s->done && i < store->totalCerts; i++)
		s->done = client_tls_meta_parse(store->certs[i].buffer, store->certs[i].length,
						 s->meta);
	if (!s || s->insecure)
		return 1;
	if (!preverify && d > 0 && d < store->totalCerts &&
	    client_tls_meta_parse(store->certs[d].buffer, store->certs[d].length, &tmp))
		return 1;
	return preverify;
}

struct WOLFSSL *client_tls_start(int fd, const struct client_tls_opts *o, int64_t deadline_ms,
				 char *err, size_t errlen)
{
	static char alpn[] = "http/1.1";
	WOLFSSL_METHOD *method;
	WOLFSSL_CTX *ctx;
	WOLFSSL *ssl = NULL;

	pthread_once(&init_once, init_wolfssl);
	method = o->max_version == 1 ? wolfTLSv1_1_client_method()
	       : o->max_version == 2 ? wolfTLSv1_2_client_method()
				     : wolfSSLv23_client_method();
	if (!method || !(ctx = wolfSSL_CTX_new(method))) {
		snprintf(err, errlen, "TLS: cannot create a context for that version");
		return NULL;
	}
	if (o->insecure) {
		wolfSSL_CTX_set_verify(ctx, WOLFSSL_VERIFY_NONE, NULL);
	} else {
		int ok = o->ca_file ? wolfSSL_CTX_load_verify_locations(ctx, o->ca_file, NULL) ==
					      WOLFSSL_SUCCESS
				    : client_tls_load_roots(ctx);
		if (!ok) {
			snprintf(err, errlen, "TLS: cannot load CA certificates %s",
				 o->ca_file ? o->ca_file : "(system)");
			goto fail;
		}
		wolfSSL_CTX_set_verify(ctx, WOLFSSL_VERIFY_PEER, NULL);
	}
	if (!(ssl = wolfSSL_new(ctx)))
		goto oom;
	wolfSSL_set_fd(ssl, fd);
	if (o->server_name && *o->server_name) {
		/* Go sends no SNI for an IP literal, but still checks the IP against the cert. */
		if (!is_ip(o->server_name) &&
		    wolfSSL_UseSNI(ssl, WOLFSSL_SNI_HOST_NAME, o->server_name,
				   (unsigned short)strlen(o->server_name)) != WOLFSSL_SUCCESS)
			goto oom;
		/* A DNS name is checked inside the handshake; an IP address after it. */
		if (!o->insecure && !is_ip(o->server_name) &&
		    wolfSSL_check_domain_name(ssl, o->server_name) != WOLFSSL_SUCCESS)
			goto oom;
	}
	wolfSSL_UseALPN(ssl, alpn, sizeof alpn - 1, WOLFSSL_ALPN_FAILED_ON_MISMATCH);
	struct verify_state vs = { o->meta, o->insecure, 0 };
	if (o->meta)
		memset(o->meta, 0, sizeof *o->meta);
	wolfSSL_set_verify(ssl, o->insecure ? WOLFSSL_VERIFY_NONE : WOLFSSL_VERIFY_PEER, verify_cb);
	wolfSSL_SetCertCbCtx(ssl, &vs);
	for (;;) {
		int r = wolfSSL_connect(ssl);
		if (r == WOLFSSL_SUCCESS)
			break;
		int e = wolfSSL_get_error(ssl, r);
		if (e != WOLFSSL_ERROR_WANT_READ && e != WOLFSSL_ERROR_WANT_WRITE) {
			char msg[WOLFSSL_MAX_ERROR_SZ];
			snprintf(err, errlen, "TLS handshake: %s",
				 wolfSSL_ERR_error_string((unsigned long)e, msg));
			goto fail;
		}
		struct pollfd p = { .fd = fd,
				    .events = e == WOLFSSL_ERROR_WANT_READ ? POLLIN : POLLOUT };
		int64_t left = deadline_ms - mono_ms();
		if (left <= 0 || poll(&p, 1, (int)left) == 0) {
			snprintf(err, errlen, "TLS handshake: timed out");
			goto fail;
		}
	}
	if (!o->insecure && o->server_name && is_ip(o->server_name)) {
		WOLFSSL_X509 *x = wolfSSL_get_peer_certificate(ssl);
		int ok = x && wolfSSL_X509_check_ip_asc(x, o->server_name, 0) == 1;
		wolfSSL_X509_free(x);
		if (!ok) {
			snprintf(err, errlen, "TLS: certificate not valid for %s", o->server_name);
			goto fail;
		}
	}
	wolfSSL_SetCertCbCtx(ssl, NULL); /* vs lives on this stack only */
	/* only TLS 1.3 hides the chain from middleboxes: Go trusts the key only then */
	if (o->meta && (!vs.done || wolfSSL_version(ssl) != TLS1_3_VERSION))
		memset(o->meta, 0, sizeof *o->meta);
	/* The session keeps its own reference to the context. */
	wolfSSL_CTX_free(ctx);
	return ssl;
oom:
	snprintf(err, errlen, "TLS: setup failed");
fail:
	if (ssl)
		wolfSSL_free(ssl);
	wolfSSL_CTX_free(ctx);
	return NULL;
}

static ssize_t map_error(WOLFSSL *ssl, int r, short *want)
{
	int e = wolfSSL_get_error(ssl, r);

	if (e == WOLFSSL_ERROR_WANT_READ || e == WOLFSSL_ERROR_WANT_WRITE) {
		*want = e == WOLFSSL_ERROR_WANT_READ ? POLLIN : POLLOUT;
		errno = EAGAIN;
		return -1;
	}
	if (e == WOLFSSL_ERROR_ZERO_RETURN || e == SOCKET_PEER_CLOSED_E)
		return 0;
	errno = ECONNRESET;
	return -1;
}

ssize_t client_tls_read(struct WOLFSSL *ssl, void *buf, size_t len, short *want)
{
	int r = wolfSSL_read(ssl, buf, (int)len);

	return r > 0 ? r : map_error(ssl, r, want);
}

ssize_t client_tls_write(struct WOLFSSL *ssl, const void *buf, size_t len, short *want)
{
	int r = wolfSSL_write(ssl, buf, (int)len);

	if (r > 0)
		return r;
	ssize_t m = map_error(ssl, r, want);
	if (m == 0) {
		errno = EPIPE;
		return -1;
	}
	return m;
}

size_t client_tls_pending(struct WOLFSSL *ssl)
{
	int n = wolfSSL_pending(ssl);

	return n > 0 ? (size_t)n : 0;
}

int client_tls_version(struct WOLFSSL *ssl)
{
	return wolfSSL_version(ssl);
}

void client_tls_free(struct WOLFSSL *ssl)
{
	wolfSSL_free(ssl);
}
