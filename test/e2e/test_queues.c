/* Per-client queue depth from the environment (CONFORMANCE.md 74) and the distinct-sender
 * estimate published in /debug/traffic (79), against the real binary. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "mesh/derp_client.h"
#include "test/e2e/harness.h"

#define DEPTH_ENV "TS_DEBUG_DERP_PER_CLIENT_SEND_QUEUE_DEPTH"

static void test_queue_depth_env(void **state)
{
	(void)state;
	struct harness_server *s;

	unsetenv(DEPTH_ENV);
	s = harness_start(NULL);
	assert_true(harness_log_contains(s, "send queues 32+32"));
	harness_stop(s);

	setenv(DEPTH_ENV, "", 1); /* empty = unset */
	s = harness_start(NULL);
	assert_true(harness_log_contains(s, "send queues 32+32"));
	harness_stop(s);

	setenv(DEPTH_ENV, "64", 1);
	s = harness_start(NULL);
	assert_true(harness_log_contains(s, "send queues 64+64"));
	assert_false(harness_log_contains(s, "send queues 32+32"));
	harness_stop(s);
	unsetenv(DEPTH_ENV);
}

/* 79: a client that received from 5 distinct senders shows UniqueSenders 4..6. */
static void test_unique_senders(void **state)
{
	(void)state;
	struct harness_server *s = harness_start(NULL);
	struct derp_client *r = harness_client(s, NULL), *snd[5];
	char key[100] = "\"Key\":\"nodekey:";

	for (int i = 0; i < 32; i++)
		snprintf(key + strlen(key), 3, "%02x", derp_client_public_key(r)[i]);
	for (int i = 0; i < 5; i++) {
		snd[i] = harness_client(s, NULL);
		harness_relay_check(snd[i], r);
	}
	int fd = harness_tcp(s);
	const char *q = "GET /debug/traffic HTTP/1.1\r\nHost: x\r\n\r\n";
	static char head[4096], stream[65536];
	assert_true(send(fd, q, strlen(q), MSG_NOSIGNAL) > 0);
	assert_true(harness_read_head(fd, head, sizeof head, 5000) > 0);
	/* The first round lists every client that has moved bytes, r among them. */
	size_t n = 0;
	const char *line = NULL;
	int64_t end = harness_now_ms() + 8000;
	while (!line && harness_now_ms() < end && n < sizeof stream - 1) {
		if (harness_read_exact(fd, stream + n, 1, 3000) == 0)
			break;
		stream[++n] = '\0';
		if (stream[n - 1] == '\n') {
			const char *k = strstr(stream, key);
			if (k && strchr(k, '\n'))
				line = k;
		}
	}
	close(fd);
	assert_non_null(line);
	const char *u = strstr(line, "\"UniqueSenders\":");
	assert_non_null(u);
	assert_true(u < strchr(line, '\n'));
	int unique = atoi(u + strlen("\"UniqueSenders\":"));
	print_message("UniqueSenders for 5 senders: %d\n", unique);
	assert_in_range(unique, 4, 6);
	for (int i = 0; i < 5; i++)
		derp_client_close(snd[i]);
	derp_client_close(r);
	harness_stop(s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_queue_depth_env),
		cmocka_unit_test(test_unique_senders),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
