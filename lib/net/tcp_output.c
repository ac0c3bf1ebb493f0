/*
 * tcp_output.c - building and sending TCP segments.
 *
 * Segments are built in the per-core scratch buffer and handed to
 * ops->output() with the checksum left zero (the IPv4 layer fills it);
 * where the stack offers ops->output_data() (lib/net's IPv4 does), a data
 * segment goes as the scratch header plus the send ring's bytes, so the
 * payload is copied once, into the frame.
 * tcp_output() sends what the window allows as soon as the app gives it
 * (no Nagle: SMTP is request/response), cut at the MSS.  Every segment we
 * send carries an ACK (after the SYN), so it also settles a pending
 * delayed or coalesced ACK.  Pure ACKs owed after in-order data are queued
 * on ts->ack_list and sent once per connection by tcp_poll(), so a burst of
 * segments costs one ACK.
 */
#include "tcp_int.h"

static inline void put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}

static inline void put32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

uint32_t tcp_ts_now(const struct tcp_state *ts, uint32_t offset)
{
	/* 1 ms timestamp clock (RFC 7323 section 5.4 allows 1 ms .. 1 s). */
	return (uint32_t)(ts->now_us / 1000) + offset;
}

uint32_t tcp_rcv_window(const struct tcp_conn *c)
{
	return c->rbuf_size - c->rbuf_len;
}

static unsigned put_ts_opt(uint8_t *o, uint32_t tsval, uint32_t tsecr)
{
	o[0] = 1;
	o[1] = 1;
	o[2] = 8;
	o[3] = 10;
	put32(o + 4, tsval);
	put32(o + 8, tsecr);
	return 12;
}

/*
 * SACK blocks of the islands held out of order (RFC 2018 section 4): the
 * one holding the latest arrival first, then the others from the highest.
 */
static unsigned put_sack_opt(const struct tcp_conn *c, uint8_t *o, unsigned max_blocks)
{
	unsigned first = c->reass_count - 1, n;
	for (unsigned i = 0; i < c->reass_count; i++)
		if (SEQ_GEQ(c->sack_recent, c->reass[i].start) &&
		    SEQ_LT(c->sack_recent, c->reass[i].end))
			first = i;
	o[0] = 1;
	o[1] = 1;
	o[2] = 5;
	uint8_t *b = o + 4;
	put32(b, c->reass[first].start);
	put32(b + 4, c->reass[first].end);
	n = 1;
	for (unsigned i = c->reass_count; i-- > 0 && n < max_blocks;) {
		if (i == first)
			continue;
		put32(b + 8 * n, c->reass[i].start);
		put32(b + 8 * n + 4, c->reass[i].end);
		n++;
	}
	o[3] = (uint8_t)(2 + 8 * n);
	return 4 + 8 * n;
}

/* Header + options into the scratch buffer; returns the header length. */
static unsigned build_header(uint8_t *p, uint16_t sport, uint16_t dport, uint32_t seq, uint32_t ack,
			     uint8_t flags, uint16_t wnd, const uint8_t *opts, unsigned optlen)
{
	unsigned hlen = TCP_HDR_LEN + optlen;
	put16(p, sport);
	put16(p + 2, dport);
	put32(p + 4, seq);
	put32(p + 8, ack);
	p[12] = (uint8_t)((hlen / 4) << 4);
	p[13] = flags;
	put16(p + 14, wnd);
	put16(p + 16, 0); /* checksum: the IPv4 layer */
	put16(p + 18, 0);
	if (optlen)
		memcpy(p + TCP_HDR_LEN, opts, optlen);
	return hlen;
}

static void emit(struct tcp_state *ts, uint32_t src, uint32_t dst, size_t len)
{
	ts->stats.segs_out++;
	ts->ops.output(ts->ctx, src, dst, ts->scratch, len);
}

void tcp_send_raw(struct tcp_state *ts, uint32_t src, uint32_t dst, uint16_t sport, uint16_t dport,
		  uint32_t seq, uint32_t ack, uint8_t flags, uint16_t wnd, const uint8_t *opts,
		  unsigned optlen)
{
	unsigned hlen = build_header(ts->scratch, sport, dport, seq, ack, flags, wnd, opts, optlen);
	if (flags & TH_RST)
		ts->stats.resets_out++;
	emit(ts, src, dst, hlen);
}

void tcp_ack_list_remove(struct tcp_conn *c)
{
	if (!c->ack_pprev)
		return;
	*c->ack_pprev = c->ack_next;
	if (c->ack_next)
		c->ack_next->ack_pprev = c->ack_pprev;
	c->ack_next = NULL;
	c->ack_pprev = NULL;
}

void tcp_ack_later(struct tcp_conn *c)
{
	struct tcp_state *ts = c->ts;
	if (c->ack_pprev || c->dead)
		return;
	c->ack_next = ts->ack_list;
	if (c->ack_next)
		c->ack_next->ack_pprev = &c->ack_next;
	ts->ack_list = c;
	c->ack_pprev = &ts->ack_list;
}

void tcp_flush_acks(struct tcp_state *ts)
{
	while (ts->ack_list) {
		struct tcp_conn *c = ts->ack_list;
		tcp_ack_list_remove(c);
		tcp_send_ack_now(c);
	}
}

/*
 * Our window field for a non-SYN segment (RFC 7323 section 2.3).
 *
 * Receiver SWS avoidance (RFC 9293 section 3.8.6.2.2, RFC 1122 4.2.3.3):
 * the right edge moves only by at least min(buffer/2, MSS), so a slowly
 * reading app does not invite a stream of tiny segments, and it never
 * moves back (RFC 1122 4.2.2.16).  The scaled field counts in units of
 * 1 << rcv_wscale, so an edge that is kept is announced rounded down, up
 * to a unit short of rcv_adv (RFC 7323 section 2.4); rounding it up
 * instead would creep it forward past the free space, unit by unit.
 * seq_acceptable() in tcp_input.c allows for that unit.
 */
static uint16_t window_field(struct tcp_conn *c, uint32_t *wnd_out)
{
	uint32_t wnd = tcp_rcv_window(c);
	uint32_t adv = SEQ_GT(c->rcv_adv, c->rcv_nxt) ? c->rcv_adv - c->rcv_nxt : 0;
	uint32_t step = c->rbuf_size / 2 < c->mss ? c->rbuf_size / 2 : c->mss;
	if (adv > wnd)
		adv = wnd; /* cannot happen: every edge offered had the room */
	if (c->state >= TCPS_ESTABLISHED && wnd - adv < step)
		wnd = adv;
	uint32_t field = wnd >> c->rcv_wscale;
	if (field > 0xffff)
		field = 0xffff;
	*wnd_out = field << c->rcv_wscale;
	return (uint16_t)field;
}

/*
 * Send one segment of the connection: data [seq, seq+len) from the send
 * buffer, flags as given (ACK is added once synchronized).
 */
void tcp_send_segment(struct tcp_conn *c, uint32_t seq, uint32_t len, uint8_t flags)
{
	struct tcp_state *ts = c->ts;
	uint8_t opts[TCP_MAX_OPT];
	unsigned optlen = 0;
	if (c->ts_ok)
		optlen = put_ts_opt(opts, tcp_ts_now(ts, c->ts_offset), c->ts_recent);
	if (c->sack_ok && c->reass_count && !(flags & (TH_SYN | TH_RST))) {
		/*
		 * c->mss already leaves room for the timestamps; SACK blocks
		 * (2 NOPs + 2 + 8 per block) must fit in what the data leaves,
		 * or the segment would exceed the path MTU.
		 */
		unsigned room = c->mss > len ? c->mss - len : 0;
		unsigned blocks = room >= 4 ? (room - 4) / 8 : 0;
		unsigned max_blocks = c->ts_ok ? 3 : 4;
		if (blocks > max_blocks)
			blocks = max_blocks;
		if (blocks > 0)
			optlen += put_sack_opt(c, opts + optlen, blocks);
	}
	uint32_t wnd;
	uint16_t field = window_field(c, &wnd);
	if (c->state != TCPS_SYN_SENT)
		flags |= TH_ACK;
	unsigned hlen = build_header(ts->scratch, c->lport, c->rport, seq,
				     (flags & TH_ACK) ? c->rcv_nxt : 0, flags, field, opts, optlen);
	uint32_t pos = 0, first = 0;
	if (len) {
		uint32_t off = seq - c->snd_buf_seq;
		pos = (c->sbuf_head + off) % c->sbuf_size;
		first = c->sbuf_size - pos;
		if (first > len)
			first = len;
		if (ts->ops.output_data == NULL) {
			memcpy(ts->scratch + hlen, c->sbuf + pos, first);
			memcpy(ts->scratch + hlen + first, c->sbuf, len - first);
		}
		ts->stats.bytes_out += len;
	}
	if (flags & TH_RST)
		ts->stats.resets_out++;
	if (flags & TH_ACK) {
		c->last_ack_sent = c->rcv_nxt;
		if (SEQ_GT(c->rcv_nxt + wnd, c->rcv_adv))
			c->rcv_adv = c->rcv_nxt + wnd;
		c->segs_unacked = 0;
		net_timer_cancel(&ts->wheel, &c->delack_timer);
		tcp_ack_list_remove(c);
	}
	if (len && ts->ops.output_data != NULL) {
		/* The payload goes from the send buffer straight into the frame. */
		ts->stats.segs_out++;
		ts->ops.output_data(ts->ctx, c->laddr, c->raddr, ts->scratch, hlen, c->sbuf + pos,
				    first, c->sbuf, len - first);
		return;
	}
	emit(ts, c->laddr, c->raddr, hlen + len);
}

/*
 * The sequence number of a pure ACK or RST: SND.NXT in RFC terms, i.e. our
 * highest sent (snd_max, since go-back-N after an RTO rewinds snd_nxt below
 * what the peer may already hold, and a zero-length segment below its
 * RCV.NXT would be rejected with its ACK information), but never beyond
 * the right edge of the peer's window (SND.UNA + SND.WND): a peer that
 * dropped out-of-order data rejects a sequence number past its window, and
 * then never sees our ACKs either.  Linux does the same
 * (tcp_acceptable_seq).
 */
static uint32_t acceptable_seq(const struct tcp_conn *c)
{
	uint32_t edge = c->snd_una + c->snd_wnd;
	return SEQ_GT(c->snd_max, edge) ? edge : c->snd_max;
}

void tcp_send_ack_now(struct tcp_conn *c)
{
	if (c->dead)
		return;
	tcp_send_segment(c, acceptable_seq(c), 0, TH_ACK);
}

void tcp_send_rst(struct tcp_conn *c)
{
	tcp_send_segment(c, acceptable_seq(c), 0, TH_RST | TH_ACK);
}

void tcp_send_syn(struct tcp_conn *c)
{
	struct tcp_state *ts = c->ts;
	uint8_t opts[TCP_MAX_OPT];
	unsigned n = 0;
	bool synack = c->state == TCPS_SYN_RCVD;
	opts[n++] = 2;
	opts[n++] = 4;
	put16(opts + n, ts->conf.mss);
	n += 2;
	/* Offer scaling and timestamps on a SYN; on a SYN-ACK only if offered
	 * (RFC 7323 sections 2.2 and 3.2). */
	if (!synack || c->ws_ok) {
		opts[n++] = 1;
		opts[n++] = 3;
		opts[n++] = 3;
		opts[n++] = synack ? c->rcv_wscale : ts->conf.wscale;
	}
	/* SACK-permitted (RFC 2018): we only send SACK blocks; the peer's
	 * blocks are ignored, which RFC 2018 section 4 allows. */
	if (!synack || c->sack_ok) {
		opts[n++] = 1;
		opts[n++] = 1;
		opts[n++] = 4;
		opts[n++] = 2;
	}
	if ((!synack && ts->conf.timestamps) || (synack && c->ts_ok))
		n += put_ts_opt(opts + n, tcp_ts_now(ts, c->ts_offset), synack ? c->ts_recent : 0);
	uint32_t wnd = tcp_rcv_window(c);
	/* The window of a SYN is never scaled (RFC 7323 section 2.2). */
	uint16_t field = wnd > 0xffff ? 0xffff : (uint16_t)wnd;
	/* Never data on a SYN or SYN-ACK, retransmitted or not. */
	unsigned hlen =
		build_header(ts->scratch, c->lport, c->rport, c->iss, synack ? c->rcv_nxt : 0,
			     synack ? (TH_SYN | TH_ACK) : TH_SYN, field, opts, n);
	if (synack) {
		c->last_ack_sent = c->rcv_nxt;
		c->rcv_adv = c->rcv_nxt + field;
	}
	c->snd_nxt = c->iss + 1;
	if (SEQ_LT(c->snd_max, c->snd_nxt))
		c->snd_max = c->snd_nxt;
	emit(ts, c->laddr, c->raddr, hlen);
}

void tcp_reply_rst(struct tcp_state *ts, const struct tcp_seg *s)
{
	if (s->flags & TH_RST)
		return;
	/* RFC 9293 section 3.10.7.1 */
	if (s->flags & TH_ACK)
		tcp_send_raw(ts, s->dst, s->src, s->dport, s->sport, s->ack, 0, TH_RST, 0, NULL, 0);
	else
		tcp_send_raw(ts, s->dst, s->src, s->dport, s->sport, 0,
			     s->seq + s->len + !!(s->flags & TH_SYN) + !!(s->flags & TH_FIN),
			     TH_RST | TH_ACK, 0, NULL, 0);
}

void tcp_tw_send_ack(struct tcp_state *ts, struct tcp_tw *tw)
{
	uint8_t opts[12];
	unsigned optlen = 0;
	if (tw->ts_ok)
		optlen = put_ts_opt(opts, tcp_ts_now(ts, tw->ts_offset), tw->ts_recent);
	uint32_t field = ts->conf.rcvbuf >> tw->rcv_wscale;
	tcp_send_raw(ts, tw->laddr, tw->raddr, tw->lport, tw->rport, tw->snd_nxt, tw->rcv_nxt,
		     TH_ACK, field > 0xffff ? 0xffff : (uint16_t)field, opts, optlen);
}

/* RFC 5961 section 7: at most challenge_acks_per_s per core. */
bool tcp_challenge_ack(struct tcp_conn *c)
{
	struct tcp_state *ts = c->ts;
	if (ts->now_us - ts->chal_window_us >= 1000000 || ts->now_us < ts->chal_window_us) {
		ts->chal_window_us = ts->now_us;
		ts->chal_count = 0;
	}
	if (ts->chal_count >= ts->conf.challenge_acks_per_s) {
		ts->stats.challenge_acks_limited++;
		return false;
	}
	ts->chal_count++;
	ts->stats.challenge_acks++;
	tcp_send_ack_now(c);
	return true;
}

/*
 * Sender-side silly window avoidance (RFC 9293 section 3.8.6.2.1, RFC 1122
 * section 4.2.3.4): a segment of len bytes (of avail not yet sent) goes
 * out when it is full-sized, when it carries everything queued (the app
 * asked for it to leave: no Nagle, SMTP is request/response), or when it
 * is at least half the largest window the peer ever offered (a peer with
 * a tiny buffer).  Otherwise the usable window (peer window or cwnd) is
 * what cuts the segment short, and waiting for the ACKs in flight to widen
 * it costs nothing; with nothing in flight the override timer sends it.
 */
static bool sws_send_ok(const struct tcp_conn *c, uint32_t len, uint32_t avail)
{
	if (len >= c->mss || len >= avail || c->sws_override)
		return true;
	return c->max_snd_wnd && len >= c->max_snd_wnd / 2;
}

/*
 * Send new data (and the FIN) as far as min(peer window, cwnd) allows.
 * After an RTO snd_nxt is pulled back to snd_una, so this also performs the
 * go-back-N retransmission, taking bytes from the unacknowledged part of
 * the send buffer; the FIN is resent the same way.
 */
void tcp_output(struct tcp_conn *c)
{
	struct tcp_state *ts = c->ts;
	if (c->dead)
		return;
	switch (c->state) {
	case TCPS_ESTABLISHED:
	case TCPS_CLOSE_WAIT:
	case TCPS_FIN_WAIT_1:
	case TCPS_CLOSING:
	case TCPS_LAST_ACK:
		break;
	default:
		return;
	}
	/* Limited transmit (RFC 3042): each of the first two duplicate ACKs
	 * lets one new segment out, so small windows still reach 3 dupacks. */
	uint32_t cwnd = c->cwnd;
	if (!c->in_recovery && c->dupacks && c->dupacks < 3)
		cwnd += (uint32_t)c->dupacks * c->mss;
	uint32_t wnd = c->snd_wnd < cwnd ? c->snd_wnd : cwnd;
	uint32_t data_end = c->snd_buf_seq + c->sbuf_len;
	bool sent = false, held = false;
	for (;;) {
		uint32_t avail = SEQ_LT(c->snd_nxt, data_end) ? data_end - c->snd_nxt : 0;
		uint32_t flight = c->snd_nxt - c->snd_una;
		uint32_t usable = wnd > flight ? wnd - flight : 0;
		uint32_t len = avail < usable ? avail : usable;
		if (len > c->mss)
			len = c->mss;
		if (len && !sws_send_ok(c, len, avail)) {
			held = true;
			break;
		}
		bool fin = c->fin_queued && c->snd_nxt + len == data_end &&
			   SEQ_LEQ(c->snd_nxt, c->fin_seq);
		if (len == 0 && !fin)
			break;
		/* The FIN needs no window, but it waits until the data fits. */
		uint8_t flags = TH_ACK;
		if (len && len == avail)
			flags |= TH_PSH;
		if (fin)
			flags |= TH_FIN;
		uint32_t seq = c->snd_nxt;
		bool rexmit = SEQ_LT(seq, c->snd_max);
		if (rexmit)
			ts->stats.retransmits++;
		tcp_send_segment(c, seq, len, flags);
		c->snd_nxt = seq + len + (fin ? 1 : 0);
		if (SEQ_GT(c->snd_nxt, c->snd_max)) {
			if (!c->rtt_timing && !c->ts_ok && !rexmit) {
				c->rtt_timing = true;
				c->rtt_seq = seq;
				c->rtt_start = ts->now_us;
			}
			c->snd_max = c->snd_nxt;
		}
		sent = true;
		if (fin)
			break;
	}
	if (sent && (!net_timer_armed(&c->rtx_timer) || c->persist)) {
		c->persist = false;
		tcp_rtx_arm(c);
	}
	/*
	 * Nothing in flight, data waiting, and either a zero window (probe it)
	 * or a window too small to be worth a segment (the override timer of
	 * RFC 1122 section 4.2.3.4: send what fits when it fires).  No ACK
	 * will come to restart tcp_output(), so the persist timer does.
	 */
	if ((c->snd_wnd == 0 || held) && c->snd_nxt == c->snd_una && SEQ_LT(c->snd_nxt, data_end) &&
	    !net_timer_armed(&c->rtx_timer)) {
		c->persist = true;
		tcp_rtx_arm(c);
	}
}
