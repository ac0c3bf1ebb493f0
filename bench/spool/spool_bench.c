/*
 * spool_bench - durable messages per second on one core, the latency that
 * group commit adds, and recovery time.
 *
 *	spool_bench [--dir D] [--seconds S] [--size BYTES] [--rate MSGS_PER_S]
 *		    [--inflight N] [--durability fsync|none] [--finish 0|1]
 *		    [--window US] [--commit-bytes B] [--depth N] [--segment-mb M]
 *		    [--recover N] [--drop-caches] [--probe-only] [--probe-same 0|1]
 *		    [--idle-sleep US] [--idle-yield 0|1] [--cpu N]
 *
 * One thread plays the SMTP core: it starts messages at the offered rate
 * (0 = as fast as the spool completes them, with at most --inflight waiting),
 * streams each body in 4 appends, commits, and calls spool_poll() in the
 * same loop.  With --finish 1 (default) each message is finished as soon as
 * it is durable, as if delivered at once: segments empty out, are reclaimed
 * and recycled, the steady state of a relay that keeps up; --finish 0 lets
 * the spool grow (every segment a fresh file).  Latency is commit() to the
 * durable completion, per message, exact (sorted), not from the histogram.
 * Before a load, the disk alone is probed: write + fdatasync of one batch
 * (--probe-size, default 64 KiB), 1000 times, appending to a growing file and
 * overwriting a file of written blocks (buffered, as the spool writes, and
 * O_DIRECT for comparison).  After a load, --probe-same 1 (default) probes
 * the disk alone again with the load's own average batch size and as many
 * write + fdatasync pairs as the load committed (1000 to 20000): the
 * disk's tail at the same size, over a similar stretch of time.  The tail
 * is attributed: how many slow (> 1 ms) messages waited across a segment
 * roll, and in how many distinct 100 ms windows slow messages completed
 * (a few windows: stalls; many: a steady cost).  --recover N writes N messages of --size,
 * closes, and times spool_open() over them.  Put --dir on a real
 * disk (not tmpfs): fdatasync is what is measured.  --cpu N pins the loop to
 * one CPU, as mxrelay's worker lcore is (io_uring's workers, which do the
 * writes and fdatasyncs, inherit it); --idle-yield 1 then yields on idle
 * turns as that worker does, so they are not left waiting for a slice.
 */
#include "spool.h"
#include "core.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static int cmp64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/* CPU time of the whole process (the poll loop and io_uring's workers), microseconds. */
static uint64_t cpu_us(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return (uint64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000 +
	       (uint64_t)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

static uint64_t thread_cpu_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

static const struct spool_rcpt rcpt = {"ops@example.com", NULL, 0};

static struct spool_envelope env(void)
{
	struct spool_envelope e = {.sender = "cam-0042@fleet.example",
				   .client_ip = "10.77.0.1",
				   .helo = "cam-0042",
				   .arrival_us = (int64_t)mx_wall_s() * 1000000,
				   .tls_version = "TLSv1.3",
				   .tls_cipher = "TLS_AES_128_GCM_SHA256",
				   .rcpts = &rcpt,
				   .rcpt_count = 1};
	return e;
}

static int put(struct spool *sp, const char *body, size_t size, uint64_t cookie)
{
	struct spool_msg *m;
	int rc = spool_msg_begin(sp, &m);
	if (rc < 0)
		return rc;
	size_t q = size / 4;
	for (int k = 0; k < 4; k++) {
		size_t n = k == 3 ? size - 3 * q : q;
		if ((rc = spool_msg_append(m, body + k * q, n)) < 0) {
			spool_msg_abort(m);
			return rc;
		}
	}
	struct spool_envelope e = env();
	return spool_msg_commit(m, &e, cookie);
}

static void rm_dir(const char *dir)
{
	char cmd[600];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	if (system(cmd) != 0)
		fprintf(stderr, "cannot remove %s\n", dir);
}

static void probe_one(const char *path, size_t bsize, bool overwrite, bool direct, uint64_t *p50,
		      uint64_t *p99);
static int probe_n = 1000;
static uint64_t probe_max_us; /* 0: no time bound; else stop a probe after this long */
static long idle_sleep_us;    /* --idle-sleep: a loop that did nothing sleeps this long */
static bool idle_yield; /* --idle-yield: a loop that did nothing yields (as mxrelay's worker) */

static int run_load(const struct spool_config *cfg, size_t size, double seconds, double rate,
		    unsigned inflight_max, bool finish, bool probe_same)
{
	struct spool *sp;
	rm_dir(cfg->dir);
	int rc = spool_open(cfg, 0, NULL, NULL, NULL, &sp);
	if (rc < 0) {
		fprintf(stderr, "spool_open: %s\n", strerror(-rc));
		return 1;
	}
	char *body = malloc(size);
	for (size_t i = 0; i < size; i++)
		body[i] = (char)('A' + i % 60);
	size_t cap = (size_t)(rate > 0 ? rate * seconds * 1.2 : 4e6) + 1024;
	uint64_t *t_commit = malloc(cap * sizeof(uint64_t));
	uint64_t *lat = malloc(cap * sizeof(uint64_t));
	uint64_t *t_done = malloc(cap * sizeof(uint64_t));
	/* when segments were created (rolls), to attribute the tail */
	enum { MAX_ROLLS = 4096 };
	static uint64_t roll_t[MAX_ROLLS];
	size_t nroll = 0;
	uint64_t segs_seen = 0;
	size_t started = 0, done = 0, failed = 0, refused = 0;
	/*
	 * Iterations in which the thread was off the CPU for more than 1 ms
	 * (wall time minus its own CPU time): preempted by other processes, or
	 * blocked in a synchronous call.  Every message waiting then is late.
	 */
	uint64_t loop_stalls = 0, loop_stall_us = 0, prev = 0, prev_cpu = 0;
	struct spool_completion out[256];
	uint64_t t0 = mx_now_us(), end = t0 + (uint64_t)(seconds * 1e6), now = t0;
	/* warm-up is the first 10%: latencies from it are not counted */
	uint64_t warm = t0 + (uint64_t)(seconds * 1e5);
	size_t warm_done = 0;
	uint64_t warm_t = 0, warm_cpu = 0;
	while (now < end) {
		now = mx_now_us();
		uint64_t tcpu = thread_cpu_us();
		if (prev && now - prev > tcpu - prev_cpu + 1000 && now >= warm) {
			loop_stalls++;
			loop_stall_us += (now - prev) - (tcpu - prev_cpu);
		}
		prev = now;
		prev_cpu = tcpu;
		/* offered load: messages due by now, bounded by what may wait */
		size_t due = rate > 0 ? (size_t)((double)(now - t0) * rate / 1e6) : SIZE_MAX;
		int burst = 0;
		while (started < due && started - done < inflight_max && started < cap &&
		       burst < 64) {
			rc = put(sp, body, size, started);
			if (rc == -ENOBUFS || rc == -ENOSPC) {
				refused++; /* the SMTP core would answer 451/452 */
				break;
			}
			if (rc < 0) {
				fprintf(stderr, "commit: %s\n", strerror(-rc));
				goto out;
			}
			t_commit[started++] = mx_now_us();
			burst++;
		}
		int n = spool_poll(sp, now, out, 256);
		uint64_t tn = n ? mx_now_us() : 0;
		for (int i = 0; i < n; i++) {
			if (out[i].status != 0)
				failed++;
			else if (finish && spool_msg_finish(sp, out[i].id) < 0)
				failed++;
			t_done[done] = tn;
			lat[done++] = tn - t_commit[out[i].cookie];
		}
		if (idle_yield && n == 0 && burst == 0)
			sched_yield();
		if (idle_sleep_us > 0 && n == 0 && burst == 0) {
			/* an idle-aware poll loop (DESIGN.md principle 6) backs off */
			struct timespec ts = {0, idle_sleep_us * 1000};
			nanosleep(&ts, NULL);
		}
		struct spool_stats rst;
		spool_get_stats(sp, &rst);
		if (rst.segments_created != segs_seen) {
			segs_seen = rst.segments_created;
			if (nroll < MAX_ROLLS)
				roll_t[nroll++] = mx_now_us();
		}
		if (warm_t == 0 && now >= warm) {
			warm_t = now;
			warm_done = done;
			warm_cpu = cpu_us();
		}
	}
out:;
	uint64_t t1 = mx_now_us(), cpu = cpu_us() - warm_cpu;
	spool_sync(sp);
	struct spool_stats st;
	spool_get_stats(sp, &st);
	spool_close(sp);
	size_t counted = done - warm_done;
	double secs = (double)(t1 - warm_t) / 1e6;
	/*
	 * Tail attribution, before sorting: a slow message "crossed a roll"
	 * when a segment was created while it waited; slow completions are
	 * counted by 100 ms window.
	 */
	size_t slow = 0, slow_roll = 0, slow_windows = 0;
	uint64_t last_window = UINT64_MAX;
	for (size_t i = warm_done; i < done; i++) {
		if (lat[i] <= 1000)
			continue;
		slow++;
		uint64_t tc = t_done[i] - lat[i];
		for (size_t r = 0; r < nroll; r++)
			if (roll_t[r] >= tc && roll_t[r] <= t_done[i]) {
				slow_roll++;
				break;
			}
		uint64_t w = (t_done[i] - t0) / 100000;
		if (w != last_window) {
			slow_windows++;
			last_window = w;
		}
	}
	qsort(lat + warm_done, counted, sizeof(uint64_t), cmp64);
	uint64_t p50 = counted ? lat[warm_done + counted / 2] : 0;
	uint64_t p99 = counted ? lat[warm_done + (size_t)((double)counted * 0.99)] : 0;
	uint64_t pmax = counted ? lat[warm_done + counted - 1] : 0;
	printf("size=%zu rate=%s%.0f durability=%s window=%" PRIu64
	       "us depth=%u: %.0f msgs/s durable, latency p50 %" PRIu64 " us p99 %" PRIu64
	       " us max %" PRIu64 " us; %" PRIu64 " commits, %.1f msgs/commit, "
	       "%.1f MB/s, failed %zu, refused %zu; CPU %.2f us/msg%s\n",
	       size, rate > 0 ? "" : "max:", rate, cfg->durability ? "none" : "fsync",
	       cfg->commit_window_us, cfg->commit_depth, (double)counted / secs, p50, p99, pmax,
	       st.commits, st.commits ? (double)st.batch_msgs_sum / (double)st.commits : 0.0,
	       (double)st.bytes_written / 1e6 / ((double)(t1 - t0) / 1e6), failed, refused,
	       counted ? (double)cpu / (double)counted : 0.0, finish ? "" : " (not finished)");
	printf("  segments %" PRIu64 ": %" PRIu64 " prepared spares (%" PRIu64 " recycled, %.0f MB "
	       "zeroed), %" PRIu64 " growing; avg batch %.0f KiB\n",
	       st.segments_created, st.segments_precreated, st.segments_recycled,
	       (double)st.spare_zero_bytes / 1e6, st.segments_unprepared,
	       st.commits ? (double)st.bytes_written / (double)st.commits / 1024 : 0.0);
	printf("  tail: %zu messages > 1 ms (%.2f%%), %zu of them waited across a segment roll "
	       "(%zu rolls); slow completions in %zu of %.0f 100 ms windows; the loop itself "
	       "was off the CPU > 1 ms %" PRIu64 " times (%.1f ms in all)\n",
	       slow, counted ? 100.0 * (double)slow / (double)counted : 0.0, slow_roll, nroll,
	       slow_windows, secs * 10, loop_stalls, (double)loop_stall_us / 1000);
	if (probe_same && cfg->durability == SPOOL_DURABILITY_FSYNC && st.commits) {
		/* the disk alone at the load's own batch size, as many syncs as it did */
		char path[600];
		size_t bsize = (size_t)(st.bytes_written / st.commits);
		uint64_t o50, o99;
		probe_n = st.commits < 1000 ? 1000 : st.commits > 20000 ? 20000 : (int)st.commits;
		probe_max_us = (uint64_t)(seconds * 1e6);
		snprintf(path, sizeof(path), "%s.fsync-probe", cfg->dir);
		probe_one(path, bsize, true, false, &o50, &o99);
		printf("  disk alone after it: overwrite %zu B + fdatasync (up to %d times, %.0f "
		       "s): "
		       "p50 %" PRIu64 " us p99 %" PRIu64 " us\n",
		       bsize, probe_n, seconds, o50, o99);
		probe_n = 1000;
		probe_max_us = 0;
	}
	free(body);
	free(t_commit);
	free(t_done);
	free(lat);
	rm_dir(cfg->dir);
	return 0;
}

static void probe_one(const char *path, size_t bsize, bool overwrite, bool direct, uint64_t *p50,
		      uint64_t *p99)
{
	static uint8_t buf[1 << 20] __attribute__((aligned(4096)));
	const int N = probe_n;
	uint64_t *lat = malloc((size_t)N * sizeof(uint64_t));
	*p50 = *p99 = 0;
	if (lat == NULL)
		return;
	if (bsize > sizeof(buf))
		bsize = sizeof(buf);
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0) {
		free(lat);
		return;
	}
	memset(buf, 'z', sizeof(buf));
	/*
	 * Writes wrap around in a file of at most 64 MiB, as the spool's
	 * recycled segments do: a long probe of big batches must not write
	 * (and, at unlink, discard) gigabytes that the next run would pay for.
	 */
	size_t span = (64u << 20) / bsize * bsize;
	if (span > (size_t)N * bsize)
		span = (size_t)N * bsize;
	if (overwrite) {
		/* a file of written blocks, as a prepared spare is */
		for (size_t off = 0; off < span; off += sizeof(buf))
			if (pwrite(fd, buf, sizeof(buf), (off_t)off) < 0)
				break;
		if (fdatasync(fd) < 0)
			perror("fdatasync");
		if (direct) {
			/* bsize is a multiple of 4 KiB here: aligned writes, no page cache */
			close(fd);
			fd = open(path, O_RDWR | O_DIRECT | O_CLOEXEC);
			if (fd < 0) {
				free(lat);
				return;
			}
		}
	} else if (fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, (off_t)span) < 0) {
		/* as the spool's growing segments: blocks reserved, size grows */
	}
	int i;
	uint64_t t_start = mx_now_us();
	for (i = 0; i < N; i++) {
		uint64_t t = mx_now_us();
		if (probe_max_us && i >= 1000 && t - t_start > probe_max_us)
			break; /* as long as the load ran, not longer */
		off_t at = (off_t)(((size_t)i * bsize) % span);
		if (!overwrite && at == 0 && i > 0 && ftruncate(fd, 0) < 0)
			break; /* appending again from the start: the size grows again */
		if (pwrite(fd, buf, bsize, at) < 0 || fdatasync(fd) < 0)
			break;
		lat[i] = mx_now_us() - t;
	}
	close(fd);
	unlink(path);
	if (i > 0) {
		qsort(lat, (size_t)i, sizeof(uint64_t), cmp64);
		*p50 = lat[i / 2];
		*p99 = lat[(size_t)((double)i * 0.99)];
	}
	free(lat);
}

/* The disk's own cost: write + fdatasync of bsize, appending and overwriting, 1000 each. */
static void fsync_baseline(const char *dir, size_t bsize)
{
	char path[600];
	uint64_t a50, a99, o50, o99, d50, d99;
	snprintf(path, sizeof(path), "%s.fsync-probe", dir);
	bsize = (bsize + 4095) & ~(size_t)4095;
	probe_one(path, bsize, false, false, &a50, &a99);
	probe_one(path, bsize, true, false, &o50, &o99);
	probe_one(path, bsize, true, true, &d50, &d99);
	printf("disk alone: write %zu KiB + fdatasync: appending p50 %" PRIu64 " us p99 %" PRIu64
	       " us; overwriting p50 %" PRIu64 " us p99 %" PRIu64 " us; O_DIRECT overwriting p50 "
	       "%" PRIu64 " us p99 %" PRIu64 " us\n",
	       bsize >> 10, a50, a99, o50, o99, d50, d99);
}

static int run_recover(const struct spool_config *cfg, size_t size, uint64_t n, bool drop)
{
	struct spool_config c = *cfg;
	c.durability = SPOOL_DURABILITY_NONE; /* filling is not what is measured */
	struct spool *sp;
	rm_dir(cfg->dir);
	int rc = spool_open(&c, 0, NULL, NULL, NULL, &sp);
	if (rc < 0)
		return 1;
	char *body = malloc(size);
	memset(body, 'x', size);
	struct spool_completion out[256];
	uint64_t t0 = mx_now_us(), done = 0;
	for (uint64_t i = 0; i < n; i++) {
		while ((rc = put(sp, body, size, i)) == -ENOBUFS)
			done += (uint64_t)spool_poll(sp, mx_now_us(), out, 256);
		if (rc < 0) {
			fprintf(stderr, "commit: %s\n", strerror(-rc));
			return 1;
		}
		done += (uint64_t)spool_poll(sp, mx_now_us(), out, 256);
	}
	spool_close(sp);
	printf("wrote %" PRIu64 " messages of %zu bytes in %.1f s (%" PRIu64 " reported early)\n",
	       n, size, (double)(mx_now_us() - t0) / 1e6, done);
	sync();
	if (drop) {
		int fd = open("/proc/sys/vm/drop_caches", O_WRONLY);
		if (fd < 0 || write(fd, "3\n", 2) != 2)
			printf("(could not drop the page cache: %s)\n", strerror(errno));
		if (fd >= 0)
			close(fd);
	}
	struct spool_recovery_stats rs;
	t0 = mx_now_us();
	rc = spool_open(cfg, 0, NULL, NULL, &rs, &sp);
	uint64_t t1 = mx_now_us();
	if (rc < 0) {
		fprintf(stderr, "recovery: %s\n", strerror(-rc));
		return 1;
	}
	printf("recovery%s: %" PRIu64 " messages, %" PRIu64 " segments, %.0f MB in %.2f s "
	       "(%.0f MB/s, %.0f msgs/s); spool_open total %.2f s\n",
	       drop ? " (cold cache)" : " (warm cache)", rs.messages, rs.segments,
	       (double)rs.bytes / 1e6, (double)rs.elapsed_us / 1e6,
	       (double)rs.bytes / (double)rs.elapsed_us,
	       (double)rs.messages * 1e6 / (double)rs.elapsed_us, (double)(t1 - t0) / 1e6);
	spool_close(sp);
	free(body);
	rm_dir(cfg->dir);
	return 0;
}

int main(int argc, char **argv)
{
	struct spool_config cfg;
	spool_config_defaults(&cfg);
	/* one directory per process: parallel runs must not remove each other's spool */
	static char dir[64];
	snprintf(dir, sizeof(dir), "/var/tmp/mxspool-bench-%d", (int)getpid());
	cfg.dir = dir;
	size_t size = 1024;
	double seconds = 5, rate = 0;
	unsigned inflight = 1024;
	uint64_t recover_n = 0;
	bool drop = false, finish = true, probe_only = false, probe_same = true;
	size_t probe_size = 64 << 10;
	int cpu = -1;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (strcmp(a, "--drop-caches") == 0) {
			drop = true;
			continue;
		}
		if (strcmp(a, "--probe-only") == 0) {
			probe_only = true;
			continue;
		}
		if (v == NULL)
			goto usage;
		i++;
		if (strcmp(a, "--dir") == 0)
			cfg.dir = v;
		else if (strcmp(a, "--seconds") == 0)
			seconds = atof(v);
		else if (strcmp(a, "--size") == 0)
			size = (size_t)atol(v);
		else if (strcmp(a, "--rate") == 0)
			rate = atof(v);
		else if (strcmp(a, "--inflight") == 0)
			inflight = (unsigned)atoi(v);
		else if (strcmp(a, "--finish") == 0)
			finish = atoi(v) != 0;
		else if (strcmp(a, "--window") == 0)
			cfg.commit_window_us = (uint64_t)atoll(v);
		else if (strcmp(a, "--depth") == 0)
			cfg.commit_depth = (uint32_t)atoi(v);
		else if (strcmp(a, "--commit-bytes") == 0)
			cfg.commit_bytes = (uint64_t)atoll(v);
		else if (strcmp(a, "--segment-mb") == 0)
			cfg.segment_bytes = (uint64_t)atoll(v) << 20;
		else if (strcmp(a, "--idle-sleep") == 0)
			idle_sleep_us = atol(v);
		else if (strcmp(a, "--idle-yield") == 0)
			idle_yield = atoi(v) != 0;
		else if (strcmp(a, "--cpu") == 0)
			cpu = atoi(v);
		else if (strcmp(a, "--probe-same") == 0)
			probe_same = atoi(v) != 0;
		else if (strcmp(a, "--probe-size") == 0)
			probe_size = (size_t)atol(v);
		else if (strcmp(a, "--recover") == 0)
			recover_n = (uint64_t)atoll(v);
		else if (strcmp(a, "--durability") == 0)
			cfg.durability = strcmp(v, "none") == 0 ? SPOOL_DURABILITY_NONE
								: SPOOL_DURABILITY_FSYNC;
		else
			goto usage;
	}
	cfg.max_open_msgs = inflight + 16;
	mx_log_set_level(MX_LOG_WARN);
	if (cfg.durability == SPOOL_DURABILITY_FSYNC && !recover_n && probe_size > 0)
		fsync_baseline(cfg.dir, probe_size);
	if (probe_only)
		return 0;
	if (recover_n)
		return run_recover(&cfg, size, recover_n, drop);
	if (cpu >= 0) {
		/* As mxrelay's worker lcore: io_uring's workers inherit this CPU. */
		cpu_set_t set;
		CPU_ZERO(&set);
		CPU_SET(cpu, &set);
		if (sched_setaffinity(0, sizeof(set), &set) != 0) {
			fprintf(stderr, "--cpu %d: %s\n", cpu, strerror(errno));
			return 1;
		}
	}
	return run_load(&cfg, size, seconds, rate, inflight, finish, probe_same);
usage:
	fprintf(stderr,
		"usage: spool_bench [--dir D] [--seconds S] [--size B] [--rate R] "
		"[--inflight N] [--durability fsync|none] [--finish 0|1] [--window US] "
		"[--commit-bytes B] [--depth N] [--segment-mb M] [--probe-size B] [--probe-only] "
		"[--probe-same 0|1] [--idle-sleep US] [--idle-yield 0|1] [--cpu N] [--recover N] "
		"[--drop-caches]\n");
	return 2;
}
