#!/usr/bin/env bash
# Large objects as segments on three real `larder` processes (the issue's figures).
# Usage: bench/large.sh     (LARDER_BIN=path to skip the build; ROUNDS=5 throughput GETs;
#                            STALL=10 seconds of stalled client; PROXY_CPU=1 LOAD_CPU=0)
#
# Every server (the three peers, each LARDER_THREADS=1; nginx, one worker; the Python origin)
# is pinned to PROXY_CPU, every client to LOAD_CPU. Peers: --memory 512MiB
# --max-object-size 1GiB, default --segment-size 2MiB and --segment-read-ahead 3. A request
# goes "through a non-owner peer": the URL's owner is found first with a POST (forwarded to
# the owner, never cached; the first Via names it) and the client uses another peer.
#
# 1. First byte / total time of a cold 10 MiB object from an origin limited to 2 MiB/s,
#    through a non-owner peer (3 runs, a fresh name each, entry peers rotated), three origins:
#    - nginx `limit_rate 2m`: nginx limits each *request* and lets the first second's worth
#      (2 MiB) through at once, so 2 MiB segment requests are not throttled at all;
#    - python, 2 MiB/s per request, no burst (each segment request gets its own 2 MiB/s);
#    - python, 2 MiB/s shared by all requests (a 2 MiB/s link: ~5 s is the floor).
#    The same object straight from each origin is the baseline. Target: first byte < 1.5 s.
# 2. A cold 256 MiB object (unthrottled nginx origin) through a non-owner peer, fresh cluster
#    each time: sum over peers of larder_origin_bytes_total (exactly 268435456 wanted), each
#    peer's share of larder_cache_bytes{tier="memory"} (33 % +- 5 %), and the entry's and the
#    owner's RSS growth (VmHWM after - VmRSS before), raw and minus the bytes that peer
#    cached (the buffering overhead; target < 64 MiB), while a client
#    a) reads at full speed (curl -o /dev/null);
#    b) stalls: a raw socket that sends the GET and reads nothing for STALL s (SO_RCVBUF 64 KiB);
#    c) reads slowly: curl --limit-rate 100k for STALL s, then killed.
#    After b and c the object is read whole again (bytes and sha256 checked, and the origin
#    bytes must still total one copy).
#    d) after a, GETs 2-4 of the warm object through the same entry: the entry's RSS peak per
#    GET (VmHWM reset through /proc/PID/clear_refs), Cache-Status and larder_hot_bytes; the
#    3rd GET within a minute makes the entry take a hot copy (--hot-after 3).
# 3. The cached 256 MiB object: ROUNDS sequential full GETs through a non-owner peer vs nginx
#    proxy_cache with `slice 2m` in front of the same origin (warmed, cache on disk, i.e. page
#    cache), interleaved; median MiB/s and the ratio Larder/nginx (and, for reference, Larder
#    through the owner itself). The whole Larder cluster (3 processes) gets PROXY_CPU, the
#    one core the single nginx worker gets.
# Access logs off, as on the nginx side.
export LARDER_LOG_FORMAT=off
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
STALL=${STALL:-10}
PROXY_CPU=${PROXY_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}

need=()
command -v nginx >/dev/null || need+=(nginx)
command -v curl >/dev/null || need+=(curl)
command -v python3 >/dev/null || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
if [ -z "${LARDER_BIN:-}" ]; then
  cargo build --release --bin larder >/dev/null 2>&1 || cargo build --release --bin larder
  LARDER_BIN=./target/release/larder
fi
LARDER_BIN=$(realpath "$LARDER_BIN")
"$LARDER_BIN" --version

ORIGIN=18091 LIMITED=18092 SLICE=18093 PY_REQ=18094 PY_LINK=18095
PORTS=(18096 18097 18098)
PEERS=http://127.0.0.1:18096,http://127.0.0.1:18097,http://127.0.0.1:18098
PIDS=()
work=$(mktemp -d)
cleanup() {
  set +e
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  kill $(jobs -p) 2>/dev/null
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null
  wait 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
chmod 755 "$work"
mkdir -p "$work/www" "$work/cache"
head -c $((10 << 20)) /dev/urandom > "$work/www/ten"
for i in $(seq 0 11); do ln "$work/www/ten" "$work/www/ten$i"; done   # cold names, same bytes
head -c $((256 << 20)) /dev/urandom > "$work/www/big"
for i in 1 2 3; do ln "$work/www/big" "$work/www/big$i"; done
BIG=268435456
BIG_SHA=$(sha256sum < "$work/www/big" | cut -d' ' -f1)

cat > "$work/nginx.conf" <<NGINX
worker_processes 1;
pid $work/nginx.pid;
error_log $work/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on; tcp_nopush off; tcp_nodelay on; keepalive_requests 1000000;
  proxy_cache_path $work/cache levels=1:2 keys_zone=slice:16m max_size=2g inactive=1h;
  server { listen 127.0.0.1:$ORIGIN; root $work/www; add_header Cache-Control "max-age=3600"; }
  server { listen 127.0.0.1:$LIMITED; root $work/www; limit_rate 2m; add_header Cache-Control "max-age=3600"; }
  server {
    listen 127.0.0.1:$SLICE;
    location / {
      slice 2m;
      proxy_cache slice;
      proxy_cache_key \$uri\$is_args\$args\$slice_range;
      proxy_set_header Range \$slice_range;
      proxy_cache_valid 200 206 1h;
      proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_pass http://127.0.0.1:$ORIGIN;
      add_header X-Cache \$upstream_cache_status;
    }
  }
}
NGINX

# A Range-capable static origin paced at RATE bytes/s: per request (no burst), or one pace
# shared by every request (a link). Strong ETag and Last-Modified like nginx.
cat > "$work/origin.py" <<'PY'
import email.utils, os, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
root, rate = sys.argv[1], float(sys.argv[2])
CHUNK = 16384

class Pace:
    def __init__(self):
        self.lock, self.next = threading.Lock(), 0.0
    def wait(self, n):
        with self.lock:
            start = max(time.monotonic(), self.next)
            self.next = start + n / rate
        d = start - time.monotonic()
        if d > 0:
            time.sleep(d)

def handler(shared):
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def log_message(self, *a):
            pass
        def do_HEAD(self):
            self.serve(False)
        def do_GET(self):
            self.serve(True)
        def serve(self, body):
            path = os.path.join(root, os.path.basename(self.path.split("?")[0]))
            try:
                st = os.stat(path)
                assert os.path.isfile(path)
            except (OSError, AssertionError):
                self.send_response(404); self.send_header("Content-Length", "0"); self.end_headers(); return
            size = st.st_size
            etag = '"%x-%x"' % (int(st.st_mtime), size)
            lm = email.utils.formatdate(st.st_mtime, usegmt=True)
            if self.headers.get("If-None-Match") == etag:
                self.send_response(304); self.send_header("ETag", etag); self.end_headers(); return
            a, b, status = 0, size - 1, 200
            rng, if_range = self.headers.get("Range"), self.headers.get("If-Range")
            if rng and rng.startswith("bytes=") and "," not in rng and if_range in (None, etag, lm):
                s, _, e = rng[6:].partition("-")
                if s:
                    a, b = int(s), (min(int(e), size - 1) if e else size - 1)
                else:
                    a = max(0, size - int(e))
                if a >= size:
                    self.send_response(416); self.send_header("Content-Range", "bytes */%d" % size)
                    self.send_header("Content-Length", "0"); self.end_headers(); return
                status = 206
            self.send_response(status)
            self.send_header("Content-Length", str(b + 1 - a))
            if status == 206:
                self.send_header("Content-Range", "bytes %d-%d/%d" % (a, b, size))
            self.send_header("ETag", etag); self.send_header("Last-Modified", lm)
            self.send_header("Cache-Control", "max-age=3600"); self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            if not body:
                return
            pace = shared or Pace()
            try:
                with open(path, "rb") as f:
                    f.seek(a)
                    left = b + 1 - a
                    while left > 0:
                        chunk = f.read(min(CHUNK, left))
                        pace.wait(len(chunk))
                        self.wfile.write(chunk)
                        left -= len(chunk)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True
    return H

servers = []
for arg in sys.argv[3:]:
    port, mode = arg.split(":")
    s = ThreadingHTTPServer(("127.0.0.1", int(port)), handler(Pace() if mode == "link" else None))
    s.daemon_threads = True
    threading.Thread(target=s.serve_forever, daemon=True).start()
    servers.append(s)
threading.Event().wait()
PY

# A client that sends a GET through a proxy and then reads nothing for $3 seconds.
cat > "$work/stall.py" <<'PY'
import socket, sys, time
proxy_port, url, secs = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
s.connect(("127.0.0.1", proxy_port))
host = url.split("/")[2]
s.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (url, host)).encode())
time.sleep(secs)
s.close()
PY

taskset -c "$PROXY_CPU" nginx -c "$work/nginx.conf"
taskset -c "$PROXY_CPU" python3 "$work/origin.py" "$work/www" $((2 << 20)) "$PY_REQ:request" "$PY_LINK:link" &
for port in $ORIGIN $LIMITED $SLICE $PY_REQ $PY_LINK; do
  for i in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$port/none" && break; sleep 0.1; done
done

export LARDER_ALLOW_DESTINATION=127.0.0.0/8 LARDER_LOG=warn
# A fresh (cold) cluster of three peers on PORTS.
start_cluster() {
  stop_cluster
  for port in "${PORTS[@]}"; do
    LARDER_THREADS=1 taskset -c "$PROXY_CPU" "$LARDER_BIN" --listen 127.0.0.1:$port --self http://127.0.0.1:$port \
      --peers $PEERS --memory 512MiB --max-object-size 1GiB >>"$work/larder-$port.log" 2>&1 &
    PIDS+=($!)
  done
  for port in "${PORTS[@]}"; do
    for i in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$port/healthz" && break; sleep 0.1; done
  done
}
stop_cluster() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  PIDS=()
}
pid_of() { local i; for i in 0 1 2; do if [ "${PORTS[i]}" = "$1" ]; then echo "${PIDS[i]}"; fi; done; }
metric() { curl -s "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1==m {print $2}'; }
sum_metric() { local s=0 p; for p in "${PORTS[@]}"; do s=$((s + $(metric "$p" "$1"))); done; echo $s; }
kb() { awk -v k="$2" '$1==k":" {print $2}' "/proc/$1/status"; }   # VmRSS / VmHWM in kB
# The port of the peer that owns URL $1 (a POST is forwarded to the owner, never cached).
owner_of() {
  curl -s -X POST -D - -o /dev/null -x "http://127.0.0.1:${PORTS[0]}" "$1" |
    awk 'tolower($1)=="via:" {sub(/.*:/, "", $3); sub(/\r/, "", $3); print $3; exit}'
}
# A peer other than the owner of URL $1 ($2 picks among the two).
non_owner() {
  local o others=() p
  o=$(owner_of "$1")
  for p in "${PORTS[@]}"; do [ "$p" != "$o" ] && others+=("$p"); done
  echo "${others[$(( ${2:-0} % 2 ))]} $o"
}
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
client() { taskset -c "$LOAD_CPU" "$@"; }

echo
echo "== 1. cold 10 MiB object, origin limited to 2 MiB/s, through a non-owner peer"
start_cluster
n=0
for o in "nginx-limit_rate-2m:$LIMITED" "python-2MiB/s-per-request:$PY_REQ" "python-2MiB/s-shared-link:$PY_LINK"; do
  name=${o%%:*}; port=${o#*:}
  direct=$(client curl -s -o /dev/null -w '%{time_starttransfer} %{time_total}' "http://127.0.0.1:$port/ten")
  echo "$name: straight from the origin: first byte / total ${direct% *} s / ${direct#* } s"
  fb=(); tt=()
  for r in 0 1 2; do
    url="http://127.0.0.1:$port/ten$n"; n=$((n + 1))
    read -r entry owner < <(non_owner "$url" "$r")
    before=$(sum_metric larder_origin_bytes_total)
    read -r a b size < <(client curl -s -o /dev/null -w '%{time_starttransfer} %{time_total} %{size_download}\n' -x "http://127.0.0.1:$entry" "$url")
    sleep 0.2
    printf "  run %d: entry %s owner %s: first byte %.3f s, total %.3f s, %d bytes, origin bytes %d\n" \
      "$r" "$entry" "$owner" "$a" "$b" "$size" $(( $(sum_metric larder_origin_bytes_total) - before ))
    fb+=("$a"); tt+=("$b")
  done
  printf "  median: first byte %.3f s, total %.3f s\n" "$(printf "%s\n" "${fb[@]}" | median)" "$(printf "%s\n" "${tt[@]}" | median)"
done

# Figure 2 helpers: RSS and metrics of the entry and the owner around one client run.
declare -A RSS0 CACHE0
snap() { local i; for i in 0 1 2; do RSS0[${PORTS[i]}]=$(kb "${PIDS[i]}" VmRSS); CACHE0[${PORTS[i]}]=$(metric "${PORTS[i]}" 'larder_cache_bytes{tier="memory"}'); done; }
report() {  # $1 entry, $2 owner
  local i port role pid hwm cache total=0
  for port in "${PORTS[@]}"; do total=$((total + $(metric "$port" 'larder_cache_bytes{tier="memory"}'))); done
  for i in 0 1 2; do
    port=${PORTS[i]}; pid=${PIDS[i]}; role=other
    [ "$port" = "$1" ] && role=entry
    [ "$port" = "$2" ] && role=owner
    hwm=$(kb "$pid" VmHWM); cache=$(metric "$port" 'larder_cache_bytes{tier="memory"}')
    awk -v p="$port" -v r="$role" -v h="$hwm" -v r0="${RSS0[$port]}" -v c="$cache" -v c0="${CACHE0[$port]}" -v t="$total" \
      -v ob="$(metric "$port" larder_origin_bytes_total)" -v pb="$(metric "$port" larder_peer_bytes_total)" \
      -v of="$(metric "$port" larder_origin_fetches_total)" 'BEGIN {
      g = (h - r0) / 1024; cg = (c - c0) / 1048576
      printf "  %s %-5s RSS %.1f -> peak %.1f MiB: growth %.1f MiB, cached +%.1f MiB (%.1f %% of the cluster), growth - cached %.1f MiB; origin bytes %d (%d fetches), peer bytes %d\n",
        p, r, r0/1024, h/1024, g, cg, t ? 100*c/t : 0, g - cg, ob, of, pb }'
  done
  echo "  cluster: larder_origin_bytes_total sum $(sum_metric larder_origin_bytes_total) (one copy: $BIG)," \
    "larder_origin_fetches_total sum $(sum_metric larder_origin_fetches_total)"
}
# The whole object again through $1: bytes and sha256 must match; prints the Cache-Status.
check_whole() {
  local got
  got=$(client curl -s -D "$work/headers" -x "http://127.0.0.1:$1" "$2" | sha256sum | cut -d' ' -f1)
  [ "$got" = "$BIG_SHA" ] && got="sha256 matches" || got="sha256 MISMATCH"
  echo "  whole object again through $1: $got, $(grep -i '^cache-status' "$work/headers" | tr -d '\r')"
}
peak_reset() { echo 5 > "/proc/$1/clear_refs" 2>/dev/null || true; }   # VmHWM := VmRSS

echo
echo "== 2b. cold 256 MiB object, a client that stalls ${STALL} s (reads nothing) during the fill"
start_cluster
url="http://127.0.0.1:$ORIGIN/big1"
read -r entry owner < <(non_owner "$url")
snap
client python3 "$work/stall.py" "$entry" "$url" "$STALL" &
stall_pid=$!
for t in $(seq "$STALL"); do
  sleep 1
  if [ $((t % 5)) = 0 ]; then
    echo "  after ${t} s: origin bytes $(sum_metric larder_origin_bytes_total), entry RSS $(( $(kb "$(pid_of "$entry")" VmRSS) / 1024 )) MiB, owner RSS $(( $(kb "$(pid_of "$owner")" VmRSS) / 1024 )) MiB"
  fi
done
wait "$stall_pid" || true
sleep 2
report "$entry" "$owner"
check_whole "$entry" "$url"
echo "  after that: larder_origin_bytes_total sum $(sum_metric larder_origin_bytes_total) (one copy: $BIG)"

echo
echo "== 2c. cold 256 MiB object, a client reading at 100 KiB/s for ${STALL} s, then gone"
start_cluster
url="http://127.0.0.1:$ORIGIN/big2"
read -r entry owner < <(non_owner "$url")
snap
client curl -s -o /dev/null --limit-rate 100k -m "$STALL" -x "http://127.0.0.1:$entry" "$url" || true
sleep 2
report "$entry" "$owner"
check_whole "$entry" "$url"
echo "  after that: larder_origin_bytes_total sum $(sum_metric larder_origin_bytes_total) (one copy: $BIG)"

echo
echo "== 2a. cold 256 MiB object, a client reading at full speed"
start_cluster
url="http://127.0.0.1:$ORIGIN/big3"
read -r entry owner < <(non_owner "$url")
snap
read -r tt size speed < <(client curl -s -o /dev/null -w '%{time_total} %{size_download} %{speed_download}\n' -x "http://127.0.0.1:$entry" "$url")
sleep 0.5
awk -v t="$tt" -v s="$size" -v v="$speed" 'BEGIN {printf "  cold GET: %d bytes in %.2f s (%.1f MiB/s)\n", s, t, v/1048576}'
report "$entry" "$owner"

echo
echo "== 2d. the same object, warm GETs 2-4 through the same non-owner entry $entry (--hot-after 3: the 3rd in a minute earns a hot copy; hot budget 1/8 of --memory = 64 MiB)"
epid=$(pid_of "$entry")
for i in 2 3 4; do
  peak_reset "$epid"
  r0=$(kb "$epid" VmRSS)
  if [ "$i" = 2 ]; then
    check_whole "$entry" "$url"
  else
    read -r v s < <(client curl -s -D "$work/headers" -o /dev/null -w '%{speed_download} %{size_download}\n' -x "http://127.0.0.1:$entry" "$url")
    awk -v v="$v" -v s="$s" -v c="$(grep -i '^cache-status' "$work/headers" | tr -d '\r')" 'BEGIN {printf "  whole object again: %d bytes, %.0f MiB/s, %s\n", s, v/1048576, c}'
  fi
  sleep 0.5
  awk -v i="$i" -v r0="$r0" -v h="$(kb "$epid" VmHWM)" -v r="$(kb "$epid" VmRSS)" -v hot="$(metric "$entry" larder_hot_bytes)" \
    -v c="$(metric "$entry" 'larder_cache_bytes{tier="memory"}')" 'BEGIN {
    printf "    GET %d: entry RSS %.1f -> peak %.1f MiB (+%.1f), after %.1f MiB; larder_hot_bytes %d, cache %.1f MiB\n", i, r0/1024, h/1024, (h-r0)/1024, r/1024, hot, c/1048576 }'
done
echo "  larder_origin_bytes_total sum $(sum_metric larder_origin_bytes_total) (one copy: $BIG)"

echo
echo "== 3. cached 256 MiB object: Larder (non-owner entry $entry, owner $owner; 3 peers on CPU $PROXY_CPU) vs nginx slice 2m (1 worker on CPU $PROXY_CPU), $ROUNDS GETs each, interleaved"
for i in 1 2; do client curl -s -o /dev/null "http://127.0.0.1:$SLICE/big3"; done
echo "  nginx: $(curl -s -D - -o /dev/null "http://127.0.0.1:$SLICE/big3" | grep -i '^x-cache' | tr -d '\r')"
o0=$(sum_metric larder_origin_bytes_total)
ls=(); ns=(); os=(); bad=0
for r in $(seq "$ROUNDS"); do
  read -r v s < <(client curl -s -o /dev/null -w '%{speed_download} %{size_download}\n' "http://127.0.0.1:$SLICE/big3")
  ns+=("$v"); [ "$s" = "$BIG" ] || bad=1
  read -r v s < <(client curl -s -o /dev/null -w '%{speed_download} %{size_download}\n' -x "http://127.0.0.1:$entry" "$url")
  ls+=("$v"); [ "$s" = "$BIG" ] || bad=1
  read -r v s < <(client curl -s -o /dev/null -w '%{speed_download} %{size_download}\n' -x "http://127.0.0.1:$owner" "$url")
  os+=("$v"); [ "$s" = "$BIG" ] || bad=1
done
[ "$bad" = 0 ] || echo "  WARNING: a GET did not return $BIG bytes"
l=$(printf "%s\n" "${ls[@]}" | median); g=$(printf "%s\n" "${ns[@]}" | median); w=$(printf "%s\n" "${os[@]}" | median)
awk -v l="$l" -v g="$g" -v w="$w" -v ls="${ls[*]}" -v ns="${ns[*]}" -v os="${os[*]}" 'BEGIN {
  n = split(ls, a, " "); printf "  larder via non-owner MiB/s:"; for (i = 1; i <= n; i++) printf " %.0f", a[i]/1048576; print ""
  n = split(os, c, " "); printf "  larder via owner     MiB/s:"; for (i = 1; i <= n; i++) printf " %.0f", c[i]/1048576; print ""
  n = split(ns, b, " "); printf "  nginx slice          MiB/s:"; for (i = 1; i <= n; i++) printf " %.0f", b[i]/1048576; print ""
  printf "  median: larder via non-owner %.0f MiB/s, nginx slice %.0f MiB/s, larder/nginx %.2f (via the owner: %.0f MiB/s, %.2f)\n",
    l/1048576, g/1048576, l/g, w/1048576, w/g }'
echo "  origin bytes during the runs: $(( $(sum_metric larder_origin_bytes_total) - o0 ))"
for port in "${PORTS[@]}"; do
  if grep -qiE 'error|panic' "$work/larder-$port.log"; then echo "larder $port log:"; grep -iE 'error|panic' "$work/larder-$port.log" | sort | uniq -c | head; fi
done
