/* systemd's service notification protocol (sd_notify(3)), spoken directly: one datagram
 * per message to $NOTIFY_SOCKET, so derpd needs no libsystemd. Every function is a no-op
 * when derpd was not started by a service manager. Main thread only. */
#ifndef DERPD_NOTIFY_H
#define DERPD_NOTIFY_H
#include <stdint.h>

/* Read NOTIFY_SOCKET (a path, or "@name" for an abstract socket), WATCHDOG_USEC and
 * WATCHDOG_PID. Returns 0; a bad value is logged and that part stays off. May be called
 * again (tests): it starts over. */
int notify_init(void);
/* Send one message ("READY=1\nSTATUS=..."); 0 on success or when there is no socket. */
int notify_send(const char *msg);
/* READY=1 with a STATUS= line (status may be NULL). */
void notify_ready(const char *status);
/* RELOADING=1 with MONOTONIC_USEC= (systemd matches the READY=1 that follows to it). */
void notify_reloading(void);
/* STOPPING=1: the graceful stop has begun. */
void notify_stopping(void);

/* Watchdog interval in microseconds (0 = none, or WATCHDOG_PID names another process). */
uint64_t notify_watchdog_usec(void);
/* Milliseconds until the next watchdog ping is due (0 = now), or -1 without a watchdog. */
int notify_watchdog_wait_ms(void);
/* The ping is due: send WATCHDOG=1 if healthy, and schedule the next one at half the
 * interval either way (an unhealthy process simply falls silent). */
void notify_watchdog_ping(int healthy);
/* The watchdog decision: every one of the n workers' last loop turns (turn_ms[i],
 * CLOCK_MONOTONIC milliseconds) lies within max_age_ms of now_ms. n == 0 is healthy. */
int notify_workers_fresh(const int64_t *turn_ms, int n, int64_t now_ms, int64_t max_age_ms);
/* CLOCK_MONOTONIC in milliseconds (the clock turn_ms uses). */
int64_t notify_now_ms(void);

#endif
