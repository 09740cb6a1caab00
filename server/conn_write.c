/* Writing to a connection: gather everything pending (frames this worker made, frames
 * other threads pushed, queued packets) into one batch and write it with one writev(2).
 * A partially written batch stays in flight until the socket takes the rest. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#include "server/frame.h"
#include "server/hll.h"
#include "server/relay.h"
#include "server/server.h"
#include "server/websocket.h"

#define FLUSH_ROUNDS 8 /* batches per turn before letting other connections write */

/* DERP over WebSocket: upstream's WebSocket library, in derper and in every Go or wasm
 * client, reads messages of at most WS_READ_LIMIT bytes and hangs up on a longer one, so a
 * batch goes out as several binary messages (boundaries mean nothing to the DERP stream).
 * Fewer packets per batch keep the message headers and split packets within iov[]. */
#define WS_BATCH_PKTS 8
#define WS_BATCH_MSGS \
	((BATCH_CTRL + WS_BATCH_PKTS * (FRAME_HEADER_LEN + 32 + DERP_MAX_PACKET) + WS_READ_LIMIT - 1) / \
	 WS_READ_LIMIT)
/* prefix + a header and at most one split per message + ctrl + packets */
_Static_assert(1 + 2 * WS_BATCH_MSGS + 1 + WS_BATCH_PKTS <= BATCH_PKTS + 2,
	       "WebSocket batch does not fit iov[]");
/* Every message but the first is full: its header is always this. */
static const uint8_t ws_full_header[4] = {
	0x80 | WS_OP_BINARY, 126, WS_READ_LIMIT >> 8, WS_READ_LIMIT & 0xff,
};

/* Frame the batch's data (iov[1..niov)) as WebSocket messages: pending control frames and
 * a first message of the remainder (size mod WS_READ_LIMIT) in wspre, then full messages. */
static void ws_frame_batch(struct conn *c, struct outbatch *b)
{
	struct iovec in[BATCH_PKTS + 2];
	int nin = b->niov - 1, n = 0, k = 0;
	uint64_t left = 0, m;
	size_t off = 0;

	memcpy(in, b->iov + 1, (size_t)nin * sizeof *in);
	for (int i = 0; i < nin; i++)
		left += in[i].iov_len;
	m = left % WS_READ_LIMIT;
	if (!m && left)
		m = WS_READ_LIMIT;
	size_t pre = ws_batch_prefix(c, b->wspre, sizeof b->wspre, m);
	if (pre)
		b->iov[n++] = (struct iovec){ b->wspre, pre };
	for (int msg = 0; left; msg++, m = WS_READ_LIMIT) {
		if (msg)
			b->iov[n++] = (struct iovec){ (void *)ws_full_header, sizeof ws_full_header };
		left -= m;
		while (m) {
			size_t take = in[k].iov_len - off;
			if (take > m)
				take = (size_t)m;
			b->iov[n++] = (struct iovec){ (uint8_t *)in[k].iov_base + off, take };
			off += take;
			m -= take;
			if (off == in[k].iov_len) {
				k++;
				off = 0;
			}
		}
	}
	b->niov = n;
	b->iov_idx = 0;
}

const int stats_write_frames_le[STATS_WRITE_FRAMES_BUCKETS] = {
	0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 15, 20, 25, 50, 100,
};
const int stats_mesh_batch_le[STATS_MESH_BATCH_BUCKETS] = {
	0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000,
};
const int stats_mesh_loop_le[STATS_MESH_LOOP_BUCKETS] = { 0, 1, 2, 5, 10, 20, 50, 100 };
/* Queue stamps have millisecond resolution: the first bound takes "no wait at all". */
const int64_t stats_queue_delay_le_us[STATS_QUEUE_DELAY_BUCKETS] = {
	1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000, 1000000, 2500000, 5000000,
};
/* derper's RTT bounds (10 ms ... 500 ms) plus finer ones for nearby clients and coarser ones. */
const int64_t stats_rtt_le_us[STATS_RTT_BUCKETS] = {
	500, 1000, 2500, 5000, 10000, 20000, 50000, 100000, 150000, 250000, 500000, 1000000,
	2500000, 5000000,
};

static struct outbatch *build_batch(struct conn *c, int *mesh_batches)
{
	struct outbatch *b = worker_batch_get(c->w);
	int more = 0;

	if (!b)
		return NULL;
	if (c->llen) {
		/* lbuf is a byte stream: a long one may span batches. */
		uint32_t k = c->llen < BATCH_CTRL ? c->llen : BATCH_CTRL;
		memcpy(b->ctrl, c->lbuf, k);
		memmove(c->lbuf, c->lbuf + k, c->llen - k);
		c->llen -= k;
		if (!c->llen) {
			/* Idle connections hold no buffers; the next frame reallocates. */
			free(c->lbuf);
			c->lbuf = NULL;
			c->lcap = 0;
		}
		b->ctrl_len = k;
		b->nframes++;
		more = c->llen > 0;
	}
	if (c->state == CS_RUNNING) {
		if (c->pong_pending && b->ctrl_len + 13 <= BATCH_CTRL) {
			b->ctrl_len += (uint32_t)frame_pong(b->ctrl + b->ctrl_len, c->pong);
			c->pong_pending = 0;
			b->nframes++;
			STAT_ADD(&c->w->stats, sent_pong, 1);
		}
		int qmore = 0, nctrl = 0;
		b->npkt = sendq_take(&c->q, b->pkt, c->ws ? WS_BATCH_PKTS : BATCH_PKTS, b->ctrl,
				     &b->ctrl_len, BATCH_CTRL, &nctrl, &qmore);
		b->nframes += nctrl;
		/* A watcher's control frames are its mesh updates (PeerPresent/PeerGone). */
		if (c->is_watcher && nctrl) {
			STAT_OBSERVE(&c->w->stats, mesh_batch, stats_mesh_batch_le,
				     STATS_MESH_BATCH_BUCKETS, nctrl);
			(*mesh_batches)++;
		}
		more |= qmore | c->pong_pending;
	}
	if (c->ws)
		b->niov = 1; /* iov[0]: the WebSocket framing, filled in below */
	if (b->ctrl_len)
		b->iov[b->niov++] = (struct iovec){ b->ctrl, b->ctrl_len };
	for (int i = 0; i < b->npkt; i++)
		b->iov[b->niov++] = (struct iovec){ b->pkt[i].frame, b->pkt[i].len };
	if (c->ws)
		ws_frame_batch(c, b);
	b->nframes += b->npkt;
	/* Packets feed the distinct-sender estimate (/debug/traffic UniqueSenders). */
	if (b->npkt && !c->hll)
		__atomic_store_n(&c->hll, calloc(1, HLL_REGS), __ATOMIC_RELEASE);
	for (int i = 0; c->hll && i < b->npkt; i++)
		if (b->pkt[i].len >= FRAME_HEADER_LEN + 32)
			hll_add(c->hll, b->pkt[i].frame + FRAME_HEADER_LEN);
	if (more)
		worker_mark_ready(c); /* our own list: no wake-up needed */
	if (!b->niov) {
		worker_batch_put(c->w, b);
		return NULL;
	}
	return b;
}

static void batch_done(struct conn *c, struct outbatch *b)
{
	struct derp_stats *st = &c->w->stats;
	for (int i = 0; i < b->npkt; i++) {
		STAT_ADD(st, packets_sent, 1);
		STAT_ADD(st, bytes_sent, b->pkt[i].len - FRAME_HEADER_LEN - DERP_KEY_LEN);
		chunk_put(b->pkt[i].c);
	}
	STAT_OBSERVE(st, write_frames, stats_write_frames_le, STATS_WRITE_FRAMES_BUCKETS,
		     b->nframes);
	worker_batch_put(c->w, b);
}

static void batch_advance(struct outbatch *b, size_t n)
{
	while (n > 0) {
		struct iovec *v = &b->iov[b->iov_idx];
		if (n < v->iov_len) {
			v->iov_base = (uint8_t *)v->iov_base + n;
			v->iov_len -= n;
			return;
		}
		n -= v->iov_len;
		b->iov_idx++;
	}
}

static void write_failed(struct conn *c, int err)
{
	struct outbatch *b = c->out;

	if (c->outbound)
		mesh_out_note_drops(c, b->npkt);
	for (int i = 0; i < b->npkt; i++) {
		sendq_count_drop(&c->w->stats, DROP_WRITE_ERROR, &b->pkt[i]);
		chunk_put(b->pkt[i].c);
	}
	b->npkt = 0;
	conn_close(c, strerror(err));
}

static void note_mesh_loops(struct conn *c, int n)
{
	if (n)
		STAT_OBSERVE(&c->w->stats, mesh_loop, stats_mesh_loop_le, STATS_MESH_LOOP_BUCKETS, n);
}

int conn_flush(struct conn *c)
{
	int mesh_batches = 0;

	for (int round = 0; round < FLUSH_ROUNDS; round++) {
		if (c->state == CS_CLOSED)
			return -1;
		if (!c->out) {
			if (!(c->out = build_batch(c, &mesh_batches))) {
				note_mesh_loops(c, mesh_batches);
				/* TLS output the socket has not taken yet counts as stalled. */
				conn_set_stalled(c, c->tls_olen != 0);
				if (ws_closing(c) && !ws_pending(c) && !c->tls_olen) {
					conn_close(c, "WebSocket closed");
					return -1;
				}
				return 0;
			}
			/* Its queue is taken: a sender paused on it may go on (relay_deliver). */
			if (c->outbound)
				worker_link_taken(c->w);
			else if (__atomic_load_n(&c->w->waited_on, __ATOMIC_RELAXED))
				worker_turn_done(c->w);
		}
		struct outbatch *b = c->out;
		ssize_t n = conn_writev(c, b->iov + b->iov_idx, b->niov - b->iov_idx);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN) {
				note_mesh_loops(c, mesh_batches);
				conn_set_stalled(c, 1);
				return 0;
			}
			write_failed(c, errno);
			return -1;
		}
		conn_set_stalled(c, 0);
		batch_advance(b, (size_t)n);
		if (b->iov_idx < b->niov) {
			note_mesh_loops(c, mesh_batches);
			conn_set_stalled(c, 1); /* the socket buffer is full; EPOLLOUT resumes us */
			return 0;
		}
		c->out = NULL;
		batch_done(c, b);
		if (ws_closing(c) && !ws_pending(c) && !c->tls_olen) {
			conn_close(c, "WebSocket closed");
			return -1;
		}
	}
	note_mesh_loops(c, mesh_batches);
	worker_mark_ready(c); /* more than one turn's worth: continue next turn */
	return 0;
}

void conn_on_writable(struct conn *c)
{
	/* TLS output kept from before goes first, whatever the state (handshake too). */
	if (c->tls_olen && tls_flush(c) != 0 && errno != EAGAIN) {
		if (c->ssl && !c->tls_done) {
			int e = errno;
			tls_handshake_failed(c, TLS_FAIL_EOF, strerror(e));
			errno = e;
		}
		if (c->out)
			write_failed(c, errno);
		else
			conn_close(c, strerror(errno));
		return;
	}
	if (c->ssl && !c->tls_done) {
		/* Its output never waits (tls_io_send); on completion, read what follows. */
		if (tls_handshake(c) > 0)
			conn_on_readable(c);
	} else if (c->state == CS_BRIDGE) {
		bridge_pump(c);
	} else if (c->state != CS_HTTP) {
		conn_flush(c);
	}
}
