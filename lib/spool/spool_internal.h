/*
 * spool_internal.h - on-disk record layout and helpers shared by the spool's
 * sources (record.c, recover.c, spool.c).  The layout is documented for
 * humans in FORMAT.md; keep both in step.
 */
#ifndef MX_SPOOL_INTERNAL_H
#define MX_SPOOL_INTERNAL_H

#include "spool.h"

#include <stdint.h>
#include <string.h>

#define SPOOL_REC_MAGIC 0x5258534du /* "MSXR" as little-endian bytes */
#define SPOOL_REC_VERSION 3	    /* written; versions 1 and 2 are still read (FORMAT.md) */
#define SPOOL_REC_HDR 32
/* Envelope version written: 2 adds the flags byte; version 1 (records 1 and 2) is read. */
#define SPOOL_ENV_VERSION 2
#define SPOOL_TEXT_MAX 1024 /* reply texts in state records are cut to this */
/*
 * Batches in flight at most (commit_depth's bound).  Recovery's torn-tail
 * rule depends on it: version 1 segments were written with 2 at most,
 * version 2 segments with up to this many.
 */
#define SPOOL_MAX_FLIGHT 4
#define SPOOL_V1_MAX_FLIGHT 2

enum spool_rec_type {
	SPOOL_REC_SEGHDR = 1, /* first record of a segment; id = segment sequence */
	SPOOL_REC_MSG = 2,    /* envelope + body; aux = envelope length; flags = rcpt count */
	SPOOL_REC_DELIVERED = 3,
	SPOOL_REC_DEFERRED = 4, /* payload: i64 next retry (s) + reply text */
	SPOOL_REC_BOUNCED = 5,	/* payload: reason text */
	SPOOL_REC_FINISHED = 6,
	SPOOL_REC_SEAL = 7,  /* last record of a rolled segment */
	SPOOL_REC_BATCH = 8, /* first record of each batch's write; id = batch sequence */
};

struct spool_rec_hdr {
	uint8_t type;
	uint8_t version;
	uint16_t flags;
	uint32_t length; /* payload bytes after the 32-byte header */
	uint32_t data_crc;
	uint64_t id;
	uint32_t aux;
	uint64_t seg; /* version 2: segment sequence seeding hdr_crc (0 in batch buffers) */
};

static inline void spool_put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}
static inline void spool_put32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}
static inline void spool_put64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}
static inline uint16_t spool_get16(const uint8_t *p)
{
	return (uint16_t)(p[0] | (p[1] << 8));
}
static inline uint32_t spool_get32(const uint8_t *p)
{
	return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
	       ((uint32_t)p[3] << 24);
}
static inline uint64_t spool_get64(const uint8_t *p)
{
	return (uint64_t)spool_get32(p) | ((uint64_t)spool_get32(p + 4) << 32);
}

/**
 * Write a 32-byte version 2 header (computes hdr_crc over h->seg and bytes
 * 0..27; data_crc must be set).
 */
void spool_rec_hdr_put(uint8_t out[SPOOL_REC_HDR], const struct spool_rec_hdr *h);
/**
 * Check and decode a header that should belong to segment seg: 0, -EBADMSG
 * (magic, or a header checksum that does not hold for seg: version 2 seeds
 * it with the segment sequence, so a stale record of a recycled file's
 * earlier life never passes), -EPROTONOSUPPORT (a newer version).
 */
int spool_rec_hdr_get_seg(const uint8_t in[SPOOL_REC_HDR], uint64_t seg, struct spool_rec_hdr *h);
/** spool_rec_hdr_get_seg() for records not yet placed in a segment (seg 0). */
int spool_rec_hdr_get(const uint8_t in[SPOOL_REC_HDR], struct spool_rec_hdr *h);
/** Re-seed a built version 2 header for the segment it is written to. */
void spool_rec_reseal(uint8_t rec[SPOOL_REC_HDR], uint64_t seg);
/** Build a whole record (header + payload) into out; returns its size. */
size_t spool_rec_build(uint8_t *out, uint8_t type, uint16_t flags, uint64_t id, uint32_t aux,
		       const void *payload, uint32_t len);

/** Check a complete record in memory: 0 or -EBADMSG / -EPROTONOSUPPORT / -EMSGSIZE. */
int spool_rec_check(const uint8_t *buf, size_t len, struct spool_rec_hdr *h);
/** spool_rec_check() of a record read from segment seg. */
int spool_rec_check_seg(const uint8_t *buf, size_t len, uint64_t seg, struct spool_rec_hdr *h);

/* Segment file names: <dir>/c<core>/<16 hex digits>.seg */
int spool_seg_path(char *out, size_t cap, const char *dir, unsigned core, uint64_t seq);
int spool_core_path(char *out, size_t cap, const char *dir, unsigned core);

/* ---- recovery scan (recover.c) ---------------------------------------- */

/* A record seen by the scanner; for SPOOL_REC_MSG payload holds the envelope. */
struct spool_scan_rec {
	struct spool_rec_hdr h;
	uint64_t seg;
	uint64_t off;
	const uint8_t *payload; /* state records: whole payload; MSG: NULL */
};

struct spool_scan_seg {
	uint64_t seq;
	uint64_t size;	    /* bytes kept (after a torn tail cut) */
	uint64_t file_size; /* as found */
	int state;	    /* 0 ok, 1 torn tail at size, 2 corrupt, 3 no record, 4 newer version */
	uint64_t max_batch; /* highest batch sequence seen (SEGHDR or BATCH) */
	uint64_t bad_off;
	const char *why;
	bool sealed;
	uint8_t version; /* of the segment header: 1 (appended files) or 2 (preallocated) */
};

typedef int (*spool_scan_rec_fn)(void *arg, const struct spool_scan_rec *r);

/**
 * Read one segment sequentially, verify every checksum and call fn for each
 * valid record in order.  Fills *res.  Returns 0 or a negative errno for an
 * I/O error (a corrupt or torn segment is not an error: see res->state).
 */
int spool_scan_segment(int fd, uint64_t seq, spool_scan_rec_fn fn, void *arg,
		       struct spool_scan_seg *res);

/** Sorted list of segment sequence numbers under <dir>/c<core>; malloc'd. */
int spool_list_segments(const char *dir, unsigned core, uint64_t **seqs, size_t *count);

#endif
