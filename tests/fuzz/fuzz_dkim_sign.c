/*
 * fuzz_dkim_sign.c - libFuzzer target for lib/dkim's streaming signer.
 *
 * Input layout: byte 0 picks the canonicalisations (bit 0: relaxed header,
 * bit 1: relaxed body) and the split seed; the rest is a whole message
 * (header block, blank line, body: any bytes).  The message is signed with
 * one Ed25519 key (deterministic signatures) twice: in one update, and in
 * pieces whose sizes come from the seed (1 to 17 bytes, sometimes 1448), so
 * the header-end detector and the body canonicaliser see every split.  Both
 * runs must return the same code and, on success, the same DKIM-Signature
 * field; the field must end in CRLF.  A 512-byte header limit makes the
 * overflow path reachable.
 */
#include "dkim.h"

#include <stdlib.h>
#include <string.h>

static struct dkim_signer *signer[4];

static struct dkim_signer *get_signer(int mode)
{
	if (signer[mode])
		return signer[mode];
	static struct dkim_key *key;
	char err[256];
	if (!key && dkim_key_generate(DKIM_ALG_ED25519_SHA256, 0, &key, err, sizeof(err)))
		abort();
	struct dkim_signer_config c;
	dkim_signer_config_init(&c);
	c.domain = "fleet.example";
	c.selector = "s1";
	c.ed25519_key = key;
	c.header_canon = mode & 1 ? DKIM_CANON_RELAXED : DKIM_CANON_SIMPLE;
	c.body_canon = mode & 2 ? DKIM_CANON_RELAXED : DKIM_CANON_SIMPLE;
	c.max_header_bytes = 512;
	if (dkim_signer_create(&c, &signer[mode], err, sizeof(err)))
		abort();
	return signer[mode];
}

static int sign_pieces(struct dkim_signer *s, const uint8_t *m, size_t len, uint32_t seed,
		       char *out, size_t *out_len)
{
	const char *hdr;
	size_t hl;
	int rc = dkim_sign_begin(s, 1795000000);
	for (size_t off = 0; rc == 0 && off < len;) {
		size_t step = len;
		if (seed) {
			seed = seed * 1103515245u + 12345u;
			step = (seed >> 16) % 8 == 0 ? 1448 : 1 + (seed >> 16) % 17;
		}
		if (step > len - off)
			step = len - off;
		rc = dkim_sign_update(s, m + off, step);
		off += step;
	}
	if (rc == 0)
		rc = dkim_sign_final(s, &hdr, &hl);
	if (rc == 0) {
		if (hl > 16384 || hl < 2 || hdr[hl - 2] != '\r' || hdr[hl - 1] != '\n')
			abort();
		memcpy(out, hdr, hl);
		*out_len = hl;
	}
	return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static char whole[16384], parts[16384];
	size_t wl = 0, pl = 0;
	if (size < 1 || size > 65536)
		return 0;
	struct dkim_signer *s = get_signer(data[0] & 3);
	uint32_t seed = (uint32_t)(data[0] >> 2) | 1u;
	int r1 = sign_pieces(s, data + 1, size - 1, 0, whole, &wl);
	int r2 = sign_pieces(s, data + 1, size - 1, seed, parts, &pl);
	if (r1 != r2 || (r1 == 0 && (wl != pl || memcmp(whole, parts, wl) != 0)))
		abort();
	return 0;
}
