/* outpost native: lock-free primitives over shared memory.
 *
 * Every pointer given here points into a shared mapping. All operations are
 * C11 atomics on naturally aligned 8-byte words, so they are safe across
 * processes that map the same file. */
#ifndef OUTPOST_NATIVE_H
#define OUTPOST_NATIVE_H

#include <stddef.h>
#include <stdint.h>

int64_t op_load_i64(const int64_t *p);
void op_store_i64(int64_t *p, int64_t v);
int64_t op_add_i64(int64_t *p, int64_t v);
int op_cas_i64(int64_t *p, int64_t expected, int64_t desired);
int64_t op_xchg_i64(int64_t *p, int64_t v);
void op_add_i64_batch(int64_t *const *ptrs, const int64_t *deltas, size_t n);
void op_load_i64_batch(int64_t *const *ptrs, int64_t *out, size_t n);

double op_load_f64(const double *p);
void op_store_f64(double *p, double v);
double op_add_f64(double *p, double v);
int op_cas_f64(double *p, double expected, double desired);
double op_xchg_f64(double *p, double v);

int64_t op_now_ns(void);
int64_t op_beat(int64_t *p);

int64_t op_hist_observe(int64_t *buckets, const double *bounds, size_t nbounds,
                        double *sum, double v);

void op_seq_write(int64_t *rec, const int64_t *src, size_t nwords, int64_t writer_pid);
int op_seq_read(const int64_t *rec, int64_t *dst, size_t nwords, int64_t max_spins);

#endif
