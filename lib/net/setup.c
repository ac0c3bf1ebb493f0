/*
 * setup.c - bring the dataplane up from the configuration file.
 *
 * [eal] args are split on white space and given to rte_eal_init after the
 * program name, so EAL options live in the config file, not on command
 * lines.  [port.N] sections describe DPDK ports in port-id order:
 *
 *	[port.0]
 *	addr = 10.77.0.2/24         relay address on this port (required)
 *	gateway = 10.77.0.1         default route (optional)
 *	host_addr = 10.77.0.1/24    net_tap only: address for the kernel side
 *	fault_drop = 20             per mille, likewise fault_dup, fault_reorder,
 *	fault_corrupt; fault_dir = rx|tx|both (both); fault_seed = 1
 *
 * [tcp] overrides struct tcp_conf defaults (sndbuf, rcvbuf, max_conns,
 * time_wait, syn_backlog, ...).
 */
#include "stack_priv.h"
#include "core.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <rte_eal.h>
#include <rte_ethdev.h>
#include <rte_lcore.h>
#include <rte_mbuf.h>

static void parse_tcp(struct cfg_file *cf, struct tcp_conf *t, struct cfg_report *r)
{
	uint64_t v;
	v = t->max_conns, cfg_key_u64(cf, r, "tcp", "max_conns", 16, 1u << 24, &v), t->max_conns = v;
	v = t->sndbuf, cfg_key_size(cf, r, "tcp", "sndbuf", 4096, 64u << 20, &v), t->sndbuf = v;
	v = t->rcvbuf, cfg_key_size(cf, r, "tcp", "rcvbuf", 4096, 64u << 20, &v), t->rcvbuf = v;
	v = t->syn_backlog, cfg_key_u64(cf, r, "tcp", "syn_backlog", 1, 1u << 20, &v),
	t->syn_backlog = v;
	v = t->time_wait_max, cfg_key_u64(cf, r, "tcp", "time_wait_max", 16, 1u << 24, &v),
	t->time_wait_max = v;
	cfg_key_duration(cf, r, "tcp", "time_wait", 0, 240000000ull, &t->time_wait_us);
	cfg_key_duration(cf, r, "tcp", "delayed_ack", 0, 500000, &t->delack_us);
	v = t->reass_conn_bytes, cfg_key_size(cf, r, "tcp", "reass_conn_bytes", 0, 64u << 20, &v),
	t->reass_conn_bytes = v;
	cfg_key_size(cf, r, "tcp", "reass_global_bytes", 0, 16ull << 30, &t->reass_global_bytes);
	struct cfg_entry *e = cfg_get(cf, "tcp", NULL, "syn_cookies");
	if (e != NULL && cfg_parse_bool(e->value, &t->syn_cookies) != 0)
		cfg_error(r, cf, e->line, "syn_cookies = %s: expected yes or no", e->value);
}

void net_config_parse(struct cfg_file *cf, struct net_dp_conf *out, struct cfg_report *r)
{
	memset(out, 0, sizeof(*out));
	out->mbufs = 16383;
	tcp_conf_defaults(&out->tcp);

	struct cfg_entry *e = cfg_get(cf, "eal", NULL, "args");
	if (e == NULL)
		cfg_error(r, cf, 0, "[eal] args is required (e.g. --no-huge -m 512 --no-pci ...)");
	else if (strlen(e->value) >= sizeof(out->eal_args))
		cfg_error(r, cf, e->line, "[eal] args: too long");
	else
		strcpy(out->eal_args, e->value);
	uint64_t v = out->mbufs;
	cfg_key_u64(cf, r, "eal", "mbufs", 1023, 1u << 24, &v);
	out->mbufs = (unsigned)v;
	parse_tcp(cf, &out->tcp, r);

	for (size_t i = 0; i < cf->section_count; i++) {
		const struct cfg_section *s = &cf->sections[i];
		uint64_t id;
		if (strncmp(s->name, "port.", 5) != 0)
			continue;
		if (cfg_parse_u64(s->name + 5, 0, NET_CFG_MAX_PORTS - 1, &id) != 0) {
			cfg_error(r, cf, s->line, "[%s]: port number must be 0..%d", s->name,
				  NET_CFG_MAX_PORTS - 1);
			continue;
		}
		if (id != out->n_ports) {
			cfg_error(r, cf, s->line, "[%s]: ports must be numbered 0, 1, ... in order",
				  s->name);
			continue;
		}
		struct net_port_conf *pc = &out->ports[out->n_ports];
		pc->port_id = (uint16_t)id;
		pc->fault.rx = pc->fault.tx = true;
		pc->fault.seed = 1;
		e = cfg_get(cf, s->name, NULL, "addr");
		if (e == NULL)
			cfg_error(r, cf, s->line, "[%s]: addr = A.B.C.D/len is required", s->name);
		else if (cfg_parse_ipv4_prefix(e->value, &pc->addr, &pc->prefix_len) != 0 ||
			 pc->prefix_len == 0)
			cfg_error(r, cf, e->line, "addr = %s: expected A.B.C.D/len", e->value);
		if ((e = cfg_get(cf, s->name, NULL, "gateway")) != NULL &&
		    cfg_parse_ipv4(e->value, &pc->gateway) != 0)
			cfg_error(r, cf, e->line, "gateway = %s: expected A.B.C.D", e->value);
		if ((e = cfg_get(cf, s->name, NULL, "host_addr")) != NULL &&
		    cfg_parse_ipv4_prefix(e->value, &out->host_addr[id], &out->host_prefix[id]) != 0)
			cfg_error(r, cf, e->line, "host_addr = %s: expected A.B.C.D/len", e->value);
		static const char *const faults[] = {"fault_drop", "fault_dup", "fault_reorder",
						     "fault_corrupt"};
		uint16_t *fv[] = {&pc->fault.drop, &pc->fault.dup, &pc->fault.reorder,
				  &pc->fault.corrupt};
		for (unsigned k = 0; k < 4; k++) {
			v = 0;
			cfg_key_u64(cf, r, s->name, faults[k], 0, 1000, &v);
			*fv[k] = (uint16_t)v;
		}
		cfg_key_u64(cf, r, s->name, "fault_seed", 0, UINT64_MAX, &pc->fault.seed);
		if ((e = cfg_get(cf, s->name, NULL, "fault_dir")) != NULL) {
			pc->fault.rx = !strcmp(e->value, "rx") || !strcmp(e->value, "both");
			pc->fault.tx = !strcmp(e->value, "tx") || !strcmp(e->value, "both");
			if (!pc->fault.rx && !pc->fault.tx)
				cfg_error(r, cf, e->line, "fault_dir = %s: expected rx, tx or both",
					  e->value);
		}
		out->n_ports++;
	}
	if (out->n_ports == 0)
		cfg_error(r, cf, 0, "no [port.0] section: at least one port is required");
}

int net_dataplane_start(struct net_dataplane *dp, const struct net_dp_conf *conf,
			const char *argv0, char *err, size_t errlen)
{
	char args[sizeof(conf->eal_args)];
	char *argv[NET_CFG_MAX_EAL_ARGS + 2];
	int argc = 0;

	memset(dp, 0, sizeof(*dp));
	dp->conf = *conf;
	snprintf(args, sizeof(args), "%s", conf->eal_args);
	argv[argc++] = (char *)argv0;
	for (char *save = NULL, *tok = strtok_r(args, " \t", &save); tok != NULL;
	     tok = strtok_r(NULL, " \t", &save)) {
		if (argc == NET_CFG_MAX_EAL_ARGS + 1) {
			snprintf(err, errlen, "[eal] args: more than %d arguments",
				 NET_CFG_MAX_EAL_ARGS);
			return -E2BIG;
		}
		argv[argc++] = tok;
	}
	argv[argc] = NULL;
	if (rte_eal_init(argc, argv) < 0) {
		snprintf(err, errlen, "EAL init failed: %s (check [eal] args)",
			 rte_strerror(rte_errno));
		return -rte_errno;
	}
	unsigned lc;
	RTE_LCORE_FOREACH_WORKER(lc)
	{
		if (dp->n_workers < NET_MAX_WORKERS)
			dp->worker_lcore[dp->n_workers++] = lc;
	}
	if (conf->reserved_lcores >= dp->n_workers && conf->reserved_lcores > 0) {
		snprintf(err, errlen, "%u lcore(s) reserved but EAL has only %u worker lcore(s): "
			 "at least one must remain for the ports", conf->reserved_lcores,
			 dp->n_workers);
		return -EINVAL;
	}
	/* Reserved lcores (e.g. DKIM signing) get no queue: the ports serve the others. */
	for (unsigned i = 0; i < conf->reserved_lcores; i++)
		dp->reserved_lcore[dp->n_reserved++] =
			dp->worker_lcore[dp->n_workers - conf->reserved_lcores + i];
	dp->n_workers -= conf->reserved_lcores;
	if (dp->n_workers == 0) {
		snprintf(err, errlen, "no worker lcores: give EAL at least two (e.g. -l 0-1); "
				      "the main lcore does control work only");
		return -EINVAL;
	}
	if (rte_eth_dev_count_avail() < conf->n_ports) {
		snprintf(err, errlen, "%u port(s) configured but DPDK found %u (check --vdev)",
			 conf->n_ports, rte_eth_dev_count_avail());
		return -ENODEV;
	}
	dp->pool = rte_pktmbuf_pool_create("mx_mbufs", conf->mbufs, 256, 0,
					   RTE_MBUF_DEFAULT_BUF_SIZE, (int)rte_socket_id());
	if (dp->pool == NULL) {
		snprintf(err, errlen, "mbuf pool of %u: %s (raise -m in [eal] args)", conf->mbufs,
			 rte_strerror(rte_errno));
		return -ENOMEM;
	}
	for (unsigned i = 0; i < conf->n_ports; i++) {
		int rc = net_port_setup(&dp->ports[i], &conf->ports[i], dp->n_workers, dp->pool,
					err, errlen);
		if (rc != 0)
			return rc;
		if (conf->host_addr[i] != 0) {
			unsigned ifx = net_port_host_ifindex(dp->ports[i]);
			if (ifx == 0) {
				snprintf(err, errlen, "port %u: host_addr set but the port has no "
						      "kernel side (only net_tap has)", i);
				return -EINVAL;
			}
			rc = mx_hostif_set_addr(ifx, conf->host_addr[i], conf->host_prefix[i]);
			if (rc != 0) {
				snprintf(err, errlen, "port %u: host_addr: %s", i, strerror(-rc));
				return rc;
			}
		}
	}
	return 0;
}

void net_dataplane_stack_conf(const struct net_dataplane *dp, unsigned w,
			      struct net_stack_conf *out)
{
	memset(out, 0, sizeof(*out));
	out->worker = w;
	out->n_workers = dp->n_workers;
	out->ports = (struct net_port **)dp->ports;
	out->n_ports = dp->conf.n_ports;
	out->pool = dp->pool;
	out->tcp = &dp->conf.tcp;
	out->seed = rte_rdtsc() ^ ((uint64_t)w << 32);
}

void net_dataplane_stop(struct net_dataplane *dp)
{
	for (unsigned i = 0; i < dp->conf.n_ports; i++)
		net_port_close(dp->ports[i]);
	rte_eal_cleanup();
}

int net_config_load(const char *path, struct cfg_file **cf, struct net_dp_conf *out,
		    struct cfg_report *r)
{
	char err[512];
	*cf = NULL;
	if (cfg_parse_file(path, cf, err, sizeof(err)) != 0) {
		cfg_error(r, NULL, -1, "%s", err);
		return -EINVAL;
	}
	net_config_parse(*cf, out, r);
	if (r->count == 0)
		return 0;
	cfg_free(*cf);
	*cf = NULL;
	return -EINVAL;
}

int net_dataplane_start_file(struct net_dataplane *dp, const char *path, const char *prog,
			     const char *argv0, unsigned min_ports, unsigned max_workers,
			     struct cfg_file **cf)
{
	struct cfg_report rep = {0};
	struct net_dp_conf nc;
	char err[512];
	if (net_config_load(path, cf, &nc, &rep) != 0) {
		fputs(rep.text, stderr);
		return 2;
	}
	if (nc.n_ports < min_ports) {
		fprintf(stderr, "%s: %s: needs %u ports\n", prog, path, min_ports);
		goto bad;
	}
	if (net_dataplane_start(dp, &nc, argv0, err, sizeof(err)) != 0) {
		fprintf(stderr, "%s: %s\n", prog, err);
		cfg_free(*cf);
		*cf = NULL;
		return 1;
	}
	if (dp->n_workers == 0 || dp->n_workers > max_workers) {
		fprintf(stderr, "%s: need 1..%u worker lcores (got %u)\n", prog, max_workers,
			dp->n_workers);
		net_dataplane_stop(dp);
		goto bad;
	}
	return 0;
bad:
	cfg_free(*cf);
	*cf = NULL;
	return 2;
}
