#!/usr/bin/python3
"""Cross-check of dfm's CPU kernels against PyTorch (Debian python3-torch 1.13) and against diffusers'
embedding helpers, re-typed below from diffusers' embeddings.py (diffusers is not installed here).

Optional and standalone: not part of `make test`. Run from anywhere:
    /usr/bin/python3 tests/ref/kernels_ref.py
It compiles the kernel sources into a temporary shared library, calls them through ctypes on random inputs,
and prints PASS/FAIL lines like tests/test.h; the exit status is 1 if any check failed.
"""
import ctypes
import math
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SRCS = ["norm.c", "activation.c", "adaln.c", "patch.c", "embed.c", "optim.c"]
failed = 0


def check(ok, msg):
    global failed
    print(("PASS " if ok else "FAIL ") + msg, flush=True)
    failed += 0 if ok else 1


def rel(a, b):
    """max |a - b| / max |b| (norm-wise relative error, as test_rel_err in tests/test.h)"""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def build():
    tmp = tempfile.mkdtemp(prefix="dfm_ref_")
    so = os.path.join(tmp, "libdfmk.so")
    cmd = ["cc", "-std=c11", "-D_GNU_SOURCE", "-O3", "-march=native", "-fopenmp", "-fPIC", "-shared",
           "-I" + os.path.join(ROOT, "include")] + [os.path.join(ROOT, "src", "kernels", s) for s in SRCS] + \
          ["-o", so, "-lm"]
    subprocess.check_call(cmd)
    return ctypes.CDLL(so)


lib = build()
P = ctypes.POINTER(ctypes.c_float)
I = ctypes.c_int
Z = ctypes.c_size_t
Fl = ctypes.c_float


def ptr(a):
    if a is None:
        return None
    assert a.dtype == np.float32 and a.flags.c_contiguous
    return a.ctypes.data_as(P)


def sig(name, *args, res=None):
    f = getattr(lib, name)
    f.argtypes = list(args)
    f.restype = res


sig("gelu_forward", P, P, Z)
sig("gelu_backward", P, P, P, Z)
sig("silu_forward", P, P, Z)
sig("silu_backward", P, P, P, Z)
sig("layernorm_forward", P, P, P, P, P, P, I, I, Fl)
sig("layernorm_backward", P, P, P, P, P, P, P, P, I, I)
sig("rmsnorm_forward", P, P, P, P, I, I, Fl)
sig("rmsnorm_backward", P, P, P, P, P, P, I, I)
sig("modulate_forward", P, P, P, P, I, I, I, I)
sig("patchify_forward", P, P, I, I, I, I, I)
sig("unpatchify_forward", P, P, I, I, I, I, I)
sig("timestep_embedding", P, P, I, I, Fl, Fl, I)
sig("pos_embed_2d_sincos", P, I, I, I, Fl, Fl)
sig("adamw_step", P, P, P, P, Z, Fl, Fl, Fl, Fl, Fl, ctypes.c_long)
sig("clip_grad_norm", P, Z, ctypes.c_double, res=ctypes.c_double)

rng = np.random.default_rng()
seed = int(rng.integers(1 << 31))
rng = np.random.default_rng(seed)
torch.manual_seed(seed)
print(f"# seed {seed}")


def randn(*shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


# ---- activations ------------------------------------------------------------------------------------
for name, tf in [("gelu", lambda x: F.gelu(x, approximate="tanh")), ("silu", F.silu)]:
    x = randn(200003, scale=3.0)
    R = randn(200003)
    out = np.empty_like(x)
    getattr(lib, name + "_forward")(ptr(out), ptr(x), x.size)
    xt = torch.from_numpy(x).requires_grad_(True)
    yt = tf(xt)
    yt.backward(torch.from_numpy(R))
    dx = np.zeros_like(x)
    getattr(lib, name + "_backward")(ptr(dx), ptr(R), ptr(x), x.size)
    # torch's float 0.5 x (1 + tanh u) loses all relative accuracy for x < -4 (1 + tanh cancels; absolute error
    # ~|x| 3e-8), so compare element-wise relative to max(|ref|, 1)
    ref = yt.detach().numpy()
    ew = float(np.max(np.abs(out - ref) / np.maximum(np.abs(ref), 1.0)))
    check(rel(out, ref) < 1e-6 and ew < 1e-6,
          f"{name}_forward vs torch: norm-wise {rel(out, ref):.2e}, element-wise (relative to max(|ref|, 1)) {ew:.2e}")
    check(rel(dx, xt.grad.numpy()) < 1e-5, f"{name}_backward vs torch autograd: {rel(dx, xt.grad.numpy()):.2e}")

# ---- layernorm / rmsnorm ----------------------------------------------------------------------------
for N, C, affine in [(5, 33, True), (130, 384, True), (64, 1152, False)]:
    x = randn(N, C, scale=2.0) + 1.5
    w = randn(C) if affine else None
    b = randn(C) if affine else None
    R = randn(N, C)
    out, mean, rstd = np.empty_like(x), np.empty(N, np.float32), np.empty(N, np.float32)
    lib.layernorm_forward(ptr(out), ptr(mean), ptr(rstd), ptr(x), ptr(w), ptr(b), N, C, 1e-6)
    xt = torch.from_numpy(x).requires_grad_(True)
    wt = torch.from_numpy(w).requires_grad_(True) if affine else None
    bt = torch.from_numpy(b).requires_grad_(True) if affine else None
    yt = F.layer_norm(xt, (C,), wt, bt, 1e-6)
    yt.backward(torch.from_numpy(R))
    dx, dw, db = np.zeros_like(x), np.zeros(C, np.float32), np.zeros(C, np.float32)
    lib.layernorm_backward(ptr(dx), ptr(dw) if affine else None, ptr(db) if affine else None, ptr(R), ptr(x), ptr(w),
                           ptr(mean), ptr(rstd), N, C)
    errs = [rel(out, yt.detach().numpy()), rel(dx, xt.grad.numpy())]
    if affine:
        errs += [rel(dw, wt.grad.numpy()), rel(db, bt.grad.numpy())]
    check(max(errs) < 1e-5, f"layernorm N={N} C={C} affine={affine} vs torch: out/dx/dw/db " +
          " ".join(f"{e:.2e}" for e in errs))

    w = randn(C)
    out = np.empty_like(x)
    lib.rmsnorm_forward(ptr(out), ptr(rstd), ptr(x), ptr(w), N, C, 1e-6)
    xt = torch.from_numpy(x).requires_grad_(True)
    wt = torch.from_numpy(w).requires_grad_(True)
    yt = xt * torch.rsqrt(xt.pow(2).mean(-1, keepdim=True) + 1e-6) * wt  # torch 1.13 has no nn.RMSNorm
    yt.backward(torch.from_numpy(R))
    dx, dw = np.zeros_like(x), np.zeros(C, np.float32)
    lib.rmsnorm_backward(ptr(dx), ptr(dw), ptr(R), ptr(x), ptr(w), ptr(rstd), N, C)
    errs = [rel(out, yt.detach().numpy()), rel(dx, xt.grad.numpy()), rel(dw, wt.grad.numpy())]
    check(max(errs) < 1e-5, f"rmsnorm N={N} C={C} vs torch: out/dx/dw " + " ".join(f"{e:.2e}" for e in errs))

# ---- adaLN modulate (DiT: x * (1 + scale[:, None]) + shift[:, None]) -----------------------------------
B, T, C = 3, 17, 48
x, mod = randn(B, T, C), randn(B, 6 * C)
out = np.empty_like(x)
# shift and scale point into the [B, 6C] modulation rows (offsets 0 and C), as in a DiT block
lib.modulate_forward(ptr(out), ptr(x), ptr(mod), ctypes.cast(mod.ctypes.data + 4 * C, P), B, T, C, 6 * C)
mt = torch.from_numpy(mod)
ref = torch.from_numpy(x) * (1 + mt[:, None, C:2 * C]) + mt[:, None, :C]
check(rel(out, ref.numpy()) < 1e-6, f"modulate_forward vs DiT's modulate: {rel(out, ref.numpy()):.2e}")

# ---- patches ----------------------------------------------------------------------------------------
B, C, H, W, p, d = 2, 4, 16, 8, 2, 24
img, wconv = randn(B, C, H, W), randn(d, C, p, p)
tok = np.empty((B, (H // p) * (W // p), C * p * p), np.float32)
lib.patchify_forward(ptr(tok), ptr(img), B, C, H, W, p)
conv = F.conv2d(torch.from_numpy(img), torch.from_numpy(wconv), stride=p).flatten(2).transpose(1, 2)
check(rel(tok @ wconv.reshape(d, -1).T, conv.numpy()) < 1e-5,
      f"patchify_forward @ conv weight == Conv2d(stride=p) tokens: {rel(tok @ wconv.reshape(d, -1).T, conv.numpy()):.2e}")
h, w = H // p, W // p
tok2 = randn(B, h * w, p * p * C)
img2 = np.empty((B, C, H, W), np.float32)
lib.unpatchify_forward(ptr(img2), ptr(tok2), B, C, H, W, p)
ref = torch.einsum("nhwpqc->nchpwq", torch.from_numpy(tok2).reshape(B, h, w, p, p, C)).reshape(B, C, h * p, w * p)
check(np.array_equal(img2, ref.numpy()), "unpatchify_forward == DiT's unpatchify (einsum nhwpqc->nchpwq): exact")


# ---- embeddings (diffusers' functions, re-typed) ----------------------------------------------------
def get_timestep_embedding(timesteps, embedding_dim, flip_sin_to_cos=False, downscale_freq_shift=1, scale=1,
                           max_period=10000):
    half_dim = embedding_dim // 2
    exponent = -math.log(max_period) * torch.arange(start=0, end=half_dim, dtype=torch.float32)
    exponent = exponent / (half_dim - downscale_freq_shift)
    emb = torch.exp(exponent)
    emb = timesteps[:, None].float() * emb[None, :]
    emb = scale * emb
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half_dim:], emb[:, :half_dim]], dim=-1)
    if embedding_dim % 2 == 1:
        emb = torch.nn.functional.pad(emb, (0, 1, 0, 0))
    return emb


for dim, flip, shift in [(256, 1, 1.0), (33, 0, 1.0), (64, 1, 0.0)]:
    t = np.concatenate([rng.integers(0, 1000, 30).astype(np.float32), (rng.random(30) * 1000).astype(np.float32)])
    out = np.empty((t.size, dim), np.float32)
    lib.timestep_embedding(ptr(out), ptr(t), t.size, dim, 10000.0, shift, flip)
    ref = get_timestep_embedding(torch.from_numpy(t), dim, bool(flip), shift).numpy()
    check(rel(out, ref) < 1e-6, f"timestep_embedding dim={dim} flip={flip} shift={shift} vs diffusers: "
                                f"{rel(out, ref):.2e} (max abs {np.max(np.abs(out - ref)):.2e})")


def get_1d_sincos_pos_embed_from_grid(embed_dim, pos):
    omega = np.arange(embed_dim // 2, dtype=np.float64)
    omega /= embed_dim / 2.0
    omega = 1.0 / 10000 ** omega
    pos = pos.reshape(-1)
    out = np.einsum("m,d->md", pos, omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def get_2d_sincos_pos_embed(embed_dim, grid_size, interpolation_scale=1.0, base_size=16):
    if isinstance(grid_size, int):
        grid_size = (grid_size, grid_size)
    grid_h = np.arange(grid_size[0], dtype=np.float32) / (grid_size[0] / base_size) / interpolation_scale
    grid_w = np.arange(grid_size[1], dtype=np.float32) / (grid_size[1] / base_size) / interpolation_scale
    grid = np.meshgrid(grid_w, grid_h)  # here w goes first
    grid = np.stack(grid, axis=0)
    grid = grid.reshape([2, 1, grid_size[1], grid_size[0]])
    emb_h = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid[0])
    emb_w = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid[1])
    return np.concatenate([emb_h, emb_w], axis=1)


for dim, g, base, interp in [(384, 16, 16, 1.0), (1152, 32, 16, 1.0), (64, 8, 4, 2.0)]:
    out = np.empty((g * g, dim), np.float32)
    lib.pos_embed_2d_sincos(ptr(out), dim, g, g, base, interp)
    ref = get_2d_sincos_pos_embed(dim, g, interp, base).astype(np.float32)
    check(np.max(np.abs(out - ref)) < 1e-6,
          f"pos_embed_2d_sincos dim={dim} grid={g} base={base} interp={interp} vs diffusers: max abs "
          f"{np.max(np.abs(out - ref)):.2e}")

# ---- optimiser --------------------------------------------------------------------------------------
n = 100003
lr, b1, b2, eps, wd = 1e-3, 0.9, 0.999, 1e-8, 0.01
# torch sees the same float32-rounded hyper-parameters the C interface receives
f32 = lambda v: float(np.float32(v))
p0 = randn(n)
pt = torch.nn.Parameter(torch.from_numpy(p0.copy()))
opt = torch.optim.AdamW([pt], lr=f32(lr), betas=(f32(b1), f32(b2)), eps=f32(eps), weight_decay=f32(wd), foreach=False)
pc, m, v = p0.copy(), np.zeros(n, np.float32), np.zeros(n, np.float32)
for step in range(1, 6):
    g = randn(n, scale=1e-3 if step == 3 else 1.0)
    pt.grad = torch.from_numpy(g.copy())
    opt.step()
    lib.adamw_step(ptr(pc), ptr(g), ptr(m), ptr(v), n, lr, b1, b2, eps, wd, step)
st = opt.state[pt]
eu = rel(pc - p0, pt.detach().numpy() - p0)
check(eu < 1e-4 and rel(m, st["exp_avg"].numpy()) < 1e-6 and rel(v, st["exp_avg_sq"].numpy()) < 1e-6,
      f"adamw_step 5 steps vs torch.optim.AdamW(foreach=False): update {eu:.2e}, m "
      f"{rel(m, st['exp_avg'].numpy()):.2e}, v {rel(v, st['exp_avg_sq'].numpy()):.2e}, max param diff "
      f"{np.max(np.abs(pc - pt.detach().numpy())):.1e}")

g = randn(n, scale=0.01)
gt = torch.nn.Parameter(torch.zeros(n))
gt.grad = torch.from_numpy(g.copy())
tn = float(torch.nn.utils.clip_grad_norm_([gt], 1.0))
cn = lib.clip_grad_norm(ptr(g), n, 1.0)
check(abs(cn - tn) / tn < 1e-6 and rel(g, gt.grad.numpy()) < 1e-6,
      f"clip_grad_norm vs torch.nn.utils.clip_grad_norm_: norm {cn:.6f} vs {tn:.6f}, grads {rel(g, gt.grad.numpy()):.2e}")

print(f"# {failed} failed")
sys.exit(1 if failed else 0)
