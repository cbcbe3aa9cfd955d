/* main.c: capgate-mock, an offline emulator of Tencent Cloud's captcha API 2.0. Reads its
 * settings (config file < environment < flags), opens the listeners, prints where it listens,
 * and serves until SIGTERM/SIGINT. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <errno.h>
#include <string.h>

#include <event2/event.h>

#include "capgate/log.h"
#include "capgate/sdnotify.h"
#include "capgate/tls.h"
#include "capgate/version.h"
#include "mock.h"
#include "mockopts.h"

static const char *env_get(const char *name) {
    return getenv(name);
}

/* The whole file as a NUL-terminated string; caller frees. NULL with err set. */
static char *read_text(const char *path, char *err, size_t errlen) {
    char *buf = NULL;
    size_t len = 0, cap = 0;
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "%s: cannot open: %m", path);
        return NULL;
    }
    for (;;) {
        if (cap - len < 4096) {
            size_t ncap = cap ? cap * 2 : 8192;
            char *n = ncap <= (16u << 20) ? realloc(buf, ncap) : NULL;
            if (!n) {
                snprintf(err, errlen, "%s: too large or out of memory", path);
                goto fail;
            }
            buf = n;
            cap = ncap;
        }
        size_t r = fread(buf + len, 1, cap - len - 1, f);
        len += r;
        if (r == 0) break;
    }
    if (ferror(f)) {
        snprintf(err, errlen, "%s: read error", path);
        goto fail;
    }
    fclose(f);
    buf[len] = '\0';
    return buf;
fail:
    fclose(f);
    free(buf);
    return NULL;
}

/* Fills o from the config file, the environment and argv. 0, or -1 with err set. */
static int load_options(struct mock_opts *o, int argc, char **argv, char *err, size_t errlen) {
    const char *config = mockopts_config_path(argc, argv, env_get);
    if (config) {
        json_error_t jerr;
        json_t *root = json_load_file(config, JSON_REJECT_DUPLICATES, &jerr);
        if (!root) {
            snprintf(err, errlen, "%s:%d:%d: %s", config, jerr.line, jerr.column, jerr.text);
            return -1;
        }
        char inner[512];
        int rc = mockopts_apply_json(o, root, inner, sizeof(inner));
        json_decref(root);
        if (rc != 0) {
            snprintf(err, errlen, "%s: %s", config, inner);
            return -1;
        }
    }
    if (mockopts_apply_env(o, env_get, err, errlen) != 0) return -1;
    if (mockopts_apply_args(o, argc, argv, err, errlen) != 0) return -1;
    if (o->show_help || o->show_version) return 0;
    if (o->credentials_file) {
        char *text = read_text(o->credentials_file, err, errlen);
        if (!text) return -1;
        int rc = mockopts_add_credentials_text(o, text, o->credentials_file, err, errlen);
        free(text);
        if (rc != 0) return -1;
    }
    return mockopts_finish(o, err, errlen);
}

static void on_signal(evutil_socket_t sig, short what, void *arg) {
    log_info("signal %d: shutting down", (int)sig);
    event_base_loopbreak(arg);
}

int main(int argc, char **argv) {
    int rc = 1;
    struct mock_opts opts;
    struct event_base *base = NULL;
    struct event *sigterm = NULL, *sigint = NULL;
    struct mock *m = NULL;
    char err[1024];

    log_init("capgate-mock", LOG_LEVEL_INFO);
    mockopts_init(&opts);
    if (load_options(&opts, argc, argv, err, sizeof(err)) != 0) {
        fprintf(stderr, "capgate-mock: %s\n", err);
        rc = 2;
        goto out;
    }
    if (opts.show_help) {
        fputs(mockopts_usage(), stdout);
        rc = 0;
        goto out;
    }
    if (opts.show_version) {
        printf("capgate-mock %s\n", version_string());
        rc = 0;
        goto out;
    }
    enum log_level level = LOG_LEVEL_INFO;
    log_level_parse(opts.log_level, &level);
    log_init("capgate-mock", level);
    if (opts.default_credential)
        log_warn("no credential given: accepting the documented test pair SecretId %s, "
                 "SecretKey %s",
                 MOCKOPTS_DEFAULT_SECRET_ID, MOCKOPTS_DEFAULT_SECRET_KEY);

    signal(SIGPIPE, SIG_IGN);
    tls_global_init();
    base = event_base_new();
    if (!base) {
        fprintf(stderr, "capgate-mock: cannot create the event loop\n");
        goto out;
    }
    m = mock_new(base, &opts, err, sizeof(err));
    if (!m) {
        fprintf(stderr, "capgate-mock: %s\n", err);
        goto out;
    }
    sigterm = evsignal_new(base, SIGTERM, on_signal, base);
    sigint = evsignal_new(base, SIGINT, on_signal, base);
    if (!sigterm || !sigint || evsignal_add(sigterm, NULL) != 0 ||
        evsignal_add(sigint, NULL) != 0) {
        fprintf(stderr, "capgate-mock: cannot install signal handlers\n");
        goto out;
    }
    printf("capgate-mock listening on %s\n", m->http_base);
    fflush(stdout);
    if (m->https_base[0]) {
        printf("capgate-mock listening on %s\n", m->https_base);
        fflush(stdout);
    }
    if (sd_notify_state("READY=1") < 0)
        log_warn("cannot notify $NOTIFY_SOCKET: %s", strerror(errno));
    log_info("%zu credential(s), timestamp window %u s%s%s", opts.ncreds, opts.timestamp_window,
             opts.has_seed ? ", seeded" : "", opts.https_only ? ", HTTPS only" : "");
    if (event_base_dispatch(base) < 0) {
        log_error("event loop failed");
        goto out;
    }
    rc = 0;
out:
    mock_free(m);
    if (sigterm) event_free(sigterm);
    if (sigint) event_free(sigint);
    if (base) event_base_free(base);
    mockopts_cleanup(&opts);
    return rc;
}
