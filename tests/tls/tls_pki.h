/*
 * tls_pki.h - a throw-away PKI for lib/tls tests, the fuzz target and the
 * bench: a tiny CA (ECDSA P-256) signing server certificates for
 * "mx.test.example" with an ECDSA P-256 and an RSA-2048 key, plus an
 * unrelated "evil" CA and a certificate it signed for the same name.
 * Everything is generated with OpenSSL APIs into a fresh temp directory.
 */
#ifndef MX_TLS_PKI_H
#define MX_TLS_PKI_H

#define TLS_PKI_HOST "mx.test.example"

struct tls_pki {
	char dir[128];
	char ca[192];			 /* trusted CA certificate (PEM) */
	char ec_crt[192], ec_key[192];	 /* leaf + CA chain, ECDSA P-256 */
	char rsa_crt[192], rsa_key[192]; /* leaf + CA chain, RSA-2048 */
	char evil_ca[192];
	char evil_crt[192], evil_key[192]; /* signed by evil_ca */
};

/** Create the PKI in a new directory under $TMPDIR (or /tmp).  0 or -1. */
int tls_pki_create(struct tls_pki *p);
/** Remove the files and the directory. */
void tls_pki_destroy(struct tls_pki *p);

#endif
