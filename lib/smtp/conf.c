/*
 * conf.c - fill a struct smtp_server_conf from the INI file (lib/core cfg).
 *
 * Keys (all optional; absent keys keep smtp_server_conf_defaults()):
 *   [smtp]  hostname, max_message_size (size), max_recipients, max_command_line,
 *           max_text_line, max_errors, max_auth_failures, max_pending_input (size),
 *           command_timeout, data_timeout (durations), bare_lf = reject|normalise,
 *           long_lines = reject|allow, local_domains, relay_domains (lists)
 *   [relay] allow_networks (list of A.B.C.D/len)
 * Lists are separated by commas and/or spaces.  The listener kind and
 * tls_available are per listener and set by the caller afterwards.  Strings
 * and arrays live in a store the caller frees after the last session.
 */
#include "smtp.h"
#include "core.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LIST_MAX 1024

struct smtp_server_conf_store {
	char *hostname;
	char **local_domains;
	size_t local_count;
	char **relay_domains;
	size_t relay_count;
	struct smtp_ipv4_prefix *networks;
	size_t network_count;
};

static int fail(char *err, size_t errlen, const struct cfg_file *cf, const struct cfg_entry *e,
		const char *msg)
{
	if (err && errlen)
		snprintf(err, errlen, "%s:%d: [%s] %s: %s", cf->path ? cf->path : "config", e->line,
			 e->section, e->key, msg);
	return -EINVAL;
}

/* Split "a, b c" into tokens; calls fn for each; stops on its error. */
static int each_token(const char *v, int (*fn)(void *ctx, const char *tok, size_t len), void *ctx)
{
	const char *p = v;

	while (*p) {
		while (*p == ',' || *p == ' ' || *p == '\t')
			p++;
		const char *start = p;
		while (*p && *p != ',' && *p != ' ' && *p != '\t')
			p++;
		if (p > start) {
			int rc = fn(ctx, start, (size_t)(p - start));
			if (rc < 0)
				return rc;
		}
	}
	return 0;
}

struct domain_list {
	char **items;
	size_t count;
};

static int add_domain(void *ctx, const char *tok, size_t len)
{
	struct domain_list *l = ctx;

	if (l->count == LIST_MAX)
		return -E2BIG;
	if (!(tok[0] == '[' ? smtp_address_literal_valid(tok, len) == 0
			    : smtp_domain_valid(tok, len, false) == 0))
		return -EINVAL;
	char **n = realloc(l->items, (l->count + 1) * sizeof(*n));
	if (!n)
		return -ENOMEM;
	l->items = n;
	l->items[l->count] = strndup(tok, len);
	if (!l->items[l->count])
		return -ENOMEM;
	l->count++;
	return 0;
}

struct net_list {
	struct smtp_ipv4_prefix *items;
	size_t count;
};

static int add_network(void *ctx, const char *tok, size_t len)
{
	struct net_list *l = ctx;
	char buf[32];
	uint32_t addr;
	uint8_t plen;

	if (l->count == LIST_MAX)
		return -E2BIG;
	if (len >= sizeof(buf))
		return -EINVAL;
	memcpy(buf, tok, len);
	buf[len] = '\0';
	if (cfg_parse_ipv4_prefix(buf, &addr, &plen) < 0)
		return -EINVAL;
	struct smtp_ipv4_prefix *n = realloc(l->items, (l->count + 1) * sizeof(*n));
	if (!n)
		return -ENOMEM;
	l->items = n;
	l->items[l->count].addr = addr;
	l->items[l->count].len = plen;
	l->count++;
	return 0;
}

void smtp_server_conf_store_free(struct smtp_server_conf_store *st)
{
	if (!st)
		return;
	free(st->hostname);
	for (size_t i = 0; i < st->local_count; i++)
		free(st->local_domains[i]);
	for (size_t i = 0; i < st->relay_count; i++)
		free(st->relay_domains[i]);
	free(st->local_domains);
	free(st->relay_domains);
	free(st->networks);
	free(st);
}

static int get_u64(struct cfg_file *cf, const char *key, uint64_t min, uint64_t max, uint64_t *out,
		   bool size, char *err, size_t errlen)
{
	struct cfg_entry *e = cfg_get(cf, "smtp", NULL, key);
	uint64_t v;

	if (!e)
		return 0;
	int rc = size ? cfg_parse_size(e->value, &v) : cfg_parse_u64(e->value, min, max, &v);
	if (rc < 0 || v < min || v > max) {
		char msg[96];
		snprintf(msg, sizeof(msg), "expected a %s in %llu..%llu", size ? "size" : "number",
			 (unsigned long long)min, (unsigned long long)max);
		return fail(err, errlen, cf, e, msg);
	}
	*out = v;
	return 0;
}

static int get_duration(struct cfg_file *cf, const char *key, uint64_t *out, char *err,
			size_t errlen)
{
	struct cfg_entry *e = cfg_get(cf, "smtp", NULL, key);
	uint64_t v;

	if (!e)
		return 0;
	if (cfg_parse_duration_us(e->value, &v) < 0 || v < 1000000 || v > 3600ull * 1000000)
		return fail(err, errlen, cf, e, "expected a duration of 1s..1h");
	*out = v;
	return 0;
}

static int get_list(struct cfg_file *cf, const char *section, const char *key,
		    struct domain_list *l, char *err, size_t errlen)
{
	struct cfg_entry *e = cfg_get(cf, section, NULL, key);

	if (!e)
		return 0;
	int rc = each_token(e->value, add_domain, l);
	if (rc == -ENOMEM)
		return rc;
	if (rc < 0)
		return fail(err, errlen, cf, e, "expected domains or [address literals]");
	return 0;
}

int smtp_server_conf_load(struct cfg_file *cf, struct smtp_server_conf *conf,
			  struct smtp_server_conf_store **out, char *err, size_t errlen)
{
	struct smtp_server_conf_store *st = calloc(1, sizeof(*st));
	struct domain_list locals = {0}, relays = {0};
	struct net_list nets = {0};
	struct cfg_entry *e;
	uint64_t v;
	int rc = 0;

	if (!st)
		return -ENOMEM;
	smtp_server_conf_defaults(conf);
#define U64(key, field, min, max, size)                                                            \
	do {                                                                                       \
		v = conf->field;                                                                   \
		if (rc == 0 && (rc = get_u64(cf, key, min, max, &v, size, err, errlen)) == 0)      \
			conf->field = v;                                                           \
	} while (0)
	U64("max_message_size", max_message_size, 1024, 1ull << 40, true);
	U64("max_recipients", max_recipients, 100, 100000, false);
	U64("max_command_line", max_command_line, 512, 65536, false);
	U64("max_text_line", max_text_line, 1000, 1u << 20, false);
	U64("max_errors", max_errors, 1, 10000, false);
	U64("max_auth_failures", max_auth_failures, 1, 1000, false);
	U64("max_pending_input", max_pending_input, 512, 16u << 20, true);
#undef U64
	if (rc == 0)
		rc = get_duration(cf, "command_timeout", &conf->timeout_command_us, err, errlen);
	if (rc == 0)
		rc = get_duration(cf, "data_timeout", &conf->timeout_data_us, err, errlen);
	if (rc == 0 && (e = cfg_get(cf, "smtp", NULL, "bare_lf"))) {
		if (strcmp(e->value, "reject") == 0)
			conf->bare_eol = SMTP_BARE_EOL_REJECT;
		else if (strcmp(e->value, "normalise") == 0 || strcmp(e->value, "normalize") == 0)
			conf->bare_eol = SMTP_BARE_EOL_NORMALISE;
		else
			rc = fail(err, errlen, cf, e, "expected reject or normalise");
	}
	if (rc == 0 && (e = cfg_get(cf, "smtp", NULL, "long_lines"))) {
		if (strcmp(e->value, "reject") == 0)
			conf->long_line = SMTP_LONG_LINE_REJECT;
		else if (strcmp(e->value, "allow") == 0)
			conf->long_line = SMTP_LONG_LINE_ALLOW;
		else
			rc = fail(err, errlen, cf, e, "expected reject or allow");
	}
	if (rc == 0 && (e = cfg_get(cf, "smtp", NULL, "hostname"))) {
		if (smtp_domain_valid(e->value, strlen(e->value), false) < 0)
			rc = fail(err, errlen, cf, e, "not a valid domain name");
		else if (!(st->hostname = strdup(e->value)))
			rc = -ENOMEM;
		else
			conf->hostname = st->hostname;
	}
	if (rc == 0)
		rc = get_list(cf, "smtp", "local_domains", &locals, err, errlen);
	if (rc == 0)
		rc = get_list(cf, "smtp", "relay_domains", &relays, err, errlen);
	if (rc == 0 && (e = cfg_get(cf, "relay", NULL, "allow_networks"))) {
		rc = each_token(e->value, add_network, &nets);
		if (rc < 0 && rc != -ENOMEM)
			rc = fail(err, errlen, cf, e, "expected A.B.C.D/len, ...");
	}
	st->local_domains = locals.items;
	st->local_count = locals.count;
	st->relay_domains = relays.items;
	st->relay_count = relays.count;
	st->networks = nets.items;
	st->network_count = nets.count;
	if (rc < 0) {
		smtp_server_conf_store_free(st);
		return rc;
	}
	conf->local_domains = (const char *const *)st->local_domains;
	conf->local_domain_count = st->local_count;
	conf->relay_domains = (const char *const *)st->relay_domains;
	conf->relay_domain_count = st->relay_count;
	conf->allow_networks = st->networks;
	conf->allow_network_count = st->network_count;
	*out = st;
	return 0;
}
