/* Processes: MPI process groups in Megatron's rank order and the collectives dfm uses.
 *
 * Launched by mpirun (OpenMPI's OMPI_COMM_WORLD_SIZE, or PMI_SIZE / PMIX_RANK from other launchers), dfm
 * initialises MPI; started any other way it is one process and no MPI call is made. Every wait on a
 * collective is bounded by dist.timeout_s: a peer that stalls or dies ends the whole job with a message naming
 * this rank and the operation, never a hang. An error on any rank (dfm_die) aborts every rank. */
#ifndef DFM_DIST_H
#define DFM_DIST_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int active;                 /* MPI is initialised (launched by mpirun) */
    int rank, size;             /* world */
    int local_rank, local_size; /* processes on this machine */
    int tp, cp, dp, pp;         /* group sizes: tp * cp * dp * pp = size */
    int tp_rank, cp_rank, dp_rank, pp_rank;
    double timeout_s; /* bound on any wait for peers */
    /* Hybrid sharding: the DP group as a 2-D mesh (replicate, shard), dp_rank = dp_shard_rank + dp_shard *
     * dp_replicate_rank (shard fastest, as PyTorch's device mesh). Without it dp_replicate = 1, dp_shard = dp. */
    int dp_replicate, dp_shard;
    int dp_replicate_rank, dp_shard_rank;
} dist_info;

/* The groups a data-parallel collective runs over: the whole DP group, this rank's shard group (the dp_shard
 * ranks of its replica) or its replica group (the dp_replicate ranks holding the same shard). */
/* DIST_PP: this rank's pipeline; DIST_CP: its context-parallel group (the CP ranks sharing tp, dp and pp
 * coordinates); DIST_DP_CP: the DP x CP ranks sharing tp and pp (rank cp_rank + CP * dp_rank), over which replicated
 * gradients are summed under context parallelism */
typedef enum { DIST_DP, DIST_DP_SHARD, DIST_DP_REPLICA, DIST_PP, DIST_CP, DIST_DP_CP } dist_group;

/* Initialise from the environment (call first thing in main). Idempotent. */
void dist_init(int *argc, char ***argv);
/* The world as set up so far (one process until dist_init finds a launcher). */
const dist_info *dist_get(void);
/* Split the world into groups: rank = tp_rank + TP * (cp_rank + CP * (dp_rank + DP * pp_rank)), i.e. TP
 * fastest, then CP, then DP, then PP (Megatron's order); DP is what remains. 0, or -1 with err naming the
 * numbers that disagree. */
int dist_setup_groups(int tp, int cp, int pp, char *err, size_t errlen);
/* Split the DP group (after dist_setup_groups) into `replicate` replica groups of DP / replicate consecutive DP
 * ranks each (the shard groups), and the groups across them. 0, or -1 with err naming both numbers when
 * replicate does not divide DP. replicate = 1 undoes it. */
int dist_setup_dp_replicas(int replicate, char *err, size_t errlen);
void dist_set_timeout(double seconds);
void dist_finalize(void);

/* ---- collectives over the data-parallel group (no-ops for one process) ------------------------- */

typedef struct dist_req dist_req; /* a collective in flight */

void dist_barrier_world(void);
/* In-place sum over DP of n doubles (blocking, bounded by the timeout); _in: over group g. */
void dist_allreduce_sum_f64(double *v, int n, const char *what);
void dist_allreduce_sum_f64_in(dist_group g, double *v, int n, const char *what);
/* Bitwise OR of an int over the world: "did any rank fail?" checks. */
int dist_any_world(int flag, const char *what);
/* The smallest of an int over DP (blocking). */
int dist_allreduce_min_int(int v, const char *what);
void dist_bcast_bytes(void *buf, size_t n, int root_dp_rank, const char *what);
/* The same over the whole world from world rank 0 (what every rank of every group must agree on). */
void dist_bcast_world_bytes(void *buf, size_t n, const char *what);

/* Non-blocking collectives over group g (ranks numbered within g; counts has one entry per rank of g).
 * Sum buf[0..n) over g in place. */
dist_req *dist_iallreduce_sum_f64(dist_group g, double *buf, size_t n, const char *what);
/* Reduce-scatter: send[0..sum counts) is summed; rank r of g receives its counts[r] values (the part starting
 * at sum of counts[0..r)) into recv. */
dist_req *dist_ireduce_scatter_f64(dist_group g, const double *send, double *recv, const int *counts, const char *what);
/* All-gather: rank r of g contributes counts[r] floats from send; recv receives all of them in rank order
 * (displacements are the running sums of counts). */
dist_req *dist_iallgatherv_f32(dist_group g, const float *send, float *recv, const int *counts, const char *what);
/* Point to point within the pipeline group (peer: a pipeline rank; tag < 32768): n floats sent from buf, or
 * received into buf. Both complete with dist_wait, bounded by the timeout like every other wait. */
dist_req *dist_isend_pp_f32(const float *buf, size_t n, int peer, int tag, const char *what);
dist_req *dist_irecv_pp_f32(float *buf, size_t n, int peer, int tag, const char *what);
/* The same within any group g (peer: a rank of g), e.g. the context-parallel ring. */
dist_req *dist_isend_f32_in(dist_group g, const float *buf, size_t n, int peer, int tag, const char *what);
dist_req *dist_irecv_f32_in(dist_group g, float *buf, size_t n, int peer, int tag, const char *what);
/* Blocking point to point over the whole world (peer: a world rank other than this one; tag < 32768): n bytes
 * sent from buf or received into buf, every wait bounded by the timeout (large buffers go as several messages). */
void dist_send_world_bytes(const void *buf, size_t n, int peer, int tag, const char *what);
void dist_recv_world_bytes(void *buf, size_t n, int peer, int tag, const char *what);
/* All-to-all over g (blocking, bounded): block r of send (n floats each) goes to rank r of g, block r of recv comes
 * from it. One rank: a copy. */
void dist_alltoall_f32_in(dist_group g, const float *send, float *recv, size_t n, const char *what);
/* Complete (and free) a request; dies naming the operation if the peers do not answer within the timeout. */
void dist_wait(dist_req *r);
/* Give MPI a chance to progress outstanding requests; 1 if r is complete (r may be NULL). */
int dist_test(dist_req *r);
/* ---- collectives over the tensor-parallel group (no-ops when TP = 1) ------------------------------ */

/* In-place sum of n floats over the TP group, deterministic and the same bits on every TP rank: the partial
 * sums are gathered and added in rank order (an MPI reduction may add in a different order on each rank). */
void dist_tp_allreduce_sum_f32(float *buf, size_t n, const char *what);
/* Every TP rank's n doubles, in rank order, into recv (TP x n). */
void dist_tp_allgather_f64(const double *send, double *recv, int n, const char *what);
/* Sequence parallelism: a [B, S, C] tensor of which TP rank r holds rows [r S/TP, (r+1) S/TP) of every sample
 * (local [B, S/TP, C]; chunk = S/TP x C floats). Gather: every rank's local part into full [B, S, C]. Reduce-scatter:
 * full holds this rank's partial sums [B, S, C]; local receives the sum over the TP group of its rows, added in rank
 * order (the bits dist_tp_allreduce_sum_f32 gives those rows, the same on every rank). TP = 1: copies. */
void dist_tp_seq_gather_f32(const float *local, float *full, int B, size_t chunk, const char *what);
void dist_tp_seq_reduce_scatter_f32(const float *full, float *local, int B, size_t chunk, const char *what);

/* Seconds spent inside dist_wait / blocking collectives since the last call (communication not hidden). */
double dist_take_wait_time(void);

#ifdef __cplusplus
}
#endif
#endif
