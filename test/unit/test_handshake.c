/* ClientInfo JSON decoding (CONFORMANCE.md items 7-11; PROTOCOL.md §6.3) and mesh key
 * text parsing (items 45-46). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "server/handshake.h"
#include "server/key.h"

#define MK "6d529e9d4ef632d22d4a4214cb49da8f1ba1b72697061fb24e312984c35ec8d8"

static int parse(const char *json, struct client_info *ci, char *err)
{
	return handshake_parse_client_info(json, strlen(json), ci, err, 160);
}

static void test_empty_and_null(void **state)
{
	struct client_info ci;
	char err[160];
	(void)state;
	assert_int_equal(parse("{}", &ci, err), 0);
	assert_int_equal(ci.version, 0);
	assert_false(ci.has_mesh_key);
	assert_int_equal(parse("null", &ci, err), 0);
	assert_int_equal(parse(" {\"version\":2,\"CanAckPings\":false} \n", &ci, err), 0);
	assert_int_equal(ci.version, 2);
}

static void test_valid_mesh_key_any_case(void **state)
{
	const char *forms[] = {
		"{\"Version\":5,\"MeshKey\":\"" MK "\"}",
		"{\"version\":5,\"meshKey\":\"" MK "\"}",
		"{\"VERSION\":5,\"meshkey\":\"" MK "\"}",
	};
	uint8_t want[32];
	(void)state;
	assert_int_equal(key_from_hex(want, MK, 64), 0);
	for (size_t i = 0; i < sizeof forms / sizeof *forms; i++) {
		struct client_info ci;
		char err[160];
		assert_int_equal(parse(forms[i], &ci, err), 0);
		assert_int_equal(ci.version, 5);
		assert_true(ci.has_mesh_key);
		assert_memory_equal(ci.mesh_key, want, 32);
	}
}

static void test_invalid_mesh_keys(void **state)
{
	const char *bad[] = {
		"{\"version\":5,\"meshKey\":\"abcdefg\"}",
		"{\"meshKey\":\"" MK "abcd\"}",     /* 68 digits */
		"{\"meshKey\":\"" MK "a\"}",        /* odd length */
		"{\"meshKey\":null}",
		"{\"meshKey\":5}",
		"{\"meshKey\":\"zz529e9d4ef632d22d4a4214cb49da8f1ba1b72697061fb24e312984c35ec8d8\"}",
	};
	(void)state;
	for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
		struct client_info ci;
		char err[160];
		assert_int_equal(parse(bad[i], &ci, err), -1);
		assert_non_null(strstr(err, "invalid mesh key"));
	}
}

static void test_wrong_types_and_garbage(void **state)
{
	const char *bad[] = {
		"{\"version\":\"2\"}", "{\"version\":2.5}", "{\"CanAckPings\":1}",
		"{\"IsProber\":\"yes\"}", "{\"AppName\":3}", "{} {}", "{\"version\":2",
		"[]", "5", "\"x\"", "", "not json",
	};
	(void)state;
	for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
		struct client_info ci;
		char err[160];
		assert_int_equal(parse(bad[i], &ci, err), -1);
	}
}

static void test_unknown_and_null_fields(void **state)
{
	struct client_info ci;
	char err[160];
	(void)state;
	assert_int_equal(parse("{\"foo\":[1,2],\"version\":null,\"IsProber\":true,"
			       "\"AppName\":\"x\",\"CanAckPings\":null}", &ci, err), 0);
	assert_int_equal(ci.version, 0);
	assert_true(ci.is_prober);
}

static void test_mesh_key_text(void **state)
{
	uint8_t k[32];
	(void)state;
	assert_int_equal(key_parse_mesh(k, "  " MK "\n", strlen("  " MK "\n")), 0);
	assert_int_equal(key_parse_mesh(k, "badf00d", 7), -1);
	assert_int_equal(key_parse_typed(k, "privkey:", "privkey:" MK), 0);
	assert_int_equal(key_parse_typed(k, "privkey:", "nodekey:" MK), -1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_empty_and_null),
		cmocka_unit_test(test_valid_mesh_key_any_case),
		cmocka_unit_test(test_invalid_mesh_keys),
		cmocka_unit_test(test_wrong_types_and_garbage),
		cmocka_unit_test(test_unknown_and_null_fields),
		cmocka_unit_test(test_mesh_key_text),
	};
	key_init();
	return cmocka_run_group_tests(tests, NULL, NULL);
}
