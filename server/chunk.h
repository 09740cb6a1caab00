/* Read buffers. A connection reads into a chunk; every packet parsed out of it is queued
 * to its receiver as a reference into the same chunk (no copy), so a chunk is refcounted
 * and freed by whichever thread drops the last reference. Two pooled sizes: a small one
 * for trickling connections, so a queued packet never pins much more memory than its own
 * bytes, and a large one (a whole maximum frame) for bulk senders. Each thread keeps a
 * small cache of each size so steady traffic does not call malloc. */
#ifndef DERPD_CHUNK_H
#define DERPD_CHUNK_H
#include <stdint.h>

#define CHUNK_SMALL 4096
#define CHUNK_LARGE (72 * 1024) /* > 5 + 32 + 65536, the largest SendPacket frame */

struct chunk {
	uint32_t refs;      /* atomic */
	uint32_t cap;
	struct chunk *next; /* cache free list */
	uint8_t data[];
};

/* A chunk with at least min_cap bytes (rounded up to a pooled size when it fits one) and
 * one reference. NULL on out of memory. */
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
/* Free this thread's caches (on worker exit). */
void chunk_cache_drain(void);

#endif
