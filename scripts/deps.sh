#!/bin/sh
# deps.sh [build|deb|test]: install the Debian packages derpd needs, by purpose; does nothing
# when all are present. `make run` asks for build (compile, link and run derpd and its
# tools), `make deb` for deb (build plus debhelper), `make test` and CI for test (build,
# deb, and every tool the test suites call).
# No argument means test, the superset.
#
# build: the compiler, make (build-essential), pkg-config and the -dev libraries; libcurl in
#   its GnuTLS flavour (no second OpenSSL-named API beside wolfSSL's) for ACME; dpkg-dev,
#   autoconf, automake and libtool because scripts/wolfssl.sh builds wolfSSL from Debian's
#   source with AES-NI (libwolfssl-dev stays: `make WOLFSSL=system` links it).
# deb: debhelper for dpkg-buildpackage (debian/control's Build-Depends are build's set).
# test: cmocka (unit and e2e tests), mandoc (make check-man), clang and its runtime
#   (make fuzz), iproute2 (ip(8): test_http_access adds loopback addresses), procps,
#   prometheus (promtool lints /debug/varz and /metrics and tests monitoring/'s alert rules),
#   jq and curl (make check-monitoring: the dashboard's JSON, a live scrape), pebble (the ACME
#   test CA), chromium (the WebSocket e2e test runs a page in it, headless), lintian (make
#   check-deb lints the package it builds).
set -eu
BUILD_PKGS="build-essential pkg-config libsodium-dev libwolfssl-dev libjansson-dev \
libmicrohttpd-dev libcurl4-gnutls-dev dpkg-dev autoconf automake libtool"
DEB_PKGS="debhelper"
TEST_PKGS="lintian libcmocka-dev mandoc clang libclang-rt-14-dev iproute2 procps prometheus jq \
curl pebble chromium"
mode=${1:-test}
case "$mode" in
build) PKGS=$BUILD_PKGS ;;
deb) PKGS="$BUILD_PKGS $DEB_PKGS" ;;
test) PKGS="$BUILD_PKGS $DEB_PKGS $TEST_PKGS" ;;
*) echo "usage: deps.sh [build|deb|test]" >&2; exit 2 ;;
esac
missing=""
for p in $PKGS; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
		missing="$missing $p"
done
if [ -z "$missing" ]; then
	echo "deps: the $mode packages are installed"
	exit 0
fi
if [ "$(id -u)" != 0 ]; then
	echo "deps: missing Debian packages:$missing (run as root, or install them)" >&2
	exit 1
fi
echo "deps: installing ($mode)$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing
