/*
 * sign.c - the streaming DKIM signer (RFC 6376 sections 3.5 to 3.7, 5).
 *
 * Per message: dkim_sign_begin() resets the state; dkim_sign_update() copies
 * header bytes into a bounded buffer until the blank line, then passes every
 * body byte through the body canonicaliser into the body hash; and
 * dkim_sign_final() picks the fields to sign, builds each DKIM-Signature
 * field with an empty b= (3.7), hashes the canonical fields, signs and
 * appends b=.
 *
 * OpenSSL objects (digest contexts, the RSA sign context, the Ed25519 sign
 * context) are made once in dkim_signer_create() with a pre-fetched SHA-256
 * and reused for every message: no allocation and no algorithm fetch on the
 * per-message path.  A signer is per core and not thread-safe.
 *
 * Ed25519 (RFC 8463 section 3): the signed data is the SHA-256 hash of the
 * canonical header data, signed with PureEdDSA; RSA signs the same hash with
 * PKCS#1 v1.5 (EMSA-PKCS1-v1_5 with SHA-256, RFC 6376 3.3.1).  Both signatures
 * of a dual-signed message share the body hash and the hash state of the
 * signed fields; only their own DKIM-Signature field differs.
 */
#include "dkim.h"
#include "dkim_canon.h"
#include "dkim_internal.h"
#include "core.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <openssl/rsa.h>

#define LINE_MAX_COLS 76 /* fold DKIM-Signature lines before this column */
#define OUT_CAP 16384	 /* both DKIM-Signature fields */
#define SIG_MAX 1024	 /* bytes; an RSA-4096 signature is 512 */

const char *const dkim_default_headers[] = {
	"From",	       "To",	     "Cc",	     "Subject",	     "Date",
	"Message-ID",  "Reply-To",   "MIME-Version", "Content-Type", "Content-Transfer-Encoding",
	"In-Reply-To", "References",
};
const size_t dkim_default_header_count = sizeof(dkim_default_headers) / sizeof(char *);

enum sign_state { ST_IDLE, ST_HEADERS, ST_BODY, ST_DONE, ST_ERROR };

struct hfield {
	uint32_t off;
	uint32_t len;	   /* with the final CRLF */
	uint32_t name_len; /* without WSP before the colon; 0 if no colon */
};

struct sig_alg {
	enum dkim_alg alg;
	EVP_PKEY *pkey;
	EVP_PKEY_CTX *rsa_ctx; /* RSA: sign_init done once */
	EVP_MD_CTX *ed_ctx;    /* Ed25519 */
	bool ed_ready;	       /* ed_ctx initialised and reusable */
	char prefix[640];      /* "DKIM-Signature: v=1; a=..; c=..; d=..; s=..;" */
	size_t prefix_len, prefix_col;
};

struct dkim_signer {
	char *domain;
	char *selector;
	char *ed25519_selector;
	char **headers;
	size_t *header_lens; /* strlen of each, made once: field matching is per message */
	size_t header_count;
	bool header_relaxed, body_relaxed;
	bool oversign_from, body_length_tag;
	uint32_t expire_after_s;
	size_t max_header_bytes;

	struct sig_alg algs[2];
	int alg_count;
	EVP_MD *sha256;
	EVP_MD_CTX *body_md, *hdr_md, *tmp_md;
	struct dkim_body_canon body;
	/* hash_both_bodies: the body in the other canonicalisation, for dkim_sign_move() */
	EVP_MD_CTX *alt_md;
	struct dkim_body_canon alt_body;
	bool alt_valid; /* alt_body holds this message (false after a move from a one-way signer) */

	/* message state */
	enum sign_state state;
	int err_code;
	int64_t t;
	int eoh; /* header end detector: 0 mid-line, 1 CR, 2 line start, 3 CR at line start */
	uint8_t *hbuf;
	size_t hlen;
	struct hfield *fields;
	size_t field_count;
	bool *used;
	const char *hlist[DKIM_MAX_SIGNED_FIELDS];
	size_t hlist_len[DKIM_MAX_SIGNED_FIELDS];
	size_t hlist_count;
	uint8_t *scratch;
	size_t scratch_cap;
	char *out;
	size_t out_len;
	char errmsg[256];
	struct dkim_signer_stats stats;
};

static void build_fixed_prefix(struct dkim_signer *s, struct sig_alg *a);

void dkim_signer_config_init(struct dkim_signer_config *c)
{
	memset(c, 0, sizeof(*c));
	c->header_canon = DKIM_CANON_RELAXED;
	c->body_canon = DKIM_CANON_RELAXED;
	c->oversign_from = true;
	c->max_header_bytes = DKIM_DEFAULT_MAX_HEADER_BYTES;
}

static int fail(struct dkim_signer *s, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int fail(struct dkim_signer *s, int code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(s->errmsg, sizeof(s->errmsg), fmt, ap);
	va_end(ap);
	s->state = ST_ERROR;
	s->err_code = code;
	s->stats.errors++;
	return code;
}

/* d= and s= are DNS names: letters, digits, '-', '.', '_' (no tag injection). */
static bool valid_dns_name(const char *n)
{
	size_t len = strlen(n);
	if (len == 0 || len > 253 || n[0] == '.' || n[len - 1] == '.')
		return false;
	for (size_t i = 0; i < len; i++) {
		char ch = n[i];
		if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
		      (ch >= '0' && ch <= '9') || ch == '-' || ch == '.' || ch == '_'))
			return false;
	}
	return true;
}

/* RFC 5322 ftext: printable US-ASCII except ':'. */
static bool valid_field_name(const char *n)
{
	size_t len = strlen(n);
	if (len == 0 || len > 128)
		return false;
	for (size_t i = 0; i < len; i++)
		if ((unsigned char)n[i] < 33 || (unsigned char)n[i] > 126 || n[i] == ':')
			return false;
	return true;
}

static int alg_setup(struct dkim_signer *s, struct sig_alg *a, struct dkim_key *key,
		     enum dkim_alg want, char *err, size_t errlen)
{
	if (key->alg != want) {
		snprintf(err, errlen, "%s configured with a key that is not for it",
			 dkim_alg_name(want));
		return -EINVAL;
	}
	a->alg = want;
	if (!EVP_PKEY_up_ref(key->pkey))
		return -ENOMEM;
	a->pkey = key->pkey;
	if (want == DKIM_ALG_RSA_SHA256) {
		a->rsa_ctx = EVP_PKEY_CTX_new_from_pkey(NULL, a->pkey, NULL);
		if (!a->rsa_ctx || EVP_PKEY_sign_init(a->rsa_ctx) <= 0 ||
		    EVP_PKEY_CTX_set_rsa_padding(a->rsa_ctx, RSA_PKCS1_PADDING) <= 0 ||
		    EVP_PKEY_CTX_set_signature_md(a->rsa_ctx, s->sha256) <= 0) {
			ERR_clear_error();
			snprintf(err, errlen, "OpenSSL: cannot prepare RSA signing");
			return -EIO;
		}
	} else {
		a->ed_ctx = EVP_MD_CTX_new();
		if (!a->ed_ctx)
			return -ENOMEM;
	}
	return 0;
}

int dkim_signer_create(const struct dkim_signer_config *c, struct dkim_signer **out, char *err,
		       size_t errlen)
{
	*out = NULL;
	if (!c->domain || !valid_dns_name(c->domain)) {
		snprintf(err, errlen, "bad signing domain (d=) '%s'", c->domain ? c->domain : "");
		return -EINVAL;
	}
	if (!c->selector || !valid_dns_name(c->selector)) {
		snprintf(err, errlen, "bad selector (s=) '%s'", c->selector ? c->selector : "");
		return -EINVAL;
	}
	if (c->ed25519_selector && !valid_dns_name(c->ed25519_selector)) {
		snprintf(err, errlen, "bad Ed25519 selector (s=) '%s'", c->ed25519_selector);
		return -EINVAL;
	}
	if (!c->rsa_key && !c->ed25519_key) {
		snprintf(err, errlen, "no signing key");
		return -EINVAL;
	}
	const char *const *names = c->headers ? c->headers : dkim_default_headers;
	size_t name_count = c->headers ? c->header_count : dkim_default_header_count;
	if (name_count > DKIM_MAX_CONFIG_HEADERS) {
		snprintf(err, errlen, "%zu header names to sign; at most %d", name_count,
			 DKIM_MAX_CONFIG_HEADERS);
		return -EINVAL;
	}
	bool has_from = false;
	for (size_t i = 0; i < name_count; i++) {
		if (!valid_field_name(names[i])) {
			snprintf(err, errlen, "bad header field name '%s'", names[i]);
			return -EINVAL;
		}
		has_from |= strcasecmp(names[i], "From") == 0;
	}
	if (!has_from) {
		/* RFC 6376 5.4: From MUST be signed. */
		snprintf(err, errlen, "the header list must include From");
		return -EINVAL;
	}

	struct dkim_signer *s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	int rc = -ENOMEM;
	s->header_relaxed = c->header_canon == DKIM_CANON_RELAXED;
	s->body_relaxed = c->body_canon == DKIM_CANON_RELAXED;
	s->oversign_from = c->oversign_from;
	s->body_length_tag = c->body_length_tag;
	s->expire_after_s = c->expire_after_s;
	s->max_header_bytes =
		c->max_header_bytes ? c->max_header_bytes : DKIM_DEFAULT_MAX_HEADER_BYTES;
	if (s->max_header_bytes > UINT32_MAX / 2) {
		snprintf(err, errlen, "max_header_bytes too large");
		rc = -EINVAL;
		goto out_free;
	}
	s->domain = strdup(c->domain);
	s->selector = strdup(c->selector);
	s->ed25519_selector = strdup(c->ed25519_selector ? c->ed25519_selector : c->selector);
	s->headers = calloc(name_count, sizeof(char *));
	s->header_lens = calloc(name_count ? name_count : 1, sizeof(size_t));
	if (!s->domain || !s->selector || !s->ed25519_selector || !s->headers || !s->header_lens)
		goto out_free;
	for (size_t i = 0; i < name_count; i++) {
		if (!(s->headers[i] = strdup(names[i])))
			goto out_free;
		s->header_lens[i] = strlen(names[i]);
		s->header_count++;
	}
	s->hbuf = malloc(s->max_header_bytes + 2);
	s->fields = calloc(DKIM_MAX_HEADER_FIELDS, sizeof(*s->fields));
	s->used = calloc(DKIM_MAX_HEADER_FIELDS, sizeof(bool));
	s->scratch_cap = s->max_header_bytes + OUT_CAP + 8;
	s->scratch = malloc(s->scratch_cap);
	s->out = malloc(OUT_CAP);
	s->sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
	s->body_md = EVP_MD_CTX_new();
	s->hdr_md = EVP_MD_CTX_new();
	s->tmp_md = EVP_MD_CTX_new();
	if (c->hash_both_bodies && !(s->alt_md = EVP_MD_CTX_new()))
		goto out_free;
	if (!s->hbuf || !s->fields || !s->used || !s->scratch || !s->out || !s->sha256 ||
	    !s->body_md || !s->hdr_md || !s->tmp_md) {
		ERR_clear_error();
		snprintf(err, errlen, "out of memory or no SHA-256 in OpenSSL");
		goto out_free;
	}
	if (c->rsa_key) {
		rc = alg_setup(s, &s->algs[s->alg_count], c->rsa_key, DKIM_ALG_RSA_SHA256, err,
			       errlen);
		s->alg_count++;
		if (rc)
			goto out_free;
	}
	if (c->ed25519_key) {
		rc = alg_setup(s, &s->algs[s->alg_count], c->ed25519_key, DKIM_ALG_ED25519_SHA256,
			       err, errlen);
		s->alg_count++;
		if (rc)
			goto out_free;
	}
	for (int i = 0; i < s->alg_count; i++) {
		build_fixed_prefix(s, &s->algs[i]);
		if (s->algs[i].prefix_len == 0) {
			snprintf(err, errlen, "domain and selector too long for the field");
			rc = -EINVAL;
			goto out_free;
		}
	}
	s->state = ST_IDLE;
	*out = s;
	return 0;
out_free:
	if (rc == -ENOMEM)
		snprintf(err, errlen, "out of memory");
	dkim_signer_free(s);
	return rc;
}

void dkim_signer_free(struct dkim_signer *s)
{
	if (!s)
		return;
	for (int i = 0; i < s->alg_count; i++) {
		EVP_PKEY_CTX_free(s->algs[i].rsa_ctx);
		EVP_MD_CTX_free(s->algs[i].ed_ctx);
		EVP_PKEY_free(s->algs[i].pkey);
	}
	EVP_MD_CTX_free(s->body_md);
	EVP_MD_CTX_free(s->alt_md);
	EVP_MD_CTX_free(s->hdr_md);
	EVP_MD_CTX_free(s->tmp_md);
	EVP_MD_free(s->sha256);
	for (size_t i = 0; i < s->header_count; i++)
		free(s->headers[i]);
	free(s->headers);
	free(s->header_lens);
	free(s->domain);
	free(s->selector);
	free(s->ed25519_selector);
	free(s->hbuf);
	free(s->fields);
	free(s->used);
	free(s->scratch);
	free(s->out);
	free(s);
}

static void body_sink(void *arg, const uint8_t *p, size_t n)
{
	/* EVP_DigestUpdate on an initialised SHA-256 context does not fail. */
	EVP_DigestUpdate((EVP_MD_CTX *)arg, p, n);
}

int dkim_sign_begin(struct dkim_signer *s, int64_t now)
{
	s->state = ST_HEADERS;
	s->err_code = 0;
	s->errmsg[0] = '\0';
	s->t = now;
	s->eoh = 2; /* an initial CRLF is an empty header block */
	s->hlen = 0;
	s->field_count = 0;
	s->hlist_count = 0;
	s->out_len = 0;
	if (!EVP_DigestInit_ex(s->body_md, s->sha256, NULL)) {
		ERR_clear_error();
		return fail(s, -EIO, "OpenSSL: SHA-256 init failed");
	}
	dkim_body_canon_init(&s->body, s->body_relaxed, body_sink, s->body_md);
	if (s->alt_md) {
		if (!EVP_DigestInit_ex(s->alt_md, s->sha256, NULL)) {
			ERR_clear_error();
			return fail(s, -EIO, "OpenSSL: SHA-256 init failed");
		}
		dkim_body_canon_init(&s->alt_body, !s->body_relaxed, body_sink, s->alt_md);
		s->alt_valid = true;
	}
	return 0;
}

/*
 * eoh after a run of bytes that holds no LF, from the state before it: only
 * the run's last byte matters, and a CR is "CR at line start" only when it
 * is the whole run and the run started a line.
 */
static int eoh_after_run(int eoh, const uint8_t *run, size_t len)
{
	if (len == 0)
		return eoh;
	if (run[len - 1] != '\r')
		return 0;
	return len == 1 && eoh == 2 ? 3 : 1;
}

/*
 * Copy header bytes until the blank line; returns bytes consumed.  Works a
 * line at a time (memchr for LF, one memcpy) rather than a byte at a time.
 */
static size_t header_feed(struct dkim_signer *s, const uint8_t *p, size_t n)
{
	size_t i = 0;
	while (i < n) {
		size_t room = s->max_header_bytes + 2 - s->hlen;
		if (room == 0) {
			s->stats.header_overflow++;
			fail(s, -EMSGSIZE, "header block larger than %zu bytes",
			     s->max_header_bytes);
			return i;
		}
		size_t avail = n - i < room ? n - i : room;
		const uint8_t *lf = memchr(p + i, '\n', avail);
		size_t run = lf ? (size_t)(lf - (p + i)) : avail;
		memcpy(s->hbuf + s->hlen, p + i, run + (lf != NULL));
		s->hlen += run + (lf != NULL);
		s->eoh = eoh_after_run(s->eoh, p + i, run);
		i += run;
		if (!lf)
			continue;
		i++; /* the LF */
		if (s->eoh == 3) {
			/* The blank line ends the header block (RFC 5322 2.1). */
			s->hlen -= 2;
			s->state = ST_BODY;
			return i;
		}
		s->eoh = s->eoh == 1 ? 2 : 0;
	}
	return i;
}

int dkim_sign_update(struct dkim_signer *s, const void *data, size_t len)
{
	const uint8_t *p = data;
	if (s->state == ST_ERROR)
		return s->err_code;
	if (s->state != ST_HEADERS && s->state != ST_BODY)
		return -EINVAL;
	if (s->state == ST_HEADERS) {
		size_t used = header_feed(s, p, len);
		if (s->state == ST_ERROR)
			return s->err_code;
		p += used;
		len -= used;
	}
	if (len) {
		dkim_body_canon_update(&s->body, p, len);
		if (s->alt_md)
			dkim_body_canon_update(&s->alt_body, p, len);
	}
	return 0;
}

/* Split the header block into fields (a field continues on lines starting with WSP). */
static int parse_fields(struct dkim_signer *s)
{
	size_t i = 0, n = s->hlen;
	const uint8_t *h = s->hbuf;
	while (i < n) {
		size_t start = i;
		const uint8_t *lf;
		/* extend over continuation lines */
		for (;;) {
			lf = memchr(h + i, '\n', n - i);
			i = lf ? (size_t)(lf - h) + 1 : n;
			if (i >= n || (h[i] != ' ' && h[i] != '\t'))
				break;
		}
		if (h[start] == ' ' || h[start] == '\t')
			continue; /* continuation with no field: cannot be signed */
		if (s->field_count == DKIM_MAX_HEADER_FIELDS) {
			s->stats.field_overflow++;
			return fail(s, -EMSGSIZE, "more than %d header fields",
				    DKIM_MAX_HEADER_FIELDS);
		}
		struct hfield *f = &s->fields[s->field_count++];
		f->off = (uint32_t)start;
		f->len = (uint32_t)(i - start);
		const uint8_t *colon = memchr(h + start, ':', i - start);
		size_t nl = colon ? (size_t)(colon - (h + start)) : 0;
		while (nl > 0 && (h[start + nl - 1] == ' ' || h[start + nl - 1] == '\t'))
			nl--;
		f->name_len = (uint32_t)nl;
	}
	return 0;
}

static bool field_is(const struct dkim_signer *s, const struct hfield *f, const char *name,
		     size_t len)
{
	return f->name_len == len && strncasecmp((const char *)s->hbuf + f->off, name, len) == 0;
}

/* h=: every present instance of each configured name, From once more (RFC 6376 8.15). */
static int build_hlist(struct dkim_signer *s)
{
	for (size_t k = 0; k < s->header_count; k++) {
		const char *name = s->headers[k];
		size_t len = s->header_lens[k], count = 0;
		for (size_t j = 0; j < s->field_count; j++)
			count += field_is(s, &s->fields[j], name, len);
		bool is_from = len == 4 && strcasecmp(name, "From") == 0;
		if (is_from && count == 0) {
			s->stats.no_from++;
			return fail(s, -EBADMSG,
				    "no From: header field (RFC 6376 5.4 requires "
				    "signing it)");
		}
		if (is_from && s->oversign_from)
			count++;
		for (size_t c = 0; c < count; c++) {
			if (s->hlist_count == DKIM_MAX_SIGNED_FIELDS) {
				/* Bottom-up selection: the listed ones are the last instances. */
				s->stats.h_list_truncated++;
				break;
			}
			s->hlist_len[s->hlist_count] = len;
			s->hlist[s->hlist_count++] = name;
		}
	}
	return 0;
}

/* Hash the signed fields in h= order, each instance picked bottom-up (RFC 6376 5.4.2). */
static void hash_fields(struct dkim_signer *s)
{
	memset(s->used, 0, s->field_count * sizeof(bool));
	for (size_t k = 0; k < s->hlist_count; k++) {
		for (size_t j = s->field_count; j-- > 0;) {
			struct hfield *f = &s->fields[j];
			if (s->used[j] || !field_is(s, f, s->hlist[k], s->hlist_len[k]))
				continue;
			s->used[j] = true;
			bool crlf = f->len < 2 || s->hbuf[f->off + f->len - 1] != '\n';
			size_t n = dkim_header_canon(s->header_relaxed, s->hbuf + f->off, f->len,
						     true, s->scratch);
			EVP_DigestUpdate(s->hdr_md, s->scratch, n);
			if (crlf && !s->header_relaxed)
				EVP_DigestUpdate(s->hdr_md, "\r\n", 2);
			break;
		}
		/* A name with no instance left contributes nothing (oversigning). */
	}
}

struct text {
	char *buf;
	size_t len, cap;
	size_t col;
	bool overflow;
};

static void text_add(struct text *t, const char *p, size_t n)
{
	if (t->overflow || t->len + n + 1 > t->cap) {
		t->overflow = true;
		return;
	}
	memcpy(t->buf + t->len, p, n);
	t->len += n;
	t->buf[t->len] = '\0';
	const char *lf = memrchr(p, '\n', n);
	t->col = lf ? (size_t)(p + n - lf - 1) : t->col + n;
}

static void text_str(struct text *t, const char *p)
{
	text_add(t, p, strlen(p));
}

/* Add a tag "name" "value" ";", folding before it if the line would get too long. */
static void text_tag(struct text *t, const char *name, const char *value, size_t value_len)
{
	size_t n = strlen(name) + value_len + 1;
	text_str(t, t->col + 1 + n > LINE_MAX_COLS ? "\r\n\t" : " ");
	text_str(t, name);
	text_add(t, value, value_len);
	text_add(t, ";", 1);
}

static void text_tag_num(struct text *t, const char *name, uint64_t v)
{
	char digits[MX_U64_DEC_MAX];
	text_tag(t, name, digits, mx_u64_dec(v, digits));
}

static void text_tag_str(struct text *t, const char *name, const char *value)
{
	text_tag(t, name, value, strlen(value));
}

/*
 * The part of the field that depends only on the configuration, made once in
 * dkim_signer_create(): "DKIM-Signature: v=1; a=; c=; d=; s=;".
 */
static void build_fixed_prefix(struct dkim_signer *s, struct sig_alg *a)
{
	struct text t = {.buf = a->prefix, .cap = sizeof(a->prefix)};
	char c[32];
	text_str(&t, "DKIM-Signature: v=1;");
	text_tag_str(&t, "a=", dkim_alg_name(a->alg));
	snprintf(c, sizeof(c), "%s/%s", s->header_relaxed ? "relaxed" : "simple",
		 s->body_relaxed ? "relaxed" : "simple");
	text_tag_str(&t, "c=", c);
	text_tag_str(&t, "d=", s->domain);
	text_tag_str(&t,
		     "s=", a->alg == DKIM_ALG_ED25519_SHA256 ? s->ed25519_selector : s->selector);
	a->prefix_len = t.overflow ? 0 : t.len;
	a->prefix_col = t.col;
}

/* The DKIM-Signature field up to and including "b=" (RFC 6376 3.5). */
static void build_sig_prefix(struct dkim_signer *s, struct text *t, const struct sig_alg *a,
			     const char *bh)
{
	text_add(t, a->prefix, a->prefix_len);
	t->col = a->prefix_col;
	text_tag_num(t, "t=", (uint64_t)s->t);
	if (s->expire_after_s)
		text_tag_num(t, "x=", (uint64_t)(s->t + (int64_t)s->expire_after_s));
	if (s->body_length_tag)
		text_tag_num(t, "l=", s->body.length);
	/* h= folds between names: FWS is allowed around ':' (3.5). */
	text_str(t, t->col + 3 > LINE_MAX_COLS ? "\r\n\th=" : " h=");
	for (size_t k = 0; k < s->hlist_count; k++) {
		size_t n = s->hlist_len[k];
		if (k > 0) {
			text_add(t, ":", 1);
			if (t->col + n + 1 > LINE_MAX_COLS)
				text_str(t, "\r\n\t");
		}
		text_add(t, s->hlist[k], n);
	}
	text_add(t, ";", 1);
	text_tag_str(t, "bh=", bh);
	text_str(t, t->col + 4 > LINE_MAX_COLS ? "\r\n\tb=" : " b=");
}

static int sign_digest(struct dkim_signer *s, struct sig_alg *a, const uint8_t *dig, uint8_t *sig,
		       size_t *sig_len)
{
	if (a->alg == DKIM_ALG_RSA_SHA256) {
		if (EVP_PKEY_sign(a->rsa_ctx, sig, sig_len, dig, 32) <= 0)
			goto err;
		return 0;
	}
	/* RFC 8463 3: Ed25519 (pure) over the 32-byte SHA-256 of the header data. */
	for (int attempt = 0; attempt < 2; attempt++) {
		if (!a->ed_ready) {
			if (EVP_DigestSignInit_ex(a->ed_ctx, NULL, NULL, NULL, NULL, a->pkey,
						  NULL) <= 0)
				goto err;
			a->ed_ready = true;
		}
		size_t len = *sig_len;
		if (EVP_DigestSign(a->ed_ctx, sig, &len, dig, 32) > 0) {
			*sig_len = len;
			return 0;
		}
		/* This OpenSSL does not allow reusing the context: init every time. */
		ERR_clear_error();
		a->ed_ready = false;
	}
err:
	ERR_clear_error();
	return fail(s, -EIO, "OpenSSL: %s signing failed", dkim_alg_name(a->alg));
}

int dkim_sign_final(struct dkim_signer *s, const char **hdr, size_t *hdr_len)
{
	uint8_t dig[EVP_MAX_MD_SIZE], sig[SIG_MAX];
	char bh[64], b64[SIG_MAX * 4 / 3 + 8];
	unsigned dlen;

	if (s->state == ST_ERROR)
		return s->err_code;
	if (s->state != ST_HEADERS && s->state != ST_BODY)
		return -EINVAL;
	dkim_body_canon_final(&s->body);
	s->stats.body_bytes += s->body.length;
	if (!EVP_DigestFinal_ex(s->body_md, dig, &dlen))
		goto ossl_err;
	EVP_EncodeBlock((unsigned char *)bh, dig, (int)dlen);

	int rc = parse_fields(s);
	if (rc)
		return rc;
	if ((rc = build_hlist(s)))
		return rc;
	if (!EVP_DigestInit_ex(s->hdr_md, s->sha256, NULL))
		goto ossl_err;
	hash_fields(s);

	struct text out = {.buf = s->out, .cap = OUT_CAP};
	for (int i = 0; i < s->alg_count; i++) {
		struct sig_alg *a = &s->algs[i];
		size_t field_start = out.len;
		out.col = 0;
		build_sig_prefix(s, &out, a, bh);
		if (out.overflow)
			return fail(s, -EMSGSIZE, "DKIM-Signature field too long");
		/* 3.7: the field itself, b= empty, canonicalised, without its CRLF. */
		size_t n =
			dkim_header_canon(s->header_relaxed, (const uint8_t *)out.buf + field_start,
					  out.len - field_start, false, s->scratch);
		/* The last signature may finish the shared state itself. */
		EVP_MD_CTX *md = i + 1 < s->alg_count ? s->tmp_md : s->hdr_md;
		if ((md == s->tmp_md && !EVP_MD_CTX_copy_ex(md, s->hdr_md)) ||
		    !EVP_DigestUpdate(md, s->scratch, n) || !EVP_DigestFinal_ex(md, dig, &dlen))
			goto ossl_err;
		size_t sig_len = sizeof(sig);
		if ((rc = sign_digest(s, a, dig, sig, &sig_len)))
			return rc;
		int b64_len = EVP_EncodeBlock((unsigned char *)b64, sig, (int)sig_len);
		/* Fold b= anywhere: FWS inside base64 is ignored (3.5). */
		for (int off = 0; off < b64_len;) {
			if (out.col >= LINE_MAX_COLS)
				text_str(&out, "\r\n\t");
			int room = (int)(LINE_MAX_COLS - out.col);
			int take = b64_len - off < room ? b64_len - off : room;
			text_add(&out, b64 + off, (size_t)take);
			off += take;
		}
		text_str(&out, "\r\n");
		if (out.overflow)
			return fail(s, -EMSGSIZE, "DKIM-Signature field too long");
	}
	s->out_len = out.len;
	s->state = ST_DONE;
	s->stats.messages_signed++;
	*hdr = s->out;
	*hdr_len = s->out_len;
	return 0;
ossl_err:
	ERR_clear_error();
	return fail(s, -EIO, "OpenSSL: digest failed");
}

int dkim_sign_from_domain(const struct dkim_signer *s, char *out, size_t outlen)
{
	if (s->state != ST_HEADERS && s->state != ST_BODY && s->state != ST_DONE)
		return -EINVAL;
	const char *h = (const char *)s->hbuf;
	size_t n = s->hlen;
	/* Fields start at the block's start or after LF when no WSP follows (RFC 5322 2.2.3). */
	for (size_t i = 0; i < n;) {
		const char *lf = memchr(h + i, '\n', n - i);
		size_t line_end = lf ? (size_t)(lf - h) + 1 : n;
		size_t name_end = i;
		while (name_end < line_end && h[name_end] != ':')
			name_end++;
		size_t nl = name_end - i;
		while (nl > 0 && (h[i + nl - 1] == ' ' || h[i + nl - 1] == '\t'))
			nl--;
		if (name_end < line_end && nl == 4 && strncasecmp(h + i, "From", 4) == 0) {
			/* the value runs over continuation lines to the next field */
			size_t end = line_end;
			while (end < n && (h[end] == ' ' || h[end] == '\t')) {
				lf = memchr(h + end, '\n', n - end);
				end = lf ? (size_t)(lf - h) + 1 : n;
			}
			return dkim_from_domain(h + name_end + 1, end - name_end - 1, out, outlen);
		}
		i = line_end;
	}
	return -ENOENT;
}

int dkim_sign_move(struct dkim_signer *dst, struct dkim_signer *src)
{
	if (src->state == ST_ERROR)
		return src->err_code;
	if (src->state != ST_HEADERS && src->state != ST_BODY)
		return -EINVAL;
	if (dst == src)
		return 0;
	/*
	 * Body bytes already canonicalised cannot be redone (no second pass): dst
	 * takes the body state of its own canonicalisation, src's main one or, with
	 * hash_both_bodies, its alternate one.
	 */
	const struct dkim_body_canon *from_body = &src->body;
	EVP_MD_CTX *from_md = src->body_md;
	bool body_started =
		src->state == ST_BODY && (src->body.length > 0 || src->body.cr_pending ||
					  src->body.wsp_pending || src->body.crlf_pending);
	if (body_started && dst->body_relaxed != src->body_relaxed) {
		if (!src->alt_md || !src->alt_valid)
			return -EXDEV;
		from_body = &src->alt_body;
		from_md = src->alt_md;
	}
	if (src->hlen > dst->max_header_bytes + 2)
		return -EMSGSIZE;
	int rc = dkim_sign_begin(dst, src->t);
	if (rc)
		return rc;
	memcpy(dst->hbuf, src->hbuf, src->hlen);
	dst->hlen = src->hlen;
	dst->eoh = src->eoh;
	dst->state = src->state;
	if (body_started) {
		/* carry the canonicaliser's pending state and the hash */
		dst->body = *from_body;
		dst->body.sink = body_sink;
		dst->body.sink_arg = dst->body_md;
		if (!EVP_MD_CTX_copy_ex(dst->body_md, from_md)) {
			ERR_clear_error();
			return fail(dst, -EIO, "OpenSSL: digest copy failed");
		}
		if (dst->alt_md) {
			/* dst may be moved on again: its other canonicalisation too */
			const struct dkim_body_canon *ab =
				from_body == &src->body ? &src->alt_body : &src->body;
			EVP_MD_CTX *amd = from_md == src->body_md ? src->alt_md : src->body_md;
			if (!src->alt_md || !src->alt_valid) {
				/* dst cannot be moved on to the other kind */
				dst->alt_valid = false;
				goto done;
			}
			dst->alt_body = *ab;
			dst->alt_body.sink = body_sink;
			dst->alt_body.sink_arg = dst->alt_md;
			if (!EVP_MD_CTX_copy_ex(dst->alt_md, amd)) {
				ERR_clear_error();
				return fail(dst, -EIO, "OpenSSL: digest copy failed");
			}
		}
	}
done:
	src->state = ST_IDLE;
	return 0;
}

const char *dkim_signer_error(const struct dkim_signer *s)
{
	return s->errmsg;
}

const struct dkim_signer_stats *dkim_signer_stats(const struct dkim_signer *s)
{
	return &s->stats;
}
