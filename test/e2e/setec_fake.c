/* The fake setec server (setec_fake.h). */
#include "test/e2e/setec_fake.h"

#include <netinet/in.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cmocka.h>
#include <jansson.h>
#include <sodium.h>

#include "test/e2e/harness.h"

struct setec_fake setec = { .mu = PTHREAD_MUTEX_INITIALIZER, .lfd = -1 };

void setec_set(enum setec_mode m, const char *value, long long version)
{
	pthread_mutex_lock(&setec.mu);
	setec.mode = m;
	snprintf(setec.value, sizeof setec.value, "%s", value);
	setec.version = version;
	pthread_mutex_unlock(&setec.mu);
}

int setec_get(int *field)
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
	enum setec_mode m = setec.mode;
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

void setec_start(void)
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

void setec_stop(void)
{
	if (setec.lfd < 0)
		return;
	__atomic_store_n(&setec.stop, 1, __ATOMIC_RELAXED);
	pthread_join(setec.thread, NULL);
	close(setec.lfd); /* connections to the port are refused from now on */
	setec.lfd = -1;
}

