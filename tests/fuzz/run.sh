#!/usr/bin/env bash
# Runs every fuzz target for RUNS executions each (default 10^7; CI runs 10^5), from the seeds
# here and a corpus kept in $KILN_FUZZ_CORPUS (default /tmp/kiln-fuzz-corpus). Needs clang and
# libFuzzer (Debian: clang-14, libclang-rt-14-dev). A crash leaves its input in the corpus
# directory (crash-*) and fails the script. Usage: tests/fuzz/run.sh [RUNS [BUILD_DIR]]
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-10000000}
BUILD=${2:-build-fuzz}
CORPUS=${KILN_FUZZ_CORPUS:-/tmp/kiln-fuzz-corpus}
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Debug -DKILN_FUZZ=ON >/dev/null
cmake --build "$BUILD" -j"$(nproc)" --target kiln-fuzz >/dev/null
mkdir -p "$CORPUS/compile" "$CORPUS/loaders"
# -fork: a crash stops the run; each target's runs counted over every job.
run() {
  local target=$1 corpus=$2; shift 2
  echo "fuzz: $target, $RUNS runs" >&2
  (cd "$CORPUS" && "$OLDPWD/$BUILD/$target" "$corpus" "$@" -runs="$RUNS" -timeout=10 \
     -malloc_limit_mb=1024 -print_final_stats=1 2>"$CORPUS/$target.log") || {
    tail -40 "$CORPUS/$target.log" >&2
    echo "fuzz: $target FAILED (log: $CORPUS/$target.log)" >&2
    return 1
  }
  grep -E "stat::number_of_executed_units|stat::peak_rss_mb" "$CORPUS/$target.log" >&2 || true
}
run fuzz_compile "$CORPUS/compile" "$PWD/tests/fuzz/seeds/compile" "$PWD/examples" \
  -dict="$PWD/tests/fuzz/kiln.dict" -max_len=2000
run fuzz_loaders "$CORPUS/loaders" "$PWD/tests/fuzz/seeds/loaders" -max_len=4096
if [ -x "$BUILD/fuzz_onnx" ]; then
  # ONNX's own test models as seeds (Debian's libonnx-testdata), when installed.
  mkdir -p "$CORPUS/onnx" "$CORPUS/onnx-seeds"
  for m in /usr/share/libonnx-testdata/data/node/test_{conv,maxpool,gemm,batchnorm,relu,reshape,adam,softmax,slice,concat}*/model.onnx; do
    [ -f "$m" ] && cp "$m" "$CORPUS/onnx-seeds/$(basename "$(dirname "$m")").onnx"
  done
  run fuzz_onnx "$CORPUS/onnx" "$CORPUS/onnx-seeds" "$PWD/tests/fuzz/seeds/onnx" -max_len=4096
fi
echo "fuzz: every target ran $RUNS inputs without a failure" >&2
