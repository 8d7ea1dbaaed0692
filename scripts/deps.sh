#!/usr/bin/env bash
# Installs the Debian packages kiln needs to build, test and train, if any are missing.
# Sourced by the two top-level scripts; safe to run again.
set -euo pipefail
KILN_PACKAGES="cmake make gcc libc6-dev pkg-config check zlib1g-dev dataset-fashion-mnist ${KILN_EXTRA_PACKAGES:-}"
missing=()
for p in $KILN_PACKAGES; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "kiln: installing ${missing[*]}" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi
