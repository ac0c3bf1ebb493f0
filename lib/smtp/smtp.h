/*
 * smtp.h - SMTP protocol library: syntax parsers, the server session state
 * machine and a credentials file for AUTH.
 *
 * The server session is transport-agnostic: the caller (the per-core TCP/TLS
 * code) feeds received bytes with smtp_session_input() and gets replies back
 * through cb->send(), batched per RFC 2920 (one send per drained input buffer
 * or sync point).  Message content is streamed out through cb->message_data()
 * as unstuffed, CRLF-normalised bytes, our Received: header first; the session
 * never holds a whole message.  After the end of data the session calls
 * cb->message_end() and waits for smtp_session_message_done() before it says
 * "250 queued" (an acknowledged message is on disk).
 *
 * Everything is per session and single-threaded: a session belongs to the
 * lcore that owns its connection; the stats block is per core too.
 */
#ifndef MX_SMTP_H
#define MX_SMTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- syntax (parse.c) ----------------------------------------------------- */

/* RFC 5321 4.5.3.1 size limits. */
#define SMTP_LOCAL_PART_MAX 64
#define SMTP_DOMAIN_MAX 255
#define SMTP_PATH_MAX 256
#define SMTP_ENVID_MAX 100 /* RFC 3461 4.4 */
#define SMTP_ORCPT_MAX 500 /* RFC 3461 4.2 */

/** A mailbox as received: text is exact (quotes, case, literal brackets kept). */
struct smtp_address {
	char text[SMTP_PATH_MAX + 1]; /* "" for the null reverse-path <> */
	uint16_t len;
	uint16_t at;  /* index of the '@' before the domain; == len if no domain */
	bool literal; /* domain is an address literal [..] */
	bool quoted;  /* local part is a quoted string */
	bool utf8;    /* contains non-ASCII (needs SMTPUTF8) */
	bool routed;  /* a source route @a,@b: was given (and dropped, RFC 5321 4.1.2) */
};

/**
 * Parse a reverse- or forward-path at s[0..n): "<" [A-d-l ":"] Mailbox ">",
 * or "<>" when allow_null.  A path without angle brackets is accepted too
 * (minimal device firmware sends them).  Non-ASCII is accepted only when
 * utf8 (RFC 6531).  *consumed gets the bytes used; what follows is parameters.
 * Returns 0, -EINVAL (syntax), -ENAMETOOLONG (RFC 5321 4.5.3.1 limits) or
 * -EILSEQ (non-ASCII without SMTPUTF8, or invalid UTF-8).
 */
int smtp_parse_path(const char *s, size_t n, bool allow_null, bool utf8, struct smtp_address *out,
		    size_t *consumed);
/** RFC 5321 4.1.2 Domain (U-labels too when utf8).  0 or -EINVAL. */
int smtp_domain_valid(const char *s, size_t n, bool utf8);
/** RFC 5321 4.1.3 address literal "[1.2.3.4]" / "[IPv6:...]".  0 or -EINVAL. */
int smtp_address_literal_valid(const char *s, size_t n);
/** RFC 3461 4 xtext.  0 or -EINVAL. */
int smtp_xtext_valid(const char *s, size_t n);
/** Well-formed UTF-8 (RFC 3629, no overlongs or surrogates).  0 or -EILSEQ. */
int smtp_utf8_valid(const char *s, size_t n);
/** Strict RFC 4648 base64 decode.  Returns decoded length or -EINVAL / -ENOSPC. */
int smtp_base64_decode(const char *s, size_t n, uint8_t *out, size_t outlen);
/** Base64 encode with NUL; returns the length or -ENOSPC. */
int smtp_base64_encode(const uint8_t *p, size_t n, char *out, size_t outlen);

/* ---- server configuration --------------------------------------------------- */

enum smtp_listener_kind {
	SMTP_LISTENER_RELAY,	    /* port 25: STARTTLS offered */
	SMTP_LISTENER_IMPLICIT_TLS, /* port 465: the session starts in TLS */
	SMTP_LISTENER_SUBMISSION,   /* port 587: AUTH required before MAIL */
};

/** What to do with a bare LF or bare CR in message content (SMTP smuggling). */
enum smtp_bare_eol_policy {
	SMTP_BARE_EOL_REJECT,	 /* 550 5.6.2 at the end of data, never forwarded */
	SMTP_BARE_EOL_NORMALISE, /* rewrite to CRLF; never ends DATA, never unstuffs */
};

/** What to do with a text line longer than max_text_line. */
enum smtp_long_line_policy {
	SMTP_LONG_LINE_REJECT, /* 550 5.5.2 at the end of data */
	SMTP_LONG_LINE_ALLOW,
};

struct smtp_ipv4_prefix {
	uint32_t addr; /* host order */
	uint8_t len;
};

/**
 * Filled by the caller; smtp_server_conf_defaults() gives the documented
 * defaults.  Arrays and strings are the caller's and must outlive sessions.
 */
struct smtp_server_conf {
	const char *hostname; /* in greeting, EHLO and Received: */
	enum smtp_listener_kind listener;
	bool tls_available;	     /* STARTTLS can be offered (a cert is loaded) */
	size_t max_command_line;     /* 512 (RFC 5321 4.5.3.1.4), >= 512, incl. CRLF */
	size_t max_text_line;	     /* 1000 (RFC 5321 4.5.3.1.6), >= 1000, incl. CRLF */
	uint64_t max_message_size;   /* 10 MiB; SIZE advertised */
	unsigned max_recipients;     /* 100, >= 100 (RFC 5321 4.5.3.1.8) */
	unsigned max_errors;	     /* 20 client errors, then 421 4.7.0 */
	unsigned max_auth_failures;  /* 3, then 421 4.7.0 */
	size_t max_pending_input;    /* 16 KiB buffered while a commit is pending */
	uint64_t timeout_command_us; /* 300 s: greeting and commands (RFC 5321 4.5.3.2) */
	uint64_t timeout_data_us;    /* 180 s: per data block */
	enum smtp_bare_eol_policy bare_eol;
	enum smtp_long_line_policy long_line;
	const struct smtp_ipv4_prefix *allow_networks; /* clients that may relay */
	size_t allow_network_count;
	const char *const *local_domains; /* accepted from anyone */
	size_t local_domain_count;
	const char *const *relay_domains; /* accepted from anyone, relayed onwards */
	size_t relay_domain_count;
	uint64_t (*now_us)(void); /* monotonic clock; NULL: mx_now_us */
	int64_t (*wall_s)(void);  /* wall clock for Received:; NULL: mx_wall_s */
};

void smtp_server_conf_defaults(struct smtp_server_conf *conf);
/** 0, or -EINVAL with a message in err (limits below the RFC minimums, no hostname). */
int smtp_server_conf_check(const struct smtp_server_conf *conf, char *err, size_t errlen);

struct cfg_file;
struct smtp_server_conf_store;

/**
 * Defaults, then the [smtp] and [relay] keys of a parsed config file (see
 * conf.c for the key list); keys read are marked used.  Strings and lists are
 * kept in *store, which must outlive every session using conf.  0, -EINVAL
 * with "file:line: [section] key: message" in err, or -ENOMEM.
 */
int smtp_server_conf_load(struct cfg_file *cf, struct smtp_server_conf *conf,
			  struct smtp_server_conf_store **store, char *err, size_t errlen);
void smtp_server_conf_store_free(struct smtp_server_conf_store *store);

/* ---- counters ----------------------------------------------------------------- */

enum smtp_verb {
	SMTP_VERB_HELO,
	SMTP_VERB_EHLO,
	SMTP_VERB_MAIL,
	SMTP_VERB_RCPT,
	SMTP_VERB_DATA,
	SMTP_VERB_BDAT,
	SMTP_VERB_RSET,
	SMTP_VERB_NOOP,
	SMTP_VERB_QUIT,
	SMTP_VERB_VRFY,
	SMTP_VERB_HELP,
	SMTP_VERB_STARTTLS,
	SMTP_VERB_AUTH,
	SMTP_VERB_UNKNOWN,
	SMTP_VERB_COUNT
};

/** One per kind of rejection; every 4xx/5xx the server says counts one. */
enum smtp_reject {
	SMTP_REJ_SYNTAX,	      /* 500/501 bad command or argument syntax */
	SMTP_REJ_UNKNOWN_COMMAND,     /* 500 5.5.2 */
	SMTP_REJ_LINE_TOO_LONG,	      /* 500 5.5.2 command line */
	SMTP_REJ_BAD_SEQUENCE,	      /* 503 5.5.1 */
	SMTP_REJ_BAD_PARAM,	      /* 501/555 5.5.4 */
	SMTP_REJ_BAD_ADDRESS,	      /* 501 5.1.3 / 5.1.7 */
	SMTP_REJ_NEED_SMTPUTF8,	      /* 553 5.6.7 */
	SMTP_REJ_RELAY_DENIED,	      /* 554 5.7.1 */
	SMTP_REJ_TOO_MANY_RCPTS,      /* 452 4.5.3 */
	SMTP_REJ_SIZE_DECLARED,	      /* 552 5.3.4 at MAIL */
	SMTP_REJ_SIZE_EXCEEDED,	      /* 552 5.3.4 at end of data */
	SMTP_REJ_BARE_EOL,	      /* 550 5.6.2 smuggling */
	SMTP_REJ_TEXT_LINE_TOO_LONG,  /* 550 5.5.2 */
	SMTP_REJ_NO_RCPTS,	      /* 554 5.5.1 / 503 5.5.1 at DATA */
	SMTP_REJ_OVERLOAD,	      /* 451 4.3.1 */
	SMTP_REJ_AUTH_REQUIRED,	      /* 530 5.7.0 */
	SMTP_REJ_ENCRYPTION_REQUIRED, /* 538 5.7.11 */
	SMTP_REJ_AUTH_FAILED,	      /* 535 5.7.8 */
	SMTP_REJ_AUTH_TEMP,	      /* 454 4.7.0 */
	SMTP_REJ_AUTH_CANCELLED,      /* 501 5.0.0 */
	SMTP_REJ_AUTH_TOO_MANY,	      /* 421 4.7.0 */
	SMTP_REJ_TOO_MANY_ERRORS,     /* 421 4.7.0 */
	SMTP_REJ_TIMEOUT,	      /* 421 4.4.2 */
	SMTP_REJ_COMMIT_FAILED,	      /* 451 4.3.0 / 452 4.3.1 from the spool */
	SMTP_REJ_NOT_AVAILABLE,	      /* 502/454: STARTTLS without a certificate, etc. */
	SMTP_REJ_COUNT
};

const char *smtp_verb_name(enum smtp_verb v);
const char *smtp_reject_name(enum smtp_reject r);

/** Per session pool (per core); sessions increment it, the caller reads it. */
struct smtp_server_stats {
	uint64_t sessions;
	uint64_t commands[SMTP_VERB_COUNT];
	uint64_t replies_2xx, replies_3xx, replies_4xx, replies_5xx;
	uint64_t rejects[SMTP_REJ_COUNT];
	uint64_t messages_accepted;
	uint64_t messages_aborted;
	uint64_t bytes_in;	     /* raw bytes given to smtp_session_input */
	uint64_t bytes_out;	     /* reply bytes sent */
	uint64_t message_bytes;	     /* message content streamed (w/o Received:) */
	uint64_t starttls_discarded; /* bytes pipelined after STARTTLS (CVE-2011-0411) */
	uint64_t pending_input_full; /* times the pending-input bound stopped reading */
	uint64_t auth_success, auth_failures;
	uint64_t timeouts;
};

/* ---- envelope ------------------------------------------------------------------- */

enum smtp_body { SMTP_BODY_NONE, SMTP_BODY_7BIT, SMTP_BODY_8BITMIME };
enum smtp_dsn_ret { SMTP_RET_NONE, SMTP_RET_FULL, SMTP_RET_HDRS };

#define SMTP_NOTIFY_NEVER 0x1
#define SMTP_NOTIFY_SUCCESS 0x2
#define SMTP_NOTIFY_FAILURE 0x4
#define SMTP_NOTIFY_DELAY 0x8

struct smtp_rcpt {
	struct smtp_address addr;
	uint8_t notify;			/* SMTP_NOTIFY_*; 0 when not given */
	char orcpt[SMTP_ORCPT_MAX + 1]; /* "rfc822;xtext" exactly as given, or "" */
};

/** Valid from MAIL to the end of the transaction; owned by the session. */
struct smtp_envelope {
	char id[32]; /* session transaction id, in Received: */
	char helo[SMTP_DOMAIN_MAX + 1];
	uint32_t client_ip; /* host order */
	bool esmtp, tls, authenticated, smtputf8;
	const char *auth_user; /* "" when not authenticated */
	struct smtp_address mail_from;
	uint64_t declared_size; /* SIZE=, 0 when not given */
	enum smtp_body body;
	enum smtp_dsn_ret ret;
	char envid[SMTP_ENVID_MAX + 1]; /* xtext as given, or "" */
	struct smtp_rcpt *rcpts;
	size_t rcpt_count;
	uint64_t message_size; /* content bytes streamed, at message_end */
};

/* ---- server session ------------------------------------------------------------- */

struct smtp_session;

/**
 * Callbacks from the session to its transport and to the mail path.  All are
 * called on the session's lcore, from inside smtp_session_* calls.  Optional
 * ones may be NULL.
 */
struct smtp_server_cb {
	/** Replies, batched.  Required. */
	void (*send)(void *user, const uint8_t *p, size_t n);
	/** After 221 or 421 was sent: close the connection; free the session only after
	 *  the smtp_session_* call that made this callback has returned. */
	void (*close)(void *user);
	/** The 220 for STARTTLS was sent: start the handshake, then smtp_session_tls_started(). */
	void (*starttls)(void *user);
	/** May a new transaction start now?  false gives 451 4.3.1.  NULL: yes. */
	bool (*may_start_transaction)(void *user);
	/** Check credentials: 0 ok, -EACCES wrong, other negative temporary failure. */
	int (*auth_check)(void *user, const char *authzid, const char *authcid, const char *pass);
	/** A message starts (DATA accepted / first BDAT). */
	void (*message_begin)(void *user);
	/** Message content, unstuffed and CRLF-normalised, Received: first. */
	void (*message_data)(void *user, const uint8_t *p, size_t n);
	/** All content was given: make it durable, then smtp_session_message_done(). */
	void (*message_end)(void *user, const struct smtp_envelope *env);
	/** The message being streamed is dropped; forget what message_data gave. */
	void (*message_abort)(void *user);
};

/**
 * Create a session for a new connection.  conf (checked here), cb and stats
 * must outlive it.  session_id makes transaction ids unique (e.g. core << 48 |
 * counter).  Nothing is sent until smtp_session_start().  0, -EINVAL, -ENOMEM.
 */
int smtp_session_new(const struct smtp_server_conf *conf, const struct smtp_server_cb *cb,
		     void *user, struct smtp_server_stats *stats, uint32_t client_ip,
		     uint64_t session_id, struct smtp_session **out);
/**
 * Free.  A message still being received is aborted (message_abort); a commit
 * already asked for by message_end stays the caller's (its message_done is
 * then simply not called).  Not from inside a callback of this session.
 */
void smtp_session_free(struct smtp_session *s);
/** Send the 220 greeting.  For implicit TLS call smtp_session_tls_started() first. */
void smtp_session_start(struct smtp_session *s);
/**
 * Feed received bytes.  Returns how many were taken: fewer than n only when a
 * commit is pending and the pending-input bound is full (then
 * smtp_session_want_input() is false; offer the rest again later).
 */
size_t smtp_session_input(struct smtp_session *s, const uint8_t *p, size_t n);
/** false while the session cannot take more input (commit pending, buffer full) or is closed. */
bool smtp_session_want_input(const struct smtp_session *s);
/**
 * From inside cb->message_begin: use the spool's queue id as the
 * transaction id (in Received: and env->id), as Postfix does.  Ignored
 * unless it is 1..31 letters and digits.
 */
void smtp_session_set_queue_id(struct smtp_session *s, const char *id);
/** The TLS handshake finished (after cb->starttls, or at once for implicit TLS). */
void smtp_session_tls_started(struct smtp_session *s, const char *version, const char *cipher);
/**
 * The spool finished the commit asked by cb->message_end: status 0 and the
 * queue id give "250 2.0.0 Ok: queued as ID"; -ENOSPC gives 452 4.3.1; other
 * negative values 451 4.3.0 (reason, if given, is appended).  Then buffered
 * pipelined input is processed.
 */
void smtp_session_message_done(struct smtp_session *s, int status, const char *queue_id_or_reason);
/**
 * Absolute monotonic µs (conf->now_us clock) at which the current state times
 * out: last input + timeout_data_us inside DATA/BDAT, + timeout_command_us
 * otherwise; UINT64_MAX while a commit is pending (the spool bounds that) or
 * after close.
 */
uint64_t smtp_session_deadline(const struct smtp_session *s);
/** The deadline passed: 421 4.4.2 and close. */
void smtp_session_timeout(struct smtp_session *s);
/** The peer went away: abort any message in progress; no more callbacks but message_abort. */
void smtp_session_peer_closed(struct smtp_session *s);
bool smtp_session_is_closed(const struct smtp_session *s);
/** The envelope of the current transaction (for logging). */
const struct smtp_envelope *smtp_session_envelope(const struct smtp_session *s);

/**
 * A cache of ended sessions, owned by one lcore (its struct is the caller's,
 * its list private to server.c).  A relay makes a session per connection and
 * devices make a connection per message: taken from the pool, a session costs
 * no malloc and touches only pages already resident.  Bounded by max (the
 * caller's connection bound is a good one); the counters say how it went.
 */
struct smtp_session_pool {
	struct smtp_session *head; /* private: the free list */
	unsigned count;		   /* sessions held now */
	unsigned max;		   /* bound on count */
	uint64_t reused;	   /* sessions taken from the pool */
	uint64_t allocated;	   /* sessions malloc'ed (pool empty, or its sessions too small) */
	uint64_t full;		   /* ended sessions freed because the pool held max */
	uint64_t prewarmed;	   /* sessions made by smtp_session_pool_prewarm() */
};

/** An empty pool that will hold at most max ended sessions (0: none, every session is freed). */
void smtp_session_pool_init(struct smtp_session_pool *p, unsigned max);
/**
 * Fill the pool up to n sessions (at most its max) made for conf's command
 * line, every byte of each written once, with a recipient array for the
 * first recipients: the first connections after start then fault in no
 * memory.  Call it on the lcore that owns the pool.  Returns the number of
 * sessions added or -ENOMEM (those made before stay in the pool), -EINVAL
 * for a bad conf.
 */
int smtp_session_pool_prewarm(struct smtp_session_pool *p, const struct smtp_server_conf *conf,
			      unsigned n);
/** Free every session the pool holds (it stays usable). */
void smtp_session_pool_drain(struct smtp_session_pool *p);
/** smtp_session_new() taking an ended session from pool when it has one (pool may be NULL). */
int smtp_session_new_pooled(struct smtp_session_pool *pool, const struct smtp_server_conf *conf,
			    const struct smtp_server_cb *cb, void *user,
			    struct smtp_server_stats *stats, uint32_t client_ip,
			    uint64_t session_id, struct smtp_session **out);
/** smtp_session_free() keeping s in pool when the pool is below its bound (pool may be NULL). */
void smtp_session_free_pooled(struct smtp_session_pool *pool, struct smtp_session *s);

/**
 * The overload greeting for a connection the caller will not serve:
 * "421 4.3.2 <hostname> Service not available, closing channel\r\n".
 * Returns its length, or -ENOSPC.
 */
int smtp_server_format_busy_greeting(char *buf, size_t len, const char *hostname);

/* ---- credentials file (auth.c) ----------------------------------------------------- */

/*
 * One user per line, '#' comments:
 *   user:$pbkdf2-sha256$ITERATIONS$SALT_HEX$HASH_HEX   (PKCS5_PBKDF2_HMAC, SHA-256)
 *   user:$sha256$SALT_HEX$HASH_HEX                     (SHA-256(salt || password))
 */
struct smtp_cred_db;

#define SMTP_CRED_MAX_USERS 100000
#define SMTP_CRED_MAX_ITERATIONS 10000000u

/** Load a file; on error -EINVAL/-errno with "file:line: message" in err. */
int smtp_cred_load(const char *path, struct smtp_cred_db **out, char *err, size_t errlen);
/** The same from memory; name is used in messages. */
int smtp_cred_load_string(const char *text, const char *name, struct smtp_cred_db **out, char *err,
			  size_t errlen);
void smtp_cred_free(struct smtp_cred_db *db);
size_t smtp_cred_count(const struct smtp_cred_db *db);
/** 0 when user exists and pass matches (constant-time compare), else -EACCES. */
int smtp_cred_verify(const struct smtp_cred_db *db, const char *user, const char *pass);
/** Make a PBKDF2 line "user:$pbkdf2-sha256$..." with a random salt.  Length or -errno. */
int smtp_cred_make_line(char *out, size_t outlen, const char *user, const char *pass,
			unsigned iterations);

/* ---- client session (client.c) ------------------------------------------------------ */

/*
 * The outbound client: a transport-agnostic state machine like the server.
 * The caller feeds the server's bytes with smtp_client_input(), the client
 * writes commands and message content through cb->send() (which may take
 * fewer bytes than offered: call smtp_client_writable() when the transport
 * can take more) and reports each message once through cb->message_done().
 */

#define SMTP_REPLY_LINE_MAX 512	 /* per reply line, incl. CRLF (RFC 5321 4.5.3.1.5) */
#define SMTP_REPLY_LINES_MAX 100 /* more lines in one reply is a protocol error */
#define SMTP_REPLY_TEXT_MAX 512	 /* text kept per reply (lines joined by a space) */

/** One server reply, as kept for results and logs.  Text is printable ASCII. */
struct smtp_reply {
	uint16_t code;	 /* 250, 421, ...; 0 when no reply (command not sent) */
	char status[16]; /* RFC 3463 enhanced status "5.1.1" of the first line, or "" */
	char text[SMTP_REPLY_TEXT_MAX]; /* text without codes, NUL-terminated, maybe cut */
	uint16_t text_len;
	uint8_t lines;
	bool synthetic; /* made by the client (limit, connection lost), not said by the server */
};

/**
 * Incremental reply parser: any segmentation gives the same result.  Read-only
 * for the caller except through the functions below.
 */
struct smtp_reply_parser {
	char line[SMTP_REPLY_LINE_MAX];
	size_t len;
	bool done; /* the last call returned SMTP_REPLY_DONE: next byte starts a reply */
	const char *line_text; /* after LINE/DONE: this line's text (codes stripped) */
	size_t line_text_len;
	struct smtp_reply reply; /* being built; complete after DONE */
};

enum {
	SMTP_REPLY_MORE = 0, /* all input taken, reply incomplete */
	SMTP_REPLY_LINE = 1, /* a continuation line ("250-...") is complete */
	SMTP_REPLY_DONE = 2, /* the last line is complete: parser->reply is the reply */
};

void smtp_reply_parser_init(struct smtp_reply_parser *p);
/**
 * Feed bytes; stops after each complete line.  *used gets the bytes taken.
 * Returns SMTP_REPLY_MORE/LINE/DONE, -EPROTO for a malformed line (bad code,
 * continuation with another code) or -EMSGSIZE (line over 512 bytes, more than
 * 100 lines).  After an error the parser must be re-initialised.
 */
int smtp_reply_parse(struct smtp_reply_parser *p, const uint8_t *buf, size_t n, size_t *used);

enum smtp_client_tls_policy {
	SMTP_CLIENT_TLS_NONE,	       /* never STARTTLS */
	SMTP_CLIENT_TLS_OPPORTUNISTIC, /* STARTTLS when offered; plaintext if refused */
	SMTP_CLIENT_TLS_REQUIRED,      /* no STARTTLS offered/accepted: session fails, 4.7.4 */
};

/** smtp_client_conf_defaults() gives Postfix's smtp(8) defaults. Strings are the caller's. */
struct smtp_client_conf {
	const char *helo_name; /* our name in EHLO/HELO */
	enum smtp_client_tls_policy tls;
	const char *auth_user; /* smarthost credentials, or NULL: no AUTH */
	const char *auth_pass;
	bool auth_plaintext_ok;	       /* allow AUTH without TLS (default false) */
	bool no_pipelining;	       /* never PIPELINING, even when offered: one command
					  a reply, as minimal device firmware talks */
	size_t bdat_chunk;	       /* 64 KiB: BDAT chunk size */
	unsigned max_bdat_in_flight;   /* 4: pipelined BDAT chunks awaiting replies */
	unsigned max_recipients;       /* 1000: per message (bounds the pipelined flight) */
	uint64_t timeout_greeting_us;  /* 300 s (smtp_helo_timeout covers the greeting) */
	uint64_t timeout_helo_us;      /* 300 s: EHLO/HELO, STARTTLS + handshake, AUTH */
	uint64_t timeout_mail_us;      /* 300 s */
	uint64_t timeout_rcpt_us;      /* 300 s */
	uint64_t timeout_data_init_us; /* 120 s: DATA -> 354 */
	uint64_t timeout_data_xfer_us; /* 180 s: sending content, BDAT chunk replies */
	uint64_t timeout_data_done_us; /* 600 s: "." / BDAT LAST -> final reply */
	uint64_t timeout_rset_us;      /* 20 s */
	uint64_t timeout_quit_us;      /* 300 s */
	uint64_t (*now_us)(void);      /* monotonic clock; NULL: mx_now_us */
	/*
	 * 1 (0 counts as 1): transactions in flight at once (up to
	 * SMTP_CLIENT_TXNS_MAX) when the server offers PIPELINING and CHUNKING:
	 * the next message's RSET, MAIL, RCPTs and BDAT LAST follow the previous
	 * BDAT LAST without waiting for its reply (RFC 2920 3.1, RFC 3030 2).
	 * Otherwise 1 whatever this says.
	 */
	unsigned max_txns_in_flight;
};

#define SMTP_CLIENT_TXNS_MAX 8

void smtp_client_conf_defaults(struct smtp_client_conf *conf);
/** 0, or -EINVAL with a message in err. */
int smtp_client_conf_check(const struct smtp_client_conf *conf, char *err, size_t errlen);

struct smtp_client_rcpt {
	const char *addr;  /* "user@example.com", no angle brackets */
	uint8_t notify;	   /* SMTP_NOTIFY_*, 0: not sent */
	const char *orcpt; /* "rfc822;xtext" or NULL */
};

/** One message; it and what it points to stay the caller's until its message_done. */
struct smtp_client_msg {
	const char *sender; /* "" for the null reverse-path */
	const struct smtp_client_rcpt *rcpts;
	size_t rcpt_count;
	enum smtp_dsn_ret ret; /* sent only if the server offers DSN */
	const char *envid;     /* xtext or NULL; only with DSN */
	bool body_8bit;	       /* BODY=8BITMIME needed */
	bool smtputf8;	       /* SMTPUTF8 needed (non-ASCII addresses or headers) */
	uint64_t body_len;     /* exact length of the body */
	/** Copy up to len body bytes from offset into buf: count (> 0), or negative errno. */
	long (*body_read)(void *user, uint64_t offset, uint8_t *buf, size_t len);
	void *body_user;
	void *user; /* for the caller, given back in the result */
};

enum smtp_client_outcome {
	SMTP_CLIENT_DELIVERED, /* 2xx */
	SMTP_CLIENT_DEFERRED,  /* 4xx, or the connection was lost: retry later */
	SMTP_CLIENT_BOUNCED,   /* 5xx: permanent */
};

struct smtp_client_rcpt_result {
	enum smtp_client_outcome outcome;
	struct smtp_reply rcpt;	 /* the reply to RCPT (code 0 if RCPT was not sent) */
	struct smtp_reply final; /* the reply that decided the outcome */
};

struct smtp_client_result {
	const struct smtp_client_msg *msg;
	const struct smtp_client_rcpt_result *rcpts; /* rcpt_count entries, msg's order */
	size_t rcpt_count;
	unsigned delivered, deferred, bounced;
	bool used_bdat;
};

struct smtp_client_cb {
	/** Write bytes; returns how many the transport took (0..n).  Required. */
	size_t (*send)(void *user, const uint8_t *p, size_t n);
	/** The server said 220 to STARTTLS: handshake, then smtp_client_tls_started(). */
	void (*starttls)(void *user);
	/** Greeting, EHLO, STARTTLS and AUTH are done; called once.  Optional. */
	void (*ready)(void *user);
	/** A message is finished (each one exactly once).  r is valid during the call. */
	void (*message_done)(void *user, const struct smtp_client_result *r);
	/** The session is dead (protocol error, 421, timeout, ...): drop the connection. */
	void (*failed)(void *user, const struct smtp_reply *why);
	/** QUIT was answered (or timed out): close the connection. */
	void (*closed)(void *user);
};

/** Per core; sessions add to it.  A message counts in each class one of its rcpts got. */
struct smtp_client_stats {
	uint64_t sessions, sessions_ready, sessions_failed;
	uint64_t messages_sent, messages_deferred, messages_bounced;
	uint64_t rcpts_delivered, rcpts_deferred, rcpts_bounced;
	uint64_t pipelined_flights; /* MAIL..DATA/BDAT written without waiting */
	uint64_t data_messages, bdat_messages, bdat_chunks;
	uint64_t starttls, helo_fallbacks, rsets, auth_success, auth_failures;
	uint64_t refused_local; /* SIZE, 8BITMIME, SMTPUTF8, bad address: not sent */
	uint64_t protocol_errors, timeouts, send_blocked;
	uint64_t bytes_in, bytes_out, body_bytes;
	uint64_t txns_pipelined; /* transactions started behind another still in flight */
};

struct smtp_client;

/** conf (checked), cb and stats must outlive the client.  0, -EINVAL, -ENOMEM. */
int smtp_client_new(const struct smtp_client_conf *conf, const struct smtp_client_cb *cb,
		    void *user, struct smtp_client_stats *stats, struct smtp_client **out);
/**
 * Free.  A message not yet reported is reported deferred first (message_done,
 * then failed).  Not from inside a callback of this client.
 */
void smtp_client_free(struct smtp_client *c);
/**
 * Start over with the same conf, cb and stats for a new connection: as
 * smtp_client_free then smtp_client_new, keeping the client's memory (a
 * load generator opening a connection per message would otherwise allocate
 * and fault in ~36 KiB each time).  A message not yet reported is reported
 * deferred first.  0, or -EBUSY from inside a callback of this client.
 */
int smtp_client_reuse(struct smtp_client *c, void *user);
/** The connection is up (or TLS is up for implicit TLS): wait for the greeting. */
void smtp_client_start(struct smtp_client *c, bool tls_active);
/** Bytes from the server.  0, or -EPIPE when the session is dead/closed. */
int smtp_client_input(struct smtp_client *c, const uint8_t *p, size_t n);
/** The transport can take bytes again after a short cb->send. */
void smtp_client_writable(struct smtp_client *c);
/** The handshake asked by cb->starttls finished. */
void smtp_client_tls_started(struct smtp_client *c);
/**
 * Submit one message (one at a time, or up to smtp_client_txn_depth() in flight:
 * the next one after message_done, or after this call returned).  It is sent
 * once the session is ready.  Refusals decided on the server's capabilities
 * (SIZE, 8BITMIME, SMTPUTF8) come through message_done, maybe from inside this
 * call.  0, -EINVAL (bad message), -EBUSY (no room: depth unreported, started
 * or waiting to start), -EPIPE (dead).
 */
int smtp_client_send_message(struct smtp_client *c, const struct smtp_client_msg *m);
/** QUIT after the message in progress (if any); cb->closed after the reply. */
void smtp_client_quit(struct smtp_client *c);
/** The transport failed (peer closed, TLS handshake failed): like a lost connection. */
void smtp_client_abort(struct smtp_client *c, const char *why);
/** Absolute monotonic µs of the current wait's timeout; UINT64_MAX when idle or dead. */
uint64_t smtp_client_deadline(const struct smtp_client *c);
/** The deadline passed: the session fails (in-flight messages deferred). */
void smtp_client_timeout(struct smtp_client *c);
bool smtp_client_is_ready(const struct smtp_client *c); /* idle, a message may be sent */
bool smtp_client_is_dead(const struct smtp_client *c);	/* failed or closed */
bool smtp_client_tls_active(const struct smtp_client *c);

/** What the server's EHLO said (valid once ready). */
struct smtp_client_caps {
	bool esmtp, pipelining, size, eightbitmime, smtputf8, chunking, starttls, dsn, enhanced;
	bool auth_plain, auth_login;
	uint64_t size_max; /* 0: no limit given */
};
const struct smtp_client_caps *smtp_client_caps(const struct smtp_client *c);
/**
 * How many messages may be in flight on this session at once (valid once
 * ready): conf->max_txns_in_flight when the server offered PIPELINING (the
 * next message follows BDAT LAST, or "." without CHUNKING), else 1.
 * smtp_client_send_message() takes a message while fewer than this are
 * unreported; message_done comes for each in the order they were submitted.
 */
unsigned smtp_client_txn_depth(const struct smtp_client *c);

#endif
