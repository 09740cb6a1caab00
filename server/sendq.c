#include <stdlib.h>
#include <string.h>

#include "server/frame.h"
#include "server/relay.h"

void sendq_init(struct sendq *q)
{
	memset(q, 0, sizeof *q);
	pthread_mutex_init(&q->mu, NULL);
}

int sendq_kind(const struct pkt *p)
{
	return frame_is_disco(p->frame + FRAME_HEADER_LEN + 32, p->len - FRAME_HEADER_LEN - 32)
		       ? KIND_DISCO
		       : KIND_OTHER;
}

void sendq_count_drop(struct derp_stats *st, enum drop_reason r, const struct pkt *p)
{
	int k = sendq_kind(p);

	STAT_ADD(st, packets_dropped[r][k], 1);
	STAT_ADD(st, bytes_dropped[r][k], p->len - FRAME_HEADER_LEN - 32);
}

static void note_queue_time(struct derp_stats *st, const struct pkt *p)
{
	/* Stamps come from the workers' loop clocks, which may differ by a turn: clamp. */
	int32_t waited = (int32_t)((uint32_t)current_worker->loop_ms - p->enq_ms);

	if (waited < 0)
		waited = 0;
	STAT_ADD(st, queue_ns_sum, (uint64_t)waited * 1000000u);
	STAT_ADD(st, queue_count, 1);
	STAT_OBSERVE(st, queue_delay, stats_queue_delay_le_us, STATS_QUEUE_DELAY_BUCKETS,
		     (int64_t)waited * 1000);
}

int sendq_push_pkt(struct sendq *q, const struct pkt *p, int disco, struct derp_stats *st)
{
	int qi = disco ? Q_DISCO : Q_REGULAR;
	int depth = relay.queue_depth;
	struct pkt dropped[3];
	int ndropped = 0, pushed = 0, gone = 0;

	pthread_mutex_lock(&q->mu);
	if (!q->slots && !q->closed) {
		q->slots = malloc(sizeof *q->slots * depth * Q_N);
		if (!q->slots)
			gone = 1; /* out of memory: treat like a vanished receiver */
	}
	/* Upstream retries three times because its queue is a channel shared with a racing
	 * writer; under one lock the first attempt after dropping the head always succeeds. */
	for (int attempt = 0; attempt < 3 && !gone && !pushed; attempt++) {
		if (q->closed) {
			gone = 1;
			break;
		}
		struct pkt *ring = q->slots + qi * depth;
		if (q->n[qi] < depth) {
			ring[(q->head[qi] + q->n[qi]) % depth] = *p;
			q->n[qi]++;
			pushed = 1;
		} else if (q->n[qi] > 0) {
			dropped[ndropped++] = ring[q->head[qi]];
			q->head[qi] = (uint16_t)((q->head[qi] + 1) % depth);
			q->n[qi]--;
		}
	}
	int n = q->n[qi];
	pthread_mutex_unlock(&q->mu);

	for (int i = 0; i < ndropped; i++) {
		note_queue_time(st, &dropped[i]);
		sendq_count_drop(st, DROP_QUEUE_HEAD, &dropped[i]);
		chunk_put(dropped[i].c);
	}
	if (!pushed) {
		sendq_count_drop(st, gone ? DROP_GONE_DISCONNECTED : DROP_QUEUE_TAIL, p);
		chunk_put(p->c);
	}
	return n;
}

int sendq_try_push(struct sendq *q, const struct pkt *p, int disco, struct derp_stats *st)
{
	int qi = disco ? Q_DISCO : Q_REGULAR;
	int depth = relay.queue_depth, n = -1;

	pthread_mutex_lock(&q->mu);
	int gone = q->closed;
	if (!gone && !q->slots && !(q->slots = malloc(sizeof *q->slots * depth * Q_N)))
		gone = 1; /* out of memory: treat like a vanished receiver */
	if (!gone && q->n[qi] < depth) {
		q->slots[qi * depth + (q->head[qi] + q->n[qi]) % depth] = *p;
		n = ++q->n[qi];
	}
	pthread_mutex_unlock(&q->mu);
	if (gone) {
		sendq_count_drop(st, DROP_GONE_DISCONNECTED, p);
		chunk_put(p->c);
		return 0;
	}
	return n;
}

int sendq_pending(struct sendq *q)
{
	pthread_mutex_lock(&q->mu);
	int n = q->n[Q_REGULAR] + q->n[Q_DISCO];
	pthread_mutex_unlock(&q->mu);
	return n;
}

int sendq_full(struct sendq *q, int disco)
{
	pthread_mutex_lock(&q->mu);
	int full = q->n[disco ? Q_DISCO : Q_REGULAR] >= relay.queue_depth;
	pthread_mutex_unlock(&q->mu);
	return full;
}

void sendq_push_ctrl(struct sendq *q, const uint8_t *bytes, uint8_t len)
{
	struct ctrl_frame *f = malloc(sizeof *f);

	if (!f)
		return;
	f->next = NULL;
	f->len = len;
	memcpy(f->bytes, bytes, len);
	pthread_mutex_lock(&q->mu);
	if (q->closed) {
		pthread_mutex_unlock(&q->mu);
		free(f);
		return;
	}
	if (q->ctrl_tail)
		q->ctrl_tail->next = f;
	else
		q->ctrl_head = f;
	q->ctrl_tail = f;
	pthread_mutex_unlock(&q->mu);
}

int sendq_take(struct sendq *q, struct pkt *out, int max, uint8_t *ctrl, uint32_t *ctrl_len,
	       uint32_t ctrl_cap, int *nctrl, int *more)
{
	int depth = relay.queue_depth, n = 0;
	struct ctrl_frame *done = NULL;

	pthread_mutex_lock(&q->mu);
	while (q->ctrl_head && *ctrl_len + q->ctrl_head->len <= ctrl_cap) {
		struct ctrl_frame *f = q->ctrl_head;
		memcpy(ctrl + *ctrl_len, f->bytes, f->len);
		*ctrl_len += f->len;
		(*nctrl)++;
		q->ctrl_head = f->next;
		f->next = done;
		done = f;
	}
	if (!q->ctrl_head)
		q->ctrl_tail = NULL;
	/* Alternate so bulk data cannot starve disco (and the reverse). */
	while (n < max && (q->n[Q_REGULAR] || q->n[Q_DISCO])) {
		for (int qi = 0; qi < Q_N && n < max; qi++) {
			if (!q->n[qi])
				continue;
			out[n++] = q->slots[qi * depth + q->head[qi]];
			q->head[qi] = (uint16_t)((q->head[qi] + 1) % depth);
			q->n[qi]--;
		}
	}
	*more = q->ctrl_head || q->n[Q_REGULAR] || q->n[Q_DISCO];
	pthread_mutex_unlock(&q->mu);

	while (done) {
		struct ctrl_frame *f = done;
		done = f->next;
		free(f);
	}
	struct derp_stats *st = &current_worker->stats;
	for (int i = 0; i < n; i++)
		note_queue_time(st, &out[i]);
	return n;
}

void sendq_trim(struct sendq *q)
{
	pthread_mutex_lock(&q->mu);
	if (q->slots && !q->n[Q_REGULAR] && !q->n[Q_DISCO]) {
		free(q->slots);
		q->slots = NULL;
	}
	pthread_mutex_unlock(&q->mu);
}

void sendq_close(struct sendq *q, struct derp_stats *st)
{
	int depth = relay.queue_depth;

	pthread_mutex_lock(&q->mu);
	q->closed = 1;
	pthread_mutex_unlock(&q->mu);
	/* closed is set: no pusher touches the queue any more, so no lock is needed below. */
	for (int qi = 0; qi < Q_N; qi++)
		for (; q->n[qi]; q->n[qi]--) {
			struct pkt *p = &q->slots[qi * depth + q->head[qi]];
			sendq_count_drop(st, DROP_GONE_DISCONNECTED, p);
			chunk_put(p->c);
			q->head[qi] = (uint16_t)((q->head[qi] + 1) % depth);
		}
	free(q->slots);
	q->slots = NULL;
	while (q->ctrl_head) {
		struct ctrl_frame *f = q->ctrl_head;
		q->ctrl_head = f->next;
		free(f);
	}
	q->ctrl_tail = NULL;
	pthread_mutex_destroy(&q->mu);
}
