/*
 * fuzz_spool_record.c - hostile bytes into the spool's decoders: the record
 * header and checksum check, the envelope codec, and the segment scanner
 * (over a memfd holding the input as a segment file), then the whole
 * read-only recovery (spool_scan) over the input as segment c0/<seq>.seg.  Any crash, leak or
 * out-of-bounds read is a bug; every input must be either accepted or refused.
 */
#include "spool.h"
#include "spool_internal.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/mman.h>
#include <unistd.h>

static int count_rec(void *arg, const struct spool_scan_rec *r)
{
	size_t *n = arg;
	(void)r;
	(*n)++;
	return 0;
}

static char dir[128];

static void cleanup(void)
{
	char c0[160];
	snprintf(c0, sizeof(c0), "%s/c0", dir);
	rmdir(c0);
	rmdir(dir);
}

static void on_msg(void *arg, const struct spool_recovered *m)
{
	size_t *n = arg;
	/* touch what a queue would read: every recipient and its state */
	for (uint32_t i = 0; i < m->env->rcpt_count; i++)
		*n += strlen(m->env->rcpts[i].addr) + m->rcpt[i].state;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct spool_rec_hdr h;
	if (spool_rec_check(data, size, &h) == 0 && h.type == SPOOL_REC_MSG) {
		struct spool_envelope *env;
		if (spool_env_decode(data + SPOOL_REC_HDR, h.aux, &env) == 0) {
			/*
			 * A decoded envelope re-encodes to the same bytes; one of
			 * version 1 (no flags byte) to the same with the version and
			 * a zero flags byte at offset 12 (FORMAT.md, Envelope).
			 */
			const uint8_t *in = data + SPOOL_REC_HDR;
			uint8_t *buf = malloc(h.aux + 2);
			long n = spool_env_encode(env, buf, h.aux + 2);
			if (in[0] == SPOOL_ENV_VERSION) {
				if (n != (long)h.aux || memcmp(buf, in, h.aux) != 0)
					abort();
			} else if (n != (long)h.aux + 1 || buf[0] != SPOOL_ENV_VERSION ||
				   memcmp(buf + 1, in + 1, 11) != 0 || buf[12] != 0 ||
				   memcmp(buf + 13, in + 12, h.aux - 12) != 0) {
				abort();
			}
			free(buf);
			free(env);
		}
	}
	struct spool_envelope *env;
	if (spool_env_decode(data, size, &env) == 0)
		free(env);
	static int fd = -1;
	if (fd < 0)
		fd = memfd_create("seg", 0);
	if (fd >= 0 && ftruncate(fd, 0) == 0 && pwrite(fd, data, size, 0) == (ssize_t)size) {
		struct spool_scan_seg res;
		size_t n = 0;
		uint64_t seq = size >= 24 ? spool_get64(data + 16) : 0;
		spool_scan_segment(fd, seq, count_rec, &n, &res);
		if (res.size > size)
			abort();
	}
	/* the whole recovery path (state records, envelopes) through a real directory */
	if (dir[0] == '\0') {
		snprintf(dir, sizeof(dir), "/dev/shm/fuzz-spool-%d", (int)getpid());
		mkdir(dir, 0700);
		char c0[160];
		snprintf(c0, sizeof(c0), "%s/c0", dir);
		mkdir(c0, 0700);
		atexit(cleanup);
	}
	char seg[256];
	uint64_t seq = size >= 24 ? spool_get64(data + 16) : 0;
	if (spool_seg_path(seg, sizeof(seg), dir, 0, seq) == 0) {
		int f = open(seg, O_WRONLY | O_CREAT | O_TRUNC, 0600);
		if (f >= 0) {
			if (write(f, data, size) == (ssize_t)size) {
				struct spool_recovery_stats rs;
				size_t n = 0;
				spool_scan(dir, 0, on_msg, &n, &rs);
			}
			close(f);
			unlink(seg);
		}
	}
	return 0;
}
