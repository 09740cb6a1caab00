/* derpd-bench idle runs (--idle N|max): log in N clients that then stay silent, from
 * several loopback source addresses and, past this process's fd limit, from several
 * processes; report the time to log them all in and the server's RSS per connection. */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tools/bench/bench.h"

struct idle_share {  /* one per process, in shared memory */
	long ok, fail;
	int64_t t_done;
	int done;
	char err[160];
};

static void idle_child(const struct target *tg, struct idle_share *sh, long lo, long hi,
		       int threads, int ctl)
{
	int *fds = malloc(sizeof(int) * (size_t)(hi - lo));

	if (!fds)
		_exit(1);
	login_all(tg, lo, hi, threads, fds, NULL, NULL, &sh->ok, &sh->fail, sh->err,
		  sizeof sh->err, 0);
	sh->t_done = now_ns();
	__atomic_store_n(&sh->done, 1, __ATOMIC_RELEASE);
	char b;
	while (read(ctl, &b, 1) < 0 && errno == EINTR) /* hold them until the parent is done */
		;
	for (long i = 0; i < hi - lo; i++)
		close_rst(fds[i]);
	_exit(0);
}

void idle_run(struct target *tg, long fdlim)
{
	char capped[200] = "";
	long n = opt.idle;

	if (tg->raw)
		die("--idle needs a DERP server (--derpd, --derper or -s)");
	long srv_lim = tg->pid ? proc_fd_limit(tg->pid) : -1;
	long srv_open = tg->pid ? proc_fd_count(tg->pid) : -1;
	if (srv_lim > 0 && srv_open >= 0) {
		long room = srv_lim - srv_open - 16; /* derpd keeps a few fds for itself */
		if (opt.idle_max || n > room) {
			snprintf(capped, sizeof capped,
				 "the server's fd limit %ld (%ld open) allows %ld connections%s", srv_lim,
				 srv_open, room, opt.idle_max ? "" : "; fewer than asked");
			if (!opt.idle_max)
				fprintf(stderr, "derpd-bench: %s\n", capped);
			n = room;
		}
	} else if (opt.idle_max) {
		die("--idle max needs the server's pid (--derpd, --derper, or -s with --pid)");
	}
	if (n < 1)
		die("no connections to open");
	long per = fdlim - 64 - opt.login_threads; /* fds one bench process can hold */
	int procs = opt.procs > 0 ? opt.procs : (int)((n + per - 1) / per);
	if ((n + procs - 1) / procs > per)
		die("%d processes x %ld fds cannot hold %ld connections", procs, per, n);
	int threads = opt.login_threads / procs > 0 ? opt.login_threads / procs : 1;

	sleep_s(0.2);
	long rss0 = proc_status_kib(tg->pid, "VmRSS");
	struct idle_share *sh = mmap(NULL, sizeof *sh * (size_t)procs, PROT_READ | PROT_WRITE,
				     MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	int ctl[2];
	if (sh == MAP_FAILED || pipe2(ctl, O_CLOEXEC) != 0)
		die("mmap/pipe: %s", strerror(errno));
	memset(sh, 0, sizeof *sh * (size_t)procs);
	pid_t *kids = calloc((size_t)procs, sizeof(pid_t));
	fflush(stdout);
	fflush(stderr);
	int64_t t0 = now_ns();
	for (int i = 0; i < procs; i++) {
		long lo = n * i / procs, hi = n * (i + 1) / procs;
		kids[i] = fork();
		if (kids[i] < 0)
			die("fork: %s", strerror(errno));
		if (kids[i] == 0) {
			close(ctl[1]);
			spawned[0] = spawned[1] = 0;
			idle_child(tg, &sh[i], lo, hi, threads, ctl[0]);
		}
	}
	close(ctl[0]);
	long ok = 0, fail = 0;
	int64_t t_done = t0;
	for (int done = 0; done < procs;) {
		usleep(20000);
		ok = fail = 0;
		done = 0;
		for (int i = 0; i < procs; i++) {
			ok += __atomic_load_n(&sh[i].ok, __ATOMIC_RELAXED);
			fail += __atomic_load_n(&sh[i].fail, __ATOMIC_RELAXED);
			if (__atomic_load_n(&sh[i].done, __ATOMIC_ACQUIRE)) {
				done++;
				if (sh[i].t_done > t_done)
					t_done = sh[i].t_done;
			} else if (waitpid(kids[i], NULL, WNOHANG) == kids[i]) {
				die("login process %d died", i);
			}
		}
		progress("logging in: %ld of %ld (%ld failed), %.1f s", ok, n, fail,
			 (double)(now_ns() - t0) / 1e9);
	}
	double connect_s = (double)(t_done - t0) / 1e9;
	progress("logged in %ld; settling %.1f s", ok, opt.settle);
	sleep_s(opt.settle);
	long rss1 = proc_status_kib(tg->pid, "VmRSS");
	long hwm = proc_status_kib(tg->pid, "VmHWM");
	long srv_fds = proc_fd_count(tg->pid);
	close(ctl[1]);
	for (int i = 0; i < procs; i++)
		waitpid(kids[i], NULL, 0);
	progress_end();
	const char *err = "";
	for (int i = 0; i < procs && !err[0]; i++)
		err = sh[i].err;
	double per_conn = ok > 0 && rss0 > 0 && rss1 > 0 ? (double)(rss1 - rss0) * 1024 / ok : -1;

	struct idle_result r = { .n = n, .ok = ok, .fail = fail, .procs = procs,
				 .threads = threads, .connect_s = connect_s, .per_conn = per_conn,
				 .rss0 = rss0, .rss1 = rss1, .hwm = hwm, .srv_fds = srv_fds,
				 .srv_lim = srv_lim, .err = err, .capped = capped };
	report_idle(tg, &r, fdlim); /* before munmap: err points into the shared memory */
	munmap(sh, sizeof *sh * (size_t)procs);
	free(kids);
}
