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

#endif
