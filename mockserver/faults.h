/* faults.h: the mock's fault rules (docs/design.md "capgate-mock"): parsing and strict validation
 * of the JSON rules, and the matcher that picks the effect for one API call. Rules match in order,
 * the first that fires wins; probability and times limit a rule. No I/O: the caller applies the
 * effect. */
#ifndef CAPGATE_FAULTS_H
#define CAPGATE_FAULTS_H
#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

enum fault_network {
    FAULT_NET_NONE = 0,
    FAULT_NET_RESET,          /* close with a TCP RST */
    FAULT_NET_CLOSE,          /* close cleanly without answering */
    FAULT_NET_STALL,          /* never answer */
    FAULT_NET_MALFORMED_JSON, /* HTTP 200 with a broken JSON body */
    FAULT_NET_HTTP_500        /* HTTP 500 with a body */
};

#define FAULTS_MAX_RULES 1000
#define FAULTS_MAX_DELAY_MS 600000u

struct fault_rule {
    char *action;    /* NULL: any */
    char *secret_id; /* NULL: any */
    int code;        /* 0: none; else a known non-zero API error code */
    uint32_t delay_ms;
    enum fault_network network;
    double probability; /* 0..1 */
    int64_t times;      /* fires left; -1: unlimited */
    uint64_t fired;
};

/* What one call gets. An effect with code 0, delay 0 and no network is "no fault". */
struct fault_effect {
    int code;
    uint32_t delay_ms;
    enum fault_network network;
};

struct faults {
    struct fault_rule *rules;
    size_t count;
    size_t cap;
};

void faults_init(struct faults *f);
void faults_cleanup(struct faults *f);
void faults_clear(struct faults *f);
/* Appends the rules in v (one object or an array of objects), all or nothing. Unknown keys,
 * wrong types and out-of-range values are errors naming the field ("faults[1].probability must
 * be a number from 0 to 1"). 0, or -1 with err set. */
int faults_add_json(struct faults *f, const json_t *v, char *err, size_t errlen);
/* A draw in [0, 1) for probability checks. */
typedef double (*faults_draw_fn)(void *arg);
/* Finds the first rule that matches action/secret_id (NULL matches only "any" rules) and fires
 * (a draw below probability; probability 1 fires without a draw, 0 never). A fired rule's
 * times counts down; at 0 the rule is removed. Returns 1 and fills out, or 0. */
int faults_match(struct faults *f, const char *action, const char *secret_id, faults_draw_fn draw,
                 void *draw_arg, struct fault_effect *out);
/* New reference: the rules as a JSON array (with "times" left and "fired"). NULL on OOM. */
json_t *faults_to_json(const struct faults *f);
const char *faults_network_name(enum fault_network n); /* "reset", ..., NULL for none */
/* A short description for the journal: "code 6000", "delay_ms 200, reset", ... */
void faults_describe(const struct fault_effect *e, char *buf, size_t len);

#endif
