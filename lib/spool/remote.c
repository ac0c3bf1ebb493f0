/*
 * remote.c - reading a message of another core's spool.
 *
 * With several workers, the core that delivers a destination (its owner)
 * is often not the core whose spool holds the message.  The owner reads the
 * body straight from the segment file: spool_open_record() opens the
 * segment named by a location and checks that the record there is still
 * that message's (header checksum, type, id).  The fd stays readable while
 * the message is unfinished even if the owning core compacts it and
 * unlinks the old segment (an open file outlives its name); a location
 * gone stale by compaction fails the check, and the caller asks the owning
 * core for the new one (spool_locate there).
 */
#include "spool_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <unistd.h>

int spool_open_record(const char *dir, const struct spool_location *loc, uint64_t id)
{
	char path[PATH_MAX];
	uint8_t raw[SPOOL_REC_HDR];
	struct spool_rec_hdr h;

	if (spool_seg_path(path, sizeof(path), dir, loc->core, loc->segment) != 0)
		return -ENAMETOOLONG;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	ssize_t n;
	do
		n = pread(fd, raw, sizeof(raw), (off_t)loc->offset);
	while (n < 0 && errno == EINTR);
	int rc = n < 0 ? -errno : 0;
	if (rc == 0 &&
	    (n != (ssize_t)sizeof(raw) || spool_rec_hdr_get_seg(raw, loc->segment, &h) != 0 ||
	     h.type != SPOOL_REC_MSG || h.id != id ||
	     (uint64_t)loc->body_offset + loc->body_len > SPOOL_REC_HDR + (uint64_t)h.length))
		rc = -EBADMSG;
	if (rc != 0) {
		close(fd);
		return rc;
	}
	return fd;
}

long spool_pread_body(int fd, const struct spool_location *loc, uint64_t off, void *buf, size_t len)
{
	if (off >= loc->body_len)
		return 0;
	if (len > loc->body_len - off)
		len = (size_t)(loc->body_len - off);
	size_t got = 0;
	while (got < len) {
		ssize_t n = pread(fd, (uint8_t *)buf + got, len - got,
				  (off_t)(loc->offset + loc->body_offset + off + got));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			break;
		got += (size_t)n;
	}
	return (long)got;
}

int spool_read_envelope(int fd, const struct spool_location *loc, struct spool_envelope **out)
{
	if (loc->body_offset < SPOOL_REC_HDR || loc->body_offset > loc->length)
		return -EBADMSG;
	size_t len = loc->body_offset - SPOOL_REC_HDR;
	uint8_t *buf = malloc(len ? len : 1);
	if (buf == NULL)
		return -ENOMEM;
	size_t got = 0;
	while (got < len) {
		ssize_t n =
			pread(fd, buf + got, len - got, (off_t)(loc->offset + SPOOL_REC_HDR + got));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			free(buf);
			return n < 0 ? -errno : -EBADMSG;
		}
		got += (size_t)n;
	}
	int rc = spool_env_decode(buf, len, out);
	free(buf);
	return rc;
}
