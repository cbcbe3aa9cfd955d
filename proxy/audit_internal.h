/* audit_internal.h: what the audit module's files share: the queues' nodes, struct audit, the
 * sink's settings and the functions one file calls in another. Private to audit*.c; the rest
 * of the gateway uses audit.h. */
#ifndef CAPGATE_AUDIT_INTERNAL_H
#define CAPGATE_AUDIT_INTERNAL_H
#include "audit.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <jansson.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <sys/socket.h>

#include "capgate/clock.h"
#include "capgate/log.h"
#include "capgate/num.h"
#include "capgate/params.h"
#include "capgate/strbuf.h"
#include "capgate/thread.h"
#include "config.h"
#include "record.h"
#include "redis_conn.h"
#include "redis_fence.h"
#include "resp.h"

/* ======================================================================================== */
/* Per-worker queues: an SPSC ring of node pointers, and a lock-free overflow stack behind it  */
/* ======================================================================================== */

struct audit_node {
    struct audit_node *next;
    unsigned worker; /* who submitted it, and its number among that worker's records (1, 2, ..): */
    uint64_t seq;    /* audit.commit "durable" acknowledges by these; 0 for a replayed record */
    int uncertain;   /* spool only: its live XADD was sent but never answered, or WAIT did not
                      * confirm it (audit.min_replicas) */
    char batch[48];  /* uncertain: "<run>:<seq>" of its live batch, "" when unknown */
    struct audit_record rec;
};

/* Producer: the worker (tail, overflow push). Consumer: the sink (head, overflow take).
 * While the overflow stack is non-empty the producer pushes there too, and the consumer takes it
 * only once the ring is empty, so a worker's records keep their order. */
/* Finished nodes a worker's queue keeps for its next records (about 1.1 KB each). */
#define AUDIT_FREE_RING 256
struct audit_queue {
    _Alignas(64) atomic_size_t tail;
    atomic_uint_fast64_t submitted;
    atomic_uint_fast64_t overflowed;
    _Alignas(64) atomic_size_t head;
    atomic_uint_fast64_t taken;
    atomic_uint_fast64_t overflow_taken; /* of taken, those that came from the overflow */
    _Alignas(64) _Atomic(struct audit_node *) overflow; /* newest first */
    _Alignas(64) struct audit_node *pending; /* consumer only: taken overflow, oldest first */
    /* audit.commit "durable": every record of this worker numbered up to durable is stored
     * (Redis answered EXEC, and WAIT when min_replicas asks, or the spool fsynced it); the sink
     * advances it and then calls notify (under notify_lock: the worker unsets it before it
     * frees what notify_arg points to, while the sink may still run). */
    _Alignas(64) atomic_uint_fast64_t durable;
    void (*notify)(void *arg);
    void *notify_arg;
    uint64_t batch_max; /* sink only: the highest number of this worker in the current batch */
    /* Nodes the sink is done with, back to this worker's audit_submit (audit_node_release):
     * producer the sink (free_tail), consumer the worker (free_head). */
    _Alignas(64) atomic_size_t free_tail;
    _Alignas(64) atomic_size_t free_head;
    struct audit_node *free_slots[AUDIT_FREE_RING];
    struct audit_node *slots[AUDIT_RING_SIZE];
};
_Static_assert((AUDIT_FREE_RING & (AUDIT_FREE_RING - 1)) == 0, "free ring: a power of two");
_Static_assert((AUDIT_RING_SIZE & (AUDIT_RING_SIZE - 1)) == 0, "ring size: a power of two");

enum audit_state {
    AUDIT_CONNECTING, /* Redis mode, before the first connection attempt */
    AUDIT_LIVE,       /* records go straight to the stream */
    AUDIT_SPOOLING,   /* Redis down or erroring: records go to the spool; reconnect w/ backoff */
    AUDIT_REPLAYING,  /* Redis back: the spool is replayed; new records still go to the spool */
    AUDIT_MEMORY,     /* no Redis: the memory stream */
    AUDIT_STOPPED
};

#define SINK_BATCH 512 /* records per pipelined write */
#define SINK_IDLE_MAX_US \
    100000                       /* an idle sink sleeps until a submit wakes it, a deadline
                                   * (fsync, reconnect) or at most this long */
#define SINK_GATHER_US 5000      /* after a submit woke it, the sink lets a batch gather */
#define SINK_HELD_RETRY_US 20000 /* retry of records the spool refused */
#define SYNC_EVERY_US 100000     /* fsync the spool and the file at least this often ... */
#define SYNC_EVERY_RECORDS 512   /* ... or after this many records */
#define SEGMENT_MAX_BYTES (8u << 20)
#define REPLAY_CHUNK \
    256 /* the bound of one replay step: records, each one O(1)
                                   * script (SET NX + XADD), plus a GET per run of uncertain ones */
#define REPLAY_TIMEOUT_MIN_MS \
    1000 /* a replay step's replies wait max(this, redis.timeout_ms):
                                    * background work, not to be torn down (and restarted) by a
                                    * Redis that is slow for a moment */
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define CURSOR_NAME "replay.cursor"
#define TRIM_MIN_US 10000000 /* at most one malloc_trim per this long (sink_trim) */

/* An append-only file fsynced in batches (a spool segment or audit.file). */
struct sync_file {
    int fd;
    unsigned unsynced;
    uint64_t synced_us;
};

struct audit {
    const struct config *cfg;
    unsigned n_workers;
    struct audit_queue **queues;
    pthread_t thread;
    int thread_started;
    atomic_int stopping;
    atomic_int state;
    /* The sink sleeps in poll() on wake_fd (an eventfd) with sleeping set; the first submit
     * that finds it set clears it and writes wake_fd, so a busy sink costs the workers no
     * syscall and an idle one does not spin. */
    int wake_fd;
    atomic_int sleeping;
    atomic_int reopen; /* audit_reopen asked; the sink clears it when it reopens */

    atomic_uint_fast64_t written, spooled, replayed, redis_errors, file_errors, spool_depth;
    size_t held_n;                     /* the length of held plus the records out for a retry
                                     * (sink thread only) */
    atomic_uint_fast64_t held_records; /* held_n as of the last finished attempt, for
                                         * audit_get_stats: a retry in progress does not make
                                         * it drop to 0 and back */

    /* sink thread only */
    redisContext *redis;
    uint64_t redis_epoch; /* redis_conn_epoch() at connect (or seen since): act when it moves */
    char script_sha[41];
    unsigned backoff_ms;
    uint64_t next_connect_us;
    struct audit_node *held; /* records to retry first (the spool could not take them) */
    int holding;             /* held was non-empty at the last look (logged once) */
    char maxlen[24];
    unsigned redis_timeout_ms;           /* redis.timeout_ms of the connection's settings */
    char wait_replicas[24], wait_ms[24]; /* WAIT's arguments (audit.min_replicas); wait_ms is
                                            redis_timeout_ms, set at each connect */
    char safe_instance[48];
    unsigned segment_seq;
    struct sync_file segment; /* the spool segment being appended to; fd -1 when none */
    char segment_name[128];
    uint64_t segment_bytes, segment_records;
    FILE *replay_fp; /* the segment being replayed */
    char replay_name[128];
    uint64_t replay_off;
    /* Live batches are numbered per process (run_id, batch_seq); each one's MULTI/EXEC also sets
     * batch_key to its number, so whether an unanswered batch landed is one GET at replay. */
    char run_id[17];
    char batch_key[320];       /* <prefix>audit:batch:<run_id> */
    uint64_t batch_seq;        /* the last live batch sent */
    struct redis_fence client; /* the connection's CLIENT ID and address; id -1 unknown */
    struct redis_fence fence;  /* a lost connection that carried an unanswered batch,
                                     * killed at the next connect before replay; id -1 none */
    struct sync_file file;     /* audit.file; fd -1 when not configured */
    struct strbuf file_text;   /* the lines of one batch for audit.file, kept between them */
    struct strbuf resp;        /* the command being queued, formatted (argv_send) */
    struct strbuf entry;       /* one record's JSON for its XADD (argv_entry) */
    struct strbuf access;      /* one batch's access lines for stderr, kept between them */
    int lock_fd;               /* flock on <spool_dir>/.lock: one process per spool */
    char file_path[4096];      /* audit.file, or <spool_dir>/audit.jsonl without redis */

    int backlog;         /* sink: a backlog (replay, held records, full batches) since the
                          * last sink_trim */
    uint64_t trimmed_us; /* sink: the last sink_trim */

    /* memory stream: record k (0-based, in write order) is mem[k % mem_cap] */
    pthread_mutex_t mem_lock;
    struct audit_record *mem;
    size_t mem_cap, mem_alloc;
    uint64_t mem_total;

    pthread_mutex_t notify_lock; /* the queues' notify functions (audit.commit durable) */

    /* running queries */
    struct redis_query_set queries;
};

#define UNSAVED_PREFIX "capgate audit record (unsaved): "

/* audit_record.c */
void audit_copy_str(char *dst, size_t size, const char *src);
void audit_hex_encode(const unsigned char *in, size_t n, char *out);
json_t *audit_record_to_object(const struct audit_record *r);
int audit_record_strbuf(const struct audit_record *r, int uncertain, struct strbuf *out);
int audit_record_from_object(json_t *o, struct audit_record *r);

/* audit_queue.c */
struct audit_node *audit_queue_pop(struct audit_queue *q);
/* Sink only: n is done with; back to its worker's free ring, or freed when that is full. */
void audit_node_release(struct audit *a, struct audit_node *n);
/* After the sink stopped: frees the nodes in q's free ring. */
void audit_queue_free_nodes(struct audit_queue *q);
void audit_commit_note(struct audit *a, struct audit_node **batch, size_t n);
void audit_commit_ack(struct audit *a);
void audit_commit_release_all(struct audit *a);

/* audit_spool.c */
int audit_write_all(int fd, const char *p, size_t n);
void audit_sync_file_sync(struct audit *a, struct sync_file *f, int force);
int audit_file_open(const char *path);
void audit_fsync_dir(const char *dir);
int audit_mkdir_p(const char *path);
int audit_list_segments(const char *dir, struct dirent ***names);
void audit_free_names(struct dirent **names, int n);
int audit_spool_path(const struct audit *a, const char *name, char *out, size_t outlen);
void audit_spool_close_segment(struct audit *a);
int audit_spool_append(struct audit *a, struct audit_node **nodes, size_t n);
void audit_cursor_write(struct audit *a, const char *segment, uint64_t off);
uint64_t audit_cursor_read(struct audit *a, const char *segment);
uint64_t audit_spool_count(struct audit *a);

/* audit_sink.c */
redisReply *audit_redis_cmd(redisContext *c, const char *fmt, ...);
redisContext *audit_redis_open(const struct config_redis *rc, uint64_t *epoch, unsigned *timeout_ms,
                               char *err, size_t errlen);
void audit_sink_disconnect(struct audit *a);
void audit_print_unsaved(const struct audit_node *n);
void audit_sink_last_resort(struct audit *a);
void audit_sink_wake(struct audit *a);
void audit_sink_nudge(struct audit *a);
void *audit_sink_main(void *arg);

#endif
