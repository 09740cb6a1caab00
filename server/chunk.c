#include "server/chunk.h"

#include <stdlib.h>

#define CACHE_MAX 32 /* per size, per thread */

struct cache {
	struct chunk *head;
	int n;
};

static __thread struct cache caches[2]; /* [0] small, [1] large */

static int size_class(uint32_t cap)
{
	return cap == CHUNK_SMALL ? 0 : cap == CHUNK_LARGE ? 1 : -1;
}

struct chunk *chunk_get(uint32_t min_cap)
{
	uint32_t cap = min_cap <= CHUNK_SMALL ? CHUNK_SMALL
		     : min_cap <= CHUNK_LARGE ? CHUNK_LARGE : min_cap;
	int cls = size_class(cap);
	struct chunk *c;

	if (cls >= 0 && caches[cls].head) {
		c = caches[cls].head;
		caches[cls].head = c->next;
		caches[cls].n--;
	} else {
		c = malloc(sizeof *c + cap);
		if (!c)
			return NULL;
		c->cap = cap;
	}
	c->refs = 1;
	c->next = NULL;
	return c;
}

void chunk_put(struct chunk *c)
{
	/* acq_rel: the freeing thread must see every write made through other references. */
	if (__atomic_sub_fetch(&c->refs, 1, __ATOMIC_ACQ_REL) != 0)
		return;
	int cls = size_class(c->cap);
	if (cls >= 0 && caches[cls].n < CACHE_MAX) {
		c->next = caches[cls].head;
		caches[cls].head = c;
		caches[cls].n++;
		return;
	}
	free(c);
}

void chunk_cache_drain(void)
{
	for (int i = 0; i < 2; i++) {
		while (caches[i].head) {
			struct chunk *c = caches[i].head;
			caches[i].head = c->next;
			free(c);
		}
		caches[i].n = 0;
	}
}
