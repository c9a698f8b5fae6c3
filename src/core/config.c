/* The typed config tree: schema (declared keys), values with sources, YAML/override layers, getters,
 * YAML output. See include/dfm/config.h. */
#include "dfm/config.h"
#include "dfm/common.h"
#include "dfm/yamltree.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- the tree */

typedef struct cnode {
    int kind; /* CFG_NULL .. CFG_MAP */
    int64_t i;
    double f;
    int b;
    char *s; /* CFG_STR: the string; other scalars: their original text (a str key may take it) */
    int n;
    char **keys; /* CFG_MAP */
    struct cnode **items;
    char *src;
} cnode;

typedef struct {
    char *path;
    int type; /* CFG_BOOL .. CFG_MAP */
    int nullable;
    char *choices; /* "a|b|c" or NULL */
    char *help;
} cdef;

typedef struct {
    char *path;
    char *src;
} cdel;

struct cfg {
    cnode *root;
    char *recipe;
    char *recipe_src; /* "recipe <name>" */
    cdef *defs;
    int ndefs;
    cdel *dels; /* keys deleted by ~overrides, so later reads can say which one */
    int ndels;
};

static int errf(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int errf(char *err, size_t errlen, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

static char *xfmt(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *xfmt(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    char *s = xmalloc((size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return s;
}

static char *join_path(const char *a, const char *b) {
    return a[0] ? xfmt("%s.%s", a, b) : xstrdup(b);
}

static cnode *node_new(int kind, const char *src) {
    cnode *n = xcalloc(1, sizeof *n);
    n->kind = kind;
    n->src = xstrdup(src);
    return n;
}

static void node_free(cnode *n) {
    if (!n) return;
    for (int i = 0; i < n->n; i++) {
        node_free(n->items[i]);
        if (n->keys) free(n->keys[i]);
    }
    free(n->items);
    free(n->keys);
    free(n->s);
    free(n->src);
    free(n);
}

static int map_index(const cnode *m, const char *key) {
    if (!m || m->kind != CFG_MAP) return -1;
    for (int i = 0; i < m->n; i++)
        if (!strcmp(m->keys[i], key)) return i;
    return -1;
}

/* Put `item` under `key` (map) or at `idx` (list; idx == n appends), freeing what it replaces. */
static void node_put(cnode *parent, const char *key, int idx, cnode *item) {
    if (parent->kind == CFG_MAP) idx = map_index(parent, key);
    if (idx >= 0 && idx < parent->n) {
        node_free(parent->items[idx]);
        parent->items[idx] = item;
        return;
    }
    parent->items = xrealloc(parent->items, (size_t)(parent->n + 1) * sizeof *parent->items);
    if (parent->kind == CFG_MAP) {
        parent->keys = xrealloc(parent->keys, (size_t)(parent->n + 1) * sizeof *parent->keys);
        parent->keys[parent->n] = xstrdup(key);
    }
    parent->items[parent->n++] = item;
}

static void node_remove(cnode *parent, int idx) {
    node_free(parent->items[idx]);
    if (parent->keys) free(parent->keys[idx]);
    for (int i = idx; i + 1 < parent->n; i++) {
        parent->items[i] = parent->items[i + 1];
        if (parent->keys) parent->keys[i] = parent->keys[i + 1];
    }
    parent->n--;
}

/* A list index component: digits only. */
static int parse_index(const char *s, int *out) {
    if (!*s) return 0;
    long v = 0;
    for (const char *p = s; *p; p++) {
        if (!isdigit((unsigned char)*p) || v > 100000000) return 0;
        v = v * 10 + (*p - '0');
    }
    *out = (int)v;
    return 1;
}

static cnode *node_child(const cnode *n, const char *comp) {
    if (!n) return NULL;
    if (n->kind == CFG_MAP) {
        int i = map_index(n, comp);
        return i < 0 ? NULL : n->items[i];
    }
    int idx;
    if (n->kind == CFG_LIST && parse_index(comp, &idx) && idx < n->n) return n->items[idx];
    return NULL;
}

static cnode *lookup(const cfg *c, const char *key) {
    char *buf = xstrdup(key);
    cnode *n = c->root;
    for (char *save = NULL, *comp = strtok_r(buf, ".", &save); comp && n; comp = strtok_r(NULL, ".", &save))
        n = node_child(n, comp);
    free(buf);
    return n;
}

/* ---------------------------------------------------------------- schema */

static const cdef *find_def(const cfg *c, const char *path) {
    for (int i = 0; i < c->ndefs; i++)
        if (!strcmp(c->defs[i].path, path)) return &c->defs[i];
    return NULL;
}

/* `path` is a section: a proper prefix of a declared key (the root is one). */
static int is_section(const cfg *c, const char *path) {
    size_t n = strlen(path);
    if (!n) return 1;
    for (int i = 0; i < c->ndefs; i++)
        if (!strncmp(c->defs[i].path, path, n) && c->defs[i].path[n] == '.') return 1;
    return 0;
}

/* `path` lies below a free-form map key. */
static int under_freeform(const cfg *c, const char *path) {
    for (int i = 0; i < c->ndefs; i++) {
        size_t n = strlen(c->defs[i].path);
        if (c->defs[i].type == CFG_MAP && !strncmp(c->defs[i].path, path, n) && path[n] == '.') return 1;
    }
    return 0;
}

static int schema_knows(const cfg *c, const char *path) {
    return find_def(c, path) || is_section(c, path) || under_freeform(c, path);
}

static const cdel *find_deletion(const cfg *c, const char *path) {
    /* the latest deletion of the key or of a section holding it */
    for (int i = c->ndels - 1; i >= 0; i--) {
        size_t n = strlen(c->dels[i].path);
        if (!strncmp(c->dels[i].path, path, n) && (path[n] == 0 || path[n] == '.')) return &c->dels[i];
    }
    return NULL;
}

static const char *type_name(int t) {
    switch (t & 0xff) {
    case CFG_NULL:
        return "null";
    case CFG_BOOL:
        return "bool";
    case CFG_INT:
        return "int";
    case CFG_FLOAT:
        return "float";
    case CFG_STR:
        return "string";
    case CFG_LIST:
        return "list";
    case CFG_MAP:
        return "map";
    }
    return "?";
}

/* ---------------------------------------------------------------- nearest-key suggestions */

/* Optimal string alignment distance (Levenshtein plus adjacent transpositions: "nmu" -> "num" costs 1). */
static int osa_distance(const char *a, const char *b) {
    size_t n = strlen(a), m = strlen(b);
    int *d = xmalloc((n + 1) * (m + 1) * sizeof *d);
#define D(i, j) d[(i) * (m + 1) + (j)]
    for (size_t i = 0; i <= n; i++) D(i, 0) = (int)i;
    for (size_t j = 0; j <= m; j++) D(0, j) = (int)j;
    for (size_t i = 1; i <= n; i++)
        for (size_t j = 1; j <= m; j++) {
            int cost = a[i - 1] != b[j - 1];
            int v = D(i - 1, j) + 1;
            if (D(i, j - 1) + 1 < v) v = D(i, j - 1) + 1;
            if (D(i - 1, j - 1) + cost < v) v = D(i - 1, j - 1) + cost;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] && D(i - 2, j - 2) + 1 < v)
                v = D(i - 2, j - 2) + 1;
            D(i, j) = v;
        }
    int r = D(n, m);
#undef D
    free(d);
    return r;
}

typedef struct {
    const char *want, *want_last;
    size_t want_parent_len;
    int best;
    char *best_path;
} suggest_ctx;

static void suggest_consider(suggest_ctx *s, const char *cand) {
    if (!strcmp(cand, s->want)) return;
    const char *dot = strrchr(cand, '.');
    const char *last = dot ? dot + 1 : cand;
    size_t parent_len = dot ? (size_t)(dot - cand) : 0;
    int same_parent = parent_len == s->want_parent_len && !strncmp(cand, s->want, parent_len);
    int score = osa_distance(s->want, cand);
    int by_last = osa_distance(s->want_last, last) + !same_parent;
    if (by_last < score) score = by_last;
    /* a prefix or part of the real name ("global_batch" for "global_batch_size") is a good guess too */
    if (strlen(s->want_last) >= 3 && strstr(last, s->want_last) && 1 + !same_parent < score) score = 1 + !same_parent;
    if (score < s->best) {
        s->best = score;
        free(s->best_path);
        s->best_path = xstrdup(cand);
    }
}

static void suggest_walk(suggest_ctx *s, const cnode *n, const char *path) {
    if (!n || n->kind != CFG_MAP) return;
    for (int i = 0; i < n->n; i++) {
        char *p = join_path(path, n->keys[i]);
        suggest_consider(s, p);
        suggest_walk(s, n->items[i], p);
        free(p);
    }
}

/* " did you mean 'x'?" (or "") for an unknown key: declared keys, their sections and keys in the tree. */
static void suggest(const cfg *c, const char *want, char *out, size_t outlen) {
    const char *dot = strrchr(want, '.');
    suggest_ctx s = {want, dot ? dot + 1 : want, dot ? (size_t)(dot - want) : 0, 1 << 30, NULL};
    for (int i = 0; i < c->ndefs; i++) {
        suggest_consider(&s, c->defs[i].path);
        /* sections too: "modle.num_layers" -> "model.num_layers" is found by the full path anyway */
    }
    suggest_walk(&s, c->root, "");
    int limit = (int)strlen(s.want_last) / 2;
    if (limit < 2) limit = 2;
    if (s.best_path && s.best <= limit)
        snprintf(out, outlen, "; did you mean '%s'?", s.best_path);
    else
        out[0] = 0;
    free(s.best_path);
}

/* ---------------------------------------------------------------- scalars: YAML core-schema resolution */

static int match_int(const char *s) {
    if (*s == '+' || *s == '-') s++;
    if (!isdigit((unsigned char)*s)) return 0;
    while (isdigit((unsigned char)*s)) s++;
    return *s == 0;
}

/* YAML 1.2 core floats: [-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?, .inf, .nan */
static int match_float(const char *s, double *out) {
    const char *p = s;
    int neg = 0;
    if (*p == '+' || *p == '-') neg = *p++ == '-';
    if (!strcmp(p, ".inf") || !strcmp(p, ".Inf") || !strcmp(p, ".INF")) {
        *out = neg ? -INFINITY : INFINITY;
        return 1;
    }
    if (p == s && (!strcmp(p, ".nan") || !strcmp(p, ".NaN") || !strcmp(p, ".NAN"))) {
        *out = NAN;
        return 1;
    }
    int digits = 0;
    while (isdigit((unsigned char)*p)) p++, digits++;
    if (*p == '.') {
        p++;
        while (isdigit((unsigned char)*p)) p++, digits++;
    }
    if (!digits) return 0;
    if (*p == 'e' || *p == 'E') {
        p++;
        if (*p == '+' || *p == '-') p++;
        if (!isdigit((unsigned char)*p)) return 0;
        while (isdigit((unsigned char)*p)) p++;
    }
    if (*p) return 0;
    *out = strtod(s, NULL);
    return 1;
}

static const char *const true_words[] = {"true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON", NULL};
static const char *const false_words[] = {"false", "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF", NULL};

static int in_words(const char *s, const char *const *w) {
    for (; *w; w++)
        if (!strcmp(s, *w)) return 1;
    return 0;
}

/* Resolve an unquoted scalar into n (kind + value); -1 (message in err) for an int out of range. */
static int resolve_plain(const char *s, cnode *n, char *err, size_t errlen) {
    double f;
    if (!*s || !strcmp(s, "~") || !strcmp(s, "null") || !strcmp(s, "Null") || !strcmp(s, "NULL")) {
        n->kind = CFG_NULL;
    } else if (in_words(s, true_words) || in_words(s, false_words)) {
        n->kind = CFG_BOOL;
        n->b = in_words(s, true_words);
    } else if (match_int(s)) {
        errno = 0;
        long long v = strtoll(s, NULL, 10);
        if (errno == ERANGE) return errf(err, errlen, "integer %s is out of range", s);
        n->kind = CFG_INT;
        n->i = v;
    } else if (match_float(s, &f)) {
        n->kind = CFG_FLOAT;
        n->f = f;
    } else {
        n->kind = CFG_STR;
    }
    return 0;
}

/* ---------------------------------------------------------------- yt_node -> cnode */

typedef struct {
    const char *fixed; /* every value gets this source (an override, a preset, a recipe); NULL: FILE:LINE */
} srcctx;

static char *source_of(const srcctx *sc, const yt_node *y, int line) {
    if (sc->fixed) return xstrdup(sc->fixed);
    return xfmt("%s:%d", y->file, line > 0 ? line : y->line);
}

/* Untyped conversion by the YAML core schema. NULL + err on an out-of-range int. */
static cnode *from_yt(const yt_node *y, int line, const srcctx *sc, char *err, size_t errlen) {
    char *src = source_of(sc, y, line);
    cnode *n = xcalloc(1, sizeof *n);
    n->src = src;
    if (y->kind == YT_SCALAR) {
        n->s = xstrdup(y->str);
        if (y->quoted) {
            n->kind = CFG_STR;
        } else if (resolve_plain(y->str, n, err, errlen) != 0) {
            size_t l = strlen(err);
            snprintf(err + l, errlen - l, " (from %s)", src);
            node_free(n);
            return NULL;
        }
        if (n->kind == CFG_NULL) {
            free(n->s);
            n->s = NULL;
        }
        return n;
    }
    n->kind = y->kind == YT_MAP ? CFG_MAP : CFG_LIST;
    for (int i = 0; i < y->n; i++) {
        cnode *item = from_yt(y->items[i], y->kind == YT_MAP && y->key_lines ? y->key_lines[i] : 0, sc, err, errlen);
        if (!item) {
            node_free(n);
            return NULL;
        }
        node_put(n, y->kind == YT_MAP ? y->keys[i] : NULL, n->n, item);
    }
    return n;
}

/* ---------------------------------------------------------------- writing values as YAML */

typedef struct {
    char *buf;
    size_t len, cap;
} sbuf;

static void sb_add(sbuf *b, const char *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        b->cap = (b->len + n + 1) * 2;
        b->buf = xrealloc(b->buf, b->cap);
    }
    memcpy(b->buf + b->len, s, n);
    b->len += n;
    b->buf[b->len] = 0;
}
static void sb_puts(sbuf *b, const char *s) {
    sb_add(b, s, strlen(s));
}
static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...) {
    char tmp[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n >= 0 && (size_t)n < sizeof tmp) {
        sb_add(b, tmp, (size_t)n);
        return;
    }
    char *big = xmalloc((size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    sb_add(b, big, (size_t)n);
    free(big);
}

/* Shortest text that reads back to the same double, always recognisable as a float by YAML 1.1 and 1.2
 * readers ("1.0e-05", not "1e-05", which PyYAML would read as a string). */
static void fmt_float(char *out, size_t outlen, double v) {
    if (isnan(v)) {
        snprintf(out, outlen, ".nan");
        return;
    }
    if (isinf(v)) {
        snprintf(out, outlen, v < 0 ? "-.inf" : ".inf");
        return;
    }
    char tmp[40];
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(tmp, sizeof tmp, "%.*g", prec, v);
        if (strtod(tmp, NULL) == v) break;
    }
    char *e = strchr(tmp, 'e');
    if (strchr(tmp, '.') || strstr(tmp, "inf") || strstr(tmp, "nan"))
        snprintf(out, outlen, "%s", tmp);
    else if (e)
        snprintf(out, outlen, "%.*s.0%s", (int)(e - tmp), tmp, e);
    else
        snprintf(out, outlen, "%s.0", tmp);
}

/* A string may be written plain only if it reads back as the same string in any YAML reader. */
static int needs_quotes(const char *s) {
    if (!*s) return 1;
    cnode probe = {0};
    char err[64];
    if (resolve_plain(s, &probe, err, sizeof err) != 0 || probe.kind != CFG_STR) return 1;
    if (!(isalpha((unsigned char)s[0]) || s[0] == '_' || s[0] == '/' || s[0] == '.')) return 1;
    if (s[0] == '.' && (isdigit((unsigned char)s[1]) || !s[1])) return 1;
    for (const char *p = s; *p; p++)
        if (!(isalnum((unsigned char)*p) || strchr("_./-", *p))) return 1;
    return 0;
}

static void emit_string(sbuf *b, const char *s) {
    if (!needs_quotes(s)) {
        sb_puts(b, s);
        return;
    }
    sb_puts(b, "\"");
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"')
            sb_puts(b, "\\\"");
        else if (*p == '\\')
            sb_puts(b, "\\\\");
        else if (*p == '\n')
            sb_puts(b, "\\n");
        else if (*p == '\t')
            sb_puts(b, "\\t");
        else if (*p < 0x20 || *p == 0x7f)
            sb_printf(b, "\\x%02x", *p);
        else
            sb_add(b, (const char *)p, 1);
    }
    sb_puts(b, "\"");
}

static void emit_flow(sbuf *b, const cnode *n) {
    char tmp[64];
    switch (n->kind) {
    case CFG_NULL:
        sb_puts(b, "null");
        break;
    case CFG_BOOL:
        sb_puts(b, n->b ? "true" : "false");
        break;
    case CFG_INT:
        sb_printf(b, "%lld", (long long)n->i);
        break;
    case CFG_FLOAT:
        fmt_float(tmp, sizeof tmp, n->f);
        sb_puts(b, tmp);
        break;
    case CFG_STR:
        emit_string(b, n->s);
        break;
    case CFG_LIST:
    case CFG_MAP:
        sb_puts(b, n->kind == CFG_LIST ? "[" : "{");
        for (int i = 0; i < n->n; i++) {
            if (i) sb_puts(b, ", ");
            if (n->kind == CFG_MAP) {
                emit_string(b, n->keys[i]);
                sb_puts(b, ": ");
            }
            emit_flow(b, n->items[i]);
        }
        sb_puts(b, n->kind == CFG_LIST ? "]" : "}");
        break;
    }
}

/* A short description of a value for messages: "float 6.5", "string '6'", "list [1, 2]". */
static void describe(const cnode *n, char *out, size_t outlen) {
    sbuf b = {0};
    if (n->kind == CFG_STR) {
        sb_puts(&b, "'");
        sb_puts(&b, n->s);
        sb_puts(&b, "'");
    } else {
        emit_flow(&b, n);
    }
    if (b.len > 60) strcpy(b.buf + 57, "...");
    if (n->kind == CFG_NULL)
        snprintf(out, outlen, "null");
    else
        snprintf(out, outlen, "%s %s", type_name(n->kind), b.buf);
    free(b.buf);
}

static void emit_block(sbuf *b, const cnode *map, int indent, int annotate) {
    for (int i = 0; i < map->n; i++) {
        const cnode *v = map->items[i];
        size_t line_start = b->len;
        sb_printf(b, "%*s", indent, "");
        emit_string(b, map->keys[i]);
        sb_puts(b, ":");
        if (v->kind == CFG_MAP && v->n > 0) {
            sb_puts(b, "\n");
            emit_block(b, v, indent + 2, annotate);
            continue;
        }
        sb_puts(b, " ");
        emit_flow(b, v);
        if (annotate) {
            for (size_t col = b->len - line_start; col < 46; col++) sb_puts(b, " "); /* a column of sources */
            sb_puts(b, "  # ");
            for (const char *p = v->src; *p; p++) sb_add(b, *p == '\n' ? " " : p, 1);
        }
        sb_puts(b, "\n");
    }
}

static char *to_yaml(const cfg *c, int annotate) {
    sbuf b = {0};
    if (annotate) sb_printf(&b, "# dfm config, recipe %s; after each value: where it came from\n", c->recipe);
    if (c->root->n == 0)
        sb_puts(&b, "{}\n");
    else
        emit_block(&b, c->root, 0, annotate);
    return b.buf;
}

char *cfg_to_yaml(const cfg *c) {
    return to_yaml(c, 0);
}
char *cfg_to_yaml_annotated(const cfg *c) {
    return to_yaml(c, 1);
}

void cfg_write_yaml(const cfg *c, const char *path) {
    char *text = cfg_to_yaml(c);
    dfm_atomic_file af;
    atomic_open(&af, path);
    xfwrite(text, 1, strlen(text), af.f, path);
    atomic_commit(&af);
    free(text);
}

/* ---------------------------------------------------------------- type checking */

static int choice_ok(const char *choices, const char *s) {
    size_t n = strlen(s);
    for (const char *p = choices; p;) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == n && !strncmp(p, s, n)) return 1;
        p = bar ? bar + 1 : NULL;
    }
    return 0;
}

/* Check (and coerce: int -> float, unquoted scalar -> string) value n for declared key `path`. */
static int check_type(const cfg *c, const char *path, cnode *n, char *err, size_t errlen) {
    const cdef *d = find_def(c, path);
    if (!d) return 0; /* undeclared (added with +, or below a free-form map): any value */
    char got[128];
    describe(n, got, sizeof got);
    if (n->kind == CFG_NULL) {
        if (d->nullable) return 0;
        return errf(err, errlen, "%s: %s: expected %s, got null (this key cannot be null)", n->src, path,
                    type_name(d->type));
    }
    int ok = n->kind == d->type;
    if (!ok && d->type == CFG_FLOAT && n->kind == CFG_INT) {
        n->kind = CFG_FLOAT;
        n->f = (double)n->i;
        ok = 1;
    }
    if (!ok && d->type == CFG_STR && n->s && (n->kind == CFG_INT || n->kind == CFG_FLOAT || n->kind == CFG_BOOL)) {
        n->kind = CFG_STR; /* an unquoted 123 for a string key is the string "123" */
        ok = 1;
    }
    if (!ok)
        return errf(err, errlen, "%s: %s: expected %s%s, got %s", n->src, path, type_name(d->type),
                    d->nullable ? " or null" : "", got);
    if (d->choices && !choice_ok(d->choices, n->s)) {
        /* nearest allowed value */
        char best[64] = "";
        int bestd = 1 << 30;
        for (const char *p = d->choices; p;) {
            const char *bar = strchr(p, '|');
            char opt[64];
            snprintf(opt, sizeof opt, "%.*s", (int)(bar ? (size_t)(bar - p) : strlen(p)), p);
            int dist = osa_distance(n->s, opt);
            if (dist < bestd) bestd = dist, snprintf(best, sizeof best, "%s", opt);
            p = bar ? bar + 1 : NULL;
        }
        return errf(err, errlen, "%s: %s: '%s' is not one of %s%s%s%s", n->src, path, n->s, d->choices,
                    bestd <= 3 ? "; did you mean '" : "", bestd <= 3 ? best : "", bestd <= 3 ? "'?" : "");
    }
    return 0;
}

/* ---------------------------------------------------------------- merging */

static int assign(cfg *c, const char *path, cnode *parent, const char *key, int idx, const yt_node *v, int line,
                  const srcctx *sc, char *err, size_t errlen);

static int unknown_key(const cfg *c, const char *path, const char *where, const char *hint, char *err, size_t errlen) {
    char sug[256];
    suggest(c, path, sug, sizeof sug);
    return errf(err, errlen, "%s: unknown key '%s'%s%s", where, path, sug, hint ? hint : "");
}

/* Merge map v into map node m at `path`: every key must be known (or m be free-form / undeclared). */
static int merge_map(cfg *c, const char *path, cnode *m, const yt_node *v, const srcctx *sc, char *err, size_t errlen) {
    int open = path[0] && !schema_knows(c, path); /* undeclared map (added by +) */
    const cdef *d = path[0] ? find_def(c, path) : NULL;
    if (d && d->type == CFG_MAP) open = 1;
    if (under_freeform(c, path) || c->ndefs == 0) open = 1; /* no declarations at all: a schema-less tree */
    for (int i = 0; i < v->n; i++) {
        char *cp = join_path(path, v->keys[i]);
        int line = v->key_lines ? v->key_lines[i] : v->line;
        if (!open && map_index(m, v->keys[i]) < 0 && !schema_knows(c, cp)) {
            char *where = source_of(sc, v, line);
            unknown_key(c, cp, where, NULL, err, errlen);
            free(where);
            free(cp);
            return -1;
        }
        int rc = assign(c, cp, m, v->keys[i], -1, v->items[i], line, sc, err, errlen);
        free(cp);
        if (rc) return -1;
    }
    return 0;
}

/* Set the value at `path` (under `key` of map parent, or index idx of list parent) from YAML node v:
 * maps merge into maps and sections, anything else replaces after a type check. */
static int assign(cfg *c, const char *path, cnode *parent, const char *key, int idx, const yt_node *v, int line,
                  const srcctx *sc, char *err, size_t errlen) {
    cnode *existing = parent->kind == CFG_MAP ? node_child(parent, key) : (idx < parent->n ? parent->items[idx] : NULL);
    int section = parent->kind == CFG_MAP && is_section(c, path);
    if (v->kind == YT_MAP && (section || (existing && existing->kind == CFG_MAP))) {
        if (!existing || existing->kind != CFG_MAP) {
            char *src = source_of(sc, v, line);
            existing = node_new(CFG_MAP, src);
            free(src);
            node_put(parent, key, idx, existing);
        }
        return merge_map(c, path, existing, v, sc, err, errlen);
    }
    if (section) {
        if (yt_is_null(v)) return 0; /* "model:" with nothing under it */
        char *src = source_of(sc, v, line);
        cnode *tmp = from_yt(v, line, sc, err, errlen);
        char got[128] = "?";
        if (tmp) describe(tmp, got, sizeof got);
        node_free(tmp);
        errf(err, errlen, "%s: '%s' is a section; it takes a map of its keys, not %s", src, path, got);
        free(src);
        return -1;
    }
    cnode *n = from_yt(v, line, sc, err, errlen);
    if (!n) return -1;
    if (check_type(c, path, n, err, errlen) != 0) {
        node_free(n);
        return -1;
    }
    node_put(parent, key, idx, n);
    return 0;
}

int cfg_merge_string(cfg *c, const char *yaml, const char *name, char *err, size_t errlen) {
    yt_node *y = yt_parse_string(yaml, name, err, errlen);
    if (!y) return -1;
    srcctx sc = {NULL};
    int rc;
    if (y->kind != YT_MAP)
        rc = errf(err, errlen, "%s:%d: the top level must be a map of sections (model:, train:, ...), not a %s", name,
                  y->line, yt_kind_name(y->kind));
    else
        rc = merge_map(c, "", c->root, y, &sc, err, errlen);
    yt_free(y);
    return rc;
}

int cfg_merge_file(cfg *c, const char *path, char *err, size_t errlen) {
    yt_node *y = yt_parse_file(path, err, errlen);
    if (!y) return -1;
    srcctx sc = {NULL};
    int rc;
    if (y->kind != YT_MAP)
        rc = errf(err, errlen, "%s:%d: the top level must be a map of sections (model:, train:, ...), not a %s", path,
                  y->line, yt_kind_name(y->kind));
    else
        rc = merge_map(c, "", c->root, y, &sc, err, errlen);
    yt_free(y);
    return rc;
}

int cfg_merge_tree(cfg *c, const struct yt_node *y, const char *source, char *err, size_t errlen) {
    srcctx sc = {source};
    if (y->kind != YT_MAP)
        return errf(err, errlen, "%s: the top level must be a map of sections, not a %s", source ? source : y->file,
                    yt_kind_name(y->kind));
    return merge_map(c, "", c->root, y, &sc, err, errlen);
}

/* ---------------------------------------------------------------- overrides */

/* Parse an override's value as a YAML flow value. "" is the empty string (Hydra's `key=`). */
static yt_node *parse_value(const char *text, const char *src, char *err, size_t errlen) {
    const char *t = text;
    while (*t == ' ') t++;
    char perr[512];
    yt_node *y = NULL;
    if (*t && *t != '#')
        y = yt_parse_string(text, "value", perr, sizeof perr);
    else if (!*t)
        y = yt_parse_string("''", "value", perr, sizeof perr);
    else
        y = yt_parse_string("x", "value", perr, sizeof perr); /* '#...': a string, not a comment */
    if (!y) {
        const char *why = strstr(perr, "YAML syntax error: "); /* drop libyaml's "value:1:7:" position */
        errf(err, errlen, "%s: cannot parse the value '%s' as YAML (%s)", src, text, why ? why + 19 : perr);
        return NULL;
    }
    if (*t == '#') {
        free(y->str);
        y->str = xstrdup(text);
        y->quoted = 1;
    }
    return y;
}

static int values_equal(const cnode *a, const cnode *b);

typedef enum { OV_SET, OV_ADD, OV_FORCE, OV_DEL } ov_kind;

int cfg_override(cfg *c, const char *arg, char *err, size_t errlen) {
    char *src = xfmt("command line override '%s'", arg);
    ov_kind kind = OV_SET;
    const char *p = arg;
    if (!strncmp(p, "++", 2))
        kind = OV_FORCE, p += 2;
    else if (*p == '+')
        kind = OV_ADD, p += 1;
    else if (*p == '~')
        kind = OV_DEL, p += 1;
    const char *eq = strchr(p, '=');
    char *key = eq ? xfmt("%.*s", (int)(eq - p), p) : xstrdup(p);
    const char *value = eq ? eq + 1 : NULL;
    int rc = -1;
    yt_node *y = NULL;
    char *buf = NULL;
    char *path = xstrdup("");

    if (!value && kind != OV_DEL) {
        errf(err, errlen, "%s: expected key=value (or ~key to delete)", src);
        goto done;
    }
    /* key syntax: non-empty dotted components without spaces */
    int bad = !*key || key[0] == '.' || key[strlen(key) - 1] == '.' || strstr(key, "..");
    for (const char *q = key; *q; q++)
        if (isspace((unsigned char)*q) || strchr("=+~[]{},:'\"", *q)) bad = 1;
    if (bad) {
        errf(err, errlen, "%s: '%s' is not a valid key (dotted names like train.train_iters)", src, key);
        goto done;
    }
    if (value) {
        y = parse_value(value, src, err, errlen);
        if (!y) goto done;
    }

    /* walk to the parent of the last component, creating maps for + and ++ */
    buf = xstrdup(key);
    char *comps[64];
    int nc = 0;
    for (char *save = NULL, *t = strtok_r(buf, ".", &save); t && nc < 64; t = strtok_r(NULL, ".", &save))
        comps[nc++] = t;
    cnode *parent = c->root;
    for (int k = 0; k < nc - 1; k++) {
        char *np = join_path(path, comps[k]);
        free(path);
        path = np;
        cnode *child = node_child(parent, comps[k]);
        if (!child) {
            int idx;
            /* + and ++ create the maps on the way, and so does a plain set below a free-form map */
            if ((kind == OV_ADD || kind == OV_FORCE || (kind == OV_SET && under_freeform(c, path))) &&
                parent->kind == CFG_MAP) {
                child = node_new(CFG_MAP, src);
                node_put(parent, comps[k], -1, child);
            } else if (parent->kind == CFG_LIST && parse_index(comps[k], &idx)) {
                errf(err, errlen, "%s: index %d is out of range for list '%s' (length %d)", src, idx, path, parent->n);
                goto done;
            } else {
                goto missing;
            }
        }
        if (child->kind != CFG_MAP && child->kind != CFG_LIST) {
            char got[128];
            describe(child, got, sizeof got);
            errf(err, errlen, "%s: '%s' holds %s (from %s), which has no key '%s'", src, path, got, child->src,
                 comps[k + 1]);
            goto done;
        }
        parent = child;
    }
    {
        const char *last = comps[nc - 1];
        char *np = join_path(path, last);
        free(path);
        path = np;
        int idx = -1;
        if (parent->kind == CFG_LIST && !parse_index(last, &idx)) {
            errf(err, errlen, "%s: '%.*s' is a list; '%s' is not an index", src, (int)(strlen(key) - strlen(last) - 1),
                 key, last);
            goto done;
        }
        cnode *existing = node_child(parent, last);
        if (parent->kind == CFG_LIST && !existing && !(idx == parent->n && (kind == OV_ADD || kind == OV_FORCE))) {
            errf(err, errlen, "%s: index %d is out of range for list '%.*s' (length %d)%s%s%s", src, idx,
                 (int)(strlen(key) - strlen(last) - 1), key, parent->n,
                 kind == OV_SET && idx == parent->n ? "; use +" : "", kind == OV_SET && idx == parent->n ? key : "",
                 kind == OV_SET && idx == parent->n ? "=... to append" : "");
            goto done;
        }
        switch (kind) {
        case OV_SET:
            if (!existing && !under_freeform(c, path)) goto missing;
            break;
        case OV_ADD:
            if (existing) {
                char got[128];
                describe(existing, got, sizeof got);
                errf(err, errlen,
                     "%s: '%s' already exists (%s, from %s); use %s=... to change it or ++%s=... to add "
                     "or change",
                     src, path, got, existing->src, key, key);
                goto done;
            }
            break;
        case OV_FORCE:
            break;
        case OV_DEL: {
            if (!existing) goto missing;
            if (y) {
                srcctx vsc = {src};
                cnode *want = from_yt(y, 0, &vsc, err, errlen);
                if (!want) goto done;
                int eqv = values_equal(existing, want);
                if (!eqv) {
                    char got[128], w[128];
                    describe(existing, got, sizeof got);
                    describe(want, w, sizeof w);
                    errf(err, errlen, "%s: not deleting '%s': its value is %s (from %s), not %s", src, path, got,
                         existing->src, w);
                }
                node_free(want);
                if (!eqv) goto done;
            }
            node_remove(parent, parent->kind == CFG_MAP ? map_index(parent, last) : idx);
            if (parent->kind == CFG_MAP) {
                c->dels = xrealloc(c->dels, (size_t)(c->ndels + 1) * sizeof *c->dels);
                c->dels[c->ndels].path = xstrdup(path);
                c->dels[c->ndels].src = xstrdup(src);
                c->ndels++;
            }
            rc = 0;
            goto done;
        }
        }
        srcctx sc = {src};
        rc = assign(c, path, parent, last, idx, y, 0, &sc, err, errlen);
        goto done;
    }

missing : {
    /* the key (path so far) does not exist */
    const cdel *d = find_deletion(c, path);
    char hint[512];
    if (d)
        snprintf(hint, sizeof hint, " (it was deleted by %s; use +%s=... to add it back)", d->src, key);
    else if (kind == OV_DEL)
        snprintf(hint, sizeof hint, "; nothing to delete");
    else
        snprintf(hint, sizeof hint, " (use +%s=... to add a new key)", key);
    if (d && schema_knows(c, path))
        errf(err, errlen, "%s: '%s' does not exist%s", src, path, hint);
    else
        unknown_key(c, key, src, hint, err, errlen);
}

done:
    if (y) yt_free(y);
    free(buf);
    free(path);
    free(key);
    free(src);
    return rc;
}

/* ---------------------------------------------------------------- defining recipes */

cfg *cfg_new(const char *recipe_name) {
    cfg *c = xcalloc(1, sizeof *c);
    c->recipe = xstrdup(recipe_name);
    c->recipe_src = xfmt("recipe %s", recipe_name);
    c->root = node_new(CFG_MAP, c->recipe_src);
    return c;
}

void cfg_free(cfg *c) {
    if (!c) return;
    node_free(c->root);
    for (int i = 0; i < c->ndefs; i++) {
        free(c->defs[i].path);
        free(c->defs[i].choices);
        free(c->defs[i].help);
    }
    for (int i = 0; i < c->ndels; i++) free(c->dels[i].path), free(c->dels[i].src);
    free(c->defs);
    free(c->dels);
    free(c->recipe);
    free(c->recipe_src);
    free(c);
}

/* Set declared `key` from YAML text with a fixed source, creating its sections. */
static int set_text(cfg *c, const char *key, const char *text, const char *src, char *err, size_t errlen) {
    yt_node *y = parse_value(text ? text : "null", src, err, errlen);
    if (!y) return -1;
    char *buf = xstrdup(key), *path = xstrdup("");
    cnode *parent = c->root;
    int rc = 0;
    char *save = NULL, *comp = strtok_r(buf, ".", &save);
    for (char *next; comp; comp = next) {
        next = strtok_r(NULL, ".", &save);
        char *np = join_path(path, comp);
        free(path);
        path = np;
        if (!next) break;
        cnode *child = node_child(parent, comp);
        if (!child) {
            child = node_new(CFG_MAP, src);
            node_put(parent, comp, -1, child);
        }
        if (child->kind != CFG_MAP) {
            rc = errf(err, errlen, "%s: '%s' is not a section", src, path);
            break;
        }
        parent = child;
    }
    if (!rc) {
        srcctx sc = {src};
        rc = assign(c, path, parent, comp, -1, y, 0, &sc, err, errlen);
    }
    yt_free(y);
    free(buf);
    free(path);
    return rc;
}

static void def_common(cfg *c, const char *key, int type, int nullable, const char *def, const char *choices,
                       const char *help) {
    int base = type & 0xff;
    if (base < CFG_BOOL || base > CFG_MAP) dfm_die("cfg_def(%s): bad type %d", key, type);
    if (find_def(c, key) || lookup(c, key)) dfm_die("cfg_def: '%s' is declared twice", key);
    if (!*key || key[0] == '.' || key[strlen(key) - 1] == '.' || strstr(key, ".."))
        dfm_die("cfg_def: bad key '%s'", key);
    c->defs = xrealloc(c->defs, (size_t)(c->ndefs + 1) * sizeof *c->defs);
    cdef *d = &c->defs[c->ndefs++];
    d->path = xstrdup(key);
    d->type = base;
    d->nullable = nullable || (type & CFG_NULLABLE) || !def;
    d->choices = choices ? xstrdup(choices) : NULL;
    d->help = xstrdup(help ? help : "");
    char err[1024];
    if (set_text(c, key, def, c->recipe_src, err, sizeof err) != 0) dfm_die("recipe %s: %s", c->recipe, err);
}

void cfg_def(cfg *c, const char *key, int type, const char *default_yaml, const char *help) {
    def_common(c, key, type, 0, default_yaml, NULL, help);
}

void cfg_def_enum(cfg *c, const char *key, int nullable, const char *default_yaml, const char *choices,
                  const char *help) {
    def_common(c, key, CFG_STR, nullable, default_yaml, choices, help);
}

void cfg_set_default(cfg *c, const char *key, const char *default_yaml) {
    if (!find_def(c, key)) dfm_die("recipe %s: cfg_set_default: '%s' is not declared", c->recipe, key);
    char err[1024];
    if (set_text(c, key, default_yaml, c->recipe_src, err, sizeof err) != 0) dfm_die("recipe %s: %s", c->recipe, err);
}

/* ---------------------------------------------------------------- training mode */

int cfg_apply_training_mode(cfg *c, const char *mode, char *err, size_t errlen) {
    /* DFM's flow-matching presets (REFERENCE.md §1) */
    static const char *const pretrain[][2] = {{"diffusion.timestep_sampling", "logit_normal"},
                                              {"diffusion.logit_std", "1.5"},
                                              {"diffusion.flow_shift", "2.5"},
                                              {"diffusion.mix_uniform_ratio", "0.2"}};
    static const char *const finetune[][2] = {{"diffusion.timestep_sampling", "uniform"},
                                              {"diffusion.logit_std", "1.0"},
                                              {"diffusion.flow_shift", "3.0"},
                                              {"diffusion.mix_uniform_ratio", "0.1"}};
    const char *const(*preset)[2];
    if (!strcmp(mode, "pretrain"))
        preset = pretrain;
    else if (!strcmp(mode, "finetune"))
        preset = finetune;
    else
        return errf(err, errlen, "--training-mode '%s': expected pretrain or finetune", mode);
    char *src = xfmt("--training-mode %s", mode);
    int rc = 0;
    for (int i = 0; i < 4 && !rc; i++) {
        if (!find_def(c, preset[i][0])) {
            rc = errf(err, errlen, "--training-mode: recipe %s has no key '%s'", c->recipe, preset[i][0]);
            break;
        }
        rc = set_text(c, preset[i][0], preset[i][1], src, err, errlen);
    }
    free(src);
    return rc;
}

/* ---------------------------------------------------------------- the command line */

int cfg_from_args(int argc, char **argv, cfg **out, cfg_cli *opts, char *err, size_t errlen) {
    cfg_cli none = {0};
    if (!opts) opts = &none;
    *out = NULL;
    opts->recipe = opts->default_recipe ? opts->default_recipe : "dit_fashion_mnist";
    opts->config_file = opts->training_mode = NULL;
    opts->print_config = opts->help = 0;
    const char **overrides = xcalloc((size_t)(argc > 0 ? argc : 1), sizeof *overrides);
    char **owned = xcalloc((size_t)(argc > 0 ? argc : 1), sizeof *owned);
    int nover = 0, nowned = 0, rc = -1;
    cfg *c = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        static const char *const with_value[] = {"--recipe", "--config-file", "--training-mode"};
        const char **slot[] = {&opts->recipe, &opts->config_file, &opts->training_mode};
        int matched = 0;
        for (int k = 0; k < 3 && !matched; k++) {
            size_t n = strlen(with_value[k]);
            if (strncmp(a, with_value[k], n) || (a[n] && a[n] != '=')) continue;
            matched = 1;
            if (a[n] == '=') {
                *slot[k] = a + n + 1;
            } else if (i + 1 < argc) {
                *slot[k] = argv[++i];
            } else {
                errf(err, errlen, "%s needs a value", a);
                goto done;
            }
        }
        if (matched) continue;
        if (!strncmp(a, "--peak-tflops", 13) && (a[13] == 0 || a[13] == '=')) {
            /* shorthand for the override logger.peak_tflops=V, taken in its place among the overrides */
            const char *v = a[13] == '=' ? a + 14 : i + 1 < argc ? argv[++i] : NULL;
            if (!v || !*v) {
                errf(err, errlen, "--peak-tflops needs a value (TFLOP/s of one process, for MFU)");
                goto done;
            }
            owned[nowned] = xfmt("logger.peak_tflops=%s", v);
            overrides[nover++] = owned[nowned++];
            continue;
        }
        if (!strcmp(a, "--print-config"))
            opts->print_config = 1;
        else if (!strcmp(a, "--help") || !strcmp(a, "-h"))
            opts->help = 1;
        else if (a[0] == '-' && !(a[1] == 0)) {
            errf(err, errlen,
                 "unknown option '%s' (options: --recipe NAME, --config-file FILE.yaml, --training-mode "
                 "pretrain|finetune, --peak-tflops X, --print-config; overrides look like key=value)",
                 a);
            goto done;
        } else if (strchr(a, '=') || a[0] == '~')
            overrides[nover++] = a;
        else {
            errf(err, errlen, "unexpected argument '%s': overrides look like key=value, +key=value, ++key=value, ~key",
                 a);
            goto done;
        }
    }
    c = cfg_recipe(opts->recipe, err, errlen);
    if (!c) goto done;
    if (opts->help) {
        rc = 0;
        goto done;
    }
    if (opts->training_mode && cfg_apply_training_mode(c, opts->training_mode, err, errlen) != 0) goto done;
    if (opts->config_file && cfg_merge_file(c, opts->config_file, err, errlen) != 0) goto done;
    for (int i = 0; i < nover; i++)
        if (cfg_override(c, overrides[i], err, errlen) != 0) goto done;
    rc = 0;
done:
    free(overrides);
    for (int i = 0; i < nowned; i++) free(owned[i]);
    free(owned);
    if (rc == 0)
        *out = c;
    else
        cfg_free(c);
    return rc;
}

void cfg_cli_usage(FILE *f) {
    fprintf(f, "configuration (base recipe < --training-mode < --config-file < overrides):\n"
               "  --recipe NAME              base recipe (below)\n"
               "  --config-file FILE.yaml    YAML merged over the recipe (maps merge, scalars and lists replace)\n"
               "  --training-mode MODE       pretrain | finetune: DFM's flow-matching presets for diffusion.*\n"
               "  --peak-tflops X            logger.peak_tflops=X: one process's peak TFLOP/s, for MFU in the log\n"
               "  --print-config             print the resolved configuration as YAML\n"
               "overrides (Hydra): a.b=v set, +a.b=v add, ++a.b=v add or set, ~a.b / ~a.b=v delete, a.0=v list item;\n"
               "  values are YAML: 3, 1e-4, true, null, 'x y', [1, 2], {k: v}\n"
               "recipes:\n");
    for (int i = 0; i < cfg_recipe_count(); i++) fprintf(f, "  %-20s %s\n", cfg_recipe_name(i), cfg_recipe_summary(i));
}

/* ---------------------------------------------------------------- reading */

static const cnode deleted_null = {.kind = CFG_NULL};

/* The value at key, or dies naming what is wrong. A deleted nullable key reads as null. */
static const cnode *need(const cfg *c, const char *key) {
    const cnode *n = lookup(c, key);
    if (n) return n;
    const cdef *d = find_def(c, key);
    const cdel *del = find_deletion(c, key);
    if (del && d && d->nullable) return &deleted_null;
    if (del)
        dfm_die("config key '%s'%s%s%s is required but was deleted by %s", key, d ? " (" : "",
                d ? type_name(d->type) : "", d ? ")" : "", del->src);
    char sug[256];
    suggest(c, key, sug, sizeof sug);
    dfm_die("config key '%s' does not exist in recipe %s%s", key, c->recipe, sug);
}

static const char *src_of(const cfg *c, const char *key, const cnode *n) {
    if (n == &deleted_null) {
        const cdel *del = find_deletion(c, key);
        return del ? del->src : "?";
    }
    return n->src;
}

static void __attribute__((noreturn)) wrong(const cfg *c, const char *key, const cnode *n, const char *want) {
    char got[128];
    describe(n, got, sizeof got);
    dfm_die("config key '%s' must be %s, but its value is %s (from %s)", key, want, got, src_of(c, key, n));
}

int cfg_has(const cfg *c, const char *key) {
    return lookup(c, key) != NULL;
}

int cfg_kind_of(const cfg *c, const char *key) {
    const cnode *n = lookup(c, key);
    return n ? n->kind : -1;
}

int64_t cfg_int(const cfg *c, const char *key) {
    const cnode *n = need(c, key);
    if (n->kind != CFG_INT) wrong(c, key, n, "an int");
    return n->i;
}

double cfg_float(const cfg *c, const char *key) {
    const cnode *n = need(c, key);
    if (n->kind == CFG_INT) return (double)n->i;
    if (n->kind != CFG_FLOAT) wrong(c, key, n, "a float");
    return n->f;
}

int cfg_bool(const cfg *c, const char *key) {
    const cnode *n = need(c, key);
    if (n->kind != CFG_BOOL) wrong(c, key, n, "a bool");
    return n->b;
}

const char *cfg_str(const cfg *c, const char *key) {
    const cnode *n = need(c, key);
    if (n->kind == CFG_NULL) return NULL;
    if (n->kind != CFG_STR) wrong(c, key, n, "a string");
    return n->s;
}

int cfg_is_null(const cfg *c, const char *key) {
    return need(c, key)->kind == CFG_NULL;
}

int cfg_len(const cfg *c, const char *key) {
    const cnode *n = need(c, key);
    if (n->kind != CFG_LIST && n->kind != CFG_MAP) wrong(c, key, n, "a list or a map");
    return n->n;
}

const char *cfg_key_at(const cfg *c, const char *key, int i) {
    const cnode *n = key[0] ? need(c, key) : c->root;
    if (n->kind != CFG_MAP) wrong(c, key, n, "a map");
    if (i < 0 || i >= n->n) dfm_die("config key '%s': index %d out of range (%d keys)", key, i, n->n);
    return n->keys[i];
}

static char *elem_key(const cfg *c, const char *key, int i) {
    const cnode *n = need(c, key);
    if (n->kind != CFG_LIST) wrong(c, key, n, "a list");
    if (i < 0 || i >= n->n)
        dfm_die("config key '%s': index %d out of range (the list has %d items, from %s)", key, i, n->n, n->src);
    return xfmt("%s.%d", key, i);
}

int64_t cfg_list_int(const cfg *c, const char *key, int i) {
    char *k = elem_key(c, key, i);
    int64_t v = cfg_int(c, k);
    free(k);
    return v;
}

double cfg_list_float(const cfg *c, const char *key, int i) {
    char *k = elem_key(c, key, i);
    double v = cfg_float(c, k);
    free(k);
    return v;
}

const char *cfg_list_str(const cfg *c, const char *key, int i) {
    char *k = elem_key(c, key, i);
    const char *v = cfg_str(c, k);
    free(k);
    return v;
}

const char *cfg_source(const cfg *c, const char *key) {
    const cnode *n = lookup(c, key);
    if (n) return n->src;
    const cdel *del = find_deletion(c, key);
    return del ? del->src : NULL;
}

const char *cfg_recipe_of(const cfg *c) {
    return c->recipe;
}

/* ---------------------------------------------------------------- comparison, help */

static int values_equal(const cnode *a, const cnode *b) {
    if ((a->kind == CFG_INT || a->kind == CFG_FLOAT) && (b->kind == CFG_INT || b->kind == CFG_FLOAT)) {
        if (a->kind == CFG_INT && b->kind == CFG_INT) return a->i == b->i;
        double x = a->kind == CFG_INT ? (double)a->i : a->f, y = b->kind == CFG_INT ? (double)b->i : b->f;
        return x == y || (isnan(x) && isnan(y));
    }
    /* "~key=5" against the string "5": compare the text */
    if (a->kind == CFG_STR && b->kind != CFG_STR && b->s) return !strcmp(a->s, b->s);
    if (b->kind == CFG_STR && a->kind != CFG_STR && a->s) return !strcmp(a->s, b->s);
    if (a->kind != b->kind || a->n != b->n) return 0;
    switch (a->kind) {
    case CFG_NULL:
        return 1;
    case CFG_BOOL:
        return a->b == b->b;
    case CFG_STR:
        return !strcmp(a->s, b->s);
    case CFG_LIST:
        for (int i = 0; i < a->n; i++)
            if (!values_equal(a->items[i], b->items[i])) return 0;
        return 1;
    case CFG_MAP:
        for (int i = 0; i < a->n; i++) {
            int j = map_index(b, a->keys[i]);
            if (j < 0 || !values_equal(a->items[i], b->items[j])) return 0;
        }
        return 1;
    }
    return 0;
}

/* Strict: same kinds too (an int 1 is not a float 1.0 here). */
static int nodes_identical(const cnode *a, const cnode *b) {
    if (a->kind != b->kind || a->n != b->n) return 0;
    switch (a->kind) {
    case CFG_INT:
        return a->i == b->i;
    case CFG_FLOAT:
        return a->f == b->f || (isnan(a->f) && isnan(b->f));
    case CFG_MAP:
        for (int i = 0; i < a->n; i++) {
            int j = map_index(b, a->keys[i]);
            if (j < 0 || !nodes_identical(a->items[i], b->items[j])) return 0;
        }
        return 1;
    case CFG_LIST:
        for (int i = 0; i < a->n; i++)
            if (!nodes_identical(a->items[i], b->items[i])) return 0;
        return 1;
    default:
        return values_equal(a, b);
    }
}

int cfg_equal(const cfg *a, const cfg *b) {
    return nodes_identical(a->root, b->root);
}

void cfg_help(const cfg *c, FILE *f) {
    fprintf(f, "keys of recipe %s (type, default, meaning):\n", c->recipe);
    const char *section = "";
    size_t seclen = 0;
    for (int i = 0; i < c->ndefs; i++) {
        const cdef *d = &c->defs[i];
        const char *dot = strchr(d->path, '.');
        size_t sl = dot ? (size_t)(dot - d->path) : 0;
        if (sl != seclen || strncmp(section, d->path, sl)) fprintf(f, "\n");
        section = d->path, seclen = sl;
        char type[160];
        snprintf(type, sizeof type, "%s%s", d->choices ? d->choices : type_name(d->type), d->nullable ? "|null" : "");
        const cnode *n = lookup(c, d->path);
        sbuf b = {0};
        if (n)
            emit_flow(&b, n);
        else
            sb_puts(&b, "(deleted)");
        fprintf(f, "  %-34s %-24s %-22s %s\n", d->path, type, b.buf, d->help);
        free(b.buf);
    }
}
