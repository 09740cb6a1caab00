/* Test-only helpers for test/e2e/test_probe*.c: a region of derpd nodes serving TLS with
 * certificates from a test CA (one DNS name, "localhost", as a real node has), meshed,
 * with STUN; running derpd-probe (next to DERPD_BIN: <build>/tools/derpd-probe) and reading
 * its report. Include after harness.h, test_mesh_util.h and test_tls_util.h. */
#ifndef DERPD_TEST_PROBE_UTIL_H
#define DERPD_TEST_PROBE_UTIL_H
#include <libgen.h>
#include <sys/stat.h>

#define PU_NAME "localhost"

/* The build directory: DERPD_BIN's (build-x/derpd -> build-x). */
__attribute__((unused)) static const char *pu_build_dir(void)
{
	static char dir[512];
	const char *bin = getenv("DERPD_BIN");
	char tmp[512];

	snprintf(tmp, sizeof tmp, "%s", bin && *bin ? bin : "./build/derpd");
	snprintf(dir, sizeof dir, "%s", dirname(tmp));
	return dir;
}

__attribute__((unused)) static const char *pu_probe_bin(void)
{
	static char path[600];
	snprintf(path, sizeof path, "%s/tools/derpd-probe", pu_build_dir());
	return path;
}

/* A certificate for dns (or ip) signed by ca, valid from nb to na (Unix time), written as
 * <dir>/<base>.crt and .key: derpd's manual mode files. */
__attribute__((unused)) static void pu_leaf(struct tu_ca *ca, const char *dir, const char *base,
					    const char *dns, const char *ip, time_t nb, time_t na)
{
	uint8_t ipb[4], *der;
	size_t len;
	struct cert_tmpl t = { .cn = dns ? dns : ip, .issuer_cn = TU_CA_CN, .dns = dns,
			       .not_before = nb, .not_after = na };
	ecc_key k;
	char path[300];

	if (ip) {
		assert_int_equal(inet_pton(AF_INET, ip, ipb), 1);
		t.ip = ipb;
		t.iplen = 4;
	}
	assert_int_equal(eckey_generate(&k), 0);
	assert_int_equal(cert_build(&k, &ca->key, &t, &der, &len), 0);
	char *crt = pem_encode("CERTIFICATE", der, len), *key = eckey_to_pem(&k);
	assert_non_null(crt);
	assert_non_null(key);
	snprintf(path, sizeof path, "%s/%s.crt", dir, base);
	tu_write(path, crt, strlen(crt));
	snprintf(path, sizeof path, "%s/%s.key", dir, base);
	tu_write(path, key, strlen(key));
	free(crt);
	free(key);
	free(der);
	wc_ecc_free(&k);
}

struct pu_node {
	struct harness_server *s;
	struct harness_server p80; /* the port-80 listener (metrics from loopback) */
	uint16_t port, stun_port;
	int resv_fd;
};

/* The number after tag in the server's log, 0 if absent. */
__attribute__((unused)) static long pu_log_num(const struct harness_server *s, const char *tag)
{
	size_t n;
	char *log = file_read(s->log_path, &n), *p = log ? strstr(log, tag) : NULL;
	long v = p ? strtol(p + strlen(tag), NULL, 10) : 0;
	free(log);
	return v;
}

/* A TLS node on its reserved port: -hostname host with the certificate in certdir, STUN
 * on an ephemeral port, meshed with `with` (NULL: no mesh). */
__attribute__((unused)) static void pu_node_start(struct pu_node *n, const char *dir,
						  const char *certdir, const char *host,
						  const char *psk, const char *with,
						  const char *ca_file)
{
	char addr[32], key[300];

	if (!n->port)
		n->port = mu_reserve_port(&n->resv_fd);
	snprintf(addr, sizeof addr, "127.0.0.1:%u", n->port);
	snprintf(key, sizeof key, "%s/node%u.key", dir, n->port);
	const char *extra[] = { "-a", addr, "-c", key, "-certmode", "manual", "-hostname", host,
				"-certdir", certdir, "-http-port", "0", "-stun=true", "-stun-port",
				"0", "-mesh-psk-file", psk, with ? "-mesh-with" : NULL, with,
				"--mesh-ca-file", ca_file, NULL };
	n->s = harness_start_opts(extra, HARNESS_NO_PROBE);
	assert_int_equal(n->s->port, n->port);
	n->p80 = *n->s;
	n->p80.port = (uint16_t)pu_log_num(n->s, "serving port-80 HTTP on 127.0.0.1:");
	n->stun_port = (uint16_t)pu_log_num(n->s, "STUN server listening on 127.0.0.1:");
	assert_true(n->p80.port != 0);
	assert_true(n->stun_port != 0);
}

__attribute__((unused)) static void pu_node_stop(struct pu_node *n)
{
	harness_stop(n->s);
	n->s = NULL;
	if (n->resv_fd > 0)
		close(n->resv_fd);
	n->resv_fd = 0;
}

/* One DERP map node entry (JSON), appended to buf. */
__attribute__((unused)) static void pu_map_node(char *buf, size_t cap, const char *name,
						const char *host, uint16_t port, uint16_t stun,
						const char *ipv6)
{
	size_t l = strlen(buf);
	snprintf(buf + l, cap - l,
		 "%s{\"Name\":\"%s\",\"RegionID\":900,\"HostName\":\"%s\",\"IPv4\":\"127.0.0.1\","
		 "%s%s%s\"DERPPort\":%u,\"STUNPort\":%u}",
		 buf[l ? l - 1 : 0] == '}' ? "," : "", name, host, ipv6 ? "\"IPv6\":\"" : "",
		 ipv6 ? ipv6 : "", ipv6 ? "\"," : "", port, stun);
}

/* Write {"Regions":{"900":{... nodes ...}}} to dir/name; the file:// URL goes to url. */
__attribute__((unused)) static void pu_map_write(char *url, size_t cap, const char *dir,
						 const char *name, const char *nodes)
{
	char path[300];
	size_t l = strlen(nodes) + 256;
	char *json = malloc(l);

	assert_non_null(json);
	snprintf(json, l, "{\"Regions\":{\"900\":{\"RegionID\":900,\"RegionCode\":\"t\","
		 "\"RegionName\":\"Test region\",\"Nodes\":[%s]}}}", nodes);
	snprintf(path, sizeof path, "%s/%s", dir, name);
	tu_write(path, json, strlen(json));
	free(json);
	snprintf(url, cap, "file://%s", path);
}

/* Run derpd-probe with args (NULL-ended) and env entries ("K=V", NULL-ended, added to ours)
 * until it exits or timeout_ms passes (then it is killed: -1). stdout goes to out, stderr
 * to err (either may be NULL). Returns the exit status; *took_ms how long it ran. */
__attribute__((unused)) static int pu_run_bin(const char *bin, const char *const *args,
					      const char *const *env, int timeout_ms, char *out,
					      size_t ocap, char *err, size_t ecap, int64_t *took_ms)
{
	const char *argv[48];
	int po[2], pe[2], argc = 0, st = 0, rc = -1;
	size_t no = 0, ne = 0;
	char *bufs[2] = { out, err };
	size_t caps[2] = { ocap, ecap }, *lens[2] = { &no, &ne };

	argv[argc++] = bin;
	for (int i = 0; args[i] && argc < 47; i++)
		argv[argc++] = args[i];
	argv[argc] = NULL;
	assert_int_equal(pipe2(po, O_CLOEXEC), 0);
	assert_int_equal(pipe2(pe, O_CLOEXEC), 0);
	int64_t t0 = harness_now_ms();
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		setpgid(0, 0); /* a browser's helpers are killed with it */
		dup2(po[1], 1);
		dup2(pe[1], 2);
		for (int i = 0; env && env[i]; i++)
			putenv((char *)env[i]);
		execv(argv[0], (char *const *)argv);
		_exit(127);
	}
	close(po[1]);
	close(pe[1]);
	for (int i = 0; i < 2; i++)
		if (bufs[i])
			bufs[i][0] = '\0';
	int64_t end = t0 + timeout_ms;
	struct pollfd p[2] = { { .fd = po[0], .events = POLLIN }, { .fd = pe[0], .events = POLLIN } };
	while (p[0].fd >= 0 || p[1].fd >= 0) {
		int64_t left = end - harness_now_ms();
		if (left <= 0 || poll(p, 2, (int)left) <= 0)
			break;
		for (int i = 0; i < 2; i++) {
			if (p[i].fd < 0 || !(p[i].revents & (POLLIN | POLLHUP)))
				continue;
			char junk[4096], *dst = junk;
			size_t room = sizeof junk;
			if (bufs[i] && *lens[i] + 1 < caps[i]) {
				dst = bufs[i] + *lens[i];
				room = caps[i] - 1 - *lens[i];
			}
			ssize_t r = read(p[i].fd, dst, room);
			if (r <= 0) {
				close(p[i].fd);
				p[i].fd = -1;
				continue;
			}
			if (dst != junk) {
				*lens[i] += (size_t)r;
				bufs[i][*lens[i]] = '\0';
			}
		}
	}
	for (int i = 0; i < 2; i++)
		if (p[i].fd >= 0)
			close(p[i].fd);
	while (harness_now_ms() < end) {
		if (waitpid(pid, &st, WNOHANG) == pid) {
			rc = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
			break;
		}
		poll(NULL, 0, 10);
	}
	if (rc < 0) {
		kill(-pid, SIGKILL);
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
	}
	if (took_ms)
		*took_ms = harness_now_ms() - t0;
	return rc;
}

__attribute__((unused)) static int pu_run(const char *const *args, const char *const *env,
					  int timeout_ms, char *out, size_t ocap, char *err,
					  size_t ecap, int64_t *took_ms)
{
	return pu_run_bin(pu_probe_bin(), args, env, timeout_ms, out, ocap, err, ecap, took_ms);
}

/* The report line for probe name ("good: <name>: ..." or "bad: <name>: ..."), copied into
 * line; returns 1 for good, 0 for bad, -1 if the report has no line for it. */
__attribute__((unused)) static int pu_line(const char *out, const char *name, char *line,
					   size_t cap)
{
	char needle[300];
	const char *states[2] = { "bad: ", "good: " };

	for (int g = 0; g < 2; g++) {
		snprintf(needle, sizeof needle, "%s%s: ", states[g], name);
		for (const char *p = out; (p = strstr(p, needle)); p++) {
			if (p != out && p[-1] != '\n')
				continue;
			size_t n = strcspn(p, "\n");
			snprintf(line, cap, "%.*s", (int)n, p);
			return g;
		}
	}
	line[0] = '\0';
	return -1;
}

/* The probe must be reported good (or bad) and its line must contain want (may be NULL). */
__attribute__((unused)) static void pu_expect(const char *out, const char *name, int good,
					      const char *want)
{
	char line[1024];
	int g = pu_line(out, name, line, sizeof line);

	if (g != good || (want && !strstr(line, want)))
		fail_msg("derpd-probe: wanted %s for %s%s%s; got \"%s\"\nreport:\n%s",
			 good ? "good" : "bad", name, want ? " with " : "", want ? want : "",
			 g < 0 ? "(no line)" : line, out);
}

#endif
