/* thread.h: starting helper threads that leave process signals to the main thread. */
#ifndef CAPGATE_THREAD_H
#define CAPGATE_THREAD_H
#include <pthread.h>

/* pthread_create with the asynchronous signals (SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1,
 * SIGUSR2, SIGALRM, SIGCHLD, SIGPIPE, SIGWINCH) blocked in the new thread from its first
 * instruction: they belong to the main thread's event loop, and one taken by a helper thread would
 * interrupt its blocking calls (hiredis's connect gives up on EINTR). Synchronous signals (SIGSEGV,
 * SIGBUS, ...) stay deliverable so crashes and sanitizers report where they happened. The
 * caller's mask is unchanged. 0, or an errno value. */
int thread_start(pthread_t *t, const pthread_attr_t *attr, void *(*fn)(void *), void *arg);

/* For a helper thread that works in the background of the event loops (the audit sink, the
 * metrics flush): SCHED_BATCH on Linux, which keeps its full share of the CPU but does not
 * preempt a running thread when it wakes up. On a core it shares with a worker, a sink waking
 * from its timer otherwise took the CPU from the worker in the middle of a request. Best effort:
 * 0, or an errno value (the thread then runs as before). */
int thread_background(void);

/* Names the calling thread (at most 15 characters, the kernel's limit; longer is cut) for
 * `top -H`, `ps -L`, perf and /proc/PID/task/TID/comm. Best effort. */
void thread_name(const char *name);

#endif
