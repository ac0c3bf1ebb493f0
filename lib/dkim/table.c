/*
 * table.c - the signing domains of the configuration: [dkim "domain"].
 *
 * dkim_table_load() validates every section and loads every key at start (or
 * at --check-config), reporting all problems at once with file:line, so that
 * a bad key is found before the first message.  The table is read-only once
 * loaded: each core makes its own signers from table->domains[i].config.
 */
#include "dkim.h"

#include "core.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static int parse_canon(const char *v, struct dkim_signer_config *c)
{
	static const struct {
		const char *name;
		enum dkim_canon h, b;
	} forms[] = {
		{"relaxed/relaxed", DKIM_CANON_RELAXED, DKIM_CANON_RELAXED},
		{"relaxed/simple", DKIM_CANON_RELAXED, DKIM_CANON_SIMPLE},
		{"simple/relaxed", DKIM_CANON_SIMPLE, DKIM_CANON_RELAXED},
		{"simple/simple", DKIM_CANON_SIMPLE, DKIM_CANON_SIMPLE},
		{"relaxed", DKIM_CANON_RELAXED, DKIM_CANON_SIMPLE}, /* c= default body */
		{"simple", DKIM_CANON_SIMPLE, DKIM_CANON_SIMPLE},
	};
	for (size_t i = 0; i < sizeof(forms) / sizeof(forms[0]); i++) {
		if (strcmp(v, forms[i].name) == 0) {
			c->header_canon = forms[i].h;
			c->body_canon = forms[i].b;
			return 0;
		}
	}
	return -EINVAL;
}

/* "From:To:Subject" into d->headers, stored in d->header_names. */
static int parse_headers(struct dkim_domain *d, const char *v)
{
	d->header_names = strdup(v);
	if (!d->header_names)
		return -ENOMEM;
	size_t n = 0;
	char *save;
	for (char *tok = strtok_r(d->header_names, ": \t", &save); tok;
	     tok = strtok_r(NULL, ": \t", &save)) {
		if (n == DKIM_MAX_CONFIG_HEADERS)
			return -E2BIG;
		d->headers[n++] = tok;
	}
	if (n == 0)
		return -EINVAL;
	d->config.headers = d->headers;
	d->config.header_count = n;
	return 0;
}

static struct cfg_entry *get(struct cfg_file *cf, const char *label, const char *key)
{
	return cfg_get(cf, "dkim", label, key);
}

static int load_key(struct cfg_file *cf, struct cfg_report *r, struct cfg_entry *e,
		    enum dkim_alg alg, struct dkim_key **out)
{
	char err[512];
	int rc = dkim_key_load(e->value, alg, out, err, sizeof(err));
	if (rc)
		cfg_error(r, cf, e->line, "%s", err);
	return rc;
}

static int load_domain(struct cfg_file *cf, const struct cfg_section *sec, struct dkim_domain *d,
		       struct cfg_report *r)
{
	const char *label = sec->label;
	struct dkim_signer_config *c = &d->config;
	struct cfg_entry *e;
	unsigned before = r->count;
	dkim_signer_config_init(c);
	d->domain = strdup(label);
	if (!d->domain)
		return -ENOMEM;
	c->domain = d->domain;

	bool rsa = true, ed = false;
	if ((e = get(cf, label, "algorithm"))) {
		if (strcmp(e->value, "rsa-sha256") == 0) {
			rsa = true, ed = false;
		} else if (strcmp(e->value, "ed25519-sha256") == 0) {
			rsa = false, ed = true;
		} else if (strcmp(e->value, "rsa-sha256+ed25519-sha256") == 0) {
			rsa = true, ed = true;
		} else {
			cfg_error(r, cf, e->line,
				  "algorithm must be rsa-sha256, ed25519-sha256 or "
				  "rsa-sha256+ed25519-sha256");
		}
	}
	struct cfg_entry *sel = get(cf, label, "selector");
	if (!sel)
		cfg_error(r, cf, sec->line, "[dkim \"%s\"] needs selector", label);
	else if (!(d->selector = strdup(sel->value)))
		return -ENOMEM;
	c->selector = d->selector;
	struct cfg_entry *key = get(cf, label, "key");
	if (!key)
		cfg_error(r, cf, sec->line, "[dkim \"%s\"] needs key", label);
	else
		load_key(cf, r, key, rsa ? DKIM_ALG_RSA_SHA256 : DKIM_ALG_ED25519_SHA256,
			 rsa ? &c->rsa_key : &c->ed25519_key);
	struct cfg_entry *edkey = get(cf, label, "ed25519_key");
	struct cfg_entry *edsel = get(cf, label, "ed25519_selector");
	if (rsa && ed) {
		if (!edkey || !edsel)
			cfg_error(r, cf, sec->line,
				  "dual signing needs ed25519_key and ed25519_selector (each key "
				  "has its own DNS record)");
		if (edkey)
			load_key(cf, r, edkey, DKIM_ALG_ED25519_SHA256, &c->ed25519_key);
		if (edsel && !(d->ed25519_selector = strdup(edsel->value)))
			return -ENOMEM;
		if (sel && edsel && strcasecmp(sel->value, edsel->value) == 0)
			cfg_error(r, cf, edsel->line, "ed25519_selector must differ from selector");
		c->ed25519_selector = d->ed25519_selector;
	} else if (edkey || edsel) {
		cfg_error(r, cf, (edkey ? edkey : edsel)->line,
			  "ed25519_key and ed25519_selector are for algorithm = "
			  "rsa-sha256+ed25519-sha256");
	}
	if ((e = get(cf, label, "canonicalization")) && parse_canon(e->value, c))
		cfg_error(r, cf, e->line,
			  "canonicalization must be relaxed/relaxed, "
			  "relaxed/simple, simple/relaxed or simple/simple");
	if ((e = get(cf, label, "headers"))) {
		int rc = parse_headers(d, e->value);
		if (rc == -ENOMEM)
			return rc;
		if (rc)
			cfg_error(r, cf, e->line, "headers: 1 to %d names separated by ':'",
				  DKIM_MAX_CONFIG_HEADERS);
	}
	if ((e = get(cf, label, "oversign_from")) && cfg_parse_bool(e->value, &c->oversign_from))
		cfg_error(r, cf, e->line, "oversign_from must be yes or no");
	if ((e = get(cf, label, "body_length")) && cfg_parse_bool(e->value, &c->body_length_tag))
		cfg_error(r, cf, e->line, "body_length must be yes or no");
	if ((e = get(cf, label, "expire"))) {
		uint64_t us;
		if (cfg_parse_duration_us(e->value, &us) || us < 1000000 ||
		    us / 1000000 > UINT32_MAX)
			cfg_error(r, cf, e->line, "expire must be a duration of 1s or more");
		else
			c->expire_after_s = (uint32_t)(us / 1000000);
	}
	if ((e = get(cf, label, "max_header_size"))) {
		uint64_t size;
		if (cfg_parse_size(e->value, &size) || size < 1024 || size > 16u * 1024 * 1024)
			cfg_error(r, cf, e->line, "max_header_size must be 1K to 16M");
		else
			c->max_header_bytes = (size_t)size;
	}
	if (r->count != before)
		return -EINVAL;
	/* what dkim_signer_create() checks (names, From in the list) */
	char err[256];
	struct dkim_signer *s;
	int rc = dkim_signer_create(c, &s, err, sizeof(err));
	if (rc) {
		cfg_error(r, cf, sec->line, "[dkim \"%s\"]: %s", label, err);
		return rc;
	}
	dkim_signer_free(s);
	return 0;
}

static void domain_clear(struct dkim_domain *d)
{
	dkim_key_free(d->config.rsa_key);
	dkim_key_free(d->config.ed25519_key);
	free(d->domain);
	free(d->selector);
	free(d->ed25519_selector);
	free(d->header_names);
}

void dkim_table_free(struct dkim_table *t)
{
	if (!t)
		return;
	for (size_t i = 0; i < t->count; i++)
		domain_clear(&t->domains[i]);
	free(t->domains);
	free(t->names);
	free(t);
}

int dkim_table_load(struct cfg_file *cf, struct dkim_table **out, struct cfg_report *r)
{
	*out = NULL;
	size_t n = 0;
	for (size_t i = 0; i < cf->section_count; i++)
		n += strcmp(cf->sections[i].name, "dkim") == 0 && cf->sections[i].label;
	struct dkim_table *t = calloc(1, sizeof(*t));
	if (!t || !(t->domains = calloc(n + 1, sizeof(*t->domains))) ||
	    !(t->names = calloc(n + 1, sizeof(char *)))) {
		dkim_table_free(t);
		cfg_error(r, cf, 0, "out of memory");
		return -ENOMEM;
	}
	t->default_index = -1;
	int rc = 0;
	for (size_t i = 0; i < cf->section_count; i++) {
		const struct cfg_section *sec = &cf->sections[i];
		if (strcmp(sec->name, "dkim") != 0 || !sec->label)
			continue;
		for (size_t j = 0; j < t->count; j++) {
			if (strcasecmp(t->names[j], sec->label) == 0) {
				cfg_error(r, cf, sec->line, "[dkim \"%s\"] appears twice",
					  sec->label);
				rc = -EINVAL;
			}
		}
		struct dkim_domain *d = &t->domains[t->count];
		int drc = load_domain(cf, sec, d, r);
		if (drc) {
			domain_clear(d);
			memset(d, 0, sizeof(*d));
			rc = drc == -ENOMEM ? drc : -EINVAL;
			continue;
		}
		t->names[t->count++] = d->domain;
	}
	struct cfg_entry *e = cfg_get(cf, "dkim", NULL, "default_domain");
	if (e) {
		for (size_t j = 0; j < t->count; j++)
			if (strcasecmp(t->names[j], e->value) == 0)
				t->default_index = (int)j;
		if (t->default_index < 0 && rc == 0) {
			cfg_error(r, cf, e->line, "default_domain %s has no [dkim \"%s\"] section",
				  e->value, e->value);
			rc = -EINVAL;
		}
	}
	if ((e = cfg_get(cf, "dkim", NULL, "domain_from"))) {
		if (strcmp(e->value, "header") == 0) {
			t->domain_from = DKIM_FROM_HEADER;
		} else if (strcmp(e->value, "envelope") == 0) {
			t->domain_from = DKIM_FROM_ENVELOPE;
		} else if (strcmp(e->value, "default") == 0) {
			t->domain_from = DKIM_FROM_DEFAULT;
			if (!cfg_get(cf, "dkim", NULL, "default_domain")) {
				cfg_error(r, cf, e->line,
					  "domain_from = default needs default_domain");
				rc = -EINVAL;
			}
		} else {
			cfg_error(r, cf, e->line,
				  "domain_from = %s: expected header, envelope or default",
				  e->value);
			rc = -EINVAL;
		}
	}
	/*
	 * With the From: header choosing, a message may move between domains after
	 * its body started streaming (dkim_sign_move()): when the domains do not all
	 * canonicalise bodies alike, every signer hashes the body both ways.
	 */
	bool mixed = false;
	for (size_t j = 1; j < t->count; j++)
		mixed |= t->domains[j].config.body_canon != t->domains[0].config.body_canon;
	for (size_t j = 0; j < t->count; j++)
		t->domains[j].config.hash_both_bodies = mixed && t->domain_from == DKIM_FROM_HEADER;
	if ((e = cfg_get(cf, "dkim", NULL, "public_addr")) &&
	    cfg_parse_ipv4(e->value, &t->public_addr)) {
		cfg_error(r, cf, e->line, "public_addr = %s: expected an IPv4 address", e->value);
		rc = -EINVAL;
	}
	if (rc) {
		dkim_table_free(t);
		return rc;
	}
	*out = t;
	return 0;
}

const struct dkim_domain *dkim_table_choose(const struct dkim_table *t, const char *from_domain,
					    const char *envelope_domain)
{
	if (t->domain_from != DKIM_FROM_HEADER)
		from_domain = NULL;
	if (t->domain_from == DKIM_FROM_DEFAULT)
		envelope_domain = NULL;
	int i = dkim_choose_domain(t->names, t->count, t->default_index, from_domain,
				   envelope_domain);
	return i < 0 ? NULL : &t->domains[i];
}
