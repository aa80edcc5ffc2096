#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages Switchboard needs, only those that are missing.
# Usage: scripts/install-system-packages.sh PACKAGE...
set -euo pipefail

missing=()
for pkg in "$@"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "==> system packages present: $*"
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "error: missing system packages (${missing[*]}) and no apt-get to install them" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "==> installing system packages: ${missing[*]}"
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
