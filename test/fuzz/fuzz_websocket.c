/* libFuzzer: the WebSocket stream decoder and header parser on arbitrary client bytes. The
 * first input byte picks the chunk size, so split headers and payloads get exercised; the
 * decoder runs in place as the server will run it. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "server/websocket.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct ws_decoder d;
	struct ws_frame f;
	size_t step, pos;
	uint8_t *buf;

	if (size < 1)
		return 0;
	step = (size_t)data[0] + 1;
	data++, size--;
	/* the stateless parser on its own: the length it reports fits the input */
	int h = ws_parse_header(data, size, (int)(step >> 1) & 1, &f);
	if (h > 0 && ((size_t)h > size || h > WS_MAX_HEADER))
		abort();
	if (!(buf = malloc(size ? size : 1)))
		return 0;
	memcpy(buf, data, size);
	ws_decoder_init(&d);
	if (step & 1)
		d.limit = 0;
	for (pos = 0; pos < size;) {
		size_t k = size - pos < step ? size - pos : step, off = 0;
		while (off < k) {
			size_t used = 0, made = 0;
			int r = ws_decode(&d, buf + pos + off, k - off, buf + pos + off, &used, &made);
			if (made > used || used > k - off)
				abort();
			off += used;
			if (r == WS_DEC_ERROR) {
				if (!d.err_status || !d.err_reason)
					abort();
				free(buf);
				return 0;
			}
			if (r == WS_DEC_CONTROL && d.ctl_len > WS_MAX_CONTROL)
				abort();
			if (r == WS_DEC_MORE && off != k)
				abort();
		}
		pos += k;
	}
	free(buf);
	return 0;
}
