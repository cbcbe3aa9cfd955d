/* redis_fence.h: settling a MULTI/EXEC whose reply never came (audit sink, metrics flush).
 *
 * A transaction sent on a connection that then timed out may still sit unread in Redis (Redis
 * stopped or busy) and run later. Killing that client from a new connection, by its CLIENT ID
 * and local address both (so an id reused after a Redis restart matches nothing), settles it:
 * once CLIENT KILL has answered, the transaction either ran or never will, and a GET of a key it
 * set tells which. */
#ifndef CAPGATE_REDIS_FENCE_H
#define CAPGATE_REDIS_FENCE_H
#include <hiredis/hiredis.h>

struct redis_fence {
    long long id;  /* CLIENT ID; -1 unknown (CLIENT ID refused, e.g. by an ACL) */
    char addr[64]; /* ip:port as Redis writes a client's addr (IPv6 in brackets); "" unknown */
};

#define REDIS_FENCE_NONE \
    { .id = -1, .addr = "" }

/* Learns c's CLIENT ID and local address into f (id -1 when refused: fencing is then skipped). */
void redis_fence_learn(redisContext *c, struct redis_fence *f);

/* Kills the client f names through c (who: the log prefix) and forgets it. 0 when settled (or
 * nothing to do; an error reply is logged and counts as settled, as nothing better can be
 * done), -1 on no answer: f is kept, fence again at the next connect. */
int redis_fence_kill(redisContext *c, struct redis_fence *f, const char *who);

#endif
