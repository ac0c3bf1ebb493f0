/*
 * record.c - a published DKIM key record (RFC 6376 3.6.1) against a key.
 *
 * Used by `mxdkim check` to tell an operator whether the TXT record at
 * selector._domainkey.domain is the one the relay's key needs: it parses the
 * tag-list (3.2: tag=value;..., FWS around tags and inside values), applies
 * the rules a verifier applies (v= first and DKIM1, k= the key type, h= must
 * allow sha256, s= must allow email, p= empty means revoked) and compares p=
 * with the public half of the configured private key.  RSA p= is a DER
 * SubjectPublicKeyInfo (3.6.1); RFC 8463 4 makes Ed25519 p= the raw 32-byte
 * key.  Every problem has its own error code and a sentence in why.
 */
#include "dkim.h"
#include "dkim_internal.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <openssl/x509.h>

#define REC_MAX_TAGS 32
#define REC_MAX_LEN 8192 /* longer than any real key record (RSA-4096: ~800 bytes) */

struct rec_tag {
	const char *name, *value;
	size_t name_len, value_len;
};

static bool rec_wsp(char ch)
{
	return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n';
}

/* Split "a=1; b = 2 ;" into tags; -EINVAL for a malformed list or a duplicate tag. */
static int rec_split(const char *txt, size_t len, struct rec_tag *tags, size_t *count, char *why,
		     size_t whylen)
{
	size_t n = 0, i = 0;
	while (i < len) {
		size_t end = i;
		while (end < len && txt[end] != ';')
			end++;
		size_t a = i, b = end;
		while (a < b && rec_wsp(txt[a]))
			a++;
		while (b > a && rec_wsp(txt[b - 1]))
			b--;
		i = end + 1;
		if (a == b)
			continue; /* empty element: "a=1;" ends with one, allowed (3.2) */
		const char *eq = memchr(txt + a, '=', b - a);
		if (!eq) {
			snprintf(why, whylen, "'%.*s' is not a tag=value pair", (int)(b - a),
				 txt + a);
			return -EINVAL;
		}
		size_t ne = (size_t)(eq - txt);
		while (ne > a && rec_wsp(txt[ne - 1]))
			ne--;
		size_t vs = (size_t)(eq - txt) + 1;
		while (vs < b && rec_wsp(txt[vs]))
			vs++;
		if (ne == a) {
			snprintf(why, whylen, "a tag without a name");
			return -EINVAL;
		}
		for (size_t k = 0; k < n; k++) {
			if (tags[k].name_len == ne - a &&
			    memcmp(tags[k].name, txt + a, ne - a) == 0) {
				snprintf(why, whylen, "tag %.*s= appears twice", (int)(ne - a),
					 txt + a);
				return -EINVAL;
			}
		}
		if (n == REC_MAX_TAGS) {
			snprintf(why, whylen, "more than %d tags", REC_MAX_TAGS);
			return -EINVAL;
		}
		tags[n++] = (struct rec_tag){
			.name = txt + a,
			.name_len = ne - a,
			.value = txt + vs,
			.value_len = b - vs,
		};
	}
	*count = n;
	return 0;
}

static const struct rec_tag *rec_find(const struct rec_tag *tags, size_t n, const char *name)
{
	size_t len = strlen(name);
	for (size_t i = 0; i < n; i++)
		if (tags[i].name_len == len && memcmp(tags[i].name, name, len) == 0)
			return &tags[i];
	return NULL;
}

/* Does the colon-separated list hold item (case-insensitive, FWS allowed around items)? */
static bool rec_list_has(const struct rec_tag *t, const char *item)
{
	size_t i = 0, len = strlen(item);
	while (i <= t->value_len) {
		size_t end = i;
		while (end < t->value_len && t->value[end] != ':')
			end++;
		size_t a = i, b = end;
		while (a < b && rec_wsp(t->value[a]))
			a++;
		while (b > a && rec_wsp(t->value[b - 1]))
			b--;
		if (b - a == len && strncasecmp(t->value + a, item, len) == 0)
			return true;
		i = end + 1;
	}
	return false;
}

static bool rec_is(const struct rec_tag *t, const char *value)
{
	return t->value_len == strlen(value) && strncasecmp(t->value, value, t->value_len) == 0;
}

/* Base64 with FWS removed; -EINVAL if it does not decode. Returns the byte count. */
static int rec_base64(const struct rec_tag *t, unsigned char *out, size_t cap)
{
	char b64[REC_MAX_LEN];
	size_t n = 0;
	for (size_t i = 0; i < t->value_len; i++) {
		char ch = t->value[i];
		if (rec_wsp(ch))
			continue;
		if (n + 1 >= sizeof(b64))
			return -EINVAL;
		b64[n++] = ch;
	}
	if (n == 0 || n % 4 != 0 || n / 4 * 3 > cap)
		return -EINVAL;
	int got = EVP_DecodeBlock(out, (const unsigned char *)b64, (int)n);
	if (got < 0)
		return -EINVAL;
	/* EVP_DecodeBlock counts the padding as zero bytes */
	if (b64[n - 1] == '=')
		got--;
	if (b64[n - 2] == '=')
		got--;
	return got;
}

int dkim_key_record_check(const struct dkim_key *key, const char *txt, size_t len, unsigned *flags,
			  char *why, size_t whylen)
{
	struct rec_tag tags[REC_MAX_TAGS];
	size_t n = 0;
	*flags = 0;
	why[0] = '\0';
	if (len > REC_MAX_LEN) {
		snprintf(why, whylen, "record longer than %d bytes", REC_MAX_LEN);
		return -EINVAL;
	}
	int rc = rec_split(txt, len, tags, &n, why, whylen);
	if (rc)
		return rc;
	const struct rec_tag *v = rec_find(tags, n, "v");
	if (v && (v != &tags[0] || !rec_is(v, "DKIM1"))) {
		/* 3.6.1: if present, v= MUST be first and DKIM1 */
		snprintf(why, whylen, "v= must be the first tag and \"DKIM1\"");
		return -EINVAL;
	}
	const struct rec_tag *t = rec_find(tags, n, "t");
	if (t && rec_list_has(t, "y"))
		*flags |= DKIM_RECORD_TESTING;
	const struct rec_tag *h = rec_find(tags, n, "h");
	if (h && !rec_list_has(h, "sha256")) {
		snprintf(why, whylen, "h=%.*s does not allow sha256", (int)h->value_len, h->value);
		return -EPROTONOSUPPORT;
	}
	const struct rec_tag *s = rec_find(tags, n, "s");
	if (s && !rec_list_has(s, "email") && !rec_list_has(s, "*")) {
		snprintf(why, whylen, "s=%.*s does not allow email", (int)s->value_len, s->value);
		return -EPROTONOSUPPORT;
	}
	const struct rec_tag *k = rec_find(tags, n, "k");
	const char *want_k = key->alg == DKIM_ALG_ED25519_SHA256 ? "ed25519" : "rsa";
	/* k= defaults to rsa (3.6.1) */
	if ((k && !rec_is(k, want_k)) || (!k && key->alg != DKIM_ALG_RSA_SHA256)) {
		snprintf(why, whylen, "k=%.*s but the configured key is %s",
			 k ? (int)k->value_len : 3, k ? k->value : "rsa", want_k);
		return -EKEYREJECTED;
	}
	const struct rec_tag *p = rec_find(tags, n, "p");
	if (!p) {
		snprintf(why, whylen, "no p= tag");
		return -EINVAL;
	}
	size_t plen = 0;
	for (size_t i = 0; i < p->value_len; i++)
		plen += !rec_wsp(p->value[i]);
	if (plen == 0) {
		snprintf(why, whylen, "p= is empty: the key is revoked");
		return -EKEYREVOKED;
	}
	unsigned char der[REC_MAX_LEN];
	int der_len = rec_base64(p, der, sizeof(der));
	if (der_len <= 0) {
		snprintf(why, whylen, "p= is not valid base64");
		return -EINVAL;
	}
	EVP_PKEY *pub = NULL;
	if (key->alg == DKIM_ALG_ED25519_SHA256) {
		if (der_len != 32) {
			snprintf(why, whylen,
				 "p= holds %d bytes; an Ed25519 key is 32 (RFC 8463 4)", der_len);
			return -EINVAL;
		}
		pub = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, der, 32);
	} else {
		const unsigned char *q = der;
		pub = d2i_PUBKEY(NULL, &q, der_len);
		if (pub && q != der + der_len) {
			EVP_PKEY_free(pub);
			pub = NULL;
		}
	}
	if (!pub) {
		ERR_clear_error();
		snprintf(why, whylen, "p= is not a %s public key", want_k);
		return -EINVAL;
	}
	int eq = EVP_PKEY_eq(pub, key->pkey);
	EVP_PKEY_free(pub);
	ERR_clear_error();
	if (eq != 1) {
		snprintf(why, whylen, "p= is another %s key than the configured one", want_k);
		return -EKEYREJECTED;
	}
	return 0;
}
