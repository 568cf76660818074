/* The inbound tests' shared parts: the broker with one inbound rule, the
 * records and their payloads, MQTT subscribers checked message by message,
 * the importer's counters, and the five scenarios run against every source.
 * See harness_inbound.h. */
#include "harness_inbound.h"

#include <check.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include "harness_export.h"

#define IN_POLL_MS 20     /* polling period of the log and the subscribers */
#define IN_BIG 65536      /* the largest payload the instance accepts */
#define IN_KILL_AFTER 150 /* kill -9 once the subscriber got this many */

/* ---- lists, payloads, batches ---- */

void in_deads_add(struct in_deads *l, const void *payload, size_t len, const char *reason)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 16;
        l->v = realloc(l->v, l->cap * sizeof *l->v);
        ck_assert(l->v != NULL);
    }
    struct in_dead *d = &l->v[l->n++];
    d->payload = (uint8_t *)ex_strndup(payload ? payload : "", len);
    d->len = len;
    d->reason = ex_strndup(reason ? reason : "", reason ? strlen(reason) : 0);
}

void in_deads_clear(struct in_deads *l)
{
    for (size_t i = 0; i < l->n; i++) {
        free(l->v[i].payload);
        free(l->v[i].reason);
    }
    l->n = 0;
}

size_t in_payload(const char *tag, uint32_t seq, uint8_t *out, size_t cap)
{
    static const uint8_t odd[] = {0x00, 0xff, 0x80, '"', '\\', '\n', 0x7f, 0x01};
    int n = snprintf((char *)out, cap, "%s %05u ", tag, (unsigned)seq);
    size_t len = (size_t)n;
    ck_assert(n > 0 && len + sizeof odd + 37 <= cap && cap <= IN_PAYLOAD_MAX);
    memcpy(out + len, odd, sizeof odd);
    len += sizeof odd;
    for (uint32_t i = 0; i < seq % 37; i++)
        out[len++] = (uint8_t)('a' + (seq + i) % 26);
    return len;
}

/* The seq of a payload made by in_payload(tag, seq), exactly; -1 when it
 * is not one. */
static int64_t in_payload_seq(const char *tag, const void *payload, size_t len)
{
    char head[32];
    uint8_t want[IN_PAYLOAD_MAX];
    unsigned seq;
    size_t taglen = strlen(tag);
    size_t n = len < sizeof head - 1 ? len : sizeof head - 1;
    memcpy(head, payload, n);
    head[n] = '\0';
    if (n <= taglen + 1 || memcmp(head, tag, taglen) || head[taglen] != ' ' ||
        sscanf(head + taglen + 1, "%5u", &seq) != 1)
        return -1;
    size_t wlen = in_payload(tag, seq, want, sizeof want);
    return wlen == len && !memcmp(want, payload, len) ? (int64_t)seq : -1;
}

/* Records with payloads in_payload(tag, first + i); the other fields are
 * NULL for the caller to set. */
struct in_batch {
    struct in_rec *rec;
    uint8_t (*pay)[IN_PAYLOAD_MAX];
    size_t n;
};

static void in_batch_make(struct in_batch *bt, const char *tag, uint32_t first, size_t n)
{
    bt->rec = calloc(n ? n : 1, sizeof *bt->rec);
    bt->pay = calloc(n ? n : 1, sizeof *bt->pay);
    bt->n = n;
    ck_assert(bt->rec && bt->pay);
    for (size_t i = 0; i < n; i++) {
        bt->rec[i].len = in_payload(tag, first + (uint32_t)i, bt->pay[i], sizeof bt->pay[i]);
        bt->rec[i].payload = bt->pay[i];
    }
}

static void in_batch_free(struct in_batch *bt)
{
    free(bt->rec);
    free(bt->pay);
    memset(bt, 0, sizeof *bt);
}

/* ---- the broker ---- */

static void in_yaml_text(struct buf *yaml, const char *text)
{
    ck_assert(buf_append(yaml, text, strlen(text)) == 0);
}

/* The whole extra YAML, NUL-terminated: connector, the inbound rule,
 * export settings. */
static void in_write_yaml(struct in_source *s, struct buf *yaml)
{
    in_yaml_text(yaml, "connectors:\n  " IN_CONNECTOR ": { ");
    s->write_connector(s, yaml);
    in_yaml_text(yaml, " }\nrules:\n"
                       "  - name: " IN_RULE "\n"
                       "    type: inbound\n"
                       "    source: { connector: " IN_CONNECTOR ", ");
    s->write_source(s, yaml);
    in_yaml_text(yaml, " }\n"
                       "    target: { topic: " IN_PARENT " }\n" IN_EXPORT_YAML);
    ck_assert(buf_append(yaml, "", 1) == 0);
}

/* Wait for the importer's "reading from" line written after byte from;
 * fail at once when the rule cannot have a source. */
static void in_wait_reading(const struct it_broker *b, long from)
{
    char line[512];
    int64_t deadline = it_now_ms() + IN_FLOW_MS;
    while (!ex_log_wait(b, from, "inbound rule " IN_RULE ": reading from", NULL, line, sizeof line,
                        0)) {
        ck_assert_msg(!ex_log_wait(b, from, "inbound rule " IN_RULE ":", "cannot be a source", line,
                                   sizeof line, 0),
                      "%s", line);
        ck_assert_msg(it_now_ms() < deadline,
                      "inbound rule " IN_RULE " did not open its source within %d ms (see the log)",
                      IN_FLOW_MS);
        poll(NULL, 0, IN_POLL_MS);
    }
}

/* Start mqbridge with the source's rule and these limits (0: the tests'
 * defaults: max_inflight 20, max_queued 10000); with wait_source, return
 * once the rule reads from its source. */
static void in_broker_start_limits(struct in_source *s, struct it_broker *b, bool wait_source,
                                   unsigned max_inflight, unsigned max_queued)
{
    struct buf yaml = {0};
    in_write_yaml(s, &yaml);
    struct it_broker_opts o = {.instance_yaml = IN_INSTANCE,
                               .limits_yaml = IN_LIMITS,
                               .max_inflight = max_inflight,
                               .max_queued = max_queued ? max_queued : 10000,
                               .extra_yaml = (const char *)yaml.data};
    it_broker_start(b, &o);
    buf_free(&yaml);
    if (wait_source) {
        char line[512];
        bool ahead = s->reads_ahead && !s->dead_letter;
        in_wait_reading(b, 0);
        ck_assert_msg(ex_log_wait(b, 0, "inbound rule " IN_RULE ": reading from", NULL, line,
                                  sizeof line, 0) &&
                          (strstr(line, "(one batch ahead)") != NULL) == ahead,
                      "the rule should %sread its source one batch ahead: %s", ahead ? "" : "not ",
                      line);
    }
}

static void in_broker_start(struct in_source *s, struct it_broker *b, bool wait_source)
{
    in_broker_start_limits(s, b, wait_source, 0, 0);
}

static void in_broker_restart(struct it_broker *b)
{
    long from = ex_log_size(b);
    it_broker_restart(b);
    in_wait_reading(b, from);
}

/* The counters of the rule's "stats: inbound rule" line, and two of the
 * broker's "stats: received=" line of the same SIGUSR1. */
struct in_stats {
    uint64_t received, published, skipped, bad_qos, too_large, bad_topic, bad_client_id;
    uint64_t not_acked, waits, blocked_ms;
    int64_t lag;                   /* -1: unknown */
    uint64_t dropped, inject_busy; /* the broker's */
    char line[1024], broker_line[1024];
};

/* The counter "name=N" (after a space or a parenthesis) of a stats line. */
static bool in_stats_value(const char *line, const char *name, uint64_t *out)
{
    size_t n = strlen(name);
    for (const char *p = strstr(line, name); p; p = strstr(p + 1, name)) {
        if ((p[-1] == ' ' || p[-1] == '(') && p[n] == '=' && strchr("0123456789", p[n + 1])) {
            *out = strtoull(p + n + 1, NULL, 10);
            return true;
        }
    }
    return false;
}

/* SIGUSR1 and the rule's stats line it produced. */
static void in_stats_read(const struct it_broker *b, struct in_stats *st)
{
    long from = ex_log_size(b);
    ck_assert_msg(b->pid > 0 && kill(b->pid, SIGUSR1) == 0, "SIGUSR1 to the broker failed");
    ck_assert_msg(ex_log_wait(b, from, "stats: inbound rule " IN_RULE " ", NULL, st->line,
                              sizeof st->line, IT_WAIT_MS),
                  "no 'stats: inbound rule " IN_RULE "' line in the broker log after SIGUSR1");
    const char *names[] = {"received",  "published",     "skipped",   "bad_qos", "too_large",
                           "bad_topic", "bad_client_id", "not_acked", "waits",   "blocked_ms"};
    uint64_t *vals[] = {&st->received,  &st->published, &st->skipped,       &st->bad_qos,
                        &st->too_large, &st->bad_topic, &st->bad_client_id, &st->not_acked,
                        &st->waits,     &st->blocked_ms};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        ck_assert_msg(in_stats_value(st->line, names[i], vals[i]), "stats line without %s=: %s",
                      names[i], st->line);
    const char *lag = strstr(st->line, " lag=");
    ck_assert_msg(lag != NULL, "stats line without lag=: %s", st->line);
    st->lag = strtoll(lag + 5, NULL, 10);
    /* the broker's lines come before the rules' in one SIGUSR1 */
    ck_assert_msg(ex_log_wait(b, from, "stats: received=", NULL, st->broker_line,
                              sizeof st->broker_line, IT_WAIT_MS),
                  "no 'stats: received=' line in the broker log after SIGUSR1");
    ck_assert_msg(in_stats_value(st->broker_line, "dropped", &st->dropped),
                  "broker stats line without dropped=: %s", st->broker_line);
    char offline[1024];
    ck_assert_msg(ex_log_wait(b, from, "stats: offline_messages=", NULL, offline, sizeof offline,
                              IT_WAIT_MS) &&
                      in_stats_value(offline, "inject_busy", &st->inject_busy),
                  "no 'stats: offline_messages= ... inject_busy=' line after SIGUSR1");
}

/* ---- subscribers ---- */

/* Connect client GID_dev@@@<dev>, require the session-present flag (for a
 * cleanSession=0 reconnect) and, with filter, subscribe at qos. */
static void in_client_open(struct it_client *c, const struct it_broker *b, const char *dev,
                           bool clean, bool want_sp, const char *filter, int qos)
{
    char id[64];
    snprintf(id, sizeof id, IN_GROUP "@@@%s", dev);
    struct it_connect_opts o = {.client_id = id, .clean = clean};
    ck_assert_msg(it_client_open(c, b->port, &o) == 0, "%s: no CONNACK 0", id);
    pthread_mutex_lock(&c->mu);
    bool sp = c->session_present;
    pthread_mutex_unlock(&c->mu);
    ck_assert_msg(sp == want_sp, "%s: session present %d, want %d", id, sp, want_sp);
    if (filter)
        ck_assert_msg(it_client_subscribe(c, filter, qos) == qos, "%s: %s not granted at QoS %d",
                      id, filter, qos);
}

static void in_client_wait(struct it_client *c, size_t n, const char *who)
{
    ck_assert_msg(it_client_wait_msgs(c, n, IN_FLOW_MS),
                  "%s got %zu messages within %d ms, want %zu", who, it_client_count(c), IN_FLOW_MS,
                  n);
}

/* Message i of c must be this payload on topic at qos. */
static void in_expect_msg(struct it_client *c, size_t i, const char *who, const char *topic,
                          const void *payload, size_t len, int qos)
{
    struct it_msg m = it_client_msg(c, i);
    ck_assert_msg(m.topic != NULL, "%s: no message %zu", who, i);
    ck_assert_msg(!strcmp(m.topic, topic), "%s: message %zu on '%s', want '%s' (payload '%.24s')",
                  who, i, m.topic, topic, m.payload);
    ck_assert_msg((size_t)m.len == len && !memcmp(m.payload, payload, len),
                  "%s: message %zu on %s: payload of %d bytes '%.24s' differs from the %zu bytes "
                  "'%.24s' added to the source",
                  who, i, topic, m.len, m.payload, len, (const char *)payload);
    ck_assert_msg(m.qos == qos, "%s: message %zu on %s ('%.24s'): QoS %d, want %d", who, i, topic,
                  m.payload, m.qos, qos);
}

/* "Commands" or "Commands/<sub>". */
static void in_topic(const char *sub, char *out, size_t len)
{
    if (sub)
        snprintf(out, len, IN_PARENT "/%s", sub);
    else
        snprintf(out, len, IN_PARENT);
}

/* ---- the scenarios ---- */

/* Bring the source's server back if an earlier failed test left it
 * stopped (a start of a running server does nothing). */
static void in_source_prepare(struct in_source *s, bool ordered)
{
    if (getenv("MQB_SERVICES_DIR") && *getenv("MQB_SERVICES_DIR"))
        ex_services_ctl("start", s->service);
    s->dead_letter = false;
    s->prepare(s, ordered);
}

/* Subtopics and qoslevels the offline records cycle through: absent ones
 * included (the parent topic itself, the default QoS 1). */
static const char *const in_offline_subs[] = {NULL, "o1", "o1/x_y", "o-2", "o1"};
static const char *const in_offline_qos[] = {NULL, "1", NULL, "1", "1"};
#define IN_OFFLINE_N 300

void in_scenario_offline(struct in_source *s)
{
    struct it_broker b;
    struct it_client c;
    struct in_batch bt;
    char topic[128];
    in_source_prepare(s, true);
    in_broker_start(s, &b, true);
    in_client_open(&c, &b, "sub", false, false, IN_PARENT "/#", 1);
    it_client_close(&c);
    ck_assert_int_eq(it_broker_stop(&b), 0);
    /* both are away while the records are added */
    in_batch_make(&bt, "off", 0, IN_OFFLINE_N);
    for (size_t i = 0; i < bt.n; i++) {
        bt.rec[i].sub_topic = in_offline_subs[i % 5];
        bt.rec[i].qos = in_offline_qos[i % 5];
    }
    s->produce(s, bt.rec, bt.n);
    in_broker_restart(&b);
    in_client_open(&c, &b, "sub", false, true, NULL, 0);
    in_client_wait(&c, bt.n, "the persistent subscriber");
    for (size_t i = 0; i < bt.n; i++) {
        in_topic(bt.rec[i].sub_topic, topic, sizeof topic);
        in_expect_msg(&c, i, "the persistent subscriber", topic, bt.rec[i].payload, bt.rec[i].len,
                      1);
    }
    ck_assert_msg(it_client_quiet(&c, bt.n, IT_QUIET_MS),
                  "the persistent subscriber got %zu messages, %d records were added",
                  it_client_count(&c), IN_OFFLINE_N);
    it_client_close(&c);
    in_batch_free(&bt);
    it_broker_cleanup(&b);
}

/* What the online scenario adds: subtopic, qoslevel, clientId. */
static const struct {
    const char *sub, *qos, *client;
} in_online_recs[] = {
    {"alpha", "0", NULL},           {"alpha/beta", "1", NULL}, {NULL, "2", NULL},
    {"alpha", NULL, NULL},          {"beta", "2", NULL},       {NULL, "1", IN_GROUP "@@@d1"},
    {NULL, NULL, IN_GROUP "@@@d1"}, {"alpha", "1", NULL},
};
#define IN_ONLINE_N (sizeof in_online_recs / sizeof in_online_recs[0])

/* Records of the online scenario that client `who` must get: the
 * subscriber of Commands/# at QoS 2 (all), of Commands/alpha at QoS 2, or
 * the P2P target d1 (no subscription). */
enum in_who { IN_ALL, IN_ALPHA, IN_D1 };

static bool in_online_mine(size_t i, enum in_who who)
{
    const char *client = in_online_recs[i].client, *sub = in_online_recs[i].sub;
    if (who == IN_D1)
        return client != NULL;
    return !client && (who == IN_ALL || (sub && !strcmp(sub, "alpha")));
}

/* The index of the message of c with exactly this payload, -1 when none;
 * *count gets how many there are. */
static ssize_t in_client_find(struct it_client *c, const void *payload, size_t len, size_t *count)
{
    ssize_t at = -1;
    *count = 0;
    for (size_t j = 0, n = it_client_count(c); j < n; j++) {
        struct it_msg m = it_client_msg(c, j);
        if ((size_t)m.len == len && !memcmp(m.payload, payload, len)) {
            at = (ssize_t)j;
            (*count)++;
        }
    }
    return at;
}

struct in_online_wait {
    struct it_client *c;
    enum in_who who;
    const struct in_batch *bt;
};

static bool in_online_all_there(void *ctx)
{
    struct in_online_wait *w = ctx;
    size_t count;
    for (size_t i = 0; i < w->bt->n; i++)
        if (in_online_mine(i, w->who) &&
            in_client_find(w->c, w->bt->rec[i].payload, w->bt->rec[i].len, &count) < 0)
            return false;
    return true;
}

/* Each record for `who` arrives once, on its topic at its QoS, records of
 * one QoS in the order added (MQTT orders messages per QoS only: a client
 * hands a QoS 2 message over at PUBREL, after later QoS 1 ones), and
 * nothing else arrives. */
static void in_online_expect(struct it_client *c, enum in_who who, const struct in_batch *bt)
{
    static const char *const names[] = {"subscriber of Commands/#", "subscriber of Commands/alpha",
                                        "P2P target d1"};
    struct in_online_wait w = {c, who, bt};
    char topic[128];
    ssize_t last[3] = {-1, -1, -1};
    size_t k = 0, count;
    ck_assert_msg(it_wait_until(in_online_all_there, &w, IN_FLOW_MS),
                  "%s: not every record arrived within %d ms (%zu messages)", names[who],
                  IN_FLOW_MS, it_client_count(c));
    for (size_t i = 0; i < bt->n; i++) {
        if (!in_online_mine(i, who))
            continue;
        const char *client = in_online_recs[i].client;
        int qos = in_online_recs[i].qos ? in_online_recs[i].qos[0] - '0' : 1;
        if (client)
            snprintf(topic, sizeof topic, IN_PARENT "/p2p/%s", client);
        else
            in_topic(in_online_recs[i].sub, topic, sizeof topic);
        ssize_t j = in_client_find(c, bt->rec[i].payload, bt->rec[i].len, &count);
        ck_assert_msg(count == 1, "%s: record %zu arrived %zu times", names[who], i, count);
        in_expect_msg(c, (size_t)j, names[who], topic, bt->rec[i].payload, bt->rec[i].len, qos);
        ck_assert_msg(j > last[qos], "%s: record %zu (QoS %d) came before an earlier one",
                      names[who], i, qos);
        last[qos] = j;
        k++;
    }
    ck_assert_msg(it_client_quiet(c, k, IT_QUIET_MS), "%s got %zu messages, want %zu", names[who],
                  it_client_count(c), k);
}

void in_scenario_online(struct in_source *s)
{
    struct it_broker b;
    struct it_client all, alpha, d1;
    struct in_batch bt;
    in_source_prepare(s, true);
    in_broker_start(s, &b, true);
    in_client_open(&all, &b, "all", true, false, IN_PARENT "/#", 2);
    in_client_open(&alpha, &b, "alpha", true, false, IN_PARENT "/alpha", 2);
    in_client_open(&d1, &b, "d1", true, false, NULL, 0);
    in_batch_make(&bt, "on", 0, IN_ONLINE_N);
    for (size_t i = 0; i < bt.n; i++) {
        bt.rec[i].sub_topic = in_online_recs[i].sub;
        bt.rec[i].qos = in_online_recs[i].qos;
        bt.rec[i].client_id = in_online_recs[i].client;
    }
    s->produce(s, bt.rec, bt.n);
    in_online_expect(&all, IN_ALL, &bt);
    in_online_expect(&alpha, IN_ALPHA, &bt);
    in_online_expect(&d1, IN_D1, &bt);
    it_client_close(&all);
    it_client_close(&alpha);
    it_client_close(&d1);
    in_batch_free(&bt);
    it_broker_cleanup(&b);
}

/* ---- kill -9 ---- */

struct in_kill {
    struct in_source *s;
    uint32_t produced; /* records added so far: seq 0 .. produced-1 */
};

/* Add n records more ("kill <seq>", subtopic k, qoslevel 1). */
static void in_kill_produce(struct in_kill *k, size_t n)
{
    struct in_batch bt;
    in_batch_make(&bt, "kill", k->produced, n);
    for (size_t i = 0; i < n; i++) {
        bt.rec[i].sub_topic = "k";
        bt.rec[i].qos = "1";
    }
    k->s->produce(k->s, bt.rec, n);
    k->produced += (uint32_t)n;
    in_batch_free(&bt);
}

/* Count what the clients got in seen[]; fails on a message that is not one
 * of the records. Returns the number of records still missing. */
static size_t in_kill_tally(struct it_client *const *cs, size_t ncs, uint32_t produced,
                            uint16_t *seen, size_t *dups)
{
    memset(seen, 0, produced * sizeof *seen);
    *dups = 0;
    for (size_t j = 0; j < ncs; j++) {
        size_t n = it_client_count(cs[j]);
        for (size_t i = 0; i < n; i++) {
            struct it_msg m = it_client_msg(cs[j], i);
            int64_t seq = in_payload_seq("kill", m.payload, (size_t)m.len);
            ck_assert_msg(seq >= 0 && seq < produced && !strcmp(m.topic, IN_PARENT "/k") &&
                              m.qos == 1,
                          "message %zu of subscriber %zu ('%.24s' on %s, QoS %d) is no record "
                          "added",
                          i, j, m.payload, m.topic, m.qos);
            if (seen[seq]++)
                (*dups)++;
        }
    }
    size_t missing = 0;
    for (uint32_t q = 0; q < produced; q++)
        missing += seen[q] == 0;
    return missing;
}

/* Records flow to the subscriber while more are added, 100 at a time
 * whenever fewer than 100 are on their way; SIGKILL once the subscriber
 * got at least IN_KILL_AFTER of them and not all. */
static void in_kill_mid_stream(struct in_kill *k, struct it_broker *b, struct it_client *c)
{
    int64_t deadline = it_now_ms() + IN_FLOW_MS;
    for (;;) {
        size_t got = it_client_count(c);
        if (got >= IN_KILL_AFTER && got < k->produced) {
            it_broker_kill9(b);
            fprintf(stderr, "NOTE: %s: kill -9 with %u records added, %zu delivered\n", k->s->type,
                    (unsigned)k->produced, got);
            return;
        }
        ck_assert_msg(it_now_ms() < deadline,
                      "the subscriber got %zu of %u records within %d ms: no moment to kill "
                      "mid-stream",
                      got, (unsigned)k->produced, IN_FLOW_MS);
        if (got + 100 > k->produced)
            in_kill_produce(k, 100);
        else
            poll(NULL, 0, 1); /* the polling period */
    }
}

void in_scenario_kill9(struct in_source *s)
{
    struct it_broker b;
    struct it_client c1, c2;
    struct in_kill k = {.s = s};
    in_source_prepare(s, false);
    in_broker_start(s, &b, true);
    in_client_open(&c1, &b, "sub", false, false, IN_PARENT "/#", 1);
    in_kill_mid_stream(&k, &b, &c1);
    in_kill_produce(&k, 300); /* while mqbridge is down */
    in_broker_restart(&b);
    in_client_open(&c2, &b, "sub", false, true, NULL, 0);
    in_kill_produce(&k, 200); /* after the restart */
    struct it_client *cs[] = {&c1, &c2};
    uint16_t *seen = calloc(k.produced, sizeof *seen);
    ck_assert(seen != NULL);
    size_t dups = 0, missing;
    int64_t deadline = it_now_ms() + IN_FLOW_MS;
    while ((missing = in_kill_tally(cs, 2, k.produced, seen, &dups)) > 0) {
        ck_assert_msg(it_now_ms() < deadline,
                      "after kill -9 and restart, %zu of %u records never arrived within %d ms",
                      missing, (unsigned)k.produced, IN_FLOW_MS);
        poll(NULL, 0, IN_POLL_MS);
    }
    fprintf(stderr, "NOTE: %s: kill -9: all %u records arrived, %zu repeated (at least once)\n",
            s->type, (unsigned)k.produced, dups);
    free(seen);
    it_client_close(&c1);
    it_client_close(&c2);
    it_broker_cleanup(&b);
}

/* ---- malformed records ---- */

enum in_bad { IN_GOOD, IN_BAD_QOS, IN_BAD_LEVELS, IN_BAD_CHARS, IN_BAD_SIZE, IN_BAD_CLIENT };

/* Good records between bad ones; one good record has the largest payload
 * allowed. The keyword is what the reason must mention. */
static const struct {
    enum in_bad bad;
    const char *sub, *qos, *client, *keyword;
} in_mal_recs[] = {
    {IN_GOOD, "ok", "1", NULL, NULL},
    {IN_BAD_QOS, "ok", "7", NULL, "qoslevel"},
    {IN_GOOD, "ok", NULL, NULL, NULL},
    {IN_BAD_LEVELS, "a/b/c", "1", NULL, "levels"},
    {IN_GOOD, "a/b", "1", NULL, NULL},
    {IN_BAD_CHARS, "x y", "1", NULL, "not allowed"},
    {IN_GOOD, NULL, "1", NULL, NULL},
    {IN_BAD_SIZE, "ok", "1", NULL, "max_message_size"},
    {IN_GOOD, "ok", "1", NULL, NULL}, /* IN_BIG bytes */
    {IN_BAD_CLIENT, NULL, "1", "GID_nope@@@d1", "GID_nope"},
    {IN_GOOD, "ok", "1", NULL, NULL},
};
#define IN_MAL_N (sizeof in_mal_recs / sizeof in_mal_recs[0])
#define IN_MAL_BIG 8 /* the good record with IN_BIG bytes */

/* The records, the two large payloads in big[0] (IN_BIG + 1) and big[1]. */
static void in_mal_make(struct in_batch *bt, uint8_t *big[2])
{
    in_batch_make(bt, "mal", 0, IN_MAL_N);
    for (size_t i = 0; i < IN_MAL_N; i++) {
        bt->rec[i].sub_topic = in_mal_recs[i].sub;
        bt->rec[i].qos = in_mal_recs[i].qos;
        bt->rec[i].client_id = in_mal_recs[i].client;
        if (in_mal_recs[i].bad != IN_BAD_SIZE && i != IN_MAL_BIG)
            continue;
        size_t len = i == IN_MAL_BIG ? IN_BIG : IN_BIG + 1;
        uint8_t *p = malloc(len);
        ck_assert(p != NULL);
        memset(p, 'z', len);
        memcpy(p, bt->rec[i].payload, bt->rec[i].len); /* names the record */
        big[i == IN_MAL_BIG] = p;
        bt->rec[i].payload = p;
        bt->rec[i].len = len;
    }
}

/* Poll the counters until every record was handled, then require each
 * reason's count. */
static void in_mal_expect_stats(const struct it_broker *b)
{
    struct in_stats st;
    int64_t deadline = it_now_ms() + IN_FLOW_MS;
    for (;;) {
        in_stats_read(b, &st);
        if (st.received >= IN_MAL_N && st.published + st.skipped >= IN_MAL_N)
            break;
        ck_assert_msg(it_now_ms() < deadline, "the %zu records were not all handled: %s",
                      (size_t)IN_MAL_N, st.line);
        poll(NULL, 0, 100); /* the polling period */
    }
    ck_assert_msg(st.received == IN_MAL_N && st.published == 6 && st.skipped == 5 &&
                      st.bad_qos == 1 && st.too_large == 1 && st.bad_topic == 2 &&
                      st.bad_client_id == 1,
                  "want received=11 published=6 skipped=5 (bad_qos=1 too_large=1 bad_topic=2 "
                  "bad_client_id=1): %s",
                  st.line);
}

/* Poll the dead letters until the 5 skipped records are there, each once
 * with a reason naming why; no good record may be there. */
static void in_mal_expect_dead(struct in_source *s, const struct in_batch *bt)
{
    struct in_deads dead = {0};
    int64_t deadline = it_now_ms() + IN_FLOW_MS;
    for (;;) {
        s->read_dead(s, &dead);
        if (dead.n >= 5)
            break;
        ck_assert_msg(it_now_ms() < deadline,
                      "%zu dead letters within %d ms, want the 5 skipped records", dead.n,
                      IN_FLOW_MS);
        poll(NULL, 0, 100); /* the polling period */
    }
    ck_assert_msg(dead.n == 5, "%zu dead letters, want the 5 skipped records", dead.n);
    for (size_t i = 0; i < IN_MAL_N; i++) {
        size_t found = 0;
        const struct in_dead *d = NULL;
        for (size_t j = 0; j < dead.n; j++)
            if (dead.v[j].len == bt->rec[i].len &&
                !memcmp(dead.v[j].payload, bt->rec[i].payload, bt->rec[i].len)) {
                found++;
                d = &dead.v[j];
            }
        const char *kw = in_mal_recs[i].keyword;
        ck_assert_msg(found == (kw ? 1u : 0u),
                      "record %zu ('%.12s', %zu bytes) is %zu times in the dead letters, want %d",
                      i, (const char *)bt->rec[i].payload, bt->rec[i].len, found, kw ? 1 : 0);
        if (kw)
            ck_assert_msg(strstr(d->reason, kw), "record %zu: dead-letter reason '%s' lacks '%s'",
                          i, d->reason, kw);
    }
    in_deads_clear(&dead);
    free(dead.v);
}

void in_scenario_malformed(struct in_source *s)
{
    struct it_broker b;
    struct it_client c;
    struct in_batch bt;
    uint8_t *big[2] = {NULL, NULL};
    char topic[128];
    in_source_prepare(s, true);
    s->dead_letter = true;
    in_broker_start(s, &b, true);
    in_client_open(&c, &b, "all", true, false, IN_PARENT "/#", 2);
    in_mal_make(&bt, big);
    s->produce(s, bt.rec, bt.n);
    size_t k = 0;
    for (size_t i = 0; i < IN_MAL_N; i++) {
        if (in_mal_recs[i].bad != IN_GOOD)
            continue;
        in_topic(in_mal_recs[i].sub, topic, sizeof topic);
        in_client_wait(&c, k + 1, "the subscriber");
        in_expect_msg(&c, k++, "the subscriber", topic, bt.rec[i].payload, bt.rec[i].len, 1);
    }
    /* all at QoS 1, and the last record is a good one: nothing skipped
     * came before it */
    ck_assert_msg(it_client_count(&c) == k, "the subscriber got %zu messages, want the %zu good",
                  it_client_count(&c), k);
    if (s->read_dead)
        in_mal_expect_dead(s, &bt);
    in_mal_expect_stats(&b);
    it_client_close(&c);
    in_batch_free(&bt);
    free(big[0]);
    free(big[1]);
    it_broker_cleanup(&b);
}

/* ---- the source down at start ---- */

void in_scenario_source_down(struct in_source *s)
{
    struct it_broker b;
    struct it_client pub, sub;
    struct in_batch bt;
    char topic[128];
    ex_env("MQB_SERVICES_DIR");
    in_source_prepare(s, true);
    ex_services_ctl("stop", s->service);
    in_broker_start(s, &b, false);
    /* MQTT is served while the source is unreachable */
    in_client_open(&sub, &b, "sub", true, false, IN_PARENT "/#", 1);
    in_client_open(&pub, &b, "pub", true, false, NULL, 0);
    const char *live = "while the source is down";
    ck_assert(it_client_publish(&pub, IN_PARENT "/live", live, 1, false) == 0);
    ck_assert_msg(it_client_wait_published(&pub, 1, IT_WAIT_MS), "no PUBACK: %s", live);
    in_client_wait(&sub, 1, "the subscriber");
    in_expect_msg(&sub, 0, "the subscriber", IN_PARENT "/live", live, strlen(live), 1);
    ck_assert_msg(b.pid > 0 && kill(b.pid, 0) == 0, "mqbridge is gone");
    ex_services_ctl("start", s->service);
    /* the first "reading from" of the log: the source cannot open while
     * its server is down */
    in_wait_reading(&b, 0);
    in_batch_make(&bt, "down", 0, 50);
    for (size_t i = 0; i < bt.n; i++)
        bt.rec[i].sub_topic = "up";
    s->produce(s, bt.rec, bt.n);
    in_client_wait(&sub, 1 + bt.n, "the subscriber");
    for (size_t i = 0; i < bt.n; i++) {
        in_topic("up", topic, sizeof topic);
        in_expect_msg(&sub, 1 + i, "the subscriber", topic, bt.rec[i].payload, bt.rec[i].len, 1);
    }
    it_client_close(&pub);
    it_client_close(&sub);
    in_batch_free(&bt);
    it_broker_cleanup(&b);
}

/* ---- flow control: a slow subscriber, a stuck one ---- */

#define IN_SLOW_N 20000
#define IN_SLOW_INFLIGHT 5
#define IN_SLOW_QUEUED 20
#define IN_SLOW_ACK_AFTER_MS 5 /* the slow subscriber acknowledges when idle this long */
#define IN_STUCK_N 200

/* Arrivals of "slow" records at one subscriber: the first arrival of each
 * must come in order 0, 1, 2, ...; a repeat of an earlier one is counted. */
struct in_order {
    const char *who;
    uint32_t next; /* the record expected next for the first time */
    size_t dups;
};

static void in_order_take(struct in_order *o, const char *topic, int qos, const void *payload,
                          size_t len)
{
    int64_t seq = in_payload_seq("slow", payload, len);
    ck_assert_msg(seq >= 0 && !strcmp(topic, IN_PARENT "/s") && qos == 1,
                  "%s: '%.24s' on %s at QoS %d is no record added", o->who, (const char *)payload,
                  topic, qos);
    if ((uint32_t)seq < o->next) {
        o->dups++;
        return;
    }
    ck_assert_msg((uint32_t)seq == o->next,
                  "%s: record %" PRId64 " arrived while %u was expected (missing or out of order)",
                  o->who, seq, (unsigned)o->next);
    o->next++;
}

static void in_raw_ack_all(struct it_raw *r, uint16_t *held, size_t *n)
{
    for (size_t i = 0; i < *n; i++)
        ck_assert_int_eq(it_raw_ack(r, MQTT_PUBACK, held[i]), 0);
    *n = 0;
}

/* The slow subscriber: acknowledges only when its whole window is
 * unacknowledged or nothing came for a moment, so that mqbridge's window
 * and queue for it are full most of the time. Returns once every record
 * arrived (all acknowledged). progress (may be NULL) is called after each
 * message and whenever nothing came for a moment. */
static void in_slow_read(struct it_raw *r, struct in_order *o, uint32_t n,
                         void (*progress)(void *ctx, const struct in_order *o), void *ctx)
{
    uint16_t held[IN_SLOW_INFLIGHT];
    size_t nheld = 0;
    int64_t deadline = it_now_ms() + 2 * IN_FLOW_MS;
    while (o->next < n) {
        ck_assert_msg(it_now_ms() < deadline, "%s got %u of %u records within %d ms", o->who,
                      (unsigned)o->next, (unsigned)n, 2 * IN_FLOW_MS);
        struct it_pkt p;
        int t = it_raw_next(r, &p, nheld ? IN_SLOW_ACK_AFTER_MS : IN_POLL_MS);
        if (t == IT_RAW_TIMEOUT) {
            in_raw_ack_all(r, held, &nheld);
            if (progress)
                progress(ctx, o);
            continue;
        }
        ck_assert_msg(t != IT_RAW_EOF && t != IT_RAW_ERROR,
                      "mqbridge closed the connection of %s after %u records (see the log)", o->who,
                      (unsigned)o->next);
        ck_assert_msg(t == MQTT_PUBLISH, "%s got a packet of type %d, want PUBLISH", o->who, t);
        ck_assert_msg(p.qos == 1 && p.pid != 0, "%s: PUBLISH at QoS %d", o->who, p.qos);
        ck_assert_msg(nheld < IN_SLOW_INFLIGHT,
                      "%s: more than max_inflight %d unacknowledged PUBLISHes", o->who,
                      IN_SLOW_INFLIGHT);
        in_order_take(o, p.topic, p.qos, p.payload, p.payload_len);
        held[nheld++] = p.pid;
        it_pkt_clear(&p);
        if (nheld == IN_SLOW_INFLIGHT)
            in_raw_ack_all(r, held, &nheld);
        if (progress)
            progress(ctx, o);
    }
    in_raw_ack_all(r, held, &nheld);
}

/* A libmosquitto subscriber's messages from *seen on, through o. */
struct in_order_wait {
    struct it_client *c;
    struct in_order *o;
    size_t seen;
    uint32_t want;
};

static bool in_order_client(void *ctx)
{
    struct in_order_wait *w = ctx;
    for (size_t n = it_client_count(w->c); w->seen < n; w->seen++) {
        struct it_msg m = it_client_msg(w->c, w->seen);
        in_order_take(w->o, m.topic, m.qos, m.payload, (size_t)m.len);
    }
    return w->o->next >= w->want;
}

/* n records "slow <seq>" on subtopic s at qoslevel 1, added at once. */
static void in_slow_produce(struct in_source *s, uint32_t first, size_t n)
{
    struct in_batch bt;
    in_batch_make(&bt, "slow", first, n);
    for (size_t i = 0; i < n; i++) {
        bt.rec[i].sub_topic = "s";
        bt.rec[i].qos = "1";
    }
    s->produce(s, bt.rec, bt.n);
    in_batch_free(&bt);
}

/* Poll the counters until the rule has acknowledged everything at its
 * source: lag 0, and 0 unacknowledged as the source itself tells (where
 * the test can ask it). */
static void in_wait_drained(struct in_source *s, const struct it_broker *b, struct in_stats *st)
{
    int64_t deadline = it_now_ms() + IN_FLOW_MS;
    int64_t unacked = -1;
    for (;;) {
        in_stats_read(b, st);
        if (st->lag == 0) {
            unacked = s->unacked ? s->unacked(s) : 0;
            if (unacked == 0)
                break;
        }
        ck_assert_msg(it_now_ms() < deadline,
                      "the source was not drained within %d ms (%" PRId64
                      " unacknowledged as the source tells): %s",
                      IN_FLOW_MS, unacked, st->line);
        poll(NULL, 0, 200); /* the polling period: the lag is measured every 5 s */
    }
}

void in_scenario_slow_subscriber(struct in_source *s)
{
    struct it_broker b;
    struct it_raw slow;
    struct it_client fast;
    struct in_stats st;
    in_source_prepare(s, true);
    in_broker_start_limits(s, &b, true, IN_SLOW_INFLIGHT, IN_SLOW_QUEUED);
    it_raw_connect_ok(&slow, b.port, IN_GROUP "@@@slow", false, false);
    ck_assert_int_eq(it_raw_sub1(&slow, IN_PARENT "/#", 1), 1);
    in_client_open(&fast, &b, "fast", true, false, IN_PARENT "/#", 1);
    in_slow_produce(s, 0, IN_SLOW_N);

    struct in_order so = {.who = "the slow persistent subscriber"};
    struct in_order fo = {.who = "the fast subscriber"};
    in_slow_read(&slow, &so, IN_SLOW_N, NULL, NULL);
    struct in_order_wait fw = {.c = &fast, .o = &fo, .want = IN_SLOW_N};
    ck_assert_msg(it_wait_until(in_order_client, &fw, IN_FLOW_MS),
                  "%s got %u of %d records within %d ms", fo.who, (unsigned)fo.next, IN_SLOW_N,
                  IN_FLOW_MS);
    in_wait_drained(s, &b, &st);
    fprintf(stderr,
            "NOTE: %s: slow subscriber: %d records in order, repeats %zu (slow) %zu (fast); "
            "rule waits=%" PRIu64 " blocked_ms=%" PRIu64 ", broker inject_busy=%" PRIu64 "\n",
            s->type, IN_SLOW_N, so.dups, fo.dups, st.waits, st.blocked_ms, st.inject_busy);
    ck_assert_msg(st.dropped == 0, "mqbridge dropped messages: %s", st.broker_line);
    ck_assert_msg(st.received >= IN_SLOW_N && st.published >= IN_SLOW_N && st.skipped == 0 &&
                      st.not_acked == 0,
                  "want received and published >= %d, nothing skipped or unacknowledged: %s",
                  IN_SLOW_N, st.line);
    /* the scenario is about flow control: it must have been needed */
    ck_assert_msg(st.waits > 0 && st.inject_busy > 0,
                  "the rule never waited for room (inject_busy=%" PRIu64 "): %s", st.inject_busy,
                  st.line);
    ck_assert_msg(it_raw_next(&slow, NULL, IT_QUIET_MS) == IT_RAW_TIMEOUT,
                  "the slow subscriber got more than the records");
    it_raw_close(&slow);
    it_client_close(&fast);
    it_broker_cleanup(&b);
}

void in_scenario_stuck_subscriber(struct in_source *s)
{
    struct it_broker b;
    struct it_raw stuck;
    struct it_client fast;
    struct in_stats st;
    char line[1024];
    in_source_prepare(s, true);
    in_broker_start_limits(s, &b, true, IN_SLOW_INFLIGHT, IN_SLOW_QUEUED);
    it_raw_connect_ok(&stuck, b.port, IN_GROUP "@@@stuck", true, false);
    ck_assert_int_eq(it_raw_sub1(&stuck, IN_PARENT "/#", 1), 1);
    in_client_open(&fast, &b, "fast", true, false, IN_PARENT "/#", 1);
    long from = ex_log_size(&b);
    in_slow_produce(s, 0, IN_STUCK_N);

    /* the stuck one never acknowledges: past its window and queue the
     * rule waits, and says so naming it */
    ck_assert_msg(ex_log_wait(&b, from, "inbound rule " IN_RULE ": no record went through for",
                              IN_GROUP "@@@stuck has no room", line, sizeof line, IN_FLOW_MS),
                  "no stall warning naming " IN_GROUP "@@@stuck within %d ms", IN_FLOW_MS);
    struct in_order fo = {.who = "the fast subscriber"};
    struct in_order_wait fw = {.c = &fast, .o = &fo, .want = IN_SLOW_INFLIGHT + IN_SLOW_QUEUED};
    ck_assert(it_wait_until(in_order_client, &fw, IT_WAIT_MS));
    ck_assert_msg(it_client_quiet(&fast, IN_SLOW_INFLIGHT + IN_SLOW_QUEUED, IT_QUIET_MS),
                  "the fast subscriber got %zu records while the stuck one held the rule, want %d",
                  it_client_count(&fast), IN_SLOW_INFLIGHT + IN_SLOW_QUEUED);
    in_stats_read(&b, &st);
    ck_assert_msg(st.waits >= 1 && st.blocked_ms >= 10000 && strstr(st.line, "waiting: client") &&
                      strstr(st.line, IN_GROUP "@@@stuck"),
                  "want waits >= 1, blocked_ms >= 10000 and the waiting client named: %s", st.line);

    /* it goes away: the rest flows to the other subscriber */
    from = ex_log_size(&b);
    it_raw_close(&stuck);
    fw.want = IN_STUCK_N;
    ck_assert_msg(it_wait_until(in_order_client, &fw, IN_FLOW_MS),
                  "%s got %u of %d records within %d ms after the stuck one left", fo.who,
                  (unsigned)fo.next, IN_STUCK_N, IN_FLOW_MS);
    ck_assert_msg(ex_log_wait(&b, from, "inbound rule " IN_RULE ": records go on after", NULL, line,
                              sizeof line, IT_WAIT_MS),
                  "no 'records go on' line after the stuck subscriber left");
    in_wait_drained(s, &b, &st);
    ck_assert_msg(st.dropped == 0, "mqbridge dropped messages: %s", st.broker_line);
    ck_assert_msg(st.published == IN_STUCK_N && st.not_acked == 0 && !strstr(st.line, "waiting:"),
                  "want published=%d not_acked=0 and no wait: %s", IN_STUCK_N, st.line);
    it_client_close(&fast);
    it_broker_cleanup(&b);
}

/* ---- reload while records flow ---- */

#define IN_RELOAD_N 5000
#define IN_RELOADS 4

/* Lines of the broker log holding needle. */
static int in_log_count(const struct it_broker *b, const char *needle)
{
    FILE *f = fopen(b->log, "r");
    ck_assert_msg(f != NULL, "cannot read %s", b->log);
    char line[2048];
    int n = 0;
    while (fgets(line, sizeof line, f))
        n += strstr(line, needle) != NULL;
    fclose(f);
    return n;
}

struct in_reload {
    const struct it_broker *b;
    int sent;
    int64_t worst_ms; /* the slowest MQTT round trip right after a SIGHUP */
    struct it_raw *probe;
};

/* SIGHUP at 1/5, 2/5, ... of the records, then a PINGREQ of the probe
 * client: its PINGRESP shows the loop did not wait for the old readers. */
static void in_reload_progress(void *ctx, const struct in_order *o)
{
    struct in_reload *rl = ctx;
    if (rl->sent >= IN_RELOADS ||
        o->next < (uint32_t)(rl->sent + 1) * IN_RELOAD_N / (IN_RELOADS + 1))
        return;
    ck_assert(kill(rl->b->pid, SIGHUP) == 0);
    rl->sent++;
    int64_t t0 = it_now_ms();
    ck_assert_int_eq(it_raw_pingreq(rl->probe), 0);
    ck_assert_msg(it_raw_next(rl->probe, NULL, IT_WAIT_MS) == MQTT_PINGRESP,
                  "no PINGRESP within %d ms after SIGHUP %d", IT_WAIT_MS, rl->sent);
    int64_t took = it_now_ms() - t0;
    if (took > rl->worst_ms)
        rl->worst_ms = took;
}

void in_scenario_reload(struct in_source *s)
{
    struct it_broker b;
    struct it_raw slow, probe;
    struct in_stats st;
    in_source_prepare(s, true);
    in_broker_start_limits(s, &b, true, IN_SLOW_INFLIGHT, IN_SLOW_QUEUED);
    it_raw_connect_ok(&slow, b.port, IN_GROUP "@@@slow", false, false);
    ck_assert_int_eq(it_raw_sub1(&slow, IN_PARENT "/#", 1), 1);
    it_raw_connect_ok(&probe, b.port, IN_GROUP "@@@probe", true, false);
    in_slow_produce(s, 0, IN_RELOAD_N);
    struct in_order so = {.who = "the slow persistent subscriber"};
    struct in_reload rl = {.b = &b, .probe = &probe};
    in_slow_read(&slow, &so, IN_RELOAD_N, in_reload_progress, &rl);
    ck_assert_int_eq(rl.sent, IN_RELOADS);
    in_wait_drained(s, &b, &st);
    ck_assert_int_eq(in_log_count(&b, "SIGHUP: rules reloaded"), IN_RELOADS);
    ck_assert_int_eq(in_log_count(&b, "inbound rule " IN_RULE ": reading from"), IN_RELOADS + 1);
    fprintf(stderr,
            "NOTE: %s: %d reloads while %d records flowed: all arrived in order, %zu repeated; "
            "slowest MQTT round trip after a SIGHUP %" PRId64 " ms\n",
            s->type, IN_RELOADS, IN_RELOAD_N, so.dups, rl.worst_ms);
    ck_assert_msg(st.dropped == 0, "mqbridge dropped messages: %s", st.broker_line);
    ck_assert_msg(st.published >= IN_RELOAD_N && st.not_acked == 0,
                  "want published >= %d (counters kept across reloads), not_acked=0: %s",
                  IN_RELOAD_N, st.line);
    it_raw_close(&slow);
    it_raw_close(&probe);
    it_broker_cleanup(&b);
}

/* ---- the source's server restarted mid-stream ---- */

#define IN_RESTART_N 4000     /* records added before the stop */
#define IN_RESTART_AFTER 1000 /* records added once the server is back */

struct in_restart {
    struct in_source *s;
    const struct it_broker *b;
    int phase; /* 0 flowing, 1 server stopped, 2 started again */
    long from; /* log position at the stop */
    char noticed[512];
};

/* Whether the rule said, since the stop, that it lost its source (a failed
 * acknowledgement or fetch, a failed open); starts the server again then. */
static bool in_restart_noticed(struct in_restart *rs)
{
    static const char *const signs[] = {"not acknowledged", "fetch failed",
                                        "cannot open the source"};
    for (size_t i = 0; i < sizeof signs / sizeof signs[0]; i++) {
        if (!ex_log_wait(rs->b, rs->from, "inbound rule " IN_RULE ": ", signs[i], rs->noticed,
                         sizeof rs->noticed, 0))
            continue;
        ex_services_ctl("start", rs->s->service);
        rs->phase = 2;
        return true;
    }
    return false;
}

/* Stop the server once a quarter of the records arrived (the slow
 * subscriber holds a batch in delivery then); start it again once the
 * rule noticed. */
static void in_restart_progress(void *ctx, const struct in_order *o)
{
    struct in_restart *rs = ctx;
    if (rs->phase == 0 && o->next >= IN_RESTART_N / 4) {
        rs->from = ex_log_size(rs->b);
        ex_services_ctl("stop", rs->s->service);
        fprintf(stderr, "NOTE: %s: source server stopped after %u records\n", rs->s->type,
                (unsigned)o->next);
        rs->phase = 1;
    } else if (rs->phase == 1) {
        in_restart_noticed(rs);
    }
}

void in_scenario_source_restart(struct in_source *s)
{
    struct it_broker b;
    struct it_raw slow;
    struct in_stats st;
    char line[512];
    uint64_t reconnects = 0;
    ex_env("MQB_SERVICES_DIR");
    in_source_prepare(s, true);
    in_broker_start_limits(s, &b, true, IN_SLOW_INFLIGHT, IN_SLOW_QUEUED);
    it_raw_connect_ok(&slow, b.port, IN_GROUP "@@@slow", false, false);
    ck_assert_int_eq(it_raw_sub1(&slow, IN_PARENT "/#", 1), 1);
    in_slow_produce(s, 0, IN_RESTART_N);
    struct in_order so = {.who = "the slow persistent subscriber"};
    struct in_restart rs = {.s = s, .b = &b};
    in_slow_read(&slow, &so, IN_RESTART_N, in_restart_progress, &rs);
    ck_assert_msg(rs.phase > 0, "all %d records arrived before the server was stopped",
                  IN_RESTART_N);
    /* A source may have had every record in hand already (a Kafka
     * consumer fetches ahead on its own): the rule notices at its next
     * acknowledgement or fetch. */
    int64_t deadline = it_now_ms() + IN_FLOW_MS;
    while (rs.phase == 1 && !in_restart_noticed(&rs)) {
        ck_assert_msg(it_now_ms() < deadline,
                      "the rule did not notice within %d ms that its source's server stopped",
                      IN_FLOW_MS);
        poll(NULL, 0, IN_POLL_MS);
    }
    in_slow_produce(s, IN_RESTART_N, IN_RESTART_AFTER);
    in_slow_read(&slow, &so, IN_RESTART_N + IN_RESTART_AFTER, NULL, NULL);
    in_wait_drained(s, &b, &st);
    bool dropped_ahead = ex_log_wait(&b, rs.from, "inbound rule " IN_RULE ": the next batch", NULL,
                                     line, sizeof line, 0);
    fprintf(stderr,
            "NOTE: %s: source restart: %d records in order, %zu repeated; noticed: %s%s%s\n",
            s->type, IN_RESTART_N + IN_RESTART_AFTER, so.dups, strstr(rs.noticed, "inbound rule"),
            dropped_ahead ? "; then: " : "", dropped_ahead ? strstr(line, "inbound rule") : "");
    ck_assert_msg(in_stats_value(st.line, "reconnects", &reconnects) && reconnects >= 1,
                  "want reconnects >= 1: %s", st.line);
    ck_assert_msg(st.dropped == 0, "mqbridge dropped messages: %s", st.broker_line);
    ck_assert_msg(st.published >= IN_RESTART_N + IN_RESTART_AFTER && st.skipped == 0,
                  "want published >= %d, nothing skipped: %s", IN_RESTART_N + IN_RESTART_AFTER,
                  st.line);
    ck_assert_msg(it_raw_next(&slow, NULL, IT_QUIET_MS) == IT_RAW_TIMEOUT,
                  "the slow subscriber got more than the records");
    it_raw_close(&slow);
    it_broker_cleanup(&b);
}
