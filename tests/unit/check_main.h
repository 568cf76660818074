/* Each unit test file is one Check suite and one executable:
 *   CHECK_MAIN(packet_suite)
 * runs the suite and exits non-zero when a test failed. */
#ifndef MQB_CHECK_MAIN_H
#define MQB_CHECK_MAIN_H

#include <check.h>
#include <stdlib.h>

#define CHECK_MAIN(suite_fn) \
    int main(void) \
    { \
        SRunner *sr = srunner_create(suite_fn()); \
        srunner_run_all(sr, CK_NORMAL); \
        int failed = srunner_ntests_failed(sr); \
        srunner_free(sr); \
        return failed ? EXIT_FAILURE : EXIT_SUCCESS; \
    }

#endif
