/*
 * test_queue.c - CUnit tests for lib/queue: destinations and grouping, owner
 * hashing, limits, backoff, retries and expiry (the clock is driven by the
 * test), pooled sessions, per-recipient results, DSN building and the log
 * line.
 *
 * `test_queue --write-dsn DIR` writes sample DSNs to DIR instead of running
 * the suite; tests/integration/dsn_python.sh checks them with Python's email
 * parser.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core.h"
#include "mx_test.h"
#include "queue.h"

#define T0 (1700000000LL * 1000000)
#define SEC 1000000LL

/* ---- recording ops --------------------------------------------------------- */

static struct rec {
	unsigned delivered, deferred, bounced, done, dsn;
	int64_t next_retry_s;
	char reason[800];
	char *dsn_text;
	size_t dsn_len;
	char dsn_rcpt[300];
	uint32_t bounced_idx[64];
	unsigned nb;
	bool read_fail;
	struct queue_action act[256];
	int nact;
} R;

static const char BODY[] = "Received: from dev ([10.77.0.5])\r\n"
			   "Subject: temperature alarm\r\n"
			   "From: dev@fleet.example\r\n"
			   "Message-ID: <m1@fleet.example>\r\n"
			   "\r\n"
			   "sensor 7 is over 80C\r\n";

static void op_delivered(void *ctx, const struct queue_desc *d, uint32_t rcpt)
{
	(void)ctx, (void)d, (void)rcpt;
	R.delivered++;
}
static void op_deferred(void *ctx, const struct queue_desc *d, uint32_t rcpt, int64_t next,
			const char *reply)
{
	(void)ctx, (void)d, (void)rcpt, (void)reply;
	R.deferred++;
	R.next_retry_s = next;
}
static void op_bounced(void *ctx, const struct queue_desc *d, uint32_t rcpt, const char *reason)
{
	(void)ctx, (void)d;
	if (R.nb < 64)
		R.bounced_idx[R.nb++] = rcpt;
	R.bounced++;
	snprintf(R.reason, sizeof(R.reason), "%s", reason);
}
static long op_read(void *ctx, const struct queue_desc *d, uint64_t off, void *buf, size_t len)
{
	(void)ctx, (void)d;
	if (R.read_fail)
		return -EIO;
	if (off >= sizeof(BODY) - 1)
		return 0;
	if (len > sizeof(BODY) - 1 - off)
		len = sizeof(BODY) - 1 - off;
	memcpy(buf, BODY + off, len);
	return (long)len;
}
static int op_dsn(void *ctx, const struct queue_desc *d, const char *rcpt, const char *data,
		  size_t len)
{
	(void)ctx, (void)d;
	R.dsn++;
	free(R.dsn_text);
	R.dsn_text = malloc(len + 1);
	memcpy(R.dsn_text, data, len);
	R.dsn_text[len] = 0;
	R.dsn_len = len;
	snprintf(R.dsn_rcpt, sizeof(R.dsn_rcpt), "%s", rcpt);
	return 0;
}
static void op_done(void *ctx, const struct queue_desc *d)
{
	(void)ctx, (void)d;
	R.done++;
}

static const struct queue_ops OPS = {op_delivered, op_deferred, op_bounced,
				     op_read,	   op_dsn,	op_done};

static void rec_reset(void)
{
	free(R.dsn_text);
	memset(&R, 0, sizeof(R));
}

static void cfg_init(struct queue_config *c)
{
	queue_config_defaults(c);
	snprintf(c->hostname, sizeof(c->hostname), "relay.test");
}

static struct queue *mkq(const struct queue_config *c)
{
	rec_reset();
	struct queue *q = queue_create(c, &OPS, NULL);
	CU_ASSERT_PTR_NOT_NULL_FATAL(q);
	return q;
}

/* One message, all recipients to one destination: its descriptor. */
static struct queue_desc *desc_for(const struct queue_config *c, const char *sender,
				   const char *const *rcpts, unsigned n, uint8_t notify,
				   uint8_t ret, uint64_t id)
{
	struct spool_rcpt r[64];
	struct spool_envelope env = {0};
	struct queue_desc *d[8];

	for (unsigned i = 0; i < n; i++)
		r[i] = (struct spool_rcpt){rcpts[i], NULL, notify};
	env.sender = sender;
	env.rcpts = r;
	env.rcpt_count = n;
	env.ret = ret;
	env.arrival_us = T0;
	int rc = queue_split(c, id, &env, NULL, NULL, sizeof(BODY) - 1, d, 8);
	CU_ASSERT_EQUAL_FATAL(rc, 1);
	return d[0];
}

static int pollq(struct queue *q, int64_t now)
{
	R.nact = queue_poll(q, now, R.act, 256);
	return R.nact;
}

static int count_act(enum queue_action_type t)
{
	int n = 0;
	for (int i = 0; i < R.nact; i++)
		n += R.act[i].type == t;
	return n;
}

static const struct queue_action *find_act(enum queue_action_type t)
{
	for (int i = 0; i < R.nact; i++)
		if (R.act[i].type == t)
			return &R.act[i];
	return NULL;
}

/* The action of type t, or the test stops here (no NULL dereference). */
static const struct queue_action *need_act(enum queue_action_type t)
{
	const struct queue_action *a = find_act(t);
	CU_ASSERT_PTR_NOT_NULL_FATAL(a);
	return a;
}

static int result_all(struct queue *q, const struct queue_action *a, uint16_t code,
		      const char *text, int64_t now)
{
	struct queue_rcpt_result res[128];
	for (unsigned i = 0; i < a->txn->rcpt_count && i < 128; i++)
		res[i] = (struct queue_rcpt_result){code, NULL, text};
	return queue_txn_result(q, a->session, res, a->txn->rcpt_count, now);
}

static const char *const ONE_LIT[] = {"dev@[192.0.2.10]"};
static const char *const ONE_DOM[] = {"ops@example.com"};

/* Submit one message to a literal, connect, return the SEND action (copied). */
static struct queue_action send_one_literal(struct queue *q, const struct queue_config *c,
					    int64_t now, uint64_t id)
{
	struct queue_action a = {0};
	CU_ASSERT_EQUAL(
		queue_submit(q, desc_for(c, "dev@fleet.example", ONE_LIT, 1, 0, 0, id), 0, now), 0);
	pollq(q, now);
	const struct queue_action *conn = find_act(QUEUE_ACT_CONNECT);
	if (conn) {
		CU_ASSERT_EQUAL(
			queue_conn_up(q, conn->session, "[192.0.2.10]", 0xc000020a, 25, now), 0);
		pollq(q, now);
	}
	const struct queue_action *s = find_act(QUEUE_ACT_SEND);
	CU_ASSERT_PTR_NOT_NULL(s);
	if (s)
		a = *s;
	return a;
}

/* ---- destinations, grouping, owners ------------------------------------------- */

static void test_dest_domain_case(void)
{
	struct queue_config c;
	char name[QUEUE_DEST_MAX];
	cfg_init(&c);
	CU_ASSERT_EQUAL(queue_dest_of(&c, "User@Example.COM", name), QUEUE_DEST_DOMAIN);
	CU_ASSERT_STRING_EQUAL(name, "example.com");
	CU_ASSERT_EQUAL(queue_dest_of(&c, "\"a@b\"@Mail.Example.org.", name), QUEUE_DEST_DOMAIN);
	CU_ASSERT_STRING_EQUAL(name, "mail.example.org");
}

static void test_dest_literal_invalid(void)
{
	struct queue_config c;
	char name[QUEUE_DEST_MAX];
	cfg_init(&c);
	CU_ASSERT_EQUAL(queue_dest_of(&c, "dev@[192.0.2.10]", name), QUEUE_DEST_LITERAL);
	CU_ASSERT_STRING_EQUAL(name, "[192.0.2.10]");
	CU_ASSERT_EQUAL(queue_dest_of(&c, "dev@[IPv6:2001:db8::1]", name), QUEUE_DEST_INVALID);
	CU_ASSERT_EQUAL(queue_dest_of(&c, "dev@[300.1.1.1]", name), QUEUE_DEST_INVALID);
	CU_ASSERT_EQUAL(queue_dest_of(&c, "dev@[1.2.3]", name), QUEUE_DEST_INVALID);
	CU_ASSERT_EQUAL(queue_dest_of(&c, "postmaster", name), QUEUE_DEST_INVALID);
	CU_ASSERT_EQUAL(queue_dest_of(&c, "a@", name), QUEUE_DEST_INVALID);
}

static void test_dest_smarthost(void)
{
	struct queue_config c;
	char name[QUEUE_DEST_MAX];
	cfg_init(&c);
	CU_ASSERT_EQUAL(queue_config_set_smarthost(&c, "[10.77.0.1]:2525"), 0);
	CU_ASSERT_EQUAL(queue_dest_of(&c, "x@example.com", name), QUEUE_DEST_SMARTHOST);
	CU_ASSERT_STRING_EQUAL(name, "[10.77.0.1]:2525");
	CU_ASSERT_EQUAL(queue_dest_of(&c, "x@[192.0.2.1]", name), QUEUE_DEST_SMARTHOST);
	CU_ASSERT_EQUAL(c.smarthost_port, 2525);
	CU_ASSERT_FALSE(c.smarthost_mx);
	CU_ASSERT_EQUAL(queue_config_set_smarthost(&c, "relay.example.net:587"), 0);
	CU_ASSERT_TRUE(c.smarthost_mx);
	CU_ASSERT_STRING_EQUAL(c.smarthost_host, "relay.example.net");
	CU_ASSERT_EQUAL(c.smarthost_port, 587);
	CU_ASSERT_EQUAL(queue_config_set_smarthost(&c, "[relay]"), 0);
	CU_ASSERT_EQUAL(c.smarthost_port, 25);
	CU_ASSERT_EQUAL(queue_config_set_smarthost(&c, "bad host:25"), -EINVAL);
	CU_ASSERT_EQUAL(queue_config_set_smarthost(&c, "[h]x"), -EINVAL);
	CU_ASSERT_EQUAL(queue_config_set_smarthost(&c, "h:99999"), -EINVAL);
	CU_ASSERT_EQUAL(queue_config_set_smarthost(&c, "[h"), -EINVAL);
}

static void test_split_groups(void)
{
	struct queue_config c;
	struct spool_rcpt r[] = {{"a@x.com", NULL, 0},
				 {"b@y.org", "rfc822;b@y.org", SPOOL_NOTIFY_FAILURE},
				 {"c@X.COM", NULL, 0},
				 {"d@[192.0.2.1]", NULL, 0}};
	struct spool_envelope env = {.sender = "s@fleet", .rcpts = r, .rcpt_count = 4};
	struct queue_desc *d[4];
	cfg_init(&c);
	CU_ASSERT_EQUAL_FATAL(queue_split(&c, 7, &env, NULL, NULL, 10, d, 4), 3);
	CU_ASSERT_STRING_EQUAL(d[0]->dest, "x.com");
	CU_ASSERT_EQUAL(d[0]->rcpt_count, 2);
	CU_ASSERT_EQUAL(d[0]->rcpts[0].index, 0);
	CU_ASSERT_EQUAL(d[0]->rcpts[1].index, 2);
	CU_ASSERT_STRING_EQUAL(d[0]->rcpts[1].addr, "c@X.COM");
	CU_ASSERT_STRING_EQUAL(d[1]->dest, "y.org");
	CU_ASSERT_STRING_EQUAL(d[1]->rcpts[0].orcpt, "rfc822;b@y.org");
	CU_ASSERT_EQUAL(d[1]->rcpts[0].notify, SPOOL_NOTIFY_FAILURE);
	CU_ASSERT_EQUAL(d[2]->dest_kind, QUEUE_DEST_LITERAL);
	CU_ASSERT_EQUAL(d[2]->group_count, 3);
	CU_ASSERT_EQUAL(d[2]->group_index, 2);
	CU_ASSERT_STRING_EQUAL(d[2]->sender, "s@fleet");
	CU_ASSERT_EQUAL(d[0]->msg_id, 7);
	for (int i = 0; i < 3; i++)
		queue_desc_free(d[i]);
	/* Smarthost: one descriptor for everything. */
	CU_ASSERT_EQUAL(queue_config_set_smarthost(&c, "[10.77.0.1]:2525"), 0);
	CU_ASSERT_EQUAL_FATAL(queue_split(&c, 7, &env, NULL, NULL, 10, d, 4), 1);
	CU_ASSERT_EQUAL(d[0]->rcpt_count, 4);
	CU_ASSERT_EQUAL(d[0]->dest_kind, QUEUE_DEST_SMARTHOST);
	queue_desc_free(d[0]);
}

static void test_split_skips_final_and_limits(void)
{
	struct queue_config c;
	struct spool_rcpt r[] = {{"a@x.com", NULL, 0}, {"b@y.org", NULL, 0}, {"c@x.com", NULL, 0}};
	struct spool_rcpt_status st[] = {{SPOOL_RCPT_DELIVERED, 0, NULL},
					 {SPOOL_RCPT_BOUNCED, 0, NULL},
					 {SPOOL_RCPT_DEFERRED, 5, "451 later"}};
	struct spool_envelope env = {.sender = "", .rcpts = r, .rcpt_count = 3};
	struct queue_desc *d[4];
	cfg_init(&c);
	CU_ASSERT_EQUAL_FATAL(queue_split(&c, 1, &env, st, NULL, 10, d, 4), 1);
	CU_ASSERT_EQUAL(d[0]->rcpt_count, 1);
	CU_ASSERT_EQUAL(d[0]->rcpts[0].index, 2);
	CU_ASSERT_EQUAL(d[0]->rcpts[0].state, SPOOL_RCPT_DEFERRED);
	CU_ASSERT_TRUE(d[0]->flags & QUEUE_DESC_F_DSN);
	queue_desc_free(d[0]);
	CU_ASSERT_EQUAL(queue_split(&c, 1, &env, NULL, NULL, 10, d, 1), -ENOBUFS);
	CU_ASSERT_EQUAL(queue_split(&c, 1, &env, NULL, NULL, 10, d, 0), -EINVAL);
}

static void test_owner_stable_spread(void)
{
	unsigned hits[4] = {0};
	char name[64];
	CU_ASSERT_EQUAL(queue_dest_owner("example.com", 4), queue_dest_owner("EXAMPLE.com", 4));
	CU_ASSERT_EQUAL(queue_dest_owner("example.com", 1), 0);
	CU_ASSERT_EQUAL(queue_dest_owner("example.com", 0), 0);
	/* Known value: the hash must not change between releases (cores must agree). */
	unsigned first = queue_dest_owner("example.com", 1000);
	CU_ASSERT_EQUAL(first, queue_dest_owner("example.com", 1000));
	for (int i = 0; i < 4000; i++) {
		snprintf(name, sizeof(name), "d%d.example.net", i);
		unsigned o = queue_dest_owner(name, 4);
		CU_ASSERT_FATAL(o < 4);
		hits[o]++;
	}
	for (int i = 0; i < 4; i++)
		CU_ASSERT(hits[i] > 850 && hits[i] < 1150);
}

static void test_config_from_cfg(void)
{
	struct queue_config c;
	struct cfg_file *cf;
	char err[256];
	const char *text = "[queue]\nretry = 30s, 2m ,1h\nmax_age = 1d\nmax_connections = 3\n"
			   "initial_connections = 2\nconnection_budget = 7\n"
			   "rate = 5\nrecipients_per_transaction = 50\nidle_timeout = 2s\n"
			   "pipeline_depth = 4\n"
			   "[relay]\nsmarthost = [10.77.0.1]:2525\n[smtp]\nhostname = mx.test\n";
	cfg_init(&c);
	CU_ASSERT_EQUAL_FATAL(cfg_parse_string(text, "t.conf", &cf, err, sizeof(err)), 0);
	CU_ASSERT_EQUAL(queue_config_from_cfg(cf, &c, err, sizeof(err)), 0);
	CU_ASSERT_EQUAL(c.retry_count, 3);
	CU_ASSERT_EQUAL(c.retry_us[0], 30 * SEC);
	CU_ASSERT_EQUAL(c.retry_us[2], 3600 * SEC);
	CU_ASSERT_EQUAL(c.max_age_us, 86400 * SEC);
	CU_ASSERT_EQUAL(c.max_connections, 3);
	CU_ASSERT_EQUAL(c.initial_connections, 2);
	CU_ASSERT_EQUAL(c.connection_budget, 7);
	CU_ASSERT_EQUAL(c.msgs_per_second, 5);
	CU_ASSERT_EQUAL(c.rcpts_per_txn, 50);
	CU_ASSERT_EQUAL(c.idle_timeout_us, 2 * SEC);
	CU_ASSERT_EQUAL(c.pipeline_depth, 4);
	CU_ASSERT_TRUE(c.smarthost_set);
	CU_ASSERT_STRING_EQUAL(c.hostname, "mx.test");
	cfg_free(cf);

	cfg_init(&c);
	CU_ASSERT_EQUAL(c.max_connections, 10);
	CU_ASSERT_EQUAL(c.initial_connections, 0);
	CU_ASSERT_EQUAL(c.msgs_per_connection, 100);
	CU_ASSERT_EQUAL(c.rcpts_per_txn, 100);
	CU_ASSERT_EQUAL(c.retry_count, 5);
	CU_ASSERT_EQUAL(c.retry_us[4], 4 * 3600 * SEC);
	CU_ASSERT_EQUAL(c.max_age_us, 5 * 86400 * SEC);
	CU_ASSERT_EQUAL_FATAL(cfg_parse_string("[queue]\n\nmax_connections = 0\n", "b.conf", &cf,
					       err, sizeof(err)),
			      0);
	CU_ASSERT_EQUAL(queue_config_from_cfg(cf, &c, err, sizeof(err)), -EINVAL);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "b.conf:3:"));
	cfg_free(cf);
	CU_ASSERT_EQUAL_FATAL(
		cfg_parse_string("[queue]\nretry = 1m,,5m\n", "c.conf", &cf, err, sizeof(err)), 0);
	CU_ASSERT_EQUAL(queue_config_from_cfg(cf, &c, err, sizeof(err)), -EINVAL);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "c.conf:2:"));
	cfg_free(cf);
	/* pipeline_depth: 1..QUEUE_PIPELINE_MAX */
	CU_ASSERT_EQUAL_FATAL(
		cfg_parse_string("[queue]\npipeline_depth = 9\n", "d.conf", &cf, err, sizeof(err)),
		0);
	CU_ASSERT_EQUAL(queue_config_from_cfg(cf, &c, err, sizeof(err)), -EINVAL);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "d.conf:2:"));
	cfg_free(cf);
	CU_ASSERT_EQUAL(queue_config_set_retry(&c, "1m,1x"), -EINVAL);
	CU_ASSERT_EQUAL(queue_config_set_retry(&c, "100ms"), -ERANGE);
	CU_ASSERT_EQUAL(queue_config_set_retry(&c, "1m,5m"), 0);
	CU_ASSERT_EQUAL(c.retry_count, 2);
}

/* ---- routing and sessions -------------------------------------------------------- */

static void test_literal_no_dns(void)
{
	struct queue_config c;
	cfg_init(&c);
	struct queue *q = mkq(&c);
	CU_ASSERT_EQUAL(queue_submit(q, desc_for(&c, "s@f", ONE_LIT, 1, 0, 0, 1), 0, T0), 0);
	CU_ASSERT_EQUAL(pollq(q, T0), 1);
	CU_ASSERT_EQUAL(count_act(QUEUE_ACT_RESOLVE), 0);
	const struct queue_action *a = find_act(QUEUE_ACT_CONNECT);
	CU_ASSERT_PTR_NOT_NULL_FATAL(a);
	CU_ASSERT_EQUAL(a->port, 25);
	CU_ASSERT_EQUAL(a->route->host_count, 1);
	CU_ASSERT_EQUAL(a->route->hosts[0].addrs[0], 0xc000020a);
	CU_ASSERT_TRUE(a->route->literal);
	queue_destroy(q);
}

struct dest_seen {
	unsigned n;
	uint64_t sent, tls_resumed;
};

static int dest_seen_fn(void *arg, const struct queue_dest_info *di)
{
	struct dest_seen *ds = arg;
	ds->n++;
	ds->sent += di->c.sent;
	ds->tls_resumed += di->c.tls_resumed;
	return 0;
}

static void test_domain_full_delivery(void)
{
	struct queue_config c;
	struct dns_mail_route route = {0};
	struct queue_counters k;
	cfg_init(&c);
	struct queue *q = mkq(&c);
	CU_ASSERT_EQUAL(queue_submit(q, desc_for(&c, "s@f", ONE_DOM, 1, 0, 0, 2), 0, T0), 0);
	CU_ASSERT_EQUAL(pollq(q, T0), 1);
	const struct queue_action *a = find_act(QUEUE_ACT_RESOLVE);
	CU_ASSERT_PTR_NOT_NULL_FATAL(a);
	CU_ASSERT_STRING_EQUAL(a->dest_name, "example.com");
	CU_ASSERT_TRUE(a->mx);
	uint64_t dest = a->dest;
	CU_ASSERT_EQUAL(pollq(q, T0), 0); /* one RESOLVE at a time */
	route.result = DNS_MAIL_OK;
	route.host_count = 1;
	snprintf(route.hosts[0].name, sizeof(route.hosts[0].name), "mx.example.com");
	route.hosts[0].addr_count = 1;
	route.hosts[0].addrs[0] = 0xc0000205;
	CU_ASSERT_EQUAL(queue_route_result(q, dest, &route, T0), 0);
	CU_ASSERT_EQUAL(pollq(q, T0), 1);
	a = find_act(QUEUE_ACT_CONNECT);
	CU_ASSERT_PTR_NOT_NULL_FATAL(a);
	CU_ASSERT_STRING_EQUAL(a->route->hosts[0].name, "mx.example.com");
	uint64_t sess = a->session;
	/* TLS before up: counted for the destination and in the totals */
	CU_ASSERT_EQUAL(queue_conn_tls(q, sess, true), 0);
	CU_ASSERT_EQUAL(queue_conn_tls(q, sess + 12345, false), -ENOENT);
	CU_ASSERT_EQUAL(queue_conn_up(q, sess, "mx.example.com", 0xc0000205, 25, T0 + SEC / 2), 0);
	CU_ASSERT_EQUAL(pollq(q, T0 + SEC / 2), 1);
	a = find_act(QUEUE_ACT_SEND);
	CU_ASSERT_PTR_NOT_NULL_FATAL(a);
	CU_ASSERT_EQUAL(a->session, sess);
	CU_ASSERT_EQUAL(a->txn->rcpt_count, 1);
	CU_ASSERT_STRING_EQUAL(a->txn->desc->rcpts[a->txn->rcpt[0]].addr, "ops@example.com");
	queue_get_counters(q, &k);
	CU_ASSERT_EQUAL(k.in_flight, 1);
	CU_ASSERT_EQUAL(k.queued, 0);
	CU_ASSERT_EQUAL(result_all(q, a, 250, "250 2.0.0 Ok: queued as X", T0 + SEC), 0);
	CU_ASSERT_EQUAL(R.delivered, 1);
	CU_ASSERT_EQUAL(R.done, 1);
	CU_ASSERT_EQUAL(R.dsn, 0);
	queue_get_counters(q, &k);
	CU_ASSERT_EQUAL(k.sent, 1);
	CU_ASSERT_EQUAL(k.in_flight, 0);
	CU_ASSERT_EQUAL(k.conns_open, 1);
	CU_ASSERT_EQUAL(k.tls_resumed, 1);
	CU_ASSERT_EQUAL(k.tls_full, 0);
	struct dest_seen ds = {0};
	queue_dest_foreach(q, dest_seen_fn, &ds);
	CU_ASSERT_EQUAL(ds.n, 1);
	CU_ASSERT_EQUAL(ds.sent, 1);
	CU_ASSERT_EQUAL(ds.tls_resumed, 1);
	queue_destroy(q);
}

static void test_smarthost_routes(void)
{
	struct queue_config c;
	cfg_init(&c);
	CU_ASSERT_EQUAL(queue_config_set_smarthost(&c, "[10.77.0.1]:2525"), 0);
	struct queue *q = mkq(&c);
	CU_ASSERT_EQUAL(queue_submit(q, desc_for(&c, "s@f", ONE_DOM, 1, 0, 0, 3), 0, T0), 0);
	pollq(q, T0);
	const struct queue_action *a = find_act(QUEUE_ACT_CONNECT);
	CU_ASSERT_PTR_NOT_NULL_FATAL(a);
	CU_ASSERT_EQUAL(a->port, 2525);
	CU_ASSERT_EQUAL(a->route->hosts[0].addrs[0], 0x0a4d0001);
	queue_destroy(q);

	CU_ASSERT_EQUAL(queue_config_set_smarthost(&c, "relay.example.net:587"), 0);
	q = mkq(&c);
	CU_ASSERT_EQUAL(queue_submit(q, desc_for(&c, "s@f", ONE_DOM, 1, 0, 0, 3), 0, T0), 0);
	pollq(q, T0);
	a = find_act(QUEUE_ACT_RESOLVE);
	CU_ASSERT_PTR_NOT_NULL_FATAL(a);
	CU_ASSERT_STRING_EQUAL(a->dest_name, "relay.example.net");
	CU_ASSERT_TRUE(a->mx);
	queue_destroy(q);
}

static void test_rcpts_per_txn_split(void)
{
	struct queue_config c;
	const char *const rc[] = {"a@[192.0.2.10]", "b@[192.0.2.10]", "c@[192.0.2.10]",
				  "d@[192.0.2.10]", "e@[192.0.2.10]"};
	cfg_init(&c);
	c.rcpts_per_txn = 2;
	c.max_connections = 1;
	struct queue *q = mkq(&c);
	CU_ASSERT_EQUAL(queue_submit(q, desc_for(&c, "s@f", rc, 5, 0, 0, 4), 0, T0), 0);
	pollq(q, T0);
	CU_ASSERT_EQUAL(count_act(QUEUE_ACT_CONNECT), 1);
	queue_conn_up(q, need_act(QUEUE_ACT_CONNECT)->session, "h", 1, 25, T0);
	unsigned sizes[3] = {0}, n = 0;
	for (int round = 0; round < 5 && n < 3; round++) {
		pollq(q, T0);
		const struct queue_action *a = find_act(QUEUE_ACT_SEND);
		if (!a)
			break;
		CU_ASSERT_EQUAL(count_act(QUEUE_ACT_SEND), 1); /* one session */
		sizes[n++] = a->txn->rcpt_count;
		CU_ASSERT_EQUAL(result_all(q, a, 250, "250 ok", T0), 0);
	}
	CU_ASSERT_EQUAL(n, 3);
	CU_ASSERT_EQUAL(sizes[0], 2);
	CU_ASSERT_EQUAL(sizes[1], 2);
	CU_ASSERT_EQUAL(sizes[2], 1);
	CU_ASSERT_EQUAL(R.delivered, 5);
	CU_ASSERT_EQUAL(R.done, 1); /* one descriptor, finished once */
	queue_destroy(q);
}

static void test_max_connections(void)
{
	struct queue_config c;
	struct queue_counters k;
	cfg_init(&c);
	c.max_connections = 3;
	struct queue *q = mkq(&c);
	for (int i = 0; i < 20; i++)
		CU_ASSERT_EQUAL(
			queue_submit(q, desc_for(&c, "s@f", ONE_LIT, 1, 0, 0, 10 + i), 0, T0), 0);
	pollq(q, T0);
	CU_ASSERT_EQUAL(count_act(QUEUE_ACT_CONNECT), 3);
	queue_get_counters(q, &k);
	CU_ASSERT(k.conn_limit_hits >= 1);
	CU_ASSERT_EQUAL(k.queued, 20);
	CU_ASSERT_EQUAL(k.conns_open, 3);
	uint64_t s[3];
	for (int i = 0; i < 3; i++)
		s[i] = R.act[i].session;
	for (int i = 0; i < 3; i++)
		queue_conn_up(q, s[i], "h", 1, 25, T0);
	pollq(q, T0);
	CU_ASSERT_EQUAL(count_act(QUEUE_ACT_SEND), 3);
	CU_ASSERT_EQUAL(count_act(QUEUE_ACT_CONNECT), 0);
	queue_destroy(q);
}

static void test_msgs_per_connection(void)
{
	struct queue_config c;
	struct queue_counters k;
	cfg_init(&c);
	c.msgs_per_connection = 2;
	c.max_connections = 1;
	struct queue *q = mkq(&c);
	struct queue_action a = send_one_literal(q, &c, T0, 1);
	uint64_t first = a.session;
	CU_ASSERT_EQUAL(result_all(q, &a, 250, "250 ok", T0), 0);
	a = send_one_literal(q, &c, T0, 2);
	CU_ASSERT_EQUAL(a.session, first);
	CU_ASSERT_EQUAL(result_all(q, &a, 250, "250 ok", T0), 0);
	CU_ASSERT_EQUAL(queue_submit(q, desc_for(&c, "s@f", ONE_LIT, 1, 0, 0, 3), 0, T0), 0);
	pollq(q, T0);
	const struct queue_action *cl = find_act(QUEUE_ACT_CLOSE);
	CU_ASSERT_PTR_NOT_NULL_FATAL(cl);
	CU_ASSERT_EQUAL(cl->session, first);
	/* The old one still says QUIT: it counts against max_connections = 1. */
	CU_ASSERT_EQUAL(count_act(QUEUE_ACT_CONNECT), 0);
	CU_ASSERT_EQUAL(queue_conn_up(q, first, "h", 1, 25, T0), -ENOENT);
	queue_get_counters(q, &k);
	CU_ASSERT_EQUAL(k.conns_open, 1);
	CU_ASSERT_EQUAL(queue_conn_closed(q, first, T0), 0);
	CU_ASSERT_EQUAL(queue_conn_closed(q, first, T0), -ENOENT); /* once */
	pollq(q, T0);
	CU_ASSERT_EQUAL(count_act(QUEUE_ACT_CONNECT), 1); /* now a fresh one for the third */
	queue_get_counters(q, &k);
	CU_ASSERT_EQUAL(k.sessions_reused, 1);
	CU_ASSERT_EQUAL(k.conns_opened, 2);
	queue_destroy(q);
}

static void test_rate_limit(void)
{
	struct queue_config c;
	struct queue_counters k;
	cfg_init(&c);
	c.msgs_per_second = 2;
	c.rate_burst = 1;
	c.max_connections = 1;
	struct queue *q = mkq(&c);
	struct queue_action a = send_one_literal(q, &c, T0, 1);
	CU_ASSERT_EQUAL(result_all(q, &a, 250, "250 ok", T0), 0);
	CU_ASSERT_EQUAL(queue_submit(q, desc_for(&c, "s@f", ONE_LIT, 1, 0, 0, 2), 0, T0), 0);
	CU_ASSERT_EQUAL(pollq(q, T0 + 100000), 0);
	queue_get_counters(q, &k);
	CU_ASSERT_EQUAL(k.rate_limited, 1);
	CU_ASSERT_EQUAL(queue_next_timer(q), T0 + 500000);
	CU_ASSERT_EQUAL(pollq(q, T0 + 499999), 0);
	CU_ASSERT_EQUAL(pollq(q, T0 + 500000), 1);
	CU_ASSERT_EQUAL(count_act(QUEUE_ACT_SEND), 1);
	queue_destroy(q);
}

static void test_idle_timeout_close(void)
{
	struct queue_config c;
	cfg_init(&c);
	struct queue *q = mkq(&c);
	struct queue_action a = send_one_literal(q, &c, T0, 1);
	CU_ASSERT_EQUAL(result_all(q, &a, 250, "250 ok", T0), 0);
	CU_ASSERT_EQUAL(pollq(q, T0 + 4 * SEC), 0);
	CU_ASSERT_EQUAL(queue_next_timer(q), T0 + 5 * SEC);
	CU_ASSERT_EQUAL(pollq(q, T0 + 5 * SEC), 1);
	CU_ASSERT_EQUAL(R.act[0].type, QUEUE_ACT_CLOSE);
	CU_ASSERT_EQUAL(R.act[0].session, a.session);
	CU_ASSERT_EQUAL(queue_conn_down(q, a.session, "closed", T0 + 5 * SEC), -ENOENT);
	CU_ASSERT_EQUAL(pollq(q, T0 + 6 * SEC), 0);
	queue_destroy(q);
}

static void test_max_age_close(void)
{
	struct queue_config c;
	cfg_init(&c);
	c.conn_max_age_us = 10 * SEC;
	c.idle_timeout_us = 60 * SEC;
	struct queue *q = mkq(&c);
	struct queue_action a = send_one_literal(q, &c, T0, 1);
	CU_ASSERT_EQUAL(result_all(q, &a, 250, "250 ok", T0 + 2 * SEC), 0);
	CU_ASSERT_EQUAL(pollq(q, T0 + 9 * SEC), 0);
	CU_ASSERT_EQUAL(pollq(q, T0 + 10 * SEC), 1);
	CU_ASSERT_EQUAL(R.act[0].type, QUEUE_ACT_CLOSE);
	/* A result after the age limit closes at once instead of going idle. */
	a = send_one_literal(q, &c, T0 + 20 * SEC, 2);
	CU_ASSERT_EQUAL(result_all(q, &a, 250, "250 ok", T0 + 31 * SEC), 0);
	CU_ASSERT_EQUAL(pollq(q, T0 + 31 * SEC), 1);
	CU_ASSERT_EQUAL(R.act[0].type, QUEUE_ACT_CLOSE);
	queue_destroy(q);
}

static int find_dest_cb(void *arg, const struct queue_dest_info *di)
{
	struct queue_dest_info *out = arg;
	if (strcmp(di->name, out->name) == 0) {
		*out = *di;
		return 1;
	}
	return 0;
}

static bool dest_info(struct queue *q, const char *name, struct queue_dest_info *di)
{
	memset(di, 0, sizeof(*di));
	di->name = name;
	return queue_dest_foreach(q, find_dest_cb, di) == 1;
}

static void test_backoff_and_reset(void)
{
	struct queue_config c;
	struct queue_dest_info di;
	struct queue_counters k;
	cfg_init(&c);
	struct queue *q = mkq(&c);
	CU_ASSERT_EQUAL(queue_submit(q, desc_for(&c, "s@f", ONE_LIT, 1, 0, 0, 1), 0, T0), 0);
	pollq(q, T0);
	uint64_t s = need_act(QUEUE_ACT_CONNECT)->session;
	CU_ASSERT_EQUAL(queue_conn_down(q, s, "connect to [192.0.2.10]: Connection refused", T0),
			0);
	CU_ASSERT_EQUAL(R.deferred, 1);
	CU_ASSERT_TRUE(dest_info(q, "[192.0.2.10]", &di));
	CU_ASSERT_EQUAL(di.state, QUEUE_DS_BACKOFF);
	CU_ASSERT_EQUAL(di.backoff_us, 60 * SEC);
	CU_ASSERT_EQUAL(di.backoff_until_us, T0 + 60 * SEC);
	CU_ASSERT(R.next_retry_s >= (T0 + 60 * SEC) / SEC);
	/* Waits: new mail for it is held, no action. */
	CU_ASSERT_EQUAL(queue_submit(q, desc_for(&c, "s@f", ONE_LIT, 1, 0, 0, 2), 0, T0 + SEC), 0);
	CU_ASSERT_EQUAL(pollq(q, T0 + 30 * SEC), 0);
	/* Backoff over: one connection per waiting transaction. */
	CU_ASSERT_EQUAL(pollq(q, T0 + 60 * SEC), 2);
	CU_ASSERT_EQUAL(count_act(QUEUE_ACT_CONNECT), 2);
	uint64_t s2 = R.act[1].session;
	s = R.act[0].session;
	CU_ASSERT_EQUAL(queue_conn_down(q, s, "timeout", T0 + 61 * SEC), 0);
	CU_ASSERT_EQUAL(queue_conn_down(q, s2, "timeout", T0 + 61 * SEC), 0);
	CU_ASSERT_TRUE(dest_info(q, "[192.0.2.10]", &di));
	CU_ASSERT_EQUAL(di.backoff_us, 120 * SEC); /* doubled once, not per connection */
	CU_ASSERT_EQUAL(di.backoff_until_us, T0 + 181 * SEC);
	/*
	 * Each message keeps its own schedule: the first (second failure) waits
	 * the 5m step, the second (first failure) 1m, held to the backoff's end.
	 * The second was first in the FIFO, so the first is the last deferred.
	 */
	CU_ASSERT_EQUAL(R.next_retry_s, (T0 + 361 * SEC) / SEC);
	CU_ASSERT_EQUAL(pollq(q, T0 + 180 * SEC), 0);
	CU_ASSERT_EQUAL(pollq(q, T0 + 181 * SEC), 1);
	s = need_act(QUEUE_ACT_CONNECT)->session;
	CU_ASSERT_EQUAL(queue_conn_up(q, s, "[192.0.2.10]", 0xc000020a, 25, T0 + 182 * SEC), 0);
	CU_ASSERT_TRUE(dest_info(q, "[192.0.2.10]", &di));
	CU_ASSERT_EQUAL(di.backoff_us, 0);
	CU_ASSERT_EQUAL(di.state, QUEUE_DS_READY);
	queue_get_counters(q, &k);
	CU_ASSERT_EQUAL(k.backoffs, 2);
	CU_ASSERT_EQUAL(k.conn_failures, 3);
	queue_destroy(q);
}

static void test_backoff_cap(void)
{
	struct queue_config c;
	struct queue_dest_info di;
	int64_t now = T0;
	cfg_init(&c);
	c.backoff_max_us = 300 * SEC;
	CU_ASSERT_EQUAL(queue_config_set_retry(&c, "1m"), 0);
	struct queue *q = mkq(&c);
	CU_ASSERT_EQUAL(queue_submit(q, desc_for(&c, "s@f", ONE_LIT, 1, 0, 0, 1), 0, now), 0);
	for (int i = 0; i < 6; i++) {
		/* Step to the next action (the destination's backoff or the retry). */
		for (int guard = 0; guard < 10 && pollq(q, now) == 0; guard++) {
			int64_t next = queue_next_timer(q);
			CU_ASSERT_FATAL(next > 0 && next != INT64_MAX);
			now = next;
		}
		const struct queue_action *a = find_act(QUEUE_ACT_CONNECT);
		CU_ASSERT_PTR_NOT_NULL_FATAL(a);
		CU_ASSERT_EQUAL(queue_conn_down(q, a->session, "refused", now), 0);
	}
	CU_ASSERT_TRUE(dest_info(q, "[192.0.2.10]", &di));
	CU_ASSERT_EQUAL(di.backoff_us, 300 * SEC);
	CU_ASSERT_EQUAL(di.backoff_until_us, now + 300 * SEC);
	queue_destroy(q);
}

static void test_backoff_isolated(void)
{
	struct queue_config c;
	const char *const other[] = {"x@[192.0.2.20]"};
	cfg_init(&c);
	struct queue *q = mkq(&c);
	CU_ASSERT_EQUAL(queue_submit(q, desc_for(&c, "s@f", ONE_LIT, 1, 0, 0, 1), 0, T0), 0);
	pollq(q, T0);
	CU_ASSERT_EQUAL(queue_conn_down(q, need_act(QUEUE_ACT_CONNECT)->session, "refused", T0), 0);
	CU_ASSERT_EQUAL(queue_submit(q, desc_for(&c, "s@f", other, 1, 0, 0, 2), 0, T0), 0);
	CU_ASSERT_EQUAL(pollq(q, T0), 1);
	const struct queue_action *a = find_act(QUEUE_ACT_CONNECT);
	CU_ASSERT_PTR_NOT_NULL_FATAL(a);
	CU_ASSERT_STRING_EQUAL(a->dest_name, "[192.0.2.20]");
	queue_destroy(q);
}

static void test_retry_schedule(void)
{
	struct queue_config c;
	cfg_init(&c);
	CU_ASSERT_EQUAL(queue_config_set_retry(&c, "1m,2m"), 0);
	c.idle_timeout_us = 3600 * SEC; /* keep the session: only the retry timer matters */
	c.conn_max_age_us = 86400 * SEC;
	c.msgs_per_connection = 1000;
	struct queue *q = mkq(&c);
	struct queue_action a = send_one_literal(q, &c, T0, 1);
	int64_t now = T0;
	static const int64_t gaps[] = {60, 120, 120, 120};
	for (int i = 0; i < 4; i++) {
		CU_ASSERT_EQUAL(result_all(q, &a, 451, "451 4.3.0 try later", now), 0);
		CU_ASSERT_EQUAL(R.deferred, (unsigned)i + 1);
		CU_ASSERT_EQUAL(R.next_retry_s, (now + gaps[i] * SEC) / SEC);
		CU_ASSERT_EQUAL(queue_next_timer(q), 0); /* the session went idle: poll */
		CU_ASSERT_EQUAL(pollq(q, now), 0);
		CU_ASSERT_EQUAL(queue_next_timer(q), now + gaps[i] * SEC);
		CU_ASSERT_EQUAL(pollq(q, now + gaps[i] * SEC - 1), 0);
		now += gaps[i] * SEC;
		CU_ASSERT_EQUAL(pollq(q, now), 1);
		const struct queue_action *s = find_act(QUEUE_ACT_SEND);
		CU_ASSERT_PTR_NOT_NULL_FATAL(s);
		a = *s;
	}
	CU_ASSERT_EQUAL(result_all(q, &a, 250, "250 ok", now), 0);
	CU_ASSERT_EQUAL(R.delivered, 1);
	CU_ASSERT_EQUAL(R.done, 1);
	queue_destroy(q);
}

static void test_max_age_expiry(void)
{
	struct queue_config c;
	struct queue_counters k;
	cfg_init(&c);
	CU_ASSERT_EQUAL(queue_config_set_retry(&c, "4m"), 0);
	c.max_age_us = 10 * 60 * SEC;
	struct queue *q = mkq(&c);
	struct queue_action a = send_one_literal(q, &c, T0, 1);
	CU_ASSERT_EQUAL(result_all(q, &a, 451, "451 4.2.2 mailbox full", T0), 0);
	int64_t now = T0;
	int sends = 1;
	for (int guard = 0; guard < 20 && R.done == 0; guard++) {
		pollq(q, now);
		now = queue_next_timer(q);
		CU_ASSERT_FATAL(now != INT64_MAX);
		pollq(q, now);
		const struct queue_action *s = find_act(QUEUE_ACT_SEND);
		const struct queue_action *cn = find_act(QUEUE_ACT_CONNECT);
		if (cn) {
			queue_conn_up(q, cn->session, "h", 1, 25, now);
			pollq(q, now);
			s = find_act(QUEUE_ACT_SEND);
		}
		if (s) {
			sends++;
			struct queue_action copy = *s;
			result_all(q, &copy, 451, "451 4.2.2 mailbox full", now);
		}
	}
	/* Attempts at 0, 4m, 8m; the 10m expiry bounces instead of a 12m retry. */
	CU_ASSERT_EQUAL(sends, 3);
	CU_ASSERT_EQUAL(now, T0 + 10 * 60 * SEC);
	CU_ASSERT_EQUAL(R.bounced, 1);
	CU_ASSERT_PTR_NOT_NULL(strstr(R.reason, "4.4.7"));
	CU_ASSERT_PTR_NOT_NULL(strstr(R.reason, "expired"));
	CU_ASSERT_EQUAL(R.dsn, 1);
	CU_ASSERT_PTR_NOT_NULL(R.dsn_text ? strstr(R.dsn_text, "Status: 4.4.7") : NULL);
	CU_ASSERT_PTR_NOT_NULL(R.dsn_text ? strstr(R.dsn_text, "mailbox full") : NULL);
	queue_get_counters(q, &k);
	CU_ASSERT_EQUAL(k.expired, 1);
	CU_ASSERT_EQUAL(k.queued, 0);
	queue_destroy(q);
}

static void test_partial_failure_one_dsn(void)
{
	struct queue_config c;
	const char *const rc[] = {"a@[192.0.2.10]", "b@[192.0.2.10]", "c@[192.0.2.10]"};
	cfg_init(&c);
	struct queue *q = mkq(&c);
	CU_ASSERT_EQUAL(queue_submit(q, desc_for(&c, "dev@fleet.example", rc, 3, 0, 0, 9), 0, T0),
			0);
	pollq(q, T0);
	queue_conn_up(q, need_act(QUEUE_ACT_CONNECT)->session, "mx.lit", 0xc000020a, 25, T0);
	pollq(q, T0);
	const struct queue_action *a = find_act(QUEUE_ACT_SEND);
	CU_ASSERT_PTR_NOT_NULL_FATAL(a);
	struct queue_rcpt_result res[3] = {
		{250, NULL, "250 2.1.5 ok"},
		{550, "5.1.1", "550 5.1.1 <b@[192.0.2.10]> no such user"},
		{250, NULL, "250 2.1.5 ok"}};
	CU_ASSERT_EQUAL(queue_txn_result(q, a->session, res, 3, T0 + SEC), 0);
	CU_ASSERT_EQUAL(R.delivered, 2);
	CU_ASSERT_EQUAL(R.bounced, 1);
	CU_ASSERT_EQUAL(R.bounced_idx[0], 1);
	CU_ASSERT_EQUAL(R.dsn, 1);
	CU_ASSERT_EQUAL(R.done, 1);
	CU_ASSERT_STRING_EQUAL(R.dsn_rcpt, "dev@fleet.example");
	CU_ASSERT_PTR_NOT_NULL_FATAL(R.dsn_text);
	CU_ASSERT_PTR_NOT_NULL(strstr(R.dsn_text, "Final-Recipient: rfc822; b@[192.0.2.10]"));
	CU_ASSERT_PTR_NULL(strstr(R.dsn_text, "Final-Recipient: rfc822; a@"));
	CU_ASSERT_PTR_NULL(strstr(R.dsn_text, "Final-Recipient: rfc822; c@"));
	CU_ASSERT_PTR_NOT_NULL(strstr(R.dsn_text, "Status: 5.1.1"));
	CU_ASSERT_PTR_NOT_NULL(strstr(R.dsn_text, "Remote-MTA: dns; mx.lit"));
	CU_ASSERT_PTR_NOT_NULL(strstr(
		R.dsn_text, "Diagnostic-Code: smtp; 550 5.1.1 <b@[192.0.2.10]> no such user"));
	CU_ASSERT_PTR_NOT_NULL(strstr(R.dsn_text, "Subject: temperature alarm"));
	queue_destroy(q);
}

static void test_no_bounce_to_null_sender(void)
{
	struct queue_config c;
	struct queue_counters k;
	cfg_init(&c);
	struct queue *q = mkq(&c);
	CU_ASSERT_EQUAL(queue_submit(q, desc_for(&c, "", ONE_LIT, 1, 0, 0, 1), 0, T0), 0);
	pollq(q, T0);
	queue_conn_up(q, need_act(QUEUE_ACT_CONNECT)->session, "h", 1, 25, T0);
	pollq(q, T0);
	CU_ASSERT_EQUAL(result_all(q, need_act(QUEUE_ACT_SEND), 550, "550 no", T0), 0);
	CU_ASSERT_EQUAL(R.bounced, 1);
	CU_ASSERT_EQUAL(R.dsn, 0);
	CU_ASSERT_EQUAL(R.done, 1);
	queue_get_counters(q, &k);
	CU_ASSERT_EQUAL(k.dsn_null_sender_dropped, 1);
	CU_ASSERT_EQUAL(k.dsn_sent, 0);
	queue_destroy(q);
}

static void test_notify_never(void)
{
	struct queue_config c;
	struct queue_counters k;
	cfg_init(&c);
	struct queue *q = mkq(&c);
	CU_ASSERT_EQUAL(
		queue_submit(q, desc_for(&c, "s@f", ONE_LIT, 1, SPOOL_NOTIFY_NEVER, 0, 1), 0, T0),
		0);
	pollq(q, T0);
	queue_conn_up(q, need_act(QUEUE_ACT_CONNECT)->session, "h", 1, 25, T0);
	pollq(q, T0);
	CU_ASSERT_EQUAL(result_all(q, need_act(QUEUE_ACT_SEND), 554, "554 rejected", T0), 0);
	CU_ASSERT_EQUAL(R.bounced, 1);
	CU_ASSERT_EQUAL(R.dsn, 0);
	queue_get_counters(q, &k);
	CU_ASSERT_EQUAL(k.dsn_suppressed, 1);
	queue_destroy(q);
}

static void test_notify_success(void)
{
	struct queue_config c;
	cfg_init(&c);
	struct queue *q = mkq(&c);
	CU_ASSERT_EQUAL(queue_submit(q,
				     desc_for(&c, "s@f", ONE_LIT, 1,
					      SPOOL_NOTIFY_SUCCESS | SPOOL_NOTIFY_FAILURE, 0, 1),
				     0, T0),
			0);
	pollq(q, T0);
	queue_conn_up(q, need_act(QUEUE_ACT_CONNECT)->session, "h", 1, 25, T0);
	pollq(q, T0);
	CU_ASSERT_EQUAL(result_all(q, need_act(QUEUE_ACT_SEND), 250, "250 2.0.0 ok", T0), 0);
	CU_ASSERT_EQUAL(R.dsn, 1);
	CU_ASSERT_PTR_NOT_NULL_FATAL(R.dsn_text);
	CU_ASSERT_PTR_NOT_NULL(strstr(R.dsn_text, "Action: delivered"));
	CU_ASSERT_PTR_NOT_NULL(strstr(R.dsn_text, "Status: 2.0.0"));
	CU_ASSERT_PTR_NOT_NULL(strstr(R.dsn_text, "Subject: Successful Mail Delivery Report"));
	queue_destroy(q);
}

static void test_notify_delay(void)
{
	struct queue_config c;
	cfg_init(&c);
	struct queue *q = mkq(&c);
	CU_ASSERT_EQUAL(queue_submit(q,
				     desc_for(&c, "s@f", ONE_LIT, 1,
					      SPOOL_NOTIFY_DELAY | SPOOL_NOTIFY_FAILURE, 0, 1),
				     0, T0),
			0);
	pollq(q, T0);
	queue_conn_up(q, need_act(QUEUE_ACT_CONNECT)->session, "h", 1, 25, T0);
	pollq(q, T0);
	struct queue_action a = *need_act(QUEUE_ACT_SEND);
	CU_ASSERT_EQUAL(result_all(q, &a, 450, "450 4.2.1 busy", T0), 0);
	CU_ASSERT_EQUAL(R.dsn, 1);
	CU_ASSERT_PTR_NOT_NULL_FATAL(R.dsn_text);
	CU_ASSERT_PTR_NOT_NULL(strstr(R.dsn_text, "Action: delayed"));
	CU_ASSERT_PTR_NOT_NULL(strstr(R.dsn_text, "Will-Retry-Until: "));
	/* Only the first deferral sends one. */
	pollq(q, T0 + 60 * SEC);
	const struct queue_action *s = find_act(QUEUE_ACT_SEND);
	const struct queue_action *cn = find_act(QUEUE_ACT_CONNECT);
	if (cn) {
		queue_conn_up(q, cn->session, "h", 1, 25, T0 + 60 * SEC);
		pollq(q, T0 + 60 * SEC);
		s = find_act(QUEUE_ACT_SEND);
	}
	CU_ASSERT_PTR_NOT_NULL_FATAL(s);
	a = *s;
	CU_ASSERT_EQUAL(result_all(q, &a, 450, "450 4.2.1 busy", T0 + 60 * SEC), 0);
	CU_ASSERT_EQUAL(R.dsn, 1);
	queue_destroy(q);
}

static void test_route_failures(void)
{
	struct queue_config c;
	struct dns_mail_route r = {0};
	struct queue_dest_info di;
	const char *const two[] = {"a@nomail.example", "b@nomail.example"};
	cfg_init(&c);
	struct queue *q = mkq(&c);
	CU_ASSERT_EQUAL(queue_submit(q, desc_for(&c, "s@f", two, 2, 0, 0, 1), 0, T0), 0);
	pollq(q, T0);
	uint64_t dest = need_act(QUEUE_ACT_RESOLVE)->dest;
	r.result = DNS_MAIL_PERMFAIL;
	r.reply = 556;
	snprintf(r.status, sizeof(r.status), "5.1.10");
	r.reason = "Recipient address has null MX";
	CU_ASSERT_EQUAL(queue_route_result(q, dest, &r, T0), 0);
	CU_ASSERT_EQUAL(R.bounced, 2);
	CU_ASSERT_EQUAL(R.dsn, 1);
	CU_ASSERT_PTR_NOT_NULL(R.dsn_text ? strstr(R.dsn_text, "Status: 5.1.10") : NULL);
	CU_ASSERT_PTR_NOT_NULL(R.dsn_text ? strstr(R.dsn_text, "null MX") : NULL);
	CU_ASSERT_EQUAL(queue_route_result(q, dest, &r, T0), -ENOENT); /* freed */

	CU_ASSERT_EQUAL(queue_submit(q, desc_for(&c, "s@f", ONE_DOM, 1, 0, 0, 2), 0, T0), 0);
	pollq(q, T0);
	dest = need_act(QUEUE_ACT_RESOLVE)->dest;
	r.result = DNS_MAIL_TEMPFAIL;
	r.reply = 451;
	snprintf(r.status, sizeof(r.status), "4.4.3");
	r.reason = "DNS server failure";
	CU_ASSERT_EQUAL(queue_route_result(q, dest, &r, T0), 0);
	CU_ASSERT_EQUAL(R.deferred, 1);
	CU_ASSERT_TRUE(dest_info(q, "example.com", &di));
	CU_ASSERT_EQUAL(di.state, QUEUE_DS_BACKOFF);
	queue_destroy(q);
}

static void test_conn_lost_while_busy(void)
{
	struct queue_config c;
	struct queue_dest_info di;
	cfg_init(&c);
	struct queue *q = mkq(&c);
	struct queue_action a = send_one_literal(q, &c, T0, 1);
	CU_ASSERT_EQUAL(queue_conn_down(q, a.session, "reset by peer", T0 + SEC), 0);
	CU_ASSERT_EQUAL(R.deferred, 1);
	CU_ASSERT_EQUAL(R.next_retry_s, (T0 + 61 * SEC) / SEC);
	CU_ASSERT_EQUAL(queue_txn_result(q, a.session, NULL, 0, T0), -ENOENT);
	/* No backoff: it was a working connection. */
	if (dest_info(q, "[192.0.2.10]", &di))
		CU_ASSERT_EQUAL(di.backoff_us, 0);
	queue_destroy(q);
}

static void test_invalid_destination(void)
{
	struct queue_config c;
	const char *const bad[] = {"x@[IPv6:2001:db8::1]"};
	cfg_init(&c);
	struct queue *q = mkq(&c);
	CU_ASSERT_EQUAL(queue_submit(q, desc_for(&c, "s@f", bad, 1, 0, 0, 1), 0, T0), 0);
	CU_ASSERT_EQUAL(R.bounced, 1);
	CU_ASSERT_PTR_NOT_NULL(strstr(R.reason, "5.1.2"));
	CU_ASSERT_EQUAL(R.done, 1);
	CU_ASSERT_EQUAL(pollq(q, T0), 0);
	queue_destroy(q);
}

static void test_limits_txn_dest_session(void)
{
	struct queue_config c;
	struct queue_counters k;
	const char *const three[] = {"a@[192.0.2.10]", "b@[192.0.2.10]", "c@[192.0.2.10]"};
	const char *const other[] = {"x@[192.0.2.20]"};
	cfg_init(&c);
	c.max_transactions = 2;
	c.rcpts_per_txn = 1;
	struct queue *q = mkq(&c);
	struct queue_desc *d = desc_for(&c, "s@f", three, 3, 0, 0, 1);
	CU_ASSERT_EQUAL(queue_submit(q, d, 0, T0), -ENOBUFS);
	queue_desc_free(d);
	queue_get_counters(q, &k);
	CU_ASSERT_EQUAL(k.txn_limit_hits, 1);
	queue_destroy(q);

	cfg_init(&c);
	c.max_destinations = 1;
	c.max_sessions = 1;
	q = mkq(&c);
	CU_ASSERT_EQUAL(queue_submit(q, desc_for(&c, "s@f", ONE_LIT, 1, 0, 0, 1), 0, T0), 0);
	d = desc_for(&c, "s@f", other, 1, 0, 0, 2);
	CU_ASSERT_EQUAL(queue_submit(q, d, 0, T0), -ENOBUFS);
	queue_desc_free(d);
	queue_get_counters(q, &k);
	CU_ASSERT_EQUAL(k.dest_limit_hits, 1);
	queue_destroy(q);

	cfg_init(&c);
	c.max_sessions = 1;
	q = mkq(&c);
	CU_ASSERT_EQUAL(queue_submit(q, desc_for(&c, "s@f", ONE_LIT, 1, 0, 0, 1), 0, T0), 0);
	CU_ASSERT_EQUAL(queue_submit(q, desc_for(&c, "s@f", other, 1, 0, 0, 2), 0, T0), 0);
	pollq(q, T0);
	CU_ASSERT_EQUAL(count_act(QUEUE_ACT_CONNECT), 1);
	queue_get_counters(q, &k);
	CU_ASSERT_EQUAL(k.session_limit_hits, 1);
	uint64_t s = need_act(QUEUE_ACT_CONNECT)->session;
	queue_conn_up(q, s, "h", 1, 25, T0);
	pollq(q, T0);
	struct queue_action a = *need_act(QUEUE_ACT_SEND);
	CU_ASSERT_EQUAL(result_all(q, &a, 250, "250 ok", T0), 0);
	/*
	 * The other destination waits for the only slot, held by an idle
	 * session: it is closed at once (an eviction), not after idle_timeout.
	 */
	pollq(q, T0 + 1000);
	CU_ASSERT_EQUAL(count_act(QUEUE_ACT_CLOSE), 1);
	CU_ASSERT_EQUAL(count_act(QUEUE_ACT_CONNECT), 0); /* the slot is still in use */
	queue_get_counters(q, &k);
	CU_ASSERT_EQUAL(k.idle_evictions, 1);
	uint64_t closing = need_act(QUEUE_ACT_CLOSE)->session;
	pollq(q, T0 + 2000); /* one eviction per waiting destination, not one per turn */
	CU_ASSERT_EQUAL(count_act(QUEUE_ACT_CLOSE), 0);
	queue_get_counters(q, &k);
	CU_ASSERT_EQUAL(k.idle_evictions, 1);
	CU_ASSERT_EQUAL(queue_conn_closed(q, closing, T0 + 3000), 0);
	pollq(q, T0 + 3000); /* now it is free, for the other destination */
	CU_ASSERT_EQUAL(count_act(QUEUE_ACT_CONNECT), 1);
	queue_destroy(q);

	/* Nobody waits for a slot: an idle session stays until idle_timeout. */
	cfg_init(&c);
	c.max_sessions = 1;
	q = mkq(&c);
	a = send_one_literal(q, &c, T0, 1);
	CU_ASSERT_EQUAL(result_all(q, &a, 250, "250 ok", T0), 0);
	pollq(q, T0 + 1000);
	CU_ASSERT_EQUAL(count_act(QUEUE_ACT_CLOSE), 0);
	pollq(q, T0 + 5 * SEC);
	CU_ASSERT_EQUAL(count_act(QUEUE_ACT_CLOSE), 1);
	queue_get_counters(q, &k);
	CU_ASSERT_EQUAL(k.idle_evictions, 0);
	queue_destroy(q);
}

static void test_stale_handles(void)
{
	struct queue_config c;
	struct dns_mail_route r = {0};
	struct queue_rcpt_result res = {250, NULL, "ok"};
	cfg_init(&c);
	struct queue *q = mkq(&c);
	CU_ASSERT_EQUAL(queue_route_result(q, 12345, &r, T0), -ENOENT);
	CU_ASSERT_EQUAL(queue_conn_up(q, 0, "h", 1, 25, T0), -ENOENT);
	CU_ASSERT_EQUAL(queue_conn_down(q, ~0ull, "x", T0), -ENOENT);
	CU_ASSERT_EQUAL(queue_txn_result(q, 7, &res, 1, T0), -ENOENT);
	struct queue_action a = send_one_literal(q, &c, T0, 1);
	CU_ASSERT_EQUAL(queue_txn_result(q, a.session, &res, 2, T0), -EINVAL);
	CU_ASSERT_EQUAL(queue_conn_up(q, a.session, "h", 1, 25, T0), -ENOENT); /* not connecting */
	CU_ASSERT_EQUAL(queue_submit(q, NULL, 0, T0), -EINVAL);
	queue_destroy(q);
}

static void test_delayed_submit_and_heap_order(void)
{
	struct queue_config c;
	cfg_init(&c);
	c.max_connections = 1000;
	struct queue *q = mkq(&c);
	char addr[200][40];
	const char *p[1];
	/* Recovered deferred messages with scattered retry times come out in order. */
	for (int i = 0; i < 200; i++) {
		snprintf(addr[i], sizeof(addr[i]), "u@[192.0.2.%d]", 1 + (i * 37) % 200);
		p[0] = addr[i];
		int64_t when = T0 + (int64_t)((i * 7919) % 200 + 1) * SEC;
		CU_ASSERT_EQUAL(queue_submit(q, desc_for(&c, "s@f", p, 1, 0, 0, i), when, T0), 0);
	}
	CU_ASSERT_EQUAL(pollq(q, T0), 0);
	int total = 0;
	int64_t last = T0;
	for (int guard = 0; guard < 400 && total < 200; guard++) {
		int64_t next = queue_next_timer(q);
		CU_ASSERT_FATAL(next >= last);
		last = next;
		total += pollq(q, next);
	}
	CU_ASSERT_EQUAL(total, 200);
	CU_ASSERT_EQUAL(last, T0 + 200 * SEC);
	queue_destroy(q);
}

static void test_recovered_not_before(void)
{
	struct queue_config c;
	struct spool_rcpt r[] = {{"a@[192.0.2.10]", NULL, 0}, {"b@[192.0.2.10]", NULL, 0}};
	struct spool_rcpt_status st[] = {{SPOOL_RCPT_DELIVERED, 0, NULL},
					 {SPOOL_RCPT_DEFERRED, 0, "451 later"}};
	struct spool_envelope env = {
		.sender = "s@f", .rcpts = r, .rcpt_count = 2, .arrival_us = T0};
	struct queue_desc *d[2];
	cfg_init(&c);
	struct queue *q = mkq(&c);
	CU_ASSERT_EQUAL_FATAL(queue_split(&c, 5, &env, st, NULL, 10, d, 2), 1);
	CU_ASSERT_EQUAL(queue_submit(q, d[0], T0 + 30 * SEC, T0), 0);
	CU_ASSERT_EQUAL(pollq(q, T0), 0);
	CU_ASSERT_EQUAL(queue_next_timer(q), T0 + 30 * SEC);
	CU_ASSERT_EQUAL(pollq(q, T0 + 30 * SEC), 1);
	queue_conn_up(q, need_act(QUEUE_ACT_CONNECT)->session, "h", 1, 25, T0 + 30 * SEC);
	pollq(q, T0 + 30 * SEC);
	const struct queue_action *a = need_act(QUEUE_ACT_SEND);
	CU_ASSERT_EQUAL_FATAL(a->txn->rcpt_count, 1);
	CU_ASSERT_EQUAL(a->txn->desc->rcpts[a->txn->rcpt[0]].index, 1);
	CU_ASSERT_STRING_EQUAL(a->txn->desc->rcpts[a->txn->rcpt[0]].addr, "b@[192.0.2.10]");
	CU_ASSERT_EQUAL(result_all(q, a, 250, "250 ok", T0 + 31 * SEC), 0);
	CU_ASSERT_EQUAL(R.delivered, 1);
	CU_ASSERT_EQUAL(R.done, 1);
	queue_destroy(q);
}

static void test_expired_while_backed_off(void)
{
	struct queue_config c;
	struct queue_counters k;
	cfg_init(&c);
	c.max_age_us = 10 * 60 * SEC;
	c.backoff_initial_us = 20 * 60 * SEC;
	struct queue *q = mkq(&c);
	CU_ASSERT_EQUAL(queue_submit(q, desc_for(&c, "s@f", ONE_LIT, 1, 0, 0, 1), 0, T0), 0);
	pollq(q, T0);
	CU_ASSERT_EQUAL(queue_conn_down(q, need_act(QUEUE_ACT_CONNECT)->session, "refused", T0), 0);
	/* Deferred to the backoff's end, but never past its expiry. */
	CU_ASSERT_EQUAL(R.next_retry_s, (T0 + 10 * 60 * SEC) / SEC);
	CU_ASSERT_EQUAL(queue_submit(q, desc_for(&c, "s@f", ONE_LIT, 1, 0, 0, 2), 0, T0 + SEC), 0);
	CU_ASSERT_EQUAL(pollq(q, T0 + 10 * 60 * SEC), 0);
	CU_ASSERT_EQUAL(R.bounced, 1);			  /* from the retry timer */
	CU_ASSERT_EQUAL(pollq(q, T0 + 20 * 60 * SEC), 0); /* no connection for an expired one */
	CU_ASSERT_EQUAL(R.bounced, 2);			  /* from the FIFO */
	CU_ASSERT_EQUAL(R.dsn, 2);
	queue_get_counters(q, &k);
	CU_ASSERT_EQUAL(k.expired, 2);
	CU_ASSERT_EQUAL(k.conns_opened, 1);
	queue_destroy(q);
}

/* ---- DSN ----------------------------------------------------------------------------- */

static long mem_reader(void *arg, uint64_t off, void *buf, size_t len)
{
	const char *s = arg;
	size_t n = strlen(s);
	if (off >= n)
		return 0;
	if (len > n - off)
		len = n - off;
	memcpy(buf, s + off, len);
	return (long)len;
}

static long fail_reader(void *arg, uint64_t off, void *buf, size_t len)
{
	(void)arg, (void)off, (void)buf, (void)len;
	return -EIO;
}

static unsigned count_str(const char *hay, const char *needle)
{
	unsigned n = 0;
	for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle))
		n++;
	return n;
}

/* Every line ends in CRLF and is shorter than 998 octets (RFC 5322 2.1.1). */
static bool lines_ok(const char *s, size_t len)
{
	size_t col = 0;
	for (size_t i = 0; i < len; i++) {
		if (s[i] == '\n') {
			if (i == 0 || s[i - 1] != '\r')
				return false;
			col = 0;
		} else if (s[i] == '\r' && (i + 1 >= len || s[i + 1] != '\n')) {
			return false;
		} else if (++col >= 998) {
			return false;
		}
	}
	return col == 0;
}

static void dsn_params(struct queue_dsn_params *p, struct queue_dsn_rcpt *r, const char *body)
{
	memset(p, 0, sizeof(*p));
	memset(r, 0, 2 * sizeof(*r));
	r[0] = (struct queue_dsn_rcpt){
		"bad@example.com", "rfc822;Bad+2Bx@example.com",
		QUEUE_DSN_FAILED,  "5.1.1",
		"mx.example.com",  "550 5.1.1 <bad@example.com>: Recipient address rejected",
		T0 + 5 * SEC,	   0};
	r[1] = (struct queue_dsn_rcpt){
		"slow@example.org", NULL, QUEUE_DSN_FAILED, "4.4.7", NULL, NULL, 0, 0};
	p->reporting_mta = "relay.test";
	p->sender = "dev@fleet.example";
	p->envid = "ENV42";
	p->ret = SPOOL_RET_HDRS;
	p->orig_id = "0123456789AB";
	p->arrival_us = T0;
	p->now_us = T0 + 10 * SEC;
	p->rcpts = r;
	p->rcpt_count = 2;
	p->reader = mem_reader;
	p->reader_arg = (void *)body;
	p->body_len = strlen(body);
	p->max_full_bytes = 1 << 20;
	p->max_header_bytes = 64 << 10;
	p->unique = 0xabcdef;
}

static void test_dsn_structure(void)
{
	struct queue_dsn_params p;
	struct queue_dsn_rcpt r[2];
	char *m = NULL;
	size_t len = 0;
	dsn_params(&p, r, BODY);
	CU_ASSERT_EQUAL_FATAL(queue_dsn_build(&p, &m, &len), 0);
	CU_ASSERT_EQUAL(strlen(m), len);
	CU_ASSERT_TRUE(lines_ok(m, len));
	CU_ASSERT_PTR_NOT_NULL(
		strstr(m, "Content-Type: multipart/report; report-type=delivery-status;"));
	CU_ASSERT_PTR_NOT_NULL(
		strstr(m, "From: Mail Delivery System <MAILER-DAEMON@relay.test>\r\n"));
	CU_ASSERT_PTR_NOT_NULL(strstr(m, "To: <dev@fleet.example>\r\n"));
	CU_ASSERT_PTR_NOT_NULL(strstr(m, "Date: Tue, 14 Nov 2023 22:13:30 +0000\r\n"));
	CU_ASSERT_PTR_NOT_NULL(strstr(m, "Message-ID: <"));
	CU_ASSERT_PTR_NOT_NULL(strstr(m, "Auto-Submitted: auto-replied\r\n"));
	/* boundary: declared once, 3 part delimiters, one close delimiter */
	const char *b = strstr(m, "boundary=\"");
	CU_ASSERT_PTR_NOT_NULL_FATAL(b);
	char bnd[100], delim[110], close[112];
	sscanf(b + 10, "%99[^\"]", bnd);
	snprintf(delim, sizeof(delim), "\r\n--%s\r\n", bnd);
	snprintf(close, sizeof(close), "\r\n--%s--\r\n", bnd);
	CU_ASSERT_EQUAL(count_str(m, delim), 3);
	CU_ASSERT_EQUAL(count_str(m, close), 1);
	CU_ASSERT_STRING_EQUAL(m + len - strlen(close), close);
	CU_ASSERT_PTR_NOT_NULL(strstr(m, "Content-Type: message/delivery-status\r\n\r\n"
					 "Reporting-MTA: dns; relay.test\r\n"));
	CU_ASSERT_PTR_NOT_NULL(strstr(m, "Original-Envelope-Id: ENV42\r\n"));
	CU_ASSERT_PTR_NOT_NULL(strstr(m, "Arrival-Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n"));
	CU_ASSERT_PTR_NOT_NULL(strstr(m, "\r\n\r\nFinal-Recipient: rfc822; bad@example.com\r\n"
					 "Original-Recipient: rfc822;Bad+x@example.com\r\n"
					 "Action: failed\r\nStatus: 5.1.1\r\n"
					 "Remote-MTA: dns; mx.example.com\r\n"
					 "Diagnostic-Code: smtp; 550 5.1.1 <bad@example.com>: "
					 "Recipient address rejected\r\n"
					 "Last-Attempt-Date: Tue, 14 Nov 2023 22:13:25 +0000\r\n"));
	CU_ASSERT_PTR_NOT_NULL(strstr(m, "\r\n\r\nFinal-Recipient: rfc822; slow@example.org\r\n"
					 "Action: failed\r\nStatus: 4.4.7\r\n"));
	const char *h = strstr(m, "Content-Type: text/rfc822-headers\r\n\r\n");
	CU_ASSERT_PTR_NOT_NULL_FATAL(h);
	CU_ASSERT_PTR_NOT_NULL(strstr(h, "Subject: temperature alarm\r\n"));
	CU_ASSERT_PTR_NULL(strstr(h, "sensor 7")); /* headers only */
	free(m);
}

static void test_dsn_ret_full_and_cap(void)
{
	struct queue_dsn_params p;
	struct queue_dsn_rcpt r[2];
	char *m = NULL;
	size_t len = 0;
	dsn_params(&p, r, BODY);
	p.ret = SPOOL_RET_FULL;
	CU_ASSERT_EQUAL_FATAL(queue_dsn_build(&p, &m, &len), 0);
	CU_ASSERT_PTR_NOT_NULL(strstr(m, "Content-Type: message/rfc822\r\n\r\nReceived: from dev"));
	CU_ASSERT_PTR_NOT_NULL(strstr(m, "sensor 7 is over 80C\r\n"));
	free(m);
	p.max_full_bytes = 10; /* too big to return in full: headers only, and a note */
	CU_ASSERT_EQUAL_FATAL(queue_dsn_build(&p, &m, &len), 0);
	CU_ASSERT_PTR_NULL(strstr(m, "message/rfc822"));
	CU_ASSERT_PTR_NOT_NULL(strstr(m, "text/rfc822-headers"));
	CU_ASSERT_PTR_NOT_NULL(strstr(m, "too large"));
	CU_ASSERT_PTR_NULL(strstr(m, "sensor 7"));
	free(m);
	p.max_header_bytes = 20; /* the headers part is bounded too */
	CU_ASSERT_EQUAL_FATAL(queue_dsn_build(&p, &m, &len), 0);
	CU_ASSERT_PTR_NULL(strstr(m, "Subject: temperature"));
	CU_ASSERT_TRUE(lines_ok(m, len));
	free(m);
}

static void test_dsn_long_lines_and_injection(void)
{
	struct queue_dsn_params p;
	struct queue_dsn_rcpt r[2];
	char *m = NULL, *body;
	size_t len = 0;
	body = malloc(20000);
	strcpy(body, "Subject: ");
	memset(body + 9, 'x', 5000);
	strcpy(body + 5009, "\nX-Bare: lf\r\n\r\n");
	size_t n = strlen(body);
	memset(body + n, 'y', 6000);
	strcpy(body + n + 6000, "\rbare cr\n");
	dsn_params(&p, r, body);
	r[0].diagnostic = "550 nope\r\nBcc: victim@example.net\r\n\r\n--fake";
	r[0].addr = "bad@example.com\r\nX-Evil: 1";
	p.ret = SPOOL_RET_FULL;
	CU_ASSERT_EQUAL_FATAL(queue_dsn_build(&p, &m, &len), 0);
	CU_ASSERT_TRUE(lines_ok(m, len));
	CU_ASSERT_PTR_NULL(strstr(m, "\r\nBcc:"));
	CU_ASSERT_PTR_NULL(strstr(m, "\r\nX-Evil:"));
	CU_ASSERT_PTR_NOT_NULL(strstr(m, "\r\nX-Bare: lf\r\n"));
	CU_ASSERT_PTR_NOT_NULL(strstr(m, "\r\nbare cr\r\n"));
	CU_ASSERT(count_str(m, "xxxxxxxxxx") >= 495); /* the long line is kept, only broken */
	free(m);
	free(body);
}

static void test_dsn_errors(void)
{
	struct queue_dsn_params p;
	struct queue_dsn_rcpt r[2];
	char *m = NULL;
	size_t len = 0;
	dsn_params(&p, r, BODY);
	p.reader = fail_reader;
	CU_ASSERT_EQUAL(queue_dsn_build(&p, &m, &len), -EIO);
	CU_ASSERT_PTR_NULL(m);
	dsn_params(&p, r, BODY);
	p.sender = "";
	CU_ASSERT_EQUAL(queue_dsn_build(&p, &m, &len), -EINVAL);
	dsn_params(&p, r, BODY);
	p.rcpt_count = 0;
	CU_ASSERT_EQUAL(queue_dsn_build(&p, &m, &len), -EINVAL);
	dsn_params(&p, r, BODY);
	p.reader = NULL; /* no original: two parts */
	CU_ASSERT_EQUAL_FATAL(queue_dsn_build(&p, &m, &len), 0);
	CU_ASSERT_PTR_NULL(strstr(m, "rfc822-headers"));
	free(m);
}

static void test_rfc5322_date(void)
{
	char buf[64];
	queue_rfc5322_date(0, buf, sizeof(buf));
	CU_ASSERT_STRING_EQUAL(buf, "Thu, 1 Jan 1970 00:00:00 +0000");
	queue_rfc5322_date(T0, buf, sizeof(buf));
	CU_ASSERT_STRING_EQUAL(buf, "Tue, 14 Nov 2023 22:13:20 +0000");
	queue_rfc5322_date(1709164800LL * SEC, buf, sizeof(buf)); /* leap day 2024 */
	CU_ASSERT_STRING_EQUAL(buf, "Thu, 29 Feb 2024 00:00:00 +0000");
}

/* ---- log line ------------------------------------------------------------------------- */

static void test_log_line_format(void)
{
	char buf[600];
	struct queue_log_info li = {.id = "0123456789AB",
				    .rcpt = "ops@example.com",
				    .relay_host = "mx.example.com",
				    .relay_addr = 0xc0000205,
				    .relay_port = 25,
				    .delay = 1.234,
				    .delays = {0.013, 0, 0.5, 0.72},
				    .dsn = "2.0.0",
				    .status = "sent",
				    .reply = "250 2.0.0 Ok: queued as X"};
	int n = queue_log_line(buf, sizeof(buf), &li);
	CU_ASSERT_STRING_EQUAL(buf, "0123456789AB: to=<ops@example.com>, "
				    "relay=mx.example.com[192.0.2.5]:25, delay=1.2, "
				    "delays=0.013/0/0.5/0.72, dsn=2.0.0, status=sent "
				    "(250 2.0.0 Ok: queued as X)");
	CU_ASSERT_EQUAL(n, (int)strlen(buf));
	struct queue_log_info l2 = {.id = "ID",
				    .rcpt = "a@b",
				    .orcpt = "rfc822;Alias@b",
				    .delay = 12345.6,
				    .delays = {0.001, 12.7, 0, 0},
				    .dsn = "4.4.1",
				    .status = "deferred",
				    .reply = "connect to b: Connection\r\nrefused"};
	queue_log_line(buf, sizeof(buf), &l2);
	CU_ASSERT_STRING_EQUAL(buf, "ID: to=<a@b>, orig_to=<Alias@b>, relay=none, delay=12346, "
				    "delays=0/13/0/0, dsn=4.4.1, status=deferred "
				    "(connect to b: Connection refused)");
	CU_ASSERT(queue_log_line(buf, 10, &li) > 10); /* truncation reported */
	CU_ASSERT_EQUAL(strlen(buf), 9);
}

static void test_counters_and_foreach(void)
{
	struct queue_config c;
	struct queue_counters k;
	struct queue_dest_info di;
	cfg_init(&c);
	struct queue *q = mkq(&c);
	struct queue_action a = send_one_literal(q, &c, T0, 1);
	CU_ASSERT_TRUE(dest_info(q, "[192.0.2.10]", &di));
	CU_ASSERT_EQUAL(di.kind, QUEUE_DEST_LITERAL);
	CU_ASSERT_EQUAL(di.c.in_flight, 1);
	CU_ASSERT_EQUAL(di.sessions, 1);
	CU_ASSERT_EQUAL(result_all(q, &a, 451, "451 later", T0), 0);
	queue_get_counters(q, &k);
	CU_ASSERT_EQUAL(k.deferred, 1);
	CU_ASSERT_EQUAL(k.queued, 1); /* on the retry timer */
	CU_ASSERT_EQUAL(k.in_flight, 0);
	CU_ASSERT_EQUAL(k.txns, 1);
	CU_ASSERT_EQUAL(k.dests, 1);
	CU_ASSERT_TRUE(dest_info(q, "[192.0.2.10]", &di));
	CU_ASSERT_EQUAL(di.idle_sessions, 1);
	CU_ASSERT_EQUAL(di.c.deferred, 1);
	pollq(q, T0 + 5 * SEC); /* idle close: the destination waits for the transport */
	CU_ASSERT_TRUE(dest_info(q, "[192.0.2.10]", &di));
	CU_ASSERT_EQUAL(queue_conn_closed(q, need_act(QUEUE_ACT_CLOSE)->session, T0 + 5 * SEC), 0);
	pollq(q, T0 + 5 * SEC); /* closed: destination freed */
	CU_ASSERT_FALSE(dest_info(q, "[192.0.2.10]", &di));
	queue_get_counters(q, &k);
	CU_ASSERT_EQUAL(k.dests, 0);
	CU_ASSERT_EQUAL(k.conns_open, 0);
	queue_destroy(q); /* frees the deferred descriptor (ASan checks) */
}

/* ---- sample DSNs for tests/integration/dsn_python.sh ---------------------------------- */

static int write_file(const char *dir, const char *name, const char *data, size_t len)
{
	char path[512];
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	FILE *f = fopen(path, "wb");
	if (!f)
		return -1;
	size_t w = fwrite(data, 1, len, f);
	return fclose(f) == 0 && w == len ? 0 : -1;
}

static int write_dsns(const char *dir)
{
	struct queue_dsn_params p;
	struct queue_dsn_rcpt r[2];
	char *m;
	size_t len;
	int rc = 0;

	dsn_params(&p, r, BODY); /* failed, two recipients, headers */
	rc |= queue_dsn_build(&p, &m, &len) || write_file(dir, "failed_hdrs.eml", m, len);
	free(m);
	dsn_params(&p, r, BODY);
	p.ret = SPOOL_RET_FULL;
	rc |= queue_dsn_build(&p, &m, &len) || write_file(dir, "failed_full.eml", m, len);
	free(m);
	dsn_params(&p, r, BODY);
	p.rcpt_count = 1;
	r[0].action = QUEUE_DSN_DELIVERED;
	r[0].status = "2.0.0";
	r[0].diagnostic = "250 2.0.0 Ok: queued as 7F3A";
	rc |= queue_dsn_build(&p, &m, &len) || write_file(dir, "success.eml", m, len);
	free(m);
	dsn_params(&p, r, BODY);
	p.rcpt_count = 1;
	r[0].action = QUEUE_DSN_DELAYED;
	r[0].status = "4.2.2";
	r[0].diagnostic = "452 4.2.2 mailbox full";
	r[0].will_retry_until_us = T0 + 5 * 86400 * SEC;
	rc |= queue_dsn_build(&p, &m, &len) || write_file(dir, "delayed.eml", m, len);
	free(m);
	return rc ? 1 : 0;
}

/* ---- operator requests: flush, suspend, reconfigure --------------------------------- */

static int count_retry_cb(void *arg, const char *dest, uint32_t rcpts, int64_t when)
{
	int *n = arg;
	(void)when;
	if (strcmp(dest, "[192.0.2.10]") == 0)
		*n += (int)rcpts;
	return 0;
}

static void test_flush_retries_now(void)
{
	struct queue_config c;
	struct queue_dest_info di;
	cfg_init(&c);
	struct queue *q = mkq(&c);
	CU_ASSERT_EQUAL(queue_submit(q, desc_for(&c, "s@f", ONE_LIT, 1, 0, 0, 1), 0, T0), 0);
	pollq(q, T0);
	uint64_t s = need_act(QUEUE_ACT_CONNECT)->session;
	CU_ASSERT_EQUAL(queue_conn_down(q, s, "refused", T0), 0);
	CU_ASSERT_TRUE(dest_info(q, "[192.0.2.10]", &di));
	CU_ASSERT_EQUAL(di.state, QUEUE_DS_BACKOFF);
	int waiting = 0;
	CU_ASSERT_EQUAL(queue_retry_foreach(q, count_retry_cb, &waiting), 0);
	CU_ASSERT_EQUAL(waiting, 1);
	CU_ASSERT_EQUAL(pollq(q, T0 + SEC), 0); /* still waiting for 60 s */
	CU_ASSERT_EQUAL(queue_flush(q, "nosuch.example", T0 + SEC), -ENOENT);
	CU_ASSERT(queue_flush(q, "[192.0.2.10]", T0 + SEC) >= 1);
	CU_ASSERT_TRUE(dest_info(q, "[192.0.2.10]", &di));
	CU_ASSERT_EQUAL(di.backoff_us, 60 * SEC); /* kept: a new failure doubles it */
	CU_ASSERT_EQUAL(pollq(q, T0 + SEC), 1);
	CU_ASSERT_EQUAL(count_act(QUEUE_ACT_CONNECT), 1);
	waiting = 0;
	queue_retry_foreach(q, count_retry_cb, &waiting);
	CU_ASSERT_EQUAL(waiting, 0);
	/* flush of everything with nothing waiting: no error */
	CU_ASSERT(queue_flush(q, NULL, T0 + SEC) >= 0);
	queue_destroy(q);
}

static void test_suspend_resume(void)
{
	struct queue_config c;
	struct queue_dest_info di;
	cfg_init(&c);
	struct queue *q = mkq(&c);
	CU_ASSERT_EQUAL(queue_suspend(q, "[192.0.2.10]", false, T0), -ENOENT);
	CU_ASSERT_EQUAL(queue_suspend(q, "[192.0.2.10]", true, T0), 0);
	CU_ASSERT_TRUE(dest_info(q, "[192.0.2.10]", &di));
	CU_ASSERT_TRUE(di.suspended);
	CU_ASSERT_EQUAL(di.kind, QUEUE_DEST_LITERAL);
	/* Held: kept while idle, and mail for it waits. */
	CU_ASSERT_EQUAL(pollq(q, T0 + 3600 * SEC), 0);
	CU_ASSERT_TRUE(dest_info(q, "[192.0.2.10]", &di));
	CU_ASSERT_EQUAL(queue_submit(q, desc_for(&c, "s@f", ONE_LIT, 1, 0, 0, 1), 0, T0), 0);
	CU_ASSERT_EQUAL(pollq(q, T0 + 3600 * SEC), 0);
	CU_ASSERT_TRUE(dest_info(q, "[192.0.2.10]", &di));
	CU_ASSERT_EQUAL(di.fifo_len, 1);
	/* Other destinations are not held. */
	CU_ASSERT_EQUAL(queue_submit(q, desc_for(&c, "s@f", ONE_DOM, 1, 0, 0, 2), 0, T0), 0);
	CU_ASSERT_EQUAL(pollq(q, T0 + 3600 * SEC), 1);
	CU_ASSERT_EQUAL(count_act(QUEUE_ACT_RESOLVE), 1);
	/* Released: the waiting message goes. */
	CU_ASSERT_EQUAL(queue_suspend(q, "[192.0.2.10]", false, T0 + 3600 * SEC), 0);
	CU_ASSERT_EQUAL(pollq(q, T0 + 3600 * SEC), 1);
	CU_ASSERT_EQUAL(count_act(QUEUE_ACT_CONNECT), 1);
	queue_destroy(q);
}

/* "*": every destination held, one that appears while held too; release sends them all. */
static void test_hold_all(void)
{
	struct queue_config c;
	struct queue_dest_info di;
	cfg_init(&c);
	struct queue *q = mkq(&c);
	CU_ASSERT_EQUAL(queue_submit(q, desc_for(&c, "s@f", ONE_LIT, 1, 0, 0, 1), 0, T0), 0);
	CU_ASSERT_EQUAL(queue_suspend(q, QUEUE_HOLD_ALL, true, T0), 0);
	CU_ASSERT_EQUAL(queue_submit(q, desc_for(&c, "s@f", ONE_DOM, 1, 0, 0, 2), 0, T0), 0);
	CU_ASSERT_EQUAL(pollq(q, T0 + 3600 * SEC), 0);
	CU_ASSERT_TRUE(dest_info(q, "[192.0.2.10]", &di));
	CU_ASSERT_TRUE(di.suspended);
	CU_ASSERT_EQUAL(di.fifo_len, 1);
	/* One held on its own stays held after the release of "*". */
	CU_ASSERT_EQUAL(queue_suspend(q, "[192.0.2.10]", true, T0), 0);
	CU_ASSERT_EQUAL(queue_suspend(q, QUEUE_HOLD_ALL, false, T0 + 3600 * SEC), 0);
	CU_ASSERT_EQUAL(pollq(q, T0 + 3600 * SEC), 1);
	CU_ASSERT_EQUAL(count_act(QUEUE_ACT_RESOLVE), 1);
	CU_ASSERT_EQUAL(count_act(QUEUE_ACT_CONNECT), 0);
	CU_ASSERT_EQUAL(queue_suspend(q, "[192.0.2.10]", false, T0 + 3600 * SEC), 0);
	CU_ASSERT_EQUAL(pollq(q, T0 + 3600 * SEC), 1);
	CU_ASSERT_EQUAL(count_act(QUEUE_ACT_CONNECT), 1);
	queue_destroy(q);
}

/* initial_connections = 1: one probe connection until it is up, then up to max_connections. */
static void test_initial_connections(void)
{
	struct queue_config c;
	cfg_init(&c);
	c.max_connections = 3;
	c.initial_connections = 1;
	struct queue *q = mkq(&c);
	for (int i = 0; i < 20; i++)
		CU_ASSERT_EQUAL(
			queue_submit(q, desc_for(&c, "s@f", ONE_LIT, 1, 0, 0, 10 + i), 0, T0), 0);
	CU_ASSERT_EQUAL(pollq(q, T0), 1);
	uint64_t s = need_act(QUEUE_ACT_CONNECT)->session;
	CU_ASSERT_EQUAL(pollq(q, T0), 0); /* still connecting: no second one */
	CU_ASSERT_EQUAL(queue_conn_up(q, s, "h", 1, 25, T0), 0);
	pollq(q, T0);
	CU_ASSERT_EQUAL(count_act(QUEUE_ACT_SEND), 1);
	CU_ASSERT_EQUAL(count_act(QUEUE_ACT_CONNECT), 1); /* one up: one more connecting */
	s = need_act(QUEUE_ACT_CONNECT)->session;
	CU_ASSERT_EQUAL(queue_conn_up(q, s, "h", 1, 25, T0), 0);
	pollq(q, T0);
	CU_ASSERT_EQUAL(count_act(QUEUE_ACT_SEND), 1);
	CU_ASSERT_EQUAL(count_act(QUEUE_ACT_CONNECT), 1); /* max_connections (3) reached */
	/* A probe that fails backs the destination off after one attempt, not three. */
	struct queue_counters k;
	queue_get_counters(q, &k);
	CU_ASSERT_EQUAL(k.conns_opened, 3);
	queue_destroy(q);

	q = mkq(&c);
	CU_ASSERT_EQUAL(queue_submit(q, desc_for(&c, "s@f", ONE_LIT, 1, 0, 0, 1), 0, T0), 0);
	CU_ASSERT_EQUAL(queue_submit(q, desc_for(&c, "s@f", ONE_LIT, 1, 0, 0, 2), 0, T0), 0);
	CU_ASSERT_EQUAL(pollq(q, T0), 1);
	s = need_act(QUEUE_ACT_CONNECT)->session;
	CU_ASSERT_EQUAL(queue_conn_down(q, s, "refused", T0), 0);
	CU_ASSERT_EQUAL(pollq(q, T0 + SEC), 0);
	queue_get_counters(q, &k);
	CU_ASSERT_EQUAL(k.conns_opened, 1);
	queue_destroy(q);
}

/*
 * connection_budget: a destination's first connection is always made; more
 * only while fewer sessions than the budget are connecting or busy (idle ones
 * do not count); a session that takes no more mail may be replaced at once.
 */
static void test_connection_budget(void)
{
	static const char *const lit[3][1] = {
		{"a@[192.0.2.10]"}, {"b@[192.0.2.11]"}, {"c@[192.0.2.12]"}};
	struct queue_counters k;
	struct queue_config c;
	cfg_init(&c);
	CU_ASSERT_EQUAL(c.connection_budget, 100);
	c.max_connections = 3;
	c.connection_budget = 2;
	struct queue *q = mkq(&c);
	for (int i = 0; i < 30; i++)
		CU_ASSERT_EQUAL(
			queue_submit(q, desc_for(&c, "s@f", lit[i % 3], 1, 0, 0, 10 + i), 0, T0),
			0);
	pollq(q, T0);
	/*
	 * Every destination its first (3, over the budget of 2), and no second
	 * one: seconds are decided after the firsts.
	 */
	CU_ASSERT_EQUAL(count_act(QUEUE_ACT_CONNECT), 3);
	queue_get_counters(q, &k);
	CU_ASSERT_EQUAL(k.budget_hits, 3);
	CU_ASSERT_EQUAL(k.conns_open, 3);
	queue_destroy(q);

	/* Below the budget a destination opens more, up to max_connections. */
	c.connection_budget = 3;
	q = mkq(&c);
	for (int i = 0; i < 10; i++)
		CU_ASSERT_EQUAL(
			queue_submit(q, desc_for(&c, "s@f", lit[0], 1, 0, 0, 60 + i), 0, T0), 0);
	CU_ASSERT_EQUAL(queue_submit(q, desc_for(&c, "s@f", lit[1], 1, 0, 0, 70), 0, T0), 0);
	pollq(q, T0);
	CU_ASSERT_EQUAL(count_act(QUEUE_ACT_CONNECT), 3); /* [.10] 1 + [.11] 1, then [.10] 1 more */
	queue_get_counters(q, &k);
	CU_ASSERT_EQUAL(k.budget_hits, 1);
	queue_destroy(q);

	/* Idle sessions leave room in the budget. */
	c.connection_budget = 2;
	q = mkq(&c);
	CU_ASSERT_EQUAL(queue_submit(q, desc_for(&c, "s@f", lit[0], 1, 0, 0, 1), 0, T0), 0);
	for (int i = 0; i < 3; i++)
		CU_ASSERT_EQUAL(queue_submit(q, desc_for(&c, "s@f", lit[1], 1, 0, 0, 2 + i), 0, T0),
				0);
	pollq(q, T0);
	CU_ASSERT_EQUAL(count_act(QUEUE_ACT_CONNECT), 2); /* one each: the budget is full */
	uint64_t s0 = R.act[0].session, s1 = R.act[1].session;
	CU_ASSERT_EQUAL(queue_conn_up(q, s0, "h", 1, 25, T0), 0);
	CU_ASSERT_EQUAL(queue_conn_up(q, s1, "h", 1, 25, T0), 0);
	pollq(q, T0);
	CU_ASSERT_EQUAL(count_act(QUEUE_ACT_SEND), 2);
	CU_ASSERT_EQUAL(count_act(QUEUE_ACT_CONNECT), 0);
	struct queue_action a0 = R.act[0], a1 = R.act[1];
	if (a0.session != s0) {
		struct queue_action t = a0;
		a0 = a1;
		a1 = t;
	}
	CU_ASSERT_EQUAL(result_all(q, &a0, 250, "250 ok", T0), 0); /* [.10] idle */
	CU_ASSERT_EQUAL(pollq(q, T0), 0);
	CU_ASSERT_EQUAL(result_all(q, &a1, 250, "250 ok", T0), 0);
	pollq(q, T0);
	/* [.11] takes its next message and, with [.10] idle, opens a second connection. */
	CU_ASSERT_EQUAL(count_act(QUEUE_ACT_SEND), 1);
	CU_ASSERT_EQUAL(count_act(QUEUE_ACT_CONNECT), 1);
	queue_destroy(q);

	/* A session given its last message (messages_per_connection) is replaced at once. */
	c.connection_budget = 1;
	c.msgs_per_connection = 2;
	q = mkq(&c);
	for (int i = 0; i < 5; i++)
		CU_ASSERT_EQUAL(
			queue_submit(q, desc_for(&c, "s@f", lit[0], 1, 0, 0, 20 + i), 0, T0), 0);
	pollq(q, T0);
	CU_ASSERT_EQUAL(count_act(QUEUE_ACT_CONNECT), 1);
	CU_ASSERT_EQUAL(queue_conn_up(q, R.act[0].session, "h", 1, 25, T0), 0);
	pollq(q, T0);
	CU_ASSERT_EQUAL(count_act(QUEUE_ACT_SEND), 1);
	CU_ASSERT_EQUAL(count_act(QUEUE_ACT_CONNECT), 0); /* budget: no second */
	a0 = *need_act(QUEUE_ACT_SEND);
	CU_ASSERT_EQUAL(result_all(q, &a0, 250, "250 ok", T0), 0);
	pollq(q, T0);
	CU_ASSERT_EQUAL(count_act(QUEUE_ACT_SEND), 1); /* its second and last */
	CU_ASSERT_EQUAL(count_act(QUEUE_ACT_CONNECT), 1);
	queue_get_counters(q, &k);
	CU_ASSERT_EQUAL(k.conns_opened, 2);
	queue_destroy(q);

	/* 0: no budget, max_connections alone. */
	cfg_init(&c);
	c.max_connections = 3;
	c.connection_budget = 0;
	q = mkq(&c);
	for (int i = 0; i < 30; i++)
		CU_ASSERT_EQUAL(
			queue_submit(q, desc_for(&c, "s@f", lit[i % 3], 1, 0, 0, 40 + i), 0, T0),
			0);
	pollq(q, T0);
	CU_ASSERT_EQUAL(count_act(QUEUE_ACT_CONNECT), 9);
	queue_destroy(q);
}

static void test_reconfigure_limits(void)
{
	struct queue_config c, c2;
	cfg_init(&c);
	c.max_connections = 2;
	struct queue *q = mkq(&c);
	for (int i = 0; i < 10; i++)
		CU_ASSERT_EQUAL(
			queue_submit(q, desc_for(&c, "s@f", ONE_LIT, 1, 0, 0, 10 + i), 0, T0), 0);
	pollq(q, T0);
	CU_ASSERT_EQUAL(count_act(QUEUE_ACT_CONNECT), 2);
	c2 = c;
	c2.max_connections = 5;
	CU_ASSERT_EQUAL(queue_config_set_retry(&c2, "7s"), 0);
	queue_reconfigure(q, &c2);
	pollq(q, T0);
	CU_ASSERT_EQUAL(count_act(QUEUE_ACT_CONNECT), 3); /* up to the new limit */
	/* The new retry schedule applies to the next deferral. */
	uint64_t s = R.act[0].session;
	CU_ASSERT_EQUAL(queue_conn_up(q, s, "h", 1, 25, T0), 0);
	pollq(q, T0);
	const struct queue_action *a = need_act(QUEUE_ACT_SEND);
	CU_ASSERT_EQUAL(result_all(q, a, 451, "451 4.3.0 later", T0), 0);
	CU_ASSERT_EQUAL(R.next_retry_s, (T0 + 7 * SEC) / SEC);
	queue_destroy(q);
}

/* route_ttl = 0 and idle_timeout = 0 are allowed: they must deliver, not spin. */
static void test_zero_route_ttl_and_idle(void)
{
	struct queue_config c;
	struct dns_mail_route route = {0};
	cfg_init(&c);
	c.route_ttl_us = 0;
	c.idle_timeout_us = 0;
	struct queue *q = mkq(&c);
	CU_ASSERT_EQUAL(queue_submit(q, desc_for(&c, "s@f", ONE_DOM, 1, 0, 0, 1), 0, T0), 0);
	CU_ASSERT_EQUAL(queue_submit(q, desc_for(&c, "s@f", ONE_DOM, 1, 0, 0, 2), 0, T0), 0);
	pollq(q, T0);
	uint64_t dest = need_act(QUEUE_ACT_RESOLVE)->dest;
	route.result = DNS_MAIL_OK;
	route.host_count = 1;
	snprintf(route.hosts[0].name, sizeof(route.hosts[0].name), "mx.example.com");
	route.hosts[0].addr_count = 1;
	route.hosts[0].addrs[0] = 0xc0000205;
	CU_ASSERT_EQUAL(queue_route_result(q, dest, &route, T0), 0);
	pollq(q, T0);
	CU_ASSERT_EQUAL(count_act(QUEUE_ACT_RESOLVE), 0);
	CU_ASSERT(count_act(QUEUE_ACT_CONNECT) >= 1);
	uint64_t sess = need_act(QUEUE_ACT_CONNECT)->session;
	CU_ASSERT_EQUAL(queue_conn_up(q, sess, "mx.example.com", 0xc0000205, 25, T0 + 1), 0);
	pollq(q, T0 + 2);
	struct queue_action a = *need_act(QUEUE_ACT_SEND);
	CU_ASSERT_EQUAL(a.session, sess);
	CU_ASSERT_EQUAL(result_all(q, &a, 250, "250 ok", T0 + 3), 0);
	/* Idle with mail waiting: it takes the next message before any idle close. */
	pollq(q, T0 + 4);
	CU_ASSERT_EQUAL(count_act(QUEUE_ACT_CLOSE), 0);
	a = *need_act(QUEUE_ACT_SEND);
	CU_ASSERT_EQUAL(a.session, sess);
	CU_ASSERT_EQUAL(result_all(q, &a, 250, "250 ok", T0 + 5), 0);
	CU_ASSERT_EQUAL(R.delivered, 2);
	/* Nothing waits now: closed at once. */
	pollq(q, T0 + 6);
	CU_ASSERT_EQUAL(count_act(QUEUE_ACT_CLOSE), 1);
	queue_destroy(q);
}

/* A route is re-resolved when its DNS records expire, before [queue] route_ttl. */
static void test_route_ttl_from_dns(void)
{
	struct queue_config c;
	struct dns_mail_route route = {0};
	cfg_init(&c); /* route_ttl 60 s */
	c.idle_timeout_us = 0;
	struct queue *q = mkq(&c);
	CU_ASSERT_EQUAL(queue_submit(q, desc_for(&c, "s@f", ONE_DOM, 1, 0, 0, 1), 0, T0), 0);
	pollq(q, T0);
	uint64_t dest = need_act(QUEUE_ACT_RESOLVE)->dest;
	route.result = DNS_MAIL_OK;
	route.host_count = 1;
	route.ttl_s = 5;
	snprintf(route.hosts[0].name, sizeof(route.hosts[0].name), "mx.example.com");
	route.hosts[0].addr_count = 1;
	route.hosts[0].addrs[0] = 0xc0000205;
	CU_ASSERT_EQUAL(queue_route_result(q, dest, &route, T0), 0);
	pollq(q, T0);
	uint64_t sess = need_act(QUEUE_ACT_CONNECT)->session;
	CU_ASSERT_EQUAL(queue_conn_up(q, sess, "mx.example.com", 0xc0000205, 25, T0), 0);
	pollq(q, T0);
	struct queue_action a = *need_act(QUEUE_ACT_SEND);
	CU_ASSERT_EQUAL(result_all(q, &a, 250, "250 ok", T0), 0);
	pollq(q, T0); /* idle close */
	CU_ASSERT_EQUAL(queue_conn_closed(q, need_act(QUEUE_ACT_CLOSE)->session, T0), 0);
	/* 6 s later the records are gone: a new message resolves again. */
	CU_ASSERT_EQUAL(queue_submit(q, desc_for(&c, "s@f", ONE_DOM, 1, 0, 0, 2), 0, T0 + 6 * SEC),
			0);
	pollq(q, T0 + 6 * SEC);
	CU_ASSERT_EQUAL(count_act(QUEUE_ACT_RESOLVE), 1);
	CU_ASSERT_EQUAL(count_act(QUEUE_ACT_CONNECT), 0);
	queue_destroy(q);
}

/* ---- several transactions per session (queue_conn_depth, [queue] pipeline_depth) ---- */

static void submit_lit(struct queue *q, const struct queue_config *c, uint64_t id, int64_t now)
{
	CU_ASSERT_EQUAL(
		queue_submit(q, desc_for(c, "dev@fleet.example", ONE_LIT, 1, 0, 0, id), 0, now), 0);
}

/* Copy the SEND actions of the last poll into out; their count. */
static int sends(struct queue_action *out, int max)
{
	int n = 0;
	for (int i = 0; i < R.nact && n < max; i++)
		if (R.act[i].type == QUEUE_ACT_SEND)
			out[n++] = R.act[i];
	return n;
}

static void test_pipeline_depth(void)
{
	struct queue_config c;
	struct queue_counters k;
	struct queue_action s[8];
	int marker;
	cfg_init(&c);
	c.max_connections = 1;
	CU_ASSERT_EQUAL(c.pipeline_depth, 4); /* the default */
	c.pipeline_depth = 3;
	struct queue *q = mkq(&c);
	for (uint64_t id = 1; id <= 5; id++)
		submit_lit(q, &c, id, T0);
	pollq(q, T0);
	const struct queue_action *conn = need_act(QUEUE_ACT_CONNECT);
	uint64_t h = conn->session;
	CU_ASSERT_EQUAL(queue_session_set_user(q, h, &marker), 0);
	CU_ASSERT_EQUAL(queue_conn_up(q, h, "[192.0.2.10]", 0xc000020a, 25, T0), 0);
	/* Depth 1 until told: one SEND. */
	pollq(q, T0);
	CU_ASSERT_EQUAL_FATAL(sends(s, 8), 1);
	CU_ASSERT_PTR_EQUAL(s[0].user, &marker);
	CU_ASSERT_EQUAL(s[0].txn->desc->msg_id, 1);
	/* The client can pipeline 8; the queue caps it at pipeline_depth = 3. */
	CU_ASSERT_EQUAL(queue_conn_depth(q, h, 8), 0);
	pollq(q, T0);
	CU_ASSERT_EQUAL_FATAL(sends(s + 1, 7), 2);
	CU_ASSERT_EQUAL(s[1].txn->desc->msg_id, 2);
	CU_ASSERT_EQUAL(s[2].txn->desc->msg_id, 3);
	CU_ASSERT_EQUAL(s[1].session, h);
	CU_ASSERT_EQUAL(pollq(q, T0), 0); /* full: nothing more, no second connection */
	queue_get_counters(q, &k);
	CU_ASSERT_EQUAL(k.in_flight, 3);
	CU_ASSERT_EQUAL(k.queued, 2);
	CU_ASSERT_EQUAL(k.txns_pipelined, 2);
	CU_ASSERT_EQUAL(k.conns_opened, 1);
	/* Results apply to the oldest; each frees a place for the next. */
	CU_ASSERT_EQUAL(result_all(q, &s[0], 250, "250 2.0.0 ok 1", T0 + 1), 0);
	CU_ASSERT_EQUAL(R.delivered, 1);
	pollq(q, T0 + 1);
	CU_ASSERT_EQUAL_FATAL(sends(s + 3, 5), 1);
	CU_ASSERT_EQUAL(s[3].txn->desc->msg_id, 4);
	/* 4xx for the second, 5xx for the third: each to its own recipients */
	CU_ASSERT_EQUAL(result_all(q, &s[1], 451, "451 4.3.0 later", T0 + 2), 0);
	CU_ASSERT_EQUAL(R.deferred, 1);
	CU_ASSERT_EQUAL(result_all(q, &s[2], 550, "550 5.1.1 no", T0 + 2), 0);
	CU_ASSERT_EQUAL(R.bounced, 1);
	pollq(q, T0 + 2);
	CU_ASSERT_EQUAL_FATAL(sends(s + 4, 4), 1);
	CU_ASSERT_EQUAL(s[4].txn->desc->msg_id, 5);
	CU_ASSERT_EQUAL(result_all(q, &s[3], 250, "250 ok", T0 + 3), 0);
	CU_ASSERT_EQUAL(result_all(q, &s[4], 250, "250 ok", T0 + 3), 0);
	CU_ASSERT_EQUAL(R.delivered, 3);
	CU_ASSERT_EQUAL(R.done, 4); /* 1, 3, 4, 5; 2 waits for its retry */
	/* Nothing in flight: idle, and a result for nothing is refused (s[4]'s txn is gone). */
	struct queue_rcpt_result one = {250, NULL, "250 ok"};
	CU_ASSERT_EQUAL(queue_txn_result(q, s[4].session, &one, 1, T0 + 3), -ENOENT);
	queue_get_counters(q, &k);
	CU_ASSERT_EQUAL(k.in_flight, 0);
	CU_ASSERT_EQUAL(k.conns_open, 1);
	CU_ASSERT_EQUAL(k.sessions_reused, 4);
	queue_destroy(q);
}

/* A dropped session with transactions in flight: every one deferred, none lost. */
static void test_pipeline_conn_lost(void)
{
	struct queue_config c;
	struct queue_counters k;
	struct queue_action s[8];
	cfg_init(&c);
	c.max_connections = 1;
	struct queue *q = mkq(&c);
	for (uint64_t id = 1; id <= 3; id++)
		submit_lit(q, &c, id, T0);
	pollq(q, T0);
	uint64_t h = need_act(QUEUE_ACT_CONNECT)->session;
	CU_ASSERT_EQUAL(queue_conn_depth(q, h, 2), 0);
	CU_ASSERT_EQUAL(queue_conn_up(q, h, "[192.0.2.10]", 0xc000020a, 25, T0), 0);
	pollq(q, T0);
	CU_ASSERT_EQUAL_FATAL(sends(s, 8), 2);
	CU_ASSERT_EQUAL(result_all(q, &s[0], 250, "250 ok", T0 + 1), 0);
	pollq(q, T0 + 1);
	CU_ASSERT_EQUAL_FATAL(sends(s + 2, 6), 1);
	/* two in flight (2 and 3) when the connection drops */
	CU_ASSERT_EQUAL(queue_conn_down(q, h, "connection reset", T0 + 2), 0);
	CU_ASSERT_EQUAL(R.delivered, 1);
	CU_ASSERT_EQUAL(R.deferred, 2);
	queue_get_counters(q, &k);
	CU_ASSERT_EQUAL(k.in_flight, 0);
	CU_ASSERT_EQUAL(k.queued, 2);
	CU_ASSERT_EQUAL(k.conns_open, 0);
	struct queue_rcpt_result one = {250, NULL, "250 ok"};
	CU_ASSERT_EQUAL(queue_txn_result(q, h, &one, 1, T0 + 2), -ENOENT);
	/* The retry sends both again, once each. */
	pollq(q, T0 + 2 + 61 * SEC);
	h = need_act(QUEUE_ACT_CONNECT)->session;
	CU_ASSERT_EQUAL(queue_conn_depth(q, h, 2), 0);
	CU_ASSERT_EQUAL(queue_conn_up(q, h, "[192.0.2.10]", 0xc000020a, 25, T0 + 62 * SEC), 0);
	pollq(q, T0 + 62 * SEC);
	CU_ASSERT_EQUAL_FATAL(sends(s, 8), 2);
	CU_ASSERT_EQUAL(s[0].txn->desc->msg_id + s[1].txn->desc->msg_id, 5);
	CU_ASSERT_EQUAL(result_all(q, &s[0], 250, "250 ok", T0 + 63 * SEC), 0);
	CU_ASSERT_EQUAL(result_all(q, &s[1], 250, "250 ok", T0 + 63 * SEC), 0);
	CU_ASSERT_EQUAL(R.delivered, 3);
	CU_ASSERT_EQUAL(R.done, 3);
	queue_destroy(q);
}

/* messages_per_connection counts what is in flight: no session carries more. */
static void test_pipeline_msgs_per_connection(void)
{
	struct queue_config c;
	struct queue_counters k;
	struct queue_action s[8];
	cfg_init(&c);
	c.max_connections = 1;
	c.msgs_per_connection = 3;
	c.pipeline_depth = 4;
	struct queue *q = mkq(&c);
	for (uint64_t id = 1; id <= 5; id++)
		submit_lit(q, &c, id, T0);
	pollq(q, T0);
	uint64_t h = need_act(QUEUE_ACT_CONNECT)->session;
	CU_ASSERT_EQUAL(queue_conn_depth(q, h, 4), 0);
	CU_ASSERT_EQUAL(queue_conn_up(q, h, "[192.0.2.10]", 0xc000020a, 25, T0), 0);
	pollq(q, T0);
	CU_ASSERT_EQUAL_FATAL(sends(s, 8), 3); /* not 4: the connection's limit is 3 */
	for (int i = 0; i < 3; i++)
		CU_ASSERT_EQUAL(result_all(q, &s[i], 250, "250 ok", T0 + 1), 0);
	pollq(q, T0 + 1);
	CU_ASSERT_EQUAL(count_act(QUEUE_ACT_CLOSE), 1);
	CU_ASSERT_EQUAL(need_act(QUEUE_ACT_CLOSE)->session, h);
	CU_ASSERT_EQUAL(queue_conn_closed(q, h, T0 + 1), 0);
	pollq(q, T0 + 1);
	CU_ASSERT_EQUAL(count_act(QUEUE_ACT_CONNECT), 1);
	queue_get_counters(q, &k);
	CU_ASSERT_EQUAL(k.sent, 3);
	CU_ASSERT_EQUAL(k.queued, 2);
	CU_ASSERT_EQUAL(queue_conn_depth(q, 12345, 2), -ENOENT);
	CU_ASSERT_EQUAL(queue_session_set_user(q, 12345, NULL), -ENOENT);
	queue_destroy(q);
}

/*
 * Few action slots per poll while sessions fill up: every destination still
 * gets its turn (a destination put back in line must not be on it twice).
 */
static void test_pipeline_small_polls(void)
{
	static const char *const LIT_B[] = {"dev@[192.0.2.20]"};
	struct queue_config c;
	struct queue_action act[2];
	unsigned sends_a = 0, sends_b = 0, rounds = 0;
	cfg_init(&c);
	c.max_connections = 1;
	struct queue *q = mkq(&c);
	for (uint64_t id = 1; id <= 6; id++) {
		submit_lit(q, &c, id, T0);
		CU_ASSERT_EQUAL(
			queue_submit(q, desc_for(&c, "dev@fleet.example", LIT_B, 1, 0, 0, 100 + id),
				     0, T0),
			0);
	}
	int n = queue_poll(q, T0, act, 2);
	CU_ASSERT_EQUAL_FATAL(n, 2);
	for (int i = 0; i < 2; i++) {
		CU_ASSERT_EQUAL_FATAL(act[i].type, QUEUE_ACT_CONNECT);
		CU_ASSERT_EQUAL(queue_conn_depth(q, act[i].session, 4), 0);
		CU_ASSERT_EQUAL(queue_conn_up(q, act[i].session, "h", 0xc000020a, 25, T0), 0);
	}
	while ((n = queue_poll(q, T0, act, 2)) > 0 && rounds++ < 100)
		for (int i = 0; i < n; i++) {
			CU_ASSERT_EQUAL(act[i].type, QUEUE_ACT_SEND);
			if (act[i].type == QUEUE_ACT_SEND && act[i].txn->desc->msg_id > 100)
				sends_b++;
			else if (act[i].type == QUEUE_ACT_SEND)
				sends_a++;
		}
	CU_ASSERT_EQUAL(sends_a, 4); /* depth 4 each, not one destination starved */
	CU_ASSERT_EQUAL(sends_b, 4);
	queue_destroy(q);
}

static CU_TestInfo dest_tests[] = {
	{"dest_domain_case", test_dest_domain_case},
	{"dest_literal_invalid", test_dest_literal_invalid},
	{"dest_smarthost", test_dest_smarthost},
	{"split_groups", test_split_groups},
	{"split_skips_final_and_limits", test_split_skips_final_and_limits},
	{"owner_stable_spread", test_owner_stable_spread},
	{"config_from_cfg", test_config_from_cfg},
	CU_TEST_INFO_NULL,
};

static CU_TestInfo sched_tests[] = {
	{"literal_no_dns", test_literal_no_dns},
	{"domain_full_delivery", test_domain_full_delivery},
	{"smarthost_routes", test_smarthost_routes},
	{"rcpts_per_txn_split", test_rcpts_per_txn_split},
	{"max_connections", test_max_connections},
	{"pipeline_depth", test_pipeline_depth},
	{"pipeline_conn_lost", test_pipeline_conn_lost},
	{"pipeline_msgs_per_connection", test_pipeline_msgs_per_connection},
	{"pipeline_small_polls", test_pipeline_small_polls},
	{"msgs_per_connection", test_msgs_per_connection},
	{"rate_limit", test_rate_limit},
	{"idle_timeout_close", test_idle_timeout_close},
	{"max_age_close", test_max_age_close},
	{"backoff_and_reset", test_backoff_and_reset},
	{"backoff_cap", test_backoff_cap},
	{"backoff_isolated", test_backoff_isolated},
	{"retry_schedule", test_retry_schedule},
	{"max_age_expiry", test_max_age_expiry},
	{"partial_failure_one_dsn", test_partial_failure_one_dsn},
	{"no_bounce_to_null_sender", test_no_bounce_to_null_sender},
	{"notify_never", test_notify_never},
	{"notify_success", test_notify_success},
	{"notify_delay", test_notify_delay},
	{"route_failures", test_route_failures},
	{"conn_lost_while_busy", test_conn_lost_while_busy},
	{"invalid_destination", test_invalid_destination},
	{"limits_txn_dest_session", test_limits_txn_dest_session},
	{"stale_handles", test_stale_handles},
	{"delayed_submit_and_heap_order", test_delayed_submit_and_heap_order},
	{"counters_and_foreach", test_counters_and_foreach},
	{"recovered_not_before", test_recovered_not_before},
	{"expired_while_backed_off", test_expired_while_backed_off},
	{"flush_retries_now", test_flush_retries_now},
	{"suspend_resume", test_suspend_resume},
	{"hold_all", test_hold_all},
	{"initial_connections", test_initial_connections},
	{"connection_budget", test_connection_budget},
	{"reconfigure_limits", test_reconfigure_limits},
	{"zero_route_ttl_and_idle", test_zero_route_ttl_and_idle},
	{"route_ttl_from_dns", test_route_ttl_from_dns},
	CU_TEST_INFO_NULL,
};

static CU_TestInfo dsn_tests[] = {
	{"dsn_structure", test_dsn_structure},
	{"dsn_ret_full_and_cap", test_dsn_ret_full_and_cap},
	{"dsn_long_lines_and_injection", test_dsn_long_lines_and_injection},
	{"dsn_errors", test_dsn_errors},
	{"rfc5322_date", test_rfc5322_date},
	{"log_line_format", test_log_line_format},
	CU_TEST_INFO_NULL,
};

static CU_SuiteInfo suites[] = {
	{"queue_dest", NULL, NULL, NULL, NULL, dest_tests},
	{"queue_sched", NULL, NULL, NULL, NULL, sched_tests},
	{"queue_dsn", NULL, NULL, NULL, NULL, dsn_tests},
	CU_SUITE_INFO_NULL,
};

int main(int argc, char **argv)
{
	if (argc == 3 && strcmp(argv[1], "--write-dsn") == 0)
		return write_dsns(argv[2]);
	mx_log_set_level(MX_LOG_WARN);
	int rc = mx_test_run(suites);
	rec_reset();
	return rc;
}
