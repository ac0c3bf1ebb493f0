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
 *
 * On x86-64 CPUs with AVX2 (checked at run time: the build targets
 * corei7) 32 bytes per step go into four 64-bit lanes, each 32-bit word
 * zero-extended: the same words summed, so the same folded sum, at about a
 * third of the cycles of the scalar loop for a full segment (bench/net:
 * these two loops were the largest items of the per-segment profile, the
 * receive check and the transmit copy of every 1448-byte segment).
 */
#ifndef MX_NET_CKSUM_H
#define MX_NET_CKSUM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define NET_CSUM_HAVE_AVX2 1
#endif

static inline uint64_t net_csum_step(uint64_t sum, uint64_t v)
{
	return sum + (v & 0xffffffffu) + (v >> 32);
}

/* Sum of len bytes (even start offset); len < 2^26 keeps the accumulator exact. */
static inline uint64_t net_csum_scalar(const void *buf, size_t len, uint64_t sum)
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
static inline uint64_t net_csum_copy_scalar(void *dst, const void *src, size_t len, uint64_t sum)
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
	return net_csum_scalar(p, len, sum + a + b);
}

#ifdef NET_CSUM_HAVE_AVX2
/* Add the four 64-bit lanes of a and b to sum. */
__attribute__((target("avx2"))) static inline uint64_t net_csum_lanes(__m256i a, __m256i b,
								      uint64_t sum)
{
	uint64_t t[4];
	_mm256_storeu_si256((__m256i *)t, _mm256_add_epi64(a, b));
	return sum + t[0] + t[1] + t[2] + t[3];
}

/* net_csum_scalar() with AVX2: call only where net_csum_avx2_ok(). */
__attribute__((target("avx2"))) static inline uint64_t net_csum_avx2(const void *buf, size_t len,
								     uint64_t sum)
{
	const uint8_t *p = buf;
	const __m256i z = _mm256_setzero_si256();
	__m256i a = z, b = z;
	for (; len >= 32; len -= 32, p += 32) {
		__m256i v = _mm256_loadu_si256((const __m256i *)(const void *)p);
		a = _mm256_add_epi64(a, _mm256_unpacklo_epi32(v, z));
		b = _mm256_add_epi64(b, _mm256_unpackhi_epi32(v, z));
	}
	return net_csum_scalar(p, len, net_csum_lanes(a, b, sum));
}

/* net_csum_copy_scalar() with AVX2: call only where net_csum_avx2_ok(). */
__attribute__((target("avx2"))) static inline uint64_t
net_csum_copy_avx2(void *dst, const void *src, size_t len, uint64_t sum)
{
	const uint8_t *p = src;
	uint8_t *q = dst;
	const __m256i z = _mm256_setzero_si256();
	__m256i a = z, b = z;
	for (; len >= 32; len -= 32, p += 32, q += 32) {
		__m256i v = _mm256_loadu_si256((const __m256i *)(const void *)p);
		_mm256_storeu_si256((__m256i *)(void *)q, v);
		a = _mm256_add_epi64(a, _mm256_unpacklo_epi32(v, z));
		b = _mm256_add_epi64(b, _mm256_unpackhi_epi32(v, z));
	}
	return net_csum_copy_scalar(q, p, len, net_csum_lanes(a, b, sum));
}
#endif

/* Does this CPU run the AVX2 variants?  (One load and test: libgcc caches cpuid.) */
static inline bool net_csum_avx2_ok(void)
{
#ifdef NET_CSUM_HAVE_AVX2
	return __builtin_cpu_supports("avx2");
#else
	return false;
#endif
}

/* Below this many bytes the vector set-up does not pay. */
#define NET_CSUM_VEC_MIN 64

/* Sum of len bytes (even start offset), len < 2^26: the fastest variant this CPU has. */
static inline uint64_t net_csum(const void *buf, size_t len, uint64_t sum)
{
#ifdef NET_CSUM_HAVE_AVX2
	if (len >= NET_CSUM_VEC_MIN && net_csum_avx2_ok())
		return net_csum_avx2(buf, len, sum);
#endif
	return net_csum_scalar(buf, len, sum);
}

/* Copy len bytes from src to dst and return their sum added to sum (as net_csum). */
static inline uint64_t net_csum_copy(void *dst, const void *src, size_t len, uint64_t sum)
{
#ifdef NET_CSUM_HAVE_AVX2
	if (len >= NET_CSUM_VEC_MIN && net_csum_avx2_ok())
		return net_csum_copy_avx2(dst, src, len, sum);
#endif
	return net_csum_copy_scalar(dst, src, len, sum);
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
