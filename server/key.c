#include "server/key.h"

#include <ctype.h>
#include <sodium.h>
#include <string.h>

int key_init(void)
{
	return sodium_init() < 0 ? -1 : 0;
}

void key_generate(uint8_t priv[KEY_LEN])
{
	randombytes_buf(priv, KEY_LEN);
	priv[0] &= 248;
	priv[31] = (priv[31] & 127) | 64;
}

void key_public(uint8_t pub[KEY_LEN], const uint8_t priv[KEY_LEN])
{
	crypto_scalarmult_base(pub, priv);
}

void key_to_hex(char out[KEY_HEX_LEN + 1], const uint8_t key[KEY_LEN])
{
	sodium_bin2hex(out, KEY_HEX_LEN + 1, key, KEY_LEN);
}

int key_from_hex(uint8_t key[KEY_LEN], const char *hex, size_t len)
{
	size_t got = 0;
	const char *end = NULL;

	if (len != KEY_HEX_LEN)
		return -1;
	for (size_t i = 0; i < len; i++)
		if (!isxdigit((unsigned char)hex[i]))
			return -1;
	if (sodium_hex2bin(key, KEY_LEN, hex, len, NULL, &got, &end) != 0 || got != KEY_LEN)
		return -1;
	return 0;
}

int key_parse_typed(uint8_t key[KEY_LEN], const char *prefix, const char *s)
{
	size_t pl = strlen(prefix);

	if (strncmp(s, prefix, pl) != 0)
		return -1;
	return key_from_hex(key, s + pl, strlen(s + pl));
}

int key_parse_mesh(uint8_t key[KEY_LEN], const char *s, size_t len)
{
	while (len > 0 && isspace((unsigned char)*s)) {
		s++;
		len--;
	}
	while (len > 0 && isspace((unsigned char)s[len - 1]))
		len--;
	return key_from_hex(key, s, len);
}

int key_is_zero(const uint8_t key[KEY_LEN])
{
	return sodium_is_zero(key, KEY_LEN);
}

int key_equal_ct(const uint8_t a[KEY_LEN], const uint8_t b[KEY_LEN])
{
	return sodium_memcmp(a, b, KEY_LEN) == 0;
}

void key_short(char out[8], const uint8_t key[KEY_LEN])
{
	char b64[sodium_base64_ENCODED_LEN(KEY_LEN, sodium_base64_VARIANT_ORIGINAL)];

	if (key_is_zero(key)) {
		out[0] = '\0';
		return;
	}
	sodium_bin2base64(b64, sizeof b64, key, KEY_LEN, sodium_base64_VARIANT_ORIGINAL);
	out[0] = '[';
	memcpy(out + 1, b64, 5);
	out[6] = ']';
	out[7] = '\0';
}
