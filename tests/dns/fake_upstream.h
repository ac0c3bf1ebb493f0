/*
 * fake_upstream.h - a scripted DNS upstream for the lib/dns tests.
 *
 * fake_send() is the resolver's ops->send: it records each query.  A test
 * then answers a recorded query with fake_answer() (any records, flags,
 * RCODE, built with the library's own response encoder) or lets
 * fake_serve() answer every recorded query from a small zone table.
 */
#ifndef FAKE_UPSTREAM_H
#define FAKE_UPSTREAM_H

#include "dns.h"

#include <CUnit/CUnit.h>
#include <string.h>

#define FAKE_MAX 256

struct fake_query {
	uint32_t server;
	uint16_t port;
	bool tcp;
	bool answered;
	size_t len;
	uint8_t pkt[512];
};

struct fake {
	unsigned count;
	struct fake_query q[FAKE_MAX];
};

static inline int fake_send(void *ctx, uint32_t server_ip, uint16_t src_port, const uint8_t *pkt,
			    size_t len, bool tcp)
{
	struct fake *f = ctx;
	if (f->count >= FAKE_MAX || len > sizeof(f->q[0].pkt))
		return -ENOBUFS;
	struct fake_query *q = &f->q[f->count++];
	q->server = server_ip;
	q->port = src_port;
	q->tcp = tcp;
	q->answered = false;
	q->len = len;
	memcpy(q->pkt, pkt, len);
	return 0;
}

static const struct dns_resolver_ops fake_ops = {.send = fake_send};

/* Build the response to query @i into @buf; returns its length. */
static inline int fake_build(struct fake *f, unsigned i, uint16_t flags, const struct dns_rr *an,
			     unsigned nan, const struct dns_rr *ns, unsigned nns, uint8_t *buf,
			     size_t cap)
{
	static struct dns_msg qm;
	struct dns_builder b;
	if (dns_msg_parse(&qm, f->q[i].pkt, f->q[i].len, NULL) != 0)
		return -1;
	dns_builder_init(&b, buf, cap, qm.id, (uint16_t)(DNS_F_QR | DNS_F_RD | DNS_F_RA | flags),
			 qm.qname, qm.qtype, qm.qclass);
	for (unsigned k = 0; k < nan; k++)
		dns_builder_add(&b, DNS_SEC_ANSWER, &an[k]);
	for (unsigned k = 0; k < nns; k++)
		dns_builder_add(&b, DNS_SEC_AUTHORITY, &ns[k]);
	return dns_builder_finish(&b);
}

static inline void fake_answer(struct fake *f, struct dns_resolver *r, unsigned i, uint16_t flags,
			       const struct dns_rr *an, unsigned nan, const struct dns_rr *ns,
			       unsigned nns)
{
	uint8_t buf[4096];
	int len = fake_build(f, i, flags, an, nan, ns, nns, buf, sizeof(buf));
	CU_ASSERT_FATAL(len > 0);
	f->q[i].answered = true;
	dns_resolver_input(r, f->q[i].server, 53, f->q[i].port, buf, (size_t)len, f->q[i].tcp);
}

/* Zone: records for (name, type); rcode for names that have none. */
struct zone_rec {
	const char *name;
	uint16_t type;
	uint16_t rcode; /* DNS_RCODE_* when no records */
	struct dns_rr rr[6];
	unsigned n;
};

static const struct dns_rr zone_soa = {
	.name = "example",
	.type = DNS_T_SOA,
	.rclass = DNS_C_IN,
	.ttl = 600,
	.soa = {.mname = "ns.example",
		.rname = "hostmaster.example",
		.serial = 1,
		.refresh = 3600,
		.retry = 600,
		.expire = 86400,
		.minimum = 300},
};

/* Answer every unanswered query from @zone; unknown names get NXDOMAIN. */
static inline unsigned fake_serve(struct fake *f, struct dns_resolver *r,
				  const struct zone_rec *zone, unsigned nzone)
{
	static struct dns_msg qm;
	unsigned served = 0;
	for (unsigned i = 0; i < f->count; i++) {
		if (f->q[i].answered)
			continue;
		if (dns_msg_parse(&qm, f->q[i].pkt, f->q[i].len, NULL) != 0)
			continue;
		const struct zone_rec *hit = NULL;
		bool name_exists = false;
		for (unsigned z = 0; z < nzone; z++) {
			if (!dns_name_equal(zone[z].name, qm.qname))
				continue;
			name_exists = true;
			if (zone[z].type == qm.qtype)
				hit = &zone[z];
		}
		served++;
		if (hit && hit->n > 0)
			fake_answer(f, r, i, hit->rcode, hit->rr, hit->n, NULL, 0);
		else if (hit)
			fake_answer(f, r, i, hit->rcode, NULL, 0, &zone_soa, 1);
		else
			fake_answer(f, r, i, name_exists ? 0 : DNS_RCODE_NXDOMAIN, NULL, 0,
				    &zone_soa, 1);
	}
	return served;
}

#define RR_A(n, ttlv, addr)                                                                        \
	{                                                                                          \
		.name = (n), .type = DNS_T_A, .rclass = DNS_C_IN, .ttl = (ttlv), .a = (addr)       \
	}
#define RR_MX(n, ttlv, p, h)                                                                       \
	{                                                                                          \
		.name = (n), .type = DNS_T_MX, .rclass = DNS_C_IN, .ttl = (ttlv),                  \
		.mx = {(p),                                                                        \
		       (h) }                                                                       \
	}
#define RR_CNAME(n, ttlv, t)                                                                       \
	{                                                                                          \
		.name = (n), .type = DNS_T_CNAME, .rclass = DNS_C_IN, .ttl = (ttlv), .target = (t) \
	}

#define IP4(a, b, c, d) (((uint32_t)(a) << 24) | ((uint32_t)(b) << 16) | ((uint32_t)(c) << 8) | (d))

#endif
