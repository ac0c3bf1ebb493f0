/*
 * mxsink.h - mxsink as a role that another process can run on its own
 * workers (bench/mxload runs it next to mxgen's role in one poll loop).
 *
 *	mxsink_role_setup(argc, argv, &config);	 options, TLS, SMTP (before EAL)
 *	mxsink_role_attach(&dp, addr);		 after net_dataplane_start
 *	worker i: mxsink_role_open(i, stack); then every loop turn, after
 *	          net_stack_poll: mxsink_role_turn(i, now, &busy, &max_sleep)
 *	main thread, every ~20 ms: mxsink_role_tick(now) (true: stop)
 *	after the workers stopped: mxsink_role_finish() (JSON summary)
 *
 * The mxsink binary is this plus its own main() and worker loop.
 */
#ifndef MXB_MXSINK_H
#define MXB_MXSINK_H

#include <stdbool.h>
#include <stdint.h>

#include "net.h"

int mxsink_role_setup(int argc, char **argv, const char **config);
void mxsink_role_attach(const struct net_dataplane *dp, uint32_t addr);
int mxsink_role_open(unsigned worker, struct net_stack *st);
unsigned mxsink_role_turn(unsigned worker, uint64_t now, bool *busy, uint64_t *max_sleep_us);
bool mxsink_role_tick(uint64_t now);
int mxsink_role_finish(void);

#endif
