/* TLS on a relay connection (wolfSSL, non-blocking, driven by the worker's epoll loop).
 * Which certificate is served, SNI, ALPN and the meta certificate are decided
 * by the certificate provider (acme/cert.h) inside the handshake. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "acme/cert.h"
#include "metrics/httpd.h"
#include "server/log.h"
#include "server/logsum.h"
#include "server/relay.h"
#include "server/server.h"

#define TLS_RECORD 16384 /* one TLS record's worth of plaintext per write */
/* TLS output kept for a peer that does not read: one record and what wolfSSL writes of
 * its own meanwhile (KeyUpdate answers); beyond that the peer is flooding us with them. */
#define TLS_OUT_MAX (4 * TLS_RECORD)

static struct cert_provider *provider;

void server_set_cert_provider(struct cert_provider *p)
{
	provider = p;
}

/* wolfSSL's own receive, noting the connection's first byte for classify(): the bytes
 * are consumed by then, and a MSG_PEEK would cost a system call per handshake. */
static int tls_io_recv(WOLFSSL *ssl, char *buf, int sz, void *ctx)
{
	struct conn *c = ctx;
	int r = EmbedReceive(ssl, buf, sz, &c->fd);

	if (r > 0 && !c->tls_first_seen) {
		c->tls_first = (uint8_t)buf[0];
		c->tls_first_seen = 1;
	}
	return r;
}

int tls_conn_start(struct conn *c)
{
	c->ssl = cert_provider_ssl_new(provider, c->fd);
	if (!c->ssl)
		return -1;
	tls_conn_attach(c);
	wolfSSL_SSLSetIORecv(c->ssl, tls_io_recv);
	wolfSSL_SetIOReadCtx(c->ssl, c);
	return 0;
}

static enum httpd_tls_version tls_version_of(WOLFSSL *ssl)
{
	switch (wolfSSL_version(ssl)) {
	case TLS1_VERSION: return HTTPD_TLS_10;
	case TLS1_1_VERSION: return HTTPD_TLS_11;
	case TLS1_2_VERSION: return HTTPD_TLS_12;
	case TLS1_3_VERSION: return HTTPD_TLS_13;
	default: return HTTPD_TLS_UNKNOWN;
	}
}

/* ---- failed handshakes: counted by reason (metric), summarised in the log ---- */

const char *const server_tls_fail_name[TLS_FAIL_N] = {
	[TLS_FAIL_EOF] = "eof",
	[TLS_FAIL_TIMEOUT] = "timeout",
	[TLS_FAIL_NOT_TLS] = "not_tls",
	[TLS_FAIL_PROTOCOL_VERSION] = "protocol_version",
	[TLS_FAIL_NO_SHARED_CIPHER] = "no_shared_cipher",
	[TLS_FAIL_BAD_CERTIFICATE] = "bad_certificate",
	[TLS_FAIL_UNKNOWN_SNI] = "unknown_sni",
	[TLS_FAIL_OTHER] = "other",
};

static struct log_tally tls_fails =
	LOG_TALLY_INIT(LS_TLS, "failed TLS handshake", server_tls_fail_name, TLS_FAIL_N);

void server_tls_failures(uint64_t out[TLS_FAIL_N])
{
	log_tally_totals(&tls_fails, out);
}

void tls_handshake_failed(struct conn *c, enum tls_fail reason, const char *detail)
{
	char name[CONN_NAME_LEN];

	conn_name(c, name);
	log_debug(LS_TLS, "%s: handshake failed (%s): %s", name, server_tls_fail_name[reason],
		  detail);
	log_tally_add(&tls_fails, reason, name, detail);
}

/* What a failed wolfSSL_accept means to an operator. The client's alert, if it sent one,
 * says more than wolfSSL's error for it (FATAL_ERROR). */
static enum tls_fail classify(struct conn *c, int err)
{
	WOLFSSL_ALERT_HISTORY h;

	switch (err) {
	case SOCKET_PEER_CLOSED_E:
	case SOCKET_ERROR_E: /* reset by the peer */
		return TLS_FAIL_EOF;
	case VERSION_ERROR:
		return TLS_FAIL_PROTOCOL_VERSION;
	case MATCH_SUITE_ERROR:
	case UNSUPPORTED_SUITE:
		return TLS_FAIL_NO_SHARED_CIPHER;
	default:
		break;
	}
	/* Its first byte is not a TLS handshake record's: an HTTP request ("GET ..."), a
	 * probe, or garbage on the TLS port. */
	if (c->tls_first != 0x16)
		return TLS_FAIL_NOT_TLS;
	if (wolfSSL_get_alert_history(c->ssl, &h) == WOLFSSL_SUCCESS && h.last_rx.level == 2) {
		switch (h.last_rx.code) {
		case bad_certificate: case 43: case 44: case 45: case certificate_unknown:
		case unknown_ca:
			return TLS_FAIL_BAD_CERTIFICATE;
		case wolfssl_alert_protocol_version:
			return TLS_FAIL_PROTOCOL_VERSION;
		case insufficient_security:
			return TLS_FAIL_NO_SHARED_CIPHER;
		}
	}
	/* A TLS 1.3 client's alert comes encrypted after our certificate, and wolfSSL reports
	 * a parse error instead: a client that refuses our certificate, almost always. */
	if (err == PARSE_ERROR && wolfSSL_version(c->ssl) == TLS1_3_VERSION)
		return TLS_FAIL_BAD_CERTIFICATE;
	if (wolfSSL_get_alert_history(c->ssl, &h) == WOLFSSL_SUCCESS && h.last_tx.level == 2 &&
	    h.last_tx.code == handshake_failure)
		return TLS_FAIL_NO_SHARED_CIPHER;
	return TLS_FAIL_OTHER;
}

int tls_handshake(struct conn *c)
{
	int r = wolfSSL_accept(c->ssl);

	if (r == WOLFSSL_SUCCESS) {
		c->tls_done = 1;
		/* As derper: the request head gets its own 30 s once the handshake is done. */
		c->deadline_ms = now_ms() + HTTP_HEAD_TIMEOUT_MS;
		worker_timer_set(c, c->deadline_ms);
		c->tls_version = (uint8_t)tls_version_of(c->ssl);
		httpd_tls_request_begin((enum httpd_tls_version)c->tls_version);
		return 1;
	}
	int err = wolfSSL_get_error(c->ssl, r);
	if (err == WOLFSSL_ERROR_WANT_READ || err == WOLFSSL_ERROR_WANT_WRITE)
		return 0;
	char msg[WOLFSSL_MAX_ERROR_SZ + 40];
	WOLFSSL_ALERT_HISTORY h;
	wolfSSL_ERR_error_string((unsigned long)err, msg);
	if (wolfSSL_get_alert_history(c->ssl, &h) == WOLFSSL_SUCCESS && h.last_rx.level == 2) {
		size_t n = strlen(msg);
		snprintf(msg + n, sizeof msg - n, " (alert %d from the client)", h.last_rx.code);
	}
	const char *sni = cert_provider_take_refusal();
	enum tls_fail why = sni ? TLS_FAIL_UNKNOWN_SNI : classify(c, err);
	if (sni)
		snprintf(msg, sizeof msg, "%s", sni);
	if (why == TLS_FAIL_EOF)
		snprintf(msg, sizeof msg, "%s by the client",
			 err == SOCKET_PEER_CLOSED_E ? "connection closed" : "connection reset");
	tls_handshake_failed(c, why, msg);
	conn_close(c, "TLS handshake failed");
	return -1;
}

ssize_t conn_recv(struct conn *c, void *buf, size_t len)
{
	if (!c->ssl)
		return read(c->fd, buf, len);
	int r = wolfSSL_read(c->ssl, buf, (int)len);
	if (r > 0)
		return r;
	int err = wolfSSL_get_error(c->ssl, r);
	if (err == WOLFSSL_ERROR_WANT_READ) {
		errno = EAGAIN;
		return -1;
	}
	if (err == WOLFSSL_ERROR_ZERO_RETURN || err == SOCKET_PEER_CLOSED_E || r == 0)
		return 0;
	errno = EPROTO; /* WANT_WRITE too: tls_io_send never asks for it */
	return -1;
}

/* Keep what the socket did not take, behind what is already kept. */
static int tls_keep(struct conn *c, const char *p, uint32_t n)
{
	if (c->tls_olen + n > TLS_OUT_MAX) {
		char name[CONN_NAME_LEN];
		log_debug(LS_TLS, "%s: %u bytes of TLS output unread by the peer",
			  conn_name(c, name), c->tls_olen + n);
		return -1;
	}
	uint8_t *b = realloc(c->tls_out, c->tls_olen + n);
	if (!b)
		return -1;
	memcpy(b + c->tls_olen, p, n);
	c->tls_out = b;
	c->tls_olen += n;
	return 0;
}

/* wolfSSL's send: every byte is taken, onto the socket or into c->tls_out, so wolfSSL
 * never sees WANT_WRITE. It mishandles that when it writes records of its own from
 * wolfSSL_read (a KeyUpdate answer, an alert): the record lands over output still
 * unsent, the read's state is left mid-message, and the next wolfSSL_write is taken as a
 * retry of an earlier one and skips bytes of the new data. */
static int tls_io_send(WOLFSSL *ssl, char *buf, int sz, void *ctx)
{
	struct conn *c = ctx;
	ssize_t r = 0;

	(void)ssl;
	if (!c->tls_olen) {
		do
			r = send(c->fd, buf, (size_t)sz, MSG_NOSIGNAL);
		while (r < 0 && errno == EINTR);
		if (r < 0 && errno != EAGAIN)
			return errno == EPIPE || errno == ECONNRESET ? WOLFSSL_CBIO_ERR_CONN_CLOSE
								      : WOLFSSL_CBIO_ERR_GENERAL;
		if (r < 0)
			r = 0;
	}
	if (r < sz && tls_keep(c, buf + r, (uint32_t)(sz - r)) != 0)
		return WOLFSSL_CBIO_ERR_GENERAL;
	return sz;
}

void tls_conn_attach(struct conn *c)
{
	wolfSSL_SSLSetIOSend(c->ssl, tls_io_send);
	wolfSSL_SetIOWriteCtx(c->ssl, c);
}

int tls_flush(struct conn *c)
{
	while (c->tls_olen) {
		ssize_t r = send(c->fd, c->tls_out, c->tls_olen, MSG_NOSIGNAL);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		c->tls_olen -= (uint32_t)r;
		memmove(c->tls_out, c->tls_out + r, c->tls_olen);
	}
	free(c->tls_out); /* an idle connection holds no buffer */
	c->tls_out = NULL;
	return 0;
}

ssize_t tls_write(struct conn *c, const uint8_t *buf, uint32_t n)
{
	int r = wolfSSL_write(c->ssl, buf, (int)n);

	if (r == (int)n)
		return r;
	errno = r > 0 ? EPROTO : EPIPE; /* a short write: wolfSSL would want the rest retried */
	return -1;
}

ssize_t conn_writev(struct conn *c, const struct iovec *iov, int n)
{
	if (!c->ssl)
		return writev(c->fd, iov, n);
	/* What the socket did not take last time goes first; new records wait behind it, so
	 * at most one record's worth is ever kept. */
	if (tls_flush(c) != 0)
		return -1;
	ssize_t total = 0;
	/* Gather into whole records: fewer, fuller records than one per frame. */
	uint8_t *stage = c->w->scratch;
	size_t skip = 0;
	int i = 0;
	while (i < n && !c->tls_olen) {
		uint32_t len = 0;
		while (i < n && len < TLS_RECORD) {
			const uint8_t *p = iov[i].iov_base;
			size_t avail = iov[i].iov_len;
			if (skip >= avail) {
				skip -= avail;
				i++;
				continue;
			}
			p += skip;
			avail -= skip;
			size_t k = avail < TLS_RECORD - len ? avail : TLS_RECORD - len;
			memcpy(stage + len, p, k);
			len += (uint32_t)k;
			skip += k;
			if (skip == iov[i].iov_len) {
				skip = 0;
				i++;
			}
		}
		if (!len)
			break;
		if (tls_write(c, stage, len) < 0)
			return -1;
		total += len;
	}
	return total;
}

void tls_conn_end(struct conn *c)
{
	if (c->ssl) {
		if (c->tls_done && !c->outbound)
			httpd_tls_request_end((enum httpd_tls_version)c->tls_version);
		wolfSSL_free(c->ssl);
		c->ssl = NULL;
	}
	free(c->tls_out);
	c->tls_out = NULL;
	c->tls_olen = 0;
}
