#!/usr/bin/env bash
# GFLOP/s of kiln's emitted GEMM routine (bench/gemm.c) on the seed networks' matmul shapes, as a
# share of this machine's FMA peak (bench/peak.c).
# Usage: bench/gemm.sh [build-dir [kc mc nc]]   (default build; configured Release if missing;
# `kiln schedule MODEL` prints the tiles a build for this machine uses)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
[ -f "$BUILD/CMakeCache.txt" ] || cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD" -j2 --target kiln_static >/dev/null
cc -std=c11 -O2 -D_POSIX_C_SOURCE=200809L -Isrc -Iruntime -Iinclude bench/gemm.c \
  "$BUILD/libkiln.a" -lz -ldl -lm -o "$BUILD/bench_gemm"
cc -O2 -march=native -ffp-contract=fast -pthread bench/peak.c -o "$BUILD/bench_peak"
KILN_PEAK=$("$BUILD/bench_peak" | sed -n 's/.*fma_peak_gflops_per_core=\([0-9.]*\).*/\1/p') \
  "$BUILD/bench_gemm" "${@:2}"
