/*
 * canon_ref.h - a second, deliberately naive implementation of RFC 6376
 * body and header canonicalisation, for the unit tests and the fuzz target.
 *
 * It works on the whole body at once, in the order of the RFC's steps
 * (3.4.3, 3.4.4), with no state machine, so that it shares no logic with
 * lib/dkim/canon.c.  Output buffers must hold 2 * len + 2 bytes.
 */
#ifndef MX_DKIM_CANON_REF_H
#define MX_DKIM_CANON_REF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

static inline bool ref_wsp(uint8_t b)
{
	return b == ' ' || b == '\t';
}

/* Drop CRLFs at the end while two are there; add one if missing. */
static inline size_t ref_strip_trailing_lines(uint8_t *b, size_t n)
{
	while (n >= 4 && memcmp(b + n - 4, "\r\n\r\n", 4) == 0)
		n -= 2;
	if (n == 2 && memcmp(b, "\r\n", 2) == 0)
		return n;
	if (n < 2 || memcmp(b + n - 2, "\r\n", 2) != 0) {
		b[n++] = '\r';
		b[n++] = '\n';
	}
	return n;
}

static inline size_t ref_body_canon(bool relaxed, const uint8_t *in, size_t len, uint8_t *out)
{
	size_t n = 0;
	if (!relaxed) {
		memcpy(out, in, len);
		return ref_strip_trailing_lines(out, len);
	}
	/* 1: delete WSP runs that are followed by CRLF */
	for (size_t i = 0; i < len;) {
		if (ref_wsp(in[i])) {
			size_t j = i;
			while (j < len && ref_wsp(in[j]))
				j++;
			if (j + 1 < len && in[j] == '\r' && in[j + 1] == '\n') {
				i = j;
				continue;
			}
			/* 2: other WSP runs become one SP */
			out[n++] = ' ';
			i = j;
			continue;
		}
		out[n++] = in[i++];
	}
	/* 3: trailing empty lines */
	n = ref_strip_trailing_lines(out, n);
	/* an empty body stays empty */
	if (n == 2 && memcmp(out, "\r\n", 2) == 0)
		n = 0;
	return n;
}

/* Relaxed header field (3.4.2): out must hold len + 3. */
static inline size_t ref_header_relaxed(const uint8_t *f, size_t len, uint8_t *out)
{
	size_t n = 0, colon = 0;
	while (colon < len && f[colon] != ':')
		colon++;
	size_t name_end = colon;
	while (name_end > 0 && ref_wsp(f[name_end - 1]))
		name_end--;
	for (size_t i = 0; i < name_end; i++)
		out[n++] = (uint8_t)((f[i] >= 'A' && f[i] <= 'Z') ? f[i] + 32 : f[i]);
	if (colon == len)
		return n;
	out[n++] = ':';
	/* unfold: remove every CRLF, then compress WSP runs and trim both ends */
	uint8_t tmp[len + 1];
	size_t t = 0;
	for (size_t i = colon + 1; i < len; i++) {
		if (f[i] == '\r' && i + 1 < len && f[i + 1] == '\n') {
			i++;
			continue;
		}
		tmp[t++] = f[i];
	}
	size_t a = 0, z = t;
	while (a < z && ref_wsp(tmp[a]))
		a++;
	while (z > a && ref_wsp(tmp[z - 1]))
		z--;
	for (size_t i = a; i < z; i++) {
		if (ref_wsp(tmp[i])) {
			while (i + 1 < z && ref_wsp(tmp[i + 1]))
				i++;
			out[n++] = ' ';
		} else {
			out[n++] = tmp[i];
		}
	}
	out[n++] = '\r';
	out[n++] = '\n';
	return n;
}

#endif
