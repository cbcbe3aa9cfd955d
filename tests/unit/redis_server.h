/* redis_server.h: a redis-server of a unit test's own (test_store, test_audit,
 * test_minute_stats): on a free loopback port, no persistence, killed at the end. */
#ifndef CAPGATE_TEST_REDIS_SERVER_H
#define CAPGATE_TEST_REDIS_SERVER_H
#include <sys/types.h>
#include <hiredis/hiredis.h>

struct redis_server {
    pid_t pid;            /* > 0 while running */
    int port;             /* 0: redis_server_start picks a free one */
    const char *password; /* --requirepass, or NULL */
    const char *dir;      /* --dir (where a BGSAVE would go), or NULL for /tmp */
};

/* A TCP port of 127.0.0.1 that was free a moment ago (bound, read, closed), or -1. */
int redis_server_free_port(void);

/* Starts redis-server (--bind 127.0.0.1, --save "", --appendonly no, stdout to /dev/null) on
 * s->port and waits, at most 5 s, until it answers PING. 0, or -1 with a line on stderr saying
 * why (not installed, exited at start, no answer). */
int redis_server_start(struct redis_server *s);

/* Kills it (SIGCONT first: a test may have stopped it with SIGSTOP) and reaps it. Nothing when
 * it is not running. */
void redis_server_stop(struct redis_server *s);

/* A blocking connection with a 1 s timeout, authenticated when s->password is set; NULL when
 * none could be made. The caller frees it with redisFree. */
redisContext *redis_server_connect(const struct redis_server *s);

#endif
