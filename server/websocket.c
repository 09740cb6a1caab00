/* WebSocket codec (RFC 6455), server side of DERP over WebSocket. See websocket.h. */
#include <string.h>

#include <wolfssl/options.h>
#include <wolfssl/wolfcrypt/coding.h>
#include <wolfssl/wolfcrypt/sha.h>

#include "server/websocket.h"

int ws_accept_key(const char *key, size_t keylen, char out[29])
{
	uint8_t digest[WC_SHA_DIGEST_SIZE];
	word32 outlen = 29;
	wc_Sha sha;

	if (wc_InitSha(&sha) != 0)
		return -1;
	if (wc_ShaUpdate(&sha, (const byte *)key, (word32)keylen) != 0 ||
	    wc_ShaUpdate(&sha, (const byte *)WS_GUID, sizeof WS_GUID - 1) != 0 ||
	    wc_ShaFinal(&sha, digest) != 0) {
		wc_ShaFree(&sha);
		return -1;
	}
	wc_ShaFree(&sha);
	/* 20 bytes -> 28 base64 characters, no line breaks */
	if (Base64_Encode_NoNl(digest, sizeof digest, (byte *)out, &outlen) != 0 || outlen != 28)
		return -1;
	out[28] = '\0';
	return 0;
}

static int is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f';
}

static int is_b64(char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
	       c == '+' || c == '/';
}

int ws_key_valid(const char *key, size_t keylen)
{
	char clean[24];
	size_t n = 0;

	while (keylen && is_space(key[0]))
		key++, keylen--;
	while (keylen && is_space(key[keylen - 1]))
		keylen--;
	/* Go's decoder skips CR and LF anywhere; 16 bytes encode to 22 characters + "==". */
	for (size_t i = 0; i < keylen; i++) {
		if (key[i] == '\r' || key[i] == '\n')
			continue;
		if (n == sizeof clean)
			return 0;
		clean[n++] = key[i];
	}
	if (n != 24 || clean[22] != '=' || clean[23] != '=')
		return 0;
	for (size_t i = 0; i < 22; i++)
		if (!is_b64(clean[i]))
			return 0;
	return 1;
}

const char *ws_header_token(const char *value, size_t len, const char *token, size_t *toklen)
{
	size_t tl = strlen(token), i = 0;

	while (i < len) {
		size_t s = i, e;
		while (i < len && value[i] != ',')
			i++;
		e = i++;
		while (s < e && (value[s] == ' ' || value[s] == '\t'))
			s++;
		while (e > s && (value[e - 1] == ' ' || value[e - 1] == '\t'))
			e--;
		if (e - s == tl && strncasecmp(value + s, token, tl) == 0) {
			*toklen = tl;
			return value + s;
		}
	}
	return NULL;
}

int ws_parse_header(const uint8_t *buf, size_t len, int require_mask, struct ws_frame *f)
{
	size_t need = 2;
	uint8_t len7;

	if (len < 2)
		return 0;
	f->fin = buf[0] >> 7;
	f->rsv = (buf[0] >> 4) & 7;
	f->opcode = buf[0] & 0x0f;
	f->masked = buf[1] >> 7;
	len7 = buf[1] & 0x7f;
	/* everything that is wrong in the first two bytes fails before waiting for more */
	if (f->rsv)
		return -1;
	switch (f->opcode) {
	case WS_OP_CONT: case WS_OP_TEXT: case WS_OP_BINARY:
		break;
	case WS_OP_CLOSE: case WS_OP_PING: case WS_OP_PONG:
		if (!f->fin || len7 > WS_MAX_CONTROL)
			return -1;
		break;
	default:
		return -1;
	}
	if (require_mask && !f->masked)
		return -1;
	need += len7 == 126 ? 2 : len7 == 127 ? 8 : 0;
	need += f->masked ? 4 : 0;
	if (len < need)
		return 0;
	if (len7 == 126) {
		f->len = (uint64_t)buf[2] << 8 | buf[3];
	} else if (len7 == 127) {
		f->len = 0;
		for (int i = 0; i < 8; i++)
			f->len = f->len << 8 | buf[2 + i];
		if (f->len >> 63)
			return -1;
	} else {
		f->len = len7;
	}
	if (f->masked)
		memcpy(f->mask, buf + need - 4, 4);
	else
		memset(f->mask, 0, 4);
	return (int)need;
}

void ws_unmask(uint8_t *data, size_t n, const uint8_t mask[4], uint64_t offset)
{
	size_t i = 0;
	unsigned o = (unsigned)(offset & 3);

	/* whole 8-byte words with the mask rotated to this position, then the tail */
	if (n >= 16) {
		uint8_t m8[8];
		uint64_t m, w;
		for (int k = 0; k < 8; k++)
			m8[k] = mask[(o + (unsigned)k) & 3];
		memcpy(&m, m8, 8);
		for (; i + 8 <= n; i += 8) {
			memcpy(&w, data + i, 8);
			w ^= m;
			memcpy(data + i, &w, 8);
		}
	}
	for (; i < n; i++)
		data[i] ^= mask[(o + i) & 3];
}

static size_t put_len(uint8_t *out, uint8_t maskbit, uint64_t len)
{
	if (len < 126) {
		out[1] = maskbit | (uint8_t)len;
		return 2;
	}
	if (len <= 0xffff) {
		out[1] = maskbit | 126;
		out[2] = (uint8_t)(len >> 8);
		out[3] = (uint8_t)len;
		return 4;
	}
	out[1] = maskbit | 127;
	for (int i = 0; i < 8; i++)
		out[2 + i] = (uint8_t)(len >> (56 - 8 * i));
	return 10;
}

size_t ws_build_header(uint8_t out[10], uint8_t opcode, int fin, uint64_t len)
{
	out[0] = (uint8_t)((fin ? 0x80 : 0) | (opcode & 0x0f));
	return put_len(out, 0, len);
}

size_t ws_build_masked_header(uint8_t out[14], uint8_t opcode, int fin, uint64_t len,
			      const uint8_t mask[4])
{
	size_t n;

	out[0] = (uint8_t)((fin ? 0x80 : 0) | (opcode & 0x0f));
	n = put_len(out, 0x80, len);
	memcpy(out + n, mask, 4);
	return n + 4;
}

size_t ws_build_close(uint8_t out[2 + 123], uint16_t status, const char *reason)
{
	size_t rl = reason ? strlen(reason) : 0;

	if (!status)
		return 0;
	out[0] = (uint8_t)(status >> 8);
	out[1] = (uint8_t)status;
	if (rl > 123) {
		rl = 123;
		/* do not end inside a UTF-8 sequence: back off over continuation bytes */
		while (rl && ((uint8_t)reason[rl] & 0xc0) == 0x80)
			rl--;
	}
	if (rl)
		memcpy(out + 2, reason, rl);
	return 2 + rl;
}

/* Well-formed UTF-8 (RFC 3629): no overlong forms, surrogates or code points past
 * U+10FFFF. */
static int utf8_valid(const uint8_t *p, size_t n)
{
	size_t i = 0;

	while (i < n) {
		uint8_t c = p[i];
		size_t more;
		uint32_t cp;
		if (c < 0x80) {
			i++;
			continue;
		} else if (c >= 0xc2 && c <= 0xdf) {
			more = 1, cp = c & 0x1f;
		} else if (c >= 0xe0 && c <= 0xef) {
			more = 2, cp = c & 0x0f;
		} else if (c >= 0xf0 && c <= 0xf4) {
			more = 3, cp = c & 0x07;
		} else {
			return 0;
		}
		if (n - i <= more)
			return 0;
		for (size_t k = 1; k <= more; k++) {
			if ((p[i + k] & 0xc0) != 0x80)
				return 0;
			cp = cp << 6 | (p[i + k] & 0x3f);
		}
		if ((more == 2 && cp < 0x800) || (more == 3 && cp < 0x10000) || cp > 0x10ffff ||
		    (cp >= 0xd800 && cp <= 0xdfff))
			return 0;
		i += more + 1;
	}
	return 1;
}

int ws_parse_close(const uint8_t *p, size_t len, uint16_t *status)
{
	uint16_t s;

	if (len == 0) {
		*status = WS_CLOSE_NO_STATUS;
		return 0;
	}
	if (len < 2)
		return -1;
	s = (uint16_t)(p[0] << 8 | p[1]);
	if (!((s >= 1000 && s <= 1014 && (s < 1004 || s > 1006)) || (s >= 3000 && s <= 4999)))
		return -1;
	if (!utf8_valid(p + 2, len - 2))
		return -2;
	*status = s;
	return 0;
}

void ws_decoder_init(struct ws_decoder *d)
{
	memset(d, 0, sizeof *d);
	d->limit = WS_READ_LIMIT;
}

static int dec_fail(struct ws_decoder *d, uint16_t status, const char *why)
{
	d->err_status = status;
	d->err_reason = why;
	return WS_DEC_ERROR;
}

/* A frame header is complete: check it against the message state. */
static int dec_start_frame(struct ws_decoder *d)
{
	struct ws_frame *f = &d->f;

	if (f->opcode & 0x8) {
		d->ctl_opcode = f->opcode;
		d->ctl_len = 0;
	} else if (f->opcode == WS_OP_CONT) {
		if (!d->in_message)
			return dec_fail(d, WS_CLOSE_PROTOCOL,
					"continuation frame without text or binary frame");
	} else {
		if (d->in_message)
			return dec_fail(d, WS_CLOSE_PROTOCOL,
					"new data message before the previous one finished");
		if (f->opcode == WS_OP_TEXT)
			return dec_fail(d, WS_CLOSE_UNSUPPORTED, "text message (expected binary)");
		d->in_message = 1;
		d->msg_len = 0;
	}
	if (!(f->opcode & 0x8)) {
		if (d->limit && f->len > d->limit - d->msg_len)
			return dec_fail(d, WS_CLOSE_TOO_BIG, "message too big");
		d->msg_len += f->len;
	}
	d->in_frame = 1;
	d->done = 0;
	return WS_DEC_MORE;
}

/* The current frame's payload is all consumed. */
static int dec_end_frame(struct ws_decoder *d)
{
	d->in_frame = 0;
	if (d->f.opcode & 0x8) {
		uint16_t st;
		int r = d->f.opcode == WS_OP_CLOSE ? ws_parse_close(d->ctl, d->ctl_len, &st) : 0;
		if (r == -2)
			return dec_fail(d, WS_CLOSE_INVALID_DATA, "close reason is not UTF-8");
		if (r != 0)
			return dec_fail(d, WS_CLOSE_PROTOCOL, "invalid close payload");
		return WS_DEC_CONTROL;
	}
	if (d->f.fin)
		d->in_message = 0;
	return WS_DEC_MORE;
}

int ws_decode(struct ws_decoder *d, const uint8_t *in, size_t n, uint8_t *out, size_t *used,
	      size_t *made)
{
	size_t i = 0, o = 0;
	int r = WS_DEC_MORE;

	while (r == WS_DEC_MORE) {
		if (!d->in_frame) {
			/* gather the header, carrying a split one over in d->hdr */
			size_t room = (size_t)WS_MAX_HEADER - d->hlen;
			size_t take = n - i < room ? n - i : room;
			int h;
			if (take == 0 && d->hlen == 0)
				break;
			memcpy(d->hdr + d->hlen, in + i, take);
			h = ws_parse_header(d->hdr, d->hlen + take, 1, &d->f);
			if (h < 0) {
				r = dec_fail(d, WS_CLOSE_PROTOCOL, d->f.rsv ? "reserved bits set" :
					     !d->f.masked ? "unmasked frame from client" :
					     "malformed frame header");
				break;
			}
			if (h == 0) {
				d->hlen = (uint8_t)(d->hlen + take);
				i += take;
				break;
			}
			i += (size_t)h - d->hlen;
			d->hlen = 0;
			r = dec_start_frame(d);
			if (r == WS_DEC_MORE && d->f.len == 0)
				r = dec_end_frame(d);
			continue;
		}
		uint64_t left = d->f.len - d->done;
		size_t k = n - i < left ? n - i : (size_t)left;
		if (k == 0)
			break;
		if (d->f.opcode & 0x8) {
			memcpy(d->ctl + d->ctl_len, in + i, k);
			ws_unmask(d->ctl + d->ctl_len, k, d->f.mask, d->done);
			d->ctl_len = (uint8_t)(d->ctl_len + k);
		} else {
			memmove(out + o, in + i, k);
			ws_unmask(out + o, k, d->f.mask, d->done);
			o += k;
		}
		i += k;
		d->done += k;
		if (d->done == d->f.len)
			r = dec_end_frame(d);
	}
	*used = i;
	*made = o;
	return r;
}
