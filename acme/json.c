/* ACME (RFC 8555) response documents -> plain structs, with jansson. Everything a CA
 * sends goes through here first (and the fuzz target test/fuzz/fuzz_acme_json.c), so
 * the rest of the client only sees bounded strings. */
#include "acme/internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static json_t *load(const char *body, size_t len)
{
	json_t *j = json_loadb(body, len, JSON_REJECT_DUPLICATES, NULL);

	if (j && !json_is_object(j)) {
		json_decref(j);
		return NULL;
	}
	return j;
}

/* Copy a string member if it fits; 0 if present and copied, -1 otherwise. */
static int get_str(json_t *o, const char *key, char *out, size_t cap)
{
	json_t *v = json_object_get(o, key);
	size_t n;

	out[0] = '\0';
	if (!json_is_string(v))
		return -1;
	n = json_string_length(v);
	if (n >= cap || memchr(json_string_value(v), '\0', n) != NULL)
		return -1;
	memcpy(out, json_string_value(v), n + 1);
	return 0;
}

int acme_parse_directory(const char *body, size_t len, struct acme_dir *d)
{
	json_t *j = load(body, len), *meta, *profiles;
	int rc = -1;

	memset(d, 0, sizeof *d);
	if (j == NULL)
		return -1;
	if (get_str(j, "newNonce", d->new_nonce, sizeof d->new_nonce) != 0 ||
	    get_str(j, "newAccount", d->new_account, sizeof d->new_account) != 0 ||
	    get_str(j, "newOrder", d->new_order, sizeof d->new_order) != 0)
		goto out;
	get_str(j, "renewalInfo", d->renewal_info, sizeof d->renewal_info);
	meta = json_object_get(j, "meta");
	if (json_is_object(meta)) {
		d->eab_required = json_is_true(json_object_get(meta, "externalAccountRequired"));
		profiles = json_object_get(meta, "profiles");
		d->has_profile_shortlived = json_is_object(profiles) &&
					    json_object_get(profiles, "shortlived") != NULL;
	}
	rc = 0;
out:
	json_decref(j);
	return rc;
}

int acme_parse_problem(const char *body, size_t len, char *type, size_t tlen, char *detail,
		       size_t dlen)
{
	json_t *j = load(body, len);

	type[0] = detail[0] = '\0';
	if (j == NULL)
		return -1;
	get_str(j, "type", type, tlen);
	get_str(j, "detail", detail, dlen);
	json_decref(j);
	return type[0] ? 0 : -1;
}

int acme_parse_order(const char *body, size_t len, struct acme_order *o)
{
	json_t *j = load(body, len), *az, *v;
	size_t i;
	int rc = -1;

	memset(o, 0, sizeof *o);
	if (j == NULL)
		return -1;
	if (get_str(j, "status", o->status, sizeof o->status) != 0)
		goto out;
	get_str(j, "finalize", o->finalize, sizeof o->finalize);
	get_str(j, "certificate", o->certificate, sizeof o->certificate);
	az = json_object_get(j, "authorizations");
	if (az != NULL && !json_is_array(az))
		goto out;
	json_array_foreach(az, i, v) {
		size_t n;
		if (!json_is_string(v) || o->nauthz >= 8)
			goto out;
		n = json_string_length(v);
		if (n >= sizeof o->authz[0])
			goto out;
		memcpy(o->authz[o->nauthz++], json_string_value(v), n + 1);
	}
	rc = 0;
out:
	json_decref(j);
	return rc;
}

int acme_parse_authz(const char *body, size_t len, struct acme_authz *a)
{
	json_t *j = load(body, len), *id, *ch, *v;
	size_t i;
	int rc = -1;

	memset(a, 0, sizeof *a);
	if (j == NULL)
		return -1;
	if (get_str(j, "status", a->status, sizeof a->status) != 0)
		goto out;
	id = json_object_get(j, "identifier");
	if (!json_is_object(id) ||
	    get_str(id, "type", a->ident_type, sizeof a->ident_type) != 0 ||
	    get_str(id, "value", a->ident_value, sizeof a->ident_value) != 0)
		goto out;
	ch = json_object_get(j, "challenges");
	if (!json_is_array(ch))
		goto out;
	json_array_foreach(ch, i, v) {
		int k = a->nchal;
		if (k >= 4 || !json_is_object(v))
			continue;
		if (get_str(v, "type", a->chal_type[k], sizeof a->chal_type[k]) != 0 ||
		    get_str(v, "url", a->chal_url[k], sizeof a->chal_url[k]) != 0)
			continue;
		get_str(v, "token", a->chal_token[k], sizeof a->chal_token[k]);
		/* a token is base64url (RFC 8555 §8.3): anything else never reaches a path */
		if (strspn(a->chal_token[k], "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
			   "0123456789-_") != strlen(a->chal_token[k]))
			continue;
		a->nchal++;
	}
	rc = 0;
out:
	json_decref(j);
	return rc;
}

int acme_parse_time(const char *s, time_t *t)
{
	struct tm tm;
	int y, mo, d, h, mi, sec, n = 0, oh, om;
	const char *p;

	memset(&tm, 0, sizeof tm);
	if (sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d%n", &y, &mo, &d, &h, &mi, &sec, &n) != 6 || n != 19)
		return -1;
	p = s + n;
	if (*p == '.')
		for (p++; *p >= '0' && *p <= '9'; p++)
			;
	tm.tm_year = y - 1900;
	tm.tm_mon = mo - 1;
	tm.tm_mday = d;
	tm.tm_hour = h;
	tm.tm_min = mi;
	tm.tm_sec = sec;
	if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || sec > 60)
		return -1;
	*t = timegm(&tm);
	if (strcmp(p, "Z") == 0 || strcmp(p, "z") == 0)
		return 0;
	if ((p[0] == '+' || p[0] == '-') && sscanf(p + 1, "%2d:%2d", &oh, &om) == 2 &&
	    strlen(p) == 6) {
		long off = (oh * 60L + om) * 60;
		*t -= p[0] == '+' ? off : -off;
		return 0;
	}
	return -1;
}

int acme_parse_renewal_info(const char *body, size_t len, time_t *start, time_t *end)
{
	json_t *j = load(body, len), *w;
	char s[64], e[64];
	int rc = -1;

	if (j == NULL)
		return -1;
	w = json_object_get(j, "suggestedWindow");
	if (json_is_object(w) && get_str(w, "start", s, sizeof s) == 0 &&
	    get_str(w, "end", e, sizeof e) == 0 && acme_parse_time(s, start) == 0 &&
	    acme_parse_time(e, end) == 0 && *end >= *start)
		rc = 0;
	json_decref(j);
	return rc;
}
