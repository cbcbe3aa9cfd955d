/* secmem.h: memory for secrets (API keys, tokens, passwords). Each block sits in pages of its
 * own that are left out of core dumps (madvise MADV_DONTDUMP), and is wiped (OPENSSL_cleanse)
 * when freed, so a secret neither reaches a dump nor lingers in freed heap memory. Meant for the
 * few secrets of a config, not for bulk data: a block costs at least one page. */
#ifndef CAPGATE_SECMEM_H
#define CAPGATE_SECMEM_H
#include <stddef.h>

/* len bytes, zeroed, plus a NUL after them. NULL on OOM (or len too large). */
void *secmem_alloc(size_t len);
/* Copies of s[0..len) / of a NUL-terminated s, NUL-terminated. NULL on OOM. */
char *secmem_memdup(const void *s, size_t len);
char *secmem_strdup(const char *s);
/* Wipes the whole block and returns it to the system. NULL is accepted. */
void secmem_free(void *p);
/* 1 when the block at p was kept out of core dumps (MADV_DONTDUMP took); for tests. */
int secmem_dontdump(const void *p);

/* Process hardening for a program that holds secrets: not dumpable (PR_SET_DUMPABLE 0: no
 * core file, no ptrace attach by other processes of the same user, /proc/PID files owned by
 * root) and RLIMIT_CORE 0. 0, or -1 with errno (the caller logs it; it is not fatal). */
int secmem_no_dumps(void);

#endif
