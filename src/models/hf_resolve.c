/* Offline resolution of pretrained_model_name_or_path. See include/dfm/hf_resolve.h. */
#include "dfm/hf_resolve.h"
#include "dfm/common.h"
#include "dfm/pretrain.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static int errf(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int errf(char *err, size_t errlen, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

/* snprintf for paths: a path too long for dfm's fixed buffers is a fatal error, not a silent truncation. */
static void sfmt(char *out, size_t outlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void sfmt(char *out, size_t outlen, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out, outlen, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= outlen) dfm_die("path too long (over %zu bytes): %s...", outlen, out);
}

static int is_dir(const char *p) {
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISDIR(sb.st_mode);
}

static int has_file(const char *dir, const char *name) {
    char p[8192];
    sfmt(p, sizeof p, "%s/%s", dir, name);
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISREG(sb.st_mode);
}

const char *pretrained_kind_name(pretrained_kind k) {
    switch (k) {
    case PRETRAINED_PIPELINE:
        return "diffusers pipeline";
    case PRETRAINED_TRANSFORMER:
        return "diffusers transformer folder";
    case PRETRAINED_MEGATRON:
        return "dfm checkpoint";
    }
    return "?";
}

void hf_hub_cache_dir(char *out, size_t outlen) {
    const char *v = getenv("HF_HUB_CACHE");
    if (v && *v) {
        sfmt(out, outlen, "%s", v);
        return;
    }
    v = getenv("HF_HOME");
    if (v && *v) {
        sfmt(out, outlen, "%s/hub", v);
        return;
    }
    v = getenv("HOME");
    sfmt(out, outlen, "%s/.cache/huggingface/hub", v && *v ? v : ".");
}

static int is_transformer_dir(const char *d) {
    return has_file(d, "config.json") && (has_file(d, "diffusion_pytorch_model.safetensors") ||
                                          has_file(d, "diffusion_pytorch_model.safetensors.index.json"));
}

/* Classify an existing folder. */
static int classify(const char *dir, const char *subfolder, pretrained_source *out, char *err, size_t errlen) {
    sfmt(out->path, sizeof out->path, "%s", dir);
    if (has_file(dir, "model_index.json")) {
        char t[8192];
        sfmt(t, sizeof t, "%s/%s", dir, subfolder);
        if (!is_transformer_dir(t))
            return errf(err, errlen,
                        "'%s' is a diffusers pipeline (model_index.json) but '%s' holds no config.json with "
                        "diffusion_pytorch_model.safetensors (or its .index.json shards); is "
                        "model.pipeline_spec.subfolder right?",
                        dir, t);
        out->kind = PRETRAINED_PIPELINE;
        sfmt(out->model_dir, sizeof out->model_dir, "%s", t);
        return 0;
    }
    if (is_transformer_dir(dir)) {
        out->kind = PRETRAINED_TRANSFORMER;
        sfmt(out->model_dir, sizeof out->model_dir, "%s", dir);
        return 0;
    }
    char t[8192];
    sfmt(t, sizeof t, "%s/%s", dir, subfolder);
    if (is_transformer_dir(t)) { /* a pipeline folder copied without its model_index.json */
        out->kind = PRETRAINED_PIPELINE;
        sfmt(out->model_dir, sizeof out->model_dir, "%s", t);
        return 0;
    }
    /* a dfm checkpoint of either layout: checkpoint_resolve knows the roots (latest_checkpointed_iteration.txt,
     * LATEST) and the iter_N / epoch_E_step_S folders */
    char e2[512];
    char *iter = checkpoint_resolve(dir, e2, sizeof e2);
    if (iter) {
        out->kind = PRETRAINED_MEGATRON;
        sfmt(out->path, sizeof out->path, "%s", iter);
        sfmt(out->model_dir, sizeof out->model_dir, "%s", iter);
        free(iter);
        return 0;
    }
    char latest[8192];
    struct stat lst;
    sfmt(latest, sizeof latest, "%s/LATEST", dir);
    if (has_file(dir, "latest_checkpointed_iteration.txt") || lstat(latest, &lst) == 0)
        return errf(err, errlen, "%s", e2);
    return errf(err, errlen,
                "'%s' is not a pretrained model: expected a diffusers pipeline (model_index.json and %s/), a "
                "transformer folder (config.json + diffusion_pytorch_model.safetensors) or a dfm checkpoint "
                "(iter_NNNNNNN/ or its root with latest_checkpointed_iteration.txt; epoch_E_step_S/ or its root with "
                "LATEST)",
                dir, subfolder);
}

/* "org/name" with hub-legal characters, optionally "@revision". */
static int looks_like_hub_id(const char *s, char *repo, size_t repolen, char *rev, size_t revlen) {
    const char *at = strchr(s, '@');
    size_t n = at ? (size_t)(at - s) : strlen(s);
    if (n == 0 || n >= repolen) return 0;
    int slashes = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '/')
            slashes++;
        else if (!(isalnum(ch) || ch == '-' || ch == '_' || ch == '.'))
            return 0;
    }
    if (slashes != 1 || s[0] == '/' || s[0] == '.' || s[n - 1] == '/') return 0;
    memcpy(repo, s, n);
    repo[n] = 0;
    sfmt(rev, revlen, "%s", at && at[1] ? at + 1 : "main");
    if (at && !at[1]) return 0;
    return 1;
}

static int read_ref(const char *path, char *out, size_t outlen) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char buf[256] = "";
    size_t k = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[k] = 0;
    while (k > 0 && isspace((unsigned char)buf[k - 1])) buf[--k] = 0;
    if (!k) return -1;
    sfmt(out, outlen, "%s", buf);
    return 0;
}

int pretrained_resolve(const char *name_or_path, const char *subfolder, pretrained_source *out, char *err,
                       size_t errlen) {
    memset(out, 0, sizeof *out);
    if (!subfolder || !*subfolder) subfolder = "transformer";
    if (!name_or_path || !*name_or_path)
        return errf(err, errlen, "model.pretrained_model_name_or_path is not set (a folder or a hub id org/name)");
    if (is_dir(name_or_path)) return classify(name_or_path, subfolder, out, err, errlen);

    char repo[512], rev[256];
    if (!looks_like_hub_id(name_or_path, repo, sizeof repo, rev, sizeof rev))
        return errf(err, errlen, "'%s': no such folder, and not a hub id of the form org/name[@revision]",
                    name_or_path);
    hf_hub_cache_dir(out->cache_dir, sizeof out->cache_dir);
    sfmt(out->revision, sizeof out->revision, "%s", rev);
    char folder[600];
    sfmt(folder, sizeof folder, "models--%s", repo);
    for (char *p = folder; *p; p++)
        if (*p == '/') *p = '-', memmove(p + 2, p + 1, strlen(p + 1) + 1), p[1] = '-', p++; /* '/' -> "--" */
    char repo_dir[8192], ref[8192], snap[8192];
    sfmt(repo_dir, sizeof repo_dir, "%s/%s", out->cache_dir, folder);
    const char *where = getenv("HF_HUB_CACHE") && *getenv("HF_HUB_CACHE") ? "HF_HUB_CACHE"
                        : getenv("HF_HOME") && *getenv("HF_HOME")         ? "HF_HOME/hub"
                                                                          : "~/.cache/huggingface/hub";
    if (!is_dir(repo_dir))
        return errf(err, errlen,
                    "'%s' is not a local folder and is not in the Hugging Face cache (%s = %s; no %s/). dfm never "
                    "downloads: on a machine with network run `huggingface-cli download %s` (or `hf download %s`), "
                    "then copy its cache folder %s/ into %s here, or set HF_HUB_CACHE to the cache that holds it, or "
                    "give the downloaded folder's path instead",
                    name_or_path, where, out->cache_dir, folder, repo, repo, folder, out->cache_dir);
    sfmt(ref, sizeof ref, "%s/refs/%s", repo_dir, rev);
    if (read_ref(ref, out->commit, sizeof out->commit) != 0) {
        /* a commit hash given as the revision names a snapshot directly */
        sfmt(snap, sizeof snap, "%s/snapshots/%s", repo_dir, rev);
        if (!is_dir(snap))
            return errf(err, errlen,
                        "'%s': the cache folder %s has no refs/%s and no snapshots/%s/; fetch that revision with "
                        "`huggingface-cli download %s --revision %s` on a machine with network and copy the cache",
                        name_or_path, repo_dir, rev, rev, repo, rev);
        sfmt(out->commit, sizeof out->commit, "%s", rev);
    }
    sfmt(snap, sizeof snap, "%s/snapshots/%s", repo_dir, out->commit);
    if (!is_dir(snap))
        return errf(err, errlen, "'%s': %s names commit %s but %s does not exist (an incomplete copy of the cache?)",
                    name_or_path, ref, out->commit, snap);
    out->from_cache = 1;
    return classify(snap, subfolder, out, err, errlen);
}
