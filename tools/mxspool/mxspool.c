/*
 * mxspool - inspect and edit a stopped relay's spool directory.
 *
 *	mxspool DIR list            one line per queued message
 *	mxspool DIR show ID         envelope, recipient states, then the body
 *	mxspool DIR count           messages and recipients by state
 *	mxspool DIR delete ID       append "finished" (the message is dropped)
 *	mxspool DIR requeue ID      make deferred recipients due now
 *
 * Reading commands scan the segments read-only.  delete and requeue append
 * state records through lib/spool, and refuse while a relay holds
 * DIR/lock.  Exit status: 0 done, 1 error or not found, 2 usage.
 */
#include "spool.h"
#include "core.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char *state_name[] = {"queued", "deferred", "delivered", "bounced"};

struct ctx {
	const char *dir;
	uint64_t want; /* show: the ID asked for */
	bool found;
	uint64_t msgs;
	uint64_t by_state[4];
	int rc;
};

static void fmt_time(int64_t us, char *out, size_t len)
{
	time_t t = (time_t)(us / 1000000);
	struct tm tm;
	gmtime_r(&t, &tm);
	strftime(out, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static void on_list(void *arg, const struct spool_recovered *m)
{
	struct ctx *c = arg;
	char when[32];
	uint32_t pending = 0;
	for (uint32_t i = 0; i < m->env->rcpt_count; i++)
		pending += m->rcpt[i].state <= 1;
	fmt_time(m->env->arrival_us, when, sizeof(when));
	printf("%s  %s  %8u  %u/%u  <%s> -> <%s>%s\n", m->id_str, when, m->loc.body_len, pending,
	       m->env->rcpt_count, m->env->sender, m->env->rcpts[0].addr,
	       m->env->rcpt_count > 1 ? " ..." : "");
	c->msgs++;
}

static void on_count(void *arg, const struct spool_recovered *m)
{
	struct ctx *c = arg;
	c->msgs++;
	for (uint32_t i = 0; i < m->env->rcpt_count; i++)
		if (m->rcpt[i].state < 4)
			c->by_state[m->rcpt[i].state]++;
}

static int dump_body(const char *dir, const struct spool_location *loc)
{
	char path[4200];
	snprintf(path, sizeof(path), "%s/c%u/%016" PRIx64 ".seg", dir, loc->core, loc->segment);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	char buf[65536];
	uint64_t off = loc->offset + loc->body_offset, left = loc->body_len;
	while (left > 0) {
		ssize_t n = pread(fd, buf, left < sizeof(buf) ? left : sizeof(buf), (off_t)off);
		if (n <= 0) {
			close(fd);
			return n < 0 ? -errno : -EIO;
		}
		fwrite(buf, 1, (size_t)n, stdout);
		off += (uint64_t)n;
		left -= (uint64_t)n;
	}
	close(fd);
	return 0;
}

static void on_show(void *arg, const struct spool_recovered *m)
{
	struct ctx *c = arg;
	if (m->id != c->want)
		return;
	const struct spool_envelope *e = m->env;
	char when[32];
	static const char *ret[] = {"", "FULL", "HDRS"};
	c->found = true;
	fmt_time(e->arrival_us, when, sizeof(when));
	printf("id: %s\nlocation: c%u/%016" PRIx64 ".seg @%" PRIu64 " (%u bytes)\n", m->id_str,
	       m->loc.core, m->loc.segment, m->loc.offset, m->loc.length);
	printf("arrival: %s\nsender: <%s>\n", when, e->sender);
	printf("envid: %s\nret: %s\n", e->envid, ret[e->ret <= 2 ? e->ret : 0]);
	/* as it will be forwarded at MAIL FROM (RFC 6152, RFC 6531) */
	printf("body-type: %s\nsmtputf8: %s\n",
	       (e->flags & SPOOL_ENV_F_8BITMIME) ? "8BITMIME" : "7BIT",
	       (e->flags & SPOOL_ENV_F_SMTPUTF8) ? "yes" : "no");
	printf("client: %s helo %s\n", e->client_ip, e->helo);
	printf("tls: %s %s\nauth: %s\nmessage-id: %s\n", e->tls_version, e->tls_cipher,
	       e->auth_user, e->message_id);
	for (uint32_t i = 0; i < e->rcpt_count; i++) {
		const struct spool_rcpt_status *s = &m->rcpt[i];
		printf("rcpt %u: <%s> notify=0x%x orcpt=%s state=%s", i, e->rcpts[i].addr,
		       e->rcpts[i].notify, e->rcpts[i].orcpt ? e->rcpts[i].orcpt : "-",
		       state_name[s->state < 4 ? s->state : 0]);
		if (s->state == SPOOL_RCPT_DEFERRED)
			printf(" retry=%" PRId64, s->next_retry_s);
		if (s->text)
			printf(" \"%s\"", s->text);
		printf("\n");
	}
	printf("body: %u bytes\n\n", m->loc.body_len);
	fflush(stdout);
	c->rc = dump_body(c->dir, &m->loc);
	fflush(stdout);
}

static int each_core(const char *dir, spool_recover_fn fn, struct ctx *c, int only_core)
{
	uint64_t cores[4];
	int rc = spool_dir_cores(dir, cores);
	if (rc < 0) {
		fprintf(stderr, "mxspool: %s: %s\n", dir, strerror(-rc));
		return rc;
	}
	for (unsigned core = 0; core <= SPOOL_MAX_CORE; core++) {
		if (!(cores[core / 64] & (1ull << (core % 64))))
			continue;
		if (only_core >= 0 && core != (unsigned)only_core)
			continue;
		struct spool_recovery_stats rs;
		rc = spool_scan(dir, core, fn, c, &rs);
		if (rc < 0) {
			fprintf(stderr, "mxspool: core %u: %s\n", core, strerror(-rc));
			return rc;
		}
		if (rs.torn_tails || rs.quarantined)
			fprintf(stderr,
				"mxspool: core %u: %" PRIu64 " torn tails, %" PRIu64
				" corrupt segments (left as they are)\n",
				core, rs.torn_tails, rs.quarantined);
	}
	return 0;
}

static int modify(const char *dir, const char *cmd, uint64_t id)
{
	int lock = spool_dir_lock(dir);
	if (lock == -EWOULDBLOCK) {
		fprintf(stderr, "mxspool: %s/lock is held: the relay is running; stop it first\n",
			dir);
		return 1;
	}
	if (lock < 0) {
		fprintf(stderr, "mxspool: lock %s: %s\n", dir, strerror(-lock));
		return 1;
	}
	struct spool_config cfg;
	spool_config_defaults(&cfg);
	cfg.dir = dir;
	struct spool *sp;
	int rc = spool_open(&cfg, spool_id_core(id), NULL, NULL, NULL, &sp);
	if (rc < 0) {
		fprintf(stderr, "mxspool: open spool: %s\n", strerror(-rc));
		spool_dir_unlock(lock);
		return 1;
	}
	rc = strcmp(cmd, "delete") == 0 ? spool_msg_finish(sp, id) : spool_requeue(sp, id);
	if (rc == 0)
		rc = spool_sync(sp);
	spool_close(sp);
	spool_dir_unlock(lock);
	char s[SPOOL_ID_LEN + 1];
	spool_id_format(id, s);
	if (rc < 0) {
		fprintf(stderr, "mxspool: %s %s: %s\n", cmd, s,
			rc == -ENOENT ? "no such message" : strerror(-rc));
		return 1;
	}
	printf("%s: %s\n", s, strcmp(cmd, "delete") == 0 ? "deleted" : "requeued");
	return 0;
}

static int usage(void)
{
	fprintf(stderr, "usage: mxspool DIR list|count\n"
			"       mxspool DIR show|delete|requeue ID\n");
	return 2;
}

int main(int argc, char **argv)
{
	if (argc < 3)
		return usage();
	const char *dir = argv[1], *cmd = argv[2];
	struct ctx c = {.dir = dir};
	mx_log_set_level(MX_LOG_WARN);
	if (strcmp(cmd, "list") == 0 && argc == 3)
		return each_core(dir, on_list, &c, -1) < 0 ? 1 : 0;
	if (strcmp(cmd, "count") == 0 && argc == 3) {
		if (each_core(dir, on_count, &c, -1) < 0)
			return 1;
		printf("messages %" PRIu64 "\nqueued %" PRIu64 "\ndeferred %" PRIu64
		       "\ndelivered %" PRIu64 "\nbounced %" PRIu64 "\n",
		       c.msgs, c.by_state[0], c.by_state[1], c.by_state[2], c.by_state[3]);
		return 0;
	}
	if (argc != 4)
		return usage();
	uint64_t id;
	if (spool_id_parse(argv[3], &id) < 0) {
		fprintf(stderr, "mxspool: %s: not a message ID (12 base32hex characters)\n",
			argv[3]);
		return 2;
	}
	if (strcmp(cmd, "show") == 0) {
		c.want = id;
		if (each_core(dir, on_show, &c, (int)spool_id_core(id)) < 0)
			return 1;
		if (!c.found) {
			fprintf(stderr, "mxspool: %s: no such message\n", argv[3]);
			return 1;
		}
		if (c.rc < 0)
			fprintf(stderr, "mxspool: reading the body: %s\n", strerror(-c.rc));
		return c.rc < 0 ? 1 : 0;
	}
	if (strcmp(cmd, "delete") == 0 || strcmp(cmd, "requeue") == 0)
		return modify(dir, cmd, id);
	return usage();
}
