/*
 * recover.c - sequential segment scanner used by recovery, spool_scan() and
 * mxspool.  A segment is read front to back in large reads; every record's
 * header checksum and payload checksum are verified as the bytes stream by,
 * so message bodies are touched once by the CRC and never copied or parsed.
 * The caller decides what a record means (spool.c); this file decides only
 * where the valid part of a segment ends and why (see FORMAT.md, Recovery).
 */
#include "spool_internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#define SCAN_BUF (4u << 20)

struct scan_buf {
	int fd;
	uint8_t *buf;
	uint64_t base; /* file offset of buf[0] */
	size_t len;    /* valid bytes in buf */
	size_t cap;
	uint64_t file_size;
};

/* Make [off, off+need) resident; need <= b->cap.  0, or -errno; short at EOF is 0 too. */
static int scan_fill(struct scan_buf *b, uint64_t off, size_t need)
{
	if (off >= b->base && off + need <= b->base + b->len)
		return 0;
	if (off >= b->base && off <= b->base + b->len) {
		size_t keep = (size_t)(b->base + b->len - off);
		memmove(b->buf, b->buf + (off - b->base), keep);
		b->len = keep;
	} else {
		b->len = 0;
	}
	b->base = off;
	while (b->len < need && b->base + b->len < b->file_size) {
		ssize_t n =
			pread(b->fd, b->buf + b->len, b->cap - b->len, (off_t)(b->base + b->len));
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			break;
		b->len += (size_t)n;
	}
	return 0;
}

static bool has_valid_seal(struct scan_buf *b, uint64_t seq)
{
	uint8_t tail[SPOOL_REC_HDR];
	struct spool_rec_hdr h;
	if (b->file_size < 2 * SPOOL_REC_HDR)
		return false;
	if (pread(b->fd, tail, sizeof(tail), (off_t)(b->file_size - SPOOL_REC_HDR)) !=
	    (ssize_t)sizeof(tail))
		return false;
	return spool_rec_hdr_get_seg(tail, seq, &h) == 0 && h.type == SPOOL_REC_SEAL &&
	       h.id == seq && h.length == 0;
}

/*
 * Is there, at or after from, a valid BATCH record of segment seq with a
 * sequence of at least min_seq, or (version 2, where the seal is not at the
 * end of the preallocated file) a valid SEAL of it?  Records are not
 * aligned, so every byte offset is tried: one pass over the rest of the
 * segment, for an unsealed one at each recovery (the end of a version 2
 * segment's data looks like damage: zeros or stale bytes follow it).
 */
static int later_batch_exists(struct scan_buf *b, uint64_t seq, uint8_t version, uint64_t from,
			      uint64_t min_seq, bool *found)
{
	*found = false;
	uint64_t pos = from;
	while (pos + SPOOL_REC_HDR <= b->file_size) {
		uint64_t want = b->file_size - pos;
		int rc = scan_fill(b, pos, want < b->cap ? (size_t)want : b->cap);
		if (rc < 0)
			return rc;
		size_t avail = (size_t)(b->base + b->len - pos);
		if (avail < SPOOL_REC_HDR)
			return 0;
		const uint8_t *p = b->buf + (pos - b->base);
		for (size_t i = 0; i + SPOOL_REC_HDR <= avail; i++) {
			struct spool_rec_hdr h;
			if (p[i] != 0x4d || spool_get32(p + i) != SPOOL_REC_MAGIC)
				continue;
			/* records of another version are another life's (version 1 is unseeded) */
			if (spool_rec_hdr_get_seg(p + i, seq, &h) != 0 ||
			    (version != 0 && h.version != version))
				continue;
			if ((h.type == SPOOL_REC_BATCH && h.id >= min_seq) ||
			    (h.type == SPOOL_REC_SEAL && h.version >= 2 && h.id == seq)) {
				*found = true;
				return 0;
			}
		}
		pos += avail - (SPOOL_REC_HDR - 1);
	}
	return 0;
}

int spool_scan_segment(int fd, uint64_t seq, spool_scan_rec_fn fn, void *arg,
		       struct spool_scan_seg *res)
{
	struct stat st;
	if (fstat(fd, &st) < 0)
		return -errno;
	memset(res, 0, sizeof(*res));
	res->seq = seq;
	res->file_size = (uint64_t)st.st_size;
	struct scan_buf b = {.fd = fd, .file_size = (uint64_t)st.st_size};
	/* small segments (tools, tests, the fuzzer) do not need the whole 4 MiB */
	b.cap = b.file_size < SCAN_BUF ? (size_t)b.file_size + SPOOL_REC_HDR : SCAN_BUF;
	b.buf = malloc(b.cap);
	if (b.buf == NULL)
		return -ENOMEM;
	/* one front-to-back pass: let the kernel read ahead generously */
	posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
	res->sealed = has_valid_seal(&b, seq);
	uint64_t off = 0;
	int rc = 0;
	const char *why = NULL;
	bool seen_seal = false, newer = false, torn = false;
	uint64_t last_batch = 0; /* the batch the bytes at off belong to */
	while (off < b.file_size) {
		struct spool_rec_hdr h;
		if ((rc = scan_fill(&b, off, SPOOL_REC_HDR)) < 0)
			goto out;
		if (b.file_size - off < SPOOL_REC_HDR) {
			why = "partial record header";
			torn = true;
			break;
		}
		int hr = spool_rec_hdr_get_seg(b.buf + (off - b.base), seq, &h);
		if (hr == -EPROTONOSUPPORT) {
			why = "record version newer than this program";
			newer = true;
			break;
		}
		if (hr < 0) {
			why = "bad record header (magic or checksum)";
			break;
		}
		if (seen_seal) {
			why = "record after the seal";
			break;
		}
		if (off == 0 && (h.type != SPOOL_REC_SEGHDR || h.id != seq)) {
			why = "segment does not start with its header";
			break;
		}
		if (off == 0)
			res->version = h.version;
		if (h.version != res->version) {
			/* a version 1 record in a version 2 file is a stale one of its past */
			why = "record of another format version";
			break;
		}
		if (off != 0 && h.type == SPOOL_REC_SEGHDR) {
			why = "second segment header";
			break;
		}
		if ((uint64_t)h.length > b.file_size - off - SPOOL_REC_HDR) {
			why = "record runs past the end of the file";
			torn = true;
			break;
		}
		if (h.type == SPOOL_REC_MSG && h.aux > h.length) {
			why = "envelope longer than its record";
			break;
		}
		uint64_t total = SPOOL_REC_HDR + (uint64_t)h.length;
		const uint8_t *payload = NULL;
		uint32_t crc;
		if (total <= b.cap) {
			if ((rc = scan_fill(&b, off, (size_t)total)) < 0)
				goto out;
			payload = b.buf + (off - b.base) + SPOOL_REC_HDR;
			crc = spool_crc32c(0, payload, h.length);
		} else {
			/* bigger than the buffer: checksum it as it streams by */
			uint64_t pos = off + SPOOL_REC_HDR, end = off + total;
			crc = 0;
			while (pos < end) {
				size_t want = (size_t)((end - pos) < b.cap ? end - pos : b.cap);
				if ((rc = scan_fill(&b, pos, want)) < 0)
					goto out;
				size_t have = (size_t)(b.base + b.len - pos);
				if (have == 0) {
					rc = -EIO;
					goto out;
				}
				if (have > end - pos)
					have = (size_t)(end - pos);
				crc = spool_crc32c(crc, b.buf + (pos - b.base), have);
				pos += have;
			}
		}
		if (crc != h.data_crc) {
			why = "payload checksum mismatch";
			torn = true;
			break;
		}
		if (h.type == SPOOL_REC_SEAL) {
			seen_seal = true;
			if (res->version >= 2) {
				/* preallocated: what follows the seal is not data */
				res->sealed = true;
				off += total;
				res->size = off;
				goto out;
			}
		}
		if (h.type == SPOOL_REC_SEGHDR && h.length >= 24 && payload != NULL)
			last_batch = spool_get64(payload + 16);
		if (h.type == SPOOL_REC_BATCH)
			last_batch = h.id;
		if (last_batch > res->max_batch)
			res->max_batch = last_batch;
		if (h.type != SPOOL_REC_SEGHDR && h.type != SPOOL_REC_SEAL &&
		    h.type != SPOOL_REC_BATCH && fn != NULL) {
			struct spool_scan_rec r = {.h = h,
						   .seg = seq,
						   .off = off,
						   .payload = h.type == SPOOL_REC_MSG ? NULL
										      : payload};
			if ((rc = fn(arg, &r)) < 0)
				goto out;
		}
		off += total;
	}
	res->size = off;
	if (off == b.file_size) {
		res->state = off == 0 ? 3 : 0;
	} else if (res->version >= 2 && !newer) {
		/*
		 * A preallocated segment: its data ends where the records stop
		 * checking out (zeros, or bytes of the file's earlier life).  A
		 * valid header there whose record is incomplete is a torn write;
		 * a marker of a batch SPOOL_MAX_FLIGHT or more later, or a seal,
		 * after the end is corruption, as for version 1.
		 */
		bool later = false;
		res->bad_off = off;
		res->why = why;
		if ((rc = later_batch_exists(&b, seq, res->version, off + 1,
					     last_batch + SPOOL_MAX_FLIGHT, &later)) < 0)
			goto out;
		if (later)
			res->state = 2;
		else if (off == 0)
			res->state = 3;
		else
			res->state = torn ? 1 : 0;
	} else {
		res->bad_off = off;
		res->why = why;
		/*
		 * Only the last two batches written before a crash can be
		 * incomplete (two are in flight at most, and a third starts only
		 * after the first is durable), and a rolled segment ends with a
		 * seal.  Damage followed by the marker of a batch two or more
		 * later than the damaged one is corruption, not a torn write.
		 */
		bool later = false;
		if (!newer && !res->sealed && off > 0 &&
		    (rc = later_batch_exists(&b, seq, res->version, off + 1,
					     last_batch + SPOOL_V1_MAX_FLIGHT, &later)) < 0)
			goto out;
		if (newer)
			res->state = 4; /* never cut or move what a newer program wrote */
		else if (!res->sealed && !later)
			res->state = off == 0 ? 3 : 1;
		else
			res->state = 2;
	}
out:
	free(b.buf);
	return rc;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

int spool_list_segments(const char *dir, unsigned core, uint64_t **seqs, size_t *count)
{
	char path[4096];
	int rc = spool_core_path(path, sizeof(path), dir, core);
	*seqs = NULL;
	*count = 0;
	if (rc < 0)
		return rc;
	DIR *d = opendir(path);
	if (d == NULL)
		return errno == ENOENT ? 0 : -errno;
	size_t n = 0, cap = 0;
	uint64_t *v = NULL;
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		const char *s = de->d_name;
		if (strlen(s) != 20 || strcmp(s + 16, ".seg") != 0)
			continue;
		uint64_t seq = 0;
		bool ok = true;
		for (int i = 0; i < 16; i++) {
			char c = s[i];
			int x = (c >= '0' && c <= '9')	 ? c - '0'
				: (c >= 'a' && c <= 'f') ? c - 'a' + 10
							 : -1;
			if (x < 0) {
				ok = false;
				break;
			}
			seq = (seq << 4) | (uint64_t)x;
		}
		if (!ok)
			continue;
		if (n == cap) {
			cap = cap ? cap * 2 : 64;
			uint64_t *nv = realloc(v, cap * sizeof(*v));
			if (nv == NULL) {
				free(v);
				closedir(d);
				return -ENOMEM;
			}
			v = nv;
		}
		v[n++] = seq;
	}
	closedir(d);
	if (n)
		qsort(v, n, sizeof(*v), cmp_u64);
	*seqs = v;
	*count = n;
	return 0;
}
