/*
 * worker.c - one worker per lcore, run to completion: the core's TCP/IP
 * stack and the SMTP service on it, with idle-aware polling so an idle
 * relay does not peg its cores.
 */
#include "worker.h"
#include "smtpd.h"
#include "deliver.h"

#include <errno.h>
#include <string.h>
#include <sys/stat.h>

#include <rte_launch.h>
#include <rte_cycles.h>
#include <rte_lcore.h>

struct worker {
	unsigned index;
	unsigned lcore;
	struct net_stack *st;
	struct smtpd *smtpd;
	struct deliver *deliver;
	struct net_idle idle;
	struct net_dataplane *dp;
	volatile int ready;   /* 1 running, -1 failed */
	volatile bool drained; /* draining and no SMTP connection left */
};

static struct worker workers[64];
static unsigned n_workers;
static volatile int stopping;
static volatile int draining;
static int spool_lock_fd = -1;
static struct smtpd_shared shared;

static int worker_main(void *arg)
{
	struct worker *w = arg;
	struct net_stack_conf sc;

	net_dataplane_stack_conf(w->dp, w->index, &sc);
	w->st = net_stack_create(&sc);
	if (w->st == NULL) {
		MX_ERR("worker %u: cannot create the stack: %s", w->index, strerror(errno));
		w->ready = -1;
		return -1;
	}
	/* Before the spool opens: recovery hands unfinished messages to it. */
	w->deliver = deliver_create(shared.conf, w->st, w->index, n_workers);
	if (w->deliver == NULL) {
		net_stack_destroy(w->st);
		w->ready = -1;
		return -1;
	}
	w->smtpd = smtpd_create(&shared, w->st, w->index, w->deliver);
	if (w->smtpd == NULL) {
		deliver_destroy(w->deliver);
		net_stack_destroy(w->st);
		w->ready = -1;
		return -1;
	}
	deliver_attach_spool(w->deliver, smtpd_spool(w->smtpd));
	w->ready = 1;
	bool drain_started = false;
	while (!stopping) {
		uint64_t now = mx_now_us();
		if (draining && !drain_started) {
			smtpd_drain(w->smtpd);
			drain_started = true;
		}
		if (drain_started)
			w->drained = smtpd_drained(w->smtpd);
		unsigned n = net_stack_poll(w->st, now);
		n += smtpd_poll(w->smtpd, now);
		n += deliver_poll(w->deliver, now);
		net_stack_idle(w->st, &w->idle, n > 0, now, 10000);
	}
	/*
	 * smtpd first: its last spool completions still go to deliver, and the
	 * spool close makes deliver's last state records durable.  deliver's
	 * teardown touches neither the spool nor the queue's callbacks.
	 */
	deliver_quiesce(w->deliver);
	smtpd_destroy(w->smtpd);
	deliver_destroy(w->deliver);
	/* Let the last replies and FINs leave. */
	for (uint64_t end = mx_now_us() + 100000; mx_now_us() < end;)
		net_stack_poll(w->st, mx_now_us());
	net_stack_destroy(w->st);
	return 0;
}

int workers_start(struct relay_config *conf, struct net_dataplane *dp)
{
	char err[512];
	n_workers = dp->n_workers;
	/* The spool's size limit is shared by the cores that write it. */
	if (spool_config_from_cfg(conf->cf, n_workers, &conf->spool, err, sizeof(err)) != 0) {
		MX_ERR("%s", err);
		return -EINVAL;
	}
	/* One relay per spool directory: a second one would corrupt it. */
	if (mkdir(conf->spool.dir, 0750) < 0 && errno != EEXIST) {
		MX_ERR("spool %s: %s", conf->spool.dir, strerror(errno));
		return -errno;
	}
	spool_lock_fd = spool_dir_lock(conf->spool.dir);
	if (spool_lock_fd < 0) {
		MX_ERR("spool %s: %s", conf->spool.dir,
		       spool_lock_fd == -EWOULDBLOCK ? "locked by another running mxrelay"
						     : strerror(-spool_lock_fd));
		return spool_lock_fd;
	}
	int rc = smtpd_shared_init(&shared, conf, n_workers);
	if (rc != 0)
		return rc;
	rc = deliver_shared_init(conf, n_workers);
	if (rc != 0)
		return rc;
	for (unsigned i = 0; i < n_workers; i++) {
		struct worker *w = &workers[i];
		w->index = i;
		w->lcore = dp->worker_lcore[i];
		w->dp = dp;
		rc = rte_eal_remote_launch(worker_main, w, w->lcore);
		if (rc != 0)
			return rc;
	}
	for (unsigned i = 0; i < n_workers; i++) {
		while (workers[i].ready == 0)
			rte_delay_us_sleep(1000);
		if (workers[i].ready < 0) {
			workers_stop();
			return -EIO;
		}
	}
	return 0;
}

bool workers_drain(uint64_t deadline_us)
{
	draining = 1;
	for (;;) {
		bool all = true;
		for (unsigned i = 0; i < n_workers; i++)
			all = all && (workers[i].ready != 1 || workers[i].drained);
		if (all)
			return true;
		if (mx_now_us() >= deadline_us)
			return false;
		rte_delay_us_sleep(10000);
	}
}

void workers_stop(void)
{
	stopping = 1;
	rte_eal_mp_wait_lcore();
	smtpd_shared_free(&shared);
	deliver_shared_free();
	spool_dir_unlock(spool_lock_fd);
	spool_lock_fd = -1;
}

struct stat_relay {
	worker_stat_fn fn;
	void *arg;
	unsigned worker;
};

static void relay_stat(void *arg, const char *name, uint64_t value)
{
	struct stat_relay *r = arg;
	r->fn(r->arg, r->worker, name, value);
}

void workers_stats_foreach(worker_stat_fn fn, void *arg)
{
	for (unsigned i = 0; i < n_workers; i++) {
		struct worker *w = &workers[i];
		if (w->ready != 1)
			continue;
		struct stat_relay r = {.fn = fn, .arg = arg, .worker = i};
		net_stack_stats_foreach(w->st, relay_stat, &r);
		smtpd_stats_foreach(w->smtpd, relay_stat, &r);
		deliver_stats_foreach(w->deliver, relay_stat, &r);
		fn(arg, i, "idle_sleeps", w->idle.sleeps);
	}
}

unsigned workers_count(void)
{
	return n_workers;
}
