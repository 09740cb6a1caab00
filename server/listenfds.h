/* Sockets handed over by a service manager (sd_listen_fds(3) protocol: LISTEN_PID,
 * LISTEN_FDS, LISTEN_FDNAMES; descriptors from 3 on). With derpd.socket, systemd holds
 * the listening sockets across restarts, so connections arriving while derpd restarts
 * wait in the backlog instead of being refused. Each listener (-a, -http-port,
 * --metrics-addr, -stun-port) takes the inherited socket of its type bound to its port,
 * or opens its own as usual when there is none. Main thread, start-up only. */
#ifndef DERPD_LISTENFDS_H
#define DERPD_LISTENFDS_H
#include <stddef.h>

/* Read and unset the environment; check each descriptor is a socket (a stream one
 * listening). 0: none or all good; -1 with err. Calling again starts over (tests). */
int listenfds_init(char *err, size_t errlen);
/* An inherited socket of type (SOCK_STREAM, SOCK_DGRAM) bound to port, now the caller's
 * (non-blocking, close-on-exec), or -1. Repeat to take several (IPv4 and IPv6 ones). */
int listenfds_take(int type, int port, const char *what);
/* Inherited sockets nobody took: an error naming them, as the socket unit and the flags
 * disagree. 0 when every one found its listener. */
int listenfds_check_unused(char *err, size_t errlen);

#endif
