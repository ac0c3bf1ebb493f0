/*
 * spool.c - one core's spool: message streaming, group commit on io_uring,
 * state records, reclaim, compaction and recovery at open.
 *
 * Records committed by sessions are copied into the filling batch buffer.
 * spool_poll() flushes that batch when its window (commit_window_us) or size
 * (commit_bytes) is reached and fewer than commit_depth batches are in
 * flight: file offsets are assigned then, a writev per segment touched is
 * queued, linked to an fdatasync, and a batch's completions are reported
 * when every CQE of it and of every older batch is in.  Reporting in order
 * keeps the rule recovery relies on: only the last commit_depth batches
 * of a segment can be torn, and none of them was acknowledged.  A failed
 * batch fails the younger ones in flight too (they were written after it).
 *
 * Segments are written into prepared files of real blocks ("The spare
 * segment file" below), so a commit only overwrites and its fdatasync commits no
 * file metadata.  Segments are reclaimed oldest first, renamed into the next
 * spare (recycled) or unlinked.  A state record in a newer segment may
 * supersede one in an older segment, never the reverse, so unlinking in order
 * never resurrects a finished message; compaction copies the live messages of
 * the oldest segment forward (record bytes as they are, the header
 * checksum re-seeded for the new segment, then their current state) so that one long-deferred
 * message does not pin the whole spool.
 */
#include "spool_internal.h"
#include "core.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define SEGHDR_LEN (SPOOL_REC_HDR + 24)
#define BATCH_LEN SPOOL_REC_HDR
#define SEAL_LEN SPOOL_REC_HDR
#define RING_ENTRIES 256
#define ENT_PENDING 0x01 /* message record not durable yet */
#define ENT_COPYING 0x02 /* queued for compaction */
#define ID_SEQ_MAX 0x0fffffffu
#define PROBE_INTERVAL_US 100000
/*
 * The buffers of the last SPOOL_RECENT durable batches are kept (swapped
 * out of the batch, not copied): a delivery reads a body moments after its
 * commit, and spool_read_body() then copies it from memory instead of a
 * pread per message.  At most SPOOL_RECENT buffers of max_batch_bytes.
 */
#define SPOOL_RECENT 8

struct seg;

struct ent {
	uint64_t id;
	struct seg *seg;
	uint64_t off;
	uint32_t len;
	uint32_t env_len;
	uint16_t rcpt_count;
	uint8_t flags;
	uint8_t mem_slot; /* sp->recent[] that holds the record while its gen is mem_gen */
	uint32_t mem_gen; /* 0: only on disk */
	uint32_t mem_off; /* the record's offset in that buffer */
	struct spool_rcpt_status *rs; /* NULL: every recipient queued */
	struct ent *prev, *next;      /* in seg's list */
};

struct seg {
	uint64_t seq;
	int fd;
	uint64_t planned; /* end of what is written or in flight */
	uint32_t live;
	uint64_t live_bytes;
	uint64_t created_us;
	uint64_t unlink_after; /* batch sequence whose durability frees it */
	bool sealed, compacting;
	bool prealloc; /* a prepared file of segment_bytes real blocks: commits only overwrite */
	bool name_durable; /* its directory entry is synced already (a prepared spare) */
	struct ent *head, *tail;
	struct seg *prev, *next;
};

enum desc_kind { D_MSG, D_COPY, D_STATE };

struct desc {
	uint32_t buf_off;
	uint32_t len;
	uint8_t kind;
	uint64_t id;
	uint64_t cookie;
	uint64_t commit_us;
	struct seg *old_seg; /* D_COPY: where it was */
	uint64_t old_off;
};

struct batch;

struct extent {
	struct spool *sp;
	struct batch *batch;
	struct seg *seg;
	bool created; /* this batch created seg */
	uint64_t file_off;
	uint64_t data_off;		     /* where the first batch record lands */
	uint64_t slice_start;		     /* in the batch buffer */
	uint8_t hdr[SEGHDR_LEN + BATCH_LEN]; /* [segment header] batch marker */
	uint32_t hdr_len;
	uint8_t seal[SEAL_LEN];
	struct iovec iov[3];
	int iovcnt;
	struct iovec riov[3]; /* remainder after a short write */
	uint64_t total;
	uint64_t done;
	int outstanding;
	int retries;
	bool resubmit;
};

struct batch {
	uint8_t *buf;
	size_t len, cap;
	struct desc *d;
	size_t nd, capd;
	uint32_t msgs;
	uint64_t first_us;
	uint64_t seq;
	struct extent *ext;
	size_t nex, capex;
	int status;
	bool io_done; /* every CQE is in */
};

struct spool_msg {
	struct spool *sp;
	uint64_t id;
	char id_str[SPOOL_ID_LEN + 1];
	uint8_t *body;
	size_t len, cap;
	struct spool_msg *next_free;
	struct spool_msg *next_all; /* every message object, freed by spool_close() */
};

struct spool {
	struct spool_config cfg;
	unsigned core;
	bool readonly;
	char dir[4096];
	char core_dir[4096];
	int core_dir_fd;
	struct io_uring ring;
	bool ring_ok;

	uint32_t gen;
	uint32_t id_seq;

	/* message table: open addressing, linear probing, power-of-two size */
	struct ent **tab;
	size_t tab_mask;
	size_t tab_count;

	struct seg *oldest, *current; /* list oldest..newest; current = newest */
	uint64_t next_seg_seq;
	uint64_t seg_bytes_total;

	struct batch b[SPOOL_MAX_FLIGHT + 1];
	struct spool_recent {
		uint8_t *buf;
		size_t cap;
		uint32_t gen; /* of the batch whose bytes buf holds; 0: none */
	} recent[SPOOL_RECENT];
	unsigned recent_next;
	uint32_t recent_gen;
	struct batch *fill;
	struct batch *flight[SPOOL_MAX_FLIGHT]; /* oldest first */
	int nflight;
	uint64_t batch_seq, durable_seq;
	uint64_t batch_cap;

	struct spool_completion *outq;
	size_t out_head, out_len, out_cap;

	uint32_t open_msgs;
	uint32_t last_batch_msgs; /* of the last batch spool_poll flushed: SPOOL_BUSY_BATCH */
	uint64_t open_bytes; /* body bytes held by open messages */
	struct spool_msg *free_msgs;
	struct spool_msg *all_msgs;

	/*
	 * The spare: the file the next segment will be, made ready through
	 * io_uring off the commit path (see prepare_spare).  Named spare.seg
	 * until a roll renames it to its sequence.
	 */
	enum {
		NEXT_NONE,
		NEXT_OPENING,	 /* fresh file: openat */
		NEXT_ALLOCATING, /* fresh file: fallocate segment_bytes */
		NEXT_DIRSYNC,	 /* recycled file: its old name's removal made durable */
		NEXT_ZEROING,	 /* writing zeros up to segment_bytes */
		NEXT_SYNCING,	 /* fdatasync of the zeros (and of the extents they wrote) */
		NEXT_NAMING,	 /* renamed to its sequence: directory fsync */
		NEXT_READY,
	} next_state;
	int next_fd;
	uint64_t next_seq; /* its sequence once named */
	char next_path[4200];
	uint64_t zero_off, zero_end; /* next zero write (UINT64_MAX: one failed); end of the file */
	int zero_inflight; /* chunks: a write and its writeback */
	int zero_err;
	unsigned zero_tail; /* bytes of the last chunk's write, if short (the others are whole) */
	uint8_t tag_open, tag_falloc, tag_dirsync, tag_zero, tag_zero_wb, tag_sync, tag_named;

	bool disk_full;
	bool size_full; /* max_bytes refused a commit: wait for reclaim */
	uint64_t next_probe_us;

	struct spool_rcpt_status *scratch;
	uint32_t scratch_len;

	struct spool_stats st;
};

/* ---- config ------------------------------------------------------------ */

void spool_config_defaults(struct spool_config *c)
{
	memset(c, 0, sizeof(*c));
	c->durability = SPOOL_DURABILITY_FSYNC;
	c->commit_window_us = 200;
	/*
	 * Each commit is a writev and an fdatasync in io_uring's workers, on
	 * the worker's own core (~24 us of it per commit).  spool_bench at
	 * 100k messages/s: 4700 commits/s at 200 us, 990/s with this, 16%
	 * less CPU per message (bench/RESULTS.md, session 7).  A lone message
	 * still waits only commit_window_us.
	 */
	c->commit_window_busy_us = 1000;
	c->commit_bytes = 256 << 10;
	c->commit_depth = 3; /* bench/spool/README.md: lower p50 than 2, p99 no worse */
	c->segment_bytes = 64ull << 20;
	c->max_message_bytes = 32u << 20;
	c->max_open_msgs = 4096;
	c->max_open_bytes = 256ull << 20;
	c->max_batch_bytes = 8u << 20;
	c->compact_live_pct = 25;
	c->compact_min_age_us = 60ull * 1000000;
	c->compact_step_bytes = 1u << 20;
}

static int cfg_err(char *err, size_t errlen, struct cfg_file *cf, struct cfg_entry *e,
		   const char *what)
{
	snprintf(err, errlen, "%s:%d: [spool] %s: %s", cf->path ? cf->path : "config", e->line,
		 e->key, what);
	return -EINVAL;
}

/* "0,2-3": a CPU list as in taskset -c; 0 or -EINVAL. */
static int parse_cpu_list(const char *s, cpu_set_t *set)
{
	CPU_ZERO(set);
	for (;;) {
		char *end;
		unsigned long lo = strtoul(s, &end, 10), hi;
		if (end == s || lo >= CPU_SETSIZE)
			return -EINVAL;
		hi = lo;
		if (*end == '-') {
			s = end + 1;
			hi = strtoul(s, &end, 10);
			if (end == s || hi < lo || hi >= CPU_SETSIZE)
				return -EINVAL;
		}
		for (unsigned long c = lo; c <= hi; c++)
			CPU_SET(c, set);
		if (*end == '\0')
			return 0;
		if (*end != ',')
			return -EINVAL;
		s = end + 1;
	}
}

int spool_config_from_cfg(struct cfg_file *cf, unsigned cores, struct spool_config *c, char *err,
			  size_t errlen)
{
	struct cfg_entry *e;
	uint64_t v;
	if (cores == 0)
		cores = 1;
	if ((e = cfg_get(cf, "spool", NULL, "dir")) != NULL)
		c->dir = e->value;
	if ((e = cfg_get(cf, "spool", NULL, "durability")) != NULL) {
		if (strcmp(e->value, "fsync") == 0)
			c->durability = SPOOL_DURABILITY_FSYNC;
		else if (strcmp(e->value, "none") == 0)
			c->durability = SPOOL_DURABILITY_NONE;
		else
			return cfg_err(err, errlen, cf, e, "expected fsync or none");
	}
	if ((e = cfg_get(cf, "spool", NULL, "commit_window")) != NULL) {
		if (cfg_parse_duration_us(e->value, &v) < 0 || v > 1000000)
			return cfg_err(err, errlen, cf, e, "expected a duration up to 1s");
		c->commit_window_us = v;
	}
	if ((e = cfg_get(cf, "spool", NULL, "commit_window_busy")) != NULL) {
		if (cfg_parse_duration_us(e->value, &v) < 0 || v > 1000000)
			return cfg_err(err, errlen, cf, e, "expected a duration up to 1s");
		c->commit_window_busy_us = v;
	}
	if ((e = cfg_get(cf, "spool", NULL, "commit_bytes")) != NULL) {
		if (cfg_parse_size(e->value, &v) < 0 || v < 4096 || v > (64u << 20))
			return cfg_err(err, errlen, cf, e, "expected a size from 4K to 64M");
		c->commit_bytes = v;
	}
	if ((e = cfg_get(cf, "spool", NULL, "commit_depth")) != NULL) {
		char *end;
		unsigned long d = strtoul(e->value, &end, 10);
		if (end == e->value || *end != '\0' || d < 1 || d > SPOOL_MAX_FLIGHT)
			return cfg_err(err, errlen, cf, e, "expected 1 to 4 batches");
		c->commit_depth = (uint32_t)d;
	}
	if ((e = cfg_get(cf, "spool", NULL, "segment_size")) != NULL) {
		if (cfg_parse_size(e->value, &v) < 0 || v < (64u << 10) || v > (4ull << 30))
			return cfg_err(err, errlen, cf, e, "expected a size from 64K to 4G");
		c->segment_bytes = v;
	}
	if ((e = cfg_get(cf, "spool", NULL, "max_size")) != NULL) {
		if (cfg_parse_size(e->value, &v) < 0)
			return cfg_err(err, errlen, cf, e, "expected a size");
		c->max_bytes = v / cores;
	}
	if (c->max_message_bytes + SEGHDR_LEN + SEAL_LEN > c->segment_bytes)
		c->max_message_bytes = c->segment_bytes / 2; /* default follows a small segment */
	if ((e = cfg_get(cf, "spool", NULL, "max_message_size")) != NULL) {
		if (cfg_parse_size(e->value, &v) < 0 || v < 1024 || v > (1ull << 31))
			return cfg_err(err, errlen, cf, e, "expected a size from 1K to 2G");
		c->max_message_bytes = v;
	}
	if ((e = cfg_get(cf, "spool", NULL, "io_cpus")) != NULL) {
		if (strcmp(e->value, "main") == 0)
			c->io_cpus = SPOOL_IO_CPUS_MAIN;
		else if (strcmp(e->value, "worker") == 0)
			c->io_cpus = SPOOL_IO_CPUS_WORKER;
		else if (parse_cpu_list(e->value, &c->io_cpu_set) == 0)
			c->io_cpus = SPOOL_IO_CPUS_LIST;
		else
			return cfg_err(err, errlen, cf, e,
				       "expected main, worker or a CPU list such as 0,2-3");
	}
	if (c->max_message_bytes + SEGHDR_LEN + SEAL_LEN > c->segment_bytes) {
		snprintf(err, errlen, "%s: [spool] max_message_size must be below segment_size",
			 cf->path ? cf->path : "config");
		return -EINVAL;
	}
	return 0;
}

/* ---- directory lock ---------------------------------------------------- */

int spool_dir_lock(const char *dir)
{
	char path[4096];
	if (snprintf(path, sizeof(path), "%s/lock", dir) >= (int)sizeof(path))
		return -ENAMETOOLONG;
	int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
		int e = errno;
		close(fd);
		return e == EWOULDBLOCK ? -EWOULDBLOCK : -e;
	}
	char pid[32];
	int n = snprintf(pid, sizeof(pid), "%ld\n", (long)getpid());
	if (ftruncate(fd, 0) == 0 && pwrite(fd, pid, (size_t)n, 0) < 0)
		MX_WARN("spool: cannot write pid to %s: %s", path, strerror(errno));
	return fd;
}

void spool_dir_unlock(int fd)
{
	if (fd >= 0)
		close(fd);
}

int spool_dir_cores(const char *dir, uint64_t cores[4])
{
	memset(cores, 0, 4 * sizeof(uint64_t));
	DIR *d = opendir(dir);
	if (d == NULL)
		return -errno;
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		const char *s = de->d_name;
		if (s[0] != 'c' || s[1] < '0' || s[1] > '9')
			continue;
		char *end;
		unsigned long c = strtoul(s + 1, &end, 10);
		if (*end != '\0' || c > SPOOL_MAX_CORE)
			continue;
		cores[c / 64] |= 1ull << (c % 64);
	}
	closedir(d);
	return 0;
}

/* ---- message table ----------------------------------------------------- */

static size_t tab_slot(const struct spool *sp, uint64_t id)
{
	return (size_t)((id * 0x9E3779B97F4A7C15ull) >> 17) & sp->tab_mask;
}

static struct ent *tab_find(const struct spool *sp, uint64_t id)
{
	for (size_t i = tab_slot(sp, id);; i = (i + 1) & sp->tab_mask) {
		struct ent *e = sp->tab[i];
		if (e == NULL)
			return NULL;
		if (e->id == id)
			return e;
	}
}

static int tab_grow(struct spool *sp)
{
	size_t ncap = (sp->tab_mask + 1) * 2;
	struct ent **nt = calloc(ncap, sizeof(*nt));
	if (nt == NULL)
		return -ENOMEM;
	struct ent **old = sp->tab;
	size_t ocap = sp->tab_mask + 1;
	sp->tab = nt;
	sp->tab_mask = ncap - 1;
	for (size_t i = 0; i < ocap; i++) {
		if (old[i] == NULL)
			continue;
		size_t j = tab_slot(sp, old[i]->id);
		while (nt[j] != NULL)
			j = (j + 1) & sp->tab_mask;
		nt[j] = old[i];
	}
	free(old);
	return 0;
}

static int tab_insert(struct spool *sp, struct ent *e)
{
	if ((sp->tab_count + 1) * 2 > sp->tab_mask + 1 && tab_grow(sp) < 0)
		return -ENOMEM;
	size_t i = tab_slot(sp, e->id);
	while (sp->tab[i] != NULL)
		i = (i + 1) & sp->tab_mask;
	sp->tab[i] = e;
	sp->tab_count++;
	return 0;
}

static void tab_remove(struct spool *sp, struct ent *e)
{
	size_t i = tab_slot(sp, e->id);
	while (sp->tab[i] != e)
		i = (i + 1) & sp->tab_mask;
	sp->tab[i] = NULL;
	sp->tab_count--;
	/* backward-shift deletion keeps every probe chain unbroken */
	for (size_t j = (i + 1) & sp->tab_mask; sp->tab[j] != NULL; j = (j + 1) & sp->tab_mask) {
		size_t home = tab_slot(sp, sp->tab[j]->id);
		bool move = (j > i) ? (home <= i || home > j) : (home <= i && home > j);
		if (move) {
			sp->tab[i] = sp->tab[j];
			sp->tab[j] = NULL;
			i = j;
		}
	}
}

/* ---- segments ---------------------------------------------------------- */

static void seg_link_ent(struct seg *s, struct ent *e)
{
	e->seg = s;
	e->next = NULL;
	e->prev = s->tail;
	if (s->tail)
		s->tail->next = e;
	else
		s->head = e;
	s->tail = e;
	s->live++;
	s->live_bytes += e->len;
}

static void seg_unlink_ent(struct ent *e)
{
	struct seg *s = e->seg;
	if (s == NULL)
		return;
	if (e->prev)
		e->prev->next = e->next;
	else
		s->head = e->next;
	if (e->next)
		e->next->prev = e->prev;
	else
		s->tail = e->prev;
	s->live--;
	s->live_bytes -= e->len;
	e->seg = NULL;
	e->prev = e->next = NULL;
}

static void ent_free_states(struct ent *e)
{
	if (e->rs == NULL)
		return;
	for (uint32_t i = 0; i < e->rcpt_count; i++)
		free((char *)e->rs[i].text);
	free(e->rs);
	e->rs = NULL;
}

static void ent_destroy(struct spool *sp, struct ent *e)
{
	seg_unlink_ent(e);
	tab_remove(sp, e);
	ent_free_states(e);
	free(e);
	sp->st.live_messages = sp->tab_count;
}

static struct seg *seg_new(struct spool *sp, uint64_t seq, int fd, uint64_t size)
{
	struct seg *s = calloc(1, sizeof(*s));
	if (s == NULL)
		return NULL;
	s->seq = seq;
	s->fd = fd;
	s->planned = size;
	s->created_us = mx_now_us();
	s->prev = sp->current;
	if (sp->current)
		sp->current->next = s;
	else
		sp->oldest = s;
	sp->current = s;
	sp->seg_bytes_total += size;
	sp->st.segments++;
	return s;
}

static void seg_drop(struct spool *sp, struct seg *s, bool unlink_file)
{
	char path[4096];
	if (unlink_file && spool_seg_path(path, sizeof(path), sp->dir, sp->core, s->seq) == 0 &&
	    unlink(path) < 0 && errno != ENOENT)
		MX_WARN("spool c%u: unlink %s: %s", sp->core, path, strerror(errno));
	if (s->fd >= 0)
		close(s->fd);
	if (s->prev)
		s->prev->next = s->next;
	else
		sp->oldest = s->next;
	if (s->next)
		s->next->prev = s->prev;
	else
		sp->current = s->prev;
	sp->seg_bytes_total -= s->planned;
	sp->st.segments--;
	free(s);
}

/* ---- generation counter ------------------------------------------------ */

/*
 * <dir>/spool.gen holds the last generation handed out.  Each open takes the
 * next one under flock, so IDs never repeat across cores or restarts even if
 * the clock goes backwards; floor is the highest generation seen in records.
 */
static int take_generation(struct spool *sp, uint32_t floor, uint32_t *gen)
{
	char path[4096], buf[32];
	if (snprintf(path, sizeof(path), "%s/spool.gen", sp->dir) >= (int)sizeof(path))
		return -ENAMETOOLONG;
	int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	if (flock(fd, LOCK_EX) < 0) {
		int e = -errno;
		close(fd);
		return e;
	}
	ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
	uint64_t last = 0;
	if (n > 0) {
		buf[n] = '\0';
		char *end;
		last = strtoull(buf, &end, 10);
		if (end == buf) {
			MX_WARN("spool: %s unreadable, continuing from the records", path);
			last = 0;
		}
	}
	if (last < floor)
		last = floor;
	uint32_t g = (uint32_t)((last + 1) & 0xffffff);
	if (g == 0)
		g = 1; /* 16M generations: wraps only after that many restarts */
	int len = snprintf(buf, sizeof(buf), "%u\n", g);
	int rc = 0;
	if (pwrite(fd, buf, (size_t)len, 0) != len || ftruncate(fd, len) < 0 || fsync(fd) < 0)
		rc = -errno ? -errno : -EIO;
	close(fd);
	if (rc == 0)
		*gen = g;
	return rc;
}

static int next_id(struct spool *sp, uint64_t *id)
{
	if (sp->id_seq >= ID_SEQ_MAX) {
		uint32_t g;
		int rc = take_generation(sp, sp->gen, &g);
		if (rc < 0)
			return rc;
		sp->gen = g;
		sp->id_seq = 0;
	}
	*id = spool_id_make(sp->gen, sp->core, ++sp->id_seq);
	return 0;
}

/* ---- batches ----------------------------------------------------------- */

static int batch_reserve(struct spool *sp, struct batch *b, size_t more)
{
	if (b->len + more > sp->batch_cap) {
		sp->st.batch_limit_hits++;
		return -ENOBUFS;
	}
	if (b->len + more > b->cap) {
		size_t nc = b->cap ? b->cap : (1u << 20);
		while (nc < b->len + more)
			nc *= 2;
		uint8_t *nb = realloc(b->buf, nc);
		if (nb == NULL)
			return -ENOMEM;
		b->buf = nb;
		b->cap = nc;
	}
	if (b->nd == b->capd) {
		size_t nc = b->capd ? b->capd * 2 : 1024;
		struct desc *nd = realloc(b->d, nc * sizeof(*nd));
		if (nd == NULL)
			return -ENOMEM;
		b->d = nd;
		b->capd = nc;
	}
	return 0;
}

static struct desc *batch_add(struct spool *sp, struct batch *b, size_t len, enum desc_kind k,
			      uint64_t id)
{
	struct desc *d = &b->d[b->nd++];
	memset(d, 0, sizeof(*d));
	d->buf_off = (uint32_t)b->len;
	d->len = (uint32_t)len;
	d->kind = (uint8_t)k;
	d->id = id;
	if (b->len == 0)
		b->first_us = mx_now_us();
	b->len += len;
	sp->st.used_bytes = sp->seg_bytes_total + sp->fill->len;
	return d;
}

static int add_state(struct spool *sp, uint8_t type, uint64_t id, uint32_t rcpt, const void *p,
		     uint32_t len)
{
	if (sp->readonly)
		return -EROFS;
	int rc = batch_reserve(sp, sp->fill, SPOOL_REC_HDR + len);
	if (rc < 0)
		return rc;
	struct batch *b = sp->fill;
	spool_rec_build(b->buf + b->len, type, 0, id, rcpt, p, len);
	batch_add(sp, b, SPOOL_REC_HDR + len, D_STATE, id);
	return 0;
}

static struct extent *ext_new(struct batch *b)
{
	if (b->nex == b->capex) {
		size_t nc = b->capex ? b->capex * 2 : 4;
		struct extent *ne = realloc(b->ext, nc * sizeof(*ne));
		if (ne == NULL)
			return NULL;
		b->ext = ne;
		b->capex = nc;
	}
	struct extent *x = &b->ext[b->nex++];
	memset(x, 0, sizeof(*x));
	return x;
}

/*
 * The spare segment file.  Appending to a file makes every fdatasync commit
 * the new size and extents through ext4's journal (~1.5 ms here against
 * ~110 us for a pure data overwrite), so segments are written into files
 * that already hold segment_bytes of real blocks:
 *  - recycled: a reclaimed segment is renamed to spare.seg (its records now
 *    fail the header checksum seeded with the new sequence: FORMAT.md), the
 *    directory is fsynced before a byte of it is overwritten, so a crash
 *    can never show the old name with new bytes;
 *  - fresh: spare.seg is created, fallocated and zero-filled once, then
 *    fdatasynced (as PostgreSQL zero-fills new WAL files).  The zeros go out
 *    in 256 KiB writes, each followed (linked) by a sync_file_range that
 *    writes it back and waits, two at a time: left to the final fdatasync,
 *    the whole 64 MiB reached the disk's queue at once, and every group
 *    commit queued behind it.  fleet-plain at 85k/s: at the first spare,
 *    ~300 ms into the load, 68 MiB went out in one 50 ms sample and commits
 *    stopped for 250 ms, which the open loop turned into 20,000 stalled
 *    connections in about half the runs.
 * Last, the spare is renamed to the next sequence and the directory is
 * fsynced, so that a roll needs no journal commit on the commit path (a
 * directory fsync under others' I/O can take tens of ms).  Without a ready
 * spare the roll falls back to a file that grows (the old way, still
 * correct); a spare named before such a fallback is renamed again at its
 * roll, and its first batch then syncs the directory as for any new file.
 */
#define ZERO_CHUNK (256u << 10)
#define ZERO_DEPTH 2 /* chunks written and written back at once */
static const uint8_t zero_chunk[ZERO_CHUNK];

static int spare_path(struct spool *sp)
{
	int n = snprintf(sp->next_path, sizeof(sp->next_path), "%s/spare.seg", sp->core_dir);
	return (n < 0 || (size_t)n >= sizeof(sp->next_path)) ? -ENAMETOOLONG : 0;
}

static void spare_fail(struct spool *sp, const char *what, int err)
{
	if (err == -ENOSPC) {
		if (!sp->disk_full)
			MX_WARN("spool c%u: disk full preparing %s", sp->core, sp->next_path);
		sp->disk_full = true;
	} else {
		MX_WARN("spool c%u: %s %s: %s", sp->core, what, sp->next_path, strerror(-err));
	}
	if (sp->next_fd >= 0)
		close(sp->next_fd);
	sp->next_fd = -1;
	unlink(sp->next_path);
	sp->next_state = NEXT_NONE;
	sp->st.spare_failures++;
}

static bool queue_sqe(struct spool *sp, struct io_uring_sqe **sqe)
{
	*sqe = io_uring_get_sqe(&sp->ring);
	if (*sqe == NULL) {
		io_uring_submit(&sp->ring);
		*sqe = io_uring_get_sqe(&sp->ring);
	}
	return *sqe != NULL;
}

/*
 * Queue zero chunks (at most ZERO_DEPTH at once), each a write linked to the
 * sync_file_range that writes it back; then the fdatasync; then ready.
 */
static void spare_zero(struct spool *sp)
{
	struct io_uring_sqe *w, *wb;
	while (sp->zero_inflight < ZERO_DEPTH && sp->zero_off < sp->zero_end) {
		uint64_t n = sp->zero_end - sp->zero_off;
		if (n > ZERO_CHUNK)
			n = ZERO_CHUNK;
		/* a link may not span two submissions */
		if (io_uring_sq_space_left(&sp->ring) < 2)
			io_uring_submit(&sp->ring);
		if (io_uring_sq_space_left(&sp->ring) < 2)
			break;
		w = io_uring_get_sqe(&sp->ring);
		wb = io_uring_get_sqe(&sp->ring);
		io_uring_prep_write(w, sp->next_fd, zero_chunk, (unsigned)n, sp->zero_off);
		/*
		 * Straight to io_uring's worker: a buffered write submitted inline
		 * would allocate and clear its page-cache pages on this core's
		 * poll loop (64 MiB of them per segment).
		 */
		io_uring_sqe_set_flags(w, IOSQE_ASYNC | IOSQE_IO_LINK);
		io_uring_sqe_set_data(w, &sp->tag_zero);
		io_uring_prep_sync_file_range(wb, sp->next_fd, (unsigned)n, sp->zero_off,
					      SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE |
						      SYNC_FILE_RANGE_WAIT_AFTER);
		io_uring_sqe_set_data(wb, &sp->tag_zero_wb);
		if (n < ZERO_CHUNK)
			sp->zero_tail = (unsigned)n;
		sp->zero_off += n;
		sp->zero_inflight++;
		sp->st.spare_zero_bytes += n;
		sp->st.spare_zero_writebacks++;
	}
	if (sp->zero_inflight == 0 && sp->zero_off >= sp->zero_end) {
		struct io_uring_sqe *sqe;
		if (!queue_sqe(sp, &sqe)) {
			spare_fail(sp, "syncing", -EBUSY);
			return;
		}
		io_uring_prep_fsync(sqe, sp->next_fd, IORING_FSYNC_DATASYNC);
		io_uring_sqe_set_data(sqe, &sp->tag_sync);
		sp->next_state = NEXT_SYNCING;
	}
	io_uring_submit(&sp->ring);
}

/* Give the prepared spare the next sequence and make the name durable. */
static void spare_name(struct spool *sp)
{
	char path[sizeof(sp->next_path)];
	struct io_uring_sqe *sqe;
	uint64_t seq = sp->next_seg_seq;
	if (spool_seg_path(path, sizeof(path), sp->dir, sp->core, seq) < 0) {
		spare_fail(sp, "naming", -ENAMETOOLONG);
		return;
	}
	if (rename(sp->next_path, path) < 0) {
		spare_fail(sp, "naming", -errno);
		return;
	}
	sp->next_seg_seq++;
	sp->next_seq = seq;
	memcpy(sp->next_path, path, sizeof(path));
	if (!queue_sqe(sp, &sqe)) {
		spare_fail(sp, "naming", -EBUSY);
		return;
	}
	io_uring_prep_fsync(sqe, sp->core_dir_fd, 0);
	io_uring_sqe_set_data(sqe, &sp->tag_named);
	sp->next_state = NEXT_NAMING;
	io_uring_submit(&sp->ring);
}

/* The spare is open (next_fd): zero what it lacks of segment_bytes, then name it. */
static void spare_fill(struct spool *sp)
{
	struct stat st;
	if (fstat(sp->next_fd, &st) < 0) {
		spare_fail(sp, "stat", -errno);
		return;
	}
	sp->zero_end = sp->cfg.segment_bytes;
	sp->zero_off = (uint64_t)st.st_size < sp->zero_end ? (uint64_t)st.st_size : sp->zero_end;
	sp->zero_inflight = 0;
	sp->zero_tail = 0;
	if (sp->zero_off >= sp->zero_end) {
		spare_name(sp);
		return;
	}
	sp->next_state = NEXT_ZEROING;
	spare_zero(sp);
}

/* Start a fresh spare when the current segment is half full and none is coming. */
static void precreate_segment(struct spool *sp)
{
	struct seg *cur = sp->current;
	if (sp->readonly || sp->next_state != NEXT_NONE || sp->disk_full ||
	    (cur != NULL && !cur->sealed && cur->planned < sp->cfg.segment_bytes / 2))
		return;
	struct io_uring_sqe *sqe;
	if (spare_path(sp) < 0 || !queue_sqe(sp, &sqe))
		return;
	io_uring_prep_openat(sqe, AT_FDCWD, sp->next_path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC,
			     0640);
	io_uring_sqe_set_data(sqe, &sp->tag_open);
	sp->next_state = NEXT_OPENING;
	io_uring_submit(&sp->ring);
}

/* Reclaim hands a dead segment's file over instead of unlinking it: true if taken. */
static bool recycle_segment(struct spool *sp, struct seg *s)
{
	char from[4096];
	struct io_uring_sqe *sqe;
	if (sp->readonly || sp->next_state != NEXT_NONE || s->fd < 0 || s->compacting ||
	    sp->core_dir_fd < 0 || spare_path(sp) < 0 ||
	    spool_seg_path(from, sizeof(from), sp->dir, sp->core, s->seq) < 0)
		return false;
	/*
	 * A compacted segment is unlinked, never recycled: another core may
	 * still read a moved message through an fd it opened there (remote.c).
	 */
	if (rename(from, sp->next_path) < 0)
		return false;
	sp->next_fd = s->fd;
	s->fd = -1;
	if (!queue_sqe(sp, &sqe)) {
		spare_fail(sp, "recycling", -EBUSY);
		return true;
	}
	io_uring_prep_fsync(sqe, sp->core_dir_fd, 0);
	io_uring_sqe_set_data(sqe, &sp->tag_dirsync);
	sp->next_state = NEXT_DIRSYNC;
	sp->st.segments_recycled++;
	io_uring_submit(&sp->ring);
	return true;
}

static void next_cqe(struct spool *sp, void *tag, int res)
{
	if (tag == &sp->tag_open) {
		if (res < 0) {
			sp->next_fd = -1;
			spare_fail(sp, "opening", res);
			return;
		}
		sp->next_fd = res;
		struct io_uring_sqe *sqe;
		if (!queue_sqe(sp, &sqe)) {
			spare_fail(sp, "allocating", -EBUSY);
			return;
		}
		/* real size at once: ENOSPC shows here, not in the middle of a batch */
		io_uring_prep_fallocate(sqe, res, 0, 0, (off_t)sp->cfg.segment_bytes);
		io_uring_sqe_set_data(sqe, &sp->tag_falloc);
		sp->next_state = NEXT_ALLOCATING;
		io_uring_submit(&sp->ring);
		return;
	}
	if (tag == &sp->tag_falloc) {
		if (res < 0) {
			spare_fail(sp, "allocating", res);
			return;
		}
		/* fallocate leaves unwritten extents; writing them would be a metadata change */
		sp->next_state = NEXT_ZEROING;
		sp->zero_off = 0;
		sp->zero_end = sp->cfg.segment_bytes;
		sp->zero_inflight = 0;
		sp->zero_tail = 0;
		spare_zero(sp);
		return;
	}
	if (tag == &sp->tag_named) {
		if (res < 0) {
			spare_fail(sp, "syncing the directory for", res);
			return;
		}
		sp->next_state = NEXT_READY;
		return;
	}
	if (tag == &sp->tag_dirsync) {
		if (res < 0) {
			spare_fail(sp, "syncing the directory for", res);
			return;
		}
		spare_fill(sp);
		return;
	}
	if (tag == &sp->tag_zero) {
		/* the write of a chunk: only a failure matters (its writeback then
		 * completes with -ECANCELED and ends the chunk) */
		if (res <= 0 || ((unsigned)res != ZERO_CHUNK && (unsigned)res != sp->zero_tail)) {
			if (sp->zero_off != UINT64_MAX)
				sp->zero_err = res < 0 ? res : -EIO;
			sp->zero_off = UINT64_MAX; /* failed: queue no more, drain the rest */
		}
		return;
	}
	if (tag == &sp->tag_zero_wb) {
		sp->zero_inflight--;
		if (res < 0 && sp->zero_off != UINT64_MAX) {
			sp->zero_off = UINT64_MAX;
			sp->zero_err = res;
		}
		if (sp->zero_off == UINT64_MAX) {
			if (sp->zero_inflight == 0)
				spare_fail(sp, "zero-filling", sp->zero_err);
			return;
		}
		spare_zero(sp);
		return;
	}
	/* tag_sync */
	if (res < 0) {
		spare_fail(sp, "syncing", res);
		return;
	}
	spare_name(sp);
}

static int create_segment(struct spool *sp, struct seg **out)
{
	char path[4096];
	if (sp->next_state == NEXT_READY && sp->next_seq + 1 == sp->next_seg_seq) {
		/* named and synced ahead: the roll costs no syscall */
		struct seg *s = seg_new(sp, sp->next_seq, sp->next_fd, 0);
		if (s == NULL)
			return -ENOMEM;
		s->prealloc = true;
		s->name_durable = true;
		sp->next_fd = -1;
		sp->next_state = NEXT_NONE;
		sp->st.segments_created++;
		sp->st.segments_precreated++;
		*out = s;
		return 0;
	}
	uint64_t seq = sp->next_seg_seq++;
	int rc = spool_seg_path(path, sizeof(path), sp->dir, sp->core, seq);
	if (rc < 0)
		return rc;
	if (sp->next_state == NEXT_READY) {
		/* a growing segment came after its naming: it must sort after that one */
		if (rename(sp->next_path, path) == 0) {
			struct seg *s = seg_new(sp, seq, sp->next_fd, 0);
			if (s == NULL) {
				unlink(path);
				close(sp->next_fd);
				sp->next_state = NEXT_NONE;
				return -ENOMEM;
			}
			s->prealloc = true;
			sp->next_fd = -1;
			sp->next_state = NEXT_NONE;
			sp->st.segments_created++;
			sp->st.segments_precreated++;
			*out = s;
			return 0;
		}
		spare_fail(sp, "renaming", -errno);
	}
	/* no spare ready: a file that grows with each batch */
	sp->st.segments_unprepared++;
	int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
	if (fd < 0)
		return -errno;
	/* reserve the blocks now: ENOSPC shows here, not in the middle of a batch */
	if (fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, (off_t)sp->cfg.segment_bytes) < 0) {
		if (errno == ENOSPC) {
			if (!sp->disk_full)
				MX_WARN("spool c%u: disk full preallocating %s", sp->core, path);
			sp->disk_full = true;
		}
	}
	/* the directory is fsynced by the batch that writes the segment's first records */
	struct seg *s = seg_new(sp, seq, fd, 0);
	if (s == NULL) {
		close(fd);
		unlink(path);
		return -ENOMEM;
	}
	sp->st.segments_created++;
	*out = s;
	return 0;
}

static void ext_build_iov(struct extent *x, struct batch *b, uint64_t slice_off, uint64_t slice_len,
			  bool seal)
{
	x->iovcnt = 0;
	if (x->hdr_len)
		x->iov[x->iovcnt++] = (struct iovec){x->hdr, x->hdr_len};
	if (slice_len)
		x->iov[x->iovcnt++] = (struct iovec){b->buf + slice_off, slice_len};
	if (seal)
		x->iov[x->iovcnt++] = (struct iovec){x->seal, SEAL_LEN};
	x->total = 0;
	for (int i = 0; i < x->iovcnt; i++)
		x->total += x->iov[i].iov_len;
}

static int submit_extent(struct spool *sp, struct extent *x, const struct iovec *iov, int iovcnt,
			 uint64_t off, bool first)
{
	bool sync = sp->cfg.durability == SPOOL_DURABILITY_FSYNC;
	if (io_uring_sq_space_left(&sp->ring) < 3)
		io_uring_submit(&sp->ring);
	if (sync && first && x->created && !x->seg->name_durable && sp->core_dir_fd >= 0) {
		/*
		 * A new segment's name must survive a crash before anything in
		 * it is acknowledged: the batch completes only after this too.
		 */
		struct io_uring_sqe *d = io_uring_get_sqe(&sp->ring);
		if (d == NULL)
			return -EBUSY;
		io_uring_prep_fsync(d, sp->core_dir_fd, 0);
		io_uring_sqe_set_data(d, (uint8_t *)x + 1);
		x->outstanding++;
	}
	struct io_uring_sqe *w = io_uring_get_sqe(&sp->ring);
	if (w == NULL)
		return -EBUSY;
	io_uring_prep_writev(w, x->seg->fd, iov, (unsigned)iovcnt, off);
	io_uring_sqe_set_data(w, x);
	x->outstanding++;
	if (sync) {
		w->flags |= IOSQE_IO_LINK;
		struct io_uring_sqe *f = io_uring_get_sqe(&sp->ring);
		if (f == NULL)
			return -EBUSY;
		io_uring_prep_fsync(f, x->seg->fd, IORING_FSYNC_DATASYNC);
		io_uring_sqe_set_data(f, (uint8_t *)x + 1);
		x->outstanding++;
		sp->st.fdatasyncs++;
	}
	return 0;
}

static void settle(struct spool *sp);

static struct extent *open_extent(struct spool *sp, struct batch *b, struct seg *s, uint64_t pos)
{
	struct extent *x = ext_new(b);
	if (x == NULL)
		return NULL;
	x->sp = sp;
	x->batch = b;
	x->seg = s;
	x->file_off = s->planned;
	x->slice_start = pos;
	x->hdr_len = 0;
	if (s->planned == 0) {
		uint8_t p[24];
		spool_put32(p, sp->gen);
		spool_put32(p + 4, sp->core);
		spool_put64(p + 8, (uint64_t)mx_wall_s());
		spool_put64(p + 16, b->seq);
		x->hdr_len =
			(uint32_t)spool_rec_build(x->hdr, SPOOL_REC_SEGHDR, 0, s->seq, 0, p, 24);
		spool_rec_reseal(x->hdr, s->seq);
		x->created = true;
	}
	/* every write starts with its batch's marker: recovery tells torn from corrupt by it */
	spool_rec_build(x->hdr + x->hdr_len, SPOOL_REC_BATCH, 0, b->seq, 0, NULL, 0);
	spool_rec_reseal(x->hdr + x->hdr_len, s->seq);
	x->hdr_len += BATCH_LEN;
	x->data_off = x->file_off + x->hdr_len;
	return x;
}

static void close_extent(struct spool *sp, struct batch *b, struct extent *x, uint64_t pos,
			 bool seal)
{
	struct seg *s = x->seg;
	if (seal) {
		spool_rec_build(x->seal, SPOOL_REC_SEAL, 0, s->seq, 0, NULL, 0);
		spool_rec_reseal(x->seal, s->seq);
		s->sealed = true;
	}
	ext_build_iov(x, b, x->slice_start, pos - x->slice_start, seal);
	uint64_t end = x->file_off + x->total;
	sp->seg_bytes_total += end - s->planned;
	s->planned = end;
}

/* Does a record of len bytes still fit in x's segment, leaving room for the seal? */
static bool extent_fits(const struct spool *sp, const struct extent *x, uint64_t pos, uint32_t len)
{
	uint64_t end = x->data_off + (pos - x->slice_start) + len + SEAL_LEN;
	return end <= sp->cfg.segment_bytes || (x->created && pos == x->slice_start);
}

/* Assign offsets, roll segments, queue the writes of the filling batch. */
static int flush(struct spool *sp)
{
	struct batch *b = sp->fill;
	if (b->len == 0 || sp->nflight >= (int)sp->cfg.commit_depth)
		return 0;
	b->nex = 0;
	b->status = 0;
	b->io_done = false;
	b->seq = ++sp->batch_seq;
	sp->flight[sp->nflight++] = b;
	for (int i = 0; i <= SPOOL_MAX_FLIGHT; i++) {
		struct batch *c = &sp->b[i];
		bool busy = false;
		for (int k = 0; k < sp->nflight; k++)
			busy |= sp->flight[k] == c;
		if (!busy) {
			sp->fill = c;
			break;
		}
	}
	sp->fill->len = 0;
	sp->fill->nd = 0;
	sp->fill->msgs = 0;
	struct extent *x = NULL;
	uint64_t pos = 0;
	int rc = 0;
	for (size_t i = 0; i < b->nd; i++) {
		struct desc *d = &b->d[i];
		if (x == NULL || !extent_fits(sp, x, pos, d->len)) {
			struct seg *cur = sp->current;
			if (x != NULL)
				close_extent(sp, b, x, pos, true);
			if (x != NULL || cur == NULL || cur->sealed) {
				rc = create_segment(sp, &cur);
				if (rc < 0) {
					MX_ERR("spool c%u: cannot create a segment: %s", sp->core,
					       strerror(-rc));
					x = NULL;
					break;
				}
			}
			x = open_extent(sp, b, cur, pos);
			if (x == NULL) {
				rc = -ENOMEM;
				break;
			}
			if (!extent_fits(sp, x, pos, d->len)) {
				/* the open segment is too full: seal it alone, go on in a new one
				 */
				close_extent(sp, b, x, pos, true);
				rc = create_segment(sp, &cur);
				if (rc < 0) {
					x = NULL;
					break;
				}
				x = open_extent(sp, b, cur, pos);
				if (x == NULL) {
					rc = -ENOMEM;
					break;
				}
			}
		}
		uint64_t roff = x->data_off + (pos - x->slice_start);
		/* the header checksum is seeded with the segment the record lands in */
		spool_rec_reseal(b->buf + d->buf_off, x->seg->seq);
		if (d->kind == D_MSG || d->kind == D_COPY) {
			struct ent *e = tab_find(sp, d->id);
			if (e != NULL) {
				if (d->kind == D_COPY) {
					d->old_seg = e->seg;
					d->old_off = e->off;
					seg_unlink_ent(e);
					e->flags &= (uint8_t)~ENT_COPYING;
				}
				e->off = roff;
				seg_link_ent(x->seg, e);
				if (d->kind == D_COPY && d->old_seg != NULL &&
				    d->old_seg->live == 0 && d->old_seg->compacting)
					d->old_seg->unlink_after = b->seq;
			}
		}
		pos += d->len;
	}
	if (x != NULL)
		close_extent(sp, b, x, pos, false);
	if (rc < 0) {
		b->status = rc == -ENOSPC ? -ENOSPC : -EIO;
		b->io_done = true;
		settle(sp);
		return rc;
	}
	int queued = 0;
	for (size_t i = 0; i < b->nex; i++) {
		struct extent *e = &b->ext[i];
		if (submit_extent(sp, e, e->iov, e->iovcnt, e->file_off, true) < 0) {
			MX_ERR("spool c%u: io_uring queue full", sp->core);
			b->status = -EIO;
			break;
		}
		queued++;
	}
	int sr = io_uring_submit(&sp->ring);
	if (sr < 0) {
		MX_ERR("spool c%u: io_uring_submit: %s", sp->core, strerror(-sr));
		b->status = -EIO;
	}
	if (queued == 0 || sr < 0) {
		/* nothing will complete: end the batch here (CQEs of a failed submit never come) */
		for (size_t i = 0; i < b->nex; i++)
			b->ext[i].outstanding = 0;
		b->io_done = true;
		settle(sp);
	}
	return 0;
}

static void out_push(struct spool *sp, uint64_t cookie, uint64_t id, int status)
{
	if (sp->out_len == sp->out_cap) {
		size_t nc = sp->out_cap ? sp->out_cap * 2 : 1024;
		struct spool_completion *nq = malloc(nc * sizeof(*nq));
		if (nq == NULL) {
			MX_ERR("spool c%u: out of memory for completions", sp->core);
			return;
		}
		for (size_t i = 0; i < sp->out_len; i++)
			nq[i] = sp->outq[(sp->out_head + i) % sp->out_cap];
		free(sp->outq);
		sp->outq = nq;
		sp->out_head = 0;
		sp->out_cap = nc;
	}
	struct spool_completion *c = &sp->outq[(sp->out_head + sp->out_len) % sp->out_cap];
	c->cookie = cookie;
	c->id = id;
	spool_id_format(id, c->id_str);
	c->status = status;
	sp->out_len++;
}

static void lat_record(struct spool *sp, uint64_t us)
{
	int bkt = us == 0 ? 0 : 64 - __builtin_clzll(us);
	if (bkt >= SPOOL_LAT_BUCKETS)
		bkt = SPOOL_LAT_BUCKETS - 1;
	sp->st.commit_lat_us[bkt]++;
}

/* Undo a failed batch: nothing in it was acknowledged. */
static void batch_revert(struct spool *sp, struct batch *b)
{
	for (size_t i = b->nd; i-- > 0;) {
		struct desc *d = &b->d[i];
		struct ent *e = (d->kind == D_STATE) ? NULL : tab_find(sp, d->id);
		if (d->kind == D_MSG) {
			if (e != NULL)
				ent_destroy(sp, e);
			out_push(sp, d->cookie, d->id, b->status);
		} else if (d->kind == D_COPY && e != NULL) {
			e->flags &= (uint8_t)~ENT_COPYING;
			if (d->old_seg != NULL) {
				seg_unlink_ent(e);
				e->off = d->old_off;
				seg_link_ent(d->old_seg, e);
				d->old_seg->unlink_after = 0;
			}
		}
		/* a lost state record stays in memory and is rewritten if the message is copied */
	}
	for (size_t i = b->nex; i-- > 0;) {
		struct extent *x = &b->ext[i];
		struct seg *s = x->seg;
		if (x->created && s->live == 0) {
			seg_drop(sp, s, true);
			continue;
		}
		if (s->prealloc) {
			/*
			 * The file keeps its size: invalidate the batch's marker so
			 * that whatever of it reached the disk is past the end of the
			 * data, and go on in a new segment (stale bytes of this one
			 * must never be followed by new ones).
			 */
			if (pwrite(s->fd, zero_chunk, x->hdr_len, (off_t)x->file_off) < 0 ||
			    fdatasync(s->fd) < 0)
				MX_ERR("spool c%u: clearing a failed batch in segment %016llx: %s",
				       sp->core, (unsigned long long)s->seq, strerror(errno));
			sp->seg_bytes_total -= s->planned - x->file_off;
			s->planned = x->file_off;
			s->sealed = true;
			continue;
		}
		if (ftruncate(s->fd, (off_t)x->file_off) < 0)
			MX_ERR("spool c%u: truncate segment %016llx: %s", sp->core,
			       (unsigned long long)s->seq, strerror(errno));
		sp->seg_bytes_total -= s->planned - x->file_off;
		s->planned = x->file_off;
		s->sealed = false;
	}
	/* a segment unsealed by the revert is the one to continue in */
}

static void batch_end(struct spool *sp, struct batch *b)
{
	uint64_t now = mx_now_us();
	if (b->status < 0) {
		sp->st.io_errors++;
		MX_ERR("spool c%u: batch of %u messages failed: %s", sp->core, b->msgs,
		       strerror(-b->status));
		if (b->status == -ENOSPC)
			sp->disk_full = true;
		batch_revert(sp, b);
	} else {
		uint64_t bytes = 0;
		for (size_t i = 0; i < b->nex; i++)
			bytes += b->ext[i].total;
		sp->st.bytes_written += bytes;
		sp->st.records += b->nd;
		sp->st.commits++;
		sp->st.messages += b->msgs;
		sp->st.batch_msgs_sum += b->msgs;
		if (b->msgs > sp->st.batch_msgs_max)
			sp->st.batch_msgs_max = b->msgs;
		if (bytes > sp->st.batch_bytes_max)
			sp->st.batch_bytes_max = bytes;
		unsigned slot = sp->recent_next;
		struct spool_recent *r = &sp->recent[slot];
		if (++sp->recent_gen == 0)
			sp->recent_gen = 1;
		for (size_t i = 0; i < b->nd; i++) {
			struct desc *d = &b->d[i];
			if (d->kind != D_MSG)
				continue;
			struct ent *e = tab_find(sp, d->id);
			if (e != NULL) {
				e->flags &= (uint8_t)~ENT_PENDING;
				e->mem_slot = (uint8_t)slot;
				e->mem_gen = sp->recent_gen;
				e->mem_off = d->buf_off;
			}
			lat_record(sp, now - d->commit_us);
			out_push(sp, d->cookie, d->id, 0);
		}
		/* The batch's bytes stay readable; the filler gets the oldest kept buffer. */
		uint8_t *keep = r->buf;
		size_t keep_cap = r->cap;
		r->buf = b->buf;
		r->cap = b->cap;
		r->gen = sp->recent_gen;
		b->buf = keep;
		b->cap = keep_cap;
		sp->recent_next = (slot + 1) % SPOOL_RECENT;
		sp->durable_seq = b->seq;
	}
	b->len = 0;
	b->nd = 0;
	b->msgs = 0;
	b->io_done = false;
	sp->st.used_bytes = sp->seg_bytes_total + sp->fill->len;
}

/*
 * End the batches whose I/O is over, oldest first.  A failure undoes the
 * younger batches as well, once their I/O is over too, youngest first:
 * their bytes sit after the failed ones and were never acknowledged.
 */
static void settle(struct spool *sp)
{
	while (sp->nflight > 0 && sp->flight[0]->io_done) {
		struct batch *head = sp->flight[0];
		if (head->status < 0) {
			for (int i = 1; i < sp->nflight; i++)
				if (!sp->flight[i]->io_done)
					return;
			for (int i = sp->nflight - 1; i >= 0; i--) {
				if (sp->flight[i]->status == 0)
					sp->flight[i]->status = head->status;
				batch_end(sp, sp->flight[i]);
			}
			sp->nflight = 0;
			return;
		}
		batch_end(sp, head);
		for (int i = 1; i < sp->nflight; i++)
			sp->flight[i - 1] = sp->flight[i];
		sp->nflight--;
	}
}

static void handle_cqe(struct spool *sp, struct io_uring_cqe *cqe)
{
	uintptr_t ud = (uintptr_t)io_uring_cqe_get_data(cqe);
	if (ud == (uintptr_t)&sp->tag_open || ud == (uintptr_t)&sp->tag_falloc ||
	    ud == (uintptr_t)&sp->tag_dirsync || ud == (uintptr_t)&sp->tag_zero ||
	    ud == (uintptr_t)&sp->tag_zero_wb || ud == (uintptr_t)&sp->tag_sync ||
	    ud == (uintptr_t)&sp->tag_named) {
		next_cqe(sp, (void *)ud, cqe->res);
		return;
	}
	bool is_sync = ud & 1;
	struct extent *x = (struct extent *)(ud & ~(uintptr_t)1);
	struct batch *b = x->batch;
	int res = cqe->res;
	if (b->io_done || x->outstanding <= 0)
		return; /* a CQE of a batch already ended by a submit failure */
	x->outstanding--;
	if (!is_sync) {
		uint64_t want = x->total - x->done;
		if (res < 0) {
			if (b->status == 0)
				b->status = res == -ENOSPC ? -ENOSPC : -EIO;
		} else if (res == 0 || (x->retries >= 8 && (uint64_t)res < want)) {
			if (b->status == 0)
				b->status = -EIO; /* no progress: do not spin */
		} else if ((uint64_t)res < want) {
			/* short write: the linked fsync is cancelled; queue the rest */
			x->retries++;
			x->done += (uint64_t)res;
			x->resubmit = true;
			sp->st.short_writes++;
		} else {
			x->done = x->total;
		}
	} else if (res < 0 && res != -ECANCELED) {
		if (b->status == 0)
			b->status = -EIO;
	} else if (res == -ECANCELED && !x->resubmit && b->status == 0) {
		b->status = -EIO;
	}
	if (x->outstanding == 0 && x->resubmit && b->status == 0) {
		x->resubmit = false;
		/* rebuild the iovec past what is written */
		uint64_t skip = x->done;
		int n = 0;
		for (int i = 0; i < x->iovcnt; i++) {
			struct iovec v = x->iov[i];
			if (skip >= v.iov_len) {
				skip -= v.iov_len;
				continue;
			}
			x->riov[n].iov_base = (uint8_t *)v.iov_base + skip;
			x->riov[n].iov_len = v.iov_len - skip;
			skip = 0;
			n++;
		}
		if (submit_extent(sp, x, x->riov, n, x->file_off + x->done, false) < 0 ||
		    io_uring_submit(&sp->ring) < 0)
			b->status = -EIO;
	}
	for (size_t i = 0; i < b->nex; i++)
		if (b->ext[i].outstanding > 0)
			return;
	b->io_done = true;
	settle(sp);
}

static bool next_busy(const struct spool *sp)
{
	return sp->next_state != NEXT_NONE && sp->next_state != NEXT_READY;
}

bool spool_spare_preparing(const struct spool *sp)
{
	return next_busy(sp);
}

/* Reap CQEs; with wait, block while batches are in flight (never for next_state alone). */
static void reap(struct spool *sp, bool wait)
{
	struct io_uring_cqe *cqe;
	while (sp->nflight > 0 || next_busy(sp)) {
		int rc = (wait && sp->nflight > 0) ? io_uring_wait_cqe(&sp->ring, &cqe)
						   : io_uring_peek_cqe(&sp->ring, &cqe);
		if (rc == -EINTR)
			continue;
		if (rc < 0)
			break;
		handle_cqe(sp, cqe);
		io_uring_cqe_seen(&sp->ring, cqe);
	}
}

/* ---- reclaim and compaction -------------------------------------------- */

static void compact_step(struct spool *sp, struct seg *s)
{
	uint32_t budget = sp->cfg.compact_step_bytes;
	while (s->head != NULL && budget > 0) {
		struct ent *e = s->head;
		if (e->flags & ENT_COPYING)
			return; /* everything is queued; wait for the flush */
		size_t need = e->len;
		for (uint32_t r = 0; e->rs && r < e->rcpt_count; r++)
			if (e->rs[r].state != SPOOL_RCPT_QUEUED)
				need += SPOOL_REC_HDR + 8 +
					(e->rs[r].text ? strlen(e->rs[r].text) : 0);
		if (batch_reserve(sp, sp->fill, need) < 0)
			return;
		struct batch *b = sp->fill;
		uint8_t *dst = b->buf + b->len;
		ssize_t n = pread(s->fd, dst, e->len, (off_t)e->off);
		struct spool_rec_hdr h;
		if (n != (ssize_t)e->len || spool_rec_check_seg(dst, e->len, s->seq, &h) < 0 ||
		    h.id != e->id) {
			MX_ERR("spool c%u: compaction: record of %012llx unreadable in segment "
			       "%016llx; segment kept",
			       sp->core, (unsigned long long)e->id, (unsigned long long)s->seq);
			s->compacting = false;
			s->created_us = mx_now_us(); /* do not retry at once */
			return;
		}
		/*
		 * The copy lands in a segment of the current version, which holds
		 * records of its own version only (FORMAT.md): a record written by
		 * an older relay is relabelled.  Its layout is the same, its
		 * payload (an older envelope version is still read) is untouched,
		 * and flush() re-seeds the header checksum for the new segment.
		 */
		dst[4] = SPOOL_REC_VERSION;
		batch_add(sp, b, e->len, D_COPY, e->id);
		e->flags |= ENT_COPYING;
		/* move to the tail: the head is always the next to copy */
		seg_unlink_ent(e);
		seg_link_ent(s, e);
		for (uint32_t r = 0; e->rs && r < e->rcpt_count; r++) {
			const struct spool_rcpt_status *st = &e->rs[r];
			size_t tl = st->text ? strlen(st->text) : 0;
			uint8_t p[8 + SPOOL_TEXT_MAX];
			if (st->state == SPOOL_RCPT_DELIVERED) {
				add_state(sp, SPOOL_REC_DELIVERED, e->id, r, NULL, 0);
			} else if (st->state == SPOOL_RCPT_DEFERRED) {
				spool_put64(p, (uint64_t)st->next_retry_s);
				memcpy(p + 8, st->text ? st->text : "", tl);
				add_state(sp, SPOOL_REC_DEFERRED, e->id, r, p, (uint32_t)(8 + tl));
			} else if (st->state == SPOOL_RCPT_BOUNCED) {
				add_state(sp, SPOOL_REC_BOUNCED, e->id, r, st->text, (uint32_t)tl);
			}
		}
		sp->st.compaction_bytes += e->len;
		sp->st.compaction_msgs++;
		budget = budget > e->len ? budget - e->len : 0;
	}
}

static void reclaim(struct spool *sp, uint64_t now)
{
	struct seg *s = sp->oldest;
	while (s != NULL && s != sp->current) {
		struct seg *next = s->next;
		if (s->live == 0) {
			if (s->unlink_after > sp->durable_seq)
				return; /* its copies are not durable yet */
			/* a segment still being written by a batch in flight stays */
			for (int k = 0; k < sp->nflight; k++)
				for (size_t i = 0; i < sp->flight[k]->nex; i++)
					if (sp->flight[k]->ext[i].seg == s)
						return;
			MX_DEBUG("spool c%u: segment %016llx reclaimed", sp->core,
				 (unsigned long long)s->seq);
			seg_drop(sp, s, !recycle_segment(sp, s));
			sp->st.segments_reclaimed++;
			sp->size_full = false;
			sp->st.used_bytes = sp->seg_bytes_total + sp->fill->len;
			s = next;
			continue;
		}
		/*
		 * Compact the oldest segment when little of it is live, or when it
		 * pins a dead segment behind it (in-order reclaim would wait for
		 * its last message otherwise).
		 */
		bool sparse = s->live_bytes * 100 < s->planned * sp->cfg.compact_live_pct;
		bool pins = next != NULL && next != sp->current && next->live == 0;
		if (!s->compacting && s->sealed && (sparse || pins) && now >= s->created_us &&
		    now - s->created_us >= sp->cfg.compact_min_age_us)
			s->compacting = true;
		if (s->compacting)
			compact_step(sp, s);
		return;
	}
}

static void probe_space(struct spool *sp, uint64_t now)
{
	/* a clock that jumped back must not postpone the probe for long */
	if (!sp->disk_full ||
	    (now < sp->next_probe_us && sp->next_probe_us - now <= PROBE_INTERVAL_US))
		return;
	sp->next_probe_us = now + PROBE_INTERVAL_US;
	struct statvfs vf;
	uint64_t want = sp->cfg.segment_bytes;
	if (sp->current != NULL && !sp->current->sealed && !sp->current->prealloc) {
		uint64_t rest = sp->cfg.segment_bytes > sp->current->planned
					? sp->cfg.segment_bytes - sp->current->planned
					: 0;
		if (rest == 0 || fallocate(sp->current->fd, FALLOC_FL_KEEP_SIZE,
					   (off_t)sp->current->planned, (off_t)rest) == 0)
			goto room;
		return;
	}
	if (statvfs(sp->dir, &vf) == 0 && (uint64_t)vf.f_bavail * vf.f_frsize >= want)
		goto room;
	return;
room:
	MX_INFO("spool c%u: disk has room again", sp->core);
	sp->disk_full = false;
}

int spool_poll(struct spool *sp, uint64_t now_us, struct spool_completion *out, int max)
{
	if (sp->readonly)
		return 0;
	reap(sp, false);
	struct batch *b = sp->fill;
	/* commits made after the caller read its clock count as age 0, not as overdue */
	uint64_t age = now_us > b->first_us ? now_us - b->first_us : 0;
	uint64_t window = sp->cfg.commit_window_us;
	if (sp->last_batch_msgs >= SPOOL_BUSY_BATCH && sp->cfg.commit_window_busy_us > window)
		window = sp->cfg.commit_window_busy_us;
	if (sp->nflight < (int)sp->cfg.commit_depth && b->len > 0 &&
	    (b->len >= sp->cfg.commit_bytes || age >= window)) {
		sp->last_batch_msgs = b->msgs;
		flush(sp);
	}
	reclaim(sp, now_us);
	probe_space(sp, now_us);
	precreate_segment(sp);
	int n = 0;
	while (n < max && sp->out_len > 0) {
		out[n++] = sp->outq[sp->out_head];
		sp->out_head = (sp->out_head + 1) % sp->out_cap;
		sp->out_len--;
	}
	return n;
}

int spool_sync(struct spool *sp)
{
	if (sp->readonly)
		return 0;
	for (int guard = 0; guard < 1000000; guard++) {
		reap(sp, true);
		if (sp->fill->len == 0 && sp->nflight == 0)
			return 0;
		int rc = flush(sp);
		if (rc < 0)
			return rc;
	}
	return -EIO;
}

/* ---- messages ---------------------------------------------------------- */

bool spool_has_room(const struct spool *sp)
{
	if (sp->disk_full || sp->size_full)
		return false;
	return sp->cfg.max_bytes == 0 || sp->seg_bytes_total + sp->fill->len < sp->cfg.max_bytes;
}

int spool_msg_begin(struct spool *sp, struct spool_msg **out)
{
	if (sp->readonly)
		return -EROFS;
	if (!spool_has_room(sp)) {
		sp->st.enospc_refusals++;
		return -ENOSPC;
	}
	if (sp->open_msgs >= sp->cfg.max_open_msgs) {
		sp->st.open_limit_hits++;
		return -ENOBUFS;
	}
	struct spool_msg *m = sp->free_msgs;
	if (m != NULL) {
		sp->free_msgs = m->next_free;
	} else {
		m = calloc(1, sizeof(*m));
		if (m == NULL)
			return -ENOMEM;
		m->next_all = sp->all_msgs;
		sp->all_msgs = m;
	}
	int rc = next_id(sp, &m->id);
	if (rc < 0) {
		m->next_free = sp->free_msgs;
		sp->free_msgs = m;
		return rc;
	}
	m->sp = sp;
	m->len = 0;
	spool_id_format(m->id, m->id_str);
	sp->open_msgs++;
	*out = m;
	return 0;
}

static void msg_release(struct spool_msg *m)
{
	struct spool *sp = m->sp;
	sp->open_msgs--;
	sp->open_bytes -= m->len;
	if (m->cap > (256u << 10)) { /* do not keep a big message's buffer around */
		free(m->body);
		m->body = NULL;
		m->cap = 0;
	}
	m->len = 0;
	m->next_free = sp->free_msgs;
	sp->free_msgs = m;
}

int spool_msg_append(struct spool_msg *m, const void *data, size_t len)
{
	struct spool *sp = m->sp;
	if (m->len + len + SPOOL_REC_HDR > sp->cfg.max_message_bytes) {
		sp->st.too_big++;
		return -EFBIG;
	}
	if (sp->cfg.max_open_bytes && sp->open_bytes + len > sp->cfg.max_open_bytes) {
		sp->st.open_bytes_limit_hits++;
		return -ENOBUFS;
	}
	if (m->len + len > m->cap) {
		size_t nc = m->cap ? m->cap : 4096;
		while (nc < m->len + len)
			nc *= 2;
		uint8_t *nb = realloc(m->body, nc);
		if (nb == NULL)
			return -ENOMEM;
		m->body = nb;
		m->cap = nc;
	}
	memcpy(m->body + m->len, data, len);
	m->len += len;
	sp->open_bytes += len;
	return 0;
}

int spool_msg_prepend(struct spool_msg *m, const void *data, size_t len)
{
	size_t old = m->len;
	/* grow through append (same limits and counters), then shift into place */
	int rc = spool_msg_append(m, data, len);
	if (rc != 0)
		return rc;
	memmove(m->body + len, m->body, old);
	memcpy(m->body, data, len);
	return 0;
}

uint64_t spool_msg_id(const struct spool_msg *m)
{
	return m->id;
}

const char *spool_msg_id_str(const struct spool_msg *m)
{
	return m->id_str;
}

void spool_msg_abort(struct spool_msg *m)
{
	if (m != NULL)
		msg_release(m);
}

int spool_msg_commit(struct spool_msg *m, const struct spool_envelope *env, uint64_t cookie)
{
	struct spool *sp = m->sp;
	int rc;
	long env_len = spool_env_size(env);
	if (env_len < 0) {
		rc = -EINVAL;
		goto out;
	}
	uint64_t rec = SPOOL_REC_HDR + (uint64_t)env_len + m->len;
	if (rec > sp->cfg.max_message_bytes) {
		sp->st.too_big++;
		rc = -EFBIG;
		goto out;
	}
	if (sp->disk_full ||
	    (sp->cfg.max_bytes && sp->seg_bytes_total + sp->fill->len + rec > sp->cfg.max_bytes)) {
		if (!sp->disk_full)
			sp->size_full = true;
		sp->st.enospc_refusals++;
		rc = -ENOSPC;
		goto out;
	}
	struct ent *e = calloc(1, sizeof(*e));
	if (e == NULL) {
		rc = -ENOMEM;
		goto out;
	}
	rc = batch_reserve(sp, sp->fill, rec);
	if (rc < 0) {
		free(e);
		goto out;
	}
	struct batch *b = sp->fill;
	uint8_t *p = b->buf + b->len;
	spool_env_encode(env, p + SPOOL_REC_HDR, (size_t)env_len);
	if (m->len)
		memcpy(p + SPOOL_REC_HDR + env_len, m->body, m->len);
	struct spool_rec_hdr h = {.type = SPOOL_REC_MSG,
				  .flags = (uint16_t)env->rcpt_count,
				  .length = (uint32_t)(rec - SPOOL_REC_HDR),
				  .id = m->id,
				  .aux = (uint32_t)env_len};
	h.data_crc = spool_crc32c(0, p + SPOOL_REC_HDR, h.length);
	spool_rec_hdr_put(p, &h);
	e->id = m->id;
	e->len = (uint32_t)rec;
	e->env_len = (uint32_t)env_len;
	e->rcpt_count = (uint16_t)env->rcpt_count;
	e->flags = ENT_PENDING;
	if (tab_insert(sp, e) < 0) {
		free(e);
		rc = -ENOMEM;
		goto out;
	}
	struct desc *d = batch_add(sp, b, rec, D_MSG, m->id);
	d->cookie = cookie;
	d->commit_us = mx_now_us();
	b->msgs++;
	sp->st.live_messages = sp->tab_count;
	rc = 0;
out:
	msg_release(m);
	return rc;
}

/* ---- state records ----------------------------------------------------- */

static struct spool_rcpt_status *ent_states(struct ent *e)
{
	if (e->rs == NULL)
		e->rs = calloc(e->rcpt_count ? e->rcpt_count : 1, sizeof(*e->rs));
	return e->rs;
}

static int set_state(struct ent *e, uint32_t rcpt, uint8_t state, int64_t retry, const char *text,
		     size_t tl)
{
	if (rcpt >= e->rcpt_count)
		return -EINVAL;
	struct spool_rcpt_status *rs = ent_states(e);
	if (rs == NULL)
		return -ENOMEM;
	char *t = NULL;
	if (text != NULL && tl > 0) {
		t = strndup(text, tl > SPOOL_TEXT_MAX ? SPOOL_TEXT_MAX : tl);
		if (t == NULL)
			return -ENOMEM;
	}
	free((char *)rs[rcpt].text);
	rs[rcpt].state = state;
	rs[rcpt].next_retry_s = retry;
	rs[rcpt].text = t;
	return 0;
}

static struct ent *live_ent(struct spool *sp, uint64_t id, uint32_t rcpt, int *rc)
{
	struct ent *e = tab_find(sp, id);
	*rc = 0;
	if (e == NULL)
		*rc = -ENOENT;
	else if (rcpt != UINT32_MAX && rcpt >= e->rcpt_count)
		*rc = -EINVAL;
	return *rc ? NULL : e;
}

int spool_mark_delivered(struct spool *sp, uint64_t id, uint32_t rcpt)
{
	int rc;
	struct ent *e = live_ent(sp, id, rcpt, &rc);
	if (e == NULL)
		return rc;
	if ((rc = add_state(sp, SPOOL_REC_DELIVERED, id, rcpt, NULL, 0)) < 0)
		return rc;
	return set_state(e, rcpt, SPOOL_RCPT_DELIVERED, 0, NULL, 0);
}

int spool_mark_deferred(struct spool *sp, uint64_t id, uint32_t rcpt, int64_t next_retry_s,
			const char *last_reply)
{
	int rc;
	struct ent *e = live_ent(sp, id, rcpt, &rc);
	if (e == NULL)
		return rc;
	size_t tl = last_reply ? strnlen(last_reply, SPOOL_TEXT_MAX) : 0;
	uint8_t p[8 + SPOOL_TEXT_MAX];
	spool_put64(p, (uint64_t)next_retry_s);
	if (tl)
		memcpy(p + 8, last_reply, tl);
	if ((rc = add_state(sp, SPOOL_REC_DEFERRED, id, rcpt, p, (uint32_t)(8 + tl))) < 0)
		return rc;
	return set_state(e, rcpt, SPOOL_RCPT_DEFERRED, next_retry_s, last_reply, tl);
}

int spool_mark_bounced(struct spool *sp, uint64_t id, uint32_t rcpt, const char *reason)
{
	int rc;
	struct ent *e = live_ent(sp, id, rcpt, &rc);
	if (e == NULL)
		return rc;
	size_t tl = reason ? strnlen(reason, SPOOL_TEXT_MAX) : 0;
	if ((rc = add_state(sp, SPOOL_REC_BOUNCED, id, rcpt, reason, (uint32_t)tl)) < 0)
		return rc;
	return set_state(e, rcpt, SPOOL_RCPT_BOUNCED, 0, reason, tl);
}

int spool_msg_finish(struct spool *sp, uint64_t id)
{
	int rc;
	struct ent *e = live_ent(sp, id, UINT32_MAX, &rc);
	if (e == NULL)
		return rc;
	if (e->flags & ENT_PENDING)
		return -EAGAIN;
	if ((rc = add_state(sp, SPOOL_REC_FINISHED, id, 0, NULL, 0)) < 0)
		return rc;
	ent_destroy(sp, e);
	return 0;
}

int spool_requeue(struct spool *sp, uint64_t id)
{
	int rc;
	struct ent *e = live_ent(sp, id, UINT32_MAX, &rc);
	if (e == NULL)
		return rc;
	for (uint32_t r = 0; e->rs && r < e->rcpt_count; r++) {
		if (e->rs[r].state != SPOOL_RCPT_DEFERRED)
			continue;
		char *t = e->rs[r].text ? strdup(e->rs[r].text) : NULL;
		rc = spool_mark_deferred(sp, id, r, 0, t);
		free(t);
		if (rc < 0)
			return rc;
	}
	return 0;
}

static int ent_locate(const struct spool *sp, const struct ent *e, struct spool_location *loc)
{
	if (e == NULL)
		return -ENOENT;
	if ((e->flags & ENT_PENDING) || e->seg == NULL)
		return -EAGAIN;
	loc->core = sp->core;
	loc->segment = e->seg->seq;
	loc->offset = e->off;
	loc->length = e->len;
	loc->body_offset = SPOOL_REC_HDR + e->env_len;
	loc->body_len = e->len - SPOOL_REC_HDR - e->env_len;
	return 0;
}

int spool_locate(const struct spool *sp, uint64_t id, struct spool_location *loc)
{
	return ent_locate(sp, tab_find(sp, id), loc);
}

int spool_rcpt_states(const struct spool *sp, uint64_t id, const struct spool_rcpt_status **st,
		      uint32_t *count)
{
	struct ent *e = tab_find(sp, id);
	if (e == NULL)
		return -ENOENT;
	*count = e->rcpt_count;
	if (e->rs != NULL) {
		*st = e->rs;
		return 0;
	}
	struct spool *msp = (struct spool *)sp; /* the scratch area is not visible state */
	if (msp->scratch_len < e->rcpt_count) {
		struct spool_rcpt_status *n = calloc(e->rcpt_count, sizeof(*n));
		if (n == NULL)
			return -ENOMEM;
		free(msp->scratch);
		msp->scratch = n;
		msp->scratch_len = e->rcpt_count;
	}
	memset(msp->scratch, 0, e->rcpt_count * sizeof(*msp->scratch));
	*st = msp->scratch;
	return 0;
}

long spool_read_body(struct spool *sp, uint64_t id, uint64_t off, void *buf, size_t len)
{
	struct spool_location loc;
	struct ent *e = tab_find(sp, id); /* once: a delivery reads every body through here */
	int rc = ent_locate(sp, e, &loc);
	if (rc < 0)
		return rc;
	const struct spool_recent *r = &sp->recent[e->mem_slot % SPOOL_RECENT];
	if (e->mem_gen != 0 && r->gen == e->mem_gen && (uint64_t)e->mem_off + e->len <= r->cap) {
		if (off >= loc.body_len)
			return 0;
		if (len > loc.body_len - off)
			len = (size_t)(loc.body_len - off);
		memcpy(buf, r->buf + e->mem_off + loc.body_offset + off, len);
		sp->st.body_reads_memory++;
		return (long)len;
	}
	sp->st.body_reads_file++;
	return spool_pread_body(e->seg->fd, &loc, off, buf, len);
}

void spool_get_stats(const struct spool *sp, struct spool_stats *st)
{
	*st = sp->st;
	st->used_bytes = sp->seg_bytes_total + sp->fill->len;
	st->live_messages = sp->tab_count;
}

uint64_t spool_stats_lat_pct(const struct spool_stats *st, double pct)
{
	uint64_t total = 0, acc = 0;
	for (int i = 0; i < SPOOL_LAT_BUCKETS; i++)
		total += st->commit_lat_us[i];
	if (total == 0)
		return 0;
	uint64_t want = (uint64_t)((double)total * pct / 100.0 + 0.5);
	if (want == 0)
		want = 1;
	for (int i = 0; i < SPOOL_LAT_BUCKETS; i++) {
		acc += st->commit_lat_us[i];
		if (acc >= want)
			return i == 0 ? 1 : (1ull << i);
	}
	return 1ull << (SPOOL_LAT_BUCKETS - 1);
}

/* ---- recovery ---------------------------------------------------------- */

struct rec_vec {
	struct spool_scan_rec *r;
	size_t n, cap;
	uint8_t *pay; /* copies of state payloads */
	size_t pay_len, pay_cap;
};

static int collect(void *arg, const struct spool_scan_rec *r)
{
	struct rec_vec *v = arg;
	if (v->n == v->cap) {
		size_t nc = v->cap ? v->cap * 2 : 4096;
		struct spool_scan_rec *nr = realloc(v->r, nc * sizeof(*nr));
		if (nr == NULL)
			return -ENOMEM;
		v->r = nr;
		v->cap = nc;
	}
	struct spool_scan_rec *d = &v->r[v->n++];
	*d = *r;
	d->payload = NULL;
	if (r->payload != NULL && r->h.length > 0) {
		if (v->pay_len + r->h.length > v->pay_cap) {
			size_t nc = v->pay_cap ? v->pay_cap : 65536;
			while (nc < v->pay_len + r->h.length)
				nc *= 2;
			uint8_t *np = realloc(v->pay, nc);
			if (np == NULL)
				return -ENOMEM;
			v->pay = np;
			v->pay_cap = nc;
		}
		memcpy(v->pay + v->pay_len, r->payload, r->h.length);
		/* store the offset; turned into a pointer after the scan */
		d->payload = (const uint8_t *)(uintptr_t)(v->pay_len + 1);
		v->pay_len += r->h.length;
	}
	return 0;
}

static int apply(struct spool *sp, struct seg *s, const struct spool_scan_rec *r,
		 const uint8_t *payload, uint32_t *max_gen, uint64_t *orphans)
{
	struct ent *e = tab_find(sp, r->h.id);
	if (r->h.type == SPOOL_REC_MSG) {
		uint32_t g = (uint32_t)(r->h.id >> 36);
		if (spool_id_core(r->h.id) == sp->core && g > *max_gen)
			*max_gen = g;
		if (r->h.flags == 0)
			return 0; /* a message without recipients cannot be valid */
		if (e == NULL) {
			e = calloc(1, sizeof(*e));
			if (e == NULL)
				return -ENOMEM;
			e->id = r->h.id;
			if (tab_insert(sp, e) < 0) {
				free(e);
				return -ENOMEM;
			}
		} else {
			/* a compacted copy: the newer one wins, its state follows it */
			seg_unlink_ent(e);
			ent_free_states(e);
		}
		e->off = r->off;
		e->len = SPOOL_REC_HDR + r->h.length;
		e->env_len = r->h.aux;
		e->rcpt_count = r->h.flags;
		seg_link_ent(s, e);
		return 0;
	}
	if (e == NULL) {
		/* state of a message whose record is gone or was copied forward */
		(*orphans)++;
		return 0;
	}
	uint32_t rcpt = r->h.aux;
	switch (r->h.type) {
	case SPOOL_REC_DELIVERED:
		return set_state(e, rcpt, SPOOL_RCPT_DELIVERED, 0, NULL, 0) == -ENOMEM ? -ENOMEM
										       : 0;
	case SPOOL_REC_DEFERRED:
		if (r->h.length < 8)
			return 0;
		return set_state(e, rcpt, SPOOL_RCPT_DEFERRED, (int64_t)spool_get64(payload),
				 (const char *)payload + 8, r->h.length - 8) == -ENOMEM
			       ? -ENOMEM
			       : 0;
	case SPOOL_REC_BOUNCED:
		return set_state(e, rcpt, SPOOL_RCPT_BOUNCED, 0, (const char *)payload,
				 r->h.length) == -ENOMEM
			       ? -ENOMEM
			       : 0;
	case SPOOL_REC_FINISHED:
		ent_destroy(sp, e);
		return 0;
	default:
		return 0; /* unknown types from newer writers are skipped */
	}
}

static void quarantine(struct spool *sp, uint64_t seq, const struct spool_scan_seg *res)
{
	char from[4200], qdir[4200], to[4400];
	spool_seg_path(from, sizeof(from), sp->dir, sp->core, seq);
	snprintf(qdir, sizeof(qdir), "%s/quarantine", sp->dir);
	mkdir(qdir, 0750);
	snprintf(to, sizeof(to), "%s/c%u-%016llx.seg", qdir, sp->core, (unsigned long long)seq);
	if (rename(from, to) < 0)
		MX_ERR("spool c%u: cannot quarantine %s: %s", sp->core, from, strerror(errno));
	MX_ERR("spool c%u: segment %s corrupt at offset %llu (%s): moved to %s; its messages are "
	       "not queued",
	       sp->core, from, (unsigned long long)res->bad_off, res->why ? res->why : "?", to);
}

/*
 * Seal a recovered segment at the end of its data (a cut torn tail, or
 * simply where writing stopped).  Nothing is appended to it again anyway
 * (writing goes on in a new segment), but on disk it would stay unsealed:
 * each later recovery would search the rest of it for a later batch marker
 * (one pass over up to segment_size bytes), and damage inside its last
 * commit_depth batches would pass for a torn tail and be cut silently.
 * Sealed, the next recovery stops at the seal, and damage before it is
 * reported as corruption.  The SEAL carries the segment's own version (a
 * segment holds records of one version).  A crash while it is written
 * leaves at worst a partial header at the end of the data: a torn tail
 * again.  A failure (a full disk cannot extend a growing file) is logged
 * and leaves the segment as it was: sealing is not needed for safety, so
 * it never keeps the relay from starting.
 */
static void seal_recovered(struct spool *sp, int fd, uint64_t seq, struct spool_scan_seg *res)
{
	uint8_t seal[SEAL_LEN];
	spool_rec_build(seal, SPOOL_REC_SEAL, 0, seq, 0, NULL, 0);
	seal[4] = res->version;
	spool_rec_reseal(seal, seq);
	ssize_t n;
	do
		n = pwrite(fd, seal, sizeof(seal), (off_t)res->size);
	while (n < 0 && errno == EINTR);
	int err = n < 0 ? errno : n != (ssize_t)sizeof(seal) ? EIO : 0;
	if (err == 0 && fdatasync(fd) < 0)
		err = errno;
	if (err != 0) {
		MX_WARN("spool c%u: cannot seal segment %016llx at %llu: %s (left unsealed)",
			sp->core, (unsigned long long)seq, (unsigned long long)res->size,
			strerror(err));
		return;
	}
	res->size += SEAL_LEN;
	res->sealed = true;
}

static int recover(struct spool *sp, spool_recover_fn cb, void *arg,
		   struct spool_recovery_stats *rs)
{
	uint64_t t0 = mx_now_us();
	uint64_t *seqs;
	size_t nseg;
	int rc = spool_list_segments(sp->dir, sp->core, &seqs, &nseg);
	if (rc < 0)
		return rc;
	struct rec_vec v = {0};
	uint32_t max_gen = 0;
	uint64_t orphans = 0;
	int64_t wall = mx_wall_s();
	uint64_t now = mx_now_us();
	for (size_t i = 0; i < nseg && rc == 0; i++) {
		char path[4096];
		spool_seg_path(path, sizeof(path), sp->dir, sp->core, seqs[i]);
		if (seqs[i] >= sp->next_seg_seq)
			sp->next_seg_seq = seqs[i] + 1;
		int fd = open(path, (sp->readonly ? O_RDONLY : O_RDWR) | O_CLOEXEC);
		if (fd < 0) {
			rc = -errno;
			MX_ERR("spool c%u: open %s: %s", sp->core, path, strerror(errno));
			break;
		}
		struct spool_scan_seg res;
		v.n = 0;
		v.pay_len = 0;
		rc = spool_scan_segment(fd, seqs[i], collect, &v, &res);
		if (res.max_batch > sp->batch_seq)
			sp->batch_seq = res.max_batch; /* markers keep rising across restarts */
		if (rc < 0) {
			MX_ERR("spool c%u: reading %s: %s", sp->core, path, strerror(-rc));
			close(fd);
			break;
		}
		rs->segments++;
		rs->bytes += res.size;
		if (res.state == 4) {
			MX_ERR("spool c%u: %s at offset %llu: written by a newer mxrelay; refusing "
			       "to "
			       "touch the spool",
			       sp->core, path, (unsigned long long)res.bad_off);
			close(fd);
			rc = -EPROTONOSUPPORT;
			break;
		}
		if (res.state == 2) {
			close(fd);
			rs->quarantined++;
			if (!sp->readonly)
				quarantine(sp, seqs[i], &res);
			continue;
		}
		if (res.state == 3) {
			close(fd);
			rs->empty_removed++;
			if (!sp->readonly) {
				MX_WARN("spool c%u: segment %s holds no record: removed", sp->core,
					path);
				unlink(path);
			}
			continue;
		}
		if (res.state == 1 && res.version >= 2 && res.file_size >= sp->cfg.segment_bytes) {
			/*
			 * Preallocated: the file keeps its size and nothing is
			 * appended to it again (see below), so the cut is only where
			 * the data ends; the bytes after it stay invalid.
			 */
			rs->torn_tails++;
			MX_WARN("spool c%u: torn tail in %s: data ends at %llu (%s)", sp->core,
				path, (unsigned long long)res.size, res.why ? res.why : "?");
		} else if (res.state == 1) {
			rs->torn_tails++;
			if (!sp->readonly) {
				MX_WARN("spool c%u: torn tail in %s: cut at %llu of %llu bytes "
					"(%s)",
					sp->core, path, (unsigned long long)res.size,
					(unsigned long long)res.file_size, res.why ? res.why : "?");
				if (ftruncate(fd, (off_t)res.size) < 0 || fsync(fd) < 0) {
					rc = -errno;
					close(fd);
					break;
				}
			}
		}
		if (!sp->readonly && !res.sealed && res.version >= 2 && res.size > 0) {
			seal_recovered(sp, fd, seqs[i], &res);
			rs->sealed += res.sealed;
		}
		struct stat st;
		struct seg *s = seg_new(sp, seqs[i], fd, res.size);
		if (s == NULL) {
			close(fd);
			rc = -ENOMEM;
			break;
		}
		/*
		 * Writing goes on in a new segment: appending after a torn tail
		 * of a preallocated file could line new records up with stale
		 * bytes of an unacknowledged batch behind them.
		 */
		s->sealed = true;
		s->prealloc = res.version >= 2 && res.file_size >= sp->cfg.segment_bytes;
		if (fstat(fd, &st) == 0 && st.st_mtime < wall) {
			uint64_t age = (uint64_t)(wall - st.st_mtime) * 1000000;
			s->created_us = age < now ? now - age : 0;
		}
		for (size_t k = 0; k < v.n && rc == 0; k++) {
			struct spool_scan_rec *r = &v.r[k];
			const uint8_t *p = r->payload ? v.pay + ((uintptr_t)r->payload - 1)
						      : (const uint8_t *)"";
			rs->records++;
			rc = apply(sp, s, r, p, &max_gen, &orphans);
		}
	}
	free(v.r);
	free(v.pay);
	free(seqs);
	if (rc < 0)
		return rc;
	sp->gen = max_gen; /* floor for the next generation */
	sp->durable_seq = sp->batch_seq;
	if (orphans)
		MX_DEBUG("spool c%u: %llu state records of finished or moved messages", sp->core,
			 (unsigned long long)orphans);
	/* report unfinished messages, in log order */
	size_t env_cap = 4096;
	uint8_t *envb = malloc(env_cap);
	if (envb == NULL)
		return -ENOMEM;
	for (struct seg *s = sp->oldest; s != NULL && rc == 0; s = s->next) {
		for (struct ent *e = s->head; e != NULL; e = e->next) {
			rs->messages++;
			uint32_t pending = e->rcpt_count;
			for (uint32_t r = 0; e->rs && r < e->rcpt_count; r++)
				if (e->rs[r].state >= SPOOL_RCPT_DELIVERED)
					pending--;
			rs->rcpts_pending += pending;
			if (cb == NULL)
				continue;
			if (e->env_len > env_cap) {
				uint8_t *nb = realloc(envb, e->env_len);
				if (nb == NULL) {
					rc = -ENOMEM;
					break;
				}
				envb = nb;
				env_cap = e->env_len;
			}
			struct spool_envelope *env = NULL;
			if (pread(s->fd, envb, e->env_len, (off_t)(e->off + SPOOL_REC_HDR)) !=
				    (ssize_t)e->env_len ||
			    spool_env_decode(envb, e->env_len, &env) < 0 ||
			    env->rcpt_count != e->rcpt_count) {
				free(env);
				MX_ERR("spool c%u: message %012llx: envelope unreadable; left in "
				       "the "
				       "spool",
				       sp->core, (unsigned long long)e->id);
				continue;
			}
			struct spool_recovered m = {.id = e->id, .env = env};
			spool_id_format(e->id, m.id_str);
			spool_locate(sp, e->id, &m.loc);
			const struct spool_rcpt_status *st;
			uint32_t cnt;
			spool_rcpt_states(sp, e->id, &st, &cnt);
			m.rcpt = st;
			cb(arg, &m);
			free(env);
		}
	}
	free(envb);
	sp->st.live_messages = sp->tab_count;
	sp->st.torn_tails = rs->torn_tails;
	sp->st.quarantined = rs->quarantined;
	rs->elapsed_us = mx_now_us() - t0;
	return rc;
}

/* ---- open / close ------------------------------------------------------ */

static void spool_free(struct spool *sp)
{
	while (sp->oldest != NULL)
		seg_drop(sp, sp->oldest, false);
	if (sp->tab != NULL) {
		for (size_t i = 0; i <= sp->tab_mask; i++) {
			struct ent *e = sp->tab[i];
			if (e != NULL) {
				ent_free_states(e);
				free(e);
			}
		}
		free(sp->tab);
	}
	for (int i = 0; i <= SPOOL_MAX_FLIGHT; i++) {
		free(sp->b[i].buf);
		free(sp->b[i].d);
		free(sp->b[i].ext);
	}
	for (int i = 0; i < SPOOL_RECENT; i++)
		free(sp->recent[i].buf);
	while (sp->all_msgs != NULL) { /* open ones too: spool_close() ends them */
		struct spool_msg *m = sp->all_msgs;
		sp->all_msgs = m->next_all;
		free(m->body);
		free(m);
	}
	free(sp->outq);
	free(sp->scratch);
	if (sp->ring_ok)
		io_uring_queue_exit(&sp->ring);
	if (sp->core_dir_fd >= 0)
		close(sp->core_dir_fd);
	free(sp);
}

static struct spool *spool_alloc(const struct spool_config *cfg, unsigned core)
{
	struct spool *sp = calloc(1, sizeof(*sp));
	if (sp == NULL)
		return NULL;
	sp->cfg = *cfg;
	sp->core = core;
	sp->core_dir_fd = -1;
	sp->next_fd = -1;
	sp->tab_mask = 1023;
	sp->tab = calloc(sp->tab_mask + 1, sizeof(*sp->tab));
	sp->fill = &sp->b[0];
	uint64_t need = sp->cfg.commit_bytes + sp->cfg.max_message_bytes + 4096;
	sp->batch_cap = sp->cfg.max_batch_bytes > need ? sp->cfg.max_batch_bytes : need;
	if (sp->tab == NULL ||
	    snprintf(sp->dir, sizeof(sp->dir), "%s", cfg->dir) >= (int)sizeof(sp->dir) ||
	    spool_core_path(sp->core_dir, sizeof(sp->core_dir), cfg->dir, core) < 0) {
		free(sp->tab);
		free(sp);
		return NULL;
	}
	return sp;
}

static int check_config(const struct spool_config *cfg, unsigned core)
{
	if (cfg == NULL || cfg->dir == NULL || core > SPOOL_MAX_CORE)
		return -EINVAL;
	if (cfg->segment_bytes < 4096 || cfg->commit_bytes == 0 || cfg->max_open_msgs == 0 ||
	    cfg->commit_depth < 1 || cfg->commit_depth > SPOOL_MAX_FLIGHT ||
	    cfg->max_message_bytes + SEGHDR_LEN + SEAL_LEN > cfg->segment_bytes ||
	    cfg->max_message_bytes > 0x7fffffff || cfg->segment_bytes > (1ull << 40))
		return -EINVAL;
	return 0;
}

/* A spare left by the last run (clean close, or a crash before a roll's rename) is reused. */
static void adopt_spare(struct spool *sp)
{
	if (spare_path(sp) < 0)
		return;
	sp->next_fd = open(sp->next_path, O_RDWR | O_CLOEXEC);
	if (sp->next_fd < 0)
		return;
	spare_fill(sp);
}

/*
 * io_uring's workers, which run the writes and fdatasyncs, on io_cpus
 * instead of the opening worker's polling core, where they preempt it.  On
 * a host with a housekeeping core; on the 2-CPU bench host that core is the
 * load side's and it did not help (bench/RESULTS.md, session 8).
 */
static int set_io_cpus(struct spool *sp)
{
	cpu_set_t set = sp->cfg.io_cpu_set;
	if (sp->cfg.io_cpus == SPOOL_IO_CPUS_WORKER || CPU_COUNT(&set) == 0)
		return 0;
	int rc = io_uring_register_iowq_aff(&sp->ring, sizeof(set), &set);
	if (rc < 0) {
		MX_ERR("spool c%u: [spool] io_cpus: the kernel refuses those CPUs for io_uring's "
		       "workers: %s",
		       sp->core, strerror(-rc));
		return rc;
	}
	return 0;
}

int spool_open(const struct spool_config *cfg, unsigned core, spool_recover_fn recover_cb,
	       void *arg, struct spool_recovery_stats *rs, struct spool **out)
{
	struct spool_recovery_stats local;
	int rc = check_config(cfg, core);
	if (rc < 0)
		return rc;
	if (rs == NULL)
		rs = &local;
	memset(rs, 0, sizeof(*rs));
	if (mkdir(cfg->dir, 0750) < 0 && errno != EEXIST)
		return -errno;
	struct spool *sp = spool_alloc(cfg, core);
	if (sp == NULL)
		return -ENOMEM;
	if (mkdir(sp->core_dir, 0750) < 0 && errno != EEXIST) {
		rc = -errno;
		goto fail;
	}
	sp->core_dir_fd = open(sp->core_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (sp->core_dir_fd < 0) {
		rc = -errno;
		goto fail;
	}
	rc = io_uring_queue_init(RING_ENTRIES, &sp->ring, 0);
	if (rc < 0) {
		MX_ERR("spool c%u: io_uring_queue_init: %s", core, strerror(-rc));
		goto fail;
	}
	sp->ring_ok = true;
	rc = set_io_cpus(sp);
	if (rc < 0)
		goto fail;
	rc = recover(sp, recover_cb, arg, rs);
	if (rc < 0)
		goto fail;
	uint32_t floor = sp->gen;
	rc = take_generation(sp, floor, &sp->gen);
	if (rc < 0) {
		MX_ERR("spool c%u: generation counter: %s", core, strerror(-rc));
		goto fail;
	}
	/*
	 * Segment sequences of this open start above every earlier one, even
	 * one whose file was removed or recycled: a spare's stale records are
	 * seeded with sequences it can never be named again.
	 */
	if (sp->next_seg_seq < (uint64_t)sp->gen << 32)
		sp->next_seg_seq = (uint64_t)sp->gen << 32;
	adopt_spare(sp);
	MX_INFO("spool c%u: recovered %llu messages (%llu recipients pending) from %llu segments "
		"in %llu ms; %llu torn tails, %llu quarantined; generation %u",
		core, (unsigned long long)rs->messages, (unsigned long long)rs->rcpts_pending,
		(unsigned long long)rs->segments, (unsigned long long)(rs->elapsed_us / 1000),
		(unsigned long long)rs->torn_tails, (unsigned long long)rs->quarantined, sp->gen);
	sp->st.used_bytes = sp->seg_bytes_total;
	*out = sp;
	return 0;
fail:
	spool_free(sp);
	return rc;
}

int spool_scan(const char *dir, unsigned core, spool_recover_fn cb, void *arg,
	       struct spool_recovery_stats *rs)
{
	struct spool_config cfg;
	struct spool_recovery_stats local;
	spool_config_defaults(&cfg);
	cfg.dir = dir;
	if (rs == NULL)
		rs = &local;
	memset(rs, 0, sizeof(*rs));
	struct spool *sp = spool_alloc(&cfg, core);
	if (sp == NULL)
		return -ENOMEM;
	sp->readonly = true;
	int rc = recover(sp, cb, arg, rs);
	spool_free(sp);
	return rc;
}

void spool_close(struct spool *sp)
{
	if (sp == NULL)
		return;
	int rc = spool_sync(sp);
	if (rc < 0)
		MX_ERR("spool c%u: final sync: %s", sp->core, strerror(-rc));
	if (sp->open_msgs)
		MX_WARN("spool c%u: closed with %u messages still open", sp->core, sp->open_msgs);
	/* a segment opened ahead and never used is removed */
	for (int guard = 0; next_busy(sp) && guard < 1000; guard++) {
		struct io_uring_cqe *cqe;
		int rc = io_uring_wait_cqe(&sp->ring, &cqe);
		if (rc == -EINTR) /* a signal (net_tap's SIGIO comes to the worker) */
			continue;
		if (rc < 0)
			break;
		handle_cqe(sp, cqe);
		io_uring_cqe_seen(&sp->ring, cqe);
	}
	/* a ready spare stays for the next open (as spare.seg); a half-made one goes */
	if (sp->next_state == NEXT_READY) {
		char path[sizeof(sp->next_path)];
		memcpy(path, sp->next_path, sizeof(path));
		if (spare_path(sp) < 0 || rename(path, sp->next_path) < 0)
			unlink(path);
		close(sp->next_fd);
	} else if (sp->next_state != NEXT_NONE) {
		spare_fail(sp, "closing with", -ECANCELED);
	}
	sp->next_state = NEXT_NONE;
	spool_free(sp);
}
