/* Test-only helpers shared by test/e2e/test_mesh*.c: mesh key files, reserved loopback
 * ports, derpd runs that are expected to exit, watcher floods. Include after harness.h. */
#ifndef DERPD_TEST_MESH_UTIL_H
#define DERPD_TEST_MESH_UTIL_H
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "server/key.h"

#define MESH_KEY_HEX "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
#define MESH_KEY_OTHER "6d529e9d4ef632d22d4a4214cb49da8f1ba1b72697061fb24e312984c35ec8d8"

__attribute__((unused)) static void mu_key(uint8_t out[32], const char *hex)
{
	assert_int_equal(key_from_hex(out, hex, strlen(hex)), 0);
}

/* A fresh temporary directory (path in dir, >= 64 bytes). */
__attribute__((unused)) static void mu_tmpdir(char *dir, size_t cap)
{
	snprintf(dir, cap, "/tmp/derpd-mesh-XXXXXX");
	if (!mkdtemp(dir))
		fail_msg("mkdtemp: %s", strerror(errno));
}

static int mu_rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb, (void)flag, (void)ftw;
	return remove(p);
}

/* rm -rf dir (unless DERPD_KEEP_TMP is set). */
__attribute__((unused)) static void mu_rmdir(const char *dir)
{
	if (!getenv("DERPD_KEEP_TMP") && dir[0])
		nftw(dir, mu_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* Write content to dir/name; the path goes to out. */
__attribute__((unused)) static void mu_write(char *out, size_t cap, const char *dir,
					     const char *name, const char *content)
{
	snprintf(out, cap, "%s/%s", dir, name);
	FILE *f = fopen(out, "wb");
	assert_non_null(f);
	assert_int_equal(fwrite(content, 1, strlen(content), f), strlen(content));
	assert_int_equal(fclose(f), 0);
}

/* A loopback port nobody else can take while *fd stays open: bound (not listening) with
 * SO_REUSEADDR and SO_REUSEPORT, which derpd's listener also sets, so derpd can bind it
 * again and again (a restarted node keeps its port) while the kernel hands it to no one
 * else. */
__attribute__((unused)) static uint16_t mu_reserve_port(int *fd)
{
	struct sockaddr_in sa = { .sin_family = AF_INET };
	socklen_t sl = sizeof sa;
	int one = 1;

	*fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(*fd >= 0);
	setsockopt(*fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	setsockopt(*fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
	inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
	assert_int_equal(bind(*fd, (struct sockaddr *)&sa, sizeof sa), 0);
	assert_int_equal(getsockname(*fd, (struct sockaddr *)&sa, &sl), 0);
	return ntohs(sa.sin_port);
}

/* Run derpd with exactly these arguments (NULL-ended) and wait up to timeout_ms for it to
 * exit. Returns its exit status, or -1 if it was still running (then it is killed). Its
 * stdout+stderr go to out. */
__attribute__((unused)) static int mu_run_exit(const char *const *args, int timeout_ms,
					       char *out, size_t cap)
{
	const char *bin = getenv("DERPD_BIN");
	const char *argv[40];
	int pfd[2], argc = 0, st = 0, rc = -1;
	size_t n = 0;

	if (!bin || !*bin)
		bin = "./derpd";
	argv[argc++] = bin;
	for (int i = 0; args[i] && argc < 39; i++)
		argv[argc++] = args[i];
	argv[argc] = NULL;
	assert_int_equal(pipe2(pfd, O_CLOEXEC), 0);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		dup2(pfd[1], 1);
		dup2(pfd[1], 2);
		execv(bin, (char *const *)argv);
		_exit(127);
	}
	close(pfd[1]);
	int64_t end = harness_now_ms() + timeout_ms;
	out[0] = '\0';
	for (;;) {
		struct pollfd p = { .fd = pfd[0], .events = POLLIN };
		int64_t left = end - harness_now_ms();
		if (left <= 0)
			break;
		if (poll(&p, 1, (int)left) <= 0)
			continue;
		ssize_t r = n + 1 < cap ? read(pfd[0], out + n, cap - 1 - n) : 0;
		if (r <= 0)
			break; /* EOF: the child is gone (or out is full) */
		n += (size_t)r;
		out[n] = '\0';
	}
	close(pfd[0]);
	while (harness_now_ms() < end) {
		if (waitpid(pid, &st, WNOHANG) == pid) {
			rc = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
			break;
		}
		poll(NULL, 0, 10);
	}
	if (rc < 0) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
	}
	return rc;
}

/* Read n PeerPresent messages (keys and flags in order) from a watcher; anything else
 * fails the test. */
__attribute__((unused)) static void mu_read_present(struct derp_client *w, uint8_t keys[][32],
						    uint8_t *flags, int n, int timeout_ms)
{
	struct derp_msg m;

	for (int i = 0; i < n; i++) {
		harness_recv(w, &m, timeout_ms);
		if (m.kind != DERP_MSG_PEER_PRESENT)
			fail_msg("message %d of the flood: frame 0x%02x, not PeerPresent", i,
				 m.frame_type);
		assert_true(m.has_flags);
		memcpy(keys[i], m.key, 32);
		flags[i] = m.flags;
	}
}

/* Index of key in keys[0..n), or -1. */
__attribute__((unused)) static int mu_find(uint8_t keys[][32], int n, const uint8_t *key)
{
	for (int i = 0; i < n; i++)
		if (memcmp(keys[i], key, 32) == 0)
			return i;
	return -1;
}

/* The next message is PeerPresent(key) with these flags. */
__attribute__((unused)) static void mu_expect_present(struct derp_client *w, const uint8_t *key,
						      uint8_t flags, int timeout_ms)
{
	struct derp_msg m;

	harness_recv(w, &m, timeout_ms);
	if (m.kind != DERP_MSG_PEER_PRESENT)
		fail_msg("expected PeerPresent, got frame 0x%02x (%u bytes)", m.frame_type,
			 m.frame_len);
	assert_memory_equal(m.key, key, 32);
	assert_true(m.has_flags);
	assert_int_equal(m.flags, flags);
}

/* The next message is PeerGone(key, reason). */
__attribute__((unused)) static void mu_expect_gone(struct derp_client *c, const uint8_t *key,
						   uint8_t reason, int timeout_ms)
{
	struct derp_msg m;

	harness_recv(c, &m, timeout_ms);
	if (m.kind != DERP_MSG_PEER_GONE)
		fail_msg("expected PeerGone, got frame 0x%02x (%u bytes)", m.frame_type,
			 m.frame_len);
	assert_memory_equal(m.key, key, 32);
	assert_int_equal(m.reason, reason);
}

#endif
