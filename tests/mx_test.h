/*
 * mx_test.h - the shared main() for CUnit suites.
 *
 * A test file defines its suites with MX_TEST_SUITE-style arrays and calls
 * mx_test_run(); the exit status is non-zero when any assertion failed, so
 * meson test sees failures.  Usage:
 *
 *	static CU_TestInfo cfg_tests[] = { {"name", fn}, CU_TEST_INFO_NULL };
 *	static CU_SuiteInfo suites[] = { {"cfg", NULL, NULL, NULL, NULL, cfg_tests},
 *					  CU_SUITE_INFO_NULL };
 *	int main(void) { return mx_test_run(suites); }
 */
#ifndef MX_TEST_H
#define MX_TEST_H

#include <CUnit/Basic.h>
#include <stdio.h>

static inline int mx_test_run(CU_SuiteInfo *suites)
{
	if (CU_initialize_registry() != CUE_SUCCESS)
		return 2;
	if (CU_register_suites(suites) != CUE_SUCCESS) {
		fprintf(stderr, "suite registration: %s\n", CU_get_error_msg());
		CU_cleanup_registry();
		return 2;
	}
	CU_basic_set_mode(CU_BRM_VERBOSE);
	CU_basic_run_tests();
	unsigned failed = CU_get_number_of_failures() + CU_get_number_of_tests_failed();
	unsigned ran = CU_get_number_of_tests_run();
	CU_cleanup_registry();
	if (ran == 0) {
		fprintf(stderr, "no test ran\n");
		return 2;
	}
	return failed ? 1 : 0;
}

#endif
