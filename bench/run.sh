#!/usr/bin/env bash
# Side-by-side load benchmark: Larder vs nginx proxy_cache (and Varnish when BENCH_VARNISH=1),
# all cache hits, each proxy pinned to the same single core, wrk on the other core.
# Usage: bench/run.sh            (DURATION=10s ROUNDS=3 CONNS=50 SIZES="1k 64k 1m" to tune)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-50}
SIZES=${SIZES:-1k 64k 1m}
PROXY_CPU=${PROXY_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}

need=()
command -v nginx >/dev/null || need+=(nginx)
command -v wrk >/dev/null || need+=(wrk)
[ "${BENCH_VARNISH:-0}" = 1 ] && ! command -v varnishd >/dev/null && need+=(varnish)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release --bin larder >/dev/null 2>&1 || cargo build --release --bin larder

work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null; pkill -f "varnishd.*$work" 2>/dev/null; rm -rf "$work"' EXIT
chmod 755 "$work"
mkdir -p "$work/www" "$work/cache"
head -c 1024 /dev/urandom > "$work/www/1k"
head -c 65536 /dev/urandom > "$work/www/64k"
head -c 1048576 /dev/urandom > "$work/www/1m"

ORIGIN=18081 NGINX=18082 LARDER=18083 VARNISH=18084
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
LARDER_LOG=warn LARDER_THREADS=1 taskset -c "$PROXY_CPU" ./target/release/larder --listen 127.0.0.1:$LARDER \
  --mirror http://127.0.0.1:$ORIGIN --memory 512MiB &
if [ "${BENCH_VARNISH:-0}" = 1 ]; then
  taskset -c "$PROXY_CPU" varnishd -a 127.0.0.1:$VARNISH -b 127.0.0.1:$ORIGIN -s malloc,512m -n "$work/varnish" -F >/dev/null 2>&1 &
fi
for i in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$LARDER/healthz" && break; sleep 0.1; done
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

# rps and p99 (ms) of one wrk run.
measure() {
  local out rps p99
  out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"$DURATION" --latency "$1")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v=v*1000}; print v}' <<<"$out")
  echo "$rps $p99"
}
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

printf "\n%-8s %-5s %12s %10s\n" proxy size "req/s" "p99 ms"
declare -A RPS P99
for f in $SIZES; do
  for p in "${proxies[@]}"; do
    name=${p%%:*}; port=${p#*:}
    rs=(); ps=()
    for r in $(seq "$ROUNDS"); do read -r a b < <(measure "http://127.0.0.1:$port/$f"); rs+=("$a"); ps+=("$b"); done
    RPS[$name.$f]=$(printf "%s\n" "${rs[@]}" | median); P99[$name.$f]=$(printf "%s\n" "${ps[@]}" | median)
    printf "%-8s %-5s %12s %10s\n" "$name" "$f" "${RPS[$name.$f]}" "${P99[$name.$f]}"
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
