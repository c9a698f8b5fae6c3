/* MPI process groups and bounded collectives (see dist.h). */
#include "dfm/dist.h"
#include "dfm/common.h"

#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static dist_info info = {.size = 1,
                         .local_size = 1,
                         .tp = 1,
                         .cp = 1,
                         .dp = 1,
                         .pp = 1,
                         .timeout_s = 600.0,
                         .dp_replicate = 1,
                         .dp_shard = 1};
static MPI_Comm dp_comm = MPI_COMM_NULL, tp_comm = MPI_COMM_NULL, cp_comm = MPI_COMM_NULL, pp_comm = MPI_COMM_NULL;
static MPI_Comm dpcp_comm = MPI_COMM_NULL; /* DP x CP (context parallelism's gradient sums) */
/* hybrid sharding: the shard group (this rank's replica) and the replica group; MPI_COMM_NULL without it */
static MPI_Comm shard_comm = MPI_COMM_NULL, rep_comm = MPI_COMM_NULL;
static double wait_time;
static float *tp_scratch; /* the tensor-parallel collectives' receive buffer */
static size_t tp_scratch_n;
static int *tp_counts; /* the ordered all-reduce's counts and offsets (4 x TP) */
static float *sp_pack; /* the sequence-parallel collectives' second buffer */
static size_t sp_pack_n;

struct dist_req {
    MPI_Request req;
    const char *what;
    int *displs; /* owned, for the v-collectives */
};

static void abort_all(int code) {
    fflush(stdout);
    fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, code ? code : 1);
    exit(code ? code : 1);
}

static void check(int rc, const char *what) {
    if (rc == MPI_SUCCESS) return;
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    dfm_die("%s: MPI error: %s", what, msg);
}

void dist_init(int *argc, char ***argv) {
    if (info.active) return;
    int launched = getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMI_SIZE") || getenv("PMIX_RANK");
    if (!launched) return;
    int provided = 0;
    if (MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS) dfm_die("MPI_Init_thread failed");
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    info.active = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &info.rank);
    MPI_Comm_size(MPI_COMM_WORLD, &info.size);
    MPI_Comm local;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, info.rank, MPI_INFO_NULL, &local);
    MPI_Comm_rank(local, &info.local_rank);
    MPI_Comm_size(local, &info.local_size);
    MPI_Comm_free(&local);
    info.dp = info.dp_shard = info.size;
    info.dp_rank = info.dp_shard_rank = info.rank;
    MPI_Comm_dup(MPI_COMM_WORLD, &dp_comm);
    char prefix[48];
    snprintf(prefix, sizeof prefix, "rank %d: ", info.rank);
    dfm_set_die_hook(prefix, abort_all);
    dfm_set_die_delay(info.rank == 0 ? 0 : 3.0);
}

const dist_info *dist_get(void) {
    return &info;
}

static void free_replica_groups(void) {
    if (shard_comm != MPI_COMM_NULL) MPI_Comm_free(&shard_comm);
    if (rep_comm != MPI_COMM_NULL) MPI_Comm_free(&rep_comm);
    info.dp_replicate = 1, info.dp_replicate_rank = 0;
    info.dp_shard = info.dp, info.dp_shard_rank = info.dp_rank;
}

void dist_set_timeout(double seconds) {
    info.timeout_s = seconds > 0 ? seconds : 600.0;
}

int dist_setup_groups(int tp, int cp, int pp, char *err, size_t errlen) {
    if (tp < 1 || cp < 1 || pp < 1) {
        snprintf(err, errlen, "parallel sizes must be >= 1 (tensor %d, context %d, pipeline %d)", tp, cp, pp);
        return -1;
    }
    long model = (long)tp * cp * pp;
    if (info.size % model) {
        snprintf(err, errlen,
                 "the world size %d (mpirun -np) is not divisible by tensor x context x pipeline parallel = %d x %d x "
                 "%d = %ld",
                 info.size, tp, cp, pp, model);
        return -1;
    }
    info.tp = tp, info.cp = cp, info.pp = pp;
    info.dp = (int)(info.size / model);
    int r = info.rank;
    info.tp_rank = r % tp;
    info.cp_rank = (r / tp) % cp;
    info.dp_rank = (r / (tp * cp)) % info.dp;
    info.pp_rank = r / (tp * cp * info.dp);
    free_replica_groups();
    if (!info.active) return 0;
    MPI_Comm *comms[] = {&dp_comm, &tp_comm, &cp_comm, &pp_comm, &dpcp_comm};
    for (int i = 0; i < 5; i++)
        if (*comms[i] != MPI_COMM_NULL) MPI_Comm_free(comms[i]);
    /* ranks that share every coordinate but one form that coordinate's group, ordered by it */
    int tp_key = info.tp_rank, cp_key = info.cp_rank, dp_key = info.dp_rank, pp_key = info.pp_rank;
    int tp_color = r / tp;
    int cp_color = info.tp_rank + tp * (info.dp_rank + info.dp * info.pp_rank);
    int dp_color = info.tp_rank + tp * (info.cp_rank + cp * info.pp_rank);
    int pp_color = r % (tp * cp * info.dp);
    check(MPI_Comm_split(MPI_COMM_WORLD, tp_color, tp_key, &tp_comm), "creating the tensor-parallel group");
    check(MPI_Comm_split(MPI_COMM_WORLD, cp_color, cp_key, &cp_comm), "creating the context-parallel group");
    check(MPI_Comm_split(MPI_COMM_WORLD, dp_color, dp_key, &dp_comm), "creating the data-parallel group");
    check(MPI_Comm_split(MPI_COMM_WORLD, pp_color, pp_key, &pp_comm), "creating the pipeline-parallel group");
    check(
        MPI_Comm_split(MPI_COMM_WORLD, info.tp_rank + tp * info.pp_rank, info.cp_rank + cp * info.dp_rank, &dpcp_comm),
        "creating the data x context-parallel group");
    for (int i = 0; i < 5; i++) MPI_Comm_set_errhandler(*comms[i], MPI_ERRORS_RETURN);
    return 0;
}

int dist_setup_dp_replicas(int replicate, char *err, size_t errlen) {
    if (replicate < 1 || info.dp % replicate) {
        snprintf(err, errlen, "the data-parallel size %d is not divisible by %d replica groups", info.dp, replicate);
        return -1;
    }
    free_replica_groups();
    info.dp_replicate = replicate, info.dp_shard = info.dp / replicate;
    info.dp_shard_rank = info.dp_rank % info.dp_shard;
    info.dp_replicate_rank = info.dp_rank / info.dp_shard;
    if (!info.active || replicate == 1) return 0;
    /* both split the DP group: the ranks of one replica (ordered by shard rank), and the ranks holding the same
     * shard (ordered by replica) */
    check(MPI_Comm_split(dp_comm, info.dp_replicate_rank, info.dp_shard_rank, &shard_comm),
          "creating the data-parallel shard group");
    check(MPI_Comm_split(dp_comm, info.dp_shard_rank, info.dp_replicate_rank, &rep_comm),
          "creating the data-parallel replica group");
    MPI_Comm_set_errhandler(shard_comm, MPI_ERRORS_RETURN);
    MPI_Comm_set_errhandler(rep_comm, MPI_ERRORS_RETURN);
    return 0;
}

void dist_finalize(void) {
    if (!info.active) return;
    free_replica_groups();
    MPI_Comm *comms[] = {&dp_comm, &tp_comm, &cp_comm, &pp_comm, &dpcp_comm};
    for (int i = 0; i < 5; i++)
        if (*comms[i] != MPI_COMM_NULL) MPI_Comm_free(comms[i]);
    free(tp_scratch);
    tp_scratch = NULL, tp_scratch_n = 0;
    free(tp_counts);
    tp_counts = NULL;
    free(sp_pack);
    sp_pack = NULL, sp_pack_n = 0;
    dfm_set_die_hook(NULL, NULL);
    dfm_set_die_delay(0);
    MPI_Finalize();
    info.active = 0;
}

/* ---- waiting with a bound ---------------------------------------------------------------------- */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Poll rather than block in MPI_Wait, so that a peer that never answers is noticed. The sleep grows from
 * nothing to 200 us: short collectives finish at full speed, long waits leave the core to the other ranks. */
static void wait_bounded(MPI_Request *req, const char *what) {
    double t0 = now_s();
    int done = 0;
    long spins = 0;
    while (!done) {
        check(MPI_Test(req, &done, MPI_STATUS_IGNORE), what);
        if (done) break;
        double el = now_s() - t0;
        if (el > info.timeout_s)
            dfm_die("%s: no answer from the other ranks for %.0f s (dist.timeout_s): a rank has stalled or died", what,
                    el);
        if (++spins > 100) {
            struct timespec ts = {0, spins > 2000 ? 200000 : 20000};
            nanosleep(&ts, NULL);
        }
    }
    wait_time += now_s() - t0;
}

double dist_take_wait_time(void) {
    double t = wait_time;
    wait_time = 0;
    return t;
}

/* ---- collectives -------------------------------------------------------------------------------- */

/* A data-parallel group's communicator, size and this rank's place in it (size 1: nothing to communicate). */
static MPI_Comm group_comm(dist_group g, int *size, int *rank) {
    if (g == DIST_DP_REPLICA) {
        *size = info.dp_replicate, *rank = info.dp_replicate_rank;
        return rep_comm;
    }
    if (g == DIST_PP) {
        *size = info.pp, *rank = info.pp_rank;
        return pp_comm;
    }
    if (g == DIST_CP) {
        *size = info.cp, *rank = info.cp_rank;
        return cp_comm;
    }
    if (g == DIST_DP_CP) {
        *size = info.dp * info.cp, *rank = info.cp_rank + info.cp * info.dp_rank;
        return dpcp_comm;
    }
    if (g == DIST_DP_SHARD && info.dp_replicate > 1) {
        *size = info.dp_shard, *rank = info.dp_shard_rank;
        return shard_comm;
    }
    *size = info.dp, *rank = info.dp_rank;
    return dp_comm;
}

void dist_barrier_world(void) {
    if (!info.active) return;
    MPI_Request r;
    check(MPI_Ibarrier(MPI_COMM_WORLD, &r), "barrier");
    wait_bounded(&r, "barrier");
}

void dist_allreduce_sum_f64_in(dist_group g, double *v, int n, const char *what) {
    int size, rank;
    MPI_Comm comm = group_comm(g, &size, &rank);
    if (!info.active || size == 1) return;
    MPI_Request r;
    check(MPI_Iallreduce(MPI_IN_PLACE, v, n, MPI_DOUBLE, MPI_SUM, comm, &r), what);
    wait_bounded(&r, what);
}

void dist_allreduce_sum_f64(double *v, int n, const char *what) {
    dist_allreduce_sum_f64_in(DIST_DP, v, n, what);
}

int dist_any_world(int flag, const char *what) {
    if (!info.active) return flag;
    MPI_Request r;
    int v = flag;
    check(MPI_Iallreduce(MPI_IN_PLACE, &v, 1, MPI_INT, MPI_BOR, MPI_COMM_WORLD, &r), what);
    wait_bounded(&r, what);
    return v;
}

int dist_allreduce_min_int(int v, const char *what) {
    if (!info.active || info.dp == 1) return v;
    MPI_Request r;
    check(MPI_Iallreduce(MPI_IN_PLACE, &v, 1, MPI_INT, MPI_MIN, dp_comm, &r), what);
    wait_bounded(&r, what);
    return v;
}

void dist_bcast_bytes(void *buf, size_t n, int root, const char *what) {
    if (!info.active || info.dp == 1) return;
    if (n > INT32_MAX) dfm_die("%s: broadcast of %zu bytes is too large", what, n);
    MPI_Request r;
    check(MPI_Ibcast(buf, (int)n, MPI_BYTE, root, dp_comm, &r), what);
    wait_bounded(&r, what);
}

void dist_bcast_world_bytes(void *buf, size_t n, const char *what) {
    if (!info.active || info.size == 1) return;
    if (n > INT32_MAX) dfm_die("%s: broadcast of %zu bytes is too large", what, n);
    MPI_Request r;
    check(MPI_Ibcast(buf, (int)n, MPI_BYTE, 0, MPI_COMM_WORLD, &r), what);
    wait_bounded(&r, what);
}

static dist_req *new_req(const char *what) {
    dist_req *q = xcalloc(1, sizeof *q);
    q->req = MPI_REQUEST_NULL;
    q->what = what;
    return q;
}

dist_req *dist_iallreduce_sum_f64(dist_group g, double *buf, size_t n, const char *what) {
    dist_req *q = new_req(what);
    int size, rank;
    MPI_Comm comm = group_comm(g, &size, &rank);
    if (!info.active || size == 1) return q;
    if (n > INT32_MAX) dfm_die("%s: %zu values in one all-reduce is too many", what, n);
    check(MPI_Iallreduce(MPI_IN_PLACE, buf, (int)n, MPI_DOUBLE, MPI_SUM, comm, &q->req), what);
    return q;
}

dist_req *dist_ireduce_scatter_f64(dist_group g, const double *send, double *recv, const int *counts,
                                   const char *what) {
    dist_req *q = new_req(what);
    int size, rank;
    MPI_Comm comm = group_comm(g, &size, &rank);
    if (!info.active || size == 1) {
        if (counts[0] && recv != send) memcpy(recv, send, sizeof(double) * (size_t)counts[0]);
        return q;
    }
    check(MPI_Ireduce_scatter(send, recv, counts, MPI_DOUBLE, MPI_SUM, comm, &q->req), what);
    return q;
}

dist_req *dist_iallgatherv_f32(dist_group g, const float *send, float *recv, const int *counts, const char *what) {
    dist_req *q = new_req(what);
    int size, rank;
    MPI_Comm comm = group_comm(g, &size, &rank);
    if (!info.active || size == 1) {
        if (counts[0] && recv != send) memmove(recv, send, sizeof(float) * (size_t)counts[0]);
        return q;
    }
    q->displs = xmalloc(sizeof(int) * (size_t)size);
    int off = 0;
    for (int r = 0; r < size; r++) q->displs[r] = off, off += counts[r];
    /* a rank's part already in place (send inside recv at its displacement) goes as MPI_IN_PLACE */
    const void *src = send == recv + q->displs[rank] ? MPI_IN_PLACE : send;
    check(MPI_Iallgatherv(src, counts[rank], MPI_FLOAT, recv, counts, q->displs, MPI_FLOAT, comm, &q->req), what);
    return q;
}

static dist_req *p2p(float *buf, size_t n, int peer, int tag, int send, const char *what) {
    dist_req *q = new_req(what);
    if (!info.active || info.pp == 1) dfm_die("internal: %s without a pipeline group", what);
    if (n > INT32_MAX) dfm_die("%s: %zu values in one message is too many", what, n);
    if (peer < 0 || peer >= info.pp || tag < 0 || tag > 32767)
        dfm_die("internal: %s to stage %d, tag %d", what, peer, tag);
    if (send)
        check(MPI_Isend(buf, (int)n, MPI_FLOAT, peer, tag, pp_comm, &q->req), what);
    else
        check(MPI_Irecv(buf, (int)n, MPI_FLOAT, peer, tag, pp_comm, &q->req), what);
    return q;
}

dist_req *dist_isend_pp_f32(const float *buf, size_t n, int peer, int tag, const char *what) {
    return p2p((float *)buf, n, peer, tag, 1, what);
}

dist_req *dist_irecv_pp_f32(float *buf, size_t n, int peer, int tag, const char *what) {
    return p2p(buf, n, peer, tag, 0, what);
}

static dist_req *p2p_in(dist_group g, float *buf, size_t n, int peer, int tag, int send, const char *what) {
    dist_req *q = new_req(what);
    int size, rank;
    MPI_Comm comm = group_comm(g, &size, &rank);
    if (!info.active || size == 1) dfm_die("internal: %s in a group of one", what);
    if (n > INT32_MAX) dfm_die("%s: %zu values in one message is too many", what, n);
    if (peer < 0 || peer >= size || tag < 0 || tag > 32767) dfm_die("internal: %s to rank %d, tag %d", what, peer, tag);
    if (send)
        check(MPI_Isend(buf, (int)n, MPI_FLOAT, peer, tag, comm, &q->req), what);
    else
        check(MPI_Irecv(buf, (int)n, MPI_FLOAT, peer, tag, comm, &q->req), what);
    return q;
}

dist_req *dist_isend_f32_in(dist_group g, const float *buf, size_t n, int peer, int tag, const char *what) {
    return p2p_in(g, (float *)buf, n, peer, tag, 1, what);
}

dist_req *dist_irecv_f32_in(dist_group g, float *buf, size_t n, int peer, int tag, const char *what) {
    return p2p_in(g, buf, n, peer, tag, 0, what);
}

/* Raw bytes to or from a world rank, in messages of at most 1 GiB (MPI counts are ints), each wait bounded. */
static void world_bytes(void *buf, size_t n, int peer, int tag, int send, const char *what) {
    if (!info.active || peer < 0 || peer >= info.size || peer == info.rank || tag < 0 || tag > 32767)
        dfm_die("internal: %s with world rank %d (tag %d)", what, peer, tag);
    size_t at = 0;
    do {
        size_t len = n - at < ((size_t)1 << 30) ? n - at : ((size_t)1 << 30);
        MPI_Request r;
        if (send)
            check(MPI_Isend((char *)buf + at, (int)len, MPI_BYTE, peer, tag, MPI_COMM_WORLD, &r), what);
        else
            check(MPI_Irecv((char *)buf + at, (int)len, MPI_BYTE, peer, tag, MPI_COMM_WORLD, &r), what);
        wait_bounded(&r, what);
        at += len;
    } while (at < n);
}

void dist_send_world_bytes(const void *buf, size_t n, int peer, int tag, const char *what) {
    world_bytes((void *)buf, n, peer, tag, 1, what);
}

void dist_recv_world_bytes(void *buf, size_t n, int peer, int tag, const char *what) {
    world_bytes(buf, n, peer, tag, 0, what);
}

void dist_alltoall_f32_in(dist_group g, const float *send, float *recv, size_t n, const char *what) {
    int size, rank;
    MPI_Comm comm = group_comm(g, &size, &rank);
    if (!info.active || size == 1) {
        if (n && recv != send) memmove(recv, send, sizeof(float) * n);
        return;
    }
    if (n > INT32_MAX) dfm_die("%s: %zu values per rank in one all-to-all is too many", what, n);
    MPI_Request r;
    check(MPI_Ialltoall(send, (int)n, MPI_FLOAT, recv, (int)n, MPI_FLOAT, comm, &r), what);
    wait_bounded(&r, what);
}

void dist_wait(dist_req *q) {
    if (!q) return;
    if (q->req != MPI_REQUEST_NULL) wait_bounded(&q->req, q->what);
    free(q->displs);
    free(q);
}

int dist_test(dist_req *q) {
    if (!info.active) return 1;
    if (!q || q->req == MPI_REQUEST_NULL) {
        int flag;
        MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, MPI_COMM_WORLD, &flag, MPI_STATUS_IGNORE);
        return 1;
    }
    int done = 0;
    check(MPI_Test(&q->req, &done, MPI_STATUS_IGNORE), q->what);
    return done;
}

static float *grow(float **buf, size_t *have, size_t n) {
    if (*have < n) {
        free(*buf);
        *buf = xalloc_floats(*have = n);
    }
    return *buf;
}

/* ---- tensor-parallel group ---------------------------------------------------------------------- */

/* An ordered all-reduce: rank t owns the t-th of T nearly equal slices of the buffer; every rank's slice t goes to
 * rank t (all-to-all), rank t adds the T partial sums of its slice in rank order, and the sums are all-gathered. Each
 * rank sends and receives 2 (T - 1) / T of the buffer (an all-gather of whole buffers would move T - 1 of it), and
 * every value is the same left-to-right sum over ranks 0..T-1, so every rank holds the same bits. */
void dist_tp_allreduce_sum_f32(float *buf, size_t n, const char *what) {
    if (!info.active || info.tp == 1 || n == 0) return;
    if (n > INT32_MAX / 2) dfm_die("%s: %zu values in one tensor-parallel all-reduce is too many", what, n);
    const int T = info.tp, me = info.tp_rank;
    if (!tp_counts) tp_counts = xcalloc((size_t)4 * T, sizeof *tp_counts); /* freed by dist_finalize */
    int *cnt = tp_counts, *off = cnt + T, *rcnt = off + T, *roff = rcnt + T;
    for (int t = 0; t < T; t++) {
        off[t] = (int)(n * (size_t)t / (size_t)T);
        cnt[t] = (int)(n * (size_t)(t + 1) / (size_t)T) - off[t];
    }
    const size_t mine = (size_t)cnt[me];
    for (int t = 0; t < T; t++) rcnt[t] = (int)mine, roff[t] = (int)(mine * (size_t)t);
    float *g = grow(&tp_scratch, &tp_scratch_n, mine * (size_t)T);
    MPI_Request r;
    check(MPI_Ialltoallv(buf, cnt, off, MPI_FLOAT, g, rcnt, roff, MPI_FLOAT, tp_comm, &r), what);
    wait_bounded(&r, what);
    float *out = buf + off[me];
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < mine; i++) {
        float acc = g[i];
        for (int t = 1; t < T; t++) acc += g[(size_t)t * mine + i];
        out[i] = acc;
    }
    check(MPI_Iallgatherv(MPI_IN_PLACE, 0, MPI_FLOAT, buf, cnt, off, MPI_FLOAT, tp_comm, &r), what);
    wait_bounded(&r, what);
}

void dist_tp_allgather_f64(const double *send, double *recv, int n, const char *what) {
    if (!info.active || info.tp == 1) {
        memcpy(recv, send, sizeof(double) * (size_t)n);
        return;
    }
    MPI_Request r;
    check(MPI_Iallgather(send, n, MPI_DOUBLE, recv, n, MPI_DOUBLE, tp_comm, &r), what);
    wait_bounded(&r, what);
}

/* ---- sequence parallelism over the tensor-parallel group ----------------------------------------- */

void dist_tp_seq_gather_f32(const float *local, float *full, int B, size_t chunk, const char *what) {
    const size_t T = (size_t)info.tp, n = (size_t)B * chunk;
    if (!info.active || T == 1) {
        if (full != local) memmove(full, local, sizeof(float) * n);
        return;
    }
    if (n > INT32_MAX / T) dfm_die("%s: %zu values in one sequence-parallel all-gather is too many", what, n);
    /* gathered as [rank][B][chunk], laid out as [B][rank][chunk] (one sample's rows in order) */
    float *g = B == 1 ? full : grow(&tp_scratch, &tp_scratch_n, T * n);
    MPI_Request r;
    check(MPI_Iallgather(local, (int)n, MPI_FLOAT, g, (int)n, MPI_FLOAT, tp_comm, &r), what);
    wait_bounded(&r, what);
    if (B == 1) return;
#pragma omp parallel for schedule(static)
    for (int b = 0; b < B; b++)
        for (size_t t = 0; t < T; t++)
            memcpy(full + ((size_t)b * T + t) * chunk, g + (t * (size_t)B + (size_t)b) * chunk, sizeof(float) * chunk);
}

void dist_tp_seq_reduce_scatter_f32(const float *full, float *local, int B, size_t chunk, const char *what) {
    const size_t T = (size_t)info.tp, n = (size_t)B * chunk;
    if (!info.active || T == 1) {
        if (full != local) memmove(local, full, sizeof(float) * n);
        return;
    }
    if (n > INT32_MAX / T) dfm_die("%s: %zu values in one sequence-parallel reduce-scatter is too many", what, n);
    /* the part for rank t ([B][chunk] of rows t) packed contiguously, exchanged all-to-all, then every rank adds
     * the T partial sums of its rows in rank order */
    const float *send = full;
    if (B > 1) {
        float *p = grow(&sp_pack, &sp_pack_n, T * n);
#pragma omp parallel for schedule(static)
        for (int b = 0; b < B; b++)
            for (size_t t = 0; t < T; t++)
                memcpy(p + (t * (size_t)B + (size_t)b) * chunk, full + ((size_t)b * T + t) * chunk,
                       sizeof(float) * chunk);
        send = p;
    }
    float *g = grow(&tp_scratch, &tp_scratch_n, T * n);
    MPI_Request r;
    check(MPI_Ialltoall(send, (int)n, MPI_FLOAT, g, (int)n, MPI_FLOAT, tp_comm, &r), what);
    wait_bounded(&r, what);
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        float acc = g[i];
        for (size_t t = 1; t < T; t++) acc += g[t * n + i];
        local[i] = acc;
    }
}
