/* STUN codec: byte-for-byte upstream's acceptance rules (net/stun), no I/O. */
#include "stun/stun.h"

#include <netinet/in.h>
#include <string.h>

#define ATTR_MAPPED_ADDRESS     0x0001
#define ATTR_XOR_MAPPED_ADDRESS 0x0020
#define ATTR_XOR_MAPPED_ALT     0x8020 /* off-spec but seen from real servers */
#define ATTR_SOFTWARE           0x8022
#define ATTR_FINGERPRINT        0x8028
#define FINGERPRINT_XOR         0x5354554eu
#define FINGERPRINT_ATTR_LEN    8

static const uint8_t magic_cookie[4] = { 0x21, 0x12, 0xa4, 0x42 };
static const char software[8] = { 't', 'a', 'i', 'l', 'n', 'o', 'd', 'e' };

/* CRC-32/IEEE (reflected, poly 0xedb88320); a constant table needs no init race. */
static const uint32_t crc_table[256] = {
	0x00000000, 0x77073096, 0xee0e612c, 0x990951ba, 0x076dc419, 0x706af48f,
	0xe963a535, 0x9e6495a3, 0x0edb8832, 0x79dcb8a4, 0xe0d5e91e, 0x97d2d988,
	0x09b64c2b, 0x7eb17cbd, 0xe7b82d07, 0x90bf1d91, 0x1db71064, 0x6ab020f2,
	0xf3b97148, 0x84be41de, 0x1adad47d, 0x6ddde4eb, 0xf4d4b551, 0x83d385c7,
	0x136c9856, 0x646ba8c0, 0xfd62f97a, 0x8a65c9ec, 0x14015c4f, 0x63066cd9,
	0xfa0f3d63, 0x8d080df5, 0x3b6e20c8, 0x4c69105e, 0xd56041e4, 0xa2677172,
	0x3c03e4d1, 0x4b04d447, 0xd20d85fd, 0xa50ab56b, 0x35b5a8fa, 0x42b2986c,
	0xdbbbc9d6, 0xacbcf940, 0x32d86ce3, 0x45df5c75, 0xdcd60dcf, 0xabd13d59,
	0x26d930ac, 0x51de003a, 0xc8d75180, 0xbfd06116, 0x21b4f4b5, 0x56b3c423,
	0xcfba9599, 0xb8bda50f, 0x2802b89e, 0x5f058808, 0xc60cd9b2, 0xb10be924,
	0x2f6f7c87, 0x58684c11, 0xc1611dab, 0xb6662d3d, 0x76dc4190, 0x01db7106,
	0x98d220bc, 0xefd5102a, 0x71b18589, 0x06b6b51f, 0x9fbfe4a5, 0xe8b8d433,
	0x7807c9a2, 0x0f00f934, 0x9609a88e, 0xe10e9818, 0x7f6a0dbb, 0x086d3d2d,
	0x91646c97, 0xe6635c01, 0x6b6b51f4, 0x1c6c6162, 0x856530d8, 0xf262004e,
	0x6c0695ed, 0x1b01a57b, 0x8208f4c1, 0xf50fc457, 0x65b0d9c6, 0x12b7e950,
	0x8bbeb8ea, 0xfcb9887c, 0x62dd1ddf, 0x15da2d49, 0x8cd37cf3, 0xfbd44c65,
	0x4db26158, 0x3ab551ce, 0xa3bc0074, 0xd4bb30e2, 0x4adfa541, 0x3dd895d7,
	0xa4d1c46d, 0xd3d6f4fb, 0x4369e96a, 0x346ed9fc, 0xad678846, 0xda60b8d0,
	0x44042d73, 0x33031de5, 0xaa0a4c5f, 0xdd0d7cc9, 0x5005713c, 0x270241aa,
	0xbe0b1010, 0xc90c2086, 0x5768b525, 0x206f85b3, 0xb966d409, 0xce61e49f,
	0x5edef90e, 0x29d9c998, 0xb0d09822, 0xc7d7a8b4, 0x59b33d17, 0x2eb40d81,
	0xb7bd5c3b, 0xc0ba6cad, 0xedb88320, 0x9abfb3b6, 0x03b6e20c, 0x74b1d29a,
	0xead54739, 0x9dd277af, 0x04db2615, 0x73dc1683, 0xe3630b12, 0x94643b84,
	0x0d6d6a3e, 0x7a6a5aa8, 0xe40ecf0b, 0x9309ff9d, 0x0a00ae27, 0x7d079eb1,
	0xf00f9344, 0x8708a3d2, 0x1e01f268, 0x6906c2fe, 0xf762575d, 0x806567cb,
	0x196c3671, 0x6e6b06e7, 0xfed41b76, 0x89d32be0, 0x10da7a5a, 0x67dd4acc,
	0xf9b9df6f, 0x8ebeeff9, 0x17b7be43, 0x60b08ed5, 0xd6d6a3e8, 0xa1d1937e,
	0x38d8c2c4, 0x4fdff252, 0xd1bb67f1, 0xa6bc5767, 0x3fb506dd, 0x48b2364b,
	0xd80d2bda, 0xaf0a1b4c, 0x36034af6, 0x41047a60, 0xdf60efc3, 0xa867df55,
	0x316e8eef, 0x4669be79, 0xcb61b38c, 0xbc66831a, 0x256fd2a0, 0x5268e236,
	0xcc0c7795, 0xbb0b4703, 0x220216b9, 0x5505262f, 0xc5ba3bbe, 0xb2bd0b28,
	0x2bb45a92, 0x5cb36a04, 0xc2d7ffa7, 0xb5d0cf31, 0x2cd99e8b, 0x5bdeae1d,
	0x9b64c2b0, 0xec63f226, 0x756aa39c, 0x026d930a, 0x9c0906a9, 0xeb0e363f,
	0x72076785, 0x05005713, 0x95bf4a82, 0xe2b87a14, 0x7bb12bae, 0x0cb61b38,
	0x92d28e9b, 0xe5d5be0d, 0x7cdcefb7, 0x0bdbdf21, 0x86d3d2d4, 0xf1d4e242,
	0x68ddb3f8, 0x1fda836e, 0x81be16cd, 0xf6b9265b, 0x6fb077e1, 0x18b74777,
	0x88085ae6, 0xff0f6a70, 0x66063bca, 0x11010b5c, 0x8f659eff, 0xf862ae69,
	0x616bffd3, 0x166ccf45, 0xa00ae278, 0xd70dd2ee, 0x4e048354, 0x3903b3c2,
	0xa7672661, 0xd06016f7, 0x4969474d, 0x3e6e77db, 0xaed16a4a, 0xd9d65adc,
	0x40df0b66, 0x37d83bf0, 0xa9bcae53, 0xdebb9ec5, 0x47b2cf7f, 0x30b5ffe9,
	0xbdbdf21c, 0xcabac28a, 0x53b39330, 0x24b4a3a6, 0xbad03605, 0xcdd70693,
	0x54de5729, 0x23d967bf, 0xb3667a2e, 0xc4614ab8, 0x5d681b02, 0x2a6f2b94,
	0xb40bbe37, 0xc30c8ea1, 0x5a05df1b, 0x2d02ef8d,
};

static uint32_t crc32_ieee(const uint8_t *b, size_t n)
{
	uint32_t c = 0xffffffffu;

	for (size_t i = 0; i < n; i++)
		c = crc_table[(c ^ b[i]) & 0xff] ^ (c >> 8);
	return c ^ 0xffffffffu;
}

static uint32_t fingerprint(const uint8_t *b, size_t n)
{
	return crc32_ieee(b, n) ^ FINGERPRINT_XOR;
}

static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }

static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint8_t *put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
	return p + 2;
}

static uint8_t *put32(uint8_t *p, uint32_t v)
{
	put16(p, (uint16_t)(v >> 16));
	return put16(p + 2, (uint16_t)v);
}

bool stun_is(const uint8_t *b, size_t n)
{
	return n >= STUN_HEADER_LEN && (b[0] & 0xc0) == 0 && memcmp(b + 4, magic_cookie, 4) == 0;
}

/* One attribute walk for both parsers: every attribute is type, length, value padded to 4;
 * an attribute (with its padding) running past the end makes the whole message malformed. */
typedef int (*attr_fn)(void *ctx, uint16_t type, const uint8_t *val, size_t len);

static int attrs_walk(const uint8_t *b, size_t n, attr_fn fn, void *ctx)
{
	while (n > 0) {
		if (n < 4)
			return STUN_ERR_MALFORMED_ATTRS;
		uint16_t type = get16(b);
		size_t len = get16(b + 2);
		size_t padded = (len + 3) & ~(size_t)3;
		b += 4;
		n -= 4;
		if (padded > n)
			return STUN_ERR_MALFORMED_ATTRS;
		int r = fn(ctx, type, b, len);
		if (r != STUN_OK)
			return r;
		b += padded;
		n -= padded;
	}
	return STUN_OK;
}

struct req_walk {
	bool software_ok;
	uint16_t last_type;
	uint32_t got_fp; /* from the last 4-byte FINGERPRINT, 0 if none (as upstream) */
};

static int req_attr(void *ctx, uint16_t type, const uint8_t *val, size_t len)
{
	struct req_walk *w = ctx;

	w->last_type = type;
	if (type == ATTR_SOFTWARE && len == sizeof software && memcmp(val, software, len) == 0)
		w->software_ok = true;
	if (type == ATTR_FINGERPRINT && len == 4)
		w->got_fp = get32(val);
	return STUN_OK;
}

int stun_parse_binding_request(const uint8_t *b, size_t n, uint8_t txid[STUN_TXID_LEN])
{
	struct req_walk w = { 0 };

	if (!stun_is(b, n))
		return STUN_ERR_NOT_STUN;
	if (b[0] != 0x00 || b[1] != 0x01)
		return STUN_ERR_NOT_BINDING_REQUEST;
	/* Upstream walks to the end of the datagram; the header's length field is not read. */
	int r = attrs_walk(b + STUN_HEADER_LEN, n - STUN_HEADER_LEN, req_attr, &w);
	if (r != STUN_OK)
		return r;
	if (!w.software_ok)
		return STUN_ERR_WRONG_SOFTWARE;
	if (w.last_type != ATTR_FINGERPRINT)
		return STUN_ERR_NO_FINGERPRINT;
	/* SOFTWARE (12) + a last attribute (>= 4) guarantee n >= 36; the check is for safety. */
	if (n < STUN_HEADER_LEN + FINGERPRINT_ATTR_LEN ||
	    w.got_fp != fingerprint(b, n - FINGERPRINT_ATTR_LEN))
		return STUN_ERR_WRONG_FINGERPRINT;
	memcpy(txid, b + 8, STUN_TXID_LEN);
	return STUN_OK;
}

size_t stun_build_request(const uint8_t txid[STUN_TXID_LEN], uint8_t out[STUN_REQUEST_LEN])
{
	uint8_t *p = out;

	p = put16(p, 0x0001);
	p = put16(p, STUN_REQUEST_LEN - STUN_HEADER_LEN);
	memcpy(p, magic_cookie, 4);
	memcpy(p + 4, txid, STUN_TXID_LEN);
	p += 4 + STUN_TXID_LEN;
	/* SOFTWARE first: the XDP fast path reads it at offset 20. */
	p = put16(p, ATTR_SOFTWARE);
	p = put16(p, sizeof software);
	memcpy(p, software, sizeof software);
	p += sizeof software;
	uint32_t fp = fingerprint(out, (size_t)(p - out));
	p = put16(p, ATTR_FINGERPRINT);
	p = put16(p, 4);
	p = put32(p, fp);
	return (size_t)(p - out);
}

size_t stun_build_response(const uint8_t txid[STUN_TXID_LEN], const struct sockaddr *src,
			   uint8_t out[STUN_RESPONSE_MAX])
{
	const uint8_t *ip;
	size_t iplen;
	uint16_t port;
	uint8_t fam;

	if (src->sa_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)src;
		ip = (const uint8_t *)&sin->sin_addr;
		iplen = 4;
		port = ntohs(sin->sin_port);
		fam = 0x01;
	} else if (src->sa_family == AF_INET6) {
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)src;
		ip = sin6->sin6_addr.s6_addr;
		iplen = 16;
		port = ntohs(sin6->sin6_port);
		fam = 0x02;
		/* A dual-stack socket shows IPv4 clients as ::ffff:a.b.c.d; answer them as IPv4. */
		if (IN6_IS_ADDR_V4MAPPED(&sin6->sin6_addr)) {
			ip += 12;
			iplen = 4;
			fam = 0x01;
		}
	} else {
		return 0;
	}

	uint8_t *p = out;
	p = put16(p, 0x0101);
	p = put16(p, (uint16_t)(4 + 4 + iplen));
	memcpy(p, magic_cookie, 4);
	memcpy(p + 4, txid, STUN_TXID_LEN);
	p += 4 + STUN_TXID_LEN;
	p = put16(p, ATTR_XOR_MAPPED_ADDRESS);
	p = put16(p, (uint16_t)(4 + iplen));
	*p++ = 0;
	*p++ = fam;
	p = put16(p, port ^ 0x2112);
	for (size_t i = 0; i < iplen; i++)
		*p++ = ip[i] ^ (i < 4 ? magic_cookie[i] : txid[i - 4]);
	return (size_t)(p - out);
}

struct resp_walk {
	const uint8_t *txid;
	struct sockaddr_storage xor_addr, mapped_addr;
	bool have_xor, have_mapped;
};

/* Address attribute value: reserved, family, port, address (4 or 16 bytes, maybe more). */
static int addr_attr(const uint8_t *val, size_t len, const uint8_t *txid, bool xored,
		     struct sockaddr_storage *out)
{
	uint8_t ip[16];
	size_t iplen;

	if (len < 4)
		return STUN_ERR_MALFORMED_ATTRS;
	if (val[1] == 0x01)
		iplen = 4;
	else if (val[1] == 0x02)
		iplen = 16;
	else
		return STUN_ERR_MALFORMED_ATTRS;
	if (len - 4 < iplen)
		return STUN_ERR_MALFORMED_ATTRS;
	uint16_t port = get16(val + 2);
	memcpy(ip, val + 4, iplen);
	if (xored) {
		port ^= 0x2112;
		for (size_t i = 0; i < iplen; i++)
			ip[i] ^= i < 4 ? magic_cookie[i] : txid[i - 4];
	}
	memset(out, 0, sizeof *out);
	if (iplen == 16 && !IN6_IS_ADDR_V4MAPPED((const struct in6_addr *)ip)) {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)out;
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons(port);
		memcpy(&sin6->sin6_addr, ip, 16);
	} else {
		struct sockaddr_in *sin = (struct sockaddr_in *)out;
		sin->sin_family = AF_INET;
		sin->sin_port = htons(port);
		memcpy(&sin->sin_addr, ip + iplen - 4, 4);
	}
	return STUN_OK;
}

static int resp_attr(void *ctx, uint16_t type, const uint8_t *val, size_t len)
{
	struct resp_walk *w = ctx;
	int r = STUN_OK;

	switch (type) {
	case ATTR_XOR_MAPPED_ADDRESS:
	case ATTR_XOR_MAPPED_ALT:
		r = addr_attr(val, len, w->txid, true, &w->xor_addr);
		w->have_xor |= r == STUN_OK;
		break;
	case ATTR_MAPPED_ADDRESS:
		r = addr_attr(val, len, w->txid, false, &w->mapped_addr);
		w->have_mapped |= r == STUN_OK;
		break;
	}
	return r;
}

int stun_parse_response(const uint8_t *b, size_t n, uint8_t txid[STUN_TXID_LEN],
			struct sockaddr_storage *addr)
{
	if (!stun_is(b, n))
		return STUN_ERR_NOT_STUN;
	memcpy(txid, b + 8, STUN_TXID_LEN);
	if (b[0] != 0x01 || b[1] != 0x01)
		return STUN_ERR_NOT_SUCCESS_RESPONSE;
	/* Unlike requests, responses honour the length field: bytes after it are ignored. */
	size_t attrs_len = get16(b + 2);
	if (attrs_len > n - STUN_HEADER_LEN)
		return STUN_ERR_MALFORMED_ATTRS;

	struct resp_walk w = { .txid = txid };
	int r = attrs_walk(b + STUN_HEADER_LEN, attrs_len, resp_attr, &w);
	if (r != STUN_OK)
		return r;
	if (w.have_xor)
		*addr = w.xor_addr;
	else if (w.have_mapped)
		*addr = w.mapped_addr;
	else
		return STUN_ERR_MALFORMED_ATTRS;
	return STUN_OK;
}

const char *stun_strerror(int result)
{
	switch (result) {
	case STUN_OK: return "ok";
	case STUN_ERR_NOT_STUN: return "not a STUN packet";
	case STUN_ERR_NOT_BINDING_REQUEST: return "not a binding request";
	case STUN_ERR_MALFORMED_ATTRS: return "malformed attributes";
	case STUN_ERR_WRONG_SOFTWARE: return "not from Tailscale software";
	case STUN_ERR_NO_FINGERPRINT: return "does not end in a fingerprint";
	case STUN_ERR_WRONG_FINGERPRINT: return "bogus fingerprint";
	case STUN_ERR_NOT_SUCCESS_RESPONSE: return "not a success response";
	}
	return "unknown STUN error";
}
