/* Tar reader and writer, webdataset grouping, Energon .tar.idx. See include/dfm/tar.h. */
#include "dfm/tar.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ustar header field offsets and lengths */
enum {
    H_NAME = 0,
    H_NAME_LEN = 100,
    H_MODE = 100,
    H_UID = 108,
    H_GID = 116,
    H_SIZE = 124,
    H_SIZE_LEN = 12,
    H_MTIME = 136,
    H_CHKSUM = 148,
    H_CHKSUM_LEN = 8,
    H_TYPE = 156,
    H_LINK = 157,
    H_MAGIC = 257,
    H_VERSION = 263,
    H_UNAME = 265,
    H_GNAME = 297,
    H_PREFIX = 345,
    H_PREFIX_LEN = 155,
};

static int rerr(tar_reader *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int rerr(tar_reader *r, const char *fmt, ...) {
    va_list ap;
    int n = snprintf(r->err, sizeof r->err, "'%s': ", r->path ? r->path : "?");
    if (n < 0 || n >= (int)sizeof r->err) return -1;
    va_start(ap, fmt);
    vsnprintf(r->err + n, sizeof r->err - (size_t)n, fmt, ap);
    va_end(ap);
    return -1;
}

static uint64_t round_block(uint64_t n) {
    return (n + TAR_BLOCK - 1) / TAR_BLOCK * TAR_BLOCK;
}

int tar_open(tar_reader *r, const char *path) {
    memset(r, 0, sizeof *r);
    r->path = xstrdup(path);
    r->global_size = -1;
    r->f = fopen(path, "rb");
    if (!r->f) return rerr(r, "cannot open: %s", strerror(errno));
    struct stat st;
    if (fstat(fileno(r->f), &st) != 0) return rerr(r, "cannot stat: %s", strerror(errno));
    r->file_size = (uint64_t)st.st_size;
    return 0;
}

void tar_close(tar_reader *r) {
    if (r->f) fclose(r->f);
    free(r->path);
    free(r->name);
    free(r->global_path);
    memset(r, 0, sizeof *r);
}

int tar_seek(tar_reader *r, uint64_t offset) {
    if (offset % TAR_BLOCK)
        return rerr(r, "offset %llu is not on a 512-byte block boundary", (unsigned long long)offset);
    if (offset > r->file_size)
        return rerr(r, "offset %llu is past the end of the file (%llu bytes)", (unsigned long long)offset,
                    (unsigned long long)r->file_size);
    r->pos = offset;
    r->at_end = 0;
    return 0;
}

static int read_at(tar_reader *r, uint64_t off, void *buf, size_t n, const char *what) {
    if (off + n > r->file_size)
        return rerr(r, "truncated at offset %llu: %s needs %zu bytes, the file has %llu", (unsigned long long)off, what,
                    n, (unsigned long long)r->file_size);
    if (fseeko(r->f, (off_t)off, SEEK_SET) != 0)
        return rerr(r, "seek to %llu failed: %s", (unsigned long long)off, strerror(errno));
    if (fread(buf, 1, n, r->f) != n)
        return rerr(r, "read of %zu bytes at offset %llu failed", n, (unsigned long long)off);
    return 0;
}

/* Numeric header field: octal text (NUL/space terminated) or GNU base-256 (high bit of first byte). */
static int parse_num(const unsigned char *p, int len, uint64_t *out) {
    uint64_t v = 0;
    if (p[0] & 0x80) {
        if (p[0] & 0x40) return -1; /* negative */
        v = p[0] & 0x3f;
        for (int i = 1; i < len; i++) {
            if (v >> 56) return -1;
            v = (v << 8) | p[i];
        }
        *out = v;
        return 0;
    }
    int i = 0;
    while (i < len && p[i] == ' ') i++;
    for (; i < len && p[i] >= '0' && p[i] <= '7'; i++) v = (v << 3) | (uint64_t)(p[i] - '0');
    for (; i < len; i++)
        if (p[i] != ' ' && p[i] != 0) return -1;
    *out = v;
    return 0;
}

static int is_zero_block(const unsigned char *b) {
    for (int i = 0; i < TAR_BLOCK; i++)
        if (b[i]) return 0;
    return 1;
}

/* Checksum: sum of all header bytes with the checksum field read as spaces; old tars summed signed chars. */
static int checksum_ok(const unsigned char *b, uint64_t *stored, long *computed) {
    *computed = 0;
    if (parse_num(b + H_CHKSUM, H_CHKSUM_LEN, stored) != 0) return 0;
    long us = 0, ss = 0;
    for (int i = 0; i < TAR_BLOCK; i++) {
        unsigned char c = (i >= H_CHKSUM && i < H_CHKSUM + H_CHKSUM_LEN) ? ' ' : b[i];
        us += c;
        ss += (signed char)c;
    }
    *computed = us;
    return (long)*stored == us || (long)*stored == ss;
}

static char *field_str(const unsigned char *p, int len) {
    int n = 0;
    while (n < len && p[n]) n++;
    char *s = xmalloc((size_t)n + 1);
    memcpy(s, p, (size_t)n);
    s[n] = 0;
    return s;
}

/* PAX records "LEN key=value\n". Only path and size matter for webdataset; others are ignored. */
static int parse_pax(tar_reader *r, const char *buf, uint64_t n, uint64_t off, char **path, int64_t *size) {
    uint64_t i = 0;
    while (i < n) {
        if (buf[i] == 0) break; /* some writers pad with NULs */
        uint64_t len = 0, j = i;
        while (j < n && buf[j] >= '0' && buf[j] <= '9') len = len * 10 + (uint64_t)(buf[j++] - '0');
        if (j >= n || buf[j] != ' ' || len == 0 || i + len > n || buf[i + len - 1] != '\n')
            return rerr(r, "corrupt PAX record at byte %llu of the extended header at offset %llu",
                        (unsigned long long)i, (unsigned long long)off);
        const char *kv = buf + j + 1, *endp = buf + i + len - 1;
        const char *eq = memchr(kv, '=', (size_t)(endp - kv));
        if (!eq)
            return rerr(r, "PAX record without '=' in the extended header at offset %llu", (unsigned long long)off);
        size_t klen = (size_t)(eq - kv), vlen = (size_t)(endp - eq - 1);
        if (klen == 4 && !memcmp(kv, "path", 4)) {
            free(*path);
            *path = xmalloc(vlen + 1);
            memcpy(*path, eq + 1, vlen);
            (*path)[vlen] = 0;
        } else if (klen == 4 && !memcmp(kv, "size", 4)) {
            uint64_t v = 0;
            for (size_t k = 0; k < vlen; k++) {
                char c = eq[1 + k];
                if (c < '0' || c > '9')
                    return rerr(r, "PAX size '%.*s' is not a number in the extended header at offset %llu", (int)vlen,
                                eq + 1, (unsigned long long)off);
                v = v * 10 + (uint64_t)(c - '0');
            }
            *size = (int64_t)v;
        }
        i += len;
    }
    return 0;
}

/* Read a special member's payload (PAX record or GNU long name). Bounded: such payloads are small. */
static int read_payload(tar_reader *r, uint64_t off, uint64_t size, char **out) {
    if (size > (64u << 20))
        return rerr(r, "extended header at offset %llu claims %llu bytes", (unsigned long long)off,
                    (unsigned long long)size);
    char *buf = xmalloc(size + 1);
    if (read_at(r, off, buf, size, "extended header data") != 0) {
        free(buf);
        return -1;
    }
    buf[size] = 0;
    *out = buf;
    return 0;
}

int tar_next(tar_reader *r, tar_member *m) {
    unsigned char b[TAR_BLOCK];
    char *long_name = NULL, *pax_path = NULL;
    int64_t pax_size = -1;
    uint64_t first = r->pos; /* first header block of this member, preamble included */
    int have_preamble = 0;
    if (r->at_end) return 0;
    for (;;) {
        uint64_t off = r->pos;
        if (off == r->file_size) {
            /* EOF exactly on a block boundary: tolerated as an end without the zero blocks, unless a
             * preamble promised a member */
            if (have_preamble) {
                free(long_name);
                free(pax_path);
                return rerr(r, "truncated at offset %llu: extended header without its member", (unsigned long long)off);
            }
            r->at_end = 1;
            r->data_end = off;
            return 0;
        }
        if (read_at(r, off, b, TAR_BLOCK, "a 512-byte header block") != 0) goto fail;
        if (is_zero_block(b)) {
            if (have_preamble) {
                rerr(r, "zero block at offset %llu after an extended header", (unsigned long long)off);
                goto fail;
            }
            r->at_end = 1;
            r->data_end = off;
            return 0;
        }
        uint64_t stored = 0;
        long computed = 0;
        if (!checksum_ok(b, &stored, &computed)) {
            rerr(r, "header checksum mismatch at offset %llu (stored %llo, computed %lo): corrupt or not a tar file",
                 (unsigned long long)off, (unsigned long long)stored, computed);
            goto fail;
        }
        uint64_t size;
        if (parse_num(b + H_SIZE, H_SIZE_LEN, &size) != 0) {
            rerr(r, "bad size field in the header at offset %llu", (unsigned long long)off);
            goto fail;
        }
        char type = (char)b[H_TYPE];
        uint64_t data_off = off + TAR_BLOCK;
        if (type == 'x' || type == 'g' || type == 'L' || type == 'K') {
            char *payload = NULL;
            if (read_payload(r, data_off, size, &payload) != 0) goto fail;
            int rc = 0;
            if (type == 'x')
                rc = parse_pax(r, payload, size, off, &pax_path, &pax_size);
            else if (type == 'g') {
                int64_t gsize = r->global_size;
                rc = parse_pax(r, payload, size, off, &r->global_path, &gsize);
                r->global_size = gsize;
            } else if (type == 'L') {
                free(long_name);
                long_name = xstrdup(payload); /* NUL-terminated name, possibly padded */
            }
            free(payload);
            if (rc != 0) goto fail;
            r->pos = data_off + round_block(size);
            if (type == 'g') {
                if (!have_preamble) first = r->pos; /* a global header belongs to no member */
            } else
                have_preamble = 1;
            continue;
        }
        /* an ordinary header: apply overrides, most specific last */
        if (pax_size >= 0)
            size = (uint64_t)pax_size;
        else if (r->global_size >= 0)
            size = (uint64_t)r->global_size;
        if (data_off + size > r->file_size) {
            char *nm = pax_path ? xstrdup(pax_path) : field_str(b + H_NAME, H_NAME_LEN);
            rerr(r, "truncated at offset %llu: member '%s' needs %llu data bytes, only %llu remain",
                 (unsigned long long)off, nm, (unsigned long long)size, (unsigned long long)(r->file_size - data_off));
            free(nm);
            goto fail;
        }
        r->pos = data_off + round_block(size);
        if (r->pos > r->file_size) r->pos = r->file_size; /* last member without padding: tolerated */
        int regular = type == '0' || type == 0 || type == '7';
        if (!regular) {
            /* directory, link, device...: skipped together with its preamble */
            free(long_name);
            free(pax_path);
            long_name = pax_path = NULL;
            pax_size = -1;
            have_preamble = 0;
            first = r->pos;
            continue;
        }
        free(r->name);
        if (pax_path) {
            r->name = pax_path;
            pax_path = NULL;
        } else if (long_name) {
            r->name = long_name;
            long_name = NULL;
        } else if (r->global_path) {
            r->name = xstrdup(r->global_path);
        } else {
            char *nm = field_str(b + H_NAME, H_NAME_LEN);
            if (!memcmp(b + H_MAGIC, "ustar", 5) && b[H_PREFIX]) {
                char *pre = field_str(b + H_PREFIX, H_PREFIX_LEN);
                size_t n = strlen(pre) + strlen(nm) + 2;
                r->name = xmalloc(n);
                snprintf(r->name, n, "%s/%s", pre, nm);
                free(pre);
                free(nm);
            } else
                r->name = nm;
        }
        free(long_name);
        free(pax_path);
        m->name = r->name;
        m->size = size;
        m->header_offset = first;
        m->data_offset = data_off;
        return 1;
    }
fail:
    free(long_name);
    free(pax_path);
    return -1;
}

int tar_read_data(tar_reader *r, const tar_member *m, void *buf) {
    char what[64];
    snprintf(what, sizeof what, "member data");
    if (read_at(r, m->data_offset, buf, (size_t)m->size, what) != 0) return -1;
    return 0;
}

/* ------------------------------------------------------------------------------------------------ writer */

static void put_octal(unsigned char *p, int len, uint64_t v) {
    /* len-1 octal digits, NUL terminated, zero padded */
    for (int i = len - 2; i >= 0; i--) {
        p[i] = (unsigned char)('0' + (v & 7));
        v >>= 3;
    }
    p[len - 1] = 0;
}

static void write_header(tar_writer *w, const char *name, uint64_t size, char type) {
    unsigned char b[TAR_BLOCK];
    memset(b, 0, sizeof b);
    size_t nlen = strlen(name);
    memcpy(b + H_NAME, name, nlen < H_NAME_LEN ? nlen : H_NAME_LEN);
    put_octal(b + H_MODE, 8, 0644);
    put_octal(b + H_UID, 8, 0);
    put_octal(b + H_GID, 8, 0);
    put_octal(b + H_SIZE, H_SIZE_LEN, size < (1ull << 33) ? size : 0); /* larger sizes go in a PAX record */
    put_octal(b + H_MTIME, 12, 0); /* fixed time: prepared shards are byte-for-byte reproducible */
    b[H_TYPE] = (unsigned char)type;
    memcpy(b + H_MAGIC, "ustar", 6);
    memcpy(b + H_VERSION, "00", 2);
    memset(b + H_CHKSUM, ' ', H_CHKSUM_LEN);
    unsigned sum = 0;
    for (int i = 0; i < TAR_BLOCK; i++) sum += b[i];
    snprintf((char *)b + H_CHKSUM, 7, "%06o", sum);
    b[H_CHKSUM + 7] = ' ';
    xfwrite(b, 1, TAR_BLOCK, w->af.f, w->af.tmp_path);
    w->pos += TAR_BLOCK;
}

static void write_padded(tar_writer *w, const void *data, uint64_t size) {
    static const unsigned char zeros[TAR_BLOCK];
    if (size) xfwrite(data, 1, (size_t)size, w->af.f, w->af.tmp_path);
    uint64_t pad = round_block(size) - size;
    if (pad) xfwrite(zeros, 1, (size_t)pad, w->af.f, w->af.tmp_path);
    w->pos += size + pad;
}

/* A PAX record's length field counts its own digits: iterate until stable. */
static size_t pax_record(char *out, size_t cap, const char *key, const char *val) {
    size_t body = strlen(key) + strlen(val) + 3; /* ' ' '=' '\n' */
    size_t len = body + 1;
    for (;;) {
        char digits[32];
        size_t d = (size_t)snprintf(digits, sizeof digits, "%zu", len);
        if (body + d == len) break;
        len = body + d;
    }
    if (out) snprintf(out, cap, "%zu %s=%s\n", len, key, val);
    return len;
}

void tar_writer_open(tar_writer *w, const char *path) {
    atomic_open(&w->af, path);
    w->pos = 0;
}

uint64_t tar_writer_add(tar_writer *w, const char *name, const void *data, uint64_t size) {
    uint64_t start = w->pos;
    size_t nlen = strlen(name);
    int long_name = nlen > H_NAME_LEN, big = size >= (1ull << 33);
    if (long_name || big) {
        char sizebuf[32];
        snprintf(sizebuf, sizeof sizebuf, "%llu", (unsigned long long)size);
        size_t cap =
            (long_name ? pax_record(NULL, 0, "path", name) : 0) + (big ? pax_record(NULL, 0, "size", sizebuf) : 0) + 1;
        char *rec = xmalloc(cap);
        size_t n = 0;
        if (long_name) n += pax_record(rec + n, cap - n, "path", name);
        if (big) n += pax_record(rec + n, cap - n, "size", sizebuf);
        write_header(w, "././@PaxHeader", n, 'x');
        write_padded(w, rec, n);
        free(rec);
    }
    write_header(w, name, size, '0');
    write_padded(w, data, size);
    return start;
}

uint64_t tar_writer_close(tar_writer *w) {
    static const unsigned char zeros[2 * TAR_BLOCK];
    uint64_t end = w->pos;
    xfwrite(zeros, 1, sizeof zeros, w->af.f, w->af.tmp_path);
    atomic_commit(&w->af);
    return end;
}

/* ------------------------------------------------------------------------------------------ webdataset */

int wds_split_name(const char *name, size_t *key_len, const char **part) {
    /* Meta names as Energon skips them: a first path component of the form __x__ ("__key__",
     * "__x__/..."); "__meta__.txt" is an ordinary sample part there, so it is here too. */
    if (name[0] == '_' && name[1] == '_') {
        size_t comp = strcspn(name, "/");
        if (comp >= 4 && name[comp - 1] == '_' && name[comp - 2] == '_') return 0;
    }
    const char *base = strrchr(name, '/');
    base = base ? base + 1 : name;
    const char *dot = strchr(base, '.');
    if (!dot || dot == base) return 0;
    *key_len = (size_t)(dot - name);
    *part = dot + 1;
    return 1;
}

static int copy_err(char *err, size_t errlen, const char *msg) {
    if (err && errlen) snprintf(err, errlen, "%s", msg);
    return -1;
}

int wds_index_shard(const char *shard_path, uint64_t **offsets, size_t *count, char *err, size_t errlen) {
    tar_reader r;
    size_t n = 0, cap = 64;
    uint64_t *off = xmalloc(cap * sizeof *off);
    char *last_key = NULL;
    if (tar_open(&r, shard_path) != 0) goto fail;
    tar_member m;
    int rc;
    while ((rc = tar_next(&r, &m)) == 1) {
        size_t klen;
        const char *part;
        if (!wds_split_name(m.name, &klen, &part)) continue;
        if (last_key && strlen(last_key) == klen && !memcmp(last_key, m.name, klen)) continue;
        free(last_key);
        last_key = xmalloc(klen + 1);
        memcpy(last_key, m.name, klen);
        last_key[klen] = 0;
        if (n + 2 > cap) off = xrealloc(off, (cap *= 2) * sizeof *off);
        off[n++] = m.header_offset;
    }
    if (rc < 0) goto fail;
    off[n] = r.data_end;
    *offsets = off;
    *count = n;
    free(last_key);
    tar_close(&r);
    return 0;
fail:
    copy_err(err, errlen, r.err);
    free(off);
    free(last_key);
    tar_close(&r);
    return -1;
}

void tar_idx_write(const char *idx_path, const uint64_t *offsets, size_t count_plus_one) {
    dfm_atomic_file af;
    atomic_open(&af, idx_path);
    for (size_t i = 0; i < count_plus_one; i++) {
        unsigned char le[8];
        for (int k = 0; k < 8; k++) le[k] = (unsigned char)(offsets[i] >> (8 * k));
        xfwrite(le, 1, 8, af.f, af.tmp_path);
    }
    atomic_commit(&af);
}

int tar_idx_read(const char *idx_path, uint64_t **offsets, size_t *count_plus_one, char *err, size_t errlen) {
    FILE *f = fopen(idx_path, "rb");
    if (!f) {
        if (err) snprintf(err, errlen, "'%s': cannot open the sample index: %s", idx_path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || st.st_size % 8 != 0 || st.st_size < 8) {
        if (err)
            snprintf(err, errlen, "'%s': a .tar.idx must hold N+1 little-endian uint64 values; its size is %lld bytes",
                     idx_path, (long long)st.st_size);
        fclose(f);
        return -1;
    }
    size_t n = (size_t)st.st_size / 8;
    unsigned char *raw = xmalloc((size_t)st.st_size);
    if (fread(raw, 1, (size_t)st.st_size, f) != (size_t)st.st_size) {
        if (err) snprintf(err, errlen, "'%s': short read", idx_path);
        free(raw);
        fclose(f);
        return -1;
    }
    fclose(f);
    uint64_t *o = xmalloc(n * sizeof *o);
    for (size_t i = 0; i < n; i++) {
        uint64_t v = 0;
        for (int k = 7; k >= 0; k--) v = (v << 8) | raw[8 * i + (size_t)k];
        o[i] = v;
        if (i && v <= o[i - 1]) {
            if (err)
                snprintf(err, errlen, "'%s': offsets must increase, but entry %zu (%llu) follows %llu", idx_path, i,
                         (unsigned long long)v, (unsigned long long)o[i - 1]);
            free(raw);
            free(o);
            return -1;
        }
    }
    free(raw);
    *offsets = o;
    *count_plus_one = n;
    return 0;
}

int wds_read_sample(tar_reader *r, uint64_t begin, uint64_t end, wds_sample *s) {
    memset(s, 0, sizeof *s);
    if (tar_seek(r, begin) != 0) return -1;
    int cap = 0;
    while (r->pos < end) {
        tar_member m;
        int rc = tar_next(r, &m);
        if (rc < 0) goto fail;
        if (rc == 0) {
            rerr(r, "sample at offset %llu: archive ends at %llu before the indexed end %llu",
                 (unsigned long long)begin, (unsigned long long)r->data_end, (unsigned long long)end);
            goto fail;
        }
        size_t klen;
        const char *part;
        if (!wds_split_name(m.name, &klen, &part)) continue;
        if (!s->key) {
            s->key = xmalloc(klen + 1);
            memcpy(s->key, m.name, klen);
            s->key[klen] = 0;
        } else if (strlen(s->key) != klen || memcmp(s->key, m.name, klen)) {
            rerr(r,
                 "member '%s' at offset %llu has a different key than sample '%s' starting at %llu: the .tar.idx "
                 "disagrees with the shard",
                 m.name, (unsigned long long)m.header_offset, s->key, (unsigned long long)begin);
            goto fail;
        }
        if (m.size > ((uint64_t)1 << 40)) {
            rerr(r, "member '%s' at offset %llu is implausibly large", m.name, (unsigned long long)m.header_offset);
            goto fail;
        }
        if (s->nparts == cap) s->parts = xrealloc(s->parts, (size_t)(cap = cap ? 2 * cap : 4) * sizeof *s->parts);
        wds_part *p = &s->parts[s->nparts];
        p->name = xstrdup(part);
        p->size = m.size;
        p->data = xmalloc((size_t)m.size + 1);
        p->data[m.size] = 0; /* text parts can be used as C strings */
        s->nparts++;
        if (tar_read_data(r, &m, p->data) != 0) goto fail;
    }
    if (r->pos != end && !(r->pos == r->file_size && end <= r->file_size)) {
        rerr(r,
             "sample starting at offset %llu ends at %llu, not at the indexed %llu: the .tar.idx disagrees with the "
             "shard",
             (unsigned long long)begin, (unsigned long long)r->pos, (unsigned long long)end);
        goto fail;
    }
    if (!s->key) {
        rerr(r, "no sample members between offsets %llu and %llu", (unsigned long long)begin, (unsigned long long)end);
        goto fail;
    }
    return 0;
fail:
    wds_sample_free(s);
    return -1;
}

void wds_sample_free(wds_sample *s) {
    for (int i = 0; i < s->nparts; i++) {
        free(s->parts[i].name);
        free(s->parts[i].data);
    }
    free(s->parts);
    free(s->key);
    memset(s, 0, sizeof *s);
}
