#!/bin/sh
# Run libFuzzer targets one after another (make fuzz): each from a copy of its committed
# seeds, bounded by runs and seconds (a budget file's line for the target, when given,
# replaces the global ones), and print one line per target with its speed. The targets' own
# output (derpd's log lines, usage errors) is dropped; libFuzzer's and the sanitizers' is kept.
# usage: run.sh BUILD SECONDS SEED RUNS BUDGET_FILE target...
build=$1 secs=$2 seed=$3 runs=$4 budget=$5
shift 5
start=$(date +%s)
for n in "$@"; do
	r=$runs s=$secs
	if [ -n "$budget" ]; then
		line=$(awk -v n="$n" '$1 == n { print $2, $3 }' "$budget")
		if [ -z "$line" ]; then
			echo "fuzz: $n has no line in $budget"; exit 1
		fi
		r=${line% *} s=${line#* }
	fi
	corpus=$build/fuzz/corpus-$n
	mkdir -p "$corpus"
	cp test/fuzz/corpus/"$n"/* "$corpus"/ 2>/dev/null
	t0=$(date +%s)
	if ! "$build/fuzz/$n" -max_total_time="$s" -seed="$seed" -runs="$r" \
	    -print_final_stats=1 -close_fd_mask=3 "$corpus" > "$build/fuzz/$n.log" 2>&1; then
		tail -n 40 "$build/fuzz/$n.log"
		echo "fuzz: $n FAILED (log: $build/fuzz/$n.log)"
		exit 1
	fi
	execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$build/fuzz/$n.log")
	rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$build/fuzz/$n.log")
	cov=$(grep -o 'cov: [0-9]*' "$build/fuzz/$n.log" | tail -n 1)
	echo "fuzz: $n ok: $execs runs in $(($(date +%s) - t0))s ($rate/s, $cov)"
done
echo "fuzz: all $# targets ok in $(($(date +%s) - start))s"
