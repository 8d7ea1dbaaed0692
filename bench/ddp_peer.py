"""The peer for data-parallel training on CPUs: PyTorch's DistributedDataParallel over gloo, the
seed's MNIST CNN, a global batch split evenly over N processes (each on its own threads), Adam.
Batch norm stays per process: PyTorch's SyncBatchNorm runs on GPUs only. Prints
`ddp processes=N images_per_s=X`.

Usage: ddp_peer.py --processes N [--batch 64] [--steps 200] [--threads 1]
"""
import argparse
import os
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from torch_peer import MnistCNN, split


def worker(rank, a, out):
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(a.port)
    dist.init_process_group("gloo", rank=rank, world_size=a.processes)
    torch.set_num_threads(a.threads)
    torch.manual_seed(1)
    xtr, ytr = split(a.data, "train")
    model = torch.nn.parallel.DistributedDataParallel(MnistCNN())
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    local = a.batch // a.processes
    warm = 20
    for step in range(a.steps + warm):
        if step == warm:
            dist.barrier()
            t0 = time.perf_counter()
        first = (step * a.batch) % (len(xtr) - a.batch) + rank * local
        loss = F.cross_entropy(model(xtr[first:first + local]), ytr[first:first + local])
        opt.zero_grad()
        loss.backward()
        opt.step()
    dist.barrier()
    if rank == 0:
        out.put(a.steps * a.batch / (time.perf_counter() - t0))
    dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--port", type=int, default=29517)
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    a = ap.parse_args()
    ctx = mp.get_context("spawn")
    out = ctx.SimpleQueue()
    mp.spawn(worker, args=(a, out), nprocs=a.processes, join=True)
    print(f"ddp processes={a.processes} images_per_s={out.get():.0f}")


if __name__ == "__main__":
    main()
