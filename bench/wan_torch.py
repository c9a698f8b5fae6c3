#!/usr/bin/python3
"""Wan training-step benchmark, PyTorch side: the same small Wan as bench_wan (tests/ref/wan_model.py: 4 layers,
4 heads x 64, ffn 1024, text_dim 512, 16 channels, patch [1, 2, 2]), flow matching with logit-normal sigma
(shift 2.5, loss weighting), clip + AdamW, float32, same shapes.
PyTorch 1.13 has no fused attention: the model's attention is softmax(q k^T) v with the score matrix stored.
usage: wan_torch.py STEPS WARMUP THREADS [BATCH FRAMES HEIGHT WIDTH TEXT_LEN]
Prints one line: "torch name=wan_small threads=N ms=<median> rss_mb=<peak> loss=<last>"."""
import math
import os
import resource
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "ref"))
from wan_model import param_shapes, rope_tables, wan_forward  # noqa: E402


def main():
    steps, warmup, threads = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    B, T, H, W, L = (int(a) for a in sys.argv[4:9]) if len(sys.argv) > 8 else (2, 4, 32, 32, 64)
    torch.set_num_threads(threads)
    cfg = dict(num_layers=4, num_attention_heads=4, attention_head_dim=64, in_channels=16, out_channels=16,
               text_dim=512, freq_dim=256, ffn_dim=1024, patch_size=[1, 2, 2], eps=1e-6)
    d = 4 * 64
    g = torch.Generator().manual_seed(0)
    P = {}
    for n, shape in param_shapes(cfg).items():
        if n.endswith(".bias"):
            P[n] = torch.zeros(shape)
        elif "norm" in n:
            P[n] = torch.ones(shape)
        elif "scale_shift_table" in n:
            P[n] = torch.randn(shape, generator=g) / math.sqrt(d)
        else:
            fan_in = math.prod(shape[1:])
            P[n] = torch.randn(shape, generator=g) * math.sqrt(2.0 / (shape[0] + fan_in))
    for v in P.values():
        v.requires_grad_(True)
    opt = torch.optim.AdamW(list(P.values()), lr=1e-4, betas=(0.9, 0.999), weight_decay=0.01)
    C = cfg["in_channels"]
    x0 = torch.randn(B, C, T, H, W, generator=g)
    text = torch.randn(B, L, cfg["text_dim"], generator=g)
    rope = rope_tables(cfg["attention_head_dim"], T, H // 2, W // 2)
    times = []
    loss = None
    for k in range(warmup + steps):
        t0 = time.perf_counter()
        noise = torch.randn(B, C, T, H, W, generator=g)
        u = torch.sigmoid(1.5 * torch.randn(B, generator=g))
        shift = 2.5
        sigma = shift / (shift + (1 / u - 1))
        s = sigma.view(-1, 1, 1, 1, 1)
        xt = (1 - s) * x0 + s * noise
        out = wan_forward(P, cfg, xt, 1000 * sigma, text, None, rope)
        w = 1 + shift * sigma
        loss = (w * ((out - (noise - x0)) ** 2).flatten(1).mean(1)).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(P.values()), 1.0)
        opt.step()
        dt = time.perf_counter() - t0
        if k >= warmup:
            times.append(dt)
        print(f"torch step {k}: {dt * 1e3:.1f} ms loss {loss.item():.4f}", file=sys.stderr, flush=True)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"torch name=wan_small threads={threads} ms={statistics.median(times) * 1e3:.1f} rss_mb={rss:.0f} "
          f"loss={loss.item():.5f} version={torch.__version__}")


if __name__ == "__main__":
    main()
