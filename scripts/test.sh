#!/usr/bin/env bash
# The project's single test command (.ci/run calls it):
#   install what the test peers need, build every binary, start the real VNC peers on 127.0.0.1,
#   run every test of the workspace, stop the peers, exit with the tests' status.
# Extra arguments go to the end of `cargo test --workspace --no-fail-fast` (e.g. `-- --test-threads=1`).
# GUACR_KEEP_PEERS=1 leaves the peers running afterwards.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

log() { echo "test.sh: $*" >&2; }

# System packages: the peers' plus nasm (SIMD for mozjpeg). As root this installs what is missing;
# otherwise it fails loudly if anything is missing.
# chromium and xclip: the web client's browser tests (tests/tests/web.rs) and the X clipboard they check;
# chromium is also the rbi worker's browser (tests/tests/rbi.rs).
# bsdutils: scriptreplay, which plays back SSH typescripts (tests/tests/ssh.rs).
# libturbojpeg0-dev and pkg-config: guac-display's JPEG encoder links Debian's libjpeg-turbo (turbojpeg crate).
# fonts-wqy-microhei: the SSH worker's CJK fallback font (tests/tests/ssh.rs, worker-ssh's font tests).
scripts/peers.sh install nasm chromium xclip openssl bsdutils libturbojpeg0-dev pkg-config fonts-wqy-microhei
# The unprivileged user guacr's workers run as (the tests run guacr as root).
scripts/setup.sh

if ! command -v cargo >/dev/null 2>&1; then
  log "error: cargo not found; install a Rust toolchain (rustup, Rust >= 1.94) and put cargo on PATH"
  exit 1
fi
log "$(cargo --version)"

# The web client's guacamole-common-js (npm), bundled into guacr by its build.
scripts/web-deps.sh

# Workers run as the unprivileged worker user: build where that user can reach the binaries.
CARGO_TARGET_DIR=$(scripts/target-dir.sh)
export CARGO_TARGET_DIR
log "building all binaries in $CARGO_TARGET_DIR"
cargo build --workspace --bins

# shellcheck disable=SC2317  # called from the EXIT trap
stop_peers() {
  if [[ "${GUACR_KEEP_PEERS:-0}" != 1 ]]; then
    scripts/peers.sh stop || log "warning: stopping the peers failed"
  fi
}
trap stop_peers EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log "starting the test peers"
scripts/peers.sh start
scripts/peers.sh status
eval "$(scripts/peers.sh env)"

log "running the tests"
status=0
cargo test --workspace --no-fail-fast "$@" || status=$?
log "cargo test exited with $status"
exit "$status"
