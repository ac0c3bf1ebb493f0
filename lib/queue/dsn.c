/*
 * dsn.c - delivery status notifications: queue_dsn_build() writes a
 * multipart/report; report-type=delivery-status message (RFC 6522) with a
 * human-readable part, a message/delivery-status part (RFC 3464) and the
 * original message's headers (text/rfc822-headers) or, for RET=FULL
 * (RFC 3461 4.3) and small enough messages, the whole message/rfc822.
 *
 * The original is pulled through a reader callback in bounded chunks, so it
 * never has to be in memory at once.  Every value taken from the outside
 * (addresses, remote replies) is stripped of controls and capped, and every
 * output line is kept under 998 octets (RFC 5322 2.1.1).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "queue.h"
#include "queue_internal.h"

#define LINE_BREAK_AT 990 /* wrap copied lines before RFC 5322's 998 */
#define VALUE_MAX 900	  /* cap of one generated field value */
#define CHUNK 4096

struct sbuf {
	char *p;
	size_t len, cap;
	int err;
};

static void sb_put(struct sbuf *b, const char *s, size_t n)
{
	if (b->err)
		return;
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 4096;
		while (cap < b->len + n + 1)
			cap *= 2;
		char *p = realloc(b->p, cap);
		if (!p) {
			b->err = -ENOMEM;
			return;
		}
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = 0;
}

static void sb_printf(struct sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(struct sbuf *b, const char *fmt, ...)
{
	char tmp[2048];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	if (n < 0) {
		b->err = -EINVAL;
		return;
	}
	sb_put(b, tmp, (size_t)n < sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1);
}

/* Printable ASCII only (non-ASCII becomes '?'), capped: safe for any header line. */
static void clean(char out[VALUE_MAX + 1], const char *s)
{
	qi_sanitize(out, VALUE_MAX + 1, s ? s : "");
	for (char *p = out; *p; p++)
		if ((unsigned char)*p > 0x7e)
			*p = '?';
}

/* ORCPT is "addr-type;xtext" (RFC 3461 4.2): decode +XX for Original-Recipient. */
static void orcpt_decode(char out[VALUE_MAX + 1], const char *s)
{
	char tmp[VALUE_MAX + 1];
	size_t n = 0;

	for (const char *p = s; *p && n < VALUE_MAX; p++) {
		unsigned v;
		if (p[0] == '+' && sscanf(p + 1, "%2x", &v) == 1 && p[1] && p[2]) {
			tmp[n++] = (char)v;
			p += 2;
		} else {
			tmp[n++] = *p;
		}
	}
	tmp[n] = 0;
	clean(out, tmp);
}

int queue_rfc5322_date(int64_t wall_us, char *buf, size_t cap)
{
	static const char *const days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
	static const char *const months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
					     "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
	time_t t = (time_t)(wall_us / 1000000);
	struct tm tm;

	if (!gmtime_r(&t, &tm))
		return snprintf(buf, cap, "Thu, 1 Jan 1970 00:00:00 +0000");
	return snprintf(buf, cap, "%s, %d %s %04d %02d:%02d:%02d +0000", days[tm.tm_wday % 7],
			tm.tm_mday, months[tm.tm_mon % 12], tm.tm_year + 1900, tm.tm_hour,
			tm.tm_min, tm.tm_sec);
}

/*
 * Copies original message bytes into the DSN: CRLF line ends (bare CR/LF
 * normalised), lines broken before LINE_BREAK_AT; in a header block a
 * broken line continues with a space (a fold, RFC 5322 2.2.3).
 */
struct copier {
	struct sbuf *b;
	size_t col;
	bool headers; /* still in the header block */
	bool pending_cr;
};

static void copy_eol(struct copier *c)
{
	sb_put(c->b, "\r\n", 2);
	if (c->col == 0 && c->headers)
		c->headers = false; /* the blank line ends the header block */
	c->col = 0;
}

/* Returns true when a headers-only copy reached the end of the header block. */
static bool copy_bytes(struct copier *c, const char *p, size_t n, bool headers_only)
{
	for (size_t i = 0; i < n; i++) {
		char ch = p[i];
		if (ch == '\r') {
			c->pending_cr = true;
			continue;
		}
		if (ch == '\n' || c->pending_cr) {
			bool was_header_end = c->col == 0 && c->headers;
			c->pending_cr = false;
			if (headers_only && was_header_end)
				return true;
			copy_eol(c);
			if (ch == '\n')
				continue;
		}
		if (c->col >= LINE_BREAK_AT) {
			sb_put(c->b, c->headers ? "\r\n " : "\r\n", c->headers ? 3 : 2);
			c->col = c->headers ? 1 : 0;
		}
		sb_put(c->b, &ch, 1);
		c->col++;
	}
	return false;
}

static int copy_original(struct sbuf *b, const struct queue_dsn_params *p, bool full)
{
	struct copier c = {.b = b, .headers = true};
	uint64_t limit = full ? p->body_len : p->max_header_bytes;
	uint64_t off = 0;
	char chunk[CHUNK];

	if (limit > p->body_len)
		limit = p->body_len;
	while (off < limit) {
		size_t want = limit - off < sizeof(chunk) ? (size_t)(limit - off) : sizeof(chunk);
		long got = p->reader(p->reader_arg, off, chunk, want);
		if (got < 0)
			return -EIO;
		if (got == 0)
			break;
		if ((size_t)got > want)
			return -EIO;
		if (copy_bytes(&c, chunk, (size_t)got, !full))
			return 0;
		off += (uint64_t)got;
	}
	if (c.col > 0 || c.pending_cr)
		sb_put(b, "\r\n", 2);
	return 0;
}

static const char *action_word(enum queue_dsn_action a)
{
	switch (a) {
	case QUEUE_DSN_DELAYED:
		return "delayed";
	case QUEUE_DSN_DELIVERED:
		return "delivered";
	default:
		return "failed";
	}
}

int queue_dsn_build(const struct queue_dsn_params *p, char **out, size_t *out_len)
{
	struct sbuf b = {0};
	char host[VALUE_MAX + 1], to[VALUE_MAX + 1], v[VALUE_MAX + 1], date[64], boundary[80];
	bool any_failed = false, any_delayed = false, full;
	int rc;

	if (!p || !out || !out_len || !p->rcpts || p->rcpt_count == 0 || !p->sender ||
	    !p->sender[0])
		return -EINVAL;
	*out = NULL;
	*out_len = 0;
	for (unsigned i = 0; i < p->rcpt_count; i++) {
		if (!p->rcpts[i].addr)
			return -EINVAL;
		any_failed |= p->rcpts[i].action == QUEUE_DSN_FAILED;
		any_delayed |= p->rcpts[i].action == QUEUE_DSN_DELAYED;
	}
	clean(host, p->reporting_mta && p->reporting_mta[0] ? p->reporting_mta : "localhost");
	clean(to, p->sender);
	snprintf(boundary, sizeof(boundary), "=_mxrelay_%016" PRIx64 "_%" PRIx64 "=", p->unique,
		 (uint64_t)p->now_us);
	full = p->ret == SPOOL_RET_FULL && p->reader && p->body_len <= p->max_full_bytes;

	/* RFC 3464 2 / RFC 3834 5: from the mail system, marked auto-replied. */
	queue_rfc5322_date(p->now_us, date, sizeof(date));
	sb_printf(&b, "From: Mail Delivery System <MAILER-DAEMON@%s>\r\n", host);
	sb_printf(&b, "To: <%s>\r\n", to);
	sb_printf(&b, "Subject: %s\r\n",
		  any_failed	? "Undelivered Mail Returned to Sender"
		  : any_delayed ? "Delayed Mail (still being retried)"
				: "Successful Mail Delivery Report");
	sb_printf(&b, "Date: %s\r\n", date);
	sb_printf(&b, "Message-ID: <%016" PRIx64 ".%" PRId64 "@%s>\r\n", p->unique, p->now_us,
		  host);
	sb_printf(&b, "Auto-Submitted: auto-replied\r\n");
	sb_printf(&b, "MIME-Version: 1.0\r\n");
	sb_printf(&b, "Content-Type: multipart/report; report-type=delivery-status;\r\n");
	sb_printf(&b, "\tboundary=\"%s\"\r\n\r\n", boundary);
	sb_printf(&b, "This is a MIME-encapsulated message.\r\n\r\n");

	/* 1: human-readable explanation. */
	sb_printf(&b, "--%s\r\n", boundary);
	sb_printf(&b, "Content-Description: Notification\r\n");
	sb_printf(&b, "Content-Type: text/plain; charset=us-ascii\r\n\r\n");
	sb_printf(&b, "This is the mail system at host %s.\r\n\r\n", host);
	if (any_failed)
		sb_printf(&b,
			  "I'm sorry to have to inform you that your message could not\r\n"
			  "be delivered to one or more recipients. It's attached below.\r\n\r\n");
	if (any_delayed)
		sb_printf(&b,
			  "Your message could not be delivered yet to the recipients\r\n"
			  "below. The mail system will keep trying; you need not resend.\r\n\r\n");
	if (!any_failed && !any_delayed)
		sb_printf(&b, "Your message was successfully delivered to the destination(s)\r\n"
			      "listed below.\r\n\r\n");
	if (p->orig_id) {
		clean(v, p->orig_id);
		sb_printf(&b, "Queue ID: %s\r\n\r\n", v);
	}
	for (unsigned i = 0; i < p->rcpt_count; i++) {
		const struct queue_dsn_rcpt *r = &p->rcpts[i];
		char a[VALUE_MAX + 1], mta[VALUE_MAX + 1];
		clean(a, r->addr);
		clean(v, r->diagnostic ? r->diagnostic : r->status ? r->status : "");
		if (r->remote_mta) {
			clean(mta, r->remote_mta);
			sb_printf(&b, "<%.300s>: %s (host %.250s said: %.400s)\r\n", a,
				  action_word(r->action), mta, v);
		} else {
			sb_printf(&b, "<%.300s>: %s: %.600s\r\n", a, action_word(r->action), v);
		}
	}
	if (p->ret == SPOOL_RET_FULL && p->reader && !full)
		sb_printf(&b, "\r\nThe message was too large to return in full; its headers "
			      "follow.\r\n");
	sb_printf(&b, "\r\n");

	/* 2: message/delivery-status, RFC 3464 2.2 then 2.3 per recipient. */
	sb_printf(&b, "--%s\r\n", boundary);
	sb_printf(&b, "Content-Description: Delivery report\r\n");
	sb_printf(&b, "Content-Type: message/delivery-status\r\n\r\n");
	sb_printf(&b, "Reporting-MTA: dns; %s\r\n", host);
	if (p->orig_id) {
		clean(v, p->orig_id);
		sb_printf(&b, "X-Mxrelay-Queue-ID: %s\r\n", v);
	}
	if (p->envid && p->envid[0]) {
		clean(v, p->envid);
		sb_printf(&b, "Original-Envelope-Id: %s\r\n", v);
	}
	if (p->arrival_us) {
		queue_rfc5322_date(p->arrival_us, date, sizeof(date));
		sb_printf(&b, "Arrival-Date: %s\r\n", date);
	}
	for (unsigned i = 0; i < p->rcpt_count; i++) {
		const struct queue_dsn_rcpt *r = &p->rcpts[i];
		char st[16];
		sb_printf(&b, "\r\n");
		clean(v, r->addr);
		sb_printf(&b, "Final-Recipient: rfc822; %s\r\n", v);
		if (r->orcpt && strchr(r->orcpt, ';')) {
			orcpt_decode(v, r->orcpt);
			sb_printf(&b, "Original-Recipient: %s\r\n", v);
		}
		sb_printf(&b, "Action: %s\r\n", action_word(r->action));
		clean(v, r->status ? r->status : "");
		snprintf(st, sizeof(st), "%.11s", v);
		if (!st[0])
			snprintf(st, sizeof(st), "%s",
				 r->action == QUEUE_DSN_DELIVERED ? "2.0.0"
				 : r->action == QUEUE_DSN_DELAYED ? "4.0.0"
								  : "5.0.0");
		sb_printf(&b, "Status: %s\r\n", st);
		if (r->remote_mta) {
			clean(v, r->remote_mta);
			sb_printf(&b, "Remote-MTA: dns; %s\r\n", v);
		}
		if (r->diagnostic && r->diagnostic[0]) {
			clean(v, r->diagnostic);
			sb_printf(&b, "Diagnostic-Code: smtp; %s\r\n", v);
		}
		if (r->last_attempt_us) {
			queue_rfc5322_date(r->last_attempt_us, date, sizeof(date));
			sb_printf(&b, "Last-Attempt-Date: %s\r\n", date);
		}
		if (r->action == QUEUE_DSN_DELAYED && r->will_retry_until_us) {
			queue_rfc5322_date(r->will_retry_until_us, date, sizeof(date));
			sb_printf(&b, "Will-Retry-Until: %s\r\n", date);
		}
	}
	sb_printf(&b, "\r\n");

	/* 3: the original, RFC 6522 3 / RFC 3462: headers or the whole message. */
	if (p->reader) {
		sb_printf(&b, "--%s\r\n", boundary);
		if (full) {
			sb_printf(&b, "Content-Description: Undelivered Message\r\n");
			sb_printf(&b, "Content-Type: message/rfc822\r\n\r\n");
		} else {
			sb_printf(&b, "Content-Description: Undelivered Message Headers\r\n");
			sb_printf(&b, "Content-Type: text/rfc822-headers\r\n\r\n");
		}
		rc = copy_original(&b, p, full);
		if (rc) {
			free(b.p);
			return rc;
		}
		sb_printf(&b, "\r\n");
	}
	sb_printf(&b, "--%s--\r\n", boundary);
	if (b.err) {
		free(b.p);
		return b.err;
	}
	*out = b.p;
	*out_len = b.len;
	return 0;
}
