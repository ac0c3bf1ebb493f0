/*
 * resolver.c - the per-lcore stub resolver, transport agnostic.
 *
 * A client request (dns_resolve) is answered from the shared cache when it
 * can; otherwise it waits on the machine-wide in-flight record of its
 * (name, type).  The thread that created the record owns one upstream
 * transaction: tries go round-robin over conf.resolvers, conf.attempts
 * rounds, each try with a fresh random ID and a fresh random source port
 * from [port_lo, port_hi] (RFC 5452 9.2), timeout conf.timeout_us.  A reply
 * is accepted only if it arrives on the try's port, from the server's
 * address and port, with the try's ID and the same question (name compared
 * case-insensitively, type, class) - RFC 5452 4.  Anything else is counted
 * and dropped without disturbing the transaction.  TC=1 over UDP re-asks the
 * same server over TCP (RFC 7766 5).  SERVFAIL, REFUSED and other errors
 * move to the next try; when all fail, an expired entry still inside its
 * serve-stale window is republished with TTL conf.stale_ttl (RFC 8767),
 * else waiters get DNS_TEMPFAIL.
 *
 * CNAMEs: a response's own chain is followed (DNS_CNAME_MAX hops); if it
 * ends without data the entry says DNS_CNAME and the request re-resolves the
 * target, again at most DNS_CNAME_MAX hops in total (loops end there).
 *
 * Messages for TCP are passed and received WITHOUT the 2-byte length prefix.
 */
#include "dns_internal.h"
#include "core.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include <openssl/rand.h>
#include <rte_ring.h>

#define NOTIFY_RING_SIZE 4096
#define RAND_BUF 256
#define WAIT_BUCKETS 64 /* lists of waiting requests (a power of two) */

struct req {
	struct req *prev, *next; /* waiting list or free list */
	bool used;
	uint16_t type;
	unsigned hops;
	char name[DNS_NAME_TEXT_MAX]; /* lowercased, current CNAME hop */
	dns_resolve_cb cb;
	void *arg;
	uint64_t deadline_us; /* safety net if a notification is lost */
};

struct txn {
	struct txn *prev, *next; /* active list or free list */
	bool used;
	bool tcp;
	uint16_t type;
	uint16_t id, port;
	unsigned try_idx;
	uint32_t server;
	uint64_t deadline_us;
	char name[DNS_NAME_TEXT_MAX]; /* lowercased */
};

struct dns_resolver {
	struct dns_cache *cache;
	const struct dns_conf *conf;
	unsigned tid;
	const struct dns_resolver_ops *ops;
	void *ctx;
	uint16_t port_lo, port_hi;
	uint64_t now_us;
	struct dns_counters *ctr;
	struct rte_ring *ring;

	struct req *reqs;
	struct req *req_free;
	/*
	 * Waiting requests by (name, type) hash (wait_bucket): a completion
	 * visits its own bucket, not every request.  With a thousand domains
	 * resolving at once, each of the ~2000 completions walked the whole
	 * list.
	 */
	struct req waiting[WAIT_BUCKETS]; /* list heads */
	unsigned pending;
	uint64_t waiting_next_us; /* no waiting request's deadline is earlier */

	struct txn *txns;
	struct txn *txn_free;
	struct txn active; /* list head */
	unsigned inflight;
	uint64_t active_next_us; /* no active transaction's deadline is earlier */
	uint32_t *port_map;	 /* port - port_lo -> txn index + 1 */

	uint64_t rng[4]; /* xoshiro256** for deterministic runs */
	bool deterministic;
	uint8_t rbuf[RAND_BUF];
	unsigned rbuf_left;

	struct dns_msg msg;
	uint8_t pkt[512];
};

/* ---- randomness ------------------------------------------------------------ */

static uint64_t rotl(uint64_t x, int k)
{
	return (x << k) | (x >> (64 - k));
}

static uint64_t xoshiro(uint64_t *s)
{
	uint64_t result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
	s[2] ^= s[0];
	s[3] ^= s[1];
	s[1] ^= s[2];
	s[0] ^= s[3];
	s[2] ^= t;
	s[3] = rotl(s[3], 45);
	return result;
}

static uint64_t splitmix(uint64_t *x)
{
	uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* IDs and ports must be unpredictable (RFC 5452 9): OpenSSL's CSPRNG, batched. */
uint32_t dns_resolver_random(struct dns_resolver *r)
{
	uint32_t v;
	if (r->deterministic)
		return (uint32_t)(xoshiro(r->rng) >> 32);
	if (r->rbuf_left < sizeof(v)) {
		if (RAND_bytes(r->rbuf, sizeof(r->rbuf)) != 1 &&
		    getrandom(r->rbuf, sizeof(r->rbuf), 0) != (ssize_t)sizeof(r->rbuf))
			return (uint32_t)(xoshiro(r->rng) >> 32);
		r->rbuf_left = sizeof(r->rbuf);
	}
	memcpy(&v, r->rbuf + sizeof(r->rbuf) - r->rbuf_left, sizeof(v));
	r->rbuf_left -= sizeof(v);
	return v;
}

struct dns_cache *dns_resolver_cache(struct dns_resolver *r)
{
	return r->cache;
}

uint64_t dns_resolver_now(const struct dns_resolver *r)
{
	return r->now_us;
}

/* ---- lists ------------------------------------------------------------------- */

#define DL_INIT(h) ((h)->prev = (h)->next = (h))
#define DL_UNLINK(x)                                                                               \
	do {                                                                                       \
		(x)->prev->next = (x)->next;                                                       \
		(x)->next->prev = (x)->prev;                                                       \
		(x)->prev = (x)->next = NULL;                                                      \
	} while (0)
#define DL_APPEND(h, x)                                                                            \
	do {                                                                                       \
		(x)->prev = (h)->prev;                                                             \
		(x)->next = (h);                                                                   \
		(h)->prev->next = (x);                                                             \
		(h)->prev = (x);                                                                   \
	} while (0)

/* The list of requests waiting on (low, type): FNV-1a of the lowercased name and the type. */
static struct req *wait_bucket(struct dns_resolver *r, const char *low, uint16_t type)
{
	uint32_t h = 2166136261u ^ type;
	for (const char *p = low; *p; p++)
		h = (h ^ (uint8_t)*p) * 16777619u;
	return &r->waiting[h & (WAIT_BUCKETS - 1)];
}

struct dns_resolver *dns_resolver_create(struct dns_cache *c, unsigned thread_id,
					 const struct dns_resolver_ops *ops, void *ctx,
					 uint16_t port_lo, uint16_t port_hi)
{
	const struct dns_conf *conf = dns_cache_conf(c);
	char nm[RTE_RING_NAMESIZE];
	struct dns_resolver *r;

	if (ops == NULL || ops->send == NULL || port_lo == 0 || port_hi < port_lo ||
	    thread_id >= conf->max_threads || conf->max_pending == 0 || conf->max_inflight == 0 ||
	    conf->timeout_us == 0)
		return NULL;
	r = calloc(1, sizeof(*r));
	if (r == NULL)
		return NULL;
	r->cache = c;
	r->conf = conf;
	r->tid = thread_id;
	r->ops = ops;
	r->ctx = ctx;
	r->port_lo = port_lo;
	r->port_hi = port_hi;
	r->ctr = dns_cache_thread_counters(c, thread_id);
	for (unsigned i = 0; i < WAIT_BUCKETS; i++)
		DL_INIT(&r->waiting[i]);
	DL_INIT(&r->active);
	r->waiting_next_us = UINT64_MAX;
	r->active_next_us = UINT64_MAX;
	r->reqs = calloc(conf->max_pending, sizeof(*r->reqs));
	r->txns = calloc(conf->max_inflight, sizeof(*r->txns));
	r->port_map = calloc((size_t)port_hi - port_lo + 1, sizeof(*r->port_map));
	snprintf(nm, sizeof(nm), "dnsn_%p", (void *)r);
	r->ring = rte_ring_create(nm, NOTIFY_RING_SIZE, SOCKET_ID_ANY, RING_F_SC_DEQ);
	if (r->reqs == NULL || r->txns == NULL || r->port_map == NULL || r->ring == NULL) {
		dns_resolver_destroy(r);
		return NULL;
	}
	for (unsigned i = conf->max_pending; i-- > 0;) {
		r->reqs[i].next = r->req_free;
		r->req_free = &r->reqs[i];
	}
	for (unsigned i = conf->max_inflight; i-- > 0;) {
		r->txns[i].next = r->txn_free;
		r->txn_free = &r->txns[i];
	}
	uint64_t seed = conf->seed;
	r->deterministic = seed != 0;
	if (seed == 0 && getrandom(&seed, sizeof(seed), 0) != sizeof(seed))
		seed = mx_now_us();
	seed ^= (uint64_t)thread_id * 0x2545f4914f6cdd1dull;
	for (int i = 0; i < 4; i++)
		r->rng[i] = splitmix(&seed);
	dns_cache_set_ring(c, thread_id, r->ring);
	return r;
}

static void finish_txn(struct dns_resolver *r, struct txn *t, int status);
static void deliver(struct dns_resolver *r, const char *low, uint16_t type, int status);

void dns_resolver_destroy(struct dns_resolver *r)
{
	if (r == NULL)
		return;
	if (r->ring) {
		dns_cache_set_ring(r->cache, r->tid, NULL);
		void *obj;
		while (rte_ring_sc_dequeue(r->ring, &obj) == 0)
			dns_inflight_put(obj);
		rte_ring_free(r->ring);
	}
	if (r->txns) {
		/* Release in-flight records so other threads' waiters are told. */
		while (r->active.next != &r->active && r->active.next != NULL) {
			struct txn *t = r->active.next;
			char name[DNS_NAME_TEXT_MAX];
			uint16_t type = t->type;
			strcpy(name, t->name);
			DL_UNLINK(t);
			t->used = false;
			dns_inflight_complete(r->cache, r->tid, name, type, DNS_TEMPFAIL);
		}
	}
	free(r->reqs);
	free(r->txns);
	free(r->port_map);
	free(r);
}

unsigned dns_resolver_inflight(const struct dns_resolver *r)
{
	return r->inflight;
}

void dns_resolver_counters(const struct dns_resolver *r, struct dns_counters *out)
{
	const uint64_t *f = (const uint64_t *)r->ctr;
	uint64_t *o = (uint64_t *)out;
	for (size_t i = 0; i < sizeof(*out) / sizeof(uint64_t); i++)
		o[i] = __atomic_load_n(&f[i], __ATOMIC_RELAXED);
	out->entries = out->entries_allocated = out->entries_freed = 0;
}

unsigned dns_resolver_pending(const struct dns_resolver *r)
{
	return r->pending;
}

/* ---- upstream transactions --------------------------------------------------- */

static uint32_t txn_index(const struct dns_resolver *r, const struct txn *t)
{
	return (uint32_t)(t - r->txns);
}

static void release_port(struct dns_resolver *r, struct txn *t)
{
	if (t->port >= r->port_lo && t->port <= r->port_hi &&
	    r->port_map[t->port - r->port_lo] == txn_index(r, t) + 1)
		r->port_map[t->port - r->port_lo] = 0;
	t->port = 0;
}

/*
 * A random free port of the range (RFC 5452 9.2) that the transport accepts
 * for this server.  PICK_PORT_DRAWS bounds the work: with n cores steering
 * by flow hash about 1/n of the ports fit, so a miss is (1 - 1/n)^64.
 */
#define PICK_PORT_DRAWS 64

static int pick_port(struct dns_resolver *r, struct txn *t)
{
	uint32_t span = (uint32_t)r->port_hi - r->port_lo + 1;
	for (int i = 0; i < PICK_PORT_DRAWS; i++) {
		uint16_t p = (uint16_t)(r->port_lo + dns_resolver_random(r) % span);
		if (r->port_map[p - r->port_lo] == 0 &&
		    (t->tcp || r->ops->port_ok == NULL || r->ops->port_ok(r->ctx, t->server, p))) {
			r->port_map[p - r->port_lo] = txn_index(r, t) + 1;
			t->port = p;
			return 0;
		}
	}
	r->ctr->port_busy++;
	return -EBUSY;
}

static unsigned total_tries(const struct dns_resolver *r)
{
	return r->conf->attempts * r->conf->resolver_count;
}

/* Send try t->try_idx (over TCP if t->tcp).  Moves on to later tries when a send fails. */
static int send_try(struct dns_resolver *r, struct txn *t)
{
	while (t->try_idx < total_tries(r)) {
		release_port(r, t);
		t->server = r->conf->resolvers[t->try_idx % r->conf->resolver_count];
		t->id = (uint16_t)dns_resolver_random(r);
		int len = dns_encode_query(r->pkt, sizeof(r->pkt), t->id, t->name, t->type, true);
		if (len > 0 && pick_port(r, t) == 0) {
			r->ctr->upstream_queries++;
			t->deadline_us = r->now_us + r->conf->timeout_us;
			r->active_next_us = RTE_MIN(r->active_next_us, t->deadline_us);
			if (r->ops->send(r->ctx, t->server, t->port, r->pkt, (size_t)len, t->tcp) >=
			    0)
				return 0;
		}
		t->try_idx++;
		t->tcp = false;
	}
	return -EIO;
}

/*
 * Own (low, type) upstream.  If no transaction slot or no resolver is
 * available, or every send fails, the record completes at once with
 * DNS_TEMPFAIL (waiters' callbacks then run before this returns).
 */
static void start_txn(struct dns_resolver *r, const char *low, uint16_t type)
{
	struct txn *t = r->txn_free;
	if (t == NULL || r->conf->resolver_count == 0) {
		char name[DNS_NAME_TEXT_MAX];
		strcpy(name, low);
		r->ctr->inflight_full++;
		r->ctr->notify_drops +=
			dns_inflight_complete(r->cache, r->tid, name, type, DNS_TEMPFAIL);
		deliver(r, name, type, DNS_TEMPFAIL);
		return;
	}
	r->txn_free = t->next;
	memset(t, 0, sizeof(*t));
	t->used = true;
	t->type = type;
	strcpy(t->name, low);
	DL_APPEND(&r->active, t);
	r->inflight++;
	if (send_try(r, t) < 0)
		finish_txn(r, t, DNS_TEMPFAIL);
}

/* All tries failed: serve stale if allowed (RFC 8767), else temporary failure. */
static void fail_txn(struct dns_resolver *r, struct txn *t)
{
	const struct dns_entry *old = dns_cache_peek(r->cache, t->name, t->type);
	int status = DNS_TEMPFAIL;

	if (old != NULL && r->now_us < old->expire_us) {
		status = old->status; /* a failed prefetch: the entry is still good */
	} else if (old != NULL && r->now_us < old->stale_until_us) {
		if (dns_cache_insert_stale(r->cache, r->tid, old, r->now_us) != NULL) {
			r->ctr->stale_served++;
			status = old->status;
		}
	}
	finish_txn(r, t, status);
}

/* ---- client requests --------------------------------------------------------- */

static void req_free(struct dns_resolver *r, struct req *q)
{
	q->used = false;
	q->next = r->req_free;
	r->req_free = q;
	r->pending--;
}

/* Wait for (q->name, q->type): join or own the in-flight record.  0 or -errno. */
static int req_wait(struct dns_resolver *r, struct req *q)
{
	int rc = dns_inflight_join(r->cache, r->tid, q->name, q->type);
	if (rc < 0) {
		r->ctr->inflight_full++;
		return rc;
	}
	q->deadline_us = r->now_us + r->conf->timeout_us * (total_tries(r) + 2) + 1000000;
	r->waiting_next_us = RTE_MIN(r->waiting_next_us, q->deadline_us);
	DL_APPEND(wait_bucket(r, q->name, q->type), q);
	if (rc == 1) {
		char name[DNS_NAME_TEXT_MAX];
		strcpy(name, q->name); /* q may be freed by a synchronous failure */
		start_txn(r, name, q->type);
		return 0;
	}
	r->ctr->coalesced++;
	return 0;
}

/* If a fresh hit is inside the last 10% of its TTL, refresh it once in the background. */
static void maybe_prefetch(struct dns_resolver *r, const struct dns_entry *e, const char *low)
{
	uint64_t life = e->expire_us - e->stored_us;
	if (e->stale || life < 10 || r->now_us < e->expire_us - life / 10)
		return;
	if (!dns_cache_claim_prefetch(e))
		return;
	if (dns_inflight_join(r->cache, r->tid, low, e->type) == 1) {
		r->ctr->prefetches++;
		start_txn(r, low, e->type);
	}
}

/*
 * Advance a request from the cache.  Returns 1 with *out when answered
 * (status in *status), 0 when it must wait upstream.
 */
static int req_step(struct dns_resolver *r, struct req *q, bool counted, int *status,
		    const struct dns_entry **out)
{
	for (;;) {
		const struct dns_entry *e =
			counted ? dns_cache_lookup(r->cache, r->tid, q->name, q->type, r->now_us)
				: dns_cache_peek(r->cache, q->name, q->type);
		if (e == NULL || (counted && r->now_us >= e->expire_us))
			return 0;
		if (counted)
			maybe_prefetch(r, e, q->name);
		if (e->status != DNS_CNAME) {
			*status = e->status;
			*out = e;
			return 1;
		}
		if (++q->hops > DNS_CNAME_MAX) {
			*status = DNS_TEMPFAIL;
			*out = NULL;
			return 1;
		}
		if (dns_name_lower(e->canon, q->name) < 0) {
			*status = DNS_TEMPFAIL;
			*out = NULL;
			return 1;
		}
		counted = true;
	}
}

int dns_resolve(struct dns_resolver *r, const char *name, uint16_t type, dns_resolve_cb cb,
		void *arg, const struct dns_entry **hit)
{
	uint8_t wire[DNS_NAME_MAX];
	struct req tmp, *q;
	int status, rc;
	const struct dns_entry *e;

	if (name == NULL || cb == NULL || hit == NULL ||
	    dns_name_to_wire(name, wire, sizeof(wire)) < 0)
		return -EINVAL;
	memset(&tmp, 0, sizeof(tmp));
	if (dns_name_lower(name, tmp.name) < 0)
		return -EINVAL;
	tmp.type = type;
	if (req_step(r, &tmp, true, &status, &e) == 1) {
		if (e == NULL)
			return -ELOOP;
		*hit = e;
		return 1;
	}
	q = r->req_free;
	if (q == NULL) {
		r->ctr->pending_full++;
		return -ENOSPC;
	}
	r->req_free = q->next;
	*q = tmp;
	q->used = true;
	q->cb = cb;
	q->arg = arg;
	r->pending++;
	rc = req_wait(r, q);
	if (rc < 0) {
		if (q->prev)
			DL_UNLINK(q);
		req_free(r, q);
		return rc;
	}
	return 0;
}

/*
 * (name, type) completed with @status: continue every local request waiting on
 * it.  Ready requests move to a private list first, so callbacks may issue new
 * requests safely.
 */
static void deliver(struct dns_resolver *r, const char *low, uint16_t type, int status)
{
	struct req ready, *b = wait_bucket(r, low, type);
	DL_INIT(&ready);
	for (struct req *q = b->next, *n; q != b; q = n) {
		n = q->next;
		if (q->type == type && strcmp(q->name, low) == 0) {
			DL_UNLINK(q);
			DL_APPEND(&ready, q);
		}
	}
	while (ready.next != &ready) {
		struct req *q = ready.next;
		const struct dns_entry *e = NULL;
		int st = DNS_TEMPFAIL;
		DL_UNLINK(q);
		if (status != DNS_TEMPFAIL) {
			if (req_step(r, q, false, &st, &e) == 0) {
				/* Entry gone (evicted) or a CNAME to chase upstream. */
				if (req_wait(r, q) == 0)
					continue;
				st = DNS_TEMPFAIL;
				e = NULL;
			}
		}
		dns_resolve_cb cb = q->cb;
		void *arg = q->arg;
		req_free(r, q);
		cb(arg, st, e);
	}
}

static void finish_txn(struct dns_resolver *r, struct txn *t, int status)
{
	char name[DNS_NAME_TEXT_MAX];
	uint16_t type = t->type;

	strcpy(name, t->name);
	release_port(r, t);
	DL_UNLINK(t);
	t->used = false;
	t->next = r->txn_free;
	r->txn_free = t;
	r->inflight--;
	r->ctr->notify_drops += dns_inflight_complete(r->cache, r->tid, name, type, status);
	deliver(r, name, type, status);
}

/* ---- responses --------------------------------------------------------------- */

static uint32_t neg_ttl(const struct dns_msg *m)
{
	unsigned n;
	const struct dns_rr *rr = dns_msg_section(m, DNS_SEC_AUTHORITY, &n);
	for (unsigned i = 0; i < n; i++) {
		/* RFC 2308 5: min(SOA TTL, SOA MINIMUM). */
		if (rr[i].type == DNS_T_SOA)
			return rr[i].ttl < rr[i].soa.minimum ? rr[i].ttl : rr[i].soa.minimum;
	}
	return 0; /* no SOA: RFC 2308 5 says do not cache; TTL 0 only serves the waiters */
}

/* Turn an accepted NOERROR/NXDOMAIN answer into a cache entry; returns its status. */
static int store_answer(struct dns_resolver *r, const struct dns_msg *m, struct txn *t)
{
	struct dns_rr found[DNS_MSG_MAX_RR];
	unsigned n, nfound = 0, hops = 0;
	const struct dns_rr *an = dns_msg_section(m, DNS_SEC_ANSWER, &n);
	const char *cur = m->qname;
	uint32_t ttl = UINT32_MAX;
	int status;

	for (;;) {
		const char *next = NULL;
		for (unsigned i = 0; i < n; i++) {
			if (!dns_name_equal(an[i].name, cur) || an[i].rclass != DNS_C_IN)
				continue;
			if (an[i].type == t->type) {
				found[nfound++] = an[i];
				if (an[i].ttl < ttl)
					ttl = an[i].ttl;
			} else if (an[i].type == DNS_T_CNAME && next == NULL) {
				next = an[i].target;
				if (an[i].ttl < ttl)
					ttl = an[i].ttl;
			}
		}
		if (nfound > 0 || next == NULL || t->type == DNS_T_CNAME)
			break;
		cur = next;
		if (++hops > DNS_CNAME_MAX)
			break;
	}
	if (nfound > 0) {
		status = DNS_OK;
	} else if (DNS_F_RCODE(m->flags) == DNS_RCODE_NXDOMAIN) {
		status = DNS_NXDOMAIN;
		ttl = neg_ttl(m);
	} else if (cur != m->qname) {
		status = DNS_CNAME; /* chain ends without data here: chase the target */
	} else {
		status = DNS_NODATA;
		ttl = neg_ttl(m);
	}
	if (ttl == UINT32_MAX)
		ttl = 0;
	if (dns_cache_insert_rrs(r->cache, r->tid, t->name, t->type, status, cur,
				 (m->flags & DNS_F_AD) != 0, ttl, found, nfound, r->now_us) < 0)
		return DNS_TEMPFAIL;
	return status;
}

static void malformed(struct dns_resolver *r, enum dns_malformed why)
{
	if ((unsigned)why < DNS_MAL__COUNT)
		r->ctr->malformed[why]++;
}

static void mismatch(struct dns_resolver *r, uint64_t *which)
{
	(*which)++;
	r->ctr->mismatched++;
}

void dns_resolver_input(struct dns_resolver *r, uint32_t from_ip, uint16_t from_port,
			uint16_t to_port, const uint8_t *pkt, size_t len, bool tcp)
{
	enum dns_malformed why;
	struct dns_msg *m = &r->msg;
	struct txn *t;

	if (to_port < r->port_lo || to_port > r->port_hi ||
	    r->port_map[to_port - r->port_lo] == 0) {
		mismatch(r, &r->ctr->mismatch_port);
		return;
	}
	t = &r->txns[r->port_map[to_port - r->port_lo] - 1];
	if (!t->used || t->tcp != tcp) {
		mismatch(r, &r->ctr->mismatch_port);
		return;
	}
	if (from_ip != t->server || from_port != r->conf->resolver_port) {
		mismatch(r, &r->ctr->mismatch_addr);
		return;
	}
	if (dns_msg_parse(m, pkt, len, &why) < 0) {
		malformed(r, why);
		return;
	}
	if (!(m->flags & DNS_F_QR) || (m->flags & 0x7800) != 0) {
		malformed(r, DNS_MAL_NOT_RESPONSE);
		return;
	}
	if (m->id != t->id) {
		mismatch(r, &r->ctr->mismatch_id);
		return;
	}
	if (m->qtype != t->type || m->qclass != DNS_C_IN || !dns_name_equal(m->qname, t->name)) {
		mismatch(r, &r->ctr->mismatch_question);
		return;
	}
	if ((m->flags & DNS_F_TC) && !tcp) {
		r->ctr->tcp_retries++;
		t->tcp = true;
		if (send_try(r, t) < 0)
			fail_txn(r, t);
		return;
	}
	switch (DNS_F_RCODE(m->flags)) {
	case DNS_RCODE_NOERROR:
	case DNS_RCODE_NXDOMAIN:
		finish_txn(r, t, store_answer(r, m, t));
		return;
	default:
		r->ctr->servfail++;
		t->try_idx++;
		t->tcp = false;
		if (send_try(r, t) < 0)
			fail_txn(r, t);
		return;
	}
}

/* Retry or fail every transaction whose deadline passed; lower active_next_us to what is left. */
static void expire_txns(struct dns_resolver *r, uint64_t now_us)
{
	for (struct txn *t = r->active.next, *nx; t != &r->active; t = nx) {
		nx = t->next;
		if (now_us < t->deadline_us) {
			r->active_next_us = RTE_MIN(r->active_next_us, t->deadline_us);
			continue;
		}
		r->ctr->timeouts++;
		t->try_idx++;
		t->tcp = false;
		if (send_try(r, t) < 0) {
			fail_txn(r, t);
			nx = r->active.next; /* callbacks may have changed the list */
		}
	}
}

static void expire_bucket(struct dns_resolver *r, struct req *b, uint64_t now_us);

/* Safety net: a request whose notification was dropped does not wait forever. */
static void expire_reqs(struct dns_resolver *r, uint64_t now_us)
{
	for (unsigned i = 0; i < WAIT_BUCKETS; i++)
		expire_bucket(r, &r->waiting[i], now_us);
}

static void expire_bucket(struct dns_resolver *r, struct req *b, uint64_t now_us)
{
	for (struct req *q = b->next, *nx; q != b; q = nx) {
		nx = q->next;
		if (now_us < q->deadline_us) {
			r->waiting_next_us = RTE_MIN(r->waiting_next_us, q->deadline_us);
			continue;
		}
		if (dns_inflight_busy(r->cache, q->name, q->type)) {
			q->deadline_us = now_us + r->conf->timeout_us;
			r->waiting_next_us = RTE_MIN(r->waiting_next_us, q->deadline_us);
			continue;
		}
		deliver(r, q->name, q->type, DNS_OK);
		nx = b->next; /* callbacks may have changed the list */
	}
}

void dns_resolver_poll(struct dns_resolver *r, uint64_t now_us)
{
	void *objs[32];
	unsigned n;

	r->now_us = now_us;
	/*
	 * A list is walked only when one of its deadlines may have passed: with
	 * a thousand queries in flight, a walk of both every turn took up to
	 * half of a worker's time.  Every deadline set lowers the list's bound,
	 * and each walk sets it again from what it leaves.
	 */
	if (now_us >= r->active_next_us) {
		r->active_next_us = UINT64_MAX;
		expire_txns(r, now_us);
	}
	while ((n = rte_ring_sc_dequeue_burst(r->ring, objs, 32, NULL)) > 0) {
		for (unsigned i = 0; i < n; i++) {
			struct dns_inflight *f = objs[i];
			deliver(r, f->name, f->type, f->status);
			dns_inflight_put(f);
		}
	}
	if (now_us >= r->waiting_next_us) {
		r->waiting_next_us = UINT64_MAX;
		expire_reqs(r, now_us);
	}
}
