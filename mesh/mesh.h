/* The regional mesh, outbound half (spec SERVER.md §11, PROTOCOL.md §9): the mesh key, and
 * one watch loop per --mesh-with peer that logs in to the peer with this server's own key
 * and the mesh key, sends WatchConns and hands the connection to the relay
 * (server_mesh_adopt), which keeps the forwarder table from what the peer announces.
 *
 * Start-up order (main): mesh_init() before server_start() -- it sets the server's mesh key
 * and rejects a bad configuration before anything listens -- then mesh_start() after
 * server_start(). Shutdown: mesh_stop(), before or after server_stop(). */
#ifndef DERPD_MESH_H
#define DERPD_MESH_H
#include <stddef.h>
#include <stdint.h>

struct config;

/* Load the mesh key (--dev: env TAILSCALE_DERPER_MESH_KEY; else --mesh-psk-file), log
 * which, hand it to server_set_mesh_key(), and check every --mesh-with entry.
 * 0, or -1 with a message in err (the caller exits 1, as derper's log.Fatal does). */
int mesh_init(const struct config *cfg, char *err, size_t errlen);
/* Start one watch loop thread per --mesh-with peer (none for entries naming this server's
 * --hostname). server_priv is the server's private key (the mesh client key). */
int mesh_start(const struct config *cfg, const uint8_t server_priv[32], char *err,
	       size_t errlen);
/* Stop every watch loop promptly (a connect in progress is aborted) and join them. */
void mesh_stop(void);

/* Each configured --mesh-with peer (not this server itself, whether skipped by -hostname or
 * found by connecting to it): for derpd_mesh_peer_up and derpd_mesh_forward_drops_total.
 * Fills up to max entries, returns how many peers there are. Safe from any thread. */
struct mesh_peer_status {
	char peer[264];      /* "host:port" ("[v6]:port"), the port 443 when the entry had none */
	int up;              /* the link is logged in and run by the relay */
	uint64_t fwd_drops;  /* packets bound for it dropped since start */
};
size_t mesh_peers_status(struct mesh_peer_status *out, size_t max);

/* ---- exposed for unit tests ---- */

#define MESH_KEY_ENV "TAILSCALE_DERPER_MESH_KEY"

/* Mesh key text as derper's key.ParseDERPMesh takes it: surrounding (Unicode) white space
 * trimmed, then exactly 64 hex digits of either case. 0, or -1 with err set. An all-zero
 * key parses; it means "no key". text (may be NULL) gets the trimmed digits as written. */
int mesh_parse_key(const char *s, size_t len, uint8_t key[32], char text[64 + 1], char *err,
		   size_t errlen);

/* The key source per SERVER.md §11: --dev -> the environment variable (unset or empty =
 * none); --mesh-psk-file -> the file (unreadable = error; empty file = none); else none.
 * *have = 1 when a non-zero key was loaded. Logs as derper does. key_text (may be NULL)
 * gets the key's 64 digits as written, trimmed, case kept ("" when there is none). */
int mesh_load_key(const struct config *cfg, uint8_t key[32], char key_text[64 + 1], int *have,
		  char *err, size_t errlen);

/* ---- -secrets-url: the mesh key from setec (secrets.c) ---- */

/* "<-secrets-path-prefix>/meshkey", joined as Go's path.Join does for plain prefixes. */
void mesh_secrets_name(const struct config *cfg, char *out, size_t cap);
/* The secret at start-up: from the cache (-secrets-cache-dir) if it holds one (*cached =
 * 1; the poller asks setec at once), else from setec, then cached. Logs as derper
 * ("Setting up setec store from ...", "Got mesh key from setec store"), never the value.
 * 0, or -1 with err (derper exits). */
int mesh_secrets_load(const struct config *cfg, char *out, size_t cap, int64_t *version,
		      int *cached, char *err, size_t errlen);
/* POST <url>/api/get for name. have_version > 0 asks only for a newer one. 0: out holds
 * the value (NUL-terminated text), *version its version; 1: unchanged (HTTP 304); -1:
 * err says why (status and the server's words, never the secret). *stop (may be NULL)
 * going non-zero aborts a request under way. */
int mesh_secrets_fetch(const char *url, const char *name, int64_t have_version, char *out,
		       size_t cap, int64_t *version, const int *stop, char *err,
		       size_t errlen);
/* setec's answer to /api/get, {"Value":<base64 text>,"Version":N}: 0 with out
 * (NUL-terminated; a value with a NUL byte or longer than cap - 1 is refused), or -1. */
int mesh_secrets_parse_answer(const char *body, size_t len, char *out, size_t cap,
			      int64_t *version);
/* setec's cache file, {"<name>":{"secret":{"Value":<base64>,"Version":N},"lastAccess":
 * "<unix>"}}, written atomically with mode 0600. -1 if absent or unreadable. */
int mesh_secrets_cache_read(const char *dir, const char *name, char *out, size_t cap,
			    int64_t *version);
int mesh_secrets_cache_write(const char *dir, const char *name, const char *value,
			     int64_t version, char *err, size_t errlen);

/* One --mesh-with entry: "host[:port]" or "host[:port]/dialhost". */
struct mesh_target {
	char name[256];  /* host part as written: URL host, Host header, TLS name, log tag */
	char dial[256];  /* host to connect to (dialhost, else the host of name) */
	uint16_t port;   /* from name; 443 when absent */
	int tls;         /* https: port 443 or none; mesh_init adds every entry of a server
			  * that serves TLS itself. Otherwise plain http (derpd's extension) */
	int via;         /* dial was given explicitly (host/dialhost) */
};
/* Parse one entry (len bytes of s). 0, or -1 with err set. */
int mesh_parse_target(const char *s, size_t len, struct mesh_target *t, char *err,
		      size_t errlen);

#endif
