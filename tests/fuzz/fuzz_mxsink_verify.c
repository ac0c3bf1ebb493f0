/*
 * fuzz_mxsink_verify.c - hostile message content into mxsink's check of
 * mxgen's tag (bench/mxsink/verify.c): what a relay under test delivers is
 * input the sink must survive.  The first byte picks a split point; the
 * message is checked whole and split there, and both must give the same
 * result and the same tag fields.  Any crash, out-of-bounds read or
 * disagreement is a bug.
 */
#include "verify.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static enum mxb_verify_result check(const uint8_t *p, size_t n, size_t cut, struct mxb_verify *v)
{
	mxb_verify_begin(v);
	mxb_verify_data(v, p, cut);
	mxb_verify_data(v, p + cut, n - cut);
	return mxb_verify_end(v);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 2)
		return 0;
	size_t cut = ((size_t)data[0] * 7919) % size;
	const uint8_t *p = data + 1;
	size_t n = size - 1;
	if (cut > n)
		cut = n;
	static struct mxb_verify whole, split;
	enum mxb_verify_result a = check(p, n, n, &whole);
	enum mxb_verify_result b = check(p, n, cut, &split);
	if (a != b || whole.have_dkim != split.have_dkim)
		abort();
	if (a != MXB_VERIFY_NO_TAG && (whole.seq != split.seq || whole.send_us != split.send_us))
		abort();
	return 0;
}
