/*
 * crc_bench.c - nanoseconds per spool_crc32c() call at the record sizes the
 * relay writes (a 1 KiB message's record is about 1.1 KiB with envelope).
 * Not run by the tests.
 *
 *	build/bench/spool/crc_bench [ROUNDS]
 *
 * Prints one line per size: size, ns per call (the median of 9 timed loops of
 * ROUNDS calls, default 200000), and bytes per ns.  The checksum of the last
 * loop is folded into the output so the calls cannot be optimised away.
 */
#include "spool.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
	long rounds = argc > 1 ? atol(argv[1]) : 200000;
	if (rounds <= 0) {
		fprintf(stderr, "usage: crc_bench [ROUNDS > 0]\n");
		return 2;
	}
	static const size_t sizes[] = {64, 256, 700, 1100, 4096, 16384};
	static uint8_t buf[16384 + 8];
	for (size_t i = 0; i < sizeof(buf); i++)
		buf[i] = (uint8_t)(i * 131 + 7);
	uint32_t sink = 0;
	for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
		double t[9];
		for (int r = 0; r < 9; r++) {
			double t0 = now_ns();
			for (long i = 0; i < rounds; i++)
				sink = spool_crc32c(sink, buf + 1 + (i & 7), sizes[s]);
			t[r] = (now_ns() - t0) / (double)rounds;
		}
		qsort(t, 9, sizeof(t[0]), cmp_double);
		printf("size %6zu  %8.1f ns/call  %6.2f bytes/ns\n", sizes[s], t[4],
		       (double)sizes[s] / t[4]);
	}
	printf("checksum %08x\n", sink);
	return 0;
}
