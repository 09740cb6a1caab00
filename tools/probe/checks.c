/* One run of each probe class, bounded by a deadline (CLOCK_MONOTONIC ms), as upstream's
 * prober/derp.go and prober/tls.go do them:
 *
 *   tls   TLS handshake with the node (HostName as SNI, the map's IPv4/IPv6 to dial when
 *         given): chain verified against the system roots (SSL_CERT_FILE/SSL_CERT_DIR as
 *         Go reads them, or --ca-file), the name, validity times; bad within 7 days of
 *         expiry (upstream), a warning within 14.
 *   udp   a STUN Binding request to IPv4:STUNPort (udp6: IPv6), resent every 2 s until a
 *         response with our transaction ID arrives.
 *   mesh  a client on node A sends a packet to a client on node B (A == B: both on one
 *         node, upstream's "single" path: the DERP login and a round trip).
 *   bw    -bw-probe-size-bytes the same way, in 64 KiB packets, 30 in flight.
 *
 * The reason for every failure names the node and the address. */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>
#include <wolfssl/options.h>
#include <wolfssl/ssl.h>
#include <wolfssl/wolfcrypt/asn.h>
#include <wolfssl/wolfcrypt/error-crypt.h>
#include <wolfssl/wolfcrypt/sha256.h>

#include "mesh/derp_client.h"
#include "server/frame.h"
#include "stun/stun.h"
#include "mesh/client_tls.h"
#include "tools/probe/probe.h"

#define TLS_BAD_DAYS  7   /* upstream's expiresSoon: bad */
#define TLS_WARN_DAYS 14  /* a warning on the line and the page */
#define BW_IN_FLIGHT  30  /* upstream's window */
#define RESEND_MS     50  /* mesh: a packet sent before A heard of B is dropped: send again */

/* snprintf without the truncation warning: every message here is cut to its buffer on
 * purpose (a hostile map's names are long). */
static void errf(char *out, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void errf(char *out, size_t cap, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(out, cap, fmt, ap);
	va_end(ap);
}

int64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

double wall_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static int left_ms(int64_t deadline)
{
	int64_t l = deadline - mono_ms();
	return l <= 0 ? 0 : l > 3600000 ? 3600000 : (int)l;
}

static int is_ip(const char *s, int family)
{
	unsigned char b[16];
	return s[0] && inet_pton(family, s, b) == 1;
}

int check_plain_http(const struct check_ctx *c, const struct dm_node *n)
{
	return c->force_http || n->insecure;
}

/* Where to connect: the map's IPv4, else its IPv6, else HostName through DNS (Go's
 * DERP client races the two families; one address is enough to judge the node). */
static const char *dial_host(const struct dm_node *n)
{
	if (is_ip(n->ipv4, AF_INET))
		return n->ipv4;
	if (is_ip(n->ipv6, AF_INET6))
		return n->ipv6;
	return n->host;
}

static int derp_port(const struct check_ctx *c, const struct dm_node *n)
{
	return n->derp_port ? n->derp_port : check_plain_http(c, n) ? 3340 : 443;
}

/* The name the certificate must carry: CertName when it names one, else HostName. */
static const char *cert_name(const struct dm_node *n)
{
	return n->cert_name[0] && strncmp(n->cert_name, "sha256-raw:", 11) ? n->cert_name
									    : n->host;
}

static void fmt_addr(char *out, size_t cap, const char *host, int port)
{
	errf(out, cap, strchr(host, ':') ? "[%s]:%d" : "%s:%d", host, port);
}

/* ---- tls ------------------------------------------------------------------------------ */

static int dial_tcp(const char *host, int port, int64_t deadline, char *err, size_t errlen)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *res, *ai;
	char ps[8], addr[300];
	int fd = -1;

	fmt_addr(addr, sizeof addr, host, port);
	errf(ps, sizeof ps, "%d", port);
	int g = getaddrinfo(host, ps, &hints, &res);
	if (g) {
		errf(err, errlen, "connecting to %s: %s", addr, gai_strerror(g));
		return -1;
	}
	for (ai = res; ai; ai = ai->ai_next) {
		fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (fd < 0)
			continue;
		if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
			break;
		if (errno == EINPROGRESS) {
			struct pollfd p = { .fd = fd, .events = POLLOUT };
			int e = 0;
			socklen_t el = sizeof e;
			if (poll(&p, 1, left_ms(deadline)) == 1 &&
			    getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &el) == 0 && e == 0)
				break;
			errno = e ? e : ETIMEDOUT;
		}
		errf(err, errlen, "connecting to %s: %s", addr, strerror(errno));
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	return fd;
}

/* --ca-file, else the roots as Go finds them (as the mesh client does). */
static int load_roots(WOLFSSL_CTX *ctx, const char *ca_file)
{
	if (ca_file)
		return wolfSSL_CTX_load_verify_locations(ctx, ca_file, NULL) == WOLFSSL_SUCCESS;
	return client_tls_load_roots(ctx);
}

#define CHAIN_MAX 8
struct seen {
	int n;
	uint8_t *der[CHAIN_MAX];
	size_t len[CHAIN_MAX];
	int err[CHAIN_MAX], nerr;   /* wolfSSL's verdicts other than dates and names */
};

/* A DERP meta certificate (CN "derpkey<hex>", not a CA): appended after the chain by
 * derper and derpd; it is no part of the path and has no validity that matters. */
static int is_meta(const DecodedCert *dc)
{
	return dc->subjectCN && dc->subjectCNLen > 7 && !memcmp(dc->subjectCN, "derpkey", 7) &&
	       !dc->isCA;
}

/* Every verdict goes on record and the handshake goes on: the chain is judged after it
 * with every fact at hand (expired and misnamed and untrusted can all be true). */
static int verify_cb(int preverify, WOLFSSL_X509_STORE_CTX *store)
{
	struct seen *s = store->userCtx;

	if (!s)
		return 1;
	for (int i = 0; s->n == 0 && i < store->totalCerts && i < CHAIN_MAX; i++) {
		s->der[i] = malloc(store->certs[i].length);
		if (!s->der[i])
			break;
		memcpy(s->der[i], store->certs[i].buffer, store->certs[i].length);
		s->len[i] = store->certs[i].length;
		if (i + 1 == store->totalCerts || i + 1 == CHAIN_MAX)
			s->n = i + 1;
	}
	int e = store->error, d = store->error_depth;
	if (preverify || e == ASN_AFTER_DATE_E || e == ASN_BEFORE_DATE_E ||
	    e == DOMAIN_NAME_MISMATCH || e == IPADDR_MISMATCH)
		return 1;
	if (d > 0 && d < store->totalCerts && d < CHAIN_MAX && s->der[d]) {
		DecodedCert dc;
		wc_InitDecodedCert(&dc, s->der[d], (word32)s->len[d], NULL);
		int meta = wc_ParseCert(&dc, CERT_TYPE, NO_VERIFY, NULL) == 0 && is_meta(&dc);
		wc_FreeDecodedCert(&dc);
		if (meta)
			return 1;
	}
	if (s->nerr < CHAIN_MAX)
		s->err[s->nerr++] = e;
	return 1;
}

static double cert_time(const byte *raw, int len)
{
	const byte *date;
	byte format;
	int dl;
	struct tm tm;

	if (!raw || wc_GetDateInfo(raw, len, &date, &format, &dl) != 0 ||
	    wc_GetDateAsCalendarTime(date, dl, format, &tm) != 0)
		return 0;
	return (double)timegm(&tm);
}

static void fmt_date(char *out, size_t cap, double t)
{
	time_t tt = (time_t)t;
	struct tm tm;
	gmtime_r(&tt, &tm);
	strftime(out, cap, "%Y-%m-%d %H:%M:%S UTC", &tm);
}

static void fmt_days(char *out, size_t cap, double s)
{
	long v = (long)(s < 0 ? -s : s);

	if (v >= 2 * 86400)
		errf(out, cap, "%ld days", v / 86400);
	else
		errf(out, cap, "%ldh%02ldm", v / 3600, v % 3600 / 60);
}

/* "a, b, 1.2.3.4": the names a certificate is valid for. */
static void cert_names(const DecodedCert *dc, char *out, size_t cap)
{
	size_t n = 0;
	int k = 0;

	out[0] = '\0';
	for (DNS_entry *e = dc->altNames; e && k < 6 && n + 4 < cap; e = e->next, k++) {
		char ip[INET6_ADDRSTRLEN] = "";
		const char *s = e->name;
		int len = e->len;
		if (e->type == ASN_IP_TYPE && (len == 4 || len == 16)) {
			inet_ntop(len == 4 ? AF_INET : AF_INET6, e->name, ip, sizeof ip);
			s = ip;
			len = (int)strlen(ip);
		}
		n += (size_t)snprintf(out + n, cap - n, "%s%.*s", n ? ", " : "", len, s);
	}
	if (!out[0] && dc->subjectCN)
		errf(out, cap, "%.*s", dc->subjectCNLen, dc->subjectCN);
	if (n >= cap)
		out[cap - 1] = '\0';
}

static void add(char *buf, size_t cap, const char *fmt, const char *a, const char *b,
		const char *c)
{
	size_t n = strlen(buf);
	if (n + 3 < cap)
		errf(buf + n, cap - n, "%s", n ? "; " : "");
	n = strlen(buf);
	errf(buf + n, cap - n, fmt, a, b, c);
}

/* The served chain against the time, the name and the roots' verdicts. */
static void judge_chain(WOLFSSL *ssl, struct seen *s, const struct dm_node *n,
			struct check_result *r)
{
	const char *name = cert_name(n), *pin = NULL;
	double now = wall_s(), soonest = 0;
	char why[sizeof r->err] = "", d1[64], d2[64], names[200];
	int soonest_i = -1;

	if (!strncmp(n->cert_name, "sha256-raw:", 11))
		pin = n->cert_name + 11;
	if (s->n == 0) {
		errf(r->err, sizeof r->err, "no peer certificates");
		return;
	}
	for (int i = 0; i < s->n; i++) {
		DecodedCert dc;
		wc_InitDecodedCert(&dc, s->der[i], (word32)s->len[i], NULL);
		if (wc_ParseCert(&dc, CERT_TYPE, NO_VERIFY, NULL) != 0) {
			wc_FreeDecodedCert(&dc);
			if (i == 0) {
				errf(r->err, sizeof r->err, "cannot parse the certificate");
				return;
			}
			continue;
		}
		double nb = cert_time(dc.beforeDate, dc.beforeDateLen);
		double na = cert_time(dc.afterDate, dc.afterDateLen);
		char cn[80];
		errf(cn, sizeof cn, "\"%.*s\"", dc.subjectCN ? dc.subjectCNLen : 0,
			 dc.subjectCN ? dc.subjectCN : "");
		if (i == 0) {
			r->not_after = na;
			WOLFSSL_X509 *x = wolfSSL_X509_d2i(NULL, s->der[0], (int)s->len[0]);
			int match = !x ? 0 : is_ip(name, AF_INET) || is_ip(name, AF_INET6)
				? wolfSSL_X509_check_ip_asc(x, name, 0) == 1
				: wolfSSL_X509_check_host(x, name, strlen(name), 0, NULL) == 1;
			wolfSSL_X509_free(x);
			cert_names(&dc, names, sizeof names);
			if (!match && !pin)
				add(why, sizeof why, "certificate is valid for %s, not %s%s", names,
				    name, "");
		}
		/* meta and self-signed certificates (a root sent along) are skipped, as
		 * upstream skips certificates whose key IDs say they sign themselves */
		int self = !memcmp(dc.subjectHash, dc.issuerHash, sizeof dc.subjectHash);
		if (!is_meta(&dc) && (i == 0 || !self) && na > 0) {
			fmt_date(d1, sizeof d1, na);
			fmt_date(d2, sizeof d2, nb);
			if (now >= na) {
				fmt_days(names, sizeof names, now - na);
				add(why, sizeof why, "certificate %s expired %s ago (%s)", cn, names, d1);
			} else if (nb > 0 && now < nb) {
				add(why, sizeof why, "certificate %s is not valid before %s%s", cn, d2, "");
			} else if (soonest_i < 0 || na < soonest) {
				soonest = na;
				soonest_i = i;
			}
		}
		wc_FreeDecodedCert(&dc);
	}
	if (pin) {
		uint8_t h[WC_SHA256_DIGEST_SIZE];
		char hex[2 * sizeof h + 1];
		wc_Sha256Hash(s->der[0], (word32)s->len[0], h);
		sodium_bin2hex(hex, sizeof hex, h, sizeof h);
		if (strcasecmp(hex, pin) != 0)
			add(why, sizeof why, "certificate SHA-256 %s is not the pinned %s%s", hex, pin, "");
	} else {
		for (int i = 0; i < s->nerr; i++) {
			char msg[WOLFSSL_MAX_ERROR_SZ];
			if (s->err[i] == ASN_NO_SIGNER_E || s->err[i] == ASN_SELF_SIGNED_E)
				add(why, sizeof why, "certificate signed by unknown authority%s%s%s",
				    "", "", "");
			else
				add(why, sizeof why, "certificate does not verify: %s%s%s",
				    wolfSSL_ERR_error_string((unsigned long)s->err[i], msg), "", "");
			break; /* the first says enough */
		}
	}
	(void)ssl;
	if (!why[0] && soonest_i >= 0) {
		double left = soonest - now;
		fmt_days(names, sizeof names, left);
		fmt_date(d1, sizeof d1, soonest);
		if (left < TLS_BAD_DAYS * 86400.0)
			add(why, sizeof why, "certificate %s expires in %s (%s)",
			    soonest_i == 0 ? "of the node" : "in the chain", names, d1);
		else if (left < TLS_WARN_DAYS * 86400.0)
			errf(r->note, sizeof r->note, "warning: certificate expires in %s (%s)",
				 names, d1);
		else
			errf(r->note, sizeof r->note, "certificate expires in %s", names);
	}
	if (why[0])
		errf(r->err, sizeof r->err, "%s", why);
	else
		r->ok = 1;
}

void check_tls(const struct check_ctx *c, const struct dm_node *n, int64_t deadline,
	       struct check_result *r)
{
	static pthread_once_t once = PTHREAD_ONCE_INIT;
	const char *host = dial_host(n);
	int port = derp_port(c, n);
	struct seen s = { 0 };
	WOLFSSL_CTX *ctx = NULL;
	WOLFSSL *ssl = NULL;
	char addr[300], err[300];

	memset(r, 0, sizeof *r);
	pthread_once(&once, (void (*)(void))wolfSSL_Init);
	fmt_addr(addr, sizeof addr, host, port);
	int fd = dial_tcp(host, port, deadline, err, sizeof err);
	if (fd < 0) {
		errf(r->err, sizeof r->err, "%s", err);
		return;
	}
	if (!(ctx = wolfSSL_CTX_new(wolfSSLv23_client_method())) || !load_roots(ctx, c->ca_file)) {
		errf(r->err, sizeof r->err, "cannot load the CA certificates %s",
			 c->ca_file ? c->ca_file : "(system)");
		goto out;
	}
	if (!(ssl = wolfSSL_new(ctx)))
		goto oom;
	wolfSSL_set_fd(ssl, fd);
	if (!is_ip(n->host, AF_INET) && !is_ip(n->host, AF_INET6) &&
	    wolfSSL_UseSNI(ssl, WOLFSSL_SNI_HOST_NAME, n->host, (word16)strlen(n->host)) !=
		    WOLFSSL_SUCCESS)
		goto oom;
	static char alpn[] = "http/1.1";
	wolfSSL_UseALPN(ssl, alpn, sizeof alpn - 1, WOLFSSL_ALPN_CONTINUE_ON_MISMATCH);
	wolfSSL_set_verify(ssl, WOLFSSL_VERIFY_PEER, verify_cb);
	wolfSSL_SetCertCbCtx(ssl, &s);
	for (;;) {
		int rc = wolfSSL_connect(ssl);
		if (rc == WOLFSSL_SUCCESS)
			break;
		int e = wolfSSL_get_error(ssl, rc);
		if (e != WOLFSSL_ERROR_WANT_READ && e != WOLFSSL_ERROR_WANT_WRITE) {
			char msg[WOLFSSL_MAX_ERROR_SZ];
			errf(r->err, sizeof r->err, "TLS handshake with %s: %s", addr,
				 e == SOCKET_PEER_CLOSED_E || e == SOCKET_ERROR_E
					 ? "connection closed by the server"
					 : wolfSSL_ERR_error_string((unsigned long)e, msg));
			goto out;
		}
		struct pollfd p = { .fd = fd, .events = e == WOLFSSL_ERROR_WANT_READ ? POLLIN : POLLOUT };
		if (left_ms(deadline) == 0 || poll(&p, 1, left_ms(deadline)) == 0) {
			errf(r->err, sizeof r->err, "TLS handshake with %s: timed out", addr);
			goto out;
		}
	}
	wolfSSL_SetCertCbCtx(ssl, NULL);
	judge_chain(ssl, &s, n, r);
	if (!r->ok) {
		char tmp[sizeof r->err];
		errf(tmp, sizeof tmp, "%s: %s", addr, r->err);
		memcpy(r->err, tmp, sizeof tmp);
	}
	goto out;
oom:
	errf(r->err, sizeof r->err, "TLS setup failed");
out:
	if (ssl) {
		wolfSSL_SetCertCbCtx(ssl, NULL);
		wolfSSL_free(ssl);
	}
	if (ctx)
		wolfSSL_CTX_free(ctx);
	for (int i = 0; i < CHAIN_MAX; i++)
		free(s.der[i]);
	close(fd);
}

/* ---- udp (STUN) ----------------------------------------------------------------------- */

void check_udp(const struct check_ctx *c, const struct dm_node *n, int family,
	       int64_t deadline, struct check_result *r)
{
	const char *ip = family == AF_INET6 ? n->ipv6 : n->ipv4;
	int port = n->stun_port ? n->stun_port : 3478, sent = 0;
	struct sockaddr_storage ss = { 0 };
	socklen_t sl;
	char addr[100];

	(void)c;
	memset(r, 0, sizeof *r);
	fmt_addr(addr, sizeof addr, ip, port);
	if (family == AF_INET6) {
		struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
		s6->sin6_family = AF_INET6;
		s6->sin6_port = htons((uint16_t)port);
		sl = sizeof *s6;
		if (inet_pton(AF_INET6, ip, &s6->sin6_addr) != 1)
			goto notip;
	} else {
		struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
		s4->sin_family = AF_INET;
		s4->sin_port = htons((uint16_t)port);
		sl = sizeof *s4;
		if (inet_pton(AF_INET, ip, &s4->sin_addr) != 1)
			goto notip;
	}
	int fd = socket(family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	/* connected: the kernel drops datagrams from anyone else and reports ICMP errors */
	if (fd < 0 || connect(fd, (struct sockaddr *)&ss, sl) != 0) {
		errf(r->err, sizeof r->err, "STUN to %s: %s", addr, strerror(errno));
		if (fd >= 0)
			close(fd);
		return;
	}
	uint8_t tx[STUN_TXID_LEN], req[STUN_REQUEST_LEN], buf[1500], back[STUN_TXID_LEN];
	randombytes_buf(tx, sizeof tx);
	stun_build_request(tx, req);
	while (left_ms(deadline) > 0) {
		if (send(fd, req, sizeof req, 0) < 0) {
			errf(r->err, sizeof r->err, "STUN to %s: %s", addr, strerror(errno));
			break;
		}
		sent++;
		int64_t until = mono_ms() + 2000; /* upstream's read deadline per request */
		if (until > deadline)
			until = deadline;
		struct pollfd p = { .fd = fd, .events = POLLIN };
		if (poll(&p, 1, left_ms(until)) == 0)
			continue;
		ssize_t got = recv(fd, buf, sizeof buf, 0);
		if (got < 0) {
			errf(r->err, sizeof r->err, "STUN to %s: %s", addr, strerror(errno));
			break;
		}
		struct sockaddr_storage mapped;
		int pr = stun_parse_response(buf, (size_t)got, back, &mapped);
		if (pr != STUN_OK) {
			errf(r->err, sizeof r->err, "parsing STUN response from %s: %s", addr,
				 stun_strerror(pr));
			break;
		}
		if (memcmp(back, tx, sizeof tx) != 0) {
			errf(r->err, sizeof r->err, "read wrong tx back from %s", addr);
			break;
		}
		r->ok = 1;
		break;
	}
	if (!r->ok && !r->err[0])
		errf(r->err, sizeof r->err, "timeout reading from %s: no STUN response to %d request%s",
			 addr, sent, sent == 1 ? "" : "s");
	close(fd);
	return;
notip:
	errf(r->err, sizeof r->err, "%s \"%s\" is not an IP address",
		 family == AF_INET6 ? "IPv6" : "IPv4", ip);
}

/* ---- mesh and bandwidth --------------------------------------------------------------- */

static struct derp_client *login(const struct check_ctx *c, const struct dm_node *n,
				 int is_prober, int64_t deadline, char *err, size_t errlen)
{
	struct derp_client_opts o = { 0 };
	const char *host = dial_host(n);
	int port = derp_port(c, n);
	char addr[300];

	o.is_prober = is_prober;
	o.mesh_key = c->mesh_key;
	o.host = n->host;
	o.timeout_ms = left_ms(deadline) ? left_ms(deadline) : 1;
	if (!check_plain_http(c, n)) {
		o.tls = 1;
		o.tls_server_name = cert_name(n);
		o.tls_ca_file = c->ca_file;
		/* a pinned certificate is the TLS probe's to check; here only DERP matters */
		o.tls_insecure = !strncmp(n->cert_name, "sha256-raw:", 11);
	}
	struct derp_client *d = derp_client_connect(host, (uint16_t)port, &o);
	if (!d) {
		fmt_addr(addr, sizeof addr, host, port);
		errf(err, errlen, "connecting to %s (%s%s): %s", n->name,
			 o.tls ? "https://" : "http://", addr, derp_client_error());
	}
	return d;
}

/* The next packet on b from a (other frames skipped) within the deadline: 1 and *m, 0 on
 * timeout, -1 when b's connection failed (err set). */
static int next_packet(struct derp_client *b, const uint8_t *src, int64_t until,
		       struct derp_msg *m, const char *to, char *err, size_t errlen)
{
	for (;;) {
		int l = left_ms(until);
		if (l == 0)
			return 0;
		int rc = derp_client_recv(b, m, l);
		if (rc == DERP_CLIENT_TIMEOUT)
			return 0;
		if (rc != 0) {
			errf(err, errlen, "receiving from %s: %s", to, derp_client_error());
			return -1;
		}
		if (m->kind == DERP_MSG_PACKET && !memcmp(m->key, src, 32))
			return 1;
		/* keep-alives, pings, peer-present and anyone else's packets: not ours */
	}
}

/* Send small packets from a to b until one arrives: the path works, and a packet sent
 * before node A learnt of B's client through the mesh (dropped there) is made good. */
static int first_packet(struct derp_client *a, struct derp_client *b, const char *from,
			const char *to, int64_t deadline, char *err, size_t errlen)
{
	uint8_t pkt[16], nonce[8];
	struct derp_msg m;
	int sent = 0;

	randombytes_buf(nonce, sizeof nonce);
	while (left_ms(deadline) > 0) {
		pkt[0] = 'W';
		memcpy(pkt + 1, nonce, 7);
		memcpy(pkt + 8, &sent, sizeof sent);
		memset(pkt + 8 + sizeof sent, 0, 8 - sizeof sent);
		derp_client_set_timeout(a, left_ms(deadline) ? left_ms(deadline) : 1);
		if (derp_client_send(a, derp_client_public_key(b), pkt, sizeof pkt) != 0) {
			errf(err, errlen, "sending via %s: %s", from, derp_client_error());
			return -1;
		}
		sent++;
		int64_t until = mono_ms() + RESEND_MS;
		if (until > deadline)
			until = deadline;
		for (;;) {
			int rc = next_packet(b, derp_client_public_key(a), until, &m, to, err, errlen);
			if (rc < 0)
				return -1;
			if (rc == 0)
				break;
			if (m.len == sizeof pkt && m.data[0] == 'W' && !memcmp(m.data + 1, nonce, 7))
				return 0;
		}
	}
	errf(err, errlen, "no packet from %s arrived on %s (%d sent)", from, to, sent);
	return -1;
}

static int bandwidth(const struct check_ctx *c, struct derp_client *a, struct derp_client *b,
		     const char *from, const char *to, int64_t deadline, struct check_result *r)
{
	static const size_t max = DERP_MAX_PACKET;
	int64_t size = c->bw_size;
	int64_t npk = (size + (int64_t)max - 1) / (int64_t)max, sent = 0, got = 0;
	uint8_t *buf = malloc(max), *want = malloc(max);
	struct derp_msg m;
	int rc = -1;

	if (!buf || !want) {
		errf(r->err, sizeof r->err, "out of memory");
		goto out;
	}
	randombytes_buf(buf, max);
	buf[0] = 'B';
	double t0 = wall_s();
	while (got < npk) {
		while (sent < npk && sent - got < BW_IN_FLIGHT) {
			size_t len = sent + 1 < npk ? max : (size_t)(size - (npk - 1) * (int64_t)max);
			memcpy(buf + 1, &sent, sizeof sent); /* packet i carries i: order is checked */
			derp_client_set_timeout(a, left_ms(deadline) ? left_ms(deadline) : 1);
			if (derp_client_send(a, derp_client_public_key(b), buf, len) != 0) {
				errf(r->err, sizeof r->err, "sending packet %lld via %s: %s",
					 (long long)sent, from, derp_client_error());
				goto out;
			}
			sent++;
		}
		int k = next_packet(b, derp_client_public_key(a), deadline, &m, to, r->err,
				    sizeof r->err);
		if (k < 0)
			goto out;
		if (k == 0) {
			errf(r->err, sizeof r->err, "timeout: %lld of %lld data packets from %s "
				 "arrived on %s", (long long)got, (long long)npk, from, to);
			goto out;
		}
		if (m.len >= 1 && m.data[0] == 'W')
			continue; /* a late duplicate of the path check */
		size_t wl = got + 1 < npk ? max : (size_t)(size - (npk - 1) * (int64_t)max);
		memcpy(want, buf, wl);
		memcpy(want + 1, &got, sizeof got);
		if (m.len != wl || memcmp(m.data, want, wl) != 0) {
			errf(r->err, sizeof r->err, "unexpected data packet %lld (out of %lld) "
				 "from %s on %s", (long long)got, (long long)npk, from, to);
			goto out;
		}
		got++;
	}
	r->transfer_s = wall_s() - t0;
	errf(r->note, sizeof r->note, "%lld bytes in %.3f s (%.1f Mbit/s)", (long long)size,
		 r->transfer_s, r->transfer_s > 0 ? (double)size * 8 / r->transfer_s / 1e6 : 0.0);
	rc = 0;
out:
	free(buf);
	free(want);
	return rc;
}

void check_pair(const struct check_ctx *c, const struct dm_node *from, const struct dm_node *to,
		int bw, int64_t deadline, struct check_result *r)
{
	struct derp_client *a, *b = NULL;

	memset(r, 0, sizeof *r);
	/* upstream logs in as a prober for the mesh probe only (not for bandwidth) */
	a = login(c, from, !bw, deadline, r->err, sizeof r->err);
	if (a)
		b = login(c, to, !bw, deadline, r->err, sizeof r->err);
	if (!a || !b)
		goto out;
	derp_client_set_timeout(b, left_ms(deadline) ? left_ms(deadline) : 1);
	if (first_packet(a, b, from->name, to->name, deadline, r->err, sizeof r->err) != 0)
		goto out;
	if (bw && c->bw_size > 0 && bandwidth(c, a, b, from->name, to->name, deadline, r) != 0)
		goto out;
	r->ok = 1;
out:
	if (!r->ok && r->err[0] && strncmp(r->err, "connecting to", 13)) {
		char tmp[sizeof r->err];
		errf(tmp, sizeof tmp, "%s -> %s: %s", from->name, to->name, r->err);
		memcpy(r->err, tmp, sizeof tmp);
	}
	if (a)
		derp_client_close(a);
	if (b)
		derp_client_close(b);
}
