/*
 * mxgen.h - mxgen as a role that another process can run on its own
 * workers (bench/mxload runs it next to mxsink's role in one poll loop).
 *
 *	mxgen_role_setup(argc, argv, &config);	options, SMTP, TLS (before EAL)
 *	mxgen_role_attach(&dp);			after net_dataplane_start
 *	worker i: mxgen_role_open(i, stack); then every loop turn, after
 *	          net_stack_poll: mxgen_role_turn(i, now, &max_sleep)
 *	main thread, every ~20 ms: mxgen_role_tick(now) (true: every worker
 *	          is done: the load and its drain are over)
 *	then: mxgen_role_finish() (summary line, JSON file)
 *
 * The mxgen binary is this plus its own main() and worker loop.
 */
#ifndef MXB_MXGEN_H
#define MXB_MXGEN_H

#include <stdbool.h>
#include <stdint.h>

#include "net.h"

int mxgen_role_setup(int argc, char **argv, const char **config);
int mxgen_role_attach(const struct net_dataplane *dp);
int mxgen_role_open(unsigned worker, struct net_stack *st);
unsigned mxgen_role_turn(unsigned worker, uint64_t now, uint64_t *max_sleep_us);
bool mxgen_role_tick(uint64_t now);
void mxgen_role_stop(void);
void mxgen_role_go(void);
int mxgen_role_finish(void);

#endif
