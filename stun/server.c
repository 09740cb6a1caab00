/* The STUN responder: one thread owning one UDP socket per address family, reading and
 * answering in recvmmsg/sendmmsg batches. It shares nothing with the relay but four
 * atomic counters, so relay load can never stall it (and it never waits on a worker). */
#include "stun/stun.h"
#include "server/listenfds.h"
#include "server/log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define BATCH     64       /* datagrams per recvmmsg / sendmmsg */
#define DGRAM_MAX 65536    /* upstream reads into 64 KiB: whole datagrams, never truncated */
#define SOCK_BUF  (4 << 20) /* best effort; the kernel caps it at net.core.[rw]mem_max */
#define SEND_WAIT_MS 50    /* a full send buffer: wait this long for room, then drop */

/* Process-wide like upstream's expvars; only STUN threads add, scrapes load relaxed. */
static struct {
	uint64_t read_error, not_stun, write_error, success, ipv4, ipv6;
} counters;

#define COUNT(field, n) __atomic_fetch_add(&counters.field, (uint64_t)(n), __ATOMIC_RELAXED)

void stun_counters_get(struct stun_counters *out)
{
	out->read_error = __atomic_load_n(&counters.read_error, __ATOMIC_RELAXED);
	out->not_stun = __atomic_load_n(&counters.not_stun, __ATOMIC_RELAXED);
	out->write_error = __atomic_load_n(&counters.write_error, __ATOMIC_RELAXED);
	out->success = __atomic_load_n(&counters.success, __ATOMIC_RELAXED);
	out->ipv4 = __atomic_load_n(&counters.ipv4, __ATOMIC_RELAXED);
	out->ipv6 = __atomic_load_n(&counters.ipv6, __ATOMIC_RELAXED);
}

struct stun_server {
	int fd[2];
	int nfd;
	int port;
	int stopfd;   /* eventfd: stun_stop wakes the thread's poll */
	int stopping; /* set first, so a flood that never lets poll run still stops */
	pthread_t thread;
	uint8_t *rbuf; /* BATCH * DGRAM_MAX; only the bytes received are ever touched */
	struct mmsghdr rmsg[BATCH];
	struct iovec riov[BATCH];
	struct sockaddr_storage raddr[BATCH];
	struct mmsghdr smsg[BATCH];
	struct iovec siov[BATCH];
	uint8_t sbuf[BATCH][STUN_RESPONSE_MAX];
};

int stun_port(const struct stun_server *s) { return s->port; }

/* Go's UDPAddr text form, for the log line and errors: 1.2.3.4:5, [::1]:5. */
static void addr_format(const struct sockaddr *sa, char *buf, size_t len)
{
	char ip[INET6_ADDRSTRLEN] = "?";
	int port = 0;

	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;
		inet_ntop(AF_INET, &sin->sin_addr, ip, sizeof ip);
		port = ntohs(sin->sin_port);
		snprintf(buf, len, "%s:%d", ip, port);
	} else {
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)sa;
		inet_ntop(AF_INET6, &sin6->sin6_addr, ip, sizeof ip);
		port = ntohs(sin6->sin6_port);
		snprintf(buf, len, "[%s]:%d", ip, port);
	}
}

static void set_port(struct sockaddr_storage *ss, int port)
{
	if (ss->ss_family == AF_INET)
		((struct sockaddr_in *)ss)->sin_port = htons((uint16_t)port);
	else
		((struct sockaddr_in6 *)ss)->sin6_port = htons((uint16_t)port);
}

/* Bind one non-blocking UDP socket; returns the fd, or -1 with errno set. v6only matters
 * only for AF_INET6: "" uses separate sockets, an explicit "::" is dual-stack like Go. */
static int udp_bind(const struct sockaddr_storage *ss, socklen_t sslen, int v6only)
{
	int fd = socket(ss->ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	int buf = SOCK_BUF;

	if (fd < 0)
		return -1;
	if (ss->ss_family == AF_INET6 &&
	    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof v6only) < 0)
		goto fail;
	/* Larger buffers only absorb bursts; failing to get them is not an error. */
	(void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof buf);
	(void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buf, sizeof buf);
	if (bind(fd, (const struct sockaddr *)ss, sslen) < 0)
		goto fail;
	return fd;
fail:;
	int e = errno;
	close(fd);
	errno = e;
	return -1;
}

static int bound_port(int fd)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof ss;

	if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
		return -1;
	return ss.ss_family == AF_INET ? ntohs(((struct sockaddr_in *)&ss)->sin_port)
				       : ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
}

/* Resolve -a's host like Go's ResolveUDPAddr: a literal (brackets allowed, with a zone),
 * or a name whose first IPv4 address wins, else its first address. */
static int host_resolve(const char *host, struct sockaddr_storage *ss, socklen_t *sslen,
			char *err, size_t errlen)
{
	char h[256];
	size_t n = strlen(host);
	struct addrinfo hints = { .ai_socktype = SOCK_DGRAM, .ai_flags = AI_PASSIVE };
	struct addrinfo *res, *ai, *pick = NULL;

	if (n >= 2 && host[0] == '[' && host[n - 1] == ']') {
		host++;
		n -= 2;
	}
	if (n >= sizeof h) {
		snprintf(err, errlen, "listen host too long");
		return -1;
	}
	memcpy(h, host, n);
	h[n] = 0;
	int r = getaddrinfo(h, NULL, &hints, &res);
	if (r != 0) {
		snprintf(err, errlen, "resolve %s: %s", h, gai_strerror(r));
		return -1;
	}
	for (ai = res; ai && !pick; ai = ai->ai_next)
		if (ai->ai_family == AF_INET)
			pick = ai;
	for (ai = res; ai && !pick; ai = ai->ai_next)
		if (ai->ai_family == AF_INET6)
			pick = ai;
	if (!pick) {
		freeaddrinfo(res);
		snprintf(err, errlen, "resolve %s: no IPv4 or IPv6 address", h);
		return -1;
	}
	memcpy(ss, pick->ai_addr, pick->ai_addrlen);
	*sslen = pick->ai_addrlen;
	freeaddrinfo(res);
	return 0;
}

/* Bind for host "": IPv4 first (port 0 picks it), then IPv6-only on the same port. If
 * that port is taken for IPv6 and the caller asked for an ephemeral one, pick again. */
static int bind_all(struct stun_server *s, int port, char *err, size_t errlen)
{
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_ANY) };
	struct sockaddr_in6 sin6 = { .sin6_family = AF_INET6, .sin6_addr = IN6ADDR_ANY_INIT };
	struct sockaddr_storage ss4, ss6;
	char a[80];

	memset(&ss4, 0, sizeof ss4);
	memset(&ss6, 0, sizeof ss6);
	memcpy(&ss4, &sin, sizeof sin);
	memcpy(&ss6, &sin6, sizeof sin6);
	for (int attempt = 0; attempt < 16; attempt++) {
		set_port(&ss4, port);
		int fd4 = udp_bind(&ss4, sizeof sin, 0);
		if (fd4 < 0) {
			addr_format((struct sockaddr *)&ss4, a, sizeof a);
			snprintf(err, errlen, "listen udp %s: %s", a, strerror(errno));
			return -1;
		}
		int p = bound_port(fd4);
		set_port(&ss6, p);
		int fd6 = udp_bind(&ss6, sizeof sin6, 1);
		if (fd6 < 0 && errno == EAFNOSUPPORT) {
			/* No IPv6 on this host: Go's dual-stack listener falls back the same way. */
			s->fd[s->nfd++] = fd4;
			s->port = p;
			return 0;
		}
		if (fd6 < 0) {
			int e = errno;
			close(fd4);
			if (e == EADDRINUSE && port == 0)
				continue;
			addr_format((struct sockaddr *)&ss6, a, sizeof a);
			snprintf(err, errlen, "listen udp %s: %s", a, strerror(e));
			return -1;
		}
		s->fd[s->nfd++] = fd4;
		s->fd[s->nfd++] = fd6;
		s->port = p;
		return 0;
	}
	snprintf(err, errlen, "no ephemeral port free for both IPv4 and IPv6");
	return -1;
}

static int bind_host(struct stun_server *s, const char *host, int port, char *err,
		     size_t errlen)
{
	struct sockaddr_storage ss;
	socklen_t sslen;
	char a[80];

	if (host_resolve(host, &ss, &sslen, err, errlen) < 0)
		return -1;
	set_port(&ss, port);
	int fd = udp_bind(&ss, sslen, 0);
	if (fd < 0) {
		addr_format((struct sockaddr *)&ss, a, sizeof a);
		snprintf(err, errlen, "listen udp %s: %s", a, strerror(errno));
		return -1;
	}
	s->fd[s->nfd++] = fd;
	s->port = bound_port(fd);
	return 0;
}

/* Answer one batch already read into rmsg[0..n). */
static void batch_answer(struct stun_server *s, int fd, int n)
{
	uint64_t not_stun = 0, v4 = 0, v6 = 0, ok = 0, werr = 0;
	uint8_t txid[STUN_TXID_LEN];
	int k = 0;

	for (int i = 0; i < n; i++) {
		const uint8_t *pkt = s->rbuf + (size_t)i * DGRAM_MAX;
		struct sockaddr_storage *src = &s->raddr[i];

		if (stun_parse_binding_request(pkt, s->rmsg[i].msg_len, txid) != STUN_OK) {
			not_stun++;
			continue;
		}
		size_t len = stun_build_response(txid, (struct sockaddr *)src, s->sbuf[k]);
		if (len == 0) { /* not AF_INET/AF_INET6: cannot happen on these sockets */
			werr++;
			continue;
		}
		if (src->ss_family == AF_INET ||
		    IN6_IS_ADDR_V4MAPPED(&((struct sockaddr_in6 *)src)->sin6_addr))
			v4++;
		else
			v6++;
		s->siov[k].iov_base = s->sbuf[k];
		s->siov[k].iov_len = len;
		s->smsg[k].msg_hdr = (struct msghdr){
			.msg_name = src,
			.msg_namelen = s->rmsg[i].msg_hdr.msg_namelen,
			.msg_iov = &s->siov[k],
			.msg_iovlen = 1,
		};
		k++;
	}

	/* sendmmsg stops at the first failing message: count it and go on after it. */
	for (int i = 0, waited = 0; i < k;) {
		int r = sendmmsg(fd, s->smsg + i, (unsigned)(k - i), MSG_DONTWAIT);
		if (r > 0) {
			ok += (uint64_t)r;
			i += r;
			waited = 0;
		} else if (r < 0 && errno == EINTR) {
			continue;
		} else if (r < 0 && (errno == EAGAIN || errno == ENOBUFS) && !waited) {
			struct pollfd p = { .fd = fd, .events = POLLOUT };
			(void)poll(&p, 1, SEND_WAIT_MS);
			waited = 1;
		} else {
			werr++;
			i++;
			waited = 0;
		}
	}

	if (not_stun)
		COUNT(not_stun, not_stun);
	if (v4)
		COUNT(ipv4, v4);
	if (v6)
		COUNT(ipv6, v6);
	if (ok)
		COUNT(success, ok);
	if (werr)
		COUNT(write_error, werr);
}

/* Read and answer one batch from fd. Returns the number read (BATCH means "maybe more"),
 * 0 when drained, -1 on a read error. */
static int sock_service(struct stun_server *s, int fd)
{
	for (int i = 0; i < BATCH; i++)
		s->rmsg[i].msg_hdr.msg_namelen = sizeof s->raddr[i];
	int n = recvmmsg(fd, s->rmsg, BATCH, MSG_DONTWAIT, NULL);
	if (n < 0) {
		if (errno == EAGAIN || errno == EINTR)
			return 0;
		return -1;
	}
	batch_answer(s, fd, n);
	return n;
}

static bool stop_requested(struct stun_server *s, int timeout_ms)
{
	struct pollfd p = { .fd = s->stopfd, .events = POLLIN };
	return poll(&p, 1, timeout_ms) > 0;
}

static void *stun_thread(void *arg)
{
	struct stun_server *s = arg;
	struct pollfd pfd[3];

	for (int i = 0; i < s->nfd; i++)
		pfd[i] = (struct pollfd){ .fd = s->fd[i], .events = POLLIN };
	pfd[s->nfd] = (struct pollfd){ .fd = s->stopfd, .events = POLLIN };

	for (;;) {
		if (poll(pfd, (nfds_t)s->nfd + 1, -1) < 0) {
			if (errno == EINTR)
				continue;
			log_error(LS_STUN, "STUN poll: %s", strerror(errno)); /* EFAULT/EINVAL/ENOMEM only */
			break;
		}
		if (pfd[s->nfd].revents)
			break;
		/* Alternate full batches between the sockets so one family never starves the other. */
		bool more = true;
		while (more && !__atomic_load_n(&s->stopping, __ATOMIC_RELAXED)) {
			more = false;
			for (int i = 0; i < s->nfd; i++) {
				if (!(pfd[i].revents & (POLLIN | POLLERR)))
					continue;
				int n = sock_service(s, s->fd[i]);
				if (n == BATCH) {
					more = true;
				} else if (n < 0) {
					COUNT(read_error, 1);
					log_warn(LS_STUN, "STUN ReadFrom: %s", strerror(errno));
					/* Upstream sleeps 1 s after a read error; we also wake for stop. */
					if (stop_requested(s, 1000))
						return NULL;
				}
				if (n != BATCH)
					pfd[i].revents = 0;
			}
		}
	}
	return NULL;
}

static void server_free(struct stun_server *s)
{
	for (int i = 0; i < s->nfd; i++)
		close(s->fd[i]);
	if (s->stopfd >= 0)
		close(s->stopfd);
	free(s->rbuf);
	free(s);
}

struct stun_server *stun_start(const char *host, int port, char *err, size_t errlen)
{
	struct stun_server *s;
	char a[80];

	if (port < 0 || port > 65535) {
		snprintf(err, errlen, "invalid STUN port %d", port);
		return NULL;
	}
	s = calloc(1, sizeof *s);
	if (!s) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	s->stopfd = -1;
	/* Virtual reservation: pages are touched only up to each datagram's length. */
	s->rbuf = malloc((size_t)BATCH * DGRAM_MAX);
	if (!s->rbuf) {
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	for (int i = 0; i < BATCH; i++) {
		s->riov[i] = (struct iovec){ s->rbuf + (size_t)i * DGRAM_MAX, DGRAM_MAX };
		s->rmsg[i].msg_hdr = (struct msghdr){
			.msg_name = &s->raddr[i],
			.msg_namelen = sizeof s->raddr[i],
			.msg_iov = &s->riov[i],
			.msg_iovlen = 1,
		};
	}
	if (!host)
		host = "";
	/* From derpd.socket (ListenDatagram=): one dual-stack socket, or one per family. */
	for (int fd; port && s->nfd < 2 && (fd = listenfds_take(SOCK_DGRAM, port, "-stun-port")) >= 0;) {
		s->fd[s->nfd++] = fd;
		s->port = port;
	}
	if (!s->nfd &&
	    (host[0] ? bind_host(s, host, port, err, errlen) : bind_all(s, port, err, errlen)) < 0)
		goto fail;
	s->stopfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (s->stopfd < 0) {
		snprintf(err, errlen, "eventfd: %s", strerror(errno));
		goto fail;
	}

	/* The thread takes no signals: they belong to the main program. */
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	int r = pthread_create(&s->thread, NULL, stun_thread, s);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (r != 0) {
		snprintf(err, errlen, "pthread_create: %s", strerror(r));
		goto fail;
	}
	for (int i = 0; i < s->nfd; i++) {
		struct sockaddr_storage ss;
		socklen_t len = sizeof ss;
		if (getsockname(s->fd[i], (struct sockaddr *)&ss, &len) == 0) {
			addr_format((struct sockaddr *)&ss, a, sizeof a);
			log_info(LS_STUN, "STUN server listening on %s", a);
		}
	}
	return s;
fail:
	server_free(s);
	return NULL;
}

void stun_stop(struct stun_server *s)
{
	uint64_t one = 1;

	if (!s)
		return;
	__atomic_store_n(&s->stopping, 1, __ATOMIC_RELAXED);
	if (write(s->stopfd, &one, sizeof one) != sizeof one)
		log_warn(LS_STUN, "stop: %s", strerror(errno));
	pthread_join(s->thread, NULL);
	server_free(s);
}
