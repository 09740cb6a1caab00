/* libFuzzer: the DERP client (mesh/derp_client.c, client_io.c) against a server that sends
 * fuzzer bytes: the 101 response head, ServerKey, ServerInfo, then frames until EOF, read
 * through a socketpair. Input byte 0: bit 0 fast start (no 101 head; ServerKey first);
 * bit 1 the harness sends a valid head and ServerKey itself; bit 2 it also sends a valid
 * ServerInfo box, whose plaintext JSON is the next byte's count of input bytes. The rest of
 * the input follows as the server's stream. */
#include <sodium.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "mesh/derp_client.h"
#include "server/frame.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint8_t client_priv[32], client_pub[32], server_priv[32], server_pub[32];

static void put(uint8_t **b, size_t *n, const void *p, size_t k)
{
	memcpy(*b + *n, p, k);
	*n += k;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int init;
	int sv[2];

	if (!init++) {
		if (sodium_init() < 0)
			abort();
		memset(client_priv, 1, 32);
		memset(server_priv, 2, 32);
		crypto_scalarmult_base(client_pub, client_priv);
		crypto_scalarmult_base(server_pub, server_priv);
	}
	if (size < 1)
		return 0;
	uint8_t mode = data[0], hdr[FRAME_HEADER_LEN];
	data++, size--;
	uint8_t *out = malloc(size + 512);
	size_t n = 0;
	if (!out)
		return 0;
	if (mode & 2) {
		if (!(mode & 1))
			put(&out, &n, "HTTP/1.1 101 Switching Protocols\r\n\r\n", 36);
		frame_put_header(hdr, FRAME_SERVER_KEY, DERP_MAGIC_LEN + 32);
		put(&out, &n, hdr, sizeof hdr);
		put(&out, &n, DERP_MAGIC, DERP_MAGIC_LEN);
		put(&out, &n, server_pub, 32);
		if ((mode & 4) && size > 0) {
			size_t jl = data[0] < size - 1 ? data[0] : size - 1;
			uint8_t nonce[24] = { 7 };
			frame_put_header(hdr, FRAME_SERVER_INFO, (uint32_t)(24 + 16 + jl));
			put(&out, &n, hdr, sizeof hdr);
			put(&out, &n, nonce, 24);
			if (crypto_box_easy(out + n, data + 1, jl, nonce, client_pub, server_priv))
				abort();
			n += jl + 16;
			data += 1 + jl, size -= 1 + jl;
		}
	}
	put(&out, &n, data, size);
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0)
		abort();
	/* all of the server's bytes, then EOF; the client's own writes are never read */
	if (write(sv[1], out, n) != (ssize_t)n)
		abort();
	shutdown(sv[1], SHUT_WR);
	free(out);

	struct derp_client_opts o = { 0 };
	o.private_key = client_priv;
	o.server_key = (mode & 1) ? server_pub : NULL;
	o.fast_start = mode & 1;
	o.timeout_ms = 1000;
	struct derp_client *c = derp_client_open_fd(sv[0], "fuzz.example", &o);
	if (c && derp_client_send_info(c) == 0 && derp_client_finish(c) == 0) {
		struct derp_msg m;
		for (int i = 0; i < 64 && derp_client_recv(c, &m, 1000) >= 0; i++)
			;
	}
	if (c)
		derp_client_close(c);
	close(sv[1]);
	return 0;
}
