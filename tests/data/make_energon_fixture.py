#!/usr/bin/python3
"""An Energon dataset written the way Python users write them: shards by tarfile (PAX by default, or GNU),
.tar.idx computed as Energon's prepare does, and .nv-meta written by hand.

usage: make_energon_fixture.py OUTDIR pax|gnu
Samples: key (some in a directory with a name > 100 bytes), parts x.npy (float32 [2, 3]), cls, json.
OUTDIR/expected.txt: one line per sample in shard order: key, label, sum of x.
"""
import io
import json
import os
import re
import struct
import sys
import tarfile

import numpy as np

split_name_re = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
skip_meta_re = re.compile(r"__[^/]*__($|/)")


def main():
    out, flavour = sys.argv[1], sys.argv[2]
    fmt = tarfile.PAX_FORMAT if flavour == "pax" else tarfile.GNU_FORMAT
    os.makedirs(out + "/shards", exist_ok=True)
    os.makedirs(out + "/.nv-meta", exist_ok=True)
    long_dir = "d" * 90 + "/" + "e" * 40
    counts = {}
    expected = []
    k = 0
    for s in range(3):
        name = f"shards/data_{s}.tar"
        with tarfile.open(f"{out}/{name}", "w", format=fmt) as tar:
            for j in range(4 + s):
                key = f"{long_dir}/k{k:03d}" if k % 2 else f"k{k:03d}"
                x = (np.arange(6, dtype=np.float32).reshape(2, 3) + k)
                buf = io.BytesIO()
                np.save(buf, x)
                parts = [("x.npy", buf.getvalue()), ("cls", str(k % 10).encode()),
                         ("json", json.dumps({"k": k}).encode())]
                for part, data in parts:
                    ti = tarfile.TarInfo(f"{key}.{part}")
                    ti.size = len(data)
                    if fmt == tarfile.PAX_FORMAT and k % 3 == 0:
                        ti.pax_headers = {"comment": "x"}  # a PAX record even for a short name
                    tar.addfile(ti, io.BytesIO(data))
                expected.append(f"{key}\t{k % 10}\t{float(x.sum())}")
                k += 1
        # .tar.idx as Energon computes it
        offs = []
        with tarfile.open(f"{out}/{name}", "r") as tar:
            last = None
            for m in tar:
                if not m.isreg() or skip_meta_re.match(m.name):
                    continue
                mm = split_name_re.match(m.name)
                if mm and mm.group(1) != last:
                    offs.append(m.offset)
                    last = mm.group(1)
            offs.append(tar.offset)
        with open(f"{out}/{name}.idx", "wb") as f:
            f.write(struct.pack("<%dQ" % len(offs), *offs))
        counts[name] = len(offs) - 1
    with open(out + "/.nv-meta/dataset.yaml", "w") as f:
        f.write("__module__: megatron.energon\n__class__: CrudeWebdataset\n")
    with open(out + "/.nv-meta/split.yaml", "w") as f:
        f.write("split_parts:\n  train:\n  - shards/data_{0..2}.tar\n  val: []\nexclude: []\n")
    with open(out + "/.nv-meta/.info.json", "w") as f:
        json.dump({"energon_version": "7.0.0", "shard_counts": counts}, f)
    with open(out + "/expected.txt", "w") as f:
        f.write("\n".join(expected) + "\n")


if __name__ == "__main__":
    main()
