/*
 * timer.c - hashed timer wheel (see timer.h).
 *
 * Each slot holds the timers whose tick maps to it, in any order; a timer
 * of a later revolution is simply left in its slot when visited early.  A
 * bitmap of non-empty slots lets net_timer_next() find the next deadline
 * with at most NET_TIMER_SLOTS / 64 word tests.
 */
#include "timer.h"

#include <string.h>

#define SLOT_MASK (NET_TIMER_SLOTS - 1)

void net_timer_wheel_init(struct net_timer_wheel *w, uint64_t now_us)
{
	memset(w, 0, sizeof(*w));
	w->cur_tick = now_us / NET_TIMER_TICK_US;
}

static void slot_insert(struct net_timer_wheel *w, struct net_timer *t)
{
	uint32_t idx = (uint32_t)(t->expire_tick & SLOT_MASK);
	t->next = w->slots[idx];
	if (t->next)
		t->next->pprev = &t->next;
	w->slots[idx] = t;
	t->pprev = &w->slots[idx];
	w->bitmap[idx >> 6] |= 1ull << (idx & 63);
}

static void slot_unlink(struct net_timer_wheel *w, struct net_timer *t)
{
	*t->pprev = t->next;
	if (t->next)
		t->next->pprev = t->pprev;
	/* The bitmap bit is recomputed from the slot head: cheap and exact. */
	uint32_t idx = (uint32_t)(t->expire_tick & SLOT_MASK);
	if (!w->slots[idx])
		w->bitmap[idx >> 6] &= ~(1ull << (idx & 63));
	t->next = NULL;
	t->pprev = NULL;
}

void net_timer_arm(struct net_timer_wheel *w, struct net_timer *t, uint64_t expire_us)
{
	if (t->pprev) {
		slot_unlink(w, t);
		w->count--;
	}
	uint64_t tick = (expire_us + NET_TIMER_TICK_US - 1) / NET_TIMER_TICK_US;
	if (tick <= w->cur_tick)
		tick = w->cur_tick + 1;
	t->expire_tick = tick;
	slot_insert(w, t);
	w->count++;
}

void net_timer_cancel(struct net_timer_wheel *w, struct net_timer *t)
{
	if (!t->pprev)
		return;
	slot_unlink(w, t);
	w->count--;
}

unsigned net_timer_expire(struct net_timer_wheel *w, uint64_t now_us, net_timer_fn fn, void *arg)
{
	uint64_t now_tick = now_us / NET_TIMER_TICK_US;
	unsigned fired = 0;
	if (now_tick <= w->cur_tick)
		return 0;
	uint64_t span = now_tick - w->cur_tick;
	if (span > NET_TIMER_SLOTS)
		span = NET_TIMER_SLOTS;
	uint64_t first = w->cur_tick + 1;
	/*
	 * Timers armed by fn() during this loop must land at a tick > now_tick
	 * or be visited now; setting cur_tick first makes net_timer_arm() put
	 * "already due" timers at now_tick + 1, i.e. the next call.
	 */
	w->cur_tick = now_tick;
	for (uint64_t i = 0; i < span; i++) {
		uint32_t idx = (uint32_t)((first + i) & SLOT_MASK);
		if (!w->slots[idx])
			continue;
		/* Detach the slot so that fn() may freely arm/cancel timers. */
		struct net_timer *local = w->slots[idx];
		w->slots[idx] = NULL;
		w->bitmap[idx >> 6] &= ~(1ull << (idx & 63));
		local->pprev = &local;
		while (local) {
			struct net_timer *t = local;
			local = t->next;
			if (local)
				local->pprev = &local;
			t->next = NULL;
			t->pprev = NULL;
			if (t->expire_tick > now_tick) {
				slot_insert(w, t); /* a later revolution */
				continue;
			}
			w->count--;
			fired++;
			fn(arg, t);
		}
	}
	return fired;
}

uint64_t net_timer_next(const struct net_timer_wheel *w)
{
	if (!w->count)
		return UINT64_MAX;
	uint64_t start = w->cur_tick + 1;
	uint32_t d = 0;
	while (d < NET_TIMER_SLOTS) {
		uint32_t idx = (uint32_t)((start + d) & SLOT_MASK);
		uint64_t bits = w->bitmap[idx >> 6] >> (idx & 63);
		if (bits)
			return (start + d + (uint64_t)__builtin_ctzll(bits)) * NET_TIMER_TICK_US;
		d += 64 - (idx & 63);
	}
	return UINT64_MAX;
}
