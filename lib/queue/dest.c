/*
 * dest.c - destinations and descriptors: which destination a recipient goes
 * to, which core owns that destination, and the descriptor an accepting
 * core hands to the owner core.
 *
 * A destination is the lowercased recipient domain, an IPv4 address literal
 * ("[192.0.2.10]", RFC 5321 4.1.3: no MX lookup), or the configured
 * smarthost, which takes everything.  Recipients of one message with the same
 * destination travel in one descriptor (the owner splits it into
 * transactions of at most rcpts_per_txn).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "queue.h"
#include "queue_internal.h"

static char lower(char c)
{
	return (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
}

uint64_t qi_name_hash(const char *name)
{
	uint64_t h = 0xcbf29ce484222325ull;

	for (const char *p = name; *p; p++) {
		h ^= (uint8_t)lower(*p);
		h *= 0x100000001b3ull;
	}
	return h;
}

size_t qi_sanitize(char *buf, size_t cap, const char *s)
{
	size_t n = 0;

	if (cap == 0)
		return 0;
	for (; s && *s && n + 1 < cap; s++) {
		unsigned char ch = (unsigned char)*s;
		if (ch == '\r' || ch == '\n' || ch == '\t')
			ch = ' ';
		else if (ch < 0x20 || ch == 0x7f)
			continue;
		if (ch == ' ' && n > 0 && buf[n - 1] == ' ')
			continue;
		buf[n++] = (char)ch;
	}
	while (n > 0 && buf[n - 1] == ' ')
		n--;
	buf[n] = 0;
	return n;
}

unsigned queue_dest_owner(const char *name, unsigned n_cores)
{
	if (n_cores <= 1)
		return 0;
	uint64_t h = qi_name_hash(name);
	/* Fold the high bits in: FNV's low bits alone spread short names poorly. */
	h ^= h >> 29;
	h *= 0xbf58476d1ce4e5b9ull;
	h ^= h >> 32;
	return (unsigned)(h % n_cores);
}

int qi_parse_literal(const char *s, uint32_t *addr)
{
	uint32_t a = 0;
	unsigned parts = 0;
	const char *p = s;

	if (*p++ != '[')
		return -EINVAL;
	while (parts < 4) {
		unsigned v = 0, digits = 0;
		while (*p >= '0' && *p <= '9' && digits < 4) {
			v = v * 10 + (unsigned)(*p - '0');
			p++, digits++;
		}
		if (digits == 0 || digits > 3 || v > 255)
			return -EINVAL;
		a = (a << 8) | v;
		parts++;
		if (parts < 4 && *p++ != '.')
			return -EINVAL;
	}
	if (p[0] != ']' || p[1] != 0)
		return -EINVAL;
	*addr = a;
	return 0;
}

enum queue_dest_kind queue_dest_of(const struct queue_config *cfg, const char *rcpt,
				   char out[QUEUE_DEST_MAX])
{
	const char *at = strrchr(rcpt, '@');
	size_t len;

	out[0] = 0;
	if (cfg && cfg->smarthost_set) {
		snprintf(out, QUEUE_DEST_MAX, "%s", cfg->smarthost_name);
		return QUEUE_DEST_SMARTHOST;
	}
	if (!at || at[1] == 0)
		return QUEUE_DEST_INVALID;
	len = strlen(at + 1);
	while (len > 0 && at[1 + len - 1] == '.') /* "example.com." is example.com */
		len--;
	if (len == 0 || len >= QUEUE_DEST_MAX)
		return QUEUE_DEST_INVALID;
	for (size_t i = 0; i < len; i++)
		out[i] = lower(at[1 + i]);
	out[len] = 0;
	if (out[0] == '[') {
		uint32_t a;
		if (qi_parse_literal(out, &a) != 0) {
			out[0] = 0; /* IPv6 literals: this relay routes IPv4 only */
			return QUEUE_DEST_INVALID;
		}
		return QUEUE_DEST_LITERAL;
	}
	return QUEUE_DEST_DOMAIN;
}

void queue_desc_free(struct queue_desc *d)
{
	if (!d)
		return;
	for (uint32_t i = 0; i < d->rcpt_count; i++) {
		free(d->rcpts[i].text);
		free(d->rcpts[i].remote_mta);
	}
	free(d);
}

static size_t slen(const char *s)
{
	return s ? strlen(s) + 1 : 0;
}

static const char *scopy(char **cursor, const char *s)
{
	if (!s)
		return NULL;
	size_t n = strlen(s) + 1;
	char *dst = *cursor;
	memcpy(dst, s, n);
	*cursor += n;
	return dst;
}

int queue_split(const struct queue_config *cfg, uint64_t msg_id, const struct spool_envelope *env,
		const struct spool_rcpt_status *st, const struct spool_location *loc,
		uint64_t body_len, struct queue_desc **out, unsigned max)
{
	struct group {
		char name[QUEUE_DEST_MAX];
		uint8_t kind;
		uint32_t count;
		size_t strings;
	};
	struct group *groups;
	int32_t *gi;
	unsigned ngroups = 0;
	int rc = 0;

	if (!env || !env->rcpts || env->rcpt_count == 0 || !out || max == 0)
		return -EINVAL;
	groups = calloc(max, sizeof(*groups));
	gi = calloc(env->rcpt_count, sizeof(*gi));
	if (!groups || !gi) {
		free(groups);
		free(gi);
		return -ENOMEM;
	}
	for (uint32_t i = 0; i < env->rcpt_count; i++) {
		char name[QUEUE_DEST_MAX];
		enum queue_dest_kind kind;
		unsigned g;

		gi[i] = -1;
		if (st && st[i].state != SPOOL_RCPT_QUEUED && st[i].state != SPOOL_RCPT_DEFERRED)
			continue;
		kind = queue_dest_of(cfg, env->rcpts[i].addr ? env->rcpts[i].addr : "", name);
		for (g = 0; g < ngroups; g++)
			if (groups[g].kind == kind && strcmp(groups[g].name, name) == 0)
				break;
		if (g == ngroups) {
			if (ngroups == max) {
				rc = -ENOBUFS;
				goto out;
			}
			memcpy(groups[g].name, name, sizeof(name));
			groups[g].kind = (uint8_t)kind;
			ngroups++;
		}
		gi[i] = (int32_t)g;
		groups[g].count++;
		groups[g].strings += slen(env->rcpts[i].addr ? env->rcpts[i].addr : "") +
				     slen(env->rcpts[i].orcpt);
	}
	for (unsigned g = 0; g < ngroups; g++) {
		size_t size = sizeof(struct queue_desc) +
			      groups[g].count * sizeof(struct queue_desc_rcpt) +
			      slen(env->sender ? env->sender : "") + slen(env->envid) +
			      slen(env->message_id) + groups[g].strings;
		struct queue_desc *d = calloc(1, size);
		char *cur;
		uint32_t k = 0;

		if (!d) {
			for (unsigned j = 0; j < g; j++)
				queue_desc_free(out[j]);
			rc = -ENOMEM;
			goto out;
		}
		d->msg_id = msg_id;
		spool_id_format(msg_id, d->id_str);
		memcpy(d->dest, groups[g].name, QUEUE_DEST_MAX);
		d->dest_kind = groups[g].kind;
		if (loc)
			d->loc = *loc;
		d->body_len = body_len;
		d->group_index = (uint16_t)g;
		d->group_count = (uint16_t)ngroups;
		d->ret = env->ret;
		d->arrival_us = env->arrival_us;
		d->rcpts = (struct queue_desc_rcpt *)(d + 1);
		d->rcpt_count = groups[g].count;
		d->pending = groups[g].count;
		cur = (char *)(d->rcpts + groups[g].count);
		d->sender = scopy(&cur, env->sender ? env->sender : "");
		d->envid = scopy(&cur, env->envid);
		d->message_id = scopy(&cur, env->message_id);
		if (env->sender && env->sender[0] == 0)
			d->flags |= QUEUE_DESC_F_DSN;
		for (uint32_t i = 0; i < env->rcpt_count; i++) {
			if (gi[i] != (int32_t)g)
				continue;
			struct queue_desc_rcpt *r = &d->rcpts[k++];
			r->addr = scopy(&cur, env->rcpts[i].addr ? env->rcpts[i].addr : "");
			r->orcpt = scopy(&cur, env->rcpts[i].orcpt);
			r->index = i;
			r->notify = env->rcpts[i].notify;
			r->state = st ? st[i].state : SPOOL_RCPT_QUEUED;
		}
		out[g] = d;
	}
	rc = (int)ngroups;
out:
	free(groups);
	free(gi);
	return rc;
}
