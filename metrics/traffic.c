/* /debug/traffic (SERVER.md §6.5): every 2 s run `ss -i -H -t` and stream one JSON line
 * per DERP client whose byte counts grew, then an empty line. The ss runs and the sleep
 * happen on a thread of the stream's own; libmicrohttpd's thread only copies what is ready
 * and otherwise suspends the connection until the producer resumes it, so a slow `ss`
 * never stalls other HTTP requests. */
#include "metrics/internal.h"

#include "server/server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>

#define ROUND_SECONDS 2
#define MAX_STREAMS 8
#define MAX_ENTRIES 65536

struct traffic_stream {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct MHD_Connection *conn;
	struct mbuf out;
	size_t off;
	int done;      /* nothing more will be produced */
	int suspended; /* the reader suspended conn; whoever clears this must resume it */
	int closed;    /* libmicrohttpd freed the response: the producer stops */
	int ended;     /* the reader has returned end-of-stream */
	int refs;      /* producer + response */
	time_t deadline; /* CLOCK_MONOTONIC second the stream ends at (the listener's write
			  * timeout, as Go's failing writes end it); 0 = never */
	struct traffic_stream *next;
};

static pthread_mutex_t list_mu = PTHREAD_MUTEX_INITIALIZER;
static struct traffic_stream *streams;
static int nstreams;

/* "ip:port" with IPv4-mapped addresses unmapped and IPv6 in brackets, canonical form. */
static void addr_port_string(const struct sockaddr *sa, char *out, size_t n)
{
	char ip[INET6_ADDRSTRLEN];
	sockaddr_ip_string(sa, ip, sizeof ip);
	unsigned port = sa->sa_family == AF_INET ? ntohs(((const struct sockaddr_in *)sa)->sin_port)
						 : ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
	snprintf(out, n, strchr(ip, ':') ? "[%s]:%u" : "%s:%u", ip, port);
}

/* Canonicalize ss's "1.2.3.4:5", "[::ffff:1.2.3.4]:5", "[2001:db8::1]:5"; -1 if not an
 * address (upstream skips such lines). */
static int canon_peer(const char *s, char *out, size_t n)
{
	char host[INET6_ADDRSTRLEN + 2];
	const char *colon = strrchr(s, ':');
	if (colon == NULL || colon == s)
		return -1;
	size_t hl = (size_t)(colon - s);
	if (s[0] == '[') {
		if (hl < 2 || s[hl - 1] != ']')
			return -1;
		s++;
		hl -= 2;
	}
	if (hl >= sizeof host)
		return -1;
	memcpy(host, s, hl);
	host[hl] = '\0';
	char *pct = strchr(host, '%'); /* zone */
	if (pct)
		*pct = '\0';
	char *end;
	long port = strtol(colon + 1, &end, 10);
	if (*end != '\0' || port < 0 || port > 65535 || colon[1] == '\0')
		return -1;
	struct sockaddr_storage ss = { 0 };
	struct sockaddr_in *v4 = (struct sockaddr_in *)&ss;
	struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&ss;
	if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
		v4->sin_family = AF_INET;
		v4->sin_port = htons((uint16_t)port);
	} else if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
		v6->sin6_family = AF_INET6;
		v6->sin6_port = htons((uint16_t)port);
	} else {
		return -1;
	}
	addr_port_string((struct sockaddr *)&ss, out, n);
	return 0;
}

size_t traffic_parse_ss(const char *text, struct traffic_entry *e, size_t max)
{
	size_t n = 0;
	const char *p = text;
	while (*p && n < max) {
		const char *nl = strchr(p, '\n');
		size_t l1 = nl ? (size_t)(nl - p) : strlen(p);
		char line[1024];
		snprintf(line, sizeof line, "%.*s", (int)(l1 < sizeof line ? l1 : sizeof line - 1), p);
		p = nl ? nl + 1 : p + l1;
		/* the second line of the pair: counters */
		nl = strchr(p, '\n');
		size_t l2 = nl ? (size_t)(nl - p) : strlen(p);
		const char *info = p;
		p = nl ? nl + 1 : p + l2;

		char *save = NULL, *f = strtok_r(line, " \t", &save);
		for (int i = 0; f && i < 4; i++)
			f = strtok_r(NULL, " \t", &save);
		if (f == NULL || canon_peer(f, e[n].peer, sizeof e[n].peer) != 0)
			continue;
		e[n].sent = e[n].recv = 0;
		for (const char *q = info; q < info + l2;) {
			while (q < info + l2 && (*q == ' ' || *q == '\t'))
				q++;
			const char *t = q;
			while (q < info + l2 && *q != ' ' && *q != '\t')
				q++;
			size_t tl = (size_t)(q - t);
			if (tl > 11 && memcmp(t, "bytes_sent:", 11) == 0)
				e[n].sent = strtoull(t + 11, NULL, 10);
			else if (tl > 15 && memcmp(t, "bytes_received:", 15) == 0)
				e[n].recv = strtoull(t + 15, NULL, 10);
		}
		n++;
	}
	return n;
}

/* ---- the producer ---- */

struct client_row {
	char peer[64];
	uint8_t key[32];
	uint64_t unique_senders;
};
struct client_list {
	struct client_row *v;
	size_t n, cap;
};

static void collect_client(void *arg, const struct server_client_info *ci)
{
	struct client_list *l = arg;
	if (l->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 64;
		struct client_row *v = realloc(l->v, cap * sizeof *v);
		if (v == NULL)
			return;
		l->v = v;
		l->cap = cap;
	}
	struct client_row *r = &l->v[l->n++];
	addr_port_string((const struct sockaddr *)&ci->peer, r->peer, sizeof r->peer);
	memcpy(r->key, ci->key, 32);
	r->unique_senders = ci->unique_senders;
}

static int cmp_row(const void *a, const void *b)
{
	return strcmp(((const struct client_row *)a)->peer, ((const struct client_row *)b)->peer);
}

static int cmp_entry(const void *a, const void *b)
{
	return strcmp(((const struct traffic_entry *)a)->peer,
		      ((const struct traffic_entry *)b)->peer);
}

/* Run ss; NULL and a message in err on failure. */
static char *run_ss(char *err, size_t errlen)
{
	FILE *f = popen("ss -i -H -t 2>/dev/null", "r");
	if (f == NULL) {
		snprintf(err, errlen, "%s", strerror(errno));
		return NULL;
	}
	struct mbuf b = { 0 };
	char chunk[8192];
	size_t k;
	while ((k = fread(chunk, 1, sizeof chunk, f)) > 0)
		mbuf_add(&b, chunk, k);
	int st = pclose(f);
	if (st != 0 || b.oom) {
		snprintf(err, errlen, "exit status %d", WIFEXITED(st) ? WEXITSTATUS(st) : 1);
		mbuf_free(&b);
		return NULL;
	}
	return b.p ? b.p : strdup("");
}

static void stream_put(struct traffic_stream *st, const char *s, size_t n, int done)
{
	pthread_mutex_lock(&st->mu);
	mbuf_add(&st->out, s, n);
	if (done)
		st->done = 1;
	int resume = st->suspended;
	st->suspended = 0;
	pthread_mutex_unlock(&st->mu);
	if (resume) /* see struct traffic_stream: conn is alive while it was suspended */
		MHD_resume_connection(st->conn);
}

static void stream_unref(struct traffic_stream *st)
{
	pthread_mutex_lock(&st->mu);
	int left = --st->refs;
	pthread_mutex_unlock(&st->mu);
	if (left > 0)
		return;
	pthread_mutex_lock(&list_mu);
	for (struct traffic_stream **pp = &streams; *pp; pp = &(*pp)->next)
		if (*pp == st) {
			*pp = st->next;
			nstreams--;
			break;
		}
	pthread_mutex_unlock(&list_mu);
	mbuf_free(&st->out);
	pthread_mutex_destroy(&st->mu);
	pthread_cond_destroy(&st->cv);
	free(st);
}

static time_t monotonic_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec;
}

static void *producer_main(void *arg)
{
	struct traffic_stream *st = arg;
	struct traffic_entry *prev = calloc(MAX_ENTRIES, sizeof *prev), *cur = calloc(MAX_ENTRIES, sizeof *cur);
	size_t nprev = 0;
	struct client_list clients = { 0 };
	for (;;) {
		pthread_mutex_lock(&st->mu);
		int stop = st->closed || st->done || (st->deadline && monotonic_s() >= st->deadline);
		pthread_mutex_unlock(&st->mu);
		if (stop || prev == NULL || cur == NULL)
			break;
		char err[128];
		char *text = run_ss(err, sizeof err);
		if (text == NULL) {
			char msg[160];
			int n = snprintf(msg, sizeof msg, "ss failed: %s", err);
			stream_put(st, msg, (size_t)n, 1);
			break;
		}
		size_t ncur = traffic_parse_ss(text, cur, MAX_ENTRIES);
		free(text);
		qsort(cur, ncur, sizeof *cur, cmp_entry);
		clients.n = 0;
		server_clients_foreach(collect_client, &clients);
		if (clients.n) /* clients.v is NULL until there is one; qsort wants non-NULL */
			qsort(clients.v, clients.n, sizeof *clients.v, cmp_row);
		struct mbuf b = { 0 };
		for (size_t i = 0; i < ncur; i++) {
			struct traffic_entry *p = bsearch(&cur[i], prev, nprev, sizeof *prev, cmp_entry);
			uint64_t ps = p ? p->sent : 0, pr = p ? p->recv : 0;
			if (!(ps < cur[i].sent || pr < cur[i].recv))
				continue;
			struct client_row key;
			snprintf(key.peer, sizeof key.peer, "%s", cur[i].peer);
			struct client_row *c =
				clients.n ? bsearch(&key, clients.v, clients.n, sizeof key, cmp_row) : NULL;
			if (c == NULL)
				continue;
			mbuf_printf(&b, "{\"Sent\":%llu,\"Recv\":%llu,\"Key\":\"nodekey:",
				    (unsigned long long)cur[i].sent, (unsigned long long)cur[i].recv);
			for (int k = 0; k < 32; k++)
				mbuf_printf(&b, "%02x", c->key[k]);
			if (c->unique_senders)
				mbuf_printf(&b, "\",\"UniqueSenders\":%llu}\n",
					    (unsigned long long)c->unique_senders);
			else
				mbuf_puts(&b, "\"}\n");
		}
		mbuf_puts(&b, "\n");
		stream_put(st, b.p, b.len, 0);
		mbuf_free(&b);
		struct traffic_entry *t = prev;
		prev = cur;
		cur = t;
		nprev = ncur;

		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += ROUND_SECONDS;
		pthread_mutex_lock(&st->mu);
		while (!st->closed && !st->done &&
		       pthread_cond_timedwait(&st->cv, &st->mu, &ts) != ETIMEDOUT)
			;
		pthread_mutex_unlock(&st->mu);
	}
	free(prev);
	free(cur);
	free(clients.v);
	stream_put(st, "", 0, 1);
	stream_unref(st);
	return NULL;
}

/* ---- libmicrohttpd side ---- */

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
	(void)pos;
	struct traffic_stream *st = cls;
	pthread_mutex_lock(&st->mu);
	if (st->off < st->out.len) {
		size_t n = st->out.len - st->off;
		if (n > max)
			n = max;
		memcpy(buf, st->out.p + st->off, n);
		st->off += n;
		if (st->off == st->out.len)
			st->off = st->out.len = 0;
		pthread_mutex_unlock(&st->mu);
		return (ssize_t)n;
	}
	if (st->done) {
		st->ended = 1;
		pthread_cond_broadcast(&st->cv);
		pthread_mutex_unlock(&st->mu);
		return MHD_CONTENT_READER_END_OF_STREAM;
	}
	st->suspended = 1;
	pthread_mutex_unlock(&st->mu);
	/* If the producer resumed between the unlock and here, libmicrohttpd cancels this
	 * suspend and calls us again at once: no wake-up is lost. */
	MHD_suspend_connection(st->conn);
	return 0;
}

static void stream_free(void *cls)
{
	struct traffic_stream *st = cls;
	pthread_mutex_lock(&st->mu);
	st->closed = 1;
	pthread_cond_broadcast(&st->cv);
	pthread_mutex_unlock(&st->mu);
	stream_unref(st);
}

struct MHD_Response *traffic_response(struct MHD_Connection *conn, unsigned max_seconds)
{
	struct traffic_stream *st = calloc(1, sizeof *st);
	if (st == NULL)
		return NULL;
	if (max_seconds)
		st->deadline = monotonic_s() + (time_t)max_seconds;
	pthread_mutex_init(&st->mu, NULL);
	pthread_cond_init(&st->cv, NULL);
	st->conn = conn;
	st->refs = 2;
	pthread_mutex_lock(&list_mu);
	if (nstreams >= MAX_STREAMS) {
		pthread_mutex_unlock(&list_mu);
		pthread_mutex_destroy(&st->mu);
		pthread_cond_destroy(&st->cv);
		free(st);
		return NULL;
	}
	st->next = streams;
	streams = st;
	nstreams++;
	pthread_mutex_unlock(&list_mu);
	struct MHD_Response *r =
		MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, stream_read, st, stream_free);
	pthread_t th;
	pthread_attr_t attr;
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	if (r == NULL || pthread_create(&th, &attr, producer_main, st) != 0) {
		pthread_attr_destroy(&attr);
		if (r != NULL) {
			st->done = 1;
			stream_unref(st); /* the producer's reference; the response keeps one */
			return r;
		}
		st->refs = 1;
		stream_unref(st);
		return NULL;
	}
	pthread_attr_destroy(&attr);
	return r;
}

/* End every stream and wake its connection, so the daemon holds no suspended connection
 * when it is stopped (libmicrohttpd forbids that). Waits up to a second for each. */
void traffic_shutdown(void)
{
	struct traffic_stream *all[MAX_STREAMS];
	int n = 0;
	pthread_mutex_lock(&list_mu);
	for (struct traffic_stream *st = streams; st && n < MAX_STREAMS; st = st->next) {
		pthread_mutex_lock(&st->mu);
		st->refs++; /* keep it while we wait below */
		pthread_mutex_unlock(&st->mu);
		all[n++] = st;
	}
	pthread_mutex_unlock(&list_mu);
	for (int i = 0; i < n; i++) {
		struct traffic_stream *st = all[i];
		pthread_mutex_lock(&st->mu);
		st->done = 1;
		pthread_cond_broadcast(&st->cv);
		int resume = st->suspended;
		st->suspended = 0;
		pthread_mutex_unlock(&st->mu);
		if (resume)
			MHD_resume_connection(st->conn);
	}
	for (int i = 0; i < n; i++) {
		struct traffic_stream *st = all[i];
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += 1;
		pthread_mutex_lock(&st->mu);
		while (!st->closed && !st->ended &&
		       pthread_cond_timedwait(&st->cv, &st->mu, &ts) != ETIMEDOUT)
			;
		pthread_mutex_unlock(&st->mu);
		stream_unref(st);
	}
}
