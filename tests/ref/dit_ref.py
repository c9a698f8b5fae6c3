#!/usr/bin/python3
"""PyTorch reference for dfm's DiT and its objectives (float64), written from the paper and diffusers'
DiTTransformer2DModel semantics, independently of dfm's C code.

Usage: dit_ref.py CASE.safetensors
The case file (written by tests/test_dit.c) holds the config (metadata), the parameters under diffusers
names, the inputs, the draws dfm's RNG made (noise, sigma, dropped labels) and dfm's results (output, loss,
parameter gradients, per-step losses of a short AdamW run). This script recomputes everything in float64
and prints one PASS/FAIL line per compared quantity with its worst relative error.
"""
import json
import math
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as Fn

from dit_model import dit_forward

torch.set_default_dtype(torch.float64)

DT = {"F32": np.float32, "F64": np.float64, "I32": np.int32, "I64": np.int64, "F16": np.float16}
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
        arr = np.frombuffer(data[base + b:base + en], dtype=DT[e["dtype"]]).reshape(e["shape"])
        out[name] = arr.copy()
    return out, meta


def report(name, mine, ref, tol):
    global failures
    mine = np.asarray(mine, dtype=np.float64).ravel()
    ref = np.asarray(ref, dtype=np.float64).ravel()
    denom = max(np.abs(ref).max(initial=0.0), 1e-30)
    err = float(np.abs(mine - ref).max(initial=0.0) / denom) if mine.size == ref.size else float("inf")
    if not np.isfinite(err):
        err = float("inf")
    ok = err <= tol
    failures += 0 if ok else 1
    print(f"{'PASS' if ok else 'FAIL'} {name}: max rel err {err:.3e} (tol {tol:g})", flush=True)


# ---- objectives --------------------------------------------------------------------------------------

def sigma_from_draws(obj, normal, uniform, coin):
    if obj["kind"] == "edm":
        s = np.exp(obj["p_mean"] + obj["p_std"] * normal)
        return np.clip(s, obj["edm_sigma_min"], obj["edm_sigma_max"])
    m = obj["sampling"]
    sig = lambda z: 1 / (1 + np.exp(-z))
    if m == "uniform":
        u = uniform
    elif m == "logit_normal":
        u = sig(obj["logit_mean"] + obj["logit_std"] * normal)
    elif m == "lognorm":
        u = sig(normal)
    elif m == "mode":
        u = 1 - uniform - obj["mode_scale"] * (np.cos(np.pi * uniform / 2) ** 2 - 1 + uniform)
    elif m == "mix":
        u = uniform if coin < obj["mix_uniform_ratio"] else sig(obj["logit_mean"] + obj["logit_std"] * normal)
    else:
        raise ValueError(m)
    u = np.clip(u, 1e-7, 1 - 1e-7)
    shift = obj["flow_shift"]
    s = shift / (shift + (1 / u - 1))
    return np.clip(s, obj["sigma_min"], obj["sigma_max"])


def objective_loss(P, cfg, obj, x0, noise, sigma, labels):
    C = x0.shape[1]
    s = sigma.view(-1, 1, 1, 1)
    if obj["kind"] == "flow":
        xt = (1 - s) * x0 + s * noise
        F = dit_forward(P, cfg, xt, obj["num_train_timesteps"] * sigma, labels)[:, :C]
        err = F - (noise - x0)
        w = 1 + obj["flow_shift"] * sigma if obj["use_loss_weighting"] else torch.ones_like(sigma)
    else:
        sd = obj["sigma_data"]
        xt = x0 + s * noise
        c_in, c_skip = 1 / torch.sqrt(s ** 2 + sd ** 2), sd ** 2 / (s ** 2 + sd ** 2)
        c_out = s * sd / torch.sqrt(s ** 2 + sd ** 2)
        F = dit_forward(P, cfg, c_in * xt, 0.25 * torch.log(sigma), labels)[:, :C]
        err = c_skip * xt + c_out * F - x0
        w = (sigma ** 2 + sd ** 2) / (sigma * sd) ** 2
    return (w * (err ** 2).flatten(1).mean(1)).mean()


def main():
    case, meta = load_safetensors(sys.argv[1])
    cfg = json.loads(meta["config"])
    obj = json.loads(meta["objective"])
    opt = json.loads(meta["optimizer"])
    names = json.loads(meta["param_names"])
    P = {n: torch.tensor(case["param." + n], dtype=torch.float64, requires_grad=True) for n in names}
    x0 = torch.tensor(case["x0"], dtype=torch.float64)

    # the sigma dfm drew must follow from its raw draws by REFERENCE.md §2's formulas
    s_ref = sigma_from_draws(obj, case["step0.draw_normal"].astype(np.float64),
                             case["step0.draw_uniform"].astype(np.float64), float(case["step0.batch_coin"][0]))
    report(f"{obj['kind']}/{obj.get('sampling', '')} sigma from draws", case["step0.sigma"], s_ref, 1e-5)

    # forward output on the prepared model input, loss and every parameter gradient
    noise = torch.tensor(case["step0.noise"], dtype=torch.float64)
    sigma = torch.tensor(case["step0.sigma"], dtype=torch.float64)
    labels = torch.tensor(case["step0.labels"], dtype=torch.int64)
    out = dit_forward(P, cfg, torch.tensor(case["step0.model_in"], dtype=torch.float64),
                      torch.tensor(case["step0.timestep"], dtype=torch.float64), labels)
    report("forward output", case["out"], out.detach().numpy(), 1e-4)
    loss = objective_loss(P, cfg, obj, x0, noise, sigma, labels)
    report("loss", case["loss"], loss.item(), 1e-4)
    loss.backward()
    # The key bias cannot change any attention output (it adds q.b_k to every score of a row, which softmax
    # ignores), so its exact gradient is zero and both sides hold only rounding noise: it is checked in
    # absolute terms against the largest gradient instead of relative to itself.
    gmax = max(np.abs(P[n].grad.numpy()).max() for n in names)
    zero_grad = [n for n in names if n.endswith("attn1.to_k.bias")]
    worst = (0.0, "")
    bad = []
    for n in names:
        ref = P[n].grad.numpy()
        mine = case["grad." + n].astype(np.float64)
        denom = 1e-2 * gmax if n in zero_grad else max(np.abs(ref).max(), 1e-30)
        e = np.abs(mine - ref).max() / denom
        if e > worst[0]:
            worst = (e, n)
        if not e <= 1e-4:
            bad.append(f"{n} ({e:.2e})")
    global failures
    ok = not bad
    failures += 0 if ok else 1
    print(f"{'PASS' if ok else 'FAIL'} all {len(names)} parameter gradients: worst max rel err {worst[0]:.3e} "
          f"({worst[1]}) (tol 1e-4){'; failing: ' + ', '.join(bad[:8]) if bad else ''}", flush=True)

    # a short AdamW run from the same start, with dfm's draws for each step
    steps = int(meta["steps"])
    P2 = {n: torch.tensor(case["param." + n], dtype=torch.float64, requires_grad=True) for n in names}
    decay = [P2[n] for n in names if not n.endswith(".bias")]
    no_decay = [P2[n] for n in names if n.endswith(".bias")]
    optim = torch.optim.AdamW([{"params": decay, "weight_decay": opt["weight_decay"]},
                               {"params": no_decay, "weight_decay": 0.0}],
                              lr=opt["lr"], betas=(opt["beta1"], opt["beta2"]), eps=opt["eps"])
    losses = []
    for k in range(steps):
        optim.zero_grad()
        l = objective_loss(P2, cfg, obj, x0, torch.tensor(case[f"step{k}.noise"], dtype=torch.float64),
                           torch.tensor(case[f"step{k}.sigma"], dtype=torch.float64),
                           torch.tensor(case[f"step{k}.labels"], dtype=torch.int64))
        l.backward()
        torch.nn.utils.clip_grad_norm_(list(P2.values()), opt["clip"])
        optim.step()
        losses.append(l.item())
    report(f"{steps} AdamW steps: losses", case["losses"], np.array(losses), 1e-4)
    # Final parameters are not compared: Adam's first steps move every element by about lr whatever the size
    # of its gradient, so elements whose gradient is at the level of fp32 rounding (dead GELU units, the key
    # bias) take +-lr steps of arbitrary sign on both sides. The losses above are the well-conditioned check.
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
