/*
 * worker.h - the worker lcores of the relay.
 */
#ifndef MX_RELAY_WORKER_H
#define MX_RELAY_WORKER_H

#include "relay.h"

/** Launch one worker per worker lcore of dp.  0 or -errno. */
int workers_start(struct relay_config *conf, struct net_dataplane *dp);
/** Ask the workers to finish and wait for them. */
void workers_stop(void);

#endif
