/* bevread.c: see bevread.h. What libevent's own read callback (bufferevent_readcb in
 * bufferevent_sock.c, libevent 2.1) does and this one keeps: the read stays within the high
 * watermark and within 16 KB (libevent's limit of one read); the read callback runs through
 * bufferevent_trigger, so the low watermark and BEV_OPT_DEFER_CALLBACKS hold; EOF and errors
 * disable reading and run the event callback with BEV_EVENT_READING | EOF or ERROR, errno set.
 * A timeout, and a read event that comes when the input already holds the high watermark, go to
 * libevent's callback unchanged (it reports the timeout, or suspends reading). Rate limits
 * (bufferevent_set_rate_limit) are not applied here: a bufferevent with them must not use it. */
#include "capgate/bevread.h"

#include <errno.h>
#include <stdatomic.h>
#include <sys/uio.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_struct.h>
#include <event2/event.h>

#define BEVREAD_MAX 16384 /* libevent's own limit of one read (MAX_SINGLE_READ_DEFAULT) */

/* libevent's bufferevent_readcb: the same function for every socket bufferevent. */
static _Atomic(event_callback_fn) libevent_readcb;

static void bevread_cb(evutil_socket_t fd, short what, void *arg) {
    struct bufferevent *bev = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    size_t len = evbuffer_get_length(in), room = BEVREAD_MAX;
    struct evbuffer_iovec v[2];
    struct iovec iov[2];
    int nv;
    ssize_t n;

    if (what != EV_READ) goto libevent;
    if (bev->wm_read.high) {
        if (len >= bev->wm_read.high) goto libevent;
        if (bev->wm_read.high - len < room) room = bev->wm_read.high - len;
    }
    /* A socket bufferevent keeps its input's end frozen except inside its own read: this is that
     * read. */
    evbuffer_unfreeze(in, 0);
    nv = evbuffer_reserve_space(in, (ev_ssize_t)room, v, 2);
    if (nv <= 0) {
        evbuffer_freeze(in, 0);
        goto libevent;
    }
    for (int i = 0; i < nv; i++) {
        size_t take = v[i].iov_len < room ? v[i].iov_len : room;
        iov[i].iov_base = v[i].iov_base;
        iov[i].iov_len = take;
        room -= take;
    }
    n = readv(fd, iov, nv);
    if (n > 0) {
        size_t left = (size_t)n;
        int used = 0;
        for (; used < nv && left > 0; used++) {
            v[used].iov_len = left < iov[used].iov_len ? left : iov[used].iov_len;
            left -= v[used].iov_len;
        }
        evbuffer_commit_space(in, v, used);
        evbuffer_freeze(in, 0);
        bufferevent_trigger(bev, EV_READ, 0);
        return;
    }
    int err = errno; /* the space reserved and not committed is simply not used */
    evbuffer_freeze(in, 0);
    if (n < 0 && (err == EAGAIN || err == EWOULDBLOCK || err == EINTR)) return;
    bufferevent_disable(bev, EV_READ);
    errno = err;
    bufferevent_trigger_event(bev, BEV_EVENT_READING | (n == 0 ? BEV_EVENT_EOF : BEV_EVENT_ERROR),
                              0);
    return;
libevent:
    atomic_load_explicit(&libevent_readcb, memory_order_relaxed)(fd, what, arg);
}

int bevread_install(struct bufferevent *bev) {
    struct event *ev = &bev->ev_read;
    evutil_socket_t fd = event_get_fd(ev);
    event_callback_fn cb = event_get_callback(ev), known = NULL;

    if (cb == bevread_cb) return 0;
    if (fd < 0 || event_get_callback_arg(ev) != bev || bufferevent_get_underlying(bev)) return -1;
    /* The first socket bufferevent tells which callback is libevent's; any other is not one. */
    if (!atomic_compare_exchange_strong(&libevent_readcb, &known, cb) && known != cb) return -1;
    /* Reading may be on already (a connection evhttp keeps watching): taken off and put back
     * with the bufferevent's read timeout, within one loop turn, which the epoll changelist
     * folds into nothing. */
    int pending = event_pending(ev, EV_READ, NULL);
    if (pending && event_del(ev) != 0) return -1;
    if (event_assign(ev, event_get_base(ev), fd, event_get_events(ev), bevread_cb, bev) != 0)
        return -1;
    if (pending)
        return event_add(ev, evutil_timerisset(&bev->timeout_read) ? &bev->timeout_read : NULL);
    return 0;
}
