/*
 * parse.c - SMTP syntax: paths and mailboxes (RFC 5321 4.1.2), domains and
 * address literals (4.1.3), UTF-8 (RFC 6531), xtext (RFC 3461), base64
 * (RFC 4648, for AUTH).
 *
 * Every function takes a pointer and a length (no NUL needed), never reads
 * outside it, and answers hostile input with a negative errno.  Used by the
 * server session (server.c) and, later, by the client.
 */
#include "smtp.h"

#include <arpa/inet.h>
#include <errno.h>
#include <string.h>

static bool is_alpha(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool is_digit(unsigned char c)
{
	return c >= '0' && c <= '9';
}

/* RFC 5322 3.2.3 atext */
static bool is_atext(unsigned char c)
{
	return is_alpha(c) || is_digit(c) || (c && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL);
}

int smtp_utf8_valid(const char *str, size_t n)
{
	const unsigned char *s = (const unsigned char *)str;
	size_t i = 0;

	while (i < n) {
		unsigned char c = s[i];
		size_t len;
		uint32_t cp;

		if (c < 0x80) {
			i++;
			continue;
		}
		if (c >= 0xc2 && c <= 0xdf) {
			len = 2;
			cp = c & 0x1f;
		} else if (c >= 0xe0 && c <= 0xef) {
			len = 3;
			cp = c & 0x0f;
		} else if (c >= 0xf0 && c <= 0xf4) {
			len = 4;
			cp = c & 0x07;
		} else {
			return -EILSEQ;
		}
		if (n - i < len)
			return -EILSEQ;
		for (size_t k = 1; k < len; k++) {
			if ((s[i + k] & 0xc0) != 0x80)
				return -EILSEQ;
			cp = (cp << 6) | (s[i + k] & 0x3f);
		}
		/* RFC 3629 3: no overlongs, no surrogates, nothing above U+10FFFF. */
		if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) || cp > 0x10ffff ||
		    (cp >= 0xd800 && cp <= 0xdfff))
			return -EILSEQ;
		i += len;
	}
	return 0;
}

int smtp_domain_valid(const char *str, size_t n, bool utf8)
{
	const unsigned char *s = (const unsigned char *)str;
	size_t label = 0;

	if (n == 0 || n > SMTP_DOMAIN_MAX)
		return -EINVAL;
	if (utf8 && smtp_utf8_valid(str, n) < 0)
		return -EINVAL;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = s[i];

		if (c == '.') {
			/* sub-domain = Let-dig [Ldh-str]: no empty label, no trailing '-' */
			if (label == 0 || s[i - 1] == '-')
				return -EINVAL;
			label = 0;
			continue;
		}
		if (c == '-') {
			if (label == 0)
				return -EINVAL;
		} else if (!(is_alpha(c) || is_digit(c) || (utf8 && c >= 0x80))) {
			return -EINVAL;
		}
		if (++label > 63)
			return -EINVAL;
	}
	if (label == 0 || s[n - 1] == '-')
		return -EINVAL;
	return 0;
}

/* RFC 5321 4.1.3 IPv4-address-literal: Snum 3("." Snum), Snum 0..255 in 1-3 digits. */
static int ipv4_literal_valid(const char *s, size_t n)
{
	size_t i = 0;

	for (int part = 0; part < 4; part++) {
		unsigned v = 0;
		size_t digits = 0;

		if (part > 0) {
			if (i >= n || s[i] != '.')
				return -EINVAL;
			i++;
		}
		while (i < n && is_digit((unsigned char)s[i]) && digits < 4) {
			v = v * 10 + (unsigned)(s[i] - '0');
			i++;
			digits++;
		}
		if (digits == 0 || digits > 3 || v > 255)
			return -EINVAL;
	}
	return i == n ? 0 : -EINVAL;
}

int smtp_address_literal_valid(const char *s, size_t n)
{
	if (n < 3 || s[0] != '[' || s[n - 1] != ']')
		return -EINVAL;
	s++;
	n -= 2;
	if (n > 5 && strncasecmp(s, "IPv6:", 5) == 0) {
		char buf[INET6_ADDRSTRLEN + 1];
		unsigned char bin[16];

		if (n - 5 >= sizeof(buf))
			return -EINVAL;
		for (size_t i = 5; i < n; i++) {
			char c = s[i];
			if (!(is_digit((unsigned char)c) || (c >= 'a' && c <= 'f') ||
			      (c >= 'A' && c <= 'F') || c == ':' || c == '.'))
				return -EINVAL;
		}
		memcpy(buf, s + 5, n - 5);
		buf[n - 5] = '\0';
		return inet_pton(AF_INET6, buf, bin) == 1 ? 0 : -EINVAL;
	}
	/* General-address-literal needs a registered tag; there is none but IPv6. */
	return ipv4_literal_valid(s, n);
}

int smtp_xtext_valid(const char *str, size_t n)
{
	const unsigned char *s = (const unsigned char *)str;

	for (size_t i = 0; i < n; i++) {
		unsigned char c = s[i];

		if (c == '+') {
			/* hexchar = "+" 2(%x30-39 / %x41-46), upper case only */
			for (int k = 1; k <= 2; k++) {
				if (i + k >= n)
					return -EINVAL;
				unsigned char h = s[i + k];
				if (!(is_digit(h) || (h >= 'A' && h <= 'F')))
					return -EINVAL;
			}
			i += 2;
		} else if (c < 33 || c > 126 || c == '=') {
			return -EINVAL;
		}
	}
	return 0;
}

/* Local-part = Dot-string / Quoted-string; returns its length or -EINVAL. */
static int parse_local_part(const char *str, size_t n, bool utf8, bool *quoted)
{
	const unsigned char *s = (const unsigned char *)str;
	size_t i = 0;

	*quoted = false;
	if (n > 0 && s[0] == '"') {
		*quoted = true;
		for (i = 1; i < n; i++) {
			unsigned char c = s[i];
			if (c == '"')
				return (int)(i + 1);
			if (c == '\\') {
				/* quoted-pairSMTP = %d92 %d32-126 */
				if (i + 1 >= n || s[i + 1] < 32 || s[i + 1] > 126)
					return -EINVAL;
				i++;
			} else if (!((c >= 32 && c <= 126) || (utf8 && c >= 0x80))) {
				return -EINVAL;
			}
		}
		return -EINVAL;
	}
	/* Dot-string = Atom *("." Atom) */
	size_t atom = 0;
	for (i = 0; i < n; i++) {
		unsigned char c = s[i];
		if (c == '.') {
			if (atom == 0)
				return -EINVAL;
			atom = 0;
		} else if (is_atext(c) || (utf8 && c >= 0x80)) {
			atom++;
		} else {
			break;
		}
	}
	if (atom == 0)
		return -EINVAL;
	return (int)i;
}

/* Domain or address literal at s[0..n) up to a delimiter; returns its length. */
static int domain_len(const char *s, size_t n)
{
	size_t i = 0;

	if (n > 0 && s[0] == '[') {
		while (i < n && s[i] != ']')
			i++;
		return i < n ? (int)(i + 1) : -EINVAL;
	}
	while (i < n && s[i] != '>' && s[i] != ',' && s[i] != ':' && s[i] != ' ')
		i++;
	return (int)i;
}

static int parse_mailbox(const char *s, size_t n, bool utf8, struct smtp_address *out, size_t *used)
{
	bool quoted;
	int lp = parse_local_part(s, n, utf8, &quoted);

	if (lp < 0)
		return -EINVAL;
	size_t i = (size_t)lp;
	/* RFC 5321 4.5.1: "Postmaster" without a domain must be accepted (RCPT). */
	if ((i >= n || s[i] != '@') && !quoted && lp == 10 &&
	    strncasecmp(s, "postmaster", 10) == 0) {
		memcpy(out->text, s, i);
		out->len = (uint16_t)i;
		out->at = (uint16_t)i;
		*used = i;
		return 0;
	}
	if (i >= n || s[i] != '@')
		return -EINVAL;
	if (lp > SMTP_LOCAL_PART_MAX)
		return -ENAMETOOLONG;
	int dl = domain_len(s + i + 1, n - i - 1);
	if (dl <= 0)
		return -EINVAL;
	const char *dom = s + i + 1;
	if (dom[0] == '[') {
		if (smtp_address_literal_valid(dom, (size_t)dl) < 0)
			return -EINVAL;
		out->literal = true;
	} else if (dl > SMTP_DOMAIN_MAX) {
		return -ENAMETOOLONG;
	} else if (smtp_domain_valid(dom, (size_t)dl, utf8) < 0) {
		return -EINVAL;
	}
	size_t total = i + 1 + (size_t)dl;
	if (total > SMTP_PATH_MAX - 2)
		return -ENAMETOOLONG;
	memcpy(out->text, s, total);
	out->len = (uint16_t)total;
	out->at = (uint16_t)i;
	out->quoted = quoted;
	*used = total;
	return 0;
}

static bool has_non_ascii(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] >= 0x80)
			return true;
	return false;
}

int smtp_parse_path(const char *s, size_t n, bool allow_null, bool utf8, struct smtp_address *out,
		    size_t *consumed)
{
	size_t i = 0, used;
	bool bracket;
	int rc;

	memset(out, 0, sizeof(*out));
	/* The path ends at the first space outside a quoted string; look there for 8-bit. */
	size_t end = 0;
	bool inq = false;
	for (end = 0; end < n; end++) {
		if (s[end] == '"' && (end == 0 || s[end - 1] != '\\'))
			inq = !inq;
		if (s[end] == ' ' && !inq)
			break;
	}
	if (has_non_ascii(s, end)) {
		if (!utf8 || smtp_utf8_valid(s, end) < 0)
			return -EILSEQ;
		out->utf8 = true;
	}
	bracket = n > 0 && s[0] == '<';
	if (bracket)
		i = 1;
	if (bracket && i < n && s[i] == '>') {
		if (!allow_null)
			return -EINVAL;
		*consumed = 2;
		return 0;
	}
	/* A-d-l = At-domain *( "," At-domain ) ":" ; parsed, then ignored (RFC 5321 4.1.2 / C) */
	if (bracket && i < n && s[i] == '@') {
		for (;;) {
			if (i >= n || s[i] != '@')
				return -EINVAL;
			i++;
			int dl = domain_len(s + i, n - i);
			if (dl <= 0 || smtp_domain_valid(s + i, (size_t)dl, utf8) < 0)
				return -EINVAL;
			i += (size_t)dl;
			if (i < n && s[i] == ',') {
				i++;
				continue;
			}
			if (i < n && s[i] == ':') {
				i++;
				break;
			}
			return -EINVAL;
		}
		if (i > SMTP_PATH_MAX)
			return -ENAMETOOLONG;
		out->routed = true;
	}
	rc = parse_mailbox(s + i, n - i, utf8, out, &used);
	if (rc < 0)
		return rc;
	i += used;
	if (bracket) {
		if (i >= n || s[i] != '>')
			return -EINVAL;
		i++;
	}
	if (i < n && s[i] != ' ')
		return -EINVAL;
	out->text[out->len] = '\0';
	*consumed = i;
	return 0;
}

static int b64_val(unsigned char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	return -1;
}

int smtp_base64_decode(const char *str, size_t n, uint8_t *out, size_t outlen)
{
	const unsigned char *s = (const unsigned char *)str;
	size_t o = 0;

	if (n % 4 != 0)
		return -EINVAL;
	for (size_t i = 0; i < n; i += 4) {
		int v[4];
		int pad = 0;

		for (int k = 0; k < 4; k++) {
			if (s[i + k] == '=') {
				/* padding only in the last quantum, only at its end */
				if (i + 4 != n || k < 2)
					return -EINVAL;
				v[k] = 0;
				pad++;
			} else {
				if (pad)
					return -EINVAL;
				v[k] = b64_val(s[i + k]);
				if (v[k] < 0)
					return -EINVAL;
			}
		}
		uint32_t w = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 |
			     (uint32_t)v[3];
		size_t k = 3 - (size_t)pad;
		if (o + k > outlen)
			return -ENOSPC;
		out[o++] = (uint8_t)(w >> 16);
		if (k > 1)
			out[o++] = (uint8_t)(w >> 8);
		if (k > 2)
			out[o++] = (uint8_t)w;
	}
	return (int)o;
}

int smtp_base64_encode(const uint8_t *p, size_t n, char *out, size_t outlen)
{
	static const char tab[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	size_t need = (n + 2) / 3 * 4 + 1, o = 0;

	if (need > outlen)
		return -ENOSPC;
	for (size_t i = 0; i < n; i += 3) {
		uint32_t w = (uint32_t)p[i] << 16;
		if (i + 1 < n)
			w |= (uint32_t)p[i + 1] << 8;
		if (i + 2 < n)
			w |= p[i + 2];
		out[o++] = tab[(w >> 18) & 63];
		out[o++] = tab[(w >> 12) & 63];
		out[o++] = i + 1 < n ? tab[(w >> 6) & 63] : '=';
		out[o++] = i + 2 < n ? tab[w & 63] : '=';
	}
	out[o] = '\0';
	return (int)o;
}
