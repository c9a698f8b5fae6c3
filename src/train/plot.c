/* Loss curves and sample grids with cairo (see plot.h). PNGs go through cairo's stream writer into an
 * atomic file, so a reader never sees half a picture. */
#include "dfm/plot.h"
#include "dfm/common.h"

#include <cairo.h>
#include <fontconfig/fontconfig.h>
#include <pthread.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* cairo and fontconfig keep font caches for the life of the process; release them at exit so that a leak
 * checker (ASan's) sees a clean exit. */
static void release_font_caches(void) {
    cairo_debug_reset_static_data();
    FcFini();
}
static void register_release(void) {
    atexit(release_font_caches);
}
static void plot_init(void) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, register_release);
}

static cairo_status_t write_png_chunk(void *closure, const unsigned char *data, unsigned int len) {
    dfm_atomic_file *af = closure;
    return fwrite(data, 1, len, af->f) == len ? CAIRO_STATUS_SUCCESS : CAIRO_STATUS_WRITE_ERROR;
}

static int save_surface(cairo_surface_t *s, const char *path, char *err, size_t errlen) {
    dfm_atomic_file af;
    atomic_open(&af, path);
    cairo_status_t st = cairo_surface_write_to_png_stream(s, write_png_chunk, &af);
    if (st != CAIRO_STATUS_SUCCESS) {
        atomic_abort(&af);
        snprintf(err, errlen, "'%s': writing PNG failed: %s", path, cairo_status_to_string(st));
        return -1;
    }
    atomic_commit(&af);
    return 0;
}

static void text_at(cairo_t *cr, const char *s, double x, double y, double size, double align_x, double align_y) {
    cairo_text_extents_t te;
    cairo_set_font_size(cr, size);
    cairo_text_extents(cr, s, &te);
    cairo_move_to(cr, x - te.x_bearing - align_x * te.width, y - te.y_bearing - align_y * te.height);
    cairo_show_text(cr, s);
}

/* ---- loss curve ------------------------------------------------------------------------------- */

typedef struct {
    int n, cap;
    double *x, *y;
} series;

static void series_add(series *s, double x, double y) {
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 256;
        s->x = xrealloc(s->x, sizeof(double) * (size_t)s->cap);
        s->y = xrealloc(s->y, sizeof(double) * (size_t)s->cap);
    }
    s->x[s->n] = x, s->y[s->n] = y, s->n++;
}

/* 1, 2 or 5 times a power of ten, about range / target. */
static double nice_step(double range, int target) {
    double raw = range / target, p = pow(10.0, floor(log10(raw))), f = raw / p;
    return (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * p;
}

static void fmt_tick(char *b, size_t n, double v) {
    if (fabs(v) < 1e-12) v = 0;
    snprintf(b, n, "%g", v);
}

typedef struct {
    double x0, x1, y0, y1; /* data range (y in log10 when logy) */
    int logy;
    double px, py, pw, ph; /* plot area in pixels */
} axes;

static double ax_x(const axes *a, double x) {
    return a->px + (x - a->x0) / (a->x1 - a->x0) * a->pw;
}
static double ax_y(const axes *a, double y) {
    double v = a->logy ? log10(y) : y;
    return a->py + a->ph - (v - a->y0) / (a->y1 - a->y0) * a->ph;
}

static int read_metrics(const char *path, series *train, series *val, char *err, size_t errlen) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "cannot open metrics '%s': %s", path, strerror(errno));
        return -1;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int lineno = 0, rc = 0;
    while ((len = getline(&line, &cap, f)) >= 0) {
        lineno++;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r' || line[len - 1] == ' ')) line[--len] = 0;
        if (len == 0) continue;
        json_error_t je;
        json_t *j = json_loads(line, 0, &je);
        if (!j || !json_is_object(j)) {
            snprintf(err, errlen, "'%s' line %d: not a JSON object%s%s", path, lineno, j ? "" : ": ", j ? "" : je.text);
            json_decref(j);
            rc = -1;
            break;
        }
        json_t *step = json_object_get(j, "step"), *loss = json_object_get(j, "loss"),
               *vl = json_object_get(j, "val_loss");
        if (json_is_number(step)) {
            double x = json_number_value(step);
            if (json_is_number(loss) && isfinite(json_number_value(loss)))
                series_add(train, x, json_number_value(loss));
            if (json_is_number(vl) && isfinite(json_number_value(vl))) series_add(val, x, json_number_value(vl));
        }
        json_decref(j);
    }
    free(line);
    fclose(f);
    return rc;
}

static void draw_series(cairo_t *cr, const axes *a, const series *s, double r, double g, double b, int markers) {
    if (!s->n) return;
    cairo_set_source_rgb(cr, r, g, b);
    cairo_set_line_width(cr, 1.6);
    int pen = 0;
    for (int i = 0; i < s->n; i++) {
        if (a->logy && !(s->y[i] > 0)) { /* a non-positive loss has no place on a log axis: break the line */
            pen = 0;
            continue;
        }
        double X = ax_x(a, s->x[i]), Y = ax_y(a, s->y[i]);
        if (pen)
            cairo_line_to(cr, X, Y);
        else
            cairo_move_to(cr, X, Y);
        pen = 1;
    }
    cairo_stroke(cr);
    if (markers)
        for (int i = 0; i < s->n; i++) {
            if (a->logy && !(s->y[i] > 0)) continue;
            cairo_arc(cr, ax_x(a, s->x[i]), ax_y(a, s->y[i]), 3.0, 0, 2 * M_PI);
            cairo_fill(cr);
        }
}

int plot_loss_curve(const char *metrics_jsonl_path, const char *png_path, char *err, size_t errlen) {
    series train = {0}, val = {0};
    if (read_metrics(metrics_jsonl_path, &train, &val, err, errlen) != 0) {
        free(train.x), free(train.y), free(val.x), free(val.y);
        return -1;
    }
    plot_init();
    const int W = 800, H = 480;
    cairo_surface_t *surf = cairo_image_surface_create(CAIRO_FORMAT_RGB24, W, H);
    cairo_t *cr = cairo_create(surf);
    cairo_set_source_rgb(cr, 1, 1, 1);
    cairo_paint(cr);
    cairo_select_font_face(cr, "DejaVu Sans", CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_NORMAL);
    axes a = {.px = 80, .py = 44, .pw = W - 80 - 24, .ph = H - 44 - 64};

    /* data ranges over both series */
    double xmin = INFINITY, xmax = -INFINITY, ymin = INFINITY, ymax = -INFINITY;
    const series *all[2] = {&train, &val};
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < all[k]->n; i++) {
            xmin = fmin(xmin, all[k]->x[i]), xmax = fmax(xmax, all[k]->x[i]);
            ymin = fmin(ymin, all[k]->y[i]), ymax = fmax(ymax, all[k]->y[i]);
        }
    int npts = train.n + val.n;
    if (!npts) xmin = 0, xmax = 1, ymin = 0, ymax = 1;
    if (xmax <= xmin) xmin -= 1, xmax += 1;
    a.logy = ymin > 0 && ymax / ymin > 10.0;
    if (a.logy) {
        double pad = 0.03 * (log10(ymax) - log10(ymin));
        a.y0 = log10(ymin) - pad, a.y1 = log10(ymax) + pad;
    } else {
        if (ymax <= ymin) ymin -= fmax(1e-3, fabs(ymin) * 0.1), ymax += fmax(1e-3, fabs(ymax) * 0.1);
        double pad = 0.05 * (ymax - ymin);
        a.y0 = ymin - pad, a.y1 = ymax + pad;
        if (ymin >= 0 && a.y0 < 0) a.y0 = 0; /* losses are non-negative: do not show negative space */
    }
    a.x0 = xmin, a.x1 = xmax;

    /* grid and tick labels */
    char lab[64];
    cairo_set_line_width(cr, 1.0);
    double xs = nice_step(a.x1 - a.x0, 6);
    for (double v = ceil(a.x0 / xs) * xs; v <= a.x1 + 1e-9 * xs; v += xs) {
        double X = ax_x(&a, v);
        cairo_set_source_rgb(cr, 0.9, 0.9, 0.9);
        cairo_move_to(cr, X, a.py), cairo_line_to(cr, X, a.py + a.ph), cairo_stroke(cr);
        cairo_set_source_rgb(cr, 0.15, 0.15, 0.15);
        fmt_tick(lab, sizeof lab, v);
        text_at(cr, lab, X, a.py + a.ph + 6, 11, 0.5, 0);
    }
    if (a.logy) {
        for (int e = (int)floor(a.y0); e <= (int)ceil(a.y1); e++)
            for (int mlt = 1; mlt <= 9; mlt++) {
                double v = mlt * pow(10.0, e), lv = log10(v);
                if (lv < a.y0 || lv > a.y1) continue;
                double Y = ax_y(&a, v);
                int labelled = mlt == 1 || ((a.y1 - a.y0) < 2.5 && (mlt == 2 || mlt == 5));
                cairo_set_source_rgb(cr, mlt == 1 ? 0.82 : 0.93, mlt == 1 ? 0.82 : 0.93, mlt == 1 ? 0.82 : 0.93);
                cairo_move_to(cr, a.px, Y), cairo_line_to(cr, a.px + a.pw, Y), cairo_stroke(cr);
                if (labelled) {
                    cairo_set_source_rgb(cr, 0.15, 0.15, 0.15);
                    fmt_tick(lab, sizeof lab, v);
                    text_at(cr, lab, a.px - 6, Y, 11, 1.0, 0.5);
                }
            }
    } else {
        double ys = nice_step(a.y1 - a.y0, 6);
        for (double v = ceil(a.y0 / ys) * ys; v <= a.y1 + 1e-9 * ys; v += ys) {
            double Y = ax_y(&a, v);
            cairo_set_source_rgb(cr, 0.9, 0.9, 0.9);
            cairo_move_to(cr, a.px, Y), cairo_line_to(cr, a.px + a.pw, Y), cairo_stroke(cr);
            cairo_set_source_rgb(cr, 0.15, 0.15, 0.15);
            fmt_tick(lab, sizeof lab, v);
            text_at(cr, lab, a.px - 6, Y, 11, 1.0, 0.5);
        }
    }
    cairo_set_source_rgb(cr, 0.2, 0.2, 0.2);
    cairo_rectangle(cr, a.px, a.py, a.pw, a.ph);
    cairo_stroke(cr);

    /* series, clipped to the plot area */
    cairo_save(cr);
    cairo_rectangle(cr, a.px, a.py, a.pw, a.ph);
    cairo_clip(cr);
    draw_series(cr, &a, &train, 0.12, 0.40, 0.75, train.n == 1);
    draw_series(cr, &a, &val, 0.90, 0.45, 0.05, 1);
    cairo_restore(cr);

    /* labels, title, legend */
    cairo_set_source_rgb(cr, 0.1, 0.1, 0.1);
    text_at(cr, "step", a.px + a.pw / 2, H - 22, 13, 0.5, 0);
    cairo_save(cr);
    cairo_translate(cr, 16, a.py + a.ph / 2);
    cairo_rotate(cr, -M_PI / 2);
    text_at(cr, a.logy ? "loss (log scale)" : "loss", 0, 0, 13, 0.5, 0);
    cairo_restore(cr);
    cairo_select_font_face(cr, "DejaVu Sans", CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_BOLD);
    text_at(cr, "Training loss", W / 2.0, 12, 16, 0.5, 0);
    cairo_select_font_face(cr, "DejaVu Sans", CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_NORMAL);
    if (!npts) {
        cairo_set_source_rgb(cr, 0.5, 0.5, 0.5);
        text_at(cr, "no data yet", a.px + a.pw / 2, a.py + a.ph / 2, 14, 0.5, 0.5);
    }
    double lx = a.px + a.pw - 150, ly = a.py + 10;
    int nleg = (train.n > 0) + (val.n > 0);
    if (nleg) {
        cairo_set_source_rgba(cr, 1, 1, 1, 0.9);
        cairo_rectangle(cr, lx, ly, 140, 8 + 20 * nleg);
        cairo_fill_preserve(cr);
        cairo_set_source_rgb(cr, 0.6, 0.6, 0.6);
        cairo_stroke(cr);
        double yy = ly + 14;
        const struct {
            const series *s;
            const char *name;
            double r, g, b;
        } leg[2] = {{&train, "train loss", 0.12, 0.40, 0.75}, {&val, "validation loss", 0.90, 0.45, 0.05}};
        for (int k = 0; k < 2; k++) {
            if (!leg[k].s->n) continue;
            cairo_set_source_rgb(cr, leg[k].r, leg[k].g, leg[k].b);
            cairo_set_line_width(cr, 2.0);
            cairo_move_to(cr, lx + 8, yy), cairo_line_to(cr, lx + 32, yy), cairo_stroke(cr);
            cairo_set_source_rgb(cr, 0.1, 0.1, 0.1);
            text_at(cr, leg[k].name, lx + 40, yy, 12, 0, 0.5);
            yy += 20;
        }
    }
    cairo_destroy(cr);
    cairo_surface_flush(surf);
    int rc = save_surface(surf, png_path, err, errlen);
    cairo_surface_destroy(surf);
    free(train.x), free(train.y), free(val.x), free(val.y);
    return rc;
}

/* ---- sample grid ------------------------------------------------------------------------------ */

enum { GRID_MARGIN = 10, GRID_GAP = 4, GRID_LABEL_W = 120, GRID_TITLE_H = 24 };

int sample_grid_scale(int size) {
    int s = 84 / (size > 0 ? size : 1);
    return s < 1 ? 1 : s;
}

void sample_grid_dims(const sample_grid *g, int *width, int *height) {
    int cell = g->size * g->scale;
    *width = 2 * GRID_MARGIN + GRID_LABEL_W + g->cols * cell + (g->cols - 1) * GRID_GAP;
    *height = 2 * GRID_MARGIN + (g->title ? GRID_TITLE_H : 0) + g->rows * cell + (g->rows - 1) * GRID_GAP;
}

int plot_sample_grid(const sample_grid *g, const char *png_path, char *err, size_t errlen) {
    if (g->rows < 1 || g->cols < 1 || g->size < 1 || g->scale < 1 || (g->channels != 1 && g->channels != 3)) {
        snprintf(err, errlen, "sample grid: bad layout (%d x %d images of %d px, %d channels, scale %d)", g->rows,
                 g->cols, g->size, g->channels, g->scale);
        return -1;
    }
    plot_init();
    int W, H;
    sample_grid_dims(g, &W, &H);
    cairo_surface_t *surf = cairo_image_surface_create(CAIRO_FORMAT_RGB24, W, H);
    if (cairo_surface_status(surf) != CAIRO_STATUS_SUCCESS) {
        snprintf(err, errlen, "sample grid: cannot make a %d x %d picture: %s", W, H,
                 cairo_status_to_string(cairo_surface_status(surf)));
        cairo_surface_destroy(surf);
        return -1;
    }
    cairo_surface_flush(surf);
    /* paint background, then write the upscaled pixels straight into the surface (nearest neighbour) */
    uint8_t *data = cairo_image_surface_get_data(surf);
    int stride = cairo_image_surface_get_stride(surf);
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) ((uint32_t *)(data + (size_t)y * stride))[x] = 0xFFFFFFu;
    int cell = g->size * g->scale, top = GRID_MARGIN + (g->title ? GRID_TITLE_H : 0);
    int left = GRID_MARGIN + GRID_LABEL_W;
    for (int r = 0; r < g->rows; r++)
        for (int c = 0; c < g->cols; c++) {
            const uint8_t *img = g->images[r * g->cols + c];
            if (!img) continue;
            int X0 = left + c * (cell + GRID_GAP), Y0 = top + r * (cell + GRID_GAP);
            for (int y = 0; y < cell; y++) {
                uint32_t *row = (uint32_t *)(data + (size_t)(Y0 + y) * stride) + X0;
                const uint8_t *src = img + (size_t)(y / g->scale) * g->size * g->channels;
                for (int x = 0; x < cell; x++) {
                    const uint8_t *p = src + (size_t)(x / g->scale) * g->channels;
                    uint32_t R = p[0], G = g->channels == 3 ? p[1] : p[0], B = g->channels == 3 ? p[2] : p[0];
                    row[x] = R << 16 | G << 8 | B;
                }
            }
        }
    cairo_surface_mark_dirty(surf);

    cairo_t *cr = cairo_create(surf);
    cairo_select_font_face(cr, "DejaVu Sans", CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_NORMAL);
    cairo_set_source_rgb(cr, 0.1, 0.1, 0.1);
    for (int r = 0; r < g->rows; r++) {
        const char *name = g->row_labels && g->row_labels[r] ? g->row_labels[r] : "";
        /* shrink the font until the label fits the fixed column */
        double size = 14;
        cairo_text_extents_t te;
        for (;;) {
            cairo_set_font_size(cr, size);
            cairo_text_extents(cr, name, &te);
            if (te.width <= GRID_LABEL_W - 8 || size <= 6) break;
            size -= 1;
        }
        text_at(cr, name, left - 8, top + r * (cell + GRID_GAP) + cell / 2.0, size, 1.0, 0.5);
    }
    if (g->title) {
        double size = 13;
        cairo_text_extents_t te;
        for (;;) {
            cairo_set_font_size(cr, size);
            cairo_text_extents(cr, g->title, &te);
            if (te.width <= W - 2 * GRID_MARGIN || size <= 6) break;
            size -= 1;
        }
        text_at(cr, g->title, GRID_MARGIN, GRID_MARGIN + GRID_TITLE_H / 2.0 - 2, size, 0, 0.5);
    }
    cairo_destroy(cr);
    cairo_surface_flush(surf);
    int rc = save_surface(surf, png_path, err, errlen);
    cairo_surface_destroy(surf);
    return rc;
}
