"""Exports the seed's MNIST CNN (bench/torch_peer.py's MnistCNN, as PyTorch initialises it) to
ONNX the way a user moving a model to kiln would: torch.onnx.export in training mode, so batch
norm stays a layer, with a symbolic batch.

Usage: export_onnx.py OUT.onnx [SEED]
"""
import sys
import warnings

import torch

from torch_peer import MnistCNN


def main():
    out = sys.argv[1]
    torch.manual_seed(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
    model = MnistCNN().train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, torch.zeros(2, 1, 28, 28), out, input_names=["image"],
                          output_names=["logits"], training=torch.onnx.TrainingMode.TRAINING,
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})


if __name__ == "__main__":
    main()
