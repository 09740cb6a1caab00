/* -secrets-url (man page "Mesh"): the mesh key from a setec server. The test runs a small
 * setec-compatible server on loopback (POST /api/get; {"Value":<base64>,"Version":N};
 * 304 for UpdateIfChanged with the current version) and checks what derpd asks, that the
 * key it got admits mesh logins, the cache across a restart with setec down, rotation to a
 * new version, clear errors for 403 and garbage, and that the key never reaches the log. */
#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <sodium.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include "server/key.h"
#include "test/e2e/harness.h"

enum mode { SETEC_OK, SETEC_FORBIDDEN, SETEC_GARBAGE };

/* The fake setec server: one thread, one request per connection. */
static struct {
	pthread_mutex_t mu;
	int lfd, stop;
	uint16_t port;
	pthread_t thread;
	enum mode mode;
	char value[128];          /* the secret's text */
	long long version;
	/* what the last request carried */
	int requests, not_modified, bad_headers;
	char last_name[256];
	long long last_version;
	int last_update_if_changed;
} setec = { .mu = PTHREAD_MUTEX_INITIALIZER, .lfd = -1 };

static void setec_set(enum mode m, const char *value, long long version)
{
	pthread_mutex_lock(&setec.mu);
	setec.mode = m;
	snprintf(setec.value, sizeof setec.value, "%s", value);
	setec.version = version;
	pthread_mutex_unlock(&setec.mu);
}

static int setec_get(int *field)
{
	pthread_mutex_lock(&setec.mu);
	int v = *field;
	pthread_mutex_unlock(&setec.mu);
	return v;
}

static void respond(int fd, int code, const char *body)
{
	char head[256];
	const char *why = code == 200 ? "OK" : code == 304 ? "Not Modified" : "Forbidden";
	int n = snprintf(head, sizeof head, "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
			 "Content-Length: %zu\r\nConnection: close\r\n\r\n", code, why, strlen(body));
	if (write(fd, head, (size_t)n) < 0 || write(fd, body, strlen(body)) < 0)
		return;
}

static void serve_one(int fd)
{
	char req[8192];
	size_t n = 0;
	char *body = NULL;

	/* The head, then Content-Length bytes of body (2 s at most). */
	for (int64_t end = harness_now_ms() + 2000; n < sizeof req - 1 && harness_now_ms() < end;) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		if (poll(&p, 1, 100) <= 0)
			continue;
		ssize_t r = read(fd, req + n, sizeof req - 1 - n);
		if (r <= 0)
			break;
		n += (size_t)r;
		req[n] = '\0';
		char *hend = strstr(req, "\r\n\r\n"), *cl = strcasestr(req, "\r\nContent-Length:");
		if (hend && cl && strlen(hend + 4) >= strtoul(cl + 17, NULL, 10)) {
			body = hend + 4;
			break;
		}
	}
	if (!body)
		return;
	json_t *j = json_loads(body, 0, NULL);
	pthread_mutex_lock(&setec.mu);
	setec.requests++;
	setec.bad_headers += strncmp(req, "POST /api/get HTTP/1.1\r\n", 24) != 0 ||
			     !strcasestr(req, "\r\nSec-X-Tailscale-No-Browsers: setec\r\n") ||
			     !strcasestr(req, "\r\nContent-Type: application/json\r\n") ||
			     strcasestr(req, "\r\nAuthorization:") != NULL;
	snprintf(setec.last_name, sizeof setec.last_name, "%s",
		 json_string_value(json_object_get(j, "Name")) ? json_string_value(json_object_get(j, "Name")) : "");
	setec.last_version = json_integer_value(json_object_get(j, "Version"));
	setec.last_update_if_changed = json_is_true(json_object_get(j, "UpdateIfChanged"));
	enum mode m = setec.mode;
	char value[128];
	long long version = setec.version;
	snprintf(value, sizeof value, "%s", setec.value);
	int unchanged = setec.last_update_if_changed && setec.last_version == version;
	setec.not_modified += unchanged && m == SETEC_OK;
	pthread_mutex_unlock(&setec.mu);
	json_decref(j);

	if (m == SETEC_FORBIDDEN)
		respond(fd, 403, "access denied\n");
	else if (m == SETEC_GARBAGE)
		respond(fd, 200, "{\"Value\": 17, \"Version\": \"x\"}");
	else if (unchanged)
		respond(fd, 304, "");
	else {
		char b64[256], out[400];
		sodium_bin2base64(b64, sizeof b64, (const unsigned char *)value, strlen(value),
				  sodium_base64_VARIANT_ORIGINAL);
		snprintf(out, sizeof out, "{\"Value\":\"%s\",\"Version\":%lld}", b64, version);
		respond(fd, 200, out);
	}
}

static void *setec_main(void *unused)
{
	(void)unused;
	while (!__atomic_load_n(&setec.stop, __ATOMIC_RELAXED)) {
		struct pollfd p = { .fd = setec.lfd, .events = POLLIN };
		if (poll(&p, 1, 50) <= 0)
			continue;
		int fd = accept(setec.lfd, NULL, NULL);
		if (fd < 0)
			continue;
		serve_one(fd);
		close(fd);
	}
	return NULL;
}

static void setec_start(void)
{
	if (setec.lfd >= 0)
		return; /* already up (a failed test may have left it either way) */
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t al = sizeof a;
	int one = 1;

	setec.lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	setsockopt(setec.lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (setec.port)
		a.sin_port = htons(setec.port); /* back on the same port after a stop */
	assert_int_equal(bind(setec.lfd, (struct sockaddr *)&a, sizeof a), 0);
	assert_int_equal(listen(setec.lfd, 16), 0);
	getsockname(setec.lfd, (struct sockaddr *)&a, &al);
	setec.port = ntohs(a.sin_port);
	setec.stop = 0;
	assert_int_equal(pthread_create(&setec.thread, NULL, setec_main, NULL), 0);
}

static void setec_stop(void)
{
	if (setec.lfd < 0)
		return;
	__atomic_store_n(&setec.stop, 1, __ATOMIC_RELAXED);
	pthread_join(setec.thread, NULL);
	close(setec.lfd); /* connections to the port are refused from now on */
	setec.lfd = -1;
}

/* ---- helpers ---- */

static char dir[64], cache[96], url[64];
static const char *const KEY1 = "1111111111111111111111111111111111111111111111111111111111111111";
static const char *const KEY2 = "AbCdEf0123456789abcdef0123456789ABCDEF0123456789abcdef0123456789";

static struct harness_server *start(const char *poll_interval)
{
	const char *extra[] = { "-secrets-url", url, "-secrets-cache-dir", cache,
				"-secrets-path-prefix", "test/derp/", "--secrets-poll-interval",
				poll_interval, NULL };
	return harness_start(extra);
}

/* A client logging in with mesh key text: 1 if the server treats it as a mesh peer
 * (WatchConns answered with PeerPresent), 0 if it closes the connection. */
static int is_mesh(const struct harness_server *s, const char *key_text)
{
	uint8_t k[32];
	struct derp_msg m;
	struct derp_client_opts o = harness_opts();

	assert_int_equal(key_from_hex(k, key_text, 64), 0);
	o.mesh_key = k;
	struct derp_client *c = harness_client(s, &o);
	assert_int_equal(derp_client_watch_conns(c), 0);
	int rc = 0;
	for (int64_t end = harness_now_ms() + 5000; harness_now_ms() < end;) {
		int r = derp_client_recv(c, &m, 500);
		if (r == DERP_CLIENT_TIMEOUT)
			continue;
		if (r != 0)
			break; /* closed: not a mesh peer */
		if (m.kind == DERP_MSG_PEER_PRESENT) {
			rc = 1;
			break;
		}
	}
	derp_client_close(c);
	return rc;
}

/* The key in neither case, nor its base64, in the log. */
static void assert_not_logged(const struct harness_server *s, const char *key_text)
{
	char lower[65], upper[65], b64[128];

	for (int i = 0; i < 64; i++) {
		lower[i] = (char)tolower((unsigned char)key_text[i]);
		upper[i] = (char)toupper((unsigned char)key_text[i]);
	}
	lower[64] = upper[64] = '\0';
	sodium_bin2base64(b64, sizeof b64, (const unsigned char *)key_text, 64,
			  sodium_base64_VARIANT_ORIGINAL);
	assert_false(harness_log_contains(s, lower));
	assert_false(harness_log_contains(s, upper));
	assert_false(harness_log_contains(s, b64));
}

struct logwait {
	const struct harness_server *s;
	const char *needle;
};

static int logged(void *arg)
{
	struct logwait *w = arg;
	return harness_log_contains(w->s, w->needle);
}

static int group_setup(void **state)
{
	(void)state;
	if (sodium_init() < 0)
		return -1;
	snprintf(dir, sizeof dir, "/tmp/derpd-setec-XXXXXX");
	if (!mkdtemp(dir))
		return -1;
	/* Two levels that do not exist yet: derpd makes them (0700), as setec does. */
	snprintf(cache, sizeof cache, "%s/home/.cache/derper-secrets", dir);
	setec_start();
	snprintf(url, sizeof url, "http://127.0.0.1:%u/", setec.port);
	return 0;
}

static int group_teardown(void **state)
{
	(void)state;
	setec_stop();
	char cmd[128];
	snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
	return system(cmd) == 0 ? 0 : -1;
}

/* ---- tests ---- */

/* The key comes from setec: the request is setec's, the key admits mesh logins (and no
 * other key does), the cache holds it 0600, and it is never logged. */
static void test_key_from_setec(void **state)
{
	(void)state;
	setec_start();
	struct stat st;

	setec_set(SETEC_OK, KEY1, 3);
	struct harness_server *s = start("1h");
	assert_true(setec_get(&setec.requests) >= 1);
	assert_int_equal(setec_get(&setec.bad_headers), 0);
	pthread_mutex_lock(&setec.mu);
	assert_string_equal(setec.last_name, "test/derp/meshkey");
	assert_int_equal(setec.last_version, 0);
	pthread_mutex_unlock(&setec.mu);
	assert_true(harness_log_contains(s, "Got mesh key from setec store (version 3)"));
	assert_true(is_mesh(s, KEY1));
	assert_false(is_mesh(s, KEY2));
	assert_int_equal(stat(cache, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	assert_not_logged(s, KEY1);
	harness_stop(s);
}

/* setec down at a restart: the cached key serves; derpd says so and keeps trying. */
static void test_restart_uses_cache(void **state)
{
	(void)state;
	setec_stop();
	struct harness_server *s = start("1h");
	assert_true(harness_log_contains(s, "version 3, from the cache"));
	assert_true(is_mesh(s, KEY1));
	struct logwait w = { s, "still using mesh key version 3" };
	assert_true(harness_wait(logged, &w, 10000)); /* the immediate poll failed */
	assert_not_logged(s, KEY1);
	harness_stop(s);
	setec_start();
}

/* A new version is asked for with UpdateIfChanged, used for the logins that follow and
 * cached; the old key stops working for new logins. */
static void test_rotation(void **state)
{
	(void)state;
	setec_start();
	setec_set(SETEC_OK, KEY1, 3);
	struct harness_server *s = start("200ms");
	assert_true(is_mesh(s, KEY1));
	/* Polls of the same version get 304 and change nothing. */
	int nm = setec_get(&setec.not_modified);
	int64_t end = harness_now_ms() + 10000;
	while (setec_get(&setec.not_modified) < nm + 2 && harness_now_ms() < end)
		poll(NULL, 0, 20);
	assert_true(setec_get(&setec.not_modified) >= nm + 2);
	assert_true(setec_get(&setec.last_update_if_changed));

	setec_set(SETEC_OK, KEY2, 4);
	struct logwait w = { s, "mesh key version 4 now used for new mesh logins" };
	assert_true(harness_wait(logged, &w, 10000));
	assert_true(is_mesh(s, KEY2));
	assert_false(is_mesh(s, KEY1));
	assert_not_logged(s, KEY2);
	harness_stop(s);

	/* The cache has version 4 now: a restart with setec down uses it. */
	setec_stop();
	s = start("1h");
	assert_true(harness_log_contains(s, "version 4, from the cache"));
	assert_true(is_mesh(s, KEY2));
	harness_stop(s);
	setec_start();
}

/* Without a cache, a 403 or an answer that is not setec's is a clear error (exit 1). */
static void test_errors(void **state)
{
	(void)state;
	setec_start();
	char log[8192], empty_cache[128];
	snprintf(empty_cache, sizeof empty_cache, "%s/none/derper-secrets", dir);
	const char *extra[] = { "-secrets-url", url, "-secrets-cache-dir", empty_cache, NULL };

	setec_set(SETEC_FORBIDDEN, KEY1, 5);
	int st = harness_run_to_exit(extra, log, sizeof log);
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 1);
	if (!strstr(log, "HTTP 403") || !strstr(log, "access denied"))
		fail_msg("no clear 403 error in:\n%s", log);

	setec_set(SETEC_GARBAGE, KEY1, 5);
	st = harness_run_to_exit(extra, log, sizeof log);
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 1);
	if (!strstr(log, "the answer is not {\"Value\""))
		fail_msg("no clear error for a garbage answer in:\n%s", log);

	/* A secret that is not a mesh key: derper's message. */
	setec_set(SETEC_OK, "not a key", 6);
	st = harness_run_to_exit(extra, log, sizeof log);
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 1);
	if (!strstr(log, "invalid mesh key"))
		fail_msg("no invalid-key error in:\n%s", log);
	assert_null(strstr(log, "not a key"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_key_from_setec),
		cmocka_unit_test(test_restart_uses_cache),
		cmocka_unit_test(test_rotation),
		cmocka_unit_test(test_errors),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
