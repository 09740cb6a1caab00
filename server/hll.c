#include "server/hll.h"

#include <math.h>
#include <string.h>

#define NREG (HLL_REGS * 2)

void hll_add(uint8_t regs[HLL_REGS], const uint8_t key[32])
{
	uint64_t h;
	int zero = 1;

	for (int i = 0; i < 32 && zero; i++)
		zero = key[i] == 0;
	if (zero)
		return;
	/* Public keys are uniformly distributed already; a client grinding keys to skew
	 * this only distorts a debug figure. */
	memcpy(&h, key + 8, sizeof h);
	unsigned idx = (unsigned)(h & (NREG - 1)), shift = (idx & 1) * 4;
	uint64_t rest = h >> 9;
	uint8_t rank = 1;
	while (rank < 15 && !(rest & 1)) {
		rest >>= 1;
		rank++;
	}
	/* One writer (the receiving connection's worker); readers may see either value. */
	uint8_t b = __atomic_load_n(&regs[idx / 2], __ATOMIC_RELAXED);
	if (((b >> shift) & 15) < rank)
		__atomic_store_n(&regs[idx / 2], (uint8_t)((b & ~(15 << shift)) | rank << shift),
				 __ATOMIC_RELAXED);
}

uint64_t hll_estimate(const uint8_t regs[HLL_REGS])
{
	const double m = NREG, alpha = 0.7213 / (1.0 + 1.079 / NREG);
	double sum = 0;
	int zeros = 0;

	for (int i = 0; i < NREG; i++) {
		uint8_t r = (__atomic_load_n(&regs[i / 2], __ATOMIC_RELAXED) >> ((i & 1) * 4)) & 15;
		sum += ldexp(1.0, -r);
		zeros += r == 0;
	}
	double e = alpha * m * m / sum;
	if (e <= 2.5 * m && zeros > 0)
		e = m * log(m / zeros); /* linear counting: exact enough for small sets */
	return (uint64_t)llround(e);
}
