/* The end of one hidden layer of the exact integer h_s (tica/nn/integer.py), in one pass.
 *
 * A layer's accumulator arrives as int32 partial sums of int8 digit products, one array
 * per weight 2^(7 s) of the digits that made it. This recombines them, adds the bias,
 * applies ReLU, shifts to the activations' fixed point (a floor) and clamps, all in int64,
 * and writes the int32 activations the next layer splits into digits: the integers that
 * `requantize` computes in float64, without its passes over memory. Every value is an
 * integer below 2^53 (IntegerHyperSynthesis.build checks the worst case), so int64 holds
 * the accumulator exactly. The GIL is released while it runs. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>

#define MAX_PARTS 8

/* hidden_layer(parts, shifts, bias, rshift, act_max, cols, out) -> the largest activation
 *   parts:  sequence of int32 buffers of rows * cols values, row-major
 *   shifts: sequence of ints, part k weighs 2^(7 shifts[k]) (0 <= shifts[k] <= 4)
 *   bias:   float64 buffer of cols integers
 *   rshift: int64 buffer of cols shifts: the activation is floor(relu(acc) / 2^rshift)
 *           (a negative one multiplies by 2^-rshift)
 *   out:    writable int32 buffer of rows * cols values */
static PyObject *hidden_layer(PyObject *self, PyObject *args) {
    PyObject *parts_obj, *shifts_obj, *bias_obj, *rshift_obj, *out_obj;
    long long act_max;
    Py_ssize_t cols;
    if (!PyArg_ParseTuple(args, "OOOOLnO", &parts_obj, &shifts_obj, &bias_obj, &rshift_obj,
                          &act_max, &cols, &out_obj))
        return NULL;
    PyObject *parts = PySequence_Fast(parts_obj, "parts must be a sequence");
    PyObject *shifts = parts ? PySequence_Fast(shifts_obj, "shifts must be a sequence") : NULL;
    if (!parts || !shifts) {
        Py_XDECREF(parts);
        return NULL;
    }
    Py_ssize_t count = PySequence_Fast_GET_SIZE(parts), got = 0;
    Py_buffer bufs[MAX_PARTS], bias = {0}, rshift = {0}, out = {0};
    int shift_of[MAX_PARTS];
    PyObject *result = NULL;
    if (count < 1 || count > MAX_PARTS || PySequence_Fast_GET_SIZE(shifts) != count || cols < 1
        || act_max < 0 || act_max > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "hidden_layer: 1..8 parts, one shift each, cols >= 1, "
                                          "0 <= act_max < 2^31");
        goto done;
    }
    if (PyObject_GetBuffer(bias_obj, &bias, PyBUF_SIMPLE)
        || PyObject_GetBuffer(rshift_obj, &rshift, PyBUF_SIMPLE)
        || PyObject_GetBuffer(out_obj, &out, PyBUF_WRITABLE))
        goto done;
    Py_ssize_t n = out.len / (Py_ssize_t)sizeof(int32_t);
    if (bias.len != cols * (Py_ssize_t)sizeof(double)
        || rshift.len != cols * (Py_ssize_t)sizeof(int64_t) || n % cols) {
        PyErr_SetString(PyExc_ValueError, "hidden_layer: buffer sizes do not match cols");
        goto done;
    }
    for (; got < count; got++) {
        long s = PyLong_AsLong(PySequence_Fast_GET_ITEM(shifts, got));
        if (s < 0 || s > 4) {      /* 2^31 parts times 2^28: eight sum below 2^63 */
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "hidden_layer: shifts lie in 0..4");
            goto done;
        }
        shift_of[got] = 7 * (int)s;
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(parts, got), &bufs[got], PyBUF_SIMPLE))
            goto done;
        if (bufs[got].len != out.len) {
            got++;
            PyErr_SetString(PyExc_ValueError, "hidden_layer: every part has out's size");
            goto done;
        }
    }
    const double *b = bias.buf;
    const int64_t *r = rshift.buf;
    int32_t *o = out.buf;
    const int32_t *part[MAX_PARTS];
    for (Py_ssize_t k = 0; k < count; k++)
        part[k] = bufs[k].buf;
    int64_t top = 0;
    int64_t *add = malloc((size_t)cols * sizeof(int64_t));   /* bias, as an integer */
    if (!add) {
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    {
        for (Py_ssize_t c = 0; c < cols; c++)
            add[c] = (int64_t)b[c];
        for (Py_ssize_t i0 = 0; i0 < n; i0 += cols) {
            for (Py_ssize_t c = 0; c < cols; c++) {
                Py_ssize_t i = i0 + c;
                int64_t acc = add[c];
                for (Py_ssize_t k = 0; k < count; k++)
                    acc += (int64_t)part[k][i] * ((int64_t)1 << shift_of[k]);
                acc = acc > 0 ? acc : 0;                         /* ReLU */
                int64_t v;
                if (r[c] >= 0)
                    v = r[c] >= 63 ? 0 : acc >> r[c];            /* floor: acc >= 0 */
                else if (acc == 0)
                    v = 0;
                else            /* acc >= 1 times 2^32 or more passes any int32 act_max */
                    v = (acc > act_max || -r[c] >= 32) ? act_max : acc << -r[c];
                v = v < act_max ? v : act_max;
                o[i] = (int32_t)v;
                top = v > top ? v : top;
            }
        }
    }
    Py_END_ALLOW_THREADS
    free(add);
    result = PyLong_FromLongLong(top);
done:
    for (Py_ssize_t k = 0; k < got; k++)
        PyBuffer_Release(&bufs[k]);
    if (bias.obj)
        PyBuffer_Release(&bias);
    if (rshift.obj)
        PyBuffer_Release(&rshift);
    if (out.obj)
        PyBuffer_Release(&out);
    Py_DECREF(parts);
    Py_DECREF(shifts);
    return result;
}

static PyMethodDef methods[] = {
    {"hidden_layer", hidden_layer, METH_VARARGS,
     "hidden_layer(parts, shifts, bias, rshift, act_max, cols, out) -> the largest value"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_intops",
                                    "The integer h_s's hidden-layer epilogue.", -1, methods};

PyMODINIT_FUNC PyInit__intops(void) { return PyModule_Create(&module); }
