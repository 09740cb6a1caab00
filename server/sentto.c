#include "server/sentto.h"

#include <stdlib.h>
#include <string.h>

struct slot {
	uint8_t key[32];
	uint64_t id; /* 0 = empty (connection ids start at 1) */
};

struct sentto {
	uint32_t cap, n; /* cap is a power of two */
	struct slot slots[];
};

static uint32_t slot_hash(const uint8_t key[32])
{
	uint32_t h;

	/* Keys are public keys: their bytes are already uniform. A client choosing
	 * colliding keys only slows its own set. */
	memcpy(&h, key, sizeof h);
	return h;
}

static struct sentto *set_new(uint32_t cap)
{
	struct sentto *s = calloc(1, sizeof *s + cap * sizeof(struct slot));

	if (s)
		s->cap = cap;
	return s;
}

static struct slot *find(struct sentto *s, const uint8_t key[32])
{
	uint32_t i = slot_hash(key) & (s->cap - 1);

	while (s->slots[i].id && memcmp(s->slots[i].key, key, 32) != 0)
		i = (i + 1) & (s->cap - 1);
	return &s->slots[i];
}

int sentto_note(struct sentto **set, const uint8_t dst[32], uint64_t conn_id)
{
	struct sentto *s = *set;

	if (!s && !(s = *set = set_new(4)))
		return -1;
	struct slot *sl = find(s, dst);
	if (sl->id) {
		sl->id = conn_id; /* the destination may have reconnected: remember the latest */
		return 0;
	}
	if ((s->n + 1) * 4 > s->cap * 3) {
		struct sentto *g = set_new(s->cap * 2);
		if (!g)
			return -1;
		for (uint32_t i = 0; i < s->cap; i++)
			if (s->slots[i].id)
				*find(g, s->slots[i].key) = s->slots[i];
		g->n = s->n;
		free(s);
		*set = s = g;
		sl = find(s, dst);
	}
	memcpy(sl->key, dst, 32);
	sl->id = conn_id;
	s->n++;
	return 0;
}

void sentto_remove(struct sentto *s, const uint8_t dst[32])
{
	if (!s)
		return;
	struct slot *sl = find(s, dst);
	if (!sl->id)
		return;
	/* Linear probing: shift later members of the run back so lookups still find them. */
	uint32_t i = (uint32_t)(sl - s->slots), j = i;
	s->slots[i].id = 0;
	for (;;) {
		j = (j + 1) & (s->cap - 1);
		if (!s->slots[j].id)
			break;
		uint32_t home = slot_hash(s->slots[j].key) & (s->cap - 1);
		/* Move j back to the hole i unless its home lies cyclically in (i, j]. */
		if ((i <= j) ? (home <= i || home > j) : (home <= i && home > j)) {
			s->slots[i] = s->slots[j];
			s->slots[j].id = 0;
			i = j;
		}
	}
	s->n--;
}

void sentto_foreach(const struct sentto *s,
		    void (*fn)(void *arg, const uint8_t dst[32], uint64_t conn_id), void *arg)
{
	if (!s)
		return;
	for (uint32_t i = 0; i < s->cap; i++)
		if (s->slots[i].id)
			fn(arg, s->slots[i].key, s->slots[i].id);
}

void sentto_free(struct sentto *s)
{
	free(s);
}
