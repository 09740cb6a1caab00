#!/bin/sh
# wolfssl.sh [--bench]: build wolfSSL from Debian's source package with AES-NI and the
# x86-64 assembly into a build-local prefix, and print that prefix on stdout.
#
# Debian's libwolfssl is built without assembly (AES-128-GCM ~150 MB/s a core instead of
# GB/s with AES-NI), so derpd links this build unless `make WOLFSSL=system`. The source
# comes through a private apt source list (deb-src of the machine's own mirror) so the
# system's apt configuration is never touched. The result is cached in
# .cache/wolfssl-<debian version>-<options hash>/ and reused until the version or the
# options change (WOLFSSL_CACHE names another cache directory: make deb builds in a copy of
# the tree and reuses this one). The prefix's debian-version file holds the source version
# (the package's Built-Using). Progress goes to stderr; a failed build leaves no prefix behind.
#
# --bench: also compile a small AES-128-GCM benchmark against this build and against
# Debian's library, and print both figures.
set -eu

top=$(cd "$(dirname "$0")/.." && pwd)
cache=${WOLFSSL_CACHE:-$top/.cache}
apt_dir=$cache/apt

# What derpd needs: TLS 1.2/1.3, ALPN, SNI (+ the SNI callback and wolfSSL_set_SSL_CTX,
# which need opensslall, as in Debian's build),
# ECC P-256 (ACME keys, ECDSA certs), Ed25519 (meta certificate), X25519 and
# ChaCha20-Poly1305 (what Go clients offer), RSA-PSS (RSA certs under TLS 1.3), session
# tickets, key generation and certificate/CSR encoding; then the speed.
OPTS="--enable-static --disable-shared --with-pic --disable-examples --disable-crypttests
--disable-benchmark --enable-tls13 --enable-alpn --enable-sni --enable-opensslextra --enable-opensslall
--enable-ecc --enable-ed25519 --enable-curve25519 --enable-chacha --enable-poly1305
--enable-aesgcm --enable-rsapss --enable-hkdf --enable-supportedcurves
--enable-session-ticket --enable-keygen --enable-certgen --enable-certreq
--enable-certext --enable-sp --enable-sp-asm --enable-aesni --enable-intelasm"

log() { echo "wolfssl: $*" >&2; }

# A private apt tree: deb-src lines for the mirrors the system already uses for Debian.
apt_opts() {
	echo "-o Dir::Etc::SourceList=$apt_dir/sources.list -o Dir::Etc::SourceParts=$apt_dir/none" \
	     "-o Dir::State::Lists=$apt_dir/lists -o Dir::Cache=$apt_dir/cache" \
	     "-o Debug::NoLocking=1 -o APT::Sandbox::User=$(id -un)"
}

write_sources() {
	mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/none"
	: > "$apt_dir/sources.list.new"
	# one-line format
	for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
		[ -f "$f" ] || continue
		sed -n 's/^[[:space:]]*deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\?\(.*debian.*\)$/deb-src \2/p' \
			"$f" >> "$apt_dir/sources.list.new"
	done
	# deb822 format: one deb-src line per (URI, suite) of each Debian stanza
	for f in /etc/apt/sources.list.d/*.sources; do
		[ -f "$f" ] || continue
		awk 'function flush() { if (uris != "" && uris ~ /debian/) {
			n = split(uris, u, " "); m = split(suites, s, " ");
			for (i = 1; i <= n; i++) for (j = 1; j <= m; j++) print "deb-src " u[i] " " s[j] " " comps }
			uris = suites = comps = "" }
		/^[[:space:]]*$/ { flush(); next }
		/^URIs:/ { sub(/^URIs:[[:space:]]*/, ""); uris = $0 }
		/^Suites:/ { sub(/^Suites:[[:space:]]*/, ""); suites = $0 }
		/^Components:/ { sub(/^Components:[[:space:]]*/, ""); comps = $0 }
		END { flush() }' "$f" >> "$apt_dir/sources.list.new"
	done
	if ! [ -s "$apt_dir/sources.list.new" ]; then
		. /etc/os-release
		echo "deb-src http://deb.debian.org/debian ${VERSION_CODENAME:-bookworm} main" \
			> "$apt_dir/sources.list.new"
	fi
	sort -u "$apt_dir/sources.list.new" > "$apt_dir/sources.list"
	rm -f "$apt_dir/sources.list.new"
}

# Debian's newest wolfssl source version, refreshing the private lists once a day.
source_version() {
	if [ -z "$(find "$apt_dir/lists" -name '*Sources*' -mtime -1 2>/dev/null | head -n 1)" ]; then
		write_sources
		# shellcheck disable=SC2046
		apt-get $(apt_opts) -qq update >&2 || log "apt-get update failed; using the lists we have"
	fi
	# shellcheck disable=SC2046
	apt-cache $(apt_opts) showsrc wolfssl 2>/dev/null | sed -n 's/^Version: //p' | sort -V | tail -n 1
}

build() {
	ver=$1 prefix=$2
	work=$cache/wolfssl-src.$$
	rm -rf "$work" && mkdir -p "$work"
	trap 'rm -rf "$work"' EXIT
	log "fetching Debian source wolfssl=$ver"
	# shellcheck disable=SC2046
	(cd "$work" && apt-get $(apt_opts) -qq source --download-only "wolfssl=$ver" \
		>"$work/apt.log" 2>&1) || { cat "$work/apt.log" >&2; exit 1; }
	dsc=$(ls "$work"/*.dsc)
	(cd "$work" && dpkg-source -q -x "$dsc" src >&2)   # applies Debian's patches
	log "configuring (AES-NI, x86-64 assembly)"
	cd "$work/src"
	autoreconf -fi >/dev/null 2>&1
	# shellcheck disable=SC2086
	./configure --prefix="$prefix" $OPTS CFLAGS="-O2 -g" >"$work/configure.log" 2>&1 ||
		{ tail -n 30 "$work/configure.log" >&2; exit 1; }
	grep -E 'AES-NI|Intel Quick|intelasm|TLS v1.3 ' "$work/configure.log" | sed 's/^/wolfssl:   /' >&2 || true
	log "building with $(nproc) jobs"
	make -j"$(nproc)" >"$work/make.log" 2>&1 || { tail -n 40 "$work/make.log" >&2; exit 1; }
	# staged, then moved into place: a half-installed prefix never looks complete
	make install DESTDIR="$work/stage" >>"$work/make.log" 2>&1 ||
		{ tail -n 20 "$work/make.log" >&2; exit 1; }
	cd "$top"
	rm -rf "$prefix"
	mv "$work/stage$prefix" "$prefix"
	rm -rf "$work"
	trap - EXIT
	log "installed into $prefix"
}

# AES-128-GCM seal throughput, 16 KiB records (a TLS record's size), one core.
bench() {
	prefix=$1 dir=$cache/bench
	mkdir -p "$dir"
	cat > "$dir/aesgcm.c" <<'EOF'
#include <wolfssl/options.h>
#include <wolfssl/wolfcrypt/aes.h>
#include <stdio.h>
#include <time.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
int main(void)
{
	static unsigned char in[16384], out[16384];
	unsigned char key[16] = { 1 }, iv[12] = { 2 }, tag[16];
	Aes aes; double t0, t; long n = 0;
	wc_AesInit(&aes, NULL, INVALID_DEVID);
	wc_AesGcmSetKey(&aes, key, sizeof key);
	t0 = now();
	do { for (int i = 0; i < 64; i++, n++) wc_AesGcmEncrypt(&aes, out, in, sizeof in, iv, sizeof iv, tag, sizeof tag, NULL, 0); t = now() - t0; } while (t < 1.0);
	printf("%.0f MB/s\n", (double)n * sizeof in / t / 1e6);
	return 0;
}
EOF
	cc -O2 -I"$prefix/include" -o "$dir/aesgcm-local" "$dir/aesgcm.c" "$prefix/lib/libwolfssl.a" -lm -pthread
	cc -O2 -o "$dir/aesgcm-system" "$dir/aesgcm.c" $(pkg-config --cflags --libs wolfssl)
	echo "AES-128-GCM, 16 KiB records, one core:"
	echo "  Debian's libwolfssl (no assembly):   $("$dir/aesgcm-system")"
	echo "  build-local wolfSSL (AES-NI, asm):   $("$dir/aesgcm-local")"
}

hash=$(printf '%s' "$OPTS" | sha256sum | cut -c1-8)
# One build at a time (parallel makes of several build directories share the cache).
mkdir -p "$cache"
exec 9>"$cache/wolfssl.lock"
flock 9
# Offline or no deb-src reachable: reuse the newest cached build rather than fail.
ver=$(source_version || true)
if [ -z "$ver" ]; then
	prefix=$(ls -d "$cache"/wolfssl-*-"$hash" 2>/dev/null | sort -V | tail -n 1 || true)
	[ -n "$prefix" ] || { log "no wolfssl source package found (deb-src unreachable?)"; exit 1; }
else
	prefix=$cache/wolfssl-$(echo "$ver" | tr '+:~' '___')-$hash
	[ -f "$prefix/lib/libwolfssl.a" ] || build "$ver" "$prefix"
	# builds cached before this file existed get it too
	[ -s "$prefix/debian-version" ] || echo "$ver" > "$prefix/debian-version"
fi
[ "${1:-}" = "--bench" ] && bench "$prefix" >&2
echo "$prefix"
