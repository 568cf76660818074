/* Running a benchmark: create the clients, start the workers, drive the
 * phases (connect -> run -> stop) from the main thread by polling the shared
 * counters against deadlines, then merge the workers' statistics and print
 * them. */
#include <errno.h>
#include <inttypes.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"

struct bench {
    struct bench_opts o;
    struct client **clients;
    int nclients;
    struct crew crew;
    struct sockaddr_storage addr; /* broker, resolved once */
    socklen_t addrlen;
};

struct bench_result {
    struct bench_stats total;
    uint64_t expected; /* publishers * count * subscribers */
    double elapsed_s;  /* first publish to last delivery */
    double rate;       /* deliveries per second over elapsed_s */
    bool timed_out;
    int failed;          /* clients that failed */
    const char *error;   /* first worker error, static text */
    double tool_cpu_pct; /* this process's CPU time over the run's wall time */
};

/* A raw client holds one socket; a libmosquitto client also holds the
 * library's wake-up socket pair. */
int bench_raise_nofile(const struct bench_opts *o, int nsockets, char *err, size_t errlen)
{
    struct rlimit rl;
    rlim_t need = (rlim_t)nsockets * (o->engine == ENGINE_MOSQ ? 3 : 1) + 64;

    if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur >= need)
        return 0;
    if (rl.rlim_max < need) {
        struct rlimit up = {need, need};
        if (setrlimit(RLIMIT_NOFILE, &up) == 0)
            return 0;
    }
    rl.rlim_cur = rl.rlim_max < need ? rl.rlim_max : need;
    setrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_cur < need) {
        snprintf(err, errlen, "%d clients need %lu file descriptors, the limit is %lu%s", nsockets,
                 (unsigned long)need, (unsigned long)rl.rlim_cur,
                 o->engine == ENGINE_MOSQ ? " (--client raw needs a third)" : "");
        return -1;
    }
    return 0;
}

static void bench_destroy(struct bench *b)
{
    crew_free(&b->crew);
    for (int i = 0; b->clients && i < b->nclients; i++)
        client_destroy(b->clients[i]);
    free(b->clients);
    b->clients = NULL;
}

/* Creates the clients: subscribers first, then publishers, or the idle
 * clients. */
static int bench_create(struct bench *b, char *err, size_t errlen)
{
    const struct bench_opts *o = &b->o;
    int n = o->idle ? o->idle : o->subscribers + o->publishers;

    b->clients = calloc((size_t)n, sizeof *b->clients);
    if (!b->clients)
        goto nomem;
    for (int i = 0; i < n; i++) {
        enum client_role role = o->idle ? ROLE_IDLE : i < o->subscribers ? ROLE_SUB : ROLE_PUB;
        int index = role == ROLE_PUB ? i - o->subscribers : i;
        struct client *c = client_create(o, role, index);
        if (!c)
            goto nomem;
        b->clients[b->nclients++] = c;
    }
    return 0;
nomem:
    snprintf(err, errlen, "out of memory creating %d clients", n);
    return -1;
}

int bench_resolve(const char *host, int port, struct sockaddr_storage *addr, socklen_t *addrlen,
                  char *err, size_t errlen)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    char service[16];

    snprintf(service, sizeof service, "%d", port);
    int rc = getaddrinfo(host, service, &hints, &res);
    if (rc != 0 || !res || res->ai_addrlen > sizeof *addr) {
        snprintf(err, errlen, "cannot resolve %s: %s", host, rc ? gai_strerror(rc) : "no address");
        if (res)
            freeaddrinfo(res);
        return -1;
    }
    memcpy(addr, res->ai_addr, res->ai_addrlen);
    *addrlen = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

int crew_start(struct crew *cr, const struct bench_opts *o, struct client **clients, int n,
               const struct sockaddr *addr, socklen_t addrlen, bool graceful, char *err,
               size_t errlen)
{
    void *(*run)(void *) = o->engine == ENGINE_MOSQ ? engine_mosq_run : engine_raw_run;

    *cr = (struct crew){.nclients = n};
    atomic_store(&cr->shared.phase, PHASE_CONNECT);
    cr->nworkers = o->threads < n ? o->threads : n;
    cr->workers = calloc((size_t)cr->nworkers, sizeof *cr->workers);
    if (!cr->workers)
        goto nomem;
    for (int i = 0; i < cr->nworkers; i++) {
        struct worker *w = &cr->workers[i];
        *w = (struct worker){.opts = o,
                             .shared = &cr->shared,
                             .addr = addr,
                             .addrlen = addrlen,
                             .id = i,
                             .graceful = graceful};
        w->clients = calloc((size_t)(n / cr->nworkers + 1), sizeof *w->clients);
        if (!w->clients)
            goto nomem;
    }
    for (int i = 0; i < n; i++) {
        struct worker *w = &cr->workers[i % cr->nworkers];
        clients[i]->w = w;
        w->clients[w->nclients++] = clients[i];
    }
    for (int i = 0; i < cr->nworkers; i++) {
        if (pthread_create(&cr->workers[i].thread, NULL, run, &cr->workers[i]) != 0) {
            snprintf(err, errlen, "cannot start worker thread");
            return -1;
        }
        cr->started++;
    }
    return 0;
nomem:
    snprintf(err, errlen, "out of memory dealing %d clients to workers", n);
    return -1;
}

void crew_stop(struct crew *cr)
{
    atomic_store(&cr->shared.phase, PHASE_STOP);
    for (int i = 0; i < cr->started; i++)
        pthread_join(cr->workers[i].thread, NULL);
    cr->started = 0;
}

void crew_free(struct crew *cr)
{
    crew_stop(cr);
    for (int i = 0; cr->workers && i < cr->nworkers; i++)
        free(cr->workers[i].clients);
    free(cr->workers);
    cr->workers = NULL;
    cr->nworkers = 0;
}

void bench_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

int crew_wait_ready(struct crew *cr, const struct bench_opts *o, char *err, size_t errlen)
{
    int64_t deadline = bench_now_ns() + (int64_t)o->timeout_s * 1000000000LL;
    for (;;) {
        int ready = atomic_load(&cr->shared.ready);
        int failed = atomic_load(&cr->shared.failed);
        if (failed > 0) {
            snprintf(err, errlen, "a client failed to connect (%d of %d ready)", ready,
                     cr->nclients);
            return -1;
        }
        if (ready == cr->nclients)
            return 0;
        if (bench_now_ns() > deadline) {
            snprintf(err, errlen, "only %d of %d clients ready after %d s", ready, cr->nclients,
                     o->timeout_s);
            return -1;
        }
        bench_sleep_ms(2);
    }
}

void bench_stats_merge(struct bench_stats *into, const struct bench_stats *from)
{
    into->published += from->published;
    into->completed += from->completed;
    into->unique += from->unique;
    into->duplicates += from->duplicates;
    into->out_of_order += from->out_of_order;
    into->malformed += from->malformed;
    if (from->first_pub_ns && (!into->first_pub_ns || from->first_pub_ns < into->first_pub_ns))
        into->first_pub_ns = from->first_pub_ns;
    if (from->last_pub_ns > into->last_pub_ns)
        into->last_pub_ns = from->last_pub_ns;
    if (from->last_recv_ns > into->last_recv_ns)
        into->last_recv_ns = from->last_recv_ns;
    if (from->last_ready_ns > into->last_ready_ns)
        into->last_ready_ns = from->last_ready_ns;
    hist_merge(&into->latency, &from->latency);
}

void crew_collect(const struct crew *cr, struct bench_stats *into, const char **error)
{
    for (int i = 0; cr->workers && i < cr->nworkers; i++) {
        bench_stats_merge(into, &cr->workers[i].st);
        if (!*error)
            *error = cr->workers[i].error;
    }
}

double bench_process_cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

/* Phase RUN until every publisher is done and every delivery is in, or a
 * client fails, or the deadline passes. At QoS 0 lost messages never come:
 * stop once publishers are done and nothing arrived for --drain-ms. */
static void bench_drive_load(struct bench *b, struct bench_result *r)
{
    const struct bench_opts *o = &b->o;
    struct bench_shared *sh = &b->crew.shared;
    int64_t start = bench_now_ns();
    int64_t deadline = start + (int64_t)o->timeout_s * 1000000000LL;
    int64_t quiet_since = start;
    int64_t drain_ns = (int64_t)o->drain_ms * 1000000LL;
    uint64_t last_unique = 0;
    bool was_done = false;
    double cpu0 = bench_process_cpu_s();

    atomic_store(&sh->phase, PHASE_RUN);
    for (;;) {
        bench_sleep_ms(1);
        int64_t now = bench_now_ns();
        uint64_t unique = atomic_load(&sh->unique);
        bool done = atomic_load(&sh->pubs_done) == o->publishers;
        if (atomic_load(&sh->failed) > 0)
            break;
        if (unique != last_unique || (done && !was_done))
            quiet_since = now;
        last_unique = unique;
        was_done = done;
        if (done && unique >= r->expected)
            break;
        if (o->qos == 0 && done && now - quiet_since > drain_ns)
            break;
        if (now > deadline) {
            r->timed_out = true;
            break;
        }
    }
    double wall_s = (double)(bench_now_ns() - start) / 1e9;
    r->tool_cpu_pct = wall_s > 0 ? 100.0 * (bench_process_cpu_s() - cpu0) / wall_s : 0;
}

static void bench_collect(struct bench *b, struct bench_result *r)
{
    struct bench_stats *t = &r->total;
    crew_collect(&b->crew, t, &r->error);
    r->failed = atomic_load(&b->crew.shared.failed);
    int64_t end = b->o.subscribers > 0 ? t->last_recv_ns : t->last_pub_ns;
    uint64_t n = b->o.subscribers > 0 ? t->unique : t->completed;
    if (t->first_pub_ns && end > t->first_pub_ns) {
        r->elapsed_s = (double)(end - t->first_pub_ns) / 1e9;
        r->rate = (double)n / r->elapsed_s;
    }
}

/* The verdict of the exit status; see the file comment of mqbench.c. */
static bool result_ok(const struct bench_opts *o, const struct bench_result *r)
{
    const struct bench_stats *t = &r->total;
    uint64_t to_publish = (uint64_t)o->publishers * (uint64_t)o->count;
    if (r->failed > 0 || t->malformed > 0 || t->completed < to_publish)
        return false;
    if (o->qos > 0 && t->unique < r->expected)
        return false;
    return !(o->qos == 2 && t->duplicates > 0);
}

static double ns_to_ms(uint64_t ns)
{
    return (double)ns / 1e6;
}

/* Figures derived from the merged statistics, for both report formats. */
struct report {
    uint64_t lost;
    double pub_rate;      /* messages written/acknowledged per second */
    double p50, p99, max; /* ms */
};

static struct report report_make(const struct bench_result *r)
{
    const struct bench_stats *t = &r->total;
    struct report p = {
        .lost = r->expected > t->unique ? r->expected - t->unique : 0,
        .p50 = ns_to_ms(hist_percentile(&t->latency, 0.50)),
        .p99 = ns_to_ms(hist_percentile(&t->latency, 0.99)),
        .max = ns_to_ms(t->latency.max),
    };
    if (t->last_pub_ns > t->first_pub_ns)
        p.pub_rate = (double)t->completed / ((double)(t->last_pub_ns - t->first_pub_ns) / 1e9);
    return p;
}

static void report_json(const struct bench_opts *o, const struct bench_result *r, bool ok)
{
    const struct bench_stats *t = &r->total;
    struct report p = report_make(r);

    printf("{\"mode\":\"load\",\"host\":\"%s\",\"port\":%d,\"qos\":%d,\"publishers\":%d,"
           "\"subscribers\":%d,\"size\":%d,\"count\":%ld,\"published\":%" PRIu64
           ",\"completed\":%" PRIu64 ",\"expected\":%" PRIu64 ",\"received\":%" PRIu64
           ",\"lost\":%" PRIu64 ",\"duplicates\":%" PRIu64 ",\"out_of_order\":%" PRIu64
           ",\"malformed\":%" PRIu64 ",\"elapsed_s\":%.3f,\"msgs_per_s\":%.0f,"
           "\"publish_msgs_per_s\":%.0f,\"p50_ms\":%.3f,\"p99_ms\":%.3f,\"max_ms\":%.3f,"
           "\"tool_cpu_pct\":%.0f,\"timed_out\":%s,\"failed_clients\":%d,\"ok\":%s}\n",
           o->host, o->port, o->qos, o->publishers, o->subscribers, o->size, o->count, t->published,
           t->completed, r->expected, t->unique, p.lost, t->duplicates, t->out_of_order,
           t->malformed, r->elapsed_s, r->rate, p.pub_rate, p.p50, p.p99, p.max, r->tool_cpu_pct,
           r->timed_out ? "true" : "false", r->failed, ok ? "true" : "false");
}

static void report_text(const struct bench_opts *o, const struct bench_result *r, bool ok)
{
    const struct bench_stats *t = &r->total;
    struct report p = report_make(r);

    printf("mqbench %s:%d  qos %d  %d pub -> %d sub  %ld msgs/pub  %d B\n", o->host, o->port,
           o->qos, o->publishers, o->subscribers, o->count, o->size);
    printf("published    %" PRIu64 " (%" PRIu64 " %s, %.0f msgs/s)\n", t->published, t->completed,
           o->qos ? "acknowledged" : "written", p.pub_rate);
    printf("received     %" PRIu64 " of %" PRIu64 " expected (%" PRIu64 " lost)\n", t->unique,
           r->expected, p.lost);
    printf("throughput   %.0f msgs/s over %.3f s (first publish to last delivery)\n", r->rate,
           r->elapsed_s);
    printf("latency      p50 %.3f ms  p99 %.3f ms  max %.3f ms\n", p.p50, p.p99, p.max);
    printf("mqbench CPU  %.0f%% of one core while running\n", r->tool_cpu_pct);
    printf("duplicates   %" PRIu64 "  out-of-order %" PRIu64 "  malformed %" PRIu64 "\n",
           t->duplicates, t->out_of_order, t->malformed);
    printf("result       %s%s\n", ok ? "OK" : "FAIL", r->timed_out ? " (timed out)" : "");
    if (r->error)
        printf("error        %s (%d clients failed)\n", r->error, r->failed);
}

/* Holds the idle connections for --hold SEC, or until stdin reaches EOF. */
static void bench_hold_idle(struct bench *b)
{
    int64_t deadline = bench_now_ns() + (int64_t)b->o.hold_s * 1000000000LL;
    char buf[256];

    while (atomic_load(&b->crew.shared.failed) == 0) {
        if (b->o.hold_s > 0) {
            if (bench_now_ns() >= deadline)
                return;
            bench_sleep_ms(10);
            continue;
        }
        struct pollfd p = {.fd = STDIN_FILENO, .events = POLLIN};
        int n = poll(&p, 1, 100);
        if (n < 0 && errno != EINTR)
            return;
        if (n > 0) {
            ssize_t got = read(STDIN_FILENO, buf, sizeof buf);
            if (got == 0 || (got < 0 && errno != EINTR && errno != EAGAIN))
                return;
        }
    }
}

static int bench_run_idle(struct bench *b, int64_t t0)
{
    double connect_s = (double)(bench_now_ns() - t0) / 1e9;
    printf("idle %d ready\n", b->nclients);
    fflush(stdout);
    bench_hold_idle(b);
    int failed = atomic_load(&b->crew.shared.failed);
    crew_stop(&b->crew);
    if (b->o.json)
        printf("{\"mode\":\"idle\",\"idle\":%d,\"failed\":%d,\"connect_s\":%.3f,\"ok\":%s}\n",
               b->nclients, failed, connect_s, failed ? "false" : "true");
    else
        printf("idle: %d connections in %.3f s (%.0f conn/s), %d dropped while held\n", b->nclients,
               connect_s, (double)b->nclients / connect_s, failed);
    return failed ? 1 : 0;
}

int bench_run(const struct bench_opts *opts)
{
    struct bench b = {.o = *opts};
    struct bench_result r = {0};
    char err[256] = "";
    int status = 1;
    int64_t t0 = bench_now_ns();

    if (opts->offline)
        return offline_run(opts);
    r.expected = (uint64_t)opts->publishers * (uint64_t)opts->count * (uint64_t)opts->subscribers;
    int nsockets = opts->idle ? opts->idle : opts->subscribers + opts->publishers;
    /* before bench_create: libmosquitto clients open sockets when created */
    if (bench_raise_nofile(opts, nsockets, err, sizeof err) < 0 ||
        bench_create(&b, err, sizeof err) < 0 ||
        bench_resolve(opts->host, opts->port, &b.addr, &b.addrlen, err, sizeof err) < 0)
        goto fail;
    if (crew_start(&b.crew, &b.o, b.clients, b.nclients, (const struct sockaddr *)&b.addr,
                   b.addrlen, false, err, sizeof err) < 0 ||
        crew_wait_ready(&b.crew, &b.o, err, sizeof err) < 0)
        goto fail;
    if (b.o.idle) {
        status = bench_run_idle(&b, t0);
        goto out;
    }
    bench_drive_load(&b, &r);
    crew_stop(&b.crew);
    bench_collect(&b, &r);
    bool ok = result_ok(&b.o, &r);
    if (b.o.json)
        report_json(&b.o, &r, ok);
    else
        report_text(&b.o, &r, ok);
    status = ok ? 0 : 1;
    goto out;
fail:
    fprintf(stderr, "mqbench: %s\n", err);
    if (b.o.json)
        printf("{\"mode\":\"%s\",\"ok\":false,\"error\":\"%s\"}\n", b.o.idle ? "idle" : "load",
               err);
out:
    bench_destroy(&b);
    return status;
}
