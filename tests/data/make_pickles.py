#!/usr/bin/python3
"""Fixtures for tests/test_pickle.c: pickles and torch.save files of DFM-shaped data in every form the reader
accepts, plus hostile and broken ones. Run with Debian's /usr/bin/python3 (torch, numpy):

    make_pickles.py OUTDIR [MARKER_FILE]

Writes into OUTDIR:
  cases.txt   "<file> <any|pickle|torch>" per readable file; beside each file <file>.ref, the canonical dump
              of what Python holds (one line per value, bit-exact hex for floats and tensor bytes) that the C
              test reproduces from its own reading.
  errors.txt  "<file> <any|pickle|torch> <text the error must contain>" per file the reader must refuse.
MARKER_FILE is the path the hostile pickles would create if anything ran them (the test checks it does not
exist afterwards).
"""
import collections
import io
import os
import pickle
import re
import struct
import sys
import zipfile

import numpy as np
import torch

out = sys.argv[1]
marker = sys.argv[2] if len(sys.argv) > 2 else os.path.join(out, "PWNED")
os.makedirs(out, exist_ok=True)
cases = []
errors = []

# ------------------------------------------------------------------------------------------- canonical dump


def tensor_raw(t):
    t = t.detach().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().tobytes()
    return t.numpy().tobytes()


def canon(v, d, lines):
    ind = "  " * d
    if v is None:
        lines.append(ind + "none")
    elif isinstance(v, (bool, np.bool_)):
        lines.append("%sbool %d" % (ind, int(bool(v))))
    elif isinstance(v, (int, np.integer)):
        v = int(v)
        if -(2**63) <= v < 2**63:
            lines.append("%sint %d" % (ind, v))
        else:
            lines.append("%sbigint %s" % (ind, pickle.encode_long(v).hex()))
    elif isinstance(v, (float, np.floating)):
        lines.append("%sfloat %s" % (ind, struct.pack(">d", float(v)).hex()))
    elif isinstance(v, str):
        lines.append("%sstr %s" % (ind, v.encode("utf-8").hex()))
    elif isinstance(v, (bytes, bytearray)):
        lines.append("%sbytes %s" % (ind, bytes(v).hex()))
    elif isinstance(v, (list, tuple, set, frozenset)):
        kind = "list" if isinstance(v, list) else "tuple" if isinstance(v, tuple) else "set"
        lines.append("%s%s %d" % (ind, kind, len(v)))
        for x in v:
            canon(x, d + 1, lines)
    elif isinstance(v, dict):
        lines.append("%sdict %d" % (ind, len(v)))
        for k, x in v.items():
            canon(k, d + 1, lines)
            canon(x, d + 1, lines)
    elif torch.is_tensor(v):
        dt = str(v.dtype).replace("torch.", "")
        shape = ",".join(str(s) for s in v.shape)
        f32 = v.detach().to(torch.float32).contiguous().numpy().tobytes()
        lines.append("%stensor %s [%s] %s f32 %s" % (ind, dt, shape, tensor_raw(v).hex(), f32.hex()))
    elif isinstance(v, np.ndarray):
        le = np.ascontiguousarray(v).astype(v.dtype.newbyteorder("<"))
        shape = ",".join(str(s) for s in v.shape)
        f32 = np.ascontiguousarray(v.astype(np.float32)).tobytes()
        lines.append("%sndarray %s [%s] %s f32 %s" % (ind, v.dtype.name, shape, le.tobytes().hex(), f32.hex()))
    else:
        raise TypeError(type(v))


def write(name, data, obj, expect="any"):
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)
    lines = []
    canon(obj, 0, lines)
    with open(os.path.join(out, name + ".ref"), "w") as f:
        f.write("\n".join(lines) + "\n")
    cases.append("%s %s" % (name, expect))


def write_bad(name, data, expect, text):
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)
    errors.append("%s %s %s" % (name, expect, text))


def tsave(obj, legacy=False, protocol=2):
    b = io.BytesIO()
    torch.save(obj, b, _use_new_zipfile_serialization=not legacy, pickle_protocol=protocol)
    return b.getvalue()


# ----------------------------------------------------------------------------------------------- contents

g = torch.Generator().manual_seed(1234)


def dfm_meta(dt):
    return {
        "video_latents": torch.randn(1, 4, 2, 3, 5, generator=g).to(dt),
        "text_embeddings": torch.randn(1, 7, 16, generator=g).to(dt),
        "first_frame": (np.arange(4 * 6 * 3) % 251).astype(np.uint8).reshape(4, 6, 3),
        "num_frames": 9,
        "original_filename": "clip_0001.mp4",
        "original_video_path": "/data/videos/clip_0001.mp4",
        "caption": "a cat on a mat \u2014 \u00fcn\u00efc\u00f6d\u00e9 \u2713",
        "is_image": False,
        "deterministic_latents": True,
        "metadata": {
            "fps": 16.0,
            "size": (6, 4),
            "duration": 0.5625,
            "none": None,
            "nested": {"deep": [1, 2.5, "x", b"raw\x00bytes"], "neg": -123456789012},
        },
    }


def all_dtypes():
    base = torch.arange(-5, 7).reshape(3, 4)
    return {
        "f32": (base * 0.37).float(),
        "f16": (base * 0.37).half(),
        "bf16": (base * 0.37).bfloat16(),
        "f64": base.double() / 3,
        "i64": base * 10**12,
        "i32": base.int() * 100000,
        "i16": base.short() * 1000,
        "i8": base.to(torch.int8),
        "u8": (base + 5).to(torch.uint8) * 20,
        "bool": base % 3 == 0,
    }


def views():
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    b16 = base.bfloat16()
    return {
        "base": base,
        "T": base.t(),
        "rows": base[1:],
        "cols": base[:, ::2],
        "block": base[1:3, 2:5].t(),
        "elem": base[2, 3],
        "expand": torch.arange(3.0).expand(4, 3),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 3),
        "bf16_view": b16[1:, ::2],
        "i64_T": torch.arange(6).reshape(2, 3).t(),
        "grad": torch.ones(2, 2, requires_grad=True),
        "param": torch.nn.Parameter(torch.full((3,), 0.25)),
    }


def numpy_things():
    a = np.arange(12, dtype=np.float32).reshape(3, 4) * 0.5
    return {
        "u8": (np.arange(4 * 6 * 3) % 251).astype(np.uint8).reshape(4, 6, 3),
        "f32": a,
        "fortran": np.asfortranarray(a),
        "strided": a[:, ::2],
        "T": a.T,
        "be": np.arange(5, dtype=">f4") * 1.25,
        "be_i8": np.arange(3, dtype=">i8") - 1,
        "zero_d": np.array(2.5),
        "f16": np.linspace(-2, 2, 7).astype(np.float16),
        "f64": np.linspace(-1, 1, 5),
        "bool": np.array([True, False, True]),
        "i8": np.arange(-3, 3, dtype=np.int8),
        "u16": np.arange(4, dtype=np.uint16) * 1000,
        "i64": np.arange(4, dtype=np.int64) * 10**15,
        "u64": np.array([2**64 - 1, 3], dtype=np.uint64),
        "empty": np.zeros((0, 2), np.float32),
        "scalars": [np.float32(0.5), np.int64(-7), np.bool_(True), np.float64(1e300), np.uint8(200),
                    np.float16(1.5), np.uint64(2**64 - 1), np.int32(-2**31)],
    }


def plain_things():
    shared = [1, 2]
    return {
        "od": collections.OrderedDict([("b", 1), ("a", 2)]),
        "set": {3, 1, 2},
        "fs": frozenset({"x"}),
        "ba": bytearray(b"\x00\xff"),
        "eb": b"",
        "bytes": bytes(range(256)),
        "big": 1 << 70,
        "nbig": -(1 << 80),
        "i64max": 2**63 - 1,
        "i64min": -(2**63),
        "over": 2**63,
        "floats": [0.0, -0.0, float("inf"), float("-inf"), 1e-310, float("nan"), 0.1],
        "ints": [0, 1, 255, 256, 65535, 65536, -1, -(2**31), 2**31, 2**32],
        5: "int key",
        (1, "a"): "tuple key",
        None: "none key",
        "long_str": "x" * 300,
        "s1": shared,
        "s2": shared,
        "long_list": list(range(2500)),
        "big_dict": {"k%d" % i: i for i in range(1200)},
        "empty": [(), [], {}, set(), ""],
        "nested": [[[[["deep"]]]]],
    }


# ------------------------------------------------------------------------------------------------ readable

for dt, tag in [(torch.bfloat16, "bf16"), (torch.float16, "f16"), (torch.float32, "f32")]:
    protos = [2, 3, 4, 5] if tag == "bf16" else [4]
    for p in protos:
        m = dfm_meta(dt)
        write("meta_%s_p%d.meta" % (tag, p), pickle.dumps(m, protocol=p), m)
m = dfm_meta(torch.bfloat16)
write("meta_bf16_zip.meta", tsave(m), m, "torch")
write("meta_bf16_zip_p4.meta", tsave(m, protocol=4), m, "torch")
write("meta_bf16_legacy.meta", tsave(m, legacy=True), m, "torch")
write("meta_bf16_legacy_p5.meta", tsave(m, legacy=True, protocol=5), m, "any")

for name, make in [("dtypes", all_dtypes), ("views", views)]:
    v = make()
    for p in [2, 5]:
        write("%s_p%d.pickle" % (name, p), pickle.dumps(v, protocol=p), v, "pickle")
    write("%s_zip.pth" % name, tsave(v), v, "torch")
    write("%s_legacy.pth" % name, tsave(v, legacy=True), v, "torch")

v = numpy_things()
for p in [2, 3, 4, 5]:
    write("numpy_p%d.pickle" % p, pickle.dumps(v, protocol=p), v, "pickle")
v = plain_things()
for p in [2, 3, 4, 5]:
    write("plain_p%d.pickle" % p, pickle.dumps(v, protocol=p), v, "pickle")
write("plain_zip.pth", tsave(v), v, "torch")

# Energon parts: <key>.pth is torch.save of a tensor into bytes (zip), <key>.pickle is pickle.dumps of a tensor.
lat = torch.randn(4, 2, 3, 5, generator=g).bfloat16()
txt = torch.randn(7, 16, generator=g).bfloat16()
write("sample.pth", tsave(lat), lat, "torch")
write("sample_legacy.pth", tsave(lat, legacy=True), lat, "torch")
write("sample.pickle", pickle.dumps(txt), txt, "pickle")
write("sample_p2.pickle", pickle.dumps(txt, protocol=2), txt, "pickle")
nested = {"video_latents_info": 1, "a": [{"b": {"video_latents": torch.arange(3.0)}}]}
write("nested_find.pickle", pickle.dumps(nested), nested, "pickle")
# a pickled tensor whose storage bytes are a zip archive (torch.load accepts either inside _load_from_bytes)


class Reduce:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


st = torch.arange(6, dtype=torch.float32)
zip_storage = Reduce(torch.storage._load_from_bytes, (tsave(st.storage()),))
write("zip_inside_pickle.pickle",
      pickle.dumps(Reduce(torch._utils._rebuild_tensor_v2,
                          (zip_storage, 1, (2, 2), (1, 2), False, collections.OrderedDict())), protocol=4),
      torch.as_strided(st, (2, 2), (1, 2), 1), "pickle")



def nest_storage(levels):
    """A storage inside `levels` torch.save streams, each one's object being _load_from_bytes(the next)."""
    inner = Reduce(torch.storage._load_from_bytes, (tsave(torch.arange(4, dtype=torch.int32).storage(), legacy=True),))
    for _ in range(levels - 1):
        inner = Reduce(torch.storage._load_from_bytes, (tsave(inner, legacy=True),))
    return Reduce(torch._utils._rebuild_tensor_v2, (inner, 1, (3,), (1,), False, collections.OrderedDict()))


write("nested_3.pickle", pickle.dumps(nest_storage(3), protocol=4), torch.arange(1, 4, dtype=torch.int32), "pickle")

# ------------------------------------------------------------------------------------------------ hostile

cmd = "echo pwned > %s" % marker
write_bad("evil_posix_system.pickle", pickle.dumps(Reduce(os.system, (cmd,)), protocol=2), "pickle", "posix.system")
c = cmd.encode()
write_bad("evil_os_system.pickle", b"\x80\x02cos\nsystem\nX" + struct.pack("<I", len(c)) + c + b"\x85R.", "any",
          "os.system")
write_bad("evil_eval.pickle", pickle.dumps(Reduce(eval, ("__import__('os').system(%r)" % cmd,)), protocol=4),
          "pickle", "builtins.eval")
write_bad("evil_getattr.pickle", pickle.dumps(Reduce(getattr, (Reduce(__import__, ("os",)), "system")), protocol=5), "any", "builtins.getattr")
import subprocess  # noqa: E402

evil_dict = {"x": torch.zeros(2), "y": Reduce(subprocess.check_call, (["sh", "-c", cmd],))}
# protocol 2 writes Python 2's module names: subprocess.check_call appears as commands.check_call
write_bad("evil_zip.pth", tsave(evil_dict), "torch", "commands.check_call")
write_bad("evil_zip_p4.pth", tsave(evil_dict, protocol=4), "torch", "subprocess.check_call")
write_bad("evil_legacy.pth", tsave(evil_dict, legacy=True), "torch", "commands.check_call")
nested = Reduce(torch.storage._load_from_bytes, (tsave(Reduce(os.system, (cmd,)), legacy=True),))
write_bad("evil_nested.pickle", pickle.dumps(nested, protocol=4), "pickle", "posix.system")
write_bad("evil_inst.pickle", b"\x80\x02(ios\nsystem\nX\x02\x00\x00\x00idtp0\n.", "pickle", "os.system")
write_bad("object_array.pickle", pickle.dumps(np.array([1, "a"], dtype=object), protocol=4), "pickle",
          "not supported")
oob = pickle.dumps(np.arange(4.0), protocol=5, buffer_callback=lambda b: False)
write_bad("oob_buffer.pickle", oob, "pickle", "NEXT_BUFFER")
write_bad("nested_5.pickle", pickle.dumps(nest_storage(5), protocol=4), "pickle", "nested more than 4 deep")
write_bad("persid_in_pickle.pickle", b"\x80\x02X\x01\x00\x00\x00aQ.", "pickle", "persistent id")

# ------------------------------------------------------------------------------------------------ broken


def rebuild(storage_tensor, offset, size, stride):
    return Reduce(torch._utils._rebuild_tensor_v2,
                  (storage_tensor.storage(), offset, size, stride, False, collections.OrderedDict()))


four = torch.zeros(4)
write_bad("short_view.pickle", pickle.dumps(rebuild(four, 0, (10,), (1,)), protocol=4), "pickle",
          "reads element 9 of a storage of 4")
write_bad("offset_view.pickle", pickle.dumps(rebuild(four, 3, (2,), (1,)), protocol=4), "pickle",
          "reads element 4 of a storage of 4")
write_bad("absurd_size.pickle", pickle.dumps(rebuild(four, 0, (2**40, 2**40), (0, 0)), protocol=4), "pickle",
          "absurd size")
write_bad("huge_view.pickle", pickle.dumps(rebuild(four, 0, (2**20, 2**20), (2**20, 1)), protocol=4), "pickle",
          "of a storage of 4")
write_bad("stride_overflow.pickle", pickle.dumps(rebuild(four, 0, (3,), (2**62,)), protocol=4), "pickle",
          "overflow")
write_bad("negative_stride.pickle", pickle.dumps(rebuild(four, 3, (2,), (-1,)), protocol=4), "pickle",
          "negative stride")
write_bad("expand_bomb.pickle", pickle.dumps(rebuild(four, 0, (2**20, 2**20), (0, 0)), protocol=4), "pickle",
          "exceeds")

t37 = {"t": torch.arange(37, dtype=torch.float32)}
huge = b"\x8a\x08" + (2**60).to_bytes(8, "little")
zb = tsave(t37)
zf = zipfile.ZipFile(io.BytesIO(zb))
pre = zf.namelist()[0].split("/")[0]


def rezip(replace):
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w", zipfile.ZIP_STORED) as w:
        for n in zf.namelist():
            w.writestr(n, replace.get(n, zf.read(n)))
        for n in replace:
            if n not in zf.namelist():
                w.writestr(n, replace[n])
    return b.getvalue()


# the same archive rewritten by Python's zipfile: deflated entries, and entries with data descriptors (a stream)
b = io.BytesIO()
with zipfile.ZipFile(b, "w", zipfile.ZIP_DEFLATED) as w:
    for n in zf.namelist():
        w.writestr(n, zf.read(n))
write("rezip_deflated.pth", b.getvalue(), t37, "torch")


class Unseekable(io.RawIOBase):
    def __init__(self):
        self.buf = bytearray()

    def writable(self):
        return True

    def write(self, data):
        self.buf += data
        return len(data)


u = Unseekable()
with zipfile.ZipFile(u, "w", zipfile.ZIP_STORED) as w:
    for n in zf.namelist():
        with w.open(n, "w") as e:
            e.write(zf.read(n))
assert bytes(u.buf).count(b"PK\x07\x08") >= 1  # data descriptors
write("rezip_stream.pth", bytes(u.buf), t37, "torch")

pkl = zf.read(pre + "/data.pkl")
assert pkl.count(b"cpuq\x06K%") == 1, pkl
write_bad("numel_2_60_zip.pth", rezip({pre + "/data.pkl": pkl.replace(b"cpuq\x06K%", b"cpuq\x06" + huge)}),
          "torch", "element count")
write_bad("short_storage_zip.pth", rezip({pre + "/data/0": zf.read(pre + "/data/0")[:100]}), "torch",
          "holds 100 bytes but storage")
write_bad("big_endian_zip.pth", rezip({pre + "/byteorder": b"big"}), "torch", "big-endian")
write_bad("no_data_pkl.pth", rezip({pre + "/data.pkl": b""}).replace(b"/data.pkl", b"/data.pkX"), "torch",
          "without <name>/data.pkl")
evil_pkl = pickle.dumps(Reduce(os.system, (cmd,)), protocol=2)
write_bad("evil_data_pkl.pth", rezip({pre + "/data.pkl": evil_pkl}), "torch", "posix.system")
lb = tsave(t37, legacy=True)
assert lb.count(b"cpuq\x06K%") == 1, lb
write_bad("numel_2_60_legacy.pth", lb.replace(b"cpuq\x06K%", b"cpuq\x06" + huge), "torch", "element count")
write_bad("short_storage_legacy.pth", lb[:-10], "torch", "truncated: storage")
assert lb.count(b"little_endianq\x02\x88") == 1
write_bad("big_endian_legacy.pth", lb.replace(b"little_endianq\x02\x88", b"little_endianq\x02\x89"), "torch",
          "big-endian")
# legacy storage views (view_metadata (key, offset, size), written by old torch): tensor [5] on elements 2..6
assert lb.count(b"K%Ntq\x07QK\x00K%\x85") == 1, lb
view = b"X\x01\x00\x00\x00vK\x02K\x05\x87"
write("legacy_view.pth", lb.replace(b"K%Ntq\x07QK\x00K%\x85", b"K%" + view + b"tq\x07QK\x00K\x05\x85"),
      {"t": t37["t"][2:7]}, "torch")
bad_view = b"X\x01\x00\x00\x00vK\x23K\x05\x87"
write_bad("legacy_view_outside.pth", lb.replace(b"K%Ntq\x07QK\x00K%\x85", b"K%" + bad_view + b"tq\x07QK\x00K\x05\x85"),
          "torch", "lies outside storage")
write_bad("legacy_as_pickle.meta", lb, "pickle", "not a plain pickle")
write_bad("pickle_as_torch.pth", pickle.dumps({"a": 1}), "torch", "not a torch.save file")
write_bad("not_zip.pth", b"PK\x03\x04garbage", "torch", "not a readable zip archive")

with open(os.path.join(out, "cases.txt"), "w") as f:
    f.write("\n".join(cases) + "\n")
with open(os.path.join(out, "errors.txt"), "w") as f:
    f.write("\n".join(errors) + "\n")
print("%d readable and %d refused fixtures in %s" % (len(cases), len(errors), out))
