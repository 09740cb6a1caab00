/* The mesh forwarder table (CONFORMANCE.md items 50-60; SERVER.md §11). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <pthread.h>
#include <cmocka.h>

#include "server/forwarders.h"
#include "server/key.h"

static uint8_t u1[32] = { 1 }, u2[32] = { 2 }, u3[32] = { 3 };
static int F1, F2, F3, F55, F100, F999;

static struct fwd_counters counters(struct fwd_table *t)
{
	struct fwd_counters c;
	fwd_counters(t, &c);
	return c;
}

static void test_registration(void **state)
{
	(void)state;
	struct fwd_table *t = fwd_new(4);

	fwd_register(t, u1, &F1);                       /* 50 */
	fwd_register(t, u2, &F2);
	assert_ptr_equal(fwd_get(t, u1), &F1);
	assert_ptr_equal(fwd_get(t, u2), &F2);
	assert_int_equal(counters(t).keys, 2);

	assert_int_equal(fwd_unregister(t, u2, &F999, 0), 0); /* 51: not its forwarder */
	assert_ptr_equal(fwd_get(t, u2), &F2);
	assert_int_equal(counters(t).delete_other_value, 1);

	assert_int_equal(fwd_unregister(t, u3, &F1, 0), 0);   /* 52: unknown key */
	assert_int_equal(counters(t).keys, 2);

	assert_int_equal(fwd_unregister(t, u2, &F2, 0), 1);   /* 53: u2 leaves the region */
	assert_false(fwd_known(t, u2));
	assert_int_equal(counters(t).keys, 1);

	fwd_register(t, u1, &F100);                     /* 54: multi, F1 preferred */
	fwd_register(t, u1, &F100);                     /* duplicate ignored */
	assert_int_equal(fwd_count(t, u1), 2);
	assert_ptr_equal(fwd_get(t, u1), &F1);
	assert_int_equal(counters(t).multi_created, 1);

	fwd_unregister(t, u1, &F55, 0);                 /* 55: not in the set */
	assert_int_equal(fwd_count(t, u1), 2);

	fwd_unregister(t, u1, &F1, 0);                  /* 56: collapses to F100 */
	assert_int_equal(fwd_count(t, u1), 1);
	assert_ptr_equal(fwd_get(t, u1), &F100);
	assert_int_equal(counters(t).multi_deleted, 1);

	/* 57: u1 is connected locally; unregistering its forwarder leaves the marker. */
	fwd_local_add(t, u1);
	assert_int_equal(fwd_unregister(t, u1, &F100, 1), 0);
	assert_true(fwd_known(t, u1));
	assert_null(fwd_get(t, u1));

	/* 58: the local u1 disconnects: the entry goes. */
	assert_int_equal(fwd_local_gone(t, u1), 1);
	assert_false(fwd_known(t, u1));

	/* 59: u1 has forwarder F2; a local u1 leaving keeps F2. */
	fwd_register(t, u1, &F2);
	fwd_local_add(t, u1);
	assert_int_equal(fwd_local_gone(t, u1), 0);
	assert_ptr_equal(fwd_get(t, u1), &F2);
	fwd_unregister(t, u1, &F2, 0);

	/* 60: local-only u1 then a mesh peer registers F3: plain F3, not multi. */
	fwd_local_add(t, u1);
	uint64_t created = counters(t).multi_created;
	fwd_register(t, u1, &F3);
	assert_int_equal(fwd_count(t, u1), 1);
	assert_ptr_equal(fwd_get(t, u1), &F3);
	assert_int_equal(counters(t).multi_created, created);
	fwd_free(t);
}

static void test_preferred_is_earliest_remaining(void **state)
{
	(void)state;
	struct fwd_table *t = fwd_new(4);
	fwd_register(t, u1, &F1);
	fwd_register(t, u1, &F2);
	fwd_register(t, u1, &F3);
	fwd_unregister(t, u1, &F1, 0);
	assert_ptr_equal(fwd_get(t, u1), &F2);
	fwd_free(t);
}

/* 61: while forwarders for one key churn (never all gone at once), every one of 5000
 * lookups finds one; the entry is never empty or torn mid-update. */
struct churn {
	struct fwd_table *t;
	int stop;
};

static void *churn_main(void *arg)
{
	struct churn *ch = arg;
	void *f[3] = { &F1, &F2, &F3 };

	for (unsigned i = 0; !__atomic_load_n(&ch->stop, __ATOMIC_ACQUIRE); i++) {
		/* add the next one before removing the oldest: at least two stay registered */
		fwd_register(ch->t, u1, f[(i + 1) % 3]);
		fwd_unregister(ch->t, u1, f[i % 3], 0);
		fwd_register(ch->t, u1, f[i % 3]);
	}
	return NULL;
}

static void found_one(void *f, void *arg)
{
	if (f == &F1 || f == &F2 || f == &F3)
		(*(int *)arg)++;
}

static void test_multi_forwarder_churn(void **state)
{
	(void)state;
	struct churn ch = { fwd_new(4), 0 };
	pthread_t th;
	int delivered = 0;

	fwd_register(ch.t, u1, &F1);
	fwd_register(ch.t, u1, &F2);
	assert_int_equal(pthread_create(&th, NULL, churn_main, &ch), 0);
	for (int i = 0; i < 5000; i++)
		fwd_with(ch.t, u1, found_one, &delivered);
	__atomic_store_n(&ch.stop, 1, __ATOMIC_RELEASE);
	pthread_join(th, NULL);
	assert_int_equal(delivered, 5000);
	fwd_free(ch.t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_registration),
		cmocka_unit_test(test_preferred_is_earliest_remaining),
		cmocka_unit_test(test_multi_forwarder_churn),
	};
	key_init();
	return cmocka_run_group_tests(tests, NULL, NULL);
}
