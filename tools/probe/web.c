/* Daemon mode's HTTP server (libmicrohttpd, one internal thread): the status page at /,
 * /metrics (also at /debug/varz, where upstream's tsweb serves them) and /healthz.
 *
 * Metric names are upstream's, under derpprobe's namespace ("derpprobe_", prober.go with
 * WithMetricNamespace), with the same labels: name, class, region, region_id, hostname,
 * and per class address_family (udp), derp_path (mesh, bw), tcp_in_tcp (bw). derpd's
 * additions: derpprobe_latency_seconds, derpprobe_last_success_secs,
 * derpprobe_tls_cert_expiry_secs and derpprobe_build_info. */
#include <arpa/inet.h>
#include <math.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <microhttpd.h>

#include "tools/probe/probe.h"

/* ---- small helpers ------------------------------------------------------------------- */

void sb_printf(struct sbuf *b, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (b->oom)
		return;
	for (;;) {
		va_start(ap, fmt);
		n = vsnprintf(b->p ? b->p + b->len : NULL, b->p ? b->cap - b->len : 0, fmt, ap);
		va_end(ap);
		if (n < 0) {
			b->oom = 1;
			return;
		}
		if (b->p && b->len + (size_t)n < b->cap) {
			b->len += (size_t)n;
			return;
		}
		size_t cap = b->cap ? b->cap : 8192;
		while (cap <= b->len + (size_t)n)
			cap *= 2;
		char *p = realloc(b->p, cap);
		if (!p) {
			b->oom = 1;
			return;
		}
		b->p = p;
		b->cap = cap;
	}
}

void sb_html(struct sbuf *b, const char *s)
{
	for (; *s; s++) {
		switch (*s) {
		case '&': sb_printf(b, "&amp;"); break;
		case '<': sb_printf(b, "&lt;"); break;
		case '>': sb_printf(b, "&gt;"); break;
		case '"': sb_printf(b, "&quot;"); break;
		case '\'': sb_printf(b, "&#39;"); break;
		default: sb_printf(b, "%c", *s);
		}
	}
}

void plog(const char *fmt, ...)
{
	char line[1024];
	time_t now = time(NULL);
	struct tm tm;
	va_list ap;

	localtime_r(&now, &tm);
	size_t n = strftime(line, sizeof line, "%Y/%m/%d %H:%M:%S ", &tm);
	va_start(ap, fmt);
	int m = vsnprintf(line + n, sizeof line - n - 1, fmt, ap);
	va_end(ap);
	n = m < 0 ? n : n + (size_t)m < sizeof line - 1 ? n + (size_t)m : sizeof line - 2;
	line[n++] = '\n';
	if (write(2, line, n) < 0)
		return; /* nowhere to say so */
}

/* Prometheus label value: backslash, double quote and newline escaped. */
static void sb_label(struct sbuf *b, const char *s)
{
	for (; *s; s++) {
		if (*s == '\\' || *s == '"')
			sb_printf(b, "\\%c", *s);
		else if (*s == '\n')
			sb_printf(b, "\\n");
		else
			sb_printf(b, "%c", *s);
	}
}

/* v / unit with its fraction, trailing zeros dropped: Go's fmtFrac. */
static void frac(char *out, size_t cap, int64_t v, int64_t unit, int digits, const char *u)
{
	int n = snprintf(out, cap, "%lld.%0*lld", (long long)(v / unit), digits,
			 (long long)(v % unit));
	while (n > 0 && (size_t)n < cap && out[n - 1] == '0')
		out[--n] = '\0';
	if (n > 0 && (size_t)n < cap && out[n - 1] == '.')
		out[--n] = '\0';
	snprintf(out + n, cap - (size_t)n, "%s", u);
}

void fmt_duration(char *out, size_t cap, double seconds)
{
	int64_t ns = (int64_t)llround(seconds * 1e9);

	if (ns <= 0)
		snprintf(out, cap, "0s");
	else if (ns < 1000)
		snprintf(out, cap, "%lldns", (long long)ns);
	else if (ns < 1000000)
		frac(out, cap, ns, 1000, 3, "\xc2\xb5s");
	else if (ns < 1000000000)
		frac(out, cap, ns, 1000000, 6, "ms");
	else {
		int64_t h = ns / 3600000000000LL, m = ns / 60000000000LL % 60;
		char s[48];
		frac(s, sizeof s, ns % 60000000000LL, 1000000000, 9, "s");
		if (h)
			snprintf(out, cap, "%lldh%lldm%s", (long long)h, (long long)m, s);
		else if (m)
			snprintf(out, cap, "%lldm%s", (long long)m, s);
		else
			snprintf(out, cap, "%s", s);
	}
}

/* ---- /metrics ------------------------------------------------------------------------- */

static void labels(struct sbuf *b, const struct probe_info *p, const char *extra_k,
		   const char *extra_v)
{
	sb_printf(b, "{name=\"");
	sb_label(b, p->name);
	sb_printf(b, "\",class=\"%s\"", probe_class_name(p->cls));
	if (p->cls != PC_MAP) {
		sb_printf(b, ",region=\"");
		sb_label(b, p->region_code);
		sb_printf(b, "\",region_id=\"%d\",hostname=\"", p->region_id);
		sb_label(b, p->host);
		sb_printf(b, "\"");
	}
	if (p->cls == PC_UDP)
		sb_printf(b, ",address_family=\"%s\"", p->family == AF_INET6 ? "ipv6" : "ipv4");
	if (p->cls == PC_MESH || p->cls == PC_BW)
		sb_printf(b, ",derp_path=\"%s\"", strcmp(p->node, p->to) ? "mesh" : "single");
	if (p->cls == PC_BW)
		sb_printf(b, ",tcp_in_tcp=\"false\"");
	if (extra_k)
		sb_printf(b, ",%s=\"%s\"", extra_k, extra_v);
	sb_printf(b, "}");
}

enum fam { F_INTERVAL, F_INFLIGHT, F_START, F_END, F_RESULT, F_LAT_MS, F_ATTEMPTS, F_SECONDS,
	   F_BW_SIZE, F_BW_TIME, F_LAT_S, F_LAST_OK, F_CERT, F_N };

static const struct {
	const char *name, *type, *help;
} fams[F_N] = {
	{ "interval_secs", "gauge", "Probe interval in seconds" },
	{ "in_flight", "gauge", "Number of probes currently running" },
	{ "start_secs", "gauge", "Latest probe start time (seconds since epoch)" },
	{ "end_secs", "gauge", "Latest probe end time (seconds since epoch)" },
	{ "result", "gauge", "Latest probe result (1 = success, 0 = failure)" },
	{ "latency_millis", "gauge", "Latest probe latency (ms)" },
	{ "attempts_total", "counter", "Total number of probing attempts" },
	{ "seconds_total", "counter", "Total amount of time spent executing the probe" },
	{ "derp_bw_probe_size_bytes", "gauge", "Payload size of the bandwidth prober" },
	{ "derp_bw_transfer_time_seconds_total", "counter", "Time it took to transfer data" },
	{ "latency_seconds", "gauge", "Latest successful probe's duration in seconds (0 after a failure)" },
	{ "last_success_secs", "gauge", "Time of the latest successful run (seconds since epoch)" },
	{ "tls_cert_expiry_secs", "gauge",
	  "NotAfter of the node's TLS certificate (seconds since epoch)" },
};

extern int64_t probe_bw_size; /* main.c */

static void series(struct sbuf *b, enum fam f, const struct probe_info *p)
{
	const char *m = fams[f].name;
	switch (f) {
	case F_INTERVAL:
		sb_printf(b, "derpprobe_%s", m), labels(b, p, NULL, NULL);
		sb_printf(b, " %g\n", (double)p->interval_ms / 1000);
		break;
	case F_INFLIGHT:
		sb_printf(b, "derpprobe_%s", m), labels(b, p, NULL, NULL);
		sb_printf(b, " %d\n", p->in_flight);
		break;
	case F_START:
		if (p->start > 0)
			sb_printf(b, "derpprobe_%s", m), labels(b, p, NULL, NULL),
				sb_printf(b, " %.0f\n", floor(p->start));
		break;
	case F_END:
		if (p->ran)
			sb_printf(b, "derpprobe_%s", m), labels(b, p, NULL, NULL),
				sb_printf(b, " %.0f\n", floor(p->end));
		break;
	case F_RESULT:
		if (p->ran)
			sb_printf(b, "derpprobe_%s", m), labels(b, p, NULL, NULL),
				sb_printf(b, " %d\n", p->ok ? 1 : 0);
		break;
	case F_LAT_MS: /* upstream: whole milliseconds, only after a success */
		if (p->ran && p->latency_s > 0)
			sb_printf(b, "derpprobe_%s", m), labels(b, p, NULL, NULL),
				sb_printf(b, " %.0f\n", floor(p->latency_s * 1000));
		break;
	case F_ATTEMPTS:
		if (p->ran) {
			sb_printf(b, "derpprobe_%s", m), labels(b, p, "status", "ok");
			sb_printf(b, " %llu\n", (unsigned long long)p->attempts_ok);
			sb_printf(b, "derpprobe_%s", m), labels(b, p, "status", "fail");
			sb_printf(b, " %llu\n", (unsigned long long)p->attempts_fail);
		}
		break;
	case F_SECONDS:
		if (p->ran) {
			sb_printf(b, "derpprobe_%s", m), labels(b, p, "status", "ok");
			sb_printf(b, " %.9g\n", p->seconds_ok);
			sb_printf(b, "derpprobe_%s", m), labels(b, p, "status", "fail");
			sb_printf(b, " %.9g\n", p->seconds_fail);
		}
		break;
	case F_BW_SIZE:
		if (p->ran && p->cls == PC_BW)
			sb_printf(b, "derpprobe_%s", m), labels(b, p, NULL, NULL),
				sb_printf(b, " %lld\n", (long long)probe_bw_size);
		break;
	case F_BW_TIME:
		if (p->ran && p->cls == PC_BW)
			sb_printf(b, "derpprobe_%s", m), labels(b, p, NULL, NULL),
				sb_printf(b, " %.9g\n", p->transfer_s_total);
		break;
	case F_LAT_S:
		if (p->ran)
			sb_printf(b, "derpprobe_%s", m), labels(b, p, NULL, NULL),
				sb_printf(b, " %.9g\n", p->latency_s);
		break;
	case F_LAST_OK:
		if (p->last_success > 0)
			sb_printf(b, "derpprobe_%s", m), labels(b, p, NULL, NULL),
				sb_printf(b, " %.0f\n", floor(p->last_success));
		break;
	case F_CERT:
		if (p->cls == PC_TLS && p->not_after > 0)
			sb_printf(b, "derpprobe_%s", m), labels(b, p, NULL, NULL),
				sb_printf(b, " %.0f\n", p->not_after);
		break;
	case F_N:
		break;
	}
}

char *web_metrics(const struct probe_info *p, int n)
{
	struct sbuf b = { 0 };

	/* one family at a time: Prometheus wants a family's series together */
	for (int f = 0; f < F_N; f++) {
		size_t mark = b.len;
		sb_printf(&b, "# HELP derpprobe_%s %s\n# TYPE derpprobe_%s %s\n", fams[f].name,
			  fams[f].help, fams[f].name, fams[f].type);
		size_t head = b.len;
		for (int i = 0; i < n; i++)
			series(&b, (enum fam)f, &p[i]);
		if (b.len == head && !b.oom)
			b.len = mark; /* no series: no HELP either (promtool flags that) */
	}
	sb_printf(&b, "# HELP derpprobe_build_info derpd-probe's version\n"
		      "# TYPE derpprobe_build_info gauge\n"
		      "derpprobe_build_info{version=\"%s\"} 1\n", DERPD_VERSION);
	if (b.oom) {
		free(b.p);
		return NULL;
	}
	return b.p;
}

/* ---- the server ------------------------------------------------------------------------ */

static struct MHD_Daemon *daemon_;

static enum MHD_Result reply(struct MHD_Connection *c, unsigned status, const char *type,
			     char *body, size_t len)
{
	struct MHD_Response *r =
		body ? MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE)
		     : MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
	if (!r) {
		free(body);
		return MHD_NO;
	}
	MHD_add_response_header(r, "Content-Type", type);
	MHD_add_response_header(r, "Cache-Control", "no-store");
	enum MHD_Result ok = MHD_queue_response(c, status, r);
	MHD_destroy_response(r);
	return ok;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
				  const char *method, const char *version,
				  const char *upload_data, size_t *upload_size, void **con_cls)
{
	(void)cls, (void)version, (void)upload_data, (void)con_cls;
	if (*upload_size) {
		*upload_size = 0; /* bodies are not for us */
		return MHD_YES;
	}
	if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
		return reply(c, 405, "text/plain; charset=utf-8", strdup("method not allowed\n"), 19);
	if (!strcmp(url, "/healthz")) /* upstream: the prober itself is up */
		return reply(c, 200, "text/plain", strdup("ok\n"), 3);
	int metrics = !strcmp(url, "/metrics") || !strcmp(url, "/debug/varz");
	if (!metrics && strcmp(url, "/") != 0)
		return reply(c, 404, "text/plain; charset=utf-8", strdup("404 page not found\n"), 19);
	int n;
	struct probe_info *p = prober_snapshot(&n);
	char *body = !p ? NULL : metrics ? web_metrics(p, n) : status_html(p, n);
	free(p);
	if (!body)
		return reply(c, 500, "text/plain", strdup("out of memory\n"), 14);
	return reply(c, 200, metrics ? "text/plain; version=0.0.4; charset=utf-8"
				     : "text/html; charset=utf-8", body, strlen(body));
}

/* "host:port", ":port" (every address, both families), "[v6]:port". */
static int listen_on(const char *addr, char *err, size_t errlen, char *shown, size_t scap)
{
	char host[256] = "";
	const char *colon = strrchr(addr, ':');
	struct sockaddr_storage ss = { 0 };
	socklen_t sl;
	char *end;

	if (!colon) {
		snprintf(err, errlen, "-listen %s: missing port", addr);
		return -1;
	}
	long port = strtol(colon + 1, &end, 10);
	if (!colon[1] || *end || port < 0 || port > 65535) {
		snprintf(err, errlen, "-listen %s: bad port", addr);
		return -1;
	}
	size_t hl = (size_t)(colon - addr);
	if (hl >= 2 && addr[0] == '[' && addr[hl - 1] == ']')
		snprintf(host, sizeof host, "%.*s", (int)(hl - 2), addr + 1);
	else if (hl < sizeof host)
		snprintf(host, sizeof host, "%.*s", (int)hl, addr);
	struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
	struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
	if (!host[0] || inet_pton(AF_INET6, host, &s6->sin6_addr) == 1) {
		s6->sin6_family = AF_INET6;
		s6->sin6_port = htons((uint16_t)port);
		sl = sizeof *s6;
	} else if (inet_pton(AF_INET, host, &s4->sin_addr) == 1) {
		s4->sin_family = AF_INET;
		s4->sin_port = htons((uint16_t)port);
		sl = sizeof *s4;
	} else if (!strcmp(host, "localhost")) {
		s4->sin_family = AF_INET;
		s4->sin_port = htons((uint16_t)port);
		s4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		sl = sizeof *s4;
	} else {
		snprintf(err, errlen, "-listen %s: the host must be an IP address", addr);
		return -1;
	}
	int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1, zero = 0;
	if (fd < 0 && !host[0]) { /* ":port" on a host without IPv6: IPv4 only */
		memset(&ss, 0, sizeof ss);
		s4->sin_family = AF_INET;
		s4->sin_port = htons((uint16_t)port);
		sl = sizeof *s4;
		fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	}
	if (fd < 0) {
		snprintf(err, errlen, "-listen %s: socket: %m", addr);
		return -1;
	}
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (ss.ss_family == AF_INET6 && !host[0]) /* ":port": IPv4 too, as Go listens */
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
	if (bind(fd, (struct sockaddr *)&ss, sl) != 0 || listen(fd, 64) != 0) {
		snprintf(err, errlen, "listen tcp %s: %m", addr);
		close(fd);
		return -1;
	}
	getsockname(fd, (struct sockaddr *)&ss, &sl);
	char ip[INET6_ADDRSTRLEN];
	if (ss.ss_family == AF_INET6) {
		inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof ip);
		snprintf(shown, scap, "[%s]:%u", ip, ntohs(s6->sin6_port));
	} else {
		inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof ip);
		snprintf(shown, scap, "%s:%u", ip, ntohs(s4->sin_port));
	}
	return fd;
}

int web_start(const char *addr, char *err, size_t errlen)
{
	char shown[96];
	int fd = listen_on(addr, err, errlen, shown, sizeof shown);

	if (fd < 0)
		return -1;
	daemon_ = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG, 0, NULL,
				   NULL, on_request, NULL, MHD_OPTION_LISTEN_SOCKET, fd,
				   MHD_OPTION_CONNECTION_TIMEOUT, 30u,
				   MHD_OPTION_CONNECTION_LIMIT, 64u, MHD_OPTION_END);
	if (!daemon_) {
		snprintf(err, errlen, "-listen %s: cannot start the HTTP server", addr);
		close(fd);
		return -1;
	}
	plog("Listening on %s", shown);
	return 0;
}

void web_stop(void)
{
	if (daemon_)
		MHD_stop_daemon(daemon_);
	daemon_ = NULL;
}
