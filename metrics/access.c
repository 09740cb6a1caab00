/* Who may see /debug/ (SERVER.md §6.4, upstream tsweb.AllowDebugAccess): loopback and
 * Tailscale addresses, plus what the operator allows through three environment
 * variables. Read once at start; a bad CIDR is fatal, as in derper. */
#include "metrics/internal.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct cidr {
	int family;      /* AF_INET or AF_INET6 */
	uint8_t addr[16];
	int bits;
};

static char allow_ip[INET6_ADDRSTRLEN + 1]; /* TS_ALLOW_DEBUG_IP */
static char key_path[4096];                 /* TS_DEBUG_KEY_PATH */
static struct cidr *cidrs; /* TS_DEBUG_TRUSTED_CIDRS: as many as given, as in derper */
static int ncidrs;

/* The 4 or 16 address bytes of sa, IPv4-mapped IPv6 reduced to IPv4. */
static int sockaddr_ip(const struct sockaddr *sa, uint8_t out[16])
{
	if (sa == NULL)
		return 0;
	if (sa->sa_family == AF_INET) {
		memcpy(out, &((const struct sockaddr_in *)sa)->sin_addr, 4);
		return AF_INET;
	}
	if (sa->sa_family == AF_INET6) {
		const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
		if (IN6_IS_ADDR_V4MAPPED(a)) {
			memcpy(out, a->s6_addr + 12, 4);
			return AF_INET;
		}
		memcpy(out, a->s6_addr, 16);
		return AF_INET6;
	}
	return 0;
}

void sockaddr_ip_string(const struct sockaddr *sa, char *out, size_t n)
{
	uint8_t ip[16];
	int fam = sockaddr_ip(sa, ip);
	if (n == 0)
		return;
	out[0] = '\0';
	if (fam == 0 || inet_ntop(fam, ip, out, (socklen_t)n) == NULL)
		out[0] = '\0';
}

static int prefix_match(const uint8_t *a, const uint8_t *p, int bits)
{
	int full = bits / 8, rest = bits % 8;
	if (memcmp(a, p, (size_t)full) != 0)
		return 0;
	if (rest == 0)
		return 1;
	uint8_t mask = (uint8_t)(0xff << (8 - rest));
	return (a[full] & mask) == (p[full] & mask);
}

int debug_addr_is_tailscale(const struct sockaddr *sa)
{
	static const uint8_t cgnat[4] = { 100, 64, 0, 0 }, chromeos[4] = { 100, 115, 92, 0 };
	static const uint8_t ula[16] = { 0xfd, 0x7a, 0x11, 0x5c, 0xa1, 0xe0 };
	uint8_t ip[16];
	switch (sockaddr_ip(sa, ip)) {
	case AF_INET:
		return prefix_match(ip, cgnat, 10) && !prefix_match(ip, chromeos, 23);
	case AF_INET6:
		return prefix_match(ip, ula, 48);
	}
	return 0;
}

static int addr_is_loopback(const struct sockaddr *sa)
{
	uint8_t ip[16];
	static const uint8_t v6lo[16] = { [15] = 1 };
	switch (sockaddr_ip(sa, ip)) {
	case AF_INET:
		return ip[0] == 127;
	case AF_INET6:
		return memcmp(ip, v6lo, 16) == 0;
	}
	return 0;
}

static int parse_cidr(const char *s, struct cidr *c)
{
	char tmp[INET6_ADDRSTRLEN + 8];
	const char *slash = strchr(s, '/');
	if (slash == NULL || (size_t)(slash - s) >= INET6_ADDRSTRLEN)
		return -1;
	memcpy(tmp, s, (size_t)(slash - s));
	tmp[slash - s] = '\0';
	char *end;
	if (!isdigit((unsigned char)slash[1]))
		return -1;
	long bits = strtol(slash + 1, &end, 10);
	if (*end != '\0')
		return -1;
	memset(c, 0, sizeof *c);
	if (inet_pton(AF_INET, tmp, c->addr) == 1)
		c->family = AF_INET;
	else if (inet_pton(AF_INET6, tmp, c->addr) == 1)
		c->family = AF_INET6;
	else
		return -1;
	if (bits < 0 || bits > (c->family == AF_INET ? 32 : 128))
		return -1;
	c->bits = (int)bits;
	return 0;
}

int debug_access_init(char *err, size_t errlen)
{
	const char *v = getenv("TS_ALLOW_DEBUG_IP");
	snprintf(allow_ip, sizeof allow_ip, "%s", v ? v : "");
	v = getenv("TS_DEBUG_KEY_PATH");
	snprintf(key_path, sizeof key_path, "%s", v ? v : "");
	ncidrs = 0;
	free(cidrs);
	cidrs = NULL;
	v = getenv("TS_DEBUG_TRUSTED_CIDRS");
	if (v == NULL || v[0] == '\0')
		return 0;
	char *list = strdup(v), *save = NULL;
	if (list == NULL)
		return snprintf(err, errlen, "out of memory"), -1;
	for (char *tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		while (isspace((unsigned char)*tok))
			tok++;
		char *e = tok + strlen(tok);
		while (e > tok && isspace((unsigned char)e[-1]))
			*--e = '\0';
		if (*tok == '\0') /* "a, ,b": derper skips empty entries */
			continue;
		struct cidr *grown = realloc(cidrs, (size_t)(ncidrs + 1) * sizeof *cidrs);
		if (grown == NULL) {
			snprintf(err, errlen, "TS_DEBUG_TRUSTED_CIDRS: out of memory");
			free(list);
			return -1;
		}
		cidrs = grown;
		if (parse_cidr(tok, &cidrs[ncidrs]) != 0) {
			snprintf(err, errlen, "TS_DEBUG_TRUSTED_CIDRS: invalid CIDR \"%s\"", tok);
			free(list);
			return -1;
		}
		ncidrs++;
	}
	free(list);
	return 0;
}

/* ?debugkey= grants access when it equals the trimmed content of TS_DEBUG_KEY_PATH. */
static int debugkey_ok(const char *debugkey)
{
	if (debugkey == NULL || debugkey[0] == '\0' || key_path[0] == '\0')
		return 0;
	FILE *f = fopen(key_path, "r");
	if (f == NULL)
		return 0;
	char buf[4096];
	size_t n = fread(buf, 1, sizeof buf - 1, f);
	fclose(f);
	buf[n] = '\0';
	char *s = buf, *e = buf + n;
	while (s < e && isspace((unsigned char)*s))
		s++;
	while (e > s && isspace((unsigned char)e[-1]))
		e--;
	return (size_t)(e - s) == strlen(debugkey) && memcmp(s, debugkey, (size_t)(e - s)) == 0;
}

int debug_access_allowed(const struct sockaddr *peer, int is_get, const char *debugkey,
			 int has_forwarded_for)
{
	if (is_get && debugkey_ok(debugkey))
		return 1;
	if (has_forwarded_for)
		return 0; /* upstream is conservative behind proxies */
	uint8_t ip[16];
	int fam = sockaddr_ip(peer, ip);
	if (fam == 0)
		return 0;
	if (addr_is_loopback(peer) || debug_addr_is_tailscale(peer))
		return 1;
	if (allow_ip[0] != '\0') {
		char s[INET6_ADDRSTRLEN];
		sockaddr_ip_string(peer, s, sizeof s);
		if (strcmp(s, allow_ip) == 0)
			return 1;
	}
	for (int i = 0; i < ncidrs; i++)
		if (cidrs[i].family == fam && prefix_match(ip, cidrs[i].addr, cidrs[i].bits))
			return 1;
	return 0;
}
