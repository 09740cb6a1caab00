/* Read buffers. A connection reads into a chunk; every packet parsed out of it is queued
 * to its receiver as a reference into the same chunk (no copy), so a chunk is refcounted
 * and freed by whichever thread drops the last reference. Standard-size chunks are
 * recycled through a small per-thread cache so steady traffic does not call malloc. */
#ifndef DERPD_CHUNK_H
#define DERPD_CHUNK_H
#include <stdint.h>

#define CHUNK_SIZE (64 * 1024)

struct chunk {
	uint32_t refs;      /* atomic */
	uint32_t cap;
	struct chunk *next; /* cache free list */
	uint8_t data[];
};

/* A chunk with at least min_cap bytes and one reference. NULL on out of memory. */
struct chunk *chunk_get(uint32_t min_cap);
static inline void chunk_ref(struct chunk *c)
{
	__atomic_add_fetch(&c->refs, 1, __ATOMIC_RELAXED);
}
static inline int chunk_shared(const struct chunk *c)
{
	return __atomic_load_n(&c->refs, __ATOMIC_ACQUIRE) > 1;
}
/* Drop one reference; the last one recycles or frees the chunk. */
void chunk_put(struct chunk *c);
/* Free this thread's cache (on worker exit). */
void chunk_cache_drain(void);

#endif
