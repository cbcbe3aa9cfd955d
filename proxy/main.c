/* main.c: capgate, the gateway in front of the captcha API 2.0: command line, config check,
 * then the gateway until SIGTERM/SIGINT. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <event2/thread.h>

#include "capgate/log.h"
#include "capgate/secmem.h"
#include "capgate/tls.h"
#include "capgate/version.h"
#include "cli.h"
#include "config.h"
#include "gateway.h"

static void usage(FILE *out) {
    fprintf(
        out,
        "usage: capgate --config FILE        run the gateway\n"
        "       capgate --check-config FILE  validate FILE and print the effective config\n"
        "                                    (secrets masked; relative paths resolved under\n"
        "                                    FILE's directory); also checks that the spool\n"
        "                                    directory and audit file can be written and the\n"
        "                                    certificates read; exit 0 when valid, 1 if not\n"
        "         --format json              with --check-config: print it as a config that\n"
        "                                    loads again (a secret under the *_env/*_file key\n"
        "                                    it came from; one written in the file as \"***\",\n"
        "                                    listed in \"_masked\", to be given again);\n"
        "                                    --format text (default): as /admin/config shows it\n"
        "       capgate stats|audit|top|health [options]\n"
        "                                    read a running gateway's admin API (capgate\n"
        "                                    stats --help lists the options)\n"
        "       capgate --version            print the version\n"
        "       capgate --help               this text\n"
        "Option: --allow-core-dump  keep the process dumpable (by default it is not: no\n"
        "        core file, RLIMIT_CORE 0, no ptrace by other processes of the user), for\n"
        "        debugging; a core file then holds the secrets of the config.\n"
        "Signals: SIGTERM/SIGINT drain in-flight requests then exit; SIGHUP reloads the\n"
        "same file and applies apps, limits, captcha_apps, auth, on_store_error,\n"
        "http_errors, pool, idempotency, trusted_proxies, demo, demo_app,\n"
        "demo_tcaptcha_url, demo_captcha_app_id, log_level and the redis connection\n"
        "settings (Redis connections made again), and loads the tls certificate and key\n"
        "again (a file that does not load refuses the reload); listen, tls_listen,\n"
        "admin_listen, admin, workers, upstream, http, redis.key_prefix (and adding or\n"
        "removing redis), audit, instance, metrics and log_format need a restart. SIGUSR1\n"
        "reopens the audit file (audit.file, or <spool_dir>/audit.jsonl without redis)\n"
        "after a log rotation; SIGHUP reopens it too.\n");
}

static void print_warning(const char *msg, void *arg) {
    log_warn("config: %s", msg);
}

/* The directory part of path into buf ("." when it has none). */
static void dir_of(const char *path, char *buf, size_t len) {
    const char *slash = strrchr(path, '/');
    if (!slash)
        snprintf(buf, len, ".");
    else if (slash == path)
        snprintf(buf, len, "/");
    else
        snprintf(buf, len, "%.*s", (int)(slash - path), path); /* cut at len - 1 */
}

/* The spool directory is made at start (mkdir -p): it must exist writable, or its nearest
 * existing ancestor must be. */
static int check_spool_dir(const char *dir, char *err, size_t errlen) {
    char p[4096];
    struct stat st;
    snprintf(p, sizeof p, "%.4000s", dir);
    for (;;) {
        if (stat(p, &st) == 0) {
            if (!S_ISDIR(st.st_mode)) {
                snprintf(err, errlen, "audit.spool_dir: %.400s is not a directory", p);
                return -1;
            }
            if (access(p, W_OK | X_OK) != 0) {
                snprintf(err, errlen, "audit.spool_dir: %.400s%s is not writable: %s", p,
                         strcmp(p, dir) == 0 ? "" : " (where it would be created)",
                         strerror(errno));
                return -1;
            }
            return 0;
        }
        if (errno != ENOENT || strcmp(p, "/") == 0 || strcmp(p, ".") == 0) {
            snprintf(err, errlen, "audit.spool_dir: %.400s: %s", p, strerror(errno));
            return -1;
        }
        char up[4096];
        dir_of(p, up, sizeof up);
        memcpy(p, up, sizeof p);
    }
}

/* The audit file is opened O_APPEND|O_CREAT at start: it must be writable, or its directory
 * must exist writable. */
static int check_audit_file(const char *file, char *err, size_t errlen) {
    char dir[4096];
    if (access(file, F_OK) == 0) {
        if (access(file, W_OK) == 0) return 0;
        snprintf(err, errlen, "audit.file: %.400s is not writable: %s", file, strerror(errno));
        return -1;
    }
    dir_of(file, dir, sizeof dir);
    if (access(dir, W_OK | X_OK) == 0) return 0;
    snprintf(err, errlen, "audit.file: cannot create %.400s: directory %.400s: %s", file, dir,
             strerror(errno));
    return -1;
}

/* What start-up opens besides the files config_load already read (certificates, secrets): so a
 * config that passes --check-config starts, as far as the file system goes. */
static int check_paths(const struct config *c, char *err, size_t errlen) {
    if (c->upstream.ca_file && access(c->upstream.ca_file, R_OK) != 0) {
        snprintf(err, errlen, "upstream.ca_file: cannot read %.400s: %s", c->upstream.ca_file,
                 strerror(errno));
        return -1;
    }
    if (c->audit.spool_dir && check_spool_dir(c->audit.spool_dir, err, errlen) != 0) return -1;
    if (c->audit.file && check_audit_file(c->audit.file, err, errlen) != 0) return -1;
    return 0;
}

int main(int argc, char **argv) {
    const char *config_path = NULL, *check_path = NULL, *format = NULL;
    struct config *c = NULL;
    struct gateway *g = NULL;
    char err[1024];
    int rc = 1, allow_core_dump = 0;

    log_init("capgate", LOG_LEVEL_INFO);
    /* The operator's subcommands come first: they are clients of a running gateway and take
     * none of the server's flags. */
    if (argc > 1 && cli_is_subcommand(argv[1])) return cli_main(argc - 1, argv + 1);
    for (int i = 1; i < argc; i++) {
        int missing = 0;
        const char *v;
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(argv[i], "--version") == 0) {
            printf("capgate %s\n", version_string());
            return 0;
        } else if ((v = cli_flag_value(argc, argv, &i, "--config", &missing))) {
            config_path = v;
        } else if ((v = cli_flag_value(argc, argv, &i, "--check-config", &missing))) {
            check_path = v;
        } else if ((v = cli_flag_value(argc, argv, &i, "--format", &missing))) {
            format = v;
        } else if (strcmp(argv[i], "--allow-core-dump") == 0) {
            allow_core_dump = 1;
        } else {
            if (missing)
                fprintf(stderr, "capgate: %s needs %s\n", argv[i],
                        strcmp(argv[i], "--format") == 0 ? "text or json" : "a FILE");
            else
                fprintf(stderr, "capgate: unknown argument %s\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }

    if (format && strcmp(format, "text") != 0 && strcmp(format, "json") != 0) {
        fprintf(stderr, "capgate: --format must be text or json; got %.100s\n", format);
        return 2;
    }
    if (format && !check_path) {
        fprintf(stderr, "capgate: --format goes with --check-config\n");
        usage(stderr);
        return 2;
    }
    int as_json = format && strcmp(format, "json") == 0;

    /* Before any secret is read: the config's secrets (and the environment they came from) must
     * not reach a core file or a debugger of another process. */
    if (allow_core_dump) {
        log_warn("--allow-core-dump: the process stays dumpable; a core file holds the secrets");
    } else if (secmem_no_dumps() != 0) {
        log_warn("cannot make the process non-dumpable: %s", strerror(errno));
    }

    if (check_path) {
        if (config_load(check_path, &c, err, sizeof(err)) != 0) {
            fprintf(stderr, "capgate: %s\n", err);
            return 1;
        }
        if (check_paths(c, err, sizeof(err)) != 0) {
            fprintf(stderr, "capgate: %s: %s\n", check_path, err);
            config_free(c);
            return 1;
        }
        config_warnings(c, print_warning, NULL);
        char *dump = as_json ? config_dump_json(c) : config_dump_masked(c);
        if (dump) {
            printf("%s\n", dump);
            rc = 0;
        } else {
            fprintf(stderr, "capgate: out of memory\n");
        }
        free(dump);
        config_free(c);
        return rc;
    }
    if (!config_path) {
        fprintf(stderr, "capgate: --config FILE is required\n");
        usage(stderr);
        return 2;
    }

    if (config_load(config_path, &c, err, sizeof(err)) != 0) {
        fprintf(stderr, "capgate: %s\n", err);
        return 1;
    }
    enum log_level level;
    if (c->log_level && log_level_parse(c->log_level, &level) == 0) log_init("capgate", level);
    log_set_json(c->log_json);

    signal(SIGPIPE, SIG_IGN);
    tls_global_init();
    if (evthread_use_pthreads() != 0) {
        fprintf(stderr, "capgate: libevent threading is not available\n");
        config_free(c);
        return 1;
    }
    g = gateway_new(config_path, c, err, sizeof(err));
    if (!g) {
        fprintf(stderr, "capgate: %s\n", err);
        return 1;
    }
    rc = gateway_run(g) == 0 ? 0 : 1;
    gateway_free(g);
    return rc;
}
