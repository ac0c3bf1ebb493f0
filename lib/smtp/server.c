/*
 * server.c - the SMTP server session: an incremental state machine over the
 * bytes of one connection.
 *
 * Use: smtp_session_new(), smtp_session_start() (greeting), then
 * smtp_session_input() for every received segment; replies come out through
 * cb->send(), message content through cb->message_data().  Input is consumed
 * as it arrives: a command line is kept (bounded by max_command_line) until
 * its LF, message content is never kept, it is unstuffed and streamed.  Only
 * while a commit is pending (between cb->message_end and
 * smtp_session_message_done) is input buffered, bounded by max_pending_input.
 *
 * Replies are accumulated and sent in one cb->send() when the input given is
 * drained or at a sync point (354, STARTTLS, close, commit wait): RFC 2920.
 *
 * Safety rules implemented here (tests in tests/smtp/test_smtp.c):
 * - only CR LF "." CR LF ends DATA; a bare CR or LF in content rejects the
 *   message (550 5.6.2) or is normalised to CRLF without ever ending DATA or
 *   unstuffing (SMTP smuggling, CVE-2023-51764);
 * - bytes pipelined after STARTTLS are discarded, never answered (CVE-2011-0411);
 * - a recipient outside local/relay domains needs a trusted client (allow_networks
 *   or AUTH); %-hack, !-paths and quoted '@' in local parts are refused for
 *   untrusted clients; source routes are dropped (RFC 5321 4.1.2 / Appendix C).
 */
#include "smtp.h"
#include "core.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

/*
 * Under AddressSanitizer a cached object is poisoned while it waits for
 * reuse, so a use after free is still reported although the memory is not
 * given back to the allocator.
 */
#if defined(__SANITIZE_ADDRESS__)
#define SMTP_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SMTP_ASAN 1
#endif
#endif
#ifdef SMTP_ASAN
#include <sanitizer/asan_interface.h>
#define SMTP_POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define SMTP_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define SMTP_POISON(p, n) ((void)(p), (void)(n))
#define SMTP_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

#define OUT_BUF 4096
#define DATA_BUF 4096

enum state {
	ST_CMD,
	ST_AUTH,	/* waiting for an AUTH continuation line */
	ST_DATA,	/* inside DATA, until CRLF.CRLF */
	ST_BDAT,	/* inside a BDAT chunk */
	ST_WAIT_COMMIT, /* message_end called, waiting for message_done */
	ST_TLS_PENDING, /* 220 for STARTTLS sent, waiting for tls_started */
};

enum auth_step { AUTH_PLAIN, AUTH_LOGIN_USER, AUTH_LOGIN_PASS };

/* Content filter states; see feed_content(). */
enum dstate { D_BOL, D_MID, D_CR, D_DOT, D_DOT_CR };

struct smtp_session {
	const struct smtp_server_conf *conf;
	const struct smtp_server_cb *cb;
	void *user;
	struct smtp_server_stats *st;
	uint32_t client_ip;
	uint64_t session_id;
	unsigned txn_seq;

	enum state state;
	bool closed;
	bool helo_seen, esmtp, tls, authenticated, trusted_net;
	bool in_input; /* inside input processing: message_done must not recurse */
	char tls_version[32];
	char tls_cipher[96];
	char auth_user[SMTP_PATH_MAX + 1];
	unsigned errors, auth_failures;
	uint64_t last_activity;

	/* command line, bounded by conf->max_command_line */
	char *line;
	size_t line_len;
	bool line_overflow;
	uint8_t *scratch; /* decoded AUTH data, same bound */

	enum auth_step auth_step;
	char auth_login_user[SMTP_PATH_MAX + 1];

	/* transaction */
	bool in_mail;
	struct smtp_envelope env;
	size_t rejected_rcpts;
	size_t rcpt_cap; /* env.rcpts grows on demand up to max_recipients */
	bool msg_open;	 /* message_begin called and neither end nor abort yet */
	bool bdat_used;
	bool msg_failed;
	enum smtp_reject msg_fail_reason;
	enum dstate dst;
	size_t text_line_len;
	uint64_t msg_bytes;

	/* BDAT chunk in progress */
	uint64_t bdat_left;
	bool bdat_last;
	bool bdat_discard; /* no valid transaction: consume and answer bdat_err */
	bool bdat_no_rcpt;

	size_t out_len;
	size_t dbuf_len;
	uint8_t *pending;
	size_t pending_len;
	bool pending_nomem;

	/*
	 * Kept across reuse from a struct smtp_session_pool (see session_init):
	 * everything above is cleared for a new connection, nothing below.
	 */
	size_t line_cap;		/* bytes of line and of scratch (>= max_command_line) */
	struct smtp_session *pool_next; /* in the pool's free list */
	uint8_t out[OUT_BUF];
	uint8_t dbuf[DATA_BUF];
};

static const char *const verb_names[SMTP_VERB_COUNT] = {
	"HELO", "EHLO", "MAIL", "RCPT", "DATA",	    "BDAT", "RSET",
	"NOOP", "QUIT", "VRFY", "HELP", "STARTTLS", "AUTH", "unknown",
};

static const char *const reject_names[SMTP_REJ_COUNT] = {
	[SMTP_REJ_SYNTAX] = "syntax",
	[SMTP_REJ_UNKNOWN_COMMAND] = "unknown_command",
	[SMTP_REJ_LINE_TOO_LONG] = "line_too_long",
	[SMTP_REJ_BAD_SEQUENCE] = "bad_sequence",
	[SMTP_REJ_BAD_PARAM] = "bad_param",
	[SMTP_REJ_BAD_ADDRESS] = "bad_address",
	[SMTP_REJ_NEED_SMTPUTF8] = "need_smtputf8",
	[SMTP_REJ_RELAY_DENIED] = "relay_denied",
	[SMTP_REJ_TOO_MANY_RCPTS] = "too_many_rcpts",
	[SMTP_REJ_SIZE_DECLARED] = "size_declared",
	[SMTP_REJ_SIZE_EXCEEDED] = "size_exceeded",
	[SMTP_REJ_BARE_EOL] = "bare_eol",
	[SMTP_REJ_TEXT_LINE_TOO_LONG] = "text_line_too_long",
	[SMTP_REJ_NO_RCPTS] = "no_rcpts",
	[SMTP_REJ_OVERLOAD] = "overload",
	[SMTP_REJ_AUTH_REQUIRED] = "auth_required",
	[SMTP_REJ_ENCRYPTION_REQUIRED] = "encryption_required",
	[SMTP_REJ_AUTH_FAILED] = "auth_failed",
	[SMTP_REJ_AUTH_TEMP] = "auth_temp",
	[SMTP_REJ_AUTH_CANCELLED] = "auth_cancelled",
	[SMTP_REJ_AUTH_TOO_MANY] = "auth_too_many",
	[SMTP_REJ_TOO_MANY_ERRORS] = "too_many_errors",
	[SMTP_REJ_TIMEOUT] = "timeout",
	[SMTP_REJ_COMMIT_FAILED] = "commit_failed",
	[SMTP_REJ_NOT_AVAILABLE] = "not_available",
};

const char *smtp_verb_name(enum smtp_verb v)
{
	return (unsigned)v < SMTP_VERB_COUNT ? verb_names[v] : "?";
}

const char *smtp_reject_name(enum smtp_reject r)
{
	return (unsigned)r < SMTP_REJ_COUNT ? reject_names[r] : "?";
}

/* ---- configuration ------------------------------------------------------------ */

void smtp_server_conf_defaults(struct smtp_server_conf *c)
{
	memset(c, 0, sizeof(*c));
	c->hostname = "localhost";
	c->listener = SMTP_LISTENER_RELAY;
	c->max_command_line = 512;
	c->max_text_line = 1000;
	c->max_message_size = 10u << 20;
	c->max_recipients = 100;
	c->max_errors = 20;
	c->max_auth_failures = 3;
	c->max_pending_input = 16u << 10;
	c->timeout_command_us = 300ull * 1000000;
	c->timeout_data_us = 180ull * 1000000;
	c->bare_eol = SMTP_BARE_EOL_REJECT;
	c->long_line = SMTP_LONG_LINE_REJECT;
}

int smtp_server_conf_check(const struct smtp_server_conf *c, char *err, size_t errlen)
{
	const char *msg = NULL;

	if (c->hostname == NULL || smtp_domain_valid(c->hostname, strlen(c->hostname), false) < 0)
		msg = "hostname is not a valid domain";
	else if (c->max_command_line < 512 || c->max_command_line > 65536)
		msg = "max_command_line must be 512..65536 (RFC 5321 4.5.3.1.4)";
	else if (c->max_text_line < 1000)
		msg = "max_text_line must be >= 1000 (RFC 5321 4.5.3.1.6)";
	else if (c->max_recipients < 100 || c->max_recipients > 100000)
		msg = "max_recipients must be 100..100000 (RFC 5321 4.5.3.1.8)";
	else if (c->max_message_size == 0)
		msg = "max_message_size must be > 0";
	else if (c->max_errors == 0 || c->max_auth_failures == 0)
		msg = "max_errors and max_auth_failures must be > 0";
	else if (c->max_pending_input < c->max_command_line)
		msg = "max_pending_input must be >= max_command_line";
	else if (c->timeout_command_us == 0 || c->timeout_data_us == 0)
		msg = "timeouts must be > 0";
	else if ((c->allow_network_count && !c->allow_networks) ||
		 (c->local_domain_count && !c->local_domains) ||
		 (c->relay_domain_count && !c->relay_domains))
		msg = "list count without list";
	for (size_t i = 0; msg == NULL && i < c->allow_network_count; i++)
		if (c->allow_networks[i].len > 32)
			msg = "allow_networks prefix length > 32";
	if (msg) {
		if (err && errlen)
			snprintf(err, errlen, "%s", msg);
		return -EINVAL;
	}
	return 0;
}

int smtp_server_format_busy_greeting(char *buf, size_t len, const char *hostname)
{
	int n = snprintf(buf, len, "421 4.3.2 %s Service not available, closing channel\r\n",
			 hostname);
	if (n < 0 || (size_t)n >= len)
		return -ENOSPC;
	return n;
}

/* ---- output ---------------------------------------------------------------------- */

static uint64_t now_us(const struct smtp_session *s)
{
	return s->conf->now_us ? s->conf->now_us() : mx_now_us();
}

static void flush(struct smtp_session *s)
{
	if (s->out_len == 0)
		return;
	s->st->bytes_out += s->out_len;
	s->cb->send(s->user, s->out, s->out_len);
	s->out_len = 0;
}

/* Append one reply line; counts the reply class on the last line ("ddd "). */
#define REPLY_MAX 509 /* text of one reply line, without its CRLF */

/* Append one reply line of n bytes (<= REPLY_MAX); counts the class on the last line. */
static void reply_line(struct smtp_session *s, const char *line, size_t n)
{
	if (s->out_len + n + 2 > sizeof(s->out))
		flush(s);
	memcpy(s->out + s->out_len, line, n);
	s->out_len += n;
	s->out[s->out_len++] = '\r';
	s->out[s->out_len++] = '\n';
	if (n >= 3 && (n == 3 || line[3] != '-')) {
		switch (line[0]) {
		case '2':
			s->st->replies_2xx++;
			break;
		case '3':
			s->st->replies_3xx++;
			break;
		case '4':
			s->st->replies_4xx++;
			break;
		default:
			s->st->replies_5xx++;
			break;
		}
	}
}

static void reply(struct smtp_session *s, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void reply(struct smtp_session *s, const char *fmt, ...)
{
	char buf[REPLY_MAX + 3];
	va_list ap;
	int n;

	if (s->closed)
		return;
	if (strchr(fmt, '%') == NULL) {
		/* Most replies are constant text: no formatting. */
		size_t len = strlen(fmt);
		reply_line(s, fmt, len < REPLY_MAX ? len : REPLY_MAX);
		return;
	}
	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf) - 2, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	reply_line(s, buf, (size_t)n < REPLY_MAX ? (size_t)n : REPLY_MAX);
}

/*
 * The replies of every message that carry a variable (greeting, EHLO, "queued
 * as"): pieces joined by copying, as reply() would print them, without printf.
 */
static void reply_cat(struct smtp_session *s, const char *a, const char *b, const char *c)
{
	char buf[REPLY_MAX];
	size_t n = 0;

	if (s->closed)
		return;
	for (const char *part[3] = {a, b, c}, **p = part; p < part + 3; p++) {
		size_t k = strlen(*p);
		if (k > REPLY_MAX - n)
			k = REPLY_MAX - n;
		memcpy(buf + n, *p, k);
		n += k;
	}
	reply_line(s, buf, n);
}

/* Decimal text of v (buf of at least MX_U64_DEC_MAX + 1 bytes). */
static const char *u64_text(char *buf, uint64_t v)
{
	buf[mx_u64_dec(v, buf)] = '\0';
	return buf;
}

static void reset_transaction(struct smtp_session *s);

static void do_close(struct smtp_session *s)
{
	if (s->closed)
		return;
	flush(s);
	if (s->msg_open) {
		s->msg_open = false;
		s->st->messages_aborted++;
		if (s->cb->message_abort)
			s->cb->message_abort(s->user);
	}
	s->closed = true;
	if (s->cb->close)
		s->cb->close(s->user);
}

/* Server-side conditions that are not the client's fault do not count as errors. */
static bool counts_as_error(enum smtp_reject r)
{
	switch (r) {
	case SMTP_REJ_OVERLOAD:
	case SMTP_REJ_COMMIT_FAILED:
	case SMTP_REJ_TIMEOUT:
	case SMTP_REJ_AUTH_TOO_MANY:
	case SMTP_REJ_TOO_MANY_ERRORS:
	case SMTP_REJ_AUTH_TEMP:
		return false;
	default:
		return true;
	}
}

/* A rejection: the reply, its per-reason counter, and the session error limit. */
static void reject(struct smtp_session *s, enum smtp_reject r, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void reject(struct smtp_session *s, enum smtp_reject r, const char *fmt, ...)
{
	char buf[400];
	va_list ap;

	if (s->closed)
		return;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	reply(s, "%s", buf);
	s->st->rejects[r]++;
	MX_DEBUG("smtp %" PRIx64 ": %s: %s", s->session_id, reject_names[r], buf);
	if (counts_as_error(r) && ++s->errors >= s->conf->max_errors) {
		reply(s, "421 4.7.0 %s Error: too many errors", s->conf->hostname);
		s->st->rejects[SMTP_REJ_TOO_MANY_ERRORS]++;
		do_close(s);
	}
}

/* ---- message content ------------------------------------------------------------ */

static void dflush(struct smtp_session *s)
{
	if (s->dbuf_len == 0)
		return;
	if (s->msg_open && !s->msg_failed && s->cb->message_data)
		s->cb->message_data(s->user, s->dbuf, s->dbuf_len);
	s->dbuf_len = 0;
}

static void dappend(struct smtp_session *s, const void *p, size_t n)
{
	const uint8_t *b = p;

	while (n > 0) {
		if (s->dbuf_len == sizeof(s->dbuf))
			dflush(s);
		size_t k = sizeof(s->dbuf) - s->dbuf_len;
		if (k > n)
			k = n;
		memcpy(s->dbuf + s->dbuf_len, b, k);
		s->dbuf_len += k;
		b += k;
		n -= k;
	}
}

/* Drop the message being streamed; the reason is answered at the end of data. */
static void msg_fail(struct smtp_session *s, enum smtp_reject r)
{
	if (s->msg_failed)
		return;
	/* What came before the fault goes out first, so the callbacks are the same
	 * however the input was segmented. */
	dflush(s);
	s->msg_failed = true;
	s->msg_fail_reason = r;
	if (s->msg_open) {
		s->msg_open = false;
		s->st->messages_aborted++;
		if (s->cb->message_abort)
			s->cb->message_abort(s->user);
	}
}

/* Message content: counted against max_message_size while streaming. */
static void demit(struct smtp_session *s, const void *p, size_t n)
{
	if (s->msg_failed)
		return;
	if (s->msg_bytes + n > s->conf->max_message_size) {
		/* stream exactly up to the limit, whatever the segmentation */
		size_t fit = (size_t)(s->conf->max_message_size - s->msg_bytes);
		s->msg_bytes += fit;
		s->st->message_bytes += fit;
		dappend(s, p, fit);
		msg_fail(s, SMTP_REJ_SIZE_EXCEEDED);
		return;
	}
	s->msg_bytes += n;
	s->st->message_bytes += n;
	dappend(s, p, n);
}

static void line_add(struct smtp_session *s, size_t n)
{
	s->text_line_len += n;
	/* RFC 5321 4.5.3.1.6: 1000 octets including CRLF */
	if (s->text_line_len > s->conf->max_text_line - 2 &&
	    s->conf->long_line == SMTP_LONG_LINE_REJECT)
		msg_fail(s, SMTP_REJ_TEXT_LINE_TOO_LONG);
}

/*
 * A bare CR or LF (RFC 5321 2.3.8).  Reject: the message is dropped and we
 * stay "inside a line", so only a real CRLF.CRLF can end DATA.  Normalise:
 * emit CRLF, but the next line starts as D_MID: a dot there is neither
 * unstuffed nor a terminator, so "\n.\n" cannot end DATA either way.
 */
static void bare_eol(struct smtp_session *s, const char *before)
{
	if (s->conf->bare_eol == SMTP_BARE_EOL_REJECT) {
		msg_fail(s, SMTP_REJ_BARE_EOL);
	} else {
		demit(s, before, strlen(before));
		demit(s, "\r\n", 2);
	}
	s->dst = D_MID;
	s->text_line_len = 0;
}

/*
 * Filter message content: dot-unstuffing when dot_mode (DATA), CRLF checks,
 * line lengths.  Returns bytes consumed; *ended when CRLF.CRLF was seen (the
 * CRLF before the dot belongs to the message, RFC 5321 4.1.1.4).
 */
static size_t feed_content(struct smtp_session *s, const uint8_t *p, size_t n, bool dot_mode,
			   bool *ended)
{
	size_t i = 0;

	*ended = false;
	while (i < n) {
		uint8_t c = p[i];

		switch (s->dst) {
		case D_MID:
			if (c == '\r') {
				s->dst = D_CR;
				i++;
			} else if (c == '\n') {
				bare_eol(s, "");
				i++;
			} else {
				/* the run up to the next CR or LF; memchr is vectorised */
				const uint8_t *cr = memchr(p + i, '\r', n - i);
				size_t lim = cr ? (size_t)(cr - p) : n;
				const uint8_t *lf = memchr(p + i, '\n', lim - i);
				size_t j = lf ? (size_t)(lf - p) : lim;
				size_t run = j - i, room = s->conf->max_text_line - 2;
				/* emit exactly up to the line limit, whatever the segmentation */
				room = s->text_line_len < room ? room - s->text_line_len : 0;
				if (run > room && s->conf->long_line == SMTP_LONG_LINE_REJECT)
					demit(s, p + i, room);
				else
					demit(s, p + i, run);
				line_add(s, run);
				i = j;
			}
			break;
		case D_BOL:
			if (dot_mode && c == '.') {
				s->dst = D_DOT;
				line_add(s, 1);
				i++;
			} else {
				s->dst = D_MID;
			}
			break;
		case D_CR:
			if (c == '\n') {
				demit(s, "\r\n", 2);
				s->dst = D_BOL;
				s->text_line_len = 0;
				i++;
			} else {
				bare_eol(s, ""); /* reprocess c as the start of a raw line */
			}
			break;
		case D_DOT:
			if (c == '\r') {
				s->dst = D_DOT_CR;
				i++;
			} else if (c == '\n') {
				bare_eol(s, ".");
				i++;
			} else {
				s->dst = D_MID; /* the stuffed dot is dropped (4.5.2) */
			}
			break;
		case D_DOT_CR:
			if (c == '\n') {
				*ended = true;
				return i + 1;
			}
			bare_eol(s, ".");
			break;
		}
	}
	return i;
}

/* RFC 5322 3.3 date-time, for the Received: line; the text changes once a second. */
static void format_date(char *buf, size_t len, int64_t t)
{
	static const char *const days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
	static const char *const months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
					     "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
	static __thread int64_t cached_t = -1;
	static __thread char cached[40];
	time_t tt = (time_t)t;
	struct tm tm;

	if (t != cached_t) {
		if (gmtime_r(&tt, &tm) == NULL || tm.tm_wday < 0 || tm.tm_wday > 6 ||
		    tm.tm_mon < 0 || tm.tm_mon > 11)
			snprintf(cached, sizeof(cached), "Thu, 1 Jan 1970 00:00:00 +0000");
		else
			snprintf(cached, sizeof(cached), "%s, %d %s %04d %02d:%02d:%02d +0000",
				 days[tm.tm_wday], tm.tm_mday, months[tm.tm_mon],
				 tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
		cached_t = t;
	}
	/* once per message: a copy, not a printf */
	size_t n = strlen(cached);
	if (len == 0)
		return;
	if (n >= len)
		n = len - 1;
	memcpy(buf, cached, n);
	buf[n] = '\0';
}

/* A bounded text builder for header lines: appends, truncates at the end, never formats. */
struct hbuf {
	char *p;
	size_t n, cap;
};

static void hb_str(struct hbuf *h, const char *str)
{
	size_t len = strlen(str);
	if (len > h->cap - h->n)
		len = h->cap - h->n;
	memcpy(h->p + h->n, str, len);
	h->n += len;
}

static void hb_u8(struct hbuf *h, unsigned v)
{
	char d[3];
	int k = 0;
	do
		d[k++] = (char)('0' + v % 10);
	while ((v /= 10) != 0 && k < 3);
	while (k > 0 && h->n < h->cap)
		h->p[h->n++] = d[--k];
}

/* RFC 5321 4.4 trace line; RFC 3848 protocol names. */
static void emit_received(struct smtp_session *s)
{
	char hdr[2048], date[64];
	struct hbuf h = {.p = hdr, .cap = sizeof(hdr)};
	const char *proto;
	uint32_t ip = s->client_ip;

	if (!s->esmtp)
		proto = "SMTP";
	else if (s->tls && s->authenticated)
		proto = "ESMTPSA";
	else if (s->tls)
		proto = "ESMTPS";
	else if (s->authenticated)
		proto = "ESMTPA";
	else
		proto = "ESMTP";
	format_date(date, sizeof(date), s->conf->wall_s ? s->conf->wall_s() : mx_wall_s());
	hb_str(&h, "Received: from ");
	hb_str(&h, s->env.helo);
	hb_str(&h, " ([");
	for (int shift = 24; shift >= 0; shift -= 8) {
		hb_u8(&h, (ip >> shift) & 255);
		hb_str(&h, shift ? "." : "])\r\n");
	}
	if (s->tls) {
		hb_str(&h, "\t(using ");
		hb_str(&h, s->tls_version[0] ? s->tls_version : "TLS");
		hb_str(&h, " with cipher ");
		hb_str(&h, s->tls_cipher[0] ? s->tls_cipher : "unknown");
		hb_str(&h, ")\r\n");
	}
	hb_str(&h, "\tby ");
	hb_str(&h, s->conf->hostname);
	hb_str(&h, " (mxrelay) with ");
	hb_str(&h, proto);
	hb_str(&h, " id ");
	hb_str(&h, s->env.id);
	if (s->env.rcpt_count == 1) {
		hb_str(&h, "\r\n\tfor <");
		hb_str(&h, s->env.rcpts[0].addr.text);
		hb_str(&h, ">; ");
	} else {
		hb_str(&h, ";\r\n\t");
	}
	hb_str(&h, date);
	hb_str(&h, "\r\n");
	/* A line cut short by the bound is not a header: leave it out, as before. */
	if (h.n < h.cap)
		dappend(s, hdr, h.n);
}

void smtp_session_set_queue_id(struct smtp_session *s, const char *id)
{
	size_t n = 0;
	/* Into Received: only what a queue id is made of. */
	for (; id[n] && n + 1 < sizeof(s->env.id); n++)
		if (!((id[n] >= '0' && id[n] <= '9') || (id[n] >= 'A' && id[n] <= 'Z') ||
		      (id[n] >= 'a' && id[n] <= 'z')))
			return;
	if (n == 0 || id[n] != '\0')
		return;
	memcpy(s->env.id, id, n + 1);
}

static void begin_message(struct smtp_session *s)
{
	s->msg_open = true;
	s->msg_failed = false;
	s->msg_bytes = 0;
	s->dst = D_BOL;
	s->text_line_len = 0;
	s->dbuf_len = 0;
	if (s->cb->message_begin)
		s->cb->message_begin(s->user);
	emit_received(s);
}

static void reject_failed_message(struct smtp_session *s)
{
	switch (s->msg_fail_reason) {
	case SMTP_REJ_SIZE_EXCEEDED:
		reject(s, SMTP_REJ_SIZE_EXCEEDED, "552 5.3.4 Error: message size exceeds limit");
		break;
	case SMTP_REJ_BARE_EOL:
		reject(s, SMTP_REJ_BARE_EOL,
		       "550 5.6.2 Error: bare <CR> or <LF> in message (RFC 5321 2.3.8)");
		break;
	default:
		reject(s, SMTP_REJ_TEXT_LINE_TOO_LONG,
		       "550 5.5.2 Error: message line longer than %zu octets",
		       s->conf->max_text_line);
		break;
	}
}

/* End of DATA or BDAT LAST: reject, or hand the message to the spool and wait. */
static void end_message(struct smtp_session *s)
{
	dflush(s);
	if (s->msg_failed) {
		reject_failed_message(s);
		reset_transaction(s);
		if (!s->closed)
			s->state = ST_CMD;
		return;
	}
	s->env.message_size = s->msg_bytes;
	s->msg_open = false;
	s->state = ST_WAIT_COMMIT;
	/* Sync point: what we owe the client goes out before the (maybe long) commit. */
	flush(s);
	if (s->cb->message_end)
		s->cb->message_end(s->user, &s->env);
}

/* ---- transactions --------------------------------------------------------------- */

/* The transaction id: the session id in upper-case hex, then 4 hex digits of the
 * transaction's sequence ("%" PRIX64 "%04X", without the cost of printf). */
static void format_txn_id(char *out, size_t cap, uint64_t session_id, unsigned seq)
{
	static const char hex[] = "0123456789ABCDEF";
	char tmp[24];
	size_t n = 0;

	/* tmp: the digits least significant first, the sequence's then the session's */
	for (int i = 0; i < 4; i++)
		tmp[n++] = hex[(seq >> (4 * i)) & 15];
	do
		tmp[n++] = hex[session_id & 15];
	while ((session_id >>= 4) != 0);
	size_t len = n < cap ? n : cap - 1;
	for (size_t i = 0; i < len; i++)
		out[i] = tmp[n - 1 - i];
	out[len] = '\0';
}

static void reset_transaction(struct smtp_session *s)
{
	if (s->msg_open) {
		s->msg_open = false;
		s->st->messages_aborted++;
		if (s->cb->message_abort)
			s->cb->message_abort(s->user);
	}
	s->in_mail = false;
	s->bdat_used = false;
	s->msg_failed = false;
	s->rejected_rcpts = 0;
	s->dbuf_len = 0;
	memset(&s->env.mail_from, 0, sizeof(s->env.mail_from));
	s->env.declared_size = 0;
	s->env.body = SMTP_BODY_NONE;
	s->env.ret = SMTP_RET_NONE;
	s->env.envid[0] = '\0';
	s->env.smtputf8 = false;
	s->env.rcpt_count = 0;
	s->env.message_size = 0;
}

static bool client_trusted(const struct smtp_session *s)
{
	return s->authenticated || s->trusted_net;
}

static bool domain_listed(const char *const *list, size_t count, const char *d, size_t n)
{
	for (size_t i = 0; i < count; i++)
		if (list[i] && strlen(list[i]) == n && strncasecmp(list[i], d, n) == 0)
			return true;
	return false;
}

/* Never an open relay: see the file header. */
static bool rcpt_permitted(const struct smtp_session *s, const struct smtp_address *a)
{
	if (client_trusted(s))
		return true;
	if (a->at == a->len)
		return true; /* bare "postmaster" (RFC 5321 4.5.1) */
	const char *dom = a->text + a->at + 1;
	size_t dlen = (size_t)(a->len - a->at - 1);
	if (!domain_listed(s->conf->local_domains, s->conf->local_domain_count, dom, dlen) &&
	    !domain_listed(s->conf->relay_domains, s->conf->relay_domain_count, dom, dlen))
		return false;
	/* Routing inside the local part (%-hack, UUCP !-path, quoted '@') would let a
	 * downstream MTA relay for us: refuse it from untrusted clients. */
	if (memchr(a->text, '%', a->at) || memchr(a->text, '!', a->at) ||
	    memchr(a->text, '@', a->at))
		return false;
	return true;
}

/* ---- commands ------------------------------------------------------------------- */

struct param {
	const char *key;
	size_t key_len;
	const char *val; /* NULL when no '=' */
	size_t val_len;
};

/* Next "keyword[=value]" in s[*i..n); 1 found, 0 end, -EINVAL syntax. */
static int next_param(const char *s, size_t n, size_t *i, struct param *p)
{
	size_t k = *i;

	while (k < n && s[k] == ' ')
		k++;
	if (k >= n)
		return 0;
	p->key = s + k;
	/* esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-") */
	while (k < n && s[k] != '=' && s[k] != ' ') {
		char c = s[k];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      (c == '-' && k > (size_t)(p->key - s))))
			return -EINVAL;
		k++;
	}
	p->key_len = (size_t)(s + k - p->key);
	if (p->key_len == 0)
		return -EINVAL;
	p->val = NULL;
	p->val_len = 0;
	if (k < n && s[k] == '=') {
		k++;
		p->val = s + k;
		/* esmtp-value = 1*(%d33-60 / %d62-126), UTF-8 allowed by RFC 6531 */
		while (k < n && s[k] != ' ') {
			unsigned char c = (unsigned char)s[k];
			if (c < 33 || c == '=' || c == 127)
				return -EINVAL;
			k++;
		}
		p->val_len = (size_t)(s + k - p->val);
		if (p->val_len == 0)
			return -EINVAL;
	}
	*i = k;
	return 1;
}

static bool key_is(const struct param *p, const char *name)
{
	return strlen(name) == p->key_len && strncasecmp(p->key, name, p->key_len) == 0;
}

static bool val_is(const struct param *p, const char *v)
{
	return p->val && strlen(v) == p->val_len && strncasecmp(p->val, v, p->val_len) == 0;
}

/* 1..20 digits into *out; -EINVAL or -ERANGE. */
static int parse_number(const char *s, size_t n, uint64_t *out)
{
	uint64_t v = 0;

	if (n == 0)
		return -EINVAL;
	for (size_t i = 0; i < n; i++)
		if (s[i] < '0' || s[i] > '9')
			return -EINVAL;
	for (size_t i = 0; i < n; i++) {
		unsigned d = (unsigned)(s[i] - '0');
		if (v > (UINT64_MAX - d) / 10)
			return -ERANGE;
		v = v * 10 + d;
	}
	*out = v;
	return 0;
}

/* "FROM:" / "TO:" then optional spaces (a common client deviation). */
static int strip_prefix(const char *arg, size_t len, const char *prefix, size_t *off)
{
	size_t pl = strlen(prefix);

	if (len < pl || strncasecmp(arg, prefix, pl) != 0)
		return -EINVAL;
	while (pl < len && arg[pl] == ' ')
		pl++;
	*off = pl;
	return 0;
}

static void cmd_ehlo(struct smtp_session *s, const char *arg, size_t len, bool esmtp)
{
	bool lenient = len > 0 && len <= SMTP_DOMAIN_MAX;

	/* Device firmware says things like "ESP_3C61"; accept a plain token, it is quoted
	 * in Received: only after these checks. */
	for (size_t i = 0; lenient && i < len; i++) {
		char c = arg[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '.' || c == '-' || c == '_'))
			lenient = false;
	}
	if (len == 0) {
		reject(s, SMTP_REJ_SYNTAX, "501 5.5.4 Syntax: %s hostname",
		       esmtp ? "EHLO" : "HELO");
		return;
	}
	if (!lenient && smtp_address_literal_valid(arg, len) < 0) {
		reject(s, SMTP_REJ_SYNTAX, "501 5.5.2 Error: invalid hostname");
		return;
	}
	reset_transaction(s);
	memcpy(s->env.helo, arg, len);
	s->env.helo[len] = '\0';
	s->helo_seen = true;
	s->esmtp = esmtp;
	if (!esmtp) {
		reply_cat(s, "250 ", s->conf->hostname, "");
		return;
	}
	char size[MX_U64_DEC_MAX + 1];
	reply_cat(s, "250-", s->conf->hostname, "");
	reply(s, "250-PIPELINING");
	reply_cat(s, "250-SIZE ", u64_text(size, s->conf->max_message_size), "");
	reply(s, "250-8BITMIME");
	reply(s, "250-SMTPUTF8");
	reply(s, "250-ENHANCEDSTATUSCODES");
	reply(s, "250-CHUNKING");
	if (!s->tls && s->conf->tls_available)
		reply(s, "250-STARTTLS");
	/* RFC 4954 4: offer AUTH only where the password cannot be sniffed. */
	if (s->tls)
		reply(s, "250-AUTH PLAIN LOGIN");
	reply(s, "250 DSN");
}

static void cmd_mail(struct smtp_session *s, const char *arg, size_t len)
{
	struct smtp_address addr;
	struct param p;
	size_t off, used, i;
	uint64_t size = 0;
	bool seen_size = false, seen_body = false, seen_utf8 = false, seen_ret = false,
	     seen_envid = false, seen_auth = false;
	enum smtp_body body = SMTP_BODY_NONE;
	enum smtp_dsn_ret ret = SMTP_RET_NONE;
	const char *envid = NULL;
	size_t envid_len = 0;
	int rc;

	if (strip_prefix(arg, len, "FROM:", &off) < 0) {
		reject(s, SMTP_REJ_SYNTAX, "501 5.5.4 Syntax: MAIL FROM:<address>");
		return;
	}
	if (!s->helo_seen) {
		reject(s, SMTP_REJ_BAD_SEQUENCE, "503 5.5.1 Error: send HELO/EHLO first");
		return;
	}
	if (s->in_mail) {
		reject(s, SMTP_REJ_BAD_SEQUENCE, "503 5.5.1 Error: nested MAIL command");
		return;
	}
	if (s->conf->listener == SMTP_LISTENER_SUBMISSION && !s->authenticated) {
		reject(s, SMTP_REJ_AUTH_REQUIRED, "530 5.7.0 Error: authentication required");
		return;
	}
	rc = smtp_parse_path(arg + off, len - off, true, true, &addr, &used);
	if (rc == -EILSEQ) {
		reject(s, SMTP_REJ_BAD_ADDRESS, "501 5.1.7 Error: invalid UTF-8 in sender address");
		return;
	}
	if (rc < 0) {
		reject(s, SMTP_REJ_BAD_ADDRESS, "501 5.1.7 Error: bad sender address syntax");
		return;
	}
	i = off + used;
	while ((rc = next_param(arg, len, &i, &p)) == 1) {
		bool dup = false;

		if (!s->esmtp) {
			reject(s, SMTP_REJ_BAD_PARAM, "555 5.5.4 Error: parameters need EHLO");
			return;
		}
		if (key_is(&p, "SIZE")) {
			dup = seen_size;
			seen_size = true;
			rc = p.val ? parse_number(p.val, p.val_len, &size) : -EINVAL;
			if (rc == -ERANGE) {
				size = UINT64_MAX; /* too large for 64 bits is too large for us */
			} else if (rc < 0) {
				reject(s, SMTP_REJ_BAD_PARAM, "501 5.5.4 Error: bad SIZE");
				return;
			}
		} else if (key_is(&p, "BODY")) {
			dup = seen_body;
			seen_body = true;
			if (val_is(&p, "7BIT"))
				body = SMTP_BODY_7BIT;
			else if (val_is(&p, "8BITMIME"))
				body = SMTP_BODY_8BITMIME;
			else {
				reject(s, SMTP_REJ_BAD_PARAM, "555 5.5.4 Error: unsupported BODY");
				return;
			}
		} else if (key_is(&p, "SMTPUTF8")) {
			dup = seen_utf8;
			seen_utf8 = true;
			if (p.val) {
				reject(s, SMTP_REJ_BAD_PARAM,
				       "501 5.5.4 Error: SMTPUTF8 takes no value");
				return;
			}
		} else if (key_is(&p, "RET")) {
			dup = seen_ret;
			seen_ret = true;
			if (val_is(&p, "FULL"))
				ret = SMTP_RET_FULL;
			else if (val_is(&p, "HDRS"))
				ret = SMTP_RET_HDRS;
			else {
				reject(s, SMTP_REJ_BAD_PARAM, "501 5.5.4 Error: bad RET");
				return;
			}
		} else if (key_is(&p, "ENVID")) {
			dup = seen_envid;
			seen_envid = true;
			if (!p.val || p.val_len > SMTP_ENVID_MAX ||
			    smtp_xtext_valid(p.val, p.val_len) < 0) {
				reject(s, SMTP_REJ_BAD_PARAM, "501 5.5.4 Error: bad ENVID");
				return;
			}
			envid = p.val;
			envid_len = p.val_len;
		} else if (key_is(&p, "AUTH")) {
			/* RFC 4954 5: accepted and not trusted; we do not relay it on. */
			dup = seen_auth;
			seen_auth = true;
			if (!p.val || smtp_xtext_valid(p.val, p.val_len) < 0) {
				reject(s, SMTP_REJ_BAD_PARAM,
				       "501 5.5.4 Error: bad AUTH parameter");
				return;
			}
		} else {
			reject(s, SMTP_REJ_BAD_PARAM, "555 5.5.4 Error: unsupported parameter");
			return;
		}
		if (dup) {
			reject(s, SMTP_REJ_BAD_PARAM, "501 5.5.4 Error: duplicate parameter");
			return;
		}
	}
	if (rc < 0) {
		reject(s, SMTP_REJ_BAD_PARAM, "501 5.5.4 Error: bad parameter syntax");
		return;
	}
	if (addr.utf8 && !seen_utf8) {
		reject(s, SMTP_REJ_NEED_SMTPUTF8,
		       "553 5.6.7 Error: non-ASCII address needs SMTPUTF8");
		return;
	}
	/* RFC 1870 6.1: refuse at once what cannot fit. */
	if (seen_size && size > s->conf->max_message_size) {
		reject(s, SMTP_REJ_SIZE_DECLARED, "552 5.3.4 Error: message size exceeds limit");
		return;
	}
	if (s->cb->may_start_transaction && !s->cb->may_start_transaction(s->user)) {
		reject(s, SMTP_REJ_OVERLOAD,
		       "451 4.3.1 Insufficient system resources, try again later");
		return;
	}
	reset_transaction(s);
	s->in_mail = true;
	s->env.mail_from = addr;
	s->env.declared_size = seen_size ? size : 0;
	s->env.body = body;
	s->env.ret = ret;
	s->env.smtputf8 = seen_utf8;
	if (envid) {
		memcpy(s->env.envid, envid, envid_len);
		s->env.envid[envid_len] = '\0';
	}
	s->env.esmtp = s->esmtp;
	s->env.tls = s->tls;
	s->env.authenticated = s->authenticated;
	format_txn_id(s->env.id, sizeof(s->env.id), s->session_id, ++s->txn_seq & 0xffff);
	reply(s, "250 2.1.0 Ok");
}

/* NOTIFY = "NEVER" / 1#( "SUCCESS" / "FAILURE" / "DELAY" )  (RFC 3461 4.1) */
static int parse_notify(const char *v, size_t n, uint8_t *out)
{
	uint8_t bits = 0;
	size_t i = 0;

	while (i <= n) {
		size_t j = i;
		uint8_t b;
		while (j < n && v[j] != ',')
			j++;
		if (j - i == 5 && strncasecmp(v + i, "NEVER", 5) == 0)
			b = SMTP_NOTIFY_NEVER;
		else if (j - i == 7 && strncasecmp(v + i, "SUCCESS", 7) == 0)
			b = SMTP_NOTIFY_SUCCESS;
		else if (j - i == 7 && strncasecmp(v + i, "FAILURE", 7) == 0)
			b = SMTP_NOTIFY_FAILURE;
		else if (j - i == 5 && strncasecmp(v + i, "DELAY", 5) == 0)
			b = SMTP_NOTIFY_DELAY;
		else
			return -EINVAL;
		if (bits & b)
			return -EINVAL;
		bits |= b;
		i = j + 1;
	}
	if ((bits & SMTP_NOTIFY_NEVER) && bits != SMTP_NOTIFY_NEVER)
		return -EINVAL;
	*out = bits;
	return 0;
}

/* ORCPT = addr-type ";" xtext (RFC 3461 4.2) */
static int orcpt_valid(const char *v, size_t n)
{
	const char *semi = memchr(v, ';', n);

	if (!semi || semi == v || n > SMTP_ORCPT_MAX)
		return -EINVAL;
	for (const char *c = v; c < semi; c++)
		if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') ||
		      (*c >= '0' && *c <= '9') || *c == '-'))
			return -EINVAL;
	if (semi + 1 == v + n)
		return -EINVAL;
	return smtp_xtext_valid(semi + 1, (size_t)(v + n - semi - 1));
}

static void cmd_rcpt(struct smtp_session *s, const char *arg, size_t len)
{
	struct smtp_address addr;
	struct param p;
	size_t off, used, i;
	uint8_t notify = 0;
	const char *orcpt = NULL;
	size_t orcpt_len = 0;
	int rc;

	if (strip_prefix(arg, len, "TO:", &off) < 0) {
		reject(s, SMTP_REJ_SYNTAX, "501 5.5.4 Syntax: RCPT TO:<address>");
		return;
	}
	if (!s->in_mail) {
		reject(s, SMTP_REJ_BAD_SEQUENCE, "503 5.5.1 Error: need MAIL command");
		return;
	}
	if (s->bdat_used) {
		reject(s, SMTP_REJ_BAD_SEQUENCE, "503 5.5.1 Error: RCPT after BDAT");
		return;
	}
	rc = smtp_parse_path(arg + off, len - off, false, true, &addr, &used);
	if (rc == -EILSEQ) {
		reject(s, SMTP_REJ_BAD_ADDRESS,
		       "501 5.1.3 Error: invalid UTF-8 in recipient address");
		return;
	}
	if (rc < 0) {
		reject(s, SMTP_REJ_BAD_ADDRESS, "501 5.1.3 Error: bad recipient address syntax");
		return;
	}
	i = off + used;
	while ((rc = next_param(arg, len, &i, &p)) == 1) {
		if (key_is(&p, "NOTIFY") && s->esmtp && !notify) {
			if (!p.val || parse_notify(p.val, p.val_len, &notify) < 0) {
				reject(s, SMTP_REJ_BAD_PARAM, "501 5.5.4 Error: bad NOTIFY");
				return;
			}
		} else if (key_is(&p, "ORCPT") && s->esmtp && !orcpt) {
			if (!p.val || orcpt_valid(p.val, p.val_len) < 0) {
				reject(s, SMTP_REJ_BAD_PARAM, "501 5.5.4 Error: bad ORCPT");
				return;
			}
			orcpt = p.val;
			orcpt_len = p.val_len;
		} else {
			reject(s, SMTP_REJ_BAD_PARAM, "555 5.5.4 Error: unsupported parameter");
			return;
		}
	}
	if (rc < 0) {
		reject(s, SMTP_REJ_BAD_PARAM, "501 5.5.4 Error: bad parameter syntax");
		return;
	}
	if (addr.utf8 && !s->env.smtputf8) {
		reject(s, SMTP_REJ_NEED_SMTPUTF8,
		       "553 5.6.7 Error: non-ASCII address needs SMTPUTF8");
		return;
	}
	if (s->env.rcpt_count >= s->conf->max_recipients) {
		reject(s, SMTP_REJ_TOO_MANY_RCPTS, "452 4.5.3 Error: too many recipients");
		return;
	}
	if (!rcpt_permitted(s, &addr)) {
		s->rejected_rcpts++;
		reject(s, SMTP_REJ_RELAY_DENIED, "554 5.7.1 Error: relay access denied");
		return;
	}
	if (s->env.rcpt_count == s->rcpt_cap) {
		/* most devices send one recipient: grow on demand, not 100 up front */
		size_t cap = s->rcpt_cap ? s->rcpt_cap * 2 : 4;
		if (cap > s->conf->max_recipients)
			cap = s->conf->max_recipients;
		struct smtp_rcpt *nr = realloc(s->env.rcpts, cap * sizeof(*nr));
		if (!nr) {
			reject(s, SMTP_REJ_OVERLOAD, "452 4.3.1 Insufficient system storage");
			return;
		}
		s->env.rcpts = nr;
		s->rcpt_cap = cap;
	}
	struct smtp_rcpt *r = &s->env.rcpts[s->env.rcpt_count++];
	r->addr = addr;
	r->notify = notify;
	r->orcpt[0] = '\0';
	if (orcpt) {
		memcpy(r->orcpt, orcpt, orcpt_len);
		r->orcpt[orcpt_len] = '\0';
	}
	reply(s, "250 2.1.5 Ok");
}

/* Shared checks for DATA and BDAT: 0, or an answer was given. */
static int need_recipients(struct smtp_session *s, bool answer)
{
	if (!s->in_mail) {
		if (answer)
			reject(s, SMTP_REJ_BAD_SEQUENCE, "503 5.5.1 Error: need MAIL command");
		return -1;
	}
	if (s->env.rcpt_count == 0) {
		if (!answer)
			return -1;
		/* RFC 2920 3.1: with pipelining the client learns here that all RCPTs failed */
		if (s->rejected_rcpts)
			reject(s, SMTP_REJ_NO_RCPTS, "554 5.5.1 Error: no valid recipients");
		else
			reject(s, SMTP_REJ_NO_RCPTS, "503 5.5.1 Error: need RCPT command");
		return -1;
	}
	return 0;
}

static void cmd_data(struct smtp_session *s, size_t len)
{
	if (len) {
		reject(s, SMTP_REJ_SYNTAX, "501 5.5.4 Syntax: DATA");
		return;
	}
	if (need_recipients(s, true) < 0)
		return;
	if (s->bdat_used) {
		reject(s, SMTP_REJ_BAD_SEQUENCE, "503 5.5.1 Error: DATA after BDAT");
		return;
	}
	begin_message(s);
	/* RFC 3463 has no class 3: intermediate replies carry no enhanced code */
	reply(s, "354 End data with <CR><LF>.<CR><LF>");
	flush(s);
	s->state = ST_DATA;
}

static void cmd_bdat(struct smtp_session *s, const char *arg, size_t len)
{
	const char *sp = memchr(arg, ' ', len);
	size_t nlen = sp ? (size_t)(sp - arg) : len;
	uint64_t size;
	bool last = false;

	if (parse_number(arg, nlen, &size) < 0) {
		/* We cannot know how many octets follow: nothing is consumed. */
		reject(s, SMTP_REJ_SYNTAX, "501 5.5.4 Syntax: BDAT size [LAST]");
		return;
	}
	if (sp) {
		if (len - nlen - 1 == 4 && strncasecmp(sp + 1, "LAST", 4) == 0) {
			last = true;
		} else {
			reject(s, SMTP_REJ_SYNTAX, "501 5.5.4 Syntax: BDAT size [LAST]");
			return;
		}
	}
	s->bdat_left = size;
	s->bdat_last = last;
	s->bdat_discard = need_recipients(s, false) < 0;
	s->bdat_no_rcpt = s->in_mail;
	if (!s->bdat_discard && !s->bdat_used) {
		s->bdat_used = true;
		begin_message(s);
	}
	s->state = ST_BDAT;
}

/* After the last octet of a chunk (RFC 3030 2: the chunk is consumed even on error). */
static void bdat_chunk_done(struct smtp_session *s)
{
	s->state = ST_CMD;
	if (s->bdat_discard) {
		if (s->bdat_no_rcpt)
			reject(s, SMTP_REJ_NO_RCPTS, "503 5.5.1 Error: need RCPT command");
		else
			reject(s, SMTP_REJ_BAD_SEQUENCE, "503 5.5.1 Error: need MAIL command");
		return;
	}
	if (s->bdat_last) {
		/* A message must end with CRLF; a last chunk that does not gets one. */
		if (s->dst == D_CR) {
			bare_eol(s, "");
		} else if (s->dst == D_MID && s->text_line_len > 0) {
			demit(s, "\r\n", 2);
		}
		end_message(s);
		return;
	}
	dflush(s);
	if (s->msg_failed) {
		reject_failed_message(s);
		reset_transaction(s);
		return;
	}
	reply(s, "250 2.0.0 Ok: %" PRIu64 " octets", s->msg_bytes);
}

static void cmd_starttls(struct smtp_session *s, size_t len)
{
	if (len) {
		reject(s, SMTP_REJ_SYNTAX, "501 5.5.4 Syntax: STARTTLS");
		return;
	}
	if (s->tls) {
		reject(s, SMTP_REJ_BAD_SEQUENCE, "503 5.5.1 Error: TLS already active");
		return;
	}
	if (!s->conf->tls_available) {
		reject(s, SMTP_REJ_NOT_AVAILABLE, "454 4.7.0 TLS not available");
		return;
	}
	reply(s, "220 2.0.0 Ready to start TLS");
	flush(s);
	/* RFC 3207 4.2: forget everything learned before TLS. */
	reset_transaction(s);
	s->helo_seen = false;
	s->esmtp = false;
	s->state = ST_TLS_PENDING;
	if (s->cb->starttls)
		s->cb->starttls(s->user);
}

static void auth_fail(struct smtp_session *s)
{
	s->auth_failures++;
	s->st->auth_failures++;
	reject(s, SMTP_REJ_AUTH_FAILED, "535 5.7.8 Error: authentication failed");
	if (!s->closed && s->auth_failures >= s->conf->max_auth_failures) {
		reply(s, "421 4.7.0 %s Error: too many authentication failures", s->conf->hostname);
		s->st->rejects[SMTP_REJ_AUTH_TOO_MANY]++;
		do_close(s);
	}
}

static void auth_check(struct smtp_session *s, const char *authzid, const char *authcid,
		       const char *pass)
{
	int rc = s->cb->auth_check ? s->cb->auth_check(s->user, authzid, authcid, pass) : -EACCES;

	if (rc == 0) {
		s->authenticated = true;
		s->st->auth_success++;
		snprintf(s->auth_user, sizeof(s->auth_user), "%s", authcid);
		reply(s, "235 2.7.0 Authentication successful");
	} else if (rc == -EACCES) {
		auth_fail(s);
	} else {
		reject(s, SMTP_REJ_AUTH_TEMP, "454 4.7.0 Temporary authentication failure");
	}
}

/* Decode one base64 response into s->scratch as a C string; length or -1 (answered). */
static int auth_decode(struct smtp_session *s, const char *b64, size_t len)
{
	int n;

	if (len == 1 && b64[0] == '=') /* RFC 4954 4: empty initial response */
		n = 0;
	else
		n = smtp_base64_decode(b64, len, s->scratch, s->conf->max_command_line - 1);
	if (n < 0) {
		reject(s, SMTP_REJ_SYNTAX, "501 5.5.2 Error: invalid base64 data");
		return -1;
	}
	s->scratch[n] = '\0';
	return n;
}

static void auth_plain(struct smtp_session *s, const char *b64, size_t len)
{
	int n = auth_decode(s, b64, len);

	if (n < 0)
		return;
	/* RFC 4616 2: [authzid] NUL authcid NUL passwd */
	const char *authzid = (const char *)s->scratch;
	const char *nul1 = memchr(authzid, '\0', (size_t)n);
	const char *authcid = nul1 ? nul1 + 1 : NULL;
	const char *nul2 =
		authcid ? memchr(authcid, '\0', (size_t)n - (size_t)(authcid - authzid)) : NULL;
	if (!nul2 || nul2 == authcid || nul2 + 1 > authzid + n) {
		reject(s, SMTP_REJ_SYNTAX, "501 5.5.2 Error: invalid PLAIN response");
		return;
	}
	const char *pass = nul2 + 1;
	if (memchr(pass, '\0', (size_t)(authzid + n - pass))) {
		reject(s, SMTP_REJ_SYNTAX, "501 5.5.2 Error: invalid PLAIN response");
		return;
	}
	auth_check(s, authzid, authcid, pass);
}

static void cmd_auth(struct smtp_session *s, const char *arg, size_t len)
{
	const char *sp = memchr(arg, ' ', len);
	size_t mlen = sp ? (size_t)(sp - arg) : len;
	const char *init = sp ? sp + 1 : NULL;
	size_t init_len = sp ? len - mlen - 1 : 0;

	if (!s->esmtp) {
		reject(s, SMTP_REJ_BAD_SEQUENCE, "503 5.5.1 Error: send EHLO first");
		return;
	}
	if (s->authenticated) {
		reject(s, SMTP_REJ_BAD_SEQUENCE, "503 5.5.1 Error: already authenticated");
		return;
	}
	if (s->in_mail) {
		reject(s, SMTP_REJ_BAD_SEQUENCE, "503 5.5.1 Error: MAIL transaction in progress");
		return;
	}
	if (!s->tls) {
		reject(s, SMTP_REJ_ENCRYPTION_REQUIRED,
		       "538 5.7.11 Encryption required for requested authentication mechanism");
		return;
	}
	if (mlen == 5 && strncasecmp(arg, "PLAIN", 5) == 0) {
		if (init) {
			auth_plain(s, init, init_len);
		} else {
			s->auth_step = AUTH_PLAIN;
			s->state = ST_AUTH;
			reply(s, "334 ");
		}
	} else if (mlen == 5 && strncasecmp(arg, "LOGIN", 5) == 0) {
		if (init) {
			int n = auth_decode(s, init, init_len);
			if (n < 0)
				return;
			if ((size_t)n >= sizeof(s->auth_login_user) ||
			    memchr(s->scratch, '\0', (size_t)n)) {
				reject(s, SMTP_REJ_SYNTAX, "501 5.5.2 Error: invalid user name");
				return;
			}
			memcpy(s->auth_login_user, s->scratch, (size_t)n + 1);
			s->auth_step = AUTH_LOGIN_PASS;
			reply(s, "334 UGFzc3dvcmQ6"); /* "Password:" */
		} else {
			s->auth_step = AUTH_LOGIN_USER;
			reply(s, "334 VXNlcm5hbWU6"); /* "Username:" */
		}
		s->state = ST_AUTH;
	} else {
		reject(s, SMTP_REJ_BAD_PARAM,
		       "504 5.5.4 Error: unsupported authentication mechanism");
	}
}

static void auth_continue(struct smtp_session *s, const char *line, size_t len)
{
	s->state = ST_CMD;
	if (len == 1 && line[0] == '*') {
		reject(s, SMTP_REJ_AUTH_CANCELLED, "501 5.0.0 Authentication cancelled");
		return;
	}
	if (s->auth_step == AUTH_PLAIN) {
		auth_plain(s, line, len);
		return;
	}
	int n = auth_decode(s, line, len);
	if (n < 0)
		return;
	if (memchr(s->scratch, '\0', (size_t)n)) {
		reject(s, SMTP_REJ_SYNTAX, "501 5.5.2 Error: invalid response");
		return;
	}
	if (s->auth_step == AUTH_LOGIN_USER) {
		if ((size_t)n >= sizeof(s->auth_login_user)) {
			reject(s, SMTP_REJ_SYNTAX, "501 5.5.2 Error: invalid user name");
			return;
		}
		memcpy(s->auth_login_user, s->scratch, (size_t)n + 1);
		s->auth_step = AUTH_LOGIN_PASS;
		s->state = ST_AUTH;
		reply(s, "334 UGFzc3dvcmQ6");
		return;
	}
	auth_check(s, "", s->auth_login_user, (const char *)s->scratch);
}

static enum smtp_verb lookup_verb(const char *v, size_t n)
{
	for (int i = 0; i < SMTP_VERB_UNKNOWN; i++)
		if (strlen(verb_names[i]) == n && strncasecmp(verb_names[i], v, n) == 0)
			return (enum smtp_verb)i;
	return SMTP_VERB_UNKNOWN;
}

static void handle_line(struct smtp_session *s, const char *line, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)line[i];
		if (c < 32 || c == 127) {
			if (s->state == ST_AUTH)
				s->state = ST_CMD;
			reject(s, SMTP_REJ_SYNTAX, "500 5.5.2 Error: invalid character in command");
			return;
		}
	}
	if (s->state == ST_AUTH) {
		auth_continue(s, line, len);
		return;
	}
	const char *sp = memchr(line, ' ', len);
	size_t vlen = sp ? (size_t)(sp - line) : len;
	const char *arg = sp ? sp + 1 : line + len;
	size_t alen = sp ? len - vlen - 1 : 0;
	enum smtp_verb verb = lookup_verb(line, vlen);

	s->st->commands[verb]++;
	switch (verb) {
	case SMTP_VERB_HELO:
	case SMTP_VERB_EHLO:
		while (alen && arg[alen - 1] == ' ')
			alen--;
		cmd_ehlo(s, arg, alen, verb == SMTP_VERB_EHLO);
		break;
	case SMTP_VERB_MAIL:
		cmd_mail(s, arg, alen);
		break;
	case SMTP_VERB_RCPT:
		cmd_rcpt(s, arg, alen);
		break;
	case SMTP_VERB_DATA:
		cmd_data(s, alen);
		break;
	case SMTP_VERB_BDAT:
		cmd_bdat(s, arg, alen);
		break;
	case SMTP_VERB_RSET:
		if (alen) {
			reject(s, SMTP_REJ_SYNTAX, "501 5.5.4 Syntax: RSET");
			break;
		}
		reset_transaction(s);
		reply(s, "250 2.0.0 Ok");
		break;
	case SMTP_VERB_NOOP:
		reply(s, "250 2.0.0 Ok");
		break;
	case SMTP_VERB_QUIT:
		reply(s, "221 2.0.0 Bye");
		do_close(s);
		break;
	case SMTP_VERB_VRFY:
		if (!alen) {
			reject(s, SMTP_REJ_SYNTAX, "501 5.5.4 Syntax: VRFY address");
			break;
		}
		/* RFC 5321 3.5.3: no address harvesting, but not an error either */
		reply(s,
		      "252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery");
		break;
	case SMTP_VERB_HELP:
		reply(s, "214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY "
			 "HELP STARTTLS AUTH");
		break;
	case SMTP_VERB_STARTTLS:
		cmd_starttls(s, alen);
		break;
	case SMTP_VERB_AUTH:
		cmd_auth(s, arg, alen);
		break;
	default:
		reject(s, SMTP_REJ_UNKNOWN_COMMAND, "500 5.5.2 Error: command not recognized");
		break;
	}
}

/* ---- input ------------------------------------------------------------------------ */

static size_t feed_command(struct smtp_session *s, const uint8_t *p, size_t n)
{
	const uint8_t *lf = memchr(p, '\n', n);
	size_t take = lf ? (size_t)(lf - p) + 1 : n;
	size_t content = lf ? take - 1 : take;

	/* RFC 5321 4.5.3.1.4: max_command_line includes the CRLF */
	if (!s->line_overflow) {
		if (s->line_len + content > s->conf->max_command_line - 1) {
			s->line_overflow = true;
		} else {
			memcpy(s->line + s->line_len, p, content);
			s->line_len += content;
		}
	}
	if (!lf)
		return take;
	size_t len = s->line_len;
	bool overflow = s->line_overflow;
	s->line_len = 0;
	s->line_overflow = false;
	if (overflow) {
		if (s->state == ST_AUTH)
			s->state = ST_CMD;
		reject(s, SMTP_REJ_LINE_TOO_LONG, "500 5.5.2 Error: line too long");
		return take;
	}
	if (len > 0 && s->line[len - 1] == '\r')
		len--;
	handle_line(s, s->line, len);
	return take;
}

static size_t feed_data(struct smtp_session *s, const uint8_t *p, size_t n)
{
	bool ended;
	size_t used = feed_content(s, p, n, true, &ended);

	if (ended) {
		s->state = ST_CMD;
		end_message(s);
	} else {
		dflush(s);
	}
	return used;
}

static size_t feed_bdat(struct smtp_session *s, const uint8_t *p, size_t n)
{
	size_t k = n;
	bool ended;

	if (k > s->bdat_left)
		k = (size_t)s->bdat_left;
	if (s->bdat_discard)
		s->bdat_left -= k;
	else {
		/* Chunks are raw (RFC 3030 2): no dots, but CRLF rules still apply */
		k = feed_content(s, p, k, false, &ended);
		s->bdat_left -= k;
		dflush(s);
	}
	if (s->bdat_left == 0)
		bdat_chunk_done(s);
	return k;
}

/* Process until input is used up or the session must wait. */
static size_t process(struct smtp_session *s, const uint8_t *p, size_t n)
{
	size_t used = 0;

	while (used < n && !s->closed) {
		switch (s->state) {
		case ST_CMD:
		case ST_AUTH:
			used += feed_command(s, p + used, n - used);
			break;
		case ST_DATA:
			used += feed_data(s, p + used, n - used);
			break;
		case ST_BDAT:
			used += feed_bdat(s, p + used, n - used);
			break;
		case ST_TLS_PENDING:
			/* CVE-2011-0411: plaintext pipelined after STARTTLS is never answered */
			s->st->starttls_discarded += n - used;
			return n;
		case ST_WAIT_COMMIT:
			return used;
		}
	}
	if (s->state == ST_BDAT && s->bdat_left == 0)
		bdat_chunk_done(s); /* BDAT 0 */
	return s->closed ? n : used;
}

static bool waiting(const struct smtp_session *s)
{
	return s->state == ST_WAIT_COMMIT;
}

static void drain_pending(struct smtp_session *s)
{
	while (s->pending_len > 0 && !waiting(s) && !s->closed) {
		size_t k = process(s, s->pending, s->pending_len);
		if (k > s->pending_len)
			k = s->pending_len;
		memmove(s->pending, s->pending + k, s->pending_len - k);
		s->pending_len -= k;
		if (k == 0)
			break;
	}
	if (s->closed)
		s->pending_len = 0;
}

size_t smtp_session_input(struct smtp_session *s, const uint8_t *p, size_t n)
{
	size_t used = 0;

	if (s->closed)
		return n;
	s->st->bytes_in += n;
	s->last_activity = now_us(s);
	s->in_input = true;
	while (used < n && !s->closed) {
		if (waiting(s) || s->pending_len > 0) {
			/* allocated on first need: most sessions never pipeline past a commit */
			if (!s->pending) {
				s->pending = malloc(s->conf->max_pending_input);
				s->pending_nomem = s->pending == NULL;
			}
			size_t room = s->pending ? s->conf->max_pending_input - s->pending_len : 0;
			size_t k = n - used < room ? n - used : room;
			if (k == 0) {
				s->st->pending_input_full++;
				break;
			}
			memcpy(s->pending + s->pending_len, p + used, k);
			s->pending_len += k;
			used += k;
			drain_pending(s);
			continue;
		}
		used += process(s, p + used, n - used);
	}
	if (s->state == ST_BDAT && s->bdat_left == 0 && !s->closed)
		bdat_chunk_done(s);
	s->in_input = false;
	flush(s);
	if (s->closed)
		return n;
	s->st->bytes_in -= n - used; /* counted again when offered again */
	return used;
}

bool smtp_session_want_input(const struct smtp_session *s)
{
	if (s->closed)
		return false;
	return !(waiting(s) && (s->pending_nomem || s->pending_len >= s->conf->max_pending_input));
}

/* ---- lifecycle --------------------------------------------------------------------- */

/*
 * Ready s (fresh from malloc, or an ended session from a pool) for a new
 * connection.  Only the fields before line_cap are cleared: the reply and
 * content buffers are written before they are read, and clearing their 8 KiB
 * for every connection (devices make one per message) cost more than the
 * rest of the session's set-up.  The recipient array an earlier connection
 * grew is kept (its capacity in rcpt_cap).
 */
static void session_init(struct smtp_session *s, const struct smtp_server_conf *conf,
			 const struct smtp_server_cb *cb, void *user,
			 struct smtp_server_stats *stats, uint32_t client_ip, uint64_t session_id)
{
	struct smtp_rcpt *rcpts = s->env.rcpts;
	size_t rcpt_cap = s->rcpt_cap;

	memset(s, 0, offsetof(struct smtp_session, line_cap));
	s->env.rcpts = rcpts;
	s->rcpt_cap = rcpt_cap;
	s->line = (char *)(s + 1);
	s->scratch = (uint8_t *)s->line + s->line_cap;
	s->conf = conf;
	s->cb = cb;
	s->user = user;
	s->st = stats;
	s->client_ip = client_ip;
	s->session_id = session_id;
	s->state = ST_CMD;
	s->env.client_ip = client_ip;
	s->env.auth_user = s->auth_user;
	s->tls = conf->listener == SMTP_LISTENER_IMPLICIT_TLS;
	for (size_t i = 0; i < conf->allow_network_count; i++) {
		const struct smtp_ipv4_prefix *pf = &conf->allow_networks[i];
		uint32_t mask = pf->len == 0 ? 0 : ~0u << (32 - pf->len);
		if ((client_ip & mask) == (pf->addr & mask))
			s->trusted_net = true;
	}
	s->last_activity = now_us(s);
	stats->sessions++;
}

/* One block: the session, then its command line and scratch buffers. */
static struct smtp_session *session_alloc(size_t line_cap)
{
	struct smtp_session *s = malloc(sizeof(*s) + 2 * line_cap);

	if (!s)
		return NULL;
	s->env.rcpts = NULL;
	s->rcpt_cap = 0;
	s->line_cap = line_cap;
	s->pool_next = NULL;
	return s;
}

static void session_release(struct smtp_session *s)
{
	free(s->pending);
	free(s->env.rcpts);
	free(s);
}

/* A message still open is aborted; a commit asked for stays the caller's. */
static void session_end(struct smtp_session *s)
{
	if (s->msg_open && s->cb->message_abort) {
		s->msg_open = false;
		s->st->messages_aborted++;
		s->cb->message_abort(s->user);
	}
}

int smtp_session_new(const struct smtp_server_conf *conf, const struct smtp_server_cb *cb,
		     void *user, struct smtp_server_stats *stats, uint32_t client_ip,
		     uint64_t session_id, struct smtp_session **out)
{
	return smtp_session_new_pooled(NULL, conf, cb, user, stats, client_ip, session_id, out);
}

void smtp_session_free(struct smtp_session *s)
{
	smtp_session_free_pooled(NULL, s);
}

/* ---- session pool ------------------------------------------------------------------ */

void smtp_session_pool_init(struct smtp_session_pool *p, unsigned max)
{
	memset(p, 0, sizeof(*p));
	p->max = max;
}

/*
 * A pooled session is poisoned (ASan) but for the two pointers that
 * LeakSanitizer must still follow: the pool's link and the recipient array.
 */
static void pool_poison(struct smtp_session *s)
{
	uint8_t *b = (uint8_t *)s;
	size_t r = offsetof(struct smtp_session, env) + offsetof(struct smtp_envelope, rcpts);
	size_t l = offsetof(struct smtp_session, pool_next);
	size_t w = sizeof(void *);

	SMTP_POISON(s + 1, 2 * s->line_cap);
	SMTP_POISON(b, r);
	SMTP_POISON(b + r + w, l - r - w);
	SMTP_POISON(b + l + w, sizeof(*s) - l - w);
	(void)b, (void)r, (void)l, (void)w;
}

/* Readable again, from here. */
static void pool_unpoison(struct smtp_session *s)
{
	SMTP_UNPOISON(s, sizeof(*s));
	SMTP_UNPOISON(s + 1, 2 * s->line_cap);
}

/*
 * What a pooled session costs its first connection is page faults: ~12 KiB
 * of it, written piece by piece (the greeting into out, DATA into dbuf,
 * RCPT's array) at the moment a burst of connections arrives.  Sessions
 * made here are written whole once and then held like ended ones.  The
 * recipient array gets the capacity cmd_rcpt would give it first.
 */
#define PREWARM_RCPTS 4

int smtp_session_pool_prewarm(struct smtp_session_pool *p, const struct smtp_server_conf *conf,
			      unsigned n)
{
	int added = 0;

	if (!p || !conf || smtp_server_conf_check(conf, NULL, 0) < 0)
		return -EINVAL;
	if (n > p->max)
		n = p->max;
	while (p->count < n) {
		struct smtp_session *s = session_alloc(conf->max_command_line);
		if (!s)
			return -ENOMEM;
		size_t cap =
			conf->max_recipients < PREWARM_RCPTS ? conf->max_recipients : PREWARM_RCPTS;
		/* written, not calloc'ed: jemalloc skips clearing pages it knows are fresh */
		struct smtp_rcpt *rcpts = cap ? mx_malloc_written(cap * sizeof(*rcpts)) : NULL;
		if (cap && !rcpts) {
			free(s);
			return -ENOMEM;
		}
		memset(s, 0, offsetof(struct smtp_session, line_cap));
		s->env.rcpts = rcpts;
		s->rcpt_cap = cap;
		memset(s->out, 0, sizeof(s->out));
		memset(s->dbuf, 0, sizeof(s->dbuf));
		memset(s + 1, 0, 2 * s->line_cap);
		s->pool_next = p->head;
		p->head = s;
		p->count++;
		p->prewarmed++;
		pool_poison(s);
		added++;
	}
	return added;
}

void smtp_session_pool_drain(struct smtp_session_pool *p)
{
	while (p->head) {
		struct smtp_session *s = p->head;
		pool_unpoison(s);
		p->head = s->pool_next;
		session_release(s);
	}
	p->count = 0;
}

int smtp_session_new_pooled(struct smtp_session_pool *pool, const struct smtp_server_conf *conf,
			    const struct smtp_server_cb *cb, void *user,
			    struct smtp_server_stats *stats, uint32_t client_ip,
			    uint64_t session_id, struct smtp_session **out)
{
	struct smtp_session *s = NULL;

	if (!conf || !cb || !cb->send || !stats || !out ||
	    smtp_server_conf_check(conf, NULL, 0) < 0)
		return -EINVAL;
	/* Every pooled session was made for some listener's max_command_line;
	 * one made for a smaller line (a reload changed it) is freed instead. */
	while (pool && pool->head) {
		s = pool->head;
		pool_unpoison(s);
		pool->head = s->pool_next;
		pool->count--;
		if (s->line_cap >= conf->max_command_line) {
			pool->reused++;
			break;
		}
		session_release(s);
		s = NULL;
	}
	if (!s) {
		s = session_alloc(conf->max_command_line);
		if (!s)
			return -ENOMEM;
		if (pool)
			pool->allocated++;
	}
	session_init(s, conf, cb, user, stats, client_ip, session_id);
	*out = s;
	return 0;
}

void smtp_session_free_pooled(struct smtp_session_pool *pool, struct smtp_session *s)
{
	if (!s)
		return;
	session_end(s);
	if (!pool || pool->count >= pool->max) {
		if (pool)
			pool->full++;
		session_release(s);
		return;
	}
	/* The pending-input buffer is rare and large: not kept. */
	free(s->pending);
	s->pending = NULL;
	s->pool_next = pool->head;
	pool->head = s;
	pool->count++;
	pool_poison(s);
}

void smtp_session_start(struct smtp_session *s)
{
	/* RFC 2034 3: no enhanced code in the greeting */
	reply_cat(s, "220 ", s->conf->hostname, " ESMTP mxrelay");
	flush(s);
	s->last_activity = now_us(s);
}

/* Transport-given text goes into Received:; keep it to a safe alphabet. */
static void copy_token(char *dst, size_t len, const char *src, bool spaces)
{
	size_t o = 0;

	for (; src && *src && o + 1 < len; src++) {
		char c = *src;
		if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		    c == '.' || c == '-' || c == '_' || c == '/' || (spaces && c == ' '))
			dst[o++] = c;
	}
	dst[o] = '\0';
}

void smtp_session_tls_started(struct smtp_session *s, const char *version, const char *cipher)
{
	copy_token(s->tls_version, sizeof(s->tls_version), version, false);
	copy_token(s->tls_cipher, sizeof(s->tls_cipher), cipher, false);
	s->tls = true;
	if (s->state == ST_TLS_PENDING) {
		s->state = ST_CMD;
		s->line_len = 0;
		s->line_overflow = false;
	}
	s->last_activity = now_us(s);
}

void smtp_session_message_done(struct smtp_session *s, int status, const char *text)
{
	char safe[128];

	if (s->state != ST_WAIT_COMMIT)
		return;
	s->state = ST_CMD;
	s->pending_nomem = false;
	copy_token(safe, sizeof(safe), text, status != 0);
	if (status == 0) {
		s->st->messages_accepted++;
		reply_cat(s, "250 2.0.0 Ok: queued as ", safe, "");
	} else if (status == -ENOSPC) {
		reject(s, SMTP_REJ_COMMIT_FAILED, "452 4.3.1 Insufficient system storage");
	} else {
		reject(s, SMTP_REJ_COMMIT_FAILED, "451 4.3.0 Error: queue file write error%s%s",
		       safe[0] ? ": " : "", safe);
	}
	reset_transaction(s);
	s->last_activity = now_us(s);
	if (s->in_input || s->closed)
		return; /* called from inside message_end: the input loop carries on */
	s->in_input = true;
	drain_pending(s);
	if (s->state == ST_BDAT && s->bdat_left == 0 && !s->closed)
		bdat_chunk_done(s);
	s->in_input = false;
	flush(s);
}

uint64_t smtp_session_deadline(const struct smtp_session *s)
{
	if (s->closed || s->state == ST_WAIT_COMMIT)
		return UINT64_MAX;
	if (s->state == ST_DATA || s->state == ST_BDAT)
		return s->last_activity + s->conf->timeout_data_us;
	return s->last_activity + s->conf->timeout_command_us;
}

void smtp_session_timeout(struct smtp_session *s)
{
	if (s->closed)
		return;
	s->st->timeouts++;
	s->st->rejects[SMTP_REJ_TIMEOUT]++;
	reply(s, "421 4.4.2 %s Error: timeout exceeded", s->conf->hostname);
	do_close(s);
}

void smtp_session_peer_closed(struct smtp_session *s)
{
	if (s->msg_open) {
		s->msg_open = false;
		s->st->messages_aborted++;
		if (s->cb->message_abort)
			s->cb->message_abort(s->user);
	}
	s->out_len = 0;
	s->closed = true;
}

bool smtp_session_is_closed(const struct smtp_session *s)
{
	return s->closed;
}

const struct smtp_envelope *smtp_session_envelope(const struct smtp_session *s)
{
	return &s->env;
}
