/*
 * relay.h - the mxrelay daemon's configuration and per-core context.
 */
#ifndef MX_RELAY_H
#define MX_RELAY_H

#include "core.h"
#include "net.h"

#define RELAY_MAX_LISTEN 8
#define RELAY_MAX_NETS 64
#define RELAY_MAX_RESOLVERS 4

struct relay_prefix {
	uint32_t addr;
	uint8_t len;
};

/** Everything the config file says, validated (config.c). */
struct relay_config {
	struct net_dp_conf net;
	/* [smtp] */
	char hostname[256];
	uint16_t listen[RELAY_MAX_LISTEN];
	unsigned n_listen;
	uint64_t max_message_size;
	uint64_t max_recipients;
	uint64_t command_timeout_us, data_timeout_us;
	uint64_t max_connections, max_connections_per_ip;
	/* [tls] */
	char tls_cert[512], tls_key[512], tls_ca_file[512];
	enum { TLS_OUT_OPPORTUNISTIC, TLS_OUT_VERIFY, TLS_OUT_NONE } tls_outbound;
	/* [relay] */
	struct relay_prefix allow_networks[RELAY_MAX_NETS];
	unsigned n_allow_networks;
	char smarthost[300];
	/* [dns] */
	uint32_t resolvers[RELAY_MAX_RESOLVERS];
	unsigned n_resolvers;
	uint64_t dns_min_ttl_us, dns_max_ttl_us, dns_negative_ttl_us;
	/* [spool] */
	char spool_dir[512];
	bool spool_fsync;
	/* [queue] */
	uint64_t retry_us[16];
	unsigned n_retry;
	uint64_t max_age_us;
	/* [log] */
	enum mx_log_level log_level;
	char log_file[512];
	unsigned n_dkim;
};

/**
 * Parse and validate a configuration file.  Returns 0, or the number of
 * errors with every "file:line: message" in r (and nothing started).
 */
int relay_config_load(const char *path, struct relay_config *rc, struct cfg_report *r);

#endif
