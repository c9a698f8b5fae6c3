/* Context parallelism: the token sequence of every sample split over the context-parallel group (dist.h's DIST_CP).
 *
 * A sequence of T tokens is cut into C contiguous chunks of n = ceil(T / C) tokens: CP rank r holds global positions
 * [r n, r n + n); positions >= T are padding (only the last chunks have any), masked out of every attention's keys and
 * out of the loss. Everything outside self-attention is per token and runs on the chunk alone; self-attention needs
 * every token's keys and values, in one of two ways (model.cp_comm_type):
 *
 *   p2p  ring attention: the key/value chunks travel around the CP ring (rank r sends to r + 1), each rank attends
 *        its queries to one chunk at a time while the next is in flight, and merges the partial outputs by their
 *        log-sum-exp. Backward: the chunk's dK/dV accumulators travel with it and come home after a full turn;
 *        the probabilities are recomputed per chunk from the merged log-sum-exp (exactly the global softmax).
 *   a2a  all-to-all (Ulysses): q, k, v re-split by heads (every rank gets all C n tokens of H / C heads), the plain
 *        attention, and the output sent back by tokens; the backward re-splits q, k, v, out, dout and lse again.
 *
 * Both read and write the layout of the ordinary attention kernel (kernels.h) on the local chunk, so a model calls
 * them where it called attention_forward / attention_backward. */
#ifndef DFM_CONTEXT_PARALLEL_H
#define DFM_CONTEXT_PARALLEL_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* CP_LOCAL: a model without context parallelism (every model until dit_set_context_parallel /
 * wan_set_context_parallel): the ordinary attention kernel, whatever the job's context-parallel size (rank 0's
 * whole-model copy of a CP job, dfm/gather.h) */
typedef enum { CP_LOCAL = -1, CP_P2P = 0, CP_A2A = 1 } cp_comm_type;

int cp_comm_type_parse(const char *s, cp_comm_type *out); /* 1 if s is p2p or a2a */
const char *cp_comm_type_name(cp_comm_type t);

/* Tokens per chunk for T tokens over C ranks (ceil), and the real (unpadded) tokens of chunk r. */
int cp_chunk_len(int T, int C);
int cp_chunk_valid(int T, int C, int r);
/* The same with the chunk length rounded up to a multiple of align: under sequence parallelism (align = TP) a
 * chunk splits evenly over the TP group, i.e. the sequence is padded to a multiple of C x TP (never truncated);
 * cp_chunk_valid_len: the real tokens of chunk r when every chunk holds n. */
int cp_chunk_len_aligned(int T, int C, int align);
int cp_chunk_valid_len(int T, int n, int r);
/* This rank's n token rows [B, n, w] (global tokens tok0 .. tok0 + n - 1) taken from / put into the whole samples'
 * [B, n_full, w]: rows past n_full (padding) read as zero; put zeroes `full` first and writes the real rows only. */
void cp_take_rows(float *local, const float *full, int B, int n, int tok0, int n_full, int w);
void cp_put_rows(float *full, const float *local, int B, int n, int tok0, int n_full, int w);
/* 1 if the layout can run: under a2a C must divide the heads each rank holds; else 0 with err naming both. */
int cp_check(int heads, int cp, cp_comm_type t, char *err, size_t errlen);

/* Self-attention of this rank's n query tokens against all C n tokens of its CP group (dist_get()->cp ranks; one
 * rank: the plain kernel). q, k, v, out, lse, strides and scale as attention_forward with Nq = Nk = n; t_valid: the
 * real tokens of the whole sequence (keys at global positions >= t_valid are masked). */
void cp_attention_forward(cp_comm_type t, float *out, float *lse, const float *q, const float *k, const float *v, int B,
                          int n, int t_valid, int H, int D, int q_stride, int kv_stride, int out_stride, float scale);
/* Backward of the above from the saved out and lse: dq, dk, dv accumulate (this rank's tokens). ws: at least
 * attention_workspace_floats(B, H, n) floats. */
void cp_attention_backward(cp_comm_type t, float *dq, float *dk, float *dv, float *ws, const float *dout,
                           const float *out, const float *lse, const float *q, const float *k, const float *v, int B,
                           int n, int t_valid, int H, int D, int q_stride, int kv_stride, int out_stride, float scale);
/* Free the module's communication buffers (they grow to the largest attention seen). */
void cp_release(void);

#ifdef __cplusplus
}
#endif
#endif
