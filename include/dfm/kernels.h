/* dfm CPU kernels: numerical primitives over raw fp32 buffers in PyTorch dimension order.
 *
 * Conventions:
 *  - Row-major, contiguous unless a stride argument says otherwise.
 *  - Forward functions overwrite their outputs.
 *  - Backward functions ACCUMULATE (+=) into every gradient they write (inputs and parameters);
 *    any gradient pointer documented as optional may be NULL and is then skipped.
 *  - No kernel allocates memory; where a kernel needs workspace the caller passes it in.
 *  - Work is split over OpenMP threads with static schedules, so results do not depend on timing.
 */
#ifndef DFM_KERNELS_H
#define DFM_KERNELS_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- BLAS set-up ------------------------------------------------------------------------------ */
/* Configure BLAS threading to match OpenMP (call once at start-up). Returns the thread count. */
int kernels_init(void);
/* A one-line description of the BLAS in use (library, core, threading), for logs. */
const char *kernels_blas_info(void);
/* fp32 peak GFLOP/s of one core of this machine (a table of known CPUs, else FMA width x listed clock), with how
 * it was found in desc; 0 when unknown. MFU = achieved model FLOP/s / (threads x this). */
double kernels_peak_gflops_per_thread(char *desc, size_t n);

/* FLOPs counted by matmul_forward (2 M N K) and attention_forward (4 B H Nq Nk D) since start-up: checks the
 * models' closed-form FLOP counts (dit_forward_flops, wan_forward_flops) against what a forward runs. Not
 * thread-safe: the models call these kernels from one thread. */
double kernels_forward_flops(void);
void kernels_count_flops(double flops);

/* ---- Linear layer ----------------------------------------------------------------------------- */
/* out[M,N] = inp[M,K] @ weight[N,K]^T (+ bias[N] if bias != NULL) */
void matmul_forward(float *out, const float *inp, const float *weight, const float *bias, int M, int N, int K);
/* dinp[M,K] += dout @ weight; dweight[N,K] += dout^T @ inp; dbias[N] += sum_rows(dout).
 * dinp, dweight, dbias optional. */
void matmul_backward(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                     const float *weight, int M, int N, int K);

/* C[M,N] = alpha op(A) op(B) + beta C (row-major; ta, tb 'N' or 'T'), the GEMM the linear layers use. */
void kernels_sgemm(char ta, char tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
                   float beta, float *C, int ldc);

/* ---- Frozen weights (LoRA's backward, include/dfm/lora.h) --------------------------------------- */
/* While a span [lo, lo + n) of a model's gradient buffer is frozen, the kernels compute no weight or bias
 * gradient that would land in it: matmul_backward, layernorm_backward, rmsnorm_backward(_strided) and
 * embedding_backward skip such a dweight / dbias (input gradients are computed as always), and a linear's weight
 * gradient is handed to fn instead: fn(ctx, dweight, dout, inp, M, N, K) may compute what it needs from the same
 * operands (LoRA: its adapters' gradients). Not thread-safe: set and cleared by the thread that runs a model's
 * backward. n = 0 clears it. */
typedef void (*kernels_frozen_linear_fn)(void *ctx, float *dweight, const float *dout, const float *inp, int M, int N,
                                         int K);
void kernels_set_frozen(float *lo, size_t n, kernels_frozen_linear_fn fn, void *ctx);
/* 1 when p lies in the frozen span (its gradient is not wanted). */
int kernels_grad_frozen(const float *p);

/* ---- Attention -------------------------------------------------------------------------------- */
/* Fused multi-head attention with online softmax; the N x N score matrix is never stored.
 * q: [B, Nq, H, D] with token stride q_stride (elements between consecutive tokens of one sample;
 *    sample stride is Nq * q_stride). k, v: [B, Nk, H, D] with token stride kv_stride.
 * out: [B, Nq, H, D] with token stride out_stride. lse: [B, H, Nq] log-sum-exp of scaled scores.
 * kv_len: optional per-sample number of valid keys (keys >= kv_len[b] are masked); NULL = all Nk.
 * scale: usually 1/sqrt(D). Strides let q, k, v point into one fused [B, N, 3, H, D] qkv buffer. */
void attention_forward(float *out, float *lse, const float *q, const float *k, const float *v, const int *kv_len, int B,
                       int Nq, int Nk, int H, int D, int q_stride, int kv_stride, int out_stride, float scale);
/* Backward from saved out and lse, recomputing scores block by block.
 * dq, dk, dv accumulate, with the same strides as q, k, v (dq uses q_stride, dk/dv kv_stride).
 * workspace: at least attention_workspace_floats(B, H, Nq) floats. */
size_t attention_workspace_floats(int B, int H, int Nq);
void attention_backward(float *dq, float *dk, float *dv, float *workspace, const float *dout, const float *out,
                        const float *lse, const float *q, const float *k, const float *v, const int *kv_len, int B,
                        int Nq, int Nk, int H, int D, int q_stride, int kv_stride, int out_stride, float scale);

/* ---- Normalisation ---------------------------------------------------------------------------- */
/* LayerNorm over the last dim C of N rows. weight, bias optional (NULL = no affine).
 * mean, rstd: [N] saved for the backward. */
void layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *weight, const float *bias,
                       int N, int C, float eps);
void layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                        const float *weight, const float *mean, const float *rstd, int N, int C);
/* RMSNorm: out = inp * rstd * weight (weight optional). rstd: [N]. */
void rmsnorm_forward(float *out, float *rstd, const float *inp, const float *weight, int N, int C, float eps);
void rmsnorm_backward(float *dinp, float *dweight, const float *dout, const float *inp, const float *weight,
                      const float *rstd, int N, int C);
/* The same over rows that are a stride apart (e.g. the q or k slice of a fused [N, 3C] qkv buffer):
 * row i of inp is at inp + i * inp_stride, of out at out + i * out_stride (likewise dinp, dout). */
void rmsnorm_forward_strided(float *out, float *rstd, const float *inp, const float *weight, int N, int C,
                             int inp_stride, int out_stride, float eps);
void rmsnorm_backward_strided(float *dinp, float *dweight, const float *dout, const float *inp, const float *weight,
                              const float *rstd, int N, int C, int dinp_stride, int dout_stride, int inp_stride);

/* ---- Activations (elementwise over n) --------------------------------------------------------- */
/* GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) */
void gelu_forward(float *out, const float *inp, size_t n);
void gelu_backward(float *dinp, const float *dout, const float *inp, size_t n);
/* SiLU: x * sigmoid(x) */
void silu_forward(float *out, const float *inp, size_t n);
void silu_backward(float *dinp, const float *dout, const float *inp, size_t n);

/* ---- adaLN ------------------------------------------------------------------------------------ */
/* out[b,t,c] = x[b,t,c] * (1 + scale[b*mod_stride + c]) + shift[b*mod_stride + c]
 * shift and scale point into a per-sample modulation vector (e.g. [B, 6C]) whose rows are mod_stride apart. */
void modulate_forward(float *out, const float *x, const float *shift, const float *scale, int B, int T, int C,
                      int mod_stride);
/* dx += dout * (1 + scale); dshift += sum_t dout; dscale += sum_t dout * x. dx, dshift, dscale optional. */
void modulate_backward(float *dx, float *dshift, float *dscale, const float *dout, const float *x, const float *scale,
                       int B, int T, int C, int mod_stride);
/* out[b,t,c] = x[b,t,c] + gate[b*mod_stride + c] * y[b,t,c]  (out may alias x) */
void gate_residual_forward(float *out, const float *x, const float *y, const float *gate, int B, int T, int C,
                           int mod_stride);
/* dx += dout; dy += gate * dout; dgate += sum_t dout * y. dx, dy, dgate optional. */
void gate_residual_backward(float *dx, float *dy, float *dgate, const float *dout, const float *y, const float *gate,
                            int B, int T, int C, int mod_stride);

/* ---- Patches ---------------------------------------------------------------------------------- */
/* img [B, C, H, W] -> tokens [B, (H/p)*(W/p), C*p*p], token order row-major over the patch grid,
 * features in (c, ph, pw) order: the layout of a Conv2d(kernel=p, stride=p) weight [d, C, p, p]. */
void patchify_forward(float *tokens, const float *img, int B, int C, int H, int W, int p);
void patchify_backward(float *dimg, const float *dtokens, int B, int C, int H, int W, int p);
/* tokens [B, (H/p)*(W/p), p*p*C] with features in (ph, pw, c) order (c fastest) -> img [B, C, H, W]. */
void unpatchify_forward(float *img, const float *tokens, int B, int C, int H, int W, int p);
void unpatchify_backward(float *dtokens, const float *dimg, int B, int C, int H, int W, int p);
/* Video latents x [B, C, T, H, W] -> tokens [B, (T/pt)*(H/ph)*(W/pw), C*pt*ph*pw], tokens row-major over the
 * (frame, row, column) patch grid, features in (c, kt, kh, kw) order: a Conv3d(kernel = stride = patch) weight
 * [d, C, pt, ph, pw] is then a [d, C*pt*ph*pw] GEMM operand. T, H, W must be multiples of pt, ph, pw. */
void patchify3d_forward(float *tokens, const float *x, int B, int C, int T, int H, int W, int pt, int ph, int pw);
void patchify3d_backward(float *dx, const float *dtokens, int B, int C, int T, int H, int W, int pt, int ph, int pw);
/* tokens with features in (kt, kh, kw, c) order (c fastest; diffusers' Wan output layout) -> x [B, C, T, H, W]. */
void unpatchify3d_forward(float *x, const float *tokens, int B, int C, int T, int H, int W, int pt, int ph, int pw);
void unpatchify3d_backward(float *dtokens, const float *dx, int B, int C, int T, int H, int W, int pt, int ph, int pw);

/* ---- Embeddings ------------------------------------------------------------------------------- */
/* Sinusoidal timestep embedding, out [B, dim]:
 * half = dim/2, freq_i = exp(-ln(max_period) * i / (half - freq_shift)), arg = t * freq_i;
 * flip_sin_to_cos ? [cos(arg), sin(arg)] : [sin(arg), cos(arg)]; an odd dim gets a zero last column.
 * diffusers' DiT uses max_period 10000, freq_shift 1, flip_sin_to_cos 1. */
void timestep_embedding(float *out, const float *t, int B, int dim, float max_period, float freq_shift,
                        int flip_sin_to_cos);
/* Fixed 2-D sin-cos position embedding, out [grid_h*grid_w, dim] (dim divisible by 4), tokens row-major.
 * Position of token (i, j): h = i / (grid_h/base_size) / interp_scale, w likewise with grid_w;
 * the first dim/2 columns encode w, the last dim/2 encode h; each half is
 * [sin(pos*omega_k), cos(pos*omega_k)] with omega_k = 1/10000^(k/(dim/4)), k < dim/4. */
void pos_embed_2d_sincos(float *out, int dim, int grid_h, int grid_w, float base_size, float interp_scale);
/* out[b, :] = table[ids[b], :], table [num, C] */
void embedding_forward(float *out, const float *table, const int *ids, int B, int C);
/* dtable[ids[b], :] += dout[b, :] */
void embedding_backward(float *dtable, const float *dout, const int *ids, int B, int C);

/* ---- Rotary position embedding ---------------------------------------------------------------- */
/* Wan's 3-D RoPE tables, cos and sin [grid_t * grid_h * grid_w, head_dim / 2], tokens row-major over
 * (frame, row, column). Pair i of a head belongs to the frame axis for i < dt/2, then the row axis for dh/2
 * pairs, then the column axis, with dh = dw = 2 * (head_dim / 6), dt = head_dim - dh - dw (128 -> 44/42/42);
 * within an axis of `dim` features, pair j has angle pos * theta^(-2j / dim). head_dim must be even. */
void rope_table_3d(float *cos_tab, float *sin_tab, int grid_t, int grid_h, int grid_w, int head_dim, double theta);
/* Rotate interleaved pairs: for token row r = b*N + n, head h, pair i (features 2i, 2i+1 of the head),
 * (x0, x1) -> (x0 c - x1 s, x0 s + x1 c) with c, s = cos_tab / sin_tab[n * D/2 + i]. Rows of inp / out are
 * inp_stride / out_stride floats apart; out may be inp (in place, equal strides). */
void rope_forward(float *out, const float *inp, const float *cos_tab, const float *sin_tab, int B, int N, int H, int D,
                  int inp_stride, int out_stride);
/* dinp += the rotation by -angle of dout (dinp must not alias dout). */
void rope_backward(float *dinp, const float *dout, const float *cos_tab, const float *sin_tab, int B, int N, int H,
                   int D, int dinp_stride, int dout_stride);

/* ---- Optimiser and friends -------------------------------------------------------------------- */
/* AdamW as in torch.optim.AdamW: p *= 1 - lr*wd; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
 * p -= lr / (1 - b1^step) * m / (sqrt(v) / sqrt(1 - b2^step) + eps). step counts from 1. */
void adamw_step(float *param, const float *grad, float *m, float *v, size_t n, float lr, float beta1, float beta2,
                float eps, float weight_decay, long step);
/* L2 norm of a buffer, accumulated in double. */
double global_norm(const float *x, size_t n);
/* Sum of squares in double with the same fixed chunking (partial norms of sharded gradients). */
double sum_squares(const float *x, size_t n);
/* As torch.nn.utils.clip_grad_norm_: coef = max_norm / (total_norm + 1e-6), applied if < 1.
 * Returns the total norm before clipping. */
double clip_grad_norm(float *grad, size_t n, double max_norm);
/* ema = decay * ema + (1 - decay) * param */
void ema_update(float *ema, const float *param, size_t n, float decay);

#ifdef __cplusplus
}
#endif
#endif
