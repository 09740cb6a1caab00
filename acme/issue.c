/* ACME certificates for the provider: one entry per name or IP, loaded from the certdir
 * cache, issued through client.c on the provider thread, renewed at the CA's ARI window
 * or when a third of the lifetime is left, retried with backoff (1 min doubling to 30
 * min). Handshakes never wait: they ask (entry.want) and are refused until it is there.
 *
 * certdir layout (derper's, so either program can take over the other's directory):
 *   acme_account+key      account key for --hostname certificates (autocert's name)
 *   <hostname>            EC PRIVATE KEY then the chain, PEM (autocert's cache entry)
 *   acme-account.key      account key for --acme-ip-certs
 *   <ip, ':' -> '.'>.crt  chain PEM (0644) and .key (EC PRIVATE KEY, 0600) */
#include "acme/cert.h"
#include "acme/client.h"

#include "server/log.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_ENTRIES 64
#define RETRY_FIRST_S 60
#define RETRY_MAX_S (30 * 60)
#define ARI_RECHECK_S (6 * 3600)

struct issue_state {
	ecc_key account;
	struct acme_client *client;
	char account_path[4200];
	time_t ari_checked;
};

/* Go's time.Time printing, as derper's log lines show it. */
static const char *fmt_time(time_t t, char *buf, size_t len)
{
	struct tm tm;

	gmtime_r(&t, &tm);
	strftime(buf, len, "%Y-%m-%d %H:%M:%S +0000 UTC", &tm);
	return buf;
}

/* ---- files -------------------------------------------------------------------------- */

char *file_read(const char *path, size_t *len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	char *buf;
	ssize_t n;
	size_t got = 0;

	if (fd < 0)
		return NULL;
	if (fstat(fd, &st) != 0 || st.st_size > (16 << 20) || (buf = malloc((size_t)st.st_size + 1)) == NULL) {
		close(fd);
		errno = EFBIG;
		return NULL;
	}
	while (got < (size_t)st.st_size && (n = read(fd, buf + got, (size_t)st.st_size - got)) > 0)
		got += (size_t)n;
	close(fd);
	buf[got] = '\0';
	*len = got;
	return buf;
}

int file_write_atomic(const char *path, const void *p, size_t n, int mode)
{
	char tmp[4400];
	int fd, rc = -1;

	snprintf(tmp, sizeof tmp, "%s.tmp%d", path, (int)getpid());
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
	if (fd < 0)
		return -1;
	if (fchmod(fd, (mode_t)mode) == 0 && write(fd, p, n) == (ssize_t)n && fsync(fd) == 0)
		rc = 0;
	if (close(fd) != 0)
		rc = -1;
	if (rc == 0 && rename(tmp, path) != 0)
		rc = -1;
	if (rc != 0)
		unlink(tmp);
	return rc;
}

/* ---- HTTP-01 token table (process-wide; the port-80 handler reads it) ----------------- */

#define TOKENS 16
static pthread_mutex_t tok_mu = PTHREAD_MUTEX_INITIALIZER;
static struct { char token[256], keyauth[600]; } tokens[TOKENS];

int http01_put(const char *token, const char *keyauth)
{
	int rc = -1;

	if (strlen(token) >= sizeof tokens[0].token || strlen(keyauth) >= sizeof tokens[0].keyauth)
		return -1;
	pthread_mutex_lock(&tok_mu);
	for (int i = 0; i < TOKENS && rc; i++) {
		if (tokens[i].token[0] == '\0') {
			snprintf(tokens[i].token, sizeof tokens[i].token, "%s", token);
			snprintf(tokens[i].keyauth, sizeof tokens[i].keyauth, "%s", keyauth);
			rc = 0;
		}
	}
	pthread_mutex_unlock(&tok_mu);
	return rc;
}

void http01_del(const char *token)
{
	pthread_mutex_lock(&tok_mu);
	for (int i = 0; i < TOKENS; i++)
		if (strcmp(tokens[i].token, token) == 0)
			tokens[i].token[0] = '\0';
	pthread_mutex_unlock(&tok_mu);
}

static int acme_active; /* an ACME provider runs: manual mode leaves port 80 alone */

int acme_http01_response(const char *path, char *buf, size_t len)
{
	static const char prefix[] = "/.well-known/acme-challenge/";
	int rc = 0;

	if (!__atomic_load_n(&acme_active, __ATOMIC_ACQUIRE) ||
	    strncmp(path, prefix, sizeof prefix - 1) != 0)
		return -1;
	path += sizeof prefix - 1;
	pthread_mutex_lock(&tok_mu);
	for (int i = 0; i < TOKENS && rc == 0; i++) {
		size_t n = strlen(tokens[i].keyauth);
		if (tokens[i].token[0] && strcmp(tokens[i].token, path) == 0 && n <= len && n > 0) {
			memcpy(buf, tokens[i].keyauth, n);
			rc = (int)n;
		}
	}
	pthread_mutex_unlock(&tok_mu);
	return rc;
}

/* ---- challenge hooks ---------------------------------------------------------------- */

static int hook_http_put(void *arg, const char *token, const char *keyauth)
{
	(void)arg;
	return http01_put(token, keyauth);
}

static void hook_http_del(void *arg, const char *token)
{
	(void)arg;
	http01_del(token);
}

static int hook_alpn_put(void *arg, const char *name, const uint8_t hash[32])
{
	struct cert_provider *p = arg;
	uint8_t *der = NULL;
	size_t dl;
	char *crt = NULL, *key = NULL, err[256];
	WOLFSSL_CTX *ctx = NULL;
	time_t now = time(NULL);
	ecc_key k;
	int rc = -1;

	if (strlen(name) >= sizeof p->alpn[0].name || eckey_generate(&k) != 0)
		return -1;
	if (cert_build_selfsigned(&k, name, name, NULL, 0, now - 3600, now + 7 * 86400, hash, &der,
				  &dl) == 0 &&
	    (crt = pem_encode("CERTIFICATE", der, dl)) != NULL && (key = eckey_to_pem(&k)) != NULL)
		ctx = provider_ctx_new(p, crt, strlen(crt), key, strlen(key), 0, err, sizeof err);
	free(der);
	free(crt);
	free(key);
	wc_ecc_free(&k);
	if (ctx == NULL)
		return -1;
	pthread_mutex_lock(&p->mu);
	for (size_t i = 0; i < sizeof p->alpn / sizeof p->alpn[0]; i++) {
		if (p->alpn[i].ctx == NULL) {
			snprintf(p->alpn[i].name, sizeof p->alpn[i].name, "%s", name);
			p->alpn[i].ctx = ctx;
			rc = 0;
			break;
		}
	}
	pthread_mutex_unlock(&p->mu);
	if (rc != 0)
		wolfSSL_CTX_free(ctx);
	return rc;
}

static void hook_alpn_del(void *arg, const char *name)
{
	struct cert_provider *p = arg;
	WOLFSSL_CTX *old = NULL;

	pthread_mutex_lock(&p->mu);
	for (size_t i = 0; i < sizeof p->alpn / sizeof p->alpn[0]; i++) {
		if (p->alpn[i].ctx && strcmp(p->alpn[i].name, name) == 0) {
			old = p->alpn[i].ctx;
			p->alpn[i].ctx = NULL;
			break;
		}
	}
	pthread_mutex_unlock(&p->mu);
	if (old)
		wolfSSL_CTX_free(old);
}

/* ---- entries ------------------------------------------------------------------------ */

struct cert_entry *issue_entry_locked(struct cert_provider *p, const char *name, int is_ip,
				      int create)
{
	struct cert_entry *e;

	for (size_t i = 0; i < p->nent; i++)
		if (p->ent[i].is_ip == is_ip && strcmp(p->ent[i].name, name) == 0)
			return &p->ent[i];
	if (!create || p->nent >= MAX_ENTRIES || strlen(name) >= sizeof e->name)
		return NULL;
	if (p->nent == p->capent) {
		/* fixed capacity: entries are never moved while a handshake may look at them */
		return NULL;
	}
	e = &p->ent[p->nent];
	memset(e, 0, sizeof *e);
	snprintf(e->name, sizeof e->name, "%s", name);
	e->is_ip = is_ip;
	e->want = 1;
	/* Published last: issue_run walks the entries without the lock (names never change). */
	__atomic_store_n(&p->nent, p->nent + 1, __ATOMIC_RELEASE);
	return e;
}

static void paths(struct cert_provider *p, const struct cert_entry *e, char *crt, char *key,
		  size_t cap)
{
	if (e->is_ip) {
		char base[256];
		snprintf(base, sizeof base, "%s", e->name);
		for (char *s = base; *s; s++)
			if (*s == ':')
				*s = '.';
		snprintf(crt, cap, "%s/%s.crt", p->certdir, base);
		snprintf(key, cap, "%s/%s.key", p->certdir, base);
	} else {
		snprintf(crt, cap, "%s/%s", p->certdir, e->name);
		snprintf(key, cap, "%s/%s", p->certdir, e->name);
	}
}

/* base64url(AKI keyIdentifier) "." base64url(serial) */
void acme_ari_id(const struct cert_info *ci, char *out, size_t cap)
{
	char *a = b64url(ci->aki, ci->aki_len), *s = b64url(ci->serial, ci->serial_len);

	out[0] = '\0';
	if (a && s && ci->aki_len)
		snprintf(out, cap, "%s.%s", a, s);
	free(a);
	free(s);
}

/* Installs chain+key as e's certificate; 0, or -1 if unusable or expired. */
static int install(struct cert_provider *p, struct cert_entry *e, const char *chain,
		   size_t chainlen, const char *key, size_t keylen, char *err, size_t errlen)
{
	uint8_t **ders = NULL;
	size_t *lens = NULL, nd = pem_certs(chain, chainlen, &ders, &lens);
	struct cert_info ci;
	WOLFSSL_CTX *ctx = NULL, *old = NULL, *oldfront = NULL;
	time_t now = time(NULL);
	int rc = -1;

	if (nd == 0 || cert_info_parse(ders[0], lens[0], &ci) != 0) {
		snprintf(err, errlen, "no certificate");
		goto out;
	}
	if (now < ci.not_before || now >= ci.not_after) {
		snprintf(err, errlen, "certificate expired or not yet valid");
		goto out;
	}
	{
		WOLFSSL_X509 *x = wolfSSL_X509_d2i(NULL, ders[0], (int)lens[0]);
		int ok = x && (e->is_ip ? wolfSSL_X509_check_ip_asc(x, e->name, 0) :
			       wolfSSL_X509_check_host(x, e->name, strlen(e->name), 0, NULL)) ==
			      WOLFSSL_SUCCESS;
		wolfSSL_X509_free(x);
		if (!ok) {
			snprintf(err, errlen, "certificate not valid for %s", e->name);
			goto out;
		}
	}
	if ((ctx = provider_ctx_new(p, chain, chainlen, key, keylen, 1, err, errlen)) == NULL)
		goto out;
	pthread_mutex_lock(&p->mu);
	old = e->ctx;
	e->ctx = ctx;
	e->not_before = ci.not_before;
	e->not_after = ci.not_after;
	e->renew_at = ci.not_after - (ci.not_after - ci.not_before) / 3;
	acme_ari_id(&ci, e->ari_id, sizeof e->ari_id);
	if (!e->is_ip && p->host_acme && strcmp(e->name, p->hostname) == 0) {
		/* the --hostname certificate is also what SNI-less handshakes start from */
		wolfSSL_CTX_up_ref(ctx);
		oldfront = p->front;
		p->front = ctx;
	}
	pthread_mutex_unlock(&p->mu);
	if (old)
		wolfSSL_CTX_free(old);
	if (oldfront)
		wolfSSL_CTX_free(oldfront);
	cert_expiry_note(e->name, (int64_t)ci.not_after);
	rc = 0;
out:
	for (size_t i = 0; i < nd; i++)
		free(ders[i]);
	free(ders);
	free(lens);
	return rc;
}

static int load_cached(struct cert_provider *p, struct cert_entry *e)
{
	char crt[4400], keyp[4400], err[256];
	char *c, *k;
	size_t cl, kl;
	int rc;

	paths(p, e, crt, keyp, sizeof crt);
	if ((c = file_read(crt, &cl)) == NULL)
		return -1;
	k = strcmp(crt, keyp) == 0 ? c : file_read(keyp, &kl);
	if (k == c)
		kl = cl;
	rc = k ? install(p, e, c, cl, k, kl, err, sizeof err) : -1;
	if (rc == 0)
		log_info(LS_ACME, "loaded cached cert for %s (expires %s)", e->name,
			 fmt_time(e->not_after, err, sizeof err));
	if (k && k != c)
		free(k);
	free(c);
	return rc;
}

static int load_account(struct cert_provider *p, struct issue_state *st, char *err, size_t errlen)
{
	size_t n;
	char *pem = file_read(st->account_path, &n);

	if (pem) {
		int rc = eckey_from_pem(&st->account, pem, n);
		free(pem);
		if (rc != 0)
			snprintf(err, errlen, "ACME account key: invalid PEM in %s", st->account_path);
		return rc;
	}
	if (errno != ENOENT) {
		snprintf(err, errlen, "ACME account key: %s: %s", st->account_path, strerror(errno));
		return -1;
	}
	if (eckey_generate(&st->account) != 0 || (pem = eckey_to_pem(&st->account)) == NULL) {
		snprintf(err, errlen, "ACME account key: generation failed");
		return -1;
	}
	n = strlen(pem);
	if (file_write_atomic(st->account_path, pem, n, 0600) != 0) {
		snprintf(err, errlen, "ACME account key: %s: %s", st->account_path, strerror(errno));
		free(pem);
		return -1;
	}
	free(pem);
	(void)p;
	return 0;
}

static void curl_init_once(void)
{
	curl_global_init(CURL_GLOBAL_DEFAULT);
}

int issue_init(struct cert_provider *p, char *err, size_t errlen)
{
	static pthread_once_t once = PTHREAD_ONCE_INIT;
	struct issue_state *st = calloc(1, sizeof *st);

	if (st == NULL || (p->ent = calloc(MAX_ENTRIES, sizeof *p->ent)) == NULL) {
		free(st);
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	p->capent = MAX_ENTRIES;
	pthread_once(&once, curl_init_once);
	if (mkdir(p->certdir, 0700) != 0 && errno != EEXIST) {
		snprintf(err, errlen, "mkdir %s: %s", p->certdir, strerror(errno));
		free(st);
		return -1;
	}
	snprintf(st->account_path, sizeof st->account_path, "%s/%s", p->certdir,
		 p->host_acme ? "acme_account+key" : "acme-account.key");
	if (load_account(p, st, err, errlen) != 0) {
		free(st);
		return -1;
	}
	st->client = acme_client_new(p->directory, p->ca_file, &st->account, p->email, p->eab_kid,
				     p->eab_key, p->eab_len, &p->stop);
	if (st->client == NULL) {
		snprintf(err, errlen, "ACME client: out of memory");
		wc_ecc_free(&st->account);
		free(st);
		return -1;
	}
	p->acme = st;
	if (p->host_acme) {
		pthread_mutex_lock(&p->mu);
		issue_entry_locked(p, p->hostname, 0, 1);
		pthread_mutex_unlock(&p->mu);
		/* the cached certificate serves from the first connection on */
		load_cached(p, &p->ent[0]);
		p->ent[0].loaded = 1;
		p->ent[0].want = time(NULL) >= p->ent[0].renew_at;
	}
	__atomic_store_n(&acme_active, 1, __ATOMIC_RELEASE);
	return 0;
}

void issue_free(struct cert_provider *p)
{
	struct issue_state *st = p->acme;

	__atomic_store_n(&acme_active, 0, __ATOMIC_RELEASE);
	for (size_t i = 0; p->ent && i < p->nent; i++)
		if (p->ent[i].ctx)
			wolfSSL_CTX_free(p->ent[i].ctx);
	free(p->ent);
	p->ent = NULL;
	if (st) {
		acme_client_free(st->client);
		wc_ecc_free(&st->account);
		free(st);
	}
}

/* One issuance for e (provider thread, no lock held). */
static void obtain(struct cert_provider *p, struct cert_entry *e)
{
	struct issue_state *st = p->acme;
	struct acme_hooks hk = { p, hook_http_put, hook_http_del, hook_alpn_put, hook_alpn_del };
	char err[4800], crt[4400], keyp[4400], *chain = NULL, *keypem = NULL, replaces[256];
	int challenges = e->is_ip ? CHAL_HTTP01 : p->challenges;
	ecc_key k;
	int rc = -1;

	pthread_mutex_lock(&p->mu);
	snprintf(replaces, sizeof replaces, "%s", e->ctx ? e->ari_id : "");
	pthread_mutex_unlock(&p->mu);
	if (eckey_generate(&k) != 0)
		return;
	if (acme_client_issue(st->client, e->is_ip ? "ip" : "dns", e->name,
			      e->is_ip ? "shortlived" : NULL, replaces, challenges, &hk, &k, &chain,
			      err, sizeof err) == 0 &&
	    (keypem = eckey_to_pem(&k)) != NULL) {
		paths(p, e, crt, keyp, sizeof crt);
		if (e->is_ip) {
			rc = file_write_atomic(keyp, keypem, strlen(keypem), 0600) == 0 &&
			     file_write_atomic(crt, chain, strlen(chain), 0644) == 0 ? 0 : -1;
		} else {
			size_t kl = strlen(keypem), cl = strlen(chain);
			char *both = malloc(kl + cl + 1);
			rc = -1;
			if (both) {
				memcpy(both, keypem, kl);
				memcpy(both + kl, chain, cl + 1);
				rc = file_write_atomic(crt, both, kl + cl, 0600);
				free(both);
			}
		}
		if (rc != 0)
			snprintf(err, sizeof err, "writing %s: %s", crt, strerror(errno));
		else
			rc = install(p, e, chain, strlen(chain), keypem, strlen(keypem), err,
				     sizeof err);
	}
	cert_acme_order_note(rc == 0);
	pthread_mutex_lock(&p->mu);
	e->woken = 0;
	e->want = rc != 0; /* a failure is retried after the backoff */
	if (rc == 0) {
		e->retry_s = 0;
		e->next_attempt = 0;
	} else {
		e->retry_s = e->retry_s ? (e->retry_s * 2 > RETRY_MAX_S ? RETRY_MAX_S : e->retry_s * 2) :
			     RETRY_FIRST_S;
		e->next_attempt = time(NULL) + e->retry_s;
	}
	pthread_mutex_unlock(&p->mu);
	if (rc == 0 && e->is_ip)
		log_info(LS_ACME, "got cert for %s (expires %s). Configure it in DERPMap using "
			 "(https://tailscale.com/s/custom-derp):\n  {\"Name\":\"custom\",\"RegionID\":900,"
			 "\"HostName\":\"%s\"}", e->name, fmt_time(e->not_after, crt, sizeof crt), e->name);
	else if (rc == 0)
		log_info(LS_ACME, "got cert for %s (expires %s)", e->name,
			 fmt_time(e->not_after, crt, sizeof crt));
	else
		log_error(LS_ACME, "getting cert for %s: %s (next attempt in %ds)", e->name, err,
			 e->retry_s);
	free(chain);
	if (keypem) {
		memset(keypem, 0, strlen(keypem));
		free(keypem);
	}
	wc_ecc_free(&k);
}

/* The CA's suggested renewal window moves renew_at (RFC 9773); checked every 6 hours. */
static void ari_refresh(struct cert_provider *p, struct cert_entry *e)
{
	struct issue_state *st = p->acme;
	char id[256];
	time_t s, en;

	pthread_mutex_lock(&p->mu);
	snprintf(id, sizeof id, "%s", e->ctx ? e->ari_id : "");
	pthread_mutex_unlock(&p->mu);
	if (id[0] == '\0' || acme_client_ari(st->client, id, &s, &en) != 0)
		return;
	pthread_mutex_lock(&p->mu);
	e->renew_at = s + (en > s ? (time_t)((unsigned)rand() % (unsigned)(en - s)) : 0);
	pthread_mutex_unlock(&p->mu);
}

long issue_run(struct cert_provider *p)
{
	struct issue_state *st = p->acme;
	time_t now = time(NULL), next = 0;
	int ari = now - st->ari_checked >= ARI_RECHECK_S;

	if (ari)
		st->ari_checked = now;
	for (size_t i = 0; i < __atomic_load_n(&p->nent, __ATOMIC_ACQUIRE) &&
			   !__atomic_load_n(&p->stop, __ATOMIC_ACQUIRE); i++) {
		struct cert_entry *e = &p->ent[i];
		int due;

		if (!e->loaded) {
			e->loaded = 1;
			if (load_cached(p, e) == 0 && now < e->renew_at) {
				pthread_mutex_lock(&p->mu);
				e->want = 0;
				pthread_mutex_unlock(&p->mu);
			}
		}
		if (ari && e->ctx)
			ari_refresh(p, e);
		pthread_mutex_lock(&p->mu);
		due = (e->want || (e->ctx && now >= e->renew_at)) && now >= e->next_attempt;
		pthread_mutex_unlock(&p->mu);
		if (due)
			obtain(p, e);
		now = time(NULL);
		pthread_mutex_lock(&p->mu);
		{
			time_t t = e->want || !e->ctx ? e->next_attempt : e->renew_at;
			if (e->want || e->ctx)
				next = next == 0 || t < next ? t : next;
		}
		pthread_mutex_unlock(&p->mu);
	}
	if (next == 0)
		return ARI_RECHECK_S * 1000L;
	return next <= now ? 0 : (long)(next - now) * 1000L;
}
