/*
 * test_hist.c - CUnit tests of the latency histogram (hist.c) that mxgen's
 * and mxsink's percentiles come from: bucket precision, quantiles against
 * an exact sort, clamping, merging.  Run by meson test (bench_hist).
 */
#include "hist.h"
#include "mx_test.h"

#include <stdlib.h>

static struct mxb_hist h, h2;

/* Every value lands in a bucket whose top is >= it and less than 1% above it. */
static void test_precision(void)
{
	unsigned prev = 0;
	for (uint64_t v = 0; v <= MXB_HIST_MAX_US; v = v < 1000 ? v + 1 : v + v / 997 + 1) {
		unsigned i = mxb_hist_index(v);
		CU_ASSERT_FATAL(i < MXB_HIST_BUCKETS);
		CU_ASSERT(i >= prev); /* monotonic */
		prev = i;
		uint64_t top = mxb_hist_bucket_top(i);
		CU_ASSERT(top >= v);
		CU_ASSERT((double)(top - v) <= (double)v / 100.0 + 1e-9);
		if (i > 0)
			CU_ASSERT(mxb_hist_bucket_top(i - 1) < v);
	}
	CU_ASSERT_EQUAL(mxb_hist_index(255), 255);
	CU_ASSERT_EQUAL(mxb_hist_index(256), 256);
	CU_ASSERT_EQUAL(mxb_hist_index(257), 256);
	CU_ASSERT_EQUAL(mxb_hist_bucket_top(256), 257);
}

static int cmp(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/* Quantiles agree with the exact order statistic within one bucket (1%). */
static void test_quantiles(void)
{
	enum { N = 20000 };
	static uint64_t v[N];
	uint64_t s = 12345;
	mxb_hist_init(&h);
	for (int i = 0; i < N; i++) {
		s = s * 6364136223846793005ull + 1442695040888963407ull;
		v[i] = (s >> 33) % 5000000; /* up to 5 s */
		mxb_hist_add(&h, v[i]);
	}
	qsort(v, N, sizeof(v[0]), cmp);
	CU_ASSERT_EQUAL(h.count, N);
	CU_ASSERT_EQUAL(h.max, v[N - 1]);
	const double qs[] = {0.5, 0.9, 0.99, 0.999};
	for (unsigned k = 0; k < 4; k++) {
		uint64_t exact = v[(size_t)(qs[k] * N + 0.5) - 1];
		uint64_t got = mxb_hist_quantile(&h, qs[k]);
		CU_ASSERT(got >= exact);
		CU_ASSERT((double)got <= (double)exact * 1.01 + 1);
	}
	CU_ASSERT_EQUAL(mxb_hist_quantile(&h, 1.0), v[N - 1]);
}

static void test_empty_clamp_merge(void)
{
	mxb_hist_init(&h);
	mxb_hist_init(&h2);
	CU_ASSERT_EQUAL(mxb_hist_quantile(&h, 0.99), 0);
	mxb_hist_add(&h, 10);
	mxb_hist_add(&h, 10);
	mxb_hist_add(&h2, MXB_HIST_MAX_US * 10); /* clamped into the last bucket */
	CU_ASSERT_EQUAL(h2.clamped, 1);
	CU_ASSERT_EQUAL(h2.max, MXB_HIST_MAX_US * 10);
	mxb_hist_merge(&h, &h2);
	CU_ASSERT_EQUAL(h.count, 3);
	CU_ASSERT_EQUAL(h.clamped, 1);
	CU_ASSERT_EQUAL(mxb_hist_quantile(&h, 0.5), 10);
	uint64_t top = mxb_hist_quantile(&h, 1.0);
	CU_ASSERT(top >= MXB_HIST_MAX_US && top <= MXB_HIST_MAX_US * 101 / 100);
}

/* A snapshot minus an earlier one: the quantiles of what came in between. */
static void test_sub(void)
{
	static struct mxb_hist early, late;
	mxb_hist_init(&early);
	for (int i = 0; i < 1000; i++)
		mxb_hist_add(&early, 100000); /* 100 ms: the first second */
	late = early;
	for (int i = 0; i < 100; i++)
		mxb_hist_add(&late, 50); /* 50 µs: the next second */
	mxb_hist_sub(&late, &early);
	CU_ASSERT_EQUAL(late.count, 100);
	CU_ASSERT_EQUAL(late.sum, 5000);
	CU_ASSERT_EQUAL(mxb_hist_quantile(&late, 0.99), 50);
	CU_ASSERT(late.max >= 50 && late.max <= 51);
	/* an "earlier" snapshot with more in a bucket saturates, never wraps */
	static struct mxb_hist z;
	mxb_hist_init(&z);
	mxb_hist_sub(&z, &early);
	CU_ASSERT_EQUAL(z.count, 0);
	CU_ASSERT_EQUAL(z.max, 0);
	CU_ASSERT_EQUAL(mxb_hist_quantile(&z, 0.99), 0);
}

static CU_TestInfo hist_tests[] = {
	{"precision", test_precision},
	{"quantiles", test_quantiles},
	{"empty_clamp_merge", test_empty_clamp_merge},
	{"sub", test_sub},
	CU_TEST_INFO_NULL,
};

static CU_SuiteInfo suites[] = {
	{"bench_hist", NULL, NULL, NULL, NULL, hist_tests},
	CU_SUITE_INFO_NULL,
};

int main(void)
{
	return mx_test_run(suites);
}
