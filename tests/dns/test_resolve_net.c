/*
 * test_resolve_net.c - the relay's DNS transport (app/mxrelay/resolve.c)
 * end to end over lib/net: two stacks joined by a pair of net_ring ports,
 * the relay's on one (resolve_create), a scripted DNS server written on
 * lib/net UDP and TCP on the other.  Everything runs on this thread with
 * a simulated clock, so timeouts are exact and fast.
 *
 * Covered: UDP queries from the bound source-port range, TC -> TCP with
 * the RFC 1035 4.2.2 length prefix, the answer arriving in many small
 * segments, a bad length prefix, a server that accepts and never answers
 * (TCP timeout), more truncated lookups than TCP connections (the limit),
 * and the dns_* counters of resolve_stats_foreach.
 */
#include "mx_test.h"
#include "resolve.h"

#include <string.h>

#include <rte_eal.h>
#include <rte_eth_ring.h>
#include <rte_ethdev.h>
#include <rte_ring.h>

#define RELAY_IP 0x0a4d0002u  /* 10.77.0.2 */
#define SERVER_IP 0x0a4d0001u /* 10.77.0.1 */
#define HOST_IP 0x0a4d0032u   /* 10.77.0.50: the MX host of the zone */

static struct rte_mempool *pool;
static struct net_port *port_relay, *port_server;
static struct net_stack *st_relay, *st_server;
static struct relay_config conf;
static struct resolve *res;
static uint64_t now;

/* ---- the DNS server on the other stack ------------------------------------ */

enum srv_tcp_mode { SRV_TCP_ANSWER, SRV_TCP_BAD_LENGTH, SRV_TCP_HANG };
static enum srv_tcp_mode tcp_mode;
static unsigned srv_udp_queries, srv_tcp_queries, srv_tcp_accepts;
static struct dns_msg srv_msg;

#define SRV_CONNS 32
#define SRV_CHUNK 5 /* octets per tcp_send: the answer crosses many segments */

struct srv_conn {
	struct tcp_conn *c;
	uint8_t in[600];
	size_t in_len;
	uint8_t out[1200];
	size_t out_len, out_sent;
};
static struct srv_conn srv_conns[SRV_CONNS];

/*
 * The zone: MX 10 h.test for *.test names (A of h.test = HOST_IP); names
 * beginning with "big" are truncated over UDP; "nx.test" does not exist.
 */
static int srv_answer(const uint8_t *q, size_t qlen, bool tcp, uint8_t *out, size_t cap)
{
	struct dns_builder b;
	if (dns_msg_parse(&srv_msg, q, qlen, NULL) != 0)
		return -1;
	const char *name = srv_msg.qname;
	bool big = strncmp(name, "big", 3) == 0;
	bool nx = strcmp(name, "nx.test") == 0;
	uint16_t flags = DNS_F_QR | DNS_F_AA | (nx ? DNS_RCODE_NXDOMAIN : 0);
	if (big && !tcp)
		flags |= DNS_F_TC;
	dns_builder_init(&b, out, cap, srv_msg.id, flags, name, srv_msg.qtype, srv_msg.qclass);
	if (!(big && !tcp) && !nx) {
		struct dns_rr rr = {.name = name, .rclass = DNS_C_IN, .ttl = 300};
		if (srv_msg.qtype == DNS_T_MX && strcmp(name, "h.test") != 0) {
			rr.type = DNS_T_MX;
			rr.mx.pref = 10;
			rr.mx.host = "h.test";
			dns_builder_add(&b, DNS_SEC_ANSWER, &rr);
		} else if (srv_msg.qtype == DNS_T_A && strcmp(name, "h.test") == 0) {
			rr.type = DNS_T_A;
			rr.a = HOST_IP;
			dns_builder_add(&b, DNS_SEC_ANSWER, &rr);
		}
	}
	return dns_builder_finish(&b);
}

static void srv_udp(void *ctx, uint32_t src, uint16_t sport, uint32_t dst, uint16_t dport,
		    const uint8_t *data, size_t len)
{
	uint8_t out[512];
	(void)ctx, (void)dst;
	srv_udp_queries++;
	CU_ASSERT(sport >= 20000 && sport < 20000 + 8192); /* the resolver's bound range */
	int n = srv_answer(data, len, false, out, sizeof(out));
	if (n > 0)
		udp_send(st_server, 0, dport, src, sport, out, (size_t)n);
}

static size_t srv_data(struct tcp_conn *c, void *user, const uint8_t *data, size_t len)
{
	struct srv_conn *s = user;
	(void)c;
	size_t take = len < sizeof(s->in) - s->in_len ? len : sizeof(s->in) - s->in_len;
	memcpy(s->in + s->in_len, data, take);
	s->in_len += take;
	if (s->in_len < 2 || s->out_len > 0)
		return len;
	size_t qlen = (size_t)s->in[0] << 8 | s->in[1];
	if (s->in_len < 2 + qlen)
		return len;
	srv_tcp_queries++;
	if (tcp_mode == SRV_TCP_HANG)
		return len;
	if (tcp_mode == SRV_TCP_BAD_LENGTH) {
		static const uint8_t bad[] = {0, 5, 1, 2, 3, 4, 5};
		memcpy(s->out, bad, sizeof(bad));
		s->out_len = sizeof(bad);
		return len;
	}
	int n = srv_answer(s->in + 2, qlen, true, s->out + 2, sizeof(s->out) - 2);
	CU_ASSERT_FATAL(n > 0);
	s->out[0] = (uint8_t)(n >> 8);
	s->out[1] = (uint8_t)n;
	s->out_len = (size_t)n + 2;
	return len;
}

static void srv_closed(struct tcp_conn *c, void *user, enum tcp_close_reason why)
{
	struct srv_conn *s = user;
	(void)c, (void)why;
	memset(s, 0, sizeof(*s));
}

static void srv_peer_closed(struct tcp_conn *c, void *user)
{
	(void)user;
	tcp_close(c);
}

static const struct tcp_conn_ops srv_ops = {
	.on_data = srv_data, .on_peer_closed = srv_peer_closed, .on_closed = srv_closed};

static int srv_accept(struct tcp_conn *c, void *ctx)
{
	(void)ctx;
	for (unsigned i = 0; i < SRV_CONNS; i++)
		if (srv_conns[i].c == NULL) {
			srv_conns[i].c = c;
			srv_tcp_accepts++;
			tcp_conn_set_ops(c, &srv_ops, &srv_conns[i]);
			return 0;
		}
	return -1;
}

/* Send what the server has to say, SRV_CHUNK octets per turn. */
static void srv_pump(void)
{
	for (unsigned i = 0; i < SRV_CONNS; i++) {
		struct srv_conn *s = &srv_conns[i];
		if (s->c == NULL || s->out_sent >= s->out_len)
			continue;
		size_t n =
			s->out_len - s->out_sent < SRV_CHUNK ? s->out_len - s->out_sent : SRV_CHUNK;
		ssize_t k = tcp_send(s->c, s->out + s->out_sent, n);
		if (k > 0)
			s->out_sent += (size_t)k;
		net_stack_kick_timers(st_server);
	}
}

/* ---- driving both stacks ---------------------------------------------------- */

static void turn(uint64_t step_us)
{
	now += step_us;
	net_stack_poll(st_server, now);
	srv_pump();
	net_stack_poll(st_relay, now);
	resolve_poll(res, now);
	resolve_quiescent(res);
}

struct route_result {
	int calls;
	int result;
	char status[12];
	unsigned hosts;
	uint32_t addr;
};

static void route_cb(void *arg, const struct dns_mail_route *rt)
{
	struct route_result *r = arg;
	r->calls++;
	r->result = rt->result;
	snprintf(r->status, sizeof(r->status), "%s", rt->status);
	r->hosts = rt->host_count;
	r->addr = rt->host_count > 0 && rt->hosts[0].addr_count > 0 ? rt->hosts[0].addrs[0] : 0;
}

/* Run until every result has its callback or max_us of simulated time pass. */
static void run_until(struct route_result *r, unsigned n, uint64_t max_us)
{
	uint64_t end = now + max_us;
	while (now < end) {
		unsigned done = 0;
		for (unsigned i = 0; i < n; i++)
			done += r[i].calls > 0;
		if (done == n)
			return;
		turn(1000);
	}
}

struct stat_find {
	const char *name;
	uint64_t value;
	bool found;
	unsigned count;
};

static void stat_cb(void *arg, const char *name, uint64_t value)
{
	struct stat_find *f = arg;
	f->count++;
	if (strcmp(name, f->name) == 0) {
		f->value = value;
		f->found = true;
	}
}

static uint64_t stat(const char *name)
{
	struct stat_find f = {.name = name};
	resolve_stats_foreach(res, stat_cb, &f);
	CU_ASSERT(f.found);
	return f.value;
}

/* ---- tests ------------------------------------------------------------------ */

static void test_udp_route(void)
{
	struct route_result r = {0};
	uint64_t q0 = stat("dns_upstream_queries");
	CU_ASSERT_EQUAL(resolve_mail(res, "mx.test", route_cb, &r), 0);
	run_until(&r, 1, 2000000);
	CU_ASSERT_EQUAL(r.calls, 1);
	CU_ASSERT_EQUAL(r.result, DNS_MAIL_OK);
	CU_ASSERT_EQUAL(r.hosts, 1);
	CU_ASSERT_EQUAL(r.addr, HOST_IP);
	CU_ASSERT_EQUAL(stat("dns_upstream_queries") - q0, 2); /* MX, then A of h.test */
	CU_ASSERT_EQUAL(srv_udp_queries, 2);
	CU_ASSERT_EQUAL(stat("dns_tcp_queries"), 0);
	/* Again: from the cache, no query. */
	r = (struct route_result){0};
	CU_ASSERT_EQUAL(resolve_mail(res, "mx.test", route_cb, &r), 0);
	run_until(&r, 1, 100000);
	CU_ASSERT_EQUAL(r.result, DNS_MAIL_OK);
	CU_ASSERT_EQUAL(srv_udp_queries, 2);
	CU_ASSERT(stat("dns_hits") >= 2);
	/* NXDOMAIN is permanent. */
	r = (struct route_result){0};
	CU_ASSERT_EQUAL(resolve_mail(res, "nx.test", route_cb, &r), 0);
	run_until(&r, 1, 2000000);
	CU_ASSERT_EQUAL(r.result, DNS_MAIL_PERMFAIL);
}

static void test_tcp_fallback_in_pieces(void)
{
	struct route_result r = {0};
	tcp_mode = SRV_TCP_ANSWER;
	CU_ASSERT_EQUAL(resolve_mail(res, "big.test", route_cb, &r), 0);
	run_until(&r, 1, 2000000);
	CU_ASSERT_EQUAL(r.calls, 1);
	CU_ASSERT_EQUAL(r.result, DNS_MAIL_OK);
	CU_ASSERT_EQUAL(r.addr, HOST_IP);
	CU_ASSERT_EQUAL(srv_tcp_queries, 1);
	CU_ASSERT_EQUAL(stat("dns_truncated_retries"), 1);
	CU_ASSERT_EQUAL(stat("dns_tcp_queries"), 1);
	CU_ASSERT_EQUAL(stat("dns_tcp_answers"), 1);
	CU_ASSERT_EQUAL(stat("dns_mismatched"), 0);
	/* The relay closed the connection after the answer. */
	for (int i = 0; i < 200 && stat("dns_tcp_open") > 0; i++)
		turn(1000);
	CU_ASSERT_EQUAL(stat("dns_tcp_open"), 0);
}

static void test_tcp_bad_length(void)
{
	struct route_result r = {0};
	tcp_mode = SRV_TCP_BAD_LENGTH;
	uint64_t bad0 = stat("dns_tcp_bad_length");
	CU_ASSERT_EQUAL(resolve_mail(res, "big-bad.test", route_cb, &r), 0);
	/* Each try: TC over UDP, a 5-octet "message" over TCP, aborted; the try times out. */
	run_until(&r, 1, 10000000);
	CU_ASSERT_EQUAL(r.calls, 1);
	CU_ASSERT_EQUAL(r.result, DNS_MAIL_TEMPFAIL);
	CU_ASSERT_EQUAL(stat("dns_tcp_bad_length") - bad0, 2); /* attempts = 2 */
	CU_ASSERT_EQUAL(stat("dns_tcp_open"), 0);
}

static void test_tcp_hang_timeout_and_limit(void)
{
	enum { N = 20 }; /* more than the 16 TCP connections of a worker */
	struct route_result r[N];
	char name[32];
	tcp_mode = SRV_TCP_HANG;
	uint64_t to0 = stat("dns_tcp_timeouts"), lim0 = stat("dns_tcp_limit");
	memset(r, 0, sizeof(r));
	for (int i = 0; i < N; i++) {
		snprintf(name, sizeof(name), "big-hang%d.test", i);
		CU_ASSERT_EQUAL(resolve_mail(res, name, route_cb, &r[i]), 0);
	}
	/* Let the UDP answers come back and the connections open, not yet time out. */
	for (int i = 0; i < 300; i++)
		turn(1000);
	CU_ASSERT_EQUAL(stat("dns_tcp_open"), 16);
	CU_ASSERT(stat("dns_tcp_limit") - lim0 >= N - 16);
	CU_ASSERT_EQUAL(srv_tcp_queries >= 16, true);
	run_until(r, N, 20000000);
	for (int i = 0; i < N; i++) {
		CU_ASSERT_EQUAL(r[i].calls, 1);
		CU_ASSERT_EQUAL(r[i].result, DNS_MAIL_TEMPFAIL); /* deferred, never bounced */
		CU_ASSERT_STRING_EQUAL(r[i].status, "4.4.3");
	}
	for (int i = 0; i < 2000 && stat("dns_tcp_open") > 0; i++)
		turn(1000);
	CU_ASSERT(stat("dns_tcp_timeouts") - to0 >= 16);
	CU_ASSERT_EQUAL(stat("dns_tcp_open"), 0);
	tcp_mode = SRV_TCP_ANSWER;
}

static void test_stats_names(void)
{
	static const char *const names[] = {
		"dns_hits",	     "dns_misses",	  "dns_coalesced", "dns_upstream_queries",
		"dns_timeouts",	     "dns_stale_served",  "dns_evictions", "dns_tcp_queries",
		"dns_cache_entries", "dns_mismatch_port", "dns_port_busy", "dns_malformed",
	};
	for (unsigned i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		struct stat_find f = {.name = names[i]};
		resolve_stats_foreach(res, stat_cb, &f);
		CU_ASSERT(f.found);
		if (!f.found)
			fprintf(stderr, "missing %s\n", names[i]);
	}
	CU_ASSERT(stat("dns_cache_entries") > 0);
	CU_ASSERT(stat("dns_misses") > 0);
	/* Replies never came to a port without a query waiting there. */
	CU_ASSERT_EQUAL(stat("dns_mismatch_port"), 0);
}

/* ---- set-up ---------------------------------------------------------------- */

static int make_port(const char *name, struct rte_ring *rx, struct rte_ring *tx, uint32_t addr,
		     struct net_port **out, struct net_stack **st)
{
	int pid = rte_eth_from_rings(name, &rx, 1, &tx, 1, 0);
	if (pid < 0)
		return -1;
	struct net_port_conf pc = {.port_id = (uint16_t)pid, .addr = addr, .prefix_len = 24};
	char err[256];
	if (net_port_setup(out, &pc, 1, pool, err, sizeof(err)) != 0) {
		fprintf(stderr, "%s\n", err);
		return -1;
	}
	struct net_stack_conf sc = {.worker = 0,
				    .n_workers = 1,
				    .ports = out,
				    .n_ports = 1,
				    .pool = pool,
				    .seed = addr};
	*st = net_stack_create(&sc);
	return *st == NULL ? -1 : 0;
}

static int suite_init(void)
{
	char *argv[] = {"test_resolve_net",
			"-l",
			"0",
			"--no-huge",
			"-m",
			"256",
			"--no-pci",
			"--no-shconf",
			"--no-telemetry",
			"--log-level=error",
			"--file-prefix=mxresolvenet",
			NULL};
	if (rte_eal_init(11, argv) < 0)
		return -1;
	pool = rte_pktmbuf_pool_create("rn_pool", 4095, 0, 0, RTE_MBUF_DEFAULT_BUF_SIZE, 0);
	struct rte_ring *a2b = rte_ring_create("a2b", 2048, 0, RING_F_SP_ENQ | RING_F_SC_DEQ);
	struct rte_ring *b2a = rte_ring_create("b2a", 2048, 0, RING_F_SP_ENQ | RING_F_SC_DEQ);
	if (pool == NULL || a2b == NULL || b2a == NULL)
		return -1;
	if (make_port("net_ring_rrelay", b2a, a2b, RELAY_IP, &port_relay, &st_relay) != 0 ||
	    make_port("net_ring_rserver", a2b, b2a, SERVER_IP, &port_server, &st_server) != 0)
		return -1;
	if (udp_bind(st_server, 53, srv_udp, NULL) != 0 ||
	    tcp_listen(st_server, 0, 53, srv_accept, NULL) != 0)
		return -1;
	dns_conf_defaults(&conf.dns);
	conf.dns.resolvers[0] = SERVER_IP;
	conf.dns.resolver_count = 1;
	conf.dns.seed = 7;
	conf.dns.max_entries = 1024;
	if (resolve_shared_init(&conf) != 0)
		return -1;
	now = mx_now_us();
	if (resolve_create(&conf, st_relay, 0, &res) != 0 || res == NULL)
		return -1;
	return 0;
}

static int suite_clean(void)
{
	resolve_destroy(res);
	resolve_shared_free();
	net_stack_destroy(st_relay);
	net_stack_destroy(st_server);
	return 0;
}

static CU_TestInfo tests[] = {
	{"UDP: MX and A over lib/net, cache, NXDOMAIN", test_udp_route},
	{"TC: asked again over TCP, answer in 5-octet pieces", test_tcp_fallback_in_pieces},
	{"TCP: a bad length prefix is counted, the try fails", test_tcp_bad_length},
	{"TCP: silent servers time out, 16 connections at most", test_tcp_hang_timeout_and_limit},
	{"counters: dns_* names of resolve_stats_foreach", test_stats_names},
	CU_TEST_INFO_NULL,
};

static CU_SuiteInfo suites[] = {
	{"resolve_net", suite_init, suite_clean, NULL, NULL, tests},
	CU_SUITE_INFO_NULL,
};

int main(void)
{
	return mx_test_run(suites);
}
