/* derpd-bench's servers under test: a derpd it starts, one already running, upstream's
 * derper, nginx's stream proxy as the reference relay, or any raw TCP relay. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tools/bench/bench.h"

#define NGINX_STREAM_MODULE "/usr/lib/nginx/modules/ngx_stream_module.so"

void parse_hostport(const char *s, struct sockaddr_in *a)
{
	char host[64];
	const char *colon = strrchr(s, ':');

	if (!colon || (size_t)(colon - s) >= sizeof host)
		die("bad address \"%s\" (want IPv4:port)", s);
	memcpy(host, s, (size_t)(colon - s));
	host[colon - s] = 0;
	memset(a, 0, sizeof *a);
	a->sin_family = AF_INET;
	a->sin_port = htons((uint16_t)atoi(colon + 1));
	if (inet_pton(AF_INET, host[0] ? host : "127.0.0.1", &a->sin_addr) != 1 || !a->sin_port)
		die("bad address \"%s\" (want IPv4:port)", s);
}

void set_hostport(struct target *t)
{
	char ip[INET_ADDRSTRLEN];

	inet_ntop(AF_INET, &t->addr.sin_addr, ip, sizeof ip);
	snprintf(t->hostport, sizeof t->hostport, "%s:%d", ip, ntohs(t->addr.sin_port));
}

/* Connected to t->addr: the server accepts. */
static int accepts(const struct target *t)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	int ok = fd >= 0 && connect(fd, (const struct sockaddr *)&t->addr, sizeof t->addr) == 0;

	if (fd >= 0)
		close(fd);
	return ok;
}

/* ./derpd -a 127.0.0.1:0 -c <tmp>/k.json -stun=false; port from its "serving on" line.
 * upstream (derper): the same flags, but a port chosen here (derper logs the address as
 * given, before it listens), ready once it accepts.
 * tls: -certmode manual -hostname 127.0.0.1: both make a self-signed certificate for the
 * address in <tmp>/certs. */
void start_derpd(struct target *t, const char *path, const char *const *args, int nargs,
		 int tls, int upstream)
{
	char keyf[128], log[128], line[512], certdir[128], listen[32] = "127.0.0.1:0";
	char *argv[48];
	int n = 0;

	make_tmpdir(t->dir, upstream ? "derper" : "derpd");
	snprintf(keyf, sizeof keyf, "%s/k.json", t->dir);
	snprintf(log, sizeof log, "%s/server.log", t->dir);
	snprintf(certdir, sizeof certdir, "%s/certs", t->dir);
	if (upstream) {
		int probe = listen_loopback(1); /* a free port; closed just before */
		snprintf(listen, sizeof listen, "127.0.0.1:%d", bound_port(probe));
		close(probe);
	}
	argv[n++] = (char *)path;
	argv[n++] = "-a";
	argv[n++] = listen;
	argv[n++] = "-c";
	argv[n++] = keyf;
	argv[n++] = "-stun=false";
	if (tls) {
		argv[n++] = "-certmode";
		argv[n++] = "manual";
		argv[n++] = "-hostname";
		argv[n++] = "127.0.0.1";
		argv[n++] = "-certdir";
		argv[n++] = certdir;
		argv[n++] = "-http-port=-1";
	}
	for (int i = 0; i < nargs && n < 47; i++)
		argv[n++] = (char *)args[i];
	argv[n] = NULL;
	t->pid = spawned[0] = spawn(argv, log);
	if (upstream) {
		parse_hostport(listen, &t->addr);
		set_hostport(t);
	}
	for (int64_t end = now_ns() + 10000000000LL; now_ns() < end; usleep(10000)) {
		if (upstream && accepts(t))
			return;
		FILE *f = fopen(log, "re");
		while (!upstream && f && fgets(line, sizeof line, f)) {
			char *p = strstr(line, "serving on ");
			if (p) {
				p[strcspn(p, "\r\n")] = 0;
				parse_hostport(p + 11, &t->addr);
				fclose(f);
				set_hostport(t);
				return;
			}
		}
		if (f)
			fclose(f);
		if (waitpid(t->pid, NULL, WNOHANG) == t->pid) {
			spawned[0] = 0;
			print_tail(log);
			die("%s exited during start-up", path);
		}
	}
	print_tail(log);
	die("%s: not serving within 10 s", path);
}

/* nginx stream { server { listen P reuseport; proxy_pass 127.0.0.1:Q; } }, not a daemon,
 * its own prefix, as many workers as derpd has. */
void start_nginx(struct target *t, const char *path, int workers)
{
	char conf[160], log[160], pidf[160], text[2048], prefix[80];

	make_tmpdir(t->dir, "nginx");
	t->upfd = listen_loopback(4096);
	int probe = listen_loopback(1); /* a free port for nginx; closed just before */
	int port = bound_port(probe);
	close(probe);
	snprintf(conf, sizeof conf, "%s/nginx.conf", t->dir);
	snprintf(log, sizeof log, "%s/error.log", t->dir);
	snprintf(pidf, sizeof pidf, "%s/nginx.pid", t->dir);
	snprintf(prefix, sizeof prefix, "%s/", t->dir);
	snprintf(text, sizeof text,
		 "%s"
		 "worker_processes %d;\ndaemon off;\nmaster_process on;\n"
		 "worker_rlimit_nofile 20000;\npid %s;\nerror_log %s warn;\n"
		 "events { worker_connections 9000; multi_accept on; }\n"
		 "stream {\n  server {\n    listen 127.0.0.1:%d reuseport backlog=4096;\n"
		 "    proxy_pass 127.0.0.1:%d;\n    proxy_buffer_size 16k;\n"
		 "    proxy_timeout 10m;\n  }\n}\n",
		 access(NGINX_STREAM_MODULE, R_OK) == 0 ? "load_module " NGINX_STREAM_MODULE ";\n"
							: "",
		 workers, pidf, log, port, bound_port(t->upfd));
	FILE *f = fopen(conf, "we");
	if (!f || fputs(text, f) < 0 || fclose(f) != 0)
		die("%s: %s", conf, strerror(errno));
	char *argv[] = { (char *)path, "-p", prefix, "-c", conf, "-e", log, NULL };
	t->pid = spawned[1] = spawn(argv, log);
	for (int64_t end = now_ns() + 10000000000LL; access(pidf, R_OK) != 0; usleep(10000)) {
		if (waitpid(t->pid, NULL, WNOHANG) == t->pid || now_ns() > end) {
			spawned[1] = 0;
			print_tail(log);
			die("%s did not start (is the nginx stream module installed? "
			    "scripts/bench-deps.sh installs it)", path);
		}
	}
	usleep(50000); /* pid file first, then the workers */
	memset(&t->addr, 0, sizeof t->addr);
	t->addr.sin_family = AF_INET;
	t->addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	t->addr.sin_port = htons((uint16_t)port);
	set_hostport(t);
}

void stop_target(struct target *t)
{
	stop_spawned();
	if (t->upfd > 0)
		close(t->upfd);
	rm_tmpdir(t->dir);
}
