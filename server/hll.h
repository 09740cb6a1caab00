/* Approximate count of distinct keys (HyperLogLog: 512 four-bit registers in 256 bytes,
 * linear counting for small sets; about 3% error at 100 keys, 4.6% when large): how many different senders a client has heard from, for
 * /debug/traffic's UniqueSenders (CONFORMANCE.md items 76-79). */
#ifndef DERPD_HLL_H
#define DERPD_HLL_H
#include <stdint.h>

#define HLL_REGS 256 /* bytes: two registers each */

/* Add a 32-byte key (the zero key is not counted). */
void hll_add(uint8_t regs[HLL_REGS], const uint8_t key[32]);
/* The estimate, rounded; safe to call while another thread adds (a debug figure). */
uint64_t hll_estimate(const uint8_t regs[HLL_REGS]);

#endif
