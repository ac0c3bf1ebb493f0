/*
 * test_spool.c - lib/spool: record codec, checksums, IDs, group commit,
 * durability modes, state records, recovery (torn tails at every length,
 * quarantine), reclaim, compaction, spool full and disk full.
 *
 * Spool directories go under /dev/shm (fast fsync) unless SPOOL_TEST_DIR is
 * set; the disk-full test mounts its own 1 MiB tmpfs and skips without root.
 */
#include "spool.h"
#include "spool_internal.h"
#include "core.h"
#include "mx_test.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <sys/stat.h>
#include <unistd.h>

static char base[256];
static char tmpfs_dir[300]; /* mounted by the disk-full test; unmounted whatever happens */
static int dir_counter;

static void rm_rf(const char *path)
{
	char cmd[600];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", path);
	if (system(cmd) != 0)
		fprintf(stderr, "rm -rf %s failed\n", path);
}

static const char *new_dir(char *buf, size_t len)
{
	snprintf(buf, len, "%s/t%d", base, dir_counter++);
	rm_rf(buf);
	return buf;
}

static int suite_init(void)
{
	const char *root = getenv("SPOOL_TEST_DIR");
	struct stat st;
	if (root == NULL)
		root = stat("/dev/shm", &st) == 0 ? "/dev/shm" : "/tmp";
	snprintf(base, sizeof(base), "%s/mxspool-test-%d", root, (int)getpid());
	mkdir(base, 0700);
	mx_log_set_level(MX_LOG_ERR);
	return 0;
}

static int suite_clean(void)
{
	if (tmpfs_dir[0] != '\0')
		umount2(tmpfs_dir, MNT_DETACH);
	rm_rf(base);
	return 0;
}

static struct spool_rcpt test_rcpts[3] = {
	{"alice@example.com", "rfc822;alice@example.com",
	 SPOOL_NOTIFY_FAILURE | SPOOL_NOTIFY_DELAY},
	{"bob@example.net", NULL, 0},
	{"carol@example.org", NULL, SPOOL_NOTIFY_NEVER},
};

/* SPOOL_ENV_F_* that test_env() (and so put_msg()) gives the next messages */
static uint8_t env_flags;

static struct spool_envelope test_env(uint32_t rcpts)
{
	struct spool_envelope e = {.sender = "sensor-17@fleet.example",
				   .envid = "ENV123",
				   .ret = SPOOL_RET_HDRS,
				   .flags = env_flags,
				   .client_ip = "10.77.0.1",
				   .helo = "cam17",
				   .arrival_us = 1700000000123456LL,
				   .tls_version = "TLSv1.3",
				   .tls_cipher = "TLS_AES_128_GCM_SHA256",
				   .auth_user = NULL,
				   .message_id = "<abc@cam17>",
				   .rcpts = test_rcpts,
				   .rcpt_count = rcpts};
	return e;
}

static void base_cfg(struct spool_config *c, const char *dir)
{
	spool_config_defaults(c);
	c->dir = dir;
	c->segment_bytes = 1 << 20;
	c->max_message_bytes = 256 << 10;
}

/* Poll until want completions arrived (5 s bound); statuses into st[] by cookie. */
static int wait_completions(struct spool *sp, int want, int *status, int nstatus)
{
	struct spool_completion c[64];
	int got = 0;
	uint64_t t0 = mx_now_us();
	while (got < want && mx_now_us() - t0 < 5000000) {
		int n = spool_poll(sp, mx_now_us() + 100000000, c, 64);
		for (int i = 0; i < n; i++) {
			if (status && (int)c[i].cookie < nstatus)
				status[c[i].cookie] = c[i].status;
			got++;
		}
	}
	return got;
}

static int put_msg(struct spool *sp, uint64_t cookie, size_t body_len, uint32_t rcpts, uint64_t *id)
{
	struct spool_msg *m;
	int rc = spool_msg_begin(sp, &m);
	if (rc < 0)
		return rc;
	char chunk[97];
	for (size_t off = 0; off < body_len; off += sizeof(chunk)) {
		size_t n = body_len - off < sizeof(chunk) ? body_len - off : sizeof(chunk);
		for (size_t i = 0; i < n; i++)
			chunk[i] = (char)('a' + (off + i + cookie) % 26);
		if ((rc = spool_msg_append(m, chunk, n)) < 0) {
			spool_msg_abort(m);
			return rc;
		}
	}
	if (id)
		*id = spool_msg_id(m);
	struct spool_envelope env = test_env(rcpts);
	return spool_msg_commit(m, &env, cookie);
}

static bool body_ok(struct spool *sp, uint64_t id, uint64_t cookie, size_t body_len)
{
	char *buf = malloc(body_len + 16);
	long n = spool_read_body(sp, id, 0, buf, body_len + 16);
	bool ok = n == (long)body_len;
	for (size_t i = 0; ok && i < body_len; i++)
		ok = buf[i] == (char)('a' + (i + cookie) % 26);
	free(buf);
	return ok;
}

/* ---- pure functions ---------------------------------------------------- */

static void test_crc32c(void)
{
	CU_ASSERT_EQUAL(spool_crc32c(0, "123456789", 9), 0xE3069283u);
	/* chaining equals one pass */
	const char *s = "The quick brown fox jumps over the lazy dog, twice over.";
	size_t l = strlen(s);
	CU_ASSERT_EQUAL(spool_crc32c(spool_crc32c(0, s, 13), s + 13, l - 13),
			spool_crc32c(0, s, l));
	uint8_t zeros[32] = {0};
	CU_ASSERT_EQUAL(spool_crc32c(0, zeros, 32), 0x8A9136AAu); /* RFC 3720 B.4 */
}

/* Bit by bit, straight from the polynomial: the reference for every fast path. */
static uint32_t crc32c_ref(uint32_t crc, const uint8_t *p, size_t len)
{
	uint32_t c = ~crc;
	while (len--) {
		c ^= *p++;
		for (int k = 0; k < 8; k++)
			c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
	}
	return ~c;
}

/*
 * The interleaved paths (3 x 256 and 3 x 32 byte rounds) against the
 * reference: every length across the round boundaries, odd start offsets,
 * and chaining split at every kind of point.
 */
static void test_crc32c_interleaved(void)
{
	enum { MAXLEN = 3 * 256 * 2 + 3 * 32 + 40 };
	static uint8_t buf[MAXLEN + 8];
	uint32_t x = 0x12345678u;
	for (size_t i = 0; i < sizeof(buf); i++) {
		x = x * 1103515245u + 12345u;
		buf[i] = (uint8_t)(x >> 16);
	}
	unsigned bad = 0;
	for (size_t len = 0; len <= MAXLEN; len++) {
		size_t off = len % 8;
		if (spool_crc32c(0, buf + off, len) != crc32c_ref(0, buf + off, len))
			bad++;
	}
	CU_ASSERT_EQUAL(bad, 0);
	size_t lens[] = {95, 96, 97, 767, 768, 769, 1024, 1100, 1600, MAXLEN};
	for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
		size_t l = lens[i];
		uint32_t whole = crc32c_ref(0, buf + 1, l);
		for (size_t cut = 0; cut <= l; cut += 37)
			if (spool_crc32c(spool_crc32c(0, buf + 1, cut), buf + 1 + cut, l - cut) !=
			    whole)
				bad++;
	}
	CU_ASSERT_EQUAL(bad, 0);
	/* a known value over more than one big round: 2048 bytes of 0xFF (RFC 3720 B.4 style) */
	static uint8_t ones[2048];
	memset(ones, 0xff, sizeof(ones));
	CU_ASSERT_EQUAL(spool_crc32c(0, ones, sizeof(ones)), crc32c_ref(0, ones, sizeof(ones)));
	CU_ASSERT_EQUAL(spool_crc32c(0, ones, 32), 0x62A8AB43u); /* RFC 3720 B.4 */
}

static void test_ids(void)
{
	char s[SPOOL_ID_LEN + 1];
	uint64_t id = spool_id_make(0xabcdef, 7, 0x1234567), back;
	spool_id_format(id, s);
	CU_ASSERT_EQUAL(strlen(s), 12);
	CU_ASSERT_EQUAL(spool_id_parse(s, &back), 0);
	CU_ASSERT_EQUAL(back, id);
	CU_ASSERT_EQUAL(spool_id_core(id), 7);
	CU_ASSERT_EQUAL(spool_id_parse("0123456789AW", &back), -EINVAL);
	CU_ASSERT_EQUAL(spool_id_parse("0123456789A", &back), -EINVAL);
	CU_ASSERT_EQUAL(spool_id_parse("0123456789ABC", &back), -EINVAL);
	/* base32hex keeps numeric order */
	char a[13], b[13];
	spool_id_format(spool_id_make(1, 0, 9), a);
	spool_id_format(spool_id_make(1, 0, 10), b);
	CU_ASSERT_TRUE(strcmp(a, b) < 0);
}

static void test_envelope_round_trip(void)
{
	struct spool_envelope e = test_env(3);
	e.flags = SPOOL_ENV_F_8BITMIME | SPOOL_ENV_F_SMTPUTF8;
	uint8_t buf[1024];
	long n = spool_env_encode(&e, buf, sizeof(buf));
	CU_ASSERT_TRUE_FATAL(n > 0);
	CU_ASSERT_EQUAL(n, spool_env_size(&e));
	CU_ASSERT_EQUAL(spool_env_encode(&e, buf, (size_t)n - 1), -ENOBUFS);
	struct spool_envelope *d;
	CU_ASSERT_EQUAL_FATAL(spool_env_decode(buf, (size_t)n, &d), 0);
	CU_ASSERT_STRING_EQUAL(d->sender, e.sender);
	CU_ASSERT_STRING_EQUAL(d->envid, "ENV123");
	CU_ASSERT_EQUAL(d->ret, SPOOL_RET_HDRS);
	CU_ASSERT_EQUAL(d->flags, SPOOL_ENV_F_8BITMIME | SPOOL_ENV_F_SMTPUTF8);
	CU_ASSERT_STRING_EQUAL(d->client_ip, "10.77.0.1");
	CU_ASSERT_STRING_EQUAL(d->helo, "cam17");
	CU_ASSERT_EQUAL(d->arrival_us, 1700000000123456LL);
	CU_ASSERT_STRING_EQUAL(d->tls_version, "TLSv1.3");
	CU_ASSERT_STRING_EQUAL(d->tls_cipher, "TLS_AES_128_GCM_SHA256");
	CU_ASSERT_STRING_EQUAL(d->auth_user, "");
	CU_ASSERT_STRING_EQUAL(d->message_id, "<abc@cam17>");
	CU_ASSERT_EQUAL_FATAL(d->rcpt_count, 3);
	CU_ASSERT_STRING_EQUAL(d->rcpts[0].addr, "alice@example.com");
	CU_ASSERT_STRING_EQUAL(d->rcpts[0].orcpt, "rfc822;alice@example.com");
	CU_ASSERT_EQUAL(d->rcpts[0].notify, SPOOL_NOTIFY_FAILURE | SPOOL_NOTIFY_DELAY);
	CU_ASSERT_PTR_NULL(d->rcpts[1].orcpt);
	CU_ASSERT_EQUAL(d->rcpts[2].notify, SPOOL_NOTIFY_NEVER);
	free(d);
	/* every truncation and a trailing byte are refused */
	for (long l = 0; l < n; l++) {
		CU_ASSERT_EQUAL(spool_env_decode(buf, (size_t)l, &d), -EINVAL);
		CU_ASSERT_PTR_NULL(d);
	}
	buf[n] = 0;
	CU_ASSERT_EQUAL(spool_env_decode(buf, (size_t)n + 1, &d), -EINVAL);
	/* each flag alone survives the trip */
	for (uint8_t f = 0; f <= SPOOL_ENV_F_ALL; f++) {
		e.flags = f;
		CU_ASSERT_EQUAL_FATAL(spool_env_encode(&e, buf, sizeof(buf)), n);
		CU_ASSERT_EQUAL(buf[0], 2);
		CU_ASSERT_EQUAL(buf[12], f);
		CU_ASSERT_EQUAL_FATAL(spool_env_decode(buf, (size_t)n, &d), 0);
		CU_ASSERT_EQUAL(d->flags, f);
		free(d);
	}
	/* unknown flags: refused when encoding and when decoding */
	e.flags = 0x04;
	CU_ASSERT_EQUAL(spool_env_size(&e), -EINVAL);
	CU_ASSERT_EQUAL(spool_env_encode(&e, buf, sizeof(buf)), -EINVAL);
	e.flags = SPOOL_ENV_F_8BITMIME;
	CU_ASSERT_EQUAL_FATAL(spool_env_encode(&e, buf, sizeof(buf)), n);
	buf[12] = 0x80 | SPOOL_ENV_F_8BITMIME;
	CU_ASSERT_EQUAL(spool_env_decode(buf, (size_t)n, &d), -EINVAL);
	/*
	 * Envelope version 1 (written by record versions 1 and 2): no flags
	 * byte; it reads as flags 0 with every other field intact.
	 */
	buf[12] = SPOOL_ENV_F_8BITMIME;
	uint8_t v1[1024];
	v1[0] = 1;
	memcpy(v1 + 1, buf + 1, 11);
	memcpy(v1 + 12, buf + 13, (size_t)n - 13);
	CU_ASSERT_EQUAL_FATAL(spool_env_decode(v1, (size_t)n - 1, &d), 0);
	CU_ASSERT_EQUAL(d->flags, 0);
	CU_ASSERT_STRING_EQUAL(d->sender, e.sender);
	CU_ASSERT_STRING_EQUAL(d->message_id, "<abc@cam17>");
	CU_ASSERT_EQUAL_FATAL(d->rcpt_count, 3);
	CU_ASSERT_STRING_EQUAL(d->rcpts[2].addr, "carol@example.org");
	free(d);
	for (long l = 0; l < n - 1; l++)
		CU_ASSERT_EQUAL(spool_env_decode(v1, (size_t)l, &d), -EINVAL);
	/* version 0 and versions after 2 are not envelopes this program knows */
	v1[0] = 0;
	CU_ASSERT_EQUAL(spool_env_decode(v1, (size_t)n - 1, &d), -EINVAL);
	buf[0] = 3;
	CU_ASSERT_EQUAL(spool_env_decode(buf, (size_t)n, &d), -EINVAL);
	/* zero recipients is not an envelope */
	e.rcpt_count = 0;
	CU_ASSERT_EQUAL(spool_env_size(&e), -EINVAL);
}

static size_t build_msg_record(uint8_t *out, size_t cap)
{
	struct spool_envelope e = test_env(2);
	long el = spool_env_size(&e);
	uint8_t pay[2048];
	spool_env_encode(&e, pay, sizeof(pay));
	const char *body = "Subject: t\r\n\r\nhello from a thermostat\r\n";
	memcpy(pay + el, body, strlen(body));
	uint32_t pl = (uint32_t)(el + (long)strlen(body));
	CU_ASSERT_FATAL(SPOOL_REC_HDR + pl <= cap);
	return spool_rec_build(out, SPOOL_REC_MSG, 2, spool_id_make(5, 1, 42), (uint32_t)el, pay,
			       pl);
}

static void test_record_round_trip(void)
{
	uint8_t rec[4096];
	size_t n = build_msg_record(rec, sizeof(rec));
	struct spool_rec_hdr h;
	CU_ASSERT_EQUAL_FATAL(spool_rec_check(rec, n, &h), 0);
	CU_ASSERT_EQUAL(h.type, SPOOL_REC_MSG);
	CU_ASSERT_EQUAL(h.version, SPOOL_REC_VERSION);
	CU_ASSERT_EQUAL(h.flags, 2);
	CU_ASSERT_EQUAL(h.id, spool_id_make(5, 1, 42));
	CU_ASSERT_EQUAL(h.length, n - SPOOL_REC_HDR);
	struct spool_envelope *d;
	CU_ASSERT_EQUAL_FATAL(spool_env_decode(rec + SPOOL_REC_HDR, h.aux, &d), 0);
	CU_ASSERT_EQUAL(d->rcpt_count, 2);
	free(d);
	CU_ASSERT_EQUAL(memcmp(rec + SPOOL_REC_HDR + h.aux, "Subject: t", 10), 0);
	CU_ASSERT_EQUAL(spool_rec_check(rec, n - 1, &h), -EMSGSIZE);
	/* a newer version is recognised as such, not as corruption */
	struct spool_rec_hdr nh = h;
	uint8_t hdr[SPOOL_REC_HDR];
	spool_rec_hdr_put(hdr, &nh);
	hdr[4] = 9;
	spool_rec_reseal(hdr, 0);
	CU_ASSERT_EQUAL(spool_rec_hdr_get(hdr, &nh), -EPROTONOSUPPORT);
	/* version 2 seeds the header checksum with the segment: another segment's fails */
	spool_rec_hdr_put(hdr, &h);
	spool_rec_reseal(hdr, 0x100000007ull);
	CU_ASSERT_EQUAL(spool_rec_hdr_get_seg(hdr, 0x100000007ull, &nh), 0);
	CU_ASSERT_EQUAL(nh.id, h.id);
	CU_ASSERT_EQUAL(spool_rec_hdr_get_seg(hdr, 0x100000008ull, &nh), -EBADMSG);
	CU_ASSERT_EQUAL(spool_rec_hdr_get(hdr, &nh), -EBADMSG);
	/* version 1 headers (unseeded) are still read, in any segment */
	hdr[4] = 1;
	spool_put32(hdr + 28, spool_crc32c(0, hdr, 28));
	CU_ASSERT_EQUAL(spool_rec_hdr_get_seg(hdr, 0x100000008ull, &nh), 0);
	CU_ASSERT_EQUAL(nh.version, 1);
}

static void test_every_bit_flip_detected(void)
{
	uint8_t rec[4096];
	size_t n = build_msg_record(rec, sizeof(rec));
	struct spool_rec_hdr h;
	size_t missed = 0;
	for (size_t bit = 0; bit < n * 8; bit++) {
		rec[bit / 8] ^= (uint8_t)(1u << (bit % 8));
		if (spool_rec_check(rec, n, &h) == 0)
			missed++;
		rec[bit / 8] ^= (uint8_t)(1u << (bit % 8));
	}
	CU_ASSERT_EQUAL(missed, 0);
	CU_ASSERT_EQUAL(spool_rec_check(rec, n, &h), 0);
}

/*
 * Under load the group-commit window stretches (spool_poll): once a
 * flushed batch held SPOOL_BUSY_BATCH messages, the next one waits
 * commit_window_busy_us; after a batch with fewer, commit_window_us again.
 */
static void test_busy_commit_window(void)
{
	char dir[300];
	struct spool_config c;
	base_cfg(&c, new_dir(dir, sizeof(dir)));
	c.commit_window_us = 200;
	c.commit_window_busy_us = 50000;
	c.commit_bytes = 64 << 20;
	struct spool *sp;
	CU_ASSERT_EQUAL_FATAL(spool_open(&c, 0, NULL, NULL, NULL, &sp), 0);
	struct spool_completion out[16];
	struct spool_stats st;
	uint64_t id;
	/* (fdatasyncs counts flushes as they are submitted) one message: flushed at 200 us */
	CU_ASSERT_EQUAL_FATAL(put_msg(sp, 0, 100, 1, &id), 0);
	spool_poll(sp, mx_now_us() + 300, out, 16);
	spool_get_stats(sp, &st);
	CU_ASSERT_EQUAL(st.fdatasyncs, 1);
	CU_ASSERT_EQUAL(wait_completions(sp, 1, NULL, 0), 1);
	/* a busy batch, flushed at 200 us too (the one before it was small) */
	for (int i = 0; i < SPOOL_BUSY_BATCH; i++)
		CU_ASSERT_EQUAL_FATAL(put_msg(sp, (uint64_t)i + 1, 100, 1, &id), 0);
	spool_poll(sp, mx_now_us() + 300, out, 16);
	spool_get_stats(sp, &st);
	CU_ASSERT_EQUAL(st.fdatasyncs, 2);
	CU_ASSERT_EQUAL(wait_completions(sp, SPOOL_BUSY_BATCH, NULL, 0), SPOOL_BUSY_BATCH);
	/* after it: 300 us is not enough, 50 ms is */
	CU_ASSERT_EQUAL_FATAL(put_msg(sp, 100, 100, 1, &id), 0);
	spool_poll(sp, mx_now_us() + 300, out, 16);
	spool_get_stats(sp, &st);
	CU_ASSERT_EQUAL(st.fdatasyncs, 2);
	spool_poll(sp, mx_now_us() + 50001, out, 16);
	spool_get_stats(sp, &st);
	CU_ASSERT_EQUAL(st.fdatasyncs, 3);
	CU_ASSERT_EQUAL(wait_completions(sp, 1, NULL, 0), 1);
	/* that batch was small: 200 us again */
	CU_ASSERT_EQUAL_FATAL(put_msg(sp, 101, 100, 1, &id), 0);
	spool_poll(sp, mx_now_us() + 300, out, 16);
	spool_get_stats(sp, &st);
	CU_ASSERT_EQUAL(st.fdatasyncs, 4);
	CU_ASSERT_EQUAL(wait_completions(sp, 1, NULL, 0), 1);
	spool_close(sp);
}

/* ---- io_cpus: where io_uring's workers run ---------------------------- */

struct io_cpus_run {
	enum spool_io_cpus mode;
	int io_cpu;    /* LIST: the one CPU */
	int found;     /* iou-wrk threads of this thread seen */
	int wrong;     /* ... whose CPUs were not the expected ones */
	char seen[64]; /* the last one's Cpus_allowed_list */
};

/* In a thread of its own (io-wq is per thread), pinned to CPU 0. */
static void *io_cpus_thread(void *arg)
{
	struct io_cpus_run *r = arg;
	cpu_set_t pin;
	CPU_ZERO(&pin);
	CPU_SET(0, &pin);
	if (pthread_setaffinity_np(pthread_self(), sizeof(pin), &pin) != 0)
		return NULL;
	char dir[300];
	struct spool_config c;
	base_cfg(&c, new_dir(dir, sizeof(dir)));
	c.commit_window_us = 100;
	c.io_cpus = r->mode;
	CPU_ZERO(&c.io_cpu_set);
	CPU_SET(r->io_cpu, &c.io_cpu_set);
	struct spool *sp;
	if (spool_open(&c, 0, NULL, NULL, NULL, &sp) != 0)
		return NULL;
	uint64_t id;
	for (int i = 0; i < 20; i++)
		if (put_msg(sp, (uint64_t)i, 1000, 1, &id) != 0)
			break;
	wait_completions(sp, 20, NULL, 0); /* fdatasync: always run by an io-wq worker */
	/* Before the ring goes: its workers exit with it. */
	char want[16], name[32], path[300], line[128];
	snprintf(want, sizeof(want), "%d", r->mode == SPOOL_IO_CPUS_LIST ? r->io_cpu : 0);
	snprintf(name, sizeof(name), "iou-wrk-%d\n", (int)gettid());
	DIR *d = opendir("/proc/self/task");
	struct dirent *de;
	while (d != NULL && (de = readdir(d)) != NULL) {
		snprintf(path, sizeof(path), "/proc/self/task/%s/comm", de->d_name);
		FILE *f = fopen(path, "r");
		bool mine = f != NULL && fgets(line, sizeof(line), f) != NULL &&
			    strcmp(line, name) == 0;
		if (f)
			fclose(f);
		if (!mine)
			continue;
		snprintf(path, sizeof(path), "/proc/self/task/%s/status", de->d_name);
		if ((f = fopen(path, "r")) == NULL)
			continue;
		while (fgets(line, sizeof(line), f) != NULL)
			if (sscanf(line, "Cpus_allowed_list: %63s", r->seen) == 1) {
				r->found++;
				r->wrong += strcmp(r->seen, want) != 0;
			}
		fclose(f);
	}
	if (d)
		closedir(d);
	spool_close(sp);
	return NULL;
}

static void test_io_cpus(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	struct io_cpus_run runs[] = {
		/* the workers follow io_cpus, not the opening thread's CPU 0 */
		{.mode = SPOOL_IO_CPUS_LIST, .io_cpu = n > 1 ? (int)n - 1 : 0},
		/* worker: they inherit CPU 0 */
		{.mode = SPOOL_IO_CPUS_WORKER, .io_cpu = n > 1 ? (int)n - 1 : 0},
	};
	for (size_t i = 0; i < sizeof(runs) / sizeof(runs[0]); i++) {
		pthread_t t;
		CU_ASSERT_EQUAL_FATAL(pthread_create(&t, NULL, io_cpus_thread, &runs[i]), 0);
		pthread_join(t, NULL);
		CU_ASSERT(runs[i].found >= 1);
		CU_ASSERT_EQUAL(runs[i].wrong, 0);
		if (runs[i].wrong)
			fprintf(stderr, "io_cpus run %zu: an io-wq worker on CPUs %s\n", i,
				runs[i].seen);
	}
}

/* ---- group commit ------------------------------------------------------ */

static void test_group_commit_one_fdatasync(void)
{
	char dir[300];
	struct spool_config c;
	base_cfg(&c, new_dir(dir, sizeof(dir)));
	c.commit_window_us = 10000000; /* only the explicit time jump below flushes */
	c.commit_bytes = 64 << 20;
	struct spool *sp;
	CU_ASSERT_EQUAL_FATAL(spool_open(&c, 0, NULL, NULL, NULL, &sp), 0);
	uint64_t ids[100];
	for (int i = 0; i < 100; i++)
		CU_ASSERT_EQUAL(put_msg(sp, (uint64_t)i, 1000, 1, &ids[i]), 0);
	struct spool_completion out[128];
	/* inside the window: nothing is written, nothing reported */
	CU_ASSERT_EQUAL(spool_poll(sp, mx_now_us(), out, 128), 0);
	struct spool_stats st;
	spool_get_stats(sp, &st);
	CU_ASSERT_EQUAL(st.commits, 0);
	CU_ASSERT_EQUAL(spool_locate(sp, ids[0], &(struct spool_location){0}), -EAGAIN);
	int status[100];
	memset(status, 0x7f, sizeof(status));
	CU_ASSERT_EQUAL(wait_completions(sp, 100, status, 100), 100);
	for (int i = 0; i < 100; i++)
		CU_ASSERT_EQUAL(status[i], 0);
	spool_get_stats(sp, &st);
	CU_ASSERT_EQUAL(st.commits, 1);
	CU_ASSERT_EQUAL(st.fdatasyncs, 1);
	CU_ASSERT_EQUAL(st.batch_msgs_max, 100);
	CU_ASSERT_EQUAL(st.messages, 100);
	CU_ASSERT_TRUE(st.bytes_written > 100 * 1000);
	uint64_t lat = 0;
	for (int i = 0; i < SPOOL_LAT_BUCKETS; i++)
		lat += st.commit_lat_us[i];
	CU_ASSERT_EQUAL(lat, 100);
	for (int i = 0; i < 100; i++)
		CU_ASSERT_TRUE(body_ok(sp, ids[i], (uint64_t)i, 1000));
	/* reading past the end is short, not an error */
	char tail[10];
	CU_ASSERT_EQUAL(spool_read_body(sp, ids[3], 995, tail, sizeof(tail)), 5);
	spool_close(sp);
}

/*
 * A body read soon after its commit comes from the batch buffer the spool
 * keeps (no pread); once newer batches have taken every kept buffer, from
 * the file.  Both byte-exact, at any offset.
 */
static void test_body_read_from_memory(void)
{
	char dir[300];
	struct spool_config c;
	base_cfg(&c, new_dir(dir, sizeof(dir)));
	struct spool *sp;
	CU_ASSERT_EQUAL_FATAL(spool_open(&c, 0, NULL, NULL, NULL, &sp), 0);
	enum { N = 12 }; /* more batches than the spool keeps (8) */
	uint64_t ids[N];
	for (int i = 0; i < N; i++) {
		CU_ASSERT_EQUAL_FATAL(put_msg(sp, (uint64_t)i, 1500 + (size_t)i, 1, &ids[i]), 0);
		CU_ASSERT_EQUAL_FATAL(wait_completions(sp, 1, NULL, 0), 1); /* a batch each */
	}
	struct spool_stats st;
	spool_get_stats(sp, &st);
	CU_ASSERT_EQUAL(st.commits, N);
	CU_ASSERT_EQUAL(st.body_reads_memory + st.body_reads_file, 0);
	CU_ASSERT_TRUE(body_ok(sp, ids[N - 1], N - 1, 1500 + N - 1));
	spool_get_stats(sp, &st);
	CU_ASSERT_EQUAL(st.body_reads_memory, 1);
	CU_ASSERT_EQUAL(st.body_reads_file, 0);
	char tail[16];
	CU_ASSERT_EQUAL(spool_read_body(sp, ids[N - 1], 1500 + N - 1 - 4, tail, sizeof(tail)), 4);
	CU_ASSERT_EQUAL(tail[3], (char)('a' + (1500 + N - 1 - 1 + N - 1) % 26));
	CU_ASSERT_EQUAL(spool_read_body(sp, ids[N - 1], 99999, tail, sizeof(tail)), 0);
	CU_ASSERT_TRUE(body_ok(sp, ids[0], 0, 1500)); /* its buffer was reused: the file */
	CU_ASSERT_TRUE(body_ok(sp, ids[N - 8], N - 8, 1500 + N - 8)); /* the oldest kept */
	CU_ASSERT_TRUE(body_ok(sp, ids[N - 9], N - 9, 1500 + N - 9));
	spool_get_stats(sp, &st);
	CU_ASSERT_EQUAL(st.body_reads_memory, 3); /* the read past the end counts neither */
	CU_ASSERT_EQUAL(st.body_reads_file, 2);
	spool_close(sp);
}

static void test_prepend(void)
{
	char dir[300];
	struct spool_config c;
	base_cfg(&c, new_dir(dir, sizeof(dir)));
	struct spool *sp;
	CU_ASSERT_EQUAL_FATAL(spool_open(&c, 0, NULL, NULL, NULL, &sp), 0);
	struct spool_msg *m;
	CU_ASSERT_EQUAL_FATAL(spool_msg_begin(sp, &m), 0);
	/* grows the buffer several times: the shift must keep every byte */
	char body[10000];
	for (size_t i = 0; i < sizeof(body); i++)
		body[i] = (char)('a' + i % 26);
	CU_ASSERT_EQUAL(spool_msg_append(m, body, sizeof(body)), 0);
	const char hdr[] = "DKIM-Signature: v=1; a=ed25519-sha256; d=fleet.example\r\n";
	CU_ASSERT_EQUAL(spool_msg_prepend(m, hdr, sizeof(hdr) - 1), 0);
	uint64_t id = spool_msg_id(m);
	struct spool_envelope env = test_env(1);
	CU_ASSERT_EQUAL_FATAL(spool_msg_commit(m, &env, 1), 0);
	CU_ASSERT_EQUAL(wait_completions(sp, 1, NULL, 0), 1);
	char got[sizeof(hdr) - 1 + sizeof(body) + 8];
	long n = spool_read_body(sp, id, 0, got, sizeof(got));
	CU_ASSERT_EQUAL(n, (long)(sizeof(hdr) - 1 + sizeof(body)));
	CU_ASSERT_EQUAL(memcmp(got, hdr, sizeof(hdr) - 1), 0);
	CU_ASSERT_EQUAL(memcmp(got + sizeof(hdr) - 1, body, sizeof(body)), 0);
	spool_close(sp);
}

static void test_window_flushes_by_size(void)
{
	char dir[300];
	struct spool_config c;
	base_cfg(&c, new_dir(dir, sizeof(dir)));
	c.commit_window_us = 10000000;
	c.commit_bytes = 8192;
	struct spool *sp;
	CU_ASSERT_EQUAL_FATAL(spool_open(&c, 0, NULL, NULL, NULL, &sp), 0);
	for (int i = 0; i < 10; i++)
		CU_ASSERT_EQUAL(put_msg(sp, (uint64_t)i, 1000, 1, NULL), 0);
	struct spool_completion out[16];
	int got = 0;
	uint64_t t0 = mx_now_us();
	/* "now" stays inside the window: only the size bound can flush */
	while (got < 10 && mx_now_us() - t0 < 2000000)
		got += spool_poll(sp, t0, out, 16);
	CU_ASSERT_EQUAL(got, 10);
	spool_close(sp);
}

static void test_durability_none(void)
{
	char dir[300];
	struct spool_config c;
	base_cfg(&c, new_dir(dir, sizeof(dir)));
	c.durability = SPOOL_DURABILITY_NONE;
	struct spool *sp;
	CU_ASSERT_EQUAL_FATAL(spool_open(&c, 0, NULL, NULL, NULL, &sp), 0);
	for (int i = 0; i < 20; i++)
		CU_ASSERT_EQUAL(put_msg(sp, (uint64_t)i, 500, 1, NULL), 0);
	CU_ASSERT_EQUAL(wait_completions(sp, 20, NULL, 0), 20);
	struct spool_stats st;
	spool_get_stats(sp, &st);
	CU_ASSERT_EQUAL(st.fdatasyncs, 0);
	CU_ASSERT_TRUE(st.commits >= 1);
	CU_ASSERT_EQUAL(st.messages, 20);
	spool_close(sp);
}

static void test_limits(void)
{
	char dir[300];
	struct spool_config c;
	base_cfg(&c, new_dir(dir, sizeof(dir)));
	c.max_open_msgs = 2;
	c.max_message_bytes = 8192;
	struct spool *sp;
	CU_ASSERT_EQUAL_FATAL(spool_open(&c, 0, NULL, NULL, NULL, &sp), 0);
	struct spool_msg *a, *b, *x;
	CU_ASSERT_EQUAL(spool_msg_begin(sp, &a), 0);
	CU_ASSERT_EQUAL(spool_msg_begin(sp, &b), 0);
	CU_ASSERT_EQUAL(spool_msg_begin(sp, &x), -ENOBUFS);
	CU_ASSERT_NOT_EQUAL(spool_msg_id(a), spool_msg_id(b));
	char big[9000] = {0};
	CU_ASSERT_EQUAL(spool_msg_append(a, big, sizeof(big)), -EFBIG);
	/* all open messages together are bounded too */
	spool_close(sp);
	c.max_message_bytes = 64 << 10;
	c.max_open_bytes = 10000;
	CU_ASSERT_EQUAL_FATAL(spool_open(&c, 0, NULL, NULL, NULL, &sp), 0);
	CU_ASSERT_EQUAL(spool_msg_begin(sp, &a), 0);
	CU_ASSERT_EQUAL(spool_msg_begin(sp, &b), 0);
	CU_ASSERT_EQUAL(spool_msg_append(a, big, 6000), 0);
	CU_ASSERT_EQUAL(spool_msg_append(b, big, 6000), -ENOBUFS);
	spool_msg_abort(a);
	CU_ASSERT_EQUAL(spool_msg_append(b, big, 6000), 0);
	struct spool_stats ost;
	spool_get_stats(sp, &ost);
	CU_ASSERT_EQUAL(ost.open_bytes_limit_hits, 1);
	spool_msg_abort(b);
	spool_close(sp);
	c.max_open_bytes = 0;
	c.max_message_bytes = 8192;
	CU_ASSERT_EQUAL_FATAL(spool_open(&c, 0, NULL, NULL, NULL, &sp), 0);
	CU_ASSERT_EQUAL(spool_msg_begin(sp, &a), 0);
	CU_ASSERT_EQUAL(spool_msg_begin(sp, &b), 0);
	CU_ASSERT_EQUAL(spool_msg_begin(sp, &x), -ENOBUFS);
	CU_ASSERT_EQUAL(spool_msg_append(a, big, sizeof(big)), -EFBIG);
	struct spool_envelope env = test_env(1);
	env.rcpt_count = 0;
	CU_ASSERT_EQUAL(spool_msg_commit(b, &env, 1), -EINVAL);
	spool_msg_abort(a);
	struct spool_stats st;
	spool_get_stats(sp, &st);
	CU_ASSERT_EQUAL(st.open_limit_hits, 1);
	CU_ASSERT_EQUAL(st.open_bytes_limit_hits, 0);
	CU_ASSERT_EQUAL(st.too_big, 1);
	CU_ASSERT_EQUAL(spool_msg_finish(sp, 12345), -ENOENT);
	spool_close(sp);
}

/* ---- recovery ---------------------------------------------------------- */

struct seen {
	int n;
	uint64_t ids[2048];
	uint8_t flags[2048]; /* env->flags */
	uint32_t body_len[2048];
	uint8_t state0[2048];
	char text0[2048][32];
	uint32_t rcpts[2048];
	bool env_ok;
};

static void on_recovered(void *arg, const struct spool_recovered *m)
{
	struct seen *s = arg;
	if (s->n >= 2048)
		return;
	s->ids[s->n] = m->id;
	s->flags[s->n] = m->env->flags;
	s->body_len[s->n] = m->loc.body_len;
	s->state0[s->n] = m->rcpt[0].state;
	snprintf(s->text0[s->n], 32, "%s", m->rcpt[0].text ? m->rcpt[0].text : "");
	s->rcpts[s->n] = m->env->rcpt_count;
	s->env_ok = strcmp(m->env->sender, "sensor-17@fleet.example") == 0 &&
		    strcmp(m->env->helo, "cam17") == 0 && m->loc.body_len > 0;
	s->n++;
}

static int seen_index(const struct seen *s, uint64_t id)
{
	for (int i = 0; i < s->n; i++)
		if (s->ids[i] == id)
			return i;
	return -1;
}

static void test_recovery_with_state(void)
{
	char dir[300];
	struct spool_config c;
	base_cfg(&c, new_dir(dir, sizeof(dir)));
	struct spool *sp;
	CU_ASSERT_EQUAL_FATAL(spool_open(&c, 3, NULL, NULL, NULL, &sp), 0);
	uint64_t id[6];
	for (int i = 0; i < 6; i++)
		CU_ASSERT_EQUAL(put_msg(sp, (uint64_t)i, 300 + (size_t)i, 3, &id[i]), 0);
	CU_ASSERT_EQUAL(wait_completions(sp, 6, NULL, 0), 6);
	CU_ASSERT_EQUAL(spool_id_core(id[0]), 3);
	CU_ASSERT_EQUAL(spool_mark_delivered(sp, id[0], 0), 0);
	CU_ASSERT_EQUAL(spool_mark_deferred(sp, id[1], 0, 1234, "421 try later"), 0);
	CU_ASSERT_EQUAL(spool_mark_bounced(sp, id[2], 0, "550 no such user"), 0);
	CU_ASSERT_EQUAL(spool_msg_finish(sp, id[3]), 0);
	CU_ASSERT_EQUAL(spool_mark_delivered(sp, id[4], 7), -EINVAL);
	CU_ASSERT_EQUAL(spool_mark_deferred(sp, id[5], 0, 99, "451 x"), 0);
	CU_ASSERT_EQUAL(spool_requeue(sp, id[5]), 0);
	spool_close(sp);

	struct seen *s = calloc(1, sizeof(*s));
	struct spool_recovery_stats rs;
	CU_ASSERT_EQUAL_FATAL(spool_open(&c, 3, on_recovered, s, &rs, &sp), 0);
	CU_ASSERT_EQUAL(rs.messages, 5);
	CU_ASSERT_EQUAL(s->n, 5);
	CU_ASSERT_EQUAL(rs.rcpts_pending, 5 * 3 - 2);
	CU_ASSERT_TRUE(s->env_ok);
	CU_ASSERT_EQUAL(seen_index(s, id[3]), -1);
	int i0 = seen_index(s, id[0]), i1 = seen_index(s, id[1]), i2 = seen_index(s, id[2]),
	    i5 = seen_index(s, id[5]);
	CU_ASSERT_FATAL(i0 >= 0 && i1 >= 0 && i2 >= 0 && i5 >= 0);
	CU_ASSERT_EQUAL(s->state0[i0], SPOOL_RCPT_DELIVERED);
	CU_ASSERT_EQUAL(s->state0[i1], SPOOL_RCPT_DEFERRED);
	CU_ASSERT_STRING_EQUAL(s->text0[i1], "421 try later");
	CU_ASSERT_EQUAL(s->state0[i2], SPOOL_RCPT_BOUNCED);
	CU_ASSERT_STRING_EQUAL(s->text0[i2], "550 no such user");
	CU_ASSERT_EQUAL(s->rcpts[i0], 3);
	const struct spool_rcpt_status *st;
	uint32_t cnt;
	CU_ASSERT_EQUAL(spool_rcpt_states(sp, id[5], &st, &cnt), 0);
	CU_ASSERT_EQUAL(cnt, 3);
	CU_ASSERT_EQUAL(st[0].state, SPOOL_RCPT_DEFERRED);
	CU_ASSERT_EQUAL(st[0].next_retry_s, 0);
	CU_ASSERT_TRUE(body_ok(sp, id[4], 4, 304));
	/* new IDs after the restart differ from every old one */
	uint64_t nid;
	CU_ASSERT_EQUAL(put_msg(sp, 9, 10, 1, &nid), 0);
	for (int i = 0; i < 6; i++)
		CU_ASSERT_NOT_EQUAL(nid, id[i]);
	spool_close(sp);
	free(s);
}

static uint8_t *read_file(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	if (f == NULL)
		return NULL;
	fseek(f, 0, SEEK_END);
	long n = ftell(f);
	fseek(f, 0, SEEK_SET);
	uint8_t *b = malloc((size_t)n + 1);
	*len = fread(b, 1, (size_t)n, f);
	fclose(f);
	return b;
}

static void write_file(const char *path, const uint8_t *b, size_t len)
{
	FILE *f = fopen(path, "wb");
	CU_ASSERT_PTR_NOT_NULL_FATAL(f);
	if (len)
		CU_ASSERT_EQUAL(fwrite(b, 1, len, f), len);
	fclose(f);
}

/* End of the valid records of a segment image (version 1 or 2), counting messages. */
static size_t image_data_end(const uint8_t *img, size_t len, uint64_t seq, size_t *msgs)
{
	size_t off = 0;
	*msgs = 0;
	while (off < len) {
		struct spool_rec_hdr h;
		if (spool_rec_check_seg(img + off, len - off, seq, &h) != 0)
			break;
		*msgs += h.type == SPOOL_REC_MSG;
		off += SPOOL_REC_HDR + h.length;
		if (h.type == SPOOL_REC_SEAL)
			break;
	}
	return off;
}

/* Give a header version v: version 1 is unseeded, later ones seeded with seq. */
static void relabel_hdr(uint8_t *hdr, uint64_t seq, int v)
{
	hdr[4] = (uint8_t)v;
	if (v == 1)
		spool_put32(hdr + 28, spool_crc32c(0, hdr, 28));
	else
		spool_rec_reseal(hdr, seq);
}

/*
 * Relabel every record header of [0, end) as version v, payloads untouched:
 * the record boundaries stay where they are (a stale older life lined up
 * with the new one).
 */
static void image_relabel(uint8_t *img, size_t end, uint64_t seq, int v)
{
	for (size_t off = 0; off < end;) {
		struct spool_rec_hdr h;
		CU_ASSERT_EQUAL_FATAL(spool_rec_check_seg(img + off, end - off, seq, &h), 0);
		relabel_hdr(img + off, seq, v);
		off += SPOOL_REC_HDR + h.length;
	}
}

/*
 * The image as a relay of record version v (1 or 2) wrote it: headers of
 * version v and envelopes of version 1 (no flags byte), so every message
 * record is one byte shorter.  Returns a malloc'd image of *out_len bytes.
 */
static uint8_t *image_downgrade(const uint8_t *img, size_t end, uint64_t seq, int v,
				size_t *out_len)
{
	uint8_t *out = malloc(end);
	CU_ASSERT_PTR_NOT_NULL_FATAL(out);
	size_t o = 0;
	for (size_t off = 0; off < end;) {
		struct spool_rec_hdr h;
		CU_ASSERT_EQUAL_FATAL(spool_rec_check_seg(img + off, end - off, seq, &h), 0);
		const uint8_t *pay = img + off + SPOOL_REC_HDR;
		uint8_t *hdr = out + o;
		uint8_t *dst = hdr + SPOOL_REC_HDR;
		uint32_t len = h.length;
		if (h.type == SPOOL_REC_MSG) {
			CU_ASSERT_EQUAL_FATAL(pay[0], 2);
			dst[0] = 1;
			memcpy(dst + 1, pay + 1, 11);
			memcpy(dst + 12, pay + 13, h.length - 13);
			len = h.length - 1;
			h.aux--;
		} else {
			memcpy(dst, pay, h.length);
		}
		h.length = len;
		h.data_crc = spool_crc32c(0, dst, len);
		h.seg = seq;
		spool_rec_hdr_put(hdr, &h);
		relabel_hdr(hdr, seq, v);
		o += SPOOL_REC_HDR + len;
		off += SPOOL_REC_HDR + (h.type == SPOOL_REC_MSG ? len + 1 : len);
	}
	*out_len = o;
	return out;
}

/* Five messages in five batches; the image of the segment up to the end of its data. */
static uint8_t *five_batches(const char *dir, struct spool_config *c, uint64_t *seq, size_t *len,
			     uint64_t salt)
{
	base_cfg(c, dir);
	struct spool *sp;
	CU_ASSERT_EQUAL_FATAL(spool_open(c, 0, NULL, NULL, NULL, &sp), 0);
	for (int i = 0; i < 5; i++) {
		/* salt changes the bodies, not their lengths */
		CU_ASSERT_EQUAL(put_msg(sp, salt + (uint64_t)i, 40 + 13 * (size_t)i, 1, NULL), 0);
		CU_ASSERT_EQUAL(wait_completions(sp, 1, NULL, 0), 1);
	}
	spool_close(sp);
	uint64_t *seqs;
	size_t nseg, flen, msgs;
	char seg[400];
	CU_ASSERT_EQUAL_FATAL(spool_list_segments(dir, 0, &seqs, &nseg), 0);
	CU_ASSERT_EQUAL_FATAL(nseg, 1);
	*seq = seqs[0];
	free(seqs);
	spool_seg_path(seg, sizeof(seg), dir, 0, *seq);
	uint8_t *img = read_file(seg, &flen);
	CU_ASSERT_PTR_NOT_NULL_FATAL(img);
	*len = image_data_end(img, flen, *seq, &msgs);
	CU_ASSERT_EQUAL(msgs, 5);
	return img;
}

/*
 * Every truncation point of a segment that grows with its data (version 2,
 * and version 1 as older relays wrote it): whole records survive, the torn
 * part is cut away, an image without a whole record is removed.
 */
/*
 * Where each record of a segment image ends (segment header, batch markers,
 * messages), and which are messages; every record checks (of version
 * `version`, when not 0).  Returns the count, at most max.
 */
static size_t record_ends(const uint8_t *img, size_t len, uint64_t seq, int version, size_t *ends,
			  bool *is_msg, size_t max)
{
	size_t n = 0, off = 0;
	while (off < len && n < max) {
		struct spool_rec_hdr h;
		CU_ASSERT_EQUAL_FATAL(spool_rec_check_seg(img + off, len - off, seq, &h), 0);
		if (version != 0)
			CU_ASSERT_EQUAL_FATAL(h.version, version);
		off += SPOOL_REC_HDR + h.length;
		is_msg[n] = h.type == SPOOL_REC_MSG;
		ends[n++] = off;
	}
	return n;
}

/*
 * Make dir (named already, empty) a spool with core 0's directory, cdir
 * (400 bytes); seg: segment seq's path in it.
 */
static void seg_dir(const char *dir, uint64_t seq, char *cdir, char *seg, size_t seglen)
{
	mkdir(dir, 0700);
	spool_core_path(cdir, 400, dir, 0);
	mkdir(cdir, 0700);
	spool_seg_path(seg, seglen, dir, 0, seq);
}

static void torn_tail_run(int version)
{
	char dir[300], dir2[300], seg2[400], cdir[400];
	struct spool_config c;
	struct spool *sp;
	uint64_t seq;
	size_t len;
	uint8_t *img = five_batches(new_dir(dir, sizeof(dir)), &c, &seq, &len, 0);
	if (version < SPOOL_REC_VERSION) {
		/* as an older relay wrote it (shorter envelopes) */
		uint8_t *old = image_downgrade(img, len, seq, version, &len);
		free(img);
		img = old;
	}
	size_t ends[64], msgs = 0;
	bool is_msg[64];
	size_t nends = record_ends(img, len, seq, version, ends, is_msg, 64);
	for (size_t k = 0; k < nends; k++)
		msgs += is_msg[k];
	CU_ASSERT_EQUAL_FATAL(msgs, 5);
	CU_ASSERT_EQUAL_FATAL(nends > 0 ? ends[nends - 1] : 0, len);
	seg_dir(new_dir(dir2, sizeof(dir2)), seq, cdir, seg2, sizeof(seg2));
	struct spool_config c2 = c;
	c2.dir = dir2;
	int bad_scan = 0, bad_open = 0, bad_size = 0;
	for (size_t l = 0; l <= len; l++) {
		/* the whole records in the first l bytes survive; without any, the file goes */
		size_t expect = 0, keep = 0;
		for (size_t k = 0; k < nends; k++)
			if (ends[k] <= l) {
				expect += is_msg[k];
				keep = ends[k];
			}
		write_file(seg2, img, l);
		struct spool_recovery_stats rs;
		if (spool_scan(dir2, 0, NULL, NULL, &rs) != 0 || rs.messages != expect ||
		    rs.quarantined != 0)
			bad_scan++;
		if (spool_open(&c2, 0, NULL, NULL, &rs, &sp) != 0) {
			bad_open++;
			continue;
		}
		if (rs.messages != expect || rs.torn_tails != (l != keep && keep > 0 ? 1u : 0u)) {
			if (bad_open++ < 5)
				fprintf(stderr,
					"  v%d len %zu: %llu messages (want %zu), %llu torn\n",
					version, l, (unsigned long long)rs.messages, expect,
					(unsigned long long)rs.torn_tails);
		}
		spool_close(sp);
		/*
		 * The torn part is cut away (an image without a whole record is
		 * removed); versions 2 and later are then sealed where the data ends.
		 */
		struct stat st;
		size_t sealed_len = keep + (version >= 2 ? SPOOL_REC_HDR : 0);
		if (keep > 0 && (stat(seg2, &st) != 0 || (size_t)st.st_size != sealed_len)) {
			if (bad_size++ < 5)
				fprintf(stderr, "  len %zu: size %lld, want %zu\n", l,
					(long long)st.st_size, sealed_len);
		}
		if (keep == 0 && stat(seg2, &st) == 0)
			bad_size++;
		rm_rf(cdir);
		mkdir(cdir, 0700);
	}
	CU_ASSERT_EQUAL(bad_scan, 0);
	CU_ASSERT_EQUAL(bad_open, 0);
	CU_ASSERT_EQUAL(bad_size, 0);
	free(img);
}

static void test_torn_tail_every_length(void)
{
	torn_tail_run(SPOOL_REC_VERSION);
}

static void test_torn_tail_every_length_v2(void)
{
	torn_tail_run(2);
}

static void test_torn_tail_every_length_v1(void)
{
	torn_tail_run(1);
}

/*
 * BODY=8BITMIME and SMTPUTF8 (RFC 6152, RFC 6531) outlive a restart: recovery
 * reports each message's flags, and another core reading the record
 * (spool_read_envelope) sees them too.
 */
static void test_recovery_returns_flags(void)
{
	char dir[300];
	struct spool_config c;
	base_cfg(&c, new_dir(dir, sizeof(dir)));
	struct spool *sp;
	CU_ASSERT_EQUAL_FATAL(spool_open(&c, 1, NULL, NULL, NULL, &sp), 0);
	uint64_t id[8];
	for (int i = 0; i < 8; i++) {
		env_flags = (uint8_t)(i & SPOOL_ENV_F_ALL);
		CU_ASSERT_EQUAL(put_msg(sp, (uint64_t)i, 100 + (size_t)i, 2, &id[i]), 0);
	}
	env_flags = 0;
	CU_ASSERT_EQUAL(wait_completions(sp, 8, NULL, 0), 8);
	spool_close(sp);

	struct seen *s = calloc(1, sizeof(*s));
	struct spool_recovery_stats rs;
	CU_ASSERT_EQUAL_FATAL(spool_open(&c, 1, on_recovered, s, &rs, &sp), 0);
	CU_ASSERT_EQUAL(rs.messages, 8);
	CU_ASSERT_EQUAL_FATAL(s->n, 8);
	for (int i = 0; i < 8; i++) {
		int k = seen_index(s, id[i]);
		CU_ASSERT_FATAL(k >= 0);
		CU_ASSERT_EQUAL(s->flags[k], i & SPOOL_ENV_F_ALL);
		CU_ASSERT_EQUAL(s->body_len[k], 100 + (uint32_t)i);
		/* the same through the remote reader */
		struct spool_location loc;
		CU_ASSERT_EQUAL_FATAL(spool_locate(sp, id[i], &loc), 0);
		int fd = spool_open_record(dir, &loc, id[i]);
		CU_ASSERT_TRUE_FATAL(fd >= 0);
		struct spool_envelope *env;
		CU_ASSERT_EQUAL_FATAL(spool_read_envelope(fd, &loc, &env), 0);
		CU_ASSERT_EQUAL(env->flags, i & SPOOL_ENV_F_ALL);
		CU_ASSERT_EQUAL(env->rcpt_count, 2);
		free(env);
		close(fd);
		CU_ASSERT_TRUE(body_ok(sp, id[i], (uint64_t)i, 100 + (size_t)i));
	}
	spool_close(sp);
	free(s);
}

/*
 * A spool written by a relay of record version 2 (envelopes without the
 * flags byte) is read by this one: its messages come back with flags 0 and
 * intact bodies, new messages go to a version 3 segment beside it, and
 * compaction copies an old record into the new segment (relabelled as
 * version 3, which a version 3 segment requires) without losing it.
 */
static void test_old_version_segment_read(void)
{
	char dir[300], dir2[300], cdir[400], seg[400];
	struct spool_config c;
	uint64_t seq;
	size_t len, old_len;
	env_flags = SPOOL_ENV_F_8BITMIME | SPOOL_ENV_F_SMTPUTF8; /* what v2 could not store */
	uint8_t *img = five_batches(new_dir(dir, sizeof(dir)), &c, &seq, &len, 0);
	env_flags = 0;
	uint8_t *old = image_downgrade(img, len, seq, 2, &old_len);
	CU_ASSERT_EQUAL_FATAL(old_len, len - 5);
	seg_dir(new_dir(dir2, sizeof(dir2)), seq, cdir, seg, sizeof(seg));
	write_file(seg, old, old_len);
	c.dir = dir2;
	c.compact_min_age_us = 0;
	c.compact_live_pct = 100;

	struct seen *s = calloc(1, sizeof(*s));
	struct spool_recovery_stats rs;
	struct spool *sp;
	CU_ASSERT_EQUAL_FATAL(spool_open(&c, 0, on_recovered, s, &rs, &sp), 0);
	CU_ASSERT_EQUAL(rs.messages, 5);
	CU_ASSERT_EQUAL(rs.torn_tails + rs.quarantined, 0);
	CU_ASSERT_EQUAL_FATAL(s->n, 5);
	CU_ASSERT_TRUE(s->env_ok);
	for (int i = 0; i < 5; i++) {
		CU_ASSERT_EQUAL(s->flags[i], 0);
		CU_ASSERT_EQUAL(s->body_len[i], 40 + 13 * (uint32_t)i);
		CU_ASSERT_TRUE(body_ok(sp, s->ids[i], (uint64_t)i, 40 + 13 * (size_t)i));
	}
	/* finish all but the third; a new message starts a new (version 3) segment */
	uint64_t keep = s->ids[2], nid;
	for (int i = 0; i < 5; i++)
		if (i != 2)
			CU_ASSERT_EQUAL(spool_msg_finish(sp, s->ids[i]), 0);
	env_flags = SPOOL_ENV_F_8BITMIME;
	CU_ASSERT_EQUAL(put_msg(sp, 9, 500, 1, &nid), 0);
	env_flags = 0;
	CU_ASSERT_EQUAL(wait_completions(sp, 1, NULL, 0), 1);
	struct spool_stats st;
	for (int k = 0; k < 100; k++) {
		spool_poll(sp, mx_now_us(), NULL, 0);
		spool_sync(sp);
		spool_get_stats(sp, &st);
		if (st.compaction_msgs == 1 && st.segments_reclaimed == 1)
			break;
	}
	CU_ASSERT_EQUAL(st.compaction_msgs, 1);
	CU_ASSERT_EQUAL(st.segments_reclaimed, 1);
	struct spool_location loc;
	CU_ASSERT_EQUAL(spool_locate(sp, keep, &loc), 0);
	CU_ASSERT_NOT_EQUAL(loc.segment, seq);
	spool_close(sp);

	memset(s, 0, sizeof(*s));
	CU_ASSERT_EQUAL_FATAL(spool_open(&c, 0, on_recovered, s, &rs, &sp), 0);
	CU_ASSERT_EQUAL(rs.messages, 2);
	CU_ASSERT_EQUAL(rs.torn_tails + rs.quarantined, 0);
	int ko = seen_index(s, keep), kn = seen_index(s, nid);
	CU_ASSERT_FATAL(ko >= 0 && kn >= 0);
	CU_ASSERT_EQUAL(s->flags[ko], 0);
	CU_ASSERT_EQUAL(s->flags[kn], SPOOL_ENV_F_8BITMIME);
	CU_ASSERT_TRUE(body_ok(sp, keep, 2, 66));
	CU_ASSERT_TRUE(body_ok(sp, nid, 9, 500));
	CU_ASSERT_EQUAL(spool_locate(sp, keep, &loc), 0);
	CU_ASSERT_EQUAL(spool_locate(sp, nid, &loc), 0);
	spool_close(sp);
	free(s);
	free(old);
	free(img);
	rm_rf(dir);
}

/*
 * A recycled segment: the file of an earlier life (same record sizes, so
 * its stale records sit exactly on the new record boundaries) overwritten
 * by a new life up to every truncation point, the rest of the file as it
 * was (or zeros: a fresh spare).  Only the new life's whole records count;
 * nothing is quarantined, no stale message comes back, the file keeps its
 * size (preallocated: nothing is cut).
 */
static void recycled_run(bool zero_tail, int old_version)
{
	char dir[300], dir2[300], seg2[400], cdir[400];
	struct spool_config c;
	struct spool *sp;
	uint64_t seq_old, seq_new;
	size_t len_old, len_new;
	new_dir(dir, sizeof(dir));
	uint8_t *old = five_batches(dir, &c, &seq_old, &len_old, 0);
	if (old_version != SPOOL_REC_VERSION)
		image_relabel(old, len_old, seq_old, old_version);
	/* the new life: a later open of another spool, a later generation, a new sequence */
	char gen[400];
	snprintf(gen, sizeof(gen), "%s/spool.gen", new_dir(dir2, sizeof(dir2)));
	mkdir(dir2, 0700);
	FILE *g = fopen(gen, "w");
	CU_ASSERT_PTR_NOT_NULL_FATAL(g);
	fprintf(g, "%u\n", (unsigned)(seq_old >> 32) + 5);
	fclose(g);
	uint8_t *img = five_batches(dir2, &c, &seq_new, &len_new, 7);
	CU_ASSERT_FATAL(seq_new > seq_old);
	CU_ASSERT_EQUAL_FATAL(len_new, len_old); /* same layout: boundaries line up */
	c.segment_bytes = 64 << 10;		 /* the preallocated size of the file below */
	c.max_message_bytes = 16 << 10;
	size_t file_len = c.segment_bytes;
	uint8_t *file = calloc(1, file_len);
	CU_ASSERT_PTR_NOT_NULL_FATAL(file);
	size_t ends[64];
	bool is_msg[64];
	size_t nends = record_ends(img, len_new, seq_new, 0, ends, is_msg, 64);
	rm_rf(dir);
	seg_dir(new_dir(dir, sizeof(dir)), seq_new, cdir, seg2, sizeof(seg2));
	struct spool_config c2 = c;
	c2.dir = dir;
	int bad_scan = 0, bad_open = 0, bad_size = 0;
	for (size_t l = 0; l <= len_new; l++) {
		memset(file, 0, file_len);
		if (!zero_tail)
			memcpy(file, old, len_old);
		memcpy(file, img, l);
		/*
		 * A record survives when its bytes are the new ones: written
		 * whole, or torn where the old bytes happen to be the same
		 * (a checksum cannot tell those apart, and need not).
		 */
		size_t expect = 0, keep = 0;
		for (size_t k = 0, start = 0; k < nends; start = ends[k++]) {
			if (memcmp(file + start, img + start, ends[k] - start) != 0)
				break;
			expect += is_msg[k];
			keep = ends[k];
		}
		write_file(seg2, file, file_len);
		struct spool_recovery_stats rs;
		if (spool_scan(dir, 0, NULL, NULL, &rs) != 0 || rs.messages != expect ||
		    rs.quarantined != 0) {
			if (bad_scan++ < 5)
				fprintf(stderr,
					"  len %zu: scan %llu messages (want %zu), %llu q\n", l,
					(unsigned long long)rs.messages, expect,
					(unsigned long long)rs.quarantined);
		}
		if (spool_open(&c2, 0, NULL, NULL, &rs, &sp) != 0) {
			bad_open++;
			continue;
		}
		if (rs.messages != expect || rs.quarantined != 0) {
			if (bad_open++ < 5)
				fprintf(stderr, "  len %zu: %llu messages (want %zu)\n", l,
					(unsigned long long)rs.messages, expect);
		}
		/* the recovered messages are the new life's, and they are readable */
		struct spool_stats st;
		spool_get_stats(sp, &st);
		if (st.live_messages != expect)
			bad_open++;
		spool_close(sp);
		struct stat sb;
		bool exists = stat(seg2, &sb) == 0;
		if ((keep > 0 && (!exists || (size_t)sb.st_size != file_len)) ||
		    (keep == 0 && exists)) {
			if (bad_size++ < 5)
				fprintf(stderr, "  len %zu: exists %d size %lld, keep %zu\n", l,
					exists, exists ? (long long)sb.st_size : -1LL, keep);
		}
		rm_rf(cdir);
		mkdir(cdir, 0700);
	}
	CU_ASSERT_EQUAL(bad_scan, 0);
	CU_ASSERT_EQUAL(bad_open, 0);
	CU_ASSERT_EQUAL(bad_size, 0);
	free(file);
	free(img);
	free(old);
	rm_rf(dir2);
}

static void test_recycled_stale_tail_every_length(void)
{
	recycled_run(false, SPOOL_REC_VERSION);
}

static void test_recycled_v2_tail_every_length(void)
{
	recycled_run(false, 2);
}

static void test_recycled_v1_tail_every_length(void)
{
	recycled_run(false, 1);
}

static void test_zeroed_tail_every_length(void)
{
	recycled_run(true, SPOOL_REC_VERSION);
}

/*
 * A fresh spare is zero-filled in 256 KiB chunks, each written back before
 * more than two are out (spool.c, spare_zero): a segment size that is no
 * multiple of the chunk ends in a short chunk, and the spare still comes
 * out whole (real blocks, all zeros), named and taken by the next roll.
 */
static void test_spare_zero_chunks(void)
{
	char dir[300];
	struct spool_config c;
	base_cfg(&c, new_dir(dir, sizeof(dir)));
	c.segment_bytes = (1 << 20) + (100 << 10); /* four whole chunks and 100 KiB */
	c.max_message_bytes = 16 << 10;
	struct spool *sp;
	CU_ASSERT_EQUAL_FATAL(spool_open(&c, 0, NULL, NULL, NULL, &sp), 0);
	/* past half of the first segment: the spare's preparation starts */
	uint64_t id, first;
	CU_ASSERT_EQUAL_FATAL(put_msg(sp, 0, 8000, 1, &first), 0);
	CU_ASSERT_EQUAL(wait_completions(sp, 1, NULL, 0), 1);
	struct spool_location loc;
	CU_ASSERT_EQUAL_FATAL(spool_locate(sp, first, &loc), 0);
	uint64_t first_seg = loc.segment;
	for (int i = 1; i < 80; i++) {
		CU_ASSERT_EQUAL_FATAL(put_msg(sp, (uint64_t)i, 8000, 1, &id), 0);
		CU_ASSERT_EQUAL(wait_completions(sp, 1, NULL, 0), 1);
		spool_poll(sp, mx_now_us(), NULL, 0);
	}
	for (int k = 0; k < 5000 && spool_spare_preparing(sp); k++) {
		spool_poll(sp, mx_now_us(), NULL, 0);
		usleep(1000);
	}
	CU_ASSERT_FALSE(spool_spare_preparing(sp));
	struct spool_stats st;
	spool_get_stats(sp, &st);
	CU_ASSERT_EQUAL(st.spare_failures, 0);
	CU_ASSERT_EQUAL(st.spare_zero_bytes, c.segment_bytes);
	CU_ASSERT_EQUAL(st.spare_zero_writebacks, 5);
	/* named as the next segment: the one after the first */
	char seg[400];
	struct stat sb;
	spool_seg_path(seg, sizeof(seg), dir, 0, first_seg + 1);
	CU_ASSERT_EQUAL_FATAL(stat(seg, &sb), 0);
	CU_ASSERT_EQUAL(sb.st_size, (off_t)c.segment_bytes);
	CU_ASSERT_TRUE((uint64_t)sb.st_blocks * 512 >= c.segment_bytes);
	int fd = open(seg, O_RDONLY);
	CU_ASSERT_TRUE_FATAL(fd >= 0);
	static uint8_t buf[1 << 16];
	uint64_t nonzero = 0, total = 0;
	ssize_t n;
	while ((n = read(fd, buf, sizeof(buf))) > 0) {
		for (ssize_t j = 0; j < n; j++)
			nonzero += buf[j] != 0;
		total += (uint64_t)n;
	}
	close(fd);
	CU_ASSERT_EQUAL(total, c.segment_bytes);
	CU_ASSERT_EQUAL(nonzero, 0);
	/* the roll takes it: more messages go into the prepared file */
	for (int i = 80; i < 200; i++) {
		CU_ASSERT_EQUAL_FATAL(put_msg(sp, (uint64_t)i, 8000, 1, &id), 0);
		CU_ASSERT_EQUAL(wait_completions(sp, 1, NULL, 0), 1);
	}
	spool_get_stats(sp, &st);
	CU_ASSERT_TRUE(st.segments_precreated >= 1);
	CU_ASSERT_EQUAL(spool_locate(sp, id, &loc), 0);
	CU_ASSERT_TRUE(loc.segment > first_seg);
	CU_ASSERT_TRUE(body_ok(sp, id, 199, 8000));
	spool_close(sp);
}

/*
 * Segments roll into prepared spares; reclaimed segments are recycled
 * into spares instead of unlinked; after a restart exactly the unfinished
 * messages come back, none from a recycled file's past.
 */
static void test_recycle_through_api(void)
{
	char dir[300];
	struct spool_config c;
	base_cfg(&c, new_dir(dir, sizeof(dir)));
	c.segment_bytes = 64 << 10;
	c.max_message_bytes = 16 << 10;
	struct spool *sp;
	CU_ASSERT_EQUAL_FATAL(spool_open(&c, 0, NULL, NULL, NULL, &sp), 0);
	uint64_t ids[200];
	int live = 0;
	for (int i = 0; i < 200; i++) {
		CU_ASSERT_EQUAL_FATAL(put_msg(sp, (uint64_t)i, 3000, 1, &ids[i]), 0);
		CU_ASSERT_EQUAL(wait_completions(sp, 1, NULL, 0), 1);
		/* finish all but every 50th: segments empty out and are reclaimed */
		if (i % 50 != 49) {
			CU_ASSERT_EQUAL(spool_msg_finish(sp, ids[i]), 0);
		} else {
			live++;
		}
		/* let the spare pipeline run between messages (io_uring's worker may lag on a
		 * loaded machine: a preparation in progress is let finish, bounded) */
		for (int k = 0; k < 20; k++)
			spool_poll(sp, mx_now_us(), NULL, 0);
		for (int k = 0; k < 2000 && spool_spare_preparing(sp); k++) {
			spool_poll(sp, mx_now_us(), NULL, 0);
			usleep(1000);
		}
	}
	CU_ASSERT_EQUAL(spool_sync(sp), 0);
	struct spool_stats st;
	spool_get_stats(sp, &st);
	CU_ASSERT_TRUE(st.segments_recycled >= 1);
	CU_ASSERT_TRUE(st.segments_precreated >= 2);
	CU_ASSERT_EQUAL(st.spare_failures, 0);
	spool_close(sp);
	char spare[400];
	struct stat ss;
	snprintf(spare, sizeof(spare), "%s/c0/spare.seg", dir);
	CU_ASSERT_EQUAL(stat(spare, &ss), 0); /* a ready spare is kept for the next open */
	struct spool_recovery_stats rs;
	CU_ASSERT_EQUAL_FATAL(spool_open(&c, 0, NULL, NULL, &rs, &sp), 0);
	CU_ASSERT_EQUAL(rs.messages, (uint64_t)live);
	CU_ASSERT_EQUAL(rs.quarantined, 0);
	struct spool_location loc;
	for (int i = 0; i < 200; i++)
		CU_ASSERT_EQUAL(spool_locate(sp, ids[i], &loc), i % 50 == 49 ? 0 : -ENOENT);
	for (int i = 49; i < 200; i += 50)
		CU_ASSERT_TRUE(body_ok(sp, ids[i], (uint64_t)i, 3000));
	/* the spare left by the last close is taken up: the next segment only overwrites */
	for (int k = 0; k < 200; k++) {
		spool_poll(sp, mx_now_us(), NULL, 0);
		usleep(1000);
	}
	uint64_t id;
	CU_ASSERT_EQUAL(put_msg(sp, 1000, 3000, 1, &id), 0);
	CU_ASSERT_EQUAL(wait_completions(sp, 1, NULL, 0), 1);
	spool_get_stats(sp, &st);
	CU_ASSERT_EQUAL(st.segments_precreated, 1);
	CU_ASSERT_EQUAL(st.segments_unprepared, 0);
	CU_ASSERT_EQUAL(st.spare_zero_bytes, 0); /* it was whole already */
	CU_ASSERT_EQUAL(spool_locate(sp, id, &loc), 0);
	char seg[400];
	struct stat sb;
	spool_seg_path(seg, sizeof(seg), dir, 0, loc.segment);
	CU_ASSERT_EQUAL(stat(seg, &sb), 0);
	CU_ASSERT_EQUAL(sb.st_size, (off_t)c.segment_bytes);
	spool_close(sp);
}

static void test_quarantine_corrupt_segment(void)
{
	char dir[300], seg[400], q[600];
	struct spool_config c;
	base_cfg(&c, new_dir(dir, sizeof(dir)));
	c.segment_bytes = 64 << 10;
	c.max_message_bytes = 16 << 10;
	struct spool *sp;
	CU_ASSERT_EQUAL_FATAL(spool_open(&c, 0, NULL, NULL, NULL, &sp), 0);
	for (int i = 0; i < 40; i++) {
		CU_ASSERT_EQUAL(put_msg(sp, (uint64_t)i, 4000, 1, NULL), 0);
		CU_ASSERT_EQUAL(wait_completions(sp, 1, NULL, 0), 1);
	}
	spool_close(sp);
	uint64_t *seqs;
	size_t nseg;
	CU_ASSERT_EQUAL_FATAL(spool_list_segments(dir, 0, &seqs, &nseg), 0);
	CU_ASSERT_FATAL(nseg >= 3);
	struct spool_recovery_stats rs;
	CU_ASSERT_EQUAL(spool_scan(dir, 0, NULL, NULL, &rs), 0);
	CU_ASSERT_EQUAL(rs.messages, 40);
	uint64_t in_first = 0;
	{
		/* count the messages of the first segment */
		size_t len;
		spool_seg_path(seg, sizeof(seg), dir, 0, seqs[0]);
		uint8_t *img = read_file(seg, &len);
		size_t msgs, end = image_data_end(img, len, seqs[0], &msgs);
		in_first = msgs;
		/* one flipped byte in the middle of a sealed segment */
		img[end / 2] ^= 0x40;
		write_file(seg, img, len);
		free(img);
	}
	CU_ASSERT_TRUE(in_first > 0);
	CU_ASSERT_EQUAL_FATAL(spool_open(&c, 0, NULL, NULL, &rs, &sp), 0);
	CU_ASSERT_EQUAL(rs.quarantined, 1);
	CU_ASSERT_EQUAL(rs.messages, 40 - in_first);
	struct spool_stats st;
	spool_get_stats(sp, &st);
	CU_ASSERT_EQUAL(st.quarantined, 1);
	spool_close(sp);
	struct stat sb;
	CU_ASSERT_NOT_EQUAL(stat(seg, &sb), 0);
	snprintf(q, sizeof(q), "%s/quarantine/c0-%016llx.seg", dir, (unsigned long long)seqs[0]);
	CU_ASSERT_EQUAL(stat(q, &sb), 0);
	free(seqs);
}

/*
 * In the segment being written, damage in an older batch (two or more batch
 * markers follow it) is corruption: quarantined, not cut; damage in the last
 * batch is a torn tail.
 */
/* ---- recover, append, crash, recover again ----------------------------- */

struct ids {
	int n;
	uint64_t v[64];
};

static void on_recovered_id(void *arg, const struct spool_recovered *m)
{
	struct ids *s = arg;
	if (s->n < 64)
		s->v[s->n++] = m->id;
}

static bool ids_has(const struct ids *s, uint64_t id)
{
	for (int i = 0; i < s->n; i++)
		if (s->v[i] == id)
			return true;
	return false;
}

/* What the child saw and did (pipe): 'R'ecovered, 'A'cked, 'U'nacked, 'F'inished. */
struct crash_note {
	char kind;
	uint64_t id;
};

static void note(int fd, char kind, uint64_t id)
{
	struct crash_note n = {kind, id};
	if (write(fd, &n, sizeof(n)) != (ssize_t)sizeof(n))
		_exit(3);
}

/*
 * The relay after the first crash: recover, finish one recovered message,
 * accept four more (acknowledged), start three (written, not acknowledged),
 * and die by SIGKILL with them in flight.
 */
static void crash_child(const struct spool_config *c, int fd)
{
	struct ids rec = {0};
	struct spool *sp;
	if (spool_open(c, 0, on_recovered_id, &rec, NULL, &sp) != 0)
		_exit(2);
	for (int i = 0; i < rec.n; i++)
		note(fd, 'R', rec.v[i]);
	if (rec.n > 0 && spool_msg_finish(sp, rec.v[0]) == 0 && spool_sync(sp) == 0)
		note(fd, 'F', rec.v[0]);
	uint64_t id[7];
	int status[7] = {1, 1, 1, 1, 1, 1, 1};
	for (int i = 0; i < 4; i++)
		if (put_msg(sp, (uint64_t)i, 200 + 31 * (size_t)i, 1, &id[i]) != 0)
			_exit(4);
	if (wait_completions(sp, 4, status, 7) != 4)
		_exit(5);
	for (int i = 0; i < 4; i++)
		if (status[i] == 0)
			note(fd, 'A', id[i]);
	for (int i = 4; i < 7; i++)
		if (put_msg(sp, (uint64_t)i, 300, 1, &id[i]) == 0)
			note(fd, 'U', id[i]);
	spool_poll(sp, mx_now_us() + 100000000, NULL, 0); /* the writes start; nobody waits */
	kill(getpid(), SIGKILL);
	_exit(6);
}

/*
 * Torn at l bytes (a growing file of l bytes, or a preallocated one: the
 * first l bytes of the image, zeros after), recovered by a relay that then
 * appends and is killed, recovered again: the second recovery finds every
 * message acknowledged in either life and not finished, and nothing that
 * was never written.  Returns the number of failed checks.
 */
static int recover_twice_at(const char *dir, const struct spool_config *c, const uint8_t *img,
			    size_t l, size_t file_len, size_t expect, uint64_t seq, size_t keep)
{
	char cdir[400], seg[400];
	int bad = 0;
	rm_rf(dir);
	seg_dir(dir, seq, cdir, seg, sizeof(seg));
	uint8_t *file = calloc(1, file_len > l ? file_len : l + 1);
	memcpy(file, img, l);
	write_file(seg, file, file_len > l ? file_len : l);
	free(file);
	int p[2];
	if (pipe(p) != 0)
		return 1;
	fflush(NULL);
	pid_t pid = fork();
	if (pid == 0) {
		close(p[0]);
		crash_child(c, p[1]);
	}
	close(p[1]);
	struct ids r = {0}, a = {0}, u = {0}, f = {0};
	struct crash_note n;
	while (read(p[0], &n, sizeof(n)) == (ssize_t)sizeof(n)) {
		struct ids *t = n.kind == 'R' ? &r : n.kind == 'A' ? &a : n.kind == 'U' ? &u : &f;
		if (t->n < 64)
			t->v[t->n++] = n.id;
	}
	close(p[0]);
	int st = 0;
	waitpid(pid, &st, 0);
	if (!WIFSIGNALED(st) || WTERMSIG(st) != SIGKILL) {
		fprintf(stderr, "  len %zu: child ended with status %#x\n", l, st);
		return 1;
	}
	/* the first recovery: exactly the whole messages */
	bad += r.n != (int)expect;
	bad += a.n != 4;
	bad += expect > 0 && f.n != 1;
	/*
	 * The cut segment ends with a seal now (later recoveries need no
	 * search), unless it was reclaimed: nothing live was left in it.
	 */
	int fd = open(seg, O_RDONLY);
	if (fd >= 0) {
		struct spool_scan_seg res;
		if (keep == 0 || spool_scan_segment(fd, seq, NULL, NULL, &res) != 0 ||
		    !res.sealed || res.size != keep + SPOOL_REC_HDR || res.state != 0)
			bad++;
		close(fd);
	} else if (r.n != f.n) {
		bad++;
	}
	/* the second recovery */
	struct ids r2 = {0};
	struct spool_recovery_stats rs;
	struct spool *sp;
	if (spool_open(c, 0, on_recovered_id, &r2, &rs, &sp) != 0)
		return bad + 1;
	spool_close(sp);
	bad += rs.quarantined != 0;
	for (int i = 0; i < r.n; i++)
		bad += ids_has(&r2, r.v[i]) == ids_has(&f, r.v[i]);
	for (int i = 0; i < a.n; i++)
		bad += !ids_has(&r2, a.v[i]);
	for (int i = 0; i < r2.n; i++)
		bad += !ids_has(&r, r2.v[i]) && !ids_has(&a, r2.v[i]) && !ids_has(&u, r2.v[i]);
	if (bad)
		fprintf(stderr,
			"  len %zu (file %zu): recovered %d (want %zu), acked %d, unacked %d, "
			"finished %d; then %d back, %llu quarantined\n",
			l, file_len, r.n, expect, a.n, u.n, f.n, r2.n,
			(unsigned long long)rs.quarantined);
	return bad;
}

static void test_recover_append_crash_recover(void)
{
	char dir[300], dir2[300];
	struct spool_config c;
	uint64_t seq;
	size_t len;
	uint8_t *img = five_batches(new_dir(dir, sizeof(dir)), &c, &seq, &len, 0);
	size_t ends[64];
	bool is_msg[64];
	size_t nends = record_ends(img, len, seq, 0, ends, is_msg, 64);
	struct spool_config c2 = c;
	c2.dir = new_dir(dir2, sizeof(dir2));
	c2.segment_bytes = 64 << 10;
	c2.max_message_bytes = 16 << 10;
	int bad = 0, points = 0;
	for (size_t l = 0; l <= len; l++) {
		/* every record boundary and the bytes around it, and every 11th byte */
		bool near = false;
		for (size_t k = 0; k < nends; k++)
			near |= l + 1 >= ends[k] && l <= ends[k] + 1;
		if (!near && l % 11 != 0)
			continue;
		size_t expect = 0, keep = 0;
		for (size_t k = 0; k < nends; k++)
			if (ends[k] <= l) {
				expect += is_msg[k];
				keep = ends[k];
			}
		/* a growing file, then a preallocated one (zeros after the data) */
		bad += recover_twice_at(dir2, &c2, img, l, l, expect, seq, keep);
		bad += recover_twice_at(dir2, &c2, img, l, c2.segment_bytes, expect, seq, keep);
		points++;
	}
	CU_ASSERT_TRUE(points > 40);
	CU_ASSERT_EQUAL(bad, 0);
	free(img);
	rm_rf(dir);
	rm_rf(dir2);
}

static void test_active_segment_damage(void)
{
	char dir[300], seg[400];
	struct spool_config c;
	base_cfg(&c, new_dir(dir, sizeof(dir)));
	struct spool *sp;
	CU_ASSERT_EQUAL_FATAL(spool_open(&c, 0, NULL, NULL, NULL, &sp), 0);
	uint64_t ids[6];
	for (int i = 0; i < 6; i++) {
		CU_ASSERT_EQUAL(put_msg(sp, (uint64_t)i, 500, 1, &ids[i]), 0);
		CU_ASSERT_EQUAL(wait_completions(sp, 1, NULL, 0), 1);
	}
	struct spool_location first, last, second, third;
	CU_ASSERT_EQUAL_FATAL(spool_locate(sp, ids[1], &second), 0);
	CU_ASSERT_EQUAL_FATAL(spool_locate(sp, ids[2], &third), 0);
	CU_ASSERT_EQUAL_FATAL(spool_locate(sp, ids[0], &first), 0);
	CU_ASSERT_EQUAL_FATAL(spool_locate(sp, ids[5], &last), 0);
	spool_close(sp);
	spool_seg_path(seg, sizeof(seg), dir, 0, first.segment);
	size_t len;
	uint8_t *img = read_file(seg, &len);
	CU_ASSERT_PTR_NOT_NULL_FATAL(img);
	/* a flipped bit in the last message: cut as a torn tail (read-only scan) */
	img[last.offset + last.body_offset + 10] ^= 1;
	write_file(seg, img, len);
	struct spool_recovery_stats rs;
	CU_ASSERT_EQUAL(spool_scan(dir, 0, NULL, NULL, &rs), 0);
	CU_ASSERT_EQUAL(rs.torn_tails, 1);
	CU_ASSERT_EQUAL(rs.quarantined, 0);
	CU_ASSERT_EQUAL(rs.messages, 5);
	img[last.offset + last.body_offset + 10] ^= 1;
	/*
	 * Up to 4 batches may be in flight (commit_depth), so damage with only
	 * 3 batch markers after it is still a torn tail; with 4 it is not.
	 */
	write_file(seg, img, len);
	CU_ASSERT_EQUAL_FATAL(spool_scan(dir, 0, NULL, NULL, &rs), 0);
	CU_ASSERT_EQUAL(rs.messages, 6);
	img[third.offset + third.body_offset + 10] ^= 1;
	write_file(seg, img, len);
	CU_ASSERT_EQUAL(spool_scan(dir, 0, NULL, NULL, &rs), 0);
	CU_ASSERT_EQUAL(rs.torn_tails, 1);
	CU_ASSERT_EQUAL(rs.quarantined, 0);
	CU_ASSERT_EQUAL(rs.messages, 2);
	img[third.offset + third.body_offset + 10] ^= 1;
	img[second.offset + second.body_offset + 10] ^= 1;
	write_file(seg, img, len);
	CU_ASSERT_EQUAL(spool_scan(dir, 0, NULL, NULL, &rs), 0);
	CU_ASSERT_EQUAL(rs.quarantined, 1);
	img[second.offset + second.body_offset + 10] ^= 1;
	/* the same in the first message: five batches follow, so it is corruption */
	img[first.offset + first.body_offset + 10] ^= 1;
	write_file(seg, img, len);
	CU_ASSERT_EQUAL_FATAL(spool_open(&c, 0, NULL, NULL, &rs, &sp), 0);
	CU_ASSERT_EQUAL(rs.quarantined, 1);
	CU_ASSERT_EQUAL(rs.torn_tails, 0);
	spool_close(sp);
	struct stat sb;
	CU_ASSERT_NOT_EQUAL(stat(seg, &sb), 0);
	free(img);
}

/* ---- reclaim, compaction, full ------------------------------------------ */

static void test_reclaim(void)
{
	char dir[300], seg[400];
	struct spool_config c;
	base_cfg(&c, new_dir(dir, sizeof(dir)));
	c.segment_bytes = 64 << 10;
	c.max_message_bytes = 16 << 10;
	struct spool *sp;
	CU_ASSERT_EQUAL_FATAL(spool_open(&c, 0, NULL, NULL, NULL, &sp), 0);
	uint64_t ids[60];
	for (int i = 0; i < 60; i++) {
		/* the spare is prepared in io_uring's worker: on a loaded machine it may lag, so
		 * let it finish (bounded) for the roll-over below to find it ready */
		for (int k = 0; k < 2000 && spool_spare_preparing(sp); k++) {
			spool_poll(sp, mx_now_us(), NULL, 0);
			usleep(1000);
		}
		CU_ASSERT_EQUAL(put_msg(sp, (uint64_t)i, 3000, 1, &ids[i]), 0);
		CU_ASSERT_EQUAL(wait_completions(sp, 1, NULL, 0), 1);
	}
	uint64_t *seqs;
	size_t nseg;
	CU_ASSERT_EQUAL_FATAL(spool_list_segments(dir, 0, &seqs, &nseg), 0);
	CU_ASSERT_FATAL(nseg >= 2);
	struct spool_location loc;
	CU_ASSERT_EQUAL(spool_locate(sp, ids[0], &loc), 0);
	CU_ASSERT_EQUAL(loc.segment, seqs[0]);
	for (int i = 0; i < 60; i += 7) /* bodies of later batches are where they are said to be */
		CU_ASSERT_TRUE(body_ok(sp, ids[i], (uint64_t)i, 3000));
	/* finish every message of the first segment but one: nothing is freed */
	int first_n = 0;
	for (int i = 0; i < 60; i++) {
		spool_locate(sp, ids[i], &loc);
		if (loc.segment == seqs[0])
			first_n++;
	}
	for (int i = 1; i < first_n; i++)
		CU_ASSERT_EQUAL(spool_msg_finish(sp, ids[i]), 0);
	wait_completions(sp, 0, NULL, 0);
	spool_poll(sp, mx_now_us(), NULL, 0);
	struct stat sb;
	spool_seg_path(seg, sizeof(seg), dir, 0, seqs[0]);
	CU_ASSERT_EQUAL(stat(seg, &sb), 0);
	CU_ASSERT_EQUAL(spool_msg_finish(sp, ids[0]), 0);
	spool_poll(sp, mx_now_us(), NULL, 0);
	CU_ASSERT_NOT_EQUAL(stat(seg, &sb), 0);
	struct spool_stats st;
	spool_get_stats(sp, &st);
	CU_ASSERT_EQUAL(st.segments_reclaimed, 1);
	CU_ASSERT_TRUE(st.segments_precreated >= 1); /* rolled over without a syscall */
	CU_ASSERT_EQUAL(st.segments_created - st.segments_reclaimed, st.segments);
	spool_close(sp);
	/* and after a restart the finished messages stay finished */
	struct spool_recovery_stats rs;
	CU_ASSERT_EQUAL(spool_scan(dir, 0, NULL, NULL, &rs), 0);
	CU_ASSERT_EQUAL(rs.messages, (uint64_t)(60 - first_n));
	free(seqs);
}

static void test_compaction_keeps_state(void)
{
	char dir[300], seg[400];
	struct spool_config c;
	base_cfg(&c, new_dir(dir, sizeof(dir)));
	c.segment_bytes = 64 << 10;
	c.max_message_bytes = 16 << 10;
	c.compact_min_age_us = 0;
	c.compact_live_pct = 50;
	struct spool *sp;
	CU_ASSERT_EQUAL_FATAL(spool_open(&c, 0, NULL, NULL, NULL, &sp), 0);
	uint64_t ids[60];
	for (int i = 0; i < 60; i++) {
		CU_ASSERT_EQUAL(put_msg(sp, (uint64_t)i, 3000, 2, &ids[i]), 0);
		CU_ASSERT_EQUAL(wait_completions(sp, 1, NULL, 0), 1);
	}
	uint64_t *seqs;
	size_t nseg;
	CU_ASSERT_EQUAL_FATAL(spool_list_segments(dir, 0, &seqs, &nseg), 0);
	CU_ASSERT_FATAL(nseg >= 3);
	/* keep messages 0 and 1 of segment 1 alive, with state; finish the rest */
	struct spool_location loc;
	CU_ASSERT_EQUAL(spool_mark_deferred(sp, ids[0], 1, 777, "452 mailbox full"), 0);
	CU_ASSERT_EQUAL(spool_mark_delivered(sp, ids[1], 0), 0);
	for (int i = 2; i < 60; i++) {
		spool_locate(sp, ids[i], &loc);
		if (loc.segment == seqs[0] || loc.segment == seqs[1])
			CU_ASSERT_EQUAL(spool_msg_finish(sp, ids[i]), 0);
	}
	for (int k = 0; k < 100; k++) {
		spool_poll(sp, mx_now_us(), NULL, 0);
		spool_sync(sp);
	}
	struct spool_stats st;
	spool_get_stats(sp, &st);
	CU_ASSERT_EQUAL(st.compaction_msgs, 2);
	CU_ASSERT_TRUE(st.segments_reclaimed >= 2);
	struct stat sb;
	spool_seg_path(seg, sizeof(seg), dir, 0, seqs[0]);
	CU_ASSERT_NOT_EQUAL(stat(seg, &sb), 0);
	spool_seg_path(seg, sizeof(seg), dir, 0, seqs[1]);
	CU_ASSERT_NOT_EQUAL(stat(seg, &sb), 0);
	CU_ASSERT_EQUAL(spool_locate(sp, ids[0], &loc), 0);
	CU_ASSERT_TRUE(loc.segment > seqs[1]);
	CU_ASSERT_TRUE(body_ok(sp, ids[0], 0, 3000));
	CU_ASSERT_TRUE(body_ok(sp, ids[1], 1, 3000));
	spool_close(sp);
	/* after a restart the copies carry their state */
	struct spool_recovery_stats rs;
	CU_ASSERT_EQUAL_FATAL(spool_open(&c, 0, NULL, NULL, &rs, &sp), 0);
	const struct spool_rcpt_status *rst;
	uint32_t cnt;
	CU_ASSERT_EQUAL_FATAL(spool_rcpt_states(sp, ids[0], &rst, &cnt), 0);
	CU_ASSERT_EQUAL(rst[1].state, SPOOL_RCPT_DEFERRED);
	CU_ASSERT_EQUAL(rst[1].next_retry_s, 777);
	CU_ASSERT_STRING_EQUAL(rst[1].text, "452 mailbox full");
	CU_ASSERT_EQUAL(rst[0].state, SPOOL_RCPT_QUEUED);
	CU_ASSERT_EQUAL_FATAL(spool_rcpt_states(sp, ids[1], &rst, &cnt), 0);
	CU_ASSERT_EQUAL(rst[0].state, SPOOL_RCPT_DELIVERED);
	CU_ASSERT_TRUE(body_ok(sp, ids[0], 0, 3000));
	CU_ASSERT_EQUAL(rs.quarantined, 0);
	spool_close(sp);
	free(seqs);
}

static void test_spool_full_by_size(void)
{
	char dir[300];
	struct spool_config c;
	base_cfg(&c, new_dir(dir, sizeof(dir)));
	c.segment_bytes = 64 << 10;
	c.max_message_bytes = 16 << 10;
	c.max_bytes = 200 << 10;
	struct spool *sp;
	CU_ASSERT_EQUAL_FATAL(spool_open(&c, 0, NULL, NULL, NULL, &sp), 0);
	uint64_t ids[200];
	int n = 0, rc = 0;
	while (n < 200) {
		rc = put_msg(sp, (uint64_t)n, 4000, 1, &ids[n]);
		if (rc < 0)
			break;
		CU_ASSERT_EQUAL(wait_completions(sp, 1, NULL, 0), 1);
		n++;
	}
	CU_ASSERT_EQUAL(rc, -ENOSPC);
	CU_ASSERT_TRUE(n >= 40 && n <= 50);
	CU_ASSERT_FALSE(spool_has_room(sp));
	struct spool_msg *m;
	CU_ASSERT_EQUAL(spool_msg_begin(sp, &m), -ENOSPC);
	struct spool_stats st;
	spool_get_stats(sp, &st);
	CU_ASSERT_TRUE(st.enospc_refusals >= 2);
	for (int i = 0; i < n; i++)
		CU_ASSERT_EQUAL(spool_msg_finish(sp, ids[i]), 0);
	for (int k = 0; k < 10 && !spool_has_room(sp); k++) {
		spool_sync(sp);
		spool_poll(sp, mx_now_us(), NULL, 0);
	}
	CU_ASSERT_TRUE(spool_has_room(sp));
	CU_ASSERT_EQUAL(put_msg(sp, 1, 4000, 1, NULL), 0);
	int status[2] = {-1, -1};
	CU_ASSERT_EQUAL(wait_completions(sp, 1, status, 2), 1);
	CU_ASSERT_EQUAL(status[1], 0);
	spool_close(sp);
}

static void test_disk_full_tmpfs(void)
{
	char dir[300];
	new_dir(dir, sizeof(dir));
	mkdir(dir, 0700);
	if (mount("mxspool-test", dir, "tmpfs", 0, "size=1m") != 0) {
		fprintf(stderr, "  (skipped: cannot mount a 1 MiB tmpfs: %s)\n", strerror(errno));
		return;
	}
	snprintf(tmpfs_dir, sizeof(tmpfs_dir), "%s", dir);
	struct spool_config c;
	base_cfg(&c, dir);
	c.segment_bytes = 128 << 10;
	c.max_message_bytes = 16 << 10;
	struct spool *sp;
	CU_ASSERT_EQUAL_FATAL(spool_open(&c, 0, NULL, NULL, NULL, &sp), 0);
	static int status[1000];
	uint64_t ids[1000];
	int n = 0, refused = 0, failed = 0, ok = 0;
	for (; n < 1000; n++) {
		status[n] = 1;
		int rc = put_msg(sp, (uint64_t)n, 8000, 1, &ids[n]);
		if (rc == -ENOSPC) {
			refused++;
			break;
		}
		CU_ASSERT_EQUAL_FATAL(rc, 0);
		CU_ASSERT_EQUAL(wait_completions(sp, 1, status, 1000), 1);
		if (status[n] == 0)
			ok++;
		else if (status[n] == -ENOSPC || status[n] == -EIO)
			failed++;
	}
	/* never a silent drop: every commit was reported, and the spool said full */
	CU_ASSERT_EQUAL(refused + failed > 0, true);
	CU_ASSERT_EQUAL(ok + failed, n);
	CU_ASSERT_TRUE(ok > 50);
	CU_ASSERT_FALSE(spool_has_room(sp));
	for (int i = 0; i < n; i++)
		if (status[i] == 0)
			CU_ASSERT_EQUAL(spool_msg_finish(sp, ids[i]), 0);
	uint64_t t0 = mx_now_us();
	while (!spool_has_room(sp) && mx_now_us() - t0 < 3000000) {
		spool_sync(sp);
		spool_poll(sp, mx_now_us(), NULL, 0);
		usleep(10000);
	}
	CU_ASSERT_TRUE(spool_has_room(sp));
	int st2[2] = {-1, -1};
	CU_ASSERT_EQUAL(put_msg(sp, 1, 8000, 1, NULL), 0);
	CU_ASSERT_EQUAL(wait_completions(sp, 1, st2, 2), 1);
	CU_ASSERT_EQUAL(st2[1], 0);
	spool_close(sp);
	umount(dir);
}

/* ---- IDs and lock -------------------------------------------------------- */

static int cmp64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static void test_id_uniqueness_million(void)
{
	char dir[300];
	struct spool_config c;
	base_cfg(&c, new_dir(dir, sizeof(dir)));
	c.max_open_msgs = 1;
	size_t n = 0, want = 1000000;
	uint64_t *ids = malloc(want * sizeof(*ids));
	CU_ASSERT_PTR_NOT_NULL_FATAL(ids);
	/* 4 starts ("restarts") of 2 cores each, 125k IDs per core per start */
	for (int start = 0; start < 4; start++) {
		for (unsigned core = 0; core < 2; core++) {
			struct spool *sp;
			CU_ASSERT_EQUAL_FATAL(spool_open(&c, core, NULL, NULL, NULL, &sp), 0);
			for (int i = 0; i < 125000; i++) {
				struct spool_msg *m;
				CU_ASSERT_EQUAL_FATAL(spool_msg_begin(sp, &m), 0);
				ids[n++] = spool_msg_id(m);
				spool_msg_abort(m);
			}
			spool_close(sp);
		}
	}
	CU_ASSERT_EQUAL_FATAL(n, want);
	qsort(ids, n, sizeof(*ids), cmp64);
	size_t dups = 0;
	for (size_t i = 1; i < n; i++)
		dups += ids[i] == ids[i - 1];
	CU_ASSERT_EQUAL(dups, 0);
	free(ids);
}

/* A lost spool.gen still yields fresh IDs: the floor comes from the records. */
static void test_ids_without_gen_file(void)
{
	char dir[300], gen[400];
	struct spool_config c;
	base_cfg(&c, new_dir(dir, sizeof(dir)));
	struct spool *sp;
	uint64_t old_id = 0, new_id = 0;
	for (int start = 0; start < 3; start++) {
		CU_ASSERT_EQUAL_FATAL(spool_open(&c, 0, NULL, NULL, NULL, &sp), 0);
		CU_ASSERT_EQUAL(put_msg(sp, 0, 10, 1, &old_id), 0);
		spool_close(sp);
	}
	snprintf(gen, sizeof(gen), "%s/spool.gen", dir);
	CU_ASSERT_EQUAL(unlink(gen), 0);
	CU_ASSERT_EQUAL_FATAL(spool_open(&c, 0, NULL, NULL, NULL, &sp), 0);
	CU_ASSERT_EQUAL(put_msg(sp, 1, 10, 1, &new_id), 0);
	spool_close(sp);
	CU_ASSERT_TRUE(new_id >> 36 > old_id >> 36);
	CU_ASSERT_NOT_EQUAL(new_id, spool_id_make(1, 0, 1));
}

static void test_dir_lock(void)
{
	char dir[300];
	new_dir(dir, sizeof(dir));
	mkdir(dir, 0700);
	int fd = spool_dir_lock(dir);
	CU_ASSERT_TRUE_FATAL(fd >= 0);
	CU_ASSERT_EQUAL(spool_dir_lock(dir), -EWOULDBLOCK);
	spool_dir_unlock(fd);
	fd = spool_dir_lock(dir);
	CU_ASSERT_TRUE(fd >= 0);
	spool_dir_unlock(fd);
}

static void test_recovery_100k(void)
{
	char dir[300];
	struct spool_config c;
	base_cfg(&c, new_dir(dir, sizeof(dir)));
	c.segment_bytes = 8 << 20;
	struct spool *sp;
	CU_ASSERT_EQUAL_FATAL(spool_open(&c, 0, NULL, NULL, NULL, &sp), 0);
	int n = 100000, done = 0;
	struct spool_completion out[256];
	for (int i = 0; i < n; i++) {
		CU_ASSERT_EQUAL_FATAL(put_msg(sp, (uint64_t)i, 200, 1, NULL), 0);
		done += spool_poll(sp, mx_now_us(), out, 256);
	}
	spool_sync(sp);
	done += spool_poll(sp, mx_now_us(), out, 256);
	while (done < n) {
		int k = spool_poll(sp, mx_now_us(), out, 256);
		if (k == 0)
			break;
		done += k;
	}
	CU_ASSERT_EQUAL(done, n);
	spool_close(sp);
	struct spool_recovery_stats rs;
	CU_ASSERT_EQUAL_FATAL(spool_open(&c, 0, NULL, NULL, &rs, &sp), 0);
	CU_ASSERT_EQUAL(rs.messages, (uint64_t)n);
	CU_ASSERT_EQUAL(rs.torn_tails, 0);
	CU_ASSERT_EQUAL(rs.quarantined, 0);
	fprintf(stderr, "  (recovered %llu messages from %llu segments in %llu ms)\n",
		(unsigned long long)rs.messages, (unsigned long long)rs.segments,
		(unsigned long long)rs.elapsed_us / 1000);
	CU_ASSERT_TRUE(rs.elapsed_us < 10000000);
	spool_close(sp);
}

/* A write cut short by RLIMIT_FSIZE: the rest is retried, then fails; the batch is undone. */
static void test_short_write_fails_batch(void)
{
	char dir[300];
	struct spool_config c;
	base_cfg(&c, new_dir(dir, sizeof(dir)));
	struct spool *sp;
	CU_ASSERT_EQUAL_FATAL(spool_open(&c, 0, NULL, NULL, NULL, &sp), 0);
	uint64_t good;
	CU_ASSERT_EQUAL(put_msg(sp, 0, 1000, 1, &good), 0);
	int status[4] = {1, 1, 1, 1};
	CU_ASSERT_EQUAL(wait_completions(sp, 1, status, 4), 1);
	CU_ASSERT_EQUAL(status[0], 0);
	struct spool_location loc;
	CU_ASSERT_EQUAL_FATAL(spool_locate(sp, good, &loc), 0);
	struct rlimit old, lim;
	getrlimit(RLIMIT_FSIZE, &old);
	lim = old;
	lim.rlim_cur = loc.offset + loc.length + 3000;
	signal(SIGXFSZ, SIG_IGN);
	CU_ASSERT_EQUAL_FATAL(setrlimit(RLIMIT_FSIZE, &lim), 0);
	uint64_t bad;
	CU_ASSERT_EQUAL(put_msg(sp, 1, 8000, 1, &bad), 0);
	CU_ASSERT_EQUAL(wait_completions(sp, 1, status, 4), 1);
	setrlimit(RLIMIT_FSIZE, &old);
	CU_ASSERT_EQUAL(status[1], -EIO);
	struct spool_stats st;
	spool_get_stats(sp, &st);
	CU_ASSERT_EQUAL(st.short_writes, 1);
	CU_ASSERT_EQUAL(st.io_errors, 1);
	CU_ASSERT_EQUAL(spool_locate(sp, bad, &loc), -ENOENT);
	/* the spool goes on where the good data ends */
	uint64_t after;
	CU_ASSERT_EQUAL(put_msg(sp, 2, 500, 1, &after), 0);
	CU_ASSERT_EQUAL(wait_completions(sp, 1, status, 4), 1);
	CU_ASSERT_EQUAL(status[2], 0);
	spool_close(sp);
	struct seen *s = calloc(1, sizeof(*s));
	struct spool_recovery_stats rs;
	CU_ASSERT_EQUAL_FATAL(spool_open(&c, 0, on_recovered, s, &rs, &sp), 0);
	CU_ASSERT_EQUAL(rs.messages, 2);
	CU_ASSERT_EQUAL(rs.torn_tails, 0);
	CU_ASSERT_TRUE(seen_index(s, good) >= 0 && seen_index(s, after) >= 0);
	CU_ASSERT_TRUE(body_ok(sp, after, 2, 500));
	spool_close(sp);
	free(s);
}

/* A record from a newer program stops recovery without changing anything. */
static void test_newer_version_refused(void)
{
	char dir[300], seg[400];
	struct spool_config c;
	base_cfg(&c, new_dir(dir, sizeof(dir)));
	struct spool *sp;
	CU_ASSERT_EQUAL_FATAL(spool_open(&c, 0, NULL, NULL, NULL, &sp), 0);
	CU_ASSERT_EQUAL(put_msg(sp, 0, 100, 1, NULL), 0);
	CU_ASSERT_EQUAL(put_msg(sp, 1, 100, 1, NULL), 0);
	spool_close(sp);
	uint64_t *seqs;
	size_t nseg;
	CU_ASSERT_EQUAL_FATAL(spool_list_segments(dir, 0, &seqs, &nseg), 0);
	CU_ASSERT_EQUAL_FATAL(nseg, 1);
	uint64_t seq = seqs[0];
	free(seqs);
	spool_seg_path(seg, sizeof(seg), dir, 0, seq);
	size_t len;
	uint8_t *img = read_file(seg, &len);
	CU_ASSERT_PTR_NOT_NULL_FATAL(img);
	/* find the second message record */
	struct spool_rec_hdr h;
	size_t off = 0, second = 0;
	for (int msgs = 0; off < len && msgs < 2;) {
		CU_ASSERT_EQUAL_FATAL(spool_rec_check_seg(img + off, len - off, seq, &h), 0);
		if (h.type == SPOOL_REC_MSG && ++msgs == 2)
			second = off;
		off += SPOOL_REC_HDR + h.length;
	}
	CU_ASSERT_FATAL(second > 0);
	img[second + 4] = SPOOL_REC_VERSION + 1;
	spool_rec_reseal(img + second, seq);
	write_file(seg, img, len);
	CU_ASSERT_EQUAL(spool_open(&c, 0, NULL, NULL, NULL, &sp), -EPROTONOSUPPORT);
	size_t len2;
	uint8_t *img2 = read_file(seg, &len2);
	CU_ASSERT_EQUAL(len2, len);
	CU_ASSERT_EQUAL(memcmp(img, img2, len), 0);
	free(img);
	free(img2);
}

static int run_cmd(const char *cmd, char *out, size_t cap)
{
	FILE *f = popen(cmd, "r");
	if (f == NULL)
		return -1;
	size_t n = fread(out, 1, cap - 1, f);
	out[n] = '\0';
	int st = pclose(f);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* tools/mxspool against a real spool (MXSPOOL names the binary; set by meson). */
static void test_mxspool_tool(void)
{
	const char *bin = getenv("MXSPOOL");
	if (bin == NULL) {
		fprintf(stderr, "  (skipped: MXSPOOL not set)\n");
		return;
	}
	char dir[300], cmd[1024], out[8192], ids[3][SPOOL_ID_LEN + 1];
	struct spool_config c;
	base_cfg(&c, new_dir(dir, sizeof(dir)));
	struct spool *sp;
	CU_ASSERT_EQUAL_FATAL(spool_open(&c, 2, NULL, NULL, NULL, &sp), 0);
	uint64_t id[3];
	for (int i = 0; i < 3; i++) {
		env_flags = i == 2 ? SPOOL_ENV_F_8BITMIME | SPOOL_ENV_F_SMTPUTF8 : 0;
		CU_ASSERT_EQUAL(put_msg(sp, (uint64_t)i, 50, 2, &id[i]), 0);
		spool_id_format(id[i], ids[i]);
	}
	env_flags = 0;
	CU_ASSERT_EQUAL(wait_completions(sp, 3, NULL, 0), 3);
	CU_ASSERT_EQUAL(spool_mark_deferred(sp, id[0], 1, 4000000000LL, "421 later"), 0);
	CU_ASSERT_EQUAL(spool_mark_delivered(sp, id[1], 0), 0);
	spool_close(sp);

	snprintf(cmd, sizeof(cmd), "%s %s count", bin, dir);
	CU_ASSERT_EQUAL(run_cmd(cmd, out, sizeof(out)), 0);
	CU_ASSERT_PTR_NOT_NULL(strstr(out, "messages 3\nqueued 4\ndeferred 1\ndelivered 1\n"));
	snprintf(cmd, sizeof(cmd), "%s %s list", bin, dir);
	CU_ASSERT_EQUAL(run_cmd(cmd, out, sizeof(out)), 0);
	CU_ASSERT_PTR_NOT_NULL(strstr(out, ids[2]));
	snprintf(cmd, sizeof(cmd), "%s %s show %s", bin, dir, ids[0]);
	CU_ASSERT_EQUAL(run_cmd(cmd, out, sizeof(out)), 0);
	CU_ASSERT_PTR_NOT_NULL(strstr(out, "state=deferred retry=4000000000 \"421 later\""));
	CU_ASSERT_PTR_NOT_NULL(strstr(out, "body: 50 bytes\n\nabcdefghij"));
	CU_ASSERT_PTR_NOT_NULL(strstr(out, "\nbody-type: 7BIT\nsmtputf8: no\n"));
	snprintf(cmd, sizeof(cmd), "%s %s show %s", bin, dir, ids[2]);
	CU_ASSERT_EQUAL(run_cmd(cmd, out, sizeof(out)), 0);
	CU_ASSERT_PTR_NOT_NULL(strstr(out, "\nbody-type: 8BITMIME\nsmtputf8: yes\n"));
	snprintf(cmd, sizeof(cmd), "%s %s requeue %s", bin, dir, ids[0]);
	CU_ASSERT_EQUAL(run_cmd(cmd, out, sizeof(out)), 0);
	snprintf(cmd, sizeof(cmd), "%s %s show %s", bin, dir, ids[0]);
	CU_ASSERT_EQUAL(run_cmd(cmd, out, sizeof(out)), 0);
	CU_ASSERT_PTR_NOT_NULL(strstr(out, "state=deferred retry=0 "));
	snprintf(cmd, sizeof(cmd), "%s %s delete %s", bin, dir, ids[1]);
	CU_ASSERT_EQUAL(run_cmd(cmd, out, sizeof(out)), 0);
	snprintf(cmd, sizeof(cmd), "%s %s count", bin, dir);
	CU_ASSERT_EQUAL(run_cmd(cmd, out, sizeof(out)), 0);
	CU_ASSERT_PTR_NOT_NULL(strstr(out, "messages 2\n"));
	snprintf(cmd, sizeof(cmd), "%s %s show %s 2>&1", bin, dir, ids[1]);
	CU_ASSERT_EQUAL(run_cmd(cmd, out, sizeof(out)), 1);
	/* a running relay (the lock) makes it refuse to write */
	int lock = spool_dir_lock(dir);
	CU_ASSERT_TRUE_FATAL(lock >= 0);
	snprintf(cmd, sizeof(cmd), "%s %s delete %s 2>&1", bin, dir, ids[2]);
	CU_ASSERT_EQUAL(run_cmd(cmd, out, sizeof(out)), 1);
	CU_ASSERT_PTR_NOT_NULL(strstr(out, "relay is running"));
	spool_dir_unlock(lock);
	snprintf(cmd, sizeof(cmd), "%s %s show NOTANID 2>&1", bin, dir);
	CU_ASSERT_EQUAL(run_cmd(cmd, out, sizeof(out)), 2);
}

static void test_config_from_ini(void)
{
	struct cfg_file *cf;
	char err[256];
	const char *text =
		"[spool]\ndir = /var/spool/mx\ndurability = none\ncommit_window = 500us\n"
		"max_size = 1G\nsegment_size = 16M\ncommit_depth = 3\n";
	CU_ASSERT_EQUAL_FATAL(cfg_parse_string(text, "t.conf", &cf, err, sizeof(err)), 0);
	struct spool_config c;
	spool_config_defaults(&c);
	CU_ASSERT_EQUAL(spool_config_from_cfg(cf, 4, &c, err, sizeof(err)), 0);
	CU_ASSERT_STRING_EQUAL(c.dir, "/var/spool/mx");
	CU_ASSERT_EQUAL(c.durability, SPOOL_DURABILITY_NONE);
	CU_ASSERT_EQUAL(c.commit_window_us, 500);
	CU_ASSERT_EQUAL(c.max_bytes, (1ull << 30) / 4);
	CU_ASSERT_EQUAL(c.segment_bytes, 16 << 20);
	CU_ASSERT_EQUAL(c.commit_depth, 3);
	cfg_free(cf);
	CU_ASSERT_EQUAL_FATAL(
		cfg_parse_string("[spool]\ncommit_depth = 5\n", "t.conf", &cf, err, sizeof(err)),
		0);
	spool_config_defaults(&c);
	CU_ASSERT_EQUAL(c.commit_depth, 3);
	CU_ASSERT_EQUAL(spool_config_from_cfg(cf, 1, &c, err, sizeof(err)), -EINVAL);
	CU_ASSERT_STRING_EQUAL(err, "t.conf:2: [spool] commit_depth: expected 1 to 4 batches");
	cfg_free(cf);
	CU_ASSERT_EQUAL_FATAL(
		cfg_parse_string("[spool]\ndurability = maybe\n", "t.conf", &cf, err, sizeof(err)),
		0);
	spool_config_defaults(&c);
	CU_ASSERT_EQUAL(spool_config_from_cfg(cf, 1, &c, err, sizeof(err)), -EINVAL);
	CU_ASSERT_STRING_EQUAL(err, "t.conf:2: [spool] durability: expected fsync or none");
	cfg_free(cf);
	/* io_cpus: worker (default), main, or a CPU list */
	spool_config_defaults(&c);
	CU_ASSERT_EQUAL(c.io_cpus, SPOOL_IO_CPUS_WORKER);
	CU_ASSERT_EQUAL_FATAL(
		cfg_parse_string("[spool]\nio_cpus = 0,2-3\n", "t.conf", &cf, err, sizeof(err)), 0);
	CU_ASSERT_EQUAL(spool_config_from_cfg(cf, 1, &c, err, sizeof(err)), 0);
	CU_ASSERT_EQUAL(c.io_cpus, SPOOL_IO_CPUS_LIST);
	CU_ASSERT_EQUAL(CPU_COUNT(&c.io_cpu_set), 3);
	CU_ASSERT(CPU_ISSET(0, &c.io_cpu_set) && CPU_ISSET(2, &c.io_cpu_set) &&
		  CPU_ISSET(3, &c.io_cpu_set));
	cfg_free(cf);
	CU_ASSERT_EQUAL_FATAL(
		cfg_parse_string("[spool]\nio_cpus = main\n", "t.conf", &cf, err, sizeof(err)), 0);
	CU_ASSERT_EQUAL(spool_config_from_cfg(cf, 1, &c, err, sizeof(err)), 0);
	CU_ASSERT_EQUAL(c.io_cpus, SPOOL_IO_CPUS_MAIN);
	cfg_free(cf);
	const char *bad[] = {"3-1", "1,", "x", "", "0-", "99999"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char text[64];
		snprintf(text, sizeof(text), "[spool]\n\nio_cpus = %s\n", bad[i]);
		CU_ASSERT_EQUAL_FATAL(cfg_parse_string(text, "t.conf", &cf, err, sizeof(err)), 0);
		spool_config_defaults(&c);
		CU_ASSERT_EQUAL(spool_config_from_cfg(cf, 1, &c, err, sizeof(err)), -EINVAL);
		CU_ASSERT_STRING_EQUAL(err, "t.conf:3: [spool] io_cpus: expected main, worker or a "
					    "CPU list such as 0,2-3");
		cfg_free(cf);
	}
}

static CU_TestInfo codec_tests[] = {
	{"crc32c", test_crc32c},
	{"crc32c_interleaved", test_crc32c_interleaved},
	{"ids", test_ids},
	{"envelope_round_trip", test_envelope_round_trip},
	{"record_round_trip", test_record_round_trip},
	{"every_bit_flip_detected", test_every_bit_flip_detected},
	{"config_from_ini", test_config_from_ini},
	CU_TEST_INFO_NULL,
};

static CU_TestInfo spool_tests[] = {
	{"group_commit_one_fdatasync", test_group_commit_one_fdatasync},
	{"busy_commit_window", test_busy_commit_window},
	{"io_cpus", test_io_cpus},
	{"window_flushes_by_size", test_window_flushes_by_size},
	{"body read from a kept batch buffer, then from the file", test_body_read_from_memory},
	{"prepend_before_commit", test_prepend},
	{"durability_none", test_durability_none},
	{"limits", test_limits},
	{"recovery_with_state", test_recovery_with_state},
	{"recovery_returns_flags", test_recovery_returns_flags},
	{"old_version_segment_read", test_old_version_segment_read},
	{"torn_tail_every_length", test_torn_tail_every_length},
	{"torn_tail_every_length_v2", test_torn_tail_every_length_v2},
	{"torn_tail_every_length_v1", test_torn_tail_every_length_v1},
	{"recycled_stale_tail_every_length", test_recycled_stale_tail_every_length},
	{"recycled_v2_tail_every_length", test_recycled_v2_tail_every_length},
	{"recycled_v1_tail_every_length", test_recycled_v1_tail_every_length},
	{"zeroed_tail_every_length", test_zeroed_tail_every_length},
	{"recycle_through_api", test_recycle_through_api},
	{"spare_zero_chunks", test_spare_zero_chunks},
	{"quarantine_corrupt_segment", test_quarantine_corrupt_segment},
	{"active_segment_damage", test_active_segment_damage},
	{"recover_append_crash_recover", test_recover_append_crash_recover},
	{"reclaim", test_reclaim},
	{"compaction_keeps_state", test_compaction_keeps_state},
	{"spool_full_by_size", test_spool_full_by_size},
	{"disk_full_tmpfs", test_disk_full_tmpfs},
	{"id_uniqueness_million", test_id_uniqueness_million},
	{"ids_without_gen_file", test_ids_without_gen_file},
	{"dir_lock", test_dir_lock},
	{"recovery_100k", test_recovery_100k},
	{"short_write_fails_batch", test_short_write_fails_batch},
	{"newer_version_refused", test_newer_version_refused},
	{"mxspool_tool", test_mxspool_tool},
	CU_TEST_INFO_NULL,
};

static CU_SuiteInfo suites[] = {
	{"spool_codec", NULL, NULL, NULL, NULL, codec_tests},
	{"spool", suite_init, suite_clean, NULL, NULL, spool_tests},
	CU_SUITE_INFO_NULL,
};

int main(void)
{
	return mx_test_run(suites);
}
