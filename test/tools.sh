#!/bin/sh
# tools.sh BUILD VERSION: the operator tools' own promises (make check-tools): --version on
# each prints "<tool> VERSION"; derpd-bench against a server whose pid it does not know
# (-s without --pid) prints "n/a" in its table and null in its JSON, never a negative CPU
# time or memory figure, and real figures once it is given --pid.
set -u
build=$1 version=$2
tools=$build/tools
fail=0
bad() { echo "check-tools: FAIL: $*"; fail=1; }

for t in derpd-bench derpd-stun-bench derpd-probe; do
	out=$("$tools/$t" --version 2>&1); rc=$?
	[ "$rc" = 0 ] && [ "$out" = "$t $version" ] || bad "$t --version: exit $rc, \"$out\""
	"$tools/$t" --help 2>&1 | grep -q -- '--version' || bad "$t --help does not name --version"
done

dir=$(mktemp -d /tmp/derpd-tools-XXXXXX)
"$build/derpd" -a 127.0.0.1:0 -c "$dir/k.json" -stun=false >"$dir/derpd.log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$dir"' EXIT
port=""
for _ in $(seq 100); do
	port=$(sed -n 's/.*serving on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$dir/derpd.log")
	[ -n "$port" ] && break
	sleep 0.05
done
[ -n "$port" ] || { cat "$dir/derpd.log"; bad "derpd did not start"; exit 1; }

# The server figures of both kinds of run: the table's "server" lines and the JSON's keys.
figs() { grep -E '^  server' "$1"; grep -oE '"(server_[a-z_]*|rss_per_conn_bytes)":[^,}]*' "$1"; }
run() { # run NAME ARGS...: one short run, its output in $dir/NAME
	name=$1; shift
	"$tools/derpd-bench" -s "127.0.0.1:$port" --src-addrs 0 --no-progress "$@" \
		>"$dir/$name" 2>&1 || { cat "$dir/$name"; bad "derpd-bench $*: failed"; }
}
run relay -p 1 -d 0.2 -W 0 --drain 0.2
run idle --idle 4 --settle 0
for n in relay idle; do
	if figs "$dir/$n" | grep -E -- '(-[0-9])|:-' >/dev/null; then
		figs "$dir/$n"; bad "$n run without --pid: a negative figure"
	fi
	figs "$dir/$n" | grep -q 'n/a' || bad "$n run without --pid: no n/a in the table"
	grep -q '"server_pid":null' "$dir/$n" || bad "$n run without --pid: server_pid is not null"
done
grep -q '"server_cpu_s":null,"server_cpu_pct":null,"server_peak_rss_kib":null' "$dir/relay" ||
	bad "relay run without --pid: CPU and RSS are not null in the JSON"
grep -q '"rss_per_conn_bytes":null' "$dir/idle" || bad "idle run without --pid: rss_per_conn_bytes not null"
run idle-pid --idle 4 --settle 0 --pid "$pid"
grep -qE '"server_pid":'"$pid"',.*"server_rss_kib":[1-9][0-9]*,' "$dir/idle-pid" ||
	bad "idle run with --pid: no server pid or RSS in the JSON"
grep -q 'n/a' "$dir/idle-pid" && bad "idle run with --pid: n/a in the output"

[ "$fail" = 0 ] && echo "tools: --version and derpd-bench without a server pid ok"
exit "$fail"
