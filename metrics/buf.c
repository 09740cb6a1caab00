/* A growable text buffer for response bodies, and Go's float formatting (metrics must
 * print numbers exactly as derper's expvar converter does). */
#include "metrics/internal.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int mbuf_reserve(struct mbuf *b, size_t more)
{
	if (b->oom)
		return -1;
	if (b->len + more + 1 <= b->cap)
		return 0;
	size_t cap = b->cap ? b->cap : 4096;
	while (cap < b->len + more + 1)
		cap *= 2;
	char *p = realloc(b->p, cap);
	if (p == NULL) {
		b->oom = 1;
		return -1;
	}
	b->p = p;
	b->cap = cap;
	return 0;
}

void mbuf_add(struct mbuf *b, const char *s, size_t n)
{
	if (mbuf_reserve(b, n) != 0)
		return;
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
}

void mbuf_puts(struct mbuf *b, const char *s)
{
	mbuf_add(b, s, strlen(s));
}

void mbuf_printf(struct mbuf *b, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	char small[256];
	int n = vsnprintf(small, sizeof small, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n < sizeof small) {
		mbuf_add(b, small, (size_t)n);
		return;
	}
	if (mbuf_reserve(b, (size_t)n) != 0)
		return;
	va_start(ap, fmt);
	vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
	va_end(ap);
	b->len += (size_t)n;
}

void mbuf_free(struct mbuf *b)
{
	free(b->p);
	memset(b, 0, sizeof *b);
}

size_t go_float_format(char *out, size_t n, double v)
{
	if (isnan(v))
		return (size_t)snprintf(out, n, "NaN");
	if (isinf(v))
		return (size_t)snprintf(out, n, v > 0 ? "+Inf" : "-Inf");
	if (v == 0)
		return (size_t)snprintf(out, n, signbit(v) ? "-0" : "0");
	/* Shortest round-tripping digit count, as strconv's shortest mode finds. */
	char e[40];
	int prec;
	for (prec = 1; prec <= 17; prec++) {
		snprintf(e, sizeof e, "%.*e", prec - 1, v);
		if (strtod(e, NULL) == v)
			break;
	}
	if (prec > 17)
		prec = 17;
	snprintf(e, sizeof e, "%.*e", prec - 1, v);
	int exp = atoi(strchr(e, 'e') + 1);
	if (exp < -4 || exp >= 6) /* Go: eprec is 6 for shortest 'g' */
		return (size_t)snprintf(out, n, "%s", e);
	int decimals = prec - 1 - exp;
	if (decimals < 0)
		decimals = 0;
	return (size_t)snprintf(out, n, "%.*f", decimals, v);
}

void mbuf_go_float(struct mbuf *b, double v)
{
	char tmp[48];
	size_t n = go_float_format(tmp, sizeof tmp, v);
	mbuf_add(b, tmp, n < sizeof tmp ? n : sizeof tmp - 1);
}
