/* The prober: the probes the current DERP map calls for, when each runs next, a pool of
 * worker threads that run them, and their results, as upstream's prober.Prober and
 * derpProber do. One lock guards it all; a probe's run happens outside the lock.
 *
 * The map probe ("derpmap-probe", every -interval) fetches the map and reconciles the
 * probe set: probes are named as upstream names them (derp/<region>/<node>/tls, .../udp,
 * .../udp6, derp/<region>/<from>/<to>/mesh and .../bw), new ones start after a delay
 * spread over their interval (-spread), gone ones are dropped when their run ends. A
 * probe runs at most once at a time; one still running when its next turn comes is not
 * started twice (upstream's concurrency of 1). Each run gets 80 % of its interval. */
#include <arpa/inet.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tools/probe/probe.h"

struct probe {
	struct probe_info info;      /* name, labels, results: what a snapshot copies */
	struct dm_node from, to;     /* the targets, refreshed when the map is reloaded */
	int64_t next_ms;             /* monotonic time of the next run */
	int removed;                 /* no longer in the map: freed when its run ends */
	int is_map;
};

static struct {
	pthread_mutex_t mu;
	pthread_cond_t work, sched, done;
	struct prober_opts o;
	struct probe **v;            /* sorted by name; removed ones too until their run ends */
	int n, cap;
	struct probe **q;            /* runnable, FIFO */
	int qhead, qlen, qcap;
	struct derp_map map;
	int have_map;
	double map_at;
	int stopping, started, nworkers;
	pthread_t sched_th, *workers;
} P = { .mu = PTHREAD_MUTEX_INITIALIZER };

const char *probe_class_name(enum probe_class c)
{
	switch (c) {
	case PC_MAP: return "derp_map";
	case PC_TLS: return "tls";
	case PC_UDP: return "derp_udp";
	case PC_MESH: return "derp_mesh";
	case PC_BW: return "derp_bw";
	}
	return "?";
}

static int by_name(const void *a, const void *b)
{
	return strcmp((*(struct probe *const *)a)->info.name, (*(struct probe *const *)b)->info.name);
}

/* Upstream's initialDelay: a fraction of the interval that depends only on the name, so a
 * restarted prober keeps the same spread. */
static int64_t spread_delay(const char *name, int64_t interval_ms)
{
	uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
	for (const char *p = name; *p; p++)
		h = (h ^ (uint8_t)*p) * 0x100000001b3ull;
	return (int64_t)((double)(h >> 11) / (double)(1ull << 53) * (double)interval_ms);
}

static void enqueue(struct probe *p)
{
	if (P.qlen == P.qcap) {
		int nc = P.qcap ? P.qcap * 2 : 64;
		struct probe **q = malloc(sizeof *q * (size_t)nc);
		if (!q)
			return; /* stays due: the scheduler offers it again */
		for (int i = 0; i < P.qlen; i++)
			q[i] = P.q[(P.qhead + i) % P.qcap];
		free(P.q);
		P.q = q;
		P.qcap = nc;
		P.qhead = 0;
	}
	P.q[(P.qhead + P.qlen++) % P.qcap] = p;
	p->info.in_flight = 1;
	pthread_cond_signal(&P.work);
}

/* ---- the probe set from a map ------------------------------------------------------- */

struct want {
	struct probe_info info;
	struct dm_node from, to;
};

static int want_add(struct want **w, int *n, int *cap, enum probe_class cls,
		    const struct dm_region *r, const struct dm_node *from,
		    const struct dm_node *to, int family, int64_t interval)
{
	if (*n >= PROBE_MAX)
		return -1;
	if (*n == *cap) {
		int nc = *cap ? *cap * 2 : 64;
		struct want *x = realloc(*w, sizeof *x * (size_t)nc);
		if (!x)
			return -1;
		*w = x;
		*cap = nc;
	}
	struct want *x = &(*w)[(*n)++];
	memset(x, 0, sizeof *x);
	struct probe_info *i = &x->info;
	static const char *const suffix[] = { "", "tls", "udp", "mesh", "bw" };
	if (to)
		snprintf(i->name, sizeof i->name, "derp/%s/%s/%s/%s", r->code, from->name, to->name,
			 suffix[cls]);
	else
		snprintf(i->name, sizeof i->name, "derp/%s/%s/%s%s", r->code, from->name,
			 suffix[cls], family == AF_INET6 ? "6" : "");
	i->cls = cls;
	snprintf(i->region_code, sizeof i->region_code, "%s", r->code);
	snprintf(i->region_name, sizeof i->region_name, "%s", r->name);
	i->region_id = r->id;
	snprintf(i->node, sizeof i->node, "%s", from->name);
	snprintf(i->to, sizeof i->to, "%s", to ? to->name : "");
	snprintf(i->host, sizeof i->host, "%s", from->host);
	i->family = family;
	i->interval_ms = interval;
	x->from = *from;
	if (to)
		x->to = *to;
	return 0;
}

static int want_cmp(const void *a, const void *b)
{
	return strcmp(((const struct want *)a)->info.name, ((const struct want *)b)->info.name);
}

static int skip_region(const struct dm_region *r)
{
	char id[16];
	if (!P.o.region || !P.o.region[0])
		return 0;
	snprintf(id, sizeof id, "%d", r->id);
	return strcmp(P.o.region, r->code) != 0 && strcmp(P.o.region, id) != 0;
}

/* Under the lock: make the probe set what map m asks for. -1 with err if it asks for too
 * many (the old set stays). */
static int reconcile(const struct derp_map *m, char *err, size_t errlen)
{
	struct want *w = NULL;
	int nw = 0, cw = 0, rc = -1;
	const struct prober_opts *o = &P.o;

	for (int ri = 0; ri < m->n_regions; ri++) {
		const struct dm_region *r = &m->regions[ri];
		if (skip_region(r))
			continue;
		for (int a = 0; a < r->n_nodes; a++) {
			const struct dm_node *n = &r->nodes[a];
			int bad = 0;
			if (o->tls_ms > 0 && !check_plain_http(&o->check, n))
				bad |= want_add(&w, &nw, &cw, PC_TLS, r, n, NULL, 0, o->tls_ms);
			if (o->stun_ms > 0 && n->stun_port != -1) {
				if (n->ipv6[0] && strcmp(n->ipv6, "none"))
					bad |= want_add(&w, &nw, &cw, PC_UDP, r, n, NULL, AF_INET6,
							o->stun_ms);
				if (n->ipv4[0] && strcmp(n->ipv4, "none"))
					bad |= want_add(&w, &nw, &cw, PC_UDP, r, n, NULL, AF_INET,
							o->stun_ms);
			}
			for (int b = 0; b < r->n_nodes; b++) {
				if (o->mesh_ms > 0)
					bad |= want_add(&w, &nw, &cw, PC_MESH, r, n, &r->nodes[b], 0,
							o->mesh_ms);
				if (o->bw_ms > 0 && o->check.bw_size > 0)
					bad |= want_add(&w, &nw, &cw, PC_BW, r, n, &r->nodes[b], 0,
							o->bw_ms);
			}
			if (bad) {
				snprintf(err, errlen, "the DERP map asks for more than %d probes",
					 PROBE_MAX);
				goto out;
			}
		}
	}
	qsort(w, (size_t)nw, sizeof *w, want_cmp);
	/* new array: the map probe, every wanted probe (kept or new), removed ones in flight */
	struct probe **nv = malloc(sizeof *nv * (size_t)(nw + P.n + 1));
	if (!nv) {
		snprintf(err, errlen, "out of memory");
		goto out;
	}
	int nn = 0, i = 0;
	int64_t now = mono_ms();
	for (int k = 0; k < P.n; k++)
		P.v[k]->removed |= 2; /* provisional: cleared for every probe still wanted */
	for (int k = 0; k < nw; k++) {
		if (k > 0 && !strcmp(w[k].info.name, w[k - 1].info.name))
			continue; /* node names with '/' can spell another probe's name */
		while (i < P.n && strcmp(P.v[i]->info.name, w[k].info.name) < 0)
			i++;
		struct probe *p;
		if (i < P.n && !strcmp(P.v[i]->info.name, w[k].info.name) && !(P.v[i]->removed & 1)) {
			p = P.v[i];
			p->removed = 0;
			/* labels and targets follow the map; results stay */
			struct probe_info keep = p->info;
			p->info = w[k].info;
			memcpy((char *)&p->info + offsetof(struct probe_info, in_flight),
			       (char *)&keep + offsetof(struct probe_info, in_flight),
			       sizeof keep - offsetof(struct probe_info, in_flight));
		} else {
			p = calloc(1, sizeof *p);
			if (!p)
				continue;
			p->info = w[k].info;
			p->next_ms = now + (o->spread && !o->once ? spread_delay(p->info.name,
							       p->info.interval_ms) : 0);
			plog("adding DERP %s probe %s every %llds", probe_class_name(p->info.cls),
				 p->info.name, (long long)(p->info.interval_ms / 1000));
		}
		p->from = w[k].from;
		p->to = w[k].to;
		nv[nn++] = p;
	}
	for (int k = 0; k < P.n; k++) {
		struct probe *p = P.v[k];
		if (p->is_map) {
			p->removed = 0;
			nv[nn++] = p;
		} else if (p->removed & 2) {
			p->removed = 1;
			plog("removing DERP probe %s", p->info.name);
			if (p->info.in_flight)
				nv[nn++] = p; /* its worker frees it */
			else
				free(p);
		}
	}
	free(P.v);
	P.v = nv;
	P.n = nn;
	P.cap = nw + 1;
	qsort(P.v, (size_t)P.n, sizeof *P.v, by_name);
	rc = 0;
out:
	free(w);
	return rc;
}

/* ---- running ------------------------------------------------------------------------ */

static void run_map(int64_t deadline, struct check_result *r)
{
	struct derp_map m;
	char err[sizeof r->err];

	memset(r, 0, sizeof *r);
	int tmo = (int)(deadline - mono_ms());
	if (derpmap_fetch(P.o.map_url, P.o.socket_path, tmo > 0 ? tmo : 1, &m, err,
			  sizeof err) != 0) {
		pthread_mutex_lock(&P.mu);
		/* control restarting: keep the last map a while, as upstream does */
		if (P.have_map && wall_s() - P.map_at < 600) {
			plog("Error while fetching DERP map, using cached one: %s", err);
			r->ok = 1;
		} else {
			snprintf(r->err, sizeof r->err, "%s", err);
		}
		pthread_mutex_unlock(&P.mu);
		return;
	}
	pthread_mutex_lock(&P.mu);
	if (reconcile(&m, r->err, sizeof r->err) == 0) {
		derpmap_free(&P.map);
		P.map = m;
		P.have_map = 1;
		P.map_at = wall_s();
		r->ok = 1;
		int regions = 0, nodes = 0;
		for (int i = 0; i < m.n_regions; i++)
			if (!skip_region(&m.regions[i]))
				regions++, nodes += m.regions[i].n_nodes;
		snprintf(r->note, sizeof r->note, "%d region%s, %d node%s", regions,
			 regions == 1 ? "" : "s", nodes, nodes == 1 ? "" : "s");
	} else {
		derpmap_free(&m);
	}
	pthread_cond_signal(&P.sched);
	pthread_mutex_unlock(&P.mu);
}

static void push(void *arr, int *n, int max, size_t sz, const void *v)
{
	char *a = arr;
	if (*n == max) {
		memmove(a, a + sz, sz * (size_t)(max - 1));
		(*n)--;
	}
	memcpy(a + sz * (size_t)(*n)++, v, sz);
}

static void record(struct probe *p, const struct check_result *r, double dur)
{
	struct probe_info *i = &p->info;
	uint8_t ok = r->ok ? 1 : 0;

	i->end = wall_s();
	i->ran = 1;
	i->ok = r->ok;
	i->last_run_s = dur;
	snprintf(i->err, sizeof i->err, "%s", r->ok ? "" : r->err);
	snprintf(i->note, sizeof i->note, "%s", r->note);
	if (r->not_after > 0)
		i->not_after = r->not_after;
	i->transfer_s_total += r->transfer_s;
	push(i->recent_ok, &i->n_recent, PROBE_RECENT, 1, &ok);
	if (r->ok) {
		float ms = (float)(dur * 1000);
		i->latency_s = dur;
		i->last_success = i->end;
		i->attempts_ok++;
		i->seconds_ok += dur;
		push(i->hist_ms, &i->n_hist, PROBE_HIST, sizeof ms, &ms);
	} else {
		i->latency_s = 0;
		i->attempts_fail++;
		i->seconds_fail += dur;
	}
}

static void *worker_main(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&P.mu);
	while (!P.stopping) {
		if (P.qlen == 0) {
			pthread_cond_wait(&P.work, &P.mu);
			continue;
		}
		struct probe *p = P.q[P.qhead];
		P.qhead = (P.qhead + 1) % P.qcap;
		P.qlen--;
		struct dm_node from = p->from, to = p->to;
		enum probe_class cls = p->info.cls;
		int family = p->info.family;
		int64_t t0 = mono_ms(), interval = p->info.interval_ms;
		int64_t tmo = interval * 8 / 10, deadline = t0 + (tmo > 500 ? tmo : 500);
		p->info.start = wall_s();
		pthread_mutex_unlock(&P.mu);

		struct check_result r;
		struct timespec a, b;
		clock_gettime(CLOCK_MONOTONIC, &a);
		switch (cls) {
		case PC_MAP: run_map(deadline, &r); break;
		case PC_TLS: check_tls(&P.o.check, &from, deadline, &r); break;
		case PC_UDP: check_udp(&P.o.check, &from, family, deadline, &r); break;
		case PC_MESH: check_pair(&P.o.check, &from, &to, 0, deadline, &r); break;
		case PC_BW: check_pair(&P.o.check, &from, &to, 1, deadline, &r); break;
		}
		clock_gettime(CLOCK_MONOTONIC, &b);
		double dur = (double)(b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9;
		if (!r.ok)
			plog("probe %s: %s", p->info.name, r.err);

		pthread_mutex_lock(&P.mu);
		record(p, &r, dur);
		p->info.in_flight = 0;
		/* the next turn is a whole interval after this one began, as a ticker */
		p->next_ms = P.o.once ? INT64_MAX : t0 + interval;
		if (p->removed) {
			for (int k = 0; k < P.n; k++)
				if (P.v[k] == p) {
					memmove(&P.v[k], &P.v[k + 1], sizeof *P.v * (size_t)(P.n - k - 1));
					P.n--;
					break;
				}
			free(p);
		}
		pthread_cond_broadcast(&P.done);
		pthread_cond_signal(&P.sched);
	}
	pthread_mutex_unlock(&P.mu);
	return NULL;
}

static void *sched_main(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&P.mu);
	while (!P.stopping) {
		int64_t now = mono_ms(), next = now + 60000;
		for (int k = 0; k < P.n; k++) {
			struct probe *p = P.v[k];
			if (p->info.in_flight || p->removed)
				continue;
			if (p->next_ms <= now)
				enqueue(p);
			else if (p->next_ms < next)
				next = p->next_ms;
		}
		struct timespec ts = { next / 1000, (next % 1000) * 1000000 };
		pthread_cond_timedwait(&P.sched, &P.mu, &ts);
	}
	pthread_mutex_unlock(&P.mu);
	return NULL;
}

int prober_start(const struct prober_opts *o, char *err, size_t errlen)
{
	pthread_condattr_t ca;

	P.o = *o;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&P.sched, &ca);
	pthread_condattr_destroy(&ca);
	pthread_cond_init(&P.work, NULL);
	pthread_cond_init(&P.done, NULL);

	struct probe *m = calloc(1, sizeof *m);
	P.v = malloc(sizeof *P.v);
	P.workers = calloc((size_t)o->workers, sizeof *P.workers);
	if (!m || !P.v || !P.workers) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	snprintf(m->info.name, sizeof m->info.name, "derpmap-probe");
	m->info.cls = PC_MAP;
	m->info.interval_ms = o->interval_ms;
	m->is_map = 1;
	/* The web server may already serve: /metrics and the page read P under the lock. */
	pthread_mutex_lock(&P.mu);
	P.v[0] = m;
	P.n = P.cap = 1;
	pthread_mutex_unlock(&P.mu);
	/* small stacks: workers block on sockets, they do not recurse */
	pthread_attr_t at;
	pthread_attr_init(&at);
	pthread_attr_setstacksize(&at, 256 << 10);
	if (pthread_create(&P.sched_th, &at, sched_main, NULL) != 0) {
		snprintf(err, errlen, "cannot start the scheduler thread");
		return -1;
	}
	for (P.nworkers = 0; P.nworkers < o->workers; P.nworkers++)
		if (pthread_create(&P.workers[P.nworkers], &at, worker_main, NULL) != 0)
			break;
	pthread_attr_destroy(&at);
	P.started = 1;
	if (P.nworkers == 0) {
		snprintf(err, errlen, "cannot start worker threads");
		return -1;
	}
	return 0;
}

/* Every probe has run once and none is running (the map probe first made the rest). */
static int all_ran(void)
{
	if (P.qlen)
		return 0;
	for (int k = 0; k < P.n; k++)
		if (!P.v[k]->removed && (!P.v[k]->info.ran || P.v[k]->info.in_flight))
			return 0;
	return 1;
}

void prober_wait_once(void)
{
	pthread_mutex_lock(&P.mu);
	while (!all_ran())
		pthread_cond_wait(&P.done, &P.mu);
	pthread_mutex_unlock(&P.mu);
}

void prober_stop(void)
{
	if (!P.started)
		return;
	pthread_mutex_lock(&P.mu);
	P.stopping = 1;
	pthread_cond_broadcast(&P.work);
	pthread_cond_broadcast(&P.sched);
	pthread_mutex_unlock(&P.mu);
	/* a worker in a run finishes it first: every run is bounded by its deadline */
	pthread_join(P.sched_th, NULL);
	for (int i = 0; i < P.nworkers; i++)
		pthread_join(P.workers[i], NULL);
	for (int k = 0; k < P.n; k++)
		free(P.v[k]);
	free(P.v);
	free(P.q);
	free(P.workers);
	derpmap_free(&P.map);
	memset(&P.v, 0, sizeof P.v);
	P.n = 0;
	P.started = 0;
}

struct probe_info *prober_snapshot(int *n)
{
	pthread_mutex_lock(&P.mu);
	struct probe_info *out = malloc(sizeof *out * (size_t)(P.n ? P.n : 1));
	*n = 0;
	for (int k = 0; out && k < P.n; k++)
		if (!P.v[k]->removed)
			out[(*n)++] = P.v[k]->info;
	pthread_mutex_unlock(&P.mu);
	return out;
}
