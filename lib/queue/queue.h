/*
 * queue.h - the delivery queue manager: per-destination queues, scheduling,
 * limits, retries with backoff, expiry and DSN (bounce) generation.
 *
 * Transport-agnostic and network-free: the queue decides what to send where
 * and when; the owner core's loop executes those decisions with the SMTP
 * client and feeds the results back.  Usage:
 *
 *   accepting core:  queue_split(cfg, id, env, states, loc, descs, max)
 *                    -> one struct queue_desc per destination; hand each to
 *                    core queue_dest_owner(desc->dest, n_cores) (rte_ring).
 *   owner core:      queue_submit(q, desc, not_before, now)   (takes ownership)
 *                    n = queue_poll(q, now, actions, max)     -> RESOLVE, CONNECT,
 *                                                                SEND, CLOSE
 *                    queue_route_result() / queue_conn_up() / queue_conn_down()
 *                    / queue_txn_result()                     <- what happened
 *
 * Spool updates, DSN injection and "this descriptor is done" go out through
 * struct queue_ops callbacks.  Time is wall-clock microseconds since the epoch
 * everywhere (the spool's arrival_us and next_retry_s are wall clock), so
 * tests drive the clock.  One struct queue per core; not thread-safe.
 */
#ifndef MX_QUEUE_H
#define MX_QUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dns.h"
#include "spool.h"

struct cfg_file;
struct queue;

#define QUEUE_DEST_MAX 264 /* "[host]:port" of a smarthost, or a domain, with NUL */
#define QUEUE_RETRY_STEPS_MAX 16
#define QUEUE_REPLY_MAX 512    /* remote reply text kept per recipient */
#define QUEUE_TLS_RULES_MAX 64 /* [tls_policy] entries */
#define QUEUE_PIPELINE_MAX 8   /* [queue] pipeline_depth bound */

/* ---- configuration --------------------------------------------------------- */

struct queue_config {
	uint32_t max_connections;     /* per destination, default 10 */
	uint32_t initial_connections; /* ramp: see queue_config_from_cfg */
	uint32_t connection_budget;   /* per queue: busy sessions before no 2nd ones, default 100 */
	uint32_t msgs_per_connection; /* default 100 */
	uint32_t msgs_per_second;     /* per destination, 0 = unlimited (default) */
	uint32_t rate_burst;	      /* token bucket depth, default max(1, rate) */
	uint32_t rcpts_per_txn;	      /* default 100: more recipients are split */
	uint32_t pipeline_depth;      /* transactions in flight per session, default 4 (1..8) */
	uint64_t backoff_initial_us;  /* default 60 s, doubling ... */
	uint64_t backoff_max_us;      /* ... up to 1 h */
	uint64_t idle_timeout_us;     /* pooled session idle close, default 5 s */
	uint64_t conn_max_age_us;     /* connection reuse time limit, default 300 s */
	uint64_t route_ttl_us;	      /* re-resolve a route after this, default 60 s */
	uint64_t retry_us[QUEUE_RETRY_STEPS_MAX]; /* default 1m,5m,15m,1h,4h; last repeats */
	unsigned retry_count;
	uint64_t max_age_us;	       /* default 5 days, then bounce 4.4.7 */
	uint64_t dsn_max_full_bytes;   /* RET=FULL up to this, else headers; default 1 MiB */
	uint64_t dsn_max_header_bytes; /* original headers part bound, default 64 KiB */
	uint32_t max_destinations;     /* per queue (core), default 10000 */
	uint32_t max_transactions;     /* per queue, default 1000000 */
	uint32_t max_sessions;	       /* per queue, default 1024 */
	char hostname[256];	       /* Reporting-MTA, from [smtp] hostname */
	/* smarthost from [relay] smarthost = [host]:port | host[:port] */
	bool smarthost_set;
	bool smarthost_mx;	 /* false when bracketed: no MX lookup */
	uint16_t smarthost_port; /* default 25 */
	char smarthost_host[256];
	char smarthost_name[QUEUE_DEST_MAX]; /* the destination name (as configured) */
	bool smarthost_implicit_tls;	     /* port 465: TLS from the first byte (RFC 8314) */
	char smarthost_user[256];	     /* [relay] smarthost_user: AUTH, or "" */
	char smarthost_pass[256];	     /* from [relay] smarthost_password_file */
	/* [tls_policy] DEST = none|opportunistic|verify: per-destination TLS */
	struct queue_tls_rule {
		char dest[QUEUE_DEST_MAX];
		uint8_t policy; /* enum queue_tls */
	} tls_rules[QUEUE_TLS_RULES_MAX];
	unsigned tls_rule_count;
};

/** queue_config_tls(): the TLS policy of a destination. */
enum queue_tls {
	QUEUE_TLS_DEFAULT = 0, /* no rule: [tls] outbound applies */
	QUEUE_TLS_NONE,
	QUEUE_TLS_OPPORTUNISTIC,
	QUEUE_TLS_VERIFY,
};
/** The [tls_policy] rule for dest (a destination name, case-insensitive), or DEFAULT. */
enum queue_tls queue_config_tls(const struct queue_config *c, const char *dest);

void queue_config_defaults(struct queue_config *c);
/**
 * Read [queue] (retry, max_age, max_connections, initial_connections, connection_budget,
 * messages_per_connection, rate, rate_burst, recipients_per_transaction, backoff_initial,
 * backoff_max, idle_timeout, connection_reuse_time_limit, route_ttl, dsn_max_full_size,
 * max_destinations, max_transactions, max_sessions, pipeline_depth), [relay] smarthost,
 * smarthost_user and smarthost_password_file (the file is read here),
 * [tls_policy] and [smtp] hostname over c.  0 or -EINVAL with
 * "file:line: message" in err.  initial_connections (default 0: off): a
 * destination has at most max(initial_connections, its sessions up)
 * connecting at once, up to max_connections (a slow start).
 * connection_budget (default 100, 0 = none; Postfix's default_process_limit):
 * a destination's first connection (and one that replaces sessions that take
 * no more mail) is always allowed, up to max_sessions; its further ones only
 * while fewer than connection_budget sessions of the queue are connecting or
 * busy (idle ones do not count).
 */
int queue_config_from_cfg(struct cfg_file *cf, struct queue_config *c, char *err, size_t errlen);
/** Set the smarthost from "[host]:port", "host:port" or "host".  0 or -EINVAL. */
int queue_config_set_smarthost(struct queue_config *c, const char *spec);
/** "1m,5m,15m,1h,4h" into c->retry_us.  0 or -EINVAL / -ERANGE. */
int queue_config_set_retry(struct queue_config *c, const char *spec);

/* ---- destinations and descriptors ---------------------------------------- */

enum queue_dest_kind {
	QUEUE_DEST_DOMAIN = 0, /* MX lookup of the domain */
	QUEUE_DEST_LITERAL,    /* [192.0.2.10]: that address, port 25, no DNS */
	QUEUE_DEST_SMARTHOST,  /* everything goes to the configured smarthost */
	QUEUE_DEST_INVALID,    /* no usable domain: bounces at once on submit */
};

/** Stable owner core of a destination (FNV-1a of the lowercased name). */
unsigned queue_dest_owner(const char *name, unsigned n_cores);

/**
 * Destination of one recipient address under cfg: the smarthost name, the
 * lowercased domain, or "[a.b.c.d]".  Returns the kind; out gets the name.
 */
enum queue_dest_kind queue_dest_of(const struct queue_config *cfg, const char *rcpt,
				   char out[QUEUE_DEST_MAX]);

/* Recipient of a descriptor.  The queue updates the result fields. */
struct queue_desc_rcpt {
	const char *addr;  /* forward-path without <> */
	const char *orcpt; /* ORCPT= as received, or NULL */
	uint32_t index;	   /* index in the message's envelope (for spool_mark_*) */
	uint8_t notify;	   /* SPOOL_NOTIFY_* */
	uint8_t state;	   /* enum spool_rcpt_state */
	uint16_t attempts;
	uint16_t code;		 /* last SMTP reply code, 0 = none */
	char status[12];	 /* last enhanced status, e.g. "5.1.1" */
	char *text;		 /* last reply text (owned), or NULL */
	char *remote_mta;	 /* host of the last attempt (owned), or NULL */
	int64_t last_attempt_us; /* wall clock */
};

#define QUEUE_DESC_F_RECOVERED 0x01 /* from spool recovery */
#define QUEUE_DESC_F_DSN 0x02	    /* the message is itself a DSN (null sender) */
#define QUEUE_DESC_F_8BITMIME 0x04  /* received with BODY=8BITMIME: send it so (RFC 6152) */
#define QUEUE_DESC_F_SMTPUTF8 0x08  /* received with SMTPUTF8 (RFC 6531) */

/**
 * What an accepting core hands to the owner core of a destination: one
 * message, the recipients for that destination, where the body is.  One
 * malloc'd block (strings copied); the queue owns it after queue_submit().
 */
struct queue_desc {
	uint64_t msg_id;
	char id_str[SPOOL_ID_LEN + 1];
	char dest[QUEUE_DEST_MAX];
	uint8_t dest_kind; /* enum queue_dest_kind */
	uint32_t flags;	   /* QUEUE_DESC_F_* */
	struct spool_location loc;
	uint64_t body_len;
	uint16_t group_index, group_count; /* this descriptor of how many for the message */
	const char *sender;		   /* "" for the null sender */
	const char *envid;		   /* or NULL */
	uint8_t ret;			   /* enum spool_ret */
	int64_t arrival_us;
	const char *message_id; /* original Message-ID, or NULL */
	uint32_t rcpt_count;
	struct queue_desc_rcpt *rcpts;
	/* queue-private bookkeeping */
	uint32_t pending; /* recipients not yet delivered or bounced */
	int64_t submitted_us;
};

/**
 * Group a message's pending recipients by destination (case-insensitive;
 * literals; everything to the smarthost when set) into descriptors.  st may
 * be NULL (all recipients pending) or the spool's per-recipient states
 * (delivered/bounced ones are skipped).  Writes up to max descriptors and
 * returns their count, or -ENOBUFS (more destinations than max; nothing
 * returned), -EINVAL, -ENOMEM.  Free unsubmitted ones with queue_desc_free().
 */
int queue_split(const struct queue_config *cfg, uint64_t msg_id, const struct spool_envelope *env,
		const struct spool_rcpt_status *st, const struct spool_location *loc,
		uint64_t body_len, struct queue_desc **out, unsigned max);
void queue_desc_free(struct queue_desc *d);

/* ---- the scheduler ----------------------------------------------------------- */

/* Callbacks run inside queue calls and must not call back into the queue. */
struct queue_ops {
	/*
	 * Per-recipient state changes, to append to the spool.  index is the
	 * recipient's place in the MESSAGE's envelope (queue_desc_rcpt.index,
	 * what spool_mark_* take), not its position in d->rcpts.
	 */
	void (*delivered)(void *ctx, const struct queue_desc *d, uint32_t index);
	void (*deferred)(void *ctx, const struct queue_desc *d, uint32_t index,
			 int64_t next_retry_s, const char *reply);
	void (*bounced)(void *ctx, const struct queue_desc *d, uint32_t index, const char *reason);
	/** Original message bytes [off, off+len) (spool_read_body); bytes read or -errno. */
	long (*read_body)(void *ctx, const struct queue_desc *d, uint64_t off, void *buf,
			  size_t len);
	/**
	 * Inject a DSN: a new message from the null sender <> to rcpt.  The
	 * data is only valid during the call.  0 or -errno (counted).
	 */
	int (*dsn_send)(void *ctx, const struct queue_desc *d, const char *rcpt, const char *data,
			size_t len);
	/**
	 * Every recipient of d is delivered or bounced and its DSN was handed
	 * to dsn_send: when all d->group_count descriptors of the message are
	 * done, the message is finished (spool_msg_finish).  d is freed after.
	 */
	void (*desc_done)(void *ctx, const struct queue_desc *d);
};

enum queue_action_type {
	QUEUE_ACT_RESOLVE = 1, /* find a route for dest (dns_mail_lookup, or A only if !mx) */
	QUEUE_ACT_CONNECT,     /* open session to dest over route, port */
	QUEUE_ACT_SEND,	       /* run transaction on the (idle) session */
	QUEUE_ACT_CLOSE,       /* QUIT and close the session; its handle is dead now */
};

/** A transaction: one message, up to rcpts_per_txn recipients of one destination. */
struct queue_txn {
	uint64_t id;
	const struct queue_desc *desc;
	const uint32_t *rcpt; /* positions in desc->rcpts */
	uint32_t rcpt_count;
};

/*
 * Every RESOLVE must be answered with queue_route_result() (DNS_MAIL_TEMPFAIL
 * when the lookup cannot even start), every CONNECT with queue_conn_up() or
 * queue_conn_down(), every SEND with queue_txn_result() or queue_conn_down(),
 * every CLOSE with queue_conn_closed() once the connection is gone.
 * dest_name and route are valid until the next call on the queue (copy the
 * route to connect); txn stays valid until its session reports back.
 */
struct queue_action {
	enum queue_action_type type;
	uint64_t dest; /* destination handle (RESOLVE, CONNECT) */
	const char *dest_name;
	bool mx;	  /* RESOLVE: MX lookup (false: address records of the name) */
	uint64_t session; /* CONNECT (new), SEND, CLOSE */
	const struct dns_mail_route *route; /* CONNECT: hosts in order */
	uint16_t port;			    /* CONNECT */
	const struct queue_txn *txn;	    /* SEND */
	void *user; /* SEND, CLOSE: what queue_session_set_user() gave the session, or NULL */
};

/** Result of one recipient of a transaction (in txn->rcpt order). */
struct queue_rcpt_result {
	uint16_t code;	    /* SMTP reply code: 2xx delivered, 4xx deferred, 5xx bounced */
	const char *status; /* enhanced status "x.y.z" or NULL (derived from code) */
	const char *text;   /* full reply text, e.g. "250 2.0.0 Ok: queued as X" */
};

struct queue_counters {
	uint64_t queued;	  /* gauge: recipients waiting (FIFO or retry timer) */
	uint64_t in_flight;	  /* gauge: recipients in a running transaction */
	uint64_t sent;		  /* recipients delivered */
	uint64_t deferred;	  /* deferrals (recipient attempts) */
	uint64_t bounced;	  /* recipients bounced (expired included) */
	uint64_t expired;	  /* bounced for max_age */
	uint64_t conns_open;	  /* gauge: sessions connecting or up */
	uint64_t conns_opened;	  /* CONNECT actions */
	uint64_t conn_failures;	  /* connects that failed */
	uint64_t sessions_reused; /* SEND on a session that already carried a message */
	uint64_t backoffs;	  /* destination backoffs started */
	uint64_t txns;		  /* SEND actions */
	uint64_t rate_limited;	  /* dispatch held by msgs_per_second */
	uint64_t conn_limit_hits; /* wanted a connection, max_connections reached */
	uint64_t tls_full;	  /* sessions whose TLS handshake was a full one */
	uint64_t tls_resumed;	  /* ... resumed a cached session (queue_conn_tls) */
	/* totals only */
	uint64_t dsn_sent, dsn_failed, dsn_null_sender_dropped, dsn_suppressed;
	uint64_t dest_limit_hits, txn_limit_hits, session_limit_hits;
	uint64_t budget_hits; /* a destination with a session wanted another: connection_budget */
	uint64_t idle_evictions; /* idle sessions closed for destinations waiting for a slot */
	uint64_t txns_pipelined; /* SENDs to a session that had another transaction in flight */
	uint64_t dests;		 /* gauge */
};

enum queue_dest_state {
	QUEUE_DS_NEED_ROUTE = 0, /* no (fresh) route yet */
	QUEUE_DS_RESOLVING,	 /* RESOLVE action out, waiting for queue_route_result() */
	QUEUE_DS_READY,		 /* has a route: connects and sends */
	QUEUE_DS_BACKOFF,	 /* failed: waiting until backoff_until */
};

struct queue_dest_info {
	const char *name;
	enum queue_dest_kind kind;
	enum queue_dest_state state;
	uint64_t handle;
	uint32_t fifo_len; /* transactions waiting */
	uint32_t sessions; /* connecting or up */
	uint32_t idle_sessions;
	int64_t backoff_until_us; /* 0 if none */
	uint64_t backoff_us;	  /* current backoff step */
	bool suspended;		  /* held (queue_suspend) */
	struct queue_counters c;  /* per destination (totals-only fields zero) */
};

/** Create a queue for one core.  cfg is copied.  NULL on -ENOMEM / bad config. */
struct queue *queue_create(const struct queue_config *cfg, const struct queue_ops *ops, void *ctx);
/** Free everything (pending descriptors are freed without callbacks). */
void queue_destroy(struct queue *q);

/**
 * Take a descriptor for a destination this core owns.  Recipients are split
 * into transactions of at most rcpts_per_txn.  not_before_us delays the
 * first attempt (recovered deferred recipients; 0 = now).  On 0 the queue
 * owns d; -ENOBUFS (max_transactions or max_destinations: d stays the
 * caller's), -EINVAL.
 */
int queue_submit(struct queue *q, struct queue_desc *d, int64_t not_before_us, int64_t now_us);

/** Run timers and dispatch: writes up to max actions, returns their count. */
int queue_poll(struct queue *q, int64_t now_us, struct queue_action *out, unsigned max);

/** Outcome of a RESOLVE.  The route is copied.  0 or -ENOENT (stale handle). */
int queue_route_result(struct queue *q, uint64_t dest, const struct dns_mail_route *route,
		       int64_t now_us);
/** A CONNECT succeeded (greeting, EHLO, TLS done) to host[addr]:port. */
int queue_conn_up(struct queue *q, uint64_t session, const char *host, uint32_t addr, uint16_t port,
		  int64_t now_us);
/** The session's TLS handshake is done (before queue_conn_up): counted per destination. */
int queue_conn_tls(struct queue *q, uint64_t session, bool resumed);
/**
 * How many transactions the session can carry at once (the SMTP client's
 * smtp_client_txn_depth(): more than 1 when the server pipelines them).  The
 * queue then sends it up to min(depth, [queue] pipeline_depth) SENDs before
 * the first result; results must come in the order of the SENDs, and a
 * queue_conn_down() defers every transaction still in flight.  A session
 * starts at 1.  0 or -ENOENT.
 */
int queue_conn_depth(struct queue *q, uint64_t session, unsigned depth);
/**
 * The transport's pointer for a session (after CONNECT), given back in its
 * SEND and CLOSE actions so that the caller needs no lookup.  0 or -ENOENT.
 */
int queue_session_set_user(struct queue *q, uint64_t session, void *user);
/**
 * A session is gone: a CONNECT that failed (every MX: refused, timeout, 4xx/5xx
 * greeting, TLS failure: the destination backs off) or a session that dropped
 * (its running transaction is deferred).  reason is logged and kept.
 */
int queue_conn_down(struct queue *q, uint64_t session, const char *reason, int64_t now_us);
/**
 * After a CLOSE: the transport has closed the connection (QUIT answered, or
 * aborted).  Until then the session counts against the destination's
 * max_connections.  0, or -ENOENT (not a session waiting for this).
 */
int queue_conn_closed(struct queue *q, uint64_t session, int64_t now_us);
/**
 * Result of a SEND (the session's oldest transaction in flight): n ==
 * txn->rcpt_count results.  With none left in flight the session is idle again.
 */
int queue_txn_result(struct queue *q, uint64_t session, const struct queue_rcpt_result *res,
		     unsigned n, int64_t now_us);

void queue_get_counters(const struct queue *q, struct queue_counters *out);
/** Call fn for every destination (for `mxctl queue`); stops when fn returns non-zero. */
int queue_dest_foreach(const struct queue *q, int (*fn)(void *arg, const struct queue_dest_info *),
		       void *arg);
/**
 * Every transaction waiting for its retry time (deferred, or submitted with
 * a not_before): its destination name, recipients and due time.  Stops when
 * fn returns non-zero.  For `mxctl queue`.
 */
int queue_retry_foreach(const struct queue *q,
			int (*fn)(void *arg, const char *dest, uint32_t rcpts, int64_t when_us),
			void *arg);
/**
 * Retry now (`mxctl flush`): the waiting transactions of dest (NULL: of
 * every destination) become due and a destination's backoff ends (its
 * length is kept, so a new failure still doubles it).  Returns how many
 * transactions or destinations were woken, -ENOENT when dest is unknown
 * here, -ENOMEM.
 */
int queue_flush(struct queue *q, const char *dest, int64_t now_us);
/**
 * Hold (suspend = true) or release a destination (`mxctl suspend/resume`):
 * while held nothing is sent to it, its transactions wait in its FIFO and
 * it is not forgotten when idle.  Holding creates it if needed.  0,
 * -ENOSPC (destination table full), -ENOENT (release of an unknown one).
 * dest QUEUE_HOLD_ALL ("*") holds or releases every destination at once,
 * those that appear while held too (a backlog benchmark, a maintenance
 * window); a destination held on its own stays held after a release of "*".
 */
#define QUEUE_HOLD_ALL "*"
int queue_suspend(struct queue *q, const char *dest, bool suspend, int64_t now_us);
/**
 * Reload: take the limits and schedules of c (connections, messages per
 * connection, rate, recipients per transaction, backoff, idle timeout,
 * connection age, route TTL, retry schedule, max_age, DSN sizes).  Table
 * sizes (max_destinations, max_transactions, max_sessions), the smarthost
 * and the hostname keep their values.  Transactions already split keep
 * their recipients.
 */
void queue_reconfigure(struct queue *q, const struct queue_config *c);
/**
 * Earliest timer (wall us), INT64_MAX if none, 0 if work waits for a poll now:
 * the owner loop may sleep until then.
 */
int64_t queue_next_timer(const struct queue *q);

/* ---- DSN (RFC 3464, 3461, 6522) --------------------------------------------- */

enum queue_dsn_action { QUEUE_DSN_FAILED = 0, QUEUE_DSN_DELAYED, QUEUE_DSN_DELIVERED };

struct queue_dsn_rcpt {
	const char *addr;  /* Final-Recipient: rfc822; addr */
	const char *orcpt; /* Original-Recipient (ORCPT "type;xtext"), or NULL */
	enum queue_dsn_action action;
	const char *status;	     /* "5.1.1" */
	const char *remote_mta;	     /* or NULL */
	const char *diagnostic;	     /* remote reply text, or NULL */
	int64_t last_attempt_us;     /* 0 = none */
	int64_t will_retry_until_us; /* delayed: expiry, or 0 */
};

typedef long (*queue_body_reader)(void *arg, uint64_t off, void *buf, size_t len);

struct queue_dsn_params {
	const char *reporting_mta; /* our hostname */
	const char *sender;	   /* original envelope sender: the DSN's To: */
	const char *envid;	   /* Original-Envelope-Id, or NULL */
	uint8_t ret;		   /* enum spool_ret: FULL includes the message */
	const char *orig_id;	   /* queue ID for the text part, or NULL */
	int64_t arrival_us, now_us;
	const struct queue_dsn_rcpt *rcpts;
	unsigned rcpt_count;
	queue_body_reader reader; /* original message; NULL = no original part */
	void *reader_arg;
	uint64_t body_len;
	uint64_t max_full_bytes;   /* RET=FULL only up to this size */
	uint64_t max_header_bytes; /* headers part bound */
	uint64_t unique;	   /* makes Message-ID and boundary unique */
};

/**
 * Build a multipart/report; report-type=delivery-status message (CRLF line
 * ends, every line < 998 octets).  *out is malloc'd (free()).  Returns 0,
 * -EINVAL (no recipients, bad params), -EIO (reader failed), -ENOMEM.
 */
int queue_dsn_build(const struct queue_dsn_params *p, char **out, size_t *out_len);

/** RFC 5322 date-time (UTC, "+0000") of wall-clock us into buf; length. */
int queue_rfc5322_date(int64_t wall_us, char *buf, size_t cap);

/* ---- logging ------------------------------------------------------------------ */

struct queue_log_info {
	const char *id;		/* queue ID */
	const char *rcpt;	/* to=<rcpt> */
	const char *orcpt;	/* orig_to=<...> when set and different */
	const char *relay_host; /* NULL: relay=none */
	uint32_t relay_addr;	/* host order */
	uint16_t relay_port;
	double delay;	    /* seconds, arrival to now */
	double delays[4];   /* before queue, in queue, connection setup, transmission */
	const char *dsn;    /* "2.0.0" */
	const char *status; /* sent, deferred, bounced, expired */
	const char *reply;  /* "(250 2.0.0 Ok)" text without parentheses */
};

/**
 * Postfix-style delivery line: "ID: to=<rcpt>, relay=host[addr]:port,
 * delay=1.2, delays=a/b/c/d, dsn=2.0.0, status=sent (reply)".  Returns the
 * length (snprintf semantics: >= cap means truncated).
 */
int queue_log_line(char *buf, size_t cap, const struct queue_log_info *li);

#endif
