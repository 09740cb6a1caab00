/* The systemd notification module (server/notify.c): the watchdog decision, the
 * environment it reads, and the datagrams it sends. */
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <cmocka.h>

#include "server/notify.h"

static void test_workers_fresh(void **state)
{
	(void)state;
	int64_t t[3] = { 1000, 950, 990 };

	assert_true(notify_workers_fresh(t, 3, 1000, 100));   /* all turned within 100 ms */
	assert_true(notify_workers_fresh(t, 3, 1050, 100));   /* the oldest exactly 100 ms */
	assert_false(notify_workers_fresh(t, 3, 1051, 100));  /* worker 1 is stuck */
	t[1] = 5000;                                          /* turned after "now" was read */
	assert_true(notify_workers_fresh(t, 3, 1050, 100));
	t[2] = 0;                                             /* one stuck among many */
	assert_false(notify_workers_fresh(t, 3, 1050, 100));
	assert_true(notify_workers_fresh(t, 0, 1050, 100));   /* no workers: nothing stuck */
}

static void clear_env(void)
{
	unsetenv("NOTIFY_SOCKET");
	unsetenv("WATCHDOG_USEC");
	unsetenv("WATCHDOG_PID");
}

static void test_watchdog_env(void **state)
{
	(void)state;
	char pid[16];

	clear_env();
	setenv("WATCHDOG_USEC", "30000000", 1);
	notify_init();
	assert_int_equal(notify_watchdog_usec(), 0); /* no socket: nobody to ping */
	assert_int_equal(notify_watchdog_wait_ms(), -1);

	setenv("NOTIFY_SOCKET", "/nonexistent/notify", 1);
	notify_init();
	assert_int_equal(notify_watchdog_usec(), 30000000);
	assert_int_equal(notify_watchdog_wait_ms(), 0); /* first ping due at once */
	assert_int_equal(notify_send("READY=1"), -1);   /* nobody listening: an error, no crash */
	notify_watchdog_ping(1);
	int w = notify_watchdog_wait_ms();
	assert_true(w > 14000 && w <= 15000);           /* then half the interval */

	snprintf(pid, sizeof pid, "%d", (int)getpid());
	setenv("WATCHDOG_PID", pid, 1);
	notify_init();
	assert_int_equal(notify_watchdog_usec(), 30000000);
	setenv("WATCHDOG_PID", "1", 1);                 /* meant for another process */
	notify_init();
	assert_int_equal(notify_watchdog_usec(), 0);
	unsetenv("WATCHDOG_PID");
	for (const char *bad = "0\0-5\0" "12x\0\0"; *bad; bad += strlen(bad) + 1) {
		setenv("WATCHDOG_USEC", bad, 1);
		notify_init();
		assert_int_equal(notify_watchdog_usec(), 0);
	}
	setenv("NOTIFY_SOCKET", "relative/path", 1);    /* not a socket we can address */
	setenv("WATCHDOG_USEC", "1000000", 1);
	notify_init();
	assert_int_equal(notify_watchdog_usec(), 0);
	clear_env();
	notify_init();
	assert_int_equal(notify_send("READY=1"), 0);   /* no socket: a silent no-op */
}

static void test_abstract_send(void **state)
{
	(void)state;
	char name[64], buf[256];
	struct sockaddr_un a = { .sun_family = AF_UNIX };

	snprintf(name, sizeof name, "@derpd-unit-notify-%d", (int)getpid());
	memcpy(a.sun_path + 1, name + 1, strlen(name) - 1);
	int fd = socket(AF_UNIX, SOCK_DGRAM, 0);
	assert_true(fd >= 0);
	assert_int_equal(bind(fd, (struct sockaddr *)&a,
			      (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(name))), 0);
	clear_env();
	setenv("NOTIFY_SOCKET", name, 1);
	notify_init();
	notify_ready("serving on x");
	notify_reloading();
	notify_stopping();
	const char *want[] = { "READY=1\nSTATUS=serving on x", "RELOADING=1\nMONOTONIC_USEC=",
			       "STOPPING=1\n" };
	for (int i = 0; i < 3; i++) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		assert_int_equal(poll(&p, 1, 5000), 1);
		ssize_t n = recv(fd, buf, sizeof buf - 1, 0);
		assert_true(n > 0);
		buf[n] = '\0';
		assert_memory_equal(buf, want[i], strlen(want[i]));
	}
	clear_env();
	notify_init();
	close(fd);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_workers_fresh),
		cmocka_unit_test(test_watchdog_env),
		cmocka_unit_test(test_abstract_send),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
