/*
 * deliver.c - the owner-core delivery loop of one worker.
 *
 * lib/queue decides (RESOLVE, CONNECT, SEND, CLOSE); this file executes
 * those decisions and reports back:
 *
 *   RESOLVE  -> resolve_mail() on this worker's resolver (resolve.c: lib/dns
 *               over lib/net, the cache shared by all workers); no [dns]
 *               resolvers: tempfail.
 *   CONNECT  -> tcp_connect to each address of the route in turn; on
 *               on_connected an smtp_client reads the greeting, EHLO and,
 *               when offered, STARTTLS (lib/tls client, per-core session
 *               cache); its "ready" is queue_conn_up(), every address
 *               failing is queue_conn_down() (the destination backs off).
 *   SEND     -> smtp_client_send_message() with the body read from the
 *               spool (spool_read_body: a synchronous pread on this core,
 *               acceptable for now); message_done -> queue_txn_result().
 *               A session whose server pipelines carries up to [queue]
 *               pipeline_depth transactions at once (struct dtxn, in order;
 *               queue_conn_depth tells the queue), and the queue's SEND and
 *               CLOSE actions carry the session (queue_session_set_user).
 *   CLOSE    -> QUIT, then close TCP.
 *   queue_ops -> spool_mark_delivered / deferred / bounced, and
 *               spool_msg_finish once every descriptor of a message is done;
 *               a DSN is written to the spool as a new message from <>
 *               (odd spool cookie: smtpd_poll hands its completion back
 *               through deliver_commit_done) and then queued like any other.
 *
 * Owner cores.  Each destination has one owner worker (queue_dest_owner: a
 * hash of its name), so its connection limits, pooled sessions and backoff
 * live in one place.  The worker whose spool holds a message (its spool
 * core, spool_id_core) splits it and hands each descriptor to the owner
 * over the owner's mailbox, an MP/SC rte_ring.  Whatever must change the
 * spool comes back the same way: recipient marks, the DSNs to inject (the
 * spool core writes them, before the original's finish record, as in the
 * single-core case) and "descriptor done".  The owner reads a foreign
 * body straight from the segment file (spool_open_record checks it is
 * still the message's record; one compacted away costs a deferral and a
 * LOCATE/RELOC round trip for the new place).  A full ring keeps the
 * message in an ordered per-target outbox (counted), never drops it.  A
 * sleeping owner is woken (net_stack_wake) when it has not looked at its
 * mailbox for a while.  At shutdown deliver_quiesce() aborts the sessions,
 * flushes the outboxes, waits for every worker at a barrier and applies
 * the marks that arrived, so the spool cores write them before closing.
 *
 * Nothing acknowledged is lost: a descriptor the queue cannot take stays on
 * a retry list; whatever is not delivered when the relay stops stays in the
 * spool and is recovered at the next start.  Sessions are freed only from
 * deliver_poll(), never from inside a callback of the object being freed.
 */
#include "deliver.h"
#include "queue.h"
#include "resolve.h"

#include <errno.h>
#include <stdatomic.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <rte_errno.h>
#include <rte_ring.h>

#define ACTIONS_PER_POLL 64
#define CONNECT_TIMEOUT_US (30ull * 1000000)
#define OUT_MAX (256u * 1024) /* client bytes TCP/TLS could not take yet */
#define GROUP_BUCKETS 4096u   /* multi-destination messages being delivered */
#define BACKLOG_MAX 1000000u  /* descriptors waiting for room in the queue (or recovered) */
#define BACKLOG_PER_POLL 1024u
#define TLS_CACHE_CAPACITY 1024u
#define REPLY_TEXT_MAX 600
#define DSN_PENDING_MAX 4096u /* DSNs between spool commit and completion */
#define DELIVER_MAX_WORKERS 64
#define MBOX_SIZE 16384u	 /* messages waiting in a worker's mailbox */
#define MBOX_BURST 256u		 /* taken per poll */
#define MBOX_WAKE_AFTER_US 50u	 /* a mailbox not looked at for this long: wake its worker */
#define QUIESCE_WAIT_US 2000000u /* shutdown barrier bound */
/*
 * Session timers (connect and SMTP deadlines, all in seconds) are checked by
 * a scan of every session this often, not on every poll turn: with
 * thousands of pooled sessions a scan per turn was two thirds of the
 * worker.  Sessions with work now (next address, reap, held input) are
 * kicked onto a list and looked at on the next turn.
 */
#define SESSION_SCAN_US 10000u
/*
 * ... and no more often than the soonest deadline the last scan saw, or one
 * that can have been set since (a deadline set at time t is at least t plus
 * the shortest client timeout, timer_floor_us), or this long: a pool of a
 * thousand idle sessions, scanned every SESSION_SCAN_US, cost a cache miss
 * or two per session 100 times a second.  The bound covers a deadline that
 * moves earlier without progress (a state with a shorter timeout): it is
 * then found at most this late, against timeouts of 20 s and more.
 */
#define SESSION_SCAN_MAX_US 1000000u
/*
 * While transactions are out and one was sent or answered this recently,
 * deliver_poll() reports work, so that the worker keeps polling instead of
 * backing off to a sleep: the idle back-off sleeps up to 1 ms when the port
 * has no RX interrupts (net_memif here), and a pooled session carries one
 * transaction (or a few, pipelined) at a time, so every sleep through a reply
 * is added to the round trip that bounds each session's rate.  A slow or
 * silent MX lets the core sleep after this long.
 */
#define TXN_SPIN_US 500u

/*
 * One transaction of a session, from its SEND to its message_done.  A
 * session carries up to [queue] pipeline_depth of them when the server
 * pipelines (lib/queue's queue_conn_depth); they are answered in order.
 */
#define DTXN_RCPTS_SMALL 4 /* recipients kept inside struct dtxn (no allocation) */

struct dtxn {
	struct dsess *s;
	const struct queue_txn *txn;
	struct smtp_client_msg msg;
	struct smtp_client_rcpt *rcpts; /* rcpt_small, or malloc'd for more */
	struct smtp_client_rcpt rcpt_small[DTXN_RCPTS_SMALL];
	int body_fd; /* another core's segment holding the body, or -1 */
};

struct dsess {
	struct deliver *dl;
	uint64_t handle; /* queue session */
	struct tcp_conn *tc;
	struct tls_conn *tls;
	struct smtp_client *cl;
	struct dns_mail_route route; /* copy: hosts to try in order */
	unsigned host_i, addr_i;
	uint16_t port;
	uint32_t addr;	    /* address being tried / used */
	bool connected;	    /* TCP on_connected ran for the current attempt */
	bool up;	    /* queue_conn_up() done */
	bool qdone;	    /* the queue forgot the handle (conn_down reported, or CLOSE) */
	bool try_next;	    /* the current attempt failed before up: next address */
	bool reap;	    /* free at the next poll */
	bool input_held;    /* TLS took less than offered */
	bool close_pending; /* a CLOSE: tell the queue when the connection is gone */
	bool kicked;	    /* on dl->kicked: needs a look at the next poll */
	struct dsess *kick_next;
	uint64_t connect_deadline_us;
	char reason[640]; /* why the last attempt failed */
	/* the transactions in flight, oldest first: tx[tx_head], ... ntx of them */
	struct dtxn tx[QUEUE_PIPELINE_MAX];
	unsigned tx_head, ntx;
	uint8_t *out;
	size_t out_len;
	enum tls_policy pol; /* this destination's ([tls_policy], else [tls] outbound) */
	bool implicit_tls;   /* smarthost on 465: TLS before the greeting */
	bool started;	     /* smtp_client_start() ran */
	const struct smtp_client_conf *cc;
	struct dsess *next, *prev;
};

/* What workers send each other (see the file comment). */
enum dmsg_type {
	DM_DESC = 1,  /* spool core -> owner: a descriptor to queue */
	DM_DELIVERED, /* owner -> spool core: recipient marks */
	DM_DEFERRED,
	DM_BOUNCED,
	DM_DONE,   /* owner -> spool core: a descriptor of the message is done */
	DM_DSN,	   /* owner -> spool core: inject this DSN (rcpt NUL data) */
	DM_LOCATE, /* owner -> spool core: where is the message now? */
	DM_RELOC,  /* spool core -> owner: here (or status < 0) */
};

struct dmsg {
	struct dmsg *next; /* in an outbox while the target's ring is full */
	uint8_t type;
	uint16_t from;
	uint64_t msg_id;
	union {
		struct {
			struct queue_desc *d;
			int64_t not_before_us;
		} desc;
		struct {
			uint32_t rcpt_index;
			int64_t next_retry_s;
		} mark;
		uint16_t group_count;
		struct {
			uint64_t token; /* the owner's descriptor, opaque to the spool core */
			int status;
			struct spool_location loc;
		} loc;
	} u;
	size_t len;  /* of data */
	char data[]; /* DM_DEFERRED, DM_BOUNCED: text; DM_DSN: rcpt NUL message */
};

/* A descriptor whose body moved (compaction): its new place was asked for. */
struct reloc_wait {
	struct queue_desc *d;
	uint64_t msg_id;
	struct reloc_wait *next;
};

struct group {
	uint64_t id;
	uint32_t left;
	struct group *next;
};

struct backlog {
	struct queue_desc *d;
	int64_t not_before_us;
	struct backlog *next;
};

struct deliver_stats {
	uint64_t accepted, recovered, split_failures, submit_deferred, backlog;
	uint64_t handoff_out, handoff_in, mbox_posted, mbox_received, mbox_full, outbox;
	uint64_t remote_marks, remote_moved, relocated, remote_read_failures, quiesce_dropped;
	uint64_t connects, connect_failures, tcp_refused, tcp_timeouts, sessions_open;
	uint64_t session_scans; /* walks of every session's timers (sessions_run) */
	uint64_t resolve_tempfail, mark_failures, finish, group_missing, out_full;
	uint64_t dsn_injected, dsn_inject_failures, dsn_limit_hits, dsn_unknown_commits;
};

struct deliver {
	const struct relay_config *conf;
	struct net_stack *st;
	unsigned worker, n_workers;
	struct spool *spool;
	struct queue *q;
	struct queue_config qc;
	/* [smarthost with AUTH][enum tls_policy]: the client settings a session starts with */
	struct smtp_client_conf cc[2][3];
	struct smtp_client_stats cstats;
	struct tls_client_ctx *tls;
	struct tls_session_cache *tls_cache;
	struct tls_stats tls_stats;
	struct deliver_stats stats;
	struct dsess *sessions;
	struct group *groups[GROUP_BUCKETS];
	struct backlog *backlog, **backlog_tail;
	uint64_t *finish_ids; /* recovered messages with nothing left to do */
	size_t finish_n, finish_cap;
	struct resolve *dns; /* NULL: no [dns] resolvers */
	struct dsn_pending *dsn_pending;
	unsigned dsn_pending_n;
	uint64_t dsn_seq;
	struct dmsg *outbox[DELIVER_MAX_WORKERS], **outbox_tail[DELIVER_MAX_WORKERS];
	uint64_t wake_mask; /* mailboxes posted to in this turn */
	struct reloc_wait *relocs;
	struct dsess *kicked;	 /* sessions with something to do now (sess_kick) */
	uint64_t next_scan_us;	 /* every session's timers are checked then (sessions_run) */
	uint64_t timer_floor_us; /* the shortest session timeout: connect or SMTP client */
	uint32_t txns_out;	 /* transactions sent, their replies awaited */
	uint64_t last_txn_io_us; /* a transaction was sent or answered (mx_now_us) */
	bool txn_io;		 /* ... since the last turn: last_txn_io_us = that turn's time */
	uint64_t now_us;	 /* this turn's mx_now_us (clock_turn) */
	int64_t wall_off_us;	 /* wall clock minus now_us */
	uint64_t wall_sync_us;	 /* take wall_off_us again at this now_us */
	bool destroying, quiesced;
};

/* Shared by the workers: their mailboxes and stacks (for wake-ups). */
static struct rte_ring *mbox[DELIVER_MAX_WORKERS];
static struct net_stack *_Atomic mbox_stack[DELIVER_MAX_WORKERS];
static _Atomic uint64_t mbox_seen_us[DELIVER_MAX_WORKERS];
static unsigned mbox_workers;
static atomic_uint quiesce_count;

static int64_t clock_wall_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/*
 * The worker's time, read once per poll turn (deliver_poll's now_us) rather
 * than at every callback: a clock read costs more than a message's queue
 * work on a VM without a TSC vDSO clock.  Wall-clock microseconds (what
 * lib/queue and the spool keep) are that monotonic time plus an offset
 * taken again every WALL_SYNC_US, so a step of the system clock is followed
 * within that time.  Callbacks between two turns see the turn's time: a
 * few microseconds late, well inside the queue's and the client's
 * millisecond-to-second timers.
 */
#define WALL_SYNC_US 100000u

static uint64_t mono_us(const struct deliver *dl)
{
	return dl->now_us;
}

static int64_t wall_us_of(const struct deliver *dl)
{
	return (int64_t)dl->now_us + dl->wall_off_us;
}

/* The turn's time for lib/smtp's client (smtp_client_conf.now_us), per worker thread. */
static __thread uint64_t turn_now_us;

static uint64_t client_now_us(void)
{
	return turn_now_us ? turn_now_us : mx_now_us();
}

/* A new turn's time; the wall-clock offset again when due. */
static void clock_turn(struct deliver *dl, uint64_t now_us)
{
	dl->now_us = now_us;
	turn_now_us = now_us;
	if (now_us >= dl->wall_sync_us) {
		dl->wall_off_us = clock_wall_us() - (int64_t)now_us;
		dl->wall_sync_us = now_us + WALL_SYNC_US;
	}
}

static const struct tcp_conn_ops sess_tcp_ops;
static const struct tls_conn_ops sess_tls_ops;
static const struct smtp_client_cb sess_smtp_cb;

/* ---- message groups: a message split over several destinations ----------------- */

static struct group **group_slot(struct deliver *dl, uint64_t id)
{
	struct group **g = &dl->groups[(id ^ (id >> 29)) % GROUP_BUCKETS];
	while (*g != NULL && (*g)->id != id)
		g = &(*g)->next;
	return g;
}

static void finish_msg(struct deliver *dl, uint64_t id)
{
	int rc = spool_msg_finish(dl->spool, id);
	if (rc != 0) {
		dl->stats.mark_failures++;
		MX_WARN("deliver: finish %012" PRIx64 ": %s", id, strerror(-rc));
		return;
	}
	dl->stats.finish++;
}

static int queue_message(struct deliver *dl, uint64_t id, const struct spool_envelope *env,
			 const struct spool_rcpt_status *st, const struct spool_location *loc,
			 uint32_t flags);

/* ---- mailboxes between workers ------------------------------------------------------- */

/* Is message id in this worker's spool?  (One worker: always.) */
static bool spool_local(const struct deliver *dl, uint64_t id)
{
	return dl->n_workers <= 1 || spool_id_core(id) == dl->worker;
}

static struct dmsg *dmsg_new(uint8_t type, uint64_t msg_id, size_t len)
{
	struct dmsg *m = malloc(sizeof(*m) + len);
	if (m == NULL)
		return NULL;
	memset(m, 0, sizeof(*m));
	m->type = type;
	m->msg_id = msg_id;
	m->len = len;
	return m;
}

/* Send m to worker `to`, in order after anything still in its outbox. */
static void post(struct deliver *dl, unsigned to, struct dmsg *m)
{
	m->from = (uint16_t)dl->worker;
	m->next = NULL;
	dl->stats.mbox_posted++;
	if (dl->outbox[to] == NULL && rte_ring_mp_enqueue(mbox[to], m) == 0) {
		dl->wake_mask |= 1ull << to;
		return;
	}
	if (dl->outbox[to] == NULL)
		dl->outbox_tail[to] = &dl->outbox[to];
	*dl->outbox_tail[to] = m;
	dl->outbox_tail[to] = &m->next;
	dl->stats.mbox_full++;
	dl->stats.outbox++;
}

static unsigned outbox_flush(struct deliver *dl)
{
	unsigned n = 0;
	for (unsigned to = 0; to < mbox_workers; to++) {
		while (dl->outbox[to] != NULL &&
		       rte_ring_mp_enqueue(mbox[to], dl->outbox[to]) == 0) {
			dl->outbox[to] = dl->outbox[to]->next;
			dl->stats.outbox--;
			dl->wake_mask |= 1ull << to;
			n++;
		}
	}
	return n;
}

/* Wake the workers posted to that have not looked at their mailbox lately (asleep). */
static void wake_peers(struct deliver *dl)
{
	uint64_t now = mono_us(dl);
	for (unsigned to = 0; dl->wake_mask != 0 && to < mbox_workers; to++) {
		if (!(dl->wake_mask & (1ull << to)))
			continue;
		dl->wake_mask &= ~(1ull << to);
		struct net_stack *st = atomic_load_explicit(&mbox_stack[to], memory_order_acquire);
		uint64_t seen = atomic_load_explicit(&mbox_seen_us[to], memory_order_relaxed);
		if (st != NULL && to != dl->worker && now - seen > MBOX_WAKE_AFTER_US)
			net_stack_wake(st);
	}
}

/* A mark for another core's message: text may be NULL. */
static void post_mark(struct deliver *dl, uint8_t type, const struct queue_desc *d, uint32_t index,
		      int64_t next_retry_s, const char *text)
{
	size_t tl = text ? strlen(text) + 1 : 0;
	struct dmsg *m = dmsg_new(type, d->msg_id, tl);
	if (m == NULL) {
		/* Not written: the recipient is still queued in the spool; a restart retries it. */
		dl->stats.mark_failures++;
		return;
	}
	m->u.mark.rcpt_index = index;
	m->u.mark.next_retry_s = next_retry_s;
	if (tl)
		memcpy(m->data, text, tl);
	dl->stats.remote_marks++;
	post(dl, spool_id_core(d->msg_id), m);
}

static void reloc_forget(struct deliver *dl, const struct queue_desc *d)
{
	for (struct reloc_wait **w = &dl->relocs; *w != NULL; w = &(*w)->next)
		if ((*w)->d == d) {
			struct reloc_wait *gone = *w;
			*w = gone->next;
			free(gone);
			return;
		}
}

/* The body of d is not where d->loc says: ask its spool core. */
static void reloc_ask(struct deliver *dl, struct queue_desc *d)
{
	for (struct reloc_wait *w = dl->relocs; w != NULL; w = w->next)
		if (w->d == d)
			return; /* asked already */
	struct reloc_wait *w = malloc(sizeof(*w));
	struct dmsg *m = dmsg_new(DM_LOCATE, d->msg_id, 0);
	if (w == NULL || m == NULL) {
		free(w);
		free(m);
		return; /* the next attempt asks again */
	}
	*w = (struct reloc_wait){.d = d, .msg_id = d->msg_id, .next = dl->relocs};
	dl->relocs = w;
	m->u.loc.token = (uint64_t)(uintptr_t)d;
	post(dl, spool_id_core(d->msg_id), m);
}

static void reloc_apply(struct deliver *dl, const struct dmsg *m)
{
	for (struct reloc_wait **w = &dl->relocs; *w != NULL; w = &(*w)->next) {
		struct reloc_wait *r = *w;
		if ((uint64_t)(uintptr_t)r->d != m->u.loc.token || r->msg_id != m->msg_id)
			continue;
		if (m->u.loc.status == 0) {
			r->d->loc =
				m->u.loc.loc; /* the queue's copy: the next attempt reads there */
			dl->stats.relocated++;
		}
		*w = r->next;
		free(r);
		return;
	}
}

/* ---- queue callbacks ---------------------------------------------------------------- */

/*
 * Write a recipient's new state (DM_DELIVERED, DM_DEFERRED or DM_BOUNCED) to
 * this worker's spool; a failure is counted and logged (the recipient stays
 * queued in the spool, so a restart tries it again).
 */
static void mark_local(struct deliver *dl, uint8_t type, uint64_t id, uint32_t index,
		       int64_t next_retry_s, const char *text, unsigned from)
{
	int rc = type == DM_DELIVERED ? spool_mark_delivered(dl->spool, id, index)
		 : type == DM_DEFERRED
			 ? spool_mark_deferred(dl->spool, id, index, next_retry_s, text)
			 : spool_mark_bounced(dl->spool, id, index, text);
	if (rc == 0)
		return;
	char id_str[SPOOL_ID_LEN + 1];
	spool_id_format(id, id_str);
	dl->stats.mark_failures++;
	MX_WARN("%s: recipient %u: state from worker %u not written: %s", id_str, index, from,
		strerror(-rc));
}

/* A recipient's new state (index: in the message's envelope) into the spool that holds it. */
static void mark(struct deliver *dl, uint8_t type, const struct queue_desc *d, uint32_t index,
		 int64_t next_retry_s, const char *text)
{
	if (spool_local(dl, d->msg_id))
		mark_local(dl, type, d->msg_id, index, next_retry_s, text, dl->worker);
	else
		post_mark(dl, type, d, index, next_retry_s, text);
}

static void q_delivered(void *ctx, const struct queue_desc *d, uint32_t index)
{
	mark(ctx, DM_DELIVERED, d, index, 0, NULL);
}

static void q_deferred(void *ctx, const struct queue_desc *d, uint32_t index, int64_t next_retry_s,
		       const char *reply)
{
	mark(ctx, DM_DEFERRED, d, index, next_retry_s, reply);
}

static void q_bounced(void *ctx, const struct queue_desc *d, uint32_t index, const char *reason)
{
	mark(ctx, DM_BOUNCED, d, index, 0, reason);
}

static long q_read_body(void *ctx, const struct queue_desc *d, uint64_t off, void *buf, size_t len)
{
	struct deliver *dl = ctx;
	if (spool_local(dl, d->msg_id))
		return spool_read_body(dl->spool, d->msg_id, off, buf, len);
	/* A DSN quoting another core's message (the transaction path keeps its fd open). */
	int fd = spool_open_record(dl->conf->spool.dir, &d->loc, d->msg_id);
	if (fd < 0) {
		dl->stats.remote_read_failures++;
		reloc_ask(dl, (struct queue_desc *)d);
		return fd;
	}
	long n = spool_pread_body(fd, &d->loc, off, buf, len);
	close(fd);
	return n;
}

/*
 * A DSN being made durable: its envelope waits here until spool_poll()
 * reports the commit (through smtpd_poll -> deliver_commit_done), then the
 * DSN is queued like any message.  The original's finish record is appended
 * after the DSN's message record in the same log, so the DSN is on disk
 * whenever the original's finish is.
 */
struct dsn_pending {
	uint64_t cookie;
	char *rcpt;
	struct dsn_pending *next;
};

/* Write a DSN for message orig_id (log name) to rcpt into this worker's spool. */
static int dsn_inject(struct deliver *dl, const char *orig_id, const char *rcpt, const char *data,
		      size_t len)
{
	struct spool_msg *m = NULL;
	struct dsn_pending *p;
	int rc;

	if (dl->dsn_pending_n >= DSN_PENDING_MAX) {
		dl->stats.dsn_limit_hits++;
		MX_WARN("%s: DSN to <%s> not queued: %u DSN commits pending", orig_id, rcpt,
			DSN_PENDING_MAX);
		return -ENOBUFS;
	}
	p = calloc(1, sizeof(*p));
	if (p == NULL || (p->rcpt = strdup(rcpt)) == NULL) {
		free(p);
		return -ENOMEM;
	}
	rc = spool_msg_begin(dl->spool, &m);
	if (rc == 0)
		rc = spool_msg_append(m, data, len);
	if (rc == 0) {
		struct spool_rcpt r = {.addr = rcpt};
		struct spool_envelope env = {.sender = "",
					     .helo = dl->qc.hostname,
					     .client_ip = "127.0.0.1",
					     .arrival_us = wall_us_of(dl),
					     .rcpts = &r,
					     .rcpt_count = 1};
		p->cookie = (++dl->dsn_seq << 1) | 1; /* smtpd's cookies are pointers: even */
		rc = spool_msg_commit(m, &env, p->cookie);
		m = NULL; /* released by commit, success or not */
	}
	if (m != NULL)
		spool_msg_abort(m);
	if (rc != 0) {
		dl->stats.dsn_inject_failures++;
		MX_WARN("%s: DSN to <%s> not queued: %s", orig_id, rcpt, strerror(-rc));
		free(p->rcpt);
		free(p);
		return rc;
	}
	p->next = dl->dsn_pending;
	dl->dsn_pending = p;
	dl->dsn_pending_n++;
	return 0;
}

static int q_dsn_send(void *ctx, const struct queue_desc *d, const char *rcpt, const char *data,
		      size_t len)
{
	struct deliver *dl = ctx;
	if (spool_local(dl, d->msg_id))
		return dsn_inject(dl, d->id_str, rcpt, data, len);
	/* The original's spool core writes it, ahead of the original's finish record. */
	size_t rl = strlen(rcpt) + 1;
	struct dmsg *m = dmsg_new(DM_DSN, d->msg_id, rl + len);
	if (m == NULL)
		return -ENOMEM;
	memcpy(m->data, rcpt, rl);
	memcpy(m->data + rl, data, len);
	post(dl, spool_id_core(d->msg_id), m);
	return 0;
}

bool deliver_commit_done(struct deliver *dl, const struct spool_completion *c)
{
	if (dl == NULL || !(c->cookie & 1))
		return false;
	struct dsn_pending **pp = &dl->dsn_pending;
	while (*pp != NULL && (*pp)->cookie != c->cookie)
		pp = &(*pp)->next;
	struct dsn_pending *p = *pp;
	if (p == NULL) {
		dl->stats.dsn_unknown_commits++;
		return true;
	}
	*pp = p->next;
	dl->dsn_pending_n--;
	if (c->status != 0) {
		dl->stats.dsn_inject_failures++;
		MX_ERR("%s: DSN to <%s> could not be written: %s", c->id_str, p->rcpt,
		       strerror(-c->status));
	} else {
		struct spool_location loc;
		struct spool_rcpt r = {.addr = p->rcpt};
		struct spool_envelope env = {
			.sender = "", .arrival_us = wall_us_of(dl), .rcpts = &r, .rcpt_count = 1};
		int rc = spool_locate(dl->spool, c->id, &loc);
		if (rc == 0)
			rc = queue_message(dl, c->id, &env, NULL, &loc, QUEUE_DESC_F_DSN);
		if (rc < 0) {
			dl->stats.split_failures++;
			MX_WARN("%s: DSN cannot be queued now (%s); it stays in the spool",
				c->id_str, strerror(-rc));
		} else {
			dl->stats.dsn_injected++;
			MX_INFO("%s: from=<>, size=%u, nrcpt=1 (queued: DSN to <%s>)", c->id_str,
				loc.body_len, p->rcpt);
		}
	}
	free(p->rcpt);
	free(p);
	return true;
}

/* One descriptor of message id (of group_count) is done: finish the message after the last. */
static void group_done(struct deliver *dl, uint64_t id, uint16_t group_count)
{
	if (group_count <= 1) {
		finish_msg(dl, id);
		return;
	}
	struct group **g = group_slot(dl, id);
	if (*g == NULL) {
		/* Not tracked (no memory at split): recovery finishes it at the next start. */
		dl->stats.group_missing++;
		return;
	}
	if (--(*g)->left > 0)
		return;
	struct group *gone = *g;
	*g = gone->next;
	free(gone);
	finish_msg(dl, id);
}

static void q_desc_done(void *ctx, const struct queue_desc *d)
{
	struct deliver *dl = ctx;
	if (dl->relocs != NULL)
		reloc_forget(dl, d);
	if (spool_local(dl, d->msg_id)) {
		group_done(dl, d->msg_id, d->group_count);
		return;
	}
	struct dmsg *m = dmsg_new(DM_DONE, d->msg_id, 0);
	if (m == NULL) {
		/* Not finished: recovery at the next start sees every recipient final. */
		dl->stats.mark_failures++;
		return;
	}
	m->u.group_count = d->group_count;
	post(dl, spool_id_core(d->msg_id), m);
}

static const struct queue_ops deliver_queue_ops = {
	.delivered = q_delivered,
	.deferred = q_deferred,
	.bounced = q_bounced,
	.read_body = q_read_body,
	.dsn_send = q_dsn_send,
	.desc_done = q_desc_done,
};

/* ---- handing messages to the queue ---------------------------------------------------- */

static void backlog_add(struct deliver *dl, struct queue_desc *d, int64_t not_before_us)
{
	struct backlog *b = malloc(sizeof(*b));
	if (b == NULL || dl->stats.backlog >= BACKLOG_MAX) {
		/* Still in the spool: the next start recovers it. */
		free(b);
		MX_WARN("%s: delivery backlog full; the message waits in the spool until restart",
			d->id_str);
		queue_desc_free(d);
		dl->stats.split_failures++;
		return;
	}
	b->d = d;
	b->not_before_us = not_before_us;
	b->next = NULL;
	*dl->backlog_tail = b;
	dl->backlog_tail = &b->next;
	dl->stats.backlog++;
}

/* The queue will never take d: it stays in the spool (recovered at the next start). */
static void submit_refused(struct deliver *dl, struct queue_desc *d, int rc)
{
	if (dl->relocs != NULL)
		reloc_forget(dl, d);
	dl->stats.split_failures++;
	MX_WARN("%s: the queue refused it for %s (%s); it stays in the spool", d->id_str, d->dest,
		strerror(-rc));
	queue_desc_free(d);
}

/* Queue d on this worker (its owner). */
static void submit_local(struct deliver *dl, struct queue_desc *d, int64_t not_before_us)
{
	if (dl->spool == NULL) {
		/* Recovery, inside spool_open: a submit may bounce at once, which
		 * writes to the spool.  Submit from the first deliver_poll. */
		backlog_add(dl, d, not_before_us);
		return;
	}
	int rc = queue_submit(dl->q, d, not_before_us, wall_us_of(dl));
	if (rc == 0)
		return;
	if (rc != -ENOBUFS) {
		submit_refused(dl, d, rc);
		return;
	}
	dl->stats.submit_deferred++;
	backlog_add(dl, d, not_before_us);
}

/* Hand d to its destination's owner worker (this one, or over the owner's mailbox). */
static void submit(struct deliver *dl, struct queue_desc *d, int64_t not_before_us)
{
	unsigned owner = dl->n_workers > 1 ? queue_dest_owner(d->dest, dl->n_workers) : dl->worker;
	if (owner == dl->worker || owner >= mbox_workers || mbox[owner] == NULL) {
		submit_local(dl, d, not_before_us);
		return;
	}
	struct dmsg *m = dmsg_new(DM_DESC, d->msg_id, 0);
	if (m == NULL) {
		submit_local(dl, d, not_before_us); /* delivered from here instead */
		return;
	}
	m->u.desc.d = d;
	m->u.desc.not_before_us = not_before_us;
	dl->stats.handoff_out++;
	post(dl, owner, m);
}

static unsigned backlog_run(struct deliver *dl)
{
	unsigned n = 0;
	while (dl->backlog != NULL && n < BACKLOG_PER_POLL) {
		struct backlog *b = dl->backlog;
		int rc = queue_submit(dl->q, b->d, b->not_before_us, wall_us_of(dl));
		if (rc == -ENOBUFS)
			break; /* still full: later */
		if (rc != 0)
			submit_refused(dl, b->d, rc);
		dl->backlog = b->next;
		if (dl->backlog == NULL)
			dl->backlog_tail = &dl->backlog;
		dl->stats.backlog--;
		free(b);
		n++;
	}
	return n;
}

/*
 * Split a durable message into descriptors and queue them.  st: per-recipient
 * states (recovery) or NULL.  Returns the number of descriptors, or -errno.
 */
static int queue_message(struct deliver *dl, uint64_t id, const struct spool_envelope *env,
			 const struct spool_rcpt_status *st, const struct spool_location *loc,
			 uint32_t flags)
{
	unsigned max = env->rcpt_count > 0 ? env->rcpt_count : 1;
	struct queue_desc **ds = calloc(max, sizeof(*ds));
	if (ds == NULL)
		return -ENOMEM;
	int n = queue_split(&dl->qc, id, env, st, loc, loc->body_len, ds, max);
	if (n < 0) {
		free(ds);
		return n;
	}
	if (n > 1) {
		struct group **g = group_slot(dl, id);
		if (*g == NULL && (*g = calloc(1, sizeof(**g))) != NULL)
			(*g)->id = id;
		if (*g != NULL)
			(*g)->left = (uint32_t)n;
	}
	for (int i = 0; i < n; i++) {
		int64_t not_before = 0;
		ds[i]->flags |= flags;
		/* Recovered deferred recipients wait for their retry time. */
		for (uint32_t r = 0; st != NULL && r < ds[i]->rcpt_count; r++) {
			uint32_t k = ds[i]->rcpts[r].index;
			if (k < env->rcpt_count && st[k].state == SPOOL_RCPT_DEFERRED &&
			    (not_before == 0 || st[k].next_retry_s * 1000000 < not_before))
				not_before = st[k].next_retry_s * 1000000;
		}
		submit(dl, ds[i], not_before);
	}
	free(ds);
	return n;
}

void deliver_accepted(struct deliver *dl, uint64_t id, const struct smtp_envelope *env)
{
	struct spool_location loc;
	char id_str[SPOOL_ID_LEN + 1];
	int rc;

	if (dl == NULL)
		return;
	spool_id_format(id, id_str);
	dl->stats.accepted++;
	rc = spool_locate(dl->spool, id, &loc);
	if (rc != 0 || env == NULL || env->rcpt_count == 0) {
		dl->stats.split_failures++;
		MX_WARN("%s: cannot queue for delivery (%s); it stays in the spool", id_str,
			rc ? strerror(-rc) : "no envelope");
		return;
	}
	struct spool_rcpt *rcpts = calloc(env->rcpt_count, sizeof(*rcpts));
	if (rcpts == NULL) {
		dl->stats.split_failures++;
		MX_WARN("%s: out of memory queueing; it stays in the spool", id_str);
		return;
	}
	/* The same envelope smtpd committed (smtp_msg_end), rebuilt from the session. */
	for (size_t i = 0; i < env->rcpt_count; i++)
		rcpts[i] = (struct spool_rcpt){.addr = env->rcpts[i].addr.text,
					       .orcpt = env->rcpts[i].orcpt[0] ? env->rcpts[i].orcpt
									       : NULL,
					       .notify = env->rcpts[i].notify};
	struct spool_envelope se = {
		.sender = env->mail_from.text,
		.envid = env->envid[0] ? env->envid : NULL,
		.ret = (uint8_t)(env->ret == SMTP_RET_FULL   ? SPOOL_RET_FULL
				 : env->ret == SMTP_RET_HDRS ? SPOOL_RET_HDRS
							     : SPOOL_RET_NONE),
		.helo = env->helo,
		.arrival_us = wall_us_of(dl),
		.rcpts = rcpts,
		.rcpt_count = (uint32_t)env->rcpt_count,
	};
	uint32_t flags = (env->body == SMTP_BODY_8BITMIME ? QUEUE_DESC_F_8BITMIME : 0) |
			 (env->smtputf8 ? QUEUE_DESC_F_SMTPUTF8 : 0);
	rc = queue_message(dl, id, &se, NULL, &loc, flags);
	free(rcpts);
	if (rc < 0) {
		dl->stats.split_failures++;
		MX_WARN("%s: cannot queue for delivery: %s; it stays in the spool", id_str,
			strerror(-rc));
	}
}

void deliver_recovered(struct deliver *dl, const struct spool_recovered *m)
{
	if (dl == NULL)
		return;
	dl->stats.recovered++;
	/* BODY=8BITMIME and SMTPUTF8 as the spool kept them (format version 3) */
	uint32_t flags = QUEUE_DESC_F_RECOVERED |
			 (m->env->flags & SPOOL_ENV_F_8BITMIME ? QUEUE_DESC_F_8BITMIME : 0) |
			 (m->env->flags & SPOOL_ENV_F_SMTPUTF8 ? QUEUE_DESC_F_SMTPUTF8 : 0);
	int rc = queue_message(dl, m->id, m->env, m->rcpt, &m->loc, flags);
	if (rc < 0) {
		dl->stats.split_failures++;
		MX_WARN("%s: recovered but cannot be queued: %s", m->id_str, strerror(-rc));
		return;
	}
	if (rc == 0) {
		/* Every recipient done, only the finish record was lost: finish it once the
		 * spool is open (we are inside spool_open). */
		if (dl->finish_n == dl->finish_cap) {
			size_t cap = dl->finish_cap ? dl->finish_cap * 2 : 64;
			uint64_t *p = realloc(dl->finish_ids, cap * sizeof(*p));
			if (p == NULL)
				return; /* recovered again next time */
			dl->finish_ids = p;
			dl->finish_cap = cap;
		}
		dl->finish_ids[dl->finish_n++] = m->id;
	}
}

void deliver_attach_spool(struct deliver *dl, struct spool *sp)
{
	dl->spool = sp;
	for (size_t i = 0; i < dl->finish_n; i++)
		finish_msg(dl, dl->finish_ids[i]);
	free(dl->finish_ids);
	dl->finish_ids = NULL;
	dl->finish_n = dl->finish_cap = 0;
}

/* ---- this worker's mailbox -------------------------------------------------------------- */

static void inbox_one(struct deliver *dl, struct dmsg *m)
{
	dl->stats.mbox_received++;
	switch (m->type) {
	case DM_DESC:
		dl->stats.handoff_in++;
		if (dl->quiesced) {
			/* Shutting down: it stays in its spool, recovered at the next start. */
			queue_desc_free(m->u.desc.d);
			dl->stats.quiesce_dropped++;
			break;
		}
		submit_local(dl, m->u.desc.d, m->u.desc.not_before_us);
		break;
	case DM_DELIVERED:
	case DM_DEFERRED:
	case DM_BOUNCED:
		mark_local(dl, m->type, m->msg_id, m->u.mark.rcpt_index, m->u.mark.next_retry_s,
			   m->len ? m->data : NULL, m->from);
		break;
	case DM_DONE:
		group_done(dl, m->msg_id, m->u.group_count);
		break;
	case DM_DSN: {
		char id_str[SPOOL_ID_LEN + 1];
		size_t rl = strnlen(m->data, m->len);
		spool_id_format(m->msg_id, id_str);
		if (rl < m->len)
			dsn_inject(dl, id_str, m->data, m->data + rl + 1, m->len - rl - 1);
		break;
	}
	case DM_LOCATE: {
		struct dmsg *r = dmsg_new(DM_RELOC, m->msg_id, 0);
		if (r == NULL)
			break; /* the owner asks again at its next failure */
		r->u.loc.token = m->u.loc.token;
		r->u.loc.status = spool_locate(dl->spool, m->msg_id, &r->u.loc.loc);
		post(dl, m->from, r);
		break;
	}
	case DM_RELOC:
		reloc_apply(dl, m);
		break;
	}
	free(m);
}

static unsigned inbox_run(struct deliver *dl)
{
	void *objs[MBOX_BURST];
	if (mbox[dl->worker] == NULL)
		return 0;
	atomic_store_explicit(&mbox_seen_us[dl->worker], mono_us(dl), memory_order_relaxed);
	unsigned n = rte_ring_sc_dequeue_burst(mbox[dl->worker], objs, MBOX_BURST, NULL);
	for (unsigned i = 0; i < n; i++)
		inbox_one(dl, objs[i]);
	return n;
}

/* ---- session transport ------------------------------------------------------------------ */

static size_t transport_write(struct dsess *s, const uint8_t *p, size_t n)
{
	if (s->tc == NULL)
		return n; /* gone: the client learns it from smtp_client_abort */
	if (s->tls != NULL && tls_conn_handshake_done(s->tls)) {
		ssize_t k = tls_conn_write(s->tls, p, n);
		return k < 0 ? n : (size_t)k;
	}
	ssize_t k = tcp_send(s->tc, p, n);
	return k < 0 ? n : (size_t)k;
}

static void flush_out(struct dsess *s)
{
	if (s->out_len == 0)
		return;
	size_t k = transport_write(s, s->out, s->out_len);
	memmove(s->out, s->out + k, s->out_len - k);
	s->out_len -= k;
	if (s->out_len == 0 && s->cl != NULL)
		smtp_client_writable(s->cl);
}

static size_t c_send(void *user, const uint8_t *p, size_t n)
{
	struct dsess *s = user;
	size_t k = s->out_len == 0 ? transport_write(s, p, n) : 0;
	if (k == n)
		return n;
	/* Keep a bounded amount ourselves, the client waits for smtp_client_writable. */
	if (s->out == NULL && (s->out = malloc(OUT_MAX)) == NULL)
		return k;
	size_t room = OUT_MAX - s->out_len, take = n - k < room ? n - k : room;
	if (take < n - k)
		s->dl->stats.out_full++;
	memcpy(s->out + s->out_len, p + k, take);
	s->out_len += take;
	return k + take;
}

static void sess_abort_tcp(struct dsess *s)
{
	if (s->tc != NULL)
		tcp_abort(s->tc); /* on_closed runs now and clears s->tc */
}

/* s has something to do on the next poll turn (see SESSION_SCAN_US). */
static void sess_kick(struct dsess *s)
{
	if (s->kicked)
		return;
	s->kicked = true;
	s->kick_next = s->dl->kicked;
	s->dl->kicked = s;
}

/* Report the session gone to the queue, once. */
static void sess_down(struct dsess *s, const char *reason)
{
	if (s->qdone || s->dl->destroying)
		return;
	s->qdone = true;
	queue_conn_down(s->dl->q, s->handle, reason, wall_us_of(s->dl));
}

/* ---- TCP -------------------------------------------------------------------------------- */

static void t_connected(struct tcp_conn *tc, void *user)
{
	struct dsess *s = user;
	(void)tc;
	s->connected = true;
	if (s->cl == NULL &&
	    smtp_client_new(s->cc, &sess_smtp_cb, s, &s->dl->cstats, &s->cl) != 0) {
		snprintf(s->reason, sizeof(s->reason), "out of memory");
		sess_abort_tcp(s);
		return;
	}
	if (!s->implicit_tls) {
		s->started = true;
		smtp_client_start(s->cl, false);
		return;
	}
	/* RFC 8314: the handshake first; the client starts on it (l_done). */
	const char *host = s->route.host_count > s->host_i ? s->route.hosts[s->host_i].name : "";
	int rc = tls_client_conn_new(s->dl->tls, s->pol, host, s->port, s->dl->tls_cache,
				     &sess_tls_ops, s, &s->dl->tls_stats, &s->tls);
	if (rc == 0)
		rc = tls_conn_start(s->tls);
	if (rc != 0) {
		snprintf(s->reason, sizeof(s->reason), "cannot start TLS: %s", strerror(-rc));
		sess_abort_tcp(s);
	}
}

static size_t t_data(struct tcp_conn *tc, void *user, const uint8_t *data, size_t len)
{
	struct dsess *s = user;
	(void)tc;
	if (s->cl == NULL)
		return len;
	if (s->tls != NULL) {
		ssize_t k = tls_conn_input(s->tls, data, len);
		if (k < 0)
			return len;
		if ((size_t)k < len) {
			s->input_held = true;
			sess_kick(s);
		}
		return (size_t)k;
	}
	smtp_client_input(s->cl, data, len);
	return len;
}

static void t_writable(struct tcp_conn *tc, void *user)
{
	struct dsess *s = user;
	(void)tc;
	if (s->tls != NULL)
		tls_conn_flush(s->tls);
	flush_out(s);
	if (s->cl != NULL && s->out_len == 0)
		smtp_client_writable(s->cl);
}

static void t_peer_closed(struct tcp_conn *tc, void *user)
{
	struct dsess *s = user;
	(void)tc;
	if (s->cl != NULL && !smtp_client_is_dead(s->cl))
		smtp_client_abort(s->cl, "connection closed by the server");
	if (s->tc != NULL)
		tcp_close(s->tc);
}

static void t_closed(struct tcp_conn *tc, void *user, enum tcp_close_reason why)
{
	struct dsess *s = user;
	(void)tc;
	s->tc = NULL;
	if (!s->connected) {
		if (why == TCP_CLOSE_REFUSED)
			s->dl->stats.tcp_refused++;
		else if (why == TCP_CLOSE_TIMEOUT)
			s->dl->stats.tcp_timeouts++;
		snprintf(s->reason, sizeof(s->reason), "connect to [%u.%u.%u.%u]:%u: %s",
			 s->addr >> 24, (s->addr >> 16) & 255, (s->addr >> 8) & 255, s->addr & 255,
			 s->port,
			 why == TCP_CLOSE_REFUSED   ? "Connection refused"
			 : why == TCP_CLOSE_TIMEOUT ? "Connection timed out"
						    : "connection failed");
	}
	if (s->cl != NULL && !smtp_client_is_dead(s->cl))
		smtp_client_abort(s->cl, "lost connection"); /* -> failed */
	if (!s->up && !s->qdone)
		s->try_next = true; /* the next address, from deliver_poll */
	else
		s->reap = true;
	sess_kick(s);
}

static const struct tcp_conn_ops sess_tcp_ops = {
	.on_connected = t_connected,
	.on_data = t_data,
	.on_writable = t_writable,
	.on_peer_closed = t_peer_closed,
	.on_closed = t_closed,
};

/* ---- TLS (STARTTLS) ------------------------------------------------------------------- */

static size_t l_cipher_out(void *user, const uint8_t *data, size_t len)
{
	struct dsess *s = user;
	if (s->tc == NULL)
		return len;
	ssize_t k = tcp_send(s->tc, data, len);
	return k < 0 ? len : (size_t)k;
}

static size_t l_plain_in(void *user, const uint8_t *data, size_t len)
{
	struct dsess *s = user;
	if (s->cl != NULL)
		smtp_client_input(s->cl, data, len);
	return len;
}

static void l_done(void *user, const struct tls_handshake_info *info)
{
	struct dsess *s = user;
	if (s->cl == NULL)
		return;
	if (!s->qdone)
		queue_conn_tls(s->dl->q, s->handle, info->resumed);
	if (!s->started) {
		s->started = true; /* implicit TLS: now the greeting */
		smtp_client_start(s->cl, true);
	} else {
		smtp_client_tls_started(s->cl);
	}
}

static void l_error(void *user, const char *reason)
{
	struct dsess *s = user;
	snprintf(s->reason, sizeof(s->reason), "TLS: %s", reason);
	if (s->cl != NULL && !smtp_client_is_dead(s->cl))
		smtp_client_abort(s->cl, s->reason);
	if (s->tc != NULL)
		tcp_close(s->tc);
}

static void l_peer_closed(void *user)
{
	struct dsess *s = user;
	if (s->cl != NULL && !smtp_client_is_dead(s->cl))
		smtp_client_abort(s->cl, "TLS closed by the server");
	if (s->tc != NULL)
		tcp_close(s->tc);
}

static void l_writable(void *user)
{
	struct dsess *s = user;
	flush_out(s);
}

static const struct tls_conn_ops sess_tls_ops = {
	.on_ciphertext = l_cipher_out,
	.on_plaintext = l_plain_in,
	.on_handshake_done = l_done,
	.on_error = l_error,
	.on_peer_closed = l_peer_closed,
	.on_writable = l_writable,
};

/* ---- SMTP client callbacks ---------------------------------------------------------- */

static void c_starttls(void *user)
{
	struct dsess *s = user;
	struct deliver *dl = s->dl;
	const char *host = s->route.host_count > s->host_i ? s->route.hosts[s->host_i].name : "";
	int rc = -EINVAL;
	if (dl->tls != NULL)
		rc = tls_client_conn_new(dl->tls, s->pol, host, s->port, dl->tls_cache,
					 &sess_tls_ops, s, &dl->tls_stats, &s->tls);
	if (rc == 0)
		rc = tls_conn_start(s->tls);
	if (rc != 0) {
		snprintf(s->reason, sizeof(s->reason), "cannot start TLS: %s", strerror(-rc));
		smtp_client_abort(s->cl, s->reason);
		sess_abort_tcp(s);
	}
}

static void c_ready(void *user)
{
	struct dsess *s = user;
	const char *host = s->route.host_count > s->host_i ? s->route.hosts[s->host_i].name : "";
	if (s->qdone || s->dl->destroying)
		return;
	char name[DNS_NAME_TEXT_MAX];
	s->up = true;
	/* Transactions it can carry at once (the queue caps it at [queue] pipeline_depth). */
	queue_conn_depth(s->dl->q, s->handle, smtp_client_txn_depth(s->cl));
	/* A literal's host is "[a.b.c.d]": log it as Postfix does, relay=a.b.c.d[a.b.c.d]. */
	size_t len = strlen(host);
	if (len > 2 && host[0] == '[' && host[len - 1] == ']' && len - 2 < sizeof(name))
		snprintf(name, sizeof(name), "%.*s", (int)(len - 2), host + 1);
	else
		snprintf(name, sizeof(name), "%s", host[0] ? host : "unknown");
	queue_conn_up(s->dl->q, s->handle, name, s->addr, s->port, wall_us_of(s->dl));
}

/* The session's oldest transaction, or NULL. */
static struct dtxn *dtxn_oldest(struct dsess *s)
{
	return s->ntx ? &s->tx[s->tx_head] : NULL;
}

/* The oldest transaction is over (reported, or given up with the session). */
static void dtxn_pop(struct dsess *s)
{
	struct dtxn *dt = &s->tx[s->tx_head];

	s->dl->txns_out--;
	if (dt->body_fd >= 0) {
		close(dt->body_fd);
		dt->body_fd = -1;
	}
	if (dt->rcpts != dt->rcpt_small)
		free(dt->rcpts);
	dt->rcpts = NULL;
	dt->txn = NULL;
	s->tx_head = (s->tx_head + 1) % QUEUE_PIPELINE_MAX;
	s->ntx--;
}

/* Every transaction of s forgotten (the queue defers them with sess_down). */
static void dtxn_clear_all(struct dsess *s)
{
	while (s->ntx)
		dtxn_pop(s);
}

#define RESULT_SMALL 4 /* recipients whose results c_message_done keeps on the stack */

/* "250 2.0.0 text" (status left out when empty) into out, cut at REPLY_TEXT_MAX; no stdio. */
static void reply_text(char out[REPLY_TEXT_MAX], uint16_t code, const char *status,
		       const char *text)
{
	size_t o = 0, n;

	out[o++] = (char)('0' + code / 100 % 10);
	out[o++] = (char)('0' + code / 10 % 10);
	out[o++] = (char)('0' + code % 10);
	n = strnlen(status, 16);
	if (n > 0) {
		out[o++] = ' ';
		memcpy(out + o, status, n);
		o += n;
	}
	out[o++] = ' ';
	n = strlen(text);
	if (n > REPLY_TEXT_MAX - 1 - o)
		n = REPLY_TEXT_MAX - 1 - o;
	memcpy(out + o, text, n);
	out[o + n] = '\0';
}

static void c_message_done(void *user, const struct smtp_client_result *r)
{
	struct dsess *s = user;
	struct dtxn *dt = r->msg != NULL ? r->msg->user : NULL;
	const struct queue_txn *t = dt != NULL ? dt->txn : NULL;
	if (dt == NULL || dt != dtxn_oldest(s) || t == NULL) {
		/* Not the oldest: cannot happen with lib/smtp's in-order reports; the
		 * queue's results are in order too, so only dropping the session is safe. */
		dtxn_clear_all(s);
		sess_down(s, "transaction reported out of order");
		sess_abort_tcp(s);
		return;
	}
	if (s->qdone || s->dl->destroying) {
		dtxn_pop(s);
		return;
	}
	if (r->rcpt_count != t->rcpt_count) {
		/* Cannot happen with a sane client; losing the session defers the txns. */
		dtxn_clear_all(s);
		sess_down(s, "recipient count mismatch");
		sess_abort_tcp(s);
		return;
	}
	/* A message to a few recipients (the rule) needs no allocation here. */
	struct queue_rcpt_result res_small[RESULT_SMALL], *res = res_small;
	char text_small[RESULT_SMALL][REPLY_TEXT_MAX], (*text)[REPLY_TEXT_MAX] = text_small;
	if (t->rcpt_count > RESULT_SMALL) {
		res = calloc(t->rcpt_count, sizeof(*res));
		text = calloc(t->rcpt_count, REPLY_TEXT_MAX);
	}
	if (res == NULL || text == NULL) {
		if (res != res_small)
			free(res);
		if (text != text_small)
			free(text);
		dtxn_clear_all(s);
		/* Cannot report per recipient: losing the session defers the whole txn. */
		sess_down(s, "out of memory");
		sess_abort_tcp(s);
		return;
	}
	for (size_t i = 0; i < t->rcpt_count; i++) {
		const struct smtp_reply *rp = &r->rcpts[i].final;
		uint16_t code = rp->code;
		/* The outcome decides; a synthetic reply may carry code 0. */
		if (r->rcpts[i].outcome == SMTP_CLIENT_DELIVERED && (code < 200 || code > 299))
			code = 250;
		else if (r->rcpts[i].outcome == SMTP_CLIENT_DEFERRED && (code < 400 || code > 499))
			code = 451;
		else if (r->rcpts[i].outcome == SMTP_CLIENT_BOUNCED && (code < 500 || code > 599))
			code = 550;
		reply_text(text[i], code, rp->status, rp->text);
		res[i] = (struct queue_rcpt_result){
			.code = code, .status = rp->status[0] ? rp->status : NULL, .text = text[i]};
	}
	s->dl->txn_io = true;
	dtxn_pop(s); /* the queue may hand this session the next txn at once */
	queue_txn_result(s->dl->q, s->handle, res, (unsigned)r->rcpt_count, wall_us_of(s->dl));
	if (res != res_small) {
		free(res);
		free(text);
	}
}

static void c_failed(void *user, const struct smtp_reply *why)
{
	struct dsess *s = user;
	if (why != NULL && why->code != 0)
		snprintf(s->reason, sizeof(s->reason), "%u %s%s%s", why->code, why->status,
			 why->status[0] ? " " : "", why->text);
	else if (why != NULL && why->text[0])
		snprintf(s->reason, sizeof(s->reason), "%s", why->text);
	else if (!s->reason[0])
		snprintf(s->reason, sizeof(s->reason), "session failed");
	dtxn_clear_all(s); /* reported already (lib/smtp reports each before failed) */
	if (s->up)
		sess_down(s, s->reason);
	/* Not up: t_closed moves to the next address (or reports the failure). */
	if (s->tc != NULL) {
		if (s->tls != NULL)
			tls_conn_shutdown(s->tls);
		tcp_close(s->tc);
	}
}

static void c_closed(void *user)
{
	struct dsess *s = user;
	if (s->tc != NULL) {
		if (s->tls != NULL)
			tls_conn_shutdown(s->tls);
		tcp_close(s->tc);
	}
}

static const struct smtp_client_cb sess_smtp_cb = {
	.send = c_send,
	.starttls = c_starttls,
	.ready = c_ready,
	.message_done = c_message_done,
	.failed = c_failed,
	.closed = c_closed,
};

static long body_read(void *user, uint64_t off, uint8_t *buf, size_t len)
{
	struct dtxn *dt = user;
	struct dsess *s = dt->s;
	if (dt->txn == NULL || s->dl->spool == NULL)
		return -EIO;
	long n = dt->body_fd >= 0
			 ? spool_pread_body(dt->body_fd, &dt->txn->desc->loc, off, buf, len)
			 : spool_read_body(s->dl->spool, dt->txn->desc->msg_id, off, buf, len);
	return n == 0 ? -EIO : n; /* the body ended before body_len: the record is damaged */
}

/* ---- executing queue actions ------------------------------------------------------------ */

/* Start the current address of s, or advance to the next one.  false: none left. */
static bool connect_next(struct dsess *s)
{
	struct deliver *dl = s->dl;
	while (s->host_i < s->route.host_count) {
		const struct dns_mail_host *h = &s->route.hosts[s->host_i];
		if (s->addr_i >= h->addr_count || s->addr_i >= DNS_MAIL_MAX_ADDRS) {
			s->host_i++;
			s->addr_i = 0;
			continue;
		}
		s->addr = h->addrs[s->addr_i++];
		s->connected = false;
		s->try_next = false;
		s->connect_deadline_us = mono_us(dl) + CONNECT_TIMEOUT_US;
		dl->stats.connects++;
		s->tc = tcp_connect(dl->st, 0, 0, s->addr, s->port, &sess_tcp_ops, s);
		if (s->tc != NULL)
			return true;
		dl->stats.connect_failures++;
		snprintf(s->reason, sizeof(s->reason), "connect to [%u.%u.%u.%u]:%u: %s",
			 s->addr >> 24, (s->addr >> 16) & 255, (s->addr >> 8) & 255, s->addr & 255,
			 s->port, strerror(errno));
	}
	return false;
}

/* A session for a CONNECT, route copied (no queue call: see deliver_poll).  NULL: no memory. */
/* The TLS policy of a destination: its [tls_policy] rule, else [tls] outbound. */
static enum tls_policy dest_policy(const struct deliver *dl, const char *dest)
{
	switch (queue_config_tls(&dl->qc, dest)) {
	case QUEUE_TLS_NONE:
		return TLS_POLICY_NONE;
	case QUEUE_TLS_OPPORTUNISTIC:
		return TLS_POLICY_OPPORTUNISTIC;
	case QUEUE_TLS_VERIFY:
		return TLS_POLICY_VERIFY;
	case QUEUE_TLS_DEFAULT:
		break;
	}
	return dl->conf->tls_outbound;
}

static struct dsess *sess_prepare(struct deliver *dl, const struct queue_action *a)
{
	struct dsess *s = calloc(1, sizeof(*s));
	if (s == NULL)
		return NULL;
	s->dl = dl;
	for (unsigned i = 0; i < QUEUE_PIPELINE_MAX; i++) {
		s->tx[i].s = s;
		s->tx[i].body_fd = -1;
	}
	s->handle = a->session;
	s->route = *a->route;
	if (s->route.host_count > DNS_MAIL_MAX_HOSTS)
		s->route.host_count = DNS_MAIL_MAX_HOSTS;
	s->route.reason = NULL; /* points into the queue */
	s->port = a->port ? a->port : 25;
	snprintf(s->reason, sizeof(s->reason), "no address for %s", a->dest_name);
	bool smart = dl->qc.smarthost_set && strcasecmp(a->dest_name, dl->qc.smarthost_name) == 0;
	s->pol = dest_policy(dl, smart ? dl->qc.smarthost_host : a->dest_name);
	s->implicit_tls = smart && dl->qc.smarthost_implicit_tls;
	if (s->implicit_tls && s->pol == TLS_POLICY_NONE)
		s->pol = TLS_POLICY_OPPORTUNISTIC; /* port 465 is TLS or nothing */
	if (dl->tls == NULL)
		s->pol = TLS_POLICY_NONE; /* cannot happen: the context exists when needed */
	s->cc = &dl->cc[smart && dl->qc.smarthost_user[0]][s->pol];
	return s;
}

static void do_connect(struct deliver *dl, uint64_t session, struct dsess *s)
{
	if (s == NULL) {
		queue_conn_down(dl->q, session, "out of memory", wall_us_of(dl));
		return;
	}
	s->next = dl->sessions;
	if (dl->sessions != NULL)
		dl->sessions->prev = s;
	dl->sessions = s;
	queue_session_set_user(dl->q, session, s); /* its SENDs and CLOSE carry s */
	dl->stats.sessions_open++;
	if (!connect_next(s)) {
		sess_down(s, s->reason);
		s->reap = true;
		sess_kick(s);
	}
}

/*
 * The session of a SEND or CLOSE: the queue hands back what
 * queue_session_set_user() gave it.  A session is freed only after the
 * queue forgot its handle (sess_down, or CLOSE then queue_conn_closed), so
 * the pointer is live; the checks are for a session the queue is done with.
 */
static struct dsess *action_sess(const struct queue_action *a)
{
	struct dsess *s = a->user;
	if (s != NULL && s->handle == a->session && !s->qdone)
		return s;
	return NULL;
}

static void fail_txn(struct deliver *dl, uint64_t session, const struct queue_txn *t,
		     const char *why)
{
	struct queue_rcpt_result *res = calloc(t->rcpt_count ? t->rcpt_count : 1, sizeof(*res));
	if (res == NULL) {
		queue_conn_down(dl->q, session, "out of memory", wall_us_of(dl));
		return;
	}
	for (uint32_t i = 0; i < t->rcpt_count; i++)
		res[i] = (struct queue_rcpt_result){.code = 451, .status = "4.3.0", .text = why};
	queue_txn_result(dl->q, session, res, t->rcpt_count, wall_us_of(dl));
	free(res);
}

/*
 * Any address with a non-ASCII byte needs SMTPUTF8 (RFC 6531 3.4).  This is
 * also how a recovered message gets the flag back: the spool keeps the
 * addresses, not the MAIL parameters.
 */
static bool desc_non_ascii(const struct queue_desc *d)
{
	for (const unsigned char *p = (const unsigned char *)(d->sender ? d->sender : ""); *p; p++)
		if (*p >= 0x80)
			return true;
	for (uint32_t i = 0; i < d->rcpt_count; i++)
		for (const unsigned char *p = (const unsigned char *)d->rcpts[i].addr; p && *p; p++)
			if (*p >= 0x80)
				return true;
	return false;
}

/*
 * A transaction that cannot be sent: with nothing else in flight it is
 * deferred alone; behind others it cannot be (results go to the queue in the
 * order of its SENDs), so the session is given up and the queue defers all.
 */
static void send_failed(struct deliver *dl, struct dsess *s, const struct queue_action *a,
			const char *why)
{
	if (s->ntx == 0) {
		fail_txn(dl, a->session, a->txn, why);
		return;
	}
	sess_down(s, why);
	sess_abort_tcp(s);
}

static void do_send(struct deliver *dl, const struct queue_action *a)
{
	struct dsess *s = action_sess(a);
	const struct queue_txn *t = a->txn;
	const struct queue_desc *d = t->desc;
	if (s == NULL || s->cl == NULL || s->ntx >= QUEUE_PIPELINE_MAX) {
		queue_conn_down(dl->q, a->session, "session lost", wall_us_of(dl));
		if (s != NULL) {
			s->qdone = true;
			sess_abort_tcp(s);
		}
		return;
	}
	struct dtxn *dt = &s->tx[(s->tx_head + s->ntx) % QUEUE_PIPELINE_MAX];
	int fd = -1;
	if (!spool_local(dl, d->msg_id)) {
		/* Another core's message: read its record from here (see the file comment). */
		fd = spool_open_record(dl->conf->spool.dir, &d->loc, d->msg_id);
		if (fd < 0) {
			dl->stats.remote_moved++;
			reloc_ask(dl, (struct queue_desc *)d);
			send_failed(dl, s, a, "451 4.3.0 message moved in the spool; will retry");
			return;
		}
	}
	dt->rcpts = t->rcpt_count <= DTXN_RCPTS_SMALL ? dt->rcpt_small
						      : calloc(t->rcpt_count, sizeof(*dt->rcpts));
	if (dt->rcpts == NULL) {
		if (fd >= 0)
			close(fd);
		send_failed(dl, s, a, "451 4.3.0 local error sending");
		return;
	}
	for (uint32_t i = 0; i < t->rcpt_count; i++) {
		uint32_t k = t->rcpt[i];
		const struct queue_desc_rcpt *r = k < d->rcpt_count ? &d->rcpts[k] : NULL;
		dt->rcpts[i] = (struct smtp_client_rcpt){.addr = r ? r->addr : "",
							 .notify = r ? r->notify : 0,
							 .orcpt = r ? r->orcpt : NULL};
	}
	dt->body_fd = fd;
	dt->msg = (struct smtp_client_msg){
		.sender = d->sender ? d->sender : "",
		.rcpts = dt->rcpts,
		.rcpt_count = t->rcpt_count,
		.ret = d->ret == SPOOL_RET_FULL	  ? SMTP_RET_FULL
		       : d->ret == SPOOL_RET_HDRS ? SMTP_RET_HDRS
						  : SMTP_RET_NONE,
		.envid = d->envid,
		.body_8bit = (d->flags & QUEUE_DESC_F_8BITMIME) != 0,
		.smtputf8 = (d->flags & QUEUE_DESC_F_SMTPUTF8) != 0 || desc_non_ascii(d),
		.body_len = d->body_len,
		.body_read = body_read,
		.body_user = dt,
		.user = dt,
	};
	dt->txn = t;
	s->ntx++;
	dl->txns_out++;
	dl->txn_io = true;
	int rc = smtp_client_send_message(s->cl, &dt->msg);
	if (rc == 0)
		return;
	/* Refused before it was taken: no message_done will come for it. */
	if (dt->txn == NULL)
		return; /* message_done reported it (or the session failed) */
	if (s->ntx == 0 || dtxn_oldest(s) != dt) {
		/* behind others: the session goes (sess_down defers them all) */
		dtxn_clear_all(s);
		sess_down(s, rc == -EPIPE ? "session lost before sending" : "local error sending");
		sess_abort_tcp(s);
		return;
	}
	dtxn_pop(s);
	if (rc == -EPIPE) {
		sess_down(s, "session lost before sending");
		sess_abort_tcp(s);
	} else {
		fail_txn(dl, a->session, t, "451 4.3.0 local error sending");
	}
}

static void do_close(struct deliver *dl, const struct queue_action *a)
{
	struct dsess *s = action_sess(a);
	if (s == NULL) {
		queue_conn_closed(dl->q, a->session, wall_us_of(dl)); /* nothing of ours left */
		return;
	}
	s->qdone = true; /* the handle is dead */
	s->close_pending = true;
	if (s->cl != NULL && smtp_client_is_ready(s->cl))
		smtp_client_quit(s->cl); /* closed -> tcp_close -> t_closed -> reap */
	else if (s->tc != NULL)
		sess_abort_tcp(s);
	else {
		s->reap = true;
		sess_kick(s);
	}
}

struct resolve_ctx {
	struct deliver *dl;
	uint64_t dest;
};

static void resolved(void *arg, const struct dns_mail_route *route)
{
	struct resolve_ctx *rc = arg;
	struct deliver *dl = rc->dl;
	if (!dl->destroying)
		queue_route_result(dl->q, rc->dest, route, wall_us_of(dl));
	free(rc);
}

static void resolve_tempfail(struct deliver *dl, uint64_t dest, const char *why)
{
	struct dns_mail_route r = {
		.result = DNS_MAIL_TEMPFAIL, .reply = 451, .status = "4.4.3", .reason = why};
	dl->stats.resolve_tempfail++;
	queue_route_result(dl->q, dest, &r, wall_us_of(dl));
}

/*
 * RESOLVE: dns_mail_lookup (MX, implicit MX of RFC 5321 5.1, null MX of
 * RFC 7505).  A smarthost given by name without brackets (mx = false)
 * is looked up the same way: its MX if it has one, else its address.
 */
static void do_resolve(struct deliver *dl, uint64_t dest, const char *name)
{
	if (dl->dns == NULL) {
		resolve_tempfail(dl, dest, "no DNS resolver configured ([dns] resolvers)");
		return;
	}
	struct resolve_ctx *rc = malloc(sizeof(*rc));
	if (rc == NULL) {
		resolve_tempfail(dl, dest, "out of memory");
		return;
	}
	*rc = (struct resolve_ctx){.dl = dl, .dest = dest};
	int err = resolve_mail(dl->dns, name, resolved, rc);
	if (err < 0) {
		free(rc);
		resolve_tempfail(dl, dest, err == -EINVAL ? "bad domain" : "DNS lookup table full");
	}
}

int deliver_shared_init(const struct relay_config *conf, unsigned n_workers)
{
	char name[RTE_RING_NAMESIZE];
	if (n_workers > DELIVER_MAX_WORKERS) {
		MX_ERR("deliver: %u workers, at most %u", n_workers, DELIVER_MAX_WORKERS);
		return -EINVAL;
	}
	mbox_workers = n_workers;
	atomic_store(&quiesce_count, 0);
	for (unsigned i = 0; n_workers > 1 && i < n_workers; i++) {
		snprintf(name, sizeof(name), "mxdl_mbox_%u", i);
		mbox[i] = rte_ring_create(name, MBOX_SIZE, SOCKET_ID_ANY, RING_F_SC_DEQ);
		if (mbox[i] == NULL) {
			MX_ERR("deliver: mailbox ring of worker %u: %s", i,
			       rte_strerror(rte_errno));
			deliver_shared_free();
			return -ENOMEM;
		}
	}
	return resolve_shared_init(conf);
}

void deliver_shared_free(void)
{
	for (unsigned i = 0; i < DELIVER_MAX_WORKERS; i++) {
		void *m;
		if (mbox[i] == NULL)
			continue;
		/* Left by a worker that stopped first: everything is still in its spool. */
		while (rte_ring_sc_dequeue(mbox[i], &m) == 0) {
			struct dmsg *dm = m;
			if (dm->type == DM_DESC)
				queue_desc_free(dm->u.desc.d);
			free(dm);
		}
		rte_ring_free(mbox[i]);
		mbox[i] = NULL;
	}
	mbox_workers = 0;
	resolve_shared_free();
}

static void sess_free(struct deliver *dl, struct dsess *s)
{
	if (s->kicked) {
		struct dsess **pp = &dl->kicked;
		while (*pp != NULL && *pp != s)
			pp = &(*pp)->kick_next;
		if (*pp == s)
			*pp = s->kick_next;
	}
	if (s->prev != NULL)
		s->prev->next = s->next;
	else
		dl->sessions = s->next;
	if (s->next != NULL)
		s->next->prev = s->prev;
	smtp_client_free(s->cl); /* may report what is in flight: before the txns go */
	dtxn_clear_all(s);
	tls_conn_free(s->tls);
	free(s->out);
	free(s);
	dl->stats.sessions_open--;
}

/*
 * One session's pending work: the next address of a failed attempt, reaping
 * a dead one, held TLS input, and (timers = true) its deadlines.  Returns
 * work done; *freed when s is gone.
 */
static unsigned sess_run(struct deliver *dl, struct dsess *s, uint64_t now, bool timers,
			 bool *freed)
{
	unsigned work = 0;
	*freed = false;
	if (s->try_next && s->tc == NULL) {
		work++;
		/* Fresh client and TLS for the next address. */
		smtp_client_free(s->cl);
		s->cl = NULL;
		tls_conn_free(s->tls);
		s->tls = NULL;
		s->out_len = 0;
		s->try_next = false;
		if (!connect_next(s)) {
			dl->stats.connect_failures++;
			sess_down(s, s->reason);
			s->reap = true;
		}
	}
	if (s->reap && s->tc == NULL) {
		sess_down(s, s->reason[0] ? s->reason : "connection closed");
		if (s->close_pending && !dl->destroying)
			queue_conn_closed(dl->q, s->handle, wall_us_of(dl));
		sess_free(dl, s);
		*freed = true;
		return work + 1;
	}
	if (timers && s->tc != NULL && !s->connected && now >= s->connect_deadline_us) {
		sess_abort_tcp(s); /* -> t_closed: next address */
		return work;
	}
	if (timers && s->cl != NULL && smtp_client_deadline(s->cl) <= now) {
		if (s->tls != NULL && !tls_conn_handshake_done(s->tls))
			tls_conn_timed_out(s->tls);
		smtp_client_timeout(s->cl);
	}
	if (s->input_held && s->tc != NULL && s->tls != NULL) {
		if (tls_conn_want_input(s->tls)) {
			s->input_held = false;
			tcp_recv_resume(s->tc);
		} else if (!timers) {
			sess_kick(s); /* look again next turn */
		}
	}
	return work;
}

/* The shortest of floor and the timeouts of cc (all nonzero: smtp_client_conf_check). */
static uint64_t timer_floor(uint64_t floor, const struct smtp_client_conf *cc)
{
	const uint64_t t[] = {
		cc->timeout_greeting_us,  cc->timeout_helo_us,	    cc->timeout_mail_us,
		cc->timeout_rcpt_us,	  cc->timeout_data_init_us, cc->timeout_data_xfer_us,
		cc->timeout_data_done_us, cc->timeout_rset_us,	    cc->timeout_quit_us};
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
		floor = t[i] < floor ? t[i] : floor;
	return floor;
}

/* The kicked sessions every turn; every session's timers when one may be due. */
static unsigned sessions_run(struct deliver *dl, uint64_t now)
{
	unsigned work = 0;
	bool freed;
	struct dsess *list = dl->kicked, *next;
	dl->kicked = NULL;
	for (struct dsess *s = list; s != NULL; s = next) {
		next = s->kick_next;
		s->kicked = false;
		work += sess_run(dl, s, now, false, &freed);
	}
	if (now < dl->next_scan_us)
		return work;
	dl->stats.session_scans++;
	uint64_t soonest = now + (dl->timer_floor_us < SESSION_SCAN_MAX_US ? dl->timer_floor_us
									   : SESSION_SCAN_MAX_US);
	for (struct dsess *s = dl->sessions; s != NULL; s = next) {
		next = s->next;
		freed = false;
		if (!s->kicked) /* a kicked one may be freed by then: it waits for its turn */
			work += sess_run(dl, s, now, true, &freed);
		if (freed)
			continue;
		/* What is left (a kicked one too): its deadlines from now on. */
		if (s->tc != NULL && !s->connected && s->connect_deadline_us < soonest)
			soonest = s->connect_deadline_us;
		if (s->cl != NULL) {
			uint64_t d = smtp_client_deadline(s->cl);
			soonest = d < soonest ? d : soonest;
		}
	}
	dl->next_scan_us = soonest > now + SESSION_SCAN_US ? soonest : now + SESSION_SCAN_US;
	return work;
}

unsigned deliver_poll(struct deliver *dl, uint64_t now_us)
{
	struct queue_action acts[ACTIONS_PER_POLL];
	char names[ACTIONS_PER_POLL][QUEUE_DEST_MAX];
	struct dsess *pre[ACTIONS_PER_POLL];
	clock_turn(dl, now_us);
	unsigned work = inbox_run(dl);
	work += backlog_run(dl);

	if (dl->dns != NULL)
		resolve_poll(dl->dns, now_us);
	int n = queue_poll(dl->q, wall_us_of(dl), acts, ACTIONS_PER_POLL);
	/*
	 * Names and routes are valid only until the next call on the queue, and
	 * executing one action calls the queue: copy them all first.
	 */
	for (int i = 0; i < n; i++) {
		pre[i] = NULL;
		if (acts[i].type == QUEUE_ACT_RESOLVE)
			snprintf(names[i], sizeof(names[i]), "%s", acts[i].dest_name);
		else if (acts[i].type == QUEUE_ACT_CONNECT)
			pre[i] = sess_prepare(dl, &acts[i]);
	}
	for (int i = 0; i < n; i++) {
		switch (acts[i].type) {
		case QUEUE_ACT_RESOLVE:
			do_resolve(dl, acts[i].dest, names[i]);
			break;
		case QUEUE_ACT_CONNECT:
			do_connect(dl, acts[i].session, pre[i]);
			break;
		case QUEUE_ACT_SEND:
			do_send(dl, &acts[i]);
			break;
		case QUEUE_ACT_CLOSE:
			do_close(dl, &acts[i]);
			break;
		}
	}
	work += n > 0 ? (unsigned)n : 0;
	work += sessions_run(dl, now_us);
	work += outbox_flush(dl);
	/* Stamped here, not in the callbacks: between two turns the worker may have
	 * slept, and the last turn's time would end the spin window too soon. */
	if (dl->txn_io) {
		dl->txn_io = false;
		dl->last_txn_io_us = now_us;
	}
	if (dl->txns_out > 0 && now_us - dl->last_txn_io_us < TXN_SPIN_US)
		work++; /* replies due soon: keep polling (see TXN_SPIN_US) */
	if (dl->wake_mask != 0)
		wake_peers(dl);
	if (dl->dns != NULL)
		resolve_quiescent(dl->dns); /* no cache entry held past here */
	return work;
}

/* ---- life cycle -------------------------------------------------------------------------- */

struct deliver *deliver_create(const struct relay_config *conf, struct net_stack *st,
			       unsigned worker, unsigned n_workers)
{
	char err[512];
	struct deliver *dl = calloc(1, sizeof(*dl));
	if (dl == NULL)
		return NULL;
	dl->conf = conf;
	dl->st = st;
	dl->worker = worker;
	dl->n_workers = n_workers ? n_workers : 1;
	dl->backlog_tail = &dl->backlog;
	clock_turn(dl, mx_now_us());
	if (worker < DELIVER_MAX_WORKERS) {
		atomic_store_explicit(&mbox_seen_us[worker], mx_now_us(), memory_order_relaxed);
		atomic_store_explicit(&mbox_stack[worker], st, memory_order_release);
	}
	queue_config_defaults(&dl->qc);
	if (queue_config_from_cfg(conf->cf, &dl->qc, err, sizeof(err)) != 0) {
		MX_ERR("deliver: %s", err);
		goto fail;
	}
	bool need_tls = conf->tls_outbound != TLS_POLICY_NONE || dl->qc.smarthost_implicit_tls;
	for (unsigned i = 0; i < dl->qc.tls_rule_count; i++)
		need_tls = need_tls || dl->qc.tls_rules[i].policy != QUEUE_TLS_NONE;
	if (need_tls) {
		struct tls_client_conf tc = {.ca_file = conf->tls_ca_file[0] ? conf->tls_ca_file
									     : NULL};
		if (tls_client_ctx_create(&tc, &dl->tls, err, sizeof(err)) != 0 ||
		    tls_session_cache_create(TLS_CACHE_CAPACITY, &dl->tls_cache) != 0) {
			MX_ERR("deliver: TLS client: %s", err);
			goto fail;
		}
	}
	/* One client setting per (smarthost AUTH, policy); AUTH never goes to an MX. */
	static const enum smtp_client_tls_policy cpol[3] = {
		[TLS_POLICY_NONE] = SMTP_CLIENT_TLS_NONE,
		[TLS_POLICY_OPPORTUNISTIC] = SMTP_CLIENT_TLS_OPPORTUNISTIC,
		[TLS_POLICY_VERIFY] = SMTP_CLIENT_TLS_REQUIRED};
	dl->timer_floor_us = CONNECT_TIMEOUT_US;
	for (unsigned a = 0; a < 2; a++)
		for (unsigned p = 0; p < 3; p++) {
			struct smtp_client_conf *cc = &dl->cc[a][p];
			smtp_client_conf_defaults(cc);
			cc->helo_name = dl->qc.hostname[0] ? dl->qc.hostname : "localhost";
			cc->now_us = client_now_us;
			/* the queue sends at most [queue] pipeline_depth (queue_conn_depth) */
			cc->max_txns_in_flight = SMTP_CLIENT_TXNS_MAX;
			cc->tls = dl->tls != NULL ? cpol[p] : SMTP_CLIENT_TLS_NONE;
			if (a == 1) {
				cc->auth_user = dl->qc.smarthost_user;
				cc->auth_pass = dl->qc.smarthost_pass;
			}
			if (smtp_client_conf_check(cc, err, sizeof(err)) != 0) {
				MX_ERR("deliver: smtp client: %s", err);
				goto fail;
			}
			dl->timer_floor_us = timer_floor(dl->timer_floor_us, cc);
		}
	if (resolve_create(conf, st, worker, &dl->dns) != 0)
		goto fail;
	dl->q = queue_create(&dl->qc, &deliver_queue_ops, dl);
	if (dl->q == NULL) {
		MX_ERR("deliver: cannot create the queue");
		resolve_destroy(dl->dns);
		goto fail;
	}
	if (dl->qc.smarthost_set)
		MX_INFO("worker %u: delivery through smarthost %s", worker, dl->qc.smarthost_name);
	return dl;
fail:
	tls_session_cache_free(dl->tls_cache);
	tls_client_ctx_free(dl->tls);
	free(dl);
	return NULL;
}

static void sessions_abort(struct deliver *dl)
{
	dl->destroying = true; /* callbacks from here on do not talk to the queue */
	while (dl->sessions != NULL) {
		struct dsess *s = dl->sessions;
		sess_abort_tcp(s);
		sess_free(dl, s);
	}
}

void deliver_quiesce(struct deliver *dl)
{
	if (dl == NULL || dl->quiesced)
		return;
	sessions_abort(dl); /* no result arrives any more: nothing new to post */
	dl->quiesced = true;
	uint64_t end = mx_now_us() + QUIESCE_WAIT_US;
	while (mx_now_us() < end) {
		clock_turn(dl, mx_now_us());
		outbox_flush(dl);
		bool empty = true;
		for (unsigned to = 0; to < mbox_workers; to++)
			empty = empty && dl->outbox[to] == NULL;
		if (empty)
			break;
		inbox_run(dl); /* room for others who wait on us */
	}
	if (dl->wake_mask != 0)
		wake_peers(dl);
	/* Barrier: after it, every worker's marks for this spool are in this mailbox. */
	atomic_fetch_add(&quiesce_count, 1);
	while (atomic_load(&quiesce_count) < mbox_workers && mx_now_us() < end)
		inbox_run(dl);
	while (inbox_run(dl) > 0)
		;
	if (atomic_load(&quiesce_count) < mbox_workers)
		MX_WARN("worker %u: stopped before every worker flushed its marks; a restart "
			"retries what they did not write",
			dl->worker);
}

void deliver_destroy(struct deliver *dl)
{
	if (dl == NULL)
		return;
	sessions_abort(dl);
	if (dl->worker < DELIVER_MAX_WORKERS)
		atomic_store_explicit(&mbox_stack[dl->worker], NULL, memory_order_release);
	for (unsigned to = 0; to < DELIVER_MAX_WORKERS; to++)
		while (dl->outbox[to] != NULL) {
			struct dmsg *m = dl->outbox[to];
			dl->outbox[to] = m->next;
			if (m->type == DM_DESC)
				queue_desc_free(m->u.desc.d);
			free(m);
		}
	while (dl->relocs != NULL) {
		struct reloc_wait *w = dl->relocs;
		dl->relocs = w->next;
		free(w);
	}
	resolve_destroy(dl->dns); /* completions see destroying: they only free their state */
	queue_destroy(dl->q);
	while (dl->backlog != NULL) {
		struct backlog *b = dl->backlog;
		dl->backlog = b->next;
		queue_desc_free(b->d);
		free(b);
	}
	for (unsigned i = 0; i < GROUP_BUCKETS; i++)
		while (dl->groups[i] != NULL) {
			struct group *g = dl->groups[i];
			dl->groups[i] = g->next;
			free(g);
		}
	free(dl->finish_ids);
	while (dl->dsn_pending != NULL) {
		/* Committed but not reported: the next start recovers and delivers it. */
		struct dsn_pending *p = dl->dsn_pending;
		dl->dsn_pending = p->next;
		free(p->rcpt);
		free(p);
	}
	tls_session_cache_free(dl->tls_cache);
	tls_client_ctx_free(dl->tls);
	free(dl);
}

void deliver_stats_foreach(const struct deliver *dl,
			   void (*fn)(void *arg, const char *name, uint64_t value), void *arg)
{
	struct queue_counters qc;
	queue_get_counters(dl->q, &qc);
	fn(arg, "queue_queued", qc.queued);
	fn(arg, "queue_in_flight", qc.in_flight);
	fn(arg, "queue_sent", qc.sent);
	fn(arg, "queue_deferred", qc.deferred);
	fn(arg, "queue_bounced", qc.bounced);
	fn(arg, "queue_expired", qc.expired);
	fn(arg, "queue_conns_open", qc.conns_open);
	fn(arg, "queue_conns_opened", qc.conns_opened);
	fn(arg, "queue_conn_failures", qc.conn_failures);
	fn(arg, "queue_sessions_reused", qc.sessions_reused);
	fn(arg, "queue_backoffs", qc.backoffs);
	fn(arg, "queue_txns", qc.txns);
	fn(arg, "queue_txns_pipelined", qc.txns_pipelined);
	fn(arg, "queue_budget_hits", qc.budget_hits);
	fn(arg, "queue_idle_evictions", qc.idle_evictions);
	fn(arg, "queue_session_limit_hits", qc.session_limit_hits);
	fn(arg, "queue_dsn_sent", qc.dsn_sent);
	fn(arg, "queue_dsn_failed", qc.dsn_failed);
	fn(arg, "queue_dests", qc.dests);

	const struct smtp_client_stats *c = &dl->cstats;
	fn(arg, "smtpc_sessions", c->sessions);
	fn(arg, "smtpc_sessions_ready", c->sessions_ready);
	fn(arg, "smtpc_sessions_failed", c->sessions_failed);
	fn(arg, "smtpc_messages_sent", c->messages_sent);
	fn(arg, "smtpc_rcpts_delivered", c->rcpts_delivered);
	fn(arg, "smtpc_rcpts_deferred", c->rcpts_deferred);
	fn(arg, "smtpc_rcpts_bounced", c->rcpts_bounced);
	fn(arg, "smtpc_starttls", c->starttls);
	fn(arg, "smtpc_timeouts", c->timeouts);
	fn(arg, "smtpc_bytes_out", c->bytes_out);
	fn(arg, "smtpc_txns_pipelined", c->txns_pipelined);
	fn(arg, "tls_client_handshakes_full", dl->tls_stats.client_handshakes_full);
	fn(arg, "tls_client_handshakes_resumed", dl->tls_stats.client_handshakes_resumed);

	const struct deliver_stats *s = &dl->stats;
	fn(arg, "deliver_accepted", s->accepted);
	fn(arg, "deliver_recovered", s->recovered);
	fn(arg, "deliver_split_failures", s->split_failures);
	fn(arg, "deliver_submit_deferred", s->submit_deferred);
	fn(arg, "deliver_backlog", s->backlog);
	fn(arg, "deliver_handoff_out", s->handoff_out);
	fn(arg, "deliver_handoff_in", s->handoff_in);
	fn(arg, "deliver_mbox_posted", s->mbox_posted);
	fn(arg, "deliver_mbox_received", s->mbox_received);
	fn(arg, "deliver_mbox_full", s->mbox_full);
	fn(arg, "deliver_outbox", s->outbox);
	fn(arg, "deliver_remote_marks", s->remote_marks);
	fn(arg, "deliver_remote_moved", s->remote_moved);
	fn(arg, "deliver_relocated", s->relocated);
	fn(arg, "deliver_remote_read_failures", s->remote_read_failures);
	fn(arg, "deliver_quiesce_dropped", s->quiesce_dropped);
	fn(arg, "deliver_connects", s->connects);
	fn(arg, "deliver_connect_failures", s->connect_failures);
	fn(arg, "deliver_tcp_refused", s->tcp_refused);
	fn(arg, "deliver_tcp_timeouts", s->tcp_timeouts);
	fn(arg, "deliver_sessions_open", s->sessions_open);
	fn(arg, "deliver_session_scans", s->session_scans);
	fn(arg, "deliver_resolve_tempfail", s->resolve_tempfail);
	fn(arg, "deliver_mark_failures", s->mark_failures);
	fn(arg, "deliver_finished", s->finish);
	fn(arg, "deliver_group_missing", s->group_missing);
	fn(arg, "deliver_out_full", s->out_full);
	fn(arg, "deliver_dsn_injected", s->dsn_injected);
	fn(arg, "deliver_dsn_inject_failures", s->dsn_inject_failures);
	fn(arg, "deliver_dsn_limit_hits", s->dsn_limit_hits);
	fn(arg, "deliver_dsn_unknown_commits", s->dsn_unknown_commits);
	if (dl->dns != NULL)
		resolve_stats_foreach(dl->dns, fn, arg);
}

/* ---- control requests (on this worker's lcore) --------------------------------------------- */

static const char *const dest_state_name[] = {"need-route", "resolving", "ready", "backoff"};

/* Retry-waiting transactions of one destination, for `queue`. */
struct waiting {
	char name[QUEUE_DEST_MAX];
	uint32_t rcpts, txns;
	int64_t next_us;
	bool listed; /* printed with its destination */
};

struct waiting_set {
	struct waiting *w;
	size_t n, cap;
};

static int waiting_add(void *arg, const char *dest, uint32_t rcpts, int64_t when)
{
	struct waiting_set *ws = arg;
	for (size_t i = 0; i < ws->n; i++)
		if (strcasecmp(ws->w[i].name, dest) == 0) {
			ws->w[i].rcpts += rcpts;
			ws->w[i].txns++;
			if (when < ws->w[i].next_us)
				ws->w[i].next_us = when;
			return 0;
		}
	if (ws->n == ws->cap) {
		size_t cap = ws->cap ? ws->cap * 2 : 64;
		struct waiting *p = realloc(ws->w, cap * sizeof(*p));
		if (p == NULL)
			return -ENOMEM;
		ws->w = p;
		ws->cap = cap;
	}
	struct waiting *w = &ws->w[ws->n++];
	snprintf(w->name, sizeof(w->name), "%s", dest);
	w->rcpts = rcpts;
	w->txns = 1;
	w->next_us = when;
	w->listed = false;
	return 0;
}

struct dest_print {
	FILE *out;
	struct waiting_set *ws;
	int64_t now;
	unsigned worker;
};

static int dest_print(void *arg, const struct queue_dest_info *di)
{
	struct dest_print *p = arg;
	uint32_t wr = 0;
	int64_t next = 0;
	for (size_t i = 0; i < p->ws->n; i++)
		if (strcasecmp(p->ws->w[i].name, di->name) == 0) {
			wr = p->ws->w[i].rcpts;
			next = p->ws->w[i].next_us;
			p->ws->w[i].listed = true;
		}
	fprintf(p->out,
		"%s worker=%u state=%s queued=%" PRIu64 " waiting=%u in_flight=%" PRIu64
		" conns=%u idle=%u sent=%" PRIu64 " deferred=%" PRIu64 " bounced=%" PRIu64
		" reused=%" PRIu64 " tls_full=%" PRIu64 " tls_resumed=%" PRIu64,
		di->name, p->worker,
		di->suspended ? "suspended" : dest_state_name[di->state < 4 ? di->state : 0],
		di->c.queued, wr, di->c.in_flight, di->sessions, di->idle_sessions, di->c.sent,
		di->c.deferred, di->c.bounced, di->c.sessions_reused, di->c.tls_full,
		di->c.tls_resumed);
	if (wr > 0)
		fprintf(p->out, " next_retry_in=%" PRId64 "s",
			next > p->now ? (next - p->now + 999999) / 1000000 : 0);
	if (di->state == QUEUE_DS_BACKOFF && di->backoff_until_us > p->now)
		fprintf(p->out, " backoff_left=%" PRId64 "s",
			(di->backoff_until_us - p->now + 999999) / 1000000);
	fputc('\n', p->out);
	return 0;
}

int deliver_ctl_queue(struct deliver *dl, FILE *out)
{
	struct waiting_set ws = {0};
	int64_t now = wall_us_of(dl);
	int rc = queue_retry_foreach(dl->q, waiting_add, &ws);
	if (rc == 0) {
		struct dest_print p = {.out = out, .ws = &ws, .now = now, .worker = dl->worker};
		queue_dest_foreach(dl->q, dest_print, &p);
		/* Destinations with nothing but deferred mail have no entry of their own. */
		for (size_t i = 0; i < ws.n; i++)
			if (!ws.w[i].listed)
				fprintf(out,
					"%s worker=%u state=waiting queued=0 waiting=%u "
					"in_flight=0 "
					"conns=0 idle=0 next_retry_in=%" PRId64 "s\n",
					ws.w[i].name, dl->worker, ws.w[i].rcpts,
					ws.w[i].next_us > now
						? (ws.w[i].next_us - now + 999999) / 1000000
						: 0);
	}
	free(ws.w);
	return rc;
}

static const char *const rcpt_state_name[] = {"queued", "deferred", "delivered", "bounced"};

int deliver_ctl_show(struct deliver *dl, uint64_t id, FILE *out)
{
	struct spool_location loc;
	struct spool_envelope *env = NULL;
	const struct spool_rcpt_status *st;
	uint32_t n;
	char id_str[SPOOL_ID_LEN + 1];

	if (!spool_local(dl, id) || dl->spool == NULL)
		return -ENOENT;
	int rc = spool_locate(dl->spool, id, &loc);
	if (rc != 0)
		return rc;
	int fd = spool_open_record(dl->conf->spool.dir, &loc, id);
	if (fd < 0)
		return fd;
	rc = spool_read_envelope(fd, &loc, &env);
	close(fd);
	if (rc != 0)
		return rc;
	rc = spool_rcpt_states(dl->spool, id, &st, &n);
	if (rc != 0) {
		free(env);
		return rc;
	}
	spool_id_format(id, id_str);
	time_t t = (time_t)(env->arrival_us / 1000000);
	struct tm tm;
	char when[32];
	gmtime_r(&t, &tm);
	strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
	fprintf(out, "id: %s\nworker: %u\narrival: %s\nsize: %u\nsender: <%s>\n", id_str,
		dl->worker, when, loc.body_len, env->sender ? env->sender : "");
	fprintf(out, "client: %s helo %s\n", env->client_ip ? env->client_ip : "",
		env->helo ? env->helo : "");
	if (env->tls_version && env->tls_version[0])
		fprintf(out, "tls: %s %s\n", env->tls_version,
			env->tls_cipher ? env->tls_cipher : "");
	if (env->auth_user && env->auth_user[0])
		fprintf(out, "auth: %s\n", env->auth_user);
	if (env->message_id && env->message_id[0])
		fprintf(out, "message-id: %s\n", env->message_id);
	for (uint32_t i = 0; i < env->rcpt_count && i < n; i++) {
		char dest[QUEUE_DEST_MAX];
		queue_dest_of(&dl->qc, env->rcpts[i].addr, dest);
		fprintf(out, "rcpt %u: <%s> state=%s dest=%s owner=%u", i, env->rcpts[i].addr,
			rcpt_state_name[st[i].state < 4 ? st[i].state : 0], dest,
			dl->n_workers > 1 ? queue_dest_owner(dest, dl->n_workers) : dl->worker);
		if (st[i].state == SPOOL_RCPT_DEFERRED)
			fprintf(out, " next_retry=%" PRId64, st[i].next_retry_s);
		if (st[i].text)
			fprintf(out, " \"%s\"", st[i].text);
		fputc('\n', out);
	}
	free(env);
	return 0;
}

/* Does this worker own dest?  (Every worker is asked; only the owner acts.) */
static bool owns(const struct deliver *dl, const char *dest)
{
	return dl->n_workers <= 1 || queue_dest_owner(dest, dl->n_workers) == dl->worker;
}

int deliver_ctl_flush(struct deliver *dl, const char *dest, FILE *out)
{
	if (dest != NULL && !owns(dl, dest))
		return -ENOENT;
	int n = queue_flush(dl->q, dest, wall_us_of(dl));
	if (n < 0)
		return n;
	fprintf(out, "worker %u: %s: %d to retry now\n", dl->worker, dest ? dest : "all", n);
	return 0;
}

int deliver_ctl_suspend(struct deliver *dl, const char *dest, bool suspend, FILE *out)
{
	if (dest == NULL || dest[0] == 0 || strlen(dest) >= QUEUE_DEST_MAX)
		return -EINVAL;
	/* "*" (QUEUE_HOLD_ALL) is every destination: each worker holds its own */
	if (strcmp(dest, QUEUE_HOLD_ALL) != 0 && !owns(dl, dest))
		return -ENOENT;
	int rc = queue_suspend(dl->q, dest, suspend, wall_us_of(dl));
	if (rc != 0)
		return rc;
	MX_INFO("queue: destination %s %s by the operator", dest,
		suspend ? "suspended" : "resumed");
	fprintf(out, "worker %u: %s %s\n", dl->worker, dest, suspend ? "suspended" : "resumed");
	return 0;
}

void deliver_reconfigure(struct deliver *dl, const struct relay_config *conf)
{
	char err[512];
	struct queue_config qc;

	/* The old generation is freed after this returns: nothing may point into it. */
	dl->conf = conf;
	resolve_reconfigure(dl->dns, conf);
	queue_config_defaults(&qc);
	if (queue_config_from_cfg(conf->cf, &qc, err, sizeof(err)) != 0) {
		/* The main lcore checked the file: cannot happen; keep the running limits. */
		MX_ERR("worker %u: reload: %s", dl->worker, err);
		return;
	}
	queue_reconfigure(dl->q, &qc);
	/* Limits into our copy too (queue_split reads it); the rest needs a restart. */
	struct queue_config keep = dl->qc;
	dl->qc = qc;
	dl->qc.max_destinations = keep.max_destinations;
	dl->qc.max_transactions = keep.max_transactions;
	dl->qc.max_sessions = keep.max_sessions;
	dl->qc.smarthost_set = keep.smarthost_set;
	dl->qc.smarthost_mx = keep.smarthost_mx;
	dl->qc.smarthost_port = keep.smarthost_port;
	dl->qc.smarthost_implicit_tls = keep.smarthost_implicit_tls;
	memcpy(dl->qc.smarthost_host, keep.smarthost_host, sizeof(keep.smarthost_host));
	memcpy(dl->qc.smarthost_name, keep.smarthost_name, sizeof(keep.smarthost_name));
	memcpy(dl->qc.hostname, keep.hostname, sizeof(keep.hostname));
}
