/* Headless Chromium for the page tests: the DOM a page renders, and a screenshot of it.
 * Every run is bounded (the browser's process group is killed at the deadline). */
#ifndef DERPD_TEST_BROWSER_H
#define DERPD_TEST_BROWSER_H
#include <stddef.h>

/* The browser's path, or NULL when Chromium is not installed. */
const char *browser_path(void);
/* Load url (certificate errors ignored: test CAs) and return the DOM after load,
 * malloc'd, or NULL. profile: a fresh directory for the browser's profile. */
char *browser_dom(const char *url, const char *profile, int timeout_ms);
/* Save a width x height PNG of url to png. 0, or -1. */
int browser_screenshot(const char *url, const char *png, int width, int height,
		       const char *profile, int timeout_ms);
/* The text of the element with id in dom (up to the next '<'), NUL-terminated in out; 0,
 * or -1 if there is none. */
int browser_text_by_id(const char *dom, const char *id, char *out, size_t cap);

#endif
