#!/usr/bin/env bash
# Restart with a full disk tier: ENTRIES records on disk (written by the fill_disk example in
# the format larder writes), then `larder --disk-dir` started RUNS times over them. Measures
#   ready   ms from exec until /healthz answers (serving must not wait for the scan),
#   scan    the scan's own millis, from its "disk tier scanned" log line,
#   HWM     peak RSS (VmHWM) once the scan is done, against the same start over an empty dir,
# and checks that restored URLs are hits: nothing listens on the mirrored origin's port, so
# any answer that did not come from the disk tier would be a 502.
# Usage: bench/restart.sh   (ENTRIES=100000 BODY=1024 RUNS=3; COLD=1 drops the page cache
# before each start, root only; LARDER_BIN=path skips the build)
# Access logs off, as on the nginx side.
export LARDER_LOG_FORMAT=off
set -euo pipefail
cd "$(dirname "$0")/.."
ENTRIES=${ENTRIES:-100000}
BODY=${BODY:-1024}
RUNS=${RUNS:-3}
COLD=${COLD:-0}
LARDER=${LARDER_PORT:-18093}
ORIGIN=${ORIGIN_PORT:-18091}

if [ -z "${LARDER_BIN:-}" ]; then
  cargo build --release --bin larder >/dev/null 2>&1 || cargo build --release --bin larder
  LARDER_BIN=./target/release/larder
fi
cargo build --release -p larder-peer --example fill_disk >/dev/null 2>&1 ||
  cargo build --release -p larder-peer --example fill_disk
FILL=./target/release/examples/fill_disk

if curl -s -o /dev/null "http://127.0.0.1:$ORIGIN/"; then
  echo "something listens on 127.0.0.1:$ORIGIN; pick another ORIGIN_PORT" >&2
  exit 1
fi

work=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT
mkdir -p "$work/empty"
"$FILL" "$work/disk" "$ENTRIES" "$BODY" "http://127.0.0.1:$ORIGIN/pkg/"
du -sh "$work/disk" | awk '{print "on disk: " $1}'

now_ms() { echo $(($(date +%s%N) / 1000000)); }
plain() { sed 's/\x1b\[[0-9;]*m//g' "$1"; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# One start over $1: sets READY (ms), SCAN (ms, from the log), ENTRIES_SEEN, HWM (kB),
# SCANNED_FIRST (1 when the scan had already finished by the time /healthz answered).
start_once() {
  local dir=$1 log=$work/larder.log t0 i
  if [ "$COLD" = 1 ]; then sync; echo 3 >/proc/sys/vm/drop_caches; fi
  t0=$(now_ms)
  LARDER_LOG=info "$LARDER_BIN" --listen 127.0.0.1:$LARDER --mirror "http://127.0.0.1:$ORIGIN" \
    --disk-dir "$dir" --disk-size 4GiB >"$log" 2>&1 &
  pid=$!
  until curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$LARDER/healthz"; do sleep 0.002; done
  READY=$(($(now_ms) - t0))
  SCANNED_FIRST=0
  plain "$log" | grep -q "disk tier scanned" && SCANNED_FIRST=1
  for i in $(seq 1200); do plain "$log" | grep -q "disk tier scanned" && break; sleep 0.1; done
  SCAN=$(plain "$log" | sed -n 's/.*disk tier scanned.* millis=\([0-9]*\).*/\1/p')
  ENTRIES_SEEN=$(plain "$log" | sed -n 's/.*disk tier scanned.* entries=\([0-9]*\).*/\1/p')
  HWM=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
}

stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; pid=; }

# Requests for restored URLs: a hit with the right body each, and disk loads behind them.
check_hits() {
  local n body status loads ok=0 tried=0
  for n in 0 1 $((ENTRIES / 2)) $((ENTRIES - 1)) $((RANDOM % ENTRIES)) $((RANDOM % ENTRIES)); do
    tried=$((tried + 1))
    status=$(curl -s -D - -o "$work/body" "http://127.0.0.1:$LARDER/pkg/$n" | tr -d '\r' | awk -F': ' 'tolower($1)=="cache-status" {print $2}')
    body=$(head -n1 "$work/body")
    if [[ "$status" == *"; hit"* ]] && [ "$body" = "pkg $n" ] && [ "$(stat -c %s "$work/body")" = "$BODY" ]; then
      ok=$((ok + 1))
    else
      echo "  /pkg/$n: cache-status '$status', body starts '$body'" >&2
    fi
  done
  loads=$(curl -s "http://127.0.0.1:$LARDER/metrics" | awk '$1=="larder_disk_loads_total" {print $2}')
  echo "hits: $ok of $tried restored URLs (cache-status hit, right body; origin down), larder_disk_loads_total $loads"
  [ "$ok" = "$tried" ]
}

start_once "$work/empty"
BASE_READY=$READY BASE_HWM=$HWM
stop
echo "empty dir:   ready ${BASE_READY} ms, VmHWM ${BASE_HWM} kB"

readies=() scans=() hwms=()
failed=0
for r in $(seq "$RUNS"); do
  start_once "$work/disk"
  readies+=("$READY") scans+=("$SCAN") hwms+=("$HWM")
  echo "run $r: ready ${READY} ms (scan done by then: $([ "$SCANNED_FIRST" = 1 ] && echo yes || echo no)), scan ${SCAN} ms for ${ENTRIES_SEEN} entries, VmHWM ${HWM} kB"
  [ "$ENTRIES_SEEN" = "$ENTRIES" ] || { echo "  scan announced $ENTRIES_SEEN of $ENTRIES entries" >&2; failed=1; }
  check_hits || failed=1
  stop
done

R=$(printf "%s\n" "${readies[@]}" | median)
S=$(printf "%s\n" "${scans[@]}" | median)
H=$(printf "%s\n" "${hwms[@]}" | median)
echo
echo "$ENTRIES entries of $BODY B ($([ "$COLD" = 1 ] && echo "cold page cache" || echo "warm page cache")), median of $RUNS:"
echo "  ready (accepting, /healthz 200): $R ms   (empty dir: $BASE_READY ms)"
echo "  scan (log millis):               $S ms"
awk -v h="$H" -v b="$BASE_HWM" -v n="$ENTRIES" \
  'BEGIN {printf "  VmHWM after scan:                %.1f MiB   (empty dir: %.1f MiB; +%.0f B per entry)\n", h/1024, b/1024, (h-b)*1024/n}'
exit "$failed"
