/* Client admission: a pool of threads asking tailscaled's LocalAPI and/or an admission
 * webhook over libcurl, exactly as derper asks them. See admission.h. */
#include <arpa/inet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>
#include <jansson.h>

#include "server/admission.h"
#include "server/config.h"
#include "server/log.h"

#define ADM_THREADS 4          /* checks in flight at once */
#define ADM_QUEUE_MAX 1024     /* waiting checks; beyond that decided as unreachable */
#define WHOIS_TIMEOUT_MS 10000 /* upstream has none but the 10 s handshake deadline */
#define WEBHOOK_TIMEOUT_MS 5000
#define WEBHOOK_BODY_MAX 4096  /* upstream decodes only the first 4 KiB */
#define WHOIS_BODY_MAX (1 << 20)
#define TAILSCALE_CAP "145"    /* tailcfg.CurrentCapabilityVersion */
#define DEFAULT_SOCKET "/var/run/tailscale/tailscaled.sock"

enum { ST_IDLE, ST_RUNNING, ST_STOPPED };

struct req {
	struct req *next;
	uint8_t key[32];
	char src[INET6_ADDRSTRLEN + IF_NAMESIZE + 2]; /* webhook "Source" */
	char peer[INET6_ADDRSTRLEN + IF_NAMESIZE + 10]; /* for the log: ip:port */
	void (*done)(void *arg, int allow);
	void *arg;
	int allow; /* decided already (queue full, stopped) */
};

struct list { struct req *head, *tail; int n; };

static struct {
	pthread_mutex_t mu;
	pthread_cond_t cv_work, cv_decided;
	struct list work, decided; /* decided: answered by the notifier thread */
	int state, stopping;
	pthread_t th[ADM_THREADS + 1];
	int nth;
	int verify_clients, fail_open;
	char *url, *socket;
} adm = { .mu = PTHREAD_MUTEX_INITIALIZER, .cv_work = PTHREAD_COND_INITIALIZER,
	.cv_decided = PTHREAD_COND_INITIALIZER };

static void list_push(struct list *l, struct req *r)
{
	r->next = NULL;
	if (l->tail)
		l->tail->next = r;
	else
		l->head = r;
	l->tail = r;
	l->n++;
}

static struct req *list_pop(struct list *l)
{
	struct req *r = l->head;

	if (r) {
		l->head = r->next;
		if (!l->head)
			l->tail = NULL;
		l->n--;
	}
	return r;
}

static void key_hex(const uint8_t key[32], char out[65])
{
	static const char hx[] = "0123456789abcdef";

	for (int i = 0; i < 32; i++) {
		out[2 * i] = hx[key[i] >> 4];
		out[2 * i + 1] = hx[key[i] & 15];
	}
	out[64] = '\0';
}

/* Go's view of the remote address: IPv4-mapped shown as IPv4, a zone kept. */
static void format_peer(const struct sockaddr *sa, socklen_t len, struct req *r)
{
	char ip[INET6_ADDRSTRLEN + IF_NAMESIZE + 2] = "";
	unsigned port = 0;

	if (sa && sa->sa_family == AF_INET && len >= sizeof(struct sockaddr_in)) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
		inet_ntop(AF_INET, &in->sin_addr, ip, sizeof ip);
		port = ntohs(in->sin_port);
		snprintf(r->peer, sizeof r->peer, "%s:%u", ip, port);
	} else if (sa && sa->sa_family == AF_INET6 && len >= sizeof(struct sockaddr_in6)) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
		port = ntohs(in6->sin6_port);
		if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
			inet_ntop(AF_INET, in6->sin6_addr.s6_addr + 12, ip, sizeof ip);
			snprintf(r->peer, sizeof r->peer, "%s:%u", ip, port);
		} else {
			char zone[IF_NAMESIZE + 1] = "";
			inet_ntop(AF_INET6, &in6->sin6_addr, ip, INET6_ADDRSTRLEN);
			if (in6->sin6_scope_id && if_indextoname(in6->sin6_scope_id, zone + 1)) {
				zone[0] = '%';
				strcat(ip, zone);
			}
			snprintf(r->peer, sizeof r->peer, "[%s]:%u", ip, port);
		}
	} else {
		snprintf(r->peer, sizeof r->peer, "unknown");
	}
	snprintf(r->src, sizeof r->src, "%s", ip);
}

/* ---- one HTTP exchange ---- */

struct body {
	char *buf;
	size_t len, cap;
	int json_stop;    /* webhook: stop once one JSON value is complete, as Go's Decoder */
	int got_value;    /* json_stop: a whole value arrived (the rest is never read) */
	int over;         /* more than cap arrived */
	json_t *value;
};

static size_t on_body(char *p, size_t sz, size_t nm, void *ud)
{
	struct body *b = ud;
	size_t n = sz * nm, room = b->cap - b->len;

	if (n > room) {
		b->over = 1;
		n = room;
	}
	memcpy(b->buf + b->len, p, n);
	b->len += n;
	if (b->json_stop) {
		json_error_t je;
		json_t *v = json_loadb(b->buf, b->len, JSON_DECODE_ANY | JSON_DISABLE_EOF_CHECK |
				       JSON_ALLOW_NUL, &je);
		if (v) {
			b->value = v;
			b->got_value = 1;
			return 0; /* done: abort the transfer (CURLE_WRITE_ERROR) */
		}
		if (b->len == b->cap)
			return 0; /* 4 KiB and no whole value: the decode fails */
	}
	return b->over ? 0 : sz * nm;
}

static int on_progress(void *ud, curl_off_t a, curl_off_t b, curl_off_t c, curl_off_t d)
{
	(void)ud, (void)a, (void)b, (void)c, (void)d;
	return __atomic_load_n(&adm.stopping, __ATOMIC_RELAXED); /* nonzero aborts */
}

/* Common easy-handle setup; returns the handle's header list (caller frees). */
static struct curl_slist *setup(CURL *h, const char *url, struct body *b, long timeout_ms,
				char *errbuf)
{
	struct curl_slist *hdr = NULL;

	curl_easy_reset(h);
	curl_easy_setopt(h, CURLOPT_URL, url);
	curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, timeout_ms);
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(h, CURLOPT_WRITEDATA, b);
	curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
	curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, on_progress);
	curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
	curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(h, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
	/* Go sends neither of these */
	hdr = curl_slist_append(hdr, "Accept:");
	hdr = curl_slist_append(hdr, "Expect:");
	return hdr;
}

/* ---- -verify-clients: GET /localapi/v0/whois?addr=nodekey%3A<hex> ---- */

/* 0 admit, -1 refuse with why. */
static int check_tailscaled(CURL *h, const struct req *r, const char *hex, char *why,
			    size_t whylen)
{
	char url[160], errbuf[CURL_ERROR_SIZE] = "";
	struct body b = { .cap = WHOIS_BODY_MAX };
	struct curl_slist *hdr;
	long status = 0;
	CURLcode rc;
	int ok = -1;

	(void)r;
	if (!(b.buf = malloc(b.cap + 1))) {
		snprintf(why, whylen, "failed to query local tailscaled status for nodekey:%s: "
			 "out of memory", hex);
		return -1;
	}
	snprintf(url, sizeof url, "http://local-tailscaled.sock/localapi/v0/whois?addr=nodekey%%3A%s",
		 hex);
	hdr = setup(h, url, &b, WHOIS_TIMEOUT_MS, errbuf);
	hdr = curl_slist_append(hdr, "Tailscale-Cap: " TAILSCALE_CAP);
	curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdr);
	curl_easy_setopt(h, CURLOPT_UNIX_SOCKET_PATH, adm.socket);
	rc = curl_easy_perform(h);
	curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
	curl_slist_free_all(hdr);
	b.buf[b.len] = '\0';
	if (rc != CURLE_OK) {
		snprintf(why, whylen, "failed to query local tailscaled status for nodekey:%s: %s",
			 hex, b.over ? "response too large" : errbuf[0] ? errbuf : curl_easy_strerror(rc));
	} else if (status == 404) {
		snprintf(why, whylen, "peer nodekey:%s not authorized (not found in local tailscaled)",
			 hex);
	} else if (status != 200) {
		if (strstr(b.buf, "invalid 'addr' parameter")) /* upstream issue 12617 */
			snprintf(why, whylen,
				 "tailscaled version is too old (out of sync with derper binary)");
		else
			snprintf(why, whylen, "failed to query local tailscaled status for nodekey:%s: "
				 "HTTP %ld: %.200s", hex, status, b.buf);
	} else {
		/* upstream decodes the whole body into a WhoIsResponse */
		json_error_t je;
		json_t *v = json_loadb(b.buf, b.len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
		if (v && (json_is_object(v) || json_is_null(v)))
			ok = 0;
		else
			snprintf(why, whylen, "failed to query local tailscaled status for nodekey:%s: "
				 "bad whois response: %s", hex, v ? "not an object" : je.text);
		json_decref(v);
	}
	free(b.buf);
	return ok;
}

/* ---- -verify-client-url: POST {"NodePublic":"nodekey:<hex>","Source":"<ip>"} ---- */

/* The decoded reply allows the client: an object whose "Allow" (any case, last one wins)
 * is true. A non-boolean Allow is a decode error in Go. */
static int reply_allows(json_t *v)
{
	const char *k;
	json_t *x;
	int allow = 0;

	if (!json_is_object(v))
		return 0;
	json_object_foreach(v, k, x) {
		if (strcasecmp(k, "Allow") != 0)
			continue;
		if (json_is_boolean(x))
			allow = json_is_true(x);
		else if (!json_is_null(x))
			return 0;
	}
	return allow;
}

/* 0 admit, -1 refuse with why. */
static int check_webhook(CURL *h, const struct req *r, const char *hex, char *why, size_t whylen)
{
	char nk[80], *post, errbuf[CURL_ERROR_SIZE] = "", buf[WEBHOOK_BODY_MAX + 1];
	struct body b = { .buf = buf, .cap = WEBHOOK_BODY_MAX, .json_stop = 1 };
	struct curl_slist *hdr;
	long status = 0;
	CURLcode rc;
	int ok = -1;

	/* {"NodePublic":"nodekey:<hex>","Source":"<ip>"}, compact and in this order, as Go */
	snprintf(nk, sizeof nk, "nodekey:%s", hex);
	json_t *o = json_pack("{s:s, s:s}", "NodePublic", nk, "Source", r->src);
	post = o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
	json_decref(o);
	if (!post) {
		snprintf(why, whylen, "admission controller: out of memory");
		return -1;
	}
	hdr = setup(h, adm.url, &b, WEBHOOK_TIMEOUT_MS, errbuf);
	hdr = curl_slist_append(hdr, "Content-Type:"); /* Go's client sets none */
	curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdr);
	curl_easy_setopt(h, CURLOPT_POSTFIELDS, post);
	curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)strlen(post));
	curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 1L); /* as http.DefaultClient */
	curl_easy_setopt(h, CURLOPT_MAXREDIRS, 10L);
	rc = curl_easy_perform(h);
	curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
	curl_slist_free_all(hdr);
	free(post);
	if (rc != CURLE_OK && status == 0) {
		/* no response at all: a transport error, where fail-open decides */
		const char *e = errbuf[0] ? errbuf : curl_easy_strerror(rc);
		if (adm.fail_open && !__atomic_load_n(&adm.stopping, __ATOMIC_RELAXED)) {
			log_info("admission controller unreachable; allowing client nodekey:%s (%s)",
				 hex, e);
			ok = 0;
		} else {
			snprintf(why, whylen, "admission controller: %s", e);
		}
	} else if (status != 200) {
		snprintf(why, whylen, "admission controller: HTTP %ld", status);
	} else if (!b.got_value) {
		snprintf(why, whylen, "admission controller: bad response body (%s)",
			 rc == CURLE_OK || b.len == b.cap ? "no complete JSON value in the first 4 KiB" :
			 errbuf[0] ? errbuf : curl_easy_strerror(rc));
	} else if (!reply_allows(b.value)) {
		snprintf(why, whylen, "admission controller: nodekey:%s/%s not allowed", hex, r->src);
	} else {
		ok = 0;
	}
	json_decref(b.value);
	return ok;
}

/* ---- threads ---- */

static int decide(CURL *ts, CURL *wh, const struct req *r)
{
	char hex[65], why[512] = "";
	int ok = 0;

	key_hex(r->key, hex);
	if (adm.verify_clients)
		ok = check_tailscaled(ts, r, hex, why, sizeof why);
	if (ok == 0 && adm.url)
		ok = check_webhook(wh, r, hex, why, sizeof why);
	if (ok != 0)
		log_info("derp: %s: client nodekey:%s rejected: %s", r->peer, hex, why);
	return ok == 0;
}

static void *checker_main(void *unused)
{
	CURL *ts = curl_easy_init(), *wh = curl_easy_init();

	(void)unused;
	for (;;) {
		struct req *r;
		int allow = 0;
		pthread_mutex_lock(&adm.mu);
		while (!adm.work.head && !adm.stopping)
			pthread_cond_wait(&adm.cv_work, &adm.mu);
		r = list_pop(&adm.work);
		int stopping = adm.stopping;
		pthread_mutex_unlock(&adm.mu);
		if (!r)
			break; /* stopping and nothing left */
		if (!stopping && ts && wh)
			allow = decide(ts, wh, r);
		r->done(r->arg, allow);
		free(r);
	}
	curl_easy_cleanup(ts);
	curl_easy_cleanup(wh);
	return NULL;
}

/* Answers decisions made without a check (queue full) so that done() is never called
 * from inside admission_check, even when every checker is stuck on a slow webhook. */
static void *notifier_main(void *unused)
{
	(void)unused;
	for (;;) {
		struct req *r;
		pthread_mutex_lock(&adm.mu);
		while (!adm.decided.head && !adm.stopping)
			pthread_cond_wait(&adm.cv_decided, &adm.mu);
		r = list_pop(&adm.decided);
		int stopping = adm.stopping;
		pthread_mutex_unlock(&adm.mu);
		if (!r)
			break;
		r->done(r->arg, stopping ? 0 : r->allow);
		free(r);
	}
	return NULL;
}

/* Only when no admission thread exists (never started, or stopped). */
static void *late_main(void *p)
{
	struct req *r = p;

	r->done(r->arg, r->allow);
	free(r);
	return NULL;
}

static void curl_once(void)
{
	curl_global_init(CURL_GLOBAL_DEFAULT);
}

int admission_start(const struct config *cfg, char *err, size_t errlen)
{
	static pthread_once_t once = PTHREAD_ONCE_INIT;
	int verify = cfg->verify_clients;
	const char *url = cfg->verify_client_url;

	if (!verify && (!url || !url[0]))
		return 0;
	pthread_mutex_lock(&adm.mu);
	if (adm.state == ST_RUNNING) {
		pthread_mutex_unlock(&adm.mu);
		snprintf(err, errlen, "admission: already started");
		return -1;
	}
	pthread_mutex_unlock(&adm.mu);
	pthread_once(&once, curl_once);
	free(adm.url);
	free(adm.socket);
	adm.url = url && url[0] ? strdup(url) : NULL;
	adm.socket = strdup(cfg->socket_path && cfg->socket_path[0] ? cfg->socket_path :
			    DEFAULT_SOCKET);
	adm.verify_clients = verify;
	adm.fail_open = cfg->verify_client_url_fail_open;
	__atomic_store_n(&adm.stopping, 0, __ATOMIC_RELAXED);
	adm.nth = 0;
	if ((url && url[0] && !adm.url) || !adm.socket) {
		snprintf(err, errlen, "admission: out of memory");
		return -1;
	}
	for (int i = 0; i < ADM_THREADS + 1; i++) {
		if (pthread_create(&adm.th[i], NULL, i < ADM_THREADS ? checker_main : notifier_main,
				   NULL) != 0) {
			snprintf(err, errlen, "admission: cannot start threads");
			admission_stop();
			return -1;
		}
		adm.nth++;
	}
	pthread_mutex_lock(&adm.mu);
	adm.state = ST_RUNNING;
	pthread_mutex_unlock(&adm.mu);
	return 0;
}

int admission_enabled(void)
{
	pthread_mutex_lock(&adm.mu);
	int on = adm.state == ST_RUNNING;
	pthread_mutex_unlock(&adm.mu);
	return on;
}

void admission_check(const uint8_t key[32], const struct sockaddr *peer, socklen_t peerlen,
		     void (*done)(void *arg, int allow), void *arg)
{
	struct req *r = calloc(1, sizeof *r);
	pthread_t t;

	if (!r) {
		/* nowhere to keep the request: the one case answered in the caller's thread */
		log_info("admission: out of memory; refusing client");
		done(arg, 0);
		return;
	}
	memcpy(r->key, key, 32);
	format_peer(peer, peerlen, r);
	r->done = done;
	r->arg = arg;
	pthread_mutex_lock(&adm.mu);
	if (adm.state == ST_RUNNING) {
		if (adm.work.n < ADM_QUEUE_MAX) {
			list_push(&adm.work, r);
			pthread_cond_signal(&adm.cv_work);
		} else {
			/* as if unreachable: tailscaled errors refuse, the webhook's fail-open decides */
			char hex[65];
			key_hex(key, hex);
			r->allow = !adm.verify_clients && adm.fail_open;
			log_info("derp: %s: admission queue full; %s client nodekey:%s", r->peer,
				 r->allow ? "allowing" : "refusing", hex);
			list_push(&adm.decided, r);
			pthread_cond_signal(&adm.cv_decided);
		}
		pthread_mutex_unlock(&adm.mu);
		return;
	}
	r->allow = adm.state == ST_IDLE; /* nothing configured: admit; stopped: refuse */
	pthread_mutex_unlock(&adm.mu);
	if (pthread_create(&t, NULL, late_main, r) == 0) {
		pthread_detach(t);
	} else {
		done(arg, r->allow);
		free(r);
	}
}

void admission_stop(void)
{
	pthread_mutex_lock(&adm.mu);
	__atomic_store_n(&adm.stopping, 1, __ATOMIC_RELAXED);
	if (adm.state == ST_RUNNING)
		adm.state = ST_STOPPED;
	pthread_cond_broadcast(&adm.cv_work);
	pthread_cond_broadcast(&adm.cv_decided);
	pthread_mutex_unlock(&adm.mu);
	/* the checkers abort a transfer in flight (progress callback) and answer what is
	 * left with allow=0 before they exit */
	for (int i = 0; i < adm.nth; i++)
		pthread_join(adm.th[i], NULL);
	adm.nth = 0;
}
