/*
 * test_dns.c - main of the lib/dns unit tests: starts a small EAL (no
 * hugepages, no PCI, two lcores if present) for rte_hash/rte_rcu/rte_ring,
 * then runs the codec, cache, resolver and mail suites.
 */
#include "mx_test.h"
#include "test_dns.h"

#include <rte_eal.h>
#include <unistd.h>

unsigned env_seq;

int main(void)
{
	char *eal_argv[] = {"test_dns",
			    "-l",
			    "0-1",
			    "--no-huge",
			    "-m",
			    "256",
			    "--no-pci",
			    "--no-shconf",
			    "--no-telemetry",
			    "--log-level=warning",
			    "--file-prefix=mxdnstest",
			    NULL};
	int eal_argc = (int)(sizeof(eal_argv) / sizeof(eal_argv[0])) - 1;
	if (sysconf(_SC_NPROCESSORS_ONLN) < 2)
		eal_argv[2] = "0";
	if (rte_eal_init(eal_argc, eal_argv) < 0) {
		fprintf(stderr, "EAL init failed\n");
		return 2;
	}
	CU_SuiteInfo suites[] = {
		{"dns_codec", NULL, NULL, NULL, NULL, dns_codec_tests},
		{"dns_cache", NULL, NULL, NULL, NULL, dns_cache_tests},
		{"dns_resolver", NULL, NULL, NULL, NULL, dns_resolver_tests},
		{"dns_mail", NULL, NULL, NULL, NULL, dns_mail_tests},
		CU_SUITE_INFO_NULL,
	};
	int rc = mx_test_run(suites);
	rte_eal_cleanup();
	return rc;
}
