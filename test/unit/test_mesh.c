/* mesh/mesh.c without a network: the mesh key text (derper's key.ParseDERPMesh), where the
 * key comes from (SERVER.md §11: --dev env, the file, nothing), and -mesh-with entries. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mesh/mesh.h"
#include "server/config.h"
#include "server/key.h"

#define KEY_HEX "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

static const uint8_t KEY[32] = {
	0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef,
	0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef,
};

static int parse_key(const char *s, uint8_t out[32])
{
	char err[200];

	memset(out, 0xee, 32);
	return mesh_parse_key(s, strlen(s), out, NULL, err, sizeof err);
}

static void test_parse_key(void **state)
{
	uint8_t k[32];
	char err[200];

	(void)state;
	assert_int_equal(parse_key(KEY_HEX, k), 0);
	assert_memory_equal(k, KEY, 32);
	assert_int_equal(parse_key("0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF",
				   k), 0);
	assert_memory_equal(k, KEY, 32);
	/* Go's strings.TrimSpace: ASCII and Unicode white space, both ends */
	assert_int_equal(parse_key(" \t\r\n\v\f" KEY_HEX "\n\n", k), 0);
	assert_memory_equal(k, KEY, 32);
	assert_int_equal(parse_key("\xc2\x85\xc2\xa0\xe1\x9a\x80\xe2\x80\x80\xe2\x80\x8a" KEY_HEX
				   "\xe2\x80\xa8\xe2\x80\xa9\xe2\x80\xaf\xe2\x81\x9f\xe3\x80\x80", k), 0);
	assert_memory_equal(k, KEY, 32);
	/* not white space: U+200B (zero width space), a lone continuation byte */
	assert_int_equal(parse_key("\xe2\x80\x8b" KEY_HEX, k), -1);
	assert_int_equal(parse_key(KEY_HEX "\x80", k), -1);
	assert_int_equal(parse_key("", k), -1);
	assert_int_equal(parse_key("   ", k), -1);
	assert_int_equal(parse_key(KEY_HEX "0", k), -1);
	assert_int_equal(parse_key(KEY_HEX + 1, k), -1);
	assert_int_equal(parse_key("x123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", k), -1);
	assert_int_equal(parse_key("0x23456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", k), -1);
	assert_int_equal(parse_key("01234567 9abcdef0123456789abcdef0123456789abcdef0123456789abcdef", k), -1);
	assert_int_equal(mesh_parse_key(KEY_HEX, 63, k, NULL, err, sizeof err), -1);
	assert_non_null(strstr(err, "invalid mesh key"));
	/* all zeros parses (it means "no key" to the caller) */
	assert_int_equal(parse_key("0000000000000000000000000000000000000000000000000000000000000000", k), 0);
	assert_true(key_is_zero(k));
}

static void default_config(struct config *cfg)
{
	char *argv[] = { "derpd", "-c", "/tmp/unused.key", "-a", "127.0.0.1:0", NULL };

	assert_int_equal(config_parse(cfg, 5, argv), 0);
	cfg->mesh_psk_file = "";
}

static void test_load_key_sources(void **state)
{
	struct config cfg;
	uint8_t k[32];
	int have = -1;
	char err[300], dir[] = "/tmp/derpd-mesh-unit-XXXXXX", path[128];

	(void)state;
	assert_non_null(mkdtemp(dir));
	default_config(&cfg);
	/* nothing configured */
	assert_int_equal(mesh_load_key(&cfg, k, NULL, &have, err, sizeof err), 0);
	assert_int_equal(have, 0);

	/* the file */
	snprintf(path, sizeof path, "%s/mesh.key", dir);
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	fputs("  " KEY_HEX "\n", f);
	fclose(f);
	cfg.mesh_psk_file = path;
	assert_int_equal(mesh_load_key(&cfg, k, NULL, &have, err, sizeof err), 0);
	assert_int_equal(have, 1);
	assert_memory_equal(k, KEY, 32);

	/* --dev ignores the file and reads the environment */
	cfg.dev = 1;
	unsetenv(MESH_KEY_ENV);
	assert_int_equal(mesh_load_key(&cfg, k, NULL, &have, err, sizeof err), 0);
	assert_int_equal(have, 0);
	setenv(MESH_KEY_ENV, "", 1);
	assert_int_equal(mesh_load_key(&cfg, k, NULL, &have, err, sizeof err), 0);
	assert_int_equal(have, 0);
	setenv(MESH_KEY_ENV, "6d529e9d4ef632d22d4a4214cb49da8f1ba1b72697061fb24e312984c35ec8d8", 1);
	assert_int_equal(mesh_load_key(&cfg, k, NULL, &have, err, sizeof err), 0);
	assert_int_equal(have, 1);
	assert_int_equal(k[0], 0x6d);
	setenv(MESH_KEY_ENV, "badf00d", 1);
	assert_int_equal(mesh_load_key(&cfg, k, NULL, &have, err, sizeof err), -1);
	assert_non_null(strstr(err, "invalid mesh key"));
	unsetenv(MESH_KEY_ENV);
	cfg.dev = 0;

	/* an empty file is no key; white space only is an invalid one; missing is an error */
	f = fopen(path, "w");
	fclose(f);
	assert_int_equal(mesh_load_key(&cfg, k, NULL, &have, err, sizeof err), 0);
	assert_int_equal(have, 0);
	f = fopen(path, "w");
	fputs(" \n", f);
	fclose(f);
	assert_int_equal(mesh_load_key(&cfg, k, NULL, &have, err, sizeof err), -1);
	assert_non_null(strstr(err, "invalid mesh key"));
	unlink(path);
	assert_int_equal(mesh_load_key(&cfg, k, NULL, &have, err, sizeof err), -1);
	assert_non_null(strstr(err, path));
	rmdir(dir);
}

/* The key text is kept as written, trimmed, case and all: it is what derpd sends as
 * "meshKey", and derpers before key.DERPMesh compare that text with their own file's. */
static void test_load_key_text_as_written(void **state)
{
	struct config cfg;
	uint8_t k[32];
	int have = -1;
	char err[300], text[KEY_HEX_LEN + 1], dir[] = "/tmp/derpd-mesh-unit-XXXXXX", path[128];
	const char *upper = "0123456789ABCDEF0123456789abcdef0123456789ABCDEF0123456789ABCDEF";

	(void)state;
	assert_non_null(mkdtemp(dir));
	default_config(&cfg);
	snprintf(path, sizeof path, "%s/mesh.key", dir);
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	fprintf(f, " \t%s\r\n", upper);
	fclose(f);
	cfg.mesh_psk_file = path;
	memset(text, 'x', sizeof text);
	assert_int_equal(mesh_load_key(&cfg, k, text, &have, err, sizeof err), 0);
	assert_int_equal(have, 1);
	assert_memory_equal(k, KEY, 32);
	assert_string_equal(text, upper);

	/* no key: empty text */
	unlink(path);
	cfg.mesh_psk_file = "";
	assert_int_equal(mesh_load_key(&cfg, k, text, &have, err, sizeof err), 0);
	assert_int_equal(have, 0);
	assert_string_equal(text, "");
	rmdir(dir);
}

static int target(const char *s, struct mesh_target *t)
{
	char err[300];

	return mesh_parse_target(s, strlen(s), t, err, sizeof err);
}

static void test_parse_target(void **state)
{
	struct mesh_target t;

	(void)state;
	assert_int_equal(target("derp2.example.com", &t), 0);
	assert_string_equal(t.name, "derp2.example.com");
	assert_string_equal(t.dial, "derp2.example.com");
	assert_int_equal(t.port, 443);
	assert_true(t.tls);

	assert_int_equal(target("127.0.0.1:41234", &t), 0);
	assert_string_equal(t.name, "127.0.0.1:41234");
	assert_string_equal(t.dial, "127.0.0.1");
	assert_false(t.via);
	assert_int_equal(t.port, 41234);
	assert_false(t.tls);

	assert_int_equal(target("derp2.example.com:443", &t), 0);
	assert_true(t.tls);

	/* host/dialhost: the name (and its port) for the URL, the dial host for TCP */
	assert_int_equal(target("derp2.example.com:8080/10.0.0.2", &t), 0);
	assert_string_equal(t.name, "derp2.example.com:8080");
	assert_string_equal(t.dial, "10.0.0.2");
	assert_true(t.via);
	assert_int_equal(t.port, 8080);
	assert_int_equal(target("derp2.example.com/2001:db8::2", &t), 0);
	assert_string_equal(t.dial, "2001:db8::2");
	assert_int_equal(target("derp2.example.com/[2001:db8::2]", &t), 0);
	assert_string_equal(t.dial, "2001:db8::2");

	assert_int_equal(target("[::1]:3340", &t), 0);
	assert_string_equal(t.name, "[::1]:3340");
	assert_string_equal(t.dial, "::1");
	assert_int_equal(t.port, 3340);
	assert_int_equal(target("[::1]", &t), 0);
	assert_int_equal(t.port, 443);

	static const char *const bad[] = {
		"", "a/b/c", "a:1/b/c", "/x", "a/", "::1", "a:", "a:0", "a:65536", "a:x", "[::1",
		"[::1]x", "[]:1", " a:1", "a:1/b:2", "a:1/[::1]:2",
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
		if (target(bad[i], &t) == 0)
			fail_msg("\"%s\" accepted", bad[i]);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse_key),
		cmocka_unit_test(test_load_key_sources),
		cmocka_unit_test(test_load_key_text_as_written),
		cmocka_unit_test(test_parse_target),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
