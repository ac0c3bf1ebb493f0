/*
 * hist.c - the log-linear histogram of hist.h.
 *
 * Values below 2 * MXB_HIST_SUB have a bucket each.  Above, a value v with
 * its highest set bit at position b (b >= 8) is shifted right by
 * e = b - 7 so that 128 <= v >> e < 256; the bucket is
 * 128 * (e + 1) + (v >> e) - 128, so each power of two spans 128 buckets and
 * a bucket is at most 1/128 of its value wide.
 */
#include "hist.h"

#include <string.h>

void mxb_hist_init(struct mxb_hist *h)
{
	memset(h, 0, sizeof(*h));
}

unsigned mxb_hist_index(uint64_t v)
{
	if (v > MXB_HIST_MAX_US)
		v = MXB_HIST_MAX_US;
	if (v < 2 * MXB_HIST_SUB)
		return (unsigned)v;
	unsigned b = 63 - (unsigned)__builtin_clzll(v);
	unsigned e = b - MXB_HIST_SUB_BITS;
	unsigned idx = MXB_HIST_SUB * (e + 1) + (unsigned)(v >> e) - MXB_HIST_SUB;
	return idx < MXB_HIST_BUCKETS ? idx : MXB_HIST_BUCKETS - 1;
}

uint64_t mxb_hist_bucket_top(unsigned idx)
{
	if (idx < 2 * MXB_HIST_SUB)
		return idx;
	unsigned e = idx / MXB_HIST_SUB - 1;
	uint64_t m = idx % MXB_HIST_SUB + MXB_HIST_SUB;
	return (m << e) + ((1ull << e) - 1);
}

void mxb_hist_add(struct mxb_hist *h, uint64_t v)
{
	if (v > MXB_HIST_MAX_US)
		h->clamped++;
	h->bucket[mxb_hist_index(v)]++;
	h->count++;
	h->sum += v;
	if (v > h->max)
		h->max = v;
}

void mxb_hist_merge(struct mxb_hist *dst, const struct mxb_hist *src)
{
	for (unsigned i = 0; i < MXB_HIST_BUCKETS; i++)
		dst->bucket[i] += src->bucket[i];
	dst->count += src->count;
	dst->clamped += src->clamped;
	dst->sum += src->sum;
	if (src->max > dst->max)
		dst->max = src->max;
}

uint64_t mxb_hist_quantile(const struct mxb_hist *h, double q)
{
	if (h->count == 0)
		return 0;
	if (q < 0)
		q = 0;
	if (q > 1)
		q = 1;
	uint64_t rank = (uint64_t)(q * (double)h->count + 0.5);
	if (rank < 1)
		rank = 1;
	uint64_t seen = 0;
	for (unsigned i = 0; i < MXB_HIST_BUCKETS; i++) {
		seen += h->bucket[i];
		if (seen >= rank) {
			uint64_t top = mxb_hist_bucket_top(i);
			return top < h->max ? top : h->max;
		}
	}
	return h->max;
}

void mxb_hist_sub(struct mxb_hist *dst, const struct mxb_hist *earlier)
{
	uint64_t count = 0;
	unsigned last = MXB_HIST_BUCKETS;
	for (unsigned i = 0; i < MXB_HIST_BUCKETS; i++) {
		/* saturating: a bucket read while a worker wrote it may look older than before */
		uint64_t e = earlier->bucket[i];
		dst->bucket[i] = dst->bucket[i] > e ? dst->bucket[i] - e : 0;
		count += dst->bucket[i];
		if (dst->bucket[i])
			last = i;
	}
	dst->count = count;
	dst->clamped = dst->clamped > earlier->clamped ? dst->clamped - earlier->clamped : 0;
	dst->sum = dst->sum > earlier->sum ? dst->sum - earlier->sum : 0;
	if (last == MXB_HIST_BUCKETS)
		dst->max = 0;
	else if (mxb_hist_bucket_top(last) < dst->max)
		dst->max = mxb_hist_bucket_top(last);
}
