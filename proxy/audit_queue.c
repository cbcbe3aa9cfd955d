/* audit_queue.c: the per-worker submit queues the sink drains, and the commit marks of
 * audit.commit "durable". Part of the audit module (audit.c). */
#include "audit_internal.h"

static void queue_push(struct audit_queue *q, struct audit_node *n) {
    if (atomic_load_explicit(&q->overflow, memory_order_acquire) == NULL) {
        size_t t = atomic_load_explicit(&q->tail, memory_order_relaxed);
        size_t h = atomic_load_explicit(&q->head, memory_order_acquire);
        if (t - h < AUDIT_RING_SIZE) {
            q->slots[t & (AUDIT_RING_SIZE - 1)] = n;
            atomic_store_explicit(&q->tail, t + 1, memory_order_release);
            atomic_fetch_add_explicit(&q->submitted, 1, memory_order_relaxed);
            return;
        }
    }
    atomic_fetch_add_explicit(&q->overflowed, 1, memory_order_relaxed);
    struct audit_node *old = atomic_load_explicit(&q->overflow, memory_order_relaxed);
    do {
        n->next = old;
    } while (!atomic_compare_exchange_weak_explicit(&q->overflow, &old, n, memory_order_release,
                                                    memory_order_relaxed));
    atomic_fetch_add_explicit(&q->submitted, 1, memory_order_relaxed);
}

/* The next record of this worker, oldest first, or NULL. Consumer only. */
struct audit_node *audit_queue_pop(struct audit_queue *q) {
    struct audit_node *n = q->pending;
    if (n) {
        q->pending = n->next;
        n->next = NULL;
        atomic_fetch_add_explicit(&q->overflow_taken, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&q->taken, 1, memory_order_relaxed);
        return n;
    }
    size_t h = atomic_load_explicit(&q->head, memory_order_relaxed);
    size_t t = atomic_load_explicit(&q->tail, memory_order_acquire);
    if (h != t) {
        n = q->slots[h & (AUDIT_RING_SIZE - 1)];
        atomic_store_explicit(&q->head, h + 1, memory_order_release);
        goto taken;
    }
    struct audit_node *stack = atomic_exchange_explicit(&q->overflow, NULL, memory_order_acquire);
    if (!stack) return NULL;
    while (stack) { /* reverse: oldest first */
        struct audit_node *next = stack->next;
        stack->next = q->pending;
        q->pending = stack;
        stack = next;
    }
    n = q->pending;
    q->pending = n->next;
    n->next = NULL;
    atomic_fetch_add_explicit(&q->overflow_taken, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&q->taken, 1, memory_order_relaxed);
    return n;
taken:
    n->next = NULL;
    atomic_fetch_add_explicit(&q->taken, 1, memory_order_relaxed);
    return n;
}

/* ======================================================================================== */
/* The sink                                                                                 */
/* ======================================================================================== */
/* ---- audit.commit "durable" ---- */

/* Before a batch is handled: the highest record number of each worker in it. */
void audit_commit_note(struct audit *a, struct audit_node **batch, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (batch[i]->seq) {
            struct audit_queue *q = a->queues[batch[i]->worker];
            if (batch[i]->seq > q->batch_max) q->batch_max = batch[i]->seq;
        }
}

/* Sets worker w's durable mark to seq (when higher) and tells the worker. */
static void commit_advance(struct audit *a, unsigned w, uint64_t seq) {
    struct audit_queue *q = a->queues[w];
    if (seq <= atomic_load_explicit(&q->durable, memory_order_relaxed)) return;
    atomic_store_explicit(&q->durable, seq, memory_order_release);
    pthread_mutex_lock(&a->notify_lock);
    if (q->notify) q->notify(q->notify_arg);
    pthread_mutex_unlock(&a->notify_lock);
}

/* After a batch was handled: what went to the spool is fsynced first (group commit: one fsync
 * for the batch, and the batch is what arrived while the last one was written), then each
 * worker's mark moves to its highest record in the batch, short of any record still held (the
 * spool refused it). A worker's records are taken and settled in order, so every record up to
 * the mark is stored: in Redis (EXEC answered, and WAIT with min_replicas) or in the spool. */
void audit_commit_ack(struct audit *a) {
    audit_sync_file_sync(a, &a->segment, 1);
    if (atomic_load(&a->state) == AUDIT_MEMORY) audit_sync_file_sync(a, &a->file, 1);
    for (unsigned w = 0; w < a->n_workers; w++) {
        struct audit_queue *q = a->queues[w];
        uint64_t mark = q->batch_max;
        if (!mark) continue;
        for (struct audit_node *h = a->held; h; h = h->next)
            if (h->worker == w && h->seq && h->seq <= mark) mark = h->seq - 1;
        commit_advance(a, w, mark);
        if (mark == q->batch_max) q->batch_max = 0; /* else kept: the held ones come back */
    }
}

/* The sink stops: every record was written, spooled or printed (audit_sink_last_resort), so no
 * request waits any longer. */
void audit_commit_release_all(struct audit *a) {
    for (unsigned w = 0; w < a->n_workers; w++)
        commit_advance(a, w, atomic_load(&a->queues[w]->submitted));
}

/* Nodes go back to the worker that submitted them (a node the sink made for a replayed record
 * counts as worker 0's), so a record costs no malloc, and no free of another thread's memory,
 * once the ring holds some. */
void audit_node_release(struct audit *a, struct audit_node *n) {
    if (n->worker < a->n_workers) {
        struct audit_queue *q = a->queues[n->worker];
        size_t t = atomic_load_explicit(&q->free_tail, memory_order_relaxed);
        size_t h = atomic_load_explicit(&q->free_head, memory_order_acquire);
        if (t - h < AUDIT_FREE_RING) {
            q->free_slots[t & (AUDIT_FREE_RING - 1)] = n;
            atomic_store_explicit(&q->free_tail, t + 1, memory_order_release);
            return;
        }
    }
    free(n);
}

void audit_queue_free_nodes(struct audit_queue *q) {
    size_t h = atomic_load_explicit(&q->free_head, memory_order_relaxed);
    size_t t = atomic_load_explicit(&q->free_tail, memory_order_acquire);
    for (; h != t; h++) free(q->free_slots[h & (AUDIT_FREE_RING - 1)]);
    atomic_store_explicit(&q->free_head, h, memory_order_release);
}

/* A node for worker's next record: one the sink gave back, or a new one. */
static struct audit_node *node_take(struct audit_queue *q) {
    size_t h = atomic_load_explicit(&q->free_head, memory_order_relaxed);
    size_t t = atomic_load_explicit(&q->free_tail, memory_order_acquire);
    if (h == t) return malloc(sizeof(struct audit_node));
    struct audit_node *n = q->free_slots[h & (AUDIT_FREE_RING - 1)];
    atomic_store_explicit(&q->free_head, h + 1, memory_order_release);
    return n;
}

int audit_submit(struct audit *a, unsigned worker, const struct audit_record *r) {
    if (!a || worker >= a->n_workers) return -1;
    struct audit_node *n = node_take(a->queues[worker]);
    if (!n) return -1;
    n->next = NULL;
    n->uncertain = 0;
    n->batch[0] = '\0';
    n->worker = worker;
    /* the producer alone moves submitted: this record's number is the next one */
    n->seq = atomic_load_explicit(&a->queues[worker]->submitted, memory_order_relaxed) + 1;
    n->rec = *r;
    queue_push(a->queues[worker], n);
    audit_sink_nudge(a);
    return 0;
}

int audit_commit_durable(const struct audit *a) {
    return a && a->cfg->audit.commit_durable;
}

uint64_t audit_last_seq(struct audit *a, unsigned worker) {
    if (!a || worker >= a->n_workers) return 0;
    return atomic_load_explicit(&a->queues[worker]->submitted, memory_order_relaxed);
}

uint64_t audit_durable_seq(struct audit *a, unsigned worker) {
    if (!a || worker >= a->n_workers) return UINT64_MAX;
    return atomic_load_explicit(&a->queues[worker]->durable, memory_order_acquire);
}

void audit_on_durable(struct audit *a, unsigned worker, void (*fn)(void *arg), void *arg) {
    if (!a || worker >= a->n_workers) return;
    pthread_mutex_lock(&a->notify_lock);
    a->queues[worker]->notify = fn;
    a->queues[worker]->notify_arg = arg;
    pthread_mutex_unlock(&a->notify_lock);
}
