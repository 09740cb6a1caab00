/* The ACME protocol client, internal to acme/ (issue.c drives it, tests call it). */
#ifndef DERPD_ACME_CLIENT_H
#define DERPD_ACME_CLIENT_H
#include "acme/internal.h"

#include <arpa/inet.h>

/* How a challenge answer is put up and taken down; each returns 0 on success. */
struct acme_hooks {
	void *arg;
	int (*http01_put)(void *arg, const char *token, const char *keyauth);
	void (*http01_del)(void *arg, const char *token);
	/* TLS-ALPN-01: serve a certificate for name carrying SHA-256(keyauth) */
	int (*alpn_put)(void *arg, const char *name, const uint8_t hash[32]);
	void (*alpn_del)(void *arg, const char *name);
};

struct acme_client;
/* key: the account key (kept by the caller). stop: set to abandon waits. */
struct acme_client *acme_client_new(const char *dir_url, const char *ca_file, ecc_key *key,
				    const char *email, const char *eab_kid,
				    const uint8_t *eab_key, size_t eab_len, volatile int *stop);
void acme_client_free(struct acme_client *c);
/* One certificate for one identifier (type "dns" or "ip"): account (registered on first
 * use), order (profile only if the CA offers it; replaces only with ARI), challenges in
 * the order TLS-ALPN-01, HTTP-01 among those allowed, CSR for certkey, chain PEM out
 * (malloc'd). 0, or -1 with err. Blocks up to 3 minutes. */
int acme_client_issue(struct acme_client *c, const char *type, const char *value,
		      const char *profile, const char *replaces, int challenges,
		      const struct acme_hooks *hk, ecc_key *certkey, char **chain, char *err,
		      size_t errlen);
/* ARI suggested window for certid (RFC 9773 §4.1); -1 if the CA has no ARI. */
int acme_client_ari(struct acme_client *c, const char *certid, time_t *start, time_t *end);
const char *acme_client_thumbprint(const struct acme_client *c);
/* badNonce answers retried so far, process-wide (tests). */
unsigned long acme_client_badnonce_retries(void);

#endif
