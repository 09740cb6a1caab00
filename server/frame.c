#include "server/frame.h"

#include <string.h>

int frame_is_disco(const uint8_t *pkt, size_t len)
{
	return len >= DISCO_MIN_LEN && memcmp(pkt, DISCO_MAGIC, DISCO_MAGIC_LEN) == 0;
}

size_t frame_server_key(uint8_t out[45], const uint8_t pub[DERP_KEY_LEN])
{
	frame_put_header(out, FRAME_SERVER_KEY, DERP_MAGIC_LEN + DERP_KEY_LEN);
	memcpy(out + 5, DERP_MAGIC, DERP_MAGIC_LEN);
	memcpy(out + 13, pub, DERP_KEY_LEN);
	return 45;
}

size_t frame_peer_gone(uint8_t out[38], const uint8_t key[DERP_KEY_LEN], uint8_t reason)
{
	frame_put_header(out, FRAME_PEER_GONE, DERP_KEY_LEN + 1);
	memcpy(out + 5, key, DERP_KEY_LEN);
	out[37] = reason;
	return 38;
}

size_t frame_peer_present(uint8_t out[56], const uint8_t key[DERP_KEY_LEN],
			  const uint8_t ip16[16], uint16_t port, uint8_t flags)
{
	frame_put_header(out, FRAME_PEER_PRESENT, DERP_KEY_LEN + 16 + 2 + 1);
	memcpy(out + 5, key, DERP_KEY_LEN);
	memcpy(out + 37, ip16, 16);
	out[53] = (uint8_t)(port >> 8);
	out[54] = (uint8_t)port;
	out[55] = flags;
	return 56;
}

size_t frame_pong(uint8_t out[13], const uint8_t data[8])
{
	frame_put_header(out, FRAME_PONG, 8);
	memcpy(out + 5, data, 8);
	return 13;
}

size_t frame_keep_alive(uint8_t out[5])
{
	frame_put_header(out, FRAME_KEEP_ALIVE, 0);
	return 5;
}

size_t frame_restarting(uint8_t out[13], uint32_t reconnect_ms, uint32_t try_for_ms)
{
	frame_put_header(out, FRAME_RESTARTING, 8);
	frame_put_be32(out + 5, reconnect_ms);
	frame_put_be32(out + 9, try_for_ms);
	return 13;
}
