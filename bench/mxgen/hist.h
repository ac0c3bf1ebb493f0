/*
 * hist.h - bounded log-linear latency histogram for mxgen and mxsink, in the
 * manner of HdrHistogram: values 0 .. MXB_HIST_MAX_US (60 s) in µs, each
 * bucket at most 1/128 (< 1%) wide relative to its value.
 *
 * One histogram per worker core (no locking); the main thread merges them
 * with mxb_hist_merge() for percentiles.  Values above the maximum count in
 * the last bucket and in `clamped`.
 */
#ifndef MXB_HIST_H
#define MXB_HIST_H

#include <stdint.h>

#define MXB_HIST_SUB_BITS 7
#define MXB_HIST_SUB (1u << MXB_HIST_SUB_BITS)
#define MXB_HIST_MAX_US 60000000ull
#define MXB_HIST_BUCKETS (MXB_HIST_SUB * 20) /* 60e6 < 2^26: exponents 0..18 */

struct mxb_hist {
	uint64_t count, clamped, sum, max;
	uint64_t bucket[MXB_HIST_BUCKETS];
};

void mxb_hist_init(struct mxb_hist *h);
void mxb_hist_add(struct mxb_hist *h, uint64_t v_us);
/** dst += src. */
void mxb_hist_merge(struct mxb_hist *dst, const struct mxb_hist *src);
/**
 * dst -= earlier (an earlier snapshot of the same histogram): what was added in
 * between.  Buckets saturate at 0; count is recomputed from the buckets, max
 * becomes the top of the highest bucket left (or stays when lower).
 */
void mxb_hist_sub(struct mxb_hist *dst, const struct mxb_hist *earlier);
/** Value at quantile q (0..1): the upper bound of its bucket; 0 when empty. */
uint64_t mxb_hist_quantile(const struct mxb_hist *h, double q);
/** Bucket index of a value, and the largest value of a bucket (for tests). */
unsigned mxb_hist_index(uint64_t v);
uint64_t mxb_hist_bucket_top(unsigned idx);

#endif
