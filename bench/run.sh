#!/usr/bin/env bash
# Training throughput of a kiln-built trainer against PyTorch (python3-torch) on the same network,
# optimizer and batch, in the same run. Usage: bench/run.sh [mlp|mnist_cnn] [steps]
# Prints both images/s figures and kiln's ratio. Timings are measured, never asserted.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-mlp}
STEPS=${2:-300}
KILN_EXTRA_PACKAGES="python3-torch" bash scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" --target kiln-cli >/dev/null  # the CLI and its runtime only
./build/kiln build "examples/$MODEL.kiln" -o "build/bench_$MODEL"
DATA=/usr/share/datasets/fashion-mnist
LIMIT=$((STEPS * 64))
kiln_line=$("./build/bench_$MODEL" --data "$DATA" --epochs 1 --limit-train "$LIMIT" --limit-test 2000 --quiet)
ips() { sed -n 's/.*images_per_s=\([0-9]*\).*/\1/p' <<<"$1"; }
kiln_ips=$(ips "$kiln_line")
# The peer at its best: PyTorch with 1 thread and with every core (its OpenMP threads spin, so
# on a busy machine one thread can be several times faster than two).
torch_ips=0
for threads in 1 "$(nproc)"; do
  line=$(/usr/bin/python3 bench/torch_peer.py --model "$MODEL" --steps "$STEPS" --threads "$threads")
  echo "torch, $threads thread(s): $line"
  t=$(ips "$line")
  if [ "$t" -gt "$torch_ips" ]; then torch_ips=$t; fi
done
echo "model $MODEL, batch 64, $STEPS steps, $(nproc) cores, load average $(cut -d' ' -f1 /proc/loadavg)"
echo "kiln:  $kiln_line"
echo "torch: best $torch_ips images/s"
awk -v k="$kiln_ips" -v t="$torch_ips" 'BEGIN { printf "kiln/torch images/s ratio: %.2f\n", k / t }'
