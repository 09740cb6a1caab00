#!/bin/sh
# deb.sh BUILD: build the Debian package (debian/) with dpkg-buildpackage -us -uc -b and
# leave derpd_<version>_<arch>.deb, derpd-dbgsym_<version>_<arch>.deb, the .buildinfo and
# the .changes in BUILD.
#
# dpkg-buildpackage writes its output into the parent of the tree it builds and debhelper
# writes into debian/, so the build runs in a copy of the tree under BUILD/deb-work (the
# files git tracks or would track, as they are now, uncommitted edits included): nothing
# lands beside the checkout, and the developer's build/ and ./derpd are never touched.
# The copy reuses this tree's wolfSSL cache (WOLFSSL_CACHE). The log is BUILD/deb.log.
set -eu
build=$1
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"

version=$(sed -n 's/^VERSION *:= *//p' Makefile)
chlog=$(dpkg-parsechangelog -S Version)
if [ "$version" != "$chlog" ]; then
	echo "deb: Makefile VERSION is $version but debian/changelog says $chlog" >&2
	exit 1
fi
arch=$(dpkg-architecture -qDEB_HOST_ARCH)

mkdir -p "$build"
build=$(cd "$build" && pwd)
work=$build/deb-work
src=$work/derpd-$version
rm -rf "$work"
mkdir -p "$src"
if git rev-parse --git-dir >/dev/null 2>&1; then
	# tracked and untracked-but-not-ignored files that exist (a deleted one is skipped)
	git ls-files -z --cached --others --exclude-standard |
		xargs -0 sh -c 'for f; do [ -e "$f" ] || [ -L "$f" ] && printf "%s\n" "$f"; done' sh |
		tar --no-recursion -cf - -T - | tar -xf - -C "$src"
else
	tar -cf - --exclude='./build*' --exclude=./.cache --exclude=./derpd . | tar -xf - -C "$src"
fi

echo "deb: dpkg-buildpackage -us -uc -b in $src (log: $build/deb.log)"
if ! (cd "$src" && WOLFSSL_CACHE=${WOLFSSL_CACHE:-$top/.cache} \
	dpkg-buildpackage -us -uc -b) > "$build/deb.log" 2>&1; then
	tail -n 40 "$build/deb.log" >&2
	echo "deb: dpkg-buildpackage failed (all of it in $build/deb.log)" >&2
	exit 1
fi
for f in "$work"/derpd*_"$version"_*; do
	mv -f "$f" "$build/"
done
rm -rf "$work"
[ -f "$build/derpd_${version}_$arch.deb" ] || { echo "deb: no derpd_${version}_$arch.deb" >&2; exit 1; }
echo "deb: $build/derpd_${version}_$arch.deb"
