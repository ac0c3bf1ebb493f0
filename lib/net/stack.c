/*
 * stack.c - the per-core stack: creation, the poll turn, Ethernet demux,
 * idle sleeping, counters.
 *
 * A worker calls net_stack_poll() in a loop.  One turn receives a burst
 * on every port (or from the software dispatcher's ring), runs each packet
 * to completion through Ethernet, ARP/IPv4 and TCP/UDP/ICMP and the
 * application callbacks, runs due timers, then flushes the transmit
 * buffers once, so replies produced by a burst leave in one tx_burst.
 *
 * Idle: net_stack_wait() sleeps on the RX interrupt fds of the worker's
 * queues and an eventfd (for wake-ups from other cores: the software
 * dispatcher, or an application handing work over), never past the
 * caller's deadline.  This is l3fwd-power's scheme.
 */
#include "stack_priv.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <rte_ethdev.h>
#include <rte_pause.h>

#define ARP_SCAN_US 100000u

static int tcp_out(void *ctx, uint32_t src, uint32_t dst, const uint8_t *seg, size_t len)
{
	return net_ipv4_output(ctx, src, dst, IPPROTO_TCP, seg, len);
}

static int tcp_out_data(void *ctx, uint32_t src, uint32_t dst, const uint8_t *hdr, size_t hlen,
			const uint8_t *data1, size_t len1, const uint8_t *data2, size_t len2)
{
	const struct net_piece pieces[3] = {{hdr, hlen}, {data1, len1}, {data2, len2}};
	return net_ipv4_output_v(ctx, src, dst, IPPROTO_TCP, pieces, len2 ? 3 : 2);
}

static uint32_t tcp_route_src(void *ctx, uint32_t dst)
{
	uint32_t nh;
	struct net_port_ctx *pc = net_route(ctx, dst, &nh);
	return pc != NULL ? pc->port->addr : 0;
}

static bool tcp_steers_here(void *ctx, uint32_t laddr, uint16_t lport, uint32_t raddr,
			    uint16_t rport)
{
	struct net_stack_priv *sp = ctx;
	uint32_t nh;
	struct net_port_ctx *pc = net_route(sp, raddr, &nh);
	if (pc == NULL)
		return true;
	/* As the reply will arrive: from raddr:rport to laddr:lport. */
	return net_port_flow_owner(pc->port, raddr, laddr, rport, lport) == sp->worker;
}

static const struct tcp_stack_ops tcp_ops = {
	.output = tcp_out,
	.output_data = tcp_out_data,
	.route_src = tcp_route_src,
	.steers_here = tcp_steers_here,
};

struct net_stack *net_stack_create(const struct net_stack_conf *conf)
{
	if (conf->n_ports == 0 || conf->n_ports > NET_MAX_PORTS ||
	    conf->worker >= conf->n_workers) {
		errno = EINVAL;
		return NULL;
	}
	struct net_stack *st = calloc(1, sizeof(*st));
	struct net_stack_priv *sp = calloc(1, sizeof(*sp));
	if (st == NULL || sp == NULL)
		goto nomem;
	st->priv = sp;
	sp->st = st;
	sp->worker = conf->worker;
	sp->n_workers = conf->n_workers;
	sp->pool = conf->pool;
	sp->arp_timeout_us = (uint64_t)(conf->arp_timeout_s ? conf->arp_timeout_s : 300) * 1000000u;
	sp->wake_fd = sp->epfd = -1;
	sp->n_ports = conf->n_ports;
	for (unsigned i = 0; i < conf->n_ports; i++) {
		struct net_port_ctx *pc = &sp->ports[i];
		pc->port = conf->ports[i];
		pc->queue = (uint16_t)conf->worker;
		pc->reads_rx = conf->worker < pc->port->nb_rx;
		pc->fault_rx.rng = (pc->port->fault.seed ^ 0x9e3779b97f4a7c15ull) + conf->worker * 2 + 1;
		pc->fault_tx.rng = (pc->port->fault.seed ^ 0xc2b2ae3d27d4eb4full) + conf->worker * 2 + 2;
	}
	struct tcp_conf tc;
	if (conf->tcp != NULL)
		tc = *conf->tcp;
	else
		tcp_conf_defaults(&tc);
	st->tcp = tcp_create(&tc, &tcp_ops, sp, conf->seed ^ ((uint64_t)conf->worker << 56));
	if (st->tcp == NULL)
		goto nomem;

	sp->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	sp->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (sp->wake_fd >= 0 && sp->epfd >= 0) {
		struct epoll_event ev = {.events = EPOLLIN, .data.u32 = UINT32_MAX};
		epoll_ctl(sp->epfd, EPOLL_CTL_ADD, sp->wake_fd, &ev);
		for (unsigned i = 0; i < sp->n_ports; i++) {
			struct net_port_ctx *pc = &sp->ports[i];
			pc->port->wake_fd[conf->worker] = sp->wake_fd;
			if (!pc->reads_rx || !pc->port->rx_intr)
				continue;
			int fd = rte_eth_dev_rx_intr_ctl_q_get_fd(pc->port->port_id, pc->queue);
			if (fd < 0)
				continue;
			ev = (struct epoll_event){.events = EPOLLIN, .data.u32 = i};
			if (epoll_ctl(sp->epfd, EPOLL_CTL_ADD, fd, &ev) == 0)
				pc->intr_fd = fd;
		}
	}
	return st;
nomem:
	if (st != NULL && st->tcp != NULL)
		tcp_destroy(st->tcp);
	free(sp);
	free(st);
	errno = ENOMEM;
	return NULL;
}

void net_stack_destroy(struct net_stack *st)
{
	if (st == NULL)
		return;
	struct net_stack_priv *sp = net_priv(st);
	for (unsigned i = 0; i < sp->n_ports; i++) {
		net_port_flush(sp, &sp->ports[i]);
		net_port_drop_held(sp, &sp->ports[i]);
	}
	for (unsigned i = 0; i < sp->n_arp_held; i++)
		rte_pktmbuf_free(sp->arp_held[i].m);
	tcp_destroy(st->tcp);
	if (sp->wake_fd >= 0)
		close(sp->wake_fd);
	if (sp->epfd >= 0)
		close(sp->epfd);
	free(sp);
	free(st);
}

void net_eth_input(struct net_stack_priv *sp, struct net_port_ctx *pc, struct rte_mbuf *m)
{
	if (rte_pktmbuf_data_len(m) < RTE_ETHER_HDR_LEN) {
		sp->stats.eth_bad++;
		rte_pktmbuf_free(m);
		return;
	}
	const struct rte_ether_hdr *eh = rte_pktmbuf_mtod(m, const struct rte_ether_hdr *);
	if (!rte_is_same_ether_addr(&eh->dst_addr, &pc->port->mac) &&
	    !rte_is_broadcast_ether_addr(&eh->dst_addr)) {
		sp->stats.eth_not_us++;
		rte_pktmbuf_free(m);
		return;
	}
	switch (rte_be_to_cpu_16(eh->ether_type)) {
	case RTE_ETHER_TYPE_IPV4:
		net_ipv4_input(sp, pc, m);
		break;
	case RTE_ETHER_TYPE_ARP:
		net_arp_input(sp, pc, m);
		break;
	default:
		sp->stats.eth_unknown_type++;
		rte_pktmbuf_free(m);
		break;
	}
}

unsigned net_stack_poll(struct net_stack *st, uint64_t now_us)
{
	struct net_stack_priv *sp = net_priv(st);
	uint64_t before = sp->stats.rx_pkts;

	sp->now_us = now_us;
	for (unsigned i = 0; i < sp->n_ports; i++)
		net_port_rx(sp, &sp->ports[i]);
	/*
	 * TCP coalesces the ACKs a burst asks for and sends them from
	 * tcp_poll(): run it after every burst, not only at timer deadlines.
	 */
	if (sp->stats.rx_pkts != before || now_us >= sp->tcp_deadline_us)
		sp->tcp_deadline_us = tcp_poll(st->tcp, now_us);
	if (now_us >= sp->arp_next_scan_us) {
		net_arp_timers(sp);
		sp->arp_next_scan_us = now_us + ARP_SCAN_US;
	}
	for (unsigned i = 0; i < sp->n_ports; i++)
		net_port_flush(sp, &sp->ports[i]);
	return (unsigned)(sp->stats.rx_pkts - before);
}

uint64_t net_stack_next_deadline(const struct net_stack *st)
{
	const struct net_stack_priv *sp = st->priv;
	for (unsigned i = 0; i < sp->n_ports; i++)
		if (sp->ports[i].tx_count)
			return 0; /* a full TX queue left packets: flush again at once */
	return RTE_MIN(sp->tcp_deadline_us, sp->arp_next_scan_us);
}

void net_stack_kick_timers(struct net_stack *st)
{
	net_priv(st)->tcp_deadline_us = 0;
}

bool net_stack_wait(struct net_stack *st, uint64_t timeout_us)
{
	struct net_stack_priv *sp = net_priv(st);
	bool can_wait = false;
	if (sp->epfd < 0)
		return false;
	for (unsigned i = 0; i < sp->n_ports; i++) {
		struct net_port_ctx *pc = &sp->ports[i];
		if (pc->reads_rx && pc->intr_fd <= 0)
			return false; /* a queue we must poll cannot interrupt */
		if (pc->reads_rx)
			rte_eth_dev_rx_intr_enable(pc->port->port_id, pc->queue);
		can_wait = true;
	}
	if (!can_wait)
		return false;
	for (unsigned i = 0; i < sp->n_ports; i++)
		__atomic_store_n(&sp->ports[i].port->sleeping[sp->worker], 1, __ATOMIC_SEQ_CST);
	/* Packets already handed to us by the dispatcher: do not sleep. */
	bool pending = false;
	for (unsigned i = 0; i < sp->n_ports; i++) {
		struct net_port *p = sp->ports[i].port;
		if (p->to_worker[sp->worker] != NULL && rte_ring_count(p->to_worker[sp->worker]))
			pending = true;
	}
	if (!pending) {
		struct epoll_event evs[NET_MAX_PORTS + 1];
		int ms = (int)((timeout_us + 999) / 1000);
		int n = epoll_wait(sp->epfd, evs, NET_MAX_PORTS + 1, ms);
		for (int i = 0; i < n; i++)
			if (evs[i].data.u32 == UINT32_MAX) {
				uint64_t v;
				ssize_t r = read(sp->wake_fd, &v, sizeof(v));
				(void)r;
			}
	}
	for (unsigned i = 0; i < sp->n_ports; i++) {
		struct net_port_ctx *pc = &sp->ports[i];
		__atomic_store_n(&pc->port->sleeping[sp->worker], 0, __ATOMIC_SEQ_CST);
		if (pc->reads_rx)
			rte_eth_dev_rx_intr_disable(pc->port->port_id, pc->queue);
	}
	return true;
}

void net_stack_wake(struct net_stack *st)
{
	uint64_t one = 1;
	ssize_t r = write(net_priv(st)->wake_fd, &one, sizeof(one));
	(void)r;
}

void net_stack_get_stats(const struct net_stack *st, struct net_stats *out)
{
	*out = st->priv->stats;
}

const struct tcp_stats *net_stack_tcp_stats(const struct net_stack *st)
{
	return tcp_get_stats(st->tcp);
}

#define IDLE_PAUSE_TURNS 64
#define IDLE_SLEEP_TURNS 512
#define IDLE_SPIN_US 50	     /* idle this long (and that many turns) before sleeping */
#define IDLE_NAP_MIN_US 20   /* shortest timed sleep of a port without RX interrupts */
#define IDLE_NAP_MAX_US 1000 /* longest */
#define IDLE_NAP_SHARE 4     /* a timed sleep is at most 1/4 of the idle time so far */

/*
 * Ports with RX interrupts (net_tap) sleep in epoll and wake on the next
 * packet, so a sleep costs no latency.  Ports without them (net_memif, PCI
 * NICs in poll mode) can only sleep for a fixed time, and a packet that
 * arrives meanwhile waits for the end of it.  A fixed 1 ms nap made two
 * such stacks talking to each other fall into lockstep: each woke, answered
 * and napped again before the reply came, one exchange per millisecond
 * (bench/net/run: 30k short transactions/s at 1.2 ms each, both workers
 * 99% idle).  So the nap grows with the idle time already seen, a quarter
 * of it, from 20 us to 1 ms: a worker that was just busy naps briefly, an
 * idle one still sleeps 1 ms at a time (an idle relay stays near 0% CPU),
 * and the latency a nap adds is bounded by a quarter of the quiet time
 * before the packet came.
 */
void net_stack_idle(struct net_stack *st, struct net_idle *idle, bool worked, uint64_t now_us,
		    uint64_t max_sleep_us)
{
	if (worked) {
		idle->empty_turns = 0;
		return;
	}
	if (idle->empty_turns++ == 0)
		idle->idle_since_us = now_us;
	if (idle->empty_turns < IDLE_PAUSE_TURNS)
		return;
	uint64_t idle_us = now_us > idle->idle_since_us ? now_us - idle->idle_since_us : 0;
	if (idle->empty_turns < IDLE_SLEEP_TURNS || idle_us < IDLE_SPIN_US) {
		rte_pause();
		return;
	}
	uint64_t dl = net_stack_next_deadline(st);
	uint64_t timeout = dl > now_us ? dl - now_us : 0;
	if (timeout > max_sleep_us)
		timeout = max_sleep_us;
	if (timeout == 0)
		return;
	idle->sleeps++;
	if (net_stack_wait(st, timeout)) {
		idle->interrupt_sleeps++;
		return;
	}
	uint64_t nap = idle_us / IDLE_NAP_SHARE;
	nap = RTE_MAX(nap, (uint64_t)IDLE_NAP_MIN_US);
	nap = RTE_MIN(nap, (uint64_t)IDLE_NAP_MAX_US);
	usleep((useconds_t)RTE_MIN(timeout, nap));
}

/* Counter names, in field order: every field of both structs is a uint64_t. */
static const char *const net_stat_names[] = {
	"rx_pkts",
	"tx_pkts",
	"rx_bytes",
	"tx_bytes",
	"tx_drops",
	"tx_nombuf",
	"dispatched",
	"dispatch_full",
	"eth_bad",
	"eth_not_us",
	"eth_unknown_type",
	"arp_in",
	"arp_requests_out",
	"arp_replies_out",
	"arp_bad",
	"arp_pending_drops",
	"arp_resolve_failed",
	"arp_table_full",
	"ip_in",
	"ip_bad_header",
	"ip_bad_cksum",
	"ip_bad_len",
	"ip_not_us",
	"ip_frags",
	"ip_unknown_proto",
	"ip_no_route",
	"ip_options",
	"ip_too_big",
	"l4_bad_cksum",
	"icmp_in",
	"icmp_echo_replies",
	"icmp_bad",
	"icmp_rate_limited",
	"udp_in",
	"udp_no_port",
	"udp_bad",
	"fault_drops",
	"fault_dups",
	"fault_reorders",
	"fault_corrupts",
	"tx_held",
};
_Static_assert(sizeof(net_stat_names) / sizeof(net_stat_names[0]) ==
		       sizeof(struct net_stats) / sizeof(uint64_t),
	       "net_stat_names must name every field of struct net_stats");

static const char *const tcp_stat_names[] = {
	"tcp_segs_in", "tcp_segs_out", "tcp_bytes_in", "tcp_bytes_out",
	"tcp_active_opens", "tcp_passive_opens", "tcp_conns_established", "tcp_conns_closed",
	"tcp_resets_in", "tcp_resets_out",
	"tcp_retransmits", "tcp_fast_retransmits", "tcp_rto_timeouts", "tcp_timeouts_dropped",
	"tcp_dupacks_in", "tcp_ooo_segs", "tcp_reass_conn_cap_hits", "tcp_reass_global_cap_hits",
	"tcp_no_listener", "tcp_backlog_full", "tcp_conn_limit_hits",
	"tcp_cookies_sent", "tcp_cookies_valid", "tcp_cookies_invalid",
	"tcp_challenge_acks", "tcp_challenge_acks_limited", "tcp_rst_bad_seq", "tcp_syn_in_window",
	"tcp_bad_header", "tcp_bad_options", "tcp_seg_outside_window", "tcp_paws_drops",
	"tcp_zero_window_probes", "tcp_time_wait_conns", "tcp_time_wait_full",
	"tcp_time_wait_reused", "tcp_ephemeral_exhausted", "tcp_conns_reused",
};
_Static_assert(sizeof(tcp_stat_names) / sizeof(tcp_stat_names[0]) ==
		       sizeof(struct tcp_stats) / sizeof(uint64_t),
	       "tcp_stat_names must name every field of struct tcp_stats");

void net_stack_stats_foreach(const struct net_stack *st,
			     void (*fn)(void *arg, const char *name, uint64_t value), void *arg)
{
	const uint64_t *v = (const uint64_t *)&st->priv->stats;
	for (size_t i = 0; i < sizeof(net_stat_names) / sizeof(net_stat_names[0]); i++)
		fn(arg, net_stat_names[i], v[i]);
	v = (const uint64_t *)tcp_get_stats(st->tcp);
	for (size_t i = 0; i < sizeof(tcp_stat_names) / sizeof(tcp_stat_names[0]); i++)
		fn(arg, tcp_stat_names[i], v[i]);
	struct rte_eth_stats es;
	for (unsigned i = 0; i < st->priv->n_ports; i++) {
		const struct net_port_ctx *pc = &st->priv->ports[i];
		/* net_tap: 1 when its Rx signal is off (port.c, tap_signal_off). */
		if (pc->port->tap_mode != NET_TAP_NONE)
			fn(arg, "port_tap_signal_off", pc->port->tap_mode == NET_TAP_SIGNAL_OFF);
		if (!pc->reads_rx || rte_eth_stats_get(pc->port->port_id, &es) != 0)
			continue;
		fn(arg, "port_imissed", es.imissed);
		fn(arg, "port_ierrors", es.ierrors);
		fn(arg, "port_rx_nombuf", es.rx_nombuf);
		fn(arg, "port_oerrors", es.oerrors);
	}
}
