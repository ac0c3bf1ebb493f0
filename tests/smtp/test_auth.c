/* test_auth.c - the AUTH credentials file (lib/smtp/auth.c). */
#include "smtp.h"
#include "mx_test.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "test_smtp.h"

/* Reference values computed independently (Python hashlib). */
static const char *ref_file =
	"# fleet credentials\n"
	"\n"
	"legacy:$sha256$00112233445566778899aabbccddeeff$"
	"ff36637cf1fad2ac4081c1697c9671120c011374d9ac340bb11d39b18cb7172a\n"
	"  cam-7:$pbkdf2-sha256$1000$a1a2a3a4a5a6a7a8$"
	"bebde86a398ee7290d08696be4ef38a6873f8ee127890f071675482025a02455  \r\n";

static void test_reference_hashes(void)
{
	struct smtp_cred_db *db = NULL;
	char err[256] = "";

	CU_ASSERT_EQUAL_FATAL(smtp_cred_load_string(ref_file, "creds", &db, err, sizeof(err)), 0);
	CU_ASSERT_EQUAL(smtp_cred_count(db), 2);
	CU_ASSERT_EQUAL(smtp_cred_verify(db, "legacy", "hunter2"), 0);
	CU_ASSERT_EQUAL(smtp_cred_verify(db, "legacy", "hunter3"), -EACCES);
	CU_ASSERT_EQUAL(smtp_cred_verify(db, "legacy", ""), -EACCES);
	CU_ASSERT_EQUAL(smtp_cred_verify(db, "cam-7", "pw-1"), 0);
	CU_ASSERT_EQUAL(smtp_cred_verify(db, "cam-7", "pw-2"), -EACCES);
	CU_ASSERT_EQUAL(smtp_cred_verify(db, "cam-8", "pw-1"), -EACCES);
	CU_ASSERT_EQUAL(smtp_cred_verify(db, "Legacy", "hunter2"), -EACCES);
	smtp_cred_free(db);
}

static void test_make_line_roundtrip(void)
{
	char line[512], line2[512], text[1100];
	struct smtp_cred_db *db = NULL;

	CU_ASSERT_TRUE_FATAL(smtp_cred_make_line(line, sizeof(line), "dev1", "s3cret", 1000) > 0);
	CU_ASSERT_EQUAL(strncmp(line, "dev1:$pbkdf2-sha256$1000$", 25), 0);
	CU_ASSERT_TRUE_FATAL(smtp_cred_make_line(line2, sizeof(line2), "dev2", "s3cret", 1000) > 0);
	/* random salts: the same password never gives the same line */
	CU_ASSERT_STRING_NOT_EQUAL(line + 5, line2 + 5);
	snprintf(text, sizeof(text), "%s\n%s\n", line, line2);
	CU_ASSERT_EQUAL_FATAL(smtp_cred_load_string(text, "t", &db, NULL, 0), 0);
	CU_ASSERT_EQUAL(smtp_cred_verify(db, "dev1", "s3cret"), 0);
	CU_ASSERT_EQUAL(smtp_cred_verify(db, "dev2", "s3cret"), 0);
	CU_ASSERT_EQUAL(smtp_cred_verify(db, "dev1", "s3creT"), -EACCES);
	smtp_cred_free(db);

	CU_ASSERT_EQUAL(smtp_cred_make_line(line, sizeof(line), "a:b", "x", 1000), -EINVAL);
	CU_ASSERT_EQUAL(smtp_cred_make_line(line, sizeof(line), "a b", "x", 1000), -EINVAL);
	CU_ASSERT_EQUAL(smtp_cred_make_line(line, sizeof(line), "ab", "x", 10), -EINVAL);
	CU_ASSERT_EQUAL(smtp_cred_make_line(line, 20, "ab", "x", 1000), -ENOSPC);
}

static void expect_error(const char *text, const char *msg)
{
	struct smtp_cred_db *db = NULL;
	char err[256] = "";

	CU_ASSERT_TRUE(smtp_cred_load_string(text, "f", &db, err, sizeof(err)) < 0);
	CU_ASSERT_PTR_NULL(db);
	if (strcmp(err, msg) != 0)
		fprintf(stderr, "\n  got '%s' want '%s'\n", err, msg);
	CU_ASSERT_STRING_EQUAL(err, msg);
}

static void test_bad_lines(void)
{
	const char *h = "ff36637cf1fad2ac4081c1697c9671120c011374d9ac340bb11d39b18cb7172a";
	char buf[512];

	expect_error("x\n", "f:1: expected 'user:$scheme$...'");
	expect_error("# c\nu:sha256$00$00\n", "f:2: expected '$' after the user name");
	expect_error("u:$md5$0011$00\n", "f:1: unknown scheme (sha256 or pbkdf2-sha256)");
	expect_error("u:$sha256$00$00\n", "f:1: salt must be 4..64 bytes of hex");
	expect_error("u:$sha256$0011223g$00\n", "f:1: salt must be 4..64 bytes of hex");
	expect_error("u:$sha256$00112233$0011\n",
		     "f:1: hash must be 32 bytes of hex, last on the line");
	expect_error("u:$pbkdf2-sha256$999$00112233$00\n",
		     "f:1: iteration count out of range (1000..10000000)");
	expect_error("u:$pbkdf2-sha256$12a$00112233$00\n", "f:1: bad iteration count");
	snprintf(buf, sizeof(buf), "u:$sha256$00112233$%s$extra\n", h);
	expect_error(buf, "f:1: hash must be 32 bytes of hex, last on the line");
	snprintf(buf, sizeof(buf), "u:$sha256$00112233$%s\nu:$sha256$00112233$%s\n", h, h);
	expect_error(buf, "f: duplicate user");
}

static void test_load_file(void)
{
	char path[] = "/tmp/mx-cred-XXXXXX";
	struct smtp_cred_db *db = NULL;
	char err[256];
	int fd = mkstemp(path);

	CU_ASSERT_TRUE_FATAL(fd >= 0);
	CU_ASSERT_EQUAL(write(fd, ref_file, strlen(ref_file)), (ssize_t)strlen(ref_file));
	close(fd);
	CU_ASSERT_EQUAL_FATAL(smtp_cred_load(path, &db, err, sizeof(err)), 0);
	CU_ASSERT_EQUAL(smtp_cred_verify(db, "cam-7", "pw-1"), 0);
	smtp_cred_free(db);
	unlink(path);
	CU_ASSERT_EQUAL(smtp_cred_load(path, &db, err, sizeof(err)), -ENOENT);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "No such file"));
}

CU_TestInfo auth_tests[] = {
	{"reference hashes (sha256, pbkdf2)", test_reference_hashes},
	{"make_line round trip", test_make_line_roundtrip},
	{"bad lines give file:line", test_bad_lines},
	{"load from file", test_load_file},
	CU_TEST_INFO_NULL,
};
