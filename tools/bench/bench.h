/* derpd-bench (man/derpd-bench.1): what its files share; nothing outside tools/bench/
 * includes this. main.c options and main, connect.c connecting and logging in, relay.c
 * relay runs, idle.c idle-connection runs, report.c what it prints, servers.c the server
 * under test, sys.c time, /proc, children and sockets. */
#ifndef DERPD_BENCH_H
#define DERPD_BENCH_H
#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define STAMP_LEN 16 /* a packet's first payload bytes: send ns 8, sender id 4, seq 4 */

struct WOLFSSL;

/* ---- options (main.c) ------------------------------------------------------------ */

struct bench_options {
	const char *server, *derpd, *derper, *nginx, *raw, *label;
	const char *derpd_args[32];
	int n_derpd_args;
	int pid, upstream_port, relay_workers;
	int pairs, ring, size, threads, login_threads, procs, src_addrs, quiet, progress, tls;
	long idle;
	int idle_max;
	double rate, duration, warmup, settle, drain, pace_us, wait_quiet;
};
extern struct bench_options opt;
/* How busy the machine was (% of one CPU) before the run, and how long we waited. */
extern double g_busy_before, g_waited;

/* ---- system helpers (sys.c) ------------------------------------------------------ */

extern pid_t spawned[2]; /* [0] derpd, [1] nginx: stopped by die() and on a signal */

__attribute__((format(printf, 1, 2), noreturn)) void die(const char *fmt, ...);
void on_signal(int sig);
void stop_spawned(void);
int64_t now_ns(void);
void sleep_until(int64_t t);
void sleep_s(double s);
double self_cpu(void);
void close_rst(int fd);

struct mcpu { /* machine-wide jiffies from /proc/stat */
	double busy, softirq, steal, total;
};
struct mcpu machine_cpu(void);
double busy_sample(int ms);
double others_cpu(pid_t srv);
double tree_cpu(pid_t pid);
long proc_status_kib(pid_t pid, const char *field);
long tree_status_kib(pid_t pid, const char *field);
long proc_fd_limit(pid_t pid);
long proc_fd_count(pid_t pid);

void make_tmpdir(char dir[64], const char *what);
void rm_tmpdir(char dir[64]);
void print_tail(const char *path);
pid_t spawn(char *const argv[], const char *log);
int listen_loopback(int backlog);
int bound_port(int fd);

/* ---- the server under test (servers.c) ------------------------------------------- */

struct target {
	const char *kind;          /* "derpd", "derper", "nginx", "relay" */
	int raw;                   /* bytes forwarded as they are: no DERP */
	struct sockaddr_in addr;   /* where clients connect */
	char hostport[64];
	pid_t pid;                 /* measured process (0 = unknown) */
	char dir[64];              /* temp dir of a spawned server */
	int upfd;                  /* raw: the listener the relay forwards to */
};

void parse_hostport(const char *s, struct sockaddr_in *a);
void set_hostport(struct target *t);
void start_derpd(struct target *t, const char *path, const char *const *args, int nargs,
		 int tls, int upstream);
void start_nginx(struct target *t, const char *path, int workers);
void stop_target(struct target *t);

/* ---- connecting and logging in (connect.c) --------------------------------------- */

/* Log in clients [base, end) with nthreads threads; returns failures. */
long login_all(const struct target *t, long base, long end, int nthreads, int *fds,
	       uint8_t (*pubs)[32], struct WOLFSSL **ssls, long *ok, long *fail, char *err,
	       size_t el, int show);
void raw_connect_all(const struct target *tg, int *fds, int npairs);
double fresh_pair_ms(const struct target *tg, char *err, size_t el);

/* ---- the runs (relay.c, idle.c) -------------------------------------------------- */

void relay_run(struct target *tg, long fdlim);
void idle_run(struct target *tg, long fdlim);

/* ---- output (report.c) ----------------------------------------------------------- */

struct relay_result {
	int clients;
	double login_s, measured_s, drain_s;
	uint64_t sent, delivered, delivered_win, bytes_win, other, wrong, closed;
	double pps, gbps, loss_pct, p50, p99, p999, max;
	double srv_cpu, bench_cpu, mach_pct, softirq_pct, steal_pct, others_pct;
	long srv_hwm, srv_rss;
	double fresh_ms;
	char fresh_err[200];
	char capped[160];
};

struct idle_result {
	long n, ok, fail;
	int procs, threads;
	double connect_s, per_conn;
	long rss0, rss1, hwm, srv_fds, srv_lim;
	const char *err;
	const char *capped;
};

/* The progress line on stderr (see --progress); progress_end() clears it. */
__attribute__((format(printf, 1, 2))) void progress(const char *fmt, ...);
void progress_end(void);
/* The human table (unless -q), then the JSON line scripts/bench.sh reads. */
void report_relay(const struct target *tg, const struct relay_result *r, long fdlim);
void report_idle(const struct target *tg, const struct idle_result *r, long fdlim);

#endif
