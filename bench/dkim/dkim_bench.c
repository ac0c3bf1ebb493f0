/*
 * dkim_bench - DKIM signing rate per core against the raw signature rate.
 *
 *   build/bench/dkim/dkim_bench [seconds-per-measurement (default 2)] [runs (default 3)]
 *                               [rsa|ed25519|all [1024|16384]]
 *
 * For rsa-sha256 (2048) and ed25519-sha256 and for 1 KiB and 16 KiB messages
 * (a device report: short single-spaced lines, relaxed/relaxed),
 * measures whole-message signing (begin, update in 1448-byte pieces as TCP
 * segments arrive, final) on one thread, and in the same run the raw rate of
 * one signature over 32 bytes with the same key (what `openssl speed`
 * measures), and the rate of SHA-256 over the message plus one raw signature
 * (the floor no signer can beat).  The three take turns in 20 slices per run.
 * Prints the median rates of the runs and the median of the per-run ratios,
 * and OpenSSL's allocations per signed message and per raw signature.
 * Rates are per second of this thread's CPU time (CLOCK_THREAD_CPUTIME_ID),
 * i.e. per core fully used, so other processes on the machine disturb them
 * less.  The optional filter picks rows (e.g. for perf record).  Not run by
 * tests.
 */
#include "dkim.h"
#include "dkim_canon.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#define SEGMENT 1448
#define SLICES 20 /* turns per run: signed, raw, floor, signed, ... */

/*
 * Allocations made by OpenSSL (CRYPTO_set_mem_functions, installed before
 * its first use): the signing path should make none of its own, so what is
 * left per message is what OpenSSL's sign call itself allocates (compare
 * with the raw signature).  lib/dkim makes no allocation after
 * dkim_signer_create().
 */
static unsigned long ossl_allocs;

static void *count_malloc(size_t n, const char *file, int line)
{
	(void)file;
	(void)line;
	ossl_allocs++;
	return malloc(n);
}

static void *count_realloc(void *p, size_t n, const char *file, int line)
{
	(void)file;
	(void)line;
	ossl_allocs++;
	return realloc(p, n);
}

static void count_free(void *p, const char *file, int line)
{
	(void)file;
	(void)line;
	free(p);
}

static double now_s(void)
{
	struct timespec ts;
	/* CPU time of this thread: a shared machine's other load does not count. */
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static char *make_message(size_t size, size_t *len)
{
	static const char hdr[] =
		"Received: from sensor-17.fleet.example ([10.77.3.17])\r\n"
		"\tby relay.fleet.example with ESMTP id 4F2A; Mon, 23 Nov 2026\r\n"
		"From: Sensor 17 <sensor17@fleet.example>\r\n"
		"To: ops@example.net\r\n"
		"Subject: Temperature alarm on line 4\r\n"
		"Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n"
		"Message-ID: <20261123100000.17.4711@fleet.example>\r\n"
		"MIME-Version: 1.0\r\n"
		"Content-Type: text/plain; charset=us-ascii\r\n"
		"\r\n";
	char *m = malloc(size + 128);
	size_t n = strlen(hdr);
	memcpy(m, hdr, n);
	unsigned line = 0;
	while (n + 80 < size)
		n += (size_t)sprintf(m + n,
				     "reading %06u: temp=21.5C hum=40%% status=ok battery=87%%\r\n",
				     line++);
	while (n + 2 < size)
		m[n++] = 'x';
	m[n++] = '\r';
	m[n++] = '\n';
	*len = n;
	return m;
}

/* Work done and thread CPU time spent, summed over the slices of one run. */
struct meas {
	unsigned long count;
	unsigned long allocs;
	double secs;
};

static double meas_rate(const struct meas *m)
{
	return (double)m->count / m->secs;
}

static void sign_slice(struct dkim_signer *s, const char *msg, size_t len, double secs,
		       struct meas *m)
{
	const char *hdr;
	size_t hl;
	unsigned long allocs0 = ossl_allocs;
	double start = now_s(), t;
	do {
		for (int k = 0; k < 16; k++) {
			dkim_sign_begin(s, 1795000000);
			for (size_t off = 0; off < len; off += SEGMENT)
				dkim_sign_update(s, msg + off,
						 len - off < SEGMENT ? len - off : SEGMENT);
			if (dkim_sign_final(s, &hdr, &hl) != 0) {
				fprintf(stderr, "sign failed: %s\n", dkim_signer_error(s));
				exit(1);
			}
			m->count++;
		}
		t = now_s() - start;
	} while (t < secs);
	m->secs += t;
	m->allocs += ossl_allocs - allocs0;
}

/*
 * One raw signature of a 32-byte digest, the cheapest way OpenSSL offers:
 * RSA PKCS#1 v1.5 through EVP_PKEY_sign on a context initialised once (what
 * `openssl speed rsa2048` and lib/dkim do), Ed25519 through EVP_DigestSign
 * on a reused context (`openssl speed ed25519`).
 */
struct raw_signer {
	EVP_PKEY_CTX *rsa;
	EVP_MD_CTX *ed;
};

static void raw_init(struct raw_signer *r, EVP_PKEY *pkey, bool is_rsa)
{
	memset(r, 0, sizeof(*r));
	if (is_rsa) {
		r->rsa = EVP_PKEY_CTX_new_from_pkey(NULL, pkey, NULL);
		if (!r->rsa || EVP_PKEY_sign_init(r->rsa) <= 0 ||
		    EVP_PKEY_CTX_set_rsa_padding(r->rsa, RSA_PKCS1_PADDING) <= 0 ||
		    EVP_PKEY_CTX_set_signature_md(r->rsa, EVP_sha256()) <= 0)
			exit(1);
	} else {
		r->ed = EVP_MD_CTX_new();
		if (!r->ed || EVP_DigestSignInit_ex(r->ed, NULL, NULL, NULL, NULL, pkey, NULL) <= 0)
			exit(1);
	}
}

static void raw_sign(struct raw_signer *r, const unsigned char *dig)
{
	unsigned char sig[1024];
	size_t sl = sizeof(sig);
	int ok = r->rsa ? EVP_PKEY_sign(r->rsa, sig, &sl, dig, 32)
			: EVP_DigestSign(r->ed, sig, &sl, dig, 32);
	if (ok != 1) {
		fprintf(stderr, "raw sign failed\n");
		exit(1);
	}
}

static void raw_free(struct raw_signer *r)
{
	EVP_PKEY_CTX_free(r->rsa);
	EVP_MD_CTX_free(r->ed);
}

/* Raw: one signature over 32 bytes per count. */
static void raw_slice(struct raw_signer *r, double secs, struct meas *m)
{
	unsigned char data[32] = {1, 2, 3};
	unsigned long allocs0 = ossl_allocs;
	double start = now_s(), t;
	do {
		for (int k = 0; k < 16; k++) {
			raw_sign(r, data);
			m->count++;
		}
		t = now_s() - start;
	} while (t < secs);
	m->secs += t;
	m->allocs += ossl_allocs - allocs0;
}

/*
 * The floor: SHA-256 over the whole message plus one raw signature, the work
 * no DKIM signer can avoid (canonicalisation and header work excluded).
 */
static void floor_slice(struct raw_signer *r, EVP_MD_CTX *md, const EVP_MD *sha, const char *msg,
			size_t len, double secs, struct meas *m)
{
	unsigned char dig[32];
	unsigned dl;
	double start = now_s(), t;
	do {
		for (int k = 0; k < 16; k++) {
			EVP_DigestInit_ex(md, sha, NULL);
			EVP_DigestUpdate(md, msg, len);
			EVP_DigestFinal_ex(md, dig, &dl);
			raw_sign(r, dig);
			m->count++;
		}
		t = now_s() - start;
	} while (t < secs);
	m->secs += t;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static EVP_PKEY *pkey_of(const char *path)
{
	FILE *fp = fopen(path, "r");
	EVP_PKEY *k = fp ? PEM_read_PrivateKey(fp, NULL, NULL, NULL) : NULL;
	if (fp)
		fclose(fp);
	return k;
}

static void null_sink(void *arg, const uint8_t *p, size_t n)
{
	/* keep the compiler from dropping the work */
	*(volatile uint8_t *)arg ^= n ? p[n - 1] : 0;
}

static void sha_sink(void *arg, const uint8_t *p, size_t n)
{
	EVP_DigestUpdate(arg, p, n);
}

/*
 * Nanoseconds per input byte of relaxed body canonicalisation alone (null
 * sink) and of canonicalisation plus SHA-256, fed in 1448-byte pieces.
 */
static void canon_cost(const char *name, const char *body, size_t len, EVP_MD *sha, double secs)
{
	struct dkim_body_canon c;
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	uint8_t sink_byte = 0, dig[32];
	double ns[2];
	for (int with_sha = 0; with_sha < 2; with_sha++) {
		unsigned long bytes = 0;
		double start = now_s(), t;
		do {
			for (int k = 0; k < 16; k++) {
				if (with_sha) {
					EVP_DigestInit_ex(md, sha, NULL);
					dkim_body_canon_init(&c, true, sha_sink, md);
				} else {
					dkim_body_canon_init(&c, true, null_sink, &sink_byte);
				}
				for (size_t off = 0; off < len; off += SEGMENT)
					dkim_body_canon_update(&c, (const uint8_t *)body + off,
							       len - off < SEGMENT ? len - off
										   : SEGMENT);
				dkim_body_canon_final(&c);
				if (with_sha)
					EVP_DigestFinal_ex(md, dig, NULL);
				bytes += len;
			}
			t = now_s() - start;
		} while (t < secs);
		ns[with_sha] = t * 1e9 / (double)bytes;
	}
	printf("relaxed body %-18s %6zuB  canon %.3f ns/B  canon+sha256 %.3f ns/B\n", name, len,
	       ns[0], ns[1]);
	EVP_MD_CTX_free(md);
}

/* A body whose every line has WSP runs, tabs and trailing WSP: the slow path's cost. */
static char *make_wsp_body(size_t size, size_t *len)
{
	char *m = malloc(size + 128);
	size_t n = 0;
	unsigned line = 0;
	while (n + 80 < size)
		n += (size_t)sprintf(m + n,
				     "reading  %06u:\ttemp = 21.5C   hum=40%%  status ok \t \r\n",
				     line++);
	*len = n;
	return m;
}

int main(int argc, char **argv)
{
	double secs = argc > 1 ? atof(argv[1]) : 2.0;
	int runs = argc > 2 ? atoi(argv[2]) : 3;
	/* Optional row filter, e.g. for `perf record`: one algorithm, one size. */
	const char *only_alg = argc > 3 && strcmp(argv[3], "all") != 0 ? argv[3] : NULL;
	size_t only_size = argc > 4 ? (size_t)atol(argv[4]) : 0;
	if (!CRYPTO_set_mem_functions(count_malloc, count_realloc, count_free)) {
		fprintf(stderr, "OpenSSL allocated before main: allocation counts unavailable\n");
		return 1;
	}
	if (secs <= 0 || runs < 1 || runs > 15) {
		fprintf(stderr, "usage: dkim_bench [seconds] [runs]\n");
		return 2;
	}
	char err[256], dir[] = "/tmp/dkim-bench-XXXXXX", path[2][64];
	if (!mkdtemp(dir))
		return 1;
	enum dkim_alg algs[2] = {DKIM_ALG_RSA_SHA256, DKIM_ALG_ED25519_SHA256};
	struct dkim_key *keys[2];
	for (int a = 0; a < 2; a++) {
		snprintf(path[a], sizeof(path[a]), "%s/k%d.pem", dir, a);
		if (dkim_key_generate(algs[a], 2048, &keys[a], err, sizeof(err)) ||
		    dkim_key_write_pem(keys[a], path[a], err, sizeof(err))) {
			fprintf(stderr, "%s\n", err);
			return 1;
		}
	}
	size_t sizes[2] = {1024, 16384};
	EVP_MD *sha = EVP_MD_fetch(NULL, "SHA256", NULL); /* pre-fetched, as lib/dkim does */
	if (!sha)
		return 1;
	printf("%-16s %6s %10s %11s %7s %11s %7s %13s\n", "algorithm", "size", "signed/s",
	       "raw sign/s", "ratio", "sha+sign/s", "ratio", "allocs/msg,sig");
	for (int a = 0; a < 2; a++) {
		if (only_alg &&
		    strcmp(only_alg, algs[a] == DKIM_ALG_RSA_SHA256 ? "rsa" : "ed25519") != 0)
			continue;
		EVP_PKEY *pk = pkey_of(path[a]);
		for (int z = 0; z < 2; z++) {
			if (only_size && only_size != sizes[z])
				continue;
			size_t len;
			char *msg = make_message(sizes[z], &len);
			struct dkim_signer_config c;
			struct dkim_signer *s;
			dkim_signer_config_init(&c);
			c.domain = "fleet.example";
			c.selector = "s1";
			if (algs[a] == DKIM_ALG_RSA_SHA256)
				c.rsa_key = keys[a];
			else
				c.ed25519_key = keys[a];
			if (dkim_signer_create(&c, &s, err, sizeof(err))) {
				fprintf(stderr, "%s\n", err);
				return 1;
			}
			double signed_r[15], raw_r[15], floor_r[15], ratio_raw[15], ratio_floor[15];
			double allocs_msg = 0, allocs_sig = 0;
			bool is_rsa = algs[a] == DKIM_ALG_RSA_SHA256;
			struct raw_signer raw;
			EVP_MD_CTX *md = EVP_MD_CTX_new();
			raw_init(&raw, pk, is_rsa);
			for (int r = 0; r < runs; r++) {
				/*
				 * The three measurements take turns in slices of 1/SLICES
				 * of the time, so that a disturbance from the rest of the
				 * machine falls on all three alike.
				 */
				struct meas ms = {0}, mr = {0}, mf = {0};
				for (int k = 0; k < SLICES; k++) {
					sign_slice(s, msg, len, secs / SLICES, &ms);
					raw_slice(&raw, secs / SLICES, &mr);
					floor_slice(&raw, md, sha, msg, len, secs / SLICES, &mf);
				}
				signed_r[r] = meas_rate(&ms);
				raw_r[r] = meas_rate(&mr);
				floor_r[r] = meas_rate(&mf);
				ratio_raw[r] = signed_r[r] / raw_r[r];
				ratio_floor[r] = signed_r[r] / floor_r[r];
				allocs_msg = (double)ms.allocs / (double)ms.count;
				allocs_sig = (double)mr.allocs / (double)mr.count;
			}
			raw_free(&raw);
			EVP_MD_CTX_free(md);
			qsort(signed_r, (size_t)runs, sizeof(double), cmp_double);
			qsort(raw_r, (size_t)runs, sizeof(double), cmp_double);
			qsort(floor_r, (size_t)runs, sizeof(double), cmp_double);
			qsort(ratio_raw, (size_t)runs, sizeof(double), cmp_double);
			qsort(ratio_floor, (size_t)runs, sizeof(double), cmp_double);
			double sm = signed_r[runs / 2], rm = raw_r[runs / 2],
			       fm = floor_r[runs / 2];
			printf("%-16s %5zuB %10.0f %11.0f %6.1f%% %11.0f %6.1f%% %6.1f,%6.1f\n",
			       is_rsa ? "rsa-sha256/2048" : "ed25519-sha256", len, sm, rm,
			       100.0 * ratio_raw[runs / 2], fm, 100.0 * ratio_floor[runs / 2],
			       allocs_msg, allocs_sig);
			fflush(stdout);
			dkim_signer_free(s);
			free(msg);
		}
		EVP_PKEY_free(pk);
	}
	printf("(median of %d runs of 3 x %.1f s of thread CPU time each, in %d alternating "
	       "slices; ratios: median of the runs' signed / raw and signed / (sha+sign); OpenSSL "
	       "allocations per signed message and per raw signature)\n",
	       runs, secs, SLICES);
	if (!only_alg && !only_size) {
		size_t len, wl;
		char *msg = make_message(16384, &len), *wsp = make_wsp_body(16384, &wl);
		const char *body = strstr(msg, "\r\n\r\n") + 4;
		canon_cost("device text", body, len - (size_t)(body - msg), sha, secs / 4);
		canon_cost("whitespace-heavy", wsp, wl, sha, secs / 4);
		free(msg);
		free(wsp);
	}
	EVP_MD_free(sha);
	for (int a = 0; a < 2; a++) {
		unlink(path[a]);
		dkim_key_free(keys[a]);
	}
	rmdir(dir);
	return 0;
}
