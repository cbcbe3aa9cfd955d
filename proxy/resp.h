/* resp.h: Redis commands in the wire protocol (RESP), formatted here instead of by hiredis.
 * hiredis's redisFormatSdsCommandArgv formats each argument's length with sdscatfmt; for the
 * audit stream's XADD (about 50 arguments) and the limit script's EVALSHA that was about 7% of
 * the gateway's CPU with Redis on. The result goes to hiredis whole, with
 * redisAsyncFormattedCommand or redisAppendFormattedCommand. */
#ifndef CAPGATE_RESP_H
#define CAPGATE_RESP_H
#include <stddef.h>

#include "capgate/strbuf.h"

/* Appends "*<argc>\r\n" and, for each argument, "$<len>\r\n<bytes>\r\n" to out. len may be NULL
 * for NUL-terminated arguments. 0, or -1 on OOM or a negative argc (out is then unchanged). */
int resp_append_command(struct strbuf *out, int argc, const char *const *argv, const size_t *len);

#endif
