/*
 * verify.h - mxsink's check of one received message against the tag mxgen
 * put in its header: "X-Mxgen: SEQ DIGEST SENDUS" (DIGEST: 16 hex digits of
 * bench/mxgen/digest.h's hash of the body).  Fed incrementally, in segments
 * of any size, as the message arrives (after dot-unstuffing or BDAT).
 *
 *	struct mxb_verify v;
 *	mxb_verify_begin(&v);
 *	mxb_verify_data(&v, p, n);	(any number of times)
 *	switch (mxb_verify_end(&v)) ...	(v.seq, v.send_us, v.have_dkim)
 *
 * The header is scanned a line at a time with memchr; only lines that can
 * matter (X-Mxgen, DKIM-Signature, the empty line) are copied, and only
 * their first MXB_VERIFY_LINE_MAX bytes (a longer X-Mxgen line is not a
 * tag).  The body after the empty line goes straight into the digest.
 */
#ifndef MXB_VERIFY_H
#define MXB_VERIFY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "digest.h"

#define MXB_VERIFY_LINE_MAX 256

enum mxb_verify_result {
	MXB_VERIFY_OK,
	MXB_VERIFY_CORRUPT, /* the body's digest differs from the tag's */
	MXB_VERIFY_NO_TAG,  /* no valid tag, or no end of the header */
};

struct mxb_verify {
	bool in_body;
	char line[MXB_VERIFY_LINE_MAX]; /* the start of a line that may matter */
	size_t line_len;		/* bytes kept in line[] */
	size_t line_total;		/* bytes of the current line so far, kept or not */
	bool keep_line;			/* it starts with X, D or CR */
	bool line_cut;			/* longer than line[] */
	bool have_tag, have_dkim;
	uint64_t seq, send_us, digest; /* from the tag */
	struct mxb_digest md;
};

void mxb_verify_begin(struct mxb_verify *v);
void mxb_verify_data(struct mxb_verify *v, const uint8_t *p, size_t n);
enum mxb_verify_result mxb_verify_end(struct mxb_verify *v);

#endif
