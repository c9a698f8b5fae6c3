/* torch.save containers around the unpickler: zip archives (libzip, from a file or from memory) and the legacy
 * stream, plus the loaders of include/dfm/pickle.h. Format facts are in pickle.h's header comment. */
#include "data/pickle_impl.h"
#include "dfm/common.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zip.h>

static const uint8_t MAGIC[10] = {0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19};
#define MAX_DATA_PKL ((uint64_t)1 << 30)

/* ------------------------------------------------------------------------------------------------ map */

static uint64_t hash_str(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h;
}

pk_value *pk_map_get(const pk_map *m, const char *key) {
    if (!m->cap) return NULL;
    for (size_t i = hash_str(key) & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
        if (!m->keys[i]) return NULL;
        if (!strcmp(m->keys[i], key)) return m->vals[i];
    }
}

void pk_map_put(pk_ctx *C, pk_map *m, const char *key, pk_value *v) {
    if (2 * (m->n + 1) > m->cap) {
        pk_map old = *m;
        m->cap = old.cap ? 2 * old.cap : 16;
        m->keys = pk_alloc(C, m->cap * sizeof *m->keys);
        m->vals = pk_alloc(C, m->cap * sizeof *m->vals);
        m->n = 0;
        for (size_t i = 0; i < old.cap; i++)
            if (old.keys[i]) pk_map_put(C, m, old.keys[i], old.vals[i]);
    }
    size_t i = hash_str(key) & (m->cap - 1);
    while (m->keys[i] && strcmp(m->keys[i], key)) i = (i + 1) & (m->cap - 1);
    if (!m->keys[i]) m->n++;
    m->keys[i] = key;
    m->vals[i] = v;
}

/* ---------------------------------------------------------------------------------------- storages */

static char *arena_text(pk_ctx *C, const char *s, size_t n) {
    char *d = pk_alloc(C, n + 1);
    memcpy(d, s, n);
    return d;
}

static int key_text(pk_stream *S, size_t at, const pk_value *v, const char *what, const char **out) {
    if (v->kind != PK_STR && v->kind != PK_BYTES)
        return pk_fail(S, at, "%s must be a string, got a %s", what, pk_kind_name(v->kind));
    if (v->len > 1024 || memchr(v->s, 0, v->len))
        return pk_fail(S, at, "%s must be a short string without NUL bytes", what);
    *out = arena_text(S->C, v->s, v->len);
    return 0;
}

static pk_value *new_storage(pk_ctx *C, st_dtype dt, int64_t numel, const char *key) {
    pk_value *v = pk_new(C, PK__STORAGE);
    pk_storage *s = pk_alloc(C, sizeof *s);
    s->dtype = dt;
    s->numel = numel;
    s->key = key;
    v->priv = s;
    return v;
}

/* ('storage', <Type>Storage, key, location, numel[, view_metadata]) */
static int storage_pid(pk_stream *S, size_t at, const pk_value *pid, int want, st_dtype *dt, const char **key,
                       int64_t *numel) {
    if (pid->kind != PK_TUPLE)
        return pk_fail(S, at, "a persistent id must be a tuple, got a %s", pk_kind_name(pid->kind));
    if (pid->n >= 1 && pk_is_text(pid->items[0], "module"))
        return pk_fail(S, at, "a saved nn.Module class ('module' persistent id) is not supported");
    if (pid->n != want || !pk_is_text(pid->items[0], "storage"))
        return pk_fail(S, at, "persistent id: expected ('storage', type, key, location, numel%s), got a tuple of %d",
                       want == 6 ? ", view" : "", pid->n);
    if (pk_storage_global(pid->items[1], dt))
        return pk_fail(S, at, "persistent id: item 2 must be a torch.<Type>Storage, got a %s",
                       pk_kind_name(pid->items[1]->kind));
    if (key_text(S, at, pid->items[2], "the storage key", key)) return -1;
    if (pid->items[3]->kind != PK_STR && pid->items[3]->kind != PK_BYTES)
        return pk_fail(S, at, "persistent id: the location must be a string");
    const pk_value *n = pid->items[4];
    if (n->kind != PK_INT || n->i < 0 || n->i > PK_MAX_NUMEL)
        return pk_fail(S, at, "storage '%s': the element count must be an int in [0, 2^48]", *key);
    *numel = n->i;
    return 0;
}

/* -------------------------------------------------------------------------------------------- legacy */

typedef struct {
    pk_map roots, views;
} legacy_ctx;

static int legacy_persid(pk_stream *S, size_t at, pk_value *pid, pk_value **out) {
    legacy_ctx *L = S->persid_ctx;
    st_dtype dt = ST_U8;
    const char *key = NULL;
    int64_t numel = 0;
    if (storage_pid(S, at, pid, 6, &dt, &key, &numel)) return -1;
    pk_value *root = pk_map_get(&L->roots, key);
    if (!root) {
        root = new_storage(S->C, dt, numel, key);
        pk_map_put(S->C, &L->roots, key, root);
    }
    const pk_value *vm = pid->items[5];
    if (vm->kind == PK_NONE) {
        *out = root;
        return 0;
    }
    const char *vkey;
    if (vm->kind != PK_TUPLE || vm->n != 3 || key_text(S, at, vm->items[0], "the view key", &vkey) ||
        vm->items[1]->kind != PK_INT || vm->items[2]->kind != PK_INT)
        return pk_fail(S, at, "storage '%s': view metadata must be None or (key, offset, size)", key);
    pk_value *v = pk_map_get(&L->views, vkey);
    if (!v) {
        const pk_storage *rs = root->priv;
        int64_t off = vm->items[1]->i, sz = vm->items[2]->i;
        if (dt != rs->dtype) return pk_fail(S, at, "storage view '%s' has another dtype than its storage", vkey);
        if (off < 0 || sz < 0 || off > rs->numel || sz > rs->numel - off)
            return pk_fail(S, at, "storage view '%s' [%lld, +%lld) lies outside storage '%s' of %lld elements", vkey,
                           (long long)off, (long long)sz, key, (long long)rs->numel);
        v = new_storage(S->C, dt, sz, vkey);
        pk_storage *vs = v->priv;
        vs->root = root;
        vs->view_offset = off;
        pk_map_put(S->C, &L->views, vkey, v);
    }
    *out = v;
    return 0;
}

static int legacy_load(pk_ctx *C, const uint8_t *buf, size_t len, const char *what, pk_value **out, int *proto) {
    legacy_ctx L = {0};
    pk_stream S = {.C = C, .buf = buf, .len = len, .what = what};
    size_t pos = 0, end;
    pk_value *v;
    if (pk_unpickle(&S, pos, &end, &v, NULL)) return -1;
    if (v->kind != PK_BIGINT || v->len != sizeof MAGIC || memcmp(v->b, MAGIC, sizeof MAGIC))
        return pk_fail(&S, 0,
                       "not a torch.save stream: the first pickle is not the magic number 0x1950a86a20f9469cfc6c");
    pos = end;
    if (pk_unpickle(&S, pos, &end, &v, NULL)) return -1;
    if (v->kind != PK_INT || v->i != 1001) return pk_fail(&S, pos, "torch.save legacy protocol version must be 1001");
    pos = end;
    if (pk_unpickle(&S, pos, &end, &v, NULL)) return -1;
    if (v->kind != PK_DICT)
        return pk_fail(&S, pos, "torch.save sys_info must be a dict, got a %s", pk_kind_name(v->kind));
    for (int i = 0; i < v->n; i++)
        if (pk_is_text(v->keys[i], "little_endian") && v->items[i]->kind == PK_BOOL && !v->items[i]->i)
            return pk_fail(&S, pos, "written on a big-endian machine (sys_info little_endian is False)");
    pos = end;
    S.persid = legacy_persid;
    S.persid_ctx = &L;
    pk_value *result;
    if (pk_unpickle(&S, pos, &end, &result, proto)) return -1;
    pos = end;
    S.persid = NULL;
    if (pk_unpickle(&S, pos, &end, &v, NULL)) return -1;
    if (v->kind != PK_LIST)
        return pk_fail(&S, pos, "the storage key list must be a list, got a %s", pk_kind_name(v->kind));
    size_t list_at = pos;
    pos = end;
    for (int i = 0; i < v->n; i++) {
        const char *key;
        if (key_text(&S, list_at, v->items[i], "a storage key", &key)) return -1;
        pk_value *sv = pk_map_get(&L.roots, key);
        if (!sv) return pk_fail(&S, list_at, "storage key '%s' in the key list is not used by the object", key);
        pk_storage *st = sv->priv;
        if (len - pos < 8)
            return pk_fail(&S, pos, "truncated: storage '%s' needs an 8-byte element count, the stream ends at %zu",
                           key, len);
        uint64_t n = 0;
        for (int b = 7; b >= 0; b--) n = n << 8 | buf[pos + (size_t)b];
        if (n != (uint64_t)st->numel)
            return pk_fail(&S, pos, "storage '%s' has %llu elements in the file but %lld in its persistent id", key,
                           (unsigned long long)n, (long long)st->numel);
        uint64_t nbytes = n * pk_dtype_size(st->dtype);
        pos += 8;
        if (nbytes > len - pos)
            return pk_fail(&S, pos, "truncated: storage '%s' needs %llu bytes (%llu x %s), the stream has %zu left",
                           key, (unsigned long long)nbytes, (unsigned long long)n, pk_dtype_name(st->dtype), len - pos);
        st->data = buf + pos;
        st->data_numel = (int64_t)n;
        pos += nbytes;
    }
    *out = result;
    return 0;
}

/* ----------------------------------------------------------------------------------------------- zip */

typedef struct {
    zip_t *z;
    const char *prefix;
    const char *what; /* the nesting context, NULL for the file itself */
    pk_map cache;
} zip_ctx;

static int zfail(pk_ctx *C, const zip_ctx *Z, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int zfail(pk_ctx *C, const zip_ctx *Z, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (Z->what) return pk_failc(C, "(%s): %s", Z->what, msg);
    return pk_failc(C, "%s", msg);
}

static int zip_read(pk_ctx *C, const zip_ctx *Z, zip_int64_t idx, const char *name, uint64_t nbytes, uint8_t **out) {
    if (nbytes > C->read_budget)
        return zfail(C, Z, "entry '%s': %llu bytes is more than this archive can hold", name,
                     (unsigned long long)nbytes);
    C->read_budget -= nbytes;
    uint8_t *b = malloc(nbytes ? nbytes : 1);
    if (!b) return zfail(C, Z, "entry '%s': out of memory for %llu bytes", name, (unsigned long long)nbytes);
    pk_ctx_keep_blob(C, b);
    zip_file_t *f = zip_fopen_index(Z->z, (zip_uint64_t)idx, 0);
    if (!f) return zfail(C, Z, "entry '%s': %s", name, zip_strerror(Z->z));
    uint64_t got = 0;
    while (got < nbytes) {
        zip_int64_t r = zip_fread(f, b + got, nbytes - got);
        if (r <= 0) break;
        got += (uint64_t)r;
    }
    if (got != nbytes) {
        int rc = zfail(C, Z, "entry '%s': read %llu of %llu bytes (%s)", name, (unsigned long long)got,
                       (unsigned long long)nbytes, zip_file_strerror(f));
        zip_fclose(f);
        return rc;
    }
    zip_fclose(f);
    *out = b;
    return 0;
}

static zip_int64_t zip_entry(const zip_ctx *Z, const char *rest, uint64_t *size) {
    char name[2200];
    snprintf(name, sizeof name, "%s/%s", Z->prefix, rest);
    zip_int64_t idx = zip_name_locate(Z->z, name, 0);
    zip_stat_t zs;
    if (idx >= 0 && (zip_stat_index(Z->z, (zip_uint64_t)idx, 0, &zs) || !(zs.valid & ZIP_STAT_SIZE))) idx = -1;
    if (idx >= 0) *size = zs.size;
    return idx;
}

static int zip_persid(pk_stream *S, size_t at, pk_value *pid, pk_value **out) {
    zip_ctx *Z = S->persid_ctx;
    st_dtype dt = ST_U8;
    const char *key = NULL;
    int64_t numel = 0;
    if (storage_pid(S, at, pid, 5, &dt, &key, &numel)) return -1;
    pk_value *v = pk_map_get(&Z->cache, key);
    if (v) {
        *out = v;
        return 0;
    }
    uint64_t nbytes = (uint64_t)numel * pk_dtype_size(dt), size;
    char rest[1100];
    snprintf(rest, sizeof rest, "data/%s", key);
    zip_int64_t idx = zip_entry(Z, rest, &size);
    if (idx < 0) return pk_fail(S, at, "the archive has no entry '%s/%s' for storage '%s'", Z->prefix, rest, key);
    if (size < nbytes)
        return pk_fail(S, at, "entry '%s/%s' holds %llu bytes but storage '%s' needs %llu (%lld x %s)", Z->prefix, rest,
                       (unsigned long long)size, key, (unsigned long long)nbytes, (long long)numel, pk_dtype_name(dt));
    uint8_t *b;
    char full[2200];
    snprintf(full, sizeof full, "%s/%s", Z->prefix, rest);
    if (zip_read(S->C, Z, idx, full, nbytes, &b)) return -1;
    v = new_storage(S->C, dt, numel, key);
    pk_storage *st = v->priv;
    st->data = b;
    st->data_numel = numel;
    pk_map_put(S->C, &Z->cache, key, v);
    *out = v;
    return 0;
}

static int zip_load(pk_ctx *C, zip_t *z, const char *what, pk_value **out, int *proto) {
    zip_ctx Z = {.z = z, .what = what};
    zip_int64_t n = zip_get_num_entries(z, 0);
    for (zip_int64_t i = 0; i < n; i++) {
        const char *name = zip_get_name(z, (zip_uint64_t)i, ZIP_FL_ENC_RAW);
        const char *slash = name ? strchr(name, '/') : NULL;
        if (!slash || slash == name || strcmp(slash, "/data.pkl")) continue;
        size_t pl = (size_t)(slash - name);
        if (pl > 1000) return zfail(C, &Z, "a record name longer than 1000 bytes");
        if (Z.prefix && (strlen(Z.prefix) != pl || memcmp(Z.prefix, name, pl)))
            return zfail(C, &Z, "two data.pkl records ('%s/data.pkl' and '%s')", Z.prefix, name);
        if (!Z.prefix) Z.prefix = arena_text(C, name, pl);
    }
    if (!Z.prefix) return zfail(C, &Z, "a zip archive without <name>/data.pkl: not a torch.save file");
    uint64_t size;
    zip_int64_t idx;
    if (zip_entry(&Z, "constants.pkl", &size) >= 0)
        return zfail(C, &Z, "a TorchScript archive (torch.jit.save), not a torch.save file");
    if ((idx = zip_entry(&Z, "byteorder", &size)) >= 0) {
        uint8_t *b;
        if (size > 16) return zfail(C, &Z, "'%s/byteorder' is %llu bytes long", Z.prefix, (unsigned long long)size);
        if (zip_read(C, &Z, idx, "byteorder", size, &b)) return -1;
        if (size != 6 || memcmp(b, "little", 6))
            return zfail(C, &Z, "'%s/byteorder' is not \"little\": big-endian archives are not supported", Z.prefix);
    }
    idx = zip_entry(&Z, "data.pkl", &size);
    if (idx < 0) return zfail(C, &Z, "cannot stat '%s/data.pkl'", Z.prefix);
    if (size > MAX_DATA_PKL)
        return zfail(C, &Z, "'%s/data.pkl' is %llu bytes (more than 1 GiB)", Z.prefix, (unsigned long long)size);
    uint8_t *b;
    char name[1100], whatbuf[1400];
    snprintf(name, sizeof name, "%s/data.pkl", Z.prefix);
    if (zip_read(C, &Z, idx, name, size, &b)) return -1;
    if (what)
        snprintf(whatbuf, sizeof whatbuf, "%s in %s", name, what);
    else
        snprintf(whatbuf, sizeof whatbuf, "%s", name);
    pk_stream S = {.C = C,
                   .buf = b,
                   .len = size,
                   .what = arena_text(C, whatbuf, strlen(whatbuf)),
                   .persid = zip_persid,
                   .persid_ctx = &Z};
    size_t end;
    return pk_unpickle(&S, 0, &end, out, proto);
}

static int zip_mem(pk_ctx *C, const uint8_t *buf, size_t len, const char *what, pk_value **out, int *proto) {
    zip_error_t ze;
    zip_error_init(&ze);
    zip_source_t *src = zip_source_buffer_create(buf, len, 0, &ze);
    zip_t *z = src ? zip_open_from_source(src, ZIP_RDONLY, &ze) : NULL;
    if (!z) {
        zip_ctx Z = {.what = what};
        int rc = zfail(C, &Z, "not a readable zip archive: %s", zip_error_strerror(&ze));
        if (src) zip_source_free(src);
        zip_error_fini(&ze);
        return rc;
    }
    zip_error_fini(&ze);
    int rc = zip_load(C, z, what, out, proto);
    zip_discard(z);
    return rc;
}

/* ---------------------------------------------------------------------------------------- dispatch */

static int is_zip(const uint8_t *b, size_t n) {
    return n >= 4 && b[0] == 'P' && b[1] == 'K' && ((b[2] == 3 && b[3] == 4) || (b[2] == 5 && b[3] == 6));
}

/* The legacy stream's first pickle is LONG1 10 <magic> within its first bytes (after PROTO and maybe FRAME). */
static int is_legacy(const uint8_t *b, size_t n) {
    static const uint8_t pat[12] = {0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19};
    size_t lim = n < 32 ? n : 32;
    return lim >= sizeof pat && memmem(b, lim, pat, sizeof pat) != NULL;
}

static int load_torch(pk_ctx *C, const uint8_t *buf, size_t len, const char *what, pk_value **out, pk_format *fmt,
                      int *proto) {
    if (is_zip(buf, len)) {
        *fmt = PK_FMT_TORCH_ZIP;
        return zip_mem(C, buf, len, what, out, proto);
    }
    if (is_legacy(buf, len)) {
        *fmt = PK_FMT_TORCH_LEGACY;
        return legacy_load(C, buf, len, what, out, proto);
    }
    pk_stream S = {.C = C, .what = what};
    return pk_fail(&S, 0,
                   "not a torch.save file: neither a zip archive nor a legacy stream starting with torch's "
                   "magic number");
}

int pk_torch_nested(pk_stream *S, size_t at, const uint8_t *buf, size_t len, pk_value **out) {
    pk_ctx *C = S->C;
    if (C->nest >= PK_MAX_NEST)
        return pk_fail(S, at, "torch.save streams nested more than %d deep (_load_from_bytes)", PK_MAX_NEST);
    char what[1400];
    if (S->what)
        snprintf(what, sizeof what, "torch.save bytes at offset %zu of %s", at, S->what);
    else
        snprintf(what, sizeof what, "torch.save bytes at offset %zu", at);
    pk_format fmt;
    pk_value *v;
    C->nest++;
    int rc = load_torch(C, buf, len, arena_text(C, what, strlen(what)), &v, &fmt, NULL);
    C->nest--;
    if (rc) return -1;
    if (v->kind != PK__STORAGE)
        return pk_fail(S, at, "_load_from_bytes: the torch.save bytes hold a %s, expected a storage",
                       pk_kind_name(v->kind));
    *out = v;
    return 0;
}

/* ------------------------------------------------------------------------------------------- loaders */

static void ctx_init(pk_ctx *C, const char *name, uint64_t input_len, char *err, size_t errlen) {
    memset(C, 0, sizeof *C);
    C->name = name;
    C->A = xcalloc(1, sizeof *C->A);
    C->err = err;
    C->errlen = errlen;
    C->budget = 2 * input_len + PK_EXTRA_BYTES;
    C->read_budget = input_len + PK_EXTRA_BYTES;
    if (err && errlen) err[0] = 0;
}

static pk_doc *ctx_done(pk_ctx *C, int rc, pk_value *root, pk_format fmt, int proto) {
    if (!rc) rc = pk_materialise(C);
    if (!rc) rc = pk_finish(C, root);
    for (size_t i = 0; i < C->nblobs; i++) free(C->blobs[i]);
    free(C->blobs);
    free(C->pend);
    if (rc) {
        pk_arena_free(C->A);
        return NULL;
    }
    pk_doc *d = xcalloc(1, sizeof *d);
    d->root = root;
    d->format = fmt;
    d->protocol = proto;
    d->arena_ = C->A;
    return d;
}

static int load_core(pk_ctx *C, const uint8_t *buf, size_t len, pk_expect expect, pk_value **root, pk_format *fmt,
                     int *proto) {
    int zip = is_zip(buf, len), legacy = !zip && is_legacy(buf, len);
    *fmt = PK_FMT_PICKLE;
    if (expect == PK_PICKLE && (zip || legacy))
        return pk_failc(C, "a torch.save file (%s), not a plain pickle: read it as a torch.save file",
                        zip ? "zip archive" : "legacy stream");
    if (expect == PK_TORCH || zip || legacy) return load_torch(C, buf, len, NULL, root, fmt, proto);
    pk_stream S = {.C = C, .buf = buf, .len = len};
    size_t end;
    return pk_unpickle(&S, 0, &end, root, proto);
}

pk_doc *pk_load_mem(const void *buf, size_t len, const char *name, pk_expect expect, char *err, size_t errlen) {
    pk_ctx C;
    ctx_init(&C, name ? name : "<memory>", len, err, errlen);
    pk_value *root = NULL;
    pk_format fmt = PK_FMT_PICKLE;
    int proto = 0;
    int rc = load_core(&C, buf ? buf : (const void *)"", buf ? len : 0, expect, &root, &fmt, &proto);
    return ctx_done(&C, rc, root, fmt, proto);
}

pk_doc *pk_load_file(const char *path, pk_expect expect, char *err, size_t errlen) {
    if (err && errlen) err[0] = 0;
    FILE *f = fopen(path, "rb");
    struct stat st;
    if (!f || fstat(fileno(f), &st) || !S_ISREG(st.st_mode)) {
        if (err && errlen)
            snprintf(err, errlen, "'%s': cannot open: %s", path, f ? "not a regular file" : strerror(errno));
        if (f) fclose(f);
        return NULL;
    }
    uint8_t head[4] = {0};
    size_t nh = fread(head, 1, sizeof head, f);
    pk_ctx C;
    pk_value *root = NULL;
    pk_format fmt = PK_FMT_PICKLE;
    int proto = 0, rc;
    if (is_zip(head, nh) && expect != PK_PICKLE) { /* read entries straight from the file */
        fclose(f);
        ctx_init(&C, path, (uint64_t)st.st_size, err, errlen);
        fmt = PK_FMT_TORCH_ZIP;
        int zerr = 0;
        zip_t *z = zip_open(path, ZIP_RDONLY, &zerr);
        if (!z) {
            zip_error_t ze;
            zip_error_init_with_code(&ze, zerr);
            rc = pk_failc(&C, "not a readable zip archive: %s", zip_error_strerror(&ze));
            zip_error_fini(&ze);
        } else {
            rc = zip_load(&C, z, NULL, &root, &proto);
            zip_discard(z);
        }
        return ctx_done(&C, rc, root, fmt, proto);
    }
    size_t len = (size_t)st.st_size;
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf) {
        fclose(f);
        if (err && errlen) snprintf(err, errlen, "'%s': out of memory for %zu bytes", path, len);
        return NULL;
    }
    memcpy(buf, head, nh < len ? nh : len);
    size_t got = nh < len ? nh : len;
    while (got < len) {
        size_t r = fread(buf + got, 1, len - got, f);
        if (!r) break;
        got += r;
    }
    int ioerr = ferror(f);
    fclose(f);
    if (got != len || ioerr) {
        free(buf);
        if (err && errlen) snprintf(err, errlen, "'%s': read %zu of %zu bytes", path, got, len);
        return NULL;
    }
    ctx_init(&C, path, len, err, errlen);
    pk_ctx_keep_blob(&C, buf); /* freed once the document has copied what it keeps */
    rc = load_core(&C, buf, len, expect, &root, &fmt, &proto);
    return ctx_done(&C, rc, root, fmt, proto);
}

void pk_doc_free(pk_doc *d) {
    if (!d) return;
    pk_arena_free(d->arena_);
    free(d);
}
