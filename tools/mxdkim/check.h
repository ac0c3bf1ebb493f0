/*
 * check.h - `mxdkim check` (check.c): a domain's published DKIM, SPF and
 * DMARC records against the relay's configuration.
 */
#ifndef MX_MXDKIM_CHECK_H
#define MX_MXDKIM_CHECK_H

/**
 * Check domain against the [dkim] configuration in config; resolver is
 * "IP[:PORT]" or NULL (first IPv4 nameserver of /etc/resolv.conf); relay_ip
 * overrides [dkim] public_addr / [port.0] addr.  Prints one line per finding.
 * Returns the exit status: 0 no FAIL, 1 some FAIL, 2 usage or configuration.
 */
int mxdkim_check(const char *config, const char *resolver, const char *relay_ip,
		 const char *domain);

#endif
