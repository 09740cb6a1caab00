/* libFuzzer: command-line values. The input is argv, arguments separated by NUL bytes;
 * config_parse reads the flags (durations, floats, sizes, addresses) and what it accepts
 * goes through the mesh parsers main would run next (--mesh-with targets; the raw input as
 * a mesh key text). Inputs asking for -h, -help or -version are skipped: those exit. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mesh/mesh.h"
#include "server/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAXARGS 16

static int exits(const char *a)
{
	if (a[0] != '-')
		return 0;
	a += a[1] == '-' ? 2 : 1;
	size_t n = strcspn(a, "=");
	return (n == 1 && a[0] == 'h') || (n == 4 && !memcmp(a, "help", 4)) ||
	       (n == 7 && !memcmp(a, "version", 7));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *buf = malloc(size + 1), *argv[MAXARGS + 2], err[512], text[65];
	struct config cfg;
	struct mesh_target t;
	uint8_t key[32];
	int argc = 1;

	if (!buf)
		return 0;
	memcpy(buf, data, size);
	buf[size] = '\0';
	mesh_parse_key(buf, size, key, text, err, sizeof err);
	argv[0] = "derpd";
	for (char *p = buf; p <= buf + size && argc <= MAXARGS; p += strlen(p) + 1) {
		if (exits(p))
			goto out;
		argv[argc++] = p;
	}
	argv[argc] = NULL;
	if (config_parse(&cfg, argc, argv) == 0 && cfg.mesh_with) {
		for (const char *s = cfg.mesh_with; s;) {
			const char *comma = strchr(s, ',');
			size_t len = comma ? (size_t)(comma - s) : strlen(s);
			if (mesh_parse_target(s, len, &t, err, sizeof err) == 0 &&
			    (!memchr(t.name, 0, sizeof t.name) || !memchr(t.dial, 0, sizeof t.dial)))
				abort();
			s = comma ? comma + 1 : NULL;
		}
	}
out:
	free(buf);
	return 0;
}
