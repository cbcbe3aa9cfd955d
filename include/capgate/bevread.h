/* bevread.h: socket bufferevents that read with one system call. libevent's socket bufferevent
 * sizes every read with ioctl(FIONREAD) before its readv (evbuffer_read), a second system call
 * for every read of every connection (0.68 us of 25.6 per forwarded request in the bench's
 * profile, docs/benchmarks.md). bevread_install points a socket bufferevent's read event at a
 * callback of its own that reads into space reserved in the input buffer with one readv, then
 * does what libevent's callback does after a read. */
#ifndef CAPGATE_BEVREAD_H
#define CAPGATE_BEVREAD_H

struct bufferevent;

/* For a socket bufferevent (bufferevent_socket_new) whose fd is set, reading or not; call it
 * again after anything that sets the fd again (bufferevent_setfd, bufferevent_socket_connect),
 * which gives the event libevent's callback back. 0, or -1 when bev is not such a bufferevent (it
 * then reads as before). */
int bevread_install(struct bufferevent *bev);

#endif
