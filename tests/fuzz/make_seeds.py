#!/usr/bin/python3
"""Writes the seed corpora of the libFuzzer targets in tests/fuzz/ (all but pickle, see make_seed_corpus.py): small
real files written by Python's own writers (tarfile, gzip, json, numpy, PIL) or by hand from the format's spec
(safetensors, .tar.idx). The config seeds are copied from recipes/ and written by hand.
Usage: tests/fuzz/make_seeds.py (from the repository root; rewrites tests/fuzz/corpus/<target>/gen_*)."""
import gzip
import io
import json
import os
import struct
import tarfile

import numpy as np
from PIL import Image

C = "tests/fuzz/corpus"


def put(target, name, data):
    os.makedirs(f"{C}/{target}", exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(f"{C}/{target}/gen_{name}", "wb") as f:
        f.write(data)


def safetensors(tensors, meta=None):
    """tensors: list of (name, dtype string, shape, raw bytes); the header padded to 8 bytes as the spec asks."""
    hdr, off, body = {}, 0, b""
    if meta:
        hdr["__metadata__"] = meta
    for name, dt, shape, raw in tensors:
        hdr[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(raw)]}
        off += len(raw)
        body += raw
    h = json.dumps(hdr).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + body


f32 = lambda a: np.asarray(a, dtype="<f4").tobytes()
# safetensors: dtypes, metadata, a 0-d and an empty tensor; and a video sample (video_safetensors_read's form)
put("safetensors", "mixed.safetensors", safetensors([
    ("w", "F32", [2, 2], f32([1, 2, 3, 4])),
    ("h", "F16", [3], np.arange(3, dtype="<f2").tobytes()),
    ("b", "BF16", [2], b"\x80\x3f\x00\x40"),
    ("d", "F64", [], struct.pack("<d", 0.5)),
    ("i", "I64", [1], struct.pack("<q", -3)),
    ("u", "U8", [0], b""),
    ("e", "F8_E4M3", [2], b"\x38\x40")], {"format": "pt"}))
put("safetensors", "video.safetensors", safetensors([
    ("video_latents", "F32", [1, 2, 1, 1, 2], f32(np.arange(4))),
    ("text_embeddings", "BF16", [1, 3, 2], b"\x80\x3f" * 4 + b"\0\0" * 2)], {"caption": "a cat", "text_len": "2"}))

# codecs: PNG gray/RGBA/palette/16-bit, baseline and progressive JPEG, .npy v1 of several dtypes
def png(img, **kw):
    b = io.BytesIO()
    img.save(b, "PNG", **kw)
    return b.getvalue()


def jpeg(img, **kw):
    b = io.BytesIO()
    img.save(b, "JPEG", **kw)
    return b.getvalue()


g = Image.fromarray((np.arange(64).reshape(8, 8) * 4).astype(np.uint8))
put("codec", "gray.png", png(g))
put("codec", "rgba.png", png(Image.fromarray(np.arange(4 * 4 * 4, dtype=np.uint8).reshape(4, 4, 4), "RGBA")))
put("codec", "palette.png", png(g.convert("P")))
put("codec", "gray16.png", png(Image.fromarray(np.arange(16, dtype=np.uint16).reshape(4, 4) * 4000)))
put("codec", "baseline.jpg", jpeg(g.convert("RGB"), quality=50))
put("codec", "progressive.jpg", jpeg(g, quality=50, progressive=True))
for name, arr in [("f4", np.arange(6, dtype="<f4").reshape(2, 3)), ("u1", np.arange(4, dtype="u1")),
                  ("f2", np.arange(3, dtype="<f2")), ("i8_fortran", np.asfortranarray(np.arange(4).reshape(2, 2))),
                  ("f8_0d", np.array(1.5))]:
    b = io.BytesIO()
    np.save(b, arr)
    put("codec", name + ".npy", b.getvalue())

# Fashion-MNIST idx: first byte 0 = images, 1 = labels; gzip'ed and plain
imgs = b"\0\0\x08\x03" + struct.pack(">III", 2, 28, 28) + bytes(range(256)) * 6 + bytes(2 * 784 - 1536)
labs = b"\0\0\x08\x01" + struct.pack(">I", 2) + b"\x03\x09"
put("fmnist", "images.gz", b"\0" + gzip.compress(imgs, mtime=0))
put("fmnist", "labels.gz", b"\1" + gzip.compress(labs, mtime=0))
put("fmnist", "labels_limit.raw", b"\3" + labs)

# tar shards (first byte even) written by tarfile in ustar, GNU and PAX form; .tar.idx (first byte odd)
def shard(fmt, names):
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode="w", format=fmt) as t:
        for n in names:
            ti = tarfile.TarInfo(n)
            data = b"12" if not n.endswith("/") else b""
            if n.endswith("/"):
                ti.type = tarfile.DIRTYPE
            ti.size = len(data)
            ti.mtime = 0
            t.addfile(ti, io.BytesIO(data))
    return b.getvalue()


names = ["a/0001.png", "a/0001.cls", "a/0002.txt", "b/", "b/0003.json", "__x__/skip.txt"]
put("tar", "ustar.tar", b"\0" + shard(tarfile.USTAR_FORMAT, names))
put("tar", "gnu_long.tar", b"\0" + shard(tarfile.GNU_FORMAT, names + ["d" * 120 + "/k.cls"]))
put("tar", "pax_long.tar", b"\0" + shard(tarfile.PAX_FORMAT, ["p" * 150 + ".npy", "q.txt"]))
# the fixed shard of fuzz_tar: 5 members of 2 bytes (ustar): samples start at members 0, 2, 3; the end at 5
put("tar", "idx_valid.idx", b"\1" + struct.pack("<4Q", 0, 2048, 3072, 5120))
put("tar", "idx_short.idx", b"\1" + struct.pack("<2Q", 0, 5120))

# metadatasets and .nv-meta (first byte: 0 metadataset, 1 split.yaml, 2 .info.json, 3 dataset.yaml, 4 state,
# 5 brace pattern), for fuzz_metadataset's fixed dataset "ds"
hdr = "__module__: megatron.energon\n__class__: MetadatasetV2\nsplits:\n"
put("metadataset", "path.yaml", "\0" + hdr + "  train: {path: ./ds}\n")
put("metadataset", "blend.yaml", "\0" + hdr + "  train:\n    blend:\n      - {weight: 2, path: ds, subflavors: {a: 1}}\n"
    "      - weight: 1\n        path: ./ds\n        subset: {range: [1, 50%]}\n")
put("metadataset", "epochized.yaml", "\0" + hdr + "  train:\n    blend_epochized:\n      - {repetitions: 2, path: ds}\n"
    "  val: {path: ds, split_part: train}\n")
put("metadataset", "split.yaml", "\1split_parts:\n  train:\n  - shards/data_{0..0}.tar\n  val: []\n"
    "exclude: [shards/data_0.tar/s1]\n")
put("metadataset", "info.json", "\2" + json.dumps({"energon_version": "7.0.0", "shard_counts": {"shards/data_0.tar": 3}}))
put("metadataset", "dataset.yaml", "\3__module__: megatron.energon\n__class__: CrudeWebdataset\n")
put("metadataset", "brace.txt", "\5a_{0000..0003}_{x,y}.tar")

# checkpoints (first byte: 0 shard file, 1 dfm_shard JSON, 2 model.safetensors) for the table a [2,3], b [4]
ds = {"begin": 0, "end": 10, "total": 10, "pieces": {"a": {"shape": [2, 3], "offset": 0},
                                                     "b": {"shape": [4], "offset": 0}}}
put("checkpoint", "shard.safetensors", b"\0" + safetensors(
    [("model.a", "F32", [6], f32(range(6))), ("model.b", "BF16", [4], b"\x80\x3f" * 4)], {"dfm_shard": json.dumps(ds)}))
put("checkpoint", "dfm_shard.json", "\1" + json.dumps(ds))
ds2 = dict(ds, pieces={"a": {"shape": [2, 3], "offset": 2}, "b": {"shape": [4], "offset": 0}})
put("checkpoint", "dfm_shard_gap.json", "\1" + json.dumps(ds2))
put("checkpoint", "model.safetensors", b"\2" + safetensors(
    [("a", "F32", [2, 3], f32(range(6))), ("b", "F16", [4], np.ones(4, dtype="<f2").tobytes())]))

# model configs and objectives as dfm writes them (dfm_config, dfm_objective, transformer/config.json)
put("json", "dit.json", json.dumps({"num_layers": 2, "hidden_size": 32, "num_attention_heads": 2, "ffn_hidden_size": 64,
                                    "patch_size": 2, "in_channels": 1, "out_channels": 1, "image_size": 28,
                                    "num_classes": 10, "freq_dim": 64, "norm_eps": 1e-6}))
put("json", "wan.json", json.dumps({"_class_name": "WanTransformer3DModel", "num_layers": 2, "num_attention_heads": 2,
                                    "attention_head_dim": 16, "in_channels": 4, "out_channels": 4, "text_dim": 32,
                                    "freq_dim": 32, "ffn_dim": 64, "patch_size": [1, 2, 2], "eps": 1e-6,
                                    "cross_attn_norm": True, "rope_max_seq_len": 1024}))
put("json", "objective_flow.json", json.dumps({"kind": "flow_matching", "flow_shift": 3.0, "cond_dropout_prob": 0.1}))
put("json", "objective_edm.json", json.dumps({"kind": "edm", "sigma_data": 0.5}))

# diffusers' shard index for fuzz_diffusers_index's two shards
idx = {"metadata": {"total_size": 32}, "weight_map": {
    "blocks.0.w": "diffusion_pytorch_model-00001-of-00002.safetensors",
    "proj_out.w": "diffusion_pytorch_model-00002-of-00002.safetensors"}}
put("diffusers_index", "index.json", json.dumps(idx, indent=2))
put("diffusers_index", "index_one.json", json.dumps({"weight_map": {
    "blocks.0.w": "diffusion_pytorch_model-00001-of-00002.safetensors"}}))

# samples.json as dfm generate writes it, next to fuzz_samples_json's g.png, c.png and s.png
put("samples_json", "samples.json", json.dumps([{"file": "g.png", "label": 3}, {"file": "g.png", "label": 9}], indent=2))
put("samples_json", "colour.json", json.dumps([{"file": "c.png", "label": 0}]))
put("samples_json", "small.json", json.dumps([{"file": "s.png", "label": 1}, {"file": "missing.png", "label": 2}]))
