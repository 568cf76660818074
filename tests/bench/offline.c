/* mqbench --offline N: storing and replaying offline messages (QoS 1,
 * cleanSession=0), against the same publish load with nothing to store.
 *
 * N persistent subscribers and --publishers P publishers of --count
 * messages each, M = P * count messages in all, message g to client
 * g % N (offline_rounds() in bench.h). Six cycles, each a crew of its
 * own that ends with a graceful stop (DISCONNECT, then the broker's close),
 * so the broker has processed one cycle before the next starts:
 *
 *   ingest   the publishers publish the M messages with no subscriber at
 *            all: the broker only accepts and acknowledges them (a
 *            reference, skipped with --no-baseline like the next one).
 *   memory   the N subscribers connect with cleanSession=1 and subscribe
 *            to PREFIX/o/<n>; the publishers publish the M messages; the
 *            rate is M / (first publish .. last PUBACK). Clean sessions are
 *            never stored: this is the in-memory case. (--no-baseline
 *            skips it.)
 *   setup    the subscribers connect with cleanSession=0, subscribe, and
 *            disconnect: N persistent sessions, offline.
 *   store    the publishers publish the M messages again; each PUBACK
 *            means the message is stored for its offline session. Rate as
 *            above. Then the broker's storage directory (--store-dir) is
 *            measured.
 *   replay   the subscribers reconnect with cleanSession=0 without
 *            subscribing (the CONNACK must say session present), all at
 *            once (CONNECT_WINDOW per worker), and receive their messages;
 *            the rate is M / (first CONNECT .. last delivery).
 *   cleanup  the subscribers connect with cleanSession=1 and disconnect,
 *            which ends their persistent sessions (a later run against the
 *            same broker must not find them subscribed).
 *
 * Every delivery is checked: it must be the receiver's (topic number),
 * new (a bit per round) and in order per publisher. The run fails on a lost,
 * misrouted or out-of-order message or a failed client; duplicates (QoS 1
 * allows them) are reported. With --broker-pid the broker's CPU time,
 * bytes written (/proc/PID/io) and resident memory are sampled per phase. */
#include <dirent.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bench.h"

/* The broker's counters at one moment (--broker-pid). */
struct proc_sample {
    bool ok;
    double cpu_s;
    uint64_t wchar;       /* bytes passed to write() and the like */
    uint64_t write_bytes; /* bytes sent to the block layer */
    uint64_t rss_kb;
};

struct phase_result {
    bool ran;
    double elapsed_s; /* the measured interval (see the file comment) */
    double rate;      /* messages per second over elapsed_s */
    int64_t t0_ns;    /* start: the crew's start, or PHASE_RUN for publishing cycles */
    double connect_s; /* cycles without PHASE_RUN: start to the last CONNACK */
    double wall_s;    /* the phase's whole wall time, for the CPU figures */
    double tool_cpu_pct;
    double broker_cpu_pct;
    struct proc_sample broker_delta; /* wchar, write_bytes: over the phase */
    uint64_t broker_rss_kb;          /* at the end of the phase */
    struct bench_stats st;
    bool timed_out;
};

struct store_size {
    bool ok;
    uint64_t du, apparent;         /* every file of the directory */
    uint64_t wal_du, wal_apparent; /* files named *-wal */
};

struct offline {
    struct bench_opts o;
    struct client **clients; /* the N subscribers, then the P publishers */
    int nsubs, npubs;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    struct phase_result ingest, memory, setup, store, replay, cleanup;
    struct store_size size_stored, size_replayed;
    int failed;
    int linger_timeouts;
    const char *error;
};

/* ---- measuring the broker ----------------------------------------------- */

static bool proc_read_u64(const char *path, const char *key, uint64_t *out)
{
    FILE *f = fopen(path, "r");
    char line[256];
    size_t klen = strlen(key);
    bool found = false;
    while (f && !found && fgets(line, sizeof line, f)) {
        if (strncmp(line, key, klen) == 0)
            found = sscanf(line + klen, " %" SCNu64, out) == 1;
    }
    if (f)
        fclose(f);
    return found;
}

static struct proc_sample proc_sample_take(int pid)
{
    struct proc_sample s = {0};
    char path[64], buf[1024];
    unsigned long utime, stime;
    if (pid <= 0)
        return s;
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
    if (f)
        fclose(f);
    buf[n] = '\0';
    /* fields 14 and 15, counted after the parenthesised command name */
    const char *p = strrchr(buf, ')');
    if (!p ||
        sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &utime, &stime) != 2)
        return s;
    s.cpu_s = (double)(utime + stime) / (double)sysconf(_SC_CLK_TCK);
    snprintf(path, sizeof path, "/proc/%d/io", pid);
    s.ok = proc_read_u64(path, "wchar:", &s.wchar) &&
           proc_read_u64(path, "write_bytes:", &s.write_bytes);
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    s.ok = proc_read_u64(path, "VmRSS:", &s.rss_kb) && s.ok;
    return s;
}

/* Sizes of the regular files directly in dir: what du counts (allocated
 * blocks) and the apparent sizes, in all and for the SQLite -wal files. */
static struct store_size store_size_measure(const char *dir)
{
    struct store_size z = {0};
    char path[4096];
    DIR *d = dir ? opendir(dir) : NULL;
    if (!d)
        return z;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        struct stat sb;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (lstat(path, &sb) < 0 || !S_ISREG(sb.st_mode))
            continue;
        size_t len = strlen(e->d_name);
        bool wal = len > 4 && strcmp(e->d_name + len - 4, "-wal") == 0;
        z.du += (uint64_t)sb.st_blocks * 512;
        z.apparent += (uint64_t)sb.st_size;
        if (wal) {
            z.wal_du += (uint64_t)sb.st_blocks * 512;
            z.wal_apparent += (uint64_t)sb.st_size;
        }
    }
    closedir(d);
    z.ok = true;
    return z;
}

/* ---- cycles ------------------------------------------------------------- */

/* What one cycle does, and when it is complete. */
struct cycle {
    struct client **clients;
    int n;
    bool clean, subscribe; /* for the subscribers among clients */
    bool run;              /* PHASE_RUN once all are ready (publishers publish) */
    int npubs;             /* publishers that must finish */
    uint64_t deliveries;   /* deliveries that must arrive */
};

/* Polls until the cycle is complete (every client ready, the publishers
 * done, the deliveries in), a client failed or the deadline passed. */
static void cycle_wait(struct crew *cr, const struct cycle *cy, int64_t deadline,
                       struct phase_result *r)
{
    for (;;) {
        if (atomic_load(&cr->shared.failed) > 0)
            return;
        if (atomic_load(&cr->shared.ready) == cy->n &&
            atomic_load(&cr->shared.pubs_done) >= cy->npubs &&
            atomic_load(&cr->shared.unique) >= cy->deliveries)
            return;
        if (bench_now_ns() > deadline) {
            r->timed_out = true;
            return;
        }
        bench_sleep_ms(1);
    }
}

/* Runs one crew through the cycle; fills r with the statistics, the times
 * and the broker's figures. -1 with err filled if the crew could not be
 * started or its clients did not all get ready. */
static int offline_cycle(struct offline *off, const struct cycle *cy, struct phase_result *r,
                         char *err, size_t errlen)
{
    const struct bench_opts *o = &off->o;
    struct crew cr = {0};
    int ret = -1;

    for (int i = 0; i < cy->n; i++) {
        client_reset(cy->clients[i], o);
        cy->clients[i]->clean = cy->clean;
        cy->clients[i]->subscribe = cy->subscribe;
    }
    *r = (struct phase_result){.ran = true, .t0_ns = bench_now_ns()};
    double cpu0 = bench_process_cpu_s();
    struct proc_sample b0 = proc_sample_take(o->broker_pid);
    if (crew_start(&cr, o, cy->clients, cy->n, (const struct sockaddr *)&off->addr, off->addrlen,
                   true, err, errlen) < 0)
        goto out;
    if (cy->run) {
        if (crew_wait_ready(&cr, o, err, errlen) < 0)
            goto out;
        r->t0_ns = bench_now_ns();
        cpu0 = bench_process_cpu_s();
        b0 = proc_sample_take(o->broker_pid);
        atomic_store(&cr.shared.phase, PHASE_RUN);
    }
    cycle_wait(&cr, cy, r->t0_ns + (int64_t)o->timeout_s * 1000000000LL, r);
    int64_t t1 = bench_now_ns();
    struct proc_sample b1 = proc_sample_take(o->broker_pid);
    r->wall_s = (double)(t1 - r->t0_ns) / 1e9;
    r->tool_cpu_pct = r->wall_s > 0 ? 100.0 * (bench_process_cpu_s() - cpu0) / r->wall_s : 0;
    if (b0.ok && b1.ok) {
        r->broker_cpu_pct = r->wall_s > 0 ? 100.0 * (b1.cpu_s - b0.cpu_s) / r->wall_s : 0;
        r->broker_delta.wchar = b1.wchar - b0.wchar;
        r->broker_delta.write_bytes = b1.write_bytes - b0.write_bytes;
        r->broker_rss_kb = b1.rss_kb;
        r->broker_delta.ok = true;
    }
    ret = 0;
out:
    crew_stop(&cr);
    crew_collect(&cr, &r->st, &off->error);
    if (r->st.last_ready_ns > r->t0_ns)
        r->connect_s = (double)(r->st.last_ready_ns - r->t0_ns) / 1e9;
    off->failed += atomic_load(&cr.shared.failed);
    for (int i = 0; cr.workers && i < cr.nworkers; i++)
        off->linger_timeouts += cr.workers[i].linger_timeouts;
    crew_free(&cr);
    return ret;
}

/* Publish rate: acknowledged messages over first publish .. last PUBACK. */
static void phase_publish_rate(struct phase_result *r)
{
    const struct bench_stats *t = &r->st;
    if (t->first_pub_ns && t->last_pub_ns > t->first_pub_ns) {
        r->elapsed_s = (double)(t->last_pub_ns - t->first_pub_ns) / 1e9;
        r->rate = (double)t->completed / r->elapsed_s;
    }
}

/* Publishing to topics without a subscriber: what accepting and
 * acknowledging costs the broker, without delivering or storing. */
static int offline_ingest(struct offline *off, char *err, size_t errlen)
{
    struct cycle cy = {
        .clients = off->clients + off->nsubs, .n = off->npubs, .run = true, .npubs = off->npubs};
    if (offline_cycle(off, &cy, &off->ingest, err, errlen) < 0)
        return -1;
    phase_publish_rate(&off->ingest);
    return 0;
}

static int offline_memory(struct offline *off, char *err, size_t errlen)
{
    uint64_t m = offline_total(&off->o);
    struct cycle cy = {.clients = off->clients,
                       .n = off->nsubs + off->npubs,
                       .clean = true,
                       .subscribe = true,
                       .run = true,
                       .npubs = off->npubs,
                       .deliveries = m};
    if (offline_cycle(off, &cy, &off->memory, err, errlen) < 0)
        return -1;
    phase_publish_rate(&off->memory);
    return 0;
}

static int offline_setup(struct offline *off, char *err, size_t errlen)
{
    struct cycle cy = {.clients = off->clients, .n = off->nsubs, .subscribe = true};
    return offline_cycle(off, &cy, &off->setup, err, errlen);
}

static int offline_store(struct offline *off, char *err, size_t errlen)
{
    struct cycle cy = {
        .clients = off->clients + off->nsubs, .n = off->npubs, .run = true, .npubs = off->npubs};
    if (offline_cycle(off, &cy, &off->store, err, errlen) < 0)
        return -1;
    phase_publish_rate(&off->store);
    return 0;
}

/* Replay: from the crew's start (first CONNECT) to the last delivery. */
static int offline_replay(struct offline *off, char *err, size_t errlen)
{
    struct phase_result *r = &off->replay;
    struct cycle cy = {
        .clients = off->clients, .n = off->nsubs, .deliveries = offline_total(&off->o)};
    if (offline_cycle(off, &cy, r, err, errlen) < 0)
        return -1;
    if (r->st.last_recv_ns > r->t0_ns) {
        r->elapsed_s = (double)(r->st.last_recv_ns - r->t0_ns) / 1e9;
        r->rate = (double)r->st.unique / r->elapsed_s;
    }
    return 0;
}

/* Ends the persistent sessions: a connection with cleanSession=1 discards
 * the session [MQTT-3.1.2-6], and closing it ends the new clean one. So a
 * later run against the same broker does not find these subscribers. */
static int offline_cleanup(struct offline *off, char *err, size_t errlen)
{
    struct cycle cy = {.clients = off->clients, .n = off->nsubs, .clean = true};
    return offline_cycle(off, &cy, &off->cleanup, err, errlen);
}

/* ---- set-up, verdict, report -------------------------------------------- */

static void offline_destroy(struct offline *off)
{
    for (int i = 0; off->clients && i < off->nsubs + off->npubs; i++)
        client_destroy(off->clients[i]);
    free(off->clients);
    off->clients = NULL;
}

static int offline_create(struct offline *off, char *err, size_t errlen)
{
    const struct bench_opts *o = &off->o;
    int n = o->offline + o->publishers;
    off->clients = calloc((size_t)n, sizeof *off->clients);
    if (!off->clients)
        goto nomem;
    for (int i = 0; i < n; i++) {
        bool sub = i < o->offline;
        struct client *c = client_create(o, sub ? ROLE_SUB : ROLE_PUB, sub ? i : i - o->offline);
        if (!c)
            goto nomem;
        off->clients[i] = c;
        *(sub ? &off->nsubs : &off->npubs) += 1;
    }
    return 0;
nomem:
    snprintf(err, errlen, "out of memory creating %d clients", n);
    return -1;
}

/* Deliveries of a receiving phase: all of them, each to its client, in
 * order per publisher. */
static bool phase_delivered(const struct phase_result *r, uint64_t m)
{
    const struct bench_stats *t = &r->st;
    return !r->timed_out && t->unique == m && t->malformed == 0 && t->out_of_order == 0;
}

static bool offline_ok(const struct offline *off)
{
    uint64_t m = offline_total(&off->o);
    if (off->failed > 0 || off->error)
        return false;
    if (off->memory.ran && (off->memory.st.completed < m || !phase_delivered(&off->memory, m)))
        return false;
    if (off->ingest.ran && (off->ingest.timed_out || off->ingest.st.completed < m))
        return false;
    if (off->setup.timed_out || off->store.timed_out || off->store.st.completed < m ||
        off->cleanup.timed_out)
        return false;
    return phase_delivered(&off->replay, m);
}

static double offline_ratio(const struct offline *off)
{
    return off->memory.rate > 0 ? off->store.rate / off->memory.rate : 0;
}

static void json_phase(const char *name, const struct phase_result *r)
{
    printf(",\"%s_msgs_per_s\":%.0f,\"%s_elapsed_s\":%.3f,\"%s_tool_cpu_pct\":%.0f", name, r->rate,
           name, r->elapsed_s, name, r->tool_cpu_pct);
    if (r->broker_delta.ok)
        printf(",\"%s_broker_cpu_pct\":%.0f,\"%s_broker_wchar\":%" PRIu64
               ",\"%s_broker_write_bytes\":%" PRIu64 ",\"%s_broker_rss_kb\":%" PRIu64,
               name, r->broker_cpu_pct, name, r->broker_delta.wchar, name,
               r->broker_delta.write_bytes, name, r->broker_rss_kb);
}

static void report_json(const struct offline *off, bool ok)
{
    const struct bench_opts *o = &off->o;
    const struct bench_stats *t = &off->replay.st;
    uint64_t m = offline_total(o);
    printf("{\"mode\":\"offline\",\"host\":\"%s\",\"port\":%d,\"clients\":%d,\"publishers\":%d,"
           "\"count\":%ld,\"messages\":%" PRIu64 ",\"size\":%d,\"inflight\":%d",
           o->host, o->port, o->offline, o->publishers, o->count, m, o->size, o->inflight);
    if (off->ingest.ran)
        json_phase("ingest", &off->ingest);
    if (off->memory.ran) {
        json_phase("memory", &off->memory);
        printf(",\"memory_received\":%" PRIu64, off->memory.st.unique);
    }
    json_phase("store", &off->store);
    printf(",\"store_acknowledged\":%" PRIu64, off->store.st.completed);
    if (off->size_stored.ok)
        printf(",\"store_du_bytes\":%" PRIu64 ",\"store_wal_du_bytes\":%" PRIu64
               ",\"store_apparent_bytes\":%" PRIu64 ",\"store_wal_apparent_bytes\":%" PRIu64
               ",\"replayed_du_bytes\":%" PRIu64 ",\"replayed_wal_du_bytes\":%" PRIu64,
               off->size_stored.du, off->size_stored.wal_du, off->size_stored.apparent,
               off->size_stored.wal_apparent, off->size_replayed.du, off->size_replayed.wal_du);
    json_phase("replay", &off->replay);
    printf(",\"replay_connect_s\":%.3f,\"received\":%" PRIu64 ",\"lost\":%" PRIu64
           ",\"duplicates\":%" PRIu64 ",\"out_of_order\":%" PRIu64 ",\"malformed\":%" PRIu64,
           off->replay.connect_s, t->unique, m > t->unique ? m - t->unique : 0, t->duplicates,
           t->out_of_order, t->malformed);
    if (off->memory.ran)
        printf(",\"ratio\":%.3f", offline_ratio(off));
    printf(",\"failed_clients\":%d,\"linger_timeouts\":%d,\"ok\":%s}\n", off->failed,
           off->linger_timeouts, ok ? "true" : "false");
}

static void text_broker(const struct phase_result *r)
{
    if (!r->broker_delta.ok)
        return;
    printf("             broker: CPU %.0f%%, wrote %.1f MB (%.0f B/msg; %.1f MB to disk), "
           "VmRSS %.1f MB\n",
           r->broker_cpu_pct, (double)r->broker_delta.wchar / 1e6,
           r->st.completed + r->st.unique
               ? (double)r->broker_delta.wchar / (double)(r->st.completed + r->st.unique)
               : 0,
           (double)r->broker_delta.write_bytes / 1e6, (double)r->broker_rss_kb / 1024);
}

static void report_text(const struct offline *off, bool ok)
{
    const struct bench_opts *o = &off->o;
    const struct bench_stats *t = &off->replay.st;
    uint64_t m = offline_total(o);
    printf("mqbench offline %s:%d  %d persistent clients, %d publishers x %ld = %" PRIu64
           " msgs of %d B, QoS 1\n",
           o->host, o->port, o->offline, o->publishers, o->count, m, o->size);
    if (off->ingest.ran) {
        printf("no receiver  %" PRIu64 " PUBACKed in %.3f s: %.0f msgs/s (no subscriber: accepted "
               "and dropped); mqbench CPU %.0f%%\n",
               off->ingest.st.completed, off->ingest.elapsed_s, off->ingest.rate,
               off->ingest.tool_cpu_pct);
        text_broker(&off->ingest);
    }
    if (off->memory.ran) {
        printf("in-memory    %" PRIu64
               " PUBACKed in %.3f s: %.0f msgs/s (clean subscribers online, "
               "%" PRIu64 " delivered); mqbench CPU %.0f%%\n",
               off->memory.st.completed, off->memory.elapsed_s, off->memory.rate,
               off->memory.st.unique, off->memory.tool_cpu_pct);
        text_broker(&off->memory);
    }
    printf("store        %" PRIu64 " PUBACKed in %.3f s: %.0f msgs/s (subscribers offline); "
           "mqbench CPU %.0f%%\n",
           off->store.st.completed, off->store.elapsed_s, off->store.rate, off->store.tool_cpu_pct);
    text_broker(&off->store);
    if (off->size_stored.ok)
        printf("store size   %.1f MB on disk, WAL %.1f MB (apparent %.1f MB, WAL %.1f MB); "
               "after replay %.1f MB\n",
               (double)off->size_stored.du / 1e6, (double)off->size_stored.wal_du / 1e6,
               (double)off->size_stored.apparent / 1e6, (double)off->size_stored.wal_apparent / 1e6,
               (double)off->size_replayed.du / 1e6);
    printf("replay       %" PRIu64 " of %" PRIu64 " received in %.3f s: %.0f msgs/s (%d sessions "
           "resumed in %.3f s); mqbench CPU %.0f%%\n",
           t->unique, m, off->replay.elapsed_s, off->replay.rate, off->nsubs, off->replay.connect_s,
           off->replay.tool_cpu_pct);
    text_broker(&off->replay);
    printf("check        lost %" PRIu64 "  duplicates %" PRIu64 "  out-of-order %" PRIu64
           "  malformed %" PRIu64 "\n",
           m > t->unique ? m - t->unique : 0, t->duplicates, t->out_of_order, t->malformed);
    if (off->memory.ran)
        printf("ratio        store / in-memory publish rate %.3f\n", offline_ratio(off));
    printf("result       %s\n", ok ? "OK" : "FAIL");
    if (off->error)
        printf("error        %s (%d clients failed)\n", off->error, off->failed);
}

int offline_run(const struct bench_opts *opts)
{
    struct offline off = {.o = *opts};
    char err[256] = "";
    int status = 1;

    if (bench_raise_nofile(opts, opts->offline + opts->publishers, err, sizeof err) < 0 ||
        offline_create(&off, err, sizeof err) < 0 ||
        bench_resolve(opts->host, opts->port, &off.addr, &off.addrlen, err, sizeof err) < 0)
        goto fail;
    if (!opts->no_baseline &&
        (offline_ingest(&off, err, sizeof err) < 0 || offline_memory(&off, err, sizeof err) < 0))
        goto fail;
    if (off.failed == 0 && offline_setup(&off, err, sizeof err) < 0)
        goto fail;
    if (off.failed == 0 && offline_store(&off, err, sizeof err) < 0)
        goto fail;
    off.size_stored = store_size_measure(opts->store_dir);
    if (off.failed == 0 && offline_replay(&off, err, sizeof err) < 0)
        goto fail;
    off.size_replayed = store_size_measure(opts->store_dir);
    if (off.failed == 0 && offline_cleanup(&off, err, sizeof err) < 0)
        goto fail;
    bool ok = offline_ok(&off);
    if (opts->json)
        report_json(&off, ok);
    else
        report_text(&off, ok);
    status = ok ? 0 : 1;
    goto out;
fail:
    fprintf(stderr, "mqbench: %s\n", err);
    if (opts->json)
        printf("{\"mode\":\"offline\",\"ok\":false,\"error\":\"%s\"}\n", err);
out:
    offline_destroy(&off);
    return status;
}
