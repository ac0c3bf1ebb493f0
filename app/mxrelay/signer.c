/*
 * signer.c - DKIM signer lcores ([dkim] sign_lcores; see signer.h).
 *
 * Rings: one request ring shared by every worker and every signer lcore
 * (multi-producer, multi-consumer), and one reply ring per worker
 * (multi-producer: any signer; single consumer: that worker).  A worker
 * keeps at most REPLY_RING - 1 jobs outstanding, so a signer's reply
 * always fits.
 *
 * Idle signers spin briefly, then sleep on an eventfd that a submitter
 * writes only when some signer said it is going to sleep (the sleeper
 * counts itself first and looks at the ring once more, so no job is left
 * behind a sleeping signer).  A finished job wakes its worker's stack
 * (net_stack_wake), which may be asleep on RX interrupts.
 */
#include "signer.h"

#include "core.h"
#include "dkim.h"
#include "net.h"

#include <errno.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <rte_errno.h>
#include <rte_lcore.h>
#include <rte_pause.h>
#include <rte_ring.h>

#define REQ_RING 1024
#define REPLY_RING 1024
#define MAX_SIGNERS 16
#define MAX_WORKERS 64
#define SPIN_TURNS 256
#define SLEEP_MS 100 /* a sleeping signer looks at its stop flag this often */

struct signer_lcore {
	unsigned lcore;
	_Atomic uint64_t jobs, sleeps;
};

static struct rte_ring *req_ring;
static struct rte_ring *reply_ring[MAX_WORKERS];
static struct net_stack *_Atomic worker_stack[MAX_WORKERS];
static unsigned outstanding[MAX_WORKERS]; /* each touched by its own worker only */
static struct signer_lcore signers[MAX_SIGNERS];
static unsigned n_signers, n_worker_rings;
static int wake_fd = -1;
static atomic_int sleepers;
static atomic_bool stop;

static void signer_sleep(struct signer_lcore *sl)
{
	atomic_fetch_add(&sleepers, 1);
	if (rte_ring_count(req_ring) == 0 && !atomic_load(&stop)) {
		struct pollfd p = {.fd = wake_fd, .events = POLLIN};
		if (poll(&p, 1, SLEEP_MS) > 0) {
			uint64_t v;
			ssize_t r = read(wake_fd, &v, sizeof(v)); /* nonblocking: another may have it */
			(void)r;
		}
		atomic_fetch_add_explicit(&sl->sleeps, 1, memory_order_relaxed);
	}
	atomic_fetch_sub(&sleepers, 1);
}

static int signer_main(void *arg)
{
	struct signer_lcore *sl = arg;
	unsigned empty = 0;

	while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
		void *jobs[8];
		unsigned n = rte_ring_dequeue_burst(req_ring, jobs, 8, NULL);
		if (n == 0) {
			if (++empty < SPIN_TURNS)
				rte_pause();
			else
				signer_sleep(sl);
			continue;
		}
		empty = 0;
		for (unsigned i = 0; i < n; i++) {
			struct sign_job *j = jobs[i];
			j->rc = dkim_sign_final(j->sg, &j->hdr, &j->len);
			while (rte_ring_enqueue(reply_ring[j->worker], j) != 0)
				rte_pause(); /* cannot stay full: outstanding < REPLY_RING */
			struct net_stack *st = atomic_load(&worker_stack[j->worker]);
			if (st != NULL)
				net_stack_wake(st);
		}
		atomic_fetch_add_explicit(&sl->jobs, n, memory_order_relaxed);
	}
	return 0;
}

int signers_start(const struct net_dataplane *dp, unsigned n_workers)
{
	char name[RTE_RING_NAMESIZE];

	if (dp->n_reserved == 0)
		return 0;
	if (dp->n_reserved > MAX_SIGNERS || n_workers > MAX_WORKERS) {
		MX_ERR("dkim: at most %d signer lcores and %d workers", MAX_SIGNERS, MAX_WORKERS);
		return -EINVAL;
	}
	atomic_store(&stop, false);
	wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	req_ring = rte_ring_create("mx_sign_req", REQ_RING, SOCKET_ID_ANY, 0);
	if (wake_fd < 0 || req_ring == NULL)
		goto fail;
	for (n_worker_rings = 0; n_worker_rings < n_workers; n_worker_rings++) {
		snprintf(name, sizeof(name), "mx_sign_rep%u", n_worker_rings);
		reply_ring[n_worker_rings] =
			rte_ring_create(name, REPLY_RING, SOCKET_ID_ANY, RING_F_SC_DEQ);
		if (reply_ring[n_worker_rings] == NULL)
			goto fail;
		outstanding[n_worker_rings] = 0;
	}
	for (n_signers = 0; n_signers < dp->n_reserved; n_signers++) {
		struct signer_lcore *sl = &signers[n_signers];
		sl->lcore = dp->reserved_lcore[n_signers];
		atomic_store(&sl->jobs, 0);
		atomic_store(&sl->sleeps, 0);
		if (rte_eal_remote_launch(signer_main, sl, sl->lcore) != 0) {
			MX_ERR("dkim: cannot launch the signer on lcore %u", sl->lcore);
			signers_stop();
			return -EIO;
		}
	}
	MX_INFO("dkim: %u signer lcore(s) make the signatures of %u worker(s)", n_signers,
		n_workers);
	return 0;
fail:
	MX_ERR("dkim: signer rings: %s", rte_strerror(rte_errno));
	signers_stop();
	return -ENOMEM;
}

bool signers_active(void)
{
	return n_signers > 0 && !atomic_load_explicit(&stop, memory_order_relaxed);
}

void signers_attach_worker(unsigned worker, struct net_stack *st)
{
	if (worker < MAX_WORKERS)
		atomic_store(&worker_stack[worker], st);
}

int signer_submit(struct sign_job *job)
{
	if (!signers_active() || job->worker >= n_worker_rings ||
	    outstanding[job->worker] >= REPLY_RING - 1 || rte_ring_enqueue(req_ring, job) != 0)
		return -ENOBUFS;
	outstanding[job->worker]++;
	if (atomic_load(&sleepers) > 0) {
		uint64_t one = 1;
		ssize_t r = write(wake_fd, &one, sizeof(one));
		(void)r;
	}
	return 0;
}

unsigned signer_collect(unsigned worker, struct sign_job **jobs, unsigned max)
{
	if (worker >= n_worker_rings || outstanding[worker] == 0)
		return 0;
	unsigned n = rte_ring_dequeue_burst(reply_ring[worker], (void **)jobs, max, NULL);
	outstanding[worker] -= n;
	return n;
}

unsigned signer_outstanding(unsigned worker)
{
	return worker < n_worker_rings ? outstanding[worker] : 0;
}

void signers_stop(void)
{
	atomic_store(&stop, true);
	if (wake_fd >= 0) {
		uint64_t one = 1;
		ssize_t r = write(wake_fd, &one, sizeof(one));
		(void)r;
	}
	for (unsigned i = 0; i < n_signers; i++)
		rte_eal_wait_lcore(signers[i].lcore);
	n_signers = 0;
	for (unsigned i = 0; i < n_worker_rings; i++) {
		rte_ring_free(reply_ring[i]);
		reply_ring[i] = NULL;
		atomic_store(&worker_stack[i], NULL);
	}
	n_worker_rings = 0;
	rte_ring_free(req_ring);
	req_ring = NULL;
	if (wake_fd >= 0)
		close(wake_fd);
	wake_fd = -1;
}

void signers_stats(void (*fn)(void *arg, const char *name, uint64_t value), void *arg)
{
	uint64_t jobs = 0, sleeps = 0;
	for (unsigned i = 0; i < n_signers; i++) {
		jobs += atomic_load_explicit(&signers[i].jobs, memory_order_relaxed);
		sleeps += atomic_load_explicit(&signers[i].sleeps, memory_order_relaxed);
	}
	fn(arg, "dkim_signer_lcores", n_signers);
	fn(arg, "dkim_signer_jobs", jobs);
	fn(arg, "dkim_signer_sleeps", sleeps);
}
