/*
 * client.c - the outbound SMTP client session: reply parser and an incremental
 * state machine over the bytes of one connection, driven by the caller.
 *
 * Use: smtp_client_new(), smtp_client_start() once connected, then
 * smtp_client_input() for every received segment, smtp_client_writable()
 * when the transport drained after a short cb->send().  After cb->ready the
 * caller submits messages with smtp_client_send_message(), one at a time or,
 * with conf->max_txns_in_flight > 1 and a server that offers PIPELINING, up
 * to smtp_client_txn_depth() in flight; each is reported once,
 * in the order submitted, through cb->message_done() with per-recipient
 * outcomes.  smtp_client_quit() ends the session; cb->failed() says it died.
 *
 * Flow (RFC 5321 3, 4.1): 220 greeting, EHLO (HELO when EHLO gets 5xx),
 * STARTTLS per policy (RFC 3207; capabilities are forgotten and EHLO is sent
 * again), AUTH PLAIN/LOGIN for a smarthost (RFC 4954, only over TLS unless
 * allowed).  A transaction is MAIL, RCPT..., then DATA with dot-stuffing
 * (RFC 5321 4.5.2) or BDAT chunks (RFC 3030).  With PIPELINING (RFC 2920)
 * MAIL, every RCPT and DATA / the first BDAT go in one flight; the replies
 * are matched to commands through a FIFO of expected replies.
 *
 * Connection reuse: after a transaction that ran to its end (the reply to
 * "." or to BDAT LAST, whatever its code, ends it: RFC 5321 4.1.1.4) the next
 * MAIL goes without RSET.  After an abandoned transaction (MAIL refused, all
 * RCPTs refused, DATA/BDAT refused) RSET is sent and must get 250.
 *
 * Transactions in flight (can_start): the next message's commands follow
 * the previous BDAT LAST or "." at once, before its reply (RFC 2920 3.1: MAIL
 * and RCPT may appear anywhere in a group, and message content may begin
 * one; RFC 3030 2: nothing more is owed to a transaction after BDAT LAST).
 * After BDAT LAST the follow-on transaction starts with RSET, because the
 * one before may yet fail and leave the server inside it (every RCPT
 * refused).  After "." it starts with MAIL: the "." was only sent after a
 * 354, and its reply ends the transaction whatever its code (RFC 5321
 * 4.1.1.4), so with DATA at most two are started, [content "." MAIL RCPT...
 * DATA] in one write; the others submitted wait in the client, so that the
 * next is there when the 354 comes.  Each reply is matched to its transaction
 * through the FIFO, which names the transaction, and transactions settle
 * oldest first.  Postfix does the same for reuse within a session; its RSET
 * probe of cached connections is the pool's business, not this module's.
 *
 * Memory is bounded: commands and content go through a 16 KiB output buffer
 * that is refilled as the transport takes bytes; the body is pulled with
 * msg->body_read() a few KiB at a time, never held whole.  Reply text is cut
 * at SMTP_REPLY_TEXT_MAX; a reply line over 512 bytes or a reply of more than
 * 100 lines is a protocol error.
 */
#include "smtp.h"
#include "core.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define OUT_MAX (16 * 1024)
#define OUT_RESERVE 2048 /* kept free of content for control commands (RSET, QUIT, AUTH) */
#define READ_MAX 4096	 /* body bytes read per body_read call */
#define CMD_MAX 1200	 /* longest command: RCPT with a 256-byte path and a 500-byte ORCPT */
#define CRED_MAX 255

/* ---- reply parser ----------------------------------------------------------------- */

void smtp_reply_parser_init(struct smtp_reply_parser *p)
{
	memset(p, 0, sizeof(*p));
}

static bool is_digit(char c)
{
	return c >= '0' && c <= '9';
}

/* "c.sss.ddd" then space or end (RFC 3463 2), class equal to the reply's. */
static size_t enhanced_len(const char *s, size_t n, char cls)
{
	size_t i = 0;

	for (int part = 0; part < 3; part++) {
		size_t d = 0;

		while (i < n && is_digit(s[i]) && d < 4) {
			i++;
			d++;
		}
		if (d == 0 || d > (part == 0 ? 1u : 3u))
			return 0;
		if (part < 2) {
			if (i >= n || s[i] != '.')
				return 0;
			i++;
		}
	}
	if (s[0] != cls || (i < n && s[i] != ' '))
		return 0;
	return i;
}

/* Keep text safe for logs and DSNs: printable ASCII only. */
static void text_append(struct smtp_reply *r, const char *s, size_t n)
{
	size_t room = sizeof(r->text) - 1 - r->text_len;

	if (r->lines > 1 && room > 0 && n > 0) {
		r->text[r->text_len++] = ' ';
		room--;
	}
	if (n > room)
		n = room;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		r->text[r->text_len++] = (c >= 32 && c < 127) ? (char)c : '?';
	}
	r->text[r->text_len] = '\0';
}

/* One complete line (without its LF, CR stripped): validate and record it. */
static int reply_line(struct smtp_reply_parser *p, char *s, size_t n)
{
	struct smtp_reply *r = &p->reply;
	bool last;
	uint16_t code;

	/* RFC 5321 4.2: Reply-code [ SP textstring ] CRLF, "-" on all but the last line */
	if (n < 3 || s[0] < '2' || s[0] > '5' || s[1] < '0' || s[1] > '5' || !is_digit(s[2]))
		return -EPROTO;
	if (n > 3 && s[3] != ' ' && s[3] != '-')
		return -EPROTO;
	code = (uint16_t)((s[0] - '0') * 100 + (s[1] - '0') * 10 + (s[2] - '0'));
	last = n == 3 || s[3] == ' ';
	if (r->lines == 0)
		r->code = code;
	else if (code != r->code) /* RFC 5321 4.2.1: every line has the same code */
		return -EPROTO;
	if (r->lines >= SMTP_REPLY_LINES_MAX)
		return -EMSGSIZE;
	r->lines++;
	size_t off = n > 3 ? 4 : 3;
	size_t ec = enhanced_len(s + off, n - off, s[0]);
	if (ec) {
		if (r->lines == 1 && ec < sizeof(r->status)) {
			memcpy(r->status, s + off, ec);
			r->status[ec] = '\0';
		}
		off += ec;
		if (off < n)
			off++;
	}
	p->line_text = s + off;
	p->line_text_len = n - off;
	text_append(r, s + off, n - off);
	return last ? SMTP_REPLY_DONE : SMTP_REPLY_LINE;
}

int smtp_reply_parse(struct smtp_reply_parser *p, const uint8_t *buf, size_t n, size_t *used)
{
	size_t i = 0;

	if (p->done) {
		memset(&p->reply, 0, sizeof(p->reply));
		p->done = false;
	}
	p->line_text = NULL;
	p->line_text_len = 0;
	while (i < n) {
		uint8_t c = buf[i++];

		if (c == '\n') {
			size_t len = p->len;
			if (len > 0 && p->line[len - 1] == '\r')
				len--;
			p->len = 0;
			*used = i;
			int rc = reply_line(p, p->line, len);
			if (rc == SMTP_REPLY_DONE)
				p->done = true;
			return rc;
		}
		/* 512 including CRLF (RFC 5321 4.5.3.1.5): at most 511 bytes before the LF */
		if (p->len >= SMTP_REPLY_LINE_MAX - 1) {
			*used = i;
			return -EMSGSIZE;
		}
		p->line[p->len++] = (char)c;
	}
	*used = i;
	return SMTP_REPLY_MORE;
}

/* ---- configuration ------------------------------------------------------------------ */

void smtp_client_conf_defaults(struct smtp_client_conf *c)
{
	memset(c, 0, sizeof(*c));
	c->helo_name = "localhost";
	c->tls = SMTP_CLIENT_TLS_OPPORTUNISTIC;
	c->bdat_chunk = 64u << 10;
	c->max_bdat_in_flight = 4;
	c->max_recipients = 1000;
	c->max_txns_in_flight = 1;
	c->timeout_greeting_us = 300ull * 1000000;
	c->timeout_helo_us = 300ull * 1000000;
	c->timeout_mail_us = 300ull * 1000000;
	c->timeout_rcpt_us = 300ull * 1000000;
	c->timeout_data_init_us = 120ull * 1000000;
	c->timeout_data_xfer_us = 180ull * 1000000;
	c->timeout_data_done_us = 600ull * 1000000;
	c->timeout_rset_us = 20ull * 1000000;
	c->timeout_quit_us = 300ull * 1000000;
}

int smtp_client_conf_check(const struct smtp_client_conf *c, char *err, size_t errlen)
{
	const char *msg = NULL;

	if (c->helo_name == NULL ||
	    (smtp_domain_valid(c->helo_name, strlen(c->helo_name), false) < 0 &&
	     smtp_address_literal_valid(c->helo_name, strlen(c->helo_name)) < 0))
		msg = "helo_name is not a valid domain or address literal";
	else if (c->tls > SMTP_CLIENT_TLS_REQUIRED)
		msg = "bad tls policy";
	else if ((c->auth_user == NULL) != (c->auth_pass == NULL))
		msg = "auth_user and auth_pass go together";
	else if (c->auth_user &&
		 (strlen(c->auth_user) > CRED_MAX || strlen(c->auth_pass) > CRED_MAX))
		msg = "auth_user/auth_pass longer than 255";
	else if (c->bdat_chunk < 512 || c->bdat_chunk > (64u << 20))
		msg = "bdat_chunk must be 512..64M";
	else if (c->max_bdat_in_flight == 0 || c->max_bdat_in_flight > 64)
		msg = "max_bdat_in_flight must be 1..64";
	else if (c->max_recipients == 0 || c->max_recipients > 100000)
		msg = "max_recipients must be 1..100000";
	else if (c->max_txns_in_flight > SMTP_CLIENT_TXNS_MAX) /* 0 counts as 1 */
		msg = "max_txns_in_flight must be 1..8";
	else if (!c->timeout_greeting_us || !c->timeout_helo_us || !c->timeout_mail_us ||
		 !c->timeout_rcpt_us || !c->timeout_data_init_us || !c->timeout_data_xfer_us ||
		 !c->timeout_data_done_us || !c->timeout_rset_us || !c->timeout_quit_us)
		msg = "timeouts must be > 0";
	if (msg) {
		if (err && errlen)
			snprintf(err, errlen, "%s", msg);
		return -EINVAL;
	}
	return 0;
}

/* ---- session ------------------------------------------------------------------------ */

enum cstate {
	CS_NEW,
	CS_SETUP,    /* greeting, EHLO/HELO, STARTTLS, AUTH */
	CS_TLS_WAIT, /* 220 to STARTTLS seen, handshake is the caller's */
	CS_IDLE,
	CS_TXN,
	CS_RSET,
	CS_QUIT,
	CS_DEAD,
};

/* What the next reply answers. */
enum expect {
	X_GREETING,
	X_EHLO,
	X_HELO,
	X_STARTTLS,
	X_AUTH,
	X_AUTH_USER, /* AUTH LOGIN: the 334 that asks for the user name was answered */
	X_AUTH_PASS,
	X_MAIL,
	X_RCPT,
	X_DATA,
	X_BDAT,
	X_BDAT_LAST,
	X_DOT,
	X_RSET,
	X_QUIT,
};

#define NO_SLOT 0xff /* a reply that belongs to no transaction (EHLO, session RSET, ...) */
#define TXN_SLOTS (SMTP_CLIENT_TXNS_MAX + 1) /* one spare: a message reported unstarted */

struct pend {
	uint8_t kind;
	uint8_t slot; /* the transaction (tx[] index) this reply belongs to, or NO_SLOT */
	uint32_t idx; /* recipient index for X_RCPT */
};

/* Content generator of the current transaction. */
enum gen {
	G_NONE,
	G_WAIT, /* a reply decides what comes next */
	G_RSET, /* a transaction pipelined behind another starts with RSET (see start_txn) */
	G_MAIL,
	G_RCPT,
	G_DATA_CMD,
	G_DATA_BODY,
	G_DATA_END,
	G_DISCARD_DOT, /* 354 came though nothing is to be delivered: send an empty message */
	G_BDAT_HDR,
	G_BDAT_BODY,
};

struct txn {
	const struct smtp_client_msg *m;
	enum gen gen;
	bool pipelined, bdat;
	size_t next_rcpt;
	size_t accepted;
	bool mail_failed, abandon, complete, has_final, dot_discard;
	bool dot_sent; /* "." written after a 354: the server leaves the transaction at its reply */
	struct smtp_reply mail;
	struct smtp_reply final; /* reply to "."/BDAT LAST, or the first DATA/BDAT refusal */
	uint64_t body_off;
	uint64_t chunk_left;
	bool chunk_last;
	unsigned bdat_outstanding;
	bool bol, cr;	  /* DATA: at the beginning of a line; a CR is held back */
	unsigned pending; /* replies still due to this transaction's commands */
	struct smtp_client_rcpt_result *res;
	bool *skip; /* recipient refused locally, not sent */
	size_t res_cap;
};

struct smtp_client {
	const struct smtp_client_conf *conf;
	const struct smtp_client_cb *cb;
	void *user;
	struct smtp_client_stats *st;
	enum cstate state;
	bool tls, tls_refused, authed, quit_requested, ready_told;
	unsigned in_cb;
	bool in_pump, pump_again;
	uint64_t last_progress;
	struct smtp_client_caps caps;
	struct smtp_reply_parser rp;

	struct pend *q;
	size_t q_cap, q_head, q_len;

	/*
	 * Submitted, not started, oldest first.  Without CHUNKING the next
	 * message waits for the newest one's 354 and "." (can_start); holding
	 * the one after it too lets it follow that "." in the same write even
	 * when the caller submits only after the previous message_done.
	 */
	const struct smtp_client_msg *waiting[SMTP_CLIENT_TXNS_MAX];
	unsigned wait_head, wait_count;
	/*
	 * Transactions in flight, oldest first: tx[tx_head], ... tx_count of
	 * them (more than one only with PIPELINING: see can_start).  Replies
	 * arrive in order, so the oldest settles first.
	 */
	struct txn tx[TXN_SLOTS];
	unsigned tx_head, tx_count;

	uint8_t out[OUT_MAX];
	size_t out_off, out_len;
	uint8_t rbuf[READ_MAX];
};

static struct txn *oldest(struct smtp_client *c)
{
	return c->tx_count ? &c->tx[c->tx_head] : NULL;
}

static struct txn *newest(struct smtp_client *c)
{
	return c->tx_count ? &c->tx[(c->tx_head + c->tx_count - 1) % TXN_SLOTS] : NULL;
}

/* The slot the next started transaction takes (free: tx_count < TXN_SLOTS). */
static struct txn *spare(struct smtp_client *c)
{
	return &c->tx[(c->tx_head + c->tx_count) % TXN_SLOTS];
}

/* Messages the caller may have unreported at once: started or waiting. */
static unsigned depth(const struct smtp_client *c)
{
	unsigned d = c->conf->max_txns_in_flight;

	if (!c->caps.pipelining || d < 1)
		return 1;
	return d > SMTP_CLIENT_TXNS_MAX ? SMTP_CLIENT_TXNS_MAX : d;
}

static const struct smtp_client_msg *wait_peek(const struct smtp_client *c)
{
	return c->wait_count ? c->waiting[c->wait_head] : NULL;
}

static const struct smtp_client_msg *wait_pop(struct smtp_client *c)
{
	const struct smtp_client_msg *m = c->waiting[c->wait_head];

	c->wait_head = (c->wait_head + 1) % SMTP_CLIENT_TXNS_MAX;
	c->wait_count--;
	return m;
}

static uint64_t now_us(const struct smtp_client *c)
{
	return c->conf->now_us ? c->conf->now_us() : mx_now_us();
}

static void synth(struct smtp_reply *r, uint16_t code, const char *status, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static void synth(struct smtp_reply *r, uint16_t code, const char *status, const char *fmt, ...)
{
	char buf[SMTP_REPLY_TEXT_MAX];
	va_list ap;
	int n;

	memset(r, 0, sizeof(*r));
	r->code = code;
	r->synthetic = true;
	r->lines = 1;
	snprintf(r->status, sizeof(r->status), "%s", status);
	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (n < 0)
		n = 0;
	if ((size_t)n >= sizeof(buf))
		n = (int)sizeof(buf) - 1;
	text_append(r, buf, (size_t)n);
}

/* ---- expected-reply FIFO ---- */

static bool q_push(struct smtp_client *c, enum expect kind, uint32_t idx)
{
	if (c->q_len == c->q_cap)
		return false;
	struct pend *p = &c->q[(c->q_head + c->q_len) % c->q_cap];
	p->kind = (uint8_t)kind;
	p->slot = NO_SLOT;
	p->idx = idx;
	c->q_len++;
	return true;
}

/* A reply expected for transaction t's command (the caller checked there is room). */
static void tq_push(struct smtp_client *c, struct txn *t, enum expect kind, uint32_t idx)
{
	struct pend *p = &c->q[(c->q_head + c->q_len) % c->q_cap];
	p->kind = (uint8_t)kind;
	p->slot = (uint8_t)(t - c->tx);
	p->idx = idx;
	c->q_len++;
	t->pending++;
}

static struct pend q_pop(struct smtp_client *c)
{
	struct pend p = c->q[c->q_head];
	c->q_head = (c->q_head + 1) % c->q_cap;
	c->q_len--;
	return p;
}

/* ---- output ---- */

static void flush(struct smtp_client *c)
{
	bool sent = false;

	while (c->out_off < c->out_len) {
		size_t left = c->out_len - c->out_off;
		size_t k = c->cb->send(c->user, c->out + c->out_off, left);
		if (k > left)
			k = left;
		if (k == 0) {
			c->st->send_blocked++;
			break;
		}
		c->out_off += k;
		c->st->bytes_out += k;
		sent = true;
		if (c->state == CS_DEAD)
			break;
	}
	if (sent)
		c->last_progress = now_us(c);
	if (c->state == CS_DEAD)
		return;
	if (c->out_off == c->out_len)
		c->out_off = c->out_len = 0;
}

/* Free bytes at the end of the buffer, after compaction. */
static size_t out_room(struct smtp_client *c, bool content)
{
	if (c->out_off > 0) {
		memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
		c->out_len -= c->out_off;
		c->out_off = 0;
	}
	size_t room = OUT_MAX - c->out_len;
	if (content)
		room = room > OUT_RESERVE ? room - OUT_RESERVE : 0;
	return room;
}

/*
 * A command line of n bytes, CRLF added; content=true for transaction
 * commands (they leave the reserve).
 */
static int emit_bytes(struct smtp_client *c, bool content, const char *p, size_t n)
{
	if (n + 2 > out_room(c, content))
		return -ENOSPC;
	memcpy(c->out + c->out_len, p, n);
	memcpy(c->out + c->out_len + n, "\r\n", 2);
	c->out_len += n + 2;
	return 0; /* flush() or the caller's input notes the progress */
}

/* A fixed command (RSET, DATA, ".", QUIT...): no formatting on the per-transaction path. */
static int emit_cmd(struct smtp_client *c, bool content, const char *cmd)
{
	return emit_bytes(c, content, cmd, strlen(cmd));
}

/* A formatted command line. */
static int emit(struct smtp_client *c, bool content, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static int emit(struct smtp_client *c, bool content, const char *fmt, ...)
{
	char buf[CMD_MAX];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(buf))
		return -ENAMETOOLONG;
	return emit_bytes(c, content, buf, (size_t)n);
}

/*
 * The transaction commands (MAIL, RCPT, BDAT: several per message) are built
 * with these appends rather than printf: formatting was a visible share of
 * the per-message CPU.  A line is built in a CMD_MAX buffer; put_* stop
 * writing at its end and line_end() then refuses it.
 */
struct line {
	char b[CMD_MAX + 2];
	size_t n;
	bool over;
};

static void put_mem(struct line *l, const char *s, size_t n)
{
	if (l->over || n > CMD_MAX - l->n) {
		l->over = true;
		return;
	}
	memcpy(l->b + l->n, s, n);
	l->n += n;
}

static void put_str(struct line *l, const char *s)
{
	put_mem(l, s, strlen(s));
}

static void put_u64(struct line *l, uint64_t v)
{
	char d[MX_U64_DEC_MAX];
	put_mem(l, d, mx_u64_dec(v, d));
}

/* The line with CRLF into the output buffer, as emit() does. */
static int emit_line(struct smtp_client *c, bool content, struct line *l)
{
	if (l->over)
		return -ENAMETOOLONG;
	l->b[l->n++] = '\r';
	l->b[l->n++] = '\n';
	if (l->n > out_room(c, content))
		return -ENOSPC;
	memcpy(c->out + c->out_len, l->b, l->n);
	c->out_len += l->n;
	return 0;
}

/* ---- reporting ---- */

static enum smtp_client_outcome classify(const struct smtp_reply *r)
{
	if (r->code >= 200 && r->code < 300)
		return SMTP_CLIENT_DELIVERED;
	if (r->code >= 500 && r->code < 600)
		return SMTP_CLIENT_BOUNCED;
	return SMTP_CLIENT_DEFERRED;
}

static void report(struct smtp_client *c, struct txn *t, const struct smtp_client_msg *m, bool bdat)
{
	struct smtp_client_result r;

	memset(&r, 0, sizeof(r));
	r.msg = m;
	r.rcpts = t->res;
	r.rcpt_count = m->rcpt_count;
	r.used_bdat = bdat;
	for (size_t i = 0; i < m->rcpt_count; i++) {
		t->res[i].outcome = classify(&t->res[i].final);
		switch (t->res[i].outcome) {
		case SMTP_CLIENT_DELIVERED:
			r.delivered++;
			break;
		case SMTP_CLIENT_DEFERRED:
			r.deferred++;
			break;
		default:
			r.bounced++;
			break;
		}
	}
	c->st->rcpts_delivered += r.delivered;
	c->st->rcpts_deferred += r.deferred;
	c->st->rcpts_bounced += r.bounced;
	c->st->messages_sent += r.delivered > 0;
	c->st->messages_deferred += r.deferred > 0;
	c->st->messages_bounced += r.bounced > 0;
	if (c->cb->message_done) {
		c->in_cb++;
		c->cb->message_done(c->user, &r);
		c->in_cb--;
	}
}

/* Result arrays of slot t for n recipients (kept across transactions: no allocation). */
static int prepare_results(struct txn *t, size_t n)
{
	if (n > t->res_cap) {
		struct smtp_client_rcpt_result *nr = realloc(t->res, n * sizeof(*nr));
		if (!nr)
			return -ENOMEM;
		t->res = nr;
		bool *ns = realloc(t->skip, n * sizeof(*ns));
		if (!ns)
			return -ENOMEM;
		t->skip = ns;
		t->res_cap = n;
	}
	memset(t->res, 0, n * sizeof(*t->res));
	memset(t->skip, 0, n * sizeof(*t->skip));
	return 0;
}

static void settle_rcpt(struct txn *t, size_t i, const struct smtp_reply *fallback);

/*
 * Everything of message m gets reply why, except recipients already refused
 * for good.  started: m is transaction t's; else t is a spare slot.
 */
static void report_all(struct smtp_client *c, struct txn *t, const struct smtp_client_msg *m,
		       bool started, bool bdat, const struct smtp_reply *why)
{
	if (!started && prepare_results(t, m->rcpt_count) < 0) {
		/* cannot even say it per recipient: still report once */
		t->res_cap = 0;
		struct smtp_client_result r = {.msg = m, .rcpt_count = 0};
		c->st->messages_deferred++;
		if (c->cb->message_done) {
			c->in_cb++;
			c->cb->message_done(c->user, &r);
			c->in_cb--;
		}
		return;
	}
	for (size_t i = 0; i < m->rcpt_count; i++) {
		if (started)
			settle_rcpt(t, i, why);
		else
			t->res[i].final = *why;
	}
	report(c, t, m, bdat);
}

/* The session is dead: every message not reported yet is deferred. */
static void fail(struct smtp_client *c, const struct smtp_reply *why)
{
	struct smtp_reply lost;

	if (c->state == CS_DEAD)
		return;
	bool quitting = c->state == CS_QUIT;
	c->state = CS_DEAD;
	c->q_len = 0;
	c->out_off = c->out_len = 0;
	if (why->code >= 400 && why->code < 500) {
		lost = *why;
	} else {
		/* in-flight messages are never bounced for a session failure */
		synth(&lost, 421, "4.4.2", "Connection lost: %s%s%s", why->status,
		      why->status[0] ? " " : "", why->text);
	}
	/* Oldest first: every message in flight is reported, in the order sent. */
	while (c->tx_count) {
		struct txn *t = oldest(c);
		const struct smtp_client_msg *m = t->m;
		c->tx_head = (c->tx_head + 1) % TXN_SLOTS;
		c->tx_count--;
		t->m = NULL;
		if (m)
			report_all(c, t, m, true, t->bdat, &lost);
	}
	while (c->wait_count) {
		const struct smtp_client_msg *m = wait_pop(c);
		report_all(c, spare(c), m, false, false, &lost);
	}
	c->in_cb++;
	if (quitting) {
		if (c->cb->closed)
			c->cb->closed(c->user);
	} else {
		c->st->sessions_failed++;
		if (c->cb->failed)
			c->cb->failed(c->user, why);
	}
	c->in_cb--;
}

static void fail_synth(struct smtp_client *c, uint16_t code, const char *status, const char *text)
{
	struct smtp_reply r;

	synth(&r, code, status, "%s", text);
	fail(c, &r);
}

static void protocol_error(struct smtp_client *c, const char *what)
{
	c->st->protocol_errors++;
	MX_DEBUG("smtp client: protocol error: %s", what);
	fail_synth(c, 421, "4.4.2", what);
}

/* ---- session setup ---- */

static void send_ehlo(struct smtp_client *c, bool helo)
{
	memset(&c->caps, 0, sizeof(c->caps));
	if (emit(c, false, "%s %s", helo ? "HELO" : "EHLO", c->conf->helo_name) < 0 ||
	    !q_push(c, helo ? X_HELO : X_EHLO, 0))
		protocol_error(c, "output buffer full");
}

static bool word_is(const char *s, size_t n, const char *w)
{
	return strlen(w) == n && strncasecmp(s, w, n) == 0;
}

/* One EHLO keyword line (RFC 5321 4.1.1.1: ehlo-keyword *(SP ehlo-param)). */
static void ehlo_keyword(struct smtp_client *c, const char *s, size_t n)
{
	size_t k = 0;

	while (k < n && s[k] != ' ' && s[k] != '=')
		k++;
	const char *arg = k < n ? s + k + 1 : s + n;
	size_t alen = k < n ? n - k - 1 : 0;

	if (word_is(s, k, "PIPELINING")) {
		c->caps.pipelining = !c->conf->no_pipelining;
	} else if (word_is(s, k, "SIZE")) {
		uint64_t v = 0;
		size_t i = 0;
		c->caps.size = true;
		while (i < alen && is_digit(arg[i]) && v < UINT64_MAX / 10 - 10)
			v = v * 10 + (uint64_t)(arg[i++] - '0');
		c->caps.size_max = (i == alen) ? v : 0; /* RFC 1870: 0 or absent: no limit */
	} else if (word_is(s, k, "8BITMIME")) {
		c->caps.eightbitmime = true;
	} else if (word_is(s, k, "SMTPUTF8")) {
		c->caps.smtputf8 = true;
	} else if (word_is(s, k, "CHUNKING")) {
		c->caps.chunking = true;
	} else if (word_is(s, k, "STARTTLS")) {
		c->caps.starttls = true;
	} else if (word_is(s, k, "DSN")) {
		c->caps.dsn = true;
	} else if (word_is(s, k, "ENHANCEDSTATUSCODES")) {
		c->caps.enhanced = true;
	} else if (word_is(s, k, "AUTH")) {
		/* "AUTH PLAIN LOGIN" or the old "AUTH=PLAIN LOGIN" */
		size_t i = 0;
		while (i < alen) {
			size_t j = i;
			while (j < alen && arg[j] != ' ')
				j++;
			if (word_is(arg + i, j - i, "PLAIN"))
				c->caps.auth_plain = true;
			else if (word_is(arg + i, j - i, "LOGIN"))
				c->caps.auth_login = true;
			i = j + 1;
		}
	}
}

static void become_ready(struct smtp_client *c)
{
	c->state = CS_IDLE;
	if (!c->ready_told) {
		c->ready_told = true;
		c->st->sessions_ready++;
		if (c->cb->ready) {
			c->in_cb++;
			c->cb->ready(c->user);
			c->in_cb--;
		}
	}
}

static void send_b64(struct smtp_client *c, const uint8_t *p, size_t n, const char *prefix,
		     enum expect kind)
{
	char b64[(2 * CRED_MAX + 3 + 2) / 3 * 4 + 1];

	if (smtp_base64_encode(p, n, b64, sizeof(b64)) < 0 ||
	    emit(c, false, "%s%s", prefix, b64) < 0 || !q_push(c, kind, 0))
		protocol_error(c, "AUTH encoding");
}

/* After EHLO/HELO: STARTTLS, AUTH or ready. */
static void after_ehlo(struct smtp_client *c)
{
	if (!c->tls && c->conf->tls != SMTP_CLIENT_TLS_NONE && c->caps.starttls &&
	    !c->tls_refused) {
		if (emit_cmd(c, false, "STARTTLS") < 0 || !q_push(c, X_STARTTLS, 0))
			protocol_error(c, "output buffer full");
		return;
	}
	if (!c->tls && c->conf->tls == SMTP_CLIENT_TLS_REQUIRED) {
		fail_synth(c, 454, "4.7.4", "TLS required but not offered by the server");
		return;
	}
	if (c->conf->auth_user && !c->authed) {
		/* RFC 4954 4: no password in the clear unless the operator said so.  A
		 * missing mechanism fails the session (defer), it does not send
		 * unauthenticated mail that the smarthost would bounce for relaying. */
		if (!c->tls && !c->conf->auth_plaintext_ok) {
			fail_synth(c, 454, "4.7.0", "AUTH refused: the session is not encrypted");
			return;
		}
		if (c->caps.auth_plain) {
			uint8_t buf[2 * CRED_MAX + 2];
			size_t ul = strlen(c->conf->auth_user), pl = strlen(c->conf->auth_pass);
			/* RFC 4616 2: [authzid] NUL authcid NUL passwd */
			buf[0] = 0;
			memcpy(buf + 1, c->conf->auth_user, ul);
			buf[1 + ul] = 0;
			memcpy(buf + 2 + ul, c->conf->auth_pass, pl);
			send_b64(c, buf, 2 + ul + pl, "AUTH PLAIN ", X_AUTH);
		} else if (c->caps.auth_login) {
			if (emit_cmd(c, false, "AUTH LOGIN") < 0 || !q_push(c, X_AUTH_USER, 0))
				protocol_error(c, "output buffer full");
		} else {
			fail_synth(c, 454, "4.7.0", "AUTH credentials set but no usable mechanism");
		}
		return;
	}
	become_ready(c);
}

/* ---- transactions ---- */

static bool valid_path(const char *addr, bool null_ok, bool utf8)
{
	char buf[SMTP_PATH_MAX + 8];
	struct smtp_address a;
	size_t used, len;
	int n;

	if (!addr)
		return false;
	len = strlen(addr);
	if (len + 3 > sizeof(buf))
		return false;
	buf[0] = '<';
	memcpy(buf + 1, addr, len);
	buf[len + 1] = '>';
	buf[len + 2] = '\0';
	n = (int)len + 2;
	/* the parser's checks keep CR, LF and spaces (command injection) out */
	return smtp_parse_path(buf, (size_t)n, null_ok, utf8, &a, &used) == 0 && used == (size_t)n;
}

static bool orcpt_ok(const char *v)
{
	const char *semi = v ? strchr(v, ';') : NULL;

	return semi && semi != v && strlen(v) <= SMTP_ORCPT_MAX &&
	       smtp_xtext_valid(semi + 1, strlen(semi + 1)) == 0 && semi[1] != '\0';
}

/*
 * The reply that decides recipient i: the MAIL refusal (later RCPT replies
 * then only say "need MAIL"), its own RCPT refusal, the end-of-data reply or
 * DATA/BDAT refusal, else fallback.
 */
static void settle_rcpt(struct txn *t, size_t i, const struct smtp_reply *fallback)
{
	struct smtp_client_rcpt_result *rr = &t->res[i];

	if (t->skip[i])
		return;
	if (t->mail_failed)
		rr->final = t->mail;
	else if (rr->rcpt.code && (rr->rcpt.code < 200 || rr->rcpt.code >= 300))
		rr->final = rr->rcpt;
	else if (rr->rcpt.code && t->has_final)
		rr->final = t->final;
	else
		rr->final = *fallback;
}

/*
 * The oldest transaction has all its replies: report it.  An abandoned one
 * is followed by RSET (RFC 5321 4.1.1.5) unless a transaction pipelined
 * behind it is already on the wire: behind BDAT that one began with its own
 * RSET, behind DATA the abandoned one had sent "." (can_start), which left
 * the server outside any transaction.
 */
#define ABORTED_TEXT "Transaction aborted before this recipient was sent"

/* What a recipient whose RCPT was never sent gets (a constant: no formatting per message). */
static const struct smtp_reply aborted = {
	.code = 451,
	.status = "4.3.0",
	.text = ABORTED_TEXT,
	.text_len = sizeof(ABORTED_TEXT) - 1,
	.lines = 1,
	.synthetic = true,
};

static void finish_txn(struct smtp_client *c)
{
	struct txn *t = oldest(c);
	const struct smtp_client_msg *m = t->m;
	bool rset = t->abandon && c->tx_count == 1;

	for (size_t i = 0; i < m->rcpt_count; i++)
		settle_rcpt(t, i, &aborted);
	t->m = NULL;
	t->gen = G_NONE;
	c->tx_head = (c->tx_head + 1) % TXN_SLOTS;
	c->tx_count--;
	if (c->tx_count == 0)
		c->state = rset ? CS_RSET : CS_IDLE;
	if (rset) {
		c->st->rsets++;
		if (emit_cmd(c, false, "RSET") < 0 || !q_push(c, X_RSET, 0)) {
			protocol_error(c, "output buffer full");
			return;
		}
	}
	report(c, t, m, t->bdat);
}

static bool txn_settled(struct smtp_client *c)
{
	const struct txn *t = oldest(c);

	return c->state == CS_TXN && t && t->m && (t->abandon || t->complete) &&
	       (t->gen == G_NONE || t->gen == G_WAIT) && t->pending == 0;
}

/* Why m cannot go to this server at all (then true and *why), checked before MAIL. */
static bool refused_here(struct smtp_client *c, const struct smtp_client_msg *m,
			 struct smtp_reply *why)
{
	if (c->caps.size && c->caps.size_max && m->body_len > c->caps.size_max) {
		/* RFC 1870 6.1: do not send what the server said it will not take */
		synth(why, 552, "5.3.4",
		      "Message size exceeds fixed limit of remote server (%" PRIu64 " > %" PRIu64
		      ")",
		      m->body_len, c->caps.size_max);
		return true;
	}
	if (m->body_8bit && !c->caps.eightbitmime) {
		/* RFC 6152 3: no 8-bit to a server without 8BITMIME; we do not downgrade */
		synth(why, 554, "5.6.3", "Server does not support 8BITMIME; conversion not done");
		return true;
	}
	if (m->smtputf8 && !c->caps.smtputf8) {
		/* RFC 6531 3.4 */
		synth(why, 553, "5.6.7", "Server does not support SMTPUTF8");
		return true;
	}
	if (!valid_path(m->sender, true, m->smtputf8)) {
		synth(why, 553, "5.1.7", "Bad sender address syntax");
		return true;
	}
	return false;
}

/*
 * May the next message start now?  On an idle session, yes.  Behind
 * transactions in flight only when the server offered PIPELINING, up to
 * depth(): RFC 2920 3.1 lets MAIL and RCPT go anywhere in a group, and
 * after BDAT LAST (RFC 3030 2) or "." the client owes nothing more to that
 * transaction, so the next one can follow before its reply.  The newest
 * transaction must have written all of its commands and content, and a
 * BDAT one must not have failed yet; a "." ends a DATA transaction whatever
 * came before it (RFC 5321 4.1.1.4), even the empty message sent after a
 * 354 to a transaction with no recipient left.  A message that this server
 * cannot take (refused_here) waits for an idle session, so that every
 * message is reported in the order it was submitted.
 */
static bool can_start(struct smtp_client *c, const struct smtp_client_msg *m)
{
	struct txn *n = newest(c);
	struct smtp_reply why;

	if (c->state == CS_IDLE)
		return true;
	if (c->state != CS_TXN || !n || c->tx_count >= depth(c) || c->quit_requested)
		return false;
	if (!n->pipelined || n->gen != G_NONE)
		return false;
	if (n->bdat ? n->abandon || !n->chunk_last : !n->dot_sent)
		return false;
	return !refused_here(c, m, &why);
}

/* Start message m, or report it at once when it cannot be sent to this server. */
static void start_txn(struct smtp_client *c, const struct smtp_client_msg *m)
{
	struct smtp_reply why;
	struct txn *t = spare(c);
	const struct txn *prev = newest(c);
	size_t sendable = 0;

	if (prepare_results(t, m->rcpt_count) < 0) {
		synth(&why, 451, "4.3.0", "Out of memory");
		report_all(c, t, m, false, false, &why);
		return;
	}
	if (refused_here(c, m, &why)) {
		c->st->refused_local++;
		for (size_t i = 0; i < m->rcpt_count; i++) {
			t->res[i].final = why;
			t->skip[i] = true;
		}
		report(c, t, m, false);
		return;
	}
	for (size_t i = 0; i < m->rcpt_count; i++) {
		if (valid_path(m->rcpts[i].addr, false, m->smtputf8)) {
			sendable++;
			continue;
		}
		t->skip[i] = true;
		synth(&t->res[i].final, 553, "5.1.3", "Bad recipient address syntax");
	}
	if (sendable == 0) {
		c->st->refused_local++;
		report(c, t, m, false);
		return;
	}
	/* Keep the slot's result arrays; the rest starts from zero. */
	struct smtp_client_rcpt_result *res = t->res;
	bool *skip = t->skip;
	size_t res_cap = t->res_cap;
	memset(t, 0, sizeof(*t));
	t->res = res;
	t->skip = skip;
	t->res_cap = res_cap;
	t->m = m;
	t->pipelined = c->caps.pipelining;
	t->bdat = c->caps.chunking;
	/*
	 * Behind a BDAT transaction: RSET first.  The one before may still
	 * fail (every RCPT refused, BDAT LAST refused) and leave the server
	 * inside its transaction (MAIL given); a MAIL would then get "503 nested
	 * MAIL" and our RCPTs would join that transaction under its sender.
	 * After a completed transaction RSET changes nothing (RFC 5321 4.1.1.5).
	 * Behind a "." no RSET: that reply ends the transaction (4.1.1.4).
	 */
	t->gen = prev && prev->bdat ? G_RSET : G_MAIL;
	t->bol = true;
	if (c->tx_count)
		c->st->txns_pipelined++;
	c->tx_count++;
	c->state = CS_TXN;
	if (t->pipelined)
		c->st->pipelined_flights++;
	if (t->bdat)
		c->st->bdat_messages++;
	else
		c->st->data_messages++;
}

static size_t next_sendable(const struct txn *t, size_t from)
{
	while (from < t->m->rcpt_count && t->skip[from])
		from++;
	return from;
}

/* After the envelope replies (non-pipelined) or the last command was queued. */
static enum gen gen_after_envelope(const struct txn *t)
{
	return t->bdat ? G_BDAT_HDR : G_DATA_CMD;
}

static int emit_mail(struct smtp_client *c, const struct txn *t)
{
	const struct smtp_client_msg *m = t->m;
	struct line l = {.n = 0};

	put_str(&l, "MAIL FROM:<");
	put_str(&l, m->sender);
	put_str(&l, ">");
	/* RFC 1870 */
	if (c->caps.size) {
		put_str(&l, " SIZE=");
		put_u64(&l, m->body_len);
	}
	if (m->body_8bit)
		put_str(&l, " BODY=8BITMIME");
	if (m->smtputf8)
		put_str(&l, " SMTPUTF8");
	/* RFC 3461 4.3, 4.4: only to a server that offers DSN */
	if (c->caps.dsn && m->ret != SMTP_RET_NONE)
		put_str(&l, m->ret == SMTP_RET_FULL ? " RET=FULL" : " RET=HDRS");
	if (c->caps.dsn && m->envid && m->envid[0] && strlen(m->envid) <= SMTP_ENVID_MAX &&
	    smtp_xtext_valid(m->envid, strlen(m->envid)) == 0) {
		put_str(&l, " ENVID=");
		put_str(&l, m->envid);
	}
	return emit_line(c, true, &l);
}

static int emit_rcpt(struct smtp_client *c, const struct txn *t, size_t i)
{
	const struct smtp_client_rcpt *r = &t->m->rcpts[i];
	struct line l = {.n = 0};

	put_str(&l, "RCPT TO:<");
	put_str(&l, r->addr);
	put_str(&l, ">");
	if (c->caps.dsn && r->notify) {
		if (r->notify & SMTP_NOTIFY_NEVER) {
			put_str(&l, " NOTIFY=NEVER");
		} else {
			static const struct {
				uint8_t bit;
				const char *name;
			} names[] = {{SMTP_NOTIFY_SUCCESS, "SUCCESS"},
				     {SMTP_NOTIFY_FAILURE, "FAILURE"},
				     {SMTP_NOTIFY_DELAY, "DELAY"}};
			const char *sep = " NOTIFY=";
			for (size_t k = 0; k < 3; k++) {
				if (!(r->notify & names[k].bit))
					continue;
				put_str(&l, sep);
				put_str(&l, names[k].name);
				sep = ",";
			}
		}
	}
	if (c->caps.dsn && r->orcpt && orcpt_ok(r->orcpt)) {
		put_str(&l, " ORCPT=");
		put_str(&l, r->orcpt);
	}
	return emit_line(c, true, &l);
}

static void body_error(struct smtp_client *c, long rc)
{
	char text[128];

	/* mid-content there is no way back but dropping the connection */
	snprintf(text, sizeof(text), "Error reading the message body (%ld)", rc);
	fail_synth(c, 451, "4.3.0", text);
}

/* Dot-stuff and CRLF-normalise n body bytes into out; returns bytes written (<= 2n + 2). */
static size_t stuff(struct txn *t, const uint8_t *in, size_t n, uint8_t *out)
{
	size_t o = 0;

	for (size_t i = 0; i < n; i++) {
		uint8_t b = in[i];

		if (t->cr) {
			t->cr = false;
			out[o++] = '\r';
			out[o++] = '\n';
			t->bol = true;
			if (b == '\n')
				continue;
			/* a bare CR became CRLF (RFC 5321 2.3.8); b starts a line */
		}
		if (b == '\r') {
			t->cr = true;
		} else if (b == '\n') {
			out[o++] = '\r'; /* bare LF: never sent bare (SMTP smuggling) */
			out[o++] = '\n';
			t->bol = true;
		} else {
			if (t->bol && b == '.')
				out[o++] = '.'; /* RFC 5321 4.5.2 */
			out[o++] = b;
			t->bol = false;
		}
	}
	return o;
}

/* Generate what the transaction may send now, as far as the buffer allows. */
static bool gen_some_inner(struct smtp_client *c)
{
	struct txn *t = newest(c);
	bool any = false;

	while (c->state == CS_TXN && t && t->m) {
		const struct smtp_client_msg *m = t->m;
		size_t room;

		switch (t->gen) {
		case G_NONE:
		case G_WAIT:
			return any;
		case G_RSET:
			if (c->q_len == c->q_cap || emit_cmd(c, true, "RSET") < 0)
				return any;
			tq_push(c, t, X_RSET, 0);
			t->gen = G_MAIL;
			break;
		case G_MAIL:
			if (c->q_len == c->q_cap || emit_mail(c, t) < 0)
				return any;
			tq_push(c, t, X_MAIL, 0);
			t->next_rcpt = next_sendable(t, 0);
			t->gen = t->pipelined ? G_RCPT : G_WAIT;
			break;
		case G_RCPT:
			if (t->abandon) {
				t->gen = G_NONE;
				break;
			}
			if (c->q_len == c->q_cap || emit_rcpt(c, t, t->next_rcpt) < 0)
				return any;
			tq_push(c, t, X_RCPT, (uint32_t)t->next_rcpt);
			t->next_rcpt = next_sendable(t, t->next_rcpt + 1);
			if (!t->pipelined)
				t->gen = G_WAIT;
			else if (t->next_rcpt >= m->rcpt_count)
				t->gen = gen_after_envelope(t);
			break;
		case G_DATA_CMD:
			if (t->abandon) {
				t->gen = G_NONE;
				break;
			}
			if (c->q_len == c->q_cap || emit_cmd(c, true, "DATA") < 0)
				return any;
			tq_push(c, t, X_DATA, 0);
			t->gen = G_WAIT;
			break;
		case G_DATA_BODY: {
			if (t->body_off == m->body_len) {
				t->gen = G_DATA_END;
				break;
			}
			room = out_room(c, true);
			if (room < 16)
				return any;
			size_t want = (room - 2) / 2;
			if (want > READ_MAX)
				want = READ_MAX;
			if (want > m->body_len - t->body_off)
				want = (size_t)(m->body_len - t->body_off);
			long rc = m->body_read(m->body_user, t->body_off, c->rbuf, want);
			if (rc <= 0 || (size_t)rc > want) {
				body_error(c, rc);
				return any;
			}
			t->body_off += (uint64_t)rc;
			c->st->body_bytes += (uint64_t)rc;
			c->out_len += stuff(t, c->rbuf, (size_t)rc, c->out + c->out_len);
			break;
		}
		case G_DATA_END:
			if (out_room(c, true) < 8 || c->q_len == c->q_cap)
				return any;
			if (t->cr) {
				t->cr = false;
				t->bol = true;
				memcpy(c->out + c->out_len, "\r\n", 2);
				c->out_len += 2;
			}
			/* the content ends with CRLF before the terminator (RFC 5321 4.1.1.4) */
			if (!t->bol) {
				memcpy(c->out + c->out_len, "\r\n", 2);
				c->out_len += 2;
			}
			memcpy(c->out + c->out_len, ".\r\n", 3);
			c->out_len += 3;
			tq_push(c, t, X_DOT, 0);
			t->dot_sent = true;
			t->gen = G_NONE;
			break;
		case G_DISCARD_DOT:
			if (c->q_len == c->q_cap || emit_cmd(c, true, ".") < 0)
				return any;
			tq_push(c, t, X_DOT, 0);
			t->dot_discard = true;
			t->dot_sent = true;
			t->gen = G_NONE;
			break;
		case G_BDAT_HDR: {
			if (t->abandon) {
				t->gen = G_NONE;
				break;
			}
			if (t->bdat_outstanding >= c->conf->max_bdat_in_flight ||
			    c->q_len == c->q_cap)
				return any;
			uint64_t left = m->body_len - t->body_off;
			uint64_t chunk = left < c->conf->bdat_chunk ? left : c->conf->bdat_chunk;
			bool last = chunk == left;
			struct line l = {.n = 0};
			put_str(&l, "BDAT ");
			put_u64(&l, chunk);
			if (last)
				put_str(&l, " LAST");
			if (emit_line(c, true, &l) < 0)
				return any;
			tq_push(c, t, last ? X_BDAT_LAST : X_BDAT, 0);
			t->bdat_outstanding++;
			c->st->bdat_chunks++;
			t->chunk_left = chunk;
			t->chunk_last = last;
			t->gen = G_BDAT_BODY;
			break;
		}
		case G_BDAT_BODY: {
			if (t->chunk_left == 0) {
				/* RFC 3030 4.2: chunks may be pipelined; none after a failure */
				if (t->chunk_last || t->abandon)
					t->gen = G_NONE;
				else if (t->pipelined || t->bdat_outstanding == 0)
					t->gen = G_BDAT_HDR;
				else
					t->gen = G_WAIT;
				break;
			}
			room = out_room(c, true);
			if (room == 0)
				return any;
			size_t want = room < READ_MAX ? room : READ_MAX;
			if (want > t->chunk_left)
				want = (size_t)t->chunk_left;
			long rc =
				m->body_read(m->body_user, t->body_off, c->out + c->out_len, want);
			if (rc <= 0 || (size_t)rc > want) {
				body_error(c, rc);
				return any;
			}
			t->body_off += (uint64_t)rc;
			t->chunk_left -= (uint64_t)rc;
			c->st->body_bytes += (uint64_t)rc;
			c->out_len += (size_t)rc;
			break;
		}
		}
		any = true;
	}
	return any;
}

/* One clock read per generation run, not per command. */
static bool gen_some(struct smtp_client *c)
{
	bool any = gen_some_inner(c);

	if (any)
		c->last_progress = now_us(c);
	return any;
}

static void maybe_start(struct smtp_client *c)
{
	while (c->wait_count && !c->in_cb && can_start(c, wait_peek(c)))
		start_txn(c, wait_pop(c));
	if (c->state == CS_IDLE && c->quit_requested && !c->wait_count && !c->in_cb) {
		if (emit_cmd(c, false, "QUIT") < 0 || !q_push(c, X_QUIT, 0)) {
			protocol_error(c, "output buffer full");
			return;
		}
		c->state = CS_QUIT;
	}
}

/* Write what can be written; start queued work. */
static void pump(struct smtp_client *c)
{
	if (c->in_pump) {
		c->pump_again = true;
		return;
	}
	c->in_pump = true;
	do {
		c->pump_again = false;
		for (int guard = 0; guard < 1000000 && c->state != CS_DEAD; guard++) {
			maybe_start(c);
			bool any = gen_some(c);
			if (c->state == CS_DEAD)
				break;
			if (txn_settled(c)) {
				finish_txn(c);
				continue;
			}
			/* Fill the buffer before writing it: one transport write (one TLS
			 * record) for a whole transaction, or for several pipelined ones. */
			if (any)
				continue;
			size_t before = c->out_len - c->out_off;
			flush(c);
			if (before == 0 || c->out_len - c->out_off == before)
				break;
		}
	} while (c->pump_again && c->state != CS_DEAD);
	c->in_pump = false;
}

/* ---- replies ---- */

static bool ok2(const struct smtp_reply *r)
{
	return r->code >= 200 && r->code < 300;
}

static void on_txn_reply(struct smtp_client *c, struct pend p, const struct smtp_reply *r)
{
	struct txn *t = p.slot < TXN_SLOTS ? &c->tx[p.slot] : NULL;

	if (!t || !t->m || !t->pending) {
		protocol_error(c, "reply outside a transaction");
		return;
	}
	t->pending--;
	switch (p.kind) {
	case X_MAIL:
		t->mail = *r;
		if (!ok2(r)) {
			t->mail_failed = true;
			t->abandon = true;
			if (!t->pipelined)
				t->gen = G_NONE;
		} else if (!t->pipelined) {
			t->gen = G_RCPT;
		}
		break;
	case X_RCPT: {
		if (p.idx >= t->m->rcpt_count) {
			protocol_error(c, "recipient index");
			return;
		}
		t->res[p.idx].rcpt = *r;
		if (ok2(r) && !t->mail_failed)
			t->accepted++;
		bool more = t->next_rcpt < t->m->rcpt_count;
		if (!t->pipelined && !t->abandon) {
			if (more)
				t->gen = G_RCPT;
			else if (t->accepted)
				t->gen = gen_after_envelope(t);
			else
				t->gen = G_NONE;
			t->abandon = t->gen == G_NONE;
		} else if (t->pipelined && next_sendable(t, p.idx + 1) >= t->m->rcpt_count &&
			   t->accepted == 0) {
			t->abandon = true; /* DATA/BDAT is refused too (RFC 2920 3.1) */
		}
		break;
	}
	case X_DATA:
		if (r->code == 354) {
			t->gen = (t->abandon || t->accepted == 0) ? G_DISCARD_DOT : G_DATA_BODY;
			if (t->gen == G_DISCARD_DOT)
				t->abandon = true;
		} else {
			if (!t->has_final && t->accepted) {
				t->final = *r;
				t->has_final = true;
			}
			t->abandon = true;
			t->gen = G_NONE;
		}
		break;
	case X_BDAT:
	case X_BDAT_LAST:
		if (t->bdat_outstanding)
			t->bdat_outstanding--;
		if (!ok2(r)) {
			if (!t->has_final && t->accepted) {
				t->final = *r;
				t->has_final = true;
			}
			t->abandon = true;
		} else if (p.kind == X_BDAT_LAST && !t->abandon) {
			t->final = *r;
			t->has_final = true;
			t->complete = true;
		} else if (!t->abandon && t->gen == G_WAIT) {
			t->gen = G_BDAT_HDR;
		}
		break;
	case X_DOT:
		if (t->dot_discard) {
			t->abandon = true;
		} else {
			t->final = *r;
			t->has_final = true;
			t->complete = true;
		}
		break;
	case X_RSET:
		/* the RSET a pipelined transaction starts with (start_txn): 2xx or the
		 * session is in a state we do not know */
		if (!ok2(r)) {
			fail(c, r);
			return;
		}
		break;
	default:
		protocol_error(c, "unexpected reply");
		return;
	}
	while (c->state != CS_DEAD && txn_settled(c))
		finish_txn(c);
}

static void on_reply(struct smtp_client *c, const struct smtp_reply *r)
{
	if (c->q_len == 0) {
		/* RFC 5321 3.8: a server may say 421 at any time */
		if (r->code == 421)
			fail(c, r);
		else
			protocol_error(c, "unsolicited reply");
		return;
	}
	struct pend p = q_pop(c);

	if (p.kind == X_QUIT) {
		fail(c, r); /* state CS_QUIT: reported as closed */
		return;
	}
	if (r->code == 421) {
		fail(c, r);
		return;
	}
	/* 3xx answers DATA and AUTH steps only, and those never get 2xx: anything else
	 * means client and server disagree about where they are in the dialogue */
	bool want3 = p.kind == X_DATA || p.kind == X_AUTH_USER || p.kind == X_AUTH_PASS;
	bool is3 = r->code >= 300 && r->code < 400;
	if (is3 != want3 && !(want3 && r->code >= 400)) {
		protocol_error(c, "unexpected reply code");
		return;
	}
	switch (p.kind) {
	case X_GREETING:
		if (r->code != 220) {
			/* RFC 5321 3.1: 554 greeting, or anything but 220 */
			fail(c, r);
			return;
		}
		send_ehlo(c, false);
		break;
	case X_EHLO:
		if (ok2(r)) {
			c->caps.esmtp = true;
			after_ehlo(c);
		} else if (r->code >= 500) {
			c->st->helo_fallbacks++;
			send_ehlo(c, true);
		} else {
			fail(c, r);
		}
		break;
	case X_HELO:
		if (!ok2(r)) {
			fail(c, r);
			return;
		}
		memset(&c->caps, 0, sizeof(c->caps));
		after_ehlo(c);
		break;
	case X_STARTTLS:
		if (r->code == 220) {
			c->state = CS_TLS_WAIT;
			c->in_cb++;
			if (c->cb->starttls)
				c->cb->starttls(c->user);
			c->in_cb--;
		} else if (c->conf->tls == SMTP_CLIENT_TLS_REQUIRED) {
			fail(c, r);
		} else {
			c->tls_refused = true;
			after_ehlo(c);
		}
		break;
	case X_AUTH:
		if (r->code == 235) {
			c->authed = true;
			c->st->auth_success++;
			become_ready(c);
		} else {
			c->st->auth_failures++;
			fail(c, r);
		}
		break;
	case X_AUTH_USER:
	case X_AUTH_PASS:
		if (r->code != 334) {
			c->st->auth_failures++;
			fail(c, r);
			return;
		}
		if (p.kind == X_AUTH_USER)
			send_b64(c, (const uint8_t *)c->conf->auth_user, strlen(c->conf->auth_user),
				 "", X_AUTH_PASS);
		else
			send_b64(c, (const uint8_t *)c->conf->auth_pass, strlen(c->conf->auth_pass),
				 "", X_AUTH);
		break;
	case X_RSET:
		if (p.slot != NO_SLOT) {
			on_txn_reply(c, p, r);
			break;
		}
		if (!ok2(r)) {
			fail(c, r);
			return;
		}
		if (c->state == CS_RSET)
			c->state = CS_IDLE;
		break;
	default:
		on_txn_reply(c, p, r);
		break;
	}
}

static uint64_t current_timeout(const struct smtp_client *c)
{
	const struct smtp_client_conf *f = c->conf;

	switch (c->state) {
	case CS_NEW:
	case CS_IDLE:
	case CS_DEAD:
		return 0;
	case CS_TLS_WAIT:
		return f->timeout_helo_us;
	default:
		break;
	}
	const struct txn *t =
		c->tx_count ? &c->tx[(c->tx_head + c->tx_count - 1) % TXN_SLOTS] : NULL;
	if (c->state == CS_TXN && t &&
	    (t->gen == G_DATA_BODY || t->gen == G_BDAT_BODY || t->gen == G_DATA_END ||
	     t->gen == G_BDAT_HDR))
		return f->timeout_data_xfer_us;
	if (c->q_len == 0)
		return c->state == CS_TXN ? f->timeout_data_xfer_us : 0;
	if (c->out_off < c->out_len)
		return c->state == CS_TXN ? f->timeout_data_xfer_us : f->timeout_helo_us;
	switch (c->q[c->q_head].kind) {
	case X_GREETING:
		return f->timeout_greeting_us;
	case X_MAIL:
		return f->timeout_mail_us;
	case X_RCPT:
		return f->timeout_rcpt_us;
	case X_DATA:
		return f->timeout_data_init_us;
	case X_BDAT:
		return f->timeout_data_xfer_us;
	case X_BDAT_LAST:
	case X_DOT:
		return f->timeout_data_done_us;
	case X_RSET:
		return f->timeout_rset_us;
	case X_QUIT:
		return f->timeout_quit_us;
	default:
		return f->timeout_helo_us;
	}
}

/* ---- public API ---- */

int smtp_client_new(const struct smtp_client_conf *conf, const struct smtp_client_cb *cb,
		    void *user, struct smtp_client_stats *stats, struct smtp_client **out)
{
	struct smtp_client *c;

	if (!conf || !cb || !cb->send || !stats || !out ||
	    smtp_client_conf_check(conf, NULL, 0) < 0)
		return -EINVAL;
	if (conf->tls != SMTP_CLIENT_TLS_NONE && !cb->starttls)
		return -EINVAL;
	/*
	 * Written whole, not calloc'ed: a calloc of fresh pages leaves them
	 * untouched (jemalloc and glibc know they are zero), and the client's
	 * buffers (~24 KiB) then fault in page by page at its first
	 * transaction, on the poll loop.  A load generator that makes its
	 * clients ahead of the load (mxgen --prewarm) had 69% of its first
	 * 0.5 s at 100k connections/s in those faults, and fell behind.
	 */
	c = mx_malloc_written(sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->q_cap = (size_t)conf->max_recipients + conf->max_bdat_in_flight + 8;
	c->q = mx_malloc_written(c->q_cap * sizeof(*c->q));
	if (!c->q) {
		free(c);
		return -ENOMEM;
	}
	c->conf = conf;
	c->cb = cb;
	c->user = user;
	c->st = stats;
	c->state = CS_NEW;
	smtp_reply_parser_init(&c->rp);
	stats->sessions++;
	*out = c;
	return 0;
}

void smtp_client_free(struct smtp_client *c)
{
	if (!c)
		return;
	if (c->state != CS_DEAD && (c->tx_count || c->wait_count)) {
		c->quit_requested = false;
		fail_synth(c, 421, "4.4.2", "Session closed by the relay");
	}
	free(c->q);
	for (unsigned i = 0; i < TXN_SLOTS; i++) {
		free(c->tx[i].res);
		free(c->tx[i].skip);
	}
	free(c);
}

int smtp_client_reuse(struct smtp_client *c, void *user)
{
	if (c->in_cb)
		return -EBUSY;
	if (c->state != CS_DEAD && (c->tx_count || c->wait_count)) {
		c->quit_requested = false;
		fail_synth(c, 421, "4.4.2", "Session closed by the relay");
	}
	/*
	 * What smtp_client_new leaves zero, field by field; the transaction
	 * slots keep their result arrays (start_txn clears the rest of a slot)
	 * and the buffers' contents are dead once their offsets are zero.
	 */
	memset(&c->state, 0, offsetof(struct smtp_client, q) - offsetof(struct smtp_client, state));
	c->q_head = c->q_len = 0;
	c->wait_head = c->wait_count = 0;
	c->tx_head = c->tx_count = 0;
	c->out_off = c->out_len = 0;
	c->user = user;
	c->state = CS_NEW;
	smtp_reply_parser_init(&c->rp);
	c->st->sessions++;
	return 0;
}

void smtp_client_start(struct smtp_client *c, bool tls_active)
{
	if (c->state != CS_NEW)
		return;
	c->tls = tls_active;
	c->state = CS_SETUP;
	c->last_progress = now_us(c);
	q_push(c, X_GREETING, 0);
}

int smtp_client_input(struct smtp_client *c, const uint8_t *p, size_t n)
{
	size_t i = 0;

	if (c->state == CS_DEAD)
		return -EPIPE;
	c->st->bytes_in += n;
	if (n)
		c->last_progress = now_us(c);
	while (i < n && c->state != CS_DEAD) {
		size_t used = 0;

		if (c->state == CS_TLS_WAIT || c->state == CS_NEW) {
			/* RFC 3207 / CVE-2011-0411: nothing may follow the 220 in plaintext */
			protocol_error(c, c->state == CS_NEW ? "input before start"
							     : "plaintext after STARTTLS 220");
			break;
		}
		int rc = smtp_reply_parse(&c->rp, p + i, n - i, &used);
		i += used;
		if (rc < 0) {
			protocol_error(c, rc == -EMSGSIZE ? "reply too long" : "malformed reply");
			break;
		}
		if (rc == SMTP_REPLY_MORE)
			break;
		const struct smtp_reply *r = &c->rp.reply;
		/* EHLO keywords, line by line: the reply is never kept whole */
		if (c->q_len && c->q[c->q_head].kind == X_EHLO && r->code == 250 && r->lines > 1)
			ehlo_keyword(c, c->rp.line_text, c->rp.line_text_len);
		if (rc == SMTP_REPLY_DONE) {
			/* r lives in the parser, which the next bytes reuse: copy */
			struct smtp_reply copy = *r;
			on_reply(c, &copy);
			/* a callback may have started another message; keep the output going */
			pump(c);
		}
	}
	pump(c);
	return c->state == CS_DEAD ? -EPIPE : 0;
}

void smtp_client_writable(struct smtp_client *c)
{
	if (c->state != CS_DEAD)
		pump(c);
}

void smtp_client_tls_started(struct smtp_client *c)
{
	if (c->state != CS_TLS_WAIT)
		return;
	c->tls = true;
	c->st->starttls++;
	c->state = CS_SETUP;
	c->last_progress = now_us(c);
	smtp_reply_parser_init(&c->rp);
	/* RFC 3207 4.2: forget what the server said before TLS */
	send_ehlo(c, false);
	pump(c);
}

int smtp_client_send_message(struct smtp_client *c, const struct smtp_client_msg *m)
{
	if (c->state == CS_DEAD || c->state == CS_QUIT || c->quit_requested)
		return -EPIPE;
	if (!m || !m->sender || !m->rcpts || m->rcpt_count == 0 ||
	    m->rcpt_count > c->conf->max_recipients || !m->body_read)
		return -EINVAL;
	for (size_t i = 0; i < m->rcpt_count; i++)
		if (!m->rcpts[i].addr)
			return -EINVAL;
	/* At most depth() (1 without PIPELINING) started or waiting to start. */
	if (c->tx_count + c->wait_count >= depth(c))
		return -EBUSY;
	c->waiting[(c->wait_head + c->wait_count) % SMTP_CLIENT_TXNS_MAX] = m;
	c->wait_count++;
	if (!c->in_cb)
		pump(c);
	return 0;
}

void smtp_client_quit(struct smtp_client *c)
{
	if (c->state == CS_DEAD || c->quit_requested)
		return;
	c->quit_requested = true;
	if (c->state == CS_NEW || c->state == CS_SETUP || c->state == CS_TLS_WAIT) {
		/* nothing was sent yet that needs a clean end: just close */
		c->state = CS_QUIT;
		fail_synth(c, 221, "2.0.0", "closed before the session was ready");
		return;
	}
	if (!c->in_cb)
		pump(c);
}

void smtp_client_abort(struct smtp_client *c, const char *why)
{
	fail_synth(c, 421, "4.4.2", why ? why : "Connection lost");
}

uint64_t smtp_client_deadline(const struct smtp_client *c)
{
	uint64_t t = current_timeout(c);

	return t ? c->last_progress + t : UINT64_MAX;
}

void smtp_client_timeout(struct smtp_client *c)
{
	if (c->state == CS_DEAD)
		return;
	c->st->timeouts++;
	fail_synth(c, 421, "4.4.2", "Timeout waiting for the server");
}

bool smtp_client_is_ready(const struct smtp_client *c)
{
	return c->state == CS_IDLE && !c->wait_count && !c->quit_requested;
}

bool smtp_client_is_dead(const struct smtp_client *c)
{
	return c->state == CS_DEAD;
}

bool smtp_client_tls_active(const struct smtp_client *c)
{
	return c->tls;
}

const struct smtp_client_caps *smtp_client_caps(const struct smtp_client *c)
{
	return &c->caps;
}

unsigned smtp_client_txn_depth(const struct smtp_client *c)
{
	return depth(c);
}
