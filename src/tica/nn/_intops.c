/* The end of each layer of the exact integer h_s (tica/nn/integer.py), in one pass, and
 * its products where the input is mostly zeros.
 *
 * A layer's accumulator arrives as partial sums of digit products (int32, or float32 that
 * hold integers within 2^24), one array per weight 2^(7 s) of the digits that made it.
 * `sparse_conv` makes such a product from the input's nonzero values alone (a trained h_s's
 * activations are 80-95% zeros on photographs). `hidden_layer` recombines them, adds the
 * bias, applies ReLU, shifts to the activations' fixed point (a floor) and clamps, all in
 * int64, and writes the int32 activations the next layer splits into digits: the integers
 * that `requantize` computes in float64, without its passes over memory. `last_layer` ends
 * the last layer the way decoding uses it: each scale's table index and each mean, as
 * `TablesAndMeans` computes them in torch. Every value is an integer below 2^53
 * (IntegerHyperSynthesis.build checks the worst case), so int64 holds the accumulator
 * exactly and float64 its quotient by a power of two. The GIL is released while they run;
 * built with OpenMP, the rows are shared among `workers` threads of the runtime torch
 * loaded (the workers its int8 products just ran on, see tica/entropy/_rans.c). */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#define THREAD_NUM() omp_get_thread_num()
#else
#define THREAD_NUM() 0
#endif

#define MAX_PARTS 8
#define MIN_VALUES_PER_WORKER 16384     /* below this a worker costs more than it saves */

/* How many of `workers` threads end a layer of n values: one without OpenMP. */
static int team_size(Py_ssize_t workers, Py_ssize_t n) {
#ifdef _OPENMP
    Py_ssize_t worth = n / MIN_VALUES_PER_WORKER;
    Py_ssize_t t = workers < worth ? workers : worth;
    return t < 1 ? 1 : t > 1024 ? 1024 : (int)t;
#else
    (void)workers; (void)n;
    return 1;
#endif
}

/* Thread t of nt's share of `rows` rows: rows [*first, *stop). */
static void share(Py_ssize_t rows, int t, int nt, Py_ssize_t *first, Py_ssize_t *stop) {
    *first = rows * t / nt;
    *stop = rows * (t + 1) / nt;
}

/* The row loops, compiled for the baseline x86-64 and for AVX2 and AVX-512 machines, the
 * widest the CPU runs picked when the module loads (GCC's function multiversioning). The
 * same numbers on each: integer operations, exact conversions, and one rounding per
 * floating-point operation (no contraction into FMA: -ffp-contract=off). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12 \
    && defined(__linux__)
#define WIDE_VECTORS __attribute__((target_clones("default", "arch=x86-64-v3", "arch=x86-64-v4")))
#else
#define WIDE_VECTORS
#endif

typedef struct {               /* a layer's accumulator as parts: sum part[k] 2^shift[k] */
    Py_buffer bufs[MAX_PARTS];
    const void *part[MAX_PARTS];
    int is_float[MAX_PARTS];    /* float32 (integers within 2^24), else int32 */
    int shift[MAX_PARTS];
    Py_ssize_t count, got;
} Parts;

static void parts_release(Parts *p) {
    for (Py_ssize_t k = 0; k < p->got; k++)
        PyBuffer_Release(&p->bufs[k]);
    p->got = 0;
}

/* Read the parts (int32 buffers of `len` bytes each, or float32 ones holding integers
 * within 2^24) and their shifts (0..4: 2^31 parts times 2^28, eight of them, sum below
 * 2^63); -1 with an exception set if they do not fit. */
static int parts_get(Parts *p, PyObject *parts_obj, PyObject *shifts_obj, Py_ssize_t len) {
    memset(p, 0, sizeof(*p));
    PyObject *parts = PySequence_Fast(parts_obj, "parts must be a sequence");
    if (!parts)
        return -1;
    PyObject *shifts = PySequence_Fast(shifts_obj, "shifts must be a sequence");
    if (!shifts) {
        Py_DECREF(parts);
        return -1;
    }
    int status = -1;
    p->count = PySequence_Fast_GET_SIZE(parts);
    if (p->count < 1 || p->count > MAX_PARTS || PySequence_Fast_GET_SIZE(shifts) != p->count) {
        PyErr_SetString(PyExc_ValueError, "1..8 parts, one shift each");
        goto done;
    }
    for (Py_ssize_t k = 0; k < p->count; k++) {
        long s = PyLong_AsLong(PySequence_Fast_GET_ITEM(shifts, k));
        if (s < 0 || s > 4) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "shifts lie in 0..4");
            goto done;
        }
        p->shift[k] = 7 * (int)s;
        Py_buffer *view = &p->bufs[k];
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(parts, k), view, PyBUF_FORMAT))
            goto done;
        p->got = k + 1;
        p->part[k] = view->buf;
        const char *format = view->format ? view->format : "B";
        if (*format == '<' || *format == '=' || *format == '@')
            format++;
        p->is_float[k] = strcmp(format, "f") == 0;
        int int32 = strcmp(format, "i") == 0 || (strcmp(format, "l") == 0 && sizeof(long) == 4);
        if (view->itemsize != 4 || !(p->is_float[k] || int32)) {
            PyErr_SetString(PyExc_ValueError, "every part is int32 or float32");
            goto done;
        }
        if (view->len != len) {
            PyErr_SetString(PyExc_ValueError, "every part has out's size");
            goto done;
        }
    }
    status = 0;
done:
    if (status)
        parts_release(p);
    Py_DECREF(parts);
    Py_DECREF(shifts);
    return status;
}

/* Row i0 / cols of the accumulator, columns [c0, c1), into acc[0 .. c1 - c0): the bias plus
 * each part times its weight, column by column (loops the compiler vectorises; a float32
 * part's integers convert to int32 exactly). */
static inline void accumulate_row(const Parts *p, Py_ssize_t i0, Py_ssize_t c0, Py_ssize_t c1,
                                  const int64_t *bias, int64_t *acc) {
    for (Py_ssize_t c = c0; c < c1; c++)
        acc[c - c0] = bias[c];
    for (Py_ssize_t k = 0; k < p->count; k++) {
        int shift = p->shift[k];
        if (p->is_float[k]) {
            const float *part = (const float *)p->part[k] + i0;
            for (Py_ssize_t c = c0; c < c1; c++)
                acc[c - c0] += (int64_t)(int32_t)part[c] * ((int64_t)1 << shift);
        } else {
            const int32_t *part = (const int32_t *)p->part[k] + i0;
            for (Py_ssize_t c = c0; c < c1; c++)
                acc[c - c0] += (int64_t)part[c] * ((int64_t)1 << shift);
        }
    }
}

/* Get obj's buffer into view and check its byte size (none if bytes < 0); -1 with an
 * exception set otherwise. */
static int get_sized(PyObject *obj, Py_buffer *view, int writable, Py_ssize_t bytes,
                     const char *what) {
    if (PyObject_GetBuffer(obj, view, writable ? PyBUF_WRITABLE : PyBUF_SIMPLE))
        return -1;
    if (bytes >= 0 && view->len != bytes) {
        PyErr_Format(PyExc_ValueError, "%s does not match cols", what);
        return -1;
    }
    return 0;
}

static void release(Py_buffer *view) {
    if (view->obj)
        PyBuffer_Release(view);
}

/* hidden_layer's rows [first, stop): acc is a row's scratch, add the bias as integers. */
static WIDE_VECTORS void hidden_rows(const Parts *p, Py_ssize_t first, Py_ssize_t stop,
                                     Py_ssize_t cols, const int64_t *add, int64_t *acc,
                                     const int64_t *r, int plain, int64_t act_max, int32_t *o,
                                     float *of, int32_t *scratch) {
    for (Py_ssize_t i0 = first * cols; i0 < stop * cols; i0 += cols) {
        accumulate_row(p, i0, 0, cols, add, acc);
        int32_t *row = of ? scratch : o + i0;       /* float32 out: the row, then converted */
        if (of && plain) {
            for (Py_ssize_t c = 0; c < cols; c++) {
                int64_t v = (acc[c] > 0 ? acc[c] : 0) >> r[c];
                of[i0 + c] = (float)(int32_t)(v < act_max ? v : act_max);
            }
            continue;
        }
        if (plain) {
            for (Py_ssize_t c = 0; c < cols; c++) {
                int64_t v = (acc[c] > 0 ? acc[c] : 0) >> r[c];      /* ReLU, floor */
                row[c] = (int32_t)(v < act_max ? v : act_max);
            }
            continue;
        }
        for (Py_ssize_t c = 0; c < cols; c++) {
            int64_t a = acc[c] > 0 ? acc[c] : 0;                     /* ReLU */
            int64_t v;
            if (r[c] >= 0)
                v = r[c] >= 63 ? 0 : a >> r[c];                      /* floor: a >= 0 */
            else if (a == 0)
                v = 0;
            else            /* a >= 1 times 2^32 or more passes any int32 act_max */
                v = (a > act_max || -r[c] >= 32) ? act_max : a << -r[c];
            row[c] = (int32_t)(v < act_max ? v : act_max);
        }
        if (of)
            for (Py_ssize_t c = 0; c < cols; c++)
                of[i0 + c] = (float)row[c];
    }
}

/* hidden_layer(parts, shifts, bias, rshift, act_max, cols, out) -> None
 *   parts:  sequence of int32 buffers of rows * cols values, row-major
 *   shifts: sequence of ints, part k weighs 2^(7 shifts[k]) (0 <= shifts[k] <= 4)
 *   bias:   float64 buffer of cols integers
 *   rshift: int64 buffer of cols shifts: the activation is floor(relu(acc) / 2^rshift)
 *           (a negative one multiplies by 2^-rshift)
 *   out:    writable int32 buffer of rows * cols values, or float32 (exact: act_max is
 *           below 2^24 there) */
static PyObject *hidden_layer(PyObject *self, PyObject *args) {
    PyObject *parts_obj, *shifts_obj, *bias_obj, *rshift_obj, *out_obj;
    long long act_max;
    Py_ssize_t cols, workers = 1;
    if (!PyArg_ParseTuple(args, "OOOOLnO|n", &parts_obj, &shifts_obj, &bias_obj, &rshift_obj,
                          &act_max, &cols, &out_obj, &workers))
        return NULL;
    if (cols < 1 || act_max < 0 || act_max > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "hidden_layer: cols >= 1, 0 <= act_max < 2^31");
        return NULL;
    }
    Py_buffer bias = {0}, rshift = {0}, out = {0};
    Parts p = {0};
    PyObject *result = NULL;
    if (get_sized(bias_obj, &bias, 0, cols * (Py_ssize_t)sizeof(double), "bias")
        || get_sized(rshift_obj, &rshift, 0, cols * (Py_ssize_t)sizeof(int64_t), "rshift")
        || PyObject_GetBuffer(out_obj, &out, PyBUF_WRITABLE | PyBUF_FORMAT))
        goto done;
    const char *format = out.format ? out.format : "B";
    if (*format == '<' || *format == '=' || *format == '@')
        format++;
    int to_float = strcmp(format, "f") == 0;
    if (out.itemsize != 4 || !(to_float || strcmp(format, "i") == 0)
        || (to_float && act_max >= (1 << 24))) {
        PyErr_SetString(PyExc_ValueError, "hidden_layer: out is int32, or float32 for "
                        "act_max below 2^24");
        goto done;
    }
    Py_ssize_t n = out.len / (Py_ssize_t)sizeof(int32_t);
    if (n % cols) {
        PyErr_SetString(PyExc_ValueError, "hidden_layer: out's size does not match cols");
        goto done;
    }
    if (parts_get(&p, parts_obj, shifts_obj, out.len))
        goto done;
    const double *b = bias.buf;
    const int64_t *r = rshift.buf;
    int32_t *o = out.buf;
    int nt = team_size(workers, n);
    /* the bias as integers, then a row's scratch per thread (and int32 rows for float32) */
    int64_t *add = malloc((1 + (size_t)nt) * (size_t)cols * sizeof(int64_t));
    int32_t *rows = malloc((size_t)nt * (size_t)cols * sizeof(int32_t));
    if (!add || !rows) {
        free(add);
        free(rows);
        PyErr_NoMemory();
        goto done;
    }
    int plain = 1;                  /* every shift a right shift below 63: one branchless loop */
    for (Py_ssize_t c = 0; c < cols; c++) {
        add[c] = (int64_t)b[c];
        plain &= r[c] >= 0 && r[c] < 63;
    }
    Py_BEGIN_ALLOW_THREADS
    #pragma omp parallel num_threads(nt) if (nt > 1)
    {
        int t = THREAD_NUM();
        Py_ssize_t first, stop;
        share(n / cols, t, nt, &first, &stop);
        hidden_rows(&p, first, stop, cols, add, add + (1 + t) * cols, r, plain, act_max,
                    to_float ? NULL : o, to_float ? (float *)out.buf : NULL, rows + t * cols);
    }
    Py_END_ALLOW_THREADS
    free(add);
    free(rows);
    result = Py_NewRef(Py_None);
done:
    parts_release(&p);
    release(&bias);
    release(&rshift);
    release(&out);
    return result;
}

/* ---- the table index of a scale: the number of ascending bounds below it ---------- */

#define SUB_BITS 6              /* a bucket: 1/64 of an octave (the tables' steps are 1/6) */
#define MAX_BUCKETS (1 << 16)
#define REM_BITS (52 - SUB_BITS)    /* the bits of a double below its bucket's */
#define REM_MASK ((UINT64_C(1) << REM_BITS) - 1)

typedef struct {
    const double *bounds;
    Py_ssize_t count;
    double *padded;             /* the bounds, then +inf */
    int32_t *first;             /* per bucket: the number of bounds below its smallest value */
    uint64_t *packed;           /* per bucket where each holds one bound at most: first << 46,
                                 * or'd with the low 46 bits of its bound's (all ones: none) */
    uint64_t key0;
    Py_ssize_t keys;            /* 0: no buckets (a bound <= 0, or too many): binary search */
    int steps;                  /* the most bounds one bucket holds */
} Buckets;

static uint64_t bits_of(double v) {
    uint64_t u;
    memcpy(&u, &v, sizeof(u));
    return u;
}

/* Positive doubles order as their bits do, so the top bits of a double (exponent and
 * SUB_BITS of mantissa) name the bucket it lies in, and each bucket's smallest value is
 * those bits followed by zeros. -1 (no memory) or 0. */
static int buckets_init(Buckets *t, const double *bounds, Py_ssize_t count) {
    memset(t, 0, sizeof(*t));
    t->bounds = bounds;
    t->count = count;
    t->padded = malloc(((size_t)count + 1) * sizeof(double));
    if (!t->padded)
        return -1;
    memcpy(t->padded, bounds, (size_t)count * sizeof(double));
    t->padded[count] = INFINITY;
    if (count < 1 || !(bounds[0] > 0) || !isfinite(bounds[count - 1]))
        return 0;
    t->key0 = bits_of(bounds[0]) >> (52 - SUB_BITS);
    Py_ssize_t keys = (Py_ssize_t)((bits_of(bounds[count - 1]) >> REM_BITS) - t->key0) + 1;
    if (keys > MAX_BUCKETS)
        return 0;
    t->first = malloc((size_t)keys * sizeof(int32_t));
    if (!t->first)
        return -1;
    Py_ssize_t below = 0;
    for (Py_ssize_t k = 0; k < keys; k++) {
        uint64_t edge_bits = (t->key0 + (uint64_t)k) << REM_BITS;
        double edge;
        memcpy(&edge, &edge_bits, sizeof(edge));
        while (below < count && bounds[below] < edge)
            below++;
        t->first[k] = (int32_t)below;
        if (k > 0 && t->first[k] - t->first[k - 1] > t->steps)
            t->steps = t->first[k] - t->first[k - 1];
    }
    if (count - t->first[keys - 1] > t->steps)
        t->steps = (int)(count - t->first[keys - 1]);
    t->keys = keys;
    if (t->steps > 1)
        return 0;
    t->packed = malloc((size_t)keys * sizeof(uint64_t));
    if (!t->packed)
        return -1;
    for (Py_ssize_t k = 0; k < keys; k++) {
        Py_ssize_t i = t->first[k];     /* the bound in bucket k, if any: bounds[first[k]] */
        uint64_t rem = REM_MASK;
        if (i < count && (bits_of(bounds[i]) >> REM_BITS) == t->key0 + (uint64_t)k)
            rem = bits_of(bounds[i]) & REM_MASK;
        t->packed[k] = ((uint64_t)t->first[k] << REM_BITS) | rem;
    }
    return 0;
}

static void buckets_free(Buckets *t) {
    free(t->padded);
    free(t->first);
    free(t->packed);
}

/* The number of bounds below v (torch.bucketize's index, right=False). */
static inline int32_t bucket_index(const Buckets *t, double v) {
    const double *bd = t->bounds;
    Py_ssize_t nb = t->count;
    if (nb < 1 || !(v > bd[0]))
        return 0;
    if (v > bd[nb - 1])
        return (int32_t)nb;
    if (t->keys) {              /* bd[0] < v <= bd[nb - 1], so v > 0 and its bucket exists */
        int32_t i = t->first[(bits_of(v) >> REM_BITS) - t->key0];
        for (int k = 0; k < t->steps; k++)  /* the bounds in v's bucket below v: a fixed */
            i += t->padded[i] < v;          /* count of steps, no branch to mispredict */
        return i;
    }
    const double *base = bd;    /* binary search: the bounds before base are all below v */
    Py_ssize_t len = nb;
    while (len > 1) {
        Py_ssize_t step = len >> 1;
        base = base[step - 1] < v ? base + step : base;
        len -= step;
    }
    return (int32_t)(base - bd) + (*base < v);
}

/* The table indexes of a row of scales v[0 .. n) into out: bucket_index of each. Where
 * the CPU has AVX2 and each bucket holds one bound at most, four at a time without a branch
 * on the values (the scalar one mispredicts where a channel's scales straddle the first
 * bound): v clamped into [bd[0], bd[nb - 1]], its bucket's packed entry gathered (one
 * gather: the count below the bucket and the bucket's bound, whose bits compare as the
 * doubles do), plus one where v's low bits pass the bound's, then 0 below bd[0] and nb
 * above bd[nb - 1], as there. */
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

__attribute__((target("avx2"))) static void bucket_row_avx2(const Buckets *t, const double *v,
                                                            Py_ssize_t n, int32_t *out) {
    const __m256d lo = _mm256_set1_pd(t->bounds[0]), hi = _mm256_set1_pd(t->bounds[t->count - 1]);
    const __m256i key0 = _mm256_set1_epi64x((long long)t->key0);
    const __m256i low = _mm256_set1_epi64x((long long)REM_MASK);
    const __m256i lanes = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);   /* 64-bit lanes to 32 */
    const __m128i top = _mm_set1_epi32((int)t->count);
    Py_ssize_t c = 0;
    for (; c + 4 <= n; c += 4) {
        __m256d x = _mm256_loadu_pd(v + c);
        __m256i in = _mm256_castpd_si256(_mm256_min_pd(_mm256_max_pd(x, lo), hi)); /* NaN: lo */
        __m256i key = _mm256_sub_epi64(_mm256_srli_epi64(in, REM_BITS), key0);
        __m256i e = _mm256_i64gather_epi64((const long long *)t->packed, key, 8);
        __m256i past = _mm256_cmpgt_epi64(_mm256_and_si256(in, low), _mm256_and_si256(e, low));
        __m256i i64 = _mm256_sub_epi64(_mm256_srli_epi64(e, REM_BITS), past);  /* +1 past */
        __m128i i = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(i64, lanes));
        __m128i above = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(
            _mm256_castpd_si256(_mm256_cmp_pd(x, hi, _CMP_GT_OQ)), lanes));
        __m128i inside = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(
            _mm256_castpd_si256(_mm256_cmp_pd(x, lo, _CMP_GT_OQ)), lanes));
        i = _mm_and_si128(_mm_blendv_epi8(i, top, above), inside);
        _mm_storeu_si128((__m128i *)(out + c), i);
    }
    for (; c < n; c++)
        out[c] = bucket_index(t, v[c]);
}

static int has_avx2(void) {
    static int known = -1;
    if (known < 0)
        known = __builtin_cpu_supports("avx2") ? 1 : 0;
    return known;
}
#endif

static void bucket_row(const Buckets *t, const double *v, Py_ssize_t n, int32_t *out) {
#if defined(__x86_64__) && defined(__GNUC__)
    if (t->packed && has_avx2()) {
        bucket_row_avx2(t, v, n, out);
        return;
    }
#endif
    for (Py_ssize_t c = 0; c < n; c++)
        out[c] = bucket_index(t, v[c]);
}

#define BLOCK 16                /* rows last_layer ends at a time */

/* last_layer's rows [first, stop), BLOCK at a time: acc is a row's scratch and v a
 * block's, add the bias as integers (bias_d as float64 where it lies within 2^52, else
 * NULL), inv the scales' inverses. With plane > 0, row r (image r / plane, pixel
 * r % plane) writes column c to out[image][c][pixel] (planar, channels first: a block's
 * pixels of one image side by side), else to out[r][c]. */
static WIDE_VECTORS void last_rows(const Parts *p, Py_ssize_t first, Py_ssize_t stop,
                                   Py_ssize_t cols, Py_ssize_t half, Py_ssize_t plane,
                                   const int64_t *add, const double *bias_d, int64_t *acc,
                                   const double *inv, const double *g,
                                   const Buckets *buckets, double *v, int32_t *picked,
                                   int32_t *o) {
    /* one part of weight 1 and a bias within 2^52: acc in float64 directly, exactly (an
     * int32 plus such a bias lies within 2^53), in vector lanes that int64 lacks here */
    int direct = p->count == 1 && p->shift[0] == 0 && bias_d != NULL;
    for (Py_ssize_t r = first; r < stop;) {
        Py_ssize_t n = stop - r < BLOCK ? stop - r : BLOCK;
        if (plane > 0 && n > plane - r % plane)
            n = plane - r % plane;                  /* a block within one image */
        for (Py_ssize_t j = 0; j < n; j++) {
            double *vj = v + j * cols;
            Py_ssize_t i0 = (r + j) * cols;
            if (direct && p->is_float[0]) {
                const float *part = (const float *)p->part[0] + i0;
                for (Py_ssize_t c = 0; c < cols; c++)
                    vj[c] = ((double)part[c] + bias_d[c]) * inv[c] * g[c];
            } else if (direct) {
                const int32_t *part = (const int32_t *)p->part[0] + i0;
                for (Py_ssize_t c = 0; c < cols; c++)
                    vj[c] = ((double)part[c] + bias_d[c]) * inv[c] * g[c];
            } else {
                accumulate_row(p, i0, 0, cols, add, acc);
                for (Py_ssize_t c = 0; c < cols; c++)  /* exact quotient, times the gain */
                    vj[c] = (double)acc[c] * inv[c] * g[c];
            }
        }
        for (Py_ssize_t j = 0; j < n; j++)
            bucket_row(buckets, v + j * cols, half, picked + j * half);
        /* out[r + j][c] at base + c * cs + j * rs */
        Py_ssize_t cs = 1, rs = cols;
        int32_t *base = o + r * cols;
        if (plane > 0) {
            base = o + (r / plane) * cols * plane + r % plane;
            cs = plane;
            rs = 1;
        }
        for (Py_ssize_t c = 0; c < half; c++)
            for (Py_ssize_t j = 0; j < n; j++)
                base[c * cs + j * rs] = picked[j * half + c];
        for (Py_ssize_t c = half; c < cols; c++)
            for (Py_ssize_t j = 0; j < n; j++) {
                float m = (float)v[j * cols + c];
                memcpy(&base[c * cs + j * rs], &m, sizeof(m));
            }
        r += n;
    }
}

/* last_layer's images [first, stop) from parts laid out by columns ((cols, rows), rows =
 * images * plane), into the planar out: each column's run of an image's pixels is
 * contiguous in both, so every pass runs along it in vector lanes with the column's
 * constants; acc and v are a run's scratch. The same arithmetic as last_rows. */
static WIDE_VECTORS void last_columns(const Parts *p, Py_ssize_t first, Py_ssize_t stop,
                                      Py_ssize_t rows, Py_ssize_t cols, Py_ssize_t half,
                                      Py_ssize_t plane, const int64_t *add,
                                      const double *bias_d, int64_t *acc, const double *inv,
                                      const double *g, const Buckets *buckets, double *v,
                                      int32_t *o) {
    int direct = p->count == 1 && p->shift[0] == 0 && bias_d != NULL;
    for (Py_ssize_t image = first; image < stop; image++)
        for (Py_ssize_t c = 0; c < cols; c++) {
            Py_ssize_t i0 = c * rows + image * plane;
            const double ic = inv[c], gc = g[c];
            if (direct) {
                const double b = bias_d[c];
                if (p->is_float[0]) {
                    const float *part = (const float *)p->part[0] + i0;
                    for (Py_ssize_t j = 0; j < plane; j++)
                        v[j] = ((double)part[j] + b) * ic * gc;
                } else {
                    const int32_t *part = (const int32_t *)p->part[0] + i0;
                    for (Py_ssize_t j = 0; j < plane; j++)
                        v[j] = ((double)part[j] + b) * ic * gc;
                }
            } else {
                for (Py_ssize_t j = 0; j < plane; j++)
                    acc[j] = add[c];
                for (Py_ssize_t k = 0; k < p->count; k++) {
                    const int64_t w = (int64_t)1 << p->shift[k];
                    if (p->is_float[k]) {
                        const float *part = (const float *)p->part[k] + i0;
                        for (Py_ssize_t j = 0; j < plane; j++)
                            acc[j] += (int64_t)(int32_t)part[j] * w;
                    } else {
                        const int32_t *part = (const int32_t *)p->part[k] + i0;
                        for (Py_ssize_t j = 0; j < plane; j++)
                            acc[j] += (int64_t)part[j] * w;
                    }
                }
                for (Py_ssize_t j = 0; j < plane; j++)
                    v[j] = (double)acc[j] * ic * gc;
            }
            int32_t *dst = o + (image * cols + c) * plane;
            if (c < half) {
                bucket_row(buckets, v, plane, dst);
            } else {
                float *mean = (float *)dst;
                for (Py_ssize_t j = 0; j < plane; j++)
                    mean[j] = (float)v[j];
            }
        }
}

/* last_layer(parts, shifts, bias, scale, gain, bounds, half, cols, out[, workers[, plane]])
 *   parts, shifts, bias: as hidden_layer's
 *   scale:  float64 buffer of cols powers of two 2^E: the output is v = acc / scale * gain
 *           (computed as acc times 2^-E: the same, exactly)
 *   gain:   float64 buffer of cols factors (the entropy gain; ones for none)
 *   bounds: float64 buffer of ascending table bounds
 *   half:   the columns before it are scales, the rest means
 *   out:    writable int32 buffer of rows * cols values: a scale's column receives its
 *           table index, the number of bounds below v (torch.bucketize), a mean's the bits
 *           of v as a float32 (rounded to nearest, as torch's .float())
 *   plane:  0 (out row-major, as the parts), or the pixels of an image: out is (rows /
 *           plane, cols, plane), each image's channels planar
 *   columns: 0 (each part (rows, cols), row-major), or 1: each part is (cols, rows), a
 *           product computed transposed (with plane > 0 only) */
static PyObject *last_layer(PyObject *self, PyObject *args) {
    PyObject *parts_obj, *shifts_obj, *bias_obj, *scale_obj, *gain_obj, *bounds_obj, *out_obj;
    Py_ssize_t half, cols, workers = 1, plane = 0;
    int columns = 0;
    if (!PyArg_ParseTuple(args, "OOOOOOnnO|nnp", &parts_obj, &shifts_obj, &bias_obj,
                          &scale_obj, &gain_obj, &bounds_obj, &half, &cols, &out_obj, &workers,
                          &plane, &columns))
        return NULL;
    if (cols < 1 || half < 0 || half > cols || plane < 0 || (columns && plane == 0)) {
        PyErr_SetString(PyExc_ValueError, "last_layer: cols >= 1, 0 <= half <= cols, plane >= 0"
                        " (> 0 with columns)");
        return NULL;
    }
    Py_buffer bias = {0}, scale = {0}, gain = {0}, bounds = {0}, out = {0};
    Parts p = {0};
    PyObject *result = NULL;
    Py_ssize_t bytes = cols * (Py_ssize_t)sizeof(double);
    if (get_sized(bias_obj, &bias, 0, bytes, "bias")
        || get_sized(scale_obj, &scale, 0, bytes, "scale")
        || get_sized(gain_obj, &gain, 0, bytes, "gain")
        || get_sized(bounds_obj, &bounds, 0, -1, "bounds")
        || get_sized(out_obj, &out, 1, -1, "out"))
        goto done;
    Py_ssize_t n = out.len / (Py_ssize_t)sizeof(int32_t);
    Py_ssize_t nb = bounds.len / (Py_ssize_t)sizeof(double);
    if (n % cols || out.len % sizeof(int32_t) || bounds.len % sizeof(double)
        || (plane > 0 && (n / cols) % plane)) {
        PyErr_SetString(PyExc_ValueError, "last_layer: out's size does not match cols and plane");
        goto done;
    }
    const double *b = bias.buf, *sc = scale.buf, *g = gain.buf;
    for (Py_ssize_t c = 0; c < cols; c++) {
        int e;
        if (!(frexp(sc[c], &e) == 0.5 && e > -1021 && e < 1022)) {
            PyErr_SetString(PyExc_ValueError, "last_layer: every scale is a power of two");
            goto done;
        }
    }
    if (parts_get(&p, parts_obj, shifts_obj, out.len))
        goto done;
    int32_t *o = out.buf;
    Buckets buckets = {0};
    int nt = team_size(workers, n);
    /* the bias as integers and the scales' inverses (exact: powers of two), then a row's
     * (or a run's) scratch per thread (acc, and v) */
    Py_ssize_t span = columns && plane > BLOCK * cols ? plane : BLOCK * cols;
    int64_t *add = malloc((1 + (size_t)nt) * (size_t)span * sizeof(int64_t));
    double *inv = malloc((size_t)cols * sizeof(double));
    double *v = malloc((size_t)nt * (size_t)span * sizeof(double));
    int32_t *picked = malloc((size_t)nt * BLOCK * (size_t)cols * sizeof(int32_t));
    if (!add || !inv || !v || !picked || buckets_init(&buckets, bounds.buf, nb)) {
        free(add);
        free(inv);
        free(v);
        free(picked);
        buckets_free(&buckets);
        PyErr_NoMemory();
        goto done;
    }
    int small_bias = 1;
    for (Py_ssize_t c = 0; c < cols; c++) {
        add[c] = (int64_t)b[c];
        inv[c] = 1.0 / sc[c];
        small_bias &= fabs(b[c]) <= 4503599627370496.0;       /* 2^52 */
    }
    Py_BEGIN_ALLOW_THREADS
    #pragma omp parallel num_threads(nt) if (nt > 1)
    {
        int t = THREAD_NUM();
        Py_ssize_t first, stop;
        if (columns) {
            share(n / cols / plane, t, nt, &first, &stop);
            last_columns(&p, first, stop, n / cols, cols, half, plane, add,
                         small_bias ? b : NULL, add + (1 + t) * span, inv, g, &buckets,
                         v + t * span, o);
        } else {
            share(n / cols, t, nt, &first, &stop);
            last_rows(&p, first, stop, cols, half, plane, add, small_bias ? b : NULL,
                      add + (1 + t) * span, inv, g, &buckets, v + t * span,
                      picked + t * BLOCK * cols, o);
        }
    }
    Py_END_ALLOW_THREADS
    free(add);
    free(inv);
    free(v);
    free(picked);
    buckets_free(&buckets);
    result = Py_NewRef(Py_None);
done:
    parts_release(&p);
    release(&bias);
    release(&scale);
    release(&gain);
    release(&bounds);
    release(&out);
    return result;
}

/* ---- a convolution of a mostly-zero input, by its nonzero values alone ------------- */

/* Output rows [first, stop) of sparse_conv: each the sum, over the taps and the nonzero
 * values a of the input pixel under each (channels chan[e] and values val[e] for e in
 * at[pixel] .. at[pixel + 1]), of a times that tap's and channel's row of the weight. */
static WIDE_VECTORS void sparse_rows(Py_ssize_t first, Py_ssize_t stop, Py_ssize_t Ho,
                                     Py_ssize_t Wo, Py_ssize_t H, Py_ssize_t W, Py_ssize_t C,
                                     Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t stride,
                                     Py_ssize_t C_out, const int64_t *at, const int32_t *chan,
                                     const float *val, const float *w, float *out) {
    for (Py_ssize_t r = first; r < stop; r++) {
        Py_ssize_t b = r / (Ho * Wo), oy = r / Wo % Ho, ox = r % Wo;
        float *acc = out + r * C_out;
        for (Py_ssize_t o = 0; o < C_out; o++)
            acc[o] = 0.0f;
        for (Py_ssize_t dy = 0; dy < kh; dy++)
            for (Py_ssize_t dx = 0; dx < kw; dx++) {
                Py_ssize_t pixel = (b * H + oy * stride + dy) * W + ox * stride + dx;
                const float *tap = w + (dy * kw + dx) * C * C_out;
                for (int64_t e = at[pixel]; e < at[pixel + 1]; e++) {
                    const float a = val[e], *row = tap + (Py_ssize_t)chan[e] * C_out;
                    for (Py_ssize_t o = 0; o < C_out; o++)
                        acc[o] += a * row[o];
                }
            }
    }
}

/* The C values of pixel p (image p / (H W), row p / W % H, column p % W) of a strided
 * (B, H, W, C) float32 buffer. */
static const float *pixel_of(const Py_buffer *x, Py_ssize_t p) {
    Py_ssize_t H = x->shape[1], W = x->shape[2];
    return (const float *)((const char *)x->buf + p / (H * W) * x->strides[0]
                           + p / W % H * x->strides[1] + p % W * x->strides[2]);
}

/* sparse_conv(x, weight, kh, kw, stride, out[, workers]) -> None
 *   x:      float32 array (B, H, W, C) of integers, any strides but unit ones along C
 *   weight: float32 buffer (kh kw C, C_out) of integers, rows ordered (tap row, tap
 *           column, channel)
 *   out:    writable float32 buffer (B Ho Wo, C_out): the valid correlation of x with the
 *           weight at `stride`, summed over x's nonzero values only. Exact where every
 *           partial sum is an integer within 2^24, as the digit products ensure (an input
 *           digit in [-128, 128), a weight whose columns' |digits| sum to 2^17 at most):
 *           a sum of some of a column's products stays within that bound in any order. */
static PyObject *sparse_conv(PyObject *self, PyObject *args) {
    PyObject *x_obj, *w_obj, *out_obj;
    Py_ssize_t kh, kw, stride, workers = 1;
    if (!PyArg_ParseTuple(args, "OOnnnO|n", &x_obj, &w_obj, &kh, &kw, &stride, &out_obj,
                          &workers))
        return NULL;
    Py_buffer x = {0}, w = {0}, out = {0};
    PyObject *result = NULL;
    int64_t *at = NULL;
    int32_t *chan = NULL;
    float *val = NULL;
    if (PyObject_GetBuffer(x_obj, &x, PyBUF_STRIDES | PyBUF_FORMAT)
        || get_sized(w_obj, &w, 0, -1, "weight") || get_sized(out_obj, &out, 1, -1, "out"))
        goto done;
    if (x.ndim != 4 || x.itemsize != 4 || !x.format || strcmp(x.format, "f") != 0
        || x.strides[3] != 4 || kh < 1 || kw < 1 || stride < 1) {
        PyErr_SetString(PyExc_ValueError, "sparse_conv: x is float32 (B, H, W, C), unit "
                        "strides along C; kh, kw, stride >= 1");
        goto done;
    }
    Py_ssize_t B = x.shape[0], H = x.shape[1], W = x.shape[2], C = x.shape[3];
    Py_ssize_t taps = kh * kw * C;
    Py_ssize_t Ho = H >= kh ? (H - kh) / stride + 1 : 0, Wo = W >= kw ? (W - kw) / stride + 1 : 0;
    Py_ssize_t C_out = taps > 0 ? w.len / 4 / taps : 0;
    if (taps < 1 || C_out < 1 || w.len != taps * C_out * 4 || out.len != B * Ho * Wo * C_out * 4) {
        PyErr_SetString(PyExc_ValueError, "sparse_conv: weight or out does not match x");
        goto done;
    }
    /* the nonzero values of each input pixel, pixel by pixel (counted, then listed) */
    Py_ssize_t pixels = B * H * W;
    at = malloc(((size_t)pixels + 1) * sizeof(int64_t));
    if (!at) {
        PyErr_NoMemory();
        goto done;
    }
    int64_t nnz = 0;
    at[0] = 0;
    for (Py_ssize_t p = 0; p < pixels; p++) {
        const float *px = pixel_of(&x, p);
        for (Py_ssize_t c = 0; c < C; c++)
            nnz += px[c] != 0.0f;
        at[p + 1] = nnz;
    }
    chan = malloc((size_t)(nnz > 0 ? nnz : 1) * sizeof(int32_t));
    val = malloc((size_t)(nnz > 0 ? nnz : 1) * sizeof(float));
    if (!chan || !val) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t p = 0; p < pixels; p++) {
        const float *px = pixel_of(&x, p);
        int64_t e = at[p];
        for (Py_ssize_t c = 0; c < C; c++)
            if (px[c] != 0.0f) {
                chan[e] = (int32_t)c;
                val[e++] = px[c];
            }
    }
    Py_ssize_t rows = B * Ho * Wo;
    int nt = team_size(workers, rows * C_out);
    const float *wp = w.buf;
    float *op = out.buf;
    Py_BEGIN_ALLOW_THREADS
    #pragma omp parallel num_threads(nt) if (nt > 1)
    {
        Py_ssize_t first, stop;
        share(rows, THREAD_NUM(), nt, &first, &stop);
        sparse_rows(first, stop, Ho, Wo, H, W, C, kh, kw, stride, C_out, at, chan, val, wp, op);
    }
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    free(at);
    free(chan);
    free(val);
    release(&x);
    release(&w);
    release(&out);
    return result;
}

/* ---- an int16 product, exact in int32 ------------------------------------------------ */

/* out (rows, n) int32 = a (rows, k) int16 times a weight (k, n) int16 packed by
 * `_pack_int16`'s layout: per block of 16 columns, per pair of taps, the 16 columns' two taps
 * side by side (the operand of vpmaddwd, which multiplies int16 pairs and adds each
 * pair's two products into an int32). Every sum is exact where the caller keeps each
 * column's sum of |products| within 2^31 (tica.nn.integer's `_int16_exact`); in any order
 * then. On AVX2: tiles of 4 rows by 16 columns in eight registers (six rows spilled them
 * to memory), each tap pair one broadcast of a row's two taps and two multiply-adds: twice
 * the float32 products' multiply-adds per instruction. Without AVX2: the same sums in a
 * scalar loop. With `columns` the product is written transposed, a tile's columns as
 * runs of its rows (for an end that reads by columns). */
#define I16_ROWS 4
#define I16_COLS 16
#define U8_TAPS 4                /* the uint8 product's taps a group (below) */

#if defined(__x86_64__) && defined(__GNUC__)
/* A tile row's 16 sums (lo, hi) into o, its first nr of them. */
__attribute__((target("avx2"))) static inline void i16_store(int32_t *o, __m256i lo, __m256i hi,
                                                             Py_ssize_t nr) {
    if (nr == I16_COLS) {
        _mm256_storeu_si256((__m256i *)o, lo);
        _mm256_storeu_si256((__m256i *)(o + 8), hi);
        return;
    }
    int32_t full[I16_COLS];
    _mm256_storeu_si256((__m256i *)full, lo);
    _mm256_storeu_si256((__m256i *)(full + 8), hi);
    memcpy(o, full, (size_t)nr * sizeof(int32_t));
}

/* A tile's four rows of eight sums (columns j .. j + 8) into the transposed out (n, rows):
 * each column's four sums side by side at out[(j + c) rows + i], the first mr of them. */
__attribute__((target("avx2"))) static inline void i16_store_columns(
        int32_t *out, Py_ssize_t rows, Py_ssize_t i, Py_ssize_t j, Py_ssize_t nr,
        Py_ssize_t mr, __m256i r0, __m256i r1, __m256i r2, __m256i r3) {
    __m256i t0 = _mm256_unpacklo_epi32(r0, r1), t1 = _mm256_unpackhi_epi32(r0, r1);
    __m256i t2 = _mm256_unpacklo_epi32(r2, r3), t3 = _mm256_unpackhi_epi32(r2, r3);
    __m256i u[4] = {_mm256_unpacklo_epi64(t0, t2), _mm256_unpackhi_epi64(t0, t2),
                    _mm256_unpacklo_epi64(t1, t3), _mm256_unpackhi_epi64(t1, t3)};
    for (int c = 0; c < 8 && c < nr; c++) {  /* u[c % 4]: columns c (low half), c + 4 */
        __m128i four = c < 4 ? _mm256_castsi256_si128(u[c]) : _mm256_extracti128_si256(u[c - 4], 1);
        int32_t *o = out + (j + c) * rows + i;
        if (mr == 4) {
            _mm_storeu_si128((__m128i *)o, four);
        } else {
            int32_t v[4];
            _mm_storeu_si128((__m128i *)v, four);
            memcpy(o, v, (size_t)mr * sizeof(int32_t));
        }
    }
}

/* A tile's sums (four rows of 16 columns: lo, hi halves) into out at row i, column j: the
 * first mr rows and the columns up to n, row-major or with `columns` transposed. */
__attribute__((target("avx2"))) static inline void tile_out(
        int32_t *out, Py_ssize_t rows, Py_ssize_t n, Py_ssize_t i, Py_ssize_t j, Py_ssize_t mr,
        int columns, __m256i c00, __m256i c01, __m256i c10, __m256i c11, __m256i c20,
        __m256i c21, __m256i c30, __m256i c31) {
    Py_ssize_t nr = n - j < I16_COLS ? n - j : I16_COLS;
    if (columns) {
        i16_store_columns(out, rows, i, j, nr, mr, c00, c10, c20, c30);
        i16_store_columns(out, rows, i, j + 8, nr - 8, mr, c01, c11, c21, c31);
        return;
    }
    int32_t *o = out + i * n + j;
    i16_store(o, c00, c01, nr);
    if (mr > 1) i16_store(o + n, c10, c11, nr);
    if (mr > 2) i16_store(o + 2 * n, c20, c21, nr);
    if (mr > 3) i16_store(o + 3 * n, c30, c31, nr);
}

__attribute__((target("avx2"))) static void i16_tiles_avx2(
        const int16_t *a, const int16_t *packed, int32_t *out, Py_ssize_t rows, Py_ssize_t k,
        Py_ssize_t n, Py_ssize_t tile0, Py_ssize_t tile1, int columns) {
    Py_ssize_t pairs = k / 2, blocks = (n + I16_COLS - 1) / I16_COLS, stride = (k + 1) / 2 * 32;
    for (Py_ssize_t tile = tile0; tile < tile1; tile++) {
        Py_ssize_t i = tile * I16_ROWS, mr = rows - i < I16_ROWS ? rows - i : I16_ROWS;
        const int16_t *r[I16_ROWS];          /* rows past the last read the last: not kept */
        for (int q = 0; q < I16_ROWS; q++)
            r[q] = a + (i + (q < mr ? q : mr - 1)) * k;
        const int16_t *r0 = r[0], *r1 = r[1], *r2 = r[2], *r3 = r[3];
        for (Py_ssize_t jb = 0; jb < blocks; jb++) {
            const int16_t *b = packed + jb * stride;
            /* eight named accumulators: an array of them would live in memory */
            __m256i c00 = _mm256_setzero_si256(), c01 = c00, c10 = c00, c11 = c00, c20 = c00,
                    c21 = c00, c30 = c00, c31 = c00;
            __m256i b0, b1, x;
            int32_t two;
#define I16_ROW(row, lo, hi, tap_pair)                                                      \
            x = (tap_pair);                                                                 \
            lo = _mm256_add_epi32(lo, _mm256_madd_epi16(x, b0));                            \
            hi = _mm256_add_epi32(hi, _mm256_madd_epi16(x, b1));
#define I16_PAIR(row, t) (memcpy(&two, (row) + 2 * (t), sizeof(two)), _mm256_set1_epi32(two))
#define I16_LAST(row) _mm256_set1_epi32((int32_t)(uint16_t)(row)[k - 1])
            for (Py_ssize_t t = 0; t < pairs; t++) {
                b0 = _mm256_loadu_si256((const __m256i *)(b + t * 32));
                b1 = _mm256_loadu_si256((const __m256i *)(b + t * 32 + 16));
                I16_ROW(r0, c00, c01, I16_PAIR(r0, t))
                I16_ROW(r1, c10, c11, I16_PAIR(r1, t))
                I16_ROW(r2, c20, c21, I16_PAIR(r2, t))
                I16_ROW(r3, c30, c31, I16_PAIR(r3, t))
            }
            if (k % 2) {                     /* the last tap alone: its pair's other is 0 */
                b0 = _mm256_loadu_si256((const __m256i *)(b + pairs * 32));
                b1 = _mm256_loadu_si256((const __m256i *)(b + pairs * 32 + 16));
                I16_ROW(r0, c00, c01, I16_LAST(r0))
                I16_ROW(r1, c10, c11, I16_LAST(r1))
                I16_ROW(r2, c20, c21, I16_LAST(r2))
                I16_ROW(r3, c30, c31, I16_LAST(r3))
            }
#undef I16_ROW
#undef I16_PAIR
#undef I16_LAST
            tile_out(out, rows, n, i, jb * I16_COLS, mr, columns, c00, c01, c10, c11, c20, c21,
                     c30, c31);
        }
    }
}
#endif

/* The tiles' sums without AVX2, in a scalar loop: a (rows, k) int16 (`item` 2: its weight
 * packed in pairs of taps, int16) or uint8 (`item` 1: in quads, int8). */
static void tiles_scalar(const void *a, const void *packed, int32_t *out, Py_ssize_t rows,
                         Py_ssize_t k, Py_ssize_t n, Py_ssize_t tile0, Py_ssize_t tile1,
                         int columns, int item) {
    Py_ssize_t group = item == 2 ? 2 : U8_TAPS, stride = (k + group - 1) / group * 64 / item;
    Py_ssize_t last = tile1 * I16_ROWS < rows ? tile1 * I16_ROWS : rows;
    for (Py_ssize_t i = tile0 * I16_ROWS; i < last; i++)
        for (Py_ssize_t j = 0; j < n; j++) {
            Py_ssize_t at = (j / I16_COLS) * stride + (j % I16_COLS) * group;
            int32_t sum = 0;
            for (Py_ssize_t t = 0; t < k; t++) {
                Py_ssize_t w = at + (t / group) * I16_COLS * group + t % group;
                sum += item == 2 ? (int32_t)((const int16_t *)a)[i * k + t]
                                       * ((const int16_t *)packed)[w]
                                 : (int32_t)((const uint8_t *)a)[i * k + t]
                                       * ((const int8_t *)packed)[w];
            }
            out[columns ? j * rows + i : i * n + j] = sum;
        }
}

static void i16_tiles(const int16_t *a, const int16_t *packed, int32_t *out, Py_ssize_t rows,
                      Py_ssize_t k, Py_ssize_t n, Py_ssize_t tile0, Py_ssize_t tile1,
                      int columns) {
#if defined(__x86_64__) && defined(__GNUC__)
    if (has_avx2()) {
        i16_tiles_avx2(a, packed, out, rows, k, n, tile0, tile1, columns);
        return;
    }
#endif
    tiles_scalar(a, packed, out, rows, k, n, tile0, tile1, columns, 2);
}

/* ---- an unsigned 8-bit product, exact in int32 ------------------------------------- */

/* out (rows, n) int32 = a (rows, k) uint8 times a weight (k, n) int8 packed by `_pack_u8`'s
 * layout: per block of 16 columns, per quad of taps, the 16 columns' four taps side by side
 * (the operand of vpmaddubsw, which multiplies unsigned by signed bytes and adds each pair
 * of adjacent products into an int16 with saturation; vpmaddwd by ones then adds the two
 * pairs of a quad into an int32). Exact where the caller keeps every pair's sum within
 * int16 and each column's sum of |products| within 2^31: an input below 128 and weights in
 * [-128, 127] keep a pair within 2 x 127 x 128 = 32,512 (tica.nn.integer's
 * `_u8_exact`). Four taps a broadcast and two multiplies a 32-byte load: about 1.5 times
 * the int16 product's multiply-adds per cycle. The same tiles, stores and scalar loop
 * without AVX2 as the int16 product. The taps come in whole quads (k a multiple of 4:
 * the caller pads rows and weight with zero taps): a loop for a last partial quad cost
 * the quads' loop a register, and with it a third of its speed. */

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx2"))) static void u8_tiles_avx2(
        const uint8_t *a, const int8_t *packed, int32_t *out, Py_ssize_t rows, Py_ssize_t k,
        Py_ssize_t n, Py_ssize_t tile0, Py_ssize_t tile1, int columns) {
    Py_ssize_t quads = k / U8_TAPS, blocks = (n + I16_COLS - 1) / I16_COLS, stride = quads * 64;
    const __m256i ones = _mm256_set1_epi16(1);
    for (Py_ssize_t tile = tile0; tile < tile1; tile++) {
        Py_ssize_t i = tile * I16_ROWS, mr = rows - i < I16_ROWS ? rows - i : I16_ROWS;
        const uint8_t *r[I16_ROWS];          /* rows past the last read the last: not kept */
        for (int q = 0; q < I16_ROWS; q++)
            r[q] = a + (i + (q < mr ? q : mr - 1)) * k;
        const uint8_t *r0 = r[0], *r1 = r[1], *r2 = r[2], *r3 = r[3];
        for (Py_ssize_t jb = 0; jb < blocks; jb++) {
            const int8_t *b = packed + jb * stride;
            __m256i c00 = _mm256_setzero_si256(), c01 = c00, c10 = c00, c11 = c00, c20 = c00,
                    c21 = c00, c30 = c00, c31 = c00;
            __m256i b0, b1, x;
            int32_t four;
#define U8_ROW(lo, hi, taps)                                                                \
            x = (taps);                                                                     \
            lo = _mm256_add_epi32(lo, _mm256_madd_epi16(_mm256_maddubs_epi16(x, b0), ones));\
            hi = _mm256_add_epi32(hi, _mm256_madd_epi16(_mm256_maddubs_epi16(x, b1), ones));
#define U8_QUAD(row, t) (memcpy(&four, (row) + U8_TAPS * (t), sizeof(four)),               \
                         _mm256_set1_epi32(four))
            for (Py_ssize_t t = 0; t < quads; t++) {
                b0 = _mm256_loadu_si256((const __m256i *)(b + t * 64));
                b1 = _mm256_loadu_si256((const __m256i *)(b + t * 64 + 32));
                U8_ROW(c00, c01, U8_QUAD(r0, t))
                U8_ROW(c10, c11, U8_QUAD(r1, t))
                U8_ROW(c20, c21, U8_QUAD(r2, t))
                U8_ROW(c30, c31, U8_QUAD(r3, t))
            }
#undef U8_ROW
#undef U8_QUAD
            tile_out(out, rows, n, i, jb * I16_COLS, mr, columns, c00, c01, c10, c11, c20, c21,
                     c30, c31);
        }
    }
}
#endif

/* The uint8 product written transposed (columns), as the tables' end reads it: tiles of 8
 * rows by 8 columns (half a packed block of 16), one accumulator a row, then an 8x8
 * transpose, so that each column's eight sums go out in one 32-byte store (the tiles above
 * store a column's four sums 16 bytes at a time, 16 scattered stores a tile: a third of
 * the product's time). A row's step is one asm block (broadcast, multiply, widen, add)
 * using one register of its own: written in C, GCC hoisted the eight rows' broadcasts,
 * ran out of registers and kept an accumulator on the stack, whose load and store every
 * step then chained the loop through memory. */
#define U8_COL_ROWS 8

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx2"))) static void u8_columns_avx2(
        const uint8_t *a, const int8_t *packed, int32_t *out, Py_ssize_t rows, Py_ssize_t k,
        Py_ssize_t n, Py_ssize_t tile0, Py_ssize_t tile1) {
    Py_ssize_t quads = k / U8_TAPS, halves = (n + 7) / 8, stride = quads * 64;
    const __m256i ones = _mm256_set1_epi16(1);
    for (Py_ssize_t tile = tile0; tile < tile1; tile++) {
        Py_ssize_t i = tile * U8_COL_ROWS;
        Py_ssize_t mr = rows - i < U8_COL_ROWS ? rows - i : U8_COL_ROWS;
        const uint8_t *r[U8_COL_ROWS];      /* rows past the last read the last: not kept */
        for (int q = 0; q < U8_COL_ROWS; q++)
            r[q] = a + (i + (q < mr ? q : mr - 1)) * k;
        for (Py_ssize_t h = 0; h < halves; h++) {
            const int8_t *b = packed + (h / 2) * stride + (h % 2) * 32;
            __m256i c0 = _mm256_setzero_si256(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0,
                    c6 = c0, c7 = c0, w, x;
#define U8_COL(SUM, ROW)                                                                    \
            __asm__("vpbroadcastd %[four], %[x]\n\t"                                        \
                    "vpmaddubsw %[w], %[x], %[x]\n\t"                                        \
                    "vpmaddwd %[ones], %[x], %[x]\n\t"                                       \
                    "vpaddd %[x], %[sum], %[sum]"                                            \
                    : [sum] "+x"(SUM), [x] "=&x"(x)                                          \
                    : [four] "m"(*(const int32_t *)((ROW) + U8_TAPS * t)), [w] "x"(w),      \
                      [ones] "x"(ones));
            for (Py_ssize_t t = 0; t < quads; t++) {
                w = _mm256_loadu_si256((const __m256i *)(b + t * 64));
                U8_COL(c0, r[0]) U8_COL(c1, r[1]) U8_COL(c2, r[2]) U8_COL(c3, r[3])
                U8_COL(c4, r[4]) U8_COL(c5, r[5]) U8_COL(c6, r[6]) U8_COL(c7, r[7])
            }
#undef U8_COL
            /* rows c0..c7 (8 columns each) -> columns (8 rows each) */
            __m256i t0 = _mm256_unpacklo_epi32(c0, c1), t1 = _mm256_unpackhi_epi32(c0, c1);
            __m256i t2 = _mm256_unpacklo_epi32(c2, c3), t3 = _mm256_unpackhi_epi32(c2, c3);
            __m256i t4 = _mm256_unpacklo_epi32(c4, c5), t5 = _mm256_unpackhi_epi32(c4, c5);
            __m256i t6 = _mm256_unpacklo_epi32(c6, c7), t7 = _mm256_unpackhi_epi32(c6, c7);
            __m256i u0 = _mm256_unpacklo_epi64(t0, t2), u1 = _mm256_unpackhi_epi64(t0, t2);
            __m256i u2 = _mm256_unpacklo_epi64(t1, t3), u3 = _mm256_unpackhi_epi64(t1, t3);
            __m256i u4 = _mm256_unpacklo_epi64(t4, t6), u5 = _mm256_unpackhi_epi64(t4, t6);
            __m256i u6 = _mm256_unpacklo_epi64(t5, t7), u7 = _mm256_unpackhi_epi64(t5, t7);
            __m256i col[8] = {_mm256_permute2x128_si256(u0, u4, 0x20),
                              _mm256_permute2x128_si256(u1, u5, 0x20),
                              _mm256_permute2x128_si256(u2, u6, 0x20),
                              _mm256_permute2x128_si256(u3, u7, 0x20),
                              _mm256_permute2x128_si256(u0, u4, 0x31),
                              _mm256_permute2x128_si256(u1, u5, 0x31),
                              _mm256_permute2x128_si256(u2, u6, 0x31),
                              _mm256_permute2x128_si256(u3, u7, 0x31)};
            Py_ssize_t j = h * 8, nr = n - j < 8 ? n - j : 8;
            for (Py_ssize_t c = 0; c < nr; c++) {
                int32_t *o = out + (j + c) * rows + i;
                if (mr == U8_COL_ROWS) {
                    _mm256_storeu_si256((__m256i *)o, col[c]);
                } else {
                    int32_t v[U8_COL_ROWS];
                    _mm256_storeu_si256((__m256i *)v, col[c]);
                    memcpy(o, v, (size_t)mr * sizeof(int32_t));
                }
            }
        }
    }
}
#endif

static void u8_tiles(const uint8_t *a, const int8_t *packed, int32_t *out, Py_ssize_t rows,
                     Py_ssize_t k, Py_ssize_t n, Py_ssize_t tile0, Py_ssize_t tile1,
                     int columns) {
#if defined(__x86_64__) && defined(__GNUC__)
    if (has_avx2()) {
        u8_tiles_avx2(a, packed, out, rows, k, n, tile0, tile1, columns);
        return;
    }
#endif
    tiles_scalar(a, packed, out, rows, k, n, tile0, tile1, columns, 1);
}

/* gemm_i16(a, packed, k, n, out[, workers[, columns]])
 *   a:      int16 buffer of rows * k values (rows by taps, row-major)
 *   packed: int16 buffer of ceil(n / 16) * ceil(k / 2) * 32 values (`_pack_int16`'s layout)
 *   out:    writable int32 buffer of rows * n values: (rows, n), or with columns the
 *           product transposed, (n, rows)
 * gemm_u8(a, packed, k, n, out[, workers[, columns]]): the same with a uint8 (rows * k
 *   bytes), k a multiple of 4, and packed int8, ceil(n / 16) * k / 4 * 64 bytes
 *   (`_pack_u8`'s layout). */
static PyObject *gemm_entry(PyObject *args, const char *name, Py_ssize_t group,
                            Py_ssize_t item) {
    PyObject *a_obj, *packed_obj, *out_obj;
    Py_ssize_t k, n, workers = 1;
    int columns = 0;
    if (!PyArg_ParseTuple(args, "OOnnO|np", &a_obj, &packed_obj, &k, &n, &out_obj, &workers,
                          &columns))
        return NULL;
    if (k < 1 || n < 1 || k % (item == 1 ? group : 1)) {
        PyErr_Format(PyExc_ValueError, "%s: k >= 1%s and n >= 1", name,
                     item == 1 ? ", a multiple of 4," : "");
        return NULL;
    }
    Py_buffer a = {0}, packed = {0}, out = {0};
    PyObject *result = NULL;
    Py_ssize_t blocks = (n + I16_COLS - 1) / I16_COLS, groups = (k + group - 1) / group;
    if (get_sized(out_obj, &out, 1, -1, "out")
        || get_sized(packed_obj, &packed, 0, blocks * groups * 64, "packed weight"))
        goto done;
    Py_ssize_t rows = out.len / 4 / n;
    if (out.len % (4 * n) || get_sized(a_obj, &a, 0, rows * k * item, "a")) {
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_ValueError, "%s: out's size is no multiple of n", name);
        goto done;
    }
    int by_columns = 0;              /* the uint8 product by columns: tiles of its own */
#if defined(__x86_64__) && defined(__GNUC__)
    by_columns = item == 1 && columns && has_avx2();
#endif
    Py_ssize_t tile_rows = by_columns ? U8_COL_ROWS : I16_ROWS;
    Py_ssize_t tiles = (rows + tile_rows - 1) / tile_rows;
    int nt = team_size(workers, rows * n);
    const void *ap = a.buf, *bp = packed.buf;
    int32_t *op = out.buf;
    Py_BEGIN_ALLOW_THREADS
    #pragma omp parallel num_threads(nt) if (nt > 1)
    {
        Py_ssize_t first, stop;
        share(tiles, THREAD_NUM(), nt, &first, &stop);
#if defined(__x86_64__) && defined(__GNUC__)
        if (by_columns)
            u8_columns_avx2(ap, bp, op, rows, k, n, first, stop);
        else
#endif
        if (item == 1)
            u8_tiles(ap, bp, op, rows, k, n, first, stop, columns);
        else
            i16_tiles(ap, bp, op, rows, k, n, first, stop, columns);
    }
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    release(&a);
    release(&packed);
    release(&out);
    return result;
}

static PyObject *gemm_i16(PyObject *self, PyObject *args) {
    return gemm_entry(args, "gemm_i16", 2, 2);
}

static PyObject *gemm_u8(PyObject *self, PyObject *args) {
    return gemm_entry(args, "gemm_u8", U8_TAPS, 1);
}

/* ---- which channels of a layer's input hold anything, and how many values ------------- */

/* Rows [first, stop) of x (rows, cols) 32-bit values: each column's values or'd into any,
 * and the count of nonzero ones (by their bits: a float -0.0 counts). */
static WIDE_VECTORS long long census_rows(const uint32_t *x, Py_ssize_t first, Py_ssize_t stop,
                                          Py_ssize_t cols, uint64_t *any) {
    long long count = 0;
    for (Py_ssize_t r = first; r < stop; r++) {
        const uint32_t *row = x + r * cols;
        uint32_t nonzero = 0;
        for (Py_ssize_t c = 0; c < cols; c++) {
            any[c] |= row[c];
            nonzero += row[c] != 0;
        }
        count += nonzero;
    }
    return count;
}

/* Images [first, stop) of x (images, cols, plane) 64-bit values, channels first: each
 * channel's values or'd into any, and the count of nonzero ones. */
static WIDE_VECTORS long long census_planes(const uint64_t *x, Py_ssize_t first,
                                            Py_ssize_t stop, Py_ssize_t cols,
                                            Py_ssize_t plane, uint64_t *any) {
    long long count = 0;
    for (Py_ssize_t b = first; b < stop; b++)
        for (Py_ssize_t c = 0; c < cols; c++) {
            const uint64_t *run = x + (b * cols + c) * plane;
            uint64_t bits = 0;
            long long nonzero = 0;
            for (Py_ssize_t j = 0; j < plane; j++) {
                bits |= run[j];
                nonzero += run[j] != 0;
            }
            any[c] |= bits;
            count += nonzero;
        }
    return count;
}

/* census(x, cols, live[, workers[, plane]]) -> the number of nonzero values of x
 *   x:    buffer of 32-bit values (int32, or float32 by their bits), rows * cols of them,
 *         channels last (a column is a channel); or with plane > 0, 64-bit values (float64
 *         by their bits) channels first, (images, cols, plane)
 *   live: writable buffer of cols bytes: 1 where the column holds a nonzero value, else 0 */
static PyObject *census(PyObject *self, PyObject *args) {
    PyObject *x_obj, *live_obj;
    Py_ssize_t cols, workers = 1, plane = 0;
    if (!PyArg_ParseTuple(args, "OnO|nn", &x_obj, &cols, &live_obj, &workers, &plane))
        return NULL;
    if (cols < 1 || plane < 0) {
        PyErr_SetString(PyExc_ValueError, "census: cols >= 1, plane >= 0");
        return NULL;
    }
    Py_buffer x = {0}, live = {0};
    PyObject *result = NULL;
    if (get_sized(x_obj, &x, 0, -1, "x") || get_sized(live_obj, &live, 1, cols, "live"))
        goto done;
    Py_ssize_t item = plane ? 8 : 4, row = plane ? cols * plane : cols;   /* a row: an image */
    if (x.len % (item * row)) {
        PyErr_SetString(PyExc_ValueError, "census: x is no whole number of rows");
        goto done;
    }
    Py_ssize_t rows = x.len / item / row;
    int nt = team_size(workers, rows * row);
    uint64_t *any = calloc((size_t)nt * (size_t)cols, sizeof(uint64_t));
    if (!any) {
        PyErr_NoMemory();
        goto done;
    }
    long long count = 0;
    const void *v = x.buf;
    Py_BEGIN_ALLOW_THREADS
    #pragma omp parallel num_threads(nt) if (nt > 1) reduction(+ : count)
    {
        int t = THREAD_NUM();
        Py_ssize_t first, stop;
        share(rows, t, nt, &first, &stop);
        if (plane)
            count += census_planes(v, first, stop, cols, plane, any + t * cols);
        else
            count += census_rows(v, first, stop, cols, any + t * cols);
    }
    Py_END_ALLOW_THREADS
    uint8_t *flags = live.buf;
    for (Py_ssize_t c = 0; c < cols; c++) {
        uint64_t bits = 0;
        for (int t = 0; t < nt; t++)
            bits |= any[t * cols + c];
        flags[c] = bits != 0;
    }
    free(any);
    result = PyLong_FromLongLong(count);
done:
    release(&x);
    release(&live);
    return result;
}

/* ---- a transposed layer's taps, folded onto its output ------------------------------ */

/* fold(cols, images, h, w, k, stride, padding, ho, wo, c, out[, workers])
 *   cols: int32 buffer (images h w, k k c): each input pixel's product with every tap of a
 *         transposed layer's weight (tap (i, j) at columns (i k + j) c ..)
 *   out:  writable int32 buffer (images, ho, wo, c), zeros: each input pixel (u, v) adds its
 *         tap (i, j) to output (u stride - padding + i, v stride - padding + j) where that
 *         lies inside; the sums are exact where the caller bounds them (a column's sum of
 *         |products| over all taps below 2^31: tica.nn.integer's `_int16_exact`). */
static WIDE_VECTORS void fold_images(const int32_t *cols, int32_t *out, Py_ssize_t first,
                                     Py_ssize_t stop, Py_ssize_t h, Py_ssize_t w,
                                     Py_ssize_t k, Py_ssize_t stride, Py_ssize_t padding,
                                     Py_ssize_t ho, Py_ssize_t wo, Py_ssize_t c) {
    for (Py_ssize_t b = first; b < stop; b++)
        for (Py_ssize_t u = 0; u < h; u++)
            for (Py_ssize_t v = 0; v < w; v++) {
                const int32_t *row = cols + ((b * h + u) * w + v) * k * k * c;
                for (Py_ssize_t i = 0; i < k; i++) {
                    Py_ssize_t oh = u * stride - padding + i;
                    if (oh < 0 || oh >= ho)
                        continue;
                    for (Py_ssize_t j = 0; j < k; j++) {
                        Py_ssize_t ow = v * stride - padding + j;
                        if (ow < 0 || ow >= wo)
                            continue;
                        const int32_t *tap = row + (i * k + j) * c;
                        int32_t *o = out + ((b * ho + oh) * wo + ow) * c;
                        for (Py_ssize_t q = 0; q < c; q++)
                            o[q] += tap[q];
                    }
                }
            }
}

static PyObject *fold(PyObject *self, PyObject *args) {
    PyObject *cols_obj, *out_obj;
    Py_ssize_t images, h, w, k, stride, padding, ho, wo, c, workers = 1;
    if (!PyArg_ParseTuple(args, "OnnnnnnnnnO|n", &cols_obj, &images, &h, &w, &k, &stride,
                          &padding, &ho, &wo, &c, &out_obj, &workers))
        return NULL;
    if (images < 0 || h < 1 || w < 1 || k < 1 || stride < 1 || padding < 0 || ho < 1
        || wo < 1 || c < 1) {
        PyErr_SetString(PyExc_ValueError, "fold: sizes out of range");
        return NULL;
    }
    Py_buffer cols = {0}, out = {0};
    PyObject *result = NULL;
    if (get_sized(cols_obj, &cols, 0, images * h * w * k * k * c * 4, "cols")
        || get_sized(out_obj, &out, 1, images * ho * wo * c * 4, "out"))
        goto done;
    int nt = team_size(workers, images * ho * wo * c);
    const int32_t *cp = cols.buf;
    int32_t *op = out.buf;
    Py_BEGIN_ALLOW_THREADS
    #pragma omp parallel num_threads(nt) if (nt > 1)
    {
        Py_ssize_t first, stop;
        share(images, THREAD_NUM(), nt, &first, &stop);
        fold_images(cp, op, first, stop, h, w, k, stride, padding, ho, wo, c);
    }
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    release(&cols);
    release(&out);
    return result;
}

static PyMethodDef methods[] = {
    {"hidden_layer", hidden_layer, METH_VARARGS,
     "hidden_layer(parts, shifts, bias, rshift, act_max, cols, out[, workers]): a hidden "
     "layer's end"},
    {"last_layer", last_layer, METH_VARARGS,
     "last_layer(parts, shifts, bias, scale, gain, bounds, half, cols, out[, workers[, "
     "plane[, columns]]]): table indexes and means"},
    {"census", census, METH_VARARGS,
     "census(x, cols, live[, workers]): the channels holding a nonzero value, and how many "
     "values do"},
    {"fold", fold, METH_VARARGS,
     "fold(cols, images, h, w, k, stride, padding, ho, wo, c, out[, workers]): a transposed "
     "layer's taps added onto its output"},
    {"gemm_i16", gemm_i16, METH_VARARGS,
     "gemm_i16(a, packed, k, n, out[, workers[, columns]]): an int16 product, exact in "
     "int32"},
    {"gemm_u8", gemm_u8, METH_VARARGS,
     "gemm_u8(a, packed, k, n, out[, workers[, columns]]): a uint8 by int8 product, exact "
     "in int32 within its bounds"},
    {"sparse_conv", sparse_conv, METH_VARARGS,
     "sparse_conv(x, weight, kh, kw, stride, out[, workers]): a convolution by the input's "
     "nonzero values"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_intops",
                                    "The integer h_s's layer ends and sparse convolution.",
                                    -1, methods};

PyMODINIT_FUNC PyInit__intops(void) { return PyModule_Create(&module); }
