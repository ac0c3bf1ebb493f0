/*
 * worker.c - one worker per lcore, run to completion: the core's TCP/IP
 * stack and the services on it, with idle-aware polling so an idle relay
 * does not peg its cores.
 */
#include "worker.h"

#include <errno.h>
#include <string.h>

#include <rte_launch.h>
#include <rte_lcore.h>

struct worker {
	unsigned index;
	unsigned lcore;
	struct net_stack *st;
	struct net_idle idle;
	const struct relay_config *conf;
	struct net_dataplane *dp;
	int status;
};

static struct worker workers[64];
static unsigned n_workers;
static volatile int stopping;

static int worker_main(void *arg)
{
	struct worker *w = arg;
	struct net_stack_conf sc;

	net_dataplane_stack_conf(w->dp, w->index, &sc);
	w->st = net_stack_create(&sc);
	if (w->st == NULL) {
		MX_ERR("worker %u: cannot create the stack: %s", w->index, strerror(errno));
		w->status = -ENOMEM;
		return -1;
	}
	while (!stopping) {
		uint64_t now = mx_now_us();
		unsigned n = net_stack_poll(w->st, now);
		net_stack_idle(w->st, &w->idle, n > 0, now, 10000);
	}
	net_stack_destroy(w->st);
	return 0;
}

int workers_start(const struct relay_config *conf, struct net_dataplane *dp)
{
	n_workers = dp->n_workers;
	for (unsigned i = 0; i < n_workers; i++) {
		struct worker *w = &workers[i];
		w->index = i;
		w->lcore = dp->worker_lcore[i];
		w->conf = conf;
		w->dp = dp;
		int rc = rte_eal_remote_launch(worker_main, w, w->lcore);
		if (rc != 0)
			return rc;
	}
	return 0;
}

void workers_stop(void)
{
	stopping = 1;
	rte_eal_mp_wait_lcore();
}
