/*
 * fuzz_dns_response.c - libFuzzer target: arbitrary bytes as a DNS response.
 *
 * Each input is parsed by dns_msg_parse() (every decoded name and record is
 * then read back in full, so ASan sees any bad pointer), and is also fed to
 * a resolver that has a query in flight, through the RFC 5452 matching path:
 * the input's ID and question are forced to match the outstanding query
 * half of the time so the answer/caching/CNAME code runs too.
 */
#include "dns.h"

#include <rte_eal.h>
#include <stdlib.h>
#include <string.h>

static struct dns_cache *cache;
static struct dns_resolver *res;
static unsigned tid;
static uint16_t last_port;
static uint8_t last_query[512];
static size_t last_len;
static uint64_t now_us = 1000000;
static struct dns_msg msg;

static int fz_send(void *ctx, uint32_t server, uint16_t port, const uint8_t *pkt, size_t len,
		   bool tcp)
{
	(void)ctx;
	(void)server;
	(void)tcp;
	last_port = port;
	if (len <= sizeof(last_query)) {
		memcpy(last_query, pkt, len);
		last_len = len;
	}
	return 0;
}

static const struct dns_resolver_ops ops = {.send = fz_send};

static void noop_cb(void *arg, int status, const struct dns_entry *e)
{
	(void)arg;
	(void)status;
	if (e) {
		volatile size_t sink = strlen(e->name) + strlen(e->canon);
		for (unsigned i = 0; i < e->rr_count; i++)
			if (e->rr[i].type == DNS_T_MX)
				sink += strlen(e->rr[i].mx.host);
		(void)sink;
	}
}

static void setup(void)
{
	char *argv[] = {"fuzz",
			"-l",
			"0",
			"--no-huge",
			"-m",
			"128",
			"--no-pci",
			"--no-shconf",
			"--no-telemetry",
			"--log-level=error",
			"--file-prefix=mxdnsfuzz",
			NULL};
	if (rte_eal_init(11, argv) < 0)
		abort();
	struct dns_conf conf;
	dns_conf_defaults(&conf);
	conf.resolvers[0] = 0x0a4d0001;
	conf.resolver_count = 1;
	conf.max_entries = 4096;
	conf.seed = 7;
	conf.attempts = 1;
	cache = dns_cache_create(&conf, "fuzz");
	if (cache == NULL || dns_cache_register_thread(cache, &tid) != 0)
		abort();
	res = dns_resolver_create(cache, tid, &ops, NULL, 50000, 50999);
	if (res == NULL)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static uint8_t buf[65536];
	const struct dns_entry *hit;

	if (cache == NULL)
		setup();
	if (dns_msg_parse(&msg, data, size, NULL) == 0) {
		volatile size_t sink = strlen(msg.qname);
		for (unsigned i = 0; i < msg.rr_count; i++) {
			const struct dns_rr *r = &msg.rr[i];
			sink += strlen(r->name);
			if (r->type == DNS_T_MX)
				sink += strlen(r->mx.host);
			else if (r->type == DNS_T_CNAME || r->type == DNS_T_NS)
				sink += strlen(r->target);
			else if (r->type == DNS_T_SOA)
				sink += strlen(r->soa.mname) + strlen(r->soa.rname);
			else if (r->type == DNS_T_TXT && r->txt.len)
				sink += r->txt.data[r->txt.len - 1];
			else if (r->type == DNS_T_TLSA && r->tlsa.len)
				sink += r->tlsa.data[r->tlsa.len - 1];
		}
		(void)sink;
	}

	/* Through the resolver: one query for fuzz.example MX in flight. */
	now_us += 2000000; /* earlier tries time out, entries expire */
	dns_resolver_poll(res, now_us);
	dns_cache_flush(cache, NULL);
	last_len = 0;
	if (dns_resolve(res, "fuzz.example", size % 2 ? DNS_T_MX : DNS_T_A, noop_cb, NULL, &hit) !=
		    0 ||
	    last_len < 12 || size > sizeof(buf))
		return 0;
	memcpy(buf, data, size);
	if (size >= 12 && (data[0] & 1)) {
		/* Splice in the query's ID and question so matching succeeds. */
		size_t qlen = last_len - 11 - 12; /* query = header + question + OPT */
		if (size >= 12 + qlen) {
			memcpy(buf, last_query, 2);
			buf[4] = 0;
			buf[5] = 1;
			memcpy(buf + 12, last_query + 12, qlen);
			buf[2] |= 0x80;
		}
	}
	dns_resolver_input(res, 0x0a4d0001, 53, last_port, buf, size, false);
	dns_resolver_poll(res, now_us);
	dns_cache_quiescent(cache, tid);
	dns_cache_reclaim(cache);
	return 0;
}
