/*
 * netsvc.c - test services on lib/net, for integration tests with Linux as
 * the TCP peer over net_tap.
 *
 *	netsvc --config FILE [--echo PORT] [--discard PORT]
 *	       [--connect A.B.C.D:PORT --conns N --bytes B [--start-delay MS]]
 *	       [--connect A.B.C.D:PORT --rr C [--start-delay MS]]
 *	       [--duration SEC] [--no-verify] [--poll]
 *
 * --echo and --discard listen on every worker.  --connect opens N
 * connections (spread over the workers), sends B bytes of a per-connection
 * pseudo-random stream on each and checks that the same B bytes come back
 * (an echo server on the other side), then closes; the run ends when all
 * are done and the exit status says whether every byte matched.  --rr C
 * instead runs short transactions (connect, 64-byte request, 64-byte
 * echo, close), C at a time per worker, until --duration: a benchmark.  The
 * server modes run until SIGINT/SIGTERM or --duration.  Counters are
 * printed as "name value" lines at exit.  --no-verify (benchmarks): the
 * client sends a constant buffer and only counts what comes back, so the
 * figure is the stack's and not the per-byte stream generator's.  --poll:
 * the workers never sleep when idle (pure poll mode, for comparison).
 *
 * For the benchmark (bench/net/run) each worker also counts, from the end
 * of --start-delay to the end of the run, the TSC cycles of its busy turns
 * (turns that handled packets or opened connections) and the TCP segments
 * in and out they handled, leaving out turns preempted by the scheduler
 * (LONG_TURN_US): "worker_busy_cycles" / "worker_busy_segs" is the stack's
 * cost per segment, independent of how long the worker idled waiting for
 * its peer.  Also its busy, idle and preempted turns and its thread CPU
 * time over that span.  The loop's clock is the
 * TSC (one rdtsc per turn, no clock_gettime), and the main thread sleeps
 * while the workers run instead of spinning in rte_eal_mp_wait_lcore().
 */
#include "core.h"
#include "net.h"

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <rte_cycles.h>
#include <rte_eal.h>
#include <rte_launch.h>
#include <rte_lcore.h>
#include <time.h>

struct stream {
	uint64_t state;
};

static bool no_verify;
static uint8_t fixed_buf[16384]; /* --no-verify payload */

static inline uint8_t stream_next(struct stream *s)
{
	s->state = s->state * 6364136223846793005ull + 1442695040888963407ull;
	return (uint8_t)(s->state >> 56);
}

struct client {
	struct tcp_conn *conn;
	struct stream tx, rx;
	uint64_t sent, received, total;
	bool done, failed, closed;
};

struct worker {
	unsigned index;
	struct net_stack *st;
	struct net_idle idle;
	struct client *clients;
	unsigned n_clients, clients_done, clients_failed, clients_closed;
	uint64_t echo_bytes, discard_bytes, accepted;
	/* benchmark accounting, from the end of --start-delay */
	uint64_t busy_cycles, busy_segs, busy_turns, idle_turns;
	uint64_t long_turns;	  /* busy turns over LONG_TURN_US: preempted, left out of busy_* */
	uint64_t cpu_ns, wall_ns; /* thread CPU time and wall time of the measured span */
	bool finished;		  /* worker_main returned (atomic; the main thread waits on it) */
};

static volatile sig_atomic_t stop;
static struct net_dataplane dp;
static struct worker workers[64];
static uint16_t echo_port, discard_port;
static uint32_t connect_addr;
static uint16_t connect_port;
static unsigned n_conns;
static uint64_t conn_bytes;
static uint64_t start_delay_us;
static unsigned rr_concurrency; /* --rr C: short transactions, C at a time per worker */
static uint64_t max_sleep_us = 10000; /* idle sleep cap; --poll: 0, never sleep */

static uint64_t tsc_per_us;

/*
 * A turn handles at most a few bursts of 32 packets, tens of microseconds;
 * one that took longer was preempted (5 engineers share 2 vCPUs here), so
 * its cycles are not the stack's and it is left out of the busy figures.
 */
#define LONG_TURN_US 250

/* The loop's clock: one rdtsc, no system call (the TSC is invariant here). */
static inline uint64_t now_us(void)
{
	return rte_rdtsc() / tsc_per_us;
}

static uint64_t thread_cpu_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
	return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static void on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

/* ---- echo and discard ---------------------------------------------------- */

static size_t echo_data(struct tcp_conn *c, void *user, const uint8_t *data, size_t len)
{
	struct worker *w = user;
	ssize_t n = tcp_send(c, data, len);
	if (n < 0)
		return len; /* peer is gone; drop */
	w->echo_bytes += (uint64_t)n;
	return (size_t)n; /* the rest stays in the receive buffer: flow control */
}

static void echo_writable(struct tcp_conn *c, void *user)
{
	(void)user;
	tcp_recv_resume(c);
}

static void peer_closed(struct tcp_conn *c, void *user)
{
	(void)user;
	tcp_close(c);
}

static void server_closed(struct tcp_conn *c, void *user, enum tcp_close_reason why)
{
	(void)c;
	(void)user;
	(void)why;
}

static const struct tcp_conn_ops echo_ops = {
	.on_data = echo_data,
	.on_writable = echo_writable,
	.on_peer_closed = peer_closed,
	.on_closed = server_closed,
};

static size_t discard_data(struct tcp_conn *c, void *user, const uint8_t *data, size_t len)
{
	(void)c;
	(void)data;
	((struct worker *)user)->discard_bytes += len;
	return len;
}

static const struct tcp_conn_ops discard_ops = {
	.on_data = discard_data,
	.on_peer_closed = peer_closed,
	.on_closed = server_closed,
};

static int accept_echo(struct tcp_conn *c, void *ctx)
{
	((struct worker *)ctx)->accepted++;
	tcp_conn_set_ops(c, &echo_ops, ctx);
	return 0;
}

static int accept_discard(struct tcp_conn *c, void *ctx)
{
	((struct worker *)ctx)->accepted++;
	tcp_conn_set_ops(c, &discard_ops, ctx);
	return 0;
}

/* ---- client -------------------------------------------------------------- */

static struct worker *client_worker(struct client *cl);

static void client_push(struct client *cl)
{
	uint8_t buf[16384];
	/*
	 * Offer more than may fit: a short tcp_send() is what arms on_writable,
	 * so never trim the offer to tcp_send_space() beforehand.
	 */
	while (no_verify && cl->sent < cl->total) {
		size_t n = cl->total - cl->sent < sizeof(fixed_buf) ? cl->total - cl->sent
								    : sizeof(fixed_buf);
		ssize_t k = tcp_send(cl->conn, fixed_buf, n);
		if (k < 0) {
			cl->failed = true;
			return;
		}
		cl->sent += (uint64_t)k;
		if ((size_t)k < n)
			return;
	}
	while (cl->sent < cl->total) {
		size_t n = cl->total - cl->sent;
		if (n > sizeof(buf))
			n = sizeof(buf);
		struct stream save = cl->tx;
		for (size_t i = 0; i < n; i++)
			buf[i] = stream_next(&cl->tx);
		ssize_t k = tcp_send(cl->conn, buf, n);
		if (k < 0) {
			cl->failed = true;
			return;
		}
		if ((size_t)k < n) { /* replay the unsent part of the stream later */
			cl->tx = save;
			for (ssize_t i = 0; i < k; i++)
				stream_next(&cl->tx);
		}
		cl->sent += (uint64_t)k;
		if ((size_t)k < n)
			return;
	}
}

static void client_connected(struct tcp_conn *c, void *user)
{
	(void)c;
	client_push(user);
}

static size_t client_data(struct tcp_conn *c, void *user, const uint8_t *data, size_t len)
{
	struct client *cl = user;
	for (size_t i = 0; i < len && !no_verify; i++)
		if (stream_next(&cl->rx) != data[i] && !cl->failed) {
			fprintf(stderr, "client: byte %llu differs\n",
				(unsigned long long)(cl->received + i));
			cl->failed = true;
		}
	cl->received += len;
	if (cl->received > cl->total)
		cl->failed = true;
	if (cl->received >= cl->total && !cl->done) {
		cl->done = true;
		struct worker *w = client_worker(cl);
		w->clients_done++;
		if (cl->failed)
			w->clients_failed++;
		tcp_close(c);
	}
	return len;
}

static void client_writable(struct tcp_conn *c, void *user)
{
	(void)c;
	client_push(user);
}

static void client_closed(struct tcp_conn *c, void *user, enum tcp_close_reason why)
{
	(void)c;
	struct client *cl = user;
	struct worker *w = client_worker(cl);
	cl->closed = true;
	w->clients_closed++;
	if (!cl->done) {
		fprintf(stderr, "client: connection closed early (reason %d) after %llu/%llu\n",
			why, (unsigned long long)cl->received, (unsigned long long)cl->total);
		cl->done = cl->failed = true;
		w->clients_done++;
		w->clients_failed++;
	}
}

static const struct tcp_conn_ops client_ops = {
	.on_connected = client_connected,
	.on_data = client_data,
	.on_writable = client_writable,
	.on_closed = client_closed,
};

static struct worker *client_worker(struct client *cl)
{
	for (unsigned i = 0; i < dp.n_workers; i++)
		if (cl >= workers[i].clients && cl < workers[i].clients + workers[i].n_clients)
			return &workers[i];
	abort();
}

/* ---- short transactions (--rr) ---------------------------------------------- */

/*
 * One slot is one transaction at a time: connect, send 64 bytes, read the
 * 64-byte echo, close.  A finished slot is restarted from the worker loop,
 * never from inside a callback.
 */
struct rr_slot {
	struct tcp_conn *conn;
	unsigned got;
	bool idle;
	uint64_t started;
};

struct rr_state {
	struct rr_slot *slots;
	uint64_t txns, failures, latency_sum_us;
};

static struct rr_state rr[64];
static const uint8_t rr_request[64] =
	"GET / mxrelay-bench-request-64-bytes-of-payload-for-the-echo...";

static struct worker *rr_worker(struct rr_slot *s);

static void rr_connected(struct tcp_conn *c, void *user)
{
	(void)user;
	if (tcp_send(c, rr_request, sizeof(rr_request)) != (ssize_t)sizeof(rr_request))
		tcp_abort(c);
}

static size_t rr_data(struct tcp_conn *c, void *user, const uint8_t *data, size_t len)
{
	struct rr_slot *s = user;
	(void)data;
	s->got += (unsigned)len;
	if (s->got >= sizeof(rr_request)) {
		struct rr_state *r = &rr[rr_worker(s)->index];
		r->txns++;
		r->latency_sum_us += now_us() - s->started;
		tcp_close(c);
	}
	return len;
}

static void rr_closed(struct tcp_conn *c, void *user, enum tcp_close_reason why)
{
	(void)c;
	struct rr_slot *s = user;
	if (s->got < sizeof(rr_request) || (why != TCP_CLOSE_NORMAL && why != TCP_CLOSE_RESET))
		rr[rr_worker(s)->index].failures += s->got < sizeof(rr_request);
	s->conn = NULL;
	s->idle = true;
}

static const struct tcp_conn_ops rr_ops = {
	.on_connected = rr_connected,
	.on_data = rr_data,
	.on_closed = rr_closed,
};

static struct worker *rr_worker(struct rr_slot *s)
{
	for (unsigned i = 0; i < dp.n_workers; i++)
		if (s >= rr[i].slots && s < rr[i].slots + rr_concurrency)
			return &workers[i];
	abort();
}

static unsigned rr_restart(struct worker *w, uint64_t now)
{
	struct rr_state *r = &rr[w->index];
	unsigned started = 0;
	for (unsigned i = 0; i < rr_concurrency; i++) {
		struct rr_slot *s = &r->slots[i];
		if (!s->idle)
			continue;
		s->idle = false;
		s->got = 0;
		s->started = now;
		s->conn = tcp_connect(w->st, 0, 0, connect_addr, connect_port, &rr_ops, s);
		if (s->conn == NULL) {
			r->failures++;
			s->idle = true;
		}
		started++;
	}
	return started;
}

/* ---- worker loop ----------------------------------------------------------- */

static int worker_run(struct worker *w);

static int worker_main(void *arg)
{
	struct worker *w = arg;
	int rc = worker_run(w);
	__atomic_store_n(&w->finished, true, __ATOMIC_RELEASE);
	return rc;
}

static int worker_run(struct worker *w)
{
	struct net_stack_conf sc;
	net_dataplane_stack_conf(&dp, w->index, &sc);
	w->st = net_stack_create(&sc);
	if (w->st == NULL) {
		fprintf(stderr, "worker %u: stack: %s\n", w->index, strerror(errno));
		stop = 1;
		return -1;
	}
	if ((echo_port && tcp_listen(w->st, 0, echo_port, accept_echo, w) != 0) ||
	    (discard_port && tcp_listen(w->st, 0, discard_port, accept_discard, w) != 0)) {
		fprintf(stderr, "worker %u: listen failed\n", w->index);
		stop = 1;
		return -1;
	}
	unsigned next_client = 0;
	uint64_t last_open = now_us() + start_delay_us;
	uint64_t measure_from = last_open, cpu0 = 0, wall0 = 0;
	bool measuring = false;
	const struct tcp_stats *tst = net_stack_tcp_stats(w->st);
	while (!stop) {
		uint64_t segs0 = tst->segs_in + tst->segs_out;
		uint64_t t0 = rte_rdtsc();
		uint64_t now = t0 / tsc_per_us;
		if (!measuring && now >= measure_from) {
			measuring = true;
			cpu0 = thread_cpu_ns();
			wall0 = t0;
		}
		unsigned n = net_stack_poll(w->st, now);
		/* Open connections gradually: at most 16 per ms per worker. */
		if (next_client < w->n_clients && now >= last_open + 1000) {
			for (unsigned k = 0; k < 16 && next_client < w->n_clients; k++) {
				struct client *cl = &w->clients[next_client++];
				cl->conn = tcp_connect(w->st, 0, 0, connect_addr, connect_port,
						       &client_ops, cl);
				if (cl->conn == NULL) {
					fprintf(stderr, "connect: %s\n", strerror(errno));
					cl->done = cl->failed = cl->closed = true;
					w->clients_done++;
					w->clients_failed++;
					w->clients_closed++;
				}
			}
			last_open = now;
			n++;
		}
		if (rr_concurrency && now >= last_open)
			n += rr_restart(w, now);
		if (measuring) {
			uint64_t dt = rte_rdtsc() - t0;
			if (n > 0 && dt > LONG_TURN_US * tsc_per_us) {
				w->long_turns++;
			} else if (n > 0) {
				w->busy_cycles += dt;
				w->busy_segs += tst->segs_in + tst->segs_out - segs0;
				w->busy_turns++;
			} else {
				w->idle_turns++;
			}
		}
		if (w->n_clients && w->clients_closed == w->n_clients)
			break;
		net_stack_idle(w->st, &w->idle, n > 0, now, max_sleep_us);
	}
	if (measuring) {
		w->cpu_ns = thread_cpu_ns() - cpu0;
		w->wall_ns = (rte_rdtsc() - wall0) * 1000 / tsc_per_us;
	}
	/* Let FINs and ACKs leave (idling, not spinning, when there is nothing to do). */
	for (uint64_t end = now_us() + 200000; now_us() < end;) {
		uint64_t now = now_us();
		net_stack_idle(w->st, &w->idle, net_stack_poll(w->st, now) > 0, now, 10000);
	}
	return 0;
}

struct stat_sum {
	const char *name[256];
	uint64_t value[256];
	unsigned n;
};

static void sum_stat(void *arg, const char *name, uint64_t value)
{
	struct stat_sum *s = arg;
	for (unsigned i = 0; i < s->n; i++)
		if (strcmp(s->name[i], name) == 0) {
			s->value[i] += value;
			return;
		}
	if (s->n < 256) {
		s->name[s->n] = name;
		s->value[s->n++] = value;
	}
}

static void print_stats(void)
{
	static struct stat_sum sums;
	for (unsigned i = 0; i < dp.n_workers; i++)
		if (workers[i].st != NULL)
			net_stack_stats_foreach(workers[i].st, sum_stat, &sums);
	for (unsigned i = 0; i < sums.n; i++)
		if (sums.value[i] != 0)
			printf("%s %llu\n", sums.name[i], (unsigned long long)sums.value[i]);
	uint64_t rx = 0, tx = 0, accepted = 0, echo = 0, discard = 0, sleeps = 0, isleeps = 0;
	uint64_t retrans = 0, cookies = 0, cookies_ok = 0, estab = 0, bad_ck = 0, resets = 0;
	uint64_t busy = 0, busy_segs = 0, busy_turns = 0, idle_turns = 0, long_turns = 0;
	uint64_t cpu_ns = 0, wall_ns = 0;
	for (unsigned i = 0; i < dp.n_workers; i++) {
		struct worker *w = &workers[i];
		if (w->st == NULL)
			continue;
		struct net_stats ns;
		net_stack_get_stats(w->st, &ns);
		const struct tcp_stats *ts = net_stack_tcp_stats(w->st);
		rx += ns.rx_pkts, tx += ns.tx_pkts, bad_ck += ns.l4_bad_cksum + ns.ip_bad_cksum;
		accepted += w->accepted, echo += w->echo_bytes, discard += w->discard_bytes;
		sleeps += w->idle.sleeps, isleeps += w->idle.interrupt_sleeps;
		retrans += ts->retransmits, cookies += ts->cookies_sent;
		cookies_ok += ts->cookies_valid, estab += ts->conns_established;
		resets += ts->resets_in;
		busy += w->busy_cycles, busy_turns += w->busy_turns, idle_turns += w->idle_turns;
		busy_segs += w->busy_segs, long_turns += w->long_turns;
		cpu_ns += w->cpu_ns, wall_ns += w->wall_ns;
	}
	printf("rx_pkts %llu\ntx_pkts %llu\naccepted %llu\nestablished %llu\necho_bytes %llu\n"
	       "discard_bytes %llu\nretransmits %llu\ncookies_sent %llu\ncookies_valid %llu\n"
	       "bad_checksums %llu\nidle_sleeps %llu\nidle_interrupt_sleeps %llu\nresets_in %llu\n",
	       (unsigned long long)rx, (unsigned long long)tx, (unsigned long long)accepted,
	       (unsigned long long)estab, (unsigned long long)echo, (unsigned long long)discard,
	       (unsigned long long)retrans, (unsigned long long)cookies,
	       (unsigned long long)cookies_ok, (unsigned long long)bad_ck,
	       (unsigned long long)sleeps, (unsigned long long)isleeps, (unsigned long long)resets);
	/* Summed over the workers; bench/net/run divides by the segments. */
	printf("worker_busy_cycles %llu\nworker_busy_segs %llu\nworker_busy_turns %llu\n"
	       "worker_long_turns %llu\nworker_idle_turns %llu\n"
	       "worker_cpu_seconds %.3f\nworker_wall_seconds %.3f\ntsc_hz %llu\n",
	       (unsigned long long)busy, (unsigned long long)busy_segs,
	       (unsigned long long)busy_turns, (unsigned long long)long_turns,
	       (unsigned long long)idle_turns, (double)cpu_ns / 1e9, (double)wall_ns / 1e9,
	       (unsigned long long)rte_get_tsc_hz());
	fflush(stdout);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{"config", required_argument, NULL, 'c'},
		{"echo", required_argument, NULL, 'e'},
		{"discard", required_argument, NULL, 'd'},
		{"connect", required_argument, NULL, 'C'},
		{"conns", required_argument, NULL, 'n'},
		{"bytes", required_argument, NULL, 'b'},
		{"duration", required_argument, NULL, 't'},
		{"start-delay", required_argument, NULL, 's'},
		{"rr", required_argument, NULL, 'r'},
		{"no-verify", no_argument, NULL, 'V'},
		{"poll", no_argument, NULL, 'P'},
		{NULL, 0, NULL, 0},
	};
	const char *config = NULL;
	unsigned duration = 0;
	int opt;
	while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (opt) {
		case 'c':
			config = optarg;
			break;
		case 'e':
			echo_port = (uint16_t)atoi(optarg);
			break;
		case 'd':
			discard_port = (uint16_t)atoi(optarg);
			break;
		case 'n':
			n_conns = (unsigned)atoi(optarg);
			break;
		case 'b':
			conn_bytes = strtoull(optarg, NULL, 10);
			break;
		case 't':
			duration = (unsigned)atoi(optarg);
			break;
		case 's':
			start_delay_us = strtoull(optarg, NULL, 10) * 1000;
			break;
		case 'r':
			rr_concurrency = (unsigned)atoi(optarg);
			break;
		case 'P':
			max_sleep_us = 0;
			break;
		case 'V':
			no_verify = true;
			memset(fixed_buf, 'x', sizeof(fixed_buf));
			break;
		case 'C': {
			char *colon = strchr(optarg, ':');
			if (colon == NULL)
				goto usage;
			*colon = '\0';
			if (cfg_parse_ipv4(optarg, &connect_addr) != 0)
				goto usage;
			connect_port = (uint16_t)atoi(colon + 1);
			break;
		}
		default:
			goto usage;
		}
	}
	if (config == NULL)
		goto usage;

	struct cfg_file *cf;
	int rc = net_dataplane_start_file(&dp, config, "netsvc", argv[0], 1,
					  sizeof(workers) / sizeof(workers[0]), &cf);
	if (rc != 0)
		return rc;
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	tsc_per_us = rte_get_tsc_hz() / 1000000;
	if (tsc_per_us == 0)
		tsc_per_us = 1;
	for (unsigned i = 0; i < dp.n_workers; i++) {
		struct worker *w = &workers[i];
		w->index = i;
		if (connect_port && rr_concurrency) {
			rr[i].slots = calloc(rr_concurrency, sizeof(*rr[i].slots));
			for (unsigned k = 0; k < rr_concurrency; k++)
				rr[i].slots[k].idle = true;
		} else if (connect_port) {
			w->n_clients = n_conns / dp.n_workers + (i < n_conns % dp.n_workers);
			w->clients = calloc(w->n_clients ? w->n_clients : 1, sizeof(*w->clients));
			for (unsigned k = 0; k < w->n_clients; k++) {
				struct client *cl = &w->clients[k];
				cl->total = conn_bytes;
				cl->tx.state = cl->rx.state = ((uint64_t)i << 32) + k + 1;
			}
		}
		rte_eal_remote_launch(worker_main, w, dp.worker_lcore[i]);
	}
	fprintf(stderr, "netsvc: %u worker(s), port 0 steering: %s\n", dp.n_workers,
		net_port_steering(dp.ports[0]));
	uint64_t start = mx_now_us();
	while (!stop) {
		usleep(20000);
		if (duration && mx_now_us() - start > duration * 1000000ull)
			stop = 1;
		if (connect_port && !rr_concurrency) {
			unsigned closed = 0;
			for (unsigned i = 0; i < dp.n_workers; i++)
				closed += workers[i].clients_closed;
			if (closed == n_conns)
				break;
		}
	}
	stop = 1;
	/* rte_eal_mp_wait_lcore() spins: sleep until the workers are done first. */
	for (unsigned i = 0; i < dp.n_workers; i++)
		for (unsigned k = 0;
		     k < 500 && !__atomic_load_n(&workers[i].finished, __ATOMIC_ACQUIRE); k++)
			usleep(2000);
	rte_eal_mp_wait_lcore();
	print_stats();
	rc = 0;
	if (rr_concurrency) {
		uint64_t txns = 0, fails = 0, lat = 0;
		double secs = (double)(mx_now_us() - start - start_delay_us) / 1e6;
		for (unsigned i = 0; i < dp.n_workers; i++)
			txns += rr[i].txns, fails += rr[i].failures, lat += rr[i].latency_sum_us;
		printf("rr_transactions %llu\nrr_failures %llu\nrr_seconds %.3f\nrr_per_second "
		       "%.0f\n"
		       "rr_mean_latency_us %.1f\n",
		       (unsigned long long)txns, (unsigned long long)fails, secs, txns / secs,
		       txns ? (double)lat / (double)txns : 0.0);
	} else if (connect_port) {
		unsigned done = 0, failed = 0;
		for (unsigned i = 0; i < dp.n_workers; i++)
			done += workers[i].clients_done, failed += workers[i].clients_failed;
		printf("clients %u done %u failed %u\n", n_conns, done, failed);
		unsigned shown = 0;
		for (unsigned i = 0; i < dp.n_workers; i++)
			for (unsigned k = 0; k < workers[i].n_clients && shown < 10; k++) {
				struct client *cl = &workers[i].clients[k];
				if (cl->done && !cl->failed)
					continue;
				printf("client w%u/%u: sent %llu received %llu of %llu%s%s\n", i, k,
				       (unsigned long long)cl->sent,
				       (unsigned long long)cl->received,
				       (unsigned long long)cl->total, cl->closed ? " closed" : "",
				       cl->failed ? " failed" : "");
				shown++;
			}
		rc = (done == n_conns && failed == 0) ? 0 : 1;
	}
	net_dataplane_stop(&dp);
	cfg_free(cf);
	return rc;
usage:
	fprintf(stderr, "usage: netsvc --config FILE [--echo PORT] [--discard PORT] "
			"[--connect A.B.C.D:PORT --conns N --bytes B] [--duration SEC]\n");
	return 2;
}
