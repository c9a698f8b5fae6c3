#!/usr/bin/python3
"""Fixtures for tests/test_video_meta.c and bench/bench_video_data.c: DFM's pre-encoded video caches written by
PyTorch. Run with Debian's /usr/bin/python3 (torch, numpy):

    make_meta.py OUTDIR              the test fixtures below
    make_meta.py --bench OUTDIR N    N samples of Wan's shapes (latents float16 [1, 16, 5, 30, 52], text bfloat16
                                     [1, 226, 4096]) as OUTDIR/meta/*.meta and as loose .pth/.pickle/.json files
                                     in OUTDIR/parts for `dfm data prepare --tensors`

Test fixtures:
  flat/aNNN.meta    DFM-shaped dicts (video_latents, text_embeddings, a numpy first_frame, num_frames, strings,
                    bools, a nested dict), one per form: pickle.dump protocol 2 and 4, torch.save zip and legacy;
                    latents bfloat16/float16/float32, [1, C, T, H, W] or [C, T, H, W]; text zero-padded to PAD rows;
                    the valid length from "text_len", from "text_mask" or only from the zero padding; caption as
                    "prompt" or nested metadata "caption"
  cache/            Automodel's bucketed layout: metadata.json {"shards": [...]}, metadata_shard_000N.json lists of
                    {"cache_file": <absolute path on another machine>, "bucket_resolution": [W, H], ...} and
                    WxH/<md5>.meta written with torch.save
  expect/<name>.lat.f32, <name>.txt.f32, <name>.info  the values widened to float32 (raw little-endian) and
                    "C T H W rows D text_len caption" for every flat/ and cache/ sample (name: path with / -> _)
  hostile/evil.meta a pickle whose dict holds os.system("touch OUTDIR/pwned") (never run here)
  mismatch/         two .meta files with different latent shapes (resolution buckets: [2, 3, 4, 6], [2, 3, 6, 6])
  channels/         two .meta files whose latents differ in channels (refused)
  train/            12 samples of wan_tiny's small test shapes (latents [1, 2, 4, 16, 16], text [1, 12, 32] with
                    at most 8 valid rows)
"""
import hashlib
import io
import json
import os
import pickle
import sys

import numpy as np
import torch

C, T, H, W, D, PAD = 2, 3, 4, 6, 8, 10


def text_rows(g, valid, pad, d, dtype):
    t = torch.zeros(pad, d)
    t[:valid] = torch.randn(valid, d, generator=g)
    return t.to(dtype)


def write_expect(out, name, lat, text, valid, caption):
    ex = os.path.join(out, "expect")
    os.makedirs(ex, exist_ok=True)
    lat = lat.float().reshape(-1, *lat.shape[-4:])[0]
    text = text.float().reshape(-1, *text.shape[-2:])[0]
    lat.numpy().astype("<f4").tofile(os.path.join(ex, name + ".lat.f32"))
    text.numpy().astype("<f4").tofile(os.path.join(ex, name + ".txt.f32"))
    with open(os.path.join(ex, name + ".info"), "w") as f:
        f.write("%d %d %d %d %d %d %d %s\n" % (*lat.shape, *text.shape, valid, caption))


def dfm_dict(lat, text, caption, i, extra):
    d = {
        "video_latents": lat,
        "text_embeddings": text,
        "first_frame": np.arange(H * 8 * W * 8 * 3, dtype=np.uint8).reshape(H * 8, W * 8, 3),
        "num_frames": T * 4 - 3,
        "video_path": "/data/videos/clip%03d.mp4" % i,
        "deterministic_latents": True,
        "model_version": "wan2.1",
        "original_resolution": (W * 8, H * 8),
        "metadata": {"source": "test", "index": i, "flags": [True, False, None], "scale": 0.5},
    }
    d.update(extra)
    return d


def save(obj, path, form):
    if form.startswith("pickle"):
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=int(form[-1]))
    else:
        torch.save(obj, path, _use_new_zipfile_serialization=(form == "zip"))


def fixtures(out):
    g = torch.Generator().manual_seed(99)
    forms = ["pickle2", "pickle4", "zip", "legacy", "pickle4", "zip"]
    dtypes = [torch.bfloat16, torch.float16, torch.float32, torch.float32, torch.bfloat16, torch.float16]
    os.makedirs(os.path.join(out, "flat"), exist_ok=True)
    for i, (form, dt) in enumerate(zip(forms, dtypes)):
        valid = 1 + (i * 3) % PAD
        lat = torch.randn(C, T, H, W, generator=g).to(dt)
        if i % 2 == 0:
            lat = lat.unsqueeze(0)
        text = text_rows(g, valid, PAD, D, [torch.float32, torch.bfloat16][i % 2])
        if i % 3 != 2:
            text = text.unsqueeze(0)
        caption = "clip number %d" % i
        extra = {}
        if i % 3 == 0:
            extra["prompt"] = caption
            extra["text_len"] = valid
        elif i % 3 == 1:
            extra["metadata_caption"] = {"caption": caption}
            mask = torch.zeros(PAD, dtype=torch.int64)
            mask[:valid] = 1
            extra["text_mask"] = mask.unsqueeze(0)
        else:
            extra["caption"] = caption  # valid length from the zero padding only
        name = "a%03d" % i
        save(dfm_dict(lat, text, caption, i, extra), os.path.join(out, "flat", name + ".meta"), form)
        write_expect(out, "flat_" + name, lat, text, valid, caption)

    # Automodel's bucketed cache, written on "another machine" (absolute cache_file paths that do not exist here)
    cache = os.path.join(out, "cache")
    entries = []
    for i in range(5):
        res = "%dx%d" % (W * 8, H * 8)
        h = hashlib.md5(("/videos/v%d.mp4_%s" % (i, res)).encode()).hexdigest()
        os.makedirs(os.path.join(cache, res), exist_ok=True)
        valid = 2 + i
        lat = torch.randn(1, C, T, H, W, generator=g).to(torch.float16)
        text = text_rows(g, valid, PAD, D, torch.bfloat16).unsqueeze(0)
        caption = "cached clip %d" % i
        d = {"video_latents": lat, "text_embeddings": text, "first_frame": torch.zeros(H * 8, W * 8, 3,
                                                                                     dtype=torch.uint8),
             "original_resolution": (W * 8, H * 8), "bucket_resolution": (W * 8, H * 8), "bucket_id": 3,
             "aspect_ratio": W / H, "num_frames": 9, "prompt": caption, "video_path": "/videos/v%d.mp4" % i,
             "deterministic_latents": True, "model_version": "wan2.1", "processing_mode": "video",
             "model_type": "wan"}
        torch.save(d, os.path.join(cache, res, h + ".meta"))
        write_expect(out, "cache_%s_%s" % (res, h), lat, text, valid, caption)
        entries.append({"cache_file": "/raid/preprocessed/cache/%s/%s.meta" % (res, h), "video_path":
                        "/videos/v%d.mp4" % i, "bucket_resolution": [W * 8, H * 8], "original_resolution":
                        [W * 8, H * 8], "num_frames": 9, "prompt": caption, "bucket_id": 3, "aspect_ratio": W / H,
                        "pixels": W * H * 64, "model_type": "wan"})
    shards = []
    for k in range(2):
        nm = "metadata_shard_%04d.json" % k
        with open(os.path.join(cache, nm), "w") as f:
            json.dump(entries[k * 3:(k + 1) * 3], f, indent=2)
        shards.append(nm)
    with open(os.path.join(cache, "metadata.json"), "w") as f:
        json.dump({"processor": "wan", "model_name": "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "model_type": "wan",
                   "total_items": len(entries), "num_shards": 2, "shard_size": 3, "shards": shards}, f, indent=2)

    # a pickle that would run a shell command if unpickled by Python
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch %s/pwned" % out,))

    os.makedirs(os.path.join(out, "hostile"), exist_ok=True)
    with open(os.path.join(out, "hostile", "evil.meta"), "wb") as f:
        f.write(pickle.dumps({"video_latents": torch.zeros(C, T, H, W), "text_embeddings": torch.ones(2, D),
                              "hook": Evil()}, protocol=4))

    os.makedirs(os.path.join(out, "mismatch"), exist_ok=True)
    for i, shape in enumerate([(1, C, T, H, W), (1, C, T, H + 2, W)]):
        with open(os.path.join(out, "mismatch", "m%d.meta" % i), "wb") as f:
            pickle.dump({"video_latents": torch.randn(*shape, generator=g), "text_embeddings":
                         torch.randn(1, 3, D, generator=g)}, f, protocol=4)

    os.makedirs(os.path.join(out, "channels"), exist_ok=True)
    for i, shape in enumerate([(1, C, T, H, W), (1, C + 1, T, H, W)]):
        with open(os.path.join(out, "channels", "k%d.meta" % i), "wb") as f:
            pickle.dump({"video_latents": torch.randn(*shape, generator=g), "text_embeddings":
                         torch.randn(1, 3, D, generator=g)}, f, protocol=4)

    os.makedirs(os.path.join(out, "train"), exist_ok=True)
    for i in range(12):
        valid = 1 + i % 8
        d = dfm_dict(torch.randn(1, 2, 4, 16, 16, generator=g).to(torch.bfloat16),
                     text_rows(g, valid, 12, 32, torch.bfloat16).unsqueeze(0), "train %d" % i, i,
                     {"prompt": "train clip %d" % i})
        save(d, os.path.join(out, "train", "t%03d.meta" % i), ["pickle4", "zip"][i % 2])


def bench(out, n):
    g = torch.Generator().manual_seed(7)
    for sub in ("meta", "parts"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    for i in range(n):
        key = "s%05d" % i
        lat = torch.randn(1, 16, 5, 30, 52, generator=g).to(torch.float16)
        valid = 10 + i % 60
        text = text_rows(g, valid, 226, 4096, torch.bfloat16).unsqueeze(0)
        d = dfm_dict(lat, text, "bench clip %d" % i, i, {"prompt": "bench clip %d" % i})
        torch.save(d, os.path.join(out, "meta", key + ".meta"))
        buf = io.BytesIO()
        torch.save(lat[0], buf)
        with open(os.path.join(out, "parts", key + ".pth"), "wb") as f:
            f.write(buf.getvalue())
        with open(os.path.join(out, "parts", key + ".pickle"), "wb") as f:
            f.write(pickle.dumps(text[0]))
        with open(os.path.join(out, "parts", key + ".json"), "w") as f:
            json.dump({"caption": "bench clip %d" % i}, f)


if __name__ == "__main__":
    if sys.argv[1] == "--bench":
        bench(sys.argv[2], int(sys.argv[3]))
    else:
        fixtures(sys.argv[1])
