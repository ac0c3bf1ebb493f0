/*
 * conn.c - struct tls_conn: one SSL driven through an in-memory transport.
 *
 * The SSL's BIO is our own method (not BIO_s_mem), for two reasons:
 *  - input is zero-copy and exact: while tls_conn_input() runs, the BIO
 *    reads straight from the caller's buffer, so "bytes taken" is exactly
 *    what OpenSSL pulled (partial records stay inside OpenSSL's record
 *    buffer, whole unread records stay with the caller, i.e. in TCP's
 *    receive buffer, and the window closes);
 *  - output goes to a queue we own, offered to on_ciphertext without a copy,
 *    sized on demand and released when empty (a fleet keeps many idle
 *    sessions open).  The BIO never refuses a write, so OpenSSL never enters
 *    its "retry the same SSL_write" state; instead the queue is bounded
 *    from outside: no plaintext is taken and no record is read while the
 *    queue is over max_output.  It can exceed the bound by at most one
 *    write chunk's record overhead or one handshake flight.
 *
 * Plaintext is pushed to on_plaintext one record at a time from a stack
 * buffer; what the callback leaves is copied to a per-connection hold
 * buffer (one record at most) and reading stops until tls_conn_resume().
 *
 * Callbacks may free the connection: the free is deferred until the
 * outermost public call returns (busy count).
 *
 * Writes made from inside a callback (an SMTP server answering the commands
 * of a pipelined batch, a client sending its next transaction on a reply)
 * are staged as plaintext (up to TLS_STAGE_MAX) and sealed as one record
 * when the outermost call returns: a record's cipher set-up, tag and header
 * cost most of a microsecond whatever its size, and lib/smtp's server
 * answers a pipelined 1 KiB message in two writes (it flushes its replies
 * before a commit and at the end of the input).  Order is kept: a write
 * that does not fit seals the stage first and goes alone.
 */
#include "tls_internal.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <arpa/inet.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

#define TLS_RECORD_MAX 16384u /* RFC 8446 5.1: plaintext per record */
/* Hard ceiling beyond max_output: a handshake flight or one chunk's overhead. */
#define TLS_OUTPUT_SLACK (64u * 1024)
/* Output buffers bigger than this are released when the queue empties. */
#define TLS_OUTPUT_KEEP 4096u
/* Plaintext staged from callbacks (SMTP replies); a write that does not fit goes alone. */
#define TLS_STAGE_MAX 4096u

struct tls_conn {
	struct tls_ctx_base *base;
	SSL *ssl;
	const struct tls_conn_ops *ops;
	void *user;
	struct tls_stats *stats;
	struct tls_session_cache *cache;
	enum tls_policy policy;

	/* Input offered by the current tls_conn_input() call. */
	const uint8_t *in_ptr;
	size_t in_len, in_off;

	/* Ciphertext queue: bytes [out_head, out_head + out_len) of out_buf. */
	uint8_t *out_buf;
	size_t out_head, out_len, out_cap;

	/* Plaintext on_plaintext did not take. */
	uint8_t *hold_buf;
	size_t hold_off, hold_len;

	/* Plaintext written from callbacks, sealed when the outermost call returns. */
	uint8_t *stage_buf;
	size_t stage_len;
	unsigned stage_writes;

	unsigned busy;
	bool free_pending;
	bool handshake_done, resumed, failed, peer_closed, shutdown_sent;
	bool write_blocked, flushing;
	char error[256];
	char cache_key[TLS_CACHE_KEY_MAX];
};

/* ---- the transport BIO ------------------------------------------------------ */

static int out_reserve(struct tls_conn *tc, size_t add)
{
	size_t need = tc->out_len + add;

	if (need > tc->base->max_output + TLS_OUTPUT_SLACK)
		return -ENOBUFS;
	if (tc->out_head + need <= tc->out_cap)
		return 0;
	if (need <= tc->out_cap) {
		memmove(tc->out_buf, tc->out_buf + tc->out_head, tc->out_len);
		tc->out_head = 0;
		return 0;
	}
	size_t cap = tc->out_cap ? tc->out_cap : 2048;
	while (cap < need)
		cap *= 2;
	uint8_t *nb = malloc(cap);
	if (nb == NULL)
		return -ENOMEM;
	if (tc->out_len)
		memcpy(nb, tc->out_buf + tc->out_head, tc->out_len);
	free(tc->out_buf);
	tc->out_buf = nb;
	tc->out_cap = cap;
	tc->out_head = 0;
	return 0;
}

static int bio_write_ex(BIO *b, const char *data, size_t len, size_t *written)
{
	struct tls_conn *tc = BIO_get_data(b);

	BIO_clear_retry_flags(b);
	*written = 0;
	if (tc == NULL || out_reserve(tc, len) < 0)
		return 0; /* no retry flag: a hard error for OpenSSL */
	memcpy(tc->out_buf + tc->out_head + tc->out_len, data, len);
	tc->out_len += len;
	*written = len;
	return 1;
}

static int bio_read_ex(BIO *b, char *out, size_t outl, size_t *readbytes)
{
	struct tls_conn *tc = BIO_get_data(b);
	size_t avail;

	BIO_clear_retry_flags(b);
	*readbytes = 0;
	if (tc == NULL)
		return 0;
	avail = tc->in_ptr ? tc->in_len - tc->in_off : 0;
	if (avail == 0) {
		BIO_set_retry_read(b);
		return 0;
	}
	if (outl > avail)
		outl = avail;
	memcpy(out, tc->in_ptr + tc->in_off, outl);
	tc->in_off += outl;
	*readbytes = outl;
	return 1;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
	struct tls_conn *tc = BIO_get_data(b);

	(void)num;
	(void)ptr;
	switch (cmd) {
	case BIO_CTRL_FLUSH:
		return 1; /* the queue is flushed by us, after OpenSSL returns */
	case BIO_CTRL_PENDING:
		return tc && tc->in_ptr ? (long)(tc->in_len - tc->in_off) : 0;
	case BIO_CTRL_WPENDING:
		return tc ? (long)tc->out_len : 0;
	default:
		return 0;
	}
}

static int bio_create(BIO *b)
{
	BIO_set_data(b, NULL);
	BIO_set_init(b, 1);
	return 1;
}

static int bio_destroy(BIO *b)
{
	BIO_set_data(b, NULL);
	return 1;
}

BIO_METHOD *tls_bio_method_new(void)
{
	BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "mxrelay-tls");

	if (m == NULL)
		return NULL;
	if (!BIO_meth_set_write_ex(m, bio_write_ex) || !BIO_meth_set_read_ex(m, bio_read_ex) ||
	    !BIO_meth_set_ctrl(m, bio_ctrl) || !BIO_meth_set_create(m, bio_create) ||
	    !BIO_meth_set_destroy(m, bio_destroy)) {
		BIO_meth_free(m);
		return NULL;
	}
	return m;
}

/* ---- helpers ---------------------------------------------------------------- */

struct tls_conn *tls_conn_from_ssl(const SSL *ssl)
{
	return SSL_get_app_data(ssl);
}

void tls_conn_count_ticket(struct tls_conn *tc)
{
	tc->stats->tickets_issued++;
}

/*
 * The cache keeps its own copy: OpenSSL marks a connection's session
 * not resumable when that SSL is freed without a close_notify exchange
 * (ssl_clear_bad_session), and pooled SMTP connections often end that way.
 */
int tls_conn_session_new(struct tls_conn *tc, SSL_SESSION *sess)
{
	SSL_SESSION *copy;
	long vr;
	bool verified;

	if (tc->cache == NULL || !SSL_SESSION_is_resumable(sess))
		return 0;
	vr = SSL_get_verify_result(tc->ssl);
	verified = vr == X509_V_OK && SSL_get0_peer_certificate(tc->ssl) != NULL;
	copy = SSL_SESSION_dup(sess);
	if (copy == NULL) {
		ERR_clear_error();
		return 0;
	}
	if (tls_cache_store(tc->cache, tc->cache_key, copy, verified, (int64_t)time(NULL)) < 0)
		SSL_SESSION_free(copy);
	return 0; /* OpenSSL keeps (and frees) the original */
}

/*
 * Before an SSL call whose failure SSL_get_error() will explain: the error
 * queue must hold nothing older.  SSL_get_error() looks only at
 * ERR_peek_error(), so an empty queue (the rule) needs no clearing, and
 * ERR_clear_error() walks all its slots: peeking first halves the cost of
 * reading a record.
 */
static void err_clear(void)
{
	if (ERR_peek_error() != 0)
		ERR_clear_error();
}

static void enter(struct tls_conn *tc)
{
	tc->busy++;
}

static void conn_destroy(struct tls_conn *tc)
{
	/*
	 * Without these flags SSL_free marks the session not resumable, and a
	 * resumed connection shares its SSL_SESSION with the cache.  Failed
	 * connections have already dropped their cache entry (fail()).
	 */
	if (tc->ssl != NULL)
		SSL_set_shutdown(tc->ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
	SSL_free(tc->ssl); /* frees the BIO too */
	free(tc->out_buf);
	free(tc->hold_buf);
	free(tc->stage_buf);
	free(tc);
}

static bool dead(const struct tls_conn *tc)
{
	return tc->failed || tc->free_pending;
}

static void fail(struct tls_conn *tc, int ssl_err);
static void flush_queue(struct tls_conn *tc);

/* Encrypt the staged plaintext as one record (our BIO never refuses a write). */
static void seal_stage(struct tls_conn *tc)
{
	size_t w = 0;

	if (tc->stage_len == 0)
		return;
	if (!dead(tc)) {
		err_clear();
		if (!SSL_write_ex(tc->ssl, tc->stage_buf, tc->stage_len, &w))
			fail(tc, SSL_get_error(tc->ssl, 0));
		else if (tc->stage_writes > 1)
			tc->stats->writes_coalesced += tc->stage_writes - 1;
	}
	tc->stage_len = 0;
	tc->stage_writes = 0;
	if (!tc->base->keep_buffers) {
		free(tc->stage_buf); /* idle connections keep no buffers */
		tc->stage_buf = NULL;
	}
}

/*
 * Ends a public call; tc may be gone afterwards.  The outermost call seals
 * what callbacks wrote during it and offers the record; a write made by
 * on_ciphertext meanwhile is sealed too and waits in the queue for the next
 * flush, like any ciphertext on_ciphertext does not take.
 */
static void leave(struct tls_conn *tc)
{
	if (tc->busy == 1 && tc->stage_len > 0) {
		seal_stage(tc);
		flush_queue(tc);
		seal_stage(tc);
	}
	if (--tc->busy == 0 && tc->free_pending)
		conn_destroy(tc);
}

/* Offer queued ciphertext to the sink; no on_writable here. */
static void flush_queue(struct tls_conn *tc)
{
	if (tc->flushing)
		return; /* on_ciphertext called back into us */
	tc->flushing = true;
	while (tc->out_len > 0 && !tc->free_pending) {
		size_t n =
			tc->ops->on_ciphertext(tc->user, tc->out_buf + tc->out_head, tc->out_len);

		if (n > tc->out_len)
			n = tc->out_len;
		if (n == 0)
			break;
		tc->out_head += n;
		tc->out_len -= n;
		tc->stats->cipher_bytes_out += n;
	}
	if (tc->out_len == 0) {
		tc->out_head = 0;
		if (tc->out_cap > TLS_OUTPUT_KEEP) {
			free(tc->out_buf);
			tc->out_buf = NULL;
			tc->out_cap = 0;
		}
	}
	tc->flushing = false;
}

static void report_error(struct tls_conn *tc)
{
	if (tc->ops->on_error != NULL && !tc->free_pending)
		tc->ops->on_error(tc->user, tc->error);
}

/*
 * Classify a failed SSL call, count it, remember and report the reason.
 * OpenSSL reports a received alert as reason SSL_AD_REASON_OFFSET + code.
 */
static void fail(struct tls_conn *tc, int ssl_err)
{
	unsigned long e = ERR_peek_error();
	int reason = ERR_GET_REASON(e);
	struct tls_stats *st = tc->stats;

	if (tc->failed)
		return;
	tc->failed = true;
	if (e == 0) {
		st->fail_internal++;
		snprintf(tc->error, sizeof(tc->error), "TLS transport error (SSL error %d)",
			 ssl_err);
	} else if (ERR_GET_LIB(e) == ERR_LIB_SSL && reason == SSL_R_CERTIFICATE_VERIFY_FAILED) {
		st->fail_verify++;
		snprintf(tc->error, sizeof(tc->error), "certificate verify failed: %s",
			 X509_verify_cert_error_string(SSL_get_verify_result(tc->ssl)));
	} else if (ERR_GET_LIB(e) == ERR_LIB_SSL &&
		   (reason == SSL_R_NO_SHARED_CIPHER || reason == SSL_R_NO_SHARED_GROUPS ||
		    reason == SSL_R_NO_SUITABLE_SIGNATURE_ALGORITHM ||
		    reason == SSL_R_NO_CIPHERS_AVAILABLE)) {
		st->fail_no_shared_cipher++;
		snprintf(tc->error, sizeof(tc->error), "no shared cipher: %s",
			 ERR_reason_error_string(e));
	} else if (ERR_GET_LIB(e) == ERR_LIB_SSL && (reason == SSL_R_UNSUPPORTED_PROTOCOL ||
						     reason == SSL_R_NO_PROTOCOLS_AVAILABLE)) {
		st->fail_version++;
		snprintf(tc->error, sizeof(tc->error), "no shared protocol version: %s",
			 ERR_reason_error_string(e));
	} else if (ERR_GET_LIB(e) == ERR_LIB_SSL && reason >= SSL_AD_REASON_OFFSET &&
		   reason < SSL_AD_REASON_OFFSET + 256) {
		st->fail_peer_alert++;
		snprintf(tc->error, sizeof(tc->error), "peer sent alert: %s",
			 SSL_alert_desc_string_long(reason - SSL_AD_REASON_OFFSET));
	} else if (ERR_GET_LIB(e) == ERR_LIB_SSL || ERR_GET_LIB(e) == ERR_LIB_X509 ||
		   ERR_GET_LIB(e) == ERR_LIB_ASN1) {
		st->fail_protocol++;
		const char *rs = ERR_reason_error_string(e);
		snprintf(tc->error, sizeof(tc->error), "protocol error: %s", rs ? rs : "unknown");
	} else {
		st->fail_internal++;
		char buf[200];
		ERR_error_string_n(e, buf, sizeof(buf));
		snprintf(tc->error, sizeof(tc->error), "internal error: %s", buf);
	}
	ERR_clear_error();
	/* A destination whose connection failed should not be resumed blindly. */
	if (tc->cache != NULL)
		tls_cache_forget(tc->cache, tc->cache_key);
	report_error(tc);
}

static void handshake_complete(struct tls_conn *tc)
{
	struct tls_handshake_info info;
	const SSL_CIPHER *c = SSL_get_current_cipher(tc->ssl);
	X509 *peer = SSL_get0_peer_certificate(tc->ssl);
	long vr = SSL_get_verify_result(tc->ssl);

	tc->handshake_done = true;
	tc->resumed = SSL_session_reused(tc->ssl);
	if (tc->base->server) {
		if (tc->resumed)
			tc->stats->server_handshakes_resumed++;
		else
			tc->stats->server_handshakes_full++;
	} else {
		if (tc->resumed)
			tc->stats->client_handshakes_resumed++;
		else
			tc->stats->client_handshakes_full++;
	}
	if (tc->ops->on_handshake_done == NULL)
		return;
	memset(&info, 0, sizeof(info));
	info.version = SSL_get_version(tc->ssl);
	info.cipher = c ? SSL_CIPHER_get_name(c) : "";
	info.cipher_bits = c ? SSL_CIPHER_get_bits(c, NULL) : 0;
	info.resumed = tc->resumed;
	info.verified = !tc->base->server && peer != NULL && vr == X509_V_OK;
	info.verify_error = "";
	if (!tc->base->server && !info.verified)
		info.verify_error =
			peer ? X509_verify_cert_error_string(vr) : "no peer certificate";
	info.peer_key_type = "";
	if (peer != NULL) {
		EVP_PKEY *pk = X509_get0_pubkey(peer);

		if (pk != NULL) {
			int id = EVP_PKEY_get_base_id(pk);

			info.peer_key_type = id == EVP_PKEY_RSA	      ? "RSA"
					     : id == EVP_PKEY_EC      ? "EC"
					     : id == EVP_PKEY_ED25519 ? "ED25519"
					     : id == EVP_PKEY_ED448   ? "ED448"
					     : id == EVP_PKEY_RSA_PSS ? "RSA-PSS"
								      : "other";
			info.peer_key_bits = EVP_PKEY_get_bits(pk);
		}
	}
	tc->ops->on_handshake_done(tc->user, &info);
}

/* Give plaintext to the consumer, holding what it leaves.  false if some is held. */
static bool deliver(struct tls_conn *tc, const uint8_t *p, size_t n)
{
	size_t taken = tc->ops->on_plaintext(tc->user, p, n);

	if (taken >= n || dead(tc))
		return true;
	if (tc->hold_buf == NULL) {
		tc->hold_buf = malloc(TLS_RECORD_MAX);
		if (tc->hold_buf == NULL) {
			tc->failed = true;
			tc->stats->fail_internal++;
			snprintf(tc->error, sizeof(tc->error), "out of memory holding plaintext");
			report_error(tc);
			return true;
		}
	}
	/* n <= TLS_RECORD_MAX: one SSL_read returns at most one record. */
	memcpy(tc->hold_buf, p + taken, n - taken);
	tc->hold_off = 0;
	tc->hold_len = n - taken;
	return false;
}

static bool deliver_held(struct tls_conn *tc)
{
	while (tc->hold_len > 0 && !dead(tc)) {
		size_t taken =
			tc->ops->on_plaintext(tc->user, tc->hold_buf + tc->hold_off, tc->hold_len);

		if (taken == 0)
			return false;
		if (taken > tc->hold_len)
			taken = tc->hold_len;
		tc->hold_off += taken;
		tc->hold_len -= taken;
	}
	if (tc->hold_len == 0) {
		free(tc->hold_buf);
		tc->hold_buf = NULL;
		tc->hold_off = 0;
	}
	return tc->hold_len == 0;
}

/* Run the handshake and read records as far as input, output bound and consumer allow. */
static void drive(struct tls_conn *tc)
{
	uint8_t buf[TLS_RECORD_MAX];

	while (!dead(tc)) {
		if (!tc->handshake_done) {
			int r;

			err_clear();
			r = SSL_do_handshake(tc->ssl);
			if (r == 1) {
				handshake_complete(tc);
				continue;
			}
			int e = SSL_get_error(tc->ssl, r);
			if (e != SSL_ERROR_WANT_READ)
				fail(tc, e);
			break;
		}
		if (tc->hold_len > 0 && !deliver_held(tc))
			break;
		if (tc->peer_closed || dead(tc))
			break;
		if (tc->out_len >= tc->base->max_output)
			break;

		size_t n = 0;
		/* The consumer ran since the last call, and may have left errors (any
		 * OpenSSL user on this thread): SSL_get_error() must not see them. */
		err_clear();
		if (SSL_read_ex(tc->ssl, buf, sizeof(buf), &n)) {
			tc->stats->plain_bytes_in += n;
			deliver(tc, buf, n);
			continue;
		}
		int e = SSL_get_error(tc->ssl, 0);
		if (e == SSL_ERROR_WANT_READ)
			break;
		if (e == SSL_ERROR_ZERO_RETURN) {
			/* RFC 8446 6.1: close_notify; no more data in this direction. */
			tc->peer_closed = true;
			tc->stats->close_notify_received++;
			if (tc->ops->on_peer_closed != NULL)
				tc->ops->on_peer_closed(tc->user);
			break;
		}
		fail(tc, e);
		break;
	}
}

/* ---- public API ------------------------------------------------------------------- */

static int conn_new(struct tls_ctx_base *base, const struct tls_conn_ops *ops, void *user,
		    struct tls_stats *stats, struct tls_conn **out)
{
	struct tls_conn *tc;
	BIO *bio;

	if (base == NULL || ops == NULL || ops->on_ciphertext == NULL ||
	    ops->on_plaintext == NULL || stats == NULL || out == NULL)
		return -EINVAL;
	tc = calloc(1, sizeof(*tc));
	if (tc == NULL)
		return -ENOMEM;
	tc->base = base;
	tc->ops = ops;
	tc->user = user;
	tc->stats = stats;
	tc->ssl = SSL_new(base->ssl_ctx);
	bio = BIO_new(base->bio_method);
	if (tc->ssl == NULL || bio == NULL) {
		BIO_free(bio);
		SSL_free(tc->ssl);
		free(tc);
		ERR_clear_error();
		return -ENOMEM;
	}
	BIO_set_data(bio, tc);
	SSL_set_bio(tc->ssl, bio, bio);
	SSL_set_app_data(tc->ssl, tc);
	*out = tc;
	return 0;
}

int tls_server_conn_new(struct tls_server_ctx *ctx, const struct tls_conn_ops *ops, void *user,
			struct tls_stats *stats, struct tls_conn **out)
{
	int rc;

	if (ctx == NULL)
		return -EINVAL;
	rc = conn_new(&ctx->base, ops, user, stats, out);
	if (rc == 0)
		SSL_set_accept_state((*out)->ssl);
	return rc;
}

static bool is_ip_literal(const char *host)
{
	unsigned char a[16];

	return inet_pton(AF_INET, host, a) == 1 || inet_pton(AF_INET6, host, a) == 1;
}

int tls_client_conn_new(struct tls_client_ctx *ctx, enum tls_policy policy, const char *host,
			uint16_t port, struct tls_session_cache *cache,
			const struct tls_conn_ops *ops, void *user, struct tls_stats *stats,
			struct tls_conn **out)
{
	char name[256];
	size_t hl;
	struct tls_conn *tc;
	int rc;

	if (ctx == NULL || host == NULL ||
	    (policy != TLS_POLICY_OPPORTUNISTIC && policy != TLS_POLICY_VERIFY))
		return -EINVAL;
	hl = strlen(host);
	if (hl > 2 && host[0] == '[' && host[hl - 1] == ']') {
		host++; /* an address literal "[192.0.2.10]": the address itself */
		hl -= 2;
	}
	if (hl > 0 && host[hl - 1] == '.')
		hl--; /* "mx.example.com." from DNS: match without the root dot */
	if (hl == 0 || hl >= sizeof(name))
		return -EINVAL;
	/*
	 * Lower case: names are case-insensitive (RFC 4343) but OpenSSL compares
	 * a session's SNI with strcmp before resuming it.
	 */
	for (size_t i = 0; i < hl; i++)
		name[i] = (char)(host[i] >= 'A' && host[i] <= 'Z' ? host[i] - 'A' + 'a' : host[i]);
	name[hl] = '\0';
	rc = conn_new(&ctx->base, ops, user, stats, &tc);
	if (rc < 0)
		return rc;
	tc->policy = policy;
	SSL_set_connect_state(tc->ssl);
	if (is_ip_literal(name)) {
		/* RFC 6066 3: SNI carries host names only. */
		if (!X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(tc->ssl), name))
			goto fail;
	} else {
		if (!SSL_set_tlsext_host_name(tc->ssl, name) || !SSL_set1_host(tc->ssl, name))
			goto fail;
		SSL_set_hostflags(tc->ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
	}
	/*
	 * Opportunistic: verification still runs (its result is reported and
	 * decides whether the session may later serve a verify connection), it
	 * just does not stop the handshake.
	 */
	SSL_set_verify(tc->ssl, policy == TLS_POLICY_VERIFY ? SSL_VERIFY_PEER : SSL_VERIFY_NONE,
		       NULL);
	if (cache != NULL) {
		if (tls_cache_key(tc->cache_key, sizeof(tc->cache_key), name, port) < 0)
			goto fail;
		tc->cache = cache;
		SSL_SESSION *sess = tls_cache_lookup(
			cache, tc->cache_key, policy == TLS_POLICY_VERIFY, (int64_t)time(NULL));
		if (sess != NULL && !SSL_set_session(tc->ssl, sess))
			ERR_clear_error(); /* resumption is an optimisation */
		SSL_SESSION_free(sess);	   /* SSL_set_session took its own reference */
	}
	*out = tc;
	return 0;
fail:
	ERR_clear_error();
	conn_destroy(tc);
	return -EINVAL;
}

void tls_conn_free(struct tls_conn *tc)
{
	if (tc == NULL)
		return;
	if (tc->busy > 0) {
		tc->free_pending = true;
		return;
	}
	conn_destroy(tc);
}

int tls_conn_start(struct tls_conn *tc)
{
	int rc = 0;

	if (tc == NULL)
		return -EINVAL;
	if (tc->base->server)
		return 0;
	enter(tc);
	if (!tc->handshake_done) {
		drive(tc);
		seal_stage(tc);
		flush_queue(tc);
	}
	if (tc->failed)
		rc = -EPROTO;
	leave(tc);
	return rc;
}

ssize_t tls_conn_input(struct tls_conn *tc, const uint8_t *cipher, size_t len)
{
	ssize_t ret;

	if (tc == NULL || (cipher == NULL && len > 0))
		return -EINVAL;
	if (tc->failed)
		return -EPROTO;
	if (tc->peer_closed)
		return -EPIPE;
	if (tc->busy > 0)
		return -EBUSY; /* from inside a callback: would reorder input */
	enter(tc);
	tc->in_ptr = cipher;
	tc->in_len = len;
	tc->in_off = 0;
	for (;;) {
		size_t off0 = tc->in_off, out0 = tc->out_len;

		drive(tc);
		seal_stage(tc);
		flush_queue(tc);
		if (dead(tc) || tc->peer_closed || tc->in_off == tc->in_len)
			break;
		/* Stalled: go round again only if the flush made room. */
		if (tc->in_off == off0 && tc->out_len >= out0)
			break;
		if (tc->out_len >= tc->base->max_output || tc->hold_len > 0)
			break;
	}
	tc->in_ptr = NULL;
	tc->stats->cipher_bytes_in += tc->in_off;
	if (tc->failed) {
		ret = -EPROTO;
	} else {
		ret = (ssize_t)tc->in_off;
		if (tc->in_off < len && !tc->peer_closed)
			tc->stats->input_stalled++;
	}
	leave(tc);
	return ret;
}

ssize_t tls_conn_write(struct tls_conn *tc, const uint8_t *plain, size_t len)
{
	size_t done = 0;
	ssize_t ret;

	if (tc == NULL || (plain == NULL && len > 0))
		return -EINVAL;
	if (tc->failed)
		return -EPROTO;
	if (tc->shutdown_sent)
		return -EPIPE;
	if (!tc->handshake_done)
		return -ENOTCONN;
	if (tc->busy > 0 && !dead(tc) && len > 0 && len <= TLS_STAGE_MAX - tc->stage_len &&
	    tc->out_len < tc->base->max_output) {
		/* From a callback: the outermost call seals it with the rest (leave). */
		if (tc->stage_buf == NULL)
			tc->stage_buf = malloc(TLS_STAGE_MAX);
		if (tc->stage_buf != NULL) {
			memcpy(tc->stage_buf + tc->stage_len, plain, len);
			tc->stage_len += len;
			tc->stage_writes++;
			tc->stats->plain_bytes_out += len;
			return (ssize_t)len;
		}
	}
	enter(tc);
	seal_stage(tc); /* what was staged goes first */
	/* Once per call: between chunks only our BIO runs, and a successful
	 * SSL_write_ex leaves the error queue as it found it. */
	err_clear();
	while (done < len && !dead(tc)) {
		if (tc->out_len >= tc->base->max_output) {
			flush_queue(tc);
			if (tc->out_len >= tc->base->max_output) {
				tc->write_blocked = true;
				tc->stats->output_queue_full++;
				break;
			}
		}
		size_t chunk = len - done, room = tc->base->max_output - tc->out_len, w = 0;
		if (chunk > room)
			chunk = room;
		if (chunk > TLS_RECORD_MAX)
			chunk = TLS_RECORD_MAX;
		if (!SSL_write_ex(tc->ssl, plain + done, chunk, &w)) {
			fail(tc, SSL_get_error(tc->ssl, 0));
			break;
		}
		done += w;
		tc->stats->plain_bytes_out += w;
	}
	flush_queue(tc);
	ret = tc->failed && done == 0 ? -EPROTO : (ssize_t)done;
	leave(tc);
	return ret;
}

size_t tls_conn_flush(struct tls_conn *tc)
{
	size_t left;

	if (tc == NULL)
		return 0;
	enter(tc);
	flush_queue(tc);
	if (tc->write_blocked && tc->out_len < tc->base->max_output && !dead(tc)) {
		tc->write_blocked = false;
		if (tc->ops->on_writable != NULL)
			tc->ops->on_writable(tc->user);
		seal_stage(tc);
		flush_queue(tc);
	}
	left = tc->out_len;
	leave(tc);
	return left;
}

int tls_conn_resume(struct tls_conn *tc)
{
	int rc = 0;

	if (tc == NULL)
		return -EINVAL;
	if (tc->failed)
		return -EPROTO;
	if (tc->busy > 0)
		return 0; /* from inside a callback: the running loop goes on reading */
	enter(tc);
	if (tc->handshake_done) {
		/* No input is offered: this delivers held plaintext and stops at WANT_READ. */
		drive(tc);
		seal_stage(tc);
		flush_queue(tc);
	}
	if (tc->failed)
		rc = -EPROTO;
	leave(tc);
	return rc;
}

int tls_conn_shutdown(struct tls_conn *tc)
{
	int rc = 0;

	if (tc == NULL)
		return -EINVAL;
	if (tc->failed)
		return -EPROTO;
	if (tc->shutdown_sent)
		return -EPIPE;
	if (!tc->handshake_done)
		return -ENOTCONN;
	enter(tc);
	seal_stage(tc); /* close_notify follows the data written before it */
	ERR_clear_error();
	int r = SSL_shutdown(tc->ssl);
	if (r < 0) {
		fail(tc, SSL_get_error(tc->ssl, r));
		rc = -EPROTO;
	} else {
		tc->shutdown_sent = true;
		tc->stats->close_notify_sent++;
	}
	flush_queue(tc);
	leave(tc);
	return rc;
}

void tls_conn_timed_out(struct tls_conn *tc)
{
	if (tc == NULL || tc->failed)
		return;
	if (!tc->handshake_done)
		tc->stats->fail_timeout++;
	tc->failed = true;
	snprintf(tc->error, sizeof(tc->error), "%s timed out",
		 tc->handshake_done ? "connection" : "handshake");
}

size_t tls_conn_output_pending(const struct tls_conn *tc)
{
	return tc ? tc->out_len + tc->stage_len : 0;
}

bool tls_conn_want_input(const struct tls_conn *tc)
{
	return tc && !dead(tc) && !tc->peer_closed && tc->hold_len == 0 &&
	       tc->out_len < tc->base->max_output;
}

bool tls_conn_handshake_done(const struct tls_conn *tc)
{
	return tc && tc->handshake_done;
}

bool tls_conn_resumed(const struct tls_conn *tc)
{
	return tc && tc->resumed;
}

const char *tls_conn_version(const struct tls_conn *tc)
{
	return tc && tc->handshake_done ? SSL_get_version(tc->ssl) : "";
}

const char *tls_conn_cipher(const struct tls_conn *tc)
{
	const SSL_CIPHER *c;

	if (tc == NULL || !tc->handshake_done)
		return "";
	c = SSL_get_current_cipher(tc->ssl);
	return c ? SSL_CIPHER_get_name(c) : "";
}

const char *tls_conn_error(const struct tls_conn *tc)
{
	return tc ? tc->error : "";
}
