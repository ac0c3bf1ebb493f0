/*
 * smtpd.c - SMTP service of one worker.
 *
 * For every accepted TCP connection a struct smtpd_conn ties together:
 *
 *   TCP on_data --> [tls_conn_input --> on_plaintext] --> smtp_session_input
 *   smtp send   --> [tls_conn_write --> on_ciphertext] --> tcp_send
 *   message_*   --> spool_msg_begin / append / commit; spool_poll reports
 *                   the durable commit and only then smtp_session_message_done
 *                   says "250 2.0.0 Ok: queued as ID".
 *
 * Backpressure is passed along, never absorbed: what the session does not
 * take stays in TCP's receive buffer (the window closes) and is re-offered
 * with tcp_recv_resume(); replies TCP or TLS cannot take yet wait in a
 * bounded per-connection buffer.  A connection whose TCP side is gone while
 * a commit is in flight stays allocated (as a zombie) until the spool
 * reports that commit, so a completion never touches freed memory.  Nothing
 * is freed from inside a callback of the object being freed: finished
 * connections go on a reap list handled by smtpd_poll().
 */
#include "smtpd.h"
#include "deliver.h"
#include "signer.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define OUT_MAX (256u * 1024) /* replies waiting for TCP/TLS, per connection */
/*
 * Replies to a pipelined group that ends with a whole message (MAIL, RCPT,
 * BDAT LAST and its chunk in one segment, as a device fleet sends them)
 * are held until the message's own "250 queued": RFC 2920 section 3.2 asks
 * a server to send the responses to grouped MAIL and RCPT commands as a
 * unit, and the client waits for the last one anyway.  One segment instead
 * of two, each way.  Longer groups are sent as before.
 */
#define HELD_MAX 256u
#define TIMEOUT_SCAN_US 250000u
#define SPOOL_BATCH 64
#define SIGNER_POOL 128 /* idle DKIM signers kept per worker (one per message in signing) */
#define SIGN_COLLECT 32 /* finished signatures taken per poll */
#define SIGN_WAIT_US 10000000 /* at shutdown: the longest wait for signer lcores */
#define CLIENT_SETS 1024 /* per-client table: sets of CLIENT_WAYS entries, per worker */
#define CLIENT_WAYS 8
#define HELD_GENS 8 /* replaced configurations a worker may still need (reload) */
/*
 * Ended connections and their SMTP sessions kept per worker for the next
 * connection, at most this many (and at most the worker's connection share):
 * a session is 12 KiB, and a device fleet makes a connection per message, so
 * malloc'ed ones meant page faults on pages the allocator had given back.
 */
#define CONN_POOL_MAX 4096u

/*
 * Under AddressSanitizer a cached object is poisoned while it waits for
 * reuse, so a use after free is still reported although the memory is not
 * given back to the allocator.
 */
#if defined(__SANITIZE_ADDRESS__)
#define SMTPD_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SMTPD_ASAN 1
#endif
#endif
#ifdef SMTPD_ASAN
#include <sanitizer/asan_interface.h>
#define SMTPD_POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define SMTPD_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define SMTPD_POISON(p, n) ((void)(p), (void)(n))
#define SMTPD_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

struct smtpd_conn {
	struct smtpd *d;
	struct smtpd_shared *gen; /* accepted under it; held until conn_free */
	const struct smtp_server_conf *conf;
	struct tcp_conn *tc;
	struct smtp_session *s;
	struct tls_conn *tls;
	struct spool_msg *msg;
	int msg_err;
	struct dkim_signer *signer; /* signing the message being received, or NULL */
	const struct dkim_domain *signer_dom;
	uint32_t client_ip;
	bool implicit_tls;
	bool tcp_gone;       /* on_closed ran: tc is invalid */
	bool closing;        /* close once out is flushed */
	bool commit_pending; /* spool cookie points at us */
	bool sign_pending;   /* job is with a signer lcore (signer.c) */
	bool reaped;         /* on the reap list */
	bool input_held;     /* the session or TLS took less than offered */
	bool counted;        /* holds a connection slot of its client entry */
	bool in_input;       /* inside smtp_session_input(): replies are gathered */
	uint16_t held_len;   /* replies gathered in held[] (plain text only) */
	uint8_t held[HELD_MAX];
	char tls_version[16], tls_cipher[64];
	struct sign_job job; /* while sign_pending */
	uint8_t *out;
	size_t out_len;
	struct smtpd_conn *next, *prev; /* live list */
	struct smtpd_conn *reap_next;
};

struct smtpd {
	struct smtpd_shared *sh; /* current generation (held): new connections use it */
	/*
	 * Replaced generations still held by this worker: DKIM signers of
	 * messages begun under one may come back to the pool (signer_put), and
	 * the pool matches them by domain pointer, so those domains must stay
	 * allocated until no such signer is left (see gens_release()).
	 */
	struct smtpd_shared *held[HELD_GENS];
	unsigned n_held;
	uint64_t reconf_retry_us; /* smtpd_reconfigure() said -EBUSY: not before this */
	struct net_stack *st;
	unsigned worker;
	struct spool *spool;
	struct deliver *dl; /* delivery of what this spool accepts (deliver.c), or NULL */
	struct smtp_server_stats smtp_stats;
	struct tls_stats tls_stats;
	struct smtpd_stats stats;
	struct smtpd_conn *live;
	struct smtpd_conn *reap;
	struct smtpd_conn *conn_pool; /* ended connections for reuse (CONN_POOL_MAX) */
	unsigned conn_pool_count;
	uint64_t conn_pool_reused, conn_pool_allocated, conn_pool_prewarmed;
	struct smtp_session_pool sessions;
	uint64_t next_scan_us;
	uint64_t session_seq;
	uint64_t max_conns; /* this worker's share of max_connections */
	bool draining;      /* shutting down: new connections get 421 */
	/* DKIM signers kept for reuse (their OpenSSL contexts are made once) */
	struct signer_slot {
		const struct dkim_domain *dom;
		struct dkim_signer *s;
	} signers[SIGNER_POOL];
	unsigned n_signers;
	/*
	 * Per client address: open connections and recent AUTH failures.  A
	 * full set fails open (the connection is served) and is counted.
	 */
	struct client_entry {
		uint32_t ip;
		uint32_t conns;
		uint32_t auth_failures;
		uint64_t blocked_until_us;
	} *clients;
	uint64_t max_conns_per_ip; /* this worker's share */
	struct smtpd_listener {
		struct smtpd *d;
		unsigned index; /* into conf->listen and sh->listener_conf */
	} listeners[RELAY_MAX_LISTEN];
};

static const struct tcp_conn_ops conn_tcp_ops;

/*
 * The SMTP sessions' clock (smtp_server_conf.now_us): the worker turn's time,
 * set by smtpd_poll(), per worker thread.  Sessions read it on every input
 * and state change, only for their timeouts (minutes, checked every
 * TIMEOUT_SCAN_US), so a turn-old time is exact enough and costs no clock read.
 */
static __thread uint64_t turn_now_us;

static uint64_t session_now_us(void)
{
	return turn_now_us ? turn_now_us : mx_now_us();
}
static const struct tls_conn_ops conn_tls_ops;
static struct client_entry *client_find(struct smtpd *d, uint32_t ip, bool create, uint64_t now);
static const struct smtp_server_cb conn_smtp_cb;

/* ---- output ------------------------------------------------------------------- */

/* Hand bytes to TLS or TCP; returns how many were taken. */
static size_t transport_write(struct smtpd_conn *c, const uint8_t *p, size_t n)
{
	if (c->tcp_gone)
		return n; /* nobody to tell: drop */
	if (c->tls != NULL) {
		ssize_t k = tls_conn_write(c->tls, p, n);
		return k < 0 ? n : (size_t)k;
	}
	ssize_t k = tcp_send(c->tc, p, n);
	return k < 0 ? n : (size_t)k;
}

static void conn_close_now(struct smtpd_conn *c)
{
	if (c->tcp_gone)
		return;
	if (c->tls != NULL)
		tls_conn_shutdown(c->tls);
	tcp_close(c->tc);
}

static void release_held(struct smtpd_conn *c);

static void flush_out(struct smtpd_conn *c)
{
	release_held(c);
	if (c->out_len > 0) {
		size_t k = transport_write(c, c->out, c->out_len);
		memmove(c->out, c->out + k, c->out_len - k);
		c->out_len -= k;
	}
	if (c->out_len == 0 && c->closing) {
		c->closing = false;
		conn_close_now(c);
	}
}

static void send_now(struct smtpd_conn *c, const uint8_t *p, size_t n)
{
	size_t k = c->out_len == 0 ? transport_write(c, p, n) : 0;
	if (k == n)
		return;
	if (c->out == NULL && (c->out = malloc(OUT_MAX)) == NULL) {
		MX_WARN("smtpd: out of memory for replies; closing");
		c->out_len = 0;
		if (!c->tcp_gone)
			tcp_abort(c->tc);
		return;
	}
	if (c->out_len + (n - k) > OUT_MAX) {
		/* A client that never reads its replies: cut it off. */
		MX_WARN("smtpd: client [%u.%u.%u.%u] does not read replies; aborting",
			c->client_ip >> 24, (c->client_ip >> 16) & 255, (c->client_ip >> 8) & 255,
			c->client_ip & 255);
		if (!c->tcp_gone)
			tcp_abort(c->tc);
		return;
	}
	memcpy(c->out + c->out_len, p + k, n - k);
	c->out_len += n - k;
}

static void release_held(struct smtpd_conn *c)
{
	size_t n = c->held_len;
	c->held_len = 0;
	if (n > 0)
		send_now(c, c->held, n);
}

/*
 * A reply made while input is being taken is gathered; one made later
 * (the commit's 250, a timeout's 421) joins what is held and all of it
 * leaves in one write (HELD_MAX above).
 */
static void smtp_send(void *user, const uint8_t *p, size_t n)
{
	struct smtpd_conn *c = user;
	if ((c->in_input || c->held_len > 0) && c->tls == NULL && c->out_len == 0 &&
	    n <= HELD_MAX - c->held_len) {
		memcpy(c->held + c->held_len, p, n);
		c->held_len += (uint16_t)n;
		if (!c->in_input)
			release_held(c);
		return;
	}
	release_held(c);
	send_now(c, p, n);
}

static void smtp_close(void *user)
{
	struct smtpd_conn *c = user;
	c->closing = true;
	flush_out(c);
}

/* ---- input -------------------------------------------------------------------- */

static size_t feed_session(struct smtpd_conn *c, const uint8_t *p, size_t n)
{
	if (smtp_session_is_closed(c->s))
		return n; /* after 221/421 the rest is noise */
	c->in_input = true;
	size_t k = smtp_session_input(c->s, p, n);
	c->in_input = false;
	/* Held only while this input's message is being committed (or signed). */
	if (!c->commit_pending && !c->sign_pending)
		release_held(c);
	else if (c->held_len > 0)
		c->d->stats.replies_held++;
	if (k < n)
		c->input_held = true;
	return k;
}

static size_t tcp_data(struct tcp_conn *tc, void *user, const uint8_t *data, size_t len)
{
	struct smtpd_conn *c = user;
	(void)tc;
	if (c->tls == NULL)
		return feed_session(c, data, len);
	ssize_t k = tls_conn_input(c->tls, data, len);
	if (k < 0)
		return len; /* TLS is dead (on_error closed us) or closed: discard */
	if ((size_t)k < len)
		c->input_held = true;
	return (size_t)k;
}

/* Whatever was holding input back may have cleared: offer it again. */
static void resume_input(struct smtpd_conn *c)
{
	if (!c->input_held || c->tcp_gone || !smtp_session_want_input(c->s))
		return;
	c->input_held = false;
	if (c->tls != NULL)
		tls_conn_resume(c->tls);
	tcp_recv_resume(c->tc);
}

static void tcp_writable(struct tcp_conn *tc, void *user)
{
	struct smtpd_conn *c = user;
	(void)tc;
	if (c->tls != NULL)
		tls_conn_flush(c->tls);
	flush_out(c);
	resume_input(c);
}

static void tcp_peer_closed(struct tcp_conn *tc, void *user)
{
	struct smtpd_conn *c = user;
	(void)tc;
	smtp_session_peer_closed(c->s);
	conn_close_now(c);
}

static void reap_later(struct smtpd_conn *c)
{
	if (c->reaped)
		return;
	c->reaped = true;
	c->reap_next = c->d->reap;
	c->d->reap = c;
}

static void tcp_closed(struct tcp_conn *tc, void *user, enum tcp_close_reason why)
{
	struct smtpd_conn *c = user;
	(void)tc;
	(void)why;
	c->tcp_gone = true;
	c->tc = NULL;
	reap_later(c);
}

static const struct tcp_conn_ops conn_tcp_ops = {
	.on_data = tcp_data,
	.on_writable = tcp_writable,
	.on_peer_closed = tcp_peer_closed,
	.on_closed = tcp_closed,
};

/* ---- TLS ---------------------------------------------------------------------- */

static size_t tls_cipher_out(void *user, const uint8_t *data, size_t len)
{
	struct smtpd_conn *c = user;
	if (c->tcp_gone)
		return len;
	ssize_t k = tcp_send(c->tc, data, len);
	return k < 0 ? len : (size_t)k;
}

static size_t tls_plain_in(void *user, const uint8_t *data, size_t len)
{
	return feed_session(user, data, len);
}

static void tls_done(void *user, const struct tls_handshake_info *info)
{
	struct smtpd_conn *c = user;
	c->d->stats.tls_handshakes++;
	snprintf(c->tls_version, sizeof(c->tls_version), "%s", info->version);
	snprintf(c->tls_cipher, sizeof(c->tls_cipher), "%s", info->cipher);
	smtp_session_tls_started(c->s, c->tls_version, c->tls_cipher);
	if (c->implicit_tls)
		smtp_session_start(c->s);
}

static void tls_failed(void *user, const char *reason)
{
	struct smtpd_conn *c = user;
	c->d->stats.tls_failures++;
	MX_INFO("smtpd: TLS failed from [%u.%u.%u.%u]: %s", c->client_ip >> 24,
		(c->client_ip >> 16) & 255, (c->client_ip >> 8) & 255, c->client_ip & 255, reason);
	smtp_session_peer_closed(c->s);
	if (!c->tcp_gone)
		tcp_close(c->tc); /* the alert, if any, is already queued in TCP */
}

static void tls_peer_closed(void *user)
{
	struct smtpd_conn *c = user;
	smtp_session_peer_closed(c->s);
	conn_close_now(c);
}

static void tls_writable(void *user)
{
	struct smtpd_conn *c = user;
	flush_out(c);
	resume_input(c);
}

static const struct tls_conn_ops conn_tls_ops = {
	.on_ciphertext = tls_cipher_out,
	.on_plaintext = tls_plain_in,
	.on_handshake_done = tls_done,
	.on_error = tls_failed,
	.on_peer_closed = tls_peer_closed,
	.on_writable = tls_writable,
};

static int start_tls(struct smtpd_conn *c)
{
	/* The connection's own generation: its certificate until it ends. */
	int rc = tls_server_conn_new(c->gen->tls, &conn_tls_ops, c, &c->d->tls_stats, &c->tls);
	if (rc == 0)
		rc = tls_conn_start(c->tls);
	return rc;
}

static void smtp_starttls(void *user)
{
	struct smtpd_conn *c = user;
	/* The 220 goes out in plain text: everything after it is TLS. */
	release_held(c);
	if (start_tls(c) != 0) {
		MX_WARN("smtpd: cannot start TLS; closing");
		if (!c->tcp_gone)
			tcp_abort(c->tc);
	}
}

/* ---- the mail path: spool ------------------------------------------------------ */

/* ---- DKIM: signed at acceptance, the signature stored with the message ---------- */

static struct dkim_signer *signer_take(struct smtpd *d, const struct dkim_domain *dom)
{
	for (unsigned i = 0; i < d->n_signers; i++)
		if (d->signers[i].dom == dom) {
			struct dkim_signer *sg = d->signers[i].s;
			d->signers[i] = d->signers[--d->n_signers];
			return sg;
		}
	char err[256];
	struct dkim_signer *sg;
	if (dkim_signer_create(&dom->config, &sg, err, sizeof(err)) != 0) {
		MX_WARN("dkim: %s: %s", dom->domain, err);
		return NULL;
	}
	return sg;
}

static void signer_put(struct smtpd *d, const struct dkim_domain *dom, struct dkim_signer *sg)
{
	if (sg == NULL)
		return;
	if (d->n_signers < SIGNER_POOL)
		d->signers[d->n_signers++] = (struct signer_slot){.dom = dom, .s = sg};
	else
		dkim_signer_free(sg);
}

/*
 * The signing domain follows [dkim] domain_from (lib/dkim, dkim_table_choose):
 * by default the From: header's domain (DMARC alignment), else the envelope
 * sender's, else [dkim] default_domain.  From: is only known once the header
 * block has streamed in, so the message starts with the signer of the
 * envelope/default choice (or, when neither has a key, of the first domain,
 * only to buffer the header block) and sign_finish() moves it to the signer
 * of the From: domain if that differs (dkim_sign_move()).
 */
/* The envelope sender's domain in buf, or NULL (null sender, no domain). */
static const char *sign_envelope_domain(struct smtpd_conn *c, char *buf, size_t cap)
{
	const struct smtp_envelope *env = smtp_session_envelope(c->s);
	if (dkim_address_domain(env->mail_from.text, env->mail_from.len, buf, cap) > 0)
		return buf;
	return NULL;
}

static void sign_begin(struct smtpd_conn *c)
{
	const struct dkim_table *t = c->d->sh->conf->dkim;
	if (t == NULL || t->count == 0)
		return;
	char dom[256];
	const struct dkim_domain *d =
		dkim_table_choose(t, NULL, sign_envelope_domain(c, dom, sizeof(dom)));
	if (d == NULL && t->domain_from == DKIM_FROM_HEADER)
		d = &t->domains[0]; /* provisional: the From: domain decides at the end */
	if (d == NULL)
		return;
	c->signer = signer_take(c->d, d);
	c->signer_dom = d;
	if (c->signer != NULL && dkim_sign_begin(c->signer, mx_wall_s()) != 0) {
		signer_put(c->d, d, c->signer);
		c->signer = NULL;
	}
	if (c->signer == NULL)
		c->d->stats.dkim_failed++;
}

static void sign_end(struct smtpd_conn *c)
{
	signer_put(c->d, c->signer_dom, c->signer);
	c->signer = NULL;
	c->signer_dom = NULL;
}

/*
 * The last choice before the signature: the signing domain from From: (the
 * signer may move to another domain's).  Returns 0 with c->signer still set
 * when there is a signature to make, 0 with it NULL when there is none, or
 * the error to answer with when the policy is to defer.
 */
static int sign_prepare(struct smtpd_conn *c)
{
	if (c->signer == NULL)
		return 0;
	const struct dkim_table *t = c->d->sh->conf->dkim;
	if (t->domain_from == DKIM_FROM_HEADER) {
		char env[256], from[256];
		const char *env_dom = sign_envelope_domain(c, env, sizeof(env));
		const struct dkim_domain *env_choice = dkim_table_choose(t, NULL, env_dom);
		const struct dkim_domain *want = env_choice;
		if (dkim_sign_from_domain(c->signer, from, sizeof(from)) > 0)
			want = dkim_table_choose(t, from, env_dom);
		if (want == NULL) {
			/* provisional signer, and no domain of ours in From: either */
			sign_end(c);
			return 0;
		}
		/* (a signer that already failed reports its error below, as it is) */
		if (want != c->signer_dom && dkim_signer_error(c->signer)[0] == '\0') {
			struct dkim_signer *sg = signer_take(c->d, want);
			int mrc = sg != NULL ? dkim_sign_move(sg, c->signer) : -ENOMEM;
			if (mrc == 0) {
				signer_put(c->d, c->signer_dom, c->signer);
				c->signer = sg;
				c->signer_dom = want;
			} else {
				signer_put(c->d, want, sg);
				MX_WARN("%s: DKIM: cannot sign as From: domain %s (%s); %s",
					spool_msg_id_str(c->msg), want->domain,
					mrc == -EXDEV ? "its body canonicalization differs"
						      : strerror(-mrc),
					env_choice != NULL ? "signing as the envelope domain"
							   : "not signed");
				if (env_choice == NULL) {
					c->d->stats.dkim_failed++;
					sign_end(c);
					return c->d->sh->conf->dkim_defer ? -EAGAIN : 0;
				}
			}
		}
	}
	return 0;
}

/* The signature is made (rc from dkim_sign_final): into the message.  0, or the defer error. */
static int sign_complete(struct smtpd_conn *c, int rc, const char *hdr, size_t len)
{
	if (rc == 0)
		rc = spool_msg_prepend(c->msg, hdr, len);
	if (rc == 0) {
		c->d->stats.dkim_signed++;
	} else {
		c->d->stats.dkim_failed++;
		MX_WARN("%s: DKIM signing for %s failed: %s; %s", spool_msg_id_str(c->msg),
			c->signer_dom->domain,
			dkim_signer_error(c->signer)[0] ? dkim_signer_error(c->signer)
							: strerror(-rc),
			c->d->sh->conf->dkim_defer ? "deferred (451)" : "sent unsigned");
	}
	sign_end(c);
	return rc != 0 && c->d->sh->conf->dkim_defer ? -EAGAIN : 0;
}

static bool smtp_may_start(void *user)
{
	struct smtpd_conn *c = user;
	return spool_has_room(c->d->spool);
}

static int smtp_auth(void *user, const char *authzid, const char *authcid, const char *pass)
{
	struct smtpd_conn *c = user;
	struct smtpd *d = c->d;
	const struct relay_config *conf = d->sh->conf;
	uint64_t now = mx_now_us();
	struct client_entry *ce = client_find(d, c->client_ip, true, now);
	if (ce != NULL && ce->blocked_until_us > now) {
		d->stats.auth_blocked++;
		return -EAGAIN; /* 454 4.7.0: this client failed too often lately */
	}
	if (d->sh->users == NULL)
		return -EACCES;
	int rc = -EACCES;
	if (authzid == NULL || authzid[0] == '\0' || strcmp(authzid, authcid) == 0)
		rc = smtp_cred_verify(d->sh->users, authcid, pass) == 0 ? 0 : -EACCES;
	if (rc != 0 && ce != NULL && ++ce->auth_failures >= conf->auth_failures_per_ip) {
		/* Rate limit per client (RFC 4954 section 4): block AUTH for a while. */
		ce->auth_failures = 0;
		ce->blocked_until_us = now + conf->auth_block_us;
		MX_WARN("smtpd: [%u.%u.%u.%u]: %u failed AUTH attempts; AUTH refused for %llu s",
			c->client_ip >> 24, (c->client_ip >> 16) & 255, (c->client_ip >> 8) & 255,
			c->client_ip & 255, (unsigned)conf->auth_failures_per_ip,
			(unsigned long long)(conf->auth_block_us / 1000000));
	}
	if (rc == 0 && ce != NULL)
		ce->auth_failures = 0;
	return rc;
}

static void smtp_msg_begin(void *user)
{
	struct smtpd_conn *c = user;
	c->msg = NULL;
	c->msg_err = spool_msg_begin(c->d->spool, &c->msg);
	if (c->msg_err == 0) {
		smtp_session_set_queue_id(c->s, spool_msg_id_str(c->msg));
		sign_begin(c);
	}
}

static void smtp_msg_data(void *user, const uint8_t *p, size_t n)
{
	struct smtpd_conn *c = user;
	if (c->msg == NULL || c->msg_err != 0)
		return;
	c->msg_err = spool_msg_append(c->msg, p, n);
	if (c->signer != NULL)
		dkim_sign_update(c->signer, p, n); /* an error here is reported by sign_finish */
}

static void smtp_msg_abort(void *user)
{
	struct smtpd_conn *c = user;
	if (c->msg != NULL)
		spool_msg_abort(c->msg);
	c->msg = NULL;
	sign_end(c);
}

static void commit_message(struct smtpd_conn *c, const struct smtp_envelope *env, int rc);

static void smtp_msg_end(void *user, const struct smtp_envelope *env)
{
	struct smtpd_conn *c = user;
	int rc = c->msg_err;

	if (c->msg == NULL) {
		smtp_session_message_done(c->s, rc ? rc : -EIO, NULL);
		return;
	}
	if (rc == 0)
		rc = sign_prepare(c);
	if (rc == 0 && c->signer != NULL) {
		/* The signature: on a signer lcore when there is one (signer.c), else here. */
		c->job = (struct sign_job){.sg = c->signer, .cookie = c, .worker = c->d->worker};
		if (signers_active()) {
			if (signer_submit(&c->job) == 0) {
				c->sign_pending = true;
				c->d->stats.dkim_offloaded++;
				return; /* smtpd_poll() carries on in signed() */
			}
			c->d->stats.dkim_offload_full++;
		}
		c->job.rc = dkim_sign_final(c->signer, &c->job.hdr, &c->job.len);
		rc = sign_complete(c, c->job.rc, c->job.hdr, c->job.len);
	}
	commit_message(c, env, rc);
}

/* Dotted quad of a host-order address, as inet_ntop() writes it without its sprintf. */
static void format_ipv4(char out[INET_ADDRSTRLEN], uint32_t ip)
{
	char *p = out;
	for (int shift = 24; shift >= 0; shift -= 8) {
		unsigned v = (ip >> shift) & 255;
		if (v >= 100)
			*p++ = (char)('0' + v / 100);
		if (v >= 10)
			*p++ = (char)('0' + v / 10 % 10);
		*p++ = (char)('0' + v % 10);
		*p++ = shift ? '.' : '\0';
	}
}

/* After the signature (if any): the message goes to the spool, or is refused with rc. */
static void commit_message(struct smtpd_conn *c, const struct smtp_envelope *env, int rc)
{
	struct spool_rcpt rcpts_small[16], *rcpts = rcpts_small;
	char ip[INET_ADDRSTRLEN];

	sign_end(c);
	if (rc != 0) {
		spool_msg_abort(c->msg);
		c->msg = NULL;
		smtp_session_message_done(c->s, rc == -EFBIG ? -ENOSPC : rc, NULL);
		return;
	}
	if (env->rcpt_count > sizeof(rcpts_small) / sizeof(rcpts_small[0]) &&
	    (rcpts = calloc(env->rcpt_count, sizeof(*rcpts))) == NULL) {
		spool_msg_abort(c->msg);
		c->msg = NULL;
		smtp_session_message_done(c->s, -ENOMEM, NULL);
		return;
	}
	for (size_t i = 0; i < env->rcpt_count; i++)
		rcpts[i] = (struct spool_rcpt){.addr = env->rcpts[i].addr.text,
					       .orcpt = env->rcpts[i].orcpt[0] ? env->rcpts[i].orcpt
									       : NULL,
					       .notify = env->rcpts[i].notify};
	format_ipv4(ip, env->client_ip);
	struct spool_envelope se = {
		.sender = env->mail_from.text,
		.envid = env->envid,
		.ret = (uint8_t)(env->ret == SMTP_RET_FULL   ? SPOOL_RET_FULL
				 : env->ret == SMTP_RET_HDRS ? SPOOL_RET_HDRS
							     : SPOOL_RET_NONE),
		/* kept so that a message recovered after a restart leaves as it came */
		.flags = (uint8_t)((env->body == SMTP_BODY_8BITMIME ? SPOOL_ENV_F_8BITMIME : 0) |
				   (env->smtputf8 ? SPOOL_ENV_F_SMTPUTF8 : 0)),
		.client_ip = ip,
		.helo = env->helo,
		.arrival_us = mx_wall_s() * 1000000,
		.tls_version = env->tls ? c->tls_version : NULL,
		.tls_cipher = env->tls ? c->tls_cipher : NULL,
		.auth_user = env->auth_user,
		.rcpts = rcpts,
		.rcpt_count = (uint32_t)env->rcpt_count,
	};
	rc = spool_msg_commit(c->msg, &se, (uint64_t)(uintptr_t)c);
	c->msg = NULL;
	if (rcpts != rcpts_small)
		free(rcpts);
	if (rc != 0) {
		c->d->stats.commit_failures++;
		smtp_session_message_done(c->s, rc == -EFBIG ? -ENOSPC : rc, NULL);
		return;
	}
	c->commit_pending = true;
}

static const struct smtp_server_cb conn_smtp_cb = {
	.send = smtp_send,
	.close = smtp_close,
	.starttls = smtp_starttls,
	.may_start_transaction = smtp_may_start,
	.auth_check = smtp_auth,
	.message_begin = smtp_msg_begin,
	.message_data = smtp_msg_data,
	.message_end = smtp_msg_end,
	.message_abort = smtp_msg_abort,
};

/* ---- per-client limits -------------------------------------------------------------- */

static struct client_entry *client_find(struct smtpd *d, uint32_t ip, bool create, uint64_t now)
{
	if (d->clients == NULL)
		return NULL;
	uint32_t h = ip * 2654435761u;
	struct client_entry *set = &d->clients[(h >> 16) % CLIENT_SETS * CLIENT_WAYS];
	struct client_entry *free_slot = NULL;
	for (unsigned i = 0; i < CLIENT_WAYS; i++) {
		if (set[i].ip == ip && (set[i].conns || set[i].blocked_until_us > now ||
					set[i].auth_failures))
			return &set[i];
		if (free_slot == NULL && set[i].conns == 0 && set[i].blocked_until_us <= now)
			free_slot = &set[i];
	}
	if (!create)
		return NULL;
	if (free_slot == NULL) {
		d->stats.client_table_full++;
		return NULL;
	}
	*free_slot = (struct client_entry){.ip = ip};
	return free_slot;
}

/* ---- connections ---------------------------------------------------------------- */

/* A connection refused with 421: whatever it sends is dropped until it closes. */
static size_t refused_data(struct tcp_conn *tc, void *user, const uint8_t *data, size_t len)
{
	(void)tc;
	(void)user;
	(void)data;
	return len;
}

static void refused_closed(struct tcp_conn *tc, void *user, enum tcp_close_reason why)
{
	(void)tc;
	(void)user;
	(void)why;
}

static const struct tcp_conn_ops refused_ops = {
	.on_data = refused_data,
	.on_closed = refused_closed,
};

static void live_unlink(struct smtpd *d, struct smtpd_conn *c)
{
	if (c->prev != NULL)
		c->prev->next = c->next;
	else if (d->live == c)
		d->live = c->next;
	if (c->next != NULL)
		c->next->prev = c->prev;
}

static void conn_pool_put(struct smtpd *d, struct smtpd_conn *c)
{
	c->next = d->conn_pool;
	d->conn_pool = c;
	d->conn_pool_count++;
	/* all but the link, which LeakSanitizer must follow */
	SMTPD_POISON(c, offsetof(struct smtpd_conn, next));
	SMTPD_POISON((uint8_t *)c + offsetof(struct smtpd_conn, next) + sizeof(c->next),
		     sizeof(*c) - offsetof(struct smtpd_conn, next) - sizeof(c->next));
}

static void conn_free(struct smtpd_conn *c)
{
	struct smtpd *d = c->d;
	if (c->counted) {
		struct client_entry *ce = client_find(d, c->client_ip, false, 0);
		if (ce != NULL && ce->conns > 0)
			ce->conns--;
	}
	live_unlink(d, c);
	if (c->msg != NULL)
		spool_msg_abort(c->msg);
	sign_end(c);
	smtp_session_free_pooled(&d->sessions, c->s);
	tls_conn_free(c->tls);
	free(c->out);
	smtpd_shared_put(c->gen);
	d->stats.open--;
	if (d->conn_pool_count < d->sessions.max)
		conn_pool_put(d, c);
	else
		free(c);
}

/* A zeroed connection, from the pool when it has one. */
static struct smtpd_conn *conn_alloc(struct smtpd *d)
{
	struct smtpd_conn *c = d->conn_pool;
	if (c == NULL) {
		d->conn_pool_allocated++;
		return calloc(1, sizeof(*c));
	}
	SMTPD_UNPOISON(c, sizeof(*c));
	d->conn_pool = c->next;
	d->conn_pool_count--;
	d->conn_pool_reused++;
	memset(c, 0, sizeof(*c));
	return c;
}

static void conn_pool_drain(struct smtpd *d)
{
	while (d->conn_pool != NULL) {
		struct smtpd_conn *c = d->conn_pool;
		SMTPD_UNPOISON(c, sizeof(*c));
		d->conn_pool = c->next;
		free(c);
	}
	d->conn_pool_count = 0;
	smtp_session_pool_drain(&d->sessions);
}

static int on_accept(struct tcp_conn *tc, void *ctx)
{
	const struct smtpd_listener *l = ctx;
	struct smtpd *d = l->d;
	const struct smtp_server_conf *conf = &d->sh->listener_conf[l->index];
	uint32_t laddr, raddr;
	uint16_t lport, rport;

	tcp_conn_endpoints(tc, &laddr, &lport, &raddr, &rport);
	d->stats.connections++;
	struct client_entry *ce = client_find(d, raddr, true, session_now_us());
	bool per_ip = ce != NULL && ce->conns >= d->max_conns_per_ip;
	if (per_ip)
		d->stats.refused_per_ip++;
	if (d->draining || d->stats.open >= d->max_conns || per_ip) {
		char busy[512];
		int n = smtp_server_format_busy_greeting(busy, sizeof(busy), conf->hostname);
		d->stats.refused_busy++;
		if (n > 0)
			tcp_send(tc, busy, (size_t)n);
		tcp_conn_set_ops(tc, &refused_ops, NULL);
		tcp_close(tc);
		return 0;
	}
	struct smtpd_conn *c = conn_alloc(d);
	if (c == NULL)
		return -1;
	c->d = d;
	c->gen = d->sh;
	c->conf = conf;
	c->tc = tc;
	c->client_ip = raddr;
	c->implicit_tls = conf->listener == SMTP_LISTENER_IMPLICIT_TLS;
	if (ce != NULL) {
		ce->conns++;
		c->counted = true;
	}
	if (smtp_session_new_pooled(&d->sessions, conf, &conn_smtp_cb, c, &d->smtp_stats, raddr,
				    ((uint64_t)d->worker << 48) | ++d->session_seq, &c->s) != 0) {
		if (c->counted)
			ce->conns--;
		free(c);
		return -1;
	}
	smtpd_shared_get(c->gen);
	c->next = d->live;
	if (d->live != NULL)
		d->live->prev = c;
	d->live = c;
	d->stats.open++;
	tcp_conn_set_ops(tc, &conn_tcp_ops, c);
	if (c->implicit_tls) {
		if (start_tls(c) != 0)
			return -1; /* on_closed will reap c */
	} else {
		smtp_session_start(c->s);
	}
	return 0;
}

/* ---- per worker ------------------------------------------------------------------- */

/*
 * What a DPDK application does with its mempools, for the memory a new
 * connection would fault in: this worker's connection and session pools and
 * lib/net's connection and buffer caches are filled and written once at
 * start.  Without it a burst at start (an open-loop fleet, a restart under
 * load) spent the first second in page faults, a third of the worker's
 * samples, while the backlog overflowed into SYN retransmissions.  Held,
 * never freed until exit, so the allocator never purges them.  Memory:
 * ~42 KiB per connection (the session, the connection structs, a recipient
 * array, two pages of each TCP ring): +171 MiB RSS for the default 4096
 * per worker, made in ~115 ms; what the pools hold anyway once a load has
 * filled them.
 */
#define PREWARM_RING_TOUCH 8192

static void prewarm(struct smtpd *d)
{
	unsigned n = d->sh->conf->prewarm_connections < d->sessions.max
			     ? (unsigned)d->sh->conf->prewarm_connections
			     : d->sessions.max;
	const struct smtp_server_conf *conf = NULL;
	uint64_t t0 = mx_now_us();

	if (n == 0)
		return;
	/* the largest command line: a session for it serves every listener */
	for (unsigned i = 0; i < d->sh->conf->n_listen; i++)
		if (conf == NULL ||
		    d->sh->listener_conf[i].max_command_line > conf->max_command_line)
			conf = &d->sh->listener_conf[i];
	while (d->conn_pool_count < n) {
		/* written: conn_alloc clears it again */
		struct smtpd_conn *c = mx_malloc_written(sizeof(*c));
		if (c == NULL)
			break;
		conn_pool_put(d, c);
		d->conn_pool_prewarmed++;
	}
	int sessions = conf ? smtp_session_pool_prewarm(&d->sessions, conf, n) : 0;
	int tcp = tcp_prewarm(d->st, n, PREWARM_RING_TOUCH);
	if (sessions < 0 || tcp < 0)
		MX_WARN("worker %u: prewarm of %u connections stopped: %s", d->worker, n,
			strerror(ENOMEM));
	MX_INFO("worker %u: prewarmed %u connections (%u pooled, %u sessions, %d tcp objects) "
		"in %llu ms",
		d->worker, n, d->conn_pool_count, d->sessions.count, tcp,
		(unsigned long long)(mx_now_us() - t0) / 1000);
}

static void recovered(void *arg, const struct spool_recovered *m)
{
	struct smtpd *d = arg;
	MX_DEBUG("%s: recovered, %u recipient(s) pending", m->id_str, m->env->rcpt_count);
	deliver_recovered(d->dl, m);
}

struct spool *smtpd_spool(struct smtpd *d)
{
	return d->spool;
}

struct smtpd *smtpd_create(struct smtpd_shared *sh, struct net_stack *st, unsigned w,
			   struct deliver *dl)
{
	struct smtpd *d = calloc(1, sizeof(*d));
	struct spool_recovery_stats rs;
	if (d == NULL)
		return NULL;
	d->sh = sh;
	smtpd_shared_get(sh);
	d->st = st;
	d->worker = w;
	signers_attach_worker(w, st);
	d->dl = dl;
	d->max_conns = sh->conf->max_connections / sh->n_workers + 1;
	smtp_session_pool_init(&d->sessions, d->max_conns < CONN_POOL_MAX ? (unsigned)d->max_conns
									  : CONN_POOL_MAX);
	/* Flows of one client spread over the workers: each enforces its share. */
	d->max_conns_per_ip =
		(sh->conf->max_connections_per_ip + sh->n_workers - 1) / sh->n_workers;
	d->clients = calloc((size_t)CLIENT_SETS * CLIENT_WAYS, sizeof(*d->clients));
	int rc = spool_open(&sh->conf->spool, w, recovered, d, &rs, &d->spool);
	if (rc != 0) {
		MX_ERR("worker %u: spool %s: %s", w, sh->conf->spool.dir, strerror(-rc));
		smtpd_shared_put(sh);
		free(d->clients);
		free(d);
		return NULL;
	}
	MX_INFO("worker %u: spool recovered %llu message(s), %llu recipient(s) pending, "
		"%llu segment(s), %llu torn tail(s), %llu quarantined, in %llu ms",
		w, (unsigned long long)rs.messages, (unsigned long long)rs.rcpts_pending,
		(unsigned long long)rs.segments, (unsigned long long)rs.torn_tails,
		(unsigned long long)rs.quarantined, (unsigned long long)rs.elapsed_us / 1000);
	prewarm(d);
	for (unsigned i = 0; i < sh->conf->n_listen; i++) {
		d->listeners[i].d = d;
		d->listeners[i].index = i;
		const struct smtp_server_conf *lc = &sh->listener_conf[i];
		if (lc->listener != SMTP_LISTENER_RELAY && sh->tls == NULL)
			continue; /* 465 and 587 need TLS; smtpd_shared_init said so */
		rc = tcp_listen(st, 0, sh->conf->listen[i], on_accept, &d->listeners[i]);
		if (rc != 0) {
			MX_ERR("worker %u: listen on %u: %s", w, sh->conf->listen[i],
			       strerror(-rc));
			spool_close(d->spool);
			smtpd_shared_put(sh);
			free(d->clients);
			free(d);
			return NULL;
		}
	}
	return d;
}

/* ---- reload ------------------------------------------------------------------------ */

/* dom is one of the current generation's DKIM domains. */
static bool dom_current(const struct smtpd *d, const struct dkim_domain *dom)
{
	const struct dkim_table *t = d->sh->conf->dkim;
	uintptr_t p = (uintptr_t)dom;
	return t != NULL && t->count > 0 && p >= (uintptr_t)t->domains &&
	       p < (uintptr_t)(t->domains + t->count);
}

/*
 * Once no message in progress signs with a replaced generation's key, its
 * pooled signers are freed and the worker lets go of those generations.
 * Runs with the timeout scan while the worker holds any.
 */
static void gens_release(struct smtpd *d)
{
	for (struct smtpd_conn *c = d->live; c != NULL; c = c->next)
		if (c->signer != NULL && !dom_current(d, c->signer_dom))
			return;
	for (unsigned i = 0; i < d->n_signers;) {
		if (dom_current(d, d->signers[i].dom)) {
			i++;
			continue;
		}
		dkim_signer_free(d->signers[i].s);
		d->signers[i] = d->signers[--d->n_signers];
	}
	for (unsigned i = 0; i < d->n_held; i++)
		smtpd_shared_put(d->held[i]);
	d->n_held = 0;
}

/* A message is being signed: sign_finish() reads the worker's current DKIM table. */
static bool signing(const struct smtpd *d)
{
	for (const struct smtpd_conn *c = d->live; c != NULL; c = c->next)
		if (c->signer != NULL)
			return true;
	return false;
}

int smtpd_reconfigure(struct smtpd *d, struct smtpd_shared *sh)
{
	if (sh == d->sh)
		return 0;
	uint64_t now = mx_now_us();
	if (now < d->reconf_retry_us)
		return -EBUSY;
	if (d->n_held == HELD_GENS)
		gens_release(d);
	/*
	 * Without any DKIM table in the new generation, messages being signed
	 * would find none when they end: they finish under the old one first.
	 */
	if (d->n_held == HELD_GENS || (sh->conf->dkim == NULL && signing(d))) {
		d->reconf_retry_us = now + 10000;
		return -EBUSY;
	}
	smtpd_shared_get(sh);
	d->held[d->n_held++] = d->sh;
	d->sh = sh;
	d->max_conns = sh->conf->max_connections / sh->n_workers + 1;
	d->max_conns_per_ip =
		(sh->conf->max_connections_per_ip + sh->n_workers - 1) / sh->n_workers;
	gens_release(d); /* at once when nothing is being signed */
	return 0;
}

static void log_queued(struct smtpd_conn *c, const struct spool_completion *done)
{
	/* Once per message: below info level not even the arguments are gathered. */
	if (mx_log_get_level() < MX_LOG_INFO)
		return;
	const struct smtp_envelope *env = smtp_session_envelope(c->s);
	if (env == NULL)
		return;
	MX_INFO("%s: client=[%u.%u.%u.%u], from=<%s>, size=%llu, nrcpt=%zu%s%s (queued)",
		done->id_str, c->client_ip >> 24, (c->client_ip >> 16) & 255,
		(c->client_ip >> 8) & 255, c->client_ip & 255, env->mail_from.text,
		(unsigned long long)env->message_size, env->rcpt_count, env->tls ? ", tls=" : "",
		env->tls ? c->tls_version : "");
}

/* Signatures made on a signer lcore come back: the messages go on to the spool. */
static unsigned signed_collect(struct smtpd *d)
{
	struct sign_job *jobs[SIGN_COLLECT];
	unsigned n = signer_collect(d->worker, jobs, SIGN_COLLECT);
	for (unsigned i = 0; i < n; i++) {
		struct smtpd_conn *c = jobs[i]->cookie;
		c->sign_pending = false;
		if (c->tcp_gone) {
			/* Gone before any reply: the message was never acknowledged, drop it. */
			spool_msg_abort(c->msg);
			c->msg = NULL;
			sign_end(c);
			reap_later(c);
			continue;
		}
		int rc = sign_complete(c, c->job.rc, c->job.hdr, c->job.len);
		commit_message(c, smtp_session_envelope(c->s), rc);
	}
	return n;
}

unsigned smtpd_poll(struct smtpd *d, uint64_t now_us)
{
	struct spool_completion done[SPOOL_BATCH];
	unsigned work = 0;
	turn_now_us = now_us;
	int n = spool_poll(d->spool, now_us, done, SPOOL_BATCH);

	for (int i = 0; i < n; i++) {
		if (deliver_commit_done(d->dl, &done[i])) /* a DSN deliver.c injected */
			continue;
		struct smtpd_conn *c = (struct smtpd_conn *)(uintptr_t)done[i].cookie;
		c->commit_pending = false;
		if (done[i].status == 0) {
			d->stats.messages_queued++;
			if (!c->tcp_gone)
				log_queued(c, &done[i]);
			deliver_accepted(d->dl, done[i].id, smtp_session_envelope(c->s));
		} else {
			d->stats.commit_failures++;
			MX_WARN("%s: commit failed: %s", done[i].id_str, strerror(-done[i].status));
		}
		if (c->tcp_gone) {
			if (done[i].status == 0)
				MX_INFO("%s: client went away before the 250; the message is "
					"queued (a duplicate may follow if it retries)",
					done[i].id_str);
			reap_later(c);
			continue;
		}
		smtp_session_message_done(c->s, done[i].status, done[i].id_str);
		resume_input(c);
		work++;
	}
	work += signed_collect(d);
	while (d->reap != NULL) {
		struct smtpd_conn *c = d->reap;
		d->reap = c->reap_next;
		c->reaped = false;
		if (c->commit_pending || c->sign_pending)
			continue; /* freed when its completion arrives */
		conn_free(c);
		work++;
	}
	if (now_us >= d->next_scan_us) {
		d->next_scan_us = now_us + TIMEOUT_SCAN_US;
		if (d->n_held > 0)
			gens_release(d);
		for (struct smtpd_conn *c = d->live; c != NULL; c = c->next)
			if (!c->tcp_gone && !smtp_session_is_closed(c->s) &&
			    smtp_session_deadline(c->s) <= now_us) {
				if (c->tls != NULL && !tls_conn_handshake_done(c->tls))
					tls_conn_timed_out(c->tls);
				smtp_session_timeout(c->s);
			}
	}
	return work;
}

void smtpd_drain(struct smtpd *d)
{
	d->draining = true;
}

bool smtpd_drained(const struct smtpd *d)
{
	return d->stats.open == 0;
}

void smtpd_destroy(struct smtpd *d)
{
	if (d == NULL)
		return;
	for (unsigned i = 0; i < d->sh->conf->n_listen; i++)
		tcp_unlisten(d->st, 0, d->sh->conf->listen[i]);
	/* Signatures still being made come back before anything is freed. */
	for (uint64_t end = mx_now_us() + SIGN_WAIT_US;
	     signer_outstanding(d->worker) > 0 && mx_now_us() < end;)
		smtpd_poll(d, mx_now_us());
	spool_sync(d->spool);
	/* Report what the last sync made durable, so no commit is left pending. */
	smtpd_poll(d, mx_now_us());
	/*
	 * Whatever is still open is cut off.  Every commit was reported by the
	 * poll above (spool_sync waited for it), so nothing still points at a
	 * connection: free them all through the reap list, never twice.
	 */
	while (d->live != NULL) {
		struct smtpd_conn *c = d->live;
		if (c->sign_pending) {
			/* A signer lcore still has it (stuck past SIGN_WAIT_US): leak, never free.
			 */
			MX_ERR("smtpd: worker %u: a signature never came back; connection left",
			       d->worker);
			c->sign_pending = false;
			live_unlink(d, c);
			continue;
		}
		c->commit_pending = false;
		if (!c->tcp_gone)
			tcp_abort(c->tc); /* on_closed puts it on the reap list */
		reap_later(c);		  /* no-op if it is there already */
		smtpd_poll(d, mx_now_us());
	}
	spool_close(d->spool);
	for (unsigned i = 0; i < d->n_signers; i++)
		dkim_signer_free(d->signers[i].s);
	for (unsigned i = 0; i < d->n_held; i++)
		smtpd_shared_put(d->held[i]);
	smtpd_shared_put(d->sh);
	conn_pool_drain(d);
	free(d->clients);
	free(d);
}

void smtpd_get_stats(const struct smtpd *d, struct smtpd_stats *out)
{
	*out = d->stats;
}

/* ---- shared set-up ------------------------------------------------------------------ */

int smtpd_shared_init(struct smtpd_shared *sh, const struct relay_config *conf, unsigned n_workers,
		      char *err, size_t errlen)
{
	char why[512];
	memset(sh, 0, sizeof(*sh));
	sh->conf = conf;
	sh->n_workers = n_workers;
	if (conf->tls_cert[0]) {
		struct tls_server_conf tc = {.cert_count = 1};
		tc.cert_file[0] = conf->tls_cert;
		tc.key_file[0] = conf->tls_key;
		if (tls_server_ctx_create(&tc, &sh->tls, why, sizeof(why)) != 0) {
			snprintf(err, errlen, "[tls] cert %s, key %s: %s", conf->tls_cert,
				 conf->tls_key, why);
			goto fail;
		}
	}
	if (conf->users_file[0] && smtp_cred_load(conf->users_file, &sh->users, why, sizeof(why))) {
		snprintf(err, errlen, "[smtp] users: %s", why);
		goto fail;
	}
	for (unsigned i = 0; i < conf->n_listen; i++) {
		struct smtp_server_conf *lc = &sh->listener_conf[i];
		*lc = conf->smtp;
		lc->tls_available = sh->tls != NULL;
		if (lc->now_us == NULL)
			lc->now_us = session_now_us;
		switch (conf->listen[i]) {
		case 465:
			lc->listener = SMTP_LISTENER_IMPLICIT_TLS;
			break;
		case 587:
			lc->listener = SMTP_LISTENER_SUBMISSION;
			break;
		default:
			lc->listener = SMTP_LISTENER_RELAY;
			break;
		}
		if (smtp_server_conf_check(lc, why, sizeof(why)) != 0) {
			snprintf(err, errlen, "[smtp]: %s", why);
			goto fail;
		}
	}
	return 0;
fail:
	MX_ERR("%s", err);
	smtpd_shared_free(sh);
	memset(sh, 0, sizeof(*sh));
	return -EINVAL;
}

/* At start only: what listens, and how. */
void smtpd_shared_log(const struct smtpd_shared *sh)
{
	const struct relay_config *conf = sh->conf;
	for (unsigned i = 0; i < conf->n_listen; i++) {
		const struct smtp_server_conf *lc = &sh->listener_conf[i];
		if (lc->listener != SMTP_LISTENER_RELAY && sh->tls == NULL)
			MX_WARN("port %u needs TLS ([tls] cert and key): not listening",
				conf->listen[i]);
		else
			MX_INFO("SMTP on port %u: %s%s", conf->listen[i],
				lc->listener == SMTP_LISTENER_RELAY ? "relay"
				: lc->listener == SMTP_LISTENER_SUBMISSION
					? "submission, AUTH required"
					: "implicit TLS",
				lc->listener == SMTP_LISTENER_RELAY && sh->tls ? ", STARTTLS" : "");
	}
}

void smtpd_shared_free(struct smtpd_shared *sh)
{
	tls_server_ctx_free(sh->tls);
	sh->tls = NULL;
	smtp_cred_free(sh->users);
	sh->users = NULL;
	if (sh->own_conf != NULL) {
		relay_config_free(sh->own_conf);
		free(sh->own_conf);
		sh->own_conf = NULL;
	}
}

void smtpd_shared_get(struct smtpd_shared *sh)
{
	__atomic_add_fetch(&sh->refs, 1, __ATOMIC_RELAXED);
}

void smtpd_shared_put(struct smtpd_shared *sh)
{
	/* Release: the main lcore frees it after reading 0 with acquire. */
	__atomic_sub_fetch(&sh->refs, 1, __ATOMIC_RELEASE);
}

void smtpd_stats_foreach(const struct smtpd *d,
			 void (*fn)(void *arg, const char *name, uint64_t value), void *arg)
{
	char name[96];
	const struct smtp_server_stats *s = &d->smtp_stats;
	fn(arg, "smtp_sessions", s->sessions);
	for (int v = 0; v < SMTP_VERB_COUNT; v++) {
		snprintf(name, sizeof(name), "smtp_commands_%s", smtp_verb_name((enum smtp_verb)v));
		for (char *p = name; *p; p++)
			*p = (char)(*p >= 'A' && *p <= 'Z' ? *p + 32 : *p);
		fn(arg, name, s->commands[v]);
	}
	fn(arg, "smtp_replies_2xx", s->replies_2xx);
	fn(arg, "smtp_replies_3xx", s->replies_3xx);
	fn(arg, "smtp_replies_4xx", s->replies_4xx);
	fn(arg, "smtp_replies_5xx", s->replies_5xx);
	for (int r = 0; r < SMTP_REJ_COUNT; r++) {
		snprintf(name, sizeof(name), "smtp_rejects_%s",
			 smtp_reject_name((enum smtp_reject)r));
		fn(arg, name, s->rejects[r]);
	}
	fn(arg, "smtp_messages_accepted", s->messages_accepted);
	fn(arg, "smtp_messages_aborted", s->messages_aborted);
	fn(arg, "smtp_bytes_in", s->bytes_in);
	fn(arg, "smtp_bytes_out", s->bytes_out);
	fn(arg, "smtp_message_bytes", s->message_bytes);
	fn(arg, "smtp_starttls_discarded", s->starttls_discarded);
	fn(arg, "smtp_pending_input_full", s->pending_input_full);
	fn(arg, "smtp_auth_success", s->auth_success);
	fn(arg, "smtp_auth_failures", s->auth_failures);
	fn(arg, "smtp_timeouts", s->timeouts);
	fn(arg, "smtp_session_pool_reused", d->sessions.reused);
	fn(arg, "smtp_session_pool_allocated", d->sessions.allocated);
	fn(arg, "smtp_session_pool_full", d->sessions.full);
	fn(arg, "smtp_session_pool_held", d->sessions.count);
	fn(arg, "smtpd_conn_pool_reused", d->conn_pool_reused);
	fn(arg, "smtpd_conn_pool_allocated", d->conn_pool_allocated);
	fn(arg, "smtpd_conn_pool_prewarmed", d->conn_pool_prewarmed);
	fn(arg, "smtp_session_pool_prewarmed", d->sessions.prewarmed);
	struct tcp_cache_stats tc;
	tcp_cache_stats(d->st, &tc);
	fn(arg, "tcp_cache_prewarmed", tc.prewarmed);
	fn(arg, "tcp_cache_bufs_reused", tc.bufs_reused);
	fn(arg, "tcp_cache_bufs_allocated", tc.bufs_allocated);
	fn(arg, "tcp_cache_conns_held", tc.conns_held);

	const struct tls_stats *t = &d->tls_stats;
	fn(arg, "tls_server_handshakes_full", t->server_handshakes_full);
	fn(arg, "tls_server_handshakes_resumed", t->server_handshakes_resumed);
	fn(arg, "tls_fail_verify", t->fail_verify);
	fn(arg, "tls_fail_no_shared_cipher", t->fail_no_shared_cipher);
	fn(arg, "tls_fail_version", t->fail_version);
	fn(arg, "tls_fail_peer_alert", t->fail_peer_alert);
	fn(arg, "tls_fail_protocol", t->fail_protocol);
	fn(arg, "tls_fail_timeout", t->fail_timeout);
	fn(arg, "tls_cipher_bytes_in", t->cipher_bytes_in);
	fn(arg, "tls_cipher_bytes_out", t->cipher_bytes_out);
	fn(arg, "tls_tickets_issued", t->tickets_issued);

	struct spool_stats sp;
	spool_get_stats(d->spool, &sp);
	fn(arg, "spool_bytes_written", sp.bytes_written);
	fn(arg, "spool_messages", sp.messages);
	fn(arg, "spool_commits", sp.commits);
	fn(arg, "spool_fdatasyncs", sp.fdatasyncs);
	fn(arg, "spool_batch_msgs_max", sp.batch_msgs_max);
	fn(arg, "spool_commit_latency_p50_us", spool_stats_lat_pct(&sp, 50));
	fn(arg, "spool_commit_latency_p99_us", spool_stats_lat_pct(&sp, 99));
	fn(arg, "spool_enospc_refusals", sp.enospc_refusals);
	fn(arg, "spool_io_errors", sp.io_errors);
	fn(arg, "spool_live_messages", sp.live_messages);
	fn(arg, "spool_used_bytes", sp.used_bytes);
	fn(arg, "spool_segments", sp.segments);
	fn(arg, "spool_segments_precreated", sp.segments_precreated);
	fn(arg, "spool_segments_unprepared", sp.segments_unprepared);
	fn(arg, "spool_segments_recycled", sp.segments_recycled);
	fn(arg, "spool_spare_zero_bytes", sp.spare_zero_bytes);
	fn(arg, "spool_spare_zero_writebacks", sp.spare_zero_writebacks);
	fn(arg, "spool_spare_failures", sp.spare_failures);
	fn(arg, "spool_body_reads_memory", sp.body_reads_memory);
	fn(arg, "spool_body_reads_file", sp.body_reads_file);

	fn(arg, "smtpd_connections", d->stats.connections);
	fn(arg, "smtpd_refused_busy", d->stats.refused_busy);
	fn(arg, "smtpd_open", d->stats.open);
	fn(arg, "smtpd_tls_handshakes", d->stats.tls_handshakes);
	fn(arg, "smtpd_tls_failures", d->stats.tls_failures);
	fn(arg, "smtpd_messages_queued", d->stats.messages_queued);
	fn(arg, "smtpd_commit_failures", d->stats.commit_failures);
	fn(arg, "smtpd_refused_per_ip", d->stats.refused_per_ip);
	fn(arg, "smtpd_auth_blocked", d->stats.auth_blocked);
	fn(arg, "smtpd_client_table_full", d->stats.client_table_full);
	fn(arg, "smtpd_replies_held", d->stats.replies_held);
	fn(arg, "dkim_signed", d->stats.dkim_signed);
	fn(arg, "dkim_failed", d->stats.dkim_failed);
	fn(arg, "dkim_offloaded", d->stats.dkim_offloaded);
	fn(arg, "dkim_offload_full", d->stats.dkim_offload_full);
}
