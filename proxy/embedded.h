/* embedded.h: files built into the binary by cmake/embed_files.cmake (the dashboard page). */
#ifndef CAPGATE_EMBEDDED_H
#define CAPGATE_EMBEDDED_H

#include <stddef.h>

struct embedded_file {
    const char *name;          /* the file's name in its source directory; NULL ends a table */
    const unsigned char *data; /* len bytes, then a NUL */
    size_t len;
};

/* proxy/dashboard/'s files. */
extern const struct embedded_file dashboard_files[];

#endif
