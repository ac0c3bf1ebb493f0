/*
 * ctx.c - server and client SSL_CTX set-up, session ticket keys.
 *
 * A context is built once at start-up from its conf (files are read here,
 * never on the data path) and then shared read-only by every lcore.  The
 * server uses stateless session tickets only (no server-side session cache):
 * the ticket keys live here, per process, random, and rotate every
 * ticket_rotation_us; a ticket under the previous key is still accepted and
 * answered with a fresh one (callback return 2), as is every TLS 1.3
 * resumption (tickets are single-use there).  Rotation happens lazily in
 * the ticket callback on whichever core first sees the deadline, under the
 * write side of a rwlock; every other ticket operation takes the read side.
 */
#include "tls_internal.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "core.h"

int tls_policy_parse(const char *s, enum tls_policy *out)
{
	if (s == NULL)
		return -EINVAL;
	if (strcmp(s, "none") == 0)
		*out = TLS_POLICY_NONE;
	else if (strcmp(s, "opportunistic") == 0 || strcmp(s, "may") == 0)
		*out = TLS_POLICY_OPPORTUNISTIC;
	else if (strcmp(s, "verify") == 0)
		*out = TLS_POLICY_VERIFY;
	else
		return -EINVAL;
	return 0;
}

const char *tls_policy_name(enum tls_policy p)
{
	switch (p) {
	case TLS_POLICY_NONE:
		return "none";
	case TLS_POLICY_OPPORTUNISTIC:
		return "opportunistic";
	case TLS_POLICY_VERIFY:
		return "verify";
	}
	return "?";
}

int tls_version_parse(const char *s, enum tls_version *out)
{
	if (s == NULL)
		return -EINVAL;
	if (strcmp(s, "TLSv1.2") == 0 || strcmp(s, "1.2") == 0)
		*out = TLS_VERSION_1_2;
	else if (strcmp(s, "TLSv1.3") == 0 || strcmp(s, "1.3") == 0)
		*out = TLS_VERSION_1_3;
	else
		return -EINVAL;
	return 0;
}

static int version_number(enum tls_version v, int dflt)
{
	switch (v) {
	case TLS_VERSION_1_2:
		return TLS1_2_VERSION;
	case TLS_VERSION_1_3:
		return TLS1_3_VERSION;
	case TLS_VERSION_DEFAULT:
		break;
	}
	return dflt;
}

/* "what: first OpenSSL error" into err; clears the error queue. */
static void set_err(char *err, size_t errlen, const char *what, const char *arg)
{
	char ossl[256] = "";
	unsigned long e = ERR_peek_last_error();

	if (e != 0)
		ERR_error_string_n(e, ossl, sizeof(ossl));
	ERR_clear_error();
	if (err != NULL && errlen > 0)
		snprintf(err, errlen, "%s%s%s%s%s", what, arg ? " " : "", arg ? arg : "",
			 ossl[0] ? ": " : "", ossl);
}

/* Settings common to both sides.  0 or -EINVAL with err set. */
static int base_setup(struct tls_ctx_base *b, enum tls_version minv, enum tls_version maxv,
		      const char *ciphers, const char *suites, const char *groups,
		      size_t max_output, char *err, size_t errlen)
{
	SSL_CTX *ctx = b->ssl_ctx;
	int lo = version_number(minv, TLS1_2_VERSION);
	int hi = version_number(maxv, TLS1_3_VERSION);

	if (lo > hi) {
		set_err(err, errlen, "min_version is above max_version", NULL);
		return -EINVAL;
	}
	if (!SSL_CTX_set_min_proto_version(ctx, lo) || !SSL_CTX_set_max_proto_version(ctx, hi)) {
		set_err(err, errlen, "protocol versions", NULL);
		return -EINVAL;
	}
	if (!SSL_CTX_set_cipher_list(ctx, ciphers)) {
		set_err(err, errlen, "cipher list", ciphers);
		return -EINVAL;
	}
	if (!SSL_CTX_set_ciphersuites(ctx, suites)) {
		set_err(err, errlen, "TLS 1.3 ciphersuites", suites);
		return -EINVAL;
	}
	if (!SSL_CTX_set1_groups_list(ctx, groups)) {
		set_err(err, errlen, "groups", groups);
		return -EINVAL;
	}
	/*
	 * No compression (CRIME), no renegotiation at all (RFC 5746 issues and a
	 * CPU lever for hostile clients).  Partial writes are irrelevant: our
	 * transport BIO never refuses a write (conn.c bounds the queue instead).
	 * Release the 16 KiB read/write buffers of idle connections: a device
	 * fleet keeps many quiet sessions open.
	 */
	SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
	SSL_CTX_clear_options(ctx, SSL_OP_ALLOW_CLIENT_RENEGOTIATION);
	SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
	SSL_CTX_set_read_ahead(ctx, 0);
	b->max_output = max_output ? max_output : TLS_DEFAULT_MAX_OUTPUT;
	b->bio_method = tls_bio_method_new();
	if (b->bio_method == NULL) {
		set_err(err, errlen, "BIO method", NULL);
		return -ENOMEM;
	}
	return 0;
}

static void base_free(struct tls_ctx_base *b)
{
	SSL_CTX_free(b->ssl_ctx);
	BIO_meth_free(b->bio_method);
}

/* ---- session ticket keys -------------------------------------------------- */

static int ticket_key_new(struct ticket_key *k)
{
	if (RAND_bytes(k->name, sizeof(k->name)) != 1 ||
	    RAND_priv_bytes(k->aes_key, sizeof(k->aes_key)) != 1 ||
	    RAND_priv_bytes(k->hmac_key, sizeof(k->hmac_key)) != 1)
		return -EIO;
	k->valid = true;
	return 0;
}

/* Caller holds the write lock. */
static int rotate_locked(struct tls_server_ctx *sc, uint64_t now_us)
{
	struct ticket_key fresh;
	int rc = ticket_key_new(&fresh);

	if (rc < 0)
		return rc;
	sc->ticket_prev = sc->ticket_cur;
	sc->ticket_cur = fresh;
	OPENSSL_cleanse(&fresh, sizeof(fresh));
	sc->ticket_next_rotation_us = now_us + sc->ticket_rotation_us;
	sc->ticket_rotations++;
	return 0;
}

int tls_server_ctx_rotate_ticket_keys(struct tls_server_ctx *sc)
{
	int rc;

	if (sc == NULL)
		return -EINVAL;
	pthread_rwlock_wrlock(&sc->ticket_lock);
	rc = rotate_locked(sc, mx_now_us());
	pthread_rwlock_unlock(&sc->ticket_lock);
	return rc;
}

uint64_t tls_server_ctx_ticket_rotations(const struct tls_server_ctx *sc)
{
	uint64_t n;

	pthread_rwlock_rdlock((pthread_rwlock_t *)&sc->ticket_lock);
	n = sc->ticket_rotations;
	pthread_rwlock_unlock((pthread_rwlock_t *)&sc->ticket_lock);
	return n;
}

static int mac_init(EVP_MAC_CTX *hctx, unsigned char *key)
{
	OSSL_PARAM params[3];

	params[0] = OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, key, 32);
	params[1] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, "SHA256", 0);
	params[2] = OSSL_PARAM_construct_end();
	return EVP_MAC_CTX_set_params(hctx, params);
}

/*
 * OpenSSL's ticket callback (SSL_CTX_set_tlsext_ticket_key_evp_cb): enc=1
 * issue a ticket under the current key; enc=0 find the key a ticket names.
 * Returns 1 ok, 2 ok but renew (previous key), 0 unknown key (full
 * handshake), -1 error.
 */
static int ticket_cb(SSL *s, unsigned char key_name[16], unsigned char *iv, EVP_CIPHER_CTX *cctx,
		     EVP_MAC_CTX *hctx, int enc)
{
	struct tls_server_ctx *sc = SSL_CTX_get_app_data(SSL_get_SSL_CTX(s));
	struct ticket_key k;
	uint64_t now = mx_now_us();
	int ret = 1;

	if (sc == NULL)
		return -1;
	pthread_rwlock_rdlock(&sc->ticket_lock);
	if (now >= sc->ticket_next_rotation_us) {
		pthread_rwlock_unlock(&sc->ticket_lock);
		pthread_rwlock_wrlock(&sc->ticket_lock);
		if (now >= sc->ticket_next_rotation_us && rotate_locked(sc, now) < 0) {
			pthread_rwlock_unlock(&sc->ticket_lock);
			return -1;
		}
		pthread_rwlock_unlock(&sc->ticket_lock);
		pthread_rwlock_rdlock(&sc->ticket_lock);
	}
	if (enc) {
		k = sc->ticket_cur;
	} else if (sc->ticket_cur.valid && memcmp(key_name, sc->ticket_cur.name, 16) == 0) {
		k = sc->ticket_cur;
	} else if (sc->ticket_prev.valid && memcmp(key_name, sc->ticket_prev.name, 16) == 0) {
		k = sc->ticket_prev;
		ret = 2;
	} else {
		k.valid = false;
	}
	pthread_rwlock_unlock(&sc->ticket_lock);
	if (!k.valid)
		return 0;

	if (enc) {
		int ivlen = EVP_CIPHER_get_iv_length(sc->ticket_cipher);

		if (RAND_bytes(iv, ivlen) != 1)
			ret = -1;
		else if (!EVP_EncryptInit_ex(cctx, sc->ticket_cipher, NULL, k.aes_key, iv) ||
			 !mac_init(hctx, k.hmac_key))
			ret = -1;
		else
			memcpy(key_name, k.name, 16);
		if (ret == 1) {
			struct tls_conn *tc = tls_conn_from_ssl(s);

			if (tc != NULL)
				tls_conn_count_ticket(tc);
		}
	} else {
		if (!mac_init(hctx, k.hmac_key) ||
		    !EVP_DecryptInit_ex(cctx, sc->ticket_cipher, NULL, k.aes_key, iv))
			ret = -1;
		/*
		 * TLS 1.3 clients use a ticket once (RFC 8446 C.4; OpenSSL drops it
		 * from its cache after use), so a resumed TLS 1.3 connection always
		 * gets a fresh ticket, or the next reconnection would be a full
		 * handshake.
		 */
		if (ret == 1 && SSL_version(s) == TLS1_3_VERSION)
			ret = 2;
	}
	OPENSSL_cleanse(&k, sizeof(k));
	return ret;
}

/* ---- server context --------------------------------------------------------- */

static int load_pair(SSL_CTX *ctx, const char *cert, const char *key, char *err, size_t errlen)
{
	if (cert == NULL || key == NULL || !cert[0] || !key[0]) {
		set_err(err, errlen, "certificate and key file must both be given", NULL);
		return -EINVAL;
	}
	if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
		set_err(err, errlen, "certificate chain file", cert);
		return -EINVAL;
	}
	if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
		set_err(err, errlen, "private key file", key);
		return -EINVAL;
	}
	/* Checks the key against the certificate of the same type just loaded. */
	if (SSL_CTX_check_private_key(ctx) != 1) {
		set_err(err, errlen, "key does not match certificate", cert);
		return -EINVAL;
	}
	return 0;
}

int tls_server_ctx_create(const struct tls_server_conf *conf, struct tls_server_ctx **out,
			  char *err, size_t errlen)
{
	struct tls_server_ctx *sc;
	int rc;

	if (err != NULL && errlen > 0)
		err[0] = '\0';
	if (conf == NULL || out == NULL || conf->cert_count == 0 ||
	    conf->cert_count > TLS_MAX_CERTS) {
		set_err(err, errlen, "server needs 1 or 2 certificate/key pairs", NULL);
		return -EINVAL;
	}
	sc = calloc(1, sizeof(*sc));
	if (sc == NULL)
		return -ENOMEM;
	if (pthread_rwlock_init(&sc->ticket_lock, NULL) != 0) {
		free(sc);
		return -ENOMEM;
	}
	sc->base.server = true;
	sc->base.ssl_ctx = SSL_CTX_new(TLS_server_method());
	sc->ticket_cipher = EVP_CIPHER_fetch(NULL, "AES-256-CBC", NULL);
	if (sc->base.ssl_ctx == NULL || sc->ticket_cipher == NULL) {
		set_err(err, errlen, "SSL_CTX_new", NULL);
		rc = -ENOMEM;
		goto fail;
	}
	rc = base_setup(&sc->base, conf->min_version, conf->max_version,
			conf->ciphers ? conf->ciphers : TLS_DEFAULT_SERVER_CIPHERS,
			conf->ciphersuites ? conf->ciphersuites : TLS_DEFAULT_TLS13_SUITES,
			conf->groups ? conf->groups : TLS_DEFAULT_GROUPS, conf->max_output, err,
			errlen);
	if (rc < 0)
		goto fail;
	for (unsigned i = 0; i < conf->cert_count; i++) {
		rc = load_pair(sc->base.ssl_ctx, conf->cert_file[i], conf->key_file[i], err,
			       errlen);
		if (rc < 0)
			goto fail;
	}
	if (conf->keep_buffers) {
		/* Few busy sessions: see tls_server_conf.keep_buffers. */
		SSL_CTX_clear_mode(sc->base.ssl_ctx, SSL_MODE_RELEASE_BUFFERS);
		sc->base.keep_buffers = true;
	}
	SSL_CTX_set_app_data(sc->base.ssl_ctx, sc);
	/* Stateless tickets only: no per-process session store to share or bound. */
	SSL_CTX_set_session_cache_mode(sc->base.ssl_ctx, SSL_SESS_CACHE_OFF);
	SSL_CTX_set_session_id_context(sc->base.ssl_ctx, (const unsigned char *)"mxrelay", 7);
	sc->ticket_rotation_us = conf->ticket_rotation_us ? conf->ticket_rotation_us
							  : TLS_DEFAULT_TICKET_ROTATION_US;
	if (conf->no_tickets) {
		SSL_CTX_set_options(sc->base.ssl_ctx, SSL_OP_NO_TICKET);
		SSL_CTX_set_num_tickets(sc->base.ssl_ctx, 0);
	} else {
		/* Tickets must not outlive the key that can decrypt them. */
		uint64_t life_s = sc->ticket_rotation_us / 1000000;

		SSL_CTX_set_timeout(sc->base.ssl_ctx, (long)(life_s ? life_s : 1));
		SSL_CTX_set_num_tickets(sc->base.ssl_ctx, conf->num_tickets
								  ? conf->num_tickets
								  : TLS_DEFAULT_NUM_TICKETS);
		rc = ticket_key_new(&sc->ticket_cur);
		if (rc < 0) {
			set_err(err, errlen, "ticket key", NULL);
			goto fail;
		}
		sc->ticket_next_rotation_us = mx_now_us() + sc->ticket_rotation_us;
		SSL_CTX_set_tlsext_ticket_key_evp_cb(sc->base.ssl_ctx, ticket_cb);
	}
	*out = sc;
	return 0;
fail:
	tls_server_ctx_free(sc);
	return rc;
}

void tls_server_ctx_free(struct tls_server_ctx *sc)
{
	if (sc == NULL)
		return;
	base_free(&sc->base);
	EVP_CIPHER_free(sc->ticket_cipher);
	pthread_rwlock_destroy(&sc->ticket_lock);
	OPENSSL_cleanse(&sc->ticket_cur, sizeof(sc->ticket_cur));
	OPENSSL_cleanse(&sc->ticket_prev, sizeof(sc->ticket_prev));
	free(sc);
}

/* ---- client context ------------------------------------------------------------- */

/*
 * Every new session the client receives (TLS 1.2 at the end of the
 * handshake, TLS 1.3 with each NewSessionTicket) goes to the connection's
 * per-core cache.  Returning 1 hands our reference to the cache.
 */
static int client_new_session_cb(SSL *ssl, SSL_SESSION *sess)
{
	struct tls_conn *tc = tls_conn_from_ssl(ssl);

	return tc ? tls_conn_session_new(tc, sess) : 0;
}

int tls_client_ctx_create(const struct tls_client_conf *conf, struct tls_client_ctx **out,
			  char *err, size_t errlen)
{
	struct tls_client_ctx *cc;
	int rc;

	if (err != NULL && errlen > 0)
		err[0] = '\0';
	if (conf == NULL || out == NULL)
		return -EINVAL;
	cc = calloc(1, sizeof(*cc));
	if (cc == NULL)
		return -ENOMEM;
	cc->base.ssl_ctx = SSL_CTX_new(TLS_client_method());
	if (cc->base.ssl_ctx == NULL) {
		set_err(err, errlen, "SSL_CTX_new", NULL);
		rc = -ENOMEM;
		goto fail;
	}
	rc = base_setup(&cc->base, conf->min_version, conf->max_version,
			conf->ciphers ? conf->ciphers : TLS_DEFAULT_CLIENT_CIPHERS,
			conf->ciphersuites ? conf->ciphersuites : TLS_DEFAULT_TLS13_SUITES,
			conf->groups ? conf->groups : TLS_DEFAULT_GROUPS, conf->max_output, err,
			errlen);
	if (rc < 0)
		goto fail;
	/*
	 * Security level 1 whatever the system openssl.cnf says (Debian: 2):
	 * an MX with a 1024-bit key or DH group gets encrypted, not plain text
	 * mail (RFC 7435).  Under TLS_POLICY_VERIFY the CA bundle decides trust.
	 */
	SSL_CTX_set_security_level(cc->base.ssl_ctx, 1);
	/*
	 * Outbound connections are pooled and busy (a message every few
	 * hundred microseconds each, at most [queue] max_sessions of them per
	 * core): releasing their buffers when idle cost a free and a malloc
	 * around every record; keeping them is ~34 KiB per connection.
	 */
	SSL_CTX_clear_mode(cc->base.ssl_ctx, SSL_MODE_RELEASE_BUFFERS);
	cc->base.keep_buffers = true;
	if (conf->sigalgs != NULL && !SSL_CTX_set1_sigalgs_list(cc->base.ssl_ctx, conf->sigalgs)) {
		set_err(err, errlen, "signature algorithms", conf->sigalgs);
		rc = -EINVAL;
		goto fail;
	}
	if (conf->ca_file != NULL && conf->ca_file[0] &&
	    SSL_CTX_load_verify_locations(cc->base.ssl_ctx, conf->ca_file, NULL) != 1) {
		set_err(err, errlen, "CA file", conf->ca_file);
		rc = -EINVAL;
		goto fail;
	}
	if (conf->cert_file != NULL || conf->key_file != NULL) {
		rc = load_pair(cc->base.ssl_ctx, conf->cert_file, conf->key_file, err, errlen);
		if (rc < 0)
			goto fail;
	}
	SSL_CTX_set_app_data(cc->base.ssl_ctx, cc);
	/* Sessions live in our per-core caches only, never in the shared SSL_CTX. */
	SSL_CTX_set_session_cache_mode(cc->base.ssl_ctx,
				       SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
	SSL_CTX_sess_set_new_cb(cc->base.ssl_ctx, client_new_session_cb);
	*out = cc;
	return 0;
fail:
	tls_client_ctx_free(cc);
	return rc;
}

void tls_client_ctx_free(struct tls_client_ctx *cc)
{
	if (cc == NULL)
		return;
	base_free(&cc->base);
	free(cc);
}
