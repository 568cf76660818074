/* The Kafka connector against a real broker (MQB_KAFKA_BROKERS, from
 * tests/services/start): settings and rule validation, messages and status
 * events read back with a librdkafka consumer (exact content, headers,
 * per-client order), REJECT of an oversized record, RETRY against a closed
 * port and during a hang of a private broker (SIGSTOP), recovery after it,
 * and a throughput measurement (printed, not asserted).
 *
 * Run: tests/services/run kafka -- build/test_kafka (from the repository
 * root: the hang test starts its own broker with tests/services/start). */
#include "../../connectors/connector.h"

#include <arpa/inet.h>
#include <inttypes.h>
#include <librdkafka/rdkafka.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
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
    size_t value_len;
    int32_t partition;
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
    memcpy(g->key, m->key, m->key_len);
    memcpy(g->value, m->payload, m->len);
    g->value_len = m->len;
    g->partition = m->partition;
    rd_kafka_message_headers(m, &h);
    header_copy(h, "msgid", g->msgid, sizeof g->msgid);
    header_copy(h, "mqttTopic", g->mtopic, sizeof g->mtopic);
    header_copy(h, "clientId", g->cid, sizeof g->cid);
    header_copy(h, "qos", g->qos, sizeof g->qos);
    header_copy(h, "timestamp", g->ts, sizeof g->ts);
    header_copy(h, "tag", g->tag, sizeof g->tag);
    header_copy(h, "eventType", g->event, sizeof g->event);
    header_copy(h, "seq", g->seq, sizeof g->seq);
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

/* Assigns every partition of topic from the beginning; returns how many
 * messages the topic holds (sum of the high watermarks). */
static int64_t consumer_assign(rd_kafka_t *rk, const char *topic)
{
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_topic_t *t = rd_kafka_topic_new(rk, topic, NULL);
    ck_assert_int_eq(rd_kafka_metadata(rk, 0, t, &md, 10000), RD_KAFKA_RESP_ERR_NO_ERROR);
    ck_assert_int_eq(md->topic_cnt, 1);
    int parts = md->topics[0].partition_cnt;
    ck_assert_int_gt(parts, 0);
    rd_kafka_metadata_destroy(md);
    rd_kafka_topic_destroy(t);
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(parts);
    int64_t total = 0;
    for (int p = 0; p < parts; p++) {
        int64_t lo = 0, hi = 0;
        ck_assert_int_eq(rd_kafka_query_watermark_offsets(rk, topic, p, &lo, &hi, 10000),
                         RD_KAFKA_RESP_ERR_NO_ERROR);
        total += hi - lo;
        rd_kafka_topic_partition_list_add(l, topic, p)->offset = RD_KAFKA_OFFSET_BEGINNING;
    }
    ck_assert_int_eq(rd_kafka_assign(rk, l), RD_KAFKA_RESP_ERR_NO_ERROR);
    rd_kafka_topic_partition_list_destroy(l);
    return total;
}

/* Reads the whole topic (in partition order per partition); *n = count. */
static struct got *topic_read(const char *topic, size_t *n)
{
    rd_kafka_t *rk = consumer_new(env_brokers());
    int64_t total = consumer_assign(rk, topic);
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
     "conn.yaml:12:7: rule 'out-rule': key: "},
    {"illegal literal topic",
     RULE_OUTBOUND,
     {"topic", "bad topic!", NULL},
     "conn.yaml:11:7: rule 'out-rule': topic 'bad topic!' is not a valid Kafka topic name"},
    {"inbound", RULE_INBOUND, {"topic", "t", NULL}, "not supported"},
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

/* ---- hang of a private broker -------------------------------------------- */

static char private_dir[256], private_brokers[128];
static pid_t private_pid;

/* tests/services/start kafka (from the repository root) in the parent
 * process, so that teardown runs even when the test fails. */
static void private_start(void)
{
    char line[512], pidfile[320];
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
    snprintf(pidfile, sizeof pidfile, "%s/kafka/kafka.pid", private_dir);
    FILE *f = fopen(pidfile, "r");
    long pid = 0;
    if (f != NULL && fscanf(f, "%ld", &pid) == 1)
        private_pid = (pid_t)pid;
    if (f != NULL)
        fclose(f);
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
    suite_add_tcase(s, tc);
    tc = tcase_create("broker");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_messages_read_back);
    tcase_add_test(tc, test_status_events);
    tcase_add_test(tc, test_reject_too_large);
    tcase_add_test(tc, test_retry_unreachable);
    tcase_add_test(tc, test_throughput);
    suite_add_tcase(s, tc);
    tc = tcase_create("hang");
    tcase_set_timeout(tc, 180);
    tcase_add_unchecked_fixture(tc, private_start, private_stop);
    tcase_add_test(tc, test_hang_and_recovery);
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(kafka_suite)
