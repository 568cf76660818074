/* Command lines: mqbridge's own (--version, --help, unknown options,
 * --check-config with file:line:column errors, --listen) and the Mosquitto
 * command-line clients talking to the broker under test. */
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "../unit/check_main.h"
#include "harness.h"

#define CLI_MS 10000 /* a CLI that does not return in this time hangs */

static void write_config(const char *path, const char *dir, uint16_t port)
{
    char text[512];
    snprintf(text, sizeof text,
             "instance: { naming: mqtt }\n"
             "listeners:\n"
             "  - { host: 127.0.0.1, port: %u }\n"
             "storage: { path: %s/store, sync: normal }\n"
             "limits: { max_inflight: 20, max_queued: 1000, max_packet_size: 268435460,"
             " max_connections: 0, max_keepalive: 0 }\n"
             "log: { level: debug }\n",
             port, dir);
    it_write_file(path, text);
}

START_TEST(test_version)
{
    char *argv[] = {(char *)it_mqbridge_path(), "--version", NULL};
    struct it_proc p;
    ck_assert_int_eq(it_run(&p, argv, CLI_MS), 0);
    unsigned x, y, z;
    const char *out = p.out.data ? (const char *)p.out.data : "";
    ck_assert_msg(sscanf(out, "mqbridge %u.%u.%u", &x, &y, &z) == 3,
                  "--version printed '%s', want 'mqbridge X.Y.Z'", out);
    it_proc_cleanup(&p);
}
END_TEST

START_TEST(test_help)
{
    char *argv[] = {(char *)it_mqbridge_path(), "--help", NULL};
    struct it_proc p;
    ck_assert_int_eq(it_run(&p, argv, CLI_MS), 0);
    const char *out = p.out.data ? (const char *)p.out.data : "";
    ck_assert_msg(strstr(out, "--check-config") && strstr(out, "--listen"),
                  "--help does not list the options: '%s'", out);
    it_proc_cleanup(&p);
}
END_TEST

START_TEST(test_unknown_option)
{
    char *argv[] = {(char *)it_mqbridge_path(), "--no-such-option", NULL};
    struct it_proc p;
    ck_assert_int_eq(it_run(&p, argv, CLI_MS), 2);
    const char *err = p.err.data ? (const char *)p.err.data : "";
    ck_assert_msg(strstr(err, "--check-config") != NULL, "no usage on stderr: '%s'", err);
    it_proc_cleanup(&p);
}
END_TEST

START_TEST(test_check_config_good)
{
    char dir[64], path[128];
    it_tmpdir_make(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/good.yaml", dir);
    write_config(path, dir, 1883);
    char *argv[] = {(char *)it_mqbridge_path(), "--check-config", "-c", path, NULL};
    struct it_proc p;
    int st = it_run(&p, argv, CLI_MS);
    ck_assert_msg(st == 0, "--check-config on a good file: exit %d, stderr '%s'", st,
                  p.err.data ? (char *)p.err.data : "");
    it_proc_cleanup(&p);
    it_tmpdir_remove(dir);
}
END_TEST

/* An unknown key: exit 1 and "FILE:LINE:COL:" at the key, naming it. */
static const struct {
    const char *name;
    const char *text;
    int line, col;
    const char *key;
} bad_configs[] = {
    {"top level",
     "listeners:\n  - { host: 127.0.0.1, port: 1883 }\nlog: { level: info }\nbogus: 1\n", 4, 1,
     "bogus"},
    {"block mapping",
     "listeners:\n  - { host: 127.0.0.1, port: 1883 }\nlimits:\n  max_inflight: 20\n"
     "  max_inflite: 5\n",
     5, 3, "max_inflite"},
    {"flow mapping",
     "listeners:\n  - { host: 127.0.0.1, port: 1883 }\nlimits: { max_inflight: 20, max_queud: 3 "
     "}\n",
     3, 29, "max_queud"},
};

START_TEST(test_check_config_unknown_key)
{
    char dir[64], path[128];
    it_tmpdir_make(dir, sizeof dir);
    for (size_t i = 0; i < sizeof bad_configs / sizeof bad_configs[0]; i++) {
        snprintf(path, sizeof path, "%s/bad%zu.yaml", dir, i);
        it_write_file(path, bad_configs[i].text);
        char *argv[] = {(char *)it_mqbridge_path(), "--check-config", "-c", path, NULL};
        struct it_proc p;
        int st = it_run(&p, argv, CLI_MS);
        const char *err = p.err.data ? (const char *)p.err.data : "";
        char where[192];
        snprintf(where, sizeof where, "%s:%d:%d:", path, bad_configs[i].line, bad_configs[i].col);
        ck_assert_msg(st == 1, "%s: exit %d, want 1", bad_configs[i].name, st);
        ck_assert_msg(strstr(err, where) != NULL, "%s: stderr '%s' lacks '%s'", bad_configs[i].name,
                      err, where);
        ck_assert_msg(strstr(err, bad_configs[i].key) != NULL, "%s: stderr '%s' lacks '%s'",
                      bad_configs[i].name, err, bad_configs[i].key);
        it_proc_cleanup(&p);
    }
    it_tmpdir_remove(dir);
}
END_TEST

/* A bad port in --listen is refused at once: exit 1 or 2 with a message. */
START_TEST(test_listen_bad_port)
{
    const char *bad[] = {"127.0.0.1:99999", "127.0.0.1:65536", "127.0.0.1:abc",
                         "127.0.0.1:", "127.0.0.1:12x"};
    char dir[64], path[128];
    it_tmpdir_make(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/mqbridge.yaml", dir);
    write_config(path, dir, it_free_port());
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *argv[] = {(char *)it_mqbridge_path(), "-c", path, "--listen", (char *)bad[i], NULL};
        struct it_proc p;
        int st = it_run(&p, argv, CLI_MS);
        ck_assert_msg(st == 1 || st == 2, "--listen %s: exit %d, want 1 or 2", bad[i], st);
        ck_assert_msg(p.err.len > 0, "--listen %s: no message on stderr", bad[i]);
        it_proc_cleanup(&p);
    }
    it_tmpdir_remove(dir);
}
END_TEST

/* Checked fixture of the mqbridge CLI tests: a clear message when the
 * binary is missing, instead of exit status 127 everywhere. */
static void require_mqbridge(void)
{
    ck_assert_msg(access(it_mqbridge_path(), X_OK) == 0,
                  "%s not found: build it, or run with MQB_IT_BROKER=mosquitto",
                  it_mqbridge_path());
}

static bool port_accepts(void *ctx)
{
    return it_port_accepts(*(uint16_t *)ctx);
}

/* --listen replaces the configured listener; SIGTERM exits 0. */
START_TEST(test_listen_override)
{
    char dir[64], path[128], listen[32];
    it_tmpdir_make(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/mqbridge.yaml", dir);
    uint16_t conf_port = it_free_port(), cli_port = it_free_port();
    write_config(path, dir, conf_port);
    snprintf(listen, sizeof listen, "127.0.0.1:%u", cli_port);
    char *argv[] = {(char *)it_mqbridge_path(), "-c", path, "--listen", listen, NULL};
    struct it_proc p;
    ck_assert_int_eq(it_proc_spawn(&p, argv), 0);
    ck_assert_msg(it_wait_until(port_accepts, &cli_port, IT_START_MS), "not listening on %s",
                  listen);
    struct it_raw r;
    struct it_connect_opts o = {.client_id = "it-listen", .clean = true};
    ck_assert_int_eq(it_raw_connect(&r, cli_port, &o, NULL), 0);
    it_raw_close(&r);
    ck_assert_msg(!it_port_accepts(conf_port), "the configured port is still open");
    kill(p.pid, SIGTERM);
    ck_assert_int_eq(it_proc_wait(&p, IT_START_MS), 0);
    it_proc_cleanup(&p);
    it_tmpdir_remove(dir);
}
END_TEST

/* mosquitto_sub -C 1 receives what mosquitto_pub -q 1 sent. The publish
 * waits until mosquitto_sub reports its SUBACK (its stdout is a pipe, so
 * stdbuf makes it line-buffered). */
START_TEST(test_mosquitto_tools)
{
    struct it_broker b;
    it_broker_start(&b, NULL);
    char port[8];
    snprintf(port, sizeof port, "%u", b.port);
    char *sub_argv[] = {"stdbuf",
                        "-oL",
                        "mosquitto_sub",
                        "-h",
                        "127.0.0.1",
                        "-p",
                        port,
                        "-t",
                        "it/tools",
                        "-q",
                        "1",
                        "-C",
                        "1",
                        "-W",
                        "10",
                        "-v",
                        "-d",
                        "-i",
                        "it-tools-sub",
                        NULL};
    char *pub_argv[] = {"mosquitto_pub",
                        "-h",
                        "127.0.0.1",
                        "-p",
                        port,
                        "-t",
                        "it/tools",
                        "-q",
                        "1",
                        "-m",
                        "hello from mosquitto_pub",
                        "-i",
                        "it-tools-pub",
                        NULL};
    struct it_proc sub, pub;
    ck_assert_int_eq(it_proc_spawn(&sub, sub_argv), 0);
    ck_assert_msg(it_proc_wait_output(&sub, "Subscribed (mid: 1): 1", IT_WAIT_MS),
                  "mosquitto_sub not subscribed: '%s' '%s'",
                  sub.out.data ? (char *)sub.out.data : "",
                  sub.err.data ? (char *)sub.err.data : "");
    ck_assert_int_eq(it_run(&pub, pub_argv, CLI_MS), 0);
    ck_assert_int_eq(it_proc_wait(&sub, 15000), 0);
    ck_assert_msg(strstr((char *)sub.out.data, "it/tools hello from mosquitto_pub") != NULL,
                  "mosquitto_sub printed '%s'", (char *)sub.out.data);
    it_proc_cleanup(&pub);
    it_proc_cleanup(&sub);
    it_broker_cleanup(&b);
}
END_TEST

static Suite *cli_suite(void)
{
    Suite *s = suite_create("it_cli");
    TCase *tc = tcase_create("cli");
    tcase_set_timeout(tc, 60);
    if (!it_mode_mosquitto()) {
        tcase_add_checked_fixture(tc, require_mqbridge, NULL);
        tcase_add_test(tc, test_version);
        tcase_add_test(tc, test_help);
        tcase_add_test(tc, test_unknown_option);
        tcase_add_test(tc, test_check_config_good);
        tcase_add_test(tc, test_check_config_unknown_key);
        tcase_add_test(tc, test_listen_bad_port);
        tcase_add_test(tc, test_listen_override);
    } else {
        it_note_skip("the mqbridge CLI tests", "they test mqbridge's own command line");
    }
    tcase_add_test(tc, test_mosquitto_tools);
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(cli_suite)
