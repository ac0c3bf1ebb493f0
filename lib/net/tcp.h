/*
 * tcp.h - internal interface between TCP and the rest of lib/net.
 *
 * TCP knows nothing about DPDK ports, Ethernet or ARP.  It receives
 * segments (TCP header + payload, checksum already verified by the IPv4
 * layer) through tcp_input() and emits segments through ops->output(),
 * leaving the TCP checksum field zero: the IPv4 layer fills it in (or asks
 * the NIC to).  Time is given by the caller (monotonic µs) on every entry
 * point, so unit tests drive the clock.
 *
 * The public API (tcp_listen, tcp_connect, tcp_send, ...) is declared in
 * net.h and reaches this state through struct net_stack's tcp member.
 */
#ifndef MX_NET_TCP_H
#define MX_NET_TCP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct tcp_state;

/** Limits and timers; tcp_conf_defaults() fills the documented defaults. */
struct tcp_conf {
	uint32_t max_conns;	     /* connections incl. SYN_RCVD, per core (65536) */
	uint32_t sndbuf;	     /* bytes per connection (256 KiB) */
	uint32_t rcvbuf;	     /* bytes per connection (256 KiB) */
	uint16_t mss;		     /* our MSS for a 1500 MTU (1460) */
	uint32_t syn_backlog;	     /* half-open connections per listener before cookies (1024) */
	uint32_t time_wait_max;	     /* TIME_WAIT entries per core (65536) */
	uint64_t time_wait_us;	     /* 2*MSL (60 s; tests shorten it) */
	uint32_t reass_conn_bytes;   /* out-of-order bytes held per connection (256 KiB) */
	uint64_t reass_global_bytes; /* out-of-order bytes held per core (64 MiB) */
	uint32_t challenge_acks_per_s; /* RFC 5961 section 7 rate limit (1000) */
	uint64_t delack_us;	       /* delayed ACK timeout (40 ms) */
	uint64_t rto_init_us;	       /* RFC 6298 (1 s) */
	uint64_t rto_min_us;	       /* (200 ms) */
	uint64_t rto_max_us;	       /* (60 s) */
	uint32_t syn_retries;	       /* (5) */
	uint32_t data_retries;	       /* retransmissions before giving up (12) */
	uint8_t wscale;		       /* our window scale shift (7) */
	bool timestamps;	       /* RFC 7323 timestamps (true) */
	bool syn_cookies;	       /* allowed when a backlog is full (true) */
	uint64_t keepalive_us;	       /* idle time before keepalive probes; 0 = off (0) */
	uint64_t keepalive_intvl_us;   /* between unanswered probes (75 s) */
	uint32_t keepalive_probes;     /* unanswered probes before giving up (9) */
};

void tcp_conf_defaults(struct tcp_conf *conf);

struct tcp_stack_ops {
	/**
	 * Send one segment from src to dst (host order).  seg holds the TCP
	 * header, options and payload with the checksum field zero; it is only
	 * valid during the call.  Returns 0 or -errno; a failed send is a lost
	 * segment as far as TCP is concerned (retransmission repairs it).
	 */
	int (*output)(void *ctx, uint32_t src, uint32_t dst, const uint8_t *seg, size_t len);
	/**
	 * Optional, for segments with data: as output, but the segment comes
	 * as the header (TCP header and options, checksum zero) and the
	 * payload in up to two pieces (the send buffer is a ring), so the
	 * payload is copied once, from the send buffer into the frame, instead
	 * of through a scratch buffer.  NULL: output() gets every segment.
	 */
	int (*output_data)(void *ctx, uint32_t src, uint32_t dst, const uint8_t *hdr, size_t hlen,
			   const uint8_t *data1, size_t len1, const uint8_t *data2, size_t len2);
	/** Source address to use toward dst (0 = no route). */
	uint32_t (*route_src)(void *ctx, uint32_t dst);
	/**
	 * Would the return traffic of this 4-tuple (as seen arriving: from
	 * raddr:rport to laddr:lport) be delivered to this core?  Used to pick
	 * ephemeral ports for active opens.  NULL means always.
	 */
	bool (*steers_here)(void *ctx, uint32_t laddr, uint16_t lport, uint32_t raddr,
			    uint16_t rport);
};

/** Counters of one core's TCP; every drop and error path has one. */
struct tcp_stats {
	uint64_t segs_in, segs_out, bytes_in, bytes_out;
	uint64_t active_opens, passive_opens, conns_established, conns_closed;
	uint64_t resets_in, resets_out;
	uint64_t retransmits, fast_retransmits, rto_timeouts, timeouts_dropped;
	uint64_t dupacks_in, ooo_segs, reass_conn_cap_hits, reass_global_cap_hits;
	uint64_t no_listener, backlog_full, conn_limit_hits;
	uint64_t cookies_sent, cookies_valid, cookies_invalid;
	uint64_t challenge_acks, challenge_acks_limited, rst_bad_seq, syn_in_window;
	uint64_t bad_header, bad_options, seg_outside_window, paws_drops;
	uint64_t zero_window_probes, time_wait_conns, time_wait_full, time_wait_reused;
	uint64_t ephemeral_exhausted;
	uint64_t conns_reused; /* connection structs taken from the per-core cache */
};

/** Create one core's TCP.  seed feeds ISNs, ports and cookie secrets. NULL on ENOMEM. */
struct tcp_state *tcp_create(const struct tcp_conf *conf, const struct tcp_stack_ops *ops,
			     void *ctx, uint64_t seed);
/** Free everything (no segments are sent). */
void tcp_destroy(struct tcp_state *ts);

/** One received segment (IPv4 addresses host order, checksum verified). */
/**
 * A segment from src:sport to dst:dport (host order) is about to be given to
 * tcp_input(): prefetch its connection-table bucket, so that a burst's
 * lookups miss the cache in parallel rather than one after another.
 */
void tcp_prefetch(const struct tcp_state *ts, uint32_t src, uint16_t sport, uint32_t dst,
		  uint16_t dport);
void tcp_input(struct tcp_state *ts, uint32_t src, uint32_t dst, const uint8_t *seg, size_t len,
	       uint64_t now_us);
/**
 * Run expired timers and send what is due (delayed ACKs, retransmissions,
 * probes, ACKs queued by tcp_input).  Returns the absolute time of the next
 * deadline (UINT64_MAX for none), so the poll loop knows how long it may
 * sleep; while connections exist it is at most one timer tick (1 ms) ahead.
 * Call it after every RX burst: ACKs owed for the burst leave then, one per
 * connection.
 */
uint64_t tcp_poll(struct tcp_state *ts, uint64_t now_us);

/**
 * The earliest time tcp_poll() has work to do: 0 when ACKs are queued
 * (tcp_input and the API queue coalesced ACKs and arm timers), else the
 * next timer or TIME_WAIT expiry, UINT64_MAX for none.  Cheap (no timer
 * runs); a poll loop that caches tcp_poll()'s return value must re-read
 * this after tcp_input() or any tcp_* API call, or simply call tcp_poll()
 * after every RX burst.
 */
uint64_t tcp_next_deadline(const struct tcp_state *ts);

const struct tcp_stats *tcp_get_stats(const struct tcp_state *ts);

/**
 * The per-core caches of ended connections' structs and send/receive
 * buffers (tcp.c), and what tcp_prewarm() put in them.  Not in struct
 * tcp_stats: stack.c names that struct's fields one by one.
 */
struct tcp_cache_stats {
	uint32_t conns_held, sbufs_held, rbufs_held; /* in the caches now */
	uint32_t limit;				     /* of each cache (TCP_BUF_CACHE) */
	uint64_t prewarmed;			     /* objects tcp_prewarm() added */
	uint64_t bufs_reused;			     /* buffers taken from the caches */
	uint64_t bufs_allocated;		     /* buffers malloc'ed: cache empty */
};
void tcp_get_cache_stats(const struct tcp_state *ts, struct tcp_cache_stats *out);

/**
 * Fill the caches up to conns connection structs and as many send and
 * receive buffers (at most the caches' limit), touching all of each struct
 * and the first ring_touch bytes of each buffer, so that the first
 * connections after start fault in no memory: a burst of thousands of new
 * connections otherwise spends its first second in page faults.  Returns
 * the number of objects added (0 when already full) or -ENOMEM (what was
 * made before stays cached).
 */
int tcp_state_prewarm(struct tcp_state *ts, unsigned conns, size_t ring_touch);

/** Connections in each state, for status output. */
uint32_t tcp_conn_count(const struct tcp_state *ts);

#endif
