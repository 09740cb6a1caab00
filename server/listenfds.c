/* Inherited listening sockets (sd_listen_fds(3)), matched to listeners by type and port. */
#include "server/listenfds.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "server/log.h"

#define FIRST_FD 3 /* SD_LISTEN_FDS_START */
#define MAX_FDS 16

static struct inherited {
	int fd, type, port, taken;
	char name[64]; /* LISTEN_FDNAMES entry, or "" */
	char addr[80]; /* "tcp [::]:443", for messages */
} fds[MAX_FDS];
static int nfds;

/* Strict decimal (no sign, no junk), as sd_listen_fds parses; -1 if not one. */
static long parse_num(const char *s)
{
	char *end;

	if (!s || *s < '0' || *s > '9')
		return -1;
	errno = 0;
	long v = strtol(s, &end, 10);
	return *end || errno ? -1 : v;
}

static void describe(struct inherited *in, const struct sockaddr_storage *ss)
{
	char ip[INET6_ADDRSTRLEN] = "?";
	const char *proto = in->type == SOCK_STREAM ? "tcp" : "udp";

	if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *s4 = (const struct sockaddr_in *)ss;
		inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof ip);
		in->port = ntohs(s4->sin_port);
		snprintf(in->addr, sizeof in->addr, "%s %s:%d", proto, ip, in->port);
	} else {
		const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)ss;
		inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof ip);
		in->port = ntohs(s6->sin6_port);
		snprintf(in->addr, sizeof in->addr, "%s [%s]:%d", proto, ip, in->port);
	}
}

/* One inherited descriptor: an IP socket, stream ones listening. */
static int inspect(struct inherited *in, int fd, char *err, size_t errlen)
{
	struct stat st;
	struct sockaddr_storage ss;
	socklen_t sl = sizeof ss, il = sizeof(int);
	int accepting = 0;

	in->fd = fd;
	if (fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode)) {
		snprintf(err, errlen, "inherited descriptor %d is not a socket", fd);
		return -1;
	}
	if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &in->type, &il) != 0 ||
	    getsockname(fd, (struct sockaddr *)&ss, &sl) != 0 ||
	    (ss.ss_family != AF_INET && ss.ss_family != AF_INET6) ||
	    (in->type != SOCK_STREAM && in->type != SOCK_DGRAM)) {
		snprintf(err, errlen, "inherited socket %d is not a TCP or UDP socket", fd);
		return -1;
	}
	describe(in, &ss);
	il = sizeof accepting;
	if (in->type == SOCK_STREAM &&
	    (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &accepting, &il) != 0 || !accepting)) {
		snprintf(err, errlen, "inherited socket %d (%s) is not listening", fd, in->addr);
		return -1;
	}
	/* Ours now: nothing we exec should get it, and the workers never block on it. */
	int fl = fcntl(fd, F_GETFL);
	if (fcntl(fd, F_SETFD, FD_CLOEXEC) != 0 || fl < 0 ||
	    fcntl(fd, F_SETFL, fl | O_NONBLOCK) != 0) {
		snprintf(err, errlen, "inherited socket %d: %s", fd, strerror(errno));
		return -1;
	}
	return 0;
}

int listenfds_init(char *err, size_t errlen)
{
	const char *pid = getenv("LISTEN_PID"), *n = getenv("LISTEN_FDS");
	const char *names = getenv("LISTEN_FDNAMES");
	long want_pid = parse_num(pid), count = parse_num(n);
	int rc = 0;

	nfds = 0;
	memset(fds, 0, sizeof fds);
	/* The variables may have been meant for a parent that exec'd us: only our pid
	 * counts, and they are gone either way so nothing we start misreads them. */
	if (!n || want_pid != (long)getpid()) {
		unsetenv("LISTEN_PID");
		unsetenv("LISTEN_FDS");
		unsetenv("LISTEN_FDNAMES");
		return 0;
	}
	if (count < 0 || count > MAX_FDS) {
		snprintf(err, errlen, "LISTEN_FDS=%s: want 0..%d", n, MAX_FDS);
		rc = -1;
	}
	for (long i = 0; rc == 0 && i < count; i++) {
		struct inherited *in = &fds[nfds];
		if (inspect(in, FIRST_FD + (int)i, err, errlen) != 0) {
			rc = -1;
			break;
		}
		/* LISTEN_FDNAMES: colon-separated, one per descriptor (FileDescriptorName=). */
		const char *p = names;
		for (long k = 0; p && k < i; k++)
			p = strchr(p, ':') ? strchr(p, ':') + 1 : NULL;
		if (p) {
			size_t l = strcspn(p, ":");
			snprintf(in->name, sizeof in->name, "%.*s", (int)l, p);
		}
		nfds++;
	}
	unsetenv("LISTEN_PID");
	unsetenv("LISTEN_FDS");
	unsetenv("LISTEN_FDNAMES");
	return rc;
}

int listenfds_take(int type, int port, const char *what)
{
	for (int i = 0; i < nfds; i++) {
		struct inherited *in = &fds[i];
		if (in->taken || in->type != type || in->port != port)
			continue;
		in->taken = 1;
		log_info(LS_SYSTEMD, "%s: using the socket from the service manager (%s%s%s)",
			 what, in->addr, in->name[0] ? ", " : "", in->name);
		return in->fd;
	}
	return -1;
}

int listenfds_check_unused(char *err, size_t errlen)
{
	size_t off = 0;

	err[0] = '\0';
	for (int i = 0; i < nfds; i++)
		if (!fds[i].taken && off < errlen)
			off += (size_t)snprintf(err + off, errlen - off, "%s%s", off ? ", " : "",
						fds[i].addr);
	if (off == 0)
		return 0;
	if (off < errlen)
		snprintf(err + off, errlen - off, ": inherited from the service manager but no "
			 "listener has that port (-a, -http-port, --metrics-addr, -stun-port)");
	return -1;
}
