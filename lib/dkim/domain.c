/*
 * domain.c - choosing the signing domain, and the domain of an address.
 *
 * The relay signs with the domain of the From: header when it holds a key
 * for it (that aligns with DMARC, RFC 7489 3.1), else with the envelope
 * sender's domain, else with the operator's default domain.
 */
#include "dkim.h"

#include <errno.h>
#include <string.h>
#include <strings.h>

int dkim_choose_domain(const char *const *domains, size_t count, int default_index,
		       const char *from_domain, const char *envelope_domain)
{
	const char *want[2] = {from_domain, envelope_domain};
	for (int w = 0; w < 2; w++) {
		if (!want[w] || !want[w][0])
			continue;
		for (size_t i = 0; i < count; i++)
			if (domains[i] && strcasecmp(domains[i], want[w]) == 0)
				return (int)i;
	}
	if (default_index >= 0 && (size_t)default_index < count)
		return default_index;
	return -ENOENT;
}

static bool domain_char(unsigned char ch)
{
	return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
	       ch == '-' || ch == '.' || ch == '_' || ch >= 0x80;
}

/*
 * The last '@' outside comments and quoted strings starts the domain; it runs
 * while domain characters follow.  Good enough for From: of device firmware
 * and envelope paths; group syntax and domain literals yield -ENOENT.
 */
int dkim_address_domain(const char *v, size_t len, char *out, size_t outlen)
{
	size_t at = len;
	int depth = 0;
	bool quoted = false;
	for (size_t i = 0; i < len; i++) {
		char ch = v[i];
		if (quoted) {
			if (ch == '\\' && i + 1 < len)
				i++;
			else if (ch == '"')
				quoted = false;
		} else if (ch == '"' && depth == 0) {
			quoted = true;
		} else if (ch == '(') {
			depth++;
		} else if (ch == ')' && depth > 0) {
			depth--;
		} else if (ch == '\\' && depth > 0 && i + 1 < len) {
			i++;
		} else if (ch == '@' && depth == 0) {
			at = i;
		}
	}
	if (at == len)
		return -ENOENT;
	size_t start = at + 1, end = start;
	while (end < len && domain_char((unsigned char)v[end]))
		end++;
	while (end > start && v[end - 1] == '.')
		end--;
	if (end == start || v[start] == '.')
		return -ENOENT;
	if (end - start + 1 > outlen)
		return -ENOSPC;
	for (size_t i = start; i < end; i++) {
		char ch = v[i];
		out[i - start] = (ch >= 'A' && ch <= 'Z') ? (char)(ch + 32) : ch;
	}
	out[end - start] = '\0';
	return (int)(end - start);
}
