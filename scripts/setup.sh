#!/usr/bin/env bash
# One-time host set-up for running guacr as root: the unprivileged system user its workers run as.
#   scripts/setup.sh [USER]     (default: guacr-worker; guacr's --worker-user must name the same user)
# Idempotent. Needs root; as another user guacr does not change uids and needs no set-up.
set -euo pipefail

USER_NAME=${1:-guacr-worker}

if [[ $(id -u) -ne 0 ]]; then
  echo "setup.sh: not root: nothing to do (workers run as the user who starts guacr)" >&2
  exit 0
fi
if getent passwd "$USER_NAME" >/dev/null; then
  echo "setup.sh: worker user $USER_NAME exists (uid $(id -u "$USER_NAME"))" >&2
  exit 0
fi
# A system user with its own group, no home, no shell, no password: it only ever runs sandboxed workers.
useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$USER_NAME"
echo "setup.sh: created worker user $USER_NAME (uid $(id -u "$USER_NAME"))" >&2
