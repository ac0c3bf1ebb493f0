/* test_codec.c - RFC 1035 codec: round trips and every malformed-response case. */
#include "dns.h"
#include "fake_upstream.h"
#include "test_dns.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static struct dns_msg msg;

static const uint8_t tlsa_data[32] = {1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11,
				      12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22,
				      23, 24, 25, 26, 27, 28, 29, 30, 31, 32};
static const uint8_t txt_data[] = "\x0bv=spf1 -all\x03"
				  "abc";

/* A response with one record of every supported type. */
static int build_all(uint8_t *buf, size_t cap)
{
	struct dns_builder b;
	struct dns_rr a = RR_A("Example.COM", 300, IP4(192, 0, 2, 1));
	struct dns_rr aaaa = {
		.name = "example.com", .type = DNS_T_AAAA, .rclass = DNS_C_IN, .ttl = 301};
	struct dns_rr mx = RR_MX("example.com", 302, 10, "mx1.example.com");
	struct dns_rr cname = RR_CNAME("www.example.com", 303, "example.com");
	struct dns_rr txt = {.name = "example.com",
			     .type = DNS_T_TXT,
			     .rclass = DNS_C_IN,
			     .ttl = 304,
			     .txt = {txt_data, sizeof(txt_data) - 1}};
	struct dns_rr tlsa = {.name = "_25._tcp.mx1.example.com",
			      .type = DNS_T_TLSA,
			      .rclass = DNS_C_IN,
			      .ttl = 305,
			      .tlsa = {3, 1, 1, tlsa_data, sizeof(tlsa_data)}};
	struct dns_rr soa = zone_soa;
	for (int i = 0; i < 16; i++)
		aaaa.aaaa[i] = (uint8_t)(0x20 + i);
	dns_builder_init(&b, buf, cap, 0x1234, DNS_F_QR | DNS_F_RD | DNS_F_RA | DNS_F_AD,
			 "example.com", DNS_T_MX, DNS_C_IN);
	dns_builder_add(&b, DNS_SEC_ANSWER, &a);
	dns_builder_add(&b, DNS_SEC_ANSWER, &aaaa);
	dns_builder_add(&b, DNS_SEC_ANSWER, &mx);
	dns_builder_add(&b, DNS_SEC_ANSWER, &cname);
	dns_builder_add(&b, DNS_SEC_ANSWER, &txt);
	dns_builder_add(&b, DNS_SEC_ANSWER, &tlsa);
	dns_builder_add(&b, DNS_SEC_AUTHORITY, &soa);
	dns_builder_add_opt(&b, 1232);
	return dns_builder_finish(&b);
}

static void test_roundtrip_all_types(void)
{
	uint8_t buf[1024];
	enum dns_malformed why;
	int len = build_all(buf, sizeof(buf));
	CU_ASSERT_FATAL(len > 0);
	CU_ASSERT_EQUAL_FATAL(dns_msg_parse(&msg, buf, (size_t)len, &why), 0);
	CU_ASSERT_EQUAL(why, DNS_MAL_NONE);
	CU_ASSERT_EQUAL(msg.id, 0x1234);
	CU_ASSERT(msg.flags & DNS_F_AD);
	CU_ASSERT_STRING_EQUAL(msg.qname, "example.com");
	CU_ASSERT_EQUAL(msg.qtype, DNS_T_MX);
	CU_ASSERT_EQUAL(msg.count[DNS_SEC_ANSWER], 6);
	CU_ASSERT_EQUAL(msg.count[DNS_SEC_AUTHORITY], 1);
	CU_ASSERT_EQUAL(msg.count[DNS_SEC_ADDITIONAL], 0);
	CU_ASSERT(msg.edns);
	CU_ASSERT_EQUAL(msg.edns_udp, 1232);
	CU_ASSERT_EQUAL_FATAL(msg.rr_count, 7);
	const struct dns_rr *r = msg.rr;
	CU_ASSERT(dns_name_equal(r[0].name, "example.com")); /* compressed against the question */
	CU_ASSERT_EQUAL(r[0].type, DNS_T_A);
	CU_ASSERT_EQUAL(r[0].ttl, 300);
	CU_ASSERT_EQUAL(r[0].a, IP4(192, 0, 2, 1));
	CU_ASSERT_EQUAL(r[1].type, DNS_T_AAAA);
	CU_ASSERT_EQUAL(r[1].aaaa[0], 0x20);
	CU_ASSERT_EQUAL(r[1].aaaa[15], 0x2f);
	CU_ASSERT_EQUAL(r[2].mx.pref, 10);
	CU_ASSERT_STRING_EQUAL(r[2].mx.host, "mx1.example.com");
	CU_ASSERT_STRING_EQUAL(r[3].name, "www.example.com");
	CU_ASSERT_STRING_EQUAL(r[3].target, "example.com");
	CU_ASSERT_EQUAL(r[4].txt.len, sizeof(txt_data) - 1);
	CU_ASSERT_EQUAL(memcmp(r[4].txt.data, txt_data, sizeof(txt_data) - 1), 0);
	CU_ASSERT_STRING_EQUAL(r[5].name, "_25._tcp.mx1.example.com");
	CU_ASSERT_EQUAL(r[5].tlsa.usage, 3);
	CU_ASSERT_EQUAL(r[5].tlsa.selector, 1);
	CU_ASSERT_EQUAL(r[5].tlsa.mtype, 1);
	CU_ASSERT_EQUAL(r[5].tlsa.len, 32);
	CU_ASSERT_EQUAL(memcmp(r[5].tlsa.data, tlsa_data, 32), 0);
	CU_ASSERT_EQUAL(r[6].type, DNS_T_SOA);
	CU_ASSERT_STRING_EQUAL(r[6].soa.mname, "ns.example");
	CU_ASSERT_STRING_EQUAL(r[6].soa.rname, "hostmaster.example");
	CU_ASSERT_EQUAL(r[6].soa.minimum, 300);
	CU_ASSERT_EQUAL(r[6].soa.expire, 86400);
	/* Compression: "example.com" written once in full, so the message is short. */
	CU_ASSERT(len < 330);
}

static void test_query_encode(void)
{
	uint8_t buf[512];
	int len = dns_encode_query(buf, sizeof(buf), 0xbeef, "mx.Example.org.", DNS_T_AAAA, true);
	CU_ASSERT_FATAL(len > 0);
	CU_ASSERT_EQUAL_FATAL(dns_msg_parse(&msg, buf, (size_t)len, NULL), 0);
	CU_ASSERT_EQUAL(msg.id, 0xbeef);
	CU_ASSERT_EQUAL(msg.flags, DNS_F_RD);
	CU_ASSERT_STRING_EQUAL(msg.qname, "mx.Example.org");
	CU_ASSERT_EQUAL(msg.qtype, DNS_T_AAAA);
	CU_ASSERT_EQUAL(msg.qclass, DNS_C_IN);
	CU_ASSERT(msg.edns);
	CU_ASSERT_EQUAL(msg.edns_udp, DNS_EDNS_UDP_SIZE);
	CU_ASSERT_EQUAL(msg.rr_count, 0);
	CU_ASSERT_EQUAL(len, 12 + 16 + 4 + 11);
	CU_ASSERT_EQUAL(dns_encode_query(buf, 20, 1, "example.org", DNS_T_A, false), -ENOSPC);
	char label[80];
	memset(label, 'a', 64);
	label[64] = '\0';
	CU_ASSERT_EQUAL(dns_encode_query(buf, sizeof(buf), 1, label, DNS_T_A, false), -EINVAL);
	CU_ASSERT_EQUAL(dns_encode_query(buf, sizeof(buf), 1, "a..b", DNS_T_A, false), -EINVAL);
	/* Root name is legal. */
	CU_ASSERT_EQUAL(dns_encode_query(buf, sizeof(buf), 1, ".", DNS_T_SOA, false), 17);
}

static void test_truncation_every_offset(void)
{
	uint8_t buf[1024];
	int len = build_all(buf, sizeof(buf));
	CU_ASSERT_FATAL(len > 0);
	unsigned rejected = 0;
	for (int cut = 0; cut < len; cut++) {
		enum dns_malformed why = DNS_MAL_NONE;
		/* A copy exactly @cut long, so ASan catches any read past it. */
		uint8_t *copy = malloc((size_t)cut + 1);
		memcpy(copy, buf, (size_t)cut);
		int rc = dns_msg_parse(&msg, copy, (size_t)cut, &why);
		free(copy);
		if (rc == -EBADMSG && why != DNS_MAL_NONE)
			rejected++;
	}
	CU_ASSERT_EQUAL(rejected, (unsigned)len);
}

static const uint8_t hdr_resp1[12] = {0x12, 0x34, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0};

static enum dns_malformed parse_why(const uint8_t *p, size_t len)
{
	enum dns_malformed why = DNS_MAL_NONE;
	if (dns_msg_parse(&msg, p, len, &why) == 0)
		return DNS_MAL_NONE;
	return why;
}

static void test_pointer_attacks(void)
{
	uint8_t p[600];
	/* Question name is a pointer to itself. */
	memcpy(p, hdr_resp1, 12);
	p[5] = 1;
	p[7] = 0;
	p[12] = 0xc0;
	p[13] = 12;
	p[14] = 0;
	p[15] = 1;
	p[16] = 0;
	p[17] = 1;
	CU_ASSERT_EQUAL(parse_why(p, 18), DNS_MAL_PTR_FORWARD);
	/* Forward pointer. */
	p[13] = 16;
	CU_ASSERT_EQUAL(parse_why(p, 18), DNS_MAL_PTR_FORWARD);

	/* Answer owner pointing to itself: a loop. */
	size_t o = 0;
	memcpy(p, hdr_resp1, 12);
	o = 12;
	memcpy(p + o,
	       "\x01"
	       "a\x00\x00\x01\x00\x01",
	       7);
	o += 7;
	size_t owner = o;
	p[o++] = 0xc0;
	p[o++] = (uint8_t)owner;
	memcpy(p + o, "\x00\x01\x00\x01\x00\x00\x00\x10\x00\x04\x01\x02\x03\x04", 14);
	o += 14;
	CU_ASSERT_EQUAL(parse_why(p, o), DNS_MAL_PTR_FORWARD);
	/* Two pointers pointing at each other: the second is forward of the first run. */
	p[owner + 1] = (uint8_t)(owner + 2);
	CU_ASSERT_EQUAL(parse_why(p, o), DNS_MAL_PTR_FORWARD);

	/* A chain of 40 strictly backwards pointers (inside an unknown record's RDATA),
	 * used as the owner of the next record: too many jumps. */
	uint8_t m3[400];
	memcpy(m3, hdr_resp1, 12);
	m3[7] = 2;
	size_t so = 12;
	memcpy(m3 + so, "\x00\x00\x01\x00\x01", 5);
	so += 5;
	memcpy(m3 + so, "\x00\xff\x00\x00\x01\x00\x00\x00\x10", 9); /* root, type 0xff00 */
	so += 9;
	size_t rdlen_at = so;
	so += 2;
	size_t rd0 = so;
	m3[so++] = 0;
	for (int i = 0; i < 40; i++) {
		size_t prev = (i == 0) ? rd0 : so - 2;
		m3[so] = 0xc0;
		m3[so + 1] = (uint8_t)prev;
		so += 2;
	}
	size_t chain_end = so - 2;
	m3[rdlen_at] = 0;
	m3[rdlen_at + 1] = (uint8_t)(so - rd0);
	m3[so++] = 0xc0;
	m3[so++] = (uint8_t)chain_end;
	memcpy(m3 + so, "\x00\x01\x00\x01\x00\x00\x00\x10\x00\x04\x01\x02\x03\x04", 14);
	so += 14;
	CU_ASSERT_EQUAL(parse_why(m3, so), DNS_MAL_PTR_LOOP);
	/* With 20 pointers it is fine. */
	m3[so - 16 + 1] = (uint8_t)(rd0 + 1 + 2 * 19);
	CU_ASSERT_EQUAL(parse_why(m3, so), DNS_MAL_NONE);
}

static void test_bad_counts(void)
{
	uint8_t buf[1024];
	int len = build_all(buf, sizeof(buf));
	CU_ASSERT_FATAL(len > 0);
	buf[5] = 0; /* QDCOUNT 0 */
	CU_ASSERT_EQUAL(parse_why(buf, (size_t)len), DNS_MAL_BAD_COUNT);
	buf[5] = 2;
	CU_ASSERT_EQUAL(parse_why(buf, (size_t)len), DNS_MAL_BAD_COUNT);
	buf[5] = 1;
	buf[6] = 0xff; /* ANCOUNT 65286 */
	CU_ASSERT_EQUAL(parse_why(buf, (size_t)len), DNS_MAL_TRUNCATED);
	buf[6] = 0;
	buf[7] = 7; /* one more answer than present: runs into authority/additional */
	CU_ASSERT_NOT_EQUAL(parse_why(buf, (size_t)len), DNS_MAL_NONE);
	CU_ASSERT_EQUAL(parse_why(buf, 11), DNS_MAL_SHORT_HEADER);
}

static void test_oversized_names(void)
{
	uint8_t p[600];
	memcpy(p, hdr_resp1, 12);
	p[7] = 0;
	size_t o = 12;
	/* 5 labels of 63 = 320 octets */
	for (int l = 0; l < 5; l++) {
		p[o++] = 63;
		memset(p + o, 'a', 63);
		o += 63;
	}
	p[o++] = 0;
	memcpy(p + o, "\x00\x01\x00\x01", 4);
	o += 4;
	CU_ASSERT_EQUAL(parse_why(p, o), DNS_MAL_NAME_TOO_LONG);
	/* Exactly 255 octets is legal: 3 x 63 + 1 x 61 labels + root = 4*1+189+61+1 = 255. */
	o = 12;
	for (int l = 0; l < 3; l++) {
		p[o++] = 63;
		memset(p + o, 'b', 63);
		o += 63;
	}
	p[o++] = 61;
	memset(p + o, 'c', 61);
	o += 61;
	p[o++] = 0;
	memcpy(p + o, "\x00\x01\x00\x01", 4);
	o += 4;
	CU_ASSERT_EQUAL(parse_why(p, o), DNS_MAL_NONE);
	CU_ASSERT_EQUAL(strlen(msg.qname), 253);
	p[12 + 64 * 3] = 62; /* 256 octets now (and the name shifts by one: cut earlier) */
	CU_ASSERT_NOT_EQUAL(parse_why(p, o), DNS_MAL_NONE);
	/* 0x40 and 0x80 label types. */
	memcpy(p, hdr_resp1, 12);
	p[7] = 0;
	memcpy(p + 12,
	       "\x41"
	       "a\x00\x00\x01\x00\x01",
	       7);
	CU_ASSERT_EQUAL(parse_why(p, 19), DNS_MAL_LABEL_TYPE);
	p[12] = 0x81;
	CU_ASSERT_EQUAL(parse_why(p, 19), DNS_MAL_LABEL_TYPE);
	/* A '.' or control octet inside a label. */
	memcpy(p + 12,
	       "\x03"
	       "a.b\x00\x00\x01\x00\x01",
	       9);
	CU_ASSERT_EQUAL(parse_why(p, 21), DNS_MAL_LABEL_CHAR);
	p[14] = 0;
	CU_ASSERT_EQUAL(parse_why(p, 21), DNS_MAL_LABEL_CHAR);
	/* Encoder refuses names over 255 octets. */
	char big[400];
	memset(big, 0, sizeof(big));
	for (int l = 0; l < 5; l++) {
		memset(big + l * 64, 'x', 63);
		if (l < 4)
			big[l * 64 + 63] = '.';
	}
	uint8_t w[300];
	CU_ASSERT_EQUAL(dns_name_to_wire(big, w, sizeof(w)), -EINVAL);
}

/* Header + question "a" A IN, then one record starting at 19. */
static size_t one_record(uint8_t *p, uint16_t type, const uint8_t *rdata, uint16_t rdlen,
			 uint16_t claimed)
{
	memcpy(p, hdr_resp1, 12);
	memcpy(p + 12,
	       "\x01"
	       "a\x00\x00\x01\x00\x01",
	       7);
	size_t o = 19;
	p[o++] = 0xc0;
	p[o++] = 12;
	p[o++] = (uint8_t)(type >> 8);
	p[o++] = (uint8_t)type;
	memcpy(p + o, "\x00\x01\x00\x00\x00\x10", 6);
	o += 6;
	p[o++] = (uint8_t)(claimed >> 8);
	p[o++] = (uint8_t)claimed;
	memcpy(p + o, rdata, rdlen);
	return o + rdlen;
}

static void test_rdata_checks(void)
{
	uint8_t p[300];
	size_t n;
	n = one_record(p, DNS_T_A, (const uint8_t *)"\x01\x02\x03\x04", 4, 4);
	CU_ASSERT_EQUAL(parse_why(p, n), DNS_MAL_NONE);
	CU_ASSERT_EQUAL(msg.rr[0].a, IP4(1, 2, 3, 4));
	CU_ASSERT_STRING_EQUAL(msg.rr[0].name, "a");
	n = one_record(p, DNS_T_A, (const uint8_t *)"\x01\x02\x03\x04", 4, 40);
	CU_ASSERT_EQUAL(parse_why(p, n), DNS_MAL_RDLEN);
	n = one_record(p, DNS_T_A, (const uint8_t *)"\x01\x02\x03\x04\x05", 5, 5);
	CU_ASSERT_EQUAL(parse_why(p, n), DNS_MAL_RDATA);
	n = one_record(p, DNS_T_AAAA, (const uint8_t *)"\x01\x02\x03\x04", 4, 4);
	CU_ASSERT_EQUAL(parse_why(p, n), DNS_MAL_RDATA);
	/* MX whose name runs past RDLENGTH (but not past the message). */
	n = one_record(p, DNS_T_MX,
		       (const uint8_t *)"\x00\x0a\x03"
					"abc\x00\x00",
		       8, 5);
	CU_ASSERT_NOT_EQUAL(parse_why(p, n), DNS_MAL_NONE);
	/* MX with room left over after its name. */
	n = one_record(p, DNS_T_MX,
		       (const uint8_t *)"\x00\x0a\x01"
					"b\x00\x00",
		       6, 6);
	CU_ASSERT_EQUAL(parse_why(p, n), DNS_MAL_RDATA);
	n = one_record(p, DNS_T_MX,
		       (const uint8_t *)"\x00\x0a\x01"
					"b\x00",
		       5, 5);
	CU_ASSERT_EQUAL(parse_why(p, n), DNS_MAL_NONE);
	CU_ASSERT_STRING_EQUAL(msg.rr[0].mx.host, "b");
	/* MX with a compressed host pointing back to the question name. */
	n = one_record(p, DNS_T_MX, (const uint8_t *)"\x00\x0a\xc0\x0c", 4, 4);
	CU_ASSERT_EQUAL(parse_why(p, n), DNS_MAL_NONE);
	CU_ASSERT_STRING_EQUAL(msg.rr[0].mx.host, "a");
	/* TXT whose character-string overruns the RDATA. */
	n = one_record(p, DNS_T_TXT,
		       (const uint8_t *)"\x05"
					"ab",
		       3, 3);
	CU_ASSERT_EQUAL(parse_why(p, n), DNS_MAL_RDATA);
	n = one_record(p, DNS_T_TXT, (const uint8_t *)"", 0, 0);
	CU_ASSERT_EQUAL(parse_why(p, n), DNS_MAL_RDATA);
	/* SOA with a short fixed part. */
	n = one_record(p, DNS_T_SOA, (const uint8_t *)"\x00\x00\x01\x02\x03", 5, 5);
	CU_ASSERT_EQUAL(parse_why(p, n), DNS_MAL_RDATA);
	n = one_record(p, DNS_T_TLSA, (const uint8_t *)"\x03\x01\x01", 3, 3);
	CU_ASSERT_EQUAL(parse_why(p, n), DNS_MAL_RDATA);
	/* OPT outside the additional section. */
	n = one_record(p, DNS_T_OPT, (const uint8_t *)"", 0, 0);
	CU_ASSERT_EQUAL(parse_why(p, n), DNS_MAL_RDATA);
	/* TTL with the top bit set reads as 0 (RFC 2181 8). */
	n = one_record(p, DNS_T_A, (const uint8_t *)"\x01\x02\x03\x04", 4, 4);
	p[25] = 0x80;
	CU_ASSERT_EQUAL(parse_why(p, n), DNS_MAL_NONE);
	CU_ASSERT_EQUAL(msg.rr[0].ttl, 0);
}

static void test_many_records_kept_bounded(void)
{
	static uint8_t buf[8192];
	struct dns_builder b;
	dns_builder_init(&b, buf, sizeof(buf), 7, DNS_F_QR, "many.example", DNS_T_A, DNS_C_IN);
	for (unsigned i = 0; i < 100; i++) {
		struct dns_rr a = RR_A("many.example", 60, i);
		dns_builder_add(&b, DNS_SEC_ANSWER, &a);
	}
	int len = dns_builder_finish(&b);
	CU_ASSERT_FATAL(len > 0);
	CU_ASSERT_EQUAL(parse_why(buf, (size_t)len), DNS_MAL_NONE);
	CU_ASSERT_EQUAL(msg.rr_count, DNS_MSG_MAX_RR);
	CU_ASSERT(msg.rr_truncated);
	CU_ASSERT_EQUAL(msg.rr[63].a, 63);
	/* Builder: records may not go back to an earlier section. */
	struct dns_rr a = RR_A("x", 1, 1);
	dns_builder_init(&b, buf, sizeof(buf), 7, DNS_F_QR, "x", DNS_T_A, DNS_C_IN);
	dns_builder_add(&b, DNS_SEC_AUTHORITY, &a);
	dns_builder_add(&b, DNS_SEC_ANSWER, &a);
	CU_ASSERT_EQUAL(dns_builder_finish(&b), -EINVAL);
	CU_ASSERT_STRING_EQUAL(dns_malformed_str(DNS_MAL_PTR_LOOP), "pointer_loop");
	CU_ASSERT_STRING_EQUAL(dns_malformed_str((enum dns_malformed)99), "unknown");
}

CU_TestInfo dns_codec_tests[] = {
	{"roundtrip_all_types", test_roundtrip_all_types},
	{"query_encode", test_query_encode},
	{"truncation_every_offset", test_truncation_every_offset},
	{"pointer_attacks", test_pointer_attacks},
	{"bad_counts", test_bad_counts},
	{"oversized_names_labels", test_oversized_names},
	{"rdata_checks", test_rdata_checks},
	{"many_records_bounded", test_many_records_kept_bounded},
	CU_TEST_INFO_NULL,
};
