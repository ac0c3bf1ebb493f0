/*
 * dkim_canon.h - internal: RFC 6376 section 3.4 canonicalisation.
 *
 * The body canonicaliser is an incremental state machine: bytes go in with
 * any split (even between CR and LF), canonical bytes come out through a
 * sink callback in batches.  What cannot be decided yet is kept as state,
 * never as bytes: a CR waiting for its LF, a run of WSP (relaxed) and a count
 * of CRLFs that may turn out to be trailing empty lines (RFC 6376 3.4.3).
 *
 * The header functions canonicalise one complete header field.  Used by
 * sign.c, and directly by the unit tests and the fuzz target.
 */
#ifndef MX_DKIM_CANON_H
#define MX_DKIM_CANON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef void (*dkim_canon_sink_fn)(void *arg, const uint8_t *data, size_t len);

#define DKIM_CANON_STAGE 1024

struct dkim_body_canon {
	bool relaxed;
	bool cr_pending;       /* last byte was CR: is it the start of a CRLF? */
	bool wsp_pending;      /* relaxed: a WSP run not yet known to be inside a line */
	bool any_output;       /* canonical body is non-empty */
	uint64_t crlf_pending; /* CRLFs since the last content byte */
	uint64_t length;       /* canonical bytes emitted */
	dkim_canon_sink_fn sink;
	void *sink_arg;
	size_t stage_len;
	uint8_t stage[DKIM_CANON_STAGE];
};

void dkim_body_canon_init(struct dkim_body_canon *c, bool relaxed, dkim_canon_sink_fn sink,
			  void *arg);
void dkim_body_canon_update(struct dkim_body_canon *c, const uint8_t *data, size_t len);
/** End of body: emits the final CRLF (or nothing, relaxed empty body) and flushes. */
void dkim_body_canon_final(struct dkim_body_canon *c);

/**
 * Canonicalise one header field (name, colon, value, with its CRLFs).
 * Relaxed (3.4.2): lowercase name, unfold, WSP runs to one SP, no WSP around
 * the colon or at the end, then CRLF if add_crlf.  Simple (3.4.1): unchanged
 * (add_crlf is ignored; the field keeps whatever line end it has).
 * out must hold len + 3 bytes.  Returns the output length.
 */
/*
 * How the relaxed body scan finds the bytes that need the state machine.
 * Chosen from the CPU on first use; the tests force each one in turn so that
 * every implementation is checked against the reference on the same inputs.
 */
enum dkim_canon_scan {
	DKIM_SCAN_AUTO = -1,
	DKIM_SCAN_WORDS = 0, /* 8 bytes at a time in a uint64_t, any CPU */
	DKIM_SCAN_SSE2 = 1,  /* x86-64 */
	DKIM_SCAN_AVX2 = 2,  /* x86-64 with AVX2 */
};

/** Select the scan for the whole process; -ENOTSUP if this CPU or build lacks it. */
int dkim_canon_scan_select(enum dkim_canon_scan kind);

size_t dkim_header_canon(bool relaxed, const uint8_t *field, size_t len, bool add_crlf,
			 uint8_t *out);

#endif
