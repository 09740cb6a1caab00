/* libFuzzer: the --rate-config JSON file (operator input, reloaded on SIGHUP). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "server/ratelimit.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *buf = malloc(size ? size : 1), err[256];
	struct rate_config raw, ap;
	struct token_bucket tb;

	if (!buf)
		return 0;
	memcpy(buf, data, size);
	err[0] = '\0';
	if (rate_config_parse(buf, size, &raw, err, sizeof err) == 0) {
		ap = rate_config_applied(raw);
		if (ap.bytes_per_sec && ap.burst < RATE_MIN_BURST)
			abort(); /* the applied burst always holds one whole packet */
		/* the bucket takes whatever was configured */
		tb_init(&tb, ap.bytes_per_sec, ap.burst, 1000);
		tb_take(&tb, RATE_MIN_BURST, 1000);
		tb_take(&tb, RATE_MIN_BURST, 1001);
		tb_set(&tb, raw.bytes_per_sec, raw.burst, INT64_MAX / 2);
		tb_take(&tb, 1, INT64_MAX / 2 + 1);
	} else if (!err[0]) {
		abort(); /* every failure says why */
	}
	free(buf);
	return 0;
}
