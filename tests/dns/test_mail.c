/* test_mail.c - mail routing (RFC 5321 5.1, RFC 7505) over the resolver and a fake zone. */
#include "dns.h"
#include "fake_upstream.h"
#include "test_dns.h"
#include "test_env.h"

struct mail_res {
	int calls;
	struct dns_mail_route route;
};

static void mail_cb(void *arg, const struct dns_mail_route *route)
{
	struct mail_res *m = arg;
	m->calls++;
	m->route = *route;
}

static void run_mail(struct env *e, const char *domain, const struct zone_rec *zone, unsigned nzone,
		     struct mail_res *m)
{
	memset(m, 0, sizeof(*m));
	CU_ASSERT_EQUAL_FATAL(dns_mail_lookup(e->r, domain, mail_cb, m), 0);
	for (int i = 0; i < 10 && m->calls == 0; i++) {
		fake_serve(&e->f, e->r, zone, nzone);
		env_advance(e, 1000);
	}
	CU_ASSERT_EQUAL(m->calls, 1);
}

static const struct zone_rec zone[] = {
	{"multi.example",
	 DNS_T_MX,
	 0,
	 {RR_MX("multi.example", 300, 10, "a.multi.example"),
	  RR_MX("multi.example", 300, 20, "d.multi.example"),
	  RR_MX("multi.example", 300, 10, "b.multi.example"),
	  RR_MX("multi.example", 300, 5, "e.multi.example"),
	  RR_MX("multi.example", 300, 10, "c.multi.example")},
	 5},
	{"a.multi.example", DNS_T_A, 0, {RR_A("a.multi.example", 300, IP4(192, 0, 2, 1))}, 1},
	{"b.multi.example", DNS_T_A, 0, {RR_A("b.multi.example", 300, IP4(192, 0, 2, 2))}, 1},
	{"c.multi.example",
	 DNS_T_A,
	 0,
	 {RR_A("c.multi.example", 300, IP4(192, 0, 2, 3)),
	  RR_A("c.multi.example", 300, IP4(192, 0, 2, 33))},
	 2},
	{"d.multi.example", DNS_T_A, 0, {RR_A("d.multi.example", 300, IP4(192, 0, 2, 4))}, 1},
	{"e.multi.example", DNS_T_A, 0, {RR_A("e.multi.example", 300, IP4(192, 0, 2, 5))}, 1},
	/* implicit MX: the name exists (A) but has no MX */
	{"plain.example", DNS_T_A, 0, {RR_A("plain.example", 300, IP4(198, 51, 100, 1))}, 1},
	{"null.example", DNS_T_MX, 0, {RR_MX("null.example", 300, 0, "")}, 1},
	{"sf.example", DNS_T_MX, DNS_RCODE_SERVFAIL, {{0}}, 0},
	/* loops: 10.77.0.2 is the relay */
	{"loop.example",
	 DNS_T_MX,
	 0,
	 {RR_MX("loop.example", 300, 10, "self.example"),
	  RR_MX("loop.example", 300, 20, "other.example")},
	 2},
	{"backup.example",
	 DNS_T_MX,
	 0,
	 {RR_MX("backup.example", 300, 10, "other.example"),
	  RR_MX("backup.example", 300, 20, "self.example"),
	  RR_MX("backup.example", 300, 30, "third.example")},
	 3},
	{"self.example", DNS_T_A, 0, {RR_A("self.example", 300, IP4(10, 77, 0, 2))}, 1},
	{"other.example", DNS_T_A, 0, {RR_A("other.example", 300, IP4(203, 0, 113, 1))}, 1},
	{"third.example", DNS_T_A, 0, {RR_A("third.example", 300, IP4(203, 0, 113, 3))}, 1},
	{"cn.example",
	 DNS_T_MX,
	 0,
	 {RR_CNAME("cn.example", 300, "multi.example"),
	  RR_MX("multi.example", 300, 7, "e.multi.example")},
	 2},
	{"noaddr.example", DNS_T_MX, 0, {RR_MX("noaddr.example", 300, 10, "gone.example")}, 1},
};
#define NZONE (sizeof(zone) / sizeof(zone[0]))

static struct env *mail_env(void)
{
	struct dns_conf conf;
	env_conf(&conf);
	conf.self_addrs[0] = IP4(10, 77, 0, 2);
	conf.self_addr_count = 1;
	conf.seed = 1234;
	return env_new(&conf);
}

static void test_mx_order_and_random(void)
{
	struct env *e = mail_env();
	struct mail_res m;
	unsigned first[3] = {0, 0, 0};
	for (int round = 0; round < 300; round++) {
		run_mail(e, "multi.example", zone, NZONE, &m);
		CU_ASSERT_EQUAL_FATAL(m.route.result, DNS_MAIL_OK);
		CU_ASSERT_EQUAL_FATAL(m.route.host_count, 5);
		const struct dns_mail_host *h = m.route.hosts;
		CU_ASSERT_STRING_EQUAL(h[0].name, "e.multi.example");
		CU_ASSERT_EQUAL(h[0].pref, 5);
		CU_ASSERT_EQUAL(h[1].pref, 10);
		CU_ASSERT_EQUAL(h[2].pref, 10);
		CU_ASSERT_EQUAL(h[3].pref, 10);
		CU_ASSERT_STRING_EQUAL(h[4].name, "d.multi.example");
		CU_ASSERT_EQUAL(h[0].addrs[0], IP4(192, 0, 2, 5));
		first[h[1].name[0] - 'a']++;
		/* the three pref-10 hosts are a permutation of a, b, c */
		CU_ASSERT_EQUAL(h[1].name[0] + h[2].name[0] + h[3].name[0], 'a' + 'b' + 'c');
		for (int i = 1; i < 4; i++)
			if (h[i].name[0] == 'c') {
				CU_ASSERT_EQUAL(h[i].addr_count, 2);
				CU_ASSERT_EQUAL(h[i].addrs[1], IP4(192, 0, 2, 33));
			}
	}
	/* Each of the three comes first about 100 times (seeded: deterministic). */
	for (int i = 0; i < 3; i++) {
		CU_ASSERT(first[i] > 60);
		CU_ASSERT(first[i] < 140);
	}
	/* MX + 5 A lookups once; the rest came from the cache. */
	CU_ASSERT_EQUAL(e->f.count, 6);
	/* The route lives as long as its shortest record: at most 300 s, less as time passes. */
	CU_ASSERT(m.route.ttl_s >= 1 && m.route.ttl_s <= 300);
	uint32_t before = m.route.ttl_s;
	env_advance(e, 100 * 1000000ull);
	run_mail(e, "multi.example", zone, NZONE, &m);
	CU_ASSERT(m.route.ttl_s <= before - 99 && m.route.ttl_s >= 1);
	run_mail(e, "[192.0.2.10]", zone, NZONE, &m);
	CU_ASSERT(m.route.ttl_s == 0 || m.route.ttl_s == UINT32_MAX); /* a literal: no TTL */
	env_free(e);
}

static void test_implicit_null_nx_servfail(void)
{
	struct env *e = mail_env();
	struct mail_res m;
	run_mail(e, "plain.example", zone, NZONE, &m);
	CU_ASSERT_EQUAL(m.route.result, DNS_MAIL_OK);
	CU_ASSERT(m.route.implicit_mx);
	CU_ASSERT_EQUAL_FATAL(m.route.host_count, 1);
	CU_ASSERT_STRING_EQUAL(m.route.hosts[0].name, "plain.example");
	CU_ASSERT_EQUAL(m.route.hosts[0].addrs[0], IP4(198, 51, 100, 1));

	run_mail(e, "null.example", zone, NZONE, &m);
	CU_ASSERT_EQUAL(m.route.result, DNS_MAIL_PERMFAIL);
	CU_ASSERT_EQUAL(m.route.reply, 556);
	CU_ASSERT_STRING_EQUAL(m.route.status, "5.1.10");
	CU_ASSERT_EQUAL(m.route.host_count, 0);

	run_mail(e, "nowhere.example", zone, NZONE, &m);
	CU_ASSERT_EQUAL(m.route.result, DNS_MAIL_PERMFAIL);
	CU_ASSERT_EQUAL(m.route.reply, 550);
	CU_ASSERT_STRING_EQUAL(m.route.status, "5.1.2");

	run_mail(e, "sf.example", zone, NZONE, &m);
	CU_ASSERT_EQUAL(m.route.result, DNS_MAIL_TEMPFAIL);
	CU_ASSERT_EQUAL(m.route.reply, 451);
	CU_ASSERT_STRING_EQUAL(m.route.status, "4.4.3");

	/* MX host without address (NXDOMAIN): nothing to deliver to. */
	run_mail(e, "noaddr.example", zone, NZONE, &m);
	CU_ASSERT_EQUAL(m.route.result, DNS_MAIL_PERMFAIL);
	CU_ASSERT_STRING_EQUAL(m.route.status, "5.4.4");

	/* CNAME at the domain is followed. */
	run_mail(e, "cn.example", zone, NZONE, &m);
	CU_ASSERT_EQUAL(m.route.result, DNS_MAIL_OK);
	CU_ASSERT_EQUAL_FATAL(m.route.host_count, 1);
	CU_ASSERT_STRING_EQUAL(m.route.hosts[0].name, "e.multi.example");
	CU_ASSERT_EQUAL(m.route.hosts[0].pref, 7);
	CU_ASSERT_EQUAL(dns_mail_lookup(e->r, "bad..domain", mail_cb, &m), -EINVAL);
	env_free(e);
}

static void test_timeout_is_temporary(void)
{
	struct env *e = mail_env();
	struct mail_res m;
	memset(&m, 0, sizeof(m));
	CU_ASSERT_EQUAL(dns_mail_lookup(e->r, "silent.example", mail_cb, &m), 0);
	for (int i = 0; i < 5; i++)
		env_advance(e, 1000000);
	CU_ASSERT_EQUAL(m.calls, 1);
	CU_ASSERT_EQUAL(m.route.result, DNS_MAIL_TEMPFAIL);
	CU_ASSERT_EQUAL(m.route.reply, 451);
	env_free(e);
}

static void test_mail_loop(void)
{
	struct env *e = mail_env();
	struct mail_res m;
	run_mail(e, "loop.example", zone, NZONE, &m);
	CU_ASSERT_EQUAL(m.route.result, DNS_MAIL_PERMFAIL);
	CU_ASSERT_EQUAL(m.route.reply, 554);
	CU_ASSERT_STRING_EQUAL(m.route.status, "5.4.6");
	/* The relay as a backup MX: only better-preference hosts remain. */
	run_mail(e, "backup.example", zone, NZONE, &m);
	CU_ASSERT_EQUAL(m.route.result, DNS_MAIL_OK);
	CU_ASSERT_EQUAL_FATAL(m.route.host_count, 1);
	CU_ASSERT_STRING_EQUAL(m.route.hosts[0].name, "other.example");
	env_free(e);
}

static void test_address_literal(void)
{
	struct env *e = mail_env();
	struct mail_res m;
	uint32_t addr;
	CU_ASSERT_EQUAL(dns_mail_parse_literal("[192.0.2.10]", &addr), 0);
	CU_ASSERT_EQUAL(addr, IP4(192, 0, 2, 10));
	CU_ASSERT_EQUAL(dns_mail_parse_literal("[192.0.2.10", &addr), -EINVAL);
	CU_ASSERT_EQUAL(dns_mail_parse_literal("192.0.2.10", &addr), -EINVAL);
	CU_ASSERT_EQUAL(dns_mail_parse_literal("[192.0.2.300]", &addr), -EINVAL);
	CU_ASSERT_EQUAL(dns_mail_parse_literal("[IPv6:2001:db8::1]", &addr), -EINVAL);
	memset(&m, 0, sizeof(m));
	CU_ASSERT_EQUAL(dns_mail_lookup(e->r, "[192.0.2.10]", mail_cb, &m), 0);
	CU_ASSERT_EQUAL(m.calls, 1); /* at once, no DNS */
	CU_ASSERT(m.route.literal);
	CU_ASSERT_EQUAL(m.route.result, DNS_MAIL_OK);
	CU_ASSERT_EQUAL(m.route.hosts[0].addrs[0], IP4(192, 0, 2, 10));
	CU_ASSERT_EQUAL(e->f.count, 0);
	memset(&m, 0, sizeof(m));
	dns_mail_lookup(e->r, "[10.77.0.2]", mail_cb, &m);
	CU_ASSERT_STRING_EQUAL(m.route.status, "5.4.6");
	env_free(e);
}

CU_TestInfo dns_mail_tests[] = {
	{"mx_order_and_random", test_mx_order_and_random},
	{"implicit_null_nx_servfail", test_implicit_null_nx_servfail},
	{"timeout_is_temporary", test_timeout_is_temporary},
	{"mail_loop", test_mail_loop},
	{"address_literal", test_address_literal},
	CU_TEST_INFO_NULL,
};
