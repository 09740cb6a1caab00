/* libFuzzer: whole server connections, in-process. One derpd relay (one worker) listens on
 * loopback; each input is one connection that sends the input's bytes, shuts its side and
 * reads until the server hangs up: HTTP head, upgrade, handshake, the frame reader and
 * dispatcher (conn_read.c), WebSocket. No seam: this is the worker's own accept path.
 *
 * Input byte 0 picks what the harness writes before the fuzzer's bytes, so that the
 * fuzzer need not forge a NaCl box:
 *   bits 0-1: 0 nothing (raw bytes from the first one on); 1 a DERP upgrade head;
 *             2 the head and a valid ClientInfo frame (then frames);
 *             3 a WebSocket upgrade and that ClientInfo in a binary message (then raw
 *             WebSocket frames)
 *   bit 2: the DERP head asks for fast start
 *   bit 3: the ClientInfo carries the mesh key (ForwardPacket, WatchConns, ClosePeer are
 *          allowed); else its JSON is taken from the input (next byte: its length)
 *   bit 4: none of the above: the bytes come from a mesh peer's server over an outbound
 *          mesh connection (server_mesh_adopt: PeerPresent, PeerGone, ...).
 * A connection the server does not close within 5 s of the client's EOF is a failure. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sodium.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "server/config.h"
#include "server/frame.h"
#include "server/key.h"
#include "server/server.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct config cfg;
static uint8_t server_priv[32], client_priv[32], client_pub[32], mesh_key[32];
static struct sockaddr_in addr = { .sin_family = AF_INET };

static void start(void)
{
	char port[16], err[256];
	socklen_t al = sizeof addr;
	int s = socket(AF_INET, SOCK_STREAM, 0);

	/* a free port: the server's probe binds without SO_REUSEPORT right after */
	addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (s < 0 || bind(s, (struct sockaddr *)&addr, sizeof addr) ||
	    getsockname(s, (struct sockaddr *)&addr, &al))
		abort();
	close(s);
	snprintf(port, sizeof port, "127.0.0.1:%d", ntohs(addr.sin_port));
	char *argv[] = { "derpd", "-a", port, "-c", "/nonexistent/derpd.key", "-workers", "1",
			 NULL };
	signal(SIGPIPE, SIG_IGN);
	if (key_init() != 0 || config_parse(&cfg, 7, argv) != 0)
		abort();
	memset(server_priv, 3, 32);
	memset(client_priv, 1, 32);
	memset(mesh_key, 0x5a, 32);
	crypto_scalarmult_base(client_pub, client_priv);
	server_set_mesh_key(mesh_key);
	if (server_start(&cfg, server_priv, err, sizeof err) != 0) {
		fprintf(stderr, "server_start: %s\n", err);
		abort();
	}
}

/* The ClientInfo frame for json (sealed to the server's key). Returns its length. */
static size_t client_info(uint8_t *out, const uint8_t *json, size_t jl)
{
	uint8_t *p = out + FRAME_HEADER_LEN;

	frame_put_header(out, FRAME_CLIENT_INFO, (uint32_t)(32 + 24 + jl + 16));
	memcpy(p, client_pub, 32);
	memset(p + 32, 9, 24);
	if (crypto_box_easy(p + 56, json, jl, p + 32, server_public_key(), client_priv))
		abort();
	return FRAME_HEADER_LEN + 56 + jl + 16;
}

/* Read (and drop) what the server writes until it closes; 0, or -1 after 5 s. */
static int drain(int fd)
{
	char buf[65536];
	struct pollfd p = { fd, POLLIN, 0 };

	for (;;) {
		if (poll(&p, 1, 5000) != 1)
			return -1;
		ssize_t n = read(fd, buf, sizeof buf);
		if (n <= 0)
			return 0;
	}
}

static void mesh_closed(void *arg)
{
	(void)arg;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int started;
	uint8_t mode;
	int fd, sv[2];

	if (!started++)
		start();
	if (size < 1)
		return 0;
	mode = data[0];
	data++, size--;
	uint8_t *out = malloc(size + 1024);
	size_t n = 0;
	if (!out)
		return 0;
	if (mode & 16) {
		/* our own outbound connection to a mesh peer, the peer being the fuzzer */
		if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) != 0)
			abort();
		if (server_mesh_adopt(sv[0], NULL, 0, "fuzz", mesh_closed, NULL, NULL) != 0) {
			close(sv[1]);
			free(out);
			return 0;
		}
		fd = sv[1];
		memcpy(out, data, size);
		n = size;
	} else {
		if ((fd = socket(AF_INET, SOCK_STREAM, 0)) < 0 ||
		    connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0)
			abort();
		int kind = mode & 3;
		if (kind == 1 || kind == 2)
			n = (size_t)sprintf((char *)out, "GET /derp HTTP/1.1\r\nHost: fuzz\r\n"
					    "Connection: Upgrade\r\nUpgrade: DERP\r\n%s\r\n",
					    mode & 4 ? "Derp-Fast-Start: 1\r\n" : "");
		if (kind == 3)
			n = (size_t)sprintf((char *)out, "GET /derp HTTP/1.1\r\nHost: fuzz\r\n"
					    "Connection: Upgrade\r\nUpgrade: websocket\r\n"
					    "Sec-WebSocket-Version: 13\r\n"
					    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
					    "Sec-WebSocket-Protocol: derp\r\n\r\n");
		if (kind >= 2) {
			char mesh[128];
			const uint8_t *json = data;
			size_t jl = 0;
			if (mode & 8) {
				char hex[65];
				key_to_hex(hex, mesh_key);
				jl = (size_t)snprintf(mesh, sizeof mesh,
						      "{\"version\":2,\"meshKey\":\"%s\"}", hex);
				json = (const uint8_t *)mesh;
			} else if (size > 0) {
				jl = data[0] < size - 1 ? data[0] : size - 1;
				json = data + 1;
				data += 1 + jl, size -= 1 + jl;
			}
			uint8_t ci[FRAME_HEADER_LEN + 72 + 256];
			size_t cl = client_info(ci, json, jl);
			if (kind == 3) {
				/* one masked binary message, mask 0 (the bytes as they are) */
				out[n++] = 0x82;
				out[n++] = 0x80 | 126;
				out[n++] = (uint8_t)(cl >> 8);
				out[n++] = (uint8_t)cl;
				memset(out + n, 0, 4);
				n += 4;
			}
			memcpy(out + n, ci, cl);
			n += cl;
		}
		memcpy(out + n, data, size);
		n += size;
	}
	for (size_t off = 0; off < n;) {
		ssize_t k = write(fd, out + off, n - off);
		if (k <= 0)
			break; /* the server may hang up before reading everything */
		off += (size_t)k;
	}
	free(out);
	shutdown(fd, SHUT_WR);
	if (drain(fd) != 0) {
		fprintf(stderr, "fuzz_server_conn: the server kept the connection after EOF\n");
		abort();
	}
	close(fd);
	return 0;
}
