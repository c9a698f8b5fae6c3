"""Wan 2.1 text-to-video transformer in PyTorch, written from the semantics of diffusers'
WanTransformer3DModel (REFERENCE.md §3): the reference dfm's C model is checked against (tests/ref/wan_ref.py,
float64) and the model dfm's benchmark times (bench/wan_torch.py, float32). Parameters are a dict of tensors
under diffusers names. Needs only torch 1.13 (no nn.RMSNorm, no scaled_dot_product_attention).
"""
import math

import torch
import torch.nn.functional as Fn


def timestep_embedding(t, dim, max_period=10000.0):
    """Sinusoid [cos, sin] with frequencies exp(-ln(max_period) i / half) (diffusers' Timesteps with
    flip_sin_to_cos=True, downscale_freq_shift=0), computed in float32 whatever the model's dtype, as diffusers
    does (a float64 sinusoid would differ from any fp32 implementation by the rounding of t * freq at t ~ 1000)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb.to(t.dtype)


def rope_split(head_dim):
    """Features per axis (frames, height, width): h = w = 2 * (head_dim // 6), t = the rest (128 -> 44/42/42)."""
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


def rope_tables(head_dim, gt, gh, gw, theta=10000.0):
    """cos and sin [gt*gh*gw, head_dim/2], one angle per interleaved pair, tokens row-major over (t, h, w).
    Angles in float64, values rounded to float32 (diffusers builds float64 tables and casts them)."""
    cos_parts, sin_parts = [], []
    for dim, n, view in zip(rope_split(head_dim), (gt, gh, gw),
                            ((gt, 1, 1), (1, gh, 1), (1, 1, gw))):
        freqs = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64)[: dim // 2] / dim)
        ang = torch.outer(torch.arange(n, dtype=torch.float64), freqs)  # [n, dim/2]
        ang = ang.view(*view, dim // 2).expand(gt, gh, gw, dim // 2)
        cos_parts.append(ang.cos().float())
        sin_parts.append(ang.sin().float())
    cos = torch.cat(cos_parts, dim=-1).reshape(gt * gh * gw, head_dim // 2)
    sin = torch.cat(sin_parts, dim=-1).reshape(gt * gh * gw, head_dim // 2)
    return cos, sin


def apply_rope(x, cos, sin):
    """x [B, N, H, D]: pair (2i, 2i+1) times e^{i angle_i} as a complex number."""
    x0, x1 = x[..., 0::2], x[..., 1::2]
    c, s = cos[None, :, None, :].to(x.dtype), sin[None, :, None, :].to(x.dtype)
    return torch.stack([x0 * c - x1 * s, x0 * s + x1 * c], dim=-1).flatten(-2)


def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def attention(q, k, v, key_valid=None):
    """q [B, Nq, H, D], k/v [B, Nk, H, D]; key_valid [B, Nk] bool or None -> [B, Nq, H*D]."""
    B, Nq, H, D = q.shape
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    s = q @ k.transpose(-1, -2) / math.sqrt(D)
    if key_valid is not None:
        s = s.masked_fill(~key_valid[:, None, None, :], float("-inf"))
    o = torch.softmax(s, dim=-1) @ v
    return o.transpose(1, 2).reshape(B, Nq, H * D)


def linear(P, name, x):
    return Fn.linear(x, P[name + ".weight"], P[name + ".bias"])


def wan_forward(P, cfg, x, t, text, text_lens=None, rope=None):
    """x [B, C, T, H, W], t [B], text [B, L, text_dim], text_lens [B] ints or None -> [B, C_out, T, H, W]."""
    L, heads, D = cfg["num_layers"], cfg["num_attention_heads"], cfg["attention_head_dim"]
    pt, ph, pw = cfg["patch_size"]
    eps, C_out = cfg["eps"], cfg["out_channels"]
    d = heads * D
    B, _, T, Hh, W = x.shape
    gt, gh, gw = T // pt, Hh // ph, W // pw
    N = gt * gh * gw
    cos, sin = rope if rope is not None else rope_tables(D, gt, gh, gw)

    h = Fn.conv3d(x, P["patch_embedding.weight"], P["patch_embedding.bias"], stride=(pt, ph, pw))
    h = h.flatten(2).transpose(1, 2)  # [B, N, d], tokens row-major over (t, h, w)

    ce = "condition_embedder."
    tsin = timestep_embedding(t, cfg["freq_dim"])
    temb = linear(P, ce + "time_embedder.linear_2", Fn.silu(linear(P, ce + "time_embedder.linear_1", tsin)))
    tproj = linear(P, ce + "time_proj", Fn.silu(temb)).view(B, 6, d)
    ctx = linear(P, ce + "text_embedder.linear_2",
                 Fn.gelu(linear(P, ce + "text_embedder.linear_1", text), approximate="tanh"))
    key_valid = None
    if text_lens is not None:
        key_valid = torch.arange(text.shape[1])[None, :] < torch.as_tensor(text_lens)[:, None]

    for l in range(L):
        pre = f"blocks.{l}."
        shift, scale, gate, c_shift, c_scale, c_gate = (P[pre + "scale_shift_table"] + tproj).chunk(6, dim=1)
        # self-attention: qk RMSNorm over all heads, then RoPE
        xm = Fn.layer_norm(h, (d,), eps=eps) * (1 + scale) + shift
        q = rms_norm(linear(P, pre + "attn1.to_q", xm), P[pre + "attn1.norm_q.weight"], eps).view(B, N, heads, D)
        k = rms_norm(linear(P, pre + "attn1.to_k", xm), P[pre + "attn1.norm_k.weight"], eps).view(B, N, heads, D)
        v = linear(P, pre + "attn1.to_v", xm).view(B, N, heads, D)
        a = attention(apply_rope(q, cos, sin), apply_rope(k, cos, sin), v)
        h = h + linear(P, pre + "attn1.to_out.0", a) * gate
        # cross-attention over the projected text: affine LayerNorm, no RoPE, no gate
        n2 = Fn.layer_norm(h, (d,), P[pre + "norm2.weight"], P[pre + "norm2.bias"], eps=eps)
        q = rms_norm(linear(P, pre + "attn2.to_q", n2), P[pre + "attn2.norm_q.weight"], eps).view(B, N, heads, D)
        k = rms_norm(linear(P, pre + "attn2.to_k", ctx), P[pre + "attn2.norm_k.weight"], eps).view(B, -1, heads, D)
        v = linear(P, pre + "attn2.to_v", ctx).view(B, -1, heads, D)
        h = h + linear(P, pre + "attn2.to_out.0", attention(q, k, v, key_valid))
        # feed-forward
        xm = Fn.layer_norm(h, (d,), eps=eps) * (1 + c_scale) + c_shift
        ff = linear(P, pre + "ffn.net.2", Fn.gelu(linear(P, pre + "ffn.net.0.proj", xm), approximate="tanh"))
        h = h + ff * c_gate

    shift, scale = (P["scale_shift_table"] + temb[:, None, :]).chunk(2, dim=1)
    h = Fn.layer_norm(h, (d,), eps=eps) * (1 + scale) + shift
    h = linear(P, "proj_out", h)  # [B, N, pt*ph*pw*C_out], C fastest
    h = h.reshape(B, gt, gh, gw, pt, ph, pw, C_out).permute(0, 7, 1, 4, 2, 5, 3, 6)
    return h.reshape(B, C_out, T, Hh, W)


def param_shapes(cfg):
    """Every parameter's diffusers name and shape, in dfm's table order."""
    L, heads, D = cfg["num_layers"], cfg["num_attention_heads"], cfg["attention_head_dim"]
    d, F, C, Co = heads * D, cfg["ffn_dim"], cfg["in_channels"], cfg["out_channels"]
    pt, ph, pw = cfg["patch_size"]
    s = {"patch_embedding.weight": (d, C, pt, ph, pw), "patch_embedding.bias": (d,)}

    def lin(name, o, i):
        s[name + ".weight"], s[name + ".bias"] = (o, i), (o,)

    ce = "condition_embedder."
    lin(ce + "time_embedder.linear_1", d, cfg["freq_dim"])
    lin(ce + "time_embedder.linear_2", d, d)
    lin(ce + "time_proj", 6 * d, d)
    lin(ce + "text_embedder.linear_1", d, cfg["text_dim"])
    lin(ce + "text_embedder.linear_2", d, d)
    for l in range(L):
        pre = f"blocks.{l}."
        for a in ("attn1", "attn2"):
            for n in ("to_q", "to_k", "to_v", "to_out.0"):
                lin(pre + a + "." + n, d, d)
            s[pre + a + ".norm_q.weight"] = s[pre + a + ".norm_k.weight"] = (d,)
        s[pre + "norm2.weight"] = s[pre + "norm2.bias"] = (d,)
        lin(pre + "ffn.net.0.proj", F, d)
        lin(pre + "ffn.net.2", d, F)
        s[pre + "scale_shift_table"] = (1, 6, d)
    s["scale_shift_table"] = (1, 2, d)
    lin("proj_out", Co * pt * ph * pw, d)
    return s
