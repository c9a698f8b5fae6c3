/* The whole model of a model-parallel job on world rank 0 (see dfm/gather.h). */
#include "dfm/gather.h"
#include "dfm/checkpoint.h"
#include "dfm/common.h"
#include "dfm/dist.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void full_model_init_dit(full_model *f, const dit_config *c) {
    memset(f, 0, sizeof *f);
    dit_create(&f->dit, c, 1);
}

void full_model_init_wan(full_model *f, const wan_config *c, const wan_shape *max) {
    memset(f, 0, sizeof *f);
    f->wan = 1;
    wan_create_weights_only(&f->wm, c);
    if (max) {
        char err[1024];
        wan_shape one = *max;
        one.batch = 1;
        if (wan_prepare(&f->wm, &one, err, sizeof err) != 0) dfm_die("the whole Wan model on rank 0: %s", err);
    }
}

void full_model_free(full_model *f) {
    if (f->wan)
        wan_free(&f->wm);
    else
        dit_free(&f->dit);
}

const param_table *full_model_table(const full_model *f) {
    return f->wan ? &f->wm.table : &f->dit.table;
}

float *full_model_params(full_model *f) {
    return f->wan ? f->wm.params : f->dit.params;
}

int full_model_read(full_model *f, const char *dir, const char *kind, char *err, size_t errlen) {
    const param_table *t = full_model_table(f);
    return ckpt_read_range(dir, kind, t, 0, t->total, full_model_params(f), err, errlen);
}

/* One piece a rank contributes: a whole tensor, or a TP slice [start, start + len) of dimension axis. */
typedef struct {
    int64_t axis, start, len, numel, ndim;
    int64_t gshape[DFM_MAX_DIMS];
    char name[256];
} piece;

/* The pieces of t this rank contributes (split tensors always, whole ones from TP rank 0) and their data, packed in
 * table order. Returns the count; *data (malloc'ed) holds *nfloats floats. */
static int64_t pack(const param_table *t, const float *buf, piece **out, float **data, int64_t *nfloats) {
    int with_whole = dist_get()->tp_rank == 0;
    piece *p = xcalloc((size_t)t->n + 1, sizeof *p);
    int64_t n = 0, nf = 0;
    for (int i = 0; i < t->n; i++) {
        const param_entry *e = &t->e[i];
        if (e->split_axis < 0 && !with_whole) continue;
        if (strlen(e->name) >= sizeof p[n].name) dfm_die("internal: parameter name '%s' is too long", e->name);
        snprintf(p[n].name, sizeof p[n].name, "%s", e->name);
        p[n].axis = e->split_axis;
        p[n].start = e->split_axis >= 0 ? e->split_start : 0;
        p[n].len = e->split_axis >= 0 ? e->shape[e->split_axis] : 0;
        p[n].numel = (int64_t)e->numel;
        p[n].ndim = e->ndim;
        for (int d = 0; d < e->ndim; d++) p[n].gshape[d] = e->split_axis >= 0 ? e->global_shape[d] : e->shape[d];
        nf += (int64_t)e->numel;
        n++;
    }
    float *d = xalloc_floats(nf ? (size_t)nf : 1), *at = d;
    for (int i = 0, k = 0; i < t->n && k < n; i++) {
        const param_entry *e = &t->e[i];
        if (strcmp(e->name, p[k].name)) continue;
        memcpy(at, buf + e->offset, e->numel * sizeof(float));
        at += e->numel, k++;
    }
    *out = p, *data = d, *nfloats = nf;
    return n;
}

/* Rank 0's bookkeeping: elements placed per entry of the whole table, and which indices of a split dimension
 * arrived (so a piece sent twice is caught, not silently overwritten). */
typedef struct {
    const param_table *full;
    float *out;
    size_t *filled;
    unsigned char **seen; /* per entry, lazily: shape[axis] flags */
} placer;

static void place(placer *pl, const piece *p, const float *data, int from) {
    const param_table *full = pl->full;
    const param_entry *f = param_table_find(full, p->name);
    if (!f)
        dfm_die("assembling the whole model: world rank %d holds '%s', which the one-process model does not have", from,
                p->name);
    size_t fi = (size_t)(f - full->e);
    int same = p->ndim == f->ndim;
    for (int d = 0; same && d < f->ndim; d++) same = p->gshape[d] == f->shape[d];
    if (!same) dfm_die("assembling the whole model: '%s' from world rank %d has another shape", p->name, from);
    if (p->axis < 0) {
        if ((size_t)p->numel != f->numel || pl->filled[fi])
            dfm_die("assembling the whole model: '%s' from world rank %d arrived twice or with %lld elements", p->name,
                    from, (long long)p->numel);
        memcpy(pl->out + f->offset, data, f->numel * sizeof(float));
        pl->filled[fi] = f->numel;
        return;
    }
    int a = (int)p->axis;
    size_t outer = 1, inner = 1, G = (size_t)f->shape[a], len = (size_t)p->len, start = (size_t)p->start;
    for (int d = 0; d < a; d++) outer *= (size_t)f->shape[d];
    for (int d = a + 1; d < f->ndim; d++) inner *= (size_t)f->shape[d];
    if (a >= f->ndim || start + len > G || outer * len * inner != (size_t)p->numel)
        dfm_die("assembling the whole model: the slice of '%s' from world rank %d does not fit its tensor", p->name,
                from);
    if (!pl->seen[fi]) pl->seen[fi] = xcalloc(G, 1);
    for (size_t i = start; i < start + len; i++) {
        if (pl->seen[fi][i])
            dfm_die("assembling the whole model: index %zu of dimension %d of '%s' arrived twice (world rank %d)", i, a,
                    p->name, from);
        pl->seen[fi][i] = 1;
    }
    for (size_t o = 0; o < outer; o++)
        memcpy(pl->out + f->offset + (o * G + start) * inner, data + o * len * inner, len * inner * sizeof(float));
    pl->filled[fi] += (size_t)p->numel;
}

static void place_all(placer *pl, const piece *p, int64_t n, const float *data, int from) {
    for (int64_t k = 0; k < n; k++) {
        place(pl, &p[k], data, from);
        data += p[k].numel;
    }
}

enum { TAG_COUNT = 7101, TAG_PIECES, TAG_DATA };

void gather_to_lead(const param_table *local, const float *buf, const param_table *full, float *out) {
    const dist_info *di = dist_get();
    int sender = di->dp_rank == 0 && di->cp_rank == 0;
    piece *mine = NULL;
    float *data = NULL;
    int64_t n = 0, nf = 0;
    if (sender) n = pack(local, buf, &mine, &data, &nf);
    if (di->rank != 0) {
        if (sender) {
            int64_t head[2] = {n, nf};
            dist_send_world_bytes(head, sizeof head, 0, TAG_COUNT, "sending a part of the model to rank 0");
            dist_send_world_bytes(mine, (size_t)n * sizeof *mine, 0, TAG_PIECES,
                                  "sending a part of the model to rank 0");
            dist_send_world_bytes(data, (size_t)nf * sizeof(float), 0, TAG_DATA,
                                  "sending a part of the model to rank 0");
        }
        free(mine), free(data);
        return;
    }
    placer pl = {full, out, xcalloc((size_t)full->n + 1, sizeof(size_t)),
                 xcalloc((size_t)full->n + 1, sizeof(unsigned char *))};
    place_all(&pl, mine, n, data, 0);
    free(mine), free(data);
    /* the senders: TP rank t of stage s (data- and context-parallel rank 0), world rank t + TP CP DP s */
    for (int s = 0; s < di->pp; s++)
        for (int t = 0; t < di->tp; t++) {
            int r = t + di->tp * di->cp * di->dp * s;
            if (r == 0) continue;
            int64_t head[2];
            dist_recv_world_bytes(head, sizeof head, r, TAG_COUNT, "receiving a part of the model on rank 0");
            if (head[0] < 0 || head[1] < 0 || (size_t)head[1] > full->total)
                dfm_die("assembling the whole model: world rank %d announces %lld pieces of %lld elements", r,
                        (long long)head[0], (long long)head[1]);
            piece *p = xcalloc((size_t)head[0] + 1, sizeof *p);
            float *d = xalloc_floats(head[1] ? (size_t)head[1] : 1);
            dist_recv_world_bytes(p, (size_t)head[0] * sizeof *p, r, TAG_PIECES,
                                  "receiving a part of the model on rank 0");
            dist_recv_world_bytes(d, (size_t)head[1] * sizeof(float), r, TAG_DATA,
                                  "receiving a part of the model on rank 0");
            int64_t sum = 0;
            for (int64_t k = 0; k < head[0]; k++) {
                p[k].name[sizeof p[k].name - 1] = 0;
                sum += p[k].numel;
            }
            if (sum != head[1]) dfm_die("assembling the whole model: world rank %d sent inconsistent pieces", r);
            place_all(&pl, p, head[0], d, r);
            free(p), free(d);
        }
    for (int i = 0; i < full->n; i++) {
        if (pl.filled[i] != full->e[i].numel)
            dfm_die("assembling the whole model: %zu of the %zu elements of '%s' arrived", pl.filled[i],
                    full->e[i].numel, full->e[i].name);
        free(pl.seen[i]);
    }
    free(pl.filled), free(pl.seen);
}
