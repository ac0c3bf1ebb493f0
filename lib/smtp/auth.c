/*
 * auth.c - the AUTH credentials file: salted password hashes, one user a line.
 *
 *   # comment
 *   sensor-fleet:$pbkdf2-sha256$100000$SALT_HEX$HASH_HEX
 *   legacy:$sha256$SALT_HEX$HASH_HEX
 *
 * PBKDF2-HMAC-SHA256 (OpenSSL PKCS5_PBKDF2_HMAC, iteration count in the line)
 * is what new lines should use (smtp_cred_make_line); salted SHA-256
 * (SHA-256(salt || password)) is read for old files.  The caller loads the
 * file once per configuration snapshot and calls smtp_cred_verify() from its
 * cb->auth_check.  Comparison is constant-time; an unknown user costs a hash
 * too, so timing does not tell which users exist.
 */
#include "smtp.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#define SALT_MAX 64
#define HASH_LEN 32
#define USER_MAX 256
#define FILE_MAX (64u << 20)
#define DUMMY_ITERATIONS 10000u

enum cred_kind { CRED_SHA256, CRED_PBKDF2 };

struct cred {
	char *user;
	enum cred_kind kind;
	unsigned iterations;
	uint8_t salt[SALT_MAX];
	size_t salt_len;
	uint8_t hash[HASH_LEN];
};

struct smtp_cred_db {
	struct cred *creds;
	size_t count;
};

static int hex_decode(const char *s, size_t n, uint8_t *out, size_t max)
{
	if (n == 0 || n % 2 || n / 2 > max)
		return -EINVAL;
	for (size_t i = 0; i < n; i += 2) {
		int v = 0;
		for (int k = 0; k < 2; k++) {
			char c = s[i + k];
			int d;
			if (c >= '0' && c <= '9')
				d = c - '0';
			else if (c >= 'a' && c <= 'f')
				d = c - 'a' + 10;
			else if (c >= 'A' && c <= 'F')
				d = c - 'A' + 10;
			else
				return -EINVAL;
			v = v * 16 + d;
		}
		out[i / 2] = (uint8_t)v;
	}
	return (int)(n / 2);
}

static void hex_encode(const uint8_t *p, size_t n, char *out)
{
	static const char hx[] = "0123456789abcdef";
	for (size_t i = 0; i < n; i++) {
		out[2 * i] = hx[p[i] >> 4];
		out[2 * i + 1] = hx[p[i] & 15];
	}
	out[2 * n] = '\0';
}

static int compute(const struct cred *c, const char *pass, uint8_t out[HASH_LEN])
{
	size_t plen = strlen(pass);

	if (c->kind == CRED_PBKDF2) {
		return PKCS5_PBKDF2_HMAC(pass, (int)plen, c->salt, (int)c->salt_len,
					 (int)c->iterations, EVP_sha256(), HASH_LEN, out) == 1
			       ? 0
			       : -EIO;
	}
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	unsigned len = 0;
	int ok = ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1 &&
		 EVP_DigestUpdate(ctx, c->salt, c->salt_len) == 1 &&
		 EVP_DigestUpdate(ctx, pass, plen) == 1 &&
		 EVP_DigestFinal_ex(ctx, out, &len) == 1 && len == HASH_LEN;
	EVP_MD_CTX_free(ctx);
	return ok ? 0 : -EIO;
}

/* Next '$'-separated field of [*p, end); NULL when missing. */
static const char *field(const char **p, const char *end, size_t *len)
{
	const char *start = *p;
	const char *d = memchr(start, '$', (size_t)(end - start));
	const char *stop = d ? d : end;

	*len = (size_t)(stop - start);
	*p = d ? d + 1 : end;
	return start;
}

static int parse_line(const char *line, size_t n, struct cred *c, const char **why)
{
	const char *colon = memchr(line, ':', n);
	const char *end = line + n;
	size_t len;

	memset(c, 0, sizeof(*c));
	if (!colon || colon == line || (size_t)(colon - line) >= USER_MAX) {
		*why = "expected 'user:$scheme$...'";
		return -EINVAL;
	}
	for (const char *u = line; u < colon; u++) {
		if ((unsigned char)*u <= 32 || *u == 127) {
			*why = "user name with space or control character";
			return -EINVAL;
		}
	}
	const char *p = colon + 1;
	if (p >= end || *p != '$') {
		*why = "expected '$' after the user name";
		return -EINVAL;
	}
	p++;
	const char *scheme = field(&p, end, &len);
	if (len == 6 && memcmp(scheme, "sha256", 6) == 0) {
		c->kind = CRED_SHA256;
	} else if (len == 13 && memcmp(scheme, "pbkdf2-sha256", 13) == 0) {
		c->kind = CRED_PBKDF2;
		const char *it = field(&p, end, &len);
		unsigned long v = 0;
		if (len == 0 || len > 8) {
			*why = "bad iteration count";
			return -EINVAL;
		}
		for (size_t i = 0; i < len; i++) {
			if (it[i] < '0' || it[i] > '9') {
				*why = "bad iteration count";
				return -EINVAL;
			}
			v = v * 10 + (unsigned long)(it[i] - '0');
		}
		if (v < 1000 || v > SMTP_CRED_MAX_ITERATIONS) {
			*why = "iteration count out of range (1000..10000000)";
			return -EINVAL;
		}
		c->iterations = (unsigned)v;
	} else {
		*why = "unknown scheme (sha256 or pbkdf2-sha256)";
		return -EINVAL;
	}
	const char *salt = field(&p, end, &len);
	int sl = hex_decode(salt, len, c->salt, SALT_MAX);
	if (sl < 4) {
		*why = "salt must be 4..64 bytes of hex";
		return -EINVAL;
	}
	c->salt_len = (size_t)sl;
	if (p >= end && salt + len == end) {
		*why = "missing hash";
		return -EINVAL;
	}
	const char *hash = field(&p, end, &len);
	if (hex_decode(hash, len, c->hash, HASH_LEN) != HASH_LEN || hash + len != end) {
		*why = "hash must be 32 bytes of hex, last on the line";
		return -EINVAL;
	}
	c->user = strndup(line, (size_t)(colon - line));
	if (!c->user)
		return -ENOMEM;
	return 0;
}

static int cred_cmp(const void *a, const void *b)
{
	return strcmp(((const struct cred *)a)->user, ((const struct cred *)b)->user);
}

void smtp_cred_free(struct smtp_cred_db *db)
{
	if (!db)
		return;
	for (size_t i = 0; i < db->count; i++) {
		free(db->creds[i].user);
		OPENSSL_cleanse(db->creds[i].hash, HASH_LEN);
	}
	free(db->creds);
	free(db);
}

int smtp_cred_load_string(const char *text, const char *name, struct smtp_cred_db **out, char *err,
			  size_t errlen)
{
	struct smtp_cred_db *db = calloc(1, sizeof(*db));
	size_t cap = 0;
	int lineno = 0, rc = 0;
	const char *why = NULL;

	if (!db)
		return -ENOMEM;
	for (const char *p = text; *p;) {
		const char *nl = strchr(p, '\n');
		size_t n = nl ? (size_t)(nl - p) : strlen(p);
		const char *next = nl ? nl + 1 : p + n;

		lineno++;
		while (n > 0 && (p[n - 1] == '\r' || p[n - 1] == ' ' || p[n - 1] == '\t'))
			n--;
		while (n > 0 && (*p == ' ' || *p == '\t')) {
			p++;
			n--;
		}
		if (n == 0 || *p == '#') {
			p = next;
			continue;
		}
		if (db->count == SMTP_CRED_MAX_USERS) {
			why = "too many users";
			rc = -E2BIG;
			break;
		}
		if (db->count == cap) {
			size_t ncap = cap ? cap * 2 : 16;
			struct cred *nc = realloc(db->creds, ncap * sizeof(*nc));
			if (!nc) {
				rc = -ENOMEM;
				why = "out of memory";
				break;
			}
			db->creds = nc;
			cap = ncap;
		}
		rc = parse_line(p, n, &db->creds[db->count], &why);
		if (rc < 0)
			break;
		db->count++;
		p = next;
	}
	if (rc == 0 && db->count > 1) {
		qsort(db->creds, db->count, sizeof(*db->creds), cred_cmp);
		for (size_t i = 1; i < db->count; i++) {
			if (strcmp(db->creds[i - 1].user, db->creds[i].user) == 0) {
				rc = -EINVAL;
				why = "duplicate user";
				lineno = 0;
				break;
			}
		}
	}
	if (rc < 0) {
		if (err && errlen) {
			if (lineno)
				snprintf(err, errlen, "%s:%d: %s", name, lineno,
					 why ? why : "error");
			else
				snprintf(err, errlen, "%s: %s", name, why ? why : "error");
		}
		smtp_cred_free(db);
		return rc;
	}
	*out = db;
	return 0;
}

int smtp_cred_load(const char *path, struct smtp_cred_db **out, char *err, size_t errlen)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat stbuf;
	char *text;
	int rc;

	if (fd < 0) {
		rc = -errno;
		if (err && errlen)
			snprintf(err, errlen, "%s: %s", path, strerror(-rc));
		return rc;
	}
	if (fstat(fd, &stbuf) < 0 || stbuf.st_size < 0 || (uint64_t)stbuf.st_size > FILE_MAX) {
		close(fd);
		if (err && errlen)
			snprintf(err, errlen, "%s: unreadable or larger than 64M", path);
		return -EFBIG;
	}
	text = malloc((size_t)stbuf.st_size + 1);
	if (!text) {
		close(fd);
		return -ENOMEM;
	}
	size_t got = 0;
	while (got < (size_t)stbuf.st_size) {
		ssize_t r = read(fd, text + got, (size_t)stbuf.st_size - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		got += (size_t)r;
	}
	close(fd);
	text[got] = '\0';
	if (strlen(text) != got) {
		free(text);
		if (err && errlen)
			snprintf(err, errlen, "%s: NUL byte in file", path);
		return -EINVAL;
	}
	rc = smtp_cred_load_string(text, path, out, err, errlen);
	OPENSSL_cleanse(text, got);
	free(text);
	return rc;
}

size_t smtp_cred_count(const struct smtp_cred_db *db)
{
	return db ? db->count : 0;
}

int smtp_cred_verify(const struct smtp_cred_db *db, const char *user, const char *pass)
{
	uint8_t got[HASH_LEN];
	const struct cred *c = NULL;
	struct cred key = {.user = (char *)user};

	if (!db || !user || !pass)
		return -EACCES;
	if (db->count)
		c = bsearch(&key, db->creds, db->count, sizeof(*db->creds), cred_cmp);
	if (!c) {
		/* same work for a user that does not exist */
		struct cred dummy = {
			.kind = CRED_PBKDF2, .iterations = DUMMY_ITERATIONS, .salt_len = 16};
		compute(&dummy, pass, got);
		return -EACCES;
	}
	if (compute(c, pass, got) < 0)
		return -EACCES;
	int ok = CRYPTO_memcmp(got, c->hash, HASH_LEN) == 0;
	OPENSSL_cleanse(got, sizeof(got));
	return ok ? 0 : -EACCES;
}

int smtp_cred_make_line(char *out, size_t outlen, const char *user, const char *pass,
			unsigned iterations)
{
	struct cred c = {.kind = CRED_PBKDF2, .iterations = iterations, .salt_len = 16};
	char salt_hex[2 * SALT_MAX + 1], hash_hex[2 * HASH_LEN + 1];
	uint8_t hash[HASH_LEN];

	if (!user || !*user || strchr(user, ':') || strlen(user) >= USER_MAX || iterations < 1000 ||
	    iterations > SMTP_CRED_MAX_ITERATIONS)
		return -EINVAL;
	for (const char *u = user; *u; u++)
		if ((unsigned char)*u <= 32 || *u == 127)
			return -EINVAL;
	if (RAND_bytes(c.salt, (int)c.salt_len) != 1)
		return -EIO;
	if (compute(&c, pass, hash) < 0)
		return -EIO;
	hex_encode(c.salt, c.salt_len, salt_hex);
	hex_encode(hash, HASH_LEN, hash_hex);
	int n = snprintf(out, outlen, "%s:$pbkdf2-sha256$%u$%s$%s", user, iterations, salt_hex,
			 hash_hex);
	if (n < 0 || (size_t)n >= outlen)
		return -ENOSPC;
	return n;
}
