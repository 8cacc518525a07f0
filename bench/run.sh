#!/usr/bin/env bash
# Side-by-side load benchmark: Larder beside nginx proxy_cache and Varnish, in one run, each
# proxy pinned to the same single core (PROXY_CPU), wrk on the other (LOAD_CPU), the same
# connection count (CONNS) for all. Every row is printed as a ratio at the end.
# Usage: bench/run.sh     (DURATION=10s ROUNDS=3 CONNS=50 to tune; ROWS to pick rows)
#
# Rows (ROWS="hits log disk fwd cluster miss" by default; all hits are warmed first):
#  hits     1k, 64k and 1m memory hits, access logs off everywhere: Larder vs nginx, and vs
#           Varnish (malloc storage; BENCH_VARNISH=0 leaves it out).
#  log      1k and 64k hits with each server's *default* access log, written to a file:
#           nginx's `access_log ... combined` against Larder's default (combined on stdout,
#           redirected to a file). Also Larder with its log against Larder with it off.
#  disk     (DISK_SIZES="64k 1m") a Larder with --disk-dir and --memory-max-object 16KiB
#           (--memory 64MiB: every entry's metadata stays in memory, as nginx's keys zone
#           does, but no body of these sizes is kept there), against nginx proxy_cache (on
#           disk too), wrk walking in turn through distinct warmed objects (256 of 64 KiB and
#           128 of 1 MiB; DISK_OBJECTS_64K, DISK_OBJECTS_1M): every body comes from its file
#           (the page cache); reported with hits and larder_disk_loads_total per request.
#  fwd      forwarded hits: a client enters at a peer that does not own the URL (an entry
#           peer whose --peers lists only the owner, --hot-memory 0 so it keeps no copy) and
#           is answered by the owner over the pooled peer connection. CPU per request (ns,
#           from /proc/PID/task/*/schedstat) of the entry peer for a forwarded 1k hit against
#           the owner's for a local 1k hit, and req/s against a local hit.
#  cluster  three peers (--self/--peers, defaults: hot copies on) pinned to the one proxy
#           core, three wrk (one per peer) walking the same 300 1k objects: the aggregate.
#  miss     1k misses, every request a distinct URL (origin nginx on loopback, same core),
#           Larder vs nginx: cold-miss throughput, origin fetch and store included.
# LARDER_BIN=path benchmarks that binary instead of building ./target/release/larder.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-50}
ROWS=${ROWS:-hits log disk fwd cluster miss}
SIZES=${SIZES:-1k 64k 1m}
LOG_SIZES=${LOG_SIZES:-1k 64k}
DISK_SIZES=${DISK_SIZES-64k 1m}
BENCH_VARNISH=${BENCH_VARNISH:-1}
declare -A DISK_OBJECTS=([64k]=256 [1m]=128)
[ -n "${DISK_OBJECTS_64K:-}" ] && DISK_OBJECTS[64k]=$DISK_OBJECTS_64K
[ -n "${DISK_OBJECTS_1M:-}" ] && DISK_OBJECTS[1m]=$DISK_OBJECTS_1M
PROXY_CPU=${PROXY_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
has() { [[ " $ROWS " == *" $1 "* ]]; }
has disk || DISK_SIZES=

need=()
command -v nginx >/dev/null || need+=(nginx)
command -v wrk >/dev/null || need+=(wrk)
command -v curl >/dev/null || need+=(curl)
[ "$BENCH_VARNISH" = 1 ] && ! command -v varnishd >/dev/null && need+=(varnish)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
if [ -z "${LARDER_BIN:-}" ]; then
  cargo build --release --bin larder >/dev/null 2>&1 || cargo build --release --bin larder
  LARDER_BIN=./target/release/larder
fi
"$LARDER_BIN" --version

work=$(mktemp -d)
trap 'set +e; kill $(jobs -p) 2>/dev/null; [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null; pkill -f "varnishd.*$work" 2>/dev/null; rm -rf "$work"' EXIT
chmod 755 "$work"
mkdir -p "$work/www" "$work/cache"
head -c 1024 /dev/urandom > "$work/www/1k"
head -c 65536 /dev/urandom > "$work/www/64k"
head -c 1048576 /dev/urandom > "$work/www/1m"
bytes_of() { case $1 in 64k) echo 65536 ;; 1m) echo 1048576 ;; *) echo "DISK_SIZES: 64k or 1m, not $1" >&2; exit 1 ;; esac; }
for f in $DISK_SIZES; do
  mkdir -p "$work/www/d$f"
  for i in $(seq 0 $((DISK_OBJECTS[$f] - 1))); do head -c "$(bytes_of "$f")" /dev/urandom > "$work/www/d$f/$i"; done
  # wrk walks the objects in turn (one wrk thread: one counter for every connection).
  cat > "$work/cycle-$f.lua" <<LUA
local i, n = -1, ${DISK_OBJECTS[$f]}
request = function() i = (i + 1) % n; return wrk.format("GET", "/d$f/" .. i) end
LUA
done
mkdir -p "$work/www/c"
for i in $(seq 0 299); do head -c 1024 /dev/urandom > "$work/www/c/$i"; done
cat > "$work/cycle-cluster.lua" <<'LUA'
local i, n = -1, 300
request = function() i = (i + 1) % n; return wrk.format("GET", "/c/" .. i) end
LUA

ORIGIN=18081 NGINX=18082 LARDER=18083 VARNISH=18084 LARDER_DISK=18085
NGINX_LOG=18086 LARDER_LOG=18087 ENTRY=18088 PEER1=18089 PEER2=18090 PEER3=18091
cat > "$work/nginx.conf" <<NGINX
worker_processes 1;
pid $work/nginx.pid;
error_log $work/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on; tcp_nopush off; tcp_nodelay on; keepalive_requests 1000000;
  proxy_cache_path $work/cache levels=1:2 keys_zone=bench:64m max_size=1g inactive=1h;
  server {
    listen 127.0.0.1:$ORIGIN; root $work/www; add_header Cache-Control "max-age=3600";
    # Any /miss/ URL is the 1k object: every distinct URL is a miss for the proxies.
    location /miss/ { rewrite ^ /1k break; }
  }
  server {
    listen 127.0.0.1:$NGINX;
    location / {
      proxy_pass http://127.0.0.1:$ORIGIN;
      proxy_cache bench; proxy_http_version 1.1; proxy_set_header Connection "";
      add_header X-Cache \$upstream_cache_status;
    }
  }
  # The same cache with nginx's default access log (combined, to a file).
  server {
    listen 127.0.0.1:$NGINX_LOG;
    access_log $work/nginx-access.log combined;
    location / {
      proxy_pass http://127.0.0.1:$ORIGIN;
      proxy_cache bench; proxy_http_version 1.1; proxy_set_header Connection "";
      add_header X-Cache \$upstream_cache_status;
    }
  }
}
NGINX
# The origin and the nginx cache share one master; pin everything to the proxy core.
taskset -c "$PROXY_CPU" nginx -c "$work/nginx.conf"
larder() { # port, then flags; LARDER_LOG_FORMAT=off unless the caller sets it
  local port=$1; shift
  LARDER_LOG_FORMAT=${LARDER_LOG_FORMAT:-off} LARDER_LOG=warn LARDER_THREADS=1 \
    taskset -c "$PROXY_CPU" "$LARDER_BIN" --listen "127.0.0.1:$port" "$@" &
}
pid_of() { pgrep -f -- "--listen 127.0.0.1:$1( |$)" | head -1; }
larder $LARDER --mirror http://127.0.0.1:$ORIGIN --memory 512MiB
if has log; then
  # Larder's default log (nothing set): combined lines on stdout, kept in a file.
  LARDER_LOG_FORMAT=combined larder $LARDER_LOG --mirror http://127.0.0.1:$ORIGIN --memory 512MiB \
    > "$work/larder-access.log"
fi
if [ -n "$DISK_SIZES" ]; then
  larder $LARDER_DISK --mirror http://127.0.0.1:$ORIGIN --memory 64MiB --memory-max-object 16KiB \
    --disk-dir "$work/larder-disk" --disk-size 2GiB
fi
if has fwd; then
  # Owner: the plain Larder above (a peer's request is served locally there).
  larder $ENTRY --mirror http://127.0.0.1:$ORIGIN --memory 512MiB --self http://127.0.0.1:$ENTRY --peers http://127.0.0.1:$LARDER --hot-memory 0
fi
if has cluster; then
  members=http://127.0.0.1:$PEER1,http://127.0.0.1:$PEER2,http://127.0.0.1:$PEER3
  for p in $PEER1 $PEER2 $PEER3; do
    larder $p --mirror http://127.0.0.1:$ORIGIN --memory 512MiB --self http://127.0.0.1:$p --peers $members
  done
fi
if [ "$BENCH_VARNISH" = 1 ]; then
  taskset -c "$PROXY_CPU" varnishd -a 127.0.0.1:$VARNISH -b 127.0.0.1:$ORIGIN -s malloc,512m -n "$work/varnish" -F >/dev/null 2>&1 &
fi
up() { for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$1/${2:-healthz}" && return; sleep 0.1; done; echo "port $1 did not come up" >&2; exit 1; }
up $LARDER
has log && up $LARDER_LOG
[ -n "$DISK_SIZES" ] && up $LARDER_DISK
has fwd && up $ENTRY
has cluster && { up $PEER1; up $PEER2; up $PEER3; }
[ "$BENCH_VARNISH" = 1 ] && up $VARNISH 1k

warm() { curl -s -o /dev/null "$1"; curl -s -o /dev/null "$1"; }
proxies=("nginx:$NGINX" "larder:$LARDER")
[ "$BENCH_VARNISH" = 1 ] && proxies+=("varnish:$VARNISH")
for p in "${proxies[@]}" "nginxlog:$NGINX_LOG" "larderlog:$LARDER_LOG" "entry:$ENTRY"; do
  [[ $p == larderlog:* ]] && ! has log && continue
  [[ $p == entry:* ]] && ! has fwd && continue
  for f in 1k 64k 1m; do warm "http://127.0.0.1:${p#*:}/$f"; done
done
echo "larder: $(curl -sI "http://127.0.0.1:$LARDER/1k" | grep -i cache-status | tr -d '\r')"
echo "nginx:  $(curl -sI "http://127.0.0.1:$NGINX/1k" | grep -i x-cache | tr -d '\r')"
[ "$BENCH_VARNISH" = 1 ] && echo "varnish: $(curl -sI "http://127.0.0.1:$VARNISH/1k" | grep -iE '^age|^x-varnish' | tr -d '\r' | tr '\n' ' ')"
has fwd && echo "entry (forwarded): $(curl -sI "http://127.0.0.1:$ENTRY/1k" | grep -i cache-status | tr -d '\r')"
if has cluster; then
  for i in $(seq 0 299); do warm "http://127.0.0.1:$PEER1/c/$i"; warm "http://127.0.0.1:$PEER2/c/$i"; warm "http://127.0.0.1:$PEER3/c/$i"; done
fi
# Disk rows: every object fetched twice through both; Larder's writes land on disk.
metric() { curl -s "http://127.0.0.1:${2:-$LARDER_DISK}/metrics" | awk -v m="$1" '$1==m {print $2}'; }
disk_objects=0
for f in $DISK_SIZES; do
  for i in $(seq 0 $((DISK_OBJECTS[$f] - 1))); do
    warm "http://127.0.0.1:$NGINX/d$f/$i"; warm "http://127.0.0.1:$LARDER_DISK/d$f/$i"
  done
  disk_objects=$((disk_objects + DISK_OBJECTS[$f]))
done
if [ -n "$DISK_SIZES" ]; then
  for i in $(seq 100); do [ "$(metric larder_disk_writes_total)" -ge "$disk_objects" ] && break; sleep 0.1; done
  echo "larder disk tier: $(metric larder_disk_writes_total) of $disk_objects objects written," \
    "$(metric larder_disk_bytes) bytes, write failures $(metric larder_disk_write_failures_total);" \
    "memory tier $(metric 'larder_cache_bytes{tier="memory"}') bytes"
  [ "$(metric larder_disk_write_failures_total)" = 0 ] || { echo "larder could not write its disk tier" >&2; exit 1; }
fi

# rps, p99 (ms) and request count of one wrk run (of URL $1, with wrk script $2 if given).
measure() {
  local out rps p99 n
  out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"$DURATION" --latency ${2:+-s "$2"} "$1")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v=v*1000}; print v}' <<<"$out")
  n=$(awk '/requests in/ {print $1}' <<<"$out")
  echo "$rps $p99 $n"
}
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# CPU time (ns) of every thread of process $1 so far.
cpu_ns() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{s += $1} END {printf "%.0f\n", s}'; }
declare -A RPS P99 CPU
# row NAME PORT PATH [SCRIPT] [PID]: ROUNDS wrk runs; medians into RPS/P99 (and CPU ns per
# request of PID into CPU).
row() {
  local name=$1 port=$2 path=$3 script=${4:-} pid=${5:-} rs=() ps=() cs=() a b n c0
  for _ in $(seq "$ROUNDS"); do
    [ -n "$pid" ] && c0=$(cpu_ns "$pid")
    read -r a b n < <(measure "http://127.0.0.1:$port$path" "$script")
    rs+=("$a"); ps+=("$b")
    [ -n "$pid" ] && cs+=("$(( ($(cpu_ns "$pid") - c0) / n ))")
  done
  RPS[$name]=$(printf "%s\n" "${rs[@]}" | median); P99[$name]=$(printf "%s\n" "${ps[@]}" | median)
  [ -n "$pid" ] && CPU[$name]=$(printf "%s\n" "${cs[@]}" | median)
  printf "%-22s %12s %10s %10s\n" "$name" "${RPS[$name]}" "${P99[$name]}" "${CPU[$name]:-}"
}
ratio() { # label a b: a/b of req/s, with both p99s
  awk -v t="$1" -v a="${RPS[$2]}" -v b="${RPS[$3]}" -v ap="${P99[$2]}" -v bp="${P99[$3]}" \
    'BEGIN {printf "%-34s %5.2f   p99 %s ms vs %s ms\n", t, a/b, ap, bp}'
}

printf "\n%-22s %12s %10s %10s\n" row "req/s" "p99 ms" "cpu ns/req"
if has hits; then
  for f in $SIZES; do for p in "${proxies[@]}"; do row "${p%%:*}.$f" "${p#*:}" "/$f"; done; done
fi
if has log; then
  for f in $LOG_SIZES; do
    row "nginx.log.$f" $NGINX_LOG "/$f"
    row "larder.log.$f" $LARDER_LOG "/$f"
    has hits || row "larder.$f" $LARDER "/$f"
  done
fi
declare -A CHECK
for f in $DISK_SIZES; do
  row "nginx.disk$f" $NGINX / "$work/cycle-$f.lua"
  loads0=$(metric larder_disk_loads_total); hits0=$(metric 'larder_requests_total{outcome="hit"}')
  req0=$(curl -s "http://127.0.0.1:$LARDER_DISK/metrics" | awk '$1 ~ /^larder_requests_total/ {s += $2} END {print s}')
  row "larder.disk$f" $LARDER_DISK / "$work/cycle-$f.lua"
  req=$(( $(curl -s "http://127.0.0.1:$LARDER_DISK/metrics" | awk '$1 ~ /^larder_requests_total/ {s += $2} END {print s}') - req0 ))
  CHECK[$f]=$(awk -v n="$req" -v l="$(($(metric larder_disk_loads_total) - loads0))" \
    -v h="$(($(metric 'larder_requests_total{outcome="hit"}') - hits0))" \
    'BEGIN {printf "%d requests: %.3f hits and %.3f disk loads per request", n, h/n, l/n}')
done
if has fwd; then
  row "larder.local.1k" $LARDER /1k "" "$(pid_of $LARDER)"
  row "larder.fwd.1k" $ENTRY /1k "" "$(pid_of $ENTRY)"
  # The owner's share of a forwarded hit, measured on its own over the same run.
  c0=$(cpu_ns "$(pid_of $LARDER)")
  read -r _ _ n < <(measure "http://127.0.0.1:$ENTRY/1k")
  CPU[owner.fwd.1k]=$(( ($(cpu_ns "$(pid_of $LARDER)") - c0) / n ))
fi
if has cluster; then
  tot=0
  for r in $(seq "$ROUNDS"); do
    for p in $PEER1 $PEER2 $PEER3; do
      taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"$DURATION" -s "$work/cycle-cluster.lua" "http://127.0.0.1:$p/" > "$work/cluster-$r-$p.txt" &
    done
    wait $(jobs -p | tail -3) 2>/dev/null || true
    sum=$(cat "$work"/cluster-"$r"-*.txt | awk '/Requests\/sec/ {s += $2} END {print s}')
    echo "$sum" >> "$work/cluster-sums"
  done
  RPS[cluster3.1k]=$(median < "$work/cluster-sums"); P99[cluster3.1k]=-
  row "larder.c.1k" $LARDER / "$work/cycle-cluster.lua"
  printf "%-22s %12s\n" "cluster3.1k (sum)" "${RPS[cluster3.1k]}"
fi
if has miss; then
  for p in "nginx:$NGINX" "larder:$LARDER"; do
    run=$RANDOM$RANDOM
    cat > "$work/miss-${p%%:*}.lua" <<LUA
local i = 0
request = function() i = i + 1; return wrk.format("GET", "/miss/${p%%:*}-$run-" .. i) end
LUA
    row "${p%%:*}.miss1k" "${p#*:}" / "$work/miss-${p%%:*}.lua"
  done
  echo "larder miss: $(curl -sI "http://127.0.0.1:$LARDER/miss/check-$RANDOM" | grep -i cache-status | tr -d '\r')"
fi

echo
if has hits; then
  for f in $SIZES; do
    ratio "$f hit: larder/nginx" "larder.$f" "nginx.$f"
    [ "$BENCH_VARNISH" = 1 ] && ratio "$f hit: larder/varnish" "larder.$f" "varnish.$f"
  done
fi
if has log; then
  for f in $LOG_SIZES; do
    ratio "$f hit, default logs: larder/nginx" "larder.log.$f" "nginx.log.$f"
    awk -v f="$f" -v a="${RPS[larder.log.$f]}" -v b="${RPS[larder.$f]}" \
      'BEGIN {printf "%-34s %5.1f %%\n", f " hit: larder log cost", (1 - a/b) * 100}'
  done
  echo "access log lines: larder $(wc -l < "$work/larder-access.log"), nginx $(wc -l < "$work/nginx-access.log")"
fi
for f in $DISK_SIZES; do
  ratio "disk$f hit: larder/nginx" "larder.disk$f" "nginx.disk$f"
  echo "  larder (${DISK_OBJECTS[$f]} objects, bodies on disk): ${CHECK[$f]}"
done
if has fwd; then
  ratio "1k forwarded hit/local hit req/s" larder.fwd.1k larder.local.1k
  awk -v e="${CPU[larder.fwd.1k]}" -v l="${CPU[larder.local.1k]}" -v o="${CPU[owner.fwd.1k]}" \
    'BEGIN {printf "%-34s %5.2f   (entry %d ns, local hit %d ns, owner per forwarded hit %d ns)\n", "1k forwarded hit entry CPU/local", e/l, e, l, o}'
fi
if has cluster; then
  ratio "1k cluster of 3 (sum)/1 peer" cluster3.1k larder.c.1k
fi
if has miss; then
  ratio "1k miss: larder/nginx" larder.miss1k nginx.miss1k
fi
