/* A setec-compatible secrets server on loopback for the tests (test_secrets, test_probe):
 * POST /api/get answered {"Value":<base64>,"Version":N}, 304 for UpdateIfChanged with the
 * current version, or a 403 / garbage on demand. One thread, one request per connection. */
#ifndef DERPD_TEST_SETEC_FAKE_H
#define DERPD_TEST_SETEC_FAKE_H
#include <pthread.h>
#include <stdint.h>

enum setec_mode { SETEC_OK, SETEC_FORBIDDEN, SETEC_GARBAGE };

extern struct setec_fake {
	pthread_mutex_t mu;
	int lfd, stop;
	uint16_t port;
	pthread_t thread;
	enum setec_mode mode;
	char value[128];          /* the secret's text */
	long long version;
	/* what the last request carried */
	int requests, not_modified, bad_headers;
	char last_name[256];
	long long last_version;
	int last_update_if_changed;
} setec;

/* What the next requests get. */
void setec_set(enum setec_mode m, const char *value, long long version);
/* One of setec's counters, read under its lock. */
int setec_get(int *field);
/* Listen (on the same port as before after a stop) and serve; no-op if running. */
void setec_start(void);
/* Stop serving and close the port: connections are refused; no-op if stopped. */
void setec_stop(void);

#endif
