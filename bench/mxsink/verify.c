/*
 * verify.c - the message check of verify.h.
 *
 * A header line ends at LF (a CR before it is dropped); the header ends at
 * the first empty line (RFC 5322 2.1).  The tag's fields are parsed by hand,
 * all three or none: decimal SEQ (at most 19 digits), exactly 16 hex
 * digits, decimal SENDUS, separated by blanks, nothing else after them.
 */
#include "verify.h"

#include <string.h>
#include <strings.h>

/* Decimal digits at *p (at most 19: no overflow); advances *p.  -1 when there are none. */
static int parse_dec(const char **p, const char *end, uint64_t *out)
{
	const char *q = *p;
	uint64_t v = 0;
	while (q < end && *q >= '0' && *q <= '9' && q - *p < 19)
		v = v * 10 + (uint64_t)(*q++ - '0');
	if (q == *p || (q < end && *q >= '0' && *q <= '9'))
		return -1;
	*out = v;
	*p = q;
	return 0;
}

static const char *skip_blanks(const char *p, const char *end)
{
	while (p < end && (*p == ' ' || *p == '\t'))
		p++;
	return p;
}

/* "X-Mxgen: SEQ HEX16 SENDUS": all three fields or nothing. */
static void parse_tag(struct mxb_verify *v, const char *p, size_t n)
{
	static const char name[] = "X-Mxgen:";
	const char *end = p + n;
	uint64_t seq, sent, digest;
	if (n < sizeof(name) - 1 || strncasecmp(p, name, sizeof(name) - 1) != 0)
		return;
	p = skip_blanks(p + sizeof(name) - 1, end);
	if (parse_dec(&p, end, &seq) != 0)
		return;
	p = skip_blanks(p, end);
	if (end - p < 17 || mxb_parse_hex64(p, &digest) != 0 || (p[16] != ' ' && p[16] != '\t'))
		return;
	p = skip_blanks(p + 16, end);
	if (parse_dec(&p, end, &sent) != 0 || skip_blanks(p, end) != end)
		return;
	v->seq = seq;
	v->send_us = sent;
	v->digest = digest;
	v->have_tag = true;
}

void mxb_verify_begin(struct mxb_verify *v)
{
	v->in_body = false;
	v->line_len = v->line_total = 0;
	v->keep_line = v->line_cut = false;
	v->have_tag = v->have_dkim = false;
	mxb_digest_init(&v->md);
}

/* One header line ended (its LF consumed): the end of the header, or a field we look for. */
static void header_line(struct mxb_verify *v)
{
	size_t len = v->line_len;
	if (len > 0 && !v->line_cut && v->line[len - 1] == '\r')
		len--;
	if (v->line_total == 0 || (v->keep_line && len == 0 && !v->line_cut))
		v->in_body = true;
	else if (v->keep_line && !v->line_cut)
		parse_tag(v, v->line, len);
	/* a signature's first line is often longer than the kept part: the name suffices */
	if (v->keep_line && len >= 15 && strncasecmp(v->line, "DKIM-Signature:", 15) == 0)
		v->have_dkim = true;
	v->line_len = v->line_total = 0;
	v->keep_line = v->line_cut = false;
}

void mxb_verify_data(struct mxb_verify *v, const uint8_t *p, size_t n)
{
	size_t i = 0;
	while (!v->in_body && i < n) {
		const uint8_t *lf = memchr(p + i, '\n', n - i);
		size_t stop = lf ? (size_t)(lf - p) : n;
		size_t seg = stop - i;
		if (v->line_total == 0 && seg > 0) {
			uint8_t c = p[i] | 0x20; /* lower case for letters */
			v->keep_line = c == 'x' || c == 'd' || p[i] == '\r';
		}
		if (v->keep_line) {
			size_t room = MXB_VERIFY_LINE_MAX - v->line_len;
			size_t k = seg < room ? seg : room;
			memcpy(v->line + v->line_len, p + i, k);
			v->line_len += k;
			if (k < seg)
				v->line_cut = true;
		}
		v->line_total += seg;
		i = stop;
		if (lf == NULL)
			break;
		i++;
		header_line(v);
	}
	if (v->in_body && i < n)
		mxb_digest_update(&v->md, p + i, n - i);
}

enum mxb_verify_result mxb_verify_end(struct mxb_verify *v)
{
	if (!v->have_tag || !v->in_body)
		return MXB_VERIFY_NO_TAG;
	return mxb_digest_final(&v->md) == v->digest ? MXB_VERIFY_OK : MXB_VERIFY_CORRUPT;
}
