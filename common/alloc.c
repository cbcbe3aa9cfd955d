/* alloc.c: which malloc the process runs on, and giving its free memory back to the system.
 *
 * capgate's executable may be linked with jemalloc (CMakeLists.txt, CAPGATE_ALLOCATOR), which
 * then replaces malloc for the whole process, libevent and OpenSSL included. The modules and the
 * unit tests are built once for both cases, so jemalloc's control interface is a weak reference:
 * it resolves only when jemalloc is linked in (or preloaded). */
#include "capgate/alloc.h"

#include <stddef.h>
#include <stdio.h>
#include <string.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

/* jemalloc's mallctl(3), exported without a prefix by Debian's libjemalloc2. */
int mallctl(const char *name, void *oldp, size_t *oldlenp, void *newp, size_t newlen)
    __attribute__((weak));

const char *alloc_name(void) {
    static char name[48];
    const char *v = NULL;
    size_t len = sizeof(v);
    if (!mallctl) return "libc";
    if (mallctl("version", &v, &len, NULL, 0) != 0 || !v) return "jemalloc";
    /* "5.3.0-0-g54eaed1d...": the release is enough */
    snprintf(name, sizeof(name), "jemalloc %.*s", (int)strcspn(v, "-"), v);
    return name;
}

void alloc_release_free(void) {
    if (mallctl) {
        /* "arena.<MALLCTL_ARENAS_ALL>.purge": every arena's unused dirty pages, now rather than
         * after jemalloc's decay time (10 s by default). */
        (void)mallctl("arena.4096.purge", NULL, NULL, NULL, 0);
        return;
    }
#ifdef __GLIBC__
    malloc_trim(0);
#endif
}
