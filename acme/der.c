/* DER encoding and decoding for the few X.509 structures derpd makes itself: the meta
 * certificate (which must be byte-for-byte what Go's x509.CreateCertificate makes), the
 * self-signed IP certificate, the TLS-ALPN-01 answer certificate (a critical custom
 * extension wolfSSL 5.5's certgen cannot add) and the ACME CSR. wolfSSL does the crypto. */
#include "acme/internal.h"

#include <wolfssl/wolfcrypt/asn_public.h>
#include <wolfssl/wolfcrypt/ed25519.h>
#include <wolfssl/wolfcrypt/sha256.h>
#include <wolfssl/wolfcrypt/wolfmath.h>

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const uint8_t OID_CN[] = { 0x55, 0x04, 0x03 };
static const uint8_t OID_ED25519[] = { 0x2b, 0x65, 0x70 };
static const uint8_t OID_EC_PUBKEY[] = { 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01 };
static const uint8_t OID_P256[] = { 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07 };
static const uint8_t OID_ECDSA_SHA256[] = { 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02 };
static const uint8_t OID_BASIC_CONSTRAINTS[] = { 0x55, 0x1d, 0x13 };
static const uint8_t OID_KEY_USAGE[] = { 0x55, 0x1d, 0x0f };
static const uint8_t OID_EXT_KEY_USAGE[] = { 0x55, 0x1d, 0x25 };
static const uint8_t OID_SERVER_AUTH[] = { 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01 };
static const uint8_t OID_SAN[] = { 0x55, 0x1d, 0x11 };
static const uint8_t OID_AKI[] = { 0x55, 0x1d, 0x23 };
static const uint8_t OID_ACME_ID[] = { 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x01, 0x1f };
static const uint8_t OID_EXT_REQUEST[] = { 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09,
					   0x0e };

/* ---- writer ------------------------------------------------------------------------- */

void der_init(struct der *d)
{
	memset(d, 0, sizeof *d);
}

void der_free(struct der *d)
{
	free(d->buf);
	memset(d, 0, sizeof *d);
}

size_t der_mark(const struct der *d)
{
	return d->len;
}

static int der_reserve(struct der *d, size_t more)
{
	uint8_t *nb;
	size_t cap;

	if (d->err)
		return -1;
	if (d->len + more <= d->cap)
		return 0;
	cap = d->cap ? d->cap * 2 : 256;
	while (cap < d->len + more)
		cap *= 2;
	if ((nb = realloc(d->buf, cap)) == NULL) {
		d->err = 1;
		return -1;
	}
	d->buf = nb;
	d->cap = cap;
	return 0;
}

void der_raw(struct der *d, const void *p, size_t n)
{
	if (n == 0 || der_reserve(d, n) != 0)
		return;
	memcpy(d->buf + d->len, p, n);
	d->len += n;
}

static size_t der_hdr(uint8_t *h, uint8_t tag, size_t n)
{
	size_t k = 0;

	h[k++] = tag;
	if (n < 0x80) {
		h[k++] = (uint8_t)n;
	} else {
		int bytes = n > 0xffffff ? 4 : n > 0xffff ? 3 : n > 0xff ? 2 : 1;
		h[k++] = (uint8_t)(0x80 | bytes);
		for (int i = bytes - 1; i >= 0; i--)
			h[k++] = (uint8_t)(n >> (8 * i));
	}
	return k;
}

void der_wrap(struct der *d, size_t mark, uint8_t tag)
{
	uint8_t h[6];
	size_t n, hl;

	if (d->err)
		return;
	n = d->len - mark;
	hl = der_hdr(h, tag, n);
	if (der_reserve(d, hl) != 0)
		return;
	memmove(d->buf + mark + hl, d->buf + mark, n);
	memcpy(d->buf + mark, h, hl);
	d->len += hl;
}

void der_tlv(struct der *d, uint8_t tag, const void *p, size_t n)
{
	size_t m = der_mark(d);

	der_raw(d, p, n);
	der_wrap(d, m, tag);
}

void der_uint(struct der *d, const uint8_t *be, size_t n)
{
	size_t m = der_mark(d);

	while (n > 1 && be[0] == 0) {
		be++;
		n--;
	}
	if (n == 0 || be[0] & 0x80)
		der_raw(d, "\0", 1);
	der_raw(d, be, n);
	der_wrap(d, m, 0x02);
}

void der_time(struct der *d, time_t t)
{
	struct tm tm;
	char s[32];

	gmtime_r(&t, &tm);
	if (tm.tm_year + 1900 >= 1950 && tm.tm_year + 1900 < 2050) {
		strftime(s, sizeof s, "%y%m%d%H%M%SZ", &tm);
		der_tlv(d, 0x17, s, strlen(s));
	} else {
		strftime(s, sizeof s, "%Y%m%d%H%M%SZ", &tm);
		der_tlv(d, 0x18, s, strlen(s));
	}
}

/* Go's encoding/asn1 picks PrintableString when every byte is in its alphabet. */
static int printable(const char *s)
{
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      strchr(" '()+,-./:=?", c) != NULL))
			return 0;
	}
	return 1;
}

void der_name_cn(struct der *d, const char *cn)
{
	size_t name = der_mark(d), set, atv;

	if (cn != NULL && cn[0] != '\0') {
		set = der_mark(d);
		atv = der_mark(d);
		der_tlv(d, 0x06, OID_CN, sizeof OID_CN);
		der_tlv(d, printable(cn) ? 0x13 : 0x0c, cn, strlen(cn));
		der_wrap(d, atv, 0x30);
		der_wrap(d, set, 0x31);
	}
	der_wrap(d, name, 0x30);
}

static void der_algo(struct der *d, const uint8_t *oid, size_t n)
{
	size_t m = der_mark(d);

	der_tlv(d, 0x06, oid, n);
	der_wrap(d, m, 0x30);
}

/* One Extension: SEQUENCE { OID, [BOOLEAN TRUE], OCTET STRING value }. */
static void der_ext(struct der *d, const uint8_t *oid, size_t oidlen, int critical,
		    const uint8_t *val, size_t vlen)
{
	size_t m = der_mark(d);

	der_tlv(d, 0x06, oid, oidlen);
	if (critical)
		der_tlv(d, 0x01, "\xff", 1);
	der_tlv(d, 0x04, val, vlen);
	der_wrap(d, m, 0x30);
}

/* ---- reader ------------------------------------------------------------------------- */

int der_next(struct der_rd *r, uint8_t *tag, struct der_rd *content)
{
	size_t len, k = 2;

	if (r->n < 2)
		return -1;
	len = r->p[1];
	if (len & 0x80) {
		int bytes = len & 0x7f;
		if (bytes == 0 || bytes > 4 || r->n < 2 + (size_t)bytes)
			return -1;
		len = 0;
		for (int i = 0; i < bytes; i++)
			len = len << 8 | r->p[2 + i];
		k += (size_t)bytes;
	}
	if (len > r->n - k)
		return -1;
	/* Nothing is changed on failure: callers may test *tag after a failed call. */
	*tag = r->p[0];
	content->p = r->p + k;
	content->n = len;
	r->p += k + len;
	r->n -= k + len;
	return 0;
}

static int parse_der_time(uint8_t tag, const struct der_rd *c, time_t *t)
{
	struct tm tm;
	char s[20];
	int y;

	memset(&tm, 0, sizeof tm);
	if ((tag != 0x17 || c->n != 13) && (tag != 0x18 || c->n != 15))
		return -1;
	memcpy(s, c->p, c->n);
	s[c->n] = '\0';
	if (s[c->n - 1] != 'Z')
		return -1;
	if (tag == 0x17) {
		if (sscanf(s, "%2d%2d%2d%2d%2d%2d", &y, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour,
			   &tm.tm_min, &tm.tm_sec) != 6)
			return -1;
		y += y < 50 ? 2000 : 1900;
	} else if (sscanf(s, "%4d%2d%2d%2d%2d%2d", &y, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour,
			  &tm.tm_min, &tm.tm_sec) != 6) {
		return -1;
	}
	tm.tm_year = y - 1900;
	tm.tm_mon -= 1;
	*t = timegm(&tm);
	return 0;
}

/* Walks TBSCertificate for validity, serial, subject CN, key type and the AKI. */
int cert_info_parse(const uint8_t *der, size_t len, struct cert_info *ci)
{
	struct der_rd r = { der, len }, cert, tbs, f, v, a, b;
	uint8_t tag;
	int idx = 0;

	memset(ci, 0, sizeof *ci);
	if (der_next(&r, &tag, &cert) != 0 || tag != 0x30)
		return -1;
	if (der_next(&cert, &tag, &tbs) != 0 || tag != 0x30)
		return -1;
	while (der_next(&tbs, &tag, &f) == 0) {
		if (tag == 0xa0)
			continue; /* version */
		switch (idx++) {
		case 0: /* serial */
			if (tag != 0x02 || f.n == 0 || f.n > sizeof ci->serial)
				return -1;
			memcpy(ci->serial, f.p, f.n);
			ci->serial_len = f.n;
			break;
		case 3: /* validity */
			if (tag != 0x30 || der_next(&f, &tag, &v) != 0 ||
			    parse_der_time(tag, &v, &ci->not_before) != 0 ||
			    der_next(&f, &tag, &v) != 0 ||
			    parse_der_time(tag, &v, &ci->not_after) != 0)
				return -1;
			break;
		case 4: /* subject: the first CN */
			while (der_next(&f, &tag, &v) == 0) {
				if (der_next(&v, &tag, &a) != 0 || der_next(&a, &tag, &b) != 0)
					continue;
				if (tag == 0x06 && b.n == 3 && memcmp(b.p, OID_CN, 3) == 0 &&
				    der_next(&a, &tag, &b) == 0 && b.n < sizeof ci->cn &&
				    ci->cn[0] == '\0') {
					memcpy(ci->cn, b.p, b.n);
					ci->cn[b.n] = '\0';
				}
			}
			break;
		case 5: /* subjectPublicKeyInfo */
			if (der_next(&f, &tag, &v) == 0 && der_next(&v, &tag, &a) == 0 &&
			    a.n == 3 && memcmp(a.p, OID_ED25519, 3) == 0)
				ci->is_ed25519 = 1;
			break;
		default:
			if (tag != 0xa3 || der_next(&f, &tag, &v) != 0)
				break;
			while (der_next(&v, &tag, &a) == 0) { /* each Extension */
				struct der_rd oid, val, ki, kc;
				if (der_next(&a, &tag, &oid) != 0 || tag != 0x06)
					continue;
				if (oid.n != 3 || memcmp(oid.p, OID_AKI, 3) != 0)
					continue;
				int found = 0;
				while (!found && der_next(&a, &tag, &val) == 0)
					found = tag == 0x04;
				if (!found || der_next(&val, &tag, &ki) != 0 || tag != 0x30)
					continue;
				while (der_next(&ki, &tag, &kc) == 0) {
					if (tag == 0x80 && kc.n <= sizeof ci->aki) {
						memcpy(ci->aki, kc.p, kc.n);
						ci->aki_len = kc.n;
					}
				}
			}
		}
	}
	return idx >= 6 ? 0 : -1;
}

/* ---- PEM ---------------------------------------------------------------------------- */

char *pem_encode(const char *type, const uint8_t *der, size_t len)
{
	size_t b64len = sodium_base64_encoded_len(len, sodium_base64_VARIANT_ORIGINAL);
	size_t cap = b64len + b64len / 64 + 2 * strlen(type) + 64, n;
	char *b64 = malloc(b64len), *out = malloc(cap);

	if (b64 == NULL || out == NULL) {
		free(b64);
		free(out);
		return NULL;
	}
	sodium_bin2base64(b64, b64len, der, len, sodium_base64_VARIANT_ORIGINAL);
	n = (size_t)snprintf(out, cap, "-----BEGIN %s-----\n", type);
	for (size_t i = 0, l = strlen(b64); i < l; i += 64)
		n += (size_t)snprintf(out + n, cap - n, "%.64s\n", b64 + i);
	snprintf(out + n, cap - n, "-----END %s-----\n", type);
	free(b64);
	return out;
}

/* Next PEM block of any type at or after *pos; DER malloc'd, type copied. */
static uint8_t *pem_next(const char *pem, size_t len, size_t *pos, char *type, size_t tlen,
			 size_t *derlen)
{
	const char *end = pem + len, *b, *e, *te, *body, *stop;
	uint8_t *der;
	size_t cap;

	while (*pos < len) {
		b = memmem(pem + *pos, len - *pos, "-----BEGIN ", 11);
		if (b == NULL)
			return NULL;
		te = memmem(b + 11, (size_t)(end - b - 11), "-----", 5);
		if (te == NULL || (size_t)(te - b - 11) >= tlen)
			return NULL;
		memcpy(type, b + 11, (size_t)(te - b - 11));
		type[te - b - 11] = '\0';
		body = te + 5;
		e = memmem(body, (size_t)(end - body), "-----END ", 9);
		if (e == NULL)
			return NULL;
		stop = memmem(e + 9, (size_t)(end - e - 9), "-----", 5);
		*pos = stop ? (size_t)(stop + 5 - pem) : len;
		cap = (size_t)(e - body);
		if ((der = malloc(cap + 1)) == NULL)
			return NULL;
		if (sodium_base642bin(der, cap + 1, body, (size_t)(e - body), " \t\r\n", derlen,
				      NULL, sodium_base64_VARIANT_ORIGINAL) == 0)
			return der;
		free(der);
	}
	return NULL;
}

size_t pem_certs(const char *pem, size_t len, uint8_t ***ders, size_t **lens)
{
	size_t pos = 0, n = 0, dl;
	char type[64];
	uint8_t *d, **dv = NULL;
	size_t *lv = NULL;

	while ((d = pem_next(pem, len, &pos, type, sizeof type, &dl)) != NULL) {
		uint8_t **ndv;
		size_t *nlv;
		if (strcmp(type, "CERTIFICATE") != 0) {
			free(d);
			continue;
		}
		ndv = realloc(dv, (n + 1) * sizeof *dv);
		nlv = ndv ? realloc(lv, (n + 1) * sizeof *lv) : NULL;
		if (ndv) dv = ndv;
		if (nlv) lv = nlv;
		if (ndv == NULL || nlv == NULL) {
			free(d);
			break;
		}
		dv[n] = d;
		lv[n++] = dl;
	}
	*ders = dv;
	*lens = lv;
	return n;
}

/* ---- keys --------------------------------------------------------------------------- */

int eckey_generate(ecc_key *k)
{
	WC_RNG rng;
	int rc;

	if (wc_InitRng(&rng) != 0)
		return -1;
	rc = wc_ecc_init(k) == 0 && wc_ecc_make_key_ex(&rng, 32, k, ECC_SECP256R1) == 0 ? 0 : -1;
	wc_FreeRng(&rng);
	return rc;
}

char *eckey_to_pem(ecc_key *k)
{
	uint8_t der[256];
	int n = wc_EccKeyToDer(k, der, sizeof der);

	return n > 0 ? pem_encode("EC PRIVATE KEY", der, (size_t)n) : NULL;
}

int eckey_from_pem(ecc_key *k, const char *pem, size_t len)
{
	size_t pos = 0, dl;
	char type[64];
	uint8_t *der;
	word32 idx = 0;
	int rc = -1;

	while ((der = pem_next(pem, len, &pos, type, sizeof type, &dl)) != NULL) {
		if (strcmp(type, "EC PRIVATE KEY") == 0 || strcmp(type, "PRIVATE KEY") == 0)
			break;
		free(der);
	}
	if (der == NULL)
		return -1;
	if (strcmp(type, "PRIVATE KEY") == 0) {
		/* it returns the inner key's length and moves idx to its start */
		if (wc_GetPkcs8TraditionalOffset(der, &idx, (word32)dl) < 0)
			goto out;
	}
	/* wolfSSL takes a private scalar of any length, and exporting one over 256 bits
	 * writes past its buffer: refuse it, and one that does not match its public key. */
	if (wc_ecc_init(k) == 0 && wc_EccPrivateKeyDecode(der, &idx, k, (word32)dl) == 0 &&
	    wc_ecc_get_curve_id(k->idx) == ECC_SECP256R1 && mp_count_bits(&k->k) > 0 &&
	    mp_count_bits(&k->k) <= 256 && (k->type != ECC_PRIVATEKEY || wc_ecc_check_key(k) == 0))
		rc = 0;
out:
	sodium_memzero(der, dl);
	free(der);
	return rc;
}

int eckey_sign_der(ecc_key *k, const uint8_t *msg, size_t n, uint8_t *sig, size_t *siglen)
{
	uint8_t hash[WC_SHA256_DIGEST_SIZE];
	word32 sl = (word32)*siglen;
	WC_RNG rng;
	int rc;

	if (wc_Sha256Hash(msg, (word32)n, hash) != 0 || wc_InitRng(&rng) != 0)
		return -1;
	rc = wc_ecc_sign_hash(hash, sizeof hash, sig, &sl, &rng, k) == 0 ? 0 : -1;
	wc_FreeRng(&rng);
	*siglen = sl;
	return rc;
}

int eckey_sign_raw(ecc_key *k, const uint8_t *msg, size_t n, uint8_t out[64])
{
	uint8_t sig[80], r[33], s[33];
	size_t sl = sizeof sig;
	word32 rl = sizeof r, sll = sizeof s;

	if (eckey_sign_der(k, msg, n, sig, &sl) != 0 ||
	    wc_ecc_sig_to_rs(sig, (word32)sl, r, &rl, s, &sll) != 0 || rl > 32 || sll > 32)
		return -1;
	memset(out, 0, 64);
	memcpy(out + 32 - rl, r, rl);
	memcpy(out + 64 - sll, s, sll);
	return 0;
}

int eckey_xy(ecc_key *k, uint8_t x[32], uint8_t y[32])
{
	word32 xl = 32, yl = 32;
	uint8_t tx[32], ty[32];

	if (wc_ecc_export_public_raw(k, tx, &xl, ty, &yl) != 0)
		return -1;
	memset(x, 0, 32);
	memset(y, 0, 32);
	memcpy(x + 32 - xl, tx, xl);
	memcpy(y + 32 - yl, ty, yl);
	return 0;
}

static void der_ec_spki(struct der *d, ecc_key *k)
{
	uint8_t pt[65];
	size_t m = der_mark(d), a;

	pt[0] = 4;
	if (eckey_xy(k, pt + 1, pt + 33) != 0)
		d->err = 1;
	a = der_mark(d);
	der_tlv(d, 0x06, OID_EC_PUBKEY, sizeof OID_EC_PUBKEY);
	der_tlv(d, 0x06, OID_P256, sizeof OID_P256);
	der_wrap(d, a, 0x30);
	a = der_mark(d);
	der_raw(d, "\0", 1);
	der_raw(d, pt, sizeof pt);
	der_wrap(d, a, 0x03);
	der_wrap(d, m, 0x30);
}

/* Wraps d (a TBS) as SEQUENCE { tbs, ecdsa-with-SHA256, BIT STRING sig }. */
static int der_sign_ec(struct der *d, ecc_key *k, uint8_t **out, size_t *outlen)
{
	uint8_t sig[80];
	size_t sl = sizeof sig, m;

	if (d->err || eckey_sign_der(k, d->buf, d->len, sig, &sl) != 0)
		return -1;
	der_algo(d, OID_ECDSA_SHA256, sizeof OID_ECDSA_SHA256);
	m = der_mark(d);
	der_raw(d, "\0", 1);
	der_raw(d, sig, sl);
	der_wrap(d, m, 0x03);
	der_wrap(d, 0, 0x30);
	if (d->err)
		return -1;
	*out = d->buf;
	*outlen = d->len;
	d->buf = NULL;
	return 0;
}

/* ---- certificates ------------------------------------------------------------------- */

int cert_build_meta(const uint8_t server_pub[32], time_t now, const uint8_t *seed,
		    uint8_t **der, size_t *len)
{
	static const char hex[] = "0123456789abcdef";
	static const uint8_t serial = 2; /* DERP protocol version */
	uint8_t sd[32], pub[32], sig[64];
	word32 publen = sizeof pub, siglen = sizeof sig;
	char cn[8 + 64] = "derpkey";
	ed25519_key key;
	struct der d;
	size_t m;
	int rc = -1;

	for (int i = 0; i < 32; i++) {
		cn[7 + 2 * i] = hex[server_pub[i] >> 4];
		cn[8 + 2 * i] = hex[server_pub[i] & 15];
	}
	cn[71] = '\0';
	if (seed)
		memcpy(sd, seed, 32);
	else
		randombytes_buf(sd, sizeof sd);
	if (wc_ed25519_init(&key) != 0)
		return -1;
	if (wc_ed25519_import_private_only(sd, 32, &key) != 0 ||
	    wc_ed25519_make_public(&key, pub, publen) != 0 ||
	    wc_ed25519_import_private_key(sd, 32, pub, publen, &key) != 0)
		goto out;

	der_init(&d);
	der_tlv(&d, 0xa0, "\x02\x01\x02", 3); /* version v3 */
	der_uint(&d, &serial, 1);
	der_algo(&d, OID_ED25519, sizeof OID_ED25519);
	der_name_cn(&d, cn);
	m = der_mark(&d);
	der_time(&d, now - 30 * 86400);
	der_time(&d, now + 30 * 86400);
	der_wrap(&d, m, 0x30);
	der_name_cn(&d, cn);
	m = der_mark(&d);
	der_algo(&d, OID_ED25519, sizeof OID_ED25519);
	{
		size_t b = der_mark(&d); /* BIT STRING: no unused bits, then the key */
		der_raw(&d, "\0", 1);
		der_raw(&d, pub, 32);
		der_wrap(&d, b, 0x03);
	}
	der_wrap(&d, m, 0x30);
	/* extensions: only basicConstraints, critical, cA absent (Go's encoding) */
	m = der_mark(&d);
	{
		size_t s = der_mark(&d);
		der_ext(&d, OID_BASIC_CONSTRAINTS, sizeof OID_BASIC_CONSTRAINTS, 1,
			(const uint8_t *)"\x30\x00", 2);
		der_wrap(&d, s, 0x30);
	}
	der_wrap(&d, m, 0xa3);
	der_wrap(&d, 0, 0x30);
	if (d.err || wc_ed25519_sign_msg(d.buf, (word32)d.len, sig, &siglen, &key) != 0) {
		der_free(&d);
		goto out;
	}
	der_algo(&d, OID_ED25519, sizeof OID_ED25519);
	m = der_mark(&d);
	der_raw(&d, "\0", 1);
	der_raw(&d, sig, siglen);
	der_wrap(&d, m, 0x03);
	der_wrap(&d, 0, 0x30);
	if (d.err) {
		der_free(&d);
		goto out;
	}
	*der = d.buf;
	*len = d.len;
	rc = 0;
out:
	wc_ed25519_free(&key);
	sodium_memzero(sd, sizeof sd);
	return rc;
}

static void der_san(struct der *d, const char *dns, const uint8_t *ip, size_t iplen)
{
	struct der v;

	der_init(&v);
	if (dns)
		der_tlv(&v, 0x82, dns, strlen(dns));
	else
		der_tlv(&v, 0x87, ip, iplen);
	der_wrap(&v, 0, 0x30);
	der_ext(d, OID_SAN, sizeof OID_SAN, 0, v.buf, v.len);
	if (v.err)
		d->err = 1;
	der_free(&v);
}

int cert_build_selfsigned(ecc_key *k, const char *cn, const char *dns, const uint8_t *ip,
			  size_t iplen, time_t not_before, time_t not_after,
			  const uint8_t *acme_hash, uint8_t **out, size_t *outlen)
{
	struct cert_tmpl t = { cn, cn, dns, ip, iplen, not_before, not_after, 0, acme_hash };

	return cert_build(k, k, &t, out, outlen);
}

int cert_build(ecc_key *k, ecc_key *issuer, const struct cert_tmpl *t, uint8_t **out,
	       size_t *outlen)
{
	uint8_t serial[16];
	struct der d;
	size_t m, e;
	int rc;

	randombytes_buf(serial, sizeof serial);
	serial[0] &= 0x7f; /* Go: a random number below 2^128, positive */
	der_init(&d);
	der_tlv(&d, 0xa0, "\x02\x01\x02", 3);
	der_uint(&d, serial, sizeof serial);
	der_algo(&d, OID_ECDSA_SHA256, sizeof OID_ECDSA_SHA256);
	der_name_cn(&d, t->issuer_cn);
	m = der_mark(&d);
	der_time(&d, t->not_before);
	der_time(&d, t->not_after);
	der_wrap(&d, m, 0x30);
	der_name_cn(&d, t->cn);
	der_ec_spki(&d, k);
	m = der_mark(&d);
	e = der_mark(&d);
	if (t->is_ca) {
		/* keyCertSign|cRLSign; cA TRUE */
		der_ext(&d, OID_KEY_USAGE, sizeof OID_KEY_USAGE, 1,
			(const uint8_t *)"\x03\x02\x01\x06", 4);
		der_ext(&d, OID_BASIC_CONSTRAINTS, sizeof OID_BASIC_CONSTRAINTS, 1,
			(const uint8_t *)"\x30\x03\x01\x01\xff", 5);
	} else {
		/* digitalSignature|keyEncipherment, critical (Go's order of extensions) */
		der_ext(&d, OID_KEY_USAGE, sizeof OID_KEY_USAGE, 1,
			(const uint8_t *)"\x03\x02\x05\xa0", 4);
		struct der v;
		der_init(&v);
		der_tlv(&v, 0x06, OID_SERVER_AUTH, sizeof OID_SERVER_AUTH);
		der_wrap(&v, 0, 0x30);
		der_ext(&d, OID_EXT_KEY_USAGE, sizeof OID_EXT_KEY_USAGE, 0, v.buf, v.len);
		der_free(&v);
		der_ext(&d, OID_BASIC_CONSTRAINTS, sizeof OID_BASIC_CONSTRAINTS, 1,
			(const uint8_t *)"\x30\x00", 2);
	}
	if (t->dns || t->ip)
		der_san(&d, t->dns, t->ip, t->iplen);
	if (t->acme_hash) {
		uint8_t v[34] = { 0x04, 0x20 };
		memcpy(v + 2, t->acme_hash, 32);
		der_ext(&d, OID_ACME_ID, sizeof OID_ACME_ID, 1, v, sizeof v);
	}
	der_wrap(&d, e, 0x30);
	der_wrap(&d, m, 0xa3);
	der_wrap(&d, 0, 0x30);
	rc = der_sign_ec(&d, issuer, out, outlen);
	der_free(&d);
	return rc;
}

int csr_build(ecc_key *k, const char *dns, const uint8_t *ip, size_t iplen, uint8_t **out,
	      size_t *outlen)
{
	struct der d;
	size_t m, s;
	int rc;

	der_init(&d);
	der_uint(&d, (const uint8_t *)"\0", 1); /* version 0 */
	der_name_cn(&d, dns); /* an IP request has an empty subject */
	der_ec_spki(&d, k);
	m = der_mark(&d);
	s = der_mark(&d);
	der_tlv(&d, 0x06, OID_EXT_REQUEST, sizeof OID_EXT_REQUEST);
	{
		size_t set = der_mark(&d), exts = der_mark(&d);
		der_san(&d, dns, ip, iplen);
		der_wrap(&d, exts, 0x30);
		der_wrap(&d, set, 0x31);
	}
	der_wrap(&d, s, 0x30);
	der_wrap(&d, m, 0xa0);
	der_wrap(&d, 0, 0x30);
	rc = der_sign_ec(&d, k, out, outlen);
	der_free(&d);
	return rc;
}

/* ---- base64url ---------------------------------------------------------------------- */

char *b64url(const uint8_t *p, size_t n)
{
	size_t cap = sodium_base64_encoded_len(n, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
	char *s = malloc(cap);

	if (s)
		sodium_bin2base64(s, cap, p, n, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
	return s;
}

int eab_key_decode(const char *s, uint8_t *out, size_t cap, size_t *outlen)
{
	const char *end = NULL;
	size_t n = strlen(s);

	if (sodium_base642bin(out, cap, s, n, NULL, outlen, &end,
			      sodium_base64_VARIANT_URLSAFE_NO_PADDING) == 0 && end == s + n)
		return 0;
	if (sodium_base642bin(out, cap, s, n, NULL, outlen, &end,
			      sodium_base64_VARIANT_ORIGINAL) == 0 && end == s + n)
		return 0;
	return -1;
}
