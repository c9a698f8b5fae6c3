"""DiT in PyTorch, written from the paper (Peebles & Xie) and the semantics of diffusers'
DiTTransformer2DModel: the reference dfm's C model is checked against (tests/ref/dit_ref.py, float64) and
the model dfm's benchmark times (bench/dit_torch.py, float32). Parameters are a dict of tensors under
diffusers names, with one shared timestep/class embedder under block 0's names (as dfm keeps it).
"""
import math

import numpy as np
import torch
import torch.nn.functional as Fn


# ---- the model -------------------------------------------------------------------------------------

def timestep_embedding(t, dim, max_period=10000.0, freq_shift=1.0):
    half = dim // 2
    # in float32 whatever the model's dtype, as diffusers computes it (a float64 reference would otherwise
    # differ from any fp32 implementation by the rounding of t * freq at t ~ 1000)
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / (half - freq_shift))
    args = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(t.dtype)  # flip_sin_to_cos
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def sincos_1d(dim, pos):
    omega = np.arange(dim // 2, dtype=np.float64) / (dim / 2.0)
    omega = 1.0 / 10000 ** omega
    out = np.einsum("m,d->md", pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def pos_embed_2d(dim, grid):
    gh = np.arange(grid, dtype=np.float64)
    gw = np.arange(grid, dtype=np.float64)
    ww, hh = np.meshgrid(gw, gh)  # ww[i, j] = j (column), hh[i, j] = i (row)
    emb = np.concatenate([sincos_1d(dim // 2, ww), sincos_1d(dim // 2, hh)], axis=1)
    return torch.from_numpy(emb)


def linear(P, name, x):
    return Fn.linear(x, P[name + ".weight"], P[name + ".bias"])


def dit_forward(P, cfg, x, t, labels):
    L, d, H, p = cfg["num_layers"], cfg["hidden_size"], cfg["num_heads"], cfg["patch_size"]
    C_out, S = cfg["out_channels"], cfg["image_size"]
    g = S // p
    D = d // H
    B = x.shape[0]
    h = Fn.conv2d(x, P["pos_embed.proj.weight"], P["pos_embed.proj.bias"], stride=p)
    h = h.flatten(2).transpose(1, 2) + pos_embed_2d(d, g).to(x.dtype)[None]
    e = "transformer_blocks.0.norm1.emb."
    temb = linear(P, e + "timestep_embedder.linear_2",
                  Fn.silu(linear(P, e + "timestep_embedder.linear_1", timestep_embedding(t, cfg["freq_dim"]))))
    c = temb + P[e + "class_embedder.embedding_table.weight"][labels]
    sc = Fn.silu(c)
    for l in range(L):
        pre = f"transformer_blocks.{l}."
        mod = linear(P, pre + "norm1.linear", sc)
        sh1, sc1, g1, sh2, sc2, g2 = mod.chunk(6, dim=1)
        xm = Fn.layer_norm(h, (d,), eps=1e-6) * (1 + sc1[:, None]) + sh1[:, None]
        q, k, v = (linear(P, pre + "attn1." + n, xm).view(B, -1, H, D).transpose(1, 2) for n in ("to_q", "to_k", "to_v"))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D), dim=-1) @ v
        att = att.transpose(1, 2).reshape(B, -1, d)
        h = h + g1[:, None] * linear(P, pre + "attn1.to_out.0", att)
        xm = Fn.layer_norm(h, (d,), eps=cfg["norm_eps"]) * (1 + sc2[:, None]) + sh2[:, None]
        ff = linear(P, pre + "ff.net.2", Fn.gelu(linear(P, pre + "ff.net.0.proj", xm), approximate="tanh"))
        h = h + g2[:, None] * ff
    shift, scale = linear(P, "proj_out_1", sc).chunk(2, dim=1)
    h = Fn.layer_norm(h, (d,), eps=1e-6) * (1 + scale[:, None]) + shift[:, None]
    h = linear(P, "proj_out_2", h)
    h = h.reshape(B, g, g, p, p, C_out)
    h = torch.einsum("nhwpqc->nchpwq", h)
    return h.reshape(B, C_out, g * p, g * p)


