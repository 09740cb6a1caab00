#include "server/chunk.h"

#include <stdlib.h>

#define CACHE_MAX 32

static __thread struct chunk *cache;
static __thread int cache_n;

struct chunk *chunk_get(uint32_t min_cap)
{
	struct chunk *c;

	if (min_cap <= CHUNK_SIZE && cache) {
		c = cache;
		cache = c->next;
		cache_n--;
	} else {
		uint32_t cap = min_cap > CHUNK_SIZE ? min_cap : CHUNK_SIZE;
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
	if (c->cap == CHUNK_SIZE && cache_n < CACHE_MAX) {
		c->next = cache;
		cache = c;
		cache_n++;
		return;
	}
	free(c);
}

void chunk_cache_drain(void)
{
	while (cache) {
		struct chunk *c = cache;
		cache = c->next;
		free(c);
	}
	cache_n = 0;
}
