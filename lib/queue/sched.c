/*
 * sched.c - the per-core delivery scheduler: destinations with their FIFO of
 * transactions, pooled sessions, limits, backoff, the retry timer heap and
 * the per-recipient outcome (delivered, deferred, bounced, expired).
 *
 * Everything waits on something explicit: a transaction is in exactly one
 * place (its destination's FIFO, a session, or the timer heap), a
 * destination with work is on the dirty list, idle sessions are on an LRU
 * list ordered by idle time, and busy sessions that can take one more
 * transaction (queue_conn_depth: the server pipelines) are on their
 * destination's room list; a session's transactions are answered in order.
 * queue_poll() pops due timers, closes idle sessions, and dispatches the
 * dirty destinations only: nothing is scanned.  The README in this folder
 * draws the destination state machine.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core.h"
#include "queue.h"
#include "queue_internal.h"

/* ---- small intrusive lists ------------------------------------------------- */

#define EVICT_PER_POLL 16 /* idle sessions closed a turn for destinations without a slot */

struct qlink {
	struct qlink *prev, *next;
};

static void ql_init(struct qlink *l)
{
	l->prev = l->next = l;
}
static bool ql_empty(const struct qlink *l)
{
	return l->next == l;
}
static bool ql_linked(const struct qlink *l)
{
	return l->next != l;
}
static void ql_add_tail(struct qlink *h, struct qlink *n)
{
	n->prev = h->prev;
	n->next = h;
	h->prev->next = n;
	h->prev = n;
}
static void ql_add_head(struct qlink *h, struct qlink *n)
{
	n->next = h->next;
	n->prev = h;
	h->next->prev = n;
	h->next = n;
}
static void ql_del(struct qlink *n)
{
	n->prev->next = n->next;
	n->next->prev = n->prev;
	ql_init(n);
}

#define container_of(p, type, member) ((type *)((char *)(p)-offsetof(type, member)))

/* ---- structures -------------------------------------------------------------- */

enum { T_TXN = 1, T_DEST };

struct qtimer {
	int64_t when;
	uint32_t pos; /* heap index + 1; 0 = not armed */
	uint8_t kind;
};

struct qtxn {
	struct queue_txn pub;
	struct queue_desc *desc;
	uint32_t *rcpt;
	struct qtimer timer;
	struct qlink link; /* destination FIFO */
	uint16_t attempts;
	int64_t queued_us;
	int64_t dispatched_us;
	int64_t born_us;      /* the message's arrival (or submission): max_age counts from it */
	uint32_t rcpt_one[1]; /* rcpt for one recipient: no second allocation */
};

/*
 * S_CLOSING: decided, its CLOSE action not out yet; S_QUITTING: CLOSE given,
 * the transport still says QUIT and closes TCP (queue_conn_closed ends it).
 * Both still count against the destination's max_connections.
 */
enum { S_FREE = 0, S_CONNECTING, S_IDLE, S_BUSY, S_CLOSING, S_QUITTING };

struct qsession {
	uint32_t gen;
	uint8_t state;
	struct qdest *dest;
	struct qlink link;  /* dest idle list, or q->closing */
	struct qlink glink; /* q->idle LRU */
	struct qlink rlink; /* dest->room: busy, with room for another transaction */
	/* transactions in flight, oldest first: txns[tx_head], ... ntx of them */
	struct qtxn *txns[QUEUE_PIPELINE_MAX];
	uint8_t tx_head, ntx;
	uint8_t depth; /* how many it may carry at once (queue_conn_depth), 1 until told */
	bool retired;  /* takes no new mail (too old, closing): counted in dest->retiring */
	bool evicted;  /* closed idle for a destination that waited for a slot (q->evicting) */
	void *user;    /* the transport's (queue_session_set_user) */
	int64_t connect_us, up_us, idle_since_us;
	uint32_t msgs;
	char host[DNS_NAME_TEXT_MAX];
	uint32_t addr;
	uint16_t port;
};

struct qdest {
	uint32_t gen, slot;
	char name[QUEUE_DEST_MAX];
	uint8_t kind, state;
	struct qdest *hnext;
	struct qlink fifo;
	uint32_t fifo_len;
	struct qlink idle;
	uint32_t idle_count;
	struct qlink room; /* busy sessions that can take another transaction */
	uint32_t sessions, connecting;
	uint32_t retiring; /* of sessions, those that take no new mail (sess_retire) */
	bool has_route, mx;
	bool suspended; /* held by the operator: nothing is dispatched */
	int64_t route_until;
	uint16_t port;
	struct dns_mail_route route;
	int64_t backoff_until;
	uint64_t backoff_us;
	int64_t rate_tat;
	struct qtimer timer;
	struct qlink dirty;
	struct qlink starved;
	struct qlink extra; /* on q->extra: wants another connection (connection_budget) */
	char last_error[QUEUE_REPLY_MAX];
	struct queue_counters c;
};

struct queue {
	struct queue_config cfg;
	struct queue_ops ops;
	void *ctx;
	struct qdest **dslot;
	uint32_t *dgen;
	uint32_t *dfree;
	uint32_t dfree_count;
	struct qdest **buckets;
	uint32_t bucket_mask;
	struct qsession *sess;
	uint32_t *sfree;
	uint32_t sfree_count;
	uint32_t idle_total; /* sessions on q->idle */
	uint32_t evicting;   /* idle sessions closed for starved destinations, not gone yet */
	struct qtimer **heap;
	uint32_t heap_len, heap_cap;
	struct qlink dirty, idle, closing, starved, extra;
	bool extra_later; /* queue_poll's first pass: q->extra waits for the second */
	uint64_t txn_count, next_txn_id, dsn_seq;
	bool hold_all; /* queue_suspend(QUEUE_HOLD_ALL): no destination is dispatched */
	struct queue_counters c;
};

#define HANDLE(gen, slot) (((uint64_t)(gen) << 32) | (uint32_t)(slot))

/* ---- timer heap (binary min-heap, O(log n)) ------------------------------------ */

static void heap_swap(struct queue *q, uint32_t a, uint32_t b)
{
	struct qtimer *t = q->heap[a];
	q->heap[a] = q->heap[b];
	q->heap[b] = t;
	q->heap[a]->pos = a + 1;
	q->heap[b]->pos = b + 1;
}

static void heap_up(struct queue *q, uint32_t i)
{
	while (i > 0) {
		uint32_t p = (i - 1) / 2;
		if (q->heap[p]->when <= q->heap[i]->when)
			break;
		heap_swap(q, i, p);
		i = p;
	}
}

static void heap_down(struct queue *q, uint32_t i)
{
	for (;;) {
		uint32_t l = 2 * i + 1, r = l + 1, m = i;
		if (l < q->heap_len && q->heap[l]->when < q->heap[m]->when)
			m = l;
		if (r < q->heap_len && q->heap[r]->when < q->heap[m]->when)
			m = r;
		if (m == i)
			return;
		heap_swap(q, i, m);
		i = m;
	}
}

static void timer_cancel(struct queue *q, struct qtimer *t)
{
	if (!t->pos)
		return;
	uint32_t i = t->pos - 1;
	q->heap_len--;
	if (i != q->heap_len) {
		q->heap[i] = q->heap[q->heap_len];
		q->heap[i]->pos = i + 1;
		heap_down(q, i);
		heap_up(q, i);
	}
	t->pos = 0;
}

static int timer_arm(struct queue *q, struct qtimer *t, int64_t when)
{
	timer_cancel(q, t);
	if (q->heap_len == q->heap_cap) {
		uint32_t cap = q->heap_cap ? q->heap_cap * 2 : 256;
		struct qtimer **h = realloc(q->heap, cap * sizeof(*h));
		if (!h)
			return -ENOMEM;
		q->heap = h;
		q->heap_cap = cap;
	}
	t->when = when;
	q->heap[q->heap_len] = t;
	t->pos = ++q->heap_len;
	heap_up(q, q->heap_len - 1);
	return 0;
}

/* ---- counters -------------------------------------------------------------------- */

#define CNT(q, d, field, delta)                                                                    \
	do {                                                                                       \
		(q)->c.field += (delta);                                                           \
		if (d)                                                                             \
			(d)->c.field += (delta);                                                   \
	} while (0)

/* ---- destinations ----------------------------------------------------------------- */

static bool name_eq(const char *a, const char *b)
{
	return strcasecmp(a, b) == 0;
}

static struct qdest *dest_find(struct queue *q, const char *name)
{
	struct qdest *d = q->buckets[qi_name_hash(name) & q->bucket_mask];
	while (d && !name_eq(d->name, name))
		d = d->hnext;
	return d;
}

static void route_literal(struct qdest *d, const char *host, uint32_t addr)
{
	memset(&d->route, 0, sizeof(d->route));
	d->route.result = DNS_MAIL_OK;
	d->route.literal = true;
	d->route.host_count = 1;
	snprintf(d->route.hosts[0].name, sizeof(d->route.hosts[0].name), "%.253s", host);
	d->route.hosts[0].addr_count = 1;
	d->route.hosts[0].addrs[0] = addr;
	d->has_route = true;
	d->route_until = INT64_MAX;
	d->state = QUEUE_DS_READY;
}

static struct qdest *dest_get(struct queue *q, const char *name, uint8_t kind)
{
	struct qdest *d = dest_find(q, name);
	uint32_t addr;

	if (d)
		return d;
	if (q->dfree_count == 0) {
		q->c.dest_limit_hits++;
		return NULL;
	}
	d = calloc(1, sizeof(*d));
	if (!d)
		return NULL;
	d->slot = q->dfree[--q->dfree_count];
	d->gen = ++q->dgen[d->slot];
	if (d->gen == 0)
		d->gen = q->dgen[d->slot] = 1;
	q->dslot[d->slot] = d;
	snprintf(d->name, sizeof(d->name), "%s", name);
	d->kind = kind;
	ql_init(&d->fifo);
	ql_init(&d->idle);
	ql_init(&d->room);
	ql_init(&d->dirty);
	ql_init(&d->starved);
	ql_init(&d->extra);
	d->timer.kind = T_DEST;
	d->port = 25;
	d->mx = true;
	d->state = QUEUE_DS_NEED_ROUTE;
	if (kind == QUEUE_DEST_LITERAL && qi_parse_literal(name, &addr) == 0) {
		route_literal(d, name, addr);
	} else if (kind == QUEUE_DEST_SMARTHOST) {
		char lit[300];
		d->port = q->cfg.smarthost_port;
		d->mx = q->cfg.smarthost_mx;
		snprintf(lit, sizeof(lit), "[%s]", q->cfg.smarthost_host);
		if (!d->mx && qi_parse_literal(lit, &addr) == 0)
			route_literal(d, q->cfg.smarthost_host, addr);
	}
	uint32_t b = qi_name_hash(name) & q->bucket_mask;
	d->hnext = q->buckets[b];
	q->buckets[b] = d;
	q->c.dests++;
	return d;
}

static const char *dest_resolve_name(const struct queue *q, const struct qdest *d)
{
	return d->kind == QUEUE_DEST_SMARTHOST ? q->cfg.smarthost_host : d->name;
}

static void dest_free(struct queue *q, struct qdest *d)
{
	struct qdest **pp = &q->buckets[qi_name_hash(d->name) & q->bucket_mask];
	while (*pp && *pp != d)
		pp = &(*pp)->hnext;
	if (*pp)
		*pp = d->hnext;
	timer_cancel(q, &d->timer);
	if (ql_linked(&d->dirty))
		ql_del(&d->dirty);
	if (ql_linked(&d->starved))
		ql_del(&d->starved);
	if (ql_linked(&d->extra))
		ql_del(&d->extra);
	q->dslot[d->slot] = NULL;
	q->dfree[q->dfree_count++] = d->slot;
	q->c.dests--;
	free(d);
}

static void dest_dirty(struct queue *q, struct qdest *d)
{
	if (!ql_linked(&d->dirty))
		ql_add_tail(&q->dirty, &d->dirty);
}

/*
 * Free an idle destination.  One that failed lately is kept until
 * backoff_until + backoff_max, so that repeated failures keep doubling
 * its backoff instead of starting over.
 */
static void dest_maybe_free(struct queue *q, struct qdest *d, int64_t now)
{
	if (d->fifo_len || d->sessions || d->state == QUEUE_DS_RESOLVING || ql_linked(&d->dirty) ||
	    d->suspended)
		return;
	if (d->state == QUEUE_DS_BACKOFF && now < d->backoff_until) {
		timer_arm(q, &d->timer, d->backoff_until);
		return;
	}
	if (d->backoff_us && now < d->backoff_until + (int64_t)q->cfg.backoff_max_us) {
		timer_arm(q, &d->timer, d->backoff_until + (int64_t)q->cfg.backoff_max_us);
		return;
	}
	dest_free(q, d);
}

static struct qdest *dest_by_handle(struct queue *q, uint64_t h)
{
	uint32_t slot = (uint32_t)h, gen = (uint32_t)(h >> 32);
	if (slot >= q->cfg.max_destinations || !q->dslot[slot] || q->dslot[slot]->gen != gen)
		return NULL;
	return q->dslot[slot];
}

/* ---- sessions ---------------------------------------------------------------------- */

static struct qsession *sess_by_handle(struct queue *q, uint64_t h)
{
	uint32_t slot = (uint32_t)h, gen = (uint32_t)(h >> 32);
	if (slot >= q->cfg.max_sessions || q->sess[slot].state == S_FREE ||
	    q->sess[slot].state == S_CLOSING || q->sess[slot].state == S_QUITTING ||
	    q->sess[slot].gen != gen)
		return NULL;
	return &q->sess[slot];
}

static uint64_t sess_handle(const struct queue *q, const struct qsession *s)
{
	return HANDLE(s->gen, (uint32_t)(s - q->sess));
}

static void sess_unidle(struct queue *q, struct qsession *s)
{
	if (s->state != S_IDLE)
		return;
	ql_del(&s->link);
	ql_del(&s->glink);
	s->dest->idle_count--;
	q->idle_total--;
}

/* s takes no new mail from now on; its destination may replace it (connection_budget). */
static void sess_retire(struct qsession *s)
{
	if (s->retired)
		return;
	s->retired = true;
	s->dest->retiring++;
}

/* Sessions connecting or carrying mail (closing ones too): what connection_budget bounds. */
static uint32_t sess_busy_count(const struct queue *q)
{
	return q->cfg.max_sessions - q->sfree_count - q->idle_total;
}

/*
 * Queue a CLOSE action for s.  It keeps its place in the destination's
 * connection count until the transport reports the connection gone
 * (queue_conn_closed): a QUIT still on the wire is still a connection to
 * the receiving server, and a new one must not take its place yet.
 */
static void sess_close(struct queue *q, struct qsession *s)
{
	sess_unidle(q, s);
	sess_retire(s);
	s->state = S_CLOSING;
	ql_add_tail(&q->closing, &s->link);
}

static void sess_release(struct queue *q, struct qsession *s)
{
	if (s->retired)
		s->dest->retiring--;
	s->retired = false;
	if (s->evicted)
		q->evicting--;
	s->evicted = false;
	s->state = S_FREE;
	s->dest = NULL;
	s->ntx = 0;
	s->user = NULL;
	if (ql_linked(&s->rlink))
		ql_del(&s->rlink);
	q->sfree[q->sfree_count++] = (uint32_t)(s - q->sess);
	/* A slot is free: destinations that wanted one may try again. */
	while (!ql_empty(&q->starved)) {
		struct qdest *d = container_of(q->starved.next, struct qdest, starved);
		ql_del(&d->starved);
		dest_dirty(q, d);
	}
}

static void sess_make_idle(struct queue *q, struct qsession *s, int64_t now)
{
	s->state = S_IDLE;
	s->idle_since_us = now;
	ql_add_tail(&s->dest->idle, &s->link);
	ql_add_tail(&q->idle, &s->glink);
	s->dest->idle_count++;
	q->idle_total++;
	dest_dirty(q, s->dest);
}

static bool sess_too_old(const struct queue *q, const struct qsession *s, int64_t now)
{
	return now >= s->up_us + (int64_t)q->cfg.conn_max_age_us ||
	       s->msgs + s->ntx >= q->cfg.msgs_per_connection;
}

/* The session's oldest transaction in flight, or NULL. */
static struct qtxn *sess_oldest(const struct qsession *s)
{
	return s->ntx ? s->txns[s->tx_head] : NULL;
}

/*
 * On dest->room exactly when busy and able to take one more (depth, age,
 * message count).  dirty: make the destination dirty when room appears (not
 * from dispatch(), which goes on with the same destination itself).
 */
static void sess_room_update(struct queue *q, struct qsession *s, int64_t now, bool dirty)
{
	bool room =
		s->state == S_BUSY && s->ntx > 0 && s->ntx < s->depth && !sess_too_old(q, s, now);

	if (room && !ql_linked(&s->rlink)) {
		ql_add_tail(&s->dest->room, &s->rlink);
		if (dirty)
			dest_dirty(q, s->dest);
	} else if (!room && ql_linked(&s->rlink)) {
		ql_del(&s->rlink);
	}
}

/* ---- recipient outcomes -------------------------------------------------------------- */

static void set_text(char **dst, const char *src)
{
	char buf[QUEUE_REPLY_MAX];
	size_t n = 0;

	if (src)
		n = qi_sanitize(buf, sizeof(buf), src);
	if (n > 0 && *dst && strcmp(*dst, buf) == 0)
		return; /* the same host or reply as last time: keep it (no allocation) */
	free(*dst);
	*dst = NULL;
	if (n > 0)
		*dst = strdup(buf);
}

/* Up to max digits at s[*i] (at least one) into *v. */
static bool digits(const char *s, size_t *i, unsigned max, unsigned *v)
{
	unsigned k = 0;

	*v = 0;
	while (k < max && s[*i] >= '0' && s[*i] <= '9') {
		*v = *v * 10 + (unsigned)(s[*i] - '0');
		(*i)++;
		k++;
	}
	return k > 0;
}

/* v (< 1000) in decimal at out[*o]. */
static void put_num(char *out, size_t *o, unsigned v)
{
	if (v >= 100)
		out[(*o)++] = (char)('0' + v / 100);
	if (v >= 10)
		out[(*o)++] = (char)('0' + v / 10 % 10);
	out[(*o)++] = (char)('0' + v % 10);
}

static void status_from(char out[12], const char *status, uint16_t code)
{
	/*
	 * RFC 3463 2: class.subject.detail, each at most 3 digits; the whole
	 * string.  Written without stdio: this runs for every recipient.
	 * Leading zeros are dropped, as "%u" did ("2.00.000" -> "2.0.0").
	 */
	if (status) {
		unsigned a, b, c;
		size_t i = 0;
		if (digits(status, &i, 1, &a) && status[i] == '.' && (++i, true) &&
		    digits(status, &i, 3, &b) && status[i] == '.' && (++i, true) &&
		    digits(status, &i, 3, &c) && status[i] == '\0' &&
		    (a == 2 || a == 4 || a == 5)) {
			size_t o = 0;
			put_num(out, &o, a);
			out[o++] = '.';
			put_num(out, &o, b);
			out[o++] = '.';
			put_num(out, &o, c);
			out[o] = '\0';
			return;
		}
	}
	out[0] = code >= 200 && code < 300 ? '2' : code >= 500 && code < 600 ? '5' : '4';
	memcpy(out + 1, ".0.0", 5);
}

static void log_attempt(struct queue *q, const struct qtxn *t, const struct queue_desc_rcpt *r,
			const struct qsession *s, const char *status, int64_t now)
{
	struct queue_log_info li = {0};
	char line[1200];
	int64_t arrival = t->desc->arrival_us ? t->desc->arrival_us : t->desc->submitted_us;

	(void)q;
	if (mx_log_get_level() < MX_LOG_INFO)
		return;
	li.id = t->desc->id_str;
	li.rcpt = r->addr;
	li.orcpt = r->orcpt;
	if (s && s->host[0]) {
		li.relay_host = s->host;
		li.relay_addr = s->addr;
		li.relay_port = s->port;
	}
	li.delay = ((double)now - (double)arrival) / 1e6;
	li.delays[0] = (double)(t->queued_us - arrival) / 1e6;
	li.delays[1] = t->dispatched_us ? (double)(t->dispatched_us - t->queued_us) / 1e6 : 0;
	li.delays[2] =
		(s && s->msgs == 0 && s->up_us) ? (double)(s->up_us - s->connect_us) / 1e6 : 0;
	li.delays[3] = t->dispatched_us ? ((double)now - (double)t->dispatched_us) / 1e6 : 0;
	for (int i = 0; i < 4; i++)
		if (li.delays[i] < 0)
			li.delays[i] = 0;
	li.dsn = r->status;
	li.status = status;
	li.reply = r->text;
	queue_log_line(line, sizeof(line), &li);
	mx_log(MX_LOG_INFO, "%s", line);
}

struct reader_arg {
	struct queue *q;
	const struct queue_desc *d;
};

static long desc_reader(void *arg, uint64_t off, void *buf, size_t len)
{
	struct reader_arg *ra = arg;
	return ra->q->ops.read_body(ra->q->ctx, ra->d, off, buf, len);
}

/* Send one DSN for the recipients of d selected by want (action per rcpt, -1 = skip). */
static void send_dsn(struct queue *q, struct queue_desc *d, const int *want, unsigned count,
		     int64_t now)
{
	struct queue_dsn_rcpt *rr;
	struct queue_dsn_params p = {0};
	struct reader_arg ra = {q, d};
	char *msg = NULL;
	size_t len = 0;
	unsigned n = 0;

	if (count == 0)
		return;
	if (d->sender[0] == 0) {
		/* RFC 5321 6.1: never send a notification about a notification. */
		q->c.dsn_null_sender_dropped++;
		MX_INFO("%s: DSN to the null sender dropped (RFC 5321 6.1)", d->id_str);
		return;
	}
	rr = calloc(count, sizeof(*rr));
	if (!rr) {
		q->c.dsn_failed++;
		return;
	}
	for (uint32_t i = 0; i < d->rcpt_count; i++) {
		struct queue_desc_rcpt *r = &d->rcpts[i];
		if (want[i] < 0 || n == count)
			continue;
		rr[n].addr = r->addr;
		rr[n].orcpt = r->orcpt;
		rr[n].action = (enum queue_dsn_action)want[i];
		rr[n].status = r->status[0] ? r->status : "5.0.0";
		rr[n].remote_mta = r->remote_mta;
		rr[n].diagnostic = r->text;
		rr[n].last_attempt_us = r->last_attempt_us;
		if (want[i] == QUEUE_DSN_DELAYED)
			rr[n].will_retry_until_us = d->arrival_us + (int64_t)q->cfg.max_age_us;
		n++;
	}
	p.reporting_mta = q->cfg.hostname;
	p.sender = d->sender;
	p.envid = d->envid;
	p.ret = d->ret;
	p.orig_id = d->id_str;
	p.arrival_us = d->arrival_us ? d->arrival_us : d->submitted_us;
	p.now_us = now;
	p.rcpts = rr;
	p.rcpt_count = n;
	if (q->ops.read_body && d->body_len) {
		p.reader = desc_reader;
		p.reader_arg = &ra;
		p.body_len = d->body_len;
	}
	p.max_full_bytes = q->cfg.dsn_max_full_bytes;
	p.max_header_bytes = q->cfg.dsn_max_header_bytes;
	p.unique = d->msg_id ^ (++q->dsn_seq << 40);
	if (queue_dsn_build(&p, &msg, &len) == 0 &&
	    (!q->ops.dsn_send || q->ops.dsn_send(q->ctx, d, d->sender, msg, len) == 0))
		q->c.dsn_sent++;
	else
		q->c.dsn_failed++;
	free(msg);
	free(rr);
}

/* Every recipient of d is final: the failure/success DSN, then desc_done. */
static void desc_finish(struct queue *q, struct queue_desc *d, int64_t now)
{
	int *want = malloc((d->rcpt_count ? d->rcpt_count : 1) * sizeof(int));
	unsigned count = 0;
	bool suppressed = false;

	for (uint32_t i = 0; want && i < d->rcpt_count; i++) {
		const struct queue_desc_rcpt *r = &d->rcpts[i];
		want[i] = -1;
		if (r->state == SPOOL_RCPT_BOUNCED) {
			/* RFC 3461 4.1: without NOTIFY, failures are reported. */
			if (r->notify & SPOOL_NOTIFY_NEVER)
				suppressed = true;
			else if (r->notify == 0 || (r->notify & SPOOL_NOTIFY_FAILURE))
				want[i] = QUEUE_DSN_FAILED;
			else
				suppressed = true;
		} else if (r->state == SPOOL_RCPT_DELIVERED && (r->notify & SPOOL_NOTIFY_SUCCESS) &&
			   !(r->notify & SPOOL_NOTIFY_NEVER) && r->code) {
			want[i] = QUEUE_DSN_DELIVERED;
		}
		if (want[i] >= 0)
			count++;
	}
	if (suppressed && count == 0)
		q->c.dsn_suppressed++;
	if (want)
		send_dsn(q, d, want, count, now);
	free(want);
	if (q->ops.desc_done)
		q->ops.desc_done(q->ctx, d);
	queue_desc_free(d);
}

static void rcpt_final(struct queue_desc *d, struct queue_desc_rcpt *r, uint8_t state)
{
	r->state = state;
	if (d->pending)
		d->pending--;
}

static void rcpt_bounce(struct queue *q, struct qdest *dst, struct qtxn *t, uint32_t pos,
			uint16_t code, const char *status, const char *text,
			const struct qsession *s, bool expired, int64_t now)
{
	struct queue_desc *d = t->desc;
	struct queue_desc_rcpt *r = &d->rcpts[pos];
	char reason[QUEUE_REPLY_MAX + 64];

	if (code)
		r->code = code;
	status_from(r->status, status, code ? code : 550);
	if (text)
		set_text(&r->text, text);
	if (s && s->host[0])
		set_text(&r->remote_mta, s->host);
	r->last_attempt_us = s ? now : r->last_attempt_us;
	if (expired)
		snprintf(reason, sizeof(reason), "%s message expired: %s", r->status,
			 r->text ? r->text : "no delivery attempt succeeded");
	else
		snprintf(reason, sizeof(reason), "%s", r->text ? r->text : r->status);
	rcpt_final(d, r, SPOOL_RCPT_BOUNCED);
	CNT(q, dst, bounced, 1);
	if (expired)
		CNT(q, dst, expired, 1);
	if (q->ops.bounced)
		q->ops.bounced(q->ctx, d, r->index, reason);
	log_attempt(q, t, r, s, expired ? "expired" : "bounced", now);
}

static int64_t txn_expiry(const struct queue *q, const struct qtxn *t)
{
	/* born_us, not t->desc: the descriptor is a cache miss per message in the hot loops. */
	return t->born_us + (int64_t)q->cfg.max_age_us;
}

static void txn_free(struct queue *q, struct qtxn *t)
{
	timer_cancel(q, &t->timer);
	if (ql_linked(&t->link))
		ql_del(&t->link);
	if (t->rcpt != t->rcpt_one)
		free(t->rcpt);
	free(t);
	q->txn_count--;
}

/* The transaction's recipients are all final: free it, finish its descriptor. */
static void txn_done(struct queue *q, struct qtxn *t, int64_t now)
{
	struct queue_desc *d = t->desc;
	txn_free(q, t);
	if (d->pending == 0)
		desc_finish(q, d, now);
}

/* Bounce every recipient still in t (route failure, expiry, bad destination). */
static void txn_bounce_all(struct queue *q, struct qdest *dst, struct qtxn *t, uint16_t code,
			   const char *status, const char *text, bool expired, int64_t now)
{
	for (uint32_t j = 0; j < t->pub.rcpt_count; j++)
		rcpt_bounce(q, dst, t, t->rcpt[j], code, status, text, NULL, expired, now);
	q->c.queued -= t->pub.rcpt_count;
	t->pub.rcpt_count = 0;
	txn_done(q, t, now);
}

static void delay_dsn(struct queue *q, struct qtxn *t, int64_t now)
{
	struct queue_desc *d = t->desc;
	int *want = malloc(d->rcpt_count * sizeof(int));
	unsigned count = 0;

	if (!want)
		return;
	for (uint32_t i = 0; i < d->rcpt_count; i++)
		want[i] = -1;
	/* RFC 3461 4.1: delay notices only when NOTIFY=DELAY was asked; once. */
	for (uint32_t j = 0; j < t->pub.rcpt_count; j++) {
		struct queue_desc_rcpt *r = &d->rcpts[t->rcpt[j]];
		if ((r->notify & SPOOL_NOTIFY_DELAY) && !(r->notify & SPOOL_NOTIFY_NEVER) &&
		    r->attempts == 1) {
			want[t->rcpt[j]] = QUEUE_DSN_DELAYED;
			count++;
		}
	}
	send_dsn(q, d, want, count, now);
	free(want);
}

/*
 * The recipients left in t were deferred: schedule the next attempt from the
 * retry schedule (the last step repeats), never past the expiry, and never
 * before not_before (a backed-off destination).
 */
static void txn_schedule_retry(struct queue *q, struct qtxn *t, int64_t not_before, int64_t now)
{
	int64_t expiry = txn_expiry(q, t);
	unsigned step = t->attempts ? t->attempts - 1u : 0;
	int64_t next;

	if (step >= q->cfg.retry_count)
		step = q->cfg.retry_count - 1;
	next = now + (int64_t)q->cfg.retry_us[step];
	if (next < not_before)
		next = not_before;
	if (next > expiry)
		next = expiry;
	for (uint32_t j = 0; j < t->pub.rcpt_count; j++) {
		struct queue_desc_rcpt *r = &t->desc->rcpts[t->rcpt[j]];
		if (q->ops.deferred)
			q->ops.deferred(q->ctx, t->desc, r->index, next / 1000000, r->text);
	}
	delay_dsn(q, t, now);
	if (timer_arm(q, &t->timer, next) != 0) {
		/* No memory for the heap: drop it; the spool retries after restart. */
		MX_ERR("%s: retry timer: out of memory", t->desc->id_str);
	}
}

/* Defer every recipient of t with one reason (lost connection, dest failure). */
static void txn_defer_all(struct queue *q, struct qdest *dst, struct qtxn *t, const char *status,
			  const char *text, const struct qsession *s, int64_t not_before,
			  int64_t now)
{
	bool expired = now >= txn_expiry(q, t);

	t->attempts++;
	for (uint32_t j = 0; j < t->pub.rcpt_count; j++) {
		struct queue_desc_rcpt *r = &t->desc->rcpts[t->rcpt[j]];
		if (expired) {
			rcpt_bounce(q, dst, t, t->rcpt[j], 0, "4.4.7", NULL, s, true, now);
			continue;
		}
		if (r->attempts < UINT16_MAX - 1)
			r->attempts++;
		r->state = SPOOL_RCPT_DEFERRED;
		r->code = 0;
		status_from(r->status, status, 400);
		set_text(&r->text, text);
		if (s && s->host[0])
			set_text(&r->remote_mta, s->host);
		r->last_attempt_us = now;
		CNT(q, dst, deferred, 1);
		log_attempt(q, t, r, s, "deferred", now);
	}
	if (expired) {
		q->c.queued -= t->pub.rcpt_count;
		t->pub.rcpt_count = 0;
		txn_done(q, t, now);
		return;
	}
	txn_schedule_retry(q, t, not_before, now);
}

/* A destination failed as a whole: back off, defer what waits in its FIFO. */
static void dest_fail(struct queue *q, struct qdest *d, const char *reason, int64_t now)
{
	qi_sanitize(d->last_error, sizeof(d->last_error), reason ? reason : "failed");
	if (now >= d->backoff_until) {
		uint64_t b = d->backoff_us ? d->backoff_us * 2 : q->cfg.backoff_initial_us;
		if (b > q->cfg.backoff_max_us)
			b = q->cfg.backoff_max_us;
		d->backoff_us = b;
		d->backoff_until = now + (int64_t)b;
		CNT(q, d, backoffs, 1);
		MX_INFO("queue: destination %s backs off for %" PRIu64 " s: %s", d->name,
			b / 1000000, d->last_error);
	}
	d->state = QUEUE_DS_BACKOFF;
	timer_arm(q, &d->timer, d->backoff_until);
	while (!ql_empty(&d->fifo)) {
		struct qtxn *t = container_of(d->fifo.next, struct qtxn, link);
		ql_del(&t->link);
		d->fifo_len--;
		d->c.queued -= t->pub.rcpt_count;
		txn_defer_all(q, d, t, "4.4.1", d->last_error, NULL, d->backoff_until, now);
	}
}

static void dest_enqueue(struct queue *q, struct qdest *d, struct qtxn *t, int64_t now)
{
	ql_add_tail(&d->fifo, &t->link);
	d->fifo_len++;
	d->c.queued += t->pub.rcpt_count;
	t->queued_us = now;
	t->dispatched_us = 0;
	dest_dirty(q, d);
}

/* ---- dispatch --------------------------------------------------------------------------- */

static bool rate_take(struct queue *q, struct qdest *d, int64_t now, int64_t *wake)
{
	uint32_t rate = q->cfg.msgs_per_second;
	if (rate == 0)
		return true;
	/* GCRA form of a token bucket: T per message, burst tolerance tau. */
	int64_t T = 1000000 / rate ? 1000000 / rate : 1;
	uint32_t burst = q->cfg.rate_burst ? q->cfg.rate_burst : rate;
	int64_t tau = (int64_t)(burst - 1) * T;
	if (now < d->rate_tat - tau) {
		*wake = d->rate_tat - tau;
		return false;
	}
	d->rate_tat = (d->rate_tat > now ? d->rate_tat : now) + T;
	return true;
}

/* Returns false when out of action slots (the destination stays dirty). */
static bool dispatch(struct queue *q, struct qdest *d, int64_t now, struct queue_action *out,
		     unsigned max, unsigned *n)
{
	if (d->suspended || q->hold_all)
		return true; /* its FIFO waits for queue_suspend(false) */
	if (d->state == QUEUE_DS_BACKOFF) {
		if (now < d->backoff_until)
			return true;
		d->state = d->has_route ? QUEUE_DS_READY : QUEUE_DS_NEED_ROUTE;
	}
	while (d->fifo_len) {
		struct qtxn *t = container_of(d->fifo.next, struct qtxn, link);

		if (now >= txn_expiry(q, t)) {
			/* Expired while waiting: bounce it rather than open a connection. */
			ql_del(&t->link);
			d->fifo_len--;
			d->c.queued -= t->pub.rcpt_count;
			txn_bounce_all(q, d, t, 0, "4.4.7", NULL, true, now);
			continue;
		}
		if (*n == max)
			return false;
		/*
		 * An idle session first, then one that carries transactions but has
		 * room for another (pipelined behind them: queue_conn_depth), then a
		 * new connection.
		 */
		struct qsession *s = NULL;
		if (d->idle_count)
			s = container_of(d->idle.next, struct qsession, link);
		else if (!ql_empty(&d->room))
			s = container_of(d->room.next, struct qsession, rlink);
		if (s) {
			int64_t wake;

			if (s->state == S_IDLE && sess_too_old(q, s, now)) {
				sess_close(q, s);
				continue;
			}
			if (s->state == S_BUSY && sess_too_old(q, s, now)) {
				ql_del(&s->rlink); /* ends when its transactions do */
				sess_retire(s);
				continue;
			}
			ql_del(&t->link);
			d->fifo_len--;
			d->c.queued -= t->pub.rcpt_count;
			if (!rate_take(q, d, now, &wake)) {
				ql_add_head(&d->fifo, &t->link);
				d->fifo_len++;
				d->c.queued += t->pub.rcpt_count;
				CNT(q, d, rate_limited, 1);
				timer_arm(q, &d->timer, wake);
				return true;
			}
			sess_unidle(q, s);
			s->state = S_BUSY;
			if (s->msgs + s->ntx > 0)
				CNT(q, d, sessions_reused, 1);
			if (s->ntx > 0)
				q->c.txns_pipelined++;
			s->txns[(s->tx_head + s->ntx) % QUEUE_PIPELINE_MAX] = t;
			s->ntx++;
			sess_room_update(q, s, now, false);
			if (s->msgs + s->ntx >= q->cfg.msgs_per_connection)
				sess_retire(s); /* its last message: a successor may connect now */
			t->dispatched_us = now;
			CNT(q, d, txns, 1);
			q->c.queued -= t->pub.rcpt_count;
			CNT(q, d, in_flight, t->pub.rcpt_count);
			out[*n] = (struct queue_action){.type = QUEUE_ACT_SEND,
							.dest = HANDLE(d->gen, d->slot),
							.dest_name = d->name,
							.session = sess_handle(q, s),
							.txn = &t->pub,
							.user = s->user};
			(*n)++;
			continue;
		}
		if (d->fifo_len <= d->connecting)
			return true; /* the connections on their way will take them */
		if (d->sessions >= q->cfg.max_connections) {
			CNT(q, d, conn_limit_hits, 1);
			return true; /* a session coming back idle or closing wakes us */
		}
		/*
		 * Ramp (initial_connections, as Postfix's initial_destination_concurrency,
		 * then a slow start): at most max(initial_connections, sessions up) connect
		 * at once.  The first one up proves the host answers and leaves TLS
		 * tickets, so the next ones resume instead of each doing a full handshake
		 * (TLS 1.3 tickets are single-use: a server's one or two per handshake
		 * cannot serve ten connections opened together), and a destination that
		 * is down costs one attempt, not max_connections.
		 */
		if (q->cfg.initial_connections) {
			uint32_t up = d->sessions - d->connecting;
			uint32_t allowed =
				up > q->cfg.initial_connections ? up : q->cfg.initial_connections;
			if (d->connecting >= allowed)
				return true; /* queue_conn_up or _down makes it dirty again */
		}
		/*
		 * The queue-wide budget (Postfix's process limit, shared by all
		 * destinations): a destination that already has a session that takes
		 * mail opens another only while the core has fewer than
		 * connection_budget sessions connecting or busy.  A hundred busy
		 * destinations then get one connection each instead of ten: the same
		 * mail over a tenth of the handshakes and of the data in flight, which
		 * the core cannot use anyway.  Its own sessions wake it (room, idle).
		 * Decided in queue_poll's second pass, once every destination has
		 * put its idle sessions back to work: a session that came up idle
		 * in this turn is not spare room.
		 */
		if (q->cfg.connection_budget && d->sessions > d->retiring) {
			/* (The count only grows during a poll: full now, full in pass two.) */
			if (sess_busy_count(q) >= q->cfg.connection_budget) {
				q->c.budget_hits++;
				return true;
			}
			if (q->extra_later) {
				if (!ql_linked(&d->extra))
					ql_add_tail(&q->extra, &d->extra);
				return true;
			}
		}
		/* Strict: a route TTL of 0 still serves the dispatch that asked for it. */
		if (!d->has_route || now > d->route_until) {
			if (d->state != QUEUE_DS_RESOLVING) {
				d->state = QUEUE_DS_RESOLVING;
				out[*n] =
					(struct queue_action){.type = QUEUE_ACT_RESOLVE,
							      .dest = HANDLE(d->gen, d->slot),
							      .dest_name = dest_resolve_name(q, d),
							      .mx = d->mx};
				(*n)++;
			}
			return true;
		}
		if (q->sfree_count == 0) {
			q->c.session_limit_hits++;
			if (!ql_linked(&d->starved))
				ql_add_tail(&q->starved, &d->starved);
			return true;
		}
		s = &q->sess[q->sfree[--q->sfree_count]];
		s->gen++;
		if (s->gen == 0)
			s->gen = 1;
		s->state = S_CONNECTING;
		s->dest = d;
		s->ntx = 0;
		s->tx_head = 0;
		s->depth = 1;
		s->retired = false;
		s->user = NULL;
		s->msgs = 0;
		s->connect_us = now;
		s->up_us = 0;
		s->host[0] = 0;
		s->addr = 0;
		s->port = d->port;
		ql_init(&s->link);
		ql_init(&s->glink);
		ql_init(&s->rlink);
		d->sessions++;
		d->connecting++;
		CNT(q, d, conns_open, 1);
		CNT(q, d, conns_opened, 1);
		out[*n] = (struct queue_action){.type = QUEUE_ACT_CONNECT,
						.dest = HANDLE(d->gen, d->slot),
						.dest_name = d->name,
						.session = sess_handle(q, s),
						.route = &d->route,
						.port = d->port};
		(*n)++;
	}
	return true;
}

static void txn_due(struct queue *q, struct qtxn *t, int64_t now)
{
	struct qdest *d;

	if (now >= txn_expiry(q, t)) {
		txn_bounce_all(q, NULL, t, 0, "4.4.7", NULL, true, now);
		return;
	}
	d = dest_get(q, t->desc->dest, t->desc->dest_kind);
	if (!d) {
		/* Destination table full: try again after the initial backoff. */
		timer_arm(q, &t->timer, now + (int64_t)q->cfg.backoff_initial_us);
		return;
	}
	dest_enqueue(q, d, t, now);
}

int queue_poll(struct queue *q, int64_t now, struct queue_action *out, unsigned max)
{
	unsigned n = 0;

	while (q->heap_len && q->heap[0]->when <= now) {
		struct qtimer *tm = q->heap[0];
		timer_cancel(q, tm);
		if (tm->kind == T_TXN) {
			txn_due(q, container_of(tm, struct qtxn, timer), now);
		} else {
			struct qdest *d = container_of(tm, struct qdest, timer);
			if (d->state == QUEUE_DS_BACKOFF && now >= d->backoff_until)
				d->state = d->has_route ? QUEUE_DS_READY : QUEUE_DS_NEED_ROUTE;
			if (d->fifo_len)
				dest_dirty(q, d);
			else
				dest_maybe_free(q, d, now);
		}
	}
	/*
	 * Dispatch before the idle timeout: an idle session whose destination
	 * has mail waiting takes it (with idle_timeout = 0 a session would
	 * otherwise be closed before it could ever be used).
	 */
	for (int pass = 0; pass < 2; pass++) {
		/* The second pass: the destinations that want one more connection. */
		q->extra_later = pass == 0;
		while (pass == 1 && !ql_empty(&q->extra)) {
			struct qdest *d = container_of(q->extra.next, struct qdest, extra);
			ql_del(&d->extra);
			dest_dirty(q, d);
		}
		while (!ql_empty(&q->dirty) && n < max) {
			struct qdest *d = container_of(q->dirty.next, struct qdest, dirty);
			ql_del(&d->dirty);
			if (!dispatch(q, d, now, out, max, &n)) {
				/* out of action slots: first in line next time (once listed) */
				if (ql_linked(&d->dirty))
					ql_del(&d->dirty);
				ql_add_head(&q->dirty, &d->dirty);
				break;
			}
			dest_maybe_free(q, d, now);
		}
	}
	q->extra_later = false;
	/*
	 * Destinations wait for a session slot (q->starved) while others hold
	 * idle sessions: close the oldest idle ones, one per waiting
	 * destination less those already closing for them, at most
	 * EVICT_PER_POLL a turn.  A thousand small destinations each keeping a
	 * session for idle_timeout would otherwise hold every slot, and the few
	 * that carry most of the mail would wait out their idle timeouts
	 * (fleet-plain at 45k/s: deliveries fell to 9k/s in 2 of 3 runs).
	 * Postfix's connection cache likewise drops its oldest entry when full.
	 */
	if (q->sfree_count == 0 && !ql_empty(&q->starved)) {
		uint32_t want = 0;
		for (struct qlink *e = q->starved.next; e != &q->starved && want < EVICT_PER_POLL;
		     e = e->next)
			want++;
		want = want > q->evicting ? want - q->evicting : 0;
		while (want > 0 && !ql_empty(&q->idle)) {
			struct qsession *s = container_of(q->idle.next, struct qsession, glink);
			sess_close(q, s);
			s->evicted = true;
			q->evicting++;
			q->c.idle_evictions++;
			want--;
		}
	}
	/* Idle sessions, oldest first: idle timeout or connection age. */
	while (!ql_empty(&q->idle)) {
		struct qsession *s = container_of(q->idle.next, struct qsession, glink);
		if (now < s->idle_since_us + (int64_t)q->cfg.idle_timeout_us &&
		    now < s->up_us + (int64_t)q->cfg.conn_max_age_us)
			break;
		sess_close(q, s);
	}
	while (!ql_empty(&q->closing) && n < max) {
		struct qsession *s = container_of(q->closing.next, struct qsession, link);
		ql_del(&s->link);
		out[n++] = (struct queue_action){
			.type = QUEUE_ACT_CLOSE, .session = sess_handle(q, s), .user = s->user};
		s->state = S_QUITTING;
	}
	/* Closing sessions made destinations dirty again: free the idle ones. */
	return (int)n;
}

/* ---- events --------------------------------------------------------------------------- */

static bool rcpt_live(const struct queue_desc_rcpt *r)
{
	return r->state == SPOOL_RCPT_QUEUED || r->state == SPOOL_RCPT_DEFERRED;
}

static struct qtxn *txn_new(struct queue *q, struct queue_desc *d, uint32_t cap, int64_t now)
{
	struct qtxn *t = calloc(1, sizeof(*t));

	if (!t)
		return NULL;
	t->rcpt = cap <= 1 ? t->rcpt_one : calloc(cap, sizeof(uint32_t));
	if (!t->rcpt) {
		free(t);
		return NULL;
	}
	t->desc = d;
	t->born_us = d->arrival_us ? d->arrival_us : now; /* now: what submitted_us gets */
	t->pub.id = ++q->next_txn_id;
	t->pub.desc = d;
	t->pub.rcpt = t->rcpt;
	t->timer.kind = T_TXN;
	t->queued_us = now;
	ql_init(&t->link);
	return t;
}

int queue_submit(struct queue *q, struct queue_desc *d, int64_t not_before, int64_t now)
{
	uint32_t live = 0, per = q->cfg.rcpts_per_txn, ntxn, i = 0;
	struct qdest *dst = NULL;
	struct qtxn **txns;

	if (!d || d->rcpt_count == 0 || !d->sender)
		return -EINVAL;
	for (uint32_t k = 0; k < d->rcpt_count; k++)
		live += rcpt_live(&d->rcpts[k]);
	if (d->dest_kind == QUEUE_DEST_INVALID)
		per = live ? live : 1; /* one transaction: it bounces at once */
	ntxn = (live + per - 1) / per;
	if (q->txn_count + ntxn > q->cfg.max_transactions) {
		q->c.txn_limit_hits++;
		return -ENOBUFS;
	}
	if (d->dest_kind != QUEUE_DEST_INVALID && not_before <= now && live) {
		dst = dest_get(q, d->dest, d->dest_kind);
		if (!dst)
			return -ENOBUFS;
	}
	txns = calloc(ntxn ? ntxn : 1, sizeof(*txns));
	for (uint32_t k = 0; txns && k < ntxn; k++) {
		txns[k] = txn_new(q, d, per < live ? per : live, now);
		if (!txns[k]) {
			while (k--) {
				if (txns[k]->rcpt != txns[k]->rcpt_one)
					free(txns[k]->rcpt);
				free(txns[k]);
			}
			free(txns);
			txns = NULL;
		}
	}
	if (!txns) {
		if (dst)
			dest_maybe_free(q, dst, now);
		return -ENOMEM;
	}
	d->pending = live;
	d->submitted_us = now;
	for (uint32_t k = 0; k < ntxn; k++) {
		struct qtxn *t = txns[k];
		uint32_t cnt = 0;
		for (; i < d->rcpt_count && cnt < per; i++)
			if (rcpt_live(&d->rcpts[i]))
				t->rcpt[cnt++] = i;
		t->pub.rcpt_count = cnt;
		q->txn_count++;
		q->c.queued += cnt;
	}
	if (live == 0) {
		free(txns);
		desc_finish(q, d, now);
		return 0;
	}
	if (d->dest_kind == QUEUE_DEST_INVALID) {
		/* RFC 3463 5.1.2: the destination system address is unusable. */
		txn_bounce_all(q, NULL, txns[0], 550, "5.1.2",
			       "550 5.1.2 Bad destination system address", false, now);
		free(txns);
		return 0;
	}
	for (uint32_t k = 0; k < ntxn; k++) {
		if (not_before > now)
			timer_arm(q, &txns[k]->timer, not_before);
		else
			dest_enqueue(q, dst, txns[k], now);
	}
	free(txns);
	return 0;
}

int queue_route_result(struct queue *q, uint64_t handle, const struct dns_mail_route *route,
		       int64_t now)
{
	struct qdest *d = dest_by_handle(q, handle);
	char text[QUEUE_REPLY_MAX];

	if (!d)
		return -ENOENT;
	if (!route)
		return -EINVAL;
	if (route->result == DNS_MAIL_OK && route->host_count > 0 &&
	    route->host_count <= DNS_MAIL_MAX_HOSTS) {
		d->route = *route;
		d->route.reason = NULL;
		d->has_route = true;
		/* [queue] route_ttl, or sooner when the DNS records expire sooner. */
		uint64_t ttl = q->cfg.route_ttl_us;
		if (route->ttl_s != 0 && (uint64_t)route->ttl_s * 1000000 < ttl)
			ttl = (uint64_t)route->ttl_s * 1000000; /* 0: not given */
		d->route_until = now + (int64_t)ttl;
		if (d->state != QUEUE_DS_BACKOFF)
			d->state = QUEUE_DS_READY;
		dest_dirty(q, d);
		return 0;
	}
	snprintf(text, sizeof(text), "%u %s %s", route->reply ? route->reply : 451,
		 route->status[0] ? route->status : "4.4.3",
		 route->reason ? route->reason : "no route to destination");
	d->state = QUEUE_DS_NEED_ROUTE;
	d->has_route = false;
	if (route->result == DNS_MAIL_PERMFAIL) {
		uint16_t code = route->reply >= 500 && route->reply < 600 ? route->reply : 550;
		const char *st = route->status[0] == '5' ? route->status : "5.4.4";
		while (!ql_empty(&d->fifo)) {
			struct qtxn *t = container_of(d->fifo.next, struct qtxn, link);
			ql_del(&t->link);
			d->fifo_len--;
			d->c.queued -= t->pub.rcpt_count;
			txn_bounce_all(q, d, t, code, st, text, false, now);
		}
	} else {
		dest_fail(q, d, text, now);
	}
	dest_maybe_free(q, d, now);
	return 0;
}

int queue_conn_up(struct queue *q, uint64_t session, const char *host, uint32_t addr, uint16_t port,
		  int64_t now)
{
	struct qsession *s = sess_by_handle(q, session);

	if (!s || s->state != S_CONNECTING)
		return -ENOENT;
	s->dest->connecting--;
	snprintf(s->host, sizeof(s->host), "%s", host ? host : "");
	s->addr = addr;
	s->port = port;
	s->up_us = now;
	/* A working connection ends the destination's backoff. */
	s->dest->backoff_us = 0;
	s->dest->backoff_until = 0;
	if (s->dest->state == QUEUE_DS_BACKOFF)
		s->dest->state = QUEUE_DS_READY;
	sess_make_idle(q, s, now);
	return 0;
}

int queue_conn_tls(struct queue *q, uint64_t session, bool resumed)
{
	struct qsession *s = sess_by_handle(q, session);

	if (!s)
		return -ENOENT;
	if (resumed)
		CNT(q, s->dest, tls_resumed, 1);
	else
		CNT(q, s->dest, tls_full, 1);
	return 0;
}

int queue_conn_depth(struct queue *q, uint64_t session, unsigned depth)
{
	struct qsession *s = sess_by_handle(q, session);

	if (!s)
		return -ENOENT;
	if (depth > q->cfg.pipeline_depth)
		depth = q->cfg.pipeline_depth;
	if (depth > QUEUE_PIPELINE_MAX)
		depth = QUEUE_PIPELINE_MAX;
	s->depth = (uint8_t)(depth ? depth : 1);
	/* Busy already: room for more now (dispatch checks the age with the real time). */
	sess_room_update(q, s, s->up_us, true);
	return 0;
}

int queue_session_set_user(struct queue *q, uint64_t session, void *user)
{
	struct qsession *s = sess_by_handle(q, session);

	if (!s)
		return -ENOENT;
	s->user = user;
	return 0;
}

int queue_conn_down(struct queue *q, uint64_t session, const char *reason, int64_t now)
{
	struct qsession *s = sess_by_handle(q, session);
	struct qdest *d;

	if (!s)
		return -ENOENT;
	d = s->dest;
	if (s->state == S_CONNECTING) {
		d->connecting--;
		CNT(q, d, conn_failures, 1);
	}
	sess_unidle(q, s);
	d->sessions--;
	CNT(q, d, conns_open, -1);
	if (s->state == S_CONNECTING) {
		dest_fail(q, d, reason ? reason : "connection failed", now);
	} else if (s->state == S_BUSY && s->ntx) {
		/* Every transaction in flight, oldest first: none lost, none sent twice. */
		char text[QUEUE_REPLY_MAX];
		snprintf(text, sizeof(text), "lost connection with %s: %s",
			 s->host[0] ? s->host : d->name, reason ? reason : "closed");
		while (s->ntx) {
			struct qtxn *t = s->txns[s->tx_head];
			s->tx_head = (uint8_t)((s->tx_head + 1) % QUEUE_PIPELINE_MAX);
			s->ntx--;
			q->c.in_flight -= t->pub.rcpt_count;
			d->c.in_flight -= t->pub.rcpt_count;
			q->c.queued += t->pub.rcpt_count;
			txn_defer_all(q, d, t, "4.4.2", text, s, 0, now);
		}
	}
	s->state = S_CLOSING; /* no CLOSE action: the transport already closed it */
	sess_release(q, s);
	dest_dirty(q, d);
	return 0;
}

int queue_txn_result(struct queue *q, uint64_t session, const struct queue_rcpt_result *res,
		     unsigned n, int64_t now)
{
	struct qsession *s = sess_by_handle(q, session);
	struct qdest *d;
	struct qtxn *t;
	uint32_t keep = 0;

	if (!s || s->state != S_BUSY || !s->ntx)
		return -ENOENT;
	t = sess_oldest(s); /* results come in the order the transactions were sent */
	if (!res || n != t->pub.rcpt_count)
		return -EINVAL;
	d = s->dest;
	q->c.in_flight -= n;
	d->c.in_flight -= n;
	bool expired = now >= txn_expiry(q, t);
	for (unsigned j = 0; j < n; j++) {
		uint32_t pos = t->rcpt[j];
		struct queue_desc_rcpt *r = &t->desc->rcpts[pos];
		uint16_t code = res[j].code;

		if (r->attempts < UINT16_MAX - 1)
			r->attempts++;
		r->last_attempt_us = now;
		set_text(&r->remote_mta, s->host[0] ? s->host : NULL);
		if (code >= 200 && code < 300) {
			r->code = code;
			status_from(r->status, res[j].status, code);
			set_text(&r->text, res[j].text);
			rcpt_final(t->desc, r, SPOOL_RCPT_DELIVERED);
			CNT(q, d, sent, 1);
			if (q->ops.delivered)
				q->ops.delivered(q->ctx, t->desc, r->index);
			log_attempt(q, t, r, s, "sent", now);
		} else if (code >= 500 && code < 600) {
			rcpt_bounce(q, d, t, pos, code, res[j].status, res[j].text, s, false, now);
		} else if (expired) {
			set_text(&r->text, res[j].text);
			rcpt_bounce(q, d, t, pos, 0, "4.4.7", NULL, s, true, now);
		} else {
			/* 4xx, and anything unexpected, is temporary (RFC 5321 4.2.1). */
			r->code = code;
			status_from(r->status, res[j].status, 400);
			set_text(&r->text, res[j].text);
			r->state = SPOOL_RCPT_DEFERRED;
			CNT(q, d, deferred, 1);
			log_attempt(q, t, r, s, "deferred", now);
			t->rcpt[keep++] = pos;
		}
	}
	s->msgs++;
	s->tx_head = (uint8_t)((s->tx_head + 1) % QUEUE_PIPELINE_MAX);
	s->ntx--;
	if (s->ntx)
		sess_room_update(q, s, now, true);
	else if (ql_linked(&s->rlink))
		ql_del(&s->rlink);
	if (s->ntx)
		; /* still busy with the ones behind it */
	else if (sess_too_old(q, s, now))
		sess_close(q, s);
	else
		sess_make_idle(q, s, now);
	t->pub.rcpt_count = keep;
	if (keep) {
		q->c.queued += keep;
		t->attempts++;
		txn_schedule_retry(q, t, 0, now);
	} else {
		txn_done(q, t, now);
	}
	return 0;
}

/* ---- create, destroy, introspection ------------------------------------------------------ */

struct queue *queue_create(const struct queue_config *cfg, const struct queue_ops *ops, void *ctx)
{
	struct queue *q;
	uint32_t buckets = 16;

	if (!cfg || cfg->max_destinations == 0 || cfg->max_sessions == 0 ||
	    cfg->rcpts_per_txn == 0 || cfg->retry_count == 0 ||
	    cfg->retry_count > QUEUE_RETRY_STEPS_MAX || cfg->max_connections == 0 ||
	    cfg->msgs_per_connection == 0)
		return NULL;
	q = calloc(1, sizeof(*q));
	if (!q)
		return NULL;
	q->cfg = *cfg;
	if (ops)
		q->ops = *ops;
	q->ctx = ctx;
	while (buckets < cfg->max_destinations && buckets < (1u << 24))
		buckets <<= 1;
	q->bucket_mask = buckets - 1;
	q->buckets = calloc(buckets, sizeof(*q->buckets));
	q->dslot = calloc(cfg->max_destinations, sizeof(*q->dslot));
	q->dgen = calloc(cfg->max_destinations, sizeof(*q->dgen));
	q->dfree = calloc(cfg->max_destinations, sizeof(*q->dfree));
	q->sess = calloc(cfg->max_sessions, sizeof(*q->sess));
	q->sfree = calloc(cfg->max_sessions, sizeof(*q->sfree));
	if (!q->buckets || !q->dslot || !q->dgen || !q->dfree || !q->sess || !q->sfree) {
		queue_destroy(q);
		return NULL;
	}
	for (uint32_t i = 0; i < cfg->max_destinations; i++)
		q->dfree[i] = cfg->max_destinations - 1 - i;
	q->dfree_count = cfg->max_destinations;
	for (uint32_t i = 0; i < cfg->max_sessions; i++)
		q->sfree[i] = cfg->max_sessions - 1 - i;
	q->sfree_count = cfg->max_sessions;
	ql_init(&q->dirty);
	ql_init(&q->idle);
	ql_init(&q->closing);
	ql_init(&q->starved);
	ql_init(&q->extra);
	return q;
}

static void free_desc_ref(struct queue_desc **seen, size_t *nseen, struct queue_desc *d)
{
	if (d->pending == UINT32_MAX) /* already collected */
		return;
	d->pending = UINT32_MAX;
	seen[(*nseen)++] = d;
}

void queue_destroy(struct queue *q)
{
	struct queue_desc **seen;
	size_t nseen = 0;

	if (!q)
		return;
	/* Collect transactions from every place they can be, then their descriptors. */
	seen = calloc(q->txn_count + 1, sizeof(*seen));
	for (uint32_t i = 0; q->sess && i < q->cfg.max_sessions; i++) {
		struct qsession *s = &q->sess[i];
		while (s->state == S_BUSY && s->ntx) {
			struct qtxn *t = s->txns[s->tx_head];
			s->tx_head = (uint8_t)((s->tx_head + 1) % QUEUE_PIPELINE_MAX);
			s->ntx--;
			if (seen)
				free_desc_ref(seen, &nseen, t->desc);
			txn_free(q, t);
		}
	}
	for (uint32_t i = 0; q->dslot && i < q->cfg.max_destinations; i++) {
		struct qdest *d = q->dslot[i];
		if (!d)
			continue;
		while (!ql_empty(&d->fifo)) {
			struct qtxn *t = container_of(d->fifo.next, struct qtxn, link);
			if (seen)
				free_desc_ref(seen, &nseen, t->desc);
			txn_free(q, t);
		}
		timer_cancel(q, &d->timer);
		free(d);
	}
	while (q->heap_len) {
		struct qtimer *tm = q->heap[0];
		timer_cancel(q, tm);
		if (tm->kind == T_TXN) {
			struct qtxn *t = container_of(tm, struct qtxn, timer);
			if (seen)
				free_desc_ref(seen, &nseen, t->desc);
			txn_free(q, t);
		}
	}
	for (size_t i = 0; i < nseen; i++)
		queue_desc_free(seen[i]);
	free(seen);
	free(q->heap);
	free(q->buckets);
	free(q->dslot);
	free(q->dgen);
	free(q->dfree);
	free(q->sess);
	free(q->sfree);
	free(q);
}

void queue_get_counters(const struct queue *q, struct queue_counters *out)
{
	*out = q->c;
}

int queue_dest_foreach(const struct queue *q, int (*fn)(void *arg, const struct queue_dest_info *),
		       void *arg)
{
	for (uint32_t i = 0; i < q->cfg.max_destinations; i++) {
		const struct qdest *d = q->dslot[i];
		struct queue_dest_info info;
		int rc;

		if (!d)
			continue;
		info.name = d->name;
		info.kind = (enum queue_dest_kind)d->kind;
		info.state = (enum queue_dest_state)d->state;
		info.handle = HANDLE(d->gen, d->slot);
		info.fifo_len = d->fifo_len;
		info.sessions = d->sessions;
		info.idle_sessions = d->idle_count;
		info.backoff_until_us = d->backoff_until;
		info.backoff_us = d->backoff_us;
		info.suspended = d->suspended || q->hold_all;
		info.c = d->c;
		rc = fn(arg, &info);
		if (rc)
			return rc;
	}
	return 0;
}

int64_t queue_next_timer(const struct queue *q)
{
	int64_t next = q->heap_len ? q->heap[0]->when : INT64_MAX;
	if (!ql_empty(&q->idle)) {
		const struct qsession *s = container_of(q->idle.next, struct qsession, glink);
		int64_t t = s->idle_since_us + (int64_t)q->cfg.idle_timeout_us;
		int64_t age = s->up_us + (int64_t)q->cfg.conn_max_age_us;
		if (age < t)
			t = age;
		if (t < next)
			next = t;
	}
	if (!ql_empty(&q->dirty) || !ql_empty(&q->closing))
		next = 0; /* work is waiting: poll now */
	return next;
}

/* ---- operator requests ---------------------------------------------------------------- */

static uint8_t kind_of_name(const struct queue *q, const char *name)
{
	if (q->cfg.smarthost_set && name_eq(name, q->cfg.smarthost_name))
		return QUEUE_DEST_SMARTHOST;
	return name[0] == '[' ? QUEUE_DEST_LITERAL : QUEUE_DEST_DOMAIN;
}

int queue_flush(struct queue *q, const char *dest, int64_t now)
{
	int n = 0;
	bool found = dest == NULL;

	/* Waiting transactions first: collect, since re-arming reorders the heap. */
	struct qtxn **due = malloc((q->heap_len ? q->heap_len : 1) * sizeof(*due));
	uint32_t nd = 0;
	if (due == NULL)
		return -ENOMEM;
	for (uint32_t i = 0; i < q->heap_len; i++) {
		struct qtimer *tm = q->heap[i];
		if (tm->kind != T_TXN || tm->when <= now)
			continue;
		struct qtxn *t = container_of(tm, struct qtxn, timer);
		if (dest == NULL || name_eq(t->desc->dest, dest))
			due[nd++] = t;
	}
	for (uint32_t i = 0; i < nd; i++) {
		timer_cancel(q, &due[i]->timer);
		if (timer_arm(q, &due[i]->timer, now) == 0)
			n++;
	}
	free(due);
	found = found || n > 0;
	/* Destinations backing off: the backoff ends now (its length is kept). */
	for (uint32_t i = 0; i < q->cfg.max_destinations; i++) {
		struct qdest *d = q->dslot[i];
		if (d == NULL || (dest != NULL && !name_eq(d->name, dest)))
			continue;
		found = true;
		if (d->state == QUEUE_DS_BACKOFF) {
			d->backoff_until = now;
			d->state = d->has_route ? QUEUE_DS_READY : QUEUE_DS_NEED_ROUTE;
			timer_cancel(q, &d->timer);
		}
		if (d->fifo_len) {
			dest_dirty(q, d);
			n++;
		}
	}
	return found ? n : -ENOENT;
}

int queue_suspend(struct queue *q, const char *dest, bool suspend, int64_t now)
{
	if (strcmp(dest, QUEUE_HOLD_ALL) == 0) {
		/* Every destination, present and future; a destination's own hold stays. */
		q->hold_all = suspend;
		if (!suspend)
			for (uint32_t i = 0; i < q->cfg.max_destinations; i++)
				if (q->dslot[i] && q->dslot[i]->fifo_len)
					dest_dirty(q, q->dslot[i]);
		return 0;
	}
	struct qdest *d = suspend ? dest_get(q, dest, kind_of_name(q, dest)) : dest_find(q, dest);
	if (d == NULL)
		return suspend ? -ENOSPC : -ENOENT;
	d->suspended = suspend;
	if (!suspend) {
		if (d->fifo_len)
			dest_dirty(q, d);
		else
			dest_maybe_free(q, d, now);
	}
	return 0;
}

void queue_reconfigure(struct queue *q, const struct queue_config *c)
{
	/* Limits and schedules only: the tables keep the sizes they were made with. */
	q->cfg.max_connections = c->max_connections;
	q->cfg.initial_connections = c->initial_connections;
	q->cfg.connection_budget = c->connection_budget;
	q->cfg.msgs_per_connection = c->msgs_per_connection;
	q->cfg.msgs_per_second = c->msgs_per_second;
	q->cfg.rate_burst = c->rate_burst;
	q->cfg.rcpts_per_txn = c->rcpts_per_txn;
	q->cfg.pipeline_depth = c->pipeline_depth; /* sessions told their depth later get it */
	q->cfg.backoff_initial_us = c->backoff_initial_us;
	q->cfg.backoff_max_us = c->backoff_max_us;
	q->cfg.idle_timeout_us = c->idle_timeout_us;
	q->cfg.conn_max_age_us = c->conn_max_age_us;
	q->cfg.route_ttl_us = c->route_ttl_us;
	memcpy(q->cfg.retry_us, c->retry_us, sizeof(q->cfg.retry_us));
	q->cfg.retry_count = c->retry_count;
	q->cfg.max_age_us = c->max_age_us;
	q->cfg.dsn_max_full_bytes = c->dsn_max_full_bytes;
	q->cfg.dsn_max_header_bytes = c->dsn_max_header_bytes;
	/* Destinations held back by the old connection limit may go on now. */
	for (uint32_t i = 0; i < q->cfg.max_destinations; i++)
		if (q->dslot[i] != NULL && q->dslot[i]->fifo_len)
			dest_dirty(q, q->dslot[i]);
}

int queue_retry_foreach(const struct queue *q,
			int (*fn)(void *arg, const char *dest, uint32_t rcpts, int64_t when_us),
			void *arg)
{
	for (uint32_t i = 0; i < q->heap_len; i++) {
		const struct qtimer *tm = q->heap[i];
		if (tm->kind != T_TXN)
			continue;
		const struct qtxn *t = container_of(tm, struct qtxn, timer);
		int rc = fn(arg, t->desc->dest, t->pub.rcpt_count, tm->when);
		if (rc)
			return rc;
	}
	return 0;
}

int queue_conn_closed(struct queue *q, uint64_t session, int64_t now)
{
	uint32_t slot = (uint32_t)session, gen = (uint32_t)(session >> 32);
	if (slot >= q->cfg.max_sessions || q->sess[slot].gen != gen ||
	    q->sess[slot].state != S_QUITTING)
		return -ENOENT;
	struct qsession *s = &q->sess[slot];
	struct qdest *d = s->dest;
	d->sessions--;
	CNT(q, d, conns_open, -1);
	sess_release(q, s);
	dest_dirty(q, d); /* its slot is free: waiting mail may connect, or it may be forgotten */
	(void)now;
	return 0;
}
