/* shared_config.h: a loaded config shared by the gateway, its workers and their in-flight
 * requests, by reference count: a reload swaps a worker's pointer for new requests while
 * requests in flight (and the pool refiller's round) keep the old one alive. */
#ifndef CAPGATE_SHARED_CONFIG_H
#define CAPGATE_SHARED_CONFIG_H
#include <stdatomic.h>

struct config;

struct shared_config {
    atomic_uint refs;
    struct config *config; /* owned */
};
/* Takes ownership of c; one reference. NULL on OOM (c is then freed). */
struct shared_config *shared_config_new(struct config *c);
struct shared_config *shared_config_ref(struct shared_config *pc);
/* Drops a reference; the last one frees the config. NULL accepted. Any thread. */
void shared_config_unref(struct shared_config *pc);

#endif
