/*
 * dkim.h - DKIM signing (RFC 6376) with rsa-sha256 and ed25519-sha256 (RFC 8463).
 *
 * A signer is made once per core from a struct dkim_signer_config and reused
 * for every message that core signs:
 *
 *	dkim_sign_begin(s, now);
 *	dkim_sign_update(s, chunk, len);	(any number of times, any split)
 *	dkim_sign_final(s, &hdr, &hdr_len);	(DKIM-Signature field(s), CRLF-ended)
 *
 * The caller prepends hdr to the message it sends.  The header block of the
 * message is buffered (bounded by max_header_bytes); the body is never
 * buffered: it is canonicalised and hashed as it streams through.  Input is
 * the message as it goes on the wire after dot-unstuffing: CRLF line ends.
 *
 * Threading: a signer (its OpenSSL contexts and buffers) belongs to one core
 * and is NOT thread-safe by design; make one signer per core.  Keys may be
 * shared between signers (they are reference-counted and only read).
 *
 * Errors are negative errno values; dkim_signer_error() and the err buffers
 * of the key functions carry a human-readable reason.  After an error the
 * message cannot be signed; the caller decides to defer or send unsigned.
 */
#ifndef MX_DKIM_H
#define MX_DKIM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum dkim_alg {
	DKIM_ALG_ANY = 0, /* key loading: accept either type */
	DKIM_ALG_RSA_SHA256 = 1,
	DKIM_ALG_ED25519_SHA256 = 2,
};

enum dkim_canon {
	DKIM_CANON_RELAXED = 0, /* the default */
	DKIM_CANON_SIMPLE = 1,
};

/* Limits (RSA key size bounds of the issue, buffers, h= list). */
#define DKIM_RSA_MIN_BITS 1024
#define DKIM_RSA_MAX_BITS 4096
#define DKIM_RSA_DEFAULT_BITS 2048
#define DKIM_DEFAULT_MAX_HEADER_BYTES (64 * 1024)
#define DKIM_MAX_HEADER_FIELDS 1024 /* fields in the header block */
#define DKIM_MAX_SIGNED_FIELDS 64   /* names in h= */
#define DKIM_MAX_CONFIG_HEADERS 32  /* names in the configured list */

/* ---- keys --------------------------------------------------------------- */

struct dkim_key;

/**
 * Load a private key from a PEM file: PKCS#8 ("PRIVATE KEY") or traditional
 * RSA ("RSA PRIVATE KEY") for RSA, PKCS#8 for Ed25519.  expect is the
 * algorithm the key is configured for, or DKIM_ALG_ANY.
 * Returns 0, or -ENOENT (no such file), -EACCES/-EISDIR/-EIO (unreadable),
 * -EINVAL (not a PEM private key), -EKEYREJECTED (wrong type for expect or
 * not RSA/Ed25519), -ERANGE (RSA key below 1024 or above 4096 bits).
 * err receives "path: reason".
 */
int dkim_key_load(const char *path, enum dkim_alg expect, struct dkim_key **out, char *err,
		  size_t errlen);
/** Generate a key: RSA of bits (1024..4096; 0 means 2048) or Ed25519 (bits ignored). */
int dkim_key_generate(enum dkim_alg alg, unsigned bits, struct dkim_key **out, char *err,
		      size_t errlen);
/** Write the private key as PKCS#8 PEM, mode 0600; fails if path exists (-EEXIST). */
int dkim_key_write_pem(const struct dkim_key *key, const char *path, char *err, size_t errlen);
enum dkim_alg dkim_key_alg(const struct dkim_key *key);
unsigned dkim_key_bits(const struct dkim_key *key);
/**
 * The DNS TXT record data for this key: "v=DKIM1; k=rsa; p=BASE64" (p is the
 * DER SubjectPublicKeyInfo for RSA, the raw 32-byte key for Ed25519, RFC 8463
 * section 4).  Returns the length written (NUL-terminated) or -ENOSPC.
 */
int dkim_key_txt_record(const struct dkim_key *key, char *out, size_t outlen);
void dkim_key_free(struct dkim_key *key);

#define DKIM_RECORD_TESTING 0x1 /* t=y: verifiers may treat failures as unsigned */

/**
 * Check a published key record (the TXT data at selector._domainkey.domain,
 * its strings joined) against key, as a verifier would read it (RFC 6376
 * 3.6.1, RFC 8463 4).  *flags gets DKIM_RECORD_TESTING for t=y.  Returns 0
 * when it publishes this key, -EINVAL (malformed: tag-list, v=, p= missing
 * or not a key), -EKEYREVOKED (empty p=), -EKEYREJECTED (k= of another type,
 * or another key), -EPROTONOSUPPORT (h= without sha256, s= without email);
 * why gets a sentence.
 */
int dkim_key_record_check(const struct dkim_key *key, const char *txt, size_t len, unsigned *flags,
			  char *why, size_t whylen);

/* ---- signer ------------------------------------------------------------- */

struct dkim_signer_config {
	const char *domain;   /* d= */
	const char *selector; /* s= */
	/* s= of the Ed25519 signature when dual signing (two keys need two DNS
	 * records, so two selectors); NULL means selector. */
	const char *ed25519_selector;
	/* At least one key; both set means dual signing (two DKIM-Signature fields). */
	struct dkim_key *rsa_key;
	struct dkim_key *ed25519_key;
	enum dkim_canon header_canon;
	enum dkim_canon body_canon;
	/* Field names to sign; NULL means the default list (dkim_default_headers). */
	const char *const *headers;
	size_t header_count;
	bool oversign_from;	 /* list From once more than present (default true) */
	bool body_length_tag;	 /* add l= (default false: l= invites appended content) */
	uint32_t expire_after_s; /* x = t + this; 0 means no x= */
	size_t max_header_bytes; /* header block bound; default 64 KiB */
	/* Also hash the body in the other canonicalisation (relaxed and simple
	 * both), so that dkim_sign_move() can hand the message to a signer of
	 * either kind after body bytes have streamed; costs a second body hash.
	 * dkim_table_load() sets it when domains differ in body canonicalisation
	 * and the From: header picks the domain. */
	bool hash_both_bodies;
};

struct dkim_signer_stats {
	uint64_t messages_signed;
	uint64_t errors;
	uint64_t header_overflow;  /* header block above max_header_bytes */
	uint64_t field_overflow;   /* more than DKIM_MAX_HEADER_FIELDS fields */
	uint64_t h_list_truncated; /* more instances than DKIM_MAX_SIGNED_FIELDS */
	uint64_t no_from;	   /* no From: field: unsignable */
	uint64_t body_bytes;	   /* canonicalised body bytes hashed */
};

extern const char *const dkim_default_headers[];
extern const size_t dkim_default_header_count;

/** Fill c with the defaults (relaxed/relaxed, default headers, From oversigned, 64 KiB). */
void dkim_signer_config_init(struct dkim_signer_config *c);

struct dkim_signer;

/**
 * Make a signer: copies the strings and the header list, takes a reference on
 * the keys, prepares the OpenSSL contexts.  -EINVAL with a reason in err for a
 * bad configuration (no key, key of the wrong type, bad domain or selector).
 */
int dkim_signer_create(const struct dkim_signer_config *c, struct dkim_signer **out, char *err,
		       size_t errlen);
void dkim_signer_free(struct dkim_signer *s);

/** Start a message; now is the t= timestamp (seconds since the epoch). */
int dkim_sign_begin(struct dkim_signer *s, int64_t now);
/**
 * Feed the next bytes of the message (header block, blank line, body).  0, or
 * -EMSGSIZE when the header block exceeds max_header_bytes, or -EINVAL when no
 * message is in progress.  Once an error is returned, the message is lost:
 * later calls return the same error until the next dkim_sign_begin().
 */
int dkim_sign_update(struct dkim_signer *s, const void *data, size_t len);
/**
 * Finish: *hdr points at the DKIM-Signature field(s), each ending in CRLF,
 * valid until the next dkim_sign_begin() or dkim_signer_free().  Returns 0, or
 * -EBADMSG (no From: field, RFC 6376 5.4), -EMSGSIZE, -EIO (OpenSSL failure).
 */
int dkim_sign_final(struct dkim_signer *s, const char **hdr, size_t *hdr_len);
/** Reason for the last error of this signer ("" if none). */
const char *dkim_signer_error(const struct dkim_signer *s);
const struct dkim_signer_stats *dkim_signer_stats(const struct dkim_signer *s);

/* ---- choosing the signing domain ---------------------------------------- */

/**
 * Index in domains[] of the domain to sign with: the From: header's domain if
 * configured, else the envelope sender's domain, else default_index (-1 for
 * none).  Domains compare case-insensitively; either input may be NULL.
 * Returns the index or -ENOENT.
 */
int dkim_choose_domain(const char *const *domains, size_t count, int default_index,
		       const char *from_domain, const char *envelope_domain);
/**
 * The domain of the (last) address in an address header value or an envelope
 * path ("Joe <joe@Example.com>", "<a@b.c>", "a@b.c (comment)"), lowercased.
 * Returns its length, -ENOENT when there is no address, -ENOSPC if out is small.
 */
int dkim_address_domain(const char *value, size_t len, char *out, size_t outlen);

/**
 * The domain of the first mailbox of an RFC 5322 From: field value (3.6.2,
 * mailbox-list), lowercased: display names, comments, quoted strings, folding
 * (CRLF WSP), obsolete routes and group syntax ("Fleet: a@x.example;") are
 * understood.  Returns its length, -ENOENT when the first usable mailbox has
 * no DNS domain (empty group only, domain literal, no '@'), -ENOSPC.
 */
int dkim_from_domain(const char *value, size_t len, char *out, size_t outlen);

/**
 * The From: domain of the message being signed (see dkim_from_domain()),
 * read from the first From: field of the buffered header block.  Call it once
 * the header block is complete (at the latest just before dkim_sign_final()).
 * Returns its length, -ENOENT (no From: field or no domain in it), -ENOSPC,
 * -EINVAL (no message in progress).
 */
int dkim_sign_from_domain(const struct dkim_signer *s, char *out, size_t outlen);

/**
 * Hand the message in progress in src over to dst (a signer of another
 * domain), so that dst signs it: the buffered header block, the body hash and
 * the canonicaliser's state move; src becomes idle.  This is how the From:
 * domain, known only after the header block, picks the key.  Returns 0, or
 * -EXDEV when body bytes were hashed with another body canonicalisation than
 * dst's (and src was not made with hash_both_bodies), -EMSGSIZE when the header block exceeds dst's
 * bound, -EINVAL when no message is in progress in src, src's error code if src failed, -EIO.
 */
int dkim_sign_move(struct dkim_signer *dst, struct dkim_signer *src);

/* ---- configuration: [dkim "domain"] sections ------------------------------ */

struct cfg_file;
struct cfg_report;

/** One configured signing domain, its keys loaded. */
struct dkim_domain {
	char *domain;
	char *selector;
	char *ed25519_selector;
	char *header_names; /* storage for config.headers */
	const char *headers[DKIM_MAX_CONFIG_HEADERS];
	struct dkim_signer_config config; /* points into this structure */
};

/* [dkim] domain_from: where the signing domain comes from. */
enum dkim_domain_from {
	DKIM_FROM_HEADER = 0, /* From: header, else envelope sender, else default (DMARC) */
	DKIM_FROM_ENVELOPE,   /* envelope sender, else default */
	DKIM_FROM_DEFAULT,    /* always [dkim] default_domain */
};

struct dkim_table {
	struct dkim_domain *domains;
	size_t count;
	const char **names; /* domains[i].domain, for dkim_choose_domain() */
	int default_index;  /* [dkim] default_domain, or -1 */
	enum dkim_domain_from domain_from;
	/* [dkim] public_addr: the relay's address as receivers see it (SPF), for
	 * `mxdkim check`; 0 when not set (then [port.0] addr is assumed). */
	uint32_t public_addr; /* IPv4, host order */
};

/**
 * Read every [dkim "example.com"] section and [dkim] default_domain,
 * domain_from (header | envelope | default) and public_addr, load the keys.
 * Keys of a domain section:
 *	selector = s1			(required)
 *	key = /etc/mxrelay/dkim/example.com.pem	(required)
 *	algorithm = rsa-sha256 | ed25519-sha256 | rsa-sha256+ed25519-sha256
 *	ed25519_key, ed25519_selector	(required for the dual algorithm)
 *	canonicalization = relaxed/relaxed   headers = From:To:...
 *	oversign_from = yes   body_length = no   expire = 7d   max_header_size = 64K
 * Each problem is added to r as "file:line: message"; returns 0 or -EINVAL
 * (*out is then NULL).  A file without [dkim] sections gives an empty table.
 */
int dkim_table_load(struct cfg_file *cf, struct dkim_table **out, struct cfg_report *r);
void dkim_table_free(struct dkim_table *t);
/**
 * The domain to sign with, following t->domain_from (see dkim_choose_domain;
 * from_domain is ignored unless domain_from = header, envelope_domain when it
 * is default), or NULL.
 */
const struct dkim_domain *dkim_table_choose(const struct dkim_table *t, const char *from_domain,
					    const char *envelope_domain);

#endif
