/*
 * conf.c - lib/queue configuration: defaults, the [queue] section, the
 * smarthost ([relay] smarthost) and the retry schedule.
 *
 * queue_config_from_cfg() validates every key it reads and reports
 * "file:line: message" so that --check-config shows configuration errors.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core.h"
#include "queue.h"

void queue_config_defaults(struct queue_config *c)
{
	memset(c, 0, sizeof(*c));
	c->max_connections = 10;
	c->connection_budget = 100;
	c->msgs_per_connection = 100;
	c->msgs_per_second = 0;
	c->rate_burst = 0;
	c->rcpts_per_txn = 100;
	c->pipeline_depth = 4;
	c->backoff_initial_us = 60ull * 1000000;
	c->backoff_max_us = 3600ull * 1000000;
	c->idle_timeout_us = 5ull * 1000000;
	c->conn_max_age_us = 300ull * 1000000;
	c->route_ttl_us = 60ull * 1000000;
	static const uint64_t steps[] = {60, 300, 900, 3600, 14400};
	for (unsigned i = 0; i < 5; i++)
		c->retry_us[i] = steps[i] * 1000000;
	c->retry_count = 5;
	c->max_age_us = 5ull * 86400 * 1000000;
	c->dsn_max_full_bytes = 1 << 20;
	c->dsn_max_header_bytes = 64 << 10;
	c->max_destinations = 10000;
	c->max_transactions = 1000000;
	c->max_sessions = 1024;
	snprintf(c->hostname, sizeof(c->hostname), "localhost");
	c->smarthost_port = 25;
}

int queue_config_set_retry(struct queue_config *c, const char *spec)
{
	uint64_t steps[QUEUE_RETRY_STEPS_MAX];
	unsigned n = 0;
	const char *p = spec;

	while (*p) {
		const char *comma = strchr(p, ',');
		size_t len = comma ? (size_t)(comma - p) : strlen(p);
		char tok[32];

		while (len && (*p == ' ' || *p == '\t'))
			p++, len--;
		while (len && (p[len - 1] == ' ' || p[len - 1] == '\t'))
			len--;
		if (len == 0 || len >= sizeof(tok))
			return -EINVAL;
		if (n == QUEUE_RETRY_STEPS_MAX)
			return -ERANGE;
		memcpy(tok, p, len);
		tok[len] = 0;
		if (cfg_parse_duration_us(tok, &steps[n]) != 0)
			return -EINVAL;
		if (steps[n] < 1000000)
			return -ERANGE; /* under a second would hammer the destination */
		n++;
		if (!comma)
			break;
		p = comma + 1;
	}
	if (n == 0)
		return -EINVAL;
	memcpy(c->retry_us, steps, n * sizeof(steps[0]));
	c->retry_count = n;
	return 0;
}

int queue_config_set_smarthost(struct queue_config *c, const char *spec)
{
	const char *host = spec, *port = NULL;
	size_t host_len;
	bool bracket = false;

	if (spec[0] == '[') {
		const char *close = strchr(spec, ']');
		if (!close)
			return -EINVAL;
		bracket = true;
		host = spec + 1;
		host_len = (size_t)(close - host);
		if (close[1] == ':')
			port = close + 2;
		else if (close[1] != 0)
			return -EINVAL;
	} else {
		const char *colon = strchr(spec, ':');
		host_len = colon ? (size_t)(colon - spec) : strlen(spec);
		if (colon)
			port = colon + 1;
	}
	if (host_len == 0 || host_len >= sizeof(c->smarthost_host) ||
	    strlen(spec) >= sizeof(c->smarthost_name))
		return -EINVAL;
	for (size_t i = 0; i < host_len; i++) {
		char ch = host[i];
		if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
		      (ch >= '0' && ch <= '9') || ch == '-' || ch == '.' || ch == '_'))
			return -EINVAL;
	}
	uint64_t pv = 25;
	if (port && cfg_parse_u64(port, 1, 65535, &pv) != 0)
		return -EINVAL;
	memcpy(c->smarthost_host, host, host_len);
	c->smarthost_host[host_len] = 0;
	c->smarthost_port = (uint16_t)pv;
	c->smarthost_mx = !bracket;
	c->smarthost_set = true;
	snprintf(c->smarthost_name, sizeof(c->smarthost_name), "%s", spec);
	return 0;
}

struct key_u64 {
	const char *key;
	bool duration; /* else a count */
	uint64_t min, max;
	size_t off;
	bool u32;
};

#define OFF(f) offsetof(struct queue_config, f)

static const struct key_u64 keys[] = {
	{"max_connections", false, 1, 100000, OFF(max_connections), true},
	{"initial_connections", false, 0, 100000, OFF(initial_connections), true},
	{"connection_budget", false, 0, 1000000, OFF(connection_budget), true},
	{"messages_per_connection", false, 1, 1000000, OFF(msgs_per_connection), true},
	{"rate", false, 0, 10000000, OFF(msgs_per_second), true},
	{"rate_burst", false, 0, 10000000, OFF(rate_burst), true},
	{"recipients_per_transaction", false, 1, 65535, OFF(rcpts_per_txn), true},
	{"pipeline_depth", false, 1, QUEUE_PIPELINE_MAX, OFF(pipeline_depth), true},
	{"max_destinations", false, 1, 10000000, OFF(max_destinations), true},
	{"max_transactions", false, 1, 100000000, OFF(max_transactions), true},
	{"max_sessions", false, 1, 1000000, OFF(max_sessions), true},
	{"backoff_initial", true, 1000000, 30ull * 86400 * 1000000, OFF(backoff_initial_us), false},
	{"backoff_max", true, 1000000, 30ull * 86400 * 1000000, OFF(backoff_max_us), false},
	{"idle_timeout", true, 0, 3600ull * 1000000, OFF(idle_timeout_us), false},
	{"connection_reuse_time_limit", true, 1000000, 86400ull * 1000000, OFF(conn_max_age_us),
	 false},
	{"route_ttl", true, 0, 86400ull * 1000000, OFF(route_ttl_us), false},
	{"max_age", true, 60ull * 1000000, 365ull * 86400 * 1000000, OFF(max_age_us), false},
};

/* [relay] smarthost_user and the password from smarthost_password_file (not in the config). */
static int read_smarthost_auth(struct cfg_file *cf, struct queue_config *c, char *err,
			       size_t errlen)
{
	struct cfg_entry *u = cfg_get(cf, "relay", NULL, "smarthost_user");
	struct cfg_entry *pf = cfg_get(cf, "relay", NULL, "smarthost_password_file");
	if (u == NULL && pf == NULL)
		return 0;
	if (u == NULL || pf == NULL || !c->smarthost_set) {
		struct cfg_entry *e = u ? u : pf;
		snprintf(err, errlen,
			 "%s:%d: [relay] smarthost_user and smarthost_password_file go together, "
			 "with smarthost",
			 cf->path, e->line);
		return -EINVAL;
	}
	if (u->value[0] == 0 || strlen(u->value) >= sizeof(c->smarthost_user)) {
		snprintf(err, errlen, "%s:%d: [relay] smarthost_user: bad length", cf->path,
			 u->line);
		return -EINVAL;
	}
	FILE *f = fopen(pf->value, "r");
	if (f == NULL) {
		snprintf(err, errlen, "%s:%d: [relay] smarthost_password_file %s: %s", cf->path,
			 pf->line, pf->value, strerror(errno));
		return -EINVAL;
	}
	char line[sizeof(c->smarthost_pass) + 2];
	bool ok = fgets(line, sizeof(line), f) != NULL;
	fclose(f);
	size_t n = ok ? strcspn(line, "\r\n") : 0;
	if (n == 0 || n >= sizeof(c->smarthost_pass)) {
		snprintf(err, errlen, "%s:%d: [relay] smarthost_password_file %s: %s", cf->path,
			 pf->line, pf->value,
			 n ? "password too long" : "no password on its first line");
		return -EINVAL;
	}
	snprintf(c->smarthost_user, sizeof(c->smarthost_user), "%s", u->value);
	memcpy(c->smarthost_pass, line, n);
	c->smarthost_pass[n] = 0;
	return 0;
}

/* [tls_policy]: one "destination = none|opportunistic|verify" per line. */
static int read_tls_rules(struct cfg_file *cf, struct queue_config *c, char *err, size_t errlen)
{
	static const char *const names[] = {"none", "opportunistic", "verify"};
	c->tls_rule_count = 0;
	for (size_t i = 0; i < cf->entry_count; i++) {
		struct cfg_entry *e = &cf->entries[i];
		if (strcmp(e->section, "tls_policy") != 0 || e->label != NULL)
			continue;
		e->used = true;
		uint8_t pol = 0;
		for (unsigned k = 0; k < 3; k++)
			if (strcmp(e->value, names[k]) == 0)
				pol = (uint8_t)(QUEUE_TLS_NONE + k);
		if (pol == 0) {
			snprintf(err, errlen,
				 "%s:%d: [tls_policy] %s = %s: expected none, opportunistic or "
				 "verify",
				 cf->path, e->line, e->key, e->value);
			return -EINVAL;
		}
		if (strlen(e->key) >= QUEUE_DEST_MAX) {
			snprintf(err, errlen, "%s:%d: [tls_policy] %s: destination name too long",
				 cf->path, e->line, e->key);
			return -EINVAL;
		}
		if (c->tls_rule_count == QUEUE_TLS_RULES_MAX) {
			snprintf(err, errlen, "%s:%d: [tls_policy]: more than %u destinations",
				 cf->path, e->line, QUEUE_TLS_RULES_MAX);
			return -EINVAL;
		}
		struct queue_tls_rule *r = &c->tls_rules[c->tls_rule_count++];
		snprintf(r->dest, sizeof(r->dest), "%s", e->key);
		r->policy = pol;
	}
	return 0;
}

enum queue_tls queue_config_tls(const struct queue_config *c, const char *dest)
{
	/* The last rule for a name wins, as for any repeated key. */
	/* Config keys cannot hold brackets: an address literal's rule is the bare address. */
	size_t len = strlen(dest);
	bool lit = len > 2 && dest[0] == '[' && dest[len - 1] == ']';
	for (unsigned i = c->tls_rule_count; i-- > 0;) {
		const char *r = c->tls_rules[i].dest;
		if (strcasecmp(r, dest) == 0 ||
		    (lit && strlen(r) == len - 2 && strncasecmp(r, dest + 1, len - 2) == 0))
			return (enum queue_tls)c->tls_rules[i].policy;
	}
	return QUEUE_TLS_DEFAULT;
}

int queue_config_from_cfg(struct cfg_file *cf, struct queue_config *c, char *err, size_t errlen)
{
	struct cfg_entry *e;

	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
		uint64_t v;
		int rc;

		e = cfg_get(cf, "queue", NULL, keys[i].key);
		if (!e)
			continue;
		if (keys[i].duration) {
			rc = cfg_parse_duration_us(e->value, &v);
			if (rc == 0 && (v < keys[i].min || v > keys[i].max))
				rc = -ERANGE;
		} else {
			rc = cfg_parse_u64(e->value, keys[i].min, keys[i].max, &v);
		}
		if (rc) {
			snprintf(err, errlen, "%s:%d: [queue] %s: bad value '%s'", cf->path,
				 e->line, keys[i].key, e->value);
			return -EINVAL;
		}
		if (keys[i].u32)
			*(uint32_t *)((char *)c + keys[i].off) = (uint32_t)v;
		else
			*(uint64_t *)((char *)c + keys[i].off) = v;
	}
	if ((e = cfg_get(cf, "queue", NULL, "retry")) && queue_config_set_retry(c, e->value)) {
		snprintf(err, errlen, "%s:%d: [queue] retry: expected durations like 1m,5m,1h",
			 cf->path, e->line);
		return -EINVAL;
	}
	if ((e = cfg_get(cf, "queue", NULL, "dsn_max_full_size")) &&
	    cfg_parse_size(e->value, &c->dsn_max_full_bytes)) {
		snprintf(err, errlen, "%s:%d: [queue] dsn_max_full_size: bad size", cf->path,
			 e->line);
		return -EINVAL;
	}
	if ((e = cfg_get(cf, "relay", NULL, "smarthost")) &&
	    queue_config_set_smarthost(c, e->value)) {
		snprintf(err, errlen, "%s:%d: [relay] smarthost: expected [host]:port or host:port",
			 cf->path, e->line);
		return -EINVAL;
	}
	if (c->smarthost_set)
		c->smarthost_implicit_tls = c->smarthost_port == 465;
	if (read_smarthost_auth(cf, c, err, errlen) != 0 || read_tls_rules(cf, c, err, errlen) != 0)
		return -EINVAL;
	if ((e = cfg_get(cf, "smtp", NULL, "hostname"))) {
		if (strlen(e->value) == 0 || strlen(e->value) >= sizeof(c->hostname)) {
			snprintf(err, errlen, "%s:%d: [smtp] hostname: bad length", cf->path,
				 e->line);
			return -EINVAL;
		}
		snprintf(c->hostname, sizeof(c->hostname), "%s", e->value);
	}
	if (c->backoff_max_us < c->backoff_initial_us) {
		snprintf(err, errlen, "%s: [queue] backoff_max is below backoff_initial", cf->path);
		return -EINVAL;
	}
	return 0;
}
