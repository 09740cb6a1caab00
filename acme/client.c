/* The ACME client (RFC 8555): directory, nonces, JWS ES256 requests (badNonce retried),
 * account with optional external account binding, order, http-01 / tls-alpn-01,
 * finalize with a CSR, chain download; ARI (RFC 9773) renewal windows. libcurl does HTTP,
 * wolfSSL the signatures, jansson the JSON. Blocking: runs on the provider thread only. */
#include "acme/client.h"

#include "server/log.h"

#include <wolfssl/wolfcrypt/hmac.h>
#include <wolfssl/wolfcrypt/sha256.h>

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#ifndef DERPD_VERSION
#define DERPD_VERSION "unknown"
#endif
#define MAX_BODY (1 << 20)
#define ISSUE_TIMEOUT_S 180 /* upstream's issuance timeout */

struct acme_client {
	char dir_url[1024], ca_file[4096], email[320], eab_kid[256];
	uint8_t eab_key[256];
	size_t eab_len;
	ecc_key *key;
	char jwk[256];           /* {"crv":"P-256","kty":"EC","x":..,"y":..}: thumbprint order */
	char thumb[64];          /* base64url SHA-256 of jwk */
	struct acme_dir dir;
	int have_dir;
	char kid[1024];          /* account URL */
	char nonce[256];
	CURL *curl;
	volatile int *stop;
	time_t deadline;
};

static unsigned long badnonce_retries;

unsigned long acme_client_badnonce_retries(void)
{
	return __atomic_load_n(&badnonce_retries, __ATOMIC_RELAXED);
}

struct resp {
	long status;
	char *body;
	size_t len;
	char nonce[256], location[1024], retry_after[64];
};

static void resp_free(struct resp *r)
{
	free(r->body);
	memset(r, 0, sizeof *r);
}

static size_t on_body(char *p, size_t sz, size_t n, void *arg)
{
	struct resp *r = arg;
	size_t k = sz * n;
	char *nb;

	if (r->len + k > MAX_BODY || (nb = realloc(r->body, r->len + k + 1)) == NULL)
		return 0;
	r->body = nb;
	memcpy(r->body + r->len, p, k);
	r->len += k;
	r->body[r->len] = '\0';
	return k;
}

static void header_value(const char *line, size_t n, const char *name, char *out, size_t cap)
{
	size_t nl = strlen(name), v;

	if (n <= nl + 1 || strncasecmp(line, name, nl) != 0 || line[nl] != ':')
		return;
	line += nl + 1;
	n -= nl + 1;
	while (n && (*line == ' ' || *line == '\t'))
		line++, n--;
	while (n && (line[n - 1] == '\r' || line[n - 1] == '\n' || line[n - 1] == ' '))
		n--;
	v = n < cap ? n : cap - 1;
	memcpy(out, line, v);
	out[v] = '\0';
}

static size_t on_header(char *p, size_t sz, size_t n, void *arg)
{
	struct resp *r = arg;
	size_t k = sz * n;

	header_value(p, k, "Replay-Nonce", r->nonce, sizeof r->nonce);
	header_value(p, k, "Location", r->location, sizeof r->location);
	header_value(p, k, "Retry-After", r->retry_after, sizeof r->retry_after);
	return k;
}

/* One HTTP exchange. method: "GET", "HEAD" or "POST" (JOSE body). 0 when a status came. */
static int http(struct acme_client *c, const char *method, const char *url, const char *body,
		const char *accept, struct resp *r, char *err, size_t errlen)
{
	struct curl_slist *h = NULL;
	CURLcode rc;
	char ua[64];

	memset(r, 0, sizeof *r);
	curl_easy_reset(c->curl);
	snprintf(ua, sizeof ua, "derpd/%s tailscale-derper", DERPD_VERSION);
	curl_easy_setopt(c->curl, CURLOPT_URL, url);
	curl_easy_setopt(c->curl, CURLOPT_USERAGENT, ua);
	curl_easy_setopt(c->curl, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c->curl, CURLOPT_TIMEOUT, 30L);
	curl_easy_setopt(c->curl, CURLOPT_CONNECTTIMEOUT, 10L);
	curl_easy_setopt(c->curl, CURLOPT_PROTOCOLS_STR, "https,http");
	curl_easy_setopt(c->curl, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(c->curl, CURLOPT_WRITEDATA, r);
	curl_easy_setopt(c->curl, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(c->curl, CURLOPT_HEADERDATA, r);
	if (c->ca_file[0])
		curl_easy_setopt(c->curl, CURLOPT_CAINFO, c->ca_file);
	if (accept) {
		char a[128];
		snprintf(a, sizeof a, "Accept: %s", accept);
		h = curl_slist_append(h, a);
	}
	if (strcmp(method, "HEAD") == 0) {
		curl_easy_setopt(c->curl, CURLOPT_NOBODY, 1L);
	} else if (strcmp(method, "POST") == 0) {
		h = curl_slist_append(h, "Content-Type: application/jose+json");
		curl_easy_setopt(c->curl, CURLOPT_POSTFIELDS, body);
		curl_easy_setopt(c->curl, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
	}
	curl_easy_setopt(c->curl, CURLOPT_HTTPHEADER, h);
	rc = curl_easy_perform(c->curl);
	curl_easy_getinfo(c->curl, CURLINFO_RESPONSE_CODE, &r->status);
	curl_slist_free_all(h);
	if (r->nonce[0])
		snprintf(c->nonce, sizeof c->nonce, "%s", r->nonce);
	if (rc != CURLE_OK) {
		snprintf(err, errlen, "%s %s: %s", method, url, curl_easy_strerror(rc));
		resp_free(r);
		return -1;
	}
	return 0;
}

static void problem(const struct resp *r, const char *what, char *err, size_t errlen)
{
	char type[128], detail[512];

	if (r->body && acme_parse_problem(r->body, r->len, type, sizeof type, detail,
					  sizeof detail) == 0)
		snprintf(err, errlen, "%s: %ld %s: %s", what, r->status, type, detail);
	else
		snprintf(err, errlen, "%s: HTTP status %ld", what, r->status);
}

static int load_directory(struct acme_client *c, char *err, size_t errlen)
{
	struct resp r;

	if (c->have_dir)
		return 0;
	if (http(c, "GET", c->dir_url, NULL, NULL, &r, err, errlen) != 0)
		return -1;
	if (r.status != 200 || r.body == NULL ||
	    acme_parse_directory(r.body, r.len, &c->dir) != 0) {
		snprintf(err, errlen, "ACME directory %s: status %ld, not a directory", c->dir_url,
			 r.status);
		resp_free(&r);
		return -1;
	}
	resp_free(&r);
	c->have_dir = 1;
	return 0;
}

/* JWS in flattened JSON form. kid NULL: the account key as "jwk" (newAccount). */
static char *jws(struct acme_client *c, const char *url, const char *payload, int use_jwk)
{
	char *prot = NULL, *p64 = NULL, *pl64 = NULL, *s64 = NULL, *signing = NULL, *out = NULL;
	uint8_t sig[64];
	size_t n;
	json_t *h = json_object(), *o = NULL;

	json_object_set_new(h, "alg", json_string("ES256"));
	if (use_jwk)
		json_object_set_new(h, "jwk", json_loads(c->jwk, 0, NULL));
	else
		json_object_set_new(h, "kid", json_string(c->kid));
	json_object_set_new(h, "nonce", json_string(c->nonce));
	json_object_set_new(h, "url", json_string(url));
	prot = json_dumps(h, JSON_COMPACT);
	json_decref(h);
	if (prot == NULL)
		return NULL;
	p64 = b64url((const uint8_t *)prot, strlen(prot));
	pl64 = b64url((const uint8_t *)payload, strlen(payload));
	if (p64 == NULL || pl64 == NULL)
		goto out;
	n = strlen(p64) + strlen(pl64) + 2;
	if ((signing = malloc(n)) == NULL)
		goto out;
	snprintf(signing, n, "%s.%s", p64, pl64);
	if (eckey_sign_raw(c->key, (const uint8_t *)signing, strlen(signing), sig) != 0 ||
	    (s64 = b64url(sig, sizeof sig)) == NULL)
		goto out;
	o = json_pack("{s:s, s:s, s:s}", "protected", p64, "payload", pl64, "signature", s64);
	out = o ? json_dumps(o, JSON_COMPACT) : NULL;
	json_decref(o);
out:
	free(prot);
	free(p64);
	free(pl64);
	free(s64);
	free(signing);
	return out;
}

/* Signed POST (payload "" = POST-as-GET), retrying on badNonce with the fresh nonce. */
static int post(struct acme_client *c, const char *url, const char *payload, int use_jwk,
		const char *accept, struct resp *r, char *err, size_t errlen)
{
	for (int attempt = 0; attempt < 8; attempt++) {
		char type[128], detail[256];
		char *body;
		int rc;

		if (c->nonce[0] == '\0') {
			struct resp nr;
			if (http(c, "HEAD", c->dir.new_nonce, NULL, NULL, &nr, err, errlen) != 0)
				return -1;
			resp_free(&nr);
			if (c->nonce[0] == '\0') {
				snprintf(err, errlen, "newNonce: no Replay-Nonce");
				return -1;
			}
		}
		if ((body = jws(c, url, payload, use_jwk)) == NULL) {
			snprintf(err, errlen, "signing request: failed");
			return -1;
		}
		c->nonce[0] = '\0'; /* used; the response brings the next */
		rc = http(c, "POST", url, body, accept, r, err, errlen);
		free(body);
		if (rc != 0)
			return -1;
		if (r->status == 400 && r->body &&
		    acme_parse_problem(r->body, r->len, type, sizeof type, detail, sizeof detail) == 0 &&
		    strcmp(type, "urn:ietf:params:acme:error:badNonce") == 0) {
			log_debug(LS_ACME, "badNonce from %s, retrying", url);
			__atomic_add_fetch(&badnonce_retries, 1, __ATOMIC_RELAXED);
			resp_free(r);
			continue;
		}
		return 0;
	}
	snprintf(err, errlen, "%s: too many badNonce answers", url);
	return -1;
}

static int pause_for(struct acme_client *c, const struct resp *r)
{
	int s = r->retry_after[0] ? atoi(r->retry_after) : 1;

	if (s < 1)
		s = 1;
	if (s > 10)
		s = 10;
	for (int i = 0; i < s * 10; i++) {
		if (c->stop && __atomic_load_n(c->stop, __ATOMIC_ACQUIRE))
			return -1;
		usleep(100000);
	}
	return time(NULL) > c->deadline ? -1 : 0;
}

static int account(struct acme_client *c, char *err, size_t errlen)
{
	json_t *req;
	char *payload;
	struct resp r;
	int rc;

	if (c->kid[0])
		return 0;
	req = json_pack("{s:b}", "termsOfServiceAgreed", 1);
	if (c->email[0]) {
		char mail[400];
		snprintf(mail, sizeof mail, "mailto:%s", c->email);
		json_object_set_new(req, "contact", json_pack("[s]", mail));
	}
	if (c->eab_kid[0]) {
		/* RFC 8555 §7.3.4: the account JWK, MACed with the CA-issued key */
		json_t *h = json_pack("{s:s, s:s, s:s}", "alg", "HS256", "kid", c->eab_kid, "url",
				      c->dir.new_account);
		char *hp = json_dumps(h, JSON_COMPACT), *h64, *p64, *s64, *si;
		uint8_t mac[WC_SHA256_DIGEST_SIZE];
		Hmac hmac;
		size_t n;
		json_decref(h);
		h64 = b64url((const uint8_t *)hp, strlen(hp));
		p64 = b64url((const uint8_t *)c->jwk, strlen(c->jwk));
		n = strlen(h64) + strlen(p64) + 2;
		si = malloc(n);
		snprintf(si, n, "%s.%s", h64, p64);
		wc_HmacInit(&hmac, NULL, INVALID_DEVID);
		wc_HmacSetKey(&hmac, WC_SHA256, c->eab_key, (word32)c->eab_len);
		wc_HmacUpdate(&hmac, (const byte *)si, (word32)strlen(si));
		wc_HmacFinal(&hmac, mac);
		wc_HmacFree(&hmac);
		s64 = b64url(mac, sizeof mac);
		json_object_set_new(req, "externalAccountBinding",
				    json_pack("{s:s, s:s, s:s}", "protected", h64, "payload", p64,
					      "signature", s64));
		free(hp), free(h64), free(p64), free(s64), free(si);
	}
	payload = json_dumps(req, JSON_COMPACT);
	json_decref(req);
	rc = post(c, c->dir.new_account, payload, 1, NULL, &r, err, errlen);
	free(payload);
	if (rc != 0)
		return -1;
	if ((r.status != 200 && r.status != 201) || r.location[0] == '\0') {
		problem(&r, "newAccount", err, errlen);
		resp_free(&r);
		return -1;
	}
	snprintf(c->kid, sizeof c->kid, "%s", r.location);
	resp_free(&r);
	return 0;
}

/* Polls url (POST-as-GET) until status is not pending/processing; parses into o or a. */
static int poll_status(struct acme_client *c, const char *url, struct acme_order *o,
		       struct acme_authz *a, char *err, size_t errlen)
{
	for (;;) {
		struct resp r;
		const char *st;
		if (post(c, url, "", 0, NULL, &r, err, errlen) != 0)
			return -1;
		if (r.status != 200 || r.body == NULL ||
		    (o ? acme_parse_order(r.body, r.len, o) : acme_parse_authz(r.body, r.len, a)) != 0) {
			problem(&r, url, err, errlen);
			resp_free(&r);
			return -1;
		}
		st = o ? o->status : a->status;
		if (strcmp(st, "pending") != 0 && strcmp(st, "processing") != 0) {
			resp_free(&r);
			return 0;
		}
		if (pause_for(c, &r) != 0) {
			snprintf(err, errlen, "%s: still %s at the deadline", url, st);
			resp_free(&r);
			return -1;
		}
		resp_free(&r);
	}
}

static int authorize(struct acme_client *c, const char *url, int challenges,
		     const struct acme_hooks *hk, char *err, size_t errlen)
{
	struct acme_authz a;
	struct resp r;
	char keyauth[600];
	int pick = -1, type = 0, rc;

	if (post(c, url, "", 0, NULL, &r, err, errlen) != 0)
		return -1;
	if (r.status != 200 || r.body == NULL || acme_parse_authz(r.body, r.len, &a) != 0) {
		problem(&r, "authorization", err, errlen);
		resp_free(&r);
		return -1;
	}
	resp_free(&r);
	if (strcmp(a.status, "valid") == 0)
		return 0;
	if (strcmp(a.status, "pending") != 0) {
		snprintf(err, errlen, "authorization for %s is %s", a.ident_value, a.status);
		return -1;
	}
	/* TLS-ALPN-01 first (no port 80 needed), then HTTP-01; IP identifiers HTTP-01 only */
	for (int want = CHAL_TLSALPN01; want && pick < 0; want = want == CHAL_TLSALPN01 ? CHAL_HTTP01 : 0) {
		if (!(challenges & want) || (want == CHAL_TLSALPN01 && strcmp(a.ident_type, "dns") != 0))
			continue;
		for (int i = 0; i < a.nchal && pick < 0; i++)
			if (strcmp(a.chal_type[i], want == CHAL_HTTP01 ? "http-01" : "tls-alpn-01") == 0 &&
			    a.chal_token[i][0])
				pick = i, type = want;
	}
	if (pick < 0) {
		snprintf(err, errlen, "authorization for %s offers no usable challenge", a.ident_value);
		return -1;
	}
	snprintf(keyauth, sizeof keyauth, "%s.%s", a.chal_token[pick], c->thumb);
	if (type == CHAL_HTTP01) {
		rc = hk->http01_put(hk->arg, a.chal_token[pick], keyauth);
	} else {
		uint8_t h[WC_SHA256_DIGEST_SIZE];
		wc_Sha256Hash((const byte *)keyauth, (word32)strlen(keyauth), h);
		rc = hk->alpn_put(hk->arg, a.ident_value, h);
	}
	if (rc != 0) {
		snprintf(err, errlen, "setting up the %s answer failed", a.chal_type[pick]);
		return -1;
	}
	rc = post(c, a.chal_url[pick], "{}", 0, NULL, &r, err, errlen);
	if (rc == 0 && r.status != 200) {
		problem(&r, "challenge", err, errlen);
		rc = -1;
	}
	if (rc == 0)
		resp_free(&r);
	if (rc == 0 && poll_status(c, url, NULL, &a, err, errlen) == 0 &&
	    strcmp(a.status, "valid") != 0) {
		snprintf(err, errlen, "%s validation of %s: authorization %s", a.chal_type[pick],
			 a.ident_value, a.status);
		rc = -1;
	}
	if (type == CHAL_HTTP01)
		hk->http01_del(hk->arg, a.chal_token[pick]);
	else
		hk->alpn_del(hk->arg, a.ident_value);
	return rc;
}

int acme_client_issue(struct acme_client *c, const char *type, const char *value,
		      const char *profile, const char *replaces, int challenges,
		      const struct acme_hooks *hk, ecc_key *certkey, char **chain, char *err,
		      size_t errlen)
{
	struct acme_order o;
	struct resp r;
	char order_url[1024], *payload;
	uint8_t ip[16], *csr = NULL;
	size_t iplen = 0, csrlen;
	char *csr64;
	json_t *req;
	int rc;

	*chain = NULL;
	c->deadline = time(NULL) + ISSUE_TIMEOUT_S;
	if (load_directory(c, err, errlen) != 0 || account(c, err, errlen) != 0)
		return -1;
	req = json_pack("{s:[{s:s, s:s}]}", "identifiers", "type", type, "value", value);
	if (profile && c->dir.has_profile_shortlived)
		json_object_set_new(req, "profile", json_string(profile));
	if (replaces && replaces[0] && c->dir.renewal_info[0])
		json_object_set_new(req, "replaces", json_string(replaces));
	payload = json_dumps(req, JSON_COMPACT);
	json_decref(req);
	rc = post(c, c->dir.new_order, payload, 0, NULL, &r, err, errlen);
	free(payload);
	if (rc != 0)
		return -1;
	if (r.status != 201 || r.body == NULL || acme_parse_order(r.body, r.len, &o) != 0 ||
	    r.location[0] == '\0') {
		problem(&r, "newOrder", err, errlen);
		resp_free(&r);
		return -1;
	}
	snprintf(order_url, sizeof order_url, "%s", r.location);
	resp_free(&r);
	for (int i = 0; i < o.nauthz; i++)
		if (authorize(c, o.authz[i], challenges, hk, err, errlen) != 0)
			return -1;
	if (poll_status(c, order_url, &o, NULL, err, errlen) != 0)
		return -1;
	if (strcmp(o.status, "ready") != 0) {
		snprintf(err, errlen, "order for %s is %s, not ready", value, o.status);
		return -1;
	}
	if (strcmp(type, "ip") == 0 && (inet_pton(AF_INET, value, ip) == 1 ? (iplen = 4) :
					inet_pton(AF_INET6, value, ip) == 1 ? (iplen = 16) : 0) == 0) {
		snprintf(err, errlen, "bad IP %s", value);
		return -1;
	}
	if (csr_build(certkey, iplen ? NULL : value, ip, iplen, &csr, &csrlen) != 0 ||
	    (csr64 = b64url(csr, csrlen)) == NULL) {
		free(csr);
		snprintf(err, errlen, "making the CSR failed");
		return -1;
	}
	free(csr);
	req = json_pack("{s:s}", "csr", csr64);
	free(csr64);
	payload = json_dumps(req, JSON_COMPACT);
	json_decref(req);
	rc = post(c, o.finalize, payload, 0, NULL, &r, err, errlen);
	free(payload);
	if (rc != 0)
		return -1;
	if (r.status != 200) {
		problem(&r, "finalize", err, errlen);
		resp_free(&r);
		return -1;
	}
	resp_free(&r);
	if (poll_status(c, order_url, &o, NULL, err, errlen) != 0)
		return -1;
	if (strcmp(o.status, "valid") != 0 || o.certificate[0] == '\0') {
		snprintf(err, errlen, "order for %s is %s after finalize", value, o.status);
		return -1;
	}
	if (post(c, o.certificate, "", 0, "application/pem-certificate-chain", &r, err, errlen) != 0)
		return -1;
	if (r.status != 200 || r.body == NULL || strstr(r.body, "-----BEGIN CERTIFICATE-----") == NULL) {
		problem(&r, "certificate download", err, errlen);
		resp_free(&r);
		return -1;
	}
	*chain = r.body;
	r.body = NULL;
	resp_free(&r);
	return 0;
}

int acme_client_ari(struct acme_client *c, const char *certid, time_t *start, time_t *end)
{
	char url[1600], err[256];
	struct resp r;
	int rc = -1;

	if (load_directory(c, err, sizeof err) != 0 || c->dir.renewal_info[0] == '\0')
		return -1;
	snprintf(url, sizeof url, "%s%s%s", c->dir.renewal_info,
		 c->dir.renewal_info[strlen(c->dir.renewal_info) - 1] == '/' ? "" : "/", certid);
	if (http(c, "GET", url, NULL, NULL, &r, err, sizeof err) != 0)
		return -1;
	if (r.status == 200 && r.body)
		rc = acme_parse_renewal_info(r.body, r.len, start, end);
	resp_free(&r);
	return rc;
}

struct acme_client *acme_client_new(const char *dir_url, const char *ca_file, ecc_key *key,
				    const char *email, const char *eab_kid,
				    const uint8_t *eab_key, size_t eab_len, volatile int *stop)
{
	struct acme_client *c = calloc(1, sizeof *c);
	uint8_t x[32], y[32], h[WC_SHA256_DIGEST_SIZE];
	char *x64, *y64, *t64;

	if (c == NULL)
		return NULL;
	snprintf(c->dir_url, sizeof c->dir_url, "%s", dir_url);
	snprintf(c->ca_file, sizeof c->ca_file, "%s", ca_file ? ca_file : "");
	snprintf(c->email, sizeof c->email, "%s", email ? email : "");
	snprintf(c->eab_kid, sizeof c->eab_kid, "%s", eab_kid ? eab_kid : "");
	if (eab_key && eab_len <= sizeof c->eab_key) {
		memcpy(c->eab_key, eab_key, eab_len);
		c->eab_len = eab_len;
	}
	c->key = key;
	c->stop = stop;
	if (eckey_xy(key, x, y) != 0 || (c->curl = curl_easy_init()) == NULL) {
		acme_client_free(c);
		return NULL;
	}
	x64 = b64url(x, 32);
	y64 = b64url(y, 32);
	snprintf(c->jwk, sizeof c->jwk, "{\"crv\":\"P-256\",\"kty\":\"EC\",\"x\":\"%s\",\"y\":\"%s\"}",
		 x64, y64);
	wc_Sha256Hash((const byte *)c->jwk, (word32)strlen(c->jwk), h);
	t64 = b64url(h, sizeof h);
	snprintf(c->thumb, sizeof c->thumb, "%s", t64);
	free(x64), free(y64), free(t64);
	return c;
}

void acme_client_free(struct acme_client *c)
{
	if (c == NULL)
		return;
	if (c->curl)
		curl_easy_cleanup(c->curl);
	free(c);
}

const char *acme_client_thumbprint(const struct acme_client *c)
{
	return c->thumb;
}
