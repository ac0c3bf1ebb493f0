/*
 * mxload.c - the benchmark's load side in one DPDK process: mxgen's role
 * (a device fleet sending to the relay) and mxsink's role (the MX hosts the
 * relay delivers to) on the same worker lcores, in one poll loop over one
 * lib/net stack per worker.
 *
 *	mxload --config FILE MXGEN-OPTIONS --sink MXSINK-OPTIONS
 *
 * SIGUSR1 starts mxgen's load when it was given --start-on-signal: bench/run
 * starts mxload first, as the memif server of both links, then the relay,
 * and signals mxload once the relay is up.
 * The config has two ports: mxgen's connections leave by the route to
 * their --target (port 0 in bench/run), and the sink's DNS zone answers
 * with the address of the last port (port 1), where the relay delivers.
 * Every option before --sink is mxgen's, every one after it mxsink's (see
 * their usage); both print their per-second lines to stdout as they do
 * alone.  When mxgen's load and drain are over, mxgen's summary line and
 * --json file are written and the sink carries on until SIGINT/SIGTERM
 * (or its own --duration / --max-messages), then writes its summary.  A
 * signal that comes while mxgen still runs stops its load first (the
 * drain follows, as for mxgen alone).
 *
 * Why one process: on a machine where the load side has one CPU, mxgen and
 * mxsink as two processes are two polling threads that the kernel switches
 * between on its time slices, so each link waits for its process to be
 * scheduled (memif rings overflow, TCP retransmits); here one loop serves
 * both links in every turn (bench/RESULTS.md, session 4, has the figures).
 */
#include "core.h"
#include "mxgen.h"
#include "mxsink.h"
#include "net.h"

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <rte_eal.h>
#include <rte_launch.h>
#include <rte_lcore.h>

#define MAX_WORKERS 64
#define MAX_ARGS 256

struct load_worker {
	unsigned index;
	struct net_stack *st;
	struct net_idle idle;
	uint64_t busy_us; /* loop turns that found work (as mxgen's and mxsink's busy_us) */
	uint64_t turns;
};

static volatile sig_atomic_t got_signal;
static volatile bool stop_all;
static struct net_dataplane dp;
static struct load_worker lw[MAX_WORKERS];

static void on_signal(int sig)
{
	(void)sig;
	got_signal = 1;
}

static void on_usr1(int sig)
{
	(void)sig;
	mxgen_role_go();
}

static int loop_main(void *arg)
{
	struct load_worker *w = arg;
	struct net_stack_conf sc;
	net_dataplane_stack_conf(&dp, w->index, &sc);
	w->st = net_stack_create(&sc);
	if (w->st == NULL) {
		fprintf(stderr, "mxload: worker %u: stack: %s\n", w->index, strerror(errno));
		got_signal = 1;
		return -1;
	}
	mxgen_role_open(w->index, w->st);
	if (mxsink_role_open(w->index, w->st) != 0) {
		got_signal = 1;
		return -1;
	}
	uint64_t prev = 0;
	bool worked = false;
	while (!stop_all) {
		uint64_t now = mx_now_us(), gen_sleep, sink_sleep;
		bool busy;
		if (worked)
			__atomic_store_n(&w->busy_us, w->busy_us + (now - prev), __ATOMIC_RELAXED);
		unsigned n = net_stack_poll(w->st, now);
		n += mxgen_role_turn(w->index, now, &gen_sleep);
		n += mxsink_role_turn(w->index, now, &busy, &sink_sleep);
		net_stack_idle(w->st, &w->idle, n > 0 || busy, now,
			       gen_sleep < sink_sleep ? gen_sleep : sink_sleep);
		worked = n > 0;
		prev = now;
		w->turns++;
	}
	for (uint64_t end = mx_now_us() + 100000; mx_now_us() < end;)
		net_stack_poll(w->st, mx_now_us());
	return 0;
}

static void usage(void)
{
	fprintf(stderr, "usage: mxload --config FILE MXGEN-OPTIONS --sink MXSINK-OPTIONS\n"
			"       (mxgen --help and mxsink --help list them)\n");
}

int main(int argc, char **argv)
{
	/* argv[0] + what comes before --sink, argv[0] + what comes after it */
	char *gen_argv[MAX_ARGS + 2], *sink_argv[MAX_ARGS + 2];
	int gen_argc = 1, sink_argc = 1, i = 1;
	gen_argv[0] = sink_argv[0] = argv[0];
	for (; i < argc && strcmp(argv[i], "--sink") != 0; i++) {
		if (gen_argc > MAX_ARGS) {
			usage();
			return 2;
		}
		gen_argv[gen_argc++] = argv[i];
	}
	if (i == argc) {
		usage();
		return 2;
	}
	for (i++; i < argc; i++) {
		if (sink_argc > MAX_ARGS) {
			usage();
			return 2;
		}
		sink_argv[sink_argc++] = argv[i];
	}
	gen_argv[gen_argc] = sink_argv[sink_argc] = NULL;

	const char *config, *sink_config;
	int rc = mxgen_role_setup(gen_argc, gen_argv, &config);
	if (rc != 0)
		return rc;
	rc = mxsink_role_setup(sink_argc, sink_argv, &sink_config);
	if (rc != 0)
		return rc;
	if (config == NULL || sink_config != NULL) {
		fprintf(stderr, "mxload: one --config, before --sink\n");
		usage();
		return 2;
	}
	struct cfg_file *cf;
	/* two ports: mxgen's, then the sink's */
	rc = net_dataplane_start_file(&dp, config, "mxload", argv[0], 2, MAX_WORKERS, &cf);
	if (rc != 0)
		return rc;
	if (mxgen_role_attach(&dp) != 0) {
		net_dataplane_stop(&dp);
		cfg_free(cf);
		return 1;
	}
	mxsink_role_attach(&dp, dp.conf.ports[dp.conf.n_ports - 1].addr);
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	signal(SIGUSR1, on_usr1);
	for (unsigned k = 0; k < dp.n_workers; k++) {
		lw[k].index = k;
		rte_eal_remote_launch(loop_main, &lw[k], dp.worker_lcore[k]);
	}
	uint64_t start = mx_now_us();
	bool gen_done = false;
	int gen_rc = 0;
	for (;;) {
		usleep(20000);
		uint64_t now = mx_now_us();
		if (got_signal)
			mxgen_role_stop();
		if (!gen_done && mxgen_role_tick(now)) {
			gen_done = true;
			gen_rc = mxgen_role_finish(); /* the sink carries on */
		}
		if (mxsink_role_tick(now) || (got_signal && gen_done))
			break;
	}
	stop_all = true;
	rte_eal_mp_wait_lcore();
	if (!gen_done)
		gen_rc = mxgen_role_finish();
	uint64_t busy = 0, turns = 0;
	for (unsigned k = 0; k < dp.n_workers; k++)
		busy += lw[k].busy_us, turns += lw[k].turns;
	fprintf(stderr, "mxload: %.1f s, %" PRIu64 " loop turns, busy %.3f s\n",
		(double)(mx_now_us() - start) / 1e6, turns, (double)busy / 1e6);
	rc = mxsink_role_finish();
	net_dataplane_stop(&dp);
	cfg_free(cf);
	return gen_rc ? gen_rc : rc;
}
