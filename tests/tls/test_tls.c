/*
 * test_tls.c - CUnit suite for lib/tls: server and client tls_conns talking
 * to each other in memory (tls_pair.c), over a PKI generated at start
 * (tls_pki.c).  Covers TLS 1.3/1.2 handshakes, 1 MiB both ways in random
 * and 1-byte chunks, resumption through the per-core client cache and
 * ticket key rotation, verify/opportunistic policies, ECDSA and RSA
 * certificates, backpressure, close_notify and hostile input.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/err.h>
#include <openssl/evp.h>

#include "mx_test.h"
#include "tls.h"
#include "tls_pair.h"
#include "tls_pki.h"

static struct tls_pki pki;
static struct tls_stats sst, cst; /* server-side and client-side "cores" */
static struct pair_ep srv, cli;

static int suite_init(void)
{
	unsigned seed = 20261123;

	srand(seed);
	return tls_pki_create(&pki) == 0 ? 0 : -1;
}

static int suite_clean(void)
{
	tls_pki_destroy(&pki);
	return 0;
}

/* ---- helpers -------------------------------------------------------------- */

enum { CERT_EC = 1, CERT_RSA = 2, CERT_EVIL = 4 };

static struct tls_server_ctx *make_server(unsigned certs, struct tls_server_conf *base)
{
	struct tls_server_conf conf;
	struct tls_server_ctx *ctx = NULL;
	char err[256];

	if (base)
		conf = *base;
	else
		memset(&conf, 0, sizeof(conf));
	conf.cert_count = 0;
	if (certs & CERT_EC) {
		conf.cert_file[conf.cert_count] = pki.ec_crt;
		conf.key_file[conf.cert_count++] = pki.ec_key;
	}
	if (certs & CERT_RSA) {
		conf.cert_file[conf.cert_count] = pki.rsa_crt;
		conf.key_file[conf.cert_count++] = pki.rsa_key;
	}
	if (certs & CERT_EVIL) {
		conf.cert_file[conf.cert_count] = pki.evil_crt;
		conf.key_file[conf.cert_count++] = pki.evil_key;
	}
	int rc = tls_server_ctx_create(&conf, &ctx, err, sizeof(err));
	if (rc != 0)
		fprintf(stderr, "server ctx: %s\n", err);
	CU_ASSERT_EQUAL_FATAL(rc, 0);
	return ctx;
}

static struct tls_client_ctx *make_client(struct tls_client_conf *base)
{
	struct tls_client_conf conf;
	struct tls_client_ctx *ctx = NULL;
	char err[256];

	if (base)
		conf = *base;
	else
		memset(&conf, 0, sizeof(conf));
	if (conf.ca_file == NULL)
		conf.ca_file = pki.ca;
	int rc = tls_client_ctx_create(&conf, &ctx, err, sizeof(err));
	if (rc != 0)
		fprintf(stderr, "client ctx: %s\n", err);
	CU_ASSERT_EQUAL_FATAL(rc, 0);
	return ctx;
}

/* Fresh endpoints and stats, then both conns created and the client started. */
static void connect_pair(struct tls_server_ctx *sctx, struct tls_client_ctx *cctx,
			 enum tls_policy policy, const char *host, struct tls_session_cache *cache)
{
	pair_ep_reset(&srv);
	pair_ep_reset(&cli);
	pair_link(&srv, &cli);
	CU_ASSERT_EQUAL_FATAL(tls_server_conn_new(sctx, &pair_ops, &srv, &sst, &srv.tc), 0);
	CU_ASSERT_EQUAL_FATAL(
		tls_client_conn_new(cctx, policy, host, 25, cache, &pair_ops, &cli, &cst, &cli.tc),
		0);
	CU_ASSERT_EQUAL(tls_conn_start(cli.tc), 0);
	CU_ASSERT(cli.wire.len > 0); /* the ClientHello */
}

static void reset_stats(void)
{
	memset(&sst, 0, sizeof(sst));
	memset(&cst, 0, sizeof(cst));
}

static void done_pair(void)
{
	pair_ep_reset(&srv);
	pair_ep_reset(&cli);
}

static uint8_t *random_bytes(size_t n)
{
	uint8_t *p = malloc(n);

	CU_ASSERT_PTR_NOT_NULL_FATAL(p);
	for (size_t i = 0; i < n; i++)
		p[i] = (uint8_t)rand();
	return p;
}

/* ---- handshakes ------------------------------------------------------------- */

static void handshake_version(enum tls_version v, const char *want, size_t chunk)
{
	struct tls_server_ctx *s = make_server(CERT_EC | CERT_RSA, NULL);
	struct tls_client_conf cc = {.min_version = v, .max_version = v};
	struct tls_client_ctx *c = make_client(&cc);

	reset_stats();
	connect_pair(s, c, TLS_POLICY_VERIFY, TLS_PKI_HOST, NULL);
	pair_pump(&srv, &cli, chunk);
	CU_ASSERT_EQUAL(srv.errors, 0);
	CU_ASSERT_EQUAL(cli.errors, 0);
	CU_ASSERT_EQUAL(srv.handshakes, 1);
	CU_ASSERT_EQUAL(cli.handshakes, 1);
	CU_ASSERT_STRING_EQUAL(cli.info.version, want);
	CU_ASSERT_STRING_EQUAL(srv.info.version, want);
	CU_ASSERT_STRING_EQUAL(tls_conn_version(cli.tc), want);
	CU_ASSERT_STRING_EQUAL(tls_conn_cipher(cli.tc), cli.info.cipher);
	CU_ASSERT(strstr(cli.info.cipher, "GCM") != NULL || strstr(cli.info.cipher, "CHACHA"));
	CU_ASSERT(cli.info.cipher_bits >= 128);
	CU_ASSERT_TRUE(cli.info.verified);
	CU_ASSERT_STRING_EQUAL(cli.info.verify_error, "");
	CU_ASSERT_FALSE(cli.info.resumed);
	CU_ASSERT_EQUAL(sst.server_handshakes_full, 1);
	CU_ASSERT_EQUAL(cst.client_handshakes_full, 1);
	CU_ASSERT_EQUAL(sst.server_handshakes_resumed + cst.client_handshakes_resumed, 0);
	CU_ASSERT_EQUAL(sst.cipher_bytes_out, cst.cipher_bytes_in);
	CU_ASSERT_EQUAL(cst.cipher_bytes_out, sst.cipher_bytes_in);
	CU_ASSERT(sst.cipher_bytes_out > 300); /* a certificate went out */

	/* A line each way. */
	static const char hello[] = "220 mx.test.example ESMTP\r\n", ehlo[] = "EHLO dev\r\n";
	CU_ASSERT_EQUAL(tls_conn_write(srv.tc, (const uint8_t *)hello, strlen(hello)),
			(ssize_t)strlen(hello));
	CU_ASSERT_EQUAL(tls_conn_write(cli.tc, (const uint8_t *)ehlo, strlen(ehlo)),
			(ssize_t)strlen(ehlo));
	pair_pump(&srv, &cli, chunk);
	CU_ASSERT_EQUAL(cli.rx.len, strlen(hello));
	CU_ASSERT(cli.rx.len == strlen(hello) && memcmp(cli.rx.data, hello, cli.rx.len) == 0);
	CU_ASSERT(srv.rx.len == strlen(ehlo) && memcmp(srv.rx.data, ehlo, srv.rx.len) == 0);
	CU_ASSERT_EQUAL(sst.plain_bytes_in, strlen(ehlo));
	CU_ASSERT_EQUAL(sst.plain_bytes_out, strlen(hello));
	done_pair();
	tls_client_ctx_free(c);
	tls_server_ctx_free(s);
}

static void test_handshake_tls13(void)
{
	handshake_version(TLS_VERSION_1_3, "TLSv1.3", 700);
}

static void test_handshake_tls12(void)
{
	handshake_version(TLS_VERSION_1_2, "TLSv1.2", 700);
}

static void test_handshake_one_byte(void)
{
	handshake_version(TLS_VERSION_1_3, "TLSv1.3", 1);
	handshake_version(TLS_VERSION_1_2, "TLSv1.2", 1);
}

static void test_default_is_tls13(void)
{
	handshake_version(TLS_VERSION_DEFAULT, "TLSv1.3", 0);
}

/* ---- data ------------------------------------------------------------------------ */

static void bulk(enum tls_version v, size_t chunk, size_t take_max, size_t size)
{
	struct tls_server_ctx *s = make_server(CERT_EC, NULL);
	struct tls_client_conf cc = {.max_version = v};
	struct tls_client_ctx *c = make_client(&cc);
	uint8_t *up = random_bytes(size), *down = random_bytes(size);

	reset_stats();
	connect_pair(s, c, TLS_POLICY_VERIFY, TLS_PKI_HOST, NULL);
	pair_pump(&srv, &cli, chunk);
	CU_ASSERT_TRUE_FATAL(tls_conn_handshake_done(cli.tc) && tls_conn_handshake_done(srv.tc));
	cli.tx = up;
	cli.tx_len = size;
	cli.tx_chunk_max = 40000;
	srv.tx = down;
	srv.tx_len = size;
	srv.tx_chunk_max = 3000;
	srv.take_max = take_max;
	cli.take_max = take_max;
	pair_pump(&srv, &cli, chunk);
	CU_ASSERT_EQUAL(cli.tx_off, size);
	CU_ASSERT_EQUAL(srv.tx_off, size);
	CU_ASSERT_EQUAL(srv.rx.len, size);
	CU_ASSERT_EQUAL(cli.rx.len, size);
	CU_ASSERT(srv.rx.len == size && memcmp(srv.rx.data, up, size) == 0);
	CU_ASSERT(cli.rx.len == size && memcmp(cli.rx.data, down, size) == 0);
	CU_ASSERT_EQUAL(sst.plain_bytes_in, size);
	CU_ASSERT_EQUAL(cst.plain_bytes_in, size);
	CU_ASSERT(sst.cipher_bytes_in > size);
	CU_ASSERT_EQUAL(srv.errors + cli.errors, 0);
	free(up);
	free(down);
	done_pair();
	tls_client_ctx_free(c);
	tls_server_ctx_free(s);
}

static void test_data_1mib_tls13(void)
{
	bulk(TLS_VERSION_1_3, 5000, 0, 1 << 20);
}

static void test_data_1mib_tls12(void)
{
	bulk(TLS_VERSION_1_2, 20000, 0, 1 << 20);
}

static void test_data_partial_consumer(void)
{
	bulk(TLS_VERSION_1_3, 3000, 700, 256 * 1024);
}

static void test_data_one_byte(void)
{
	bulk(TLS_VERSION_1_3, 1, 0, 64 * 1024);
}

/*
 * An error another OpenSSL user of the thread left in the error queue (DKIM
 * signing, the server side) must not make SSL_get_error() see a failure
 * where there is none: conn.c empties the queue before the calls it explains
 * (only when it is not empty: the common case costs no clearing).
 */
static void test_stale_error_queue(void)
{
	struct tls_server_ctx *s = make_server(CERT_EC, NULL);
	struct tls_client_ctx *c = make_client(NULL);
	uint8_t *up = random_bytes(3000);

	reset_stats();
	connect_pair(s, c, TLS_POLICY_VERIFY, TLS_PKI_HOST, NULL);
	pair_pump(&srv, &cli, 0);
	CU_ASSERT_TRUE_FATAL(tls_conn_handshake_done(cli.tc) && tls_conn_handshake_done(srv.tc));
	for (int round = 0; round < 3; round++) {
		ERR_raise(ERR_LIB_EVP, EVP_R_BAD_DECRYPT);
		CU_ASSERT_EQUAL(tls_conn_write(cli.tc, up + round * 1000, 1000), 1000);
		CU_ASSERT_EQUAL(ERR_peek_error(), 0); /* emptied by the write */
		ERR_raise(ERR_LIB_EVP, EVP_R_BAD_DECRYPT);
		pair_pump(&srv, &cli, 0); /* the server reads with the stale error queued */
	}
	ERR_clear_error();
	CU_ASSERT_EQUAL(srv.errors + cli.errors, 0);
	CU_ASSERT_EQUAL(srv.rx.len, 3000);
	CU_ASSERT(srv.rx.len == 3000 && memcmp(srv.rx.data, up, 3000) == 0);
	free(up);
	done_pair();
	tls_client_ctx_free(c);
	tls_server_ctx_free(s);
}

/* ---- resumption ---------------------------------------------------------------- */

static void resume(enum tls_version v)
{
	struct tls_server_ctx *s = make_server(CERT_EC, NULL);
	struct tls_client_conf cc = {.max_version = v};
	struct tls_client_ctx *c = make_client(&cc);
	struct tls_session_cache *cache;

	CU_ASSERT_EQUAL_FATAL(tls_session_cache_create(16, &cache), 0);
	reset_stats();
	connect_pair(s, c, TLS_POLICY_VERIFY, TLS_PKI_HOST, cache);
	pair_pump(&srv, &cli, 0);
	CU_ASSERT_FALSE(cli.info.resumed);
	CU_ASSERT_EQUAL(tls_session_cache_count(cache), 1);
	CU_ASSERT(sst.tickets_issued >= 1);
	CU_ASSERT_EQUAL(tls_session_cache_stats(cache)->misses, 1);

	connect_pair(s, c, TLS_POLICY_VERIFY, TLS_PKI_HOST, cache);
	pair_pump(&srv, &cli, 0);
	CU_ASSERT_EQUAL(cli.handshakes, 1);
	CU_ASSERT_TRUE(cli.info.resumed);
	CU_ASSERT_TRUE(srv.info.resumed);
	CU_ASSERT_TRUE(tls_conn_resumed(cli.tc));
	CU_ASSERT_TRUE(cli.info.verified); /* carried in the session */
	CU_ASSERT_EQUAL(cst.client_handshakes_full, 1);
	CU_ASSERT_EQUAL(cst.client_handshakes_resumed, 1);
	CU_ASSERT_EQUAL(sst.server_handshakes_full, 1);
	CU_ASSERT_EQUAL(sst.server_handshakes_resumed, 1);
	CU_ASSERT_EQUAL(tls_session_cache_stats(cache)->hits, 1);

	/* Same name, other case, trailing dot: same cache entry. */
	connect_pair(s, c, TLS_POLICY_VERIFY, "MX.Test.Example.", cache);
	pair_pump(&srv, &cli, 0);
	CU_ASSERT_TRUE(cli.info.resumed);
	CU_ASSERT_EQUAL(tls_session_cache_count(cache), 1);

	/* Another port is another destination. */
	pair_ep_reset(&srv);
	pair_ep_reset(&cli);
	CU_ASSERT_EQUAL_FATAL(tls_server_conn_new(s, &pair_ops, &srv, &sst, &srv.tc), 0);
	CU_ASSERT_EQUAL_FATAL(tls_client_conn_new(c, TLS_POLICY_VERIFY, TLS_PKI_HOST, 587, cache,
						  &pair_ops, &cli, &cst, &cli.tc),
			      0);
	tls_conn_start(cli.tc);
	pair_pump(&srv, &cli, 0);
	CU_ASSERT_EQUAL(cli.handshakes, 1);
	CU_ASSERT_FALSE(cli.info.resumed);
	CU_ASSERT_EQUAL(tls_session_cache_count(cache), 2);

	CU_ASSERT_EQUAL(tls_session_cache_remove(cache, TLS_PKI_HOST, 587), 0);
	CU_ASSERT_EQUAL(tls_session_cache_remove(cache, TLS_PKI_HOST, 587), -ENOENT);
	CU_ASSERT_EQUAL(tls_session_cache_count(cache), 1);
	done_pair();
	tls_session_cache_free(cache);
	tls_client_ctx_free(c);
	tls_server_ctx_free(s);
}

static void test_resume_tls13(void)
{
	resume(TLS_VERSION_1_3);
}

static void test_resume_tls12(void)
{
	resume(TLS_VERSION_1_2);
}

static void test_ticket_rotation(void)
{
	struct tls_server_ctx *s = make_server(CERT_EC, NULL);
	struct tls_client_ctx *c = make_client(NULL);
	struct tls_session_cache *cache;
	uint64_t r0 = tls_server_ctx_ticket_rotations(s);

	CU_ASSERT_EQUAL_FATAL(tls_session_cache_create(4, &cache), 0);
	reset_stats();
	connect_pair(s, c, TLS_POLICY_VERIFY, TLS_PKI_HOST, cache);
	pair_pump(&srv, &cli, 0);
	CU_ASSERT_FALSE(cli.info.resumed);

	/* Previous key: still accepted, and the session continues. */
	CU_ASSERT_EQUAL(tls_server_ctx_rotate_ticket_keys(s), 0);
	CU_ASSERT_EQUAL(tls_server_ctx_ticket_rotations(s), r0 + 1);
	connect_pair(s, c, TLS_POLICY_VERIFY, TLS_PKI_HOST, cache);
	pair_pump(&srv, &cli, 0);
	CU_ASSERT_TRUE(cli.info.resumed);

	/* Two rotations later the ticket's key is gone: full handshake. */
	CU_ASSERT_EQUAL(tls_server_ctx_rotate_ticket_keys(s), 0);
	CU_ASSERT_EQUAL(tls_server_ctx_rotate_ticket_keys(s), 0);
	connect_pair(s, c, TLS_POLICY_VERIFY, TLS_PKI_HOST, cache);
	pair_pump(&srv, &cli, 0);
	CU_ASSERT_EQUAL(cli.handshakes, 1);
	CU_ASSERT_FALSE(cli.info.resumed);
	CU_ASSERT_EQUAL(cst.client_handshakes_full, 2);
	CU_ASSERT_EQUAL(cst.client_handshakes_resumed, 1);
	done_pair();
	tls_session_cache_free(cache);
	tls_client_ctx_free(c);
	tls_server_ctx_free(s);
}

static void test_ticket_rotation_scheduled(void)
{
	struct tls_server_conf sc = {.ticket_rotation_us = 1000}; /* 1 ms */
	struct tls_server_ctx *s = make_server(CERT_EC, &sc);
	struct tls_client_ctx *c = make_client(NULL);
	struct tls_session_cache *cache;
	uint64_t r0 = tls_server_ctx_ticket_rotations(s);

	CU_ASSERT_EQUAL_FATAL(tls_session_cache_create(4, &cache), 0);
	reset_stats();
	connect_pair(s, c, TLS_POLICY_VERIFY, TLS_PKI_HOST, cache);
	pair_pump(&srv, &cli, 0);
	struct timespec ts = {0, 5 * 1000 * 1000};
	nanosleep(&ts, NULL);
	connect_pair(s, c, TLS_POLICY_VERIFY, TLS_PKI_HOST, cache);
	pair_pump(&srv, &cli, 0);
	CU_ASSERT(tls_server_ctx_ticket_rotations(s) > r0); /* rotated lazily in the callback */
	CU_ASSERT_EQUAL(cli.handshakes, 1);
	done_pair();
	tls_session_cache_free(cache);
	tls_client_ctx_free(c);
	tls_server_ctx_free(s);
}

static void test_tickets_per_context(void)
{
	struct tls_server_ctx *s1 = make_server(CERT_EC, NULL), *s2 = make_server(CERT_EC, NULL);
	struct tls_client_ctx *c = make_client(NULL);
	struct tls_session_cache *cache;

	CU_ASSERT_EQUAL_FATAL(tls_session_cache_create(4, &cache), 0);
	reset_stats();
	connect_pair(s1, c, TLS_POLICY_VERIFY, TLS_PKI_HOST, cache);
	pair_pump(&srv, &cli, 0);
	CU_ASSERT_EQUAL(tls_session_cache_count(cache), 1);
	/* Another context (another listener or process) has other keys. */
	connect_pair(s2, c, TLS_POLICY_VERIFY, TLS_PKI_HOST, cache);
	pair_pump(&srv, &cli, 0);
	CU_ASSERT_EQUAL(cli.handshakes, 1);
	CU_ASSERT_FALSE(cli.info.resumed);
	CU_ASSERT_EQUAL(sst.server_handshakes_full, 2);
	done_pair();
	tls_session_cache_free(cache);
	tls_client_ctx_free(c);
	tls_server_ctx_free(s1);
	tls_server_ctx_free(s2);
}

static void test_write_from_handshake_callback(void)
{
	struct tls_server_ctx *s = make_server(CERT_EC, NULL);
	struct tls_client_ctx *c = make_client(NULL);
	static const char greeting[] = "220 mx.test.example ESMTP ready\r\n";

	for (int chunk = 0; chunk < 2; chunk++) {
		reset_stats();
		connect_pair(s, c, TLS_POLICY_VERIFY, TLS_PKI_HOST, NULL);
		srv.greeting = greeting;
		cli.reenter = true;
		pair_pump(&srv, &cli, chunk ? 1 : 0);
		CU_ASSERT_EQUAL(cli.reenter_input_rc, -EBUSY);
		CU_ASSERT_EQUAL(cli.reenter_resume_rc, 0);
		CU_ASSERT_EQUAL(srv.errors, 0);
		CU_ASSERT_EQUAL(cli.rx.len, strlen(greeting));
		CU_ASSERT(cli.rx.len == strlen(greeting) &&
			  memcmp(cli.rx.data, greeting, cli.rx.len) == 0);
	}
	done_pair();
	tls_client_ctx_free(c);
	tls_server_ctx_free(s);
}

/*
 * Replies written from inside on_plaintext (an SMTP server answering a
 * pipelined batch) leave as one record: RFC 8446 5.2, a TLS 1.3 AES-GCM
 * record is 5 header + plaintext + 1 content type + 16 tag bytes.  A write
 * too big for the stage (4 KiB) seals it first, so the order holds.
 */
#define TLS13_GCM_OVERHEAD 22

static void test_coalesce_callback_writes(void)
{
	static const char reply[] = "250 2.1.0 Ok\r\n", cmd[] = "MAIL FROM:<a@b.example>\r\n";
	size_t rl = strlen(reply);

	for (int round = 0; round < 4; round++) {
		struct tls_server_conf sc = {.keep_buffers = round & 1};
		struct tls_server_ctx *s = make_server(CERT_EC, &sc);
		struct tls_client_ctx *c = make_client(NULL);
		uint8_t *big = round >= 2 ? random_bytes(5000) : NULL;
		size_t want = 3 * rl + (big ? 5000 : 0);

		reset_stats();
		connect_pair(s, c, TLS_POLICY_VERIFY, TLS_PKI_HOST, NULL);
		pair_pump(&srv, &cli, 0);
		CU_ASSERT_EQUAL_FATAL(srv.handshakes, 1);
		srv.reply = reply;
		srv.reply_count = 3;
		srv.big_reply = big;
		srv.big_reply_len = big ? 5000 : 0;
		cli.keep_rx = true;
		uint64_t out0 = sst.cipher_bytes_out;
		CU_ASSERT_EQUAL(tls_conn_write(cli.tc, (const uint8_t *)cmd, strlen(cmd)),
				(ssize_t)strlen(cmd));
		pair_pump(&srv, &cli, round == 3 ? 1 : 0);
		CU_ASSERT_EQUAL(srv.errors, 0);
		CU_ASSERT_EQUAL(cli.errors, 0);
		CU_ASSERT_EQUAL(sst.writes_coalesced, 2);
		CU_ASSERT_EQUAL(sst.plain_bytes_out, want);
		/* one record for the three replies, one more for a big write alone */
		CU_ASSERT_EQUAL(sst.cipher_bytes_out - out0,
				want + (big ? 2 : 1) * TLS13_GCM_OVERHEAD);
		CU_ASSERT_EQUAL_FATAL(cli.rx.len, want);
		for (int i = 0; i < 3; i++)
			CU_ASSERT(memcmp(cli.rx.data + i * rl, reply, rl) == 0);
		if (big)
			CU_ASSERT(memcmp(cli.rx.data + 3 * rl, big, 5000) == 0);
		CU_ASSERT_EQUAL(tls_conn_output_pending(srv.tc), 0);
		/* A write outside any callback goes at once, alone. */
		srv.reply_count = 0;
		srv.big_reply_len = 0;
		out0 = sst.cipher_bytes_out;
		CU_ASSERT_EQUAL(tls_conn_write(srv.tc, (const uint8_t *)reply, rl), (ssize_t)rl);
		CU_ASSERT_EQUAL(sst.cipher_bytes_out - out0, rl + TLS13_GCM_OVERHEAD);
		CU_ASSERT_EQUAL(sst.writes_coalesced, 2);
		done_pair();
		free(big);
		tls_client_ctx_free(c);
		tls_server_ctx_free(s);
	}
}

static void test_no_tickets(void)
{
	struct tls_server_conf sc = {.no_tickets = true};
	struct tls_server_ctx *s = make_server(CERT_EC, &sc);
	struct tls_client_ctx *c = make_client(NULL);
	struct tls_session_cache *cache;

	CU_ASSERT_EQUAL_FATAL(tls_session_cache_create(4, &cache), 0);
	reset_stats();
	for (int i = 0; i < 2; i++) {
		connect_pair(s, c, TLS_POLICY_VERIFY, TLS_PKI_HOST, cache);
		pair_pump(&srv, &cli, 0);
		CU_ASSERT_EQUAL(cli.handshakes, 1);
		CU_ASSERT_FALSE(cli.info.resumed);
	}
	CU_ASSERT_EQUAL(sst.tickets_issued, 0);
	CU_ASSERT_EQUAL(cst.client_handshakes_full, 2);
	done_pair();
	tls_session_cache_free(cache);
	tls_client_ctx_free(c);
	tls_server_ctx_free(s);
}

/* ---- client session cache -------------------------------------------------------- */

static void test_cache_lru_and_expiry(void)
{
	struct tls_server_ctx *s = make_server(CERT_EC, NULL);
	struct tls_client_ctx *c = make_client(NULL);
	struct tls_session_cache *cache;
	static const char *hosts[] = {"a.test", "b.test", "c.test"};

	CU_ASSERT_EQUAL(tls_session_cache_create(0, &cache), -EINVAL);
	CU_ASSERT_EQUAL_FATAL(tls_session_cache_create(2, &cache), 0);
	reset_stats();
	for (int i = 0; i < 3; i++) {
		connect_pair(s, c, TLS_POLICY_OPPORTUNISTIC, hosts[i], cache);
		pair_pump(&srv, &cli, 0);
		CU_ASSERT_EQUAL(cli.handshakes, 1);
	}
	CU_ASSERT_EQUAL(tls_session_cache_count(cache), 2);
	CU_ASSERT_EQUAL(tls_session_cache_stats(cache)->evictions, 1);
	/* a.test was least recently used: evicted.  c.test resumes. */
	connect_pair(s, c, TLS_POLICY_OPPORTUNISTIC, "c.test", cache);
	pair_pump(&srv, &cli, 0);
	CU_ASSERT_TRUE(cli.info.resumed);
	connect_pair(s, c, TLS_POLICY_OPPORTUNISTIC, "a.test", cache);
	pair_pump(&srv, &cli, 0);
	CU_ASSERT_FALSE(cli.info.resumed);
	CU_ASSERT_EQUAL(tls_session_cache_count(cache), 2);
	/* Nothing is expired now; everything is in ten years. */
	CU_ASSERT_EQUAL(tls_session_cache_expire(cache, (int64_t)time(NULL)), 0);
	CU_ASSERT_EQUAL(tls_session_cache_expire(cache, (int64_t)time(NULL) + 10 * 365 * 86400L),
			2);
	CU_ASSERT_EQUAL(tls_session_cache_count(cache), 0);
	CU_ASSERT_EQUAL(tls_session_cache_stats(cache)->expired, 2);
	done_pair();
	tls_session_cache_free(cache);
	tls_client_ctx_free(c);
	tls_server_ctx_free(s);
}

/*
 * TLS 1.3 tickets are single-use: the cache keeps several per destination
 * (bounded), so pooled reconnections that start together all resume.
 */
static void test_cache_tickets_per_destination(void)
{
	struct tls_server_conf sc = {.num_tickets = 20};
	struct tls_server_ctx *s = make_server(CERT_EC, &sc);
	struct tls_client_ctx *c = make_client(NULL);
	struct tls_session_cache *cache;

	CU_ASSERT_EQUAL_FATAL(tls_session_cache_create(64, &cache), 0);
	reset_stats();
	connect_pair(s, c, TLS_POLICY_VERIFY, TLS_PKI_HOST, cache);
	pair_pump(&srv, &cli, 0);
	CU_ASSERT_FALSE(cli.info.resumed);
	/* 20 tickets from one handshake; 16 kept for the destination. */
	CU_ASSERT_EQUAL(tls_session_cache_count(cache), 16);
	CU_ASSERT_EQUAL(tls_session_cache_stats(cache)->evictions, 4);
	/* Each resumption uses one ticket and gets one back: they all resume. */
	for (int i = 0; i < 8; i++) {
		connect_pair(s, c, TLS_POLICY_VERIFY, TLS_PKI_HOST, cache);
		pair_pump(&srv, &cli, 0);
		CU_ASSERT_TRUE(cli.info.resumed);
	}
	CU_ASSERT_EQUAL(tls_session_cache_count(cache), 16);
	/* Another destination is untouched by that bound. */
	CU_ASSERT_EQUAL(tls_session_cache_remove(cache, TLS_PKI_HOST, 25), 0);
	CU_ASSERT_EQUAL(tls_session_cache_count(cache), 0);
	done_pair();
	tls_session_cache_free(cache);
	tls_client_ctx_free(c);
	tls_server_ctx_free(s);
}

/* ---- verification policy ----------------------------------------------------------- */

static void expect_verify_failure(unsigned certs, const char *host, const char *want_error)
{
	struct tls_server_ctx *s = make_server(certs, NULL);
	struct tls_client_ctx *c = make_client(NULL);

	reset_stats();
	connect_pair(s, c, TLS_POLICY_VERIFY, host, NULL);
	pair_pump(&srv, &cli, 0);
	CU_ASSERT_EQUAL(cli.handshakes, 0);
	CU_ASSERT_EQUAL(cli.errors, 1);
	CU_ASSERT_EQUAL(cst.fail_verify, 1);
	CU_ASSERT_PTR_NOT_NULL(strstr(cli.error, "certificate verify failed"));
	CU_ASSERT_PTR_NOT_NULL(strstr(cli.error, want_error));
	if (!strstr(cli.error, want_error))
		fprintf(stderr, "client error: %s\n", cli.error);
	CU_ASSERT_STRING_EQUAL(tls_conn_error(cli.tc), cli.error);
	/* The client's alert reached the server. */
	CU_ASSERT_EQUAL(srv.errors, 1);
	CU_ASSERT_EQUAL(sst.fail_peer_alert, 1);
	CU_ASSERT_PTR_NOT_NULL(strstr(srv.error, "alert"));
	CU_ASSERT_EQUAL(tls_conn_input(cli.tc, (const uint8_t *)"x", 1), -EPROTO);
	CU_ASSERT_EQUAL(tls_conn_write(cli.tc, (const uint8_t *)"x", 1), -EPROTO);
	done_pair();
	tls_client_ctx_free(c);
	tls_server_ctx_free(s);
}

static void test_verify_wrong_name(void)
{
	expect_verify_failure(CERT_EC, "mx.other.example", "mismatch");
}

static void test_verify_untrusted_ca(void)
{
	expect_verify_failure(CERT_EVIL, TLS_PKI_HOST,
			      "self-signed certificate in certificate chain");
}

static void test_verify_ip_literal(void)
{
	expect_verify_failure(CERT_EC, "192.0.2.1", "mismatch");
	/* The queue names a literal destination "[192.0.2.1]": checked as the address too. */
	expect_verify_failure(CERT_EC, "[192.0.2.1]", "mismatch");
}

static void test_opportunistic_ignores(void)
{
	struct tls_client_ctx *c = make_client(NULL);
	struct tls_session_cache *cache;
	unsigned certs[] = {CERT_EC, CERT_EVIL};
	const char *hosts[] = {"mx.other.example", TLS_PKI_HOST};

	CU_ASSERT_EQUAL_FATAL(tls_session_cache_create(4, &cache), 0);
	for (int i = 0; i < 2; i++) {
		struct tls_server_ctx *s = make_server(certs[i], NULL);

		reset_stats();
		connect_pair(s, c, TLS_POLICY_OPPORTUNISTIC, hosts[i], cache);
		pair_pump(&srv, &cli, 0);
		CU_ASSERT_EQUAL(cli.errors + srv.errors, 0);
		CU_ASSERT_EQUAL(cli.handshakes, 1);
		CU_ASSERT_FALSE(cli.info.verified);
		CU_ASSERT(cli.info.verify_error[0] != '\0');
		CU_ASSERT_EQUAL(cst.fail_verify, 0);
		/* An unverified session must not be resumed by a verify connection. */
		if (i == 1) {
			connect_pair(s, c, TLS_POLICY_VERIFY, hosts[i], cache);
			pair_pump(&srv, &cli, 0);
			CU_ASSERT_EQUAL(cli.handshakes, 0);
			CU_ASSERT_EQUAL(cst.fail_verify, 1);
			CU_ASSERT_EQUAL(tls_session_cache_stats(cache)->unverified_skipped, 1);
		}
		done_pair();
		tls_server_ctx_free(s);
	}
	tls_session_cache_free(cache);
	tls_client_ctx_free(c);
}

/* ---- certificates ------------------------------------------------------------------- */

static void expect_key(unsigned certs, enum tls_version v, const char *sigalgs, const char *ciphers,
		       const char *type, int bits)
{
	struct tls_server_ctx *s = make_server(certs, NULL);
	struct tls_client_conf cc = {.sigalgs = sigalgs, .ciphers = ciphers, .max_version = v};
	struct tls_client_ctx *c = make_client(&cc);

	reset_stats();
	connect_pair(s, c, TLS_POLICY_VERIFY, TLS_PKI_HOST, NULL);
	pair_pump(&srv, &cli, 0);
	CU_ASSERT_EQUAL(cli.handshakes, 1);
	CU_ASSERT_STRING_EQUAL(cli.info.peer_key_type, type);
	CU_ASSERT_EQUAL(cli.info.peer_key_bits, bits);
	CU_ASSERT_TRUE(cli.info.verified);
	done_pair();
	tls_client_ctx_free(c);
	tls_server_ctx_free(s);
}

static void test_ecdsa_and_rsa(void)
{
	expect_key(CERT_EC, TLS_VERSION_DEFAULT, NULL, NULL, "EC", 256);
	expect_key(CERT_RSA, TLS_VERSION_DEFAULT, NULL, NULL, "RSA", 2048);
	/* Both configured: the client's signature algorithms pick. */
	expect_key(CERT_EC | CERT_RSA, TLS_VERSION_DEFAULT, "ECDSA+SHA256", NULL, "EC", 256);
	expect_key(CERT_EC | CERT_RSA, TLS_VERSION_DEFAULT, "RSA-PSS+SHA256", NULL, "RSA", 2048);
	expect_key(CERT_EC | CERT_RSA, TLS_VERSION_1_2, NULL, "ECDHE-RSA-AES128-GCM-SHA256", "RSA",
		   2048);
	expect_key(CERT_EC | CERT_RSA, TLS_VERSION_1_2, NULL, "ECDHE-ECDSA-AES256-GCM-SHA384", "EC",
		   256);
}

/* ---- backpressure ------------------------------------------------------------------- */

static void test_backpressure(void)
{
	struct tls_server_conf sc = {.max_output = 8192};
	struct tls_server_ctx *s = make_server(CERT_EC, &sc);
	struct tls_client_conf cc = {.max_output = 8192};
	struct tls_client_ctx *c = make_client(&cc);
	size_t size = 512 * 1024;
	uint8_t *data = random_bytes(size);

	reset_stats();
	connect_pair(s, c, TLS_POLICY_VERIFY, TLS_PKI_HOST, NULL);
	pair_pump(&srv, &cli, 0);
	CU_ASSERT_TRUE_FATAL(tls_conn_handshake_done(srv.tc));

	/* The sink takes nothing: the queue fills to its bound and stops there. */
	srv.window_limited = true;
	srv.window = 0;
	ssize_t w = tls_conn_write(srv.tc, data, size);
	CU_ASSERT(w > 0 && (size_t)w < size);
	CU_ASSERT(w >= 8000 && w <= 8192);
	CU_ASSERT(tls_conn_output_pending(srv.tc) >= 8192);
	CU_ASSERT(tls_conn_output_pending(srv.tc) <= 8192 + 64);
	CU_ASSERT_EQUAL(tls_conn_write(srv.tc, data, size), 0);
	CU_ASSERT(sst.output_queue_full >= 2);
	CU_ASSERT_FALSE(tls_conn_want_input(srv.tc));
	/* Input is not read while the output is over its bound. */
	static const char line[] = "QUIT\r\n";
	tls_conn_write(cli.tc, (const uint8_t *)line, 6);
	CU_ASSERT(cli.wire.len > 0);
	CU_ASSERT_EQUAL(tls_conn_input(srv.tc, cli.wire.data, cli.wire.len), 0);
	CU_ASSERT_EQUAL(srv.rx.len, 0);
	CU_ASSERT(sst.input_stalled >= 1);

	/* A sink that takes 1000 bytes per round still gets everything, in order. */
	srv.window_per_round = 1000;
	srv.tx = data;
	srv.tx_len = size;
	srv.tx_off = (size_t)w;
	srv.tx_chunk_max = 0;
	pair_pump(&srv, &cli, 0);
	CU_ASSERT_EQUAL(srv.tx_off, size);
	CU_ASSERT_EQUAL(cli.rx.len, size);
	CU_ASSERT(cli.rx.len == size && memcmp(cli.rx.data, data, size) == 0);
	CU_ASSERT(srv.max_pending <= 8192 + 64);
	CU_ASSERT(srv.writable >= 1);
	CU_ASSERT_EQUAL(srv.rx.len, 6); /* the stalled input went through later */
	CU_ASSERT_EQUAL(tls_conn_output_pending(srv.tc), 0);
	free(data);
	done_pair();
	tls_client_ctx_free(c);
	tls_server_ctx_free(s);
}

static void test_plaintext_hold(void)
{
	struct tls_server_ctx *s = make_server(CERT_EC, NULL);
	struct tls_client_ctx *c = make_client(NULL);
	uint8_t *data = random_bytes(100000);

	reset_stats();
	connect_pair(s, c, TLS_POLICY_VERIFY, TLS_PKI_HOST, NULL);
	pair_pump(&srv, &cli, 0);
	srv.paused = true;
	CU_ASSERT_EQUAL(tls_conn_write(cli.tc, data, 100000), 100000);
	ssize_t r =
		tls_conn_input(srv.tc, cli.wire.data + cli.wire.off, cli.wire.len - cli.wire.off);
	/* One record is read (and held); the others stay with the caller. */
	CU_ASSERT(r > 0 && (size_t)r < cli.wire.len - cli.wire.off);
	CU_ASSERT(r <= 16384 + 64);
	CU_ASSERT_FALSE(tls_conn_want_input(srv.tc));
	CU_ASSERT_EQUAL(srv.rx.len, 0);
	cli.wire.off += (size_t)r;
	srv.paused = false;
	CU_ASSERT_EQUAL(tls_conn_resume(srv.tc), 0);
	CU_ASSERT_TRUE(tls_conn_want_input(srv.tc));
	CU_ASSERT(srv.rx.len > 0);
	pair_pump(&srv, &cli, 0);
	CU_ASSERT(srv.rx.len == 100000 && memcmp(srv.rx.data, data, 100000) == 0);
	free(data);
	done_pair();
	tls_client_ctx_free(c);
	tls_server_ctx_free(s);
}

/* ---- close ----------------------------------------------------------------------------- */

static void test_close_notify(void)
{
	struct tls_server_ctx *s = make_server(CERT_EC, NULL);
	struct tls_client_ctx *c = make_client(NULL);

	reset_stats();
	connect_pair(s, c, TLS_POLICY_VERIFY, TLS_PKI_HOST, NULL);
	CU_ASSERT_EQUAL(tls_conn_shutdown(cli.tc), -ENOTCONN);
	pair_pump(&srv, &cli, 0);
	CU_ASSERT_EQUAL(tls_conn_write(cli.tc, (const uint8_t *)"QUIT\r\n", 6), 6);
	CU_ASSERT_EQUAL(tls_conn_shutdown(cli.tc), 0);
	CU_ASSERT_EQUAL(tls_conn_shutdown(cli.tc), -EPIPE);
	CU_ASSERT_EQUAL(tls_conn_write(cli.tc, (const uint8_t *)"x", 1), -EPIPE);
	pair_pump(&srv, &cli, 0);
	CU_ASSERT_EQUAL(srv.rx.len, 6); /* data before close_notify arrives */
	CU_ASSERT_EQUAL(srv.peer_closed, 1);
	CU_ASSERT_EQUAL(sst.close_notify_received, 1);
	CU_ASSERT_EQUAL(cst.close_notify_sent, 1);
	CU_ASSERT_FALSE(tls_conn_want_input(srv.tc));
	CU_ASSERT_EQUAL(tls_conn_input(srv.tc, (const uint8_t *)"x", 1), -EPIPE);
	/* The server may still answer, then closes too. */
	CU_ASSERT_EQUAL(tls_conn_write(srv.tc, (const uint8_t *)"221 bye\r\n", 9), 9);
	CU_ASSERT_EQUAL(tls_conn_shutdown(srv.tc), 0);
	pair_pump(&srv, &cli, 0);
	CU_ASSERT_EQUAL(cli.rx.len, 9);
	CU_ASSERT_EQUAL(cli.peer_closed, 1);
	CU_ASSERT_EQUAL(cst.close_notify_received, 1);
	CU_ASSERT_EQUAL(srv.errors + cli.errors, 0);
	done_pair();
	tls_client_ctx_free(c);
	tls_server_ctx_free(s);
}

/* ---- hostile input ------------------------------------------------------------------------- */

static void test_garbage_server(void)
{
	struct tls_server_ctx *s = make_server(CERT_EC, NULL);
	static const char http[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
	static const char smtp[] = "EHLO device\r\n";

	for (int i = 0; i < 40; i++) {
		reset_stats();
		pair_ep_reset(&srv);
		CU_ASSERT_EQUAL_FATAL(tls_server_conn_new(s, &pair_ops, &srv, &sst, &srv.tc), 0);
		CU_ASSERT_EQUAL(tls_conn_start(srv.tc), 0);
		CU_ASSERT_EQUAL(tls_conn_write(srv.tc, (const uint8_t *)"x", 1), -ENOTCONN);
		size_t n = 1 + (size_t)rand() % 3000;
		uint8_t *g = random_bytes(n);
		if (i == 0) {
			n = strlen(http);
			memcpy(g, http, n);
		} else if (i == 1) {
			n = strlen(smtp);
			memcpy(g, smtp, n);
		} else if (i % 2 == 0 && n > 5) {
			/* A plausible record header with nonsense inside. */
			g[0] = 0x16;
			g[1] = 3;
			g[2] = 1;
			g[3] = (uint8_t)((n - 5) >> 8);
			g[4] = (uint8_t)(n - 5);
		}
		ssize_t r = 0;
		for (size_t off = 0; off < n && r >= 0;) {
			r = tls_conn_input(srv.tc, g + off, n - off);
			if (r > 0)
				off += (size_t)r;
			else
				break;
		}
		CU_ASSERT(r < 0 || r == 0 || !tls_conn_handshake_done(srv.tc));
		if (r < 0) {
			CU_ASSERT_EQUAL(r, -EPROTO);
			CU_ASSERT_EQUAL(srv.errors, 1);
			CU_ASSERT(srv.error[0] != '\0');
			CU_ASSERT_EQUAL(sst.fail_protocol + sst.fail_version +
						sst.fail_no_shared_cipher,
					1);
		}
		if (i < 2) {
			CU_ASSERT_EQUAL(r, -EPROTO);
			CU_ASSERT_EQUAL(sst.fail_protocol, 1);
		}
		CU_ASSERT_FALSE(tls_conn_handshake_done(srv.tc));
		free(g);
	}
	pair_ep_reset(&srv);
	tls_server_ctx_free(s);
}

static void test_garbage_after_handshake(void)
{
	struct tls_server_ctx *s = make_server(CERT_EC, NULL);
	struct tls_client_ctx *c = make_client(NULL);

	for (int free_in_callback = 0; free_in_callback < 2; free_in_callback++) {
		reset_stats();
		connect_pair(s, c, TLS_POLICY_VERIFY, TLS_PKI_HOST, NULL);
		pair_pump(&srv, &cli, 0);
		CU_ASSERT_EQUAL(tls_conn_write(cli.tc, (const uint8_t *)"DATA\r\n", 6), 6);
		CU_ASSERT_FATAL(cli.wire.len - cli.wire.off > 10);
		cli.wire.data[cli.wire.len - 3] ^= 0x40; /* flip a bit in the tag */
		srv.free_on_error = free_in_callback;
		pair_pump(&srv, &cli, 0);
		CU_ASSERT_EQUAL(srv.errors, 1);
		CU_ASSERT_EQUAL(srv.rx.len, 0);
		CU_ASSERT_EQUAL(sst.fail_protocol, 1);
		CU_ASSERT_PTR_NOT_NULL(strstr(srv.error, "bad record mac"));
		if (free_in_callback) {
			/* Freed from inside on_error: deferred, nothing more is sent. */
			CU_ASSERT_PTR_NULL(srv.tc);
			CU_ASSERT_EQUAL(cli.errors, 0);
		} else {
			/* The server's alert reached the client. */
			CU_ASSERT_EQUAL(cli.errors, 1);
			CU_ASSERT_EQUAL(cst.fail_peer_alert, 1);
			CU_ASSERT_PTR_NOT_NULL(strstr(cli.error, "bad record mac"));
		}
	}
	done_pair();
	tls_client_ctx_free(c);
	tls_server_ctx_free(s);
}

static void test_garbage_client(void)
{
	struct tls_client_ctx *c = make_client(NULL);

	for (int i = 0; i < 20; i++) {
		reset_stats();
		pair_ep_reset(&cli);
		CU_ASSERT_EQUAL_FATAL(tls_client_conn_new(c, TLS_POLICY_OPPORTUNISTIC, "x.test", 25,
							  NULL, &pair_ops, &cli, &cst, &cli.tc),
				      0);
		CU_ASSERT_EQUAL(tls_conn_start(cli.tc), 0);
		size_t n = 1 + (size_t)rand() % 2000;
		uint8_t *g = random_bytes(n);
		g[0] = 0x16;
		ssize_t r = tls_conn_input(cli.tc, g, n);
		CU_ASSERT(r == -EPROTO || (r >= 0 && !tls_conn_handshake_done(cli.tc)));
		free(g);
	}
	pair_ep_reset(&cli);
	tls_client_ctx_free(c);
}

/* ---- negotiation failures ------------------------------------------------------------------- */

static void test_version_mismatch(void)
{
	struct tls_server_conf sc = {.max_version = TLS_VERSION_1_2};
	struct tls_server_ctx *s = make_server(CERT_EC, &sc);
	struct tls_client_conf cc = {.min_version = TLS_VERSION_1_3};
	struct tls_client_ctx *c = make_client(&cc);

	reset_stats();
	connect_pair(s, c, TLS_POLICY_VERIFY, TLS_PKI_HOST, NULL);
	pair_pump(&srv, &cli, 0);
	CU_ASSERT_EQUAL(srv.errors, 1);
	CU_ASSERT_EQUAL(sst.fail_version, 1);
	CU_ASSERT_EQUAL(cli.errors, 1);
	CU_ASSERT_EQUAL(cst.fail_peer_alert, 1);
	CU_ASSERT_PTR_NOT_NULL(strstr(cli.error, "protocol version"));
	done_pair();
	tls_client_ctx_free(c);
	tls_server_ctx_free(s);
}

static void test_no_shared_cipher(void)
{
	struct tls_server_conf sc = {.max_version = TLS_VERSION_1_2,
				     .ciphers = "ECDHE-ECDSA-AES128-GCM-SHA256"};
	struct tls_server_ctx *s = make_server(CERT_EC, &sc);
	struct tls_client_conf cc = {.max_version = TLS_VERSION_1_2,
				     .ciphers = "ECDHE-ECDSA-AES256-GCM-SHA384"};
	struct tls_client_ctx *c = make_client(&cc);

	reset_stats();
	connect_pair(s, c, TLS_POLICY_VERIFY, TLS_PKI_HOST, NULL);
	pair_pump(&srv, &cli, 0);
	CU_ASSERT_EQUAL(srv.errors, 1);
	CU_ASSERT_EQUAL(sst.fail_no_shared_cipher, 1);
	CU_ASSERT_EQUAL(cst.fail_peer_alert, 1);
	done_pair();
	tls_client_ctx_free(c);
	tls_server_ctx_free(s);
}

/* ---- API edges ---------------------------------------------------------------------------------
 */

static void test_api_errors(void)
{
	struct tls_server_conf sc = {0};
	struct tls_server_ctx *s = NULL;
	struct tls_client_ctx *c = make_client(NULL);
	struct tls_conn *tc = NULL;
	char err[256];
	enum tls_policy p;
	enum tls_version v;

	CU_ASSERT_EQUAL(tls_server_ctx_create(&sc, &s, err, sizeof(err)), -EINVAL);
	sc.cert_count = 1;
	sc.cert_file[0] = "/nonexistent/cert.pem";
	sc.key_file[0] = pki.ec_key;
	CU_ASSERT_EQUAL(tls_server_ctx_create(&sc, &s, err, sizeof(err)), -EINVAL);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "/nonexistent/cert.pem"));
	sc.cert_file[0] = pki.ec_crt;
	sc.key_file[0] = pki.rsa_key; /* wrong key for the certificate */
	CU_ASSERT_EQUAL(tls_server_ctx_create(&sc, &s, err, sizeof(err)), -EINVAL);
	CU_ASSERT(err[0] != '\0');
	sc.key_file[0] = pki.ec_key;
	sc.ciphers = "NO-SUCH-CIPHER";
	CU_ASSERT_EQUAL(tls_server_ctx_create(&sc, &s, err, sizeof(err)), -EINVAL);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "cipher"));
	sc.ciphers = NULL;
	sc.min_version = TLS_VERSION_1_3;
	sc.max_version = TLS_VERSION_1_2;
	CU_ASSERT_EQUAL(tls_server_ctx_create(&sc, &s, err, sizeof(err)), -EINVAL);
	CU_ASSERT_PTR_NULL(s);

	struct tls_client_conf cc = {.ca_file = "/nonexistent/ca.pem"};
	struct tls_client_ctx *c2 = NULL;
	CU_ASSERT_EQUAL(tls_client_ctx_create(&cc, &c2, err, sizeof(err)), -EINVAL);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "CA file"));

	CU_ASSERT_EQUAL(tls_client_conn_new(c, TLS_POLICY_NONE, "x.test", 25, NULL, &pair_ops, &cli,
					    &cst, &tc),
			-EINVAL);
	CU_ASSERT_EQUAL(
		tls_client_conn_new(c, TLS_POLICY_VERIFY, "", 25, NULL, &pair_ops, &cli, &cst, &tc),
		-EINVAL);
	char longname[400];
	memset(longname, 'a', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = '\0';
	CU_ASSERT_EQUAL(tls_client_conn_new(c, TLS_POLICY_VERIFY, longname, 25, NULL, &pair_ops,
					    &cli, &cst, &tc),
			-EINVAL);
	struct tls_conn_ops bad = {0};
	CU_ASSERT_EQUAL(tls_client_conn_new(c, TLS_POLICY_VERIFY, "x.test", 25, NULL, &bad, &cli,
					    &cst, &tc),
			-EINVAL);

	CU_ASSERT_EQUAL(tls_policy_parse("verify", &p), 0);
	CU_ASSERT_EQUAL(p, TLS_POLICY_VERIFY);
	CU_ASSERT_EQUAL(tls_policy_parse("opportunistic", &p), 0);
	CU_ASSERT_EQUAL(p, TLS_POLICY_OPPORTUNISTIC);
	CU_ASSERT_EQUAL(tls_policy_parse("none", &p), 0);
	CU_ASSERT_EQUAL(p, TLS_POLICY_NONE);
	CU_ASSERT_EQUAL(tls_policy_parse("Verify ", &p), -EINVAL);
	CU_ASSERT_STRING_EQUAL(tls_policy_name(TLS_POLICY_OPPORTUNISTIC), "opportunistic");
	CU_ASSERT_EQUAL(tls_version_parse("TLSv1.2", &v), 0);
	CU_ASSERT_EQUAL(v, TLS_VERSION_1_2);
	CU_ASSERT_EQUAL(tls_version_parse("1.3", &v), 0);
	CU_ASSERT_EQUAL(v, TLS_VERSION_1_3);
	CU_ASSERT_EQUAL(tls_version_parse("SSLv3", &v), -EINVAL);
	tls_client_ctx_free(c);
}

static void test_timeout(void)
{
	struct tls_server_ctx *s = make_server(CERT_EC, NULL);
	struct tls_client_ctx *c = make_client(NULL);

	reset_stats();
	connect_pair(s, c, TLS_POLICY_VERIFY, TLS_PKI_HOST, NULL);
	tls_conn_timed_out(srv.tc);
	CU_ASSERT_EQUAL(sst.fail_timeout, 1);
	CU_ASSERT_EQUAL(tls_conn_input(srv.tc, cli.wire.data, cli.wire.len), -EPROTO);
	CU_ASSERT_PTR_NOT_NULL(strstr(tls_conn_error(srv.tc), "timed out"));
	CU_ASSERT_FALSE(tls_conn_want_input(srv.tc));
	done_pair();
	tls_client_ctx_free(c);
	tls_server_ctx_free(s);
}

static CU_TestInfo tls_tests[] = {
	{"stale_error_queue", test_stale_error_queue},
	{"handshake TLS 1.3", test_handshake_tls13},
	{"handshake TLS 1.2", test_handshake_tls12},
	{"handshake 1 byte at a time", test_handshake_one_byte},
	{"default negotiates TLS 1.3", test_default_is_tls13},
	{"1 MiB both ways TLS 1.3", test_data_1mib_tls13},
	{"1 MiB both ways TLS 1.2", test_data_1mib_tls12},
	{"partial plaintext consumer", test_data_partial_consumer},
	{"data 1 byte at a time", test_data_one_byte},
	{"resumption TLS 1.3", test_resume_tls13},
	{"resumption TLS 1.2", test_resume_tls12},
	{"ticket key rotation", test_ticket_rotation},
	{"ticket key rotation on schedule", test_ticket_rotation_scheduled},
	{"tickets off", test_no_tickets},
	{"ticket keys per context", test_tickets_per_context},
	{"calls from inside callbacks", test_write_from_handshake_callback},
	{"writes from callbacks share a record", test_coalesce_callback_writes},
	{"session cache LRU and expiry", test_cache_lru_and_expiry},
	{"verify: wrong name", test_verify_wrong_name},
	{"verify: untrusted CA", test_verify_untrusted_ca},
	{"verify: IP literal", test_verify_ip_literal},
	{"cache: several TLS 1.3 tickets per destination", test_cache_tickets_per_destination},
	{"opportunistic ignores name and CA", test_opportunistic_ignores},
	{"ECDSA and RSA certificates", test_ecdsa_and_rsa},
	{"backpressure", test_backpressure},
	{"plaintext hold and resume", test_plaintext_hold},
	{"close_notify", test_close_notify},
	{"garbage to server", test_garbage_server},
	{"corrupted record after handshake", test_garbage_after_handshake},
	{"garbage to client", test_garbage_client},
	{"version mismatch", test_version_mismatch},
	{"no shared cipher", test_no_shared_cipher},
	{"API errors", test_api_errors},
	{"caller timeout", test_timeout},
	CU_TEST_INFO_NULL,
};

static CU_SuiteInfo suites[] = {
	{"tls", suite_init, suite_clean, NULL, NULL, tls_tests},
	CU_SUITE_INFO_NULL,
};

int main(void)
{
	int rc = mx_test_run(suites);

	done_pair();
	return rc;
}
