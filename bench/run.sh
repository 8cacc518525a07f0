#!/usr/bin/env bash
# Side-by-side load benchmark: Larder vs nginx proxy_cache (and Varnish when BENCH_VARNISH=1),
# all cache hits, each proxy pinned to the same single core, wrk on the other core.
# Usage: bench/run.sh            (DURATION=10s ROUNDS=3 CONNS=50 SIZES="1k 64k 1m" to tune)
#
# Disk rows (DISK_SIZES="64k 1m"; DISK_SIZES= skips them, e.g. for a binary without a disk
# tier): a second Larder with --memory 256KiB --disk-dir, against the same nginx proxy_cache
# (on disk too), wrk walking in turn through distinct warmed objects (256 of 64 KiB and 128
# of 1 MiB by default; DISK_OBJECTS_64K, DISK_OBJECTS_1M). No body fits that memory tier
# (and bodies over 1/8 of it are never promoted), so every body comes from its file; the
# entries' metadata does not fit either, so most requests are cold hits that load it from
# disk first. The script reports hits and larder_disk_loads_total per request to show it.
# LARDER_BIN=path benchmarks that binary instead of building ./target/release/larder.
# Access logs off, as on the nginx side.
export LARDER_LOG_FORMAT=off
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-50}
SIZES=${SIZES:-1k 64k 1m}
DISK_SIZES=${DISK_SIZES-64k 1m}
declare -A DISK_OBJECTS=([64k]=256 [1m]=128)
[ -n "${DISK_OBJECTS_64K:-}" ] && DISK_OBJECTS[64k]=$DISK_OBJECTS_64K
[ -n "${DISK_OBJECTS_1M:-}" ] && DISK_OBJECTS[1m]=$DISK_OBJECTS_1M
PROXY_CPU=${PROXY_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}

need=()
command -v nginx >/dev/null || need+=(nginx)
command -v wrk >/dev/null || need+=(wrk)
[ "${BENCH_VARNISH:-0}" = 1 ] && ! command -v varnishd >/dev/null && need+=(varnish)
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

ORIGIN=18081 NGINX=18082 LARDER=18083 VARNISH=18084 LARDER_DISK=18085
cat > "$work/nginx.conf" <<NGINX
worker_processes 1;
pid $work/nginx.pid;
error_log $work/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on; tcp_nopush off; tcp_nodelay on; keepalive_requests 1000000;
  proxy_cache_path $work/cache levels=1:2 keys_zone=bench:64m max_size=1g inactive=1h;
  server { listen 127.0.0.1:$ORIGIN; root $work/www; add_header Cache-Control "max-age=3600"; }
  server {
    listen 127.0.0.1:$NGINX;
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
LARDER_LOG=warn LARDER_THREADS=1 taskset -c "$PROXY_CPU" "$LARDER_BIN" --listen 127.0.0.1:$LARDER \
  --mirror http://127.0.0.1:$ORIGIN --memory 512MiB &
if [ -n "$DISK_SIZES" ]; then
  LARDER_LOG=warn LARDER_THREADS=1 taskset -c "$PROXY_CPU" "$LARDER_BIN" --listen 127.0.0.1:$LARDER_DISK \
    --mirror http://127.0.0.1:$ORIGIN --memory 256KiB --disk-dir "$work/larder-disk" --disk-size 2GiB &
fi
if [ "${BENCH_VARNISH:-0}" = 1 ]; then
  taskset -c "$PROXY_CPU" varnishd -a 127.0.0.1:$VARNISH -b 127.0.0.1:$ORIGIN -s malloc,512m -n "$work/varnish" -F >/dev/null 2>&1 &
fi
for i in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$LARDER/healthz" && break; sleep 0.1; done
if [ -n "$DISK_SIZES" ]; then
  for i in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$LARDER_DISK/healthz" && break; sleep 0.1; done
fi
if [ "${BENCH_VARNISH:-0}" = 1 ]; then
  for i in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$VARNISH/" && break; sleep 0.1; done
fi

proxies=("nginx:$NGINX" "larder:$LARDER")
[ "${BENCH_VARNISH:-0}" = 1 ] && proxies+=("varnish:$VARNISH")
for p in "${proxies[@]}"; do for f in 1k 64k 1m; do
  curl -s -o /dev/null "http://127.0.0.1:${p#*:}/$f"; curl -s -o /dev/null "http://127.0.0.1:${p#*:}/$f"
done; done
curl -sI "http://127.0.0.1:$LARDER/1k" | grep -i cache-status
curl -sI "http://127.0.0.1:$NGINX/1k" | grep -i x-cache || true
# Disk rows: every object fetched twice through both; Larder's writes land on disk.
metric() { curl -s "http://127.0.0.1:$LARDER_DISK/metrics" | awk -v m="$1" '$1==m {print $2}'; }
disk_objects=0
for f in $DISK_SIZES; do
  for i in $(seq 0 $((DISK_OBJECTS[$f] - 1))); do
    for port in $NGINX $LARDER_DISK; do
      curl -s -o /dev/null "http://127.0.0.1:$port/d$f/$i"; curl -s -o /dev/null "http://127.0.0.1:$port/d$f/$i"
    done
  done
  disk_objects=$((disk_objects + DISK_OBJECTS[$f]))
done
if [ -n "$DISK_SIZES" ]; then
  for i in $(seq 100); do [ "$(metric larder_disk_writes_total)" -ge "$disk_objects" ] && break; sleep 0.1; done
  echo "larder disk tier: $(metric larder_disk_writes_total) of $disk_objects objects written," \
    "$(metric larder_disk_bytes) bytes, write failures $(metric larder_disk_write_failures_total);" \
    "memory tier $(metric 'larder_cache_bytes{tier="memory"}') bytes"
  [ "$(metric larder_disk_write_failures_total)" = 0 ] || { echo "larder could not write its disk tier" >&2; exit 1; }
  for f in $DISK_SIZES; do
    curl -sI "http://127.0.0.1:$LARDER_DISK/d$f/0" | grep -i cache-status
    curl -sI "http://127.0.0.1:$NGINX/d$f/0" | grep -i x-cache || true
  done
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

printf "\n%-8s %-8s %12s %10s\n" proxy size "req/s" "p99 ms"
declare -A RPS P99
for f in $SIZES; do
  for p in "${proxies[@]}"; do
    name=${p%%:*}; port=${p#*:}
    rs=(); ps=()
    for r in $(seq "$ROUNDS"); do read -r a b _ < <(measure "http://127.0.0.1:$port/$f"); rs+=("$a"); ps+=("$b"); done
    RPS[$name.$f]=$(printf "%s\n" "${rs[@]}" | median); P99[$name.$f]=$(printf "%s\n" "${ps[@]}" | median)
    printf "%-8s %-8s %12s %10s\n" "$name" "$f" "${RPS[$name.$f]}" "${P99[$name.$f]}"
  done
done
# Disk rows: nginx proxy_cache against the disk-tier Larder, both walking the same objects.
declare -A CHECK
for f in $DISK_SIZES; do
  for p in "nginx:$NGINX" "larder:$LARDER_DISK"; do
    name=${p%%:*}; port=${p#*:}
    rs=(); ps=(); total=0
    loads0=$(metric larder_disk_loads_total); hits0=$(metric 'larder_requests_total{outcome="hit"}')
    for r in $(seq "$ROUNDS"); do
      read -r a b n < <(measure "http://127.0.0.1:$port/" "$work/cycle-$f.lua"); rs+=("$a"); ps+=("$b"); total=$((total + n))
    done
    if [ "$name" = larder ]; then
      CHECK[$f]=$(awk -v n="$total" -v l="$(($(metric larder_disk_loads_total) - loads0))" \
        -v h="$(($(metric 'larder_requests_total{outcome="hit"}') - hits0))" \
        'BEGIN {printf "%d requests: %.3f hits and %.3f disk loads per request", n, h/n, l/n}')
    fi
    RPS[$name.disk$f]=$(printf "%s\n" "${rs[@]}" | median); P99[$name.disk$f]=$(printf "%s\n" "${ps[@]}" | median)
    printf "%-8s %-8s %12s %10s\n" "$name" "disk$f" "${RPS[$name.disk$f]}" "${P99[$name.disk$f]}"
  done
done
echo
for f in $SIZES; do
  awk -v f="$f" -v l="${RPS[larder.$f]}" -v n="${RPS[nginx.$f]}" -v lp="${P99[larder.$f]}" -v np="${P99[nginx.$f]}" \
    'BEGIN {printf "%-4s larder/nginx req/s ratio %.2f   p99 %s ms vs %s ms\n", f, l/n, lp, np}'
  if [ "${BENCH_VARNISH:-0}" = 1 ]; then
    awk -v f="$f" -v l="${RPS[larder.$f]}" -v n="${RPS[varnish.$f]}" 'BEGIN {printf "%-4s larder/varnish req/s ratio %.2f\n", f, l/n}'
  fi
done
for f in $DISK_SIZES; do
  awk -v f="disk$f" -v l="${RPS[larder.disk$f]}" -v n="${RPS[nginx.disk$f]}" -v lp="${P99[larder.disk$f]}" -v np="${P99[nginx.disk$f]}" \
    'BEGIN {printf "%-8s larder/nginx req/s ratio %.2f   p99 %s ms vs %s ms\n", f, l/n, lp, np}'
  echo "         larder (${DISK_OBJECTS[$f]} objects, --memory 256KiB): ${CHECK[$f]}"
done
