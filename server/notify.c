/* sd_notify(3) without libsystemd: the protocol is a documented one-datagram-per-message
 * AF_UNIX exchange (systemd's "notify" socket), so a few lines here beat a dependency. */
#include <errno.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "server/log.h"
#include "server/notify.h"

static int notify_fd = -1;
static struct sockaddr_un notify_addr;
static socklen_t notify_addrlen;
static uint64_t watchdog_usec;
static int64_t watchdog_next_ms;

int64_t notify_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A decimal with nothing else around it, or -1. */
static int64_t parse_u63(const char *s)
{
	char *end;

	if (!s || *s < '0' || *s > '9')
		return -1;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || *end || v > INT64_MAX)
		return -1;
	return (int64_t)v;
}

static int open_socket(const char *path)
{
	size_t len = strlen(path);

	if ((path[0] != '/' && path[0] != '@') || len < 2 || len >= sizeof notify_addr.sun_path) {
		/* vsock: addresses (VMs) and relative paths are not for a relay's host */
		log_warn(LS_SYSTEMD, "NOTIFY_SOCKET=%s: not a socket path; not notifying systemd", path);
		return -1;
	}
	memset(&notify_addr, 0, sizeof notify_addr);
	notify_addr.sun_family = AF_UNIX;
	memcpy(notify_addr.sun_path, path, len);
	if (path[0] == '@') /* abstract namespace: leading NUL, no terminator counted */
		notify_addr.sun_path[0] = '\0';
	notify_addrlen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len +
				     (path[0] == '/'));
	notify_fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (notify_fd < 0) {
		log_warn(LS_SYSTEMD, "NOTIFY_SOCKET: socket: %s", strerror(errno));
		return -1;
	}
	return 0;
}

int notify_init(void)
{
	const char *path = getenv("NOTIFY_SOCKET");

	if (notify_fd >= 0)
		close(notify_fd);
	notify_fd = -1;
	watchdog_usec = 0;
	if (!path || !*path || open_socket(path) != 0)
		return 0;

	const char *us = getenv("WATCHDOG_USEC"), *pid = getenv("WATCHDOG_PID");
	if (!us || !*us)
		return 0;
	int64_t v = parse_u63(us), p = pid && *pid ? parse_u63(pid) : (int64_t)getpid();
	if (v <= 0) {
		log_warn(LS_SYSTEMD, "WATCHDOG_USEC=%s: not a positive number; no watchdog", us);
		return 0;
	}
	if (p != (int64_t)getpid()) /* meant for another process (we were exec'd by a wrapper) */
		return 0;
	watchdog_usec = (uint64_t)v;
	watchdog_next_ms = notify_now_ms();
	log_info(LS_SYSTEMD, "watchdog every %" PRIu64 " ms; pinging at half that",
		 watchdog_usec / 1000);
	return 0;
}

int notify_send(const char *msg)
{
	if (notify_fd < 0)
		return 0;
	if (sendto(notify_fd, msg, strlen(msg), MSG_NOSIGNAL, (struct sockaddr *)&notify_addr,
		   notify_addrlen) < 0) {
		log_debug(LS_SYSTEMD, "NOTIFY_SOCKET: send: %s", strerror(errno));
		return -1;
	}
	return 0;
}

void notify_ready(const char *status)
{
	char msg[512];

	snprintf(msg, sizeof msg, "READY=1%s%s", status ? "\nSTATUS=" : "", status ? status : "");
	notify_send(msg);
}

void notify_reloading(void)
{
	char msg[96];
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	snprintf(msg, sizeof msg, "RELOADING=1\nMONOTONIC_USEC=%" PRIu64,
		 (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u);
	notify_send(msg);
}

void notify_stopping(void)
{
	notify_send("STOPPING=1\nSTATUS=shutting down");
}

uint64_t notify_watchdog_usec(void)
{
	return watchdog_usec;
}

int notify_watchdog_wait_ms(void)
{
	if (!watchdog_usec)
		return -1;
	int64_t left = watchdog_next_ms - notify_now_ms();
	return left <= 0 ? 0 : left > 60000 ? 60000 : (int)left;
}

void notify_watchdog_ping(int healthy)
{
	if (!watchdog_usec)
		return;
	if (healthy)
		notify_send("WATCHDOG=1");
	/* Half the interval, as sd_watchdog_enabled(3) advises: one late ping is not fatal. */
	int64_t half = (int64_t)(watchdog_usec / 2000);
	watchdog_next_ms = notify_now_ms() + (half > 0 ? half : 1);
}

int notify_workers_fresh(const int64_t *turn_ms, int n, int64_t now_ms, int64_t max_age_ms)
{
	for (int i = 0; i < n; i++)
		if (now_ms - turn_ms[i] > max_age_ms) /* a later turn than now (raced) is fresh */
			return 0;
	return 1;
}
