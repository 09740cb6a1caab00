/* Certificates for the TLS listener (spec SERVER.md §10): which certificate a connection
 * gets (manual files with live reload, Let's Encrypt / GCP through ACME, IP-address
 * certificates), the DERP meta certificate appended to every chain (PROTOCOL.md §3.3),
 * and the ACME challenge answers.
 *
 * Threading: cert_provider_start/stop from main only. cert_provider_ssl_new,
 * cert_provider_reload and acme_http01_response are safe from any thread at any time
 * while the provider runs. The provider's own thread does file watching, ACME orders and
 * renewals; nothing here ever blocks a caller on the network or the disk.
 *
 * Include <wolfssl/options.h> before any other wolfSSL header (this header does). */
#ifndef DERPD_ACME_CERT_H
#define DERPD_ACME_CERT_H
#include <wolfssl/options.h>
#include <wolfssl/ssl.h>

#include <stddef.h>
#include <stdint.h>

struct config;
struct cert_provider;

/* Validates the cert flags exactly as derper (certdir, certmode, hostname, EAB, e-mail,
 * --acme-ip-certs; SERVER.md §10 texts), loads or generates what it can at once (manual
 * mode: the files, or a self-signed certificate for an IP hostname; ACME: the cached
 * certificate) and starts the provider thread (file watching, ACME). server_pub is the
 * DERP server's public key, for the meta certificate. NULL on error with derper's message
 * in err (the caller logs "derper: can not start cert provider: <err>" and exits). */
struct cert_provider *cert_provider_start(const struct config *cfg,
					  const uint8_t server_pub[32], char *err,
					  size_t errlen);
void cert_provider_stop(struct cert_provider *p);

/* A WOLFSSL for a freshly accepted TLS connection on fd (wolfSSL_set_fd done; the caller
 * may replace the I/O callbacks afterwards but must keep the fd set: the IP-certificate
 * mode reads the local address from it). TLS 1.2 minimum, ALPN http/1.1, SNI rules of
 * the cert mode and the certificate choice happen inside wolfSSL_accept, in the caller's
 * thread, without blocking. The object holds its context: a reload never touches it.
 * NULL if no context could be made (out of memory). Free with wolfSSL_free. */
WOLFSSL *cert_provider_ssl_new(struct cert_provider *p, int fd);
/* After a failed handshake on this thread: why the provider refused the client's server
 * name ("SNI \"x\": ..."), NULL if it did not. Reading clears it. */
const char *cert_provider_take_refusal(void);

/* Manual mode: re-read the certificate and key files now (SIGHUP); also done by the
 * provider thread when the files change. 0: new certificate serving; 1: files unchanged;
 * -1: refused (logged), the old certificate keeps serving. Other modes: 1 (ACME renews by
 * itself). Live connections are never touched. */
int cert_provider_reload(struct cert_provider *p);

/* Whether TLS works yet, for READY=1 (main thread). CERT_SERVING: manual mode, a cached
 * ACME certificate, or the first one obtained (and --acme-ip-certs alone, whose
 * certificates are per local address, asked for by the first handshake to each);
 * CERT_PENDING: the first ACME order for --hostname is under way; CERT_FAILED: it failed
 * (logged; retried after a back-off). */
enum cert_state { CERT_SERVING, CERT_PENDING, CERT_FAILED };
enum cert_state cert_provider_state(struct cert_provider *p);

/* Port-80 handler (SERVER.md §6.6, §10.4): the answer for an HTTP-01 challenge path.
 * path: the request path ("/.well-known/acme-challenge/<token>"). Returns the body
 * length written to buf (Content-Type text/plain, status 200); 0 if the path is under
 * /.well-known/acme-challenge/ but no challenge is pending there (status 404); -1 if the
 * path is not ACME's (fall through to derper's port-80 handling). Always -1 in manual
 * mode. */
int acme_http01_response(const char *path, char *buf, size_t len);

/* ---- status (status.c), safe from any thread ---- */

/* "wolfSSL 5.5.4 (build-local, AES-NI in use)" and the like, for the start-up log. */
const char *cert_tls_library(void);
/* "wolfSSL 5.5.4": derpd_build_info's tls_library. */
const char *cert_tls_library_version(void);
/* 1 if the linked wolfSSL was built with AES-NI and this CPU has it (AES and PCLMUL). */
int cert_tls_aesni(void);

/* Every certificate being served (a manual one under --hostname, each ACME name or IP
 * address) and its notAfter: derpd_tls_certificate_expiry_timestamp_seconds. Fills up to
 * max, returns how many were filled. */
struct cert_expiry {
	char name[256];
	int64_t not_after; /* Unix seconds */
};
size_t cert_expiry_list(struct cert_expiry *out, size_t max);
/* ACME orders attempted and failed since start (derpd_acme_orders_total,
 * derpd_acme_order_failures_total). */
void cert_acme_counters(uint64_t *orders, uint64_t *failures);

#endif
