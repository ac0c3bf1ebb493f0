/*
 * fuzz_dkim_from.c - libFuzzer target for lib/dkim's header-value parsers.
 *
 * The input is an RFC 5322 From: value (any bytes: device firmware sends
 * anything) given to dkim_from_domain() and dkim_address_domain() with the
 * exact length (no NUL), and a published key record given to
 * dkim_key_record_check().  Checked: no out-of-bounds read (ASan), a result
 * that fits the output and is a lowercase DNS-ish name without empty labels,
 * -ENOSPC rather than overflow for a small buffer.
 */
#include "dkim.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static struct dkim_key *key;

static void check_domain(const char *d, int n, size_t cap)
{
	if (n == -ENOENT || n == -ENOSPC)
		return;
	if (n <= 0 || (size_t)n >= cap || d[n] != '\0' || strlen(d) != (size_t)n)
		abort();
	for (int i = 0; i < n; i++)
		if ((d[i] >= 'A' && d[i] <= 'Z') || d[i] == ' ')
			abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *v = malloc(size ? size : 1); /* exact size: ASan sees any overread */
	char out[256], tiny[4];
	if (!v)
		return 0;
	memcpy(v, data, size);
	int n = dkim_from_domain(v, size, out, sizeof(out));
	check_domain(out, n, sizeof(out));
	if (n > 0 && (out[0] == '.' || out[n - 1] == '.' || strstr(out, "..")))
		abort();
	n = dkim_from_domain(v, size, tiny, sizeof(tiny));
	check_domain(tiny, n, sizeof(tiny));
	n = dkim_address_domain(v, size, out, sizeof(out));
	check_domain(out, n, sizeof(out));
	if (!key) {
		char err[256];
		if (dkim_key_generate(DKIM_ALG_ED25519_SHA256, 0, &key, err, sizeof(err)) != 0)
			abort();
	}
	unsigned flags;
	char why[128];
	int rc = dkim_key_record_check(key, v, size, &flags, why, sizeof(why));
	if (rc == 0 && size < 40)
		abort(); /* a record that matches holds the 44-character p= */
	free(v);
	return 0;
}
