/* metrics_internal.h: what the metrics module's files share: the workers' slots, struct
 * metrics and the functions one file calls in another. Private to minute_stats.c and
 * metrics_*.c; the rest of the gateway uses minute_stats.h. */
#ifndef CAPGATE_METRICS_INTERNAL_H
#define CAPGATE_METRICS_INTERNAL_H
#include "minute_stats.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <jansson.h>
#include <openssl/rand.h>

#include "capgate/clock.h"
#include "capgate/log.h"
#include "capgate/num.h"
#include "capgate/params.h"
#include "capgate/secmem.h"
#include "capgate/thread.h"
#include "config.h"
#include "redis_conn.h"
#include "redis_fence.h"

/* ---- the worker slots ----
 * Each worker owns one slot. `active` holds the worker's current batch, NULL once the flush
 * thread took it, or SLOT_BUSY while the worker is adding to it. The worker swaps SLOT_BUSY in,
 * adds, and stores the batch back; the flush thread takes a batch only with a compare-exchange
 * from a real batch pointer to NULL, so exactly one side owns a batch at any time. Emptied
 * batches come back through `spare` so a worker rarely allocates. */

extern char metrics_slot_busy_marker; /* defined in metrics_batch.c */
#define SLOT_BUSY ((struct metrics_batch *)(void *)&metrics_slot_busy_marker)

struct metrics_slot {
    _Atomic(struct metrics_batch *) active;
    _Atomic(struct metrics_batch *) spare;
    atomic_uint_fast64_t dropped_keys, dropped_requests;
    char pad[64];
};

/* The settings copied from the config. */
struct metrics_redis {
    struct redis_target *target; /* the config's; metrics_redis_connect takes the published one */
    char *prefix;
};

struct metrics {
    unsigned flush_ms;
    uint64_t retention_s;
    struct metrics_redis *redis; /* NULL: memory mode */
    struct metrics_slot *slots;
    unsigned n_slots;

    pthread_t thread;
    int thread_started;
    pthread_mutex_t lock;   /* guards the fields below and the memory tables */
    pthread_cond_t wake;    /* flush thread: stop or a flush request */
    pthread_cond_t flushed; /* metrics_flush waiters */
    int stop;
    uint64_t flush_requested, flush_done;
    struct redis_query_set queries; /* /admin/metrics queries running */

    /* flush thread only */
    struct metrics_batch *pending; /* Redis mode: merged sums not yet written */
    redisContext *conn;
    uint64_t conn_epoch; /* redis_conn_epoch() when conn was made */
    /* Flush batches are numbered per process (run_id, batch_seq); each one's MULTI/EXEC also sets
     * batch_key to its number, so whether a batch whose EXEC reply never came landed is one GET
     * (after fencing the connection it went on), whatever the history. */
    char run_id[17];
    char *batch_key;              /* <prefix>m:batch:<run_id> */
    uint64_t batch_seq;           /* the last batch sent */
    struct metrics_batch *unsure; /* batch unsure_seq: sent, EXEC unanswered; NULL none */
    uint64_t unsure_seq;
    struct redis_fence client; /* m->conn's CLIENT ID and address */
    struct redis_fence lost;   /* the connection unsure went on, to kill; id -1 none */
    /* memory mode: the tables; Redis mode: this process's own copy of what it counted (the
     * partial answers while Redis cannot be read). Under lock. */
    struct metrics_batch *memory;
    uint64_t memory_pruned_minute;
    uint64_t memory_since; /* unix seconds: memory holds every count from then on */

    atomic_uint_fast64_t flushes, flush_errors, pending_keys, dropped_keys, dropped_requests;
};

/* metrics_batch.c */
int metrics_id_parse(const char *s, size_t len, uint8_t *has, uint32_t *id);
int metrics_app_name_ok(const char *s, size_t len);
int metrics_key_equal(const struct metrics_key *a, const struct metrics_key *b);
struct metrics_batch *metrics_slot_take(struct metrics_slot *s);
void metrics_slot_give_back(struct metrics_slot *s, struct metrics_batch *b);

/* metrics_flush.c */
redisContext *metrics_redis_connect(const struct metrics_redis *cfg, uint64_t *epoch, char *err,
                                    size_t errlen);
void *metrics_flush_main(void *arg);

#endif
