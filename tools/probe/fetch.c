/* Getting the DERP map: a URL through libcurl (https, http, file, as upstream's
 * http.Client with a file transport), or "local": tailscaled's LocalAPI
 * GET /localapi/v0/derpmap over its unix socket, as tailscale.com/client/local does. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include "tools/probe/probe.h"

#define TAILSCALE_CAP "145" /* tailcfg.CurrentCapabilityVersion, as server/admission.c */

struct body {
	char *p;
	size_t len, cap;
	int too_big;
};

/* Bounded: a body past DM_MAX_BYTES aborts the transfer (curl reports a write error). */
static size_t on_body(char *data, size_t size, size_t nmemb, void *arg)
{
	struct body *b = arg;
	size_t n = size * nmemb;

	if (b->len + n > DM_MAX_BYTES) {
		b->too_big = 1;
		return 0;
	}
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 16384;
		while (cap < b->len + n + 1)
			cap *= 2;
		char *p = realloc(b->p, cap);
		if (!p)
			return 0;
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->len, data, n);
	b->len += n;
	b->p[b->len] = '\0';
	return n;
}

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static void curl_init(void)
{
	curl_global_init(CURL_GLOBAL_DEFAULT);
}

int derpmap_fetch(const char *url, const char *socket_path, int timeout_ms, struct derp_map *m,
		  char *err, size_t errlen)
{
	struct body b = { 0 };
	struct curl_slist *hdr = NULL;
	char cerr[CURL_ERROR_SIZE] = "";
	int local = strcmp(url, "local") == 0, rc = -1;
	long status = 0;
	CURL *h;

	pthread_once(&curl_once, curl_init);
	if (!(h = curl_easy_init())) {
		snprintf(err, errlen, "fetching %s: out of memory", url);
		return -1;
	}
	curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(h, CURLOPT_WRITEDATA, &b);
	curl_easy_setopt(h, CURLOPT_ERRORBUFFER, cerr);
	curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)(timeout_ms > 0 ? timeout_ms : 1));
	curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long)(timeout_ms > 0 ? timeout_ms : 1));
	curl_easy_setopt(h, CURLOPT_USERAGENT, "derpd-probe/" DERPD_VERSION);
	if (local) {
		hdr = curl_slist_append(hdr, "Tailscale-Cap: " TAILSCALE_CAP);
		curl_easy_setopt(h, CURLOPT_URL, "http://local-tailscaled.sock/localapi/v0/derpmap");
		curl_easy_setopt(h, CURLOPT_UNIX_SOCKET_PATH, socket_path);
		curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http");
		curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdr);
	} else {
		curl_easy_setopt(h, CURLOPT_URL, url);
		curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https,file");
		/* a redirect may not turn a web URL into a local file read */
		curl_easy_setopt(h, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
		curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 1L); /* as Go's client: 10 at most */
		curl_easy_setopt(h, CURLOPT_MAXREDIRS, 10L);
		/* Go reads SSL_CERT_FILE for its roots; curl does not unless told */
		const char *ca = getenv("SSL_CERT_FILE");
		if (ca && *ca)
			curl_easy_setopt(h, CURLOPT_CAINFO, ca);
	}
	CURLcode cr = curl_easy_perform(h);
	curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
	if (b.too_big) {
		snprintf(err, errlen, "fetching %s: more than %u bytes", url, DM_MAX_BYTES);
	} else if (cr != CURLE_OK) {
		if (local)
			snprintf(err, errlen, "fetching the DERP map from tailscaled at %s: %s",
				 socket_path, cerr[0] ? cerr : curl_easy_strerror(cr));
		else
			snprintf(err, errlen, "fetching %s: %s", url,
				 cerr[0] ? cerr : curl_easy_strerror(cr));
	} else if (strncmp(url, "file:", 5) != 0 && status != 200) {
		/* tailscaled answers errors as {"error":"..."}; show the start of any body */
		snprintf(err, errlen, "fetching %s: HTTP %ld%s%.120s", local ? "local DERP map" : url,
			 status, b.len ? ": " : "", b.len ? b.p : "");
		for (char *p = err; *p; p++)
			if ((unsigned char)*p < 0x20)
				*p = ' ';
	} else {
		char perr[300];
		if (derpmap_parse(b.p ? b.p : "", b.len, m, perr, sizeof perr) == 0)
			rc = 0;
		else
			snprintf(err, errlen, "%s: %s", local ? "local DERP map" : url, perr);
	}
	curl_slist_free_all(hdr);
	curl_easy_cleanup(h);
	free(b.p);
	return rc;
}
