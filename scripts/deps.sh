#!/bin/sh
# Install what derpd needs to build and test, from Debian packages only.
# Called by `make run`, `make test` and CI; does nothing when all is present.
set -eu
PKGS="build-essential pkg-config libsodium-dev libwolfssl-dev libjansson-dev \
libmicrohttpd-dev libcmocka-dev mandoc clang libclang-rt-14-dev iproute2 procps prometheus"
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
