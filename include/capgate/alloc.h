/* alloc.h: which malloc the process runs on, and giving its free memory back to the system. */
#ifndef CAPGATE_ALLOC_H
#define CAPGATE_ALLOC_H

/* "jemalloc <version>" when the program is linked with jemalloc (CMake's CAPGATE_ALLOCATOR),
 * otherwise "libc". For the start-up log line. */
const char *alloc_name(void);

/* Returns the pages of freed memory to the system now, in every arena: jemalloc's purge, or
 * glibc's malloc_trim(0). It walks the arenas under their locks: call it after a backlog has
 * drained, not per request. */
void alloc_release_free(void);

#endif
