/*
 * test_cksum.c - lib/net's Internet checksum (cksum.h) against DPDK's
 * rte_raw_cksum() for every length up to 2 KiB at every alignment, the
 * copying variant, the scalar and AVX2 variants against each other (the
 * dispatching net_csum() takes one of them), and the RFC 1071 examples.
 */
#include "cksum.h"
#include "mx_test.h"

#include <stdlib.h>

#include <rte_ip.h>

static uint8_t src[2048 + 16], dst[2048 + 16];

static void fill(uint64_t seed)
{
	for (size_t i = 0; i < sizeof(src); i++) {
		seed = seed * 6364136223846793005ull + 1442695040888963407ull;
		src[i] = (uint8_t)(seed >> 56);
	}
}

static void test_matches_dpdk(void)
{
	unsigned bad = 0;
	for (uint64_t seed = 1; seed <= 3; seed++) {
		fill(seed);
		for (size_t off = 0; off < 8; off++)
			for (size_t len = 0; len <= 2048; len++)
				bad += net_csum_fold(net_csum(src + off, len, 0)) !=
				       rte_raw_cksum(src + off, len);
	}
	CU_ASSERT_EQUAL(bad, 0);
	/* all ones everywhere: the largest words, carries on every step */
	memset(src, 0xff, sizeof(src));
	CU_ASSERT_EQUAL(net_csum_fold(net_csum(src, 2048, 0)), rte_raw_cksum(src, 2048));
	CU_ASSERT_EQUAL(net_csum_fold(net_csum(src, 1501, 0)), rte_raw_cksum(src, 1501));
}

static void test_copy_variant(void)
{
	unsigned bad = 0;
	fill(7);
	for (size_t off = 0; off < 8; off++)
		for (size_t len = 0; len <= 2048; len += 1 + len / 64) {
			memset(dst, 0, sizeof(dst));
			uint64_t s = net_csum_copy(dst + (7 - off), src + off, len, 0);
			bad += net_csum_fold(s) != rte_raw_cksum(src + off, len);
			bad += memcmp(dst + (7 - off), src + off, len) != 0;
			bad += dst[7 - off + len] != 0; /* nothing past the end */
		}
	CU_ASSERT_EQUAL(bad, 0);
}

/*
 * Both variants, whichever net_csum() picks on this CPU: the scalar loop
 * against DPDK, and (where the CPU has AVX2) the vector loops against it,
 * including the copy, at every length up to 2 KiB (every tail length after
 * the 32-byte steps) and every alignment.
 */
static void test_variants_agree(void)
{
	unsigned bad = 0, checked = 0;
	for (uint64_t seed = 11; seed <= 12; seed++) {
		fill(seed);
		for (size_t off = 0; off < 8; off++)
			for (size_t len = 0; len <= 2048; len++) {
				uint16_t want = rte_raw_cksum(src + off, len);
				bad += net_csum_fold(net_csum_scalar(src + off, len, 0)) != want;
				checked++;
#ifdef NET_CSUM_HAVE_AVX2
				if (!net_csum_avx2_ok())
					continue;
				bad += net_csum_fold(net_csum_avx2(src + off, len, 0)) != want;
				memset(dst, 0, sizeof(dst));
				uint64_t s = net_csum_copy_avx2(dst + (7 - off), src + off, len, 0);
				bad += net_csum_fold(s) != want;
				bad += memcmp(dst + (7 - off), src + off, len) != 0;
				bad += dst[7 - off + len] != 0;
				checked++;
#endif
			}
	}
	CU_ASSERT_EQUAL(bad, 0);
	CU_ASSERT(checked >= 2 * 8 * 2049);
	/* A starting sum near the top of the accumulator's range is carried, not lost. */
	memset(src, 0xff, sizeof(src));
	uint64_t start = 0xffffffffull << 20;
	CU_ASSERT_EQUAL(net_csum_fold(net_csum(src, 2048, start)),
			net_csum_fold(net_csum_scalar(src, 2048, start)));
}

/* RFC 1071 section 3: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2 (big-endian view). */
static void test_rfc1071_example(void)
{
	static const uint8_t b[] = {0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7};
	uint16_t s = net_csum_fold(net_csum(b, sizeof(b), 0));
	CU_ASSERT_EQUAL(rte_be_to_cpu_16(s), 0xddf2);
	/* A starting sum is added like any word (the pseudo-header's). */
	CU_ASSERT_EQUAL(net_csum_fold(net_csum(b + 4, 4, net_csum(b, 4, 0))), s);
}

static CU_TestInfo tests[] = {
	{"matches rte_raw_cksum, every length and alignment", test_matches_dpdk},
	{"copy and sum in one pass", test_copy_variant},
	{"scalar and AVX2 variants match DPDK", test_variants_agree},
	{"RFC 1071 example", test_rfc1071_example},
	CU_TEST_INFO_NULL,
};

static CU_SuiteInfo suites[] = {
	{"net_cksum", NULL, NULL, NULL, NULL, tests},
	CU_SUITE_INFO_NULL,
};

int main(void)
{
	return mx_test_run(suites);
}
