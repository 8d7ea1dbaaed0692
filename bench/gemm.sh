#!/usr/bin/env bash
# GFLOP/s of kiln's emitted GEMM routine (bench/gemm.c) on the seed networks' matmul shapes.
# Usage: bench/gemm.sh [build-dir [kc mc nc]]   (default build; configured Release if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
[ -f "$BUILD/CMakeCache.txt" ] || cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD" -j2 --target kiln_static >/dev/null
cc -std=c11 -O2 -D_POSIX_C_SOURCE=200809L -Isrc -Iruntime -Iinclude bench/gemm.c \
  "$BUILD/libkiln_static.a" "$BUILD/libkilnrt.a" -lz -ldl -lm -o "$BUILD/bench_gemm"
"$BUILD/bench_gemm" "${@:2}"
