/*
 * cache.c - per-core client session cache: destination "host:port" -> the
 * latest SSL_SESSION received from that destination.
 *
 * A fixed array of entries (capacity from config), a chained hash over them
 * and an LRU list; all indexes are 32-bit.  One cache per core, used only
 * by that core's connections: no locks.  Entries are evicted least
 * recently used first when full, and dropped when their session has
 * expired or is no longer resumable (checked at lookup and by
 * tls_session_cache_expire()).
 *
 * A TLS 1.2 session is reused by every reconnection: one entry per
 * destination, replaced by each new session.  TLS 1.3 tickets are
 * single-use (RFC 8446 C.4): the connection that resumes takes its entry
 * out, so a destination keeps up to TLS_CACHE_TICKETS_PER_DEST tickets (a
 * server sends one or more per handshake) and a burst of pooled
 * reconnections resumes instead of falling back to full handshakes.
 */
#include "tls_internal.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#define NIL UINT32_MAX
#define CACHE_MAX_CAPACITY (1u << 20)
#define TLS_CACHE_TICKETS_PER_DEST 16

struct cache_entry {
	char key[TLS_CACHE_KEY_MAX];
	uint64_t hash;
	SSL_SESSION *sess; /* NULL: the entry is free */
	int64_t expires_s;
	bool verified;
	uint32_t chain;	     /* next in bucket, or next free */
	uint32_t prev, next; /* LRU: head is most recent */
};

struct tls_session_cache {
	struct cache_entry *entries;
	uint32_t *buckets;
	uint32_t bucket_mask;
	uint32_t capacity, count;
	uint32_t free_head, lru_head, lru_tail;
	struct tls_cache_stats stats;
};

/* FNV-1a, 64 bit: keys are short and chosen by DNS, not by an attacker on the path. */
static uint64_t key_hash(const char *k)
{
	uint64_t h = 1469598103934665603ull;

	for (; *k; k++) {
		h ^= (unsigned char)*k;
		h *= 1099511628211ull;
	}
	return h;
}

int tls_cache_key(char *buf, size_t len, const char *host, uint16_t port)
{
	int n = snprintf(buf, len, "%s:%u", host, (unsigned)port);

	/* Host names are case-insensitive (RFC 4343): one entry per name. */
	if (n < 0 || (size_t)n >= len)
		return -ENAMETOOLONG;
	for (char *p = buf; *p; p++)
		if (*p >= 'A' && *p <= 'Z')
			*p = (char)(*p - 'A' + 'a');
	return 0;
}

int tls_session_cache_create(size_t capacity, struct tls_session_cache **out)
{
	struct tls_session_cache *c;
	uint32_t nb = 1;

	if (out == NULL || capacity == 0 || capacity > CACHE_MAX_CAPACITY)
		return -EINVAL;
	while (nb < capacity * 2)
		nb <<= 1;
	c = calloc(1, sizeof(*c));
	if (c == NULL)
		return -ENOMEM;
	c->entries = calloc(capacity, sizeof(*c->entries));
	c->buckets = malloc(nb * sizeof(*c->buckets));
	if (c->entries == NULL || c->buckets == NULL) {
		free(c->entries);
		free(c->buckets);
		free(c);
		return -ENOMEM;
	}
	for (uint32_t i = 0; i < nb; i++)
		c->buckets[i] = NIL;
	c->bucket_mask = nb - 1;
	c->capacity = (uint32_t)capacity;
	for (uint32_t i = 0; i < c->capacity; i++)
		c->entries[i].chain = i + 1 < c->capacity ? i + 1 : NIL;
	c->free_head = 0;
	c->lru_head = c->lru_tail = NIL;
	*out = c;
	return 0;
}

void tls_session_cache_free(struct tls_session_cache *c)
{
	if (c == NULL)
		return;
	for (uint32_t i = 0; i < c->capacity; i++)
		SSL_SESSION_free(c->entries[i].sess);
	free(c->entries);
	free(c->buckets);
	free(c);
}

size_t tls_session_cache_count(const struct tls_session_cache *c)
{
	return c ? c->count : 0;
}

const struct tls_cache_stats *tls_session_cache_stats(const struct tls_session_cache *c)
{
	return &c->stats;
}

static void lru_unlink(struct tls_session_cache *c, uint32_t i)
{
	struct cache_entry *e = &c->entries[i];

	if (e->prev != NIL)
		c->entries[e->prev].next = e->next;
	else
		c->lru_head = e->next;
	if (e->next != NIL)
		c->entries[e->next].prev = e->prev;
	else
		c->lru_tail = e->prev;
	e->prev = e->next = NIL;
}

static void lru_push_front(struct tls_session_cache *c, uint32_t i)
{
	struct cache_entry *e = &c->entries[i];

	e->prev = NIL;
	e->next = c->lru_head;
	if (c->lru_head != NIL)
		c->entries[c->lru_head].prev = i;
	c->lru_head = i;
	if (c->lru_tail == NIL)
		c->lru_tail = i;
}

static uint32_t find(const struct tls_session_cache *c, const char *key, uint64_t h)
{
	for (uint32_t i = c->buckets[h & c->bucket_mask]; i != NIL; i = c->entries[i].chain)
		if (c->entries[i].hash == h && strcmp(c->entries[i].key, key) == 0)
			return i;
	return NIL;
}

static void remove_entry(struct tls_session_cache *c, uint32_t i)
{
	struct cache_entry *e = &c->entries[i];
	uint32_t *pp = &c->buckets[e->hash & c->bucket_mask];

	while (*pp != NIL && *pp != i)
		pp = &c->entries[*pp].chain;
	if (*pp == i)
		*pp = e->chain;
	lru_unlink(c, i);
	SSL_SESSION_free(e->sess);
	e->sess = NULL;
	e->key[0] = '\0';
	e->chain = c->free_head;
	c->free_head = i;
	c->count--;
}

/* When a session stops being resumable: its timeout, and for TLS 1.3 the ticket lifetime. */
static int64_t session_expiry(SSL_SESSION *sess)
{
	int64_t t = (int64_t)SSL_SESSION_get_time(sess);
	int64_t exp = t + (int64_t)SSL_SESSION_get_timeout(sess);
	unsigned long hint = SSL_SESSION_get_ticket_lifetime_hint(sess);

	if (hint > 0 && t + (int64_t)hint < exp)
		exp = t + (int64_t)hint;
	return exp;
}

/* The next entry of key after i in its bucket chain (i = NIL: the first, the newest). */
static uint32_t find_next(const struct tls_session_cache *c, const char *key, uint64_t h,
			  uint32_t i)
{
	i = i == NIL ? c->buckets[h & c->bucket_mask] : c->entries[i].chain;
	for (; i != NIL; i = c->entries[i].chain)
		if (c->entries[i].hash == h && strcmp(c->entries[i].key, key) == 0)
			return i;
	return NIL;
}

SSL_SESSION *tls_cache_lookup(struct tls_session_cache *c, const char *key, bool need_verified,
			      int64_t now_s)
{
	uint64_t h = key_hash(key);
	uint32_t i = NIL, next;
	SSL_SESSION *sess = NULL;
	bool skipped = false;

	/* Newest first (a bucket chain is in insertion order, newest at the head). */
	for (i = find_next(c, key, h, NIL); i != NIL; i = next) {
		next = find_next(c, key, h, i);
		if (c->entries[i].expires_s <= now_s ||
		    !SSL_SESSION_is_resumable(c->entries[i].sess)) {
			remove_entry(c, i);
			c->stats.expired++;
			continue;
		}
		if (need_verified && !c->entries[i].verified) {
			skipped = true;
			continue;
		}
		sess = c->entries[i].sess;
		break;
	}
	if (sess == NULL) {
		if (skipped)
			c->stats.unverified_skipped++;
		c->stats.misses++;
		return NULL;
	}
	c->stats.hits++;
	if (SSL_SESSION_get_protocol_version(sess) >= TLS1_3_VERSION) {
		/*
		 * RFC 8446 C.4: a TLS 1.3 ticket is used once; the connection
		 * that resumes gets a new one from the server (new-session
		 * callback), which takes this entry's place.
		 */
		SSL_SESSION_up_ref(sess);
		remove_entry(c, i);
		return sess;
	}
	lru_unlink(c, i);
	lru_push_front(c, i);
	SSL_SESSION_up_ref(sess);
	return sess;
}

int tls_cache_store(struct tls_session_cache *c, const char *key, SSL_SESSION *sess, bool verified,
		    int64_t now_s)
{
	uint64_t h = key_hash(key);
	uint32_t i = find(c, key, h);
	struct cache_entry *e;
	int64_t exp = session_expiry(sess);

	if (strlen(key) >= TLS_CACHE_KEY_MAX)
		return -ENAMETOOLONG;
	if (exp <= now_s)
		return -ETIME;
	if (SSL_SESSION_get_protocol_version(sess) >= TLS1_3_VERSION) {
		/* Another ticket: a new entry; past the bound, the destination's oldest goes. */
		unsigned n = 0;
		uint32_t oldest = NIL;
		for (uint32_t k = find_next(c, key, h, NIL); k != NIL; k = find_next(c, key, h, k)) {
			n++;
			oldest = k;
		}
		if (n >= TLS_CACHE_TICKETS_PER_DEST) {
			remove_entry(c, oldest);
			c->stats.evictions++;
		}
		i = NIL;
	}
	if (i != NIL) {
		e = &c->entries[i];
		SSL_SESSION_free(e->sess);
		lru_unlink(c, i);
	} else {
		if (c->free_head == NIL) {
			remove_entry(c, c->lru_tail);
			c->stats.evictions++;
		}
		i = c->free_head;
		e = &c->entries[i];
		c->free_head = e->chain;
		snprintf(e->key, sizeof(e->key), "%s", key);
		e->hash = h;
		e->chain = c->buckets[h & c->bucket_mask];
		c->buckets[h & c->bucket_mask] = i;
		c->count++;
	}
	e->sess = sess;
	e->verified = verified;
	e->expires_s = exp;
	lru_push_front(c, i);
	c->stats.stores++;
	return 0;
}

size_t tls_session_cache_expire(struct tls_session_cache *c, int64_t now_s)
{
	size_t dropped = 0;
	uint32_t i;

	if (c == NULL)
		return 0;
	i = c->lru_head;
	while (i != NIL) {
		uint32_t next = c->entries[i].next;

		if (c->entries[i].expires_s <= now_s) {
			remove_entry(c, i);
			dropped++;
		}
		i = next;
	}
	c->stats.expired += dropped;
	return dropped;
}

void tls_cache_forget(struct tls_session_cache *c, const char *key)
{
	uint32_t i;

	while ((i = find(c, key, key_hash(key))) != NIL)
		remove_entry(c, i);
}

int tls_session_cache_remove(struct tls_session_cache *c, const char *host, uint16_t port)
{
	char key[TLS_CACHE_KEY_MAX];
	size_t hl;
	uint32_t i;

	if (c == NULL || host == NULL)
		return -EINVAL;
	hl = strlen(host);
	if (hl > 0 && host[hl - 1] == '.')
		hl--;
	if (hl >= 256)
		return -ENOENT;
	char name[256];
	memcpy(name, host, hl);
	name[hl] = '\0';
	if (tls_cache_key(key, sizeof(key), name, port) < 0)
		return -ENOENT;
	i = find(c, key, key_hash(key));
	if (i == NIL)
		return -ENOENT;
	tls_cache_forget(c, key);
	return 0;
}
