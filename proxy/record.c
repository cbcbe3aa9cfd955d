/* record.c: the decision names (record.h). */
#include "record.h"

static const char *const decision_names[PIPELINE_DECISION_COUNT] = {
    [PIPELINE_FORWARDED] = "forwarded",
    [PIPELINE_POOL] = "pool",
    [PIPELINE_REPLAYED] = "replayed",
    [PIPELINE_LIMITED] = "limited",
    [PIPELINE_SHADOW_LIMITED] = "shadow_limited",
    [PIPELINE_INVALID] = "invalid",
    [PIPELINE_UNAUTHORIZED] = "unauthorized",
    [PIPELINE_DENIED] = "denied",
    [PIPELINE_UPSTREAM_ERROR] = "upstream_error",
};

const char *pipeline_decision_name(enum pipeline_decision d) {
    return (unsigned)d < PIPELINE_DECISION_COUNT ? decision_names[d] : "unknown";
}
