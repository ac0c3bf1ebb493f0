/*
 * resolve.c - the relay's DNS: the cache all workers share and one stub
 * resolver per worker whose queries go out over that worker's lib/net UDP.
 *
 * Each worker binds a small block of source ports (lib/net keeps at most
 * 64 UDP binds per core); replies to those ports reach the worker that
 * asked on a single-worker relay.  TCP (answers with TC set) is not carried
 * yet: the resolver moves on to the next server and the lookup fails
 * temporarily, so the message is deferred, never misrouted.
 */
#include "resolve.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define DNS_PORT_BASE 40000u
#define DNS_PORTS 32u
#define DNS_DRAIN_US 3000000ull /* at shutdown, wait this long for lookups in flight */

struct resolve {
	const struct relay_config *conf;
	struct net_stack *st;
	unsigned worker;
	struct dns_resolver *dns;
	unsigned tid;
	bool registered;
	uint16_t port_lo;
	unsigned ports_bound;
};

/* The DNS cache all workers share (lock-free reads); NULL without [dns] resolvers. */
static struct dns_cache *shared;

int resolve_shared_init(const struct relay_config *conf)
{
	if (conf->dns.resolver_count == 0) {
		MX_INFO("no [dns] resolvers: only address literals and a smarthost by address are "
			"delivered");
		return 0;
	}
	shared = dns_cache_create(&conf->dns, "mxdeliver");
	if (shared == NULL) {
		MX_ERR("deliver: cannot create the DNS cache");
		return -ENOMEM;
	}
	return 0;
}

void resolve_shared_free(void)
{
	dns_cache_destroy(shared);
	shared = NULL;
}

struct dns_cache *resolve_shared_cache(void)
{
	return shared;
}

static int udp_out(void *ctx, uint32_t server_ip, uint16_t src_port, const uint8_t *pkt, size_t len,
		   bool tcp)
{
	struct resolve *r = ctx;
	if (tcp)
		return -EOPNOTSUPP; /* DNS over lib/net TCP: not yet; the resolver moves on */
	return udp_send(r->st, 0, src_port, server_ip, r->conf->dns.resolver_port, pkt, len);
}

static const struct dns_resolver_ops resolve_ops = {.send = udp_out};

static void udp_in(void *ctx, uint32_t src, uint16_t sport, uint32_t dst, uint16_t dport,
		   const uint8_t *data, size_t len)
{
	struct resolve *r = ctx;
	(void)dst;
	dns_resolver_input(r->dns, src, sport, dport, data, len, false);
}

int resolve_create(const struct relay_config *conf, struct net_stack *st, unsigned worker,
		   struct resolve **out)
{
	*out = NULL;
	if (shared == NULL)
		return 0;
	struct resolve *r = calloc(1, sizeof(*r));
	if (r == NULL)
		return -ENOMEM;
	r->conf = conf;
	r->st = st;
	r->worker = worker;
	int rc = dns_cache_register_thread(shared, &r->tid);
	if (rc != 0)
		goto fail;
	r->registered = true;
	r->port_lo = (uint16_t)(DNS_PORT_BASE + worker * DNS_PORTS);
	for (unsigned i = 0; i < DNS_PORTS; i++) {
		rc = udp_bind(st, (uint16_t)(r->port_lo + i), udp_in, r);
		if (rc != 0)
			goto fail;
		r->ports_bound++;
	}
	r->dns = dns_resolver_create(shared, r->tid, &resolve_ops, r, r->port_lo,
				     (uint16_t)(r->port_lo + DNS_PORTS - 1));
	if (r->dns == NULL) {
		rc = -ENOMEM;
		goto fail;
	}
	*out = r;
	return 0;
fail:
	MX_ERR("worker %u: cannot set up the DNS resolver: %s", worker, strerror(-rc));
	resolve_destroy(r);
	return rc;
}

void resolve_destroy(struct resolve *r)
{
	if (r == NULL)
		return;
	if (r->dns != NULL) {
		/* Lookups in flight hold state freed by their completion: let them end. */
		uint64_t end = mx_now_us() + DNS_DRAIN_US;
		while (dns_resolver_inflight(r->dns) > 0 && mx_now_us() < end) {
			net_stack_poll(r->st, mx_now_us());
			dns_resolver_poll(r->dns, mx_now_us());
		}
		if (dns_resolver_inflight(r->dns) > 0)
			MX_WARN("worker %u: DNS lookups still in flight at shutdown", r->worker);
		else
			dns_resolver_destroy(r->dns);
	}
	for (unsigned i = 0; i < r->ports_bound; i++)
		udp_unbind(r->st, (uint16_t)(r->port_lo + i));
	if (r->registered)
		dns_cache_unregister_thread(shared, r->tid);
	free(r);
}

int resolve_mail(struct resolve *r, const char *domain, dns_mail_cb cb, void *arg)
{
	return dns_mail_lookup(r->dns, domain, cb, arg);
}

void resolve_poll(struct resolve *r, uint64_t now_us)
{
	dns_resolver_poll(r->dns, now_us);
}

void resolve_quiescent(struct resolve *r)
{
	dns_cache_quiescent(shared, r->tid);
}

void resolve_stats_foreach(const struct resolve *r,
			   void (*fn)(void *arg, const char *name, uint64_t value), void *arg)
{
	(void)r;
	(void)fn;
	(void)arg; /* the DNS counters are exported with the TCP transport (next change) */
}

void resolve_reconfigure(struct resolve *r, const struct relay_config *conf)
{
	/* [dns] keys need a restart (the reload keeps their values): only the pointer moves. */
	if (r != NULL)
		r->conf = conf;
}
