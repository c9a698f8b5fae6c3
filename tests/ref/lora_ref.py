#!/usr/bin/python3
"""PyTorch reference for dfm's LoRA training gradients (float64).

Usage: lora_ref.py CASE.safetensors
The case file (written by tests/test_lora.c) holds a Wan config, the base parameters, the adapters
("lora.<module>.lora_A.weight" [r, in], ".lora_B.weight" [out, r]) with their scale, the inputs and flow-matching
draws, and dfm's loss and adapter gradients ("grad.*": the fast backward; "grad_merged.*", when present: the
merged-weight backward). Here the adapters are applied as PEFT does, unmerged:
y = x W^T + b + scale * (x A^T) B^T, on the base weights, and autograd gives dL/dA and dL/dB.
"""
import json
import sys

import torch

import wan_model
from wan_ref import load_safetensors, report

torch.set_default_dtype(torch.float64)


def main():
    case, meta = load_safetensors(sys.argv[1])
    cfg = json.loads(meta["config"])
    obj = json.loads(meta["objective"])
    scale = float(meta["scale"])
    mods = json.loads(meta["modules"])
    P = {k[6:]: torch.tensor(v, dtype=torch.float64) for k, v in case.items() if k.startswith("param.")}
    A = {m: torch.tensor(case[f"lora.{m}.lora_A.weight"], dtype=torch.float64, requires_grad=True) for m in mods}
    B = {m: torch.tensor(case[f"lora.{m}.lora_B.weight"], dtype=torch.float64, requires_grad=True) for m in mods}
    base_linear = wan_model.linear

    def lora_linear(P_, name, x):
        y = base_linear(P_, name, x)
        if name in A:
            y = y + scale * (x @ A[name].T) @ B[name].T
        return y

    wan_model.linear = lora_linear
    x0, text = torch.tensor(case["x0"], dtype=torch.float64), torch.tensor(case["text"], dtype=torch.float64)
    noise, sigma = torch.tensor(case["noise"], dtype=torch.float64), torch.tensor(case["sigma"], dtype=torch.float64)
    s = sigma.view(-1, 1, 1, 1, 1)
    xt = (1 - s) * x0 + s * noise
    F = wan_model.wan_forward(P, cfg, xt, obj["num_train_timesteps"] * sigma, text, None)
    w = 1 + obj["flow_shift"] * sigma if obj["use_loss_weighting"] else torch.ones_like(sigma)
    loss = (w * ((F - (noise - x0)) ** 2).flatten(1).mean(1)).mean()
    failures = int(report("LoRA: loss with unmerged adapters vs dfm's merged weights", case["loss"], loss.item(),
                          1e-4) > 1e-4)
    loss.backward()
    worst = 0.0
    ways = [("grad", "fast backward")] + ([("grad_merged", "merged backward")] if any(
        k.startswith("grad_merged.") for k in case) else [])
    for key, way in ways:
        worst = 0.0
        for m in mods:
            for half, t in (("A", A[m]), ("B", B[m])):
                e = report(f"LoRA ({way}): grad {m}.lora_{half}.weight", case[f"{key}.{m}.lora_{half}.weight"],
                           t.grad.numpy(), 1e-4)
                failures += e > 1e-4
                worst = max(worst, e)
        print(f"# LoRA ({way}): worst adapter gradient rel err {worst:.3e} over {2 * len(mods)} tensors", flush=True)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
