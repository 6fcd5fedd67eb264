#!/usr/bin/env bash
# Fetches the web client's third-party code from the npm registry into web/node_modules, exactly as
# pinned by web/package-lock.json (guacamole-common-js 1.5.0, Apache-2.0; its LICENSE is bundled into
# guacr beside it and served at /vendor/guacamole-common-js/LICENSE). guacr's build (supervisor/build.rs)
# compiles the files into the binary, so run this before `cargo build`; scripts/test.sh and
# scripts/demo.sh do. Installs Debian's nodejs and npm first when npm is missing and we are root.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WEB=$REPO/web
log() { echo "web-deps.sh: $*" >&2; }

if ! command -v npm >/dev/null 2>&1; then
  if [[ $(id -u) -ne 0 ]]; then
    log "error: npm not found; install Node.js and npm (Debian: apt-get install nodejs npm) or run this as root"
    exit 1
  fi
  log "installing Debian's nodejs and npm"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends nodejs npm
fi

want=$WEB/node_modules/guacamole-common-js/dist/esm/guacamole-common.min.js
version() { sed -n 's/^ *"version": *"\([^"]*\)".*/\1/p' "$WEB/node_modules/guacamole-common-js/package.json" 2>/dev/null | head -1; }
pinned=$(sed -n 's/^ *"guacamole-common-js": *"\([^"]*\)".*/\1/p' "$WEB/package.json" | head -1)
if [[ -s "$want" && -s "$WEB/node_modules/guacamole-common-js/LICENSE" && "$(version)" == "$pinned" ]]; then
  log "guacamole-common-js $pinned present"
  exit 0
fi
log "fetching guacamole-common-js $pinned (npm ci)"
(cd "$WEB" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error)
[[ -s "$want" ]] || { log "error: $want missing after npm ci"; exit 1; }
[[ -s "$WEB/node_modules/guacamole-common-js/LICENSE" ]] || { log "error: guacamole-common-js LICENSE missing"; exit 1; }
log "guacamole-common-js $(version) installed in web/node_modules"
