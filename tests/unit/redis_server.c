/* redis_server.c: the unit tests' redis-server (redis_server.h). */
#include "redis_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int redis_server_free_port(void) {
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    int fd = socket(AF_INET, SOCK_STREAM, 0), port = -1;
    if (fd < 0) return -1;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    close(fd);
    return port;
}

redisContext *redis_server_connect(const struct redis_server *s) {
    struct timeval tv = {1, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", s->port, tv);
    redisReply *rep;
    if (!c || c->err) {
        if (c) redisFree(c);
        return NULL;
    }
    if (s->password) {
        rep = redisCommand(c, "AUTH %s", s->password);
        if (rep) freeReplyObject(rep);
    }
    return c;
}

static int answers_ping(const struct redis_server *s) {
    redisContext *c = redis_server_connect(s);
    redisReply *rep;
    int ok;
    if (!c) return 0;
    rep = redisCommand(c, "PING");
    ok = rep && rep->type == REDIS_REPLY_STATUS;
    if (rep) freeReplyObject(rep);
    redisFree(c);
    return ok;
}

int redis_server_start(struct redis_server *s) {
    char port[16];
    struct timespec pause = {0, 20 * 1000 * 1000};
    if (!s->port && (s->port = redis_server_free_port()) <= 0) {
        fprintf(stderr, "no free port for redis-server\n");
        return -1;
    }
    snprintf(port, sizeof port, "%d", s->port);
    s->pid = fork();
    if (s->pid < 0) {
        perror("fork");
        return -1;
    }
    if (s->pid == 0) {
        const char *argv[16];
        int argc = 0;
        if (!freopen("/dev/null", "w", stdout)) _exit(126);
        argv[argc++] = "redis-server";
        argv[argc++] = "--port";
        argv[argc++] = port;
        argv[argc++] = "--bind";
        argv[argc++] = "127.0.0.1";
        argv[argc++] = "--save";
        argv[argc++] = "";
        argv[argc++] = "--appendonly";
        argv[argc++] = "no";
        argv[argc++] = "--dir";
        argv[argc++] = s->dir ? s->dir : "/tmp";
        if (s->password) {
            argv[argc++] = "--requirepass";
            argv[argc++] = s->password;
        }
        argv[argc] = NULL;
        execvp("redis-server", (char *const *)argv);
        _exit(127);
    }
    for (int i = 0; i < 250; i++) { /* 250 x 20 ms: 5 s */
        int status;
        if (waitpid(s->pid, &status, WNOHANG) == s->pid) {
            s->pid = -1;
            if (WIFEXITED(status) && WEXITSTATUS(status) == 127)
                fprintf(stderr, "redis-server is not installed (not on PATH): this test needs "
                                "it (Debian: apt-get install redis-server)\n");
            else
                fprintf(stderr, "redis-server exited at start (port %d)\n", s->port);
            return -1;
        }
        if (answers_ping(s)) return 0;
        nanosleep(&pause, NULL);
    }
    fprintf(stderr, "redis-server on port %d did not answer PING within 5 s\n", s->port);
    redis_server_stop(s);
    return -1;
}

void redis_server_stop(struct redis_server *s) {
    if (s->pid <= 0) return;
    kill(s->pid, SIGCONT);
    kill(s->pid, SIGKILL);
    waitpid(s->pid, NULL, 0);
    s->pid = -1;
}
