#!/usr/bin/python3
"""Writes the seed corpus of tests/fuzz/fuzz_pickle.c: small real pickles and torch.save files (Debian's
/usr/bin/python3 with torch and numpy). Usage: make_seed_corpus.py tests/fuzz/corpus/pickle"""
import collections
import io
import os
import pickle
import sys

import numpy as np
import torch

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
torch.manual_seed(0)
meta = {
    "video_latents": torch.randn(1, 2, 1, 1, 2).bfloat16(),
    "text_embeddings": torch.randn(1, 2, 3).half(),
    "first_frame": np.arange(6, dtype=np.uint8).reshape(1, 2, 3),
    "num_frames": 5,
    "caption": "cat",
    "is_image": False,
    "metadata": {"fps": 16.0, "size": (2, 1), "none": None, "od": collections.OrderedDict(a=1)},
}
base = torch.arange(6.0).reshape(2, 3)
views = {"T": base.t(), "rows": base[1:], "cols": base[:, ::2], "b": torch.tensor([True, False]),
         "i": torch.arange(3), "x": torch.arange(2.0).expand(2, 2)}
npy = {"f": np.asfortranarray(np.arange(4, dtype=np.float32).reshape(2, 2)), "be": np.arange(2, dtype=">i4"),
       "s": [np.float32(0.5), np.int64(3)], "set": {1, 2}, "fs": frozenset([3]), "big": 1 << 70,
       "ba": bytearray(b"ab")}


def tsave(obj, legacy=False, protocol=2):
    b = io.BytesIO()
    torch.save(obj, b, _use_new_zipfile_serialization=not legacy, pickle_protocol=protocol)
    return b.getvalue()


files = {}
for p in (2, 3, 4, 5):
    files["meta_p%d.meta" % p] = pickle.dumps(meta, protocol=p)
    files["numpy_p%d.pickle" % p] = pickle.dumps(npy, protocol=p)
files["views_p2.pickle"] = pickle.dumps(views, protocol=2)
files["views_p5.pickle"] = pickle.dumps(views, protocol=5)
files["meta_zip.meta"] = tsave(meta)
files["meta_legacy.meta"] = tsave(meta, legacy=True)
files["views_zip.pth"] = tsave(views, protocol=4)
files["views_legacy.pth"] = tsave(views, legacy=True, protocol=5)
files["part.pth"] = tsave(torch.randn(2, 1, 1, 2).bfloat16())
files["part.pickle"] = pickle.dumps(torch.randn(2, 3).bfloat16())
for name, data in files.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)
print("%d seeds, %d bytes" % (len(files), sum(len(d) for d in files.values())))
