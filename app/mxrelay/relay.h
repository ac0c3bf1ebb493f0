/*
 * relay.h - the mxrelay daemon's configuration.
 *
 * Each library reads its own sections from the parsed file (lib/net: [eal],
 * [port.N], [tcp]; lib/smtp: [smtp], [relay] allow_networks; lib/spool:
 * [spool]; lib/dns: [dns]); config.c reads the rest and reports every key
 * nobody read.  The parsed file stays alive as long as the configuration,
 * since library configurations point into it.
 */
#ifndef MX_RELAY_H
#define MX_RELAY_H

#include "core.h"
#include "dkim.h"
#include "dns.h"
#include "net.h"
#include "queue.h"
#include "smtp.h"
#include "spool.h"
#include "tls.h"

#define RELAY_MAX_LISTEN 8

/* [control] (control.c): the management plane. */
struct relay_control_conf {
	char socket[108];     /* Unix socket path (sun_path size); "" = off */
	char http_listen[64]; /* Prometheus endpoint A.B.C.D:port; "" = off */
	uint64_t max_clients; /* concurrent control + HTTP clients */
};

struct relay_config {
	struct cfg_file *cf;
	struct net_dp_conf net;
	struct smtp_server_conf smtp; /* listener kind and tls_available set per listener */
	struct smtp_server_conf_store *smtp_store;
	struct spool_config spool;
	struct dns_conf dns;
	/* [smtp] keys of the relay itself */
	uint16_t listen[RELAY_MAX_LISTEN];
	unsigned n_listen;
	uint64_t max_connections;
	uint64_t max_connections_per_ip; /* per client address, over all workers */
	uint64_t auth_failures_per_ip;	 /* failed AUTH attempts before a client is blocked */
	uint64_t auth_block_us;		 /* ... for this long (454 4.7.0 to AUTH) */
	uint64_t shutdown_timeout_us;	 /* SIGTERM: how long open sessions may finish */
	uint64_t prewarm_connections;	 /* per worker, made at start (smtpd.c) */
	char users_file[512];		 /* AUTH credentials (tools/mxpasswd writes it) */
	/* [tls] */
	char tls_cert[512], tls_key[512], tls_ca_file[512];
	enum tls_policy tls_outbound;
	/* [relay] */
	char smarthost[300];
	/* [queue] */
	uint64_t retry_us[16];
	unsigned n_retry;
	uint64_t max_age_us;
	struct queue_config queue; /* every [queue] key, as lib/queue reads them */
	/* [log] */
	enum mx_log_level log_level;
	char log_file[512];
	struct dkim_table *dkim; /* signing keys per domain: messages are signed at acceptance */
	bool dkim_defer;	 /* [dkim] on_error = defer: 451 instead of sending unsigned */
	unsigned n_dkim;
	struct relay_control_conf control; /* [control] */
};

/**
 * Parse and validate a configuration file.  Returns 0, or the number of
 * errors with every "file:line: message" in r (and nothing started).
 * workers: how many worker cores share the spool size (1 for --check-config).
 */
int relay_config_load(const char *path, unsigned workers, struct relay_config *rc,
		      struct cfg_report *r);
void relay_config_free(struct relay_config *rc);

/**
 * Reload (SIGHUP, mxctl reload): next was loaded from the file while run
 * is running.  Keys that cannot change at run time (EAL, ports and
 * addresses, [tcp], listeners, spool, DNS, control, log file, outbound
 * TLS and smarthost, shutdown_timeout) are compared; each difference adds
 * "file:line: [section] key changed: needs a restart (ignored)" to notes,
 * and next takes the running value of the fields the workers read, so the
 * new configuration runs with what is running.  Returns how many notes.
 * An error that makes next unusable at run time (the certificate removed
 * while 465/587 listen on it) goes to errors instead.
 */
unsigned relay_config_keep_restart_keys(const struct relay_config *run, struct relay_config *next,
					struct cfg_report *notes, struct cfg_report *errors);

#endif
