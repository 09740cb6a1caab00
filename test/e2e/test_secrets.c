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
#include "test/e2e/setec_fake.h"

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
