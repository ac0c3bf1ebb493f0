/*
 * mxdkim - DKIM key and DNS record helper, and a command-line signer.
 *
 *   mxdkim genkey --algorithm rsa-sha256|ed25519-sha256 [--bits N] --out FILE
 *   mxdkim txt --key FILE --selector S --domain D
 *	prints "S._domainkey.D. IN TXT "v=DKIM1; k=...; p=..."" in strings of
 *	at most 255 bytes (RFC 1035 3.3.14 character-string limit)
 *   mxdkim sign --key FILE [--key FILE2] --selector S [--selector S2] --domain D
 *	[--algorithm rsa-sha256|ed25519-sha256] [--canon relaxed/relaxed]
 *	[--time T] [--expire SECONDS] [--length] [--headers From:To:...]
 *	[--no-oversign] < message > signed
 *	Two --key options (one RSA, one Ed25519) sign twice; the n-th
 *	--selector goes with the n-th --key (one selector serves both).  Bare LF line
 *	ends in the input are turned into CRLF, and the output uses CRLF.
 *
 *   mxdkim check --config FILE [--resolver IP[:PORT]] [--relay-ip IP] DOMAIN
 *	checks DOMAIN's published DKIM, SPF and DMARC records against the
 *	relay's configuration (check.c); one OK/WARN/FAIL line per finding.
 *
 * Exit status: 0 ok, 1 signing or key error or a FAIL finding (message on
 * stderr), 2 usage.
 */
#include "check.h"
#include "dkim.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_INPUT (256u * 1024 * 1024)

static void usage(void)
{
	fprintf(stderr,
		"usage: mxdkim genkey --algorithm rsa-sha256|ed25519-sha256 [--bits N] --out FILE\n"
		"       mxdkim txt --key FILE --selector S --domain D\n"
		"       mxdkim sign --key FILE [--key FILE] --selector S [--selector S] --domain "
		"D\n"
		"              [--algorithm A] [--canon H/B] [--time T] [--expire S] [--length]\n"
		"              [--headers From:To:...] [--no-oversign] < message > signed\n"
		"       mxdkim check --config FILE [--resolver IP[:PORT]] [--relay-ip IP] "
		"DOMAIN\n");
	exit(2);
}

static int parse_alg(const char *s, enum dkim_alg *out)
{
	if (strcmp(s, "rsa-sha256") == 0 || strcmp(s, "rsa") == 0)
		*out = DKIM_ALG_RSA_SHA256;
	else if (strcmp(s, "ed25519-sha256") == 0 || strcmp(s, "ed25519") == 0)
		*out = DKIM_ALG_ED25519_SHA256;
	else
		return -EINVAL;
	return 0;
}

static int parse_canon1(const char *s, size_t n, enum dkim_canon *out)
{
	if (n == 7 && strncmp(s, "relaxed", 7) == 0)
		*out = DKIM_CANON_RELAXED;
	else if (n == 6 && strncmp(s, "simple", 6) == 0)
		*out = DKIM_CANON_SIMPLE;
	else
		return -EINVAL;
	return 0;
}

/* "h/b" or "h" (body then simple, RFC 6376 3.5 c= default). */
static int parse_canon(const char *s, enum dkim_canon *h, enum dkim_canon *b)
{
	const char *slash = strchr(s, '/');
	if (!slash) {
		*b = DKIM_CANON_SIMPLE;
		return parse_canon1(s, strlen(s), h);
	}
	if (parse_canon1(s, (size_t)(slash - s), h) < 0)
		return -EINVAL;
	return parse_canon1(slash + 1, strlen(slash + 1), b);
}

static char *read_all(FILE *fp, size_t *len)
{
	size_t cap = 65536, n = 0;
	char *buf = malloc(cap);
	while (buf) {
		size_t got = fread(buf + n, 1, cap - n, fp);
		n += got;
		if (n < cap) {
			if (ferror(fp)) {
				free(buf);
				return NULL;
			}
			break;
		}
		if (cap >= MAX_INPUT) {
			free(buf);
			return NULL;
		}
		char *nb = realloc(buf, cap * 2);
		if (!nb)
			free(buf);
		buf = nb;
		cap *= 2;
	}
	*len = n;
	return buf;
}

/* Bare LF to CRLF, so that files edited on Unix sign as they will travel. */
static char *to_crlf(const char *in, size_t len, size_t *out_len)
{
	size_t extra = 0;
	for (size_t i = 0; i < len; i++)
		extra += in[i] == '\n' && (i == 0 || in[i - 1] != '\r');
	char *out = malloc(len + extra + 1);
	if (!out)
		return NULL;
	size_t o = 0;
	for (size_t i = 0; i < len; i++) {
		if (in[i] == '\n' && (i == 0 || in[i - 1] != '\r'))
			out[o++] = '\r';
		out[o++] = in[i];
	}
	*out_len = o;
	return out;
}

static int cmd_genkey(const char *alg_s, unsigned bits, const char *out)
{
	enum dkim_alg alg = DKIM_ALG_ANY;
	char err[512];
	struct dkim_key *key;
	if (!alg_s || !out || parse_alg(alg_s, &alg) < 0)
		usage();
	int rc = dkim_key_generate(alg, bits, &key, err, sizeof(err));
	if (rc == 0) {
		rc = dkim_key_write_pem(key, out, err, sizeof(err));
		dkim_key_free(key);
	}
	if (rc) {
		fprintf(stderr, "mxdkim: %s\n", err);
		return 1;
	}
	return 0;
}

static int cmd_txt(const char *key_path, const char *selector, const char *domain)
{
	char err[512], rec[2048];
	struct dkim_key *key;
	if (!key_path || !selector || !domain)
		usage();
	if (dkim_key_load(key_path, DKIM_ALG_ANY, &key, err, sizeof(err))) {
		fprintf(stderr, "mxdkim: %s\n", err);
		return 1;
	}
	int n = dkim_key_txt_record(key, rec, sizeof(rec));
	dkim_key_free(key);
	if (n < 0) {
		fprintf(stderr, "mxdkim: cannot encode the public key\n");
		return 1;
	}
	printf("%s._domainkey.%s. IN TXT", selector, domain);
	for (int off = 0; off < n; off += 255)
		printf(" \"%.*s\"", n - off < 255 ? n - off : 255, rec + off);
	printf("\n");
	return 0;
}

struct sign_opts {
	const char *keys[2];
	int key_count;
	const char *selectors[2];
	int selector_count;
	const char *selector, *domain, *alg, *canon, *headers;
	long long t;
	unsigned expire;
	bool length, no_oversign;
};

static int cmd_sign(struct sign_opts *o)
{
	char err[512];
	struct dkim_key *keys[2] = {NULL, NULL};
	struct dkim_signer_config c;
	const char *names[DKIM_MAX_CONFIG_HEADERS];
	char *hcopy = NULL;
	int ret = 1;
	if (o->key_count == 0 || !o->selector || !o->domain)
		usage();
	dkim_signer_config_init(&c);
	c.domain = o->domain;
	c.selector = o->selector;
	c.ed25519_selector = NULL;
	c.expire_after_s = o->expire;
	c.body_length_tag = o->length;
	c.oversign_from = !o->no_oversign;
	if (o->canon && parse_canon(o->canon, &c.header_canon, &c.body_canon) < 0) {
		fprintf(stderr, "mxdkim: bad --canon '%s'\n", o->canon);
		return 2;
	}
	enum dkim_alg want = DKIM_ALG_ANY;
	if (o->alg && parse_alg(o->alg, &want) < 0) {
		fprintf(stderr, "mxdkim: bad --algorithm '%s'\n", o->alg);
		return 2;
	}
	if (o->headers) {
		hcopy = strdup(o->headers);
		size_t n = 0;
		for (char *save, *tok = strtok_r(hcopy, ":", &save); tok;
		     tok = strtok_r(NULL, ":", &save)) {
			if (n == DKIM_MAX_CONFIG_HEADERS) {
				fprintf(stderr, "mxdkim: too many --headers\n");
				goto out;
			}
			names[n++] = tok;
		}
		c.headers = names;
		c.header_count = n;
	}
	for (int i = 0; i < o->key_count; i++) {
		enum dkim_alg expect = o->key_count == 1 ? want : DKIM_ALG_ANY;
		if (dkim_key_load(o->keys[i], expect, &keys[i], err, sizeof(err))) {
			fprintf(stderr, "mxdkim: %s\n", err);
			goto out;
		}
		struct dkim_key **slot =
			dkim_key_alg(keys[i]) == DKIM_ALG_RSA_SHA256 ? &c.rsa_key : &c.ed25519_key;
		if (*slot) {
			fprintf(stderr, "mxdkim: two keys of the same type\n");
			goto out;
		}
		*slot = keys[i];
		const char *sel = o->selectors[i < o->selector_count ? i : 0];
		if (slot == &c.rsa_key)
			c.selector = sel;
		else
			c.ed25519_selector = sel;
	}
	struct dkim_signer *s;
	if (dkim_signer_create(&c, &s, err, sizeof(err))) {
		fprintf(stderr, "mxdkim: %s\n", err);
		goto out;
	}
	size_t raw_len, len;
	char *raw = read_all(stdin, &raw_len);
	char *msg = raw ? to_crlf(raw, raw_len, &len) : NULL;
	free(raw);
	if (!msg) {
		fprintf(stderr, "mxdkim: cannot read the message (or larger than %u bytes)\n",
			MAX_INPUT);
		dkim_signer_free(s);
		goto out;
	}
	const char *hdr;
	size_t hdr_len;
	int rc = dkim_sign_begin(s, o->t >= 0 ? o->t : (long long)time(NULL));
	if (rc == 0)
		rc = dkim_sign_update(s, msg, len);
	if (rc == 0)
		rc = dkim_sign_final(s, &hdr, &hdr_len);
	if (rc) {
		fprintf(stderr, "mxdkim: cannot sign: %s\n", dkim_signer_error(s));
	} else if (fwrite(hdr, 1, hdr_len, stdout) != hdr_len ||
		   fwrite(msg, 1, len, stdout) != len || fflush(stdout) != 0) {
		fprintf(stderr, "mxdkim: write error\n");
	} else {
		ret = 0;
	}
	free(msg);
	dkim_signer_free(s);
out:
	dkim_key_free(keys[0]);
	dkim_key_free(keys[1]);
	free(hcopy);
	return ret;
}

int main(int argc, char **argv)
{
	static const struct option lopts[] = {
		{"key", required_argument, NULL, 'k'},
		{"selector", required_argument, NULL, 's'},
		{"domain", required_argument, NULL, 'd'},
		{"algorithm", required_argument, NULL, 'a'},
		{"canon", required_argument, NULL, 'c'},
		{"bits", required_argument, NULL, 'b'},
		{"out", required_argument, NULL, 'o'},
		{"time", required_argument, NULL, 't'},
		{"expire", required_argument, NULL, 'x'},
		{"length", no_argument, NULL, 'l'},
		{"headers", required_argument, NULL, 'H'},
		{"no-oversign", no_argument, NULL, 'N'},
		{"config", required_argument, NULL, 'C'},
		{"resolver", required_argument, NULL, 'R'},
		{"relay-ip", required_argument, NULL, 'I'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	if (argc < 2)
		usage();
	const char *cmd = argv[1];
	struct sign_opts o = {.t = -1};
	unsigned bits = 0;
	const char *out = NULL, *config = NULL, *resolver = NULL, *relay_ip = NULL;
	char *end;
	int ch;
	optind = 2;
	while ((ch = getopt_long(argc, argv, "", lopts, NULL)) != -1) {
		switch (ch) {
		case 'k':
			if (o.key_count == 2)
				usage();
			o.keys[o.key_count++] = optarg;
			break;
		case 's':
			if (o.selector_count == 2)
				usage();
			o.selectors[o.selector_count++] = optarg;
			o.selector = o.selectors[0];
			break;
		case 'd':
			o.domain = optarg;
			break;
		case 'a':
			o.alg = optarg;
			break;
		case 'c':
			o.canon = optarg;
			break;
		case 'b':
			bits = (unsigned)strtoul(optarg, &end, 10);
			if (*end)
				usage();
			break;
		case 'o':
			out = optarg;
			break;
		case 't':
			o.t = strtoll(optarg, &end, 10);
			if (*end || o.t < 0)
				usage();
			break;
		case 'x':
			o.expire = (unsigned)strtoul(optarg, &end, 10);
			if (*end)
				usage();
			break;
		case 'l':
			o.length = true;
			break;
		case 'H':
			o.headers = optarg;
			break;
		case 'N':
			o.no_oversign = true;
			break;
		case 'C':
			config = optarg;
			break;
		case 'R':
			resolver = optarg;
			break;
		case 'I':
			relay_ip = optarg;
			break;
		default:
			usage();
		}
	}
	if (strcmp(cmd, "check") == 0) {
		if (!config || optind + 1 != argc)
			usage();
		return mxdkim_check(config, resolver, relay_ip, argv[optind]);
	}
	if (optind != argc)
		usage();
	if (strcmp(cmd, "genkey") == 0)
		return cmd_genkey(o.alg, bits, out);
	if (strcmp(cmd, "txt") == 0)
		return cmd_txt(o.key_count ? o.keys[0] : NULL, o.selector, o.domain);
	if (strcmp(cmd, "sign") == 0)
		return cmd_sign(&o);
	usage();
	return 2;
}
