#!/usr/bin/env bash
# Exercises the packaging files where this machine allows: the systemd unit with
# systemd-analyze verify, the Kubernetes manifests and the Dockerfile parsed (built when a
# Docker daemon answers), and the binary's --version, --help, completions and man page.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${LARDER_BIN:-target/debug/larder}
[ -x "$BIN" ] || cargo build --bin larder
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "-- larder --version / --help"
"$BIN" --version | grep -Eq '^larder [0-9]+\.[0-9]+\.[0-9]+ \((unknown|[0-9a-f]{12})(-dirty)?\)$'
"$BIN" --help > "$work/help" && head -1 "$work/help" | grep -q "^Larder: a caching HTTP proxy"
grep -q "^Examples:" "$work/help"

echo "-- completions and man page"
"$BIN" completions bash > "$work/larder.bash"
bash -n "$work/larder.bash"
grep -q -- '--intercept-host' "$work/larder.bash"
"$BIN" completions zsh > "$work/_larder" && grep -q "#compdef larder" "$work/_larder"
"$BIN" completions fish > "$work/larder.fish" && grep -q "complete -c larder" "$work/larder.fish"
"$BIN" man > "$work/larder.1"
grep -q '^\.TH larder 1' "$work/larder.1"
if command -v man >/dev/null; then
  MANWIDTH=80 man -l "$work/larder.1" 2>/dev/null | grep -q -- '--connect-port' || { echo "man page does not render"; exit 1; }
fi

echo "-- systemd unit"
if command -v systemd-analyze >/dev/null; then
  sed "s|/usr/local/bin/larder|$(realpath "$BIN")|" packaging/larder.service > "$work/larder.service"
  out=$(systemd-analyze verify "$work/larder.service" 2>&1 || true)
  # Only this unit's own problems count (the host's other units are not ours to judge).
  if echo "$out" | grep -i 'larder.service' | grep -vi 'Failed to prepare filename'; then
    echo "$out"; exit 1
  fi
else
  echo "systemd-analyze not installed: unit not verified"
fi

echo "-- Kubernetes manifests"
python3 - packaging/kubernetes/larder.yaml <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
kinds = sorted(d["kind"] for d in docs)
assert kinds == ["Service", "Service", "StatefulSet"], kinds
sts = next(d for d in docs if d["kind"] == "StatefulSet")
c = sts["spec"]["template"]["spec"]["containers"][0]
peers = next(a for a in c["args"] if a.startswith("--peers="))[len("--peers="):].split(",")
assert len(peers) == sts["spec"]["replicas"], peers
assert sts["spec"]["serviceName"] == "larder"
PY

echo "-- Dockerfile"
python3 - packaging/Dockerfile <<'PY'
import sys
known = {"FROM", "RUN", "COPY", "WORKDIR", "USER", "VOLUME", "EXPOSE", "ENV", "ENTRYPOINT", "CMD", "ARG", "LABEL"}
lines, cont, first = open(sys.argv[1]).read().splitlines(), False, None
for n, l in enumerate(lines, 1):
    s = l.strip()
    if not s or s.startswith("#"):
        continue
    if not cont:
        word = s.split()[0]
        assert word in known, f"line {n}: unknown instruction {word}"
        first = first or word
    cont = s.endswith("\\")
assert first == "FROM", "a Dockerfile starts with FROM"
PY
if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
  docker build -q -f packaging/Dockerfile -t larder:check . >/dev/null
  docker run --rm larder:check --version
else
  echo "no Docker daemon: Dockerfile parsed, not built"
fi
echo "packaging ok"
