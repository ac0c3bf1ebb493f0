/*
 * tcp_timer.c - TCP's per-connection timers on the core's timer wheel.
 *
 * Each connection has two wheel timers:
 *  - rtx: SYN/SYN-ACK retransmission, data/FIN retransmission (RFC 6298),
 *    and, when the peer's window is zero with nothing in flight, the
 *    persist timer that sends window probes (RFC 9293 section 3.8.6.1)
 *    or, when the window is open but too small for sender SWS avoidance,
 *    the override timer (RFC 1122 section 4.2.3.4);
 *  - delack: the delayed ACK (RFC 9293 section 3.8.6.3, conf.delack_us);
 *  - keepalive (off unless conf.keepalive_us): after that much silence,
 *    probes (SEG.SEQ = SND.UNA - 1, no data, RFC 9293 section 3.8.4) every
 *    keepalive_intvl_us; keepalive_probes unanswered ones end the connection.
 * TIME_WAIT is not here: every entry lasts 2*MSL, so a FIFO in tcp.c
 * expires them in order at no cost.
 */
#include "tcp_int.h"

#define MAX_BACKOFF 16

void tcp_rtx_arm(struct tcp_conn *c)
{
	struct tcp_state *ts = c->ts;
	uint64_t rto = c->rto_us;
	for (unsigned i = 0; i < c->backoff && rto < ts->conf.rto_max_us; i++)
		rto <<= 1;
	if (rto > ts->conf.rto_max_us)
		rto = ts->conf.rto_max_us;
	net_timer_arm(&ts->wheel, &c->rtx_timer, ts->now_us + rto);
}

void tcp_rtx_cancel(struct tcp_conn *c)
{
	net_timer_cancel(&c->ts->wheel, &c->rtx_timer);
	c->persist = false;
}

void tcp_delack_arm(struct tcp_conn *c)
{
	if (!net_timer_armed(&c->delack_timer))
		net_timer_arm(&c->ts->wheel, &c->delack_timer,
			      c->ts->now_us + c->ts->conf.delack_us);
}

/* RFC 6298 section 2, with G = the timer tick. */
void tcp_rtt_sample(struct tcp_conn *c, uint64_t rtt_us)
{
	const struct tcp_conf *conf = &c->ts->conf;
	int64_t r = (int64_t)rtt_us;
	if (c->srtt_us < 0) {
		c->srtt_us = r;
		c->rttvar_us = r / 2;
	} else {
		int64_t d = c->srtt_us - r;
		if (d < 0)
			d = -d;
		c->rttvar_us = (3 * c->rttvar_us + d) / 4;
		c->srtt_us = (7 * c->srtt_us + r) / 8;
	}
	int64_t k = 4 * c->rttvar_us;
	if (k < (int64_t)NET_TIMER_TICK_US)
		k = NET_TIMER_TICK_US;
	uint64_t rto = (uint64_t)(c->srtt_us + k);
	if (rto < conf->rto_min_us)
		rto = conf->rto_min_us;
	if (rto > conf->rto_max_us)
		rto = conf->rto_max_us;
	c->rto_us = rto;
}

static void syn_timeout(struct tcp_conn *c)
{
	struct tcp_state *ts = c->ts;
	if (++c->retries > ts->conf.syn_retries) {
		ts->stats.timeouts_dropped++;
		/* A passive half-open connection was never seen by the app. */
		tcp_conn_destroy(c, TCP_CLOSE_TIMEOUT, c->active);
		return;
	}
	ts->stats.retransmits++;
	if (c->backoff < MAX_BACKOFF)
		c->backoff++;
	tcp_send_syn(c);
	tcp_rtx_arm(c);
}

static void persist_timeout(struct tcp_conn *c)
{
	struct tcp_state *ts = c->ts;
	uint32_t data_end = c->snd_buf_seq + c->sbuf_len;
	if (c->snd_wnd != 0 || !SEQ_LT(c->snd_nxt, data_end)) {
		/* The window opened, or was too small for sender SWS avoidance:
		 * this is the override timeout (RFC 1122 section 4.2.3.4), send
		 * what fits now. */
		c->persist = false;
		c->sws_override = true;
		tcp_output(c);
		c->sws_override = false;
		return;
	}
	if (++c->retries > ts->conf.data_retries) {
		ts->stats.timeouts_dropped++;
		tcp_send_rst(c);
		tcp_conn_destroy(c, TCP_CLOSE_TIMEOUT, true);
		return;
	}
	/* One byte beyond the window (RFC 9293 section 3.8.6.1); if the peer's
	 * window has opened it is accepted and ACKed. */
	ts->stats.zero_window_probes++;
	tcp_send_segment(c, c->snd_nxt, 1, TH_ACK);
	if (SEQ_LT(c->snd_max, c->snd_nxt + 1))
		c->snd_max = c->snd_nxt + 1;
	if (c->backoff < MAX_BACKOFF)
		c->backoff++;
	c->persist = true;
	tcp_rtx_arm(c);
}

static void rtx_timeout(struct tcp_conn *c)
{
	struct tcp_state *ts = c->ts;
	switch (c->state) {
	case TCPS_SYN_SENT:
	case TCPS_SYN_RCVD:
		syn_timeout(c);
		return;
	case TCPS_CLOSED:
	case TCPS_TIME_WAIT:
		return;
	default:
		break;
	}
	if (c->persist) {
		persist_timeout(c);
		return;
	}
	if (c->snd_una == c->snd_max)
		return; /* nothing outstanding */
	if (++c->retries > ts->conf.data_retries) {
		ts->stats.timeouts_dropped++;
		tcp_send_rst(c);
		tcp_conn_destroy(c, TCP_CLOSE_TIMEOUT, true);
		return;
	}
	ts->stats.rto_timeouts++;
	/* RFC 5681 section 3.1 equation 4, and cwnd = 1 MSS (loss window). */
	uint32_t flight = c->snd_max - c->snd_una;
	c->ssthresh = flight / 2 > 2u * c->mss ? flight / 2 : 2u * c->mss;
	c->cwnd = c->mss;
	/* RFC 6582 section 3.2 step 4: no fast retransmit for this data. */
	c->recover = c->snd_max;
	c->in_recovery = false;
	c->dupacks = 0;
	c->rtt_timing = false; /* Karn: no sample from retransmitted data */
	if (c->backoff < MAX_BACKOFF)
		c->backoff++;
	c->snd_nxt = c->snd_una;
	tcp_output(c);
	if (!net_timer_armed(&c->rtx_timer))
		tcp_rtx_arm(c);
}

void tcp_keepalive_arm(struct tcp_conn *c)
{
	struct tcp_state *ts = c->ts;
	if (!ts->conf.keepalive_us || c->dead)
		return;
	c->last_rx_us = ts->now_us;
	c->ka_probes = 0;
	if (!net_timer_armed(&c->ka_timer))
		net_timer_arm(&ts->wheel, &c->ka_timer, ts->now_us + ts->conf.keepalive_us);
}

static void keepalive_timeout(struct tcp_conn *c)
{
	struct tcp_state *ts = c->ts;
	const struct tcp_conf *conf = &ts->conf;
	if (c->state < TCPS_ESTABLISHED || c->state == TCPS_TIME_WAIT)
		return;
	uint64_t idle_until = c->last_rx_us + conf->keepalive_us;
	if (c->ka_probes == 0 && ts->now_us < idle_until) {
		net_timer_arm(&ts->wheel, &c->ka_timer, idle_until);
		return;
	}
	if (c->ka_probes >= conf->keepalive_probes) {
		ts->stats.timeouts_dropped++;
		tcp_send_rst(c);
		tcp_conn_destroy(c, TCP_CLOSE_TIMEOUT, true);
		return;
	}
	c->ka_probes++;
	/* An old sequence number: the peer must answer with an ACK. */
	tcp_send_segment(c, c->snd_una - 1, 0, TH_ACK);
	net_timer_arm(&ts->wheel, &c->ka_timer, ts->now_us + conf->keepalive_intvl_us);
}

void tcp_timer_fire(void *arg, struct net_timer *t)
{
	(void)arg;
	struct tcp_conn *c;
	if (t->kind == TCP_TIMER_KEEPALIVE) {
		c = container_of_tcp(t, struct tcp_conn, ka_timer);
		tcp_conn_hold(c);
		keepalive_timeout(c);
		tcp_conn_put(c);
		return;
	}
	if (t->kind == TCP_TIMER_DELACK) {
		c = container_of_tcp(t, struct tcp_conn, delack_timer);
		tcp_send_ack_now(c);
		return;
	}
	c = container_of_tcp(t, struct tcp_conn, rtx_timer);
	tcp_conn_hold(c);
	rtx_timeout(c);
	tcp_conn_put(c);
}
