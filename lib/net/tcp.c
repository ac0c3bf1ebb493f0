/*
 * tcp.c - one core's TCP: creation, the connection/listener/TIME_WAIT
 * tables, connection lifetime, the caches of ended connections' structs and
 * buffers (filled at start by tcp_prewarm) and the net.h TCP API.
 *
 * Segment processing is in tcp_input.c, segment construction in
 * tcp_output.c, timers (RTO, persist, delayed ACK) in tcp_timer.c, keyed
 * hashes (ISN, cookies) in tcp_crypto.c.  Everything here is per core and
 * single-threaded; callers pass the time on each entry point and the API
 * functions without a time argument use the time of the last entry.
 *
 * Lifetime: a connection is freed only when no callback frame holds it
 * (busy == 0), so an app callback may tcp_close()/tcp_abort() its own
 * connection and the code that invoked the callback sees c->dead instead of
 * freed memory.
 */
#include "tcp_int.h"
#include "core.h"

#include <stdlib.h>

void tcp_conf_defaults(struct tcp_conf *conf)
{
	memset(conf, 0, sizeof(*conf));
	conf->max_conns = 65536;
	conf->sndbuf = 256 * 1024;
	conf->rcvbuf = 256 * 1024;
	conf->mss = 1460;
	conf->syn_backlog = 1024;
	conf->time_wait_max = 65536;
	conf->time_wait_us = 60ull * 1000000;
	conf->reass_conn_bytes = 256 * 1024;
	conf->reass_global_bytes = 64ull << 20;
	conf->challenge_acks_per_s = 1000;
	conf->delack_us = 40000;
	conf->rto_init_us = 1000000;
	conf->rto_min_us = 200000;
	conf->rto_max_us = 60ull * 1000000;
	conf->syn_retries = 5;
	conf->data_retries = 12;
	conf->wscale = 7;
	conf->timestamps = true;
	conf->syn_cookies = true;
	conf->keepalive_us = 0;
	conf->keepalive_intvl_us = 75ull * 1000000;
	conf->keepalive_probes = 9;
}

static uint32_t pow2_at_least(uint64_t n, uint32_t lo, uint32_t hi)
{
	uint32_t v = lo;
	while (v < n && v < hi)
		v <<= 1;
	return v;
}

static uint64_t splitmix(uint64_t *x)
{
	uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

struct tcp_state *tcp_create(const struct tcp_conf *conf, const struct tcp_stack_ops *ops,
			     void *ctx, uint64_t seed)
{
	if (!conf || !ops || !ops->output || conf->mss < 64 || conf->sndbuf < 1 ||
	    conf->rcvbuf < 1 || conf->wscale > TCP_MAX_WSCALE) {
		errno = EINVAL;
		return NULL;
	}
	struct tcp_state *ts = calloc(1, sizeof(*ts));
	if (!ts)
		return NULL;
	ts->conf = *conf;
	if (ts->conf.rto_min_us < NET_TIMER_TICK_US)
		ts->conf.rto_min_us = NET_TIMER_TICK_US;
	if (ts->conf.rto_max_us < ts->conf.rto_min_us)
		ts->conf.rto_max_us = ts->conf.rto_min_us;
	ts->ops = *ops;
	ts->ctx = ctx;
	for (int i = 0; i < 4; i++)
		ts->secret[i] = splitmix(&seed);
	ts->hash_key = splitmix(&seed);
	ts->next_port = (uint16_t)(TCP_EPHEMERAL_LO +
				   splitmix(&seed) % (TCP_EPHEMERAL_HI - TCP_EPHEMERAL_LO + 1));
	uint32_t nb = pow2_at_least(conf->max_conns, 16, 1u << 20);
	ts->conn_tab = calloc(nb, sizeof(*ts->conn_tab));
	ts->conn_mask = nb - 1;
	nb = pow2_at_least(conf->time_wait_max, 16, 1u << 20);
	ts->tw_tab = calloc(nb, sizeof(*ts->tw_tab));
	ts->tw_mask = nb - 1;
	if (conf->time_wait_max)
		ts->tw_pool = calloc(conf->time_wait_max, sizeof(*ts->tw_pool));
	ts->scratch = malloc(TCP_HDR_LEN + TCP_MAX_OPT + (size_t)conf->mss);
	if (!ts->conn_tab || !ts->tw_tab || (conf->time_wait_max && !ts->tw_pool) || !ts->scratch) {
		tcp_destroy(ts);
		errno = ENOMEM;
		return NULL;
	}
	for (uint32_t i = conf->time_wait_max; i-- > 0;) {
		ts->tw_pool[i].hnext = ts->tw_free;
		ts->tw_free = &ts->tw_pool[i];
	}
	net_timer_wheel_init(&ts->wheel, 0);
	return ts;
}

/*
 * Send and receive buffers are kept on a bounded per-core free list when a
 * connection ends: a relay opens and closes thousands of connections a
 * second, and buffers straight from malloc came back from the kernel as
 * fresh pages, faulted in and cleared on first use (6% of the worker in
 * clear_page_erms).  A reused buffer's pages stay resident.  The cache is
 * an array of pointers, not a list through the buffers: a receive buffer
 * that in-place delivery never wrote (tcp_rx_settle) stays untouched, and
 * linking it would fault its first page in.
 */

/*
 * Under AddressSanitizer a cached object is poisoned while it waits for
 * reuse, so a use after free is still reported although the memory is not
 * given back to the allocator.
 */
#if defined(__SANITIZE_ADDRESS__)
#define TCP_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TCP_ASAN 1
#endif
#endif
#ifdef TCP_ASAN
#include <sanitizer/asan_interface.h>
#define TCP_POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define TCP_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define TCP_POISON(p, n) ((void)(p), (void)(n))
#define TCP_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

static void *buf_get(struct tcp_state *ts, void **cache, unsigned *n, uint32_t size,
		     uint32_t conf_size)
{
	if (size == conf_size && *n > 0) {
		void *p = cache[--*n];
		TCP_UNPOISON(p, size);
		ts->bufs_reused++;
		return p;
	}
	ts->bufs_allocated++;
	return malloc(size);
}

static void buf_put(void **cache, unsigned *n, void *p, uint32_t size, uint32_t conf_size)
{
	if (p == NULL)
		return;
	if (size != conf_size || *n >= TCP_BUF_CACHE) {
		free(p);
		return;
	}
	cache[(*n)++] = p;
	TCP_POISON(p, size);
}

static void buf_drain(void **cache, unsigned *n)
{
	while (*n > 0)
		free(cache[--*n]); /* free() takes poisoned memory */
}

/*
 * Connection structs likewise: a connection per message, and calloc'ed ones
 * landed on pages the allocator had returned to the kernel.  Bounded by
 * TCP_CONN_CACHE; a cached struct is cleared when it is taken.
 */
static void conn_cache_put(struct tcp_state *ts, struct tcp_conn *c)
{
	c->hnext = ts->conn_cache;
	ts->conn_cache = c;
	ts->conn_cached++;
	/* the link stays readable: LeakSanitizer follows no pointer in poisoned memory */
	TCP_POISON((uint8_t *)c + sizeof(c->hnext), sizeof(*c) - sizeof(c->hnext));
}

static void conn_free(struct tcp_conn *c)
{
	struct tcp_state *ts = c->ts;
	buf_put(ts->sbuf_cache, &ts->sbuf_cached, c->sbuf, c->sbuf_size, ts->conf.sndbuf);
	buf_put(ts->rbuf_cache, &ts->rbuf_cached, c->rbuf, c->rbuf_size, ts->conf.rcvbuf);
	if (ts->conn_cached >= TCP_CONN_CACHE) {
		free(c);
		return;
	}
	conn_cache_put(ts, c);
}

static struct tcp_conn *conn_alloc(struct tcp_state *ts)
{
	struct tcp_conn *c = ts->conn_cache;
	if (c == NULL)
		return calloc(1, sizeof(*c));
	TCP_UNPOISON(c, sizeof(*c));
	ts->conn_cache = c->hnext;
	ts->conn_cached--;
	ts->stats.conns_reused++;
	memset(c, 0, sizeof(*c));
	return c;
}

void tcp_destroy(struct tcp_state *ts)
{
	if (!ts)
		return;
	if (ts->conn_tab) {
		for (uint32_t i = 0; i <= ts->conn_mask; i++) {
			struct tcp_conn *c = ts->conn_tab[i];
			while (c) {
				struct tcp_conn *n = c->hnext;
				if (c->listener) /* frees an unlistened listener */
					tcp_listener_unref(ts, c->listener);
				conn_free(c);
				c = n;
			}
		}
	}
	for (unsigned i = 0; i < 256; i++) {
		struct tcp_listener *l = ts->lis_tab[i];
		while (l) {
			struct tcp_listener *n = l->next;
			free(l);
			l = n;
		}
	}
	buf_drain(ts->sbuf_cache, &ts->sbuf_cached);
	buf_drain(ts->rbuf_cache, &ts->rbuf_cached);
	while (ts->conn_cache != NULL) {
		struct tcp_conn *c = ts->conn_cache;
		TCP_UNPOISON(c, sizeof(*c));
		ts->conn_cache = c->hnext;
		free(c);
	}
	ts->conn_cached = 0;
	free(ts->conn_tab);
	free(ts->tw_tab);
	free(ts->tw_pool);
	free(ts->scratch);
	free(ts);
}

const struct tcp_stats *tcp_get_stats(const struct tcp_state *ts)
{
	return &ts->stats;
}

void tcp_get_cache_stats(const struct tcp_state *ts, struct tcp_cache_stats *out)
{
	out->conns_held = ts->conn_cached;
	out->sbufs_held = ts->sbuf_cached;
	out->rbufs_held = ts->rbuf_cached;
	out->limit = TCP_BUF_CACHE;
	out->prewarmed = ts->prewarmed;
	out->bufs_reused = ts->bufs_reused;
	out->bufs_allocated = ts->bufs_allocated;
}

void tcp_cache_stats(const struct net_stack *st, struct tcp_cache_stats *out)
{
	tcp_get_cache_stats(st->tcp, out);
}

/*
 * Write every page of an area once, keeping its contents: a calloc'ed table
 * comes from the kernel as untouched zero pages, each faulted in (and
 * cleared) by the first packet that hashes to it.
 */
static void touch_pages(void *area, size_t len)
{
	volatile uint8_t *p = area;
	for (size_t i = 0; i < len; i += 4096)
		p[i] = p[i];
	if (len > 0)
		p[len - 1] = p[len - 1];
}

/*
 * A fresh malloc'ed buffer with its first touch bytes written: the pages a
 * short connection uses (a greeting and replies, one message read in place
 * or copied once; rings restart at 0 when drained, tcp_input.c).
 */
static int prewarm_buf(struct tcp_state *ts, void **cache, unsigned *n, uint32_t size, size_t touch)
{
	uint8_t *p = malloc(size);
	if (p == NULL)
		return -ENOMEM;
	memset(p, 0, touch < size ? touch : size);
	cache[(*n)++] = p;
	TCP_POISON(p, size);
	ts->prewarmed++;
	return 0;
}

int tcp_state_prewarm(struct tcp_state *ts, unsigned conns, size_t ring_touch)
{
	unsigned want_conns = conns < TCP_CONN_CACHE ? conns : TCP_CONN_CACHE;
	unsigned want_bufs = conns < TCP_BUF_CACHE ? conns : TCP_BUF_CACHE;
	uint64_t before = ts->prewarmed;

	if (conns == 0)
		return 0;
	touch_pages(ts->conn_tab, ((size_t)ts->conn_mask + 1) * sizeof(*ts->conn_tab));
	touch_pages(ts->tw_tab, ((size_t)ts->tw_mask + 1) * sizeof(*ts->tw_tab));
	while (ts->conn_cached < want_conns) {
		/* all of it: conn_alloc clears it again */
		struct tcp_conn *c = mx_malloc_written(sizeof(*c));
		if (c == NULL)
			return -ENOMEM;
		conn_cache_put(ts, c);
		ts->prewarmed++;
	}
	while (ts->sbuf_cached < want_bufs)
		if (prewarm_buf(ts, ts->sbuf_cache, &ts->sbuf_cached, ts->conf.sndbuf,
				ring_touch) != 0)
			return -ENOMEM;
	while (ts->rbuf_cached < want_bufs)
		if (prewarm_buf(ts, ts->rbuf_cache, &ts->rbuf_cached, ts->conf.rcvbuf,
				ring_touch) != 0)
			return -ENOMEM;
	return (int)(ts->prewarmed - before);
}

int tcp_prewarm(struct net_stack *st, unsigned conns, size_t ring_touch)
{
	return tcp_state_prewarm(st->tcp, conns, ring_touch);
}

uint32_t tcp_conn_count(const struct tcp_state *ts)
{
	return ts->conn_count;
}

/* ---- connection table -------------------------------------------------- */

static inline uint32_t tuple_bucket(uint64_t key, uint32_t mask, uint32_t laddr, uint16_t lport,
				    uint32_t raddr, uint16_t rport)
{
	uint64_t x = (((uint64_t)raddr << 32) | ((uint32_t)rport << 16 | lport)) ^ key;
	x ^= (uint64_t)laddr * 0x9e3779b97f4a7c15ull;
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdull;
	x ^= x >> 33;
	return (uint32_t)x & mask;
}

void tcp_prefetch(const struct tcp_state *ts, uint32_t src, uint16_t sport, uint32_t dst,
		  uint16_t dport)
{
	__builtin_prefetch(
		&ts->conn_tab[tuple_bucket(ts->hash_key, ts->conn_mask, dst, dport, src, sport)]);
}

struct tcp_conn *tcp_conn_lookup(struct tcp_state *ts, uint32_t laddr, uint16_t lport,
				 uint32_t raddr, uint16_t rport)
{
	struct tcp_conn *c =
		ts->conn_tab[tuple_bucket(ts->hash_key, ts->conn_mask, laddr, lport, raddr, rport)];
	for (; c; c = c->hnext)
		if (c->raddr == raddr && c->rport == rport && c->lport == lport &&
		    c->laddr == laddr)
			return c;
	return NULL;
}

struct tcp_conn *tcp_conn_new(struct tcp_state *ts, uint32_t laddr, uint16_t lport, uint32_t raddr,
			      uint16_t rport)
{
	if (ts->conn_count >= ts->conf.max_conns) {
		ts->stats.conn_limit_hits++;
		errno = ENOBUFS;
		return NULL;
	}
	struct tcp_conn *c = conn_alloc(ts);
	if (!c) {
		errno = ENOMEM;
		return NULL;
	}
	c->ts = ts;
	c->laddr = laddr;
	c->lport = lport;
	c->raddr = raddr;
	c->rport = rport;
	c->srtt_us = -1;
	c->rto_us = ts->conf.rto_init_us;
	/* RFC 9293 section 3.7.1 default until the peer says; never above ours */
	c->mss = ts->conf.mss < 536 ? ts->conf.mss : 536;
	c->rtx_timer.kind = TCP_TIMER_RTX;
	c->delack_timer.kind = TCP_TIMER_DELACK;
	c->ka_timer.kind = TCP_TIMER_KEEPALIVE;
	c->rbuf_size = ts->conf.rcvbuf;
	c->sbuf_size = ts->conf.sndbuf;
	uint32_t b = tuple_bucket(ts->hash_key, ts->conn_mask, laddr, lport, raddr, rport);
	c->hnext = ts->conn_tab[b];
	if (c->hnext)
		c->hnext->hpprev = &c->hnext;
	ts->conn_tab[b] = c;
	c->hpprev = &ts->conn_tab[b];
	ts->conn_count++;
	return c;
}

void tcp_reass_drop(struct tcp_conn *c)
{
	c->ts->reass_global -= c->reass_bytes;
	c->reass_bytes = 0;
	c->reass_count = 0;
}

int tcp_conn_alloc_bufs(struct tcp_conn *c)
{
	struct tcp_state *ts = c->ts;
	if (!c->sbuf)
		c->sbuf = buf_get(ts, ts->sbuf_cache, &ts->sbuf_cached, c->sbuf_size,
				  ts->conf.sndbuf);
	if (!c->rbuf)
		c->rbuf = buf_get(ts, ts->rbuf_cache, &ts->rbuf_cached, c->rbuf_size,
				  ts->conf.rcvbuf);
	return c->sbuf && c->rbuf ? 0 : -ENOMEM;
}

/*
 * Chains are doubly linked so that unhashing touches only the neighbours:
 * no hash, no bucket, no walk (a bucket is a cache miss in a table sized
 * for max_conns; bench/net's short transactions unhash 2 per transaction).
 */
static void conn_unhash(struct tcp_conn *c)
{
	if (c->hpprev == NULL)
		return;
	*c->hpprev = c->hnext;
	if (c->hnext)
		c->hnext->hpprev = c->hpprev;
	c->hnext = NULL;
	c->hpprev = NULL;
	c->ts->conn_count--;
}

void tcp_conn_hold(struct tcp_conn *c)
{
	c->busy++;
}

void tcp_conn_put(struct tcp_conn *c)
{
	if (--c->busy == 0 && c->dead)
		conn_free(c);
}

void tcp_conn_destroy(struct tcp_conn *c, int why, bool notify)
{
	struct tcp_state *ts = c->ts;
	if (c->dead)
		return;
	c->dead = true;
	bool was_open = c->state >= TCPS_ESTABLISHED;
	c->state = TCPS_CLOSED;
	conn_unhash(c);
	net_timer_cancel(&ts->wheel, &c->rtx_timer);
	net_timer_cancel(&ts->wheel, &c->delack_timer);
	net_timer_cancel(&ts->wheel, &c->ka_timer);
	tcp_ack_list_remove(c);
	tcp_reass_drop(c);
	if (c->listener) {
		tcp_listener_unref(ts, c->listener);
		c->listener = NULL;
	}
	if (was_open || c->active)
		ts->stats.conns_closed++;
	c->busy++;
	if (notify && c->ops && c->ops->on_closed)
		c->ops->on_closed(c, c->user, (enum tcp_close_reason)why);
	tcp_conn_put(c);
}

/* ---- listeners ---------------------------------------------------------- */

struct tcp_listener *tcp_listener_lookup(struct tcp_state *ts, uint32_t addr, uint16_t port)
{
	struct tcp_listener *any = NULL;
	for (struct tcp_listener *l = ts->lis_tab[port & 255]; l; l = l->next) {
		if (l->port != port)
			continue;
		if (l->addr == addr)
			return l;
		if (l->addr == 0)
			any = l;
	}
	return any;
}

void tcp_listener_unref(struct tcp_state *ts, struct tcp_listener *l)
{
	(void)ts;
	if (l->backlog)
		l->backlog--;
	if (l->dead && l->backlog == 0)
		free(l);
}

int tcp_listen(struct net_stack *st, uint32_t addr, uint16_t port, tcp_accept_fn on_accept,
	       void *listen_ctx)
{
	struct tcp_state *ts = st->tcp;
	if (!on_accept || port == 0)
		return -EINVAL;
	for (struct tcp_listener *l = ts->lis_tab[port & 255]; l; l = l->next)
		if (l->port == port && l->addr == addr)
			return -EADDRINUSE;
	struct tcp_listener *l = calloc(1, sizeof(*l));
	if (!l)
		return -ENOMEM;
	l->addr = addr;
	l->port = port;
	l->on_accept = on_accept;
	l->ctx = listen_ctx;
	l->next = ts->lis_tab[port & 255];
	ts->lis_tab[port & 255] = l;
	return 0;
}

int tcp_unlisten(struct net_stack *st, uint32_t addr, uint16_t port)
{
	struct tcp_state *ts = st->tcp;
	for (struct tcp_listener **pp = &ts->lis_tab[port & 255]; *pp; pp = &(*pp)->next) {
		struct tcp_listener *l = *pp;
		if (l->port == port && l->addr == addr) {
			*pp = l->next;
			/* SYN_RCVD children keep a pointer: free with the last one. */
			l->dead = true;
			if (l->backlog == 0)
				free(l);
			return 0;
		}
	}
	return -ENOENT;
}

/* ---- TIME_WAIT ----------------------------------------------------------- */

struct tcp_tw *tcp_tw_lookup(struct tcp_state *ts, uint32_t laddr, uint16_t lport, uint32_t raddr,
			     uint16_t rport)
{
	if (!ts->tw_count)
		return NULL;
	struct tcp_tw *tw =
		ts->tw_tab[tuple_bucket(ts->hash_key, ts->tw_mask, laddr, lport, raddr, rport)];
	for (; tw; tw = tw->hnext)
		if (tw->raddr == raddr && tw->rport == rport && tw->lport == lport &&
		    tw->laddr == laddr)
			return tw;
	return NULL;
}

static void tw_fifo_unlink(struct tcp_state *ts, struct tcp_tw *tw)
{
	if (tw->fprev)
		tw->fprev->fnext = tw->fnext;
	else
		ts->tw_head = tw->fnext;
	if (tw->fnext)
		tw->fnext->fprev = tw->fprev;
	else
		ts->tw_tail = tw->fprev;
	tw->fnext = tw->fprev = NULL;
}

static void tw_fifo_append(struct tcp_state *ts, struct tcp_tw *tw)
{
	tw->fnext = NULL;
	tw->fprev = ts->tw_tail;
	if (ts->tw_tail)
		ts->tw_tail->fnext = tw;
	else
		ts->tw_head = tw;
	ts->tw_tail = tw;
}

void tcp_tw_remove(struct tcp_state *ts, struct tcp_tw *tw)
{
	/* Doubly linked, as the connection table: the oldest entry is evicted on
	 * every close while the table is full, without hashing or walking. */
	*tw->hpprev = tw->hnext;
	if (tw->hnext)
		tw->hnext->hpprev = tw->hpprev;
	tw->hpprev = NULL;
	tw_fifo_unlink(ts, tw);
	tw->in_use = false;
	tw->hnext = ts->tw_free;
	ts->tw_free = tw;
	ts->tw_count--;
}

/* A retransmitted FIN restarts the 2*MSL wait (RFC 9293 section 3.10.7.4);
 * every entry waits equally long, so moving it to the tail keeps the FIFO
 * sorted by expiry. */
void tcp_tw_restart(struct tcp_state *ts, struct tcp_tw *tw)
{
	tw->expire_us = ts->now_us + ts->conf.time_wait_us;
	tw_fifo_unlink(ts, tw);
	tw_fifo_append(ts, tw);
}

void tcp_tw_expire(struct tcp_state *ts, uint64_t now_us)
{
	while (ts->tw_head && ts->tw_head->expire_us <= now_us)
		tcp_tw_remove(ts, ts->tw_head);
}

void tcp_enter_time_wait(struct tcp_conn *c)
{
	struct tcp_state *ts = c->ts;
	if (ts->conf.time_wait_max && ts->conf.time_wait_us) {
		if (!ts->tw_free) {
			/* Table full: recycle the oldest entry (closest to expiry). */
			ts->stats.time_wait_full++;
			tcp_tw_remove(ts, ts->tw_head);
		}
		struct tcp_tw *tw = ts->tw_free;
		ts->tw_free = tw->hnext;
		tw->in_use = true;
		tw->laddr = c->laddr;
		tw->lport = c->lport;
		tw->raddr = c->raddr;
		tw->rport = c->rport;
		tw->ts_ok = c->ts_ok;
		tw->rcv_wscale = c->rcv_wscale;
		tw->snd_nxt = c->snd_nxt;
		tw->rcv_nxt = c->rcv_nxt;
		tw->ts_recent = c->ts_recent;
		tw->ts_offset = c->ts_offset;
		tw->expire_us = ts->now_us + ts->conf.time_wait_us;
		uint32_t b = tuple_bucket(ts->hash_key, ts->tw_mask, tw->laddr, tw->lport,
					  tw->raddr, tw->rport);
		tw->hnext = ts->tw_tab[b];
		if (tw->hnext)
			tw->hnext->hpprev = &tw->hnext;
		ts->tw_tab[b] = tw;
		tw->hpprev = &ts->tw_tab[b];
		tw_fifo_append(ts, tw);
		ts->tw_count++;
		ts->stats.time_wait_conns++;
	}
	tcp_conn_destroy(c, TCP_CLOSE_NORMAL, true);
}

/* ---- API ----------------------------------------------------------------- */

/*
 * Ephemeral port for an active open (RFC 6056 style, a rotating cursor):
 * the first port whose return traffic steers to this core and whose 4-tuple
 * is neither a live connection nor in TIME_WAIT.  If every candidate is in
 * TIME_WAIT toward this peer, the oldest-found such entry is reused: our ISN
 * and TSval grow monotonically per 4-tuple, so the peer accepts the new SYN
 * (RFC 6191).
 */
static int pick_port(struct tcp_state *ts, uint32_t src, uint32_t dst, uint16_t dport,
		     uint16_t *out)
{
	const uint32_t range = TCP_EPHEMERAL_HI - TCP_EPHEMERAL_LO + 1;
	struct tcp_tw *reuse = NULL;
	uint16_t reuse_port = 0;
	uint16_t p = ts->next_port;
	for (uint32_t i = 0; i < range; i++, p++) {
		if (p < TCP_EPHEMERAL_LO || p > TCP_EPHEMERAL_HI)
			p = TCP_EPHEMERAL_LO;
		if (ts->ops.steers_here && !ts->ops.steers_here(ts->ctx, src, p, dst, dport))
			continue;
		if (tcp_conn_lookup(ts, src, p, dst, dport))
			continue;
		struct tcp_tw *tw = tcp_tw_lookup(ts, src, p, dst, dport);
		if (tw) {
			if (!reuse || tw->expire_us < reuse->expire_us) {
				reuse = tw;
				reuse_port = p;
			}
			continue;
		}
		*out = p;
		ts->next_port = (uint16_t)(p + 1);
		return 0;
	}
	if (reuse) {
		ts->stats.time_wait_reused++;
		tcp_tw_remove(ts, reuse);
		*out = reuse_port;
		ts->next_port = (uint16_t)(reuse_port + 1);
		return 0;
	}
	ts->stats.ephemeral_exhausted++;
	return -EADDRNOTAVAIL;
}

struct tcp_conn *tcp_connect(struct net_stack *st, uint32_t src, uint16_t sport, uint32_t dst,
			     uint16_t dport, const struct tcp_conn_ops *ops, void *user)
{
	struct tcp_state *ts = st->tcp;
	if (!dst || !dport) {
		errno = EINVAL;
		return NULL;
	}
	if (!src && ts->ops.route_src)
		src = ts->ops.route_src(ts->ctx, dst);
	if (!src) {
		errno = EADDRNOTAVAIL;
		return NULL;
	}
	if (ts->conn_count >= ts->conf.max_conns) {
		ts->stats.conn_limit_hits++;
		errno = ENOBUFS;
		return NULL;
	}
	uint32_t tw_snd_nxt = 0;
	bool had_tw = false;
	if (sport == 0) {
		int rc = pick_port(ts, src, dst, dport, &sport);
		if (rc < 0) {
			errno = -rc;
			return NULL;
		}
	} else {
		if (tcp_conn_lookup(ts, src, sport, dst, dport)) {
			errno = EADDRINUSE;
			return NULL;
		}
		struct tcp_tw *tw = tcp_tw_lookup(ts, src, sport, dst, dport);
		if (tw) {
			had_tw = true;
			tw_snd_nxt = tw->snd_nxt;
			ts->stats.time_wait_reused++;
			tcp_tw_remove(ts, tw);
		}
	}
	struct tcp_conn *c = tcp_conn_new(ts, src, sport, dst, dport);
	if (!c)
		return NULL;
	if (tcp_conn_alloc_bufs(c) < 0) {
		c->dead = true;
		conn_unhash(c);
		conn_free(c);
		errno = ENOMEM;
		return NULL;
	}
	c->active = true;
	c->ops = ops;
	c->user = user;
	c->iss = tcp_isn(ts, src, sport, dst, dport);
	if (had_tw && SEQ_LEQ(c->iss, tw_snd_nxt))
		c->iss = tw_snd_nxt + 250000; /* above anything of the old incarnation */
	c->ts_offset = tcp_ts_offset(ts, src, sport, dst, dport);
	c->snd_una = c->snd_nxt = c->snd_max = c->iss;
	c->snd_buf_seq = c->iss + 1;
	c->recover = c->iss;
	c->state = TCPS_SYN_SENT;
	c->rtt_start = ts->now_us;
	ts->stats.active_opens++;
	tcp_send_syn(c);
	tcp_rtx_arm(c);
	return c;
}

void tcp_conn_set_ops(struct tcp_conn *c, const struct tcp_conn_ops *ops, void *user)
{
	c->ops = ops;
	c->user = user;
}

void *tcp_conn_user(const struct tcp_conn *c)
{
	return c->user;
}

void tcp_conn_endpoints(const struct tcp_conn *c, uint32_t *laddr, uint16_t *lport, uint32_t *raddr,
			uint16_t *rport)
{
	if (laddr)
		*laddr = c->laddr;
	if (lport)
		*lport = c->lport;
	if (raddr)
		*raddr = c->raddr;
	if (rport)
		*rport = c->rport;
}

ssize_t tcp_send(struct tcp_conn *c, const void *data, size_t len)
{
	if (c->dead || c->fin_queued || c->app_closed)
		return -EPIPE;
	if (c->state != TCPS_ESTABLISHED && c->state != TCPS_CLOSE_WAIT)
		return c->state < TCPS_ESTABLISHED ? -ENOTCONN : -EPIPE;
	uint32_t space = c->sbuf_size - c->sbuf_len;
	size_t n = len < space ? len : space;
	/* Short, or the buffer is now full (an app that sends exactly
	 * tcp_send_space() bytes never sees a short count): wake it later. */
	if (n < len || n == space)
		c->want_writable = true;
	if (n) {
		uint32_t tail = (c->sbuf_head + c->sbuf_len) % c->sbuf_size;
		uint32_t first = c->sbuf_size - tail;
		if (first > n)
			first = (uint32_t)n;
		memcpy(c->sbuf + tail, data, first);
		memcpy(c->sbuf, (const uint8_t *)data + first, n - first);
		c->sbuf_len += (uint32_t)n;
		/*
		 * An answer made inside on_data leaves when on_data returns: what
		 * the app sends (and a close right after, its FIN) then shares
		 * segments, as a reply and its FIN, or several replies, should.
		 */
		if (c->delivering)
			c->output_deferred = true;
		else
			tcp_output(c);
	}
	return (ssize_t)n;
}

size_t tcp_send_space(const struct tcp_conn *c)
{
	if (c->dead || !c->sbuf)
		return 0;
	return c->sbuf_size - c->sbuf_len;
}

size_t tcp_send_pending(const struct tcp_conn *c)
{
	return c->sbuf_len;
}

void tcp_recv_resume(struct tcp_conn *c)
{
	if (c->dead)
		return;
	tcp_conn_hold(c);
	tcp_deliver(c);
	tcp_conn_put(c);
}

void tcp_shutdown(struct tcp_conn *c)
{
	if (c->dead || c->fin_queued)
		return;
	switch (c->state) {
	case TCPS_SYN_SENT:
		/* Nothing was sent: there is no connection to shut down. */
		tcp_conn_destroy(c, TCP_CLOSE_NORMAL, true);
		return;
	case TCPS_SYN_RCVD:
	case TCPS_ESTABLISHED:
		c->fin_queued = true;
		c->fin_seq = c->snd_buf_seq + c->sbuf_len;
		if (c->state == TCPS_ESTABLISHED)
			c->state = TCPS_FIN_WAIT_1;
		break;
	case TCPS_CLOSE_WAIT:
		c->fin_queued = true;
		c->fin_seq = c->snd_buf_seq + c->sbuf_len;
		c->state = TCPS_LAST_ACK;
		break;
	default:
		return;
	}
	/*
	 * Inside on_data the FIN waits, like a reply, for on_data to return:
	 * a FIN that came in the same segment as the data is then processed
	 * first and ours acknowledges it (tcp_deliver, sync_input).
	 */
	if (c->delivering)
		c->output_deferred = true;
	else
		tcp_output(c);
}

void tcp_close(struct tcp_conn *c)
{
	if (c->dead)
		return;
	c->app_closed = true;
	/* Unread bytes are dropped: nobody will read them (RFC 9293 3.10.4). */
	if (c->rbuf) {
		c->rbuf_head = (c->rbuf_head + c->rbuf_len) % c->rbuf_size;
		c->rbuf_len = 0;
	}
	if (c->finish_pending) {
		tcp_finish(c, c->finish_pending == 1);
		return;
	}
	if (c->state == TCPS_SYN_SENT) {
		tcp_conn_destroy(c, TCP_CLOSE_NORMAL, true);
		return;
	}
	tcp_shutdown(c);
}

void tcp_abort(struct tcp_conn *c)
{
	if (c->dead)
		return;
	if (c->state != TCPS_SYN_SENT)
		tcp_send_rst(c);
	tcp_conn_destroy(c, TCP_CLOSE_ABORTED, true);
}

uint64_t tcp_next_deadline(const struct tcp_state *ts)
{
	if (ts->ack_list)
		return 0;
	uint64_t next = net_timer_next(&ts->wheel);
	if (ts->tw_head && ts->tw_head->expire_us < next)
		next = ts->tw_head->expire_us;
	return next;
}

uint64_t tcp_poll(struct tcp_state *ts, uint64_t now_us)
{
	if (now_us > ts->now_us)
		ts->now_us = now_us;
	tcp_tw_expire(ts, ts->now_us);
	net_timer_expire(&ts->wheel, ts->now_us, tcp_timer_fire, ts);
	tcp_flush_acks(ts);
	uint64_t next = tcp_next_deadline(ts);
	/*
	 * While connections exist, tcp_input() and the API queue ACKs and arm
	 * timers that a caller which only polls at the returned deadline would
	 * miss; promising no more than one tick ahead bounds that lateness to
	 * a tick.  Calling tcp_poll() after every RX burst is still best (ACKs
	 * then leave at once, coalesced).
	 */
	if (ts->conn_count && next > ts->now_us + NET_TIMER_TICK_US)
		next = ts->now_us + NET_TIMER_TICK_US;
	return next;
}
