/*
 * tls_pki.c - generate the test PKI described in tls_pki.h.
 *
 * Certificates are valid from one hour ago for 30 days; leaf files carry the
 * issuing CA after the leaf (a chain file, as an operator would configure).
 */
#include "tls_pki.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

static int add_ext(X509 *cert, X509 *issuer, int nid, const char *value)
{
	X509V3_CTX v3;
	X509_EXTENSION *ext;
	int ok;

	X509V3_set_ctx_nodb(&v3);
	X509V3_set_ctx(&v3, issuer, cert, NULL, NULL, 0);
	ext = X509V3_EXT_conf_nid(NULL, &v3, nid, value);
	if (ext == NULL)
		return -1;
	ok = X509_add_ext(cert, ext, -1);
	X509_EXTENSION_free(ext);
	return ok ? 0 : -1;
}

/* issuer == NULL: self-signed CA. */
static X509 *make_cert(EVP_PKEY *key, const char *cn, X509 *issuer, EVP_PKEY *issuer_key,
		       long serial)
{
	X509 *c = X509_new();
	X509_NAME *name;

	if (c == NULL)
		return NULL;
	X509_set_version(c, X509_VERSION_3);
	ASN1_INTEGER_set(X509_get_serialNumber(c), serial);
	X509_gmtime_adj(X509_getm_notBefore(c), -3600);
	X509_gmtime_adj(X509_getm_notAfter(c), 30L * 24 * 3600);
	X509_set_pubkey(c, key);
	name = X509_get_subject_name(c);
	X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
	X509_set_issuer_name(c, issuer ? X509_get_subject_name(issuer) : name);
	if (issuer == NULL) {
		if (add_ext(c, c, NID_basic_constraints, "critical,CA:TRUE") < 0 ||
		    add_ext(c, c, NID_key_usage, "critical,keyCertSign,cRLSign") < 0 ||
		    add_ext(c, c, NID_subject_key_identifier, "hash") < 0)
			goto fail;
	} else {
		char san[128];

		snprintf(san, sizeof(san), "DNS:%s", cn);
		if (add_ext(c, issuer, NID_basic_constraints, "critical,CA:FALSE") < 0 ||
		    add_ext(c, issuer, NID_ext_key_usage, "serverAuth,clientAuth") < 0 ||
		    add_ext(c, issuer, NID_subject_alt_name, san) < 0 ||
		    add_ext(c, issuer, NID_authority_key_identifier, "keyid") < 0)
			goto fail;
	}
	if (!X509_sign(c, issuer_key ? issuer_key : key, EVP_sha256()))
		goto fail;
	return c;
fail:
	X509_free(c);
	return NULL;
}

static int write_pem(const char *path, X509 *leaf, X509 *chain, EVP_PKEY *key)
{
	FILE *f = fopen(path, "w");
	int ok = 1;

	if (f == NULL)
		return -1;
	if (leaf != NULL)
		ok &= PEM_write_X509(f, leaf);
	if (chain != NULL)
		ok &= PEM_write_X509(f, chain);
	if (key != NULL)
		ok &= PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL);
	if (fclose(f) != 0)
		ok = 0;
	return ok ? 0 : -1;
}

int tls_pki_create(struct tls_pki *p)
{
	const char *tmp = getenv("TMPDIR");
	EVP_PKEY *ca_key = NULL, *ec_key = NULL, *rsa_key = NULL, *evil_ca_key = NULL,
		 *evil_key = NULL;
	X509 *ca = NULL, *ec = NULL, *rsa = NULL, *evil_ca = NULL, *evil = NULL;
	int rc = -1;

	memset(p, 0, sizeof(*p));
	snprintf(p->dir, sizeof(p->dir), "%s/mxtls-XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
	if (mkdtemp(p->dir) == NULL)
		return -1;
	snprintf(p->ca, sizeof(p->ca), "%s/ca.pem", p->dir);
	snprintf(p->ec_crt, sizeof(p->ec_crt), "%s/ec.crt", p->dir);
	snprintf(p->ec_key, sizeof(p->ec_key), "%s/ec.key", p->dir);
	snprintf(p->rsa_crt, sizeof(p->rsa_crt), "%s/rsa.crt", p->dir);
	snprintf(p->rsa_key, sizeof(p->rsa_key), "%s/rsa.key", p->dir);
	snprintf(p->evil_ca, sizeof(p->evil_ca), "%s/evil-ca.pem", p->dir);
	snprintf(p->evil_crt, sizeof(p->evil_crt), "%s/evil.crt", p->dir);
	snprintf(p->evil_key, sizeof(p->evil_key), "%s/evil.key", p->dir);

	ca_key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	ec_key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	rsa_key = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
	evil_ca_key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	evil_key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	if (!ca_key || !ec_key || !rsa_key || !evil_ca_key || !evil_key)
		goto out;
	ca = make_cert(ca_key, "mxrelay test CA", NULL, NULL, 1);
	evil_ca = make_cert(evil_ca_key, "mxrelay test CA", NULL, NULL, 1);
	if (!ca || !evil_ca)
		goto out;
	ec = make_cert(ec_key, TLS_PKI_HOST, ca, ca_key, 2);
	rsa = make_cert(rsa_key, TLS_PKI_HOST, ca, ca_key, 3);
	evil = make_cert(evil_key, TLS_PKI_HOST, evil_ca, evil_ca_key, 2);
	if (!ec || !rsa || !evil)
		goto out;
	if (write_pem(p->ca, ca, NULL, NULL) < 0 || write_pem(p->ec_crt, ec, ca, NULL) < 0 ||
	    write_pem(p->ec_key, NULL, NULL, ec_key) < 0 ||
	    write_pem(p->rsa_crt, rsa, ca, NULL) < 0 ||
	    write_pem(p->rsa_key, NULL, NULL, rsa_key) < 0 ||
	    write_pem(p->evil_ca, evil_ca, NULL, NULL) < 0 ||
	    write_pem(p->evil_crt, evil, evil_ca, NULL) < 0 ||
	    write_pem(p->evil_key, NULL, NULL, evil_key) < 0)
		goto out;
	rc = 0;
out:
	EVP_PKEY_free(ca_key);
	EVP_PKEY_free(ec_key);
	EVP_PKEY_free(rsa_key);
	EVP_PKEY_free(evil_ca_key);
	EVP_PKEY_free(evil_key);
	X509_free(ca);
	X509_free(ec);
	X509_free(rsa);
	X509_free(evil_ca);
	X509_free(evil);
	if (rc < 0)
		tls_pki_destroy(p);
	return rc;
}

void tls_pki_destroy(struct tls_pki *p)
{
	const char *files[] = {p->ca,	   p->ec_crt,  p->ec_key,   p->rsa_crt,
			       p->rsa_key, p->evil_ca, p->evil_crt, p->evil_key};

	if (p->dir[0] == '\0')
		return;
	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++)
		if (files[i][0])
			unlink(files[i]);
	rmdir(p->dir);
	p->dir[0] = '\0';
}
