#!/usr/bin/env bash
# The browser tests drive Debian's Chromium through playwright-core (never a downloaded browser).
# Installs it when missing; a no-op on a machine that has it. Runs before `vitest` in `npm test`.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then exit 0; fi
if [ "$(id -u)" != 0 ]; then
  echo "halo-gate tests: /usr/bin/chromium is missing; install Debian's chromium package (apt-get install chromium)" >&2
  exit 1
fi
echo "halo-gate tests: installing Debian's chromium for the browser tests" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
/usr/bin/chromium --version >&2
