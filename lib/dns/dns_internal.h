/*
 * dns_internal.h - what cache.c, resolver.c and mail.c share inside lib/dns.
 *
 * The in-flight table lives in the cache because it is machine-wide: the
 * first thread to miss on (name, type) becomes its owner and sends the one
 * upstream query; later threads record themselves in the record's waiter
 * bitmask.  On completion the owner removes the record and pushes a pointer
 * to it, reference-counted, onto each waiting thread's notification ring
 * (rte_ring, multi-producer, single-consumer); that thread's
 * dns_resolver_poll() wakes its own waiting requests, which read the fresh
 * entry from the cache.
 */
#ifndef MX_DNS_INTERNAL_H
#define MX_DNS_INTERNAL_H

#include "dns.h"

#define DNS_MAX_THREADS 128 /* waiter bitmask width */

struct rte_ring;

struct dns_inflight {
	struct dns_inflight *next; /* hash chain */
	uint64_t h1;
	uint16_t type;
	char name[DNS_NAME_TEXT_MAX]; /* lowercased */
	unsigned owner;
	uint64_t waiters[DNS_MAX_THREADS / 64];
	int status;    /* set on completion */
	uint32_t refs; /* notifications not yet consumed */
};

/* Counters of a thread (slot max_threads is for unregistered callers). */
struct dns_counters *dns_cache_thread_counters(struct dns_cache *c, unsigned thread_id);
/** Lookup without counting (resolver internal re-checks). */
const struct dns_entry *dns_cache_peek(struct dns_cache *c, const char *name, uint16_t type);
/** First caller wins the right to prefetch this entry. */
bool dns_cache_claim_prefetch(const struct dns_entry *e);
/** Insert a serve-stale copy of @old (TTL conf.stale_ttl); returns the copy or NULL. */
const struct dns_entry *dns_cache_insert_stale(struct dns_cache *c, unsigned thread_id,
					       const struct dns_entry *old, uint64_t now_us);
/** Lowercase @name (trailing dot stripped) into @out; length or -EINVAL. */
int dns_name_lower(const char *name, char *out);

/** Attach a thread's notification ring (NULL to detach). */
void dns_cache_set_ring(struct dns_cache *c, unsigned thread_id, struct rte_ring *ring);
/**
 * Join or create the in-flight record for (name, type): 1 = caller owns it
 * and must query upstream, 0 = another thread does (caller was added as a
 * waiter), -ENOSPC = table full.  @name must be lowercased.
 */
int dns_inflight_join(struct dns_cache *c, unsigned thread_id, const char *name, uint16_t type);
/**
 * The owner finished (name, type) with @status: remove the record and notify
 * waiting threads other than the owner.  Returns notifications dropped.
 */
unsigned dns_inflight_complete(struct dns_cache *c, unsigned thread_id, const char *name,
			       uint16_t type, int status);
/** Consumer side: drop one reference to a notification. */
void dns_inflight_put(struct dns_inflight *f);
/** Is (name, type) in flight anywhere? */
bool dns_inflight_busy(struct dns_cache *c, const char *name, uint16_t type);

/* Resolver internals used by mail.c. */
uint32_t dns_resolver_random(struct dns_resolver *r);
struct dns_cache *dns_resolver_cache(struct dns_resolver *r);
uint64_t dns_resolver_now(const struct dns_resolver *r);

#endif
