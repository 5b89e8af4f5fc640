"""cffi API-mode build of `shm._native`: compiled at install time, never at run time.

setup.py names this file in `cffi_modules`, so `pip install` (and the venv helper,
whenever native/* changes) builds `shm/_native.abi3.so` from native/outpost_native.c.
"""

import re
from pathlib import Path

from cffi import FFI

# One source of truth for the trampoline count: the header.
_HEADER = (Path(__file__).resolve().parent / "outpost_native.h").read_text()
TRAMPOLINES = int(re.search(r"^#define OP_TRAMP_COUNT (\d+)$", _HEADER, re.M).group(1))

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

int64_t op_hist_observe(int64_t *slot, double v);

int64_t op_seq_begin(int64_t *rec, int64_t pid, int64_t max_spins);
int op_seq_begin_steal(int64_t *rec, int64_t dead_pid, int64_t pid);
void op_seq_end(int64_t *rec);
int64_t op_seq_write(int64_t *rec, const char *src, size_t nbytes, int64_t pid,
                     int64_t max_spins);
int op_seq_write_steal(int64_t *rec, const char *src, size_t nbytes, int64_t dead_pid,
                       int64_t pid);
int op_seq_read(const int64_t *rec, char *dst, size_t nbytes, int64_t max_spins);

#define OP_TRAMP_COUNT ...
int op_tramp_claim(int64_t *p);
int op_tramp_used(void);
void op_noop(void);
""" + "".join(f"void op_inc_t{k}(void);\n" for k in range(TRAMPOLINES))

# cffi's generated wrapper for every function releases and re-takes the GIL and
# saves/restores errno around the call (recompiler.py: Py_BEGIN_ALLOW_THREADS,
# _cffi_restore_errno). For a one-instruction atomic that wrapper is the cost:
# measured on our VM, a void(int64_t *) call went from ~62 ns to ~30 ns per call
# without it. Every function here is non-blocking and bounded (see the header),
# sets no errno we read, and touches no Python state, so keeping the GIL is safe.
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

/* The cheapest call cffi can make (METH_NOARGS, no conversion, body inlined
 * into the wrapper): the floor a trampoline is measured against. */
static void op_noop(void) {}
""" + "".join(f"OP_TRAMP_DEFINE({k})\n" for k in range(TRAMPOLINES))

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "shm._native",
    PREAMBLE,
    # Relative paths: setuptools runs this from the project root.
    sources=["native/outpost_native.c"],
    include_dirs=["native"],
    # Slots are reinterpreted (int64 words holding doubles): no aliasing assumptions.
    extra_compile_args=["-std=c11", "-O2", "-Wall", "-Wextra", "-fno-strict-aliasing"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
