/* config_parse: Go flag syntax, every derper flag's default, derpd's extensions and
 * that none is refused any more. Messages are checked on captured stderr. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <math.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "server/config.h"

#define MAXARGS 32

static char errbuf[65536];

/* Run config_parse on a NULL-terminated argument list (argv[0] added), with stderr
 * captured into errbuf. */
static int parsev(struct config *cfg, const char *first, va_list ap)
{
	char *argv[MAXARGS];
	int argc = 0, saved, rc;
	FILE *tmp = tmpfile();
	size_t n;

	argv[argc++] = (char *)"derpd";
	for (const char *a = first; a != NULL && argc < MAXARGS - 1; a = va_arg(ap, const char *))
		argv[argc++] = (char *)a;
	argv[argc] = NULL;

	assert_non_null(tmp);
	fflush(stderr);
	saved = dup(2);
	dup2(fileno(tmp), 2);
	rc = config_parse(cfg, argc, argv);
	fflush(stderr);
	dup2(saved, 2);
	close(saved);
	rewind(tmp);
	n = fread(errbuf, 1, sizeof errbuf - 1, tmp);
	errbuf[n] = '\0';
	fclose(tmp);
	return rc;
}

static int parse(struct config *cfg, const char *first, ...)
{
	va_list ap;
	int rc;

	va_start(ap, first);
	rc = parsev(cfg, first, ap);
	va_end(ap);
	return rc;
}

#define assert_err_has(s) do { \
	if (strstr(errbuf, (s)) == NULL) \
		fail_msg("stderr lacks \"%s\"; got:\n%.600s", (s), errbuf); \
} while (0)

/* ---- durations ------------------------------------------------------------------ */

static void test_duration_good(void **state)
{
	static const struct { const char *s; int64_t ms; } t[] = {
		{ "0", 0 }, { "0s", 0 }, { "-0s", 0 }, { "+0", 0 }, { "10m", 600000 },
		{ "15s", 15000 }, { "1h30m", 5400000 }, { "500ms", 500 }, { "2s", 2000 },
		{ "1.5s", 1500 }, { ".5s", 500 }, { "1.s", 1000 }, { "+2s", 2000 },
		{ "1h1m1s1ms", 3661001 }, { "1m.5s", 60500 }, { "1000us", 1 }, { "2000\xc2\xb5s", 2 },
		{ "3000\xce\xbcs", 3 }, { "1000000ns", 1 }, { "999us", 0 }, { "1.25h", 4500000 },
		{ "0.001s", 1 }, { "1.0000000000000000000000001s", 1000 }, { "2562047h", 9223369200000LL },
		{ "1s1s", 2000 },
	};

	(void)state;
	for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
		if (config_parse_duration_ms(t[i].s) != t[i].ms)
			fail_msg("\"%s\": want %lld got %lld", t[i].s, (long long)t[i].ms,
				 (long long)config_parse_duration_ms(t[i].s));
}

static void test_duration_bad(void **state)
{
	static const char *const t[] = {
		"", "s", "1", "1x", "-1s", "-.5ms", "1.5", ".s", "-", "+", "1s ", " 1s", "1 s",
		"1ss", "--1s", "1e3s", "2562048h", "9223372036854775808ns", "1S", "1sec", "0x10s",
		"1m-1s", ".", "1..5s",
	};

	(void)state;
	for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
		if (config_parse_duration_ms(t[i]) != -1)
			fail_msg("\"%s\" accepted as %lld", t[i], (long long)config_parse_duration_ms(t[i]));
	assert_int_equal(config_parse_duration_ms(NULL), -1);
}

/* ---- defaults ------------------------------------------------------------------- */

static void test_defaults(void **state)
{
	struct config c;
	cpu_set_t set;

	(void)state;
	assert_int_equal(parse(&c, "-a", ":8080", "-c", "/tmp/k", NULL), 0);
	assert_int_equal(c.dev, 0);
	assert_int_equal(c.http_port, 80);
	assert_int_equal(c.stun_port, 3478);
	assert_string_equal(c.certmode, "letsencrypt");
	assert_string_equal(c.hostname, "derp.tailscale.com");
	assert_string_equal(c.acme_eab_kid, "");
	assert_string_equal(c.acme_eab_key, "");
	assert_string_equal(c.acme_email, "");
	assert_int_equal(c.acme_ip_certs, 0);
	assert_int_equal(c.run_stun, 1);
	assert_int_equal(c.run_derp, 1);
	assert_string_equal(c.home, "");
	assert_string_equal(c.mesh_with, "");
	assert_string_equal(c.secrets_url, "");
	assert_string_equal(c.secrets_path_prefix, "prod/derp");
	assert_string_equal(c.bootstrap_dns_names, "");
	assert_string_equal(c.unpublished_bootstrap_dns_names, "");
	assert_int_equal(c.verify_clients, 0);
	assert_string_equal(c.verify_client_url, "");
	assert_int_equal(c.verify_client_url_fail_open, 1);
	assert_string_equal(c.socket_path, "");
	assert_true(isinf(c.accept_connection_limit) && c.accept_connection_limit > 0);
	assert_true(c.accept_connection_burst == INT64_MAX);
	assert_string_equal(c.rate_config, "");
	assert_int_equal(c.tcp_keepalive_ms, 600000);
	assert_int_equal(c.tcp_user_timeout_ms, 15000);
	assert_int_equal(c.tcp_write_timeout_ms, 2000);
	assert_int_equal(c.ace, 0);
	assert_int_equal(c.verbose, 0);
	assert_int_equal(c.keepalive_ms, 60000);
	assert_int_equal(sched_getaffinity(0, sizeof set, &set), 0);
	assert_int_equal(c.workers, CPU_COUNT(&set));
	assert_int_equal(c.tls, 0);
	assert_string_equal(c.listen_host, "");
	assert_int_equal(c.listen_port, 8080);
	assert_string_equal(c.config_path, "/tmp/k");

	/* Nothing but -c: the default -a :443 means TLS, with the port-80 listener on. */
	assert_int_equal(parse(&c, "-c", "/tmp/k", NULL), 0);
	assert_string_equal(c.addr, ":443");
	assert_int_equal(c.tls, 1);
	assert_int_equal(c.listen_port, 443);
	assert_int_equal(c.http_port, 80);
}

/* certdir, secrets-cache-dir and mesh-psk-file follow $HOME / $XDG_CACHE_HOME. */
static void test_env_defaults(void **state)
{
	char home[] = "/tmp/derpd-cfg-XXXXXX", want[512], keys[512];
	const char *old_home = getenv("HOME"), *old_xdg = getenv("XDG_CACHE_HOME");
	char *sh = old_home ? strdup(old_home) : NULL, *sx = old_xdg ? strdup(old_xdg) : NULL;
	struct stat st;
	int sys_psk = stat("/home/derp/keys/derp-mesh.key", &st) == 0, fd;
	struct config c;

	(void)state;
	assert_non_null(mkdtemp(home));
	setenv("HOME", home, 1);
	unsetenv("XDG_CACHE_HOME");
	assert_int_equal(parse(&c, "-dev", NULL), 0);
	snprintf(want, sizeof want, "%s/.cache/tailscale/derper-certs", home);
	assert_string_equal(c.certdir, want);
	snprintf(want, sizeof want, "%s/.cache/derper-secrets", home);
	assert_string_equal(c.secrets_cache_dir, want);
	if (!sys_psk)
		assert_string_equal(c.mesh_psk_file, "");

	setenv("XDG_CACHE_HOME", "/var/cache/x", 1);
	assert_int_equal(parse(&c, "-dev", NULL), 0);
	assert_string_equal(c.certdir, "/var/cache/x/tailscale/derper-certs");

	/* An auto-detected mesh key file is a default, not an explicit setting: no error. */
	snprintf(keys, sizeof keys, "%s/keys", home);
	assert_int_equal(mkdir(keys, 0700), 0);
	snprintf(want, sizeof want, "%s/keys/derp-mesh.key", home);
	fd = open(want, O_CREAT | O_WRONLY, 0600);
	assert_true(fd >= 0);
	close(fd);
	assert_int_equal(parse(&c, "-a", ":8080", "-c", "/tmp/k", NULL), 0);
	assert_string_equal(c.mesh_psk_file, sys_psk ? "/home/derp/keys/derp-mesh.key" : want);
	/* ... and naming it explicitly is the default value, so also fine. */
	snprintf(keys, sizeof keys, "%s", c.mesh_psk_file);
	assert_int_equal(parse(&c, "-a", ":8080", "-c", "/tmp/k", "-mesh-psk-file", keys, NULL), 0);
	snprintf(keys, sizeof keys, "%s/keys", home);

	unlink(want);
	rmdir(keys);
	rmdir(home);
	if (sh) setenv("HOME", sh, 1); else unsetenv("HOME");
	if (sx) setenv("XDG_CACHE_HOME", sx, 1); else unsetenv("XDG_CACHE_HOME");
	free(sh);
	free(sx);
}

/* ---- syntax --------------------------------------------------------------------- */

static void test_syntax_forms(void **state)
{
	struct config c;

	(void)state;
	assert_int_equal(parse(&c, "-a=:8081", "-c=/k", NULL), 0);
	assert_int_equal(c.listen_port, 8081);
	assert_string_equal(c.config_path, "/k");
	assert_int_equal(parse(&c, "--a=:8082", "--c", "/k2", NULL), 0);
	assert_int_equal(c.listen_port, 8082);
	assert_string_equal(c.config_path, "/k2");
	assert_int_equal(parse(&c, "-a", ":8083", "-c", "/k", NULL), 0);
	assert_int_equal(c.listen_port, 8083);
	assert_int_equal(parse(&c, "--a", ":8084", "-c", "/k", "--hostname=h.example", NULL), 0);
	assert_int_equal(c.listen_port, 8084);
	assert_string_equal(c.hostname, "h.example");
	/* A value is taken even when it starts with '-', as Go does. */
	assert_int_equal(parse(&c, "-dev", "-hostname", "-x", NULL), 0);
	assert_string_equal(c.hostname, "-x");
	/* "=" inside a value stays. */
	assert_int_equal(parse(&c, "-dev", "-hostname=a=b", NULL), 0);
	assert_string_equal(c.hostname, "a=b");
	/* Last one wins. */
	assert_int_equal(parse(&c, "-dev", "-stun-port=1", "--stun-port", "2", NULL), 0);
	assert_int_equal(c.stun_port, 2);
	/* "--" ends the flags. */
	assert_int_equal(parse(&c, "-dev", "--", NULL), 0);
}

static void test_syntax_errors(void **state)
{
	struct config c;

	(void)state;
	assert_int_equal(parse(&c, "-dev", "-bogus", NULL), 2);
	assert_err_has("flag provided but not defined: -bogus");
	assert_err_has("Usage:");
	assert_int_equal(parse(&c, "--bogus=1", NULL), 2);
	assert_err_has("flag provided but not defined: -bogus");
	assert_int_equal(parse(&c, "-dev", "-a", NULL), 2);
	assert_err_has("flag needs an argument: -a");
	assert_int_equal(parse(&c, "---dev", NULL), 2);
	assert_err_has("bad flag syntax: ---dev");
	assert_int_equal(parse(&c, "-=x", NULL), 2);
	assert_err_has("bad flag syntax");
	assert_int_equal(parse(&c, "-dev", "stray", NULL), 2);
	assert_err_has("unexpected argument \"stray\"");
	assert_int_equal(parse(&c, "-dev", "-", NULL), 2);
	assert_int_equal(parse(&c, "-dev", "--", "-a", NULL), 2);
	assert_err_has("unexpected argument \"-a\"");
	/* A flag after a positional argument is not parsed: Go stops at the first one. */
	assert_int_equal(parse(&c, "x", "-dev", NULL), 2);
}

static void test_bools(void **state)
{
	static const struct { const char *arg; int want; } t[] = {
		{ "-verbose", 1 }, { "--verbose", 1 }, { "-verbose=true", 1 }, { "-verbose=1", 1 },
		{ "-verbose=t", 1 }, { "-verbose=T", 1 }, { "-verbose=TRUE", 1 }, { "-verbose=True", 1 },
		{ "-verbose=false", 0 }, { "-verbose=0", 0 }, { "-verbose=f", 0 }, { "-verbose=F", 0 },
		{ "-verbose=FALSE", 0 }, { "--verbose=False", 0 },
	};
	static const char *const bad[] = { "-verbose=yes", "-verbose=", "-verbose=tRUE", "-verbose=2" };
	struct config c;

	(void)state;
	for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
		assert_int_equal(parse(&c, "-dev", t[i].arg, NULL), 0);
		if (c.verbose != t[i].want)
			fail_msg("%s: want %d", t[i].arg, t[i].want);
	}
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		assert_int_equal(parse(&c, "-dev", bad[i], NULL), 2);
		assert_err_has("invalid value");
		assert_err_has("for flag -verbose");
	}
	assert_int_equal(parse(&c, "-dev", "-stun=false", "-derp=0", NULL), 0);
	assert_int_equal(c.run_stun, 0);
	assert_int_equal(c.run_derp, 0);
	/* "-stun false": false is a positional argument, as in Go. */
	assert_int_equal(parse(&c, "-dev", "-stun", "false", NULL), 2);
	assert_err_has("unexpected argument \"false\"");
}

static void test_ints(void **state)
{
	static const struct { const char *arg; int want; } t[] = {
		{ "-stun-port=0", 0 }, { "-stun-port=65535", 65535 }, { "-stun-port=0x10", 16 },
		{ "-stun-port=0X1f", 31 }, { "-stun-port=0o17", 15 }, { "-stun-port=017", 15 },
		{ "-stun-port=0b101", 5 }, { "-stun-port=1_000", 1000 }, { "-stun-port=0x_10", 16 },
		{ "-stun-port=+5", 5 }, { "-stun-port=-0", 0 },
	};
	static const char *const bad[] = {
		"-stun-port=abc", "-stun-port=1.5", "-stun-port=", "-stun-port=08", "-stun-port=_1",
		"-stun-port=1__0", "-stun-port=1_", "-stun-port=0x", "-stun-port= 1",
		"-stun-port=99999999999999999999", "-stun-port=-",
	};
	struct config c;

	(void)state;
	for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
		assert_int_equal(parse(&c, "-dev", t[i].arg, NULL), 0);
		if (c.stun_port != t[i].want)
			fail_msg("%s: want %d got %d", t[i].arg, t[i].want, c.stun_port);
	}
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		if (parse(&c, "-dev", bad[i], NULL) != 2)
			fail_msg("%s accepted", bad[i]);
		assert_err_has("invalid value");
	}
	assert_int_equal(parse(&c, "-dev", "-stun-port=65536", NULL), 2);
	assert_err_has("-stun-port 65536 out of range");
	assert_int_equal(parse(&c, "-dev", "-stun-port=-1", NULL), 2);
	assert_err_has("-stun-port");
	assert_int_equal(parse(&c, "-dev", "-stun-port=9223372036854775807", NULL), 2);
	assert_err_has("invalid value \"9223372036854775807\" for flag -stun-port: value out of range");
	assert_int_equal(parse(&c, "-dev", "-http-port=65536", NULL), 2);
	assert_err_has("-http-port");
	assert_int_equal(parse(&c, "-dev", "-http-port=-2", NULL), 2);
	assert_err_has("-http-port");

	assert_int_equal(parse(&c, "-dev", "--workers", "1", NULL), 0);
	assert_int_equal(c.workers, 1);
	assert_int_equal(parse(&c, "-dev", "--workers=64", NULL), 0);
	assert_int_equal(c.workers, 64);
	assert_int_equal(parse(&c, "-dev", "--workers=0", NULL), 2);
	assert_err_has("--workers 0 out of range");
	assert_int_equal(parse(&c, "-dev", "--workers=-3", NULL), 2);
	assert_int_equal(parse(&c, "-dev", "--workers=1025", NULL), 2);
	assert_int_equal(parse(&c, "-dev", "--workers=x", NULL), 2);
}

static void test_float_int64(void **state)
{
	static const char *const dflt[] = {
		"-accept-connection-limit=inf", "-accept-connection-limit=+Inf",
		"-accept-connection-limit=Inf", "-accept-connection-limit=infinity",
		"-accept-connection-burst=9223372036854775807",
		"-accept-connection-burst=0x7fffffffffffffff",
	};
	struct config c;

	(void)state;
	/* Infinity and the largest burst, spelled in the ways Go's flag package takes. */
	for (size_t i = 0; i < sizeof dflt / sizeof dflt[0]; i++)
		if (parse(&c, "-dev", dflt[i], NULL) != 0)
			fail_msg("%s refused: %s", dflt[i], errbuf);
	assert_int_equal(parse(&c, "-dev", "-accept-connection-limit=10", NULL), 0);
	assert_true(c.accept_connection_limit == 10.0);
	assert_int_equal(parse(&c, "-dev", "-accept-connection-limit", "0.5", NULL), 0);
	assert_true(c.accept_connection_limit == 0.5);
	/* A rate must be a number >= 0: -inf and NaN would make no sense of the bucket. */
	assert_int_equal(parse(&c, "-dev", "-accept-connection-limit", "-inf", NULL), 2);
	assert_err_has("-accept-connection-limit");
	assert_int_equal(parse(&c, "-dev", "-accept-connection-limit=nan", NULL), 2);
	assert_err_has("-accept-connection-limit");
	assert_int_equal(parse(&c, "-dev", "-accept-connection-burst=-1", NULL), 2);
	assert_err_has("-accept-connection-burst");
	assert_int_equal(parse(&c, "-dev", "-accept-connection-limit=abc", NULL), 2);
	assert_err_has("invalid value \"abc\" for flag -accept-connection-limit");
	assert_int_equal(parse(&c, "-dev", "-accept-connection-limit=1e999", NULL), 2);
	assert_err_has("invalid value");
	assert_int_equal(parse(&c, "-dev", "-accept-connection-limit= 5", NULL), 2);
	assert_err_has("invalid value");
	assert_int_equal(parse(&c, "-dev", "-accept-connection-burst=9223372036854775808", NULL), 2);
	assert_err_has("invalid value");
	assert_int_equal(parse(&c, "-dev", "-accept-connection-burst=5", NULL), 0);
	assert_int_equal(c.accept_connection_burst, 5);
}

static void test_duration_flags(void **state)
{
	struct config c;

	(void)state;
	assert_int_equal(parse(&c, "-dev", "-tcp-keepalive-time=1h30m", "-tcp-user-timeout", "1.5s",
			       "--tcp-write-timeout=0", "--keepalive-interval", "500ms", NULL), 0);
	assert_int_equal(c.tcp_keepalive_ms, 5400000);
	assert_int_equal(c.tcp_user_timeout_ms, 1500);
	assert_int_equal(c.tcp_write_timeout_ms, 0);
	assert_int_equal(c.keepalive_ms, 500);
	assert_int_equal(parse(&c, "-dev", "-tcp-user-timeout=-1s", NULL), 2);
	assert_err_has("-tcp-user-timeout must not be negative");
	assert_int_equal(parse(&c, "-dev", "-tcp-write-timeout=-1us", NULL), 2);
	assert_err_has("-tcp-write-timeout must not be negative");
	assert_int_equal(parse(&c, "-dev", "-tcp-keepalive-time=10", NULL), 2);
	assert_err_has("invalid value \"10\" for flag -tcp-keepalive-time");
	assert_int_equal(parse(&c, "-dev", "--keepalive-interval=0", NULL), 2);
	assert_err_has("--keepalive-interval");
	assert_int_equal(parse(&c, "-dev", "--keepalive-interval=-5s", NULL), 2);
}

/* ---- -a, -dev, TLS, -certmode, -home, -c ------------------------------------------ */

static void test_addr(void **state)
{
	static const struct { const char *a; const char *host; int port; } good[] = {
		{ ":8080", "", 8080 }, { "127.0.0.1:9", "127.0.0.1", 9 }, { "[::1]:3340", "::1", 3340 },
		{ "[fe80::1%lo]:1", "fe80::1%lo", 1 }, { "localhost:0", "localhost", 0 },
		{ ":http", "", 80 }, { ":65535", "", 65535 }, { "[]:7", "", 7 },
	};
	static const char *const bad[] = {
		"8080", "::1:80", "[::1]", "[::1]80", "[::1:80", ":", ":65536", ":-1", ":8o",
		"a[b:1", "[a]]:1", "[a]:1:2", "[a[b]:1", ":no-such-service-derpd", "",
	};
	struct config c;

	(void)state;
	for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
		if (parse(&c, "-c", "/k", "-a", good[i].a, NULL) != 0)
			fail_msg("-a %s refused: %s", good[i].a, errbuf);
		assert_string_equal(c.listen_host, good[i].host);
		assert_int_equal(c.listen_port, good[i].port);
		assert_int_equal(c.tls, 0);
	}
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		if (parse(&c, "-c", "/k", "-a", bad[i], NULL) != 2)
			fail_msg("-a \"%s\" accepted", bad[i]);
		assert_err_has("invalid -a address");
	}
}

static void test_dev(void **state)
{
	struct config c;

	(void)state;
	/* -dev needs no -c and overrides -a. */
	assert_int_equal(parse(&c, "-dev", NULL), 0);
	assert_string_equal(c.addr, ":3340");
	assert_int_equal(c.listen_port, 3340);
	assert_string_equal(c.config_path, "");
	assert_int_equal(c.tls, 0);
	assert_int_equal(parse(&c, "-a", ":9999", "-dev", NULL), 0);
	assert_int_equal(c.listen_port, 3340);
	assert_int_equal(parse(&c, "-dev=false", "-a", ":9999", "-c", "/k", NULL), 0);
	assert_int_equal(c.listen_port, 9999);
}

static void test_tls_and_certmode(void **state)
{
	struct config c;

	(void)state;
	/* TLS mode with its port-80 listener (default 80, any port, or -1 for none) */
	assert_int_equal(parse(&c, "-c", "/k", "-a", "1.2.3.4:443", NULL), 0);
	assert_int_equal(c.tls, 1);
	assert_int_equal(c.http_port, 80);
	assert_string_equal(c.listen_host, "1.2.3.4");
	assert_int_equal(parse(&c, "-c", "/k", "-a", "1.2.3.4:443", "-http-port=-1", NULL), 0);
	assert_int_equal(c.tls, 1);
	assert_int_equal(c.http_port, -1);
	assert_int_equal(parse(&c, "-c", "/k", "-a", ":https", "-http-port=8080", NULL), 0);
	assert_int_equal(c.tls, 1);
	assert_int_equal(c.http_port, 8080);
	assert_int_equal(parse(&c, "-c", "/k", "-a", ":8080", "-certmode", "manual", NULL), 0);
	assert_int_equal(c.tls, 1);
	assert_int_equal(c.http_port, 80);
	assert_int_equal(parse(&c, "-c", "/k", "-a", ":8080", "-certmode", "manual",
			       "-http-port", "-1", NULL), 0);
	assert_int_equal(c.tls, 1);
	assert_int_equal(parse(&c, "-c", "/k", "-a", "[::1]:8443", "-certmode", "manual",
			       "-http-port", "0", NULL), 0);
	assert_int_equal(c.tls, 1);
	assert_int_equal(c.http_port, 0);
	assert_string_equal(c.listen_host, "::1");
	assert_int_equal(parse(&c, "-dev", "-certmode=manual", "-http-port=-1", NULL), 0);
	assert_int_equal(c.tls, 1);
	/* Plain HTTP: -http-port is unused, as in derper. */
	assert_int_equal(parse(&c, "-c", "/k", "-a", ":8080", "-http-port=8081", NULL), 0);
	assert_int_equal(c.tls, 0);
	assert_int_equal(parse(&c, "-c", "/k", "-a", ":8080", "-certmode", "gcp", NULL), 0);
	assert_string_equal(c.certmode, "gcp");
	assert_int_equal(parse(&c, "-c", "/k", "-a", ":8080", "-certmode=letsencrypt",
			       "-certdir=/tmp/certs", NULL), 0);
	assert_string_equal(c.certdir, "/tmp/certs");
	assert_int_equal(parse(&c, "-dev", "-certmode=bogus", NULL), 2);
	assert_err_has("unsupport cert mode: \"bogus\"");
}

static void test_home(void **state)
{
	struct config c;

	(void)state;
	assert_int_equal(parse(&c, "-dev", "-home=bogus", NULL), 2);
	assert_err_has("unknown --home value \"bogus\"");
	assert_int_equal(parse(&c, "-dev", "-home=blank", NULL), 0);
	assert_string_equal(c.home, "blank");
	assert_int_equal(parse(&c, "-dev", "-home=https://example.com/", NULL), 0);
	assert_string_equal(c.home, "https://example.com/");
	assert_int_equal(parse(&c, "-dev", "-home=", NULL), 0);
}

/* Every derper flag is built: -ace and the -secrets-* flags parse and are kept (none is
 * refused as "not supported yet" any more). */
static void test_all_supported(void **state)
{
	struct config c;

	(void)state;
	assert_int_equal(parse(&c, "-a", ":8080", "-c", "/k", "--ace", "-secrets-url=https://s",
			       "-secrets-path-prefix=x", "-secrets-cache-dir=/x", NULL), 0);
	assert_int_equal(c.ace, 1);
	assert_string_equal(c.secrets_url, "https://s");
	assert_string_equal(c.secrets_path_prefix, "x");
	assert_string_equal(c.secrets_cache_dir, "/x");
	assert_int_equal(c.secrets_poll_ms, 3600000);
	assert_int_equal(parse(&c, "-a", ":8080", "-c", "/k", "--secrets-poll-interval=0", NULL), 0);
	assert_int_equal(c.secrets_poll_ms, 0);
}

/* Empty -c: root falls back to derper's path, anyone else gets a usage error. */
static void test_config_path_default(void **state)
{
	struct config c;
	int pfd[2], status;
	pid_t pid;
	char buf[512] = "";
	ssize_t n;

	(void)state;
	if (getuid() == 0) {
		assert_int_equal(parse(&c, "-a", ":8080", NULL), 0);
		assert_string_equal(c.config_path, "/var/lib/derper/derper.key");
		assert_err_has("no config path specified; using /var/lib/derper/derper.key");
	}
	/* The non-root case, as nobody when we are root. */
	assert_int_equal(pipe(pfd), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		char *argv[] = { (char *)"derpd", (char *)"-a", (char *)":8080", NULL };
		dup2(pfd[1], 2);
		if (getuid() == 0 && setuid(65534) != 0)
			_exit(99);
		_exit(config_parse(&c, 3, argv));
	}
	close(pfd[1]);
	n = read(pfd[0], buf, sizeof buf - 1);
	close(pfd[0]);
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 2);
	assert_true(n > 0);
	assert_non_null(strstr(buf, "-c <config path> not specified"));
}

/* ---- --help and --version exit: run them in a child ------------------------------ */

static int run_child(const char *a1, const char *a2, char *out, size_t outlen)
{
	int pfd[2], status;
	size_t got = 0;
	ssize_t n;
	pid_t pid;

	assert_int_equal(pipe(pfd), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		char *argv[] = { (char *)"derpd", (char *)a1, (char *)a2, NULL };
		struct config c;
		int null = open("/dev/null", O_WRONLY);
		dup2(pfd[1], 1);
		dup2(null, 2);
		close(pfd[0]);
		_exit(100 + config_parse(&c, a2 ? 3 : 2, argv));
	}
	close(pfd[1]);
	while (got < outlen - 1 && (n = read(pfd[0], out + got, outlen - 1 - got)) > 0)
		got += (size_t)n;
	out[got] = '\0';
	close(pfd[0]);
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	return WEXITSTATUS(status);
}

static void test_help(void **state)
{
	static const char *const forms[] = { "-h", "-help", "--help", "--h" };
	static const char *const names[] = {
		"dev bool", "version bool", "a string", "http-port int", "stun-port int", "c string",
		"certmode string", "certdir string", "hostname string", "acme-eab-kid string",
		"acme-eab-key string", "acme-email string", "acme-ip-certs bool", "stun bool",
		"derp bool", "home string", "mesh-psk-file string", "mesh-with string",
		"secrets-url string", "secrets-path-prefix string", "secrets-cache-dir string",
		"bootstrap-dns-names string", "unpublished-bootstrap-dns-names string",
		"verify-clients bool", "verify-client-url string", "verify-client-url-fail-open bool",
		"socket string", "accept-connection-limit float", "accept-connection-burst int",
		"rate-config string", "tcp-keepalive-time duration", "tcp-user-timeout duration",
		"tcp-write-timeout duration", "ace bool", "workers int", "verbose bool",
		"keepalive-interval duration",
	};
	static char out[65536];
	char want[128];

	(void)state;
	for (size_t i = 0; i < sizeof forms / sizeof forms[0]; i++) {
		assert_int_equal(run_child("-dev", forms[i], out, sizeof out), 0);
		assert_non_null(strstr(out, "Usage: derpd"));
	}
	for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
		snprintf(want, sizeof want, "-%s\n", names[i]);
		if (strstr(out, want) == NULL)
			fail_msg("--help lacks \"%s\"", want);
	}
	assert_non_null(strstr(out, "(default \":443\")"));
	assert_non_null(strstr(out, "(default 10m0s)"));
	assert_non_null(strstr(out, "(default +Inf)"));
	assert_non_null(strstr(out, "(default 9223372036854775807)"));
	assert_non_null(strstr(out, "(default 1m0s) (derpd extension)"));
	assert_null(strstr(out, "not supported yet")); /* every flag is built */
	/* help is not an error: nothing after it is parsed, even bad flags. */
	assert_int_equal(run_child("--help", "-bogus", out, sizeof out), 0);
}

static void test_version(void **state)
{
	char out[256];

	(void)state;
	assert_int_equal(run_child("--version", NULL, out, sizeof out), 0);
	assert_string_equal(out, "derpd " DERPD_VERSION "\n");
	assert_int_equal(run_child("-version", NULL, out, sizeof out), 0);
	assert_string_equal(out, "derpd " DERPD_VERSION "\n");
	/* -version=false is just a flag; parsing goes on (and -dev succeeds). */
	assert_int_equal(run_child("-version=false", "-dev", out, sizeof out), 100);
	assert_string_equal(out, "");
	/* A bad flag beside --version is still a usage error, as in Go. */
	assert_int_equal(run_child("--version", "-bogus", out, sizeof out), 102);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_duration_good),
		cmocka_unit_test(test_duration_bad),
		cmocka_unit_test(test_defaults),
		cmocka_unit_test(test_env_defaults),
		cmocka_unit_test(test_syntax_forms),
		cmocka_unit_test(test_syntax_errors),
		cmocka_unit_test(test_bools),
		cmocka_unit_test(test_ints),
		cmocka_unit_test(test_float_int64),
		cmocka_unit_test(test_duration_flags),
		cmocka_unit_test(test_addr),
		cmocka_unit_test(test_dev),
		cmocka_unit_test(test_tls_and_certmode),
		cmocka_unit_test(test_home),
		cmocka_unit_test(test_all_supported),
		cmocka_unit_test(test_config_path_default),
		cmocka_unit_test(test_help),
		cmocka_unit_test(test_version),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
