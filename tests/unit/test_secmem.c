/* test_secmem.c: secret memory and process hardening. A block is usable to its end plus the NUL,
 * zeroed, and its pages carry the "dd" (do not dump) flag in /proc/self/smaps; after
 * secmem_free the mapping is gone. secmem_no_dumps, in a child process, leaves it
 * non-dumpable with RLIMIT_CORE 0. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "capgate/secmem.h"

/* The VmFlags line of the mapping holding p in /proc/self/smaps ("" when none holds it). */
static void vm_flags(const void *p, char *out, size_t outlen) {
    FILE *f = fopen("/proc/self/smaps", "r");
    char line[512];
    int inside = 0;
    uintptr_t a = (uintptr_t)p;
    out[0] = '\0';
    assert_non_null(f);
    while (fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, '-') < strchr(line, ' ')) {
            inside = a >= lo && a < hi;
        } else if (inside && strncmp(line, "VmFlags:", 8) == 0) {
            snprintf(out, outlen, "%.250s", line + 8);
            break;
        }
    }
    fclose(f);
}

static void test_alloc_dontdump_free(void **state) {
    char flags[256];
    char *s = secmem_alloc(5000); /* more than a page */
    assert_non_null(s);
    for (size_t i = 0; i <= 5000; i++) assert_int_equal(s[i], 0);
    memset(s, 'k', 5000);
    assert_true(secmem_dontdump(s));
    vm_flags(s, flags, sizeof flags);
    assert_non_null(strstr(flags, " dd"));
    vm_flags(s + 4999, flags, sizeof flags);
    assert_non_null(strstr(flags, " dd"));
    secmem_free(s);
    vm_flags(s, flags, sizeof flags);
    assert_null(strstr(flags, " dd")); /* unmapped (or another mapping took the address) */

    char *d = secmem_strdup("token-abc");
    assert_string_equal(d, "token-abc");
    char *m = secmem_memdup("a\0b", 3);
    assert_memory_equal(m, "a\0b\0", 4);
    assert_int_equal((uintptr_t)m % 16, 0);
    secmem_free(d);
    secmem_free(m);
    secmem_free(NULL);
    assert_false(secmem_dontdump(NULL));
}

static void test_no_dumps(void **state) {
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        struct rlimit rl;
        int ok = secmem_no_dumps() == 0 && prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) == 0 &&
                 getrlimit(RLIMIT_CORE, &rl) == 0 && rl.rlim_cur == 0;
        _exit(ok ? 0 : 1);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_alloc_dontdump_free),
        cmocka_unit_test(test_no_dumps),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
