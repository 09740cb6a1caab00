/* The DERP login (PROTOCOL.md §6): ServerKey out, ClientInfo in (NaCl box of JSON),
 * register, ServerInfo out. */
#include <jansson.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "server/admission.h"
#include "server/frame.h"
#include "server/handshake.h"
#include "server/key.h"
#include "server/log.h"
#include "server/logsum.h"
#include "server/relay.h"
#include "server/server.h"

#define HANDSHAKE_TIMEOUT_MS 10000

/* Go's encoding/json rules for ClientInfo: keys match case-insensitively, unknown keys
 * are ignored, null leaves a field unset (except meshKey, whose text decoder rejects it),
 * and a value of the wrong type is an error. */
int handshake_parse_client_info(const char *json, size_t len, struct client_info *ci,
				char *err, size_t errlen)
{
	json_error_t jerr;
	json_t *root = json_loadb(json, len, JSON_DECODE_ANY, &jerr);
	const char *k;
	json_t *v;
	int rc = -1;

	memset(ci, 0, sizeof *ci);
	err[0] = '\0';
	if (!root) {
		snprintf(err, errlen, "invalid JSON: %s", jerr.text);
		return -1;
	}
	if (json_is_null(root)) {
		rc = 0;
		goto out;
	}
	if (!json_is_object(root)) {
		snprintf(err, errlen, "client info is not a JSON object");
		goto out;
	}
	json_object_foreach(root, k, v) {
		if (strcasecmp(k, "meshKey") == 0) {
			if (!json_is_string(v) ||
			    key_from_hex(ci->mesh_key, json_string_value(v), json_string_length(v))) {
				snprintf(err, errlen, "invalid mesh key");
				goto out;
			}
			ci->has_mesh_key = !key_is_zero(ci->mesh_key);
			continue;
		}
		if (json_is_null(v))
			continue;
		if (strcasecmp(k, "version") == 0) {
			if (!json_is_integer(v)) {
				snprintf(err, errlen, "version: not an integer");
				goto out;
			}
			ci->version = json_integer_value(v);
		} else if (strcasecmp(k, "CanAckPings") == 0 || strcasecmp(k, "IsProber") == 0) {
			if (!json_is_boolean(v)) {
				snprintf(err, errlen, "%s: not a boolean", k);
				goto out;
			}
			if (strcasecmp(k, "IsProber") == 0)
				ci->is_prober = json_is_true(v);
			else
				ci->can_ack_pings = json_is_true(v);
		} else if (strcasecmp(k, "AppName") == 0) {
			if (!json_is_string(v)) {
				snprintf(err, errlen, "AppName: not a string");
				goto out;
			}
		}
	}
	rc = 0;
out:
	json_decref(root);
	return rc;
}

void conn_start_handshake(struct conn *c)
{
	c->state = CS_HANDSHAKE;
	c->deadline_ms = now_ms() + HANDSHAKE_TIMEOUT_MS;
	worker_timer_set(c, c->deadline_ms);
}

static int send_server_info(struct conn *c)
{
	static const char info[] = "{\"version\":2}";
	uint8_t frame[FRAME_HEADER_LEN + DERP_NONCE_LEN + DERP_BOX_OVERHEAD + sizeof info - 1];
	uint8_t *nonce = frame + FRAME_HEADER_LEN;

	frame_put_header(frame, FRAME_SERVER_INFO, sizeof frame - FRAME_HEADER_LEN);
	randombytes_buf(nonce, DERP_NONCE_LEN);
	if (crypto_box_easy(nonce + DERP_NONCE_LEN, (const uint8_t *)info, sizeof info - 1, nonce,
			    c->key, relay.priv) != 0)
		return -1;
	conn_queue_local(c, frame, sizeof frame);
	return 0;
}

static int ask_admission(struct conn *c);
static int login_finish(struct conn *c);

static const char *const login_refusal_name[LOGIN_N] = {
	[LOGIN_BAD_CLIENT_INFO] = "bad_client_info",
	[LOGIN_NOT_ADMITTED] = "not_admitted",
	[LOGIN_ADMISSION_BUSY] = "admission_busy",
	[LOGIN_NO_MESH_KEY] = "no_mesh_key",
	[LOGIN_OTHER] = "other",
};

static struct log_tally refused =
	LOG_TALLY_INIT(LS_DERP, "refused login", login_refusal_name, LOGIN_N);

void server_login_refused(enum login_refusal why, const char *peer, const char *detail)
{
	log_tally_add(&refused, why, peer, detail);
}

/* A ClientInfo refused: the line (with --verbose) and the summary. */
static void bad_client_info(struct conn *c, const uint8_t *ckey, const char *why)
{
	char name[CONN_NAME_LEN], ks[8];
	size_t n;

	conn_name(c, name); /* c->key is not set yet: the key it claimed, if any */
	key_short(ks, ckey);
	n = strlen(name);
	if (ks[0])
		snprintf(name + n, sizeof name - n, " %s", ks);
	log_debug(LS_DERP, "%s: bad client info: %s", name, why);
	server_login_refused(LOGIN_BAD_CLIENT_INFO, name, why);
}

int conn_client_info(struct conn *c, const uint8_t *payload, uint32_t len)
{
	const uint8_t *ckey = payload, *nonce = payload + DERP_KEY_LEN;
	const uint8_t *box = nonce + DERP_NONCE_LEN;
	size_t boxlen = len - DERP_KEY_LEN - DERP_NONCE_LEN;
	struct client_info ci;
	char err[160];
	uint8_t *plain;

	if (boxlen < DERP_BOX_OVERHEAD || key_is_zero(ckey)) {
		bad_client_info(c, ckey,
				boxlen < DERP_BOX_OVERHEAD ? "box too short" : "zero client key");
		return -1;
	}
	plain = malloc(boxlen - DERP_BOX_OVERHEAD + 1);
	if (!plain)
		return -1;
	if (crypto_box_open_easy(plain, box, boxlen, nonce, ckey, relay.priv) != 0) {
		bad_client_info(c, ckey, "client info box does not open");
		free(plain);
		return -1;
	}
	int rc = handshake_parse_client_info((const char *)plain, boxlen - DERP_BOX_OVERHEAD, &ci,
					     err, sizeof err);
	free(plain);
	if (rc != 0) {
		bad_client_info(c, ckey, err);
		return -1;
	}
	memcpy(c->key, ckey, DERP_KEY_LEN);
	c->is_mesh = ci.has_mesh_key && mesh_key_matches(ci.mesh_key);
	c->is_prober = ci.is_prober;
	if (!c->is_mesh && admission_enabled())
		return ask_admission(c);
	return login_finish(c);
}

/* ---- admission: asked on another thread, answered through the worker's mailbox ---- */

struct admission_ask {
	struct admission_ask *next;
	struct conn *c;  /* parked: not freed until the answer arrives (see conn_teardown) */
	int allow;
};

static void admission_done(void *arg, int allow)
{
	struct admission_ask *a = arg;
	struct worker *w = a->c->w;

	a->allow = allow;
	pthread_mutex_lock(&w->ready_mu);
	a->next = w->admitted;
	__atomic_store_n(&w->admitted, a, __ATOMIC_RELAXED); /* (read unlocked as a hint) */
	pthread_mutex_unlock(&w->ready_mu);
	worker_wake(w);
}

static int ask_admission(struct conn *c)
{
	struct admission_ask *a = calloc(1, sizeof *a);
	struct sockaddr_storage peer;
	socklen_t plen;

	if (!a)
		return -1;
	a->c = c;
	c->admitting = 1;
	c->admit_gone = 0;
	conn_peer(c, &peer, &plen);
	admission_check(c->key, (struct sockaddr *)&peer, plen, &c->admit_gone, admission_done, a);
	return 0;
}

void handshake_admitted(struct worker *w)
{
	pthread_mutex_lock(&w->ready_mu);
	struct admission_ask *list = w->admitted;
	__atomic_store_n(&w->admitted, NULL, __ATOMIC_RELAXED);
	pthread_mutex_unlock(&w->ready_mu);
	while (list) {
		struct admission_ask *a = list;
		struct conn *c = a->c;
		list = a->next;
		if (c->admitting == 2) {
			conn_free(c); /* closed while we asked: it waited only for this */
		} else {
			c->admitting = 0;
			if (!a->allow)
				conn_close(c, "not admitted");
			else if (login_finish(c) != 0)
				conn_close(c, "out of memory");
			else if (conn_flush(c) == 0) {
				/* Frames the client sent meanwhile wait in the buffer. */
				worker_read_later(c);
			}
		}
		free(a);
	}
}

/* Admitted: register, ServerInfo, steady state. */
static int login_finish(struct conn *c)
{
	char name[CONN_NAME_LEN];

	client_map_register(relay.map, &c->member);
	c->registered = 1;
	mesh_on_register(c);
	STAT_ADD(&c->w->stats, current_connections, 1);
	if (c->not_ideal)
		STAT_ADD(&c->w->stats, current_notideal_connections, 1);
	if (send_server_info(c) != 0)
		return -1;
	log_debug(LS_DERP, "%s: logged in%s%s", conn_name(c, name),
		  c->fast_start ? " (fast start)" : "", c->is_mesh ? " (mesh peer)" : "");
	conn_start_running(c);
	return 0;
}
