/* outpost native: lock-free primitives over shared memory.
 *
 * Every pointer given here points into a shared mapping. All operations are
 * C11 atomics on naturally aligned 8-byte words, so they are safe across
 * processes that map the same file (lock-free 8-byte atomics are address-free
 * on every platform we build for; see the static assert in the .c file).
 *
 * Nothing here blocks: every loop is either bounded by a max_spins argument
 * or is a CAS retry that only fails when another writer made progress. The
 * cffi build relies on that to keep the GIL across calls (build_native.py). */
#ifndef OUTPOST_NATIVE_H
#define OUTPOST_NATIVE_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

/* A slot is 32 words (256 bytes, a multiple of the cache line). */
#define OP_SLOT_WORDS 32
/* Histogram slot: [nbounds, bounds[n], buckets[n + 1], sum] fits in a slot. */
#define OP_HIST_MAX_BOUNDS 14
/* Seqlock record slot: [sequence, lock (writer pid, 0 = free), payload...]. */
#define OP_SEQ_HEADER_WORDS 2

/* int64: loads acquire, stores release, counter adds relaxed. */
int64_t op_load_i64(const int64_t *p);
void op_store_i64(int64_t *p, int64_t v);
int64_t op_add_i64(int64_t *p, int64_t v);
void op_inc_i64(int64_t *p);
int op_cas_i64(int64_t *p, int64_t expected, int64_t desired);
int64_t op_xchg_i64(int64_t *p, int64_t v);

/* Bulk paths: one call for n slots. */
void op_add_i64_batch(int64_t *const *ptrs, const int64_t *deltas, size_t n);
void op_load_i64_batch(int64_t *const *ptrs, int64_t *out, size_t n);
/* `times` separate atomic adds of `delta`: the C-level floor for benchmarks
 * and a contention generator for tests. Returns the value after the last add. */
int64_t op_add_i64_repeat(int64_t *p, int64_t delta, int64_t times);

/* double: stored as its bit pattern; add is a CAS loop, cas compares bits. */
double op_load_f64(const double *p);
void op_store_f64(double *p, double v);
double op_add_f64(double *p, double v);
int op_cas_f64(double *p, double expected, double desired);
double op_xchg_f64(double *p, double v);

/* CLOCK_MONOTONIC in ns: comparable across processes of one boot. */
int64_t op_now_ns(void);
void op_beat(int64_t *p);
/* `times` beats in a row: the C-level floor of a beat (the clock read is most
 * of it) for benchmarks. */
void op_beat_repeat(int64_t *p, int64_t times);

/* Observe v in a histogram slot laid out as above. Returns the bucket index,
 * or -1 if the slot's bound count is corrupt (nothing is written then). */
int64_t op_hist_observe(int64_t *slot, double v);

/* Seqlock over a record slot. Writers take the lock word by CAS (0 -> pid),
 * so several writers may share a record; readers never write.
 *   op_seq_begin: lock + make the sequence odd. 0 on success, else the pid
 *     that held the lock for all max_spins attempts (the caller checks it).
 *   op_seq_begin_steal: take the lock from dead_pid (who died holding it).
 *     1 on success, 0 if the lock changed meanwhile (retry op_seq_begin).
 *   op_seq_end: make the sequence even, then unlock.
 *   op_seq_write / op_seq_write_steal: begin (or steal), copy nbytes in, end.
 *   op_seq_read: 0 after copying a consistent nbytes to dst, 1 if no
 *     consistent copy was seen in max_spins attempts (dst untouched; the caller
 *     then checks whether the writer lives).
 * Payloads are at most (OP_SLOT_WORDS - OP_SEQ_HEADER_WORDS) * 8 bytes; longer
 * ones are cut there, never written past the slot. */
int64_t op_seq_begin(int64_t *rec, int64_t pid, int64_t max_spins);
int op_seq_begin_steal(int64_t *rec, int64_t dead_pid, int64_t pid);
void op_seq_end(int64_t *rec);
int64_t op_seq_write(int64_t *rec, const char *src, size_t nbytes, int64_t pid,
                     int64_t max_spins);
int op_seq_write_steal(int64_t *rec, const char *src, size_t nbytes, int64_t dead_pid,
                       int64_t pid);
int op_seq_read(const int64_t *rec, char *dst, size_t nbytes, int64_t max_spins);

/* Registers shm.metrics.Counter, Gauge, Heartbeat and Histogram
 * (outpost_metrics.c) as attributes of the extension module `module_name`.
 * 0 on success, < 0 on failure. */
int op_py_register(const char *module_name);

#endif
