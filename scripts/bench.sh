#!/bin/sh
# `make bench`: derpd's standard benchmark on loopback, with nginx's stream proxy (the
# reference relay) and upstream's derper (the program derpd replaces, built from the
# tailscale.com release pinned in test/interop/go.mod when Go is there) measured on the same
# traffic in the same run. The table goes to stdout, progress to stderr, and every run's
# JSON line to BUILD/bench.jsonl.
#
#   sh scripts/bench.sh [BUILD]        BUILD: the build directory (default: build)
#
# Environment: BENCH_DURATION seconds measured per run (default 2), BENCH_WARMUP (0.5),
# BENCH_WAIT_QUIET: before each run, wait up to this many seconds for the machine to be
# under 25 % busy (default 30; other people's builds and tests skew a shared machine),
# BENCH_QUICK=1 for a smoke test (pairs 1 and 100, payload 1200, 1 s runs), BENCH_DERPER:
# a derper binary to use instead of building one (BENCH_DERPER=none: no derper runs).
# Runs: pairs 1, 10, 100, 1000 x payload 64, 1200, 16384 B at unlimited offered load,
# derpd then nginx; one ring; a paced ramp (100 pairs x 1200 B) to find saturation S,
# then an idle-latency run and runs at 50, 70 and 90 % of S; idle logged-in clients at
# 10,000 and at the most derpd's fd limit allows; DERP over TLS (derpd's self-signed
# certificate for 127.0.0.1): 10 and 100 pairs x 1200 B, 10,000 idle clients. derper runs
# the matrix, the ring, TLS, the idle and 50 % paced loads and 10,000 idle clients.
# See BENCHMARKS.md, derpd-bench(1).
set -eu
BUILD=${1:-build}
BENCH=$BUILD/tools/derpd-bench
DERPD=$BUILD/derpd
DUR=${BENCH_DURATION:-2}
WARM=${BENCH_WARMUP:-0.5}
QUIET=${BENCH_WAIT_QUIET:-30}
OUT=$BUILD/bench.jsonl
PAIRS="1 10 100 1000"
SIZES="64 1200 16384"
IDLE="10000 max"
TLS_PAIRS="10 100"
if [ "${BENCH_QUICK:-0}" = 1 ]; then
	PAIRS="1 100"
	SIZES="1200"
	DUR=1
	IDLE="10000"
	TLS_PAIRS="100"
fi

if [ ! -x "$BENCH" ] || [ ! -x "$DERPD" ]; then
	echo "bench: $BENCH or $DERPD missing: run make first" >&2
	exit 1
fi
nginx_ok=1
sh scripts/bench-deps.sh || nginx_ok=0
if ! command -v nginx >/dev/null 2>&1; then
	nginx_ok=0
	echo "bench: nginx not found: no reference relay, no ratios" >&2
fi
DERPER=${BENCH_DERPER:-}
if [ -z "$DERPER" ]; then
	DERPER=$BUILD/interop/derper
	echo "bench: building upstream derper (test/interop/go.mod) into $DERPER" >&2
	need=$(sed -n 's/^go \([0-9.]*\)$/\1/p' test/interop/go.mod)
	have=$(go env GOVERSION 2>/dev/null | sed 's/^go//')
	if [ -z "$have" ] || [ "$(printf '%s\n%s\n' "$need" "$have" | sort -V | head -n 1)" != "$need" ] ||
		! (cd test/interop && go build -o "../../$DERPER" tailscale.com/cmd/derper) >&2; then
		echo "bench: no derper (needs Go >= $need): derpd and nginx only" >&2
		DERPER=none
	fi
fi
derper_ok=1
[ "$DERPER" != none ] && [ -x "$DERPER" ] || derper_ok=0
: >"$OUT"
start=$(date +%s)

# run LABEL ARGS...: one derpd-bench run; its JSON line is kept in $J and appended to $OUT.
run() {
	label=$1
	shift
	printf 'bench: %3ss  %-8s %s\n' "$(($(date +%s) - start))" "$label" "$*" >&2
	for try in 1 2; do
		J=$(timeout -k 5 180 "$BENCH" -q --no-progress --wait-quiet "$QUIET" \
			--label "$label" "$@" 2>"$OUT.err") && break
		rc=$?
		cat "$OUT.err" >&2
		echo "bench: derpd-bench $* failed (exit status $rc)" >&2
		# a shared machine: someone else's cleanup may have killed it; once more
		[ "$try" = 2 ] && exit 1
	done
	rm -f "$OUT.err"
	printf '%s\n' "$J" >>"$OUT"
}
# jv KEY: the value of KEY in $J
jv() { printf '%s\n' "$J" | sed -n "s/.*\"$1\":\"\{0,1\}\([^\",}]*\).*/\1/p"; }
calc() { awk "BEGIN { $1 }"; }

T="-d $DUR -W $WARM"
for p in $PAIRS; do
	for l in $SIZES; do
		run matrix --derpd "$DERPD" -p "$p" -l "$l" $T
		[ "$nginx_ok" = 1 ] && run matrix --nginx -p "$p" -l "$l" $T
		[ "$derper_ok" = 1 ] && run matrix --derper "$DERPER" -p "$p" -l "$l" $T
	done
done
run ring --derpd "$DERPD" --ring 100 -l 1200 $T
[ "$derper_ok" = 1 ] && run ring --derper "$DERPER" --ring 100 -l 1200 $T
for p in $TLS_PAIRS; do
	run tls --derpd "$DERPD" --tls -p "$p" -l 1200 $T
	[ "$derper_ok" = 1 ] && run tls --derper "$DERPER" --tls -p "$p" -l 1200 $T
done

# Saturation: paced offered load rising x1.25 from 500 packets/s per pair until derpd
# delivers less than 99 % of it, loses more than 1 %, or its p99 passes 100 ms (derpd
# holds a sender back rather than drop, so past saturation packets queue in the TCP
# buffers: a relay 100 ms late is not keeping up); S = the highest offered rate it
# sustained (or, if none, the most it delivered). Smaller losses are what the runs at
# 50, 70 and 90 % of S look for.
rate=500
S=0
for step in $(seq 1 24); do
	run ramp --derpd "$DERPD" -p 100 -l 1200 -r "$rate" $T
	if calc "exit !($(jv delivered_pps) < 0.99 * $(jv offered_pps) || $(jv loss_pct) > 1 || $(jv p99_us) > 100000)"; then
		[ "$S" = 0 ] && S=$(jv delivered_pps)
		break
	fi
	S=$(jv offered_pps)
	rate=$(calc "printf \"%.0f\", $rate * 1.25")
done
S=$(calc "printf \"%.0f\", $S")
run idle-lat --derpd "$DERPD" -p 100 -l 1200 -r 10 $T
for f in 50 70 90; do
	run "load$f" --derpd "$DERPD" -p 100 -l 1200 -r "$(calc "printf \"%.1f\", $S * $f / 100 / 100")" $T
done
# The others at the idle and 50 % loads: what this machine allows any relay.
for srv in nginx derper; do
	eval "ok=\$${srv}_ok"
	[ "$ok" = 1 ] || continue
	[ "$srv" = nginx ] && sv="--nginx" || sv="--derper $DERPER"
	run idle-lat $sv -p 100 -l 1200 -r 10 $T
	run load50 $sv -p 100 -l 1200 -r "$(calc "printf \"%.1f\", $S * 50 / 100 / 100")" $T
done
for n in $IDLE; do
	run idle --derpd "$DERPD" --idle "$n"
done
run idle --derpd "$DERPD" --tls --idle 10000
[ "$derper_ok" = 1 ] && run idle --derper "$DERPER" --idle 10000
elapsed=$(($(date +%s) - start))

# ---- the table ---------------------------------------------------------------------------
model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
ngv=$( [ "$nginx_ok" = 1 ] && nginx -v 2>&1 | sed 's/.*nginx\///' || echo "not available")
dpv=$( [ "$derper_ok" = 1 ] && sed -n 's/^[[:space:]]*tailscale.com \(v[^ ]*\)$/\1/p' test/interop/go.mod || echo "not available")
rev=$(git describe --always --dirty 2>/dev/null || echo "?")
echo "derpd benchmark: DERP over plain HTTP on loopback (make bench, derpd $rev)"
echo "machine: $(nproc) cores ($model), Linux $(uname -r), $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "runs: ${DUR} s measured after ${WARM} s warm-up, each against a fresh server; $elapsed s in all"
echo "reference: nginx $ngv stream proxy, $(nproc) workers, forwarding each sender's byte stream"
echo "           (the same frames) to a receiver socket of the bench;"
echo "           upstream derper (tailscale.com $dpv, Go's default GOMAXPROCS = $(nproc))"
awk -v S="$S" '
function jv(k,   m) {
	if (!match($0, "\"" k "\":(\"[^\"]*\"|[^,}]*)")) return ""
	m = substr($0, RSTART + length(k) + 3, RLENGTH - length(k) - 3)
	gsub(/"/, "", m)
	return m
}
function num(k) { return jv(k) + 0 }
function mib(k) { return jv(k) / 1024 }
# a run other processes disturbed: marked with a "*"
function noisy() {
	if (num("others_cpu_pct") > 10 || num("busy_before_pct") > 25) { nnoisy++; return "*" }
	return " "
}
{
	lab = jv("label"); srv = jv("server")
	if (lab == "matrix") {
		key = jv("pairs") " " jv("payload")
		if (!(key in seen)) { seen[key] = 1; order[++n] = key }
		row[key, srv] = $0
	} else if ((lab == "ramp" || lab == "idle-lat" || lab ~ /^load/) && srv != "derpd") {
		refpaced[srv, lab] = $0
	} else if (lab == "ramp" || lab == "idle-lat" || lab ~ /^load/) {
		paced[++np] = $0
	} else if (lab == "ring") {
		ring[srv] = $0
	} else if (lab == "tls" && srv == "derper") {
		tlsref[jv("pairs") " " jv("payload")] = $0
	} else if (lab == "tls") {
		tls[++nt] = $0
	} else if (lab == "idle") {
		idle[++ni] = $0
	}
}
END {
	print ""
	print "unlimited offered load: delivered packets/s and payload Gbit/s (derpd drops by design"
	print "when a receiver queue is full: loss = packets sent in the window never delivered)"
	printf "%5s %7s | %10s %7s %6s %8s %5s %6s | %10s %7s %5s | %10s %7s %6s %5s %6s | %6s %6s\n",
	    "pairs", "payload", "derpd pps", "Gbit/s", "loss%", "p99 ms", "CPU%", "RSSMiB",
	    "nginx pps", "Gbit/s", "CPU%", "derper pps", "Gbit/s", "loss%", "CPU%", "RSSMiB",
	    "/nginx", "/derper"
	print "              (CPU%: the server process, % of one core; RSSMiB: its peak RSS;"
	print "               /nginx, /derper: derpd Gbit/s over theirs)"
	for (i = 1; i <= n; i++) {
		k = order[i]; split(k, a, " ")
		$0 = row[k, "derpd"]
		dg = num("payload_gbps")
		if (jv("fresh_pair_ms") != "") {
			f = num("fresh_pair_ms"); if (f < 0) f = 1e9
			if (worst_at == "" || f > worst_fresh) {
				worst_fresh = f; worst_at = a[1] " pairs x " a[2] " B"
				worst_err = jv("fresh_pair_error")
			}
		}
		mark = noisy()
		printf "%5d %7d |%s%10.0f %7.3f %6.2f %8.2f %5.0f %6.1f |", a[1], a[2], mark,
		    jv("delivered_pps"), dg, jv("loss_pct"), jv("p99_us") / 1000,
		    jv("server_cpu_pct"), mib("server_peak_rss_kib")
		thr[k] = dg
		if ((k, "nginx") in row) {
			$0 = row[k, "nginx"]
			ng = num("payload_gbps")
			ratio[k] = ng > 0 ? dg / ng : 0
			printf " %10.0f %7.3f %5.0f%s|", jv("delivered_pps"), ng, jv("server_cpu_pct"), noisy()
		} else {
			printf " %10s %7s %5s |", "-", "-", "-"
		}
		if ((k, "derper") in row) {
			$0 = row[k, "derper"]
			dp = num("payload_gbps")
			dratio[k] = dp > 0 ? dg / dp : 0
			printf " %10.0f %7.3f %6.2f %5.0f %6.1f%s|", jv("delivered_pps"), dp,
			    jv("loss_pct"), jv("server_cpu_pct"), mib("server_peak_rss_kib"), noisy()
		} else {
			printf " %10s %7s %6s %5s %6s |", "-", "-", "-", "-", "-"
		}
		printf " %6s %6s\n", ((k, "nginx") in row) ? sprintf("%.3f", ratio[k]) : "-",
		    ((k, "derper") in row) ? sprintf("%.3f", dratio[k]) : "-"
	}
	for (srv in ring) {
		$0 = ring[srv]
		printf "ring of %d clients x %d B, %-6s: %.0f packets/s, %.3f Gbit/s, loss %.2f %%, p99 %.2f ms, CPU %.0f %%\n",
		    jv("clients"), jv("payload"), srv, jv("delivered_pps"), jv("payload_gbps"),
		    jv("loss_pct"), jv("p99_us") / 1000, jv("server_cpu_pct")
	}
	if (nt) {
		print ""
		print "DERP over TLS (a self-signed certificate for 127.0.0.1), unlimited, 1200 B"
		printf "%5s %7s | %10s %7s %6s %8s %5s %6s | %9s | %10s %7s %6s %5s %6s | %7s\n",
		    "pairs", "payload", "derpd pps", "Gbit/s", "loss%", "p99 ms", "CPU%", "RSSMiB",
		    "TLS/plain", "derper pps", "Gbit/s", "loss%", "CPU%", "RSSMiB", "/derper"
		for (i = 1; i <= nt; i++) {
			$0 = tls[i]
			k = jv("pairs") " " jv("payload")
			dg = num("payload_gbps")
			mark = noisy()
			printf "%5d %7d |%s%10.0f %7.3f %6.2f %8.2f %5.0f %6.1f | %9.3f |", jv("pairs"),
			    jv("payload"), mark, jv("delivered_pps"), dg, jv("loss_pct"),
			    jv("p99_us") / 1000, jv("server_cpu_pct"), mib("server_peak_rss_kib"),
			    (thr[k] > 0) ? dg / thr[k] : 0
			if (k in tlsref) {
				$0 = tlsref[k]
				dp = num("payload_gbps")
				printf " %10.0f %7.3f %6.2f %5.0f %6.1f%s| %7.3f\n", jv("delivered_pps"), dp,
				    jv("loss_pct"), jv("server_cpu_pct"), mib("server_peak_rss_kib"), noisy(),
				    (dp > 0) ? dg / dp : 0
			} else {
				printf " %10s %7s %6s %5s %6s | %7s\n", "-", "-", "-", "-", "-", "-"
			}
		}
	}
	print ""
	printf "paced load, 100 pairs x 1200 B; saturation S = %d packets/s: the highest offered rate\n", S
	print "of a x1.25 ramp derpd delivered (>= 99 %, loss <= 1 %, p99 <= 100 ms); nginx and derper"
	print "at the idle and 50 % loads."
	print "CPU: the server, the bench and the whole machine (% of one core; softirq work is not"
	print "always charged to a process)"
	printf "%-14s %9s %6s %9s %7s %8s %8s %8s %5s %5s %5s\n", "run", "offered", "% of S",
	    "delivered", "loss%", "p50 us", "p99 us", "p999 us", "srv", "bench", "all"
	split("nginx derper", others, " ")
	for (j = 1; j <= 2; j++) {
		if ((others[j], "idle-lat") in refpaced) paced[++np] = refpaced[others[j], "idle-lat"]
		if ((others[j], "load50") in refpaced) paced[++np] = refpaced[others[j], "load50"]
	}
	for (i = 1; i <= np; i++) {
		$0 = paced[i]; lab = jv("label"); srv = jv("server")
		printf "%-14s %9.0f %6.1f %9.0f %7.3f %8.1f %8.1f %8.1f %5.0f %5.0f %5.0f%s\n",
		    lab (srv != "derpd" ? " " srv : ""),
		    jv("offered_pps"), 100 * jv("offered_pps") / S, jv("delivered_pps"),
		    jv("loss_pct"), jv("p50_us"), jv("p99_us"), jv("p999_us"),
		    jv("server_cpu_pct"), 100 * jv("bench_cpu_s") / jv("duration_s"),
		    jv("machine_cpu_pct"), noisy()
		if (srv == "nginx") { ref_p99[lab] = num("p99_us"); continue }
		if (srv != "derpd") continue
		if (lab == "idle-lat") idle_p99 = num("p99_us")
		if (lab ~ /^load/) { loss[lab] = num("loss_pct"); p99[lab] = num("p99_us") }
	}
	print ""
	print "idle logged-in clients (RSS per connection = RSS delta / connections)"
	printf "%-6s %12s %9s %9s %9s %9s %10s  %s\n", "server", "clients", "connect s", "logins/s",
	    "RSS0 MiB", "RSS MiB", "B/conn", "note"
	for (i = 1; i <= ni; i++) {
		$0 = idle[i]
		printf "%-6s %8d%s %9.2f %9.0f %9.1f %9.1f %10.0f%s %s\n", jv("server"), jv("clients"),
		    jv("transport") == "https" ? " TLS" : "    ", jv("connect_s"),
		    jv("logins_per_s"), mib("server_rss_before_kib"), mib("server_rss_kib"),
		    jv("rss_per_conn_bytes"), noisy(), jv("capped") (num("failed") > 0 ? " " jv("failed") " failed: " jv("error") : "")
		if (num("requested") == 10000 && jv("transport") == "http" && jv("server") == "derpd")
			per10k = num("rss_per_conn_bytes")
		if (num("requested") == 10000 && jv("transport") == "http" && jv("server") == "derper")
			derper10k = num("rss_per_conn_bytes")
	}
	if (nnoisy)
		printf "* %d run(s) shared the machine with other processes (> 10 %% of a CPU, or busy before)\n", nnoisy
	print ""
	print "targets (issue 3)"
	k = "100 1200"
	if (k in ratio)
		printf "  %-7s 100 pairs x 1200 B unlimited: derpd/nginx throughput %.3f (>= 0.8)\n",
		    (ratio[k] >= 0.8) ? "met" : "NOT met", ratio[k]
	else
		print "  n/a     100 pairs x 1200 B unlimited: no reference measured"
	ok = ("load50" in loss) && loss["load50"] == 0 && loss["load70"] == 0 && loss["load90"] == 0
	printf "  %-7s no loss below 90 %% of S: loss %.3f / %.3f / %.3f %% at 50 / 70 / 90 %%\n",
	    ok ? "met" : "NOT met", loss["load50"], loss["load70"], loss["load90"]
	printf "  %-7s p99 at 50 %% of S <= 2 x idle p99: %.1f us vs 2 x %.1f us\n",
	    (p99["load50"] <= 2 * idle_p99) ? "met" : "NOT met", p99["load50"], idle_p99
	if (("load50" in ref_p99) && ("idle-lat" in ref_p99))
		printf "          (nginx at the same offered loads: %.1f us vs 2 x %.1f us)\n",
		    ref_p99["load50"], ref_p99["idle-lat"]
	if (per10k != "")
		printf "  %-7s <= 2 KiB RSS per idle connection at 10,000: %d bytes%s\n",
		    (per10k <= 2048) ? "met" : "NOT met", per10k,
		    (derper10k != "") ? sprintf(" (derper: %d bytes)", derper10k) : ""
	if (("1000 1200" in thr) && thr["100 1200"] > 0) {
		r = thr["1000 1200"] / thr["100 1200"]
		printf "  %-7s 1000 pairs >= 0.7 x 100 pairs (1200 B): %.3f\n", (r >= 0.7) ? "met" : "NOT met", r
	}
	if (worst_at != "")
		printf "  %-7s (DESIGN.md) after overload a fresh pair logs in and relays within 1 s: worst %s at %s\n",
		    (worst_fresh < 1000) ? "met" : "NOT met",
		    (worst_fresh >= 1e9) ? "failed" : sprintf("%.0f ms", worst_fresh), worst_at
	if (worst_fresh >= 1e9)
		printf "          (%s)\n", worst_err
}' "$OUT"
echo ""
echo "every run as one JSON line: $OUT"
