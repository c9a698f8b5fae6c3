/* `dfm data prepare`, `inspect`, `split` and `convert`: write and check Energon-compatible webdataset folders.
 */
#include "dfm/codec.h"
#include "dfm/common.h"
#include "dfm/energon.h"
#include "dfm/fashion_mnist.h"
#include "dfm/pickle.h"
#include "dfm/safetensors.h"
#include "dfm/tar.h"
#include "dfm/video.h"
#include "dfm/yamltree.h"

#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <regex.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int dfm_data_main(int argc, char **argv);

static void data_usage(FILE *f) {
    fprintf(
        f,
        "usage: dfm data prepare --out DIR SOURCE [options]\n"
        "       dfm data inspect PATH [--split NAME] [--quick]\n"
        "       dfm data inspect FILE.meta|.pth|.pt|.pickle|.pkl\n"
        "       dfm data split DIR --split-parts NAME:REGEX [--split-parts NAME:REGEX ...]\n"
        "       dfm data convert --from DIR --to DIR [--to-format safetensors|energon] [--split NAME] [--maxcount N]\n"
        "\n"
        "prepare writes an Energon-compatible webdataset folder: DIR/shards/shard_NNNNNN.tar, beside each its\n"
        "<shard>.tar.idx, and DIR/.nv-meta/{dataset.yaml (CrudeWebdataset), split.yaml, .info.json}.\n"
        "SOURCE (one of):\n"
        "  --fashion-mnist [DIR]  idx.gz files (default " FMNIST_DEFAULT_DIR "); parts .png .cls .json\n"
        "      --test-set         use the t10k set instead of the training set\n"
        "  --images DIR           PNG/JPEG files; optional DIR/metadata.jsonl lines {\"file_name\": ..., \"label\":\n"
        "                         N | \"text\": ...} give .cls/.txt parts and the line itself as .json\n"
        "  --tensors DIR          files grouped by key (name up to the first dot): a.latent.npy + a.txt -> one\n"
        "                         sample; each tensor of a .safetensors file becomes a <name>.npy part\n"
        "  --video-clips [DIR]    the video demo clips (Fashion-MNIST garments moving left/right/up/down, from\n"
        "                         the idx.gz files in DIR, default " FMNIST_DEFAULT_DIR "); parts latents.npy\n"
        "                         (float32 [1, F, S, S]), text_embeddings.npy (float32 [words, D], the stand-in\n"
        "                         text encoder's rows) and json {\"caption\", \"text_len\", \"index\"}\n"
        "      --n N              clips (default all 60000: 2 GB of latents at 8 frames of 32x32)\n"
        "      --frames F --size S --text-dim D --seed X   (defaults 8, 32, 64, 0)\n"
        "options:\n"
        "  --maxcount N           samples per shard (default 1000)\n"
        "  --limit N              use only the first N samples of the source\n"
        "  --split R[,R[,R]]      train,val,test ratios (default 1 = all train); each split gets its own shards\n"
        "  --split-parts NAME:REGEX  instead of --split, Energon's way: each shard path relative to DIR (e.g.\n"
        "                         shards/shard_000003.tar) must fully match the POSIX extended regex of exactly\n"
        "                         one split, e.g. --split-parts 'train:shards/shard_00000[0-5].tar'\n"
        "                         --split-parts 'val:shards/shard_00000[6-7].tar' (repeat per split)\n"
        "inspect prints the splits, shard and sample counts and the parts of the first sample (names, types,\n"
        "shapes), after checking every shard against its .tar.idx (--quick skips the full scan). PATH may be a\n"
        "MetadatasetV2 .yaml, for which the blended sources are listed. Exits non-zero on a broken dataset.\n"
        "For a pickle or torch.save file (DFM's .meta caches, Energon .pth/.pickle parts) inspect prints its tree:\n"
        "keys, types, dtypes and shapes. Only tensors, numpy arrays and plain values are rebuilt; a file that asks\n"
        "for any other Python name (code) is refused with its name.\n"
        "split rewrites DIR/.nv-meta/split.yaml (atomically) from --split-parts patterns over the shards listed\n"
        "in DIR/.nv-meta/.info.json, keeping its exclude list. That list (edit it by hand) may name whole shards\n"
        "or single samples as <shard>/<sample key>, e.g. shards/shard_000001.tar/s012; the reader skips them\n"
        "(inspect's sample counts do not subtract single-sample excludes).\n"
        "convert rewrites video samples sample for sample: --from a .meta folder or bucketed cache (metadata.json),\n"
        "a folder of <key>.safetensors samples, or an Energon dataset with .npy/.pth/.pickle parts (its --split,\n"
        "default train, in storage order); --to a folder of <key>.safetensors (float32 video_latents [C, T, H, W],\n"
        "text_embeddings [L, D] with every stored row, metadata text_len and caption; written atomically) or, with\n"
        "--to-format energon, Energon shards with parts latents.npy, text_embeddings.npy and json {text_len,\n"
        "caption}. float32 values are copied bit for bit; bfloat16/float16 are widened to float32.\n");
}

/* ------------------------------------------------------------------------------------------------ prepare */

typedef struct {
    char *name;
    uint8_t *data;
    size_t size;
} part_buf;

typedef struct {
    char *out;
    int maxcount;
    tar_writer w;
    int open, shard_no, in_shard;
    uint64_t *idx;
    char **names;
    int64_t *counts;
    int nshards;
    /* split assignment */
    int split_of_shard[1 << 16];
    int cur_split;
} shard_out;

static void shard_finish(shard_out *o) {
    if (!o->open) return;
    uint64_t end = tar_writer_close(&o->w);
    o->idx[o->in_shard] = end;
    char path[4096];
    snprintf(path, sizeof path, "%s/%s.idx", o->out, o->names[o->nshards - 1]);
    tar_idx_write(path, o->idx, (size_t)o->in_shard + 1);
    o->counts[o->nshards - 1] = o->in_shard;
    o->open = 0;
}

static void shard_add_sample(shard_out *o, int split, const char *key, part_buf *parts, int nparts) {
    if (o->open && (o->in_shard == o->maxcount || split != o->cur_split)) shard_finish(o);
    if (!o->open) {
        if (o->nshards >= (1 << 16)) dfm_die("prepare: more than 65536 shards; raise --maxcount");
        char name[64], path[4096];
        snprintf(name, sizeof name, "shards/shard_%06d.tar", o->nshards);
        snprintf(path, sizeof path, "%s/%s", o->out, name);
        o->names = xrealloc(o->names, (size_t)(o->nshards + 1) * sizeof *o->names);
        o->counts = xrealloc(o->counts, (size_t)(o->nshards + 1) * sizeof *o->counts);
        o->names[o->nshards] = xstrdup(name);
        o->split_of_shard[o->nshards] = split;
        o->nshards++;
        tar_writer_open(&o->w, path);
        o->open = 1;
        o->in_shard = 0;
        o->cur_split = split;
    }
    for (int i = 0; i < nparts; i++) {
        size_t ml = strlen(key) + strlen(parts[i].name) + 2;
        char *member = xmalloc(ml);
        snprintf(member, ml, "%s.%s", key, parts[i].name);
        uint64_t off = tar_writer_add(&o->w, member, parts[i].data, parts[i].size);
        free(member);
        if (i == 0) o->idx[o->in_shard] = off;
    }
    o->in_shard++;
}

/* ------------------------------------------------------------------------------------- split patterns */

#define MAX_SPLIT_PATTERNS 16

typedef struct {
    int n;
    char name[MAX_SPLIT_PATTERNS][64];
    const char *pattern[MAX_SPLIT_PATTERNS];
} split_patterns;

/* "--split-parts NAME:REGEX" */
static void split_patterns_add(split_patterns *sp, const char *arg) {
    const char *colon = strchr(arg, ':');
    size_t nl = colon ? (size_t)(colon - arg) : 0;
    if (!colon || nl == 0 || nl >= sizeof sp->name[0] ||
        strspn(arg, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") != nl)
        dfm_die("--split-parts '%s': expected NAME:REGEX, e.g. train:shards/shard_00000[0-5].tar", arg);
    if (sp->n == MAX_SPLIT_PATTERNS) dfm_die("--split-parts: at most %d patterns", MAX_SPLIT_PATTERNS);
    memcpy(sp->name[sp->n], arg, nl);
    sp->name[sp->n][nl] = 0;
    for (int i = 0; i < sp->n; i++)
        if (!strcmp(sp->name[i], sp->name[sp->n])) dfm_die("--split-parts: split '%s' given twice", sp->name[i]);
    /* refuse a bad expression before any shard is written */
    size_t pl = strlen(colon + 1) + 8;
    char *full = xmalloc(pl);
    snprintf(full, pl, "^(%s)$", colon + 1);
    regex_t re;
    int rc = regcomp(&re, full, REG_EXTENDED | REG_NOSUB);
    free(full);
    if (rc != 0) {
        char m[256];
        regerror(rc, &re, m, sizeof m);
        dfm_die("--split-parts %s: bad regular expression '%s': %s", sp->name[sp->n], colon + 1, m);
    }
    regfree(&re);
    sp->pattern[sp->n++] = colon + 1;
}

/* Energon's split_parts from patterns: every shard path (relative to the dataset folder) must fully match the
 * POSIX extended regex of exactly one split. Returns the split.yaml text (malloc'ed) or NULL with err set. */
static char *split_yaml_from_patterns(const split_patterns *sp, char *const *names, int nshards, char *const *excludes,
                                      int nexcl, char *err, size_t errlen) {
    regex_t re[MAX_SPLIT_PATTERNS];
    int *of = xmalloc((size_t)(nshards ? nshards : 1) * sizeof *of), ncomp = 0;
    char *t = NULL;
    for (; ncomp < sp->n; ncomp++) {
        size_t pl = strlen(sp->pattern[ncomp]) + 8;
        char *full = xmalloc(pl);
        snprintf(full, pl, "^(%s)$", sp->pattern[ncomp]);
        int rc = regcomp(&re[ncomp], full, REG_EXTENDED | REG_NOSUB);
        free(full);
        if (rc != 0) {
            char m[256];
            regerror(rc, &re[ncomp], m, sizeof m);
            snprintf(err, errlen, "--split-parts %s: bad regular expression '%s': %s", sp->name[ncomp],
                     sp->pattern[ncomp], m);
            goto done;
        }
    }
    for (int i = 0; i < nshards; i++) {
        of[i] = -1;
        for (int k = 0; k < sp->n; k++) {
            if (regexec(&re[k], names[i], 0, NULL, 0) != 0) continue;
            if (of[i] >= 0) {
                snprintf(err, errlen, "shard '%s' matches the patterns of both split '%s' and split '%s'", names[i],
                         sp->name[of[i]], sp->name[k]);
                goto done;
            }
            of[i] = k;
        }
        if (of[i] < 0) {
            size_t n = (size_t)snprintf(err, errlen, "shard '%s' matches no --split-parts pattern (", names[i]);
            for (int k = 0; k < sp->n && n < errlen; k++)
                n += (size_t)snprintf(err + n, errlen - n, "%s%s:%s", k ? ", " : "", sp->name[k], sp->pattern[k]);
            if (n < errlen) snprintf(err + n, errlen - n, ")");
            goto done;
        }
    }
    for (int k = 0; k < sp->n; k++) {
        int any = 0;
        for (int i = 0; i < nshards && !any; i++) any = of[i] == k;
        if (!any) {
            snprintf(err, errlen, "--split-parts %s:%s matches no shard", sp->name[k], sp->pattern[k]);
            goto done;
        }
    }
    size_t cap = 256, n = 0;
    for (int i = 0; i < nshards; i++) cap += strlen(names[i]) + 8;
    for (int i = 0; i < nexcl; i++) cap += strlen(excludes[i]) + 8;
    t = xmalloc(cap);
    n += (size_t)snprintf(t + n, cap - n, "split_parts:\n");
    for (int k = 0; k < sp->n; k++) {
        n += (size_t)snprintf(t + n, cap - n, "  %s:\n", sp->name[k]);
        for (int i = 0; i < nshards; i++)
            if (of[i] == k) n += (size_t)snprintf(t + n, cap - n, "  - %s\n", names[i]);
    }
    if (!nexcl)
        snprintf(t + n, cap - n, "exclude: []\n");
    else {
        n += (size_t)snprintf(t + n, cap - n, "exclude:\n");
        for (int i = 0; i < nexcl; i++) n += (size_t)snprintf(t + n, cap - n, "- %s\n", excludes[i]);
    }
done:
    for (int k = 0; k < ncomp; k++) regfree(&re[k]);
    free(of);
    return t;
}

static const char *const split_names[3] = {"train", "val", "test"};

static void write_meta(shard_out *o, const int *nsplit_samples, const char *split_yaml) {
    char path[4096];
    snprintf(path, sizeof path, "%s/.nv-meta", o->out);
    xmkdir_p(path);
    snprintf(path, sizeof path, "%s/.nv-meta/dataset.yaml", o->out);
    write_text_atomic(path, "__module__: megatron.energon\n__class__: CrudeWebdataset\n");
    /* split.yaml as Energon writes it: split_parts then exclude */
    size_t cap = 256 + (size_t)o->nshards * 64 + (split_yaml ? strlen(split_yaml) : 0);
    char *t = xmalloc(cap);
    if (split_yaml) snprintf(t, cap, "%s", split_yaml);
    size_t n = split_yaml ? 0 : (size_t)snprintf(t, cap, "split_parts:\n");
    for (int s = 0; s < 3 && !split_yaml; s++) {
        if (!nsplit_samples[s]) continue;
        n += (size_t)snprintf(t + n, cap - n, "  %s:\n", split_names[s]);
        for (int i = 0; i < o->nshards; i++)
            if (o->split_of_shard[i] == s) n += (size_t)snprintf(t + n, cap - n, "  - %s\n", o->names[i]);
    }
    if (!split_yaml) snprintf(t + n, cap - n, "exclude: []\n");
    snprintf(path, sizeof path, "%s/.nv-meta/split.yaml", o->out);
    write_text_atomic(path, t);
    free(t);
    json_t *j = json_object(), *sc = json_object();
    json_object_set_new(j, "energon_version", json_string("dfm-0.1.0"));
    for (int i = 0; i < o->nshards; i++) json_object_set_new(sc, o->names[i], json_integer(o->counts[i]));
    json_object_set_new(j, "shard_counts", sc);
    char *js = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(j);
    snprintf(path, sizeof path, "%s/.nv-meta/.info.json", o->out);
    size_t jl = strlen(js);
    char *withnl = xmalloc(jl + 2);
    memcpy(withnl, js, jl);
    withnl[jl] = '\n';
    withnl[jl + 1] = 0;
    write_text_atomic(path, withnl);
    free(withnl);
    free(js);
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static char **list_dir(const char *dir, int *n) {
    DIR *d = opendir(dir);
    if (!d) dfm_die("cannot open folder '%s': %s", dir, strerror(errno));
    char **names = NULL;
    *n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        names = xrealloc(names, (size_t)(*n + 1) * sizeof *names);
        names[(*n)++] = xstrdup(e->d_name);
    }
    closedir(d);
    if (*n) qsort(names, (size_t)*n, sizeof *names, cmp_str);
    return names;
}

/* A sample source: fills parts for sample i; returns the number of parts; key written into key. */
typedef struct {
    int kind; /* 0 fmnist, 1 images, 2 tensors, 3 video clips (of the Fashion-MNIST images) */
    int frames, size, text_dim;
    uint64_t seed;
    int count;
    uint8_t *images, *labels;
    char *dir;
    char **files; /* images: file names; tensors: keys */
    int nfiles;
    json_t **meta; /* images: the metadata line of each file, or NULL */
    char **all;    /* tensors: all file names, sorted */
    int nall;
} source;

static void key_from_name(char *key, size_t cap, const char *name) {
    /* the key is the base name up to the first dot: dots would split it into parts */
    snprintf(key, cap, "%s", name);
    char *dot = strchr(key, '.');
    if (dot) *dot = 0;
}

static uint8_t *safetensor_to_npy(const char *path, const char *tname, json_t *entry, const uint8_t *data,
                                  size_t datalen, size_t *out_len) {
    const char *dt = json_string_value(json_object_get(entry, "dtype"));
    json_t *shape = json_object_get(entry, "shape"), *offs = json_object_get(entry, "data_offsets");
    if (!dt || !json_is_array(shape) || !json_is_array(offs) || json_array_size(shape) > NPY_MAX_DIMS)
        dfm_die("'%s': tensor '%s' lacks dtype/shape/data_offsets", path, tname);
    int64_t sh[NPY_MAX_DIMS];
    size_t nd = json_array_size(shape), count = 1;
    for (size_t i = 0; i < nd; i++) count *= (size_t)(sh[i] = json_integer_value(json_array_get(shape, i)));
    size_t b = (size_t)json_integer_value(json_array_get(offs, 0)),
           e = (size_t)json_integer_value(json_array_get(offs, 1));
    static const struct {
        const char *st, *npy;
        size_t sz;
    } map[] = {{"F32", "<f4", 4}, {"F64", "<f8", 8}, {"F16", "<f2", 2}, {"I64", "<i8", 8},  {"I32", "<i4", 4},
               {"I16", "<i2", 2}, {"I8", "|i1", 1},  {"U8", "|u1", 1},  {"BOOL", "|b1", 1}, {"BF16", "<f4", 2}};
    for (size_t k = 0; k < sizeof map / sizeof map[0]; k++) {
        if (strcmp(dt, map[k].st)) continue;
        if (e < b || e > datalen || e - b != count * map[k].sz)
            dfm_die("'%s': tensor '%s' has data_offsets [%zu, %zu] that do not fit %zu x %s in %zu data bytes", path,
                    tname, b, e, count, dt, datalen);
        if (!strcmp(dt, "BF16")) { /* numpy has no bfloat16: widen to float32 */
            float *f = xmalloc(count * 4 + 1);
            for (size_t i = 0; i < count; i++) {
                uint32_t bits = (uint32_t)(data[b + 2 * i] | data[b + 2 * i + 1] << 8) << 16;
                memcpy(&f[i], &bits, 4);
            }
            uint8_t *r = npy_encode(f, "<f4", sh, (int)nd, out_len);
            free(f);
            return r;
        }
        return npy_encode(data + b, map[k].npy, sh, (int)nd, out_len);
    }
    dfm_die("'%s': tensor '%s' has dtype %s, which has no .npy equivalent here", path, tname, dt);
}

static int source_parts(source *s, int i, char *key, size_t keycap, part_buf *parts, int maxparts) {
    int np = 0;
    if (s->kind == 3) { /* a clip: latents [C, T, H, W] as DFM's VAE latents are laid out, text rows up to its length */
        enum { MAX_WORDS = 16 }; /* captions have at most 5 words */
        snprintf(key, keycap, "%06d", i);
        size_t lat_n = (size_t)s->frames * s->size * s->size;
        float *lat = xmalloc(lat_n * sizeof(float)), *txt = xmalloc((size_t)MAX_WORDS * s->text_dim * sizeof(float));
        char err[256], cap[64];
        int dir = video_clip_render(s->images + (size_t)i * 784, i, s->frames, s->size, s->seed, lat, err, sizeof err);
        if (dir < 0) dfm_die("data prepare --video-clips: %s", err);
        video_clip_caption(s->labels[i], dir, cap, sizeof cap);
        int len;
        if (text_encoder_encode(cap, s->text_dim, MAX_WORDS, s->seed, txt, &len, err, sizeof err) != 0)
            dfm_die("data prepare --video-clips: %s", err);
        int64_t ls[4] = {1, s->frames, s->size, s->size}, ts[2] = {len, s->text_dim};
        parts[np].name = xstrdup("latents.npy");
        parts[np].data = npy_encode(lat, "<f4", ls, 4, &parts[np].size);
        np++;
        parts[np].name = xstrdup("text_embeddings.npy");
        parts[np].data = npy_encode(txt, "<f4", ts, 2, &parts[np].size);
        np++;
        json_t *j = json_pack("{s:s, s:i, s:i}", "caption", cap, "text_len", len, "index", i);
        char *js = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
        json_decref(j);
        parts[np].name = xstrdup("json");
        parts[np].data = (uint8_t *)js;
        parts[np++].size = strlen(js);
        free(lat), free(txt);
        return np;
    }
    if (s->kind == 0) {
        snprintf(key, keycap, "%06d", i);
        parts[np].name = xstrdup("png");
        parts[np].data = png_encode_mem(s->images + (size_t)i * 784, 28, 28, 1, &parts[np].size);
        np++;
        char t[128];
        snprintf(t, sizeof t, "%d", s->labels[i]);
        parts[np].name = xstrdup("cls");
        parts[np].data = (uint8_t *)xstrdup(t);
        parts[np++].size = strlen(t);
        snprintf(t, sizeof t, "{\"label\": %d, \"class_name\": \"%s\"}", s->labels[i],
                 fmnist_class_names[s->labels[i]]);
        parts[np].name = xstrdup("json");
        parts[np].data = (uint8_t *)xstrdup(t);
        parts[np++].size = strlen(t);
        return np;
    }
    if (s->kind == 1) {
        const char *f = s->files[i];
        key_from_name(key, keycap, f);
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", s->dir, f);
        const char *ext = strrchr(f, '.');
        parts[np].name = xstrdup(ext && (!strcasecmp(ext, ".jpg") || !strcasecmp(ext, ".jpeg")) ? "jpg" : "png");
        parts[np].data = xread_file(path, &parts[np].size);
        { /* refuse broken images now rather than at training time */
            uint8_t *px;
            int w, h, c;
            char err[256];
            if ((strcmp(parts[np].name, "png") ? jpeg_decode_mem : png_decode_mem)(parts[np].data, parts[np].size, &px,
                                                                                   &w, &h, &c, err, sizeof err) != 0)
                dfm_die("'%s': %s", path, err);
            free(px);
        }
        np++;
        json_t *m = s->meta ? s->meta[i] : NULL;
        if (m) {
            json_t *label = json_object_get(m, "label"), *text = json_object_get(m, "text");
            if (label) {
                char t[64];
                if (!json_is_integer(label))
                    dfm_die("'%s/metadata.jsonl': label of '%s' must be an integer", s->dir, f);
                snprintf(t, sizeof t, "%lld", (long long)json_integer_value(label));
                parts[np].name = xstrdup("cls");
                parts[np].data = (uint8_t *)xstrdup(t);
                parts[np++].size = strlen(t);
            }
            if (json_is_string(text)) {
                parts[np].name = xstrdup("txt");
                parts[np].data = (uint8_t *)xstrdup(json_string_value(text));
                parts[np++].size = strlen(json_string_value(text));
            }
            char *js = json_dumps(m, JSON_COMPACT | JSON_PRESERVE_ORDER);
            parts[np].name = xstrdup("json");
            parts[np].data = (uint8_t *)js;
            parts[np++].size = strlen(js);
        }
        return np;
    }
    /* tensors: every file whose key matches */
    snprintf(key, keycap, "%s", s->files[i]);
    size_t kl = strlen(key);
    for (int k = 0; k < s->nall; k++) {
        const char *f = s->all[k];
        if (strncmp(f, key, kl) || f[kl] != '.') continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", s->dir, f);
        const char *rest = f + kl + 1;
        size_t len;
        uint8_t *b = xread_file(path, &len);
        if (!strcmp(rest, "safetensors") || (strlen(rest) > 12 && !strcmp(rest + strlen(rest) - 12, ".safetensors"))) {
            if (len < 8) dfm_die("'%s': too short for a safetensors file", path);
            uint64_t hl = 0;
            for (int q = 7; q >= 0; q--) hl = hl << 8 | b[q];
            if (hl > 100000000 || 8 + hl > len)
                dfm_die("'%s': safetensors header length %llu is invalid", path, (unsigned long long)hl);
            json_error_t je;
            json_t *h = json_loadb((const char *)b + 8, (size_t)hl, 0, &je);
            if (!json_is_object(h)) dfm_die("'%s': safetensors header is not a JSON object: %s", path, je.text);
            const char *tn;
            json_t *ent;
            json_object_foreach(h, tn, ent) {
                if (!strcmp(tn, "__metadata__")) continue;
                if (np == maxparts) dfm_die("'%s': too many parts for sample '%s'", path, key);
                size_t nl = strlen(tn) + 5;
                parts[np].name = xmalloc(nl);
                snprintf(parts[np].name, nl, "%s.npy", tn);
                parts[np].data = safetensor_to_npy(path, tn, ent, b + 8 + hl, len - 8 - (size_t)hl, &parts[np].size);
                np++;
            }
            json_decref(h);
            free(b);
        } else {
            if (np == maxparts) dfm_die("'%s': too many parts for sample '%s'", path, key);
            if (strlen(rest) > 4 && !strcmp(rest + strlen(rest) - 4, ".npy") ? 1 : !strcmp(rest, "npy")) {
                npy_view v;
                char err[256];
                if (npy_parse(b, len, &v, err, sizeof err) != 0) dfm_die("'%s': %s", path, err);
            }
            parts[np].name = xstrdup(rest);
            parts[np].data = b;
            parts[np++].size = len;
        }
    }
    return np;
}

static int cmd_prepare(int argc, char **argv) {
    const char *out = NULL, *fm_dir = NULL, *img_dir = NULL, *ten_dir = NULL, *split = NULL;
    const char *clips_dir = NULL;
    int test_set = 0, maxcount = 1000, limit = 0, have_fm = 0, have_clips = 0;
    int clip_n = 0, clip_frames = 8, clip_size = 32, clip_text_dim = 64;
    unsigned long long clip_seed = 0;
    split_patterns pats = {0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *next = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--out") && next)
            out = argv[++i];
        else if (!strcmp(a, "--fashion-mnist")) {
            have_fm = 1;
            if (next && next[0] != '-') fm_dir = argv[++i];
        } else if (!strcmp(a, "--video-clips")) {
            have_clips = 1;
            if (next && next[0] != '-') clips_dir = argv[++i];
        } else if (!strcmp(a, "--n") && next)
            clip_n = atoi(argv[++i]);
        else if (!strcmp(a, "--frames") && next)
            clip_frames = atoi(argv[++i]);
        else if (!strcmp(a, "--size") && next)
            clip_size = atoi(argv[++i]);
        else if (!strcmp(a, "--text-dim") && next)
            clip_text_dim = atoi(argv[++i]);
        else if (!strcmp(a, "--seed") && next)
            clip_seed = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(a, "--test-set"))
            test_set = 1;
        else if (!strcmp(a, "--images") && next)
            img_dir = argv[++i];
        else if (!strcmp(a, "--tensors") && next)
            ten_dir = argv[++i];
        else if (!strcmp(a, "--maxcount") && next)
            maxcount = atoi(argv[++i]);
        else if (!strcmp(a, "--limit") && next)
            limit = atoi(argv[++i]);
        else if (!strcmp(a, "--split") && next)
            split = argv[++i];
        else if (!strcmp(a, "--split-parts") && next)
            split_patterns_add(&pats, argv[++i]);
        else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            data_usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "dfm: error: data prepare: unknown or incomplete option '%s'\n", a);
            data_usage(stderr);
            return 2;
        }
    }
    if (!out || have_fm + have_clips + !!img_dir + !!ten_dir != 1) {
        fprintf(stderr, "dfm: error: data prepare needs --out DIR and exactly one of --fashion-mnist, --images, "
                        "--tensors, --video-clips\n");
        return 2;
    }
    if (maxcount < 1) dfm_die("data prepare: --maxcount must be at least 1");
    if (split && pats.n) dfm_die("data prepare: give either --split ratios or --split-parts patterns, not both");
    if (!split) split = "1";
    double ratio[3] = {0, 0, 0};
    int nr = sscanf(split, "%lf,%lf,%lf", &ratio[0], &ratio[1], &ratio[2]);
    if (nr < 1 || ratio[0] < 0 || ratio[1] < 0 || ratio[2] < 0 || ratio[0] + ratio[1] + ratio[2] <= 0)
        dfm_die("data prepare: --split '%s' must be 1 to 3 non-negative ratios like 8,1,1", split);

    source s = {0};
    char err[1024];
    if (have_clips) { /* rendered one clip at a time while the shards are written */
        s.kind = 3;
        s.frames = clip_frames, s.size = clip_size, s.text_dim = clip_text_dim, s.seed = clip_seed;
        if (clip_text_dim < 1)
            dfm_die("data prepare --video-clips: --text-dim must be at least 1, got %d", clip_text_dim);
        if (fmnist_load(clips_dir ? clips_dir : FMNIST_DEFAULT_DIR, 1, clip_n > 0 ? clip_n : limit, &s.images,
                        &s.labels, &s.count, err, sizeof err) != 0)
            dfm_die("%s", err);
        /* refuse a frames/size pair that leaves no room to move before any shard is written (the renderer checks
         * before it writes, so a sane-sized buffer is only needed when the pair is plausible) */
        int plausible = clip_frames >= 2 && clip_frames <= 4096 && clip_size >= 8 && clip_size <= 4096;
        float *one = xmalloc(sizeof(float) * (plausible ? (size_t)clip_frames * clip_size * clip_size : 1));
        if (video_clip_render(s.images, 0, clip_frames, clip_size, clip_seed, one, err, sizeof err) < 0)
            dfm_die("data prepare --video-clips: %s", err);
        free(one);
    } else if (have_fm) {
        s.kind = 0;
        if (fmnist_load(fm_dir ? fm_dir : FMNIST_DEFAULT_DIR, !test_set, limit, &s.images, &s.labels, &s.count, err,
                        sizeof err) != 0)
            dfm_die("%s", err);
    } else if (img_dir) {
        s.kind = 1;
        s.dir = xstrdup(img_dir);
        char mp[4096];
        snprintf(mp, sizeof mp, "%s/metadata.jsonl", img_dir);
        FILE *mf = fopen(mp, "r");
        if (mf) {
            char *line = NULL;
            size_t lcap = 0;
            int lineno = 0;
            while (getline(&line, &lcap, mf) > 0) {
                lineno++;
                if (strspn(line, " \t\r\n") == strlen(line)) continue;
                json_error_t je;
                json_t *j = json_loads(line, 0, &je);
                const char *fn = j ? json_string_value(json_object_get(j, "file_name")) : NULL;
                if (!fn)
                    dfm_die("%s:%d: expected a JSON object with \"file_name\"%s%s", mp, lineno, j ? "" : ": ",
                            j ? "" : je.text);
                s.files = xrealloc(s.files, (size_t)(s.nfiles + 1) * sizeof *s.files);
                s.meta = xrealloc(s.meta, (size_t)(s.nfiles + 1) * sizeof *s.meta);
                s.files[s.nfiles] = xstrdup(fn);
                s.meta[s.nfiles++] = j;
            }
            free(line);
            fclose(mf);
        } else {
            int n;
            char **all = list_dir(img_dir, &n);
            for (int i = 0; i < n; i++) {
                const char *e = strrchr(all[i], '.');
                if (e && (!strcasecmp(e, ".png") || !strcasecmp(e, ".jpg") || !strcasecmp(e, ".jpeg"))) {
                    s.files = xrealloc(s.files, (size_t)(s.nfiles + 1) * sizeof *s.files);
                    s.files[s.nfiles++] = xstrdup(all[i]);
                }
                free(all[i]);
            }
            free(all);
        }
        s.count = s.nfiles;
    } else {
        s.kind = 2;
        s.dir = xstrdup(ten_dir);
        s.all = list_dir(ten_dir, &s.nall);
        for (int i = 0; i < s.nall; i++) {
            char key[4096];
            key_from_name(key, sizeof key, s.all[i]);
            if (!strchr(s.all[i], '.')) continue;
            if (s.nfiles && !strcmp(s.files[s.nfiles - 1], key)) continue;
            s.files = xrealloc(s.files, (size_t)(s.nfiles + 1) * sizeof *s.files);
            s.files[s.nfiles++] = xstrdup(key);
        }
        s.count = s.nfiles;
    }
    if (limit > 0 && s.count > limit) s.count = limit;
    if (s.count == 0) dfm_die("data prepare: the source has no samples");

    shard_out *o = xcalloc(1, sizeof *o);
    o->out = xstrdup(out);
    o->maxcount = maxcount;
    o->idx = xmalloc(((size_t)maxcount + 1) * sizeof *o->idx);
    char sp[4096];
    snprintf(sp, sizeof sp, "%s/shards", out);
    xmkdir_p(sp);
    /* contiguous sample ranges per split, so that every split with a ratio gets its share exactly */
    double tot = ratio[0] + ratio[1] + ratio[2];
    int bound[4] = {0, (int)((double)s.count * ratio[0] / tot + 0.5),
                    (int)((double)s.count * (ratio[0] + ratio[1]) / tot + 0.5), s.count};
    int nsplit[3];
    for (int k = 0; k < 3; k++) nsplit[k] = bound[k + 1] - bound[k];
    part_buf parts[64];
    for (int i = 0; i < s.count; i++) {
        char key[4096];
        int np = source_parts(&s, i, key, sizeof key, parts, 64);
        if (np == 0) dfm_die("data prepare: sample '%s' has no parts", key);
        int sp_i = i < bound[1] ? 0 : i < bound[2] ? 1 : 2;
        shard_add_sample(o, sp_i, key, parts, np);
        for (int k = 0; k < np; k++) {
            free(parts[k].name);
            free(parts[k].data);
        }
    }
    shard_finish(o);
    char *split_yaml = NULL;
    if (pats.n) {
        split_yaml = split_yaml_from_patterns(&pats, o->names, o->nshards, NULL, 0, err, sizeof err);
        if (!split_yaml) dfm_die("data prepare --out %s: %s", out, err);
    }
    write_meta(o, nsplit, split_yaml);
    if (split_yaml)
        printf("prepared %d samples in %d shards under %s, splits from %d --split-parts patterns\n", s.count,
               o->nshards, out, pats.n);
    else
        printf("prepared %d samples in %d shards under %s (train %d, val %d, test %d)\n", s.count, o->nshards, out,
               nsplit[0], nsplit[1], nsplit[2]);
    free(split_yaml);
    for (int i = 0; i < o->nshards; i++) free(o->names[i]);
    free(o->names);
    free(o->counts);
    free(o->idx);
    free(o->out);
    free(o);
    free(s.images);
    free(s.labels);
    free(s.dir);
    for (int i = 0; i < s.nfiles; i++) {
        free(s.files[i]);
        if (s.meta) json_decref(s.meta[i]);
    }
    free(s.files);
    free(s.meta);
    for (int i = 0; i < s.nall; i++) free(s.all[i]);
    free(s.all);
    return 0;
}

/* ------------------------------------------------------------------------------------------------ inspect */

/* A .pth/.pt/.pickle/.pkl part (DFM's video latents and text embeddings): what it holds, e.g. "torch.save (zip):
 * tensor bfloat16 [16, 3, 8, 8]". 0 if the part is something else. */
static int describe_pickle_part(const energon_sample *s, const energon_part *p) {
    const char *ext = strrchr(p->name, '.');
    ext = ext ? ext + 1 : p->name;
    if (strcmp(ext, "pth") && strcmp(ext, "pt") && strcmp(ext, "pickle") && strcmp(ext, "pkl")) return 0;
    char name[512], err[1024];
    snprintf(name, sizeof name, "%s/%s.%s", s->shard, s->key, p->name);
    pk_doc *d = pk_load_mem(p->data, p->nbytes, name, PK_ANY, err, sizeof err);
    if (!d) {
        printf("bytes (%zu), unreadable: %s\n", p->nbytes, err);
        return 1;
    }
    const pk_array *a = pk_as_array(d->root);
    printf("%s: %s", pk_format_name(d->format),
           a ? (d->root->kind == PK_TENSOR ? "tensor" : "numpy array") : pk_kind_name(d->root->kind));
    if (a) {
        printf(" %s [", pk_dtype_name(a->dtype));
        for (int k = 0; k < a->ndim; k++) printf("%s%lld", k ? ", " : "", (long long)a->shape[k]);
        printf("]");
    }
    printf("\n");
    pk_doc_free(d);
    return 1;
}

static void print_first_sample(const char *path, const char *split) {
    energon_options o;
    energon_options_default(&o);
    o.split = split;
    o.num_workers = 0;
    o.shuffle_buffer = 0;
    o.slice_size = 0;
    o.quiet = 1;
    char err[1024];
    energon_reader *r = energon_open(path, &o, err, sizeof err);
    if (!r) dfm_die("%s", err);
    energon_sample *s;
    if (energon_next(r, &s) != 0) dfm_die("%s", energon_error(r));
    printf("first sample of '%s': key '%s' in %s\n", split, s->key, s->shard);
    for (int i = 0; i < s->nparts; i++) {
        const energon_part *p = &s->parts[i];
        printf("  .%-20s ", p->name);
        if (p->kind == EN_TENSOR) {
            printf("tensor %s [", p->dtype == EN_U8 ? "uint8" : "float32");
            for (int d = 0; d < p->ndim; d++) printf("%s%lld", d ? ", " : "", (long long)p->shape[d]);
            printf("]\n");
        } else if (p->kind == EN_INT)
            printf("int %lld\n", (long long)p->ival);
        else if (p->kind == EN_STRING)
            printf("string (%zu bytes): %.100s%s\n", p->nbytes, (const char *)p->data, p->nbytes > 100 ? "..." : "");
        else if (!describe_pickle_part(s, p))
            printf("bytes (%zu)\n", p->nbytes);
    }
    for (int i = 0; i < s->nsubflavors; i++)
        printf("  subflavor %s = %s\n", s->subflavor_keys[i], s->subflavor_values[i]);
    energon_sample_free(s);
    energon_close(r);
}

static int has_ext(const char *path, const char *ext) {
    size_t n = strlen(path), e = strlen(ext);
    return n > e && !strcmp(path + n - e, ext);
}

/* A pickle or torch.save file: its tree. */
static int inspect_pickle_file(const char *path) {
    char err[2048];
    pk_doc *d = pk_load_file(path, PK_ANY, err, sizeof err);
    if (!d) dfm_die("%s", err);
    if (d->format == PK_FMT_PICKLE)
        printf("%s: pickle (protocol %d)\n", path, d->protocol);
    else
        printf("%s: %s, pickle protocol %d\n", path, pk_format_name(d->format), d->protocol);
    pk_print(stdout, d->root, 2000);
    pk_doc_free(d);
    return 0;
}

static int cmd_inspect(int argc, char **argv) {
    const char *path = NULL, *split = NULL;
    int quick = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--quick"))
            quick = 1;
        else if (!strcmp(argv[i], "--split") && i + 1 < argc)
            split = argv[++i];
        else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            data_usage(stdout);
            return 0;
        } else if (argv[i][0] != '-' && !path)
            path = argv[i];
        else {
            fprintf(stderr, "dfm: error: data inspect: unexpected argument '%s'\n", argv[i]);
            return 2;
        }
    }
    if (!path) {
        fprintf(stderr, "dfm: error: data inspect needs a dataset folder, a metadataset .yaml or a .meta/.pth/.pickle "
                        "file\n");
        return 2;
    }
    char err[1024];
    struct stat st;
    if (stat(path, &st) != 0) dfm_die("'%s' does not exist", path);
    if (S_ISREG(st.st_mode) && (has_ext(path, ".meta") || has_ext(path, ".pth") || has_ext(path, ".pt") ||
                                has_ext(path, ".pickle") || has_ext(path, ".pkl")))
        return inspect_pickle_file(path);
    if (!S_ISDIR(st.st_mode)) { /* a metadataset */
        energon_options o;
        energon_options_default(&o);
        o.split = split ? split : "train";
        o.num_workers = 0;
        energon_reader *r = energon_open(path, &o, err, sizeof err);
        if (!r) dfm_die("%s", err);
        printf("metadataset %s, split '%s': %d sources\n", path, o.split, energon_num_sources(r));
        for (int i = 0; i < energon_num_sources(r); i++) {
            energon_source_info si = energon_source(r, i);
            printf("  %s [%s]: %lld samples, %s %.4g\n", si.path, si.split_part, (long long)si.samples,
                   si.repetitions > 0 ? "repetitions" : "weight", si.repetitions > 0 ? si.repetitions : si.weight);
        }
        energon_close(r);
        print_first_sample(path, o.split);
        return 0;
    }
    energon_dataset_info info;
    if (energon_dataset_info_load(path, NULL, &info, err, sizeof err) != 0) dfm_die("%s", err);
    printf("dataset %s (%s), %d shards\n", path, info.dataset_class ? info.dataset_class : "no dataset.yaml",
           info.nshards);
    for (int i = 0; i < info.nsplits; i++)
        printf("  split %-6s %4d shards %10lld samples\n", info.splits[i].name, info.splits[i].nshards,
               (long long)info.splits[i].samples);
    if (!quick) {
        for (int i = 0; i < info.nshards; i++) {
            char sp[4096];
            snprintf(sp, sizeof sp, "%s/%s", path, info.shard_names[i]);
            if (energon_check_shard(sp, info.shard_counts[i], err, sizeof err) != 0) {
                energon_dataset_info_free(&info);
                dfm_die("%s", err);
            }
        }
        printf("all %d shards agree with their .tar.idx and .info.json\n", info.nshards);
    }
    const char *first = split;
    for (int i = 0; !first && i < info.nsplits; i++)
        if (info.splits[i].samples > 0) first = info.splits[i].name;
    char firstbuf[256];
    snprintf(firstbuf, sizeof firstbuf, "%s", first ? first : "");
    energon_dataset_info_free(&info);
    if (firstbuf[0]) print_first_sample(path, firstbuf);
    return 0;
}

/* ------------------------------------------------------------------------------------------------- split */

/* Rewrite DIR/.nv-meta/split.yaml from patterns over the shards of .info.json, keeping its exclude list. */
static int cmd_split(int argc, char **argv) {
    const char *dirp = NULL;
    split_patterns pats = {0};
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--split-parts") && i + 1 < argc)
            split_patterns_add(&pats, argv[++i]);
        else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            data_usage(stdout);
            return 0;
        } else if (argv[i][0] != '-' && !dirp)
            dirp = argv[i];
        else {
            fprintf(stderr, "dfm: error: data split: unknown or incomplete option '%s'\n", argv[i]);
            data_usage(stderr);
            return 2;
        }
    }
    if (!dirp || !pats.n) {
        fprintf(stderr, "dfm: error: data split needs DIR and at least one --split-parts NAME:REGEX\n");
        return 2;
    }
    char ip[4096], sp[4096], err[2048];
    snprintf(ip, sizeof ip, "%s/.nv-meta/.info.json", dirp);
    snprintf(sp, sizeof sp, "%s/.nv-meta/split.yaml", dirp);
    json_error_t je;
    json_t *info = json_load_file(ip, 0, &je);
    if (!info) dfm_die("'%s': %s (line %d)", ip, je.text, je.line);
    json_t *sc = json_object_get(info, "shard_counts");
    if (!json_is_object(sc) || json_object_size(sc) == 0)
        dfm_die("'%s': expected a non-empty object \"shard_counts\"", ip);
    int nshards = 0;
    char **names = xmalloc(json_object_size(sc) * sizeof *names);
    const char *k;
    json_t *v;
    json_object_foreach(sc, k, v) names[nshards++] = xstrdup(k);
    json_decref(info);
    qsort(names, (size_t)nshards, sizeof *names, cmp_str);
    /* keep the existing exclude list, entry by entry as written */
    char **ex = NULL;
    int nex = 0;
    struct stat st;
    if (stat(sp, &st) == 0) {
        yt_node *y = yt_parse_file(sp, err, sizeof err);
        if (!y) dfm_die("%s", err);
        yt_node *e = yt_get(y, "exclude");
        if (e && !yt_is_null(e)) {
            if (e->kind != YT_SEQ) dfm_die("%s:%d: 'exclude' must be a list", sp, e->line);
            ex = xmalloc((size_t)(e->n ? e->n : 1) * sizeof *ex);
            for (int i = 0; i < e->n; i++) {
                if (e->items[i]->kind != YT_SCALAR)
                    dfm_die("%s:%d: exclude entries must be strings", sp, e->items[i]->line);
                ex[nex++] = xstrdup(e->items[i]->str);
            }
        }
        yt_free(y);
    }
    char *t = split_yaml_from_patterns(&pats, names, nshards, ex, nex, err, sizeof err);
    if (!t) dfm_die("data split %s: %s", dirp, err);
    write_text_atomic(sp, t);
    printf("wrote %s: %d shards in %d splits, %d exclude entries kept\n", sp, nshards, pats.n, nex);
    free(t);
    for (int i = 0; i < nshards; i++) free(names[i]);
    free(names);
    for (int i = 0; i < nex; i++) free(ex[i]);
    free(ex);
    return 0;
}

/* ------------------------------------------------------------------------------------------------ convert */

/* Where convert's samples come from: a .meta folder or cache, a safetensors sample folder, an Energon dataset. */
typedef struct {
    int kind; /* 0 .meta, 1 safetensors folder, 2 energon */
    char **paths;
    int n, next;
    energon_reader *r;
    const char *dir;
} conv_src;

static int dir_has_suffix(const char *dir, const char *suffix) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    struct dirent *e;
    int found = 0;
    size_t sl = strlen(suffix);
    while (!found && (e = readdir(d))) {
        size_t l = strlen(e->d_name);
        found = e->d_name[0] != '.' && l > sl && !strcmp(e->d_name + l - sl, suffix);
    }
    closedir(d);
    return found;
}

/* The sample key: the file's path under the source folder without its extension, '/' and '.' made '_' (a dot
 * would split an Energon key into parts). */
static void key_from_path(const char *dir, const char *path, char *key, size_t cap) {
    size_t dl = strlen(dir);
    const char *rel = !strncmp(path, dir, dl) && path[dl] == '/' ? path + dl + 1 : path;
    snprintf(key, cap, "%s", rel);
    char *dot = strrchr(key, '.');
    if (dot) *dot = 0;
    for (char *p = key; *p; p++)
        if (*p == '/' || *p == '.') *p = '_';
}

/* Next sample into *s with its key; 1 = a sample, 0 = done; dies on a broken sample (naming it). */
static int conv_next(conv_src *c, video_sample *s, char *key, size_t keycap) {
    char err[2048];
    if (c->kind == 2) {
        energon_sample *es;
        if (energon_next(c->r, &es) != 0) dfm_die("data convert: %s", energon_error(c->r));
        if (es->epoch > 0) { /* the stream loops: the first epoch is the dataset, sample for sample */
            energon_sample_free(es);
            return 0;
        }
        if (video_energon_sample_read(es, s, err, sizeof err) != 0) dfm_die("data convert: %s", err);
        snprintf(key, keycap, "%s", es->key);
        energon_sample_free(es);
        return 1;
    }
    if (c->next == c->n) return 0;
    const char *p = c->paths[c->next++];
    if ((c->kind == 0 ? video_meta_read : video_safetensors_read)(p, s, err, sizeof err) != 0)
        dfm_die("data convert: %s", err);
    key_from_path(c->dir, p, key, keycap);
    return 1;
}

static int cmd_convert(int argc, char **argv) {
    const char *from = NULL, *to = NULL, *fmt = "safetensors", *split = "train";
    int maxcount = 1000;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *next = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--from") && next)
            from = argv[++i];
        else if (!strcmp(a, "--to") && next)
            to = argv[++i];
        else if (!strcmp(a, "--to-format") && next)
            fmt = argv[++i];
        else if (!strcmp(a, "--split") && next)
            split = argv[++i];
        else if (!strcmp(a, "--maxcount") && next)
            maxcount = atoi(argv[++i]);
        else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            data_usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "dfm: error: data convert: unknown or incomplete option '%s'\n", a);
            data_usage(stderr);
            return 2;
        }
    }
    if (!from || !to) {
        fprintf(stderr, "dfm: error: data convert needs --from DIR and --to DIR\n");
        return 2;
    }
    int to_energon = !strcmp(fmt, "energon");
    if (!to_energon && strcmp(fmt, "safetensors"))
        dfm_die("data convert: --to-format '%s' must be safetensors or energon", fmt);
    if (maxcount < 1) dfm_die("data convert: --maxcount must be at least 1");
    char err[2048], probe[4096];
    conv_src c = {0};
    c.dir = from;
    snprintf(probe, sizeof probe, "%s/.nv-meta", from);
    struct stat st;
    if (stat(probe, &st) == 0 && S_ISDIR(st.st_mode)) {
        c.kind = 2;
        energon_options o;
        energon_options_default(&o);
        o.split = split;
        o.shuffle_buffer = 0, o.slice_size = 0; /* storage order */
        o.num_workers = 0;
        o.max_abs = 1e30; /* values are copied, not judged; only NaN/Inf samples are skipped (with a warning) */
        if (!(c.r = energon_open(from, &o, err, sizeof err))) dfm_die("data convert: %s", err);
    } else if (dir_has_suffix(from, ".safetensors")) {
        c.kind = 1;
        c.paths = list_dir(from, &c.n);
        int k = 0;
        for (int i = 0; i < c.n; i++) {
            size_t l = strlen(c.paths[i]);
            if (l > 12 && !strcmp(c.paths[i] + l - 12, ".safetensors")) {
                char p[4096];
                snprintf(p, sizeof p, "%s/%s", from, c.paths[i]);
                free(c.paths[i]);
                c.paths[k++] = xstrdup(p);
            } else
                free(c.paths[i]);
        }
        c.n = k;
    } else if (video_meta_list(from, &c.paths, &c.n, err, sizeof err) != 0)
        dfm_die("data convert --from %s: not an Energon dataset (.nv-meta), a safetensors sample folder or a .meta "
                "cache: %s",
                from, err);

    xmkdir_p(to);
    shard_out *o = NULL;
    if (to_energon) {
        o = xcalloc(1, sizeof *o);
        o->out = xstrdup(to);
        o->maxcount = maxcount;
        o->idx = xmalloc(((size_t)maxcount + 1) * sizeof *o->idx);
        char sp[4096];
        snprintf(sp, sizeof sp, "%s/shards", to);
        xmkdir_p(sp);
    }
    video_sample s;
    char key[4096];
    int count = 0;
    while (conv_next(&c, &s, key, sizeof key)) {
        int64_t ls[4] = {s.c, s.t, s.h, s.w}, ts[2] = {s.rows, s.dim};
        char tl[32];
        snprintf(tl, sizeof tl, "%d", s.text_len);
        if (to_energon) {
            part_buf parts[3];
            parts[0].name = xstrdup("latents.npy");
            parts[0].data = npy_encode(s.latents, "<f4", ls, 4, &parts[0].size);
            parts[1].name = xstrdup("text_embeddings.npy");
            parts[1].data = npy_encode(s.text, "<f4", ts, 2, &parts[1].size);
            json_t *j = json_pack("{s:i}", "text_len", s.text_len);
            if (s.caption) json_object_set_new(j, "caption", json_string(s.caption));
            char *js = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
            json_decref(j);
            parts[2].name = xstrdup("json");
            parts[2].data = (uint8_t *)js;
            parts[2].size = strlen(js);
            shard_add_sample(o, 0, key, parts, 3);
            for (int k = 0; k < 3; k++) free(parts[k].name), free(parts[k].data);
        } else {
            char path[8192];
            snprintf(path, sizeof path, "%s/%s.safetensors", to, key);
            st_writer *w = st_writer_new();
            st_writer_add(w, "video_latents", ST_F32, 4, ls, s.latents);
            st_writer_add(w, "text_embeddings", ST_F32, 2, ts, s.text);
            st_writer_meta(w, "text_len", tl);
            if (s.caption) st_writer_meta(w, "caption", s.caption);
            st_writer_finish(w, path); /* atomic: a temporary file renamed into place */
        }
        video_sample_free(&s);
        count++;
    }
    if (count == 0) dfm_die("data convert --from %s: no samples", from);
    if (to_energon) {
        shard_finish(o);
        int nsplit[3] = {count, 0, 0};
        write_meta(o, nsplit, NULL);
        for (int i = 0; i < o->nshards; i++) free(o->names[i]);
        free(o->names), free(o->counts), free(o->idx), free(o->out), free(o);
    }
    static const char *const kinds[3] = {".meta cache", "safetensors folder", "Energon dataset"};
    printf("converted %d samples from the %s %s to %s (%s)\n", count, kinds[c.kind], from, to,
           to_energon ? "Energon shards with .npy parts" : "one .safetensors per sample");
    for (int i = 0; i < c.n; i++) free(c.paths[i]);
    free(c.paths);
    if (c.r) energon_close(c.r);
    return 0;
}

int dfm_data_main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        data_usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "prepare")) return cmd_prepare(argc - 1, argv + 1);
    if (!strcmp(argv[1], "inspect")) return cmd_inspect(argc - 1, argv + 1);
    if (!strcmp(argv[1], "split")) return cmd_split(argc - 1, argv + 1);
    if (!strcmp(argv[1], "convert")) return cmd_convert(argc - 1, argv + 1);
    fprintf(stderr, "dfm: error: unknown data command '%s' (prepare, inspect, split, convert)\n", argv[1]);
    data_usage(stderr);
    return 2;
}
