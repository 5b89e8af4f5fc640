/* shm.Counter as a CPython type, compiled into the same cffi extension.
 *
 * Why a type and not a cffi function: `c.inc()` is the line agents write in
 * their hottest loops. On CPython 3.11 a cffi function stored on an object
 * runs the generic attribute lookup and the generic call (~37 ns, 2.9x a bare
 * loop); a METH_NOARGS method of an exact C type is specialised at both steps
 * (LOAD_METHOD_NO_DICT, PRECALL_NO_KW_METHOD_DESCRIPTOR_NOARGS) and costs
 * ~21 ns. The specialisation checks the exact type, so the type is final: a
 * Python subclass would fall back to the slow path.
 *
 * The counter holds a buffer export of its word (a memoryview the segment
 * hands out), so the mapping it points into cannot be unmapped under it.
 * Everything atomic is done by outpost_native.c; this file only adapts calls. */
#include <Python.h>

#include "outpost_native.h"

typedef struct {
    PyObject_HEAD
    int64_t *word;
    PyObject *name;
    PyObject *view; /* what segment.counter_word() returned */
    Py_buffer buffer; /* our export of view: keeps the mapping alive */
} CounterObject;

static PyObject *counter_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"segment", "name", NULL};
    PyObject *segment, *name;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OU:Counter", kwlist, &segment, &name))
        return NULL;
    PyObject *view = PyObject_CallMethod(segment, "counter_word", "O", name);
    if (view == NULL)
        return NULL;
    allocfunc alloc = (allocfunc)PyType_GetSlot(type, Py_tp_alloc);
    CounterObject *self = (CounterObject *)alloc(type, 0);
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
    if (self->buffer.len < (Py_ssize_t)sizeof(int64_t) ||
        (uintptr_t)self->buffer.buf % sizeof(int64_t) != 0) {
        PyErr_Format(PyExc_ValueError,
                     "counter_word() must return a writable, 8-byte aligned buffer of at "
                     "least 8 bytes (got %zd bytes)", self->buffer.len);
        Py_DECREF(self);
        return NULL;
    }
    self->word = (int64_t *)self->buffer.buf;
    Py_INCREF(name);
    self->name = name;
    return (PyObject *)self;
}

static void counter_dealloc(PyObject *op) {
    CounterObject *self = (CounterObject *)op;
    PyTypeObject *type = Py_TYPE(op);
    if (self->buffer.obj != NULL)
        PyBuffer_Release(&self->buffer);
    Py_XDECREF(self->view);
    Py_XDECREF(self->name);
    freefunc free_ = (freefunc)PyType_GetSlot(type, Py_tp_free);
    free_(op);
    Py_DECREF(type); /* instances of heap types own a reference to their type */
}

static PyObject *counter_inc(PyObject *op, PyObject *unused) {
    (void)unused;
    op_inc_i64(((CounterObject *)op)->word);
    Py_RETURN_NONE;
}

static PyObject *counter_add(PyObject *op, PyObject *arg) {
    long long n = PyLong_AsLongLong(arg);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    return PyLong_FromLongLong(op_add_i64(((CounterObject *)op)->word, n));
}

static PyObject *counter_value(PyObject *op, PyObject *unused) {
    (void)unused;
    return PyLong_FromLongLong(op_load_i64(((CounterObject *)op)->word));
}

static PyObject *counter_get_name(PyObject *op, void *closure) {
    (void)closure;
    PyObject *name = ((CounterObject *)op)->name;
    Py_INCREF(name);
    return name;
}

static PyObject *counter_get_word(PyObject *op, void *closure) {
    (void)closure;
    PyObject *view = ((CounterObject *)op)->view;
    Py_INCREF(view);
    return view;
}

static PyObject *counter_repr(PyObject *op) {
    return PyUnicode_FromFormat("Counter(%R, value=%lld)", ((CounterObject *)op)->name,
                                (long long)op_load_i64(((CounterObject *)op)->word));
}

static PyMethodDef counter_methods[] = {
    {"inc", counter_inc, METH_NOARGS, "inc()\n--\n\nAdd one (one relaxed atomic add)."},
    {"add", counter_add, METH_O,
     "add(n)\n--\n\nAdd the int64 n (>= 0 by convention, not checked) and return the "
     "new total."},
    {"value", counter_value, METH_NOARGS, "value()\n--\n\nThe current total (an acquire load)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef counter_getset[] = {
    {"name", counter_get_name, NULL, "The slot name this counter lives in.", NULL},
    {"word", counter_get_word, NULL,
     "The counter's 8-byte word in the mapping (a writable memoryview), for bulk "
     "native paths such as CounterBatch.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot counter_slots[] = {
    {Py_tp_doc,
     "Counter(segment, name)\n--\n\n"
     "A monotonically increasing int64 in a shared-memory slot, seen by every process "
     "that maps the segment.\n\n"
     "segment.counter_word(name) claims the slot and returns its word. inc() adds one "
     "and returns None; add(n) adds n and returns the new total; both are one atomic "
     "add, so increments from any number of processes are never lost."},
    {Py_tp_new, counter_new},
    {Py_tp_dealloc, counter_dealloc},
    {Py_tp_repr, counter_repr},
    {Py_tp_methods, counter_methods},
    {Py_tp_getset, counter_getset},
    {0, NULL},
};

static PyType_Spec counter_spec = {
    .name = "shm.metrics.Counter",
    .basicsize = sizeof(CounterObject),
    /* No BASETYPE: see the top of this file. */
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = counter_slots,
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
    PyObject *type = PyType_FromSpec(&counter_spec);
    int rc = type == NULL ? -2 : PyObject_SetAttrString(module, "Counter", type) < 0 ? -3 : 0;
    if (rc != 0)
        PyErr_Clear();
    Py_XDECREF(type);
    Py_DECREF(module);
    return rc;
}
