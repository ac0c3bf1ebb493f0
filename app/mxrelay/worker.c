/*
 * worker.c - one worker per lcore, run to completion: the core's TCP/IP
 * stack and the SMTP service on it, with idle-aware polling so an idle
 * relay does not peg its cores.
 */
#include "worker.h"
#include "smtpd.h"
#include "deliver.h"
#include "signer.h"

#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
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
	/*
	 * Time of the loop turns that found work, in microseconds: the relay's
	 * own cost per message without its idle polling (bench/run's
	 * relay_busy_us_per_msg; mxgen and mxsink count theirs the same way).
	 */
	uint64_t busy_us;
	volatile int ready;    /* 1 running, -1 failed */
	volatile bool drained; /* draining and no SMTP connection left */
	/* reload and control requests (end of this file) */
	struct smtpd_shared *gen; /* the configuration generation this worker runs */
	uint64_t gen_seen;	  /* its number, acknowledged to the main lcore */
	struct worker_mailbox {
		uint32_t state; /* MB_IDLE, MB_POSTED by main, MB_DONE by the worker */
		worker_call_fn fn;
		char arg[WORKER_CALL_ARG_MAX];
		int rc;
		char *text;
	} box;
};

static struct worker workers[64];
static unsigned n_workers;
static volatile int stopping;
static volatile int draining;
static int spool_lock_fd = -1;
static struct smtpd_shared shared; /* generation 1; reloads make more (end of file) */

static struct smtpd_shared *current_gen; /* published by the main lcore */
static void worker_control(struct worker *w);
static void gens_free_all(void);

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
	w->gen = &shared;
	w->gen_seen = shared.generation;
	w->ready = 1;
	bool drain_started = false;
	uint64_t busy_since = 0; /* start of the last turn, when it found work */
	while (!stopping) {
		uint64_t now = mx_now_us();
		if (busy_since != 0) {
			w->busy_us += now - busy_since;
			busy_since = 0;
		}
		worker_control(w);
		if (draining && !drain_started) {
			smtpd_drain(w->smtpd);
			drain_started = true;
		}
		if (drain_started)
			w->drained = smtpd_drained(w->smtpd);
		unsigned n = net_stack_poll(w->st, now);
		n += smtpd_poll(w->smtpd, now);
		n += deliver_poll(w->deliver, now);
		/*
		 * A turn with nothing to do gives the CPU away for a moment.  The
		 * spool's io_uring workers (its writes and fdatasyncs) inherit this
		 * lcore's CPU, and against a loop that only spins they wait for the
		 * scheduler's slice: group commits then took milliseconds, not the
		 * ~300 us of window plus disk (spool_bench --cpu 1 --idle-yield,
		 * bench/spool/README.md: p99 about halved at 200k/s).  With nothing
		 * else runnable on this CPU the yield is one cheap system call.
		 */
		if (n == 0)
			sched_yield();
		else
			busy_since = now;
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
	/*
	 * io_cpus = main: the spool's io_uring workers run on the main lcore's
	 * CPUs, the housekeeping core, not on the workers' polling cores.
	 */
	if (conf->spool.io_cpus == SPOOL_IO_CPUS_MAIN)
		conf->spool.io_cpu_set = rte_lcore_cpuset(rte_get_main_lcore()); /* a cpu_set_t */
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
	int rc = smtpd_shared_init(&shared, conf, n_workers, err, sizeof(err));
	if (rc != 0)
		return rc;
	shared.generation = 1;
	current_gen = &shared;
	smtpd_shared_log(&shared);
	rc = deliver_shared_init(conf, n_workers);
	if (rc != 0)
		return rc;
	/* Before the workers: their first messages may already go to a signer. */
	rc = signers_start(dp, n_workers);
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
	/* The workers first: each collects its signatures still on a signer lcore. */
	for (unsigned i = 0; i < n_workers; i++)
		if (workers[i].ready != 0) /* launched */
			rte_eal_wait_lcore(workers[i].lcore);
	signers_stop();
	rte_eal_mp_wait_lcore();
	gens_free_all();
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
		fn(arg, i, "busy_us", w->busy_us);
		if (i == 0) /* the signer lcores serve all workers: counted once */
			signers_stats(relay_stat, &r);
	}
}

unsigned workers_count(void)
{
	return n_workers;
}

/* ---- configuration generations (reload) ------------------------------------------
 *
 * An epoch scheme: the main lcore publishes a new generation's pointer
 * (workers_publish); each worker picks it up at the top of its loop and
 * acknowledges by storing its number in gen_seen.  A replaced generation
 * is freed by the main lcore (workers_reclaim) only once every worker
 * acknowledged a newer one, so none can still be about to take a
 * reference, and its reference count (connections accepted under it,
 * workers holding it) dropped to zero.
 */

#define RETIRED_MAX 16

static struct smtpd_shared *retired[RETIRED_MAX];
static unsigned n_retired;

unsigned workers_reclaim(void)
{
	unsigned freed = 0;
	for (unsigned i = 0; i < n_retired;) {
		struct smtpd_shared *g = retired[i];
		bool acked = true;
		for (unsigned k = 0; k < n_workers; k++)
			acked = acked && __atomic_load_n(&workers[k].gen_seen, __ATOMIC_ACQUIRE) >
						 g->generation;
		if (!acked || __atomic_load_n(&g->refs, __ATOMIC_ACQUIRE) != 0) {
			i++;
			continue;
		}
		smtpd_shared_free(g);
		if (g != &shared)
			free(g);
		retired[i] = retired[--n_retired];
		freed++;
	}
	return freed;
}

int workers_publish(struct smtpd_shared *g)
{
	workers_reclaim();
	if (n_retired == RETIRED_MAX)
		return -EBUSY;
	g->generation = current_gen->generation + 1;
	retired[n_retired++] = current_gen;
	__atomic_store_n(&current_gen, g, __ATOMIC_RELEASE);
	return 0;
}

const struct relay_config *workers_config(uint64_t *generation)
{
	if (generation != NULL)
		*generation = current_gen != NULL ? current_gen->generation : 0;
	return current_gen != NULL ? current_gen->conf : NULL;
}

unsigned workers_generations_held(void)
{
	return n_retired;
}

uint64_t workers_generation_acked(void)
{
	uint64_t low = UINT64_MAX;
	for (unsigned k = 0; k < n_workers; k++) {
		uint64_t g = __atomic_load_n(&workers[k].gen_seen, __ATOMIC_ACQUIRE);
		low = g < low ? g : low;
	}
	return n_workers ? low : 0;
}

/* After the workers stopped: every generation but the first (freed by workers_stop). */
static void gens_free_all(void)
{
	for (unsigned i = 0; i < n_retired; i++)
		if (retired[i] != &shared) {
			smtpd_shared_free(retired[i]);
			free(retired[i]);
		}
	n_retired = 0;
	if (current_gen != NULL && current_gen != &shared) {
		smtpd_shared_free(current_gen);
		free(current_gen);
	}
	current_gen = &shared;
}

/* ---- control requests: a mailbox per worker -------------------------------------- */

enum { MB_IDLE, MB_POSTED, MB_DONE };

/* Top of the worker loop: a new generation, a control request. */
static void worker_control(struct worker *w)
{
	struct smtpd_shared *g = __atomic_load_n(&current_gen, __ATOMIC_ACQUIRE);
	if (g != w->gen && smtpd_reconfigure(w->smtpd, g) == 0) {
		deliver_reconfigure(w->deliver, g->conf);
		w->gen = g;
		__atomic_store_n(&w->gen_seen, g->generation, __ATOMIC_RELEASE);
	}
	if (__atomic_load_n(&w->box.state, __ATOMIC_ACQUIRE) != MB_POSTED)
		return;
	char *text = NULL;
	size_t len = 0;
	FILE *out = open_memstream(&text, &len);
	w->box.rc = out != NULL ? w->box.fn(w->deliver, w->index, w->box.arg, out) : -ENOMEM;
	if (out != NULL)
		fclose(out);
	w->box.text = text;
	__atomic_store_n(&w->box.state, MB_DONE, __ATOMIC_RELEASE);
}

void workers_call(uint64_t mask, worker_call_fn fn, const char *arg, uint64_t timeout_us,
		  struct worker_answer *ans)
{
	uint64_t posted = 0;
	size_t arg_len = arg != NULL ? strlen(arg) : 0;

	for (unsigned k = 0; k < n_workers && k < 64; k++) {
		struct worker *w = &workers[k];
		if (!(mask >> k & 1))
			continue;
		ans[k] = (struct worker_answer){.rc = -ENODEV};
		if (w->ready != 1 || stopping)
			continue;
		uint32_t st = __atomic_load_n(&w->box.state, __ATOMIC_ACQUIRE);
		if (st == MB_DONE) { /* the answer of a request that timed out earlier */
			free(w->box.text);
			w->box.text = NULL;
			st = MB_IDLE;
		}
		if (st != MB_IDLE) {
			ans[k].rc = -EBUSY;
			continue;
		}
		if (arg_len >= sizeof(w->box.arg)) {
			ans[k].rc = -E2BIG;
			continue;
		}
		w->box.fn = fn;
		memcpy(w->box.arg, arg != NULL ? arg : "", arg_len + 1);
		w->box.rc = 0;
		w->box.text = NULL;
		__atomic_store_n(&w->box.state, MB_POSTED, __ATOMIC_RELEASE);
		posted |= 1ull << k;
		ans[k].rc = -ETIMEDOUT;
	}
	/* Workers look at their mailbox every loop turn, at worst after an idle sleep. */
	for (uint64_t end = mx_now_us() + timeout_us; posted != 0;) {
		for (unsigned k = 0; k < n_workers && k < 64; k++) {
			struct worker *w = &workers[k];
			if (!(posted >> k & 1) ||
			    __atomic_load_n(&w->box.state, __ATOMIC_ACQUIRE) != MB_DONE)
				continue;
			ans[k].rc = w->box.rc;
			ans[k].text = w->box.text;
			w->box.text = NULL;
			__atomic_store_n(&w->box.state, MB_IDLE, __ATOMIC_RELEASE);
			posted &= ~(1ull << k);
		}
		if (posted == 0 || mx_now_us() >= end)
			break;
		rte_delay_us_sleep(200);
	}
}
