/*
 * key.c - DKIM private keys: load from PEM, generate, write, DNS TXT record.
 *
 * A struct dkim_key wraps an OpenSSL EVP_PKEY (RSA or Ed25519).  Loading
 * checks everything an operator can get wrong, each with its own error code
 * and a "path: reason" message: a missing or unreadable file, a file that is
 * not a PEM private key, a key of the wrong type for the configured
 * algorithm, and RSA sizes outside 1024..4096 bits (RFC 8301 section 3.2 sets
 * 1024 as the floor; 4096 is what verifiers are known to handle).
 */
#include "dkim.h"
#include "dkim_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

static const char *alg_key_name(enum dkim_alg alg)
{
	return alg == DKIM_ALG_ED25519_SHA256 ? "Ed25519" : "RSA";
}

/* Never prompt for a pass phrase: an encrypted key is a configuration error. */
static int no_password(char *buf, int size, int rwflag, void *u)
{
	(void)buf, (void)size, (void)rwflag, (void)u;
	return 0;
}

static int key_check(EVP_PKEY *pkey, enum dkim_alg expect, const char *path, enum dkim_alg *alg_out,
		     char *err, size_t errlen)
{
	enum dkim_alg alg;
	if (EVP_PKEY_is_a(pkey, "RSA")) {
		alg = DKIM_ALG_RSA_SHA256;
	} else if (EVP_PKEY_is_a(pkey, "ED25519")) {
		alg = DKIM_ALG_ED25519_SHA256;
	} else {
		snprintf(err, errlen, "%s: key type %s is neither RSA nor Ed25519", path,
			 EVP_PKEY_get0_type_name(pkey));
		return -EKEYREJECTED;
	}
	if (expect != DKIM_ALG_ANY && expect != alg) {
		snprintf(err, errlen, "%s: %s key, but the algorithm is %s", path,
			 alg_key_name(alg), dkim_alg_name(expect));
		return -EKEYREJECTED;
	}
	if (alg == DKIM_ALG_RSA_SHA256) {
		int bits = EVP_PKEY_get_bits(pkey);
		if (bits < DKIM_RSA_MIN_BITS || bits > DKIM_RSA_MAX_BITS) {
			snprintf(err, errlen, "%s: RSA key of %d bits; allowed %d to %d", path,
				 bits, DKIM_RSA_MIN_BITS, DKIM_RSA_MAX_BITS);
			return -ERANGE;
		}
	}
	*alg_out = alg;
	return 0;
}

static int key_wrap(EVP_PKEY *pkey, enum dkim_alg alg, struct dkim_key **out)
{
	struct dkim_key *k = calloc(1, sizeof(*k));
	if (!k)
		return -ENOMEM;
	k->pkey = pkey;
	k->alg = alg;
	*out = k;
	return 0;
}

int dkim_key_load(const char *path, enum dkim_alg expect, struct dkim_key **out, char *err,
		  size_t errlen)
{
	*out = NULL;
	FILE *fp = fopen(path, "r");
	if (!fp) {
		int e = errno;
		if (e == ENOENT)
			snprintf(err, errlen, "%s: key file not found", path);
		else
			snprintf(err, errlen, "%s: cannot open key file: %s", path, strerror(e));
		return -e;
	}
	struct stat st;
	if (fstat(fileno(fp), &st) == 0 && S_ISDIR(st.st_mode)) {
		fclose(fp);
		snprintf(err, errlen, "%s: is a directory, not a key file", path);
		return -EISDIR;
	}
	EVP_PKEY *pkey = PEM_read_PrivateKey(fp, NULL, no_password, NULL);
	int read_err = ferror(fp);
	fclose(fp);
	if (!pkey) {
		ERR_clear_error();
		if (read_err) {
			snprintf(err, errlen, "%s: read error", path);
			return -EIO;
		}
		snprintf(err, errlen,
			 "%s: not a PEM private key (PKCS#8 or RSA; encrypted keys are not "
			 "supported)",
			 path);
		return -EINVAL;
	}
	enum dkim_alg alg;
	int rc = key_check(pkey, expect, path, &alg, err, errlen);
	if (rc == 0)
		rc = key_wrap(pkey, alg, out);
	if (rc)
		EVP_PKEY_free(pkey);
	return rc;
}

int dkim_key_generate(enum dkim_alg alg, unsigned bits, struct dkim_key **out, char *err,
		      size_t errlen)
{
	EVP_PKEY *pkey = NULL;
	*out = NULL;
	if (alg == DKIM_ALG_RSA_SHA256) {
		if (bits == 0)
			bits = DKIM_RSA_DEFAULT_BITS;
		if (bits < DKIM_RSA_MIN_BITS || bits > DKIM_RSA_MAX_BITS) {
			snprintf(err, errlen, "RSA key size %u; allowed %d to %d", bits,
				 DKIM_RSA_MIN_BITS, DKIM_RSA_MAX_BITS);
			return -ERANGE;
		}
		pkey = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)bits);
	} else if (alg == DKIM_ALG_ED25519_SHA256) {
		pkey = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
	} else {
		snprintf(err, errlen, "unknown algorithm");
		return -EINVAL;
	}
	if (!pkey) {
		snprintf(err, errlen, "key generation failed in OpenSSL");
		ERR_clear_error();
		return -EIO;
	}
	int rc = key_wrap(pkey, alg, out);
	if (rc)
		EVP_PKEY_free(pkey);
	return rc;
}

int dkim_key_write_pem(const struct dkim_key *key, const char *path, char *err, size_t errlen)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0) {
		int e = errno;
		snprintf(err, errlen, "%s: %s", path, strerror(e));
		return -e;
	}
	FILE *fp = fdopen(fd, "w");
	if (!fp) {
		int e = errno;
		close(fd);
		snprintf(err, errlen, "%s: %s", path, strerror(e));
		return -e;
	}
	int ok = PEM_write_PrivateKey(fp, key->pkey, NULL, NULL, 0, NULL, NULL);
	if (fclose(fp) != 0 || !ok) {
		ERR_clear_error();
		snprintf(err, errlen, "%s: write failed", path);
		unlink(path);
		return -EIO;
	}
	return 0;
}

enum dkim_alg dkim_key_alg(const struct dkim_key *key)
{
	return key->alg;
}

unsigned dkim_key_bits(const struct dkim_key *key)
{
	return (unsigned)EVP_PKEY_get_bits(key->pkey);
}

int dkim_key_txt_record(const struct dkim_key *key, char *out, size_t outlen)
{
	unsigned char raw[4096];
	size_t raw_len = 0;
	if (key->alg == DKIM_ALG_ED25519_SHA256) {
		raw_len = sizeof(raw);
		if (!EVP_PKEY_get_raw_public_key(key->pkey, raw, &raw_len)) {
			ERR_clear_error();
			return -EIO;
		}
	} else {
		int n = i2d_PUBKEY(key->pkey, NULL);
		if (n <= 0 || (size_t)n > sizeof(raw))
			return -EIO;
		unsigned char *p = raw;
		n = i2d_PUBKEY(key->pkey, &p);
		if (n <= 0)
			return -EIO;
		raw_len = (size_t)n;
	}
	const char *k = key->alg == DKIM_ALG_ED25519_SHA256 ? "ed25519" : "rsa";
	size_t prefix = strlen("v=DKIM1; k=; p=") + strlen(k);
	size_t b64 = 4 * ((raw_len + 2) / 3);
	if (prefix + b64 + 1 > outlen)
		return -ENOSPC;
	int n = snprintf(out, outlen, "v=DKIM1; k=%s; p=", k);
	EVP_EncodeBlock((unsigned char *)out + n, raw, (int)raw_len);
	return (int)(prefix + b64);
}

void dkim_key_free(struct dkim_key *key)
{
	if (!key)
		return;
	EVP_PKEY_free(key->pkey);
	free(key);
}
