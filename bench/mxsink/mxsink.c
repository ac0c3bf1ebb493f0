/*
 * mxsink.c - the benchmark's receiving side: one DPDK process on lib/net
 * that behaves like many receiving MX hosts.
 *
 *	mxsink --config FILE [--duration SEC] [--max-messages N] [--json FILE]
 *	       [--tempfail PERMILLE] [--slow PERMILLE --slow-ms MS]
 *	       [--rcpt-4xx PERMILLE] [--rcpt-5xx PERMILLE]
 *	       [--domains N] [--seq-max N] [--quiet] [--busy-poll]
 *	       [--cert FILE --key FILE] [--auth USER:PASS] [--prewarm N]
 *
 * SMTP on ports 25 and 587 of every port address, served by lib/smtp's
 * server session with allow_networks 0.0.0.0/0 (every recipient is
 * accepted).  With --cert/--key (PEM, e.g. from lib/tls/gen-demo-cert.sh)
 * both offer STARTTLS and port 465 speaks implicit TLS (RFC 8314), so a
 * relay's outbound opportunistic TLS, its session pool and its TLS session
 * resumption (the sink issues two TLS 1.3 tickets per handshake) are exercised; handshakes
 * full and resumed and TLS failures are counted.  --auth makes 587 a
 * submission port that wants AUTH PLAIN/LOGIN with these credentials
 * (offered only inside TLS, RFC 4954 4); without it 587 behaves like 25.
 * Messages are counted, never stored: the end of data is answered at once
 * with a generated queue id, or - at the configured per-mille rates - with
 * a 451 (injected temporary failure) or after --slow-ms milliseconds.
 * --rcpt-4xx / --rcpt-5xx answer that share of RCPT commands 450 / 550
 * (see feed_filtered).
 *
 * Every message is verified: mxgen writes "X-Mxgen: SEQ DIGEST SENDUS" in
 * the header (DIGEST: 16 hex digits of bench/mxgen/digest.h's 64-bit hash of
 * the body); the sink hashes the body while it arrives (after the header
 * block) and counts ok / corrupt / missing header / duplicate SEQ (a shared
 * bitmap of --seq-max bits; larger SEQs count as unchecked), and records the
 * end-to-end latency now - SENDUS (both processes read CLOCK_MONOTONIC
 * through mx_now_us).  Messages whose header block has a DKIM-Signature
 * field (RFC 6376 3.5) are counted as dkim_signed (presence only, not
 * verified).
 *
 * DNS on UDP 53 answers the synthetic zone: dN.sink.test (N < --domains) has
 * MX 10 mx.dN.sink.test, and both names have an A record with the sink's
 * port 0 address; anything else is NXDOMAIN.
 *
 * --busy-poll: a worker with open connections polls flat out instead of
 * backing off to short sleeps when a turn finds nothing, so a reply never
 * waits for the sink to wake up: for delivery benchmarks (bench/run's
 * backlog scenarios) where the sink's wake-up latency, not the relay,
 * would otherwise bound a relay's few pooled sessions.  It costs a whole
 * CPU while connections are open: not for runs where mxgen shares it.
 *
 * --prewarm N (1024; 0: none): each worker keeps ended SMTP sessions in a
 * pool (at most 4096) and fills it with N at start, written once, with
 * lib/net's connection and ring caches, so the relay's first burst of
 * delivery connections (one per destination) faults in no memory.
 *
 * Counters go to stdout once a second; at exit a JSON summary goes to --json
 * (and to stdout when no file is given), with busy_us_per_msg: the time of
 * the loop turns that found work per message received, the sink's own cost
 * without its idle polling (wall time: preemption inside such a turn counts).
 *
 * The sink is also a role that bench/mxload runs next to mxgen's in one
 * process (mxsink.h); main() below is the standalone process around it.
 */
#include "core.h"
#include "dns.h"
#include "hist.h"
#include "mxsink.h"
#include "net.h"
#include "netjson.h"
#include "smtp.h"
#include "tls.h"
#include "verify.h"

#include <errno.h>
#include <sched.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <rte_eal.h>
#include <rte_launch.h>
#include <rte_lcore.h>

#define MAX_WORKERS 64
#define MAX_CONNS_PER_WORKER 65536 /* sessions per core; more are refused (counted) */

/* ---- options ------------------------------------------------------------------ */

static unsigned opt_tempfail_pm, opt_slow_pm, opt_slow_ms = 100;
static unsigned opt_rcpt4_pm, opt_rcpt5_pm; /* RCPT answered 450 / 550 by the filter */
static unsigned opt_domains = 1000;
static uint64_t opt_seq_max = 1ull << 26;
static uint64_t opt_max_messages;
static unsigned opt_duration;
static const char *opt_json;
static bool opt_quiet;
static bool opt_busy_poll; /* --busy-poll: no idle back-off while connections are open */
/* --prewarm: sessions made per worker at start, kept in a pool of SESSION_POOL_MAX */
static uint64_t opt_prewarm = 1024;
#define SESSION_POOL_MAX 4096
#define PREWARM_RING_TOUCH 8192
static const char *opt_cert, *opt_key;
static char opt_auth_user[128], opt_auth_pass[128]; /* --auth; "" = none */

/* The listeners: ports and their lib/smtp configuration. */
enum { L_SMTP, L_SUBMISSION, L_SMTPS, N_LISTENERS };
static const uint16_t listen_port[N_LISTENERS] = {25, 587, 465};

/* ---- state -------------------------------------------------------------------- */

struct sconn {
	struct sconn *prev, *next; /* worker's live list */
	struct worker *w;
	struct tcp_conn *tcp;
	struct smtp_session *sess;
	struct tls_conn *tls; /* after STARTTLS, or from the start on 465 */
	unsigned listener;    /* L_* */
	bool in_tls;	      /* inside a tls_conn_* call: closing waits until it returns */
	bool want_close, closed;
	bool in_data;	     /* between our 354 and the end of data (the RCPT filter) */
	uint64_t bdat_left;  /* BDAT chunk bytes still to pass through unexamined */
	uint64_t done_at;    /* slow reply: message_done due at this time (0: none) */
	struct mxb_verify v; /* the message being received (verify.h) */
};

struct worker {
	unsigned index;
	struct net_stack *st;
	struct net_idle idle;
	struct sconn live; /* list head */
	unsigned n_conns;
	uint64_t rng;
	struct smtp_server_stats sstats;
	struct smtp_session_pool spool; /* ended sessions (SESSION_POOL_MAX) */
	struct tls_stats tstats;
	struct mxb_hist lat;
	/* counters (read by the main thread for the per-second line) */
	uint64_t conns, conns_refused, received, ok, corrupt, no_tag, dup, unchecked;
	uint64_t acked, tempfailed, slowed, send_short, dns_queries, dns_nx, dns_bad;
	uint64_t rcpt_4xx, rcpt_5xx;
	uint64_t conns_by_listener[N_LISTENERS];
	uint64_t tls_sessions, tls_resumed, tls_failed, dkim_signed;
	/* CLOCK_MONOTONIC us of the first and the last message received (0: none yet): the
	 * span a backlog was delivered in, finer than the per-second lines */
	uint64_t first_rx_us, last_rx_us;
	uint64_t last_scan, last_timeouts; /* the loop's periodic work (mxsink_role_turn) */
	/* time of the loop turns that found work (net_stack_poll > 0), up to the next turn's
	 * clock read: the sink's CPU per message without its idle polling (busy_us_per_msg) */
	uint64_t busy_us;
};

static volatile sig_atomic_t stop;
static struct net_dataplane dp;
static struct worker workers[MAX_WORKERS];
static struct smtp_server_conf sconf[N_LISTENERS];
static struct tls_server_ctx *tls_ctx;
static uint8_t *seq_bitmap;
static uint32_t sink_addr;

static uint64_t rnd(struct worker *w)
{
	/* xorshift64*: per worker, seeded by index */
	w->rng ^= w->rng >> 12;
	w->rng ^= w->rng << 25;
	w->rng ^= w->rng >> 27;
	return w->rng * 2685821657736338717ull;
}

static bool roll(struct worker *w, unsigned per_mille)
{
	return per_mille && rnd(w) % 1000 < per_mille;
}

static uint64_t rd(const uint64_t *p)
{
	return __atomic_load_n(p, __ATOMIC_RELAXED);
}

/* ---- verification --------------------------------------------------------------- */

/* Atomically set the seq's bit: true when it was set before (a duplicate). */
static bool seq_seen(uint64_t seq)
{
	uint8_t bit = (uint8_t)(1u << (seq & 7));
	uint8_t old = __atomic_fetch_or(&seq_bitmap[seq >> 3], bit, __ATOMIC_RELAXED);
	return (old & bit) != 0;
}

static void verify_end(struct sconn *sc, uint64_t now)
{
	struct worker *w = sc->w;
	w->received++;
	if (w->first_rx_us == 0)
		__atomic_store_n(&w->first_rx_us, now, __ATOMIC_RELAXED);
	__atomic_store_n(&w->last_rx_us, now, __ATOMIC_RELAXED);
	if (sc->v.have_dkim)
		w->dkim_signed++;
	switch (mxb_verify_end(&sc->v)) {
	case MXB_VERIFY_NO_TAG:
		w->no_tag++;
		return;
	case MXB_VERIFY_OK:
		w->ok++;
		break;
	case MXB_VERIFY_CORRUPT:
		w->corrupt++;
		break;
	}
	if (sc->v.seq < opt_seq_max) {
		if (seq_seen(sc->v.seq))
			w->dup++;
	} else {
		w->unchecked++;
	}
	mxb_hist_add(&w->lat, now >= sc->v.send_us ? now - sc->v.send_us : 0);
}

/* ---- SMTP session callbacks -------------------------------------------------------- */

static void s_send(void *user, const uint8_t *p, size_t n)
{
	struct sconn *sc = user;
	if (sc->closed)
		return;
	/* a 354 ends the batch that starts DATA content (RFC 5321 4.1.1.4) */
	if (n >= 4 && memcmp(p + n - 2, "\r\n", 2) == 0) {
		size_t ls = n - 2;
		while (ls > 0 && p[ls - 1] != '\n')
			ls--;
		if (n - ls >= 4 && memcmp(p + ls, "354", 3) == 0)
			sc->in_data = true;
	}
	ssize_t k = sc->tls != NULL ? tls_conn_write(sc->tls, p, n) : tcp_send(sc->tcp, p, n);
	if (k < 0 || (size_t)k < n) {
		/* Replies are small; a full send buffer means a client not reading. */
		sc->w->send_short++;
		sc->want_close = true;
	}
}

static void s_close(void *user)
{
	((struct sconn *)user)->want_close = true;
}

static void s_begin(void *user)
{
	mxb_verify_begin(&((struct sconn *)user)->v);
}

static void s_data(void *user, const uint8_t *p, size_t n)
{
	mxb_verify_data(&((struct sconn *)user)->v, p, n);
}

static void s_abort(void *user)
{
	(void)user;
}

static int s_auth(void *user, const char *authzid, const char *authcid, const char *pass)
{
	(void)user;
	(void)authzid;
	if (opt_auth_user[0] && strcmp(authcid, opt_auth_user) == 0 &&
	    strcmp(pass, opt_auth_pass) == 0)
		return 0;
	return -EACCES;
}

static void s_starttls(void *user);

static void ack(struct sconn *sc)
{
	struct worker *w = sc->w;
	/* "S" + 2 hex digits of the worker + 12 of the count, as "S%02X%012X" would */
	static const char hex[] = "0123456789ABCDEF";
	char id[16];
	uint64_t v = (uint64_t)(w->index & 0xff) << 48 | (w->acked & 0xffffffffffffull);
	id[0] = 'S';
	for (int i = 14; i >= 1; i--, v >>= 4)
		id[i] = hex[v & 15];
	id[15] = '\0';
	w->acked++;
	smtp_session_message_done(sc->sess, 0, id);
}

static void s_end(void *user, const struct smtp_envelope *env)
{
	struct sconn *sc = user;
	struct worker *w = sc->w;
	(void)env;
	uint64_t now = mx_now_us();
	verify_end(sc, now);
	if (roll(w, opt_tempfail_pm)) {
		w->tempfailed++;
		smtp_session_message_done(sc->sess, -EAGAIN, "injected by mxsink");
	} else if (roll(w, opt_slow_pm)) {
		w->slowed++;
		sc->done_at = now + opt_slow_ms * 1000ull;
	} else {
		ack(sc);
	}
}

static const struct smtp_server_cb server_cb = {
	.send = s_send,
	.close = s_close,
	.message_begin = s_begin,
	.message_data = s_data,
	.message_end = s_end,
	.message_abort = s_abort,
	.auth_check = s_auth,
	.starttls = s_starttls,
};

/* ---- TCP ------------------------------------------------------------------------- */

/*
 * After every smtp_session_* call: do what its callbacks asked for.  Inside
 * a tls_conn_* call it waits (tcp_close may end the connection at once,
 * and lib/tls would then call back into a freed sconn); the caller of that
 * tls_conn_* call runs it again once it has returned.
 */
static void after_session(struct sconn *sc)
{
	if (sc->want_close && !sc->closed && !sc->in_tls) {
		sc->closed = true;
		if (sc->tls != NULL)
			tls_conn_shutdown(sc->tls); /* close_notify, then FIN */
		tcp_close(sc->tcp);
	}
}

/*
 * The RCPT fault filter: lib/smtp's server session has no per-recipient
 * hook, so with --rcpt-4xx/--rcpt-5xx the input is fed one line at a time
 * and a "RCPT TO:" command picked by the dice never reaches the session:
 * the filter answers it itself.  Replies stay in order because the session
 * sends its replies at the end of every smtp_session_input() call.  Message
 * content (after our 354, up to the lone "."; or the bytes of a BDAT chunk,
 * RFC 3030 2) is passed through unexamined.  Returns the bytes consumed; an
 * incomplete command line stays in TCP's buffer until its end arrives.
 */
static size_t feed_filtered(struct sconn *sc, const uint8_t *data, size_t len)
{
	struct worker *w = sc->w;
	size_t off = 0;
	while (off < len && !sc->closed) {
		size_t n, k;
		if (sc->bdat_left) {
			n = len - off < sc->bdat_left ? len - off : (size_t)sc->bdat_left;
			k = smtp_session_input(sc->sess, data + off, n);
			after_session(sc);
			off += k;
			sc->bdat_left -= k;
			if (k < n)
				break;
			continue;
		}
		const uint8_t *line = data + off;
		const uint8_t *lf = memchr(line, '\n', len - off);
		if (lf == NULL) {
			if (len - off < 4096)
				break; /* wait for the end of the line */
			n = len - off;
		} else {
			n = (size_t)(lf - line) + 1;
		}
		if (!sc->in_data && n >= 8 && strncasecmp((const char *)line, "RCPT TO:", 8) == 0) {
			const char *r = NULL;
			if (roll(w, opt_rcpt4_pm)) {
				w->rcpt_4xx++;
				r = "450 4.2.1 mxsink: injected temporary failure\r\n";
			} else if (roll(w, opt_rcpt5_pm)) {
				w->rcpt_5xx++;
				r = "550 5.1.1 mxsink: injected permanent failure\r\n";
			}
			if (r != NULL) {
				s_send(sc, (const uint8_t *)r, strlen(r));
				after_session(sc);
				off += n;
				continue;
			}
		}
		uint64_t bdat = 0;
		bool is_bdat =
			!sc->in_data && n > 5 && strncasecmp((const char *)line, "BDAT ", 5) == 0;
		for (size_t i = 5; is_bdat && i < n && line[i] >= '0' && line[i] <= '9'; i++)
			bdat = bdat < UINT64_MAX / 10 - 10 ? bdat * 10 + (uint64_t)(line[i] - '0')
							   : bdat;
		bool dot = sc->in_data && ((n == 3 && line[0] == '.' && line[1] == '\r') ||
					   (n == 2 && line[0] == '.'));
		k = smtp_session_input(sc->sess, line, n);
		after_session(sc);
		off += k;
		if (k < n)
			break;
		if (is_bdat)
			sc->bdat_left = bdat;
		if (dot)
			sc->in_data = false;
	}
	return off;
}

/* Plain SMTP bytes (from TCP, or decrypted) into the session.  Returns the bytes taken. */
static size_t feed(struct sconn *sc, const uint8_t *data, size_t len)
{
	if (sc->closed)
		return len;
	size_t used;
	if (opt_rcpt4_pm || opt_rcpt5_pm) {
		used = feed_filtered(sc, data, len);
	} else {
		used = smtp_session_input(sc->sess, data, len);
		after_session(sc);
	}
	return sc->closed ? len : used;
}

static size_t t_data(struct tcp_conn *c, void *user, const uint8_t *data, size_t len)
{
	(void)c;
	struct sconn *sc = user;
	if (sc->closed)
		return len;
	if (sc->tls == NULL)
		return feed(sc, data, len);
	sc->in_tls = true;
	ssize_t k = tls_conn_input(sc->tls, data, len);
	sc->in_tls = false;
	after_session(sc);
	if (k < 0 || sc->closed)
		return len; /* TLS failed (on_error asked to close) or closed: discard */
	return (size_t)k;
}

static void t_writable(struct tcp_conn *c, void *user)
{
	(void)c;
	struct sconn *sc = user;
	if (sc->tls == NULL || sc->closed)
		return;
	sc->in_tls = true;
	tls_conn_flush(sc->tls);
	sc->in_tls = false;
	after_session(sc);
}

/* ---- TLS (callbacks run inside tls_conn_* calls: sc->in_tls is set) --------------- */

static size_t tls_cipher_out(void *user, const uint8_t *data, size_t len)
{
	struct sconn *sc = user;
	ssize_t k = tcp_send(sc->tcp, data, len);
	return k < 0 ? len : (size_t)k; /* < 0: TCP is closing, nobody reads it */
}

static size_t tls_plain_in(void *user, const uint8_t *data, size_t len)
{
	return feed(user, data, len);
}

static void tls_done(void *user, const struct tls_handshake_info *info)
{
	struct sconn *sc = user;
	sc->w->tls_sessions++;
	if (info->resumed)
		sc->w->tls_resumed++;
	smtp_session_tls_started(sc->sess, info->version, info->cipher);
	if (sc->listener == L_SMTPS)
		smtp_session_start(sc->sess); /* the greeting, inside TLS */
}

static void tls_error(void *user, const char *reason)
{
	struct sconn *sc = user;
	(void)reason;
	sc->w->tls_failed++;
	smtp_session_peer_closed(sc->sess);
	sc->want_close = true;
}

static void tls_peer_closed(void *user)
{
	struct sconn *sc = user;
	smtp_session_peer_closed(sc->sess);
	sc->want_close = true;
}

static const struct tls_conn_ops sink_tls_ops = {
	.on_ciphertext = tls_cipher_out,
	.on_plaintext = tls_plain_in,
	.on_handshake_done = tls_done,
	.on_error = tls_error,
	.on_peer_closed = tls_peer_closed,
};

static int tls_begin(struct sconn *sc)
{
	int rc = tls_server_conn_new(tls_ctx, &sink_tls_ops, sc, &sc->w->tstats, &sc->tls);
	if (rc == 0)
		rc = tls_conn_start(sc->tls);
	return rc;
}

/* The 220 to STARTTLS went out in plain text: the next byte from the client is TLS. */
static void s_starttls(void *user)
{
	struct sconn *sc = user;
	if (tls_begin(sc) != 0) {
		sc->w->tls_failed++;
		sc->want_close = true;
	}
}

static void t_peer_closed(struct tcp_conn *c, void *user)
{
	(void)c;
	struct sconn *sc = user;
	if (!sc->closed) {
		smtp_session_peer_closed(sc->sess);
		sc->closed = true;
		tcp_close(sc->tcp);
	}
}

static void t_closed(struct tcp_conn *c, void *user, enum tcp_close_reason why)
{
	(void)c;
	(void)why;
	struct sconn *sc = user;
	struct worker *w = sc->w;
	sc->prev->next = sc->next;
	sc->next->prev = sc->prev;
	w->n_conns--;
	/* on_closed never runs inside an smtp_session_* call: after_session closes
	 * only once the session call has returned. */
	smtp_session_free_pooled(&w->spool, sc->sess);
	tls_conn_free(sc->tls);
	free(sc);
}

static const struct tcp_conn_ops sink_ops = {
	.on_data = t_data,
	.on_writable = t_writable,
	.on_peer_closed = t_peer_closed,
	.on_closed = t_closed,
};

static int t_accept(struct tcp_conn *c, void *ctx)
{
	struct worker *w = ctx;
	if (w->n_conns >= MAX_CONNS_PER_WORKER) {
		w->conns_refused++;
		return -1;
	}
	struct sconn *sc = calloc(1, sizeof(*sc));
	if (sc == NULL) {
		w->conns_refused++;
		return -1;
	}
	uint32_t raddr;
	uint16_t lport, rport;
	uint32_t laddr;
	tcp_conn_endpoints(c, &laddr, &lport, &raddr, &rport);
	sc->w = w;
	sc->tcp = c;
	sc->listener = lport == listen_port[L_SMTPS]	    ? L_SMTPS
		       : lport == listen_port[L_SUBMISSION] ? L_SUBMISSION
							    : L_SMTP;
	if (smtp_session_new_pooled(&w->spool, &sconf[sc->listener], &server_cb, sc, &w->sstats,
				    raddr, ((uint64_t)w->index << 48) | w->conns, &sc->sess) != 0) {
		free(sc);
		w->conns_refused++;
		return -1;
	}
	w->conns++;
	w->n_conns++;
	sc->next = w->live.next;
	sc->prev = &w->live;
	w->live.next->prev = sc;
	w->live.next = sc;
	w->conns_by_listener[sc->listener]++;
	tcp_conn_set_ops(c, &sink_ops, sc);
	if (sc->listener == L_SMTPS) {
		/* implicit TLS: the greeting waits for the handshake (tls_done) */
		if (tls_begin(sc) != 0) {
			w->tls_failed++;
			sc->want_close = true;
		}
	} else {
		smtp_session_start(sc->sess);
	}
	after_session(sc);
	return 0;
}

/* Slow replies that are due, and session timeouts (checked every 100 ms). */
static void scan_conns(struct worker *w, uint64_t now, bool timeouts)
{
	struct sconn *next;
	for (struct sconn *sc = w->live.next; sc != &w->live; sc = next) {
		next = sc->next;
		if (sc->closed)
			continue;
		if (sc->done_at && now >= sc->done_at) {
			sc->done_at = 0;
			ack(sc);
			after_session(sc);
			if (!sc->closed && sc->tls != NULL) {
				/* plaintext held while the reply was pending */
				sc->in_tls = true;
				tls_conn_resume(sc->tls);
				sc->in_tls = false;
				after_session(sc);
			}
			if (!sc->closed)
				tcp_recv_resume(sc->tcp);
		} else if (timeouts && now >= smtp_session_deadline(sc->sess)) {
			smtp_session_timeout(sc->sess);
			after_session(sc);
		}
	}
}

/* ---- DNS --------------------------------------------------------------------------- */

/*
 * Parse the question of a query (RFC 1035 4.1.1, 4.1.2) into dotted text.
 * No compression in a query's question.  0 or -EINVAL.
 */
static int parse_question(const uint8_t *p, size_t n, char *name, size_t cap, uint16_t *qtype,
			  uint16_t *qclass)
{
	size_t off = 12, out = 0;
	for (;;) {
		if (off >= n)
			return -EINVAL;
		uint8_t l = p[off++];
		if (l == 0)
			break;
		if (l > 63 || off + l > n || out + l + 2 > cap)
			return -EINVAL;
		if (out)
			name[out++] = '.';
		for (unsigned i = 0; i < l; i++) {
			uint8_t ch = p[off + i];
			if (ch <= 0x20 || ch >= 0x7f || ch == '.')
				return -EINVAL;
			name[out++] = (char)ch;
		}
		off += l;
	}
	name[out] = '\0';
	if (off + 4 > n)
		return -EINVAL;
	*qtype = (uint16_t)(p[off] << 8 | p[off + 1]);
	*qclass = (uint16_t)(p[off + 2] << 8 | p[off + 3]);
	return 0;
}

/* "dN.sink.test" with N < opt_domains: N; else -1. */
static long zone_domain(const char *name)
{
	static const char suffix[] = ".sink.test";
	size_t n = strlen(name), sl = sizeof(suffix) - 1;
	if (n <= sl + 1 || name[0] != 'd' || strcasecmp(name + n - sl, suffix) != 0)
		return -1;
	long v = 0;
	for (size_t i = 1; i < n - sl; i++) {
		if (name[i] < '0' || name[i] > '9' || v > 100000000)
			return -1;
		v = v * 10 + (name[i] - '0');
	}
	if (n - sl < 2 || (name[1] == '0' && n - sl > 2))
		return -1;
	return v < (long)opt_domains ? v : -1;
}

static void dns_recv(void *ctx, uint32_t src, uint16_t sport, uint32_t dst, uint16_t dport,
		     const uint8_t *data, size_t len)
{
	struct worker *w = ctx;
	char qname[DNS_NAME_TEXT_MAX];
	uint16_t qtype, qclass;
	if (len < 12 || (data[2] & 0x80) || ((data[4] << 8) | data[5]) != 1 ||
	    parse_question(data, len, qname, sizeof(qname), &qtype, &qclass) != 0) {
		w->dns_bad++;
		return;
	}
	w->dns_queries++;
	uint16_t id = (uint16_t)(data[0] << 8 | data[1]);
	uint16_t flags = DNS_F_QR | DNS_F_AA | ((uint16_t)(data[2] << 8) & DNS_F_RD);
	/* "mx.dN.sink.test" or "dN.sink.test" */
	bool is_mx_host = strncasecmp(qname, "mx.", 3) == 0;
	long dom = zone_domain(is_mx_host ? qname + 3 : qname);
	uint8_t buf[512];
	struct dns_builder b;
	if (dom < 0 || qclass != DNS_C_IN) {
		w->dns_nx++;
		dns_builder_init(&b, buf, sizeof(buf), id, flags | DNS_RCODE_NXDOMAIN, qname, qtype,
				 qclass);
	} else {
		dns_builder_init(&b, buf, sizeof(buf), id, flags, qname, qtype, qclass);
		char mxname[DNS_NAME_TEXT_MAX];
		snprintf(mxname, sizeof(mxname), "mx.%s", is_mx_host ? qname + 3 : qname);
		struct dns_rr a = {.name = qname, .type = DNS_T_A, .rclass = DNS_C_IN, .ttl = 3600};
		a.a = sink_addr;
		if (qtype == DNS_T_MX && !is_mx_host) {
			struct dns_rr mx = {
				.name = qname, .type = DNS_T_MX, .rclass = DNS_C_IN, .ttl = 3600};
			mx.mx.pref = 10;
			mx.mx.host = mxname;
			dns_builder_add(&b, DNS_SEC_ANSWER, &mx);
			a.name = mxname;
			dns_builder_add(&b, DNS_SEC_ADDITIONAL, &a);
		} else if (qtype == DNS_T_A) {
			dns_builder_add(&b, DNS_SEC_ANSWER, &a);
		}
		/* other types: NOERROR with no data (RFC 2308 2.2) */
	}
	int n = dns_builder_finish(&b);
	if (n > 0)
		udp_send(w->st, dst, dport, src, sport, buf, (size_t)n);
	else
		w->dns_bad++;
}

/* ---- worker ---------------------------------------------------------------------- */

/* Listen and bind on st for worker i (mxsink.h).  0 or -1 (said on stderr). */
int mxsink_role_open(unsigned i, struct net_stack *st)
{
	struct worker *w = &workers[i];
	w->st = st;
	smtp_session_pool_init(&w->spool, SESSION_POOL_MAX);
	if (opt_prewarm > 0) {
		/* the longest command line: its sessions serve every listener */
		const struct smtp_server_conf *big = &sconf[0];
		for (unsigned l = 1; l < N_LISTENERS; l++)
			if (sconf[l].max_command_line > big->max_command_line)
				big = &sconf[l];
		uint64_t sessions = w->sstats.sessions;
		int rc = smtp_session_pool_prewarm(&w->spool, big, (unsigned)opt_prewarm);
		if (rc >= 0)
			rc = tcp_prewarm(st, (unsigned)opt_prewarm, PREWARM_RING_TOUCH);
		if (rc < 0)
			fprintf(stderr, "mxsink: worker %u: prewarm: %s\n", w->index,
				strerror(-rc));
		w->sstats.sessions = sessions;
	}
	for (unsigned l = 0; l < N_LISTENERS; l++) {
		if (l == L_SMTPS && tls_ctx == NULL)
			continue;
		if (tcp_listen(w->st, 0, listen_port[l], t_accept, w) != 0) {
			fprintf(stderr, "mxsink: worker %u: listen on %u failed\n", w->index,
				listen_port[l]);
			return -1;
		}
	}
	if (udp_bind(w->st, 53, dns_recv, w) != 0) {
		fprintf(stderr, "mxsink: worker %u: DNS bind failed\n", w->index);
		return -1;
	}
	return 0;
}

/*
 * The sink's part of one loop turn of worker i, after net_stack_poll (mxsink.h):
 * slow replies due (each millisecond) and timeouts (each 100 ms).  *busy: poll
 * without backing off (--busy-poll with connections open); *max_sleep_us:
 * the longest nap that keeps slow replies on time.  Returns the work done.
 */
unsigned mxsink_role_turn(unsigned i, uint64_t now, bool *busy, uint64_t *max_sleep_us)
{
	struct worker *w = &workers[i];
	/* the walk over every connection: each millisecond only while slow replies can be
	 * due (--slow), else every 100 ms for the timeouts alone (a walk over thousands of
	 * open connections each millisecond would find nothing to do) */
	if (now - w->last_scan >= (opt_slow_pm ? 1000 : 100000)) {
		bool t = now - w->last_timeouts >= 100000;
		scan_conns(w, now, t);
		w->last_scan = now;
		if (t)
			w->last_timeouts = now;
	}
	*busy = opt_busy_poll && w->n_conns > 0;
	/* Slow replies pending: never sleep past 1 ms. */
	*max_sleep_us = opt_slow_pm ? 1000 : 10000;
	return 0;
}

/* ---- reporting ---------------------------------------------------------------------- */

/* lib/net's view, for telling a dead link from a slow peer (after the workers stopped). */
static void json_net(FILE *f)
{
	struct net_stack *stacks[MAX_WORKERS];
	for (unsigned i = 0; i < dp.n_workers; i++)
		stacks[i] = workers[i].st;
	bench_json_net(f, stacks, dp.n_workers);
}

struct totals {
	uint64_t conns, conns_refused, received, ok, corrupt, no_tag, dup, unchecked;
	uint64_t acked, tempfailed, slowed, send_short, dns_queries, dns_nx, dns_bad;
	uint64_t rcpt_4xx, rcpt_5xx;
	uint64_t conns_by_listener[N_LISTENERS];
	uint64_t tls_sessions, tls_resumed, tls_failed, dkim_signed;
	uint64_t auth_ok, auth_failed;
	uint64_t first_rx_us, last_rx_us; /* over the workers: earliest first, latest last */
	uint64_t busy_us;
};

static void sum(struct totals *t)
{
	memset(t, 0, sizeof(*t));
	for (unsigned i = 0; i < dp.n_workers; i++) {
		struct worker *w = &workers[i];
		t->conns += rd(&w->conns), t->conns_refused += rd(&w->conns_refused);
		t->received += rd(&w->received), t->ok += rd(&w->ok);
		t->corrupt += rd(&w->corrupt), t->no_tag += rd(&w->no_tag);
		t->dup += rd(&w->dup), t->unchecked += rd(&w->unchecked);
		t->acked += rd(&w->acked), t->tempfailed += rd(&w->tempfailed);
		t->slowed += rd(&w->slowed), t->send_short += rd(&w->send_short);
		t->dns_queries += rd(&w->dns_queries), t->dns_nx += rd(&w->dns_nx);
		t->dns_bad += rd(&w->dns_bad);
		t->rcpt_4xx += rd(&w->rcpt_4xx), t->rcpt_5xx += rd(&w->rcpt_5xx);
		for (unsigned l = 0; l < N_LISTENERS; l++)
			t->conns_by_listener[l] += rd(&w->conns_by_listener[l]);
		t->tls_sessions += rd(&w->tls_sessions), t->tls_resumed += rd(&w->tls_resumed);
		t->tls_failed += rd(&w->tls_failed), t->dkim_signed += rd(&w->dkim_signed);
		t->auth_ok += rd(&w->sstats.auth_success);
		t->auth_failed += rd(&w->sstats.auth_failures);
		t->busy_us += rd(&w->busy_us);
		uint64_t f = rd(&w->first_rx_us), l = rd(&w->last_rx_us);
		if (f && (t->first_rx_us == 0 || f < t->first_rx_us))
			t->first_rx_us = f;
		if (l > t->last_rx_us)
			t->last_rx_us = l;
	}
}

static struct mxb_hist merged;
static uint64_t mon_start, mon_last_print, mon_last_received; /* mxsink_role_tick */

static void merge_hist(void)
{
	mxb_hist_init(&merged);
	for (unsigned i = 0; i < dp.n_workers; i++)
		mxb_hist_merge(&merged, &workers[i].lat);
}

static void write_json(FILE *f, double secs)
{
	struct totals t;
	sum(&t);
	merge_hist();
	fprintf(f,
		"{\n  \"tool\": \"mxsink\",\n  \"seconds\": %.3f,\n  \"connections\": %" PRIu64
		",\n  \"connections_refused\": %" PRIu64 ",\n  \"received\": %" PRIu64
		",\n  \"ok\": %" PRIu64 ",\n  \"corrupt\": %" PRIu64
		",\n  \"missing_tag\": %" PRIu64 ",\n  \"duplicates\": %" PRIu64
		",\n  \"unchecked_seq\": %" PRIu64 ",\n  \"accepted\": %" PRIu64
		",\n  \"tempfailed\": %" PRIu64 ",\n  \"slowed\": %" PRIu64
		",\n  \"send_short\": %" PRIu64 ",\n  \"dns_queries\": %" PRIu64
		",\n  \"dns_nxdomain\": %" PRIu64 ",\n  \"dns_bad\": %" PRIu64
		",\n  \"rcpt_4xx\": %" PRIu64 ",\n  \"rcpt_5xx\": %" PRIu64
		",\n  \"received_per_s\": %.1f,\n",
		secs, t.conns, t.conns_refused, t.received, t.ok, t.corrupt, t.no_tag, t.dup,
		t.unchecked, t.acked, t.tempfailed, t.slowed, t.send_short, t.dns_queries, t.dns_nx,
		t.dns_bad, t.rcpt_4xx, t.rcpt_5xx, secs > 0 ? (double)t.received / secs : 0.0);
	fprintf(f,
		"  \"connections_25\": %" PRIu64 ",\n  \"connections_587\": %" PRIu64
		",\n  \"connections_465\": %" PRIu64 ",\n  \"tls_sessions\": %" PRIu64
		",\n  \"tls_resumed\": %" PRIu64 ",\n  \"tls_failures\": %" PRIu64
		",\n  \"dkim_signed\": %" PRIu64 ",\n  \"auth_success\": %" PRIu64
		",\n  \"auth_failures\": %" PRIu64 ",\n  \"first_rx_mono_us\": %" PRIu64
		",\n  \"last_rx_mono_us\": %" PRIu64 ",\n  \"busy_us\": %" PRIu64
		",\n  \"busy_us_per_msg\": %.2f,\n",
		t.conns_by_listener[L_SMTP], t.conns_by_listener[L_SUBMISSION],
		t.conns_by_listener[L_SMTPS], t.tls_sessions, t.tls_resumed, t.tls_failed,
		t.dkim_signed, t.auth_ok, t.auth_failed, t.first_rx_us, t.last_rx_us, t.busy_us,
		t.received ? (double)t.busy_us / (double)t.received : 0.0);
	json_net(f);
	fprintf(f,
		"  \"e2e_latency_us\": {\"count\": %" PRIu64 ", \"p50\": %" PRIu64
		", \"p90\": %" PRIu64 ", \"p99\": %" PRIu64 ", \"p999\": %" PRIu64
		", \"max\": %" PRIu64 "}\n}\n",
		merged.count, mxb_hist_quantile(&merged, 0.5), mxb_hist_quantile(&merged, 0.9),
		mxb_hist_quantile(&merged, 0.99), mxb_hist_quantile(&merged, 0.999), merged.max);
}

static void usage(void)
{
	fprintf(stderr,
		"usage: mxsink --config FILE [--duration SEC] [--max-messages N] [--json FILE]\n"
		"              [--tempfail PERMILLE] [--slow PERMILLE] [--slow-ms MS]\n"
		"              [--rcpt-4xx PERMILLE] [--rcpt-5xx PERMILLE]\n"
		"              [--domains N] [--seq-max N] [--quiet] [--busy-poll]\n"
		"              [--cert FILE --key FILE] [--auth USER:PASS] [--prewarm N]\n");
}

static int parse_num(const char *s, uint64_t max, uint64_t *out)
{
	if (cfg_parse_u64(s, 0, max, out) != 0) {
		fprintf(stderr, "mxsink: bad number '%s' (0..%" PRIu64 ")\n", s, max);
		return -1;
	}
	return 0;
}

/*
 * Options, the TLS context and the SMTP configurations (mxsink.h).  The
 * config file's name goes to *config (NULL if none was given).  0, or the
 * exit status for a bad command line (2) or set-up failure (1).
 */
int mxsink_role_setup(int argc, char **argv, const char **config_out)
{
	static const struct option opts[] = {
		{"config", required_argument, NULL, 'c'},
		{"duration", required_argument, NULL, 't'},
		{"max-messages", required_argument, NULL, 'm'},
		{"json", required_argument, NULL, 'j'},
		{"tempfail", required_argument, NULL, 'f'},
		{"slow", required_argument, NULL, 's'},
		{"slow-ms", required_argument, NULL, 'S'},
		{"domains", required_argument, NULL, 'd'},
		{"seq-max", required_argument, NULL, 'q'},
		{"quiet", no_argument, NULL, 'Q'},
		{"busy-poll", no_argument, NULL, 'P'},
		{"prewarm", required_argument, NULL, 'W'},
		{"rcpt-4xx", required_argument, NULL, '4'},
		{"rcpt-5xx", required_argument, NULL, '5'},
		{"cert", required_argument, NULL, 'C'},
		{"key", required_argument, NULL, 'K'},
		{"auth", required_argument, NULL, 'A'},
		{NULL, 0, NULL, 0},
	};
	const char *config = NULL;
	optind = 0; /* a fresh getopt: mxload parses two command lines */
	uint64_t v;
	int opt;
	while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (opt) {
		case 'c':
			config = optarg;
			break;
		case 'j':
			opt_json = optarg;
			break;
		case 'P':
			opt_busy_poll = true;
			break;
		case 'W':
			if (parse_num(optarg, SESSION_POOL_MAX, &opt_prewarm) != 0)
				return 2;
			break;
		case 'Q':
			opt_quiet = true;
			break;
		case 'C':
			opt_cert = optarg;
			break;
		case 'K':
			opt_key = optarg;
			break;
		case 'A': {
			const char *colon = strchr(optarg, ':');
			size_t ul = colon ? (size_t)(colon - optarg) : 0;
			if (ul == 0 || ul >= sizeof(opt_auth_user) ||
			    strlen(colon + 1) >= sizeof(opt_auth_pass) || colon[1] == '\0') {
				fprintf(stderr,
					"mxsink: --auth USER:PASS (each under 128 bytes)\n");
				return 2;
			}
			memcpy(opt_auth_user, optarg, ul);
			opt_auth_user[ul] = '\0';
			snprintf(opt_auth_pass, sizeof(opt_auth_pass), "%s", colon + 1);
			break;
		}
		case 't':
			if (parse_num(optarg, 86400 * 7, &v))
				return 2;
			opt_duration = (unsigned)v;
			break;
		case 'm':
			if (parse_num(optarg, UINT64_MAX / 2, &opt_max_messages))
				return 2;
			break;
		case 'f':
			if (parse_num(optarg, 1000, &v))
				return 2;
			opt_tempfail_pm = (unsigned)v;
			break;
		case '4':
			if (parse_num(optarg, 1000, &v))
				return 2;
			opt_rcpt4_pm = (unsigned)v;
			break;
		case '5':
			if (parse_num(optarg, 1000, &v))
				return 2;
			opt_rcpt5_pm = (unsigned)v;
			break;
		case 's':
			if (parse_num(optarg, 1000, &v))
				return 2;
			opt_slow_pm = (unsigned)v;
			break;
		case 'S':
			if (parse_num(optarg, 600000, &v))
				return 2;
			opt_slow_ms = (unsigned)v;
			break;
		case 'd':
			if (parse_num(optarg, 10000000, &v))
				return 2;
			opt_domains = (unsigned)v;
			break;
		case 'q':
			if (parse_num(optarg, 1ull << 34, &v) || v < 8)
				return 2;
			opt_seq_max = v;
			break;
		default:
			usage();
			return 2;
		}
	}
	*config_out = config;
	if (optind != argc || !opt_cert != !opt_key) {
		usage();
		return 2;
	}
	seq_bitmap = calloc(opt_seq_max / 8 + 1, 1);
	if (seq_bitmap == NULL) {
		fprintf(stderr, "mxsink: no memory for the seq bitmap\n");
		return 1;
	}
	char err[512];
	if (opt_cert != NULL) {
		/* two TLS 1.3 tickets per handshake, as a stock OpenSSL server sends
		 * (SSL_CTX_set_num_tickets' default): a client's pool can grow by resuming */
		struct tls_server_conf tc = {.cert_count = 1, .num_tickets = 2};
		/* an MX fed by pooled relays: few, busy sessions (tls_server_conf) */
		tc.keep_buffers = true;
		tc.cert_file[0] = opt_cert;
		tc.key_file[0] = opt_key;
		if (tls_server_ctx_create(&tc, &tls_ctx, err, sizeof(err)) != 0) {
			fprintf(stderr, "mxsink: TLS: %s\n", err);
			return 2;
		}
	}
	static const struct smtp_ipv4_prefix everyone = {0, 0};
	for (unsigned l = 0; l < N_LISTENERS; l++) {
		struct smtp_server_conf *c = &sconf[l];
		smtp_server_conf_defaults(c);
		c->hostname = "mx.sink.test";
		c->allow_networks = &everyone;
		c->allow_network_count = 1;
		c->max_recipients = 1000;
		c->long_line = SMTP_LONG_LINE_ALLOW;
		c->tls_available = tls_ctx != NULL && l != L_SMTPS;
		c->listener = l == L_SMTPS			      ? SMTP_LISTENER_IMPLICIT_TLS
			      : l == L_SUBMISSION && opt_auth_user[0] ? SMTP_LISTENER_SUBMISSION
								      : SMTP_LISTENER_RELAY;
		if (smtp_server_conf_check(c, err, sizeof(err)) != 0) {
			fprintf(stderr, "mxsink: smtp: %s\n", err);
			return 2;
		}
	}

	return 0;
}

/*
 * The sink runs on d's workers and answers DNS with addr (mxsink.h): the
 * per-worker state is set up; the caller runs mxsink_role_open and _turn on
 * each worker and mxsink_role_tick on its main thread.
 */
void mxsink_role_attach(const struct net_dataplane *d, uint32_t addr)
{
	dp = *d;
	sink_addr = addr;
	for (unsigned i = 0; i < dp.n_workers; i++) {
		struct worker *w = &workers[i];
		w->index = i;
		w->rng = 0x9e3779b97f4a7c15ull * (i + 1);
		w->live.next = w->live.prev = &w->live;
		mxb_hist_init(&w->lat);
	}
	fprintf(stderr,
		"mxsink: %u worker(s), SMTP on 25 and 587%s%s, DNS on 53, port 0 steering %s\n",
		dp.n_workers, tls_ctx ? " (STARTTLS) and 465 (TLS)" : "",
		opt_auth_user[0] ? ", AUTH required on 587" : "", net_port_steering(dp.ports[0]));
	mon_start = mon_last_print = mx_now_us();
}

/*
 * The main thread's part, every ~20 ms (mxsink.h): the progress line once a
 * second, --duration and --max-messages.  True once the sink should stop.
 */
bool mxsink_role_tick(uint64_t now)
{
	if (opt_duration && now - mon_start >= opt_duration * 1000000ull)
		stop = 1;
	struct totals t;
	sum(&t);
	if (opt_max_messages && t.received >= opt_max_messages)
		stop = 1;
	if (now - mon_last_print >= 1000000) {
		if (!opt_quiet) {
			merge_hist();
			printf("mxsink %6.1fs recv/s %8.0f ok %" PRIu64 " corrupt %" PRIu64
			       " dup %" PRIu64 " notag %" PRIu64 " 4xx %" PRIu64 " e2e p50 %" PRIu64
			       "us p99 %" PRIu64 "us mono_ms %" PRIu64 "\n",
			       (double)(now - mon_start) / 1e6,
			       (double)(t.received - mon_last_received) * 1e6 /
				       (double)(now - mon_last_print),
			       t.ok, t.corrupt, t.dup, t.no_tag, t.tempfailed,
			       mxb_hist_quantile(&merged, 0.5), mxb_hist_quantile(&merged, 0.99),
			       now / 1000);
			fflush(stdout);
		}
		mon_last_print = now;
		mon_last_received = t.received;
	}
	return stop != 0;
}

/* After the workers stopped (mxsink.h): the JSON summary; frees.  0 or 1. */
int mxsink_role_finish(void)
{
	double secs = (double)(mx_now_us() - mon_start) / 1e6;
	int rc = 0;
	if (opt_json) {
		FILE *f = fopen(opt_json, "w");
		if (f == NULL) {
			fprintf(stderr, "mxsink: %s: %s\n", opt_json, strerror(errno));
			rc = 1;
		} else {
			write_json(f, secs);
			fclose(f);
		}
	} else {
		write_json(stdout, secs);
	}
	for (unsigned i = 0; i < dp.n_workers; i++)
		smtp_session_pool_drain(&workers[i].spool);
	tls_server_ctx_free(tls_ctx);
	tls_ctx = NULL;
	free(seq_bitmap);
	seq_bitmap = NULL;
	return rc;
}

#ifndef MXB_ROLE_ONLY
static void on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

/* The standalone worker: its own stack, the role's turns, idle back-off. */
static int worker_main(void *arg)
{
	struct worker *w = arg;
	struct net_stack_conf sc;
	net_dataplane_stack_conf(&dp, w->index, &sc);
	struct net_stack *st = net_stack_create(&sc);
	if (st == NULL) {
		fprintf(stderr, "mxsink: worker %u: stack: %s\n", w->index, strerror(errno));
		stop = 1;
		return -1;
	}
	if (mxsink_role_open(w->index, st) != 0) {
		stop = 1;
		return -1;
	}
	uint64_t prev = 0;
	bool worked = false;
	while (!stop) {
		uint64_t now = mx_now_us(), max_sleep;
		bool busy;
		if (worked)
			__atomic_store_n(&w->busy_us, w->busy_us + (now - prev), __ATOMIC_RELAXED);
		unsigned n = net_stack_poll(w->st, now);
		n += mxsink_role_turn(w->index, now, &busy, &max_sleep);
		if (n == 0 && !busy)
			sched_yield(); /* as mxrelay's worker: a CPU shared with mxgen */
		net_stack_idle(w->st, &w->idle, n > 0 || busy, now, max_sleep);
		worked = n > 0;
		prev = now;
	}
	for (uint64_t end = mx_now_us() + 100000; mx_now_us() < end;)
		net_stack_poll(w->st, mx_now_us());
	return 0;
}

int main(int argc, char **argv)
{
	const char *config;
	int rc = mxsink_role_setup(argc, argv, &config);
	if (rc != 0)
		return rc;
	if (config == NULL) {
		usage();
		return 2;
	}
	struct cfg_file *cf;
	rc = net_dataplane_start_file(&dp, config, "mxsink", argv[0], 1, MAX_WORKERS, &cf);
	if (rc != 0)
		return rc;
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	struct net_dataplane started = dp;
	mxsink_role_attach(&started, dp.conf.ports[0].addr);
	for (unsigned i = 0; i < dp.n_workers; i++)
		rte_eal_remote_launch(worker_main, &workers[i], dp.worker_lcore[i]);
	while (!stop) {
		usleep(20000);
		mxsink_role_tick(mx_now_us());
	}
	stop = 1;
	rte_eal_mp_wait_lcore();
	rc = mxsink_role_finish();
	net_dataplane_stop(&dp);
	cfg_free(cf);
	return rc;
}
#endif
