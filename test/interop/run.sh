#!/bin/sh
# run.sh BUILD [suite flags...]: build the interop suite, upstream derper and derpprobe
# (tailscale.com as pinned in go.mod) into BUILD/interop/ and run the suite against
# BUILD/derpd. Without a Go toolchain new enough for the pinned release it prints one
# "skipped" line and succeeds, unless INTEROP_REQUIRE=1 (CI), where that is a failure.
set -u
build=$1; shift
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
need=$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$here/go.mod")
have=$(go env GOVERSION 2>/dev/null | sed 's/^go//')
if [ -z "$have" ] || [ "$(printf '%s\n%s\n' "$need" "$have" | sort -V | head -n 1)" != "$need" ]; then
	if [ "${INTEROP_REQUIRE:-0}" = 1 ]; then
		echo "interop: FAILED: needs Go >= $need (found: ${have:-none})"
		exit 1
	fi
	echo "interop: skipped (needs Go >= $need)"
	exit 0
fi
out="$top/$build/interop"
mkdir -p "$out"
echo "interop: building the suite, derper and derpprobe with go$have"
(cd "$here" && go build -tags ts_debug_websockets -o "$out/" . tailscale.com/cmd/derper tailscale.com/cmd/derpprobe) || {
	echo "interop: FAILED: build"; exit 1; }
exec timeout -k 10 900 "$out/interop" -derpd "$top/$build/derpd" -derper "$out/derper" \
	-derpprobe "$out/derpprobe" "$@"
