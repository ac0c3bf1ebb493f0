/* test_cfg.c - the INI reader and value parsers. */
#include "core.h"
#include "mx_test.h"

#include <errno.h>
#include <string.h>

static void test_sections_and_labels(void)
{
	struct cfg_file *cf;
	char err[256];
	const char *text = "# comment\n[eal]\nargs = --no-huge -m 512 --no-pci\n\n"
			   "[port.0]\naddr = 10.77.0.2/24\n"
			   "[dkim \"example.com\"]\nselector = s1 \n";
	CU_ASSERT_EQUAL_FATAL(cfg_parse_string(text, "t.conf", &cf, err, sizeof(err)), 0);
	CU_ASSERT_EQUAL(cf->section_count, 3);
	struct cfg_entry *e = cfg_get(cf, "eal", NULL, "args");
	CU_ASSERT_PTR_NOT_NULL_FATAL(e);
	CU_ASSERT_STRING_EQUAL(e->value, "--no-huge -m 512 --no-pci");
	CU_ASSERT_EQUAL(e->line, 3);
	e = cfg_get(cf, "dkim", "example.com", "selector");
	CU_ASSERT_PTR_NOT_NULL_FATAL(e);
	CU_ASSERT_STRING_EQUAL(e->value, "s1");
	CU_ASSERT_PTR_NULL(cfg_get(cf, "dkim", NULL, "selector"));
	CU_ASSERT_FALSE(cf->entries[1].used);
	cfg_free(cf);
}

static void test_syntax_errors_have_line(void)
{
	struct cfg_file *cf;
	char err[256];
	CU_ASSERT_EQUAL(cfg_parse_string("[a]\nx = 1\nbogus\n", "f", &cf, err, sizeof(err)),
			-EINVAL);
	CU_ASSERT_STRING_EQUAL(err, "f:3: expected 'key = value'");
	CU_ASSERT_EQUAL(cfg_parse_string("x = 1\n", "f", &cf, err, sizeof(err)), -EINVAL);
	CU_ASSERT_STRING_EQUAL(err, "f:1: key outside of any [section]");
	CU_ASSERT_EQUAL(cfg_parse_string("[a\n", "f", &cf, err, sizeof(err)), -EINVAL);
	CU_ASSERT_EQUAL(cfg_parse_string("[d \"\"]\n", "f", &cf, err, sizeof(err)), -EINVAL);
	CU_ASSERT_EQUAL(cfg_parse_string("[a b]\n", "f", &cf, err, sizeof(err)), -EINVAL);
}

static void test_values(void)
{
	uint64_t v;
	bool b;
	uint32_t a;
	uint8_t l;
	CU_ASSERT_EQUAL(cfg_parse_u64("100", 1, 1000, &v), 0);
	CU_ASSERT_EQUAL(v, 100);
	CU_ASSERT_EQUAL(cfg_parse_u64("1001", 1, 1000, &v), -ERANGE);
	CU_ASSERT_EQUAL(cfg_parse_u64("12x", 1, 1000, &v), -EINVAL);
	CU_ASSERT_EQUAL(cfg_parse_u64("-1", 0, 1000, &v), -EINVAL);
	CU_ASSERT_EQUAL(cfg_parse_u64("99999999999999999999999", 0, UINT64_MAX, &v), -ERANGE);
	CU_ASSERT_EQUAL(cfg_parse_size("256K", &v), 0);
	CU_ASSERT_EQUAL(v, 262144);
	CU_ASSERT_EQUAL(cfg_parse_size("10M", &v), 0);
	CU_ASSERT_EQUAL(v, 10485760);
	CU_ASSERT_EQUAL(cfg_parse_size("10Q", &v), -EINVAL);
	CU_ASSERT_EQUAL(cfg_parse_duration_us("200us", &v), 0);
	CU_ASSERT_EQUAL(v, 200);
	CU_ASSERT_EQUAL(cfg_parse_duration_us("5d", &v), 0);
	CU_ASSERT_EQUAL(v, 5ull * 86400 * 1000000);
	CU_ASSERT_EQUAL(cfg_parse_duration_us("30", &v), 0);
	CU_ASSERT_EQUAL(v, 30000000);
	CU_ASSERT_EQUAL(cfg_parse_bool("yes", &b), 0);
	CU_ASSERT_TRUE(b);
	CU_ASSERT_EQUAL(cfg_parse_bool("maybe", &b), -EINVAL);
	CU_ASSERT_EQUAL(cfg_parse_ipv4_prefix("10.77.0.2/24", &a, &l), 0);
	CU_ASSERT_EQUAL(a, 0x0a4d0002);
	CU_ASSERT_EQUAL(l, 24);
	CU_ASSERT_EQUAL(cfg_parse_ipv4_prefix("10.77.0.2/33", &a, &l), -ERANGE);
	CU_ASSERT_EQUAL(cfg_parse_ipv4_prefix("10.77.0/24", &a, &l), -EINVAL);
}

static void test_key_readers(void)
{
	struct cfg_file *cf;
	struct cfg_report r = {0};
	char err[256], str[8] = "dflt";
	uint64_t n = 7, sz = 1, d = 2;
	const char *text = "[s]\nn = 5000\nsz = 64K\nd = 10ms\nlong = abcdefghij\n"
			   "[t]\nn = x\nsz = 1G\nd = soon\n";
	CU_ASSERT_EQUAL_FATAL(cfg_parse_string(text, "k.conf", &cf, err, sizeof(err)), 0);
	cfg_key_u64(cf, &r, "s", "n", 0, 10000, &n);
	cfg_key_size(cf, &r, "s", "sz", 0, 1 << 20, &sz);
	cfg_key_duration(cf, &r, "s", "d", 0, 1000000, &d);
	cfg_key_str(cf, &r, "s", "absent", str, sizeof(str));
	CU_ASSERT_EQUAL(r.count, 0);
	CU_ASSERT_EQUAL(n, 5000);
	CU_ASSERT_EQUAL(sz, 65536);
	CU_ASSERT_EQUAL(d, 10000);
	CU_ASSERT_STRING_EQUAL(str, "dflt"); /* absent: unchanged */
	cfg_key_str(cf, &r, "s", "long", str, sizeof(str));
	cfg_key_u64(cf, &r, "t", "n", 0, 10, &n);
	cfg_key_size(cf, &r, "t", "sz", 0, 1 << 20, &sz);
	cfg_key_duration(cf, &r, "t", "d", 0, 1000000, &d);
	CU_ASSERT_EQUAL(r.count, 4);
	CU_ASSERT_EQUAL(n, 5000); /* bad values leave the old value */
	CU_ASSERT_PTR_NOT_NULL(strstr(r.text, "k.conf:5: long: value too long (max 7)"));
	CU_ASSERT_PTR_NOT_NULL(strstr(r.text, "k.conf:7: n = x: not a number"));
	CU_ASSERT_PTR_NOT_NULL(strstr(r.text, "k.conf:8: sz = 1G: out of range"));
	CU_ASSERT_PTR_NOT_NULL(strstr(r.text, "k.conf:9: d = soon: not a duration"));
	static const char *const known[] = {"s", NULL};
	struct cfg_report u = {0};
	cfg_check_unknown(cf, known, &u);
	CU_ASSERT_EQUAL(u.count, 1); /* [t] is unknown; every key of [s] was read */
	CU_ASSERT_PTR_NOT_NULL(strstr(u.text, "k.conf:6: unknown section [t]"));
	cfg_free(cf);
}

/* mx_u64_dec (lib/core, not cfg; this is the core module's one suite): digits, no NUL. */
static void test_u64_dec(void)
{
	char d[MX_U64_DEC_MAX + 1];
	memset(d, 'x', sizeof(d));
	CU_ASSERT_EQUAL(mx_u64_dec(0, d), 1);
	CU_ASSERT_NSTRING_EQUAL(d, "0x", 2);
	CU_ASSERT_EQUAL(mx_u64_dec(10, d), 2);
	CU_ASSERT_NSTRING_EQUAL(d, "10", 2);
	CU_ASSERT_EQUAL(mx_u64_dec(UINT64_MAX, d), 20);
	CU_ASSERT_NSTRING_EQUAL(d, "18446744073709551615", 20);
	CU_ASSERT_EQUAL(d[20], 'x');
}

static CU_TestInfo cfg_tests[] = {
	{"key readers report file:line and keep defaults", test_key_readers},
	{"sections and labels", test_sections_and_labels},
	{"syntax errors carry file:line", test_syntax_errors_have_line},
	{"value parsers", test_values},
	{"decimal digits without printf", test_u64_dec},
	CU_TEST_INFO_NULL,
};

static CU_SuiteInfo suites[] = {
	{"cfg", NULL, NULL, NULL, NULL, cfg_tests},
	CU_SUITE_INFO_NULL,
};

int main(void)
{
	return mx_test_run(suites);
}
