/*
 * tls_bench.c - lib/tls cost per core: full and resumed handshakes per
 * second, and bulk throughput with 1 KiB records.
 *
 * Server and client tls_conns run in this one thread, wired back to back
 * through two byte buffers (no TCP).  All rates are per CPU-second of this
 * thread (CLOCK_THREAD_CPUTIME_ID), so a busy shared machine does not
 * distort them: the pair rate is what one core does playing both sides;
 * each side's CPU is also measured around its own calls, so "server side
 * alone" is what one core would do as a server only.  Each figure is the
 * median of --rounds runs of --seconds CPU-seconds.
 *
 *   tls_bench [--seconds S] [--rounds N] [--cert ec|rsa] [--tls 1.2|1.3]
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tls.h"
#include "tls_pki.h"

struct side {
	struct tls_conn *tc;
	uint8_t *out; /* ciphertext produced, to give to the other side */
	size_t out_len, out_cap;
	uint64_t cpu_ns;
	bool done, failed;
	char error[200];
};

static size_t on_ciphertext(void *user, const uint8_t *data, size_t len)
{
	struct side *s = user;

	if (s->out_len + len > s->out_cap) {
		size_t cap = s->out_cap ? s->out_cap : 65536;
		while (cap < s->out_len + len)
			cap *= 2;
		s->out = realloc(s->out, cap);
		if (s->out == NULL)
			abort();
		s->out_cap = cap;
	}
	memcpy(s->out + s->out_len, data, len);
	s->out_len += len;
	return len;
}

static size_t on_plaintext(void *user, const uint8_t *data, size_t len)
{
	(void)user;
	(void)data;
	return len;
}

static void on_done(void *user, const struct tls_handshake_info *info)
{
	(void)info;
	((struct side *)user)->done = true;
}

static void on_error(void *user, const char *reason)
{
	struct side *s = user;

	s->failed = true;
	snprintf(s->error, sizeof(s->error), "%s", reason);
}

static const struct tls_conn_ops ops = {.on_ciphertext = on_ciphertext,
					.on_plaintext = on_plaintext,
					.on_handshake_done = on_done,
					.on_error = on_error};

static uint64_t cpu_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Give from->out to to->tc, charging to's CPU. */
static void deliver(struct side *from, struct side *to)
{
	if (from->out_len == 0 || to->tc == NULL)
		return;
	uint64_t t0 = cpu_ns();
	ssize_t r = tls_conn_input(to->tc, from->out, from->out_len);
	to->cpu_ns += cpu_ns() - t0;
	if (r < 0 || (size_t)r != from->out_len) {
		if (!to->failed)
			snprintf(to->error, sizeof(to->error), "input took %zd of %zu", r,
				 from->out_len);
		to->failed = true;
	}
	from->out_len = 0;
}

static struct tls_server_ctx *sctx;
static struct tls_client_ctx *cctx;
static struct tls_stats sst, cst;

/* One connection, handshake to the end (tickets included).  0 or -1. */
static int one_handshake(struct side *srv, struct side *cli, struct tls_session_cache *cache,
			 bool keep)
{
	uint64_t t0;

	srv->done = cli->done = false;
	t0 = cpu_ns();
	if (tls_server_conn_new(sctx, &ops, srv, &sst, &srv->tc) != 0)
		return -1;
	srv->cpu_ns += cpu_ns() - t0;
	t0 = cpu_ns();
	if (tls_client_conn_new(cctx, TLS_POLICY_VERIFY, TLS_PKI_HOST, 25, cache, &ops, cli, &cst,
				&cli->tc) != 0)
		return -1;
	tls_conn_start(cli->tc);
	cli->cpu_ns += cpu_ns() - t0;
	for (int i = 0; i < 20 && (cli->out_len || srv->out_len); i++) {
		deliver(cli, srv);
		deliver(srv, cli);
	}
	int rc = srv->done && cli->done && !srv->failed && !cli->failed ? 0 : -1;
	if (rc < 0)
		fprintf(stderr, "handshake failed: server '%s' client '%s'\n", srv->error,
			cli->error);
	if (!keep) {
		t0 = cpu_ns();
		tls_conn_free(srv->tc);
		srv->cpu_ns += cpu_ns() - t0;
		t0 = cpu_ns();
		tls_conn_free(cli->tc);
		cli->cpu_ns += cpu_ns() - t0;
		srv->tc = cli->tc = NULL;
	}
	return rc;
}

struct result {
	double pair_rate, server_rate, client_rate;
};

static int handshakes(double seconds, bool resumed, struct result *res)
{
	struct side srv = {0}, cli = {0};
	struct tls_session_cache *cache = NULL;
	uint64_t n = 0;
	double el;

	if (resumed) {
		if (tls_session_cache_create(16, &cache) != 0 ||
		    one_handshake(&srv, &cli, cache, false) != 0)
			return -1;
		srv.cpu_ns = cli.cpu_ns = 0;
	}
	uint64_t resumed0 = cst.client_handshakes_resumed;
	uint64_t c0 = cpu_ns();
	do {
		for (int i = 0; i < 20; i++, n++)
			if (one_handshake(&srv, &cli, cache, false) != 0)
				return -1;
		el = (double)(cpu_ns() - c0) / 1e9;
	} while (el < seconds);
	if (resumed && cst.client_handshakes_resumed - resumed0 != n) {
		fprintf(stderr, "only %llu of %llu resumed\n",
			(unsigned long long)(cst.client_handshakes_resumed - resumed0),
			(unsigned long long)n);
		return -1;
	}
	res->pair_rate = (double)n / el;
	res->server_rate = (double)n / ((double)srv.cpu_ns / 1e9);
	res->client_rate = (double)n / ((double)cli.cpu_ns / 1e9);
	tls_session_cache_free(cache);
	free(srv.out);
	free(cli.out);
	return 0;
}

/* Client writes 1 KiB records, server decrypts; rates in MB/s (1e6). */
static int throughput(double seconds, struct result *res, char *cipher, size_t cipherlen)
{
	struct side srv = {0}, cli = {0};
	static uint8_t rec[1024];
	uint64_t bytes = 0;
	double el;

	memset(rec, 'x', sizeof(rec));
	if (one_handshake(&srv, &cli, NULL, true) != 0)
		return -1;
	snprintf(cipher, cipherlen, "%s %s", tls_conn_version(cli.tc), tls_conn_cipher(cli.tc));
	srv.cpu_ns = cli.cpu_ns = 0;
	uint64_t start = cpu_ns();
	do {
		uint64_t c0 = cpu_ns();
		for (int i = 0; i < 64; i++) {
			if (tls_conn_write(cli.tc, rec, sizeof(rec)) != (ssize_t)sizeof(rec))
				return -1;
		}
		cli.cpu_ns += cpu_ns() - c0;
		deliver(&cli, &srv);
		if (srv.failed)
			return -1;
		bytes += 64 * sizeof(rec);
		el = (double)(cpu_ns() - start) / 1e9;
	} while (el < seconds);
	res->pair_rate = (double)bytes / el / 1e6;
	res->server_rate = (double)bytes / ((double)srv.cpu_ns / 1e9) / 1e6;
	res->client_rate = (double)bytes / ((double)cli.cpu_ns / 1e9) / 1e6;
	tls_conn_free(srv.tc);
	tls_conn_free(cli.tc);
	free(srv.out);
	free(cli.out);
	return 0;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

static struct result median(struct result *r, int n)
{
	double v[3][16];
	struct result m;

	for (int i = 0; i < n; i++) {
		v[0][i] = r[i].pair_rate;
		v[1][i] = r[i].server_rate;
		v[2][i] = r[i].client_rate;
	}
	for (int k = 0; k < 3; k++)
		qsort(v[k], (size_t)n, sizeof(double), cmp_double);
	m.pair_rate = v[0][n / 2];
	m.server_rate = v[1][n / 2];
	m.client_rate = v[2][n / 2];
	return m;
}

int main(int argc, char **argv)
{
	double seconds = 2;
	int rounds = 3;
	const char *cert = "ec", *ver = "1.3";
	struct tls_pki pki;
	char err[256], cipher[128] = "";
	struct result r[16], m;

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc)
			seconds = atof(argv[++i]);
		else if (strcmp(argv[i], "--rounds") == 0 && i + 1 < argc)
			rounds = atoi(argv[++i]);
		else if (strcmp(argv[i], "--cert") == 0 && i + 1 < argc)
			cert = argv[++i];
		else if (strcmp(argv[i], "--tls") == 0 && i + 1 < argc)
			ver = argv[++i];
		else {
			fprintf(stderr,
				"usage: %s [--seconds S] [--rounds N] [--cert ec|rsa] "
				"[--tls 1.2|1.3]\n",
				argv[0]);
			return 2;
		}
	}
	if (rounds < 1 || rounds > 16 || seconds <= 0)
		return 2;
	enum tls_version v;
	if (tls_version_parse(ver, &v) != 0)
		return 2;
	if (tls_pki_create(&pki) != 0)
		return 1;
	bool rsa = strcmp(cert, "rsa") == 0;
	struct tls_server_conf sc = {.cert_count = 1,
				     .cert_file = {rsa ? pki.rsa_crt : pki.ec_crt},
				     .key_file = {rsa ? pki.rsa_key : pki.ec_key}};
	struct tls_client_conf cc = {.ca_file = pki.ca, .min_version = v, .max_version = v};
	if (tls_server_ctx_create(&sc, &sctx, err, sizeof(err)) != 0 ||
	    tls_client_ctx_create(&cc, &cctx, err, sizeof(err)) != 0) {
		fprintf(stderr, "%s\n", err);
		return 1;
	}
	tls_pki_destroy(&pki);
	printf("tls_bench: TLSv%s, %s certificate, %d rounds of %.1f CPU-s, median shown\n", ver,
	       rsa ? "RSA-2048" : "ECDSA P-256", rounds, seconds);

	for (int pass = 0; pass < 2; pass++) {
		for (int i = 0; i < rounds; i++)
			if (handshakes(seconds, pass == 1, &r[i]) != 0)
				return 1;
		m = median(r, rounds);
		printf("%-8s handshakes: %8.0f pairs/s on one core; server side alone %8.0f/s "
		       "(%.0f%% of the pair's CPU), client side alone %8.0f/s\n",
		       pass ? "resumed" : "full", m.pair_rate, m.server_rate,
		       100.0 * m.pair_rate / m.server_rate, m.client_rate);
	}
	for (int i = 0; i < rounds; i++)
		if (throughput(seconds, &r[i], cipher, sizeof(cipher)) != 0)
			return 1;
	m = median(r, rounds);
	printf("1 KiB records (%s): %.0f MB/s encrypt+decrypt on one core; encrypt side "
	       "%.0f MB/s, decrypt side %.0f MB/s\n",
	       cipher, m.pair_rate, m.client_rate, m.server_rate);
	tls_server_ctx_free(sctx);
	tls_client_ctx_free(cctx);
	return 0;
}
