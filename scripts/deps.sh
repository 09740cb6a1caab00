#!/bin/sh
# Install what derpd needs to build and test, from Debian packages only.
# Called by `make run`, `make test` and CI; does nothing when all is present.
# dpkg-dev, autoconf, automake, libtool: scripts/wolfssl.sh builds wolfSSL from Debian's
# source; libcurl (GnuTLS flavour: no second OpenSSL-named API beside wolfSSL's) for ACME;
# pebble: the ACME test CA. chromium: the WebSocket e2e test runs a page in it (headless).
set -eu
PKGS="build-essential pkg-config libsodium-dev libwolfssl-dev libjansson-dev \
libmicrohttpd-dev libcmocka-dev mandoc clang libclang-rt-14-dev iproute2 procps prometheus \
libcurl4-gnutls-dev dpkg-dev autoconf automake libtool pebble chromium"
missing=""
for p in $PKGS; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
		missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
	echo "deps: missing Debian packages:$missing (run as root, or install them)" >&2
	exit 1
fi
echo "deps: installing$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing
