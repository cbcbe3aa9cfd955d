/* thread.c: helper threads start with the process's asynchronous signals blocked. The mask is
 * set in the creating thread around pthread_create, so no signal lands before the new thread
 * could block it itself. */
#include "capgate/thread.h"

#include <sched.h>
#include <signal.h>
#include <stdio.h>

int thread_start(pthread_t *t, const pthread_attr_t *attr, void *(*fn)(void *), void *arg) {
    static const int async_signals[] = {SIGTERM, SIGINT,  SIGHUP,  SIGQUIT, SIGUSR1,
                                        SIGUSR2, SIGALRM, SIGCHLD, SIGPIPE, SIGWINCH};
    sigset_t block, old;
    sigemptyset(&block);
    for (size_t i = 0; i < sizeof(async_signals) / sizeof(async_signals[0]); i++)
        sigaddset(&block, async_signals[i]);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    int rc = pthread_create(t, attr, fn, arg);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return rc;
}

void thread_name(const char *name) {
    char n[16];
    snprintf(n, sizeof(n), "%s", name);
    (void)pthread_setname_np(pthread_self(), n);
}

int thread_background(void) {
#ifdef SCHED_BATCH
    struct sched_param sp = {0};
    return pthread_setschedparam(pthread_self(), SCHED_BATCH, &sp);
#else
    return 0;
#endif
}
