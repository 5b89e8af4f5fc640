/* See outpost_native.h. Compiled as C11 by cffi in API mode at install time. */
/* -std=c11 hides POSIX clock_gettime unless asked for. */
#define _POSIX_C_SOURCE 200809L
#include "outpost_native.h"

#include <stdatomic.h>
#include <string.h>
#include <time.h>

#define A64(p) ((_Atomic int64_t *)(p))

_Static_assert(sizeof(double) == sizeof(int64_t), "double must be 64-bit");
_Static_assert(sizeof(_Atomic int64_t) == sizeof(int64_t),
               "an atomic int64 must have the plain layout to live in a shared file");
/* 2 = always lock-free: a lock-based fallback would keep its lock in this
 * process, not in the shared mapping, and silently lose updates across processes. */
_Static_assert(ATOMIC_LLONG_LOCK_FREE == 2, "int64 atomics must be lock-free");

/* Be polite to the sibling hyper-thread (and to a preempted writer) while spinning. */
#if defined(__x86_64__) || defined(__i386__)
#define CPU_RELAX() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define CPU_RELAX() __asm__ __volatile__("yield" ::: "memory")
#else
#define CPU_RELAX() ((void)0)
#endif

#define SEQ_PAYLOAD_MAX (OP_SLOT_WORDS - OP_SEQ_HEADER_WORDS)

static inline int64_t dbits(double d) { int64_t b; memcpy(&b, &d, sizeof b); return b; }
static inline double bitsd(int64_t b) { double d; memcpy(&d, &b, sizeof d); return d; }

/* ---- int64 ---------------------------------------------------------------- */

int64_t op_load_i64(const int64_t *p) {
    return atomic_load_explicit(A64(p), memory_order_acquire);
}

void op_store_i64(int64_t *p, int64_t v) {
    atomic_store_explicit(A64(p), v, memory_order_release);
}

int64_t op_add_i64(int64_t *p, int64_t v) {
    /* Counters need no ordering with other memory: relaxed is enough, the
     * read-modify-write itself is still indivisible. */
    return atomic_fetch_add_explicit(A64(p), v, memory_order_relaxed) + v;
}

void op_inc_i64(int64_t *p) {
    /* void and one argument: the cheapest call cffi can make (METH_O, no result object). */
    atomic_fetch_add_explicit(A64(p), 1, memory_order_relaxed);
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

int64_t op_add_i64_repeat(int64_t *p, int64_t delta, int64_t times) {
    int64_t last = 0;
    for (int64_t i = 0; i < times; i++)
        last = atomic_fetch_add_explicit(A64(p), delta, memory_order_relaxed) + delta;
    return last;
}

/* ---- double --------------------------------------------------------------- */

double op_load_f64(const double *p) {
    return bitsd(atomic_load_explicit(A64(p), memory_order_acquire));
}

void op_store_f64(double *p, double v) {
    atomic_store_explicit(A64(p), dbits(v), memory_order_release);
}

double op_add_f64(double *p, double v) {
    /* No atomic add for doubles: retry a CAS on the bit pattern. A failed CAS
     * reloads `old`, so each retry adds to the value another writer left. */
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

/* ---- clock ---------------------------------------------------------------- */

int64_t op_now_ns(void) {
    /* CLOCK_MONOTONIC is system-wide, so stamps compare across processes. */
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

void op_beat(int64_t *p) {
    atomic_store_explicit(A64(p), op_now_ns(), memory_order_release);
}

void op_beat_repeat(int64_t *p, int64_t times) {
    for (int64_t i = 0; i < times; i++)
        op_beat(p);
}

/* ---- histogram ------------------------------------------------------------ */

int64_t op_hist_observe(int64_t *slot, double v) {
    /* The bound count comes from a shared file: never index with an unchecked one. */
    int64_t n = atomic_load_explicit(A64(&slot[0]), memory_order_relaxed);
    if (n < 1 || n > OP_HIST_MAX_BOUNDS) return -1;
    const double *bounds = (const double *)&slot[1];  /* written before the slot was published */
    int64_t *buckets = &slot[1 + n];                   /* n + 1 of them, the last is +Inf */
    double *sum = (double *)&slot[2 + 2 * n];
    /* Buckets are "le" (v <= bound). !(v <= b) also sends NaN to +Inf, as Prometheus does. */
    int64_t i = 0;
    while (i < n && !(v <= bounds[i])) i++;
    atomic_fetch_add_explicit(A64(&buckets[i]), 1, memory_order_relaxed);
    op_add_f64(sum, v);
    return i;
}

/* ---- seqlock --------------------------------------------------------------
 *
 * Record slot: word 0 = sequence (odd while a write is in progress), word 1 =
 * lock: pid of the writer holding it, 0 when free. The lock makes the record
 * safe for several writers (two unlocked writers could interleave so that the
 * sequence is even while one of them is still copying) and names the writer,
 * so a reader or writer that waits too long can tell a dead writer from a slow
 * one. Memory orders follow Boehm, "Can seqlocks get along with programming
 * language memory models?" (2012), as in rigtorp/Seqlock:
 *   writer: seq = odd (relaxed); release fence; payload (relaxed); seq = even (release)
 *   reader: s1 (acquire); payload (relaxed); acquire fence; s2 (relaxed); s1 == s2, even
 * If the reader saw any payload word from a write, the writer's release fence
 * synchronises with the reader's acquire fence, so s2 sees that write's odd
 * sequence (or later) and the copy is retried. Payload words are copied with
 * relaxed atomics, so the copy itself is never a data race. */

static void seq_make_odd(int64_t *rec) {
    /* Odd already means a dead writer left it mid-write: stay odd (the bytes
     * are garbage until we finish); readers retry on any odd value. */
    int64_t seq = atomic_load_explicit(A64(&rec[0]), memory_order_relaxed);
    atomic_store_explicit(A64(&rec[0]), seq | 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
}

int64_t op_seq_begin(int64_t *rec, int64_t pid, int64_t max_spins) {
    int64_t holder = 0;
    for (int64_t spin = 0; spin < max_spins; spin++) {
        holder = 0;
        /* acquire pairs with the previous writer's release unlock: we see its sequence. */
        if (atomic_compare_exchange_weak_explicit(A64(&rec[1]), &holder, pid,
                                                  memory_order_acquire, memory_order_relaxed)) {
            seq_make_odd(rec);
            return 0;
        }
        CPU_RELAX();
    }
    return holder ? holder : -1;  /* -1: the lock word flickered free but never came to us */
}

int op_seq_begin_steal(int64_t *rec, int64_t dead_pid, int64_t pid) {
    if (dead_pid == 0 || !atomic_compare_exchange_strong_explicit(
            A64(&rec[1]), &dead_pid, pid, memory_order_acquire, memory_order_relaxed))
        return 0;
    seq_make_odd(rec);
    return 1;
}

void op_seq_end(int64_t *rec) {
    int64_t seq = atomic_load_explicit(A64(&rec[0]), memory_order_relaxed);
    atomic_store_explicit(A64(&rec[0]), (seq | 1) + 1, memory_order_release);
    atomic_store_explicit(A64(&rec[1]), 0, memory_order_release);
}

/* Payloads are bytes; the record stores them in whole words (the last one
 * zero-padded), each copied with a relaxed atomic store or load. */
static size_t seq_words(size_t nbytes) {
    if (nbytes > SEQ_PAYLOAD_MAX * 8) nbytes = SEQ_PAYLOAD_MAX * 8;  /* never past the slot */
    return (nbytes + 7) / 8;
}

static void seq_copy_in(int64_t *rec, const char *src, size_t nbytes) {
    int64_t w[SEQ_PAYLOAD_MAX] = {0};
    size_t n = seq_words(nbytes);
    memcpy(w, src, nbytes < n * 8 ? nbytes : n * 8);
    for (size_t i = 0; i < n; i++)
        atomic_store_explicit(A64(&rec[OP_SEQ_HEADER_WORDS + i]), w[i], memory_order_relaxed);
}

int64_t op_seq_write(int64_t *rec, const char *src, size_t nbytes, int64_t pid,
                     int64_t max_spins) {
    int64_t holder = op_seq_begin(rec, pid, max_spins);
    if (holder != 0) return holder;
    seq_copy_in(rec, src, nbytes);
    op_seq_end(rec);
    return 0;
}

int op_seq_write_steal(int64_t *rec, const char *src, size_t nbytes, int64_t dead_pid,
                       int64_t pid) {
    if (!op_seq_begin_steal(rec, dead_pid, pid)) return 0;
    seq_copy_in(rec, src, nbytes);
    op_seq_end(rec);
    return 1;
}

int op_seq_read(const int64_t *rec, char *dst, size_t nbytes, int64_t max_spins) {
    /* Copy into a local buffer and hand it out only once it is known consistent:
     * dst never holds a torn value, even from a failed attempt. */
    int64_t w[SEQ_PAYLOAD_MAX];
    size_t n = seq_words(nbytes);
    for (int64_t spin = 0; spin < max_spins; spin++) {
        int64_t s1 = atomic_load_explicit(A64(&rec[0]), memory_order_acquire);
        if (s1 & 1) {
            CPU_RELAX();
            continue;
        }
        for (size_t i = 0; i < n; i++)
            w[i] = atomic_load_explicit(A64(&rec[OP_SEQ_HEADER_WORDS + i]), memory_order_relaxed);
        atomic_thread_fence(memory_order_acquire);
        int64_t s2 = atomic_load_explicit(A64(&rec[0]), memory_order_relaxed);
        if (s1 == s2) {
            memcpy(dst, w, nbytes < n * 8 ? nbytes : n * 8);
            return 0;
        }
        CPU_RELAX();
    }
    return 1;
}
