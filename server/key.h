/* Curve25519 keys and their text forms (spec PROTOCOL.md §2). */
#ifndef DERPD_KEY_H
#define DERPD_KEY_H
#include <stddef.h>
#include <stdint.h>

#define KEY_LEN 32
#define KEY_HEX_LEN 64

/* Must be called once before any other key_ or crypto function (sodium_init). */
int key_init(void);

/* Fresh clamped private key and its public key. */
void key_generate(uint8_t priv[KEY_LEN]);
void key_public(uint8_t pub[KEY_LEN], const uint8_t priv[KEY_LEN]);

/* Lowercase hex, NUL-terminated: out must hold 65 bytes. */
void key_to_hex(char out[KEY_HEX_LEN + 1], const uint8_t key[KEY_LEN]);

/* Exactly 64 hex digits (either case) -> 0; anything else -> -1. */
int key_from_hex(uint8_t key[KEY_LEN], const char *hex, size_t len);

/* "<prefix>" + 64 hex, e.g. prefix "privkey:" or "nodekey:". 0 on success. */
int key_parse_typed(uint8_t key[KEY_LEN], const char *prefix, const char *s);

/* Mesh key text: surrounding whitespace trimmed, exactly 64 hex digits.
 * 0 on success (all-zero counts as success; callers treat it as "no key"). */
int key_parse_mesh(uint8_t key[KEY_LEN], const char *s, size_t len);

int key_is_zero(const uint8_t key[KEY_LEN]);
/* Constant-time equality. */
int key_equal_ct(const uint8_t a[KEY_LEN], const uint8_t b[KEY_LEN]);

/* Log form: "[" + first 5 chars of std base64 + "]", "" for the zero key. out >= 8 bytes. */
void key_short(char out[8], const uint8_t key[KEY_LEN]);

#endif
