#include "server/client_map.h"

#include <pthread.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

/* One entry per key. A single connection needs no allocation beyond the entry; the
 * member set and send history arrays appear only once a key has duplicates. */
struct entry {
	struct entry *next;          /* hash chain */
	uint8_t key[32];
	struct cm_member *active;
	struct cm_member *last;      /* most recent candidate (dup policy) */
	struct cm_member *single;    /* the member when n == 1 */
	struct cm_member **set;      /* members when n >= 2 */
	struct cm_member **hist;     /* who sent, in order, adjacent repeats collapsed */
	uint32_t n, cap, nhist;
};

struct shard {
	pthread_mutex_t mu;
	struct entry **buckets;
	uint32_t nbuckets, count;
} __attribute__((aligned(64)));

struct client_map {
	struct shard *shards;
	unsigned nshards;
	enum cm_policy policy;
	uint8_t hash_key[crypto_shorthash_KEYBYTES];
	/* gauges: touched on (un)registration only, never per packet */
	int64_t keys, dup_keys, dup_conns;
	uint64_t total_dup;
};

/* Keys are chosen by clients, so the hash is keyed (SipHash) to keep chains short. */
static uint64_t key_hash(const struct client_map *m, const uint8_t key[32])
{
	uint8_t out[crypto_shorthash_BYTES];
	uint64_t h;

	crypto_shorthash(out, key, 32, m->hash_key);
	memcpy(&h, out, sizeof h);
	return h;
}

static struct shard *shard_of(struct client_map *m, uint64_t h)
{
	return &m->shards[(h >> 48) & (m->nshards - 1)];
}

static struct entry **slot_of(struct shard *s, uint64_t h, const uint8_t key[32])
{
	struct entry **pp = &s->buckets[h & (s->nbuckets - 1)];

	while (*pp && memcmp((*pp)->key, key, 32) != 0)
		pp = &(*pp)->next;
	return pp;
}

static void shard_grow(struct client_map *m, struct shard *s)
{
	uint32_t nb = s->nbuckets * 2;
	struct entry **b = calloc(nb, sizeof *b);

	if (!b)
		return; /* keep the longer chains; correctness does not depend on it */
	for (uint32_t i = 0; i < s->nbuckets; i++) {
		struct entry *e = s->buckets[i], *next;
		for (; e; e = next) {
			uint64_t h = key_hash(m, e->key);
			next = e->next;
			e->next = b[h & (nb - 1)];
			b[h & (nb - 1)] = e;
		}
	}
	free(s->buckets);
	s->buckets = b;
	s->nbuckets = nb;
}

struct client_map *client_map_new(unsigned nshards, enum cm_policy policy)
{
	struct client_map *m = calloc(1, sizeof *m);
	unsigned n = 1;

	if (!m)
		return NULL;
	while (n < nshards)
		n <<= 1;
	m->nshards = n;
	m->policy = policy;
	crypto_shorthash_keygen(m->hash_key);
	m->shards = aligned_alloc(64, sizeof(struct shard) * n);
	if (!m->shards) {
		free(m);
		return NULL;
	}
	for (unsigned i = 0; i < n; i++) {
		struct shard *s = &m->shards[i];
		memset(s, 0, sizeof *s);
		pthread_mutex_init(&s->mu, NULL);
		s->nbuckets = 16;
		s->buckets = calloc(s->nbuckets, sizeof *s->buckets);
		if (!s->buckets)
			abort();
	}
	return m;
}

void client_map_free(struct client_map *m)
{
	if (!m)
		return;
	for (unsigned i = 0; i < m->nshards; i++) {
		struct shard *s = &m->shards[i];
		for (uint32_t b = 0; b < s->nbuckets; b++) {
			struct entry *e = s->buckets[b], *next;
			for (; e; e = next) {
				next = e->next;
				free(e->set);
				free(e->hist);
				free(e);
			}
		}
		free(s->buckets);
		pthread_mutex_destroy(&s->mu);
	}
	free(m->shards);
	free(m);
}

static void gauge_add(int64_t *g, int64_t d)
{
	__atomic_add_fetch(g, d, __ATOMIC_RELAXED);
}

static void set_flag(uint8_t *f, uint8_t v)
{
	__atomic_store_n(f, v, __ATOMIC_RELAXED);
}

static void hist_collapse(struct entry *e)
{
	uint32_t w = 0;

	for (uint32_t r = 0; r < e->nhist; r++)
		if (w == 0 || e->hist[w - 1] != e->hist[r])
			e->hist[w++] = e->hist[r];
	e->nhist = w;
}

static int hist_contains(const struct entry *e, const struct cm_member *mem)
{
	for (uint32_t i = 0; i < e->nhist; i++)
		if (e->hist[i] == mem)
			return 1;
	return 0;
}

/* Upstream's history grows without bound; keep the newest cap entries. */
static void hist_append(struct entry *e, struct cm_member *mem)
{
	if (e->nhist == e->cap) {
		memmove(&e->hist[0], &e->hist[1], (e->nhist - 1) * sizeof *e->hist);
		e->nhist--;
	}
	e->hist[e->nhist++] = mem;
}

static int entry_reserve(struct entry *e, uint32_t want)
{
	if (want <= e->cap)
		return 0;
	uint32_t cap = e->cap ? e->cap * 2 : 4;
	while (cap < want)
		cap *= 2;
	struct cm_member **set = realloc(e->set, cap * sizeof *set);
	if (!set)
		return -1;
	e->set = set;
	struct cm_member **hist = realloc(e->hist, cap * sizeof *hist);
	if (!hist)
		return -1;
	e->hist = hist;
	e->cap = cap;
	return 0;
}

void client_map_register(struct client_map *m, struct cm_member *mem)
{
	uint64_t h = key_hash(m, mem->key);
	struct shard *s = shard_of(m, h);

	mem->dup = mem->disabled = 0;
	pthread_mutex_lock(&s->mu);
	struct entry **pp = slot_of(s, h, mem->key);
	struct entry *e = *pp;
	if (!e) {
		e = calloc(1, sizeof *e);
		if (!e)
			abort();
		memcpy(e->key, mem->key, 32);
		e->single = e->active = mem;
		e->n = 1;
		*pp = e;
		if (++s->count > s->nbuckets * 2)
			shard_grow(m, s);
		gauge_add(&m->keys, 1);
		pthread_mutex_unlock(&s->mu);
		return;
	}
	/* The hist array always has room for every member, so this is the only growth. */
	if (entry_reserve(e, e->n + 1) != 0)
		abort();
	if (e->n == 1) {
		struct cm_member *old = e->single;
		e->set[0] = old;
		e->hist[0] = old;
		e->nhist = 1;
		e->single = NULL;
		set_flag(&old->dup, 1);
		gauge_add(&m->dup_keys, 1);
		gauge_add(&m->dup_conns, 2);
	} else {
		hist_append(e, mem);
		gauge_add(&m->dup_conns, 1);
	}
	e->set[e->n++] = mem;
	set_flag(&mem->dup, 1);
	e->last = mem;
	e->active = mem;
	__atomic_add_fetch(&m->total_dup, 1, __ATOMIC_RELAXED);
	pthread_mutex_unlock(&s->mu);
}

int client_map_unregister(struct client_map *m, struct cm_member *mem)
{
	uint64_t h = key_hash(m, mem->key);
	struct shard *s = shard_of(m, h);
	int gone = 0;

	pthread_mutex_lock(&s->mu);
	struct entry **pp = slot_of(s, h, mem->key);
	struct entry *e = *pp;
	if (!e) {
		pthread_mutex_unlock(&s->mu);
		return 0;
	}
	if (e->n == 1) {
		if (e->single == mem) {
			*pp = e->next;
			s->count--;
			free(e->set);
			free(e->hist);
			free(e);
			gauge_add(&m->keys, -1);
			gone = 1;
		}
		pthread_mutex_unlock(&s->mu);
		return gone;
	}
	uint32_t i, w = 0;
	for (i = 0; i < e->n && e->set[i] != mem; i++)
		;
	if (i == e->n) {
		pthread_mutex_unlock(&s->mu);
		return 0;
	}
	memmove(&e->set[i], &e->set[i + 1], (e->n - i - 1) * sizeof *e->set);
	e->n--;
	for (uint32_t r = 0; r < e->nhist; r++)
		if (e->hist[r] != mem)
			e->hist[w++] = e->hist[r];
	e->nhist = w;
	hist_collapse(e);
	if (e->last == mem)
		e->last = e->nhist ? e->hist[e->nhist - 1] : NULL;
	gauge_add(&m->dup_conns, -1);
	if (e->n == 1) {
		struct cm_member *left = e->set[0];
		e->single = e->active = left;
		e->last = NULL;
		e->nhist = 0;
		set_flag(&left->dup, 0);
		set_flag(&left->disabled, 0);
		gauge_add(&m->dup_conns, -1);
		gauge_add(&m->dup_keys, -1);
	} else if (e->last && !e->last->disabled) {
		e->active = e->last;
	} else {
		e->active = NULL;
	}
	pthread_mutex_unlock(&s->mu);
	return 0;
}

void client_map_note_activity(struct client_map *m, struct cm_member *mem)
{
	if (!__atomic_load_n(&mem->dup, __ATOMIC_RELAXED) ||
	    __atomic_load_n(&mem->disabled, __ATOMIC_RELAXED))
		return;
	uint64_t h = key_hash(m, mem->key);
	struct shard *s = shard_of(m, h);

	pthread_mutex_lock(&s->mu);
	struct entry *e = *slot_of(s, h, mem->key);
	if (!e || e->n < 2)
		goto out; /* became single between the flag check and the lock */
	if (m->policy == CM_LAST_WRITER_ACTIVE || !e->last) {
		e->last = mem;
		e->active = mem;
	}
	if (e->nhist > 0 && e->hist[e->nhist - 1] == mem)
		goto out;
	if (m->policy == CM_DISABLE_FIGHTERS && hist_contains(e, mem)) {
		/* mem spoke before and someone else since: they are fighting; nobody wins. */
		for (uint32_t i = 0; i < e->n; i++)
			set_flag(&e->set[i]->disabled, 1);
		e->active = NULL;
	}
	hist_append(e, mem);
out:
	pthread_mutex_unlock(&s->mu);
}

enum cm_lookup client_map_with_active(struct client_map *m, const uint8_t key[32],
				      void (*fn)(void *owner, void *arg), void *arg)
{
	uint64_t h = key_hash(m, key);
	struct shard *s = shard_of(m, h);
	enum cm_lookup r;

	pthread_mutex_lock(&s->mu);
	struct entry *e = *slot_of(s, h, key);
	if (e && e->active) {
		fn(e->active->owner, arg);
		r = CM_FOUND;
	} else {
		r = e && e->n >= 2 ? CM_DUP_FIGHT : CM_UNKNOWN;
	}
	pthread_mutex_unlock(&s->mu);
	return r;
}

void *client_map_active(struct client_map *m, const uint8_t key[32])
{
	uint64_t h = key_hash(m, key);
	struct shard *s = shard_of(m, h);
	void *owner = NULL;

	pthread_mutex_lock(&s->mu);
	struct entry *e = *slot_of(s, h, key);
	if (e && e->active)
		owner = e->active->owner;
	pthread_mutex_unlock(&s->mu);
	return owner;
}

int client_map_count(struct client_map *m, const uint8_t key[32])
{
	uint64_t h = key_hash(m, key);
	struct shard *s = shard_of(m, h);

	pthread_mutex_lock(&s->mu);
	struct entry *e = *slot_of(s, h, key);
	int n = e ? (int)e->n : 0;
	pthread_mutex_unlock(&s->mu);
	return n;
}

void client_map_each_of(struct client_map *m, const uint8_t key[32],
			void (*fn)(void *owner, void *arg), void *arg)
{
	uint64_t h = key_hash(m, key);
	struct shard *s = shard_of(m, h);

	pthread_mutex_lock(&s->mu);
	struct entry *e = *slot_of(s, h, key);
	if (e && e->n == 1)
		fn(e->single->owner, arg);
	else if (e)
		for (uint32_t j = 0; j < e->n; j++)
			fn(e->set[j]->owner, arg);
	pthread_mutex_unlock(&s->mu);
}

void client_map_foreach_active(struct client_map *m,
			       void (*fn)(void *arg, struct cm_member *mem), void *arg)
{
	for (unsigned i = 0; i < m->nshards; i++) {
		struct shard *s = &m->shards[i];
		pthread_mutex_lock(&s->mu);
		for (uint32_t b = 0; b < s->nbuckets; b++)
			for (struct entry *e = s->buckets[b]; e; e = e->next)
				if (e->active)
					fn(arg, e->active);
		pthread_mutex_unlock(&s->mu);
	}
}

void client_map_foreach(struct client_map *m, void (*fn)(void *arg, struct cm_member *mem),
			void *arg)
{
	for (unsigned i = 0; i < m->nshards; i++) {
		struct shard *s = &m->shards[i];
		pthread_mutex_lock(&s->mu);
		for (uint32_t b = 0; b < s->nbuckets; b++)
			for (struct entry *e = s->buckets[b]; e; e = e->next) {
				if (e->n == 1)
					fn(arg, e->single);
				else
					for (uint32_t j = 0; j < e->n; j++)
						fn(arg, e->set[j]);
			}
		pthread_mutex_unlock(&s->mu);
	}
}

void client_map_gauges(struct client_map *m, struct cm_gauges *out)
{
	out->keys = __atomic_load_n(&m->keys, __ATOMIC_RELAXED);
	out->dup_keys = __atomic_load_n(&m->dup_keys, __ATOMIC_RELAXED);
	out->dup_conns = __atomic_load_n(&m->dup_conns, __ATOMIC_RELAXED);
	out->total_dup = __atomic_load_n(&m->total_dup, __ATOMIC_RELAXED);
}
