#!/usr/bin/env bash
# Cold compile time against model depth: the MNIST CNN and stacks of 4 and 32 identical
# conv-batchnorm-ReLU layers (scripts/conv_stack.sh), each from its file to a program loaded in
# process through the JIT and through the system compiler, with the generated C's size and its
# kernel definitions, then the 32-layer stack's size and times over the 4-layer one's.
# Usage: bench/compile.sh [build-dir [runs [threads]]]   (default: build, 3 runs, 1 thread)
# Timings are measured, never asserted (the size is held in test_codegen).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
RUNS=${2:-3}
THREADS=${3:-1}
[ -f "$BUILD/CMakeCache.txt" ] || cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD" -j2 --target bench_compile >/dev/null
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
for n in 4 32; do scripts/conv_stack.sh "$n" >"$dir/conv_stack$n.kiln"; done
echo "cold compiles, CPU seconds (the compiler's included), median of $RUNS, --threads $THREADS, load average $(cut -d' ' -f1 /proc/loadavg)"
"$BUILD/bench_compile" --threads "$THREADS" --runs "$RUNS" examples/mnist_cnn.kiln \
  "$dir/conv_stack4.kiln" "$dir/conv_stack32.kiln" | tee "$dir/table"
# Columns: model, C bytes, kernels, kiln s (up to the C), jit s, cc s (up to a loaded program).
awk '$1 == "conv_stack4.kiln" { for (i = 2; i <= NF; i++) a[i] = $i }
     $1 == "conv_stack32.kiln" { for (i = 2; i <= NF; i++) b[i] = $i }
     END {
       printf "%-24s", "32 / 4 layers"
       w[2] = 10; w[3] = 8; w[4] = 10; w[5] = 10; w[6] = 10
       for (i = 2; i <= 6; i++)
         if (a[i] > 0 && b[i] != "-") printf " %*.2f", w[i], b[i] / a[i]; else printf " %*s", w[i], "-"
       printf "\n"
     }' "$dir/table"
