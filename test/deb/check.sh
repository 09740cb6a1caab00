#!/bin/sh
# check.sh BUILD: build the Debian package (scripts/deb.sh, as make deb does) and check it:
# 1. Makefile VERSION = debian/changelog; the .deb and the -dbgsym package land in BUILD
#    and nothing beside the checkout;
# 2. dpkg-deb -c lists derpd in /usr/sbin, every tool, every man page gzipped, the units,
#    /etc/default/derpd (a conffile), the sysusers.d file, all owned by root;
# 3. dpkg-deb -I fields: shlibs Depends, wolfSSL statically linked with Built-Using;
# 4. the binaries are stripped and their debug files (by build id) are in -dbgsym, with
#    DWARF; the packaged programs run; the packaged unit and default file are contrib's;
# 5. lintian reports no error;
# 6. the maintainer scripts, run with every command they may call stubbed (PATH holds only
#    stubs that record their arguments and a few file tools) and the two host paths they
#    use pointed into a scratch directory: install creates the user and /var/lib/derpd and
#    neither enables nor starts derpd, upgrade try-restarts the service (not the socket),
#    remove stops both, purge cleans;
# 7. make install PREFIX=/usr/local DESTDIR=... puts the unit, sysusers and default files
#    where systemd reads them, ExecStart naming the installed binary.
set -u
build=$1
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
fail=0 nbad=0 mark=0
bad() { echo "deb: FAIL: $*"; fail=1; nbad=$((nbad + 1)); }
# ok MESSAGE: the section that ends here passed (no bad since the previous ok)
ok() { [ $nbad = $mark ] && echo "deb: $*"; mark=$nbad; }
tmp=$(mktemp -d /tmp/derpd-deb-XXXXXX)
trap 'rm -rf "$tmp"' EXIT

for c in dpkg-buildpackage dh lintian readelf; do
	command -v $c >/dev/null 2>&1 || { bad "$c not installed (make deps-test)"; exit 1; }
done
version=$(sed -n 's/^VERSION *:= *//p' Makefile)
arch=$(dpkg-architecture -qDEB_HOST_ARCH)
[ "$(dpkg-parsechangelog -S Version)" = "$version" ] ||
	bad "debian/changelog version $(dpkg-parsechangelog -S Version) is not Makefile's $version"

# 1. build
mkdir -p "$build"
build=$(cd "$build" && pwd)
deb=$build/derpd_${version}_$arch.deb
dbg=$build/derpd-dbgsym_${version}_$arch.deb
[ -f "$dbg" ] || dbg=$build/derpd-dbgsym_${version}_$arch.ddeb
rm -f "$build"/derpd*_"$version"_"$arch".*
# dpkg-buildpackage writes its results to ..: none of them may be left there. Only its
# own kinds of file count (the parent may be a shared directory such as /tmp).
pkgfiles() { ls -A .. | grep -E '^derpd([-_].*)?\.(deb|ddeb|changes|buildinfo)$' || true; }
pkgfiles > "$tmp/parent.before"
if ! sh scripts/deb.sh "$build"; then
	bad "the package did not build"; exit 1
fi
pkgfiles > "$tmp/parent.after"
cmp -s "$tmp/parent.before" "$tmp/parent.after" ||
	bad "files appeared beside the checkout: $(comm -13 "$tmp/parent.before" "$tmp/parent.after" | tr '\n' ' ')"
dbg=$build/derpd-dbgsym_${version}_$arch.deb
[ -f "$dbg" ] || dbg=$build/derpd-dbgsym_${version}_$arch.ddeb
[ -f "$deb" ] || { bad "no $deb"; exit 1; }
[ -f "$dbg" ] || bad "no derpd-dbgsym package in $build"
[ -f "$build/derpd_${version}_$arch.changes" ] || bad "no .changes in $build"

# 2. contents
dpkg-deb -c "$deb" > "$tmp/contents" || bad "dpkg-deb -c failed"
awk '{ print $6 }' "$tmp/contents" > "$tmp/paths"
want="./usr/sbin/derpd ./etc/default/derpd ./usr/lib/sysusers.d/derpd.conf
./usr/share/doc/derpd/copyright ./usr/share/doc/derpd/changelog.gz"
for t in tools/*.c; do want="$want ./usr/bin/$(basename "$t" .c)"; done
want="$want ./usr/bin/derpd-bench ./usr/bin/derpd-probe"
for p in man/*.[1-8]; do
	want="$want ./usr/share/man/man${p##*.}/$(basename "$p").gz"
done
units=
for u in contrib/systemd/*.service contrib/systemd/*.socket; do
	[ -f "$u" ] && units="$units $(basename "$u")"
done
for u in $units; do want="$want ./lib/systemd/system/$u"; done
n=0
for w in $want; do
	n=$((n + 1))
	grep -qxF "$w" "$tmp/paths" || bad "package lacks $w"
done
ok "dpkg-deb -c: all $n expected files present"
if grep -q '^\./usr/local\|^\./usr/bin/derpd$\|^\./usr/share/man/.*[0-9]$' "$tmp/paths"; then
	bad "misplaced files: $(grep '^\./usr/local\|^\./usr/bin/derpd$\|^\./usr/share/man/.*[0-9]$' "$tmp/paths" | tr '\n' ' ')"
fi
awk '$2 != "root/root" { print $6 }' "$tmp/contents" | grep . && bad "files not owned by root"

# 3. control fields
field() { dpkg-deb -f "$deb" "$1"; }
[ "$(field Package)" = derpd ] && [ "$(field Version)" = "$version" ] &&
	[ "$(field Architecture)" = "$arch" ] || bad "Package/Version/Architecture: $(field Package) $(field Version) $(field Architecture)"
depends=$(field Depends)
for d in libc6 libsodium23 libjansson4 libmicrohttpd12 libcurl3-gnutls systemd-sysusers; do
	echo "$depends" | grep -q "$d" || bad "Depends lacks $d: $depends"
done
dpkg-deb -e "$deb" "$tmp/ctrl"
[ "$(cat "$tmp/ctrl/conffiles")" = /etc/default/derpd ] ||
	bad "conffiles: $(tr '\n' ' ' < "$tmp/ctrl/conffiles")"
prefix=$(cat "$build/wolfssl.prefix" 2>/dev/null || true)
if [ "$arch" = amd64 ] && [ "${WOLFSSL:-local}" != system ]; then
	wv=$(cat "$prefix/debian-version" 2>/dev/null)
	[ "$(field Built-Using)" = "wolfssl (= $wv)" ] ||
		bad "Built-Using '$(field Built-Using)', want 'wolfssl (= $wv)'"
	echo "$depends" | grep -q wolfssl && bad "Depends names wolfssl (should be static): $depends"
fi
ok "dpkg-deb -I: $(field Package) $(field Version) $(field Architecture); Built-Using: $(field Built-Using)"

# 4. stripped binaries, debug files, the programs run, the unit and default file
dpkg-deb -x "$deb" "$tmp/root"
[ -f "$dbg" ] && dpkg-deb -x "$dbg" "$tmp/dbg"
for b in "$tmp"/root/usr/sbin/derpd "$tmp"/root/usr/bin/*; do
	name=${b#"$tmp/root"}
	if readelf -S "$b" | grep -q '\.debug_info\|\.symtab'; then
		bad "$name is not stripped"
	fi
	id=$(readelf -n "$b" | sed -n 's/.*Build ID: *\([0-9a-f]*\).*/\1/p')
	dfile=$(echo "$id" | sed 's|^\(..\)\(.*\)|/usr/lib/debug/.build-id/\1/\2.debug|')
	if [ -z "$id" ] || ! [ -f "$tmp/dbg$dfile" ]; then
		bad "$name: no debug file ${dfile:-(no build id)} in derpd-dbgsym"
	elif ! readelf -S "$tmp/dbg$dfile" 2>/dev/null | grep -q '\.debug_info'; then
		bad "$name: $dfile has no .debug_info"
	fi
	v=$("$b" --version 2>&1)
	echo "$v" | grep -qF "$version" || bad "$name --version: $v"
done
ok "binaries stripped, each with its build-id debug file in derpd-dbgsym; --version runs"
for u in contrib/systemd/*.service contrib/systemd/*.socket; do
	[ -f "$u" ] || continue
	cmp -s "$u" "$tmp/root/lib/systemd/system/$(basename "$u")" ||
		bad "packaged $(basename "$u") differs from $u"
done
exe=$(sed -n 's/^ExecStart=\([^ ]*\).*/\1/p' "$tmp/root/lib/systemd/system/derpd.service")
[ -x "$tmp/root$exe" ] || bad "derpd.service ExecStart=$exe is not in the package"
cmp -s contrib/systemd/derpd.default "$tmp/root/etc/default/derpd" ||
	bad "packaged /etc/default/derpd differs from contrib/systemd/derpd.default"

# 5. lintian
lintian -I --pedantic "$build/derpd_${version}_$arch.changes" > "$tmp/lintian" 2>&1
grep '^E:' "$tmp/lintian" && bad "lintian errors"
ok "lintian: $(grep -c '^E:' "$tmp/lintian") errors, $(grep -c '^W:' "$tmp/lintian") warnings, $(grep -c '^[IP]:' "$tmp/lintian") info/pedantic"
grep '^[WIP]:' "$tmp/lintian" | sed 's/^/deb:   /'

# 6. maintainer scripts against stubs
sb=$tmp/sb
mkdir -p "$sb/bin" "$tmp/run/systemd/system" "$tmp/host"
calls=$tmp/calls
for c in systemctl deb-systemd-invoke deb-systemd-helper systemd-sysusers chown; do
	cat > "$sb/bin/$c" <<STUB
#!/bin/sh
echo "$c \$*" >> "$calls"
# deb-systemd-helper was-enabled / debian-installed: as STUB_ENABLED says
case "$c \${1:-} \${2:-}" in
"deb-systemd-helper --quiet was-enabled"|"deb-systemd-helper debian-installed "*) [ "\${STUB_ENABLED:-0}" = 1 ] ;;
esac
STUB
	chmod +x "$sb/bin/$c"
done
for c in install rm mkdir chmod cat; do ln -s "$(command -v $c)" "$sb/bin/$c"; done
for s in preinst postinst prerm postrm; do
	[ -f "$tmp/ctrl/$s" ] || continue
	sed -e "s|/run/systemd/system|$tmp/run/systemd/system|g" \
	    -e "s|/var/lib/derpd|$tmp/host/var/lib/derpd|g" \
	    -e "s|/usr/bin/deb-systemd-helper|$sb/bin/deb-systemd-helper|g" \
	    "$tmp/ctrl/$s" > "$sb/$s"
done
grep -q "$tmp/host/var/lib/derpd" "$sb/postinst" && grep -q "$tmp/run/systemd/system" "$sb/postinst" ||
	bad "postinst does not use /var/lib/derpd and /run/systemd/system: the check below would prove nothing"
# run SCRIPT ARGS...: the script as dpkg runs it; its calls in $calls
run() {
	: > "$calls"
	s=$1; shift
	[ -f "$sb/$s" ] || return 0
	env -i PATH="$sb/bin" STUB_ENABLED="${STUB_ENABLED:-0}" /bin/sh -e "$sb/$s" "$@" \
		> "$tmp/out" 2>&1 || bad "$s $* failed: $(cat "$tmp/out")"
}
starts() { grep -E 'deb-systemd-invoke (start|restart)|systemctl .*(start|restart|enable)|deb-systemd-helper enable' "$calls"; }

# fresh install: preinst install, postinst configure (no old version)
run preinst install
run postinst configure
grep -qx 'systemd-sysusers derpd.conf' "$calls" || bad "postinst did not create the derpd user (systemd-sysusers derpd.conf)"
grep -qx 'systemctl --system daemon-reload' "$calls" ||
	bad "postinst never reached its systemd part (no daemon-reload): the no-start check proves nothing"
starts && bad "postinst enabled or started derpd on installation"
grep -q 'deb-systemd-invoke' "$calls" && bad "postinst invoked the service on installation: $(grep deb-systemd-invoke "$calls")"
[ -d "$tmp/host/var/lib/derpd" ] && [ "$(stat -c %a "$tmp/host/var/lib/derpd")" = 700 ] ||
	bad "postinst did not make /var/lib/derpd with mode 0700"
grep -qx "chown derpd:derpd $tmp/host/var/lib/derpd" "$calls" || bad "postinst did not give /var/lib/derpd to derpd"
ok "install: derpd user and /var/lib/derpd (0700, derpd:derpd) created, service neither enabled nor started"

# upgrade of an enabled, running relay: kept enabled, try-restarted, nothing forced on
STUB_ENABLED=1 run preinst upgrade 0.0.9
grep -q 'stop' "$calls" && bad "preinst stops derpd on upgrade (postinst would not start it again)"
STUB_ENABLED=1 run prerm upgrade "$version"
grep -q 'stop' "$calls" && bad "prerm stops derpd on upgrade"
STUB_ENABLED=1 run postinst configure 0.0.9
grep -qx 'deb-systemd-invoke try-restart derpd.service' "$calls" || bad "postinst upgrade: no try-restart ($(tr '\n' ';' < "$calls"))"
grep -E 'deb-systemd-invoke (start|restart) ' "$calls" && bad "postinst upgrade starts derpd unconditionally"
grep 'deb-systemd-invoke.*derpd\.socket' "$calls" && bad "postinst upgrade restarts derpd.socket (its backlog would be lost)"
grep -q chown "$calls" && bad "postinst upgrade touched the existing /var/lib/derpd"
ok "upgrade: try-restart (a stopped relay stays stopped), state directory kept"

# remove stops it; purge removes the state directory
run prerm remove
for u in $units; do
	grep -q "^deb-systemd-invoke stop .*$u" "$calls" || bad "prerm remove does not stop $u"
done
run postrm remove
[ -d "$tmp/host/var/lib/derpd" ] || bad "postrm remove deleted /var/lib/derpd (only purge may)"
run postrm purge
[ -e "$tmp/host/var/lib/derpd" ] && bad "postrm purge left /var/lib/derpd"
for u in $units; do
	grep -qx "deb-systemd-helper purge $u" "$calls" || bad "postrm purge does not purge $u's state"
done
ok "remove: ${units# } stopped; purge: /var/lib/derpd and the units' state removed"

# 7. make install elsewhere
if make --no-print-directory -s install BUILD="$build" DESTDIR="$tmp/inst" PREFIX=/usr/local \
	> "$tmp/install.log" 2>&1; then
	i=$tmp/inst
	for f in /usr/local/sbin/derpd /usr/local/lib/systemd/system/derpd.service \
	         /usr/local/lib/sysusers.d/derpd.conf /etc/default/derpd \
	         /usr/local/share/man/man8/derpd.8 /usr/local/bin/derpd-bench; do
		[ -f "$i$f" ] || bad "make install PREFIX=/usr/local: no $f"
	done
	grep -q '^ExecStart=/usr/local/sbin/derpd ' "$i/usr/local/lib/systemd/system/derpd.service" ||
		bad "make install PREFIX=/usr/local: ExecStart is not /usr/local/sbin/derpd"
	ok "make install PREFIX=/usr/local: sbin, unit (ExecStart=/usr/local/sbin/derpd), sysusers.d, /etc/default"
else
	bad "make install failed: $(tail -n 5 "$tmp/install.log")"
fi

[ $fail = 0 ] && echo "deb: package checks passed" || echo "deb: package checks FAILED"
exit $fail
