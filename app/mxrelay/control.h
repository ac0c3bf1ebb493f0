/*
 * control.h - observability and control of the running relay, served by
 * the main lcore: the control socket (tools/mxctl), a Prometheus endpoint
 * and DPDK telemetry commands.
 *
 * main.c calls control_start() once the workers run, control_poll() in its
 * loop (it is the loop's only wait) and control_stop() before stopping the
 * workers.  config.c reads [control] with control_parse_listen().
 */
#ifndef MX_RELAY_CONTROL_H
#define MX_RELAY_CONTROL_H

#include "relay.h"

#include <stdint.h>

/**
 * Parse "A.B.C.D:port" (the [control] http_listen form).  Address and port
 * in host byte order.  0, or -EINVAL.
 */
int control_parse_listen(const char *s, uint32_t *addr, uint16_t *port);

/**
 * Open the control socket and the HTTP listener of conf->control and
 * register the telemetry commands.  A listener that cannot be opened is
 * logged and left off: the management plane never stops the data plane.
 * Returns 0, or -errno if nothing could be set up at all (logged).
 */
int control_start(const struct relay_config *conf, const struct net_dataplane *dp,
		  const char *config_path);

/**
 * Wait up to timeout_ms for control work (requests, telemetry queries),
 * and do it.  Returns the number of requests answered; a signal ends the
 * wait early.
 */
int control_poll(int timeout_ms);

/**
 * Reload (SIGHUP; mxctl reload does the same and gets the text): read the
 * configuration file again.  Any error (logged as file:line) keeps the
 * running configuration; otherwise new connections get the new one
 * (policy, users, limits, certificate, DKIM keys, queue limits) and keys
 * that need a restart are logged and ignored.  0 or -EINVAL.
 */
int control_reload(const char *why);

/** Close every client and listener and remove the control socket. */
void control_stop(void);

#endif
