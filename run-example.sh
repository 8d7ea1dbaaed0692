#!/usr/bin/env bash
# Installs what is missing, builds kiln, compiles examples/mnist_cnn.kiln into a standalone
# trainer and trains it on Fashion-MNIST (Debian's dataset-fashion-mnist). Extra arguments go to
# the trainer, e.g. ./run-example.sh --epochs 1.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)"
MODEL=${MODEL:-examples/mnist_cnn.kiln}
./build/kiln shapes "$MODEL"
./build/kiln build "$MODEL" -o build/trainer
./build/trainer --data /usr/share/datasets/fashion-mnist --metrics build/metrics.csv \
  --save build/model.safetensors "$@"
