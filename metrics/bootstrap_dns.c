/* /bootstrap-dns (SERVER.md §9): a resolver thread turns the two name lists into maps
 * every 10 minutes; requests only read the maps, never resolve. Unlike upstream, a name
 * (or rollout TXT record) that fails to resolve keeps its last good answer, so a resolver
 * hiccup does not withdraw a control-plane address from clients that need it. */
#include "metrics/internal.h"

#include "server/log.h"

#include <arpa/inet.h>
#include <arpa/nameser.h>
#include <errno.h>
#include <jansson.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <resolv.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define REFRESH_SECONDS (10 * 60)
#define PASS_TIMEOUT_SECONDS 60
#define QUERIED_MAX 500   /* the remembered-names set is cleared beyond this */
#define QUERIED_SLOTS 1024

struct dns_entry {
	char *name;
	char **addrs;
	size_t n;
	double percent; /* 0..1; 0 also when unset */
};
struct dns_map {
	struct dns_entry *e;
	size_t n, cap;
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER; /* guards everything below */
static struct dns_map *published, *unpublished;
static char *published_json; /* cached body; NULL until the first refresh */
static size_t published_json_len;
static char *queried[QUERIED_SLOTS];
static size_t nqueried;

static uint64_t n_requests, n_pub_hits, n_pub_misses, n_unpub_hits, n_unpub_misses,
	n_unpub_percent_misses;

static char *list_published, *list_unpublished;
static pthread_t thread;
static int thread_running, stopping;
static pthread_cond_t stop_cond = PTHREAD_COND_INITIALIZER;

#define BUMP(c) __atomic_fetch_add(&(c), 1, __ATOMIC_RELAXED)

struct dns_map *dns_map_new(void)
{
	return calloc(1, sizeof(struct dns_map));
}

static void entry_clear(struct dns_entry *e)
{
	for (size_t i = 0; i < e->n; i++)
		free(e->addrs[i]);
	free(e->addrs);
	free(e->name);
}

void dns_map_free(struct dns_map *m)
{
	if (m == NULL)
		return;
	for (size_t i = 0; i < m->n; i++)
		entry_clear(&m->e[i]);
	free(m->e);
	free(m);
}

static struct dns_entry *dns_map_find(const struct dns_map *m, const char *name)
{
	if (m == NULL)
		return NULL;
	for (size_t i = 0; i < m->n; i++)
		if (strcmp(m->e[i].name, name) == 0)
			return &m->e[i];
	return NULL;
}

int dns_map_set(struct dns_map *m, const char *name, const char *const *addrs, size_t n,
		double percent)
{
	struct dns_entry ne = { .name = strdup(name), .n = n, .percent = percent };
	ne.addrs = calloc(n ? n : 1, sizeof(char *));
	if (ne.name == NULL || ne.addrs == NULL)
		goto oom;
	for (size_t i = 0; i < n; i++)
		if ((ne.addrs[i] = strdup(addrs[i])) == NULL)
			goto oom;
	struct dns_entry *old = dns_map_find(m, name);
	if (old != NULL) { /* a name listed twice: the later entry wins, as in a Go map */
		entry_clear(old);
		*old = ne;
		return 0;
	}
	if (m->n == m->cap) {
		size_t cap = m->cap ? m->cap * 2 : 8;
		struct dns_entry *e = realloc(m->e, cap * sizeof *e);
		if (e == NULL)
			goto oom;
		m->e = e;
		m->cap = cap;
	}
	m->e[m->n++] = ne;
	return 0;
oom:
	entry_clear(&ne);
	return -1;
}

/* Go's json.MarshalIndent(v, "", "\t"): jansson indents with spaces, one per level here,
 * so leading spaces become tabs (strings hold no raw newlines, so only indentation
 * starts a line). A nil map is "null", as Go marshals a map that never got an entry. */
static char *json_tabbed(json_t *obj, size_t *len)
{
	char *s = json_dumps(obj, JSON_INDENT(1) | JSON_SORT_KEYS);
	if (s == NULL)
		return NULL;
	size_t n = strlen(s), w = 0;
	int bol = 1;
	for (size_t r = 0; r < n; r++) {
		char c = s[r];
		if (bol && c == ' ')
			c = '\t';
		else
			bol = 0;
		if (c == '\n')
			bol = 1;
		s[w++] = c;
	}
	s[w] = '\0';
	*len = w;
	return s;
}

static char *map_json(const struct dns_map *m, const char *only, size_t *len)
{
	if (m == NULL || m->n == 0) {
		*len = 4;
		return strdup("null");
	}
	json_t *obj = json_object();
	for (size_t i = 0; i < m->n; i++) {
		if (only != NULL && strcmp(m->e[i].name, only) != 0)
			continue;
		json_t *arr = json_array();
		for (size_t k = 0; k < m->e[i].n; k++)
			json_array_append_new(arr, json_string(m->e[i].addrs[k]));
		json_object_set_new(obj, m->e[i].name, arr);
	}
	char *s = json_tabbed(obj, len);
	json_decref(obj);
	return s;
}

/* ---- resolution ---- */

static void shuffle(char **a, size_t n)
{
	for (size_t i = n; i > 1; i--) {
		size_t j = (size_t)random() % i;
		char *t = a[i - 1];
		a[i - 1] = a[j];
		a[j] = t;
	}
}

/* All A and AAAA addresses of name via the system resolver (files, then DNS). */
static int lookup_ip(const char *name, char ***out, size_t *nout)
{
	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM };
	struct addrinfo *res = NULL;
	int rc = getaddrinfo(name, NULL, &hints, &res);
	if (rc != 0) {
		log_warn(LS_DNS, "lookup \"%s\": %s", name,
			 rc == EAI_SYSTEM ? strerror(errno) : gai_strerror(rc));
		return -1;
	}
	size_t n = 0, cap = 0;
	char **v = NULL;
	for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
		char s[INET6_ADDRSTRLEN];
		sockaddr_ip_string(ai->ai_addr, s, sizeof s); /* v4-mapped prints dotted, as Go */
		if (s[0] == '\0')
			continue;
		int dup = 0;
		for (size_t i = 0; i < n && !dup; i++)
			dup = strcmp(v[i], s) == 0;
		if (dup)
			continue;
		if (n == cap) {
			cap = cap ? cap * 2 : 8;
			char **nv = realloc(v, cap * sizeof *nv);
			if (nv == NULL)
				break;
			v = nv;
		}
		if ((v[n] = strdup(s)) != NULL)
			n++;
	}
	freeaddrinfo(res);
	*out = v;
	*nout = n;
	return n > 0 ? 0 : -1;
}

/* Skip a possibly compressed domain name in a DNS message; NULL if malformed. */
static const uint8_t *skip_name(const uint8_t *p, const uint8_t *end)
{
	while (p < end) {
		if (*p == 0)
			return p + 1;
		if ((*p & 0xc0) == 0xc0)
			return p + 2 <= end ? p + 2 : NULL;
		p += 1 + *p;
	}
	return NULL;
}

/* The rollout percentage from txtname's TXT records (bootstrap_dns_txt_percent); -1 if
 * the lookup failed. */
static int lookup_percent(const char *txtname, double *percent)
{
	struct __res_state st;
	memset(&st, 0, sizeof st);
	if (res_ninit(&st) != 0)
		return -1;
	uint8_t ans[8192];
	int len = res_nquery(&st, txtname, ns_c_in, ns_t_txt, ans, sizeof ans);
	res_nclose(&st);
	if (len < 12) {
		log_warn(LS_DNS, "lookup \"%s\": TXT query failed", txtname);
		return -1;
	}
	return bootstrap_dns_txt_percent(ans, (size_t)len, percent);
}

int bootstrap_dns_txt_percent(const uint8_t *ans, size_t len, double *percent)
{
	if (len < 12)
		return 0;
	const uint8_t *p = ans + 12, *end = ans + len;
	int qd = ans[4] << 8 | ans[5], an = ans[6] << 8 | ans[7], found = 0;
	for (int i = 0; i < qd && p; i++)
		if ((p = skip_name(p, end)) != NULL)
			p = p + 4 <= end ? p + 4 : NULL;
	for (int i = 0; i < an && p; i++) {
		if ((p = skip_name(p, end)) == NULL || p + 10 > end)
			break;
		int type = p[0] << 8 | p[1], rdlen = p[8] << 8 | p[9];
		p += 10;
		if (p + rdlen > end)
			break;
		if (type == ns_t_txt) {
			char val[1024];
			size_t vn = 0;
			for (const uint8_t *q = p; q < p + rdlen;) {
				size_t sl = *q++;
				if (q + sl > p + rdlen)
					break;
				if (vn + sl < sizeof val) {
					memcpy(val + vn, q, sl);
					vn += sl;
				}
				q += sl;
			}
			val[vn] = '\0';
			/* Go's strconv.Atoi: optional sign, decimal digits, nothing else */
			char *e;
			errno = 0;
			long v = vn > 0 ? strtol(val, &e, 10) : -1;
			if (vn > 0 && *e == '\0' && errno == 0 && val[0] != ' ' && val[0] != '\t' &&
			    v >= 0 && v <= 100) {
				*percent = (double)v / 100;
				found = 1;
			}
		}
		p += rdlen;
	}
	return found;
}

static struct dns_map *resolve_list(const char *list, const struct dns_map *old)
{
	struct dns_map *m = dns_map_new();
	char *copy = strdup(list);
	if (m == NULL || copy == NULL) {
		free(copy);
		dns_map_free(m);
		return NULL;
	}
	time_t start = time(NULL);
	/* strsep keeps empty entries, like Go's strings.Split; an empty name just fails */
	for (char *rest = copy, *ent; (ent = strsep(&rest, ",")) != NULL;) {
		char *txt = strchr(ent, '/');
		if (txt)
			*txt++ = '\0';
		const struct dns_entry *prev = dns_map_find(old, ent);
		char **addrs = NULL;
		size_t n = 0;
		int ok = time(NULL) - start < PASS_TIMEOUT_SECONDS && lookup_ip(ent, &addrs, &n) == 0;
		double percent = 1.0;
		if (ok && txt != NULL) {
			int r = lookup_percent(txt, &percent);
			if (r == 0)
				percent = 0;
			else if (r < 0)
				percent = prev ? prev->percent : 0;
		}
		if (ok) {
			shuffle(addrs, n); /* so clients are not biased towards one family */
			dns_map_set(m, ent, (const char *const *)addrs, n, percent);
		} else if (prev != NULL) {
			dns_map_set(m, ent, (const char *const *)prev->addrs, prev->n, prev->percent);
		}
		for (size_t i = 0; i < n; i++)
			free(addrs[i]);
		free(addrs);
	}
	free(copy);
	return m;
}

void bootstrap_dns_install(struct dns_map *pub, struct dns_map *unpub)
{
	char *json = NULL;
	size_t len = 0;
	if (pub != NULL && (json = map_json(pub, NULL, &len)) == NULL) {
		dns_map_free(pub); /* failed to serialize: the old value stays, as upstream */
		pub = NULL;
	}
	pthread_mutex_lock(&mu);
	struct dns_map *old_pub = NULL, *old_unpub = NULL;
	char *old_json = NULL;
	if (pub != NULL) {
		old_pub = published;
		old_json = published_json;
		published = pub;
		published_json = json;
		published_json_len = len;
	}
	if (unpub != NULL) {
		old_unpub = unpublished;
		unpublished = unpub;
	}
	pthread_mutex_unlock(&mu);
	dns_map_free(old_pub);
	dns_map_free(old_unpub);
	free(old_json);
}

void bootstrap_dns_refresh(void)
{
	/* Only the resolver (one thread, or a test) replaces the maps, so reading the old
	 * ones here without the lock races with nothing. */
	struct dns_map *pub = NULL, *unpub = NULL;
	if (list_published != NULL && list_published[0] != '\0')
		pub = resolve_list(list_published, published);
	if (list_unpublished != NULL && list_unpublished[0] != '\0')
		unpub = resolve_list(list_unpublished, unpublished);
	bootstrap_dns_install(pub, unpub);
}

static void *resolver_main(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&mu);
	while (!stopping) {
		pthread_mutex_unlock(&mu);
		bootstrap_dns_refresh();
		pthread_mutex_lock(&mu);
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += REFRESH_SECONDS;
		while (!stopping && pthread_cond_timedwait(&stop_cond, &mu, &ts) != ETIMEDOUT)
			;
	}
	pthread_mutex_unlock(&mu);
	return NULL;
}

int bootstrap_dns_start(const char *pub, const char *unpub, char *err, size_t errlen)
{
	free(list_published);
	free(list_unpublished);
	list_published = strdup(pub ? pub : "");
	list_unpublished = strdup(unpub ? unpub : "");
	if (list_published == NULL || list_unpublished == NULL)
		return snprintf(err, errlen, "out of memory"), -1;
	if (list_published[0] == '\0' && list_unpublished[0] == '\0')
		return 0;
	stopping = 0;
	int rc = pthread_create(&thread, NULL, resolver_main, NULL);
	if (rc != 0)
		return snprintf(err, errlen, "bootstrap DNS thread: %s", strerror(rc)), -1;
	thread_running = 1;
	return 0;
}

void bootstrap_dns_stop(void)
{
	if (thread_running) {
		pthread_mutex_lock(&mu);
		stopping = 1;
		pthread_cond_signal(&stop_cond);
		pthread_mutex_unlock(&mu);
		pthread_join(thread, NULL); /* a lookup in flight finishes first (resolver timeouts) */
		thread_running = 0;
	}
}

/* ---- requests ---- */

/* Go's PCG (math/rand/v2) seeded with the IP's 16 bytes, one Float64 draw. */
static double pcg_float64(uint64_t hi, uint64_t lo)
{
	__extension__ typedef unsigned __int128 u128;
	const u128 mul = ((u128)2549297995355413924ULL << 64) | 4865540595714422341ULL;
	const u128 inc = ((u128)6364136223846793005ULL << 64) | 1442695040888963407ULL;
	u128 s = (((u128)hi << 64) | lo) * mul + inc;
	hi = (uint64_t)(s >> 64);
	lo = (uint64_t)s;
	hi ^= hi >> 32;
	hi *= 0xda942042e4dd58b5ULL;
	hi ^= hi >> 48;
	hi *= (lo | 1);
	return (double)(hi & ((1ULL << 53) - 1)) / (double)(1ULL << 53);
}

int bootstrap_dns_percent_match(const struct sockaddr *peer, double percent)
{
	if (percent == 0)
		return 0;
	if (percent == 1)
		return 1;
	uint8_t ip16[16] = { [10] = 0xff, [11] = 0xff };
	if (peer == NULL)
		return 0;
	if (peer->sa_family == AF_INET) {
		const uint8_t *a = (const uint8_t *)&((const struct sockaddr_in *)peer)->sin_addr;
		memcpy(ip16 + 12, a, 4);
		if (a[0] == 127)
			return random() % 2 == 0; /* loopback: random, for local testing */
	} else if (peer->sa_family == AF_INET6) {
		const struct in6_addr *a = &((const struct sockaddr_in6 *)peer)->sin6_addr;
		memcpy(ip16, a->s6_addr, 16);
		if (IN6_IS_ADDR_LOOPBACK(a) || (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127))
			return random() % 2 == 0;
	} else {
		return 0;
	}
	uint64_t s1 = 0, s2 = 0;
	for (int i = 7; i >= 0; i--) { /* little-endian halves */
		s1 = s1 << 8 | ip16[i];
		s2 = s2 << 8 | ip16[8 + i];
	}
	return percent > pcg_float64(s1, s2);
}

static uint64_t str_hash(const char *s)
{
	uint64_t h = 1469598103934665603ULL;
	for (; *s; s++)
		h = (h ^ (uint8_t)*s) * 1099511628211ULL;
	return h;
}

/* Remember q; cleared when it grows past 500 names. Called with mu held. */
static void queried_add(const char *q)
{
	size_t i = (size_t)(str_hash(q) % QUERIED_SLOTS);
	while (queried[i] != NULL) {
		if (strcmp(queried[i], q) == 0)
			return;
		i = (i + 1) % QUERIED_SLOTS;
	}
	if ((queried[i] = strdup(q)) == NULL)
		return;
	if (++nqueried > QUERIED_MAX) {
		for (size_t k = 0; k < QUERIED_SLOTS; k++) {
			free(queried[k]);
			queried[k] = NULL;
		}
		nqueried = 0;
	}
}

char *bootstrap_dns_answer(const char *q, const struct sockaddr *peer, size_t *len)
{
	BUMP(n_requests);
	char *body = NULL;
	*len = 0;
	pthread_mutex_lock(&mu);
	if (q != NULL && q[0] != '\0') {
		queried_add(q);
		const struct dns_entry *u = dns_map_find(unpublished, q);
		if (u != NULL && u->n > 0) {
			BUMP(n_unpub_hits);
			if (bootstrap_dns_percent_match(peer, u->percent)) {
				/* only the name asked for, never the whole hidden list */
				body = map_json(unpublished, q, len);
				if (body != NULL) {
					pthread_mutex_unlock(&mu);
					return body;
				}
			} else {
				BUMP(n_unpub_percent_misses);
			}
		}
		const struct dns_entry *p = dns_map_find(published, q);
		if (p != NULL) {
			if (p->n > 0)
				BUMP(n_pub_hits);
			else
				BUMP(n_pub_misses);
		} else {
			BUMP(n_unpub_misses);
		}
	}
	if (published_json != NULL && (body = malloc(published_json_len + 1)) != NULL) {
		memcpy(body, published_json, published_json_len + 1);
		*len = published_json_len;
	}
	pthread_mutex_unlock(&mu);
	return body;
}

void bootstrap_dns_counters_get(struct bootstrap_dns_counters *c)
{
	c->requests = __atomic_load_n(&n_requests, __ATOMIC_RELAXED);
	c->published_hits = __atomic_load_n(&n_pub_hits, __ATOMIC_RELAXED);
	c->published_misses = __atomic_load_n(&n_pub_misses, __ATOMIC_RELAXED);
	c->unpublished_hits = __atomic_load_n(&n_unpub_hits, __ATOMIC_RELAXED);
	c->unpublished_misses = __atomic_load_n(&n_unpub_misses, __ATOMIC_RELAXED);
	c->unpublished_percent_misses = __atomic_load_n(&n_unpub_percent_misses, __ATOMIC_RELAXED);
	pthread_mutex_lock(&mu);
	c->queried_domains = nqueried;
	pthread_mutex_unlock(&mu);
}
