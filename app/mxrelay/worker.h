/*
 * worker.h - the worker lcores of the relay.
 */
#ifndef MX_RELAY_WORKER_H
#define MX_RELAY_WORKER_H

#include "relay.h"

#include <stdio.h>

/** Launch one worker per worker lcore of dp.  0 or -errno. */
int workers_start(struct relay_config *conf, struct net_dataplane *dp);
/**
 * Graceful shutdown: new SMTP connections are refused with 421 while the
 * open ones finish; returns true when none is left, false at deadline_us.
 */
bool workers_drain(uint64_t deadline_us);
/** Ask the workers to finish and wait for them (the spool is synced). */
void workers_stop(void);

#endif

/**
 * Every counter of every worker, by name: lib/net (IP layers, TCP, port),
 * the SMTP server, TLS, the spool, and the listener glue.  Called from the
 * main lcore while the workers run: each value is one aligned 64-bit load,
 * so a counter may be a few events behind, never torn.
 */
typedef void (*worker_stat_fn)(void *arg, unsigned worker, const char *name, uint64_t value);
void workers_stats_foreach(worker_stat_fn fn, void *arg);
/** Number of running workers. */
unsigned workers_count(void);

/* ---- reload: configuration generations (see smtpd.h struct smtpd_shared) ---- */

struct smtpd_shared;
/**
 * Main lcore: make g (fully built, never changed again) the configuration
 * of new connections.  Each worker switches at the top of its next loop
 * turn and hands the new configuration to smtpd and deliver.  Sets
 * g->generation.  0, or -EBUSY when too many replaced generations are still
 * in use (connections accepted under them are open): g is not published.
 */
int workers_publish(struct smtpd_shared *g);
/** Main lcore: free replaced generations nobody uses any more.  Returns how many. */
unsigned workers_reclaim(void);
/** Replaced generations not freed yet. */
unsigned workers_generations_held(void);
/** The oldest generation a worker runs (every worker switched once it equals the current). */
uint64_t workers_generation_acked(void);
/** The configuration new connections get, and its generation number. */
const struct relay_config *workers_config(uint64_t *generation);

/* ---- control requests run on a worker's lcore ---- */

#define WORKER_CALL_ARG_MAX 512

struct deliver;
/**
 * A request run on worker's own lcore (between two poll turns): writes
 * its human-readable answer to out, returns 0 or -errno.
 */
typedef int (*worker_call_fn)(struct deliver *dl, unsigned worker, const char *arg, FILE *out);

struct worker_answer {
	int rc;	    /* fn's result; -ENODEV not running, -EBUSY an earlier request
		       still runs there, -ETIMEDOUT no answer in time, -E2BIG arg */
	char *text; /* what fn wrote (malloc'd, NUL-terminated; caller frees), or NULL */
};

/**
 * Main lcore only: run fn(dl, w, arg, out) on every worker w in mask (bit
 * w), in parallel, and wait up to timeout_us for all answers.  ans has an
 * entry per worker (indexed by worker).  A request that timed out stays
 * with its worker; its late answer is dropped by the next call.
 */
void workers_call(uint64_t mask, worker_call_fn fn, const char *arg, uint64_t timeout_us,
		  struct worker_answer *ans);
