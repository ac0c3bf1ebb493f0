/* test_env.h - one cache + one resolver + a fake upstream, for the lib/dns tests. */
#ifndef TEST_ENV_H
#define TEST_ENV_H

#include "dns.h"
#include "fake_upstream.h"

#include <stdio.h>
#include <stdlib.h>

#define S0 IP4(10, 77, 0, 1)
#define S1 IP4(10, 77, 0, 9)
#define PORT_LO 40000
#define PORT_HI 40999

struct env {
	struct dns_conf conf;
	struct dns_cache *c;
	unsigned tid;
	struct dns_resolver *r;
	struct fake f;
	uint64_t now;
};

extern unsigned env_seq; /* unique rte object names, defined in test_dns.c */

static inline void env_conf(struct dns_conf *conf)
{
	dns_conf_defaults(conf);
	conf->resolvers[0] = S0;
	conf->resolvers[1] = S1;
	conf->resolver_count = 2;
	conf->seed = 42;
	conf->max_entries = 1024;
}

static inline struct env *env_new(const struct dns_conf *conf)
{
	char name[32];
	struct env *e = calloc(1, sizeof(*e));
	CU_ASSERT_PTR_NOT_NULL_FATAL(e);
	e->conf = *conf;
	snprintf(name, sizeof(name), "t%u", env_seq++);
	e->c = dns_cache_create(&e->conf, name);
	CU_ASSERT_PTR_NOT_NULL_FATAL(e->c);
	CU_ASSERT_EQUAL_FATAL(dns_cache_register_thread(e->c, &e->tid), 0);
	e->r = dns_resolver_create(e->c, e->tid, &fake_ops, &e->f, PORT_LO, PORT_HI);
	CU_ASSERT_PTR_NOT_NULL_FATAL(e->r);
	e->now = 1000000000ull;
	dns_resolver_poll(e->r, e->now);
	return e;
}

static inline struct env *env_default(void)
{
	struct dns_conf conf;
	env_conf(&conf);
	return env_new(&conf);
}

static inline void env_free(struct env *e)
{
	dns_resolver_destroy(e->r);
	dns_cache_unregister_thread(e->c, e->tid);
	dns_cache_destroy(e->c);
	free(e);
}

static inline void env_advance(struct env *e, uint64_t us)
{
	e->now += us;
	dns_resolver_poll(e->r, e->now);
}

static inline struct dns_counters env_ctr(struct env *e)
{
	struct dns_counters c;
	dns_cache_counters(e->c, &c);
	return c;
}

/* What a dns_resolve callback saw. */
struct result {
	int calls;
	int status;
	uint32_t a;
	uint16_t rr_count;
	bool stale, ad;
	uint32_t ttl;
	char canon[DNS_NAME_TEXT_MAX];
};

static inline void result_cb(void *arg, int status, const struct dns_entry *e)
{
	struct result *res = arg;
	res->calls++;
	res->status = status;
	if (e) {
		res->rr_count = e->rr_count;
		res->a = e->rr_count && e->rr[0].type == DNS_T_A ? e->rr[0].a : 0;
		res->stale = e->stale;
		res->ad = e->ad;
		res->ttl = e->ttl;
		snprintf(res->canon, sizeof(res->canon), "%s", e->canon);
	}
}

#endif
