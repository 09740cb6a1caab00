#!/bin/sh
# run.sh BUILD TEST...: run each cmocka test binary against BUILD/derpd, sum the
# results and end with one "N passed, N failed" line. Exit 1 if anything failed.
build=$1; shift
DERPD_BIN=${DERPD_BIN:-$build/derpd}
export DERPD_BIN
pass=0; fail=0; broken=""
for t in "$@"; do
	out=$(timeout 300 "$t" 2>&1); rc=$?
	p=$(printf '%s\n' "$out" | sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p' | awk '{s+=$1} END {print s+0}')
	f=$(printf '%s\n' "$out" | sed -n 's/^\[  FAILED  \] \([0-9]*\) test.*/\1/p' | awk '{s+=$1} END {print s+0}')
	if [ "$rc" != 0 ] && [ "$f" = 0 ]; then f=1; fi
	[ "$f" = 0 ] || { broken="$broken $(basename "$t")"; printf '%s\n' "$out" | tail -n 40; }
	echo "$(basename "$t"): $p passed, $f failed"
	pass=$((pass + p)); fail=$((fail + f))
done
[ -z "$broken" ] || echo "failing:$broken"
echo "tests: $pass passed, $fail failed"
[ "$fail" = 0 ]
