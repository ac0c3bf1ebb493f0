/*
 * worker.h - the worker lcores of the relay.
 */
#ifndef MX_RELAY_WORKER_H
#define MX_RELAY_WORKER_H

#include "relay.h"

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
