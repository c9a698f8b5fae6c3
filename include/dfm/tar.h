/* Tar archives as webdataset shards: a reader for ustar, GNU (././@LongLink) and PAX archives with
 * streaming iteration and random access by byte offset, a ustar/PAX writer, webdataset sample
 * grouping and Energon's `.tar.idx` sample index.
 *
 * Reader functions never exit: they return -1 and leave a message naming the file and the byte
 * offset in the reader's `err` (or the caller's buffer), so that a loader can report or skip. */
#ifndef DFM_TAR_H
#define DFM_TAR_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "dfm/common.h"

#ifdef __cplusplus
extern "C" {
#endif

#define TAR_BLOCK 512
#define TAR_ERR_LEN 512

/* One regular member. `header_offset` is where its first header block starts, including any PAX 'x'
 * or GNU 'L'/'K' preamble (what Energon's .tar.idx records); `data_offset` where its bytes start. */
typedef struct {
    char *name; /* owned by the reader; valid until the next tar_next() */
    uint64_t size;
    uint64_t header_offset;
    uint64_t data_offset;
} tar_member;

typedef struct {
    FILE *f;
    char *path;
    uint64_t file_size;
    uint64_t pos;      /* offset of the next header block to read */
    uint64_t data_end; /* after the end marker was found: offset just past the last member's data */
    int at_end;
    char *name;        /* current member's name (storage for tar_member.name) */
    char *global_path; /* PAX 'g' overrides, applied to every following member */
    int64_t global_size;
    char err[TAR_ERR_LEN];
} tar_reader;

/* Open `path` for reading; returns 0, or -1 with the message in r->err. */
int tar_open(tar_reader *r, const char *path);
void tar_close(tar_reader *r);
/* Position the reader at a header block (e.g. an offset from a .tar.idx). */
int tar_seek(tar_reader *r, uint64_t offset);
/* Next regular member: 1 and *m filled, 0 at the end of the archive, -1 on error (r->err). Directories,
 * links and other non-regular members are skipped. The member's data is not read. */
int tar_next(tar_reader *r, tar_member *m);
/* Read the data of the member just returned by tar_next() into buf (m->size bytes). */
int tar_read_data(tar_reader *r, const tar_member *m, void *buf);

/* Writer: ustar headers, with a PAX 'x' record in front for names over 100 bytes or sizes >= 8 GiB.
 * The archive is written to a temporary file and renamed into place on tar_writer_close(). Write errors
 * exit through dfm_die (they are not recoverable). */
typedef struct {
    dfm_atomic_file af;
    uint64_t pos;
} tar_writer;

void tar_writer_open(tar_writer *w, const char *path);
/* Append one regular file; returns the offset of its first header block (PAX preamble included). */
uint64_t tar_writer_add(tar_writer *w, const char *name, const void *data, uint64_t size);
/* Write the end-of-archive marker and commit; returns the offset where the marker starts (the end of data). */
uint64_t tar_writer_close(tar_writer *w);

/* Webdataset naming: a member "dir/abc.seg.png" belongs to the sample with key "dir/abc" and is the
 * part "seg.png". Returns 1 and sets *key_len and *part, or 0 for names that are not sample parts
 * (no dot in the base name, or a name whose first path component is `__x__`, as Energon skips them). */
int wds_split_name(const char *name, size_t *key_len, const char **part);

/* Scan a shard and return the sample index: (*count + 1) offsets, the first header block of each sample
 * then the end of data. Returns 0, or -1 with the message in err. */
int wds_index_shard(const char *shard_path, uint64_t **offsets, size_t *count, char *err, size_t errlen);

/* `<shard>.tar.idx` files: N+1 little-endian uint64. */
void tar_idx_write(const char *idx_path, const uint64_t *offsets, size_t count_plus_one);
int tar_idx_read(const char *idx_path, uint64_t **offsets, size_t *count_plus_one, char *err, size_t errlen);

/* One webdataset sample read from a shard by its byte range [begin, end). */
typedef struct {
    char *name; /* part name after the key's dot: "png", "seg.npy" */
    uint8_t *data;
    uint64_t size;
} wds_part;

typedef struct {
    char *key;
    int nparts;
    wds_part *parts;
} wds_sample;

/* Read the members in [begin, end) of an open reader as one sample; checks that all share one key
 * and that the range ends on a member boundary. Returns 0 or -1 with the message in r->err. */
int wds_read_sample(tar_reader *r, uint64_t begin, uint64_t end, wds_sample *s);
void wds_sample_free(wds_sample *s);

#ifdef __cplusplus
}
#endif
#endif
