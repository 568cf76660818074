/* The Kafka connector against a real broker (MQB_KAFKA_BROKERS, from
 * tests/services/start): settings and rule validation, messages and status
 * events read back with a librdkafka consumer (exact content, headers,
 * per-client order), literal / templated / empty keys and more topics
 * than the producer keeps handles for, REJECT of an oversized record,
 * RETRY against a closed port and during a hang of a private broker
 * (SIGSTOP), recovery after it, the private broker killed or frozen in
 * the middle of a batch (RETRY, every acknowledged record in the topic,
 * the values freed as soon as export() returns: ASan finds any later
 * read), and a throughput measurement (printed, not asserted).
 *
 * The source (inbound rules), with records produced by a librdkafka
 * producer in the test: exact fields and per-key order, no refetch after
 * an ack, refetch without one (a crash), dead letters, an idle fetch, lag,
 * a rebalance between two members of a group, the takeover after a member
 * is killed (session timeout; static membership), RETRY against a closed
 * port and while the private broker is stopped, recovery, and throughput.
 *
 * Run: tests/services/run kafka -- build/test_kafka (from the repository
 * root: the hang test starts its own broker with tests/services/start). */
#include "../../connectors/connector.h"

#include <arpa/inet.h>
#include <inttypes.h>
#include <librdkafka/rdkafka.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check_main.h"

extern const struct connector_ops kafka_connector;
static const struct connector_ops *ops = &kafka_connector;

/* ---- helpers: settings trees -------------------------------------------- */

static const char *file_name = "conn.yaml";

static struct kvmap *map_new(int line, int col)
{
    struct kvmap *m = calloc(1, sizeof *m);
    ck_assert_ptr_nonnull(m);
    m->file = file_name;
    m->line = line;
    m->col = col;
    return m;
}

static struct kv *map_slot(struct kvmap *m, const char *key, int line, int col)
{
    m->items = realloc(m->items, (m->count + 1) * sizeof *m->items);
    ck_assert_ptr_nonnull(m->items);
    struct kv *it = &m->items[m->count++];
    *it = (struct kv){.key = strdup(key), .file = file_name, .line = line, .col = col};
    return it;
}

static void map_put(struct kvmap *m, const char *key, const char *value, int line, int col)
{
    map_slot(m, key, line, col)->value = strdup(value);
}

static void map_put_map(struct kvmap *m, const char *key, struct kvmap *sub, int line, int col)
{
    map_slot(m, key, line, col)->map = sub;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static const char *env_brokers(void)
{
    const char *b = getenv("MQB_KAFKA_BROKERS");
    ck_assert_msg(
        b != NULL && *b != '\0',
        "MQB_KAFKA_BROKERS is not set: run this test under "
        "`tests/services/run kafka -- <test>` (or eval \"$(tests/services/start kafka)\")");
    return b;
}

/* A topic name no other test run uses. */
static void unique_name(char *out, size_t len, const char *what)
{
    static unsigned counter;
    snprintf(out, len, "mqb-test-%s-%ld-%u-%ld", what, (long)getpid(), ++counter, (long)time(NULL));
}

/* A TCP port on 127.0.0.1 that nothing listens on (bound, then closed). */
static int closed_port(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

/* ---- helpers: connector, rules, records --------------------------------- */

/* settings: brokers + the option pairs (NULL-terminated) + more top keys. */
static struct kvmap *settings_make(const char *brokers, const char *const *opts,
                                   const char *timeout_ms)
{
    struct kvmap *s = map_new(2, 3);
    map_put(s, "brokers", brokers, 3, 5);
    if (timeout_ms != NULL)
        map_put(s, "connect_timeout_ms", timeout_ms, 4, 5);
    if (opts != NULL) {
        struct kvmap *o = map_new(6, 7);
        for (int i = 0; opts[i] != NULL; i += 2)
            map_put(o, opts[i], opts[i + 1], 6 + i / 2, 7);
        map_put_map(s, "options", o, 5, 5);
    }
    return s;
}

static struct connector *conn_make(const char *brokers, const char *const *opts,
                                   const char *timeout_ms)
{
    char err[512] = "";
    struct connector *c = NULL;
    struct kvmap *s = settings_make(brokers, opts, timeout_ms);
    ck_assert_msg(ops->create("k", s, &c, err, sizeof err) == 0, "create: %s", err);
    kvmap_free(s);
    return c;
}

static void conn_open(struct connector *c)
{
    char err[512] = "";
    ck_assert_msg(ops->open(c, err, sizeof err) == 0, "open: %s", err);
}

/* A rule built by hand: name, type and its target options (pairs). */
static struct rule *rule_make(struct connector *c, enum rule_type type, const char *const *pairs)
{
    char err[512] = "";
    struct rule *r = calloc(1, sizeof *r);
    ck_assert_ptr_nonnull(r);
    r->name = strdup(type == RULE_STATUS ? "status-rule" : "out-rule");
    r->type = type;
    r->enabled = true;
    r->options = map_new(10, 5);
    for (int i = 0; pairs[i] != NULL; i += 2)
        map_put(r->options, pairs[i], pairs[i + 1], 11 + i / 2, 7);
    ck_assert_msg(ops->compile(c, r, &r->compiled, err, sizeof err) == 0, "compile: %s", err);
    return r;
}

static void rule_free(struct connector *c, struct rule *r)
{
    ops->release(c, r->compiled);
    kvmap_free(r->options);
    kvmap_free(r->target_options);
    free(r->name);
    free(r);
}

/* n messages from `clients` clients, interleaved; record i of client k has
 * msg_id base+i and payload "c<k>#<j>|...". */
struct batch {
    size_t n;
    struct export_record *recs;
    struct export_record **ptrs;
    char (*payload)[96];
    char (*client)[32];
};

static void batch_init(struct batch *b, size_t n)
{
    b->n = n;
    b->recs = calloc(n, sizeof *b->recs);
    b->ptrs = calloc(n, sizeof *b->ptrs);
    b->payload = calloc(n, sizeof *b->payload);
    b->client = calloc(n, sizeof *b->client);
    ck_assert(b->recs && b->ptrs && b->payload && b->client);
    for (size_t i = 0; i < n; i++)
        b->ptrs[i] = &b->recs[i];
}

static void batch_messages(struct batch *b, size_t n, const struct rule *r, int clients,
                           uint64_t base)
{
    batch_init(b, n);
    for (size_t i = 0; i < n; i++) {
        struct export_record *x = &b->recs[i];
        snprintf(b->client[i], sizeof b->client[i], "GID_t@@@dev%d", (int)(i % (size_t)clients));
        int len = snprintf(b->payload[i], sizeof b->payload[i], "c%d#%zu|{\"t\":%zu}",
                           (int)(i % (size_t)clients), i / (size_t)clients, i);
        *x = (struct export_record){.seqno = base + i,
                                    .kind = RECORD_MESSAGE,
                                    .rule = r,
                                    .msg_id = base + i,
                                    .time_ms = 1700000000000 + (int64_t)i,
                                    .qos = (uint8_t)(i % 3),
                                    .client_id = b->client[i],
                                    .topic = "SensorData/room/1",
                                    .payload = (const uint8_t *)b->payload[i],
                                    .payload_len = (uint32_t)len};
    }
}

static void batch_free(struct batch *b)
{
    free(b->recs);
    free(b->ptrs);
    free(b->payload);
    free(b->client);
}

static int export_batch(struct connector *c, struct export_record *const *recs, size_t n,
                        size_t *acked, char *err, size_t errlen)
{
    err[0] = '\0';
    *acked = (size_t)-1;
    return ops->export(c, recs, n, acked, err, errlen);
}

/* ---- helpers: reading a topic back -------------------------------------- */

struct got {
    size_t n;
    char key[64], value[8192], msgid[24], mtopic[64], cid[64], qos[4], ts[24];
    char tag[16], event[16], seq[24];
    char sub[64], qoslevel[8], reason[128], trace[32]; /* source side */
    size_t value_len;
    int32_t partition;
    int64_t timestamp;
};

static void header_copy(rd_kafka_headers_t *h, const char *name, char *out, size_t len)
{
    const void *v = NULL;
    size_t sz = 0;
    out[0] = '\0';
    if (h != NULL && rd_kafka_header_get_last(h, name, &v, &sz) == RD_KAFKA_RESP_ERR_NO_ERROR &&
        v != NULL && sz < len) {
        memcpy(out, v, sz);
        out[sz] = '\0';
    }
}

static void got_fill(struct got *g, const rd_kafka_message_t *m)
{
    rd_kafka_headers_t *h = NULL;
    memset(g, 0, sizeof *g);
    ck_assert_uint_lt(m->key_len, sizeof g->key);
    ck_assert_uint_lt(m->len, sizeof g->value);
    if (m->key_len > 0) /* a record without key or value has NULL there */
        memcpy(g->key, m->key, m->key_len);
    if (m->len > 0)
        memcpy(g->value, m->payload, m->len);
    g->value_len = m->len;
    g->partition = m->partition;
    g->timestamp = rd_kafka_message_timestamp(m, NULL);
    rd_kafka_message_headers(m, &h);
    header_copy(h, "msgid", g->msgid, sizeof g->msgid);
    header_copy(h, "mqttTopic", g->mtopic, sizeof g->mtopic);
    header_copy(h, "clientId", g->cid, sizeof g->cid);
    header_copy(h, "qos", g->qos, sizeof g->qos);
    header_copy(h, "timestamp", g->ts, sizeof g->ts);
    header_copy(h, "tag", g->tag, sizeof g->tag);
    header_copy(h, "eventType", g->event, sizeof g->event);
    header_copy(h, "seq", g->seq, sizeof g->seq);
    header_copy(h, "mqttSecondTopic", g->sub, sizeof g->sub);
    header_copy(h, "qoslevel", g->qoslevel, sizeof g->qoslevel);
    header_copy(h, "reason", g->reason, sizeof g->reason);
    header_copy(h, "trace", g->trace, sizeof g->trace);
}

static rd_kafka_t *consumer_new(const char *brokers)
{
    char why[512], group[128];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    unique_name(group, sizeof group, "group");
    const char *props[][2] = {{"bootstrap.servers", brokers},
                              {"group.id", group},
                              {"enable.auto.commit", "false"},
                              {"enable.partition.eof", "false"}};
    for (size_t i = 0; i < sizeof props / sizeof props[0]; i++)
        ck_assert_msg(rd_kafka_conf_set(conf, props[i][0], props[i][1], why, sizeof why) ==
                          RD_KAFKA_CONF_OK,
                      "%s", why);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, why, sizeof why);
    ck_assert_msg(rk != NULL, "consumer: %s", why);
    return rk;
}

/* Records (and their number) in topic, summed over its partitions (high
 * minus low watermark), with the handle rk; a topic not made yet has none.
 * With `from_start`, every partition is also added to that list, from the
 * beginning. */
static int64_t topic_count(rd_kafka_t *rk, const char *topic,
                           rd_kafka_topic_partition_list_t *from_start)
{
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_topic_t *t = rd_kafka_topic_new(rk, topic, NULL);
    ck_assert_int_eq(rd_kafka_metadata(rk, 0, t, &md, 10000), RD_KAFKA_RESP_ERR_NO_ERROR);
    ck_assert_int_eq(md->topic_cnt, 1);
    int parts = md->topics[0].partition_cnt;
    rd_kafka_metadata_destroy(md);
    rd_kafka_topic_destroy(t);
    int64_t total = 0;
    for (int p = 0; p < parts; p++) {
        int64_t lo = 0, hi = 0;
        ck_assert_int_eq(rd_kafka_query_watermark_offsets(rk, topic, p, &lo, &hi, 10000),
                         RD_KAFKA_RESP_ERR_NO_ERROR);
        total += hi - lo;
        if (from_start != NULL)
            rd_kafka_topic_partition_list_add(from_start, topic, p)->offset =
                RD_KAFKA_OFFSET_BEGINNING;
    }
    return total;
}

/* Assigns every partition of topic from the beginning; returns how many
 * messages the topic holds (sum of the high watermarks). */
static int64_t consumer_assign(rd_kafka_t *rk, const char *topic)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    int64_t total = topic_count(rk, topic, l);
    ck_assert_int_gt(l->cnt, 0); /* the topic has partitions */
    ck_assert_int_eq(rd_kafka_assign(rk, l), RD_KAFKA_RESP_ERR_NO_ERROR);
    rd_kafka_topic_partition_list_destroy(l);
    return total;
}

/* Reads the whole topic (in partition order per partition); *n = count. */
static struct got *topic_read(const char *topic, size_t *n)
{
    rd_kafka_t *rk = consumer_new(env_brokers());
    int64_t total = consumer_assign(rk, topic);
    /* A topic the producer just created may answer the first watermark
     * query with 0 on a loaded machine: ask again for a while. */
    for (double until = now_s() + 15; total == 0 && now_s() < until;) {
        rd_kafka_consumer_poll(rk, 200);
        total = topic_count(rk, topic, NULL);
    }
    struct got *all = calloc((size_t)total + 1, sizeof *all);
    ck_assert_ptr_nonnull(all);
    size_t got = 0;
    double deadline = now_s() + 30;
    while ((int64_t)got < total && now_s() < deadline) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 200);
        if (m == NULL)
            continue;
        ck_assert_msg(m->err == RD_KAFKA_RESP_ERR_NO_ERROR, "consume: %s",
                      rd_kafka_message_errstr(m));
        got_fill(&all[got++], m);
        rd_kafka_message_destroy(m);
    }
    ck_assert_msg((int64_t)got == total, "read %zu of %" PRId64 " messages of %s", got, total,
                  topic);
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    *n = got;
    return all;
}

/* ---- settings and rule validation --------------------------------------- */

struct settings_case {
    const char *desc;
    const char *top[6]; /* extra top-level pairs */
    const char *opts[8];
    bool omit_brokers;
    const char *want; /* substring of the error; NULL = accepted */
};

static const struct settings_case settings_cases[] = {
    {"accepted with options",
     {NULL},
     {"linger.ms", "1", "compression.type", "lz4", NULL},
     false,
     NULL},
    {"unknown key",
     {"topik", "x", NULL},
     {NULL},
     false,
     "conn.yaml:4:5: connector 'k': unknown key 'topik'"},
    {"missing brokers",
     {NULL},
     {NULL},
     true,
     "conn.yaml:2:3: connector 'k': missing required key 'brokers'"},
    {"unknown librdkafka property at its position",
     {NULL},
     {"linger.ms", "1", "no.such.property", "1", NULL},
     false,
     "conn.yaml:7:7: kafka option 'no.such.property': No such configuration property"},
    {"invalid property value",
     {NULL},
     {"acks", "sometimes", NULL},
     false,
     "conn.yaml:6:7: kafka option 'acks'"},
    {"brokers only through `brokers`",
     {NULL},
     {"bootstrap.servers", "h:1", NULL},
     false,
     "kafka option 'bootstrap.servers': set `brokers` instead"},
    {"clash found at configuration time",
     {NULL},
     {"acks", "1", NULL},
     false,
     "conn.yaml:5:5: kafka options: "},
    {"bad connect_timeout_ms",
     {"connect_timeout_ms", "soon", NULL},
     {NULL},
     false,
     "conn.yaml:4:5: connect_timeout_ms: expected 1..600000"},
    {"consumer properties accepted",
     {NULL},
     {"session.timeout.ms", "30000", "fetch.wait.max.ms", "100", NULL},
     false,
     NULL},
    {"the source's own property refused",
     {NULL},
     {"linger.ms", "1", "enable.auto.commit", "true", NULL},
     false,
     "conn.yaml:7:7: kafka option 'enable.auto.commit': offsets are committed after the broker "
     "stored the batch"},
    {"group.id only in the rule",
     {NULL},
     {"group.id", "g", NULL},
     false,
     "conn.yaml:6:7: kafka option 'group.id': set `group` in the inbound rule's source"},
    {"group.instance.id only through instance_id",
     {NULL},
     {"group.instance.id", "a", NULL},
     false,
     "conn.yaml:6:7: kafka option 'group.instance.id': set `instance_id` in the connector's "
     "settings"},
    {"instance_id accepted", {"instance_id", "edge-1.eu_west", NULL}, {NULL}, false, NULL},
    {"instance_id with a space",
     {"instance_id", "edge 1", NULL},
     {NULL},
     false,
     "conn.yaml:4:5: instance_id: expected 1..128 of A-Z a-z 0-9 . _ -"},
    {"instance_id empty",
     {"instance_id", "", NULL},
     {NULL},
     false,
     "conn.yaml:4:5: instance_id: expected 1..128"},
};

START_TEST(test_settings_validation)
{
    const struct settings_case *tc = &settings_cases[_i];
    char err[512] = "";
    struct connector *c = NULL;
    struct kvmap *s = map_new(2, 3);
    if (!tc->omit_brokers)
        map_put(s, "brokers", "127.0.0.1:9", 3, 5);
    for (int i = 0; tc->top[i] != NULL; i += 2)
        map_put(s, tc->top[i], tc->top[i + 1], 4, 5);
    if (tc->opts[0] != NULL) {
        struct kvmap *o = map_new(5, 5);
        for (int i = 0; tc->opts[i] != NULL; i += 2)
            map_put(o, tc->opts[i], tc->opts[i + 1], 6 + i / 2, 7);
        map_put_map(s, "options", o, 5, 5);
    }
    int rc = ops->create("k", s, &c, err, sizeof err);
    if (tc->want == NULL) {
        ck_assert_msg(rc == 0, "%s: %s", tc->desc, err);
        ck_assert_ptr_nonnull(c);
    } else {
        ck_assert_msg(rc != 0, "%s: accepted", tc->desc);
        ck_assert_ptr_null(c);
        ck_assert_msg(strstr(err, tc->want) != NULL, "%s: got '%s', want '%s'", tc->desc, err,
                      tc->want);
    }
    ops->destroy(c);
    kvmap_free(s);
}
END_TEST

struct rule_case {
    const char *desc;
    enum rule_type type;
    const char *pairs[6];
    const char *want;
};

static const struct rule_case rule_cases[] = {
    {"literal topic", RULE_OUTBOUND, {"topic", "sensor-telemetry", NULL}, NULL},
    {"templated topic and key", RULE_OUTBOUND, {"topic", "iot-${group}", "key", "${device}"}, NULL},
    {"status", RULE_STATUS, {"topic", "device-status", NULL}, NULL},
    {"literal key", RULE_OUTBOUND, {"topic", "t", "key", "fleet-1"}, NULL},
    {"empty key (no key)", RULE_OUTBOUND, {"topic", "t", "key", ""}, NULL},
    {"unknown key",
     RULE_OUTBOUND,
     {"topic", "t", "partition", "1"},
     "conn.yaml:12:7: rule 'out-rule': unknown key 'partition'"},
    {"missing topic",
     RULE_OUTBOUND,
     {"key", "${clientid}", NULL},
     "conn.yaml:10:5: rule 'out-rule': missing required key 'topic'"},
    {"bad template",
     RULE_OUTBOUND,
     {"topic", "t", "key", "${clientId}"},
     "conn.yaml:12:7: rule 'out-rule': key 'key': unknown field"},
    {"illegal literal topic",
     RULE_OUTBOUND,
     {"topic", "bad topic!", NULL},
     "conn.yaml:11:7: rule 'out-rule': topic 'bad topic!' is not a valid Kafka topic name"},
};

START_TEST(test_rule_validation)
{
    const struct rule_case *tc = &rule_cases[_i];
    char err[512] = "";
    struct connector *c = conn_make("127.0.0.1:9", NULL, NULL);
    struct rule r = {.name = "out-rule", .type = tc->type, .options = map_new(10, 5)};
    if (tc->type == RULE_STATUS)
        r.name = "status-rule";
    for (int i = 0; i < 6 && tc->pairs[i] != NULL; i += 2)
        map_put(r.options, tc->pairs[i], tc->pairs[i + 1], 11 + i / 2, 7);
    void *compiled = NULL;
    int rc = ops->compile(c, &r, &compiled, err, sizeof err);
    if (tc->want == NULL) {
        ck_assert_msg(rc == 0, "%s: %s", tc->desc, err);
        ck_assert_ptr_nonnull(compiled);
    } else {
        ck_assert_msg(rc != 0, "%s: accepted", tc->desc);
        ck_assert_ptr_null(compiled);
        ck_assert_msg(strstr(err, tc->want) != NULL, "%s: got '%s', want '%s'", tc->desc, err,
                      tc->want);
    }
    ops->release(c, compiled);
    kvmap_free(r.options);
    ops->destroy(c);
}
END_TEST

/* ---- inbound rule validation --------------------------------------------- */

struct inbound_case {
    const char *desc;
    const char *source[10]; /* pairs */
    const char *target[4];  /* pairs (besides `topic`, which rules.c takes) */
    const char *opts[6];    /* connector options */
    const char *want;
};

static const struct inbound_case inbound_cases[] = {
    {"minimal", {"topic", "device-commands", "group", "g1", NULL}, {NULL}, {NULL}, NULL},
    {"every key",
     {"topic", "device-commands", "group", "mqbridge-commands", "dead_letter_topic",
      "device-commands-dead", "offset_reset", "latest", NULL},
     {NULL},
     {NULL},
     NULL},
    {"missing group",
     {"topic", "t", NULL},
     {NULL},
     {NULL},
     "conn.yaml:10:5: rule 'in-rule': missing required key 'group'"},
    {"missing topic",
     {"group", "g", NULL},
     {NULL},
     {NULL},
     "conn.yaml:10:5: rule 'in-rule': missing required key 'topic'"},
    {"unknown source key",
     {"topic", "t", "group", "g", "partition", "1", NULL},
     {NULL},
     {NULL},
     "conn.yaml:13:7: rule 'in-rule': unknown key 'partition'"},
    {"unknown target key",
     {"topic", "t", "group", "g", NULL},
     {"qos", "1", NULL},
     {NULL},
     "conn.yaml:21:7: rule 'in-rule': unknown key 'qos'"},
    {"offset_reset",
     {"topic", "t", "group", "g", "offset_reset", "newest", NULL},
     {NULL},
     {NULL},
     "conn.yaml:13:7: rule 'in-rule': offset_reset: expected earliest or latest"},
    {"illegal topic",
     {"topic", "bad topic", "group", "g", NULL},
     {NULL},
     {NULL},
     "conn.yaml:11:7: rule 'in-rule': topic 'bad topic' is not a valid Kafka topic name"},
    {"a template is no topic name",
     {"topic", "cmd-${group}", "group", "g", NULL},
     {NULL},
     {NULL},
     "topic 'cmd-${group}' is not a valid Kafka topic name"},
    {"illegal dead-letter topic",
     {"topic", "t", "group", "g", "dead_letter_topic", "..", NULL},
     {NULL},
     {NULL},
     "conn.yaml:13:7: rule 'in-rule': dead_letter_topic '..' is not a valid Kafka topic name"},
    {"dead letters into the topic read",
     {"topic", "t", "group", "g", "dead_letter_topic", "t", NULL},
     {NULL},
     {NULL},
     "conn.yaml:13:7: rule 'in-rule': dead_letter_topic must not be the topic it reads"},
    {"group with a control character",
     {"topic", "t", "group", "g\x01", NULL},
     {NULL},
     {NULL},
     "conn.yaml:12:7: rule 'in-rule': group: expected 1..255 characters"},
    {"consumer clash found at load time",
     {"topic", "t", "group", "g", NULL},
     {NULL},
     {"fetch.max.bytes", "1000", NULL},
     "conn.yaml:10:5: rule 'in-rule': kafka consumer: "},
};

START_TEST(test_inbound_validation)
{
    const struct inbound_case *tc = &inbound_cases[_i];
    char err[512] = "";
    struct connector *c = conn_make("127.0.0.1:9", tc->opts[0] ? tc->opts : NULL, NULL);
    struct rule r = {.name = "in-rule",
                     .type = RULE_INBOUND,
                     .options = map_new(10, 5),
                     .target_options = map_new(20, 5)};
    for (int i = 0; tc->source[i] != NULL; i += 2)
        map_put(r.options, tc->source[i], tc->source[i + 1], 11 + i / 2, 7);
    for (int i = 0; tc->target[i] != NULL; i += 2)
        map_put(r.target_options, tc->target[i], tc->target[i + 1], 21 + i / 2, 7);
    void *compiled = NULL;
    int rc = ops->compile(c, &r, &compiled, err, sizeof err);
    if (tc->want == NULL) {
        ck_assert_msg(rc == 0, "%s: %s", tc->desc, err);
        ck_assert_ptr_nonnull(compiled);
    } else {
        ck_assert_msg(rc != 0, "%s: accepted", tc->desc);
        ck_assert_ptr_null(compiled);
        ck_assert_msg(strstr(err, tc->want) != NULL, "%s: got '%s', want '%s'", tc->desc, err,
                      tc->want);
    }
    ops->release(c, compiled);
    kvmap_free(r.options);
    kvmap_free(r.target_options);
    ops->destroy(c);
}
END_TEST

/* ---- messages and status events ----------------------------------------- */

/* Every message read back equals what was exported, with all headers, and
 * each client's messages come in the order they were exported. */
static void check_messages(const struct got *g, size_t n, const struct batch *b, uint64_t base,
                           int clients)
{
    size_t next[16] = {0};
    ck_assert_uint_eq(n, b->n);
    for (size_t k = 0; k < n; k++) {
        uint64_t id = strtoull(g[k].msgid, NULL, 16);
        ck_assert_uint_eq(strlen(g[k].msgid), 16);
        ck_assert(id >= base && id < base + b->n);
        const struct export_record *x = &b->recs[id - base];
        char ts[24], qos[4];
        snprintf(ts, sizeof ts, "%" PRId64, x->time_ms);
        snprintf(qos, sizeof qos, "%u", x->qos);
        ck_assert_str_eq(g[k].key, x->client_id);
        ck_assert_str_eq(g[k].cid, x->client_id);
        ck_assert_str_eq(g[k].mtopic, x->topic);
        ck_assert_str_eq(g[k].qos, qos);
        ck_assert_str_eq(g[k].ts, ts);
        ck_assert_uint_eq(g[k].value_len, x->payload_len);
        ck_assert_mem_eq(g[k].value, x->payload, x->payload_len);
        size_t client = (size_t)(id - base) % (size_t)clients;
        ck_assert_uint_eq((id - base) / (size_t)clients, next[client]); /* per-client order */
        next[client]++;
    }
}

START_TEST(test_messages_read_back)
{
    char topic[128], err[512];
    size_t acked;
    unique_name(topic, sizeof topic, "msg");
    struct connector *c = conn_make(env_brokers(), NULL, NULL);
    struct rule *r = rule_make(c, RULE_OUTBOUND, (const char *[]){"topic", topic, NULL});
    conn_open(c);
    struct batch b;
    batch_messages(&b, 60, r, 3, 1000);
    /* two exports: order must hold across batches too */
    ck_assert_int_eq(export_batch(c, b.ptrs, 25, &acked, err, sizeof err), CONNECTOR_OK);
    ck_assert_uint_eq(acked, 25);
    ck_assert_int_eq(export_batch(c, b.ptrs + 25, 35, &acked, err, sizeof err), CONNECTOR_OK);
    ck_assert_uint_eq(acked, 35);
    size_t n;
    struct got *g = topic_read(topic, &n);
    check_messages(g, n, &b, 1000, 3);
    free(g);
    batch_free(&b);
    ops->close(c);
    rule_free(c, r);
    ops->destroy(c);
}
END_TEST

START_TEST(test_status_events)
{
    static const struct {
        const char *type, *channel;
        uint64_t seq;
    } events[] = {{"connect", "a1", 7}, {"disconnect", "a1", 8}, {"tcpclean", "a1", 9}};
    char topic[128], err[512], body[3][256];
    struct export_record recs[3];
    struct export_record *ptrs[3];
    size_t acked, n;
    unique_name(topic, sizeof topic, "status");
    struct connector *c = conn_make(env_brokers(), NULL, NULL);
    struct rule *r = rule_make(c, RULE_STATUS, (const char *[]){"topic", topic, NULL});
    conn_open(c);
    for (int i = 0; i < 3; i++) {
        int len =
            snprintf(body[i], sizeof body[i],
                     "{\"clientId\":\"GID_s@@@d1\",\"time\":%d,\"eventType\":\"%s\","
                     "\"channelId\":\"%s\",\"clientIp\":\"10.0.0.5:5214\",\"seq\":%" PRIu64 "}",
                     1000 + i, events[i].type, events[i].channel, events[i].seq);
        recs[i] = (struct export_record){.seqno = (uint64_t)i + 1,
                                         .kind = RECORD_STATUS,
                                         .rule = r,
                                         .msg_id = events[i].seq,
                                         .time_ms = 1000 + i,
                                         .client_id = "GID_s@@@d1",
                                         .payload = (const uint8_t *)body[i],
                                         .payload_len = (uint32_t)len,
                                         .event_type = events[i].type,
                                         .channel_id = events[i].channel,
                                         .client_ip = "10.0.0.5:5214"};
        ptrs[i] = &recs[i];
    }
    ck_assert_int_eq(export_batch(c, ptrs, 3, &acked, err, sizeof err), CONNECTOR_OK);
    ck_assert_uint_eq(acked, 3);
    struct got *g = topic_read(topic, &n);
    ck_assert_uint_eq(n, 3);
    for (int i = 0; i < 3; i++) { /* one key: one partition, in order */
        char seq[24];
        snprintf(seq, sizeof seq, "%" PRIu64, events[i].seq);
        ck_assert_str_eq(g[i].key, "GID_s@@@d1");
        ck_assert_str_eq(g[i].value, body[i]);
        ck_assert_str_eq(g[i].tag, events[i].type);
        ck_assert_str_eq(g[i].event, events[i].type);
        ck_assert_str_eq(g[i].seq, seq);
    }
    free(g);
    ops->close(c);
    rule_free(c, r);
    ops->destroy(c);
}
END_TEST

/* Every record of g[0..n) is one of batch b (by msgid) of rule r, with its
 * value; its key is `key`, or with key NULL the record's client ID. */
static void check_target(const struct got *g, size_t n, const struct batch *b, uint64_t base,
                         const struct rule *r, const char *key)
{
    for (size_t k = 0; k < n; k++) {
        uint64_t id = strtoull(g[k].msgid, NULL, 16);
        ck_assert(id >= base && id < base + b->n);
        const struct export_record *x = &b->recs[id - base];
        ck_assert_msg(x->rule == r, "record %" PRIu64 " in the topic of another rule", id);
        ck_assert_str_eq(g[k].key, key ? key : x->client_id);
        ck_assert_uint_eq(g[k].value_len, x->payload_len);
        ck_assert_mem_eq(g[k].value, x->payload, x->payload_len);
    }
}

/* One batch, four rules: a literal key; a templated topic and key; an
 * empty key (none is sent); a topic per device, 18 of them, more than the
 * producer keeps topic handles (16), so handles are replaced mid-batch.
 * Every record is in its topic under its key, the counts are exact. */
START_TEST(test_export_targets)
{
    enum { DEVS = 18, PER_RULE = 2 * DEVS };
    char base[96], t1[128], t2[128], t3[128], t4[128], name[160], key[32], err[512];
    size_t acked, n;
    unique_name(base, sizeof base, "tgt");
    snprintf(t1, sizeof t1, "%s-fixed", base);
    snprintf(t2, sizeof t2, "%s-${group}", base);
    snprintf(t3, sizeof t3, "%s-nokey", base);
    snprintf(t4, sizeof t4, "%s-${device}", base);
    struct connector *c = conn_make(env_brokers(), NULL, NULL);
    struct rule *r[4] = {
        rule_make(c, RULE_OUTBOUND, (const char *[]){"topic", t1, "key", "fleet-1", NULL}),
        rule_make(c, RULE_OUTBOUND, (const char *[]){"topic", t2, "key", "k-${device}", NULL}),
        rule_make(c, RULE_OUTBOUND, (const char *[]){"topic", t3, "key", "", NULL}),
        rule_make(c, RULE_OUTBOUND, (const char *[]){"topic", t4, NULL}),
    };
    conn_open(c);
    struct batch b;
    batch_messages(&b, 4 * PER_RULE, r[0], DEVS, 500); /* record i: client dev<i % 18> */
    for (size_t i = 0; i < b.n; i++)
        b.recs[i].rule = r[(i / DEVS) % 4]; /* runs of 18 records per rule */
    ck_assert_int_eq(export_batch(c, b.ptrs, b.n, &acked, err, sizeof err), CONNECTOR_OK);
    ck_assert_uint_eq(acked, b.n);

    struct got *g = topic_read(t1, &n);
    ck_assert_uint_eq(n, PER_RULE);
    check_target(g, n, &b, 500, r[0], "fleet-1");
    free(g);
    snprintf(name, sizeof name, "%s-GID_t", base);
    g = topic_read(name, &n);
    ck_assert_uint_eq(n, PER_RULE);
    for (size_t k = 0; k < n; k++) {
        snprintf(key, sizeof key, "k-%s", strstr(g[k].cid, "@@@") + 3);
        check_target(&g[k], 1, &b, 500, r[1], key);
    }
    free(g);
    g = topic_read(t3, &n);
    ck_assert_uint_eq(n, PER_RULE);
    check_target(g, n, &b, 500, r[2], "");
    free(g);
    snprintf(name, sizeof name, "%s-dev17", base);
    g = topic_read(name, &n);
    ck_assert_uint_eq(n, 2);
    check_target(g, n, &b, 500, r[3], NULL);
    ck_assert_str_eq(g[0].cid, "GID_t@@@dev17");
    free(g);
    rd_kafka_t *rk = consumer_new(env_brokers());
    for (int d = 0; d < DEVS; d++) {
        snprintf(name, sizeof name, "%s-dev%d", base, d);
        ck_assert_msg(topic_count(rk, name, NULL) == 2, "topic %s", name);
    }
    rd_kafka_destroy(rk);
    batch_free(&b);
    ops->close(c);
    for (int i = 0; i < 4; i++)
        rule_free(c, r[i]);
    ops->destroy(c);
}
END_TEST

/* ---- errors -------------------------------------------------------------- */

/* message.max.bytes=1000: record 2 (5000 bytes) is refused for good; 0 and
 * 1 are acknowledged and in the topic; the rest goes on afterwards. */
START_TEST(test_reject_too_large)
{
    char topic[128], err[512];
    static char big[5000];
    size_t acked, n;
    memset(big, 'x', sizeof big);
    unique_name(topic, sizeof topic, "reject");
    struct connector *c =
        conn_make(env_brokers(), (const char *[]){"message.max.bytes", "1000", NULL}, NULL);
    struct rule *r = rule_make(c, RULE_OUTBOUND, (const char *[]){"topic", topic, NULL});
    conn_open(c);
    struct batch b;
    batch_messages(&b, 5, r, 1, 1);
    b.recs[2].payload = (const uint8_t *)big;
    b.recs[2].payload_len = sizeof big;
    ck_assert_int_eq(export_batch(c, b.ptrs, 5, &acked, err, sizeof err), CONNECTOR_REJECT);
    ck_assert_uint_eq(acked, 2);
    ck_assert_msg(strstr(err, "record 2") && strstr(err, "too large"), "err: %s", err);
    ck_assert_int_eq(export_batch(c, b.ptrs + 3, 2, &acked, err, sizeof err), CONNECTOR_OK);
    ck_assert_uint_eq(acked, 2);
    struct got *g = topic_read(topic, &n);
    ck_assert_uint_eq(n, 4);
    const char *want[] = {"c0#0|", "c0#1|", "c0#3|", "c0#4|"};
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(strncmp(g[i].value, want[i], strlen(want[i])) == 0, "message %zu: %s", i,
                      g[i].value);
    free(g);
    batch_free(&b);
    ops->close(c);
    rule_free(c, r);
    ops->destroy(c);
}
END_TEST

/* Nothing listens: open() says RETRY within connect_timeout_ms (+ slack)
 * and export() on the closed connector says RETRY at once, acked 0. Then
 * the same configuration against a live broker works (recovery). */
START_TEST(test_retry_unreachable)
{
    char brokers[64], err[512];
    size_t acked;
    snprintf(brokers, sizeof brokers, "127.0.0.1:%d", closed_port());
    struct connector *c = conn_make(brokers, NULL, "500");
    struct rule *r = rule_make(c, RULE_OUTBOUND, (const char *[]){"topic", "unreachable", NULL});
    double t0 = now_s();
    ck_assert_int_eq(ops->open(c, err, sizeof err), CONNECTOR_RETRY);
    double took = now_s() - t0;
    ck_assert_msg(took < 3.0, "open took %.1f s", took);
    ck_assert_msg(strstr(err, brokers) != NULL, "err: %s", err);
    struct batch b;
    batch_messages(&b, 3, r, 1, 1);
    t0 = now_s();
    ck_assert_int_eq(export_batch(c, b.ptrs, 3, &acked, err, sizeof err), CONNECTOR_RETRY);
    ck_assert_uint_eq(acked, 0);
    ck_assert(now_s() - t0 < 1.0);
    rule_free(c, r);
    ops->destroy(c);

    char topic[128];
    unique_name(topic, sizeof topic, "recover");
    c = conn_make(env_brokers(), NULL, "500");
    r = rule_make(c, RULE_OUTBOUND, (const char *[]){"topic", topic, NULL});
    for (size_t i = 0; i < b.n; i++)
        b.recs[i].rule = r;
    conn_open(c);
    ck_assert_int_eq(export_batch(c, b.ptrs, 3, &acked, err, sizeof err), CONNECTOR_OK);
    ck_assert_uint_eq(acked, 3);
    batch_free(&b);
    ops->close(c);
    rule_free(c, r);
    ops->destroy(c);
}
END_TEST

/* ---- source: helpers -------------------------------------------------------- */

/* One record produced for a source test, and where Kafka put it. */
struct src_msg {
    char key[32], sub[48], qos[8], cid[48];
    bool has_sub, has_qos, has_cid;
    uint8_t value[96];
    size_t len;
    int32_t partition; /* from the delivery report */
    int64_t offset, timestamp;
};

static void src_on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    struct src_msg *msg = m->_private;
    if (m->err != RD_KAFKA_RESP_ERR_NO_ERROR)
        return; /* offset stays -1: produce_msgs fails */
    msg->partition = m->partition;
    msg->offset = m->offset;
    msg->timestamp = rd_kafka_message_timestamp(m, NULL);
}

/* Produces msgs[0..n) to topic (keyed, with the headers present and an
 * extra `trace` header) and waits until each is acknowledged. */
static void produce_msgs(const char *brokers, const char *topic, struct src_msg *msgs, size_t n)
{
    char why[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    const char *props[][2] = {{"bootstrap.servers", brokers}, {"linger.ms", "5"}, {"acks", "all"}};
    for (size_t i = 0; i < sizeof props / sizeof props[0]; i++)
        ck_assert(rd_kafka_conf_set(conf, props[i][0], props[i][1], why, sizeof why) ==
                  RD_KAFKA_CONF_OK);
    rd_kafka_conf_set_dr_msg_cb(conf, src_on_delivery);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, why, sizeof why);
    ck_assert_msg(rk != NULL, "producer: %s", why);
    for (size_t i = 0; i < n; i++) {
        struct src_msg *m = &msgs[i];
        rd_kafka_headers_t *h = rd_kafka_headers_new(4);
        m->offset = -1;
        if (m->has_sub)
            rd_kafka_header_add(h, "mqttSecondTopic", -1, m->sub, (ssize_t)strlen(m->sub));
        if (m->has_qos)
            rd_kafka_header_add(h, "qoslevel", -1, m->qos, (ssize_t)strlen(m->qos));
        if (m->has_cid)
            rd_kafka_header_add(h, "clientId", -1, m->cid, (ssize_t)strlen(m->cid));
        rd_kafka_header_add(h, "trace", -1, "t-1", -1);
        rd_kafka_resp_err_t e;
        while ((e = rd_kafka_producev(
                    rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY(m->key, strlen(m->key)),
                    RD_KAFKA_V_VALUE(m->value, m->len), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                    RD_KAFKA_V_HEADERS(h), RD_KAFKA_V_OPAQUE(m), RD_KAFKA_V_END)) ==
               RD_KAFKA_RESP_ERR__QUEUE_FULL)
            rd_kafka_poll(rk, 10);
        ck_assert_msg(e == RD_KAFKA_RESP_ERR_NO_ERROR, "produce: %s", rd_kafka_err2str(e));
    }
    ck_assert_int_eq(rd_kafka_flush(rk, 30000), RD_KAFKA_RESP_ERR_NO_ERROR);
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(msgs[i].offset >= 0, "record %zu not delivered", i);
    rd_kafka_destroy(rk);
}

/* n records over `keys` keys, interleaved: record i is number j = i / keys
 * of key k = i % keys, value "c<k>#<j>|...", all three headers. */
static struct src_msg *msgs_make(size_t n, int keys)
{
    struct src_msg *msgs = calloc(n, sizeof *msgs);
    ck_assert_ptr_nonnull(msgs);
    for (size_t i = 0; i < n; i++) {
        struct src_msg *m = &msgs[i];
        int k = (int)(i % (size_t)keys);
        size_t j = i / (size_t)keys;
        snprintf(m->key, sizeof m->key, "GID_c@@@dev%d", k);
        snprintf(m->sub, sizeof m->sub, "dev%d/cmd", k);
        snprintf(m->qos, sizeof m->qos, "%zu", j % 3);
        snprintf(m->cid, sizeof m->cid, "GID_c@@@dev%d", k);
        m->has_sub = m->has_qos = m->has_cid = true;
        m->len =
            (size_t)snprintf((char *)m->value, sizeof m->value, "c%d#%zu|{\"n\":%zu}", k, j, i);
    }
    return msgs;
}

/* The produced record a fetched one comes from (same partition and offset). */
static const struct src_msg *msg_of(const struct src_msg *msgs, size_t n,
                                    const struct import_record *rec)
{
    for (size_t i = 0; i < n; i++)
        if (msgs[i].partition == rec->partition && msgs[i].offset == rec->offset)
            return &msgs[i];
    ck_abort_msg("fetched a record nobody produced: partition %d offset %" PRId64,
                 (int)rec->partition, rec->offset);
    return NULL;
}

/* An inbound rule: the source pairs, an empty target. */
static struct rule *inbound_make(struct connector *c, const char *const *pairs)
{
    char err[512] = "";
    struct rule *r = calloc(1, sizeof *r);
    ck_assert_ptr_nonnull(r);
    r->name = strdup("in-rule");
    r->type = RULE_INBOUND;
    r->enabled = true;
    r->options = map_new(10, 5);
    r->target_options = map_new(20, 5);
    for (int i = 0; pairs[i] != NULL; i += 2)
        map_put(r->options, pairs[i], pairs[i + 1], 11 + i / 2, 7);
    ck_assert_msg(ops->compile(c, r, &r->compiled, err, sizeof err) == 0, "compile: %s", err);
    return r;
}

static struct source *src_open(struct connector *c, const struct rule *r)
{
    char err[512] = "";
    struct source *s = NULL;
    ck_assert_msg(ops->source_open(c, r, &s, err, sizeof err) == 0, "source_open: %s", err);
    ck_assert_ptr_nonnull(s);
    return s;
}

/* Fetches until `want` records are in recs or `secs` have passed (the
 * first fetches after an open wait for the group to assign partitions).
 * Returns how many. */
static size_t fetch_upto(struct source *s, struct import_record **recs, size_t want, double secs)
{
    char err[512] = "";
    size_t got = 0;
    double deadline = now_s() + secs;
    while (got < want && now_s() < deadline) {
        size_t n = 0;
        int rc = ops->source_fetch(s, recs + got, want - got, &n, 500, err, sizeof err);
        ck_assert_msg(rc == CONNECTOR_OK, "fetch: %s", err);
        got += n;
    }
    return got;
}

/* Acknowledges recs[0..n); those still PENDING count as PUBLISHED. */
static int ack_all(struct source *s, struct import_record **recs, size_t n, char *err,
                   size_t errlen)
{
    for (size_t i = 0; i < n; i++)
        if (recs[i]->outcome == IMPORT_PENDING)
            recs[i]->outcome = IMPORT_PUBLISHED;
    err[0] = '\0';
    return ops->source_ack(s, recs, n, err, errlen);
}

static void recs_free(struct import_record **recs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        import_record_free(recs[i]);
}

/* One source test's connector, rule and names. */
struct src_env {
    char topic[96], group[112], dead[112];
    struct connector *c;
    struct rule *r;
};

static void env_init_opts(struct src_env *e, const char *what, const char *brokers,
                          bool dead_letter, const char *const *opts)
{
    unique_name(e->topic, sizeof e->topic, what);
    snprintf(e->group, sizeof e->group, "%s-group", e->topic);
    snprintf(e->dead, sizeof e->dead, "%s-dead", e->topic);
    e->c = conn_make(brokers, opts, "2000");
    const char *pairs[] = {"topic", e->topic, "group", e->group, "dead_letter_topic",
                           e->dead, NULL};
    if (!dead_letter)
        pairs[4] = NULL;
    e->r = inbound_make(e->c, pairs);
}

static void env_init(struct src_env *e, const char *what, const char *brokers, bool dead_letter)
{
    env_init_opts(e, what, brokers, dead_letter, NULL);
}

static void env_free(struct src_env *e)
{
    rule_free(e->c, e->r);
    ops->destroy(e->c);
}

/* ---- source: tests ------------------------------------------------------------ */

/* Records produced before the first open come with exact fields, their
 * partition and offset, and in order per key. After the ack (some
 * records SKIPPED, no dead-letter topic) and a reopen, only a record
 * produced afterwards is fetched. */
START_TEST(test_source_fetch_exact)
{
    enum { N = 30, KEYS = 3 };
    struct import_record *recs[N + 8];
    char err[512];
    struct src_env e;
    env_init(&e, "src-exact", env_brokers(), false);
    struct src_msg *msgs = msgs_make(N, KEYS);
    msgs[3].has_sub = msgs[3].has_qos = msgs[3].has_cid = false; /* no mapped header */
    memcpy(msgs[4].value, "\0\xff\x01 bin\0", 9);                /* binary safe */
    msgs[4].len = 9;
    msgs[5].len = 0;                                     /* empty value */
    snprintf(msgs[6].sub, sizeof msgs[6].sub, "%s", ""); /* empty subtopic */
    produce_msgs(env_brokers(), e.topic, msgs, N);

    struct source *s = src_open(e.c, e.r);
    size_t n = fetch_upto(s, recs, N, 60);
    ck_assert_uint_eq(n, N);
    int next[KEYS] = {0};
    for (size_t i = 0; i < n; i++) {
        const struct src_msg *m = msg_of(msgs, N, recs[i]);
        int k = (int)((size_t)(m - msgs) % KEYS);
        ck_assert_int_eq((int)((size_t)(m - msgs) / KEYS), next[k]++); /* per-key order */
        ck_assert_uint_eq(recs[i]->payload_len, m->len);
        ck_assert_mem_eq(recs[i]->payload, m->value, m->len);
        const char *want[3] = {m->has_sub ? m->sub : NULL, m->has_qos ? m->qos : NULL,
                               m->has_cid ? m->cid : NULL};
        const char *have[3] = {recs[i]->sub_topic, recs[i]->qos, recs[i]->client_id};
        for (int f = 0; f < 3; f++)
            if (want[f] == NULL)
                ck_assert_ptr_null(have[f]);
            else
                ck_assert_str_eq(have[f], want[f]);
        char id[200];
        snprintf(id, sizeof id, "%s[%d]@%" PRId64, e.topic, (int)m->partition, m->offset);
        ck_assert_str_eq(recs[i]->id, id);
        if (i % 7 == 0) { /* the engine refused some: acknowledged all the same */
            recs[i]->outcome = IMPORT_SKIPPED;
            snprintf(recs[i]->reason, sizeof recs[i]->reason, "test");
        }
    }
    ck_assert_int_eq(ack_all(s, recs, n, err, sizeof err), CONNECTOR_OK);
    recs_free(recs, n);
    ops->source_close(s);

    struct src_msg *marker = msgs_make(1, 1);
    produce_msgs(env_brokers(), e.topic, marker, 1);
    s = src_open(e.c, e.r);
    n = fetch_upto(s, recs, 1, 60);
    ck_assert_uint_eq(n, 1);
    ck_assert_int_eq(recs[0]->partition, marker->partition);
    ck_assert_int_eq(recs[0]->offset, marker->offset);
    recs_free(recs, n);
    ck_assert_uint_eq(fetch_upto(s, recs, 1, 1.5), 0); /* and nothing else */
    ops->source_close(s);
    free(marker);
    free(msgs);
    env_free(&e);
}
END_TEST

/* A NUL byte inside a mapped header becomes '#' (which the engine then
 * refuses): the record never carries a shorter value than was sent. */
START_TEST(test_source_header_nul)
{
    struct import_record *recs[1];
    char why[256];
    struct src_env e;
    env_init(&e, "src-nul", env_brokers(), false);
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    ck_assert(rd_kafka_conf_set(conf, "bootstrap.servers", env_brokers(), why, sizeof why) ==
              RD_KAFKA_CONF_OK);
    rd_kafka_t *p = rd_kafka_new(RD_KAFKA_PRODUCER, conf, why, sizeof why);
    ck_assert_ptr_nonnull(p);
    ck_assert_int_eq(rd_kafka_producev(p, RD_KAFKA_V_TOPIC(e.topic), RD_KAFKA_V_VALUE("v", 1),
                                       RD_KAFKA_V_HEADER("mqttSecondTopic", "a\0b", 3),
                                       RD_KAFKA_V_HEADER("clientId", "x\0", 2),
                                       RD_KAFKA_V_HEADER("qoslevel", "1\0", 2), RD_KAFKA_V_END),
                     RD_KAFKA_RESP_ERR_NO_ERROR);
    ck_assert_int_eq(rd_kafka_flush(p, 30000), RD_KAFKA_RESP_ERR_NO_ERROR);
    rd_kafka_destroy(p);
    struct source *s = src_open(e.c, e.r);
    ck_assert_uint_eq(fetch_upto(s, recs, 1, 60), 1);
    ck_assert_str_eq(recs[0]->sub_topic, "a#b");
    ck_assert_str_eq(recs[0]->client_id, "x#");
    ck_assert_str_eq(recs[0]->qos, "1#");
    ck_assert_uint_eq(recs[0]->payload_len, 1);
    recs_free(recs, 1);
    ops->source_close(s);
    env_free(&e);
}
END_TEST

/* Fetched, not acknowledged, closed (what a crash leaves): everything
 * comes again. Then the first half of the batch is acknowledged: after a
 * reopen exactly the other half comes (the ack commits, per partition, up
 * to the last acknowledged record). */
START_TEST(test_source_redelivery)
{
    enum { N = 24, KEYS = 4 };
    struct import_record *recs[N], *again[N];
    char err[512];
    struct src_env e;
    env_init(&e, "src-redeliver", env_brokers(), false);
    struct src_msg *msgs = msgs_make(N, KEYS);
    produce_msgs(env_brokers(), e.topic, msgs, N);

    struct source *s = src_open(e.c, e.r);
    ck_assert_uint_eq(fetch_upto(s, recs, N, 60), N);
    ops->source_close(s); /* no ack */
    s = src_open(e.c, e.r);
    ck_assert_uint_eq(fetch_upto(s, again, N, 60), N);
    for (size_t i = 0; i < N; i++)
        msg_of(msgs, N, again[i]); /* the same records: each was produced */
    recs_free(recs, N);
    ck_assert_int_eq(ack_all(s, again, N / 2, err, sizeof err), CONNECTOR_OK);
    ops->source_close(s);

    s = src_open(e.c, e.r);
    ck_assert_uint_eq(fetch_upto(s, recs, N / 2, 60), N / 2);
    ck_assert_uint_eq(fetch_upto(s, recs + N / 2, 1, 1.5), 0);
    for (size_t i = 0; i < N / 2; i++) { /* recs == again[N/2..N) as a set */
        bool found = false;
        for (size_t k = N / 2; k < N && !found; k++)
            found =
                recs[i]->partition == again[k]->partition && recs[i]->offset == again[k]->offset;
        ck_assert_msg(found, "record %s was acknowledged, yet came again", recs[i]->id);
    }
    ck_assert_int_eq(ack_all(s, recs, N / 2, err, sizeof err), CONNECTOR_OK);
    recs_free(recs, N / 2);
    recs_free(again, N);
    ops->source_close(s);
    free(msgs);
    env_free(&e);
}
END_TEST

/* SKIPPED records are copied to the dead-letter topic (key, value,
 * timestamp and every header of the original, plus `reason`) and
 * acknowledged with the rest: a reopen fetches nothing. */
START_TEST(test_source_dead_letter)
{
    enum { N = 8 };
    static const size_t skip[] = {1, 6};
    struct import_record *recs[N];
    char err[512];
    struct src_env e;
    env_init(&e, "src-dead", env_brokers(), true);
    struct src_msg *msgs = msgs_make(N, 2);
    snprintf(msgs[1].qos, sizeof msgs[1].qos, "7");
    produce_msgs(env_brokers(), e.topic, msgs, N);

    struct source *s = src_open(e.c, e.r);
    ck_assert_uint_eq(fetch_upto(s, recs, N, 60), N);
    for (size_t i = 0; i < N; i++) {
        const struct src_msg *m = msg_of(msgs, N, recs[i]);
        if (m == &msgs[skip[0]] || m == &msgs[skip[1]]) {
            recs[i]->outcome = IMPORT_SKIPPED;
            snprintf(recs[i]->reason, sizeof recs[i]->reason, "skipped #%zu", (size_t)(m - msgs));
        }
    }
    ck_assert_msg(ack_all(s, recs, N, err, sizeof err) == CONNECTOR_OK, "ack: %s", err);
    recs_free(recs, N);
    ops->source_close(s);

    size_t n;
    struct got *g = topic_read(e.dead, &n);
    ck_assert_uint_eq(n, 2);
    for (size_t i = 0; i < n; i++) {
        char want[32];
        const struct src_msg *m = NULL;
        for (size_t k = 0; k < 2; k++)
            if (g[i].value_len == msgs[skip[k]].len &&
                memcmp(g[i].value, msgs[skip[k]].value, g[i].value_len) == 0)
                m = &msgs[skip[k]];
        ck_assert_msg(m != NULL, "unexpected dead letter '%s'", g[i].value);
        snprintf(want, sizeof want, "skipped #%zu", (size_t)(m - msgs));
        ck_assert_str_eq(g[i].reason, want);
        ck_assert_str_eq(g[i].key, m->key);
        ck_assert_str_eq(g[i].sub, m->sub);
        ck_assert_str_eq(g[i].qoslevel, m->qos);
        ck_assert_str_eq(g[i].cid, m->cid);
        ck_assert_str_eq(g[i].trace, "t-1");
        ck_assert_int_eq(g[i].timestamp, m->timestamp);
    }
    free(g);
    s = src_open(e.c, e.r);
    ck_assert_uint_eq(fetch_upto(s, recs, 1, 3), 0);
    ops->source_close(s);
    free(msgs);
    env_free(&e);
}
END_TEST

/* Nothing to read: fetch comes back with n = 0 after about timeout_ms. */
START_TEST(test_source_idle)
{
    struct import_record *recs[4];
    char err[512];
    struct src_env e;
    env_init(&e, "src-idle", env_brokers(), false);
    struct src_msg *m = msgs_make(1, 1);
    produce_msgs(env_brokers(), e.topic, m, 1);
    struct source *s = src_open(e.c, e.r);
    ck_assert_uint_eq(fetch_upto(s, recs, 1, 60), 1);
    ck_assert_int_eq(ack_all(s, recs, 1, err, sizeof err), CONNECTOR_OK);
    recs_free(recs, 1);
    for (int i = 0; i < 3; i++) {
        size_t n = 99;
        double t0 = now_s();
        ck_assert_int_eq(ops->source_fetch(s, recs, 4, &n, 700, err, sizeof err), CONNECTOR_OK);
        double took = now_s() - t0;
        ck_assert_uint_eq(n, 0);
        ck_assert_msg(took > 0.6 && took < 1.5, "idle fetch took %.2f s", took);
    }
    ops->source_close(s);
    free(m);
    env_free(&e);
}
END_TEST

/* The lag is the backlog not yet acknowledged: N - 5 after five records,
 * 0 after all of them. */
static int64_t lag_wait(struct source *s, int64_t want)
{
    int64_t lag = -1;
    double deadline = now_s() + 20;
    while ((lag = ops->source_lag(s)) != want && now_s() < deadline)
        ;
    return lag;
}

START_TEST(test_source_lag)
{
    enum { N = 40 };
    struct import_record *recs[N];
    char err[512];
    struct src_env e;
    env_init(&e, "src-lag", env_brokers(), false);
    struct src_msg *msgs = msgs_make(N, 4);
    produce_msgs(env_brokers(), e.topic, msgs, N);
    struct source *s = src_open(e.c, e.r);
    ck_assert_uint_eq(fetch_upto(s, recs, 5, 60), 5);
    ck_assert_int_eq(ack_all(s, recs, 5, err, sizeof err), CONNECTOR_OK);
    ck_assert_int_eq(lag_wait(s, N - 5), N - 5);
    ck_assert_uint_eq(fetch_upto(s, recs + 5, N - 5, 30), N - 5);
    ck_assert_int_eq(ack_all(s, recs + 5, N - 5, err, sizeof err), CONNECTOR_OK);
    ck_assert_int_eq(lag_wait(s, 0), 0);
    recs_free(recs, N);
    ops->source_close(s);
    free(msgs);
    env_free(&e);
}
END_TEST

/* The group's committed offset of each partition of topic (< 0: none),
 * asked by a consumer that does not join the group. */
static void group_committed(const char *group, const char *topic, int64_t *out, int parts)
{
    char why[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    ck_assert(rd_kafka_conf_set(conf, "bootstrap.servers", env_brokers(), why, sizeof why) ==
                  RD_KAFKA_CONF_OK &&
              rd_kafka_conf_set(conf, "group.id", group, why, sizeof why) == RD_KAFKA_CONF_OK);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, why, sizeof why);
    ck_assert_ptr_nonnull(rk);
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(parts);
    for (int p = 0; p < parts; p++)
        rd_kafka_topic_partition_list_add(l, topic, p);
    ck_assert_int_eq(rd_kafka_committed(rk, l, 10000), RD_KAFKA_RESP_ERR_NO_ERROR);
    for (int p = 0; p < parts; p++)
        out[p] = l->elems[p].offset;
    rd_kafka_topic_partition_list_destroy(l);
    rd_kafka_destroy(rk);
}

/* The assignment strategies: eager (librdkafka's default) and cooperative. */
static const char *const strategies[] = {"range,roundrobin", "cooperative-sticky"};

/* A second member joins the group while the first holds a fetched,
 * unacknowledged batch of every partition. The first member's rebalance
 * commits nothing; its ack, afterwards, commits only the partitions it
 * still owns (to their end: it read them all); the partitions it gave up
 * stay uncommitted and the second member reads them from the start. A
 * third member, after both closed (the second never acknowledged), gets
 * exactly the records of the uncommitted partitions: at least once, and
 * nothing committed that was not acknowledged by its owner. */
START_TEST(test_source_rebalance)
{
    enum { N = 40, KEYS = 8, MAXP = 64 };
    struct import_record *a_recs[N], *tmp[N], *b_recs[N * 2];
    int64_t committed[MAXP], ends[MAXP] = {0};
    int parts = 0;
    size_t b_n = 0, expect = 0, n;
    char err[512];
    struct src_env e;
    const char *opts[] = {"partition.assignment.strategy", strategies[_i], NULL};
    env_init_opts(&e, "src-rebalance", env_brokers(), false, opts);
    struct src_msg *msgs = msgs_make(N, KEYS);
    produce_msgs(env_brokers(), e.topic, msgs, N);
    for (size_t i = 0; i < N; i++) {
        ck_assert_int_lt(msgs[i].partition, MAXP);
        parts = msgs[i].partition >= parts ? msgs[i].partition + 1 : parts;
        if (msgs[i].offset + 1 > ends[msgs[i].partition])
            ends[msgs[i].partition] = msgs[i].offset + 1;
    }
    struct source *a = src_open(e.c, e.r);
    ck_assert_uint_eq(fetch_upto(a, a_recs, N, 60), N);
    struct source *b = src_open(e.c, e.r);
    /* both poll, as the engine does, until b has been given partitions */
    for (double deadline = now_s() + 60; b_n == 0 && now_s() < deadline;) {
        ck_assert_int_eq(ops->source_fetch(a, tmp, N, &n, 200, err, sizeof err), CONNECTOR_OK);
        recs_free(tmp, n); /* a's new partitions again: not acknowledged */
        ck_assert_int_eq(ops->source_fetch(b, b_recs, N * 2, &b_n, 200, err, sizeof err),
                         CONNECTOR_OK);
    }
    ck_assert_msg(b_n > 0, "the second member never got a partition");
    ck_assert_int_eq(ack_all(a, a_recs, N, err, sizeof err), CONNECTOR_OK);
    group_committed(e.group, e.topic, committed, parts);
    int kept = 0;
    for (int p = 0; p < parts; p++) {
        ck_assert_msg(committed[p] < 0 || committed[p] == ends[p],
                      "partition %d committed at %" PRId64, p, committed[p]);
        kept += committed[p] >= 0;
    }
    ck_assert_msg(kept > 0 && kept < parts, "the first member kept %d of %d partitions", kept,
                  parts);
    for (size_t i = 0; i < b_n; i++)
        ck_assert_msg(committed[b_recs[i]->partition] < 0, "b read %s, committed by a",
                      b_recs[i]->id);
    ops->source_close(b); /* never acknowledged */
    ops->source_close(a);
    for (size_t i = 0; i < N; i++)
        expect += committed[msgs[i].partition] < 0;
    struct source *c = src_open(e.c, e.r);
    n = fetch_upto(c, tmp, expect, 60);
    ck_assert_uint_eq(n, expect);
    ck_assert_uint_eq(fetch_upto(c, tmp + n, 1, 1.5), 0);
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(committed[tmp[i]->partition] < 0, "%s came again though committed",
                      tmp[i]->id);
    recs_free(tmp, n);
    recs_free(a_recs, N);
    recs_free(b_recs, b_n);
    ops->source_close(c);
    free(msgs);
    env_free(&e);
}
END_TEST

/* Nothing listens: source_open says RETRY within connect_timeout_ms (+
 * slack), naming the brokers. The same rule on a live broker works. */
START_TEST(test_source_unreachable)
{
    char brokers[64], err[512];
    struct import_record *recs[1];
    struct source *s = NULL;
    struct src_env e;
    snprintf(brokers, sizeof brokers, "127.0.0.1:%d", closed_port());
    env_init(&e, "src-unreach", brokers, false);
    double t0 = now_s();
    ck_assert_int_eq(ops->source_open(e.c, e.r, &s, err, sizeof err), CONNECTOR_RETRY);
    ck_assert_ptr_null(s);
    ck_assert_msg(now_s() - t0 < 4.0, "open took %.1f s", now_s() - t0);
    ck_assert_msg(strstr(err, brokers) != NULL && strstr(err, "rule 'in-rule'"), "err: %s", err);
    ops->source_close(NULL);
    env_free(&e);

    env_init(&e, "src-recover", env_brokers(), false);
    struct src_msg *m = msgs_make(1, 1);
    produce_msgs(env_brokers(), e.topic, m, 1);
    s = src_open(e.c, e.r);
    ck_assert_uint_eq(fetch_upto(s, recs, 1, 60), 1);
    ck_assert_int_eq(ack_all(s, recs, 1, err, sizeof err), CONNECTOR_OK);
    recs_free(recs, 1);
    ops->source_close(s);
    free(m);
    env_free(&e);
}
END_TEST

/* A topic that does not exist (consumers do not create topics): fetch
 * says RETRY, naming it, instead of waiting silently. */
START_TEST(test_source_missing_topic)
{
    char err[512] = "";
    struct import_record *recs[1];
    size_t n = 0;
    int rc = CONNECTOR_OK;
    struct src_env e;
    env_init(&e, "src-missing", env_brokers(), false);
    struct source *s = src_open(e.c, e.r);
    for (double deadline = now_s() + 30; rc == CONNECTOR_OK && now_s() < deadline;)
        rc = ops->source_fetch(s, recs, 1, &n, 500, err, sizeof err);
    ck_assert_int_eq(rc, CONNECTOR_RETRY);
    ck_assert_uint_eq(n, 0);
    ck_assert_msg(strstr(err, e.topic) != NULL, "err: %s", err);
    printf("kafka source: missing topic -> RETRY: %s\n", err);
    ops->source_close(s);
    env_free(&e);
}
END_TEST

/* ---- source: throughput -------------------------------------------------------- */

/* A connector whose consumers are static members (instance_id), or
 * dynamic ones with id NULL. */
static struct connector *conn_make_member(const char *brokers, const char *id)
{
    char err[512] = "";
    struct connector *c = NULL;
    struct kvmap *s = settings_make(brokers, NULL, "2000");
    if (id != NULL)
        map_put(s, "instance_id", id, 4, 5);
    ck_assert_msg(ops->create("k", s, &c, err, sizeof err) == 0, "create: %s", err);
    kvmap_free(s);
    return c;
}

/* The process of a source that fetched dies (SIGKILL) without leaving its
 * group and without an ack. A new consumer in the same group gets the
 * partitions and the unacknowledged records again: once the session of
 * the dead one timed out (10 s by default; librdkafka's own default, 45 s,
 * would fail the bound), or at once with static membership (the same
 * instance_id takes over the assignment of its predecessor). */
static const char *const takeover_ids[] = {NULL, "mqb-test-static"};

START_TEST(test_source_takeover)
{
    enum { N = 10 };
    const char *brokers = env_brokers();
    char topic[96], group[112], idbuf[96], *id = NULL;
    struct import_record *recs[N];
    unique_name(topic, sizeof topic, _i ? "take-static" : "take-dynamic");
    snprintf(group, sizeof group, "%s-group", topic);
    if (takeover_ids[_i] != NULL) {
        snprintf(idbuf, sizeof idbuf, "%s-%ld", takeover_ids[_i], (long)getpid());
        id = idbuf;
    }
    const char *pairs[] = {"topic", topic, "group", group, NULL};
    struct src_msg *msgs = msgs_make(N, 2);
    produce_msgs(brokers, topic, msgs, N); /* before the fork: no librdkafka thread is copied */
    int fds[2];
    ck_assert_int_eq(pipe(fds), 0);
    pid_t child = fork();
    ck_assert_int_ge(child, 0);
    if (child == 0) { /* the first mqbridge: fetches, says so, waits to be killed */
        close(fds[0]);
        struct connector *c = conn_make_member(brokers, id);
        struct source *s = src_open(c, inbound_make(c, pairs));
        char ok = fetch_upto(s, recs, N, 60) == N ? 'y' : 'n';
        if (write(fds[1], &ok, 1) != 1)
            _exit(1);
        for (;;)
            pause();
    }
    close(fds[1]);
    struct pollfd pfd = {.fd = fds[0], .events = POLLIN};
    char ok = 'n';
    bool told = poll(&pfd, 1, 90000) == 1 && read(fds[0], &ok, 1) == 1;
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    close(fds[0]);
    ck_assert_msg(told && ok == 'y', "the first consumer did not fetch the %d records", N);

    double t0 = now_s();
    struct connector *c = conn_make_member(brokers, id);
    struct rule *r = inbound_make(c, pairs);
    struct source *s = src_open(c, r);
    size_t got = fetch_upto(s, recs, N, 60);
    double took = now_s() - t0;
    ck_assert_uint_eq(got, N);
    for (size_t i = 0; i < N; i++)
        msg_of(msgs, N, recs[i]);
    printf("kafka source: %s member killed -> its records go to the next one after %.1f s\n",
           id ? "static" : "dynamic", took);
    if (id != NULL)
        ck_assert_msg(took < 5.0, "static member: took over after %.1f s", took);
    else
        ck_assert_msg(took < 20.0, "dynamic member: took over after %.1f s", took);
    char err[512];
    ck_assert_int_eq(ack_all(s, recs, N, err, sizeof err), CONNECTOR_OK);
    recs_free(recs, N);
    ops->source_close(s);
    free(msgs);
    rule_free(c, r);
    ops->destroy(c);
}
END_TEST

START_TEST(test_source_throughput)
{
    enum { N = 100000, BATCH = 1000 };
    static struct import_record *recs[BATCH];
    char err[512];
    struct src_env e;
    env_init(&e, "src-perf", env_brokers(), false);
    struct src_msg *msgs = msgs_make(N, 100);
    for (size_t i = 0; i < N; i++) {
        memset(msgs[i].value, 'p', 64);
        msgs[i].len = 64;
    }
    produce_msgs(env_brokers(), e.topic, msgs, N);
    struct source *s = src_open(e.c, e.r);
    size_t got = fetch_upto(s, recs, 1, 60); /* the group join, apart */
    ck_assert_uint_eq(got, 1);
    ck_assert_int_eq(ack_all(s, recs, 1, err, sizeof err), CONNECTOR_OK);
    recs_free(recs, 1);
    double t0 = now_s(), deadline = t0 + 120;
    size_t batches = 0;
    while (got < N && now_s() < deadline) {
        size_t n = 0;
        ck_assert_int_eq(ops->source_fetch(s, recs, BATCH, &n, 500, err, sizeof err), CONNECTOR_OK);
        ck_assert_msg(ack_all(s, recs, n, err, sizeof err) == CONNECTOR_OK, "ack: %s", err);
        recs_free(recs, n);
        got += n;
        batches += n > 0;
    }
    double took = now_s() - t0;
    ck_assert_uint_eq(got, N);
    printf("kafka source: %d records of 64 bytes, fetch + ack (sync commit) in batches of up "
           "to %d (%zu batches): %.2f s, %.0f records/s\n",
           N - 1, BATCH, batches, took, (N - 1) / took);
    ops->source_close(s);
    free(msgs);
    env_free(&e);
}
END_TEST

/* ---- hang of a private broker -------------------------------------------- */

static char private_dir[256], private_brokers[128];
static pid_t private_pid;

/* The private broker's process (a new one after each start). */
static void private_pid_read(void)
{
    char pidfile[320];
    snprintf(pidfile, sizeof pidfile, "%s/kafka/kafka.pid", private_dir);
    FILE *f = fopen(pidfile, "r");
    long pid = 0;
    if (f != NULL && fscanf(f, "%ld", &pid) == 1)
        private_pid = (pid_t)pid;
    if (f != NULL)
        fclose(f);
}

/* tests/services/start kafka (from the repository root) in the parent
 * process, so that teardown runs even when the test fails. */
static void private_start(void)
{
    char line[512];
    FILE *p = popen("tests/services/start kafka", "r");
    if (p == NULL)
        return;
    while (fgets(line, sizeof line, p) != NULL) {
        line[strcspn(line, "\n")] = '\0';
        if (strncmp(line, "MQB_SERVICES_DIR=", 17) == 0)
            snprintf(private_dir, sizeof private_dir, "%.255s", line + 17);
        else if (strncmp(line, "MQB_KAFKA_BROKERS=", 18) == 0)
            snprintf(private_brokers, sizeof private_brokers, "%.127s", line + 18);
    }
    if (pclose(p) != 0)
        private_brokers[0] = '\0';
    private_pid_read();
}

static void private_stop(void)
{
    char cmd[400];
    if (private_pid > 0)
        kill(private_pid, SIGCONT);
    if (private_dir[0] != '\0') {
        snprintf(cmd, sizeof cmd, "tests/services/stop --quiet '%s'", private_dir);
        if (system(cmd) != 0)
            fprintf(stderr, "test_kafka: could not stop %s\n", private_dir);
    }
}

/* The broker freezes (SIGSTOP): export() says RETRY with acked 0 within
 * message.timeout.ms (+ the connector's margin); when it thaws, close +
 * open + export of the same records succeed and every record is in the
 * topic (at least once: frozen requests may still land). */
START_TEST(test_hang_and_recovery)
{
    char topic[128], err[512];
    size_t acked;
    ck_assert_msg(private_brokers[0] != '\0' && private_pid > 0,
                  "could not start a private Kafka with tests/services/start kafka "
                  "(run from the repository root)");
    unique_name(topic, sizeof topic, "hang");
    const char *opts[] = {"message.timeout.ms", "2000", NULL};
    struct connector *c = conn_make(private_brokers, opts, "2000");
    struct rule *r = rule_make(c, RULE_OUTBOUND, (const char *[]){"topic", topic, NULL});
    conn_open(c);
    struct batch b;
    batch_messages(&b, 20, r, 2, 1);
    /* A new cluster cannot hand out producer ids until its transaction
     * coordinator has loaded: retry (as the engine would) until it can. */
    double ready = now_s() + 60;
    int first;
    while ((first = export_batch(c, b.ptrs, 10, &acked, err, sizeof err)) == CONNECTOR_RETRY &&
           now_s() < ready) {
        ops->close(c);
        conn_open(c);
    }
    ck_assert_msg(first == CONNECTOR_OK, "first export: %s", err);
    ck_assert_uint_eq(acked, 10);

    ck_assert_int_eq(kill(private_pid, SIGSTOP), 0);
    double t0 = now_s();
    ck_assert_int_eq(export_batch(c, b.ptrs + 10, 10, &acked, err, sizeof err), CONNECTOR_RETRY);
    double took = now_s() - t0;
    ck_assert_uint_eq(acked, 0);
    ck_assert_msg(took < 2.0 + 5.0 + 1.0, "RETRY after %.1f s", took);
    printf("kafka: frozen broker -> RETRY after %.1f s: %s\n", took, err);
    ops->close(c);
    ck_assert_int_eq(ops->open(c, err, sizeof err), CONNECTOR_RETRY);

    ck_assert_int_eq(kill(private_pid, SIGCONT), 0);
    double deadline = now_s() + 30;
    int rc;
    while ((rc = ops->open(c, err, sizeof err)) != 0 && now_s() < deadline)
        ;
    ck_assert_msg(rc == 0, "open after thaw: %s", err);
    ck_assert_int_eq(export_batch(c, b.ptrs + 10, 10, &acked, err, sizeof err), CONNECTOR_OK);
    ck_assert_uint_eq(acked, 10);
    ops->close(c);
    rule_free(c, r);
    ops->destroy(c);
    batch_free(&b);
}
END_TEST

static void private_ctl(const char *verb)
{
    char cmd[400];
    snprintf(cmd, sizeof cmd, "tests/services/ctl '%s' %s kafka >/dev/null", private_dir, verb);
    ck_assert_msg(system(cmd) == 0, "%s failed", cmd);
    private_pid_read(); /* a start makes a new process */
}

/* The private broker stops while a fetched batch waits for its ack: the
 * ack says RETRY (nothing committed), a fetch says RETRY (all brokers
 * down), a reopen says RETRY. Once the broker is back, a reopen works and
 * the unacknowledged batch comes again, the acknowledged one does not. */
START_TEST(test_source_broker_restart)
{
    enum { N = 10 };
    struct import_record *recs[N], *again[N];
    char err[512];
    size_t n;
    ck_assert_msg(private_brokers[0] != '\0' && private_pid > 0,
                  "no private Kafka (see test_hang_and_recovery)");
    kill(private_pid, SIGCONT); /* in case the hang test failed while it was frozen */
    struct src_env e;
    env_init(&e, "src-restart", private_brokers, false);
    struct src_msg *first = msgs_make(N, 2), *second = msgs_make(N, 2);
    produce_msgs(private_brokers, e.topic, first, N);
    struct source *s = src_open(e.c, e.r);
    ck_assert_uint_eq(fetch_upto(s, recs, N, 60), N);
    ck_assert_int_eq(ack_all(s, recs, N, err, sizeof err), CONNECTOR_OK);
    recs_free(recs, N);
    produce_msgs(private_brokers, e.topic, second, N);
    ck_assert_uint_eq(fetch_upto(s, recs, N, 30), N);

    private_ctl("stop");
    double t0 = now_s();
    ck_assert_int_eq(ack_all(s, recs, N, err, sizeof err), CONNECTOR_RETRY);
    printf("kafka source: broker stopped -> ack RETRY after %.1f s: %s\n", now_s() - t0, err);
    int rc = CONNECTOR_OK;
    for (double deadline = now_s() + 30; rc == CONNECTOR_OK && now_s() < deadline;) {
        rc = ops->source_fetch(s, again, N, &n, 500, err, sizeof err);
        ck_assert_uint_eq(n, 0);
    }
    ck_assert_int_eq(rc, CONNECTOR_RETRY);
    printf("kafka source: broker stopped -> fetch RETRY: %s\n", err);
    t0 = now_s();
    ops->source_close(s);
    ck_assert_msg(now_s() - t0 < 8.0, "close took %.1f s", now_s() - t0);
    s = NULL;
    ck_assert_int_eq(ops->source_open(e.c, e.r, &s, err, sizeof err), CONNECTOR_RETRY);

    private_ctl("start");
    double deadline = now_s() + 60;
    while ((rc = ops->source_open(e.c, e.r, &s, err, sizeof err)) != 0 && now_s() < deadline)
        ;
    ck_assert_msg(rc == 0, "open after restart: %s", err);
    ck_assert_uint_eq(fetch_upto(s, again, N, 60), N);
    ck_assert_uint_eq(fetch_upto(s, again + N, 0, 0), 0);
    for (size_t i = 0; i < N; i++)
        msg_of(second, N, again[i]); /* the unacknowledged batch, nothing of the first */
    ck_assert_int_eq(ack_all(s, again, N, err, sizeof err), CONNECTOR_OK);
    recs_free(again, N);
    recs_free(recs, N);
    ops->source_close(s);
    free(first);
    free(second);
    env_free(&e);
}
END_TEST

/* Sends `sig` to the private broker as soon as its topic holds more than
 * `before` records, i.e. in the middle of the batch being exported. */
struct killer {
    const char *topic;
    int64_t before;
    int sig;
    rd_kafka_t *rk; /* for the watermark queries */
    int64_t seen;   /* records in the topic when it fired; -1: never */
};

static void *killer_run(void *arg)
{
    struct killer *k = arg;
    k->seen = -1;
    for (double deadline = now_s() + 60; now_s() < deadline;) {
        int64_t n = topic_count(k->rk, k->topic, NULL);
        if (n > k->before) {
            kill(private_pid, k->sig);
            k->seen = n;
            break;
        }
    }
    return NULL;
}

/* Marks seen[id - base] for every record of topic whose msgid header is
 * in [base, base + n); returns the number of records read. */
static int64_t topic_msgids(const char *brokers, const char *topic, bool *seen, uint64_t base,
                            size_t n)
{
    rd_kafka_t *rk = consumer_new(brokers);
    int64_t total = consumer_assign(rk, topic), got = 0;
    for (double deadline = now_s() + 60; got < total && now_s() < deadline;) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 200);
        if (m == NULL)
            continue;
        ck_assert_msg(m->err == RD_KAFKA_RESP_ERR_NO_ERROR, "consume: %s",
                      rd_kafka_message_errstr(m));
        rd_kafka_headers_t *h = NULL;
        char id[24];
        rd_kafka_message_headers(m, &h);
        header_copy(h, "msgid", id, sizeof id);
        uint64_t v = strtoull(id, NULL, 16);
        if (v >= base && v - base < n)
            seen[v - base] = true;
        got++;
        rd_kafka_message_destroy(m);
    }
    ck_assert_msg(got == total, "read %" PRId64 " of %" PRId64 " records of %s", got, total, topic);
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    return got;
}

/* The broker dies (SIGKILL, then restarted) or freezes (SIGSTOP, then
 * SIGCONT) while a batch of 40,000 is on its way. export() says RETRY
 * with acked < n, and every acknowledged record is in the topic once the
 * broker is back (the acked prefix is exact: nothing acknowledged is
 * missing). The values are not copied by the producer (half of them are
 * even sent from the records' memory, being larger than
 * message.copy.max.bytes): they are freed as soon as export() returns,
 * then the broker comes back and the producer goes on (reconnects, sends
 * the rest of a request cut short by the freeze, takes new records)
 * without touching them, which ASan would report. */
static const int broker_fates[] = {SIGKILL, SIGSTOP};

START_TEST(test_export_broker_killed)
{
    enum { WARM = 10, N = 40000 };
    const int fate = broker_fates[_i];
    char topic[128], err[512];
    size_t acked;
    ck_assert_msg(private_brokers[0] != '\0' && private_pid > 0,
                  "no private Kafka (see test_hang_and_recovery)");
    private_pid_read();         /* an earlier test (in its own process) may have restarted it */
    kill(private_pid, SIGCONT); /* in case an earlier test failed while it was frozen */
    unique_name(topic, sizeof topic, "killed");
    const char *opts[] = {"message.timeout.ms", "3000", "message.copy.max.bytes", "500", NULL};
    struct connector *c = conn_make(private_brokers, opts, "2000");
    struct rule *r = rule_make(c, RULE_OUTBOUND, (const char *[]){"topic", topic, NULL});
    conn_open(c);
    struct batch b;
    batch_messages(&b, WARM + N + 5, r, 4, 1); /* msg ids 1.. */
    double ready = now_s() + 60;
    int rc;
    while ((rc = export_batch(c, b.ptrs, WARM, &acked, err, sizeof err)) == CONNECTOR_RETRY &&
           now_s() < ready) {
        ops->close(c);
        conn_open(c);
    }
    ck_assert_msg(rc == CONNECTOR_OK, "warm-up export: %s", err);
    uint8_t **values = calloc(N + 5, sizeof *values);
    ck_assert_ptr_nonnull(values);
    for (size_t i = 0; i < N + 5; i++) {
        uint32_t len = i % 2 ? 300 : 1000; /* copied / sent in place */
        ck_assert_ptr_nonnull(values[i] = malloc(len));
        memset(values[i], 'a' + (int)(i % 26), len);
        b.recs[WARM + i].payload = values[i];
        b.recs[WARM + i].payload_len = len;
    }

    struct killer k = {
        .topic = topic, .before = WARM, .sig = fate, .rk = consumer_new(private_brokers)};
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, killer_run, &k), 0);
    double t0 = now_s();
    rc = export_batch(c, b.ptrs + WARM, N, &acked, err, sizeof err);
    double took = now_s() - t0;
    size_t prefix = acked;
    pthread_join(th, NULL);
    rd_kafka_destroy(k.rk);
    for (size_t i = 0; i < N; i++) { /* the engine frees the records after export() */
        free(values[i]);
        values[i] = NULL;
    }
    ck_assert_msg(k.seen >= 0, "no record of the batch reached the topic within 60 s");
    ck_assert_msg(rc == CONNECTOR_RETRY,
                  "export: rc %d, acked %zu of %d: %s (the broker was killed after %" PRId64
                  " records were in)",
                  rc, prefix, N, err, k.seen);
    ck_assert_uint_lt(prefix, N);
    printf("kafka: broker %s with %" PRId64 " records in the topic -> RETRY after %.1f s, "
           "acked %zu of %d: %s\n",
           fate == SIGKILL ? "killed" : "frozen", k.seen, took, prefix, N, err);

    /* Back: the same producer reconnects (or, if it had to be recreated,
     * a new one) and takes new records. */
    if (fate == SIGKILL)
        private_ctl("start");
    else
        ck_assert_int_eq(kill(private_pid, SIGCONT), 0);
    double deadline = now_s() + 90;
    while ((rc = export_batch(c, b.ptrs + WARM + N, 5, &acked, err, sizeof err)) != CONNECTOR_OK &&
           now_s() < deadline)
        if (strstr(err, "not connected") != NULL || strstr(err, "producer failed") != NULL)
            ops->open(c, err, sizeof err);
    ck_assert_msg(rc == CONNECTOR_OK, "export after the restart: %s", err);
    ck_assert_uint_eq(acked, 5);

    /* Everything acknowledged is there: the warm-up, the batch's acked
     * prefix, the last 5. Records after the prefix may be there too (at
     * least once: they were in flight when the broker died). */
    bool *seen = calloc(WARM + N + 5, sizeof *seen);
    ck_assert_ptr_nonnull(seen);
    int64_t total = topic_msgids(private_brokers, topic, seen, 1, WARM + N + 5);
    size_t beyond = 0;
    for (size_t i = 0; i < WARM + N + 5; i++) {
        bool acknowledged = i < WARM + prefix || i >= WARM + N;
        ck_assert_msg(!acknowledged || seen[i],
                      "record %zu was acknowledged but is not in the topic", i);
        beyond += !acknowledged && seen[i];
    }
    printf("kafka: broker back, the topic holds %" PRId64 " records; of the batch: the acked "
           "%zu and %zu after them\n",
           total, prefix, beyond);
    free(seen);
    for (size_t i = N; i < N + 5; i++)
        free(values[i]);
    free(values);
    ops->close(c);
    rule_free(c, r);
    ops->destroy(c);
    batch_free(&b);
}
END_TEST

/* ---- throughput ------------------------------------------------------------ */

START_TEST(test_throughput)
{
    enum { N = 100000 };
    char topic[128], err[512];
    size_t acked;
    unique_name(topic, sizeof topic, "perf");
    struct connector *c = conn_make(env_brokers(), NULL, NULL);
    struct rule *r = rule_make(c, RULE_OUTBOUND, (const char *[]){"topic", topic, NULL});
    conn_open(c);
    struct batch b;
    batch_messages(&b, N + 1, r, 100, 1);
    static uint8_t payload[64];
    memset(payload, 'p', sizeof payload);
    for (size_t i = 0; i <= N; i++) {
        b.recs[i].payload = payload;
        b.recs[i].payload_len = sizeof payload;
    }
    /* record 0 alone first: it pays for creating the topic and getting a
     * producer id; reported apart from the steady state */
    double t0 = now_s();
    ck_assert_int_eq(export_batch(c, b.ptrs, 1, &acked, err, sizeof err), CONNECTOR_OK);
    printf("kafka: first record (new topic, producer id) %.2f s\n", now_s() - t0);
    static const size_t batches[] = {1000, 10000}; /* the engine's default, and more */
    for (size_t k = 0; k < 2; k++) {
        t0 = now_s();
        for (size_t i = 1; i <= N; i += batches[k]) {
            ck_assert_int_eq(export_batch(c, b.ptrs + i, batches[k], &acked, err, sizeof err),
                             CONNECTOR_OK);
            ck_assert_uint_eq(acked, batches[k]);
        }
        double took = now_s() - t0;
        printf("kafka: %d records of 64 bytes in batches of %zu: %.2f s, %.0f records/s\n", N,
               batches[k], took, N / took);
    }
    batch_free(&b);
    ops->close(c);
    rule_free(c, r);
    ops->destroy(c);
}
END_TEST

static Suite *kafka_suite(void)
{
    Suite *s = suite_create("kafka");
    TCase *tc = tcase_create("config");
    tcase_add_loop_test(tc, test_settings_validation, 0,
                        sizeof settings_cases / sizeof settings_cases[0]);
    tcase_add_loop_test(tc, test_rule_validation, 0, sizeof rule_cases / sizeof rule_cases[0]);
    tcase_add_loop_test(tc, test_inbound_validation, 0,
                        sizeof inbound_cases / sizeof inbound_cases[0]);
    suite_add_tcase(s, tc);
    tc = tcase_create("broker");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_messages_read_back);
    tcase_add_test(tc, test_status_events);
    tcase_add_test(tc, test_export_targets);
    tcase_add_test(tc, test_reject_too_large);
    tcase_add_test(tc, test_retry_unreachable);
    tcase_add_test(tc, test_throughput);
    suite_add_tcase(s, tc);
    tc = tcase_create("hang");
    tcase_set_timeout(tc, 180);
    tcase_add_unchecked_fixture(tc, private_start, private_stop);
    tcase_add_test(tc, test_hang_and_recovery);
    tcase_add_test(tc, test_source_broker_restart);
    tcase_add_loop_test(tc, test_export_broker_killed, 0,
                        sizeof broker_fates / sizeof broker_fates[0]);
    suite_add_tcase(s, tc);
    tc = tcase_create("source");
    tcase_set_timeout(tc, 180);
    tcase_add_test(tc, test_source_fetch_exact);
    tcase_add_test(tc, test_source_header_nul);
    tcase_add_test(tc, test_source_redelivery);
    tcase_add_test(tc, test_source_dead_letter);
    tcase_add_test(tc, test_source_idle);
    tcase_add_test(tc, test_source_lag);
    tcase_add_loop_test(tc, test_source_rebalance, 0, sizeof strategies / sizeof strategies[0]);
    tcase_add_test(tc, test_source_unreachable);
    tcase_add_test(tc, test_source_missing_topic);
    tcase_add_loop_test(tc, test_source_takeover, 0, sizeof takeover_ids / sizeof takeover_ids[0]);
    tcase_add_test(tc, test_source_throughput);
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(kafka_suite)
