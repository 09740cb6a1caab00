/* keyfile_load_or_create: derper's key file format, creation (mode, layout,
 * atomicity, parent directories) and refusal of anything malformed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "server/key.h"
#include "server/keyfile.h"

static char dir[64];

static int setup(void **state)
{
	(void)state;
	snprintf(dir, sizeof dir, "/tmp/derpd-keyfile-XXXXXX");
	return mkdtemp(dir) ? 0 : -1;
}

/* rm -r of the test directory; paths here are shallow and ours. */
static void remove_tree(const char *path)
{
	DIR *d = opendir(path);
	struct dirent *e;
	char sub[512];

	if (d == NULL) {
		unlink(path);
		return;
	}
	while ((e = readdir(d)) != NULL) {
		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
		remove_tree(sub);
	}
	closedir(d);
	rmdir(path);
}

static int teardown(void **state)
{
	(void)state;
	remove_tree(dir);
	return 0;
}

static void write_file(const char *path, const char *content, size_t n)
{
	int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0644);

	assert_true(fd >= 0);
	assert_int_equal(write(fd, content, n), (ssize_t)n);
	close(fd);
}

static size_t read_file(const char *path, char *buf, size_t len)
{
	int fd = open(path, O_RDONLY);
	ssize_t n;

	assert_true(fd >= 0);
	n = read(fd, buf, len - 1);
	close(fd);
	assert_true(n >= 0);
	buf[n] = '\0';
	return (size_t)n;
}

static int count_entries(const char *path)
{
	DIR *d = opendir(path);
	struct dirent *e;
	int n = 0;

	assert_non_null(d);
	while ((e = readdir(d)) != NULL)
		if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
			n++;
	closedir(d);
	return n;
}

static void test_create(void **state)
{
	char path[300], parent[200], buf[512], want[256], hex[KEY_HEX_LEN + 1], err[256] = "";
	uint8_t priv[32];
	struct stat st;
	mode_t old = umask(022);

	(void)state;
	snprintf(parent, sizeof parent, "%s/var/lib/derper", dir);
	snprintf(path, sizeof path, "%s/derper.key", parent);
	assert_int_equal(keyfile_load_or_create(path, priv, err, sizeof err), 0);
	umask(old);
	assert_false(key_is_zero(priv));
	/* Clamped X25519 scalar. */
	assert_int_equal(priv[0] & 7, 0);
	assert_int_equal(priv[31] & 0xc0, 0x40);

	/* derper's layout: MarshalIndent with a tab, no trailing newline. */
	key_to_hex(hex, priv);
	snprintf(want, sizeof want, "{\n\t\"PrivateKey\": \"privkey:%s\"\n}", hex);
	read_file(path, buf, sizeof buf);
	assert_string_equal(buf, want);

	assert_int_equal(stat(path, &st), 0);
	assert_true(S_ISREG(st.st_mode));
	assert_int_equal(st.st_mode & 0777, 0600);
	/* Parents: 0777 less the umask. */
	assert_int_equal(stat(parent, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0755);
	/* Atomic write left no temp file beside the key. */
	assert_int_equal(count_entries(parent), 1);
}

static void test_create_ignores_umask_for_file(void **state)
{
	char path[256], err[256];
	uint8_t priv[32];
	struct stat st;
	mode_t old = umask(0);

	(void)state;
	snprintf(path, sizeof path, "%s/k.json", dir);
	assert_int_equal(keyfile_load_or_create(path, priv, err, sizeof err), 0);
	umask(old);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
}

/* A relative path with no directory part works (the file lands in the cwd). */
static void test_create_relative(void **state)
{
	char cwd[512], err[256], buf[256];
	uint8_t priv[32], again[32];

	(void)state;
	assert_non_null(getcwd(cwd, sizeof cwd));
	assert_int_equal(chdir(dir), 0);
	assert_int_equal(keyfile_load_or_create("derper.key", priv, err, sizeof err), 0);
	assert_int_equal(keyfile_load_or_create("derper.key", again, err, sizeof err), 0);
	read_file("derper.key", buf, sizeof buf);
	assert_int_equal(chdir(cwd), 0);
	assert_memory_equal(priv, again, 32);
	assert_int_equal(count_entries(dir), 1);
}

static void test_load_existing(void **state)
{
	char path[256], before[512], after[512], err[256];
	uint8_t a[32], b[32];
	struct stat st1, st2;

	(void)state;
	snprintf(path, sizeof path, "%s/derper.key", dir);
	assert_int_equal(keyfile_load_or_create(path, a, err, sizeof err), 0);
	read_file(path, before, sizeof before);
	assert_int_equal(stat(path, &st1), 0);
	assert_int_equal(keyfile_load_or_create(path, b, err, sizeof err), 0);
	assert_memory_equal(a, b, 32);
	read_file(path, after, sizeof after);
	assert_string_equal(before, after);
	assert_int_equal(stat(path, &st2), 0);
	assert_int_equal(st1.st_ino, st2.st_ino); /* not rewritten */
}

/* Files derper could have written or read: field name in any case (including the
 * Kelvin sign Go folds to k), unknown fields, whitespace, upper-case hex. */
static void test_load_variants(void **state)
{
	static const char *const fmt[] = {
		"{\"PrivateKey\": \"privkey:%s\"}",
		"{\"privatekey\":\"privkey:%s\"}",
		"{\"PRIVATEKEY\": \"privkey:%s\", \"Other\": [1, {\"x\": null}]}",
		"{\"Private\xe2\x84\xaa" "ey\": \"privkey:%s\"}",
		"\n\t {\"Foo\": 1,\n \"PrivateKey\" : \"privkey:%s\" } \n",
		"{\"PrivateKey\": null, \"privateKey\": \"privkey:%s\"}",
	};
	char path[256], content[512], hex[KEY_HEX_LEN + 1], err[256];
	uint8_t want[32], got[32];

	(void)state;
	key_generate(want);
	key_to_hex(hex, want);
	snprintf(path, sizeof path, "%s/derper.key", dir);
	for (size_t i = 0; i < sizeof fmt / sizeof fmt[0]; i++) {
		int n = snprintf(content, sizeof content, fmt[i], hex);
		write_file(path, content, (size_t)n);
		memset(got, 0, sizeof got);
		if (keyfile_load_or_create(path, got, err, sizeof err) != 0)
			fail_msg("variant %zu refused: %s", i, err);
		assert_memory_equal(got, want, 32);
	}
	/* Upper-case hex digits are accepted too. */
	for (char *p = hex; *p; p++)
		if (*p >= 'a' && *p <= 'f')
			*p = (char)(*p - 'a' + 'A');
	snprintf(content, sizeof content, "{\"PrivateKey\": \"privkey:%s\"}", hex);
	write_file(path, content, strlen(content));
	assert_int_equal(keyfile_load_or_create(path, got, err, sizeof err), 0);
	assert_memory_equal(got, want, 32);
}

/* Every malformed file: -1, a message naming the file, and the file left as it was. */
static void test_malformed(void **state)
{
	static const char *const bad[] = {
		"", " ", "{", "[]", "null", "\"privkey:x\"", "{}", "{\"PrivateKey\": null}",
		"{\"PrivateKey\": 5}", "{\"PrivateKey\": {}}", "{\"PrivateKey\": true}",
		"{\"PrivateKey\": \"\"}", "{\"PrivateKey\": \"privkey:abc\"}",
		"{\"PrivateKey\": \"nodekey:0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20\"}",
		"{\"PrivateKey\": \"privkey:0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f2\"}",
		"{\"PrivateKey\": \"privkey:0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f2000\"}",
		"{\"PrivateKey\": \"privkey:0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1g20\"}",
		"{\"PrivateKey\": \" privkey:0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20\"}",
		"{\"PrivateKey\": \"privkey:0000000000000000000000000000000000000000000000000000000000000000\"}",
		"{\"PrivateKey\": \"privkey:0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20\"} x",
		"{\"PrivateKey\": \"privkey:0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20\",}",
		"{\"Private_Key\": \"privkey:0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20\"}",
		"\x00\x01\x02",
	};
	char path[256], after[512], err[256];
	uint8_t priv[32];
	struct stat st;

	(void)state;
	snprintf(path, sizeof path, "%s/derper.key", dir);
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		size_t n = i == sizeof bad / sizeof bad[0] - 1 ? 3 : strlen(bad[i]);
		write_file(path, bad[i], n);
		err[0] = '\0';
		memset(priv, 0xaa, sizeof priv);
		if (keyfile_load_or_create(path, priv, err, sizeof err) != -1)
			fail_msg("malformed file %zu accepted", i);
		if (strncmp(err, path, strlen(path)) != 0)
			fail_msg("file %zu: message \"%s\" does not name the file", i, err);
		assert_true(key_is_zero(priv)); /* no half-parsed key handed back */
		assert_int_equal(read_file(path, after, sizeof after), n);
		assert_memory_equal(after, bad[i], n);
		assert_int_equal(stat(path, &st), 0);
		assert_int_equal(st.st_mode & 0777, 0644);
	}
	/* The reasons are specific. */
	write_file(path, "{\"PrivateKey\": 5}", 17);
	keyfile_load_or_create(path, priv, err, sizeof err);
	assert_non_null(strstr(err, "PrivateKey: want a string"));
	write_file(path, "{}", 2);
	keyfile_load_or_create(path, priv, err, sizeof err);
	assert_non_null(strstr(err, "PrivateKey: missing or all zero"));
	write_file(path, "{\"PrivateKey\": \"privkey:12\"}", 28);
	keyfile_load_or_create(path, priv, err, sizeof err);
	assert_non_null(strstr(err, "PrivateKey: want \"privkey:\" and 64 hex digits"));
	write_file(path, "[]", 2);
	keyfile_load_or_create(path, priv, err, sizeof err);
	assert_non_null(strstr(err, "want a JSON object"));
	write_file(path, "{", 1);
	keyfile_load_or_create(path, priv, err, sizeof err);
	assert_non_null(strstr(err, "line 1"));
}

static void test_read_errors(void **state)
{
	char path[256], file[256], err[256] = "";
	uint8_t priv[32];
	static char big[70000];

	(void)state;
	/* A directory where the key file should be. */
	snprintf(path, sizeof path, "%s/keydir", dir);
	assert_int_equal(mkdir(path, 0700), 0);
	assert_int_equal(keyfile_load_or_create(path, priv, err, sizeof err), -1);
	assert_non_null(strstr(err, "not a regular file (a directory)"));
	assert_non_null(strstr(err, path));
	/* A FIFO: refused at once, not an open() waiting for a writer forever. */
	snprintf(path, sizeof path, "%s/key.fifo", dir);
	assert_int_equal(mkfifo(path, 0600), 0);
	assert_int_equal(keyfile_load_or_create(path, priv, err, sizeof err), -1);
	assert_non_null(strstr(err, "not a regular file (a FIFO)"));
	/* A character device. */
	assert_int_equal(keyfile_load_or_create("/dev/null", priv, err, sizeof err), -1);
	assert_non_null(strstr(err, "not a regular file (a device)"));
	/* A path through a regular file: not "missing", so nothing is created. */
	snprintf(file, sizeof file, "%s/plain", dir);
	write_file(file, "x", 1);
	snprintf(path, sizeof path, "%s/plain/derper.key", dir);
	assert_int_equal(keyfile_load_or_create(path, priv, err, sizeof err), -1);
	assert_non_null(strstr(err, "Not a directory"));
	/* A parent that cannot be created: mkdir fails, nothing is written. */
	snprintf(path, sizeof path, "%s/plain2/sub/derper.key", dir);
	snprintf(file, sizeof file, "%s/plain2", dir);
	write_file(file, "x", 1);
	assert_int_equal(keyfile_load_or_create(path, priv, err, sizeof err), -1);
	assert_true(err[0] != '\0');
	/* Oversized file. */
	memset(big, ' ', sizeof big);
	snprintf(path, sizeof path, "%s/big.key", dir);
	write_file(path, big, sizeof big);
	assert_int_equal(keyfile_load_or_create(path, priv, err, sizeof err), -1);
	assert_non_null(strstr(err, "larger than"));
	/* Empty path. */
	assert_int_equal(keyfile_load_or_create("", priv, err, sizeof err), -1);
	assert_true(err[0] != '\0');
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_create, setup, teardown),
		cmocka_unit_test_setup_teardown(test_create_ignores_umask_for_file, setup, teardown),
		cmocka_unit_test_setup_teardown(test_create_relative, setup, teardown),
		cmocka_unit_test_setup_teardown(test_load_existing, setup, teardown),
		cmocka_unit_test_setup_teardown(test_load_variants, setup, teardown),
		cmocka_unit_test_setup_teardown(test_malformed, setup, teardown),
		cmocka_unit_test_setup_teardown(test_read_errors, setup, teardown),
	};

	if (key_init() != 0)
		return 1;
	return cmocka_run_group_tests(tests, NULL, NULL);
}
