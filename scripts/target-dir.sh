#!/usr/bin/env bash
# Prints the cargo target directory to build in. As root, guacr execs its workers as the unprivileged
# worker user (scripts/setup.sh), which must be able to reach the worker binaries: a checkout under a
# private directory (/root, a mktemp -d folder) is not reachable, so build under /var/tmp instead.
# An explicit CARGO_TARGET_DIR is kept as it is.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORKER_USER=${GUACR_WORKER_USER:-guacr-worker}
if [[ -n "${CARGO_TARGET_DIR:-}" ]]; then
  echo "$CARGO_TARGET_DIR"
elif [[ $(id -u) -ne 0 ]] || ! getent passwd "$WORKER_USER" >/dev/null \
  || runuser -u "$WORKER_USER" -- test -x "$REPO/" 2>/dev/null; then
  echo "$REPO/target"
else
  dir=/var/tmp/guacr-target-$(printf '%s' "$REPO" | sha256sum | cut -c1-12)
  mkdir -p "$dir"
  chmod 755 "$dir"
  echo "target-dir.sh: $REPO is not reachable by $WORKER_USER; building in $dir" >&2
  echo "$dir"
fi
