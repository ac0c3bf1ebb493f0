/*
 * tcp_int.h - TCP's private structures, shared by lib/net/tcp*.c only.
 *
 * One struct tcp_state per core holds the connection table, listeners, the
 * TIME_WAIT table, the timer wheel, the output scratch buffer and counters.
 * A struct tcp_conn is a full connection (SYN_SENT .. LAST_ACK); TIME_WAIT
 * is kept in a compact struct tcp_tw instead, so a busy relay does not hold
 * two buffers per closed connection for 2*MSL.
 */
#ifndef MX_NET_TCP_INT_H
#define MX_NET_TCP_INT_H

#include "net_internal.h"
#include "tcp.h"
#include "timer.h"

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#define container_of_tcp(ptr, type, member) ((type *)(void *)((char *)(ptr)-offsetof(type, member)))

/* Modular sequence comparisons (RFC 9293 section 3.4). */
#define SEQ_LT(a, b) ((int32_t)((uint32_t)(a) - (uint32_t)(b)) < 0)
#define SEQ_LEQ(a, b) ((int32_t)((uint32_t)(a) - (uint32_t)(b)) <= 0)
#define SEQ_GT(a, b) ((int32_t)((uint32_t)(a) - (uint32_t)(b)) > 0)
#define SEQ_GEQ(a, b) ((int32_t)((uint32_t)(a) - (uint32_t)(b)) >= 0)

#define TH_FIN 0x01
#define TH_SYN 0x02
#define TH_RST 0x04
#define TH_PSH 0x08
#define TH_ACK 0x10
#define TH_URG 0x20

#define TCP_HDR_LEN 20
#define TCP_MAX_OPT 40
#define TCP_REASS_RANGES 16 /* out-of-order islands held per connection */
#define TCP_MAX_WSCALE 14   /* RFC 7323 section 2.3 */
#define TCP_EPHEMERAL_LO 10000
#define TCP_EPHEMERAL_HI 60999

enum tcp_st {
	TCPS_CLOSED = 0,
	TCPS_SYN_SENT,
	TCPS_SYN_RCVD,
	TCPS_ESTABLISHED,
	TCPS_FIN_WAIT_1,
	TCPS_FIN_WAIT_2,
	TCPS_CLOSE_WAIT,
	TCPS_CLOSING,
	TCPS_LAST_ACK,
	TCPS_TIME_WAIT, /* only transiently: the connection becomes a struct tcp_tw */
};

enum { TCP_TIMER_RTX = 1, TCP_TIMER_DELACK, TCP_TIMER_KEEPALIVE };

/* Parsed header and options of one received segment. */
struct tcp_seg {
	uint32_t src, dst;
	uint16_t sport, dport;
	uint32_t seq, ack;
	uint8_t flags;
	uint32_t wnd; /* raw 16-bit field */
	const uint8_t *data;
	uint32_t len;  /* payload bytes */
	uint16_t mss;  /* 0 = absent */
	int8_t wscale; /* -1 = absent */
	bool has_ts, sack_ok;
	uint32_t tsval, tsecr;
};

struct tcp_listener {
	struct tcp_listener *next;
	uint32_t addr;
	uint16_t port;
	bool dead; /* unlistened; freed when the last SYN_RCVD child goes */
	tcp_accept_fn on_accept;
	void *ctx;
	uint32_t backlog; /* children in SYN_RCVD */
	uint64_t last_cookie_us;
	bool cookies_used;
};

struct tcp_conn {
	struct tcp_conn *hnext;			/* connection table chain */
	struct tcp_conn **hpprev;		/* what points at us in it (NULL: unhashed) */
	struct tcp_conn *ack_next, **ack_pprev; /* pending-ACK list */
	struct tcp_state *ts;
	uint32_t laddr, raddr;
	uint16_t lport, rport;
	uint8_t state;
	bool active;		/* we sent the SYN */
	bool ts_ok;		/* timestamps negotiated */
	bool ws_ok;		/* window scaling negotiated */
	bool sack_ok;		/* SACK permitted: our ACKs carry SACK blocks (RFC 2018) */
	uint8_t snd_wscale;	/* shift applied to the peer's window */
	uint8_t rcv_wscale;	/* shift applied to our advertised window */
	bool fin_queued;	/* app shut down: FIN goes after the data */
	bool app_closed;	/* tcp_close(): no more callbacks but on_closed */
	bool want_writable;	/* tcp_send() was short */
	bool peer_fin;		/* FIN received (rcv_nxt counts it) */
	bool peer_fin_told;	/* on_peer_closed delivered */
	bool rcv_fin_ooo;	/* FIN seen beyond a hole, at rcv_fin_seq */
	bool in_recovery;	/* NewReno fast recovery */
	bool rtt_timing;	/* Karn's RTT sample in progress */
	bool persist;		/* rtx timer is the persist (or SWS override) timer */
	bool sws_override;	/* tcp_output(): send a short segment anyway */
	bool dead;		/* closed; freed when no callback frame holds it */
	bool delivering;	/* inside tcp_deliver(): on_data may re-enter */
	bool output_deferred;	/* tcp_send() inside on_data: output once it returns */
	bool fin_follows;	/* the segment being delivered ends with the peer's FIN */
	uint8_t finish_pending; /* 1: enter TIME_WAIT, 2: close, once the app read all */
	uint8_t busy;		/* callback frames on the stack */
	uint8_t dupacks;
	uint8_t backoff;
	uint8_t segs_unacked; /* full segments received since our last ACK */
	uint16_t mss;	      /* send MSS: min(our MSS, peer's) */
	uint16_t peer_mss;

	/* send sequence space */
	uint32_t iss, snd_una, snd_nxt, snd_max, snd_wnd, max_snd_wnd;
	uint32_t snd_wl1, snd_wl2;
	uint32_t cwnd, ssthresh, recover;
	uint32_t rtt_seq;
	uint64_t rtt_start;
	int64_t srtt_us, rttvar_us; /* srtt_us < 0: no sample yet */
	uint64_t rto_us;
	uint32_t retries;

	/* receive sequence space */
	uint32_t irs, rcv_nxt, last_ack_sent, rcv_fin_seq;
	uint32_t rcv_adv; /* furthest right edge ever advertised (never moves back) */
	uint32_t ts_recent, ts_offset;
	uint64_t ts_recent_us;

	/* send buffer: ring of bytes from snd_buf_seq, acked bytes released */
	uint8_t *sbuf;
	uint32_t sbuf_size, sbuf_head, sbuf_len;
	uint32_t snd_buf_seq; /* sequence number of sbuf[sbuf_head] */
	uint32_t fin_seq;     /* valid when fin_queued */

	/* receive buffer: in-order bytes not yet consumed, then the window */
	uint8_t *rbuf;
	uint32_t rbuf_size, rbuf_head, rbuf_len;
	/*
	 * Non-NULL only inside tcp_input() of a segment that arrived in order
	 * at an empty ring: the rbuf_len bytes that would be at rbuf_head are
	 * still in the segment, here (tcp_deliver offers them from it, and
	 * tcp_rx_settle copies what the app left into the ring).
	 */
	const uint8_t *rx_direct;
	uint32_t reass_bytes;
	uint32_t sack_recent; /* a sequence number of the latest out-of-order arrival */
	uint8_t reass_count;
	struct {
		uint32_t start, end;
	} reass[TCP_REASS_RANGES];

	struct net_timer rtx_timer, delack_timer, ka_timer;
	uint64_t last_rx_us;	       /* last segment received (keepalive) */
	uint32_t ka_probes;	       /* unanswered keepalive probes */
	struct tcp_listener *listener; /* SYN_RCVD child: whose backlog */
	const struct tcp_conn_ops *ops;
	void *user;
};

/* A connection in TIME_WAIT (RFC 9293 section 3.10.7.4), compact. */
struct tcp_tw {
	struct tcp_tw *hnext;	      /* hash chain, or the free list */
	struct tcp_tw **hpprev;	      /* what points at us in the hash chain */
	struct tcp_tw *fnext, *fprev; /* FIFO by expiry: oldest first */
	uint32_t laddr, raddr;
	uint16_t lport, rport;
	bool in_use, ts_ok;
	uint8_t rcv_wscale;
	uint32_t snd_nxt, rcv_nxt, ts_recent, ts_offset;
	uint64_t expire_us;
};

#define TCP_BUF_CACHE 4096  /* freed send/receive buffers kept per core, each kind */
#define TCP_CONN_CACHE 4096 /* freed connection structs kept per core (tcp.c) */

struct tcp_state {
	struct tcp_conf conf;
	void *sbuf_cache[TCP_BUF_CACHE], *rbuf_cache[TCP_BUF_CACHE]; /* tcp.c: of ended conns */
	unsigned sbuf_cached, rbuf_cached;
	struct tcp_conn *conn_cache; /* tcp.c: ended connections, chained by hnext */
	unsigned conn_cached;
	uint64_t prewarmed, bufs_reused, bufs_allocated; /* struct tcp_cache_stats */
	struct tcp_stack_ops ops;
	void *ctx;
	struct tcp_stats stats;
	uint64_t now_us;
	uint64_t secret[4]; /* keys: [0,1] ISN/ports/ts, [2,3] cookies */
	uint64_t hash_key;

	struct tcp_conn **conn_tab;
	uint32_t conn_mask, conn_count;

	struct tcp_listener *lis_tab[256];

	struct tcp_tw *tw_pool, *tw_free;
	struct tcp_tw **tw_tab;
	uint32_t tw_mask, tw_count;
	struct tcp_tw *tw_head, *tw_tail;

	struct tcp_conn *ack_list; /* connections owing a pure ACK */

	uint64_t reass_global;
	uint64_t chal_window_us;
	uint32_t chal_count;
	uint16_t next_port;

	struct net_timer_wheel wheel;
	uint8_t *scratch; /* one segment: header, options, conf.mss bytes */
};

/* tcp.c: tables, lifetime */
struct tcp_conn *tcp_conn_lookup(struct tcp_state *ts, uint32_t laddr, uint16_t lport,
				 uint32_t raddr, uint16_t rport);
struct tcp_conn *tcp_conn_new(struct tcp_state *ts, uint32_t laddr, uint16_t lport, uint32_t raddr,
			      uint16_t rport);
int tcp_conn_alloc_bufs(struct tcp_conn *c);
void tcp_conn_destroy(struct tcp_conn *c, int why, bool notify);
void tcp_conn_hold(struct tcp_conn *c);
void tcp_conn_put(struct tcp_conn *c);
struct tcp_listener *tcp_listener_lookup(struct tcp_state *ts, uint32_t addr, uint16_t port);
void tcp_listener_unref(struct tcp_state *ts, struct tcp_listener *l);
struct tcp_tw *tcp_tw_lookup(struct tcp_state *ts, uint32_t laddr, uint16_t lport, uint32_t raddr,
			     uint16_t rport);
void tcp_tw_remove(struct tcp_state *ts, struct tcp_tw *tw);
void tcp_enter_time_wait(struct tcp_conn *c);
void tcp_tw_expire(struct tcp_state *ts, uint64_t now_us);
void tcp_tw_restart(struct tcp_state *ts, struct tcp_tw *tw);

/* tcp_crypto.c: keyed hashes */
uint64_t tcp_siphash(const uint64_t key[2], const uint64_t *words, unsigned nwords);
uint32_t tcp_isn(struct tcp_state *ts, uint32_t laddr, uint16_t lport, uint32_t raddr,
		 uint16_t rport);
uint32_t tcp_ts_offset(struct tcp_state *ts, uint32_t laddr, uint16_t lport, uint32_t raddr,
		       uint16_t rport);
uint32_t tcp_cookie_make(struct tcp_state *ts, const struct tcp_seg *s, uint16_t *mss_out);
int tcp_cookie_check(struct tcp_state *ts, const struct tcp_seg *s, uint32_t cookie,
		     uint16_t *mss_out);

/* Forget every out-of-order island (its bytes leave the global count). */
void tcp_reass_drop(struct tcp_conn *c);

/* tcp_output.c */
void tcp_output(struct tcp_conn *c);
void tcp_send_syn(struct tcp_conn *c);
void tcp_send_ack_now(struct tcp_conn *c);
void tcp_send_rst(struct tcp_conn *c);
void tcp_send_segment(struct tcp_conn *c, uint32_t seq, uint32_t len, uint8_t flags);
void tcp_reply_rst(struct tcp_state *ts, const struct tcp_seg *s);
void tcp_send_raw(struct tcp_state *ts, uint32_t src, uint32_t dst, uint16_t sport, uint16_t dport,
		  uint32_t seq, uint32_t ack, uint8_t flags, uint16_t wnd, const uint8_t *opts,
		  unsigned optlen);
void tcp_tw_send_ack(struct tcp_state *ts, struct tcp_tw *tw);
void tcp_ack_later(struct tcp_conn *c);
void tcp_ack_list_remove(struct tcp_conn *c);
void tcp_flush_acks(struct tcp_state *ts);
bool tcp_challenge_ack(struct tcp_conn *c);
uint32_t tcp_rcv_window(const struct tcp_conn *c);

uint32_t tcp_ts_now(const struct tcp_state *ts, uint32_t offset);

/* tcp_timer.c */
void tcp_rtx_arm(struct tcp_conn *c);
void tcp_rtx_cancel(struct tcp_conn *c);
void tcp_rtt_sample(struct tcp_conn *c, uint64_t rtt_us);
void tcp_timer_fire(void *arg, struct net_timer *t);
void tcp_delack_arm(struct tcp_conn *c);
void tcp_keepalive_arm(struct tcp_conn *c);

/* tcp_input.c */
void tcp_deliver(struct tcp_conn *c);
void tcp_rx_settle(struct tcp_conn *c);
void tcp_finish(struct tcp_conn *c, bool time_wait);

#endif
