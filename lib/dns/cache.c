/*
 * cache.c - the DNS cache shared by all lcores, and the machine-wide
 * in-flight table that coalesces misses.
 *
 * Concurrency (why it is safe):
 *  - Readers never lock.  The index is an rte_hash created with
 *    RTE_HASH_EXTRA_FLAGS_RW_CONCURRENCY_LF; its key is 16 octets (two CRC32C
 *    hashes of the lowercased name, its length and the type) and its data is
 *    a pointer to an immutable struct entry, which also holds the full name:
 *    a reader compares it, so a hash collision is a miss, never a wrong answer.
 *  - Writers (insert, replace, evict, flush) serialise on one spinlock; they
 *    run only on misses and upstream answers.  A replace updates the data
 *    pointer in place (atomic in LF mode) and hands the old entry to an
 *    rte_rcu_qsbr defer queue; a delete also hands over the key position,
 *    which LF mode does not recycle by itself (rte_hash_free_key_with_position).
 *  - Each reader thread registers an RCU thread id and reports quiescence
 *    (dns_cache_quiescent) from its poll loop, when it holds no entry
 *    pointer.  An entry is freed only after every registered reader has
 *    reported since it was unpublished: no reader can still see it.
 *  - Eviction is CLOCK: readers set a reference bit (a relaxed store, only
 *    when it was clear); the writer's hand clears bits and evicts the first
 *    entry found clear, or any entry past its serve-stale window.
 *  - The two other mutable bits of an entry (reference, prefetch claimed)
 *    are atomics; everything else is written before publication.
 */
#include "dns_internal.h"
#include "core.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <rte_hash.h>
#include <rte_hash_crc.h>
#include <rte_malloc.h>
#include <rte_rcu_qsbr.h>
#include <rte_ring.h>
#include <rte_spinlock.h>

struct cache_key {
	uint64_t h1;
	uint32_t h2;
	uint16_t type;
	uint16_t len;
};

struct entry {
	struct dns_entry pub; /* first: &pub == entry */
	struct cache_key key;
	uint8_t ref;	  /* CLOCK reference bit */
	uint8_t prefetch; /* prefetch claimed */
	int32_t pos;	  /* rte_hash key position (writer only) */
			  /* followed by struct dns_rr[rr_count] and the strings/bytes they use */
};

struct dq_elem {
	struct entry *e;
	int64_t pos; /* key position to free, or -1 for a replaced entry */
};

struct thread_slot {
	struct dns_counters ctr;
	struct rte_ring *ring;
	bool used;
} __attribute__((aligned(64)));

#define INFLIGHT_BUCKETS 1024

struct dns_cache {
	struct dns_conf conf;
	struct rte_hash *hash;
	struct rte_rcu_qsbr *qsbr;
	struct rte_rcu_qsbr_dq *dq;
	rte_spinlock_t wlock;
	struct entry **slots; /* by key position, for CLOCK, flush and foreach */
	uint32_t slot_count;
	uint32_t hand;
	uint32_t entries;
	uint32_t dq_size, dq_count;  /* defer queue capacity and use (writer lock) */
	struct entry *orphans;	     /* retired while the defer queue was full (never expected) */
	uint64_t allocated, freed;   /* atomics */
	struct thread_slot *threads; /* max_threads + 1 */
	rte_spinlock_t tlock;
	rte_spinlock_t ilock;
	unsigned inflight_count;
	struct dns_inflight *ibuckets[INFLIGHT_BUCKETS];
};

#define SEED_A 0x9e3779b9u
#define SEED_B 0x85ebca6bu
#define SEED_C 0xc2b2ae35u

int dns_name_lower(const char *name, char *out)
{
	size_t n = 0;
	if (name == NULL)
		return -EINVAL;
	for (; name[n] != '\0'; n++) {
		if (n >= DNS_NAME_TEXT_MAX - 1)
			return -EINVAL;
		char ch = name[n];
		out[n] = (ch >= 'A' && ch <= 'Z') ? (char)(ch + 32) : ch;
	}
	if (n > 0 && out[n - 1] == '.')
		n--;
	out[n] = '\0';
	return (int)n;
}

/*
 * Lowercase 8 octets at once (SWAR): a byte gets 0x20 when it is ASCII and
 * in 'A'..'Z'.  Bytes >= 0x80 are left alone.
 */
static inline uint64_t lower8(uint64_t w)
{
	const uint64_t ones = 0x0101010101010101ull;
	uint64_t h = w & (0x7f * ones);
	uint64_t ge_a = h + (0x80 - 'A') * ones;
	uint64_t gt_z = h + (0x80 - 'Z' - 1) * ones;
	uint64_t upper = ~w & (ge_a ^ gt_z) & (0x80 * ones);
	return w | (upper >> 2);
}

/*
 * Key of (name, type): the lowercased name goes to @low (NUL-terminated,
 * trailing dot stripped, zero-padded to 8 octets), hashed 8 octets at a time
 * by two interleaved CRC32C chains.  This is the hot path of every hit.
 */
static int make_key(const char *name, uint16_t type, char *low, struct cache_key *k)
{
	size_t n;
	if (name == NULL)
		return -EINVAL;
	n = strlen(name);
	if (n > 0 && name[n - 1] == '.')
		n--;
	if (n >= DNS_NAME_TEXT_MAX - 1)
		return -EINVAL;
	memcpy(low, name, n);
	memset(low + n, 0, 8);
	uint32_t a = SEED_A, b = SEED_B;
	for (size_t i = 0; i < n; i += 8) {
		uint64_t w;
		memcpy(&w, low + i, 8);
		w = lower8(w);
		memcpy(low + i, &w, 8);
		a = rte_hash_crc_8byte(w, a);
		b = rte_hash_crc_8byte(w, b);
	}
	low[n] = '\0';
	k->h1 = ((uint64_t)a << 32) | b;
	k->h2 = (uint32_t)n * SEED_C;
	k->type = type;
	k->len = (uint16_t)n;
	return (int)n;
}

static void entry_free(struct dns_cache *c, struct entry *e)
{
	free(e);
	__atomic_fetch_add(&c->freed, 1, __ATOMIC_RELAXED);
}

static void dq_free(void *p, void *elems, unsigned int n)
{
	struct dns_cache *c = p;
	struct dq_elem *el = elems;
	for (unsigned i = 0; i < n; i++) {
		if (el[i].pos >= 0)
			rte_hash_free_key_with_position(c->hash, (int32_t)el[i].pos);
		entry_free(c, el[i].e);
	}
	c->dq_count -= n;
}

void dns_conf_defaults(struct dns_conf *c)
{
	memset(c, 0, sizeof(*c));
	c->resolver_port = 53;
	c->timeout_us = 1000000;
	c->attempts = 2;
	c->min_ttl = 0;
	c->max_ttl = 86400;
	c->negative_ttl = 3600;
	c->stale_max = 86400;
	c->stale_ttl = 30;
	c->max_entries = 100000;
	c->max_inflight = 4096;
	c->max_pending = 4096;
	c->max_threads = 64;
}

struct dns_cache *dns_cache_create(const struct dns_conf *conf, const char *name)
{
	char nm[RTE_HASH_NAMESIZE];
	struct dns_cache *c;

	if (conf->max_threads == 0 || conf->max_threads > DNS_MAX_THREADS ||
	    conf->max_entries == 0 || conf->max_entries > (1u << 26))
		return NULL;
	c = calloc(1, sizeof(*c));
	if (c == NULL)
		return NULL;
	c->conf = *conf;
	rte_spinlock_init(&c->wlock);
	rte_spinlock_init(&c->tlock);
	rte_spinlock_init(&c->ilock);

	/* Deleted keys keep their position until the grace period ends: room for both. */
	c->slot_count = conf->max_entries * 2 + 64;
	snprintf(nm, sizeof(nm), "dnsc_%s", name);
	struct rte_hash_parameters hp = {
		.name = nm,
		.entries = c->slot_count,
		.key_len = sizeof(struct cache_key),
		.hash_func = rte_hash_crc,
		.hash_func_init_val = 0,
		.socket_id = SOCKET_ID_ANY,
		.extra_flag =
			RTE_HASH_EXTRA_FLAGS_RW_CONCURRENCY_LF | RTE_HASH_EXTRA_FLAGS_EXT_TABLE,
	};
	c->hash = rte_hash_create(&hp);
	if (c->hash == NULL)
		goto fail;
	/* Positions returned by rte_hash may reach entries + a per-lcore cache margin. */
	c->slot_count = (uint32_t)rte_hash_max_key_id(c->hash) + 1;
	c->slots = calloc(c->slot_count, sizeof(*c->slots));
	c->threads = rte_zmalloc(NULL, sizeof(*c->threads) * (conf->max_threads + 1), 64);
	size_t qsz = rte_rcu_qsbr_get_memsize(conf->max_threads);
	c->qsbr = rte_zmalloc(NULL, qsz, RTE_CACHE_LINE_SIZE);
	if (c->slots == NULL || c->threads == NULL || c->qsbr == NULL ||
	    rte_rcu_qsbr_init(c->qsbr, conf->max_threads) != 0)
		goto fail;
	snprintf(nm, sizeof(nm), "dnsq_%s", name);
	struct rte_rcu_qsbr_dq_parameters dp = {
		.name = nm,
		.flags = RTE_RCU_QSBR_DQ_MT_UNSAFE,
		.size = c->slot_count * 2,
		.esize = sizeof(struct dq_elem),
		.trigger_reclaim_limit = 64,
		.max_reclaim_size = 256,
		.free_fn = dq_free,
		.p = c,
		.v = c->qsbr,
	};
	c->dq_size = dp.size;
	c->dq = rte_rcu_qsbr_dq_create(&dp);
	if (c->dq == NULL)
		goto fail;
	return c;
fail:
	dns_cache_destroy(c);
	return NULL;
}

static void inflight_free_all(struct dns_cache *c)
{
	for (unsigned b = 0; b < INFLIGHT_BUCKETS; b++) {
		while (c->ibuckets[b]) {
			struct dns_inflight *f = c->ibuckets[b];
			c->ibuckets[b] = f->next;
			free(f);
		}
	}
}

void dns_cache_destroy(struct dns_cache *c)
{
	if (c == NULL)
		return;
	if (c->dq) {
		/* Every reader is gone: force the grace period by going offline. */
		for (unsigned t = 0; t < c->conf.max_threads; t++)
			if (c->threads && c->threads[t].used)
				rte_rcu_qsbr_thread_offline(c->qsbr, t);
		rte_rcu_qsbr_dq_delete(c->dq);
	}
	if (c->slots) {
		for (uint32_t i = 0; i < c->slot_count; i++)
			if (c->slots[i])
				entry_free(c, c->slots[i]);
		free(c->slots);
	}
	while (c->orphans) {
		struct entry *e = c->orphans;
		c->orphans = (struct entry *)(uintptr_t)e->pub.rr;
		entry_free(c, e);
	}
	inflight_free_all(c);
	rte_hash_free(c->hash);
	rte_free(c->qsbr);
	rte_free(c->threads);
	free(c);
}

const struct dns_conf *dns_cache_conf(const struct dns_cache *c)
{
	return &c->conf;
}

int dns_cache_register_thread(struct dns_cache *c, unsigned *thread_id)
{
	int rc = -ENOSPC;
	rte_spinlock_lock(&c->tlock);
	for (unsigned t = 0; t < c->conf.max_threads; t++) {
		if (c->threads[t].used)
			continue;
		memset(&c->threads[t].ctr, 0, sizeof(c->threads[t].ctr));
		c->threads[t].used = true;
		rte_rcu_qsbr_thread_register(c->qsbr, t);
		rte_rcu_qsbr_thread_online(c->qsbr, t);
		*thread_id = t;
		rc = 0;
		break;
	}
	rte_spinlock_unlock(&c->tlock);
	return rc;
}

void dns_cache_unregister_thread(struct dns_cache *c, unsigned thread_id)
{
	if (thread_id >= c->conf.max_threads)
		return;
	rte_spinlock_lock(&c->tlock);
	if (c->threads[thread_id].used) {
		rte_rcu_qsbr_thread_offline(c->qsbr, thread_id);
		rte_rcu_qsbr_thread_unregister(c->qsbr, thread_id);
		/* Keep its counters in the unregistered slot so sums stay monotonic. */
		struct dns_counters *from = &c->threads[thread_id].ctr;
		struct dns_counters *to = &c->threads[c->conf.max_threads].ctr;
		uint64_t *f = (uint64_t *)from, *t = (uint64_t *)to;
		for (size_t i = 0; i < sizeof(*from) / sizeof(uint64_t); i++)
			t[i] += f[i];
		memset(from, 0, sizeof(*from));
		c->threads[thread_id].used = false;
		c->threads[thread_id].ring = NULL;
	}
	rte_spinlock_unlock(&c->tlock);
}

void dns_cache_quiescent(struct dns_cache *c, unsigned thread_id)
{
	if (thread_id < c->conf.max_threads)
		rte_rcu_qsbr_quiescent(c->qsbr, thread_id);
}

struct dns_counters *dns_cache_thread_counters(struct dns_cache *c, unsigned thread_id)
{
	if (thread_id >= c->conf.max_threads)
		thread_id = c->conf.max_threads;
	return &c->threads[thread_id].ctr;
}

/* Single-writer counters: a plain load/store pair, no locked RMW on the hot path. */
#define CTR_INC(p)                                                                                 \
	__atomic_store_n(&(p), __atomic_load_n(&(p), __ATOMIC_RELAXED) + 1, __ATOMIC_RELAXED)

static struct entry *find(struct dns_cache *c, const char *name, uint16_t type)
{
	char low[DNS_NAME_TEXT_MAX + 8];
	struct cache_key k;
	void *data;

	memset(&k, 0, sizeof(k));
	if (make_key(name, type, low, &k) < 0)
		return NULL;
	if (rte_hash_lookup_with_hash_data(c->hash, &k, (hash_sig_t)k.h1, &data) < 0)
		return NULL;
	struct entry *e = data;
	if (memcmp(e->pub.name, low, (size_t)k.len + 1) != 0)
		return NULL;
	if (__atomic_load_n(&e->ref, __ATOMIC_RELAXED) == 0)
		__atomic_store_n(&e->ref, 1, __ATOMIC_RELAXED);
	return e;
}

const struct dns_entry *dns_cache_lookup(struct dns_cache *c, unsigned thread_id, const char *name,
					 uint16_t type, uint64_t now_us)
{
	struct dns_counters *ctr = dns_cache_thread_counters(c, thread_id);
	struct entry *e = find(c, name, type);
	if (e == NULL || now_us >= e->pub.expire_us) {
		CTR_INC(ctr->misses);
		return e ? &e->pub : NULL;
	}
	CTR_INC(ctr->hits);
	if (e->pub.status == DNS_NXDOMAIN || e->pub.status == DNS_NODATA)
		CTR_INC(ctr->negative_hits);
	return &e->pub;
}

const struct dns_entry *dns_cache_peek(struct dns_cache *c, const char *name, uint16_t type)
{
	struct entry *e = find(c, name, type);
	return e ? &e->pub : NULL;
}

bool dns_cache_claim_prefetch(const struct dns_entry *pub)
{
	struct entry *e = (struct entry *)(uintptr_t)pub;
	uint8_t expect = 0;
	return __atomic_compare_exchange_n(&e->prefetch, &expect, 1, false, __ATOMIC_RELAXED,
					   __ATOMIC_RELAXED);
}

/* Writer lock held.  Hand an unpublished entry (and maybe its key slot) to RCU. */
static void retire(struct dns_cache *c, struct entry *e, int32_t pos)
{
	struct dq_elem el = {.e = e, .pos = pos};
	/* Callers checked dq_room() first, so this cannot fail; if it did, the entry
	 * waits on a list freed at destroy rather than being freed under a reader. */
	if (rte_rcu_qsbr_dq_enqueue(c->dq, &el) == 0) {
		c->dq_count++;
	} else {
		e->pos = pos;
		e->pub.rr = (const struct dns_rr *)c->orphans;
		c->orphans = e;
	}
}

/* Writer lock held: free what the grace period allows; room left in the defer queue. */
static unsigned dq_room(struct dns_cache *c)
{
	rte_rcu_qsbr_dq_reclaim(c->dq, 256, NULL, NULL, NULL);
	return c->dq_size - c->dq_count;
}

/* Writer lock held: remove the entry at @pos. */
static void remove_at(struct dns_cache *c, uint32_t pos)
{
	struct entry *e = c->slots[pos];
	int32_t p = rte_hash_del_key_with_hash(c->hash, &e->key, (hash_sig_t)e->key.h1);
	c->slots[pos] = NULL;
	c->entries--;
	retire(c, e, p >= 0 ? p : -1);
}

/* Writer lock held: CLOCK sweep, evict one entry.  Returns 0 or -ENOSPC. */
static int evict_one(struct dns_cache *c, struct dns_counters *ctr, uint64_t now_us)
{
	for (uint64_t step = 0; step < 2ull * c->slot_count + 1; step++) {
		uint32_t pos = c->hand;
		c->hand = (c->hand + 1) % c->slot_count;
		struct entry *e = c->slots[pos];
		if (e == NULL)
			continue;
		if (now_us < e->pub.stale_until_us && __atomic_load_n(&e->ref, __ATOMIC_RELAXED)) {
			__atomic_store_n(&e->ref, 0, __ATOMIC_RELAXED);
			continue;
		}
		remove_at(c, pos);
		CTR_INC(ctr->evictions);
		return 0;
	}
	return -ENOSPC;
}

static size_t str_size(const char *s)
{
	return s ? strlen(s) + 1 : 1;
}

static char *put_str(char **p, const char *s)
{
	char *d = *p;
	size_t n = str_size(s);
	if (s)
		memcpy(d, s, n);
	else
		d[0] = '\0';
	*p += n;
	return d;
}

static const uint8_t *put_bytes(char **p, const uint8_t *s, size_t n)
{
	uint8_t *d = (uint8_t *)*p;
	if (n)
		memcpy(d, s, n);
	*p += n;
	return d;
}

/* Build an unpublished entry; names are copied, rr owners become canon. */
static struct entry *entry_build(const char *low, uint16_t type, enum dns_status status,
				 const char *canon, bool ad, const struct dns_rr *rrs,
				 unsigned rr_count)
{
	size_t sz = sizeof(struct entry) + rr_count * sizeof(struct dns_rr) + str_size(low) +
		    str_size(canon);
	for (unsigned i = 0; i < rr_count; i++) {
		const struct dns_rr *r = &rrs[i];
		switch (r->type) {
		case DNS_T_MX:
			sz += str_size(r->mx.host);
			break;
		case DNS_T_CNAME:
		case DNS_T_NS:
			sz += str_size(r->target);
			break;
		case DNS_T_SOA:
			sz += str_size(r->soa.mname) + str_size(r->soa.rname);
			break;
		case DNS_T_TLSA:
			sz += r->tlsa.len;
			break;
		case DNS_T_A:
		case DNS_T_AAAA:
			break;
		default:
			sz += r->raw.len;
			break;
		}
	}
	struct entry *e = calloc(1, sz);
	if (e == NULL)
		return NULL;
	struct dns_rr *out = (struct dns_rr *)(e + 1);
	char *p = (char *)(out + rr_count);
	e->pub.name = put_str(&p, low);
	e->pub.canon =
		(canon && canon[0] && strcmp(canon, low) != 0) ? put_str(&p, canon) : e->pub.name;
	if (e->pub.canon == e->pub.name)
		p++; /* the reserved canon byte stays unused */
	e->pub.type = type;
	e->pub.status = (uint8_t)status;
	e->pub.ad = ad;
	e->pub.rr = out;
	e->pub.rr_count = (uint16_t)rr_count;
	for (unsigned i = 0; i < rr_count; i++) {
		out[i] = rrs[i];
		out[i].name = e->pub.canon;
		switch (rrs[i].type) {
		case DNS_T_MX:
			out[i].mx.host = put_str(&p, rrs[i].mx.host);
			break;
		case DNS_T_CNAME:
		case DNS_T_NS:
			out[i].target = put_str(&p, rrs[i].target);
			break;
		case DNS_T_SOA:
			out[i].soa.mname = put_str(&p, rrs[i].soa.mname);
			out[i].soa.rname = put_str(&p, rrs[i].soa.rname);
			break;
		case DNS_T_TLSA:
			out[i].tlsa.data = put_bytes(&p, rrs[i].tlsa.data, rrs[i].tlsa.len);
			break;
		case DNS_T_A:
		case DNS_T_AAAA:
			break;
		default:
			out[i].raw.data = put_bytes(&p, rrs[i].raw.data, rrs[i].raw.len);
			break;
		}
	}
	return e;
}

/* Writer: publish @e under its key (replacing any previous entry). */
static int publish(struct dns_cache *c, struct dns_counters *ctr, struct entry *e, uint64_t now_us)
{
	int rc = 0;
	void *old = NULL;

	rte_spinlock_lock(&c->wlock);
	/*
	 * Replacing or evicting retires up to two entries.  If readers have not
	 * reported quiescence for that long (a stalled lcore), refuse the insert
	 * rather than block: the answer is still delivered, just not cached.
	 */
	if (dq_room(c) < 2) {
		rte_spinlock_unlock(&c->wlock);
		CTR_INC(ctr->reclaim_full);
		free(e);
		return -EBUSY;
	}
	__atomic_fetch_add(&c->allocated, 1, __ATOMIC_RELAXED);
	bool exists =
		rte_hash_lookup_with_hash_data(c->hash, &e->key, (hash_sig_t)e->key.h1, &old) >= 0;
	if (!exists && c->entries >= c->conf.max_entries)
		evict_one(c, ctr, now_us);
	/* Entry contents must be visible before the pointer (rte_hash LF stores release). */
	rc = rte_hash_add_key_with_hash_data(c->hash, &e->key, (hash_sig_t)e->key.h1, e);
	if (rc == -ENOSPC && !exists) {
		if (dq_room(c) >= 2 && evict_one(c, ctr, now_us) == 0) {
			dq_room(c);
			rc = rte_hash_add_key_with_hash_data(c->hash, &e->key,
							     (hash_sig_t)e->key.h1, e);
		}
	}
	if (rc == 0) {
		int32_t pos = rte_hash_lookup_with_hash(c->hash, &e->key, (hash_sig_t)e->key.h1);
		if (pos >= 0 && (uint32_t)pos < c->slot_count) {
			e->pos = pos;
			c->slots[pos] = e;
		}
		if (exists)
			retire(c, (struct entry *)old, -1);
		else
			c->entries++;
	}
	rte_spinlock_unlock(&c->wlock);
	if (rc != 0)
		entry_free(c, e);
	return rc;
}

static uint32_t clamp_ttl(const struct dns_conf *conf, enum dns_status status, uint32_t ttl)
{
	if (status == DNS_NXDOMAIN || status == DNS_NODATA)
		return ttl < conf->negative_ttl ? ttl : conf->negative_ttl;
	if (ttl < conf->min_ttl)
		ttl = conf->min_ttl;
	if (ttl > conf->max_ttl)
		ttl = conf->max_ttl;
	return ttl;
}

int dns_cache_insert_rrs(struct dns_cache *c, unsigned thread_id, const char *name, uint16_t type,
			 enum dns_status status, const char *canon, bool ad, uint32_t ttl,
			 const struct dns_rr *rrs, unsigned rr_count, uint64_t now_us)
{
	char low[DNS_NAME_TEXT_MAX + 8], lcanon[DNS_NAME_TEXT_MAX];
	struct cache_key k;

	uint8_t wire[DNS_NAME_MAX];
	if (status > DNS_CNAME || rr_count > 0xffff ||
	    dns_name_to_wire(name, wire, sizeof(wire)) < 0)
		return -EINVAL;
	memset(&k, 0, sizeof(k));
	if (make_key(name, type, low, &k) < 0)
		return -EINVAL;
	if (canon && dns_name_lower(canon, lcanon) < 0)
		return -EINVAL;
	struct entry *e = entry_build(low, type, status, canon ? lcanon : NULL, ad, rrs, rr_count);
	if (e == NULL)
		return -ENOMEM;
	e->key = k;
	ttl = clamp_ttl(&c->conf, status, ttl);
	e->pub.ttl = ttl;
	e->pub.stored_us = now_us;
	e->pub.expire_us = now_us + (uint64_t)ttl * 1000000u;
	e->pub.stale_until_us = e->pub.expire_us + (uint64_t)c->conf.stale_max * 1000000u;
	return publish(c, dns_cache_thread_counters(c, thread_id), e, now_us);
}

const struct dns_entry *dns_cache_insert_stale(struct dns_cache *c, unsigned thread_id,
					       const struct dns_entry *old, uint64_t now_us)
{
	const struct entry *o = (const struct entry *)old;
	struct entry *e = entry_build(old->name, old->type, (enum dns_status)old->status,
				      old->canon, old->ad, old->rr, old->rr_count);
	if (e == NULL)
		return NULL;
	e->key = o->key;
	e->pub.stale = true;
	e->pub.ttl = c->conf.stale_ttl;
	e->pub.stored_us = now_us;
	e->pub.expire_us = now_us + (uint64_t)c->conf.stale_ttl * 1000000u;
	e->pub.stale_until_us = old->stale_until_us;
	e->prefetch = 1; /* a stale copy is never prefetched: misses retry upstream */
	if (publish(c, dns_cache_thread_counters(c, thread_id), e, now_us) != 0)
		return NULL;
	return &e->pub;
}

int dns_cache_flush(struct dns_cache *c, const char *name)
{
	char low[DNS_NAME_TEXT_MAX];
	int removed = 0;

	if (name && dns_name_lower(name, low) < 0)
		return -EINVAL;
	rte_spinlock_lock(&c->wlock);
	for (uint32_t i = 0; i < c->slot_count; i++) {
		struct entry *e = c->slots[i];
		if (e == NULL || (name && strcmp(e->pub.name, low) != 0))
			continue;
		if (dq_room(c) < 1)
			break; /* readers stalled: flush the rest later */
		remove_at(c, i);
		removed++;
	}
	rte_spinlock_unlock(&c->wlock);
	return removed;
}

int dns_cache_foreach(struct dns_cache *c, int (*fn)(void *arg, const struct dns_entry *e),
		      void *arg)
{
	int count = 0;
	rte_spinlock_lock(&c->wlock);
	for (uint32_t i = 0; i < c->slot_count; i++) {
		if (c->slots[i] == NULL)
			continue;
		count++;
		if (fn(arg, &c->slots[i]->pub) != 0)
			break;
	}
	rte_spinlock_unlock(&c->wlock);
	return count;
}

unsigned dns_cache_reclaim(struct dns_cache *c)
{
	unsigned freed = 0, pending = 0, avail = 0;
	rte_spinlock_lock(&c->wlock);
	rte_rcu_qsbr_dq_reclaim(c->dq, UINT32_MAX, &freed, &pending, &avail);
	rte_spinlock_unlock(&c->wlock);
	return freed;
}

void dns_cache_counters(struct dns_cache *c, struct dns_counters *out)
{
	memset(out, 0, sizeof(*out));
	uint64_t *o = (uint64_t *)out;
	for (unsigned t = 0; t <= c->conf.max_threads; t++) {
		const uint64_t *f = (const uint64_t *)&c->threads[t].ctr;
		for (size_t i = 0; i < sizeof(*out) / sizeof(uint64_t); i++)
			o[i] += __atomic_load_n(&f[i], __ATOMIC_RELAXED);
	}
	out->entries = __atomic_load_n(&c->entries, __ATOMIC_RELAXED);
	out->entries_allocated = __atomic_load_n(&c->allocated, __ATOMIC_RELAXED);
	out->entries_freed = __atomic_load_n(&c->freed, __ATOMIC_RELAXED);
}

/* ---- in-flight table ----------------------------------------------------- */

void dns_cache_set_ring(struct dns_cache *c, unsigned thread_id, struct rte_ring *ring)
{
	if (thread_id < c->conf.max_threads)
		__atomic_store_n(&c->threads[thread_id].ring, ring, __ATOMIC_RELEASE);
}

static uint64_t name_hash(const char *low, uint16_t type)
{
	return rte_hash_crc(low, (uint32_t)strlen(low), SEED_A + type);
}

static struct dns_inflight **inflight_find(struct dns_cache *c, const char *low, uint16_t type,
					   uint64_t h)
{
	struct dns_inflight **pp = &c->ibuckets[h % INFLIGHT_BUCKETS];
	for (; *pp; pp = &(*pp)->next)
		if ((*pp)->h1 == h && (*pp)->type == type && strcmp((*pp)->name, low) == 0)
			return pp;
	return pp;
}

int dns_inflight_join(struct dns_cache *c, unsigned thread_id, const char *low, uint16_t type)
{
	uint64_t h = name_hash(low, type);
	int rc;

	if (thread_id >= c->conf.max_threads || strlen(low) >= DNS_NAME_TEXT_MAX)
		return -EINVAL;
	rte_spinlock_lock(&c->ilock);
	struct dns_inflight **pp = inflight_find(c, low, type, h);
	if (*pp) {
		if ((*pp)->owner != thread_id)
			(*pp)->waiters[thread_id / 64] |= 1ull << (thread_id % 64);
		rc = 0;
	} else if (c->inflight_count >= c->conf.max_inflight) {
		rc = -ENOSPC;
	} else {
		struct dns_inflight *f = calloc(1, sizeof(*f));
		if (f == NULL) {
			rc = -ENOMEM;
		} else {
			f->h1 = h;
			f->type = type;
			strcpy(f->name, low);
			f->owner = thread_id;
			*pp = f;
			c->inflight_count++;
			rc = 1;
		}
	}
	rte_spinlock_unlock(&c->ilock);
	return rc;
}

bool dns_inflight_busy(struct dns_cache *c, const char *low, uint16_t type)
{
	uint64_t h = name_hash(low, type);
	rte_spinlock_lock(&c->ilock);
	bool busy = *inflight_find(c, low, type, h) != NULL;
	rte_spinlock_unlock(&c->ilock);
	return busy;
}

void dns_inflight_put(struct dns_inflight *f)
{
	if (__atomic_sub_fetch(&f->refs, 1, __ATOMIC_ACQ_REL) == 0)
		free(f);
}

unsigned dns_inflight_complete(struct dns_cache *c, unsigned thread_id, const char *low,
			       uint16_t type, int status)
{
	uint64_t h = name_hash(low, type);
	struct dns_inflight *f;
	unsigned dropped = 0;

	rte_spinlock_lock(&c->ilock);
	struct dns_inflight **pp = inflight_find(c, low, type, h);
	f = *pp;
	if (f == NULL || f->owner != thread_id) {
		rte_spinlock_unlock(&c->ilock);
		return 0;
	}
	*pp = f->next;
	c->inflight_count--;
	rte_spinlock_unlock(&c->ilock);

	/* The record is private now; one reference per notification plus ours. */
	f->status = status;
	f->next = NULL;
	f->refs = 1;
	for (unsigned t = 0; t < c->conf.max_threads; t++) {
		if (!(f->waiters[t / 64] & (1ull << (t % 64))))
			continue;
		struct rte_ring *ring = __atomic_load_n(&c->threads[t].ring, __ATOMIC_ACQUIRE);
		__atomic_add_fetch(&f->refs, 1, __ATOMIC_ACQ_REL);
		if (ring == NULL || rte_ring_mp_enqueue(ring, f) != 0) {
			__atomic_sub_fetch(&f->refs, 1, __ATOMIC_ACQ_REL);
			dropped++;
		}
	}
	dns_inflight_put(f);
	return dropped;
}
