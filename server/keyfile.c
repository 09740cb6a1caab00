/* derper's key file: load it, or create it the way derper does (spec SERVER.md §3). */
#include "server/keyfile.h"

#include "server/key.h"
#include "server/log.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define KEYFILE_MAX (64 * 1024) /* a key file is ~90 bytes; refuse to slurp anything huge */

static int fail(char *err, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(char *err, size_t len, const char *fmt, ...)
{
	va_list ap;

	if (len > 0) {
		va_start(ap, fmt);
		vsnprintf(err, len, fmt, ap);
		va_end(ap);
	}
	return -1;
}

/* Go's encoding/json matches field names case-insensitively with Unicode folding; for
 * "PrivateKey" the one non-ASCII spelling is U+212A KELVIN SIGN folding to 'k'. */
static int name_is_private_key(const char *s)
{
	const char *want = "privatekey";

	for (; *want; want++) {
		if (*want == 'k' && strncmp(s, "\xe2\x84\xaa", 3) == 0) {
			s += 3;
			continue;
		}
		if (tolower((unsigned char)*s) != *want)
			return 0;
		s++;
	}
	return *s == '\0';
}

/* Parse file contents into priv. Every PrivateKey-named field is applied in order, as
 * Go's decoder does; JSON null leaves the key unset. */
int keyfile_parse(const char *path, const char *buf, size_t n, uint8_t priv[KEY_LEN],
		  char *err, size_t errlen)
{
	json_error_t jerr;
	json_t *root, *v;
	const char *name;
	int rc = 0;

	memset(priv, 0, KEY_LEN);
	root = json_loadb(buf, n, JSON_DECODE_ANY, &jerr);
	if (root == NULL)
		return fail(err, errlen, "%s: line %d column %d: %s", path, jerr.line,
			    jerr.column, jerr.text);
	if (!json_is_object(root)) {
		json_decref(root);
		return fail(err, errlen, "%s: want a JSON object", path);
	}
	json_object_foreach(root, name, v) {
		if (!name_is_private_key(name) || json_is_null(v))
			continue;
		if (!json_is_string(v)) {
			rc = fail(err, errlen, "%s: PrivateKey: want a string", path);
			break;
		}
		if (key_parse_typed(priv, "privkey:", json_string_value(v)) != 0) {
			rc = fail(err, errlen,
				  "%s: PrivateKey: want \"privkey:\" and 64 hex digits", path);
			break;
		}
	}
	json_decref(root);
	if (rc == 0 && key_is_zero(priv))
		rc = fail(err, errlen, "%s: PrivateKey: missing or all zero", path);
	if (rc != 0)
		explicit_bzero(priv, KEY_LEN);
	return rc;
}

/* mkdir -p of path's parent directory, mode 0777 before umask (as Go's MkdirAll). */
static int make_parents(const char *path, char *err, size_t errlen)
{
	char dir[4096];
	char *slash;
	struct stat st;

	if (strlen(path) >= sizeof dir)
		return fail(err, errlen, "%s: path too long", path);
	strcpy(dir, path);
	slash = strrchr(dir, '/');
	if (slash == NULL)
		return 0;
	*slash = '\0';
	for (char *p = dir + 1; p <= dir + strlen(dir); p++) {
		if (*p != '/' && *p != '\0')
			continue;
		char c = *p;
		*p = '\0';
		if (mkdir(dir, 0777) != 0 && errno != EEXIST)
			return fail(err, errlen, "mkdir %s: %s", dir, strerror(errno));
		if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
			return fail(err, errlen, "mkdir %s: %s", dir, strerror(ENOTDIR));
		*p = c;
		if (c == '\0')
			break;
	}
	return 0;
}

/* Write content to path via a temp file in the same directory, fsync and rename, so a
 * crash leaves either no key file or a complete one. */
static int write_atomic(const char *path, const char *content, size_t n, char *err, size_t errlen)
{
	char tmp[4200];
	const char *slash;
	size_t off = 0;
	int fd, dfd;

	if (snprintf(tmp, sizeof tmp, "%s.tmpXXXXXX", path) >= (int)sizeof tmp)
		return fail(err, errlen, "%s: path too long", path);
	fd = mkostemp(tmp, O_CLOEXEC);
	if (fd < 0)
		return fail(err, errlen, "create %s: %s", tmp, strerror(errno));
	if (fchmod(fd, 0600) != 0)
		goto fail_fd;
	while (off < n) {
		ssize_t w = write(fd, content + off, n - off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			goto fail_fd;
		off += (size_t)w;
	}
	if (fsync(fd) != 0)
		goto fail_fd;
	if (close(fd) != 0) {
		fd = -1;
		goto fail_fd;
	}
	if (rename(tmp, path) != 0) {
		fd = -1;
		goto fail_fd;
	}
	/* Make the rename itself durable; failure here is not worth refusing to start. */
	slash = strrchr(path, '/');
	if (slash == NULL) {
		dfd = open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	} else {
		char dir[4200];
		snprintf(dir, sizeof dir, "%.*s", slash == path ? 1 : (int)(slash - path), path);
		dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	}
	if (dfd >= 0) {
		(void)fsync(dfd);
		close(dfd);
	}
	return 0;

fail_fd: {
		int e = errno;
		if (fd >= 0)
			close(fd);
		unlink(tmp);
		return fail(err, errlen, "write %s: %s", path, strerror(e));
	}
}

static int keyfile_create(const char *path, uint8_t priv[KEY_LEN], char *err, size_t errlen)
{
	char hex[KEY_HEX_LEN + 1], content[128];
	int n, rc;

	if (make_parents(path, err, errlen) != 0)
		return -1;
	key_generate(priv);
	key_to_hex(hex, priv);
	/* json.MarshalIndent(cfg, "", "\t") layout, no trailing newline. */
	n = snprintf(content, sizeof content, "{\n\t\"PrivateKey\": \"privkey:%s\"\n}", hex);
	rc = write_atomic(path, content, (size_t)n, err, errlen);
	explicit_bzero(hex, sizeof hex);
	explicit_bzero(content, sizeof content);
	if (rc != 0) {
		explicit_bzero(priv, KEY_LEN);
		return -1;
	}
	log_info(LS_CONFIG, "created new key file %s", path);
	return 0;
}

int keyfile_load_or_create(const char *path, uint8_t priv[32], char *err, size_t errlen)
{
	char *buf;
	size_t n = 0;
	int fd, rc;

	if (path == NULL || path[0] == '\0')
		return fail(err, errlen, "empty key file path");
	/* O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer, with
	 * SIGTERM blocked for sigwait; anything but a regular file is refused below. */
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	if (fd < 0 && errno == ENOENT)
		return keyfile_create(path, priv, err, errlen);
	if (fd < 0)
		return fail(err, errlen, "%s: %s", path, strerror(errno));
	struct stat st;
	rc = 0;
	if (fstat(fd, &st) != 0)
		rc = fail(err, errlen, "%s: %s", path, strerror(errno));
	else if (!S_ISREG(st.st_mode))
		rc = fail(err, errlen, "%s: not a regular file (%s)", path,
			  S_ISDIR(st.st_mode) ? "a directory" : S_ISFIFO(st.st_mode) ? "a FIFO"
			  : S_ISSOCK(st.st_mode) ? "a socket" : "a device");
	if (rc != 0) {
		close(fd);
		return rc;
	}
	buf = malloc(KEYFILE_MAX + 1);
	if (buf == NULL) {
		close(fd);
		return fail(err, errlen, "%s: out of memory", path);
	}
	for (;;) {
		ssize_t r = read(fd, buf + n, KEYFILE_MAX + 1 - n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			rc = fail(err, errlen, "%s: %s", path, strerror(errno));
			goto out;
		}
		if (r == 0)
			break;
		n += (size_t)r;
		if (n > KEYFILE_MAX) {
			rc = fail(err, errlen, "%s: larger than %d bytes", path, KEYFILE_MAX);
			goto out;
		}
	}
	rc = keyfile_parse(path, buf, n, priv, err, errlen);
out:
	explicit_bzero(buf, n);
	free(buf);
	close(fd);
	return rc;
}
