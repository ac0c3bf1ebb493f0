/*
 * dns_bench.c - lib/dns benchmarks (not run by the tests).
 *
 *   dns_bench [EAL args]      default: -l 0-1 --no-huge -m 512 --no-pci --no-shconf
 *
 * 1. Cache hits per second per core: every lcore looks up a working set of
 *    ENTRIES names (round robin, reporting RCU quiescence every 256 lookups)
 *    for SECONDS while one extra thread keeps replacing entries.
 * 2. Coalescing: a burst of 10,000 lookups to 1,000 new names, spread over
 *    all lcores (one resolver each, one shared cache), answered by a fake
 *    upstream only after the whole burst: counts upstream queries sent
 *    against lookups; the target is exactly one query per (name, type).
 */
#include "dns.h"

#include <pthread.h>
#include <sched.h>
#include <rte_eal.h>
#include <rte_launch.h>
#include <rte_lcore.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define ENTRIES 10000
#define SECONDS 2
#define BURST_LOOKUPS 10000
#define BURST_NAMES 1000

static struct dns_cache *cache;
static char names[ENTRIES][32];
static volatile int stop;
static uint64_t hits_per_lcore[RTE_MAX_LCORE];
static double secs_per_lcore[RTE_MAX_LCORE];

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static int reader(void *arg)
{
	(void)arg;
	unsigned tid, lc = rte_lcore_id();
	uint64_t hits = 0;
	unsigned n = 0;
	if (dns_cache_register_thread(cache, &tid) != 0)
		return -1;
	double t0 = now_s();
	while (!__atomic_load_n(&stop, __ATOMIC_RELAXED)) {
		for (int k = 0; k < 256; k++) {
			const struct dns_entry *e =
				dns_cache_lookup(cache, tid, names[n], DNS_T_A, 1000);
			hits += e != NULL && e->rr_count == 1;
			if (++n == ENTRIES)
				n = 0;
		}
		dns_cache_quiescent(cache, tid);
	}
	secs_per_lcore[lc] = now_s() - t0;
	hits_per_lcore[lc] = hits;
	dns_cache_unregister_thread(cache, tid);
	return 0;
}

static void *writer(void *arg)
{
	uint64_t *writes = arg;
	uint32_t v = 0;
	double t0 = now_s();
	/* The readers run on every lcore, main included: the writer ends the run. */
	while (now_s() - t0 < SECONDS) {
		unsigned i = v % ENTRIES;
		struct dns_rr rr = {
			.name = names[i], .type = DNS_T_A, .rclass = DNS_C_IN, .ttl = 3600, .a = v};
		if (dns_cache_insert_rrs(cache, 9999, names[i], DNS_T_A, DNS_OK, NULL, false, 3600,
					 &rr, 1, 0) == 0)
			(*writes)++;
		v++;
		if (v % 64 == 0)
			usleep(1000); /* ~60k replacements/s: a busy relay's refresh rate */
	}
	__atomic_store_n(&stop, 1, __ATOMIC_RELAXED);
	return NULL;
}

/* ---- coalescing burst ---------------------------------------------------------- */

struct burst_ctx {
	unsigned tid;
	struct dns_resolver *r;
	unsigned sent, completed, lookups, hits;
	struct {
		uint16_t port;
		uint8_t pkt[512];
		size_t len;
	} q[BURST_NAMES];
};

static struct burst_ctx *bctx[RTE_MAX_LCORE];
static volatile unsigned burst_ready;

static int bsend(void *ctx, uint32_t ip, uint16_t port, const uint8_t *pkt, size_t len, bool tcp)
{
	struct burst_ctx *b = ctx;
	(void)ip;
	(void)tcp;
	if (b->sent >= BURST_NAMES || len > 512)
		return -1;
	b->q[b->sent].port = port;
	b->q[b->sent].len = len;
	memcpy(b->q[b->sent].pkt, pkt, len);
	b->sent++;
	return 0;
}

static const struct dns_resolver_ops bops = {.send = bsend};

static void bcb(void *arg, int status, const struct dns_entry *e)
{
	struct burst_ctx *b = arg;
	(void)e;
	if (status == DNS_OK)
		b->completed++;
}

static int burst_worker(void *arg)
{
	(void)arg;
	unsigned lc = rte_lcore_id(), idx = rte_lcore_index((int)lc), cores = rte_lcore_count();
	struct burst_ctx *b = calloc(1, sizeof(*b));
	const struct dns_entry *hit;
	char name[64];
	struct dns_msg *m = malloc(sizeof(*m)); /* one per lcore: no sharing */
	if (b == NULL || m == NULL || dns_cache_register_thread(cache, &b->tid) != 0)
		return -1;
	b->r = dns_resolver_create(cache, b->tid, &bops, b, (uint16_t)(20000 + idx * 1000),
				   (uint16_t)(20999 + idx * 1000));
	bctx[lc] = b;
	dns_resolver_poll(b->r, 1000);
	__atomic_add_fetch(&burst_ready, 1, __ATOMIC_ACQ_REL);
	while (__atomic_load_n(&burst_ready, __ATOMIC_ACQUIRE) < cores)
		;
	/* The burst: lookup i goes to core i % cores, name i % BURST_NAMES. */
	for (unsigned i = idx; i < BURST_LOOKUPS; i += cores) {
		snprintf(name, sizeof(name), "n%u.burst.example", i % BURST_NAMES);
		int rc = dns_resolve(b->r, name, DNS_T_A, bcb, b, &hit);
		b->lookups++;
		if (rc == 1)
			b->hits++, b->completed++;
	}
	__atomic_add_fetch(&burst_ready, 1, __ATOMIC_ACQ_REL);
	while (__atomic_load_n(&burst_ready, __ATOMIC_ACQUIRE) < 2 * cores)
		;
	/* Upstream answers each query it got (on the core that sent it). */
	for (unsigned k = 0; k < b->sent; k++) {
		uint8_t out[512];
		struct dns_builder bl;
		if (dns_msg_parse(m, b->q[k].pkt, b->q[k].len, NULL) != 0)
			continue;
		struct dns_rr rr = {
			.name = m->qname, .type = DNS_T_A, .rclass = DNS_C_IN, .ttl = 300, .a = k};
		dns_builder_init(&bl, out, sizeof(out), m->id, DNS_F_QR | DNS_F_RD | DNS_F_RA,
				 m->qname, m->qtype, m->qclass);
		dns_builder_add(&bl, DNS_SEC_ANSWER, &rr);
		int len = dns_builder_finish(&bl);
		dns_resolver_input(b->r, 0x0a4d0001, 53, b->q[k].port, out, (size_t)len, false);
	}
	__atomic_add_fetch(&burst_ready, 1, __ATOMIC_ACQ_REL);
	double t0 = now_s();
	while (b->completed < b->lookups && now_s() - t0 < 5) {
		dns_resolver_poll(b->r, 2000);
		dns_cache_quiescent(cache, b->tid);
	}
	while (__atomic_load_n(&burst_ready, __ATOMIC_ACQUIRE) < 3 * cores)
		;
	free(m);
	return 0;
}

int main(int argc, char **argv)
{
	char *defaults[] = {argv[0],
			    "-l",
			    "0-1",
			    "--no-huge",
			    "-m",
			    "512",
			    "--no-pci",
			    "--no-shconf",
			    "--no-telemetry",
			    "--log-level=warning",
			    "--file-prefix=mxdnsbench",
			    NULL};
	if (argc <= 1) {
		argv = defaults;
		argc = (int)(sizeof(defaults) / sizeof(defaults[0])) - 1;
	}
	if (rte_eal_init(argc, argv) < 0) {
		fprintf(stderr, "EAL init failed\n");
		return 1;
	}
	struct dns_conf conf;
	dns_conf_defaults(&conf);
	conf.resolvers[0] = 0x0a4d0001;
	conf.resolver_count = 1;
	conf.max_entries = 2 * ENTRIES;
	conf.max_pending = BURST_LOOKUPS;
	cache = dns_cache_create(&conf, "bench");
	if (cache == NULL)
		return 1;
	for (unsigned i = 0; i < ENTRIES; i++) {
		snprintf(names[i], sizeof(names[i]), "host%u.example.com", i);
		struct dns_rr rr = {
			.name = names[i], .type = DNS_T_A, .rclass = DNS_C_IN, .ttl = 3600, .a = i};
		dns_cache_insert_rrs(cache, 9999, names[i], DNS_T_A, DNS_OK, NULL, false, 3600, &rr,
				     1, 0);
	}

	/* 1. hits/s/core with a concurrent writer */
	uint64_t writes = 0;
	pthread_t wt;
	pthread_create(&wt, NULL, writer, &writes);
	/* Not pinned to the main lcore's CPU (which it inherited): let the kernel place it. */
	cpu_set_t all;
	CPU_ZERO(&all);
	for (int cpu = 0; cpu < CPU_SETSIZE && cpu < (int)sysconf(_SC_NPROCESSORS_ONLN); cpu++)
		CPU_SET(cpu, &all);
	pthread_setaffinity_np(wt, sizeof(all), &all);
	rte_eal_mp_remote_launch(reader, NULL, CALL_MAIN);
	rte_eal_mp_wait_lcore();
	pthread_join(wt, NULL);
	unsigned lc;
	double total = 0;
	RTE_LCORE_FOREACH(lc)
	{
		double rate = hits_per_lcore[lc] / secs_per_lcore[lc];
		total += rate;
		printf("cache_hits lcore %u: %.2f M hits/s\n", lc, rate / 1e6);
	}
	printf("cache_hits total: %.2f M hits/s on %u lcores (%.2f M/s/core), writer %lu "
	       "replacements\n",
	       total / 1e6, rte_lcore_count(), total / 1e6 / rte_lcore_count(),
	       (unsigned long)writes);

	/* 2. coalescing burst */
	dns_cache_flush(cache, NULL);
	rte_eal_mp_remote_launch(burst_worker, NULL, CALL_MAIN);
	rte_eal_mp_wait_lcore();
	unsigned lookups = 0, sent = 0, completed = 0, hits = 0;
	RTE_LCORE_FOREACH(lc)
	{
		if (bctx[lc] == NULL)
			continue;
		lookups += bctx[lc]->lookups;
		sent += bctx[lc]->sent;
		completed += bctx[lc]->completed;
		hits += bctx[lc]->hits;
	}
	struct dns_counters ctr;
	dns_cache_counters(cache, &ctr);
	printf("coalescing: %u lookups to %u names on %u lcores: %u upstream queries "
	       "(%.3f per name), %u completed, %u immediate hits, %lu coalesced waits\n",
	       lookups, BURST_NAMES, rte_lcore_count(), sent, (double)sent / BURST_NAMES, completed,
	       hits, (unsigned long)ctr.coalesced);
	printf("coalescing counters: inflight_full %lu pending_full %lu notify_drops %lu "
	       "mismatched %lu (id %lu addr %lu port %lu q %lu) timeouts %lu upstream %lu\n",
	       (unsigned long)ctr.inflight_full, (unsigned long)ctr.pending_full,
	       (unsigned long)ctr.notify_drops, (unsigned long)ctr.mismatched,
	       (unsigned long)ctr.mismatch_id, (unsigned long)ctr.mismatch_addr,
	       (unsigned long)ctr.mismatch_port, (unsigned long)ctr.mismatch_question,
	       (unsigned long)ctr.timeouts, (unsigned long)ctr.upstream_queries);
	RTE_LCORE_FOREACH(lc)
	{
		if (bctx[lc] == NULL)
			continue;
		dns_resolver_destroy(bctx[lc]->r);
		dns_cache_unregister_thread(cache, bctx[lc]->tid);
		free(bctx[lc]);
	}
	dns_cache_destroy(cache);
	rte_eal_cleanup();
	return (sent == BURST_NAMES && completed == lookups) ? 0 : 2;
}
