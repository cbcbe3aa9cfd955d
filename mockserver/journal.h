/* journal.h: the mock's bounded record of the API calls it received (GET /__admin/requests):
 * time, method, Action, SecretId, signature verdict, code returned or fault applied, and the
 * parameters without Signature. A ring: when full, the oldest entry is overwritten. No I/O. */
#ifndef CAPGATE_JOURNAL_H
#define CAPGATE_JOURNAL_H
#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

struct params;

#define JOURNAL_DEFAULT_CAPACITY 10000

enum journal_verdict { JOURNAL_UNCHECKED, JOURNAL_SIG_OK, JOURNAL_SIG_BAD };

struct journal;

/* capacity > 0. NULL on OOM. */
struct journal *journal_new(size_t capacity);
void journal_free(struct journal *j); /* accepts NULL */
/* Appends one entry; every string is copied (NULL allowed for action, secret_id, fault; method
 * NULL is ""). params may be NULL; its Signature is never stored. code is the code answered
 * (-1 when no JSON answer was given, e.g. a network fault). 0, or -1 on OOM (nothing stored). */
int journal_add(struct journal *j, uint64_t time_us, const char *method, const char *action,
                const char *secret_id, enum journal_verdict verdict, int code, const char *fault,
                const struct params *params);
void journal_clear(struct journal *j);
size_t journal_count(const struct journal *j);   /* entries held */
uint64_t journal_total(const struct journal *j); /* entries ever added since the last clear */
const char *journal_verdict_name(enum journal_verdict v); /* "unchecked" "ok" "bad" */
/* New reference: {"total": N, "count": n, "requests": [...]} oldest first. With action non-NULL
 * only entries of that Action; with limit > 0 only the limit most recent matching ones (still
 * oldest first). Each entry: {"seq","time","time_us","method","action","secret_id","signature",
 * "code","fault","params":{name: value}}. NULL on OOM. */
json_t *journal_to_json(const struct journal *j, size_t limit, const char *action);

#endif
