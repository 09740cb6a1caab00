/* The regional mesh, outbound half: mesh key, --mesh-with parsing, one watch loop thread
 * per peer (spec SERVER.md §11; upstream cmd/derper/mesh.go and derphttp's
 * RunWatchConnectionLoop). After login the connection belongs to a relay worker; this file
 * only dials, waits for it to end, and dials again. */
#include "mesh/mesh.h"

#include <wolfssl/options.h>
#include <wolfssl/ssl.h>

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "mesh/derp_client.h"
#include "server/config.h"
#include "server/key.h"
#include "server/log.h"
#include "server/server.h"

#define CONNECT_TIMEOUT_MS 10000 /* DNS + TCP + upgrade + handshake, as upstream */
#define RETRY_MS           5000  /* derphttp's retryInterval */
/* A peer that does not take our mesh key accepts the login, then closes the connection
 * as soon as it reads WatchConns ("insufficient permissions"), saying nothing: a link
 * that ends this soon after it began was refused. */
#define REFUSED_MS         2000
#define MAX_KEY_FILE       (1 << 20)

struct peer {
	struct mesh_target t;
	pthread_t thread;
	int running;       /* thread started, not joined */
	int adopted;       /* handed to the relay; on_closed not called yet (under mu) */
	int dial_fd;       /* socket being dialled/logged in, for mesh_stop's shutdown (under mu) */
	int self;          /* it turned out to be this server: not a peer (under mu) */
	uint64_t fwd_drops; /* packets for it dropped (relaxed atomics, by the relay) */
};

static struct {
	pthread_mutex_t mu;
	pthread_cond_t cv;  /* on_closed, stop */
	int cv_ready;
	int stopping;
	uint8_t key[32];
	char key_text[KEY_HEX_LEN + 1]; /* as configured, trimmed: what we send as "meshKey" */
	int have_key;
	uint8_t priv[32], pub[32];
	const char *ca_file; /* --mesh-ca-file, NULL = the system's roots */
	int64_t secret_version; /* -secrets-url: the setec version in use (under mu) */
	int secret_cached;      /* ... taken from the cache at start-up */
	pthread_t secrets_thread;
	int secrets_running;
	struct peer *peers;
	size_t npeers;
} mesh = { .mu = PTHREAD_MUTEX_INITIALIZER };

/* ---- mesh key ------------------------------------------------------------------- */

/* Length of the UTF-8 white space rune (Go's unicode.IsSpace) at s, or 0. */
static size_t space_at(const unsigned char *s, size_t n)
{
	if (n >= 1 && (s[0] == ' ' || (s[0] >= '\t' && s[0] <= '\r')))
		return 1;
	if (n >= 2 && s[0] == 0xc2 && (s[1] == 0x85 || s[1] == 0xa0))
		return 2;
	if (n >= 3 && s[0] == 0xe1 && s[1] == 0x9a && s[2] == 0x80) /* U+1680 */
		return 3;
	if (n >= 3 && s[0] == 0xe2 && s[1] == 0x80 &&
	    (s[2] <= 0x8a || s[2] == 0xa8 || s[2] == 0xa9 || s[2] == 0xaf)) /* U+2000..200A, 2028, 2029, 202F */
		return s[2] >= 0x80 ? 3 : 0;
	if (n >= 3 && s[0] == 0xe2 && s[1] == 0x81 && s[2] == 0x9f) /* U+205F */
		return 3;
	if (n >= 3 && s[0] == 0xe3 && s[1] == 0x80 && s[2] == 0x80) /* U+3000 */
		return 3;
	return 0;
}

/* Length of the white space rune ending at s[n-1], or 0. */
static size_t space_before(const unsigned char *s, size_t n)
{
	for (size_t k = 1; k <= 3 && k <= n; k++)
		if (space_at(s + n - k, k) == k)
			return k;
	return 0;
}

int mesh_parse_key(const char *s, size_t len, uint8_t key[32], char text[KEY_HEX_LEN + 1],
		   char *err, size_t errlen)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t k;

	while (len && (k = space_at(p, len))) {
		p += k;
		len -= k;
	}
	while (len && (k = space_before(p, len)))
		len -= k;
	if (len != KEY_HEX_LEN) {
		snprintf(err, errlen, "invalid mesh key: must be 64-digit hexadecimal number");
		return -1;
	}
	if (key_from_hex(key, (const char *)p, len) != 0) {
		snprintf(err, errlen, "invalid mesh key: not hexadecimal");
		return -1;
	}
	if (text) {
		memcpy(text, p, KEY_HEX_LEN);
		text[KEY_HEX_LEN] = '\0';
	}
	return 0;
}

static int read_key_file(const char *path, char **out, size_t *len, char *err, size_t errlen)
{
	FILE *f = fopen(path, "rb");
	char *buf;
	size_t n;

	if (!f) {
		snprintf(err, errlen, "mesh key file %s: %s", path, strerror(errno));
		return -1;
	}
	buf = malloc(MAX_KEY_FILE + 1);
	n = buf ? fread(buf, 1, MAX_KEY_FILE + 1, f) : 0;
	if (!buf || ferror(f)) {
		snprintf(err, errlen, "mesh key file %s: %s", path, buf ? strerror(errno)
								  : "out of memory");
		free(buf);
		fclose(f);
		return -1;
	}
	fclose(f);
	*out = buf;
	*len = n; /* a longer file is simply an invalid key */
	return 0;
}

int mesh_load_key(const struct config *cfg, uint8_t key[32], char key_text[KEY_HEX_LEN + 1],
		  int *have, char *err, size_t errlen)
{
	char *text = NULL;
	size_t len = 0;
	int rc = 0;

	memset(key, 0, 32);
	if (key_text)
		key_text[0] = '\0';
	*have = 0;
	if (cfg->dev) {
		const char *v = getenv(MESH_KEY_ENV);
		if (!v || !*v) {
			log_info(LS_MESH, "No mesh key specified for dev via %s", MESH_KEY_ENV);
			log_info(LS_MESH, "No mesh key configured for --dev mode");
			return 0;
		}
		log_info(LS_MESH, "Set mesh key from %s", MESH_KEY_ENV);
		rc = mesh_parse_key(v, strlen(v), key, key_text, err, errlen);
	} else if (cfg->secrets_url && cfg->secrets_url[0]) {
		char value[512];
		if (mesh_secrets_load(cfg, value, sizeof value, &mesh.secret_version,
				      &mesh.secret_cached, err, errlen) != 0)
			return -1;
		if (value[0] == '\0') {
			log_info(LS_MESH, "No mesh key configured");
			return 0;
		}
		rc = mesh_parse_key(value, strlen(value), key, key_text, err, errlen);
		sodium_memzero(value, sizeof value);
	} else if (cfg->mesh_psk_file && cfg->mesh_psk_file[0]) {
		if (read_key_file(cfg->mesh_psk_file, &text, &len, err, errlen) != 0)
			return -1;
		log_info(LS_MESH, "Got mesh key from static file %s", cfg->mesh_psk_file);
		/* derper: an empty key string means "none"; only white space is invalid */
		if (len == 0) {
			free(text);
			log_info(LS_MESH, "No mesh key configured");
			return 0;
		}
		rc = mesh_parse_key(text, len, key, key_text, err, errlen);
		free(text);
	} else {
		log_info(LS_MESH, "No mesh key configured");
		return 0;
	}
	if (rc != 0)
		return -1;
	if (key_is_zero(key)) {
		log_info(LS_MESH, "No mesh key configured (the key is all zeros)");
		return 0;
	}
	*have = 1;
	log_info(LS_MESH, "DERP mesh key configured");
	return 0;
}

/* ---- --mesh-with entries -------------------------------------------------------- */

/* Split "host", "host:port", "[v6]" or "[v6]:port" into host and port (0 if absent). */
static int split_host_port(const char *s, size_t len, char *host, size_t hcap, long *port)
{
	const char *end = s + len, *h = s, *colon = NULL;
	size_t hl;

	*port = 0;
	if (len && s[0] == '[') {
		const char *rb = memchr(s, ']', len);
		if (!rb || (rb + 1 < end && rb[1] != ':'))
			return -1;
		h = s + 1;
		hl = (size_t)(rb - h);
		colon = rb + 1 < end ? rb + 1 : NULL;
	} else {
		colon = memchr(s, ':', len);
		if (colon && memchr(colon + 1, ':', (size_t)(end - colon - 1)))
			return -1; /* a bare IPv6 address cannot carry a port */
		hl = colon ? (size_t)(colon - s) : len;
	}
	if (hl == 0 || hl >= hcap)
		return -1;
	memcpy(host, h, hl);
	host[hl] = '\0';
	if (colon) {
		long v = 0;
		if (colon + 1 == end)
			return -1;
		for (const char *p = colon + 1; p < end; p++) {
			if (*p < '0' || *p > '9' || v > 65535)
				return -1;
			v = v * 10 + (*p - '0');
		}
		if (v < 1 || v > 65535)
			return -1;
		*port = v;
	}
	return 0;
}

int mesh_parse_target(const char *s, size_t len, struct mesh_target *t, char *err,
		      size_t errlen)
{
	const char *slash = memchr(s, '/', len);
	size_t nl = slash ? (size_t)(slash - s) : len;
	long port;

	memset(t, 0, sizeof *t);
	if (slash && memchr(slash + 1, '/', len - nl - 1)) {
		snprintf(err, errlen, "too many components in host tuple \"%.*s\"", (int)len, s);
		return -1;
	}
	if (nl == 0 || nl >= sizeof t->name || memchr(s, ' ', len) || memchr(s, '\t', len)) {
		snprintf(err, errlen, "invalid -mesh-with entry \"%.*s\"", (int)len, s);
		return -1;
	}
	memcpy(t->name, s, nl);
	if (split_host_port(s, nl, t->dial, sizeof t->dial, &port) != 0) {
		snprintf(err, errlen, "invalid host \"%s\" in -mesh-with", t->name);
		return -1;
	}
	if (slash) {
		const char *d = slash + 1;
		size_t dl = len - nl - 1;
		char tmp[sizeof t->dial];
		long dport;
		const char *c1 = memchr(d, ':', dl);
		/* a bare IPv6 address is fine here: derper joins it with the port itself */
		int bare6 = d[0] != '[' && c1 && memchr(c1 + 1, ':', dl - (size_t)(c1 + 1 - d));
		if (dl == 0 || dl >= sizeof t->dial) {
			snprintf(err, errlen, "invalid dial host in -mesh-with entry \"%.*s\"",
				 (int)len, s);
			return -1;
		}
		if (bare6) {
			memcpy(tmp, d, dl);
			tmp[dl] = '\0';
		} else if (split_host_port(d, dl, tmp, sizeof tmp, &dport) != 0 || dport) {
			snprintf(err, errlen, "dial host \"%.*s\" in -mesh-with must be a bare host "
				 "name or IP (the port comes from \"%s\")", (int)dl, d, t->name);
			return -1;
		}
		snprintf(t->dial, sizeof t->dial, "%s", tmp);
		t->via = 1;
	}
	t->port = (uint16_t)(port ? port : 443);
	t->tls = t->port == 443;
	return 0;
}

/* ---- the watch loop ------------------------------------------------------------- */

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Wait on the condition variable until ms passes or stop; returns 1 if stopping.
 * Called with mu held. */
static int wait_locked(int64_t until_ms)
{
	while (!mesh.stopping) {
		int64_t left = until_ms - now_ms();
		if (left <= 0)
			return 0;
		struct timespec ts;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		ts.tv_sec += left / 1000;
		ts.tv_nsec += (left % 1000) * 1000000;
		if (ts.tv_nsec >= 1000000000) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000;
		}
		pthread_cond_timedwait(&mesh.cv, &mesh.mu, &ts);
	}
	return 1;
}

static int sleep_or_stop(int ms)
{
	pthread_mutex_lock(&mesh.mu);
	int stop = wait_locked(now_ms() + ms);
	pthread_mutex_unlock(&mesh.mu);
	return stop;
}

/* Non-blocking TCP connect to t->dial:t->port within the deadline. The socket is
 * published in p->dial_fd so that mesh_stop can abort the wait with shutdown(). */
static int dial(struct peer *p, int64_t deadline, char *err, size_t errlen)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *res, *ai;
	char port[8];
	int fd = -1, g;

	snprintf(port, sizeof port, "%u", p->t.port);
	if ((g = getaddrinfo(p->t.dial, port, &hints, &res)) != 0) {
		snprintf(err, errlen, "dial %s: %s", p->t.dial, gai_strerror(g));
		return -1;
	}
	snprintf(err, errlen, "dial %s:%s: no address", p->t.dial, port);
	for (ai = res; ai && fd < 0; ai = ai->ai_next) {
		fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (fd < 0) {
			snprintf(err, errlen, "socket: %s", strerror(errno));
			continue;
		}
		/* as Go's dialer: no Nagle, keepalive probes every 15 s after 15 s idle, so a
		 * peer that vanished without a FIN is noticed even while the region is quiet */
		int one = 1, ka = 15;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
		setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
		setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &ka, sizeof ka);
		setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &ka, sizeof ka);
		pthread_mutex_lock(&mesh.mu);
		int stop = mesh.stopping;
		p->dial_fd = stop ? -1 : fd;
		pthread_mutex_unlock(&mesh.mu);
		int ok = !stop && connect(fd, ai->ai_addr, ai->ai_addrlen) == 0;
		if (!stop && !ok && errno == EINPROGRESS) {
			struct pollfd pf = { .fd = fd, .events = POLLOUT };
			int64_t left = deadline - now_ms();
			int r;
			while ((r = poll(&pf, 1, left > 0 ? (int)left : 0)) < 0 && errno == EINTR)
				left = deadline - now_ms();
			int e = 0;
			socklen_t el = sizeof e;
			if (r > 0 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &el) == 0 && e == 0)
				ok = 1;
			errno = r == 0 ? ETIMEDOUT : e ? e : errno;
		}
		if (!ok) {
			snprintf(err, errlen, "dial %s:%s: %s", p->t.dial, port,
				 stop ? "stopping" : strerror(errno));
			pthread_mutex_lock(&mesh.mu);
			p->dial_fd = -1;
			pthread_mutex_unlock(&mesh.mu);
			close(fd);
			fd = -1;
		}
	}
	freeaddrinfo(res);
	return fd;
}

/* The TLS name of an entry: the host of its name, without port or brackets, as Go's
 * URL.Hostname() gives it for https://<host>/derp. */
static void tls_name(const struct mesh_target *t, char *out, size_t cap)
{
	long port;

	if (split_host_port(t->name, strlen(t->name), out, cap, &port) != 0)
		snprintf(out, cap, "%s", t->name);
}

static int left_ms(int64_t deadline)
{
	int64_t l = deadline - now_ms();
	return l > 1 ? (int)l : 1;
}

/* Log in as a mesh client and send WatchConns. Returns the logged-in client (socket
 * still registered in p->dial_fd), or NULL with err set; *self = 1 when the peer turned out
 * to be this server. */
static struct derp_client *login(struct peer *p, int *self, char *err, size_t errlen)
{
	int64_t deadline = now_ms() + CONNECT_TIMEOUT_MS;
	int fd = dial(p, deadline, err, errlen);

	*self = 0;
	if (fd < 0)
		return NULL;
	/* The library owns (and may close) a duplicate; the original stays in p->dial_fd
	 * for mesh_stop until unpublished, so a recycled descriptor is never shut down. */
	int lib_fd = dup(fd);
	if (lib_fd < 0) {
		snprintf(err, errlen, "dup: %s", strerror(errno));
		return NULL;
	}
	char name[256], key_text[KEY_HEX_LEN + 1];
	uint8_t key[32];
	tls_name(&p->t, name, sizeof name);
	pthread_mutex_lock(&mesh.mu); /* a new setec version may replace it meanwhile */
	memcpy(key, mesh.key, sizeof key);
	memcpy(key_text, mesh.key_text, sizeof key_text);
	pthread_mutex_unlock(&mesh.mu);
	struct derp_client_opts o = {
		.private_key = mesh.priv,
		.mesh_key = key,
		/* The key as the operator wrote it, not re-encoded: derpers before key.DERPMesh
		 * (2025) compare the ClientInfo text with their file's, so an upper-case key
		 * file must go out upper-case; newer ones decode either case. */
		.mesh_key_text = key_text,
		.timeout_ms = left_ms(deadline),
		.tls = p->t.tls,
		.tls_server_name = name,
		.tls_ca_file = mesh.ca_file,
	};
	struct derp_client *c = derp_client_open_fd(lib_fd, p->t.name, &o);
	if (c) {
		derp_client_set_timeout(c, left_ms(deadline));
		if (derp_client_send_info(c) == 0) {
			derp_client_set_timeout(c, left_ms(deadline));
			if (derp_client_finish(c) == 0) {
				if (key_equal_ct(derp_client_server_key(c), mesh.pub)) {
					*self = 1;
					derp_client_close(c);
					return NULL;
				}
				derp_client_set_timeout(c, left_ms(deadline));
				if (derp_client_watch_conns(c) == 0)
					return c;
			}
		}
	}
	snprintf(err, errlen, "%s", derp_client_error());
	derp_client_close(c);
	return NULL;
}

/* Forget the published socket and close our copy of it. */
static void unpublish(struct peer *p)
{
	pthread_mutex_lock(&mesh.mu);
	int fd = p->dial_fd;
	p->dial_fd = -1;
	pthread_mutex_unlock(&mesh.mu);
	if (fd >= 0)
		close(fd);
}

/* Runs on a relay worker once the adopted connection has ended; must not block. */
static void on_closed(void *arg)
{
	struct peer *p = arg;

	pthread_mutex_lock(&mesh.mu);
	p->adopted = 0;
	pthread_cond_broadcast(&mesh.cv);
	pthread_mutex_unlock(&mesh.mu);
}

static void *watch_loop(void *arg)
{
	struct peer *p = arg;
	char err[300];
	int self;

	for (;;) {
		pthread_mutex_lock(&mesh.mu);
		int stop = mesh.stopping;
		pthread_mutex_unlock(&mesh.mu);
		if (stop)
			break;
		struct derp_client *c = login(p, &self, err, sizeof err);
		if (self) {
			pthread_mutex_lock(&mesh.mu);
			p->self = 1;
			pthread_mutex_unlock(&mesh.mu);
			unpublish(p);
			log_info(LS_MESH, "peer \"%s\": detected self-connect; ignoring host",
				 p->t.name);
			break;
		}
		if (!c) {
			unpublish(p);
			if (sleep_or_stop(0)) /* an aborted connect is no news */
				break;
			log_warn(LS_MESH, "peer \"%s\": mesh connect: %s", p->t.name, err);
			if (sleep_or_stop(RETRY_MS))
				break;
			continue;
		}
		size_t n = derp_client_buffered(c), got = 0;
		uint8_t *buf = malloc(n ? n : 1);
		struct WOLFSSL *ssl = NULL;
		int fd = !buf ? -1 : p->t.tls ? derp_client_detach_tls(c, &ssl, buf, n, &got)
					      : derp_client_detach(c, buf, n, &got);
		if (fd < 0) {
			log_error(LS_MESH, "peer \"%s\": cannot take over the connection: %s",
				  p->t.name, buf ? derp_client_error() : "out of memory");
			derp_client_close(c);
		}
		unpublish(p);
		int64_t began = now_ms();
		int taken = 0; /* the relay runs the link: its end is the peer's doing */
		pthread_mutex_lock(&mesh.mu);
		p->adopted = fd >= 0 && !mesh.stopping;
		pthread_mutex_unlock(&mesh.mu);
		if (fd >= 0 && !p->adopted) {
			if (ssl)
				wolfSSL_free(ssl);
			close(fd);
			free(buf);
			break;
		}
		if (fd >= 0 && (ssl ? server_mesh_adopt_tls(fd, ssl, buf, got, p->t.name, on_closed, p,
							 &p->fwd_drops)
				    : server_mesh_adopt(fd, buf, got, p->t.name, on_closed, p,
							&p->fwd_drops)) != 0) {
			pthread_mutex_lock(&mesh.mu);
			p->adopted = 0;
			pthread_mutex_unlock(&mesh.mu);
			log_error(LS_MESH, "peer \"%s\": the relay refused the connection",
				  p->t.name);
		} else
			taken = fd >= 0;
		free(buf);
		/* The worker reads the peer's announcements from here on; wait for the end. */
		pthread_mutex_lock(&mesh.mu);
		while (p->adopted && !mesh.stopping)
			pthread_cond_wait(&mesh.cv, &mesh.mu);
		stop = mesh.stopping;
		pthread_mutex_unlock(&mesh.mu);
		if (stop)
			break;
		int64_t lived = now_ms() - began;
		if (taken && lived < REFUSED_MS)
			log_error(LS_MESH, "peer \"%s\": connection ended %lld ms after WatchConns: "
				  "the peer refused our mesh key (its key differs, or it has none); "
				  "reconnecting in %d s", p->t.name, (long long)lived,
				  RETRY_MS / 1000);
		else
			log_warn(LS_MESH, "peer \"%s\": connection ended; reconnecting in %d s",
				 p->t.name, RETRY_MS / 1000);
		if (sleep_or_stop(RETRY_MS))
			break;
	}
	return NULL;
}

/* ---- -secrets-url: new versions of the mesh key ---------------------------------- */

/* One poll: a new version replaces the key for the logins that follow (mesh links up now
 * stay as they are, as do the peers' own, until they reconnect). */
static void secrets_poll(const struct config *cfg)
{
	char value[512], name[512], text[KEY_HEX_LEN + 1], err[768];
	uint8_t key[32];
	int64_t have, ver = 0;

	mesh_secrets_name(cfg, name, sizeof name);
	pthread_mutex_lock(&mesh.mu);
	have = mesh.secret_version;
	pthread_mutex_unlock(&mesh.mu);
	int rc = mesh_secrets_fetch(cfg->secrets_url, name, have, value, sizeof value, &ver,
				    &mesh.stopping, err, sizeof err);
	if (rc < 0)
		log_warn(LS_MESH, "%s; still using mesh key version %lld", err, (long long)have);
	else if (rc == 0 && ver != have) {
		if (mesh_parse_key(value, strlen(value), key, text, err, sizeof err) != 0 ||
		    key_is_zero(key))
			log_error(LS_MESH, "setec: version %lld of %s is not a mesh key (%s); still "
				  "using version %lld", (long long)ver, name,
				  key_is_zero(key) ? "all zeros" : err, (long long)have);
		else {
			pthread_mutex_lock(&mesh.mu);
			memcpy(mesh.key, key, sizeof key);
			memcpy(mesh.key_text, text, sizeof text);
			mesh.have_key = 1;
			mesh.secret_version = ver;
			pthread_mutex_unlock(&mesh.mu);
			server_set_mesh_key(key);
			if (mesh_secrets_cache_write(cfg->secrets_cache_dir, name, value, ver, err,
						     sizeof err) != 0)
				log_warn(LS_MESH, "%s", err);
			log_info(LS_MESH, "setec: mesh key version %lld now used for new mesh logins",
				 (long long)ver);
		}
	}
	sodium_memzero(value, sizeof value);
	sodium_memzero(text, sizeof text);
	sodium_memzero(key, sizeof key);
}

static void *secrets_loop(void *arg)
{
	const struct config *cfg = arg;
	/* A key from the cache may be stale: ask at once, then every interval. */
	int64_t wait = mesh.secret_cached ? 0 : cfg->secrets_poll_ms;

	while (!sleep_or_stop(wait > INT32_MAX ? INT32_MAX : (int)wait)) {
		secrets_poll(cfg);
		wait = cfg->secrets_poll_ms;
	}
	return NULL;
}

/* ---- status for the metrics --------------------------------------------------------- */

size_t mesh_peers_status(struct mesh_peer_status *out, size_t max)
{
	size_t n = 0;

	pthread_mutex_lock(&mesh.mu);
	for (size_t i = 0; i < mesh.npeers; i++) {
		const struct peer *p = &mesh.peers[i];
		if (p->self)
			continue;
		if (n < max) {
			char host[256];
			tls_name(&p->t, host, sizeof host);
			/* one spelling per peer whatever the entry said: host:port, [v6]:port */
			snprintf(out[n].peer, sizeof out[n].peer, strchr(host, ':') ? "[%s]:%u" : "%s:%u",
				 host, (unsigned)p->t.port);
			out[n].up = p->adopted;
			out[n].fwd_drops = __atomic_load_n(&p->fwd_drops, __ATOMIC_RELAXED);
		}
		n++;
	}
	pthread_mutex_unlock(&mesh.mu);
	return n;
}

/* ---- start / stop --------------------------------------------------------------- */

int mesh_init(const struct config *cfg, char *err, size_t errlen)
{
	const char *w = cfg->mesh_with ? cfg->mesh_with : "";
	size_t n = 0;

	if (mesh_load_key(cfg, mesh.key, mesh.key_text, &mesh.have_key, err, errlen) != 0)
		return -1;
	server_set_mesh_key(mesh.have_key ? mesh.key : NULL);
	if (!*w)
		return 0;
	if (!mesh.have_key) {
		snprintf(err, errlen, "--mesh-with requires --mesh-psk-file or -secrets-url");
		return -1;
	}
	mesh.ca_file = NULL;
	if (cfg->mesh_ca_file && cfg->mesh_ca_file[0]) {
		if (access(cfg->mesh_ca_file, R_OK) != 0) {
			snprintf(err, errlen, "--mesh-ca-file %s: %s", cfg->mesh_ca_file,
				 strerror(errno));
			return -1;
		}
		mesh.ca_file = cfg->mesh_ca_file;
	}
	for (const char *s = w; s; s = strchr(s, ',') ? strchr(s, ',') + 1 : NULL)
		n++;
	mesh.peers = calloc(n, sizeof *mesh.peers);
	if (!mesh.peers) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	for (const char *s = w; s;) {
		const char *comma = strchr(s, ',');
		size_t len = comma ? (size_t)(comma - s) : strlen(s);
		struct peer *p = &mesh.peers[mesh.npeers];
		if (mesh_parse_target(s, len, &p->t, err, errlen) != 0)
			goto fail;
		s = comma ? comma + 1 : NULL;
		if (cfg->hostname && strcmp(p->t.name, cfg->hostname) == 0) {
			log_info(LS_MESH, "peer \"%s\": this server's own -hostname; skipped",
				 p->t.name);
			continue;
		}
		/* a TLS server's peers serve TLS too: https whatever the port, as derper */
		p->t.tls |= cfg->tls;
		p->dial_fd = -1;
		mesh.npeers++;
	}
	return 0;
fail:
	free(mesh.peers);
	mesh.peers = NULL;
	mesh.npeers = 0;
	return -1;
}

int mesh_start(const struct config *cfg, const uint8_t server_priv[32], char *err,
	       size_t errlen)
{
	if (!mesh.cv_ready) {
		pthread_condattr_t ca;
		pthread_condattr_init(&ca);
		pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
		pthread_cond_init(&mesh.cv, &ca);
		pthread_condattr_destroy(&ca);
		mesh.cv_ready = 1;
	}
	memcpy(mesh.priv, server_priv, 32);
	key_public(mesh.pub, server_priv);
	mesh.stopping = 0;
	if (cfg->secrets_url && cfg->secrets_url[0] && !cfg->dev && cfg->secrets_poll_ms > 0) {
		int e = pthread_create(&mesh.secrets_thread, NULL, secrets_loop, (void *)cfg);
		if (e != 0) {
			snprintf(err, errlen, "mesh: starting the setec poller: %s", strerror(e));
			return -1;
		}
		mesh.secrets_running = 1;
	}
	for (size_t i = 0; i < mesh.npeers; i++) {
		struct peer *p = &mesh.peers[i];
		if (p->t.via)
			log_info(LS_MESH, "peer \"%s\": will dial \"%s\" for \"%s\"", p->t.name,
				 p->t.dial, p->t.name);
		int e = pthread_create(&p->thread, NULL, watch_loop, p);
		if (e != 0) {
			snprintf(err, errlen, "mesh: starting a watch loop: %s", strerror(e));
			mesh_stop();
			return -1;
		}
		p->running = 1;
	}
	return 0;
}

void mesh_stop(void)
{
	int busy = 0;

	if (!mesh.cv_ready) { /* mesh_init only */
		free(mesh.peers);
		mesh.peers = NULL;
		mesh.npeers = 0;
		return;
	}
	pthread_mutex_lock(&mesh.mu);
	__atomic_store_n(&mesh.stopping, 1, __ATOMIC_RELAXED); /* read by a setec fetch too */
	for (size_t i = 0; i < mesh.npeers; i++)
		if (mesh.peers[i].dial_fd >= 0)
			shutdown(mesh.peers[i].dial_fd, SHUT_RDWR);
	pthread_cond_broadcast(&mesh.cv);
	pthread_mutex_unlock(&mesh.mu);
	for (size_t i = 0; i < mesh.npeers; i++) {
		if (mesh.peers[i].running)
			pthread_join(mesh.peers[i].thread, NULL);
		mesh.peers[i].running = 0;
	}
	if (mesh.secrets_running)
		pthread_join(mesh.secrets_thread, NULL); /* a fetch under way ends within 30 s */
	mesh.secrets_running = 0;
	pthread_mutex_lock(&mesh.mu);
	for (size_t i = 0; i < mesh.npeers; i++)
		busy |= mesh.peers[i].adopted;
	pthread_mutex_unlock(&mesh.mu);
	/* A connection still with the relay (mesh_stop before server_stop) will call
	 * on_closed with its peer later: keep the array alive for it then. */
	if (!busy) {
		pthread_mutex_lock(&mesh.mu); /* a scrape may be reading them */
		free(mesh.peers);
		mesh.peers = NULL;
		mesh.npeers = 0;
		pthread_mutex_unlock(&mesh.mu);
	}
}
