/*
 * test_resolver.c - the stub resolver against a scripted upstream: matching
 * (RFC 5452), retries, timeouts, TC -> TCP, negative caching, serve-stale,
 * prefetch, CNAMEs, bounds, and coalescing across threads.
 */
#include "dns.h"
#include "fake_upstream.h"
#include "test_dns.h"
#include "test_env.h"

#include <pthread.h>
#include <rte_lcore.h>
#include <unistd.h>

static struct dns_msg qmsg;

static void test_basic_query_and_hit(void)
{
	struct env *e = env_default();
	struct result res = {0};
	const struct dns_entry *hit = NULL;
	CU_ASSERT_EQUAL(dns_resolve(e->r, "WWW.example.", DNS_T_A, result_cb, &res, &hit), 0);
	CU_ASSERT_EQUAL_FATAL(e->f.count, 1);
	CU_ASSERT_EQUAL(e->f.q[0].server, S0);
	CU_ASSERT(e->f.q[0].port >= PORT_LO && e->f.q[0].port <= PORT_HI);
	CU_ASSERT_FALSE(e->f.q[0].tcp);
	CU_ASSERT_EQUAL_FATAL(dns_msg_parse(&qmsg, e->f.q[0].pkt, e->f.q[0].len, NULL), 0);
	CU_ASSERT_STRING_EQUAL(qmsg.qname, "www.example");
	CU_ASSERT(qmsg.flags & DNS_F_RD);
	CU_ASSERT(qmsg.edns);
	CU_ASSERT_EQUAL(qmsg.edns_udp, 1232);
	CU_ASSERT_EQUAL(dns_resolver_inflight(e->r), 1);
	CU_ASSERT_EQUAL(dns_resolver_pending(e->r), 1);
	struct dns_rr an = RR_A("www.example", 300, IP4(192, 0, 2, 7));
	fake_answer(&e->f, e->r, 0, DNS_F_AD, &an, 1, NULL, 0);
	CU_ASSERT_EQUAL(res.calls, 1);
	CU_ASSERT_EQUAL(res.status, DNS_OK);
	CU_ASSERT_EQUAL(res.a, IP4(192, 0, 2, 7));
	CU_ASSERT(res.ad);
	CU_ASSERT_EQUAL(dns_resolver_inflight(e->r), 0);
	CU_ASSERT_EQUAL(dns_resolver_pending(e->r), 0);
	CU_ASSERT_EQUAL(dns_resolve(e->r, "www.EXAMPLE", DNS_T_A, result_cb, &res, &hit), 1);
	CU_ASSERT_PTR_NOT_NULL_FATAL(hit);
	CU_ASSERT_EQUAL(hit->rr[0].a, IP4(192, 0, 2, 7));
	CU_ASSERT_EQUAL(e->f.count, 1);
	struct dns_counters c = env_ctr(e);
	CU_ASSERT_EQUAL(c.hits, 1);
	CU_ASSERT_EQUAL(c.misses, 1);
	CU_ASSERT_EQUAL(c.upstream_queries, 1);
	CU_ASSERT_EQUAL(dns_resolve(e->r, "bad..name", DNS_T_A, result_cb, &res, &hit), -EINVAL);
	env_free(e);
}

static void test_anti_spoofing(void)
{
	struct env *e = env_default();
	struct result res = {0};
	const struct dns_entry *hit;
	uint8_t buf[512];
	CU_ASSERT_EQUAL(dns_resolve(e->r, "spoof.example", DNS_T_A, result_cb, &res, &hit), 0);
	CU_ASSERT_EQUAL_FATAL(e->f.count, 1);
	struct fake_query *q = &e->f.q[0];
	struct dns_rr an = RR_A("spoof.example", 300, IP4(6, 6, 6, 6));
	int len = fake_build(&e->f, 0, 0, &an, 1, NULL, 0, buf, sizeof(buf));
	CU_ASSERT_FATAL(len > 0);
	/* wrong destination port, wrong source address, wrong source port */
	dns_resolver_input(e->r, S0, 53, (uint16_t)(q->port == PORT_HI ? PORT_LO : q->port + 1),
			   buf, (size_t)len, false);
	dns_resolver_input(e->r, S1, 53, q->port, buf, (size_t)len, false);
	dns_resolver_input(e->r, S0, 5353, q->port, buf, (size_t)len, false);
	/* wrong ID */
	buf[1] ^= 0x5a;
	dns_resolver_input(e->r, S0, 53, q->port, buf, (size_t)len, false);
	buf[1] ^= 0x5a;
	/* right ID, wrong question (name, then type) */
	struct dns_builder b;
	dns_msg_parse(&qmsg, q->pkt, q->len, NULL);
	uint8_t other[512];
	dns_builder_init(&b, other, sizeof(other), qmsg.id, DNS_F_QR, "spoof.exampl", DNS_T_A,
			 DNS_C_IN);
	int olen = dns_builder_finish(&b);
	dns_resolver_input(e->r, S0, 53, q->port, other, (size_t)olen, false);
	dns_builder_init(&b, other, sizeof(other), qmsg.id, DNS_F_QR, "spoof.example", DNS_T_AAAA,
			 DNS_C_IN);
	olen = dns_builder_finish(&b);
	dns_resolver_input(e->r, S0, 53, q->port, other, (size_t)olen, false);
	/* a query (QR clear) and a truncated message: malformed */
	buf[2] &= 0x7f;
	dns_resolver_input(e->r, S0, 53, q->port, buf, (size_t)len, false);
	buf[2] |= 0x80;
	dns_resolver_input(e->r, S0, 53, q->port, buf, (size_t)len - 3, false);
	/* over TCP while the try is UDP */
	dns_resolver_input(e->r, S0, 53, q->port, buf, (size_t)len, true);
	CU_ASSERT_EQUAL(res.calls, 0);
	struct dns_counters c = env_ctr(e);
	CU_ASSERT_EQUAL(c.mismatch_port, 2);
	CU_ASSERT_EQUAL(c.mismatch_addr, 2);
	CU_ASSERT_EQUAL(c.mismatch_id, 1);
	CU_ASSERT_EQUAL(c.mismatch_question, 2);
	CU_ASSERT_EQUAL(c.mismatched, 7);
	CU_ASSERT_EQUAL(c.malformed[DNS_MAL_NOT_RESPONSE], 1);
	CU_ASSERT_EQUAL(c.malformed[DNS_MAL_RDLEN], 1);
	/* The genuine answer still gets through; case of the echoed name may differ. */
	dns_resolver_input(e->r, S0, 53, q->port, buf, (size_t)len, false);
	CU_ASSERT_EQUAL(res.calls, 1);
	CU_ASSERT_EQUAL(res.status, DNS_OK);
	CU_ASSERT_EQUAL(res.a, IP4(6, 6, 6, 6));
	/* A duplicate after completion: port no longer in use. */
	dns_resolver_input(e->r, S0, 53, q->port, buf, (size_t)len, false);
	CU_ASSERT_EQUAL(env_ctr(e).mismatch_port, 3);
	env_free(e);
}

static void test_retries_and_timeout(void)
{
	struct env *e = env_default();
	struct result res = {0};
	const struct dns_entry *hit;
	CU_ASSERT_EQUAL(dns_resolve(e->r, "slow.example", DNS_T_A, result_cb, &res, &hit), 0);
	env_advance(e, 999999);
	CU_ASSERT_EQUAL(e->f.count, 1);
	for (int i = 0; i < 3; i++)
		env_advance(e, 1000000);
	CU_ASSERT_EQUAL_FATAL(e->f.count, 4);
	CU_ASSERT_EQUAL(res.calls, 0);
	CU_ASSERT_EQUAL(e->f.q[0].server, S0);
	CU_ASSERT_EQUAL(e->f.q[1].server, S1);
	CU_ASSERT_EQUAL(e->f.q[2].server, S0);
	CU_ASSERT_EQUAL(e->f.q[3].server, S1);
	/* Each try has its own ID or port (random: at least one differs). */
	for (int i = 1; i < 4; i++)
		CU_ASSERT(e->f.q[i].port != e->f.q[i - 1].port ||
			  memcmp(e->f.q[i].pkt, e->f.q[i - 1].pkt, 2) != 0);
	/* A late answer to try 0 is not accepted. */
	fake_answer(&e->f, e->r, 0, 0, NULL, 0, NULL, 0);
	CU_ASSERT_EQUAL(res.calls, 0);
	env_advance(e, 1000000);
	CU_ASSERT_EQUAL(res.calls, 1);
	CU_ASSERT_EQUAL(res.status, DNS_TEMPFAIL);
	CU_ASSERT_EQUAL(e->f.count, 4);
	struct dns_counters c = env_ctr(e);
	CU_ASSERT_EQUAL(c.timeouts, 4);
	CU_ASSERT_EQUAL(c.upstream_queries, 4);
	CU_ASSERT_EQUAL(dns_resolver_inflight(e->r), 0);
	/* TEMPFAIL is not cached: the next request asks again. */
	CU_ASSERT_EQUAL(dns_resolve(e->r, "slow.example", DNS_T_A, result_cb, &res, &hit), 0);
	CU_ASSERT_EQUAL(e->f.count, 5);
	env_free(e);
}

/*
 * Queries started at different times each retry at their own deadline: the
 * resolver walks its lists only when the earliest deadline has passed, so
 * that bound must follow the queries still waiting after every walk.
 */
static void test_staggered_deadlines(void)
{
	struct env *e = env_default();
	struct result ra = {0}, rb = {0}, rc = {0};
	const struct dns_entry *hit;
	CU_ASSERT_EQUAL(dns_resolve(e->r, "a.slow.example", DNS_T_A, result_cb, &ra, &hit), 0);
	env_advance(e, 400000);
	CU_ASSERT_EQUAL(dns_resolve(e->r, "b.slow.example", DNS_T_A, result_cb, &rb, &hit), 0);
	env_advance(e, 300000);
	CU_ASSERT_EQUAL(dns_resolve(e->r, "c.slow.example", DNS_T_A, result_cb, &rc, &hit), 0);
	CU_ASSERT_EQUAL(e->f.count, 3);
	/* t = 1.0 s: only a's first try has timed out */
	env_advance(e, 300000);
	CU_ASSERT_EQUAL(env_ctr(e).timeouts, 1);
	CU_ASSERT_EQUAL(e->f.count, 4);
	/* t = 1.399 s: nothing more; t = 1.4 s: b's */
	env_advance(e, 399999);
	CU_ASSERT_EQUAL(env_ctr(e).timeouts, 1);
	env_advance(e, 1);
	CU_ASSERT_EQUAL(env_ctr(e).timeouts, 2);
	/* t = 1.7 s: c's; t = 2.0 s: a's second try */
	env_advance(e, 300000);
	CU_ASSERT_EQUAL(env_ctr(e).timeouts, 3);
	env_advance(e, 300000);
	CU_ASSERT_EQUAL(env_ctr(e).timeouts, 4);
	CU_ASSERT_EQUAL(e->f.count, 7);
	CU_ASSERT_EQUAL(ra.calls + rb.calls + rc.calls, 0);
	/* every query ends with its last try (4 each), none is forgotten */
	for (int i = 0; i < 40 && ra.calls + rb.calls + rc.calls < 3; i++)
		env_advance(e, 100000);
	CU_ASSERT_EQUAL(ra.calls, 1);
	CU_ASSERT_EQUAL(rb.calls, 1);
	CU_ASSERT_EQUAL(rc.calls, 1);
	CU_ASSERT_EQUAL(env_ctr(e).timeouts, 12);
	CU_ASSERT_EQUAL(dns_resolver_inflight(e->r), 0);
	env_free(e);
}

static void test_servfail_next_server(void)
{
	struct env *e = env_default();
	struct result res = {0};
	const struct dns_entry *hit;
	CU_ASSERT_EQUAL(dns_resolve(e->r, "sf.example", DNS_T_A, result_cb, &res, &hit), 0);
	fake_answer(&e->f, e->r, 0, DNS_RCODE_SERVFAIL, NULL, 0, NULL, 0);
	CU_ASSERT_EQUAL_FATAL(e->f.count, 2);
	CU_ASSERT_EQUAL(e->f.q[1].server, S1);
	struct dns_rr an = RR_A("sf.example", 300, 5);
	fake_answer(&e->f, e->r, 1, 0, &an, 1, NULL, 0);
	CU_ASSERT_EQUAL(res.calls, 1);
	CU_ASSERT_EQUAL(res.status, DNS_OK);
	CU_ASSERT_EQUAL(env_ctr(e).servfail, 1);
	/* All four tries REFUSED/SERVFAIL: temporary failure. */
	struct result res2 = {0};
	CU_ASSERT_EQUAL(dns_resolve(e->r, "sf2.example", DNS_T_A, result_cb, &res2, &hit), 0);
	for (unsigned i = 2; i < 6; i++) {
		CU_ASSERT_EQUAL_FATAL(e->f.count, i + 1);
		fake_answer(&e->f, e->r, i, i % 2 ? DNS_RCODE_REFUSED : DNS_RCODE_SERVFAIL, NULL, 0,
			    NULL, 0);
	}
	CU_ASSERT_EQUAL(res2.calls, 1);
	CU_ASSERT_EQUAL(res2.status, DNS_TEMPFAIL);
	CU_ASSERT_EQUAL(e->f.count, 6);
	env_free(e);
}

static void test_tc_retry_over_tcp(void)
{
	struct env *e = env_default();
	struct result res = {0};
	const struct dns_entry *hit;
	CU_ASSERT_EQUAL(dns_resolve(e->r, "big.example", DNS_T_TXT, result_cb, &res, &hit), 0);
	fake_answer(&e->f, e->r, 0, DNS_F_TC, NULL, 0, NULL, 0);
	CU_ASSERT_EQUAL_FATAL(e->f.count, 2);
	CU_ASSERT(e->f.q[1].tcp);
	CU_ASSERT_EQUAL(e->f.q[1].server, S0);
	CU_ASSERT_EQUAL(res.calls, 0);
	/* Over TCP the message carries no length prefix: it parses as a plain message. */
	CU_ASSERT_EQUAL(dns_msg_parse(&qmsg, e->f.q[1].pkt, e->f.q[1].len, NULL), 0);
	CU_ASSERT_STRING_EQUAL(qmsg.qname, "big.example");
	static const uint8_t txt[] = "\x05hello";
	struct dns_rr an = {.name = "big.example",
			    .type = DNS_T_TXT,
			    .rclass = DNS_C_IN,
			    .ttl = 60,
			    .txt = {txt, 6}};
	fake_answer(&e->f, e->r, 1, 0, &an, 1, NULL, 0);
	CU_ASSERT_EQUAL(res.calls, 1);
	CU_ASSERT_EQUAL(res.status, DNS_OK);
	CU_ASSERT_EQUAL(res.rr_count, 1);
	CU_ASSERT_EQUAL(env_ctr(e).tcp_retries, 1);
	env_free(e);
}

static void test_negative_ttl_from_soa(void)
{
	struct dns_conf conf;
	env_conf(&conf);
	conf.negative_ttl = 250;
	struct env *e = env_new(&conf);
	struct result res = {0};
	const struct dns_entry *hit;
	struct dns_rr soa = zone_soa; /* TTL 600, minimum 300 */
	CU_ASSERT_EQUAL(dns_resolve(e->r, "nx.example", DNS_T_A, result_cb, &res, &hit), 0);
	fake_answer(&e->f, e->r, 0, DNS_RCODE_NXDOMAIN, NULL, 0, &soa, 1);
	CU_ASSERT_EQUAL(res.status, DNS_NXDOMAIN);
	CU_ASSERT_EQUAL(res.ttl, 250); /* min(600, 300) = 300, capped at 250 */
	soa.ttl = 100;
	CU_ASSERT_EQUAL(dns_resolve(e->r, "nodata.example", DNS_T_AAAA, result_cb, &res, &hit), 0);
	fake_answer(&e->f, e->r, 1, 0, NULL, 0, &soa, 1);
	CU_ASSERT_EQUAL(res.status, DNS_NODATA);
	CU_ASSERT_EQUAL(res.ttl, 100); /* min(100, 300) */
	/* Cached: both answered at once now, without a query. */
	CU_ASSERT_EQUAL(dns_resolve(e->r, "NX.example", DNS_T_A, result_cb, &res, &hit), 1);
	CU_ASSERT_EQUAL(hit->status, DNS_NXDOMAIN);
	CU_ASSERT_EQUAL(dns_resolve(e->r, "nodata.example", DNS_T_AAAA, result_cb, &res, &hit), 1);
	CU_ASSERT_EQUAL(hit->status, DNS_NODATA);
	CU_ASSERT_EQUAL(e->f.count, 2);
	/* After 100 s the NODATA entry expires: asked again. */
	env_advance(e, 100 * 1000000ull);
	CU_ASSERT_EQUAL(dns_resolve(e->r, "nodata.example", DNS_T_AAAA, result_cb, &res, &hit), 0);
	CU_ASSERT_EQUAL(e->f.count, 3);
	CU_ASSERT_EQUAL(env_ctr(e).negative_hits, 2);
	env_free(e);
}

static void test_serve_stale(void)
{
	struct dns_conf conf;
	env_conf(&conf);
	conf.stale_max = 3600;
	struct env *e = env_new(&conf);
	struct result res = {0};
	const struct dns_entry *hit;
	struct dns_rr an = RR_A("st.example", 10, IP4(192, 0, 2, 10));
	CU_ASSERT_EQUAL(dns_resolve(e->r, "st.example", DNS_T_A, result_cb, &res, &hit), 0);
	fake_answer(&e->f, e->r, 0, 0, &an, 1, NULL, 0);
	CU_ASSERT_EQUAL(res.status, DNS_OK);
	env_advance(e, 20 * 1000000ull);
	memset(&res, 0, sizeof(res));
	CU_ASSERT_EQUAL(dns_resolve(e->r, "st.example", DNS_T_A, result_cb, &res, &hit), 0);
	for (int i = 0; i < 4; i++)
		env_advance(e, 1000000);
	CU_ASSERT_EQUAL(res.calls, 1);
	CU_ASSERT_EQUAL(res.status, DNS_OK);
	CU_ASSERT(res.stale);
	CU_ASSERT_EQUAL(res.ttl, 30);
	CU_ASSERT_EQUAL(res.a, IP4(192, 0, 2, 10));
	CU_ASSERT_EQUAL(env_ctr(e).stale_served, 1);
	/* The stale copy answers for 30 s without asking upstream. */
	unsigned sent = e->f.count;
	CU_ASSERT_EQUAL(dns_resolve(e->r, "st.example", DNS_T_A, result_cb, &res, &hit), 1);
	CU_ASSERT(hit->stale);
	CU_ASSERT_EQUAL(e->f.count, sent);
	/* Beyond stale_max: temporary failure. */
	env_advance(e, 3700 * 1000000ull);
	memset(&res, 0, sizeof(res));
	CU_ASSERT_EQUAL(dns_resolve(e->r, "st.example", DNS_T_A, result_cb, &res, &hit), 0);
	for (int i = 0; i < 4; i++)
		env_advance(e, 1000000);
	CU_ASSERT_EQUAL(res.calls, 1);
	CU_ASSERT_EQUAL(res.status, DNS_TEMPFAIL);
	CU_ASSERT_EQUAL(env_ctr(e).stale_served, 1);
	env_free(e);
}

static void test_prefetch(void)
{
	struct env *e = env_default();
	struct result res = {0};
	const struct dns_entry *hit;
	struct dns_rr an = RR_A("pf.example", 100, 1);
	CU_ASSERT_EQUAL(dns_resolve(e->r, "pf.example", DNS_T_A, result_cb, &res, &hit), 0);
	fake_answer(&e->f, e->r, 0, 0, &an, 1, NULL, 0);
	env_advance(e, 89 * 1000000ull);
	CU_ASSERT_EQUAL(dns_resolve(e->r, "pf.example", DNS_T_A, result_cb, &res, &hit), 1);
	CU_ASSERT_EQUAL(e->f.count, 1); /* 89% of the TTL: no prefetch */
	env_advance(e, 6 * 1000000ull);
	CU_ASSERT_EQUAL(dns_resolve(e->r, "pf.example", DNS_T_A, result_cb, &res, &hit), 1);
	CU_ASSERT_EQUAL(hit->rr[0].a, 1);
	CU_ASSERT_EQUAL_FATAL(e->f.count, 2); /* last 10%: one background refresh */
	CU_ASSERT_EQUAL(dns_resolve(e->r, "pf.example", DNS_T_A, result_cb, &res, &hit), 1);
	CU_ASSERT_EQUAL(e->f.count, 2); /* only one */
	an.a = 2;
	fake_answer(&e->f, e->r, 1, 0, &an, 1, NULL, 0);
	CU_ASSERT_EQUAL(res.calls, 1); /* only the first, cache-miss request had a callback */
	CU_ASSERT_EQUAL(dns_resolve(e->r, "pf.example", DNS_T_A, result_cb, &res, &hit), 1);
	CU_ASSERT_EQUAL(hit->rr[0].a, 2);
	CU_ASSERT_EQUAL(env_ctr(e).prefetches, 1);
	env_free(e);
}

static void test_cname_chain_and_loop(void)
{
	struct env *e = env_default();
	struct result res = {0};
	const struct dns_entry *hit;
	/* A whole chain in one answer. */
	struct dns_rr an[3] = {RR_CNAME("www.example", 300, "web.example"),
			       RR_CNAME("web.example", 200, "host.example"),
			       RR_A("host.example", 400, 9)};
	CU_ASSERT_EQUAL(dns_resolve(e->r, "www.example", DNS_T_A, result_cb, &res, &hit), 0);
	fake_answer(&e->f, e->r, 0, 0, an, 3, NULL, 0);
	CU_ASSERT_EQUAL(res.status, DNS_OK);
	CU_ASSERT_EQUAL(res.a, 9);
	CU_ASSERT_STRING_EQUAL(res.canon, "host.example");
	CU_ASSERT_EQUAL(res.ttl, 200);
	/* A chain the upstream did not finish: the resolver asks for the target. */
	memset(&res, 0, sizeof(res));
	CU_ASSERT_EQUAL(dns_resolve(e->r, "alias.example", DNS_T_A, result_cb, &res, &hit), 0);
	struct dns_rr c1 = RR_CNAME("alias.example", 300, "real.example");
	fake_answer(&e->f, e->r, 1, 0, &c1, 1, NULL, 0);
	CU_ASSERT_EQUAL(res.calls, 0);
	CU_ASSERT_EQUAL_FATAL(e->f.count, 3);
	dns_msg_parse(&qmsg, e->f.q[2].pkt, e->f.q[2].len, NULL);
	CU_ASSERT_STRING_EQUAL(qmsg.qname, "real.example");
	struct dns_rr a1 = RR_A("real.example", 300, 11);
	fake_answer(&e->f, e->r, 2, 0, &a1, 1, NULL, 0);
	CU_ASSERT_EQUAL(res.calls, 1);
	CU_ASSERT_EQUAL(res.a, 11);
	/* Now cached end to end. */
	CU_ASSERT_EQUAL(dns_resolve(e->r, "alias.example", DNS_T_A, result_cb, &res, &hit), 1);
	CU_ASSERT_EQUAL(hit->rr[0].a, 11);
	/* A loop across two answers ends at DNS_CNAME_MAX hops: temporary failure. */
	memset(&res, 0, sizeof(res));
	CU_ASSERT_EQUAL(dns_resolve(e->r, "loop1.example", DNS_T_A, result_cb, &res, &hit), 0);
	struct dns_rr l1 = RR_CNAME("loop1.example", 300, "loop2.example");
	struct dns_rr l2 = RR_CNAME("loop2.example", 300, "loop1.example");
	fake_answer(&e->f, e->r, 3, 0, &l1, 1, NULL, 0);
	CU_ASSERT_EQUAL_FATAL(e->f.count, 5);
	fake_answer(&e->f, e->r, 4, 0, &l2, 1, NULL, 0);
	CU_ASSERT_EQUAL(res.calls, 1);
	CU_ASSERT_EQUAL(res.status, DNS_TEMPFAIL);
	CU_ASSERT_EQUAL(e->f.count, 5);
	CU_ASSERT_EQUAL(dns_resolve(e->r, "loop2.example", DNS_T_A, result_cb, &res, &hit), -ELOOP);
	/* A loop inside one answer. */
	memset(&res, 0, sizeof(res));
	CU_ASSERT_EQUAL(dns_resolve(e->r, "l3.example", DNS_T_MX, result_cb, &res, &hit), 0);
	struct dns_rr l34[2] = {RR_CNAME("l3.example", 300, "l4.example"),
				RR_CNAME("l4.example", 300, "l3.example")};
	fake_answer(&e->f, e->r, 5, 0, l34, 2, NULL, 0);
	for (unsigned i = 6; i < 12 && res.calls == 0 && i < e->f.count; i++)
		fake_answer(&e->f, e->r, i, 0, l34, 2, NULL, 0);
	CU_ASSERT_EQUAL(res.calls, 1);
	CU_ASSERT_EQUAL(res.status, DNS_TEMPFAIL);
	env_free(e);
}

static void test_bounds_and_local_coalescing(void)
{
	struct dns_conf conf;
	env_conf(&conf);
	conf.max_pending = 6;
	conf.max_inflight = 2;
	struct env *e = env_new(&conf);
	struct result res[8];
	const struct dns_entry *hit;
	memset(res, 0, sizeof(res));
	/* Same name five times: one query. */
	for (int i = 0; i < 5; i++)
		CU_ASSERT_EQUAL(
			dns_resolve(e->r, "same.example", DNS_T_A, result_cb, &res[i], &hit), 0);
	CU_ASSERT_EQUAL(e->f.count, 1);
	CU_ASSERT_EQUAL(env_ctr(e).coalesced, 4);
	CU_ASSERT_EQUAL(dns_resolve(e->r, "other.example", DNS_T_A, result_cb, &res[5], &hit), 0);
	CU_ASSERT_EQUAL(e->f.count, 2);
	/* Pending table full. */
	CU_ASSERT_EQUAL(dns_resolve(e->r, "third.example", DNS_T_A, result_cb, &res[6], &hit),
			-ENOSPC);
	CU_ASSERT_EQUAL(env_ctr(e).pending_full, 1);
	struct dns_rr an = RR_A("same.example", 60, 3);
	fake_answer(&e->f, e->r, 0, 0, &an, 1, NULL, 0);
	for (int i = 0; i < 5; i++) {
		CU_ASSERT_EQUAL(res[i].calls, 1);
		CU_ASSERT_EQUAL(res[i].a, 3);
	}
	/* In-flight table full (2): a third distinct name is refused. */
	CU_ASSERT_EQUAL(dns_resolve(e->r, "x1.example", DNS_T_A, result_cb, &res[6], &hit), 0);
	CU_ASSERT_EQUAL(dns_resolve(e->r, "x2.example", DNS_T_A, result_cb, &res[7], &hit),
			-ENOSPC);
	CU_ASSERT(env_ctr(e).inflight_full >= 1);
	env_free(e);
}

/*
 * Many names waiting at once (more than the resolver's lists of waiting
 * requests, so lists are shared), two requests each, answered in reverse
 * order: each answer reaches its own two requests and nobody else's.
 */
static void test_many_names_waiting(void)
{
	enum { NAMES = 200 };
	struct dns_conf conf;
	env_conf(&conf);
	conf.max_pending = 2 * NAMES;
	conf.max_inflight = NAMES;
	struct env *e = env_new(&conf);
	static struct result res[2 * NAMES];
	const struct dns_entry *hit;
	char name[64];
	memset(res, 0, sizeof(res));
	for (int i = 0; i < 2 * NAMES; i++) {
		snprintf(name, sizeof(name), "h%d.many.example", i / 2);
		CU_ASSERT_EQUAL(dns_resolve(e->r, name, DNS_T_A, result_cb, &res[i], &hit), 0);
	}
	CU_ASSERT_EQUAL_FATAL(e->f.count, NAMES);
	CU_ASSERT_EQUAL(env_ctr(e).coalesced, NAMES);
	for (int k = NAMES - 1; k >= 0; k--) {
		snprintf(name, sizeof(name), "h%d.many.example", k);
		struct dns_rr an = RR_A(name, 60, IP4(10, 77, k / 256, k % 256));
		fake_answer(&e->f, e->r, (unsigned)k, 0, &an, 1, NULL, 0);
		if (k == NAMES / 2) /* half answered: the other half still waits */
			for (int i = 0; i < NAMES; i++)
				CU_ASSERT_EQUAL(res[i].calls, 0);
	}
	for (int i = 0; i < 2 * NAMES; i++) {
		CU_ASSERT_EQUAL(res[i].calls, 1);
		CU_ASSERT_EQUAL(res[i].status, DNS_OK);
		CU_ASSERT_EQUAL(res[i].a, IP4(10, 77, (i / 2) / 256, (i / 2) % 256));
	}
	CU_ASSERT_EQUAL(dns_resolver_pending(e->r), 0);
	env_free(e);
}

static void test_tlsa_cached_and_no_resolvers(void)
{
	struct env *e = env_default();
	struct result res = {0};
	const struct dns_entry *hit;
	static const uint8_t digest[32] = {0xde, 0xad, 0xbe, 0xef, [31] = 0x42};
	struct dns_rr an = {.name = "_25._tcp.mx.example",
			    .type = DNS_T_TLSA,
			    .rclass = DNS_C_IN,
			    .ttl = 300,
			    .tlsa = {3, 1, 1, digest, sizeof(digest)}};
	CU_ASSERT_EQUAL(dns_resolve(e->r, "_25._tcp.mx.example", DNS_T_TLSA, result_cb, &res, &hit),
			0);
	fake_answer(&e->f, e->r, 0, DNS_F_AD, &an, 1, NULL, 0);
	CU_ASSERT_EQUAL(res.status, DNS_OK);
	CU_ASSERT_EQUAL(dns_resolve(e->r, "_25._TCP.mx.example", DNS_T_TLSA, result_cb, &res, &hit),
			1);
	CU_ASSERT_EQUAL_FATAL(hit->rr_count, 1);
	CU_ASSERT(hit->ad);
	CU_ASSERT_EQUAL(hit->rr[0].tlsa.usage, 3);
	CU_ASSERT_EQUAL(hit->rr[0].tlsa.len, 32);
	CU_ASSERT_EQUAL(memcmp(hit->rr[0].tlsa.data, digest, 32), 0);
	CU_ASSERT_STRING_EQUAL(hit->rr[0].name, "_25._tcp.mx.example");
	env_free(e);

	/* No upstream configured: the request fails at once, temporarily. */
	struct dns_conf conf;
	env_conf(&conf);
	conf.resolver_count = 0;
	e = env_new(&conf);
	memset(&res, 0, sizeof(res));
	CU_ASSERT_EQUAL(dns_resolve(e->r, "x.example", DNS_T_A, result_cb, &res, &hit), 0);
	CU_ASSERT_EQUAL(res.calls, 1);
	CU_ASSERT_EQUAL(res.status, DNS_TEMPFAIL);
	CU_ASSERT_EQUAL(dns_resolver_pending(e->r), 0);
	CU_ASSERT_EQUAL(e->f.count, 0);
	env_free(e);
}

/* ---- coalescing across threads ------------------------------------------------ */

#define CO_THREADS 3

struct co_arg {
	struct dns_cache *c;
	pthread_barrier_t *barrier;
	struct fake f;
	struct result res;
	int rc;
	uint64_t sent;
};

static void *co_thread(void *p)
{
	struct co_arg *a = p;
	unsigned tid;
	const struct dns_entry *hit;
	rte_thread_register();
	if (dns_cache_register_thread(a->c, &tid) != 0) {
		a->rc = -99;
		return NULL;
	}
	struct dns_resolver *r =
		dns_resolver_create(a->c, tid, &fake_ops, &a->f, (uint16_t)(41000 + tid * 100),
				    (uint16_t)(41099 + tid * 100));
	uint64_t now = 5000000;
	dns_resolver_poll(r, now);
	pthread_barrier_wait(a->barrier);
	a->rc = dns_resolve(r, "co.example", DNS_T_A, result_cb, &a->res, &hit);
	pthread_barrier_wait(a->barrier); /* everyone has asked before anyone answers */
	for (int i = 0; i < 20000 && a->res.calls == 0; i++) {
		if (a->f.count > 0 && !a->f.q[0].answered) {
			struct dns_rr an = RR_A("co.example", 300, 77);
			fake_answer(&a->f, r, 0, 0, &an, 1, NULL, 0);
		}
		dns_resolver_poll(r, now);
		dns_cache_quiescent(a->c, tid);
		usleep(100);
	}
	a->sent = a->f.count;
	pthread_barrier_wait(a->barrier); /* nobody destroys a ring others may still use */
	dns_resolver_destroy(r);
	dns_cache_unregister_thread(a->c, tid);
	rte_thread_unregister();
	return NULL;
}

static void test_coalescing_threads(void)
{
	struct dns_conf conf;
	env_conf(&conf);
	char name[16];
	snprintf(name, sizeof(name), "co%u", env_seq++);
	struct dns_cache *c = dns_cache_create(&conf, name);
	CU_ASSERT_PTR_NOT_NULL_FATAL(c);
	pthread_barrier_t barrier;
	pthread_barrier_init(&barrier, NULL, CO_THREADS);
	static struct co_arg args[CO_THREADS];
	pthread_t th[CO_THREADS];
	for (int t = 0; t < CO_THREADS; t++) {
		memset(&args[t], 0, sizeof(args[t]));
		args[t].c = c;
		args[t].barrier = &barrier;
		pthread_create(&th[t], NULL, co_thread, &args[t]);
	}
	uint64_t sent = 0;
	for (int t = 0; t < CO_THREADS; t++) {
		pthread_join(th[t], NULL);
		CU_ASSERT_EQUAL(args[t].rc, 0);
		CU_ASSERT_EQUAL(args[t].res.calls, 1);
		CU_ASSERT_EQUAL(args[t].res.status, DNS_OK);
		CU_ASSERT_EQUAL(args[t].res.a, 77);
		sent += args[t].sent;
	}
	CU_ASSERT_EQUAL(sent, 1); /* exactly one upstream query for the machine */
	struct dns_counters ctr;
	dns_cache_counters(c, &ctr);
	CU_ASSERT_EQUAL(ctr.upstream_queries, 1);
	CU_ASSERT_EQUAL(ctr.coalesced, CO_THREADS - 1);
	CU_ASSERT_EQUAL(ctr.notify_drops, 0);
	pthread_barrier_destroy(&barrier);
	dns_cache_destroy(c);
}

/* The transport's port filter (the relay's flow steering): even ports for S0, odd for S1. */
static int port_filter_mode; /* 0: parity by server, 1: refuse every port */
static bool parity_port_ok(void *ctx, uint32_t server_ip, uint16_t src_port)
{
	(void)ctx;
	if (port_filter_mode == 1)
		return false;
	return (src_port & 1) == (server_ip == S0 ? 0 : 1);
}

static const struct dns_resolver_ops filtered_ops = {.send = fake_send, .port_ok = parity_port_ok};

static void test_port_filter(void)
{
	struct env *e = env_default();
	struct result res = {0};
	const struct dns_entry *hit;
	char name[64];

	/* Replace the resolver by one whose transport filters ports. */
	dns_resolver_destroy(e->r);
	e->r = dns_resolver_create(e->c, e->tid, &filtered_ops, &e->f, PORT_LO, PORT_HI);
	CU_ASSERT_PTR_NOT_NULL_FATAL(e->r);
	dns_resolver_poll(e->r, e->now);
	port_filter_mode = 0;
	for (int i = 0; i < 40; i++) {
		snprintf(name, sizeof(name), "p%d.example", i);
		CU_ASSERT_EQUAL(dns_resolve(e->r, name, DNS_T_A, result_cb, &res, &hit), 0);
	}
	CU_ASSERT_EQUAL_FATAL(e->f.count, 40);
	/* Every try times out once: the retries go to S1, on odd ports. */
	env_advance(e, e->conf.timeout_us);
	CU_ASSERT_EQUAL_FATAL(e->f.count, 80);
	unsigned distinct = 0;
	for (unsigned i = 0; i < e->f.count; i++) {
		CU_ASSERT_EQUAL(e->f.q[i].server, i < 40 ? S0 : S1);
		CU_ASSERT_EQUAL(e->f.q[i].port & 1, i < 40 ? 0 : 1);
		CU_ASSERT(e->f.q[i].port >= PORT_LO && e->f.q[i].port <= PORT_HI);
		if (i > 0 && e->f.q[i].port != e->f.q[i - 1].port)
			distinct++;
	}
	CU_ASSERT(distinct > 70); /* still random, not one port */
	struct dns_counters mine;
	dns_resolver_counters(e->r, &mine);
	CU_ASSERT_EQUAL(mine.upstream_queries, 80);
	CU_ASSERT_EQUAL(mine.timeouts, 40);
	CU_ASSERT_EQUAL(mine.port_busy, 0);
	CU_ASSERT_EQUAL(mine.entries, 0); /* machine-wide: not a thread's */
	/* Over TCP the transport picks its own port: TC is followed whatever the filter says. */
	fake_answer(&e->f, e->r, 40, DNS_F_TC, NULL, 0, NULL, 0);
	CU_ASSERT_EQUAL_FATAL(e->f.count, 81);
	CU_ASSERT(e->f.q[80].tcp);
	/* No port acceptable: the try is skipped and counted; all skipped -> TEMPFAIL. */
	port_filter_mode = 1;
	res = (struct result){0};
	CU_ASSERT_EQUAL(dns_resolve(e->r, "nowhere.example", DNS_T_A, result_cb, &res, &hit), 0);
	CU_ASSERT_EQUAL(res.calls, 1);
	CU_ASSERT_EQUAL(res.status, DNS_TEMPFAIL);
	dns_resolver_counters(e->r, &mine);
	CU_ASSERT_EQUAL(mine.port_busy, 4); /* 2 servers x 2 attempts */
	CU_ASSERT_EQUAL(env_ctr(e).port_busy, 4);
	port_filter_mode = 0;
	env_free(e);
}

CU_TestInfo dns_resolver_tests[] = {
	{"basic_query_and_hit", test_basic_query_and_hit},
	{"anti_spoofing", test_anti_spoofing},
	{"retries_and_timeout", test_retries_and_timeout},
	{"staggered_deadlines", test_staggered_deadlines},
	{"servfail_next_server", test_servfail_next_server},
	{"tc_retry_over_tcp", test_tc_retry_over_tcp},
	{"negative_ttl_from_soa", test_negative_ttl_from_soa},
	{"serve_stale", test_serve_stale},
	{"prefetch", test_prefetch},
	{"cname_chain_and_loop", test_cname_chain_and_loop},
	{"bounds_and_local_coalescing", test_bounds_and_local_coalescing},
	{"many_names_waiting", test_many_names_waiting},
	{"tlsa_cached_and_no_resolvers", test_tlsa_cached_and_no_resolvers},
	{"coalescing_threads", test_coalescing_threads},
	{"port_filter", test_port_filter},
	CU_TEST_INFO_NULL,
};
