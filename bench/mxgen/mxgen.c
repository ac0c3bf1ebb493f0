/*
 * mxgen.c - the benchmark's sending side: one DPDK process on lib/net that
 * behaves like a fleet of IoT devices handing mail to a relay.
 *
 *	mxgen --config FILE --target A.B.C.D[:PORT]
 *	      (--rate R | --concurrency C)  [--duration SEC] [--max-messages N]
 *	      [--devices N] [--msgs-per-conn M] [--size B | --size MIN-MAX]
 *	      [--rcpts R] [--domains N] [--big-domains K] [--big-share PERMILLE]
 *	      [--literal-share PERMILLE] [--drain SEC] [--json FILE] [--quiet]
 *	      [--tls starttls|implicit] [--tls-resume] [--auth USER:PASS]
 *	      [--device-ports K] [--corrupt PERMILLE] [--start-delay MS]
 *	      [--start-on-signal] [--prewarm N] [--no-pipelining]
 *
 * Each connection is one device (dev<N>@fleet.test, N cycling over
 * --devices) opening a TCP connection (ephemeral source port, steered to
 * the opening core; with --device-ports K, device N uses its own K source
 * ports from 1024 + N * K on, as a fleet of hosts behind one address
 * would), speaking SMTP through lib/smtp's client session
 * (PIPELINING when the server offers it, unless --no-pipelining: one
 * command a reply, as minimal firmware talks), sending --msgs-per-conn
 * messages and quitting.  Recipients are userK@dD.sink.test: --big-share
 * of them go to d0..d(K-1), the rest to the long tail dK..d(N-1);
 * --literal-share use an address literal [target] instead.
 *
 * TLS (lib/tls over memory BIOs): --tls starttls asks STARTTLS after EHLO
 * and fails the session when it is not offered (a device that must not
 * send in the clear); --tls implicit speaks TLS from the first byte (port
 * 465 unless --target names one, RFC 8314 3.3).  --tls-resume gives every
 * device its own one-entry session cache, as real devices keep their own
 * ticket: a device's next connection resumes with the ticket its previous
 * one received (TLS 1.3 tickets are single-use, RFC 8446 C.4), so the
 * first connection of each device is a full handshake and the later ones
 * are resumed (no certificate, no signature on the server).  Counted: full
 * and resumed handshakes, TLS failures (lib/tls's reasons, summed).
 * --auth logs in (AUTH PLAIN or LOGIN, lib/smtp's client) before MAIL,
 * only inside TLS (RFC 4954 4), as a device submitting on 587 does.
 *
 * Every message carries "X-Mxgen: SEQ DIGEST SEND-US" for mxsink's
 * verification (DIGEST: digest.h's 64-bit hash of the body, 16 hex digits);
 * SEQ is unique over the run (worker + n_workers * k).  --corrupt sends
 * that share of messages with their first body byte changed after the
 * digest was taken (counted as "corrupted"): a test that mxsink's
 * verification catches what it should.  Bodies are windows
 * of a text each worker generates once (lines of 76 characters), starting
 * at one of TEXT_SLOTS line starts: a message costs no generation, and its
 * digest comes from a small cache keyed by (start, size).
 *
 * Open loop (--rate): new connections arrive at a fixed rate whatever
 * happens to earlier ones, so latency stays honest under overload; when
 * the per-core in-flight bound (--max-inflight) is reached an arrival is
 * dropped and counted, not queued.  Closed loop (--concurrency): that many
 * connections are kept open.
 *
 * --prewarm N (default: --max-inflight, 20000; 0: none): before the load,
 * each worker makes N connections' state (the per-connection struct, its
 * SMTP client, lib/net's connection and ring caches) and writes it once,
 * as the relay does ([smtp] prewarm_connections): at 55k connections/s the
 * first 0.5 s were otherwise a third page faults (calloc of ~44 KiB per
 * connection), mxgen fell behind reading its RX ring, and the relay's
 * replies to it were dropped (SYN retransmissions, p99 600 ms).  4096 were
 * not enough at 100k/s: a start that held more in flight for a moment
 * made the rest new, page by page (70% of mxgen's first 0.5 s), and never
 * caught up.  Costs ~60 KiB per connection (~1.2 GiB per worker at 20000,
 * ~1 s at start): what that many connections in flight hold anyway.
 *
 * The load begins --start-delay ms (200) after the start, for ARP to
 * settle; with --start-on-signal only once SIGUSR1 came (mxload, whose
 * links come up only when the relay, started after it, connects).
 * --duration counts from the start (the gate's opening) on.
 *
 * After --duration (or once --max-messages were offered) no new connection
 * starts and the ones in flight get --drain seconds; what is left then is
 * aborted and counted "unfinished".  offered = accepted + rejected +
 * unfinished always holds.  Accept latency is measured from the moment
 * the last body byte is handed to TCP to the reply to the end of data.
 * Unless --quiet, a progress line once a second: rate, totals, in flight,
 * errors, the p99 accept latency of that second, TLS handshakes full/
 * resumed and mono_ms (CLOCK_MONOTONIC, which mxsink's line carries too:
 * bench/run puts both on one time line for its plot).  The JSON summary
 * has busy_us_per_msg: the time of the loop turns that found work per
 * message offered (standalone only; bench/mxload accounts its one loop).
 *
 * mxgen is also a role that bench/mxload runs next to mxsink's in one
 * process (mxgen.h); main() below is the standalone process around it.
 */
#include "core.h"
#include "digest.h"
#include "dns.h"
#include "hist.h"
#include "mxgen.h"
#include "net.h"
#include "netjson.h"
#include "smtp.h"
#include "tls.h"

#include <errno.h>
#include <sched.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stddef.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <rte_eal.h>
#include <rte_launch.h>
#include <rte_lcore.h>

#define MAX_WORKERS 64
#define MAX_RCPTS 100
#define MAX_SIZE (16u << 20)
#define ADDR_MAX 96
#define HDR_MAX 512
#define TEXT_LINE 78	     /* a body line: 76 characters and CRLF */
#define TEXT_SLOTS 64	     /* line starts a body may begin at */
#define DIGEST_CACHE 1024    /* digests of (start, size) pairs, direct-mapped */
#define DEVICE_PORT_LO 1024u /* --device-ports: device N's ports start at LO + N * K */

/* ---- options ---------------------------------------------------------------------- */

static uint32_t opt_target;
static uint16_t opt_port = 25;
static double opt_rate;		 /* connections/s, all cores; 0: closed loop */
static unsigned opt_concurrency; /* closed loop: connections open, all cores */
static unsigned opt_duration = 10, opt_drain = 10;
static uint64_t opt_max_messages;
static unsigned opt_devices = 1000, opt_msgs_per_conn = 1, opt_rcpts = 1;
static unsigned opt_size_min = 1024, opt_size_max = 1024;
static unsigned opt_domains = 1000, opt_big_domains = 3, opt_big_share = 800;
static unsigned opt_literal_share;
static unsigned opt_max_inflight = 20000; /* per core */
static unsigned opt_prewarm = UINT_MAX; /* per core: connections' state made at start */
static const char *opt_json;
static bool opt_quiet;
static unsigned opt_dns_check; /* queries to the target's DNS (mxsink's zone), from worker 0 */
enum gen_tls { GEN_TLS_NONE, GEN_TLS_STARTTLS, GEN_TLS_IMPLICIT };
static enum gen_tls opt_tls;
static bool opt_tls_resume, opt_port_given;
static bool opt_no_pipelining; /* --no-pipelining */
static char opt_auth_user[128], opt_auth_pass[128]; /* --auth; "" = none */
static unsigned opt_device_ports;		    /* --device-ports K; 0 = ephemeral ports */
static unsigned opt_start_delay_ms = 200;	    /* --start-delay: from the start to the load */
static volatile bool start_gate; /* --start-on-signal: mxgen_role_go() opens it */
static bool opt_start_on_signal;
static unsigned opt_corrupt_pm; /* --corrupt: per mille of messages sent corrupted */

#define TLS_RESUME_MAX_DEVICES 1000000 /* --tls-resume: one session cache pointer each */

#define DNS_CHECK_MAX 10000
#define DNS_CHECK_PORT 5300

/* ---- state ------------------------------------------------------------------------ */

struct gconn {
	struct gconn *prev, *next;
	struct worker *w;
	struct tcp_conn *tcp;
	struct smtp_client *cl;
	struct tls_conn *tls; /* NULL until STARTTLS's 220 (or at once for implicit TLS) */
	unsigned device, msgs_left;
	bool want_next, want_abort, want_close, tcp_gone, msg_active, aborting;
	bool corrupt;	 /* --corrupt: the first body byte goes out changed */
	uint64_t eod_us; /* the last body byte went to TCP */
	/* the message in flight */
	struct smtp_client_msg msg;
	size_t hdr_len;
	const uint8_t *body; /* body_len - 2 bytes of the worker's text, then CRLF */
	size_t body_len;
	/* from here on a recycled gconn is not cleared (rewritten for every message) */
	char sender[ADDR_MAX];
	char hdr[HDR_MAX];
	struct smtp_client_rcpt rcpt[MAX_RCPTS];
	char rcpt_addr[MAX_RCPTS][ADDR_MAX];
};

struct digest_entry {
	uint32_t size; /* 0: empty */
	uint32_t off;
	uint64_t digest;
};

struct worker {
	unsigned index;
	struct net_stack *st;
	struct net_idle idle;
	struct gconn live;
	unsigned in_flight;
	uint64_t rng, next_seq_k, max_offer;
	struct smtp_client_stats cstats;
	struct tls_stats tstats;
	struct tls_session_cache **tcache; /* --tls-resume: per device, made on first use */
	struct mxb_hist lat;		   /* end of data -> reply */
	struct mxb_hist lat_total;	   /* message submitted -> reply */
	uint8_t *text;			   /* bodies are windows of it (see make_body) */
	struct digest_entry dcache[DIGEST_CACHE];
	struct gconn *spare; /* ended connections' gconns, for the next ones */
	unsigned spare_count;
	uint16_t *dport_next; /* --device-ports: per device, the next of its ports to try */
	/* counters (read by the main thread) */
	uint64_t conns_started, conns_done, connect_errors, arrivals_dropped, conns_failed;
	uint64_t offered, accepted, rejected, unfinished, bytes;
	uint64_t by_code[600]; /* final reply code of rejected messages; 0 = no reply */
	uint64_t dns_sent, dns_ok, dns_bad;
	uint64_t tls_full, tls_resumed, tls_failed; /* handshakes done / failed */
	uint64_t late_starts, max_lag_us; /* open loop: arrivals started > 1 ms behind schedule */
	uint64_t device_ports_busy;	  /* --device-ports: all of a device's ports were in use */
	uint64_t digest_misses;		  /* bodies whose digest was computed (not cached) */
	uint64_t corrupted;		  /* --corrupt */
	uint64_t load_start, load_end;	  /* µs: first arrival, start of the drain */
	volatile bool draining;
	bool link_up; /* a TCP connection to the target came up: ARP is resolved */
	bool done;    /* the drain is over (mxgen_role_turn): read by the main thread */
	bool dns_check;
	/* the loop's schedule (mxgen_role_turn) */
	uint64_t start, next_dns, next_arrival, last_scan, drain_end;
	double interval; /* open loop: us between arrivals on this worker; 0: closed loop */
	unsigned conc;	 /* closed loop: this worker's share of --concurrency */
	unsigned arrivals_k;
	/* time of the loop turns that found work, up to the next turn's clock read: CPU per
	 * message without the idle polling (busy_us_per_msg; standalone loop only) */
	uint64_t busy_us;
};

static volatile sig_atomic_t stop;
static volatile bool drain_all;
static struct net_dataplane dp;
static struct worker workers[MAX_WORKERS];
static struct smtp_client_conf cconf;
static struct tls_client_ctx *tls_ctx;
static char target_text[20]; /* the target's address: SNI is not sent for it, the cache key */

/* --start-on-signal: the load begins --start-delay from now (mxgen.h; async-signal-safe). */
void mxgen_role_go(void)
{
	start_gate = true;
}

/* No new connection from now on: the drain begins (mxgen.h; async-signal-safe). */
void mxgen_role_stop(void)
{
	stop = 1;
}

static uint64_t rnd(struct worker *w)
{
	w->rng ^= w->rng >> 12;
	w->rng ^= w->rng << 25;
	w->rng ^= w->rng >> 27;
	return w->rng * 2685821657736338717ull;
}

static uint64_t rd(const uint64_t *p)
{
	return __atomic_load_n(p, __ATOMIC_RELAXED);
}

static void add(uint64_t *p, uint64_t v)
{
	__atomic_store_n(p, *p + v, __ATOMIC_RELAXED); /* single writer: the worker */
}

/* ---- messages ----------------------------------------------------------------------- */

static void format_ipv4(char *out, size_t cap, uint32_t a)
{
	snprintf(out, cap, "%u.%u.%u.%u", a >> 24, (a >> 16) & 255, (a >> 8) & 255, a & 255);
}

/*
 * The worker's text: lines of 76 printable characters + CRLF (never a
 * leading '.', so what mxsink hashes after unstuffing is exactly what was
 * hashed here), long enough for the largest body from any slot.
 */
static int text_init(struct worker *w)
{
	size_t len = (size_t)opt_size_max + (TEXT_SLOTS + 1) * TEXT_LINE;
	w->text = malloc(len);
	if (w->text == NULL)
		return -ENOMEM;
	static const char alphabet[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	uint64_t s = rnd(w);
	for (size_t i = 0; i < len; i++) {
		size_t col = i % TEXT_LINE;
		if (col >= TEXT_LINE - 2) {
			w->text[i] = col == TEXT_LINE - 2 ? '\r' : '\n';
			continue;
		}
		s = s * 6364136223846793005ull + 1442695040888963407ull;
		w->text[i] = (uint8_t)alphabet[s >> 58];
	}
	return 0;
}

/*
 * Body of `size` bytes: size - 2 bytes of the text from a random line start,
 * then CRLF (nothing for the client to add).  Should the text's part end on
 * the CR of a CRLF, it starts one byte later instead, so that the body holds
 * no bare CR.  The digest comes from the cache when the same (start, size)
 * was used before.  Returns the digest.
 */
static uint64_t make_body(struct gconn *g, size_t size)
{
	struct worker *w = g->w;
	size_t off = (size_t)(rnd(w) % TEXT_SLOTS) * TEXT_LINE;
	if (size < 2)
		size = 2;
	if (size >= 3 && w->text[off + size - 3] == '\r')
		off++;
	g->body = w->text + off;
	g->body_len = size;
	struct digest_entry *e = &w->dcache[(off * 31 + size) % DIGEST_CACHE];
	if (e->size != size || e->off != off) {
		struct mxb_digest d;
		mxb_digest_init(&d);
		mxb_digest_update(&d, g->body, size - 2);
		mxb_digest_update(&d, "\r\n", 2);
		e->size = (uint32_t)size;
		e->off = (uint32_t)off;
		e->digest = mxb_digest_final(&d);
		add(&w->digest_misses, 1);
	}
	return e->digest;
}

static long body_read(void *user, uint64_t off, uint8_t *buf, size_t len)
{
	struct gconn *g = user;
	const struct {
		const uint8_t *p;
		size_t n;
	} piece[3] = {
		{(const uint8_t *)g->hdr, g->hdr_len},
		{g->body, g->body_len - 2},
		{(const uint8_t *)"\r\n", 2},
	};
	uint64_t total = g->hdr_len + g->body_len;
	if (off >= total)
		return -EINVAL;
	size_t n = 0;
	uint64_t base = 0;
	for (unsigned i = 0; i < 3 && n < len; base += piece[i].n, i++) {
		if (off + n >= base + piece[i].n)
			continue;
		size_t from = (size_t)(off + n - base), k = piece[i].n - from;
		if (k > len - n)
			k = len - n;
		memcpy(buf + n, piece[i].p + from, k);
		if (i == 1 && from == 0 && g->corrupt && k > 0)
			buf[n] = buf[n] == 'A' ? 'B' : 'A'; /* another letter: still no '.' */
		n += k;
	}
	if (off + n == total)
		g->eod_us = mx_now_us();
	return (long)n;
}

/* Formatting without printf (a third of mxgen's per-message CPU went to snprintf). */
struct fmt {
	char *p, *end; /* end: the last byte, kept for the NUL */
	bool over;
};

static void put(struct fmt *f, const char *s, size_t n)
{
	if ((size_t)(f->end - f->p) < n) {
		f->over = true;
		n = (size_t)(f->end - f->p);
	}
	memcpy(f->p, s, n);
	f->p += n;
	*f->p = '\0';
}

static void put_s(struct fmt *f, const char *s)
{
	put(f, s, strlen(s));
}

static void put_u(struct fmt *f, uint64_t v)
{
	char d[MX_U64_DEC_MAX];
	put(f, d, mx_u64_dec(v, d));
}

static struct fmt fmt_on(char *buf, size_t cap)
{
	buf[0] = '\0';
	return (struct fmt){buf, buf + cap - 1, false};
}

static unsigned pick_domain(struct worker *w)
{
	if (opt_domains <= opt_big_domains || rnd(w) % 1000 < opt_big_share)
		return (unsigned)(rnd(w) % (opt_big_domains ? opt_big_domains : 1));
	return opt_big_domains + (unsigned)(rnd(w) % (opt_domains - opt_big_domains));
}

/* Build and submit the next message of g.  0 or -errno. */
static int submit(struct gconn *g)
{
	struct worker *w = g->w;
	size_t size = opt_size_min;
	if (opt_size_max > opt_size_min)
		size += (size_t)(rnd(w) % (opt_size_max - opt_size_min + 1));
	char hex[17];
	mxb_hex64(hex, make_body(g, size));
	uint64_t seq = w->index + (uint64_t)dp.n_workers * w->next_seq_k++;
	struct fmt f = fmt_on(g->sender, sizeof(g->sender));
	put_s(&f, "dev");
	put_u(&f, g->device);
	put_s(&f, "@fleet.test");
	for (unsigned i = 0; i < opt_rcpts; i++) {
		f = fmt_on(g->rcpt_addr[i], ADDR_MAX);
		put_s(&f, "ops");
		put_u(&f, i);
		if (opt_literal_share && rnd(w) % 1000 < opt_literal_share) {
			put_s(&f, "@[");
			put_s(&f, target_text);
			put_s(&f, "]");
		} else {
			put_s(&f, "@d");
			put_u(&f, pick_domain(w));
			put_s(&f, ".sink.test");
		}
		g->rcpt[i] = (struct smtp_client_rcpt){.addr = g->rcpt_addr[i]};
	}
	uint64_t now = mx_now_us();
	f = fmt_on(g->hdr, sizeof(g->hdr));
	put_s(&f, "From: <");
	put_s(&f, g->sender);
	put_s(&f, ">\r\nTo: <");
	put_s(&f, g->rcpt_addr[0]);
	put_s(&f, ">\r\nSubject: alert ");
	put_u(&f, seq);
	put_s(&f, " from device ");
	put_u(&f, g->device);
	put_s(&f, "\r\nX-Mxgen: ");
	put_u(&f, seq);
	put_s(&f, " ");
	put_s(&f, hex);
	put_s(&f, " ");
	put_u(&f, now);
	put_s(&f, "\r\n\r\n");
	if (f.over)
		return -ENAMETOOLONG;
	g->hdr_len = (size_t)(f.p - g->hdr);
	g->msg = (struct smtp_client_msg){
		.sender = g->sender,
		.rcpts = g->rcpt,
		.rcpt_count = opt_rcpts,
		.body_len = g->hdr_len + g->body_len,
		.body_read = body_read,
		.body_user = g,
		.user = (void *)(uintptr_t)now,
	};
	g->eod_us = 0;
	g->msg_active = true;
	g->msgs_left--;
	g->corrupt = opt_corrupt_pm && rnd(w) % 1000 < opt_corrupt_pm;
	if (g->corrupt)
		add(&w->corrupted, 1);
	add(&w->offered, 1);
	add(&w->bytes, g->msg.body_len);
	int rc = smtp_client_send_message(g->cl, &g->msg);
	if (rc != 0 && g->msg_active) {
		/* never reported: count it here so the totals add up */
		g->msg_active = false;
		add(&w->rejected, 1);
		add(&w->by_code[0], 1);
	}
	return rc;
}

/* ---- SMTP client callbacks ----------------------------------------------------------- */

static size_t c_send(void *user, const uint8_t *p, size_t n)
{
	struct gconn *g = user;
	if (g->tcp_gone)
		return 0;
	if (g->tls != NULL) {
		ssize_t k = tls_conn_write(g->tls, p, n);
		return k > 0 ? (size_t)k : 0;
	}
	ssize_t k = tcp_send(g->tcp, p, n);
	return k > 0 ? (size_t)k : 0;
}

static int tls_begin(struct gconn *g);

/* STARTTLS was answered 220: everything from here on is TLS (RFC 3207 4.2). */
static void c_starttls(void *user)
{
	struct gconn *g = user;
	if (tls_begin(g) != 0) {
		add(&g->w->tls_failed, 1);
		g->want_abort = true;
	}
}

static void c_message_done(void *user, const struct smtp_client_result *r)
{
	struct gconn *g = user;
	struct worker *w = g->w;
	uint64_t now = mx_now_us();
	if (g->aborting)
		return;
	g->msg_active = false;
	bool ok = r->rcpt_count > 0 && r->delivered == r->rcpt_count;
	if (ok) {
		add(&w->accepted, 1);
		if (g->eod_us)
			mxb_hist_add(&w->lat, now - g->eod_us);
		mxb_hist_add(&w->lat_total, now - (uint64_t)(uintptr_t)r->msg->user);
	} else {
		unsigned code = 0;
		for (size_t i = 0; i < r->rcpt_count; i++)
			if (r->rcpts[i].outcome != SMTP_CLIENT_DELIVERED) {
				code = r->rcpts[i].final.synthetic ? 0 : r->rcpts[i].final.code;
				break;
			}
		add(&w->rejected, 1);
		add(&w->by_code[code < 600 ? code : 0], 1);
	}
	g->want_next = true;
}

static void c_failed(void *user, const struct smtp_reply *why)
{
	struct gconn *g = user;
	(void)why;
	add(&g->w->conns_failed, 1);
	g->want_abort = true;
}

static void c_closed(void *user)
{
	((struct gconn *)user)->want_close = true;
}

static const struct smtp_client_cb client_cb = {
	.send = c_send,
	.starttls = c_starttls,
	.message_done = c_message_done,
	.failed = c_failed,
	.closed = c_closed,
};

/* ---- TLS ------------------------------------------------------------------------------ */

/*
 * The TLS callbacks run inside tls_conn_input/write/flush: they never close
 * the connection themselves (g would be freed under lib/tls) but set
 * want_abort, which after_client() acts on once the TLS call has returned.
 */
static size_t tls_cipher_out(void *user, const uint8_t *data, size_t len)
{
	struct gconn *g = user;
	if (g->tcp_gone)
		return len;
	ssize_t k = tcp_send(g->tcp, data, len);
	if (k < 0)
		return len; /* TCP is closing: nobody will read it */
	return (size_t)k;
}

static size_t tls_plain_in(void *user, const uint8_t *data, size_t len)
{
	struct gconn *g = user;
	smtp_client_input(g->cl, data, len);
	return len;
}

static void tls_done(void *user, const struct tls_handshake_info *info)
{
	struct gconn *g = user;
	add(info->resumed ? &g->w->tls_resumed : &g->w->tls_full, 1);
	if (opt_tls == GEN_TLS_IMPLICIT)
		smtp_client_start(g->cl, true);
	else
		smtp_client_tls_started(g->cl);
}

static void tls_error(void *user, const char *reason)
{
	struct gconn *g = user;
	(void)reason;
	add(&g->w->tls_failed, 1);
	g->want_abort = true;
}

static void tls_peer_closed(void *user)
{
	struct gconn *g = user;
	if (!smtp_client_is_dead(g->cl))
		smtp_client_abort(g->cl, "server sent close_notify");
	g->want_close = true;
}

static void tls_writable(void *user)
{
	struct gconn *g = user;
	smtp_client_writable(g->cl);
}

static const struct tls_conn_ops gen_tls_ops = {
	.on_ciphertext = tls_cipher_out,
	.on_plaintext = tls_plain_in,
	.on_handshake_done = tls_done,
	.on_error = tls_error,
	.on_peer_closed = tls_peer_closed,
	.on_writable = tls_writable,
};

/* Client side of TLS on g's connection: the ClientHello goes out now.  0 or -errno. */
static int tls_begin(struct gconn *g)
{
	struct tls_session_cache *cache = NULL;
	if (opt_tls_resume) {
		struct tls_session_cache **slot = &g->w->tcache[g->device];
		if (*slot == NULL && tls_session_cache_create(1, slot) != 0)
			return -ENOMEM;
		cache = *slot;
	}
	int rc = tls_client_conn_new(tls_ctx, TLS_POLICY_OPPORTUNISTIC, target_text, opt_port,
				     cache, &gen_tls_ops, g, &g->w->tstats, &g->tls);
	if (rc == 0)
		rc = tls_conn_start(g->tls);
	return rc;
}

/*
 * A cleared gconn: a spare one (the per-message part is rewritten by
 * submit) or a new one.  A spare keeps its SMTP client, dead, for
 * smtp_client_reuse: one connection per message would otherwise allocate
 * and fault in the client's buffers each time.
 */
static struct gconn *gconn_get(struct worker *w)
{
	struct gconn *g = w->spare;
	if (g == NULL)
		return calloc(1, sizeof(*g));
	w->spare = g->next;
	w->spare_count--;
	struct smtp_client *cl = g->cl;
	memset(g, 0, offsetof(struct gconn, sender));
	g->cl = cl;
	return g;
}

static void gconn_put(struct worker *w, struct gconn *g)
{
	g->next = w->spare;
	w->spare = g;
	w->spare_count++;
}

/* ---- TCP ------------------------------------------------------------------------------ */

/*
 * After every smtp_client_* call: what its callbacks asked for (a callback
 * never closes the connection or submits itself: the client is inside it).
 */
static void after_client(struct gconn *g)
{
	while (!g->tcp_gone) {
		if (g->want_abort) {
			g->want_abort = false;
			tcp_abort(g->tcp); /* on_closed runs now */
			return;
		}
		if (g->want_close) {
			g->want_close = false;
			if (g->tls != NULL)
				tls_conn_shutdown(g->tls); /* close_notify, then FIN */
			tcp_close(g->tcp);
			return;
		}
		if (!g->want_next)
			return;
		g->want_next = false;
		if (g->msgs_left > 0 && !g->w->draining && g->w->offered < g->w->max_offer &&
		    !smtp_client_is_dead(g->cl))
			submit(g);
		else
			smtp_client_quit(g->cl);
	}
}

static void t_connected(struct tcp_conn *c, void *user)
{
	(void)c;
	struct gconn *g = user;
	g->w->link_up = true;
	if (opt_tls == GEN_TLS_IMPLICIT) {
		/* the greeting comes once the handshake is done (tls_done) */
		if (tls_begin(g) != 0) {
			add(&g->w->tls_failed, 1);
			g->want_abort = true;
		}
	} else {
		smtp_client_start(g->cl, false);
	}
	after_client(g);
}

static size_t t_data(struct tcp_conn *c, void *user, const uint8_t *data, size_t len)
{
	(void)c;
	struct gconn *g = user;
	if (g->tls == NULL) {
		smtp_client_input(g->cl, data, len);
		after_client(g);
		return len;
	}
	ssize_t k = tls_conn_input(g->tls, data, len);
	if (k < 0)
		k = (ssize_t)len; /* TLS is dead (want_abort is set) or closed: discard */
	after_client(g);
	return (size_t)k;
}

static void t_writable(struct tcp_conn *c, void *user)
{
	(void)c;
	struct gconn *g = user;
	if (g->tls != NULL) {
		tls_conn_flush(g->tls);
		if (!g->tcp_gone && tls_conn_want_input(g->tls))
			tcp_recv_resume(g->tcp); /* input held while the output queue was full */
	}
	smtp_client_writable(g->cl);
	after_client(g);
}

static void t_peer_closed(struct tcp_conn *c, void *user)
{
	(void)c;
	struct gconn *g = user;
	/* Reports a message in flight (deferred); the connection is closed here, so
	 * whatever the callbacks asked for is moot. */
	if (!smtp_client_is_dead(g->cl))
		smtp_client_abort(g->cl, "server closed the connection");
	g->want_next = g->want_abort = g->want_close = false;
	tcp_close(g->tcp);
}

static void t_closed(struct tcp_conn *c, void *user, enum tcp_close_reason why)
{
	(void)c;
	(void)why;
	struct gconn *g = user;
	struct worker *w = g->w;
	g->tcp_gone = true;
	g->prev->next = g->next;
	g->next->prev = g->prev;
	/* Reports a message still in flight as deferred (message_done), and makes
	 * the client new again for the gconn's next connection. */
	smtp_client_reuse(g->cl, g);
	tls_conn_free(g->tls);
	w->in_flight--;
	add(&w->conns_done, 1);
	gconn_put(w, g); /* at most max_inflight: as many as were open at once */
}

static const struct tcp_conn_ops gen_ops = {
	.on_connected = t_connected,
	.on_data = t_data,
	.on_writable = t_writable,
	.on_peer_closed = t_peer_closed,
	.on_closed = t_closed,
};

/*
 * --device-ports: the next free port of g's device that steers to this
 * core; with one worker every port does.  A port whose last connection is
 * in TIME_WAIT here is taken over at once (lib/net picks an ISN above it).
 */
static struct tcp_conn *connect_device(struct worker *w, struct gconn *g)
{
	unsigned base = DEVICE_PORT_LO + g->device * opt_device_ports;
	unsigned cur = w->dport_next[g->device];
	for (unsigned k = 0; k < opt_device_ports; k++) {
		unsigned i = (cur + k) % opt_device_ports;
		uint16_t port = (uint16_t)(base + i);
		if (dp.n_workers > 1 && !udp_port_steers_here(w->st, port, opt_target, opt_port))
			continue;
		struct tcp_conn *c = tcp_connect(w->st, 0, port, opt_target, opt_port, &gen_ops, g);
		if (c != NULL || errno != EADDRINUSE) {
			w->dport_next[g->device] = (uint16_t)((i + 1) % opt_device_ports);
			return c;
		}
	}
	add(&w->device_ports_busy, 1);
	errno = EADDRINUSE;
	return NULL;
}

static int start_conn(struct worker *w)
{
	struct gconn *g = gconn_get(w);
	if (g == NULL)
		return -ENOMEM;
	g->w = w;
	g->device = (w->index + dp.n_workers * (unsigned)(w->conns_started)) % opt_devices;
	g->msgs_left = opt_msgs_per_conn;
	/* a spare's client was made new when its connection closed (t_closed) */
	if (g->cl == NULL && smtp_client_new(&cconf, &client_cb, g, &w->cstats, &g->cl) != 0) {
		gconn_put(w, g);
		return -ENOMEM;
	}
	g->tcp = opt_device_ports ? connect_device(w, g)
				  : tcp_connect(w->st, 0, 0, opt_target, opt_port, &gen_ops, g);
	if (g->tcp == NULL) {
		int e = errno;
		gconn_put(w, g); /* its client, never started, serves the next connection */
		add(&w->connect_errors, 1);
		return -e;
	}
	g->next = w->live.next;
	g->prev = &w->live;
	w->live.next->prev = g;
	w->live.next = g;
	w->in_flight++;
	add(&w->conns_started, 1);
	submit(g); /* sent once the session is ready */
	after_client(g);
	return 0;
}

/* Client timeouts (every 100 ms), and the end of the drain: abort the rest. */
static void scan_conns(struct worker *w, uint64_t now, bool abort_all)
{
	struct gconn *next;
	for (struct gconn *g = w->live.next; g != &w->live; g = next) {
		next = g->next;
		if (abort_all) {
			if (g->msg_active) {
				/* counted as unfinished, not as a rejection */
				g->msg_active = false;
				add(&w->unfinished, 1);
			}
			g->aborting = true; /* on_closed frees; reports are ignored */
			tcp_abort(g->tcp);
			continue;
		}
		if (now >= smtp_client_deadline(g->cl)) {
			smtp_client_timeout(g->cl);
			after_client(g);
		}
	}
}

/* ---- DNS check (--dns-check) -------------------------------------------------------- */

/*
 * Query k asks, by k % 3: MX of dD.sink.test (expect MX 10 mx.dD.sink.test
 * with its A record = the target in the additional section), A of
 * mx.dD.sink.test (expect the target), MX of nxK.example (expect NXDOMAIN).
 * The DNS id is k; each answer is checked once.
 */
static uint8_t dns_answered[DNS_CHECK_MAX];
static struct dns_msg dns_reply;

static void dns_check_name(unsigned k, char *out, size_t cap, uint16_t *qtype)
{
	unsigned d = k % opt_domains;
	switch (k % 3) {
	case 0:
		snprintf(out, cap, "d%u.sink.test", d);
		*qtype = DNS_T_MX;
		break;
	case 1:
		snprintf(out, cap, "mx.d%u.sink.test", d);
		*qtype = DNS_T_A;
		break;
	default:
		snprintf(out, cap, "nx%u.example", k);
		*qtype = DNS_T_MX;
	}
}

static bool dns_check_answer(unsigned k, const struct dns_msg *m)
{
	char name[DNS_NAME_TEXT_MAX], mx[DNS_NAME_TEXT_MAX + 4];
	uint16_t qtype;
	dns_check_name(k, name, sizeof(name), &qtype);
	if (!dns_name_equal(m->qname, name) || m->qtype != qtype)
		return false;
	unsigned na, nadd;
	const struct dns_rr *an = dns_msg_section(m, DNS_SEC_ANSWER, &na);
	const struct dns_rr *ad = dns_msg_section(m, DNS_SEC_ADDITIONAL, &nadd);
	switch (k % 3) {
	case 0:
		snprintf(mx, sizeof(mx), "mx.%s", name);
		return DNS_F_RCODE(m->flags) == DNS_RCODE_NOERROR && na == 1 &&
		       an[0].type == DNS_T_MX && an[0].mx.pref == 10 &&
		       dns_name_equal(an[0].mx.host, mx) && nadd >= 1 && ad[0].type == DNS_T_A &&
		       dns_name_equal(ad[0].name, mx) && ad[0].a == opt_target;
	case 1:
		return DNS_F_RCODE(m->flags) == DNS_RCODE_NOERROR && na == 1 &&
		       an[0].type == DNS_T_A && an[0].a == opt_target;
	default:
		return DNS_F_RCODE(m->flags) == DNS_RCODE_NXDOMAIN && na == 0;
	}
}

static void dns_check_recv(void *ctx, uint32_t src, uint16_t sport, uint32_t dst, uint16_t dport,
			   const uint8_t *data, size_t len)
{
	struct worker *w = ctx;
	(void)dst;
	(void)dport;
	enum dns_malformed why;
	if (src != opt_target || sport != 53 || dns_msg_parse(&dns_reply, data, len, &why) != 0 ||
	    dns_reply.id >= w->dns_sent || dns_answered[dns_reply.id]) {
		add(&w->dns_bad, 1);
		return;
	}
	dns_answered[dns_reply.id] = 1;
	add(dns_check_answer(dns_reply.id, &dns_reply) ? &w->dns_ok : &w->dns_bad, 1);
}

static void dns_check_send(struct worker *w)
{
	char name[DNS_NAME_TEXT_MAX];
	uint16_t qtype;
	uint8_t buf[512];
	unsigned k = (unsigned)w->dns_sent;
	dns_check_name(k, name, sizeof(name), &qtype);
	int n = dns_encode_query(buf, sizeof(buf), (uint16_t)k, name, qtype, false);
	if (n > 0 && udp_send(w->st, 0, DNS_CHECK_PORT, opt_target, 53, buf, (size_t)n) == 0)
		add(&w->dns_sent, 1);
	else
		add(&w->dns_bad, 1), add(&w->dns_sent, 1);
}

/*
 * --prewarm: spare gconns with their clients, written whole (calloc may
 * leave fresh pages untouched), and lib/net's caches, before the schedule
 * starts.  The clients count in cstats.sessions: taken off again.
 */
#define PREWARM_RING_TOUCH 8192

static void prewarm(struct worker *w)
{
	unsigned n = opt_prewarm < opt_max_inflight ? opt_prewarm : opt_max_inflight;
	/* a closed loop never holds more than its share of --concurrency */
	unsigned conc = opt_concurrency / dp.n_workers + 1;
	if (opt_rate <= 0 && n > conc)
		n = conc;
	uint64_t sessions = w->cstats.sessions;
	while (w->spare_count < n) {
		struct gconn *g = mx_malloc_written(sizeof(*g));
		if (g == NULL)
			break;
		if (smtp_client_new(&cconf, &client_cb, g, &w->cstats, &g->cl) != 0) {
			free(g);
			break;
		}
		gconn_put(w, g);
	}
	w->cstats.sessions = sessions;
	if (n > 0 && tcp_prewarm(w->st, n, PREWARM_RING_TOUCH) < 0)
		fprintf(stderr, "mxgen: worker %u: prewarm: out of memory\n", w->index);
}

/* Worker i starts on st (mxgen.h): the DNS check's bind, the schedule.  0 always. */
int mxgen_role_open(unsigned i, struct net_stack *st)
{
	struct worker *w = &workers[i];
	w->st = st;
	prewarm(w);
	w->dns_check = w->index == 0 && opt_dns_check > 0;
	if (w->dns_check && udp_bind(w->st, DNS_CHECK_PORT, dns_check_recv, w) != 0) {
		fprintf(stderr, "mxgen: cannot bind UDP %u\n", DNS_CHECK_PORT);
		w->dns_check = false;
	}
	/* let the ARP exchange settle; with --start-on-signal the schedule is set once the
	 * gate opens (mxgen_role_turn) */
	w->start = opt_start_on_signal ? UINT64_MAX : mx_now_us() + opt_start_delay_ms * 1000ull;
	w->load_start = w->start;
	w->next_dns = w->next_arrival = w->last_scan = w->start;
	w->interval = opt_rate > 0 ? 1e6 * dp.n_workers / opt_rate : 0;
	w->conc = opt_concurrency / dp.n_workers + (w->index < opt_concurrency % dp.n_workers);
	return 0;
}

/*
 * mxgen's part of one loop turn of worker i, after net_stack_poll (mxgen.h):
 * arrivals, the DNS check, timeouts, the drain.  Returns the work done;
 * *max_sleep_us: the longest nap that keeps arrivals on schedule.  Once the
 * drain is over it aborts what is left and sets the worker's done flag
 * (mxgen_role_done); later turns do nothing.
 */
unsigned mxgen_role_turn(unsigned i, uint64_t now, uint64_t *max_sleep_us)
{
	struct worker *w = &workers[i];
	unsigned n = 0;
	*max_sleep_us = w->interval > 0 && w->interval < 10000 ? (uint64_t)w->interval : 10000;
	if (w->done)
		return 0;
	if (w->start == UINT64_MAX) {
		if (!start_gate)
			return 0;
		w->start = now + opt_start_delay_ms * 1000ull;
		w->load_start = w->start;
		w->next_dns = w->next_arrival = w->last_scan = w->start;
	}
	bool no_more = stop || drain_all || w->offered >= w->max_offer;
	if (no_more && !w->draining) {
		w->draining = true;
		w->load_end = now;
		w->drain_end = now + opt_drain * 1000000ull;
	}
	if (!w->draining && now >= w->start) {
		if (w->interval > 0) {
			/* open loop: arrivals on schedule, at most 64 per turn */
			for (unsigned k = 0; k < 64 && now >= w->next_arrival; k++) {
				/* a generator that falls behind its schedule is no longer
				 * an open loop: say so (late_starts, max_lag_us) */
				uint64_t lag = now - w->next_arrival;
				if (lag > 1000)
					add(&w->late_starts, 1);
				if (lag > w->max_lag_us)
					w->max_lag_us = lag;
				w->next_arrival =
					w->start + (uint64_t)(w->interval * ++w->arrivals_k);
				if (w->in_flight >= opt_max_inflight ||
				    w->offered >= w->max_offer) {
					add(&w->arrivals_dropped, 1);
					continue;
				}
				start_conn(w);
				n++;
			}
		} else {
			/* closed loop: keep conc connections open */
			for (unsigned k = 0; k < 64 && w->in_flight < w->conc &&
					     w->offered + w->in_flight < w->max_offer;
			     k++) {
				if (start_conn(w) != 0)
					break;
				n++;
			}
		}
	}
	/*
	 * Once the target's address is resolved (lib/net drops what waits for ARP,
	 * and nothing retransmits a query here), one every 2 ms: the sink answers
	 * each at once.
	 */
	if (w->dns_check && w->link_up && w->dns_sent < opt_dns_check && now >= w->next_dns) {
		dns_check_send(w);
		w->next_dns = now + 2000;
		n++;
	}
	if (now - w->last_scan >= 100000) {
		scan_conns(w, now, false);
		w->last_scan = now;
	}
	if (w->draining && (w->in_flight == 0 || now >= w->drain_end)) {
		scan_conns(w, now, true);
		__atomic_store_n(&w->done, true, __ATOMIC_RELEASE);
	}
	return n;
}

/* ---- reporting -------------------------------------------------------------------------- */

/* lib/net's view, for telling a dead link from a slow peer (after the workers stopped). */
static void json_net(FILE *f)
{
	struct net_stack *stacks[MAX_WORKERS];
	for (unsigned i = 0; i < dp.n_workers; i++)
		stacks[i] = workers[i].st;
	bench_json_net(f, stacks, dp.n_workers);
}

struct totals {
	uint64_t conns_started, conns_done, connect_errors, arrivals_dropped, conns_failed;
	uint64_t offered, accepted, rejected, unfinished, bytes;
	uint64_t dns_sent, dns_ok, dns_bad, late_starts, max_lag_us;
	uint64_t tls_full, tls_resumed, tls_failed;
	uint64_t device_ports_busy, digest_misses, busy_us, corrupted;
	uint64_t pipelined_flights; /* lib/smtp's client: MAIL..DATA in one write */
	unsigned in_flight;
};

static void sum(struct totals *t)
{
	memset(t, 0, sizeof(*t));
	for (unsigned i = 0; i < dp.n_workers; i++) {
		struct worker *w = &workers[i];
		t->conns_started += rd(&w->conns_started), t->conns_done += rd(&w->conns_done);
		t->connect_errors += rd(&w->connect_errors);
		t->arrivals_dropped += rd(&w->arrivals_dropped);
		t->conns_failed += rd(&w->conns_failed);
		t->offered += rd(&w->offered), t->accepted += rd(&w->accepted);
		t->rejected += rd(&w->rejected), t->unfinished += rd(&w->unfinished);
		t->bytes += rd(&w->bytes);
		t->dns_sent += rd(&w->dns_sent), t->dns_ok += rd(&w->dns_ok);
		t->dns_bad += rd(&w->dns_bad);
		t->late_starts += rd(&w->late_starts);
		t->tls_full += rd(&w->tls_full), t->tls_resumed += rd(&w->tls_resumed);
		t->tls_failed += rd(&w->tls_failed);
		t->device_ports_busy += rd(&w->device_ports_busy);
		t->digest_misses += rd(&w->digest_misses);
		t->corrupted += rd(&w->corrupted);
		t->busy_us += rd(&w->busy_us);
		t->pipelined_flights += rd(&w->cstats.pipelined_flights);
		if (w->max_lag_us > t->max_lag_us)
			t->max_lag_us = w->max_lag_us;
	}
	t->in_flight = (unsigned)(t->conns_started - t->conns_done);
}

static uint64_t mon_start, mon_last_print, mon_last_acc; /* mxgen_role_tick */
static struct mxb_hist snap_prev, snap_now, snap_delta;

static void json_hist(FILE *f, const char *name, const struct mxb_hist *h, bool last)
{
	fprintf(f,
		"  \"%s\": {\"count\": %" PRIu64 ", \"mean\": %.1f, \"p50\": %" PRIu64
		", \"p90\": %" PRIu64 ", \"p99\": %" PRIu64 ", \"p999\": %" PRIu64
		", \"max\": %" PRIu64 "}%s\n",
		name, h->count, h->count ? (double)h->sum / (double)h->count : 0.0,
		mxb_hist_quantile(h, 0.5), mxb_hist_quantile(h, 0.9), mxb_hist_quantile(h, 0.99),
		mxb_hist_quantile(h, 0.999), h->max, last ? "" : ",");
}

static void write_json(FILE *f, double secs, const struct totals *t, const struct mxb_hist *lat,
		       const struct mxb_hist *tot)
{
	fprintf(f,
		"{\n  \"tool\": \"mxgen\",\n  \"mode\": \"%s\",\n  \"rate\": %.1f,\n"
		"  \"concurrency\": %u,\n  \"seconds\": %.3f,\n  \"devices\": %u,\n"
		"  \"msgs_per_conn\": %u,\n  \"size_min\": %u,\n  \"size_max\": %u,\n"
		"  \"rcpts\": %u,\n  \"connections\": %" PRIu64 ",\n  \"connect_errors\": %" PRIu64
		",\n  \"arrivals_dropped\": %" PRIu64 ",\n  \"sessions_failed\": %" PRIu64
		",\n  \"offered\": %" PRIu64 ",\n  \"accepted\": %" PRIu64
		",\n  \"rejected\": %" PRIu64 ",\n  \"unfinished\": %" PRIu64
		",\n  \"bytes\": %" PRIu64
		",\n  \"accepted_per_s\": %.1f,\n  \"connections_per_s\": %.1f,\n",
		opt_rate > 0 ? "open" : "closed", opt_rate, opt_concurrency, secs, opt_devices,
		opt_msgs_per_conn, opt_size_min, opt_size_max, opt_rcpts, t->conns_started,
		t->connect_errors, t->arrivals_dropped, t->conns_failed, t->offered, t->accepted,
		t->rejected, t->unfinished, t->bytes, secs > 0 ? (double)t->accepted / secs : 0.0,
		secs > 0 ? (double)t->conns_started / secs : 0.0);
	fprintf(f, "  \"late_starts\": %" PRIu64 ",\n  \"max_schedule_lag_us\": %" PRIu64 ",\n",
		t->late_starts, t->max_lag_us);
	fprintf(f,
		"  \"device_ports\": %u,\n  \"device_ports_busy\": %" PRIu64
		",\n  \"digests_computed\": %" PRIu64 ",\n  \"corrupted\": %" PRIu64
		",\n  \"busy_us\": %" PRIu64 ",\n  \"busy_us_per_msg\": %.2f,\n",
		opt_device_ports, t->device_ports_busy, t->digest_misses, t->corrupted, t->busy_us,
		t->offered ? (double)t->busy_us / (double)t->offered : 0.0);
	fprintf(f,
		"  \"dns_queries\": %" PRIu64 ",\n  \"dns_ok\": %" PRIu64
		",\n  \"dns_bad\": %" PRIu64 ",\n",
		t->dns_sent, t->dns_ok, t->dns_bad);
	fprintf(f,
		"  \"tls\": \"%s\",\n  \"tls_resume\": %s,\n  \"tls_handshakes_full\": %" PRIu64
		",\n  \"tls_handshakes_resumed\": %" PRIu64 ",\n  \"tls_failures\": %" PRIu64 ",\n",
		opt_tls == GEN_TLS_STARTTLS   ? "starttls"
		: opt_tls == GEN_TLS_IMPLICIT ? "implicit"
					      : "none",
		opt_tls_resume ? "true" : "false", t->tls_full, t->tls_resumed, t->tls_failed);
	fprintf(f, "  \"pipelining\": %s,\n  \"pipelined_flights\": %" PRIu64 ",\n",
		opt_no_pipelining ? "false" : "true", t->pipelined_flights);
	json_net(f);
	fprintf(f, "  \"rejected_by_code\": {");
	bool first = true;
	for (unsigned code = 0; code < 600; code++) {
		uint64_t v = 0;
		for (unsigned i = 0; i < dp.n_workers; i++)
			v += workers[i].by_code[code];
		if (v) {
			fprintf(f, "%s\"%u\": %" PRIu64, first ? "" : ", ", code, v);
			first = false;
		}
	}
	fprintf(f, "},\n");
	json_hist(f, "accept_latency_us", lat, false);
	json_hist(f, "message_latency_us", tot, true);
	fprintf(f, "}\n");
}

static void usage(void)
{
	fprintf(stderr,
		"usage: mxgen --config FILE --target A.B.C.D[:PORT] (--rate R | --concurrency C)\n"
		"             [--duration SEC] [--max-messages N] [--drain SEC] [--devices N]\n"
		"             [--msgs-per-conn M] [--size B|MIN-MAX] [--rcpts R] [--domains N]\n"
		"             [--big-domains K] [--big-share PERMILLE] [--literal-share PERMILLE]\n"
		"             [--max-inflight N] [--prewarm N] [--dns-check N] [--json FILE]\n"
		"             [--quiet] [--tls starttls|implicit|none] [--tls-resume]\n"
		"             [--auth USER:PASS]"
		" [--device-ports K] [--corrupt PERMILLE] [--start-delay MS]\n"
		"             [--start-on-signal] [--no-pipelining]\n");
}

static int num(const char *s, uint64_t min, uint64_t max, unsigned *out)
{
	uint64_t v;
	if (cfg_parse_u64(s, min, max, &v) != 0) {
		fprintf(stderr, "mxgen: bad number '%s' (%" PRIu64 "..%" PRIu64 ")\n", s, min, max);
		return -1;
	}
	*out = (unsigned)v;
	return 0;
}

/*
 * Options, the SMTP client's configuration and the TLS context (mxgen.h).
 * The config file's name goes to *config (NULL if none was given).  0, or
 * the exit status for a bad command line (2).
 */
int mxgen_role_setup(int argc, char **argv, const char **config_out)
{
	static const struct option opts[] = {
		{"config", required_argument, NULL, 'c'},
		{"target", required_argument, NULL, 'T'},
		{"rate", required_argument, NULL, 'r'},
		{"concurrency", required_argument, NULL, 'C'},
		{"duration", required_argument, NULL, 't'},
		{"drain", required_argument, NULL, 'D'},
		{"max-messages", required_argument, NULL, 'm'},
		{"devices", required_argument, NULL, 'n'},
		{"msgs-per-conn", required_argument, NULL, 'M'},
		{"size", required_argument, NULL, 's'},
		{"rcpts", required_argument, NULL, 'R'},
		{"domains", required_argument, NULL, 'd'},
		{"big-domains", required_argument, NULL, 'b'},
		{"big-share", required_argument, NULL, 'B'},
		{"literal-share", required_argument, NULL, 'L'},
		{"max-inflight", required_argument, NULL, 'I'},
		{"prewarm", required_argument, NULL, 'W'},
		{"json", required_argument, NULL, 'j'},
		{"quiet", no_argument, NULL, 'Q'},
		{"dns-check", required_argument, NULL, 'N'},
		{"tls", required_argument, NULL, 'S'},
		{"tls-resume", no_argument, NULL, 'U'},
		{"auth", required_argument, NULL, 'A'},
		{"device-ports", required_argument, NULL, 'P'},
		{"corrupt", required_argument, NULL, 'X'},
		{"start-delay", required_argument, NULL, 'Y'},
		{"start-on-signal", no_argument, NULL, 'Z'},
		{"no-pipelining", no_argument, NULL, 'p'},
		{NULL, 0, NULL, 0},
	};
	const char *config = NULL;
	optind = 0; /* a fresh getopt: mxload parses two command lines */
	int opt, bad = 0;
	while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (opt) {
		case 'c':
			config = optarg;
			break;
		case 'j':
			opt_json = optarg;
			break;
		case 'Q':
			opt_quiet = true;
			break;
		case 'T': {
			char host[32];
			const char *colon = strchr(optarg, ':');
			size_t hl = colon ? (size_t)(colon - optarg) : strlen(optarg);
			unsigned port = 25;
			if (hl >= sizeof(host)) {
				bad = 1;
				break;
			}
			memcpy(host, optarg, hl);
			host[hl] = '\0';
			if (cfg_parse_ipv4(host, &opt_target) != 0 ||
			    (colon && num(colon + 1, 1, 65535, &port) != 0)) {
				fprintf(stderr, "mxgen: bad --target '%s'\n", optarg);
				bad = 1;
			}
			opt_port = (uint16_t)port;
			opt_port_given = colon != NULL;
			break;
		}
		case 'r': {
			char *end;
			opt_rate = strtod(optarg, &end);
			if (*end || !(opt_rate > 0 && opt_rate <= 1e8)) {
				fprintf(stderr, "mxgen: bad --rate '%s'\n", optarg);
				bad = 1;
			}
			break;
		}
		case 'C':
			bad |= num(optarg, 1, 1000000, &opt_concurrency);
			break;
		case 't':
			bad |= num(optarg, 1, 86400, &opt_duration);
			break;
		case 'D':
			bad |= num(optarg, 0, 3600, &opt_drain);
			break;
		case 'm': {
			uint64_t v;
			if (cfg_parse_u64(optarg, 1, UINT64_MAX / 2, &v) != 0)
				bad = 1;
			opt_max_messages = v;
			break;
		}
		case 'n':
			bad |= num(optarg, 1, 100000000, &opt_devices);
			break;
		case 'M':
			bad |= num(optarg, 1, 1000000, &opt_msgs_per_conn);
			break;
		case 's': {
			const char *dash = strchr(optarg, '-');
			if (dash) {
				char lo[24];
				size_t l = (size_t)(dash - optarg);
				if (l >= sizeof(lo)) {
					bad = 1;
					break;
				}
				memcpy(lo, optarg, l);
				lo[l] = '\0';
				bad |= num(lo, 2, MAX_SIZE, &opt_size_min);
				bad |= num(dash + 1, 2, MAX_SIZE, &opt_size_max);
			} else {
				bad |= num(optarg, 2, MAX_SIZE, &opt_size_min);
				opt_size_max = opt_size_min;
			}
			if (opt_size_max < opt_size_min)
				bad = 1;
			break;
		}
		case 'R':
			bad |= num(optarg, 1, MAX_RCPTS, &opt_rcpts);
			break;
		case 'd':
			bad |= num(optarg, 1, 100000000, &opt_domains);
			break;
		case 'b':
			bad |= num(optarg, 0, 100000000, &opt_big_domains);
			break;
		case 'B':
			bad |= num(optarg, 0, 1000, &opt_big_share);
			break;
		case 'L':
			bad |= num(optarg, 0, 1000, &opt_literal_share);
			break;
		case 'I':
			bad |= num(optarg, 1, 1000000, &opt_max_inflight);
			break;
		case 'W':
			bad |= num(optarg, 0, 1000000, &opt_prewarm);
			break;
		case 'N':
			bad |= num(optarg, 0, DNS_CHECK_MAX, &opt_dns_check);
			break;
		case 'S':
			if (strcmp(optarg, "starttls") == 0) {
				opt_tls = GEN_TLS_STARTTLS;
			} else if (strcmp(optarg, "implicit") == 0) {
				opt_tls = GEN_TLS_IMPLICIT;
			} else if (strcmp(optarg, "none") == 0) {
				opt_tls = GEN_TLS_NONE;
			} else {
				fprintf(stderr, "mxgen: --tls starttls|implicit|none\n");
				bad = 1;
			}
			break;
		case 'U':
			opt_tls_resume = true;
			break;
		case 'Y':
			bad |= num(optarg, 0, 600000, &opt_start_delay_ms);
			break;
		case 'Z':
			opt_start_on_signal = true;
			break;
		case 'p':
			opt_no_pipelining = true;
			break;
		case 'X':
			bad |= num(optarg, 0, 1000, &opt_corrupt_pm);
			break;
		case 'P':
			bad |= num(optarg, 1, 65535 - DEVICE_PORT_LO, &opt_device_ports);
			break;
		case 'A': {
			const char *colon = strchr(optarg, ':');
			size_t ul = colon ? (size_t)(colon - optarg) : 0;
			if (ul == 0 || ul >= sizeof(opt_auth_user) || colon[1] == '\0' ||
			    strlen(colon + 1) >= sizeof(opt_auth_pass)) {
				fprintf(stderr, "mxgen: --auth USER:PASS (each under 128 bytes)\n");
				bad = 1;
				break;
			}
			memcpy(opt_auth_user, optarg, ul);
			opt_auth_user[ul] = '\0';
			snprintf(opt_auth_pass, sizeof(opt_auth_pass), "%s", colon + 1);
			break;
		}
		default:
			bad = 1;
		}
	}
	*config_out = config;
	if (bad || opt_target == 0 || optind != argc || (opt_rate > 0) == (opt_concurrency > 0)) {
		usage();
		return 2;
	}
	if (opt_big_domains > opt_domains)
		opt_big_domains = opt_domains;
	if (opt_tls == GEN_TLS_IMPLICIT && !opt_port_given)
		opt_port = 465;
	if ((opt_tls_resume || opt_auth_user[0]) && opt_tls == GEN_TLS_NONE) {
		fprintf(stderr, "mxgen: --tls-resume and --auth need --tls\n");
		return 2;
	}
	if (opt_tls_resume && opt_devices > TLS_RESUME_MAX_DEVICES) {
		fprintf(stderr, "mxgen: --tls-resume: at most %u --devices\n",
			TLS_RESUME_MAX_DEVICES);
		return 2;
	}
	if (opt_device_ports && (uint64_t)opt_devices * opt_device_ports > 65536 - DEVICE_PORT_LO) {
		fprintf(stderr, "mxgen: --devices x --device-ports must fit in ports %u..65535\n",
			DEVICE_PORT_LO);
		return 2;
	}
	format_ipv4(target_text, sizeof(target_text), opt_target);

	smtp_client_conf_defaults(&cconf);
	cconf.helo_name = "device.fleet.test";
	cconf.no_pipelining = opt_no_pipelining;
	/* implicit TLS: the session starts inside TLS, no STARTTLS to ask for */
	cconf.tls = opt_tls == GEN_TLS_STARTTLS ? SMTP_CLIENT_TLS_REQUIRED : SMTP_CLIENT_TLS_NONE;
	if (opt_auth_user[0]) {
		cconf.auth_user = opt_auth_user;
		cconf.auth_pass = opt_auth_pass;
	}
	cconf.timeout_greeting_us = cconf.timeout_helo_us = cconf.timeout_mail_us =
		cconf.timeout_rcpt_us = cconf.timeout_data_init_us = cconf.timeout_data_xfer_us =
			cconf.timeout_data_done_us = cconf.timeout_quit_us = 30000000;
	char err[512];
	if (smtp_client_conf_check(&cconf, err, sizeof(err)) != 0) {
		fprintf(stderr, "mxgen: smtp client: %s\n", err);
		return 2;
	}

	if (opt_tls != GEN_TLS_NONE) {
		struct tls_client_conf tc = {0};
		if (tls_client_ctx_create(&tc, &tls_ctx, err, sizeof(err)) != 0) {
			fprintf(stderr, "mxgen: TLS: %s\n", err);
			return 2;
		}
	}

	return 0;
}

/*
 * mxgen runs on d's workers (mxgen.h): per-worker state (message text, TLS
 * session caches, device ports).  0, or 1 when out of memory.
 */
int mxgen_role_attach(const struct net_dataplane *d)
{
	dp = *d;
	for (unsigned i = 0; i < dp.n_workers; i++) {
		struct worker *w = &workers[i];
		w->index = i;
		w->max_offer = opt_max_messages ? opt_max_messages / dp.n_workers +
							  (i < opt_max_messages % dp.n_workers)
						: UINT64_MAX;
		w->live.next = w->live.prev = &w->live;
		mxb_hist_init(&w->lat);
		mxb_hist_init(&w->lat_total);
		w->rng = 0x9e3779b97f4a7c15ull * (i + 1) ^ mx_now_us();
		if (opt_tls_resume) {
			w->tcache = calloc(opt_devices, sizeof(*w->tcache));
			if (w->tcache == NULL) {
				fprintf(stderr, "mxgen: no memory for the TLS session cache\n");
				return 1;
			}
		}
		if (opt_device_ports)
			w->dport_next = calloc(opt_devices, sizeof(*w->dport_next));
		if (text_init(w) != 0 || (opt_device_ports && w->dport_next == NULL)) {
			fprintf(stderr, "mxgen: no memory for the message text\n");
			return 1;
		}
	}
	fprintf(stderr, "mxgen: %u worker(s), %s loop, port 0 steering %s\n", dp.n_workers,
		opt_rate > 0 ? "open" : "closed", net_port_steering(dp.ports[0]));
	mon_start = mon_last_print = mx_now_us();
	mon_last_acc = 0;
	mxb_hist_init(&snap_prev);
	return 0;
}

/*
 * The main thread's part, every ~20 ms (mxgen.h): the end of the load
 * (--duration) and the progress line once a second.  True once every
 * worker is done.
 */
bool mxgen_role_tick(uint64_t now)
{
	uint64_t start = __atomic_load_n(&workers[0].start, __ATOMIC_RELAXED);
	if (start != UINT64_MAX) {
		start -= opt_start_delay_ms * 1000ull; /* the start, before the ARP settling */
		if (now >= start && now - start >= opt_duration * 1000000ull)
			drain_all = true;
	}
	bool running = false;
	for (unsigned i = 0; i < dp.n_workers; i++)
		if (!__atomic_load_n(&workers[i].done, __ATOMIC_ACQUIRE))
			running = true;
	if (!running)
		return true;
	if (now - mon_last_print >= 1000000) {
		struct totals t;
		sum(&t);
		if (!opt_quiet) {
			/* The progress line's p99 is over the last second: this snapshot minus
			 * the previous one (the workers' buckets are read while they write: a
			 * live view, not the result). */
			mxb_hist_init(&snap_now);
			for (unsigned i = 0; i < dp.n_workers; i++)
				mxb_hist_merge(&snap_now, &workers[i].lat);
			snap_delta = snap_now;
			mxb_hist_sub(&snap_delta, &snap_prev);
			snap_prev = snap_now;
			printf("mxgen %6.1fs acc/s %8.0f offered %" PRIu64 " accepted %" PRIu64
			       " rejected %" PRIu64 " in-flight %u conn-err %" PRIu64
			       " dropped %" PRIu64 " p99 %" PRIu64 "us tls %" PRIu64 "/%" PRIu64
			       " mono_ms %" PRIu64 "\n",
			       (double)(now - mon_start) / 1e6,
			       (double)(t.accepted - mon_last_acc) * 1e6 /
				       (double)(now - mon_last_print),
			       t.offered, t.accepted, t.rejected, t.in_flight, t.connect_errors,
			       t.arrivals_dropped, mxb_hist_quantile(&snap_delta, 0.99), t.tls_full,
			       t.tls_resumed, now / 1000);
			fflush(stdout);
		}
		mon_last_print = now;
		mon_last_acc = t.accepted;
	}
	return false;
}

/* After every worker is done (mxgen.h): the summary line, the JSON file; frees.  0 or 1. */
int mxgen_role_finish(void)
{
	/* Rates are over the load phase: first arrival to the start of the drain. */
	uint64_t l0 = UINT64_MAX, l1 = 0;
	for (unsigned i = 0; i < dp.n_workers; i++) {
		if (workers[i].load_start < l0)
			l0 = workers[i].load_start;
		if (workers[i].load_end > l1)
			l1 = workers[i].load_end;
	}
	double secs = l1 > l0 ? (double)(l1 - l0) / 1e6 : (double)opt_duration;
	struct totals t;
	sum(&t);
	static struct mxb_hist lat, tot;
	mxb_hist_init(&lat);
	mxb_hist_init(&tot);
	for (unsigned i = 0; i < dp.n_workers; i++) {
		mxb_hist_merge(&lat, &workers[i].lat);
		mxb_hist_merge(&tot, &workers[i].lat_total);
	}
	printf("mxgen summary: offered %" PRIu64 " accepted %" PRIu64 " rejected %" PRIu64
	       " unfinished %" PRIu64 " conns/s %.1f accepted/s %.1f accept latency p50 %" PRIu64
	       " p90 %" PRIu64 " p99 %" PRIu64 " p99.9 %" PRIu64 " max %" PRIu64 " us\n",
	       t.offered, t.accepted, t.rejected, t.unfinished, (double)t.conns_started / secs,
	       (double)t.accepted / secs, mxb_hist_quantile(&lat, 0.5),
	       mxb_hist_quantile(&lat, 0.9), mxb_hist_quantile(&lat, 0.99),
	       mxb_hist_quantile(&lat, 0.999), lat.max);
	int rc = 0;
	if (opt_json) {
		FILE *f = fopen(opt_json, "w");
		if (f == NULL) {
			fprintf(stderr, "mxgen: %s: %s\n", opt_json, strerror(errno));
			rc = 1;
		} else {
			write_json(f, secs, &t, &lat, &tot);
			fclose(f);
		}
	}
	for (unsigned i = 0; opt_tls_resume && i < dp.n_workers; i++) {
		for (unsigned d = 0; d < opt_devices; d++)
			tls_session_cache_free(workers[i].tcache[d]);
		free(workers[i].tcache);
	}
	for (unsigned i = 0; i < dp.n_workers; i++) {
		struct worker *w = &workers[i];
		while (w->spare != NULL) {
			struct gconn *g = w->spare;
			w->spare = g->next;
			smtp_client_free(g->cl);
			free(g);
		}
		free(w->text);
		free(w->dport_next);
	}
	tls_client_ctx_free(tls_ctx);
	for (unsigned i = 0; i < dp.n_workers; i++) {
		workers[i].tcache = NULL;
		workers[i].text = NULL;
		workers[i].dport_next = NULL;
	}
	tls_ctx = NULL;
	return rc;
}

#ifndef MXB_ROLE_ONLY
static void on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

static void on_usr1(int sig)
{
	(void)sig;
	mxgen_role_go();
}

/* The standalone worker: its own stack, the role's turns, idle back-off. */
static int worker_main(void *arg)
{
	struct worker *w = arg;
	struct net_stack_conf sc;
	net_dataplane_stack_conf(&dp, w->index, &sc);
	struct net_stack *st = net_stack_create(&sc);
	if (st == NULL) {
		fprintf(stderr, "mxgen: worker %u: stack: %s\n", w->index, strerror(errno));
		stop = 1;
		__atomic_store_n(&w->done, true, __ATOMIC_RELEASE);
		return -1;
	}
	mxgen_role_open(w->index, st);
	uint64_t prev = 0;
	bool worked = false;
	while (!w->done) {
		uint64_t now = mx_now_us(), max_sleep;
		if (worked)
			add(&w->busy_us, now - prev);
		unsigned n = net_stack_poll(w->st, now);
		n += mxgen_role_turn(w->index, now, &max_sleep);
		if (n == 0)
			sched_yield(); /* as mxrelay's worker: a CPU shared with mxsink */
		net_stack_idle(w->st, &w->idle, n > 0, now, max_sleep);
		worked = n > 0;
		prev = now;
	}
	for (uint64_t end = mx_now_us() + 200000; mx_now_us() < end;)
		net_stack_poll(w->st, mx_now_us());
	return 0;
}

int main(int argc, char **argv)
{
	const char *config;
	int rc = mxgen_role_setup(argc, argv, &config);
	if (rc != 0)
		return rc;
	if (config == NULL) {
		usage();
		return 2;
	}
	struct cfg_file *cf;
	rc = net_dataplane_start_file(&dp, config, "mxgen", argv[0], 1, MAX_WORKERS, &cf);
	if (rc != 0)
		return rc;
	struct net_dataplane started = dp;
	if (mxgen_role_attach(&started) != 0) {
		net_dataplane_stop(&dp);
		return 1;
	}
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	signal(SIGUSR1, on_usr1);
	for (unsigned i = 0; i < dp.n_workers; i++)
		rte_eal_remote_launch(worker_main, &workers[i], dp.worker_lcore[i]);
	while (!mxgen_role_tick(mx_now_us()))
		usleep(20000);
	rte_eal_mp_wait_lcore();
	rc = mxgen_role_finish();
	net_dataplane_stop(&dp);
	cfg_free(cf);
	return rc;
}
#endif
