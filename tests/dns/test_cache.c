/* test_cache.c - the shared cache: TTL clamps, eviction, flush, RCU under concurrent readers. */
#include "core.h"
#include "dns.h"
#include "fake_upstream.h"
#include "test_dns.h"
#include "test_env.h"

#include <pthread.h>
#include <sched.h>
#include <rte_lcore.h>

static struct dns_cache *cache_new(struct dns_conf *conf)
{
	char name[32];
	snprintf(name, sizeof(name), "c%u", env_seq++);
	struct dns_cache *c = dns_cache_create(conf, name);
	CU_ASSERT_PTR_NOT_NULL_FATAL(c);
	return c;
}

static int insert_a(struct dns_cache *c, const char *name, uint32_t addr, uint32_t ttl,
		    uint64_t now)
{
	struct dns_rr rr = RR_A(name, ttl, addr);
	return dns_cache_insert_rrs(c, 9999, name, DNS_T_A, DNS_OK, NULL, false, ttl, &rr, 1, now);
}

static void test_ttl_clamps(void)
{
	struct dns_conf conf;
	env_conf(&conf);
	conf.min_ttl = 60;
	conf.max_ttl = 3600;
	conf.negative_ttl = 900;
	struct dns_cache *c = cache_new(&conf);
	uint64_t now = 1000000;
	CU_ASSERT_EQUAL(insert_a(c, "short.example", 1, 5, now), 0);
	CU_ASSERT_EQUAL(insert_a(c, "long.example", 2, 999999, now), 0);
	CU_ASSERT_EQUAL(dns_cache_insert_rrs(c, 9999, "nx.example", DNS_T_A, DNS_NXDOMAIN, NULL,
					     false, 5000, NULL, 0, now),
			0);
	CU_ASSERT_EQUAL(dns_cache_insert_rrs(c, 9999, "nx2.example", DNS_T_A, DNS_NODATA, NULL,
					     false, 100, NULL, 0, now),
			0);
	const struct dns_entry *e = dns_cache_lookup(c, 9999, "SHORT.example.", DNS_T_A, now);
	CU_ASSERT_PTR_NOT_NULL_FATAL(e);
	CU_ASSERT_EQUAL(e->ttl, 60);
	CU_ASSERT_EQUAL(e->rr[0].a, 1);
	CU_ASSERT_STRING_EQUAL(e->name, "short.example");
	e = dns_cache_lookup(c, 9999, "long.example", DNS_T_A, now);
	CU_ASSERT_EQUAL(e->ttl, 3600);
	e = dns_cache_lookup(c, 9999, "nx.example", DNS_T_A, now);
	CU_ASSERT_EQUAL(e->status, DNS_NXDOMAIN);
	CU_ASSERT_EQUAL(e->ttl, 900);
	e = dns_cache_lookup(c, 9999, "nx2.example", DNS_T_A, now);
	CU_ASSERT_EQUAL(e->status, DNS_NODATA);
	CU_ASSERT_EQUAL(e->ttl, 100);
	CU_ASSERT_PTR_NULL(dns_cache_lookup(c, 9999, "short.example", DNS_T_MX, now));
	/* Expiry: one microsecond before is a hit, at the TTL a miss (entry returned, expired). */
	struct dns_counters before, after;
	dns_cache_counters(c, &before);
	e = dns_cache_lookup(c, 9999, "short.example", DNS_T_A, now + 60000000 - 1);
	CU_ASSERT_PTR_NOT_NULL(e);
	e = dns_cache_lookup(c, 9999, "short.example", DNS_T_A, now + 60000000);
	CU_ASSERT_PTR_NOT_NULL_FATAL(e);
	CU_ASSERT(e->expire_us <= now + 60000000);
	dns_cache_counters(c, &after);
	CU_ASSERT_EQUAL(after.hits - before.hits, 1);
	CU_ASSERT_EQUAL(after.misses - before.misses, 1);
	CU_ASSERT_EQUAL(after.negative_hits, 2);
	CU_ASSERT_EQUAL(dns_cache_insert_rrs(c, 0, "bad..name", DNS_T_A, DNS_OK, NULL, false, 1,
					     NULL, 0, now),
			-EINVAL);
	dns_cache_destroy(c);
}

static void test_eviction_bound(void)
{
	struct dns_conf conf;
	env_conf(&conf);
	conf.max_entries = 64;
	struct dns_cache *c = cache_new(&conf);
	struct dns_counters ctr;
	char name[64];
	uint64_t now = 1000000;
	CU_ASSERT_EQUAL(insert_a(c, "hot.example", 7, 3600, now), 0);
	unsigned max_seen = 0;
	for (unsigned i = 0; i < 200; i++) {
		/* The hot entry is referenced between inserts: CLOCK keeps it. */
		CU_ASSERT_PTR_NOT_NULL(dns_cache_lookup(c, 9999, "hot.example", DNS_T_A, now));
		snprintf(name, sizeof(name), "n%u.example", i);
		CU_ASSERT_EQUAL(insert_a(c, name, i, 3600, now), 0);
		dns_cache_counters(c, &ctr);
		if (ctr.entries > max_seen)
			max_seen = (unsigned)ctr.entries;
	}
	dns_cache_counters(c, &ctr);
	CU_ASSERT_EQUAL(max_seen, 64);
	CU_ASSERT_EQUAL(ctr.entries, 64);
	CU_ASSERT_EQUAL(ctr.evictions, 201 - 64);
	CU_ASSERT_PTR_NOT_NULL(dns_cache_lookup(c, 9999, "hot.example", DNS_T_A, now));
	CU_ASSERT_PTR_NOT_NULL(dns_cache_lookup(c, 9999, "n199.example", DNS_T_A, now));
	CU_ASSERT_PTR_NULL(dns_cache_lookup(c, 9999, "n0.example", DNS_T_A, now));
	/* No reader registered: everything retired can be freed. */
	dns_cache_reclaim(c);
	dns_cache_counters(c, &ctr);
	CU_ASSERT_EQUAL(ctr.entries_allocated - ctr.entries_freed, 64);
	dns_cache_destroy(c);
}

static int count_cb(void *arg, const struct dns_entry *e)
{
	unsigned *n = arg;
	(*n)++;
	return e->name[0] == '\0';
}

static void test_flush_foreach(void)
{
	struct dns_conf conf;
	env_conf(&conf);
	struct dns_cache *c = cache_new(&conf);
	struct dns_rr mx = RR_MX("a.example", 300, 10, "mx.a.example");
	uint64_t now = 1000000;
	insert_a(c, "a.example", 1, 300, now);
	insert_a(c, "b.example", 2, 300, now);
	CU_ASSERT_EQUAL(dns_cache_insert_rrs(c, 9999, "A.Example", DNS_T_MX, DNS_OK, NULL, true,
					     300, &mx, 1, now),
			0);
	const struct dns_entry *e = dns_cache_lookup(c, 9999, "a.example", DNS_T_MX, now);
	CU_ASSERT_PTR_NOT_NULL_FATAL(e);
	CU_ASSERT(e->ad);
	CU_ASSERT_STRING_EQUAL(e->rr[0].mx.host, "mx.a.example");
	unsigned n = 0;
	CU_ASSERT_EQUAL(dns_cache_foreach(c, count_cb, &n), 3);
	CU_ASSERT_EQUAL(n, 3);
	CU_ASSERT_EQUAL(dns_cache_flush(c, "A.EXAMPLE."), 2);
	n = 0;
	CU_ASSERT_EQUAL(dns_cache_foreach(c, count_cb, &n), 1);
	CU_ASSERT_PTR_NULL(dns_cache_lookup(c, 9999, "a.example", DNS_T_A, now));
	CU_ASSERT_PTR_NOT_NULL(dns_cache_lookup(c, 9999, "b.example", DNS_T_A, now));
	CU_ASSERT_EQUAL(dns_cache_flush(c, NULL), 1);
	struct dns_counters ctr;
	dns_cache_reclaim(c);
	dns_cache_counters(c, &ctr);
	CU_ASSERT_EQUAL(ctr.entries, 0);
	CU_ASSERT_EQUAL(ctr.entries_allocated, 3);
	CU_ASSERT_EQUAL(ctr.entries_freed, 3);
	dns_cache_destroy(c);
}

/* ---- RCU: readers hammer lookups while a writer replaces entries ---------- */

#define RCU_NAMES 64
#define RCU_READERS 2

struct rcu_arg {
	struct dns_cache *c;
	unsigned tid;
	volatile int *stop;
	uint64_t lookups, found, errors;
};

static void *rcu_reader(void *p)
{
	struct rcu_arg *a = p;
	char name[RCU_NAMES][32];
	rte_thread_register();
	for (unsigned i = 0; i < RCU_NAMES; i++)
		snprintf(name[i], sizeof(name[i]), "r%u.example", i);
	while (!__atomic_load_n(a->stop, __ATOMIC_ACQUIRE)) {
		for (unsigned i = 0; i < RCU_NAMES; i++) {
			const struct dns_entry *e =
				dns_cache_lookup(a->c, a->tid, name[i], DNS_T_A, 1000000);
			a->lookups++;
			if (e == NULL)
				continue;
			a->found++;
			/* Every field of an entry must be intact until we report quiescence. */
			if (e->rr_count != 1 || e->rr[0].a >> 16 != i || strcmp(e->name, name[i]))
				a->errors++;
		}
		dns_cache_quiescent(a->c, a->tid);
	}
	rte_thread_unregister();
	return NULL;
}

static void test_rcu_concurrent_readers(void)
{
	struct dns_conf conf;
	env_conf(&conf);
	struct dns_cache *c = cache_new(&conf);
	struct rcu_arg args[RCU_READERS];
	pthread_t th[RCU_READERS];
	volatile int stop = 0;
	char name[32];

	for (unsigned i = 0; i < RCU_NAMES; i++) {
		snprintf(name, sizeof(name), "r%u.example", i);
		insert_a(c, name, i << 16, 3600, 1000000);
	}
	for (int t = 0; t < RCU_READERS; t++) {
		memset(&args[t], 0, sizeof(args[t]));
		args[t].c = c;
		args[t].stop = &stop;
		CU_ASSERT_EQUAL_FATAL(dns_cache_register_thread(c, &args[t].tid), 0);
		CU_ASSERT_EQUAL_FATAL(pthread_create(&th[t], NULL, rcu_reader, &args[t]), 0);
	}
	unsigned replaced = 0;
	for (unsigned round = 0; round < 20000; round++) {
		unsigned i = round % RCU_NAMES;
		snprintf(name, sizeof(name), "r%u.example", i);
		/* Refused (-EBUSY) while a descheduled reader holds the grace period: retry. */
		for (int tries = 0; tries < 100000; tries++) {
			if (insert_a(c, name, (i << 16) | (round & 0xffff), 3600, 1000000) == 0) {
				replaced++;
				break;
			}
			sched_yield();
		}
		if (round % 97 == 0 && round < 20000 - RCU_NAMES)
			dns_cache_flush(c, name); /* deletes too, not only replaces */
		if (round % 256 == 0)
			dns_cache_reclaim(c);
	}
	__atomic_store_n(&stop, 1, __ATOMIC_RELEASE);
	for (int t = 0; t < RCU_READERS; t++) {
		pthread_join(th[t], NULL);
		dns_cache_unregister_thread(c, args[t].tid);
	}
	dns_cache_reclaim(c);
	struct dns_counters ctr;
	dns_cache_counters(c, &ctr);
	CU_ASSERT_EQUAL(replaced, 20000);
	CU_ASSERT_EQUAL(ctr.entries, RCU_NAMES);
	CU_ASSERT_EQUAL(ctr.entries_allocated, 20000 + RCU_NAMES);
	CU_ASSERT_EQUAL(ctr.entries_allocated - ctr.entries_freed, RCU_NAMES);
	for (int t = 0; t < RCU_READERS; t++) {
		CU_ASSERT_EQUAL(args[t].errors, 0);
		CU_ASSERT(args[t].found > 0);
	}
	dns_cache_destroy(c);
}

static void test_conf_load(void)
{
	struct dns_conf c;
	struct cfg_file *cf;
	char err[256];
	dns_conf_defaults(&c);
	CU_ASSERT_EQUAL(c.timeout_us, 1000000);
	CU_ASSERT_EQUAL(c.attempts, 2);
	CU_ASSERT_EQUAL(c.max_ttl, 86400);
	CU_ASSERT_EQUAL(c.negative_ttl, 3600);
	CU_ASSERT_EQUAL(c.stale_max, 86400);
	CU_ASSERT_EQUAL(c.max_entries, 100000);
	const char *text = "[dns]\nresolvers = 10.77.0.1, 192.0.2.53\ntimeout = 500ms\n"
			   "attempts = 3\nmin_ttl = 30s\nmax_ttl = 2h\nnegative_ttl = 10m\n"
			   "stale_max = 1d\nmax_entries = 5000\n";
	CU_ASSERT_EQUAL_FATAL(cfg_parse_string(text, "t.conf", &cf, err, sizeof(err)), 0);
	CU_ASSERT_EQUAL(dns_conf_load(&c, cf, err, sizeof(err)), 0);
	CU_ASSERT_EQUAL(c.resolver_count, 2);
	CU_ASSERT_EQUAL(c.resolvers[0], IP4(10, 77, 0, 1));
	CU_ASSERT_EQUAL(c.resolvers[1], IP4(192, 0, 2, 53));
	CU_ASSERT_EQUAL(c.timeout_us, 500000);
	CU_ASSERT_EQUAL(c.attempts, 3);
	CU_ASSERT_EQUAL(c.min_ttl, 30);
	CU_ASSERT_EQUAL(c.max_ttl, 7200);
	CU_ASSERT_EQUAL(c.negative_ttl, 600);
	CU_ASSERT_EQUAL(c.max_entries, 5000);
	cfg_free(cf);
	CU_ASSERT_EQUAL_FATAL(
		cfg_parse_string("[dns]\nresolvers = 10.77.0.1\nresolvers = 10.77.0.300\n",
				 "b.conf", &cf, err, sizeof(err)),
		0);
	CU_ASSERT_EQUAL(dns_conf_load(&c, cf, err, sizeof(err)), -EINVAL);
	CU_ASSERT_STRING_EQUAL(err, "b.conf:3: [dns] resolvers: expected IPv4 addresses");
	cfg_free(cf);
	CU_ASSERT_EQUAL_FATAL(cfg_parse_string("[dns]\nmin_ttl = 2d\nattempts = 0\n", "c.conf", &cf,
					       err, sizeof(err)),
			      0);
	CU_ASSERT_EQUAL(dns_conf_load(&c, cf, err, sizeof(err)), -EINVAL);
	CU_ASSERT_STRING_EQUAL(err, "c.conf:3: [dns] attempts: expected an integer in 1..10");
	cfg_free(cf);
}

CU_TestInfo dns_cache_tests[] = {
	{"conf_load", test_conf_load},
	{"ttl_clamps", test_ttl_clamps},
	{"eviction_bound", test_eviction_bound},
	{"flush_foreach", test_flush_foreach},
	{"rcu_concurrent_readers", test_rcu_concurrent_readers},
	CU_TEST_INFO_NULL,
};
