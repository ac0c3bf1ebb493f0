/*
 * stack_priv.h - per-port and per-core state of the layers below TCP
 * (Ethernet, ARP, IPv4, ICMP, UDP), shared by port.c, arp.c, ipv4.c, udp.c
 * and stack.c.  Not installed.
 */
#ifndef MX_NET_STACK_PRIV_H
#define MX_NET_STACK_PRIV_H

#include "net_internal.h"

#include <rte_ether.h>
#include <rte_mbuf.h>
#include <rte_ring.h>

#define NET_MAX_WORKERS 64
#define NET_MAX_PORTS 8
#define NET_BURST 32
#define NET_RX_BURSTS 4 /* bursts a port may give one poll while they come back full */
#define NET_TX_HOLD 480	      /* packets kept for a later tx_burst while the TX queue is full */
#define NET_TX_HOLD_US 100000 /* a TX queue that takes nothing this long: drop what it holds */
#define NET_RETA_SIZE 128
#define NET_DISPATCH_RING 4096
#define NET_ARP_ENTRIES 1024 /* power of two */
#define NET_ARP_PENDING 128  /* packets held per unresolved next hop (arp.c) */
#define NET_ARP_HELD 1024    /* packets held for all unresolved next hops, per core */
#define NET_UDP_BINDS 64     /* binds per core; one bind may cover a port range */

/* net_port.tap_mode */
enum {
	NET_TAP_NONE = 0,    /* not a net_tap port */
	NET_TAP_SIGNAL_OFF,  /* Rx signal off, the stack moves the trigger itself */
	NET_TAP_SIGNAL_KEPT, /* DPDK's per-packet Rx signal left as it was */
	NET_TAP_NO_TRIGGER,  /* the PMD found no signal: it reads on every burst already */
};

/* A port, shared read-only by all workers once set up (rings excepted). */
struct net_port {
	uint16_t port_id;
	uint32_t addr;
	uint32_t netmask;
	uint32_t gateway;
	struct rte_ether_addr mac;
	unsigned n_workers;
	bool software_rss; /* packets re-dispatched in software by flow hash */
	uint16_t nb_rx;    /* RX queues; worker w reads queue w if w < nb_rx */
	uint16_t reta[NET_RETA_SIZE]; /* hash low bits -> worker */
	uint16_t reta_mask;
	uint8_t rss_key[40] __attribute__((aligned(4))); /* rte_softrss reads it by words */
	unsigned host_ifindex;
	bool rx_intr; /* RX interrupts armed at configure time */
	/*
	 * net_tap's Rx trigger with its per-packet signal turned off (port.c,
	 * tap_signal_off): the PMD's own handler, called before each burst so
	 * that the burst reads the queue; NULL on every other port.
	 */
	void (*rx_trigger)(int);
	int rx_trigger_sig;
	uint8_t tap_mode;	/* NET_TAP_*: what tap_signal_off found and did */
	uint16_t tap_fds_quiet; /* tun fds whose O_ASYNC it cleared */
	uint64_t tx_offloads;
	struct net_fault_conf fault;
	struct rte_ring *to_worker[NET_MAX_WORKERS]; /* software dispatch */
	int wake_fd[NET_MAX_WORKERS];                /* eventfd of each worker */
	uint8_t sleeping[NET_MAX_WORKERS];           /* worker is in net_stack_wait */
};

struct net_arp_entry {
	uint32_t ip;        /* 0 = free */
	uint8_t state;      /* ARP_PENDING, ARP_VALID */
	uint8_t tries;
	uint16_t n_pending;    /* its packets in net_stack_priv.arp_held */
	struct rte_ether_addr mac;
	uint64_t expires_us;   /* VALID: lifetime; PENDING: next request */
};

/* A packet waiting for its next hop's address (arp.c), in arrival order. */
struct net_arp_held {
	uint32_t ip; /* the next hop */
	struct rte_mbuf *m;
};

/* Ports lo..hi (lo == hi for a single port); fn == NULL: a free slot. */
struct net_udp_bind {
	uint16_t lo, hi;
	udp_recv_fn fn;
	void *ctx;
};

/* Fault injection state of one direction of one port on one core. */
struct net_fault {
	uint64_t rng;
	struct rte_mbuf *held; /* reorder: released after the next packet */
};

struct net_port_ctx {
	struct net_port *port;
	uint16_t queue; /* this worker's RX/TX queue */
	bool reads_rx;  /* this worker polls the RX queue */
	int intr_fd;    /* RX interrupt fd in the worker's epoll set, 0 = none */
	uint16_t tx_count;	    /* packets in tx[] */
	uint16_t tx_held;	    /* of which the first tx_held found the TX queue full before */
	uint64_t tx_stuck_since_us; /* tx_held > 0: when the queue last took a packet */
	struct rte_mbuf *tx[NET_TX_HOLD + NET_BURST];
	struct net_fault fault_rx, fault_tx;
};

struct net_stack_priv {
	struct net_stack *st;
	unsigned worker, n_workers;
	struct rte_mempool *pool;
	uint64_t now_us;
	uint64_t arp_timeout_us;
	unsigned n_ports;
	struct net_port_ctx ports[NET_MAX_PORTS];
	struct net_arp_entry arp[NET_ARP_ENTRIES];
	uint64_t arp_next_scan_us;
	struct net_arp_held arp_held[NET_ARP_HELD]; /* oldest first */
	unsigned n_arp_held;
	uint64_t tcp_deadline_us;
	struct net_udp_bind udp[NET_UDP_BINDS];
	unsigned n_udp;			  /* slots in use */
	uint8_t udp_slot[UINT16_MAX + 1]; /* port -> slot + 1 (0: unbound): O(1) demux */
	uint64_t icmp_tokens, icmp_last_us;
	uint16_t ip_id;
	bool from_ring; /* processing frames another worker dispatched */
	int wake_fd; /* eventfd for net_stack_wake */
	int epfd;    /* epoll set of RX interrupt fds + wake_fd */
	struct net_stats stats;
};

/* port.c */
/** net_tap's Rx signal mode of p: "signal off", "signal kept", "no trigger", or "none". */
const char *net_port_tap_mode(const struct net_port *p);
void net_port_rx(struct net_stack_priv *sp, struct net_port_ctx *pc);
void net_port_tx(struct net_stack_priv *sp, struct net_port_ctx *pc, struct rte_mbuf *m);
void net_port_flush(struct net_stack_priv *sp, struct net_port_ctx *pc);
/** Free the packets a full TX queue left in pc->tx (counted as drops): at destroy. */
void net_port_drop_held(struct net_stack_priv *sp, struct net_port_ctx *pc);
uint32_t net_port_flow_hash(const struct net_port *p, uint32_t saddr, uint32_t daddr,
			    uint16_t sport, uint16_t dport);
unsigned net_port_flow_owner(const struct net_port *p, uint32_t saddr, uint32_t daddr,
			     uint16_t sport, uint16_t dport);

/* stack.c */
void net_eth_input(struct net_stack_priv *sp, struct net_port_ctx *pc, struct rte_mbuf *m);

/* arp.c */
void net_arp_input(struct net_stack_priv *sp, struct net_port_ctx *pc, struct rte_mbuf *m);
/** Fill in the destination MAC of m (an Ethernet frame) for next hop nh and send, or queue. */
void net_arp_output(struct net_stack_priv *sp, struct net_port_ctx *pc, uint32_t nh,
		    struct rte_mbuf *m);
void net_arp_timers(struct net_stack_priv *sp);

/* ipv4.c */
void net_ipv4_input(struct net_stack_priv *sp, struct net_port_ctx *pc, struct rte_mbuf *m);
/** Build Ethernet+IPv4 around payload (copied) and route it.  0 or -errno. */
int net_ipv4_output(struct net_stack_priv *sp, uint32_t src, uint32_t dst, uint8_t proto,
		    const uint8_t *payload, size_t len);
/** A piece of an IPv4 payload given in several (TCP: header, then the send ring's bytes). */
struct net_piece {
	const uint8_t *data;
	size_t len;
};
/** net_ipv4_output() of the concatenation of n pieces, copied once.  0 or -errno. */
int net_ipv4_output_v(struct net_stack_priv *sp, uint32_t src, uint32_t dst, uint8_t proto,
		      const struct net_piece *pieces, unsigned n);
struct net_port_ctx *net_route(struct net_stack_priv *sp, uint32_t dst, uint32_t *nexthop);

/* icmp.c */
void net_icmp_input(struct net_stack_priv *sp, uint32_t src, uint32_t dst, const uint8_t *data,
		    size_t len);

/* udp.c */
void net_udp_input(struct net_stack_priv *sp, uint32_t src, uint32_t dst, const uint8_t *data,
		   size_t len);

static inline struct net_stack_priv *net_priv(struct net_stack *st)
{
	return st->priv;
}

#endif
