/*
 * accept_bench.c - CPU cost of accepting one message in lib/net's TCP and
 * lib/smtp's server session, in one process, without DPDK and without disk.
 *
 * Two TCP stacks (tcp_create) exchange segments through in-memory queues:
 * a scripted device fleet (one message per connection, as devices send:
 * EHLO, MAIL, RCPT, DATA, body, QUIT) and a server that glues TCP to an SMTP
 * session the way app/mxrelay/smtpd.c does, its commit answered at once.
 * Every server-side call (tcp_input and tcp_poll of the server stack) is
 * timed with the TSC, so the figure is the server's work per message and
 * does not depend on what else the machine runs (unlike bench/run's rates on
 * a shared 2-core machine); the clock the stacks see is virtual.
 *
 *	accept_bench [-n MESSAGES] [-c CONCURRENT] [-s SIZE] [-P]
 *
 * -n messages (default 200000; the first 10% warm up and are not counted),
 * -c connections open at once (default 100), -s message size (default 1024),
 * -P: sessions from smtp_session_new() instead of a session pool.
 * Prints one line: server TSC cycles and ns per message, segments per message.
 */
#include "net_internal.h"
#include "smtp.h"
#include "tcp.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <x86intrin.h>

/* A tree from before struct smtp_session_pool (an A/B baseline): malloc'ed sessions only. */
#ifdef ACCEPT_BENCH_NO_POOL_API
struct smtp_session_pool {
	unsigned long long reused, allocated;
};
#define smtp_session_pool_init(p, m) ((void)(p), (void)(m))
#define smtp_session_pool_drain(p) ((void)(p))
#define smtp_session_new_pooled(p, ...) smtp_session_new(__VA_ARGS__)
#define smtp_session_free_pooled(p, s) smtp_session_free(s)
#define USE_POOL_DEFAULT false
#else
#define USE_POOL_DEFAULT true
#endif

#define SRV_ADDR 0x0a4d0002u
#define CLI_ADDR 0x0a4d0001u
#define SEG_MAX 2048
#define QUEUE_SLOTS 65536u

struct seg {
	uint32_t src, dst;
	uint32_t len;
	uint8_t b[SEG_MAX];
};

/* One direction's segments in flight, FIFO, bounded. */
struct queue {
	struct seg *slot;
	unsigned head, count;
	uint64_t dropped;
};

struct side {
	struct net_stack st;
	struct queue *inbox_of_peer;
	uint32_t addr;
	uint64_t segs_out;
};

static uint64_t vnow = 1000000; /* virtual microseconds */

static uint64_t clock_virtual(void)
{
	return vnow;
}

static int64_t clock_wall(void)
{
	return 1700000000;
}

static int out_seg(void *ctx, uint32_t src, uint32_t dst, const uint8_t *p, size_t len)
{
	struct side *sd = ctx;
	struct queue *q = sd->inbox_of_peer;
	if (len > SEG_MAX || q->count == QUEUE_SLOTS) {
		q->dropped++;
		return -ENOBUFS;
	}
	struct seg *s = &q->slot[(q->head + q->count++) % QUEUE_SLOTS];
	s->src = src;
	s->dst = dst;
	s->len = (uint32_t)len;
	memcpy(s->b, p, len);
	sd->segs_out++;
	return 0;
}

static uint32_t route_src(void *ctx, uint32_t dst)
{
	(void)dst;
	return ((struct side *)ctx)->addr;
}

static const struct tcp_stack_ops side_ops = {.output = out_seg, .route_src = route_src};

/* ---- server: TCP <-> SMTP session, as smtpd.c glues them ---------------------------- */

struct srv_conn {
	struct tcp_conn *tc;
	struct smtp_session *s;
	struct srv_conn *reap_next;
	bool closed;
};

static struct smtp_server_conf sconf;
static struct smtp_server_stats sstats;
static struct smtp_session_pool spool;
static bool use_pool = USE_POOL_DEFAULT;
static struct srv_conn *reap_list;
static uint64_t accepted, sessions;

static void srv_send(void *user, const uint8_t *p, size_t n)
{
	struct srv_conn *c = user;
	if (!c->closed)
		(void)tcp_send(c->tc, p, n);
}

static void srv_close(void *user)
{
	struct srv_conn *c = user;
	if (!c->closed)
		tcp_close(c->tc);
}

static void srv_message_end(void *user, const struct smtp_envelope *env)
{
	struct srv_conn *c = user;
	(void)env;
	accepted++;
	smtp_session_message_done(c->s, 0, "B1");
}

static const struct smtp_server_cb srv_cb = {
	.send = srv_send,
	.close = srv_close,
	.message_end = srv_message_end,
};

static size_t srv_data(struct tcp_conn *tc, void *user, const uint8_t *p, size_t n)
{
	struct srv_conn *c = user;
	(void)tc;
	if (smtp_session_is_closed(c->s))
		return n;
	return smtp_session_input(c->s, p, n);
}

static void srv_peer_closed(struct tcp_conn *tc, void *user)
{
	(void)user;
	tcp_close(tc);
}

static void srv_closed(struct tcp_conn *tc, void *user, enum tcp_close_reason why)
{
	struct srv_conn *c = user;
	(void)tc;
	(void)why;
	c->closed = true;
	c->reap_next = reap_list;
	reap_list = c;
}

static const struct tcp_conn_ops srv_ops = {
	.on_data = srv_data,
	.on_peer_closed = srv_peer_closed,
	.on_closed = srv_closed,
};

static int srv_accept(struct tcp_conn *tc, void *ctx)
{
	uint32_t la, ra;
	uint16_t lp, rp;
	(void)ctx;
	struct srv_conn *c = calloc(1, sizeof(*c));
	if (c == NULL)
		return -1;
	tcp_conn_endpoints(tc, &la, &lp, &ra, &rp);
	c->tc = tc;
	int rc = use_pool ? smtp_session_new_pooled(&spool, &sconf, &srv_cb, c, &sstats, ra,
						    ++sessions, &c->s)
			  : smtp_session_new(&sconf, &srv_cb, c, &sstats, ra, ++sessions, &c->s);
	if (rc != 0) {
		free(c);
		return -1;
	}
	tcp_conn_set_ops(tc, &srv_ops, c);
	smtp_session_start(c->s);
	return 0;
}

static void srv_reap(void)
{
	while (reap_list != NULL) {
		struct srv_conn *c = reap_list;
		reap_list = c->reap_next;
		if (use_pool)
			smtp_session_free_pooled(&spool, c->s);
		else
			smtp_session_free(c->s);
		free(c);
	}
}

/* ---- client: one message per connection --------------------------------------------- */

struct cli_conn {
	char line[1024];
	size_t line_len;
	int step;
};

static const char *body;
static size_t body_len;
static unsigned cli_open;
static uint64_t cli_done, cli_failed;

static void cli_next(struct tcp_conn *tc, struct cli_conn *k, const char *reply)
{
	static const char *const cmds[] = {"EHLO dev.fleet.test\r\n",
					   "MAIL FROM:<d@fleet.test>\r\n",
					   "RCPT TO:<ops@example.com>\r\n", "DATA\r\n"};
	int code = atoi(reply);
	if (reply[3] == '-')
		return; /* multi-line: wait for the last line */
	if ((k->step < 5 && code / 100 != (k->step == 4 ? 3 : 2)) ||
	    (k->step >= 5 && code >= 400)) {
		cli_failed++;
		tcp_abort(tc);
		return;
	}
	if (k->step < 4)
		tcp_send(tc, cmds[k->step], strlen(cmds[k->step]));
	else if (k->step == 4)
		tcp_send(tc, body, body_len);
	else if (k->step == 5)
		tcp_send(tc, "QUIT\r\n", 6);
	k->step++;
}

static size_t cli_data(struct tcp_conn *tc, void *user, const uint8_t *p, size_t n)
{
	struct cli_conn *k = user;
	for (size_t i = 0; i < n; i++) {
		if (k->line_len < sizeof(k->line) - 1)
			k->line[k->line_len++] = (char)p[i];
		if (p[i] == '\n') {
			k->line[k->line_len] = '\0';
			k->line_len = 0;
			cli_next(tc, k, k->line);
		}
	}
	return n;
}

static void cli_peer_closed(struct tcp_conn *tc, void *user)
{
	(void)user;
	tcp_close(tc);
}

static void cli_closed(struct tcp_conn *tc, void *user, enum tcp_close_reason why)
{
	struct cli_conn *k = user;
	(void)tc;
	(void)why;
	if (k->step == 7) /* 221 seen after QUIT */
		cli_done++;
	else
		cli_failed++;
	cli_open--;
	free(k);
}

static const struct tcp_conn_ops cli_ops = {
	.on_data = cli_data,
	.on_peer_closed = cli_peer_closed,
	.on_closed = cli_closed,
};

/* ---- the loop ------------------------------------------------------------------------ */

static uint64_t srv_cycles;

static void deliver_all(struct side *to, struct queue *q, bool timed)
{
	while (q->count > 0) {
		struct seg *s = &q->slot[q->head];
		q->head = (q->head + 1) % QUEUE_SLOTS;
		q->count--;
		uint64_t t0 = timed ? __rdtsc() : 0;
		tcp_input(to->st.tcp, s->src, s->dst, s->b, s->len, vnow);
		if (timed)
			srv_cycles += __rdtsc() - t0;
	}
}

static struct tcp_state *stack_new(struct side *sd, uint32_t addr, uint64_t seed)
{
	struct tcp_conf tc;
	tcp_conf_defaults(&tc);
	tc.max_conns = 65536;
	tc.time_wait_max = 65536;
	tc.time_wait_us = 2000000;
	tc.sndbuf = 64 * 1024;
	tc.rcvbuf = 64 * 1024;
	sd->addr = addr;
	return tcp_create(&tc, &side_ops, sd, seed);
}

static double tsc_ghz(void)
{
	struct timespec a, b;
	clock_gettime(CLOCK_MONOTONIC, &a);
	uint64_t t0 = __rdtsc();
	usleep(100000);
	clock_gettime(CLOCK_MONOTONIC, &b);
	uint64_t t1 = __rdtsc();
	double ns = (double)(b.tv_sec - a.tv_sec) * 1e9 + (double)(b.tv_nsec - a.tv_nsec);
	return (double)(t1 - t0) / ns;
}

int main(int argc, char **argv)
{
	uint64_t n_msgs = 200000;
	unsigned conc = 100;
	size_t size = 1024;
	int o;
	while ((o = getopt(argc, argv, "n:c:s:P")) != -1) {
		switch (o) {
		case 'n':
			n_msgs = strtoull(optarg, NULL, 10);
			break;
		case 'c':
			conc = (unsigned)strtoul(optarg, NULL, 10);
			break;
		case 's':
			size = strtoull(optarg, NULL, 10);
			break;
		case 'P':
			use_pool = false;
			break;
		default:
			fprintf(stderr, "usage: accept_bench [-n MESSAGES] [-c CONCURRENT] [-s "
					"SIZE] [-P]\n");
			return 2;
		}
	}
	if (n_msgs < 10 || conc < 1 || conc > 10000 || size < 16 || size > (16u << 20)) {
		fprintf(stderr, "accept_bench: -n >= 10, -c 1..10000, -s 16..16M\n");
		return 2;
	}
	/* the message: "Subject:" and 76-character lines, then the end of data */
	char *b = malloc(size + 128);
	size_t bl = (size_t)snprintf(b, 128, "Subject: bench\r\n\r\n");
	while (bl + 78 <= size) {
		memset(b + bl, 'x', 76);
		memcpy(b + bl + 76, "\r\n", 2);
		bl += 78;
	}
	memcpy(b + bl, ".\r\n", 3);
	body = b;
	body_len = bl + 3;

	smtp_server_conf_defaults(&sconf);
	sconf.hostname = "mx.bench.test";
	static const char *const locals[] = {"example.com"};
	sconf.local_domains = locals;
	sconf.local_domain_count = 1;
	sconf.now_us = clock_virtual;
	sconf.wall_s = clock_wall;
	smtp_session_pool_init(&spool, 4096);

	static struct queue to_srv, to_cli;
	to_srv.slot = calloc(QUEUE_SLOTS, sizeof(struct seg));
	to_cli.slot = calloc(QUEUE_SLOTS, sizeof(struct seg));
	static struct side srv, cli;
	srv.inbox_of_peer = &to_cli;
	cli.inbox_of_peer = &to_srv;
	srv.st.tcp = stack_new(&srv, SRV_ADDR, 1);
	cli.st.tcp = stack_new(&cli, CLI_ADDR, 2);
	if (!to_srv.slot || !to_cli.slot || !srv.st.tcp || !cli.st.tcp ||
	    tcp_listen(&srv.st, 0, 25, srv_accept, NULL) != 0) {
		fprintf(stderr, "accept_bench: set-up failed\n");
		return 1;
	}
	uint64_t warm = n_msgs / 10, started = 0, srv_segs0 = 0, cli_segs0 = 0;
	uint64_t accepted0 = 0;
	bool timing = false;
	struct timespec c0, c1;
	for (uint64_t iter = 0; cli_done + cli_failed < n_msgs; iter++) {
		while (cli_open < conc && started < n_msgs) {
			struct cli_conn *k = calloc(1, sizeof(*k));
			if (k == NULL ||
			    tcp_connect(&cli.st, 0, 0, SRV_ADDR, 25, &cli_ops, k) == NULL) {
				free(k);
				break;
			}
			started++;
			cli_open++;
		}
		if (!timing && cli_done >= warm) {
			timing = true;
			srv_cycles = 0;
			accepted0 = accepted;
			srv_segs0 = srv.segs_out;
			cli_segs0 = cli.segs_out;
			clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c0);
		}
		vnow += 5;
		deliver_all(&srv, &to_srv, timing);
		uint64_t t0 = __rdtsc();
		tcp_poll(srv.st.tcp, vnow);
		srv_reap();
		if (timing)
			srv_cycles += __rdtsc() - t0;
		deliver_all(&cli, &to_cli, false);
		tcp_poll(cli.st.tcp, vnow);
		if (iter > 100 * n_msgs + 1000000) {
			fprintf(stderr, "accept_bench: no progress (done %llu, failed %llu)\n",
				(unsigned long long)cli_done, (unsigned long long)cli_failed);
			return 1;
		}
	}
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c1);
	uint64_t msgs = accepted - accepted0;
	double ghz = tsc_ghz();
	double cpu_ns = (double)(c1.tv_sec - c0.tv_sec) * 1e9 + (double)(c1.tv_nsec - c0.tv_nsec);
	if (msgs == 0 || cli_failed > 0 || to_srv.dropped || to_cli.dropped) {
		fprintf(stderr, "accept_bench: %llu failed, %llu dropped, %llu measured\n",
			(unsigned long long)cli_failed,
			(unsigned long long)(to_srv.dropped + to_cli.dropped),
			(unsigned long long)msgs);
		return 1;
	}
	printf("accept_bench: %llu msgs (%zu B, %u at once, sessions %s): server %.0f cycles/msg "
	       "= %.2f us/msg at %.2f GHz TSC; both sides %.2f us CPU/msg; segments/msg: server "
	       "%.2f, client %.2f; pool reused %llu allocated %llu\n",
	       (unsigned long long)msgs, size, conc, use_pool ? "pooled" : "malloc'ed",
	       (double)srv_cycles / (double)msgs, (double)srv_cycles / (double)msgs / ghz / 1000,
	       ghz, cpu_ns / (double)msgs / 1000, (double)(srv.segs_out - srv_segs0) / (double)msgs,
	       (double)(cli.segs_out - cli_segs0) / (double)msgs, (unsigned long long)spool.reused,
	       (unsigned long long)spool.allocated);
	smtp_session_pool_drain(&spool);
	tcp_destroy(srv.st.tcp);
	tcp_destroy(cli.st.tcp);
	free(to_srv.slot);
	free(to_cli.slot);
	free(b);
	return 0;
}
