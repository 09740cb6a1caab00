/* The DERP map as Go's encoding/json reads a tailcfg.DERPMap: field names match without
 * regard to case, a known field of the wrong type fails the whole decode, unknown fields
 * are ignored, null leaves the zero value. Outside input (a URL, a file, tailscaled), so
 * everything is bounded: bytes, regions, nodes, string lengths (probe.h). */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

#include "tools/probe/probe.h"

struct perr {
	char *buf;
	size_t cap;
};

static int fail(struct perr *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(struct perr *e, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(e->buf, e->cap, fmt, ap);
	va_end(ap);
	return -1;
}

/* The member of o named name, compared as Go does (ASCII case folded); the last one wins,
 * as a later duplicate overwrites an earlier one in Go. */
static json_t *field(json_t *o, const char *name)
{
	const char *k;
	json_t *v, *found = NULL;

	json_object_foreach(o, k, v)
		if (strcasecmp(k, name) == 0)
			found = v;
	return found;
}

/* A Go int field: absent or null = 0; a JSON number without fraction in range. */
static int get_int(json_t *o, const char *name, long lo, long hi, int *out, const char *where,
		   struct perr *e)
{
	json_t *v = field(o, name);

	*out = 0;
	if (!v || json_is_null(v))
		return 0;
	if (!json_is_integer(v))
		return fail(e, "%s: %s is not an integer", where, name);
	json_int_t i = json_integer_value(v);
	if (i < lo || i > hi)
		return fail(e, "%s: %s %lld is out of range %ld..%ld", where, name, (long long)i,
			    lo, hi);
	*out = (int)i;
	return 0;
}

static int get_bool(json_t *o, const char *name, int *out, const char *where, struct perr *e)
{
	json_t *v = field(o, name);

	*out = 0;
	if (!v || json_is_null(v))
		return 0;
	if (!json_is_boolean(v))
		return fail(e, "%s: %s is not a boolean", where, name);
	*out = json_is_true(v);
	return 0;
}

/* A string field into out (cap bytes): too long or holding a NUL / control character is an
 * error, so every name is safe to print in a log line, a label or a page. */
static int get_str(json_t *o, const char *name, char *out, size_t cap, const char *where,
		   struct perr *e)
{
	json_t *v = field(o, name);

	out[0] = '\0';
	if (!v || json_is_null(v))
		return 0;
	if (!json_is_string(v))
		return fail(e, "%s: %s is not a string", where, name);
	size_t n = json_string_length(v);
	const char *s = json_string_value(v);
	if (n >= cap)
		return fail(e, "%s: %s is longer than %zu bytes", where, name, cap - 1);
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
			return fail(e, "%s: %s holds a control character", where, name);
	memcpy(out, s, n + 1);
	return 0;
}

static int parse_node(json_t *o, struct dm_node *n, const char *rwhere, int idx,
		      struct perr *e)
{
	char where[DM_NAME_LEN + 64];

	snprintf(where, sizeof where, "%s node %d", rwhere, idx);
	if (!json_is_object(o))
		return fail(e, "%s is not an object", where);
	memset(n, 0, sizeof *n);
	if (get_str(o, "Name", n->name, sizeof n->name, where, e) ||
	    get_int(o, "RegionID", -2147483647L - 1, 2147483647L, &n->region_id, where, e) ||
	    get_str(o, "HostName", n->host, sizeof n->host, where, e) ||
	    get_str(o, "CertName", n->cert_name, sizeof n->cert_name, where, e) ||
	    get_str(o, "IPv4", n->ipv4, sizeof n->ipv4, where, e) ||
	    get_str(o, "IPv6", n->ipv6, sizeof n->ipv6, where, e) ||
	    get_int(o, "STUNPort", -1, 65535, &n->stun_port, where, e) ||
	    get_bool(o, "STUNOnly", &n->stun_only, where, e) ||
	    get_int(o, "DERPPort", 0, 65535, &n->derp_port, where, e) ||
	    get_bool(o, "InsecureForTests", &n->insecure, where, e) ||
	    get_bool(o, "CanPort80", &n->can_port80, where, e))
		return -1;
	if (!n->name[0])
		return fail(e, "%s has no Name", where);
	if (!n->host[0])
		return fail(e, "%s (%s) has no HostName", where, n->name);
	return 0;
}

static int parse_region(const char *key, json_t *o, struct dm_region *r, int *total,
			struct perr *e)
{
	char where[96], *end;
	long id;

	errno = 0;
	id = strtol(key, &end, 10);
	/* Go's map[int] key: a decimal integer, nothing else */
	if (!*key || *end || errno || id < -2147483647L - 1 || id > 2147483647L)
		return fail(e, "region key \"%.32s\" is not an integer", key);
	snprintf(where, sizeof where, "region %ld", id);
	if (!json_is_object(o))
		return fail(e, "%s is not an object", where);
	if (get_int(o, "RegionID", -2147483647L - 1, 2147483647L, &r->id, where, e) ||
	    get_str(o, "RegionCode", r->code, sizeof r->code, where, e) ||
	    get_str(o, "RegionName", r->name, sizeof r->name, where, e))
		return -1;
	if (r->id == 0)
		r->id = (int)id;
	json_t *nodes = field(o, "Nodes");
	if (!nodes || json_is_null(nodes))
		return 0;
	if (!json_is_array(nodes))
		return fail(e, "%s: Nodes is not an array", where);
	size_t nn = json_array_size(nodes);
	if (nn > DM_MAX_NODES)
		return fail(e, "%s has %zu nodes, more than %d", where, nn, DM_MAX_NODES);
	if (*total + (int)nn > DM_MAX_ALL)
		return fail(e, "the map has more than %d nodes", DM_MAX_ALL);
	*total += (int)nn;
	r->nodes = calloc(nn ? nn : 1, sizeof *r->nodes);
	if (!r->nodes)
		return fail(e, "out of memory");
	for (size_t i = 0; i < nn; i++) {
		json_t *v = json_array_get(nodes, i);
		if (json_is_null(v))
			return fail(e, "%s node %zu is null", where, i);
		if (parse_node(v, &r->nodes[r->n_nodes], where, (int)i, e) != 0)
			return -1;
		r->n_nodes++;
	}
	return 0;
}

static int region_cmp(const void *a, const void *b)
{
	const struct dm_region *x = a, *y = b;
	return (x->id > y->id) - (x->id < y->id);
}

void derpmap_free(struct derp_map *m)
{
	for (int i = 0; m && i < m->n_regions; i++)
		free(m->regions[i].nodes);
	if (m) {
		free(m->regions);
		m->regions = NULL;
		m->n_regions = 0;
	}
}

/* How deep arrays and objects nest (strings skipped). jansson recurses once per level,
 * up to 2048, which a prober thread's 256 KiB stack may not hold (it did not under
 * ThreadSanitizer); a DERP map nests 5 deep. */
#define DM_MAX_DEPTH 32
static int nesting_too_deep(const char *s, size_t n)
{
	int depth = 0, in_str = 0;

	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		if (in_str) {
			if (c == '\\')
				i++;
			else if (c == '"')
				in_str = 0;
		} else if (c == '"') {
			in_str = 1;
		} else if (c == '[' || c == '{') {
			if (++depth > DM_MAX_DEPTH)
				return 1;
		} else if (c == ']' || c == '}') {
			depth--;
		}
	}
	return 0;
}

int derpmap_parse(const char *json, size_t len, struct derp_map *out, char *err, size_t errlen)
{
	struct perr e = { err, errlen };
	struct derp_map m = { 0 };
	json_error_t je;
	json_t *root, *regions;
	const char *key;
	json_t *v;
	int total = 0, rc = -1;

	if (len > DM_MAX_BYTES)
		return fail(&e, "DERP map is %zu bytes, more than %u", len, DM_MAX_BYTES);
	if (nesting_too_deep(json, len))
		return fail(&e, "decoding DERP map JSON: nested more than %d deep", DM_MAX_DEPTH);
	/* JSON_DECODE_ANY: a top-level null or number gets our message, not jansson's */
	root = json_loadb(json, len, JSON_DECODE_ANY, &je);
	if (!root)
		return fail(&e, "decoding DERP map JSON: %s (line %d)", je.text, je.line);
	if (!json_is_object(root)) {
		fail(&e, "decoding DERP map JSON: not an object");
		goto out;
	}
	regions = field(root, "Regions");
	if (regions && !json_is_null(regions) && !json_is_object(regions)) {
		fail(&e, "decoding DERP map JSON: Regions is not an object");
		goto out;
	}
	size_t nr = regions && json_is_object(regions) ? json_object_size(regions) : 0;
	if (nr > DM_MAX_REGIONS) {
		fail(&e, "DERP map has %zu regions, more than %d", nr, DM_MAX_REGIONS);
		goto out;
	}
	m.regions = calloc(nr ? nr : 1, sizeof *m.regions);
	if (!m.regions) {
		fail(&e, "out of memory");
		goto out;
	}
	if (nr) {
		json_object_foreach(regions, key, v) {
			if (json_is_null(v))
				continue; /* a nil *DERPRegion: nothing to probe */
			struct dm_region *r = &m.regions[m.n_regions];
			int prc = parse_region(key, v, r, &total, &e);
			m.n_regions++; /* counted even on failure, so derpmap_free frees its nodes */
			if (prc != 0)
				goto out;
		}
	}
	qsort(m.regions, (size_t)m.n_regions, sizeof *m.regions, region_cmp);
	/* Node names name the probes: upstream refuses a map that repeats one. */
	for (int a = 0; a < m.n_regions; a++) {
		if (a > 0 && m.regions[a].id == m.regions[a - 1].id) {
			fail(&e, "DERP map has region %d twice", m.regions[a].id);
			goto out;
		}
		for (int i = 0; i < m.regions[a].n_nodes; i++)
			for (int b = 0; b <= a; b++)
				for (int j = 0; j < (b == a ? i : m.regions[b].n_nodes); j++)
					if (!strcmp(m.regions[a].nodes[i].name,
						    m.regions[b].nodes[j].name)) {
						fail(&e, "derpmap has duplicate nodes: %s",
						     m.regions[a].nodes[i].name);
						goto out;
					}
	}
	*out = m;
	rc = 0;
out:
	if (rc != 0)
		derpmap_free(&m);
	json_decref(root);
	return rc;
}
