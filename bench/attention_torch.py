#!/usr/bin/env python3
"""PyTorch reference timings for bench/bench_attention.c: the same shapes, manual
softmax(Q K^T * scale) V forward and its autograd backward, fp32 on the CPU.
Prints the best of N runs for 1 and 2 threads; compare with build/bench/bench_attention.
Usage: /usr/bin/python3 bench/attention_torch.py [repeats] [--cpu-time]
--cpu-time: 1 thread only, timed by process CPU time (stable on a shared machine; compare with
DFM_BENCH_CPU_TIME=1 OMP_NUM_THREADS=1 build/bench/bench_attention)."""
import sys
import time

import torch

SHAPES = [  # name, B, H, Nq, Nk, D, kv_len (0 = no mask)
    ("DiT B8 H6 N256 D64", 8, 6, 256, 256, 64, 0),
    ("B2 H16 N1024 D72", 2, 16, 1024, 1024, 72, 0),
    ("B1 H12 N4096 D128", 1, 12, 4096, 4096, 128, 0),
    ("cross B1 H12 Nq4096 Nk512 D128 kv300", 1, 12, 4096, 512, 128, 300),
]


def attention(q, k, v, scale, mask):
    s = torch.matmul(q, k.transpose(-1, -2)) * scale
    if mask is not None:
        s = s.masked_fill(mask, float("-inf"))
    return torch.matmul(torch.softmax(s, dim=-1), v)


def main():
    args = [a for a in sys.argv[1:] if a != "--cpu-time"]
    cpu_time = "--cpu-time" in sys.argv[1:]
    repeats = int(args[0]) if args else 3
    clock = time.process_time if cpu_time else time.perf_counter
    print(f"# torch {torch.__version__}, best of {repeats} runs, {'process CPU' if cpu_time else 'wall-clock'} time")
    print(f"{'shape':40s} {'threads':>7s} {'fwd ms':>10s} {'fwd GF/s':>10s} {'bwd ms':>10s} {'bwd GF/s':>10s}")
    for name, B, H, Nq, Nk, D, kv_len in SHAPES:
        g = torch.Generator().manual_seed(0)
        # [B, H, N, D] layout, as torch attention code uses after the head transpose
        q = torch.randn(B, H, Nq, D, generator=g, requires_grad=True)
        k = torch.randn(B, H, Nk, D, generator=g, requires_grad=True)
        v = torch.randn(B, H, Nk, D, generator=g, requires_grad=True)
        dout = torch.randn(B, H, Nq, D, generator=g)
        mask = None
        if kv_len:
            mask = torch.arange(Nk).view(1, 1, 1, Nk) >= kv_len
        nvalid = kv_len or Nk
        flops = 4.0 * B * H * Nq * nvalid * D
        for threads in (1,) if cpu_time else (1, 2):
            torch.set_num_threads(threads)
            best_f = best_b = float("inf")
            for _ in range(repeats):
                t0 = clock()
                out = attention(q, k, v, D ** -0.5, mask)
                t1 = clock()
                out.backward(dout)
                t2 = clock()
                q.grad = k.grad = v.grad = None
                best_f, best_b = min(best_f, t1 - t0), min(best_b, t2 - t1)
            print(f"{name:40s} {threads:7d} {best_f * 1e3:10.2f} {flops / best_f * 1e-9:10.1f} "
                  f"{best_b * 1e3:10.2f} {2.5 * flops / best_b * 1e-9:10.1f}")


if __name__ == "__main__":
    main()
