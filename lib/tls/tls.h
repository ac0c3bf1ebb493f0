/*
 * tls.h - TLS for mxrelay's own TCP connections: OpenSSL 3 behind a
 * transport-agnostic session object.
 *
 * No sockets, no threads, no blocking calls.  The caller (the per-core TCP
 * glue) moves ciphertext; this library turns it into plaintext and back:
 *
 *   TCP on_data      -> tls_conn_input(tc, cipher, len)  returns bytes taken
 *                       -> ops->on_plaintext(user, data, len) (push, returns bytes taken)
 *   SMTP wants send  -> tls_conn_write(tc, plain, len)   returns bytes taken
 *                       -> ops->on_ciphertext(user, data, len) (e.g. tcp_send)
 *   TCP on_writable  -> tls_conn_flush(tc), then tcp_recv_resume()
 *
 * Backpressure: ciphertext the sink did not take stays queued inside the
 * tls_conn (bounded by the context's max_output; counter output_queue_full)
 * and is offered again by tls_conn_flush().  While that queue is over its
 * bound, tls_conn_write() takes nothing and tls_conn_input() stops reading
 * records (their bytes stay with the caller, the TCP window closes).  The
 * same happens while on_plaintext leaves plaintext unconsumed (one record at
 * most is held); tls_conn_resume() offers it again.
 *
 * Threads: a server or client context is created once (at start-up) and is
 * then shared read-only by every lcore (SSL_new on an SSL_CTX is thread
 * safe in OpenSSL 3); the only shared mutable part is the server's session
 * ticket key set, behind a rwlock taken once per ticket.  Connections,
 * struct tls_stats and struct tls_session_cache are per core: no locks,
 * never touch another core's.
 *
 * Allocation: the application routes OpenSSL to jemalloc once at start-up
 * (mx_alloc_init in lib/core); this library never calls
 * CRYPTO_set_mem_functions itself.
 */
#ifndef MX_TLS_H
#define MX_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* ---- configuration ------------------------------------------------------ */

/** Protocol versions; TLS_VERSION_DEFAULT means TLS 1.2 as minimum, 1.3 as maximum. */
enum tls_version {
	TLS_VERSION_DEFAULT = 0,
	TLS_VERSION_1_2,
	TLS_VERSION_1_3,
};

/** Outbound policy per destination ([tls] outbound = none|opportunistic|verify). */
enum tls_policy {
	TLS_POLICY_NONE = 0,	  /* plain text: the caller does not use TLS at all */
	TLS_POLICY_OPPORTUNISTIC, /* encrypt, do not verify (RFC 7435) */
	TLS_POLICY_VERIFY,	  /* chain against ca_file and the MX host name */
};

/** "none", "opportunistic", "verify" -> policy.  0 or -EINVAL. */
int tls_policy_parse(const char *s, enum tls_policy *out);
const char *tls_policy_name(enum tls_policy p);
/** "TLSv1.2", "TLSv1.3" (or "1.2", "1.3") -> version.  0 or -EINVAL. */
int tls_version_parse(const char *s, enum tls_version *out);

#define TLS_MAX_CERTS 2 /* one RSA and one ECDSA pair, served by the client's sigalgs */

/* Defaults, each applied when the conf field is 0 or NULL. */
#define TLS_DEFAULT_MAX_OUTPUT (64u * 1024) /* queued ciphertext per connection */
#define TLS_DEFAULT_TICKET_ROTATION_US (12ull * 3600 * 1000000) /* new ticket key every 12 h */
#define TLS_DEFAULT_NUM_TICKETS 1 /* TLS 1.3 tickets per handshake: a client caches one */
/* Mozilla "intermediate" for TLS 1.2, ECDHE only (no DH parameters to manage). */
#define TLS_DEFAULT_SERVER_CIPHERS                                                                 \
	"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"                               \
	"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"                               \
	"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
/*
 * Outbound opportunistic TLS talks to whatever MX is out there: any cipher
 * beats plain text (RFC 7435 section 3), so the client keeps OpenSSL's
 * default list minus the anonymous and null ones.
 */
#define TLS_DEFAULT_CLIENT_CIPHERS "DEFAULT:!aNULL:!eNULL"
#define TLS_DEFAULT_TLS13_SUITES                                                                   \
	"TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
#define TLS_DEFAULT_GROUPS "X25519:P-256:P-384"

struct tls_server_conf {
	/* PEM chain file (leaf first) and key file per pair; cert_count of them. */
	const char *cert_file[TLS_MAX_CERTS];
	const char *key_file[TLS_MAX_CERTS];
	unsigned cert_count;
	enum tls_version min_version, max_version;
	const char *ciphers;	     /* TLS 1.2 cipher list; NULL = TLS_DEFAULT_SERVER_CIPHERS */
	const char *ciphersuites;    /* TLS 1.3; NULL = TLS_DEFAULT_TLS13_SUITES */
	const char *groups;	     /* NULL = TLS_DEFAULT_GROUPS */
	uint64_t ticket_rotation_us; /* 0 = TLS_DEFAULT_TICKET_ROTATION_US */
	unsigned num_tickets;	     /* 0 = TLS_DEFAULT_NUM_TICKETS */
	bool no_tickets;	     /* disable session tickets (no resumption) */
	size_t max_output;	     /* 0 = TLS_DEFAULT_MAX_OUTPUT */
	/*
	 * Keep OpenSSL's record buffers (~34 KiB) for a connection's life
	 * instead of releasing them whenever it goes quiet: saves a free and a
	 * malloc around every record, for servers with few busy sessions (an MX
	 * fed by pooled relays, the bench sink).  Off: a device fleet keeps many
	 * idle sessions open.
	 */
	bool keep_buffers;
};

struct tls_client_conf {
	const char *ca_file;		  /* PEM bundle for TLS_POLICY_VERIFY; NULL = none loaded */
	const char *cert_file, *key_file; /* optional client certificate */
	enum tls_version min_version, max_version;
	const char *ciphers;	  /* NULL = TLS_DEFAULT_CLIENT_CIPHERS */
	const char *ciphersuites; /* NULL = TLS_DEFAULT_TLS13_SUITES */
	const char *groups;	  /* NULL = TLS_DEFAULT_GROUPS */
	const char *sigalgs;	  /* NULL = OpenSSL's; e.g. "ECDSA+SHA256" to prefer a cert type */
	size_t max_output;	  /* 0 = TLS_DEFAULT_MAX_OUTPUT */
};

/* ---- counters (one block per core) --------------------------------------- */

struct tls_stats {
	uint64_t server_handshakes_full, server_handshakes_resumed;
	uint64_t client_handshakes_full, client_handshakes_resumed;
	/* Failures, by reason.  Handshake timeouts are the caller's timer: tls_conn_timed_out(). */
	uint64_t fail_verify;		/* peer certificate rejected (X509 error in the reason) */
	uint64_t fail_no_shared_cipher; /* also no shared group / signature algorithm */
	uint64_t fail_version;		/* no shared protocol version */
	uint64_t fail_peer_alert;	/* the peer sent a fatal alert */
	uint64_t fail_protocol;		/* malformed or unexpected records, bad MAC, ... */
	uint64_t fail_internal;		/* allocation or other local failures */
	uint64_t fail_timeout;		/* tls_conn_timed_out() before the handshake finished */
	uint64_t cipher_bytes_in, cipher_bytes_out; /* TLS records, as taken from/given to TCP */
	uint64_t plain_bytes_in, plain_bytes_out;   /* application data */
	uint64_t tickets_issued;		    /* server: session tickets encrypted */
	uint64_t output_queue_full;		    /* tls_conn_write() refused: output bound hit */
	uint64_t input_stalled; /* tls_conn_input() left bytes: output or plaintext full */
	uint64_t close_notify_sent, close_notify_received;
	uint64_t writes_coalesced; /* writes from callbacks that shared a record with another */
};

/* ---- contexts ------------------------------------------------------------- */

struct tls_server_ctx;
struct tls_client_ctx;

/**
 * One server context per listener, created once at start-up and then shared
 * read-only by all cores.  Loads every cert/key pair (RSA and ECDSA may both
 * be given; OpenSSL serves the one the client's signature algorithms allow),
 * TLS 1.2-1.3, no compression, no renegotiation, stateless session tickets
 * whose keys (per process, random) rotate every ticket_rotation_us: a ticket
 * is accepted under the current or the previous key.
 * Returns 0, -EINVAL (bad conf or file; message in err), -ENOMEM.
 */
int tls_server_ctx_create(const struct tls_server_conf *conf, struct tls_server_ctx **out,
			  char *err, size_t errlen);
void tls_server_ctx_free(struct tls_server_ctx *ctx);
/** Rotate the ticket key now (also done automatically on schedule).  0 or -errno. */
int tls_server_ctx_rotate_ticket_keys(struct tls_server_ctx *ctx);
/** Number of ticket key rotations so far (including the scheduled ones). */
uint64_t tls_server_ctx_ticket_rotations(const struct tls_server_ctx *ctx);

/** The outbound context, once per process.  0, -EINVAL (message in err), -ENOMEM. */
int tls_client_ctx_create(const struct tls_client_conf *conf, struct tls_client_ctx **out,
			  char *err, size_t errlen);
void tls_client_ctx_free(struct tls_client_ctx *ctx);

/* ---- client session cache (one per core, no locks) ------------------------- */

/**
 * Latest resumable session per destination "host:port", from the client's
 * new-session callback; at most capacity entries, least recently used ones
 * evicted, expired ones dropped at lookup.  A session from an unverified
 * (opportunistic) handshake is never offered to a TLS_POLICY_VERIFY
 * connection, because resumption skips certificate verification.
 */
struct tls_session_cache;

struct tls_cache_stats {
	uint64_t hits, misses, stores, evictions, expired, unverified_skipped;
};

#define TLS_CACHE_KEY_MAX 300 /* host (RFC 1035: 253) + ":" + port */

/** 0, -EINVAL (capacity 0 or > 1M), -ENOMEM. */
int tls_session_cache_create(size_t capacity, struct tls_session_cache **out);
void tls_session_cache_free(struct tls_session_cache *c);
size_t tls_session_cache_count(const struct tls_session_cache *c);
/** Drop every session expired at wall-clock now_s.  Returns how many were dropped. */
size_t tls_session_cache_expire(struct tls_session_cache *c, int64_t now_s);
/** Forget the destination's session (e.g. its certificate changed).  0 or -ENOENT. */
int tls_session_cache_remove(struct tls_session_cache *c, const char *host, uint16_t port);
const struct tls_cache_stats *tls_session_cache_stats(const struct tls_session_cache *c);

/* ---- connections ------------------------------------------------------------ */

struct tls_conn;

/** Given to on_handshake_done; the strings are static (OpenSSL's names). */
struct tls_handshake_info {
	const char *version; /* "TLSv1.3" */
	const char *cipher;  /* "TLS_AES_256_GCM_SHA384" */
	int cipher_bits;
	bool resumed;
	/*
	 * Client: the server's chain verified against ca_file and its name
	 * matched the host.  Also computed under TLS_POLICY_OPPORTUNISTIC (for
	 * logging) where it does not stop the handshake.  Server: false.
	 */
	bool verified;
	const char *verify_error;  /* X509 error string when !verified, "" otherwise */
	const char *peer_key_type; /* "RSA", "EC", "ED25519", ... or "" without a certificate */
	int peer_key_bits;
};

/**
 * Callbacks of one connection, all called on its core from inside a tls_conn_*
 * call.  A callback may call tls_conn_write/flush/shutdown on its own
 * connection, and tls_conn_free() (the free is then deferred until the
 * outermost tls_conn_* call returns); tls_conn_input() from a callback
 * returns -EBUSY and tls_conn_resume() does nothing (the running call
 * goes on reading).
 */
struct tls_conn_ops {
	/**
	 * Ciphertext to send (e.g. tcp_send).  Returns how many bytes were
	 * taken; the rest stays queued and is offered again by tls_conn_flush().
	 * Required.
	 */
	size_t (*on_ciphertext)(void *user, const uint8_t *data, size_t len);
	/**
	 * Decrypted application data.  Returns how many bytes were taken; the rest
	 * (one record at most) is held and reading stops until tls_conn_resume().
	 * Required.
	 */
	size_t (*on_plaintext)(void *user, const uint8_t *data, size_t len);
	/** Handshake finished (for the Received: header and the counters). */
	void (*on_handshake_done)(void *user, const struct tls_handshake_info *info);
	/**
	 * Fatal error (alert, verification failure with the X509 error string,
	 * malformed input).  The connection takes no more input; flush what is
	 * queued (the alert) and close TCP.
	 */
	void (*on_error)(void *user, const char *reason);
	/** The peer sent close_notify: no more plaintext will come. */
	void (*on_peer_closed)(void *user);
	/** Output queue went under its bound after tls_conn_write() took less than asked. */
	void (*on_writable)(void *user);
};

/**
 * Server side of an accepted connection.  stats (per core) must outlive it.
 * 0, -EINVAL, -ENOMEM.
 */
int tls_server_conn_new(struct tls_server_ctx *ctx, const struct tls_conn_ops *ops, void *user,
			struct tls_stats *stats, struct tls_conn **out);
/**
 * Client side towards host:port.  policy must not be TLS_POLICY_NONE.  host
 * is sent as SNI (unless it is an IP literal) and checked against the
 * certificate under TLS_POLICY_VERIFY.  cache (per core, may be NULL)
 * supplies a session to resume and receives the new one.
 * 0, -EINVAL, -ENOMEM.
 */
int tls_client_conn_new(struct tls_client_ctx *ctx, enum tls_policy policy, const char *host,
			uint16_t port, struct tls_session_cache *cache,
			const struct tls_conn_ops *ops, void *user, struct tls_stats *stats,
			struct tls_conn **out);
/** Free; sends nothing (call tls_conn_shutdown first for a clean close). */
void tls_conn_free(struct tls_conn *tc);

/** Start the handshake: the client's ClientHello goes out.  No-op for a server.  0 or -errno. */
int tls_conn_start(struct tls_conn *tc);
/**
 * Ciphertext received.  Drives the handshake, delivers plaintext, queues
 * and flushes any answer.  Returns the bytes taken (fewer than len while the
 * output queue is over its bound or plaintext is held; offer the rest
 * again later), or -EPROTO after a fatal error (on_error was called),
 * -EPIPE after close_notify was received, -EBUSY from inside a callback.
 */
ssize_t tls_conn_input(struct tls_conn *tc, const uint8_t *cipher, size_t len);
/**
 * Encrypt and send application data.  Returns the bytes taken: fewer than
 * len (maybe 0) when the output queue is over its bound (on_writable
 * follows), -ENOTCONN before the handshake finished, -EPIPE after
 * tls_conn_shutdown(), -EPROTO after a fatal error.
 * From inside a callback (up to 4 KiB in all) the data is staged and sealed
 * with the callback's other writes as one record when the outermost
 * tls_conn_* call returns (tls_stats.writes_coalesced): the replies to a
 * pipelined batch cost one record, not one each.
 */
ssize_t tls_conn_write(struct tls_conn *tc, const uint8_t *plain, size_t len);
/** Offer queued ciphertext to on_ciphertext again (call on TCP on_writable).  Bytes left queued. */
size_t tls_conn_flush(struct tls_conn *tc);
/** Offer held plaintext again and continue reading.  0 or -errno. */
int tls_conn_resume(struct tls_conn *tc);
/** Send close_notify (queued behind pending data).  0, -EPIPE if already sent, -EPROTO. */
int tls_conn_shutdown(struct tls_conn *tc);
/** The caller's handshake timer fired: counts fail_timeout, the connection is dead. */
void tls_conn_timed_out(struct tls_conn *tc);

/** Ciphertext queued, not yet taken by on_ciphertext. */
size_t tls_conn_output_pending(const struct tls_conn *tc);
/** Would tls_conn_input() read now (no held plaintext, output under bound, alive)? */
bool tls_conn_want_input(const struct tls_conn *tc);
bool tls_conn_handshake_done(const struct tls_conn *tc);
bool tls_conn_resumed(const struct tls_conn *tc);
/** "TLSv1.3" / cipher name; "" before the handshake finished. */
const char *tls_conn_version(const struct tls_conn *tc);
const char *tls_conn_cipher(const struct tls_conn *tc);
/** Last error reason ("" when none). */
const char *tls_conn_error(const struct tls_conn *tc);

#endif
