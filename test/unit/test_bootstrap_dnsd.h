/* Test-only: a private network + mount namespace whose /etc/resolv.conf points at a tiny
 * DNS server on 127.0.0.1:53 that the test controls (A, AAAA, TXT; SERVFAIL on demand).
 * The code under test then resolves through its normal path (getaddrinfo, res_nquery),
 * with no override: only the machine it runs on is different. Needs root (CI is root).
 * Included by test/unit/test_bootstrap_dns.c and test/e2e/test_http_dns.c; call
 * dnsd_netns_enter() before any thread or resolver use, then dnsd_start(). */
#ifndef DERPD_TEST_BOOTSTRAP_DNSD_H
#define DERPD_TEST_BOOTSTRAP_DNSD_H
#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <unistd.h>

#define DNSD_MAX 32
struct dnsd_rr {
	char name[64];
	int type; /* 1 A, 28 AAAA, 16 TXT */
	char value[64];
};
static struct {
	pthread_mutex_t mu;
	struct dnsd_rr rr[DNSD_MAX];
	int n;
	int servfail;
	unsigned queries;
	int fd;
	volatile int stop;
	pthread_t th;
} dnsd = { .mu = PTHREAD_MUTEX_INITIALIZER, .fd = -1 };

/* 0, or -1 with a reason in err. */
__attribute__((unused)) static int dnsd_netns_enter(char *err, size_t errlen)
{
	if (unshare(CLONE_NEWNS | CLONE_NEWNET) != 0)
		return snprintf(err, errlen, "unshare(NEWNS|NEWNET): %s (needs root)", strerror(errno)), -1;
	if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0)
		return snprintf(err, errlen, "make / private: %s", strerror(errno)), -1;
	static const struct { const char *target, *text; } files[] = {
		{ "/etc/resolv.conf", "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n" },
		{ "/etc/hosts", "127.0.0.1 localhost\n::1 localhost\n" },
	};
	for (size_t i = 0; i < 2; i++) {
		char path[64];
		snprintf(path, sizeof path, "/tmp/derpd-dnsd-XXXXXX");
		int fd = mkstemp(path);
		if (fd < 0 || write(fd, files[i].text, strlen(files[i].text)) < 0)
			return snprintf(err, errlen, "temp file: %s", strerror(errno)), -1;
		close(fd);
		int rc = mount(path, files[i].target, NULL, MS_BIND, NULL);
		unlink(path); /* the bind mount keeps the inode */
		if (rc != 0)
			return snprintf(err, errlen, "bind %s: %s", files[i].target, strerror(errno)), -1;
	}
	int s = socket(AF_INET, SOCK_DGRAM, 0);
	struct ifreq ifr;
	memset(&ifr, 0, sizeof ifr);
	snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "lo");
	if (s < 0 || ioctl(s, SIOCGIFFLAGS, &ifr) != 0)
		return snprintf(err, errlen, "lo flags: %s", strerror(errno)), -1;
	ifr.ifr_flags |= IFF_UP;
	if (ioctl(s, SIOCSIFFLAGS, &ifr) != 0)
		return snprintf(err, errlen, "lo up: %s", strerror(errno)), -1;
	close(s);
	return 0;
}

__attribute__((unused)) static void dnsd_set(const char *name, int type, const char *value)
{
	pthread_mutex_lock(&dnsd.mu);
	int i;
	for (i = 0; i < dnsd.n; i++)
		if (strcasecmp(dnsd.rr[i].name, name) == 0 && dnsd.rr[i].type == type)
			break;
	if (i == dnsd.n && dnsd.n < DNSD_MAX)
		dnsd.n++;
	if (i < DNSD_MAX) {
		snprintf(dnsd.rr[i].name, sizeof dnsd.rr[i].name, "%s", name);
		dnsd.rr[i].type = type;
		snprintf(dnsd.rr[i].value, sizeof dnsd.rr[i].value, "%s", value);
	}
	pthread_mutex_unlock(&dnsd.mu);
}

__attribute__((unused)) static void dnsd_servfail(int on)
{
	pthread_mutex_lock(&dnsd.mu);
	dnsd.servfail = on;
	pthread_mutex_unlock(&dnsd.mu);
}

__attribute__((unused)) static unsigned dnsd_queries(void)
{
	pthread_mutex_lock(&dnsd.mu);
	unsigned q = dnsd.queries;
	pthread_mutex_unlock(&dnsd.mu);
	return q;
}

/* Answer one query in q (n bytes) into out; returns the length or 0 to drop. */
__attribute__((unused)) static size_t dnsd_answer(const uint8_t *q, size_t n, uint8_t *out, size_t cap)
{
	if (n < 12 || cap < 512)
		return 0;
	char name[256];
	size_t nl = 0, p = 12;
	while (p < n && q[p] != 0) {
		size_t l = q[p++];
		if (p + l > n || nl + l + 2 > sizeof name)
			return 0;
		if (nl)
			name[nl++] = '.';
		memcpy(name + nl, q + p, l);
		nl += l;
		p += l;
	}
	name[nl] = '\0';
	if (p + 5 > n)
		return 0;
	int qtype = q[p + 1] << 8 | q[p + 2];
	size_t qend = p + 5;
	memcpy(out, q, qend);
	out[2] = 0x84 | (q[2] & 0x01); /* QR, AA, RD copied */
	out[3] = 0x80;                 /* RA, NOERROR */
	out[6] = out[7] = out[8] = out[9] = out[10] = out[11] = 0;
	size_t w = qend;
	int an = 0, known = 0;
	pthread_mutex_lock(&dnsd.mu);
	dnsd.queries++;
	if (dnsd.servfail) {
		out[3] = 0x82;
		pthread_mutex_unlock(&dnsd.mu);
		return w;
	}
	for (int i = 0; i < dnsd.n; i++) {
		struct dnsd_rr *r = &dnsd.rr[i];
		if (strcasecmp(r->name, name) != 0)
			continue;
		known = 1;
		if (r->type != qtype)
			continue;
		uint8_t rd[64];
		size_t rdl = 0;
		if (r->type == 1 && inet_pton(AF_INET, r->value, rd) == 1)
			rdl = 4;
		else if (r->type == 28 && inet_pton(AF_INET6, r->value, rd) == 1)
			rdl = 16;
		else if (r->type == 16) {
			rdl = strlen(r->value);
			memmove(rd + 1, r->value, rdl);
			rd[0] = (uint8_t)rdl++;
		}
		if (rdl == 0 || w + 12 + rdl > cap)
			continue;
		const uint8_t hdr[10] = { 0xc0, 0x0c, 0, (uint8_t)r->type, 0, 1, 0, 0, 0, 60 };
		memcpy(out + w, hdr, 10);
		out[w + 10] = (uint8_t)(rdl >> 8);
		out[w + 11] = (uint8_t)rdl;
		memcpy(out + w + 12, rd, rdl);
		w += 12 + rdl;
		an++;
	}
	pthread_mutex_unlock(&dnsd.mu);
	if (!known)
		out[3] = 0x83; /* NXDOMAIN */
	out[7] = (uint8_t)an;
	return w;
}

__attribute__((unused)) static void *dnsd_main(void *arg)
{
	(void)arg;
	for (;;) {
		uint8_t q[1500], out[1500];
		struct sockaddr_storage from;
		socklen_t fl = sizeof from;
		ssize_t n = recvfrom(dnsd.fd, q, sizeof q, 0, (struct sockaddr *)&from, &fl);
		if (__atomic_load_n(&dnsd.stop, __ATOMIC_ACQUIRE) || (n < 0 && errno != EINTR))
			return NULL; /* shut down: recvfrom returns at once from now on */
		if (n <= 0)
			continue;
		size_t k = dnsd_answer(q, (size_t)n, out, sizeof out);
		if (k > 0)
			sendto(dnsd.fd, out, k, 0, (struct sockaddr *)&from, fl);
	}
}

__attribute__((unused)) static int dnsd_start(char *err, size_t errlen)
{
	dnsd.fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons(53),
				   .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	if (dnsd.fd < 0 || bind(dnsd.fd, (struct sockaddr *)&sin, sizeof sin) != 0)
		return snprintf(err, errlen, "bind 127.0.0.1:53: %s", strerror(errno)), -1;
	if (pthread_create(&dnsd.th, NULL, dnsd_main, NULL) != 0)
		return snprintf(err, errlen, "dnsd thread"), -1;
	return 0;
}

__attribute__((unused)) static void dnsd_stop(void)
{
	if (dnsd.fd < 0)
		return;
	__atomic_store_n(&dnsd.stop, 1, __ATOMIC_RELEASE);
	shutdown(dnsd.fd, SHUT_RDWR);
	pthread_join(dnsd.th, NULL);
	close(dnsd.fd);
	dnsd.fd = -1;
}

#endif
