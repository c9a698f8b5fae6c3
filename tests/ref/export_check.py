#!/usr/bin/python3
"""Checks a diffusers folder written by `dfm export` against the PyTorch reference DiT (tests/ref/dit_model.py).

Usage: export_check.py EXPORT_DIR CASE.safetensors
The case file (written by tests/test_generate.c) holds an input x, timesteps t, labels and dfm's forward
output on them. This script reads only the exported folder (transformer/config.json and the safetensors,
as diffusers would), checks the config keys and that every block carries the same embedder copy, runs the
reference forward in float64 and compares it with dfm's output. One PASS/FAIL line per check.
"""
import json
import os
import struct
import sys

import numpy as np
import torch

from dit_model import dit_forward

torch.set_default_dtype(torch.float64)
DT = {"F32": np.float32, "F64": np.float64, "I32": np.int32, "I64": np.int64}
failures = 0


def check(ok, msg):
    global failures
    failures += 0 if ok else 1
    print(f"{'PASS' if ok else 'FAIL'} export_check: {msg}", flush=True)


def load_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    header.pop("__metadata__", None)
    out = {}
    for name, e in header.items():
        b, en = e["data_offsets"]
        out[name] = np.frombuffer(data[8 + n + b:8 + n + en], dtype=DT[e["dtype"]]).reshape(e["shape"]).copy()
    return out


def main():
    folder, case_path = sys.argv[1], sys.argv[2]
    with open(os.path.join(folder, "transformer", "config.json")) as f:
        cfg = json.load(f)
    with open(os.path.join(folder, "model_index.json")) as f:
        index = json.load(f)
    check(index.get("_class_name") == "DiTPipeline" and index.get("transformer") == ["diffusers", "DiTTransformer2DModel"],
          "model_index.json names DiTPipeline and DiTTransformer2DModel")
    keys = ["_class_name", "num_attention_heads", "attention_head_dim", "in_channels", "out_channels", "num_layers",
            "dropout", "norm_num_groups", "attention_bias", "sample_size", "patch_size", "activation_fn",
            "num_embeds_ada_norm", "upcast_attention", "norm_type", "norm_elementwise_affine", "norm_eps"]
    missing = [k for k in keys if k not in cfg]
    check(not missing and cfg["_class_name"] == "DiTTransformer2DModel" and cfg["norm_type"] == "ada_norm_zero",
          f"transformer/config.json has DiTTransformer2DModel's keys (missing: {missing})")

    P = load_safetensors(os.path.join(folder, "transformer", "diffusion_pytorch_model.safetensors"))
    L = cfg["num_layers"]
    emb = [n[len("transformer_blocks.0.norm1.emb."):] for n in P if n.startswith("transformer_blocks.0.norm1.emb.")]
    same = len(emb) == 5 and all(
        np.array_equal(P[f"transformer_blocks.{l}.norm1.emb.{s}"], P[f"transformer_blocks.0.norm1.emb.{s}"])
        for l in range(L) for s in emb)
    check(same, f"every one of {L} blocks carries the same 5 embedder tensors")

    case = load_safetensors(case_path)
    mcfg = {"num_layers": L, "hidden_size": cfg["num_attention_heads"] * cfg["attention_head_dim"],
            "num_heads": cfg["num_attention_heads"], "patch_size": cfg["patch_size"],
            "out_channels": cfg["out_channels"] or cfg["in_channels"], "image_size": cfg["sample_size"],
            "freq_dim": 256, "norm_eps": cfg["norm_eps"]}
    T = {n: torch.tensor(v, dtype=torch.float64) for n, v in P.items()}
    with torch.no_grad():
        ref = dit_forward(T, mcfg, torch.tensor(case["x"], dtype=torch.float64),
                          torch.tensor(case["t"], dtype=torch.float64),
                          torch.tensor(case["labels"], dtype=torch.int64)).numpy()
    mine = case["out"].astype(np.float64)
    err = float(np.abs(mine - ref).max() / max(np.abs(ref).max(), 1e-30)) if mine.shape == ref.shape else float("inf")
    check(err <= 1e-4, f"reference forward on the exported weights vs dfm's forward: max rel err {err:.3e} (tol 1e-4)")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
