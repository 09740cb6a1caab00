/* Headless Chromium runs for the page tests (browser.h). */
#include "test/e2e/browser.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

const char *browser_path(void)
{
	static const char *const paths[] = { "/usr/bin/chromium", "/usr/bin/chromium-browser" };

	for (size_t i = 0; i < sizeof paths / sizeof *paths; i++)
		if (access(paths[i], X_OK) == 0)
			return paths[i];
	return NULL;
}

static int64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Run the browser with what (a --dump-dom or --screenshot= argument) on url; its stdout
 * into *out (malloc'd) if out. Exit status, or -1 (not installed, timeout). */
static int run(const char *url, const char *what, const char *size, const char *profile,
	       int timeout_ms, char **out)
{
	const char *bin = browser_path();
	char prof[512];
	int pipefd[2];

	if (!bin || pipe2(pipefd, O_CLOEXEC) != 0)
		return -1;
	snprintf(prof, sizeof prof, "--user-data-dir=%s", profile);
	pid_t pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		setpgid(0, 0);
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		dup2(pipefd[1], 1);
		int nul = open("/dev/null", O_WRONLY);
		if (nul >= 0)
			dup2(nul, 2); /* its D-Bus and GPU complaints */
		execl(bin, bin, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
		      "--disable-background-networking", "--disable-component-update",
		      "--disable-sync", "--disable-dev-shm-usage", "--no-proxy-server",
		      "--ignore-certificate-errors", "--hide-scrollbars", prof,
		      size ? size : "--window-size=1000,1000", what, url, (char *)NULL);
		_exit(127);
	}
	setpgid(pid, pid);
	close(pipefd[1]);
	size_t n = 0, cap = 65536;
	char *buf = malloc(cap + 1);
	int64_t end = mono_ms() + timeout_ms, st = -1;
	for (;;) {
		int64_t left = end - mono_ms();
		struct pollfd p = { .fd = pipefd[0], .events = POLLIN };
		if (left <= 0 || !buf)
			break;
		int r = poll(&p, 1, (int)left);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		if (n == cap) {
			char *nb = realloc(buf, (cap *= 2) + 1);
			if (!nb)
				break;
			buf = nb;
		}
		ssize_t got = read(pipefd[0], buf + n, cap - n);
		if (got <= 0) {
			st = 0; /* EOF: the browser is done */
			break;
		}
		n += (size_t)got;
	}
	close(pipefd[0]);
	int wst = 0;
	while (st == 0 && waitpid(pid, &wst, WNOHANG) == 0 && mono_ms() < end)
		poll(NULL, 0, 20);
	kill(-pid, SIGKILL); /* the whole group: renderer and GPU processes too */
	waitpid(pid, &wst, 0);
	if (buf)
		buf[n] = '\0';
	if (out)
		*out = buf;
	else
		free(buf);
	return st == 0 && WIFEXITED(wst) ? WEXITSTATUS(wst) : -1;
}

char *browser_dom(const char *url, const char *profile, int timeout_ms)
{
	char *dom = NULL;

	if (run(url, "--dump-dom", NULL, profile, timeout_ms, &dom) != 0 || !dom || !*dom) {
		free(dom);
		return NULL;
	}
	return dom;
}

int browser_screenshot(const char *url, const char *png, int width, int height,
		       const char *profile, int timeout_ms)
{
	char what[512], size[64];
	struct stat st;

	snprintf(what, sizeof what, "--screenshot=%s", png);
	snprintf(size, sizeof size, "--window-size=%d,%d", width, height);
	unlink(png);
	if (run(url, what, size, profile, timeout_ms, NULL) != 0)
		return -1;
	return stat(png, &st) == 0 && st.st_size > 1000 ? 0 : -1;
}

int browser_text_by_id(const char *dom, const char *id, char *out, size_t cap)
{
	char needle[128];

	snprintf(needle, sizeof needle, "id=\"%s\"", id);
	const char *p = strstr(dom, needle);
	if (!p || !(p = strchr(p, '>')))
		return -1;
	p++;
	size_t n = strcspn(p, "<");
	if (n >= cap)
		n = cap - 1;
	memcpy(out, p, n);
	out[n] = '\0';
	return 0;
}
