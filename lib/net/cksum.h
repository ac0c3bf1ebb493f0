/*
 * cksum.h - the Internet checksum (RFC 1071) for ports without checksum
 * offload (net_memif, net_ring, net_tap here): 8 bytes per step into a
 * 64-bit accumulator, and a variant that copies while it sums, so the
 * transmit path touches the payload once instead of twice.
 *
 * The one's complement sum does not depend on how bytes are grouped into
 * words as long as every word starts at an even offset (2^16 = 1 mod
 * 0xffff), so native-endian 32-bit halves of 64-bit loads give the same
 * folded sum as 16-bit words, and the same as rte_raw_cksum().
 */
#ifndef MX_NET_CKSUM_H
#define MX_NET_CKSUM_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

static inline uint64_t net_csum_step(uint64_t sum, uint64_t v)
{
	return sum + (v & 0xffffffffu) + (v >> 32);
}

/* Sum of len bytes (even start offset); len < 2^26 keeps the accumulator exact. */
static inline uint64_t net_csum(const void *buf, size_t len, uint64_t sum)
{
	const uint8_t *p = buf;
	uint64_t a = 0, b = 0, v0, v1;
	for (; len >= 16; len -= 16, p += 16) {
		memcpy(&v0, p, 8);
		memcpy(&v1, p + 8, 8);
		a = net_csum_step(a, v0);
		b = net_csum_step(b, v1);
	}
	sum += a + b;
	if (len >= 8) {
		memcpy(&v0, p, 8);
		sum = net_csum_step(sum, v0);
		p += 8;
		len -= 8;
	}
	if (len >= 4) {
		uint32_t w;
		memcpy(&w, p, 4);
		sum += w;
		p += 4;
		len -= 4;
	}
	if (len >= 2) {
		uint16_t h;
		memcpy(&h, p, 2);
		sum += h;
		p += 2;
		len -= 2;
	}
	if (len) {
		uint16_t last = 0; /* the odd byte in the first byte of its word */
		memcpy(&last, p, 1);
		sum += last;
	}
	return sum;
}

/* Copy len bytes from src to dst and return their sum added to sum (as net_csum). */
static inline uint64_t net_csum_copy(void *dst, const void *src, size_t len, uint64_t sum)
{
	const uint8_t *p = src;
	uint8_t *q = dst;
	uint64_t a = 0, b = 0, v0, v1;
	for (; len >= 16; len -= 16, p += 16, q += 16) {
		memcpy(&v0, p, 8);
		memcpy(&v1, p + 8, 8);
		memcpy(q, &v0, 8);
		memcpy(q + 8, &v1, 8);
		a = net_csum_step(a, v0);
		b = net_csum_step(b, v1);
	}
	memcpy(q, p, len);
	return net_csum(p, len, sum + a + b);
}

/* Fold to 16 bits (not complemented), in the byte order of the data summed. */
static inline uint16_t net_csum_fold(uint64_t sum)
{
	sum = (sum & 0xffffffffu) + (sum >> 32);
	sum = (sum & 0xffffffffu) + (sum >> 32);
	sum = (sum & 0xffffu) + (sum >> 16);
	sum = (sum & 0xffffu) + (sum >> 16);
	return (uint16_t)sum;
}

#endif
