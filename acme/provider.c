/* The certificate provider (SERVER.md §10): flag rules with derper's messages, one
 * wolfSSL context per served certificate (chain + meta certificate), the SNI callback
 * that picks among them inside the handshake, manual certificates with reload on SIGHUP
 * and on file changes, and the thread that watches files and runs ACME (issue.c). */
#include "acme/cert.h"
#include "acme/internal.h"

#include "server/config.h"
#include "server/log.h"

#include <wolfssl/wolfcrypt/sha256.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#define LE_DIRECTORY "https://acme-v02.api.letsencrypt.org/directory"
#define GCP_DIRECTORY "https://dv.acme-v02.api.pki.goog/directory"
#define DEFAULT_HOSTNAME "derp.tailscale.com"
#define RELOAD_SETTLE_MS 300 /* files written one after the other settle first */

static int parse_ip(const char *s, uint8_t ip[16], size_t *len)
{
	if (inet_pton(AF_INET, s, ip) == 1) {
		*len = 4;
		return 0;
	}
	if (inet_pton(AF_INET6, s, ip) == 1) {
		*len = 16;
		return 0;
	}
	return -1;
}

/* derper's prod policy: ^derp([^.]*)\.tailscale\.com\.?$ */
static int prod_name(const char *n)
{
	const char *dot;

	if (strncmp(n, "derp", 4) != 0 || (dot = strchr(n + 4, '.')) == NULL)
		return 0;
	return strcmp(dot, ".tailscale.com") == 0 || strcmp(dot, ".tailscale.com.") == 0;
}

int acme_host_allowed(const char *hostname, const char *name)
{
	size_t n = strlen(name);

	if (strcmp(hostname, DEFAULT_HOSTNAME) == 0)
		return prod_name(name);
	if (n > 0 && name[n - 1] == '.')
		n--;
	return n == strlen(hostname) && strncasecmp(name, hostname, n) == 0;
}

/* ---- contexts ----------------------------------------------------------------------- */

static int sni_cb(WOLFSSL *ssl, int *alert, void *arg);
static int alpn_cb(WOLFSSL *ssl, const unsigned char **out, unsigned char *outlen,
		   const unsigned char *in, unsigned int inlen, void *arg);

WOLFSSL_CTX *provider_ctx_new(struct cert_provider *p, const char *chain, size_t chainlen,
			      const char *key, size_t keylen, int with_meta, char *err,
			      size_t errlen)
{
	WOLFSSL_CTX *ctx = wolfSSL_CTX_new(wolfSSLv23_server_method());
	char *full = NULL;
	int rc;

	if (ctx == NULL) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	wolfSSL_CTX_SetMinVersion(ctx, WOLFSSL_TLSV1_2);
	if (with_meta && p->meta_pem) {
		size_t ml = strlen(p->meta_pem);
		if ((full = malloc(chainlen + ml + 2)) == NULL)
			goto fail;
		memcpy(full, chain, chainlen);
		full[chainlen] = '\n';
		memcpy(full + chainlen + 1, p->meta_pem, ml + 1);
		chain = full;
		chainlen += ml + 1;
	}
	rc = wolfSSL_CTX_use_certificate_chain_buffer(ctx, (const unsigned char *)chain,
						      (long)chainlen);
	free(full);
	if (rc != WOLFSSL_SUCCESS) {
		snprintf(err, errlen, "tls: failed to find any PEM data in certificate input");
		goto fail;
	}
	if (wolfSSL_CTX_use_PrivateKey_buffer(ctx, (const unsigned char *)key, (long)keylen,
					      WOLFSSL_FILETYPE_PEM) != WOLFSSL_SUCCESS) {
		snprintf(err, errlen, "tls: failed to find any PEM data in key input");
		goto fail;
	}
	/* our own answer certificates carry a critical extension wolfSSL's parser refuses;
	 * their key was made with them, so only loaded files are checked */
	if (with_meta && wolfSSL_CTX_check_private_key(ctx) != WOLFSSL_SUCCESS) {
		snprintf(err, errlen, "tls: private key does not match public key");
		goto fail;
	}
	wolfSSL_CTX_set_servername_callback(ctx, sni_cb);
	wolfSSL_CTX_set_servername_arg(ctx, p);
	wolfSSL_CTX_set_alpn_select_cb(ctx, alpn_cb, NULL);
	return ctx;
fail:
	wolfSSL_CTX_free(ctx);
	return NULL;
}

/* ---- SNI: which certificate, inside wolfSSL_accept -------------------------------- */

static int offers_acme_tls(WOLFSSL *ssl)
{
	char *list = NULL, *s, *save = NULL;
	word16 n = 0;
	int found = 0;

	if (wolfSSL_ALPN_GetPeerProtocol(ssl, &list, &n) != WOLFSSL_SUCCESS || list == NULL)
		return 0;
	for (s = strtok_r(list, ",", &save); s; s = strtok_r(NULL, ",", &save))
		found |= strcmp(s, "acme-tls/1") == 0;
	wolfSSL_ALPN_FreePeerProtocol(ssl, &list);
	return found;
}

/* The connection's local address as text, v4-mapped addresses unmapped. */
static int local_ip(WOLFSSL *ssl, char *out, size_t len)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof ss;
	int fd = wolfSSL_get_fd(ssl);

	if (fd < 0 || getsockname(fd, (struct sockaddr *)&ss, &sl) != 0)
		return -1;
	if (ss.ss_family == AF_INET)
		return inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, out,
				 (socklen_t)len) ? 0 : -1;
	if (ss.ss_family == AF_INET6) {
		struct in6_addr *a = &((struct sockaddr_in6 *)&ss)->sin6_addr;
		if (IN6_IS_ADDR_V4MAPPED(a))
			return inet_ntop(AF_INET, &a->s6_addr[12], out, (socklen_t)len) ? 0 : -1;
		return inet_ntop(AF_INET6, a, out, (socklen_t)len) ? 0 : -1;
	}
	return -1;
}

static int same_ip(const char *a, const char *b)
{
	uint8_t x[16], y[16];
	size_t xl, yl;

	if (parse_ip(a, x, &xl) != 0 || parse_ip(b, y, &yl) != 0)
		return 0;
	if (xl == 16 && IN6_IS_ADDR_V4MAPPED((struct in6_addr *)x)) {
		memmove(x, x + 12, 4);
		xl = 4;
	}
	return xl == yl && memcmp(x, y, xl) == 0;
}

/* A usable entry's context, or NULL (then issuance is asked for, never waited on). */
static WOLFSSL_CTX *entry_ctx_locked(struct cert_provider *p, const char *name, int is_ip)
{
	struct cert_entry *e = issue_entry_locked(p, name, is_ip, 1);
	time_t now = time(NULL);

	if (e == NULL)
		return NULL;
	if (e->ctx && now < e->not_after)
		return e->ctx;
	if (now >= e->next_attempt && !e->woken) {
		e->want = 1;
		e->woken = 1; /* one wake-up per attempt, however many handshakes ask */
		provider_wake(p);
	}
	return NULL;
}

/* The decision for one ClientHello; the context to switch to, or NULL to refuse.
 * Called with p->mu held. */
static WOLFSSL_CTX *sni_choose(struct cert_provider *p, WOLFSSL *ssl, const char *sni,
			       int acme_alpn, const char **why)
{
	char name[256], lip[64];
	uint8_t ip[16];
	size_t iplen, n;

	if (acme_alpn) {
		/* TLS-ALPN-01 validation: only the answer certificate, never the real one */
		for (size_t i = 0; i < sizeof p->alpn / sizeof p->alpn[0]; i++)
			if (p->alpn[i].ctx && sni && strcasecmp(p->alpn[i].name, sni) == 0)
				return p->alpn[i].ctx;
		*why = "no pending tls-alpn-01 challenge for this name";
		return NULL;
	}
	if (p->mode == MODE_MANUAL) {
		if (p->host_is_ip || (sni && strcmp(sni, p->hostname) == 0))
			return p->front;
		*why = "cert mismatch with hostname";
		return NULL;
	}
	if (p->ip_certs && (sni == NULL || parse_ip(sni, ip, &iplen) == 0)) {
		if (local_ip(ssl, lip, sizeof lip) != 0) {
			*why = "unable to determine the connection's local IP address";
			return NULL;
		}
		if (sni && !same_ip(sni, lip)) {
			*why = "requested certificate for IP does not match the connection's IP address";
			return NULL;
		}
		*why = "certificate for this IP address not ready yet";
		return entry_ctx_locked(p, lip, 1);
	}
	if (!p->host_acme) {
		*why = "no certificate for hostname; this server only serves IP address certificates";
		return NULL;
	}
	if (sni == NULL || sni[0] == '\0') {
		*why = "acme/autocert: missing server name";
		return NULL;
	}
	n = strlen(sni);
	if (n >= sizeof name) {
		*why = "server name too long";
		return NULL;
	}
	for (size_t i = 0; i <= n; i++)
		name[i] = (char)(sni[i] >= 'A' && sni[i] <= 'Z' ? sni[i] + 32 : sni[i]);
	if (n > 0 && name[n - 1] == '.')
		name[n - 1] = '\0';
	if (!acme_host_allowed(p->hostname, sni) && !acme_host_allowed(p->hostname, name)) {
		*why = "acme/autocert: host not configured";
		return NULL;
	}
	*why = "certificate for this name not ready yet";
	return entry_ctx_locked(p, name, 0);
}

/* The last SNI refusal on this thread: the handshake runs on the worker that then
 * classifies its failure (cert_provider_take_refusal). */
static __thread char sni_refusal[320];
static __thread int sni_refused;

const char *cert_provider_take_refusal(void)
{
	if (!sni_refused)
		return NULL;
	sni_refused = 0;
	return sni_refusal;
}

static int sni_cb(WOLFSSL *ssl, int *alert, void *arg)
{
	struct cert_provider *p = arg;
	char sni[256];
	void *req = NULL;
	word16 n = wolfSSL_SNI_GetRequest(ssl, WOLFSSL_SNI_HOST_NAME, &req);
	int acme = offers_acme_tls(ssl);
	const char *why = NULL;
	WOLFSSL_CTX *ctx;

	if (n >= sizeof sni)
		n = 0;
	if (n)
		memcpy(sni, req, n);
	sni[n] = '\0';
	pthread_mutex_lock(&p->mu);
	ctx = sni_choose(p, ssl, n ? sni : NULL, acme, &why);
	if (ctx && wolfSSL_set_SSL_CTX(ssl, ctx) == NULL)
		ctx = NULL;
	pthread_mutex_unlock(&p->mu);
	if (ctx == NULL) {
		snprintf(sni_refusal, sizeof sni_refusal, "SNI \"%s\": %s", sni,
			 why ? why : "error");
		sni_refused = 1;
		*alert = internal_error; /* what Go's server sends when GetCertificate fails */
		return fatal_return;
	}
	return 0;
}

/* ALPN, decided after the extensions (alpn_cb) rather than set here: wolfSSL_UseALPN in
 * this callback would put an extension after the client's pre_shared_key, which TLS 1.3
 * resumption requires to be the last one parsed (it refused every ticket with
 * illegal_parameter). derper offers http/1.1 only; a TLS-ALPN-01 validator gets
 * acme-tls/1 (the SNI callback chose its certificate by the same test). */
static int alpn_cb(WOLFSSL *ssl, const unsigned char **out, unsigned char *outlen,
		   const unsigned char *in, unsigned int inlen, void *arg)
{
	const char *want = offers_acme_tls(ssl) ? "acme-tls/1" : "http/1.1";
	size_t wl = strlen(want);

	(void)arg;
	for (unsigned int i = 0; i < inlen; i += 1u + in[i])
		if (in[i] == wl && i + 1 + wl <= inlen && memcmp(in + i + 1, want, wl) == 0) {
			*out = in + i + 1;
			*outlen = (unsigned char)wl;
			return 0;
		}
	/* no match: wolfSSL falls back to the list set in cert_provider_ssl_new, which
	 * refuses the handshake (no_application_protocol) */
	return noack_return;
}

WOLFSSL *cert_provider_ssl_new(struct cert_provider *p, int fd)
{
	WOLFSSL *ssl;

	pthread_mutex_lock(&p->mu);
	ssl = wolfSSL_new(p->front);
	pthread_mutex_unlock(&p->mu);
	if (ssl && (wolfSSL_set_fd(ssl, fd) != WOLFSSL_SUCCESS ||
		    wolfSSL_UseALPN(ssl, (char *)"http/1.1,acme-tls/1", 19,
				    WOLFSSL_ALPN_FAILED_ON_MISMATCH) != WOLFSSL_SUCCESS)) {
		wolfSSL_free(ssl);
		return NULL;
	}
	return ssl;
}

void provider_wake(struct cert_provider *p)
{
	uint64_t one = 1;

	if (p->wake_fd >= 0 && write(p->wake_fd, &one, sizeof one) < 0) {
		/* the counter is full: a wake-up is pending anyway */
	}
}

/* ---- manual mode -------------------------------------------------------------------- */

static int mkdir_p(const char *dir, int mode)
{
	char tmp[4200];
	size_t n = strlen(dir);

	if (n >= sizeof tmp)
		return -1;
	memcpy(tmp, dir, n + 1);
	for (char *s = tmp + 1; *s; s++) {
		if (*s != '/')
			continue;
		*s = '\0';
		if (mkdir(tmp, (mode_t)mode) != 0 && errno != EEXIST)
			return -1;
		*s = '/';
	}
	return mkdir(tmp, (mode_t)mode) != 0 && errno != EEXIST ? -1 : 0;
}

/* derper's createSelfSignedIPCert: P-256, CN and SAN = the IP, one year. */
static int selfsigned_ip(struct cert_provider *p, char *err, size_t errlen)
{
	uint8_t ip[16], *der = NULL;
	size_t iplen, dl;
	char *crt = NULL, *key = NULL;
	time_t now = time(NULL);
	struct tm tm;
	ecc_key k;
	int rc = -1;

	if (parse_ip(p->hostname, ip, &iplen) != 0 || eckey_generate(&k) != 0) {
		snprintf(err, errlen, "failed to generate EC private key");
		return -1;
	}
	gmtime_r(&now, &tm);
	tm.tm_year += 1; /* Go's AddDate(1, 0, 0) */
	if (cert_build_selfsigned(&k, p->hostname, NULL, ip, iplen, now, timegm(&tm), NULL, &der,
				  &dl) != 0 ||
	    (crt = pem_encode("CERTIFICATE", der, dl)) == NULL || (key = eckey_to_pem(&k)) == NULL) {
		snprintf(err, errlen, "failed to create certificate");
		goto out;
	}
	if (mkdir_p(p->certdir, 0700) != 0) {
		snprintf(err, errlen, "failed to create directory for certificate: %s", strerror(errno));
		goto out;
	}
	if (file_write_atomic(p->crt_path, crt, strlen(crt), 0644) != 0) {
		snprintf(err, errlen, "failed to write certificate to %s: %s", p->crt_path,
			 strerror(errno));
		goto out;
	}
	if (file_write_atomic(p->key_path, key, strlen(key), 0600) != 0) {
		snprintf(err, errlen, "failed to write key to %s: %s", p->key_path, strerror(errno));
		goto out;
	}
	rc = 0;
out:
	free(der);
	free(crt);
	if (key) {
		memset(key, 0, strlen(key));
		free(key);
	}
	wc_ecc_free(&k);
	return rc;
}

/* Loads the manual files into a new context. 0, 1 (same files as now), -1 with err. */
static int manual_load(struct cert_provider *p, WOLFSSL_CTX **out, char *err, size_t errlen)
{
	size_t cl = 0, kl = 0, n;
	char *crt = NULL, *key = NULL, keyname[256], why[4600], ipt[64];
	uint8_t **ders = NULL, sha[32], ipb[16];
	size_t *lens = NULL, ipl, nd = 0;
	WOLFSSL_X509 *x = NULL;
	wc_Sha256 h;
	int rc = -1, ok;

	n = 0;
	for (const char *s = p->hostname; *s && n + 1 < sizeof keyname; s++)
		if ((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
		    (*s >= '0' && *s <= '9') || *s == '-' || *s == '.')
			keyname[n++] = *s;
	keyname[n] = '\0';

	crt = file_read(p->crt_path, &cl);
	if (crt)
		key = file_read(p->key_path, &kl);
	if (crt == NULL || key == NULL) {
		int e = errno;
		const char *path = crt == NULL ? p->crt_path : p->key_path;
		snprintf(why, sizeof why, "open %s: %s", path, strerror(e));
		if (e == ENOENT && p->host_is_ip && *out == NULL) {
			free(crt);
			crt = NULL;
			if (selfsigned_ip(p, why, sizeof why) == 0) {
				crt = file_read(p->crt_path, &cl);
				key = crt ? file_read(p->key_path, &kl) : NULL;
			}
		}
		if (crt == NULL || key == NULL) {
			snprintf(err, errlen, "can not load x509 key pair for hostname \"%s\": %s",
				 keyname, why);
			goto out;
		}
	}
	wc_InitSha256(&h);
	wc_Sha256Update(&h, (const byte *)crt, (word32)cl);
	wc_Sha256Update(&h, (const byte *)key, (word32)kl);
	wc_Sha256Final(&h, sha);
	if (*out != NULL && memcmp(sha, p->leaf_sha, 32) == 0) {
		rc = 1;
		goto out;
	}
	if ((nd = pem_certs(crt, cl, &ders, &lens)) == 0 ||
	    (x = wolfSSL_X509_d2i(NULL, ders[0], (int)lens[0])) == NULL) {
		snprintf(err, errlen, "can not load x509 key pair for hostname \"%s\": "
			 "tls: failed to find any PEM data in certificate input", keyname);
		goto out;
	}
	if (parse_ip(p->hostname, ipb, &ipl) == 0) {
		inet_ntop(ipl == 4 ? AF_INET : AF_INET6, ipb, ipt, sizeof ipt);
		ok = wolfSSL_X509_check_ip_asc(x, ipt, 0) == WOLFSSL_SUCCESS;
	} else {
		ok = wolfSSL_X509_check_host(x, p->hostname, strlen(p->hostname), 0, NULL) ==
		     WOLFSSL_SUCCESS;
	}
	if (!ok) {
		snprintf(err, errlen, "cert invalid for hostname \"%s\": x509: certificate is not "
			 "valid for %s", p->hostname, p->hostname);
		goto out;
	}
	*out = provider_ctx_new(p, crt, cl, key, kl, 1, why, sizeof why);
	if (*out == NULL) {
		snprintf(err, errlen, "can not load x509 key pair for hostname \"%s\": %s", keyname,
			 why);
		goto out;
	}
	memcpy(p->leaf_sha, sha, 32);
	{
		struct cert_info ci;
		if (cert_info_parse(ders[0], lens[0], &ci) == 0)
			cert_expiry_note(p->hostname, (int64_t)ci.not_after);
	}
	if (p->host_is_ip) {
		uint8_t d[32];
		char hex[65];
		wc_Sha256Hash(ders[0], (word32)lens[0], d);
		for (int i = 0; i < 32; i++)
			snprintf(hex + 2 * i, 3, "%02x", d[i]);
		log_info(LS_CERT, "Using self-signed certificate for IP address \"%s\". "
			 "Configure it in DERPMap using: (https://tailscale.com/s/custom-derp) "
			 "{\"Name\":\"custom\",\"RegionID\":900,\"HostName\":\"%s\","
			 "\"CertName\":\"sha256-raw:%s\"}", p->hostname, p->hostname, hex);
	}
	rc = 0;
out:
	for (size_t i = 0; i < nd; i++)
		free(ders[i]);
	free(ders);
	free(lens);
	wolfSSL_X509_free(x);
	free(crt);
	if (key) {
		memset(key, 0, kl);
		free(key);
	}
	return rc;
}

int cert_provider_reload(struct cert_provider *p)
{
	WOLFSSL_CTX *ctx, *old;
	char err[512];
	int rc;

	if (p == NULL || p->mode != MODE_MANUAL)
		return 1;
	pthread_mutex_lock(&p->mu);
	ctx = p->front; /* non-NULL: tells manual_load this is a reload */
	pthread_mutex_unlock(&p->mu);
	rc = manual_load(p, &ctx, err, sizeof err);
	if (rc < 0) {
		log_error(LS_CERT, "derper: certificate reload refused, the old certificate "
			  "keeps serving: %s", err);
		return -1;
	}
	if (rc == 1)
		return 1;
	pthread_mutex_lock(&p->mu);
	old = p->front;
	p->front = ctx;
	pthread_mutex_unlock(&p->mu);
	wolfSSL_CTX_free(old); /* live connections hold their own references */
	log_info(LS_CERT, "derper: certificate reloaded from %s", p->crt_path);
	return 0;
}

/* ---- the provider thread ------------------------------------------------------------ */

static long ms_until(const struct timespec *t)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (t->tv_sec - now.tv_sec) * 1000 + (t->tv_nsec - now.tv_nsec) / 1000000;
}

/* An inotify event about one of our two files? */
static int watch_hit(struct cert_provider *p, const char *buf, ssize_t n)
{
	const char *crt = strrchr(p->crt_path, '/'), *key = strrchr(p->key_path, '/');
	int hit = 0;

	crt = crt ? crt + 1 : p->crt_path;
	key = key ? key + 1 : p->key_path;
	for (ssize_t off = 0; off + (ssize_t)sizeof(struct inotify_event) <= n;) {
		const struct inotify_event *ev = (const void *)(buf + off);
		if (ev->len && (strcmp(ev->name, crt) == 0 || strcmp(ev->name, key) == 0))
			hit = 1;
		off += (ssize_t)sizeof *ev + ev->len;
	}
	return hit;
}

static void *provider_thread(void *arg)
{
	struct cert_provider *p = arg;
	struct timespec settle = { 0, 0 };
	int pending = 0;

	while (!__atomic_load_n(&p->stop, __ATOMIC_ACQUIRE)) {
		struct pollfd pf[2] = { { p->wake_fd, POLLIN, 0 }, { p->inotify_fd, POLLIN, 0 } };
		long timeout = -1;
		char buf[4096] __attribute__((aligned(8)));
		ssize_t n;
		uint64_t v;

		if (p->mode == MODE_ACME)
			timeout = issue_run(p);
		if (pending) {
			long t = ms_until(&settle);
			timeout = timeout < 0 || t < timeout ? (t < 0 ? 0 : t) : timeout;
		}
		if (__atomic_load_n(&p->stop, __ATOMIC_ACQUIRE))
			break;
		if (poll(pf, p->inotify_fd >= 0 ? 2 : 1, (int)(timeout > 3600000 ? 3600000 : timeout)) < 0 &&
		    errno != EINTR)
			break;
		if (pf[0].revents & POLLIN && read(p->wake_fd, &v, sizeof v) < 0) {
			/* drained by another wake-up */
		}
		if (p->inotify_fd >= 0 && pf[1].revents & POLLIN &&
		    (n = read(p->inotify_fd, buf, sizeof buf)) > 0 && watch_hit(p, buf, n)) {
			clock_gettime(CLOCK_MONOTONIC, &settle);
			settle.tv_nsec += RELOAD_SETTLE_MS * 1000000L;
			settle.tv_sec += settle.tv_nsec / 1000000000L;
			settle.tv_nsec %= 1000000000L;
			pending = 1;
		}
		if (pending && ms_until(&settle) <= 0) {
			pending = 0;
			cert_provider_reload(p);
		}
	}
	return NULL;
}

/* ---- start / stop ------------------------------------------------------------------- */

static int copy(char *dst, size_t cap, const char *src, const char *what, char *err,
		size_t errlen)
{
	if (strlen(src) >= cap) {
		snprintf(err, errlen, "%s too long", what);
		return -1;
	}
	memcpy(dst, src, strlen(src) + 1);
	return 0;
}

/* A throw-away certificate for the front context before any real one exists: every
 * handshake is decided (and refused or switched) in the SNI callback. */
static WOLFSSL_CTX *placeholder_ctx(struct cert_provider *p, char *err, size_t errlen)
{
	uint8_t *der = NULL;
	size_t dl;
	char *crt = NULL, *key = NULL;
	WOLFSSL_CTX *ctx = NULL;
	time_t now = time(NULL);
	ecc_key k;

	if (eckey_generate(&k) != 0)
		return NULL;
	if (cert_build_selfsigned(&k, "derpd", "derpd.invalid", NULL, 0, now, now + 86400, NULL,
				  &der, &dl) == 0 &&
	    (crt = pem_encode("CERTIFICATE", der, dl)) != NULL && (key = eckey_to_pem(&k)) != NULL)
		ctx = provider_ctx_new(p, crt, strlen(crt), key, strlen(key), 0, err, errlen);
	free(der);
	free(crt);
	free(key);
	wc_ecc_free(&k);
	return ctx;
}

struct cert_provider *cert_provider_start_ex(const struct config *cfg,
					     const uint8_t server_pub[32], int challenges,
					     char *err, size_t errlen)
{
	struct cert_provider *p;
	const char *mode = cfg->certmode;
	uint8_t ip[16];
	size_t iplen, n;
	int gcp = strcmp(mode, "gcp") == 0;

	cert_status_reset(); /* the names of an earlier provider (tests) are not served */
	if (cfg->certdir == NULL || cfg->certdir[0] == '\0') {
		snprintf(err, errlen, "missing required --certdir flag");
		return NULL;
	}
	if (cfg->acme_ip_certs && strcmp(mode, "letsencrypt") != 0) {
		snprintf(err, errlen, "--acme-ip-certs requires --certmode=letsencrypt");
		return NULL;
	}
	if (strcmp(mode, "manual") != 0 && strcmp(mode, "letsencrypt") != 0 && !gcp) {
		snprintf(err, errlen, "unsupport cert mode: \"%s\"", mode);
		return NULL;
	}
	if ((p = calloc(1, sizeof *p)) == NULL) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	p->wake_fd = p->inotify_fd = -1;
	pthread_mutex_init(&p->mu, NULL);
	p->challenges = challenges;
	p->host_is_ip = parse_ip(cfg->hostname, ip, &iplen) == 0;
	if (copy(p->certdir, sizeof p->certdir, cfg->certdir, "--certdir", err, errlen) != 0 ||
	    copy(p->hostname, sizeof p->hostname, cfg->hostname, "--hostname", err, errlen) != 0 ||
	    copy(p->email, sizeof p->email, cfg->acme_email, "--acme-email", err, errlen) != 0 ||
	    copy(p->eab_kid, sizeof p->eab_kid, cfg->acme_eab_kid, "--acme-eab-kid", err,
		 errlen) != 0 ||
	    copy(p->ca_file, sizeof p->ca_file, cfg->acme_ca_file ? cfg->acme_ca_file : "",
		 "--acme-ca-file", err, errlen) != 0)
		goto fail;
	n = (size_t)snprintf(p->directory, sizeof p->directory, "%s",
			     cfg->acme_directory && cfg->acme_directory[0] ? cfg->acme_directory :
			     gcp ? GCP_DIRECTORY : LE_DIRECTORY);
	(void)n;

	if (strcmp(mode, "manual") != 0) {
		p->mode = MODE_ACME;
		if (p->host_is_ip) {
			if (gcp) {
				snprintf(err, errlen, "--certmode=gcp requires --hostname to be a DNS "
					 "name, not an IP address");
				goto fail;
			}
			if (!cfg->acme_ip_certs) {
				snprintf(err, errlen, "--hostname is an IP address; use "
					 "--certmode=manual for a self-signed cert, or set "
					 "--acme-ip-certs to get LetsEncrypt IP address certs");
				goto fail;
			}
		} else {
			p->host_acme = 1;
		}
		p->ip_certs = cfg->acme_ip_certs;
		if (gcp) {
			if (cfg->acme_eab_kid[0] == '\0' || cfg->acme_eab_key[0] == '\0') {
				snprintf(err, errlen, "--certmode=gcp requires --acme-eab-kid and "
					 "--acme-eab-key flags");
				goto fail;
			}
			if (cfg->acme_email[0] == '\0') {
				snprintf(err, errlen, "--certmode=gcp requires --acme-email flag");
				goto fail;
			}
		}
		/* EAB: gcp always (derper); letsencrypt only toward a chosen --acme-directory */
		if (cfg->acme_eab_kid[0] && cfg->acme_eab_key[0] &&
		    (gcp || (cfg->acme_directory && cfg->acme_directory[0]))) {
			if (eab_key_decode(cfg->acme_eab_key, p->eab_key, sizeof p->eab_key,
					   &p->eab_len) != 0) {
				snprintf(err, errlen, "invalid base64 encoding for EAB key");
				goto fail;
			}
		} else {
			p->eab_kid[0] = '\0';
		}
		if (p->email[0] == '\0' && strcmp(p->hostname, DEFAULT_HOSTNAME) == 0 && p->host_acme)
			snprintf(p->email, sizeof p->email, "security@tailscale.com");
		p->prod_policy = strcmp(p->hostname, DEFAULT_HOSTNAME) == 0;
	}

	if (cert_build_meta(server_pub, time(NULL), NULL, &p->meta_der, &p->meta_len) != 0 ||
	    (p->meta_pem = pem_encode("CERTIFICATE", p->meta_der, p->meta_len)) == NULL) {
		snprintf(err, errlen, "CreateCertificate: meta certificate failed");
		goto fail;
	}

	if (p->mode == MODE_MANUAL) {
		char keyname[256];
		size_t k = 0;
		for (const char *s = p->hostname; *s && k + 1 < sizeof keyname; s++)
			if ((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
			    (*s >= '0' && *s <= '9') || *s == '-' || *s == '.')
				keyname[k++] = *s;
		keyname[k] = '\0';
		snprintf(p->crt_path, sizeof p->crt_path, "%s/%s.crt", p->certdir, keyname);
		snprintf(p->key_path, sizeof p->key_path, "%s/%s.key", p->certdir, keyname);
		if (manual_load(p, &p->front, err, errlen) != 0)
			goto fail;
		p->inotify_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
		if (p->inotify_fd >= 0 &&
		    inotify_add_watch(p->inotify_fd, p->certdir, IN_CLOSE_WRITE | IN_MOVED_TO |
				      IN_CREATE | IN_ATTRIB) < 0) {
			log_warn(LS_CERT, "derper: not watching %s for certificate changes (%s); "
				 "SIGHUP reloads", p->certdir, strerror(errno));
			close(p->inotify_fd);
			p->inotify_fd = -1;
		}
	} else {
		if ((p->placeholder = placeholder_ctx(p, err, errlen)) == NULL)
			goto fail;
		wolfSSL_CTX_up_ref(p->placeholder);
		p->front = p->placeholder;
		if (issue_init(p, err, errlen) != 0)
			goto fail;
	}
	p->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (p->wake_fd < 0 || pthread_create(&p->thread, NULL, provider_thread, p) != 0) {
		snprintf(err, errlen, "starting the certificate thread: %s", strerror(errno));
		goto fail;
	}
	p->thread_started = 1;
	return p;
fail:
	cert_provider_stop(p);
	return NULL;
}

struct cert_provider *cert_provider_start(const struct config *cfg,
					  const uint8_t server_pub[32], char *err,
					  size_t errlen)
{
	/* autocert's order: TLS-ALPN-01 on the TLS port, HTTP-01 when port 80 is served */
	int ch = CHAL_TLSALPN01 | (cfg->http_port >= 0 ? CHAL_HTTP01 : 0);

	return cert_provider_start_ex(cfg, server_pub, ch, err, errlen);
}

void cert_provider_stop(struct cert_provider *p)
{
	if (p == NULL)
		return;
	__atomic_store_n(&p->stop, 1, __ATOMIC_RELEASE);
	if (p->thread_started) {
		provider_wake(p);
		pthread_join(p->thread, NULL);
	}
	if (p->mode == MODE_ACME)
		issue_free(p);
	if (p->wake_fd >= 0)
		close(p->wake_fd);
	if (p->inotify_fd >= 0)
		close(p->inotify_fd);
	for (size_t i = 0; i < sizeof p->alpn / sizeof p->alpn[0]; i++)
		if (p->alpn[i].ctx)
			wolfSSL_CTX_free(p->alpn[i].ctx);
	if (p->front)
		wolfSSL_CTX_free(p->front);
	if (p->placeholder)
		wolfSSL_CTX_free(p->placeholder);
	free(p->meta_pem);
	free(p->meta_der);
	pthread_mutex_destroy(&p->mu);
	free(p);
}
