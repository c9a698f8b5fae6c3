#!/usr/bin/python3
"""Fixtures for tests/test_video.c: video samples in DFM's Megatron Energon layout, written by PyTorch, plus the same
values as .npy files. Run with Debian's /usr/bin/python3 (torch, numpy):

    make_video_pickles.py OUTDIR

Writes loose files that `dfm data prepare --tensors` groups by key into Energon samples:
  OUTDIR/pth/sNNN.pth     torch.save of the latents [C, T, H, W] (float32, bfloat16 or float16; one sample
                          [1, C, T, H, W]; one in the legacy, non-zip format)
  OUTDIR/pth/sNNN.pickle  pickle.dumps of the text embeddings [L, D] (a tensor, or for one sample a numpy array;
                          one sample [1, L, D]); some trimmed to the valid rows, some zero-padded
  OUTDIR/pth/sNNN.json    {"caption": ..., and for some samples "text_len": valid rows}
  OUTDIR/npy/sNNN.latents.npy, sNNN.text_embeddings.npy, sNNN.json   the same values (float32, or float16 where
                          the latents are float16)
  OUTDIR/expected.txt     per sample: key, valid text rows, sum of the latents, sum of the valid text rows
  OUTDIR/nan/             4 samples in the .pth/.pickle form, the latents of s001 holding a NaN (to be skipped)
  OUTDIR/dict/            1 sample whose .pth holds a dict rather than a tensor (no latents part)
"""
import io
import json
import os
import pickle
import sys

import numpy as np
import torch

C, T, H, W, D, N = 2, 3, 4, 4, 8, 12


def main():
    out = sys.argv[1]
    for sub in ("pth", "npy"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    g = torch.Generator().manual_seed(1234)
    expected = []
    for i in range(N):
        key = "s%03d" % i
        dtype = [torch.float32, torch.bfloat16, torch.float16][i % 3]
        lat = torch.randn(C, T, H, W, generator=g).to(dtype)
        valid = 1 + i % 6
        padded = 6 if i % 2 else valid  # odd samples carry zero rows after the valid ones
        text = torch.zeros(padded, D)
        text[:valid] = torch.randn(valid, D, generator=g)
        if i % 4 == 1:
            text = text.to(torch.bfloat16)
        meta = {"caption": "sample %d" % i}
        if i % 3 == 0:
            meta["text_len"] = valid

        lat_saved = lat.unsqueeze(0) if i == 4 else lat
        buf = io.BytesIO()
        torch.save(lat_saved, buf, _use_new_zipfile_serialization=(i != 7))
        with open(os.path.join(out, "pth", key + ".pth"), "wb") as f:
            f.write(buf.getvalue())
        text_saved = text.unsqueeze(0) if i == 5 else text
        obj = text_saved.float().numpy() if i == 2 else text_saved
        with open(os.path.join(out, "pth", key + ".pickle"), "wb") as f:
            f.write(pickle.dumps(obj))

        lat_np = lat.numpy() if dtype == torch.float16 else lat.float().numpy()
        np.save(os.path.join(out, "npy", key + ".latents.npy"), lat_np)
        np.save(os.path.join(out, "npy", key + ".text_embeddings.npy"), text.float().numpy())
        for sub in ("pth", "npy"):
            with open(os.path.join(out, sub, key + ".json"), "w") as f:
                json.dump(meta, f)
        expected.append("%s %d %.9g %.9g" % (key, valid, lat.double().sum().item(),
                                             text[:valid].double().sum().item()))
    with open(os.path.join(out, "expected.txt"), "w") as f:
        f.write("\n".join(expected) + "\n")

    for sub, n in (("nan", 4), ("dict", 1)):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
        for i in range(n):
            key = "s%03d" % i
            lat = torch.randn(C, T, H, W, generator=g)
            if sub == "nan" and i == 1:
                lat[1, 2, 3, 0] = float("nan")
            obj = {"video_latents": lat} if sub == "dict" else lat
            torch.save(obj, os.path.join(out, sub, key + ".pth"))
            with open(os.path.join(out, sub, key + ".pickle"), "wb") as f:
                f.write(pickle.dumps(torch.randn(3, D, generator=g)))


if __name__ == "__main__":
    main()
