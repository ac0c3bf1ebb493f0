/*
 * config.c - the relay's configuration: every section and key of
 * config/mxrelay.conf, validated with file:line errors.  lib/net validates
 * its own sections ([eal], [port.N], [tcp]); this file does the rest and
 * finally reports whatever nobody read as an unknown key or section.
 * Defaults are set here, each one documented in config/README.md.
 */
#include "relay.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const known_sections[] = {"eal", "port.", "tcp", "smtp", "tls", "relay",
					     "dns", "spool", "queue", "dkim", "log", NULL};

static void str_key(struct cfg_file *cf, struct cfg_report *r, const char *sect, const char *key,
		    char *out, size_t outlen)
{
	struct cfg_entry *e = cfg_get(cf, sect, NULL, key);
	if (e == NULL)
		return;
	if (strlen(e->value) >= outlen)
		cfg_error(r, cf, e->line, "%s: value too long (max %zu)", key, outlen - 1);
	else
		strcpy(out, e->value);
}

static void size_key(struct cfg_file *cf, struct cfg_report *r, const char *sect, const char *key,
		     uint64_t min, uint64_t max, uint64_t *out)
{
	struct cfg_entry *e = cfg_get(cf, sect, NULL, key);
	uint64_t v;
	if (e == NULL)
		return;
	if (cfg_parse_size(e->value, &v) != 0)
		cfg_error(r, cf, e->line, "%s = %s: not a size (e.g. 10M)", key, e->value);
	else if (v < min || v > max)
		cfg_error(r, cf, e->line, "%s = %s: out of range %llu..%llu", key, e->value,
			  (unsigned long long)min, (unsigned long long)max);
	else
		*out = v;
}

static void u64_key(struct cfg_file *cf, struct cfg_report *r, const char *sect, const char *key,
		    uint64_t min, uint64_t max, uint64_t *out)
{
	struct cfg_entry *e = cfg_get(cf, sect, NULL, key);
	if (e == NULL)
		return;
	int rc = cfg_parse_u64(e->value, min, max, out);
	if (rc == -ERANGE)
		cfg_error(r, cf, e->line, "%s = %s: out of range %llu..%llu", key, e->value,
			  (unsigned long long)min, (unsigned long long)max);
	else if (rc != 0)
		cfg_error(r, cf, e->line, "%s = %s: not a number", key, e->value);
}

static void dur_key(struct cfg_file *cf, struct cfg_report *r, const char *sect, const char *key,
		    uint64_t min, uint64_t max, uint64_t *out)
{
	struct cfg_entry *e = cfg_get(cf, sect, NULL, key);
	uint64_t v;
	if (e == NULL)
		return;
	if (cfg_parse_duration_us(e->value, &v) != 0)
		cfg_error(r, cf, e->line, "%s = %s: not a duration (e.g. 30s, 5m, 4h, 5d)", key,
			  e->value);
	else if (v < min || v > max)
		cfg_error(r, cf, e->line, "%s = %s: out of range", key, e->value);
	else
		*out = v;
}

/* Split a comma- or space-separated list; calls fn on each item. */
static void list_key(struct cfg_file *cf, struct cfg_report *r, const char *sect, const char *key,
		     void (*fn)(struct cfg_file *, struct cfg_report *, int, const char *, void *),
		     void *arg)
{
	struct cfg_entry *e = cfg_get(cf, sect, NULL, key);
	if (e == NULL)
		return;
	char buf[2048];
	if (strlen(e->value) >= sizeof(buf)) {
		cfg_error(r, cf, e->line, "%s: list too long", key);
		return;
	}
	strcpy(buf, e->value);
	for (char *save = NULL, *tok = strtok_r(buf, ", \t", &save); tok != NULL;
	     tok = strtok_r(NULL, ", \t", &save))
		fn(cf, r, e->line, tok, arg);
}

static void add_listen(struct cfg_file *cf, struct cfg_report *r, int line, const char *item,
		       void *arg)
{
	struct relay_config *rc = arg;
	uint64_t port;
	if (cfg_parse_u64(item, 1, 65535, &port) != 0)
		cfg_error(r, cf, line, "listen: '%s' is not a port number", item);
	else if (rc->n_listen == RELAY_MAX_LISTEN)
		cfg_error(r, cf, line, "listen: at most %d ports", RELAY_MAX_LISTEN);
	else
		rc->listen[rc->n_listen++] = (uint16_t)port;
}

static void add_network(struct cfg_file *cf, struct cfg_report *r, int line, const char *item,
			void *arg)
{
	struct relay_config *rc = arg;
	struct relay_prefix p;
	if (cfg_parse_ipv4_prefix(item, &p.addr, &p.len) != 0)
		cfg_error(r, cf, line, "allow_networks: '%s' is not A.B.C.D/len", item);
	else if (rc->n_allow_networks == RELAY_MAX_NETS)
		cfg_error(r, cf, line, "allow_networks: at most %d networks", RELAY_MAX_NETS);
	else
		rc->allow_networks[rc->n_allow_networks++] = p;
}

static void add_resolver(struct cfg_file *cf, struct cfg_report *r, int line, const char *item,
			 void *arg)
{
	struct relay_config *rc = arg;
	uint32_t a;
	if (cfg_parse_ipv4(item, &a) != 0)
		cfg_error(r, cf, line, "resolvers: '%s' is not an IPv4 address", item);
	else if (rc->n_resolvers == RELAY_MAX_RESOLVERS)
		cfg_error(r, cf, line, "resolvers: at most %d", RELAY_MAX_RESOLVERS);
	else
		rc->resolvers[rc->n_resolvers++] = a;
}

static void add_retry(struct cfg_file *cf, struct cfg_report *r, int line, const char *item,
		      void *arg)
{
	struct relay_config *rc = arg;
	uint64_t v;
	if (cfg_parse_duration_us(item, &v) != 0 || v == 0)
		cfg_error(r, cf, line, "retry: '%s' is not a duration (e.g. 5m)", item);
	else if (rc->n_retry == 16)
		cfg_error(r, cf, line, "retry: at most 16 steps");
	else
		rc->retry_us[rc->n_retry++] = v;
}

static void parse_dkim(struct cfg_file *cf, struct relay_config *rc, struct cfg_report *r)
{
	for (size_t i = 0; i < cf->section_count; i++) {
		const struct cfg_section *s = &cf->sections[i];
		if (strcmp(s->name, "dkim") != 0)
			continue;
		if (s->label == NULL) {
			cfg_error(r, cf, s->line, "[dkim] needs a domain: [dkim \"example.com\"]");
			continue;
		}
		struct cfg_entry *sel = cfg_get(cf, "dkim", s->label, "selector");
		struct cfg_entry *key = cfg_get(cf, "dkim", s->label, "key");
		struct cfg_entry *alg = cfg_get(cf, "dkim", s->label, "algorithm");
		if (sel == NULL || key == NULL)
			cfg_error(r, cf, s->line, "[dkim \"%s\"]: selector and key are required",
				  s->label);
		if (alg != NULL && strcmp(alg->value, "rsa-sha256") != 0 &&
		    strcmp(alg->value, "ed25519-sha256") != 0 &&
		    strcmp(alg->value, "rsa-sha256,ed25519-sha256") != 0)
			cfg_error(r, cf, alg->line,
				  "algorithm = %s: expected rsa-sha256, ed25519-sha256 or both",
				  alg->value);
		rc->n_dkim++;
	}
}

int relay_config_load(const char *path, struct relay_config *rc, struct cfg_report *r)
{
	struct cfg_file *cf;
	char err[512];

	memset(rc, 0, sizeof(*rc));
	if (cfg_parse_file(path, &cf, err, sizeof(err)) != 0) {
		r->count++;
		snprintf(r->text, sizeof(r->text), "%s\n", err);
		r->len = strlen(r->text);
		return (int)r->count;
	}
	net_config_parse(cf, &rc->net, r);

	strcpy(rc->hostname, "mxrelay.localdomain");
	rc->max_message_size = 10u << 20;
	rc->max_recipients = 100;
	rc->command_timeout_us = 300000000ull;
	rc->data_timeout_us = 180000000ull;
	rc->max_connections = 100000;
	rc->max_connections_per_ip = 1000;
	str_key(cf, r, "smtp", "hostname", rc->hostname, sizeof(rc->hostname));
	list_key(cf, r, "smtp", "listen", add_listen, rc);
	if (rc->n_listen == 0)
		rc->listen[rc->n_listen++] = 25;
	size_key(cf, r, "smtp", "max_message_size", 1024, 1ull << 30, &rc->max_message_size);
	u64_key(cf, r, "smtp", "max_recipients", 100, 100000, &rc->max_recipients);
	dur_key(cf, r, "smtp", "command_timeout", 1000000, 3600000000ull, &rc->command_timeout_us);
	dur_key(cf, r, "smtp", "data_timeout", 1000000, 3600000000ull, &rc->data_timeout_us);
	u64_key(cf, r, "smtp", "max_connections", 1, 10000000, &rc->max_connections);
	u64_key(cf, r, "smtp", "max_connections_per_ip", 1, 10000000, &rc->max_connections_per_ip);

	str_key(cf, r, "tls", "cert", rc->tls_cert, sizeof(rc->tls_cert));
	str_key(cf, r, "tls", "key", rc->tls_key, sizeof(rc->tls_key));
	str_key(cf, r, "tls", "ca_file", rc->tls_ca_file, sizeof(rc->tls_ca_file));
	struct cfg_entry *e = cfg_get(cf, "tls", NULL, "outbound");
	if (e != NULL) {
		if (!strcmp(e->value, "opportunistic"))
			rc->tls_outbound = TLS_OUT_OPPORTUNISTIC;
		else if (!strcmp(e->value, "verify"))
			rc->tls_outbound = TLS_OUT_VERIFY;
		else if (!strcmp(e->value, "none"))
			rc->tls_outbound = TLS_OUT_NONE;
		else
			cfg_error(r, cf, e->line,
				  "outbound = %s: expected opportunistic, verify or none", e->value);
	}

	list_key(cf, r, "relay", "allow_networks", add_network, rc);
	str_key(cf, r, "relay", "smarthost", rc->smarthost, sizeof(rc->smarthost));

	rc->dns_max_ttl_us = 86400000000ull;
	rc->dns_negative_ttl_us = 3600000000ull;
	list_key(cf, r, "dns", "resolvers", add_resolver, rc);
	dur_key(cf, r, "dns", "min_ttl", 0, 86400000000ull, &rc->dns_min_ttl_us);
	dur_key(cf, r, "dns", "max_ttl", 1000000, 604800000000ull, &rc->dns_max_ttl_us);
	dur_key(cf, r, "dns", "negative_ttl", 0, 86400000000ull, &rc->dns_negative_ttl_us);
	if (rc->dns_min_ttl_us > rc->dns_max_ttl_us)
		cfg_error(r, cf, 0, "[dns] min_ttl is larger than max_ttl");

	strcpy(rc->spool_dir, "/var/spool/mxrelay");
	rc->spool_fsync = true;
	str_key(cf, r, "spool", "dir", rc->spool_dir, sizeof(rc->spool_dir));
	if ((e = cfg_get(cf, "spool", NULL, "durability")) != NULL) {
		if (!strcmp(e->value, "fsync"))
			rc->spool_fsync = true;
		else if (!strcmp(e->value, "none"))
			rc->spool_fsync = false;
		else
			cfg_error(r, cf, e->line, "durability = %s: expected fsync or none",
				  e->value);
	}

	list_key(cf, r, "queue", "retry", add_retry, rc);
	if (rc->n_retry == 0) {
		static const uint64_t dflt[] = {60, 300, 900, 3600, 14400};
		for (unsigned i = 0; i < 5; i++)
			rc->retry_us[rc->n_retry++] = dflt[i] * 1000000ull;
	}
	rc->max_age_us = 5ull * 86400 * 1000000;
	dur_key(cf, r, "queue", "max_age", 60000000ull, 60ull * 86400 * 1000000, &rc->max_age_us);

	parse_dkim(cf, rc, r);

	rc->log_level = MX_LOG_INFO;
	if ((e = cfg_get(cf, "log", NULL, "level")) != NULL &&
	    mx_log_parse_level(e->value, &rc->log_level) != 0)
		cfg_error(r, cf, e->line, "level = %s: expected error, warning, info or debug",
			  e->value);
	str_key(cf, r, "log", "file", rc->log_file, sizeof(rc->log_file));

	cfg_check_unknown(cf, known_sections, r);
	cfg_free(cf);
	return (int)r->count;
}
