/* Energon dataset reader. See include/dfm/energon.h for the ordering contract. */
#include "dfm/energon.h"
#include "dfm/codec.h"
#include "dfm/common.h"
#include "dfm/tar.h"
#include "dfm/yamltree.h"

#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define ERRLEN 1024

static int seterr(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int seterr(char *err, size_t errlen, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    if (err && errlen) vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

static char *path_join(const char *a, const char *b) {
    if (b[0] == '/' || !a[0]) return xstrdup(b);
    size_t n = strlen(a) + strlen(b) + 2;
    char *p = xmalloc(n);
    snprintf(p, n, "%s/%s", a, b);
    return p;
}

static char *dir_of(const char *path) {
    const char *s = strrchr(path, '/');
    if (!s) return xstrdup(".");
    size_t n = (size_t)(s - path);
    char *d = xmalloc(n + 2);
    memcpy(d, path, n ? n : 1);
    d[n ? n : 1] = 0;
    return d;
}

static int is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static void free_strs(char **s, int n) {
    for (int i = 0; i < n; i++) free(s[i]);
    free(s);
}

/* ------------------------------------------------------------------------------------------ brace expansion */

int energon_brace_expand(const char *pattern, char ***out) {
    const char *open = strchr(pattern, '{');
    const char *close = open ? strchr(open, '}') : NULL;
    if (!open || !close) {
        *out = xmalloc(sizeof(char *));
        (*out)[0] = xstrdup(pattern);
        return 1;
    }
    size_t plen = (size_t)(open - pattern);
    char *inner = xmalloc((size_t)(close - open));
    memcpy(inner, open + 1, (size_t)(close - open - 1));
    inner[close - open - 1] = 0;
    /* alternatives: a numeric range a..b (zero padded to the wider bound) or a comma list */
    char **alts = NULL;
    int nalt = 0, calt = 0; /* arrays grow geometrically: growing by one per name is quadratic in copying */
    char *dots = strstr(inner, "..");
    char *end1, *end2;
    long long a = dots ? strtoll(inner, &end1, 10) : 0, b = dots ? strtoll(dots + 2, &end2, 10) : 0;
    if (dots && end1 == dots && end1 != inner && !*end2 && end2 != dots + 2) {
        /* a range like {0..4000000} in a split.yaml would take minutes and gigabytes: refuse it (checked in
         * unsigned arithmetic, as b - a of two long longs can overflow) */
        unsigned long long span =
            a <= b ? (unsigned long long)b - (unsigned long long)a : (unsigned long long)a - (unsigned long long)b;
        if (span >= ENERGON_BRACE_MAX) {
            free(inner);
            *out = NULL;
            return -1;
        }
        int width = (int)(dots - inner);
        if ((int)strlen(dots + 2) > width) width = (int)strlen(dots + 2);
        int pad = inner[0] == '0' || dots[2] == '0';
        long long step = a <= b ? 1 : -1;
        for (long long v = a;; v += step) {
            char buf[64];
            snprintf(buf, sizeof buf, pad ? "%0*lld" : "%*lld", pad ? width : 0, v);
            if (nalt == calt) alts = xrealloc(alts, (size_t)(calt = calt ? 2 * calt : 16) * sizeof *alts);
            alts[nalt++] = xstrdup(buf);
            if (v == b) break;
        }
    } else {
        char *save = NULL;
        for (char *t = strtok_r(inner, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
            if (nalt == calt) alts = xrealloc(alts, (size_t)(calt = calt ? 2 * calt : 16) * sizeof *alts);
            alts[nalt++] = xstrdup(t);
        }
    }
    free(inner);
    char **res = NULL;
    int nres = 0, cres = 0;
    for (int i = 0; i < nalt; i++) {
        size_t n = plen + strlen(alts[i]) + strlen(close + 1) + 1;
        char *s = xmalloc(n);
        snprintf(s, n, "%.*s%s%s", (int)plen, pattern, alts[i], close + 1);
        char **sub;
        int ns = energon_brace_expand(s, &sub); /* further groups to the right */
        if (ns < 0 || nres + (long long)ns > ENERGON_BRACE_MAX) {
            if (ns > 0) free_strs(sub, ns);
            free(s);
            free_strs(res, nres);
            free_strs(alts, nalt);
            *out = NULL;
            return -1;
        }
        if (ns > 0) { /* an empty expansion gives sub = NULL, which memcpy may not be passed */
            if (nres + ns > cres) {
                while (cres < nres + ns) cres = cres ? 2 * cres : 16;
                res = xrealloc(res, (size_t)cres * sizeof *res);
            }
            memcpy(res + nres, sub, (size_t)ns * sizeof *sub);
        }
        nres += ns;
        free(sub);
        free(s);
    }
    free_strs(alts, nalt);
    *out = res;
    return nres;
}

/* -------------------------------------------------------------------------------------- dataset folder metadata */

static int load_info(const char *root, energon_dataset_info *info, char *err, size_t errlen) {
    char *meta = path_join(root, ".nv-meta");
    char *jp = path_join(meta, ".info.json"), *yp = path_join(meta, ".info.yaml");
    int rc = -1;
    struct stat st;
    if (stat(jp, &st) == 0) {
        json_error_t je;
        json_t *j = json_load_file(jp, 0, &je);
        if (!j) {
            seterr(err, errlen, "'%s':%d: invalid JSON: %s", jp, je.line, je.text);
            goto out;
        }
        json_t *sc = json_object_get(j, "shard_counts");
        if (!json_is_object(sc)) {
            seterr(err, errlen, "'%s': missing object \"shard_counts\" {shard name: sample count}", jp);
            json_decref(j);
            goto out;
        }
        const char *k;
        json_t *v;
        info->nshards = 0;
        info->shard_names = xcalloc(json_object_size(sc) + 1, sizeof(char *));
        info->shard_counts = xcalloc(json_object_size(sc) + 1, sizeof(int64_t));
        json_object_foreach(sc, k, v) {
            if (!json_is_integer(v) || json_integer_value(v) < 0) {
                seterr(err, errlen, "'%s': shard_counts[\"%s\"] must be a non-negative integer", jp, k);
                json_decref(j);
                goto out;
            }
            info->shard_names[info->nshards] = xstrdup(k);
            info->shard_counts[info->nshards++] = json_integer_value(v);
        }
        json_decref(j);
        rc = 0;
    } else if (stat(yp, &st) == 0) { /* older Energon versions */
        yt_node *y = yt_parse_file(yp, err, errlen);
        if (!y) goto out;
        yt_node *sc = yt_get(y, "shard_counts");
        if (!sc || sc->kind != YT_MAP) {
            seterr(err, errlen, "'%s': missing map shard_counts", yp);
            yt_free(y);
            goto out;
        }
        info->shard_names = xcalloc((size_t)sc->n + 1, sizeof(char *));
        info->shard_counts = xcalloc((size_t)sc->n + 1, sizeof(int64_t));
        for (int i = 0; i < sc->n; i++) {
            int64_t c;
            if (yt_as_int64(sc->items[i], &c) != 0 || c < 0) {
                seterr(err, errlen, "%s:%d: shard_counts[%s] must be a non-negative integer", yp, sc->items[i]->line,
                       sc->keys[i]);
                yt_free(y);
                goto out;
            }
            info->shard_names[info->nshards] = xstrdup(sc->keys[i]);
            info->shard_counts[info->nshards++] = c;
        }
        yt_free(y);
        rc = 0;
    } else
        seterr(err, errlen, "'%s': not a prepared Energon dataset (no .nv-meta/.info.json or .info.yaml)", root);
out:
    free(meta);
    free(jp);
    free(yp);
    return rc;
}

static int64_t info_count(const energon_dataset_info *info, const char *name) {
    for (int i = 0; i < info->nshards; i++)
        if (!strcmp(info->shard_names[i], name)) return info->shard_counts[i];
    return -1;
}

int energon_dataset_info_load(const char *dir, const char *split_config, energon_dataset_info *info, char *err,
                              size_t errlen) {
    memset(info, 0, sizeof *info);
    info->root = xstrdup(dir);
    if (!is_dir(dir)) {
        seterr(err, errlen, "'%s': dataset folder not found", dir);
        goto fail;
    }
    if (load_info(dir, info, err, errlen) != 0) goto fail;
    char *meta = path_join(dir, ".nv-meta");
    char *dp = path_join(meta, "dataset.yaml");
    char *sp = path_join(meta, split_config ? split_config : "split.yaml");
    free(meta);
    struct stat st;
    if (stat(dp, &st) == 0) {
        yt_node *d = yt_parse_file(dp, err, errlen);
        if (!d) {
            free(dp);
            free(sp);
            goto fail;
        }
        yt_node *c = yt_get(d, "__class__");
        if (!c) c = yt_get(d, "sample_type");
        if (c && c->kind == YT_MAP) c = yt_get(c, "__class__");
        info->dataset_class = xstrdup(c && c->kind == YT_SCALAR ? c->str : "?");
        yt_free(d);
    }
    free(dp);
    yt_node *s = yt_parse_file(sp, err, errlen);
    if (!s) {
        free(sp);
        goto fail;
    }
    yt_node *parts = yt_get(s, "split_parts"), *excl = yt_get(s, "exclude");
    if (!parts || parts->kind != YT_MAP) {
        seterr(err, errlen, "%s:%d: expected a map 'split_parts: {train: [...], ...}'", sp, s->line);
        goto fail_s;
    }
    char **ex = NULL;
    int nex = 0;
    if (excl && !yt_is_null(excl)) {
        if (excl->kind != YT_SEQ) {
            seterr(err, errlen, "%s:%d: 'exclude' must be a list of shard names", sp, excl->line);
            goto fail_s;
        }
        for (int i = 0; i < excl->n; i++) {
            if (excl->items[i]->kind != YT_SCALAR) {
                seterr(err, errlen, "%s:%d: exclude entries must be strings", sp, excl->items[i]->line);
                free_strs(ex, nex);
                goto fail_s;
            }
            char **e;
            int ne = energon_brace_expand(excl->items[i]->str, &e);
            if (ne < 0) {
                seterr(err, errlen, "%s:%d: '%s' expands to more than %d names", sp, excl->items[i]->line,
                       excl->items[i]->str, ENERGON_BRACE_MAX);
                free_strs(ex, nex);
                goto fail_s;
            }
            if (ne == 0) continue;
            ex = xrealloc(ex, (size_t)(nex + ne) * sizeof *ex);
            memcpy(ex + nex, e, (size_t)ne * sizeof *e);
            nex += ne;
            free(e);
        }
    }
    for (int i = 0; i < nex; i++) {
        if (info_count(info, ex[i]) >= 0) continue;
        /* "<shard>/<sample key>": a sample exclude, kept for the reader */
        int shard_ok = 0;
        for (int k = 0; k < info->nshards && !shard_ok; k++) {
            size_t l = strlen(info->shard_names[k]);
            shard_ok = !strncmp(ex[i], info->shard_names[k], l) && ex[i][l] == '/' && ex[i][l + 1];
        }
        if (!shard_ok) {
            seterr(err, errlen,
                   "%s: exclude entry '%s' is neither a shard listed in .info.json nor '<shard>/<sample key>' of one",
                   sp, ex[i]);
            free_strs(ex, nex);
            goto fail_s;
        }
        info->sample_excludes = xrealloc(info->sample_excludes, (size_t)(info->nsample_excludes + 1) * sizeof(char *));
        info->sample_excludes[info->nsample_excludes++] = xstrdup(ex[i]);
    }
    info->splits = xcalloc((size_t)parts->n + 1, sizeof *info->splits);
    for (int i = 0; i < parts->n; i++) {
        energon_split_info *si = &info->splits[info->nsplits++];
        si->name = xstrdup(parts->keys[i]);
        yt_node *l = parts->items[i];
        if (l->kind != YT_SEQ) {
            seterr(err, errlen, "%s:%d: split_parts.%s must be a list of shard paths", sp, l->line, parts->keys[i]);
            free_strs(ex, nex);
            goto fail_s;
        }
        for (int k = 0; k < l->n; k++) {
            if (l->items[k]->kind != YT_SCALAR) {
                seterr(err, errlen, "%s:%d: shard paths must be strings", sp, l->items[k]->line);
                free_strs(ex, nex);
                goto fail_s;
            }
            char **names;
            int nn = energon_brace_expand(l->items[k]->str, &names);
            if (nn < 0) {
                seterr(err, errlen, "%s:%d: '%s' expands to more than %d names", sp, l->items[k]->line,
                       l->items[k]->str, ENERGON_BRACE_MAX);
                free_strs(ex, nex);
                goto fail_s;
            }
            for (int j = 0; j < nn; j++) {
                int skip = 0;
                for (int e = 0; e < nex; e++) skip |= !strcmp(ex[e], names[j]);
                int64_t c = info_count(info, names[j]);
                if (!skip && c < 0) {
                    seterr(err, errlen, "%s:%d: shard '%s' of split '%s' is not listed in .nv-meta/.info.json", sp,
                           l->items[k]->line, names[j], si->name);
                    free_strs(names, nn);
                    free_strs(ex, nex);
                    goto fail_s;
                }
                if (skip) {
                    free(names[j]);
                    continue;
                }
                si->shards = xrealloc(si->shards, (size_t)(si->nshards + 1) * sizeof(char *));
                si->shards[si->nshards++] = names[j];
                si->samples += c;
            }
            free(names);
        }
    }
    free_strs(ex, nex);
    yt_free(s);
    free(sp);
    return 0;
fail_s:
    yt_free(s);
    free(sp);
fail:
    energon_dataset_info_free(info);
    return -1;
}

void energon_dataset_info_free(energon_dataset_info *info) {
    for (int i = 0; i < info->nsplits; i++) {
        free(info->splits[i].name);
        free_strs(info->splits[i].shards, info->splits[i].nshards);
    }
    free(info->splits);
    free_strs(info->shard_names, info->nshards);
    free(info->shard_counts);
    free_strs(info->sample_excludes, info->nsample_excludes);
    free(info->root);
    free(info->dataset_class);
    memset(info, 0, sizeof *info);
}

/* Load a shard's .tar.idx and check it against the count from .info.json and the shard's size. */
static int load_idx(const char *shard_path, int64_t expected, uint64_t **off, char *err, size_t errlen) {
    size_t n1 = strlen(shard_path) + 5;
    char *ip = xmalloc(n1);
    snprintf(ip, n1, "%s.idx", shard_path);
    size_t n;
    struct stat st;
    if (stat(shard_path, &st) != 0) {
        seterr(err, errlen, "'%s': shard missing: %s", shard_path, strerror(errno));
        free(ip);
        return -1;
    }
    if (tar_idx_read(ip, off, &n, err, errlen) != 0) {
        free(ip);
        return -1;
    }
    if ((int64_t)n != expected + 1) {
        seterr(err, errlen, "'%s' lists %zu samples but .nv-meta/.info.json says the shard has %lld", ip, n - 1,
               (long long)expected);
        goto bad;
    }
    if ((*off)[n - 1] > (uint64_t)st.st_size) {
        seterr(err, errlen, "'%s': end of data at offset %llu is past the end of '%s' (%lld bytes): truncated shard?",
               ip, (unsigned long long)(*off)[n - 1], shard_path, (long long)st.st_size);
        goto bad;
    }
    free(ip);
    return 0;
bad:
    free(*off);
    *off = NULL;
    free(ip);
    return -1;
}

int energon_check_shard(const char *shard_path, int64_t expected_count, char *err, size_t errlen) {
    uint64_t *idx = NULL, *scan = NULL;
    size_t count;
    if (load_idx(shard_path, expected_count, &idx, err, errlen) != 0) return -1;
    int rc = wds_index_shard(shard_path, &scan, &count, err, errlen);
    if (rc == 0) {
        if ((int64_t)count != expected_count)
            rc = seterr(err, errlen, "'%s' holds %zu samples, but its .tar.idx and .info.json say %lld", shard_path,
                        count, (long long)expected_count);
        for (size_t i = 0; rc == 0 && i <= count; i++)
            if (scan[i] != idx[i])
                rc = seterr(err, errlen,
                            "'%s.idx' entry %zu says offset %llu, but the shard's sample %s at offset %llu: the index "
                            "disagrees with the shard",
                            shard_path, i, (unsigned long long)idx[i], i == count ? "data ends" : "starts",
                            (unsigned long long)scan[i]);
    }
    free(idx);
    free(scan);
    return rc;
}

/* ------------------------------------------------------------------------------------------------------ RNG */

static uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static uint64_t rng_next(uint64_t *s) {
    return mix64(*s += 0x9e3779b97f4a7c15ull);
}
static uint64_t rng_below(uint64_t *s, uint64_t n) {
    return n ? rng_next(s) % n : 0;
} /* bias < n/2^64 */
static double rng_uniform(uint64_t *s) {
    return (double)(rng_next(s) >> 11) * (1.0 / 9007199254740992.0);
}
static uint64_t hash_str(uint64_t h, const char *s) {
    for (; *s; s++) h = mix64(h ^ (uint8_t)*s);
    return h;
}

/* ------------------------------------------------------------------------------------------------- sources */

typedef struct {
    int64_t idx, epoch;
} en_rec;

typedef struct {
    char *root, *split_part;
    int nshards;
    char **shard_names, **shard_paths;
    uint64_t **offsets;
    int64_t **keep;  /* per shard, NULL or the kept samples' indices into offsets (sample excludes) */
    int64_t *prefix; /* nshards + 1 cumulative counts */
    int64_t lo, n;   /* subset [lo, lo + n) of the concatenated shards */
    double weight, repetitions;
    int nsub;
    char **sub_keys, **sub_vals;
    uint64_t id;       /* hash naming the source in the RNG seeds */
    int64_t r_lo, r_n; /* this rank's range of each epoch's shuffled order */
    /* stream state */
    int64_t epoch, pos;
    int64_t *perm, perm_epoch, nslices; /* slice order of perm_epoch */
    en_rec *buf;
    int buf_n;
    uint64_t buf_rng;
} en_source;

typedef struct {
    int source;
    en_rec rec;
} en_plan;

typedef enum { SLOT_FREE, SLOT_PLANNED, SLOT_BUSY, SLOT_DONE } slot_state;
typedef struct {
    slot_state st;
    en_plan plan;
    energon_sample *sample; /* NULL with skip = 1 for a skipped sample */
    int skip;
    char *error;
} en_slot;

struct energon_reader {
    energon_options o;
    char split[64];
    int nsrc;
    en_source *src;
    int epochized;
    /* while parsing: subsets of the enclosing metadatasets and blends, outermost first (Energon applies the
     * innermost first, each a percentage of what the inner ones left) */
    const yt_node *outer_subsets[20];
    int nouter;
    uint64_t blend_rng;
    int64_t outer_epoch;
    int64_t *remaining;
    /* pending plans restored from a saved state, delivered before new ones */
    en_plan *pending;
    int npending, pending_pos;
    /* prefetch ring */
    int cap;
    en_slot *ring;
    int64_t head, tail; /* head: next to deliver; tail: next to plan */
    pthread_mutex_t mu;
    pthread_cond_t cv_work, cv_done;
    pthread_t *threads;
    int started, stop;
    int64_t skipped, delivered;
    char err[ERRLEN];
};

static void source_free(en_source *s) {
    free(s->root);
    free(s->split_part);
    free_strs(s->shard_names, s->nshards);
    free_strs(s->shard_paths, s->nshards);
    for (int i = 0; i < s->nshards; i++) free(s->offsets ? s->offsets[i] : NULL);
    free(s->offsets);
    for (int i = 0; i < s->nshards; i++) free(s->keep ? s->keep[i] : NULL);
    free(s->keep);
    free(s->prefix);
    free_strs(s->sub_keys, s->nsub);
    free_strs(s->sub_vals, s->nsub);
    free(s->perm);
    free(s->buf);
}

/* Slice order for one epoch: the same permutation on every rank (seeded by seed, source and epoch only). */
static void ensure_perm(const energon_reader *r, en_source *s, int64_t epoch) {
    if (s->perm && s->perm_epoch == epoch) return;
    int64_t S = r->o.slice_size > 0 ? r->o.slice_size : s->n;
    s->nslices = S ? (s->n + S - 1) / S : 0;
    free(s->perm);
    s->perm = xmalloc((size_t)(s->nslices ? s->nslices : 1) * sizeof *s->perm);
    for (int64_t i = 0; i < s->nslices; i++) s->perm[i] = i;
    if (r->o.slice_size > 0) {
        uint64_t g = mix64(r->o.seed ^ mix64(s->id ^ mix64((uint64_t)epoch + 0x51)));
        for (int64_t i = s->nslices - 1; i > 0; i--) {
            int64_t j = (int64_t)rng_below(&g, (uint64_t)i + 1);
            int64_t t = s->perm[i];
            s->perm[i] = s->perm[j];
            s->perm[j] = t;
        }
    }
    s->perm_epoch = epoch;
}

/* Sample at position p of the epoch's shuffled order: slices all have S samples except the last one. */
static int64_t order_at(const energon_reader *r, en_source *s, int64_t epoch, int64_t p) {
    ensure_perm(r, s, epoch);
    int64_t S = r->o.slice_size > 0 ? r->o.slice_size : s->n;
    int64_t last = s->nslices - 1, short_len = s->n - last * S;
    int64_t q = 0; /* position of the short slice in the order */
    for (int64_t i = 0; i < s->nslices; i++)
        if (s->perm[i] == last) {
            q = i;
            break;
        }
    int64_t k, off;
    if (p < q * S)
        k = p / S, off = p % S;
    else if (p < q * S + short_len)
        k = q, off = p - q * S;
    else {
        int64_t pp = p - short_len + S; /* as if the short slice were full */
        k = pp / S, off = pp % S;
    }
    return s->perm[k] * S + off;
}

static en_rec stream_next(const energon_reader *r, en_source *s) {
    if (s->pos >= s->r_n) {
        s->epoch++;
        s->pos = 0;
    }
    en_rec rec = {order_at(r, s, s->epoch, s->r_lo + s->pos), s->epoch};
    s->pos++;
    return rec;
}

/* Shuffle buffer: fill to capacity, then deliver a random entry and put the next stream sample in its place. */
static en_rec source_next(const energon_reader *r, en_source *s) {
    int B = r->o.shuffle_buffer;
    if (B <= 1) return stream_next(r, s);
    while (s->buf_n < B) s->buf[s->buf_n++] = stream_next(r, s);
    int j = (int)rng_below(&s->buf_rng, (uint64_t)B);
    en_rec out = s->buf[j];
    s->buf[j] = stream_next(r, s);
    return out;
}

static en_plan plan_next(energon_reader *r) {
    en_plan p;
    if (r->pending_pos < r->npending) return r->pending[r->pending_pos++];
    int k = 0;
    if (r->epochized) {
        int64_t total = 0;
        for (int i = 0; i < r->nsrc; i++) total += r->remaining[i];
        if (total == 0) {
            r->outer_epoch++;
            for (int i = 0; i < r->nsrc; i++)
                r->remaining[i] = (int64_t)llround(r->src[i].repetitions * (double)r->src[i].r_n);
            for (int i = 0; i < r->nsrc; i++) total += r->remaining[i];
        }
        /* draw proportionally to what is left: counts per outer epoch are exact */
        int64_t u = (int64_t)rng_below(&r->blend_rng, (uint64_t)total);
        for (k = 0; k < r->nsrc - 1 && u >= r->remaining[k]; k++) u -= r->remaining[k];
        r->remaining[k]--;
    } else if (r->nsrc > 1) {
        double u = rng_uniform(&r->blend_rng), c = 0;
        for (k = 0; k < r->nsrc - 1; k++) {
            c += r->src[k].weight;
            if (u < c) break;
        }
    }
    p.source = k;
    p.rec = source_next(r, &r->src[k]);
    return p;
}

/* ------------------------------------------------------------------------------------------------ decoding */

static const char *last_ext(const char *part) {
    const char *d = strrchr(part, '.');
    return d ? d + 1 : part;
}

static int decode_part(const energon_reader *r, const wds_part *in, energon_part *out, int *bad, char *err,
                       size_t errlen) {
    memset(out, 0, sizeof *out);
    out->name = xstrdup(in->name);
    const char *ext = last_ext(in->name);
    int is_png = !strcmp(ext, "png"), is_jpeg = !strcmp(ext, "jpg") || !strcmp(ext, "jpeg");
    if (is_png || is_jpeg) {
        uint8_t *px;
        int w, h, c;
        if ((is_png ? png_decode_mem : jpeg_decode_mem)(in->data, in->size, &px, &w, &h, &c, err, errlen) != 0)
            return -1;
        out->kind = EN_TENSOR;
        out->ndim = 3;
        out->shape[0] = h, out->shape[1] = w, out->shape[2] = c;
        size_t n = (size_t)w * (size_t)h * (size_t)c;
        if (r->o.image_float) {
            float *f = xmalloc(n * sizeof *f);
            for (size_t i = 0; i < n; i++) f[i] = px[i] * (1.0f / 255.0f);
            free(px);
            out->dtype = EN_F32, out->data = f, out->nbytes = n * sizeof *f;
        } else
            out->dtype = EN_U8, out->data = px, out->nbytes = n;
    } else if (!strcmp(ext, "npy")) {
        npy_view v;
        if (npy_parse(in->data, in->size, &v, err, errlen) != 0) return -1;
        out->kind = EN_TENSOR;
        out->ndim = v.ndim;
        memcpy(out->shape, v.shape, sizeof v.shape);
        if (!strcmp(v.descr, "|u1")) {
            out->dtype = EN_U8, out->nbytes = v.count, out->data = xmalloc(v.count ? v.count : 1);
            memcpy(out->data, v.data, v.count);
        } else {
            float *f = xmalloc((v.count ? v.count : 1) * sizeof *f);
            out->dtype = EN_F32, out->data = f, out->nbytes = v.count * sizeof *f;
            if (npy_to_f32(&v, f, err, errlen) != 0) return -1;
            for (size_t i = 0; i < v.count && !*bad; i++)
                if (!isfinite(f[i]) || fabs(f[i]) > r->o.max_abs) *bad = 1;
        }
    } else if (!strcmp(ext, "cls")) {
        char *end;
        out->kind = EN_INT;
        out->ival = strtoll((const char *)in->data, &end, 10);
        while (*end == ' ' || *end == '\n' || *end == '\r') end++;
        if (end == (char *)in->data || *end) return seterr(err, errlen, ".cls part is not an integer");
    } else if (!strcmp(ext, "json") || !strcmp(ext, "txt")) {
        out->kind = EN_STRING;
        out->data = xmalloc(in->size + 1);
        memcpy(out->data, in->data, in->size);
        ((char *)out->data)[in->size] = 0;
        out->nbytes = in->size;
    } else {
        out->kind = EN_BYTES;
        out->data = xmalloc(in->size ? in->size : 1);
        memcpy(out->data, in->data, in->size);
        out->nbytes = in->size;
    }
    return 0;
}

void energon_sample_free(energon_sample *s) {
    if (!s) return;
    for (int i = 0; i < s->nparts; i++) {
        free(s->parts[i].name);
        free(s->parts[i].data);
    }
    free(s->parts);
    free(s->key);
    free(s);
}

const energon_part *energon_sample_part(const energon_sample *s, const char *name) {
    for (int i = 0; i < s->nparts; i++)
        if (!strcmp(s->parts[i].name, name)) return &s->parts[i];
    return NULL;
}

/* Per-thread open shard, reused while consecutive samples come from the same shard. */
typedef struct {
    tar_reader tr;
    const char *path;
} shard_cache;

static void load_sample(energon_reader *r, shard_cache *cache, en_slot *slot) {
    en_source *s = &r->src[slot->plan.source];
    int64_t g = s->lo + slot->plan.rec.idx;
    int lo = 0, hi = s->nshards - 1;
    while (lo < hi) { /* shard k with prefix[k] <= g < prefix[k + 1] */
        int mid = (lo + hi + 1) / 2;
        if (s->prefix[mid] <= g)
            lo = mid;
        else
            hi = mid - 1;
    }
    int64_t local = g - s->prefix[lo];
    if (s->keep && s->keep[lo]) local = s->keep[lo][local];
    char err[ERRLEN];
    if (cache->path != s->shard_paths[lo]) {
        if (cache->path) tar_close(&cache->tr);
        cache->path = NULL;
        if (tar_open(&cache->tr, s->shard_paths[lo]) != 0) {
            slot->error = xstrdup(cache->tr.err);
            tar_close(&cache->tr);
            return;
        }
        cache->path = s->shard_paths[lo];
    }
    wds_sample ws;
    if (wds_read_sample(&cache->tr, s->offsets[lo][local], s->offsets[lo][local + 1], &ws) != 0) {
        snprintf(err, sizeof err, "%s (sample %lld of the shard, per '%s.idx')", cache->tr.err, (long long)local,
                 s->shard_paths[lo]);
        slot->error = xstrdup(err);
        return;
    }
    energon_sample *out = xcalloc(1, sizeof *out);
    out->key = ws.key;
    ws.key = NULL;
    out->shard = s->shard_names[lo];
    out->dataset = s->root;
    out->source = slot->plan.source;
    out->index = slot->plan.rec.idx;
    out->epoch = slot->plan.rec.epoch;
    out->nsubflavors = s->nsub;
    out->subflavor_keys = s->sub_keys;
    out->subflavor_values = s->sub_vals;
    out->parts = xcalloc((size_t)ws.nparts + 1, sizeof *out->parts);
    int bad = 0;
    for (int i = 0; i < ws.nparts; i++) {
        out->nparts++;
        if (decode_part(r, &ws.parts[i], &out->parts[i], &bad, err, sizeof err) != 0) {
            char msg[ERRLEN + 512];
            snprintf(msg, sizeof msg, "'%s': sample '%s' at offset %llu, part '%s': %s", s->shard_paths[lo], out->key,
                     (unsigned long long)s->offsets[lo][local], ws.parts[i].name, err);
            slot->error = xstrdup(msg);
            energon_sample_free(out);
            wds_sample_free(&ws);
            return;
        }
    }
    wds_sample_free(&ws);
    if (bad) {
        if (!r->o.quiet)
            dfm_warn("skipping sample '%s' of '%s' (source %d): NaN/Inf or |x| > %g in a tensor", out->key,
                     s->shard_paths[lo], slot->plan.source, r->o.max_abs);
        energon_sample_free(out);
        slot->skip = 1;
        return;
    }
    slot->sample = out;
}

static void *worker_main(void *arg) {
    energon_reader *r = arg;
    shard_cache cache = {0};
    pthread_mutex_lock(&r->mu);
    for (;;) {
        en_slot *job = NULL;
        for (int64_t i = r->head; i < r->tail; i++) /* oldest planned slot first */
            if (r->ring[i % r->cap].st == SLOT_PLANNED) {
                job = &r->ring[i % r->cap];
                break;
            }
        if (!job) {
            if (r->stop) break;
            pthread_cond_wait(&r->cv_work, &r->mu);
            continue;
        }
        job->st = SLOT_BUSY;
        pthread_mutex_unlock(&r->mu);
        load_sample(r, &cache, job);
        pthread_mutex_lock(&r->mu);
        job->st = SLOT_DONE;
        pthread_cond_broadcast(&r->cv_done);
    }
    pthread_mutex_unlock(&r->mu);
    if (cache.path) tar_close(&cache.tr);
    return NULL;
}

/* Top the ring up with planned samples (caller holds the lock when workers run). */
static void fill_ring(energon_reader *r) {
    while (r->tail - r->head < r->cap) {
        en_slot *s = &r->ring[r->tail % r->cap];
        memset(s, 0, sizeof *s);
        s->plan = plan_next(r);
        s->st = SLOT_PLANNED;
        r->tail++;
    }
}

int energon_next(energon_reader *r, energon_sample **out) {
    *out = NULL;
    if (r->err[0]) return -1;
    if (!r->started) {
        r->started = 1;
        if (r->o.num_workers > 0) {
            r->threads = xcalloc((size_t)r->o.num_workers, sizeof *r->threads);
            for (int i = 0; i < r->o.num_workers; i++)
                if (pthread_create(&r->threads[i], NULL, worker_main, r) != 0)
                    dfm_die("cannot start data loader thread %d of %d", i, r->o.num_workers);
        }
    }
    static __thread shard_cache inline_cache; /* num_workers == 0: decode here */
    for (;;) {
        en_slot *s;
        if (r->o.num_workers > 0) {
            pthread_mutex_lock(&r->mu);
            fill_ring(r);
            pthread_cond_broadcast(&r->cv_work);
            s = &r->ring[r->head % r->cap];
            while (s->st != SLOT_DONE) pthread_cond_wait(&r->cv_done, &r->mu);
            pthread_mutex_unlock(&r->mu);
        } else {
            fill_ring(r);
            s = &r->ring[r->head % r->cap];
            load_sample(r, &inline_cache, s);
            if (inline_cache.path) { /* not kept across calls: the reader may be closed in between */
                tar_close(&inline_cache.tr);
                inline_cache.path = NULL;
            }
        }
        if (r->o.num_workers > 0) pthread_mutex_lock(&r->mu);
        r->head++;
        s->st = SLOT_FREE;
        if (r->o.num_workers > 0) pthread_mutex_unlock(&r->mu);
        if (s->error) {
            snprintf(r->err, sizeof r->err, "%s", s->error);
            free(s->error);
            s->error = NULL;
            return -1;
        }
        if (s->skip) {
            r->skipped++;
            continue;
        }
        r->delivered++;
        *out = s->sample;
        s->sample = NULL;
        return 0;
    }
}

const char *energon_error(const energon_reader *r) {
    return r->err;
}
int energon_num_sources(const energon_reader *r) {
    return r->nsrc;
}
int64_t energon_skipped(const energon_reader *r) {
    return r->skipped;
}

energon_source_info energon_source(const energon_reader *r, int i) {
    energon_source_info si = {r->src[i].root,        r->src[i].split_part, r->src[i].weight,
                              r->src[i].repetitions, r->src[i].n,          r->src[i].r_n};
    return si;
}

/* ------------------------------------------------------------------------------------------ opening sources */

typedef struct {
    char **keys, **vals;
    int n;
} kvlist;

static void kv_set(kvlist *kv, const char *k, const char *v) {
    for (int i = 0; i < kv->n; i++)
        if (!strcmp(kv->keys[i], k)) {
            free(kv->vals[i]);
            kv->vals[i] = xstrdup(v);
            return;
        }
    kv->keys = xrealloc(kv->keys, (size_t)(kv->n + 1) * sizeof(char *));
    kv->vals = xrealloc(kv->vals, (size_t)(kv->n + 1) * sizeof(char *));
    kv->keys[kv->n] = xstrdup(k);
    kv->vals[kv->n++] = xstrdup(v);
}

static kvlist kv_copy(const kvlist *a) {
    kvlist c = {0};
    for (int i = 0; i < a->n; i++) kv_set(&c, a->keys[i], a->vals[i]);
    return c;
}

static void kv_free(kvlist *kv) {
    free_strs(kv->keys, kv->n);
    free_strs(kv->vals, kv->n);
    memset(kv, 0, sizeof *kv);
}

/* subset bound: "25%" of n, or an absolute sample count */
static int subset_bound(const yt_node *v, int64_t n, int64_t *out, char *err, size_t errlen) {
    if (!v || v->kind != YT_SCALAR)
        return seterr(err, errlen, "%s:%d: subset range entries must be numbers or percentages", v ? v->file : "?",
                      v ? v->line : 0);
    size_t l = strlen(v->str);
    char *end;
    double x = strtod(v->str, &end);
    if (l && v->str[l - 1] == '%' && end == v->str + l - 1)
        *out = (int64_t)llround(x / 100.0 * (double)n);
    else if (*end == 0 && end != v->str && x == floor(x))
        *out = (int64_t)x;
    else
        return seterr(err, errlen, "%s:%d: bad subset bound '%s' (use '50%%' or a sample count)", v->file, v->line,
                      v->str);
    if (*out < 0 || *out > n)
        return seterr(err, errlen, "%s:%d: subset bound '%s' is outside the dataset's %lld samples", v->file, v->line,
                      v->str, (long long)n);
    return 0;
}

/* Drop the samples of shard i named by "<shard>/<key>" excludes: read each sample's first member header to get
 * its key. Returns the number of samples kept, or -1 with err set. used[k] is set for each exclude that hit. */
static int64_t apply_sample_excludes(en_source *s, int i, int64_t c, const energon_dataset_info *info, char *used,
                                     char *err, size_t errlen) {
    const char *shard = s->shard_names[i];
    size_t sl = strlen(shard);
    int any = 0;
    for (int k = 0; k < info->nsample_excludes && !any; k++)
        any = !strncmp(info->sample_excludes[k], shard, sl) && info->sample_excludes[k][sl] == '/';
    if (!any) return c;
    tar_reader tr;
    if (tar_open(&tr, s->shard_paths[i]) != 0) {
        seterr(err, errlen, "%s", tr.err);
        tar_close(&tr);
        return -1;
    }
    if (!s->keep) s->keep = xcalloc((size_t)s->nshards, sizeof(int64_t *));
    int64_t *keep = xmalloc((size_t)(c ? c : 1) * sizeof *keep), kept = 0;
    for (int64_t j = 0; j < c; j++) {
        tar_member m;
        size_t kl;
        const char *part;
        if (tar_seek(&tr, s->offsets[i][j]) != 0 || tar_next(&tr, &m) != 1 || !wds_split_name(m.name, &kl, &part)) {
            seterr(err, errlen, "'%s': no sample member at offset %llu (sample %lld, per '%s.idx')%s%s",
                   s->shard_paths[i], (unsigned long long)s->offsets[i][j], (long long)j, s->shard_paths[i],
                   tr.err[0] ? ": " : "", tr.err);
            tar_close(&tr);
            free(keep);
            return -1;
        }
        int drop = 0;
        for (int k = 0; k < info->nsample_excludes; k++) {
            const char *e = info->sample_excludes[k];
            if (!strncmp(e, shard, sl) && e[sl] == '/' && strlen(e + sl + 1) == kl && !strncmp(e + sl + 1, m.name, kl))
                drop = used[k] = 1;
        }
        if (!drop) keep[kept++] = j;
    }
    tar_close(&tr);
    s->keep[i] = keep;
    return kept;
}

static int add_source(energon_reader *r, const char *root, const char *split_part, const char *split_config,
                      const yt_node *subset, const kvlist *sub, double weight, double reps, char *err, size_t errlen) {
    energon_dataset_info info;
    if (energon_dataset_info_load(root, split_config, &info, err, errlen) != 0) return -1;
    energon_split_info *si = NULL;
    for (int i = 0; i < info.nsplits; i++)
        if (!strcmp(info.splits[i].name, split_part)) si = &info.splits[i];
    if (!si || si->nshards == 0) {
        seterr(err, errlen, "'%s/.nv-meta/%s': split part '%s' %s", root, split_config ? split_config : "split.yaml",
               split_part, si ? "has no shards" : "is not defined");
        energon_dataset_info_free(&info);
        return -1;
    }
    r->src = xrealloc(r->src, (size_t)(r->nsrc + 1) * sizeof *r->src);
    en_source *s = &r->src[r->nsrc++];
    memset(s, 0, sizeof *s);
    s->root = xstrdup(root);
    s->split_part = xstrdup(split_part);
    s->nshards = si->nshards;
    s->shard_names = xcalloc((size_t)si->nshards, sizeof(char *));
    s->shard_paths = xcalloc((size_t)si->nshards, sizeof(char *));
    s->offsets = xcalloc((size_t)si->nshards, sizeof(uint64_t *));
    s->prefix = xcalloc((size_t)si->nshards + 1, sizeof(int64_t));
    char *used = xcalloc((size_t)info.nsample_excludes + 1, 1);
    for (int i = 0; i < si->nshards; i++) {
        s->shard_names[i] = xstrdup(si->shards[i]);
        s->shard_paths[i] = path_join(root, si->shards[i]);
        int64_t c = info_count(&info, si->shards[i]);
        if (load_idx(s->shard_paths[i], c, &s->offsets[i], err, errlen) != 0) {
            energon_dataset_info_free(&info);
            free(used);
            return -1;
        }
        if (info.nsample_excludes) {
            int64_t kept = apply_sample_excludes(s, i, c, &info, used, err, errlen);
            if (kept < 0) {
                energon_dataset_info_free(&info);
                free(used);
                return -1;
            }
            c = kept;
        }
        s->prefix[i + 1] = s->prefix[i] + c;
    }
    /* Energon ignores sample excludes that name no sample of the split's shards; say so */
    for (int k = 0; k < info.nsample_excludes; k++) {
        int mine = 0; /* excludes of shards in other splits are not this source's business */
        for (int i = 0; i < s->nshards && !mine; i++) {
            size_t l = strlen(s->shard_names[i]);
            mine = !strncmp(info.sample_excludes[k], s->shard_names[i], l) && info.sample_excludes[k][l] == '/';
        }
        if (mine && !used[k])
            dfm_warn("'%s/.nv-meta/%s': exclude entry '%s' names no sample of split '%s' (ignored, as Energon does)",
                     root, split_config ? split_config : "split.yaml", info.sample_excludes[k], split_part);
    }
    free(used);
    energon_dataset_info_free(&info);
    int64_t total = s->prefix[s->nshards], lo = 0, hi = total;
    if (subset) {
        const yt_node *range = yt_get(subset, "range");
        if (!range || range->kind != YT_SEQ || range->n != 2)
            return seterr(err, errlen, "%s:%d: subset needs 'range: [begin, end]'", subset->file, subset->line);
        if (subset_bound(range->items[0], total, &lo, err, errlen) ||
            subset_bound(range->items[1], total, &hi, err, errlen))
            return -1;
        if (hi <= lo)
            return seterr(err, errlen, "%s:%d: empty subset range [%lld, %lld)", range->file, range->line,
                          (long long)lo, (long long)hi);
    }
    for (int k = r->nouter - 1; k >= 0; k--) {
        const yt_node *range = yt_get(r->outer_subsets[k], "range");
        int64_t a, b, n = hi - lo;
        for (int j = 0; j < 2; j++) {
            const yt_node *v = range->items[j];
            size_t l = strlen(v->str);
            if (!l || v->str[l - 1] != '%')
                return seterr(err, errlen,
                              "%s:%d: subset bound '%s' on a nested metadataset or blend must be a percentage "
                              "(absolute sample indices are allowed next to a dataset path only, as in Energon)",
                              v->file, v->line, v->str);
        }
        if (subset_bound(range->items[0], n, &a, err, errlen) || subset_bound(range->items[1], n, &b, err, errlen))
            return -1;
        if (b <= a)
            return seterr(err, errlen,
                          "%s:%d: subset range leaves no samples of '%s' split '%s' ([%lld, %lld) of %lld)",
                          range->file, range->line, root, split_part, (long long)a, (long long)b, (long long)n);
        hi = lo + b;
        lo = lo + a;
    }
    s->lo = lo;
    s->n = hi - lo;
    if (s->n < r->o.dp_size)
        return seterr(err, errlen, "'%s' split '%s' has %lld samples, fewer than the %d data-parallel ranks", root,
                      split_part, (long long)s->n, r->o.dp_size);
    s->weight = weight;
    s->repetitions = reps;
    kvlist c = kv_copy(sub);
    s->sub_keys = c.keys, s->sub_vals = c.vals, s->nsub = c.n;
    s->id = hash_str(hash_str(0x1234567ull + (uint64_t)r->nsrc, root), split_part);
    s->r_lo = s->n * r->o.dp_rank / r->o.dp_size;
    s->r_n = s->n * (r->o.dp_rank + 1) / r->o.dp_size - s->r_lo;
    s->perm_epoch = -1;
    s->buf = xcalloc((size_t)(r->o.shuffle_buffer > 1 ? r->o.shuffle_buffer : 1), sizeof *s->buf);
    s->buf_rng = mix64(r->o.seed ^ mix64(s->id ^ mix64(0xb0f + (uint64_t)r->o.dp_rank)));
    return 0;
}

static int parse_node(energon_reader *r, const yt_node *n, const char *base, const char *split, double weight,
                      const kvlist *sub, int depth, char *err, size_t errlen);

/* A metadataset file: resolve split `split` of it with the given weight. */
static int open_metadataset(energon_reader *r, const char *path, const char *split, double weight, const kvlist *sub,
                            int depth, char *err, size_t errlen) {
    if (depth > 16) return seterr(err, errlen, "'%s': metadatasets nested more than 16 deep (a cycle?)", path);
    yt_node *y = yt_parse_file(path, err, errlen);
    if (!y) return -1;
    int rc = -1;
    yt_node *cls = yt_get(y, "__class__"), *splits = yt_get(y, "splits");
    if (!cls || cls->kind != YT_SCALAR || strcmp(cls->str, "MetadatasetV2")) {
        seterr(err, errlen, "%s:%d: expected '__class__: MetadatasetV2'", path, cls ? cls->line : y->line);
        goto out;
    }
    if (!splits || splits->kind != YT_MAP) {
        seterr(err, errlen, "%s:%d: expected a map 'splits: {train: ..., val: ...}'", path, y->line);
        goto out;
    }
    for (int i = 0; i < y->n; i++)
        if (strcmp(y->keys[i], "__class__") && strcmp(y->keys[i], "__module__") && strcmp(y->keys[i], "splits")) {
            seterr(err, errlen, "%s:%d: unknown key '%s' (expected __module__, __class__, splits)", path,
                   y->items[i]->line, y->keys[i]);
            goto out;
        }
    yt_node *sn = yt_get(splits, split);
    if (!sn) {
        seterr(err, errlen, "%s:%d: no split '%s' under 'splits'", path, splits->line, split);
        goto out;
    }
    char *base = dir_of(path);
    rc = parse_node(r, sn, base, split, weight, sub, depth, err, errlen);
    free(base);
out:
    yt_free(y);
    return rc;
}

static int read_subflavors(const yt_node *n, kvlist *kv, char *err, size_t errlen) {
    if (!n) return 0;
    if (n->kind != YT_MAP) return seterr(err, errlen, "%s:%d: subflavors must be a map", n->file, n->line);
    for (int i = 0; i < n->n; i++) {
        if (n->items[i]->kind != YT_SCALAR)
            return seterr(err, errlen, "%s:%d: subflavor '%s' must be a scalar", n->file, n->items[i]->line,
                          n->keys[i]);
        kv_set(kv, n->keys[i], n->items[i]->str);
    }
    return 0;
}

static int parse_blend(energon_reader *r, const yt_node *list, int epochized, const char *base, const char *split,
                       double weight, const kvlist *sub, int depth, char *err, size_t errlen) {
    const char *what = epochized ? "blend_epochized" : "blend";
    if (list->kind != YT_SEQ || list->n == 0)
        return seterr(err, errlen, "%s:%d: %s must be a non-empty list", list->file, list->line, what);
    if (epochized && (depth > 0 || r->nsrc > 0))
        return seterr(err, errlen, "%s:%d: blend_epochized is supported at the top of a split only", list->file,
                      list->line);
    double total = 0;
    double *w = xcalloc((size_t)list->n, sizeof *w);
    for (int i = 0; i < list->n; i++) {
        const yt_node *e = list->items[i];
        const yt_node *wn = yt_get(e, epochized ? "repetitions" : "weight");
        w[i] = 1.0;
        if (e->kind != YT_MAP) {
            free(w);
            return seterr(err, errlen, "%s:%d: %s entries must be maps", e->file, e->line, what);
        }
        if (wn && (yt_as_double(wn, &w[i]) != 0 || !(w[i] > 0) || !isfinite(w[i]))) {
            free(w);
            return seterr(err, errlen, "%s:%d: %s must be a positive number, got '%s'", wn->file, wn->line,
                          epochized ? "repetitions" : "weight", wn->kind == YT_SCALAR ? wn->str : "?");
        }
        if (!epochized && yt_get(e, "repetitions")) {
            free(w);
            return seterr(err, errlen, "%s:%d: 'repetitions' belongs in blend_epochized, use 'weight' in blend",
                          e->file, e->line);
        }
        total += w[i];
    }
    for (int i = 0; i < list->n; i++) {
        int before = r->nsrc;
        if (parse_node(r, list->items[i], base, split, epochized ? 0 : weight * w[i] / total, sub, depth + 1, err,
                       errlen) != 0) {
            free(w);
            return -1;
        }
        if (epochized) {
            if (r->nsrc != before + 1) {
                free(w);
                return seterr(err, errlen, "%s:%d: blend_epochized entries must each be one dataset",
                              list->items[i]->file, list->items[i]->line);
            }
            r->src[before].repetitions = w[i];
        }
    }
    if (epochized) r->epochized = 1;
    free(w);
    return 0;
}

static int parse_node(energon_reader *r, const yt_node *n, const char *base, const char *split, double weight,
                      const kvlist *sub, int depth, char *err, size_t errlen) {
    if (n->kind != YT_MAP)
        return seterr(err, errlen, "%s:%d: expected a map with 'path', 'blend' or 'blend_epochized'", n->file, n->line);
    static const char *const known[] = {"path",        "split_part", "subset",          "subflavors",   "weight",
                                        "repetitions", "blend",      "blend_epochized", "split_config", NULL};
    for (int i = 0; i < n->n; i++) {
        int ok = 0;
        for (int k = 0; known[k]; k++) ok |= !strcmp(n->keys[i], known[k]);
        if (!ok)
            return seterr(err, errlen,
                          "%s:%d: unknown key '%s' (expected path, split_part, subset, subflavors, "
                          "weight, repetitions, blend, blend_epochized, split_config)",
                          n->file, n->items[i]->line, n->keys[i]);
    }
    kvlist kv = kv_copy(sub);
    int rc;
    if ((rc = read_subflavors(yt_get(n, "subflavors"), &kv, err, errlen)) != 0) goto out;
    const yt_node *blend = yt_get(n, "blend"), *be = yt_get(n, "blend_epochized"), *path = yt_get(n, "path");
    if (!!blend + !!be + !!path != 1) {
        rc = seterr(err, errlen, "%s:%d: give exactly one of 'path', 'blend', 'blend_epochized'", n->file, n->line);
        goto out;
    }
    const yt_node *subset = yt_get(n, "subset");
    if (subset) {
        const yt_node *range = yt_get(subset, "range");
        if (subset->kind != YT_MAP || !range || range->kind != YT_SEQ || range->n != 2 ||
            range->items[0]->kind != YT_SCALAR || range->items[1]->kind != YT_SCALAR) {
            rc = seterr(err, errlen, "%s:%d: subset needs 'range: [begin, end]'", subset->file, subset->line);
            goto out;
        }
    }
    if (blend || be) {
        if (subset && r->nouter == (int)(sizeof r->outer_subsets / sizeof *r->outer_subsets)) {
            rc = seterr(err, errlen, "%s:%d: subsets nested too deep", subset->file, subset->line);
            goto out;
        }
        if (subset) r->outer_subsets[r->nouter++] = subset;
        rc = parse_blend(r, blend ? blend : be, be != NULL, base, split, weight, &kv, depth, err, errlen);
        if (subset) r->nouter--;
        goto out;
    }
    if (path->kind != YT_SCALAR) {
        rc = seterr(err, errlen, "%s:%d: 'path' must be a string", path->file, path->line);
        goto out;
    }
    const yt_node *sp = yt_get(n, "split_part"), *sc = yt_get(n, "split_config");
    const char *part = sp && sp->kind == YT_SCALAR ? sp->str : split;
    char *full = path_join(base, path->str);
    if (is_dir(full))
        rc = add_source(r, full, part, sc && sc->kind == YT_SCALAR ? sc->str : NULL, yt_get(n, "subset"), &kv, weight,
                        0, err, errlen);
    else {
        struct stat st;
        if (stat(full, &st) != 0)
            rc = seterr(err, errlen, "%s:%d: path '%s' (resolved to '%s') does not exist", path->file, path->line,
                        path->str, full);
        else if (subset && r->nouter == (int)(sizeof r->outer_subsets / sizeof *r->outer_subsets))
            rc = seterr(err, errlen, "%s:%d: subsets nested too deep", subset->file, subset->line);
        else {
            if (subset) r->outer_subsets[r->nouter++] = subset;
            rc = open_metadataset(r, full, part, weight, &kv, depth + 1, err, errlen);
            if (subset) r->nouter--;
        }
    }
    free(full);
out:
    kv_free(&kv);
    return rc;
}

void energon_options_default(energon_options *o) {
    memset(o, 0, sizeof *o);
    o->split = "train";
    o->dp_size = 1;
    o->seed = 1234;
    o->num_workers = 2;
    o->shuffle_buffer = 100;
    o->slice_size = 64;
    o->max_abs = 1e6;
}

energon_reader *energon_open(const char *path, const energon_options *opt, char *err, size_t errlen) {
    energon_reader *r = xcalloc(1, sizeof *r);
    r->o = *opt;
    if (!r->o.split) r->o.split = "train";
    snprintf(r->split, sizeof r->split, "%s", r->o.split);
    r->o.split = r->split;
    if (r->o.max_abs <= 0) r->o.max_abs = 1e6;
    if (r->o.dp_size < 1 || r->o.dp_rank < 0 || r->o.dp_rank >= r->o.dp_size) {
        seterr(err, errlen, "data-parallel rank %d of %d is invalid", r->o.dp_rank, r->o.dp_size);
        goto fail;
    }
    if (r->o.num_workers < 0 || r->o.num_workers > 256) {
        seterr(err, errlen, "num_workers %d must be in 0..256", r->o.num_workers);
        goto fail;
    }
    kvlist none = {0};
    int rc;
    if (is_dir(path))
        rc = add_source(r, path, r->split, NULL, NULL, &none, 1.0, 0, err, errlen);
    else
        rc = open_metadataset(r, path, r->split, 1.0, &none, 0, err, errlen);
    if (rc != 0) goto fail;
    if (r->nsrc == 1 && !r->epochized) r->src[0].weight = 1.0;
    r->blend_rng = mix64(r->o.seed ^ mix64(0xb1e9d + (uint64_t)r->o.dp_rank));
    r->remaining = xcalloc((size_t)r->nsrc, sizeof *r->remaining);
    r->outer_epoch = -1; /* the first plan starts outer epoch 0 */
    r->cap = r->o.prefetch > 0 ? r->o.prefetch : 2 * r->o.num_workers + 1;
    r->ring = xcalloc((size_t)r->cap, sizeof *r->ring);
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv_work, NULL);
    pthread_cond_init(&r->cv_done, NULL);
    return r;
fail:
    for (int i = 0; i < r->nsrc; i++) source_free(&r->src[i]);
    free(r->src);
    free(r);
    return NULL;
}

void energon_close(energon_reader *r) {
    if (!r) return;
    if (r->threads) {
        pthread_mutex_lock(&r->mu);
        r->stop = 1;
        pthread_cond_broadcast(&r->cv_work);
        pthread_mutex_unlock(&r->mu);
        for (int i = 0; i < r->o.num_workers; i++) pthread_join(r->threads[i], NULL);
        free(r->threads);
    }
    for (int i = 0; i < r->cap; i++) {
        energon_sample_free(r->ring[i].sample);
        free(r->ring[i].error);
    }
    free(r->ring);
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv_work);
    pthread_cond_destroy(&r->cv_done);
    for (int i = 0; i < r->nsrc; i++) source_free(&r->src[i]);
    free(r->src);
    free(r->remaining);
    free(r->pending);
    free(r);
}

/* -------------------------------------------------------------------------------------------------- state */

static json_t *u64_json(uint64_t v) {
    char b[32];
    snprintf(b, sizeof b, "%016llx", (unsigned long long)v);
    return json_string(b);
}

static int json_u64(json_t *j, uint64_t *v) {
    const char *s = json_string_value(j);
    if (!s) return -1;
    char *end;
    *v = strtoull(s, &end, 16);
    return *end ? -1 : 0;
}

static json_t *plan_json(const en_plan *p) {
    return json_pack("[i, I, I]", p->source, (json_int_t)p->rec.idx, (json_int_t)p->rec.epoch);
}

char *energon_state_save(const energon_reader *r) {
    energon_reader *rw = (energon_reader *)r; /* the lock is taken, nothing is changed */
    if (r->o.num_workers > 0) pthread_mutex_lock(&rw->mu);
    json_t *j = json_object();
    json_object_set_new(j, "format", json_string("dfm-energon-state-1"));
    json_object_set_new(j, "seed", u64_json(r->o.seed));
    json_object_set_new(j, "dp_rank", json_integer(r->o.dp_rank));
    json_object_set_new(j, "dp_size", json_integer(r->o.dp_size));
    json_object_set_new(j, "blend_rng", u64_json(r->blend_rng));
    json_object_set_new(j, "outer_epoch", json_integer(r->outer_epoch));
    json_object_set_new(j, "delivered", json_integer(r->delivered));
    json_object_set_new(j, "skipped", json_integer(r->skipped));
    json_t *rem = json_array(), *srcs = json_array(), *pend = json_array();
    for (int i = 0; i < r->nsrc; i++) {
        const en_source *s = &r->src[i];
        json_array_append_new(rem, json_integer(r->remaining[i]));
        json_t *buf = json_array();
        for (int k = 0; k < s->buf_n; k++)
            json_array_append_new(buf, json_pack("[I, I]", (json_int_t)s->buf[k].idx, (json_int_t)s->buf[k].epoch));
        json_array_append_new(srcs,
                              json_pack("{s:s, s:s, s:I, s:I, s:I, s:o, s:o}", "path", s->root, "split_part",
                                        s->split_part, "samples", (json_int_t)s->n, "epoch", (json_int_t)s->epoch,
                                        "pos", (json_int_t)s->pos, "buf_rng", u64_json(s->buf_rng), "buffer", buf));
    }
    /* planned but not yet delivered: restored readers deliver these first */
    for (int64_t i = r->head; i < r->tail; i++) json_array_append_new(pend, plan_json(&r->ring[i % r->cap].plan));
    for (int i = r->pending_pos; i < r->npending; i++) json_array_append_new(pend, plan_json(&r->pending[i]));
    json_object_set_new(j, "remaining", rem);
    json_object_set_new(j, "sources", srcs);
    json_object_set_new(j, "pending", pend);
    if (r->o.num_workers > 0) pthread_mutex_unlock(&rw->mu);
    char *s = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    return s;
}

int energon_state_restore(energon_reader *r, const char *text, char *err, size_t errlen) {
    if (r->started) return seterr(err, errlen, "state must be restored before the first sample is read");
    json_error_t je;
    json_t *j = json_loads(text, 0, &je);
    if (!j) return seterr(err, errlen, "loader state: invalid JSON at line %d: %s", je.line, je.text);
    int rc = -1;
    uint64_t seed, brng;
    json_t *srcs = json_object_get(j, "sources"), *rem = json_object_get(j, "remaining"),
           *pend = json_object_get(j, "pending");
    if (strcmp(json_string_value(json_object_get(j, "format")) ? json_string_value(json_object_get(j, "format")) : "",
               "dfm-energon-state-1") ||
        json_u64(json_object_get(j, "seed"), &seed) || json_u64(json_object_get(j, "blend_rng"), &brng) ||
        !json_is_array(srcs) || !json_is_array(rem) || !json_is_array(pend)) {
        seterr(err, errlen, "loader state: not a dfm Energon loader state (format dfm-energon-state-1)");
        goto out;
    }
    if (seed != r->o.seed || json_integer_value(json_object_get(j, "dp_rank")) != r->o.dp_rank ||
        json_integer_value(json_object_get(j, "dp_size")) != r->o.dp_size || (int)json_array_size(srcs) != r->nsrc ||
        (int)json_array_size(rem) != r->nsrc) {
        seterr(err, errlen,
               "loader state was saved with seed %llx, dp rank %lld of %lld and %zu sources; this reader has seed "
               "%llx, rank %d of %d and %d sources",
               (unsigned long long)seed, (long long)json_integer_value(json_object_get(j, "dp_rank")),
               (long long)json_integer_value(json_object_get(j, "dp_size")), json_array_size(srcs),
               (unsigned long long)r->o.seed, r->o.dp_rank, r->o.dp_size, r->nsrc);
        goto out;
    }
    for (int i = 0; i < r->nsrc; i++) {
        en_source *s = &r->src[i];
        json_t *js = json_array_get(srcs, (size_t)i), *buf = json_object_get(js, "buffer");
        if (json_integer_value(json_object_get(js, "samples")) != s->n || !json_is_array(buf) ||
            (int)json_array_size(buf) > (r->o.shuffle_buffer > 1 ? r->o.shuffle_buffer : 0) ||
            json_u64(json_object_get(js, "buf_rng"), &s->buf_rng)) {
            seterr(err, errlen,
                   "loader state: source %d ('%s') does not match this dataset (sample count or shuffle "
                   "buffer size differ)",
                   i, s->root);
            goto out;
        }
        s->epoch = json_integer_value(json_object_get(js, "epoch"));
        s->pos = json_integer_value(json_object_get(js, "pos"));
        s->buf_n = (int)json_array_size(buf);
        for (int k = 0; k < s->buf_n; k++) {
            json_t *e = json_array_get(buf, (size_t)k);
            s->buf[k].idx = json_integer_value(json_array_get(e, 0));
            s->buf[k].epoch = json_integer_value(json_array_get(e, 1));
        }
        r->remaining[i] = json_integer_value(json_array_get(rem, (size_t)i));
    }
    r->blend_rng = brng;
    r->outer_epoch = json_integer_value(json_object_get(j, "outer_epoch"));
    r->delivered = json_integer_value(json_object_get(j, "delivered"));
    r->skipped = json_integer_value(json_object_get(j, "skipped"));
    r->npending = (int)json_array_size(pend);
    r->pending_pos = 0;
    free(r->pending);
    r->pending = xcalloc((size_t)r->npending + 1, sizeof *r->pending);
    for (int i = 0; i < r->npending; i++) {
        json_t *e = json_array_get(pend, (size_t)i);
        en_plan *p = &r->pending[i];
        p->source = (int)json_integer_value(json_array_get(e, 0));
        p->rec.idx = json_integer_value(json_array_get(e, 1));
        p->rec.epoch = json_integer_value(json_array_get(e, 2));
        if (p->source < 0 || p->source >= r->nsrc || p->rec.idx < 0 || p->rec.idx >= r->src[p->source].n) {
            seterr(err, errlen, "loader state: pending sample %d is out of range", i);
            goto out;
        }
    }
    rc = 0;
out:
    json_decref(j);
    return rc;
}
