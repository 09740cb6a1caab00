/* The relay's side of the regional mesh (PROTOCOL.md §7.9-7.11, §9; SERVER.md §11):
 * watchers, ClosePeer, ForwardPacket in, forwarding out over outbound mesh connections,
 * and those connections' PeerPresent/PeerGone streams. mesh/ dials the peers; once logged
 * in, a connection is adopted by a worker and lives like any other. */
#include <wolfssl/options.h>
#include <wolfssl/ssl.h>

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "server/frame.h"
#include "server/key.h"
#include "server/log.h"
#include "server/relay.h"
#include "server/sentto.h"
#include "server/server.h"

#define RSENT_SHARDS 16

/* An outbound mesh connection: what mesh/ handed us and the keys learned through it. */
struct mesh_out {
	struct mesh_out *next;  /* a worker's adopt list */
	int fd;
	struct WOLFSSL *ssl;    /* dialled over TLS: the client session */
	uint8_t *buf;
	size_t len;
	char name[128];
	void (*on_closed)(void *arg);
	void *arg;
	uint64_t *fwd_drops;    /* the peer's drop counter (mesh/), may be NULL */
	struct sentto *learned; /* keys this peer announced (ids unused) */
};

/* Receivers of packets that arrived by ForwardPacket, per source key: when the source
 * leaves the region they get PeerGone (the remote half of upstream's sentTo). */
struct rsent {
	struct rsent *next;
	uint8_t key[32];
	struct sentto *set;
};

static struct {
	pthread_mutex_t watch_mu;
	struct conn **watchers;
	int nwatch, capwatch;
	struct {
		pthread_mutex_t mu;
		struct rsent *head;
	} rsent[RSENT_SHARDS];
	unsigned next_worker;
} mesh;

void mesh_serve_init(void)
{
	pthread_mutex_init(&mesh.watch_mu, NULL);
	for (int i = 0; i < RSENT_SHARDS; i++) {
		pthread_mutex_init(&mesh.rsent[i].mu, NULL);
		mesh.rsent[i].head = NULL;
	}
}

void mesh_serve_free(void)
{
	for (int i = 0; i < RSENT_SHARDS; i++) {
		while (mesh.rsent[i].head) {
			struct rsent *r = mesh.rsent[i].head;
			mesh.rsent[i].head = r->next;
			sentto_free(r->set);
			free(r);
		}
		pthread_mutex_destroy(&mesh.rsent[i].mu);
	}
	free(mesh.watchers);
	mesh.watchers = NULL;
	mesh.nwatch = mesh.capwatch = 0;
	pthread_mutex_destroy(&mesh.watch_mu);
}

/* The key changes at run time with -secrets-url (a new setec version); logins compare
 * against it from every worker. */
static pthread_mutex_t mesh_key_mu = PTHREAD_MUTEX_INITIALIZER;

void server_set_mesh_key(const uint8_t key[32])
{
	pthread_mutex_lock(&mesh_key_mu);
	int have = key && !key_is_zero(key);
	if (have)
		memcpy(relay.mesh_key, key, 32);
	__atomic_store_n(&relay.have_mesh_key, have, __ATOMIC_RELAXED);
	pthread_mutex_unlock(&mesh_key_mu);
}

int server_have_mesh_key(void)
{
	return __atomic_load_n(&relay.have_mesh_key, __ATOMIC_RELAXED);
}

int mesh_key_matches(const uint8_t key[32])
{
	pthread_mutex_lock(&mesh_key_mu);
	int ok = relay.have_mesh_key && key_equal_ct(key, relay.mesh_key);
	pthread_mutex_unlock(&mesh_key_mu);
	return ok;
}

uint8_t mesh_present_flags(const struct conn *c)
{
	uint8_t f = 0;

	if (c->is_mesh)
		f |= PEER_PRESENT_MESH_PEER;
	if (c->is_prober)
		f |= PEER_PRESENT_PROBER;
	if (c->not_ideal)
		f |= PEER_PRESENT_NOT_IDEAL;
	return f ? f : PEER_PRESENT_REGULAR;
}

/* ---- watchers ---- */

/* Queue a control frame to c (any thread); wakes its worker if needed. */
static void push_ctrl(struct conn *c, const uint8_t *f, uint8_t len)
{
	sendq_push_ctrl(&c->q, f, len);
	struct worker *w = worker_mark_ready(c);
	if (w)
		worker_wake(w);
}

static void broadcast(const uint8_t *f, uint8_t len)
{
	pthread_mutex_lock(&mesh.watch_mu);
	for (int i = 0; i < mesh.nwatch; i++)
		push_ctrl(mesh.watchers[i], f, len);
	pthread_mutex_unlock(&mesh.watch_mu);
}

static size_t present_frame(uint8_t f[56], const struct conn *c)
{
	return frame_peer_present(f, c->key, c->ip16, c->port, mesh_present_flags(c));
}

static void rsent_merge(const uint8_t key[32], const struct sentto *set);
static void region_gone_with(const uint8_t key[32], const struct sentto *also);

void mesh_on_register(struct conn *c)
{
	uint8_t f[56];

	fwd_local_add(relay.fwd, c->key);
	broadcast(f, (uint8_t)present_frame(f, c));
}

void mesh_on_unregister(struct conn *c, int last)
{
	if (c->is_watcher) {
		pthread_mutex_lock(&mesh.watch_mu);
		for (int i = 0; i < mesh.nwatch; i++)
			if (mesh.watchers[i] == c) {
				mesh.watchers[i] = mesh.watchers[--mesh.nwatch];
				break;
			}
		pthread_mutex_unlock(&mesh.watch_mu);
		c->is_watcher = 0;
		STAT_ADD(&c->w->stats, watchers, -1);
	}
	/* Who heard from this connection is remembered per key (upstream's sentTo is keyed by
	 * sender key): while the key is still in the region (another connection of it here,
	 * or a mesh peer reaching it) the record outlives the connection. */
	if (!last) {
		rsent_merge(c->key, c->sent); /* a duplicate left: nothing to announce */
		return;
	}
	uint8_t f[38];
	broadcast(f, (uint8_t)frame_peer_gone(f, c->key, PEER_GONE_DISCONNECTED));
	if (fwd_local_gone(relay.fwd, c->key)) {
		/* Left the region: tell everyone it delivered to, once each. */
		region_gone_with(c->key, c->sent);
	} else {
		rsent_merge(c->key, c->sent);
	}
}

static void flood_one(void *arg, struct cm_member *m)
{
	uint8_t f[56];

	push_ctrl(arg, f, (uint8_t)present_frame(f, m->owner));
}

void mesh_watch(struct conn *c)
{
	if (key_equal_ct(c->key, relay.pub))
		return; /* a server meshing with itself */
	pthread_mutex_lock(&mesh.watch_mu);
	int found = 0;
	for (int i = 0; i < mesh.nwatch; i++)
		found |= mesh.watchers[i] == c;
	if (!found) {
		if (mesh.nwatch == mesh.capwatch) {
			int cap = mesh.capwatch ? mesh.capwatch * 2 : 8;
			struct conn **nw = realloc(mesh.watchers, cap * sizeof *nw);
			if (!nw) {
				pthread_mutex_unlock(&mesh.watch_mu);
				conn_close(c, "out of memory");
				return;
			}
			mesh.watchers = nw;
			mesh.capwatch = cap;
		}
		mesh.watchers[mesh.nwatch++] = c;
		c->is_watcher = 1;
		STAT_ADD(&c->w->stats, watchers, 1);
	}
	pthread_mutex_unlock(&mesh.watch_mu);
	/* Joined first, flooded second: a client registering meanwhile may be announced
	 * twice but never missed. One PeerPresent per key, for its active connection. */
	client_map_foreach_active(relay.map, flood_one, c);
}

/* ---- ClosePeer ---- */

static void request_close(void *owner, void *arg)
{
	struct conn *c = owner;

	(void)arg;
	__atomic_store_n(&c->close_req, 1, __ATOMIC_RELEASE);
	struct worker *w = worker_mark_ready(c);
	if (w)
		worker_wake(w);
}

void mesh_close_peer(const uint8_t key[32])
{
	char ks[8];

	key_short(ks, key);
	if (client_map_count(relay.map, key) == 0) {
		log_debug(LS_MESH, "ClosePeer %s: not connected here", ks);
		return;
	}
	client_map_each_of(relay.map, key, request_close, NULL);
}

/* ---- ForwardPacket in ---- */

static struct rsent **rsent_slot(unsigned shard, const uint8_t key[32])
{
	struct rsent **pp = &mesh.rsent[shard].head;

	while (*pp && memcmp((*pp)->key, key, 32) != 0)
		pp = &(*pp)->next;
	return pp;
}

static unsigned rsent_shard(const uint8_t key[32])
{
	return key[0] % RSENT_SHARDS;
}

static void rsent_note(const void *src_key, const uint8_t dst[32], uint64_t id)
{
	const uint8_t *src = src_key;
	unsigned sh = rsent_shard(src);

	pthread_mutex_lock(&mesh.rsent[sh].mu);
	struct rsent **pp = rsent_slot(sh, src);
	if (!*pp && (*pp = calloc(1, sizeof **pp)))
		memcpy((*pp)->key, src, 32);
	if (*pp)
		sentto_note(&(*pp)->set, dst, id);
	pthread_mutex_unlock(&mesh.rsent[sh].mu);
}

static void merge_one(void *arg, const uint8_t dst[32], uint64_t id)
{
	rsent_note(arg, dst, id);
}

static void rsent_merge(const uint8_t key[32], const struct sentto *set)
{
	sentto_foreach(set, merge_one, (void *)key);
}

/* key has left the region: PeerGone to whoever got its packets through a connection
 * that is gone (forwarded, or sent by an earlier connection of the key). */
static void merge_into(void *arg, const uint8_t dst[32], uint64_t id)
{
	sentto_note(arg, dst, id);
}

/* also: the leaving connection's own record, if any; a receiver in both hears once. */
static void region_gone_with(const uint8_t key[32], const struct sentto *also)
{
	unsigned sh = rsent_shard(key);
	struct rsent *r;

	pthread_mutex_lock(&mesh.rsent[sh].mu);
	struct rsent **pp = rsent_slot(sh, key);
	r = *pp;
	if (r)
		*pp = r->next;
	pthread_mutex_unlock(&mesh.rsent[sh].mu);
	if (!r) {
		relay_send_gone(key, also); /* the common case: no earlier record */
		return;
	}
	sentto_foreach(also, merge_into, &r->set);
	relay_send_gone(key, r->set);
	sentto_free(r->set);
	free(r);
}

static void region_gone(const uint8_t key[32])
{
	region_gone_with(key, NULL);
}

void mesh_forward_in(struct conn *c, uint8_t *frame, uint32_t len)
{
	struct derp_stats *st = &c->w->stats;
	uint8_t *src = frame + FRAME_HEADER_LEN, dst[32], srck[32];
	uint32_t n = len - 64;
	struct pkt p = { c->rchunk, NULL, 0, (uint32_t)current_worker->loop_ms };
	uint64_t dst_id;

	STAT_ADD(st, packets_forwarded_in, 1);
	memcpy(dst, src + 32, 32);
	memcpy(srck, src, 32);
	/* Rewrite in place: RecvPacket(src, pkt) is ForwardPacket(src, dst, pkt) less 32
	 * bytes, so it starts 32 bytes in. A zero source gets upstream's legacy form. */
	if (key_is_zero(srck)) {
		p.frame = frame + 64;
		frame_put_header(p.frame, FRAME_RECV_PACKET, n);
		p.len = FRAME_HEADER_LEN + n;
	} else {
		memmove(frame + 37, src, 32);
		p.frame = frame + 32;
		frame_put_header(p.frame, FRAME_RECV_PACKET, 32 + n);
		p.len = FRAME_HEADER_LEN + 32 + n;
	}
	uint8_t *data = frame + 69;
	int disco = frame_is_disco(data, n);
	switch (relay_deliver(c, dst, &p, disco, &dst_id, NULL, NULL)) {
	case CM_FOUND:
		rsent_note(srck, dst, dst_id);
		return;
	case CM_DUP_FIGHT:
		sendq_count_drop(st, DROP_DUP_CLIENT, &p);
		return;
	case CM_UNKNOWN:
		sendq_count_drop(st, DROP_UNKNOWN_DEST_ON_FWD, &p);
		if (disco)
			relay_not_here(c, dst);
		return;
	}
}

/* ---- forwarding out ---- */

/* A mesh link is one connection that senders on every worker feed. Upstream's sender
 * writes its ForwardPacket itself and waits for the write (5 s deadline, then the link is
 * cut); here a packet that finds the link's queue full waits with its sender until the
 * link's worker has taken the queue (worker_link_taken), and nothing is dropped while
 * the link drains. */
struct fwd_arg {
	const struct pkt *fp;
	int disco;
	int held;             /* the queue was full: fp not pushed, still ours */
	struct worker *wake;
	struct conn *flush;   /* the link, on our own worker, is full: write it out now */
	struct worker *link_w;
	uint64_t turn;        /* link_w->link_turns when it was seen full */
};

/* Runs under the destination key's forwarder shard lock (the link cannot go away). */
static void push_forward(void *f, void *arg)
{
	struct conn *link = f;
	struct fwd_arg *a = arg;
	struct worker *lw = link->w; /* outbound links never move between workers */
	struct derp_stats *st = &current_worker->stats;
	int n;

	a->link_w = lw;
	/* The turn is read before each look at the queue, and the flag set before the last
	 * look: a take after that look (a full queue is always taken in the end) changes the
	 * turn and, seeing the flag, wakes us (worker_link_taken). */
	for (int attempt = 0;; attempt++) {
		a->turn = __atomic_load_n(&lw->link_turns, __ATOMIC_SEQ_CST);
		if ((n = sendq_try_push(&link->q, a->fp, a->disco, st)) >= 0) {
			if (n == 0) /* dropped: the link is going */
				mesh_out_note_drops(link, 1);
			break;
		}
		if (lw == current_worker || attempt == 1) {
			a->held = 1; /* (our own link: only this thread takes its queue) */
			break;
		}
		__atomic_store_n(&lw->link_waited, 1, __ATOMIC_SEQ_CST);
	}
	if (lw == current_worker && (a->held || n >= relay.queue_depth))
		a->flush = link;
	if (!a->held)
		a->wake = worker_mark_ready(link);
}

enum mesh_fwd mesh_forward_out(struct conn *src, const uint8_t dst[32], const struct pkt *p,
			       int disco)
{
	uint32_t n = p->len - FRAME_HEADER_LEN - 32;
	struct chunk *ch;

	if (!fwd_get(relay.fwd, dst))
		return MESH_FWD_NONE;
	/* ForwardPacket is 32 bytes longer than the RecvPacket we hold: one copy, as
	 * upstream makes; mesh traffic is the minority. */
	if (!(ch = chunk_get(FRAME_HEADER_LEN + 64 + n)))
		return MESH_FWD_NONE;
	frame_put_header(ch->data, FRAME_FORWARD_PACKET, 64 + n);
	memcpy(ch->data + 5, src->key, 32);
	memcpy(ch->data + 37, dst, 32);
	memcpy(ch->data + 69, p->frame + FRAME_HEADER_LEN + 32, n);
	struct pkt fp = { ch, ch->data, FRAME_HEADER_LEN + 64 + n, p->enq_ms };
	struct fwd_arg a = { &fp, disco, 0, NULL, NULL, NULL, 0 };
	for (int attempt = 0;; attempt++) {
		a.held = 0;
		a.flush = NULL;
		if (!fwd_with(relay.fwd, dst, push_forward, &a)) {
			chunk_put(ch); /* the peer went away between the two lookups */
			return MESH_FWD_NONE;
		}
		if (a.wake)
			worker_wake(a.wake);
		/* The link is ours: write what fills it now, as relay_deliver does for a full
		 * receiver of our own. Safe outside the lock: only this thread frees it. */
		if (a.flush && (!a.held || attempt == 0))
			conn_flush(a.flush);
		if (!a.held)
			break;
		if (a.flush && attempt == 0)
			continue; /* that write may have made room */
		/* The sender keeps its own packet (relay_route) and waits; a retry copies it
		 * again, to whichever link then reaches dst. */
		chunk_put(ch);
		src->paused = 1;
		src->pause_w = a.link_w;
		src->pause_on = &a.link_w->link_turns;
		src->pause_turn = a.turn;
		return MESH_FWD_HELD;
	}
	STAT_ADD(&current_worker->stats, packets_forwarded_out, 1);
	return MESH_FWD_SENT;
}

/* ---- outbound mesh connections ---- */

int server_mesh_adopt(int fd, const uint8_t *buf, size_t len, const char *name,
		      void (*on_closed)(void *arg), void *arg, uint64_t *fwd_drops)
{
	return server_mesh_adopt_tls(fd, NULL, buf, len, name, on_closed, arg, fwd_drops);
}

int server_mesh_adopt_tls(int fd, struct WOLFSSL *ssl, const uint8_t *buf, size_t len,
			  const char *name, void (*on_closed)(void *arg), void *arg,
			  uint64_t *fwd_drops)
{
	struct mesh_out *mo = calloc(1, sizeof *mo);

	if (!mo || !relay.workers || (len && !(mo->buf = malloc(len)))) {
		free(mo);
		if (ssl)
			wolfSSL_free(ssl);
		close(fd);
		return -1;
	}
	mo->fd = fd;
	mo->ssl = ssl;
	if (len)
		memcpy(mo->buf, buf, len);
	mo->len = len;
	snprintf(mo->name, sizeof mo->name, "%s", name ? name : "?");
	mo->on_closed = on_closed;
	mo->arg = arg;
	mo->fwd_drops = fwd_drops;
	struct worker *w = &relay.workers[__atomic_fetch_add(&mesh.next_worker, 1, __ATOMIC_RELAXED) %
					  relay.nworkers];
	pthread_mutex_lock(&w->ready_mu);
	mo->next = w->adopt;
	__atomic_store_n(&w->adopt, mo, __ATOMIC_RELAXED); /* (read unlocked as a hint) */
	pthread_mutex_unlock(&w->ready_mu);
	worker_wake(w);
	return 0;
}

static void adopt_one(struct worker *w, struct mesh_out *mo)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof ss;

	memset(&ss, 0, sizeof ss);
	if (getpeername(mo->fd, (struct sockaddr *)&ss, &sl) != 0)
		ss.ss_family = AF_INET6;
	struct conn *c = conn_new_outbound(w, mo->fd, (struct sockaddr *)&ss, mo->ssl);
	if (!c) {
		if (mo->ssl)
			wolfSSL_free(mo->ssl);
		close(mo->fd);
		mo->on_closed(mo->arg);
		free(mo->buf);
		free(mo);
		return;
	}
	c->outbound = 1;
	c->mesh = mo;
	c->state = CS_RUNNING;
	c->deadline_ms = 0;
	worker_timer_del(c);
	log_info(LS_MESH, "peer \"%s\": watching", mo->name);
	if (mo->len) {
		c->rchunk = chunk_get((uint32_t)mo->len);
		if (!c->rchunk) {
			conn_close(c, "out of memory");
			return;
		}
		memcpy(c->rchunk->data, mo->buf, mo->len);
		c->rend = (uint32_t)mo->len;
		free(mo->buf);
		mo->buf = NULL;
		mo->len = 0;
	}
	/* Whatever arrived before the adoption (buffered or still in the socket) is read
	 * now; edge-triggered epoll would not report it again. */
	worker_read_later(c);
}

void mesh_out_adopt_pending(struct worker *w)
{
	pthread_mutex_lock(&w->ready_mu);
	struct mesh_out *list = w->adopt;
	__atomic_store_n(&w->adopt, NULL, __ATOMIC_RELAXED);
	pthread_mutex_unlock(&w->ready_mu);
	while (list) {
		struct mesh_out *mo = list;
		list = mo->next;
		adopt_one(w, mo);
	}
}

void mesh_out_frame(struct conn *c, uint8_t type, const uint8_t *payload, uint32_t len)
{
	struct mesh_out *mo = c->mesh;

	(void)len;
	if (type == FRAME_PEER_PRESENT) {
		fwd_register(relay.fwd, payload, c);
		sentto_note(&mo->learned, payload, 1);
	} else if (type == FRAME_PEER_GONE) {
		sentto_remove(mo->learned, payload);
		int local = client_map_count(relay.map, payload) > 0;
		if (fwd_unregister(relay.fwd, payload, c, local))
			region_gone(payload);
	}
}

static void unlearn(void *arg, const uint8_t key[32], uint64_t id)
{
	struct conn *c = arg;

	(void)id;
	if (fwd_unregister(relay.fwd, key, c, client_map_count(relay.map, key) > 0))
		region_gone(key);
}

void mesh_out_note_drops(struct conn *c, int n)
{
	if (n > 0 && c->mesh && c->mesh->fwd_drops)
		__atomic_fetch_add(c->mesh->fwd_drops, (uint64_t)n, __ATOMIC_RELAXED);
}

void mesh_out_closed(struct conn *c, const char *why)
{
	struct mesh_out *mo = c->mesh;

	/* As upstream on a broken watch connection: everything learned here is gone. */
	sentto_foreach(mo->learned, unlearn, c);
	sentto_free(mo->learned);
	/* No sender reaches the link any more (unlearned above, under the forwarder locks):
	 * what it still holds is dropped by conn_close once mo is gone, so count it now. */
	mesh_out_note_drops(c, sendq_pending(&c->q) + (c->out ? c->out->npkt : 0));
	log_info(LS_MESH, "peer \"%s\": connection closed: %s", mo->name, why);
	/* Senders held for room in this link try again: their packets now go to another
	 * link that reaches the destination, or are dropped as unknown_dest. */
	worker_link_taken(c->w);
	mo->on_closed(mo->arg);
	free(mo->buf);
	free(mo);
	c->mesh = NULL;
}
