/* cli.h: the operator's subcommands of the capgate binary (capgate stats, audit, top, health).
 * They talk to a running gateway's admin API over HTTP (libevent's evhttp client, one request at
 * a time on a loop of their own: this is not the server, so blocking is fine) and print aligned
 * tables, or the API's JSON with --json. The admin URL comes from --admin or CAPGATE_ADMIN_URL
 * (default http://127.0.0.1:8081, the default admin_listen), the bearer token from --token-file
 * or CAPGATE_ADMIN_TOKEN. main.c dispatches to them before it parses the server's flags. */
#ifndef CAPGATE_CLI_H
#define CAPGATE_CLI_H
#include <stddef.h>
#include <stdint.h>

/* 1 when name is one of the subcommands (stats, audit, top, health). */
int cli_is_subcommand(const char *name);
/* Runs the subcommand argv[0] with its options argv[1..argc-1]. The exit status: 0 done (health:
 * the gateway is ready), 1 the gateway could not be reached or answered an error (health: not
 * ready), 2 a bad command line. */
int cli_main(int argc, char **argv);

/* --name VALUE or --name=VALUE at argv[*i] (then *i moves past the value): the value, or NULL
 * when argv[*i] is not --name, with *missing set when the value is not there. The server's flags
 * (main.c) and the subcommands' are read with it. */
const char *cli_flag_value(int argc, char **argv, int *i, const char *name, int *missing);

/* ---- pure parts, exported for tests ---- */

/* A duration as the options take it: digits with an optional unit s, m, h or d ("90", "90s",
 * "15m", "1h", "2d"), in seconds, 1..10 years. 0, or -1. */
int cli_parse_duration(const char *s, uint64_t *seconds);
/* The latency, in microseconds, below which a share q (0..1) of the requests of a cell's
 * non-cumulative buckets fell (the bucket's upper bound; UINT64_MAX for le_inf, 0 when there are
 * no requests). buckets has 9 entries: le_1ms .. le_inf. */
uint64_t cli_bucket_quantile(const uint64_t *buckets, double q);

#endif
