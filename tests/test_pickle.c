/* The restricted pickle / torch.save reader (include/dfm/pickle.h) against files written by Python
 * (tests/data/make_pickles.py under /usr/bin/python3 with torch and numpy): every readable fixture is compared
 * bit-exactly with Python's own canonical dump of the object (keys, types, dtypes, shapes, tensor bytes and their
 * float32 conversion), from the file and from memory; hostile and broken fixtures must be refused with a
 * message naming the file and what was wrong, without running anything; hand-made streams cover memo, stack,
 * nesting and cycle abuse; every prefix of small valid files is refused cleanly; random mutations must not
 * crash; `dfm data inspect` prints the tree of .meta, .pth and .pickle files. */
#include "dfm/pickle.h"
#include "test.h"
#include "test_fs.h"

#include <string.h>

static char *dir;

/* ------------------------------------------------------------------------------ canonical dump (as Python) */

static void hex(FILE *o, const void *p, size_t n) {
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) fprintf(o, "%02x", b[i]);
}

static void canon(FILE *o, const pk_value *v, int d) {
    fprintf(o, "%*s", 2 * d, "");
    switch (v->kind) {
    case PK_NONE:
        fprintf(o, "none\n");
        break;
    case PK_BOOL:
        fprintf(o, "bool %d\n", (int)v->i);
        break;
    case PK_INT:
        fprintf(o, "int %lld\n", (long long)v->i);
        break;
    case PK_BIGINT:
        fprintf(o, "bigint ");
        hex(o, v->b, v->len);
        fprintf(o, "\n");
        break;
    case PK_FLOAT: {
        uint64_t bits;
        memcpy(&bits, &v->f, 8);
        fprintf(o, "float %016llx\n", (unsigned long long)bits);
        break;
    }
    case PK_STR:
    case PK_BYTES:
        fprintf(o, "%s ", v->kind == PK_STR ? "str" : "bytes");
        hex(o, v->b, v->len);
        fprintf(o, "\n");
        break;
    case PK_LIST:
    case PK_TUPLE:
    case PK_SET:
        fprintf(o, "%s %d\n", v->kind == PK_LIST ? "list" : v->kind == PK_TUPLE ? "tuple" : "set", v->n);
        for (int i = 0; i < v->n; i++) canon(o, v->items[i], d + 1);
        break;
    case PK_DICT:
        fprintf(o, "dict %d\n", v->n);
        for (int i = 0; i < v->n; i++) {
            canon(o, v->keys[i], d + 1);
            canon(o, v->items[i], d + 1);
        }
        break;
    case PK_TENSOR:
    case PK_NDARRAY: {
        const pk_array *a = v->arr;
        fprintf(o, "%s %s [", v->kind == PK_TENSOR ? "tensor" : "ndarray", pk_dtype_name(a->dtype));
        for (int i = 0; i < a->ndim; i++) fprintf(o, "%s%lld", i ? "," : "", (long long)a->shape[i]);
        fprintf(o, "] ");
        hex(o, a->data, a->nbytes);
        float *f = malloc((size_t)(a->numel ? a->numel : 1) * sizeof *f);
        char err[256];
        if (pk_array_to_f32(a, f, err, sizeof err) == 0) {
            fprintf(o, " f32 ");
            hex(o, f, (size_t)a->numel * sizeof *f);
        } else
            fprintf(o, " f32 (%s)", err);
        free(f);
        fprintf(o, "\n");
        break;
    }
    default:
        fprintf(o, "internal kind %d\n", v->kind);
        break;
    }
}

static char *canon_str(const pk_value *v) {
    char *s = NULL;
    size_t n = 0;
    FILE *o = open_memstream(&s, &n);
    canon(o, v, 0);
    fclose(o);
    return s;
}

/* 1 if equal, else prints the first differing line. */
static int same_text(const char *got, const char *want, const char *what) {
    if (!strcmp(got, want)) return 1;
    int line = 1;
    const char *g = got, *w = want;
    while (*g && *g == *w) {
        if (*g == '\n') line++;
        g++, w++;
    }
    while (g > got && g[-1] != '\n') g--, w--;
    printf("# %s: first difference at line %d:\n#   got:  %.160s\n#   want: %.160s\n", what, line, g, w);
    return 0;
}

static pk_expect parse_expect(const char *s) {
    return !strcmp(s, "pickle") ? PK_PICKLE : !strcmp(s, "torch") ? PK_TORCH : PK_ANY;
}

/* ------------------------------------------------------------------------------------------- readable */

static void test_readable(void) {
    size_t len;
    char *list = test_read_file(test_path("%s/cases.txt", dir), &len);
    CHECK(list != NULL, "cases.txt written");
    if (!list) return;
    int n = 0, ok_file = 0, ok_mem = 0, ok_any = 0;
    for (char *line = strtok(list, "\n"); line; line = strtok(NULL, "\n")) {
        char name[256], exp[16];
        if (sscanf(line, "%255s %15s", name, exp) != 2) continue;
        n++;
        char path[1024], err[1024];
        snprintf(path, sizeof path, "%s/%s", dir, name);
        char *ref = test_read_file(test_path("%s.ref", path), NULL);
        pk_doc *d = pk_load_file(path, parse_expect(exp), err, sizeof err);
        if (!d) printf("# %s: %s\n", name, err);
        if (d && ref) {
            char *c = canon_str(d->root);
            ok_file += same_text(c, ref, name);
            free(c);
        }
        pk_doc_free(d);
        size_t blen = 0;
        char *buf = test_read_file(path, &blen);
        d = pk_load_mem(buf, blen, name, parse_expect(exp), err, sizeof err);
        if (!d) printf("# %s (memory): %s\n", name, err);
        if (d && ref) {
            char *c = canon_str(d->root);
            ok_mem += same_text(c, ref, name);
            free(c);
        }
        pk_doc_free(d);
        d = pk_load_mem(buf, blen, name, PK_ANY, err, sizeof err);
        ok_any += d != NULL;
        pk_doc_free(d);
        free(buf);
        free(ref);
    }
    free(list);
    CHECK(n >= 30, "%d readable fixtures listed", n);
    CHECK(ok_file == n,
          "files: %d of %d read bit-exactly as Python holds them (keys, types, dtypes, shapes, "
          "bytes, float32 conversion)",
          ok_file, n);
    CHECK(ok_mem == n, "memory buffers: %d of %d read bit-exactly", ok_mem, n);
    CHECK(ok_any == n, "format sniffing (PK_ANY): %d of %d read", ok_any, n);
}

static void test_queries(void) {
    char err[1024];
    pk_doc *d = pk_load_file(test_path("%s/meta_bf16_p4.meta", dir), PK_ANY, err, sizeof err);
    CHECK(d && d->format == PK_FMT_PICKLE && d->protocol == 4, "meta_bf16_p4.meta: a protocol-4 pickle (%s)",
          d ? "" : err);
    if (!d) return;
    const pk_value *lat = pk_find_array(d->root, "video_latents"), *txt = pk_find_array(d->root, "text_embeddings");
    const pk_value *ff = pk_find_array(d->root, "first_frame"), *nf = pk_dict_get(d->root, "num_frames");
    CHECK(lat && lat->kind == PK_TENSOR && lat->arr->dtype == ST_BF16 && lat->arr->ndim == 5 &&
              lat->arr->shape[1] == 4 && lat->arr->shape[4] == 5 && lat->arr->numel == 120,
          "pk_find_array: video_latents is a bfloat16 tensor [1, 4, 2, 3, 5]");
    CHECK(txt && txt->arr->ndim == 3 && txt->arr->shape[1] == 7 && txt->arr->shape[2] == 16,
          "pk_find_array: text_embeddings [1, 7, 16]");
    CHECK(ff && ff->kind == PK_NDARRAY && ff->arr->dtype == ST_U8 && ff->arr->nbytes == 72,
          "pk_find_array: first_frame is a uint8 numpy array");
    CHECK(nf && nf->kind == PK_INT && nf->i == 9, "pk_dict_get: num_frames = 9");
    CHECK(!pk_find_array(d->root, "num_frames") && !pk_find_array(d->root, "nope") &&
              !pk_dict_get(d->root, "video_latent"),
          "pk_find_array/pk_dict_get: NULL for non-arrays and missing keys");
    const pk_value *md = pk_dict_get(d->root, "metadata");
    const pk_value *fps = pk_dict_get(md, "fps");
    CHECK(fps && fps->kind == PK_FLOAT && fps->f == 16.0, "nested dict: metadata.fps = 16.0");

    char *s = NULL;
    size_t n = 0;
    FILE *o = open_memstream(&s, &n);
    pk_print(o, d->root, 100);
    fclose(o);
    CHECK(strstr(s, "'video_latents': tensor bfloat16 [1, 4, 2, 3, 5]") &&
              strstr(s, "'first_frame': ndarray uint8 [4, 6, 3]") && strstr(s, "'num_frames': int 9") &&
              strstr(s, "'size': tuple (2): (6, 4)"),
          "pk_print shows keys, types, dtypes and shapes");
    free(s);
    s = NULL;
    o = open_memstream(&s, &n);
    pk_print(o, d->root, 3);
    fclose(o);
    CHECK(strstr(s, "cut at 3 lines") != NULL, "pk_print stops at max_lines");
    free(s);

    /* take the latents out, then free the document: the data stays ours */
    pk_array *a = lat->arr;
    float want[120], got[120];
    pk_array_to_f32(a, want, err, sizeof err);
    uint16_t *raw = pk_array_take(a);
    CHECK(raw && !a->data, "pk_array_take detaches the data");
    pk_doc_free(d);
    for (int i = 0; i < 120; i++) {
        uint32_t b = (uint32_t)raw[i] << 16;
        memcpy(&got[i], &b, 4);
    }
    CHECK(!memcmp(got, want, sizeof got), "taken data outlives its document");
    free(raw);

    d = pk_load_file(test_path("%s/nested_find.pickle", dir), PK_PICKLE, err, sizeof err);
    const pk_value *t = d ? pk_find_array(d->root, "video_latents") : NULL;
    CHECK(t && t->arr->numel == 3 && !pk_dict_get(d->root, "video_latents"),
          "pk_find_array searches nested dicts inside lists");
    pk_doc_free(d);

    d = pk_load_file(test_path("%s/sample.pth", dir), PK_TORCH, err, sizeof err);
    const pk_array *sa = d ? pk_as_array(d->root) : NULL;
    CHECK(d && d->format == PK_FMT_TORCH_ZIP && sa && sa->dtype == ST_BF16 && sa->ndim == 4 && sa->shape[0] == 4,
          "Energon .pth part: a bfloat16 tensor [4, 2, 3, 5] from torch.save's zip format");
    pk_doc_free(d);
}

/* ------------------------------------------------------------------------------------------- refused */

static void test_refused(const char *marker) {
    size_t len;
    char *list = test_read_file(test_path("%s/errors.txt", dir), &len);
    CHECK(list != NULL, "errors.txt written");
    if (!list) return;
    for (char *line = strtok(list, "\n"); line; line = strtok(NULL, "\n")) {
        char name[256], exp[16];
        int off = 0;
        if (sscanf(line, "%255s %15s %n", name, exp, &off) != 2) continue;
        const char *want = line + off;
        char path[1024], err[1024] = "";
        snprintf(path, sizeof path, "%s/%s", dir, name);
        pk_doc *d = pk_load_file(path, parse_expect(exp), err, sizeof err);
        CHECK(!d && strstr(err, want) && strstr(err, name), "%s refused: %s", name, err);
        pk_doc_free(d);
        size_t blen = 0;
        char *buf = test_read_file(path, &blen);
        d = pk_load_mem(buf, blen, name, parse_expect(exp), err, sizeof err);
        CHECK(!d && strstr(err, want), "%s refused from memory too", name);
        pk_doc_free(d);
        free(buf);
    }
    free(list);
    struct stat st;
    CHECK(stat(marker, &st) != 0, "no hostile pickle ran its command (%s does not exist)", marker);
}

/* ------------------------------------------------------------------------------------------- hand-made */

static pk_doc *load_bytes(const void *b, size_t n, char *err) {
    uint8_t *copy = malloc(n ? n : 1); /* exactly n bytes, so ASan sees any over-read */
    memcpy(copy, b, n);
    pk_doc *d = pk_load_mem(copy, n, "crafted", PK_ANY, err, 1024);
    free(copy);
    return d;
}

static void expect_refused(const void *b, size_t n, const char *want, const char *what) {
    char err[1024] = "";
    pk_doc *d = load_bytes(b, n, err);
    CHECK(!d && strstr(err, want) && strstr(err, "'crafted'"), "%s: %s", what, err);
    pk_doc_free(d);
}

#define REFUSE(lit, want, what) expect_refused(lit, sizeof(lit) - 1, want, what)

static void test_crafted(void) {
    enum { DEEP = 100000 };
    uint8_t *b = malloc(2 * DEEP + 8);
    size_t n = 0;
    b[n++] = 0x80, b[n++] = 2;
    for (int i = 0; i < DEEP; i++) b[n++] = ']';
    for (int i = 0; i < DEEP - 1; i++) b[n++] = 'a';
    b[n++] = '.';
    expect_refused(b, n, "nested deeper than", "100000 nested lists refused (no stack overflow)");
    n = 2;
    for (int i = 0; i < DEEP; i++) b[n++] = '(';
    b[n++] = 'N';
    for (int i = 0; i < DEEP; i++) b[n++] = 't';
    b[n++] = '.';
    expect_refused(b, n, "nested deeper than", "100000 nested tuples refused");
    n = 2;
    for (int i = 0; i < DEEP; i++) b[n++] = '(';
    b[n++] = 'N';
    b[n++] = '.';
    char err[1024];
    pk_doc *d = load_bytes(b, n, err);
    CHECK(d && d->root->kind == PK_NONE, "100000 open MARKs are only a stack of marks (%s)", d ? "None" : err);
    pk_doc_free(d);
    free(b);

    REFUSE("\x80\x02h\x05.", "memo index 5 was never set", "BINGET of an unset memo index");
    REFUSE("\x80\x02j\xff\xff\xff\x7f.", "was never set", "LONG_BINGET far out of range");
    REFUSE("\x80\x02Nr\xff\xff\xff\xff.", "out of range", "LONG_BINPUT 2^32-1 refused before allocating");
    REFUSE("\x80\x02q\x00.", "needs a value on the stack", "BINPUT on an empty stack");
    REFUSE("\x80\x02.", "STOP needs a value", "STOP on an empty stack");
    REFUSE("\x80\x02(.", "above the last MARK", "STOP right after MARK");
    REFUSE("\x80\x02Ne.", "without a MARK", "APPENDS without MARK");
    REFUSE("\x80\x02(Ne.", "without a container below its MARK", "APPENDS without a list");
    REFUSE("\x80\x02}(Nu.", "odd number", "SETITEMS with an odd item count");
    REFUSE("\x80\x02NNa.", "APPEND to a None", "APPEND to a non-list");
    REFUSE("\x80\x02]\x94h\x00"
           "a.",
           "contains itself", "a list appended to itself (a cycle)");
    REFUSE("\x80\x02}\x94h\x00]s.", "hashable", "a list as a dict key");
    REFUSE("\x80\x02\xff.", "unknown opcode 0xff", "unknown opcode");
    REFUSE("\x80\x06N.", "protocol 6", "pickle protocol 6");
    REFUSE("\x80\x02I1\n.", "protocols 0-1", "text opcodes of protocol 0");
    REFUSE("\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00N.", "truncated: FRAME", "FRAME longer than the stream");
    REFUSE("\x80\x02X\xff\xff\xff\xff"
           "ab.",
           "truncated: BINUNICODE needs 4294967295", "BINUNICODE length past the end");
    REFUSE("\x80\x04\x8e\xff\xff\xff\xff\xff\xff\xff\x7f.", "truncated: BINBYTES8", "BINBYTES8 of 2^63 bytes");
    REFUSE("\x80\x02\x8b\xff\xff\xff\xff.", "negative length", "LONG4 with a negative length");
    REFUSE("\x80\x02"
           "cbuiltins\neval\n.",
           "builtins.eval", "GLOBAL builtins.eval refused where it appears");
    REFUSE("\x80\x04\x8c\x02"
           "os\x8c\x06"
           "system\x93.",
           "os.system", "STACK_GLOBAL os.system refused");
    REFUSE("\x80\x02"
           "ctorch\nFloatStorage\n)R.",
           "cannot be called", "a storage class is not callable");
    REFUSE("\x80\x02"
           "ccollections\nOrderedDict\n.",
           "used as a value", "a bare global as the result");
    REFUSE("\x80\x02"
           "c_codecs\nencode\nX\x01\x00\x00\x00"
           "aX\x05\x00\x00\x00"
           "utf-7\x86R.",
           "encoding 'utf-7'", "_codecs.encode with another encoding");
    REFUSE("\x80\x02"
           "ctorch._utils\n_rebuild_tensor_v2\n(NK\x00)))\x89}tR.",
           "must be a storage", "_rebuild_tensor_v2 without a storage");
    REFUSE("\x80\x02"
           "ctorch.storage\n_load_from_bytes\nC\x03"
           "abc\x85R.",
           "torch.save bytes at offset", "_load_from_bytes of garbage names where the bytes are");
    REFUSE("", "truncated", "an empty file");
    d = pk_load_file(test_path("%s/does_not_exist.meta", dir), PK_ANY, err, sizeof err);
    CHECK(!d && strstr(err, "cannot open") && strstr(err, "does_not_exist.meta"), "missing file: %s", err);
}

/* Every prefix of a small valid file is refused with a message, never a crash or an over-read. */
static void test_truncations(const char *name) {
    size_t len;
    char *buf = test_read_file(test_path("%s/%s", dir, name), &len);
    if (!buf) {
        CHECK(0, "%s exists", name);
        return;
    }
    int bad = 0;
    char err[1024], last[1024] = "";
    for (size_t n = 0; n < len; n++) {
        uint8_t *p = malloc(n ? n : 1);
        memcpy(p, buf, n);
        pk_doc *d = pk_load_mem(p, n, name, PK_ANY, err, sizeof err);
        if (d || !strstr(err, name) || !err[0]) {
            if (!bad) printf("# %s cut at %zu: %s\n", name, n, d ? "loaded" : err);
            bad++;
        }
        if (n == len / 2) snprintf(last, sizeof last, "%s", err);
        pk_doc_free(d);
        free(p);
    }
    CHECK(bad == 0, "%s: all %zu prefixes refused with a message (e.g. %s)", name, len, last);
    free(buf);
}

/* Random byte mutations must never crash (the ASan build checks every access). */
static void test_mutations(const char *name, int rounds) {
    size_t len;
    char *buf = test_read_file(test_path("%s/%s", dir, name), &len);
    if (!buf || !len) {
        CHECK(0, "%s exists", name);
        free(buf);
        return;
    }
    int loaded = 0;
    char err[1024];
    for (int r = 0; r < rounds; r++) {
        uint8_t *p = malloc(len);
        memcpy(p, buf, len);
        int k = 1 + (int)(test_uniform() * 4);
        for (int i = 0; i < k; i++) {
            size_t at = (size_t)(test_uniform() * (double)len);
            p[at] = test_uniform() < 0.5 ? (uint8_t)(test_uniform() * 256) : (uint8_t)(p[at] ^ (1u << (r % 8)));
        }
        pk_doc *d = pk_load_mem(p, len, name, PK_ANY, err, sizeof err);
        if (d) {
            loaded++;
            FILE *o = fopen("/dev/null", "w");
            pk_print(o, d->root, 200);
            fclose(o);
            pk_find_array(d->root, "video_latents");
        }
        pk_doc_free(d);
        free(p);
    }
    CHECK(1, "%s: %d random mutations, %d still loaded, none crashed", name, rounds, loaded);
    free(buf);
}

/* ------------------------------------------------------------------------------------------- CLI */

static void test_inspect(const char *marker) {
    const char *bin = test_dfm_bin();
    const char *out = test_path("%s/inspect.txt", dir);
    int rc = test_sh("%s data inspect %s/meta_bf16_p4.meta > %s 2>&1", bin, dir, out);
    char *s = test_read_file(out, NULL);
    CHECK(rc == 0 && s && strstr(s, "pickle (protocol 4)") &&
              strstr(s, "'video_latents': tensor bfloat16 [1, 4, 2, 3, 5]") &&
              strstr(s, "'text_embeddings': tensor bfloat16 [1, 7, 16]") &&
              strstr(s, "'first_frame': ndarray uint8 [4, 6, 3]") && strstr(s, "'fps': float 16"),
          "dfm data inspect X.meta prints the tree (rc %d)", rc);
    if (rc || !s) printf("# %s\n", s ? s : "(no output)");
    free(s);
    rc = test_sh("%s data inspect %s/meta_bf16_zip.meta > %s 2>&1", bin, dir, out);
    s = test_read_file(out, NULL);
    CHECK(rc == 0 && s && strstr(s, "torch.save (zip)") && strstr(s, "'video_latents': tensor bfloat16"),
          "dfm data inspect of a torch.save .meta");
    free(s);
    rc = test_sh("%s data inspect %s/sample.pth > %s 2>&1", bin, dir, out);
    s = test_read_file(out, NULL);
    CHECK(rc == 0 && s && strstr(s, "tensor bfloat16 [4, 2, 3, 5]"), "dfm data inspect X.pth");
    free(s);
    rc = test_sh("%s data inspect %s/sample.pickle > %s 2>&1", bin, dir, out);
    s = test_read_file(out, NULL);
    CHECK(rc == 0 && s && strstr(s, "tensor bfloat16 [7, 16]"), "dfm data inspect X.pickle");
    free(s);
    rc = test_sh("%s data inspect %s/evil_posix_system.pickle > %s 2>&1", bin, dir, out);
    s = test_read_file(out, NULL);
    struct stat st;
    CHECK(rc != 0 && s && strstr(s, "posix.system") && stat(marker, &st) != 0,
          "dfm data inspect refuses a hostile pickle, naming the global (rc %d)", rc);
    free(s);
}

int main(void) {
    test_seed();
    dir = test_mkdtemp();
    char marker[512];
    snprintf(marker, sizeof marker, "%s/PWNED", dir);
    int failed = 0;
    if (test_sh("/usr/bin/python3 -c 'import torch, numpy' >/dev/null 2>&1") != 0) {
        printf("FAIL /usr/bin/python3 with torch and numpy is needed for the fixtures (scripts/install-deps.sh "
               "--test)\n");
        failed = 1;
    } else {
        int rc = test_sh("/usr/bin/python3 tests/data/make_pickles.py %s %s >/dev/null", dir, marker);
        CHECK(rc == 0, "tests/data/make_pickles.py wrote the fixtures");
        test_readable();
        test_queries();
        test_refused(marker);
        test_truncations("meta_bf16_p2.meta");
        test_truncations("meta_bf16_p5.meta");
        test_truncations("sample.pickle");
        test_truncations("sample_legacy.pth");
        test_truncations("sample.pth");
        test_mutations("meta_bf16_p5.meta", 1500);
        test_mutations("views_p2.pickle", 1500);
        test_mutations("numpy_p2.pickle", 1000);
        test_mutations("sample_legacy.pth", 1000);
        test_mutations("sample.pth", 500);
        test_inspect(marker);
    }
    test_crafted();
    test_rmtree(dir);
    free(dir);
    return test_finish() || failed;
}
