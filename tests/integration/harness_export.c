/* The export tests' shared parts: services, broker log and counters,
 * publishers whose messages identify themselves, the check of what a sink
 * holds, the four scenarios run against every sink, and the SQLite sink
 * reader. See harness_export.h. */
#include "harness_export.h"

#include <check.h>
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#ifndef MQB_SOURCE_DIR
#define MQB_SOURCE_DIR "."
#endif

#define EX_POLL_MS 20    /* polling period of a sink or the log */
#define EX_CTL_MS 120000 /* tests/services/ctl: a Kafka start may be slow */
#define EX_CLOCK_SLACK_MS 2000

/* ---- environment, services, names ---- */

const char *ex_env(const char *name)
{
    const char *v = getenv(name);
    ck_assert_msg(v && *v,
                  "%s is not set: the export tests need the servers of tests/services. Run "
                  "them under `tests/services/run -- ctest ...` (scripts/test does), or first "
                  "`set -a; eval \"$(tests/services/start)\"; set +a`",
                  name);
    return v;
}

void ex_services_ctl_spawn(struct it_proc *p, const char *action, const char *service)
{
    char *argv[] = {MQB_SOURCE_DIR "/tests/services/ctl", (char *)ex_env("MQB_SERVICES_DIR"),
                    (char *)action, (char *)service, NULL};
    ck_assert_msg(it_proc_spawn(p, argv) == 0, "cannot run %s", argv[0]);
}

void ex_services_ctl_wait(struct it_proc *p, const char *what)
{
    int st = it_proc_wait(p, EX_CTL_MS);
    ck_assert_msg(st == 0, "tests/services/ctl %s: exit status %d: %s", what, st,
                  p->err.data ? (char *)p->err.data : "");
    it_proc_cleanup(p);
}

void ex_services_ctl(const char *action, const char *service)
{
    struct it_proc p;
    char what[64];
    snprintf(what, sizeof what, "%s %s", action, service);
    ex_services_ctl_spawn(&p, action, service);
    ex_services_ctl_wait(&p, what);
}

void ex_unique_name(char *out, size_t len, const char *prefix)
{
    static unsigned n;
    /* pid and time: a rerun against long-lived services gets new names */
    snprintf(out, len, "%s_%ld_%u_%u", prefix, (long)getpid(), (unsigned)(ex_wall_ms() % 100000000),
             n++);
}

int64_t ex_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- the broker, its log and counters ---- */

void ex_broker_start(struct it_broker *b, const char *extra_yaml)
{
    struct it_broker_opts o = {.instance_yaml = EX_INSTANCE, .extra_yaml = extra_yaml};
    it_broker_start(b, &o);
}

long ex_log_size(const struct it_broker *b)
{
    struct stat st;
    return stat(b->log, &st) == 0 ? (long)st.st_size : 0;
}

/* The log from byte `from` to its end, NUL-terminated; the caller frees. */
static char *ex_log_read(const struct it_broker *b, long from)
{
    FILE *f = fopen(b->log, "r");
    ck_assert_msg(f != NULL, "cannot open %s", b->log);
    fseek(f, 0, SEEK_END);
    long end = ftell(f);
    if (from > end)
        from = end;
    fseek(f, from, SEEK_SET);
    char *text = malloc((size_t)(end - from) + 1);
    ck_assert(text != NULL);
    size_t n = fread(text, 1, (size_t)(end - from), f);
    text[n] = '\0';
    fclose(f);
    return text;
}

/* The first complete line of text holding a and (unless NULL) b. */
static bool ex_text_line(char *text, const char *a, const char *b, char *out, size_t len)
{
    for (char *line = text, *nl; (nl = strchr(line, '\n')) != NULL; line = nl + 1) {
        *nl = '\0';
        if (strstr(line, a) && (!b || strstr(line, b))) {
            snprintf(out, len, "%s", line);
            return true;
        }
    }
    return false;
}

bool ex_log_wait(const struct it_broker *b, long from, const char *a, const char *b2, char *line,
                 size_t len, int timeout_ms)
{
    int64_t deadline = it_now_ms() + timeout_ms;
    for (;;) {
        char *text = ex_log_read(b, from);
        bool found = ex_text_line(text, a, b2, line, len);
        free(text);
        if (found)
            return true;
        if (it_now_ms() >= deadline)
            return false;
        poll(NULL, 0, EX_POLL_MS);
    }
}

/* The counter " name=N" of a stats line into *out. false when absent. */
static bool ex_stats_value(const char *line, const char *name, uint64_t *out)
{
    char key[48];
    snprintf(key, sizeof key, " %s=", name);
    const char *p = strstr(line, key);
    if (!p || !strchr("0123456789", p[strlen(key)]))
        return false;
    *out = strtoull(p + strlen(key), NULL, 10);
    return true;
}

/* SIGUSR1 and the first line after it holding needle. */
static void ex_stats_line(const struct it_broker *b, const char *needle, char *line, size_t len)
{
    long from = ex_log_size(b);
    ck_assert_msg(b->pid > 0 && kill(b->pid, SIGUSR1) == 0, "SIGUSR1 to the broker failed");
    ck_assert_msg(ex_log_wait(b, from, needle, NULL, line, len, IT_WAIT_MS),
                  "no '%s' line in the broker log after SIGUSR1", needle);
}

void ex_stats_rule(const struct it_broker *b, const char *rule, struct ex_rule_stats *out)
{
    char needle[96];
    snprintf(needle, sizeof needle, "stats: rule %s ", rule);
    ex_stats_line(b, needle, out->line, sizeof out->line);
    ck_assert_msg(ex_stats_value(out->line, "matched", &out->matched) &&
                      ex_stats_value(out->line, "exported", &out->exported) &&
                      ex_stats_value(out->line, "queued", &out->queued) &&
                      ex_stats_value(out->line, "dropped", &out->dropped),
                  "stats line without matched/exported/queued/dropped: %s", out->line);
}

bool ex_stats_add_up(const struct ex_rule_stats *st)
{
    /* each part first, so a counter that went below zero (and wrapped)
     * cannot make the sum come out right */
    return st->exported <= st->matched && st->queued <= st->matched && st->dropped <= st->matched &&
           st->matched == st->exported + st->queued + st->dropped;
}

void ex_stats_expect_settled(const struct it_broker *b, const char *rule, int64_t want_matched)
{
    int64_t deadline = it_now_ms() + EX_SINK_MS;
    struct ex_rule_stats st;
    for (;;) {
        ex_stats_rule(b, rule, &st);
        ck_assert_msg(ex_stats_add_up(&st), "rule %s: matched != exported + queued + dropped: %s",
                      rule, st.line);
        if (st.queued == 0)
            break;
        ck_assert_msg(it_now_ms() < deadline, "rule %s: records still queued after %d ms: %s", rule,
                      EX_SINK_MS, st.line);
        poll(NULL, 0, 100); /* the polling period */
    }
    ck_assert_msg(st.dropped == 0, "rule %s dropped records: %s", rule, st.line);
    if (want_matched >= 0)
        ck_assert_msg(st.matched == (uint64_t)want_matched && st.exported == st.matched,
                      "rule %s: want matched=exported=%" PRId64 ": %s", rule, want_matched,
                      st.line);
}

void ex_stats_expect_connected(const struct it_broker *b, const char *connector)
{
    char needle[96], line[1024];
    snprintf(needle, sizeof needle, "stats: connector %s ", connector);
    int64_t deadline = it_now_ms() + EX_SINK_MS;
    for (;;) {
        ex_stats_line(b, needle, line, sizeof line);
        if (strstr(line, " state=connected"))
            return;
        ck_assert_msg(it_now_ms() < deadline, "connector %s not connected after %d ms: %s",
                      connector, EX_SINK_MS, line);
        poll(NULL, 0, 100); /* the polling period */
    }
}

/* ---- lists ---- */

char *ex_strndup(const void *p, size_t n)
{
    if (!p)
        return NULL;
    char *s = malloc(n + 1);
    ck_assert(s != NULL);
    memcpy(s, p, n);
    s[n] = '\0';
    return s;
}

/* Grow a list of items of size `size` to hold one more; returns the new,
 * zeroed item. */
static void *ex_list_add(void **v, size_t *n, size_t *cap, size_t size)
{
    if (*n == *cap) {
        *cap = *cap ? *cap * 2 : 256;
        *v = realloc(*v, *cap * size);
        ck_assert(*v != NULL);
    }
    void *item = (char *)*v + (*n)++ * size;
    memset(item, 0, size);
    return item;
}

struct ex_msg *ex_msgs_add(struct ex_msgs *l)
{
    return ex_list_add((void **)&l->v, &l->n, &l->cap, sizeof *l->v);
}

struct ex_event *ex_events_add(struct ex_events *l)
{
    return ex_list_add((void **)&l->v, &l->n, &l->cap, sizeof *l->v);
}

void ex_msgs_clear(struct ex_msgs *l)
{
    for (size_t i = 0; i < l->n; i++) {
        struct ex_msg *m = &l->v[i];
        free(m->topic);
        free(m->client_id);
        free(m->msg_id);
        free(m->key);
        free(m->payload);
    }
    l->n = 0;
}

void ex_events_clear(struct ex_events *l)
{
    for (size_t i = 0; i < l->n; i++) {
        struct ex_event *e = &l->v[i];
        free(e->client_id);
        free(e->event_type);
        free(e->channel_id);
        free(e->client_ip);
        free(e->body);
        free(e->key);
    }
    l->n = 0;
}

/* ---- publishers: messages that identify themselves ---- */

/* Topic SensorData/pub<c>/<seq>. */
static void ex_topic(unsigned c, uint32_t seq, char *out, size_t len)
{
    snprintf(out, len, EX_PARENT "/pub%u/%u", c, (unsigned)seq);
}

static bool ex_topic_parse(const char *topic, unsigned *c, uint32_t *seq)
{
    unsigned cc, ss;
    int end = -1;
    if (!topic || sscanf(topic, EX_PARENT "/pub%u/%u%n", &cc, &ss, &end) != 2 ||
        topic[end] != '\0' || cc >= EX_CLIENTS_MAX || ss >= EX_SEQ_MAX)
        return false;
    *c = cc;
    *seq = ss;
    return true;
}

/* The payload of message seq of client c: text naming it, bytes that need
 * care in every sink (NUL, 0xff, a quote, a backslash, a newline), and a
 * tail whose length varies with seq. */
static size_t ex_payload(unsigned c, uint32_t seq, uint8_t *out, size_t cap)
{
    static const uint8_t odd[] = {0x00, 0xff, 0x80, '"', '\\', '\n', 0x7f};
    int n = snprintf((char *)out, cap, "pub%u seq=%u ", c, (unsigned)seq);
    size_t len = (size_t)n;
    ck_assert(n > 0 && len + sizeof odd + 41 <= cap);
    memcpy(out + len, odd, sizeof odd);
    len += sizeof odd;
    for (uint32_t i = 0; i < seq % 41; i++)
        out[len++] = (uint8_t)('a' + (seq + i) % 26);
    return len;
}

static uint8_t *ex_state_of(struct ex_pub *p, unsigned c, uint32_t seq)
{
    return &p->state[(size_t)c * EX_SEQ_MAX + seq];
}

void ex_pub_reconnect(struct ex_pub *p)
{
    for (unsigned c = 0; c < p->clients; c++) {
        char id[64];
        snprintf(id, sizeof id, EX_GROUP "@@@pub%u", c);
        it_raw_close(&p->raw[c]);
        it_raw_connect_ok(&p->raw[c], p->b->port, id, true, false);
    }
}

void ex_pub_open(struct ex_pub *p, const struct it_broker *b, unsigned clients)
{
    memset(p, 0, sizeof *p);
    ck_assert(clients > 0 && clients <= EX_CLIENTS_MAX);
    p->b = b;
    p->clients = clients;
    p->state = calloc((size_t)EX_CLIENTS_MAX * EX_SEQ_MAX, 1);
    p->ids = calloc((size_t)EX_CLIENTS_MAX * EX_SEQ_MAX, sizeof *p->ids);
    ck_assert(p->state && p->ids);
    for (unsigned c = 0; c < EX_CLIENTS_MAX; c++)
        p->raw[c].fd = -1;
    p->wall_start = ex_wall_ms();
    ex_pub_reconnect(p);
}

void ex_pub_close(struct ex_pub *p)
{
    for (unsigned c = 0; c < p->clients; c++) {
        if (p->raw[c].fd >= 0)
            ck_assert_msg(it_raw_leave(&p->raw[c]) == 0, "pub%u: no clean goodbye", c);
    }
    free(p->state);
    free(p->ids);
    p->state = NULL;
    p->ids = NULL;
}

unsigned ex_pub_acked(const struct ex_pub *p)
{
    unsigned n = 0;
    for (size_t i = 0; i < (size_t)EX_CLIENTS_MAX * EX_SEQ_MAX; i++)
        n += p->state[i] == EX_ACKED;
    return n;
}

static void ex_pub_send(struct ex_pub *p, unsigned c)
{
    uint32_t seq = p->next[c]++;
    ck_assert_msg(seq < EX_SEQ_MAX, "pub%u: more than %d messages", c, EX_SEQ_MAX);
    char topic[64];
    uint8_t payload[128];
    ex_topic(c, seq, topic, sizeof topic);
    size_t len = ex_payload(c, seq, payload, sizeof payload);
    ck_assert_msg(
        it_raw_publish(&p->raw[c], topic, payload, len, 1, false, false, (uint16_t)(seq + 1)) == 0,
        "pub%u: sending %s failed", c, topic);
    *ex_state_of(p, c, seq) = EX_SENT;
}

/* Read one packet of client c: a PUBACK marks its message acknowledged.
 * Returns what it_raw_next returned. */
static int ex_pub_read(struct ex_pub *p, unsigned c, int timeout_ms)
{
    struct it_pkt k;
    int t = it_raw_next(&p->raw[c], &k, timeout_ms);
    if (t <= 0)
        return t;
    uint16_t pid = k.pid;
    it_pkt_clear(&k);
    ck_assert_msg(t == MQTT_PUBACK, "pub%u: got packet type %d, want PUBACK", c, t);
    uint32_t seq = (uint32_t)pid - 1;
    ck_assert_msg(pid > 0 && seq < p->next[c] && *ex_state_of(p, c, seq) == EX_SENT,
                  "pub%u: PUBACK %u for no message in flight", c, pid);
    *ex_state_of(p, c, seq) = EX_ACKED;
    return t;
}

/* The loop of ex_pub_run / ex_pub_run_kill: top up each client's window,
 * read one PUBACK per client with messages in flight. With b, stops once
 * kill_after PUBACKs came and SIGKILLs the broker (see harness_export.h). */
static void ex_pub_loop(struct ex_pub *p, struct it_broker *b, unsigned count, unsigned window,
                        unsigned kill_after)
{
    uint32_t end[EX_CLIENTS_MAX];
    unsigned inflight[EX_CLIENTS_MAX] = {0}, acked = 0;
    for (unsigned c = 0; c < p->clients; c++)
        end[c] = p->next[c] + count;
    for (bool busy = true; busy;) {
        busy = false;
        for (unsigned c = 0; c < p->clients; c++) {
            for (; inflight[c] < window && p->next[c] < end[c]; inflight[c]++)
                ex_pub_send(p, c);
            if (inflight[c] == 0)
                continue;
            busy = true;
            int t = ex_pub_read(p, c, IT_WAIT_MS);
            ck_assert_msg(t == MQTT_PUBACK, "pub%u: no PUBACK within %d ms (got %d)", c, IT_WAIT_MS,
                          t);
            inflight[c]--;
            acked++;
        }
        if (b && acked >= kill_after)
            break;
    }
    if (!b)
        return;
    /* One more window in flight per client, then the crash. */
    for (unsigned c = 0; c < p->clients; c++)
        for (unsigned i = 0; i < window && p->next[c] < end[c]; i++)
            ex_pub_send(p, c);
    it_broker_kill9(b);
    /* PUBACKs the broker wrote before it died are in the sockets. */
    for (unsigned c = 0; c < p->clients; c++) {
        while (ex_pub_read(p, c, 200) > 0)
            ;
        it_raw_close(&p->raw[c]);
    }
}

void ex_pub_run(struct ex_pub *p, unsigned count, unsigned window)
{
    ex_pub_loop(p, NULL, count, window, 0);
}

void ex_pub_run_kill(struct ex_pub *p, struct it_broker *b, unsigned count, unsigned window,
                     unsigned kill_after)
{
    ex_pub_loop(p, b, count, window, kill_after);
}

/* Lines "GID_sensors@@@pub<c>: PUBLISH SensorData/pub<c>/<seq> qos=1
 * id=<hex> (...)". */
void ex_pub_load_ids(struct ex_pub *p)
{
    char *text = ex_log_read(p->b, 0);
    for (char *line = text, *nl; line && *line; line = nl ? nl + 1 : NULL) {
        nl = strchr(line, '\n');
        if (nl)
            *nl = '\0';
        const char *at = strstr(line, "@@@pub");
        unsigned c, c2, seq, qos;
        char hex[17];
        if (!at || sscanf(at, "@@@pub%u: PUBLISH " EX_PARENT "/pub%u/%u qos=%u id=%16[0-9a-f]", &c,
                          &c2, &seq, &qos, hex) != 5)
            continue;
        if (c == c2 && c < EX_CLIENTS_MAX && seq < EX_SEQ_MAX)
            memcpy(p->ids[(size_t)c * EX_SEQ_MAX + seq], hex, sizeof hex);
    }
    free(text);
}

/* ---- checking the messages a sink holds ---- */

static const char *ex_s(const char *s)
{
    return s ? s : "(missing)";
}

static bool ex_is_hex(const char *s, size_t n)
{
    if (!s || strlen(s) != n)
        return false;
    return strspn(s, "0123456789abcdef") == n;
}

/* Everything about message k except order and repeats. */
static void ex_msg_check_content(struct ex_pub *p, size_t k, const struct ex_msg *m, unsigned c,
                                 uint32_t seq)
{
    char id[64];
    uint8_t want[128];
    snprintf(id, sizeof id, EX_GROUP "@@@pub%u", c);
    ck_assert_msg(m->client_id && !strcmp(m->client_id, id), "message %zu (%s): client id '%s'", k,
                  m->topic, ex_s(m->client_id));
    ck_assert_msg(!m->key || !strcmp(m->key, id), "message %zu (%s): key '%s', want '%s'", k,
                  m->topic, m->key, id);
    ck_assert_msg(m->qos == 1, "message %zu (%s): qos %d, want 1", k, m->topic, m->qos);
    size_t len = ex_payload(c, seq, want, sizeof want);
    ck_assert_msg(m->payload && m->len == len && !memcmp(m->payload, want, len),
                  "message %zu (%s): payload of %zu bytes differs from the %zu published", k,
                  m->topic, m->len, len);
    const char *logged = p->ids[(size_t)c * EX_SEQ_MAX + seq];
    ck_assert_msg(logged[0], "message %zu (%s): no PUBLISH line with its id in the broker log", k,
                  m->topic);
    ck_assert_msg(ex_is_hex(m->msg_id, 16) && !strcmp(m->msg_id, logged),
                  "message %zu (%s): message id '%s', the broker gave it %s", k, m->topic,
                  ex_s(m->msg_id), logged);
    int64_t now = ex_wall_ms();
    ck_assert_msg(m->time_ms == 0 || (m->time_ms >= p->wall_start - EX_CLOCK_SLACK_MS &&
                                      m->time_ms <= now + EX_CLOCK_SLACK_MS),
                  "message %zu (%s): time %" PRId64 " outside the test's [%" PRId64 ", %" PRId64
                  "]",
                  k, m->topic, m->time_ms, p->wall_start, now);
}

struct ex_check {
    unsigned missing;
    size_t dups;
};

static int ex_msgs_check_into(struct ex_pub *p, const struct ex_msgs *got, uint32_t lo, uint32_t hi,
                              bool no_dups, struct ex_check *r)
{
    uint16_t *seen = calloc((size_t)EX_CLIENTS_MAX * EX_SEQ_MAX, sizeof *seen);
    int64_t last[EX_CLIENTS_MAX];
    ck_assert(seen != NULL);
    for (unsigned c = 0; c < EX_CLIENTS_MAX; c++)
        last[c] = -1;
    memset(r, 0, sizeof *r);
    for (size_t k = 0; k < got->n; k++) {
        const struct ex_msg *m = &got->v[k];
        unsigned c;
        uint32_t seq;
        ck_assert_msg(ex_topic_parse(m->topic, &c, &seq) && c < p->clients,
                      "message %zu: topic '%s' was not published by this test", k, ex_s(m->topic));
        ck_assert_msg(seq >= lo && seq < hi && *ex_state_of(p, c, seq) != EX_UNSENT,
                      "message %zu: %s does not belong here (want seq in [%u, %u), sent: %d)", k,
                      m->topic, (unsigned)lo, (unsigned)hi, *ex_state_of(p, c, seq));
        ex_msg_check_content(p, k, m, c, seq);
        if (seen[(size_t)c * EX_SEQ_MAX + seq]++) {
            r->dups++;
            ck_assert_msg(!no_dups, "message %zu: %s (id %s) is there twice", k, m->topic,
                          m->msg_id);
            continue;
        }
        /* first appearances keep the client's order; a repeat after a
         * retry may come later */
        ck_assert_msg((int64_t)seq > last[c],
                      "message %zu: pub%u's seq %u comes after its seq %" PRId64
                      ": order per client broken",
                      k, c, (unsigned)seq, last[c]);
        last[c] = seq;
    }
    for (unsigned c = 0; c < p->clients; c++)
        for (uint32_t seq = lo; seq < hi && seq < p->next[c]; seq++)
            r->missing +=
                *ex_state_of(p, c, seq) == EX_ACKED && !seen[(size_t)c * EX_SEQ_MAX + seq];
    free(seen);
    return r->missing == 0;
}

int ex_msgs_check(struct ex_pub *p, const struct ex_msgs *got, uint32_t lo, uint32_t hi,
                  bool no_dups, unsigned *missing)
{
    struct ex_check r;
    int rc = ex_msgs_check_into(p, got, lo, hi, no_dups, &r);
    if (missing)
        *missing = r.missing;
    return rc;
}

size_t ex_msgs_wait(struct ex_pub *p, const struct ex_msgs *(*read)(void *ctx), void *ctx,
                    uint32_t lo, uint32_t hi, bool no_dups)
{
    int64_t deadline = it_now_ms() + EX_SINK_MS;
    struct ex_check r;
    ex_pub_load_ids(p);
    for (;;) {
        const struct ex_msgs *got = read(ctx);
        if (ex_msgs_check_into(p, got, lo, hi, no_dups, &r))
            break;
        ck_assert_msg(it_now_ms() < deadline,
                      "%u PUBACKed messages (seq in [%u, %u)) still missing from the sink after "
                      "%d ms; it holds %zu",
                      r.missing, (unsigned)lo, (unsigned)hi, EX_SINK_MS, got->n);
        poll(NULL, 0, EX_POLL_MS);
    }
    if (r.dups)
        fprintf(stderr, "NOTE: the sink holds %zu repeated messages (at least once)\n", r.dups);
    return r.dups;
}

/* ---- the scenarios ---- */

static const struct ex_msgs *ex_sink_msgs(void *ctx)
{
    struct ex_sink *s = ctx;
    return s->read_msgs(s);
}

static void ex_sink_broker_start(struct ex_sink *s, struct it_broker *b)
{
    struct buf yaml = {0};
    s->write_yaml(s, &yaml);
    buf_append(&yaml, EX_EXPORT_YAML, strlen(EX_EXPORT_YAML));
    buf_append(&yaml, "", 1);
    ex_broker_start(b, (const char *)yaml.data);
    buf_free(&yaml);
}

void ex_scenario_messages(struct ex_sink *s)
{
    struct it_broker b;
    struct ex_pub p;
    ex_sink_broker_start(s, &b);
    ex_pub_open(&p, &b, 4);
    ex_pub_run(&p, 250, 10);
    ck_assert_uint_eq(ex_pub_acked(&p), 1000);
    /* a run without failures repeats nothing, whatever the sink */
    ex_msgs_wait(&p, ex_sink_msgs, s, 0, 250, true);
    ex_stats_expect_settled(&b, EX_RULE_MSGS, 1000);
    ex_stats_expect_settled(&b, EX_RULE_STATUS, 4); /* the publishers' connects */
    ex_stats_expect_connected(&b, EX_CONNECTOR);
    ex_pub_close(&p);
    it_broker_cleanup(&b);
}

/* Take the sink away / bring it back, and return once done. */
static void ex_sink_down(struct ex_sink *s)
{
    if (s->service)
        ex_services_ctl("stop", s->service);
    else
        s->outage_begin(s);
}

static void ex_sink_up(struct ex_sink *s)
{
    if (s->service)
        ex_services_ctl("start", s->service);
    else
        s->outage_end(s);
}

void ex_scenario_outage(struct ex_sink *s)
{
    struct it_broker b;
    struct ex_pub p;
    struct it_proc ctl;
    struct ex_rule_stats st;
    ex_sink_broker_start(s, &b);
    ex_pub_open(&p, &b, 4);
    ex_pub_run(&p, 60, 10); /* the sink is up */
    if (s->service)
        ex_services_ctl_spawn(&ctl, "stop", s->service);
    else
        s->outage_begin(s);
    ex_pub_run(&p, 60, 10); /* the sink goes away meanwhile */
    if (s->service)
        ex_services_ctl_wait(&ctl, "stop");
    uint32_t down_from = p.next[0];
    ex_pub_run(&p, 100, 10); /* the sink is down: PUBACKs still come */
    ex_stats_rule(&b, EX_RULE_MSGS, &st);
    ck_assert_msg(ex_stats_add_up(&st) && st.queued >= 400,
                  "during the outage the 400 messages published must be queued: %s", st.line);
    if (s->outage_holds_back) {
        const struct ex_msgs *got = s->read_msgs(s);
        for (size_t k = 0; k < got->n; k++) {
            unsigned c;
            uint32_t seq;
            ck_assert_msg(!ex_topic_parse(got->v[k].topic, &c, &seq) || seq < down_from,
                          "%s reached the sink during the outage", got->v[k].topic);
        }
    }
    ex_sink_up(s);
    ex_pub_run(&p, 60, 10); /* and back */
    ex_msgs_wait(&p, ex_sink_msgs, s, 0, p.next[0], s->dedups);
    ex_stats_expect_connected(&b, EX_CONNECTOR);
    ex_stats_expect_settled(&b, EX_RULE_MSGS, 1120);
    ex_stats_expect_settled(&b, EX_RULE_STATUS, 4);
    ex_pub_close(&p);
    it_broker_cleanup(&b);
}

/* Start the killed broker again and reconnect the publishers. */
static void ex_restart_after_kill(struct it_broker *b, struct ex_pub *p)
{
    long from = ex_log_size(b);
    char line[512];
    it_broker_restart(b);
    if (ex_log_wait(b, from, "records from the spool to export", NULL, line, sizeof line, 0))
        fprintf(stderr, "NOTE: after kill -9: %s\n", strstr(line, "connector"));
    ex_pub_reconnect(p);
}

void ex_scenario_kill9(struct ex_sink *s)
{
    struct it_broker b;
    struct ex_pub p;
    ex_sink_broker_start(s, &b);
    ex_pub_open(&p, &b, 4);
    /* killed while the sink is busy exporting and messages are in flight */
    ex_pub_run_kill(&p, &b, 100, 10, 200);
    ck_assert_msg(ex_pub_acked(&p) >= 200, "only %u PUBACKs before the kill", ex_pub_acked(&p));
    ex_restart_after_kill(&b, &p);
    /* killed while the sink is away: what was PUBACKed is in the spool only */
    ex_sink_down(s);
    ex_pub_run(&p, 50, 10);
    it_broker_kill9(&b);
    ex_sink_up(s);
    ex_restart_after_kill(&b, &p);
    ex_pub_run(&p, 50, 10);
    ex_msgs_wait(&p, ex_sink_msgs, s, 0, p.next[0], s->dedups);
    /* counters start again with the process: only the invariant holds */
    ex_stats_expect_settled(&b, EX_RULE_MSGS, -1);
    ex_stats_expect_settled(&b, EX_RULE_STATUS, -1);
    ex_stats_expect_connected(&b, EX_CONNECTOR);
    ex_pub_close(&p);
    it_broker_cleanup(&b);
}

/* ---- status events ---- */

/* One TCP connection of a status client: its address as the broker sees
 * it, and the channel id its events carry. */
struct ex_conn {
    char ip[48];
    char channel[64];
};

/* An expected event: its type and the connection it belongs to. */
struct ex_step {
    const char *type;
    unsigned conn;
};

static void ex_conn_open(struct it_raw *r, const struct it_broker *b, const char *id,
                         struct ex_conn *conn)
{
    struct sockaddr_in sa;
    socklen_t sl = sizeof sa;
    it_raw_connect_ok(r, b->port, id, true, false);
    ck_assert(getsockname(r->fd, (struct sockaddr *)&sa, &sl) == 0);
    snprintf(conn->ip, sizeof conn->ip, "127.0.0.1:%u", (unsigned)ntohs(sa.sin_port));
    conn->channel[0] = '\0';
}

bool ex_json_field(const char *json, const char *key, char *out, size_t len)
{
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\"", key);
    for (const char *p = json ? strstr(json, pat) : NULL; p; p = strstr(p + 1, pat)) {
        const char *v = p + strlen(pat);
        v += strspn(v, " \t\n");
        if (*v != ':')
            continue; /* a string value that looks like the key */
        v++;
        v += strspn(v, " \t\n");
        size_t n = *v == '"' ? strcspn(++v, "\"") : strspn(v, "-0123456789");
        if (n == 0 || n >= len)
            return false;
        memcpy(out, v, n);
        out[n] = '\0';
        return true;
    }
    return false;
}

/* The body's field key must read want. */
static void ex_body_expect(const struct ex_event *e, const char *key, const char *want)
{
    char got[128];
    ck_assert_msg(ex_json_field(e->body, key, got, sizeof got),
                  "event seq %" PRIu64 ": body has no field \"%s\": %s", e->seq, key,
                  ex_s(e->body));
    ck_assert_msg(!strcmp(got, want), "event seq %" PRIu64 ": body \"%s\" is '%s', want '%s': %s",
                  e->seq, key, got, want, e->body);
}

static size_t ex_events_of(const struct ex_events *all, const char *client_id,
                           const struct ex_event **out, size_t cap)
{
    size_t n = 0;
    for (size_t i = 0; i < all->n; i++)
        if (all->v[i].client_id && !strcmp(all->v[i].client_id, client_id)) {
            if (n < cap)
                out[n] = &all->v[i];
            n++;
        }
    return n;
}

/* Event k of a client, expected as steps[k] of connections conns. */
static void ex_event_check(const struct ex_event *e, const struct ex_event *prev,
                           const char *client_id, const struct ex_step *step, struct ex_conn *conns,
                           unsigned nconns, int64_t t0)
{
    char num[32];
    ck_assert_msg(e->event_type && !strcmp(e->event_type, step->type),
                  "%s: event seq %" PRIu64 " is '%s', want '%s'", client_id, e->seq,
                  ex_s(e->event_type), step->type);
    struct ex_conn *conn = &conns[step->conn];
    ck_assert_msg(e->client_ip && !strcmp(e->client_ip, conn->ip),
                  "%s: %s event: clientIp '%s', want '%s'", client_id, step->type,
                  ex_s(e->client_ip), conn->ip);
    ck_assert_msg(ex_is_hex(e->channel_id, 32), "%s: %s event: channelId '%s' is not 32 hex digits",
                  client_id, step->type, ex_s(e->channel_id));
    if (!conn->channel[0])
        snprintf(conn->channel, sizeof conn->channel, "%s", e->channel_id);
    ck_assert_msg(!strcmp(conn->channel, e->channel_id),
                  "%s: %s event: channelId %s, its connection's other events have %s", client_id,
                  step->type, e->channel_id, conn->channel);
    for (unsigned i = 0; i < nconns; i++)
        ck_assert_msg(i == step->conn || strcmp(conns[i].channel, e->channel_id),
                      "%s: two connections share channelId %s", client_id, e->channel_id);
    ck_assert_msg(!e->key || !strcmp(e->key, client_id), "%s: event key '%s'", client_id, e->key);
    ck_assert_msg(!prev || e->seq > prev->seq,
                  "%s: event seq %" PRIu64 " after seq %" PRIu64 ": events out of order", client_id,
                  e->seq, prev ? prev->seq : 0);
    int64_t now = ex_wall_ms();
    ck_assert_msg(e->time_ms >= t0 - EX_CLOCK_SLACK_MS && e->time_ms <= now + EX_CLOCK_SLACK_MS &&
                      (!prev || e->time_ms >= prev->time_ms),
                  "%s: %s event: time %" PRId64 " outside [%" PRId64 ", %" PRId64 "] or before the "
                  "previous event",
                  client_id, step->type, e->time_ms, t0, now);
    ex_body_expect(e, "clientId", client_id);
    ex_body_expect(e, "eventType", step->type);
    ex_body_expect(e, "channelId", e->channel_id);
    ex_body_expect(e, "clientIp", conn->ip);
    snprintf(num, sizeof num, "%" PRId64, e->time_ms);
    ex_body_expect(e, "time", num);
    snprintf(num, sizeof num, "%" PRIu64, e->seq);
    ex_body_expect(e, "seq", num);
}

#define EX_STEPS_MAX 16

/* Wait until the sink holds nsteps events of client_id, then check them
 * all against steps. */
static void ex_events_expect(struct ex_sink *s, const char *client_id, const struct ex_step *steps,
                             size_t nsteps, struct ex_conn *conns, unsigned nconns, int64_t t0)
{
    const struct ex_event *ev[EX_STEPS_MAX];
    int64_t deadline = it_now_ms() + EX_SINK_MS;
    size_t n;
    ck_assert(nsteps <= EX_STEPS_MAX);
    while ((n = ex_events_of(s->read_events(s), client_id, ev, EX_STEPS_MAX)) < nsteps) {
        ck_assert_msg(it_now_ms() < deadline, "%s: %zu of %zu events in the sink after %d ms",
                      client_id, n, nsteps, EX_SINK_MS);
        poll(NULL, 0, EX_POLL_MS);
    }
    ck_assert_msg(n == nsteps, "%s: %zu events in the sink, want %zu", client_id, n, nsteps);
    for (size_t k = 0; k < n; k++)
        ex_event_check(ev[k], k ? ev[k - 1] : NULL, client_id, &steps[k], conns, nconns, t0);
}

/* The status-state rule applied to the client's events in sink order. */
static void ex_state_derive(const struct ex_events *all, const char *client_id, struct ex_state *st)
{
    memset(st, 0, sizeof *st);
    for (size_t i = 0; i < all->n; i++) {
        const struct ex_event *e = &all->v[i];
        if (!e->client_id || strcmp(e->client_id, client_id))
            continue;
        bool connect = !strcmp(ex_s(e->event_type), "connect");
        if (st->found &&
            !(e->seq > st->seq && (connect || !strcmp(ex_s(e->channel_id), st->channel_id))))
            continue;
        st->found = true;
        st->online = connect;
        snprintf(st->channel_id, sizeof st->channel_id, "%s", ex_s(e->channel_id));
        snprintf(st->client_ip, sizeof st->client_ip, "%s", ex_s(e->client_ip));
        snprintf(st->event_type, sizeof st->event_type, "%s", ex_s(e->event_type));
        st->seq = e->seq;
        st->since = e->time_ms;
    }
}

/* The state of client_id must be the one its last event (last) set. */
static void ex_state_expect(struct ex_sink *s, const char *client_id, const struct ex_event *last)
{
    struct ex_state st, want = {.found = true};
    want.online = !strcmp(last->event_type, "connect");
    snprintf(want.channel_id, sizeof want.channel_id, "%s", last->channel_id);
    snprintf(want.client_ip, sizeof want.client_ip, "%s", last->client_ip);
    snprintf(want.event_type, sizeof want.event_type, "%s", last->event_type);
    want.seq = last->seq;
    want.since = last->time_ms;
    int64_t deadline = it_now_ms() + EX_SINK_MS;
    for (;;) {
        if (s->read_state)
            s->read_state(s, client_id, &st);
        else
            ex_state_derive(s->read_events(s), client_id, &st);
        if (st.found && st.online == want.online && !strcmp(st.channel_id, want.channel_id) &&
            !strcmp(st.client_ip, want.client_ip) && !strcmp(st.event_type, want.event_type) &&
            st.seq == want.seq && st.since == want.since)
            return;
        ck_assert_msg(it_now_ms() < deadline,
                      "%s: state found=%d online=%d channel=%s ip=%s event=%s seq=%" PRIu64
                      " since=%" PRId64 "; want online=%d channel=%s ip=%s event=%s seq=%" PRIu64
                      " since=%" PRId64,
                      client_id, st.found, st.online, st.channel_id, st.client_ip, st.event_type,
                      st.seq, st.since, want.online, want.channel_id, want.client_ip,
                      want.event_type, want.seq, want.since);
        poll(NULL, 0, EX_POLL_MS);
    }
}

/* The last event of client_id in the sink (it exists: checked before). */
static const struct ex_event *ex_event_last(struct ex_sink *s, const char *client_id)
{
    const struct ex_event *ev[EX_STEPS_MAX];
    size_t n = ex_events_of(s->read_events(s), client_id, ev, EX_STEPS_MAX);
    ck_assert(n > 0 && n <= EX_STEPS_MAX);
    return ev[n - 1];
}

void ex_scenario_status(struct ex_sink *s)
{
    static const char st1[] = EX_GROUP "@@@st1", st2[] = EX_GROUP "@@@st2";
    /* st1: clean disconnect (A), dropped TCP (B), takeover of C by D */
    static const struct ex_step steps1[] = {
        {"connect", 0},  {"disconnect", 0}, {"tcpclean", 0}, {"connect", 1},
        {"tcpclean", 1}, {"connect", 2},    {"tcpclean", 2}, {"connect", 3},
    };
    static const struct ex_step steps2[] = {{"connect", 0}, {"disconnect", 0}, {"tcpclean", 0}};
    struct ex_conn c1[4], c2[1];
    struct it_raw r[4], e;
    struct it_broker b;
    ex_sink_broker_start(s, &b);
    int64_t t0 = ex_wall_ms();

    ex_conn_open(&r[0], &b, st1, &c1[0]);
    ex_events_expect(s, st1, steps1, 1, c1, 1, t0);
    ck_assert_int_eq(it_raw_leave(&r[0]), 0); /* DISCONNECT, then the close */
    ex_events_expect(s, st1, steps1, 3, c1, 1, t0);
    ex_conn_open(&r[1], &b, st1, &c1[1]);
    ex_events_expect(s, st1, steps1, 4, c1, 2, t0);
    it_raw_close(&r[1]); /* the TCP connection drops without DISCONNECT */
    ex_events_expect(s, st1, steps1, 5, c1, 2, t0);
    ex_conn_open(&r[2], &b, st1, &c1[2]);
    ex_events_expect(s, st1, steps1, 6, c1, 3, t0);
    ex_conn_open(&r[3], &b, st1, &c1[3]); /* same client id: takes C over */
    ck_assert_int_eq(it_raw_wait_eof(&r[2], IT_WAIT_MS), IT_RAW_EOF);
    it_raw_close(&r[2]);
    ex_events_expect(s, st1, steps1, 8, c1, 4, t0);

    ex_conn_open(&e, &b, st2, &c2[0]);
    ck_assert_int_eq(it_raw_leave(&e), 0);
    ex_events_expect(s, st2, steps2, 3, c2, 1, t0);

    /* st1 is online on D; st2 offline since its tcpclean */
    ex_state_expect(s, st1, ex_event_last(s, st1));
    ex_state_expect(s, st2, ex_event_last(s, st2));
    ex_stats_expect_settled(&b, EX_RULE_STATUS, 11);
    ex_stats_expect_settled(&b, EX_RULE_MSGS, 0);
    it_raw_close(&r[3]);
    it_broker_cleanup(&b);
}

/* ---- the SQLite sink file ---- */

struct ex_sqlite {
    char *path;
    sqlite3 *db;
    bool locked;
    struct ex_msgs msgs;
    struct ex_events events;
};

struct ex_sqlite *ex_sqlite_new(const char *path)
{
    struct ex_sqlite *q = calloc(1, sizeof *q);
    ck_assert(q != NULL);
    q->path = ex_strndup(path, strlen(path));
    return q;
}

void ex_sqlite_free(struct ex_sqlite *q)
{
    if (!q)
        return;
    if (q->locked)
        ex_sqlite_unlock(q);
    sqlite3_close(q->db);
    ex_msgs_clear(&q->msgs);
    ex_events_clear(&q->events);
    free(q->msgs.v);
    free(q->events.v);
    free(q->path);
    free(q);
}

/* Open the file once it exists. false while it does not. */
static bool ex_sqlite_ready(struct ex_sqlite *q)
{
    if (q->db)
        return true;
    if (access(q->path, F_OK) != 0)
        return false;
    int rc = sqlite3_open_v2(q->path, &q->db, SQLITE_OPEN_READWRITE, NULL);
    ck_assert_msg(rc == SQLITE_OK, "%s: %s", q->path, sqlite3_errstr(rc));
    sqlite3_busy_timeout(q->db, IT_WAIT_MS);
    return true;
}

/* SELECT cols FROM "table" ORDER BY order [WHERE client_id = ?]: the
 * prepared statement, or NULL when the file or the table is missing. */
static sqlite3_stmt *ex_sqlite_select(struct ex_sqlite *q, const char *cols, const char *table,
                                      const char *tail, const char *client_id)
{
    sqlite3_stmt *st = NULL;
    if (!ex_sqlite_ready(q))
        return NULL;
    char *sql = sqlite3_mprintf("SELECT %s FROM \"%w\" %s", cols, table, tail);
    ck_assert(sql != NULL);
    int rc = sqlite3_prepare_v2(q->db, sql, -1, &st, NULL);
    sqlite3_free(sql);
    if (rc != SQLITE_OK && strstr(sqlite3_errmsg(q->db), "no such table"))
        return NULL;
    ck_assert_msg(rc == SQLITE_OK, "%s: %s", q->path, sqlite3_errmsg(q->db));
    if (client_id)
        sqlite3_bind_text(st, 1, client_id, -1, SQLITE_TRANSIENT);
    return st;
}

static char *ex_sqlite_text(sqlite3_stmt *st, int i)
{
    const unsigned char *t = sqlite3_column_text(st, i);
    return t ? ex_strndup(t, (size_t)sqlite3_column_bytes(st, i)) : NULL;
}

static void ex_sqlite_done(struct ex_sqlite *q, sqlite3_stmt *st, int rc)
{
    ck_assert_msg(rc == SQLITE_DONE, "%s: %s", q->path, sqlite3_errmsg(q->db));
    sqlite3_finalize(st);
}

const struct ex_msgs *ex_sqlite_msgs(struct ex_sqlite *q, const char *table)
{
    ex_msgs_clear(&q->msgs);
    sqlite3_stmt *st = ex_sqlite_select(q, "msg_id, topic, client_id, qos, payload, time_ms", table,
                                        "ORDER BY rowid", NULL);
    if (!st)
        return &q->msgs;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct ex_msg *m = ex_msgs_add(&q->msgs);
        m->msg_id = ex_sqlite_text(st, 0);
        m->topic = ex_sqlite_text(st, 1);
        m->client_id = ex_sqlite_text(st, 2);
        m->qos = sqlite3_column_int(st, 3);
        m->len = (size_t)sqlite3_column_bytes(st, 4);
        m->payload = (uint8_t *)ex_strndup(sqlite3_column_blob(st, 4), m->len);
        m->time_ms = sqlite3_column_int64(st, 5);
    }
    ex_sqlite_done(q, st, rc);
    return &q->msgs;
}

const struct ex_events *ex_sqlite_events(struct ex_sqlite *q, const char *table)
{
    ex_events_clear(&q->events);
    sqlite3_stmt *st =
        ex_sqlite_select(q, "seq, client_id, event_type, channel_id, client_ip, time_ms, body",
                         table, "ORDER BY seq", NULL);
    if (!st)
        return &q->events;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct ex_event *e = ex_events_add(&q->events);
        e->seq = (uint64_t)sqlite3_column_int64(st, 0);
        e->client_id = ex_sqlite_text(st, 1);
        e->event_type = ex_sqlite_text(st, 2);
        e->channel_id = ex_sqlite_text(st, 3);
        e->client_ip = ex_sqlite_text(st, 4);
        e->time_ms = sqlite3_column_int64(st, 5);
        e->body = ex_sqlite_text(st, 6);
    }
    ex_sqlite_done(q, st, rc);
    return &q->events;
}

void ex_sqlite_state(struct ex_sqlite *q, const char *table, const char *client_id,
                     struct ex_state *out)
{
    memset(out, 0, sizeof *out);
    sqlite3_stmt *st = ex_sqlite_select(q, "online, channel_id, client_ip, since, seq, event_type",
                                        table, "WHERE client_id = ?", client_id);
    if (!st)
        return;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        out->found = true;
        out->online = sqlite3_column_int(st, 0) != 0;
        snprintf(out->channel_id, sizeof out->channel_id, "%s",
                 ex_s((const char *)sqlite3_column_text(st, 1)));
        snprintf(out->client_ip, sizeof out->client_ip, "%s",
                 ex_s((const char *)sqlite3_column_text(st, 2)));
        out->since = sqlite3_column_int64(st, 3);
        out->seq = (uint64_t)sqlite3_column_int64(st, 4);
        snprintf(out->event_type, sizeof out->event_type, "%s",
                 ex_s((const char *)sqlite3_column_text(st, 5)));
        rc = sqlite3_step(st);
    }
    ex_sqlite_done(q, st, rc);
}

void ex_sqlite_lock(struct ex_sqlite *q)
{
    ck_assert_msg(ex_sqlite_ready(q), "%s does not exist: nothing to lock", q->path);
    char *err = NULL;
    int rc = sqlite3_exec(q->db, "BEGIN EXCLUSIVE", NULL, NULL, &err);
    ck_assert_msg(rc == SQLITE_OK, "%s: BEGIN EXCLUSIVE: %s", q->path, err ? err : "?");
    q->locked = true;
}

void ex_sqlite_unlock(struct ex_sqlite *q)
{
    char *err = NULL;
    int rc = sqlite3_exec(q->db, "COMMIT", NULL, NULL, &err);
    ck_assert_msg(rc == SQLITE_OK, "%s: COMMIT: %s", q->path, err ? err : "?");
    q->locked = false;
}
