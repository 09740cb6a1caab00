/* derper's key file (-c, spec SERVER.md §3): JSON {"PrivateKey": "privkey:<64 hex>"}. */
#ifndef DERPD_KEYFILE_H
#define DERPD_KEYFILE_H
#include <stddef.h>
#include <stdint.h>

/* Read the server private key from path. If the file does not exist, generate a key,
 * create the parent directories and write the file atomically (mode 0600) in derper's
 * layout. Returns 0 with priv filled, or -1 with a one-line reason in err naming the
 * file (callers prefix "config: ", as derper does). A file that exists but is
 * malformed (or holds the all-zero key) is never overwritten.
 * key_init() must have been called. */
int keyfile_load_or_create(const char *path, uint8_t priv[32], char *err, size_t errlen);
/* The file's content (n bytes, not NUL-ended) as keyfile_load_or_create reads it; path only
 * names it in err. 0, or -1 with err and priv zeroed. For tests and the fuzz target. */
int keyfile_parse(const char *path, const char *buf, size_t n, uint8_t priv[32], char *err,
		  size_t errlen);

#endif
