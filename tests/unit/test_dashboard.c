/* test_dashboard.c: the files of proxy/dashboard/ as cmake/embed_files.cmake built them into the
 * binary: every file there, byte for byte, each followed by a NUL; and the page names only
 * files of the table (a file added to the page but not to CMakeLists.txt would be a 404). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "embedded.h"

#define DASHBOARD_DIR CAPGATE_SOURCE_DIR "/proxy/dashboard"

static const struct embedded_file *find(const char *name) {
    for (const struct embedded_file *f = dashboard_files; f->name; f++)
        if (strcmp(f->name, name) == 0) return f;
    return NULL;
}

/* The whole file at path, its length in *len; NULL when it cannot be read. */
static unsigned char *read_file(const char *path, size_t *len) {
    FILE *fp = fopen(path, "rb");
    unsigned char *buf = NULL;
    long n;
    if (!fp) return NULL;
    if (fseek(fp, 0, SEEK_END) == 0 && (n = ftell(fp)) >= 0 && fseek(fp, 0, SEEK_SET) == 0) {
        buf = malloc((size_t)n + 1);
        if (buf && fread(buf, 1, (size_t)n, fp) != (size_t)n) {
            free(buf);
            buf = NULL;
        }
        *len = (size_t)n;
    }
    fclose(fp);
    return buf;
}

static void test_every_source_file_embedded_byte_for_byte(void **state) {
    DIR *d = opendir(DASHBOARD_DIR);
    struct dirent *e;
    size_t seen = 0, n_table = 0;
    assert_non_null(d);
    while ((e = readdir(d))) {
        char path[512];
        size_t len = 0;
        unsigned char *want;
        const struct embedded_file *f;
        if (e->d_name[0] == '.') continue;
        f = find(e->d_name);
        if (!f)
            fail_msg("proxy/dashboard/%s is not embedded (add it to DASHBOARD_NAMES)", e->d_name);
        assert_true((size_t)snprintf(path, sizeof path, "%s/%s", DASHBOARD_DIR, e->d_name) <
                    sizeof path);
        want = read_file(path, &len);
        assert_non_null(want);
        assert_true(len > 0);
        assert_int_equal(f->len, len);
        assert_memory_equal(f->data, want, len);
        assert_int_equal(f->data[f->len], 0);
        free(want);
        seen++;
    }
    closedir(d);
    for (const struct embedded_file *f = dashboard_files; f->name; f++) n_table++;
    assert_int_equal(seen, n_table);
    assert_true(n_table >= 4);
}

static void test_page_names_only_embedded_files(void **state) {
    const struct embedded_file *html = find("index.html");
    const char *refs[] = {"href=\"/dashboard/", "src=\"/dashboard/"};
    size_t found = 0;
    assert_non_null(html);
    for (size_t r = 0; r < sizeof refs / sizeof refs[0]; r++) {
        const char *p = (const char *)html->data;
        while ((p = strstr(p, refs[r]))) {
            char name[64];
            size_t n;
            p += strlen(refs[r]);
            n = strcspn(p, "\"");
            assert_true(n > 0 && n < sizeof name);
            memcpy(name, p, n);
            name[n] = '\0';
            if (!find(name))
                fail_msg("index.html names /dashboard/%s, which is not embedded", name);
            found++;
        }
    }
    assert_int_equal(found, 2); /* app.css and app.mjs */
    /* app.mjs imports lib.mjs */
    assert_non_null(find("app.mjs"));
    assert_non_null(strstr((const char *)find("app.mjs")->data, "from './lib.mjs'"));
    assert_non_null(find("lib.mjs"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_source_file_embedded_byte_for_byte),
        cmocka_unit_test(test_page_names_only_embedded_files),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
