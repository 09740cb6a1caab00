/* Which keys the region knows, and through which mesh peer (SERVER.md §11): every key is
 * either connected here only (the "local-only" marker), reachable through one forwarder,
 * or claimed by several forwarders (the earliest added preferred). Sharded like the
 * client map; forwarders are opaque pointers (the outbound mesh connections). */
#ifndef DERPD_FORWARDERS_H
#define DERPD_FORWARDERS_H
#include <stdint.h>

struct fwd_table;

struct fwd_counters {
	int64_t keys;                 /* entries: local ∪ remote (derp_clients_total) */
	uint64_t multi_created;       /* derp_multiforwarder_created */
	uint64_t multi_deleted;       /* derp_multiforwarder_deleted */
	uint64_t delete_other_value;  /* derp_packet_forwarder_delete_other_value */
};

struct fwd_table *fwd_new(unsigned nshards);
void fwd_free(struct fwd_table *t);

/* A key got its first local connection: mark it local-only unless a forwarder has it. */
void fwd_local_add(struct fwd_table *t, const uint8_t key[32]);
/* A key's last local connection left. Returns 1 if the key has left the region (it was
 * local-only and is now forgotten), 0 if a forwarder still reaches it. */
int fwd_local_gone(struct fwd_table *t, const uint8_t key[32]);

/* Register / unregister forwarder f for key. is_local: the key has a local connection
 * right now. fwd_unregister returns 1 if the key has left the region. */
void fwd_register(struct fwd_table *t, const uint8_t key[32], void *f);
int fwd_unregister(struct fwd_table *t, const uint8_t key[32], void *f, int is_local);

/* If key is reachable through a forwarder, run fn(forwarder, arg) under the shard lock
 * (so the forwarder cannot go away meanwhile) and return 1; else 0. */
int fwd_with(struct fwd_table *t, const uint8_t key[32], void (*fn)(void *f, void *arg),
	     void *arg);
/* The preferred forwarder for key; NULL if none or local-only (tests, debug). */
void *fwd_get(struct fwd_table *t, const uint8_t key[32]);
/* 1 if key is in the table at all (as local-only or forwarded). */
int fwd_known(struct fwd_table *t, const uint8_t key[32]);
/* Number of forwarders claiming key (0 = absent or local-only). */
int fwd_count(struct fwd_table *t, const uint8_t key[32]);

void fwd_counters(struct fwd_table *t, struct fwd_counters *out);

#endif
