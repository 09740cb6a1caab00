/* Internal to server/: the connection, the worker that owns it, and the send queue other
 * threads push into. Ownership rule: only a connection's worker reads, writes or frees it;
 * other threads reach it only through client_map_with_active() -> sendq_push_*() ->
 * worker_mark_ready(), all while holding the key's map shard lock, which is what keeps the
 * connection alive for them (it is unregistered before it is freed) and c->w steady (an
 * owner hands a connection to another worker under that lock: move.c). */
#ifndef DERPD_RELAY_H
#define DERPD_RELAY_H
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/uio.h>

#include "server/chunk.h"
#include "server/client_map.h"
#include "server/config.h"
#include "server/forwarders.h"
#include "server/log.h"
#include "server/ratelimit.h"
#include "server/stats.h"

/* ---- packets and send queues (sendq.c) ---- */

/* A queued RecvPacket frame, living inside the chunk it was read into. */
struct pkt {
	struct chunk *c;
	uint8_t *frame;   /* header + source key + payload */
	uint32_t len;     /* whole frame */
	uint32_t enq_ms;  /* enqueue time, for derp_average_queue_duration_ms */
};

/* A small control frame (PeerGone, PeerPresent) pushed by another thread. */
struct ctrl_frame {
	struct ctrl_frame *next;
	uint8_t len;
	uint8_t bytes[56];
};

enum { Q_REGULAR, Q_DISCO, Q_N };

struct sendq {
	pthread_mutex_t mu;
	struct pkt *slots;              /* Q_N rings of relay.queue_depth, allocated on first push */
	uint16_t head[Q_N], n[Q_N];
	struct ctrl_frame *ctrl_head, *ctrl_tail;
	uint8_t closed;
};

void sendq_init(struct sendq *q);
/* Upstream's policy: make room by dropping the oldest; count drops in st. Takes over the
 * packet's chunk reference either way. */
/* Returns the number of packets now in p's queue. */
int sendq_push_pkt(struct sendq *q, const struct pkt *p, int disco, struct derp_stats *st);
/* Packets queued (both rings). */
int sendq_pending(struct sendq *q);
/* The same, but a full queue keeps p (returns -1; the caller still owns it) instead of
 * dropping the oldest: for senders that wait for room (mesh forwarding). */
int sendq_try_push(struct sendq *q, const struct pkt *p, int disco, struct derp_stats *st);
int sendq_full(struct sendq *q, int disco);
void sendq_push_ctrl(struct sendq *q, const uint8_t *bytes, uint8_t len);
/* Owner: move up to max packets into out[] (alternating queues) and append whole control
 * frames into ctrl (up to ctrl_cap), counting them in *nctrl. Returns the packet count. */
int sendq_take(struct sendq *q, struct pkt *out, int max, uint8_t *ctrl, uint32_t *ctrl_len,
	       uint32_t ctrl_cap, int *nctrl, int *more);
/* Owner: free the rings if they are empty (an idle connection holds no queue memory). */
void sendq_trim(struct sendq *q);
/* Owner, on close: drop everything (gone_disconnected) and free the queue memory. */
void sendq_close(struct sendq *q, struct derp_stats *st);
int sendq_kind(const struct pkt *p); /* KIND_DISCO or KIND_OTHER */
void sendq_count_drop(struct derp_stats *st, enum drop_reason r, const struct pkt *p);

/* ---- connections (conn.c, conn_read.c, conn_write.c) ---- */

enum conn_state { CS_HTTP, CS_HANDSHAKE, CS_RUNNING, CS_BRIDGE, CS_DIAL, CS_CLOSED };

#define BATCH_PKTS 64
#define BATCH_CTRL 4096
#define BATCH_WSPRE 528 /* WebSocket control frames + one binary message header */

/* Output in flight: control bytes then packet frames, written with one writev. */
struct outbatch {
	struct outbatch *next; /* worker pool */
	int niov, iov_idx, npkt, nframes;
	uint32_t ctrl_len;
	struct iovec iov[BATCH_PKTS + 2];
	struct pkt pkt[BATCH_PKTS];
	uint8_t ctrl[BATCH_CTRL];
	uint8_t wspre[BATCH_WSPRE];
};

struct sentto;

struct conn {
	struct worker *w;
	int fd;
	uint8_t state;
	uint8_t preferred, is_mesh, is_prober, not_ideal, registered, fast_start;
	uint8_t on_ready;       /* on w->ready; guarded by w->ready_mu */
	uint8_t pong_pending;
	uint8_t on_more;        /* on w->more: its read budget ran out with data left */
	uint8_t peer_shut;      /* EPOLLRDHUP/HUP/ERR seen: read to the end, not to a short read */
	uint8_t read_large;     /* reads fill small chunks: use large ones */
	uint8_t paused;         /* stop parsing: a receiver on another worker (or a mesh link)
				 * is catching up ... */
	struct worker *pause_w; /* ... on that worker: parse again once *pause_on (its turns,
				 * or its link_turns for a mesh link) */
	const uint64_t *pause_on;
	uint64_t pause_turn;    /* has moved on from this */
	struct pkt held;        /* held.c set: the packet that found that queue full, kept */
	uint8_t held_dst[32];   /* for it rather than dropped (relay_retry_held) */
	uint8_t held_disco;
	int64_t held_ms;        /* since when (loop_ms); a hold ends with a drop after 100 ms */
	uint8_t admitting;      /* 1: admission asked; 2: closed meanwhile, freed on the answer */
	uint8_t admit_gone;     /* atomic: left while admitting; its check is dropped (admission.h) */
	uint8_t rate_charged;   /* this frame's tokens are taken (or being waited for) */
	uint32_t rate_gen;      /* relay.rate_gen the bucket was set from */
	int64_t rate_resume_ms; /* waiting for tokens: read nothing until then */
	struct conn *rate_next; /* worker's list of connections waiting for tokens */
	struct token_bucket tb; /* --rate-config receive limit (never for mesh peers) */
	uint8_t is_watcher;     /* sent WatchConns: in relay.watchers */
	uint8_t outbound;       /* our own client connection to a mesh peer */
	uint8_t close_req;      /* atomic: another thread asked for this conn to close */
	uint8_t pong[8];
	uint64_t id;
	uint8_t key[32];
	struct cm_member member;
	uint8_t ip16[16];       /* remote address, IPv4-mapped for v4 */
	uint16_t port;

	/* read side: unparsed bytes are rchunk->data[rstart, rend) */
	struct chunk *rchunk;
	uint32_t rstart, rend;
	uint64_t discard;       /* payload bytes of a skipped frame still to read */

	/* write side */
	uint8_t *lbuf;          /* frames this worker made for this conn (ServerKey, pong, ...) */
	uint32_t llen, lcap;
	struct outbatch *out;
	struct sendq q;

	/* timers (worker.c wheel) */
	int64_t created_ms, deadline_ms, stall_ms, keepalive_ms, rtt_ms;
	int64_t timer_ms;
	struct conn *tnext, *tprev;

	/* PeerGone(NotHere) limiter: 1 token/s, burst 3 */
	double nothere_tokens;
	int64_t nothere_ms;
	struct sentto *sent;    /* destinations this conn delivered to (PeerGone on leave) */
	struct mesh_out *mesh;  /* outbound mesh connections only */
	uint8_t *hll;           /* distinct senders (hll.h), once anything was delivered */

	/* TLS (tls.c) */
	struct WOLFSSL *ssl;
	uint8_t tls_done, tls_version;
	uint8_t tls_first, tls_first_seen; /* the client's first byte (0x16: a TLS handshake) */
	uint8_t *tls_out;       /* TLS output the socket did not take yet (tls.c) */
	uint32_t tls_olen;
	struct bridge *bridge;  /* plain bytes over TLS, carried to another socket (bridge.c) */
	struct dial *dial;      /* CS_DIAL: the CONNECT target being dialled (connect.c) */
	struct ws_conn *ws;     /* DERP over WebSocket (ws_conn.c) */

	/* moving to another worker (move.c) */
	struct worker *move_to; /* the other worker its last move_n packets went to */
	uint32_t move_n;
	uint8_t move_queued;    /* on w->move_out */
	uint8_t moving;         /* between owners: the new one adopts it (w->move_in) first */
	int64_t move_ms;        /* no move before then */
	struct conn *move_next;

	struct conn *ready_next;
	struct conn *more_next, *more_prev;
	struct conn *next, *prev; /* worker's list of all its conns */
};

struct mesh_out;

struct WOLFSSL;
struct conn *conn_new(struct worker *w, int fd, const struct sockaddr *sa);
struct conn *conn_new_outbound(struct worker *w, int fd, const struct sockaddr *sa,
			       struct WOLFSSL *ssl);
void conn_on_readable(struct conn *c);
void conn_on_writable(struct conn *c);
void conn_on_timer(struct conn *c, int64_t now);
void conn_close(struct conn *c, const char *why);
void conn_free(struct conn *c);
/* c's remote address as a sockaddr in its natural family. */
void conn_peer(const struct conn *c, struct sockaddr_storage *peer, socklen_t *peerlen);
/* c as log lines name it: "ip:port", and " [abcde]" (key_short) once its key is known. */
#define CONN_NAME_LEN (LOG_ADDR_LEN + 9)
const char *conn_name(const struct conn *c, char out[CONN_NAME_LEN]);
/* Remove c from the worker without closing its socket; returns the fd and the peer. */
int conn_detach(struct conn *c, struct sockaddr_storage *peer, socklen_t *peerlen);
/* Append a frame this worker made for c to c's local output. */
void conn_queue_local(struct conn *c, const uint8_t *bytes, uint32_t len);
void conn_start_handshake(struct conn *c);
void conn_rearm(struct conn *c); /* re-arm the timer for c's next deadline */
void conn_start_running(struct conn *c);
/* The socket would not take more output (or took some): drives the write timeout. */
void conn_set_stalled(struct conn *c, int stalled);
/* Write what is pending; returns -1 if the connection was closed. */
int conn_flush(struct conn *c);
/* Room in c->rchunk for the next read (the frame in progress kept whole). -1 on OOM. */
int conn_ensure_space(struct conn *c);
/* Handle a complete request head (http.c). Returns -1 if the connection was closed. */
int conn_http(struct conn *c);
struct admission_ask;
/* Worker: act on the admission answers that arrived (handshake.c). */
void handshake_admitted(struct worker *w);
/* Handle the ClientInfo frame (handshake.c). Returns -1 on failure (caller closes). */
int conn_client_info(struct conn *c, const uint8_t *payload, uint32_t len);

/* ---- TLS (tls.c) ---- */

int tls_conn_start(struct conn *c);       /* a new connection on a TLS listener */
void tls_conn_attach(struct conn *c);     /* c->ssl writes through c (an adopted one too) */
/* Write out the TLS output the socket did not take before: 0 when none is left, else -1
 * with errno (EAGAIN: still some). conn_writev does this first. */
int tls_flush(struct conn *c);
int tls_handshake(struct conn *c);        /* 1 done, 0 in progress, -1 failed (closed) */
/* A handshake on the listener failed (timeout, a write that failed): counted by reason for
 * derpd_tls_handshake_failures_total and the log summary. The caller closes c. */
enum tls_fail;
void tls_handshake_failed(struct conn *c, enum tls_fail reason, const char *detail);
ssize_t conn_recv(struct conn *c, void *buf, size_t len);            /* read(2) or TLS */
ssize_t conn_writev(struct conn *c, const struct iovec *iov, int n); /* writev(2) or TLS */
void tls_conn_end(struct conn *c);
/* One TLS write of n bytes: all of them are taken (onto the socket or kept in tls_out),
 * or the connection is broken. Returns n, or -1 with errno. */
ssize_t tls_write(struct conn *c, const uint8_t *buf, uint32_t n);

/* ---- the bridge: a TLS connection's plain bytes to another socket (bridge.c) ---- */

int bridge_start(struct conn *c);         /* hand this TLS connection's HTTP over */
/* Carry c's bytes to and from fd (owned from now on; closed with c), first (n bytes
 * already read from the client) going first. -1 if c was closed. other names fd's side
 * in close reasons ("... closed"). */
int bridge_open(struct conn *c, int fd, const char *other, const uint8_t *first, uint32_t n);
void bridge_pump(struct conn *c);
void bridge_end(struct conn *c);          /* close the other end (conn teardown) */

/* ---- the ACE CONNECT proxy (connect.c) ---- */

struct dial;
struct http_req;
/* A CONNECT request head of hl bytes arrived (conn_http): answer it, or dial the target
 * and bridge to it. 0 if conn_http should hand the request on instead (plain listener
 * without -ace), else -1 (c is the proxy's now, or closed). */
int connect_start(struct conn *c, const struct http_req *r, int hl);
/* connectproxy's Check for ACE: host:port with port 443 or 80, host ending in
 * ".tailscale.com" and not containing "derp". 1 with host and port split out, else 0. */
int connect_target_allowed(const char *t, char *host, size_t hcap, char *port, size_t pcap);
void connect_dialed(struct worker *w);    /* worker: act on finished dials */
void connect_on_timer(struct conn *c);    /* the 15 s dial deadline passed */
void connect_forget(struct conn *c);      /* c closes while its dial runs */
void connect_worker_free(struct worker *w); /* worker exit: dials nobody took */
void connect_stop(void);                  /* dials finishing after this go away */

/* ---- WebSocket (ws_conn.c) ---- */

int ws_upgrade(struct conn *c, const struct http_req *r); /* -1 if closed */
uint32_t ws_data_end(const struct conn *c);  /* end of buffered bytes, raw ones included */
void ws_shift(struct conn *c, uint32_t by);  /* the read chunk's bytes moved down by `by` */
void ws_fresh_chunk(struct conn *c);         /* a new, empty read chunk */
int ws_ingest(struct conn *c, uint32_t n);   /* n raw bytes arrived; -1 if closed */
size_t ws_batch_prefix(struct conn *c, uint8_t *out, size_t cap, uint64_t data_len);
int ws_pending(const struct conn *c);        /* control frames wait to be written */
int ws_closing(const struct conn *c);        /* hang up once the output is written */
void ws_free(struct conn *c);

/* ---- workers (worker.c) ---- */

struct worker {
	int id;
	pthread_t thread;
	int epfd, evfd, lfd;
	int stop, listen_paused;
	int listen_shared;        /* lfd is a duplicate of one socket every worker accepts from */
	long accept_fails;        /* accepts that found no descriptor, this episode */
	int64_t accept_fail_ms, accept_fail_last; /* when the episode began, its last one */
	int64_t drain_until;      /* shutting down: Restarting sent, flushing until then */
	struct derp_stats stats;
	pthread_mutex_t ready_mu;
	struct conn *ready;       /* conns with pending output */
	struct conn **drain;      /* ready_drain's snapshot of that list */
	int ndrain;
	struct conn *more, *more_tail; /* read backlog, oldest first (worker_read_later) */
	int more_waiting;         /* everything on it waits for other workers' turns */
	int spins;                /* turns in a row more_run found nothing to do (capped) */
	uint64_t turns;           /* atomic: bumped once queues were taken (worker_turn_done) */
	int64_t turn_ms;          /* atomic: now_ms() at the last loop turn (systemd watchdog) */
	int waited_on;            /* atomic: a sender of another worker waits for our turn */
	uint64_t link_turns;      /* atomic: bumped once a mesh link of ours had its queue taken */
	int link_waited;          /* atomic: a sender waits for that (worker_link_taken) */
	uint64_t rbytes;          /* bytes read so far: budgets the backlog's turn */
	struct conn *grave;       /* closed, freed at the end of the loop iteration */
	struct conn *conns;       /* every live conn of this worker */
	int nconns;               /* atomic: how many (read by other workers, move.c) */
	struct conn *move_out;    /* to move to another worker at the end of this turn */
	struct conn *move_in;     /* moved here, to adopt (under ready_mu) */
	struct outbatch *batch_pool;
	int nbatch_pool;
	uint8_t *scratch;         /* WORKER_SCRATCH bytes for peeking request heads */
	struct mesh_out *adopt;   /* outbound mesh connections to take on (under ready_mu) */
	struct admission_ask *admitted; /* admission answers to act on (under ready_mu) */
	struct dial *dialed;            /* finished CONNECT dials to act on (under ready_mu) */
	struct conn *rate_waiting;      /* waiting for rate tokens; resumed to the ms */
	struct conn **wheel;      /* timer wheel slots */
	int64_t wheel_ms;         /* time up to which the wheel has been processed */
	int64_t loop_ms;          /* now_ms() once per loop turn: per-packet time stamps */
} __attribute__((aligned(64)));

#define WORKER_SCRATCH (16 * 1024)
/* Upstream's write deadline for a packet forwarded to a mesh peer: our outbound link is
 * cut once it has taken no bytes for this long. A sender held for room in the link waits
 * while the link takes bytes, however long that is (senders on the link's own worker may
 * win the room many times over); the cut is what releases it from a stuck one. */
#define MESH_WRITE_TIMEOUT_MS 5000
#define HTTP_HEAD_TIMEOUT_MS 30000 /* derper's HTTP read timeout, for the request head */

/* Monotonic milliseconds. */
int64_t now_ms(void);
/* c has output to write; may be called from any thread holding c's shard lock. Returns the
 * worker to wake with worker_wake() after the lock is released, or NULL. */
struct worker *worker_mark_ready(struct conn *c);
void worker_wake(struct worker *w);
/* Take c off w's ready list (if it is on it); the caller holds w->ready_mu. */
void worker_ready_unlink_locked(struct worker *w, struct conn *c);
void worker_timer_set(struct conn *c, int64_t at_ms);
/* Add c to / take it off w's list of connections (w->conns, w->nconns). Owner only. */
void worker_conn_link(struct worker *w, struct conn *c);
void worker_conn_unlink(struct worker *w, struct conn *c);
/* c has more to read than one turn's share: read it in a later turn, in arrival order.
 * conn_on_readable() takes it off that list again. Owner worker only. */
void worker_read_later(struct conn *c);
void worker_read_forget(struct conn *c);
/* w's receivers' queues were taken: wake senders of other workers that wait on them. */
void worker_turn_done(struct worker *w);
/* An outbound mesh link of w had its queue taken (or closed): senders held for room in
 * it try again (mesh_forward_out). */
void worker_link_taken(struct worker *w);
/* c waits for rate-limit tokens until c->rate_resume_ms; resume it then, to the ms (the
 * timer wheel's 100 ms ticks would cut a limited client's rate). */
void worker_rate_wait(struct conn *c);
void worker_rate_forget(struct conn *c);
void worker_timer_del(struct conn *c);
struct outbatch *worker_batch_get(struct worker *w);
void worker_batch_put(struct worker *w, struct outbatch *b);
int worker_start(struct worker *w, int lfd);
extern __thread struct worker *current_worker;

/* ---- the relay as a whole (server.c) ---- */

struct relay {
	const struct config *cfg;
	uint8_t priv[32], pub[32];
	uint8_t mesh_key[32];
	int have_mesh_key;
	struct client_map *map;
	struct fwd_table *fwd;    /* the region's keys and their mesh forwarders */
	struct worker *workers;
	int nworkers;
	int started;             /* atomic: workers running; the HTTP threads may read them */
	int queue_depth;
	int port;              /* the bound listen port (server_port) */
	int rtt_stats;         /* sample TCP RTT every 10 s (off by TS_DERP_DISABLE_RTT_STATS) */
	pthread_mutex_t rate_mu;
	struct rate_config rate; /* applied --rate-config (under rate_mu) */
	uint32_t rate_gen;       /* atomic: bumped on every (re)load */
	int64_t start_ms;
	double memstats_sys0;
	uint64_t next_conn_id; /* atomic */
	pthread_barrier_t stop_barrier; /* workers meet here before their last clean-up */
};
extern struct relay relay;

/* Route a packet (frame already rewritten as RecvPacket) from conn src to dst key. */
void relay_route(struct conn *src, const uint8_t dst[32], struct pkt *p, int disco);
/* src paused holding a packet (src->held): route it again. 1 if it is still held. */
int relay_retry_held(struct conn *src);
/* Deliver p (read on src) to dst's active local connection. Returns the lookup result;
 * on CM_FOUND *dst_id is the receiving connection's id and *dst_w (if asked) its worker
 * then. With held non-NULL, a packet that finds the queue of a receiver on another
 * worker full is not pushed: *held is set and src pauses (the caller keeps the packet). */
enum cm_lookup relay_deliver(struct conn *src, const uint8_t dst[32], const struct pkt *p,
			     int disco, uint64_t *dst_id, struct worker **dst_w, int *held);
/* PeerGone(NotHere) to c, rate limited (PROTOCOL.md §7.3). */
void relay_not_here(struct conn *c, const uint8_t dst[32]);
/* PeerGone(key) to each (destination, connection id) of set still on that connection. */
void relay_send_gone(const uint8_t key[32], const struct sentto *set);

/* ---- moving connections between workers (move.c) ---- */

/* Owner: src's packet went to a receiver of dst_w. A long run of them moves src there. */
void conn_move_note(struct conn *src, struct worker *dst_w);
void worker_moves_out(struct worker *w); /* end of a loop turn: hand over what is due */
void worker_moves_in(struct worker *w);  /* start of a loop turn: adopt what was handed */

/* ---- the mesh, server side (mesh_serve.c) ---- */

void mesh_serve_init(void);
void mesh_serve_free(void);
int mesh_key_matches(const uint8_t key[32]);       /* ClientInfo's key is the mesh key */
uint8_t mesh_present_flags(const struct conn *c);
void mesh_on_register(struct conn *c);            /* PeerPresent to watchers */
/* c's key lost its last local connection (last) or one of several (!last). */
void mesh_on_unregister(struct conn *c, int last);
void mesh_watch(struct conn *c);                  /* WatchConns */
void mesh_close_peer(const uint8_t key[32]);      /* ClosePeer */
void mesh_forward_in(struct conn *c, uint8_t *frame, uint32_t len);
/* SendPacket to a key not connected here: forward if a mesh peer has it. A packet that
 * finds the link's queue full is not pushed: the sender keeps it and pauses until the
 * link's worker has taken the queue (HELD), for as long as the link takes bytes. */
enum mesh_fwd { MESH_FWD_NONE, MESH_FWD_SENT, MESH_FWD_HELD };
enum mesh_fwd mesh_forward_out(struct conn *src, const uint8_t dst[32], const struct pkt *p,
			       int disco);
/* Frames read on an outbound mesh connection; its end. */
void mesh_out_frame(struct conn *c, uint8_t type, const uint8_t *payload, uint32_t len);
void mesh_out_closed(struct conn *c, const char *why);
/* n packets bound for outbound link c were dropped: its peer's derpd_mesh_forward_drops. */
void mesh_out_note_drops(struct conn *c, int n);
/* Worker: take on the outbound connections queued by server_mesh_adopt(). */
void mesh_out_adopt_pending(struct worker *w);

#endif
