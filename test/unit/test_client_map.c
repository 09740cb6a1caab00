/* client_map: registration, lookup and the duplicate-key policies
 * (CONFORMANCE.md items 65-73, 94, 96; PROTOCOL.md §8). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "server/client_map.h"
#include "server/key.h"

static uint8_t K[32] = { 1, 2, 3 };

struct fake {
	struct cm_member m;
	const char *name;
};

static void fake_init(struct fake *f, const char *name, const uint8_t *key)
{
	memset(f, 0, sizeof *f);
	f->m.key = key;
	f->m.owner = f;
	f->name = name;
}

static struct cm_gauges gauges(struct client_map *m)
{
	struct cm_gauges g;
	client_map_gauges(m, &g);
	return g;
}

static void found(void *owner, void *arg)
{
	*(void **)arg = owner;
}

static void test_one_comes_and_goes(void **state)
{
	(void)state;
	for (int pol = 0; pol < 2; pol++) {
		struct client_map *m = client_map_new(4, (enum cm_policy)pol);
		struct fake c1;
		fake_init(&c1, "c1", K);
		client_map_register(m, &c1.m);
		assert_ptr_equal(client_map_active(m, K), &c1);
		assert_int_equal(client_map_count(m, K), 1);
		assert_false(c1.m.dup);
		assert_false(c1.m.disabled);
		assert_int_equal(gauges(m).keys, 1);
		assert_int_equal(client_map_unregister(m, &c1.m), 1);
		assert_null(client_map_active(m, K));
		assert_int_equal(client_map_count(m, K), 0);
		assert_int_equal(gauges(m).keys, 0);
		client_map_free(m);
	}
}

static void test_small_overlap_replacement(void **state)
{
	(void)state;
	for (int pol = 0; pol < 2; pol++) {
		struct client_map *m = client_map_new(4, (enum cm_policy)pol);
		struct fake c1, c2;
		fake_init(&c1, "c1", K);
		fake_init(&c2, "c2", K);
		client_map_register(m, &c1.m);
		client_map_register(m, &c2.m);
		assert_int_equal(gauges(m).dup_conns, 2);
		assert_int_equal(gauges(m).dup_keys, 1);
		assert_int_equal(gauges(m).total_dup, 1);
		assert_true(c1.m.dup && c2.m.dup);
		assert_false(c1.m.disabled || c2.m.disabled);
		assert_ptr_equal(client_map_active(m, K), &c2); /* the newest gets the traffic */
		assert_int_equal(client_map_unregister(m, &c1.m), 0);
		assert_ptr_equal(client_map_active(m, K), &c2);
		assert_false(c2.m.dup);
		assert_int_equal(gauges(m).dup_conns, 0);
		assert_int_equal(gauges(m).dup_keys, 0);
		assert_int_equal(gauges(m).keys, 1);
		client_map_free(m);
	}
}

static void test_concurrent_dups_get_disabled(void **state)
{
	(void)state;
	struct client_map *m = client_map_new(4, CM_DISABLE_FIGHTERS);
	struct fake c1, c2, c3;
	fake_init(&c1, "c1", K);
	fake_init(&c2, "c2", K);
	fake_init(&c3, "c3", K);
	client_map_register(m, &c1.m);
	client_map_register(m, &c2.m);
	client_map_note_activity(m, &c2.m);
	assert_false(c1.m.disabled || c2.m.disabled);
	client_map_note_activity(m, &c1.m);
	assert_true(c1.m.disabled && c2.m.disabled);
	assert_null(client_map_active(m, K));
	void *got = NULL;
	assert_int_equal(client_map_with_active(m, K, found, &got), CM_DUP_FIGHT);

	client_map_register(m, &c3.m);
	assert_ptr_equal(client_map_active(m, K), &c3);
	assert_false(c3.m.disabled);
	assert_int_equal(gauges(m).dup_keys, 1);
	assert_int_equal(gauges(m).dup_conns, 3);

	client_map_unregister(m, &c3.m);
	assert_null(client_map_active(m, K));
	assert_int_equal(gauges(m).dup_keys, 1);
	assert_int_equal(gauges(m).dup_conns, 2);
	client_map_unregister(m, &c2.m);
	assert_ptr_equal(client_map_active(m, K), &c1);
	assert_false(c1.m.disabled);
	assert_false(c1.m.dup);
	assert_int_equal(gauges(m).dup_keys, 0);
	assert_int_equal(gauges(m).dup_conns, 0);
	client_map_free(m);
}

static void test_concurrent_dups_three_parties(void **state)
{
	(void)state;
	struct client_map *m = client_map_new(4, CM_DISABLE_FIGHTERS);
	struct fake c1, c2, c3;
	fake_init(&c1, "c1", K);
	fake_init(&c2, "c2", K);
	fake_init(&c3, "c3", K);
	client_map_register(m, &c1.m);
	client_map_register(m, &c2.m);
	client_map_register(m, &c3.m);
	client_map_note_activity(m, &c1.m);
	assert_true(c1.m.disabled && c2.m.disabled && c3.m.disabled);
	assert_null(client_map_active(m, K));
	client_map_free(m);
}

static void test_activity_promotes_primary_when_nil(void **state)
{
	(void)state;
	struct client_map *m = client_map_new(4, CM_DISABLE_FIGHTERS);
	struct fake c1, c2, c3;
	fake_init(&c1, "c1", K);
	fake_init(&c2, "c2", K);
	fake_init(&c3, "c3", K);
	client_map_register(m, &c1.m);
	client_map_register(m, &c2.m);
	client_map_register(m, &c3.m);
	assert_ptr_equal(client_map_active(m, K), &c3);
	client_map_note_activity(m, &c2.m);
	assert_ptr_equal(client_map_active(m, K), &c3);
	client_map_unregister(m, &c3.m);
	assert_ptr_equal(client_map_active(m, K), &c2);
	client_map_free(m);
}

static void test_last_writer_is_active(void **state)
{
	(void)state;
	struct client_map *m = client_map_new(4, CM_LAST_WRITER_ACTIVE);
	struct fake c1, c2;
	fake_init(&c1, "c1", K);
	fake_init(&c2, "c2", K);
	client_map_register(m, &c1.m);
	client_map_register(m, &c2.m);
	assert_ptr_equal(client_map_active(m, K), &c2);
	client_map_note_activity(m, &c1.m);
	assert_ptr_equal(client_map_active(m, K), &c1);
	assert_false(c1.m.disabled || c2.m.disabled);
	client_map_note_activity(m, &c2.m);
	assert_ptr_equal(client_map_active(m, K), &c2);
	/* Alternating many times keeps working (the history is bounded, not a leak). */
	for (int i = 0; i < 1000; i++)
		client_map_note_activity(m, i % 2 ? &c1.m : &c2.m);
	assert_ptr_equal(client_map_active(m, K), &c1);
	client_map_note_activity(m, &c2.m);
	client_map_unregister(m, &c2.m);
	assert_ptr_equal(client_map_active(m, K), &c1);
	assert_false(c1.m.disabled);
	client_map_free(m);
}

/* Many keys across shards: lookups find exactly the right owner; growth keeps them. */
static void test_many_keys(void **state)
{
	(void)state;
	enum { N = 5000 };
	struct client_map *m = client_map_new(8, CM_LAST_WRITER_ACTIVE);
	static uint8_t keys[N][32];
	static struct fake f[N];
	for (int i = 0; i < N; i++) {
		key_generate(keys[i]);
		fake_init(&f[i], "k", keys[i]);
		client_map_register(m, &f[i].m);
	}
	assert_int_equal(gauges(m).keys, N);
	for (int i = 0; i < N; i++) {
		void *got = NULL;
		assert_int_equal(client_map_with_active(m, keys[i], found, &got), CM_FOUND);
		assert_ptr_equal(got, &f[i]);
	}
	uint8_t unknown[32] = { 0xee };
	void *got = NULL;
	assert_int_equal(client_map_with_active(m, unknown, found, &got), CM_UNKNOWN);
	assert_null(got);
	for (int i = 0; i < N; i += 2)
		assert_int_equal(client_map_unregister(m, &f[i].m), 1);
	for (int i = 0; i < N; i++)
		assert_ptr_equal(client_map_active(m, keys[i]), i % 2 ? &f[i] : NULL);
	assert_int_equal(gauges(m).keys, N / 2);
	client_map_free(m);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_one_comes_and_goes),
		cmocka_unit_test(test_small_overlap_replacement),
		cmocka_unit_test(test_concurrent_dups_get_disabled),
		cmocka_unit_test(test_concurrent_dups_three_parties),
		cmocka_unit_test(test_activity_promotes_primary_when_nil),
		cmocka_unit_test(test_last_writer_is_active),
		cmocka_unit_test(test_many_keys),
	};
	key_init();
	return cmocka_run_group_tests(tests, NULL, NULL);
}
