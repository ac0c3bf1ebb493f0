/*
 * fuzz_dkim_canon.c - libFuzzer target for lib/dkim's canonicalisation.
 *
 * Input layout: byte 0 picks the mode (bit 0: relaxed body), the relaxed
 * scan implementation (byte 0 / 2 mod 3: words, SSE2, AVX2, where the CPU
 * has it) and the split seed; the rest is a message body.  The body is canonicalised three ways:
 * in one piece, in pieces whose sizes come from the seed (so the fuzzer
 * chooses the split points, including between CR and LF), and by the naive
 * reference in tests/dkim/canon_ref.h.  All three must agree.  The first
 * line is also canonicalised as a header field, relaxed, against the
 * reference.
 */
#include "dkim_canon.h"
#include "canon_ref.h"

#include <stdlib.h>
#include <string.h>

struct out {
	uint8_t *buf;
	size_t len, cap;
};

static void sink(void *arg, const uint8_t *p, size_t n)
{
	struct out *o = arg;
	if (o->len + n > o->cap)
		abort(); /* canonical output is never longer than 2 * input + 2 */
	memcpy(o->buf + o->len, p, n);
	o->len += n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1 || size > 65536)
		return 0;
	bool relaxed = data[0] & 1;
	uint32_t seed = data[0] >> 1;
	if (dkim_canon_scan_select((enum dkim_canon_scan)(seed % 3)) != 0)
		dkim_canon_scan_select(DKIM_SCAN_AUTO);
	const uint8_t *in = data + 1;
	size_t len = size - 1;
	size_t cap = 2 * len + 4;
	struct out whole = {malloc(cap), 0, cap}, parts = {malloc(cap), 0, cap};
	uint8_t *ref = malloc(cap);
	struct dkim_body_canon *c = malloc(sizeof(*c));

	dkim_body_canon_init(c, relaxed, sink, &whole);
	dkim_body_canon_update(c, in, len);
	dkim_body_canon_final(c);
	if (c->length != whole.len)
		abort();

	dkim_body_canon_init(c, relaxed, sink, &parts);
	for (size_t off = 0; off < len;) {
		seed = seed * 1103515245u + 12345u;
		size_t step = 1 + (seed >> 16) % 17;
		if (step > len - off)
			step = len - off;
		dkim_body_canon_update(c, in + off, step);
		off += step;
	}
	dkim_body_canon_final(c);

	size_t rn = ref_body_canon(relaxed, in, len, ref);
	if (whole.len != parts.len || memcmp(whole.buf, parts.buf, whole.len) != 0)
		abort();
	if (whole.len != rn || memcmp(whole.buf, ref, rn) != 0)
		abort();

	/* header field: up to the first LF, at most 1024 bytes */
	size_t hl = 0;
	while (hl < len && hl < 1024 && in[hl] != '\n')
		hl++;
	uint8_t *h1 = malloc(hl + 3), *h2 = malloc(hl + 3);
	size_t n1 = dkim_header_canon(true, in, hl, true, h1);
	size_t n2 = ref_header_relaxed(in, hl, h2);
	bool has_colon = memchr(in, ':', hl) != NULL;
	/* the reference omits the CRLF for a field without a colon */
	if (has_colon && (n1 != n2 || memcmp(h1, h2, n1) != 0))
		abort();
	free(h1);
	free(h2);
	free(whole.buf);
	free(parts.buf);
	free(ref);
	free(c);
	return 0;
}
