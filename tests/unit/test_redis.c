/* The Redis connector against real servers: the shared one of
 * tests/services/start (MQB_REDIS_URL) and a private redis-server the
 * test starts, freezes, kills and restarts on the same port. Covers
 * settings and rule validation, stream/publish/lpush exports read back
 * with exact content and per-client order, status events with the
 * state-hash rule (late and stale events included), REJECT on WRONGTYPE
 * without duplicates on the re-offer (also in the second of two chunks in
 * flight), RETRY when the server is unreachable, frozen or gone, an exact
 * acked prefix when the connection is killed in the middle of a batch of
 * many chunks, recovery, NOSCRIPT (also over several chunks), AUTH, unix
 * sockets, and a throughput measurement (printed, not asserted).
 * The source (inbound rules): entry fields to records exactly, ack then
 * reopen (nothing again), fetch without ack then reopen (redelivered, page
 * by page, before new entries), XAUTOCLAIM of another consumer's old
 * pending entries, dead-letter copies (skipped, undecodable, deleted while
 * pending, broken dead-letter key), lag, idle timeout, Pub/Sub (arrives
 * while subscribed, lost while not), RETRY and recovery, throughput.
 *
 * Run: tests/services/run redis -- build/test_redis */
#include "../../connectors/connector.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check_main.h"

extern const struct connector_ops redis_connector;
static const struct connector_ops *ops = &redis_connector;

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

static void map_put(struct kvmap *m, const char *key, const char *value, int line, int col)
{
    m->items = realloc(m->items, (m->count + 1) * sizeof *m->items);
    ck_assert_ptr_nonnull(m->items);
    m->items[m->count++] = (struct kv){
        .key = strdup(key), .value = strdup(value), .file = file_name, .line = line, .col = col};
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* A short pause between polls of a condition (never a fixed wait). */
static void poll_pause(void)
{
    struct timespec ts = {0, 10 * 1000000};
    nanosleep(&ts, NULL);
}

static const char *env_url(void)
{
    const char *u = getenv("MQB_REDIS_URL");
    ck_assert_msg(
        u != NULL && *u != '\0',
        "MQB_REDIS_URL is not set: run this test under "
        "`tests/services/run redis -- <test>` (or eval \"$(tests/services/start redis)\")");
    return u;
}

static void unique_name(char *out, size_t len, const char *what)
{
    static unsigned counter;
    snprintf(out, len, "mqb-test:%s:%ld:%u:%ld", what, (long)getpid(), ++counter, (long)time(NULL));
}

static int free_port(void)
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

/* ---- helpers: a client of our own to look at the server ----------------- */

static redisContext *client_at(const char *host, int port, const char *password)
{
    struct timeval tv = {5, 0};
    redisContext *rc = redisConnectWithTimeout(host, port, tv);
    ck_assert_msg(rc != NULL && rc->err == 0, "connect %s:%d: %s", host, port,
                  rc ? rc->errstr : "?");
    redisSetTimeout(rc, tv);
    if (password != NULL) {
        redisReply *r = redisCommand(rc, "AUTH %s", password);
        ck_assert(r != NULL && r->type == REDIS_REPLY_STATUS);
        freeReplyObject(r);
    }
    return rc;
}

static redisContext *client_shared(void)
{
    char host[64];
    int port;
    ck_assert_msg(sscanf(env_url(), "redis://%63[^:]:%d", host, &port) == 2, "url %s", env_url());
    return client_at(host, port, NULL);
}

/* A command from argv (NULL-terminated); asserts a non-error reply. */
static redisReply *client_cmd(redisContext *rc, const char *const *argv)
{
    int argc = 0;
    while (argv[argc] != NULL)
        argc++;
    redisReply *r = redisCommandArgv(rc, argc, (const char **)argv, NULL);
    ck_assert_msg(r != NULL, "%s: %s", argv[0], rc->errstr);
    ck_assert_msg(r->type != REDIS_REPLY_ERROR, "%s: %s", argv[0], r->str);
    return r;
}

static long long client_int(redisContext *rc, const char *const *argv)
{
    redisReply *r = client_cmd(rc, argv);
    ck_assert_int_eq(r->type, REDIS_REPLY_INTEGER);
    long long v = r->integer;
    freeReplyObject(r);
    return v;
}

/* The value of field in a flat [field, value, ...] array, or NULL. */
static const redisReply *field_of(const redisReply *arr, const char *field)
{
    for (size_t i = 0; i + 1 < arr->elements; i += 2)
        if (strcmp(arr->element[i]->str, field) == 0)
            return arr->element[i + 1];
    return NULL;
}

static void assert_field(const redisReply *arr, const char *field, const void *want, size_t len)
{
    const redisReply *v = field_of(arr, field);
    ck_assert_msg(v != NULL, "field %s missing", field);
    ck_assert_msg(v->len == len && memcmp(v->str, want, len) == 0, "field %s: '%.*s'", field,
                  (int)v->len, v->str);
}

static void assert_field_str(const redisReply *arr, const char *field, const char *want)
{
    assert_field(arr, field, want, strlen(want));
}

/* ---- helpers: connector, rules, records --------------------------------- */

static struct connector *conn_make(const char *url, const char *connect_ms, const char *cmd_ms)
{
    char err[512] = "";
    struct connector *c = NULL;
    struct kvmap *s = map_new(2, 3);
    map_put(s, "url", url, 3, 5);
    if (connect_ms != NULL)
        map_put(s, "connect_timeout_ms", connect_ms, 4, 5);
    if (cmd_ms != NULL)
        map_put(s, "command_timeout_ms", cmd_ms, 5, 5);
    ck_assert_msg(ops->create("r", s, &c, err, sizeof err) == 0, "create: %s", err);
    kvmap_free(s);
    return c;
}

static void conn_open(struct connector *c)
{
    char err[512] = "";
    ck_assert_msg(ops->open(c, err, sizeof err) == 0, "open: %s", err);
}

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
    free(r->resource);
    free(r->name);
    free(r);
}

/* The end of a test: the connection closed, the rule and the connector
 * freed. */
static void conn_done(struct connector *c, struct rule *r)
{
    ops->close(c);
    rule_free(c, r);
    ops->destroy(c);
}

/* Messages from `clients` clients, interleaved; record i: msg_id base+i,
 * seqno base+i, payload "c<k>#<j>" + a NUL byte + "|bin" (binary safe). */
struct batch {
    size_t n;
    struct export_record *recs;
    struct export_record **ptrs;
    char (*payload)[64];
    char (*client)[32];
    char (*topic)[32];
};

static void batch_messages(struct batch *b, size_t n, const struct rule *r, int clients,
                           uint64_t base)
{
    b->n = n;
    b->recs = calloc(n, sizeof *b->recs);
    b->ptrs = calloc(n, sizeof *b->ptrs);
    b->payload = calloc(n, sizeof *b->payload);
    b->client = calloc(n, sizeof *b->client);
    b->topic = calloc(n, sizeof *b->topic);
    ck_assert(b->recs && b->ptrs && b->payload && b->client && b->topic);
    for (size_t i = 0; i < n; i++) {
        int k = (int)(i % (size_t)clients);
        snprintf(b->client[i], sizeof b->client[i], "GID_t@@@dev%d", k);
        snprintf(b->topic[i], sizeof b->topic[i], "Sensor/%zu", i);
        int len = snprintf(b->payload[i], sizeof b->payload[i], "c%d#%zu", k, i / (size_t)clients);
        memcpy(b->payload[i] + len + 1, "|bin", 4);
        b->recs[i] = (struct export_record){.seqno = base + i,
                                            .kind = RECORD_MESSAGE,
                                            .rule = r,
                                            .msg_id = base + i,
                                            .time_ms = 1700000000000 + (int64_t)i,
                                            .qos = (uint8_t)(i % 3),
                                            .client_id = b->client[i],
                                            .topic = b->topic[i],
                                            .payload = (const uint8_t *)b->payload[i],
                                            .payload_len = (uint32_t)len + 5};
        b->ptrs[i] = &b->recs[i];
    }
}

static void batch_free(struct batch *b)
{
    free(b->recs);
    free(b->ptrs);
    free(b->payload);
    free(b->client);
    free(b->topic);
}

static int export_batch(struct connector *c, struct export_record *const *recs, size_t n,
                        size_t *acked, char *err, size_t errlen)
{
    err[0] = '\0';
    *acked = (size_t)-1;
    return ops->export(c, recs, n, acked, err, errlen);
}

/* ---- settings and rule validation --------------------------------------- */

struct settings_case {
    const char *desc;
    const char *pairs[6];
    const char *want; /* substring of the error; NULL = accepted */
};

static const struct settings_case settings_cases[] = {
    {"tcp url", {"url", "redis://127.0.0.1:6379/2", NULL}, NULL},
    {"password, ipv6, timeouts",
     {"url", "redis://:p%40ss@[::1]:7000", "command_timeout_ms", "100", NULL},
     NULL},
    {"user and password", {"url", "redis://default:pw@localhost", NULL}, NULL},
    {"unix socket", {"url", "unix:///run/redis.sock?db=3&password=p%26w", NULL}, NULL},
    {"unix socket, bad parameter",
     {"url", "unix:///run/redis.sock?tls=1", NULL},
     "url: unknown query parameter"},
    {"unknown key",
     {"url", "redis://h", "ulr", "x"},
     "conn.yaml:4:5: connector 'r': unknown key 'ulr'"},
    {"missing url",
     {"connect_timeout_ms", "5", NULL},
     "conn.yaml:2:3: connector 'r': missing required key 'url'"},
    {"tls", {"url", "rediss://h:1", NULL}, "conn.yaml:3:5: connector 'r': url: TLS"},
    {"bad scheme", {"url", "http://h", NULL}, "url: expected redis://"},
    {"bad port", {"url", "redis://h:99999", NULL}, "url: bad port"},
    {"no host", {"url", "redis://:1", NULL}, "url: missing host"},
    {"bad db", {"url", "redis://h:1/x", NULL}, "url: bad database number"},
    {"credentials without colon, password not echoed",
     {"url", "redis://s3cret@h:1", NULL},
     "url: credentials must be"},
    {"bad escape in password", {"url", "redis://:s3%zzcret@h", NULL}, "url: bad %-escape"},
    {"bad timeout",
     {"url", "redis://h", "connect_timeout_ms", "0"},
     "conn.yaml:4:5: connect_timeout_ms: expected 1..600000"},
};

START_TEST(test_settings_validation)
{
    const struct settings_case *tc = &settings_cases[_i];
    char err[512] = "";
    struct connector *c = NULL;
    struct kvmap *s = map_new(2, 3);
    for (int i = 0; i < 6 && tc->pairs[i] != NULL; i += 2)
        map_put(s, tc->pairs[i], tc->pairs[i + 1], 3 + i / 2, 5);
    int rc = ops->create("r", s, &c, err, sizeof err);
    if (tc->want == NULL) {
        ck_assert_msg(rc == 0, "%s: %s", tc->desc, err);
        ck_assert_ptr_nonnull(c);
    } else {
        ck_assert_msg(rc != 0, "%s: accepted", tc->desc);
        ck_assert_ptr_null(c);
        ck_assert_msg(strstr(err, tc->want) != NULL, "%s: got '%s', want '%s'", tc->desc, err,
                      tc->want);
        ck_assert_msg(strstr(err, "s3") == NULL, "%s: password in '%s'", tc->desc, err);
    }
    ops->destroy(c);
    kvmap_free(s);
}
END_TEST

struct rule_case {
    const char *desc;
    enum rule_type type;
    const char *pairs[8];
    const char *want;
};

static const struct rule_case rule_cases[] = {
    {"stream", RULE_OUTBOUND, {"key", "mqtt:${topic}", "maxlen", "1000", NULL}, NULL},
    {"publish", RULE_OUTBOUND, {"mode", "publish", "key", "chan", NULL}, NULL},
    {"lpush", RULE_OUTBOUND, {"mode", "lpush", "key", "list:${device}", NULL}, NULL},
    {"status", RULE_STATUS, {"stream", "events", "hash_prefix", "p:", NULL}, NULL},
    {"bad mode",
     RULE_OUTBOUND,
     {"mode", "fifo", "key", "k", NULL},
     "conn.yaml:11:7: rule 'out-rule': mode 'fifo': expected stream, publish or lpush"},
    {"maxlen with publish",
     RULE_OUTBOUND,
     {"mode", "publish", "key", "k", "maxlen", "5"},
     "conn.yaml:13:7: rule 'out-rule': maxlen applies to mode stream only"},
    {"bad maxlen",
     RULE_OUTBOUND,
     {"key", "k", "maxlen", "-1", NULL},
     "conn.yaml:12:7: rule 'out-rule': maxlen: expected a positive integer"},
    {"missing key",
     RULE_OUTBOUND,
     {"mode", "stream", NULL},
     "conn.yaml:10:5: rule 'out-rule': missing required key 'key'"},
    {"unknown key",
     RULE_OUTBOUND,
     {"key", "k", "topic", "t", NULL},
     "conn.yaml:12:7: rule 'out-rule': unknown key 'topic'"},
    {"bad template",
     RULE_OUTBOUND,
     {"key", "mqtt:${clientId}", NULL},
     "conn.yaml:11:7: rule 'out-rule': key 'key': unknown field"},
    {"status without stream",
     RULE_STATUS,
     {"hash_prefix", "p:", NULL},
     "missing required key 'stream'"},
    {"status has no mode",
     RULE_STATUS,
     {"stream", "s", "mode", "publish", NULL},
     "unknown key 'mode'"},
    {"outbound has no stream source keys",
     RULE_OUTBOUND,
     {"key", "k", "group", "g", NULL},
     "conn.yaml:12:7: rule 'out-rule': unknown key 'group'"},
};

static const char *rule_name(enum rule_type type)
{
    return type == RULE_STATUS ? "status-rule" : "out-rule";
}

START_TEST(test_rule_validation)
{
    const struct rule_case *tc = &rule_cases[_i];
    char err[512] = "";
    struct connector *c = conn_make("redis://127.0.0.1:9", NULL, NULL);
    char name[16];
    snprintf(name, sizeof name, "%s", rule_name(tc->type));
    struct rule r = {.name = name, .type = tc->type, .options = map_new(10, 5)};
    for (int i = 0; i < 8 && tc->pairs[i] != NULL; i += 2)
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

/* Inbound rules: the source's keys (by mode) and the target besides
 * `topic` (nothing). */
struct inbound_case {
    const char *desc;
    const char *pairs[12];
    const char *target[4];
    const char *want; /* substring of the error; NULL = accepted */
};

static const struct inbound_case inbound_cases[] = {
    {"stream, all keys",
     {"mode", "stream", "stream", "mqtt:commands", "group", "mqbridge", "consumer", "mqbridge-1",
      "dead_letter_stream", "mqtt:commands:dead", "claim_idle_ms", "30000"},
     {NULL},
     NULL},
    {"stream, defaults", {"stream", "s", NULL}, {NULL}, NULL},
    {"stream, claiming off", {"stream", "s", "claim_idle_ms", "0", NULL}, {NULL}, NULL},
    {"pubsub", {"mode", "pubsub", "channel", "mqtt:commands", NULL}, {NULL}, NULL},
    {"bad mode",
     {"mode", "list", "stream", "s", NULL},
     {NULL},
     "conn.yaml:11:7: rule 'in-rule': mode 'list': expected stream or pubsub"},
    {"stream without stream",
     {"group", "g", NULL},
     {NULL},
     "conn.yaml:10:5: rule 'in-rule' (mode stream): missing required key 'stream'"},
    {"pubsub without channel",
     {"mode", "pubsub", NULL},
     {NULL},
     "conn.yaml:10:5: rule 'in-rule' (mode pubsub): missing required key 'channel'"},
    {"pubsub has no group",
     {"mode", "pubsub", "channel", "c", "group", "g", NULL},
     {NULL},
     "conn.yaml:13:7: rule 'in-rule' (mode pubsub): unknown key 'group'"},
    {"stream has no channel",
     {"stream", "s", "channel", "c", NULL},
     {NULL},
     "conn.yaml:12:7: rule 'in-rule' (mode stream): unknown key 'channel'"},
    {"no outbound keys",
     {"stream", "s", "key", "k", NULL},
     {NULL},
     "conn.yaml:12:7: rule 'in-rule' (mode stream): unknown key 'key'"},
    {"empty group",
     {"stream", "s", "group", "", NULL},
     {NULL},
     "conn.yaml:12:7: rule 'in-rule': group: must not be empty"},
    {"bad claim_idle_ms",
     {"stream", "s", "claim_idle_ms", "30s", NULL},
     {NULL},
     "conn.yaml:12:7: rule 'in-rule': claim_idle_ms: expected 0..2147483647"},
    {"dead letter into the stream itself",
     {"stream", "s", "dead_letter_stream", "s", NULL},
     {NULL},
     "conn.yaml:12:7: rule 'in-rule': dead_letter_stream: must be another stream than 's'"},
    {"target keys besides topic",
     {"stream", "s", NULL},
     {"qos", "1", NULL},
     "conn.yaml:21:9: rule 'in-rule': target: unknown key 'qos'"},
};

START_TEST(test_inbound_validation)
{
    const struct inbound_case *tc = &inbound_cases[_i];
    char err[512] = "", name[] = "in-rule";
    struct connector *c = conn_make("redis://127.0.0.1:9", NULL, NULL);
    struct rule r = {.name = name,
                     .type = RULE_INBOUND,
                     .options = map_new(10, 5),
                     .target_options = map_new(20, 7)};
    for (int i = 0; i < 12 && tc->pairs[i] != NULL; i += 2)
        map_put(r.options, tc->pairs[i], tc->pairs[i + 1], 11 + i / 2, 7);
    for (int i = 0; i < 4 && tc->target[i] != NULL; i += 2)
        map_put(r.target_options, tc->target[i], tc->target[i + 1], 21 + i / 2, 9);
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

/* ---- messages ------------------------------------------------------------ */

/* 3 clients x 20 messages, one stream per client: each stream holds that
 * client's messages in order, every field exact, payload binary-safe. */
START_TEST(test_stream_read_back)
{
    char prefix[128], key[160], err[512];
    size_t acked;
    unique_name(prefix, sizeof prefix, "stream");
    snprintf(key, sizeof key, "%s:${device}", prefix);
    struct connector *c = conn_make(env_url(), NULL, NULL);
    struct rule *r = rule_make(c, RULE_OUTBOUND, (const char *[]){"key", key, NULL});
    conn_open(c);
    struct batch b;
    batch_messages(&b, 60, r, 3, 500);
    ck_assert_int_eq(export_batch(c, b.ptrs, 25, &acked, err, sizeof err), CONNECTOR_OK);
    ck_assert_uint_eq(acked, 25);
    ck_assert_int_eq(export_batch(c, b.ptrs + 25, 35, &acked, err, sizeof err), CONNECTOR_OK);
    ck_assert_uint_eq(acked, 35);
    redisContext *rc = client_shared();
    for (int k = 0; k < 3; k++) {
        char stream[200];
        snprintf(stream, sizeof stream, "%s:dev%d", prefix, k);
        redisReply *x = client_cmd(rc, (const char *[]){"XRANGE", stream, "-", "+", NULL});
        ck_assert_uint_eq(x->elements, 20);
        for (size_t j = 0; j < x->elements; j++) {
            const struct export_record *want = &b.recs[j * 3 + (size_t)k]; /* client order */
            const redisReply *f = x->element[j]->element[1];
            char msgid[17], qos[4], ts[24];
            snprintf(msgid, sizeof msgid, "%016" PRIx64, want->msg_id);
            snprintf(qos, sizeof qos, "%u", want->qos);
            snprintf(ts, sizeof ts, "%" PRId64, want->time_ms);
            ck_assert_uint_eq(f->elements, 12);
            assert_field_str(f, "msgid", msgid);
            assert_field_str(f, "topic", want->topic);
            assert_field_str(f, "clientid", want->client_id);
            assert_field_str(f, "qos", qos);
            assert_field_str(f, "timestamp", ts);
            assert_field(f, "payload", want->payload, want->payload_len);
        }
        freeReplyObject(x);
    }
    redisFree(rc);
    batch_free(&b);
    conn_done(c, r);
}
END_TEST

START_TEST(test_lpush_and_publish)
{
    char list[128], chan[128], err[512];
    size_t acked;
    unique_name(list, sizeof list, "list");
    unique_name(chan, sizeof chan, "chan");
    struct connector *c = conn_make(env_url(), NULL, NULL);
    struct rule *rl =
        rule_make(c, RULE_OUTBOUND, (const char *[]){"mode", "lpush", "key", list, NULL});
    struct rule *rp =
        rule_make(c, RULE_OUTBOUND, (const char *[]){"mode", "publish", "key", chan, NULL});
    conn_open(c);
    redisContext *sub = client_shared();
    redisReply *s = client_cmd(sub, (const char *[]){"SUBSCRIBE", chan, NULL});
    freeReplyObject(s);
    struct batch b;
    batch_messages(&b, 6, rl, 2, 1);
    for (size_t i = 3; i < 6; i++)
        b.recs[i].rule = rp; /* mixed rules in one batch */
    ck_assert_int_eq(export_batch(c, b.ptrs, 6, &acked, err, sizeof err), CONNECTOR_OK);
    ck_assert_uint_eq(acked, 6);
    redisContext *rc = client_shared();
    redisReply *x = client_cmd(rc, (const char *[]){"LRANGE", list, "0", "-1", NULL});
    ck_assert_uint_eq(x->elements, 3);
    for (size_t i = 0; i < 3; i++) /* LPUSH: newest first */
        ck_assert_mem_eq(x->element[2 - i]->str, b.recs[i].payload, b.recs[i].payload_len);
    freeReplyObject(x);
    for (size_t i = 3; i < 6; i++) {
        redisReply *m = NULL;
        ck_assert_int_eq(redisGetReply(sub, (void **)&m), REDIS_OK);
        ck_assert_uint_eq(m->elements, 3);
        ck_assert_str_eq(m->element[0]->str, "message");
        ck_assert_str_eq(m->element[1]->str, chan);
        ck_assert_uint_eq(m->element[2]->len, b.recs[i].payload_len);
        ck_assert_mem_eq(m->element[2]->str, b.recs[i].payload, b.recs[i].payload_len);
        freeReplyObject(m);
    }
    redisFree(sub);
    redisFree(rc);
    batch_free(&b);
    ops->close(c);
    rule_free(c, rl);
    rule_free(c, rp);
    ops->destroy(c);
}
END_TEST

START_TEST(test_stream_maxlen)
{
    char key[128], err[512];
    size_t acked;
    unique_name(key, sizeof key, "maxlen");
    struct connector *c = conn_make(env_url(), NULL, NULL);
    struct rule *r =
        rule_make(c, RULE_OUTBOUND, (const char *[]){"key", key, "maxlen", "10", NULL});
    conn_open(c);
    struct batch b;
    batch_messages(&b, 1000, r, 1, 1);
    ck_assert_int_eq(export_batch(c, b.ptrs, b.n, &acked, err, sizeof err), CONNECTOR_OK);
    ck_assert_uint_eq(acked, 1000);
    redisContext *rc = client_shared();
    long long len = client_int(rc, (const char *[]){"XLEN", key, NULL});
    ck_assert_msg(len >= 10 && len < 1000, "XLEN %lld", len); /* ~ trims whole nodes */
    redisFree(rc);
    batch_free(&b);
    conn_done(c, r);
}
END_TEST

/* ---- status events and the state rule ------------------------------------ */

struct state_step {
    const char *desc, *event, *channel;
    const char *seq;
    /* the state after the step */
    const char *online, *state_seq, *state_channel, *state_event;
};

/* One client; channels A then B (a reconnect); late and stale events must
 * not move the state; seqs beyond 2^53 compare exactly. */
static const struct state_step state_steps[] = {
    {"first connect", "connect", "A", "10", "1", "10", "A", "connect"},
    {"reconnect on B", "connect", "B", "20", "1", "20", "B", "connect"},
    {"late tcpclean of A (older seq)", "tcpclean", "A", "15", "1", "20", "B", "connect"},
    {"stale tcpclean of A (newer seq)", "tcpclean", "A", "25", "1", "20", "B", "connect"},
    {"disconnect B", "disconnect", "B", "30", "0", "30", "B", "disconnect"},
    {"tcpclean B", "tcpclean", "B", "31", "0", "31", "B", "tcpclean"},
    {"duplicate tcpclean B", "tcpclean", "B", "31", "0", "31", "B", "tcpclean"},
    {"late connect C (older seq)", "connect", "C", "29", "0", "31", "B", "tcpclean"},
    {"connect D at 2^53", "connect", "D", "9007199254740992", "1", "9007199254740992", "D",
     "connect"},
    {"connect E at 2^53+1 (same double)", "connect", "E", "9007199254740993", "1",
     "9007199254740993", "E", "connect"},
    {"late connect G at 2^53", "connect", "G", "9007199254740992", "1", "9007199254740993", "E",
     "connect"},
    {"connect F, 20 digits", "connect", "F", "18446744073709551615", "1", "18446744073709551615",
     "F", "connect"},
};

struct status_rec {
    struct export_record rec;
    char body[256];
};

static void status_make(struct status_rec *s, const struct rule *r, uint64_t seqno,
                        const char *client, const char *event, const char *channel, const char *seq,
                        int64_t time_ms)
{
    int len = snprintf(s->body, sizeof s->body,
                       "{\"clientId\":\"%s\",\"time\":%" PRId64 ",\"eventType\":\"%s\","
                       "\"channelId\":\"%s\",\"clientIp\":\"10.0.0.5:1\",\"seq\":%s}",
                       client, time_ms, event, channel, seq);
    s->rec = (struct export_record){.seqno = seqno,
                                    .kind = RECORD_STATUS,
                                    .rule = r,
                                    .msg_id = strtoull(seq, NULL, 10),
                                    .time_ms = time_ms,
                                    .client_id = client,
                                    .payload = (const uint8_t *)s->body,
                                    .payload_len = (uint32_t)len,
                                    .event_type = event,
                                    .channel_id = channel,
                                    .client_ip = "10.0.0.5:1"};
}

static void check_state(redisContext *rc, const char *hash, const struct state_step *st,
                        const char *client)
{
    redisReply *h = client_cmd(rc, (const char *[]){"HGETALL", hash, NULL});
    ck_assert_msg(h->elements == 14, "%s: %zu fields", st->desc, h->elements / 2);
    const struct {
        const char *field, *want;
    } want[] = {
        {"online", st->online},         {"seq", st->state_seq}, {"channelId", st->state_channel},
        {"eventType", st->state_event}, {"clientId", client},   {"clientIp", "10.0.0.5:1"}};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        const redisReply *v = field_of(h, want[i].field);
        ck_assert_msg(v != NULL && strcmp(v->str, want[i].want) == 0, "%s: %s = %s, want %s",
                      st->desc, want[i].field, v ? v->str : "(none)", want[i].want);
    }
    ck_assert_ptr_nonnull(field_of(h, "since"));
    freeReplyObject(h);
}

/* Step by step (one export each), then the whole table again in one batch
 * in reverse order: the state ends the same, the stream has every event. */
START_TEST(test_status_state_rule)
{
    enum { STEPS = sizeof state_steps / sizeof state_steps[0] };
    char stream[128], prefix[128], hash[200], err[512];
    struct status_rec recs[STEPS];
    size_t acked;
    unique_name(stream, sizeof stream, "events");
    unique_name(prefix, sizeof prefix, "presence");
    strcat(prefix, ":");
    const char *client = "GID_s@@@d1";
    snprintf(hash, sizeof hash, "%s%s", prefix, client);
    struct connector *c = conn_make(env_url(), NULL, NULL);
    struct rule *r =
        rule_make(c, RULE_STATUS, (const char *[]){"stream", stream, "hash_prefix", prefix, NULL});
    conn_open(c);
    redisContext *rc = client_shared();
    for (size_t i = 0; i < STEPS; i++) {
        const struct state_step *st = &state_steps[i];
        struct export_record *p = &recs[i].rec;
        status_make(&recs[i], r, i + 1, client, st->event, st->channel, st->seq, 1000 + (int64_t)i);
        ck_assert_int_eq(export_batch(c, &p, 1, &acked, err, sizeof err), CONNECTOR_OK);
        ck_assert_uint_eq(acked, 1);
        check_state(rc, hash, st, client);
    }
    redisReply *x = client_cmd(rc, (const char *[]){"XRANGE", stream, "-", "+", NULL});
    ck_assert_uint_eq(x->elements, STEPS);
    const redisReply *f = x->element[2]->element[1];
    assert_field_str(f, "clientId", client);
    assert_field_str(f, "time", "1002");
    assert_field_str(f, "eventType", "tcpclean");
    assert_field_str(f, "channelId", "A");
    assert_field_str(f, "clientIp", "10.0.0.5:1");
    assert_field_str(f, "seq", "15");
    assert_field(f, "body", recs[2].body, strlen(recs[2].body));
    freeReplyObject(x);

    /* a second client gets the events in reverse order, in one batch */
    const char *client2 = "GID_s@@@d2";
    char hash2[200];
    struct export_record *ptrs[STEPS];
    snprintf(hash2, sizeof hash2, "%s%s", prefix, client2);
    for (size_t i = 0; i < STEPS; i++) {
        const struct state_step *st = &state_steps[STEPS - 1 - i];
        status_make(&recs[i], r, 100 + i, client2, st->event, st->channel, st->seq, 2000);
        ptrs[i] = &recs[i].rec;
    }
    ck_assert_int_eq(export_batch(c, ptrs, STEPS, &acked, err, sizeof err), CONNECTOR_OK);
    ck_assert_uint_eq(acked, STEPS);
    check_state(rc, hash2, &state_steps[STEPS - 1], client2);
    redisFree(rc);
    conn_done(c, r);
}
END_TEST

/* A first event that is not a connect still creates the state (offline). */
START_TEST(test_status_first_event_offline)
{
    char stream[128], prefix[128], hash[200], err[512];
    struct status_rec s;
    size_t acked;
    unique_name(stream, sizeof stream, "events");
    unique_name(prefix, sizeof prefix, "presence");
    strcat(prefix, ":");
    snprintf(hash, sizeof hash, "%sGID_s@@@d9", prefix);
    struct connector *c = conn_make(env_url(), NULL, NULL);
    struct rule *r =
        rule_make(c, RULE_STATUS, (const char *[]){"stream", stream, "hash_prefix", prefix, NULL});
    conn_open(c);
    status_make(&s, r, 1, "GID_s@@@d9", "tcpclean", "Z", "5", 77);
    struct export_record *p = &s.rec;
    ck_assert_int_eq(export_batch(c, &p, 1, &acked, err, sizeof err), CONNECTOR_OK);
    redisContext *rc = client_shared();
    const struct state_step want = {"first tcpclean", NULL, NULL, NULL, "0", "5", "Z", "tcpclean"};
    check_state(rc, hash, &want, "GID_s@@@d9");
    redisReply *h = client_cmd(rc, (const char *[]){"HGET", hash, "since", NULL});
    ck_assert_str_eq(h->str, "77");
    freeReplyObject(h);
    redisFree(rc);
    conn_done(c, r);
}
END_TEST

/* ---- REJECT -------------------------------------------------------------- */

/* Record 2's stream key holds a string: REJECT at 2 with 0 and 1 written;
 * the engine's re-offer of 3..4 is acknowledged without writing them twice
 * (they were written in the first round). */
START_TEST(test_reject_wrongtype)
{
    char prefix[128], key[160], bad[200], err[512];
    size_t acked;
    unique_name(prefix, sizeof prefix, "wrongtype");
    snprintf(key, sizeof key, "%s:${topic}", prefix);
    struct connector *c = conn_make(env_url(), NULL, NULL);
    struct rule *r = rule_make(c, RULE_OUTBOUND, (const char *[]){"key", key, NULL});
    conn_open(c);
    struct batch b;
    batch_messages(&b, 5, r, 1, 10);
    redisContext *rc = client_shared();
    snprintf(bad, sizeof bad, "%s:%s", prefix, b.recs[2].topic);
    freeReplyObject(client_cmd(rc, (const char *[]){"SET", bad, "a string", NULL}));
    ck_assert_int_eq(export_batch(c, b.ptrs, 5, &acked, err, sizeof err), CONNECTOR_REJECT);
    ck_assert_uint_eq(acked, 2);
    ck_assert_msg(strstr(err, "record 2") && strstr(err, "WRONGTYPE"), "err: %s", err);
    ck_assert_int_eq(export_batch(c, b.ptrs + 3, 2, &acked, err, sizeof err), CONNECTOR_OK);
    ck_assert_uint_eq(acked, 2);
    for (size_t i = 0; i < 5; i++) {
        char stream[200];
        snprintf(stream, sizeof stream, "%s:%s", prefix, b.recs[i].topic);
        if (i == 2)
            continue;
        ck_assert_int_eq(client_int(rc, (const char *[]){"XLEN", stream, NULL}), 1);
    }
    /* a later batch is written normally again */
    ck_assert_int_eq(export_batch(c, b.ptrs + 3, 2, &acked, err, sizeof err), CONNECTOR_OK);
    char s4[200];
    snprintf(s4, sizeof s4, "%s:%s", prefix, b.recs[4].topic);
    ck_assert_int_eq(client_int(rc, (const char *[]){"XLEN", s4, NULL}), 2);
    redisFree(rc);
    batch_free(&b);
    conn_done(c, r);
}
END_TEST

/* The msgid fields of the entries [from, to) of stream key are those of
 * recs[0..to - from), in order. */
static void assert_msgids(redisContext *rc, const char *key, size_t from, size_t to,
                          const struct export_record *recs)
{
    redisReply *x = client_cmd(rc, (const char *[]){"XRANGE", key, "-", "+", NULL});
    ck_assert_uint_ge(x->elements, to);
    for (size_t j = from; j < to; j++) {
        char msgid[17];
        snprintf(msgid, sizeof msgid, "%016" PRIx64, recs[j - from].msg_id);
        const redisReply *v = field_of(x->element[j]->element[1], "msgid");
        ck_assert_msg(v != NULL && strcmp(v->str, msgid) == 0, "entry %zu: msgid %s, want %s", j,
                      v ? v->str : "(none)", msgid);
    }
    freeReplyObject(x);
}

/* A REJECT in the second of the chunks in flight (record 1500 of 5000):
 * acked 1500; the records after it that were written (the rest of its
 * chunk and the next chunk, already in flight) are not written again on
 * the re-offer, and the records never written are: each record but the
 * bad one ends up in the stream exactly once, in order. */
START_TEST(test_reject_across_chunks)
{
    enum { N = 5000, BAD = 1500 };
    char prefix[128], key[160], good[200], bad[200], err[512];
    size_t acked;
    unique_name(prefix, sizeof prefix, "wrongtype-chunks");
    snprintf(key, sizeof key, "%s:${topic}", prefix);
    snprintf(good, sizeof good, "%s:good", prefix);
    snprintf(bad, sizeof bad, "%s:bad", prefix);
    struct connector *c = conn_make(env_url(), NULL, NULL);
    struct rule *r = rule_make(c, RULE_OUTBOUND, (const char *[]){"key", key, NULL});
    conn_open(c);
    struct batch b;
    batch_messages(&b, N, r, 4, 1);
    for (size_t i = 0; i < N; i++)
        b.recs[i].topic = i == BAD ? "bad" : "good";
    redisContext *rc = client_shared();
    freeReplyObject(client_cmd(rc, (const char *[]){"SET", bad, "a string", NULL}));
    ck_assert_int_eq(export_batch(c, b.ptrs, N, &acked, err, sizeof err), CONNECTOR_REJECT);
    ck_assert_uint_eq(acked, BAD);
    ck_assert_msg(strstr(err, "record 1500") && strstr(err, "WRONGTYPE"), "err: %s", err);
    ck_assert_int_eq(export_batch(c, b.ptrs + BAD + 1, N - BAD - 1, &acked, err, sizeof err),
                     CONNECTOR_OK);
    ck_assert_uint_eq(acked, N - BAD - 1);
    /* every record but the bad one, once, in order */
    ck_assert_int_eq(client_int(rc, (const char *[]){"XLEN", good, NULL}), N - 1);
    assert_msgids(rc, good, 0, BAD, b.recs);
    assert_msgids(rc, good, BAD, N - 1, b.recs + BAD + 1);
    freeReplyObject(client_cmd(rc, (const char *[]){"DEL", good, bad, NULL}));
    redisFree(rc);
    batch_free(&b);
    conn_done(c, r);
}
END_TEST

/* ---- RETRY, outage and recovery on a private server ------------------------ */

static char priv_dir[128];
static int priv_port;
static pid_t priv_pid;
static const char *priv_password = "s3cret-pw";

static void priv_setup(void)
{
    snprintf(priv_dir, sizeof priv_dir, "/tmp/mqb_test_redis_XXXXXX");
    if (mkdtemp(priv_dir) == NULL)
        priv_dir[0] = '\0';
}

/* Kills the server named by the pid file, if any (a test that failed
 * leaves its server running; the next start or the teardown ends it). */
static void priv_kill_stale(void)
{
    char path[256];
    long pid = 0;
    snprintf(path, sizeof path, "%s/redis.pid", priv_dir);
    FILE *f = fopen(path, "r");
    if (f != NULL && fscanf(f, "%ld", &pid) == 1 && pid > 0) {
        kill((pid_t)pid, SIGCONT);
        kill((pid_t)pid, SIGKILL);
    }
    if (f != NULL)
        fclose(f);
    unlink(path);
}

/* Unchecked (runs in the parent, also after a failed test). */
static void priv_teardown(void)
{
    char path[400];
    priv_kill_stale();
    DIR *d = opendir(priv_dir);
    struct dirent *e;
    while (d != NULL && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof path, "%s/%s", priv_dir, e->d_name);
        unlink(path);
    }
    if (d != NULL)
        closedir(d);
    rmdir(priv_dir);
}

/* redis-server in the foreground on priv_port, with a password and a unix
 * socket; returns once it answers PING. */
static void priv_start(void)
{
    char port[8], pidfile[200], sock[200], log[200];
    snprintf(port, sizeof port, "%d", priv_port);
    snprintf(pidfile, sizeof pidfile, "%s/redis.pid", priv_dir);
    snprintf(sock, sizeof sock, "%s/redis.sock", priv_dir);
    snprintf(log, sizeof log, "%s/redis.log", priv_dir);
    priv_kill_stale();
    priv_pid = fork();
    ck_assert_int_ge(priv_pid, 0);
    if (priv_pid == 0) {
        execlp("redis-server", "redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--dir", priv_dir, "--pidfile", pidfile, "--unixsocket", sock,
               "--logfile", log, "--requirepass", priv_password, (char *)NULL);
        _exit(127);
    }
    double deadline = now_s() + 10;
    while (now_s() < deadline) {
        struct timeval tv = {1, 0};
        redisContext *rc = redisConnectWithTimeout("127.0.0.1", priv_port, tv);
        bool up = rc != NULL && rc->err == 0;
        redisFree(rc);
        if (up)
            return;
        ck_assert_int_eq(waitpid(priv_pid, NULL, WNOHANG), 0); /* still running */
        poll_pause();
    }
    ck_abort_msg("private redis-server did not come up on port %d", priv_port);
}

static void priv_kill(void)
{
    kill(priv_pid, SIGCONT);
    ck_assert_int_eq(kill(priv_pid, SIGKILL), 0);
    ck_assert_int_eq(waitpid(priv_pid, NULL, 0), priv_pid);
    priv_pid = 0;
    char path[256];
    snprintf(path, sizeof path, "%s/redis.pid", priv_dir);
    unlink(path);
}

/* A connector (timeouts as for conn_make) open on a private server started
 * for it, with one rule: an outbound rule whose key, or a status rule
 * whose stream, is `name`, unique to this run. */
struct priv_sink {
    char name[128];
    struct connector *c;
    struct rule *r;
};

static void priv_sink_open(struct priv_sink *p, enum rule_type type, const char *what,
                           const char *connect_ms, const char *cmd_ms)
{
    char url[128];
    ck_assert_msg(priv_dir[0] != '\0', "mkdtemp failed");
    priv_port = free_port();
    priv_start();
    snprintf(url, sizeof url, "redis://:%s@127.0.0.1:%d/0", priv_password, priv_port);
    unique_name(p->name, sizeof p->name, what);
    p->c = conn_make(url, connect_ms, cmd_ms);
    const char *option = type == RULE_STATUS ? "stream" : "key";
    p->r = rule_make(p->c, type, (const char *[]){option, p->name, NULL});
    conn_open(p->c);
}

/* Frees what priv_sink_open made and kills the server. */
static void priv_sink_close(struct priv_sink *p)
{
    conn_done(p->c, p->r);
    priv_kill();
}

START_TEST(test_retry_unreachable)
{
    char url[64], err[512];
    size_t acked;
    snprintf(url, sizeof url, "redis://127.0.0.1:%d/0", free_port());
    struct connector *c = conn_make(url, "300", "300");
    struct rule *r = rule_make(c, RULE_OUTBOUND, (const char *[]){"key", "k", NULL});
    double t0 = now_s();
    ck_assert_int_eq(ops->open(c, err, sizeof err), CONNECTOR_RETRY);
    ck_assert(now_s() - t0 < 1.0);
    ck_assert_msg(strstr(err, "cannot connect to 127.0.0.1:"), "err: %s", err);
    struct batch b;
    batch_messages(&b, 3, r, 1, 1);
    ck_assert_int_eq(export_batch(c, b.ptrs, 3, &acked, err, sizeof err), CONNECTOR_RETRY);
    ck_assert_uint_eq(acked, 0);
    batch_free(&b);
    rule_free(c, r);
    ops->destroy(c);
}
END_TEST

/* Frozen (SIGSTOP): RETRY after command_timeout_ms. Gone (SIGKILL): RETRY
 * at once, open() RETRY. Restarted on the same port: open() + export work. */
START_TEST(test_outage_and_recovery)
{
    char err[512];
    size_t acked;
    struct priv_sink p;
    priv_sink_open(&p, RULE_OUTBOUND, "outage", "300", "500");
    struct connector *c = p.c;
    struct batch b;
    batch_messages(&b, 30, p.r, 2, 1);
    ck_assert_int_eq(export_batch(c, b.ptrs, 10, &acked, err, sizeof err), CONNECTOR_OK);

    ck_assert_int_eq(kill(priv_pid, SIGSTOP), 0);
    double t0 = now_s();
    ck_assert_int_eq(export_batch(c, b.ptrs + 10, 10, &acked, err, sizeof err), CONNECTOR_RETRY);
    double took = now_s() - t0;
    ck_assert_uint_eq(acked, 0);
    ck_assert_msg(took >= 0.4 && took < 2.0, "RETRY after %.2f s", took);
    ck_assert_msg(strstr(err, "connection lost"), "err: %s", err);

    priv_kill();
    ck_assert_int_eq(export_batch(c, b.ptrs + 10, 10, &acked, err, sizeof err), CONNECTOR_RETRY);
    ck_assert_uint_eq(acked, 0);
    t0 = now_s();
    ck_assert_int_eq(ops->open(c, err, sizeof err), CONNECTOR_RETRY);
    ck_assert(now_s() - t0 < 1.0);

    priv_start(); /* same port; no persistence: the stream starts empty */
    conn_open(c);
    ck_assert_int_eq(export_batch(c, b.ptrs + 10, 20, &acked, err, sizeof err), CONNECTOR_OK);
    ck_assert_uint_eq(acked, 20);
    redisContext *rc = client_at("127.0.0.1", priv_port, priv_password);
    ck_assert_int_eq(client_int(rc, (const char *[]){"XLEN", p.name, NULL}), 20);
    redisFree(rc);
    batch_free(&b);
    priv_sink_close(&p);
}
END_TEST

/* A frozen server (SIGSTOP) that stops reading while a 32 MiB record is
 * being written: the write makes no progress, and after
 * command_timeout_ms the export says RETRY (nothing acked). */
START_TEST(test_send_timeout)
{
    enum { BIG = 32 << 20 };
    char err[512];
    size_t acked;
    struct priv_sink p;
    priv_sink_open(&p, RULE_OUTBOUND, "frozen-write", "300", "500");
    struct batch b;
    batch_messages(&b, 2, p.r, 1, 1);
    uint8_t *big = calloc(1, BIG);
    ck_assert_ptr_nonnull(big);
    b.recs[1].payload = big;
    b.recs[1].payload_len = BIG;
    ck_assert_int_eq(kill(priv_pid, SIGSTOP), 0);
    double t0 = now_s();
    ck_assert_int_eq(export_batch(p.c, b.ptrs, 2, &acked, err, sizeof err), CONNECTOR_RETRY);
    double took = now_s() - t0;
    ck_assert_uint_eq(acked, 0);
    ck_assert_msg(took >= 0.4 && took < 5.0, "RETRY after %.2f s", took);
    ck_assert_msg(strstr(err, "record 0") && strstr(err, "connection lost: timeout"), "err: %s",
                  err);
    free(big);
    batch_free(&b);
    priv_sink_close(&p);
}
END_TEST

/* A wrong password: RETRY from open() and the error never shows it.
 * Over the unix socket with ?db=3&password=: a SCRIPT FLUSH under the
 * live connection makes EVALSHA say NOSCRIPT; the connector reloads the
 * script and still applies the state rule. */
START_TEST(test_auth_unix_noscript)
{
    char url[300], stream[128], err[512];
    size_t acked;
    ck_assert_msg(priv_dir[0] != '\0', "mkdtemp failed");
    priv_port = free_port();
    priv_start();
    snprintf(url, sizeof url, "redis://:wrong-pw-123@127.0.0.1:%d", priv_port);
    struct connector *c = conn_make(url, NULL, NULL);
    ck_assert_int_eq(ops->open(c, err, sizeof err), CONNECTOR_RETRY);
    ck_assert_msg(strstr(err, "AUTH") && !strstr(err, "wrong-pw"), "err: %s", err);
    ops->destroy(c);

    snprintf(url, sizeof url, "unix://%s/redis.sock?db=3&password=%s", priv_dir, priv_password);
    c = conn_make(url, NULL, NULL);
    unique_name(stream, sizeof stream, "ev");
    struct rule *r = rule_make(c, RULE_STATUS, (const char *[]){"stream", stream, NULL});
    conn_open(c);
    redisContext *rc = client_at("127.0.0.1", priv_port, priv_password);
    freeReplyObject(client_cmd(rc, (const char *[]){"SELECT", "3", NULL}));
    freeReplyObject(client_cmd(rc, (const char *[]){"SCRIPT", "FLUSH", NULL}));
    struct status_rec ev[2];
    struct export_record *ptrs[2] = {&ev[0].rec, &ev[1].rec};
    status_make(&ev[0], r, 1, "GID_u@@@x", "connect", "A", "1", 10);
    status_make(&ev[1], r, 2, "GID_u@@@x", "disconnect", "A", "2", 11);
    ck_assert_int_eq(export_batch(c, ptrs, 2, &acked, err, sizeof err), CONNECTOR_OK);
    ck_assert_uint_eq(acked, 2);
    const struct state_step want = {"after NOSCRIPT", NULL, NULL, NULL, "0", "2", "A",
                                    "disconnect"};
    check_state(rc, "mqtt:presence:GID_u@@@x", &want, "GID_u@@@x");
    ck_assert_int_eq(client_int(rc, (const char *[]){"XLEN", stream, NULL}), 2);
    conn_done(c, r);
    redisFree(rc);
    priv_kill();
}
END_TEST

/* export() on a thread of its own, for killing its connection meanwhile. */
struct export_job {
    struct connector *c;
    struct export_record *const *recs;
    size_t n, acked;
    int rc;
    char err[512];
    atomic_bool done;
};

static void *export_job_run(void *arg)
{
    struct export_job *job = arg;
    job->rc = ops->export(job->c, job->recs, job->n, &job->acked, job->err, sizeof job->err);
    atomic_store(&job->done, true);
    return NULL;
}

/* A batch of many chunks whose connection is killed (CLIENT KILL from
 * another connection) while it is being written: RETRY, and the acked
 * prefix is exact: the stream holds recs[0..m) in order with m >= acked
 * (the server may have run commands whose replies were never read), and
 * nothing else. The engine's re-offer of recs[acked..] after a reconnect
 * completes the stream: recs[0..m) then recs[acked..n) (at least once). */
START_TEST(test_killed_mid_batch)
{
    enum { N = 60000, KILL_AFTER = 2500 };
    char err[512];
    size_t acked;
    struct priv_sink p;
    priv_sink_open(&p, RULE_OUTBOUND, "killed", NULL, NULL);
    struct connector *c = p.c;
    const char *key = p.name;
    struct batch b;
    batch_messages(&b, N, p.r, 4, 1);
    redisContext *admin = client_at("127.0.0.1", priv_port, priv_password);
    struct export_job job = {.c = c, .recs = b.ptrs, .n = N};
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, export_job_run, &job), 0);
    /* kill once the server ran more than two chunks' worth */
    long long len = 0;
    double deadline = now_s() + 20;
    while (!atomic_load(&job.done) && len < KILL_AFTER && now_s() < deadline)
        len = client_int(admin, (const char *[]){"XLEN", key, NULL});
    ck_assert_msg(!atomic_load(&job.done), "the export ended (rc %d, acked %zu) before the kill",
                  job.rc, job.acked);
    long long killed = client_int(
        admin, (const char *[]){"CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes", NULL});
    ck_assert_int_eq(pthread_join(th, NULL), 0);
    ck_assert_int_eq(killed, 1);
    ck_assert_msg(job.rc == CONNECTOR_RETRY, "rc %d, acked %zu: %s", job.rc, job.acked, job.err);
    ck_assert_msg(strstr(job.err, "connection lost"), "err: %s", job.err);
    long long m = client_int(admin, (const char *[]){"XLEN", key, NULL});
    printf("redis: connection killed at XLEN %lld: acked %zu, stream holds %lld of %d\n", len,
           job.acked, m, N);
    ck_assert_int_ge(m, KILL_AFTER);
    ck_assert_uint_ge((size_t)m, job.acked);
    ck_assert_uint_le((size_t)m, N);
    assert_msgids(admin, key, 0, (size_t)m, b.recs);

    /* the engine reconnects and offers recs[acked..] again */
    size_t from = job.acked;
    ck_assert_int_eq(export_batch(c, b.ptrs + from, N - from, &acked, err, sizeof err),
                     CONNECTOR_RETRY); /* not connected */
    conn_open(c);
    ck_assert_int_eq(export_batch(c, b.ptrs + from, N - from, &acked, err, sizeof err),
                     CONNECTOR_OK);
    ck_assert_uint_eq(acked, N - from);
    ck_assert_int_eq(client_int(admin, (const char *[]){"XLEN", key, NULL}),
                     m + (long long)(N - from));
    assert_msgids(admin, key, (size_t)m, (size_t)m + N - from, b.recs + from);
    redisFree(admin);
    batch_free(&b);
    priv_sink_close(&p);
}
END_TEST

/* 2,500 status events of 500 clients (several chunks, two replies per
 * event) after a SCRIPT FLUSH: every EVALSHA says NOSCRIPT; the connector
 * loads the script again and applies all of them, a chunk at a time:
 * every event is in the stream and every client's state is its last
 * event's. */
START_TEST(test_status_noscript_chunks)
{
    enum { N = 2500, CLIENTS = 500 };
    struct priv_sink p;
    priv_sink_open(&p, RULE_STATUS, "ev-chunks", NULL, NULL);
    struct status_rec *ev = calloc(N, sizeof *ev);
    struct export_record **ptrs = calloc(N, sizeof *ptrs);
    char(*client)[32] = calloc(CLIENTS, sizeof *client);
    char(*chan)[16] = calloc(N, sizeof *chan);
    char(*seq)[24] = calloc(N, sizeof *seq);
    ck_assert(ev && ptrs && client && chan && seq);
    for (size_t i = 0; i < CLIENTS; i++)
        snprintf(client[i], sizeof client[i], "GID_n@@@d%zu", i);
    for (size_t i = 0; i < N; i++) {
        snprintf(chan[i], sizeof chan[i], "ch%zu", i);
        snprintf(seq[i], sizeof seq[i], "%zu", i + 1);
        status_make(&ev[i], p.r, i + 1, client[i % CLIENTS], "connect", chan[i], seq[i],
                    1000 + (int64_t)i);
        ptrs[i] = &ev[i].rec;
    }
    redisContext *admin = client_at("127.0.0.1", priv_port, priv_password);
    freeReplyObject(client_cmd(admin, (const char *[]){"SCRIPT", "FLUSH", NULL}));
    char err[512];
    size_t acked;
    ck_assert_int_eq(export_batch(p.c, ptrs, N, &acked, err, sizeof err), CONNECTOR_OK);
    ck_assert_uint_eq(acked, N);
    ck_assert_int_eq(client_int(admin, (const char *[]){"XLEN", p.name, NULL}), N);
    for (size_t k = 0; k < CLIENTS; k++) {
        size_t last = N - CLIENTS + k; /* the client's last event */
        char hash[64];
        snprintf(hash, sizeof hash, "mqtt:presence:%s", client[k]);
        const struct state_step want = {"after NOSCRIPT", NULL,       NULL,     NULL, "1",
                                        seq[last],        chan[last], "connect"};
        check_state(admin, hash, &want, client[k]);
    }
    redisFree(admin);
    free(ev);
    free(ptrs);
    free(client);
    free(chan);
    free(seq);
    priv_sink_close(&p);
}
END_TEST

/* ---- throughput ------------------------------------------------------------ */

START_TEST(test_throughput)
{
    enum { N = 100000 };
    char key[128], err[512];
    size_t acked;
    unique_name(key, sizeof key, "perf");
    struct connector *c = conn_make(env_url(), NULL, NULL);
    struct rule *r = rule_make(c, RULE_OUTBOUND, (const char *[]){"key", key, NULL});
    conn_open(c);
    struct batch b;
    batch_messages(&b, N, r, 100, 1);
    static uint8_t payload[64];
    memset(payload, 'p', sizeof payload);
    for (size_t i = 0; i < N; i++) {
        b.recs[i].payload = payload;
        b.recs[i].payload_len = sizeof payload;
    }
    static const size_t batches[] = {1000, 10000}; /* the engine's default, and more */
    for (size_t k = 0; k < 2; k++) {
        double t0 = now_s();
        for (size_t i = 0; i < N; i += batches[k]) {
            ck_assert_int_eq(export_batch(c, b.ptrs + i, batches[k], &acked, err, sizeof err),
                             CONNECTOR_OK);
            ck_assert_uint_eq(acked, batches[k]);
        }
        double took = now_s() - t0;
        printf("redis: %d records of 64 bytes (XADD) in batches of %zu: %.2f s, %.0f records/s\n",
               N, batches[k], took, N / took);
    }
    redisContext *rc = client_shared();
    ck_assert_int_eq(client_int(rc, (const char *[]){"XLEN", key, NULL}), 2 * N);
    freeReplyObject(client_cmd(rc, (const char *[]){"DEL", key, NULL}));
    redisFree(rc);
    batch_free(&b);
    conn_done(c, r);
}
END_TEST

/* ---- inbound: helpers -------------------------------------------------------- */

static struct rule *inbound_make(struct connector *c, const char *const *pairs)
{
    char err[512] = "";
    struct rule *r = calloc(1, sizeof *r);
    ck_assert_ptr_nonnull(r);
    r->name = strdup("in-rule");
    r->type = RULE_INBOUND;
    r->enabled = true;
    r->resource = strdup("Commands");
    r->options = map_new(10, 5);
    r->target_options = map_new(20, 7);
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

static size_t src_fetch(struct source *s, struct import_record **recs, size_t max, int timeout_ms)
{
    char err[512] = "";
    size_t n = (size_t)-1;
    ck_assert_msg(ops->source_fetch(s, recs, max, &n, timeout_ms, err, sizeof err) == CONNECTOR_OK,
                  "fetch: %s", err);
    ck_assert_uint_le(n, max);
    return n;
}

/* Fetches until n records arrived (deadline 10 s); asserts no more came. */
static void src_fetch_n(struct source *s, struct import_record **recs, size_t n, int timeout_ms)
{
    size_t got = 0;
    double deadline = now_s() + 10;
    while (got < n && now_s() < deadline)
        got += src_fetch(s, recs + got, n - got, timeout_ms);
    ck_assert_msg(got == n, "fetched %zu of %zu", got, n);
}

static void recs_free(struct import_record **recs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        import_record_free(recs[i]);
}

/* Acknowledges recs (those still PENDING as PUBLISHED) and frees them. */
static void src_ack(struct source *s, struct import_record **recs, size_t n)
{
    char err[512] = "";
    for (size_t i = 0; i < n; i++)
        if (recs[i]->outcome == IMPORT_PENDING)
            recs[i]->outcome = IMPORT_PUBLISHED;
    ck_assert_msg(ops->source_ack(s, recs, n, err, sizeof err) == CONNECTOR_OK, "ack: %s", err);
    recs_free(recs, n);
}

static void skip(struct import_record *rec, const char *reason)
{
    rec->outcome = IMPORT_SKIPPED;
    snprintf(rec->reason, sizeof rec->reason, "%s", reason);
}

/* XADD stream * fields... (NULL-terminated [field, value, ...]); the value
 * after "payload" is payload_len bytes long when payload_len is not 0. */
static void xadd(redisContext *rc, const char *stream, const char *const *fields,
                 size_t payload_len, char *id, size_t idlen)
{
    const char *argv[24] = {"XADD", stream, "*"};
    size_t lens[24] = {4, strlen(stream), 1};
    int argc = 3;
    for (int i = 0; fields[i] != NULL; i++, argc++) {
        ck_assert_int_lt(argc, 24);
        argv[argc] = fields[i];
        lens[argc] = strlen(fields[i]);
        if (payload_len != 0 && i % 2 == 1 && strcmp(fields[i - 1], "payload") == 0)
            lens[argc] = payload_len;
    }
    redisReply *r = redisCommandArgv(rc, argc, argv, lens);
    ck_assert_msg(r != NULL && r->type == REDIS_REPLY_STRING, "XADD: %s", r ? r->str : rc->errstr);
    if (id != NULL)
        snprintf(id, idlen, "%s", r->str);
    freeReplyObject(r);
}

/* n entries with payloads "<prefix><i>"; ids into ids[i]. */
static void xadd_n(redisContext *rc, const char *stream, const char *prefix, size_t n,
                   char (*ids)[48])
{
    for (size_t i = 0; i < n; i++) {
        char payload[64];
        snprintf(payload, sizeof payload, "%s%zu", prefix, i);
        xadd(rc, stream, (const char *[]){"payload", payload, NULL}, 0, ids ? ids[i] : NULL, 48);
    }
}

static void assert_payload(const struct import_record *rec, const char *want)
{
    ck_assert_msg(rec->payload_len == strlen(want) && memcmp(rec->payload, want, strlen(want)) == 0,
                  "payload '%.*s', want '%s'", (int)rec->payload_len, (const char *)rec->payload,
                  want);
}

static void assert_text(const char *desc, const char *what, const char *got, const char *want)
{
    ck_assert_msg((got == NULL && want == NULL) || (got && want && strcmp(got, want) == 0),
                  "%s: %s '%s', want '%s'", desc, what, got ? got : "(null)",
                  want ? want : "(null)");
}

/* The group's pending entry count (XPENDING summary). */
static long long pending_count(redisContext *rc, const char *stream, const char *group)
{
    redisReply *r = client_cmd(rc, (const char *[]){"XPENDING", stream, group, NULL});
    ck_assert_int_eq(r->type, REDIS_REPLY_ARRAY);
    long long n = r->element[0]->integer;
    freeReplyObject(r);
    return n;
}

/* Owner and delivery count of one pending entry; asserts it is pending. */
static void pending_of(redisContext *rc, const char *stream, const char *group, const char *id,
                       char *consumer, size_t len, long long *deliveries)
{
    redisReply *r = client_cmd(rc, (const char *[]){"XPENDING", stream, group, id, id, "1", NULL});
    ck_assert_msg(r->elements == 1, "%s is not pending", id);
    snprintf(consumer, len, "%s", r->element[0]->element[1]->str);
    *deliveries = r->element[0]->element[3]->integer;
    freeReplyObject(r);
}

static void del_keys(redisContext *rc, const char *a, const char *b)
{
    freeReplyObject(client_cmd(rc, (const char *[]){"DEL", a, b ? b : a, NULL}));
}

/* ---- inbound: stream mode -------------------------------------------------- */

/* One entry each; the record the source makes of it (NULL: absent). */
struct entry_case {
    const char *desc;
    const char *fields[10];
    size_t payload_len; /* when the payload holds NUL bytes */
    const char *sub_topic, *qos, *client_id, *payload;
    size_t want_len;
};

static const struct entry_case entry_cases[] = {
    {"every property",
     {"payload", "on", "mqttSecondTopic", "lamp/1", "qoslevel", "0", "clientId", "GID_x@@@d1",
      NULL},
     0,
     "lamp/1",
     "0",
     "GID_x@@@d1",
     "on",
     2},
    {"topic stands for mqttSecondTopic",
     {"payload", "off", "topic", "lamp/2", NULL},
     0,
     "lamp/2",
     NULL,
     NULL,
     "off",
     3},
    {"mqttSecondTopic wins over topic",
     {"topic", "b", "payload", "x", "mqttSecondTopic", "a", NULL},
     0,
     "a",
     NULL,
     NULL,
     "x",
     1},
    {"no payload: an empty message",
     {"mqttSecondTopic", "lamp/3", NULL},
     0,
     "lamp/3",
     NULL,
     NULL,
     "",
     0},
    {"binary payload", {"payload", "a\0b\xff", NULL}, 4, NULL, NULL, NULL, "a\0b\xff", 4},
    {"unknown fields ignored",
     {"extra", "x", "payload", "p", "msgid", "0000000000000001", NULL},
     0,
     NULL,
     NULL,
     NULL,
     "p",
     1},
    {"names are case-sensitive",
     {"Payload", "X", "qosLevel", "2", "clientid", "c", "MQTTSECONDTOPIC", "t", NULL},
     0,
     NULL,
     NULL,
     NULL,
     "",
     0},
    {"the first of repeated fields",
     {"payload", "first", "payload", "second", NULL},
     0,
     NULL,
     NULL,
     NULL,
     "first",
     5},
    {"values copied, not judged (the engine validates)",
     {"payload", "p", "qoslevel", "7", "mqttSecondTopic", "a/+/b", NULL},
     0,
     "a/+/b",
     "7",
     NULL,
     "p",
     1},
};

/* Entries written before open come in order with exact fields; acked,
 * they are not fetched again after a reopen; an idle fetch returns n = 0
 * after its timeout. */
START_TEST(test_source_stream_fields)
{
    enum { N = sizeof entry_cases / sizeof entry_cases[0] };
    char stream[128], ids[N][48];
    struct import_record *recs[2 * N];
    unique_name(stream, sizeof stream, "in-fields");
    redisContext *rc = client_shared();
    for (size_t i = 0; i < N; i++)
        xadd(rc, stream, entry_cases[i].fields, entry_cases[i].payload_len, ids[i], 48);
    struct connector *c = conn_make(env_url(), NULL, NULL);
    struct rule *r = inbound_make(c, (const char *[]){"stream", stream, NULL});
    struct source *s = src_open(c, r);
    ck_assert_uint_eq(src_fetch(s, recs, 2 * N, 2000), N);
    for (size_t i = 0; i < N; i++) {
        const struct entry_case *tc = &entry_cases[i];
        assert_text(tc->desc, "id", recs[i]->id, ids[i]);
        assert_text(tc->desc, "sub_topic", recs[i]->sub_topic, tc->sub_topic);
        assert_text(tc->desc, "qos", recs[i]->qos, tc->qos);
        assert_text(tc->desc, "client_id", recs[i]->client_id, tc->client_id);
        ck_assert_msg(recs[i]->payload_len == tc->want_len &&
                          memcmp(recs[i]->payload, tc->payload, tc->want_len) == 0,
                      "%s: payload", tc->desc);
    }
    ck_assert_int_eq(pending_count(rc, stream, "mqbridge"), N); /* delivered, not acked */
    src_ack(s, recs, N);
    ck_assert_int_eq(pending_count(rc, stream, "mqbridge"), 0);
    ops->source_close(s);

    s = src_open(c, r);
    double t0 = now_s();
    ck_assert_uint_eq(src_fetch(s, recs, N, 300), 0);
    double took = now_s() - t0;
    ck_assert_msg(took >= 0.25 && took < 1.5, "idle fetch took %.2f s", took);
    ops->source_close(s);
    del_keys(rc, stream, NULL);
    redisFree(rc);
    rule_free(c, r);
    ops->destroy(c);
}
END_TEST

/* Fetched and never acknowledged (a crash): after a reopen the same
 * entries come first, page by page, then the new ones; each at least once. */
START_TEST(test_source_crash_redelivery)
{
    char stream[128], ids[6][48], consumer[64];
    struct import_record *recs[10];
    long long deliveries;
    unique_name(stream, sizeof stream, "in-crash");
    redisContext *rc = client_shared();
    xadd_n(rc, stream, "m", 5, ids);
    struct connector *c = conn_make(env_url(), NULL, NULL);
    struct rule *r = inbound_make(c, (const char *[]){"stream", stream, "consumer", "mqb-a", NULL});
    struct source *s = src_open(c, r);
    ck_assert_uint_eq(src_fetch(s, recs, 3, 1000), 3);
    recs_free(recs, 3);
    ops->source_close(s); /* "crash": m0..m2 stay pending */
    xadd(rc, stream, (const char *[]){"payload", "m5", NULL}, 0, ids[5], 48);

    s = src_open(c, r);
    ck_assert_uint_eq(src_fetch(s, recs, 2, 1000), 2);
    assert_payload(recs[0], "m0");
    assert_payload(recs[1], "m1");
    pending_of(rc, stream, "mqbridge", ids[0], consumer, sizeof consumer, &deliveries);
    ck_assert_str_eq(consumer, "mqb-a");
    ck_assert_int_eq(deliveries, 2);
    src_ack(s, recs, 2);
    ck_assert_uint_eq(src_fetch(s, recs, 10, 1000), 1); /* the rest of the old ones */
    assert_payload(recs[0], "m2");
    src_ack(s, recs, 1);
    ck_assert_uint_eq(src_fetch(s, recs, 10, 1000), 3); /* then the new ones */
    for (size_t i = 0; i < 3; i++)
        assert_text("new", "id", recs[i]->id, ids[3 + i]);
    src_ack(s, recs, 3);
    ck_assert_int_eq(pending_count(rc, stream, "mqbridge"), 0);
    ops->source_close(s);

    s = src_open(c, r);
    ck_assert_uint_eq(src_fetch(s, recs, 10, 100), 0);
    ops->source_close(s);
    del_keys(rc, stream, NULL);
    redisFree(rc);
    rule_free(c, r);
    ops->destroy(c);
}
END_TEST

/* Entries another consumer (a crashed instance) left pending: not
 * touched while younger than claim_idle_ms, claimed once older. */
START_TEST(test_source_claim)
{
    char stream[128], ids[4][48], consumer[64];
    struct import_record *recs[10];
    long long deliveries;
    unique_name(stream, sizeof stream, "in-claim");
    redisContext *rc = client_shared();
    freeReplyObject(client_cmd(
        rc, (const char *[]){"XGROUP", "CREATE", stream, "mqbridge", "0", "MKSTREAM", NULL}));
    xadd_n(rc, stream, "old", 3, ids);
    freeReplyObject(client_cmd(rc, (const char *[]){"XREADGROUP", "GROUP", "mqbridge", "crashed",
                                                    "COUNT", "3", "STREAMS", stream, ">", NULL}));
    xadd(rc, stream, (const char *[]){"payload", "new", NULL}, 0, ids[3], 48);
    struct connector *c = conn_make(env_url(), NULL, NULL);

    struct rule *patient = inbound_make(
        c, (const char *[]){"stream", stream, "consumer", "live", "claim_idle_ms", "60000", NULL});
    struct source *s = src_open(c, patient);
    ck_assert_uint_eq(src_fetch(s, recs, 10, 1000), 1);
    assert_payload(recs[0], "new");
    src_ack(s, recs, 1);
    ck_assert_uint_eq(src_fetch(s, recs, 10, 100), 0);
    pending_of(rc, stream, "mqbridge", ids[0], consumer, sizeof consumer, &deliveries);
    ck_assert_str_eq(consumer, "crashed");
    ops->source_close(s);

    struct rule *eager = inbound_make(
        c, (const char *[]){"stream", stream, "consumer", "live", "claim_idle_ms", "100", NULL});
    s = src_open(c, eager);
    src_fetch_n(s, recs, 3, 50);
    for (size_t i = 0; i < 3; i++)
        assert_text("claimed", "id", recs[i]->id, ids[i]);
    pending_of(rc, stream, "mqbridge", ids[0], consumer, sizeof consumer, &deliveries);
    ck_assert_str_eq(consumer, "live");
    ck_assert_int_eq(deliveries, 2);
    src_ack(s, recs, 3);
    ck_assert_int_eq(pending_count(rc, stream, "mqbridge"), 0);
    ops->source_close(s);
    del_keys(rc, stream, NULL);
    redisFree(rc);
    rule_free(c, patient);
    rule_free(c, eager);
    ops->destroy(c);
}
END_TEST

/* The dead-letter copy of an entry: its fields, then source_id, reason. */
static void assert_dead(const redisReply *entry, const char *const *fields, const char *id,
                        const char *reason)
{
    const redisReply *f = entry->element[1];
    size_t n = 0;
    for (; fields[n] != NULL; n += 2)
        assert_field_str(f, fields[n], fields[n + 1]);
    ck_assert_uint_eq(f->elements, n + 4);
    ck_assert_str_eq(f->element[n]->str, "source_id");
    ck_assert_str_eq(f->element[n + 1]->str, id);
    ck_assert_str_eq(f->element[n + 2]->str, "reason");
    ck_assert_str_eq(f->element[n + 3]->str, reason);
}

/* A record the engine skipped is acknowledged and copied with its reason;
 * an entry whose clientId holds a NUL byte never becomes a record: it is
 * copied and acknowledged at fetch time. */
START_TEST(test_source_dead_letter)
{
    char stream[128], dead[160], ids[4][48];
    struct import_record *recs[10];
    const char *bad_qos = "qoslevel '7' is not 0, 1 or 2";
    unique_name(stream, sizeof stream, "in-dlq");
    snprintf(dead, sizeof dead, "%s:dead", stream);
    redisContext *rc = client_shared();
    xadd(rc, stream, (const char *[]){"payload", "p0", "qoslevel", "1", NULL}, 0, ids[0], 48);
    xadd(rc, stream, (const char *[]){"payload", "p1", "qoslevel", "7", "extra", "x", NULL}, 0,
         ids[1], 48);
    const char *argv[] = {"XADD", stream, "*", "payload", "p2", "clientId", "a\0b"};
    const size_t lens[] = {4, strlen(stream), 1, 7, 2, 8, 3};
    redisReply *x = redisCommandArgv(rc, 7, argv, lens);
    ck_assert(x != NULL && x->type == REDIS_REPLY_STRING);
    snprintf(ids[2], 48, "%s", x->str);
    freeReplyObject(x);
    xadd(rc, stream, (const char *[]){"payload", "p3", NULL}, 0, ids[3], 48);
    struct connector *c = conn_make(env_url(), NULL, NULL);
    struct rule *r =
        inbound_make(c, (const char *[]){"stream", stream, "dead_letter_stream", dead, NULL});
    struct source *s = src_open(c, r);
    ck_assert_uint_eq(src_fetch(s, recs, 10, 1000), 3);
    assert_text("p0", "id", recs[0]->id, ids[0]);
    assert_text("p1", "id", recs[1]->id, ids[1]);
    assert_text("p3", "id", recs[2]->id, ids[3]);
    ck_assert_int_eq(pending_count(rc, stream, "mqbridge"), 3); /* p2 is acked already */
    skip(recs[1], bad_qos);
    src_ack(s, recs, 3);
    ck_assert_int_eq(pending_count(rc, stream, "mqbridge"), 0);

    redisReply *d = client_cmd(rc, (const char *[]){"XRANGE", dead, "-", "+", NULL});
    ck_assert_uint_eq(d->elements, 2);
    const redisReply *f = d->element[0]->element[1];
    assert_field_str(f, "payload", "p2");
    assert_field(f, "clientId", "a\0b", 3);
    assert_field_str(f, "source_id", ids[2]);
    assert_field_str(f, "reason", "field 'clientId' holds a NUL byte");
    assert_dead(d->element[1],
                (const char *[]){"payload", "p1", "qoslevel", "7", "extra", "x", NULL}, ids[1],
                bad_qos);
    freeReplyObject(d);
    ops->source_close(s);
    s = src_open(c, r);
    ck_assert_uint_eq(src_fetch(s, recs, 10, 100), 0);
    ops->source_close(s);
    del_keys(rc, stream, dead);
    redisFree(rc);
    rule_free(c, r);
    ops->destroy(c);
}
END_TEST

/* An entry deleted (XDEL) while pending is gone: the reopened source
 * acknowledges it and leaves a copy with its id and the reason. */
START_TEST(test_source_dead_letter_deleted)
{
    char stream[128], dead[160], ids[2][48];
    struct import_record *recs[10];
    unique_name(stream, sizeof stream, "in-dlq-del");
    snprintf(dead, sizeof dead, "%s:dead", stream);
    redisContext *rc = client_shared();
    xadd_n(rc, stream, "f", 2, ids);
    struct connector *c = conn_make(env_url(), NULL, NULL);
    struct rule *r =
        inbound_make(c, (const char *[]){"stream", stream, "dead_letter_stream", dead, NULL});
    struct source *s = src_open(c, r);
    ck_assert_uint_eq(src_fetch(s, recs, 10, 1000), 2);
    recs_free(recs, 2);
    ops->source_close(s); /* crash */
    ck_assert_int_eq(client_int(rc, (const char *[]){"XDEL", stream, ids[0], NULL}), 1);
    s = src_open(c, r);
    ck_assert_uint_eq(src_fetch(s, recs, 10, 1000), 1);
    assert_payload(recs[0], "f1");
    ck_assert_int_eq(pending_count(rc, stream, "mqbridge"), 1);
    src_ack(s, recs, 1);
    ck_assert_int_eq(pending_count(rc, stream, "mqbridge"), 0);
    redisReply *d = client_cmd(rc, (const char *[]){"XRANGE", dead, "-", "+", NULL});
    ck_assert_uint_eq(d->elements, 1);
    assert_dead(d->element[0], (const char *[]){NULL}, ids[0],
                "deleted from the stream before it was delivered");
    freeReplyObject(d);
    ops->source_close(s);
    del_keys(rc, stream, dead);
    redisFree(rc);
    rule_free(c, r);
    ops->destroy(c);
}
END_TEST

/* No dead-letter stream, or one whose key holds a string (WRONGTYPE):
 * skipped records are acknowledged all the same (never retried for ever). */
START_TEST(test_source_dead_letter_broken)
{
    char stream[128], dead[160];
    struct import_record *recs[10];
    unique_name(stream, sizeof stream, "in-dlq-broken");
    snprintf(dead, sizeof dead, "%s:dead", stream);
    redisContext *rc = client_shared();
    freeReplyObject(client_cmd(rc, (const char *[]){"SET", dead, "a string", NULL}));
    xadd_n(rc, stream, "g", 2, NULL);
    struct connector *c = conn_make(env_url(), NULL, NULL);
    struct rule *with =
        inbound_make(c, (const char *[]){"stream", stream, "dead_letter_stream", dead, NULL});
    struct rule *without = inbound_make(c, (const char *[]){"stream", stream, NULL});
    struct source *s = src_open(c, with);
    ck_assert_uint_eq(src_fetch(s, recs, 1, 1000), 1);
    skip(recs[0], "too large");
    src_ack(s, recs, 1);
    ops->source_close(s);
    s = src_open(c, without);
    ck_assert_uint_eq(src_fetch(s, recs, 1, 1000), 1);
    assert_payload(recs[0], "g1");
    skip(recs[0], "too large");
    src_ack(s, recs, 1);
    ck_assert_int_eq(pending_count(rc, stream, "mqbridge"), 0);
    redisReply *v = client_cmd(rc, (const char *[]){"GET", dead, NULL});
    ck_assert_str_eq(v->str, "a string");
    freeReplyObject(v);
    ops->source_close(s);
    del_keys(rc, stream, dead);
    redisFree(rc);
    rule_free(c, with);
    rule_free(c, without);
    ops->destroy(c);
}
END_TEST

/* lag = pending + unread: exact from Redis 7's group lag; an upper bound
 * (XLEN) when Redis cannot tell (an XDEL in the unread part); 0 once
 * everything was read and acknowledged. */
START_TEST(test_source_lag)
{
    char stream[128], ids[10][48];
    struct import_record *recs[10];
    unique_name(stream, sizeof stream, "in-lag");
    redisContext *rc = client_shared();
    xadd_n(rc, stream, "l", 10, ids);
    struct connector *c = conn_make(env_url(), NULL, NULL);
    struct rule *r = inbound_make(c, (const char *[]){"stream", stream, NULL});
    struct source *s = src_open(c, r);
    ck_assert_int_eq(ops->source_lag(s), 10);
    ck_assert_uint_eq(src_fetch(s, recs, 4, 1000), 4);
    ck_assert_int_eq(ops->source_lag(s), 10); /* 4 pending + 6 unread */
    src_ack(s, recs, 4);
    ck_assert_int_eq(ops->source_lag(s), 6);
    ck_assert_uint_eq(src_fetch(s, recs, 10, 1000), 6);
    src_ack(s, recs, 6);
    ck_assert_int_eq(ops->source_lag(s), 0);
    xadd_n(rc, stream, "more", 3, NULL);
    ck_assert_int_eq(ops->source_lag(s), 3);
    ops->source_close(s);
    rule_free(c, r);
    del_keys(rc, stream, NULL);

    /* a tombstone in the unread part: Redis reports no lag */
    unique_name(stream, sizeof stream, "in-lag-del");
    xadd_n(rc, stream, "l", 10, ids);
    ck_assert_int_eq(client_int(rc, (const char *[]){"XDEL", stream, ids[5], NULL}), 1);
    r = inbound_make(c, (const char *[]){"stream", stream, NULL});
    s = src_open(c, r);
    ck_assert_int_eq(ops->source_lag(s), 9);
    ck_assert_uint_eq(src_fetch(s, recs, 3, 1000), 3);
    src_ack(s, recs, 3);
    int64_t lag = ops->source_lag(s);
    ck_assert_msg(lag >= 6 && lag <= 9, "lag %" PRId64 " (6 unread)", lag);
    ck_assert_uint_eq(src_fetch(s, recs, 10, 1000), 6);
    src_ack(s, recs, 6);
    ck_assert_int_eq(ops->source_lag(s), 0);
    ops->source_close(s);
    del_keys(rc, stream, NULL);
    redisFree(rc);
    rule_free(c, r);
    ops->destroy(c);
}
END_TEST

/* ---- inbound: pubsub mode -------------------------------------------------- */

/* Messages published while subscribed arrive (payload only, binary safe,
 * in order); one published while closed is lost: best effort. */
START_TEST(test_source_pubsub)
{
    char chan[128], err[256];
    struct import_record *recs[10];
    unique_name(chan, sizeof chan, "in-chan");
    redisContext *rc = client_shared();
    struct connector *c = conn_make(env_url(), NULL, NULL);
    struct rule *r = inbound_make(c, (const char *[]){"mode", "pubsub", "channel", chan, NULL});
    struct source *s = src_open(c, r);
    const char *argv[] = {"PUBLISH", chan, "a\0b"};
    const size_t lens[] = {7, strlen(chan), 3};
    redisReply *p = redisCommandArgv(rc, 3, argv, lens);
    ck_assert(p != NULL && p->type == REDIS_REPLY_INTEGER && p->integer == 1);
    freeReplyObject(p);
    ck_assert_uint_eq(src_fetch(s, recs, 10, 2000), 1);
    ck_assert_uint_eq(recs[0]->payload_len, 3);
    ck_assert_mem_eq(recs[0]->payload, "a\0b", 3);
    ck_assert(recs[0]->sub_topic == NULL && recs[0]->qos == NULL && recs[0]->client_id == NULL);
    src_ack(s, recs, 1); /* nothing to acknowledge: OK */
    const char *three[] = {"one", "two", "three"};
    for (size_t i = 0; i < 3; i++)
        ck_assert_int_eq(client_int(rc, (const char *[]){"PUBLISH", chan, three[i], NULL}), 1);
    src_fetch_n(s, recs, 3, 1000);
    for (size_t i = 0; i < 3; i++)
        assert_payload(recs[i], three[i]);
    recs_free(recs, 3);
    ck_assert_int_eq(ops->source_lag(s), -1);
    ops->source_close(s);

    ck_assert_int_eq(client_int(rc, (const char *[]){"PUBLISH", chan, "lost", NULL}), 0);
    s = src_open(c, r);
    ck_assert_int_eq(client_int(rc, (const char *[]){"PUBLISH", chan, "after", NULL}), 1);
    ck_assert_uint_eq(src_fetch(s, recs, 10, 2000), 1);
    assert_payload(recs[0], "after");
    recs_free(recs, 1);
    double t0 = now_s();
    size_t n = 9;
    ck_assert_int_eq(ops->source_fetch(s, recs, 10, &n, 200, err, sizeof err), CONNECTOR_OK);
    ck_assert_uint_eq(n, 0);
    ck_assert(now_s() - t0 >= 0.15 && now_s() - t0 < 1.5);
    ops->source_close(s);
    redisFree(rc);
    rule_free(c, r);
    ops->destroy(c);
}
END_TEST

/* ---- inbound: outage ---------------------------------------------------------- */

/* Unreachable: open RETRY at once. Frozen: fetch RETRY after the command
 * timeout plus the block. Gone: ack and Pub/Sub fetch RETRY, open RETRY.
 * Restarted on the same port: open and fetch work again. */
START_TEST(test_source_retry_and_recovery)
{
    char url[128], stream[128], err[512];
    struct import_record *recs[10];
    struct source *s = NULL;
    size_t n;
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", free_port());
    struct connector *c = conn_make(url, "300", "500");
    struct rule *r = inbound_make(c, (const char *[]){"stream", "s", NULL});
    double t0 = now_s();
    ck_assert_int_eq(ops->source_open(c, r, &s, err, sizeof err), CONNECTOR_RETRY);
    ck_assert(s == NULL && now_s() - t0 < 1.0);
    ck_assert_msg(strstr(err, "cannot connect to 127.0.0.1:"), "err: %s", err);
    rule_free(c, r);
    ops->destroy(c);

    ck_assert_msg(priv_dir[0] != '\0', "mkdtemp failed");
    priv_port = free_port();
    priv_start();
    snprintf(url, sizeof url, "redis://:%s@127.0.0.1:%d", priv_password, priv_port);
    unique_name(stream, sizeof stream, "in-outage");
    c = conn_make(url, "300", "500");
    r = inbound_make(c, (const char *[]){"stream", stream, NULL});
    struct rule *rp = inbound_make(c, (const char *[]){"mode", "pubsub", "channel", "ch", NULL});
    redisContext *rc = client_at("127.0.0.1", priv_port, priv_password);
    s = src_open(c, r);
    ck_assert_uint_eq(src_fetch(s, recs, 10, 100), 0); /* past the pending and claim reads */
    ck_assert_int_eq(kill(priv_pid, SIGSTOP), 0);
    t0 = now_s();
    ck_assert_int_eq(ops->source_fetch(s, recs, 10, &n, 200, err, sizeof err), CONNECTOR_RETRY);
    ck_assert_uint_eq(n, 0);
    double took = now_s() - t0;
    ck_assert_msg(took >= 0.6 && took < 2.5, "RETRY after %.2f s", took);
    ck_assert_msg(strstr(err, "XREADGROUP"), "err: %s", err);
    ops->source_close(s);
    ck_assert_int_eq(kill(priv_pid, SIGCONT), 0);

    s = src_open(c, r);
    struct source *sp = src_open(c, rp);
    xadd_n(rc, stream, "o", 2, NULL);
    ck_assert_uint_eq(src_fetch(s, recs, 10, 1000), 2);
    priv_kill();
    recs[0]->outcome = recs[1]->outcome = IMPORT_PUBLISHED;
    ck_assert_int_eq(ops->source_ack(s, recs, 2, err, sizeof err), CONNECTOR_RETRY);
    ck_assert_msg(strstr(err, "XACK"), "err: %s", err);
    recs_free(recs, 2);
    ck_assert_int_eq(ops->source_fetch(sp, recs, 10, &n, 1000, err, sizeof err), CONNECTOR_RETRY);
    ck_assert_uint_eq(n, 0);
    ck_assert_int_eq(ops->source_lag(s), -1);
    ops->source_close(s);
    ops->source_close(sp);
    ck_assert_int_eq(ops->source_open(c, r, &s, err, sizeof err), CONNECTOR_RETRY);
    redisFree(rc);

    priv_start(); /* no persistence: empty */
    rc = client_at("127.0.0.1", priv_port, priv_password);
    s = src_open(c, r);
    xadd_n(rc, stream, "back", 1, NULL);
    ck_assert_uint_eq(src_fetch(s, recs, 10, 1000), 1);
    assert_payload(recs[0], "back0");
    src_ack(s, recs, 1);
    ops->source_close(s);
    redisFree(rc);
    rule_free(c, r);
    rule_free(c, rp);
    ops->destroy(c);
    priv_kill();
}
END_TEST

/* ---- inbound: throughput ---------------------------------------------------- */

START_TEST(test_source_throughput)
{
    enum { N = 100000, BATCH = 1000, PUBSUB_N = 20000 };
    char stream[128], chan[128], payload[65];
    static struct import_record *recs[BATCH];
    memset(payload, 'p', 64);
    payload[64] = '\0';
    unique_name(stream, sizeof stream, "in-perf");
    redisContext *rc = client_shared();
    for (size_t i = 0; i < N; i++) {
        const char *argv[] = {"XADD", stream, "*", "payload", payload};
        ck_assert_int_eq(redisAppendCommandArgv(rc, 5, argv, NULL), REDIS_OK);
    }
    for (size_t i = 0; i < N; i++) {
        redisReply *x = NULL;
        ck_assert_int_eq(redisGetReply(rc, (void **)&x), REDIS_OK);
        freeReplyObject(x);
    }
    struct connector *c = conn_make(env_url(), NULL, NULL);
    struct rule *r = inbound_make(c, (const char *[]){"stream", stream, NULL});
    struct source *s = src_open(c, r);
    size_t got = 0;
    double t0 = now_s();
    while (got < N) {
        size_t n = src_fetch(s, recs, BATCH, 1000);
        ck_assert_uint_gt(n, 0);
        ck_assert_uint_eq(recs[0]->payload_len, 64);
        got += n;
        src_ack(s, recs, n);
    }
    double took = now_s() - t0;
    printf("redis source: %d entries of 64 bytes, fetch + XACK in batches of %d: %.2f s, %.0f "
           "records/s\n",
           N, BATCH, took, N / took);
    ck_assert_int_eq(pending_count(rc, stream, "mqbridge"), 0);
    ck_assert_int_eq(ops->source_lag(s), 0);
    ops->source_close(s);
    rule_free(c, r);
    del_keys(rc, stream, NULL);

    unique_name(chan, sizeof chan, "in-perf-chan");
    r = inbound_make(c, (const char *[]){"mode", "pubsub", "channel", chan, NULL});
    s = src_open(c, r);
    t0 = now_s();
    for (size_t i = 0; i < PUBSUB_N; i++) {
        const char *argv[] = {"PUBLISH", chan, payload};
        ck_assert_int_eq(redisAppendCommandArgv(rc, 3, argv, NULL), REDIS_OK);
    }
    for (size_t i = 0; i < PUBSUB_N; i++) {
        redisReply *x = NULL;
        ck_assert_int_eq(redisGetReply(rc, (void **)&x), REDIS_OK);
        ck_assert_int_eq(x->integer, 1);
        freeReplyObject(x);
    }
    for (got = 0; got < PUBSUB_N;) {
        size_t n = src_fetch(s, recs, BATCH, 1000);
        ck_assert_uint_gt(n, 0);
        got += n;
        src_ack(s, recs, n);
    }
    took = now_s() - t0;
    printf("redis source: %d Pub/Sub messages of 64 bytes (PUBLISH + fetch): %.2f s, %.0f "
           "records/s\n",
           PUBSUB_N, took, PUBSUB_N / took);
    ck_assert_uint_eq(got, PUBSUB_N);
    ops->source_close(s);
    redisFree(rc);
    rule_free(c, r);
    ops->destroy(c);
}
END_TEST

static Suite *redis_suite(void)
{
    Suite *s = suite_create("redis");
    TCase *tc = tcase_create("config");
    tcase_add_loop_test(tc, test_settings_validation, 0,
                        sizeof settings_cases / sizeof settings_cases[0]);
    tcase_add_loop_test(tc, test_rule_validation, 0, sizeof rule_cases / sizeof rule_cases[0]);
    tcase_add_loop_test(tc, test_inbound_validation, 0,
                        sizeof inbound_cases / sizeof inbound_cases[0]);
    suite_add_tcase(s, tc);
    tc = tcase_create("server");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_stream_read_back);
    tcase_add_test(tc, test_lpush_and_publish);
    tcase_add_test(tc, test_stream_maxlen);
    tcase_add_test(tc, test_status_state_rule);
    tcase_add_test(tc, test_status_first_event_offline);
    tcase_add_test(tc, test_reject_wrongtype);
    tcase_add_test(tc, test_reject_across_chunks);
    tcase_add_test(tc, test_retry_unreachable);
    tcase_add_test(tc, test_throughput);
    suite_add_tcase(s, tc);
    tc = tcase_create("private");
    tcase_set_timeout(tc, 60);
    tcase_add_unchecked_fixture(tc, priv_setup, priv_teardown);
    tcase_add_test(tc, test_outage_and_recovery);
    tcase_add_test(tc, test_send_timeout);
    tcase_add_test(tc, test_auth_unix_noscript);
    tcase_add_test(tc, test_killed_mid_batch);
    tcase_add_test(tc, test_status_noscript_chunks);
    tcase_add_test(tc, test_source_retry_and_recovery);
    suite_add_tcase(s, tc);
    tc = tcase_create("source");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_source_stream_fields);
    tcase_add_test(tc, test_source_crash_redelivery);
    tcase_add_test(tc, test_source_claim);
    tcase_add_test(tc, test_source_dead_letter);
    tcase_add_test(tc, test_source_dead_letter_deleted);
    tcase_add_test(tc, test_source_dead_letter_broken);
    tcase_add_test(tc, test_source_lag);
    tcase_add_test(tc, test_source_pubsub);
    tcase_add_test(tc, test_source_throughput);
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(redis_suite)
