/* YAML -> tree, over libyaml's event parser. See include/dfm/yamltree.h. */
#include "dfm/yamltree.h"
#include "dfm/common.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <yaml.h>

typedef struct {
    yaml_parser_t p;
    const char *file;
    char *err;
    size_t errlen;
} ytp;

static yt_node *new_node(ytp *c, yt_kind kind, const yaml_event_t *ev) {
    yt_node *n = xcalloc(1, sizeof *n);
    n->kind = kind;
    n->file = c->file;
    n->line = (int)ev->start_mark.line + 1;
    return n;
}

static void push(yt_node *n, char *key, int key_line, yt_node *item) {
    n->items = xrealloc(n->items, (size_t)(n->n + 1) * sizeof *n->items);
    if (n->kind == YT_MAP) {
        n->keys = xrealloc(n->keys, (size_t)(n->n + 1) * sizeof *n->keys);
        n->key_lines = xrealloc(n->key_lines, (size_t)(n->n + 1) * sizeof *n->key_lines);
        n->keys[n->n] = key;
        n->key_lines[n->n] = key_line;
    }
    n->items[n->n++] = item;
}

static void free_node(yt_node *n) {
    if (!n) return;
    for (int i = 0; i < n->n; i++) {
        free_node(n->items[i]);
        if (n->keys) free(n->keys[i]);
    }
    free(n->items);
    free(n->keys);
    free(n->key_lines);
    free(n->str);
    if (n->owns_file) free((char *)n->file);
    free(n);
}

static int next_event(ytp *c, yaml_event_t *ev) {
    if (!yaml_parser_parse(&c->p, ev)) {
        snprintf(c->err, c->errlen, "%s:%zu:%zu: YAML syntax error: %s%s%s", c->file, c->p.problem_mark.line + 1,
                 c->p.problem_mark.column + 1, c->p.problem ? c->p.problem : "?", c->p.context ? " " : "",
                 c->p.context ? c->p.context : "");
        return -1;
    }
    return 0;
}

/* Build the node that starts with `ev` (already parsed); consumes events through its end. */
static yt_node *build(ytp *c, yaml_event_t *ev) {
    switch (ev->type) {
    case YAML_SCALAR_EVENT: {
        yt_node *n = new_node(c, YT_SCALAR, ev);
        n->str = xmalloc(ev->data.scalar.length + 1);
        memcpy(n->str, ev->data.scalar.value, ev->data.scalar.length);
        n->str[ev->data.scalar.length] = 0;
        n->quoted = ev->data.scalar.style == YAML_SINGLE_QUOTED_SCALAR_STYLE ||
                    ev->data.scalar.style == YAML_DOUBLE_QUOTED_SCALAR_STYLE ||
                    ev->data.scalar.style == YAML_LITERAL_SCALAR_STYLE ||
                    ev->data.scalar.style == YAML_FOLDED_SCALAR_STYLE;
        return n;
    }
    case YAML_SEQUENCE_START_EVENT:
    case YAML_MAPPING_START_EVENT: {
        int is_map = ev->type == YAML_MAPPING_START_EVENT;
        yt_node *n = new_node(c, is_map ? YT_MAP : YT_SEQ, ev);
        for (;;) {
            yaml_event_t e;
            if (next_event(c, &e) != 0) goto fail;
            if (e.type == YAML_SEQUENCE_END_EVENT || e.type == YAML_MAPPING_END_EVENT) {
                yaml_event_delete(&e);
                return n;
            }
            char *key = NULL;
            int key_line = 0;
            if (is_map) {
                if (e.type != YAML_SCALAR_EVENT) {
                    snprintf(c->err, c->errlen, "%s:%zu: map keys must be plain scalars", c->file,
                             e.start_mark.line + 1);
                    yaml_event_delete(&e);
                    goto fail;
                }
                key = xstrdup((const char *)e.data.scalar.value);
                key_line = (int)e.start_mark.line + 1;
                for (int i = 0; i < n->n; i++)
                    if (!strcmp(n->keys[i], key)) {
                        snprintf(c->err, c->errlen, "%s:%zu: duplicate key '%s' (first at line %d)", c->file,
                                 e.start_mark.line + 1, key, n->items[i]->line);
                        free(key);
                        yaml_event_delete(&e);
                        goto fail;
                    }
                yaml_event_delete(&e);
                if (next_event(c, &e) != 0) {
                    free(key);
                    goto fail;
                }
            }
            yt_node *item = build(c, &e);
            yaml_event_delete(&e);
            if (!item) {
                free(key);
                goto fail;
            }
            push(n, key, key_line, item);
        }
    fail:
        free_node(n);
        return NULL;
    }
    case YAML_ALIAS_EVENT:
        snprintf(c->err, c->errlen, "%s:%zu: YAML aliases (*name) are not supported", c->file, ev->start_mark.line + 1);
        return NULL;
    default:
        snprintf(c->err, c->errlen, "%s:%zu: unexpected YAML event %d", c->file, ev->start_mark.line + 1,
                 (int)ev->type);
        return NULL;
    }
}

static yt_node *parse(ytp *c) {
    yaml_event_t ev;
    yt_node *root = NULL;
    int docs = 0;
    for (;;) {
        if (next_event(c, &ev) != 0) goto fail;
        yaml_event_type_t t = ev.type;
        if (t == YAML_STREAM_END_EVENT) {
            yaml_event_delete(&ev);
            break;
        }
        if (t == YAML_DOCUMENT_START_EVENT) {
            if (++docs > 1) {
                snprintf(c->err, c->errlen, "%s:%zu: more than one YAML document", c->file, ev.start_mark.line + 1);
                yaml_event_delete(&ev);
                goto fail;
            }
        } else if (t != YAML_STREAM_START_EVENT && t != YAML_DOCUMENT_END_EVENT) {
            root = build(c, &ev);
            if (!root) {
                yaml_event_delete(&ev);
                goto fail;
            }
        }
        yaml_event_delete(&ev);
    }
    if (!root) {
        root = xcalloc(1, sizeof *root);
        root->kind = YT_MAP;
        root->file = c->file;
        root->line = 1;
    }
    root->owns_file = 1;
    return root;
fail:
    free_node(root);
    free((char *)c->file);
    return NULL;
}

yt_node *yt_parse_string(const char *text, const char *name, char *err, size_t errlen) {
    ytp c = {.file = xstrdup(name), .err = err, .errlen = errlen};
    yaml_parser_initialize(&c.p);
    yaml_parser_set_input_string(&c.p, (const unsigned char *)text, strlen(text));
    yt_node *root = parse(&c);
    yaml_parser_delete(&c.p);
    return root;
}

yt_node *yt_parse_file(const char *path, char *err, size_t errlen) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "cannot open '%s': %s", path, strerror(errno));
        return NULL;
    }
    ytp c = {.file = xstrdup(path), .err = err, .errlen = errlen};
    yaml_parser_initialize(&c.p);
    yaml_parser_set_input_file(&c.p, f);
    yt_node *root = parse(&c);
    yaml_parser_delete(&c.p);
    fclose(f);
    return root;
}

void yt_free(yt_node *root) {
    free_node(root);
}

yt_node *yt_get(const yt_node *map, const char *key) {
    if (!map || map->kind != YT_MAP) return NULL;
    for (int i = 0; i < map->n; i++)
        if (!strcmp(map->keys[i], key)) return map->items[i];
    return NULL;
}

int yt_is_null(const yt_node *n) {
    if (!n) return 1;
    if (n->kind != YT_SCALAR || n->quoted) return 0;
    return !n->str[0] || !strcmp(n->str, "~") || !strcasecmp(n->str, "null");
}

int yt_as_double(const yt_node *n, double *out) {
    if (!n || n->kind != YT_SCALAR || !n->str[0]) return -1;
    char *end;
    errno = 0;
    double v = strtod(n->str, &end);
    if (*end || errno) return -1;
    *out = v;
    return 0;
}

int yt_as_int64(const yt_node *n, int64_t *out) {
    if (!n || n->kind != YT_SCALAR || !n->str[0]) return -1;
    char *end;
    errno = 0;
    long long v = strtoll(n->str, &end, 10);
    if (*end || errno) return -1;
    *out = v;
    return 0;
}

int yt_as_bool(const yt_node *n, int *out) {
    if (!n || n->kind != YT_SCALAR) return -1;
    if (!strcasecmp(n->str, "true") || !strcasecmp(n->str, "yes") || !strcasecmp(n->str, "on"))
        *out = 1;
    else if (!strcasecmp(n->str, "false") || !strcasecmp(n->str, "no") || !strcasecmp(n->str, "off"))
        *out = 0;
    else
        return -1;
    return 0;
}

const char *yt_kind_name(yt_kind k) {
    return k == YT_MAP ? "map" : k == YT_SEQ ? "sequence" : "scalar";
}
