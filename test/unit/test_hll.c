/* The distinct-sender estimator (CONFORMANCE.md items 76-78). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "server/hll.h"
#include "server/key.h"

static void add_n(uint8_t *regs, uint8_t (*keys)[32], int n)
{
	for (int i = 0; i < n; i++)
		hll_add(regs, keys[i]);
}

static void test_ten_then_repeats(void **state)
{
	uint8_t regs[HLL_REGS] = { 0 }, keys[10][32];
	(void)state;
	assert_int_equal(hll_estimate(regs), 0);
	for (int i = 0; i < 10; i++)
		key_generate(keys[i]);
	add_n(regs, keys, 10);
	uint64_t e = hll_estimate(regs);
	assert_in_range(e, 8, 12);
	add_n(regs, keys, 5); /* the same five again change nothing */
	assert_int_equal(hll_estimate(regs), e);
}

static void test_hundred(void **state)
{
	(void)state;
	/* Several independent sets, so the range is checked on more than one draw. */
	for (int round = 0; round < 200; round++) {
		uint8_t regs[HLL_REGS] = { 0 }, keys[100][32];
		for (int i = 0; i < 100; i++)
			key_generate(keys[i]);
		add_n(regs, keys, 100);
		assert_in_range(hll_estimate(regs), 85, 115);
	}
}

static void test_zero_key_not_counted(void **state)
{
	uint8_t regs[HLL_REGS] = { 0 }, zero[32] = { 0 }, k[2][32];
	(void)state;
	hll_add(regs, zero);
	assert_int_equal(hll_estimate(regs), 0);
	key_generate(k[0]);
	key_generate(k[1]);
	add_n(regs, k, 2);
	hll_add(regs, zero);
	assert_in_range(hll_estimate(regs), 1, 3);
}

static void test_large(void **state)
{
	static uint8_t regs[HLL_REGS];
	uint8_t k[32];
	(void)state;
	for (int i = 0; i < 20000; i++) {
		key_generate(k);
		hll_add(regs, k);
	}
	/* 512 registers: about 4.6% standard error; allow four of them. */
	assert_in_range(hll_estimate(regs), 20000 * 81 / 100, 20000 * 119 / 100);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_ten_then_repeats),
		cmocka_unit_test(test_hundred),
		cmocka_unit_test(test_zero_key_not_counted),
		cmocka_unit_test(test_large),
	};
	key_init();
	return cmocka_run_group_tests(tests, NULL, NULL);
}
