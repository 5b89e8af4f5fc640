"""cffi API-mode build of `shm._native`: compiled at install time, never at run time.

setup.py names this file in `cffi_modules`, so `pip install` (and the venv helper,
whenever native/* changes) builds `shm/_native.abi3.so` from native/outpost_native.c
(the atomics, called through cffi) and native/outpost_metrics.c (shm.metrics.Counter,
Gauge, Heartbeat and Histogram, CPython types: see that file for why).
"""

from cffi import FFI

CDEF = """
#define OP_SLOT_WORDS ...
#define OP_HIST_MAX_BOUNDS ...
#define OP_SEQ_HEADER_WORDS ...

int64_t op_load_i64(const int64_t *p);
void op_store_i64(int64_t *p, int64_t v);
int64_t op_add_i64(int64_t *p, int64_t v);
void op_inc_i64(int64_t *p);
int op_cas_i64(int64_t *p, int64_t expected, int64_t desired);
int64_t op_xchg_i64(int64_t *p, int64_t v);
void op_add_i64_batch(int64_t *const *ptrs, const int64_t *deltas, size_t n);
void op_load_i64_batch(int64_t *const *ptrs, int64_t *out, size_t n);
int64_t op_add_i64_repeat(int64_t *p, int64_t delta, int64_t times);

double op_load_f64(const double *p);
void op_store_f64(double *p, double v);
double op_add_f64(double *p, double v);
int op_cas_f64(double *p, double expected, double desired);
double op_xchg_f64(double *p, double v);

int64_t op_now_ns(void);
void op_beat(int64_t *p);
void op_beat_repeat(int64_t *p, int64_t times);

int64_t op_hist_observe(int64_t *slot, double v);

int64_t op_seq_begin(int64_t *rec, int64_t pid, int64_t max_spins);
int op_seq_begin_steal(int64_t *rec, int64_t dead_pid, int64_t pid);
void op_seq_end(int64_t *rec);
int64_t op_seq_write(int64_t *rec, const char *src, size_t nbytes, int64_t pid,
                     int64_t max_spins);
int op_seq_write_steal(int64_t *rec, const char *src, size_t nbytes, int64_t dead_pid,
                       int64_t pid);
int op_seq_read(const int64_t *rec, char *dst, size_t nbytes, int64_t max_spins);

int op_py_register(const char *module_name);
"""

# cffi's generated wrapper for every function releases and re-takes the GIL and
# saves/restores errno around the call (recompiler.py: Py_BEGIN_ALLOW_THREADS,
# _cffi_restore_errno). For a one-instruction atomic that wrapper is the cost:
# measured on our VM, a void(int64_t *) call went from ~62 ns to ~30 ns per call
# without it. Every function here is non-blocking and bounded (see the header),
# sets no errno we read, and touches no Python state, so keeping the GIL is safe
# (op_py_register is the exception that needs it: it creates Python types).
# The generated wrappers come after this preamble, so redefining the macros here
# changes them and nothing else. If a future cffi stops using these names the
# build still works, only slower (the benchmark would show it).
PREAMBLE = """
#include "outpost_native.h"

#undef Py_BEGIN_ALLOW_THREADS
#undef Py_END_ALLOW_THREADS
#define Py_BEGIN_ALLOW_THREADS {
#define Py_END_ALLOW_THREADS }
#undef _cffi_restore_errno
#undef _cffi_save_errno
#define _cffi_restore_errno() ((void)0)
#define _cffi_save_errno() ((void)0)

"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "shm._native",
    PREAMBLE,
    # Relative paths: setuptools runs this from the project root.
    sources=["native/outpost_native.c", "native/outpost_metrics.c"],
    include_dirs=["native"],
    # The 3.11 stable ABI (our floor) rather than cffi's default 3.2 one: the metric types hold
    # a Py_buffer, which joined the limited API in 3.11.
    define_macros=[("Py_LIMITED_API", "0x030B0000")],
    # Slots are reinterpreted (int64 words holding doubles): no aliasing assumptions.
    extra_compile_args=["-std=c11", "-O2", "-Wall", "-Wextra", "-fno-strict-aliasing"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
