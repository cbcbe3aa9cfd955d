/* version.h: the version string both programs print. */
#ifndef CAPGATE_VERSION_H
#define CAPGATE_VERSION_H
const char *version_string(void);
#endif
