/* Rate-config file and token bucket. See ratelimit.h. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

#include "server/ratelimit.h"

#define RATE_FILE_MAX (1 << 20) /* a two-number file; refuse anything absurd */

/* One field of the file: Go's json into a uint64 takes a non-negative integer literal;
 * null leaves the field alone; anything else is an error. A negative integer here is
 * one of widen()'s: a literal from 2^63 to 2^64-1 in two's complement. */
static int take_uint(json_t *v, uint64_t *out)
{
	if (json_is_null(v))
		return 0;
	if (!json_is_integer(v))
		return -1;
	*out = (uint64_t)json_integer_value(v);
	return 0;
}

/* jansson's integers are int64 (it fails "too big integer" past 2^63-1), Go fills a
 * uint64 up to 2^64-1. So the text jansson reads has every integer literal outside
 * strings rewritten: 2^63..2^64-1 as its int64 bit pattern (negative), and literals
 * Go would refuse for a uint64, negative ones and those past 2^64-1, as the fraction
 * 0.5, which take_uint refuses too but an unknown field may hold, as in Go. Nothing
 * else changes, so jansson still judges the JSON. malloc'd, NULL if out of memory. */
static char *widen(const char *t, size_t len, size_t *outlen)
{
	char *o = malloc(2 * len + 1), *w = o; /* "-0" -> "0.5" is the most growth */
	if (o == NULL)
		return NULL;
	for (size_t i = 0; i < len;) {
		if (t[i] == '"') { /* copy the string, escapes and all */
			*w++ = t[i++];
			while (i < len && t[i] != '"') {
				if (t[i] == '\\' && i + 1 < len)
					*w++ = t[i++];
				*w++ = t[i++];
			}
			if (i < len)
				*w++ = t[i++];
			continue;
		}
		if (t[i] != '-' && (t[i] < '0' || t[i] > '9')) {
			*w++ = t[i++];
			continue;
		}
		size_t s = i, d = t[i] == '-' ? i + 1 : i;
		while (i < len && strchr("0123456789+-.eE", t[i]) != NULL)
			i++;
		/* an integer as JSON writes it: -?(0|[1-9][0-9]*); else left for jansson */
		int integer = i > d && (t[d] != '0' || i == d + 1);
		for (size_t k = d; k < i && integer; k++)
			integer = t[k] >= '0' && t[k] <= '9';
		char num[32];
		unsigned long long v = 0;
		if (integer && i - d < sizeof num) {
			memcpy(num, t + d, i - d);
			num[i - d] = '\0';
			errno = 0;
			v = strtoull(num, NULL, 10);
		}
		if (integer && (d > s || i - d >= sizeof num || errno == ERANGE))
			w += sprintf(w, "0.5"); /* negative, or past 2^64-1 */
		else if (integer && v > INT64_MAX)
			w += sprintf(w, "%lld", (long long)(int64_t)v);
		else
			for (size_t k = s; k < i; k++)
				*w++ = t[k];
	}
	*outlen = (size_t)(w - o);
	return o;
}

int rate_config_parse(const char *text, size_t len, struct rate_config *raw, char *err,
		      size_t errlen)
{
	json_error_t je;
	json_t *root, *v;
	const char *k;
	struct rate_config rc = { 0, 0 };

	size_t wlen;
	char *wide = widen(text, len, &wlen);
	if (wide == NULL) {
		snprintf(err, errlen, "error parsing rate config: out of memory");
		return -1;
	}
	/* JSON_DECODE_ANY: a top-level null is valid JSON that leaves everything zero */
	root = json_loadb(wide, wlen, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
	free(wide);
	if (!root) {
		snprintf(err, errlen, "error parsing rate config: %s", je.text);
		return -1;
	}
	if (!json_is_object(root) && !json_is_null(root)) {
		json_decref(root);
		snprintf(err, errlen, "error parsing rate config: not a JSON object");
		return -1;
	}
	/* Keys match case-insensitively; iteration is in file order, so a later spelling wins
	 * as it does in Go. */
	json_object_foreach(root, k, v) {
		uint64_t *dst = NULL;
		if (strcasecmp(k, "PerClientRateLimitBytesPerSec") == 0)
			dst = &rc.bytes_per_sec;
		else if (strcasecmp(k, "PerClientRateBurstBytes") == 0)
			dst = &rc.burst;
		if (dst && take_uint(v, dst) != 0) {
			snprintf(err, errlen, "error parsing rate config: %s is not an unsigned integer", k);
			json_decref(root); /* k lives in root */
			return -1;
		}
	}
	json_decref(root);
	*raw = rc;
	return 0;
}

struct rate_config rate_config_applied(struct rate_config raw)
{
	if (raw.bytes_per_sec == 0)
		return (struct rate_config){ 0, 0 };
	if (raw.burst < RATE_MIN_BURST)
		raw.burst = RATE_MIN_BURST;
	return raw;
}

int rate_config_load(const char *path, struct rate_config *out, char *err, size_t errlen)
{
	FILE *f;
	char *buf;
	size_t n;
	struct rate_config raw;
	int rc;

	if (!path || !path[0]) {
		snprintf(err, errlen, "rate config path is empty");
		return -1;
	}
	f = fopen(path, "rb");
	if (!f) {
		snprintf(err, errlen, "error reading rate config: open %s: %s", path, strerror(errno));
		return -1;
	}
	buf = malloc(RATE_FILE_MAX + 1);
	if (!buf) {
		fclose(f);
		snprintf(err, errlen, "error reading rate config: out of memory");
		return -1;
	}
	n = fread(buf, 1, RATE_FILE_MAX + 1, f);
	if (ferror(f) || n > RATE_FILE_MAX) {
		snprintf(err, errlen, "error reading rate config: %s: %s", path,
			 ferror(f) ? strerror(errno) : "file too large");
		fclose(f);
		free(buf);
		return -1;
	}
	fclose(f);
	rc = rate_config_parse(buf, n, &raw, err, errlen);
	free(buf);
	if (rc != 0)
		return -1;
	*out = rate_config_applied(raw);
	return 0;
}

void tb_init(struct token_bucket *b, uint64_t rate, uint64_t burst, int64_t now_ms)
{
	b->rate = rate;
	b->burst = burst;
	b->tokens = (double)burst;
	b->last_ms = now_ms;
}

void tb_set(struct token_bucket *b, uint64_t rate, uint64_t burst, int64_t now_ms)
{
	tb_init(b, rate, burst, now_ms);
}

int64_t tb_take(struct token_bucket *b, uint64_t n, int64_t now_ms)
{
	double need, wait;

	if (b->rate == 0)
		return 0;
	if (n > b->burst)
		return -1;
	/* refill; a clock that steps back adds nothing */
	if (now_ms > b->last_ms) {
		b->tokens += (double)(now_ms - b->last_ms) * (double)b->rate / 1000.0;
		if (b->tokens > (double)b->burst)
			b->tokens = (double)b->burst;
		b->last_ms = now_ms;
	}
	/* a hair of slack so that waiting exactly the time returned always suffices */
	need = (double)n - b->tokens;
	if (need <= 1e-6 * (double)n) {
		b->tokens -= (double)n;
		if (b->tokens < 0)
			b->tokens = 0;
		return 0;
	}
	wait = ceil(need * 1000.0 / (double)b->rate);
	if (wait < 1)
		wait = 1;
	if (wait > (double)INT64_MAX / 2)
		wait = (double)INT64_MAX / 2;
	return (int64_t)wait;
}
