#!/usr/bin/python3
"""Loads a diffusers folder (written by `dfm export` / dit_export_diffusers / wan_export_diffusers) the way
diffusers would - transformer/config.json, then the weights by name from diffusion_pytorch_model.safetensors or
the shards its index lists - into the PyTorch reference model (tests/ref/dit_model.py or wan_model.py), runs
the forward on the inputs of a case file and compares with dfm's output.

Usage: diffusers_check.py FOLDER CASE.safetensors [--dtype float32|float64] [--tol T] [--label L]
FOLDER: the pipeline folder or its transformer/ folder. The case holds the inputs under `dfm forward`'s names
(hidden_states, timestep, encoder_hidden_states, encoder_attention_mask, class_labels) and dfm's output
`sample`. Prints one PASS/FAIL line per check; exits 1 if any failed.
"""
import argparse
import json
import os
import struct
import sys

import numpy as np
import torch

from dit_model import dit_forward
from wan_model import param_shapes, wan_forward

failures = 0
label = "diffusers_check"


def check(ok, msg):
    global failures
    failures += 0 if ok else 1
    print(f"{'PASS' if ok else 'FAIL'} {label}: {msg}", flush=True)


NP = {"F32": np.float32, "F64": np.float64, "F16": np.float16, "I32": np.int32, "I64": np.int64, "I16": np.int16,
      "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def load_safetensors(path):
    """name -> float or int numpy array; BF16 widened to float32 (numpy has no bfloat16)."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    header.pop("__metadata__", None)
    out, dtypes = {}, {}
    for name, e in header.items():
        b, en = e["data_offsets"]
        raw = data[8 + n + b:8 + n + en]
        if e["dtype"] == "BF16":
            a = (np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            a = np.frombuffer(raw, dtype=NP[e["dtype"]])
        out[name] = a.reshape(e["shape"]).copy()
        dtypes[name] = e["dtype"]
    return out, dtypes


def load_transformer(folder):
    tdir = os.path.join(folder, "transformer")
    if not os.path.exists(os.path.join(tdir, "config.json")):
        tdir = folder
    with open(os.path.join(tdir, "config.json")) as f:
        cfg = json.load(f)
    single = os.path.join(tdir, "diffusion_pytorch_model.safetensors")
    if os.path.exists(single):
        P, dt = load_safetensors(single)
        files = 1
    else:
        with open(os.path.join(tdir, "diffusion_pytorch_model.safetensors.index.json")) as f:
            index = json.load(f)
        P, dt = {}, {}
        shard_files = sorted(set(index["weight_map"].values()))
        total, wrong = 0, []
        for fn in shard_files:
            p, d = load_safetensors(os.path.join(tdir, fn))
            wrong += [k for k in p if index["weight_map"].get(k) != fn]
            total += sum(p[k].size * {"F32": 4, "BF16": 2, "F16": 2}.get(d[k], 4) for k in p)
            P.update(p)
            dt.update(d)
        check(not wrong and len(P) == len(index["weight_map"]),
              f"index weight_map names the file of each of the {len(P)} tensors in {len(shard_files)} shards "
              f"(wrong: {wrong[:3]})")
        check(index["metadata"]["total_size"] == total,
              f"index metadata total_size {index['metadata']['total_size']} = bytes of the {len(P)} tensors ({total})")
        files = len(shard_files)
    return tdir, cfg, P, dt, files


WAN_KEYS = ["_class_name", "_diffusers_version", "added_kv_proj_dim", "attention_head_dim", "cross_attn_norm", "eps",
            "ffn_dim", "freq_dim", "image_dim", "in_channels", "num_attention_heads", "num_layers", "out_channels",
            "patch_size", "qk_norm", "rope_max_seq_len", "text_dim"]


def main():
    global label
    ap = argparse.ArgumentParser()
    ap.add_argument("folder")
    ap.add_argument("case")
    ap.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    ap.add_argument("--tol", type=float, default=1e-5)
    ap.add_argument("--label", default="diffusers_check")
    args = ap.parse_args()
    label = args.label
    dtype = torch.float64 if args.dtype == "float64" else torch.float32
    torch.set_default_dtype(dtype)

    tdir, cfg, P, dtypes, files = load_transformer(args.folder)
    case, _ = load_safetensors(args.case)
    cls = cfg.get("_class_name")
    index_path = os.path.join(args.folder, "model_index.json")
    if tdir != args.folder and os.path.exists(index_path):
        with open(index_path) as f:
            index = json.load(f)
        pipe = {"WanTransformer3DModel": "WanPipeline", "DiTTransformer2DModel": "DiTPipeline"}.get(cls)
        check(index.get("_class_name") == pipe and index.get("transformer") == ["diffusers", cls],
              f"model_index.json names {pipe} with transformer {cls}")
        sched = index.get("scheduler", [None, None])[1]
        with open(os.path.join(args.folder, "scheduler", "scheduler_config.json")) as f:
            scfg = json.load(f)
        check(scfg.get("_class_name") == sched, f"scheduler/scheduler_config.json is the listed {sched}")

    x = torch.tensor(case["hidden_states"].astype(np.float64), dtype=dtype)
    t = torch.tensor(case["timestep"].astype(np.float64), dtype=dtype)
    T = {n: torch.tensor(v.astype(np.float64), dtype=dtype) for n, v in P.items()}
    if cls == "WanTransformer3DModel":
        missing = [k for k in WAN_KEYS if k not in cfg]
        check(not missing and cfg["qk_norm"] == "rms_norm_across_heads" and cfg["cross_attn_norm"] is True and
              cfg["image_dim"] is None and cfg["added_kv_proj_dim"] is None,
              f"config.json has WanTransformer3DModel's keys for T2V (missing: {missing})")
        shapes = param_shapes(cfg)
        same = sorted(shapes) == sorted(P) and all(tuple(P[n].shape) == tuple(s) for n, s in shapes.items())
        check(same, f"{len(P)} tensors in {files} file(s) are exactly WanTransformer3DModel's names and shapes "
                    f"({len(shapes)} expected)")
        text = torch.tensor(case["encoder_hidden_states"].astype(np.float64), dtype=dtype)
        lens = None
        if "encoder_attention_mask" in case:
            lens = torch.tensor(case["encoder_attention_mask"].astype(np.int64).sum(1))
        with torch.no_grad():
            ref = wan_forward(T, cfg, x, t, text, lens).numpy()
    elif cls == "DiTTransformer2DModel":
        mcfg = {"num_layers": cfg["num_layers"], "hidden_size": cfg["num_attention_heads"] * cfg["attention_head_dim"],
                "num_heads": cfg["num_attention_heads"], "patch_size": cfg["patch_size"],
                "out_channels": cfg["out_channels"] or cfg["in_channels"], "image_size": cfg["sample_size"],
                "freq_dim": 256, "norm_eps": cfg.get("norm_eps", 1e-5)}
        with torch.no_grad():
            ref = dit_forward(T, mcfg, x, t, torch.tensor(case["class_labels"].astype(np.int64))).numpy()
    else:
        check(False, f"unknown _class_name {cls!r}")
        sys.exit(1)
    mine = case["sample"].astype(np.float64)
    err = float(np.abs(mine - ref).max() / max(np.abs(ref).max(), 1e-30)) if mine.shape == ref.shape else float("inf")
    check(err <= args.tol, f"{cls} in torch {args.dtype} on the folder's weights ({sorted(set(dtypes.values()))}) vs "
                           f"dfm's output {list(mine.shape)}: max rel err {err:.3e} (tol {args.tol:g})")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
