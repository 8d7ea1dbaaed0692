#!/usr/bin/env bash
# Rewrites tests/golden/ from the current build: `kiln ir` and `kiln emit` of every example, with
# the options test_golden uses. Review the diff before committing it: it is the change in what
# kiln prints and generates.
set -euo pipefail
cd "$(dirname "$0")/.."
KILN=${KILN:-build/kiln}
unset KILN_THREADS KILN_FUSE KILN_CONV
export KILN_TARGET=generic  # the library's fixed target, not this machine's caches
for model in examples/*.kiln; do
  name=$(basename "$model" .kiln)
  case "$name" in msd_net) continue ;; esac  # too large to review: test_golden.c's not_golden
  "$KILN" ir "$model" -o "tests/golden/$name.ir"
  "$KILN" emit "$model" --threads 1 -o "tests/golden/$name.c"
done
git status --short tests/golden
