/* DFM's Automodel video caches (.meta pickles and torch.save files, flat or bucketed with metadata JSON), one
 * sample at a time from any on-disk video form, and the in-memory dataset built from a .meta folder. */
#include "data/video_impl.h"
#include "dfm/common.h"
#include "dfm/pickle.h"
#include "dfm/safetensors.h"
#include "dfm/video.h"

#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

void video_sample_free(video_sample *s) {
    free(s->latents), free(s->text), free(s->caption);
    memset(s, 0, sizeof *s);
}

static int is_float(st_dtype t) {
    return t == ST_F32 || t == ST_F16 || t == ST_BF16 || t == ST_F64;
}

static void dims_str(const int64_t *shape, int ndim, char *buf, size_t n) {
    size_t k = (size_t)snprintf(buf, n, "[");
    for (int d = 0; d < ndim && k < n; d++)
        k += (size_t)snprintf(buf + k, n - k, "%s%lld", d ? ", " : "", (long long)shape[d]);
    if (k < n) snprintf(buf + k, n - k, "]");
}

/* shape is [dims...] or [1, dims...]; the dims (without that 1) into out. 0 if it fits. */
static int take_dims(const int64_t *shape, int ndim, int want, int64_t *out) {
    int lead = ndim == want + 1 && shape[0] == 1;
    if (ndim != want && !lead) return -1;
    for (int d = 0; d < want; d++)
        if ((out[d] = shape[d + lead]) < 1) return -1;
    return 0;
}

/* Valid rows of text [rows, dim]: the last non-zero row + 1, at least 1 (DFM pads UMT5 output with zeros). */
static int last_nonzero_row(const float *x, int64_t rows, int64_t dim) {
    for (int64_t r = rows - 1; r > 0; r--)
        for (int64_t j = 0; j < dim; j++)
            if (x[r * dim + j] != 0.0f) return (int)r + 1;
    return 1;
}

/* Sizes a sample may have before anything is allocated for it. */
static int sane_sizes(const video_sample *s) {
    return s->c * s->t * s->h * s->w <= (1ll << 31) && s->rows <= (1 << 24) && s->dim <= (1 << 20);
}

static int path_exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

static int has_suffix(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a > b && !strcmp(s + a - b, suf);
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* ------------------------------------------------------------------------------------------------ .meta */

/* The value under `key` in v or in the dicts nested in it (depth-first, at most 4 levels: DFM nests metadata). */
static const pk_value *find_key(const pk_value *v, const char *key, int depth) {
    if (!v || depth > 4) return NULL;
    if (v->kind == PK_DICT) {
        const pk_value *hit = pk_dict_get(v, key);
        if (hit) return hit;
    }
    if (v->kind != PK_DICT && v->kind != PK_LIST && v->kind != PK_TUPLE) return NULL;
    for (int i = 0; i < v->n; i++) {
        const pk_value *r = find_key(v->items[i], key, depth + 1);
        if (r) return r;
    }
    return NULL;
}

/* The float array `key` of a .meta dict as float32 with `want` dims (a leading 1 allowed). */
static float *meta_array(const char *path, const pk_value *root, const char *key, int want, const char *layout,
                         int64_t *dims, char *err, size_t errlen) {
    const pk_value *v = pk_find_array(root, key);
    if (!v) {
        size_t k = (size_t)snprintf(err, errlen, "'%s': no tensor '%s' %s (top-level keys:", path, key, layout);
        for (int i = 0; root->kind == PK_DICT && i < root->n && k < errlen; i++)
            k += (size_t)snprintf(err + k, errlen - k, " %s",
                                  root->keys[i]->kind == PK_STR ? root->keys[i]->s : pk_kind_name(root->keys[i]->kind));
        if (k < errlen) snprintf(err + k, errlen - k, ")");
        return NULL;
    }
    const pk_array *a = pk_as_array(v);
    char sh[160];
    dims_str(a->shape, a->ndim, sh, sizeof sh);
    if (!is_float(a->dtype)) {
        snprintf(err, errlen, "'%s': '%s' %s has dtype %s; expected a float type", path, key, sh,
                 pk_dtype_name(a->dtype));
        return NULL;
    }
    if (take_dims(a->shape, a->ndim, want, dims) != 0) {
        snprintf(err, errlen, "'%s': '%s' has shape %s; expected %s or [1, %s", path, key, sh, layout, layout + 1);
        return NULL;
    }
    if (a->numel > (1ll << 31)) {
        snprintf(err, errlen, "'%s': '%s' %s is too large for an in-memory sample", path, key, sh);
        return NULL;
    }
    float *out = xalloc_floats((size_t)(a->numel ? a->numel : 1));
    if (pk_array_to_f32(a, out, err, errlen) != 0) {
        free(out);
        return NULL;
    }
    return out;
}

int video_meta_read(const char *path, video_sample *s, char *err, size_t errlen) {
    memset(s, 0, sizeof *s);
    pk_doc *d = pk_load_file(path, PK_ANY, err, errlen);
    if (!d) return -1;
    int rc = -1;
    const pk_value *root = d->root;
    if (root->kind != PK_DICT) {
        snprintf(err, errlen, "'%s' (%s) holds a %s; expected a dict with video_latents and text_embeddings", path,
                 pk_format_name(d->format), pk_kind_name(root->kind));
        goto out;
    }
    int64_t ld[4], td[2];
    if (!(s->latents = meta_array(path, root, "video_latents", 4, "[C, T, H, W]", ld, err, errlen))) goto out;
    if (!(s->text = meta_array(path, root, "text_embeddings", 2, "[L, D]", td, err, errlen))) goto out;
    s->c = ld[0], s->t = ld[1], s->h = ld[2], s->w = ld[3], s->rows = td[0], s->dim = td[1];
    /* the valid length: the file's own word where it has one, else the zero padding tells */
    const pk_value *tl = find_key(root, "text_len", 0), *mask = pk_find_array(root, "text_mask");
    if (tl && tl->kind != PK_NONE) {
        if (tl->kind != PK_INT || tl->i < 1 || tl->i > s->rows) {
            snprintf(err, errlen, "'%s': 'text_len' must be a whole number from 1 to the %lld rows of text_embeddings",
                     path, (long long)s->rows);
            goto out;
        }
        s->text_len = (int)tl->i;
    } else if (mask) {
        const pk_array *m = pk_as_array(mask);
        float *mf = xalloc_floats((size_t)(m->numel ? m->numel : 1));
        if (pk_array_to_f32(m, mf, err, errlen) != 0) {
            free(mf);
            goto out;
        }
        int64_t last = 0;
        for (int64_t i = 0; i < m->numel; i++)
            if (mf[i] != 0.0f) last = i + 1;
        free(mf);
        if (m->numel != s->rows || last < 1) {
            snprintf(err, errlen,
                     "'%s': 'text_mask' has %lld entries (%lld set); expected one per row of text_embeddings (%lld), "
                     "at least one set",
                     path, (long long)m->numel, (long long)last, (long long)s->rows);
            goto out;
        }
        s->text_len = (int)last;
    } else
        s->text_len = last_nonzero_row(s->text, s->rows, s->dim);
    const pk_value *cap = find_key(root, "caption", 0);
    if (!cap || cap->kind != PK_STR) cap = find_key(root, "prompt", 0);
    if (cap && cap->kind == PK_STR) s->caption = xstrdup(cap->s);
    rc = 0;
out:
    pk_doc_free(d);
    if (rc != 0) video_sample_free(s);
    return rc;
}

/* Names in dir ending in suffix, sorted, as "<prefix><name>". */
static void list_suffix(const char *dir, const char *prefix, const char *suffix, char ***names, int *n) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.' || !has_suffix(e->d_name, suffix)) continue;
        size_t l = strlen(prefix) + strlen(e->d_name) + 1;
        char *p = xmalloc(l);
        snprintf(p, l, "%s%s", prefix, e->d_name);
        *names = xrealloc(*names, (size_t)(*n + 1) * sizeof **names);
        (*names)[(*n)++] = p;
    }
    closedir(d);
}

/* A bucketed cache: metadata.json {"shards": ["metadata_shard_0000.json", ...], ...}; each shard a JSON list of
 * {"cache_file": ".../WxH/<hash>.meta", "bucket_resolution": [W, H], ...} (facts from NeMo Automodel's
 * preprocessing tool). cache_file is usually an absolute path on the machine that wrote it; Automodel requires
 * it inside the cache folder, so it is taken by its last two components, relative to dir: a moved cache reads and
 * nothing outside the folder is opened. */
static int list_cache(const char *dir, const char *meta_json, char ***paths, int *n, char *err, size_t errlen) {
    json_error_t je;
    json_t *m = json_load_file(meta_json, 0, &je);
    if (!m) {
        snprintf(err, errlen, "'%s': %s (line %d)", meta_json, je.text, je.line);
        return -1;
    }
    char **shards = NULL;
    int ns = 0, rc = -1;
    json_t *sh = json_object_get(m, "shards");
    if (sh) {
        if (!json_is_array(sh)) {
            snprintf(err, errlen, "'%s': \"shards\" must be a list of metadata_shard_*.json names", meta_json);
            goto out;
        }
        for (size_t i = 0; i < json_array_size(sh); i++) {
            const char *nm = json_string_value(json_array_get(sh, i));
            if (!nm || strchr(nm, '/') || !strcmp(nm, "..")) {
                snprintf(err, errlen, "'%s': \"shards\"[%zu] must be a file name in the cache folder", meta_json, i);
                goto out;
            }
            shards = xrealloc(shards, (size_t)(ns + 1) * sizeof *shards);
            shards[ns++] = xstrdup(nm);
        }
    } else { /* an index without its list: the shard files themselves */
        list_suffix(dir, "", ".json", &shards, &ns);
        int k = 0;
        for (int i = 0; i < ns; i++) {
            if (!strncmp(shards[i], "metadata_shard_", 15))
                shards[k++] = shards[i];
            else
                free(shards[i]);
        }
        ns = k;
        if (ns) qsort(shards, (size_t)ns, sizeof *shards, cmp_str);
    }
    for (int s = 0; s < ns; s++) {
        char sp[4096];
        snprintf(sp, sizeof sp, "%s/%s", dir, shards[s]);
        json_t *list = json_load_file(sp, 0, &je);
        if (!json_is_array(list)) {
            snprintf(err, errlen, "'%s': %s", sp, list ? "expected a JSON list of samples" : je.text);
            json_decref(list);
            goto out;
        }
        for (size_t i = 0; i < json_array_size(list); i++) {
            const char *cf = json_string_value(json_object_get(json_array_get(list, i), "cache_file"));
            if (!cf || !*cf) {
                snprintf(err, errlen, "'%s': entry %zu has no \"cache_file\" string", sp, i);
                json_decref(list);
                goto out;
            }
            /* last two components: WxH/<hash>.meta */
            const char *base = strrchr(cf, '/'), *parent = NULL;
            if (base) {
                for (const char *q = base - 1; q >= cf; q--)
                    if (*q == '/') {
                        parent = q + 1;
                        break;
                    }
                if (!parent) parent = cf;
                base++;
            } else
                base = parent = cf;
            char p[4096];
            snprintf(p, sizeof p, "%s/%s", dir, parent);
            if (strstr(parent, "../") || !strcmp(base, "..") || !path_exists(p)) {
                snprintf(err, errlen, "'%s': entry %zu: cache_file '%s' is not in the cache (looked for '%s')", sp, i,
                         cf, p);
                json_decref(list);
                goto out;
            }
            *paths = xrealloc(*paths, (size_t)(*n + 1) * sizeof **paths);
            (*paths)[(*n)++] = xstrdup(p);
        }
        json_decref(list);
    }
    if (*n == 0) {
        snprintf(err, errlen, "'%s': the cache lists no samples (%d metadata shards)", meta_json, ns);
        goto out;
    }
    rc = 0;
out:
    for (int i = 0; i < ns; i++) free(shards[i]);
    free(shards);
    json_decref(m);
    return rc;
}

int video_meta_list(const char *dir, char ***paths, int *n, char *err, size_t errlen) {
    *paths = NULL, *n = 0;
    struct stat st;
    errno = 0;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        snprintf(err, errlen, "'%s': not a folder (%s)", dir, errno ? strerror(errno) : "a file");
        return -1;
    }
    char mj[4096];
    snprintf(mj, sizeof mj, "%s/metadata.json", dir);
    int rc = 0;
    if (path_exists(mj))
        rc = list_cache(dir, mj, paths, n, err, errlen);
    else {
        char prefix[4096];
        snprintf(prefix, sizeof prefix, "%s/", dir);
        list_suffix(dir, prefix, ".meta", paths, n);
        if (*n == 0) { /* WxH/ bucket folders without the index */
            char **subs = NULL;
            int nsub = 0;
            list_suffix(dir, "", "", &subs, &nsub);
            for (int i = 0; i < nsub; i++) {
                char sd[4096];
                snprintf(sd, sizeof sd, "%s/%s", dir, subs[i]);
                snprintf(prefix, sizeof prefix, "%s/%s/", dir, subs[i]);
                if (stat(sd, &st) == 0 && S_ISDIR(st.st_mode)) list_suffix(sd, prefix, ".meta", paths, n);
                free(subs[i]);
            }
            free(subs);
        }
        if (*n == 0) {
            snprintf(err, errlen, "'%s': no .meta files and no metadata.json (DFM's pre-encoded video cache)", dir);
            rc = -1;
        }
    }
    if (rc != 0) {
        for (int i = 0; i < *n; i++) free((*paths)[i]);
        free(*paths);
        *paths = NULL, *n = 0;
        return -1;
    }
    qsort(*paths, (size_t)*n, sizeof **paths, cmp_str);
    return 0;
}

int video_dataset_meta(video_dataset *vd, const char *dir, int text_len, char *err, size_t errlen) {
    memset(vd, 0, sizeof *vd);
    char **paths;
    int n;
    if (video_meta_list(dir, &paths, &n, err, errlen) != 0) return -1;
    float **texts = xcalloc((size_t)n, sizeof *texts), *lat = NULL; /* latents appended in file order */
    size_t used = 0, cap = 0;
    int64_t *rows = xcalloc((size_t)n, sizeof *rows), max_rows = 0;
    int64_t *shapes4 = xcalloc((size_t)n * 4, sizeof *shapes4);
    int rc = -1;
    video_sample first = {0};
    vd->text_lens = xcalloc((size_t)n, sizeof(int));
    vd->captions = xcalloc((size_t)n, sizeof(char *));
    for (int i = 0; i < n; i++) {
        video_sample s;
        if (video_meta_read(paths[i], &s, err, errlen) != 0) goto done;
        if (!sane_sizes(&s)) {
            snprintf(err, errlen, "'%s': tensors too large for an in-memory sample", paths[i]);
            video_sample_free(&s);
            goto done;
        }
        if (i == 0)
            first = (video_sample){s.c, s.t, s.h, s.w, s.rows, s.dim, 0, NULL, NULL, NULL};
        else if (s.c != first.c || s.dim != first.dim) { /* T, H, W may differ: resolution buckets */
            snprintf(err, errlen,
                     "'%s' holds video_latents [C, T, H, W] = [%lld, %lld, %lld, %lld] with text width %lld, but '%s' "
                     "holds [%lld, %lld, %lld, %lld] with %lld: every sample must share the channels C and the text "
                     "width (T, H and W may differ: resolution buckets)",
                     paths[i], (long long)s.c, (long long)s.t, (long long)s.h, (long long)s.w, (long long)s.dim,
                     paths[0], (long long)first.c, (long long)first.t, (long long)first.h, (long long)first.w,
                     (long long)first.dim);
            video_sample_free(&s);
            goto done;
        }
        int64_t *sh = shapes4 + 4 * (size_t)i;
        sh[0] = s.c, sh[1] = s.t, sh[2] = s.h, sh[3] = s.w;
        vd->text_lens[i] = s.text_len;
        vd->captions[i] = s.caption, s.caption = NULL;
        texts[i] = s.text, s.text = NULL;
        size_t ln = (size_t)(s.c * s.t * s.h * s.w);
        if (used + ln > cap) {
            cap = used + ln > 2 * cap ? used + ln : 2 * cap;
            lat = xrealloc(lat, cap * sizeof(float));
        }
        memcpy(lat + used, s.latents, ln * sizeof(float));
        used += ln;
        rows[i] = s.rows;
        if (s.rows > max_rows) max_rows = s.rows;
        video_sample_free(&s);
    }
    vd->n = n;
    video_dataset_layout(vd, shapes4); /* the offsets are file order, as appended */
    vd->latents = xrealloc(lat, (used ? used : 1) * sizeof(float)), lat = NULL;
    vd->text_dim = (int)first.dim;
    vd->text_len = text_len > 0 ? text_len : (int)max_rows;
    size_t txt_n = (size_t)vd->text_len * vd->text_dim;
    vd->text = xalloc_floats((size_t)n * txt_n);
    for (int i = 0; i < n; i++) {
        if (vd->text_lens[i] > vd->text_len) {
            snprintf(err, errlen, "'%s': text_embeddings has %d valid rows, more than the text length %d", paths[i],
                     vd->text_lens[i], vd->text_len);
            goto done;
        }
        memcpy(vd->text + (size_t)i * txt_n, texts[i], sizeof(float) * (size_t)vd->text_lens[i] * vd->text_dim);
    }
    rc = 0;
done:
    if (rc != 0) {
        vd->n = n; /* free every caption taken so far */
        video_dataset_free(vd);
    }
    for (int i = 0; i < n; i++) free(paths[i]), free(texts[i]);
    free(paths), free(texts), free(lat), free(rows), free(shapes4);
    return rc;
}

/* ------------------------------------------------------------------------------------------- safetensors */

static float *st_array(const st_file *f, const char *name, int want, const char *layout, int64_t *dims, char *err,
                       size_t errlen) {
    const st_tensor *t = st_find(f, name);
    if (!t) {
        snprintf(err, errlen, "'%s': no tensor '%s' %s", f->path, name, layout);
        return NULL;
    }
    char sh[160];
    dims_str(t->shape, t->ndim, sh, sizeof sh);
    if (!is_float(t->dtype) || take_dims(t->shape, t->ndim, want, dims) != 0) {
        snprintf(err, errlen, "'%s': tensor '%s' is %s %s; expected a float tensor %s or [1, %s", f->path, name,
                 st_dtype_name(t->dtype), sh, layout, layout + 1);
        return NULL;
    }
    if (st_numel(t) > (1ll << 31)) {
        snprintf(err, errlen, "'%s': tensor '%s' %s is too large for an in-memory sample", f->path, name, sh);
        return NULL;
    }
    float *out = xalloc_floats((size_t)(st_numel(t) ? st_numel(t) : 1));
    st_read_f32(f, t, out);
    return out;
}

int video_safetensors_read(const char *path, video_sample *s, char *err, size_t errlen) {
    memset(s, 0, sizeof *s);
    st_file *f = st_open(path, err, errlen);
    if (!f) return -1;
    int rc = -1;
    int64_t ld[4], td[2];
    if (!(s->latents = st_array(f, "video_latents", 4, "[C, T, H, W]", ld, err, errlen))) goto out;
    if (!(s->text = st_array(f, "text_embeddings", 2, "[L, D]", td, err, errlen))) goto out;
    s->c = ld[0], s->t = ld[1], s->h = ld[2], s->w = ld[3], s->rows = td[0], s->dim = td[1];
    const char *tl = st_meta(f, "text_len"), *cap = st_meta(f, "caption");
    if (tl) {
        char *end;
        long v = strtol(tl, &end, 10);
        if (end == tl || *end || v < 1 || v > s->rows) {
            snprintf(err, errlen, "'%s': metadata text_len '%s' must be a whole number from 1 to the %lld rows", path,
                     tl, (long long)s->rows);
            goto out;
        }
        s->text_len = (int)v;
    } else
        s->text_len = last_nonzero_row(s->text, s->rows, s->dim);
    if (cap) s->caption = xstrdup(cap);
    rc = 0;
out:
    st_close(f);
    if (rc != 0) video_sample_free(s);
    return rc;
}

/* ------------------------------------------------------------------------------------------------ Energon */

/* Part p as float32 if it is a float tensor part; 1 = yes (*out malloc'ed, shape in shape/ndim), 0 = not one,
 * -1 = a .pth/.pickle part that does not parse. */
static int energon_float_part(const energon_sample *es, const energon_part *p, float **out, int64_t *shape, int *ndim,
                              char *err, size_t errlen) {
    if (p->kind == EN_TENSOR) {
        if (p->dtype != EN_F32) return 0;
        size_t n = p->nbytes / sizeof(float);
        *out = xalloc_floats(n ? n : 1);
        memcpy(*out, p->data, p->nbytes);
        *ndim = p->ndim;
        memcpy(shape, p->shape, sizeof(int64_t) * (size_t)p->ndim);
        return 1;
    }
    const char *ext = strrchr(p->name, '.');
    ext = ext ? ext + 1 : p->name;
    int torch = !strcmp(ext, "pth") || !strcmp(ext, "pt"), pick = !strcmp(ext, "pickle") || !strcmp(ext, "pkl");
    if (p->kind != EN_BYTES || (!torch && !pick)) return 0;
    char name[1024];
    snprintf(name, sizeof name, "%s/%s.%s", es->shard, es->key, p->name);
    pk_doc *d = pk_load_mem(p->data, p->nbytes, name, torch ? PK_TORCH : PK_PICKLE, err, errlen);
    if (!d) return -1;
    const pk_array *a = pk_as_array(d->root);
    int rc = 0;
    if (a && is_float(a->dtype) && a->ndim <= 8 && a->numel <= (1ll << 31)) {
        *out = xalloc_floats((size_t)(a->numel ? a->numel : 1));
        if (pk_array_to_f32(a, *out, err, errlen) != 0) {
            free(*out), *out = NULL;
            rc = -1;
        } else {
            *ndim = a->ndim;
            memcpy(shape, a->shape, sizeof(int64_t) * (size_t)a->ndim);
            rc = 1;
        }
    }
    pk_doc_free(d);
    return rc;
}

int video_energon_sample_read(const energon_sample *es, video_sample *s, char *err, size_t errlen) {
    memset(s, 0, sizeof *s);
    for (int i = 0; i < es->nparts && (!s->latents || !s->text); i++) {
        float *x = NULL;
        int64_t shape[8], dims[4];
        int nd = 0, got = energon_float_part(es, &es->parts[i], &x, shape, &nd, err, errlen);
        if (got < 0) {
            char inner[1024];
            snprintf(inner, sizeof inner, "%s", err);
            snprintf(err, errlen, "energon sample '%s' in shard '%s', part '%s': %s", es->key, es->shard,
                     es->parts[i].name, inner);
            video_sample_free(s);
            return -1;
        }
        if (!got) continue;
        if (!s->latents && take_dims(shape, nd, 4, dims) == 0) {
            s->latents = x, s->c = dims[0], s->t = dims[1], s->h = dims[2], s->w = dims[3];
        } else if (!s->text && take_dims(shape, nd, 2, dims) == 0) {
            s->text = x, s->rows = dims[0], s->dim = dims[1];
        } else
            free(x);
    }
    if (!s->latents || !s->text) {
        snprintf(err, errlen,
                 "energon sample '%s' in shard '%s': no %s part (a float tensor %s in a .npy, .pth or .pickle part)",
                 es->key, es->shard, s->latents ? "text embeddings" : "latents",
                 s->latents ? "[L, D] or [1, L, D]" : "[C, T, H, W] or [1, C, T, H, W]");
        video_sample_free(s);
        return -1;
    }
    s->text_len = -1;
    const energon_part *js = energon_sample_part(es, "json"), *txt = energon_sample_part(es, "txt");
    if (js && js->kind == EN_STRING) {
        json_error_t je;
        json_t *j = json_loads(js->data, 0, &je);
        json_t *tl = json_is_object(j) ? json_object_get(j, "text_len") : NULL;
        const char *cap = json_string_value(json_object_get(j, "caption"));
        if (tl && (!json_is_integer(tl) || json_integer_value(tl) < 1 || json_integer_value(tl) > s->rows)) {
            snprintf(err, errlen,
                     "energon sample '%s' in shard '%s': json \"text_len\" must be a whole number from 1 to the %lld "
                     "text rows",
                     es->key, es->shard, (long long)s->rows);
            json_decref(j);
            video_sample_free(s);
            return -1;
        }
        if (tl) s->text_len = (int)json_integer_value(tl);
        if (cap) s->caption = xstrdup(cap);
        json_decref(j);
    }
    if (!s->caption && txt && txt->kind == EN_STRING) s->caption = xstrdup(txt->data);
    if (s->text_len < 0) s->text_len = last_nonzero_row(s->text, s->rows, s->dim);
    return 0;
}
