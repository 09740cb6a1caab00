/* The mesh key from a setec secrets server (-secrets-url; SERVER.md §11), as derper's
 * setec store does it: POST <url>/api/get {"Name","Version"} with the header
 * Sec-X-Tailscale-No-Browsers: setec; the answer {"Value":<base64>,"Version":N}. The value
 * is cached in setec's file format so a restart while setec is down still has the key.
 * setec authorises by tailnet identity: no credentials are sent. The secret is never
 * logged, and never kept longer than needed outside the caller's buffers. */
#include "mesh/mesh.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "server/config.h"
#include "server/log.h"

#define BODY_MAX (64 * 1024) /* a mesh key answer is ~100 bytes */

struct body {
	char *p;
	size_t len;
	int too_big;
};

static size_t on_body(char *p, size_t sz, size_t n, void *arg)
{
	struct body *b = arg;
	size_t add = sz * n;

	if (b->len + add > BODY_MAX) {
		b->too_big = 1;
		return 0;
	}
	char *np = realloc(b->p, b->len + add + 1);
	if (!np)
		return 0;
	memcpy(np + b->len, p, add);
	b->p = np;
	b->len += add;
	b->p[b->len] = '\0';
	return add;
}

/* The value of a decoded secret into out (NUL-terminated), from base64 text. */
static int value_decode(const char *b64, char *out, size_t cap)
{
	size_t n = 0;

	if (sodium_base642bin((unsigned char *)out, cap - 1, b64, strlen(b64), NULL, &n, NULL,
			      sodium_base64_VARIANT_ORIGINAL) != 0)
		return -1;
	out[n] = '\0';
	return memchr(out, '\0', n) ? -1 : 0; /* the key is text */
}

/* {"Value":"<base64>","Version":N} -> out, *version. */
static int answer_parse(json_t *o, char *out, size_t cap, int64_t *version)
{
	if (!json_is_object(o))
		return -1;
	json_t *v = json_object_get(o, "Value"), *ver = json_object_get(o, "Version");

	if (!json_is_string(v) || !json_is_integer(ver) || json_integer_value(ver) < 0)
		return -1;
	*version = json_integer_value(ver);
	return value_decode(json_string_value(v), out, cap);
}

int mesh_secrets_parse_answer(const char *body, size_t len, char *out, size_t cap,
			      int64_t *version)
{
	json_t *a = json_loadb(body, len, 0, NULL);
	int rc = a && answer_parse(a, out, cap, version) == 0 ? 0 : -1;

	json_decref(a);
	return rc;
}

static int on_progress(void *arg, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un)
{
	(void)dt, (void)dn, (void)ut, (void)un;
	return arg && __atomic_load_n((const int *)arg, __ATOMIC_RELAXED);
}

int mesh_secrets_fetch(const char *url, const char *name, int64_t have_version, char *out,
		       size_t cap, int64_t *version, const int *stop, char *err,
		       size_t errlen)
{
	char full[2048], req[600];
	struct body b = { 0 };
	struct curl_slist *h = NULL;
	long code = 0;
	int rc = -1;
	size_t ul = strlen(url);

	while (ul && url[ul - 1] == '/')
		ul--;
	snprintf(full, sizeof full, "%.*s/api/get", (int)ul, url);
	json_t *r = json_pack("{s:s, s:I}", "Name", name, "Version", (json_int_t)have_version);
	if (have_version > 0)
		json_object_set_new(r, "UpdateIfChanged", json_true());
	char *rb = r ? json_dumps(r, JSON_COMPACT) : NULL;
	json_decref(r);
	CURL *c = curl_easy_init();
	if (!rb || !c || strlen(rb) >= sizeof req) {
		snprintf(err, errlen, "setec: out of memory");
		goto out;
	}
	snprintf(req, sizeof req, "%s", rb);
	h = curl_slist_append(h, "Content-Type: application/json");
	h = curl_slist_append(h, "Sec-X-Tailscale-No-Browsers: setec");
	curl_easy_setopt(c, CURLOPT_URL, full);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_TIMEOUT, 30L);
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 10L);
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "https,http");
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
	curl_easy_setopt(c, CURLOPT_POSTFIELDS, req);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
	curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
	curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
	curl_easy_setopt(c, CURLOPT_XFERINFODATA, (void *)stop);
	/* As Go's crypto/x509 (and derpd's mesh links): SSL_CERT_FILE replaces the system CAs. */
	if (getenv("SSL_CERT_FILE") && *getenv("SSL_CERT_FILE"))
		curl_easy_setopt(c, CURLOPT_CAINFO, getenv("SSL_CERT_FILE"));
	CURLcode cc = curl_easy_perform(c);
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
	if (cc != CURLE_OK && !(b.too_big && code == 200)) {
		snprintf(err, errlen, "setec: POST %s: %s", full, curl_easy_strerror(cc));
		goto out;
	}
	if (code == 304) {
		*version = have_version; /* unchanged: the caller keeps what it has */
		rc = 1;
		goto out;
	}
	if (code != 200) {
		/* The body of an error names the problem, never the secret. */
		const char *why = code == 404 ? " (no such secret)" :
				  code == 403 ? " (access denied: does this node's tailnet "
						"identity have get access to the secret?)" : "";
		snprintf(err, errlen, "setec: POST %s: HTTP %ld%s: %.200s", full, code, why,
			 b.p ? b.p : "");
		goto out;
	}
	if (b.too_big) {
		snprintf(err, errlen, "setec: POST %s: answer over %d bytes", full, BODY_MAX);
		goto out;
	}
	rc = mesh_secrets_parse_answer(b.p ? b.p : "", b.len, out, cap, version);
	if (rc != 0)
		snprintf(err, errlen, "setec: POST %s: the answer is not {\"Value\":<base64>,"
			 "\"Version\":<n>}", full);
out:
	if (b.p) {
		sodium_memzero(b.p, b.len);
		free(b.p);
	}
	free(rb);
	curl_slist_free_all(h);
	if (c)
		curl_easy_cleanup(c);
	return rc;
}

void mesh_secrets_name(const struct config *cfg, char *out, size_t cap)
{
	const char *p = cfg->secrets_path_prefix ? cfg->secrets_path_prefix : "";
	size_t n = strlen(p);

	while (n > 1 && p[n - 1] == '/')
		n--;
	if (n == 0)
		snprintf(out, cap, "meshkey");
	else
		snprintf(out, cap, "%.*s%smeshkey", (int)n, p, p[n - 1] == '/' ? "" : "/");
}

int mesh_secrets_load(const struct config *cfg, char *out, size_t cap, int64_t *version,
		      int *cached, char *err, size_t errlen)
{
	char name[512];

	mesh_secrets_name(cfg, name, sizeof name);
	log_info(LS_MESH, "Setting up setec store from \"%s\"", cfg->secrets_url);
	*cached = mesh_secrets_cache_read(cfg->secrets_cache_dir, name, out, cap, version) == 0;
	if (*cached) {
		log_info(LS_MESH, "Got mesh key from setec store (version %lld, from the cache; "
			 "asking setec for a newer one)", (long long)*version);
		return 0;
	}
	if (mesh_secrets_fetch(cfg->secrets_url, name, 0, out, cap, version, NULL, err,
			       errlen) != 0)
		return -1;
	log_info(LS_MESH, "Got mesh key from setec store (version %lld)", (long long)*version);
	char werr[512];
	if (mesh_secrets_cache_write(cfg->secrets_cache_dir, name, out, *version, werr,
				     sizeof werr) != 0)
		log_warn(LS_MESH, "%s (a restart while setec is down will have no key)", werr);
	return 0;
}

/* -secrets-cache-dir names setec's cache file, as derper passes it; a directory there
 * holds the file instead (derper refuses one; an operator naming a directory means it). */
static void cache_path(const char *dir, char *out, size_t cap)
{
	struct stat st;

	if (stat(dir, &st) == 0 && S_ISDIR(st.st_mode))
		snprintf(out, cap, "%s/derper-secrets", dir);
	else
		snprintf(out, cap, "%s", dir);
}

/* mkdir -p of path's directory, 0700 (setec's NewFileCache does the same). */
static void parent_make(const char *path)
{
	char d[4200];

	snprintf(d, sizeof d, "%s", path);
	char *slash = strrchr(d, '/');
	if (!slash || slash == d)
		return;
	*slash = '\0';
	for (char *p = d + 1; *p; p++)
		if (*p == '/') {
			*p = '\0';
			mkdir(d, 0700);
			*p = '/';
		}
	mkdir(d, 0700);
}

int mesh_secrets_cache_read(const char *dir, const char *name, char *out, size_t cap,
			    int64_t *version)
{
	char path[4200];

	cache_path(dir, path, sizeof path);
	json_t *root = json_load_file(path, 0, NULL);
	json_t *s = json_object_get(json_object_get(root, name), "secret");
	int rc = s ? answer_parse(s, out, cap, version) : -1;
	json_decref(root);
	return rc;
}

int mesh_secrets_cache_write(const char *dir, const char *name, const char *value,
			     int64_t version, char *err, size_t errlen)
{
	char path[4200], tmp[4300], now[32], b64[512];
	size_t vl = strlen(value);
	int rc = -1;

	if (sodium_base64_encoded_len(vl, sodium_base64_VARIANT_ORIGINAL) > sizeof b64) {
		snprintf(err, errlen, "setec cache: the secret is too long");
		return -1;
	}
	sodium_bin2base64(b64, sizeof b64, (const unsigned char *)value, vl,
			  sodium_base64_VARIANT_ORIGINAL);
	snprintf(now, sizeof now, "%lld", (long long)time(NULL));
	cache_path(dir, path, sizeof path);
	parent_make(path);
	snprintf(tmp, sizeof tmp, "%s.tmp%d", path, (int)getpid());
	/* setec's layout: lastAccess is a string of Unix seconds (json:",string"). */
	json_t *root = json_pack("{s:{s:{s:s, s:I}, s:s}}", name, "secret", "Value", b64,
				 "Version", (json_int_t)version, "lastAccess", now);
	char *text = root ? json_dumps(root, JSON_COMPACT) : NULL;
	json_decref(root);
	sodium_memzero(b64, sizeof b64);
	int fd = text ? open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600) : -1;
	if (fd >= 0) {
		size_t n = strlen(text);
		rc = write(fd, text, n) == (ssize_t)n && fsync(fd) == 0 ? 0 : -1;
		close(fd);
		if (rc == 0 && rename(tmp, path) != 0)
			rc = -1;
		if (rc != 0)
			unlink(tmp);
	}
	if (rc != 0)
		snprintf(err, errlen, "setec cache %s: %s", path, text ? strerror(errno) : "out of memory");
	if (text) {
		sodium_memzero(text, strlen(text));
		free(text);
	}
	return rc;
}
