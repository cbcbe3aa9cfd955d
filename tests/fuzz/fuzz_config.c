/* fuzz_config.c: the config loader (proxy/config.c) from a buffer. Invariants:
 *  - a loaded config dumps (config_dump_masked) as JSON that jansson reads back;
 *  - the dump never shows a secret: every secret in the loaded struct is replaced by a unique
 *    marker before the dump, and no marker may appear in it; a redis url shows no password;
 *  - a refused config gets a message without control bytes that never holds a secret written
 *    in the file (the value of a "secret_key" or "token" key that occurs once in the text), and
 *    a syntax error quotes nothing of the file (but the key of a duplicate key);
 *  - config_diff of a config with itself finds nothing;
 *  - the loadable dump (config_dump_json) shows no secret either, and when it masked nothing
 *    ("_masked": []) it loads again and dumps the same.
 * The environment variables the seeds name are set before each run (the loader removes them).
 * Inputs naming a secret file outside the seeds' own directory are skipped: /dev/stdin would
 * block and the fuzzer has no business reading the machine's files. */
#include <ctype.h>
#include <string.h>

#include <jansson.h>

#include "capgate/log.h"
#include "capgate/secmem.h"
#include "config.h"
#include "fuzz.h"

#define MARK \
    "\x01" \
    "fuzz-secret-marker-"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    log_init("fuzz_config", LOG_LEVEL_ERROR);
    return 0;
}

/* Walks v; returns 1 when a key ends in "_file" with a value other than null (a file the loader
 * would read). Adds each string under a "secret_key"/"token" key to secrets. */
static int walk(json_t *v, json_t *secrets) {
    const char *key;
    json_t *e;
    size_t i;
    if (json_is_object(v)) {
        json_object_foreach(v, key, e) {
            size_t n = strlen(key);
            if (n >= 5 && strcmp(key + n - 5, "_file") == 0 && !json_is_null(e)) return 1;
            if ((strcmp(key, "secret_key") == 0 || strcmp(key, "token") == 0) && json_is_string(e))
                json_array_append(secrets, e);
            if (walk(e, secrets)) return 1;
        }
    } else if (json_is_array(v)) {
        json_array_foreach(v, i, e) {
            if (walk(e, secrets)) return 1;
        }
    }
    return 0;
}

static size_t count(const char *hay, const char *needle) {
    size_t n = 0, len = strlen(needle);
    if (!len) return 0;
    for (const char *p = hay; (p = strstr(p, needle)) != NULL; p++) n++;
    return n;
}

static void replace(char **slot, unsigned *k) {
    char buf[64];
    if (!*slot) return;
    snprintf(buf, sizeof buf, MARK "%u", (*k)++);
    secmem_free(*slot);
    *slot = secmem_strdup(buf);
    FUZZ_CHECK(*slot);
}

/* A secret v (once in text) seen in err: echoed, or words of the message itself (a token
 * "nature" in "signature")? The same file with a letter or digit of v changed must give the same
 * message when the loader did not echo v. */
static int echoes(const char *text, const char *v, const char *err) {
    char *t2 = strdup(text), err2[1024];
    struct config *c2 = NULL;
    FUZZ_CHECK(t2);
    char *at = strstr(t2, v), *end = at + strlen(v);
    /* a plain ASCII byte of v, changed into another one: still the same JSON string */
    while (at < end && !(isalnum((unsigned char)*at))) at++;
    if (at == end) {
        free(t2);
        return 0; /* nothing to change safely: not judged */
    }
    *at = *at == 'Q' ? 'R' : 'Q';
    int rc = config_load_string(t2, "fuzz.json", &c2, err2, sizeof err2);
    config_free(c2);
    free(t2);
    return rc == 0 || strcmp(err, err2) != 0;
}

static void diff_none(const char *path, const char *detail, int applied, void *arg) {
    fprintf(stderr, "diff of a config with itself: %s %s\n", path, detail);
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    struct config *c = NULL;
    char err[1024];
    char *text = malloc(size + 1);
    json_t *secrets = json_array();
    FUZZ_CHECK(text && secrets);
    memcpy(text, data, size);
    text[size] = '\0';
    json_t *root = json_loads(text, JSON_DECODE_ANY, NULL);
    if (root && walk(root, secrets)) goto out;
    setenv("FUZZ_UP_ID", "AKIDfuzzUpstream", 1);
    setenv("FUZZ_UP_KEY", "fuzz-upstream-key-0123456789", 1);
    setenv("FUZZ_APP_KEY", "fuzz-app-key-0123456789", 1);
    setenv("FUZZ_TOKEN", "fuzz-token-0123456789", 1);
    setenv("FUZZ_REDIS_PW", "fuzz-redis-pw-0123456789", 1);
    setenv("FUZZ_PII", "fuzz-pii-key-0123456789", 1);

    if (config_load_string(text, "fuzz.json", &c, err, sizeof err) != 0) {
        size_t i;
        json_t *s;
        FUZZ_CHECK(c == NULL && err[0]);
        FUZZ_CHECK(fuzz_no_ctl(err, strlen(err)));
        /* jansson's "near '<text>'" would quote the file: left out of syntax errors (unless the
         * input holds those words itself, in a key name an error may echo) */
        if (!strstr(text, " near '") && strstr(err, ": syntax error: ") &&
            !strstr(err, ": syntax error: duplicate object key near '"))
            FUZZ_CHECK(!strstr(err, " near '"));
        json_array_foreach(secrets, i, s) {
            const char *v = json_string_value(s);
            if (strlen(v) >= 4 && count(text, v) == 1 && strstr(err, v))
                FUZZ_CHECK(!echoes(text, v, err));
        }
        goto out;
    }
    FUZZ_CHECK(config_diff(c, c, 1, diff_none, NULL) == 0);
    FUZZ_CHECK(config_diff(c, c, 0, diff_none, NULL) == 0);

    char *loadable = config_dump_json(c);
    FUZZ_CHECK(loadable);
    json_t *note = json_loads(loadable, 0, NULL);
    FUZZ_CHECK(note && json_is_array(json_object_get(note, "_masked")));
    if (json_array_size(json_object_get(note, "_masked")) == 0) {
        struct config *again = NULL;
        if (config_load_string(loadable, "fuzz-dump.json", &again, err, sizeof err) != 0) {
            fprintf(stderr, "the loadable dump does not load: %s\n%s\n", err, loadable);
            abort();
        }
        char *second = config_dump_json(again);
        FUZZ_CHECK(second);
        if (strcmp(second, loadable) != 0) {
            fprintf(stderr, "the dump of the dump differs:\n%s\n----\n%s\n", loadable, second);
            abort();
        }
        free(second);
        config_free(again);
    }
    json_decref(note);

    unsigned k = 0;
    replace(&c->upstream.secret_key, &k);
    for (size_t i = 0; i < c->n_apps; i++) {
        replace(&c->apps[i].secret_key, &k);
        replace(&c->apps[i].token, &k);
    }
    if (c->redis) replace(&c->redis->password, &k);
    if (c->audit.pii_key) {
        replace(&c->audit.pii_key, &k);
        c->audit.pii_key_len = strlen(c->audit.pii_key);
    }
    char *dump = config_dump_masked(c);
    FUZZ_CHECK(dump);
    if (!strstr(text, "fuzz-secret-marker-")) FUZZ_CHECK(!strstr(dump, "fuzz-secret-marker-"));
    char *dump_json = config_dump_json(c);
    FUZZ_CHECK(dump_json);
    if (!strstr(text, "fuzz-secret-marker-")) FUZZ_CHECK(!strstr(dump_json, "fuzz-secret-marker-"));
    free(dump_json);
    free(loadable);
    json_t *back = json_loads(dump, 0, NULL);
    FUZZ_CHECK(back);
    json_t *url = json_object_get(json_object_get(back, "redis"), "url");
    if (json_is_string(url)) {
        const char *u = json_string_value(url), *at = strchr(u, '@');
        if (at) FUZZ_CHECK(at - u >= 12 && strncmp(at - 12, "redis://:***", 12) == 0);
    }
    json_decref(back);
    free(dump);
out:
    config_free(c);
    json_decref(root);
    json_decref(secrets);
    free(text);
    return 0;
}
