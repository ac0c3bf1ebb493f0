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

static const char *const known_sections[] = {"eal", "port.", "tcp", "smtp", "tls", "relay",
					     "dns", "spool", "queue", "dkim", "log",
					     "control", "tls_policy", NULL};

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
	if (e != NULL && c->http_listen[0] && control_parse_listen(c->http_listen, &addr, &port) != 0)
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
	cfg_key_duration(cf, r, "smtp", "shutdown_timeout", 0, 3600000000ull, &rc->shutdown_timeout_us);
	cfg_key_str(cf, r, "smtp", "users", rc->users_file, sizeof(rc->users_file));

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
	cfg_key_duration(cf, r, "queue", "max_age", 60000000ull, 60ull * 86400 * 1000000, &rc->max_age_us);
	/* lib/queue reads [queue] itself (deliver.c); here for --check-config and unknown keys. */
	struct queue_config qc;
	queue_config_defaults(&qc);
	rc_lib = queue_config_from_cfg(cf, &qc, err, sizeof(err));
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
