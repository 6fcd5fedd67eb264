#!/usr/bin/env bash
# The README's first command: build guacr, start local VNC desktops, run the gateway on 127.0.0.1:4822 in
# the foreground, and prove it works by taking a snapshot through it. Ctrl-C stops everything.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
log() { echo "demo.sh: $*" >&2; }

scripts/peers.sh install nasm
command -v cargo >/dev/null || { log "error: cargo not found; install a Rust toolchain (Rust >= 1.85)"; exit 1; }
log "building (release)"
cargo build --release --workspace --bins
scripts/peers.sh start
eval "$(scripts/peers.sh env)"

PORT=${GUACR_DEMO_PORT:-4822}
target/release/guacr -f -b 127.0.0.1 -l "$PORT" -L info &
GUACR_PID=$!
cleanup() { kill "$GUACR_PID" 2>/dev/null || true; wait "$GUACR_PID" 2>/dev/null || true; scripts/peers.sh stop || true; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
for _ in $(seq 100); do ss -Hltn "sport = :$PORT" | grep -q . && break; sleep 0.05; done

mkdir -p run
target/release/guacr-snapshot --server "127.0.0.1:$PORT" --port 5901 --out run/demo-snapshot.png
cat <<MSG

guacr is listening on 127.0.0.1:$PORT (guacd-compatible). Local VNC desktops, password ${GUACR_VNC_PASSWORD}:
  127.0.0.1:5901  changing desktop (xclock, top)
  127.0.0.1:5902  static test pattern
  127.0.0.1:5903  an xterm you can type into
Point guacamole-client, guacamole-lite or any guacd client at 127.0.0.1:$PORT with protocol "vnc" and
hostname=127.0.0.1, port=5901, password=${GUACR_VNC_PASSWORD}. A snapshot taken through guacr just now is in
run/demo-snapshot.png. Ctrl-C stops guacr and the desktops.
MSG
wait "$GUACR_PID"
