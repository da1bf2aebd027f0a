/* The ANS kernel of tica's entropy coder (tica/entropy/coder.py describes the layout).
 *
 * One payload is a stack of 32-bit words made by an rANS coder with a 64-bit state and
 * 24-bit probabilities: the word format of constriction's AnsCoder (its DefaultAnsCoder,
 * with the contiguous categorical model's "fast" quantisation and its uniform model), so
 * streams written by either decode with the other, byte for byte.
 *
 * A segment is the symbols of one image that share one set of tables (z, or y). Its
 * decoding order is:
 *   1. every symbol's table entry, grouped by table index (ascending), each group in the
 *      symbols' own order; a value outside its table codes the escape entry (the last);
 *   2. for each escaped symbol in order, the bit count of its zigzagged overflow u,
 *      uniform over 0..23;
 *   3. for each escaped symbol with a bit count n >= 2, the n - 1 low bits of u, uniform
 *      over 0..2^(n-1) - 1.
 * ANS is a stack: the encoder pushes the segments and their parts in reverse.
 *
 * Every function codes a range [begin, end) of the images of a batch with the GIL
 * released, so that threads code disjoint ranges in parallel: Python's threads, or, built
 * with OpenMP, the kernel's own over `threads` workers. Those are the OpenMP runtime's
 * that torch loaded (the same shared library, found by its name), so the workers that
 * finish a torch op and wait spinning for the next are the ones that code, rather than
 * threads that compete with them for the cores. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#define THREAD_NUM() omp_get_thread_num()
#else
#define THREAD_NUM() 0
#endif

#define PRECISION 24
#define QUANTILE_MASK ((1u << PRECISION) - 1u)
#define ONE (1u << PRECISION)
#define BITS_RANGE 24            /* the bit count of an overflow: uniform over 0..23 */
#define MAX_ABS_VALUE (1 << 20)  /* values are clamped to +-this before coding */
#define REFILL (1ull << 32)

#define MAX_LOOKUP_BITS 16
#define SCAN_STEPS 8             /* dec_table's linear steps before it bisects */

typedef struct {
    Py_buffer cdf, lengths, offsets, index, lookup;
    const uint32_t *cdf_p;      /* (T, width): row t is its table's left cumulatives, */
    const int32_t *len_p;       /*   cdf[t][lengths[t] + 1] == 2^24 */
    const int32_t *off_p;       /* value coded by entry 0 of each table */
    const int32_t *idx_p;       /* table index of each symbol: (n,) shared or (B, n) */
    const uint16_t *look_p;     /* (T, 2^lookup_bits): per slice of the quantiles, the entry
                                   its smallest quantile decodes to (where a search starts) */
    Py_ssize_t width, tables, n;
    int per_image, lookup_bits;
} Segment;

/* ---- the coder --------------------------------------------------------------------- */

typedef struct {
    uint32_t *words;
    size_t size, capacity;
    uint64_t state;
} Encoder;

static int enc_push(Encoder *e, uint32_t cum, uint32_t prob) {
    if ((e->state >> (64 - PRECISION)) >= prob) {
        if (e->size == e->capacity) {
            size_t cap = e->capacity ? 2 * e->capacity : 256;
            uint32_t *grown = realloc(e->words, cap * sizeof(uint32_t));
            if (!grown) return -1;
            e->words = grown;
            e->capacity = cap;
        }
        e->words[e->size++] = (uint32_t)e->state;
        e->state >>= 32;
    }
    e->state = ((e->state / prob) << PRECISION) | (e->state % prob + cum);
    return 0;
}

typedef struct {
    const uint32_t *words;
    int64_t pos;                /* words[0..pos) are still to be read, from the end */
    uint64_t state;
} Decoder;

static inline void dec_advance(Decoder *d, uint32_t quantile, uint32_t cum, uint32_t prob) {
    d->state = (d->state >> PRECISION) * prob + (quantile - cum);
    if (d->state < REFILL && d->pos > 0)
        d->state = (d->state << 32) | d->words[--d->pos];
}

/* uniform over 0..range-1: every value 2^24 / range, the last one the rest */
static inline int enc_uniform(Encoder *e, uint32_t value, uint32_t range) {
    uint32_t p = ONE / range, cum = value * p;
    return enc_push(e, cum, value + 1 < range ? p : ONE - cum);
}

static inline uint32_t dec_uniform(Decoder *d, uint32_t range) {
    uint32_t p = ONE / range, q = (uint32_t)(d->state & QUANTILE_MASK);
    uint32_t s = q / p, last = range - 1;
    if (s < last) {
        dec_advance(d, q, s * p, p);
        return s;
    }
    dec_advance(d, q, last * p, ONE - last * p);
    return last;
}

/* The rare case of dec_table, out of its way: the quantile lies two or more entries past
 * the slice's, cdf[lo] <= q. Steps on a few entries, then (a long run of rare entries in
 * one slice: a wide table's tails) bisects up to the next slice's entry (the table's last
 * for the last slice), so a stream of rare values costs log2 steps a symbol, not hundreds;
 * and steps on past a wrong lookup. */
static uint32_t __attribute__((noinline, cold))
dec_far(const uint32_t *cdf, uint32_t lo, uint32_t q, const uint16_t *lookup, uint32_t slice,
        uint32_t slices, uint32_t length) {
    for (int steps = 0; steps < SCAN_STEPS && cdf[lo + 1] <= q; steps++)
        lo++;
    if (cdf[lo + 1] <= q) {
        uint32_t hi = slice + 1 < slices ? lookup[slice + 1] : length;
        hi = hi <= length ? hi : length;
        while (lo < hi) {
            uint32_t mid = (lo + hi + 1) >> 1;
            if (cdf[mid] <= q) lo = mid;
            else hi = mid - 1;
        }
    }
    while (cdf[lo + 1] <= q)
        lo++;
    return lo;
}

/* The entry lo whose interval holds the quantile, cdf[lo] <= q < cdf[lo + 1] (cdf[0] == 0
 * and cdf[length + 1] == 2^24 > q bound it), found from the lookup's entry for the
 * quantile's slice: the last entry that starts at or before the slice's first quantile.
 * A table's likely entries span whole slices, so the scan rarely takes a step; it needs
 * nothing of the lookup to stop, and a wrong entry there costs steps, never the answer. */
static inline uint32_t dec_table(Decoder *d, const uint32_t *cdf, int32_t length,
                                 const uint16_t *lookup, int shift) {
    uint32_t q = (uint32_t)(d->state & QUANTILE_MASK);
    uint32_t lo = lookup[q >> shift];
    lo = lo <= (uint32_t)length ? lo : (uint32_t)length;
    while (lo > 0 && cdf[lo] > q)
        lo--;
    if (cdf[lo + 1] <= q) {                 /* past the slice's entry: rarely more than one */
        if (__builtin_expect(cdf[lo + 2] <= q, 0))
            lo = dec_far(cdf, lo, q, lookup, q >> shift, 1u << (PRECISION - shift),
                         (uint32_t)length);
        else
            lo++;
    }
    dec_advance(d, q, cdf[lo], cdf[lo + 1] - cdf[lo]);
    return lo;
}

/* ---- one segment of one image --------------------------------------------------------- */

#define RUNS 4                  /* group_by_table's independent runs of positions */

typedef struct {               /* per-thread scratch, sized for the largest segment */
    int32_t *symbols, *order, *escaped;
    int32_t *steps;             /* decoding: the table of each step, in decoding order */
    uint32_t *u;
    int64_t *bounds;
    int32_t *cursors;           /* group_by_table's: RUNS rows of tables + 1 */
} Scratch;

/* `symbols` only for encoding: decoding writes its values straight into the output */
static int scratch_alloc(Scratch *s, Py_ssize_t n, Py_ssize_t tables, int encoding) {
    size_t m = n > 0 ? (size_t)n : 1;
    s->symbols = encoding ? malloc(m * sizeof(int32_t)) : NULL;
    s->order = malloc(m * sizeof(int32_t));
    s->escaped = malloc(m * sizeof(int32_t));
    s->steps = malloc(m * sizeof(int32_t));
    s->u = malloc(m * sizeof(uint32_t));
    s->bounds = malloc(((size_t)tables + 1) * sizeof(int64_t));
    s->cursors = malloc(RUNS * ((size_t)tables + 1) * sizeof(int32_t));
    return (s->symbols || !encoding) && s->order && s->escaped && s->steps && s->u && s->bounds
        && s->cursors ? 0 : -1;
}

static void scratch_free(Scratch *s) {
    free(s->symbols); free(s->order); free(s->escaped); free(s->steps); free(s->u);
    free(s->bounds); free(s->cursors);
}

/* order: the symbols' positions grouped by table (stable); bounds[t]..bounds[t+1] is
 * table t's group. -1 if an index is out of range. The positions are taken as RUNS
 * contiguous runs, one step of each in turn, each run counting and placing with its own
 * cursors: one cursor would make each step wait for the last one's store to it (a
 * trained model's indexes repeat, most of them 0), RUNS chains overlap. */
static int group_by_table(const int32_t *idx, Py_ssize_t n, Py_ssize_t tables, Scratch *s) {
    int64_t *b = s->bounds;
    int32_t *cur = s->cursors;
    Py_ssize_t w = tables + 1, len = n / RUNS, start[RUNS + 1];
    for (int r = 0; r <= RUNS; r++)
        start[r] = r * len;
    start[RUNS] = n;                           /* the last run takes what n / RUNS leaves */
    memset(cur, 0, RUNS * (size_t)w * sizeof(int32_t));
    /* one pass without a branch, in int32 compares (vectors; a table count past 2^31 - 1
     * cannot be: its cursors would not fit in memory) */
    const int32_t top = tables > INT32_MAX ? INT32_MAX : (int32_t)tables;
    int32_t outside = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        outside |= (idx[i] < 0) | (idx[i] >= top);
    if (outside) return -1;
    for (Py_ssize_t i = 0; i < len; i++)
        for (int r = 0; r < RUNS; r++)
            cur[r * w + idx[start[r] + i]]++;
    for (Py_ssize_t i = start[RUNS - 1] + len; i < n; i++)
        cur[(RUNS - 1) * w + idx[i]]++;
    int64_t at = 0;                  /* cursors: where each run's first of each table goes */
    for (Py_ssize_t t = 0; t < tables; t++) {
        b[t] = at;
        for (int r = 0; r < RUNS; r++) {
            int32_t c = cur[r * w + t];
            cur[r * w + t] = (int32_t)at;
            at += c;
        }
    }
    b[tables] = at;
    for (Py_ssize_t i = 0; i < len; i++)
        for (int r = 0; r < RUNS; r++) {
            Py_ssize_t k = start[r] + i;
            s->order[cur[r * w + idx[k]]++] = (int32_t)k;
        }
    for (Py_ssize_t i = start[RUNS - 1] + len; i < n; i++)
        s->order[cur[(RUNS - 1) * w + idx[i]]++] = (int32_t)i;
    return 0;
}

static uint32_t zigzag(int64_t overflow) {
    return (uint32_t)(overflow > 0 ? 2 * (overflow - 1) : -2 * overflow - 1);
}

static int bit_length(uint32_t u) { return u ? 32 - __builtin_clz(u) : 0; }

/* Encode (push, in reverse decoding order) image b's symbols of one segment. */
static int encode_segment(Encoder *e, const Segment *g, const int32_t *values, Py_ssize_t b,
                          Scratch *s) {
    const int32_t *idx = g->idx_p + (g->per_image ? b * g->n : 0);
    const int32_t *val = values + b * g->n;
    if (group_by_table(idx, g->n, g->tables, s)) return -2;
    Py_ssize_t escapes = 0;
    for (Py_ssize_t i = 0; i < g->n; i++) {
        int64_t v = val[i];
        v = v < -MAX_ABS_VALUE ? -MAX_ABS_VALUE : v > MAX_ABS_VALUE ? MAX_ABS_VALUE : v;
        int32_t t = idx[i], len = g->len_p[t];
        int64_t raw = v - g->off_p[t];
        if (raw < 0 || raw >= len) {
            s->symbols[i] = len;
            s->u[escapes] = zigzag(raw < 0 ? raw : raw - len + 1);
            s->escaped[escapes++] = (int32_t)i;
        } else {
            s->symbols[i] = (int32_t)raw;
        }
    }
    for (Py_ssize_t k = escapes - 1; k >= 0; k--) {          /* 3. the low bits */
        int nbits = bit_length(s->u[k]);
        if (nbits >= 2) {
            uint32_t top = 1u << (nbits - 1);
            if (enc_uniform(e, s->u[k] - top, top)) return -1;
        }
    }
    for (Py_ssize_t k = escapes - 1; k >= 0; k--) {          /* 2. the bit counts */
        int nbits = bit_length(s->u[k]);
        if (nbits >= BITS_RANGE) return -3;
        if (enc_uniform(e, (uint32_t)nbits, BITS_RANGE)) return -1;
    }
    for (Py_ssize_t t = g->tables - 1; t >= 0; t--) {        /* 1. grouped by table */
        const uint32_t *cdf = g->cdf_p + t * g->width;
        for (int64_t j = s->bounds[t + 1] - 1; j >= s->bounds[t]; j--) {
            int32_t sym = s->symbols[s->order[j]];
            if (enc_push(e, cdf[sym], cdf[sym + 1] - cdf[sym])) return -1;
        }
    }
    return 0;
}

static int64_t unzigzag(uint32_t u) {
    return u % 2 == 0 ? (int64_t)(u / 2) + 1 : -(((int64_t)u + 1) / 2);
}

/* Image b's table indexes of one segment, grouped by table into s (order, bounds), and
 * the table of each decoding step (s->steps). -2 if an index is out of range. */
static int decode_plan(const Segment *g, Py_ssize_t b, Scratch *s) {
    const int32_t *idx = g->idx_p + (g->per_image ? b * g->n : 0);
    if (group_by_table(idx, g->n, g->tables, s)) return -2;
    for (Py_ssize_t t = 0; t < g->tables; t++)
        for (int64_t j = s->bounds[t]; j < s->bounds[t + 1]; j++)
            s->steps[j] = (int32_t)t;
    return 0;
}

/* The table entries decoded, image b's escapes: their overflows, and every value. -4 if a
 * value lies beyond +-MAX_ABS_VALUE, which no encoder writes (it clamps to that). */
static int decode_escapes(Decoder *d, const Segment *g, int32_t *out, Py_ssize_t b,
                          Scratch *s) {
    const int32_t *idx = g->idx_p + (g->per_image ? b * g->n : 0);
    Py_ssize_t escapes = 0;
    for (Py_ssize_t i = 0; i < g->n; i++) {
        int32_t t = idx[i];
        if (out[i] == g->len_p[t]) s->escaped[escapes++] = (int32_t)i;
        else out[i] += g->off_p[t];
    }
    for (Py_ssize_t k = 0; k < escapes; k++)
        s->u[k] = dec_uniform(d, BITS_RANGE);                 /* the bit count, for now */
    for (Py_ssize_t k = 0; k < escapes; k++) {
        uint32_t nbits = s->u[k];
        uint32_t u = nbits >= 1 ? 1u << (nbits - 1) : 0;
        if (nbits >= 2) u += dec_uniform(d, 1u << (nbits - 1));
        int32_t i = s->escaped[k], t = idx[i];
        int64_t overflow = unzigzag(u), base = g->off_p[t];
        int64_t value = overflow < 0 ? base + overflow : base + g->len_p[t] - 1 + overflow;
        if (value < -MAX_ABS_VALUE || value > MAX_ABS_VALUE) return -4;
        out[i] = (int32_t)value;
    }
    return 0;
}

#define LANES 4                 /* images decoded side by side by one thread */

/* Decode `lanes` (1..LANES) images b, b + 1, ...'s symbols of one segment into out (lanes,
 * n) as values, d[l] and s[l] image b + l's decoder and scratch. Each image's symbols come
 * in its own order; the images' steps are interleaved, LANES at a time, so that their
 * independent chains (quantile, entry, next state) overlap in the processor instead of
 * each waiting for its last step. */
static int decode_segments(Decoder *d, const Segment *g, int32_t *out, Py_ssize_t b,
                           Py_ssize_t lanes, Scratch *s, Py_ssize_t *which) {
    for (Py_ssize_t l = 0; l < lanes; l++)
        if (decode_plan(g, b + l, &s[l])) { *which = b + l; return -2; }
    const uint32_t *cdf = g->cdf_p;
    const int32_t *len = g->len_p;
    const uint16_t *look = g->look_p;
    int bits = g->lookup_bits, shift = PRECISION - bits;
    Py_ssize_t width = g->width, n = g->n;
#define STEP(l)                                                                             \
    do {                                                                                   \
        int32_t t = s[l].steps[j];                                                         \
        out[(l) * n + s[l].order[j]] = (int32_t)dec_table(                                 \
            &d[l], cdf + t * width, len[t], look + ((Py_ssize_t)t << bits), shift);        \
    } while (0)
    if (lanes == LANES) {
        for (Py_ssize_t j = 0; j < n; j++) {
            STEP(0); STEP(1); STEP(2); STEP(3);
        }
    } else {
        for (Py_ssize_t j = 0; j < n; j++)
            for (Py_ssize_t l = 0; l < lanes; l++)
                STEP(l);
    }
#undef STEP
    for (Py_ssize_t l = 0; l < lanes; l++)
        if (decode_escapes(&d[l], g, out + l * n, b + l, &s[l])) { *which = b + l; return -4; }
    return 0;
}

/* ---- Python bindings ------------------------------------------------------------------ */

static void release_segments(Segment *g, Py_ssize_t count) {
    for (Py_ssize_t k = 0; k < count; k++) {
        PyBuffer_Release(&g[k].cdf); PyBuffer_Release(&g[k].lengths);
        PyBuffer_Release(&g[k].offsets); PyBuffer_Release(&g[k].index);
        PyBuffer_Release(&g[k].lookup);
    }
}

static int fail(const char *message) {
    PyErr_SetString(PyExc_ValueError, message);
    return -1;
}

/* (cdf, width, lengths, offsets, index, n, per_image, lookup, lookup_bits), every array
 * C-contiguous; the lookup (uint16, T x 2^lookup_bits) serves decoding alone */
static int parse_segment(PyObject *item, Segment *g, Py_ssize_t batch) {
    memset(g, 0, sizeof(*g));
    if (!PyArg_ParseTuple(item, "y*ny*y*y*npy*i", &g->cdf, &g->width, &g->lengths,
                          &g->offsets, &g->index, &g->n, &g->per_image, &g->lookup,
                          &g->lookup_bits))
        return -1;
    g->look_p = g->lookup.buf;
    g->tables = g->lengths.len / (Py_ssize_t)sizeof(int32_t);
    g->cdf_p = g->cdf.buf; g->len_p = g->lengths.buf;
    g->off_p = g->offsets.buf; g->idx_p = g->index.buf;
    if (g->tables < 1 || g->width < 2 || g->n < 0
        || g->offsets.len != g->lengths.len
        || g->cdf.len != g->tables * g->width * (Py_ssize_t)sizeof(uint32_t)
        || g->index.len != (g->per_image ? batch : 1) * g->n * (Py_ssize_t)sizeof(int32_t)
        || g->lookup_bits < 0 || g->lookup_bits > MAX_LOOKUP_BITS
        || g->lookup.len != (g->tables << g->lookup_bits) * (Py_ssize_t)sizeof(uint16_t))
        return fail("segment arrays have inconsistent sizes");
    for (Py_ssize_t t = 0; t < g->tables; t++)
        if (g->len_p[t] < 1 || (Py_ssize_t)g->len_p[t] + 2 > g->width
            || g->cdf_p[t * g->width + g->len_p[t] + 1] != ONE)
            return fail("a coding table is malformed");
    return 0;
}

static Py_ssize_t parse_segments(PyObject *seq, Segment **out, Py_ssize_t batch,
                                 Py_ssize_t *largest_n, Py_ssize_t *largest_t) {
    PyObject *fast = PySequence_Fast(seq, "segments must be a sequence");
    if (!fast) return -1;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(fast);
    Segment *g = calloc(count > 0 ? (size_t)count : 1, sizeof(Segment));
    if (!g) { Py_DECREF(fast); PyErr_NoMemory(); return -1; }
    *largest_n = *largest_t = 1;
    for (Py_ssize_t k = 0; k < count; k++) {
        if (parse_segment(PySequence_Fast_GET_ITEM(fast, k), &g[k], batch)) {
            release_segments(g, k + 1);
            free(g);
            Py_DECREF(fast);
            return -1;
        }
        if (g[k].n > *largest_n) *largest_n = g[k].n;
        if (g[k].tables > *largest_t) *largest_t = g[k].tables;
    }
    Py_DECREF(fast);
    *out = g;
    return count;
}

static const char *status_message(int status) {
    switch (status) {
    case -1: return "out of memory while entropy coding";
    case -2: return "a table index is out of range";
    case -3: return "a value's overflow is too wide to code";
    case -4: return "a decoded value lies beyond the coder's range";
    default: return "entropy coding failed";
    }
}

/* How many of `workers` threads code `items` units of work: one without OpenMP. */
static int team_size(Py_ssize_t workers, Py_ssize_t items) {
#ifdef _OPENMP
    Py_ssize_t n = workers < items ? workers : items;
    return n < 1 ? 1 : n > 1024 ? 1024 : (int)n;
#else
    (void)workers; (void)items;
    return 1;
#endif
}

/* encode(segments, values, batch, begin, end[, threads]) -> list of bytes, one per image
 * of [begin, end). values: one int32 array (B, n) per segment, in decoding order. */
static PyObject *py_encode(PyObject *self, PyObject *args) {
    PyObject *segs, *vals;
    Py_ssize_t batch, begin, end, largest_n, largest_t, workers = 1;
    if (!PyArg_ParseTuple(args, "OOnnn|n", &segs, &vals, &batch, &begin, &end, &workers))
        return NULL;
    if (begin < 0 || end > batch || begin > end)
        return PyErr_Format(PyExc_ValueError, "bad image range %zd..%zd of %zd", begin, end, batch);
    int nt = team_size(workers, end - begin);
    Segment *g;
    Py_ssize_t count = parse_segments(segs, &g, batch, &largest_n, &largest_t);
    if (count < 0) return NULL;
    Py_buffer *vb = calloc(count > 0 ? (size_t)count : 1, sizeof(Py_buffer));
    Py_ssize_t got = 0;
    PyObject *fast = PySequence_Fast(vals, "values must be a sequence");
    int ok = vb && fast && PySequence_Fast_GET_SIZE(fast) == count;
    if (fast && vb && !ok) PyErr_SetString(PyExc_ValueError, "one values array per segment");
    for (; ok && got < count; got++) {
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(fast, got), &vb[got], PyBUF_SIMPLE)) {
            ok = 0;
            break;
        }
        if (vb[got].len != batch * g[got].n * (Py_ssize_t)sizeof(int32_t)) {
            PyErr_SetString(PyExc_ValueError, "values have the wrong size");
            ok = 0;
            got++;
            break;
        }
    }
    Py_XDECREF(fast);
    Py_ssize_t images = end - begin;
    Encoder *enc = ok ? calloc(images > 0 ? (size_t)images : 1, sizeof(Encoder)) : NULL;
    Scratch *s = ok ? calloc((size_t)nt, sizeof(Scratch)) : NULL;
    int status = 0;
    for (int t = 0; ok && !status && t < nt; t++)
        if (!enc || !s || scratch_alloc(&s[t], largest_n, largest_t, 1)) status = -1;
    if (ok && !status) {
        Py_BEGIN_ALLOW_THREADS
        #pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
        for (Py_ssize_t b = begin; b < end; b++) {
            int st = 0;
            for (Py_ssize_t k = count - 1; k >= 0 && !st; k--)
                st = encode_segment(&enc[b - begin], &g[k], vb[k].buf, b, &s[THREAD_NUM()]);
            if (st) {
                #pragma omp atomic write
                status = st;
            }
        }
        Py_END_ALLOW_THREADS
    }
    PyObject *result = NULL;
    if (ok && !status) {
        result = PyList_New(images);
        for (Py_ssize_t i = 0; result && i < images; i++) {
            Encoder *e = &enc[i];
            size_t head = e->state == 0 ? 0 : e->state < REFILL ? 1 : 2;
            PyObject *bytes = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)((e->size + head) * 4));
            if (!bytes) { Py_CLEAR(result); break; }
            uint8_t *p = (uint8_t *)PyBytes_AS_STRING(bytes);
            for (size_t w = 0; w < e->size + head; w++) {   /* little-endian words */
                uint32_t word = w < e->size ? e->words[w]
                                : (uint32_t)(e->state >> (32 * (w - e->size)));
                p[4 * w] = word & 255; p[4 * w + 1] = (word >> 8) & 255;
                p[4 * w + 2] = (word >> 16) & 255; p[4 * w + 3] = word >> 24;
            }
            PyList_SET_ITEM(result, i, bytes);
        }
    } else if (ok) {
        PyErr_SetString(status == -1 ? PyExc_MemoryError : PyExc_ValueError,
                        status_message(status));
    }
    for (Py_ssize_t i = 0; enc && i < images; i++) free(enc[i].words);
    free(enc);
    for (int t = 0; s && t < nt; t++) scratch_free(&s[t]);
    free(s);
    for (Py_ssize_t k = 0; k < got; k++) PyBuffer_Release(&vb[k]);
    free(vb);
    release_segments(g, count);
    free(g);
    if (!vb && !PyErr_Occurred()) PyErr_NoMemory();
    return result;
}

/* Decoder state of a batch: the payloads' words concatenated, where each image's words
 * start (B + 1 offsets), and per image its ANS state and read position (in words). */
typedef struct {
    Py_buffer words, starts, states, positions;
} BatchState;

static void batch_release(BatchState *st) {
    PyBuffer_Release(&st->words); PyBuffer_Release(&st->starts);
    PyBuffer_Release(&st->states); PyBuffer_Release(&st->positions);
}

static int batch_parse(PyObject *words, PyObject *starts, PyObject *states,
                       PyObject *positions, Py_ssize_t batch, BatchState *st,
                       int positions_set) {
    memset(st, 0, sizeof(*st));
    if (PyObject_GetBuffer(words, &st->words, PyBUF_SIMPLE)
        || PyObject_GetBuffer(starts, &st->starts, PyBUF_SIMPLE)
        || PyObject_GetBuffer(states, &st->states, PyBUF_WRITABLE)
        || PyObject_GetBuffer(positions, &st->positions, PyBUF_WRITABLE))
        return -1;
    const int64_t *s = st->starts.buf, *p = st->positions.buf;
    if (st->starts.len != (batch + 1) * (Py_ssize_t)sizeof(int64_t)
        || st->states.len != batch * (Py_ssize_t)sizeof(uint64_t)
        || st->positions.len != batch * (Py_ssize_t)sizeof(int64_t)
        || st->words.len % 4)
        return fail("decoder state arrays have inconsistent sizes");
    for (Py_ssize_t b = 0; b < batch; b++)
        if (s[b] < 0 || s[b] > s[b + 1] || s[b + 1] > st->words.len / 4
            || (positions_set && (p[b] < 0 || p[b] > s[b + 1] - s[b])))
            return fail("payload offsets are out of range");
    return 0;
}

/* decoder_init(words, starts, states, positions, batch) -> index of the first payload that
 * cannot start (it ends in a zero word), or -1. Sets every image's state and position. */
static PyObject *py_decoder_init(PyObject *self, PyObject *args) {
    PyObject *w, *s, *st_, *p;
    Py_ssize_t batch;
    if (!PyArg_ParseTuple(args, "OOOOn", &w, &s, &st_, &p, &batch)) return NULL;
    BatchState st;
    if (batch_parse(w, s, st_, p, batch, &st, 0)) { batch_release(&st); return NULL; }
    const uint32_t *words = st.words.buf;
    const int64_t *starts = st.starts.buf;
    uint64_t *states = st.states.buf;
    int64_t *positions = st.positions.buf;
    Py_ssize_t bad = -1;
    for (Py_ssize_t b = 0; b < batch && bad < 0; b++) {
        int64_t lo = starts[b], pos = starts[b + 1] - lo;
        uint64_t state = 0;
        if (pos > 0) {
            state = words[lo + --pos];
            if (state == 0) bad = b;
            while (pos > 0) {
                state = (state << 32) | words[lo + --pos];
                if (state >= REFILL) break;
            }
        }
        states[b] = state;
        positions[b] = pos;
    }
    batch_release(&st);
    return PyLong_FromSsize_t(bad);
}

/* decode(segment, words, starts, states, positions, out, batch, begin, end[, threads]):
 * decode images [begin, end)'s symbols of one segment into out (B, n) int32, advancing
 * their states. */
static PyObject *py_decode(PyObject *self, PyObject *args) {
    PyObject *seg, *w, *s, *st_, *p, *out_obj;
    Py_ssize_t batch, begin, end, workers = 1;
    if (!PyArg_ParseTuple(args, "OOOOOOnnn|n", &seg, &w, &s, &st_, &p, &out_obj, &batch,
                          &begin, &end, &workers))
        return NULL;
    if (begin < 0 || end > batch || begin > end)
        return PyErr_Format(PyExc_ValueError, "bad image range %zd..%zd of %zd", begin, end, batch);
    Py_ssize_t groups = (end - begin + LANES - 1) / LANES;     /* LANES images at a time */
    int nt = team_size(workers, groups);
    int lanes_used = end - begin < LANES ? (int)(end - begin) : LANES;  /* scratch a thread */
    if (lanes_used < 1) lanes_used = 1;
    Segment g;
    if (parse_segment(seg, &g, batch)) { release_segments(&g, 1); return NULL; }
    BatchState st;
    Py_buffer out = {0};
    int status = 0;
    if (batch_parse(w, s, st_, p, batch, &st, 1)
        || PyObject_GetBuffer(out_obj, &out, PyBUF_WRITABLE)) {
        status = 1;
    } else if (out.len != batch * g.n * (Py_ssize_t)sizeof(int32_t)) {
        fail("the output array has the wrong size");
        status = 1;
    }
    Scratch *sc = status ? NULL : calloc((size_t)nt * lanes_used, sizeof(Scratch));
    if (!status && !sc) { PyErr_NoMemory(); status = 1; }
    for (int l = 0; l < nt * lanes_used && !status; l++)
        if (scratch_alloc(&sc[l], g.n, g.tables, 0)) { PyErr_NoMemory(); status = 1; }
    if (!status) {
        const uint32_t *words = st.words.buf;
        const int64_t *starts = st.starts.buf;
        uint64_t *states = st.states.buf;
        int64_t *positions = st.positions.buf;
        int32_t *o = out.buf;
        Py_ssize_t first_bad = PY_SSIZE_T_MAX;         /* the lowest image refused */
        Py_BEGIN_ALLOW_THREADS
        #pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
        for (Py_ssize_t k = 0; k < groups; k++) {
            Py_ssize_t b = begin + k * LANES, which = 0;
            Py_ssize_t lanes = end - b < LANES ? end - b : LANES;
            Decoder d[LANES];
            for (Py_ssize_t l = 0; l < lanes; l++)
                d[l] = (Decoder){words + starts[b + l], positions[b + l], states[b + l]};
            int bad = decode_segments(d, &g, o + b * g.n, b, lanes,
                                      sc + THREAD_NUM() * lanes_used, &which);
            for (Py_ssize_t l = 0; l < lanes; l++) {
                states[b + l] = d[l].state;
                positions[b + l] = d[l].pos;
            }
            if (bad) {
                #pragma omp critical
                {
                    status = bad;
                    if (which < first_bad) first_bad = which;
                }
            }
        }
        Py_END_ALLOW_THREADS
        if (status)
            PyErr_Format(PyExc_ValueError, "image %zd: %s", first_bad, status_message(status));
    }
    for (int l = 0; sc && l < nt * lanes_used; l++)
        scratch_free(&sc[l]);
    free(sc);
    PyBuffer_Release(&out);
    batch_release(&st);
    release_segments(&g, 1);
    if (status) return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"encode", py_encode, METH_VARARGS, "Encode a range of images' segments into payloads."},
    {"decoder_init", py_decoder_init, METH_VARARGS, "Start decoding a batch of payloads."},
    {"decode", py_decode, METH_VARARGS, "Decode one segment of a range of images."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_rans",
                                    "The rANS kernel of tica's entropy coder.", -1, methods};

PyMODINIT_FUNC PyInit__rans(void) {
    PyObject *m = PyModule_Create(&module);
#ifdef _OPENMP
    int openmp = 1;
#else
    int openmp = 0;
#endif
    /* whether `threads` is honoured: else callers run ranges on threads of their own */
    if (m && PyModule_AddIntConstant(m, "openmp", openmp)) Py_CLEAR(m);
    return m;
}
