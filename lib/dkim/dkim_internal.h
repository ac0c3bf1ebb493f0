/*
 * dkim_internal.h - internal: the key structure shared by key.c and sign.c.
 */
#ifndef MX_DKIM_INTERNAL_H
#define MX_DKIM_INTERNAL_H

#include "dkim.h"

#include <stdlib.h>

#include <openssl/err.h>
#include <openssl/evp.h>

struct dkim_key {
	EVP_PKEY *pkey;
	enum dkim_alg alg;
};

static inline const char *dkim_alg_name(enum dkim_alg alg)
{
	return alg == DKIM_ALG_ED25519_SHA256 ? "ed25519-sha256" : "rsa-sha256";
}

#endif
