/* See outpost_native.h. Compiled as C11 by cffi in API mode at install time. */
/* -std=c11 hides POSIX clock_gettime unless asked for. */
#define _POSIX_C_SOURCE 200809L
#include "outpost_native.h"

#include <stdatomic.h>
#include <string.h>
#include <time.h>

#define A64(p) ((_Atomic int64_t *)(p))

_Static_assert(sizeof(double) == sizeof(int64_t), "double must be 64-bit");

static inline int64_t dbits(double d) { int64_t b; memcpy(&b, &d, sizeof b); return b; }
static inline double bitsd(int64_t b) { double d; memcpy(&d, &b, sizeof d); return d; }

int64_t op_load_i64(const int64_t *p) {
    return atomic_load_explicit(A64(p), memory_order_acquire);
}

void op_store_i64(int64_t *p, int64_t v) {
    atomic_store_explicit(A64(p), v, memory_order_release);
}

int64_t op_add_i64(int64_t *p, int64_t v) {
    /* Counters need no ordering with other memory: relaxed is enough. */
    return atomic_fetch_add_explicit(A64(p), v, memory_order_relaxed) + v;
}

int op_cas_i64(int64_t *p, int64_t expected, int64_t desired) {
    return atomic_compare_exchange_strong_explicit(
        A64(p), &expected, desired, memory_order_acq_rel, memory_order_acquire);
}

int64_t op_xchg_i64(int64_t *p, int64_t v) {
    return atomic_exchange_explicit(A64(p), v, memory_order_acq_rel);
}

void op_add_i64_batch(int64_t *const *ptrs, const int64_t *deltas, size_t n) {
    for (size_t i = 0; i < n; i++)
        atomic_fetch_add_explicit(A64(ptrs[i]), deltas[i], memory_order_relaxed);
}

void op_load_i64_batch(int64_t *const *ptrs, int64_t *out, size_t n) {
    for (size_t i = 0; i < n; i++)
        out[i] = atomic_load_explicit(A64(ptrs[i]), memory_order_acquire);
}

double op_load_f64(const double *p) {
    return bitsd(atomic_load_explicit(A64(p), memory_order_acquire));
}

void op_store_f64(double *p, double v) {
    atomic_store_explicit(A64(p), dbits(v), memory_order_release);
}

double op_add_f64(double *p, double v) {
    /* No atomic add for doubles: retry a CAS on the bit pattern. */
    int64_t old = atomic_load_explicit(A64(p), memory_order_relaxed);
    double next;
    do {
        next = bitsd(old) + v;
    } while (!atomic_compare_exchange_weak_explicit(
        A64(p), &old, dbits(next), memory_order_relaxed, memory_order_relaxed));
    return next;
}

int op_cas_f64(double *p, double expected, double desired) {
    int64_t e = dbits(expected);
    return atomic_compare_exchange_strong_explicit(
        A64(p), &e, dbits(desired), memory_order_acq_rel, memory_order_acquire);
}

double op_xchg_f64(double *p, double v) {
    return bitsd(atomic_exchange_explicit(A64(p), dbits(v), memory_order_acq_rel));
}

int64_t op_now_ns(void) {
    /* CLOCK_MONOTONIC is system-wide, so stamps compare across processes. */
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int64_t op_beat(int64_t *p) {
    int64_t now = op_now_ns();
    atomic_store_explicit(A64(p), now, memory_order_release);
    return now;
}

int64_t op_hist_observe(int64_t *buckets, const double *bounds, size_t nbounds,
                        double *sum, double v) {
    /* buckets has nbounds + 1 slots (the last is +Inf); non-cumulative counts. */
    size_t i = 0;
    while (i < nbounds && v > bounds[i]) i++;
    atomic_fetch_add_explicit(A64(&buckets[i]), 1, memory_order_relaxed);
    op_add_f64(sum, v);
    return (int64_t)i;
}

/* Seqlock record: word 0 = sequence (odd while a write is in progress),
 * word 1 = pid of the last writer (so a reader can tell a dead writer from a
 * slow one), words 2.. = payload. Payload words are copied with relaxed
 * atomic accesses so the copy itself is never a data race. */
void op_seq_write(int64_t *rec, const int64_t *src, size_t nwords, int64_t writer_pid) {
    int64_t seq = atomic_load_explicit(A64(&rec[0]), memory_order_relaxed);
    atomic_store_explicit(A64(&rec[1]), writer_pid, memory_order_relaxed);
    atomic_store_explicit(A64(&rec[0]), seq + 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    for (size_t i = 0; i < nwords; i++)
        atomic_store_explicit(A64(&rec[2 + i]), src[i], memory_order_relaxed);
    atomic_store_explicit(A64(&rec[0]), seq + 2, memory_order_release);
}

int op_seq_read(const int64_t *rec, int64_t *dst, size_t nwords, int64_t max_spins) {
    /* Returns 0 on a consistent copy, 1 if a write stayed in progress for
     * max_spins attempts (the caller then checks whether the writer lives). */
    for (int64_t spin = 0; spin < max_spins; spin++) {
        int64_t s1 = atomic_load_explicit(A64(&rec[0]), memory_order_acquire);
        if (s1 & 1) continue;
        for (size_t i = 0; i < nwords; i++)
            dst[i] = atomic_load_explicit(A64(&rec[2 + i]), memory_order_relaxed);
        atomic_thread_fence(memory_order_acquire);
        int64_t s2 = atomic_load_explicit(A64(&rec[0]), memory_order_relaxed);
        if (s1 == s2) return 0;
    }
    return 1;
}
