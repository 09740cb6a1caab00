/* The relay as seen from other modules (metrics, HTTP debug pages, mesh later). */
#ifndef DERPD_SERVER_H
#define DERPD_SERVER_H
#include <stdint.h>
#include <sys/socket.h>
#include "server/stats.h"

struct config;
/* Bind one SO_REUSEPORT listener per worker on cfg's -a and start the workers. */
int server_start(const struct config *cfg, const uint8_t priv[32], char *err, size_t errlen);
/* Stop accepting, close every connection, join the workers. */
void server_stop(void);
/* The bound TCP port (useful with -a :0). */
int server_port(void);

/* The server's public key (valid after start-up). */
const uint8_t *server_public_key(void);

struct server_client_info {
	uint8_t key[32];
	struct sockaddr_storage peer;  /* remote ip:port */
	uint64_t unique_senders;       /* approximate distinct source keys (0 = none) */
	int is_mesh_peer, is_prober, preferred;
};
/* Call cb for every registered local connection. cb must not call back into the
 * server; it runs with a map shard locked. */
void server_clients_foreach(void (*cb)(void *arg, const struct server_client_info *ci),
			    void *arg);

/* derper's /debug/check: 0 and "" if consistent, else -1 and the problems. */
int server_consistency_check(char *buf, size_t len);

#endif
