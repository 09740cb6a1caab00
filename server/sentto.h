/* The set of destinations a connection has delivered packets to: key -> that
 * destination connection's id. When the sender's key leaves, each destination still on
 * the same connection is told PeerGone (upstream's sentTo map). Owner-thread only. */
#ifndef DERPD_SENTTO_H
#define DERPD_SENTTO_H
#include <stdint.h>

struct sentto;

/* Record dst (connection id conn_id); *set is created on first use. -1 on OOM. */
int sentto_note(struct sentto **set, const uint8_t dst[32], uint64_t conn_id);
/* Forget dst (no-op if absent). */
void sentto_remove(struct sentto *set, const uint8_t dst[32]);
/* Visit every entry. */
void sentto_foreach(const struct sentto *set,
		    void (*fn)(void *arg, const uint8_t dst[32], uint64_t conn_id), void *arg);
void sentto_free(struct sentto *set);

#endif
