#!/usr/bin/env bash
# Writes an N-layer stack of identical conv-batchnorm-ReLU layers (16 channels, 3x3, padding 1,
# on Fashion-MNIST's 28x28 images) in kiln's model language to stdout, for measuring how
# generated code grows with depth (bench/compile.sh, test_codegen). Usage: scripts/conv_stack.sh N
set -euo pipefail
N=${1:?usage: conv_stack.sh LAYERS}
if ! [[ $N =~ ^[1-9][0-9]*$ ]]; then
  echo "conv_stack.sh: LAYERS must be a positive integer, not '$N'" >&2
  exit 2
fi
echo "# A stack of $N conv-batchnorm-ReLU layers, written by scripts/conv_stack.sh $N."
echo "model conv_stack$N"
echo
echo "input image: f32[B, 1, 28, 28] from images / 255"
echo "input label: i32[B] from labels"
echo
# The first layer widens the image to 16 channels; the others all have the same shapes.
echo "h = relu(batchnorm(conv2d(image, out=16, kernel=3, pad=1) as conv1) as bn1)"
for ((i = 2; i <= N; i++)); do
  echo "h = relu(batchnorm(conv2d(h, out=16, kernel=3, pad=1) as conv$i) as bn$i)"
done
echo "logits = linear(flatten(mean(h, axes=[2, 3])), out=10) as fc"
echo "loss = cross_entropy(logits, label)"
echo
echo "output logits"
echo "minimize loss"
echo
echo "train {"
echo "  optimizer = adam(lr=1e-3)"
echo "  batch = 64"
echo "  seed = 1"
echo "}"
