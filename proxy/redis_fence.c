/* redis_fence.c: see redis_fence.h. */
#include "redis_fence.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <sys/socket.h>
#include "capgate/log.h"

void redis_fence_learn(redisContext *c, struct redis_fence *f) {
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    char ip[INET6_ADDRSTRLEN];
    redisReply *r = redisCommand(c, "CLIENT ID");
    f->id = r && r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
    if (r) freeReplyObject(r);
    f->addr[0] = '\0';
    if (getsockname(c->fd, (struct sockaddr *)&ss, &sl) != 0) return;
    if (ss.ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)&ss;
        if (inet_ntop(AF_INET, &in->sin_addr, ip, sizeof(ip)))
            snprintf(f->addr, sizeof(f->addr), "%s:%u", ip, ntohs(in->sin_port));
    } else if (ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&ss;
        if (inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof(ip)))
            snprintf(f->addr, sizeof(f->addr), "[%s]:%u", ip, ntohs(in6->sin6_port));
    }
}

int redis_fence_kill(redisContext *c, struct redis_fence *f, const char *who) {
    if (f->id < 0) return 0;
    redisReply *r;
    char id[24];
    snprintf(id, sizeof(id), "%lld", f->id);
    if (f->addr[0])
        r = redisCommand(c, "CLIENT KILL ID %s ADDR %s", id, f->addr);
    else
        r = redisCommand(c, "CLIENT KILL ID %s", id);
    if (!r) return -1; /* no answer: fence again at the next connect */
    if (r->type == REDIS_REPLY_INTEGER)
        log_info("%s: the connection of the unanswered batch %s (client %s): %s", who, f->addr, id,
                 r->integer > 0 ? "closed now" : "already gone");
    else
        log_warn("%s: CLIENT KILL of the connection of an unanswered batch: %s; the batch key "
                 "is checked without that fence",
                 who, r->str);
    freeReplyObject(r);
    f->id = -1;
    f->addr[0] = '\0';
    return 0;
}
