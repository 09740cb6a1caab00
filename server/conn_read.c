/* Reading DERP frames. One read(2) fills a chunk with as many frames as arrived; a
 * SendPacket is rewritten in place into the RecvPacket its receiver will get and queued
 * as a reference into the chunk, so its payload is never copied. */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "server/frame.h"
#include "server/log.h"
#include "server/relay.h"
#include "server/server.h"

#define READ_BUDGET 2 /* reads per wake-up before giving other connections a turn */
#define HOME_MOVE_GRACE_MS 5000

/* What to do with a frame once its header is known (PROTOCOL.md §13). */
enum verdict { V_BUFFER, V_DISCARD, V_CLOSE };

/* Frames a region peer's server sends on our outbound mesh connection. Like a Go client,
 * skip what is short or unknown and refuse anything over 1 MiB. */
static enum verdict judge_outbound(uint8_t type, uint32_t len, const char **why)
{
	if (len > 1024 * 1024)
		return *why = "frame from mesh peer too long", V_CLOSE;
	if ((type == FRAME_PEER_PRESENT || type == FRAME_PEER_GONE) && len >= 32 && len <= 1024)
		return V_BUFFER;
	return V_DISCARD;
}

static enum verdict judge(const struct conn *c, uint8_t type, uint32_t len, const char **why)
{
	if (c->outbound)
		return judge_outbound(type, len, why);
	if (c->state == CS_HANDSHAKE) {
		if (type != FRAME_CLIENT_INFO)
			return *why = "bad frame type before client info", V_CLOSE;
		if (len < CLIENTINFO_MIN)
			return *why = "short client info", V_CLOSE;
		if (len > CLIENTINFO_MAX)
			return *why = "long client info", V_CLOSE;
		return V_BUFFER;
	}
	switch (type) {
	case FRAME_SEND_PACKET:
		if (len < DERP_KEY_LEN)
			return *why = "short send packet frame", V_CLOSE;
		if (len - DERP_KEY_LEN > DERP_MAX_PACKET)
			return *why = "send packet too long", V_CLOSE;
		return V_BUFFER;
	case FRAME_NOTE_PREFERRED:
		if (len != 1)
			return *why = "bad note preferred length", V_CLOSE;
		return V_BUFFER;
	case FRAME_PING:
		if (len < PING_MIN)
			return *why = "short ping", V_CLOSE;
		if (len > PING_MAX)
			return *why = "ping body too large", V_CLOSE;
		return V_BUFFER;
	case FRAME_FORWARD_PACKET:
		if (!c->is_mesh)
			return *why = "insufficient permissions for forward packet", V_CLOSE;
		if (len < 64)
			return *why = "short forward packet frame", V_CLOSE;
		if (len - 64 > DERP_MAX_PACKET)
			return *why = "forward packet too long", V_CLOSE;
		return V_BUFFER;
	case FRAME_WATCH_CONNS:
		if (len != 0)
			return *why = "bad watch conns length", V_CLOSE;
		if (!c->is_mesh)
			return *why = "insufficient permissions for watch conns", V_CLOSE;
		return V_BUFFER;
	case FRAME_CLOSE_PEER:
		if (len != 32)
			return *why = "bad close peer length", V_CLOSE;
		if (!c->is_mesh)
			return *why = "insufficient permissions for close peer", V_CLOSE;
		return V_BUFFER;
	default:
		return V_DISCARD;
	}
}

static void note_preferred(struct conn *c, int pref)
{
	struct derp_stats *st = &c->w->stats;

	if (pref == c->preferred)
		return;
	c->preferred = (uint8_t)pref;
	STAT_ADD(st, current_home_connections, pref ? 1 : -1);
	if (now_ms() - c->created_ms > HOME_MOVE_GRACE_MS) {
		if (pref)
			STAT_ADD(st, home_moves_in, 1);
		else
			STAT_ADD(st, home_moves_out, 1);
	}
}

static void send_packet(struct conn *c, uint8_t *frame, uint32_t len)
{
	struct derp_stats *st = &c->w->stats;
	uint8_t *payload = frame + FRAME_HEADER_LEN, dst[DERP_KEY_LEN];
	uint32_t n = len - DERP_KEY_LEN;
	int disco = frame_is_disco(payload + DERP_KEY_LEN, n);
	struct pkt p = { c->rchunk, frame, FRAME_HEADER_LEN + len, 0 };

	STAT_ADD(st, packets_received, 1);
	STAT_ADD(st, bytes_received, n);
	STAT_ADD(st, packets_received_kind[disco ? KIND_DISCO : KIND_OTHER], 1);
	/* SendPacket(dst, pkt) and RecvPacket(src, pkt) have the same length. */
	memcpy(dst, payload, DERP_KEY_LEN);
	frame[0] = FRAME_RECV_PACKET;
	memcpy(payload, c->key, DERP_KEY_LEN);
	relay_route(c, dst, &p, disco);
}

/* Returns -1 if the connection was closed. */
static int handle_frame(struct conn *c, uint8_t type, uint8_t *frame, uint32_t len)
{
	uint8_t *payload = frame + FRAME_HEADER_LEN;

	if (c->outbound) {
		mesh_out_frame(c, type, payload, len);
		return 0;
	}
	if (c->state == CS_HANDSHAKE) {
		if (conn_client_info(c, payload, len) != 0) {
			conn_close(c, "client info rejected");
			return -1;
		}
		return conn_flush(c);
	}
	switch (type) {
	case FRAME_SEND_PACKET:
		send_packet(c, frame, len);
		break;
	case FRAME_NOTE_PREFERRED:
		note_preferred(c, payload[0] != 0);
		break;
	case FRAME_FORWARD_PACKET:
		mesh_forward_in(c, frame, len);
		break;
	case FRAME_WATCH_CONNS:
		mesh_watch(c);
		break;
	case FRAME_CLOSE_PEER:
		mesh_close_peer(payload);
		break;
	case FRAME_PING:
		/* One pong slot: a ping arriving while one is pending is ignored (upstream). */
		if (!c->pong_pending) {
			memcpy(c->pong, payload, 8);
			c->pong_pending = 1;
			worker_mark_ready(c); /* our own list: drained at the end of this turn */
		}
		break;
	}
	return 0;
}

/* --rate-config (PROTOCOL.md §10): a non-mesh client's frame costs min(length, 65568)
 * tokens, taken when its header arrives. Short of tokens, nothing more is read from the
 * client until they are there, so TCP pushes back on it; nothing is dropped. Returns 1 to
 * wait. */
static int rate_wait(struct conn *c, uint32_t len)
{
	uint32_t gen = __atomic_load_n(&relay.rate_gen, __ATOMIC_ACQUIRE);

	if (c->is_mesh || c->rate_charged || (!gen && !c->rate_gen))
		return 0; /* the common case: no limits configured, no clock read */
	int64_t now = now_ms();
	if (gen != c->rate_gen) {
		pthread_mutex_lock(&relay.rate_mu);
		struct rate_config rc = relay.rate;
		pthread_mutex_unlock(&relay.rate_mu);
		tb_set(&c->tb, rc.bytes_per_sec, rc.burst, now);
		c->rate_gen = gen;
	}
	int64_t wait = tb_take(&c->tb, len < RATE_MIN_BURST ? len : RATE_MIN_BURST, now);
	if (wait <= 0) {
		c->rate_charged = 1;
		return 0;
	}
	if (!c->rate_resume_ms)
		STAT_ADD(&c->w->stats, rate_limit_per_client_waited, 1);
	c->rate_resume_ms = now + wait;
	worker_rate_wait(c);
	return 1;
}

/* Parse every complete frame in the buffer. Returns -1 if the connection was closed,
 * 1 if it paused (see relay_deliver) with frames left, else 0. */
static int parse_frames(struct conn *c)
{
	for (;;) {
		if (c->admitting)
			return 1; /* frames wait for the admission answer (handshake_admitted) */
		if (c->paused) {
			c->paused = 0;
			worker_read_later(c); /* resumed once the other worker took the queue */
			return 1;
		}
		uint32_t avail = c->rend - c->rstart;
		if (c->discard) {
			uint32_t k = c->discard < avail ? (uint32_t)c->discard : avail;
			c->rstart += k;
			c->discard -= k;
			if (c->discard)
				return 0;
			continue;
		}
		if (avail < FRAME_HEADER_LEN)
			return 0;
		uint8_t *frame = c->rchunk->data + c->rstart, type;
		uint32_t len;
		const char *why = NULL;
		frame_get_header(frame, &type, &len);
		if (c->state == CS_RUNNING && rate_wait(c, len))
			return 1;
		switch (judge(c, type, len, &why)) {
		case V_CLOSE:
			if (type == FRAME_PING)
				STAT_ADD(&c->w->stats, got_ping, 1);
			if (strncmp(why, "insufficient permissions", 24) == 0) {
				char name[CONN_NAME_LEN];
				server_login_refused(LOGIN_NO_MESH_KEY, conn_name(c, name), why);
			}
			conn_close(c, why);
			return -1;
		case V_DISCARD:
			c->rate_charged = 0;
			if (c->registered)
				client_map_note_activity(relay.map, &c->member);
			c->rstart += FRAME_HEADER_LEN;
			c->discard = len;
			continue;
		case V_BUFFER:
			break;
		}
		if (avail - FRAME_HEADER_LEN < len)
			return 0; /* incomplete; ensure_space() makes room for all of it */
		if (type == FRAME_PING)
			STAT_ADD(&c->w->stats, got_ping, 1);
		if (c->registered)
			client_map_note_activity(relay.map, &c->member);
		c->rate_charged = 0;
		c->rstart += FRAME_HEADER_LEN + len;
		if (handle_frame(c, type, frame, len) < 0)
			return -1;
	}
}

/* Bytes the frame in progress needs in total (0 if its header is not in yet). */
static uint32_t frame_in_progress(const struct conn *c)
{
	uint32_t avail = c->rend - c->rstart;
	uint8_t type;
	uint32_t len;

	if (c->discard || avail < FRAME_HEADER_LEN)
		return 0;
	frame_get_header(c->rchunk->data + c->rstart, &type, &len);
	return FRAME_HEADER_LEN + len; /* judge() already bounded len for buffered frames */
}

/* Make room to read: the frame in progress must end up whole in one chunk. A chunk that
 * queued packets still point into is never written over; unparsed bytes move to a fresh
 * one (only the partial frame is copied). The chunk size follows the sender: large while
 * its reads fill chunks, small otherwise. */
int conn_ensure_space(struct conn *c)
{
	uint32_t want = frame_in_progress(c);
	uint32_t size = c->read_large ? CHUNK_LARGE : CHUNK_SMALL;

	if (want < size)
		want = size;
	/* Only a ClientInfo can be larger than a large chunk: grow toward it as bytes
	 * arrive rather than trusting the announced length with memory up front. */
	if (want > CHUNK_LARGE && c->rchunk) {
		uint32_t partial = c->rend - c->rstart;
		uint32_t step = partial * 2 > CHUNK_LARGE ? partial * 2 : CHUNK_LARGE;
		if (step < want)
			want = step;
	} else if (want > CHUNK_LARGE) {
		want = CHUNK_LARGE;
	}
	if (c->ws)
		want += 1024; /* WebSocket headers still to be squeezed out of the frame */
	if (!c->rchunk) {
		c->rchunk = chunk_get(want);
		c->rstart = c->rend = 0;
		ws_fresh_chunk(c);
		return c->rchunk ? 0 : -1;
	}
	uint32_t end = ws_data_end(c);
	if (end < c->rchunk->cap && c->rstart + want <= c->rchunk->cap)
		return 0;
	uint32_t partial = end - c->rstart, moved = c->rstart;
	if (!chunk_shared(c->rchunk) && want <= c->rchunk->cap) {
		memmove(c->rchunk->data, c->rchunk->data + c->rstart, partial);
	} else {
		struct chunk *nc = chunk_get(want > partial ? want : partial);
		if (!nc)
			return -1;
		memcpy(nc->data, c->rchunk->data + c->rstart, partial);
		chunk_put(c->rchunk);
		c->rchunk = nc;
	}
	c->rstart = 0;
	c->rend -= moved;
	ws_shift(c, moved);
	return 0;
}

static void read_some(struct conn *c);

void conn_on_readable(struct conn *c)
{
	read_some(c);
	/* Nothing is read while admission is asked, so a client that closed (or shut its
	 * side) meanwhile is noticed here: it has left, and its check must not be sent. */
	if (c->state != CS_CLOSED && c->admitting == 1 && c->peer_shut)
		conn_close(c, "client left while admission was asked");
}

static void read_some(struct conn *c)
{
	if (c->held.c)
		return; /* it waits on the backlog until its packet is delivered (more_run) */
	worker_read_forget(c);
	if (c->ssl && !c->tls_done && tls_handshake(c) <= 0)
		return;
	if (c->state == CS_BRIDGE) {
		bridge_pump(c);
		return;
	}
	if (c->state == CS_DIAL)
		return; /* what the client sends waits until its CONNECT target answers */
	if (c->state == CS_HTTP) {
		if (conn_http(c) < 0 || c->state == CS_HTTP)
			return;
		/* Upgraded: a fast-start client's ClientInfo may already be in the socket, and
		 * with edge-triggered epoll nothing would tell us again. Fall through. */
		if (conn_flush(c) < 0)
			return;
	}
	if (c->admitting || c->rate_resume_ms)
		return; /* read nothing more until admitted / until the tokens are there */
	/* Frames left over from a pause (or after a TLS request head) come first. */
	if (c->rchunk && c->rend > c->rstart) {
		int r = parse_frames(c);
		if (r != 0)
			return;
	}
	for (int i = 0; i < READ_BUDGET; i++) {
		if (conn_ensure_space(c) != 0) {
			conn_close(c, "out of memory");
			return;
		}
		uint32_t at = ws_data_end(c), room = c->rchunk->cap - at;
		ssize_t n = conn_recv(c, c->rchunk->data + at, room);
		if (n == 0) {
			conn_close(c, ws_data_end(c) > c->rstart || c->discard ? "EOF mid-frame" : "EOF");
			return;
		}
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN)
				break;
			conn_close(c, strerror(errno));
			return;
		}
		c->w->rbytes += (uint64_t)n;
		if (c->ws) {
			if (ws_ingest(c, (uint32_t)n) != 0)
				return;
		} else {
			c->rend += (uint32_t)n;
		}
		if ((uint32_t)n == room)
			c->read_large = 1;
		else if (n < CHUNK_SMALL / 2)
			c->read_large = 0;
		int r = parse_frames(c);
		if (r < 0)
			return;
		if (r > 0)
			break;
		/* A short read emptied the socket (epoll(7)): new data makes a new edge, so
		 * the read that would return EAGAIN can be saved. Not for TLS, which may hold
		 * decrypted bytes, nor once the peer has shut down (no edge would follow). */
		if ((uint32_t)n < room && !c->ssl && !c->peer_shut)
			break;
		if (i == READ_BUDGET - 1)
			worker_read_later(c); /* edge-triggered epoll will not say so again */
	}
	/* Idle connections hold no buffer. */
	if (c->rchunk && c->rstart == ws_data_end(c)) {
		chunk_put(c->rchunk);
		c->rchunk = NULL;
	}
}
