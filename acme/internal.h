/* Shared inside acme/ only: DER encoding, certificate and CSR builders, EC keys, the
 * ACME protocol client and its JSON handling. Nothing here is for other modules. */
#ifndef DERPD_ACME_INTERNAL_H
#define DERPD_ACME_INTERNAL_H
#include <wolfssl/options.h>
#include <wolfssl/wolfcrypt/settings.h>
#include <wolfssl/wolfcrypt/ecc.h>
#include <wolfssl/wolfcrypt/random.h>

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

/* ---- DER writer (der.c) ------------------------------------------------------------ */
struct der {
	uint8_t *buf;
	size_t len, cap;
	int err; /* sticky: allocation failed */
};
void der_init(struct der *d);
void der_free(struct der *d);
size_t der_mark(const struct der *d);
/* Wrap everything written since mark into one TLV with this tag. */
void der_wrap(struct der *d, size_t mark, uint8_t tag);
void der_raw(struct der *d, const void *p, size_t n);
void der_tlv(struct der *d, uint8_t tag, const void *p, size_t n);
/* INTEGER from an unsigned big-endian magnitude (minimal, positive). */
void der_uint(struct der *d, const uint8_t *be, size_t n);
/* UTCTime before 2050, GeneralizedTime from then on (X.509 rule; Go does the same). */
void der_time(struct der *d, time_t t);
/* Name: one RDN with CN (PrintableString when printable, else UTF8String);
 * cn NULL or "" gives an empty Name. */
void der_name_cn(struct der *d, const char *cn);

/* ---- DER reader ---------------------------------------------------------------------- */
struct der_rd {
	const uint8_t *p;
	size_t n;
};
/* Next TLV of r into tag/content; 0, or -1 at the end or on malformed input. */
int der_next(struct der_rd *r, uint8_t *tag, struct der_rd *content);

/* What the provider needs to know about a certificate. */
struct cert_info {
	time_t not_before, not_after;
	uint8_t serial[32];
	size_t serial_len;
	uint8_t aki[64];  /* authority key identifier (keyIdentifier), for ARI */
	size_t aki_len;
	char cn[128];
	int is_ed25519;
};
int cert_info_parse(const uint8_t *der, size_t len, struct cert_info *ci);
/* ARI certID (RFC 9773 §4.1): base64url(AKI keyIdentifier) "." base64url(serial). */
void acme_ari_id(const struct cert_info *ci, char *out, size_t cap);
/* Split a PEM bundle: every CERTIFICATE block's DER, in order. Caller frees each and the
 * array. Returns the count (0 when none or on error). */
size_t pem_certs(const char *pem, size_t len, uint8_t ***ders, size_t **lens);
/* PEM text of one DER block ("CERTIFICATE", "EC PRIVATE KEY", ...). malloc'd, NUL-ended. */
char *pem_encode(const char *type, const uint8_t *der, size_t len);

/* ---- keys and signatures ------------------------------------------------------------- */
int eckey_generate(ecc_key *k);
/* SEC1 "EC PRIVATE KEY" PEM; malloc'd. */
char *eckey_to_pem(ecc_key *k);
/* From PEM: SEC1 or PKCS#8 P-256 private key. 0 or -1. */
int eckey_from_pem(ecc_key *k, const char *pem, size_t len);
/* SHA-256 then ECDSA: DER signature (X.509, CSR). 0 or -1. */
int eckey_sign_der(ecc_key *k, const uint8_t *msg, size_t n, uint8_t *sig, size_t *siglen);
/* SHA-256 then ECDSA: raw r||s, 64 bytes (JWS ES256). */
int eckey_sign_raw(ecc_key *k, const uint8_t *msg, size_t n, uint8_t sig[64]);
/* Uncompressed point coordinates. */
int eckey_xy(ecc_key *k, uint8_t x[32], uint8_t y[32]);

/* ---- certificates -------------------------------------------------------------------- */
/* The DERP meta certificate (PROTOCOL.md §3.3), as Go's x509.CreateCertificate encodes it.
 * seed: Ed25519 private seed, or NULL for a fresh one. malloc'd DER. */
int cert_build_meta(const uint8_t server_pub[32], time_t now, const uint8_t *seed,
		    uint8_t **der, size_t *len);
/* Self-signed ECDSA P-256 certificate. dns or ip (4/16 bytes) is the SAN; acme_hash
 * (32 bytes) adds the critical id-pe-acmeIdentifier extension of a TLS-ALPN-01
 * answer (RFC 8737). serial: 16 random bytes when NULL. */
int cert_build_selfsigned(ecc_key *k, const char *cn, const char *dns, const uint8_t *ip,
			  size_t iplen, time_t not_before, time_t not_after,
			  const uint8_t *acme_hash, uint8_t **der, size_t *len);
/* The general form: subject key k signed by issuer (k itself when self-signed). */
struct cert_tmpl {
	const char *cn, *issuer_cn, *dns;
	const uint8_t *ip;
	size_t iplen;
	time_t not_before, not_after;
	int is_ca;
	const uint8_t *acme_hash;
};
int cert_build(ecc_key *k, ecc_key *issuer, const struct cert_tmpl *t, uint8_t **der,
	       size_t *len);
/* PKCS#10 request for one DNS name or one IP address (the ACME finalize CSR). */
int csr_build(ecc_key *k, const char *dns, const uint8_t *ip, size_t iplen,
	      uint8_t **der, size_t *len);

/* ---- base64url (libsodium) ----------------------------------------------------------- */
/* malloc'd base64url without padding. */
char *b64url(const uint8_t *p, size_t n);
/* Go's decodeEABKey: raw URL-safe first, then padded standard. 0 or -1. */
int eab_key_decode(const char *s, uint8_t *out, size_t cap, size_t *outlen);

/* ---- files --------------------------------------------------------------------------- */
/* Whole file, NUL-terminated; NULL with errno set. */
char *file_read(const char *path, size_t *len);
/* Atomic write (temp file, fsync, rename) with this mode. 0 or -1. */
int file_write_atomic(const char *path, const void *p, size_t n, int mode);

/* ---- ACME JSON (json.c) -------------------------------------------------------------- */
struct acme_dir {
	char new_nonce[512], new_account[512], new_order[512], renewal_info[512];
	int eab_required;
	int has_profile_shortlived;
};
int acme_parse_directory(const char *body, size_t len, struct acme_dir *d);
/* Problem document type ("urn:ietf:params:acme:error:badNonce" ...) and detail. */
int acme_parse_problem(const char *body, size_t len, char *type, size_t tlen,
		       char *detail, size_t dlen);
struct acme_order {
	char status[32];
	char finalize[512], certificate[512];
	char authz[8][512];
	int nauthz;
};
int acme_parse_order(const char *body, size_t len, struct acme_order *o);
struct acme_authz {
	char status[32];
	char ident_type[8], ident_value[256];
	char chal_url[4][512], chal_token[4][256], chal_type[4][32];
	int nchal;
};
int acme_parse_authz(const char *body, size_t len, struct acme_authz *a);
/* ARI suggestedWindow; 0 with start/end, -1 if absent or malformed. */
int acme_parse_renewal_info(const char *body, size_t len, time_t *start, time_t *end);
/* RFC 3339 time ("2025-01-02T03:04:05Z", fractional seconds and offsets allowed). */
int acme_parse_time(const char *s, time_t *t);

#endif

/* ---- the provider's shared state (provider.c, issue.c) ------------------------------- */
#include <pthread.h>
#include <wolfssl/ssl.h>

#define CHAL_HTTP01 1
#define CHAL_TLSALPN01 2

/* One served certificate: the --hostname (ACME), a name the prod host policy allowed, or
 * one local IP address (--acme-ip-certs). Guarded by cert_provider.mu. */
struct cert_entry {
	char name[256];          /* lowercase DNS name without trailing dot, or IP text */
	int is_ip;
	WOLFSSL_CTX *ctx;        /* serving context (chain + meta cert), NULL until issued */
	time_t not_before, not_after, renew_at;
	time_t next_attempt;     /* backoff after a failure */
	int retry_s;             /* next backoff: 60 s doubling to 30 min */
	int want;                /* issuance or cache load requested */
	int woken;               /* a handshake woke the thread for this attempt */
	int loaded;              /* cache looked at once */
	char ari_id[256];        /* ARI certID of the current certificate */
};

struct tls_alpn_answer {
	char name[256];
	WOLFSSL_CTX *ctx;
};

enum cert_mode { MODE_MANUAL, MODE_ACME };

struct cert_provider {
	enum cert_mode mode;
	int ip_certs;            /* --acme-ip-certs: per local IP entries */
	int host_acme;           /* an ACME hostname provider (DNS --hostname) */
	int host_is_ip;
	int prod_policy;         /* --hostname is derp.tailscale.com */
	int challenges;          /* CHAL_* allowed for DNS names, in preference order tls-alpn first */
	char certdir[4096], hostname[256], email[320], directory[1024], ca_file[4096];
	char eab_kid[256];
	uint8_t eab_key[256];
	size_t eab_len;
	char *meta_pem;          /* the meta certificate, appended to every chain */
	uint8_t *meta_der;
	size_t meta_len;

	pthread_mutex_t mu;
	WOLFSSL_CTX *front;      /* what new connections start from */
	WOLFSSL_CTX *placeholder; /* front until a real certificate exists (ACME) */
	struct cert_entry *ent;
	size_t nent, capent;
	struct tls_alpn_answer alpn[8];

	/* manual mode */
	char crt_path[4400], key_path[4400];
	uint8_t leaf_sha[32];

	pthread_t thread;
	int thread_started;
	int wake_fd, inotify_fd;
	int stop;
	void *acme;              /* struct acme_client *, thread-owned */
};

struct config;

/* provider.c */
WOLFSSL_CTX *provider_ctx_new(struct cert_provider *p, const char *chain, size_t chainlen,
			      const char *key, size_t keylen, int with_meta, char *err,
			      size_t errlen);
void provider_wake(struct cert_provider *p);
/* letsencrypt host policy (autocert HostWhitelist / derper's prod policy). */
int acme_host_allowed(const char *hostname, const char *name);
/* The start with a chosen challenge set (tests). */
struct cert_provider *cert_provider_start_ex(const struct config *cfg,
					     const uint8_t server_pub[32], int challenges,
					     char *err, size_t errlen);

/* status.c: what the metrics read (acme/cert.h) is fed from here. A new provider starts
 * with an empty certificate list; note a certificate once it serves. */
void cert_status_reset(void);
void cert_expiry_note(const char *name, int64_t not_after);
/* One ACME order (issuance attempt) ended: ok or not. */
void cert_acme_order_note(int ok);

/* issue.c: ACME entries, cache, issuance and renewal; runs on the provider thread */
int issue_init(struct cert_provider *p, char *err, size_t errlen);
/* Run whatever is due; returns ms until the next thing is due (-1: nothing). */
long issue_run(struct cert_provider *p);
void issue_free(struct cert_provider *p);
/* SNI callback side (mu held): the entry for name, created (want=1) if absent. */
struct cert_entry *issue_entry_locked(struct cert_provider *p, const char *name, int is_ip,
				      int create);
/* HTTP-01 token table (process-wide). */
int http01_put(const char *token, const char *keyauth);
void http01_del(const char *token);
