/*
 * timer.h - a hashed timer wheel for one core's lib/net timers.
 *
 * 1 ms ticks, 4096 slots (about 4 s per revolution); a timer further away
 * waits in its slot for more revolutions.  Insert and cancel are O(1) (an
 * intrusive doubly linked list per slot), expiry visits only the slots of
 * the elapsed ticks.  A timer fires at the first net_timer_expire() whose
 * clock has reached its deadline rounded up to the next tick, so it fires at
 * most one tick late and never early.  Used by TCP (retransmission, delayed
 * ACK, persist, SYN-RCVD) with timers embedded in the connection.
 */
#ifndef MX_NET_TIMER_H
#define MX_NET_TIMER_H

#include <stdbool.h>
#include <stdint.h>

#define NET_TIMER_TICK_US 1000u
#define NET_TIMER_SLOTS 4096u

struct net_timer {
	struct net_timer *next;
	struct net_timer **pprev; /* NULL when not armed */
	uint64_t expire_tick;
	uint8_t kind; /* owner's tag: which timer of the owner this is */
};

struct net_timer_wheel {
	struct net_timer *slots[NET_TIMER_SLOTS];
	uint64_t bitmap[NET_TIMER_SLOTS / 64]; /* non-empty slots */
	uint64_t cur_tick;		       /* last tick fully expired */
	uint32_t count;			       /* armed timers */
};

typedef void (*net_timer_fn)(void *arg, struct net_timer *t);

void net_timer_wheel_init(struct net_timer_wheel *w, uint64_t now_us);
/** Arm (or re-arm) t to fire at expire_us (absolute µs). */
void net_timer_arm(struct net_timer_wheel *w, struct net_timer *t, uint64_t expire_us);
void net_timer_cancel(struct net_timer_wheel *w, struct net_timer *t);
static inline bool net_timer_armed(const struct net_timer *t)
{
	return t->pprev != 0;
}
/**
 * Fire every timer due at now_us: each is disarmed and then fn(arg, t) runs;
 * fn may arm or cancel any timer, including t.  Returns the number fired.
 */
unsigned net_timer_expire(struct net_timer_wheel *w, uint64_t now_us, net_timer_fn fn, void *arg);
/**
 * A lower bound of the next deadline (absolute µs; UINT64_MAX when nothing
 * is armed): the start of the first non-empty slot's tick.
 */
uint64_t net_timer_next(const struct net_timer_wheel *w);

#endif
