/*
 * canon.c - RFC 6376 section 3.4 canonicalisation, body (streaming) and header.
 *
 * Body, simple (3.4.3): bytes pass unchanged, trailing empty lines are
 * dropped, a missing final CRLF is added, an empty body becomes one CRLF.
 * Body, relaxed (3.4.4): additionally WSP at the end of a line is dropped and
 * WSP runs inside a line become one SP; an empty body stays empty.
 *
 * Two decisions are only possible later than the byte that raises them: a
 * WSP run is trailing only if CRLF follows, and a CRLF is a trailing empty
 * line only if the body ends before more content.  So the state keeps a
 * "WSP pending" flag and a count of pending CRLFs, and flushes them when a
 * content byte arrives.  Runs of ordinary bytes are passed to the sink as
 * whole spans, so the per-byte cost on ordinary text is one table lookup.
 *
 * An unterminated last line keeps its (compressed) trailing WSP before the
 * added CRLF, as dkimpy and the RFC's order of steps do.
 */
#include "dkim_canon.h"

#include <string.h>

static inline bool is_wsp(uint8_t b)
{
	return b == ' ' || b == '\t';
}

static void stage_flush(struct dkim_body_canon *c)
{
	if (c->stage_len) {
		c->sink(c->sink_arg, c->stage, c->stage_len);
		c->stage_len = 0;
	}
}

static void emit(struct dkim_body_canon *c, const uint8_t *p, size_t n)
{
	c->length += n;
	if (n >= DKIM_CANON_STAGE / 4) {
		stage_flush(c);
		c->sink(c->sink_arg, p, n);
		return;
	}
	if (c->stage_len + n > DKIM_CANON_STAGE)
		stage_flush(c);
	memcpy(c->stage + c->stage_len, p, n);
	c->stage_len += n;
}

static void emit_byte(struct dkim_body_canon *c, uint8_t b)
{
	if (c->stage_len == DKIM_CANON_STAGE)
		stage_flush(c);
	c->stage[c->stage_len++] = b;
	c->length++;
}

/* Content is coming: the pending CRLFs were real line ends, the WSP was inside. */
static void flush_pending(struct dkim_body_canon *c)
{
	while (c->crlf_pending) {
		emit_byte(c, '\r');
		emit_byte(c, '\n');
		c->crlf_pending--;
	}
	if (c->wsp_pending) {
		emit_byte(c, ' ');
		c->wsp_pending = false;
	}
	c->any_output = true;
}

void dkim_body_canon_init(struct dkim_body_canon *c, bool relaxed, dkim_canon_sink_fn sink,
			  void *arg)
{
	memset(c, 0, offsetof(struct dkim_body_canon, stage));
	c->relaxed = relaxed;
	c->sink = sink;
	c->sink_arg = arg;
}

/*
 * Byte classes for the relaxed scan: 0 passes unchanged, 1 is SP (unchanged
 * when one ordinary byte follows), 2 needs the state machine (HTAB, CR).
 */
static const uint8_t relaxed_class[256] = {['\t'] = 2, ['\r'] = 2, [' '] = 1};

/*
 * End of a span of bytes that pass unchanged, starting at i.  A CRLF inside
 * the span is fine when a content byte follows it in this buffer: it is then
 * neither part of trailing empty lines nor preceded by trailing WSP (a SP
 * before CR already ends the span).
 */
static size_t scan_plain(const struct dkim_body_canon *c, const uint8_t *p, size_t i, size_t n)
{
	if (!c->relaxed) {
		for (;;) {
			const uint8_t *cr = memchr(p + i, '\r', n - i);
			if (!cr)
				return n;
			i = (size_t)(cr - p);
			if (i + 2 >= n || p[i + 1] != '\n' || p[i + 2] == '\r')
				return i;
			i += 3;
		}
	}
	while (i < n) {
		uint8_t k = relaxed_class[p[i]];
		if (k == 0) {
			i++;
			continue;
		}
		if (k == 1) {
			if (i + 1 < n && relaxed_class[p[i + 1]] == 0) {
				i += 2;
				continue;
			}
			return i;
		}
		if (p[i] == '\r' && i + 2 < n && p[i + 1] == '\n' && relaxed_class[p[i + 2]] == 0) {
			i += 3;
			continue;
		}
		return i;
	}
	return i;
}

void dkim_body_canon_update(struct dkim_body_canon *c, const uint8_t *p, size_t n)
{
	size_t i = 0;
	while (i < n) {
		if (!c->cr_pending && !c->wsp_pending && c->crlf_pending == 0) {
			size_t start = i;
			i = scan_plain(c, p, i, n);
			if (i > start) {
				emit(c, p + start, i - start);
				c->any_output = true;
			}
			if (i == n)
				break;
		}
		uint8_t b = p[i++];
		if (c->cr_pending) {
			c->cr_pending = false;
			if (b == '\n') {
				/* End of line: a WSP run before it was trailing (3.4.4). */
				c->wsp_pending = false;
				c->crlf_pending++;
				continue;
			}
			/* A bare CR is content. */
			flush_pending(c);
			emit_byte(c, '\r');
		}
		if (b == '\r') {
			c->cr_pending = true;
		} else if (c->relaxed && is_wsp(b)) {
			c->wsp_pending = true;
		} else {
			flush_pending(c);
			emit_byte(c, b);
		}
	}
}

void dkim_body_canon_final(struct dkim_body_canon *c)
{
	if (c->cr_pending) {
		c->cr_pending = false;
		flush_pending(c);
		emit_byte(c, '\r');
	}
	if (c->wsp_pending) {
		/* Unterminated last line ending in WSP: kept as one SP (see header). */
		flush_pending(c);
	}
	if (c->any_output || !c->relaxed) {
		/* One CRLF ends the body; further pending CRLFs were empty lines. */
		emit_byte(c, '\r');
		emit_byte(c, '\n');
	}
	c->crlf_pending = 0;
	stage_flush(c);
}

size_t dkim_header_canon(bool relaxed, const uint8_t *f, size_t len, bool add_crlf, uint8_t *out)
{
	if (!relaxed) {
		memcpy(out, f, len);
		return len;
	}
	size_t o = 0, i = 0, colon = len;
	const uint8_t *col = memchr(f, ':', len);
	if (col)
		colon = (size_t)(col - f);
	/* Name: lowercase, without WSP before the colon. */
	size_t name_end = colon;
	while (name_end > 0 && is_wsp(f[name_end - 1]))
		name_end--;
	for (i = 0; i < name_end; i++) {
		uint8_t b = f[i];
		out[o++] = (b >= 'A' && b <= 'Z') ? (uint8_t)(b + 32) : b;
	}
	if (col) {
		out[o++] = ':';
		bool sp = false, started = false;
		for (i = colon + 1; i < len; i++) {
			uint8_t b = f[i];
			if (b == '\r' && i + 1 < len && f[i + 1] == '\n') {
				/* Unfold: the CRLF goes, the WSP after it is a WSP run. */
				i++;
				continue;
			}
			if (is_wsp(b)) {
				sp = started;
				continue;
			}
			if (sp)
				out[o++] = ' ';
			sp = false;
			started = true;
			out[o++] = b;
		}
	}
	if (add_crlf) {
		out[o++] = '\r';
		out[o++] = '\n';
	}
	return o;
}
