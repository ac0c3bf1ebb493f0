/*
 * digest.c - the 64-bit body digest of digest.h.
 *
 * The input is cut into 32-byte blocks; word i of a block (little-endian,
 * whatever the host) goes into lane i as h = rotl(h ^ (w * K1), 29) * K2.
 * Four independent lanes keep four multiplications in flight (one lane
 * alone waits ~5 cycles per word for the previous step).  At the end the
 * last partial block is padded with zeros and mixed in like a full one, the
 * length is added (so zero padding and trailing zero bytes differ), the
 * lanes are folded into one word and an xor-shift-multiply finaliser lets
 * every input bit reach every output bit.  K1, K2 are odd constants (the
 * golden ratio's and another large odd number): multiplying by an odd
 * constant is a bijection, so no two words collide in one step.
 */
#include "digest.h"

#include <string.h>

#define K1 0x9e3779b97f4a7c15ull
#define K2 0xd6e8feb86659fd93ull
#define SEED 0x5bd1e9955bd1e995ull

static inline uint64_t rotl(uint64_t x, unsigned r)
{
	return (x << r) | (x >> (64 - r));
}

static inline uint64_t load_le64(const uint8_t *p)
{
	uint64_t w;
	memcpy(&w, p, 8);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
	w = __builtin_bswap64(w);
#endif
	return w;
}

static inline uint64_t mix(uint64_t h, uint64_t w)
{
	return rotl(h ^ (w * K1), 29) * K2;
}

static inline void block(uint64_t lane[4], const uint8_t *p)
{
	lane[0] = mix(lane[0], load_le64(p));
	lane[1] = mix(lane[1], load_le64(p + 8));
	lane[2] = mix(lane[2], load_le64(p + 16));
	lane[3] = mix(lane[3], load_le64(p + 24));
}

void mxb_digest_init(struct mxb_digest *d)
{
	for (unsigned i = 0; i < 4; i++)
		d->lane[i] = SEED + i * K1;
	d->len = 0;
	d->tail_len = 0;
}

void mxb_digest_update(struct mxb_digest *d, const void *data, size_t n)
{
	const uint8_t *p = data;
	d->len += n;
	if (d->tail_len) {
		size_t k = MXB_DIGEST_BLOCK - d->tail_len;
		if (k > n)
			k = n;
		memcpy(d->tail + d->tail_len, p, k);
		d->tail_len += (unsigned)k;
		p += k;
		n -= k;
		if (d->tail_len < MXB_DIGEST_BLOCK)
			return;
		block(d->lane, d->tail);
		d->tail_len = 0;
	}
	uint64_t lane[4] = {d->lane[0], d->lane[1], d->lane[2], d->lane[3]};
	for (; n >= MXB_DIGEST_BLOCK; p += MXB_DIGEST_BLOCK, n -= MXB_DIGEST_BLOCK)
		block(lane, p);
	memcpy(d->lane, lane, sizeof(lane));
	memcpy(d->tail, p, n);
	d->tail_len = (unsigned)n;
}

uint64_t mxb_digest_final(struct mxb_digest *d)
{
	if (d->tail_len) {
		memset(d->tail + d->tail_len, 0, MXB_DIGEST_BLOCK - d->tail_len);
		block(d->lane, d->tail);
	}
	uint64_t h = d->len * K2;
	for (unsigned i = 0; i < 4; i++)
		h = mix(h, d->lane[i]);
	h ^= h >> 31;
	h *= K1;
	h ^= h >> 29;
	h *= K2;
	h ^= h >> 32;
	return h;
}

uint64_t mxb_digest(const void *p, size_t n)
{
	struct mxb_digest d;
	mxb_digest_init(&d);
	mxb_digest_update(&d, p, n);
	return mxb_digest_final(&d);
}

void mxb_hex64(char out[17], uint64_t v)
{
	static const char hex[] = "0123456789abcdef";
	for (int i = 15; i >= 0; i--, v >>= 4)
		out[i] = hex[v & 15];
	out[16] = '\0';
}

int mxb_parse_hex64(const char *s, uint64_t *out)
{
	uint64_t v = 0;
	for (int i = 0; i < 16; i++) {
		char c = s[i];
		unsigned x;
		if (c >= '0' && c <= '9')
			x = (unsigned)(c - '0');
		else if (c >= 'a' && c <= 'f')
			x = (unsigned)(c - 'a' + 10);
		else if (c >= 'A' && c <= 'F')
			x = (unsigned)(c - 'A' + 10);
		else
			return -1; /* also stops at a NUL: never reads past a short string */
		v = v << 4 | x;
	}
	*out = v;
	return 0;
}
