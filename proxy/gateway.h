/* gateway.h: the capgate process: worker threads (each its own event base, front httpd on a
 * shared SO_REUSEPORT port, and upstream pool), the admin listener and the signals on the main
 * thread, drain on SIGTERM/SIGINT, config reload on SIGHUP, and reopening of the audit file on
 * SIGUSR1 and SIGHUP. */
#ifndef CAPGATE_GATEWAY_H
#define CAPGATE_GATEWAY_H
#include <stddef.h>

struct config;
struct gateway;

/* Builds everything from c (takes ownership, also on failure) loaded from path (kept for
 * SIGHUP), binds the listeners and prints "capgate listening on http://HOST:PORT" then
 * "capgate admin listening on http://HOST:PORT" to stdout. Worker threads start in
 * gateway_run. NULL with err on failure. */
struct gateway *gateway_new(const char *path, struct config *c, char *err, size_t errlen);
/* Serves until SIGTERM/SIGINT and the drain that follows. 0 on a clean shutdown, -1 if a worker
 * could not start. */
int gateway_run(struct gateway *g);
/* Joins the workers and frees everything. NULL accepted. */
void gateway_free(struct gateway *g);

#endif
