/* Client admission (spec PROTOCOL.md §6.4, SERVER.md §12): after ClientInfo and before
 * registration, a non-mesh client may be checked against the local tailscaled
 * (-verify-clients: LocalAPI whois over its unix socket) and then an admission webhook
 * (-verify-client-url). The checks run on a small pool of admission threads with a bounded
 * queue, so a slow tailscaled or webhook never blocks a worker and a stalled webhook does
 * not serialise everyone. Mesh peers skip admission: do not ask for them. */
#ifndef DERPD_ADMISSION_H
#define DERPD_ADMISSION_H
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct config;

/* Start the admission checker if -verify-clients or -verify-client-url is set (its own
 * thread(s); never blocks a worker). 0, or -1 with err. */
int admission_start(const struct config *cfg, char *err, size_t errlen);
int admission_enabled(void);
/* Ask whether a client may log in. done(arg, allow) is called exactly once, from an
 * admission thread (never from inside admission_check). peer = the client's TCP address.
 * A decision can take up to ~10 s (tailscaled) + 5 s (webhook): the connection may be gone
 * by then, so arg should let the caller find out (an id, not a bare pointer). With the
 * queue full the client is decided as if the checks could not be reached: refused if
 * -verify-clients, else admitted iff -verify-client-url-fail-open. Each refusal is logged
 * on one line with its reason. Without admission_start, done(arg, 1). */
void admission_check(const uint8_t key[32], const struct sockaddr *peer, socklen_t peerlen,
		     void (*done)(void *arg, int allow), void *arg);
void admission_stop(void); /* pending checks complete with allow=0 */

#endif
