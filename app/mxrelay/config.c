/*
 * config.c - the relay's configuration: every section and key of
 * config/mxrelay.conf, validated with file:line errors.  Libraries read
 * their own sections (see relay.h); this file does the rest and finally
 * reports whatever nobody read as an unknown key or section.
 * Defaults are set here, each one documented in config/README.md.
 */
#include "control.h"
#include "queue.h"
#include "relay.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const known_sections[] = {"eal",   "port.",	 "tcp",	       "smtp",	"tls",
					     "relay", "dns",	 "spool",      "queue", "dkim",
					     "log",   "control", "tls_policy", NULL};

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

/* [control] (control.c): control socket and Prometheus endpoint; "" turns either off. */
static void parse_control(struct cfg_file *cf, struct relay_config *rc, struct cfg_report *r)
{
	struct relay_control_conf *c = &rc->control;
	struct cfg_entry *e;
	uint32_t addr;
	uint16_t port;

	strcpy(c->socket, "/run/mxrelay/control.sock");
	strcpy(c->http_listen, "127.0.0.1:9125");
	c->max_clients = 16;
	cfg_key_str(cf, r, "control", "socket", c->socket, sizeof(c->socket));
	cfg_key_str(cf, r, "control", "http_listen", c->http_listen, sizeof(c->http_listen));
	e = cfg_get(cf, "control", NULL, "http_listen");
	if (e != NULL && c->http_listen[0] &&
	    control_parse_listen(c->http_listen, &addr, &port) != 0)
		cfg_error(r, cf, e->line, "http_listen = %s: expected A.B.C.D:port or empty",
			  e->value);
	cfg_key_u64(cf, r, "control", "max_clients", 1, 1024, &c->max_clients);
}

/* A library loader's first error ("file:line: message") joins the report. */
static void lib_error(struct cfg_report *r, struct cfg_file *cf, int rc, const char *err)
{
	if (rc == 0)
		return;
	cfg_error(r, cf, -1, "%s", err[0] ? err : "invalid configuration");
}

int relay_config_load(const char *path, unsigned workers, struct relay_config *rc,
		      struct cfg_report *r)
{
	char err[512] = "";
	int rc_lib;

	memset(rc, 0, sizeof(*rc));
	if (cfg_parse_file(path, &rc->cf, err, sizeof(err)) != 0) {
		r->count++;
		snprintf(r->text, sizeof(r->text), "%s\n", err);
		r->len = strlen(r->text);
		return (int)r->count;
	}
	struct cfg_file *cf = rc->cf;
	net_config_parse(cf, &rc->net, r);
	rc_lib = smtp_server_conf_load(cf, &rc->smtp, &rc->smtp_store, err, sizeof(err));
	lib_error(r, cf, rc_lib, err);
	spool_config_defaults(&rc->spool);
	rc->spool.dir = "/var/spool/mxrelay";
	rc_lib = spool_config_from_cfg(cf, workers, &rc->spool, err, sizeof(err));
	lib_error(r, cf, rc_lib, err);
	dns_conf_defaults(&rc->dns);
	rc_lib = dns_conf_load(&rc->dns, cf, err, sizeof(err));
	lib_error(r, cf, rc_lib, err);

	rc->max_connections = 100000;
	list_key(cf, r, "smtp", "listen", add_listen, rc);
	if (rc->n_listen == 0)
		rc->listen[rc->n_listen++] = 25;
	cfg_key_u64(cf, r, "smtp", "max_connections", 1, 10000000, &rc->max_connections);
	rc->max_connections_per_ip = 1000;
	cfg_key_u64(cf, r, "smtp", "max_connections_per_ip", 1, 10000000,
		    &rc->max_connections_per_ip);
	rc->auth_failures_per_ip = 10;
	cfg_key_u64(cf, r, "smtp", "auth_failures_per_ip", 1, 1000000, &rc->auth_failures_per_ip);
	rc->auth_block_us = 300000000ull;
	cfg_key_duration(cf, r, "smtp", "auth_block_time", 1000000, 86400000000ull,
			 &rc->auth_block_us);
	rc->shutdown_timeout_us = 10000000;
	cfg_key_duration(cf, r, "smtp", "shutdown_timeout", 0, 3600000000ull,
			 &rc->shutdown_timeout_us);
	cfg_key_str(cf, r, "smtp", "users", rc->users_file, sizeof(rc->users_file));
	rc->prewarm_connections = 4096;
	cfg_key_u64(cf, r, "smtp", "prewarm_connections", 0, 1000000, &rc->prewarm_connections);

	cfg_key_str(cf, r, "tls", "cert", rc->tls_cert, sizeof(rc->tls_cert));
	cfg_key_str(cf, r, "tls", "key", rc->tls_key, sizeof(rc->tls_key));
	cfg_key_str(cf, r, "tls", "ca_file", rc->tls_ca_file, sizeof(rc->tls_ca_file));
	if (!rc->tls_cert[0] != !rc->tls_key[0])
		cfg_error(r, cf, 0, "[tls] cert and key go together");
	rc->tls_outbound = TLS_POLICY_OPPORTUNISTIC;
	struct cfg_entry *e = cfg_get(cf, "tls", NULL, "outbound");
	if (e != NULL && tls_policy_parse(e->value, &rc->tls_outbound) != 0)
		cfg_error(r, cf, e->line, "outbound = %s: expected opportunistic, verify or none",
			  e->value);

	cfg_key_str(cf, r, "relay", "smarthost", rc->smarthost, sizeof(rc->smarthost));

	list_key(cf, r, "queue", "retry", add_retry, rc);
	if (rc->n_retry == 0) {
		static const uint64_t dflt[] = {60, 300, 900, 3600, 14400};
		for (unsigned i = 0; i < 5; i++)
			rc->retry_us[rc->n_retry++] = dflt[i] * 1000000ull;
	}
	rc->max_age_us = 5ull * 86400 * 1000000;
	cfg_key_duration(cf, r, "queue", "max_age", 60000000ull, 60ull * 86400 * 1000000,
			 &rc->max_age_us);
	/* lib/queue's own reading of [queue]: deliver.c takes it at start and on reload. */
	queue_config_defaults(&rc->queue);
	rc_lib = queue_config_from_cfg(cf, &rc->queue, err, sizeof(err));
	lib_error(r, cf, rc_lib, err);

	/* [dkim "domain"]: every key file is loaded now, so a bad one is reported here. */
	if (dkim_table_load(cf, &rc->dkim, r) == 0 && rc->dkim != NULL)
		rc->n_dkim = (unsigned)rc->dkim->count;
	if ((e = cfg_get(cf, "dkim", NULL, "on_error")) != NULL) {
		if (!strcmp(e->value, "defer"))
			rc->dkim_defer = true;
		else if (strcmp(e->value, "unsigned") != 0)
			cfg_error(r, cf, e->line, "on_error = %s: expected unsigned or defer",
				  e->value);
	}
	/* Signing on lcores of its own (signer.c): taken from the workers' lcores. */
	uint64_t sign_lcores = 0;
	cfg_key_u64(cf, r, "dkim", "sign_lcores", 0, 16, &sign_lcores);
	rc->net.reserved_lcores = (unsigned)sign_lcores;
	parse_control(cf, rc, r);

	rc->log_level = MX_LOG_INFO;
	if ((e = cfg_get(cf, "log", NULL, "level")) != NULL &&
	    mx_log_parse_level(e->value, &rc->log_level) != 0)
		cfg_error(r, cf, e->line, "level = %s: expected error, warning, info or debug",
			  e->value);
	cfg_key_str(cf, r, "log", "file", rc->log_file, sizeof(rc->log_file));

	cfg_check_unknown(cf, known_sections, r);
	return (int)r->count;
}

void relay_config_free(struct relay_config *rc)
{
	smtp_server_conf_store_free(rc->smtp_store);
	dkim_table_free(rc->dkim);
	rc->dkim = NULL;
	cfg_free(rc->cf);
	rc->cf = NULL;
}

/* ---- reload ----------------------------------------------------------------------- */

/* Sections whose every key needs a restart, by prefix ("port." covers port.0, port.1, ...). */
static const char *const restart_sections[] = {"eal", "port.",	 "tcp", "spool",
					       "dns", "control", NULL};
/* Single keys that need a restart, as "section.key". */
static const char *const restart_keys[] = {"smtp.listen", "smtp.shutdown_timeout", "tls.ca_file",
					   "tls.outbound", "relay.smarthost", "log.file",
					   /* lib/queue's table sizes (deliver.c keeps them) */
					   "queue.max_destinations", "queue.max_transactions",
					   "queue.max_sessions", NULL};

static bool needs_restart(const struct cfg_entry *e)
{
	char full[128];
	for (int i = 0; restart_sections[i]; i++) {
		size_t n = strlen(restart_sections[i]);
		if (restart_sections[i][n - 1] == '.'
			    ? strncmp(e->section, restart_sections[i], n) == 0
			    : strcmp(e->section, restart_sections[i]) == 0)
			return true;
	}
	snprintf(full, sizeof(full), "%s.%s", e->section, e->key);
	for (int i = 0; restart_keys[i]; i++)
		if (strcmp(full, restart_keys[i]) == 0)
			return true;
	return false;
}

/*
 * The last entry of cf with e's section, label and key, as cfg_get() would
 * pick it, without marking it used (cf may be the running configuration).
 */
static const struct cfg_entry *same_entry(const struct cfg_file *cf, const struct cfg_entry *e)
{
	const struct cfg_entry *found = NULL;
	for (size_t i = 0; i < cf->entry_count; i++) {
		const struct cfg_entry *o = &cf->entries[i];
		if (strcmp(o->section, e->section) == 0 && strcmp(o->key, e->key) == 0 &&
		    !o->label == !e->label && (o->label == NULL || strcmp(o->label, e->label) == 0))
			found = o;
	}
	return found;
}

unsigned relay_config_keep_restart_keys(const struct relay_config *run, struct relay_config *next,
					struct cfg_report *notes, struct cfg_report *errors)
{
	unsigned before = notes->count;

	for (size_t i = 0; i < next->cf->entry_count; i++) {
		const struct cfg_entry *e = &next->cf->entries[i];
		if (!needs_restart(e) || same_entry(next->cf, e) != e)
			continue; /* an earlier duplicate: the last one counts */
		const struct cfg_entry *o = same_entry(run->cf, e);
		if (o == NULL || strcmp(o->value, e->value) != 0)
			cfg_error(notes, next->cf, e->line, "[%s] %s %s: needs a restart (ignored)",
				  e->section, e->key, o == NULL ? "added" : "changed");
	}
	for (size_t i = 0; i < run->cf->entry_count; i++) {
		const struct cfg_entry *o = &run->cf->entries[i];
		if (needs_restart(o) && same_entry(next->cf, o) == NULL)
			cfg_error(notes, next->cf, 0, "[%s] %s removed: needs a restart (ignored)",
				  o->section, o->key);
	}
	/* 465 and 587 listen only with a certificate: it may change, not go. */
	if (run->tls_cert[0] && !next->tls_cert[0]) {
		const struct cfg_entry *e = cfg_get(next->cf, "tls", NULL, "cert");
		cfg_error(errors, next->cf, e ? e->line : 0,
			  "[tls] cert: the running relay has a certificate; removing it needs a "
			  "restart");
	} else if (!run->tls_cert[0] && next->tls_cert[0]) {
		const struct cfg_entry *e = cfg_get(next->cf, "tls", NULL, "cert");
		cfg_error(notes, next->cf, e ? e->line : 0,
			  "[tls] cert added: STARTTLS, 465 and 587 need a restart (ignored)");
		next->tls_cert[0] = next->tls_key[0] = '\0';
	}
	/* What the workers read from a configuration after they started. */
	memcpy(next->listen, run->listen, sizeof(next->listen));
	next->n_listen = run->n_listen;
	next->shutdown_timeout_us = run->shutdown_timeout_us;
	memcpy(next->tls_ca_file, run->tls_ca_file, sizeof(next->tls_ca_file));
	next->tls_outbound = run->tls_outbound;
	memcpy(next->smarthost, run->smarthost, sizeof(next->smarthost));
	next->dns = run->dns;
	next->control = run->control;
	memcpy(next->log_file, run->log_file, sizeof(next->log_file));
	next->queue.smarthost_set = run->queue.smarthost_set;
	next->queue.smarthost_mx = run->queue.smarthost_mx;
	next->queue.smarthost_port = run->queue.smarthost_port;
	memcpy(next->queue.smarthost_host, run->queue.smarthost_host,
	       sizeof(next->queue.smarthost_host));
	memcpy(next->queue.smarthost_name, run->queue.smarthost_name,
	       sizeof(next->queue.smarthost_name));
	return notes->count - before;
}
