/* shared_config.c: the reference count of a loaded config (shared_config.h). */
#include "shared_config.h"

#include <stdlib.h>

#include "config.h"

struct shared_config *shared_config_new(struct config *c) {
    struct shared_config *pc = malloc(sizeof(*pc));
    if (!pc) {
        config_free(c);
        return NULL;
    }
    atomic_init(&pc->refs, 1);
    pc->config = c;
    return pc;
}

struct shared_config *shared_config_ref(struct shared_config *pc) {
    atomic_fetch_add_explicit(&pc->refs, 1, memory_order_relaxed);
    return pc;
}

void shared_config_unref(struct shared_config *pc) {
    if (!pc) return;
    if (atomic_fetch_sub_explicit(&pc->refs, 1, memory_order_acq_rel) != 1) return;
    config_free(pc->config);
    free(pc);
}
