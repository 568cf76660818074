/* The broker process and child processes of the integration tests: a free
 * port, a temporary folder with the config, start / restart / stop / kill,
 * readiness by polling a TCP connect, and the reaper that reports a failed
 * test's broker log. See harness.h. */
#include "harness.h"

#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>

#ifndef MQBRIDGE_BIN
#define MQBRIDGE_BIN "mqbridge"
#endif

#define IT_DEFAULT_INFLIGHT 20
#define IT_DEFAULT_QUEUED 1000
#define IT_DEFAULT_PACKET 268435460ul

int64_t it_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

bool it_wait_until(bool (*cond)(void *ctx), void *ctx, int timeout_ms)
{
    int64_t deadline = it_now_ms() + timeout_ms;
    for (;;) {
        if (cond(ctx))
            return true;
        if (it_now_ms() >= deadline)
            return false;
        poll(NULL, 0, 5); /* the polling period, not a wait for an outcome */
    }
}

int it_pipe(int fds[2])
{
    if (pipe(fds) != 0)
        return -1;
    fcntl(fds[0], F_SETFD, FD_CLOEXEC);
    fcntl(fds[1], F_SETFD, FD_CLOEXEC);
    return 0;
}

bool it_mode_mosquitto(void)
{
    const char *m = getenv("MQB_IT_BROKER");
    return m && strcmp(m, "mosquitto") == 0;
}

const char *it_broker_name(void)
{
    return it_mode_mosquitto() ? "mosquitto" : "mqbridge";
}

void it_note_skip(const char *test, const char *why)
{
    fprintf(stderr, "NOTE: %s not run against %s: %s\n", test, it_broker_name(), why);
}

const char *it_mqbridge_path(void)
{
    const char *env = getenv("MQB_IT_BIN");
    return env && *env ? env : MQBRIDGE_BIN;
}

/* ---- the reaper ----
 * A shell in its own session (so Check's kill of the test's process group
 * spares it) reads the folders of this test process on a pipe. When the
 * test process ends, the pipe closes; any folder still present means the
 * test died before its cleanup: print the log tail, then remove it. */
static int it_reaper_fd = -1;

static const char it_reaper_script[] =
    "dirs=; while read -r d; do dirs=\"$dirs $d\"; done; "
    "for d in $dirs; do [ -d \"$d\" ] && [ ! -e \"$d/.it-done\" ] || continue; "
    "if [ -f \"$d/broker.log\" ]; then "
    "echo \"==== $d/broker.log (last 40 lines) ====\" >&2; "
    "tail -n 40 \"$d/broker.log\" >&2; fi; "
    "[ -n \"$MQB_IT_KEEP\" ] || rm -rf \"$d\"; done";

static void it_reaper_register(const char *dir)
{
    if (it_reaper_fd < 0) {
        int fds[2];
        if (it_pipe(fds) != 0)
            return;
        pid_t pid = fork();
        if (pid == 0) {
            setsid();
            dup2(fds[0], 0);
            execl("/bin/sh", "sh", "-c", it_reaper_script, (char *)NULL);
            _exit(127);
        }
        close(fds[0]);
        if (pid < 0) {
            close(fds[1]);
            return;
        }
        it_reaper_fd = fds[1];
    }
    char line[96];
    int n = snprintf(line, sizeof line, "%s\n", dir);
    if (write(it_reaper_fd, line, (size_t)n) != n)
        fprintf(stderr, "it: reaper write failed\n");
}

void it_tmpdir_make(char *dir, size_t len)
{
    snprintf(dir, len, "/tmp/mqb-it-XXXXXX");
    ck_assert_msg(mkdtemp(dir) != NULL, "mkdtemp: %s", strerror(errno));
    it_reaper_register(dir);
}

void it_tmpdir_remove(char *dir)
{
    if (dir[0] && getenv("MQB_IT_KEEP")) {
        char done[128]; /* tells the reaper this test finished */
        snprintf(done, sizeof done, "%s/.it-done", dir);
        it_write_file(done, "");
    } else if (dir[0]) {
        char *argv[] = {"rm", "-rf", dir, NULL};
        struct it_proc p;
        it_run(&p, argv, IT_START_MS);
        it_proc_cleanup(&p);
    }
    dir[0] = '\0';
}

void it_write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    ck_assert_msg(f != NULL, "%s: %s", path, strerror(errno));
    fputs(text, f);
    ck_assert(fclose(f) == 0);
}

/* ---- config ---- */

uint16_t it_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0};
    socklen_t sl = sizeof sa;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_msg(fd >= 0, "socket: %s", strerror(errno));
    ck_assert_msg(bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0, "bind: %s", strerror(errno));
    ck_assert(getsockname(fd, (struct sockaddr *)&sa, &sl) == 0);
    close(fd);
    return ntohs(sa.sin_port);
}

static void it_write_mqbridge_conf(FILE *f, const struct it_broker *b)
{
    const struct it_broker_opts *o = &b->opts;
    fprintf(f,
            "instance: %s\n"
            "listeners:\n"
            "  - { host: 127.0.0.1, port: %u }\n"
            "storage: { path: %s/store, sync: normal }\n"
            "limits: { max_inflight: %u, max_queued: %u, max_packet_size: %lu,"
            " max_connections: %u, max_keepalive: 0, %s }\n"
            "log: { level: debug }\n",
            o->instance_yaml ? o->instance_yaml : "{ naming: mqtt }", b->port, b->dir,
            o->max_inflight, o->max_queued, o->max_packet_size, o->max_connections,
            o->limits_yaml ? o->limits_yaml : "max_message_size: 268435455");
    if (o->extra_yaml) {
        size_t n = strlen(o->extra_yaml);
        fprintf(f, "%s%s", o->extra_yaml, n && o->extra_yaml[n - 1] != '\n' ? "\n" : "");
    }
}

static void it_write_mosquitto_conf(FILE *f, const struct it_broker *b)
{
    const struct it_broker_opts *o = &b->opts;
    fprintf(f,
            "listener %u 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"
            "persistence_location %s/\n"
            "autosave_interval 1\n"
            "max_inflight_messages %u\n"
            "max_queued_messages %u\n"
            "max_connections %d\n"
            "max_packet_size %lu\n"
            "sys_interval 0\n"
            "log_dest stderr\n"
            "log_type all\n",
            b->port, b->dir, o->max_inflight, o->max_queued,
            o->max_connections ? (int)o->max_connections : -1,
            o->max_packet_size > 268435455ul ? 268435455ul : o->max_packet_size);
    if (geteuid() == 0)
        fprintf(f, "user root\n"); /* else mosquitto drops to a user that cannot write dir */
}

static void it_write_conf(struct it_broker *b)
{
    FILE *f = fopen(b->conf, "w");
    ck_assert_msg(f != NULL, "%s: %s", b->conf, strerror(errno));
    if (it_mode_mosquitto())
        it_write_mosquitto_conf(f, b);
    else
        it_write_mqbridge_conf(f, b);
    ck_assert(fclose(f) == 0);
}

/* ---- process control ---- */

static void it_spawn_broker(struct it_broker *b)
{
    char *argv[4] = {NULL, "-c", b->conf, NULL};
    argv[0] = it_mode_mosquitto() ? "mosquitto" : (char *)it_mqbridge_path();
    int logfd = open(b->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    int nullfd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    ck_assert_msg(logfd >= 0 && nullfd >= 0, "%s: %s", b->log, strerror(errno));
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive the test */
        dup2(nullfd, 0);
        dup2(logfd, 1);
        dup2(logfd, 2);
        execvp(argv[0], argv);
        _exit(127);
    }
    close(logfd);
    close(nullfd);
    ck_assert_msg(pid > 0, "fork: %s", strerror(errno));
    b->pid = pid;
}

bool it_port_accepts(uint16_t port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bool ok = fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
    if (fd >= 0)
        close(fd);
    return ok;
}

/* Returns the decoded status of a reaped child, or -1 when still running. */
static int it_reap(pid_t pid, bool block)
{
    int st;
    pid_t r;
    do {
        r = waitpid(pid, &st, block ? 0 : WNOHANG);
    } while (r < 0 && errno == EINTR);
    if (r != pid)
        return -1;
    if (WIFEXITED(st))
        return WEXITSTATUS(st);
    return WIFSIGNALED(st) ? 128 + WTERMSIG(st) : -1;
}

static void it_wait_ready(struct it_broker *b)
{
    int64_t deadline = it_now_ms() + IT_START_MS;
    while (!it_port_accepts(b->port)) {
        int st = it_reap(b->pid, false);
        if (st >= 0) {
            b->pid = 0;
            it_broker_print_log(b, 40);
            ck_abort_msg("%s exited with status %d before listening on %u", it_broker_name(), st,
                         b->port);
        }
        if (it_now_ms() > deadline) {
            it_broker_print_log(b, 40);
            ck_abort_msg("%s not listening on port %u after %d ms", it_broker_name(), b->port,
                         IT_START_MS);
        }
        poll(NULL, 0, 10);
    }
}

void it_broker_start(struct it_broker *b, const struct it_broker_opts *opts)
{
    memset(b, 0, sizeof *b);
    if (opts)
        b->opts = *opts;
    if (!b->opts.max_inflight)
        b->opts.max_inflight = IT_DEFAULT_INFLIGHT;
    if (!b->opts.max_queued)
        b->opts.max_queued = IT_DEFAULT_QUEUED;
    if (!b->opts.max_packet_size)
        b->opts.max_packet_size = IT_DEFAULT_PACKET;
    if (!it_mode_mosquitto())
        ck_assert_msg(access(it_mqbridge_path(), X_OK) == 0,
                      "%s not found: build it, or run with MQB_IT_BROKER=mosquitto",
                      it_mqbridge_path());
    it_tmpdir_make(b->dir, sizeof b->dir);
    snprintf(b->conf, sizeof b->conf, "%s/%s", b->dir,
             it_mode_mosquitto() ? "mosquitto.conf" : "mqbridge.yaml");
    snprintf(b->log, sizeof b->log, "%s/broker.log", b->dir);
    b->port = it_free_port();
    it_write_conf(b);
    it_broker_restart(b);
}

void it_broker_restart(struct it_broker *b)
{
    ck_assert_msg(b->pid == 0, "restart of a running broker");
    it_spawn_broker(b);
    it_wait_ready(b);
}

int it_broker_stop(struct it_broker *b)
{
    if (b->pid <= 0)
        return -1;
    kill(b->pid, SIGTERM);
    int64_t deadline = it_now_ms() + IT_START_MS;
    int st;
    while ((st = it_reap(b->pid, false)) < 0 && it_now_ms() < deadline)
        poll(NULL, 0, 5);
    if (st < 0) {
        fprintf(stderr, "it: %s did not exit %d ms after SIGTERM\n", it_broker_name(), IT_START_MS);
        it_broker_kill9(b);
        return -1;
    }
    b->pid = 0;
    return st;
}

void it_broker_kill9(struct it_broker *b)
{
    if (b->pid <= 0)
        return;
    kill(b->pid, SIGKILL);
    it_reap(b->pid, true);
    b->pid = 0;
}

void it_broker_cleanup(struct it_broker *b)
{
    if (!b)
        return;
    /* Every test ends with a graceful stop: a crash or a sanitizer report
     * at shutdown fails the test that caused it (the reaper then shows
     * the log and removes the folder). */
    int st = b->pid > 0 ? it_broker_stop(b) : 0;
    ck_assert_msg(st == 0, "%s exited with status %d on SIGTERM", it_broker_name(), st);
    it_tmpdir_remove(b->dir);
}

void it_broker_print_log(const struct it_broker *b, int lines)
{
    char n[16];
    snprintf(n, sizeof n, "%d", lines);
    char *argv[] = {"tail", "-n", n, (char *)b->log, NULL};
    struct it_proc p;
    it_run(&p, argv, IT_START_MS);
    fprintf(stderr, "==== %s (last %d lines) ====\n%s", b->log, lines,
            p.out.data ? (char *)p.out.data : "");
    it_proc_cleanup(&p);
}
