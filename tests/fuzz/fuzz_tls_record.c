/*
 * fuzz_tls_record.c - libFuzzer target for lib/tls's input path: hostile
 * bytes from the network fed to tls_conn_input() of a fresh server
 * connection (first input byte even) or of a client connection that has
 * just sent its ClientHello (first byte odd).  The second byte sets the
 * chunk size the bytes are offered in (0 = all at once), so partial records
 * and the "bytes taken" accounting are exercised too.  Any crash, leak or
 * out-of-bounds access is a bug; errors are the expected outcome.
 *
 * Seeds: tests/fuzz/seeds/tls_record/ (a real ClientHello for the server
 * side, a real server flight for the client side).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tls.h"
#include "tls_pki.h"

static struct tls_server_ctx *server_ctx;
static struct tls_client_ctx *client_ctx;
static struct tls_stats stats;

static size_t sink(void *user, const uint8_t *data, size_t len)
{
	(void)user;
	(void)data;
	return len;
}

static size_t take(void *user, const uint8_t *data, size_t len)
{
	(void)user;
	(void)data;
	return len;
}

static const struct tls_conn_ops ops = {.on_ciphertext = sink, .on_plaintext = take};

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	struct tls_pki pki;
	char err[256];

	(void)argc;
	(void)argv;
	if (tls_pki_create(&pki) != 0)
		abort();
	struct tls_server_conf sc = {.cert_count = 2,
				     .cert_file = {pki.ec_crt, pki.rsa_crt},
				     .key_file = {pki.ec_key, pki.rsa_key}};
	struct tls_client_conf cc = {.ca_file = pki.ca};
	if (tls_server_ctx_create(&sc, &server_ctx, err, sizeof(err)) != 0 ||
	    tls_client_ctx_create(&cc, &client_ctx, err, sizeof(err)) != 0) {
		fprintf(stderr, "fuzz_tls_record: %s\n", err);
		abort();
	}
	tls_pki_destroy(&pki); /* the contexts hold what they loaded */
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct tls_conn *tc = NULL;
	size_t chunk, off = 0;

	if (size < 2)
		return 0;
	if (data[0] & 1) {
		if (tls_client_conn_new(client_ctx,
					(data[0] & 2) ? TLS_POLICY_VERIFY
						      : TLS_POLICY_OPPORTUNISTIC,
					"mx.test.example", 25, NULL, &ops, NULL, &stats, &tc) != 0)
			abort();
		tls_conn_start(tc);
	} else if (tls_server_conn_new(server_ctx, &ops, NULL, &stats, &tc) != 0) {
		abort();
	}
	chunk = data[1] ? data[1] : size;
	data += 2;
	size -= 2;
	while (off < size) {
		size_t n = size - off < chunk ? size - off : chunk;
		ssize_t r = tls_conn_input(tc, data + off, n);

		if (r < 0)
			break;
		if ((size_t)r > n)
			abort(); /* took more than offered */
		if (r == 0)
			break;
		off += (size_t)r;
	}
	tls_conn_free(tc);
	return 0;
}
