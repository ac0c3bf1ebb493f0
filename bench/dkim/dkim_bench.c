/*
 * dkim_bench - DKIM signing rate per core against the raw signature rate.
 *
 *   build/bench/dkim/dkim_bench [seconds-per-measurement (default 2)] [runs (default 3)]
 *
 * For rsa-sha256 (2048) and ed25519-sha256 and for 1 KiB and 16 KiB messages
 * (a device report: short single-spaced lines, relaxed/relaxed),
 * measures whole-message signing (begin, update in 1448-byte pieces as TCP
 * segments arrive, final) on one thread, and in the same run the raw rate of
 * EVP_DigestSign over 32 bytes with the same key (what `openssl speed`
 * measures), and the rate of SHA-256 over the message plus one raw signature
 * (the floor no signer can beat).  Prints the median of the runs and ratios.
 * Rates are per second of this thread's CPU time (CLOCK_THREAD_CPUTIME_ID),
 * i.e. per core fully used, so other processes on the machine disturb them
 * less.  Not run by tests.
 */
#include "dkim.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>

#define SEGMENT 1448

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

static double sign_rate(struct dkim_signer *s, const char *msg, size_t len, double secs)
{
	const char *hdr;
	size_t hl;
	unsigned long count = 0;
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
			count++;
		}
		t = now_s() - start;
	} while (t < secs);
	return (double)count / t;
}

/* Raw: EVP_DigestSign on 32 bytes, as `openssl speed rsa2048` / `ed25519`. */
static double raw_rate(EVP_PKEY *pkey, bool is_rsa, double secs)
{
	unsigned char data[32] = {1, 2, 3}, sig[1024];
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	unsigned long count = 0;
	double start = now_s(), t;
	if (!is_rsa)
		EVP_DigestSignInit_ex(ctx, NULL, NULL, NULL, NULL, pkey, NULL);
	do {
		for (int k = 0; k < 16; k++) {
			size_t sl = sizeof(sig);
			if (is_rsa)
				EVP_DigestSignInit_ex(ctx, NULL, "SHA256", NULL, NULL, pkey, NULL);
			if (EVP_DigestSign(ctx, sig, &sl, data, sizeof(data)) != 1) {
				fprintf(stderr, "raw sign failed\n");
				exit(1);
			}
			count++;
		}
		t = now_s() - start;
	} while (t < secs);
	EVP_MD_CTX_free(ctx);
	return (double)count / t;
}

/*
 * The floor: SHA-256 over the whole message plus one raw signature, the work
 * no DKIM signer can avoid (canonicalisation and header work excluded).
 */
static double floor_rate(EVP_PKEY *pkey, bool is_rsa, const char *msg, size_t len, double secs)
{
	unsigned char dig[32], sig[1024];
	unsigned dl;
	EVP_MD_CTX *md = EVP_MD_CTX_new(), *ctx = EVP_MD_CTX_new();
	const EVP_MD *sha = EVP_sha256();
	unsigned long count = 0;
	double start = now_s(), t;
	if (!is_rsa)
		EVP_DigestSignInit_ex(ctx, NULL, NULL, NULL, NULL, pkey, NULL);
	do {
		for (int k = 0; k < 16; k++) {
			size_t sl = sizeof(sig);
			EVP_DigestInit_ex(md, sha, NULL);
			EVP_DigestUpdate(md, msg, len);
			EVP_DigestFinal_ex(md, dig, &dl);
			if (is_rsa)
				EVP_DigestSignInit_ex(ctx, NULL, "SHA256", NULL, NULL, pkey, NULL);
			if (EVP_DigestSign(ctx, sig, &sl, dig, sizeof(dig)) != 1)
				exit(1);
			count++;
		}
		t = now_s() - start;
	} while (t < secs);
	EVP_MD_CTX_free(md);
	EVP_MD_CTX_free(ctx);
	return (double)count / t;
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

int main(int argc, char **argv)
{
	double secs = argc > 1 ? atof(argv[1]) : 2.0;
	int runs = argc > 2 ? atoi(argv[2]) : 3;
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
	printf("%-16s %6s %10s %11s %7s %11s %7s\n", "algorithm", "size", "signed/s", "raw sign/s",
	       "ratio", "sha+sign/s", "ratio");
	for (int a = 0; a < 2; a++) {
		EVP_PKEY *pk = pkey_of(path[a]);
		for (int z = 0; z < 2; z++) {
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
			double signed_r[15], raw_r[15], floor_r[15];
			bool is_rsa = algs[a] == DKIM_ALG_RSA_SHA256;
			for (int r = 0; r < runs; r++) {
				signed_r[r] = sign_rate(s, msg, len, secs);
				raw_r[r] = raw_rate(pk, is_rsa, secs);
				floor_r[r] = floor_rate(pk, is_rsa, msg, len, secs);
			}
			qsort(signed_r, (size_t)runs, sizeof(double), cmp_double);
			qsort(raw_r, (size_t)runs, sizeof(double), cmp_double);
			qsort(floor_r, (size_t)runs, sizeof(double), cmp_double);
			double sm = signed_r[runs / 2], rm = raw_r[runs / 2],
			       fm = floor_r[runs / 2];
			printf("%-16s %5zuB %10.0f %11.0f %6.1f%% %11.0f %6.1f%%\n",
			       is_rsa ? "rsa-sha256/2048" : "ed25519-sha256", len, sm, rm,
			       100.0 * sm / rm, fm, 100.0 * sm / fm);
			fflush(stdout);
			dkim_signer_free(s);
			free(msg);
		}
		EVP_PKEY_free(pk);
	}
	printf("(median of %d runs of %.1f s of thread CPU time each; ratios: signed / raw, signed "
	       "/ (sha+sign))\n",
	       runs, secs);
	for (int a = 0; a < 2; a++) {
		unlink(path[a]);
		dkim_key_free(keys[a]);
	}
	rmdir(dir);
	return 0;
}
