/* ACME end to end against Debian's pebble on loopback, with pebble-challtestsrv as its
 * DNS (every name -> 127.0.0.1) so nothing leaves the machine. The certificate provider
 * runs in-process; this test serves the HTTP-01 answers (acme_http01_response) and the
 * TLS port (cert_provider_ssl_new) where pebble validates. Pebble rejects a quarter of
 * all nonces (PEBBLE_WFE_NONCEREJECT), so every case also survives badNonce.
 * Skipped (not failed) when pebble is not installed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "acme/cert.h"
#include "acme/client.h"
#include "server/config.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char dir[64], cadir[128], directory[128], directory_eab[128], ca_file[160], dns[64];
static pid_t pebble_pid, pebble_eab_pid, chall_pid;
static int http_port, tls_port;
/* pebble's EAB key for kid-1 (base64url, as a CA hands it out) */
#define EAB_KEY "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W"
static int http_fd = -1, tls_fd = -1, have_pebble;
static struct cert_provider *volatile serving; /* what the TLS port hands out */
static volatile int stopping;
static pthread_t http_thr, tls_thr;
static const uint8_t server_pub[32] = { 7, 7, 7 };

static int listen_any(int *port)
{
	struct sockaddr_in a = { .sin_family = AF_INET };
	socklen_t al = sizeof a;
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;

	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 64) != 0)
		return -1;
	getsockname(fd, (struct sockaddr *)&a, &al);
	*port = ntohs(a.sin_port);
	return fd;
}

static int free_port(void)
{
	int port, fd = listen_any(&port);

	close(fd);
	return port;
}

/* The port-80 side: just the challenge answers. */
static void *http_main(void *arg)
{
	(void)arg;
	while (!__atomic_load_n(&stopping, __ATOMIC_ACQUIRE)) {
		char req[2048], path[1024], body[1024], out[1400];
		int c = accept(http_fd, NULL, NULL), n, len;
		if (c < 0)
			continue;
		n = (int)read(c, req, sizeof req - 1);
		if (n > 0) {
			req[n] = '\0';
			if (sscanf(req, "GET %1023s", path) != 1)
				path[0] = '\0';
			len = acme_http01_response(path, body, sizeof body);
			if (len > 0)
				n = snprintf(out, sizeof out, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
					     "Content-Length: %d\r\nConnection: close\r\n\r\n%.*s", len, len, body);
			else
				n = snprintf(out, sizeof out, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n"
					     "Connection: close\r\n\r\n");
			if (write(c, out, (size_t)n) < 0)
				n = 0;
		}
		close(c);
	}
	return NULL;
}

/* The TLS port: one blocking handshake per connection (TLS-ALPN-01 validations). */
static void *tls_main(void *arg)
{
	(void)arg;
	while (!__atomic_load_n(&stopping, __ATOMIC_ACQUIRE)) {
		int c = accept(tls_fd, NULL, NULL);
		struct timeval tv = { 5, 0 };
		WOLFSSL *ssl;
		if (c < 0)
			continue;
		setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
		if (serving && (ssl = cert_provider_ssl_new(serving, c)) != NULL) {
			wolfSSL_accept(ssl);
			wolfSSL_shutdown(ssl);
			wolfSSL_free(ssl);
		}
		close(c);
	}
	return NULL;
}

static void write_file(const char *path, const char *s)
{
	FILE *f = fopen(path, "w");

	fputs(s, f);
	fclose(f);
}

/* pebble's own HTTPS certificate, from a CA the ACME client is told to trust. */
static int make_pebble_certs(void)
{
	ecc_key ca, leaf;
	uint8_t *der;
	size_t dl;
	char path[256], *pem;
	time_t now = time(NULL);
	struct cert_tmpl t = { "derpd test CA", "derpd test CA", NULL, NULL, 0, now - 60,
			       now + 86400, 1, NULL };

	if (eckey_generate(&ca) != 0 || eckey_generate(&leaf) != 0 ||
	    cert_build(&ca, &ca, &t, &der, &dl) != 0)
		return -1;
	pem = pem_encode("CERTIFICATE", der, dl);
	write_file(ca_file, pem);
	free(pem);
	free(der);
	t.cn = "localhost";
	t.dns = "localhost";
	t.is_ca = 0;
	if (cert_build(&leaf, &ca, &t, &der, &dl) != 0)
		return -1;
	pem = pem_encode("CERTIFICATE", der, dl);
	snprintf(path, sizeof path, "%s/cert.pem", cadir);
	write_file(path, pem);
	free(pem);
	free(der);
	pem = eckey_to_pem(&leaf);
	snprintf(path, sizeof path, "%s/key.pem", cadir);
	write_file(path, pem);
	free(pem);
	wc_ecc_free(&ca);
	wc_ecc_free(&leaf);
	return 0;
}

static pid_t spawn(char *const argv[], const char *log)
{
	pid_t pid = fork();

	if (pid == 0) {
		int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		dup2(fd, 1);
		dup2(fd, 2);
		setpgid(0, 0);
		execvp(argv[0], argv);
		_exit(127);
	}
	return pid;
}

static int wait_port(int port)
{
	for (int i = 0; i < 100; i++) {
		struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
		int fd = socket(AF_INET, SOCK_STREAM, 0), rc;
		a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		rc = connect(fd, (struct sockaddr *)&a, sizeof a);
		close(fd);
		if (rc == 0)
			return 0;
		poll(NULL, 0, 100);
	}
	return -1;
}

/* One pebble instance; eab: require external account binding (kid-1). */
static pid_t start_pebble(const char *name, int eab, char *dir_url, size_t len)
{
	char cfg[1400], path[256], conf[256];
	int pport = free_port(), mport = free_port();
	pid_t pid;

	snprintf(cfg, sizeof cfg,
		 "{\"pebble\": {\"listenAddress\": \"127.0.0.1:%d\", \"managementListenAddress\": "
		 "\"127.0.0.1:%d\", \"certificate\": \"%s/cert.pem\", \"privateKey\": \"%s/key.pem\", "
		 "\"httpPort\": %d, \"tlsPort\": %d, \"ocspResponderURL\": \"\", "
		 "\"externalAccountBindingRequired\": %s, \"externalAccountMACKeys\": "
		 "{\"kid-1\": \"" EAB_KEY "\"}}}", pport, mport, cadir, cadir, http_port, tls_port,
		 eab ? "true" : "false");
	snprintf(conf, sizeof conf, "%s/%s.json", cadir, name);
	write_file(conf, cfg);
	snprintf(path, sizeof path, "%s/%s.log", dir, name);
	{
		char *argv[] = { "pebble", "-config", conf, "-dnsserver", dns, NULL };
		pid = spawn(argv, path);
	}
	snprintf(dir_url, len, "https://localhost:%d/dir", pport);
	if (wait_port(pport) != 0) {
		fprintf(stderr, "test_acme: pebble did not start (see %s)\n", path);
		return -1;
	}
	return pid;
}

static int group_setup(void **state)
{
	char mgmt[64], log[256];
	int dns_port = free_port();

	(void)state;
	signal(SIGPIPE, SIG_IGN);
	wolfSSL_Init();
	if (access("/usr/bin/pebble", X_OK) != 0 || access("/usr/bin/pebble-challtestsrv", X_OK) != 0) {
		fprintf(stderr, "test_acme: pebble not installed (apt-get install pebble); skipping\n");
		return 0;
	}
	have_pebble = 1;
	snprintf(dir, sizeof dir, "/tmp/derpd-acme-XXXXXX");
	if (mkdtemp(dir) == NULL)
		return -1;
	snprintf(cadir, sizeof cadir, "%s/pebble", dir);
	mkdir(cadir, 0700);
	snprintf(ca_file, sizeof ca_file, "%s/ca.pem", cadir);
	if (make_pebble_certs() != 0)
		return -1;
	http_fd = listen_any(&http_port);
	tls_fd = listen_any(&tls_port);
	pthread_create(&http_thr, NULL, http_main, NULL);
	pthread_create(&tls_thr, NULL, tls_main, NULL);

	snprintf(dns, sizeof dns, "127.0.0.1:%d", dns_port);
	snprintf(mgmt, sizeof mgmt, "127.0.0.1:%d", free_port());
	snprintf(log, sizeof log, "%s/challtestsrv.log", dir);
	{
		char *argv[] = { "pebble-challtestsrv", "-dns01", dns, "-http01", "", "-https01", "",
				 "-tlsalpn01", "", "-management", mgmt, "-defaultIPv4", "127.0.0.1",
				 "-defaultIPv6", "", NULL };
		chall_pid = spawn(argv, log);
	}
	setenv("PEBBLE_VA_NOSLEEP", "1", 1);
	setenv("PEBBLE_WFE_NONCEREJECT", "25", 1);
	if (wait_port(dns_port) != 0)
		return -1;
	pebble_pid = start_pebble("pebble", 0, directory, sizeof directory);
	pebble_eab_pid = start_pebble("pebble-eab", 1, directory_eab, sizeof directory_eab);
	return pebble_pid > 0 && pebble_eab_pid > 0 ? 0 : -1;
}

static int group_teardown(void **state)
{
	(void)state;
	__atomic_store_n(&stopping, 1, __ATOMIC_RELEASE);
	if (pebble_pid > 0)
		kill(pebble_pid, SIGTERM), waitpid(pebble_pid, NULL, 0);
	if (pebble_eab_pid > 0)
		kill(pebble_eab_pid, SIGTERM), waitpid(pebble_eab_pid, NULL, 0);
	if (chall_pid > 0)
		kill(chall_pid, SIGTERM), waitpid(chall_pid, NULL, 0);
	if (have_pebble) {
		/* shutdown() ends the blocked accept()s and the loops see `stopping` (no
		 * pthread_cancel: unwinding leaves ASan's stack poison behind) */
		shutdown(http_fd, SHUT_RDWR);
		shutdown(tls_fd, SHUT_RDWR);
		pthread_join(http_thr, NULL);
		pthread_join(tls_thr, NULL);
		close(http_fd);
		close(tls_fd);
		if (getenv("KEEP") == NULL) {
			char cmd[128];
			snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
			if (system(cmd) != 0)
				return 0;
		}
	}
	return 0;
}

static void cfg_init(struct config *c, const char *host, const char *certdir)
{
	memset(c, 0, sizeof *c);
	c->certmode = "letsencrypt";
	c->certdir = certdir;
	c->hostname = host;
	c->acme_eab_kid = c->acme_eab_key = "";
	c->acme_email = "ops@example.test";
	c->acme_directory = directory;
	c->acme_ca_file = ca_file;
	c->http_port = 80;
}

/* A client handshake to 127.0.0.1 with this SNI through the provider; the leaf's DER. */
static int handshake(struct cert_provider *p, const char *sni, uint8_t *leaf, size_t *leaflen)
{
	struct sockaddr_in a = { .sin_family = AF_INET };
	socklen_t al = sizeof a;
	int l = socket(AF_INET, SOCK_STREAM, 0), c, s, cdone = 0, sdone = 0, rc = -1;
	WOLFSSL_CTX *cctx = wolfSSL_CTX_new(wolfSSLv23_client_method());
	WOLFSSL *cs, *ss;

	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	bind(l, (struct sockaddr *)&a, sizeof a);
	listen(l, 1);
	getsockname(l, (struct sockaddr *)&a, &al);
	c = socket(AF_INET, SOCK_STREAM, 0);
	connect(c, (struct sockaddr *)&a, sizeof a);
	s = accept(l, NULL, NULL);
	close(l);
	fcntl(c, F_SETFL, O_NONBLOCK);
	fcntl(s, F_SETFL, O_NONBLOCK);
	wolfSSL_CTX_set_verify(cctx, WOLFSSL_VERIFY_NONE, NULL);
	cs = wolfSSL_new(cctx);
	wolfSSL_set_fd(cs, c);
	if (sni)
		wolfSSL_UseSNI(cs, WOLFSSL_SNI_HOST_NAME, sni, (word16)strlen(sni));
	ss = cert_provider_ssl_new(p, s);
	for (int i = 0; i < 2000 && !(cdone && sdone); i++) {
		int r, e;
		if (!cdone) {
			r = wolfSSL_connect(cs);
			e = wolfSSL_get_error(cs, r);
			if (r == WOLFSSL_SUCCESS)
				cdone = 1;
			else if (e != WOLFSSL_ERROR_WANT_READ && e != WOLFSSL_ERROR_WANT_WRITE)
				break;
		}
		if (!sdone) {
			r = wolfSSL_accept(ss);
			e = wolfSSL_get_error(ss, r);
			if (r == WOLFSSL_SUCCESS)
				sdone = 1;
			else if (e != WOLFSSL_ERROR_WANT_READ && e != WOLFSSL_ERROR_WANT_WRITE)
				break;
		}
		poll(NULL, 0, 1);
	}
	if (cdone && sdone) {
		WOLFSSL_X509 *x = wolfSSL_get_peer_certificate(cs);
		int n = 0;
		const unsigned char *d = x ? wolfSSL_X509_get_der(x, &n) : NULL;
		if (d && (size_t)n <= *leaflen) {
			memcpy(leaf, d, (size_t)n);
			*leaflen = (size_t)n;
			rc = 0;
		}
		wolfSSL_X509_free(x);
	}
	wolfSSL_free(cs);
	wolfSSL_free(ss);
	wolfSSL_CTX_free(cctx);
	close(c);
	close(s);
	return rc;
}

/* Handshakes until one succeeds (issuance runs on the provider thread meanwhile). */
static int wait_cert(struct cert_provider *p, const char *sni, struct cert_info *ci)
{
	uint8_t leaf[4096];

	for (int i = 0; i < 600; i++) {
		size_t n = sizeof leaf;
		if (handshake(p, sni, leaf, &n) == 0)
			return cert_info_parse(leaf, n, ci);
		poll(NULL, 0, 100);
	}
	return -1;
}

static int64_t now_ms_test(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* derpd_tls_certificate_expiry_timestamp_seconds{name} for name is not_after. */
static void expect_expiry(const char *name, time_t not_after)
{
	struct cert_expiry e[8];
	size_t n = cert_expiry_list(e, 8);
	for (size_t i = 0; i < n; i++)
		if (strcmp(e[i].name, name) == 0) {
			if (e[i].not_after != (int64_t)not_after)
				fail_msg("expiry of %s: %lld, the certificate says %lld", name,
					 (long long)e[i].not_after, (long long)not_after);
			return;
		}
	fail_msg("no expiry listed for %s", name);
}

static void issue_with(int challenges, const char *host)
{
	struct config c;
	struct cert_provider *p;
	struct cert_info ci, ci2;
	struct stat st;
	char err[512], certdir[128], path[256];
	int served = -1;

	snprintf(certdir, sizeof certdir, "%s/%s", dir, host);
	cfg_init(&c, host, certdir);
	p = cert_provider_start_ex(&c, server_pub, challenges, err, sizeof err);
	assert_non_null(p);
	serving = p;
	assert_int_not_equal(cert_provider_state(p), CERT_FAILED); /* pending, or done */
	assert_int_equal(wait_cert(p, host, &ci), 0);
	assert_int_equal(cert_provider_state(p), CERT_SERVING);
	assert_true(ci.not_after > time(NULL) + 86400);
	uint64_t orders0, failures0, orders, failures;
	cert_acme_counters(&orders0, &failures0);
	assert_true(orders0 >= 1); /* derpd_acme_orders_total */
	expect_expiry(host, ci.not_after);
	/* derper's (autocert's) cache layout, private files 0600 */
	snprintf(path, sizeof path, "%s/%s", certdir, host);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	snprintf(path, sizeof path, "%s/acme_account+key", certdir);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	/* any other name is refused */
	{
		uint8_t leaf[4096];
		size_t n = sizeof leaf;
		assert_int_not_equal(handshake(p, "other.acme.test", leaf, &n), 0);
	}

	/* renewal: pretend the certificate reached its renewal time */
	pthread_mutex_lock(&p->mu);
	p->ent[0].renew_at = time(NULL) - 1;
	pthread_mutex_unlock(&p->mu);
	provider_wake(p);
	for (int i = 0; i < 600 && served != 0; i++) {
		poll(NULL, 0, 100);
		assert_int_equal(wait_cert(p, host, &ci2), 0);
		served = ci2.serial_len == ci.serial_len &&
			 memcmp(ci2.serial, ci.serial, ci.serial_len) == 0;
	}
	assert_int_equal(served, 0); /* a new certificate serves, without a restart */
	expect_expiry(host, ci2.not_after);
	cert_acme_counters(&orders, &failures);
	assert_true(orders > orders0);
	serving = NULL;
	cert_provider_stop(p);

	/* restart: the cache serves at once, even with the CA unreachable */
	c.acme_directory = "https://127.0.0.1:1/dir";
	p = cert_provider_start_ex(&c, server_pub, challenges, err, sizeof err);
	assert_non_null(p);
	assert_int_equal(cert_provider_state(p), CERT_SERVING); /* READY=1 at once */
	{
		uint8_t leaf[4096];
		size_t n = sizeof leaf;
		assert_int_equal(handshake(p, host, leaf, &n), 0);
		assert_int_equal(cert_info_parse(leaf, n, &ci), 0);
		assert_memory_equal(ci.serial, ci2.serial, ci.serial_len);
	}
	expect_expiry(host, ci.not_after); /* the cached certificate is listed too */
	cert_provider_stop(p);

	/* no cache and the CA unreachable: the order fails and is counted */
	snprintf(certdir, sizeof certdir, "%s/%s-unreachable", dir, host);
	cfg_init(&c, host, certdir);
	c.acme_directory = "https://127.0.0.1:1/dir";
	cert_acme_counters(&orders0, &failures0);
	p = cert_provider_start_ex(&c, server_pub, challenges, err, sizeof err);
	assert_non_null(p);
	{
		uint8_t leaf[4096];
		size_t n = sizeof leaf;
		handshake(p, host, leaf, &n); /* asks for the certificate, if start did not */
	}
	int64_t until = now_ms_test() + 20000;
	do {
		cert_acme_counters(&orders, &failures);
		if (failures > failures0)
			break;
		poll(NULL, 0, 50);
	} while (now_ms_test() < until);
	assert_true(failures > failures0); /* derpd_acme_order_failures_total */
	assert_true(orders > orders0);
	struct cert_expiry e[8];
	assert_int_equal(cert_expiry_list(e, 8), 0); /* nothing served yet */
	cert_provider_stop(p);
}

static void test_http01(void **state)
{
	(void)state;
	if (!have_pebble)
		skip();
	issue_with(CHAL_HTTP01, "derp-http.acme.test");
}

static void test_tlsalpn01(void **state)
{
	(void)state;
	if (!have_pebble)
		skip();
	issue_with(CHAL_TLSALPN01, "derp-alpn.acme.test");
}

/* --acme-ip-certs: no SNI -> the local IP's certificate, asked for by the first handshake. */
static void test_ip_cert(void **state)
{
	struct config c;
	struct cert_provider *p;
	struct cert_info ci;
	struct stat st;
	char err[512], certdir[128], path[256];

	(void)state;
	if (!have_pebble)
		skip();
	snprintf(certdir, sizeof certdir, "%s/ip", dir);
	cfg_init(&c, "127.0.0.1", certdir);
	c.acme_ip_certs = 1;
	p = cert_provider_start(&c, server_pub, err, sizeof err);
	assert_non_null(p);
	serving = p;
	assert_int_equal(wait_cert(p, NULL, &ci), 0);
	snprintf(path, sizeof path, "%s/127.0.0.1.crt", certdir);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0644);
	snprintf(path, sizeof path, "%s/127.0.0.1.key", certdir);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	snprintf(path, sizeof path, "%s/acme-account.key", certdir);
	assert_int_equal(stat(path, &st), 0);
	{
		uint8_t leaf[4096];
		size_t n = sizeof leaf;
		/* an IP SNI must be the connection's own address; DNS names have no provider */
		assert_int_equal(handshake(p, "127.0.0.1", leaf, &n), 0);
		n = sizeof leaf;
		assert_int_not_equal(handshake(p, "127.0.0.2", leaf, &n), 0);
		n = sizeof leaf;
		assert_int_not_equal(handshake(p, "derp.acme.test", leaf, &n), 0);
	}
	serving = NULL;
	cert_provider_stop(p);
}

/* -certmode gcp: external account binding (kid + MAC key) against a CA requiring it. */
static void test_gcp_eab(void **state)
{
	struct config c;
	struct cert_provider *p;
	struct cert_info ci;
	char err[512], certdir[128];

	(void)state;
	if (!have_pebble)
		skip();
	snprintf(certdir, sizeof certdir, "%s/gcp", dir);
	cfg_init(&c, "derp-gcp.acme.test", certdir);
	c.certmode = "gcp";
	c.acme_directory = directory_eab;
	c.acme_eab_kid = "kid-1";
	c.acme_eab_key = EAB_KEY;
	p = cert_provider_start(&c, server_pub, err, sizeof err);
	assert_non_null(p);
	serving = p;
	assert_int_equal(wait_cert(p, "derp-gcp.acme.test", &ci), 0);
	serving = NULL;
	cert_provider_stop(p);
}

static void test_badnonce_seen(void **state)
{
	(void)state;
	if (!have_pebble)
		skip();
	/* with a quarter of nonces refused, the runs above must have retried some */
	assert_true(acme_client_badnonce_retries() > 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_http01),
		cmocka_unit_test(test_tlsalpn01),
		cmocka_unit_test(test_ip_cert),
		cmocka_unit_test(test_gcp_eab),
		cmocka_unit_test(test_badnonce_seen),
	};

	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
