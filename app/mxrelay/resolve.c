/*
 * resolve.c - the relay's DNS: the cache all workers share and one stub
 * resolver per worker whose queries go out over that worker's lib/net.
 *
 * UDP: every worker binds the same range of RESOLVE_UDP_PORTS source ports
 * with one udp_bind_range() (bindings are per core).  The resolver draws
 * each query's port at random from the range (RFC 5452 9.2) but only among
 * the ports whose reply from that server the port's flow steering (RSS or
 * the software dispatcher) hands back to this worker (udp_port_steers_here),
 * so with n workers each has about RESOLVE_UDP_PORTS / n ports per server.
 *
 * TCP (RFC 7766, when an answer came truncated): one lib/net connection per
 * query to the server's port, the query and the answer framed with the
 * 2-byte length of RFC 1035 4.2.2; the answer may span any number of
 * segments and is handed whole to dns_resolver_input(tcp = true), then the
 * connection is closed.  At most RESOLVE_TCP_MAX connections per worker,
 * each aborted after the resolver's per-try timeout; every way one ends
 * has a counter (resolve_stats_foreach).
 *
 * A cold path: the first packets to a server whose link-layer address is not
 * known yet wait in lib/net's ARP queue, which holds NET_ARP_PENDING (128)
 * per address and drops the oldest beyond; each dropped query then costs
 * the resolver's whole per-try timeout (1 s), and a server that has not
 * answered yet may not be up at all.  That is what a restart with a recovered spool, or
 * a release of many held destinations, does: a hundred lookups at once.  So
 * until a server has answered (and again after RESOLVE_WARM_US of silence)
 * at most RESOLVE_COLD_BURST UDP queries go to it; the others wait here, at
 * most RESOLVE_HELD_MAX of them for at most RESOLVE_COLD_HOLD_US, and leave
 * as soon as the server answers (dns_cold_held, dns_cold_held_full).
 */
#include "resolve.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define RESOLVE_UDP_LO 20000u
#define RESOLVE_UDP_PORTS 8192u	       /* per worker before steering: a few thousand after it */
#define RESOLVE_TCP_MAX 16	       /* DNS-over-TCP connections per worker */
#define RESOLVE_TCP_QUERY_MAX 514      /* 2-byte length + the resolver's 512-byte query */
#define RESOLVE_TCP_SLACK_US 500000ull /* past the resolver's try timeout, abort */
#define DNS_DRAIN_US 3000000ull	       /* at shutdown, wait this long for lookups in flight */
#define RESOLVE_COLD_BURST 8	       /* UDP queries to a server before its first answer */
#define RESOLVE_COLD_HOLD_US 20000ull  /* a held query leaves after this even unanswered */
#define RESOLVE_WARM_US 10000000ull    /* a server silent this long is cold again */
#define RESOLVE_HELD_MAX 256	       /* queries held per worker; more go out at once */
#define RESOLVE_HELD_LEN 512	       /* a longer query is never held */
#define RESOLVE_PATHS_MAX 8	       /* servers whose warmth is tracked; others never wait */

/* A server's path: warm once it answered (its ARP entry exists). */
struct resolve_path {
	uint32_t server; /* 0: free */
	uint32_t cold_sent;
	uint64_t answer_us; /* last answer, 0 = never */
};

/* A UDP query that waits for its server's path to warm up. */
struct resolve_held {
	uint32_t server;
	uint16_t sport, len;
	uint64_t held_us;
	uint8_t pkt[RESOLVE_HELD_LEN];
};

/* One DNS-over-TCP exchange; tc == NULL: the slot is free. */
struct resolve_tcp {
	struct resolve *r;
	struct tcp_conn *tc;
	uint32_t server;
	uint16_t qport; /* the resolver's source port of this try: how it matches the answer */
	bool answered;
	uint64_t deadline_us;
	uint8_t query[RESOLVE_TCP_QUERY_MAX];
	size_t qlen, qsent;
	uint8_t lenbuf[2];
	size_t have;  /* answer octets received, length prefix included */
	size_t need;  /* message length from the prefix (0: not known yet) */
	uint8_t *ans; /* need octets, allocated once the prefix is in */
};

struct resolve_counters {
	uint64_t udp_send_failures, cold_held, cold_held_full;
	uint64_t tcp_queries, tcp_answers, tcp_limit, tcp_connect_failures, tcp_timeouts, tcp_short,
		tcp_bad_length, tcp_nomem;
};

struct resolve {
	const struct relay_config *conf;
	struct net_stack *st;
	unsigned worker;
	struct dns_resolver *dns;
	unsigned tid;
	bool registered;
	bool udp_bound;
	uint64_t now_us;
	unsigned tcp_open;
	/*
	 * No open slot's deadline is before this: the slots (each with its query
	 * buffer, a cache line apart) are walked only then, not on every turn.
	 */
	uint64_t tcp_next_us;
	struct resolve_tcp tcp[RESOLVE_TCP_MAX];
	struct resolve_path path[RESOLVE_PATHS_MAX];
	unsigned held_count; /* held[0 .. held_count), oldest first */
	struct resolve_held held[RESOLVE_HELD_MAX];
	struct resolve_counters ctr;
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

/* ---- DNS over TCP (RFC 7766, RFC 1035 4.2.2) ------------------------------------------- */

static void tcp_slot_clear(struct resolve_tcp *x)
{
	free(x->ans);
	x->ans = NULL;
	x->tc = NULL;
	x->have = x->need = x->qlen = x->qsent = 0;
	x->answered = false;
}

static void t_push(struct resolve_tcp *x)
{
	while (x->tc != NULL && x->qsent < x->qlen) {
		ssize_t n = tcp_send(x->tc, x->query + x->qsent, x->qlen - x->qsent);
		if (n <= 0)
			return; /* full: on_writable follows; error: on_closed follows */
		x->qsent += (size_t)n;
	}
}

static void t_connected(struct tcp_conn *tc, void *user)
{
	(void)tc;
	t_push(user);
}

static void t_writable(struct tcp_conn *tc, void *user)
{
	(void)tc;
	t_push(user);
}

static size_t t_data(struct tcp_conn *tc, void *user, const uint8_t *data, size_t len)
{
	struct resolve_tcp *x = user;
	struct resolve *r = x->r;
	size_t used = 0;

	if (x->answered)
		return len; /* one query per connection: anything after the answer is dropped */
	while (used < len && x->have < 2) {
		x->lenbuf[x->have++] = data[used++];
		if (x->have == 2) {
			x->need = (size_t)x->lenbuf[0] << 8 | x->lenbuf[1];
			if (x->need < 12) { /* not even a DNS header */
				r->ctr.tcp_bad_length++;
				tcp_abort(tc); /* on_closed clears the slot */
				return len;
			}
			x->ans = malloc(x->need);
			if (x->ans == NULL) {
				r->ctr.tcp_nomem++;
				tcp_abort(tc);
				return len;
			}
		}
	}
	size_t take = len - used;
	if (take > x->need - (x->have - 2))
		take = x->need - (x->have - 2);
	if (take > 0) {
		memcpy(x->ans + (x->have - 2), data + used, take);
		x->have += take;
		used += take;
	}
	if (x->have < 2 || x->have - 2 < x->need)
		return used;
	x->answered = true;
	r->ctr.tcp_answers++;
	/* The resolver may send again from here (even over TCP): this slot stays busy. */
	dns_resolver_input(r->dns, x->server, r->conf->dns.resolver_port, x->qport, x->ans, x->need,
			   true);
	if (x->tc != NULL)
		tcp_close(x->tc);
	return len;
}

static void t_peer_closed(struct tcp_conn *tc, void *user)
{
	struct resolve_tcp *x = user;
	if (!x->answered)
		x->r->ctr.tcp_short++; /* the resolver's try times out and moves on */
	tcp_close(tc);
}

static void t_closed(struct tcp_conn *tc, void *user, enum tcp_close_reason why)
{
	struct resolve_tcp *x = user;
	struct resolve *r = x->r;
	(void)tc;
	if (!x->answered && why != TCP_CLOSE_ABORTED && why != TCP_CLOSE_NORMAL) {
		if (why == TCP_CLOSE_TIMEOUT)
			r->ctr.tcp_timeouts++;
		else
			r->ctr.tcp_connect_failures++; /* refused or reset */
	}
	tcp_slot_clear(x);
	r->tcp_open--;
}

static const struct tcp_conn_ops resolve_tcp_ops = {
	.on_connected = t_connected,
	.on_data = t_data,
	.on_writable = t_writable,
	.on_peer_closed = t_peer_closed,
	.on_closed = t_closed,
};

static int tcp_query(struct resolve *r, uint32_t server, uint16_t qport, const uint8_t *pkt,
		     size_t len)
{
	struct resolve_tcp *x = NULL;

	if (len + 2 > RESOLVE_TCP_QUERY_MAX)
		return -EMSGSIZE;
	for (unsigned i = 0; i < RESOLVE_TCP_MAX; i++) {
		if (r->tcp[i].tc != NULL && r->tcp[i].qport == qport && !r->tcp[i].answered)
			tcp_abort(r->tcp[i].tc); /* an older try on this port: superseded */
		if (x == NULL && r->tcp[i].tc == NULL)
			x = &r->tcp[i];
	}
	if (x == NULL) {
		r->ctr.tcp_limit++;
		return -EBUSY; /* the resolver counts a failed try and moves on */
	}
	tcp_slot_clear(x);
	x->r = r;
	x->server = server;
	x->qport = qport;
	x->query[0] = (uint8_t)(len >> 8);
	x->query[1] = (uint8_t)len;
	memcpy(x->query + 2, pkt, len);
	x->qlen = len + 2;
	x->deadline_us = r->now_us + r->conf->dns.timeout_us + RESOLVE_TCP_SLACK_US;
	struct tcp_conn *tc =
		tcp_connect(r->st, 0, 0, server, r->conf->dns.resolver_port, &resolve_tcp_ops, x);
	if (tc == NULL) {
		int err = errno ? errno : EIO;
		r->ctr.tcp_connect_failures++;
		return -err;
	}
	x->tc = tc;
	r->tcp_open++;
	if (x->deadline_us < r->tcp_next_us)
		r->tcp_next_us = x->deadline_us;
	r->ctr.tcp_queries++;
	net_stack_kick_timers(r->st); /* sent on this poll turn, even from outside a callback */
	return 0;
}

static void tcp_timers(struct resolve *r, uint64_t now_us)
{
	if (now_us < r->tcp_next_us)
		return;
	uint64_t next = UINT64_MAX;
	for (unsigned i = 0; i < RESOLVE_TCP_MAX; i++) {
		struct resolve_tcp *x = &r->tcp[i];
		if (x->tc == NULL)
			continue;
		if (now_us >= x->deadline_us) {
			r->ctr.tcp_timeouts++;
			tcp_abort(x->tc); /* -> t_closed: the slot is free */
		} else if (x->deadline_us < next) {
			next = x->deadline_us;
		}
	}
	r->tcp_next_us = next;
}

static void tcp_abort_all(struct resolve *r)
{
	for (unsigned i = 0; i < RESOLVE_TCP_MAX; i++)
		if (r->tcp[i].tc != NULL)
			tcp_abort(r->tcp[i].tc);
}

/* ---- the resolver's transport ------------------------------------------------------------ */

static int udp_query(struct resolve *r, uint32_t server_ip, uint16_t src_port, const uint8_t *pkt,
		     size_t len)
{
	int rc = udp_send(r->st, 0, src_port, server_ip, r->conf->dns.resolver_port, pkt, len);
	if (rc < 0)
		r->ctr.udp_send_failures++;
	return rc;
}

/*
 * The tracked path to server, or NULL when it has none.  create: make one
 * (a query's server); NULL when the table is full (its queries never wait).
 * Answers only find: a datagram from anywhere cannot fill the table.
 */
static struct resolve_path *path_of(struct resolve *r, uint32_t server, bool create)
{
	struct resolve_path *free_slot = NULL;

	for (unsigned i = 0; i < RESOLVE_PATHS_MAX; i++) {
		if (r->path[i].server == server)
			return &r->path[i];
		if (r->path[i].server == 0 && free_slot == NULL)
			free_slot = &r->path[i];
	}
	if (!create || free_slot == NULL)
		return NULL;
	*free_slot = (struct resolve_path){.server = server};
	return free_slot;
}

static bool path_warm(const struct resolve *r, const struct resolve_path *p)
{
	return p->answer_us != 0 && r->now_us < p->answer_us + RESOLVE_WARM_US;
}

/*
 * Send the held queries whose server answered since, or that waited long
 * enough; keep the others in order.
 */
static void held_flush(struct resolve *r)
{
	unsigned keep = 0;

	for (unsigned i = 0; i < r->held_count; i++) {
		struct resolve_held *h = &r->held[i];
		const struct resolve_path *p = path_of(r, h->server, false);

		if (p == NULL || path_warm(r, p) ||
		    r->now_us >= h->held_us + RESOLVE_COLD_HOLD_US) {
			(void)udp_query(r, h->server, h->sport, h->pkt, h->len);
			continue;
		}
		if (keep != i)
			r->held[keep] = *h;
		keep++;
	}
	r->held_count = keep;
}

static int dns_out(void *ctx, uint32_t server_ip, uint16_t src_port, const uint8_t *pkt, size_t len,
		   bool tcp)
{
	struct resolve *r = ctx;
	if (tcp)
		return tcp_query(r, server_ip, src_port, pkt, len);
	struct resolve_path *p = path_of(r, server_ip, true);
	if (p == NULL || path_warm(r, p) || len > RESOLVE_HELD_LEN)
		return udp_query(r, server_ip, src_port, pkt, len);
	if (p->cold_sent < RESOLVE_COLD_BURST) {
		p->cold_sent++;
		return udp_query(r, server_ip, src_port, pkt, len);
	}
	if (r->held_count == RESOLVE_HELD_MAX) {
		r->ctr.cold_held_full++;
		return udp_query(r, server_ip, src_port, pkt, len);
	}
	struct resolve_held *h = &r->held[r->held_count++];
	h->server = server_ip;
	h->sport = src_port;
	h->len = (uint16_t)len;
	h->held_us = r->now_us;
	memcpy(h->pkt, pkt, len);
	r->ctr.cold_held++;
	return 0;
}

static bool dns_port_ok(void *ctx, uint32_t server_ip, uint16_t src_port)
{
	struct resolve *r = ctx;
	return udp_port_steers_here(r->st, src_port, server_ip, r->conf->dns.resolver_port);
}

static const struct dns_resolver_ops resolve_ops = {.send = dns_out, .port_ok = dns_port_ok};

static void udp_in(void *ctx, uint32_t src, uint16_t sport, uint32_t dst, uint16_t dport,
		   const uint8_t *data, size_t len)
{
	struct resolve *r = ctx;
	(void)dst;
	if (sport == r->conf->dns.resolver_port) {
		/* An answer proves the path (ARP): what waited for it leaves at the next poll. */
		struct resolve_path *p = path_of(r, src, false);
		if (p != NULL) {
			p->answer_us = r->now_us ? r->now_us : 1;
			p->cold_sent = 0;
		}
	}
	dns_resolver_input(r->dns, src, sport, dport, data, len, false);
}

int resolve_create(const struct relay_config *conf, struct net_stack *st, unsigned worker,
		   struct resolve **out)
{
	const uint16_t lo = RESOLVE_UDP_LO, hi = RESOLVE_UDP_LO + RESOLVE_UDP_PORTS - 1;
	*out = NULL;
	if (shared == NULL)
		return 0;
	struct resolve *r = calloc(1, sizeof(*r));
	if (r == NULL)
		return -ENOMEM;
	r->conf = conf;
	r->st = st;
	r->worker = worker;
	r->now_us = mx_now_us();
	r->tcp_next_us = UINT64_MAX;
	int rc = dns_cache_register_thread(shared, &r->tid);
	if (rc != 0)
		goto fail;
	r->registered = true;
	rc = udp_bind_range(st, lo, hi, udp_in, r);
	if (rc != 0)
		goto fail;
	r->udp_bound = true;
	r->dns = dns_resolver_create(shared, r->tid, &resolve_ops, r, lo, hi);
	if (r->dns == NULL) {
		rc = -ENOMEM;
		goto fail;
	}
	dns_resolver_poll(r->dns, r->now_us); /* its clock: a lookup before the first poll */
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
			r->now_us = mx_now_us();
			net_stack_poll(r->st, r->now_us);
			tcp_timers(r, r->now_us);
			dns_resolver_poll(r->dns, r->now_us);
			if (r->held_count)
				held_flush(r);
		}
		tcp_abort_all(r); /* their callbacks point at r */
		if (dns_resolver_inflight(r->dns) > 0)
			MX_WARN("worker %u: DNS lookups still in flight at shutdown", r->worker);
		else
			dns_resolver_destroy(r->dns);
	}
	tcp_abort_all(r);
	if (r->udp_bound)
		udp_unbind_range(r->st, RESOLVE_UDP_LO,
				 (uint16_t)(RESOLVE_UDP_LO + RESOLVE_UDP_PORTS - 1));
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
	r->now_us = now_us;
	tcp_timers(r, now_us);
	dns_resolver_poll(r->dns, now_us);
	if (r->held_count)
		held_flush(r);
}

void resolve_quiescent(struct resolve *r)
{
	dns_cache_quiescent(shared, r->tid);
}

void resolve_stats_foreach(const struct resolve *r,
			   void (*fn)(void *arg, const char *name, uint64_t value), void *arg)
{
	struct dns_counters c;
	uint64_t malformed = 0;

	/* lib/dns keeps these per thread: each worker reports its own. */
	dns_resolver_counters(r->dns, &c);
	for (unsigned i = 0; i < DNS_MAL__COUNT; i++)
		malformed += c.malformed[i];
	fn(arg, "dns_hits", c.hits);
	fn(arg, "dns_misses", c.misses);
	fn(arg, "dns_negative_hits", c.negative_hits);
	fn(arg, "dns_coalesced", c.coalesced);
	fn(arg, "dns_upstream_queries", c.upstream_queries);
	fn(arg, "dns_timeouts", c.timeouts);
	fn(arg, "dns_servfail", c.servfail);
	fn(arg, "dns_stale_served", c.stale_served);
	fn(arg, "dns_prefetches", c.prefetches);
	fn(arg, "dns_evictions", c.evictions);
	fn(arg, "dns_truncated_retries", c.tcp_retries);
	fn(arg, "dns_mismatched", c.mismatched);
	fn(arg, "dns_mismatch_id", c.mismatch_id);
	fn(arg, "dns_mismatch_addr", c.mismatch_addr);
	fn(arg, "dns_mismatch_port", c.mismatch_port);
	fn(arg, "dns_mismatch_question", c.mismatch_question);
	fn(arg, "dns_malformed", malformed);
	fn(arg, "dns_inflight_full", c.inflight_full);
	fn(arg, "dns_pending_full", c.pending_full);
	fn(arg, "dns_notify_drops", c.notify_drops);
	fn(arg, "dns_reclaim_full", c.reclaim_full);
	fn(arg, "dns_port_busy", c.port_busy);
	/* The transport's own, per worker. */
	fn(arg, "dns_udp_send_failures", r->ctr.udp_send_failures);
	fn(arg, "dns_cold_held", r->ctr.cold_held);
	fn(arg, "dns_cold_held_full", r->ctr.cold_held_full);
	fn(arg, "dns_cold_held_now", r->held_count);
	fn(arg, "dns_tcp_queries", r->ctr.tcp_queries);
	fn(arg, "dns_tcp_answers", r->ctr.tcp_answers);
	fn(arg, "dns_tcp_limit", r->ctr.tcp_limit);
	fn(arg, "dns_tcp_connect_failures", r->ctr.tcp_connect_failures);
	fn(arg, "dns_tcp_timeouts", r->ctr.tcp_timeouts);
	fn(arg, "dns_tcp_short", r->ctr.tcp_short);
	fn(arg, "dns_tcp_bad_length", r->ctr.tcp_bad_length);
	fn(arg, "dns_tcp_nomem", r->ctr.tcp_nomem);
	fn(arg, "dns_tcp_open", r->tcp_open);
	/* Machine-wide: reported once, by worker 0, so sums over workers stay right. */
	if (r->worker == 0) {
		struct dns_counters all;
		dns_cache_counters(shared, &all);
		fn(arg, "dns_cache_entries", all.entries);
		fn(arg, "dns_cache_entries_allocated", all.entries_allocated);
		fn(arg, "dns_cache_entries_freed", all.entries_freed);
	}
}

void resolve_reconfigure(struct resolve *r, const struct relay_config *conf)
{
	/* [dns] keys need a restart (the reload keeps their values): only the pointer moves. */
	if (r != NULL)
		r->conf = conf;
}
