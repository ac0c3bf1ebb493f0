/*
 * domain.c - choosing the signing domain, and the domain of an address.
 *
 * The relay signs with the domain of the From: header when it holds a key
 * for it (that aligns with DMARC, RFC 7489 3.1), else with the envelope
 * sender's domain, else with the operator's default domain.
 *
 * dkim_from_domain() reads an RFC 5322 From: value (3.4, 3.6.2) with a small
 * tokeniser: comments (nested, with quoted pairs) and folding whitespace are
 * skipped, quoted strings and domain literals are single tokens, so an '@'
 * or '<' inside a display name, a quoted local part or a comment never
 * misleads it.  The first mailbox wins, whether it is an addr-spec, a
 * name-addr (<...>, obsolete routes "@a,@b:" skipped) or the first member of
 * a group ("Team: a@x, b@y;").
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

/* ---- From: header value (RFC 5322 3.4) ------------------------------------ */

enum from_tok { FT_END, FT_WORD, FT_QSTR, FT_LITERAL, FT_SPECIAL };

struct from_lexer {
	const char *v;
	size_t len, pos;
	/* the last token */
	enum from_tok type;
	char special;
	size_t start, end;
};

static bool from_space(char ch)
{
	return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n';
}

/* RFC 5322 specials that end an atom; '.' is kept inside words (dot-atom). */
static bool from_special(char ch)
{
	return ch == '(' || ch == ')' || ch == '<' || ch == '>' || ch == '[' || ch == ']' ||
	       ch == ':' || ch == ';' || ch == '@' || ch == '\\' || ch == ',' || ch == '"';
}

/* Skip CFWS: whitespace, folding and (nested) comments; an unclosed comment runs to the end. */
static void from_skip_cfws(struct from_lexer *l)
{
	unsigned depth = 0;
	while (l->pos < l->len) {
		char ch = l->v[l->pos];
		if (depth > 0) {
			if (ch == '\\')
				l->pos++;
			else if (ch == '(')
				depth++;
			else if (ch == ')')
				depth--;
			l->pos++;
		} else if (ch == '(') {
			depth = 1;
			l->pos++;
		} else if (from_space(ch)) {
			l->pos++;
		} else {
			break;
		}
	}
	if (l->pos > l->len)
		l->pos = l->len;
}

static enum from_tok from_next(struct from_lexer *l)
{
	from_skip_cfws(l);
	l->start = l->pos;
	if (l->pos >= l->len)
		return l->type = FT_END;
	char ch = l->v[l->pos];
	if (ch == '"' || ch == '[') {
		/* quoted-string or domain-literal: to the closing quote/bracket */
		char close = ch == '"' ? '"' : ']';
		l->pos++;
		while (l->pos < l->len && l->v[l->pos] != close)
			l->pos += l->v[l->pos] == '\\' ? 2 : 1;
		if (l->pos > l->len)
			l->pos = l->len;
		if (l->pos < l->len)
			l->pos++;
		l->end = l->pos;
		return l->type = ch == '"' ? FT_QSTR : FT_LITERAL;
	}
	if (from_special(ch)) {
		l->pos++;
		l->end = l->pos;
		l->special = ch;
		return l->type = FT_SPECIAL;
	}
	while (l->pos < l->len && !from_special(l->v[l->pos]) && !from_space(l->v[l->pos]))
		l->pos++;
	l->end = l->pos;
	return l->type = FT_WORD;
}

static bool from_is(const struct from_lexer *l, char special)
{
	return l->type == FT_SPECIAL && l->special == special;
}

/*
 * After an '@': the domain is the run of words that follows ("example.com",
 * or the obsolete "example . com" with CFWS between its atoms, RFC 5322 4.4).
 * Copies it lowercased into dom; returns its length, 0 if there is none or it
 * is not a DNS name (a domain literal cannot be a DKIM d=), -ENOSPC.
 */
static int from_domain_after_at(struct from_lexer *l, char *dom, size_t cap)
{
	size_t n = 0;
	bool bad = false;
	while (from_next(l) == FT_WORD) {
		for (size_t i = l->start; i < l->end; i++) {
			unsigned char ch = (unsigned char)l->v[i];
			if (!domain_char(ch))
				bad = true;
			if (n + 1 >= cap)
				return -ENOSPC;
			dom[n++] = (ch >= 'A' && ch <= 'Z') ? (char)(ch + 32) : (char)ch;
		}
	}
	if (l->type == FT_LITERAL)
		bad = true;
	/* one trailing dot is the root (absolute name); anything else malformed */
	if (n > 0 && dom[n - 1] == '.')
		n--;
	if (n == 0 || bad || dom[0] == '.' || dom[n - 1] == '.' || n > 253)
		return 0;
	for (size_t i = 1; i < n; i++)
		if (dom[i] == '.' && dom[i - 1] == '.')
			return 0;
	dom[n] = '\0';
	return (int)n;
}

int dkim_from_domain(const char *value, size_t len, char *out, size_t outlen)
{
	struct from_lexer l = {.v = value, .len = len};
	bool in_angle = false;
	int found = 0;	     /* length of the domain of the current mailbox in out */
	bool had_at = false; /* the current mailbox had an '@' (a usable domain or not) */
	unsigned tokens = 0;
	if (outlen == 0)
		return -ENOSPC;
	from_next(&l);
	/* each token consumes at least one byte, so len + 1 bounds the loop */
	while (l.type != FT_END && tokens++ <= len) {
		if (from_is(&l, '@')) {
			int n = from_domain_after_at(&l, out, outlen);
			if (n < 0)
				return n;
			/* "<@route,@route:user@dom>": a later '@' replaces the route */
			found = n;
			had_at = true;
			continue; /* from_domain_after_at() read the token after the domain */
		}
		if (from_is(&l, '<')) {
			in_angle = true;
			found = 0; /* "a@b <c@d>": the angle address is the mailbox */
			had_at = false;
		} else if (from_is(&l, '>')) {
			if (in_angle && (found > 0 || had_at))
				return found > 0 ? found : -ENOENT;
			in_angle = false;
			found = 0;
		} else if (from_is(&l, ':')) {
			/* group name, or the end of an obsolete route inside <> */
			found = 0;
			had_at = false;
		} else if ((from_is(&l, ',') || from_is(&l, ';')) && !in_angle) {
			if (found > 0 || had_at) /* the first mailbox ended */
				return found > 0 ? found : -ENOENT;
			/* empty group, or a list element without an address: go on */
		}
		from_next(&l);
	}
	return found > 0 ? found : -ENOENT;
}
