/* derpd: start-up, signals, shutdown. The work happens in server/ (relay workers) and
 * stun/ (STUN thread); main only wires them together and waits for a signal. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "acme/cert.h"
#include "mesh/mesh.h"
#include "metrics/httpd.h"
#include "server/admission.h"
#include "server/config.h"
#include "server/key.h"
#include "server/keyfile.h"
#include "server/listenfds.h"
#include "server/log.h"
#include "server/logsum.h"
#include "server/notify.h"
#include "server/ratelimit.h"
#include "server/server.h"
#include "stun/stun.h"

/* derper's design allows hundreds of thousands of connections; each needs a descriptor. */
static void raise_fd_limit(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
		return;
	if (rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
			log_warn(LS_DERPD, "raising the file descriptor limit: %s", strerror(errno));
	}
	getrlimit(RLIMIT_NOFILE, &rl);
	log_info(LS_DERPD, "file descriptor limit %llu", (unsigned long long)rl.rlim_cur);
}

/* --rate-config: load and apply; at start-up a bad file is fatal, on SIGHUP the old
 * limits stay. */
static int load_rate_config(const struct config *cfg)
{
	struct rate_config rc;
	char err[256];

	if (rate_config_load(cfg->rate_config, &rc, err, sizeof err) != 0) {
		log_error(LS_CONFIG, "rate config: %s", err);
		return -1;
	}
	server_set_rate_config(&rc);
	log_info(LS_CONFIG,
		 "rate config applied: client-rate=%llu bytes/sec, client-burst=%llu bytes",
		 (unsigned long long)rc.bytes_per_sec, (unsigned long long)rc.burst);
	return 0;
}

/* Started with any of stdin, stdout or stderr closed, the next socket or eventfd would take
 * that number and log lines would be written into it: hold 0-2 with /dev/null first, as
 * Go's runtime does for derper. */
static void stdio_hold(void)
{
	for (int fd = 0; fd <= 2; fd++) {
		if (fcntl(fd, F_GETFD) >= 0 || errno != EBADF)
			continue;
		int nul = open("/dev/null", O_RDWR);
		if (nul >= 0 && nul != fd) { /* cannot happen: open takes the lowest free fd */
			dup2(nul, fd);
			close(nul);
		}
	}
}

/* Tell systemd we serve: the listeners are bound, the certificate is loaded (TLS), the
 * HTTP side and STUN run. STATUS shows in `systemctl status`. */
static void notify_serving(const struct config *cfg, const char *note)
{
	char status[400];
	const char *h = cfg->listen_host;

	snprintf(status, sizeof status, strchr(h, ':') ? "serving on [%s]:%d%s%s" : "serving on %s:%d%s%s",
		 h, server_port(), cfg->tls ? " (TLS)" : "", note);
	notify_ready(status);
}

/* The watchdog ping is due: WATCHDOG=1 only if every worker's loop turned within the
 * watchdog interval, so a wedged worker (not just a wedged main thread) gets derpd
 * restarted. */
static void watchdog_ping(int64_t **turns, int *cap)
{
	int n = server_worker_turns(*turns, *cap);
	if (n > *cap) {
		int64_t *t = realloc(*turns, sizeof **turns * (size_t)n);
		if (!t) {
			notify_watchdog_ping(1); /* out of memory is not a stuck worker */
			return;
		}
		*turns = t;
		*cap = n;
		n = server_worker_turns(*turns, *cap);
	}
	int64_t max_age = (int64_t)(notify_watchdog_usec() / 1000);
	int ok = notify_workers_fresh(*turns, n, notify_now_ms(), max_age);
	if (!ok)
		log_error(LS_SYSTEMD,
			  "a worker has not turned for %lld ms; withholding the watchdog ping",
			 (long long)max_age);
	notify_watchdog_ping(ok);
}

/* The next SIGINT/SIGTERM/SIGHUP, or 0 once timeout_ms passes (-1: never); with a systemd
 * watchdog, pings it while waiting. */
static int wait_signal(const sigset_t *sigs, int64_t **turns, int *cap, int timeout_ms)
{
	int64_t end = timeout_ms < 0 ? -1 : notify_now_ms() + timeout_ms;

	for (;;) {
		int sig, wait = notify_watchdog_wait_ms();
		int64_t left = end < 0 ? -1 : end - notify_now_ms();
		if (end >= 0 && left <= 0)
			return 0;
		if (wait < 0 && left < 0) {
			if (sigwait(sigs, &sig) == 0)
				return sig;
			continue;
		}
		if (wait == 0) {
			watchdog_ping(turns, cap);
			continue;
		}
		if (wait < 0 || (left >= 0 && left < wait))
			wait = (int)left;
		struct timespec ts = { wait / 1000, (long)(wait % 1000) * 1000000 };
		if ((sig = sigtimedwait(sigs, NULL, &ts)) > 0)
			return sig;
	}
}

/* ACME: READY=1 waits for the first certificate of --hostname (or its first attempt to
 * fail, or CERT_WAIT_MS), so a unit ordered after derpd finds TLS working; STATUS says
 * what derpd waits for meanwhile. Returns a signal that came first, else 0; *note tells
 * READY's STATUS what became of the certificate. */
#define CERT_WAIT_MS 60000
static int wait_first_cert(struct cert_provider *certs, const struct config *cfg,
			   const sigset_t *sigs, int64_t **turns, int *cap, const char **note)
{
	int64_t end = notify_now_ms() + CERT_WAIT_MS;
	char status[400];
	enum cert_state st;

	*note = "";
	if (!certs || (st = cert_provider_state(certs)) == CERT_SERVING)
		return 0;
	snprintf(status, sizeof status, "STATUS=listening; obtaining a certificate for %s",
		 cfg->hostname);
	notify_send(status);
	while (st == CERT_PENDING && notify_now_ms() < end) {
		int sig = wait_signal(sigs, turns, cap, 100);
		if (sig && sig != SIGHUP) /* nothing to reload before the first certificate */
			return sig;
		st = cert_provider_state(certs);
	}
	if (st == CERT_FAILED)
		*note = "; no certificate yet: the first ACME order failed (see the log), retrying";
	else if (st == CERT_PENDING)
		*note = "; no certificate yet: the ACME order is still under way";
	return 0;
}

int main(int argc, char **argv)
{
	struct config cfg;
	uint8_t priv[32];
	char err[256];
	struct stun_server *stun = NULL;
	struct cert_provider *certs = NULL;
	sigset_t sigs;
	int sig, rc;
	int64_t *turns = NULL;
	int nturns = 0;

	stdio_hold();
	if ((rc = config_parse(&cfg, argc, argv)) != 0)
		return rc;
	log_init(cfg.verbose);
	notify_init();
	if (listenfds_init(err, sizeof err) != 0) {
		log_error(LS_SYSTEMD, "%s", err);
		return 1;
	}
	if (key_init() != 0) {
		log_error(LS_DERPD, "libsodium initialisation failed");
		return 1;
	}
	/* Signals are taken synchronously by this thread only (sigwait below); the worker
	 * threads inherit the blocked mask. A peer that vanishes must not kill us by SIGPIPE. */
	signal(SIGPIPE, SIG_IGN);
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	raise_fd_limit();
	if (log_summary_start(0, err, sizeof err) != 0) {
		log_error(LS_CONFIG, "%s", err);
		return 1;
	}

	if (cfg.dev) {
		key_generate(priv);
		log_info(LS_CONFIG, "dev mode: using a fresh in-memory server key");
	} else if (keyfile_load_or_create(cfg.config_path, priv, err, sizeof err) != 0) {
		log_error(LS_CONFIG, "%s", err);
		return 1;
	}
	/* The mesh key must be known before any client logs in. */
	if (mesh_init(&cfg, err, sizeof err) != 0) {
		log_error(LS_MESH, "%s", err);
		return 1;
	}
	if (cfg.run_stun && !(stun = stun_start(cfg.listen_host, cfg.stun_port, err, sizeof err))) {
		log_error(LS_STUN, "cannot start the STUN server: %s", err);
		return 1;
	}
	if (cfg.tls) {
		uint8_t pub[32];
		key_public(pub, priv);
		if (!(certs = cert_provider_start(&cfg, pub, err, sizeof err))) {
			log_error(LS_CERT, "derper: can not start cert provider: %s", err);
			return 1;
		}
		server_set_cert_provider(certs);
		log_info(LS_TLS, "TLS with %s", cert_tls_library());
	}
	if (httpd_start(&cfg, err, sizeof err) != 0) {
		log_error(LS_HTTP, "%s", err);
		return 1;
	}
	if (cfg.rate_config[0] && load_rate_config(&cfg) != 0)
		return 1;
	if (admission_start(&cfg, err, sizeof err) != 0) {
		log_error(LS_DERPD, "%s", err);
		return 1;
	}
	if (server_start(&cfg, priv, err, sizeof err) != 0 ||
	    listenfds_check_unused(err, sizeof err) != 0) {
		log_error(LS_DERPD, "%s", err);
		return 1;
	}
	if (mesh_start(&cfg, priv, err, sizeof err) != 0) {
		log_error(LS_MESH, "%s", err);
		return 1;
	}

	const char *note;
	sig = wait_first_cert(certs, &cfg, &sigs, &turns, &nturns, &note);
	if (!sig)
		notify_serving(&cfg, note);

	while (!sig) {
		sig = wait_signal(&sigs, &turns, &nturns, -1);
		if (sig == SIGHUP) {
			/* systemd holds the unit in "reloading" until the READY=1 after it */
			notify_reloading();
			if (cfg.rate_config[0])
				load_rate_config(&cfg);
			if (certs)
				cert_provider_reload(certs);
			if (!cfg.rate_config[0] && !certs)
				log_info(LS_DERPD, "SIGHUP: nothing to reload; ignored");
			notify_serving(&cfg, "");
			sig = 0;
		}
	}
	log_info(LS_DERPD, "%s: shutting down", sig == SIGINT ? "SIGINT" : "SIGTERM");
	notify_stopping();
	free(turns);
	mesh_stop();
	if (stun)
		stun_stop(stun);
	admission_stop(); /* pending logins are refused while the workers still run */
	server_stop();
	httpd_stop();
	server_free(); /* after the HTTP threads, which read the relay's counters, are gone */
	cert_provider_stop(certs);
	log_summary_stop(); /* what is still counted goes out before the last line */
	log_info(LS_DERPD, "stopped");
	return 0;
}
