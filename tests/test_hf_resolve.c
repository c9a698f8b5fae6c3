/* pretrained_model_name_or_path resolution: pipeline folders, transformer folders, Megatron checkpoints, and hub
 * ids in a fake Hugging Face cache (HF_HUB_CACHE / HF_HOME / HOME set here), all offline. */
#include "dfm/hf_resolve.h"
#include "test.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char root[256];

static void mkdirs(const char *rel) {
    char p[1024], *s;
    snprintf(p, sizeof p, "%s/%s", root, rel);
    for (s = p + strlen(root) + 1; (s = strchr(s, '/')); s++) {
        *s = 0;
        mkdir(p, 0755);
        *s = '/';
    }
    mkdir(p, 0755);
}

static void put(const char *rel, const char *text) {
    char p[1024];
    snprintf(p, sizeof p, "%s/%s", root, rel);
    char *slash = strrchr(p, '/');
    *slash = 0;
    mkdirs(p + strlen(root) + 1);
    *slash = '/';
    FILE *f = fopen(p, "w");
    fputs(text, f);
    fclose(f);
}

static const char *at(const char *rel) {
    static char p[4][1024];
    static int k;
    k = (k + 1) % 4;
    snprintf(p[k], sizeof p[k], "%s/%s", root, rel);
    return p[k];
}

static void make_pipeline(const char *rel) {
    char f[512];
    snprintf(f, sizeof f, "%s/model_index.json", rel);
    put(f, "{\"_class_name\": \"WanPipeline\"}");
    snprintf(f, sizeof f, "%s/transformer/config.json", rel);
    put(f, "{}");
    snprintf(f, sizeof f, "%s/transformer/diffusion_pytorch_model.safetensors.index.json", rel);
    put(f, "{}");
}

int main(void) {
    snprintf(root, sizeof root, "/tmp/dfm_test_hf_%d", (int)getpid());
    mkdir(root, 0755);
    pretrained_source s;
    char err[2048];
    int rc;

    make_pipeline("pipe");
    rc = pretrained_resolve(at("pipe"), NULL, &s, err, sizeof err);
    CHECK(rc == 0 && s.kind == PRETRAINED_PIPELINE && !strcmp(s.model_dir, at("pipe/transformer")) && !s.from_cache,
          "a pipeline folder resolves to its transformer/ (%s)", rc ? err : s.model_dir);

    rc = pretrained_resolve(at("pipe/transformer"), NULL, &s, err, sizeof err);
    CHECK(rc == 0 && s.kind == PRETRAINED_TRANSFORMER && !strcmp(s.model_dir, at("pipe/transformer")),
          "a transformer folder (sharded index) is one (%s)", rc ? err : pretrained_kind_name(s.kind));

    put("single/config.json", "{}");
    put("single/diffusion_pytorch_model.safetensors", "x");
    rc = pretrained_resolve(at("single"), NULL, &s, err, sizeof err);
    CHECK(rc == 0 && s.kind == PRETRAINED_TRANSFORMER, "a transformer folder (one safetensors file) is one");

    rc = pretrained_resolve(at("pipe"), "unet", &s, err, sizeof err);
    CHECK(rc != 0 && strstr(err, "pipeline_spec.subfolder"), "a pipeline without the subfolder: %s", err);

    put("mega/latest_checkpointed_iteration.txt", "20\n");
    put("mega/iter_0000020/model.safetensors", "x");
    rc = pretrained_resolve(at("mega"), NULL, &s, err, sizeof err);
    CHECK(rc == 0 && s.kind == PRETRAINED_MEGATRON && !strcmp(s.path, at("mega/iter_0000020")),
          "a Megatron checkpoint root resolves to its latest iter folder (%s)", rc ? err : s.path);
    rc = pretrained_resolve(at("mega/iter_0000020"), NULL, &s, err, sizeof err);
    CHECK(rc == 0 && s.kind == PRETRAINED_MEGATRON, "an iter folder is a Megatron checkpoint");

    mkdirs("empty");
    rc = pretrained_resolve(at("empty"), NULL, &s, err, sizeof err);
    CHECK(rc != 0 && strstr(err, "not a pretrained model"), "an empty folder: %s", err);
    rc = pretrained_resolve(at("nope/deeper/x"), NULL, &s, err, sizeof err);
    CHECK(rc != 0 && strstr(err, "no such folder"), "a missing path: %s", err);

    /* hub cache: HF_HUB_CACHE */
    make_pipeline("hub1/models--Wan-AI--Wan2.1-T2V-1.3B-Diffusers/snapshots/abc123");
    put("hub1/models--Wan-AI--Wan2.1-T2V-1.3B-Diffusers/refs/main", "abc123\n");
    make_pipeline("hub1/models--Wan-AI--Wan2.1-T2V-1.3B-Diffusers/snapshots/def456");
    put("hub1/models--Wan-AI--Wan2.1-T2V-1.3B-Diffusers/refs/v2", "def456");
    setenv("HF_HUB_CACHE", at("hub1"), 1);
    setenv("HF_HOME", at("home_unused"), 1);
    rc = pretrained_resolve("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", NULL, &s, err, sizeof err);
    CHECK(rc == 0 && s.from_cache && s.kind == PRETRAINED_PIPELINE && !strcmp(s.commit, "abc123") &&
              !strcmp(s.path, at("hub1/models--Wan-AI--Wan2.1-T2V-1.3B-Diffusers/snapshots/abc123")),
          "a hub id resolves through HF_HUB_CACHE and refs/main (%s)", rc ? err : s.path);
    rc = pretrained_resolve("Wan-AI/Wan2.1-T2V-1.3B-Diffusers@v2", NULL, &s, err, sizeof err);
    CHECK(rc == 0 && !strcmp(s.commit, "def456") && !strcmp(s.revision, "v2"), "org/name@v2 follows refs/v2 (%s)",
          rc ? err : s.commit);
    rc = pretrained_resolve("Wan-AI/Wan2.1-T2V-1.3B-Diffusers@def456", NULL, &s, err, sizeof err);
    CHECK(rc == 0 && !strcmp(s.commit, "def456"), "a commit hash as revision names the snapshot (%s)",
          rc ? err : s.commit);
    rc = pretrained_resolve("Wan-AI/Wan2.1-T2V-1.3B-Diffusers@nope", NULL, &s, err, sizeof err);
    CHECK(rc != 0 && strstr(err, "--revision nope"), "an uncached revision: %s", err);
    rc = pretrained_resolve("Wan-AI/Wan2.1-T2V-14B-Diffusers", NULL, &s, err, sizeof err);
    CHECK(rc != 0 && strstr(err, "huggingface-cli download Wan-AI/Wan2.1-T2V-14B-Diffusers") &&
              strstr(err, "models--Wan-AI--Wan2.1-T2V-14B-Diffusers") && strstr(err, "HF_HUB_CACHE"),
          "an uncached id says how to fetch it: %s", err);
    put("hub1/models--org--broken/refs/main", "gone");
    rc = pretrained_resolve("org/broken", NULL, &s, err, sizeof err);
    CHECK(rc != 0 && strstr(err, "incomplete"), "a ref to a missing snapshot: %s", err);

    /* HF_HOME/hub, then ~/.cache/huggingface/hub */
    unsetenv("HF_HUB_CACHE");
    make_pipeline("hfhome/hub/models--org--m/snapshots/111");
    put("hfhome/hub/models--org--m/refs/main", "111");
    setenv("HF_HOME", at("hfhome"), 1);
    rc = pretrained_resolve("org/m", NULL, &s, err, sizeof err);
    CHECK(rc == 0 && !strcmp(s.cache_dir, at("hfhome/hub")), "HF_HOME/hub is used without HF_HUB_CACHE (%s)",
          rc ? err : s.cache_dir);
    unsetenv("HF_HOME");
    const char *old_home = getenv("HOME");
    char *saved = old_home ? strdup(old_home) : NULL;
    put("home/.cache/huggingface/hub/models--org--t/refs/main", "222");
    put("home/.cache/huggingface/hub/models--org--t/snapshots/222/config.json", "{}");
    put("home/.cache/huggingface/hub/models--org--t/snapshots/222/diffusion_pytorch_model.safetensors", "x");
    setenv("HOME", at("home"), 1);
    rc = pretrained_resolve("org/t", NULL, &s, err, sizeof err);
    CHECK(rc == 0 && s.kind == PRETRAINED_TRANSFORMER && strstr(s.cache_dir, "home/.cache/huggingface/hub"),
          "~/.cache/huggingface/hub is the last fallback (%s)", rc ? err : s.cache_dir);
    rc = pretrained_resolve("org/m", NULL, &s, err, sizeof err);
    CHECK(rc != 0 && strstr(err, "~/.cache/huggingface/hub"), "the error names the cache it looked in: %s", err);
    if (saved) setenv("HOME", saved, 1), free(saved);

    rc = pretrained_resolve("not a/valid id", NULL, &s, err, sizeof err);
    CHECK(rc != 0 && strstr(err, "org/name"), "a malformed id: %s", err);
    rc = pretrained_resolve("", NULL, &s, err, sizeof err);
    CHECK(rc != 0, "an empty name: %s", err);

    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    if (system(cmd) != 0) printf("# could not remove %s\n", root);
    return test_finish();
}
