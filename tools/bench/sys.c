/* derpd-bench's system helpers: time, dying cleanly with spawned children, /proc
 * readings of the server and the machine, starting a child with its output in a file,
 * loopback listeners. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tools/bench/bench.h"

pid_t spawned[2];
static char *tmpdirs[2];        /* removed by die() too */

void stop_spawned(void)
{
	for (int i = 0; i < 2; i++) {
		if (spawned[i] <= 0)
			continue;
		kill(spawned[i], SIGTERM);
		for (int t = 0; t < 300 && waitpid(spawned[i], NULL, WNOHANG) == 0; t++)
			usleep(10000);
		if (kill(spawned[i], 0) == 0) {
			kill(spawned[i], SIGKILL);
			waitpid(spawned[i], NULL, 0);
		}
		spawned[i] = 0;
	}
}

void die(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "\nderpd-bench: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	stop_spawned();
	for (int i = 0; i < 2; i++)
		if (tmpdirs[i])
			rm_tmpdir(tmpdirs[i]);
	exit(1);
}

/* SIGTERM rather than SIGKILL: nginx's master then stops its workers too. */
void on_signal(int sig)
{
	for (int i = 0; i < 2; i++)
		if (spawned[i] > 0)
			kill(spawned[i], SIGTERM);
	_exit(128 + sig);
}

int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

void sleep_until(int64_t t)
{
	struct timespec ts = { (time_t)(t / 1000000000), (long)(t % 1000000000) };

	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
		;
}

void sleep_s(double s)
{
	sleep_until(now_ns() + (int64_t)(s * 1e9));
}

double self_cpu(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
	       (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

void close_rst(int fd)
{
	struct linger l = { 1, 0 }; /* RST: no TIME_WAIT left behind for the next run */

	if (fd < 0)
		return;
	setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
	close(fd);
}

/* ---- /proc readings of the server (and its child processes: nginx workers) ------- */

static int proc_stat(pid_t pid, int *ppid, double *cpu)
{
	char path[64], buf[1024];
	unsigned long ut, st;
	char state;

	snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n <= 0)
		return -1;
	buf[n] = 0;
	char *p = strrchr(buf, ')');
	if (!p || sscanf(p + 2, "%c %d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &state,
			 ppid, &ut, &st) != 4)
		return -1;
	*cpu = (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
	return 0;
}

/* pid and its direct children. */
static int proc_tree(pid_t pid, pid_t *out, int max)
{
	int n = 0;

	if (pid <= 0)
		return 0;
	out[n++] = pid;
	DIR *d = opendir("/proc");
	struct dirent *e;
	while (d && (e = readdir(d)) && n < max) {
		int ppid;
		double cpu;
		pid_t p = (pid_t)atoi(e->d_name);
		if (p > 0 && p != pid && proc_stat(p, &ppid, &cpu) == 0 && ppid == pid)
			out[n++] = p;
	}
	if (d)
		closedir(d);
	return n;
}

/* Machine-wide CPU from /proc/stat: busy and softirq jiffies, total jiffies. Softirq work
 * (TCP on loopback) is not always charged to the process that caused it. */
struct mcpu machine_cpu(void)
{
	struct mcpu m = { 0, 0, 0, 0 };
	unsigned long long v[8] = { 0 };
	FILE *f = fopen("/proc/stat", "re");

	if (f && fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2],
			&v[3], &v[4], &v[5], &v[6], &v[7]) == 8) {
		for (int i = 0; i < 8; i++)
			m.total += (double)v[i];
		m.busy = m.total - (double)v[3] - (double)v[4];
		m.softirq = (double)v[6];
		m.steal = (double)v[7];
	}
	if (f)
		fclose(f);
	return m;
}

double busy_sample(int ms)
{
	struct mcpu a = machine_cpu(), b;

	usleep((useconds_t)ms * 1000);
	b = machine_cpu();
	return b.total > a.total ? 100 * (double)sysconf(_SC_NPROCESSORS_ONLN) *
					   (b.busy - a.busy) / (b.total - a.total)
				 : 0;
}

/* CPU seconds (own plus reaped children's) of every user-space process but this one, its
 * children and the server's: other people's work on a shared machine. */
double others_cpu(pid_t srv)
{
	pid_t tree[64], self = getpid();
	int nt = proc_tree(srv, tree, 64);
	double sum = 0, tick = (double)sysconf(_SC_CLK_TCK);
	DIR *d = opendir("/proc");

	for (struct dirent *e; d && (e = readdir(d));) {
		pid_t p = (pid_t)atoi(e->d_name);
		char path[64], buf[1024];
		int in = p <= 2 || p == self;
		for (int i = 0; i < nt && !in; i++)
			in = tree[i] == p;
		if (in)
			continue;
		snprintf(path, sizeof path, "/proc/%d/stat", (int)p);
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			continue;
		ssize_t n = read(fd, buf, sizeof buf - 1);
		close(fd);
		if (n <= 0)
			continue;
		buf[n] = 0;
		char *q = strrchr(buf, ')'), st;
		int ppid;
		unsigned long ut, stm;
		long cut, cst;
		if (q && sscanf(q + 2, "%c %d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu %ld %ld",
				&st, &ppid, &ut, &stm, &cut, &cst) == 6 && ppid != 2 && ppid != self)
			sum += (double)(ut + stm) + (double)(cut + cst);
	}
	if (d)
		closedir(d);
	return sum / tick;
}

double tree_cpu(pid_t pid)
{
	pid_t t[64];
	double sum = 0, c;
	int ppid, n = proc_tree(pid, t, 64);

	for (int i = 0; i < n; i++)
		if (proc_stat(t[i], &ppid, &c) == 0)
			sum += c;
	return n ? sum : -1;
}

long proc_status_kib(pid_t pid, const char *field)
{
	char path[64], line[256];
	size_t fl = strlen(field);
	long v = -1;

	snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
	FILE *f = fopen(path, "re");
	while (f && fgets(line, sizeof line, f))
		if (!strncmp(line, field, fl) && line[fl] == ':') {
			v = atol(line + fl + 1);
			break;
		}
	if (f)
		fclose(f);
	return v;
}

long tree_status_kib(pid_t pid, const char *field)
{
	pid_t t[64];
	long sum = 0;
	int n = proc_tree(pid, t, 64);

	for (int i = 0; i < n; i++) {
		long v = proc_status_kib(t[i], field);
		if (v > 0)
			sum += v;
	}
	return n ? sum : -1;
}

long proc_fd_limit(pid_t pid)
{
	char path[64], line[256];
	long v = -1;

	snprintf(path, sizeof path, "/proc/%d/limits", (int)pid);
	FILE *f = fopen(path, "re");
	while (f && fgets(line, sizeof line, f))
		if (!strncmp(line, "Max open files", 14)) {
			v = atol(line + 14);
			break;
		}
	if (f)
		fclose(f);
	return v;
}

long proc_fd_count(pid_t pid)
{
	char path[64];
	long n = 0;

	snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
	DIR *d = opendir(path);
	if (!d)
		return -1;
	for (struct dirent *e; (e = readdir(d));)
		n += e->d_name[0] != '.';
	closedir(d);
	return n;
}

/* ---- children and sockets -------------------------------------------------------- */

void make_tmpdir(char dir[64], const char *what)
{
	snprintf(dir, 64, "/tmp/derpd-bench-%s.XXXXXX", what);
	if (!mkdtemp(dir))
		die("mkdtemp: %s", strerror(errno));
	for (int i = 0; i < 2; i++)
		if (!tmpdirs[i]) {
			tmpdirs[i] = dir;
			break;
		}
}

/* Remove path and, two levels deep, what is in it (derpd's certificate directory). */
static void rm_tree(const char *path, int depth)
{
	char sub[512];
	DIR *d;

	if (unlink(path) == 0 || depth > 2 || !(d = opendir(path)))
		return;
	for (struct dirent *e; (e = readdir(d));) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
		rm_tree(sub, depth + 1);
	}
	closedir(d);
	rmdir(path);
}

void rm_tmpdir(char dir[64])
{
	for (int i = 0; i < 2; i++)
		if (tmpdirs[i] == dir)
			tmpdirs[i] = NULL;
	if (dir[0])
		rm_tree(dir, 0);
	dir[0] = 0;
}

void print_tail(const char *path)
{
	char buf[4096];
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return;
	off_t end = lseek(fd, 0, SEEK_END);
	lseek(fd, end > (off_t)sizeof buf - 1 ? end - (off_t)sizeof buf + 1 : 0, SEEK_SET);
	ssize_t n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n > 0) {
		buf[n] = 0;
		fprintf(stderr, "--- %s ---\n%s", path, buf);
	}
}

pid_t spawn(char *const argv[], const char *log)
{
	int lfd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (lfd < 0)
		die("%s: %s", log, strerror(errno));
	pid_t pid = fork();
	if (pid < 0)
		die("fork: %s", strerror(errno));
	if (pid == 0) {
		int nul = open("/dev/null", O_RDWR);
		dup2(nul, 0);
		dup2(lfd, 1);
		dup2(lfd, 2);
		signal(SIGPIPE, SIG_DFL);
		signal(SIGINT, SIG_DFL);
		signal(SIGTERM, SIG_DFL);
		prctl(PR_SET_PDEATHSIG, SIGTERM); /* the bench killed outright: stop too */
		execvp(argv[0], argv);
		fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
		_exit(127);
	}
	close(lfd);
	return pid;
}

int listen_loopback(int backlog)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;

	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(fd, backlog) < 0)
		die("listen on 127.0.0.1: %s", strerror(errno));
	return fd;
}

int bound_port(int fd)
{
	struct sockaddr_in a;
	socklen_t l = sizeof a;

	getsockname(fd, (struct sockaddr *)&a, &l);
	return ntohs(a.sin_port);
}
