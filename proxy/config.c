/* config.c: loads the gateway's JSON configuration into struct config. Each object is parsed by
 * one table of fields (key, kind, offset, bounds); sections with cross-field rules get a check
 * after their table ran. jansson keeps no positions of nodes, so an error's line and column come
 * from a small scanner that walks the source text along the key path of the offending node.
 *
 * The same tables drive the masked dump (--check-config) and the reload diff (SIGHUP's log). A
 * new key of a plain kind needs nothing more; an FK_CUSTOM one needs, for a leaf, .dump/.same
 * hooks (or .view and .off), and for a section or a list of objects .shape and .sub (SECTION,
 * LIST). A new top-level key says whether SIGHUP applies it (F_RELOAD); the README's table of
 * what SIGHUP applies and test_config's test_reload_keys_match_readme list it. test_config
 * changes every key of config/capgate.example.json and fails on one the dump or the diff
 * misses. */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "capgate/net.h"
#include "capgate/num.h"
#include "capgate/tls.h"
#include "capgate/secmem.h"

#define MAX_DEPTH 8
#define MAX_FILE_BYTES (4u << 20)
#define MAX_SECRET_FILE_BYTES 65536
#define NO_FLAG ((size_t)-1)
#define PII_KEY_BYTES 32

/* ---- key paths and positions ------------------------------------------------------------- */

struct seg {
    const char *key; /* NULL: an array index */
    size_t index;
};

struct ctx {
    const char *text;
    const char *name;
    const char *base_dir; /* the config file's directory: relative paths are under it (NULL:
                           * config_load_string, paths stay as written) */
    struct seg path[MAX_DEPTH];
    size_t depth;
    char *err;
    size_t errlen;
    struct config *root; /* the config being loaded: its secret_src list */
};

struct scan {
    const char *s;
    size_t i;
};

static void scan_ws(struct scan *sc) {
    while (sc->s[sc->i] == ' ' || sc->s[sc->i] == '\t' || sc->s[sc->i] == '\n' ||
           sc->s[sc->i] == '\r')
        sc->i++;
}

static void scan_string(struct scan *sc) {
    sc->i++; /* opening quote */
    while (sc->s[sc->i] && sc->s[sc->i] != '"') {
        if (sc->s[sc->i] == '\\' && sc->s[sc->i + 1]) sc->i++;
        sc->i++;
    }
    if (sc->s[sc->i] == '"') sc->i++;
}

/* Skips one value; the text already passed jansson, so it is well formed. */
static void scan_value(struct scan *sc) {
    char c = sc->s[sc->i];
    if (c == '"') {
        scan_string(sc);
    } else if (c == '{' || c == '[') {
        int level = 0;
        do {
            c = sc->s[sc->i];
            if (c == '"') {
                scan_string(sc);
                continue;
            }
            if (c == '{' || c == '[')
                level++;
            else if (c == '}' || c == ']')
                level--;
            sc->i++;
        } while (level > 0 && sc->s[sc->i]);
    } else {
        while (sc->s[sc->i] && !strchr(",]} \t\r\n", sc->s[sc->i])) sc->i++;
    }
}

/* Does the string token at [start, end) decode to key? jansson decodes it, escapes and all. */
static int scan_key_is(const char *start, size_t len, const char *key) {
    json_t *s = json_loadb(start, len, JSON_DECODE_ANY, NULL);
    int same = s && json_is_string(s) && strcmp(json_string_value(s), key) == 0;
    json_decref(s);
    return same;
}

/* At the value for path[0..depth): finds where path[0..n) starts: the key of an object member,
 * or the value of an array element. Returns 1 and sets *pos, or 0. */
static int scan_find(struct scan *sc, const struct seg *path, size_t n, size_t depth, size_t *pos) {
    scan_ws(sc);
    if (depth == n) {
        *pos = sc->i;
        return 1;
    }
    if (sc->s[sc->i] == '{' && path[depth].key) {
        sc->i++;
        for (;;) {
            scan_ws(sc);
            if (sc->s[sc->i] != '"') return 0;
            size_t key_start = sc->i;
            scan_string(sc);
            int match = scan_key_is(sc->s + key_start, sc->i - key_start, path[depth].key);
            scan_ws(sc);
            if (sc->s[sc->i] != ':') return 0;
            sc->i++;
            if (match) {
                if (depth + 1 == n) {
                    *pos = key_start;
                    return 1;
                }
                return scan_find(sc, path, n, depth + 1, pos);
            }
            scan_ws(sc);
            scan_value(sc);
            scan_ws(sc);
            if (sc->s[sc->i] != ',') return 0;
            sc->i++;
        }
    }
    if (sc->s[sc->i] == '[' && !path[depth].key) {
        sc->i++;
        for (size_t idx = 0;; idx++) {
            scan_ws(sc);
            if (sc->s[sc->i] == ']' || !sc->s[sc->i]) return 0;
            if (idx == path[depth].index) return scan_find(sc, path, n, depth + 1, pos);
            scan_value(sc);
            scan_ws(sc);
            if (sc->s[sc->i] != ',') return 0;
            sc->i++;
        }
    }
    return 0;
}

/* Line and column (both from 1, columns in characters) of the node at path[0..n). */
static void locate(const char *text, const struct seg *path, size_t n, int *line, int *col) {
    struct scan sc = {text, 0};
    size_t pos = 0;
    if (!scan_find(&sc, path, n, 0, &pos)) pos = 0;
    *line = 1;
    *col = 1;
    for (size_t i = 0; i < pos && text[i]; i++) {
        unsigned char ch = (unsigned char)text[i];
        if (ch == '\n') {
            (*line)++;
            *col = 1;
        } else if ((ch & 0xC0) != 0x80) {
            (*col)++;
        }
    }
}

static void path_format(const struct seg *path, size_t n, char *buf, size_t len) {
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < n && used < len; i++) {
        int w;
        if (path[i].key) {
            /* a key is shown as written, but a control byte in it as \xNN: a message carries
             * none from the file */
            w = snprintf(buf + used, len - used, "%s", i ? "." : "");
            for (const char *k = path[i].key; *k && w >= 0 && used + (size_t)w < len; k++) {
                unsigned char ch = (unsigned char)*k;
                int m = ch < 0x20 || ch == 0x7f
                            ? snprintf(buf + used + w, len - used - w, "\\x%02X", ch)
                            : snprintf(buf + used + w, len - used - w, "%c", ch);
                if (m < 0)
                    w = -1;
                else
                    w += m;
            }
        } else
            w = snprintf(buf + used, len - used, "[%zu]", path[i].index);
        if (w < 0) break;
        used += (size_t)w;
    }
}

/* Formats "name:line:col: path: message" for the node at the current path. Returns -1. */
static int fail(struct ctx *x, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(struct ctx *x, const char *fmt, ...) {
    char msg[512], where[256];
    int line, col;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    locate(x->text, x->path, x->depth, &line, &col);
    path_format(x->path, x->depth, where, sizeof where);
    if (x->errlen)
        snprintf(x->err, x->errlen, "%s:%d:%d: %s%s%s", x->name, line, col, where,
                 where[0] ? ": " : "", msg);
    return -1;
}

static void push_key(struct ctx *x, const char *key) {
    if (x->depth < MAX_DEPTH) x->path[x->depth] = (struct seg){key, 0};
    x->depth++;
}

static void push_index(struct ctx *x, size_t index) {
    if (x->depth < MAX_DEPTH) x->path[x->depth] = (struct seg){NULL, index};
    x->depth++;
}

static void pop(struct ctx *x) {
    x->depth--;
}

/* A short picture of a JSON value for "got ..." in messages. */
static void describe(const json_t *v, char *buf, size_t len) {
    if (json_is_object(v)) {
        snprintf(buf, len, "an object");
    } else if (json_is_array(v)) {
        snprintf(buf, len, "an array");
    } else {
        char *s = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT), shown[80];
        size_t n = 0;
        /* JSON leaves DEL as it is; a message carries no control byte (found by fuzz_config) */
        for (const char *p = s ? s : "?"; *p && n + 7 < sizeof shown; p++) {
            if (*p == 0x7f) {
                memcpy(shown + n, "\\u007f", 6);
                n += 6;
            } else {
                shown[n++] = *p;
            }
        }
        shown[n] = '\0';
        if (n > 60)
            snprintf(buf, len, "%.57s...", shown);
        else
            snprintf(buf, len, "%s", shown);
        free(s);
    }
}

/* s for a message, a control byte in it as \xNN (a variable's or a file's name). */
static void shown_plain(const char *s, char *buf, size_t len) {
    size_t n = 0;
    for (; *s && n + 5 < len; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch < 0x20 || ch == 0x7f)
            n += (size_t)snprintf(buf + n, len - n, "\\x%02X", ch);
        else
            buf[n++] = (char)ch;
    }
    buf[n] = '\0';
}

/* The type of a JSON value, for a message about a secret of the wrong type: its value is not
 * shown. */
static const char *json_kind(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return json_string_length(v) ? "a string" : "an empty string";
    case JSON_INTEGER: return "an integer (not shown: a secret)";
    case JSON_REAL: return "a number (not shown: a secret)";
    case JSON_TRUE: return "true";
    case JSON_FALSE: return "false";
    case JSON_NULL: return "null";
    }
    return "?";
}

/* A url for a message, with anything between "://" and an '@' (user and password) as "***". */
static void url_masked(const char *url, char *buf, size_t len) {
    const char *scheme = strstr(url, "://");
    const char *auth = scheme ? scheme + 3 : url;
    const char *at = strrchr(auth, '@');
    char picture[80];
    if (at)
        snprintf(buf, len, "%.*s***%s", (int)(auth - url), url, at);
    else
        snprintf(buf, len, "%s", url);
    /* and as JSON would show it: no control byte reaches a message */
    json_t *s = json_stringn_nocheck(buf, strlen(buf));
    if (s) {
        describe(s, picture, sizeof picture);
        snprintf(buf, len, "%s", picture);
        json_decref(s);
    }
}

/* ---- small helpers ----------------------------------------------------------------------- */

/* A heap buffer that held a secret on its way (a secret file's text): wiped, then freed. The
 * secrets a config keeps live in secmem (capgate/secmem.h). */
static void wipe_free(char *s, size_t len) {
    if (!s) return;
    OPENSSL_cleanse(s, len);
    free(s);
}

static int set_str(char **dst, const char *src) {
    char *copy = NULL;
    if (src && !(copy = strdup(src))) return -1;
    free(*dst);
    *dst = copy;
    return 0;
}

/* p as the process must open it: a relative path is under the config file's directory, so
 * capgate finds the same files whatever directory it starts in. malloc'd; NULL on OOM. */
static char *path_under(const struct ctx *x, const char *p) {
    if (!x->base_dir || p[0] == '/') return strdup(p);
    size_t n = strlen(x->base_dir) + 1 + strlen(p) + 1;
    char *out = malloc(n);
    if (out) snprintf(out, n, "%s/%s", x->base_dir, p);
    return out;
}

/* Rewrites *p (when set) with path_under. */
static int resolve_path(const struct ctx *x, char **p) {
    if (!*p) return 0;
    char *r = path_under(x, *p);
    if (!r) return -1;
    free(*p);
    *p = r;
    return 0;
}

static int oom(struct ctx *x) {
    return fail(x, "out of memory");
}

/* Reads a whole file into a NUL-terminated buffer. 0, or -1 with errno set (EFBIG when big). */
static int read_file(const char *path, size_t max, char **out, size_t *outlen) {
    FILE *f = NULL;
    char *buf = NULL;
    size_t len = 0, cap = 0;
    int rc = -1;
    if (!(f = fopen(path, "rb"))) goto out;
    for (;;) {
        if (len + 1 >= cap) {
            size_t ncap = cap ? cap * 2 : 4096;
            char *nbuf;
            if (ncap > max + 1) ncap = max + 1;
            if (len + 1 >= ncap) {
                errno = EFBIG;
                goto out;
            }
            if (!(nbuf = realloc(buf, ncap))) goto out;
            buf = nbuf;
            cap = ncap;
        }
        size_t got = fread(buf + len, 1, cap - len - 1, f);
        len += got;
        if (got == 0) {
            if (ferror(f)) goto out;
            break;
        }
    }
    buf[len] = '\0';
    *out = buf;
    *outlen = len;
    buf = NULL;
    rc = 0;
out:
    if (f) fclose(f);
    if (buf) wipe_free(buf, cap);
    return rc;
}

/* host:port (net_split_host_port's forms) into a heap copy of the host. */
static int split_host_port(const char *s, char **host, int *port, int port_required) {
    char buf[NET_HOST_MAX];
    if (net_split_host_port(s, buf, sizeof buf, port, port_required) != 0) return -1;
    return (*host = strdup(buf)) ? 0 : -1;
}

/* ---- table-driven objects ---------------------------------------------------------------- */

enum field_kind {
    FK_NONE,        /* FK_CUSTOM's view when it has none (sections, hooks) */
    FK_STRING,      /* char *, a non-empty string; at most max bytes when max > 0 */
    FK_NAME,        /* char *, a name: 1..CONFIG_NAME_MAX bytes of [A-Za-z0-9._-] */
    FK_STRING_NULL, /* char *, a string, or null for none */
    FK_UINT,        /* unsigned */
    FK_U32,         /* uint32_t; flag_off (if any) set to 1 when present */
    FK_ULONG,       /* unsigned long */
    FK_SIZE,        /* size_t */
    FK_DOUBLE,      /* double */
    FK_BOOL,        /* int 0/1 */
    FK_ENUM,        /* int-sized enum, index into names */
    FK_SECRET,      /* char *, literal value; flag_off (if any) set to 1 */
    FK_SECRET_ENV,  /* char *, from the environment variable named */
    FK_SECRET_FILE, /* char *, from the file named, one trailing newline trimmed */
    FK_CUSTOM,      /* handler */
};

#define F_REQUIRED 1u
#define F_EXCL_MIN 2u /* FK_DOUBLE: the value must be greater than min */
#define F_RELOAD \
    4u             /* top-level keys: a SIGHUP reload applies it (and all under it); without it
                       * a change is logged as needing a restart */
#define F_SHOWN 8u /* secret kinds: not a secret (a secret id), the dump shows the value */
#define F_RESTART \
    16u /* a field under a F_RELOAD key that a reload still does not apply (redis.key_prefix);
         * a F_RELOAD object behind a pointer (redis) added or removed needs a restart too */

/* What the dump and the reload diff see of a field (parsing ignores it). */
enum field_shape {
    SHAPE_LEAF,       /* one value: kind (FK_CUSTOM: view, or the dump/same hooks) */
    SHAPE_OBJECT,     /* an object of fields sub at base + off */
    SHAPE_OBJECT_PTR, /* a pointer at base + off to an object of fields sub, NULL: null */
    SHAPE_LIST,       /* an array at base + off of count (size_t at count_off) elements of
                       * elem_size, each an object of fields sub */
};

struct field {
    const char *key;
    enum field_kind kind;
    size_t off;
    double min, max;
    const char *const *names;                           /* FK_ENUM, NULL-ended */
    int (*parse)(struct ctx *x, json_t *v, void *base); /* FK_CUSTOM; the key is on the path */
    size_t flag_off;
    unsigned flags;
    const char *group; /* secret kinds: the base name, e.g. "secret_key" */
    /* dump and diff (the loaded struct as the tables describe it) */
    enum field_shape shape;
    const struct field *sub;
    size_t count_off, elem_size;
    enum field_kind view; /* FK_CUSTOM leaf: the kind of the member at off */
    /* FK_CUSTOM leaf hooks, used instead of view: the value (*out NULL: left out of the dump)
     * 0/-1 (OOM); 1 when a and b hold the same value. */
    int (*dump)(const struct field *f, const char *base, json_t **out);
    int (*same)(const struct field *f, const char *a, const char *b);
};

_Static_assert(sizeof(enum config_app_auth) == sizeof(int), "enums are int-sized");
_Static_assert(sizeof(enum config_limit_scope) == sizeof(int), "enums are int-sized");
_Static_assert(sizeof(enum config_store_error) == sizeof(int), "enums are int-sized");
_Static_assert(sizeof(enum sign_method) == sizeof(int), "enums are int-sized");

static int parse_integer(struct ctx *x, json_t *v, const struct field *f, uint64_t *out) {
    char got[80];
    if (!json_is_integer(v)) {
        describe(v, got, sizeof got);
        return fail(x, "must be an integer; got %s", got);
    }
    json_int_t n = json_integer_value(v);
    if (n < 0 || (double)n < f->min || (double)n > f->max)
        return fail(x, "must be between %.0f and %.0f; got %lld", f->min, f->max, (long long)n);
    *out = (uint64_t)n;
    return 0;
}

static int parse_enum(struct ctx *x, json_t *v, const struct field *f, int *out) {
    char expect[256], got[80];
    size_t used = 0, count = 0;
    if (json_is_string(v)) {
        for (int i = 0; f->names[i]; i++) {
            if (strcmp(json_string_value(v), f->names[i]) == 0) {
                *out = i;
                return 0;
            }
        }
    }
    while (f->names[count]) count++;
    expect[0] = '\0';
    for (size_t i = 0; i < count && used < sizeof expect; i++) {
        int w = snprintf(expect + used, sizeof expect - used, "%s\"%s\"",
                         i == 0           ? ""
                         : i + 1 == count ? " or "
                                          : ", ",
                         f->names[i]);
        if (w < 0) break;
        used += (size_t)w;
    }
    describe(v, got, sizeof got);
    return fail(x, "must be %s; got %s", expect, got);
}

/* ---- secrets from the environment ----
 * A secret read from the environment is removed from it (and its text there wiped, which also
 * clears it from /proc/PID/environ), so it does not reach child processes, crash reports or
 * anything else that reads the environment. The value is remembered here, in secmem, under the
 * variable's name: a SIGHUP reload that names the same variable gets the value read at start
 * (the environment of a running process cannot be changed from outside anyway); a variable the
 * environment still holds is read afresh. Rotation goes through <name>_file. */
struct env_secret {
    char *name;  /* heap */
    char *value; /* secmem */
    struct env_secret *next;
};

static pthread_mutex_t env_lock = PTHREAD_MUTEX_INITIALIZER;
static struct env_secret *env_secrets;

/* The value of the environment variable name as a new secmem string: 0, 1 (unset), 2 (empty)
 * or -1 (OOM). */
static int env_secret_take(const char *name, char **out) {
    struct env_secret *e;
    int rc = 0;
    *out = NULL;
    pthread_mutex_lock(&env_lock);
    for (e = env_secrets; e && strcmp(e->name, name) != 0; e = e->next) {
    }
    char *val = getenv(name);
    if (val) {
        char *copy = *val ? secmem_strdup(val) : NULL;
        if (*val && !copy) {
            rc = -1;
            goto out;
        }
        if (!*val) {
            rc = 2;
            goto out;
        }
        if (!e) {
            if (!(e = calloc(1, sizeof *e)) || !(e->name = strdup(name))) {
                free(e);
                secmem_free(copy);
                rc = -1;
                goto out;
            }
            e->next = env_secrets;
            env_secrets = e;
        }
        secmem_free(e->value);
        e->value = copy;
        OPENSSL_cleanse(val, strlen(val));
        unsetenv(name);
    } else if (!e) {
        rc = 1;
        goto out;
    }
    if (!(*out = secmem_strdup(e->value))) rc = -1;
out:
    pthread_mutex_unlock(&env_lock);
    return rc;
}

static int parse_secret_value(struct ctx *x, json_t *v, const struct field *f, char *base) {
    char **dst = (char **)(base + f->off);
    const char *name;
    char got[80];
    /* a secret id is not secret: plain heap, shown by the dump */
    int secret = !(f->flags & F_SHOWN);
    if (json_is_null(v) && f->kind != FK_SECRET) return 0;
    if (!json_is_string(v) || json_string_length(v) == 0) {
        /* the value of a literal secret is not echoed, whatever its type */
        if (f->kind == FK_SECRET && secret)
            snprintf(got, sizeof got, "%s", json_kind(v));
        else
            describe(v, got, sizeof got);
        return fail(x, "must be a non-empty string%s; got %s",
                    f->kind == FK_SECRET ? "" : " or null", got);
    }
    if (*dst)
        return fail(x, "only one of %s, %s_env and %s_file may be set", f->group, f->group,
                    f->group);
    name = json_string_value(v);
    char shown[160]; /* the variable's or the file's name in a message (not for a literal) */
    shown_plain(f->kind == FK_SECRET ? "" : name, shown, sizeof shown);
    if (f->kind == FK_SECRET) {
        if (!(*dst = secret ? secmem_strdup(name) : strdup(name))) return oom(x);
        if (f->flag_off != NO_FLAG) *(int *)(base + f->flag_off) = 1;
    } else if (f->kind == FK_SECRET_ENV && secret) {
        switch (env_secret_take(name, dst)) {
        case 1:
            return fail(x,
                        "environment variable %s is not set (a secret added after start "
                        "goes in %s_file)",
                        shown, f->group);
        case 2: return fail(x, "environment variable %s is empty", shown);
        case -1: return oom(x);
        }
    } else if (f->kind == FK_SECRET_ENV) {
        const char *val = getenv(name);
        /* A reload reads the environment the process started with: a variable exported later
         * never reaches it, so the message points at the file form, which is read every time. */
        if (!val)
            return fail(x,
                        "environment variable %s is not set (a running capgate keeps the "
                        "environment it started with: for a value added at run time use "
                        "%s_file)",
                        shown, f->group);
        if (!*val) return fail(x, "environment variable %s is empty", shown);
        if (!(*dst = strdup(val))) return oom(x);
    } else {
        char *buf = NULL, *file = path_under(x, name);
        size_t len = 0;
        if (!file) return oom(x);
        shown_plain(file, shown, sizeof shown); /* the path as resolved, in messages */
        int rc = read_file(file, MAX_SECRET_FILE_BYTES, &buf, &len);
        int e = errno;
        free(file);
        if (rc != 0)
            return fail(x, "cannot read %s: %s", shown,
                        e == EFBIG ? "larger than 64 KiB" : strerror(e));
        size_t read_len = len;
        if (len && buf[len - 1] == '\n') buf[--len] = '\0';
        if (len && buf[len - 1] == '\r') buf[--len] = '\0';
        if (len == 0 || strlen(buf) != len) {
            wipe_free(buf, read_len + 1);
            return fail(x, "%s is empty or holds a NUL byte", shown);
        }
        if (!secret) {
            *dst = buf;
            return 0;
        }
        *dst = secmem_memdup(buf, len);
        wipe_free(buf, read_len + 1);
        if (!*dst) return oom(x);
    }
    return 0;
}

/* Remembers where the secret of f's group came from (config_dump_json writes it back so):
 * ref is the variable's name or the file's resolved path, NULL for a literal. */
static int secret_src_add(struct ctx *x, const struct field *f, const char *ref) {
    struct config *c = x->root;
    struct config_secret_src *s;
    char where[256];
    size_t n = strlen(f->group);
    if (!c) return 0;
    /* the path of the object holding f, then the group's name */
    path_format(x->path, x->depth ? x->depth - 1 : 0, where, sizeof where);
    s = realloc(c->secret_src, (c->n_secret_src + 1) * sizeof *s);
    if (!s) return oom(x);
    c->secret_src = s;
    s = &c->secret_src[c->n_secret_src];
    *s = (struct config_secret_src){0};
    size_t plen = strlen(where) + 1 + n + 1;
    if (!(s->path = malloc(plen)) || !(s->key = strdup(f->key)) ||
        (ref && !(s->ref = strdup(ref)))) {
        free(s->path);
        free(s->key);
        return oom(x);
    }
    snprintf(s->path, plen, "%s%s%s", where, where[0] ? "." : "", f->group);
    c->n_secret_src++;
    return 0;
}

#define MASK "***" /* what a dump shows of a secret */

/* A secret field: its value (parse_secret_value), and where it came from. A literal "***" is
 * refused: it is the mask of a --check-config dump, never a secret someone chose, and loading
 * it would quietly replace the real one. */
static int parse_secret(struct ctx *x, json_t *v, const struct field *f, char *base) {
    const char *const *dst = (const char *const *)(base + f->off);
    if (f->kind == FK_SECRET && !(f->flags & F_SHOWN) && json_is_string(v) &&
        strcmp(json_string_value(v), MASK) == 0)
        return fail(x,
                    "is \"" MASK "\", the mask --check-config prints in place of a secret: "
                    "give the secret itself, or use %s_file or %s_env",
                    f->group, f->group);
    int had = *dst != NULL;
    if (parse_secret_value(x, v, f, base) != 0) return -1;
    if (had || !*dst) return 0; /* null: nothing given */
    if (f->kind != FK_SECRET_FILE)
        return secret_src_add(x, f, f->kind == FK_SECRET ? NULL : json_string_value(v));
    char *file = path_under(x, json_string_value(v));
    if (!file) return oom(x);
    int rc = secret_src_add(x, f, file);
    free(file);
    return rc;
}

/* "_masked": the note a --check-config --format json dump carries of the keys it masked (a list
 * of key paths). Accepted so the dump loads again; the masked secrets themselves are refused
 * while they are "***". */
static int parse_masked(struct ctx *x, json_t *v, void *base) {
    size_t i;
    json_t *e;
    char got[80];
    (void)base;
    if (!json_is_array(v)) {
        describe(v, got, sizeof got);
        return fail(x, "must be an array of key paths (a --check-config note); got %s", got);
    }
    json_array_foreach(v, i, e) {
        if (!json_is_string(e)) {
            push_index(x, i);
            describe(e, got, sizeof got);
            return fail(x, "must be a key path string; got %s", got);
        }
    }
    return 0;
}

/* Names end up in Redis keys, audit records, metrics labels and RateLimit headers: a short,
 * plain alphabet keeps every one of them whole and unescaped. */
static int name_ok(const char *s, size_t len) {
    if (len == 0 || len > CONFIG_NAME_MAX || strlen(s) != len) return 0;
    for (size_t i = 0; i < len; i++) {
        char ch = s[i];
        if (!((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
              ch == '.' || ch == '_' || ch == '-'))
            return 0;
    }
    return 1;
}

static int parse_field(struct ctx *x, json_t *v, const struct field *f, char *base) {
    uint64_t n = 0;
    char got[80];
    switch (f->kind) {
    case FK_STRING:
    case FK_STRING_NULL:
        if (f->kind == FK_STRING_NULL && json_is_null(v)) {
            set_str((char **)(base + f->off), NULL);
            return 0;
        }
        if (!json_is_string(v) || json_string_length(v) == 0 ||
            strlen(json_string_value(v)) != json_string_length(v)) {
            describe(v, got, sizeof got);
            return fail(x, "must be a non-empty string%s; got %s",
                        f->kind == FK_STRING_NULL ? " or null" : "", got);
        }
        if (f->max > 0 && (double)json_string_length(v) > f->max)
            return fail(x, "must be at most %.0f bytes; got %zu", f->max, json_string_length(v));
        return set_str((char **)(base + f->off), json_string_value(v)) ? oom(x) : 0;
    case FK_NAME:
        if (!json_is_string(v) || !name_ok(json_string_value(v), json_string_length(v))) {
            describe(v, got, sizeof got);
            return fail(x, "must be 1 to %d bytes of A-Z, a-z, 0-9, '.', '_' and '-'; got %s",
                        CONFIG_NAME_MAX, got);
        }
        return set_str((char **)(base + f->off), json_string_value(v)) ? oom(x) : 0;
    case FK_UINT:
        if (parse_integer(x, v, f, &n)) return -1;
        *(unsigned *)(base + f->off) = (unsigned)n;
        return 0;
    case FK_U32:
        if (parse_integer(x, v, f, &n)) return -1;
        *(uint32_t *)(base + f->off) = (uint32_t)n;
        if (f->flag_off != NO_FLAG) *(int *)(base + f->flag_off) = 1;
        return 0;
    case FK_ULONG:
        if (parse_integer(x, v, f, &n)) return -1;
        *(unsigned long *)(base + f->off) = (unsigned long)n;
        return 0;
    case FK_SIZE:
        if (parse_integer(x, v, f, &n)) return -1;
        *(size_t *)(base + f->off) = (size_t)n;
        return 0;
    case FK_DOUBLE: {
        double d;
        if (!json_is_number(v)) {
            describe(v, got, sizeof got);
            return fail(x, "must be a number; got %s", got);
        }
        d = json_number_value(v);
        if ((f->flags & F_EXCL_MIN) ? !(d > f->min) : !(d >= f->min))
            return fail(x, "must be %s %g; got %g",
                        (f->flags & F_EXCL_MIN) ? "greater than" : "at least", f->min, d);
        if (d > f->max) return fail(x, "must be at most %g; got %g", f->max, d);
        *(double *)(base + f->off) = d;
        return 0;
    }
    case FK_BOOL:
        if (!json_is_boolean(v)) {
            describe(v, got, sizeof got);
            return fail(x, "must be true or false; got %s", got);
        }
        *(int *)(base + f->off) = json_is_true(v);
        return 0;
    case FK_ENUM: return parse_enum(x, v, f, (int *)(base + f->off));
    case FK_SECRET:
    case FK_SECRET_ENV:
    case FK_SECRET_FILE: return parse_secret(x, v, f, base);
    case FK_CUSTOM: return f->parse(x, v, base);
    case FK_NONE: break;
    }
    return fail(x, "internal error: unknown field kind");
}

/* Runs the table over obj, which sits at the current path. */
static int parse_object(struct ctx *x, json_t *obj, const struct field *table, void *base) {
    const char *key;
    json_t *v;
    char got[80];
    if (!json_is_object(obj)) {
        describe(obj, got, sizeof got);
        return fail(x, "must be an object; got %s", got);
    }
    json_object_foreach(obj, key, v) {
        const struct field *f = table;
        while (f->key && strcmp(f->key, key) != 0) f++;
        push_key(x, key);
        if (!f->key) return fail(x, "unknown key");
        if (parse_field(x, v, f, base)) return -1;
        pop(x);
    }
    for (const struct field *f = table; f->key; f++) {
        if ((f->flags & F_REQUIRED) && !json_object_get(obj, f->key))
            return fail(x, "missing required key \"%s\"", f->key);
    }
    return 0;
}

/* ---- names ------------------------------------------------------------------------------- */

static const char *const http_errors_names[] = {"compat", "semantic", NULL};
static const char *const store_error_names[] = {"local", "allow", "deny", NULL};
static const char *const method_names[] = {"GET", "POST", NULL};
static const char *const sign_method_names[] = {"HmacSHA1", "HmacSHA256", NULL};
static const char *const app_auth_names[] = {"signature", "token", NULL};
static const char *const scope_names[] = {"params", "app", "global", NULL};
static const char *const mode_names[] = {"enforce", "shadow", NULL};
static const char *const pii_names[] = {"hash", "raw", NULL};
static const char *const commit_names[] = {"async", "durable", NULL};
static const char *const log_level_names[] = {"debug", "info", "warn", "error", NULL};
static const char *const log_format_names[] = {"text", "json", NULL};

static const char *const action_names[V2_ACTION_COUNT] = {
    [V2_ACTION_UNKNOWN] = NULL,
    [V2_ACTION_CAPTCHA_IFRAME_QUERY] = "CaptchaIframeQuery",
    [V2_ACTION_CAPTCHA_CHECK] = "CaptchaCheck",
    [V2_ACTION_CAPTCHA_QUERY] = "CaptchaQuery",
    [V3_ACTION_DESCRIBE_CAPTCHA_RESULT] = "DescribeCaptchaResult",
    [V3_ACTION_DESCRIBE_CAPTCHA_MINI_RESULT] = "DescribeCaptchaMiniResult",
};
static const char *const inject_names[] = {"missing", "always", NULL};

static unsigned all_actions(void) {
    unsigned m = 0;
    for (int a = V2_ACTION_UNKNOWN + 1; a < V2_ACTION_COUNT; a++) m |= 1u << a;
    return m;
}

/* ---- custom fields ----------------------------------------------------------------------- */

static int parse_listen_into(struct ctx *x, json_t *v, char **host, int *port) {
    char got[80];
    char *h = NULL;
    int p = 0;
    if (!json_is_string(v) || split_host_port(json_string_value(v), &h, &p, 1) != 0) {
        describe(v, got, sizeof got);
        return fail(x, "must be \"host:port\" with a port 0..65535; got %s", got);
    }
    free(*host);
    *host = h;
    *port = p;
    return 0;
}

/* null: no plain listener (an HTTPS-only front) */
static int parse_listen(struct ctx *x, json_t *v, void *base) {
    struct config *c = base;
    if (json_is_null(v)) {
        free(c->listen_host);
        c->listen_host = NULL;
        return 0;
    }
    return parse_listen_into(x, v, &c->listen_host, &c->listen_port);
}

static int parse_tls_listen(struct ctx *x, json_t *v, void *base) {
    struct config *c = base;
    if (json_is_null(v)) {
        free(c->tls_listen_host);
        c->tls_listen_host = NULL;
        return 0;
    }
    return parse_listen_into(x, v, &c->tls_listen_host, &c->tls_listen_port);
}

static int parse_trusted_proxies(struct ctx *x, json_t *v, void *base) {
    struct config *c = base;
    size_t i;
    json_t *e;
    char got[80], err[160];
    if (!json_is_array(v)) {
        describe(v, got, sizeof got);
        return fail(x,
                    "must be a list of IPv4 or IPv6 CIDR blocks (\"10.0.0.0/8\", "
                    "\"fd00::/8\"); got %s",
                    got);
    }
    if (json_array_size(v) &&
        !(c->trusted_proxies = calloc(json_array_size(v), sizeof *c->trusted_proxies)))
        return oom(x);
    json_array_foreach(v, i, e) {
        push_index(x, i);
        if (!json_is_string(e)) {
            describe(e, got, sizeof got);
            return fail(x, "must be a CIDR block as a string, e.g. \"10.0.0.0/8\"; got %s", got);
        }
        if (net_parse_cidr(json_string_value(e), &c->trusted_proxies[i], err, sizeof err) != 0)
            return fail(x, "%s", err);
        c->n_trusted_proxies = i + 1;
        pop(x);
    }
    return 0;
}

static int parse_admin_listen(struct ctx *x, json_t *v, void *base) {
    struct config *c = base;
    return parse_listen_into(x, v, &c->admin_host, &c->admin_port);
}

static int parse_log_level(struct ctx *x, json_t *v, void *base) {
    struct config *c = base;
    static const struct field f = {.key = "log_level", .kind = FK_ENUM, .names = log_level_names};
    int idx;
    if (parse_enum(x, v, &f, &idx)) return -1;
    return set_str(&c->log_level, log_level_names[idx]) ? oom(x) : 0;
}

static int parse_actions(struct ctx *x, json_t *v, void *base) {
    struct config_app *app = base;
    size_t i;
    json_t *e;
    char got[80];
    if (!json_is_array(v) || json_array_size(v) == 0) {
        describe(v, got, sizeof got);
        return fail(x, "must be a non-empty list of Action names; got %s", got);
    }
    app->actions = 0;
    json_array_foreach(v, i, e) {
        int found = 0;
        push_index(x, i);
        for (int a = V2_ACTION_UNKNOWN + 1; a < V2_ACTION_COUNT && json_is_string(e); a++) {
            if (strcmp(json_string_value(e), action_names[a]) == 0) {
                if (app->actions & (1u << a)) return fail(x, "listed twice");
                app->actions |= 1u << a;
                found = 1;
            }
        }
        if (!found) {
            describe(e, got, sizeof got);
            return fail(x,
                        "must be \"CaptchaIframeQuery\", \"CaptchaCheck\", "
                        "\"CaptchaQuery\", \"DescribeCaptchaResult\" or "
                        "\"DescribeCaptchaMiniResult\"; got %s",
                        got);
        }
        pop(x);
    }
    return 0;
}

/* "*" or a non-empty list of distinct UInts (what names them: "businessId", "CaptchaAppId"). */
static int parse_id_list(struct ctx *x, json_t *v, const char *what, int *any, uint32_t **ids,
                         size_t *n) {
    size_t i;
    json_t *e;
    char got[80];
    if (json_is_string(v) && strcmp(json_string_value(v), "*") == 0) {
        *any = 1;
        return 0;
    }
    if (!json_is_array(v) || json_array_size(v) == 0) {
        describe(v, got, sizeof got);
        return fail(x, "must be \"*\" or a non-empty list of UInt %ss; got %s", what, got);
    }
    if (!(*ids = calloc(json_array_size(v), sizeof **ids))) return oom(x);
    *any = 0;
    json_array_foreach(v, i, e) {
        push_index(x, i);
        if (!json_is_integer(e) || json_integer_value(e) < 0 ||
            json_integer_value(e) > (json_int_t)UINT32_MAX) {
            describe(e, got, sizeof got);
            return fail(x, "must be a UInt (0..4294967295); got %s", got);
        }
        uint32_t id = (uint32_t)json_integer_value(e);
        for (size_t j = 0; j < *n; j++)
            if ((*ids)[j] == id) return fail(x, "%s %u listed twice", what, id);
        (*ids)[(*n)++] = id;
        pop(x);
    }
    return 0;
}

static int parse_business_ids(struct ctx *x, json_t *v, void *base) {
    struct config_app *app = base;
    return parse_id_list(x, v, "businessId", &app->business_any, &app->business_ids,
                         &app->n_business_ids);
}

static int parse_captcha_app_ids(struct ctx *x, json_t *v, void *base) {
    struct config_app *app = base;
    return parse_id_list(x, v, "CaptchaAppId", &app->captcha_any, &app->captcha_app_ids,
                         &app->n_captcha_app_ids);
}

static int parse_param_match(struct ctx *x, json_t *v, int *any, uint32_t *id) {
    char got[80];
    if (json_is_string(v) && strcmp(json_string_value(v), "*") == 0) {
        *any = 1;
        return 0;
    }
    if (!json_is_integer(v) || json_integer_value(v) < 0 ||
        json_integer_value(v) > (json_int_t)UINT32_MAX) {
        describe(v, got, sizeof got);
        return fail(x, "must be a UInt (0..4294967295) or \"*\"; got %s", got);
    }
    *any = 0;
    *id = (uint32_t)json_integer_value(v);
    return 0;
}

static int parse_limit_business(struct ctx *x, json_t *v, void *base) {
    struct config_limit *l = base;
    return parse_param_match(x, v, &l->business_any, &l->business_id);
}

static int parse_limit_scene(struct ctx *x, json_t *v, void *base) {
    struct config_limit *l = base;
    return parse_param_match(x, v, &l->scene_any, &l->scene_id);
}

/* ---- custom fields: what the dump shows and the reload diff compares ---------------------- */

/* While config_dump_json runs (on its thread): the key path being dumped, and where secrets
 * came from; NULL for the masked dump. */
struct dump_cx {
    const struct config *c;
    struct seg path[MAX_DEPTH];
    size_t depth;
    json_t *masked; /* key paths written as "***" */
};
static _Thread_local struct dump_cx *dump_cx;

static void dump_push(const char *key, size_t index) {
    if (!dump_cx) return;
    if (dump_cx->depth < MAX_DEPTH) dump_cx->path[dump_cx->depth] = (struct seg){key, index};
    dump_cx->depth++;
}

static void dump_pop(void) {
    if (dump_cx) dump_cx->depth--;
}

/* Notes the current key path as masked. 0/-1 (OOM). */
static int dump_note_masked(void) {
    char where[256];
    path_format(dump_cx->path, dump_cx->depth, where, sizeof where);
    return json_array_append_new(dump_cx->masked, json_string(where));
}

static int same_str(const char *a, const char *b) {
    if (!a || !b) return a == b;
    return strcmp(a, b) == 0;
}

static json_t *host_port(const char *host, int port) {
    char buf[300];
    int v6 = strchr(host, ':') != NULL;
    snprintf(buf, sizeof buf, "%s%s%s:%d", v6 ? "[" : "", host, v6 ? "]" : "", port);
    return json_string(buf);
}

/* host:port, or null for a listener that is off */
static json_t *listen_or_null(const char *host, int port) {
    return host ? host_port(host, port) : json_null();
}

static int dump_listen(const struct field *f, const char *base, json_t **out) {
    const struct config *c = (const struct config *)base;
    return (*out = listen_or_null(c->listen_host, c->listen_port)) ? 0 : -1;
}

static int dump_tls_listen(const struct field *f, const char *base, json_t **out) {
    const struct config *c = (const struct config *)base;
    return (*out = listen_or_null(c->tls_listen_host, c->tls_listen_port)) ? 0 : -1;
}

static int same_tls_listen(const struct field *f, const char *a, const char *b) {
    const struct config *x = (const struct config *)a, *y = (const struct config *)b;
    return same_str(x->tls_listen_host, y->tls_listen_host) &&
           x->tls_listen_port == y->tls_listen_port;
}

/* The certificate's files, or null without an HTTPS front. Same files count as the same value:
 * a reload loads them again anyway, so a certificate renewed in place is picked up. */
static int dump_tls(const struct field *f, const char *base, json_t **out) {
    const struct config *c = (const struct config *)base;
    if (!c->tls.cert_file) return (*out = json_null()) ? 0 : -1;
    *out = json_pack("{s:s, s:s}", "cert_file", c->tls.cert_file, "key_file", c->tls.key_file);
    return *out ? 0 : -1;
}

static int same_tls(const struct field *f, const char *a, const char *b) {
    const struct config *x = (const struct config *)a, *y = (const struct config *)b;
    return same_str(x->tls.cert_file, y->tls.cert_file) &&
           same_str(x->tls.key_file, y->tls.key_file);
}

static int dump_trusted_proxies(const struct field *f, const char *base, json_t **out) {
    const struct config *c = (const struct config *)base;
    if (!(*out = json_array())) return -1;
    for (size_t i = 0; i < c->n_trusted_proxies; i++) {
        char addr[64], buf[80];
        net_addr_format(&c->trusted_proxies[i].addr, addr, sizeof addr);
        snprintf(buf, sizeof buf, "%s/%u", addr, c->trusted_proxies[i].prefix);
        if (json_array_append_new(*out, json_string(buf))) return -1;
    }
    return 0;
}

static int same_trusted_proxies(const struct field *f, const char *a, const char *b) {
    const struct config *x = (const struct config *)a, *y = (const struct config *)b;
    return x->n_trusted_proxies == y->n_trusted_proxies &&
           (!x->n_trusted_proxies ||
            memcmp(x->trusted_proxies, y->trusted_proxies,
                   x->n_trusted_proxies * sizeof *x->trusted_proxies) == 0);
}

static int same_listen(const struct field *f, const char *a, const char *b) {
    const struct config *x = (const struct config *)a, *y = (const struct config *)b;
    return same_str(x->listen_host, y->listen_host) && x->listen_port == y->listen_port;
}

static int dump_admin_listen(const struct field *f, const char *base, json_t **out) {
    const struct config *c = (const struct config *)base;
    return (*out = host_port(c->admin_host, c->admin_port)) ? 0 : -1;
}

static int same_admin_listen(const struct field *f, const char *a, const char *b) {
    const struct config *x = (const struct config *)a, *y = (const struct config *)b;
    return same_str(x->admin_host, y->admin_host) && x->admin_port == y->admin_port;
}

static int dump_actions(const struct field *f, const char *base, json_t **out) {
    const struct config_app *a = (const struct config_app *)base;
    if (!(*out = json_array())) return -1;
    for (int i = V2_ACTION_UNKNOWN + 1; i < V2_ACTION_COUNT; i++)
        if ((a->actions & (1u << i)) && json_array_append_new(*out, json_string(action_names[i])))
            return -1;
    return 0;
}

static int same_actions(const struct field *f, const char *a, const char *b) {
    return ((const struct config_app *)a)->actions == ((const struct config_app *)b)->actions;
}

static int dump_id_list(int any, const uint32_t *ids, size_t n, json_t **out) {
    if (any) return (*out = json_string("*")) ? 0 : -1;
    if (!(*out = json_array())) return -1;
    for (size_t i = 0; i < n; i++)
        if (json_array_append_new(*out, json_integer(ids[i]))) return -1;
    return 0;
}

static int same_id_list(int any_a, const uint32_t *a, size_t na, int any_b, const uint32_t *b,
                        size_t nb) {
    if (any_a != any_b || na != nb) return 0;
    for (size_t i = 0; i < na; i++)
        if (a[i] != b[i]) return 0;
    return 1;
}

static int dump_business_ids(const struct field *f, const char *base, json_t **out) {
    const struct config_app *a = (const struct config_app *)base;
    return dump_id_list(a->business_any, a->business_ids, a->n_business_ids, out);
}

static int same_business_ids(const struct field *f, const char *a, const char *b) {
    const struct config_app *x = (const struct config_app *)a, *y = (const struct config_app *)b;
    return same_id_list(x->business_any, x->business_ids, x->n_business_ids, y->business_any,
                        y->business_ids, y->n_business_ids);
}

static int dump_captcha_app_ids(const struct field *f, const char *base, json_t **out) {
    const struct config_app *a = (const struct config_app *)base;
    return dump_id_list(a->captcha_any, a->captcha_app_ids, a->n_captcha_app_ids, out);
}

static int same_captcha_app_ids(const struct field *f, const char *a, const char *b) {
    const struct config_app *x = (const struct config_app *)a, *y = (const struct config_app *)b;
    return same_id_list(x->captcha_any, x->captcha_app_ids, x->n_captcha_app_ids, y->captcha_any,
                        y->captcha_app_ids, y->n_captcha_app_ids);
}

/* A limit's businessId or sceneId (by f->key): "*" or the id; only rules with scope params
 * have one. */
static void limit_match(const struct field *f, const char *base, int *any, uint32_t *id) {
    const struct config_limit *l = (const struct config_limit *)base;
    int business = strcmp(f->key, "businessId") == 0;
    *any = business ? l->business_any : l->scene_any;
    *id = business ? l->business_id : l->scene_id;
}

static int dump_limit_match(const struct field *f, const char *base, json_t **out) {
    int any;
    uint32_t id;
    if (((const struct config_limit *)base)->scope != CONFIG_SCOPE_PARAMS) return 0;
    limit_match(f, base, &any, &id);
    return (*out = any ? json_string("*") : json_integer(id)) ? 0 : -1;
}

static int same_limit_match(const struct field *f, const char *a, const char *b) {
    int ax, bx;
    uint32_t ai, bi;
    limit_match(f, a, &ax, &ai);
    limit_match(f, b, &bx, &bi);
    return ax == bx && (ax || ai == bi);
}

/* The url with its password (if any) masked; host, port and db as parsed. */
static int dump_redis_url(const struct field *f, const char *base, json_t **out) {
    const struct config_redis *r = (const struct config_redis *)base;
    char url[600];
    if (!r->url) return 0; /* sentinels without a url */
    int v6 = strchr(r->host, ':') != NULL;
    /* with password_env/password_file the password is not the url's */
    int in_url = r->password != NULL;
    for (size_t i = 0; in_url && dump_cx && i < dump_cx->c->n_secret_src; i++)
        in_url = strcmp(dump_cx->c->secret_src[i].path, "redis.password") != 0;
    snprintf(url, sizeof url, "redis://%s%s%s%s:%d/%u", in_url ? ":" MASK "@" : "", v6 ? "[" : "",
             r->host, v6 ? "]" : "", r->port, r->db);
    if (in_url && dump_cx && dump_note_masked()) return -1;
    return (*out = json_string(url)) ? 0 : -1;
}

/* The url as parsed: "redis://h/0" and "redis://h:6379/0" are the same server. */
static int same_redis_url(const struct field *f, const char *a, const char *b) {
    const struct config_redis *x = (const struct config_redis *)a;
    const struct config_redis *y = (const struct config_redis *)b;
    return same_str(x->host, y->host) && x->port == y->port && x->db == y->db && !x->url == !y->url;
}

/* redis.sentinels as "host:port" strings (IPv6 in brackets). */
static int dump_redis_sentinels(const struct field *f, const char *base, json_t **out) {
    const struct config_redis *r = (const struct config_redis *)base;
    if (!r->n_sentinels) return 0;
    if (!(*out = json_array())) return -1;
    for (size_t i = 0; i < r->n_sentinels; i++)
        if (json_array_append_new(*out, host_port(r->sentinels[i].host, r->sentinels[i].port)))
            return -1;
    return 0;
}

static int same_redis_sentinels(const struct field *f, const char *a, const char *b) {
    const struct config_redis *x = (const struct config_redis *)a;
    const struct config_redis *y = (const struct config_redis *)b;
    if (x->n_sentinels != y->n_sentinels) return 0;
    for (size_t i = 0; i < x->n_sentinels; i++)
        if (!same_str(x->sentinels[i].host, y->sentinels[i].host) ||
            x->sentinels[i].port != y->sentinels[i].port)
            return 0;
    return 1;
}

static int dump_pii_key(const struct field *f, const char *base, json_t **out) {
    const struct config_audit *a = (const struct config_audit *)base;
    *out = a->pii_key_generated ? json_string("(random per process)")
           : a->pii_key         ? json_string(MASK)
                                : json_null();
    return *out ? 0 : -1;
}

/* A generated PII key is new on every load: only a configured one can be compared. */
static int same_pii_key(const struct field *f, const char *a, const char *b) {
    const struct config_audit *x = (const struct config_audit *)a;
    const struct config_audit *y = (const struct config_audit *)b;
    if (x->pii_key_generated && y->pii_key_generated) return 1;
    return x->pii_key_generated == y->pii_key_generated && x->pii_key_len == y->pii_key_len &&
           (!x->pii_key_len || CRYPTO_memcmp(x->pii_key, y->pii_key, x->pii_key_len) == 0);
}

/* ---- tables ------------------------------------------------------------------------------ */

#define STR(k, T, m) \
    { .key = k, .kind = FK_STRING, .off = offsetof(T, m), .flag_off = NO_FLAG }
#define STRN(k, T, m) \
    { .key = k, .kind = FK_STRING_NULL, .off = offsetof(T, m), .flag_off = NO_FLAG }
#define NUM(k, kd, T, m, lo, hi) \
    { .key = k, .kind = kd, .off = offsetof(T, m), .min = lo, .max = hi, .flag_off = NO_FLAG }
#define BOOL(k, T, m) \
    { .key = k, .kind = FK_BOOL, .off = offsetof(T, m), .flag_off = NO_FLAG }
#define ENUM(k, T, m, n) \
    { .key = k, .kind = FK_ENUM, .off = offsetof(T, m), .names = n, .flag_off = NO_FLAG }
#define SECRET(k, kd, T, m, g, flag) \
    { .key = k, .kind = kd, .off = offsetof(T, m), .group = g, .flag_off = flag }
#define CUSTOM(k, fn) \
    { .key = k, .kind = FK_CUSTOM, .parse = fn, .flag_off = NO_FLAG }
/* A custom leaf the dump and the diff see through the hooks d and sm. */
#define CUSTOM_LEAF(k, fn, d, sm, fl) \
    { \
        .key = k, .kind = FK_CUSTOM, .parse = fn, .dump = d, .same = sm, .flag_off = NO_FLAG, \
        .flags = fl \
    }
/* A section: an object of fields sub at member m of T. */
#define SECTION(k, fn, sub_, T, m, fl) \
    { \
        .key = k, .kind = FK_CUSTOM, .parse = fn, .shape = SHAPE_OBJECT, .sub = sub_, \
        .off = offsetof(T, m), .flag_off = NO_FLAG, .flags = fl \
    }
/* A list of objects of fields sub: array member m, count member n, elements of type E. */
#define LIST(k, fn, sub_, T, m, n, E, fl) \
    { \
        .key = k, .kind = FK_CUSTOM, .parse = fn, .shape = SHAPE_LIST, .sub = sub_, \
        .off = offsetof(T, m), .count_off = offsetof(T, n), .elem_size = sizeof(E), \
        .flag_off = NO_FLAG, .flags = fl \
    }
#define END \
    { .key = NULL }

#define MS_MAX 600000.0

static const struct field upstream_fields[] = {
    STR("url", struct config_upstream, url),
    STR("sign_host", struct config_upstream, sign_host),
    STR("v3_url", struct config_upstream, v3_url),
    {.key = "secret_id",
     .kind = FK_SECRET,
     .off = offsetof(struct config_upstream, secret_id),
     .group = "secret_id",
     .flag_off = NO_FLAG,
     .flags = F_SHOWN},
    {.key = "secret_id_env",
     .kind = FK_SECRET_ENV,
     .off = offsetof(struct config_upstream, secret_id),
     .group = "secret_id",
     .flag_off = NO_FLAG,
     .flags = F_SHOWN},
    {.key = "secret_id_file",
     .kind = FK_SECRET_FILE,
     .off = offsetof(struct config_upstream, secret_id),
     .group = "secret_id",
     .flag_off = NO_FLAG,
     .flags = F_SHOWN},
    SECRET("secret_key", FK_SECRET, struct config_upstream, secret_key, "secret_key",
           offsetof(struct config_upstream, secret_literal)),
    SECRET("secret_key_env", FK_SECRET_ENV, struct config_upstream, secret_key, "secret_key",
           NO_FLAG),
    SECRET("secret_key_file", FK_SECRET_FILE, struct config_upstream, secret_key, "secret_key",
           NO_FLAG),
    STR("region", struct config_upstream, region),
    ENUM("signature_method", struct config_upstream, signature_method, sign_method_names),
    ENUM("method", struct config_upstream, post, method_names),
    STRN("ca_file", struct config_upstream, ca_file),
    BOOL("verify_tls", struct config_upstream, verify_tls),
    NUM("connect_timeout_ms", FK_UINT, struct config_upstream, connect_timeout_ms, 1, MS_MAX),
    NUM("timeout_ms", FK_UINT, struct config_upstream, timeout_ms, 1, MS_MAX),
    NUM("retries", FK_UINT, struct config_upstream, retries, 0, 10),
    NUM("max_connections", FK_UINT, struct config_upstream, max_connections, 1, 65536),
    NUM("breaker_failures", FK_UINT, struct config_upstream, breaker_failures, 1, 10000),
    NUM("breaker_open_ms", FK_UINT, struct config_upstream, breaker_open_ms, 1, MS_MAX),
    STRN("resolver", struct config_upstream, resolver),
    NUM("resolve_interval_ms", FK_UINT, struct config_upstream, resolve_interval_ms, 1000,
        86400000),
    END,
};

static int parse_redis_sentinels(struct ctx *x, json_t *v, void *base);

static const struct field redis_fields[] = {
    {.key = "url",
     .kind = FK_STRING,
     .off = offsetof(struct config_redis, url),
     .flag_off = NO_FLAG,
     .dump = dump_redis_url,
     .same = same_redis_url},
    SECRET("password_env", FK_SECRET_ENV, struct config_redis, password, "password", NO_FLAG),
    SECRET("password_file", FK_SECRET_FILE, struct config_redis, password, "password", NO_FLAG),
    NUM("timeout_ms", FK_UINT, struct config_redis, timeout_ms, 1, MS_MAX),
    {.key = "key_prefix",
     .kind = FK_STRING,
     .off = offsetof(struct config_redis, key_prefix),
     .max = CONFIG_KEY_PREFIX_MAX,
     .flag_off = NO_FLAG,
     .flags = F_RESTART},
    CUSTOM_LEAF("sentinels", parse_redis_sentinels, dump_redis_sentinels, same_redis_sentinels, 0),
    {.key = "master_name",
     .kind = FK_STRING,
     .off = offsetof(struct config_redis, master_name),
     .max = 200,
     .flag_off = NO_FLAG},
    {.key = "sentinel_username",
     .kind = FK_STRING,
     .off = offsetof(struct config_redis, sentinel_username),
     .max = 200,
     .flag_off = NO_FLAG},
    /* _env first: the group's dump is null when unset */
    SECRET("sentinel_password_env", FK_SECRET_ENV, struct config_redis, sentinel_password,
           "sentinel_password", NO_FLAG),
    SECRET("sentinel_password_file", FK_SECRET_FILE, struct config_redis, sentinel_password,
           "sentinel_password", NO_FLAG),
    SECRET("sentinel_password", FK_SECRET, struct config_redis, sentinel_password,
           "sentinel_password", offsetof(struct config_redis, sentinel_password_literal)),
    END,
};

static const struct field auth_fields[] = {
    NUM("timestamp_window_s", FK_UINT, struct config, timestamp_window_s, 1, 86400),
    END,
};

static const struct field app_fields[] = {
    {.key = "name",
     .kind = FK_NAME,
     .off = offsetof(struct config_app, name),
     .flag_off = NO_FLAG,
     .flags = F_REQUIRED},
    {.key = "auth",
     .kind = FK_ENUM,
     .off = offsetof(struct config_app, auth),
     .names = app_auth_names,
     .flag_off = NO_FLAG,
     .flags = F_REQUIRED},
    STR("secret_id", struct config_app, secret_id),
    SECRET("secret_key", FK_SECRET, struct config_app, secret_key, "secret_key",
           offsetof(struct config_app, secret_literal)),
    SECRET("secret_key_env", FK_SECRET_ENV, struct config_app, secret_key, "secret_key", NO_FLAG),
    SECRET("secret_key_file", FK_SECRET_FILE, struct config_app, secret_key, "secret_key", NO_FLAG),
    SECRET("token", FK_SECRET, struct config_app, token, "token",
           offsetof(struct config_app, secret_literal)),
    SECRET("token_env", FK_SECRET_ENV, struct config_app, token, "token", NO_FLAG),
    SECRET("token_file", FK_SECRET_FILE, struct config_app, token, "token", NO_FLAG),
    CUSTOM_LEAF("actions", parse_actions, dump_actions, same_actions, 0),
    CUSTOM_LEAF("business_ids", parse_business_ids, dump_business_ids, same_business_ids, 0),
    CUSTOM_LEAF("captcha_app_ids", parse_captcha_app_ids, dump_captcha_app_ids,
                same_captcha_app_ids, 0),
    END,
};

static const struct field captcha_app_fields[] = {
    {.key = "captcha_app_id",
     .kind = FK_U32,
     .off = offsetof(struct config_captcha_app, captcha_app_id),
     .max = UINT32_MAX,
     .flag_off = offsetof(struct config_captcha_app, has_captcha_app_id),
     .flags = F_REQUIRED},
    SECRET("app_secret_key", FK_SECRET, struct config_captcha_app, app_secret_key, "app_secret_key",
           offsetof(struct config_captcha_app, secret_literal)),
    SECRET("app_secret_key_env", FK_SECRET_ENV, struct config_captcha_app, app_secret_key,
           "app_secret_key", NO_FLAG),
    SECRET("app_secret_key_file", FK_SECRET_FILE, struct config_captcha_app, app_secret_key,
           "app_secret_key", NO_FLAG),
    ENUM("inject", struct config_captcha_app, inject_always, inject_names),
    END,
};

static const struct field limit_fields[] = {
    {.key = "name",
     .kind = FK_NAME,
     .off = offsetof(struct config_limit, name),
     .flag_off = NO_FLAG,
     .flags = F_REQUIRED},
    ENUM("scope", struct config_limit, scope, scope_names),
    CUSTOM_LEAF("businessId", parse_limit_business, dump_limit_match, same_limit_match, 0),
    CUSTOM_LEAF("sceneId", parse_limit_scene, dump_limit_match, same_limit_match, 0),
    {.key = "rate",
     .kind = FK_DOUBLE,
     .off = offsetof(struct config_limit, rate),
     .min = 0,
     .max = 1e9,
     .flag_off = NO_FLAG,
     .flags = F_REQUIRED | F_EXCL_MIN},
    {.key = "period_s",
     .kind = FK_DOUBLE,
     .off = offsetof(struct config_limit, period_s),
     .min = 0,
     .max = 86400,
     .flag_off = NO_FLAG,
     .flags = F_EXCL_MIN},
    NUM("burst", FK_DOUBLE, struct config_limit, burst, 1, 1e9),
    ENUM("mode", struct config_limit, shadow, mode_names),
    {.key = "app", .kind = FK_NAME, .off = offsetof(struct config_limit, app), .flag_off = NO_FLAG},
    END,
};

static const struct field audit_fields[] = {
    STR("stream", struct config_audit, stream),
    NUM("maxlen", FK_ULONG, struct config_audit, maxlen, 1, 1e10),
    STR("spool_dir", struct config_audit, spool_dir),
    STRN("file", struct config_audit, file),
    ENUM("pii", struct config_audit, pii_raw, pii_names),
    {.key = "pii_key_env",
     .kind = FK_SECRET_ENV,
     .off = offsetof(struct config_audit, pii_key),
     .group = "pii_key",
     .flag_off = NO_FLAG,
     .dump = dump_pii_key,
     .same = same_pii_key},
    SECRET("pii_key_file", FK_SECRET_FILE, struct config_audit, pii_key, "pii_key", NO_FLAG),
    ENUM("commit", struct config_audit, commit_durable, commit_names),
    NUM("min_replicas", FK_UINT, struct config_audit, min_replicas, 0, 64),
    END,
};

static const struct field metrics_fields[] = {
    NUM("flush_ms", FK_UINT, struct config_metrics, flush_ms, 10, MS_MAX),
    NUM("retention_s", FK_ULONG, struct config_metrics, retention_s, 60, 31622400),
    END,
};

#define PROFILE_U32(k, m, hi) \
    { \
        .key = k, .kind = FK_U32, .off = offsetof(struct config_pool_profile, m), .max = hi, \
        .flag_off = NO_FLAG, .flags = F_REQUIRED \
    }
static const struct field profile_fields[] = {
    PROFILE_U32("captchaType", captcha_type, UINT32_MAX),
    PROFILE_U32("disturbLevel", disturb_level, UINT32_MAX),
    PROFILE_U32("isHttps", is_https, 1),
    PROFILE_U32("clientType", client_type, 4),
    PROFILE_U32("accountType", account_type, 7),
    {.key = "businessId",
     .kind = FK_U32,
     .off = offsetof(struct config_pool_profile, business_id),
     .max = UINT32_MAX,
     .flag_off = offsetof(struct config_pool_profile, has_business_id)},
    {.key = "sceneId",
     .kind = FK_U32,
     .off = offsetof(struct config_pool_profile, scene_id),
     .max = UINT32_MAX,
     .flag_off = offsetof(struct config_pool_profile, has_scene_id)},
    NUM("size", FK_UINT, struct config_pool_profile, size, 1, 10000),
    END,
};

static int parse_profiles(struct ctx *x, json_t *v, void *base);

static const struct field pool_fields[] = {
    NUM("ttl_s", FK_UINT, struct config_pool, ttl_s, 1, 86400),
    LIST("profiles", parse_profiles, profile_fields, struct config_pool, profiles, n_profiles,
         struct config_pool_profile, 0),
    END,
};

static const struct field idempotency_fields[] = {
    NUM("ttl_s", FK_UINT, struct config, idempotency_ttl_s, 1, 86400),
    END,
};

static const struct field http_fields[] = {
    NUM("max_uri", FK_SIZE, struct config_http, max_uri, 256, 1048576),
    NUM("max_header_bytes", FK_SIZE, struct config_http, max_header_bytes, 1024, 1048576),
    NUM("max_body", FK_SIZE, struct config_http, max_body, 1024, 16777216),
    NUM("max_headers", FK_UINT, struct config_http, max_headers, 1, 1000),
    NUM("header_timeout_ms", FK_UINT, struct config_http, header_timeout_ms, 1, MS_MAX),
    NUM("body_timeout_ms", FK_UINT, struct config_http, body_timeout_ms, 1, MS_MAX),
    NUM("idle_timeout_ms", FK_UINT, struct config_http, idle_timeout_ms, 1, MS_MAX),
    /* 0: derived from RLIMIT_NOFILE at start (the default, and what the dump shows for it) */
    NUM("max_connections", FK_SIZE, struct config_http, max_connections, 0, 1048576),
    END,
};

/* ---- URLs -------------------------------------------------------------------------------- */

/* http(s)://host[:port][/path] into tls/host/port/path. -1 with *why set, or -1 with *why NULL
 * on OOM. */
static int parse_upstream_url(struct config_upstream *u, const char **why) {
    const char *rest, *slash;
    char *authority = NULL, *host = NULL;
    int port = -1, rc = -1;
    *why = NULL;
    if (strncmp(u->url, "https://", 8) == 0) {
        u->tls = 1;
        rest = u->url + 8;
    } else if (strncmp(u->url, "http://", 7) == 0) {
        u->tls = 0;
        rest = u->url + 7;
    } else {
        *why = "must start with https:// or http://";
        goto out;
    }
    if (strpbrk(rest, "?# \t")) {
        *why = "must not hold a query, a fragment or spaces";
        goto out;
    }
    slash = strchr(rest, '/');
    if (!(authority = strndup(rest, slash ? (size_t)(slash - rest) : strlen(rest)))) goto out;
    if (strchr(authority, '@') || split_host_port(authority, &host, &port, 0) != 0 || port == 0) {
        *why = "must be http(s)://host[:port][/path] with a port 1..65535";
        goto out;
    }
    if (port < 0) port = u->tls ? 443 : 80;
    if (set_str(&u->path, slash ? slash : "/")) goto out;
    free(u->host);
    u->host = host;
    host = NULL;
    u->port = port;
    rc = 0;
out:
    free(authority);
    free(host);
    return rc;
}

static int hexval(char ch) {
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

/* Percent-decodes [s, s + len) into a new string; NULL on a bad escape or OOM. */
static char *percent_decode(const char *s, size_t len) {
    char *out = secmem_alloc(len);
    size_t o = 0;
    if (!out) return NULL;
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '%') {
            int hi = i + 1 < len ? hexval(s[i + 1]) : -1;
            int lo = i + 2 < len ? hexval(s[i + 2]) : -1;
            if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) {
                secmem_free(out);
                return NULL;
            }
            out[o++] = (char)(hi * 16 + lo);
            i += 2;
        } else {
            out[o++] = s[i];
        }
    }
    out[o] = '\0';
    return out;
}

/* redis://[:password@]host[:port][/db] into host/port/db/password. */
static int parse_redis_url(struct config_redis *r, const char **why) {
    const char *rest, *at, *slash, *hostpart;
    char *authority = NULL, *host = NULL, *password = NULL;
    uint64_t db = 0;
    int port = -1, rc = -1;
    *why = NULL;
    if (strncmp(r->url, "redis://", 8) != 0) {
        *why = "must be redis://[:password@]host[:port][/db]";
        goto out;
    }
    rest = r->url + 8;
    if (strpbrk(rest, "?# \t")) {
        *why = "must not hold a query, a fragment or spaces";
        goto out;
    }
    slash = strchr(rest, '/');
    at = memchr(rest, '@', slash ? (size_t)(slash - rest) : strlen(rest));
    /* a password may hold '/' and '@' only percent-encoded */
    if (at) {
        if (rest[0] != ':' || at == rest + 1) {
            *why = "must give the password as redis://:password@host (user names are not "
                   "supported)";
            goto out;
        }
        if (!(password = percent_decode(rest + 1, (size_t)(at - rest - 1)))) {
            *why = "has a bad %-escape in the password";
            goto out;
        }
        if (strcmp(password, "***") == 0) {
            *why = "holds the password \"***\", the mask --check-config prints: give the "
                   "password itself, or use password_file or password_env";
            goto out;
        }
        hostpart = at + 1;
    } else {
        hostpart = rest;
    }
    if (!(authority = strndup(hostpart, slash ? (size_t)(slash - hostpart) : strlen(hostpart))))
        goto out;
    if (split_host_port(authority, &host, &port, 0) != 0 || port == 0) {
        *why = "must be redis://[:password@]host[:port][/db] with a port 1..65535";
        goto out;
    }
    if (slash && slash[1] && num_parse_range(slash + 1, strlen(slash + 1), 0, 65535, &db) != 0) {
        *why = "must end in /db, a database number 0..65535";
        goto out;
    }
    if (password && r->password) {
        *why = "holds a password, and so does password_env/password_file: give one";
        goto out;
    }
    if (password) {
        r->password = password;
        password = NULL;
    }
    free(r->host);
    r->host = host;
    host = NULL;
    r->port = port < 0 ? 6379 : port;
    r->db = (unsigned)db;
    rc = 0;
out:
    free(authority);
    free(host);
    secmem_free(password);
    return rc;
}

/* ---- sections ---------------------------------------------------------------------------- */

/* upstream.v3_url into v3_tls/v3_host/v3_port/v3_path/v3_sign_host, by the rules of url. */
static int parse_v3_url(struct ctx *x, struct config_upstream *u) {
    struct config_upstream t = {.url = u->v3_url};
    const char *why = NULL;
    char buf[300];
    if (parse_upstream_url(&t, &why) != 0) {
        free(t.host);
        free(t.path);
        push_key(x, "v3_url");
        char shown[200];
        if (!why) return oom(x);
        url_masked(u->v3_url, shown, sizeof shown);
        return fail(x, "%s; got %s", why, shown);
    }
    free(u->v3_host);
    free(u->v3_path);
    u->v3_tls = t.tls;
    u->v3_host = t.host;
    u->v3_port = t.port;
    u->v3_path = t.path;
    int v6 = strchr(u->v3_host, ':') != NULL;
    if (u->v3_port == (u->v3_tls ? 443 : 80))
        snprintf(buf, sizeof buf, "%s%s%s", v6 ? "[" : "", u->v3_host, v6 ? "]" : "");
    else
        snprintf(buf, sizeof buf, "%s%s%s:%d", v6 ? "[" : "", u->v3_host, v6 ? "]" : "",
                 u->v3_port);
    return set_str(&u->v3_sign_host, buf) ? oom(x) : 0;
}

/* upstream.resolver: one or more nameservers, "ip", "ip:port" or "[ipv6]:port", separated by
 * spaces or commas (what evdns_base_nameserver_ip_add takes). */
static int check_resolver(struct ctx *x, const char *s) {
    unsigned n = 0;
    while (*s) {
        size_t len = strcspn(s, " ,\t");
        char tok[NET_HOST_MAX + 8], host[NET_HOST_MAX];
        int port = -1;
        if (len == 0) {
            s++;
            continue;
        }
        if (len >= sizeof tok) return fail(x, "a nameserver address is too long");
        memcpy(tok, s, len);
        tok[len] = '\0';
        /* a bare IPv6 address has colons of its own */
        if (!net_is_ip_literal(tok) &&
            (net_split_host_port(tok, host, sizeof host, &port, 0) != 0 ||
             !net_is_ip_literal(host) || port == 0))
            return fail(x, "\"%s\" is not a nameserver address (ip, ip:port or [ipv6]:port)", tok);
        n++;
        s += len;
    }
    if (n == 0) return fail(x, "names no nameserver (null: the system's resolver)");
    return 0;
}

static int parse_upstream(struct ctx *x, json_t *v, void *base) {
    struct config *c = base;
    struct config_upstream *u = &c->upstream;
    const char *why = NULL;
    if (parse_object(x, v, upstream_fields, u)) return -1;
    if (parse_upstream_url(u, &why) != 0) {
        int rc;
        push_key(x, "url");
        char shown[200];
        if (why) url_masked(u->url, shown, sizeof shown);
        rc = why ? fail(x, "%s; got %s", why, shown) : oom(x);
        return rc;
    }
    if (!u->sign_host) {
        char buf[300];
        int is_default = u->port == (u->tls ? 443 : 80);
        int v6 = strchr(u->host, ':') != NULL;
        if (is_default)
            snprintf(buf, sizeof buf, "%s%s%s", v6 ? "[" : "", u->host, v6 ? "]" : "");
        else
            snprintf(buf, sizeof buf, "%s%s%s:%d", v6 ? "[" : "", u->host, v6 ? "]" : "", u->port);
        if (set_str(&u->sign_host, buf)) return oom(x);
    }
    if (u->resolver) {
        push_key(x, "resolver");
        if (check_resolver(x, u->resolver)) return -1;
        pop(x);
    }
    if (!u->secret_id) return fail(x, "missing required key \"secret_id_env\" (or secret_id)");
    if (!u->secret_key)
        return fail(x, "missing required key \"secret_key_env\" (or secret_key_file)");
    if (!(u->sign_key = sign_key_new(u->secret_key, strlen(u->secret_key)))) return oom(x);
    return parse_v3_url(x, u);
}

/* redis.sentinels: a non-empty list of "host:port" (IPv6 in brackets), at most 16. */
static int parse_redis_sentinels(struct ctx *x, json_t *v, void *base) {
    struct config_redis *r = base;
    size_t i;
    json_t *e;
    char got[80];
    if (!json_is_array(v) || json_array_size(v) == 0 || json_array_size(v) > 16) {
        if (json_is_array(v))
            snprintf(got, sizeof got, "%zu", json_array_size(v));
        else
            describe(v, got, sizeof got);
        return fail(x, "must be a list of 1 to 16 \"host:port\" Sentinel addresses; got %s", got);
    }
    if (!(r->sentinels = calloc(json_array_size(v), sizeof *r->sentinels))) return oom(x);
    json_array_foreach(v, i, e) {
        int port = 0;
        push_index(x, i);
        r->n_sentinels = i + 1; /* freed with the config, whatever follows */
        if (!json_is_string(e) ||
            split_host_port(json_string_value(e), &r->sentinels[i].host, &port, 1) != 0 ||
            port == 0) {
            describe(e, got, sizeof got);
            return fail(x, "must be \"host:port\" with a port 1..65535; got %s", got);
        }
        r->sentinels[i].port = port;
        pop(x);
    }
    return 0;
}

static int parse_redis(struct ctx *x, json_t *v, void *base) {
    struct config *c = base;
    const char *why = NULL;
    if (json_is_null(v)) return 0; /* same as no section: the embedded memory store */
    if (!(c->redis = calloc(1, sizeof *c->redis))) return oom(x);
    c->redis->port = 6379;
    c->redis->timeout_ms = 100;
    if (set_str(&c->redis->key_prefix, "capgate:")) return oom(x);
    if (parse_object(x, v, redis_fields, c->redis)) return -1;
    if (c->redis->n_sentinels && !c->redis->master_name)
        return fail(x, "missing required key \"master_name\" (the sentinels' name of the master)");
    if (!c->redis->n_sentinels && c->redis->master_name) {
        push_key(x, "master_name");
        return fail(x, "needs \"sentinels\": the addresses to ask for this master");
    }
    if (!c->redis->n_sentinels && (c->redis->sentinel_password || c->redis->sentinel_username))
        return fail(x, "sentinel_username/sentinel_password need \"sentinels\"");
    if (!c->redis->url) {
        if (!c->redis->n_sentinels)
            return fail(x, "missing required key \"url\" (or \"sentinels\" and \"master_name\")");
        /* the master's address comes from the sentinels; AUTH and SELECT as password / db 0 */
        if (set_str(&c->redis->host, c->redis->master_name)) return oom(x);
        return 0;
    }
    if (parse_redis_url(c->redis, &why) != 0) {
        int rc;
        push_key(x, "url");
        /* a url holding a password is not echoed back */
        if (!why)
            rc = oom(x);
        else if (strchr(c->redis->url, '@'))
            rc = fail(x, "%s", why);
        else {
            char shown[200];
            url_masked(c->redis->url, shown, sizeof shown);
            rc = fail(x, "%s; got %s", why, shown);
        }
        return rc;
    }
    return 0;
}

static int parse_auth(struct ctx *x, json_t *v, void *base) {
    return parse_object(x, v, auth_fields, base);
}

static int parse_apps(struct ctx *x, json_t *v, void *base) {
    struct config *c = base;
    size_t i;
    json_t *e;
    char got[80];
    if (!json_is_array(v)) {
        describe(v, got, sizeof got);
        return fail(x, "must be a list of apps; got %s", got);
    }
    if (json_array_size(v) && !(c->apps = calloc(json_array_size(v), sizeof *c->apps)))
        return oom(x);
    json_array_foreach(v, i, e) {
        struct config_app *app = &c->apps[i];
        c->n_apps = i + 1;
        app->actions = all_actions();
        app->business_any = 1;
        app->captcha_any = 1;
        push_index(x, i);
        if (parse_object(x, e, app_fields, app)) return -1;
        if (app->auth == CONFIG_AUTH_SIGNATURE) {
            if (app->token) return fail(x, "token keys are only for \"auth\": \"token\" apps");
            if (!app->secret_id) return fail(x, "missing required key \"secret_id\"");
            if (!app->secret_key)
                return fail(x, "missing required key \"secret_key_env\" (or secret_key_file)");
            if (!(app->sign_key = sign_key_new(app->secret_key, strlen(app->secret_key))))
                return oom(x);
        } else {
            if (app->secret_id || app->secret_key)
                return fail(x, "secret_id and secret_key keys are only for \"auth\": "
                               "\"signature\" apps");
            if (!app->token) return fail(x, "missing required key \"token_env\" (or token_file)");
        }
        pop(x);
    }
    /* Duplicates: reported at the later of the two. */
    for (i = 0; i < c->n_apps; i++) {
        const struct config_app *a = &c->apps[i];
        for (size_t j = 0; j < i; j++) {
            const struct config_app *b = &c->apps[j];
            const char *what = NULL;
            if (strcmp(a->name, b->name) == 0)
                what = "name";
            else if (a->secret_id && b->secret_id && strcmp(a->secret_id, b->secret_id) == 0)
                what = "secret_id";
            else if (a->token && b->token && strcmp(a->token, b->token) == 0)
                what = "token";
            if (what) {
                int rc;
                push_index(x, i);
                push_key(x, strcmp(what, "name") == 0 || strcmp(what, "secret_id") == 0 ? what
                                                                                        : "token");
                if (strcmp(what, "token") == 0)
                    rc = fail(x, "the same token as apps[%zu] (\"%s\")", j, b->name);
                else {
                    char shown[160];
                    shown_plain(strcmp(what, "name") == 0 ? a->name : a->secret_id, shown,
                                sizeof shown);
                    rc = fail(x, "duplicate %s \"%s\" (also apps[%zu])", what, shown, j);
                }
                return rc;
            }
        }
    }
    return 0;
}

static int parse_captcha_apps(struct ctx *x, json_t *v, void *base) {
    struct config *c = base;
    size_t i;
    json_t *e;
    char got[80];
    if (!json_is_array(v)) {
        describe(v, got, sizeof got);
        return fail(x, "must be a list of {\"captcha_app_id\", \"app_secret_key_env\"}; got %s",
                    got);
    }
    if (json_array_size(v) &&
        !(c->captcha_apps = calloc(json_array_size(v), sizeof *c->captcha_apps)))
        return oom(x);
    json_array_foreach(v, i, e) {
        struct config_captcha_app *a = &c->captcha_apps[i];
        c->n_captcha_apps = i + 1;
        push_index(x, i);
        if (parse_object(x, e, captcha_app_fields, a)) return -1;
        if (!a->app_secret_key)
            return fail(x, "missing required key \"app_secret_key_env\" (or "
                           "app_secret_key_file)");
        for (size_t j = 0; j < i; j++) {
            if (c->captcha_apps[j].captcha_app_id == a->captcha_app_id) {
                push_key(x, "captcha_app_id");
                return fail(x, "duplicate captcha_app_id %u (also captcha_apps[%zu])",
                            a->captcha_app_id, j);
            }
        }
        pop(x);
    }
    return 0;
}

static int parse_limits(struct ctx *x, json_t *v, void *base) {
    struct config *c = base;
    size_t i, scoped = 0;
    json_t *e;
    char got[80];
    if (!json_is_array(v)) {
        describe(v, got, sizeof got);
        return fail(x, "must be a list of limits; got %s", got);
    }
    if (json_array_size(v) && !(c->limits = calloc(json_array_size(v), sizeof *c->limits)))
        return oom(x);
    json_array_foreach(v, i, e) {
        struct config_limit *l = &c->limits[i];
        c->n_limits = i + 1;
        l->scope = CONFIG_SCOPE_PARAMS;
        l->business_any = l->scene_any = 1;
        l->period_s = 1;
        l->burst = 0; /* unset */
        push_index(x, i);
        if (parse_object(x, e, limit_fields, l)) return -1;
        if (l->scope != CONFIG_SCOPE_PARAMS &&
            (json_object_get(e, "businessId") || json_object_get(e, "sceneId"))) {
            push_key(x, json_object_get(e, "businessId") ? "businessId" : "sceneId");
            return fail(x, "only for rules without a scope (or \"scope\": \"params\")");
        }
        if (l->burst == 0) l->burst = l->rate < 1 ? 1 : l->rate;
        if (l->app && l->scope == CONFIG_SCOPE_GLOBAL) {
            push_key(x, "app");
            return fail(x, "only for rules with scope \"app\" or \"params\" (a global rule "
                           "counts every app's requests together)");
        }
        /* every one of them is a bucket of every request, and a request has a bounded few */
        if (l->scope != CONFIG_SCOPE_PARAMS && !l->app && ++scoped > CONFIG_SCOPED_LIMITS_MAX)
            return fail(x, "more than %d rules with scope \"app\" or \"global\"",
                        CONFIG_SCOPED_LIMITS_MAX);
        for (size_t j = 0; j < i; j++) {
            if (strcmp(c->limits[j].name, l->name) == 0) {
                push_key(x, "name");
                return fail(x, "duplicate name \"%s\" (also limits[%zu])", l->name, j);
            }
        }
        pop(x);
    }
    return 0;
}

static int parse_audit(struct ctx *x, json_t *v, void *base) {
    struct config *c = base;
    return parse_object(x, v, audit_fields, &c->audit);
}

static int parse_metrics(struct ctx *x, json_t *v, void *base) {
    struct config *c = base;
    return parse_object(x, v, metrics_fields, &c->metrics);
}

/* Equal in every parameter that names the pool (size aside). */
static int profile_same(const struct config_pool_profile *a, const struct config_pool_profile *b) {
    return a->captcha_type == b->captcha_type && a->disturb_level == b->disturb_level &&
           a->is_https == b->is_https && a->client_type == b->client_type &&
           a->account_type == b->account_type && a->has_business_id == b->has_business_id &&
           (!a->has_business_id || a->business_id == b->business_id) &&
           a->has_scene_id == b->has_scene_id && (!a->has_scene_id || a->scene_id == b->scene_id);
}

static int parse_profiles(struct ctx *x, json_t *v, void *base) {
    struct config_pool *pool = base;
    size_t i;
    json_t *e;
    char got[80];
    if (!json_is_array(v)) {
        describe(v, got, sizeof got);
        return fail(x, "must be a list of profiles; got %s", got);
    }
    if (json_array_size(v) &&
        !(pool->profiles = calloc(json_array_size(v), sizeof *pool->profiles)))
        return oom(x);
    json_array_foreach(v, i, e) {
        struct config_pool_profile *p = &pool->profiles[i];
        pool->n_profiles = i + 1;
        p->size = 10;
        push_index(x, i);
        if (parse_object(x, e, profile_fields, p)) return -1;
        if (p->client_type != 1 && p->client_type != 2 && p->client_type != 4) {
            push_key(x, "clientType");
            return fail(x, "must be one of 1, 2, 4; got %u", p->client_type);
        }
        if (p->account_type != 0 && p->account_type != 4 && p->account_type != 6 &&
            p->account_type != 7) {
            push_key(x, "accountType");
            return fail(x,
                        "must be one of 0, 4, 6, 7 (1 and 2 need a per-request appId); "
                        "got %u",
                        p->account_type);
        }
        /* two equal profiles would share one pool list: reported at the later of the two */
        for (size_t j = 0; j < i; j++) {
            if (profile_same(&pool->profiles[j], p))
                return fail(x, "the same profile as pool.profiles[%zu]", j);
        }
        pop(x);
    }
    return 0;
}

static int parse_pool(struct ctx *x, json_t *v, void *base) {
    struct config *c = base;
    return parse_object(x, v, pool_fields, &c->pool);
}

static int parse_idempotency(struct ctx *x, json_t *v, void *base) {
    return parse_object(x, v, idempotency_fields, base);
}

static const struct field tls_fields[] = {
    {.key = "cert_file",
     .kind = FK_STRING,
     .off = offsetof(struct config_tls, cert_file),
     .flag_off = NO_FLAG,
     .flags = F_REQUIRED},
    {.key = "key_file",
     .kind = FK_STRING,
     .off = offsetof(struct config_tls, key_file),
     .flag_off = NO_FLAG,
     .flags = F_REQUIRED},
    END,
};

static int parse_tls(struct ctx *x, json_t *v, void *base) {
    struct config *c = base;
    if (json_is_null(v)) return 0; /* as absent: what the dump shows without tls_listen */
    return parse_object(x, v, tls_fields, &c->tls);
}

static const struct field admin_fields[] = {
    SECRET("token_env", FK_SECRET_ENV, struct config_admin, token, "token", NO_FLAG),
    SECRET("token_file", FK_SECRET_FILE, struct config_admin, token, "token", NO_FLAG),
    BOOL("allow_unauthenticated", struct config_admin, allow_unauthenticated),
    END,
};

static int parse_admin(struct ctx *x, json_t *v, void *base) {
    struct config *c = base;
    return parse_object(x, v, admin_fields, &c->admin);
}

static int parse_http(struct ctx *x, json_t *v, void *base) {
    struct config *c = base;
    return parse_object(x, v, http_fields, &c->http);
}

/* The top level. F_RELOAD marks what a SIGHUP reload applies (README "Configuration", the table
 * of what SIGHUP applies); a key without it is logged as needing a restart when it changes. */
static const struct field config_fields[] = {
    CUSTOM_LEAF("listen", parse_listen, dump_listen, same_listen, 0),
    CUSTOM_LEAF("tls_listen", parse_tls_listen, dump_tls_listen, same_tls_listen, 0),
    CUSTOM_LEAF("tls", parse_tls, dump_tls, same_tls, F_RELOAD),
    CUSTOM_LEAF("trusted_proxies", parse_trusted_proxies, dump_trusted_proxies,
                same_trusted_proxies, F_RELOAD),
    CUSTOM_LEAF("admin_listen", parse_admin_listen, dump_admin_listen, same_admin_listen, 0),
    SECTION("admin", parse_admin, admin_fields, struct config, admin, 0),
    NUM("workers", FK_UINT, struct config, workers, 1, 64),
    {.key = "http_errors",
     .kind = FK_ENUM,
     .off = offsetof(struct config, http_errors_semantic),
     .names = http_errors_names,
     .flag_off = NO_FLAG,
     .flags = F_RELOAD},
    SECTION("upstream", parse_upstream, upstream_fields, struct config, upstream, F_REQUIRED),
    {.key = "redis",
     .kind = FK_CUSTOM,
     .parse = parse_redis,
     .shape = SHAPE_OBJECT_PTR,
     .sub = redis_fields,
     .off = offsetof(struct config, redis),
     .flag_off = NO_FLAG,
     .flags = F_RELOAD},
    {.key = "on_store_error",
     .kind = FK_ENUM,
     .off = offsetof(struct config, on_store_error),
     .names = store_error_names,
     .flag_off = NO_FLAG,
     .flags = F_RELOAD},
    {.key = "auth",
     .kind = FK_CUSTOM,
     .parse = parse_auth,
     .shape = SHAPE_OBJECT,
     .sub = auth_fields,
     .off = 0,
     .flag_off = NO_FLAG,
     .flags = F_RELOAD},
    LIST("apps", parse_apps, app_fields, struct config, apps, n_apps, struct config_app, F_RELOAD),
    LIST("limits", parse_limits, limit_fields, struct config, limits, n_limits, struct config_limit,
         F_RELOAD),
    LIST("captcha_apps", parse_captcha_apps, captcha_app_fields, struct config, captcha_apps,
         n_captcha_apps, struct config_captcha_app, F_RELOAD),
    SECTION("audit", parse_audit, audit_fields, struct config, audit, 0),
    SECTION("metrics", parse_metrics, metrics_fields, struct config, metrics, 0),
    SECTION("pool", parse_pool, pool_fields, struct config, pool, F_RELOAD),
    {.key = "idempotency",
     .kind = FK_CUSTOM,
     .parse = parse_idempotency,
     .shape = SHAPE_OBJECT,
     .sub = idempotency_fields,
     .off = 0,
     .flag_off = NO_FLAG,
     .flags = F_RELOAD},
    SECTION("http", parse_http, http_fields, struct config, http, 0),
    {.key = "demo",
     .kind = FK_BOOL,
     .off = offsetof(struct config, demo),
     .flag_off = NO_FLAG,
     .flags = F_RELOAD},
    {.key = "demo_app",
     .kind = FK_STRING_NULL,
     .off = offsetof(struct config, demo_app),
     .flag_off = NO_FLAG,
     .flags = F_RELOAD},
    {.key = "demo_tcaptcha_url",
     .kind = FK_STRING,
     .off = offsetof(struct config, demo_tcaptcha_url),
     .flag_off = NO_FLAG,
     .flags = F_RELOAD},
    {.key = "demo_captcha_app_id",
     .kind = FK_U32,
     .off = offsetof(struct config, demo_captcha_app_id),
     .max = UINT32_MAX,
     .flag_off = offsetof(struct config, has_demo_captcha_app_id),
     .flags = F_RELOAD},
    STR("instance", struct config, instance),
    {.key = "log_level",
     .kind = FK_CUSTOM,
     .parse = parse_log_level,
     .view = FK_STRING,
     .off = offsetof(struct config, log_level),
     .names = log_level_names,
     .flag_off = NO_FLAG,
     .flags = F_RELOAD},
    ENUM("log_format", struct config, log_json, log_format_names),
    END,
};

/* ---- loading ----------------------------------------------------------------------------- */

/* Every default in one place; docs/configuration.md mirrors it. */
static int config_defaults(struct config *c) {
    c->listen_port = 8080;
    c->admin_port = 8081;
    c->workers = 2;
    c->http_errors_semantic = 0;
    c->on_store_error = CONFIG_STORE_ERROR_LOCAL;
    c->timestamp_window_s = 300;
    c->idempotency_ttl_s = 300;
    c->demo = 0;

    c->upstream.signature_method = SIGN_HMAC_SHA256;
    c->upstream.post = 1;
    c->upstream.verify_tls = 1;
    c->upstream.connect_timeout_ms = 1000;
    c->upstream.timeout_ms = 3000;
    c->upstream.retries = 1;
    c->upstream.max_connections = 64;
    c->upstream.breaker_failures = 5;
    c->upstream.breaker_open_ms = 5000;
    c->upstream.resolve_interval_ms = 30000;

    c->audit.maxlen = 1000000;
    c->audit.pii_raw = 0;
    c->metrics.flush_ms = 1000;
    c->metrics.retention_s = 691200;
    c->pool.ttl_s = 60;

    c->http.max_uri = 8192;
    c->http.max_header_bytes = 16384;
    c->http.max_body = 65536;
    c->http.max_headers = 100;
    c->http.header_timeout_ms = 10000;
    c->http.body_timeout_ms = 10000;
    c->http.idle_timeout_ms = 60000;

    if (set_str(&c->listen_host, "127.0.0.1") || set_str(&c->admin_host, "127.0.0.1") ||
        set_str(&c->upstream.url, "https://csec.api.qcloud.com/v2/index.php") ||
        set_str(&c->upstream.v3_url, "https://captcha.tencentcloudapi.com/") ||
        set_str(&c->demo_tcaptcha_url, "https://turing.captcha.qcloud.com/TCaptcha.js") ||
        set_str(&c->upstream.region, "gz") || set_str(&c->audit.stream, "capgate:audit") ||
        set_str(&c->audit.spool_dir, "var/spool") || set_str(&c->log_level, "info"))
        return -1;
    return 0;
}

/* demo_app names a token app whenever demo is on: the /demo page calls the front API as it. */
static int check_demo(struct ctx *x, struct config *c) {
    const struct config_app *app = NULL;
    if (!c->demo) return 0;
    for (size_t i = 0; i < c->n_apps && !app; i++) {
        const struct config_app *a = &c->apps[i];
        if (c->demo_app ? strcmp(a->name, c->demo_app) == 0 : a->auth == CONFIG_AUTH_TOKEN) app = a;
    }
    if (!c->demo_app) {
        if (!app) {
            push_key(x, "demo");
            return fail(x, "is true but no app has \"auth\": \"token\"; the /demo page calls "
                           "the front API as a token app");
        }
        return set_str(&c->demo_app, app->name) ? oom(x) : 0;
    }
    push_key(x, "demo_app");
    char shown[160];
    shown_plain(c->demo_app, shown, sizeof shown);
    if (!app) return fail(x, "no app is named \"%s\"", shown);
    if (app->auth != CONFIG_AUTH_TOKEN)
        return fail(x, "app \"%s\" authenticates by signature; the /demo page needs a token app",
                    shown);
    pop(x);
    return 0;
}

/* A rule's "app" names an app of apps[] (a misspelt name would silently limit nobody), and the
 * scope app and global rules one app's request falls under stay within CONFIG_SCOPED_LIMITS_MAX
 * (the unnamed ones were counted by parse_limits). */
static int check_limit_apps(struct ctx *x, struct config *c) {
    size_t unnamed = 0;
    for (size_t i = 0; i < c->n_limits; i++)
        if (c->limits[i].scope != CONFIG_SCOPE_PARAMS && !c->limits[i].app) unnamed++;
    for (size_t i = 0; i < c->n_limits; i++) {
        const struct config_limit *l = &c->limits[i];
        size_t named = 0, j;
        if (!l->app) continue;
        for (j = 0; j < c->n_apps && strcmp(c->apps[j].name, l->app) != 0; j++) {
        }
        push_key(x, "limits");
        push_index(x, i);
        push_key(x, "app");
        if (j == c->n_apps) return fail(x, "no app is named \"%s\"", l->app);
        for (j = 0; j < c->n_limits; j++)
            if (c->limits[j].scope == CONFIG_SCOPE_APP && c->limits[j].app &&
                strcmp(c->limits[j].app, l->app) == 0)
                named++;
        if (unnamed + named > CONFIG_SCOPED_LIMITS_MAX)
            return fail(x,
                        "app \"%s\" falls under %zu rules with scope \"app\" or \"global\"; "
                        "the limit is %d",
                        l->app, unnamed + named, CONFIG_SCOPED_LIMITS_MAX);
        pop(x);
        pop(x);
        pop(x);
    }
    return 0;
}

/* At least one front listener; tls_listen and tls go together, and the certificate loads (so
 * --check-config and a SIGHUP reload refuse a bad one, naming why). */
static int check_listeners(struct ctx *x, struct config *c) {
    char err[512];
    SSL_CTX *ctx;
    if (!c->listen_host && !c->tls_listen_host) {
        push_key(x, "listen");
        return fail(x, "is null and tls_listen is not set: the front needs at least one "
                       "listener");
    }
    if (!c->tls_listen_host && c->tls.cert_file) {
        push_key(x, "tls");
        return fail(x, "is set but tls_listen is not; set tls_listen to serve HTTPS");
    }
    if (!c->tls_listen_host) return 0;
    if (!c->tls.cert_file) {
        push_key(x, "tls_listen");
        return fail(x, "needs \"tls\": {\"cert_file\": ..., \"key_file\": ...}");
    }
    if (c->demo && !c->listen_host) {
        push_key(x, "demo");
        return fail(x, "is true but listen is null; the /demo page calls the plain front "
                       "listener");
    }
    tls_global_init();
    if (!(ctx = tls_server_ctx_new(c->tls.cert_file, c->tls.key_file, err, sizeof err))) {
        push_key(x, "tls");
        return fail(x, "%s", err);
    }
    SSL_CTX_free(ctx);
    return 0;
}

/* An address only this host can reach: 127.0.0.0/8, ::1 or the name localhost. */
static int host_is_loopback(const char *host) {
    struct in_addr a4;
    struct in6_addr a6;
    if (strcmp(host, "localhost") == 0) return 1;
    if (inet_pton(AF_INET, host, &a4) == 1) return (ntohl(a4.s_addr) >> 24) == 127;
    if (inet_pton(AF_INET6, host, &a6) == 1) return IN6_IS_ADDR_LOOPBACK(&a6);
    return 0;
}

/* The admin listener shows client IPs (/admin/audit) and the config: reachable from other hosts
 * it needs a token, unless the file says on purpose that it does not. */
static int check_admin(struct ctx *x, struct config *c) {
    if (c->admin.token || c->admin.allow_unauthenticated || host_is_loopback(c->admin_host))
        return 0;
    char shown[4 * NET_HOST_MAX + 1];
    shown_plain(c->admin_host, shown, sizeof shown); /* as written, control bytes as \xNN */
    push_key(x, "admin_listen");
    return fail(x,
                "%s is not a loopback address and admin has no token: set admin.token_file "
                "(or admin.token_env), or \"admin\": {\"allow_unauthenticated\": true}",
                shown);
}

/* Settings that depend on the process rather than the file. */
static int config_finish(struct ctx *x, struct config *c) {
    if (!c->instance) {
        char host[256], buf[300];
        if (gethostname(host, sizeof host) != 0) snprintf(host, sizeof host, "localhost");
        host[sizeof host - 1] = '\0';
        snprintf(buf, sizeof buf, "%s:%ld", host, (long)getpid());
        if (set_str(&c->instance, buf)) return oom(x);
    }
    if (!c->audit.pii_raw && !c->audit.pii_key) {
        if (!(c->audit.pii_key = secmem_alloc(PII_KEY_BYTES))) return oom(x);
        c->audit.pii_key_len = PII_KEY_BYTES;
        c->audit.pii_key_generated = 1;
        if (RAND_bytes((unsigned char *)c->audit.pii_key, PII_KEY_BYTES) != 1)
            return fail(x, "cannot generate a PII key: RAND_bytes failed");
    } else if (c->audit.pii_key && !c->audit.pii_key_generated) {
        c->audit.pii_key_len = strlen(c->audit.pii_key);
    }
    return 0;
}

static int load_text(const char *json_text, const char *name, const char *base_dir,
                     struct config **out, char *err, size_t errlen) {
    struct ctx x = {
        .text = json_text, .name = name, .base_dir = base_dir, .err = err, .errlen = errlen};
    struct config *c = NULL;
    json_t *root = NULL;
    json_error_t jerr;
    int rc = -1;

    if (errlen) err[0] = '\0';
    *out = NULL;
    if (!(root = json_loads(json_text, JSON_REJECT_DUPLICATES, &jerr))) {
        /* jansson's text ends in "near '<the text at the error>'", which can be a secret
         * written in the file: the line and column say where, without quoting it. Only a
         * duplicate key keeps it, as it names the key. */
        char *near = strstr(jerr.text, " near '");
        char text[4 * sizeof jerr.text + 1];
        if (near && strncmp(jerr.text, "duplicate object key", 20) != 0) *near = '\0';
        /* the duplicate key is echoed with its control bytes as \xNN, like every key path */
        shown_plain(jerr.text, text, sizeof text);
        if (errlen)
            snprintf(err, errlen, "%s:%d:%d: syntax error: %s", name, jerr.line < 1 ? 1 : jerr.line,
                     jerr.column < 1 ? 1 : jerr.column, text);
        goto out;
    }
    if (!(c = calloc(1, sizeof *c)) || config_defaults(c) != 0 || set_str(&c->path, name)) {
        oom(&x);
        goto out;
    }
    x.root = c;
    /* the note of a --format json dump, not a setting: checked, then out of the tables' way */
    json_t *note = json_object_get(root, "_masked");
    if (note) {
        push_key(&x, "_masked");
        if (parse_masked(&x, note, c) != 0) goto out;
        pop(&x);
        json_object_del(root, "_masked");
    }
    if (parse_object(&x, root, config_fields, c) != 0) goto out;
    if (resolve_path(&x, &c->upstream.ca_file) || resolve_path(&x, &c->tls.cert_file) ||
        resolve_path(&x, &c->tls.key_file) || resolve_path(&x, &c->audit.spool_dir) ||
        resolve_path(&x, &c->audit.file)) {
        oom(&x);
        goto out;
    }
    if (check_demo(&x, c) != 0) goto out;
    if (check_limit_apps(&x, c) != 0) goto out;
    if (check_listeners(&x, c) != 0) goto out;
    if (check_admin(&x, c) != 0) goto out;
    if (config_finish(&x, c) != 0) goto out;
    *out = c;
    c = NULL;
    rc = 0;
out:
    json_decref(root);
    config_free(c);
    return rc;
}

int config_load_string(const char *json_text, const char *name, struct config **out, char *err,
                       size_t errlen) {
    return load_text(json_text, name, NULL, out, err, errlen);
}

int config_load(const char *path, struct config **out, char *err, size_t errlen) {
    char *text = NULL, *dir = NULL;
    size_t len = 0;
    int rc = -1;
    *out = NULL;
    if (read_file(path, MAX_FILE_BYTES, &text, &len) != 0) {
        if (errlen)
            snprintf(err, errlen, "%s: cannot read: %s", path,
                     errno == EFBIG ? "larger than 4 MiB" : strerror(errno));
        goto out;
    }
    if (strlen(text) != len) {
        if (errlen) snprintf(err, errlen, "%s: holds a NUL byte", path);
        goto out;
    }
    /* The file's directory, made absolute with the working directory at load time, so every
     * path resolved under it is absolute: the dump of the config (--check-config) then names
     * the same files wherever it is loaded from. */
    const char *slash = strrchr(path, '/');
    if (slash && path[0] == '/') {
        dir = strndup(path, slash == path ? 1 : (size_t)(slash - path));
    } else {
        char cwd[4096];
        if (!getcwd(cwd, sizeof cwd)) {
            if (errlen)
                snprintf(err, errlen, "%s: cannot resolve its directory: %s", path,
                         strerror(errno));
            goto out;
        }
        size_t n = strlen(cwd) + 1 + (slash ? (size_t)(slash - path) : 0) + 1;
        if ((dir = malloc(n)))
            snprintf(dir, n, "%s%s%.*s", cwd, slash ? "/" : "", slash ? (int)(slash - path) : 0,
                     path);
    }
    if (!dir) {
        if (errlen) snprintf(err, errlen, "out of memory");
        goto out;
    }
    rc = load_text(text, path, dir, out, err, errlen);
out:
    free(dir);
    /* the file's text may hold literal secrets */
    wipe_free(text, len);
    return rc;
}

void config_free(struct config *c) {
    if (!c) return;
    for (size_t i = 0; i < c->n_secret_src; i++) {
        free(c->secret_src[i].path);
        free(c->secret_src[i].key);
        free(c->secret_src[i].ref);
    }
    free(c->secret_src);
    free(c->path);
    free(c->listen_host);
    free(c->tls_listen_host);
    free(c->tls.cert_file);
    free(c->tls.key_file);
    free(c->trusted_proxies);
    free(c->admin_host);
    free(c->upstream.url);
    free(c->upstream.host);
    free(c->upstream.path);
    free(c->upstream.sign_host);
    free(c->upstream.v3_url);
    free(c->upstream.v3_host);
    free(c->upstream.v3_path);
    free(c->upstream.v3_sign_host);
    free(c->upstream.secret_id);
    secmem_free(c->upstream.secret_key);
    sign_key_free(c->upstream.sign_key);
    secmem_free(c->admin.token);
    free(c->upstream.region);
    free(c->upstream.ca_file);
    free(c->upstream.resolver);
    if (c->redis) {
        free(c->redis->url);
        free(c->redis->host);
        secmem_free(c->redis->password);
        free(c->redis->key_prefix);
        for (size_t i = 0; i < c->redis->n_sentinels; i++) free(c->redis->sentinels[i].host);
        free(c->redis->sentinels);
        free(c->redis->master_name);
        free(c->redis->sentinel_username);
        secmem_free(c->redis->sentinel_password);
        free(c->redis);
    }
    for (size_t i = 0; i < c->n_apps; i++) {
        free(c->apps[i].name);
        free(c->apps[i].secret_id);
        secmem_free(c->apps[i].secret_key);
        sign_key_free(c->apps[i].sign_key);
        secmem_free(c->apps[i].token);
        free(c->apps[i].business_ids);
        free(c->apps[i].captcha_app_ids);
    }
    free(c->apps);
    for (size_t i = 0; i < c->n_captcha_apps; i++) secmem_free(c->captcha_apps[i].app_secret_key);
    free(c->captcha_apps);
    for (size_t i = 0; i < c->n_limits; i++) {
        free(c->limits[i].name);
        free(c->limits[i].app);
    }
    free(c->limits);
    free(c->audit.stream);
    free(c->audit.spool_dir);
    free(c->audit.file);
    secmem_free(c->audit.pii_key);
    free(c->pool.profiles);
    free(c->demo_app);
    free(c->demo_tcaptcha_url);
    free(c->instance);
    free(c->log_level);
    free(c);
}

/* ---- the tables, read back: the masked dump, the reload diff, the list of keys ------------ */

/* A secret group (secret_key, secret_key_env, secret_key_file) is one value: its first field in
 * the table stands for it, under the group's name. */
static int group_follower(const struct field *table, const struct field *f) {
    if (!f->group) return 0;
    for (const struct field *g = table; g < f; g++)
        if (g->group && strcmp(g->group, f->group) == 0) return 1;
    return 0;
}

static const char *field_name(const struct field *f) {
    return f->group ? f->group : f->key;
}

static int is_secret(const struct field *f) {
    return (f->kind == FK_SECRET || f->kind == FK_SECRET_ENV || f->kind == FK_SECRET_FILE) &&
           !(f->flags & F_SHOWN);
}

static int dump_object(const struct field *table, const char *base, json_t **out);

/* The loadable form of the secret group led by f (the current key path names the group): under
 * the key it came from, the variable's name or the file's path; a literal as "***" (noted) or,
 * for a secret id, as it is. Nothing for an absent one. 0/-1 (OOM). */
static int dump_secret_src(const struct field *f, const char *base, json_t *o) {
    char where[256];
    const struct config_secret_src *src = NULL;
    if (!*(char *const *)(base + f->off)) return 0;
    path_format(dump_cx->path, dump_cx->depth, where, sizeof where);
    for (size_t i = 0; i < dump_cx->c->n_secret_src && !src; i++)
        if (strcmp(dump_cx->c->secret_src[i].path, where) == 0) src = &dump_cx->c->secret_src[i];
    if (!src) return 0; /* not from the file: a generated PII key, a password in the url */
    if (src->ref) return json_object_set_new(o, src->key, json_string(src->ref));
    if (!is_secret(f))
        return json_object_set_new(o, src->key, json_string(*(char *const *)(base + f->off)));
    if (dump_note_masked()) return -1;
    return json_object_set_new(o, src->key, json_string(MASK));
}

/* f's value in the struct at base as JSON; *out NULL: left out (an absent optional id, a rule's
 * ids outside scope params). 0/-1 (OOM). */
static int dump_value(const struct field *f, const char *base, json_t **out) {
    enum field_kind kind = f->kind == FK_CUSTOM ? f->view : f->kind;
    const char *at = base + f->off;
    *out = NULL;
    if (f->dump) return f->dump(f, base, out);
    switch (f->shape) {
    case SHAPE_OBJECT: return dump_object(f->sub, at, out);
    case SHAPE_OBJECT_PTR: {
        const char *p = *(char *const *)at;
        if (!p) return (*out = json_null()) ? 0 : -1;
        return dump_object(f->sub, p, out);
    }
    case SHAPE_LIST: {
        const char *arr = *(char *const *)at;
        size_t n = *(const size_t *)(base + f->count_off);
        json_t *list = json_array(), *e;
        if (!list) return -1;
        for (size_t i = 0; i < n; i++) {
            dump_push(NULL, i);
            int bad =
                dump_object(f->sub, arr + i * f->elem_size, &e) || json_array_append_new(list, e);
            dump_pop();
            if (bad) {
                json_decref(list);
                return -1;
            }
        }
        *out = list;
        return 0;
    }
    case SHAPE_LEAF: break;
    }
    switch (kind) {
    case FK_STRING:
    case FK_NAME:
    case FK_STRING_NULL: {
        const char *v = *(char *const *)at;
        *out = v ? json_string(v) : json_null();
        break;
    }
    case FK_UINT: *out = json_integer(*(const unsigned *)at); break;
    case FK_U32:
        if (f->flag_off != NO_FLAG && !*(const int *)(base + f->flag_off)) return 0;
        *out = json_integer(*(const uint32_t *)at);
        break;
    case FK_ULONG: *out = json_integer((json_int_t) * (const unsigned long *)at); break;
    case FK_SIZE: *out = json_integer((json_int_t) * (const size_t *)at); break;
    case FK_DOUBLE: *out = json_real(*(const double *)at); break;
    case FK_BOOL: *out = json_boolean(*(const int *)at); break;
    case FK_ENUM: *out = json_string(f->names[*(const int *)at]); break;
    case FK_SECRET:
    case FK_SECRET_ENV:
    case FK_SECRET_FILE: {
        const char *v = *(char *const *)at;
        *out = !v ? json_null() : json_string(is_secret(f) ? MASK : v);
        break;
    }
    case FK_NONE:
    case FK_CUSTOM:
        return 0; /* a custom field with neither view nor hooks: not shown (test_config sees it) */
    }
    return *out ? 0 : -1;
}

/* Can the file say null for f? (Else a null value is left out of the dump, as it is absent from
 * the file: a token app's secret_id, a signature app's token.) A dump hook decides for itself:
 * null is shown, a NULL result left out. */
static int null_ok(const struct field *f) {
    return f->dump || f->kind == FK_STRING_NULL || f->kind == FK_SECRET_ENV ||
           f->kind == FK_SECRET_FILE || f->shape == SHAPE_OBJECT_PTR;
}

static int dump_object(const struct field *table, const char *base, json_t **out) {
    json_t *o = json_object(), *v;
    if (!o) return -1;
    for (const struct field *f = table; f->key; f++) {
        if (group_follower(table, f)) continue;
        if (dump_cx && f->group) { /* the loadable dump: a secret group under its source */
            dump_push(f->group, 0);
            int bad = dump_secret_src(f, base, o);
            dump_pop();
            if (bad) goto fail;
            continue;
        }
        dump_push(field_name(f), 0);
        int bad = dump_value(f, base, &v);
        dump_pop();
        if (bad) goto fail;
        if (!v) continue;
        if (json_is_null(v) && !null_ok(f)) {
            json_decref(v);
            continue;
        }
        if (json_object_set_new(o, field_name(f), v)) goto fail;
    }
    *out = o;
    return 0;
fail:
    json_decref(o);
    return -1;
}

char *config_dump_masked(const struct config *c) {
    json_t *root = NULL;
    char *out;
    if (dump_object(config_fields, (const char *)c, &root)) return NULL;
    out = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(root);
    return out;
}

char *config_dump_json(const struct config *c) {
    struct dump_cx cx = {.c = c, .masked = json_array()};
    json_t *body = NULL, *root = json_object();
    char *out = NULL;
    if (!cx.masked || !root) goto out;
    dump_cx = &cx;
    int bad = dump_object(config_fields, (const char *)c, &body);
    dump_cx = NULL;
    /* the note first, where a reader sees it */
    if (bad || json_object_set(root, "_masked", cx.masked) || json_object_update(root, body))
        goto out;
    out = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
out:
    json_decref(cx.masked);
    json_decref(body);
    json_decref(root);
    return out;
}

static int same_object(const struct field *table, const char *a, const char *b);

/* 1 when f holds the same value in the structs at a and b. */
static int same_value(const struct field *f, const char *a, const char *b) {
    enum field_kind kind = f->kind == FK_CUSTOM ? f->view : f->kind;
    const char *pa = a + f->off, *pb = b + f->off;
    if (f->same) return f->same(f, a, b);
    switch (f->shape) {
    case SHAPE_OBJECT: return same_object(f->sub, pa, pb);
    case SHAPE_OBJECT_PTR: {
        const char *x = *(char *const *)pa, *y = *(char *const *)pb;
        if (!x || !y) return x == y;
        return same_object(f->sub, x, y);
    }
    case SHAPE_LIST: {
        const char *x = *(char *const *)pa, *y = *(char *const *)pb;
        size_t n = *(const size_t *)(a + f->count_off);
        if (n != *(const size_t *)(b + f->count_off)) return 0;
        for (size_t i = 0; i < n; i++)
            if (!same_object(f->sub, x + i * f->elem_size, y + i * f->elem_size)) return 0;
        return 1;
    }
    case SHAPE_LEAF: break;
    }
    switch (kind) {
    case FK_STRING:
    case FK_NAME:
    case FK_STRING_NULL:
    case FK_SECRET:
    case FK_SECRET_ENV:
    case FK_SECRET_FILE: return same_str(*(char *const *)pa, *(char *const *)pb);
    case FK_UINT: return *(const unsigned *)pa == *(const unsigned *)pb;
    case FK_U32:
        if (f->flag_off != NO_FLAG) {
            int fa = *(const int *)(a + f->flag_off), fb = *(const int *)(b + f->flag_off);
            if (fa != fb) return 0;
            if (!fa) return 1;
        }
        return *(const uint32_t *)pa == *(const uint32_t *)pb;
    case FK_ULONG: return *(const unsigned long *)pa == *(const unsigned long *)pb;
    case FK_SIZE: return *(const size_t *)pa == *(const size_t *)pb;
    case FK_DOUBLE: return *(const double *)pa == *(const double *)pb;
    case FK_BOOL:
    case FK_ENUM: return *(const int *)pa == *(const int *)pb;
    case FK_NONE:
    case FK_CUSTOM: break;
    }
    return 1; /* nothing to compare (test_config sees a change that is never reported) */
}

static int same_object(const struct field *table, const char *a, const char *b) {
    for (const struct field *f = table; f->key; f++)
        if (!group_follower(table, f) && !same_value(f, a, b)) return 0;
    return 1;
}

struct diff {
    int applied;
    config_change_fn fn;
    void *arg;
    size_t count; /* changes reported */
    size_t seen;  /* changes found, reported or not (a list's "reordered") */
};

/* reload: whether a reload applies this change; only those of the pass's kind are reported. */
static void diff_report(struct diff *d, const char *path, const char *detail, int reload) {
    d->seen++;
    if (!reload != !d->applied) return;
    d->count++;
    d->fn(path, detail, d->applied, d->arg);
}

/* f's value as text for the log: a string as is, anything else as compact JSON; "absent". */
static void value_text(const struct field *f, const char *base, char *buf, size_t len) {
    json_t *v = NULL;
    char *s = NULL;
    if (dump_value(f, base, &v) != 0)
        snprintf(buf, len, "?");
    else if (!v)
        snprintf(buf, len, "absent");
    else if (json_is_string(v))
        snprintf(buf, len, "%s", json_string_value(v));
    else if ((s = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT)))
        snprintf(buf, len, "%s", s);
    else
        snprintf(buf, len, "?");
    free(s);
    json_decref(v);
}

static void diff_object(struct diff *d, const struct field *table, const char *a, const char *b,
                        const char *prefix, int reload);

/* The name of a list element whose fields have a "name" (apps, limits), or NULL. */
static const char *element_name(const struct field *sub, const char *elem) {
    for (const struct field *f = sub; f->key; f++)
        if (f->kind == FK_NAME && strcmp(f->key, "name") == 0)
            return *(char *const *)(elem + f->off);
    return NULL;
}

/* Lists of named elements are matched by name (added, removed, changed; the same elements in
 * another order: "reordered", which matters to limits), others by index. Called when the lists
 * differ. */
static void diff_list(struct diff *d, const struct field *f, const char *a, const char *b,
                      const char *path, int reload) {
    const char *x = *(char *const *)(a + f->off), *y = *(char *const *)(b + f->off);
    size_t nx = *(const size_t *)(a + f->count_off), ny = *(const size_t *)(b + f->count_off);
    size_t reported = d->seen;
    char where[CONFIG_NAME_MAX + 300];
    int named = (nx && element_name(f->sub, x)) || (ny && element_name(f->sub, y));
    for (size_t j = 0; j < ny; j++) {
        const char *e = y + j * f->elem_size, *o = NULL;
        if (named) {
            for (size_t i = 0; i < nx && !o; i++)
                if (same_str(element_name(f->sub, x + i * f->elem_size), element_name(f->sub, e)))
                    o = x + i * f->elem_size;
            snprintf(where, sizeof where, "%s[%s]", path, element_name(f->sub, e));
        } else {
            if (j < nx) o = x + j * f->elem_size;
            snprintf(where, sizeof where, "%s[%zu]", path, j);
        }
        if (!o)
            diff_report(d, where, "added", reload);
        else if (!same_object(f->sub, o, e))
            diff_report(d, where, "changed", reload);
    }
    for (size_t i = 0; i < nx; i++) {
        const char *o = x + i * f->elem_size;
        int kept = 0;
        if (named) {
            for (size_t j = 0; j < ny && !kept; j++)
                kept =
                    same_str(element_name(f->sub, o), element_name(f->sub, y + j * f->elem_size));
            snprintf(where, sizeof where, "%s[%s]", path, element_name(f->sub, o));
        } else {
            kept = i < ny;
            snprintf(where, sizeof where, "%s[%zu]", path, i);
        }
        if (!kept) diff_report(d, where, "removed", reload);
    }
    if (d->seen == reported) diff_report(d, path, "reordered", reload);
}

static void diff_field(struct diff *d, const struct field *f, const char *a, const char *b,
                       const char *path, int reload) {
    char was[128], now[128], detail[300];
    if (same_value(f, a, b)) return;
    if (f->flags & F_RESTART) reload = 0;
    switch (f->shape) {
    case SHAPE_OBJECT: diff_object(d, f->sub, a + f->off, b + f->off, path, reload); return;
    case SHAPE_OBJECT_PTR: {
        const char *x = *(char *const *)(a + f->off), *y = *(char *const *)(b + f->off);
        if (x && y)
            diff_object(d, f->sub, x, y, path, reload);
        else /* the section's presence picks a backend: a restart */
            diff_report(d, path, x ? "removed" : "added", 0);
        return;
    }
    case SHAPE_LIST: diff_list(d, f, a, b, path, reload); return;
    case SHAPE_LEAF: break;
    }
    if (is_secret(f)) {
        diff_report(d, path, "changed", reload);
        return;
    }
    value_text(f, a, was, sizeof was);
    value_text(f, b, now, sizeof now);
    snprintf(detail, sizeof detail, "%s -> %s", was, now);
    diff_report(d, path, detail, reload);
}

static void diff_object(struct diff *d, const struct field *table, const char *a, const char *b,
                        const char *prefix, int reload) {
    char path[256];
    for (const struct field *f = table; f->key; f++) {
        if (group_follower(table, f)) continue;
        snprintf(path, sizeof path, "%s.%s", prefix, field_name(f));
        diff_field(d, f, a, b, path, reload);
    }
}

size_t config_diff(const struct config *a, const struct config *b, int applied, config_change_fn fn,
                   void *arg) {
    struct diff d = {.applied = !!applied, .fn = fn, .arg = arg};
    for (const struct field *f = config_fields; f->key; f++) {
        if (group_follower(config_fields, f)) continue;
        diff_field(&d, f, (const char *)a, (const char *)b, field_name(f), !!(f->flags & F_RELOAD));
    }
    return d.count;
}

static void keys_walk(const struct field *table, const char *prefix, const struct field *top,
                      void (*fn)(const struct config_key *k, void *arg), void *arg) {
    struct config_key k;
    for (const struct field *f = table; f->key; f++) {
        const struct field *t = top ? top : f;
        if (group_follower(table, f)) continue;
        memset(&k, 0, sizeof k);
        snprintf(k.path, sizeof k.path, "%s%s", prefix, field_name(f));
        if (f->shape != SHAPE_LEAF) {
            char sub[sizeof k.path + 4];
            snprintf(sub, sizeof sub, "%s%s", k.path, f->shape == SHAPE_LIST ? "[]." : ".");
            keys_walk(f->sub, sub, t, fn, arg);
            continue;
        }
        k.top = field_name(t);
        k.reload = !!(t->flags & F_RELOAD) && !(f->flags & F_RESTART);
        k.secret = is_secret(f);
        k.env_file = f->group != NULL;
        k.names = f->names;
        k.min = f->min;
        k.max = f->max;
        fn(&k, arg);
    }
}

void config_keys(void (*fn)(const struct config_key *k, void *arg), void *arg) {
    keys_walk(config_fields, "", NULL, fn, arg);
}

/* ---- lookups and warnings ---------------------------------------------------------------- */

const struct config_captcha_app *config_find_captcha_app(const struct config *c, uint32_t id) {
    for (size_t i = 0; i < c->n_captcha_apps; i++)
        if (c->captcha_apps[i].captcha_app_id == id) return &c->captcha_apps[i];
    return NULL;
}

const struct config_app *config_find_app_by_secret_id(const struct config *c,
                                                      const char *secret_id) {
    if (!secret_id) return NULL;
    for (size_t i = 0; i < c->n_apps; i++) {
        const struct config_app *a = &c->apps[i];
        if (a->auth == CONFIG_AUTH_SIGNATURE && strcmp(a->secret_id, secret_id) == 0) return a;
    }
    return NULL;
}

const struct config_app *config_find_app_by_token(const struct config *c, const char *token,
                                                  size_t len) {
    const struct config_app *found = NULL;
    if (!token || len == 0) return NULL;
    /* Every token app is compared, so the time taken does not depend on which one matched. */
    for (size_t i = 0; i < c->n_apps; i++) {
        const struct config_app *a = &c->apps[i];
        if (a->auth != CONFIG_AUTH_TOKEN) continue;
        if (strlen(a->token) == len && CRYPTO_memcmp(a->token, token, len) == 0 && !found)
            found = a;
    }
    return found;
}

void config_warnings(const struct config *c, void (*warn)(const char *msg, void *arg), void *arg) {
    char msg[512];
    if (!c->upstream.verify_tls)
        warn("upstream.verify_tls is false: the upstream's certificate is not checked", arg);
    if (!c->upstream.tls)
        warn("upstream.url is plain http: the signed requests travel unencrypted", arg);
    if (c->upstream.secret_literal)
        warn("upstream.secret_key is written in the config file: use secret_key_env or "
             "secret_key_file outside local development",
             arg);
    if (c->redis && c->redis->sentinel_password_literal)
        warn("redis.sentinel_password is written in the config file: use "
             "sentinel_password_env or sentinel_password_file outside local development",
             arg);
    for (size_t i = 0; i < c->n_apps; i++) {
        if (!c->apps[i].secret_literal) continue;
        snprintf(msg, sizeof msg,
                 "apps[%zu] (\"%s\"): the %s is written in the config file: use "
                 "%s_env or %s_file outside local development",
                 i, c->apps[i].name, c->apps[i].auth == CONFIG_AUTH_TOKEN ? "token" : "secret_key",
                 c->apps[i].auth == CONFIG_AUTH_TOKEN ? "token" : "secret_key",
                 c->apps[i].auth == CONFIG_AUTH_TOKEN ? "token" : "secret_key");
        warn(msg, arg);
    }
    for (size_t i = 0; i < c->n_captcha_apps; i++) {
        if (!c->captcha_apps[i].secret_literal) continue;
        snprintf(msg, sizeof msg,
                 "captcha_apps[%zu] (CaptchaAppId %u): the app_secret_key is written in the "
                 "config file: use app_secret_key_env or app_secret_key_file outside local "
                 "development",
                 i, c->captcha_apps[i].captcha_app_id);
        warn(msg, arg);
    }
    if (c->upstream.v3_url && !c->upstream.v3_tls)
        warn("upstream.v3_url is plain http: the signed 3.0 requests travel unencrypted", arg);
    if (c->n_apps == 0) warn("apps is empty: every request will be refused", arg);
    if (c->audit.pii_key_generated)
        warn("audit.pii_key_env is not set: PII hashing uses a per-process random key, so "
             "hashes differ between instances and restarts",
             arg);
    if (c->audit.pii_raw) warn("audit.pii is \"raw\": per-user fields are stored unhashed", arg);
    if (c->audit.min_replicas && !c->redis)
        warn("audit.min_replicas is set without a redis section: it has no effect", arg);
    if (c->on_store_error == CONFIG_STORE_ERROR_ALLOW)
        warn("on_store_error is \"allow\": limits are not enforced while the store is down", arg);
    if (c->demo) warn("demo is true: demo mode is meant for local development only", arg);
    if (!c->admin.token && !host_is_loopback(c->admin_host)) {
        snprintf(msg, sizeof msg,
                 "admin_listen %s is reachable from other hosts without a "
                 "token (admin.allow_unauthenticated): /admin/audit shows client IPs",
                 c->admin_host);
        warn(msg, arg);
    }
    for (size_t i = 0; i < c->n_trusted_proxies; i++) {
        if (c->trusted_proxies[i].prefix != 0) continue;
        snprintf(msg, sizeof msg,
                 "trusted_proxies[%zu] is a /0 block: every %s client may set "
                 "the client_ip it is audited under",
                 i, c->trusted_proxies[i].addr.family == AF_INET ? "IPv4" : "IPv6");
        warn(msg, arg);
    }
}
