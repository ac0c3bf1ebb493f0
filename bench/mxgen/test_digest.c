/*
 * test_digest.c - CUnit tests of the body digest (digest.c) that mxsink checks
 * every message with: the result does not depend on how the body is split
 * into segments, any single-bit change or length change alters it, the hex
 * form round-trips and bad hex is refused.  Run by meson test (bench_digest).
 */
#include "digest.h"
#include "mx_test.h"

#include <string.h>

static uint8_t buf[1100];

static void fill(void)
{
	uint64_t s = 12345;
	for (size_t i = 0; i < sizeof(buf); i++) {
		s = s * 6364136223846793005ull + 1442695040888963407ull;
		buf[i] = (uint8_t)(s >> 56);
	}
}

/* Every two-way and three-way split gives the one-shot digest. */
static void test_splits(void)
{
	fill();
	for (size_t n = 0; n <= 40; n++) {
		uint64_t whole = mxb_digest(buf, n);
		for (size_t a = 0; a <= n; a++)
			for (size_t b = a; b <= n; b++) {
				struct mxb_digest d;
				mxb_digest_init(&d);
				mxb_digest_update(&d, buf, a);
				mxb_digest_update(&d, buf + a, b - a);
				mxb_digest_update(&d, buf + b, n - b);
				CU_ASSERT_EQUAL(mxb_digest_final(&d), whole);
			}
	}
	/* a 1 KiB body fed in uneven segments, as TCP delivers it */
	uint64_t whole = mxb_digest(buf, 1024);
	struct mxb_digest d;
	mxb_digest_init(&d);
	for (size_t off = 0, step = 1; off < 1024; off += step, step = step * 3 % 97 + 1)
		mxb_digest_update(&d, buf + off, off + step > 1024 ? 1024 - off : step);
	CU_ASSERT_EQUAL(mxb_digest_final(&d), whole);
}

/* Flipping any bit of a 1 KiB body, or adding or dropping a byte, changes it. */
static void test_sensitivity(void)
{
	fill();
	uint64_t ref = mxb_digest(buf, 1024);
	unsigned same = 0;
	for (size_t bit = 0; bit < 1024 * 8; bit++) {
		buf[bit / 8] ^= (uint8_t)(1u << (bit % 8));
		same += mxb_digest(buf, 1024) == ref;
		buf[bit / 8] ^= (uint8_t)(1u << (bit % 8));
	}
	CU_ASSERT_EQUAL(same, 0);
	CU_ASSERT_NOT_EQUAL(mxb_digest(buf, 1023), ref);
	CU_ASSERT_NOT_EQUAL(mxb_digest(buf, 1025), ref);
	/* trailing zero bytes are not lost in the padding of the last word */
	static const uint8_t z[9] = {0};
	for (size_t n = 0; n < 8; n++)
		CU_ASSERT_NOT_EQUAL(mxb_digest(z, n), mxb_digest(z, n + 1));
	/* two bodies that differ only by a swapped pair of words */
	uint8_t a[16], b[16];
	memcpy(a, buf, 16);
	memcpy(b, buf + 8, 8);
	memcpy(b + 8, buf, 8);
	CU_ASSERT_NOT_EQUAL(mxb_digest(a, 16), mxb_digest(b, 16));
}

/* Pinned values: mxgen and mxsink of different builds must agree. */
static void test_pinned(void)
{
	char hex[17];
	mxb_hex64(hex, mxb_digest("", 0));
	CU_ASSERT_STRING_EQUAL(hex, "8c22d1a4545d4496");
	mxb_hex64(hex, mxb_digest("ABCDEFGHIJKLMNOPQRSTUVWXYZ\r\n", 28));
	CU_ASSERT_STRING_EQUAL(hex, "6b10aa577ea20fff");
}

static void test_hex(void)
{
	char hex[17];
	uint64_t v = 0;
	mxb_hex64(hex, 0x0123456789abcdefull);
	CU_ASSERT_STRING_EQUAL(hex, "0123456789abcdef");
	CU_ASSERT_EQUAL(mxb_parse_hex64(hex, &v), 0);
	CU_ASSERT_EQUAL(v, 0x0123456789abcdefull);
	CU_ASSERT_EQUAL(mxb_parse_hex64("FEDCBA9876543210", &v), 0);
	CU_ASSERT_EQUAL(v, 0xfedcba9876543210ull);
	CU_ASSERT_EQUAL(mxb_parse_hex64("0123456789abcdeg", &v), -1);
	CU_ASSERT_EQUAL(mxb_parse_hex64("0123", &v), -1); /* stops at the NUL */
	CU_ASSERT_EQUAL(mxb_parse_hex64(" 123456789abcdef", &v), -1);
}

static CU_TestInfo digest_tests[] = {
	{"splits", test_splits}, {"sensitivity", test_sensitivity},
	{"pinned", test_pinned}, {"hex", test_hex},
	CU_TEST_INFO_NULL,
};

static CU_SuiteInfo suites[] = {
	{"digest", NULL, NULL, NULL, NULL, digest_tests},
	CU_SUITE_INFO_NULL,
};

int main(void)
{
	return mx_test_run(suites);
}
