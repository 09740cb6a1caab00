#include "server/log.h"

#include "server/config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

const char *const log_sub_name[LS_N] = {
	[LS_DERPD] = "derpd",	  [LS_CONFIG] = "config", [LS_DERP] = "derp",
	[LS_TLS] = "tls",	  [LS_CERT] = "cert",	  [LS_ACME] = "acme",
	[LS_HTTP] = "http",	  [LS_DNS] = "bootstrap-dns", [LS_MESH] = "mesh",
	[LS_STUN] = "stun",	  [LS_ADMISSION] = "admission", [LS_SYSTEMD] = "systemd",
};

unsigned log_debug_mask;
static int out_fd = 2;
static int journal;

#define LINE_MAX_LEN 2048 /* longer messages are cut: a line stays one atomic write */

int log_journal_match(const char *js, int fd)
{
	unsigned long long dev, ino;
	struct stat st;
	int n = 0;

	if (!js || sscanf(js, "%llu:%llu%n", &dev, &ino, &n) != 2 || js[n] != '\0')
		return 0;
	if (fstat(fd, &st) != 0)
		return 0;
	return (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

void log_init(int verbose)
{
	log_debug_mask = verbose ? (1u << LS_N) - 1 : 0;
	if (config_env_bool("DERP_DEBUG_LOGS"))
		log_debug_mask |= 1u << LS_DERP;
	/* Only if stderr still is the stream systemd connected: a unit that redirects it
	 * to a file (StandardError=file:) keeps the variable but wants timestamps. */
	journal = log_journal_match(getenv("JOURNAL_STREAM"), 2);
}

void log_set_output(int fd, int j)
{
	out_fd = fd;
	journal = j;
}

static const char *level_name(enum log_level lv)
{
	switch (lv) {
	case LOG_L_ERROR: return "ERROR";
	case LOG_L_WARN: return "WARN";
	case LOG_L_INFO: return "INFO";
	default: return "DEBUG";
	}
}

size_t log_format(char *out, size_t cap, int j, int64_t unix_ms, enum log_level lv,
		  enum log_sub sub, const char *fmt, va_list ap)
{
	const char *name = (unsigned)sub < LS_N ? log_sub_name[sub] : "?";
	size_t n;
	int k;

	if (j) {
		k = snprintf(out, cap, "<%d>%s: ", (int)lv, name);
	} else {
		time_t secs = (time_t)(unix_ms / 1000);
		struct tm tm;
		gmtime_r(&secs, &tm);
		k = snprintf(out, cap, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ %s %s: ",
			     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
			     tm.tm_sec, (int)(unix_ms % 1000), level_name(lv), name);
	}
	n = k < 0 ? 0 : (size_t)k < cap - 1 ? (size_t)k : cap - 2;
	size_t start = n;
	k = vsnprintf(out + n, cap - n - 1, fmt, ap); /* room kept for the newline */
	n += k < 0 ? 0 : (size_t)k < cap - n - 1 ? (size_t)k : cap - n - 2;
	/* A trailing newline (libmicrohttpd's messages have one) is dropped, others become
	 * spaces: journald would take the rest of the line as a new message with no priority. */
	while (n > start && (out[n - 1] == '\n' || out[n - 1] == '\r'))
		n--;
	for (size_t i = start; i < n; i++)
		if (out[i] == '\n' || out[i] == '\r')
			out[i] = ' ';
	out[n++] = '\n';
	out[n] = '\0';
	return n;
}

void log_vmsg(enum log_level lv, enum log_sub sub, const char *fmt, va_list ap)
{
	char line[LINE_MAX_LEN];
	struct timespec ts;
	int saved = errno; /* callers log strerror(errno) and then test errno */

	clock_gettime(CLOCK_REALTIME, &ts);
	size_t n = log_format(line, sizeof line, journal,
			      (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000, lv, sub, fmt, ap);
	/* One write per line: lines from different threads never interleave (a pipe or
	 * file takes a write of this size whole). */
	for (size_t off = 0; off < n;) {
		ssize_t w = write(out_fd, line + off, n - off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			break;
		off += (size_t)w;
	}
	errno = saved;
}

void log_msg(enum log_level lv, enum log_sub sub, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vmsg(lv, sub, fmt, ap);
	va_end(ap);
}

void log_addr(char *out, const struct sockaddr *sa)
{
	char ip[INET6_ADDRSTRLEN];

	if (sa && sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
		inet_ntop(AF_INET, &in->sin_addr, ip, sizeof ip);
		snprintf(out, LOG_ADDR_LEN, "%s:%u", ip, ntohs(in->sin_port));
	} else if (sa && sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
		if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
			inet_ntop(AF_INET, in6->sin6_addr.s6_addr + 12, ip, sizeof ip);
			snprintf(out, LOG_ADDR_LEN, "%s:%u", ip, ntohs(in6->sin6_port));
		} else {
			inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof ip);
			snprintf(out, LOG_ADDR_LEN, "[%s]:%u", ip, ntohs(in6->sin6_port));
		}
	} else {
		snprintf(out, LOG_ADDR_LEN, "?");
	}
}
