/*
 * resolve.h - the relay's DNS: one cache shared by every worker (lib/dns,
 * lock-free reads) and, per worker, a stub resolver whose queries travel
 * over that worker's lib/net stack.
 *
 *	resolve_shared_init(conf)          once, before the workers start
 *	r = resolve_create(conf, st, w)    on the worker; NULL: no resolvers
 *	resolve_mail(r, domain, cb, arg)   RFC 5321 5.1 route (dns_mail_lookup)
 *	loop: resolve_poll(r, now) ... resolve_quiescent(r)
 *	resolve_destroy(r)                 waits (bounded) for lookups in flight
 *	resolve_shared_free()              after the workers stopped
 */
#ifndef MX_RELAY_RESOLVE_H
#define MX_RELAY_RESOLVE_H

#include "relay.h"

struct resolve;

/** Create the shared cache when [dns] resolvers are set.  0 or -errno (logged). */
int resolve_shared_init(const struct relay_config *conf);
void resolve_shared_free(void);
/** The shared cache (NULL without resolvers): the control plane reads and flushes it. */
struct dns_cache *resolve_shared_cache(void);

/**
 * The resolver of one worker, on its stack.  *out = NULL (and 0) when no
 * resolver is configured; -errno (logged) when set-up failed.
 */
int resolve_create(const struct relay_config *conf, struct net_stack *st, unsigned worker,
		   struct resolve **out);
/** Lookups still in flight get up to a few seconds to end (their state is theirs). */
void resolve_destroy(struct resolve *r);

/** dns_mail_lookup() on this worker's resolver: 0 (cb follows), or -errno. */
int resolve_mail(struct resolve *r, const char *domain, dns_mail_cb cb, void *arg);
/** Timers and retransmissions. */
void resolve_poll(struct resolve *r, uint64_t now_us);
/** End of a poll turn: no cache entry is held past this point (RCU). */
void resolve_quiescent(struct resolve *r);/**
 * Counters of this worker's resolver and the cache as seen from it (dns_
 * names: hits, misses, coalesced, upstream queries, timeouts, stale served,
 * evictions, ...).
 */
void resolve_stats_foreach(const struct resolve *r,
			   void (*fn)(void *arg, const char *name, uint64_t value), void *arg);

/** Reload: conf is the new configuration generation (the old one is freed after). */
void resolve_reconfigure(struct resolve *r, const struct relay_config *conf);

#endif
