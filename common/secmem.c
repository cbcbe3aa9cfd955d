/* secmem.c: secret memory (see secmem.h). A block is an anonymous mapping rounded up to whole
 * pages, with a header holding its size; the mapping is marked MADV_DONTDUMP. Mappings rather
 * than malloc: the heap's pages are dumped and reused, and madvise works on whole pages. */
#include "capgate/secmem.h"

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <openssl/crypto.h>

struct secmem_head {
    size_t map_len; /* bytes mapped, header included */
    int dontdump;   /* madvise(MADV_DONTDUMP) succeeded */
    int pad;
};

/* The header is 16 bytes, so the block stays aligned for any scalar. */
_Static_assert(sizeof(struct secmem_head) == 16, "header keeps 16-byte alignment");

static size_t page_size(void) {
    long n = sysconf(_SC_PAGESIZE);
    return n > 0 ? (size_t)n : 4096;
}

void *secmem_alloc(size_t len) {
    size_t page = page_size(), need;
    if (len > SIZE_MAX / 2) return NULL;
    need = sizeof(struct secmem_head) + len + 1;
    need = (need + page - 1) / page * page;
    void *map = mmap(NULL, need, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (map == MAP_FAILED) return NULL;
    struct secmem_head *h = map;
    h->map_len = need;
#ifdef MADV_DONTDUMP
    h->dontdump = madvise(map, need, MADV_DONTDUMP) == 0;
#endif
    return h + 1; /* anonymous pages are zero already */
}

char *secmem_memdup(const void *s, size_t len) {
    char *p = secmem_alloc(len);
    if (!p) return NULL;
    if (len) memcpy(p, s, len);
    p[len] = '\0';
    return p;
}

char *secmem_strdup(const char *s) {
    return secmem_memdup(s, strlen(s));
}

void secmem_free(void *p) {
    if (!p) return;
    struct secmem_head *h = (struct secmem_head *)p - 1;
    size_t len = h->map_len;
    OPENSSL_cleanse(h, len);
    munmap(h, len);
}

int secmem_dontdump(const void *p) {
    return p ? ((const struct secmem_head *)p - 1)->dontdump : 0;
}

int secmem_no_dumps(void) {
    struct rlimit rl;
    int rc = 0, saved = 0;
    if (getrlimit(RLIMIT_CORE, &rl) == 0) {
        rl.rlim_cur = 0;
        if (setrlimit(RLIMIT_CORE, &rl) != 0) {
            rc = -1;
            saved = errno;
        }
    }
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) {
        rc = -1;
        saved = errno;
    }
    errno = saved;
    return rc;
}
