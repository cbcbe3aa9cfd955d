/* test_sdnotify.c: READY=1 reaches the datagram socket named by $NOTIFY_SOCKET (path and
 * abstract forms); unset means "not asked", a relative name is refused. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "capgate/sdnotify.h"

static int bind_dgram(const char *name, int abstract) {
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    size_t len = strlen(name);
    memcpy(sa.sun_path + (abstract ? 1 : 0), name, len);
    int fd = socket(AF_UNIX, SOCK_DGRAM, 0);
    assert_true(fd >= 0);
    socklen_t salen =
        (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + (abstract ? 1 : 0));
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, salen), 0);
    return fd;
}

static void expect_message(int fd, const char *want) {
    char buf[256];
    ssize_t n = recv(fd, buf, sizeof(buf) - 1, MSG_DONTWAIT);
    assert_true(n > 0);
    buf[n] = '\0';
    assert_string_equal(buf, want);
}

static void test_path_socket(void **state) {
    char dir[] = "/tmp/capgate-sdnotify-XXXXXX";
    char path[128];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/notify", dir);
    int fd = bind_dgram(path, 0);
    setenv("NOTIFY_SOCKET", path, 1);
    assert_int_equal(sd_notify_state("READY=1"), 1);
    expect_message(fd, "READY=1");
    close(fd);
    unlink(path);
    rmdir(dir);
}

static void test_abstract_socket(void **state) {
    char name[64];
    snprintf(name, sizeof(name), "capgate-sdnotify-test-%ld", (long)getpid());
    int fd = bind_dgram(name, 1);
    char env[80];
    snprintf(env, sizeof(env), "@%s", name);
    setenv("NOTIFY_SOCKET", env, 1);
    assert_int_equal(sd_notify_state("STOPPING=1"), 1);
    expect_message(fd, "STOPPING=1");
    close(fd);
}

static void test_unset_and_bad(void **state) {
    unsetenv("NOTIFY_SOCKET");
    assert_int_equal(sd_notify_state("READY=1"), 0);
    setenv("NOTIFY_SOCKET", "relative/name", 1);
    assert_int_equal(sd_notify_state("READY=1"), -1);
    assert_int_equal(errno, EINVAL);
    /* A path nobody listens on: an error, not a hang. */
    setenv("NOTIFY_SOCKET", "/nonexistent-capgate-dir/notify", 1);
    assert_int_equal(sd_notify_state("READY=1"), -1);
    unsetenv("NOTIFY_SOCKET");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_path_socket),
        cmocka_unit_test(test_abstract_socket),
        cmocka_unit_test(test_unset_and_bad),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
