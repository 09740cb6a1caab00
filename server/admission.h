/* Client admission (spec PROTOCOL.md §6.4, SERVER.md §12): after ClientInfo and before
 * registration, a non-mesh client may be checked against the local tailscaled
 * (-verify-clients: LocalAPI whois over its unix socket) and then an admission webhook
 * (-verify-client-url). One admission thread runs every check at once through libcurl's
 * multi interface (up to a cap of transfers in flight, then a bounded queue), so a slow
 * tailscaled or webhook never blocks a worker and one slow answer delays nobody else.
 * A client is admitted only by the checks' answer, or by fail-open when the webhook cannot
 * be reached; never because derpd is busy. Mesh peers skip admission: do not ask. */
#ifndef DERPD_ADMISSION_H
#define DERPD_ADMISSION_H
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct config;

/* How checks ended (derpd_admission_checks_total{result}). */
enum admission_result {
	ADMISSION_ADMITTED,    /* the checks said yes */
	ADMISSION_REFUSED,     /* they said no, or failed where failing refuses */
	ADMISSION_FAILED_OPEN, /* webhook unreachable or no answer, -verify-client-url-fail-open */
	ADMISSION_ABANDONED,   /* the client left first (or derpd stopped): dropped or cut off */
	ADMISSION_BUSY,        /* refused unasked: the queue was full */
	ADMISSION_NRESULTS
};
extern const char *const admission_result_name[ADMISSION_NRESULTS]; /* "admitted", ... */

/* Start the admission checker if -verify-clients or -verify-client-url is set (its own
 * thread; never blocks a worker). 0, or -1 with err. */
int admission_start(const struct config *cfg, char *err, size_t errlen);
int admission_enabled(void);
/* Ask whether a client may log in. done(arg, allow) is called exactly once, from the
 * admission thread (never from inside admission_check). peer = the client's TCP address.
 * gone: the caller's flag, read until done() is called; the caller sets it through
 * admission_gone() when the client leaves. A decision can take up to ~10 s (tailscaled)
 * + 5 s (webhook) after its turn comes. With the queue full the client is refused at once.
 * Each refusal is logged on one line with its reason. Without admission_start,
 * done(arg, 1). */
void admission_check(const uint8_t key[32], const struct sockaddr *peer, socklen_t peerlen,
		     const uint8_t *gone, void (*done)(void *arg, int allow), void *arg);
/* The client behind a pending check has left: set *gone and wake the checker, which drops
 * the check if it was not sent yet or cuts it off; done(arg, 0) still follows. */
void admission_gone(uint8_t *gone);
/* Checks ended so far, by result (relaxed reads; never blocks). */
void admission_counters_get(uint64_t out[ADMISSION_NRESULTS]);
void admission_stop(void); /* pending checks complete with allow=0 */
/* Tests only, before admission_start: transfers in flight and queue length (0 = default). */
void admission_limits_for_tests(int inflight_max, int pending_max);
/* Fuzz target: a 200 response body (len bytes, arriving step at a time; 0 = at once) as
 * judged by the whois stage (hook 0: any JSON object or null) or by the webhook (hook 1:
 * its first JSON value, within 4 KiB, has "Allow": true). 1 admitted, 0 refused. */
int admission_parse_reply(int hook, const char *body, size_t len, size_t step);

#endif
