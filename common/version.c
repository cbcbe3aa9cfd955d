/* version.c: the version both programs print with --version. */
#include "capgate/version.h"

const char *version_string(void) {
    return CAPGATE_VERSION;
}
