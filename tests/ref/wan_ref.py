#!/usr/bin/python3
"""PyTorch reference for dfm's Wan 2.1 transformer (float64), written from diffusers' WanTransformer3DModel
semantics (tests/ref/wan_model.py), independently of dfm's C code.

Usage: wan_ref.py CASE.safetensors
The case file (written by tests/test_wan.c) holds the config (metadata), the parameters under diffusers names,
the inputs (latents, text embeddings, valid text lengths), the flow-matching draws dfm made (noise, sigma), and
dfm's results: the RoPE tables, the model output on the noised input, the loss and every parameter gradient.
This script recomputes them in float64 and prints one PASS/FAIL line per compared quantity (per parameter
for the gradients) with its worst relative error: max |dfm - ref| / max |ref| over the tensor.
"""
import json
import struct
import sys

import numpy as np
import torch

from wan_model import param_shapes, rope_split, rope_tables, wan_forward

torch.set_default_dtype(torch.float64)

DT = {"F32": np.float32, "F64": np.float64, "I32": np.int32, "I64": np.int64}
failures = 0


def load_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__", {})
    base = 8 + n
    out = {}
    for name, e in header.items():
        b, en = e["data_offsets"]
        out[name] = np.frombuffer(data[base + b:base + en], dtype=DT[e["dtype"]]).reshape(e["shape"]).copy()
    return out, meta


def rel_err(mine, ref):
    mine = np.asarray(mine, dtype=np.float64).ravel()
    ref = np.asarray(ref, dtype=np.float64).ravel()
    if mine.size != ref.size:
        return float("inf")
    err = float(np.abs(mine - ref).max(initial=0.0) / max(np.abs(ref).max(initial=0.0), 1e-30))
    return err if np.isfinite(err) else float("inf")


def report(name, mine, ref, tol):
    global failures
    err = rel_err(mine, ref)
    ok = err <= tol
    failures += 0 if ok else 1
    print(f"{'PASS' if ok else 'FAIL'} {name}: max rel err {err:.3e} (tol {tol:g})", flush=True)
    return err


def main():
    case, meta = load_safetensors(sys.argv[1])
    label = meta.get("label", "case")
    cfg = json.loads(meta["config"])
    obj = json.loads(meta["objective"])
    names = json.loads(meta["param_names"])

    # the table dfm built must be diffusers' names and shapes, nothing more or less
    shapes = param_shapes(cfg)
    same = sorted(names) == sorted(shapes) and all(tuple(case["param." + n].shape) == tuple(shapes[n]) for n in names)
    global failures
    failures += 0 if same else 1
    print(f"{'PASS' if same else 'FAIL'} {label}: {len(names)} parameter names and shapes are diffusers' "
          f"({len(shapes)} expected)", flush=True)

    P = {n: torch.tensor(case["param." + n], dtype=torch.float64, requires_grad=True) for n in names}
    x0 = torch.tensor(case["x0"], dtype=torch.float64)
    text = torch.tensor(case["text"], dtype=torch.float64)
    lens = case["text_lens"].astype(np.int64)
    text_lens = None if (lens == text.shape[1]).all() else torch.tensor(lens)
    _, _, T, Hh, W = x0.shape
    pt, ph, pw = cfg["patch_size"]
    D = cfg["attention_head_dim"]

    # RoPE tables: dfm's against diffusers' construction, and against the closed form per axis
    cos, sin = rope_tables(D, T // pt, Hh // ph, W // pw)
    report(f"{label}: RoPE cos table vs diffusers' construction", case["rope.cos"], cos.numpy(), 1e-6)
    report(f"{label}: RoPE sin table vs diffusers' construction", case["rope.sin"], sin.numpy(), 1e-6)
    dt, dh, _ = rope_split(D)
    gt, gh, gw = T // pt, Hh // ph, W // pw
    pos = np.stack(np.meshgrid(np.arange(gt), np.arange(gh), np.arange(gw), indexing="ij"), -1).reshape(-1, 3)
    ang = np.zeros((gt * gh * gw, D // 2))
    for i in range(D // 2):
        axis, j, dim = (0, i, dt) if i < dt // 2 else (1, i - dt // 2, dh) if i < dt // 2 + dh // 2 else \
            (2, i - dt // 2 - dh // 2, dh)
        ang[:, i] = pos[:, axis] * 10000.0 ** (-2.0 * j / dim)
    report(f"{label}: RoPE tables vs closed form cos/sin(pos * 10000^(-2j/dim)), split {dt}/{dh}/{dh}",
           np.concatenate([case["rope.cos"], case["rope.sin"]]), np.concatenate([np.cos(ang), np.sin(ang)]), 1e-6)

    # forward on the noised latents dfm prepared, flow-matching loss, every parameter gradient
    noise = torch.tensor(case["noise"], dtype=torch.float64)
    sigma = torch.tensor(case["sigma"], dtype=torch.float64)
    s = sigma.view(-1, 1, 1, 1, 1)
    xt = (1 - s) * x0 + s * noise
    report(f"{label}: noised input x_t = (1 - s) x0 + s noise", case["model_in"], xt.numpy(), 1e-6)
    F = wan_forward(P, cfg, xt, obj["num_train_timesteps"] * sigma, text, text_lens)
    report(f"{label}: forward output", case["out"], F.detach().numpy(), 1e-4)
    w = 1 + obj["flow_shift"] * sigma if obj["use_loss_weighting"] else torch.ones_like(sigma)
    loss = (w * ((F - (noise - x0)) ** 2).flatten(1).mean(1)).mean()
    report(f"{label}: flow-matching loss", case["loss"], loss.item(), 1e-4)
    loss.backward()
    worst = (0.0, "")
    for n in names:
        e = rel_err(case["grad." + n], P[n].grad.numpy())
        ok = e <= 1e-4
        failures += 0 if ok else 1
        print(f"{'PASS' if ok else 'FAIL'} {label}: grad {n}: max rel err {e:.3e} (tol 1e-4)", flush=True)
        if e > worst[0]:
            worst = (e, n)
    print(f"# {label}: worst gradient max rel err {worst[0]:.3e} ({worst[1]}) over {len(names)} tensors", flush=True)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
