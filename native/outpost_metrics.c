/* shm.metrics.Counter, Gauge, Heartbeat and Histogram as CPython types, compiled
 * into the same cffi extension.
 *
 * Why types and not cffi functions: `c.inc()`, `g.set(v)`, `hb.beat()` and
 * `h.observe(v)` are the lines agents write in their hottest loops. On CPython
 * 3.11 a cffi function stored on an object runs the generic attribute lookup
 * and the generic call (~37 ns, 2.9x a bare loop); a METH_NOARGS / METH_O
 * method of an exact C type is specialised at both steps (LOAD_METHOD_NO_DICT,
 * PRECALL_NO_KW_METHOD_DESCRIPTOR_NOARGS / _O) and costs a few ns. The
 * specialisation checks the exact type, so the types are final: a Python
 * subclass would fall back to the slow path.
 *
 * Each object holds a buffer export of its slot (a memoryview the segment
 * hands out), so the mapping it points into cannot be unmapped under it.
 * Everything atomic is done by outpost_native.c; this file only adapts calls. */
#include <Python.h>

#include <stddef.h>
#include <string.h>
#include <structmember.h>

#include "outpost_native.h"

/* The layout every metric object starts with. */
typedef struct {
    PyObject_HEAD
    int64_t *word; /* the first word of the slot's data */
    PyObject *name;
    PyObject *view; /* what the segment returned for the slot */
    Py_buffer buffer; /* our export of view: keeps the mapping alive */
} SlotObject;

typedef struct {
    SlotObject slot;
    PyObject *bounds; /* list of float, as stored in the slot */
} HistogramObject;

/* Allocate `type` over `view` (a new reference, consumed), which must export at
 * least `min_len` writable, 8-byte aligned bytes; `what` names the segment
 * method for the error message. */
static SlotObject *slot_alloc(PyTypeObject *type, PyObject *view, PyObject *name,
                              Py_ssize_t min_len, const char *what) {
    allocfunc alloc = (allocfunc)PyType_GetSlot(type, Py_tp_alloc);
    SlotObject *self = (SlotObject *)alloc(type, 0);
    if (self == NULL) {
        Py_DECREF(view);
        return NULL;
    }
    self->view = view; /* dealloc releases what is set, so fill in as we go */
    if (PyObject_GetBuffer(view, &self->buffer, PyBUF_WRITABLE) < 0) {
        self->buffer.obj = NULL;
        Py_DECREF(self);
        return NULL;
    }
    if (self->buffer.len < min_len || (uintptr_t)self->buffer.buf % sizeof(int64_t) != 0) {
        PyErr_Format(PyExc_ValueError,
                     "%s() must return a writable, 8-byte aligned buffer of at least %zd "
                     "bytes (got %zd bytes)", what, min_len, self->buffer.len);
        Py_DECREF(self);
        return NULL;
    }
    self->word = (int64_t *)self->buffer.buf;
    Py_INCREF(name);
    self->name = name;
    return self;
}

/* tp_new of the one-word types: Type(segment, name) -> segment.<method>(name). */
static PyObject *word_new(PyTypeObject *type, PyObject *args, PyObject *kwds,
                          const char *format, const char *method) {
    static char *kwlist[] = {"segment", "name", NULL};
    PyObject *segment, *name;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, format, kwlist, &segment, &name))
        return NULL;
    PyObject *view = PyObject_CallMethod(segment, method, "O", name);
    if (view == NULL)
        return NULL;
    return (PyObject *)slot_alloc(type, view, name, sizeof(int64_t), method);
}

/* tp_new of the one-word type `kind`: Kind(segment, name) -> segment.kind_word(name). */
#define WORD_TYPE_NEW(kind, Kind)                                                       \
    static PyObject *kind##_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {   \
        return word_new(type, args, kwds, "OU:" Kind, #kind "_word");                   \
    }

static void slot_dealloc(PyObject *op) {
    SlotObject *self = (SlotObject *)op;
    PyTypeObject *type = Py_TYPE(op);
    if (self->buffer.obj != NULL)
        PyBuffer_Release(&self->buffer);
    Py_XDECREF(self->view);
    Py_XDECREF(self->name);
    freefunc free_ = (freefunc)PyType_GetSlot(type, Py_tp_free);
    free_(op);
    Py_DECREF(type); /* instances of heap types own a reference to their type */
}

/* name and word: what Counter, Gauge and Heartbeat (one word each) expose. */
static PyMemberDef word_members[] = {
    {"name", T_OBJECT_EX, offsetof(SlotObject, name), READONLY,
     "The slot name this metric lives in."},
    {"word", T_OBJECT_EX, offsetof(SlotObject, view), READONLY,
     "The metric's 8-byte word in the mapping (a writable memoryview), for bulk native "
     "paths such as CounterBatch."},
    {NULL, 0, 0, 0, NULL},
};

/* The type slots of a one-word metric type. */
#define WORD_TYPE_SLOTS(doc, new_, repr_, methods_)                                  \
    {                                                                                \
        {Py_tp_doc, (void *)doc}, {Py_tp_new, new_}, {Py_tp_dealloc, slot_dealloc},          \
            {Py_tp_repr, repr_}, {Py_tp_methods, methods_},                          \
            {Py_tp_members, word_members}, {0, NULL},                                \
    }

#define WORD(op) (((SlotObject *)(op))->word)
#define DWORD(op) ((double *)((SlotObject *)(op))->word)

/* A float argument exactly as cffi converted it before (int, float, __float__, __index__). */
#define AS_DOUBLE(var, arg)                                        \
    double var = PyFloat_AsDouble(arg);                            \
    if (var == -1.0 && PyErr_Occurred())                           \
        return NULL

/* A METH_O method from a float to a float: `fn(word, v)` on the slot's float64. */
#define FLOAT_OP(name, fn)                                                             \
    static PyObject *name(PyObject *op, PyObject *arg) {                               \
        AS_DOUBLE(v, arg);                                                             \
        return PyFloat_FromDouble(fn(DWORD(op), v));                                   \
    }

/* ---- Counter -------------------------------------------------------------- */

WORD_TYPE_NEW(counter, "Counter")

PyDoc_STRVAR(counter_inc_doc, "inc()\n--\n\nAdd one (one relaxed atomic add).");
static PyObject *counter_inc(PyObject *op, PyObject *unused) {
    (void)unused;
    op_inc_i64(WORD(op));
    Py_RETURN_NONE;
}

PyDoc_STRVAR(counter_add_doc,
             "add(n)\n--\n\nAdd the int64 n (>= 0 by convention, not checked) and return the "
             "new total.");
static PyObject *counter_add(PyObject *op, PyObject *arg) {
    long long n = PyLong_AsLongLong(arg);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    return PyLong_FromLongLong(op_add_i64(WORD(op), n));
}

PyDoc_STRVAR(counter_value_doc, "value()\n--\n\nThe current total (an acquire load).");
static PyObject *counter_value(PyObject *op, PyObject *unused) {
    (void)unused;
    return PyLong_FromLongLong(op_load_i64(WORD(op)));
}

static PyObject *counter_repr(PyObject *op) {
    return PyUnicode_FromFormat("Counter(%R, value=%lld)", ((SlotObject *)op)->name,
                                (long long)op_load_i64(WORD(op)));
}

static PyMethodDef counter_methods[] = {
    {"inc", counter_inc, METH_NOARGS, counter_inc_doc},
    {"add", counter_add, METH_O, counter_add_doc},
    {"value", counter_value, METH_NOARGS, counter_value_doc},
    {NULL, NULL, 0, NULL},
};

PyDoc_STRVAR(counter_doc,
             "Counter(segment, name)\n--\n\n"
             "A monotonically increasing int64 in a shared-memory slot, seen by every process "
             "that maps the segment.\n\n"
             "segment.counter_word(name) claims the slot and returns its word. inc() adds one "
             "and returns None; add(n) adds n and returns the new total; both are one atomic "
             "add, so increments from any number of processes are never lost.");
static PyType_Slot counter_slots[] =
    WORD_TYPE_SLOTS(counter_doc, counter_new, counter_repr, counter_methods);

/* ---- Gauge ---------------------------------------------------------------- */

WORD_TYPE_NEW(gauge, "Gauge")

PyDoc_STRVAR(gauge_set_doc, "set(v)\n--\n\nStore the float v (one atomic store).");
static PyObject *gauge_set(PyObject *op, PyObject *arg) {
    AS_DOUBLE(v, arg);
    op_store_f64(DWORD(op), v);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(gauge_add_doc,
             "add(v)\n--\n\nAdd v and return the new value (a CAS loop: concurrent adds from any "
             "number of processes lose nothing).");
FLOAT_OP(gauge_add, op_add_f64)

PyDoc_STRVAR(gauge_exchange_doc,
             "exchange(v)\n--\n\nStore v and return the value it replaced, atomically (e.g. "
             "read-and-reset).");
FLOAT_OP(gauge_exchange, op_xchg_f64)

PyDoc_STRVAR(gauge_compare_and_set_doc,
             "compare_and_set(expected, v)\n--\n\nStore v if the gauge holds exactly `expected` "
             "(bit for bit); say whether it did.");
static PyObject *gauge_compare_and_set(PyObject *op, PyObject *args) {
    double expected, v;
    if (!PyArg_ParseTuple(args, "dd:compare_and_set", &expected, &v))
        return NULL;
    return PyBool_FromLong(op_cas_f64(DWORD(op), expected, v));
}

PyDoc_STRVAR(gauge_value_doc, "value()\n--\n\nThe current value (an acquire load).");
static PyObject *gauge_value(PyObject *op, PyObject *unused) {
    (void)unused;
    return PyFloat_FromDouble(op_load_f64(DWORD(op)));
}

static PyObject *gauge_repr(PyObject *op) {
    PyObject *value = PyFloat_FromDouble(op_load_f64(DWORD(op)));
    if (value == NULL)
        return NULL;
    PyObject *out = PyUnicode_FromFormat("Gauge(%R, value=%R)", ((SlotObject *)op)->name, value);
    Py_DECREF(value);
    return out;
}

static PyMethodDef gauge_methods[] = {
    {"set", gauge_set, METH_O, gauge_set_doc},
    {"add", gauge_add, METH_O, gauge_add_doc},
    {"exchange", gauge_exchange, METH_O, gauge_exchange_doc},
    {"compare_and_set", gauge_compare_and_set, METH_VARARGS, gauge_compare_and_set_doc},
    {"value", gauge_value, METH_NOARGS, gauge_value_doc},
    {NULL, NULL, 0, NULL},
};

PyDoc_STRVAR(gauge_doc,
             "Gauge(segment, name)\n--\n\n"
             "A float64 that goes up and down, in a shared-memory slot: set(v) is an atomic "
             "store, add(v) a CAS loop that returns the new value. Two processes adding at once "
             "lose nothing.");
static PyType_Slot gauge_slots[] =
    WORD_TYPE_SLOTS(gauge_doc, gauge_new, gauge_repr, gauge_methods);

/* ---- Heartbeat ------------------------------------------------------------ */

WORD_TYPE_NEW(heartbeat, "Heartbeat")

PyDoc_STRVAR(heartbeat_beat_doc,
             "beat()\n--\n\nStamp now (CLOCK_MONOTONIC ns, one atomic store).");
static PyObject *heartbeat_beat(PyObject *op, PyObject *unused) {
    (void)unused;
    op_beat(WORD(op));
    Py_RETURN_NONE;
}

PyDoc_STRVAR(heartbeat_age_doc,
             "age()\n--\n\nSeconds since the last beat, or None if it never beat.");
static PyObject *heartbeat_age(PyObject *op, PyObject *unused) {
    (void)unused;
    int64_t stamp = op_load_i64(WORD(op));
    if (stamp == 0)
        Py_RETURN_NONE;
    double age = (double)(op_now_ns() - stamp) / 1e9;
    return PyFloat_FromDouble(age > 0.0 ? age : 0.0);
}

static PyObject *heartbeat_repr(PyObject *op) {
    PyObject *age = heartbeat_age(op, NULL);
    if (age == NULL)
        return NULL;
    PyObject *out = PyUnicode_FromFormat("Heartbeat(%R, age=%R)", ((SlotObject *)op)->name, age);
    Py_DECREF(age);
    return out;
}

static PyMethodDef heartbeat_methods[] = {
    {"beat", heartbeat_beat, METH_NOARGS, heartbeat_beat_doc},
    {"age", heartbeat_age, METH_NOARGS, heartbeat_age_doc},
    {NULL, NULL, 0, NULL},
};

PyDoc_STRVAR(heartbeat_doc,
             "Heartbeat(segment, name)\n--\n\n"
             "A monotonic-clock stamp in a shared-memory slot: beat() records now (one atomic "
             "store), age() says how long ago.");
static PyType_Slot heartbeat_slots[] =
    WORD_TYPE_SLOTS(heartbeat_doc, heartbeat_new, heartbeat_repr, heartbeat_methods);

/* ---- Histogram ------------------------------------------------------------ */

static PyObject *histogram_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"segment", "name", "bounds", NULL};
    PyObject *segment, *name, *bounds;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OUO:Histogram", kwlist, &segment, &name,
                                     &bounds))
        return NULL;
    /* The segment validates the bounds and claims the slot: (view, stored bounds). */
    PyObject *got = PyObject_CallMethod(segment, "histogram_slot", "OO", name, bounds);
    if (got == NULL)
        return NULL;
    PyObject *view = NULL, *stored = NULL;
    if (!PyArg_ParseTuple(got, "OO!:histogram_slot", &view, &PyList_Type, &stored)) {
        Py_DECREF(got);
        return NULL;
    }
    Py_INCREF(view);
    Py_INCREF(stored);
    Py_DECREF(got);
    HistogramObject *self = (HistogramObject *)slot_alloc(
        type, view, name, OP_SLOT_WORDS * (Py_ssize_t)sizeof(int64_t), "histogram_slot");
    if (self == NULL) {
        Py_DECREF(stored);
        return NULL;
    }
    self->bounds = stored;
    return (PyObject *)self;
}

static void histogram_dealloc(PyObject *op) {
    Py_XDECREF(((HistogramObject *)op)->bounds);
    slot_dealloc(op);
}

PyDoc_STRVAR(histogram_observe_doc,
             "observe(v)\n--\n\nCount v in its bucket (v <= bound; NaN goes to +Inf) and add it "
             "to the sum; returns the bucket index (-1 if the slot is corrupt: nothing written).");
static PyObject *histogram_observe(PyObject *op, PyObject *arg) {
    AS_DOUBLE(v, arg);
    return PyLong_FromLongLong(op_hist_observe(WORD(op), v));
}

PyDoc_STRVAR(histogram_value_doc,
             "value()\n--\n\n{\"bounds\", \"buckets\" (per bucket, not cumulative), \"count\", "
             "\"sum\"}.");
static PyObject *histogram_value(PyObject *op, PyObject *unused) {
    (void)unused;
    /* Cold path: the snapshot code reads slots of read-only mappings without an
     * object, so the one reader lives in Python (shm.metrics) and serves both. */
    PyObject *metrics = PyImport_ImportModule("shm.metrics");
    if (metrics == NULL)
        return NULL;
    PyObject *out = PyObject_CallMethod(metrics, "histogram_value_of_view", "O",
                                        ((SlotObject *)op)->view);
    Py_DECREF(metrics);
    return out;
}

static PyMethodDef histogram_methods[] = {
    {"observe", histogram_observe, METH_O, histogram_observe_doc},
    {"value", histogram_value, METH_NOARGS, histogram_value_doc},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef histogram_members[] = {
    {"name", T_OBJECT_EX, offsetof(SlotObject, name), READONLY,
     "The slot name this histogram lives in."},
    {"bounds", T_OBJECT_EX, offsetof(HistogramObject, bounds), READONLY,
     "The bucket upper bounds (floats)."},
    {"slot", T_OBJECT_EX, offsetof(SlotObject, view), READONLY,
     "The histogram's whole slot, a writable memoryview."},
    {NULL, 0, 0, 0, NULL},
};

PyDoc_STRVAR(histogram_doc,
             "Histogram(segment, name, bounds)\n--\n\n"
             "Fixed buckets in a shared-memory slot, lock-free: an observation is one atomic "
             "bucket add plus a CAS loop on the sum.\n\n"
             "Slot words: [nbounds, bounds..., buckets (nbounds + 1, last is +Inf)..., sum]. "
             "A reader sees every bucket and the sum whole, but may see an observation's "
             "bucket before its sum (as with every Prometheus client).");
static PyType_Slot histogram_slots[] = {
    {Py_tp_doc, (void *)histogram_doc},
    {Py_tp_new, histogram_new},
    {Py_tp_dealloc, histogram_dealloc},
    {Py_tp_methods, histogram_methods},
    {Py_tp_members, histogram_members},
    {0, NULL},
};

/* ---- registration --------------------------------------------------------- */

/* No BASETYPE: see the top of this file. */
#define FINAL_TYPE(pyname, object, slots_) \
    {.name = "shm.metrics." pyname, .basicsize = sizeof(object), \
     .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE, .slots = slots_}

static PyType_Spec specs[] = {
    FINAL_TYPE("Counter", SlotObject, counter_slots),
    FINAL_TYPE("Gauge", SlotObject, gauge_slots),
    FINAL_TYPE("Heartbeat", SlotObject, heartbeat_slots),
    FINAL_TYPE("Histogram", HistogramObject, histogram_slots),
};

int op_py_register(const char *module_name) {
    /* Called once from Python, with the GIL held (build_native.py keeps it
     * across calls). Python exceptions cannot cross a cffi call, so failures
     * become a return code that shm.metrics turns into an ImportError. */
    PyObject *module = PyImport_ImportModule(module_name);
    if (module == NULL) {
        PyErr_Clear();
        return -1;
    }
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < sizeof specs / sizeof specs[0]; i++) {
        PyObject *type = PyType_FromSpec(&specs[i]);
        const char *attr = strrchr(specs[i].name, '.') + 1;
        rc = type == NULL ? -2 : PyObject_SetAttrString(module, attr, type) < 0 ? -3 : 0;
        Py_XDECREF(type);
    }
    if (rc != 0)
        PyErr_Clear();
    Py_DECREF(module);
    return rc;
}
