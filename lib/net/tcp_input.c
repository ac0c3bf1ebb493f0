/*
 * tcp_input.c - processing of one received TCP segment (RFC 9293 section
 * 3.10.7 "SEGMENT ARRIVES"), with the RFC 5961 protections, RFC 7323
 * window scaling / timestamps / PAWS, RFC 5681 + RFC 6582 congestion
 * control, bounded out-of-order reassembly, SYN cookies and TIME_WAIT.
 *
 * Entry point tcp_input(): parse and validate the header and options, then
 * dispatch to the connection, a TIME_WAIT entry, a listener, or answer RST.
 * Nothing is allocated per segment; received bytes are copied once into the
 * connection's receive ring (out-of-order bytes too, at their place in the
 * window), and the app reads them from there through on_data.
 */
#include "tcp_int.h"

#define TS_RECENT_MAX_AGE_US (24ull * 86400 * 1000000) /* RFC 7323 section 5.5 */

static inline uint16_t get16(const uint8_t *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}

static inline uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Returns 0, or -1 for a malformed header, -2 for malformed options. */
static int parse_segment(const uint8_t *p, size_t len, struct tcp_seg *s)
{
	if (len < TCP_HDR_LEN)
		return -1;
	unsigned doff = (unsigned)(p[12] >> 4) * 4;
	if (doff < TCP_HDR_LEN || doff > len || len - doff > 0xffff)
		return -1;
	s->sport = get16(p);
	s->dport = get16(p + 2);
	s->seq = get32(p + 4);
	s->ack = get32(p + 8);
	s->flags = p[13] & 0x3f;
	s->wnd = get16(p + 14);
	s->data = p + doff;
	s->len = (uint32_t)(len - doff);
	s->mss = 0;
	s->wscale = -1;
	s->has_ts = false;
	s->sack_ok = false;
	s->tsval = s->tsecr = 0;
	unsigned i = TCP_HDR_LEN;
	while (i < doff) {
		uint8_t kind = p[i];
		if (kind == 0)
			break;
		if (kind == 1) {
			i++;
			continue;
		}
		if (i + 1 >= doff)
			return -2;
		unsigned olen = p[i + 1];
		if (olen < 2 || i + olen > doff)
			return -2;
		switch (kind) {
		case 2:
			if (olen != 4)
				return -2;
			s->mss = get16(p + i + 2);
			break;
		case 3:
			if (olen != 3)
				return -2;
			/* RFC 7323 section 2.3: treat a shift above 14 as 14. */
			s->wscale = (int8_t)(p[i + 2] > TCP_MAX_WSCALE ? TCP_MAX_WSCALE : p[i + 2]);
			break;
		case 4:
			if (olen != 2)
				return -2;
			s->sack_ok = true;
			break;
		case 8:
			if (olen != 10)
				return -2;
			s->has_ts = true;
			s->tsval = get32(p + i + 2);
			s->tsecr = get32(p + i + 6);
			break;
		default:
			break; /* unknown options are skipped */
		}
		i += olen;
	}
	return 0;
}

static uint32_t initial_cwnd(uint32_t mss)
{
	/* RFC 6928: min(10*MSS, max(2*MSS, 14600)) */
	uint32_t w = 2 * mss > 14600 ? 2 * mss : 14600;
	return 10 * mss < w ? 10 * mss : w;
}

static void set_mss(struct tcp_conn *c, uint16_t peer_mss)
{
	if (peer_mss == 0)
		peer_mss = 536; /* RFC 9293 section 3.7.1 */
	if (peer_mss < 64)
		peer_mss = 64; /* a hostile tiny MSS would make us send 1-byte segments */
	c->peer_mss = peer_mss;
	c->mss = peer_mss < c->ts->conf.mss ? peer_mss : c->ts->conf.mss;
	/* Timestamps take 12 bytes of every segment (RFC 7323 section 3.2). */
	if (c->ts_ok && c->mss > 12 + 64)
		c->mss -= 12;
}

static void start_established(struct tcp_conn *c)
{
	struct tcp_state *ts = c->ts;
	c->state = TCPS_ESTABLISHED;
	c->cwnd = initial_cwnd(c->mss);
	c->ssthresh = 1u << 30;
	c->backoff = 0;
	c->retries = 0;
	tcp_rtx_cancel(c);
	ts->stats.conns_established++;
	tcp_keepalive_arm(c);
}

/* ---- receive side -------------------------------------------------------- */

static void rbuf_write(struct tcp_conn *c, uint32_t off, const uint8_t *data, uint32_t len)
{
	uint32_t pos = (c->rbuf_head + c->rbuf_len + off) % c->rbuf_size;
	uint32_t first = c->rbuf_size - pos;
	if (first > len)
		first = len;
	memcpy(c->rbuf + pos, data, first);
	memcpy(c->rbuf, data + first, len - first);
}

/*
 * What the app left of a segment offered in place (rx_direct) goes into the
 * ring, where it would have been all along; before the segment's mbuf goes.
 */
void tcp_rx_settle(struct tcp_conn *c)
{
	const uint8_t *p = c->rx_direct;
	if (p == NULL)
		return;
	c->rx_direct = NULL;
	if (c->dead || c->rbuf_len == 0)
		return;
	uint32_t first = c->rbuf_size - c->rbuf_head;
	if (first > c->rbuf_len)
		first = c->rbuf_len;
	memcpy(c->rbuf + c->rbuf_head, p, first);
	memcpy(c->rbuf, p + first, c->rbuf_len - first);
}

static void notify_peer_closed(struct tcp_conn *c)
{
	if (c->peer_fin && !c->peer_fin_told && c->rbuf_len == 0 && !c->app_closed) {
		c->peer_fin_told = true;
		if (c->ops && c->ops->on_peer_closed)
			c->ops->on_peer_closed(c, c->user);
	}
}

/*
 * The connection is over (TIME_WAIT or fully closed).  While the app still
 * has unread bytes the connection stays, so that nothing acknowledged is
 * lost; tcp_deliver() or tcp_close() finishes it.
 */
void tcp_finish(struct tcp_conn *c, bool time_wait)
{
	if (c->dead)
		return;
	if (c->rbuf_len && !c->app_closed) {
		c->finish_pending = time_wait ? 1 : 2;
		c->state = time_wait ? TCPS_TIME_WAIT : TCPS_CLOSED;
		tcp_rtx_cancel(c);
		return;
	}
	notify_peer_closed(c);
	if (c->dead)
		return;
	c->finish_pending = 0;
	if (time_wait)
		tcp_enter_time_wait(c);
	else
		tcp_conn_destroy(c, TCP_CLOSE_NORMAL, true);
}

/*
 * Offer buffered in-order bytes to the app.  Whatever on_data leaves stays
 * in the ring, and the window advertised shrinks by as much; nothing is
 * ever dropped.  Re-entrant calls (tcp_recv_resume from on_data) return at
 * once: the outer loop sees their effect.
 */
void tcp_deliver(struct tcp_conn *c)
{
	if (c->dead || !c->rbuf)
		return;
	if (c->app_closed) {
		c->rbuf_head = (c->rbuf_head + c->rbuf_len) % c->rbuf_size;
		c->rbuf_len = 0;
		c->rx_direct = NULL;
		return;
	}
	if (c->delivering)
		return;
	uint32_t wnd_before = tcp_rcv_window(c);
	c->delivering = true;
	while (c->rbuf_len > 0 && c->ops && c->ops->on_data && !c->dead && !c->app_closed) {
		uint32_t pos = c->rbuf_head;
		const uint8_t *direct = c->rx_direct;
		uint32_t chunk = c->rbuf_size - pos;
		if (chunk > c->rbuf_len || direct)
			chunk = c->rbuf_len; /* in place: the whole segment, no wrap */
		size_t n = c->ops->on_data(c, c->user, direct ? direct : c->rbuf + pos, chunk);
		if (c->dead)
			break;
		if (c->app_closed) {
			c->rbuf_head = (c->rbuf_head + c->rbuf_len) % c->rbuf_size;
			c->rbuf_len = 0;
			c->rx_direct = NULL;
			break;
		}
		if (n > chunk)
			n = chunk;
		c->rbuf_head = (pos + (uint32_t)n) % c->rbuf_size;
		c->rbuf_len -= (uint32_t)n;
		/* all read, nothing out of order placed past it: back to the start (as sbuf) */
		if (c->rbuf_len == 0 && c->reass_count == 0)
			c->rbuf_head = 0;
		if (direct) {
			c->rx_direct = direct + n;
			tcp_rx_settle(c);
		}
		if (n < chunk)
			break;
	}
	c->delivering = false;
	if (c->dead)
		return;
	/* With the peer's FIN right behind, sync_input sends it after process_fin. */
	if (c->output_deferred && !c->fin_follows) {
		c->output_deferred = false;
		tcp_output(c);
		if (c->dead)
			return;
	}
	notify_peer_closed(c);
	if (c->dead)
		return;
	if (c->finish_pending && c->rbuf_len == 0) {
		tcp_finish(c, c->finish_pending == 1);
		return;
	}
	/*
	 * Window update once the window has opened by a useful amount
	 * (receiver-side SWS avoidance, RFC 9293 section 3.8.6.2.2): the RFC's
	 * min(buffer/2, MSS) while the window we advertised is nearly closed
	 * (the sender is waiting for it), else 2 MSS, since a sender with a
	 * window open still sends and gets our ACKs, which carry the window.
	 */
	uint32_t wnd = tcp_rcv_window(c);
	uint32_t adv = SEQ_GT(c->rcv_adv, c->rcv_nxt) ? c->rcv_adv - c->rcv_nxt : 0;
	uint32_t thresh = adv < 2u * c->mss ? c->mss : 2u * c->mss;
	if (thresh > c->rbuf_size / 2)
		thresh = c->rbuf_size / 2;
	if (wnd > wnd_before && wnd > adv && wnd - adv >= thresh && c->state >= TCPS_ESTABLISHED)
		tcp_ack_later(c);
}

/*
 * Record [seq, seq+len) as held out of order.  Returns 0, or -1 when a cap
 * (ranges, per-connection or per-core bytes) forbids it.
 */
static int reass_insert(struct tcp_conn *c, uint32_t seq, uint32_t len)
{
	struct tcp_state *ts = c->ts;
	uint32_t a = seq, b = seq + len;
	struct {
		uint32_t start, end;
	} out[TCP_REASS_RANGES + 1];
	unsigned n = 0;
	bool placed = false;
	uint64_t total = 0;
	for (unsigned i = 0; i < c->reass_count; i++) {
		uint32_t s = c->reass[i].start, e = c->reass[i].end;
		if (SEQ_LT(e, a)) {
			out[n].start = s;
			out[n++].end = e;
		} else if (SEQ_GT(s, b)) {
			if (!placed) {
				out[n].start = a;
				out[n++].end = b;
				placed = true;
			}
			out[n].start = s;
			out[n++].end = e;
		} else {
			if (SEQ_LT(s, a))
				a = s;
			if (SEQ_GT(e, b))
				b = e;
		}
		if (n > TCP_REASS_RANGES)
			break;
	}
	if (!placed && n <= TCP_REASS_RANGES) {
		out[n].start = a;
		out[n++].end = b;
	}
	if (n > TCP_REASS_RANGES) {
		ts->stats.reass_conn_cap_hits++;
		return -1;
	}
	for (unsigned i = 0; i < n; i++)
		total += out[i].end - out[i].start;
	uint64_t added = total > c->reass_bytes ? total - c->reass_bytes : 0;
	if (total > ts->conf.reass_conn_bytes) {
		ts->stats.reass_conn_cap_hits++;
		return -1;
	}
	if (ts->reass_global + added > ts->conf.reass_global_bytes) {
		ts->stats.reass_global_cap_hits++;
		return -1;
	}
	for (unsigned i = 0; i < n; i++) {
		c->reass[i].start = out[i].start;
		c->reass[i].end = out[i].end;
	}
	c->reass_count = (uint8_t)n;
	ts->reass_global += added;
	c->reass_bytes = (uint32_t)total;
	return 0;
}

static void process_fin(struct tcp_conn *c);

/* In-window data, already trimmed to [rcv_nxt, rcv_nxt + window). */
static void data_input(struct tcp_conn *c, uint32_t seq, const uint8_t *data, uint32_t len)
{
	struct tcp_state *ts = c->ts;
	uint32_t off = seq - c->rcv_nxt;
	if (off != 0) {
		ts->stats.ooo_segs++;
		if (reass_insert(c, seq, len) == 0) {
			rbuf_write(c, off, data, len);
			c->sack_recent = seq;
		}
		/* Immediate duplicate ACK drives the peer's fast retransmit
		 * (RFC 5681 section 4.2). */
		tcp_send_ack_now(c);
		return;
	}
	/*
	 * In order at an empty ring (the usual case: a command, a message's
	 * segment): tcp_deliver offers it to the app in place and only what
	 * the app leaves is copied (tcp_rx_settle), which saves a copy per
	 * segment through a ring that is cold when connections are many.
	 */
	if (c->rbuf_len == 0 && c->reass_count == 0 && !c->rcv_fin_ooo)
		c->rx_direct = data;
	else
		rbuf_write(c, 0, data, len);
	c->rcv_nxt += len;
	c->rbuf_len += len;
	ts->stats.bytes_in += len;
	bool filled = false;
	while (c->reass_count && SEQ_LEQ(c->reass[0].start, c->rcv_nxt)) {
		if (SEQ_GT(c->reass[0].end, c->rcv_nxt)) {
			uint32_t extra = c->reass[0].end - c->rcv_nxt;
			c->rcv_nxt += extra;
			c->rbuf_len += extra;
			ts->stats.bytes_in += extra;
		}
		uint32_t held = c->reass[0].end - c->reass[0].start;
		c->reass_bytes -= held;
		ts->reass_global -= held;
		memmove(&c->reass[0], &c->reass[1],
			(size_t)(c->reass_count - 1) * sizeof(c->reass[0]));
		c->reass_count--;
		filled = true;
	}
	if (filled || c->reass_count) {
		/* RFC 5681 section 4.2: ACK at once when a gap is (partly) filled. */
		tcp_ack_later(c);
	} else if (len >= c->mss && ++c->segs_unacked >= 2) {
		tcp_ack_later(c);
	} else {
		tcp_delack_arm(c);
	}
	if (c->rcv_fin_ooo && c->rcv_fin_seq == c->rcv_nxt) {
		c->rcv_fin_ooo = false;
		process_fin(c);
	}
}

/* Data arriving after tcp_close(): nobody reads it; acknowledge and drop. */
static void data_discard(struct tcp_conn *c, uint32_t seq, uint32_t len)
{
	if (seq == c->rcv_nxt) {
		c->rcv_nxt += len;
		tcp_ack_later(c);
	} else {
		tcp_send_ack_now(c);
	}
}

/* An in-order FIN (RFC 9293 section 3.10.7.4, eighth step). */
static void process_fin(struct tcp_conn *c)
{
	if (c->peer_fin)
		return;
	c->peer_fin = true;
	c->rcv_nxt++;
	/*
	 * Nothing follows a FIN (RFC 9293 3.10.7.4): out-of-order islands
	 * beyond it are bogus, and one starting at the new rcv_nxt would sit
	 * there forever holding reassembly memory (found by fuzz_tcp_input).
	 */
	if (c->reass_count)
		tcp_reass_drop(c);
	switch (c->state) {
	case TCPS_SYN_RCVD:
	case TCPS_ESTABLISHED:
		c->state = TCPS_CLOSE_WAIT;
		tcp_ack_later(c);
		notify_peer_closed(c);
		break;
	case TCPS_FIN_WAIT_1:
		if (SEQ_LEQ(c->snd_max, c->fin_seq)) {
			/*
			 * Our FIN is queued but not sent (the app closed inside
			 * on_data of this very segment, or the window is shut):
			 * on the wire the peer closed first, so this is
			 * CLOSE_WAIT then close, i.e. LAST_ACK, and our FIN
			 * carries the ACK of theirs: no simultaneous close, no
			 * extra ACK, no TIME_WAIT here (RFC 9293 section 3.6).
			 */
			c->state = TCPS_LAST_ACK;
			tcp_ack_later(c);
			notify_peer_closed(c);
			break;
		}
		/* Our FIN not yet acknowledged: simultaneous close. */
		c->state = TCPS_CLOSING;
		tcp_send_ack_now(c);
		notify_peer_closed(c);
		break;
	case TCPS_FIN_WAIT_2:
		tcp_send_ack_now(c);
		tcp_finish(c, true);
		break;
	default:
		break;
	}
}

/* ---- send side: ACK processing ------------------------------------------- */

static uint32_t seg_avail(const struct tcp_conn *c, uint32_t seq)
{
	uint32_t data_end = c->snd_buf_seq + c->sbuf_len;
	return SEQ_LT(seq, data_end) ? data_end - seq : 0;
}

/* Retransmit one segment at snd_una (fast retransmit, partial ACK). */
static void retransmit_head(struct tcp_conn *c)
{
	struct tcp_state *ts = c->ts;
	uint32_t len = seg_avail(c, c->snd_una);
	if (len > c->mss)
		len = c->mss;
	uint8_t flags = TH_ACK;
	if (c->fin_queued && c->snd_una + len == c->fin_seq && SEQ_LT(c->fin_seq, c->snd_max))
		flags |= TH_FIN;
	if (len == 0 && !(flags & TH_FIN))
		return;
	ts->stats.retransmits++;
	c->rtt_timing = false;
	tcp_send_segment(c, c->snd_una, len, flags);
}

/*
 * Returns false when the segment must be dropped.  handshake: s is the ACK
 * that just completed a passive open (SND.UNA already moved past the SYN):
 * never a duplicate ACK, though what the accept callback sent is
 * outstanding by now.
 */
static bool ack_input(struct tcp_conn *c, const struct tcp_seg *s, bool handshake)
{
	struct tcp_state *ts = c->ts;
	uint32_t ack = s->ack;
	if (SEQ_GT(ack, c->snd_max)) {
		/* Acknowledges something not yet sent (RFC 9293 section 3.10.7.4). */
		tcp_send_ack_now(c);
		return false;
	}
	/* RFC 5961 section 5.2: acceptable ACKs lie in
	 * [SND.UNA - MAX.SND.WND, SND.NXT]; older ones get a challenge ACK. */
	uint32_t lo = c->snd_una - (c->max_snd_wnd ? c->max_snd_wnd : 1);
	if (SEQ_LT(ack, lo)) {
		tcp_challenge_ack(c);
		return false;
	}
	uint32_t seg_wnd = s->wnd << c->snd_wscale;
	uint32_t una_before = c->snd_una;
	/* A peer answering window probes is alive however long its window
	 * stays closed (RFC 9293 section 3.8.6.1): probes never give up. */
	if (c->persist)
		c->retries = 0;
	if (SEQ_GT(ack, c->snd_una)) {
		uint32_t acked = ack - c->snd_una;
		/*
		 * RTT from one timed, never retransmitted segment at a time
		 * (Karn).  Timestamp echoes are not used for RTT: RFC 7323
		 * section 4.3 makes the peer echo the segment before a hole,
		 * which inflates samples by the whole recovery time and, on a
		 * lossy path, drives the RTO to seconds.
		 */
		if (c->rtt_timing && SEQ_GT(ack, c->rtt_seq)) {
			c->rtt_timing = false;
			tcp_rtt_sample(c, ts->now_us - c->rtt_start);
		}
		c->backoff = 0;
		c->retries = 0;
		if (SEQ_GT(ack, c->snd_buf_seq)) {
			uint32_t n = ack - c->snd_buf_seq;
			if (n > c->sbuf_len)
				n = c->sbuf_len;
			c->sbuf_head = (c->sbuf_head + n) % c->sbuf_size;
			c->sbuf_len -= n;
			c->snd_buf_seq += n;
			/*
			 * All acknowledged: the next byte goes to the ring's start,
			 * not on round it.  A pooled client connection carrying
			 * thousands of 1 KiB messages, or a buffer taken over from
			 * one, then keeps touching its first pages instead of
			 * walking all 256 KiB (page faults on buffers that passive
			 * opens had left untouched, 0.1 per relayed message).
			 */
			if (c->sbuf_len == 0)
				c->sbuf_head = 0;
		}
		if (c->in_recovery) {
			if (SEQ_GT(ack, c->recover)) {
				/* Full ACK: leave recovery (RFC 6582 section 3.2 step 3). */
				uint32_t flight = c->snd_max - ack;
				c->cwnd = c->ssthresh < flight + c->mss ? c->ssthresh
									: flight + c->mss;
				c->in_recovery = false;
				c->dupacks = 0;
			} else {
				/* Partial ACK: the next hole is lost too. */
				c->snd_una = ack;
				if (SEQ_LT(c->snd_nxt, ack))
					c->snd_nxt = ack;
				retransmit_head(c);
				c->cwnd = c->cwnd > acked ? c->cwnd - acked : 0;
				if (acked >= c->mss)
					c->cwnd += c->mss;
				if (c->cwnd < c->mss)
					c->cwnd = c->mss;
			}
		} else {
			c->dupacks = 0;
			if (c->cwnd < c->ssthresh)
				c->cwnd += acked < c->mss ? acked : c->mss; /* slow start */
			else
				c->cwnd += c->mss * c->mss / c->cwnd > 0 ? c->mss * c->mss / c->cwnd
									 : 1;
		}
		c->snd_una = ack;
		if (SEQ_LT(c->snd_nxt, ack))
			c->snd_nxt = ack;
		if (c->snd_una == c->snd_max)
			tcp_rtx_cancel(c);
		else if (!c->persist)
			tcp_rtx_arm(c); /* RFC 6298 section 5.3 */
	} else if (!handshake && ack == c->snd_una && s->len == 0 &&
		   !(s->flags & (TH_SYN | TH_FIN)) && seg_wnd == c->snd_wnd &&
		   c->snd_max != c->snd_una) {
		/* Duplicate ACK (RFC 5681 section 2). */
		ts->stats.dupacks_in++;
		if (c->dupacks < 255)
			c->dupacks++;
		if (c->dupacks == 3 && !c->in_recovery && SEQ_GT(ack, c->recover)) {
			uint32_t flight = c->snd_max - c->snd_una;
			c->ssthresh = flight / 2 > 2u * c->mss ? flight / 2 : 2u * c->mss;
			c->recover = c->snd_max - 1;
			c->in_recovery = true;
			ts->stats.fast_retransmits++;
			retransmit_head(c);
			c->cwnd = c->ssthresh + 3 * c->mss;
		} else if (c->dupacks > 3 && c->in_recovery) {
			c->cwnd += c->mss; /* inflate: a segment left the network */
		}
	}
	/*
	 * Send window update (RFC 9293 section 3.10.7.4, SND.WL1/WL2), and
	 * also from any segment whose ACK advances SND.UNA: the peer's window
	 * is offset from the ACK it came with, so keeping the old SND.WND
	 * against the new SND.UNA would push the right edge forward by the
	 * bytes acknowledged.  That happens whenever the peer retransmits (an
	 * older SEG.SEQ carrying a newer ACK): we would send past its window,
	 * and our later ACKs, sent at SND.UNA + SND.WND, would fall below its
	 * RCV.NXT and be refused (Linux's tcp_may_update_window does the same).
	 */
	if (SEQ_GT(ack, una_before) || SEQ_LT(c->snd_wl1, s->seq) ||
	    (c->snd_wl1 == s->seq && SEQ_LEQ(c->snd_wl2, ack))) {
		c->snd_wnd = seg_wnd;
		if (SEQ_GT(s->seq, c->snd_wl1))
			c->snd_wl1 = s->seq; /* a retransmission does not move it back */
		c->snd_wl2 = ack;
		if (seg_wnd > c->max_snd_wnd)
			c->max_snd_wnd = seg_wnd;
		if (seg_wnd && c->persist) {
			tcp_rtx_cancel(c);
			c->backoff = 0;
			if (c->snd_una != c->snd_max)
				tcp_rtx_arm(c);
		}
	}
	return true;
}

/* ---- connection states ---------------------------------------------------- */

/* SYN_RCVD -> ESTABLISHED of a passive open; false if the connection died. */
static bool accept_conn(struct tcp_conn *c)
{
	struct tcp_state *ts = c->ts;
	start_established(c);
	if (c->active) {
		if (c->ops && c->ops->on_connected)
			c->ops->on_connected(c, c->user);
		return !c->dead;
	}
	ts->stats.passive_opens++;
	struct tcp_listener *l = c->listener;
	c->listener = NULL;
	if (tcp_conn_alloc_bufs(c) < 0 || !l || l->dead) {
		if (l)
			tcp_listener_unref(ts, l);
		tcp_send_rst(c);
		tcp_conn_destroy(c, TCP_CLOSE_ABORTED, false);
		return false;
	}
	tcp_accept_fn fn = l->on_accept;
	void *ctx = l->ctx;
	tcp_listener_unref(ts, l);
	int rc = fn(c, ctx);
	if (c->dead)
		return false;
	if (rc != 0) {
		tcp_send_rst(c);
		tcp_conn_destroy(c, TCP_CLOSE_ABORTED, false);
		return false;
	}
	return true;
}

static void syn_sent_input(struct tcp_conn *c, const struct tcp_seg *s)
{
	struct tcp_state *ts = c->ts;
	if (s->flags & TH_ACK) {
		if (SEQ_LEQ(s->ack, c->iss) || SEQ_GT(s->ack, c->snd_max)) {
			tcp_reply_rst(ts, s);
			return;
		}
	}
	if (s->flags & TH_RST) {
		if (s->flags & TH_ACK) {
			ts->stats.resets_in++;
			tcp_conn_destroy(c, TCP_CLOSE_REFUSED, true);
		}
		return;
	}
	if (!(s->flags & TH_SYN))
		return;
	c->irs = s->seq;
	c->rcv_nxt = s->seq + 1;
	/* The right edge our SYN offered (its window is never scaled). */
	/* The right edge our SYN offered (its window is never scaled). */
	c->rcv_adv = c->rcv_nxt + (c->rbuf_size > 0xffff ? 0xffff : c->rbuf_size);
	if (s->wscale >= 0) {
		c->ws_ok = true;
		c->snd_wscale = (uint8_t)s->wscale;
		c->rcv_wscale = ts->conf.wscale;
	}
	if (s->has_ts && ts->conf.timestamps) {
		c->ts_ok = true;
		c->ts_recent = s->tsval;
		c->ts_recent_us = ts->now_us;
	}
	c->sack_ok = s->sack_ok;
	set_mss(c, s->mss);
	c->snd_wnd = s->wnd; /* never scaled on a SYN (RFC 7323 section 2.2) */
	c->max_snd_wnd = c->snd_wnd;
	c->snd_wl1 = s->seq;
	c->snd_wl2 = s->ack;
	if (s->flags & TH_ACK) {
		if (c->retries == 0)
			tcp_rtt_sample(c, ts->now_us - c->rtt_start);
		c->snd_una = s->ack;
		start_established(c);
		/* Data on a SYN-ACK is not accepted: the peer resends it. */
		tcp_ack_later(c);
		if (c->ops && c->ops->on_connected)
			c->ops->on_connected(c, c->user);
		if (!c->dead && c->ack_pprev) {
			tcp_ack_list_remove(c);
			tcp_send_ack_now(c);
		}
		return;
	}
	/* Simultaneous open (RFC 9293 section 3.5, figure 7). */
	c->state = TCPS_SYN_RCVD;
	c->backoff = 0;
	c->retries = 0;
	tcp_send_syn(c);
	tcp_rtx_arm(c);
}

/*
 * RFC 9293 section 3.10.7.4, first check.  A zero-length segment may also
 * start up to one window-scale unit before RCV.NXT: our scaled window
 * field announces a kept right edge rounded down (window_field() in
 * tcp_output.c), and a peer that sent up to the true edge then puts its
 * ACKs at the announced one (SND.UNA + SND.WND, below what it sent).
 * Refusing them would discard every ACK it sends until our window opens.
 */
static bool seq_acceptable(const struct tcp_conn *c, const struct tcp_seg *s, uint32_t wnd)
{
	uint32_t seg_len = s->len + !!(s->flags & TH_SYN) + !!(s->flags & TH_FIN);
	uint32_t nxt = c->rcv_nxt;
	if (seg_len == 0) {
		uint32_t lo = nxt - ((1u << c->rcv_wscale) - 1);
		if (wnd == 0)
			return SEQ_GEQ(s->seq, lo) && SEQ_LEQ(s->seq, nxt);
		return SEQ_GEQ(s->seq, lo) && SEQ_LT(s->seq, nxt + wnd);
	}
	if (wnd == 0)
		return false;
	uint32_t last = s->seq + seg_len - 1;
	return (SEQ_GEQ(s->seq, nxt) && SEQ_LT(s->seq, nxt + wnd)) ||
	       (SEQ_GEQ(last, nxt) && SEQ_LT(last, nxt + wnd));
}

static void sync_input(struct tcp_conn *c, struct tcp_seg *s)
{
	struct tcp_state *ts = c->ts;
	uint32_t wnd = tcp_rcv_window(c);

	if (c->finish_pending) {
		/* Over, waiting for the app to read: only re-ACK a resent FIN. */
		if ((s->flags & TH_FIN) && c->finish_pending == 1)
			tcp_send_ack_now(c);
		return;
	}
	/* RFC 5961 section 3.2: RST only with SEG.SEQ == RCV.NXT. */
	if (s->flags & TH_RST) {
		if (s->seq == c->rcv_nxt) {
			ts->stats.resets_in++;
			if (c->state == TCPS_SYN_RCVD && !c->active)
				tcp_conn_destroy(c, TCP_CLOSE_RESET, false);
			else
				tcp_conn_destroy(c,
						 c->state == TCPS_SYN_RCVD ? TCP_CLOSE_REFUSED
									   : TCP_CLOSE_RESET,
						 true);
		} else if (SEQ_GEQ(s->seq, c->rcv_nxt) &&
			   SEQ_LT(s->seq, c->rcv_nxt + (wnd ? wnd : 1))) {
			ts->stats.rst_bad_seq++;
			tcp_challenge_ack(c);
		} else {
			ts->stats.rst_bad_seq++;
		}
		return;
	}
	/* PAWS (RFC 7323 section 5.3). */
	if (c->ts_ok && s->has_ts && SEQ_LT(s->tsval, c->ts_recent)) {
		if (ts->now_us - c->ts_recent_us > TS_RECENT_MAX_AGE_US) {
			c->ts_recent = s->tsval; /* idle too long: TS.Recent is stale */
		} else {
			ts->stats.paws_drops++;
			tcp_send_ack_now(c);
			return;
		}
	}
	if (c->state == TCPS_SYN_RCVD && (s->flags & TH_SYN) && !(s->flags & TH_ACK) &&
	    s->seq == c->irs) {
		/* Our SYN-ACK was lost: resend it (without data, as always). */
		ts->stats.retransmits++;
		tcp_send_syn(c);
		return;
	}
	if (!seq_acceptable(c, s, wnd)) {
		ts->stats.seg_outside_window++;
		tcp_send_ack_now(c);
		return;
	}
	/* RFC 5961 section 4: any SYN here gets a challenge ACK. */
	if (s->flags & TH_SYN) {
		ts->stats.syn_in_window++;
		tcp_challenge_ack(c);
		return;
	}
	if (!(s->flags & TH_ACK))
		return;
	c->last_rx_us = ts->now_us; /* keepalive: the peer is alive */
	c->ka_probes = 0;
	/* RFC 7323 section 4.3: remember the peer's timestamp. */
	if (c->ts_ok && s->has_ts && SEQ_GEQ(s->tsval, c->ts_recent) &&
	    SEQ_LEQ(s->seq, c->last_ack_sent)) {
		c->ts_recent = s->tsval;
		c->ts_recent_us = ts->now_us;
	}
	/* Trim to the window: old bytes at the front, excess at the back. */
	bool dup = false;
	if (SEQ_LT(s->seq, c->rcv_nxt)) {
		/* A bare ACK let in by seq_acceptable()'s rounding allowance is
		 * no retransmission: it needs no ACK back. */
		dup = s->len || (s->flags & TH_FIN);
		uint32_t d = c->rcv_nxt - s->seq;
		if (d > s->len) {
			s->flags &= (uint8_t)~TH_FIN; /* FIN already received too */
			s->data += s->len;
			s->len = 0;
		} else {
			s->data += d;
			s->len -= d;
		}
		s->seq = c->rcv_nxt;
	}
	uint32_t room = wnd - (s->seq - c->rcv_nxt);
	if (s->len > room) {
		s->len = room;
		s->flags &= (uint8_t)~TH_FIN;
	}

	bool handshake = c->state == TCPS_SYN_RCVD;
	if (handshake) {
		if (!SEQ_GT(s->ack, c->snd_una) || SEQ_GT(s->ack, c->snd_max)) {
			tcp_reply_rst(ts, s);
			return;
		}
		if (c->retries == 0 && c->rtt_start)
			tcp_rtt_sample(c, ts->now_us - c->rtt_start);
		c->snd_una = s->ack;
		c->snd_wnd = s->wnd << c->snd_wscale;
		c->max_snd_wnd = c->snd_wnd;
		c->snd_wl1 = s->seq;
		c->snd_wl2 = s->ack;
		bool fin_q = c->fin_queued;
		if (!accept_conn(c))
			return;
		if (fin_q && c->state == TCPS_ESTABLISHED)
			c->state = TCPS_FIN_WAIT_1;
	}
	if (!ack_input(c, s, handshake) || c->dead)
		return;
	bool fin_acked = c->fin_queued && SEQ_GT(c->snd_una, c->fin_seq);
	switch (c->state) {
	case TCPS_FIN_WAIT_1:
		if (fin_acked)
			c->state = TCPS_FIN_WAIT_2;
		break;
	case TCPS_CLOSING:
		if (fin_acked) {
			tcp_finish(c, true);
			return;
		}
		break;
	case TCPS_LAST_ACK:
		if (fin_acked) {
			tcp_finish(c, false);
			return;
		}
		break;
	default:
		break;
	}
	if (s->len) {
		switch (c->state) {
		case TCPS_ESTABLISHED:
		case TCPS_FIN_WAIT_1:
		case TCPS_FIN_WAIT_2:
			if (c->app_closed || !c->rbuf)
				data_discard(c, s->seq, s->len);
			else
				data_input(c, s->seq, s->data, s->len);
			break;
		default:
			break; /* after the peer's FIN: nothing more can be accepted */
		}
	} else if (dup) {
		tcp_send_ack_now(c); /* a retransmission: our ACK may be lost */
	}
	if (!c->dead && s->len && c->rbuf_len) {
		c->fin_follows = (s->flags & TH_FIN) && s->seq + s->len == c->rcv_nxt;
		tcp_deliver(c);
		c->fin_follows = false;
	}
	tcp_rx_settle(c); /* the segment goes away after this call */
	if (c->dead)
		return;
	if (s->flags & TH_FIN) {
		uint32_t fin_at = s->seq + s->len;
		if (fin_at == c->rcv_nxt)
			process_fin(c);
		else if (SEQ_GT(fin_at, c->rcv_nxt)) {
			c->rcv_fin_ooo = true;
			c->rcv_fin_seq = fin_at;
		} else if (c->peer_fin) {
			tcp_send_ack_now(c); /* retransmitted FIN: our ACK was lost */
		}
		if (c->dead)
			return;
	}
	c->output_deferred = false;
	tcp_output(c);
	/*
	 * Wake a writer only once a quarter of the buffer is free (or it is
	 * empty): woken for every few bytes an ACK frees, an app such as an
	 * echo service queues a few bytes at a time, and those leave as
	 * tiny segments (no Nagle here), each one echoed tiny again.
	 */
	if (c->want_writable && c->sbuf &&
	    (c->sbuf_len == 0 || c->sbuf_size - c->sbuf_len >= c->sbuf_size / 4) &&
	    (c->state == TCPS_ESTABLISHED || c->state == TCPS_CLOSE_WAIT)) {
		c->want_writable = false;
		if (c->ops && c->ops->on_writable && !c->app_closed)
			c->ops->on_writable(c, c->user);
	}
}

/* ---- listeners and cookies --------------------------------------------- */

static void send_cookie_synack(struct tcp_state *ts, struct tcp_listener *l,
			       const struct tcp_seg *s)
{
	uint16_t mss;
	uint32_t cookie = tcp_cookie_make(ts, s, &mss);
	uint8_t o[TCP_MAX_OPT];
	unsigned n = 0;
	o[n++] = 2;
	o[n++] = 4;
	o[n++] = (uint8_t)(ts->conf.mss >> 8);
	o[n++] = (uint8_t)ts->conf.mss;
	bool tsok = s->has_ts && ts->conf.timestamps;
	/* Without timestamps there is nowhere to remember the peer's shift,
	 * so scaling is offered only with them (like Linux). */
	if (tsok && s->wscale >= 0) {
		o[n++] = 1;
		o[n++] = 3;
		o[n++] = 3;
		o[n++] = ts->conf.wscale;
	}
	if (tsok && s->sack_ok) {
		o[n++] = 1;
		o[n++] = 1;
		o[n++] = 4;
		o[n++] = 2;
	}
	if (tsok) {
		uint32_t off = tcp_ts_offset(ts, s->dst, s->dport, s->src, s->sport);
		uint32_t tsval = (tcp_ts_now(ts, off) & ~0x3fu) | 0x10u | (s->sack_ok ? 0x20u : 0) |
				 (s->wscale >= 0 ? (uint32_t)s->wscale + 1 : 0);
		o[n++] = 1;
		o[n++] = 1;
		o[n++] = 8;
		o[n++] = 10;
		for (int i = 3; i >= 0; i--)
			o[n++] = (uint8_t)(tsval >> (8 * i));
		for (int i = 3; i >= 0; i--)
			o[n++] = (uint8_t)(s->tsval >> (8 * i));
	}
	uint32_t w = ts->conf.rcvbuf > 0xffff ? 0xffff : ts->conf.rcvbuf;
	tcp_send_raw(ts, s->dst, s->src, s->dport, s->sport, cookie, s->seq + 1, TH_SYN | TH_ACK,
		     (uint16_t)w, o, n);
	ts->stats.cookies_sent++;
	l->cookies_used = true;
	l->last_cookie_us = ts->now_us;
}

static void cookie_ack(struct tcp_state *ts, struct tcp_listener *l, struct tcp_seg *s)
{
	uint16_t mss;
	if (tcp_cookie_check(ts, s, s->ack - 1, &mss) < 0) {
		ts->stats.cookies_invalid++;
		tcp_reply_rst(ts, s);
		return;
	}
	struct tcp_conn *c = tcp_conn_new(ts, s->dst, s->dport, s->src, s->sport);
	if (!c)
		return;
	ts->stats.cookies_valid++;
	c->iss = s->ack - 1;
	c->irs = s->seq - 1;
	c->rcv_nxt = s->seq;
	c->snd_una = c->snd_nxt = c->snd_max = s->ack;
	c->snd_buf_seq = s->ack;
	c->recover = c->iss;
	c->ts_offset = tcp_ts_offset(ts, c->laddr, c->lport, c->raddr, c->rport);
	if (ts->conf.timestamps && s->has_ts && (s->tsecr & 0x10)) {
		c->ts_ok = true;
		c->ts_recent = s->tsval;
		c->ts_recent_us = ts->now_us;
		c->sack_ok = (s->tsecr & 0x20) != 0;
		unsigned ws = s->tsecr & 0xf;
		if (ws) {
			c->ws_ok = true;
			c->snd_wscale = (uint8_t)(ws - 1);
			c->rcv_wscale = ts->conf.wscale;
		}
	}
	c->peer_mss = mss;
	c->mss = mss < ts->conf.mss ? mss : ts->conf.mss;
	if (c->ts_ok && c->mss > 12 + 64)
		c->mss -= 12;
	c->snd_wnd = s->wnd << c->snd_wscale;
	c->max_snd_wnd = c->snd_wnd;
	c->snd_wl1 = s->seq;
	c->snd_wl2 = s->ack;
	c->last_ack_sent = c->rcv_nxt;
	c->rcv_adv = c->rcv_nxt + (ts->conf.rcvbuf > 0xffff ? 0xffff : ts->conf.rcvbuf);
	c->state = TCPS_SYN_RCVD;
	c->listener = l;
	l->backlog++;
	tcp_conn_hold(c);
	if (accept_conn(c)) {
		/* The rest of the segment (data, FIN) as in ESTABLISHED. */
		sync_input(c, s);
	}
	tcp_conn_put(c);
}

static void listen_input(struct tcp_state *ts, struct tcp_listener *l, struct tcp_seg *s)
{
	if (s->flags & TH_RST)
		return;
	if (s->flags & TH_ACK) {
		if (!(s->flags & TH_SYN) && ts->conf.syn_cookies && l->cookies_used &&
		    ts->now_us - l->last_cookie_us < 3ull * 64 * 1000000) {
			cookie_ack(ts, l, s);
			return;
		}
		tcp_reply_rst(ts, s);
		return;
	}
	if (!(s->flags & TH_SYN) || (s->flags & TH_FIN)) {
		ts->stats.bad_header++;
		return;
	}
	bool full = l->backlog >= ts->conf.syn_backlog;
	if (full || ts->conn_count >= ts->conf.max_conns) {
		if (full)
			ts->stats.backlog_full++;
		else
			ts->stats.conn_limit_hits++;
		if (ts->conf.syn_cookies)
			send_cookie_synack(ts, l, s);
		return;
	}
	struct tcp_conn *c = tcp_conn_new(ts, s->dst, s->dport, s->src, s->sport);
	if (!c)
		return;
	c->listener = l;
	l->backlog++;
	c->iss = tcp_isn(ts, c->laddr, c->lport, c->raddr, c->rport);
	c->ts_offset = tcp_ts_offset(ts, c->laddr, c->lport, c->raddr, c->rport);
	c->irs = s->seq;
	c->rcv_nxt = s->seq + 1;
	c->snd_una = c->snd_nxt = c->snd_max = c->iss;
	c->snd_buf_seq = c->iss + 1;
	c->recover = c->iss;
	if (s->wscale >= 0) {
		c->ws_ok = true;
		c->snd_wscale = (uint8_t)s->wscale;
		c->rcv_wscale = ts->conf.wscale;
	}
	if (s->has_ts && ts->conf.timestamps) {
		c->ts_ok = true;
		c->ts_recent = s->tsval;
		c->ts_recent_us = ts->now_us;
	}
	c->sack_ok = s->sack_ok;
	set_mss(c, s->mss);
	c->snd_wnd = s->wnd;
	c->snd_wl1 = s->seq;
	c->state = TCPS_SYN_RCVD;
	c->rtt_start = ts->now_us;
	tcp_send_syn(c);
	tcp_rtx_arm(c);
}

/* TIME_WAIT (RFC 9293 section 3.10.7.4); true: treat the SYN as new. */
static bool tw_input(struct tcp_state *ts, struct tcp_tw *tw, const struct tcp_seg *s)
{
	if (s->flags & TH_RST)
		return false; /* RFC 1337: no TIME-WAIT assassination */
	if ((s->flags & TH_SYN) && !(s->flags & TH_ACK)) {
		/* RFC 6191: a new incarnation must be provably newer. */
		bool newer = (tw->ts_ok && s->has_ts) ? SEQ_GT(s->tsval, tw->ts_recent)
						      : SEQ_GT(s->seq, tw->rcv_nxt);
		if (newer) {
			ts->stats.time_wait_reused++;
			tcp_tw_remove(ts, tw);
			return true;
		}
		tcp_tw_send_ack(ts, tw);
		return false;
	}
	if (s->flags & TH_FIN) {
		tcp_tw_restart(ts, tw);
		tcp_tw_send_ack(ts, tw);
	} else if (s->len) {
		tcp_tw_send_ack(ts, tw);
	}
	return false;
}

void tcp_input(struct tcp_state *ts, uint32_t src, uint32_t dst, const uint8_t *seg, size_t len,
	       uint64_t now_us)
{
	struct tcp_seg s;
	if (now_us > ts->now_us)
		ts->now_us = now_us;
	ts->stats.segs_in++;
	int rc = parse_segment(seg, len, &s);
	if (rc < 0) {
		if (rc == -1)
			ts->stats.bad_header++;
		else
			ts->stats.bad_options++;
		return;
	}
	if (s.sport == 0 || s.dport == 0 || src == 0 || dst == 0) {
		ts->stats.bad_header++;
		return;
	}
	s.src = src;
	s.dst = dst;
	struct tcp_conn *c = tcp_conn_lookup(ts, dst, s.dport, src, s.sport);
	if (c) {
		tcp_conn_hold(c);
		if (c->state == TCPS_SYN_SENT)
			syn_sent_input(c, &s);
		else
			sync_input(c, &s);
		tcp_conn_put(c);
		return;
	}
	struct tcp_tw *tw = tcp_tw_lookup(ts, dst, s.dport, src, s.sport);
	if (tw && !tw_input(ts, tw, &s))
		return;
	struct tcp_listener *l = tcp_listener_lookup(ts, dst, s.dport);
	if (l) {
		listen_input(ts, l, &s);
		return;
	}
	ts->stats.no_listener++;
	tcp_reply_rst(ts, &s);
}
