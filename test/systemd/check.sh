#!/bin/sh
# check.sh BUILD: the systemd unit (contrib/systemd) is valid and derpd runs under its
# hardening, as far as that can be shown without systemd as PID 1:
# 1. systemd-analyze verify accepts the units (a copy whose ExecStart is the built binary:
#    verify fails on a missing /usr/sbin/derpd), and derpd.socket's ports are listeners in
#    the default file's flags;
# 2. as root with setpriv: derpd as an unprivileged user with no-new-privs and only
#    CAP_NET_BIND_SERVICE (ambient, bounding set) binds a port below 1024, reads
#    /etc/default/derpd-style flags from the default file's syntax, serves, and stops with
#    exit 0 on SIGTERM. Skipped parts say so in one line.
set -u
build=$1
bin=$(cd "$(dirname "$build/derpd")" && pwd)/derpd
fail=0
tmp=$(mktemp -d /tmp/derpd-systemd-XXXXXX)
trap 'rm -rf "$tmp"' EXIT

if command -v systemd-analyze >/dev/null 2>&1; then
	sed "s|^ExecStart=/usr/sbin/derpd|ExecStart=$bin|" contrib/systemd/derpd.service \
		> "$tmp/derpd.service"
	cp contrib/systemd/derpd.socket "$tmp/derpd.socket"
	# verify runs man for Documentation=man:derpd(8): point it at ours.
	mkdir -p "$tmp/man/man8" && cp man/derpd.8 "$tmp/man/man8/"
	if out=$(MANPATH="$tmp/man" systemd-analyze verify "$tmp/derpd.service" \
		 "$tmp/derpd.socket" 2>&1) && [ -z "$out" ]; then
		echo "systemd: systemd-analyze verify derpd.service derpd.socket: clean"
	else
		echo "systemd: systemd-analyze verify derpd.service derpd.socket:"; echo "$out"; fail=1
	fi
else
	echo "systemd: systemd-analyze not installed; unit not verified"
fi

# The unit runs as the user contrib/systemd/derpd.sysusers creates (package and make install).
unit_user=$(sed -n 's/^User=//p' contrib/systemd/derpd.service)
sys_user=$(awk '$1 == "u" { print $2 }' contrib/systemd/derpd.sysusers)
if [ -n "$unit_user" ] && [ "$unit_user" = "$sys_user" ] &&
   [ "$(sed -n 's/^Group=//p' contrib/systemd/derpd.service)" = "$sys_user" ]; then
	echo "systemd: unit runs as User=Group=$unit_user, which derpd.sysusers creates"
else
	echo "systemd: unit User=${unit_user:-(none)} but derpd.sysusers creates ${sys_user:-(none)}"; fail=1
fi

# The default file is shell-compatible KEY="value" syntax; its flags must parse.
DERPD_FLAGS=
. ./contrib/systemd/derpd.default
[ -n "$DERPD_FLAGS" ] || { echo "systemd: derpd.default sets no DERPD_FLAGS"; fail=1; }

# Every port of derpd.socket is a listener's in the default flags (derpd refuses to start
# with a socket no listener wants): TCP ones -a / -http-port, the UDP one -stun-port.
set -- $DERPD_FLAGS
a_port= http_port= stun_port=
while [ $# -gt 1 ]; do
	case $1 in
	-a) a_port=${2##*:} ;;
	-http-port) http_port=$2 ;;
	-stun-port) stun_port=$2 ;;
	esac
	shift
done
for p in $(sed -n 's/^ListenStream=\(.*:\)\{0,1\}//p' contrib/systemd/derpd.socket); do
	[ "$p" = "$a_port" ] || [ "$p" = "$http_port" ] ||
		{ echo "systemd: derpd.socket ListenStream=$p matches no TCP listener in DERPD_FLAGS"; fail=1; }
done
for p in $(sed -n 's/^ListenDatagram=\(.*:\)\{0,1\}//p' contrib/systemd/derpd.socket); do
	[ "$p" = "$stun_port" ] ||
		{ echo "systemd: derpd.socket ListenDatagram=$p is not -stun-port in DERPD_FLAGS"; fail=1; }
done
[ $fail = 0 ] && echo "systemd: derpd.socket's ports are the default flags' listeners"

if [ "$(id -u)" = 0 ] && command -v setpriv >/dev/null 2>&1 &&
   [ "$(cat /proc/sys/net/ipv4/ip_unprivileged_port_start 2>/dev/null || echo 1024)" -gt 900 ]; then
	chmod 0755 "$tmp"
	mkdir "$tmp/state" && chown 65534:65534 "$tmp/state" && chmod 0700 "$tmp/state"
	# A free privileged port: the first of these nothing listens on.
	port=
	for p in 853 873 901 989 990 992 995; do
		ss -ltnH "sport = :$p" 2>/dev/null | grep -q . || { port=$p; break; }
	done
	setpriv --reuid=65534 --regid=65534 --clear-groups --no-new-privs \
		--inh-caps=-all,+net_bind_service --ambient-caps=-all,+net_bind_service \
		--bounding-set=-all,+net_bind_service \
		"$bin" -a "127.0.0.1:$port" -stun=false -c "$tmp/state/derper.key" \
		> "$tmp/log" 2>&1 &
	pid=$!
	i=0
	while [ $i -lt 200 ] && ! grep -q "serving on" "$tmp/log" && kill -0 $pid 2>/dev/null; do
		sleep 0.1; i=$((i + 1))
	done
	if grep -q "serving on 127.0.0.1:$port" "$tmp/log" && [ -s "$tmp/state/derper.key" ]; then
		kill -TERM $pid
		i=0
		while [ $i -lt 200 ] && kill -0 $pid 2>/dev/null; do sleep 0.1; i=$((i + 1)); done
		if kill -0 $pid 2>/dev/null; then
			kill -KILL $pid; echo "systemd: hardened derpd did not stop on SIGTERM"; fail=1
		elif wait $pid; then
			echo "systemd: derpd as uid 65534, no-new-privs, CAP_NET_BIND_SERVICE only: served on :$port, stopped 0"
		else
			echo "systemd: hardened derpd exited non-zero"; cat "$tmp/log"; fail=1
		fi
	else
		kill -KILL $pid 2>/dev/null; wait $pid 2>/dev/null
		echo "systemd: derpd did not serve under setpriv:"; cat "$tmp/log"; fail=1
	fi
else
	echo "systemd: not root, no setpriv or no privileged ports; hardened start skipped"
fi
exit $fail
