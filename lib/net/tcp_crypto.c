/*
 * tcp_crypto.c - keyed hashes of TCP: initial sequence numbers (RFC 6528),
 * timestamp offsets (RFC 7323 section 5.4) and SYN cookies.
 *
 * All use SipHash-2-4 keyed with per-core secrets derived from the seed
 * given to tcp_create(), so an off-path attacker can predict neither ISNs
 * nor cookies.  SYN cookie layout (32 bits, the ISN of our SYN-ACK):
 *
 *	 31..27  counter: (now / 64 s) mod 32, the slowly rotating part
 *	 26..24  index into tcp_cookie_mss[] (largest entry <= peer's MSS)
 *	 23..0   SipHash(4-tuple, peer ISN, full counter) truncated
 *
 * Window scale and timestamp permission travel in the low bits of our
 * SYN-ACK's TSval (echoed in the ACK's TSecr); see tcp_input.c.
 */
#include "tcp_int.h"

#define COOKIE_PERIOD_US (64ull * 1000000)
#define COOKIE_MAX_AGE 2 /* counter periods a cookie stays valid */

static const uint16_t tcp_cookie_mss[8] = {536, 1200, 1300, 1400, 1440, 1460, 4312, 8960};

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                                   \
	do {                                                                                       \
		v0 += v1;                                                                          \
		v1 = ROTL(v1, 13);                                                                 \
		v1 ^= v0;                                                                          \
		v0 = ROTL(v0, 32);                                                                 \
		v2 += v3;                                                                          \
		v3 = ROTL(v3, 16);                                                                 \
		v3 ^= v2;                                                                          \
		v0 += v3;                                                                          \
		v3 = ROTL(v3, 21);                                                                 \
		v3 ^= v0;                                                                          \
		v2 += v1;                                                                          \
		v1 = ROTL(v1, 17);                                                                 \
		v1 ^= v2;                                                                          \
		v2 = ROTL(v2, 32);                                                                 \
	} while (0)

/* SipHash-2-4 over whole 64-bit words (the message length is 8 * nwords). */
uint64_t tcp_siphash(const uint64_t key[2], const uint64_t *words, unsigned nwords)
{
	uint64_t v0 = 0x736f6d6570736575ull ^ key[0];
	uint64_t v1 = 0x646f72616e646f6dull ^ key[1];
	uint64_t v2 = 0x6c7967656e657261ull ^ key[0];
	uint64_t v3 = 0x7465646279746573ull ^ key[1];
	for (unsigned i = 0; i < nwords; i++) {
		v3 ^= words[i];
		SIPROUND;
		SIPROUND;
		v0 ^= words[i];
	}
	uint64_t b = (uint64_t)(nwords * 8) << 56;
	v3 ^= b;
	SIPROUND;
	SIPROUND;
	v0 ^= b;
	v2 ^= 0xff;
	SIPROUND;
	SIPROUND;
	SIPROUND;
	SIPROUND;
	return v0 ^ v1 ^ v2 ^ v3;
}

static uint64_t tuple_hash(const uint64_t key[2], uint64_t domain, uint32_t laddr, uint16_t lport,
			   uint32_t raddr, uint16_t rport)
{
	uint64_t w[3] = {((uint64_t)laddr << 32) | raddr, ((uint64_t)lport << 16) | rport, domain};
	return tcp_siphash(key, w, 3);
}

uint32_t tcp_isn(struct tcp_state *ts, uint32_t laddr, uint16_t lport, uint32_t raddr,
		 uint16_t rport)
{
	/* RFC 6528 section 3: ISN = M + F(4-tuple, secret), M a 4 µs clock. */
	return (uint32_t)tuple_hash(ts->secret, 1, laddr, lport, raddr, rport) +
	       (uint32_t)(ts->now_us / 4);
}

uint32_t tcp_ts_offset(struct tcp_state *ts, uint32_t laddr, uint16_t lport, uint32_t raddr,
		       uint16_t rport)
{
	/* Same offset for every incarnation of a 4-tuple: TSvals stay monotonic
	 * across TIME_WAIT reuse (RFC 6191). */
	return (uint32_t)tuple_hash(ts->secret, 2, laddr, lport, raddr, rport);
}

static uint32_t cookie_hash(struct tcp_state *ts, const struct tcp_seg *s, uint32_t peer_isn,
			    uint64_t counter, unsigned mss_idx)
{
	uint64_t w[4] = {((uint64_t)s->dst << 32) | s->src, ((uint64_t)s->dport << 16) | s->sport,
			 ((uint64_t)peer_isn << 8) | mss_idx, counter};
	return (uint32_t)tcp_siphash(&ts->secret[2], w, 4) & 0xffffff;
}

uint32_t tcp_cookie_make(struct tcp_state *ts, const struct tcp_seg *s, uint16_t *mss_out)
{
	uint16_t peer = s->mss ? s->mss : 536;
	unsigned idx = 0;
	for (unsigned i = 0; i < 8; i++)
		if (tcp_cookie_mss[i] <= peer && tcp_cookie_mss[i] <= ts->conf.mss)
			idx = i;
	uint64_t counter = ts->now_us / COOKIE_PERIOD_US;
	*mss_out = tcp_cookie_mss[idx];
	return ((uint32_t)(counter & 31) << 27) | ((uint32_t)idx << 24) |
	       cookie_hash(ts, s, s->seq, counter, idx);
}

int tcp_cookie_check(struct tcp_state *ts, const struct tcp_seg *s, uint32_t cookie,
		     uint16_t *mss_out)
{
	uint64_t counter = ts->now_us / COOKIE_PERIOD_US;
	uint32_t age = ((uint32_t)counter - (cookie >> 27)) & 31;
	if (age > COOKIE_MAX_AGE || age > counter)
		return -EINVAL;
	unsigned idx = (cookie >> 24) & 7;
	if (cookie_hash(ts, s, s->seq - 1, counter - age, idx) != (cookie & 0xffffff))
		return -EINVAL;
	*mss_out = tcp_cookie_mss[idx];
	return 0;
}
