/* What the metrics and the service manager see of certificates (SERVER.md §10): the TLS
 * library and whether it uses AES-NI, the notAfter of every certificate being served, ACME
 * order outcomes, and whether the first certificate is in (READY=1).
 * Process-wide, as the HTTP-01 tokens are: the metrics never hold a provider pointer, so a
 * scrape cannot race cert_provider_stop. */
#include "acme/cert.h"
#include "acme/internal.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

#define EXPIRY_MAX 64 /* as issue.c's MAX_ENTRIES; a manual certificate is one */

static struct {
	pthread_mutex_t mu;
	struct cert_expiry e[EXPIRY_MAX];
	size_t n;
	uint64_t orders, failures;
} st = { .mu = PTHREAD_MUTEX_INITIALIZER };

int cert_tls_aesni(void)
{
#ifdef WOLFSSL_AESNI
	return __builtin_cpu_supports("aes") && __builtin_cpu_supports("pclmul");
#else
	return 0;
#endif
}

const char *cert_tls_library_version(void)
{
	static char buf[64];

	snprintf(buf, sizeof buf, "wolfSSL %s", wolfSSL_lib_version());
	return buf;
}

const char *cert_tls_library(void)
{
	static char buf[160];
	int cpu_aes = __builtin_cpu_supports("aes") && __builtin_cpu_supports("pclmul");

#ifdef WOLFSSL_AESNI
	snprintf(buf, sizeof buf, "wolfSSL %s (build-local with AES-NI; AES-NI %s)",
		 wolfSSL_lib_version(), cpu_aes ? "in use" : "not in use: this CPU has none");
#else
	snprintf(buf, sizeof buf, "wolfSSL %s (system library without assembly; AES-NI not in use%s)",
		 wolfSSL_lib_version(), cpu_aes ? " although the CPU has it" : "");
#endif
	return buf;
}

void cert_status_reset(void)
{
	pthread_mutex_lock(&st.mu);
	st.n = 0;
	pthread_mutex_unlock(&st.mu);
}

void cert_expiry_note(const char *name, int64_t not_after)
{
	pthread_mutex_lock(&st.mu);
	size_t i = 0;
	while (i < st.n && strcmp(st.e[i].name, name) != 0)
		i++;
	if (i < EXPIRY_MAX) {
		if (i == st.n) {
			snprintf(st.e[i].name, sizeof st.e[i].name, "%s", name);
			st.n++;
		}
		st.e[i].not_after = not_after;
	}
	pthread_mutex_unlock(&st.mu);
}

size_t cert_expiry_list(struct cert_expiry *out, size_t max)
{
	pthread_mutex_lock(&st.mu);
	size_t n = st.n < max ? st.n : max;
	memcpy(out, st.e, n * sizeof *out);
	pthread_mutex_unlock(&st.mu);
	return n;
}

void cert_acme_order_note(int ok)
{
	__atomic_fetch_add(&st.orders, 1, __ATOMIC_RELAXED);
	if (!ok)
		__atomic_fetch_add(&st.failures, 1, __ATOMIC_RELAXED);
}

void cert_acme_counters(uint64_t *orders, uint64_t *failures)
{
	*orders = __atomic_load_n(&st.orders, __ATOMIC_RELAXED);
	*failures = __atomic_load_n(&st.failures, __ATOMIC_RELAXED);
}

/* For READY=1 (main): whether TLS works yet. */
enum cert_state cert_provider_state(struct cert_provider *p)
{
	enum cert_state state = CERT_SERVING;

	if (p->mode != MODE_ACME || !p->host_acme)
		return state;
	pthread_mutex_lock(&p->mu);
	if (p->nent > 0 && !p->ent[0].ctx) /* entry 0 is --hostname's (issue_init) */
		state = p->ent[0].retry_s ? CERT_FAILED : CERT_PENDING;
	pthread_mutex_unlock(&p->mu);
	return state;
}
