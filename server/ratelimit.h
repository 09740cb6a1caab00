/* Per-client receive rate limiting (spec PROTOCOL.md §10, SERVER.md §14): the --rate-config
 * file and a token bucket in bytes (CONFORMANCE 84, 88-93). No locking: a bucket belongs to
 * the worker that reads its connection. */
#ifndef DERPD_RATELIMIT_H
#define DERPD_RATELIMIT_H
#include <stddef.h>
#include <stdint.h>

/* Smallest applied burst: one whole SendPacket (max packet + key), upstream's
 * minRateLimitTokenBucketSize. A frame is charged min(frame length, this). */
#define RATE_MIN_BURST 65568u

struct rate_config { uint64_t bytes_per_sec, burst; }; /* applied values: burst raised to >= 65568; rate 0 = off (burst 0) */

/* Load the JSON file (SERVER.md §14 format; Go json semantics: case-insensitive keys,
 * unknown ignored, uint) and return the applied values (rate_config_applied). 0, or -1 with
 * err (empty path, missing file, invalid JSON). Upstream then logs
 * "rate config applied: client-rate=%d bytes/sec, client-burst=%d bytes". */
int rate_config_load(const char *path, struct rate_config *out, char *err, size_t errlen);
/* The file's content as written ({1, 2} stays {1, 2}): upstream's LoadRateConfig.
 * Values above INT64_MAX are refused (jansson's integers are signed). 0 or -1 with err. */
int rate_config_parse(const char *json, size_t len, struct rate_config *raw, char *err,
		      size_t errlen);
/* What the server applies (upstream's UpdateRateLimits): rate 0 -> {0, 0}; otherwise the
 * burst is raised to RATE_MIN_BURST. */
struct rate_config rate_config_applied(struct rate_config raw);

/* A token bucket in bytes (CONFORMANCE 84): */
struct token_bucket { double tokens; int64_t last_ms; uint64_t rate, burst; };
void tb_init(struct token_bucket *b, uint64_t rate, uint64_t burst, int64_t now_ms); /* starts full */
/* Take n tokens if available (return 0), else return the ms to wait until n are available
 * (>0), or -1 if n > burst. Nothing is taken unless 0 is returned, so a wait that is given
 * up (the connection closed) costs nothing; after waiting, call again. rate 0 = no limit
 * (always 0). Count derp_rate_limit_per_client_waited once per frame whose first call
 * returned > 0. */
int64_t tb_take(struct token_bucket *b, uint64_t n, int64_t now_ms);
/* Apply a new config in place. Like upstream, which installs a fresh limiter, the bucket
 * starts full again. */
void tb_set(struct token_bucket *b, uint64_t rate, uint64_t burst, int64_t now_ms);

#endif
