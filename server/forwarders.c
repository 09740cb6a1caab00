#include "server/forwarders.h"

#include <pthread.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

/* n == 0: local-only marker; n == 1: one forwarder; n >= 2: multi, f[0] preferred
 * (kept in the order added, so removing the preferred promotes the earliest left). */
struct fentry {
	struct fentry *next;
	uint8_t key[32];
	uint32_t n, cap;
	void **f;
};

struct fshard {
	pthread_mutex_t mu;
	struct fentry **b;
	uint32_t nb, count;
} __attribute__((aligned(64)));

struct fwd_table {
	struct fshard *s;
	unsigned ns;
	uint8_t hk[crypto_shorthash_KEYBYTES];
	int64_t keys;
	uint64_t multi_created, multi_deleted, delete_other;
};

static uint64_t fhash(const struct fwd_table *t, const uint8_t key[32])
{
	uint8_t out[crypto_shorthash_BYTES];
	uint64_t h;

	crypto_shorthash(out, key, 32, t->hk);
	memcpy(&h, out, sizeof h);
	return h;
}

static struct fshard *shard(struct fwd_table *t, uint64_t h)
{
	return &t->s[(h >> 48) & (t->ns - 1)];
}

static struct fentry **slot(struct fshard *s, uint64_t h, const uint8_t key[32])
{
	struct fentry **pp = &s->b[h & (s->nb - 1)];

	while (*pp && memcmp((*pp)->key, key, 32) != 0)
		pp = &(*pp)->next;
	return pp;
}

static void grow(struct fwd_table *t, struct fshard *s)
{
	uint32_t nb = s->nb * 2;
	struct fentry **b = calloc(nb, sizeof *b);

	if (!b)
		return;
	for (uint32_t i = 0; i < s->nb; i++)
		for (struct fentry *e = s->b[i], *next; e; e = next) {
			uint64_t h = fhash(t, e->key);
			next = e->next;
			e->next = b[h & (nb - 1)];
			b[h & (nb - 1)] = e;
		}
	free(s->b);
	s->b = b;
	s->nb = nb;
}

struct fwd_table *fwd_new(unsigned nshards)
{
	struct fwd_table *t = calloc(1, sizeof *t);
	unsigned n = 1;

	if (!t)
		return NULL;
	while (n < nshards)
		n <<= 1;
	t->ns = n;
	crypto_shorthash_keygen(t->hk);
	t->s = aligned_alloc(64, sizeof(struct fshard) * n);
	if (!t->s) {
		free(t);
		return NULL;
	}
	for (unsigned i = 0; i < n; i++) {
		memset(&t->s[i], 0, sizeof t->s[i]);
		pthread_mutex_init(&t->s[i].mu, NULL);
		t->s[i].nb = 16;
		t->s[i].b = calloc(16, sizeof *t->s[i].b);
		if (!t->s[i].b)
			abort();
	}
	return t;
}

static void entry_free(struct fentry *e)
{
	free(e->f);
	free(e);
}

void fwd_free(struct fwd_table *t)
{
	if (!t)
		return;
	for (unsigned i = 0; i < t->ns; i++) {
		for (uint32_t b = 0; b < t->s[i].nb; b++)
			for (struct fentry *e = t->s[i].b[b], *next; e; e = next) {
				next = e->next;
				entry_free(e);
			}
		free(t->s[i].b);
		pthread_mutex_destroy(&t->s[i].mu);
	}
	free(t->s);
	free(t);
}

/* Find or create (when create) the entry; returns NULL if absent and not created. */
static struct fentry *lookup(struct fwd_table *t, struct fshard *s, uint64_t h,
			     const uint8_t key[32], int create, int *created)
{
	struct fentry **pp = slot(s, h, key);

	*created = 0;
	if (*pp || !create)
		return *pp;
	struct fentry *e = calloc(1, sizeof *e);
	if (!e)
		abort();
	memcpy(e->key, key, 32);
	*pp = e;
	*created = 1;
	__atomic_add_fetch(&t->keys, 1, __ATOMIC_RELAXED);
	if (++s->count > s->nb * 2)
		grow(t, s);
	return e;
}

static void remove_entry(struct fwd_table *t, struct fshard *s, uint64_t h,
			 const uint8_t key[32])
{
	struct fentry **pp = slot(s, h, key), *e = *pp;

	if (!e)
		return;
	*pp = e->next;
	s->count--;
	entry_free(e);
	__atomic_sub_fetch(&t->keys, 1, __ATOMIC_RELAXED);
}

static void add_forwarder(struct fentry *e, void *f)
{
	if (e->n == e->cap) {
		uint32_t cap = e->cap ? e->cap * 2 : 2;
		void **nf = realloc(e->f, cap * sizeof *nf);
		if (!nf)
			abort();
		e->f = nf;
		e->cap = cap;
	}
	e->f[e->n++] = f;
}

void fwd_local_add(struct fwd_table *t, const uint8_t key[32])
{
	uint64_t h = fhash(t, key);
	struct fshard *s = shard(t, h);
	int created;

	pthread_mutex_lock(&s->mu);
	lookup(t, s, h, key, 1, &created);
	pthread_mutex_unlock(&s->mu);
}

int fwd_local_gone(struct fwd_table *t, const uint8_t key[32])
{
	uint64_t h = fhash(t, key);
	struct fshard *s = shard(t, h);
	int created, gone = 0;

	pthread_mutex_lock(&s->mu);
	struct fentry *e = lookup(t, s, h, key, 0, &created);
	if (e && e->n == 0) {
		remove_entry(t, s, h, key);
		gone = 1;
	}
	pthread_mutex_unlock(&s->mu);
	return gone;
}

void fwd_register(struct fwd_table *t, const uint8_t key[32], void *f)
{
	uint64_t h = fhash(t, key);
	struct fshard *s = shard(t, h);
	int created;

	pthread_mutex_lock(&s->mu);
	struct fentry *e = lookup(t, s, h, key, 1, &created);
	int present = 0;
	for (uint32_t i = 0; i < e->n; i++)
		present |= e->f[i] == f;
	if (!present) {
		/* A local-only key simply becomes forwarded (not multi), as upstream. */
		if (e->n == 1)
			__atomic_add_fetch(&t->multi_created, 1, __ATOMIC_RELAXED);
		add_forwarder(e, f);
	}
	pthread_mutex_unlock(&s->mu);
}

int fwd_unregister(struct fwd_table *t, const uint8_t key[32], void *f, int is_local)
{
	uint64_t h = fhash(t, key);
	struct fshard *s = shard(t, h);
	int created, gone = 0;

	pthread_mutex_lock(&s->mu);
	struct fentry *e = lookup(t, s, h, key, 0, &created);
	if (!e) {
		pthread_mutex_unlock(&s->mu);
		return 0;
	}
	if (e->n >= 2) {
		for (uint32_t i = 0; i < e->n; i++)
			if (e->f[i] == f) {
				memmove(&e->f[i], &e->f[i + 1], (e->n - i - 1) * sizeof *e->f);
				e->n--;
				break;
			}
		if (e->n == 1)
			__atomic_add_fetch(&t->multi_deleted, 1, __ATOMIC_RELAXED);
	} else if (e->n == 0 || e->f[0] != f) {
		__atomic_add_fetch(&t->delete_other, 1, __ATOMIC_RELAXED);
	} else if (is_local) {
		e->n = 0; /* back to the local-only marker */
	} else {
		remove_entry(t, s, h, key);
		gone = 1;
	}
	pthread_mutex_unlock(&s->mu);
	return gone;
}

int fwd_with(struct fwd_table *t, const uint8_t key[32], void (*fn)(void *f, void *arg),
	     void *arg)
{
	uint64_t h = fhash(t, key);
	struct fshard *s = shard(t, h);
	int created, r = 0;

	pthread_mutex_lock(&s->mu);
	struct fentry *e = lookup(t, s, h, key, 0, &created);
	if (e && e->n > 0) {
		fn(e->f[0], arg);
		r = 1;
	}
	pthread_mutex_unlock(&s->mu);
	return r;
}

static void get_first(void *f, void *arg)
{
	*(void **)arg = f;
}

void *fwd_get(struct fwd_table *t, const uint8_t key[32])
{
	void *f = NULL;

	fwd_with(t, key, get_first, &f);
	return f;
}

int fwd_known(struct fwd_table *t, const uint8_t key[32])
{
	uint64_t h = fhash(t, key);
	struct fshard *s = shard(t, h);
	int created;

	pthread_mutex_lock(&s->mu);
	int r = lookup(t, s, h, key, 0, &created) != NULL;
	pthread_mutex_unlock(&s->mu);
	return r;
}

int fwd_count(struct fwd_table *t, const uint8_t key[32])
{
	uint64_t h = fhash(t, key);
	struct fshard *s = shard(t, h);
	int created;

	pthread_mutex_lock(&s->mu);
	struct fentry *e = lookup(t, s, h, key, 0, &created);
	int n = e ? (int)e->n : 0;
	pthread_mutex_unlock(&s->mu);
	return n;
}

void fwd_counters(struct fwd_table *t, struct fwd_counters *out)
{
	out->keys = __atomic_load_n(&t->keys, __ATOMIC_RELAXED);
	out->multi_created = __atomic_load_n(&t->multi_created, __ATOMIC_RELAXED);
	out->multi_deleted = __atomic_load_n(&t->multi_deleted, __ATOMIC_RELAXED);
	out->delete_other_value = __atomic_load_n(&t->delete_other, __ATOMIC_RELAXED);
}
