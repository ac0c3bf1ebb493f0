/*
 * net.h - mxrelay's per-core TCP/IP stack over DPDK ports.
 *
 * One struct net_stack per worker lcore owns everything of that core:
 * ARP cache, TCP connections and listeners, UDP bindings, timers, counters.
 * Nothing in it is shared with other cores; packets for a connection owned
 * by another core are steered there by RSS (multi-queue ports) or by the
 * software dispatcher (single-queue ports such as net_tap).
 *
 * Upper layers (SMTP, TLS, DNS) use only the API below: listen/accept and
 * connect, send with backpressure, receive through a callback that may
 * leave bytes unconsumed (they stay in the receive buffer and the window
 * closes), close/abort, and per-connection user data.
 */
#ifndef MX_NET_H
#define MX_NET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "tcp.h"

struct net_stack;
struct tcp_conn;

/* ==== TCP (lib/net/tcp*.c) ============================================= */

/** Why a connection ended, passed to on_closed. */
enum tcp_close_reason {
	TCP_CLOSE_NORMAL = 0, /* both FINs exchanged */
	TCP_CLOSE_RESET,      /* RST received */
	TCP_CLOSE_TIMEOUT,    /* retransmissions or keepalive gave up */
	TCP_CLOSE_ABORTED,    /* tcp_abort() by this side */
	TCP_CLOSE_REFUSED,    /* active open answered by RST */
};

/**
 * Callbacks of one connection.  All run on the owning core, from inside
 * net_stack_poll().  A callback may call any tcp_* function on its own
 * connection, including tcp_close() and tcp_abort().
 */
struct tcp_conn_ops {
	/** Active open completed (SYN-ACK received). */
	void (*on_connected)(struct tcp_conn *c, void *user);
	/**
	 * In-order bytes arrived.  Returns how many were consumed; the rest stay
	 * buffered (the advertised window shrinks) and are offered again after
	 * tcp_recv_resume() or with the next arrival.
	 */
	size_t (*on_data)(struct tcp_conn *c, void *user, const uint8_t *data, size_t len);
	/**
	 * Send space became available (at least a quarter of the send buffer
	 * free, or all of it) after tcp_send() returned less than asked or
	 * filled the send buffer.
	 */
	void (*on_writable)(struct tcp_conn *c, void *user);
	/** Peer sent FIN: no more data will arrive.  We may still send. */
	void (*on_peer_closed)(struct tcp_conn *c, void *user);
	/** The connection is gone; c must not be used after this returns. */
	void (*on_closed)(struct tcp_conn *c, void *user, enum tcp_close_reason why);
};

/**
 * A listener accepted a connection (handshake complete).  The callback
 * installs the connection's ops with tcp_conn_set_ops(); returning non-zero
 * aborts the connection with RST.
 */
typedef int (*tcp_accept_fn)(struct tcp_conn *c, void *listen_ctx);

/** Listen on addr:port (host order; addr 0 = any of the stack's addresses). 0 or -errno. */
int tcp_listen(struct net_stack *st, uint32_t addr, uint16_t port, tcp_accept_fn on_accept,
	       void *listen_ctx);
/** Stop listening; established connections are unaffected. */
int tcp_unlisten(struct net_stack *st, uint32_t addr, uint16_t port);

/**
 * Active open to dst:dport (host order).  src 0 = the stack's address for the
 * route; sport 0 = an ephemeral port whose return traffic steers to this
 * core.  Returns the connection (on_connected or on_closed follow) or NULL
 * with errno set (EADDRNOTAVAIL: no free port, ENOBUFS: connection limit).
 */
struct tcp_conn *tcp_connect(struct net_stack *st, uint32_t src, uint16_t sport, uint32_t dst,
			     uint16_t dport, const struct tcp_conn_ops *ops, void *user);

void tcp_conn_set_ops(struct tcp_conn *c, const struct tcp_conn_ops *ops, void *user);
void *tcp_conn_user(const struct tcp_conn *c);

/**
 * Queue bytes for sending (copied).  Returns the number accepted, which is
 * less than len when the send buffer is full (on_writable follows), or
 * -EPIPE after shutdown/close, -ENOTCONN before the handshake completed.
 */
ssize_t tcp_send(struct tcp_conn *c, const void *data, size_t len);
/** Free space in the send buffer. */
size_t tcp_send_space(const struct tcp_conn *c);
/** Bytes sent but not yet acknowledged, plus bytes not yet sent. */
size_t tcp_send_pending(const struct tcp_conn *c);
/** Offer buffered receive bytes again (after on_data consumed less). */
void tcp_recv_resume(struct tcp_conn *c);
/** Send FIN after all queued data; receiving continues. */
void tcp_shutdown(struct tcp_conn *c);
/**
 * Shut down and let the stack finish the close on its own; no callback but
 * on_closed runs after this, and it may run later.
 */
void tcp_close(struct tcp_conn *c);
/** Send RST and free at once; on_closed(TCP_CLOSE_ABORTED) runs before returning. */
void tcp_abort(struct tcp_conn *c);

/** Addresses and ports of a connection, host order. */
void tcp_conn_endpoints(const struct tcp_conn *c, uint32_t *laddr, uint16_t *lport,
			uint32_t *raddr, uint16_t *rport);

/**
 * Prewarm this core's TCP caches (tcp_state_prewarm() in tcp.h): call it on
 * the core that owns st, before traffic.  Costs conns x (struct + 2 x
 * ring_touch) bytes of resident memory, held for the process's life.
 */
int tcp_prewarm(struct net_stack *st, unsigned conns, size_t ring_touch);
/** This core's TCP cache counters (struct tcp_cache_stats in tcp.h). */
void tcp_cache_stats(const struct net_stack *st, struct tcp_cache_stats *out);

/* ==== UDP (lib/net/udp.c) ============================================== */

typedef void (*udp_recv_fn)(void *ctx, uint32_t src, uint16_t sport, uint32_t dst, uint16_t dport,
			    const uint8_t *data, size_t len);

/**
 * Receive datagrams for dport on this core.  0 or -errno: -EADDRINUSE,
 * -ENOSPC (all 64 binds of this core taken), -EINVAL (port 0).
 */
int udp_bind(struct net_stack *st, uint16_t port, udp_recv_fn fn, void *ctx);
/**
 * One bind for every port of lo..hi (a resolver's source ports, RFC 5452):
 * one of the 64 binds of this core, demultiplexed in O(1).  0 or -errno:
 * -EADDRINUSE if any port of the range is bound, -ENOSPC, -EINVAL.
 */
int udp_bind_range(struct net_stack *st, uint16_t lo, uint16_t hi, udp_recv_fn fn, void *ctx);
int udp_unbind(struct net_stack *st, uint16_t port);
/** Remove the bind made with exactly lo..hi.  0 or -ENOENT. */
int udp_unbind_range(struct net_stack *st, uint16_t lo, uint16_t hi);
/**
 * Does a reply from raddr:rport to local port lport reach this core?  True
 * on one worker; with several, by the port's flow steering (RSS or software
 * dispatch), so a resolver draws only source ports whose replies come back
 * to the core that asked (as tcp_connect() does for ephemeral ports).
 */
bool udp_port_steers_here(struct net_stack *st, uint16_t lport, uint32_t raddr, uint16_t rport);
/** Send one datagram; src 0 = the stack's address.  0 or -errno. */
int udp_send(struct net_stack *st, uint32_t src, uint16_t sport, uint32_t dst, uint16_t dport,
	     const void *data, size_t len);


/* ==== ports and the per-core stack (lib/net/port.c, stack.c) ============ */

struct rte_mempool;
struct net_port;

/** Seeded fault injection on a port (per mille each; off when all zero). */
struct net_fault_conf {
	uint16_t drop, dup, reorder, corrupt;
	bool rx, tx; /* directions it applies to */
	uint64_t seed;
};

struct net_port_conf {
	uint16_t port_id;
	uint32_t addr; /* host order */
	uint8_t prefix_len;
	uint32_t gateway; /* 0 = none */
	struct net_fault_conf fault;
};

/**
 * Configure and start a DPDK port for n_workers worker cores: one RX/TX
 * queue pair per worker with symmetric-Toeplitz RSS where the device has
 * enough queues, otherwise one RX queue read by worker 0, which dispatches
 * to the owning core over rte_ring (software RSS), and one TX queue per
 * worker.  0, or -errno with a message in err.
 */
int net_port_setup(struct net_port **out, const struct net_port_conf *conf, unsigned n_workers,
		   struct rte_mempool *pool, char *err, size_t errlen);
/** "rss" or "software": how packets reach their owning core. */
const char *net_port_steering(const struct net_port *p);
/** The kernel interface index of a net_tap port (0 otherwise). */
unsigned net_port_host_ifindex(const struct net_port *p);
void net_port_close(struct net_port *p);

struct net_stack_conf {
	unsigned worker;    /* 0 .. n_workers-1 */
	unsigned n_workers;
	struct net_port **ports;
	unsigned n_ports;
	struct rte_mempool *pool;
	const struct tcp_conf *tcp; /* NULL = defaults */
	uint64_t seed;
	uint32_t arp_timeout_s; /* cache entry lifetime (300) */
};

/** Create a worker's stack; call on that worker. NULL on error (errno). */
struct net_stack *net_stack_create(const struct net_stack_conf *conf);
void net_stack_destroy(struct net_stack *st);
/**
 * One turn of the poll loop: receive and process a burst on every port,
 * run due timers, flush transmit buffers.  Returns packets handled, so the
 * caller can tell an idle turn.
 */
unsigned net_stack_poll(struct net_stack *st, uint64_t now_us);
/** Absolute µs of the stack's next timer (UINT64_MAX: none). */
uint64_t net_stack_next_deadline(const struct net_stack *st);
/**
 * Sleep until a packet arrives on one of this worker's RX queues, another
 * core wakes it (net_stack_wake), or timeout_us passes.  Uses RX interrupts
 * where the port has them (net_tap does); returns false at once if none of
 * the worker's queues can interrupt, and the caller sleeps briefly instead.
 */
bool net_stack_wait(struct net_stack *st, uint64_t timeout_us);

/**
 * Make the next net_stack_poll() run TCP's timers (call after queueing
 * data from outside a TCP callback, so it is sent on this turn).
 */
void net_stack_kick_timers(struct net_stack *st);

/** Wake a worker sleeping in net_stack_wait (any thread may call it). */
void net_stack_wake(struct net_stack *st);

/** Counters of one core's IP layers (TCP has its own, in tcp.h). */
struct net_stats {
	uint64_t rx_pkts, tx_pkts, rx_bytes, tx_bytes, tx_drops, tx_nombuf;
	uint64_t dispatched, dispatch_full;
	uint64_t eth_bad, eth_not_us, eth_unknown_type;
	uint64_t arp_in, arp_requests_out, arp_replies_out, arp_bad, arp_pending_drops,
		arp_resolve_failed, arp_table_full;
	uint64_t ip_in, ip_bad_header, ip_bad_cksum, ip_bad_len, ip_not_us, ip_frags,
		ip_unknown_proto, ip_no_route, ip_options, ip_too_big;
	uint64_t l4_bad_cksum;
	uint64_t icmp_in, icmp_echo_replies, icmp_bad, icmp_rate_limited;
	uint64_t udp_in, udp_no_port, udp_bad;
	uint64_t fault_drops, fault_dups, fault_reorders, fault_corrupts;
	uint64_t tx_held; /* packets kept for a later tx_burst: the TX queue was full */
};

void net_stack_get_stats(const struct net_stack *st, struct net_stats *out);
/**
 * Every counter of this core (IP layers, TCP, and the port's drop counters
 * when this core reads it), by name: for telemetry and test output.
 */
void net_stack_stats_foreach(const struct net_stack *st,
			     void (*fn)(void *arg, const char *name, uint64_t value), void *arg);
/** TCP counters of this core (struct tcp_stats from tcp.h). */
const struct tcp_stats *net_stack_tcp_stats(const struct net_stack *st);

/* ==== the dataplane from configuration (lib/net/setup.c) ================ */

struct cfg_file;
struct cfg_report;

#define NET_CFG_MAX_PORTS 8
#define NET_CFG_MAX_EAL_ARGS 64

/** What [eal], [port.N] and [tcp] say, validated. */
struct net_dp_conf {
	char eal_args[1024];
	unsigned n_ports;
	struct net_port_conf ports[NET_CFG_MAX_PORTS];
	uint32_t host_addr[NET_CFG_MAX_PORTS]; /* 0 = leave the host side alone */
	uint8_t host_prefix[NET_CFG_MAX_PORTS];
	unsigned mbufs; /* mempool size ([eal] mbufs, 16383) */
	struct tcp_conf tcp;
	unsigned reserved_lcores; /* the last N worker lcores are the application's, not ports' */
};

/** Validate [eal], [port.N] and [tcp]; errors go to r as file:line lines. */
void net_config_parse(struct cfg_file *cf, struct net_dp_conf *out, struct cfg_report *r);
/**
 * Read the file and net_config_parse() it: the start of every program built
 * on lib/net (tests/net/netsvc, bench/mxgen, bench/mxsink).  0 with *cf to
 * cfg_free(), or -EINVAL with the syntax or file:line errors in r.
 */
int net_config_load(const char *path, struct cfg_file **cf, struct net_dp_conf *out,
		    struct cfg_report *r);

/** A running dataplane: EAL, mempool, started ports, the worker lcores. */
struct net_dataplane {
	struct net_dp_conf conf;
	struct rte_mempool *pool;
	struct net_port *ports[NET_CFG_MAX_PORTS];
	unsigned n_workers;
	unsigned worker_lcore[64];
	unsigned n_reserved; /* conf.reserved_lcores: lcores with no queue, no stack */
	unsigned reserved_lcore[64];
};

/**
 * Initialise EAL with conf->eal_args (argv0 first), create the mempool,
 * set up and start every port for all worker lcores (every lcore but the
 * main one), and give net_tap ports' kernel side their host_addr.
 * 0 or -errno with a message in err.
 */
int net_dataplane_start(struct net_dataplane *dp, const struct net_dp_conf *conf,
			const char *argv0, char *err, size_t errlen);
/** The stack configuration for worker w (0-based) of a started dataplane. */
void net_dataplane_stack_conf(const struct net_dataplane *dp, unsigned w,
			      struct net_stack_conf *out);
void net_dataplane_stop(struct net_dataplane *dp);

/**
 * For tools: net_config_load() of path, then net_dataplane_start(), with
 * at least min_ports ports and 1..max_workers worker lcores.  Errors go to
 * stderr after "prog: ".  0 (the caller owns *cf and the dataplane), 2 for
 * a bad file or lcore count, 1 when the dataplane did not start.
 */
int net_dataplane_start_file(struct net_dataplane *dp, const char *path, const char *prog,
			     const char *argv0, unsigned min_ports, unsigned max_workers,
			     struct cfg_file **cf);

/** Idle back-off state of one worker loop (see net_stack_idle). */
struct net_idle {
	unsigned empty_turns;
	uint64_t idle_since_us; /* start of the current run of empty turns */
	uint64_t sleeps, interrupt_sleeps;
};

/**
 * Call once per loop turn with whether the turn did any work.  After a few
 * empty turns it pauses, then sleeps on RX interrupts (or, if the ports
 * have none, for a quarter of the idle time so far, 20 us to 1 ms), never
 * past the stack's next timer deadline nor max_sleep_us; any work resets
 * it, so under load the loop polls flat out.  Zero-initialise *idle.
 */
void net_stack_idle(struct net_stack *st, struct net_idle *idle, bool worked, uint64_t now_us,
		    uint64_t max_sleep_us);

#endif
