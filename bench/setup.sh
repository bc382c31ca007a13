#!/bin/sh
# Installs what `npm run bench` needs from Debian, only when a binary is missing:
#   nginx (nginx-light, else nginx) — the fast upstream;  caddy — the old box's proxy;  wrk — the load.
# `apt-get update` runs at most once. The packages' own services are not started (policy-rc.d 101):
# the bench runs its own instances on loopback with generated configs.
set -eu

missing=""
command -v nginx >/dev/null 2>&1 || missing="$missing nginx"
command -v caddy >/dev/null 2>&1 || missing="$missing caddy"
command -v wrk >/dev/null 2>&1 || missing="$missing wrk"
[ -z "$missing" ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  echo "bench/setup.sh: missing:$missing and no apt-get here; install them yourself" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "bench/setup.sh: missing:$missing; run as root (or install sudo) to apt-get install them" >&2
    exit 1
  fi
fi

# Keep the packages' postinst from starting a system nginx/caddy on port 80.
created_policy=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod 755 /usr/sbin/policy-rc.d
  created_policy=1
fi
cleanup() { if [ -n "$created_policy" ]; then $SUDO rm -f /usr/sbin/policy-rc.d; fi; }
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "bench/setup.sh: installing:$missing" >&2
$SUDO apt-get update -qq

# Package names as Debian spells them; a name without a candidate is replaced or reported.
has_candidate() { apt-cache policy "$1" 2>/dev/null | grep -q 'Candidate: [0-9]'; }
packages=""
for binary in $missing; do
  case "$binary" in
    nginx) if has_candidate nginx-light; then packages="$packages nginx-light"; else packages="$packages nginx"; fi ;;
    *) if has_candidate "$binary"; then packages="$packages $binary"; else echo "bench/setup.sh: no Debian package for $binary" >&2; exit 1; fi ;;
  esac
done
# shellcheck disable=SC2086 # word splitting of the package list is intended
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $packages
