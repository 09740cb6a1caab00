/* libFuzzer: the DERP map JSON that derpd-probe reads from a URL, a file or tailscaled
 * (tools/probe/derpmap.c, compiled in here: the tool is not part of libderpd). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tools/probe/derpmap.c"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct derp_map m;
	char err[256];
	int all = 0;

	err[0] = '\0';
	if (derpmap_parse((const char *)data, size, &m, err, sizeof err) != 0) {
		if (!err[0])
			abort(); /* every refusal says why */
		return 0;
	}
	if (m.n_regions > DM_MAX_REGIONS)
		abort();
	for (int r = 0; r < m.n_regions; r++) {
		const struct dm_region *g = &m.regions[r];
		if (r > 0 && g->id <= m.regions[r - 1].id)
			abort(); /* sorted, no region twice */
		if (g->n_nodes > DM_MAX_NODES || strlen(g->code) >= DM_NAME_LEN)
			abort();
		all += g->n_nodes;
		for (int i = 0; i < g->n_nodes; i++) {
			const struct dm_node *n = &g->nodes[i];
			/* names name probes, labels and page rows: present, bounded, printable */
			if (!n->name[0] || !n->host[0] || strlen(n->name) >= DM_NAME_LEN)
				abort();
			for (const char *p = n->name; *p; p++)
				if ((unsigned char)*p < 0x20)
					abort();
			if (n->stun_port < -1 || n->stun_port > 65535 || n->derp_port < 0 ||
			    n->derp_port > 65535)
				abort();
		}
	}
	if (all > DM_MAX_ALL)
		abort();
	derpmap_free(&m);
	return 0;
}
