/*
 * test_dkim.c - lib/dkim: canonicalisation (RFC 6376 3.4), streaming, signing
 * (rsa-sha256, ed25519-sha256 with the RFC 8463 key), keys, domain choice.
 *
 * Signatures are checked by a small verifier written here (mini_verify) on
 * top of the naive reference canonicaliser of canon_ref.h and OpenSSL's
 * verify, so that a bug in lib/dkim's canonicalisation cannot hide itself.
 * The integration test dkim_dkimpy.sh checks against a real verifier.
 */
#include "dkim.h"
#include "core.h"
#include "dkim_canon.h"
#include "canon_ref.h"
#include "mx_test.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/encoder.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

/* RFC 6376 3.4.6 / RFC 8463 Appendix A message. */
static const char rfc_msg[] = "From: Joe SixPack <joe@football.example.com>\r\n"
			      "To: Suzie Q <suzie@shopping.example.net>\r\n"
			      "Subject: Is dinner ready?\r\n"
			      "Date: Fri, 11 Jul 2003 21:00:37 -0700 (PDT)\r\n"
			      "Message-ID: <20030712040037.46341.5F8J@football.example.com>\r\n"
			      "\r\n"
			      "Hi.\r\n"
			      "\r\n"
			      "We lost the game.  Are you hungry yet?\r\n"
			      "\r\n"
			      "Joe.\r\n";

/* RFC 8032 7.1 TEST 1 secret key, the key of RFC 8463 Appendix A. */
static const uint8_t rfc8463_secret[32] = {
	0x9d, 0x61, 0xb1, 0x9d, 0xef, 0xfd, 0x5a, 0x60, 0xba, 0x84, 0x4a,
	0xf4, 0x92, 0xec, 0x2c, 0xc4, 0x44, 0x49, 0xc5, 0x69, 0x7b, 0x32,
	0x69, 0x19, 0x70, 0x3b, 0xac, 0x03, 0x1c, 0xae, 0x7f, 0x60,
};

static char tmpdir[256];

/* ---- helpers ------------------------------------------------------------- */

struct collect {
	uint8_t *buf;
	size_t len, cap;
};

static void collect_sink(void *arg, const uint8_t *p, size_t n)
{
	struct collect *c = arg;
	if (c->len + n > c->cap) {
		c->cap = (c->len + n) * 2 + 64;
		c->buf = realloc(c->buf, c->cap);
	}
	memcpy(c->buf + c->len, p, n);
	c->len += n;
}

/* Canonicalise in pieces of `step` bytes (0: one piece). */
static struct collect canon_stream(bool relaxed, const char *in, size_t len, size_t step)
{
	struct collect out = {0};
	struct dkim_body_canon *c = malloc(sizeof(*c));
	dkim_body_canon_init(c, relaxed, collect_sink, &out);
	if (step == 0)
		step = len ? len : 1;
	for (size_t off = 0; off < len; off += step)
		dkim_body_canon_update(c, (const uint8_t *)in + off,
				       len - off < step ? len - off : step);
	dkim_body_canon_final(c);
	CU_ASSERT_EQUAL(c->length, out.len);
	free(c);
	return out;
}

static bool collect_is(const struct collect *c, const char *want)
{
	return c->len == strlen(want) && (c->len == 0 || memcmp(c->buf, want, c->len) == 0);
}

static void write_file(const char *path, const char *text)
{
	FILE *fp = fopen(path, "w");
	CU_ASSERT_PTR_NOT_NULL_FATAL(fp);
	fputs(text, fp);
	fclose(fp);
}

static void path_in_tmp(char *out, size_t outlen, const char *name)
{
	snprintf(out, outlen, "%s/%s", tmpdir, name);
}

/* Write a key as PEM (PKCS#8 "PrivateKeyInfo" or traditional "type-specific"). */
static bool write_pkey(EVP_PKEY *pkey, const char *path, const char *structure)
{
	unlink(path);
	OSSL_ENCODER_CTX *ec =
		OSSL_ENCODER_CTX_new_for_pkey(pkey, EVP_PKEY_KEYPAIR, "PEM", structure, NULL);
	unsigned char *data = NULL;
	size_t len = 0;
	bool ok = ec && OSSL_ENCODER_to_data(ec, &data, &len) == 1;
	OSSL_ENCODER_CTX_free(ec);
	FILE *fp = ok ? fopen(path, "w") : NULL;
	ok = fp && fwrite(data, 1, len, fp) == len;
	if (fp)
		ok &= fclose(fp) == 0;
	OPENSSL_free(data);
	return ok;
}

static EVP_PKEY *rfc8463_pkey(void)
{
	return EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, rfc8463_secret, 32);
}

/* Keys made once for the whole suite. */
static struct dkim_key *rsa_key, *ed_key;
static char rsa_path[300], ed_path[300];

static int suite_init(void)
{
	char err[256];
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/mx-dkim-test-XXXXXX");
	if (!mkdtemp(tmpdir))
		return 1;
	path_in_tmp(rsa_path, sizeof(rsa_path), "rsa.pem");
	path_in_tmp(ed_path, sizeof(ed_path), "ed.pem");
	EVP_PKEY *ed = rfc8463_pkey();
	EVP_PKEY *rsa = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
	if (!ed || !rsa)
		return 1;
	/* traditional "RSA PRIVATE KEY" for RSA, PKCS#8 for Ed25519 */
	bool ok = write_pkey(ed, ed_path, "PrivateKeyInfo") &&
		  write_pkey(rsa, rsa_path, "type-specific");
	EVP_PKEY_free(ed);
	EVP_PKEY_free(rsa);
	if (!ok)
		return 1;
	if (dkim_key_load(rsa_path, DKIM_ALG_RSA_SHA256, &rsa_key, err, sizeof(err)) ||
	    dkim_key_load(ed_path, DKIM_ALG_ED25519_SHA256, &ed_key, err, sizeof(err))) {
		fprintf(stderr, "%s\n", err);
		return 1;
	}
	return 0;
}

static int suite_clean(void)
{
	dkim_key_free(rsa_key);
	dkim_key_free(ed_key);
	char cmd[300];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	return system(cmd) == 0 ? 0 : 1;
}

static struct dkim_signer *make_signer(struct dkim_key *rsa, struct dkim_key *ed,
				       enum dkim_canon hc, enum dkim_canon bc)
{
	struct dkim_signer_config c;
	struct dkim_signer *s = NULL;
	char err[256];
	dkim_signer_config_init(&c);
	c.domain = "football.example.com";
	c.selector = "brisbane";
	c.rsa_key = rsa;
	c.ed25519_key = ed;
	c.header_canon = hc;
	c.body_canon = bc;
	int rc = dkim_signer_create(&c, &s, err, sizeof(err));
	CU_ASSERT_EQUAL(rc, 0);
	if (rc)
		fprintf(stderr, "signer: %s\n", err);
	return s;
}

/* Sign msg in pieces of step bytes (0: at once); copies the header(s) out. */
static int sign_msg(struct dkim_signer *s, const char *msg, size_t len, size_t step, char *out,
		    size_t outlen)
{
	const char *hdr;
	size_t hdr_len;
	int rc = dkim_sign_begin(s, 1528637909);
	if (step == 0)
		step = len ? len : 1;
	for (size_t off = 0; rc == 0 && off < len; off += step)
		rc = dkim_sign_update(s, msg + off, len - off < step ? len - off : step);
	if (rc == 0)
		rc = dkim_sign_final(s, &hdr, &hdr_len);
	if (rc)
		return rc;
	if (hdr_len + 1 > outlen)
		return -ENOSPC;
	memcpy(out, hdr, hdr_len);
	out[hdr_len] = '\0';
	return (int)hdr_len;
}

/* Value of tag `name` in a DKIM-Signature field, all whitespace removed. */
static bool sig_tag(const char *field, const char *name, char *out, size_t outlen)
{
	const char *p = strchr(field, ':');
	size_t nl = strlen(name);
	while (p) {
		p++;
		while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')
			p++;
		const char *end = strchr(p, ';');
		if (!end)
			end = p + strlen(p);
		if (strncmp(p, name, nl) == 0 && (p[nl] == '=' || p[nl] == ' ')) {
			const char *v = strchr(p, '=') + 1;
			size_t o = 0;
			for (; v < end && o + 1 < outlen; v++)
				if (*v != ' ' && *v != '\t' && *v != '\r' && *v != '\n')
					out[o++] = *v;
			out[o] = '\0';
			return true;
		}
		p = *end ? end : NULL;
	}
	return false;
}

/*
 * A verifier of our own (RFC 6376 6.1.3) over the reference canonicaliser:
 * sig is one DKIM-Signature field with its CRLF, msg the unsigned message.
 */
static int mini_verify_field(const char *sig, size_t sig_len, const char *msg, EVP_PKEY *pub);

static int mini_verify(const char *sig, size_t sig_len, const char *msg, EVP_PKEY *pub)
{
	char *one = strndup(sig, sig_len);
	int rc = mini_verify_field(one, sig_len, msg, pub);
	free(one);
	return rc;
}

static int mini_verify_field(const char *sig, size_t sig_len, const char *msg, EVP_PKEY *pub)
{
	char a[64], c[64], h[1024], bh[128], b[1024];
	if (!sig_tag(sig, "a", a, sizeof(a)) || !sig_tag(sig, "c", c, sizeof(c)) ||
	    !sig_tag(sig, "h", h, sizeof(h)) || !sig_tag(sig, "bh", bh, sizeof(bh)) ||
	    !sig_tag(sig, "b", b, sizeof(b)))
		return -1;
	bool hrel = strncmp(c, "relaxed", 7) == 0;
	bool brel = strstr(c, "/relaxed") != NULL;
	const char *body = strstr(msg, "\r\n\r\n");
	size_t hdr_len = body ? (size_t)(body - msg) + 2 : strlen(msg);
	body = body ? body + 4 : msg + strlen(msg);
	size_t blen = strlen(body);
	uint8_t *cb = malloc(2 * blen + 4), dig[32];
	size_t cn = ref_body_canon(brel, (const uint8_t *)body, blen, cb);
	SHA256(cb, cn, dig);
	free(cb);
	char bh_calc[64];
	EVP_EncodeBlock((unsigned char *)bh_calc, dig, 32);
	if (strcmp(bh_calc, bh) != 0)
		return -2;

	/* header fields: start offsets */
	size_t starts[256], lens[256], nf = 0;
	bool used[256] = {false};
	for (size_t i = 0; i < hdr_len && nf < 256;) {
		size_t st = i;
		do {
			const char *lf = memchr(msg + i, '\n', hdr_len - i);
			i = lf ? (size_t)(lf - msg) + 1 : hdr_len;
		} while (i < hdr_len && (msg[i] == ' ' || msg[i] == '\t'));
		starts[nf] = st;
		lens[nf++] = i - st;
	}
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	EVP_DigestInit_ex(md, EVP_sha256(), NULL);
	uint8_t buf[4096];
	char *save, *hcopy = strdup(h);
	for (char *name = strtok_r(hcopy, ":", &save); name; name = strtok_r(NULL, ":", &save)) {
		for (size_t j = nf; j-- > 0;) {
			const char *f = msg + starts[j];
			size_t nlen = strlen(name);
			if (used[j] || strncasecmp(f, name, nlen) != 0 ||
			    (f[nlen] != ':' && f[nlen] != ' ' && f[nlen] != '\t'))
				continue;
			used[j] = true;
			if (hrel) {
				size_t n = ref_header_relaxed((const uint8_t *)f, lens[j], buf);
				EVP_DigestUpdate(md, buf, n);
			} else {
				EVP_DigestUpdate(md, f, lens[j]);
			}
			break;
		}
	}
	free(hcopy);
	/* the signature field with b= emptied, no final CRLF (3.7) */
	char *field = strndup(sig, sig_len);
	char *bt = strstr(field, " b=");
	if (!bt)
		bt = strstr(field, "\tb=");
	if (!bt) {
		free(field);
		EVP_MD_CTX_free(md);
		return -3;
	}
	bt[3] = '\0';
	if (hrel) {
		size_t n = ref_header_relaxed((const uint8_t *)field, strlen(field), buf);
		EVP_DigestUpdate(md, buf, n - 2);
	} else {
		EVP_DigestUpdate(md, field, strlen(field));
	}
	free(field);
	unsigned dl;
	EVP_DigestFinal_ex(md, dig, &dl);
	EVP_MD_CTX_free(md);

	uint8_t raw[1024];
	int rl = EVP_DecodeBlock(raw, (const unsigned char *)b, (int)strlen(b));
	if (rl < 0)
		return -4;
	size_t pad = strlen(b) >= 2 ? (b[strlen(b) - 1] == '=') + (b[strlen(b) - 2] == '=') : 0;
	rl -= (int)pad;
	int ok;
	if (strcmp(a, "ed25519-sha256") == 0) {
		EVP_MD_CTX *v = EVP_MD_CTX_new();
		ok = EVP_DigestVerifyInit(v, NULL, NULL, NULL, pub) == 1 &&
		     EVP_DigestVerify(v, raw, (size_t)rl, dig, 32) == 1;
		EVP_MD_CTX_free(v);
	} else {
		EVP_PKEY_CTX *v = EVP_PKEY_CTX_new(pub, NULL);
		ok = EVP_PKEY_verify_init(v) == 1 &&
		     EVP_PKEY_CTX_set_rsa_padding(v, RSA_PKCS1_PADDING) == 1 &&
		     EVP_PKEY_CTX_set_signature_md(v, EVP_sha256()) == 1 &&
		     EVP_PKEY_verify(v, raw, (size_t)rl, dig, 32) == 1;
		EVP_PKEY_CTX_free(v);
	}
	ERR_clear_error();
	return ok ? 0 : -5;
}

/* The public half of a key file, for verifying. */
static EVP_PKEY *load_pub(const char *path)
{
	FILE *fp = fopen(path, "r");
	EVP_PKEY *k = fp ? PEM_read_PrivateKey(fp, NULL, NULL, NULL) : NULL;
	if (fp)
		fclose(fp);
	return k;
}

/* Verify every DKIM-Signature field in hdrs (as produced by dkim_sign_final). */
static int verify_all(const char *hdrs, const char *msg, int expect_count)
{
	EVP_PKEY *rsa = load_pub(rsa_path), *ed = load_pub(ed_path);
	int count = 0, rc = 0;
	const char *p = hdrs;
	while (p && *p) {
		const char *next = strstr(p + 1, "\r\nDKIM-Signature:");
		size_t len = next ? (size_t)(next - p) + 2 : strlen(p);
		bool is_ed = strstr(p, "a=ed25519-sha256") != NULL &&
			     (!next || strstr(p, "a=ed25519-sha256") < next);
		int r = mini_verify(p, len, msg, is_ed ? ed : rsa);
		if (r) {
			if (getenv("DKIM_TEST_VERBOSE"))
				fprintf(stderr, "mini_verify %d on:\n%.*s\n", r, (int)len, p);
			rc = r;
		}
		count++;
		p = next ? next + 2 : NULL;
	}
	EVP_PKEY_free(rsa);
	EVP_PKEY_free(ed);
	if (rc == 0 && count != expect_count)
		rc = -10;
	return rc;
}

/* ---- canonicalisation ---------------------------------------------------- */

static void test_rfc6376_example(void)
{
	/* RFC 6376 3.4.6 */
	const char *body = " C \r\nD \t E\r\n\r\n\r\n";
	struct collect r = canon_stream(true, body, strlen(body), 0);
	CU_ASSERT(collect_is(&r, " C\r\nD E\r\n"));
	free(r.buf);
	struct collect s = canon_stream(false, body, strlen(body), 0);
	CU_ASSERT(collect_is(&s, " C \r\nD \t E\r\n"));
	free(s.buf);
	uint8_t out[64];
	size_t n = dkim_header_canon(true, (const uint8_t *)"A: X\r\n", 6, true, out);
	CU_ASSERT(n == 5 && memcmp(out, "a:X\r\n", 5) == 0);
	const char *b = "B : Y\t\r\n\tZ  \r\n";
	n = dkim_header_canon(true, (const uint8_t *)b, strlen(b), true, out);
	CU_ASSERT(n == 7 && memcmp(out, "b:Y Z\r\n", 7) == 0);
	n = dkim_header_canon(false, (const uint8_t *)b, strlen(b), true, out);
	CU_ASSERT(n == strlen(b) && memcmp(out, b, n) == 0);
}

static const struct {
	const char *in, *simple, *relaxed;
} body_cases[] = {
	{"", "\r\n", ""},
	{"\r\n", "\r\n", ""},
	{"\r\n\r\n\r\n", "\r\n", ""},
	{"abc", "abc\r\n", "abc\r\n"},
	{"abc\r\n\r\n", "abc\r\n", "abc\r\n"},
	{"a  b \t\r\n", "a  b \t\r\n", "a b\r\n"},
	{" \t \r\n\r\nx", " \t \r\n\r\nx\r\n", "\r\n\r\nx\r\n"},
	{"line\r\n  \r\n\t\r\n", "line\r\n  \r\n\t\r\n", "line\r\n"},
	{"a\rb\nc\r\n", "a\rb\nc\r\n", "a\rb\nc\r\n"},
	{"end  ", "end  \r\n", "end \r\n"},
	{"x\r", "x\r\r\n", "x\r\r\n"},
	{"a \r \r\n", "a \r \r\n", "a \r\r\n"},
	{"\t\tindent\r\n", "\t\tindent\r\n", " indent\r\n"},
	{"8bit \xc3\xa9t\xc3\xa9\r\n\r\n", "8bit \xc3\xa9t\xc3\xa9\r\n",
	 "8bit \xc3\xa9t\xc3\xa9\r\n"},
};

static void test_body_cases(void)
{
	for (size_t i = 0; i < sizeof(body_cases) / sizeof(body_cases[0]); i++) {
		const char *in = body_cases[i].in;
		size_t len = strlen(in);
		for (int relaxed = 0; relaxed < 2; relaxed++) {
			const char *want = relaxed ? body_cases[i].relaxed : body_cases[i].simple;
			uint8_t ref[64];
			size_t rn = ref_body_canon(relaxed, (const uint8_t *)in, len, ref);
			bool ref_ok = rn == strlen(want) && memcmp(ref, want, rn) == 0;
			CU_ASSERT(ref_ok);
			for (size_t step = 0; step <= 3; step++) {
				struct collect c = canon_stream(relaxed, in, len, step);
				bool ok = collect_is(&c, want);
				CU_ASSERT(ok);
				if (!ok)
					fprintf(stderr, "case %zu relaxed=%d step=%zu\n", i,
						relaxed, step);
				free(c.buf);
			}
		}
	}
}

static void test_header_relaxed(void)
{
	static const struct {
		const char *in, *want;
	} cases[] = {
		{"SUBJect :  Hello \r\n\t World  \r\n", "subject:Hello World\r\n"},
		{"X-Empty:\r\n", "x-empty:\r\n"},
		{"X-Sp:   \r\n", "x-sp:\r\n"},
		{"To: a@b,\r\n  c@d,\r\n\te@f\r\n", "to:a@b, c@d, e@f\r\n"},
		{"MESSAGE-ID:<x@y>\r\n", "message-id:<x@y>\r\n"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		uint8_t out[128], ref[128];
		size_t len = strlen(cases[i].in);
		size_t n = dkim_header_canon(true, (const uint8_t *)cases[i].in, len, true, out);
		size_t rn = ref_header_relaxed((const uint8_t *)cases[i].in, len, ref);
		CU_ASSERT(n == strlen(cases[i].want) && memcmp(out, cases[i].want, n) == 0);
		CU_ASSERT(rn == n && memcmp(out, ref, n) == 0);
	}
}

/* Random bodies over an alphabet of the interesting bytes, random splits. */
static void test_stream_random(void)
{
	static const char alphabet[] = " \t\r\n\r\nab";
	uint32_t seed = 12345;
	char in[300];
	uint8_t ref[700];
	for (int iter = 0; iter < 3000; iter++) {
		seed = seed * 1103515245 + 12345;
		size_t len = (seed >> 8) % sizeof(in);
		for (size_t i = 0; i < len; i++) {
			seed = seed * 1103515245 + 12345;
			in[i] = alphabet[(seed >> 16) % (sizeof(alphabet) - 1)];
		}
		for (int relaxed = 0; relaxed < 2; relaxed++) {
			size_t rn = ref_body_canon(relaxed, (const uint8_t *)in, len, ref);
			struct collect whole = canon_stream(relaxed, in, len, 0);
			/* random split points */
			struct collect parts = {0};
			struct dkim_body_canon c;
			dkim_body_canon_init(&c, relaxed, collect_sink, &parts);
			for (size_t off = 0; off < len;) {
				seed = seed * 1103515245 + 12345;
				size_t step = 1 + (seed >> 16) % 7;
				if (step > len - off)
					step = len - off;
				dkim_body_canon_update(&c, (const uint8_t *)in + off, step);
				off += step;
			}
			dkim_body_canon_final(&c);
			bool ok = whole.len == rn && parts.len == rn &&
				  (rn == 0 || (memcmp(whole.buf, ref, rn) == 0 &&
					       memcmp(parts.buf, ref, rn) == 0));
			CU_ASSERT(ok);
			if (!ok) {
				fprintf(stderr, "iter %d relaxed %d len %zu\n", iter, relaxed, len);
				free(whole.buf);
				free(parts.buf);
				return;
			}
			free(whole.buf);
			free(parts.buf);
		}
	}
}

/*
 * A third canonicaliser, line by line, sharing no code with canon_ref.h or
 * lib/dkim: cut the body at each CRLF; relaxed, squeeze each WSP run to one
 * SP and drop the line's trailing SP when a CRLF ended it; drop the empty
 * CRLF-ended lines at the end; write each remaining line with a CRLF.  An
 * empty result is "" (relaxed) or one CRLF (simple).  out: 2 * len + 2.
 */
static size_t line_ref_canon(bool relaxed, const uint8_t *in, size_t len, uint8_t *out)
{
	size_t o = 0, keep = 0; /* keep: output up to the last line with content */
	for (size_t i = 0; i < len;) {
		size_t end = i;
		while (end < len && !(in[end] == '\r' && end + 1 < len && in[end + 1] == '\n'))
			end++;
		bool ended = end < len;
		size_t start = o;
		for (size_t k = i; k < end; k++) {
			bool wsp = in[k] == ' ' || in[k] == '\t';
			if (relaxed && wsp) {
				if (o == start || out[o - 1] != ' ' ||
				    (in[k - 1] != ' ' && in[k - 1] != '\t'))
					out[o++] = ' ';
				continue;
			}
			out[o++] = in[k];
		}
		if (relaxed && ended && o > start && out[o - 1] == ' ')
			o--;
		out[o++] = '\r';
		out[o++] = '\n';
		if (o - start > 2)
			keep = o;
		i = ended ? end + 2 : end;
	}
	if (keep == 0 && !relaxed) {
		out[0] = '\r';
		out[1] = '\n';
		return 2;
	}
	return keep;
}

/* Bodies that look like device text: long plain runs, sometimes something to canonicalise. */
static size_t gen_body(uint32_t *seed, char *buf, size_t cap)
{
	static const char *const specials[] = {
		"  ",	      "\t",	     " \t ",   " \r\n",	 "\r\n",  "\r\n\r\n", "\r\n \r\n",
		"\r\n\t\r\n", "\r",	     "\n",     "\r\r\n", " ",	  "\r\n ",    "\r\n\t",
		"\n\r",	      "   \r\n\r\n", "\r\n\r", "\t\t",	 "x\r\n",
	};
	size_t len = 0;
	*seed = *seed * 1103515245u + 12345u;
	size_t target = (*seed >> 8) % cap;
	while (len < target) {
		*seed = *seed * 1103515245u + 12345u;
		uint32_t r = *seed >> 8;
		if (r % 3) {
			/* a word of 1 to 90 plain bytes, a single SP after it half the time */
			size_t w = 1 + (r >> 4) % 90;
			for (size_t k = 0; k < w && len < target; k++)
				buf[len++] = (char)('a' + (r + k * 7) % 26);
			if ((r >> 12) & 1 && len < target)
				buf[len++] = ' ';
		} else {
			const char *sp =
				specials[(r >> 4) % (sizeof(specials) / sizeof(specials[0]))];
			for (size_t k = 0; sp[k] && len < target; k++)
				buf[len++] = sp[k];
		}
	}
	return len;
}

/* Canonicalise in chunks: step 0 random sizes up to max_step, otherwise fixed. */
static size_t canon_chunks(bool relaxed, const char *in, size_t len, size_t step, size_t max_step,
			   uint32_t *seed, struct collect *out)
{
	struct dkim_body_canon c;
	out->len = 0;
	dkim_body_canon_init(&c, relaxed, collect_sink, out);
	for (size_t off = 0; off < len;) {
		size_t n = step;
		if (n == 0) {
			*seed = *seed * 1103515245u + 12345u;
			n = 1 + (*seed >> 8) % max_step;
		}
		if (n > len - off)
			n = len - off;
		dkim_body_canon_update(&c, (const uint8_t *)in + off, n);
		off += n;
	}
	dkim_body_canon_final(&c);
	return (size_t)c.length;
}

/*
 * Randomized differential test of the fast paths: every scan implementation
 * this CPU has, text-like and byte-soup bodies, whole, one byte at a time and
 * in random chunks, against the line-by-line reference above (and it against
 * canon_ref.h).
 */
static void test_canon_differential(void)
{
	enum { CAP = 3000 };
	static const char soup[] = " \t\r\n\r\nab  \r\n";
	char *in = malloc(CAP);
	uint8_t *ref = malloc(2 * CAP + 4), *ref2 = malloc(2 * CAP + 4);
	struct collect out = {0};
	int kinds = 0, failures = 0;
	CU_ASSERT_FATAL(in && ref && ref2);
	for (int kind = DKIM_SCAN_WORDS; kind <= DKIM_SCAN_AVX2; kind++) {
		if (dkim_canon_scan_select((enum dkim_canon_scan)kind) != 0)
			continue;
		kinds++;
		uint32_t seed = 777 + (uint32_t)kind;
		for (int iter = 0; iter < 1500 && failures < 5; iter++) {
			size_t len;
			if (iter % 4 == 3) {
				seed = seed * 1103515245u + 12345u;
				len = (seed >> 8) % 400;
				for (size_t i = 0; i < len; i++) {
					seed = seed * 1103515245u + 12345u;
					in[i] = soup[(seed >> 16) % (sizeof(soup) - 1)];
				}
			} else {
				len = gen_body(&seed, in, CAP);
			}
			for (int relaxed = 0; relaxed < 2; relaxed++) {
				size_t rn = line_ref_canon(relaxed, (const uint8_t *)in, len, ref);
				size_t rn2 =
					ref_body_canon(relaxed, (const uint8_t *)in, len, ref2);
				bool refs_agree = rn == rn2 && memcmp(ref, ref2, rn) == 0;
				CU_ASSERT(refs_agree);
				size_t steps[3] = {len ? len : 1, 1, 0};
				for (int k = 0; k < 3; k++) {
					size_t max_step = 1 + iter % 64 * 37;
					size_t n = canon_chunks(relaxed, in, len, steps[k],
								max_step, &seed, &out);
					bool ok = n == rn && out.len == rn &&
						  (rn == 0 || memcmp(out.buf, ref, rn) == 0);
					CU_ASSERT(ok);
					if (!ok && failures++ < 5)
						fprintf(stderr,
							"scan %d iter %d relaxed %d len %zu split "
							"%d\n",
							kind, iter, relaxed, len, k);
				}
			}
		}
	}
	dkim_canon_scan_select(DKIM_SCAN_AUTO);
#if defined(__x86_64__)
	CU_ASSERT(kinds >= 2); /* words and SSE2 at least; AVX2 where the CPU has it */
#else
	CU_ASSERT(kinds == 1);
#endif
	free(out.buf);
	free(in);
	free(ref);
	free(ref2);
}

/*
 * Each special pattern at every offset of a 70-byte plain run, so that it
 * falls at each position of a 8-, 16- and 32-byte block and at the 2-byte
 * look-ahead edge; bodies cut at every offset into two pieces.
 */
static void test_canon_block_edges(void)
{
	static const char *const pats[] = {"  ", "\t",	 " \r\n", "\r\n\r\n",  "\r\n ", "\r\n\t",
					   "\r", "\r\n", " ",	  "\r\n \r\n", "\r\r\n"};
	char in[128];
	uint8_t ref[300];
	struct collect out = {0};
	for (int kind = DKIM_SCAN_WORDS; kind <= DKIM_SCAN_AVX2; kind++) {
		if (dkim_canon_scan_select((enum dkim_canon_scan)kind) != 0)
			continue;
		for (size_t p = 0; p < sizeof(pats) / sizeof(pats[0]); p++) {
			size_t pl = strlen(pats[p]);
			for (size_t at = 0; at + pl <= 70; at++) {
				memset(in, 'q', 70);
				memcpy(in + at, pats[p], pl);
				for (int relaxed = 0; relaxed < 2; relaxed++) {
					size_t rn = line_ref_canon(relaxed, (const uint8_t *)in, 70,
								   ref);
					for (size_t cut = 0; cut <= 70; cut += 5) {
						struct dkim_body_canon c;
						out.len = 0;
						dkim_body_canon_init(&c, relaxed, collect_sink,
								     &out);
						dkim_body_canon_update(&c, (const uint8_t *)in,
								       cut);
						dkim_body_canon_update(
							&c, (const uint8_t *)in + cut, 70 - cut);
						dkim_body_canon_final(&c);
						CU_ASSERT(out.len == rn &&
							  memcmp(out.buf, ref, rn) == 0);
					}
				}
			}
		}
	}
	dkim_canon_scan_select(DKIM_SCAN_AUTO);
	free(out.buf);
}

/* Random header fields (folding, WSP runs, bare CR and LF) against canon_ref.h. */
static void test_header_random(void)
{
	static const char *const parts[] = {"Subject", ":",	" ",	  "\t",
					    "  ",      "\r\n ", "\r\n\t", "\r",
					    "\n",      "word",	"x",	  "Long-Value-Text",
					    "\r\n",    "A:B",	" :\t "};
	uint32_t seed = 99;
	char f[600];
	uint8_t out[700], ref[700];
	for (int iter = 0; iter < 5000; iter++) {
		size_t len = 0;
		seed = seed * 1103515245u + 12345u;
		size_t count = (seed >> 8) % 40;
		/* a name and a colon first, mostly */
		if ((seed >> 20) % 8 != 0)
			len = (size_t)sprintf(f, "%s:", (seed >> 24) % 2 ? "X-Test " : "Subject");
		for (size_t k = 0; k < count; k++) {
			seed = seed * 1103515245u + 12345u;
			const char *p = parts[(seed >> 8) % (sizeof(parts) / sizeof(parts[0]))];
			size_t pl = strlen(p);
			if (len + pl + 2 >= sizeof(f))
				break;
			memcpy(f + len, p, pl);
			len += pl;
		}
		memcpy(f + len, "\r\n", 2);
		len += 2;
		size_t n = dkim_header_canon(true, (const uint8_t *)f, len, true, out);
		size_t rn = ref_header_relaxed((const uint8_t *)f, len, ref);
		bool has_colon = memchr(f, ':', len) != NULL;
		/* the reference omits the CRLF for a field without a colon */
		bool ok = !has_colon || (n == rn && memcmp(out, ref, n) == 0);
		CU_ASSERT(ok);
		if (!ok) {
			fprintf(stderr, "header iter %d: %.*s\n", iter, (int)len, f);
			return;
		}
	}
}

/* ---- signing ------------------------------------------------------------- */

static void test_body_hash_values(void)
{
	static const struct {
		enum dkim_canon bc;
		const char *msg, *bh;
	} cases[] = {
		/* RFC 8463 Appendix A (relaxed) and dkimpy's rfc6376.signed.msg (simple) */
		{DKIM_CANON_RELAXED, rfc_msg, "2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8="},
		{DKIM_CANON_SIMPLE, rfc_msg, "4bLNXImK9drULnmePzZNEBleUanJCX5PIsDIFoH4KTQ="},
		/* empty body: SHA-256("") and SHA-256("\r\n") (RFC 6376 3.4.3, 3.4.4) */
		{DKIM_CANON_RELAXED, "From: a@b.c\r\n\r\n",
		 "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="},
		{DKIM_CANON_SIMPLE, "From: a@b.c\r\n\r\n",
		 "frcCV1k9oG9oKj3dpUqdJg1PxRT2RSN/XKdLCPjaYaY="},
		{DKIM_CANON_SIMPLE, "From: a@b.c\r\n",
		 "frcCV1k9oG9oKj3dpUqdJg1PxRT2RSN/XKdLCPjaYaY="},
		{DKIM_CANON_RELAXED, "From: a@b.c\r\n\r\n\r\n \r\n",
		 "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct dkim_signer *s = make_signer(NULL, ed_key, DKIM_CANON_RELAXED, cases[i].bc);
		char out[4096], bh[128];
		CU_ASSERT_FATAL(s != NULL);
		int n = sign_msg(s, cases[i].msg, strlen(cases[i].msg), 0, out, sizeof(out));
		CU_ASSERT(n > 0);
		CU_ASSERT(sig_tag(out, "bh", bh, sizeof(bh)));
		CU_ASSERT_STRING_EQUAL(bh, cases[i].bh);
		CU_ASSERT_EQUAL(verify_all(out, cases[i].msg, 1), 0);
		dkim_signer_free(s);
	}
}

/*
 * Dual signing (rsa-sha256 + ed25519-sha256, both SHA-256): one pass over the
 * body serves both signatures.  Both bh= are the reference body hash, the
 * body byte counter moves by the canonical length once per message, and
 * both signatures verify.  Body of device-like text over several TCP-sized
 * pieces.
 */
static void test_dual_sign_one_body_hash(void)
{
	enum { CAP = 20000 };
	char *msg = malloc(CAP + 200), out[8192], bh_rsa[128], bh_ed[128], want[128];
	uint8_t *canon = malloc(2 * CAP + 4), dig[32];
	uint32_t seed = 4242;
	CU_ASSERT_FATAL(msg && canon);
	size_t hl = (size_t)sprintf(msg, "From: dev@football.example.com\r\nSubject: dual\r\n\r\n");
	size_t bl = gen_body(&seed, msg + hl, CAP);
	struct dkim_signer *s =
		make_signer(rsa_key, ed_key, DKIM_CANON_RELAXED, DKIM_CANON_RELAXED);
	CU_ASSERT_FATAL(s != NULL);
	for (int round = 0; round < 2; round++) {
		uint64_t before = dkim_signer_stats(s)->body_bytes;
		CU_ASSERT(sign_msg(s, msg, hl + bl, 1448, out, sizeof(out)) > 0);
		const char *second = strstr(out + 1, "\r\nDKIM-Signature:");
		CU_ASSERT_FATAL(second != NULL);
		CU_ASSERT(strstr(out, "a=rsa-sha256") < second);
		CU_ASSERT(strstr(second, "a=ed25519-sha256") != NULL);
		CU_ASSERT(sig_tag(out, "bh", bh_rsa, sizeof(bh_rsa)));
		CU_ASSERT(sig_tag(second + 2, "bh", bh_ed, sizeof(bh_ed)));
		size_t cn = ref_body_canon(true, (const uint8_t *)msg + hl, bl, canon);
		CU_ASSERT_EQUAL(EVP_Digest(canon, cn, dig, NULL, EVP_sha256(), NULL), 1);
		EVP_EncodeBlock((unsigned char *)want, dig, 32);
		CU_ASSERT_STRING_EQUAL(bh_rsa, want);
		CU_ASSERT_STRING_EQUAL(bh_ed, want);
		CU_ASSERT_EQUAL(dkim_signer_stats(s)->body_bytes - before, cn);
		CU_ASSERT_EQUAL(verify_all(out, msg, 2), 0);
		/* the second round reuses every context of the first */
		msg[hl + bl / 2] = msg[hl + bl / 2] == 'q' ? 'r' : 'q';
	}
	CU_ASSERT_EQUAL(dkim_signer_stats(s)->messages_signed, 2);
	dkim_signer_free(s);
	free(msg);
	free(canon);
}

static void test_rfc8463_key(void)
{
	char rec[256];
	int n = dkim_key_txt_record(ed_key, rec, sizeof(rec));
	/* RFC 8463 Appendix A.2 DNS record */
	CU_ASSERT_STRING_EQUAL(
		rec, "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=");
	CU_ASSERT_EQUAL(n, (int)strlen(rec));
	CU_ASSERT_EQUAL(dkim_key_alg(ed_key), DKIM_ALG_ED25519_SHA256);
	CU_ASSERT_EQUAL(dkim_key_bits(rsa_key), 2048);
	CU_ASSERT_EQUAL(dkim_key_txt_record(ed_key, rec, 20), -ENOSPC);
	n = dkim_key_txt_record(rsa_key, rec, sizeof(rec));
	CU_ASSERT_EQUAL(n, -ENOSPC); /* 2048-bit p= does not fit in 256 */
}

/*
 * A third-party ed25519-sha256 signature by the RFC 8463 key (dkimpy's test
 * data, simple/simple): hashing the fields with our header canonicaliser must
 * give the data that signature verifies.
 */
static void test_rfc8463_foreign_signature(void)
{
	static const char field[] = "DKIM-Signature: v=1; a=ed25519-sha256; c=simple/simple; \r\n"
				    " d=football.example.com; i=@football.example.com; \r\n"
				    " q=dns/txt; s=brisbane; t=1518460054; h=from : to : \r\n"
				    " subject : date : message-id : from : subject : date; \r\n"
				    " bh=4bLNXImK9drULnmePzZNEBleUanJCX5PIsDIFoH4KTQ=; \r\n"
				    " b=";
	static const char b64[] = "9/dsDChY0YMTtD5Eyw3wx7x22BlSJP7M5ECbJ7GWrR45nXlTCGb8l0YB"
				  "o0wBLR++X5LqmsxXaOYLLJe46l10AQ==";
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	EVP_DigestInit_ex(md, EVP_sha256(), NULL);
	const char *hdrs = rfc_msg;
	const char *end = strstr(rfc_msg, "\r\n\r\n") + 2;
	uint8_t buf[512];
	while (hdrs < end) {
		const char *eol = strstr(hdrs, "\r\n") + 2;
		size_t n = dkim_header_canon(false, (const uint8_t *)hdrs, (size_t)(eol - hdrs),
					     true, buf);
		EVP_DigestUpdate(md, buf, n);
		hdrs = eol;
	}
	size_t n = dkim_header_canon(false, (const uint8_t *)field, strlen(field), false, buf);
	EVP_DigestUpdate(md, buf, n);
	uint8_t dig[32], sig[80];
	unsigned dl;
	EVP_DigestFinal_ex(md, dig, &dl);
	EVP_MD_CTX_free(md);
	CU_ASSERT_EQUAL(EVP_DecodeBlock(sig, (const unsigned char *)b64, (int)strlen(b64)), 66);
	EVP_PKEY *pk = rfc8463_pkey();
	EVP_MD_CTX *v = EVP_MD_CTX_new();
	CU_ASSERT(EVP_DigestVerifyInit(v, NULL, NULL, NULL, pk) == 1);
	CU_ASSERT(EVP_DigestVerify(v, sig, 64, dig, 32) == 1);
	/* and one flipped bit of the hashed data fails */
	dig[0] ^= 1;
	CU_ASSERT(EVP_DigestVerifyInit(v, NULL, NULL, NULL, pk) == 1);
	CU_ASSERT(EVP_DigestVerify(v, sig, 64, dig, 32) != 1);
	ERR_clear_error();
	EVP_MD_CTX_free(v);
	EVP_PKEY_free(pk);
}

static void test_sign_verify_all_modes(void)
{
	static const char folded[] = "Received: from x by y\r\n"
				     "From:   Device 17 <dev17@Football.Example.com>  \r\n"
				     "To: ops@example.net,\r\n\tnoc@example.net\r\n"
				     "subject: Temperature \t alarm\r\n"
				     "  continued\r\n"
				     "Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n"
				     "\r\n"
				     "Sensor 4:  81.5 C   \r\n"
				     "\tTrailing tab line\t\r\n"
				     "\r\n\r\n";
	const char *msgs[] = {rfc_msg, folded};
	for (int m = 0; m < 2; m++) {
		for (int hc = 0; hc < 2; hc++) {
			for (int bc = 0; bc < 2; bc++) {
				struct dkim_signer *s = make_signer(rsa_key, ed_key, hc, bc);
				char out[8192];
				CU_ASSERT_FATAL(s != NULL);
				int n = sign_msg(s, msgs[m], strlen(msgs[m]), 0, out, sizeof(out));
				CU_ASSERT(n > 0);
				CU_ASSERT_EQUAL(verify_all(out, msgs[m], 2), 0);
				/* no line of the field is longer than 78 */
				for (const char *p = out; *p;) {
					const char *e = strstr(p, "\r\n");
					CU_ASSERT(e && e - p <= 78);
					p = e ? e + 2 : p + strlen(p);
				}
				dkim_signer_free(s);
			}
		}
	}
}

static void test_stream_equals_oneshot(void)
{
	static const char msg[] = "From: a@football.example.com\r\n"
				  "Subject: split\r\n"
				  " folded\r\n"
				  "\r\n"
				  "body  line \r\n\r\n\tx\r\n\r\n";
	size_t len = strlen(msg);
	struct dkim_signer *s =
		make_signer(rsa_key, ed_key, DKIM_CANON_RELAXED, DKIM_CANON_RELAXED);
	char whole[8192], part[8192];
	CU_ASSERT_FATAL(s != NULL);
	CU_ASSERT(sign_msg(s, msg, len, 0, whole, sizeof(whole)) > 0);
	CU_ASSERT(sign_msg(s, msg, len, 1, part, sizeof(part)) > 0);
	CU_ASSERT_STRING_EQUAL(whole, part);
	dkim_signer_free(s);
	/* every two-piece split, simple/simple, Ed25519 only */
	s = make_signer(NULL, ed_key, DKIM_CANON_SIMPLE, DKIM_CANON_SIMPLE);
	CU_ASSERT(sign_msg(s, msg, len, 0, whole, sizeof(whole)) > 0);
	for (size_t k = 1; k < len; k++) {
		const char *hdr;
		size_t hl;
		CU_ASSERT_EQUAL(dkim_sign_begin(s, 1528637909), 0);
		CU_ASSERT_EQUAL(dkim_sign_update(s, msg, k), 0);
		CU_ASSERT_EQUAL(dkim_sign_update(s, msg + k, len - k), 0);
		CU_ASSERT_EQUAL(dkim_sign_final(s, &hdr, &hl), 0);
		CU_ASSERT(hl == strlen(whole) && memcmp(hdr, whole, hl) == 0);
	}
	CU_ASSERT_EQUAL(dkim_signer_stats(s)->messages_signed, len);
	dkim_signer_free(s);
}

static void test_duplicate_headers_bottom_up(void)
{
	static const char msg[] = "From: a@football.example.com\r\n"
				  "Subject: first\r\n"
				  "To: x@y.z\r\n"
				  "Subject: second\r\n"
				  "\r\nbody\r\n";
	/* the same message with the two Subject fields swapped */
	static const char swapped[] = "From: a@football.example.com\r\n"
				      "Subject: second\r\n"
				      "To: x@y.z\r\n"
				      "Subject: first\r\n"
				      "\r\nbody\r\n";
	for (int hc = 0; hc < 2; hc++) {
		struct dkim_signer *s = make_signer(NULL, ed_key, hc, DKIM_CANON_RELAXED);
		char out[4096], h[512];
		CU_ASSERT_FATAL(s != NULL);
		CU_ASSERT(sign_msg(s, msg, strlen(msg), 0, out, sizeof(out)) > 0);
		CU_ASSERT(sig_tag(out, "h", h, sizeof(h)));
		CU_ASSERT_STRING_EQUAL(h, "From:From:To:Subject:Subject");
		CU_ASSERT_EQUAL(verify_all(out, msg, 1), 0);
		CU_ASSERT_NOT_EQUAL(verify_all(out, swapped, 1), 0);
		dkim_signer_free(s);
	}
}

static void test_tags_and_options(void)
{
	struct dkim_signer_config c;
	struct dkim_signer *s;
	char err[256], out[4096], v[256];
	static const char *const names[] = {"from", "subject", "X-Device-ID"};
	dkim_signer_config_init(&c);
	c.domain = "example.com";
	c.selector = "s1";
	c.ed25519_key = ed_key;
	c.expire_after_s = 86400;
	c.body_length_tag = true;
	c.oversign_from = false;
	c.headers = names;
	c.header_count = 3;
	CU_ASSERT_EQUAL_FATAL(dkim_signer_create(&c, &s, err, sizeof(err)), 0);
	const char *msg = "From: a@example.com\r\nX-Device-Id: 42\r\n\r\nhello  world\r\n\r\n";
	CU_ASSERT(sign_msg(s, msg, strlen(msg), 0, out, sizeof(out)) > 0);
	CU_ASSERT(sig_tag(out, "x", v, sizeof(v)) && strcmp(v, "1528724309") == 0);
	CU_ASSERT(sig_tag(out, "t", v, sizeof(v)) && strcmp(v, "1528637909") == 0);
	CU_ASSERT(sig_tag(out, "l", v, sizeof(v)) && strcmp(v, "13") == 0); /* "hello world\r\n" */
	CU_ASSERT(sig_tag(out, "h", v, sizeof(v)) && strcmp(v, "from:X-Device-ID") == 0);
	CU_ASSERT(sig_tag(out, "d", v, sizeof(v)) && strcmp(v, "example.com") == 0);
	CU_ASSERT_EQUAL(verify_all(out, msg, 1), 0);
	dkim_signer_free(s);

	/* configuration errors */
	static const char *const no_from[] = {"To"};
	c.headers = no_from;
	c.header_count = 1;
	CU_ASSERT_EQUAL(dkim_signer_create(&c, &s, err, sizeof(err)), -EINVAL);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "From"));
	c.headers = NULL;
	c.domain = "exa mple.com; x=1";
	CU_ASSERT_EQUAL(dkim_signer_create(&c, &s, err, sizeof(err)), -EINVAL);
	c.domain = "example.com";
	c.ed25519_key = NULL;
	CU_ASSERT_EQUAL(dkim_signer_create(&c, &s, err, sizeof(err)), -EINVAL);
	c.rsa_key = ed_key; /* wrong slot */
	CU_ASSERT_EQUAL(dkim_signer_create(&c, &s, err, sizeof(err)), -EINVAL);
}

static void test_unsignable(void)
{
	struct dkim_signer_config c;
	struct dkim_signer *s;
	char err[256];
	const char *hdr;
	size_t hl;
	dkim_signer_config_init(&c);
	c.domain = "example.com";
	c.selector = "s1";
	c.ed25519_key = ed_key;
	c.max_header_bytes = 100;
	CU_ASSERT_EQUAL_FATAL(dkim_signer_create(&c, &s, err, sizeof(err)), 0);
	/* no From: */
	const char *msg = "To: a@b.c\r\nFROMX: y\r\n\r\nbody\r\n";
	CU_ASSERT_EQUAL(dkim_sign_begin(s, 1), 0);
	CU_ASSERT_EQUAL(dkim_sign_update(s, msg, strlen(msg)), 0);
	CU_ASSERT_EQUAL(dkim_sign_final(s, &hdr, &hl), -EBADMSG);
	CU_ASSERT_PTR_NOT_NULL(strstr(dkim_signer_error(s), "From"));
	CU_ASSERT_EQUAL(dkim_signer_stats(s)->no_from, 1);
	/* header block over the bound, fed in pieces */
	CU_ASSERT_EQUAL(dkim_sign_begin(s, 1), 0);
	CU_ASSERT_EQUAL(dkim_sign_update(s, "From: a@example.com\r\n", 21), 0);
	int rc = 0;
	for (int i = 0; i < 10 && rc == 0; i++)
		rc = dkim_sign_update(s, "X-Pad: 0123456789\r\n", 19);
	CU_ASSERT_EQUAL(rc, -EMSGSIZE);
	CU_ASSERT_EQUAL(dkim_sign_update(s, "\r\n", 2), -EMSGSIZE);
	CU_ASSERT_EQUAL(dkim_sign_final(s, &hdr, &hl), -EMSGSIZE);
	CU_ASSERT_EQUAL(dkim_signer_stats(s)->header_overflow, 1);
	CU_ASSERT_PTR_NOT_NULL(strstr(dkim_signer_error(s), "100"));
	/* the same signer recovers: a header block of exactly 100 bytes signs */
	char exact[200];
	memset(exact, 'a', sizeof(exact));
	memcpy(exact, "From: x@example.com\r\nX: ", 24);
	memcpy(exact + 98, "\r\n\r\nbody", 8);
	CU_ASSERT_EQUAL(dkim_sign_begin(s, 1), 0);
	CU_ASSERT_EQUAL(dkim_sign_update(s, exact, 106), 0);
	CU_ASSERT_EQUAL(dkim_sign_final(s, &hdr, &hl), 0);
	/* calls out of order */
	CU_ASSERT_EQUAL(dkim_sign_update(s, "x", 1), -EINVAL);
	CU_ASSERT_EQUAL(dkim_sign_final(s, &hdr, &hl), -EINVAL);
	dkim_signer_free(s);
}

/* The bounds on header fields and on h= are hit, counted, and handled. */
static void test_field_limits(void)
{
	struct dkim_signer_config c;
	struct dkim_signer *s;
	char err[256];
	const char *hdr;
	size_t hl;
	dkim_signer_config_init(&c);
	c.domain = "example.com";
	c.selector = "s1";
	c.ed25519_key = ed_key;
	CU_ASSERT_EQUAL_FATAL(dkim_signer_create(&c, &s, err, sizeof(err)), 0);
	/* DKIM_MAX_HEADER_FIELDS + 1 fields */
	CU_ASSERT_EQUAL(dkim_sign_begin(s, 1), 0);
	CU_ASSERT_EQUAL(dkim_sign_update(s, "From: a@example.com\r\n", 21), 0);
	for (int i = 0; i < DKIM_MAX_HEADER_FIELDS; i++)
		CU_ASSERT_EQUAL(dkim_sign_update(s, "X: y\r\n", 6), 0);
	CU_ASSERT_EQUAL(dkim_sign_update(s, "\r\nbody\r\n", 8), 0);
	CU_ASSERT_EQUAL(dkim_sign_final(s, &hdr, &hl), -EMSGSIZE);
	CU_ASSERT_EQUAL(dkim_signer_stats(s)->field_overflow, 1);
	/* 70 To: fields: h= keeps 64 names, the bottom-most instances */
	char *msg = malloc(4096);
	size_t n = (size_t)sprintf(msg, "From: a@example.com\r\n");
	for (int i = 0; i < 70; i++)
		n += (size_t)sprintf(msg + n, "To: r%d@example.net\r\n", i);
	sprintf(msg + n, "\r\nbody\r\n");
	char out[8192], h[1024];
	CU_ASSERT(sign_msg(s, msg, strlen(msg), 0, out, sizeof(out)) > 0);
	CU_ASSERT_EQUAL(dkim_signer_stats(s)->h_list_truncated, 1);
	CU_ASSERT(sig_tag(out, "h", h, sizeof(h)));
	size_t names = 1;
	for (const char *p = h; *p; p++)
		names += *p == ':';
	CU_ASSERT_EQUAL(names, DKIM_MAX_SIGNED_FIELDS);
	CU_ASSERT_EQUAL(verify_all(out, msg, 1), 0);
	free(msg);
	dkim_signer_free(s);
}

/* ---- keys ---------------------------------------------------------------- */

/* Each bad key: its own code, "path: reason", no key returned. */
static void test_key_missing(void)
{
	struct dkim_key *k = (struct dkim_key *)&k; /* must be reset to NULL */
	char err[512], path[300];
	path_in_tmp(path, sizeof(path), "missing.pem");
	CU_ASSERT_EQUAL(dkim_key_load(path, DKIM_ALG_ANY, &k, err, sizeof(err)), -ENOENT);
	CU_ASSERT_PTR_NULL(k);
	char want[400];
	snprintf(want, sizeof(want), "%s: key file not found", path);
	CU_ASSERT_STRING_EQUAL(err, want);
}

static void test_key_not_a_key(void)
{
	struct dkim_key *k = NULL;
	char err[512], path[300];
	path_in_tmp(path, sizeof(path), "garbage.pem");
	write_file(path,
		   "-----BEGIN PRIVATE KEY-----\nnot base64 at all\n-----END PRIVATE KEY-----\n");
	CU_ASSERT_EQUAL(dkim_key_load(path, DKIM_ALG_ANY, &k, err, sizeof(err)), -EINVAL);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "not a PEM private key"));
	CU_ASSERT_PTR_NOT_NULL(strstr(err, path));
	path_in_tmp(path, sizeof(path), "empty.pem");
	write_file(path, "");
	CU_ASSERT_EQUAL(dkim_key_load(path, DKIM_ALG_ANY, &k, err, sizeof(err)), -EINVAL);
	/* a public key is not a private key */
	path_in_tmp(path, sizeof(path), "public.pem");
	EVP_PKEY *ed = rfc8463_pkey();
	FILE *fp = fopen(path, "w");
	CU_ASSERT_PTR_NOT_NULL_FATAL(fp);
	CU_ASSERT_EQUAL(PEM_write_PUBKEY(fp, ed), 1);
	fclose(fp);
	EVP_PKEY_free(ed);
	CU_ASSERT_EQUAL(dkim_key_load(path, DKIM_ALG_ANY, &k, err, sizeof(err)), -EINVAL);
	CU_ASSERT_PTR_NULL(k);
}

static void test_key_unreadable(void)
{
	struct dkim_key *k = NULL;
	char err[512], path[300];
	/* a directory */
	CU_ASSERT_EQUAL(dkim_key_load(tmpdir, DKIM_ALG_ANY, &k, err, sizeof(err)), -EISDIR);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "is a directory, not a key file"));
	/* no read permission: as root, in a child that gives up root first */
	path_in_tmp(path, sizeof(path), "noperm.pem");
	char cmd[1024];
	snprintf(cmd, sizeof(cmd), "cp '%s' '%s' && chmod 000 '%s'", ed_path, path, path);
	CU_ASSERT_EQUAL_FATAL(system(cmd), 0);
	chmod(tmpdir, 0755); /* the child must reach the file to be refused by its mode */
	pid_t pid = fork();
	CU_ASSERT_FATAL(pid >= 0);
	if (pid == 0) {
		if (geteuid() == 0 && (setgid(65534) != 0 || setuid(65534) != 0))
			_exit(10);
		int rc = dkim_key_load(path, DKIM_ALG_ANY, &k, err, sizeof(err));
		_exit(rc == -EACCES && strstr(err, "cannot open key file: Permission denied") ? 0
											      : 11);
	}
	int status = 0;
	CU_ASSERT_EQUAL(waitpid(pid, &status, 0), pid);
	CU_ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	chmod(tmpdir, 0700);
}

static void test_key_wrong_type(void)
{
	struct dkim_key *k = NULL;
	char err[512], path[300];
	CU_ASSERT_EQUAL(dkim_key_load(ed_path, DKIM_ALG_RSA_SHA256, &k, err, sizeof(err)),
			-EKEYREJECTED);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "Ed25519 key, but the algorithm is rsa-sha256"));
	CU_ASSERT_EQUAL(dkim_key_load(rsa_path, DKIM_ALG_ED25519_SHA256, &k, err, sizeof(err)),
			-EKEYREJECTED);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "RSA key, but the algorithm is ed25519-sha256"));
	/* neither RSA nor Ed25519 */
	EVP_PKEY *ec = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	path_in_tmp(path, sizeof(path), "ec.pem");
	CU_ASSERT(write_pkey(ec, path, "PrivateKeyInfo"));
	EVP_PKEY_free(ec);
	CU_ASSERT_EQUAL(dkim_key_load(path, DKIM_ALG_ANY, &k, err, sizeof(err)), -EKEYREJECTED);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "neither RSA nor Ed25519"));
	CU_ASSERT_PTR_NULL(k);
}

static void test_key_rsa_size(void)
{
	struct dkim_key *k = NULL;
	char err[512], path[300];
	EVP_PKEY *small = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)768);
	path_in_tmp(path, sizeof(path), "small.pem");
	CU_ASSERT(write_pkey(small, path, "PrivateKeyInfo"));
	EVP_PKEY_free(small);
	CU_ASSERT_EQUAL(dkim_key_load(path, DKIM_ALG_RSA_SHA256, &k, err, sizeof(err)), -ERANGE);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "RSA key of 768 bits; allowed 1024 to 4096"));
	/* 1024 is the floor (RFC 8301 3.2): accepted */
	EVP_PKEY *floor = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)1024);
	path_in_tmp(path, sizeof(path), "floor.pem");
	CU_ASSERT(write_pkey(floor, path, "type-specific"));
	EVP_PKEY_free(floor);
	CU_ASSERT_EQUAL(dkim_key_load(path, DKIM_ALG_RSA_SHA256, &k, err, sizeof(err)), 0);
	CU_ASSERT(k != NULL && dkim_key_bits(k) == 1024);
	dkim_key_free(k);
	EVP_PKEY *big = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)4104);
	path_in_tmp(path, sizeof(path), "big.pem");
	CU_ASSERT(write_pkey(big, path, "PrivateKeyInfo"));
	EVP_PKEY_free(big);
	CU_ASSERT_EQUAL(dkim_key_load(path, DKIM_ALG_ANY, &k, err, sizeof(err)), -ERANGE);
}

static void test_key_generate(void)
{
	struct dkim_key *k = NULL;
	char err[512], path[300];
	CU_ASSERT_EQUAL(dkim_key_generate(DKIM_ALG_RSA_SHA256, 512, &k, err, sizeof(err)), -ERANGE);
	/* generate, write (0600, no overwrite), load back */
	CU_ASSERT_EQUAL_FATAL(dkim_key_generate(DKIM_ALG_ED25519_SHA256, 0, &k, err, sizeof(err)),
			      0);
	path_in_tmp(path, sizeof(path), "gen.pem");
	CU_ASSERT_EQUAL(dkim_key_write_pem(k, path, err, sizeof(err)), 0);
	CU_ASSERT_EQUAL(dkim_key_write_pem(k, path, err, sizeof(err)), -EEXIST);
	struct stat st;
	CU_ASSERT(stat(path, &st) == 0 && (st.st_mode & 0777) == 0600);
	struct dkim_key *k2;
	CU_ASSERT_EQUAL(dkim_key_load(path, DKIM_ALG_ED25519_SHA256, &k2, err, sizeof(err)), 0);
	char r1[128], r2[128];
	CU_ASSERT(dkim_key_txt_record(k, r1, sizeof(r1)) > 0);
	CU_ASSERT(dkim_key_txt_record(k2, r2, sizeof(r2)) > 0);
	CU_ASSERT_STRING_EQUAL(r1, r2);
	dkim_key_free(k);
	dkim_key_free(k2);
}

/* A published record against the configured key, as `mxdkim check` reads it. */
static int rec_check(const struct dkim_key *key, const char *txt, unsigned *flags)
{
	char why[256];
	unsigned f;
	int rc = dkim_key_record_check(key, txt, strlen(txt), flags ? flags : &f, why, sizeof(why));
	CU_ASSERT(rc == 0 || why[0] != '\0'); /* every refusal says why */
	return rc;
}

static void test_key_record(void)
{
	char rsa_rec[2048], ed_rec[256], buf[4096], err[256];
	unsigned flags;
	CU_ASSERT_FATAL(dkim_key_txt_record(rsa_key, rsa_rec, sizeof(rsa_rec)) > 0);
	CU_ASSERT_FATAL(dkim_key_txt_record(ed_key, ed_rec, sizeof(ed_rec)) > 0);
	const char *rsa_p = strstr(rsa_rec, "p=") + 2, *ed_p = strstr(ed_rec, "p=") + 2;
	CU_ASSERT_EQUAL(rec_check(rsa_key, rsa_rec, &flags), 0);
	CU_ASSERT_EQUAL(flags, 0);
	CU_ASSERT_EQUAL(rec_check(ed_key, ed_rec, NULL), 0);
	/* the RFC 8463 Appendix A record of this very key */
	CU_ASSERT_EQUAL(
		rec_check(
			ed_key,
			"v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=", NULL),
		0);
	/* FWS around tags and inside p=, no v=, k= defaulting to rsa, a final ';' */
	int n = snprintf(buf, sizeof(buf), " k = rsa ;\r\n\tp=%.40s \r\n %s ;", rsa_p, rsa_p + 40);
	CU_ASSERT_FATAL(n > 0 && (size_t)n < sizeof(buf));
	CU_ASSERT_EQUAL(rec_check(rsa_key, buf, NULL), 0);
	snprintf(buf, sizeof(buf), "p=%s", rsa_p);
	CU_ASSERT_EQUAL(rec_check(rsa_key, buf, NULL), 0);
	CU_ASSERT_EQUAL(rec_check(ed_key, buf, NULL), -EKEYREJECTED); /* k= defaults to rsa */
	snprintf(buf, sizeof(buf), "v=DKIM1; k=ed25519; p=%s", ed_p);
	CU_ASSERT_EQUAL(rec_check(rsa_key, buf, NULL), -EKEYREJECTED);
	/* another key of the right type */
	struct dkim_key *other;
	CU_ASSERT_EQUAL_FATAL(
		dkim_key_generate(DKIM_ALG_ED25519_SHA256, 0, &other, err, sizeof(err)), 0);
	CU_ASSERT_FATAL(dkim_key_txt_record(other, buf, sizeof(buf)) > 0);
	CU_ASSERT_EQUAL(rec_check(ed_key, buf, NULL), -EKEYREJECTED);
	dkim_key_free(other);
	/* revoked, malformed, not for us */
	CU_ASSERT_EQUAL(rec_check(rsa_key, "v=DKIM1; k=rsa; p=", NULL), -EKEYREVOKED);
	CU_ASSERT_EQUAL(rec_check(rsa_key, "v=DKIM1; p= ;", NULL), -EKEYREVOKED);
	CU_ASSERT_EQUAL(rec_check(rsa_key, "v=DKIM1; k=rsa", NULL), -EINVAL);
	CU_ASSERT_EQUAL(rec_check(rsa_key, "hello world", NULL), -EINVAL);
	CU_ASSERT_EQUAL(rec_check(rsa_key, "", NULL), -EINVAL);
	CU_ASSERT_EQUAL(rec_check(rsa_key, "=x; p=abcd", NULL), -EINVAL);
	CU_ASSERT_EQUAL(rec_check(rsa_key, "v=DKIM1; k=rsa; p=!!!!", NULL), -EINVAL);
	CU_ASSERT_EQUAL(rec_check(rsa_key, "v=DKIM1; k=rsa; p=abc", NULL), -EINVAL);
	CU_ASSERT_EQUAL(rec_check(rsa_key, "v=DKIM1; k=rsa; p=QUJDRA==", NULL), -EINVAL);
	CU_ASSERT_EQUAL(rec_check(ed_key, "v=DKIM1; k=ed25519; p=QUJDRA==", NULL), -EINVAL);
	snprintf(buf, sizeof(buf), "k=rsa; v=DKIM1; p=%s", rsa_p);
	CU_ASSERT_EQUAL(rec_check(rsa_key, buf, NULL), -EINVAL); /* v= not first */
	snprintf(buf, sizeof(buf), "v=DKIM2; p=%s", rsa_p);
	CU_ASSERT_EQUAL(rec_check(rsa_key, buf, NULL), -EINVAL);
	snprintf(buf, sizeof(buf), "v=DKIM1; p=%s; p=%s", rsa_p, rsa_p);
	CU_ASSERT_EQUAL(rec_check(rsa_key, buf, NULL), -EINVAL); /* duplicate tag */
	/* h=, s=, t= */
	snprintf(buf, sizeof(buf), "v=DKIM1; h=sha1; p=%s", rsa_p);
	CU_ASSERT_EQUAL(rec_check(rsa_key, buf, NULL), -EPROTONOSUPPORT);
	snprintf(buf, sizeof(buf), "v=DKIM1; h=sha1 : SHA256; p=%s", rsa_p);
	CU_ASSERT_EQUAL(rec_check(rsa_key, buf, NULL), 0);
	snprintf(buf, sizeof(buf), "v=DKIM1; s=tlsrpt; p=%s", rsa_p);
	CU_ASSERT_EQUAL(rec_check(rsa_key, buf, NULL), -EPROTONOSUPPORT);
	snprintf(buf, sizeof(buf), "v=DKIM1; s=email:tlsrpt; p=%s", rsa_p);
	CU_ASSERT_EQUAL(rec_check(rsa_key, buf, NULL), 0);
	snprintf(buf, sizeof(buf), "v=DKIM1; t=s:y; p=%s", rsa_p);
	CU_ASSERT_EQUAL(rec_check(rsa_key, buf, &flags), 0);
	CU_ASSERT_EQUAL(flags, DKIM_RECORD_TESTING);
	/* bounded: a huge record is refused, not copied */
	char *huge = malloc(20000);
	CU_ASSERT_PTR_NOT_NULL_FATAL(huge);
	memset(huge, 'A', 19999);
	memcpy(huge, "p=", 2);
	huge[19999] = '\0';
	CU_ASSERT_EQUAL(rec_check(rsa_key, huge, NULL), -EINVAL);
	free(huge);
}

/* ---- signing domain ------------------------------------------------------ */

static void test_choose_domain(void)
{
	const char *const domains[] = {"example.com", "fleet.example.net", "default.example"};
	CU_ASSERT_EQUAL(dkim_choose_domain(domains, 3, 2, "Fleet.Example.NET", "example.com"), 1);
	CU_ASSERT_EQUAL(dkim_choose_domain(domains, 3, 2, "other.org", "example.com"), 0);
	CU_ASSERT_EQUAL(dkim_choose_domain(domains, 3, 2, "other.org", "nope.org"), 2);
	CU_ASSERT_EQUAL(dkim_choose_domain(domains, 3, -1, "other.org", NULL), -ENOENT);
	CU_ASSERT_EQUAL(dkim_choose_domain(domains, 3, -1, NULL, "EXAMPLE.com"), 0);
	CU_ASSERT_EQUAL(dkim_choose_domain(domains, 3, 7, "", ""), -ENOENT);
	/* subdomains are not their parents */
	CU_ASSERT_EQUAL(dkim_choose_domain(domains, 3, -1, "sub.example.com", NULL), -ENOENT);

	char d[64];
	const char *v = "Device 17 <dev17@Fleet.Example.NET>";
	CU_ASSERT_EQUAL(dkim_address_domain(v, strlen(v), d, sizeof(d)), 17);
	CU_ASSERT_STRING_EQUAL(d, "fleet.example.net");
	v = "\"a@evil.com\" <x@good.org> (via y@z.com)";
	CU_ASSERT_EQUAL(dkim_address_domain(v, strlen(v), d, sizeof(d)), 8);
	CU_ASSERT_STRING_EQUAL(d, "good.org");
	v = "<bounce@mail.example.com>";
	CU_ASSERT(dkim_address_domain(v, strlen(v), d, sizeof(d)) > 0);
	CU_ASSERT_STRING_EQUAL(d, "mail.example.com");
	v = "no address here";
	CU_ASSERT_EQUAL(dkim_address_domain(v, strlen(v), d, sizeof(d)), -ENOENT);
	v = "x@";
	CU_ASSERT_EQUAL(dkim_address_domain(v, strlen(v), d, sizeof(d)), -ENOENT);
	v = "a@very-long-domain.example.com";
	CU_ASSERT_EQUAL(dkim_address_domain(v, strlen(v), d, 8), -ENOSPC);
}

/* From: values a device or a mail client may send, and the domain DMARC would take. */
static void test_from_domain(void)
{
	static const struct {
		const char *value, *want; /* want NULL: -ENOENT */
	} cases[] = {
		{"Joe SixPack <joe@football.example.com>", "football.example.com"},
		{" joe@Example.COM", "example.com"},
		{"\"Doe, John\" <j@doe.example>", "doe.example"},
		{"\"a@evil.example\" <x@good.example>", "good.example"},
		{"\"quote \\\" <a@evil.example>\" <q@good.example>", "good.example"},
		{"(sent by a@evil.example) x@good.example", "good.example"},
		{"x@good.example (Joe <joe@evil.example>)", "good.example"},
		{"Joe (nested (a@evil.example) \\) c) <joe@good.example>", "good.example"},
		{"\r\n\t\"Camera 3\"\r\n\t<cam3@fleet.example>\r\n", "fleet.example"},
		{"first@one.example, second@two.example", "one.example"},
		{"A <a@one.example>, B <b@two.example>", "one.example"},
		{"Fleet: dev1@fleet.example, dev2@other.example;", "fleet.example"},
		{"Fleet:\r\n dev1@fleet.example;", "fleet.example"},
		{"Fleet: Dev 1 <dev1@fleet.example>;, b@other.example", "fleet.example"},
		{"undisclosed-recipients:;", NULL},
		{"Empty:;, real@after.example", "after.example"},
		{"<@route1.example,@route2.example:user@final.example>", "final.example"},
		{"\"weird@local\"@quoted.example", "quoted.example"},
		{"user@example . com", "example.com"},
		{"user@example.com.", "example.com"},
		{"=?utf-8?q?Caf=C3=A9?= <cafe@fleet.example>", "fleet.example"},
		{"a@b.example <c@angle.example>", "angle.example"},
		{"Joe <joe@open.example", "open.example"},
		{"user@[192.0.2.1]", NULL},
		{"user@[192.0.2.1], other@second.example", NULL},
		{"no address at all", NULL},
		{"", NULL},
		{"user@", NULL},
		{"user@bad..example", NULL},
		{"user@ex/ample.com", NULL},
		{"user@.example", NULL},
		{"(unterminated a@evil.example", NULL},
		{"\"unterminated a@evil.example", NULL},
		{"<>", NULL},
		{"@", NULL},
		{"\\", NULL},
		{"a@b\\", "b"},
	};
	char d[256];
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const char *v = cases[i].value;
		memset(d, 'X', sizeof(d));
		int rc = dkim_from_domain(v, strlen(v), d, sizeof(d));
		bool ok = cases[i].want ? rc == (int)strlen(cases[i].want) &&
						  strcmp(d, cases[i].want) == 0
					: rc == -ENOENT;
		CU_ASSERT(ok);
		if (!ok)
			fprintf(stderr, "From: '%s': rc %d '%s', want '%s'\n", v, rc,
				rc > 0 ? d : "", cases[i].want ? cases[i].want : "-ENOENT");
	}
	const char *v = "a@very-long-domain.example.com";
	CU_ASSERT_EQUAL(dkim_from_domain(v, strlen(v), d, 8), -ENOSPC);
	CU_ASSERT_EQUAL(dkim_from_domain(v, strlen(v), d, 0), -ENOSPC);
	/* the length bounds the read: the domain stops where len does */
	CU_ASSERT_EQUAL(dkim_from_domain(v, 10, d, sizeof(d)), 8);
	CU_ASSERT_STRING_EQUAL(d, "very-lon");
}

static struct dkim_signer *domain_signer2(const char *domain, struct dkim_key *rsa,
					  struct dkim_key *ed, enum dkim_canon bc, bool both)
{
	struct dkim_signer_config c;
	struct dkim_signer *s = NULL;
	char err[256];
	dkim_signer_config_init(&c);
	c.hash_both_bodies = both;
	c.domain = domain;
	c.selector = "s1";
	c.rsa_key = rsa;
	c.ed25519_key = ed;
	c.body_canon = bc;
	CU_ASSERT_EQUAL(dkim_signer_create(&c, &s, err, sizeof(err)), 0);
	return s;
}

static struct dkim_signer *domain_signer(const char *domain, struct dkim_key *rsa,
					 struct dkim_key *ed, enum dkim_canon bc)
{
	return domain_signer2(domain, rsa, ed, bc, false);
}

/* The From: domain is read from the buffered header block; the message moves to its signer. */
static void test_sign_from_and_move(void)
{
	const char *msg = "Received: from cam by relay\r\n"
			  "X-From: spoof@evil.example\r\n"
			  "From : \"Camera, 3\"\r\n"
			  "\t<cam3@Fleet.Example> (gate)\r\n"
			  "To: ops@example.net\r\n"
			  "From: second@evil.example\r\n"
			  "Subject: motion\r\n"
			  "\r\n"
			  "frame   1022 \r\n\r\n\r\n";
	size_t len = strlen(msg), hdr_end = strstr(msg, "\r\n\r\n") - msg + 4;
	struct dkim_signer *a =
		domain_signer("envelope.example", rsa_key, NULL, DKIM_CANON_RELAXED);
	struct dkim_signer *b = domain_signer("fleet.example", NULL, ed_key, DKIM_CANON_RELAXED);
	struct dkim_signer *c = domain_signer("simple.example", rsa_key, NULL, DKIM_CANON_SIMPLE);
	CU_ASSERT_FATAL(a != NULL && b != NULL && c != NULL);
	char d[256], out[8192];
	const char *hdr;
	size_t hdr_len;
	CU_ASSERT_EQUAL(dkim_sign_from_domain(a, d, sizeof(d)), -EINVAL); /* not started */
	CU_ASSERT_EQUAL(dkim_sign_move(b, a), -EINVAL);

	/* every split point: feed, move after the header block, finish on b, verify */
	for (size_t split = 1; split < len; split += 3) {
		CU_ASSERT_EQUAL_FATAL(dkim_sign_begin(a, 1528637909), 0);
		CU_ASSERT_EQUAL(dkim_sign_update(a, msg, split), 0);
		if (split >= hdr_end) {
			CU_ASSERT_EQUAL(dkim_sign_from_domain(a, d, sizeof(d)), 13);
			CU_ASSERT_STRING_EQUAL(d, "fleet.example");
		}
		/* simple body canonicalisation cannot take over a relaxed body in progress */
		int want_c = split > hdr_end ? -EXDEV : 0;
		int rc = dkim_sign_move(c, a);
		CU_ASSERT_EQUAL(rc, want_c);
		struct dkim_signer *from = rc == 0 ? c : a;
		CU_ASSERT_EQUAL(dkim_sign_move(b, from), 0);
		CU_ASSERT_EQUAL(dkim_sign_update(from, "x", 1), -EINVAL); /* idle now */
		CU_ASSERT_EQUAL(dkim_sign_update(b, msg + split, len - split), 0);
		CU_ASSERT_EQUAL_FATAL(dkim_sign_final(b, &hdr, &hdr_len), 0);
		CU_ASSERT_PTR_NOT_NULL(strstr(hdr, "d=fleet.example;"));
		CU_ASSERT_PTR_NOT_NULL(strstr(hdr, "a=ed25519-sha256;"));
		CU_ASSERT_PTR_NOT_NULL(strstr(hdr, "t=1528637909;"));
		snprintf(out, sizeof(out), "%.*s", (int)hdr_len, hdr);
		CU_ASSERT_EQUAL(verify_all(out, msg, 1), 0);
	}
	/* signers that hash the body both ways move across canonicalisations mid-body */
	struct dkim_signer *a2 =
		domain_signer2("envelope.example", rsa_key, NULL, DKIM_CANON_RELAXED, true);
	struct dkim_signer *c2 =
		domain_signer2("simple.example", NULL, ed_key, DKIM_CANON_SIMPLE, true);
	CU_ASSERT_FATAL(a2 != NULL && c2 != NULL);
	for (size_t split = 1; split < len; split += 5) {
		for (int last = 0; last < 2; last++) {
			CU_ASSERT_EQUAL_FATAL(dkim_sign_begin(a2, 1528637909), 0);
			CU_ASSERT_EQUAL(dkim_sign_update(a2, msg, split), 0);
			CU_ASSERT_EQUAL(dkim_sign_move(c2, a2), 0); /* relaxed -> simple */
			CU_ASSERT_EQUAL(dkim_sign_update(c2, msg + split, (len - split) / 2), 0);
			struct dkim_signer *fin = c2;
			if (last) {
				/* and on to a one-way relaxed signer: the alternate hash again */
				CU_ASSERT_EQUAL(dkim_sign_move(b, c2), 0);
				fin = b;
			}
			size_t done = split + (len - split) / 2;
			CU_ASSERT_EQUAL(dkim_sign_update(fin, msg + done, len - done), 0);
			CU_ASSERT_EQUAL_FATAL(dkim_sign_final(fin, &hdr, &hdr_len), 0);
			CU_ASSERT_PTR_NOT_NULL(
				strstr(hdr, last ? "c=relaxed/relaxed;" : "c=relaxed/simple;"));
			snprintf(out, sizeof(out), "%.*s", (int)hdr_len, hdr);
			CU_ASSERT_EQUAL(verify_all(out, msg, 1), 0);
		}
	}
	/* a one-way signer's message moved into a both-ways one cannot go on to the other kind */
	if (hdr_end + 2 < len) {
		CU_ASSERT_EQUAL_FATAL(dkim_sign_begin(b, 1), 0);
		CU_ASSERT_EQUAL(dkim_sign_update(b, msg, hdr_end + 2), 0);
		CU_ASSERT_EQUAL(dkim_sign_move(a2, b), 0);
		CU_ASSERT_EQUAL(dkim_sign_move(c2, a2), -EXDEV);
	}
	dkim_signer_free(a2);
	dkim_signer_free(c2);
	/* a header block larger than the destination's bound */
	struct dkim_signer_config cfg;
	char err[256];
	struct dkim_signer *small;
	dkim_signer_config_init(&cfg);
	cfg.domain = "small.example";
	cfg.selector = "s1";
	cfg.rsa_key = rsa_key;
	cfg.max_header_bytes = 1024;
	CU_ASSERT_EQUAL_FATAL(dkim_signer_create(&cfg, &small, err, sizeof(err)), 0);
	char *big = malloc(4096);
	CU_ASSERT_PTR_NOT_NULL_FATAL(big);
	int n = snprintf(big, 4096, "From: a@b.example\r\nX-Pad: %02000d\r\n\r\nbody\r\n", 0);
	CU_ASSERT_EQUAL(dkim_sign_begin(a, 1), 0);
	CU_ASSERT_EQUAL(dkim_sign_update(a, big, (size_t)n), 0);
	CU_ASSERT_EQUAL(dkim_sign_move(small, a), -EMSGSIZE);
	/* a failed source passes its error on */
	CU_ASSERT_EQUAL(dkim_sign_begin(small, 1), 0);
	CU_ASSERT_EQUAL(dkim_sign_update(small, big, (size_t)n), -EMSGSIZE);
	CU_ASSERT_EQUAL(dkim_sign_move(a, small), -EMSGSIZE);
	free(big);
	/* no From: field; From: without a usable domain */
	const char *nofrom = "To: a@b.example\r\nX-From: c@d.example\r\n\r\nx\r\n";
	CU_ASSERT_EQUAL(dkim_sign_begin(a, 1), 0);
	CU_ASSERT_EQUAL(dkim_sign_update(a, nofrom, strlen(nofrom)), 0);
	CU_ASSERT_EQUAL(dkim_sign_from_domain(a, d, sizeof(d)), -ENOENT);
	const char *group = "From: undisclosed:;\r\n\r\nx\r\n";
	CU_ASSERT_EQUAL(dkim_sign_begin(a, 1), 0);
	CU_ASSERT_EQUAL(dkim_sign_update(a, group, strlen(group)), 0);
	CU_ASSERT_EQUAL(dkim_sign_from_domain(a, d, sizeof(d)), -ENOENT);
	/* the header block without its blank line yet (still in the header state) */
	const char *partial = "Subject: s\r\nFrom: Dev <dev@Part.Example>\r\nTo: x@y.example\r\n";
	CU_ASSERT_EQUAL(dkim_sign_begin(a, 1), 0);
	CU_ASSERT_EQUAL(dkim_sign_update(a, partial, strlen(partial)), 0);
	CU_ASSERT_EQUAL(dkim_sign_from_domain(a, d, sizeof(d)), 12);
	CU_ASSERT_STRING_EQUAL(d, "part.example");
	CU_ASSERT_EQUAL(dkim_sign_from_domain(a, d, 5), -ENOSPC);
	dkim_signer_free(small);
	dkim_signer_free(a);
	dkim_signer_free(b);
	dkim_signer_free(c);
}

/* ---- configuration table -------------------------------------------------- */

static void test_table(void)
{
	char text[2048], err[256];
	struct cfg_file *cf;
	struct cfg_report r = {0};
	struct dkim_table *t;
	snprintf(text, sizeof(text),
		 "[dkim]\ndefault_domain = fleet.example\n"
		 "[dkim \"fleet.example\"]\nselector = s1\nkey = %s\n"
		 "[dkim \"Example.COM\"]\nselector = rsa1\nkey = %s\n"
		 "algorithm = rsa-sha256+ed25519-sha256\ned25519_key = %s\n"
		 "ed25519_selector = ed1\ncanonicalization = simple/relaxed\n"
		 "headers = From:Subject\noversign_from = no\nbody_length = yes\n"
		 "expire = 7d\nmax_header_size = 32K\n",
		 rsa_path, rsa_path, ed_path);
	CU_ASSERT_EQUAL_FATAL(cfg_parse_string(text, "t.conf", &cf, err, sizeof(err)), 0);
	CU_ASSERT_EQUAL(dkim_table_load(cf, &t, &r), 0);
	CU_ASSERT_EQUAL(r.count, 0);
	CU_ASSERT_PTR_NOT_NULL_FATAL(t);
	CU_ASSERT_EQUAL(t->count, 2);
	CU_ASSERT_EQUAL(t->default_index, 0);
	const struct dkim_domain *d = dkim_table_choose(t, "example.com", NULL);
	CU_ASSERT_PTR_NOT_NULL_FATAL(d);
	CU_ASSERT_STRING_EQUAL(d->domain, "Example.COM");
	CU_ASSERT_PTR_NOT_NULL(d->config.rsa_key);
	CU_ASSERT_PTR_NOT_NULL(d->config.ed25519_key);
	CU_ASSERT_STRING_EQUAL(d->config.ed25519_selector, "ed1");
	CU_ASSERT_EQUAL(d->config.header_canon, DKIM_CANON_SIMPLE);
	CU_ASSERT_EQUAL(d->config.body_canon, DKIM_CANON_RELAXED);
	CU_ASSERT_EQUAL(d->config.header_count, 2);
	CU_ASSERT_FALSE(d->config.oversign_from);
	CU_ASSERT_TRUE(d->config.body_length_tag);
	CU_ASSERT_EQUAL(d->config.expire_after_s, 7 * 86400);
	CU_ASSERT_EQUAL(d->config.max_header_bytes, 32768);
	/* only header canonicalisations differ: one body hash is enough */
	CU_ASSERT_FALSE(d->config.hash_both_bodies);
	d = dkim_table_choose(t, "other.org", "nope.net");
	CU_ASSERT(d && strcmp(d->domain, "fleet.example") == 0);
	/* a signer from the table signs and verifies (dual) */
	struct dkim_signer *s;
	char out[8192];
	d = dkim_table_choose(t, NULL, "example.com");
	CU_ASSERT_EQUAL_FATAL(dkim_signer_create(&d->config, &s, err, sizeof(err)), 0);
	const char *msg = "From: a@example.com\r\nSubject: x\r\n\r\nhi\r\n";
	CU_ASSERT(sign_msg(s, msg, strlen(msg), 0, out, sizeof(out)) > 0);
	CU_ASSERT_EQUAL(verify_all(out, msg, 2), 0);
	dkim_signer_free(s);
	dkim_table_free(t);
	cfg_free(cf);

	/* every problem reported with its line */
	snprintf(text, sizeof(text),
		 "[dkim]\ndefault_domain = missing.example\n"
		 "[dkim \"a.example\"]\nkey = %s\nalgorithm = ed25519-sha256\n"
		 "[dkim \"b.example\"]\nselector = s\nkey = /nonexistent/k.pem\n"
		 "canonicalization = loose\nexpire = soon\n"
		 "[dkim \"c.example\"]\nselector = s\nkey = %s\nalgorithm = "
		 "rsa-sha256+ed25519-sha256\n"
		 "[dkim \"d.example\"]\nselector = s\nkey = %s\nheaders = To:Subject\n",
		 ed_path, ed_path, rsa_path);
	CU_ASSERT_EQUAL_FATAL(cfg_parse_string(text, "bad.conf", &cf, err, sizeof(err)), 0);
	CU_ASSERT_EQUAL(dkim_table_load(cf, &t, &r), -EINVAL);
	CU_ASSERT_PTR_NULL(t);
	CU_ASSERT_PTR_NOT_NULL(strstr(r.text, "bad.conf:3: [dkim \"a.example\"] needs selector"));
	CU_ASSERT_PTR_NOT_NULL(
		strstr(r.text, "bad.conf:8: /nonexistent/k.pem: key file not found"));
	CU_ASSERT_PTR_NOT_NULL(strstr(r.text, "bad.conf:9: canonicalization"));
	CU_ASSERT_PTR_NOT_NULL(strstr(r.text, "bad.conf:10: expire"));
	CU_ASSERT_PTR_NOT_NULL(strstr(r.text, "Ed25519 key, but the algorithm is rsa-sha256"));
	CU_ASSERT_PTR_NOT_NULL(strstr(r.text, "dual signing needs"));
	CU_ASSERT_PTR_NOT_NULL(strstr(r.text, "must include From"));
	CU_ASSERT(r.count >= 7);
	if (r.count < 7)
		fprintf(stderr, "%s", r.text);
	cfg_free(cf);
}

/* [dkim] domain_from: header (default), envelope, default. */
static void test_table_domain_from(void)
{
	static const struct {
		const char *policy;
		const char *from, *env, *want; /* want NULL: no domain */
	} cases[] = {
		{"", "b.example", "a.example", "b.example"},
		{"", "other.example", "a.example", "a.example"},
		{"", "other.example", "other.example", "c.example"},
		{"domain_from = header\n", "b.example", NULL, "b.example"},
		{"domain_from = envelope\n", "b.example", "a.example", "a.example"},
		{"domain_from = envelope\n", "b.example", NULL, "c.example"},
		{"domain_from = default\n", "b.example", "a.example", "c.example"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char text[2048], err[256];
		struct cfg_file *cf;
		struct cfg_report r = {0};
		struct dkim_table *t;
		snprintf(text, sizeof(text),
			 "[dkim]\ndefault_domain = c.example\n%s"
			 "[dkim \"a.example\"]\nselector = s\nkey = %s\n"
			 "[dkim \"b.example\"]\nselector = s\nkey = %s\n"
			 "[dkim \"c.example\"]\nselector = s\nkey = %s\n",
			 cases[i].policy, rsa_path, rsa_path, rsa_path);
		CU_ASSERT_EQUAL_FATAL(cfg_parse_string(text, "t.conf", &cf, err, sizeof(err)), 0);
		CU_ASSERT_EQUAL_FATAL(dkim_table_load(cf, &t, &r), 0);
		const struct dkim_domain *d = dkim_table_choose(t, cases[i].from, cases[i].env);
		CU_ASSERT(d != NULL && strcmp(d->domain, cases[i].want) == 0);
		CU_ASSERT(d != NULL && !d->config.hash_both_bodies); /* all relaxed */
		dkim_table_free(t);
		cfg_free(cf);
	}
	/* public_addr, for mxdkim check */
	{
		char err[256];
		struct cfg_file *cf;
		struct cfg_report r = {0};
		struct dkim_table *t;
		CU_ASSERT_EQUAL_FATAL(cfg_parse_string("[dkim]\npublic_addr = 203.0.113.5\n",
						       "t.conf", &cf, err, sizeof(err)),
				      0);
		CU_ASSERT_EQUAL_FATAL(dkim_table_load(cf, &t, &r), 0);
		CU_ASSERT_EQUAL(t->public_addr, 0xcb007105u);
		CU_ASSERT_EQUAL(t->domain_from, DKIM_FROM_HEADER);
		dkim_table_free(t);
		cfg_free(cf);
	}
	/* body canonicalisations differ: with domain_from = header every signer hashes both */
	for (int envelope = 0; envelope < 2; envelope++) {
		char text[1024], err[256];
		struct cfg_file *cf;
		struct cfg_report r = {0};
		struct dkim_table *t;
		snprintf(text, sizeof(text),
			 "[dkim]\n%s[dkim \"a.example\"]\nselector = s\nkey = %s\n"
			 "[dkim \"b.example\"]\nselector = s\nkey = %s\n"
			 "canonicalization = simple/simple\n",
			 envelope ? "domain_from = envelope\n" : "", rsa_path, rsa_path);
		CU_ASSERT_EQUAL_FATAL(cfg_parse_string(text, "t.conf", &cf, err, sizeof(err)), 0);
		CU_ASSERT_EQUAL_FATAL(dkim_table_load(cf, &t, &r), 0);
		CU_ASSERT_EQUAL(t->domains[0].config.hash_both_bodies, !envelope);
		CU_ASSERT_EQUAL(t->domains[1].config.hash_both_bodies, !envelope);
		dkim_table_free(t);
		cfg_free(cf);
	}
	const char *bad[] = {"[dkim]\ndomain_from = from\n", "[dkim]\ndomain_from = default\n",
			     "[dkim]\npublic_addr = 203.0.113\n"};
	const char *msg[] = {"t.conf:2: domain_from = from: expected header, envelope or default",
			     "t.conf:2: domain_from = default needs default_domain",
			     "t.conf:2: public_addr = 203.0.113: expected an IPv4 address"};
	for (int i = 0; i < 3; i++) {
		char err[256];
		struct cfg_file *cf;
		struct cfg_report r = {0};
		struct dkim_table *t;
		CU_ASSERT_EQUAL_FATAL(cfg_parse_string(bad[i], "t.conf", &cf, err, sizeof(err)), 0);
		CU_ASSERT_EQUAL(dkim_table_load(cf, &t, &r), -EINVAL);
		CU_ASSERT_PTR_NULL(t);
		CU_ASSERT_PTR_NOT_NULL(strstr(r.text, msg[i]));
		cfg_free(cf);
	}
}

static CU_TestInfo canon_tests[] = {
	{"rfc6376_3_4_6_example", test_rfc6376_example},
	{"body_cases", test_body_cases},
	{"header_relaxed", test_header_relaxed},
	{"stream_random_splits", test_stream_random},
	{"differential_all_scans", test_canon_differential},
	{"block_edges_all_scans", test_canon_block_edges},
	{"header_random", test_header_random},
	CU_TEST_INFO_NULL,
};

static CU_TestInfo sign_tests[] = {
	{"body_hash_values", test_body_hash_values},
	{"rfc8463_key", test_rfc8463_key},
	{"dual_sign_one_body_hash", test_dual_sign_one_body_hash},
	{"rfc8463_foreign_signature", test_rfc8463_foreign_signature},
	{"sign_verify_all_modes", test_sign_verify_all_modes},
	{"stream_equals_oneshot", test_stream_equals_oneshot},
	{"duplicate_headers_bottom_up", test_duplicate_headers_bottom_up},
	{"tags_and_options", test_tags_and_options},
	{"unsignable", test_unsignable},
	{"field_limits", test_field_limits},
	{"key_missing", test_key_missing},
	{"key_not_a_key", test_key_not_a_key},
	{"key_unreadable", test_key_unreadable},
	{"key_wrong_type", test_key_wrong_type},
	{"key_rsa_size", test_key_rsa_size},
	{"key_generate", test_key_generate},
	{"key_record", test_key_record},
	{"choose_domain", test_choose_domain},
	{"from_domain", test_from_domain},
	{"sign_from_and_move", test_sign_from_and_move},
	{"config_domain_from", test_table_domain_from},
	{"config_table", test_table},
	CU_TEST_INFO_NULL,
};

static CU_SuiteInfo suites[] = {
	{"dkim_canon", NULL, NULL, NULL, NULL, canon_tests},
	{"dkim_sign", suite_init, suite_clean, NULL, NULL, sign_tests},
	CU_SUITE_INFO_NULL,
};

int main(void)
{
	return mx_test_run(suites);
}
