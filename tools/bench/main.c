/* derpd-bench: DERP relay load generator and benchmark (issue 3); see man/derpd-bench.1.
 *
 * Relay runs (relay.c): N sender->receiver pairs (or a ring of N clients), fixed payload
 * size, offered rate per sender (paced) or unlimited, warm-up then a measured window.
 * Reports delivered packets/s, payload Gbit/s, loss, latency percentiles, and the
 * server's CPU seconds and peak RSS from /proc/PID.
 *
 * The server (servers.c) is a derpd the bench starts (--derpd), one already running (-s,
 * --pid), or, as the reference, nginx's stream proxy forwarding the same byte stream from
 * each sender to a receiver socket of the bench (--nginx, or --raw for any running TCP
 * relay).
 *
 * Idle runs (idle.c, --idle N|max): N logged-in clients that stay silent; the time to
 * log them all in and the server's RSS per connection.
 *
 * Output (report.c): a human table, then one JSON line. This file: options and main. */
#include <arpa/inet.h>
#include <getopt.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <wolfssl/options.h>
#include <wolfssl/ssl.h>

#include "server/frame.h"
#include "server/key.h"
#include "tools/bench/bench.h"

/* ---- options --------------------------------------------------------------------- */

struct bench_options opt = {
	.pairs = 10, .size = 1200, .duration = 3, .warmup = 1, .settle = 1, .drain = 3,
	.pace_us = 100, .src_addrs = 8, .login_threads = 8, .progress = -1,
};

/* Before a run: how busy the machine is without us; with --wait-quiet, wait (up to that
 * many seconds) until it is under 25 % of one CPU. */
double g_busy_before, g_waited;

static void wait_quiet(double max_s)
{
	int64_t t0 = now_ns();

	g_busy_before = busy_sample(300);
	while (g_busy_before > 25 && (double)(now_ns() - t0) / 1e9 < max_s) {
		progress("waiting for a quiet machine: %.0f %% busy", g_busy_before);
		g_busy_before = busy_sample(500);
	}
	g_waited = (double)(now_ns() - t0) / 1e9;
}

/* ---- main ------------------------------------------------------------------------ */

static void usage(FILE *f, int status)
{
	fprintf(f,
		"usage: derpd-bench (--derpd PATH | --derper PATH | -s HOST:PORT [--pid PID] |\n"
		"                    --nginx [PATH] | --raw HOST:PORT --upstream-port Q) [options]\n"
		"server (one of):\n"
		"  --derpd PATH        start PATH -a 127.0.0.1:0 -c <tmp>/k.json -stun=false\n"
		"  --derpd-arg ARG     one more argument for that derpd or derper (repeatable)\n"
		"  --derper PATH       upstream's derper, started with derpd's flags on a free port\n"
		"  -s, --server H:P    a derpd already running (plain HTTP)\n"
		"  --pid PID           its pid, for CPU and RSS from /proc\n"
		"  --nginx[=PATH]      the reference: start nginx forwarding raw TCP\n"
		"  --relay-workers N   nginx worker processes (default: online CPUs)\n"
		"  --raw H:P           a running TCP relay that forwards to 127.0.0.1:Q\n"
		"  --upstream-port Q   where the bench listens for that relay (--raw)\n"
		"relay runs:\n"
		"  -p, --pairs N       sender->receiver pairs (default 10)\n"
		"  --ring N            ring of N clients, each sending to the next\n"
		"  -l, --size B        payload bytes, 16..65536 (default 1200)\n"
		"  -r, --rate R        packets/s per sender, 0 = unlimited (default 0)\n"
		"  -d, --duration S    measured seconds (default 3)\n"
		"  -W, --warmup S      warm-up seconds (default 1)\n"
		"  --drain S           longest wait for packets in flight after (default 3)\n"
		"  --pace-us U         rate-mode pacing quantum in microseconds (default 100)\n"
		"  -j, --threads N     client epoll threads (default: online CPUs)\n"
		"idle runs:\n"
		"  --idle N|max        log in N silent clients (max: what the server's fd limit allows)\n"
		"  --procs N           bench processes to spread them over (default: as needed)\n"
		"  --settle S          wait before reading the server's RSS (default 1)\n"
		"both:\n"
		"  --login-threads N   concurrent logins (default 8)\n"
		"  --src-addrs N       loopback source addresses 127.0.0.2.. (default 8, 0 = kernel)\n"
		"  --tls               DERP over TLS (--derpd, --derper: self-signed certificate)\n"
		"  --wait-quiet S      first wait up to S s for the machine to be under 25 %% busy\n"
		"  --label TEXT        copied into the JSON line\n"
		"  -q, --quiet         only the JSON line\n"
		"  --progress, --no-progress   progress line on stderr (default: if a terminal)\n"
		"  --version           print \"derpd-bench VERSION\" and exit\n"
		"  -h, --help          this text\n");
	exit(status);
}

static double num(const char *s, const char *what, double lo, double hi)
{
	char *end;
	double v = strtod(s, &end);

	if (end == s || *end || !(v >= lo && v <= hi)) {
		fprintf(stderr, "derpd-bench: %s: \"%s\" is not a number in %g..%g\n", what, s,
			lo, hi);
		exit(2);
	}
	return v;
}

int main(int argc, char **argv)
{
	enum { O_PID = 256, O_DERPD, O_DERPER, O_DERPD_ARG, O_NGINX, O_RAW, O_UP, O_RW, O_RING, O_DRAIN,
	       O_PACE, O_IDLE, O_PROCS, O_SETTLE, O_LT, O_SRC, O_TLS, O_LABEL, O_PROG, O_NOPROG, O_QUIET,
	       O_VERSION };
	static const struct option lo[] = {
		{ "server", 1, 0, 's' }, { "pid", 1, 0, O_PID }, { "derpd", 1, 0, O_DERPD },
		{ "derper", 1, 0, O_DERPER },
		{ "derpd-arg", 1, 0, O_DERPD_ARG }, { "nginx", 2, 0, O_NGINX },
		{ "raw", 1, 0, O_RAW }, { "upstream-port", 1, 0, O_UP },
		{ "relay-workers", 1, 0, O_RW }, { "pairs", 1, 0, 'p' }, { "ring", 1, 0, O_RING },
		{ "size", 1, 0, 'l' }, { "rate", 1, 0, 'r' }, { "duration", 1, 0, 'd' },
		{ "warmup", 1, 0, 'W' }, { "drain", 1, 0, O_DRAIN }, { "pace-us", 1, 0, O_PACE },
		{ "threads", 1, 0, 'j' }, { "idle", 1, 0, O_IDLE }, { "procs", 1, 0, O_PROCS },
		{ "settle", 1, 0, O_SETTLE }, { "login-threads", 1, 0, O_LT },
		{ "src-addrs", 1, 0, O_SRC }, { "tls", 0, 0, O_TLS }, { "label", 1, 0, O_LABEL },
		{ "quiet", 0, 0, 'q' }, { "progress", 0, 0, O_PROG },
		{ "no-progress", 0, 0, O_NOPROG }, { "wait-quiet", 1, 0, O_QUIET }, { "help", 0, 0, 'h' },
		{ "version", 0, 0, O_VERSION }, { 0, 0, 0, 0 },
	};
	int c;

	opt.threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
	while ((c = getopt_long(argc, argv, "s:p:l:r:d:W:j:qh", lo, NULL)) != -1) {
		switch (c) {
		case 's': opt.server = optarg; break;
		case O_PID: opt.pid = (int)num(optarg, "--pid", 1, 1 << 30); break;
		case O_DERPD: opt.derpd = optarg; break;
		case O_DERPER: opt.derper = optarg; break;
		case O_DERPD_ARG:
			if (opt.n_derpd_args >= 32)
				die("too many --derpd-arg");
			opt.derpd_args[opt.n_derpd_args++] = optarg;
			break;
		case O_NGINX: opt.nginx = optarg ? optarg : "nginx"; break;
		case O_RAW: opt.raw = optarg; break;
		case O_UP: opt.upstream_port = (int)num(optarg, "--upstream-port", 1, 65535); break;
		case O_RW: opt.relay_workers = (int)num(optarg, "--relay-workers", 1, 64); break;
		case 'p': opt.pairs = (int)num(optarg, "--pairs", 1, 1000000); break;
		case O_RING: opt.ring = (int)num(optarg, "--ring", 2, 1000000); break;
		case 'l': opt.size = (int)num(optarg, "--size", STAMP_LEN, DERP_MAX_PACKET); break;
		case 'r': opt.rate = num(optarg, "--rate", 0, 1e9); break;
		case 'd': opt.duration = num(optarg, "--duration", 0.1, 86400); break;
		case 'W': opt.warmup = num(optarg, "--warmup", 0, 86400); break;
		case O_DRAIN: opt.drain = num(optarg, "--drain", 0, 600); break;
		case O_PACE: opt.pace_us = num(optarg, "--pace-us", 0, 1e6); break;
		case 'j': opt.threads = (int)num(optarg, "--threads", 1, 256); break;
		case O_IDLE:
			if (!strcmp(optarg, "max"))
				opt.idle_max = 1, opt.idle = 1;
			else
				opt.idle = (long)num(optarg, "--idle", 1, 1e7);
			break;
		case O_PROCS: opt.procs = (int)num(optarg, "--procs", 1, 1000); break;
		case O_SETTLE: opt.settle = num(optarg, "--settle", 0, 600); break;
		case O_LT: opt.login_threads = (int)num(optarg, "--login-threads", 1, 1024); break;
		case O_SRC: opt.src_addrs = (int)num(optarg, "--src-addrs", 0, 250); break;
		case O_TLS: opt.tls = 1; break;
		case O_LABEL: opt.label = optarg; break;
		case 'q': opt.quiet = 1; break;
		case O_PROG: opt.progress = 1; break;
		case O_NOPROG: opt.progress = 0; break;
		case O_QUIET: opt.wait_quiet = num(optarg, "--wait-quiet", 0, 3600); break;
		case 'h': usage(stdout, 0); break;
		case O_VERSION: printf("derpd-bench %s\n", DERPD_VERSION); return 0;
		default: usage(stderr, 2);
		}
	}
	if (optind != argc)
		usage(stderr, 2);
	if (!!opt.server + !!opt.derpd + !!opt.derper + !!opt.nginx + !!opt.raw != 1) {
		fprintf(stderr, "derpd-bench: give exactly one of --derpd, --derper, -s, --nginx, --raw\n");
		usage(stderr, 2);
	}
	if (opt.tls && (opt.nginx || opt.raw))
		die("--tls: the reference relay runs are plain TCP only");
	if (opt.raw && !opt.upstream_port)
		die("--raw needs --upstream-port");
	if ((opt.nginx || opt.raw) && opt.ring)
		die("--ring needs a DERP server: a raw relay forwards one stream to one receiver");

	signal(SIGPIPE, SIG_IGN);
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	if (key_init() != 0)
		die("libsodium initialisation failed");
	/* The client library calls wolfSSL_Init() for every connection; the first call is not
	 * safe from several login threads at once (it initialises wolfSSL's global RNG mutex):
	 * make it here, before any thread. */
	if (opt.tls && wolfSSL_Init() != WOLFSSL_SUCCESS)
		die("wolfSSL initialisation failed");
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	getrlimit(RLIMIT_NOFILE, &rl);
	long fdlim = (long)rl.rlim_cur;

	struct target tg = { .kind = "derpd", .upfd = -1 };
	if (opt.derpd) {
		start_derpd(&tg, opt.derpd, opt.derpd_args, opt.n_derpd_args, opt.tls, 0);
	} else if (opt.derper) {
		tg.kind = "derper";
		start_derpd(&tg, opt.derper, opt.derpd_args, opt.n_derpd_args, opt.tls, 1);
	} else if (opt.server) {
		parse_hostport(opt.server, &tg.addr);
		set_hostport(&tg);
		tg.pid = opt.pid;
	} else if (opt.nginx) {
		tg.kind = "nginx";
		tg.raw = 1;
		start_nginx(&tg, opt.nginx, opt.relay_workers > 0 ? opt.relay_workers
						   : (int)sysconf(_SC_NPROCESSORS_ONLN));
	} else {
		tg.kind = "relay";
		tg.raw = 1;
		parse_hostport(opt.raw, &tg.addr);
		set_hostport(&tg);
		tg.pid = opt.pid;
		struct sockaddr_in a = { .sin_family = AF_INET,
					 .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
					 .sin_port = htons((uint16_t)opt.upstream_port) };
		int one = 1;
		tg.upfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		setsockopt(tg.upfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
		if (bind(tg.upfd, (struct sockaddr *)&a, sizeof a) < 0 || listen(tg.upfd, 4096) < 0)
			die("listen on 127.0.0.1:%d: %s", opt.upstream_port, strerror(errno));
	}
	wait_quiet(opt.wait_quiet);
	if (opt.idle)
		idle_run(&tg, fdlim);
	else
		relay_run(&tg, fdlim);
	stop_target(&tg);
	return 0;
}
