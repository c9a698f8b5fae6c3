/* A small generic YAML tree (maps, sequences, scalars), parsed with libyaml. Every node remembers its
 * file and line so that errors can say where a bad key or value is. Used by the data loader's
 * metadataset files and meant for the config system. Parsing never exits: errors come back as text. */
#ifndef DFM_YAMLTREE_H
#define DFM_YAMLTREE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { YT_SCALAR, YT_SEQ, YT_MAP } yt_kind;

typedef struct yt_node {
    yt_kind kind;
    const char *file; /* shared by the whole tree, owned by the root */
    int line;         /* 1-based */
    char *str;        /* scalar text */
    int quoted;       /* scalar was quoted: 'null' or '1' stay strings */
    int n;            /* number of items (sequence) or pairs (map) */
    char **keys;      /* map keys, in file order */
    struct yt_node **items;
    int owns_file;
    int *key_lines; /* map: 1-based line of each key (a block map's value may start on a later line) */
} yt_node;

/* Parse a file or a string (`name` is used in messages). NULL on error with the message in err. An empty
 * document gives an empty map. */
yt_node *yt_parse_file(const char *path, char *err, size_t errlen);
yt_node *yt_parse_string(const char *text, const char *name, char *err, size_t errlen);
void yt_free(yt_node *root);

/* Map lookup (NULL if absent or not a map). */
yt_node *yt_get(const yt_node *map, const char *key);
/* Scalar conversions: 0 on success, -1 if the node is not a scalar of that type. */
int yt_is_null(const yt_node *n); /* absent, ~, null, or empty unquoted scalar */
int yt_as_double(const yt_node *n, double *out);
int yt_as_int64(const yt_node *n, int64_t *out);
int yt_as_bool(const yt_node *n, int *out);
const char *yt_kind_name(yt_kind k);

#ifdef __cplusplus
}
#endif
#endif
