/* test_parse.c - SMTP syntax: paths, domains, literals, xtext, base64, UTF-8. */
#include "smtp.h"
#include "mx_test.h"

#include <errno.h>
#include <string.h>

#include "core.h"
#include "test_smtp.h"

static int path(const char *s, bool allow_null, bool utf8, struct smtp_address *a, size_t *used)
{
	return smtp_parse_path(s, strlen(s), allow_null, utf8, a, used);
}

static void test_simple_paths(void)
{
	struct smtp_address a;
	size_t used;

	CU_ASSERT_EQUAL(path("<dev@example.com>", false, false, &a, &used), 0);
	CU_ASSERT_STRING_EQUAL(a.text, "dev@example.com");
	CU_ASSERT_EQUAL(a.at, 3);
	CU_ASSERT_EQUAL(a.len, 15);
	CU_ASSERT_EQUAL(used, 17);
	CU_ASSERT_FALSE(a.literal || a.quoted || a.routed || a.utf8);

	CU_ASSERT_EQUAL(path("<first.last+tag@Sub.Example.COM> SIZE=10", false, false, &a, &used),
			0);
	CU_ASSERT_STRING_EQUAL(a.text, "first.last+tag@Sub.Example.COM");
	CU_ASSERT_EQUAL(used, 32);

	CU_ASSERT_EQUAL(path("<>", true, false, &a, &used), 0);
	CU_ASSERT_EQUAL(a.len, 0);
	CU_ASSERT_STRING_EQUAL(a.text, "");
	CU_ASSERT_EQUAL(used, 2);
	CU_ASSERT_EQUAL(path("<>", false, false, &a, &used), -EINVAL);

	/* without brackets (device firmware) */
	CU_ASSERT_EQUAL(path("dev@example.com NOTIFY=NEVER", false, false, &a, &used), 0);
	CU_ASSERT_STRING_EQUAL(a.text, "dev@example.com");
	CU_ASSERT_EQUAL(used, 15);

	CU_ASSERT_EQUAL(path("<Postmaster>", false, false, &a, &used), 0);
	CU_ASSERT_STRING_EQUAL(a.text, "Postmaster");
	CU_ASSERT_EQUAL(a.at, a.len);
	CU_ASSERT_EQUAL(path("<root>", false, false, &a, &used), -EINVAL);
}

static void test_literals(void)
{
	struct smtp_address a;
	size_t used;

	CU_ASSERT_EQUAL(path("<user@[192.0.2.10]>", false, false, &a, &used), 0);
	CU_ASSERT_STRING_EQUAL(a.text, "user@[192.0.2.10]");
	CU_ASSERT_TRUE(a.literal);
	CU_ASSERT_EQUAL(path("<user@[IPv6:2001:db8::1]>", false, false, &a, &used), 0);
	CU_ASSERT_STRING_EQUAL(a.text, "user@[IPv6:2001:db8::1]");
	CU_ASSERT_TRUE(a.literal);
	CU_ASSERT_EQUAL(path("<u@[ipv6:::ffff:192.0.2.1]>", false, false, &a, &used), 0);
	CU_ASSERT_STRING_EQUAL(a.text, "u@[ipv6:::ffff:192.0.2.1]");

	CU_ASSERT_EQUAL(smtp_address_literal_valid("[0.0.0.0]", 9), 0);
	CU_ASSERT_EQUAL(smtp_address_literal_valid("[255.255.255.255]", 17), 0);
	const char *bad[] = {
		"[256.1.1.1]", "[1.2.3]",      "[1.2.3.4.5]",  "[1..2.3]",
		"[1.2.3.4 ]",  "[0001.2.3.4]", "[IPv6:zz::1]", "[IPv6:1:2:3:4:5:6:7:8:9]",
		"[IPv6:]",     "[x-tag:abc]",  "[]",	       "1.2.3.4",
		"[1.2.3.4"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		CU_ASSERT_EQUAL(smtp_address_literal_valid(bad[i], strlen(bad[i])), -EINVAL);
	CU_ASSERT_EQUAL(path("<user@[300.0.2.10]>", false, false, &a, &used), -EINVAL);
	CU_ASSERT_EQUAL(path("<user@[192.0.2.10>", false, false, &a, &used), -EINVAL);
}

static void test_quoted_and_routes(void)
{
	struct smtp_address a;
	size_t used;

	CU_ASSERT_EQUAL(path("<\"user@other.com\"@example.com>", false, false, &a, &used), 0);
	CU_ASSERT_STRING_EQUAL(a.text, "\"user@other.com\"@example.com");
	CU_ASSERT_TRUE(a.quoted);
	CU_ASSERT_EQUAL(a.at, 16);
	CU_ASSERT_EQUAL(path("<\"a \\\"b\\\\ c\"@example.com>", false, false, &a, &used), 0);
	CU_ASSERT_STRING_EQUAL(a.text, "\"a \\\"b\\\\ c\"@example.com");
	CU_ASSERT_EQUAL(path("<\"a\\\x01\"@example.com>", false, false, &a, &used), -EINVAL);
	CU_ASSERT_EQUAL(path("<\"unterminated@example.com>", false, false, &a, &used), -EINVAL);
	CU_ASSERT_EQUAL(path("<\"\x7f\"@example.com>", false, false, &a, &used), -EINVAL);

	/* RFC 5321 4.1.2: the source route is parsed and dropped */
	CU_ASSERT_EQUAL(path("<@a.example,@b.example:user@c.example>", false, false, &a, &used), 0);
	CU_ASSERT_STRING_EQUAL(a.text, "user@c.example");
	CU_ASSERT_TRUE(a.routed);
	CU_ASSERT_EQUAL(used, 38);
	CU_ASSERT_EQUAL(path("<@a.example:user@c.example>", false, false, &a, &used), 0);
	CU_ASSERT_EQUAL(path("<@a.example,user@c.example>", false, false, &a, &used), -EINVAL);
	CU_ASSERT_EQUAL(path("<@:user@c.example>", false, false, &a, &used), -EINVAL);
	CU_ASSERT_EQUAL(path("<@-a.example:user@c.example>", false, false, &a, &used), -EINVAL);

	/* %-hack and !-path are syntactically fine local parts */
	CU_ASSERT_EQUAL(path("<user%other.com@example.com>", false, false, &a, &used), 0);
	CU_ASSERT_EQUAL(a.at, 14);
	CU_ASSERT_EQUAL(path("<other.com!user@example.com>", false, false, &a, &used), 0);
}

static void test_invalid_paths(void)
{
	struct smtp_address a;
	size_t used;
	char lp[80], dom[300], buf[400];

	const char *bad[] = {"<user@>",
			     "<@example.com>",
			     "<user>",
			     "<a..b@example.com>",
			     "<.a@example.com>",
			     "<a.@example.com>",
			     "<a@-example.com>",
			     "<a@example-.com>",
			     "<a@exa..mple.com>",
			     "<a@example.com",
			     "<a@example.com>junk",
			     "<a b@example.com>",
			     "<a@exa_mple.com>",
			     "<a(b)@example.com>",
			     "",
			     "<",
			     "<a@example.com.>",
			     "<<a@example.com>>"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int rc = path(bad[i], true, false, &a, &used);
		if (rc != -EINVAL)
			fprintf(stderr, "\n  '%s' gave %d\n", bad[i], rc);
		CU_ASSERT_EQUAL(rc, -EINVAL);
	}
	/* RFC 5321 4.5.3.1 size limits */
	memset(lp, 'a', 64);
	lp[64] = '\0';
	snprintf(buf, sizeof(buf), "<%s@example.com>", lp);
	CU_ASSERT_EQUAL(path(buf, false, false, &a, &used), 0);
	snprintf(buf, sizeof(buf), "<%sa@example.com>", lp);
	CU_ASSERT_EQUAL(path(buf, false, false, &a, &used), -ENAMETOOLONG);
	/* label of 64 */
	memset(dom, 'b', 64);
	dom[64] = '\0';
	snprintf(buf, sizeof(buf), "<a@%s.com>", dom);
	CU_ASSERT_EQUAL(path(buf, false, false, &a, &used), -EINVAL);
	/* domain of 257 in labels of 63 */
	size_t o = 0;
	for (int i = 0; i < 4; i++) {
		memset(dom + o, 'c', 63);
		o += 63;
		dom[o++] = '.';
	}
	memcpy(dom + o, "com", 4);
	snprintf(buf, sizeof(buf), "<a@%s>", dom);
	CU_ASSERT_EQUAL(path(buf, false, false, &a, &used), -ENAMETOOLONG);
	/* a 255-octet domain is fine by itself but the path would exceed 256 */
	CU_ASSERT_EQUAL(smtp_domain_valid(dom + 4, strlen(dom + 4), false), 0);
	snprintf(buf, sizeof(buf), "<%s@%s>", lp, dom + 4);
	CU_ASSERT_EQUAL(path(buf, false, false, &a, &used), -ENAMETOOLONG);
}

static void test_utf8(void)
{
	struct smtp_address a;
	size_t used;

	CU_ASSERT_EQUAL(path("<j\xc3\xb6rg@b\xc3\xbc"
			     "cher.example>",
			     false, false, &a, &used),
			-EILSEQ);
	CU_ASSERT_EQUAL(path("<j\xc3\xb6rg@b\xc3\xbc"
			     "cher.example>",
			     false, true, &a, &used),
			0);
	CU_ASSERT_TRUE(a.utf8);
	CU_ASSERT_STRING_EQUAL(a.text, "j\xc3\xb6rg@b\xc3\xbc"
				       "cher.example");
	CU_ASSERT_EQUAL(path("<j\xc3rg@example.com>", false, true, &a, &used), -EILSEQ);
	CU_ASSERT_EQUAL(smtp_utf8_valid("\xc0\xaf", 2), -EILSEQ);	  /* overlong '/' */
	CU_ASSERT_EQUAL(smtp_utf8_valid("\xe0\x80\xaf", 3), -EILSEQ);	  /* overlong */
	CU_ASSERT_EQUAL(smtp_utf8_valid("\xed\xa0\x80", 3), -EILSEQ);	  /* surrogate */
	CU_ASSERT_EQUAL(smtp_utf8_valid("\xf4\x90\x80\x80", 4), -EILSEQ); /* > U+10FFFF */
	CU_ASSERT_EQUAL(smtp_utf8_valid("\xf0\x9f\x93\xa7", 4), 0);
	CU_ASSERT_EQUAL(smtp_utf8_valid("\xf0\x9f\x93", 3), -EILSEQ);
}

static void test_xtext_base64(void)
{
	uint8_t out[64];
	char enc[64];

	CU_ASSERT_EQUAL(smtp_xtext_valid("QQ314159", 8), 0);
	CU_ASSERT_EQUAL(smtp_xtext_valid("a+2Bb", 5), 0);
	CU_ASSERT_EQUAL(smtp_xtext_valid("a+2bb", 5), -EINVAL);
	CU_ASSERT_EQUAL(smtp_xtext_valid("a+2", 3), -EINVAL);
	CU_ASSERT_EQUAL(smtp_xtext_valid("a=b", 3), -EINVAL);
	CU_ASSERT_EQUAL(smtp_xtext_valid("a b", 3), -EINVAL);

	CU_ASSERT_EQUAL(smtp_base64_decode("AGRldjEAc2VjcmV0", 16, out, sizeof(out)), 12);
	CU_ASSERT_EQUAL(memcmp(out, "\0dev1\0secret", 12), 0);
	CU_ASSERT_EQUAL(smtp_base64_decode("YQ==", 4, out, sizeof(out)), 1);
	CU_ASSERT_EQUAL(smtp_base64_decode("YWI=", 4, out, sizeof(out)), 2);
	CU_ASSERT_EQUAL(smtp_base64_decode("", 0, out, sizeof(out)), 0);
	CU_ASSERT_EQUAL(smtp_base64_decode("YQ=", 3, out, sizeof(out)), -EINVAL);
	CU_ASSERT_EQUAL(smtp_base64_decode("Y===", 4, out, sizeof(out)), -EINVAL);
	CU_ASSERT_EQUAL(smtp_base64_decode("YQ==YQ==", 8, out, sizeof(out)), -EINVAL);
	CU_ASSERT_EQUAL(smtp_base64_decode("Y=Q=", 4, out, sizeof(out)), -EINVAL);
	CU_ASSERT_EQUAL(smtp_base64_decode("YW*j", 4, out, sizeof(out)), -EINVAL);
	CU_ASSERT_EQUAL(smtp_base64_decode("YWJj", 4, out, 2), -ENOSPC);
	CU_ASSERT_EQUAL(smtp_base64_encode((const uint8_t *)"Username:", 9, enc, sizeof(enc)), 12);
	CU_ASSERT_STRING_EQUAL(enc, "VXNlcm5hbWU6");
	CU_ASSERT_EQUAL(smtp_base64_encode((const uint8_t *)"ab", 2, enc, sizeof(enc)), 4);
	CU_ASSERT_STRING_EQUAL(enc, "YWI=");
	CU_ASSERT_EQUAL(smtp_base64_encode((const uint8_t *)"abcd", 4, enc, 8), -ENOSPC);
}

static void test_domains(void)
{
	CU_ASSERT_EQUAL(smtp_domain_valid("a", 1, false), 0);
	CU_ASSERT_EQUAL(smtp_domain_valid("1-2.x9", 6, false), 0);
	CU_ASSERT_EQUAL(smtp_domain_valid("a-", 2, false), -EINVAL);
	CU_ASSERT_EQUAL(smtp_domain_valid("", 0, false), -EINVAL);
	CU_ASSERT_EQUAL(smtp_domain_valid(".a", 2, false), -EINVAL);
	CU_ASSERT_EQUAL(smtp_domain_valid("a\0b", 3, false), -EINVAL);
	CU_ASSERT_EQUAL(smtp_domain_valid("m\xc3\xbc.de", 6, false), -EINVAL);
	CU_ASSERT_EQUAL(smtp_domain_valid("m\xc3\xbc.de", 6, true), 0);
	CU_ASSERT_EQUAL(smtp_domain_valid("m\xc3.de", 5, true), -EINVAL);
}

static void test_conf_load(void)
{
	const char *text = "[smtp]\nhostname = mx.fleet.example\nmax_message_size = 20M\n"
			   "max_recipients = 500\ncommand_timeout = 2m\ndata_timeout = 90s\n"
			   "bare_lf = normalise\nlong_lines = allow\n"
			   "local_domains = example.com, [192.0.2.10] fleet.example\n"
			   "[relay]\nallow_networks = 10.77.0.0/16, 192.168.1.0/24\n";
	struct smtp_server_conf_store *store = NULL;
	struct smtp_server_conf conf;
	struct cfg_file *cf;
	char err[256] = "";

	CU_ASSERT_EQUAL_FATAL(cfg_parse_string(text, "t.conf", &cf, err, sizeof(err)), 0);
	CU_ASSERT_EQUAL_FATAL(smtp_server_conf_load(cf, &conf, &store, err, sizeof(err)), 0);
	CU_ASSERT_STRING_EQUAL(conf.hostname, "mx.fleet.example");
	CU_ASSERT_EQUAL(conf.max_message_size, 20u << 20);
	CU_ASSERT_EQUAL(conf.max_recipients, 500);
	CU_ASSERT_EQUAL(conf.timeout_command_us, 120000000ull);
	CU_ASSERT_EQUAL(conf.timeout_data_us, 90000000ull);
	CU_ASSERT_EQUAL(conf.bare_eol, SMTP_BARE_EOL_NORMALISE);
	CU_ASSERT_EQUAL(conf.long_line, SMTP_LONG_LINE_ALLOW);
	CU_ASSERT_EQUAL(conf.max_command_line, 512);
	CU_ASSERT_EQUAL_FATAL(conf.local_domain_count, 3);
	CU_ASSERT_STRING_EQUAL(conf.local_domains[1], "[192.0.2.10]");
	CU_ASSERT_EQUAL(conf.relay_domain_count, 0);
	CU_ASSERT_EQUAL_FATAL(conf.allow_network_count, 2);
	CU_ASSERT_EQUAL(conf.allow_networks[1].addr, 0xc0a80100u);
	CU_ASSERT_EQUAL(conf.allow_networks[1].len, 24);
	CU_ASSERT_EQUAL(smtp_server_conf_check(&conf, err, sizeof(err)), 0);
	smtp_server_conf_store_free(store);
	cfg_free(cf);

	static const struct {
		const char *text, *err;
	} bad[] = {
		{"[smtp]\nmax_recipients = 99\n",
		 "t.conf:2: [smtp] max_recipients: expected a number in 100..100000"},
		{"[smtp]\nhostname = bad_host!\n",
		 "t.conf:2: [smtp] hostname: not a valid domain name"},
		{"[smtp]\n\nbare_lf = accept\n",
		 "t.conf:3: [smtp] bare_lf: expected reject or normalise"},
		{"[smtp]\nlocal_domains = a.example, -b.example\n",
		 "t.conf:2: [smtp] local_domains: expected domains or [address literals]"},
		{"[relay]\nallow_networks = 10.0.0.0/33\n",
		 "t.conf:2: [relay] allow_networks: expected A.B.C.D/len, ..."},
		{"[smtp]\ndata_timeout = 0s\n",
		 "t.conf:2: [smtp] data_timeout: expected a duration of 1s..1h"},
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		store = NULL;
		CU_ASSERT_EQUAL_FATAL(
			cfg_parse_string(bad[i].text, "t.conf", &cf, err, sizeof(err)), 0);
		CU_ASSERT_EQUAL(smtp_server_conf_load(cf, &conf, &store, err, sizeof(err)),
				-EINVAL);
		CU_ASSERT_PTR_NULL(store);
		if (strcmp(err, bad[i].err) != 0)
			fprintf(stderr, "\n  got '%s'\n  want '%s'\n", err, bad[i].err);
		CU_ASSERT_STRING_EQUAL(err, bad[i].err);
		cfg_free(cf);
	}
}

CU_TestInfo parse_tests[] = {
	{"simple paths", test_simple_paths},
	{"address literals", test_literals},
	{"quoted local parts and source routes", test_quoted_and_routes},
	{"invalid paths and size limits", test_invalid_paths},
	{"SMTPUTF8 and UTF-8 validity", test_utf8},
	{"xtext and base64", test_xtext_base64},
	{"domains", test_domains},
	{"server configuration from INI", test_conf_load},
	CU_TEST_INFO_NULL,
};
