/* sdnotify.h: the service manager's readiness protocol (sd_notify(3)) without libsystemd. */
#ifndef CAPGATE_SDNOTIFY_H
#define CAPGATE_SDNOTIFY_H

/* Sends STATE (e.g. "READY=1") as one datagram to the socket named by $NOTIFY_SOCKET.
 * Returns 1 when sent, 0 when $NOTIFY_SOCKET is unset (not under a service manager that asked
 * for it), -1 on error (errno set). Never blocks. */
int sd_notify_state(const char *state);

#endif
