/* Key -> connection map: sharded by key hash, one lock per shard, no global lock.
 * Also the duplicate-key policy of PROTOCOL.md §8. Members are opaque to the map: each
 * connection embeds a struct cm_member, which the map links and flags. */
#ifndef DERPD_CLIENT_MAP_H
#define DERPD_CLIENT_MAP_H
#include <stdint.h>

enum cm_policy {
	CM_LAST_WRITER_ACTIVE, /* production: whoever of the duplicates spoke last gets traffic */
	CM_DISABLE_FIGHTERS,   /* upstream's test-only alternative: fighting dups get nothing */
};

struct cm_member {
	const uint8_t *key;  /* 32 bytes, owned by the caller, stable while registered */
	void *owner;         /* the connection */
	/* Written by the map under the shard lock; the owner may read them without it. */
	uint8_t dup, disabled;
};

/* Result of a lookup. */
enum cm_lookup {
	CM_FOUND,      /* fn ran on the active member's owner */
	CM_UNKNOWN,    /* no connection for the key */
	CM_DUP_FIGHT,  /* 2+ connections and none active: drop as dup_client */
};

struct cm_gauges {
	int64_t keys;       /* distinct keys (derp_clients_local) */
	int64_t dup_keys;   /* derp_current_dup_client_keys */
	int64_t dup_conns;  /* derp_current_dup_client_conns */
	uint64_t total_dup; /* derp_total_dup_client_conns */
};

struct client_map;

/* nshards is rounded up to a power of two. */
struct client_map *client_map_new(unsigned nshards, enum cm_policy policy);
void client_map_free(struct client_map *m);

/* The newest connection of a key always becomes active. */
void client_map_register(struct client_map *m, struct cm_member *mem);
/* Returns 1 if mem was the key's last connection (the key has left), else 0. */
int client_map_unregister(struct client_map *m, struct cm_member *mem);
/* A frame was read from mem: apply the dup policy. Cheap no-op unless mem->dup. */
void client_map_note_activity(struct client_map *m, struct cm_member *mem);

/* Look up key; if it has an active member, run fn(owner, arg) under the shard lock
 * (fn must be short and must not call back into the map). */
enum cm_lookup client_map_with_active(struct client_map *m, const uint8_t key[32],
				      void (*fn)(void *owner, void *arg), void *arg);

/* Active owner for key or NULL (for tests and debug; the result may be stale at once). */
void *client_map_active(struct client_map *m, const uint8_t key[32]);
/* Number of connections registered for key. */
int client_map_count(struct client_map *m, const uint8_t key[32]);

/* Run fn(owner, arg) for every connection of key, under its shard lock. */
void client_map_each_of(struct client_map *m, const uint8_t key[32],
			void (*fn)(void *owner, void *arg), void *arg);

/* Visit every key's active member (keys with none are skipped), each under its shard lock. */
void client_map_foreach_active(struct client_map *m,
			       void (*fn)(void *arg, struct cm_member *mem), void *arg);

/* Visit every member, shard by shard, each under its shard lock. */
void client_map_foreach(struct client_map *m, void (*fn)(void *arg, struct cm_member *mem),
			void *arg);

void client_map_gauges(struct client_map *m, struct cm_gauges *out);

#endif
