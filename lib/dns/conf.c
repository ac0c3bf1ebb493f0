/*
 * conf.c - the [dns] section of mxrelay.conf into struct dns_conf.
 *
 *   [dns]
 *   resolvers = 10.77.0.1, 192.0.2.53   (up to DNS_MAX_RESOLVERS, IPv4)
 *   timeout = 1s          attempts = 2
 *   min_ttl = 0           max_ttl = 1d        negative_ttl = 1h
 *   stale_max = 1d        max_entries = 100000
 *   max_inflight = 4096   max_pending = 4096
 *
 * Durations take the core suffixes (us, ms, s, m, h, d); TTLs are whole
 * seconds after conversion.  Errors are reported as "file:line: message".
 */
#include "dns.h"
#include "core.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

static int fail(char *err, size_t errlen, const struct cfg_file *cf, const struct cfg_entry *e,
		const char *msg)
{
	snprintf(err, errlen, "%s:%d: [dns] %s: %s", cf->path ? cf->path : "config", e->line,
		 e->key, msg);
	return -EINVAL;
}

static int get_secs(struct cfg_file *cf, const char *key, uint32_t *out, char *err, size_t errlen)
{
	struct cfg_entry *e = cfg_get(cf, "dns", NULL, key);
	uint64_t us;
	if (e == NULL)
		return 0;
	if (cfg_parse_duration_us(e->value, &us) < 0 || us / 1000000u > UINT32_MAX / 2)
		return fail(err, errlen, cf, e, "expected a duration such as 30s, 1h or 1d");
	*out = (uint32_t)(us / 1000000u);
	return 0;
}

static int get_u32(struct cfg_file *cf, const char *key, uint64_t min, uint64_t max, uint32_t *out,
		   char *err, size_t errlen)
{
	struct cfg_entry *e = cfg_get(cf, "dns", NULL, key);
	uint64_t v;
	if (e == NULL)
		return 0;
	if (cfg_parse_u64(e->value, min, max, &v) < 0) {
		char msg[96];
		snprintf(msg, sizeof(msg), "expected an integer in %llu..%llu",
			 (unsigned long long)min, (unsigned long long)max);
		return fail(err, errlen, cf, e, msg);
	}
	*out = (uint32_t)v;
	return 0;
}

int dns_conf_load(struct dns_conf *c, struct cfg_file *cf, char *err, size_t errlen)
{
	struct cfg_entry *e;
	uint32_t attempts = c->attempts;
	int rc = 0;

	e = cfg_get(cf, "dns", NULL, "resolvers");
	if (e != NULL) {
		char buf[256], *save = NULL;
		if (strlen(e->value) >= sizeof(buf))
			return fail(err, errlen, cf, e, "too long");
		strcpy(buf, e->value);
		c->resolver_count = 0;
		for (char *tok = strtok_r(buf, ", \t", &save); tok;
		     tok = strtok_r(NULL, ", \t", &save)) {
			if (c->resolver_count >= DNS_MAX_RESOLVERS)
				return fail(err, errlen, cf, e, "at most 8 resolvers");
			if (cfg_parse_ipv4(tok, &c->resolvers[c->resolver_count]) < 0)
				return fail(err, errlen, cf, e, "expected IPv4 addresses");
			c->resolver_count++;
		}
		if (c->resolver_count == 0)
			return fail(err, errlen, cf, e, "empty list");
	}
	e = cfg_get(cf, "dns", NULL, "timeout");
	if (e != NULL) {
		uint64_t us;
		if (cfg_parse_duration_us(e->value, &us) < 0 || us < 1000 || us > 60000000)
			return fail(err, errlen, cf, e, "expected a duration from 1ms to 60s");
		c->timeout_us = us;
	}
	rc = get_u32(cf, "attempts", 1, 10, &attempts, err, errlen);
	if (rc == 0)
		rc = get_secs(cf, "min_ttl", &c->min_ttl, err, errlen);
	if (rc == 0)
		rc = get_secs(cf, "max_ttl", &c->max_ttl, err, errlen);
	if (rc == 0)
		rc = get_secs(cf, "negative_ttl", &c->negative_ttl, err, errlen);
	if (rc == 0)
		rc = get_secs(cf, "stale_max", &c->stale_max, err, errlen);
	if (rc == 0)
		rc = get_u32(cf, "max_entries", 16, 1u << 26, &c->max_entries, err, errlen);
	if (rc == 0)
		rc = get_u32(cf, "max_inflight", 1, 1u << 20, &c->max_inflight, err, errlen);
	if (rc == 0)
		rc = get_u32(cf, "max_pending", 1, 1u << 20, &c->max_pending, err, errlen);
	if (rc != 0)
		return rc;
	c->attempts = attempts;
	if (c->min_ttl > c->max_ttl) {
		e = cfg_get(cf, "dns", NULL, "min_ttl");
		return fail(err, errlen, cf, e, "greater than max_ttl");
	}
	return 0;
}
