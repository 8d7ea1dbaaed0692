#!/usr/bin/env bash
# Cold compile time against model depth: the MNIST CNN and stacks of 4 and 32 identical
# conv-batchnorm-ReLU layers (scripts/conv_stack.sh), each from its file to a program loaded in
# process through the JIT and through the system compiler, as `kiln --verbose` times it ("model to
# loaded program", median of the runs; --no-cache, so every run compiles), with the generated C's
# size and its kernel definitions; then the 32-layer stack's figures over the 4-layer one's.
# Usage: bench/compile.sh [runs [threads]]   (default: 3 runs, 1 thread)
# Timings are measured, never asserted (test_codegen holds the kernels to the depth).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
THREADS=${2:-1}
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j2 --target kiln-cli >/dev/null
KILN=build/kiln
DATA=/usr/share/datasets/fashion-mnist
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cp examples/mnist_cnn.kiln "$dir/"
for n in 4 32; do scripts/conv_stack.sh "$n" >"$dir/conv_stack$n.kiln"; done

# Seconds from model file to loaded program through backend $2 for model $1, median of RUNS; the
# training that follows is a single batch.
load_seconds() {
  for ((r = 0; r < RUNS; r++)); do
    "$KILN" --verbose --no-cache train "$1" --backend "$2" --threads "$THREADS" --data "$DATA" \
      --epochs 1 --limit-train 64 --limit-test 64 --quiet 2>&1 >/dev/null |
      sed -n 's/^kiln: model to loaded program *\([0-9.]*\) ms$/\1/p'
  done | sort -n | awk '{ v[NR] = $1 } END { printf "%.2f", v[int((NR + 1) / 2)] / 1000 }'
}

echo "cold compiles, median of $RUNS, --threads $THREADS, load average $(cut -d' ' -f1 /proc/loadavg)"
printf "%-14s %10s %8s %8s %8s\n" model "C bytes" kernels "jit s" "cc s"
for m in mnist_cnn conv_stack4 conv_stack32; do
  "$KILN" emit "$dir/$m.kiln" --threads "$THREADS" -o "$dir/$m.c"
  bytes=$(wc -c <"$dir/$m.c")
  kernels=$(grep -c '^/\* %' "$dir/$m.c")  # each kernel definition's comment
  jit=-
  if "$KILN" --version | grep -q jit; then jit=$(load_seconds "$dir/$m.kiln" jit); fi
  printf "%-14s %10d %8d %8s %8s\n" "$m" "$bytes" "$kernels" "$jit" "$(load_seconds "$dir/$m.kiln" cc)"
done | tee "$dir/table"
awk '$1 == "conv_stack4" { for (i = 2; i <= NF; i++) a[i] = $i }
     $1 == "conv_stack32" { for (i = 2; i <= NF; i++) b[i] = $i }
     END {
       printf "%-14s", "32 / 4 layers"
       split("10 8 8 8", w, " ")
       for (i = 2; i <= 5; i++)
         if (a[i] > 0 && b[i] != "-") printf " %*.2f", w[i - 1], b[i] / a[i]
         else printf " %*s", w[i - 1], "-"
       printf "\n"
     }' "$dir/table"
