/* Client admission: one thread drives every check through libcurl's multi interface, so
 * each check runs on its own as upstream's per-connection goroutine does, while memory,
 * sockets and threads stay bounded. See admission.h. */
#include <arpa/inet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <curl/curl.h>
#include <jansson.h>

#include "server/admission.h"
#include "server/config.h"
#include "server/key.h"
#include "server/log.h"
#include "server/server.h"

/* Checks in flight at once (one socket each; upstream has no cap), and checks waiting
 * for one of those slots; beyond that a login is refused, never admitted unchecked. */
#define ADM_INFLIGHT_MAX 512
#define ADM_PENDING_MAX 4096
#define WHOIS_TIMEOUT_MS 10000 /* upstream has none but the 10 s handshake deadline */
#define WEBHOOK_TIMEOUT_MS 5000 /* upstream: context.WithTimeout(ctx, 5*time.Second) */
#define WEBHOOK_BODY_MAX 4096  /* upstream decodes only the first 4 KiB */
#define WHOIS_BODY_MAX (1 << 20)
#define TAILSCALE_CAP "145"    /* tailcfg.CurrentCapabilityVersion */
#define DEFAULT_SOCKET "/var/run/tailscale/tailscaled.sock"

enum { ST_IDLE, ST_RUNNING, ST_STOPPED };
enum { STAGE_WHOIS = 1, STAGE_HOOK };

struct body {
	char *buf;
	size_t len, size, cap; /* size: allocated; cap: most bytes kept */
	int json_stop;    /* webhook: stop once one JSON value is complete, as Go's Decoder */
	int got_value;    /* json_stop: a whole value arrived (the rest is never read) */
	int over;         /* more than cap arrived */
	json_t *value;
};

struct req {
	struct req *next, *prev; /* pending list (next only), or the checker's in-flight list */
	uint8_t key[32];
	char hex[65];
	char src[INET6_ADDRSTRLEN + IF_NAMESIZE + 2]; /* webhook "Source" */
	char peer[INET6_ADDRSTRLEN + IF_NAMESIZE + 18]; /* for the log: ip:port [abcde] */
	const uint8_t *gone;
	void (*done)(void *arg, int allow);
	void *arg;
	int allow; /* late_main only */
	/* while in flight */
	int stage;
	CURL *h;
	struct curl_slist *hdr;
	char *post;
	struct body b;
	char errbuf[CURL_ERROR_SIZE];
};

static struct {
	pthread_mutex_t mu;
	struct req *pend_head, *pend_tail; /* under mu: waiting for a slot, oldest first */
	struct req *busy;                  /* under mu: refused (queue full), to be answered */
	int npend;                         /* under mu */
	int state;                         /* under mu */
	int stopping, sweep;               /* atomic: stop; some client has gone */
	CURLM *multi;                      /* set while ST_RUNNING */
	pthread_t th;
	int have_th;
	int verify_clients, fail_open;
	char *url, *socket;
	int inflight_max, pending_max;
	uint64_t count[ADMISSION_NRESULTS];  /* atomic */
} adm = { .mu = PTHREAD_MUTEX_INITIALIZER, .inflight_max = ADM_INFLIGHT_MAX,
	.pending_max = ADM_PENDING_MAX };

/* The checker's own in-flight list (only its thread touches it). */
static struct req *inflight;
static int ninflight;

static void key_hex(const uint8_t key[32], char out[65])
{
	static const char hx[] = "0123456789abcdef";

	for (int i = 0; i < 32; i++) {
		out[2 * i] = hx[key[i] >> 4];
		out[2 * i + 1] = hx[key[i] & 15];
	}
	out[64] = '\0';
}

static int req_gone(const struct req *r)
{
	return r->gone && __atomic_load_n(r->gone, __ATOMIC_ACQUIRE);
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
	char ks[8];
	key_short(ks, r->key);
	size_t n = strlen(r->peer);
	snprintf(r->peer + n, sizeof r->peer - n, " %s", ks);
}

/* ---- answering ---- */

static void req_free(struct req *r)
{
	if (r->h)
		curl_easy_cleanup(r->h);
	curl_slist_free_all(r->hdr);
	free(r->post);
	free(r->b.buf);
	json_decref(r->b.value);
	free(r);
}

/* The one place a check ends: count it, tell the caller, forget it. */
static void req_answer(struct req *r, enum admission_result res)
{
	__atomic_add_fetch(&adm.count[res], 1, __ATOMIC_RELAXED);
	if (res == ADMISSION_ABANDONED)
		log_debug(LS_ADMISSION, "%s: nodekey:%s left before its admission was decided",
			  r->peer, r->hex);
	r->done(r->arg, res == ADMISSION_ADMITTED || res == ADMISSION_FAILED_OPEN);
	req_free(r);
}

/* req_answer for each of a list (linked by next). */
static void req_answer_all(struct req *list, enum admission_result res)
{
	while (list) {
		struct req *r = list;
		list = r->next;
		req_answer(r, res);
	}
}

static void refuse(struct req *r, const char *why)
{
	log_debug(LS_ADMISSION, "%s: nodekey:%s refused: %s", r->peer, r->hex, why);
	server_login_refused(LOGIN_NOT_ADMITTED, r->peer, why);
	req_answer(r, ADMISSION_REFUSED);
}

/* ---- one HTTP exchange ---- */

static size_t on_body(char *p, size_t sz, size_t nm, void *ud)
{
	struct body *b = ud;
	size_t n = sz * nm, room = b->cap - b->len;

	if (n > room) {
		b->over = 1;
		n = room;
	}
	if (b->len + n + 1 > b->size) { /* grow as bytes come: a whois body is usually small */
		size_t size = b->size ? b->size : 1024;
		while (size < b->len + n + 1)
			size *= 2;
		if (size > b->cap + 1)
			size = b->cap + 1;
		char *nb = realloc(b->buf, size);
		if (!nb)
			return 0;
		b->buf = nb;
		b->size = size;
	}
	memcpy(b->buf + b->len, p, n);
	b->len += n;
	b->buf[b->len] = '\0';
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

/* Just before a request goes out (after connecting): not for a client that has left. */
static int on_prereq(void *ud, char *a, char *b, int c, int d)
{
	(void)a, (void)b, (void)c, (void)d;
	return req_gone(ud) ? CURL_PREREQFUNC_ABORT : CURL_PREREQFUNC_OK;
}

/* Set r up for its next stage and hand it to the multi handle. 0, or -1 (no memory). */
static int xfer_start(struct req *r, int stage)
{
	curl_slist_free_all(r->hdr);
	r->hdr = NULL;
	free(r->b.buf);
	json_decref(r->b.value);
	memset(&r->b, 0, sizeof r->b);
	r->errbuf[0] = '\0';
	r->stage = stage;
	if (!r->h && !(r->h = curl_easy_init()))
		return -1;
	CURL *h = r->h;
	curl_easy_reset(h);
	curl_easy_setopt(h, CURLOPT_PRIVATE, r);
	curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(h, CURLOPT_WRITEDATA, &r->b);
	curl_easy_setopt(h, CURLOPT_PREREQFUNCTION, on_prereq);
	curl_easy_setopt(h, CURLOPT_PREREQDATA, r);
	curl_easy_setopt(h, CURLOPT_ERRORBUFFER, r->errbuf);
	curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(h, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
	/* Go sends neither of these */
	r->hdr = curl_slist_append(r->hdr, "Accept:");
	r->hdr = curl_slist_append(r->hdr, "Expect:");
	if (stage == STAGE_WHOIS) {
		/* GET /localapi/v0/whois?addr=nodekey%3A<hex> over tailscaled's unix socket */
		char url[160];
		snprintf(url, sizeof url,
			 "http://local-tailscaled.sock/localapi/v0/whois?addr=nodekey%%3A%s", r->hex);
		r->b.cap = WHOIS_BODY_MAX;
		r->hdr = curl_slist_append(r->hdr, "Tailscale-Cap: " TAILSCALE_CAP);
		curl_easy_setopt(h, CURLOPT_URL, url);
		curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)WHOIS_TIMEOUT_MS);
		curl_easy_setopt(h, CURLOPT_UNIX_SOCKET_PATH, adm.socket);
	} else {
		/* POST {"NodePublic":"nodekey:<hex>","Source":"<ip>"}, compact, in this order */
		char nk[80];
		snprintf(nk, sizeof nk, "nodekey:%s", r->hex);
		json_t *o = json_pack("{s:s, s:s}", "NodePublic", nk, "Source", r->src);
		r->post = o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
		json_decref(o);
		if (!r->post)
			return -1;
		r->b.cap = WEBHOOK_BODY_MAX;
		r->b.json_stop = 1;
		r->hdr = curl_slist_append(r->hdr, "Content-Type:"); /* Go's client sets none */
		curl_easy_setopt(h, CURLOPT_URL, adm.url);
		curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)WEBHOOK_TIMEOUT_MS);
		curl_easy_setopt(h, CURLOPT_POSTFIELDS, r->post);
		curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)strlen(r->post));
		curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 1L); /* as http.DefaultClient */
		curl_easy_setopt(h, CURLOPT_MAXREDIRS, 10L);
	}
	if (!r->hdr)
		return -1;
	curl_easy_setopt(h, CURLOPT_HTTPHEADER, r->hdr);
	if (curl_multi_add_handle(adm.multi, h) != CURLM_OK)
		return -1;
	r->prev = NULL;
	r->next = inflight;
	if (inflight)
		inflight->prev = r;
	inflight = r;
	ninflight++;
	return 0;
}

static void xfer_unlink(struct req *r)
{
	curl_multi_remove_handle(adm.multi, r->h);
	if (r->prev)
		r->prev->next = r->next;
	else
		inflight = r->next;
	if (r->next)
		r->next->prev = r->prev;
	r->next = r->prev = NULL;
	ninflight--;
}

static const char *xfer_error(const struct req *r, CURLcode rc)
{
	return r->errbuf[0] ? r->errbuf : curl_easy_strerror(rc);
}

static json_t *whois_decode(const struct body *b, json_error_t *je)
{
	return json_loadb(b->buf ? b->buf : "", b->len, JSON_DECODE_ANY | JSON_ALLOW_NUL, je);
}

/* tailscaled answered (or failed): admit to the next stage, or refuse. */
static void whois_done(struct req *r, CURLcode rc, long status)
{
	char why[512];

	if (rc != CURLE_OK) {
		snprintf(why, sizeof why, "failed to query local tailscaled status for nodekey:%s: %s",
			 r->hex, r->b.over ? "response too large" : xfer_error(r, rc));
	} else if (status == 404) {
		snprintf(why, sizeof why,
			 "peer nodekey:%s not authorized (not found in local tailscaled)", r->hex);
	} else if (status != 200) {
		if (r->b.buf && strstr(r->b.buf, "invalid 'addr' parameter")) /* upstream 12617 */
			snprintf(why, sizeof why,
				 "tailscaled version is too old (out of sync with derper binary)");
		else
			snprintf(why, sizeof why, "failed to query local tailscaled status for "
				 "nodekey:%s: HTTP %ld: %.200s", r->hex, status,
				 r->b.buf ? r->b.buf : "");
	} else {
		/* upstream decodes the whole body into a WhoIsResponse */
		json_error_t je;
		json_t *v = whois_decode(&r->b, &je);
		int ok = v && (json_is_object(v) || json_is_null(v));
		if (!ok)
			snprintf(why, sizeof why, "failed to query local tailscaled status for "
				 "nodekey:%s: bad whois response: %s", r->hex,
				 v ? "not an object" : je.text);
		json_decref(v);
		if (ok) {
			if (!adm.url)
				req_answer(r, ADMISSION_ADMITTED);
			else if (xfer_start(r, STAGE_HOOK) != 0)
				refuse(r, "admission controller: out of memory");
			return;
		}
	}
	refuse(r, why);
}

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

static void hook_done(struct req *r, CURLcode rc, long status)
{
	char why[512];

	if (rc != CURLE_OK && status == 0) {
		/* no response at all: a transport error, where fail-open decides */
		if (adm.fail_open) {
			log_warn(LS_ADMISSION,
				 "admission controller unreachable; allowing client nodekey:%s (%s)",
				 r->hex, xfer_error(r, rc));
			req_answer(r, ADMISSION_FAILED_OPEN);
			return;
		}
		snprintf(why, sizeof why, "admission controller: %s", xfer_error(r, rc));
	} else if (status != 200) {
		snprintf(why, sizeof why, "admission controller: HTTP %ld", status);
	} else if (!r->b.got_value) {
		snprintf(why, sizeof why, "admission controller: bad response body (%s)",
			 rc == CURLE_OK || r->b.len == r->b.cap ?
			 "no complete JSON value in the first 4 KiB" : xfer_error(r, rc));
	} else if (!reply_allows(r->b.value)) {
		snprintf(why, sizeof why, "admission controller: nodekey:%s/%s not allowed", r->hex,
			 r->src);
	} else {
		req_answer(r, ADMISSION_ADMITTED);
		return;
	}
	refuse(r, why);
}

int admission_parse_reply(int hook, const char *body, size_t len, size_t step)
{
	struct body b = { .cap = hook ? WEBHOOK_BODY_MAX : WHOIS_BODY_MAX, .json_stop = hook };
	json_error_t je;
	int ok;

	for (size_t off = 0, k; off < len; off += k) {
		k = step && step < len - off ? step : len - off;
		if (on_body((char *)body + off, 1, k, &b) != k)
			break; /* libcurl ends the transfer here */
	}
	if (hook) {
		ok = b.got_value && reply_allows(b.value);
	} else {
		json_t *v = whois_decode(&b, &je);
		ok = !b.over && v && (json_is_object(v) || json_is_null(v)); /* over: failed */
		json_decref(v);
	}
	json_decref(b.value);
	free(b.buf);
	return ok;
}

static void xfer_done(struct req *r, CURLcode rc)
{
	long status = 0;

	curl_easy_getinfo(r->h, CURLINFO_RESPONSE_CODE, &status);
	xfer_unlink(r);
	if (req_gone(r))
		req_answer(r, ADMISSION_ABANDONED); /* whatever the answer: nobody to tell */
	else if (r->stage == STAGE_WHOIS)
		whois_done(r, rc, status);
	else
		hook_done(r, rc, status);
}

/* ---- the checker thread ---- */

/* Take pending checks into free slots; checks whose client has gone are dropped, and
 * with sweep every pending and in-flight one is looked at. Answers the busy refusals. */
static void checker_fill(int sweep)
{
	struct req *drop = NULL, *start = NULL, **tail = &start, *prev = NULL, *busy;
	int room = adm.inflight_max - ninflight;

	if (sweep) {
		for (struct req *r = inflight, *next; r; r = next) {
			next = r->next;
			if (req_gone(r)) {
				xfer_unlink(r);
				r->next = drop;
				drop = r;
			}
		}
	}
	pthread_mutex_lock(&adm.mu);
	busy = adm.busy;
	adm.busy = NULL;
	for (struct req *r = adm.pend_head, *next; r && (room > 0 || sweep); r = next) {
		next = r->next;
		int gone = req_gone(r);
		if (!gone && room <= 0) {
			prev = r; /* sweeping on: it keeps its place */
			continue;
		}
		if (prev) /* out of the pending list: dropped or started */
			prev->next = next;
		else
			adm.pend_head = next;
		if (adm.pend_tail == r)
			adm.pend_tail = prev;
		adm.npend--;
		if (gone) {
			r->next = drop;
			drop = r;
		} else {
			r->next = NULL;
			*tail = r;
			tail = &r->next;
			room--;
		}
	}
	pthread_mutex_unlock(&adm.mu);
	req_answer_all(busy, ADMISSION_BUSY);
	req_answer_all(drop, ADMISSION_ABANDONED);
	while (start) {
		struct req *r = start;
		start = r->next;
		if (xfer_start(r, adm.verify_clients ? STAGE_WHOIS : STAGE_HOOK) != 0)
			refuse(r, "admission: out of memory");
	}
}

static void *checker_main(void *unused)
{
	(void)unused;
	while (!__atomic_load_n(&adm.stopping, __ATOMIC_ACQUIRE)) {
		int running, msgs, finished = 0;
		checker_fill(__atomic_exchange_n(&adm.sweep, 0, __ATOMIC_ACQ_REL));
		curl_multi_perform(adm.multi, &running);
		for (CURLMsg *m; (m = curl_multi_info_read(adm.multi, &msgs));) {
			if (m->msg != CURLMSG_DONE)
				continue;
			char *r = NULL;
			curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, &r);
			xfer_done((struct req *)r, m->data.result);
			finished = 1;
		}
		if (!finished) /* else refill the freed slots first */
			curl_multi_poll(adm.multi, NULL, 0, 1000, NULL);
	}
	/* stopping: everything still open is refused */
	while (inflight) {
		struct req *r = inflight;
		xfer_unlink(r);
		req_answer(r, ADMISSION_ABANDONED);
	}
	pthread_mutex_lock(&adm.mu);
	struct req *pend = adm.pend_head, *busy = adm.busy;
	adm.pend_head = adm.pend_tail = adm.busy = NULL;
	adm.npend = 0;
	pthread_mutex_unlock(&adm.mu);
	req_answer_all(pend, ADMISSION_ABANDONED);
	req_answer_all(busy, ADMISSION_BUSY);
	return NULL;
}

/* Only when no checker runs (never started, or stopped). */
static void *late_main(void *p)
{
	struct req *r = p;

	r->done(r->arg, r->allow);
	req_free(r);
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
	int state = adm.state;
	pthread_mutex_unlock(&adm.mu);
	if (state == ST_RUNNING) {
		snprintf(err, errlen, "admission: already started");
		return -1;
	}
	pthread_once(&once, curl_once);
	free(adm.url);
	free(adm.socket);
	adm.url = url && url[0] ? strdup(url) : NULL;
	adm.socket = strdup(cfg->socket_path && cfg->socket_path[0] ? cfg->socket_path :
			    DEFAULT_SOCKET);
	adm.verify_clients = verify;
	adm.fail_open = cfg->verify_client_url_fail_open;
	__atomic_store_n(&adm.stopping, 0, __ATOMIC_RELAXED);
	if ((url && url[0] && !adm.url) || !adm.socket || !(adm.multi = curl_multi_init())) {
		snprintf(err, errlen, "admission: out of memory");
		return -1;
	}
	if (pthread_create(&adm.th, NULL, checker_main, NULL) != 0) {
		curl_multi_cleanup(adm.multi);
		adm.multi = NULL;
		snprintf(err, errlen, "admission: cannot start its thread");
		return -1;
	}
	adm.have_th = 1;
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

/* Under adm.mu: a refusal because derpd is busy, summarised with the other refusals. */
static void busy_refuse(const struct req *r)
{
	char why[80];

	snprintf(why, sizeof why, "admission queue full (%d checks waiting)", adm.npend);
	server_login_refused(LOGIN_ADMISSION_BUSY, r->peer, why);
}

void admission_check(const uint8_t key[32], const struct sockaddr *peer, socklen_t peerlen,
		     const uint8_t *gone, void (*done)(void *arg, int allow), void *arg)
{
	struct req *r = calloc(1, sizeof *r);
	pthread_t t;

	if (!r) {
		/* nowhere to keep the request: the one case answered in the caller's thread */
		server_login_refused(LOGIN_ADMISSION_BUSY, NULL, "out of memory");
		__atomic_add_fetch(&adm.count[ADMISSION_BUSY], 1, __ATOMIC_RELAXED);
		done(arg, 0);
		return;
	}
	memcpy(r->key, key, 32);
	key_hex(key, r->hex);
	format_peer(peer, peerlen, r);
	r->gone = gone;
	r->done = done;
	r->arg = arg;
	pthread_mutex_lock(&adm.mu);
	if (adm.state == ST_RUNNING) {
		if (adm.npend >= adm.pending_max) {
			/* busy is no reason to admit: refuse, and let the client come back */
			busy_refuse(r);
			r->next = adm.busy;
			adm.busy = r;
		} else {
			if (adm.pend_tail)
				adm.pend_tail->next = r;
			else
				adm.pend_head = r;
			adm.pend_tail = r;
			adm.npend++;
		}
		curl_multi_wakeup(adm.multi);
		pthread_mutex_unlock(&adm.mu);
		return;
	}
	r->allow = adm.state == ST_IDLE; /* nothing configured: admit; stopped: refuse */
	pthread_mutex_unlock(&adm.mu);
	/* rare: a thread of its own, so done() still never runs inside admission_check */
	if (pthread_create(&t, NULL, late_main, r) == 0) {
		pthread_detach(t);
	} else {
		done(arg, r->allow);
		req_free(r);
	}
}

void admission_gone(uint8_t *gone)
{
	__atomic_store_n(gone, 1, __ATOMIC_RELEASE);
	__atomic_store_n(&adm.sweep, 1, __ATOMIC_RELEASE);
	pthread_mutex_lock(&adm.mu);
	if (adm.state == ST_RUNNING)
		curl_multi_wakeup(adm.multi);
	pthread_mutex_unlock(&adm.mu);
}

void admission_counters_get(uint64_t out[ADMISSION_NRESULTS])
{
	for (int i = 0; i < ADMISSION_NRESULTS; i++)
		out[i] = __atomic_load_n(&adm.count[i], __ATOMIC_RELAXED);
}

const char *const admission_result_name[ADMISSION_NRESULTS] = {
	"admitted", "refused", "failed_open", "abandoned", "busy",
};

void admission_limits_for_tests(int inflight_max, int pending_max)
{
	adm.inflight_max = inflight_max > 0 ? inflight_max : ADM_INFLIGHT_MAX;
	adm.pending_max = pending_max > 0 ? pending_max : ADM_PENDING_MAX;
}

void admission_stop(void)
{
	pthread_mutex_lock(&adm.mu);
	__atomic_store_n(&adm.stopping, 1, __ATOMIC_RELEASE);
	if (adm.state == ST_RUNNING) {
		adm.state = ST_STOPPED;
		curl_multi_wakeup(adm.multi);
	}
	pthread_mutex_unlock(&adm.mu);
	/* the checker cuts what is in flight and answers everything left with allow=0 */
	if (adm.have_th) {
		pthread_join(adm.th, NULL);
		adm.have_th = 0;
	}
	if (adm.multi) {
		curl_multi_cleanup(adm.multi);
		adm.multi = NULL;
	}
}
