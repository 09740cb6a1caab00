/* End-to-end harness: start the real derpd (DERPD_BIN) on 127.0.0.1:0, talk to it with
 * the DERP client library, read its metrics. Functions that take no error return fail the
 * running cmocka test themselves. Include after <cmocka.h>. */
#ifndef DERPD_TEST_HARNESS_H
#define DERPD_TEST_HARNESS_H
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "mesh/derp_client.h"

struct harness_server {
	pid_t pid;
	uint16_t port;
	char dir[128];       /* fresh temporary directory */
	char key_path[192];  /* -c file (derpd creates it) */
	char log_path[192];  /* derpd's stderr and stdout */
	uint8_t pub[32];     /* server public key, from the first client's ServerKey frame */
};

/* Start derpd with "-a 127.0.0.1:0 -c <dir>/derper.key -stun=false" + extra (NULL-ended,
 * may be NULL); waits up to 10 s for "serving on 127.0.0.1:<port>" on its stderr. */
struct harness_server *harness_start(const char *const *extra);
/* harness_start with flags. HARNESS_TLS: extra makes derpd serve TLS, so the start-up
 * probe that learns the server key speaks DERP over TLS (certificate not verified). */
#define HARNESS_TLS 1u
/* HARNESS_NO_PROBE: no start-up probe (pub stays zero), for servers a default client
 * cannot reach (a TLS certificate for a DNS name only); the caller learns the key. */
#define HARNESS_NO_PROBE 2u
struct harness_server *harness_start_opts(const char *const *extra, unsigned flags);
/* Sockets the next harness_start* hands derpd as a service manager does (from descriptor
 * 3 on, LISTEN_FDS, LISTEN_PID = derpd's pid); used once, then forgotten. */
void harness_inherit(const int *fds, int n);
/* Run derpd with harness_start's arguments + extra, expecting it to exit by itself
 * within 10 s (fails the test otherwise): its wait status, its output in log. */
int harness_run_to_exit(const char *const *extra, char *log, size_t cap);
/* SIGTERM, wait up to 10 s (then SIGKILL and fail); with pid set to 0 (the test reaped
 * derpd itself) only the log checks run. Fails if the log shows a sanitizer
 * report. Removes the directory unless DERPD_KEEP_TMP is set. NULL is ignored. */
void harness_stop(struct harness_server *s);

/* cmocka setup/teardown: *state = a server started with no extra arguments. */
int harness_setup(void **state);
int harness_teardown(void **state);

/* Print the tail of the server log to stderr (for failure diagnosis). */
void harness_dump_log(const struct harness_server *s);
/* The server log contains needle. */
int harness_log_contains(const struct harness_server *s, const char *needle);

int64_t harness_now_ms(void);
/* Poll cond(arg) every 10 ms until true (1) or timeout_ms passes (0). */
int harness_wait(int (*cond)(void *arg), void *arg, int timeout_ms);

/* One raw HTTP exchange on a fresh connection: write request, read one response (by
 * Content-Length, chunked, or to EOF). Returns the status (resp holds head + decoded body,
 * NUL-terminated) or -1. */
int harness_http(const struct harness_server *s, const char *request, char *resp, size_t cap);
/* Body of a response from harness_http ("" if none). */
const char *harness_http_body(const char *resp);

/* A blocking TCP connection to the server (fails the test if it cannot connect). */
int harness_tcp(const struct harness_server *s);
/* Read an HTTP response head byte by byte (nothing past the blank line is consumed) into
 * buf, NUL-terminated. Returns its length, or -1 on EOF/timeout. */
int harness_read_head(int fd, char *buf, size_t cap, int timeout_ms);
/* Read exactly n bytes; returns n, or how many arrived before EOF/timeout. */
size_t harness_read_exact(int fd, void *buf, size_t n, int timeout_ms);

/* GET /debug/varz and return the value of the exact series `name` or `name{labels}`
 * (label order does not matter). NAN if absent or the page cannot be fetched. */
double harness_metric(const struct harness_server *s, const char *series);
/* Wait until the series equals want; returns the last value seen. */
double harness_wait_metric(const struct harness_server *s, const char *series, double want,
			   int timeout_ms);

/* `promtool check metrics` on text: its exit status, its output in out. */
int harness_promtool(const char *text, char *out, size_t cap);

/* A DERP client to the server, fully connected (fails the test otherwise). */
struct derp_client *harness_client(const struct harness_server *s,
				   const struct derp_client_opts *opts);
/* Client options with a short default timeout filled in. */
struct derp_client_opts harness_opts(void);

/* Receive the next message that is not a KeepAlive; fail on timeout or close. */
void harness_recv(struct derp_client *c, struct derp_msg *m, int timeout_ms);
/* Next message must be a RecvPacket from src with exactly these bytes. */
void harness_expect_packet(struct derp_client *c, const uint8_t src[32], const void *data,
			   size_t len, int timeout_ms);
/* Nothing but KeepAlives for timeout_ms. */
void harness_expect_nothing(struct derp_client *c, int timeout_ms);
/* The server closes the connection within timeout_ms (frames before that are ignored).
 * Returns the milliseconds it took. */
int64_t harness_expect_closed(struct derp_client *c, int timeout_ms);
/* Ping with fresh data and wait for the matching Pong: everything the server read from
 * this client before has been processed. Other messages in between fail the test. */
void harness_ping(struct derp_client *c, int timeout_ms);
/* a -> b and b -> a packets arrive intact. */
void harness_relay_check(struct derp_client *a, struct derp_client *b);

#endif
