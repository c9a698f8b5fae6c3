#!/usr/bin/python3
"""DiT training-step benchmark, PyTorch side: the same model (tests/ref/dit_model.py), flow matching with
logit-normal timesteps, AdamW, in float32, on the same batch shape as bench_dit.
usage: dit_torch.py CONFIG BATCH STEPS WARMUP THREADS [IMAGE] [CHANNELS]
Prints one line: "torch name=... threads=N ms=<median> rss_mb=<peak> loss=<last>"."""
import math
import os
import resource
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "ref"))
from dit_model import dit_forward  # noqa: E402

CONFIGS = {"S/2": (12, 384, 6), "B/2": (12, 768, 12), "L/2": (24, 1024, 16), "XL/2": (28, 1152, 16)}


def main():
    name, B, steps, warmup, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    S = int(sys.argv[6]) if len(sys.argv) > 6 else 32
    C = int(sys.argv[7]) if len(sys.argv) > 7 else 4
    torch.set_num_threads(threads)
    L, d, H = CONFIGS[name]
    p, classes, freq = 2, 1000, 256
    cfg = dict(num_layers=L, hidden_size=d, num_heads=H, patch_size=p, out_channels=C, image_size=S, freq_dim=freq,
               norm_eps=1e-6)
    g = torch.Generator().manual_seed(0)

    def lin(out, inp):
        return torch.randn(out, inp, generator=g) * math.sqrt(2.0 / (out + inp)), torch.zeros(out)

    P = {}
    P["pos_embed.proj.weight"], P["pos_embed.proj.bias"] = torch.randn(d, C, p, p, generator=g) * 0.02, torch.zeros(d)
    e = "transformer_blocks.0.norm1.emb."
    for n, (o, i) in {"timestep_embedder.linear_1": (d, freq), "timestep_embedder.linear_2": (d, d)}.items():
        P[e + n + ".weight"], P[e + n + ".bias"] = lin(o, i)
    P[e + "class_embedder.embedding_table.weight"] = torch.randn(classes + 1, d, generator=g) * 0.02
    for l in range(L):
        pre = f"transformer_blocks.{l}."
        shapes = {"norm1.linear": (6 * d, d), "attn1.to_q": (d, d), "attn1.to_k": (d, d), "attn1.to_v": (d, d),
                  "attn1.to_out.0": (d, d), "ff.net.0.proj": (4 * d, d), "ff.net.2": (d, 4 * d)}
        for n, (o, i) in shapes.items():
            P[pre + n + ".weight"], P[pre + n + ".bias"] = lin(o, i)
    P["proj_out_1.weight"], P["proj_out_1.bias"] = lin(2 * d, d)
    P["proj_out_2.weight"], P["proj_out_2.bias"] = lin(p * p * C, d)
    for v in P.values():
        v.requires_grad_(True)
    opt = torch.optim.AdamW(list(P.values()), lr=1e-4, betas=(0.9, 0.999), weight_decay=0.01)
    x0 = torch.randn(B, C, S, S, generator=g)
    labels = torch.randint(0, classes, (B,), generator=g)
    times = []
    loss = None
    for k in range(warmup + steps):
        t0 = time.perf_counter()
        noise = torch.randn(B, C, S, S, generator=g)
        u = torch.sigmoid(1.5 * torch.randn(B, generator=g))
        shift = 2.5
        sigma = shift / (shift + (1 / u - 1))
        s = sigma.view(-1, 1, 1, 1)
        xt = (1 - s) * x0 + s * noise
        out = dit_forward(P, cfg, xt, 1000 * sigma, labels)
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
    print(f"torch name={name} threads={threads} ms={statistics.median(times) * 1e3:.1f} rss_mb={rss:.0f} "
          f"loss={loss.item():.5f} version={torch.__version__}")


if __name__ == "__main__":
    main()
