/*
 * spool.h - the durable spool: per-core append-only segment files, group
 * commit on io_uring, state records, reclaim, compaction and recovery.
 *
 * One struct spool per core, used only by that core (no locks, not
 * thread-safe).  A session streams a message in:
 *
 *	spool_msg_begin(sp, &m)            -> m has its message ID (log it)
 *	spool_msg_append(m, data, len)     -> as bytes arrive
 *	spool_msg_commit(m, &env, cookie)  -> queued for the next group commit
 *	spool_poll(sp, now, out, max)      -> (cookie, id, status) once durable
 *
 * and answers "250 2.0.0 Ok: queued as ID" only when spool_poll reports
 * status 0 for its cookie (451 on -EIO, 452 on -ENOSPC).  Delivery state is
 * appended with spool_mark_*() on the core that owns the message
 * (spool_id_core()); spool_msg_finish() ends a message and lets its segment
 * be reclaimed.  The on-disk format is in lib/spool/FORMAT.md.
 */
#ifndef MX_SPOOL_H
#define MX_SPOOL_H

#include <sched.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct cfg_file;
struct spool;
struct spool_msg;

/** Length of a message ID string, without the NUL: 12 base32hex chars. */
#define SPOOL_ID_LEN 12
/** Highest core id a message ID can carry. */
#define SPOOL_MAX_CORE 255

enum spool_durability {
	SPOOL_DURABILITY_FSYNC = 0, /* completion after write + fdatasync (default) */
	SPOOL_DURABILITY_NONE,	    /* completion after the write; no fdatasync */
};

/*
 * A flushed batch of this many messages or more means the core is busy
 * (40k messages/s at the 200 us window): the next batches get
 * commit_window_busy_us, until one holds fewer.
 */
#define SPOOL_BUSY_BATCH 8

/*
 * Where io_uring runs the spool's blocking work (writev, fdatasync, the
 * spare's zero-fill): io-wq threads inherit the affinity of the thread that
 * opened the ring, the worker's polling core, and preempt it there.
 */
enum spool_io_cpus {
	SPOOL_IO_CPUS_WORKER = 0, /* inherit the opening thread's CPUs (default) */
	SPOOL_IO_CPUS_MAIN,	  /* io_cpu_set, filled by the application (its main
				     lcore's CPUs); left empty: as WORKER */
	SPOOL_IO_CPUS_LIST,	  /* io_cpu_set, from the configuration */
};

struct spool_config {
	const char *dir;		  /* spool directory; c<core>/ below it */
	enum spool_durability durability; /* default fsync */
	uint64_t commit_window_us;	  /* group commit window, default 200 us */
	uint64_t commit_window_busy_us;	  /* ... once a batch held SPOOL_BUSY_BATCH messages, 1 ms */
	uint64_t commit_bytes;		  /* flush when a batch reaches this, default 256 KiB */
	uint32_t commit_depth;		  /* batches written and synced at once, 1..4, default 3 */
	uint64_t segment_bytes;		  /* roll segments at this size, default 64 MiB */
	uint64_t max_bytes;		  /* this core's share of the spool size, 0 = no limit */
	uint64_t max_message_bytes;	  /* largest record, default 32 MiB (< segment_bytes) */
	uint32_t max_open_msgs;		  /* messages between begin and commit, default 4096 */
	uint64_t max_open_bytes;	  /* body bytes they hold in memory, default 256 MiB */
	uint32_t max_batch_bytes;	  /* batch buffer bound, default 8 MiB (>= commit_bytes) */
	uint32_t compact_live_pct;	  /* compact a segment below this live %, default 25 */
	uint64_t compact_min_age_us;	  /* ... and older than this, default 60 s */
	uint32_t compact_step_bytes;	  /* copy at most this much per poll, default 1 MiB */
	enum spool_io_cpus io_cpus;	  /* [spool] io_cpus: worker (default), main, a list */
	cpu_set_t io_cpu_set;		  /* MAIN and LIST: the CPUs */
};

/** RET= of RFC 3461 section 4.3. */
enum spool_ret { SPOOL_RET_NONE = 0, SPOOL_RET_FULL = 1, SPOOL_RET_HDRS = 2 };

/** NOTIFY= bits of RFC 3461 section 4.1; 0 means not given (default). */
#define SPOOL_NOTIFY_NEVER 0x01
#define SPOOL_NOTIFY_SUCCESS 0x02
#define SPOOL_NOTIFY_FAILURE 0x04
#define SPOOL_NOTIFY_DELAY 0x08

struct spool_rcpt {
	const char *addr;  /* forward-path, without <> */
	const char *orcpt; /* ORCPT= value as received (addr-type;xtext), or NULL */
	uint8_t notify;	   /* SPOOL_NOTIFY_* bits */
};

/*
 * What the client declared at MAIL FROM, forwarded as received: BODY=8BITMIME
 * (RFC 6152 section 2) and SMTPUTF8 (RFC 6531 section 3.4).  Without them a
 * message recovered after a restart would go out as 7-bit ASCII mail.
 */
#define SPOOL_ENV_F_8BITMIME 0x01
#define SPOOL_ENV_F_SMTPUTF8 0x02
#define SPOOL_ENV_F_ALL (SPOOL_ENV_F_8BITMIME | SPOOL_ENV_F_SMTPUTF8)

/* Every string may be NULL (stored as empty).  Strings are at most 65535 bytes. */
struct spool_envelope {
	const char *sender; /* reverse-path without <>, "" for the null sender */
	const char *envid;  /* ENVID= (RFC 3461 section 4.4) */
	uint8_t ret;	    /* enum spool_ret */
	uint8_t flags;	    /* SPOOL_ENV_F_*; read as 0 from records older than version 3 */
	const char *client_ip;
	const char *helo;
	int64_t arrival_us; /* wall clock, microseconds since the epoch */
	const char *tls_version;
	const char *tls_cipher;
	const char *auth_user;
	const char *message_id; /* Message-ID header, if the session saw one */
	const struct spool_rcpt *rcpts;
	uint32_t rcpt_count; /* 1 .. 65535 */
};

/** Per-recipient delivery state, as recovered or as kept in memory. */
enum spool_rcpt_state {
	SPOOL_RCPT_QUEUED = 0,
	SPOOL_RCPT_DEFERRED,
	SPOOL_RCPT_DELIVERED,
	SPOOL_RCPT_BOUNCED,
};

struct spool_rcpt_status {
	uint8_t state;	      /* enum spool_rcpt_state */
	int64_t next_retry_s; /* deferred: wall-clock seconds; 0 = now */
	const char *text;     /* deferred: last reply; bounced: reason; else NULL */
};

/** Where a message record is: the body is read with spool_read_body(). */
struct spool_location {
	uint32_t core;
	uint64_t segment;     /* segment sequence number: <dir>/c<core>/<segment>.seg */
	uint64_t offset;      /* of the record header in the segment file */
	uint32_t length;      /* of the whole record */
	uint32_t body_offset; /* of the body from the record start */
	uint32_t body_len;
};

/** A durable commit, reported by spool_poll(). */
struct spool_completion {
	uint64_t cookie;
	uint64_t id;
	char id_str[SPOOL_ID_LEN + 1];
	int status; /* 0 durable; -EIO (answer 451) or -ENOSPC (answer 452) */
};

/** One unfinished message found by recovery. */
struct spool_recovered {
	uint64_t id;
	char id_str[SPOOL_ID_LEN + 1];
	const struct spool_envelope *env; /* valid during the callback only */
	struct spool_location loc;
	const struct spool_rcpt_status *rcpt; /* env->rcpt_count entries, callback only */
};

typedef void (*spool_recover_fn)(void *arg, const struct spool_recovered *msg);

struct spool_recovery_stats {
	uint64_t messages;	/* unfinished messages reported */
	uint64_t rcpts_pending; /* their queued + deferred recipients */
	uint64_t segments;	/* segments scanned */
	uint64_t records;	/* valid records read */
	uint64_t bytes;		/* bytes read and verified */
	uint64_t torn_tails;	/* segments whose partial tail was cut */
	uint64_t quarantined;	/* segments moved to <dir>/quarantine/ */
	uint64_t empty_removed; /* segments without a record, removed */
	uint64_t sealed;	/* unsealed segments given a seal at the end of their data */
	uint64_t elapsed_us;
};

#define SPOOL_LAT_BUCKETS 24 /* log2 buckets in us: [0,1), [1,2), [2,4) ... */

struct spool_stats {
	uint64_t bytes_written;
	uint64_t records;  /* all record types */
	uint64_t messages; /* message records committed durably */
	uint64_t commits;  /* batches written (= fdatasync count with fsync) */
	uint64_t fdatasyncs;
	uint64_t batch_msgs_max;
	uint64_t batch_msgs_sum; /* with commits: average batch size */
	uint64_t batch_bytes_max;
	uint64_t commit_lat_us[SPOOL_LAT_BUCKETS]; /* commit() to completion */
	uint64_t enospc_refusals;		   /* begin/commit answered -ENOSPC */
	uint64_t open_limit_hits;		   /* max_open_msgs reached */
	uint64_t open_bytes_limit_hits;		   /* max_open_bytes reached */
	uint64_t batch_limit_hits;		   /* max_batch_bytes reached */
	uint64_t too_big;			   /* max_message_bytes exceeded */
	uint64_t io_errors;			   /* failed batches */
	uint64_t short_writes;			   /* resubmitted remainders */
	uint64_t torn_tails;
	uint64_t quarantined;
	uint64_t segments_created;
	uint64_t segments_precreated; /* of those, a spare prepared ahead (only overwritten) */
	uint64_t segments_unprepared; /* of those, no spare was ready: a file that grows */
	uint64_t segments_reclaimed;
	uint64_t segments_recycled; /* of those, kept as the next spare instead of unlinked */
	uint64_t spare_zero_bytes;  /* zeros written to prepare spares */
	uint64_t spare_zero_writebacks; /* their chunks, each written back before the next two */
	uint64_t spare_failures;    /* spare preparations abandoned (ENOSPC, I/O errors) */
	uint64_t compaction_bytes;
	uint64_t compaction_msgs;
	uint64_t body_reads_memory; /* spool_read_body() from a kept batch buffer (no pread) */
	uint64_t body_reads_file;   /* spool_read_body() by pread */
	uint64_t live_messages;	    /* gauge */
	uint64_t used_bytes;	    /* gauge: segment bytes + pending batch */
	uint64_t segments;	    /* gauge */
};

/** Fill in defaults (dir stays NULL). */
void spool_config_defaults(struct spool_config *c);
/**
 * Read the [spool] section (dir, durability, commit_window, commit_bytes, commit_depth,
 * segment_size, max_size, max_message_size, io_cpus) over the defaults; max_size is
 * divided by cores.  0 or -EINVAL with "file:line: message" in err.
 */
int spool_config_from_cfg(struct cfg_file *cf, unsigned cores, struct spool_config *c, char *err,
			  size_t errlen);

/**
 * Take the exclusive lock <dir>/lock (flock) that marks a running relay.
 * Returns the fd to keep open (>= 0), -EWOULDBLOCK if another process holds
 * it, or another negative errno.
 */
int spool_dir_lock(const char *dir);
/** Release a lock taken with spool_dir_lock(). */
void spool_dir_unlock(int fd);

/**
 * Open core's spool under cfg->dir, recover it and start a new generation
 * of message IDs.  recover_cb (may be NULL) is called once per unfinished
 * message; rs (may be NULL) receives the counts.  Torn tails are truncated,
 * corrupt segments quarantined.  0 or negative errno; *out freed with
 * spool_close().
 */
int spool_open(const struct spool_config *cfg, unsigned core, spool_recover_fn recover_cb,
	       void *arg, struct spool_recovery_stats *rs, struct spool **out);
/** Write out and wait for everything pending (blocking), then free (open messages too). */
void spool_close(struct spool *sp);

/**
 * Read-only scan of core's segments (no truncation, no quarantine, no new
 * generation): what recovery would report.  For tools and tests.
 */
int spool_scan(const char *dir, unsigned core, spool_recover_fn cb, void *arg,
	       struct spool_recovery_stats *rs);

/** Cores that have a c<core> directory under dir, as a bitmap of 256 bits. */
int spool_dir_cores(const char *dir, uint64_t cores[4]);

/** True if a new message may be accepted now (check at MAIL FROM). */
bool spool_has_room(const struct spool *sp);
/**
 * The next segment is being prepared (recycled or zero-filled, then synced, in io_uring's
 * worker); once ready, a roll-over needs no syscall.
 */
bool spool_spare_preparing(const struct spool *sp);

/**
 * Start a message; its ID is assigned now.  -ENOSPC (spool or disk full:
 * answer 452 4.3.1), -ENOBUFS (max_open_msgs), -ENOMEM.
 */
int spool_msg_begin(struct spool *sp, struct spool_msg **out);
/**
 * Add body bytes.  0, -EFBIG past max_message_bytes, -ENOBUFS past max_open_bytes
 * (all open messages together: answer 451), -ENOMEM; the message stays open.
 */
int spool_msg_append(struct spool_msg *m, const void *data, size_t len);
/**
 * Queue the message for the next group commit and release m.  On success
 * spool_poll() later reports cookie with the final status.  On error m is
 * released too and nothing is reported: -ENOSPC, -EINVAL (envelope), -EFBIG,
 * -ENOBUFS (batch buffer full: answer 451).
 */
int spool_msg_commit(struct spool_msg *m, const struct spool_envelope *env, uint64_t cookie);
/**
 * Put bytes in front of what was appended (before the commit), e.g. a
 * DKIM-Signature field computed once the whole message was seen.  Same
 * limits and errors as spool_msg_append.
 */
int spool_msg_prepend(struct spool_msg *m, const void *data, size_t len);
/** Drop an open message. */
void spool_msg_abort(struct spool_msg *m);
uint64_t spool_msg_id(const struct spool_msg *m);
const char *spool_msg_id_str(const struct spool_msg *m);

/**
 * Reap I/O completions without blocking, start the next group commit when
 * its window or size is reached, do a bounded step of reclaim/compaction.
 * Writes up to max completions to out and returns how many.
 */
int spool_poll(struct spool *sp, uint64_t now_us, struct spool_completion *out, int max);
/** Write the pending batch now and wait until everything is durable (tools, shutdown). */
int spool_sync(struct spool *sp);

/* State records, appended to the owning core's log (durable with the next commit). */
int spool_mark_delivered(struct spool *sp, uint64_t id, uint32_t rcpt);
int spool_mark_deferred(struct spool *sp, uint64_t id, uint32_t rcpt, int64_t next_retry_s,
			const char *last_reply);
int spool_mark_bounced(struct spool *sp, uint64_t id, uint32_t rcpt, const char *reason);
/** The message is done (delivered, bounced and DSN queued, or deleted). */
int spool_msg_finish(struct spool *sp, uint64_t id);
/** Make every deferred recipient due now.  0, -ENOENT. */
int spool_requeue(struct spool *sp, uint64_t id);

/** Current location of a live message.  0 or -ENOENT (or -EAGAIN: not yet durable). */
int spool_locate(const struct spool *sp, uint64_t id, struct spool_location *loc);
/** Per-recipient state of a live message: pointer valid until the next call on sp. */
int spool_rcpt_states(const struct spool *sp, uint64_t id, const struct spool_rcpt_status **st,
		      uint32_t *count);
/**
 * Read body bytes [off, off+len) of a live message into buf (synchronous
 * pread; owning core only).  Returns bytes read (short at the end) or -errno.
 */
long spool_read_body(struct spool *sp, uint64_t id, uint64_t off, void *buf, size_t len);

/**
 * Another core's message, from any thread (remote.c): open the segment of
 * loc under dir and check that the record at loc->offset is message id's.
 * Returns an fd (close() it), -ENOENT or -EBADMSG when the message is not
 * there any more (compacted: spool_locate() on its core has the new place).
 * The fd stays valid while the message is unfinished.
 */
int spool_open_record(const char *dir, const struct spool_location *loc, uint64_t id);
/** Body bytes [off, off+len) of the record open on fd: count (short at the end) or -errno. */
long spool_pread_body(int fd, const struct spool_location *loc, uint64_t off, void *buf,
		      size_t len);
/** The envelope of the record open on fd (spool_env_decode: free() *out).  0 or -errno. */
int spool_read_envelope(int fd, const struct spool_location *loc, struct spool_envelope **out);

/** Counters (a snapshot). */
void spool_get_stats(const struct spool *sp, struct spool_stats *st);
/** Percentile (0..100) of commit latency in microseconds from the histogram (bucket top). */
uint64_t spool_stats_lat_pct(const struct spool_stats *st, double pct);

/* ---- message IDs, records, envelopes (pure functions) ------------------ */

/** Format id as 12 base32hex characters plus NUL. */
void spool_id_format(uint64_t id, char out[SPOOL_ID_LEN + 1]);
/** Parse 12 base32hex characters (case-insensitive).  0 or -EINVAL. */
int spool_id_parse(const char *s, uint64_t *id);
unsigned spool_id_core(uint64_t id);
/** Compose an ID: generation (24 bits), core (8 bits), sequence (28 bits). */
uint64_t spool_id_make(uint32_t gen, unsigned core, uint32_t seq);

/** CRC32C (Castagnoli), RFC 3720 appendix B.4 conventions; crc = 0 to start. */
uint32_t spool_crc32c(uint32_t crc, const void *data, size_t len);

/**
 * Encode env into buf (capacity cap), as envelope version 2 (with flags).
 * Returns the encoded length, or -EINVAL (bad envelope, or a flag outside
 * SPOOL_ENV_F_ALL), -ENOBUFS (cap too small).
 */
long spool_env_encode(const struct spool_envelope *env, void *buf, size_t cap);
/** Size spool_env_encode needs, or -EINVAL. */
long spool_env_size(const struct spool_envelope *env);
/**
 * Decode an encoded envelope (hostile input), version 1 (flags read as 0)
 * or 2.  *out is one malloc'd block (free() it).  0, -EINVAL (malformed:
 * every length is checked; unknown flags), -ENOMEM.
 */
int spool_env_decode(const void *buf, size_t len, struct spool_envelope **out);

#endif
