/*
 * tls_internal.h - what ctx.c, conn.c and cache.c share inside lib/tls.
 */
#ifndef MX_TLS_INTERNAL_H
#define MX_TLS_INTERNAL_H

#include <pthread.h>
#include <openssl/ssl.h>

#include "tls.h"

/* The part common to server and client contexts; conn.c sees only this. */
struct tls_ctx_base {
	SSL_CTX *ssl_ctx;
	BIO_METHOD *bio_method; /* our in-memory transport BIO, see conn.c */
	size_t max_output;
	bool server;
	bool keep_buffers; /* no SSL_MODE_RELEASE_BUFFERS; conn.c keeps its stage too */
};

struct ticket_key {
	unsigned char name[16];
	unsigned char aes_key[32];
	unsigned char hmac_key[32];
	bool valid;
};

struct tls_server_ctx {
	struct tls_ctx_base base; /* first: conn.c casts */
	EVP_CIPHER *ticket_cipher;
	pthread_rwlock_t ticket_lock; /* shared by all cores: taken once per ticket */
	struct ticket_key ticket_cur, ticket_prev;
	uint64_t ticket_rotation_us, ticket_next_rotation_us;
	uint64_t ticket_rotations;
};

struct tls_client_ctx {
	struct tls_ctx_base base;
};

/* conn.c */
BIO_METHOD *tls_bio_method_new(void);
/* The tls_conn owning an SSL (app data), or NULL. */
struct tls_conn *tls_conn_from_ssl(const SSL *ssl);
/* For the ticket callback: count one issued ticket on the connection's core. */
void tls_conn_count_ticket(struct tls_conn *tc);
/* For the new-session callback: store sess in the connection's cache.  1 = taken. */
int tls_conn_session_new(struct tls_conn *tc, SSL_SESSION *sess);

/* cache.c */
/* Build "host:port"; 0 or -ENAMETOOLONG. */
int tls_cache_key(char *buf, size_t len, const char *host, uint16_t port);
/* A session to resume (a new reference: the caller frees it) or NULL. */
SSL_SESSION *tls_cache_lookup(struct tls_session_cache *c, const char *key, bool need_verified,
			      int64_t now_s);
/* Store (replacing) the destination's session; takes the reference on success.  0 or -errno. */
int tls_cache_store(struct tls_session_cache *c, const char *key, SSL_SESSION *sess, bool verified,
		    int64_t now_s);

/* Drop the entry for key if any. */
void tls_cache_forget(struct tls_session_cache *c, const char *key);

#endif
