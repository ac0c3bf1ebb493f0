/*
 * util.c - time and allocator glue.
 *
 * jemalloc is linked as the process allocator; OpenSSL is pointed at its
 * extended API so that its allocations are jemalloc's too, even if a
 * library loaded later interposes malloc.
 */
#include "core.h"

#include <string.h>
#include <time.h>
#include <jemalloc/jemalloc.h>
#include <openssl/crypto.h>

uint64_t mx_now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

int64_t mx_wall_s(void)
{
	return (int64_t)time(NULL);
}

static void *ossl_malloc(size_t n, const char *file, int line)
{
	(void)file;
	(void)line;
	return mallocx(n ? n : 1, 0);
}

static void *ossl_realloc(void *p, size_t n, const char *file, int line)
{
	(void)file;
	(void)line;
	if (p == NULL)
		return mallocx(n ? n : 1, 0);
	return rallocx(p, n ? n : 1, 0);
}

static void ossl_free(void *p, const char *file, int line)
{
	(void)file;
	(void)line;
	if (p != NULL)
		dallocx(p, 0);
}

int mx_alloc_init(void)
{
	return CRYPTO_set_mem_functions(ossl_malloc, ossl_realloc, ossl_free) ? 0 : -1;
}

size_t mx_u64_dec(uint64_t v, char out[MX_U64_DEC_MAX])
{
	char d[MX_U64_DEC_MAX];
	size_t i = sizeof(d);
	do
		d[--i] = (char)('0' + v % 10);
	while ((v /= 10) != 0);
	memcpy(out, d + i, sizeof(d) - i);
	return sizeof(d) - i;
}
