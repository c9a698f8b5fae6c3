#!/usr/bin/python3
"""Tar fixtures for tests/test_tar.c, written by Python's tarfile (the writer webdataset users have).

usage: make_tar_fixtures.py OUTDIR
Writes OUTDIR/pax.tar (PAX, with a global header, per-file PAX records and names > 100 bytes),
OUTDIR/gnu.tar (GNU format, ././@LongLink names) and for each OUTDIR/<name>.list with one line per
regular member: name, size, offset of its first header block (preamble included), data offset; then
OUTDIR/<name>.samples with the sample start offsets as Energon computes them, then the end of data.
"""
import io
import re
import sys
import tarfile

split_name_re = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
skip_meta_re = re.compile(r"__[^/]*__($|/)")


def members():
    long_dir = "a_rather_long_directory_name_" + "x" * 60 + "/nested_again_" + "y" * 30
    out = []
    for i in range(7):
        key = f"{long_dir}/sample{i:04d}" if i % 3 == 1 else f"sample{i:04d}"
        size = [0, 1, 511, 512, 513, 3000, 77][i]
        payload = bytes((i * 31 + k * 7) % 256 for k in range(size))
        out.append((key + ".bin", payload))
        out.append((key + ".cls", str(i % 10).encode()))
        if i == 2:
            out.append(("__meta__.txt", b"ignored"))  # not a sample part
    return out


def write(path, fmt, global_headers):
    with tarfile.open(path, "w", format=fmt, pax_headers=global_headers) as tar:
        d = tarfile.TarInfo("somedir")
        d.type = tarfile.DIRTYPE
        tar.addfile(d)  # a non-regular member: skipped by readers
        for j, (name, data) in enumerate(members()):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            ti.mtime = 1700000000
            if fmt == tarfile.PAX_FORMAT and j % 2 == 0:
                ti.pax_headers = {"comment": "forced pax record " + str(j)}
            tar.addfile(ti, io.BytesIO(data))
            if j == 5:
                s = tarfile.TarInfo("sample0002.link")
                s.type = tarfile.SYMTYPE
                s.linkname = "x" * 120  # long link name: K record (GNU) or PAX linkpath
                tar.addfile(s)


def listing(path, stem):
    with tarfile.open(path, "r") as tar, open(stem + ".list", "w") as lf, open(stem + ".samples", "w") as sf:
        last = None
        for m in tar:
            if not m.isreg():
                continue
            lf.write(f"{m.name}\t{m.size}\t{m.offset}\t{m.offset_data}\n")
            if skip_meta_re.match(m.name):
                continue
            mm = split_name_re.match(m.name)
            if mm is None:
                continue
            if mm.group(1) != last:
                sf.write(f"{m.offset}\n")
                last = mm.group(1)
        sf.write(f"{tar.offset}\n")


def main():
    out = sys.argv[1]
    write(out + "/pax.tar", tarfile.PAX_FORMAT, {"dfmglobal": "1"})
    write(out + "/gnu.tar", tarfile.GNU_FORMAT, None)
    listing(out + "/pax.tar", out + "/pax")
    listing(out + "/gnu.tar", out + "/gnu")


if __name__ == "__main__":
    main()
