"""The peer a kiln user would otherwise pick: the same network and optimizer in PyTorch.

Trains on Fashion-MNIST from the same IDX files for a number of steps and prints
`torch images_per_s=N test_accuracy=A` so bench/run can print kiln's ratio against it.
"""
import argparse, gzip, os, struct, sys, time

import torch
import torch.nn as nn
import torch.nn.functional as F


def load_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    magic, = struct.unpack(">I", data[:4])
    rank = magic & 0xFF
    dims = struct.unpack(">" + "I" * rank, data[4:4 + 4 * rank])
    t = torch.frombuffer(bytearray(data[4 + 4 * rank:]), dtype=torch.uint8)
    return t.reshape(dims)


def split(d, name):
    for suffix in (".gz", ""):
        img = os.path.join(d, f"{name}-images-idx3-ubyte{suffix}")
        lab = os.path.join(d, f"{name}-labels-idx1-ubyte{suffix}")
        if os.path.exists(img):
            return load_idx(img).float().div_(255).unsqueeze(1), load_idx(lab).long()
    sys.exit(f"torch_peer: no {name} data in {d}")


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(784, 256), nn.Linear(256, 10)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


class MnistCNN(nn.Module):
    """Seed 003, "A Practical Example: MNIST"."""
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 32, 5, padding=2), nn.BatchNorm2d(32)
        self.fc1, self.fc2 = nn.Linear(1568, 600), nn.Linear(600, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=["mlp", "mnist_cnn"], default="mlp")
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    a = ap.parse_args()
    torch.manual_seed(1)
    torch.set_num_threads(a.threads)
    xtr, ytr = split(a.data, "train")
    xte, yte = split(a.data, "t10k")
    model = MLP() if a.model == "mlp" else MnistCNN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    perm = torch.randperm(len(xtr))
    model.train()
    warm = 20
    for step in range(a.steps + warm):
        if step == warm:
            t0 = time.perf_counter()
        idx = perm[(step * a.batch) % (len(xtr) - a.batch):][:a.batch]
        loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    dt = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        acc = (model(xte).argmax(1) == yte).float().mean().item()
    print(f"torch images_per_s={a.steps * a.batch / dt:.0f} test_accuracy={acc:.4f}")


if __name__ == "__main__":
    main()
