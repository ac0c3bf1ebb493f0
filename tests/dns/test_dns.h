/* test_dns.h - the lib/dns suites, defined in test_*.c and run by test_dns.c. */
#ifndef TEST_DNS_H
#define TEST_DNS_H

#include <CUnit/CUnit.h>

extern CU_TestInfo dns_codec_tests[];
extern CU_TestInfo dns_cache_tests[];
extern CU_TestInfo dns_resolver_tests[];
extern CU_TestInfo dns_mail_tests[];

#endif
