/* test_smtp.h - suites of the lib/smtp test executable, defined in test_*.c. */
#ifndef MX_TEST_SMTP_H
#define MX_TEST_SMTP_H

#include <CUnit/CUnit.h>

extern CU_TestInfo parse_tests[];
extern CU_TestInfo auth_tests[];

#endif
