/* Child processes with captured stdout and stderr, read with deadlines:
 * the CLI tests and the mosquitto_pub / mosquitto_sub tools. See harness.h. */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

int it_proc_spawn(struct it_proc *p, char *const argv[])
{
    int out[2] = {-1, -1}, err[2] = {-1, -1};
    memset(p, 0, sizeof *p);
    p->out_fd = p->err_fd = -1;
    p->status = -1;
    if (it_pipe(out) != 0 || it_pipe(err) != 0)
        goto fail;
    pid_t pid = fork();
    if (pid < 0)
        goto fail;
    if (pid == 0) {
        int nullfd = open("/dev/null", O_RDONLY);
        dup2(nullfd, 0);
        dup2(out[1], 1);
        dup2(err[1], 2);
        execvp(argv[0], argv);
        _exit(127);
    }
    close(out[1]);
    close(err[1]);
    p->pid = pid;
    p->out_fd = out[0];
    p->err_fd = err[0];
    return 0;
fail:
    for (int i = 0; i < 2; i++) {
        if (out[i] >= 0)
            close(out[i]);
        if (err[i] >= 0)
            close(err[i]);
    }
    return -1;
}

/* Append what is readable on *fd to b (kept NUL-terminated); closes the fd
 * at EOF. */
static void it_proc_read(int *fd, struct buf *b)
{
    uint8_t chunk[4096];
    ssize_t n = read(*fd, chunk, sizeof chunk);
    if (n < 0 && errno == EINTR)
        return;
    if (n <= 0) {
        close(*fd);
        *fd = -1;
        return;
    }
    buf_append(b, chunk, (size_t)n);
    buf_reserve(b, 1);
    b->data[b->len] = '\0';
}

/* Wait up to timeout_ms for output on either pipe and read it. false when
 * both pipes are closed. */
static bool it_proc_pump(struct it_proc *p, int timeout_ms)
{
    struct pollfd pf[2] = {{.fd = p->out_fd, .events = POLLIN},
                           {.fd = p->err_fd, .events = POLLIN}};
    if (p->out_fd < 0 && p->err_fd < 0)
        return false;
    if (poll(pf, 2, timeout_ms) <= 0)
        return true;
    if (p->out_fd >= 0 && pf[0].revents)
        it_proc_read(&p->out_fd, &p->out);
    if (p->err_fd >= 0 && pf[1].revents)
        it_proc_read(&p->err_fd, &p->err);
    return true;
}

bool it_proc_wait_output(struct it_proc *p, const char *needle, int timeout_ms)
{
    int64_t deadline = it_now_ms() + timeout_ms;
    for (;;) {
        if (p->out.data && strstr((char *)p->out.data, needle))
            return true;
        int64_t left = deadline - it_now_ms();
        if (left <= 0 || !it_proc_pump(p, (int)left))
            return false;
    }
}

int it_proc_wait(struct it_proc *p, int timeout_ms)
{
    int64_t deadline = it_now_ms() + timeout_ms;
    for (;;) {
        int64_t left = deadline - it_now_ms();
        if (left <= 0)
            break;
        if (!it_proc_pump(p, (int)(left < 50 ? left : 50))) {
            int st;
            if (waitpid(p->pid, &st, WNOHANG) == p->pid) {
                p->pid = 0;
                p->status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
                return p->status;
            }
            poll(NULL, 0, 5);
        }
    }
    kill(p->pid, SIGKILL);
    waitpid(p->pid, NULL, 0);
    p->pid = 0;
    return -1;
}

void it_proc_cleanup(struct it_proc *p)
{
    if (!p)
        return;
    if (p->pid > 0) {
        kill(p->pid, SIGKILL);
        waitpid(p->pid, NULL, 0);
        p->pid = 0;
    }
    if (p->out_fd >= 0)
        close(p->out_fd);
    if (p->err_fd >= 0)
        close(p->err_fd);
    p->out_fd = p->err_fd = -1;
    buf_free(&p->out);
    buf_free(&p->err);
}

int it_run(struct it_proc *p, char *const argv[], int timeout_ms)
{
    if (it_proc_spawn(p, argv) != 0)
        return -1;
    return it_proc_wait(p, timeout_ms);
}
