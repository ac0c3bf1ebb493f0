/*
 * net_internal.h - lib/net's per-core state, shared by its protocol files.
 * Not installed; upper layers use net.h only.
 */
#ifndef MX_NET_INTERNAL_H
#define MX_NET_INTERNAL_H

#include "net.h"
#include "tcp.h"

/*
 * The per-core stack.  The TCP part lives in struct tcp_state (tcp.c);
 * net.h's tcp_* functions reach it through st->tcp.  Fields below the
 * tcp member belong to the Ethernet/ARP/IPv4/UDP layers (stack.c).
 */
struct net_stack {
	struct tcp_state *tcp;
	struct net_stack_priv *priv; /* ports, ARP, UDP, counters: stack.c */
};

#endif
