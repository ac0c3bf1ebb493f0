/*
 * test_verify.c - CUnit tests of mxsink's message check (verify.c): a tagged
 * message verifies whatever its segmentation, a changed body byte is
 * corrupt, malformed or missing tags and a missing end of header count as
 * no tag, long lines and case are handled, DKIM-Signature is noticed.
 * Run by meson test (bench_verify).
 */
#include "mx_test.h"
#include "verify.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

static char msg[4096];
static size_t body_off;

/* header lines (already CRLF-terminated) + tag + blank line + body; the tag's digest is
 * the body's unless digest_delta */
static size_t build(const char *before, const char *tag_fmt, uint64_t digest_delta,
		    const char *body, const char *eol)
{
	uint64_t d = mxb_digest(body, strlen(body)) + digest_delta;
	char hex[17], tag[1024];
	mxb_hex64(hex, d);
	snprintf(tag, sizeof(tag), tag_fmt, hex);
	int n = snprintf(msg, sizeof(msg), "%s%s%s%s", before, tag, eol, eol);
	body_off = (size_t)n;
	n += snprintf(msg + n, sizeof(msg) - (size_t)n, "%s", body);
	return (size_t)n;
}

static enum mxb_verify_result run(const char *p, size_t n, const size_t *cuts, unsigned ncuts,
				  struct mxb_verify *v)
{
	mxb_verify_begin(v);
	size_t off = 0;
	for (unsigned i = 0; i <= ncuts; i++) {
		size_t end = i < ncuts ? cuts[i] : n;
		mxb_verify_data(v, (const uint8_t *)p + off, end - off);
		off = end;
	}
	return mxb_verify_end(v);
}

static const char body[] = "line one of the body\r\nline two\r\n";
static const char hdrs[] = "From: <dev1@fleet.test>\r\nTo: <ops0@d1.sink.test>\r\n"
			   "Subject: alert 7 from device 1\r\n";

/* Every two-way split of a tagged message verifies, with the tag's fields. */
static void test_ok_any_split(void)
{
	size_t n = build(hdrs, "X-Mxgen: 42 %s 123456", 0, body, "\r\n");
	struct mxb_verify v;
	for (size_t a = 0; a <= n; a++) {
		size_t cut[1] = {a};
		CU_ASSERT_EQUAL_FATAL(run(msg, n, cut, 1, &v), MXB_VERIFY_OK);
		CU_ASSERT_EQUAL(v.seq, 42);
		CU_ASSERT_EQUAL(v.send_us, 123456);
		CU_ASSERT_FALSE(v.have_dkim);
	}
	/* one byte at a time */
	size_t cuts[4096];
	for (size_t i = 1; i < n; i++)
		cuts[i - 1] = i;
	CU_ASSERT_EQUAL(run(msg, n, cuts, (unsigned)(n - 1), &v), MXB_VERIFY_OK);
}

/* Any changed body byte, a lost or an extra byte is corrupt. */
static void test_corrupt(void)
{
	size_t n = build(hdrs, "X-Mxgen: 1 %s 2", 0, body, "\r\n");
	struct mxb_verify v;
	for (size_t i = body_off; i < n; i++) {
		msg[i] ^= 0x01;
		CU_ASSERT_EQUAL(run(msg, n, NULL, 0, &v), MXB_VERIFY_CORRUPT);
		msg[i] ^= 0x01;
	}
	CU_ASSERT_EQUAL(run(msg, n - 1, NULL, 0, &v), MXB_VERIFY_CORRUPT);
	n = build(hdrs, "X-Mxgen: 1 %s 2", 1, body, "\r\n"); /* the tag's digest is off by one */
	CU_ASSERT_EQUAL(run(msg, n, NULL, 0, &v), MXB_VERIFY_CORRUPT);
}

/* Malformed tags, no tag, no end of header: no tag (never a crash, never a match). */
static void test_no_tag(void)
{
	static const char *const bad[] = {
		"X-Mxgen: 1 %s",		      /* a field missing */
		"X-Mxgen: %s 1 2",		      /* fields out of order */
		"X-Mxgen: 1 %s 2 3",		      /* one too many */
		"X-Mxgen: 1 %sf 2",		      /* 17 hex digits */
		"X-Mxgen: 12345678901234567890 %s 2", /* SEQ beyond 19 digits */
		"X-Mxgen: 1 %s 2x",		      /* junk after SENDUS */
		"X-Mxgen 1 %s 2",		      /* no colon */
		"X-Other: 1 %s 2",
	};
	struct mxb_verify v;
	for (unsigned i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		size_t n = build(hdrs, bad[i], 0, body, "\r\n");
		CU_ASSERT_EQUAL(run(msg, n, NULL, 0, &v), MXB_VERIFY_NO_TAG);
	}
	char hex[17];
	mxb_hex64(hex, 1);
	char *bad_hex = msg;
	int n = snprintf(bad_hex, sizeof(msg), "X-Mxgen: 1 %.15sg 2\r\n\r\nx", hex);
	CU_ASSERT_EQUAL(run(msg, (size_t)n, NULL, 0, &v), MXB_VERIFY_NO_TAG);
	/* the header never ends */
	size_t m = build(hdrs, "X-Mxgen: 1 %s 2", 0, body, "\r\n");
	CU_ASSERT_EQUAL(run(msg, body_off - 2, NULL, 0, &v), MXB_VERIFY_NO_TAG);
	(void)m;
	/* an empty message */
	CU_ASSERT_EQUAL(run("", 0, NULL, 0, &v), MXB_VERIFY_NO_TAG);
}

/* Lower-case name, tabs, LF-only lines; a long tag line is not a tag; DKIM-Signature. */
static void test_forms(void)
{
	struct mxb_verify v;
	size_t n = build(hdrs, "x-mxgen:\t9 %s\t8 ", 0, body, "\r\n");
	CU_ASSERT_EQUAL(run(msg, n, NULL, 0, &v), MXB_VERIFY_OK);
	CU_ASSERT_EQUAL(v.seq, 9);
	n = build("From: <a@b>\n", "X-Mxgen: 3 %s 4", 0, "body\n", "\n");
	CU_ASSERT_EQUAL(run(msg, n, NULL, 0, &v), MXB_VERIFY_OK);
	/* a DKIM-Signature longer than what is kept, before the tag */
	char dkim[1200] = "DKIM-Signature: v=1; a=rsa-sha256; b=";
	size_t l = strlen(dkim);
	memset(dkim + l, 'A', 900);
	memcpy(dkim + l + 900, "\r\n", 3);
	n = build(dkim, "X-Mxgen: 5 %s 6", 0, body, "\r\n");
	CU_ASSERT_EQUAL(run(msg, n, NULL, 0, &v), MXB_VERIFY_OK);
	CU_ASSERT_TRUE(v.have_dkim);
	/* an X- line longer than the kept part is ignored, the real tag after it counts */
	char longx[600] = "X-Long: ";
	memset(longx + 8, 'B', 400);
	memcpy(longx + 408, "\r\n", 3);
	n = build(longx, "X-Mxgen: 7 %s 8", 0, body, "\r\n");
	CU_ASSERT_EQUAL(run(msg, n, NULL, 0, &v), MXB_VERIFY_OK);
	CU_ASSERT_EQUAL(v.seq, 7);
	/* a tag padded beyond the kept length is not a tag */
	char pad[400];
	memset(pad, ' ', sizeof(pad) - 1);
	pad[sizeof(pad) - 1] = '\0';
	char fmt[512];
	snprintf(fmt, sizeof(fmt), "X-Mxgen: 7 %%s 8%s", pad);
	n = build(hdrs, fmt, 0, body, "\r\n");
	CU_ASSERT_EQUAL(run(msg, n, NULL, 0, &v), MXB_VERIFY_NO_TAG);
	/* an empty body */
	n = build(hdrs, "X-Mxgen: 1 %s 2", 0, "", "\r\n");
	CU_ASSERT_EQUAL(run(msg, n, NULL, 0, &v), MXB_VERIFY_OK);
}

static CU_TestInfo verify_tests[] = {
	{"ok_any_split", test_ok_any_split},
	{"corrupt", test_corrupt},
	{"no_tag", test_no_tag},
	{"forms", test_forms},
	CU_TEST_INFO_NULL,
};

static CU_SuiteInfo suites[] = {
	{"verify", NULL, NULL, NULL, NULL, verify_tests},
	CU_SUITE_INFO_NULL,
};

int main(void)
{
	return mx_test_run(suites);
}
