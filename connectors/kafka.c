/* Kafka connector (librdkafka producer).
 *
 * Rule: export() produces every record of the batch, then serves delivery
 * reports until each record has one (or a deadline of message.timeout.ms
 * plus a margin passes), and acknowledges the longest prefix whose reports
 * say "delivered" (acks=all by default). Examples, for a batch of 4:
 *   reports ok ok ok ok                      -> OK, acked 4
 *   produce() of #2 says MSG_SIZE_TOO_LARGE  -> REJECT, acked 2 (#3 never sent)
 *   reports ok timeout timeout timeout       -> RETRY, acked 1
 *   reports ok ok INVALID_RECORD ok          -> REJECT, acked 2; #3 is
 *     remembered as delivered so the engine's re-offer does not duplicate it
 *
 * Per-client order: the key defaults to the client ID, so one client's
 * records go to one partition, and the idempotent producer keeps their
 * order across internal retries (enable.idempotence=true by default).
 *
 * Threads: create/compile run on the engine loop and do no network I/O
 * (create builds a throwaway producer without brokers only to validate the
 * librdkafka configuration). open/export/close run on the connector thread;
 * delivery reports are served there too (rd_kafka_poll), so the batch state
 * needs no lock. */
#include "connector.h"

#include <inttypes.h>
#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../common/buf.h"
#include "../common/log.h"
#include "../rules/template.h"

enum {
    KAFKA_CONNECT_TIMEOUT_MS = 5000, /* default of connect_timeout_ms */
    KAFKA_REPORT_MARGIN_MS = 5000,   /* waited beyond message.timeout.ms */
    KAFKA_PURGE_WAIT_MS = 2000,      /* for the reports of purged messages */
    KAFKA_TOPIC_MAX = 249,
};

static const struct kv_key kafka_settings[] = {
    {"brokers", KV_SCALAR, KV_REQUIRED, "bootstrap brokers: host:port[,host:port...]"},
    {"options", KV_MAP, 0, "librdkafka producer properties, applied after the defaults"},
    {"connect_timeout_ms", KV_SCALAR, 0,
     "how long open() waits for the cluster's metadata (default 5000)"},
    {NULL, KV_SCALAR, 0, NULL},
};

static const struct kv_key kafka_target_keys[] = {
    {"topic", KV_SCALAR, KV_REQUIRED, "Kafka topic: a name or a template (\"iot-${group}\")"},
    {"key", KV_SCALAR, 0, "record key template (default \"${clientid}\")"},
    {NULL, KV_SCALAR, 0, NULL},
};

/* Applied before the user's `options`, which may override any of them. */
static const struct {
    const char *name, *value;
} kafka_defaults[] = {
    {"enable.idempotence", "true"},
    {"acks", "all"},
    {"linger.ms", "5"},
    {"batch.num.messages", "10000"},
    {"message.timeout.ms", "30000"},
    {"socket.keepalive.enable", "true"},
    /* the Java client's partitioner: same key -> same partition as Java */
    {"partitioner", "murmur2_random"},
    {"client.id", "mqbridge"},
};

/* The delivery state of one record of the current batch. */
struct kafka_slot {
    rd_kafka_resp_err_t err;
    bool reported;
};

struct kafka_conn {
    char *name;
    char *brokers;
    rd_kafka_conf_t *conf; /* validated; duplicated by each open() */
    int connect_timeout_ms;
    int report_wait_ms; /* message.timeout.ms + margin */
    rd_kafka_t *rk;     /* NULL while closed */
    /* The batch being exported (connector thread only). */
    struct kafka_slot *slots;
    size_t slots_cap, batch_n, outstanding;
    /* Records after a rejected one that were delivered already: a re-offer
     * starting at skip_first (seqno) is acknowledged up to skip_last
     * without producing them again. */
    bool skip_valid;
    uint64_t skip_first, skip_last;
    struct buf topic, key; /* rendering scratch, NUL-terminated */
};

struct kafka_target {
    enum rule_type type;
    struct template *topic;
    struct template *key;
};

static struct kafka_conn *kafka_of(struct connector *c)
{
    return (struct kafka_conn *)(void *)c;
}

static int64_t kafka_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- librdkafka callbacks ----------------------------------------------- */

/* syslog levels as librdkafka uses them */
static void kafka_on_log(const rd_kafka_t *rk, int level, const char *fac, const char *text)
{
    const struct kafka_conn *kc = rd_kafka_opaque(rk);
    enum log_level l = level <= 3   ? LOG_ERROR
                       : level == 4 ? LOG_WARN
                       : level == 5 ? LOG_NOTICE
                       : level == 6 ? LOG_INFO
                                    : LOG_DEBUG;
    if (l == LOG_DEBUG && log_get_level() > LOG_DEBUG)
        return;
    log_msg(l, "kafka '%s': %s: %s", kc ? kc->name : "?", fac, text);
}

/* The throwaway validation producer has no brokers and says so: silence. */
static void kafka_on_log_quiet(const rd_kafka_t *rk, int level, const char *fac, const char *text)
{
}

/* Served by rd_kafka_poll on the connector thread. The opaque is the
 * record's index in the current batch; reports outside a batch (none are
 * expected: every export waits for or purges its own) are ignored. */
static void kafka_on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    struct kafka_conn *kc = opaque;
    size_t i = (size_t)(uintptr_t)m->_private;
    if (kc == NULL || i >= kc->batch_n || kc->slots[i].reported)
        return;
    kc->slots[i].reported = true;
    kc->slots[i].err = m->err;
    kc->outstanding--;
}

/* ---- configuration (engine loop) ---------------------------------------- */

static int kafka_conf_put(rd_kafka_conf_t *conf, const char *name, const char *value, char *why,
                          size_t whylen)
{
    return rd_kafka_conf_set(conf, name, value, why, whylen) == RD_KAFKA_CONF_OK ? 0 : -1;
}

/* The user's options: scalars only; brokers come from `brokers`. */
static int kafka_conf_options(rd_kafka_conf_t *conf, const struct kvmap *opts, char *err,
                              size_t errlen)
{
    char why[512];
    for (unsigned i = 0; opts != NULL && i < opts->count; i++) {
        const struct kv *o = &opts->items[i];
        if (o->value == NULL)
            return kv_error(err, errlen, opts, o, "kafka option '%s': expected a scalar value",
                            o->key);
        if (strcmp(o->key, "bootstrap.servers") == 0 || strcmp(o->key, "metadata.broker.list") == 0)
            return kv_error(err, errlen, opts, o, "kafka option '%s': set `brokers` instead",
                            o->key);
        if (kafka_conf_put(conf, o->key, o->value, why, sizeof why) != 0)
            return kv_error(err, errlen, opts, o, "kafka option '%s': %s", o->key, why);
    }
    return 0;
}

/* Some settings only clash inside rd_kafka_new (e.g. acks=1 with
 * idempotence): build a producer without brokers (no network I/O) to find
 * them at configuration time. */
static int kafka_conf_validate(const rd_kafka_conf_t *conf, const struct kvmap *settings, char *err,
                               size_t errlen)
{
    char why[512];
    rd_kafka_conf_t *probe = rd_kafka_conf_dup(conf);
    if (probe == NULL)
        return kv_error(err, errlen, settings, NULL, "kafka: out of memory");
    rd_kafka_conf_set_log_cb(probe, kafka_on_log_quiet);
    if (kafka_conf_put(probe, "bootstrap.servers", "", why, sizeof why) != 0) {
        rd_kafka_conf_destroy(probe);
        return kv_error(err, errlen, settings, NULL, "kafka: %s", why);
    }
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, probe, why, sizeof why);
    if (rk == NULL) {
        rd_kafka_conf_destroy(probe);
        const struct kv *o = kv_find(settings, "options");
        return kv_error(err, errlen, o && o->map ? o->map : settings, NULL, "kafka options: %s",
                        why);
    }
    rd_kafka_destroy(rk);
    return 0;
}

static int kafka_conf_build(struct kafka_conn *kc, const struct kvmap *settings, char *err,
                            size_t errlen)
{
    char why[512], val[32];
    size_t vlen = sizeof val;
    kc->conf = rd_kafka_conf_new();
    for (size_t i = 0; i < sizeof kafka_defaults / sizeof kafka_defaults[0]; i++)
        if (kafka_conf_put(kc->conf, kafka_defaults[i].name, kafka_defaults[i].value, why,
                           sizeof why) != 0)
            return kv_error(err, errlen, settings, NULL, "kafka default %s: %s",
                            kafka_defaults[i].name, why);
    const struct kv *brokers = kv_find(settings, "brokers");
    if (brokers->value[0] == '\0' ||
        kafka_conf_put(kc->conf, "bootstrap.servers", brokers->value, why, sizeof why) != 0)
        return kv_error(err, errlen, settings, brokers, "brokers: expected host:port[,host:port]");
    const struct kv *opts = kv_find(settings, "options");
    if (kafka_conf_options(kc->conf, opts ? opts->map : NULL, err, errlen) != 0)
        return -1;
    rd_kafka_conf_set_opaque(kc->conf, kc);
    rd_kafka_conf_set_log_cb(kc->conf, kafka_on_log);
    rd_kafka_conf_set_dr_msg_cb(kc->conf, kafka_on_delivery);
    long timeout = 30000;
    if (rd_kafka_conf_get(kc->conf, "message.timeout.ms", val, &vlen) == RD_KAFKA_CONF_OK)
        timeout = strtol(val, NULL, 10);
    /* 0 means "forever" to librdkafka; export() still has to come back. */
    kc->report_wait_ms = (int)(timeout > 0 ? timeout : 30000) + KAFKA_REPORT_MARGIN_MS;
    return kafka_conf_validate(kc->conf, settings, err, errlen);
}

static void kafka_destroy(struct connector *c);

static int kafka_create(const char *name, const struct kvmap *settings, struct connector **out,
                        char *err, size_t errlen)
{
    char where[128];
    uint64_t timeout = KAFKA_CONNECT_TIMEOUT_MS;
    struct kafka_conn *kc = NULL;
    *out = NULL;
    snprintf(where, sizeof where, "connector '%s'", name);
    if (kv_check(settings, kafka_settings, where, err, errlen) != 0)
        goto fail;
    const struct kv *t = kv_find(settings, "connect_timeout_ms");
    if (t != NULL && kv_uint(t, 1, 600000, &timeout) != 0) {
        kv_error(err, errlen, settings, t, "connect_timeout_ms: expected 1..600000");
        goto fail;
    }
    kc = calloc(1, sizeof *kc);
    if (kc == NULL || (kc->name = strdup(name)) == NULL ||
        (kc->brokers = strdup(kv_str(settings, "brokers", ""))) == NULL) {
        kv_error(err, errlen, settings, NULL, "%s: out of memory", where);
        goto fail;
    }
    kc->connect_timeout_ms = (int)timeout;
    if (kafka_conf_build(kc, settings, err, errlen) != 0)
        goto fail;
    *out = (struct connector *)(void *)kc;
    return 0;
fail:
    kafka_destroy((struct connector *)(void *)kc);
    return -1;
}

static void kafka_close(struct connector *c);

static void kafka_destroy(struct connector *c)
{
    struct kafka_conn *kc = kafka_of(c);
    if (kc == NULL)
        return;
    kafka_close(c);
    if (kc->conf != NULL)
        rd_kafka_conf_destroy(kc->conf);
    free(kc->slots);
    buf_free(&kc->topic);
    buf_free(&kc->key);
    free(kc->brokers);
    free(kc->name);
    free(kc);
}

/* ---- rules (engine loop) ------------------------------------------------ */

/* Kafka's legal topic names: 1..249 of [A-Za-z0-9._-], not "." or "..". */
static bool kafka_topic_valid(const char *s, size_t len)
{
    if (len == 0 || len > KAFKA_TOPIC_MAX || strcmp(s, ".") == 0 || strcmp(s, "..") == 0)
        return false;
    for (size_t i = 0; i < len; i++) {
        char ch = s[i];
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                  (ch >= '0' && ch <= '9') || ch == '.' || ch == '_' || ch == '-';
        if (!ok)
            return false;
    }
    return true;
}

static int kafka_template(const struct rule *r, const char *key, const char *def,
                          struct template **out, char *err, size_t errlen)
{
    char why[256];
    const struct kv *item = kv_find(r->options, key);
    const char *text = item ? item->value : def;
    if (template_compile(text, out, why, sizeof why) != 0)
        return kv_error(err, errlen, r->options, item, "rule '%s': %s: %s", r->name, key, why);
    return 0;
}

/* A literal topic is checked now; a rendered one at export time. */
static int kafka_check_literal_topic(const struct rule *r, const struct template *t, char *err,
                                     size_t errlen)
{
    struct buf b = {0};
    const struct template_input none = {.client_id = "", .topic = ""};
    int rc = 0;
    if (!template_is_literal(t))
        return 0;
    if (template_render(t, &none, &b) != 0 || buf_append_u8(&b, 0) != 0)
        rc = kv_error(err, errlen, r->options, NULL, "rule '%s': out of memory", r->name);
    else if (!kafka_topic_valid((const char *)b.data, b.len - 1))
        rc = kv_error(err, errlen, r->options, kv_find(r->options, "topic"),
                      "rule '%s': topic '%s' is not a valid Kafka topic name "
                      "(1..249 of A-Z a-z 0-9 . _ -)",
                      r->name, (const char *)b.data);
    buf_free(&b);
    return rc;
}

static void kafka_release(struct connector *c, void *compiled);

static int kafka_compile(struct connector *c, const struct rule *r, void **compiled, char *err,
                         size_t errlen)
{
    char where[128];
    struct kafka_target *t = NULL;
    *compiled = NULL;
    if (r->type == RULE_INBOUND) {
        kv_error(err, errlen, r->options, NULL,
                 "rule '%s': inbound rules from a kafka connector are not supported", r->name);
        goto fail;
    }
    snprintf(where, sizeof where, "rule '%s'", r->name);
    if (kv_check(r->options, kafka_target_keys, where, err, errlen) != 0)
        goto fail;
    if ((t = calloc(1, sizeof *t)) == NULL) {
        kv_error(err, errlen, r->options, NULL, "%s: out of memory", where);
        goto fail;
    }
    t->type = r->type;
    if (kafka_template(r, "topic", NULL, &t->topic, err, errlen) != 0 ||
        kafka_check_literal_topic(r, t->topic, err, errlen) != 0 ||
        kafka_template(r, "key", "${clientid}", &t->key, err, errlen) != 0)
        goto fail;
    *compiled = t;
    return 0;
fail:
    kafka_release(c, t);
    return -1;
}

static void kafka_release(struct connector *c, void *compiled)
{
    struct kafka_target *t = compiled;
    if (t == NULL)
        return;
    template_free(t->topic);
    template_free(t->key);
    free(t);
}

/* ---- connection (connector thread) -------------------------------------- */

/* Creates the producer and asks the cluster for its brokers, so that a
 * down cluster is a quick RETRY here rather than a slow one in export(). */
static int kafka_open(struct connector *c, char *err, size_t errlen)
{
    struct kafka_conn *kc = kafka_of(c);
    const struct rd_kafka_metadata *md = NULL;
    char why[512];
    if (kc->rk != NULL)
        return 0;
    rd_kafka_conf_t *conf = rd_kafka_conf_dup(kc->conf);
    kc->rk = conf ? rd_kafka_new(RD_KAFKA_PRODUCER, conf, why, sizeof why) : NULL;
    if (kc->rk == NULL) {
        if (conf != NULL)
            rd_kafka_conf_destroy(conf);
        else
            snprintf(why, sizeof why, "out of memory");
        snprintf(err, errlen, "kafka '%s': cannot create the producer: %s", kc->name, why);
        return CONNECTOR_RETRY;
    }
    rd_kafka_resp_err_t e = rd_kafka_metadata(kc->rk, 0, NULL, &md, kc->connect_timeout_ms);
    if (e == RD_KAFKA_RESP_ERR_NO_ERROR && md->broker_cnt > 0) {
        rd_kafka_metadata_destroy(md);
        return 0;
    }
    snprintf(err, errlen, "kafka '%s': brokers %s unreachable within %d ms: %s", kc->name,
             kc->brokers, kc->connect_timeout_ms,
             e ? rd_kafka_err2str(e) : "no broker in the metadata");
    if (md != NULL)
        rd_kafka_metadata_destroy(md);
    rd_kafka_destroy(kc->rk);
    kc->rk = NULL;
    return CONNECTOR_RETRY;
}

static void kafka_close(struct connector *c)
{
    struct kafka_conn *kc = kafka_of(c);
    if (kc == NULL || kc->rk == NULL)
        return;
    kc->batch_n = 0; /* late reports belong to no batch */
    if (rd_kafka_flush(kc->rk, 1000) != RD_KAFKA_RESP_ERR_NO_ERROR) {
        rd_kafka_purge(kc->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
        rd_kafka_flush(kc->rk, 1000);
    }
    rd_kafka_destroy(kc->rk);
    kc->rk = NULL;
    kc->skip_valid = false;
}

/* ---- export (connector thread) ------------------------------------------ */

static int kafka_render(struct buf *b, const struct template *t, const struct template_input *in)
{
    buf_reset(b);
    if (template_render(t, in, b) != 0 || buf_append_u8(b, 0) != 0)
        return -1;
    b->len--; /* NUL kept after len */
    return 0;
}

static void kafka_input(const struct export_record *rec, struct template_input *in)
{
    *in = (struct template_input){
        .client_id = rec->client_id ? rec->client_id : "",
        .topic = rec->topic ? rec->topic : "",
        .qos = rec->qos,
        .msg_id = rec->msg_id,
        .time_ms = rec->time_ms,
        .payload = rec->payload,
        .payload_len = rec->payload_len,
    };
}

/* One produce call; the message and headers are copied by librdkafka. */
static rd_kafka_resp_err_t kafka_produce_rec(struct kafka_conn *kc, const struct export_record *rec,
                                             size_t index)
{
    char msgid[17], qos[4], ts[24], seq[24];
    const char *cid = rec->client_id ? rec->client_id : "";
    const void *key = kc->key.len ? kc->key.data : NULL;
    void *opaque = (void *)(uintptr_t)index;
    snprintf(ts, sizeof ts, "%" PRId64, rec->time_ms);
    if (rec->kind == RECORD_STATUS) {
        snprintf(seq, sizeof seq, "%" PRIu64, rec->msg_id);
        const char *ev = rec->event_type ? rec->event_type : "";
        return rd_kafka_producev(
            kc->rk, RD_KAFKA_V_TOPIC((const char *)kc->topic.data),
            RD_KAFKA_V_KEY(key, kc->key.len),
            RD_KAFKA_V_VALUE((void *)rec->payload, rec->payload_len),
            RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_TIMESTAMP(rec->time_ms),
            RD_KAFKA_V_HEADER("tag", ev, -1), RD_KAFKA_V_HEADER("eventType", ev, -1),
            RD_KAFKA_V_HEADER("seq", seq, -1), RD_KAFKA_V_HEADER("clientId", cid, -1),
            RD_KAFKA_V_HEADER("timestamp", ts, -1), RD_KAFKA_V_OPAQUE(opaque), RD_KAFKA_V_END);
    }
    snprintf(msgid, sizeof msgid, "%016" PRIx64, rec->msg_id);
    snprintf(qos, sizeof qos, "%u", (unsigned)rec->qos);
    return rd_kafka_producev(
        kc->rk, RD_KAFKA_V_TOPIC((const char *)kc->topic.data), RD_KAFKA_V_KEY(key, kc->key.len),
        RD_KAFKA_V_VALUE((void *)rec->payload, rec->payload_len),
        RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_TIMESTAMP(rec->time_ms),
        RD_KAFKA_V_HEADER("msgid", msgid, -1),
        RD_KAFKA_V_HEADER("mqttTopic", rec->topic ? rec->topic : "", -1),
        RD_KAFKA_V_HEADER("clientId", cid, -1), RD_KAFKA_V_HEADER("qos", qos, -1),
        RD_KAFKA_V_HEADER("timestamp", ts, -1), RD_KAFKA_V_OPAQUE(opaque), RD_KAFKA_V_END);
}

/* Renders and produces recs[i]. A full local queue is back-pressure: serve
 * reports and try again until the deadline. Returns the error that stops
 * the batch at i (NO_ERROR when produced); *detail names a local cause. */
static rd_kafka_resp_err_t kafka_send(struct kafka_conn *kc, const struct export_record *rec,
                                      size_t i, int64_t deadline, const char **detail)
{
    const struct kafka_target *t = rec->rule ? rec->rule->compiled : NULL;
    struct template_input in;
    *detail = NULL;
    if (t == NULL || (rec->kind == RECORD_STATUS) != (t->type == RULE_STATUS)) {
        *detail = "the record does not match its rule's target";
        return RD_KAFKA_RESP_ERR__INVALID_ARG;
    }
    kafka_input(rec, &in);
    if (kafka_render(&kc->topic, t->topic, &in) != 0 || kafka_render(&kc->key, t->key, &in) != 0) {
        *detail = "out of memory";
        return RD_KAFKA_RESP_ERR__FAIL;
    }
    if (!kafka_topic_valid((const char *)kc->topic.data, kc->topic.len)) {
        *detail = "the rendered topic is not a valid Kafka topic name";
        return RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION;
    }
    for (;;) {
        rd_kafka_resp_err_t e = kafka_produce_rec(kc, rec, i);
        if (e != RD_KAFKA_RESP_ERR__QUEUE_FULL)
            return e;
        if (kafka_now_ms() >= deadline)
            return RD_KAFKA_RESP_ERR__TIMED_OUT;
        rd_kafka_poll(kc->rk, 50);
    }
}

/* Errors that will not go away by sending the same record again. Anything
 * else (timeouts, transport, leader changes, authorization that an
 * operator can fix) is worth a retry. */
static bool kafka_err_permanent(rd_kafka_resp_err_t e)
{
    switch (e) {
    case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
    case RD_KAFKA_RESP_ERR_INVALID_MSG:
    case RD_KAFKA_RESP_ERR_INVALID_MSG_SIZE:
    case RD_KAFKA_RESP_ERR_INVALID_RECORD:
    case RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE:
    case RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION:
    case RD_KAFKA_RESP_ERR__INVALID_ARG:
        return true;
    default:
        return false;
    }
}

static int kafka_batch_begin(struct kafka_conn *kc, size_t n)
{
    if (n > kc->slots_cap) {
        struct kafka_slot *s = realloc(kc->slots, n * sizeof *s);
        if (s == NULL)
            return -1;
        kc->slots = s;
        kc->slots_cap = n;
    }
    memset(kc->slots, 0, n * sizeof *kc->slots);
    kc->batch_n = n;
    kc->outstanding = 0;
    return 0;
}

/* Serve reports until every produced record has one or the deadline is
 * past; then purge what is left (its reports say PURGE_*, i.e. retry) so
 * that no report of this batch can arrive during the next one. Flushing
 * (rather than polling) sends at once instead of waiting for linger.ms:
 * the whole batch is in the queue already. */
static void kafka_batch_wait(struct kafka_conn *kc, int64_t deadline)
{
    int64_t now;
    while (kc->outstanding > 0 && (now = kafka_now_ms()) < deadline) {
        int64_t left = deadline - now;
        rd_kafka_flush(kc->rk, left < 100 ? (int)left : 100);
    }
    if (kc->outstanding == 0)
        return;
    rd_kafka_purge(kc->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    deadline = kafka_now_ms() + KAFKA_PURGE_WAIT_MS;
    while (kc->outstanding > 0 && kafka_now_ms() < deadline)
        rd_kafka_poll(kc->rk, 50);
    if (kc->outstanding > 0) { /* cannot happen by librdkafka's contract */
        log_error("kafka '%s': %zu delivery reports missing after purge; recreating the producer",
                  kc->name, kc->outstanding);
        kc->batch_n = 0;
        rd_kafka_destroy(kc->rk);
        kc->rk = NULL;
    }
}

/* Leading records already delivered before a rejection (see skip_*). */
static size_t kafka_skip_leading(struct kafka_conn *kc, struct export_record *const *recs, size_t n)
{
    size_t s = 0;
    if (kc->skip_valid && n > 0 && recs[0]->seqno == kc->skip_first)
        while (s < n && recs[s]->seqno <= kc->skip_last &&
               (s == 0 || recs[s]->seqno > recs[s - 1]->seqno))
            kc->slots[s++].reported = true; /* err stays NO_ERROR */
    kc->skip_valid = false;
    return s;
}

/* After a rejection at `bad`: remember the delivered run that follows. */
static void kafka_skip_remember(struct kafka_conn *kc, struct export_record *const *recs, size_t n,
                                size_t bad)
{
    size_t j = bad + 1;
    while (j < n && kc->slots[j].reported && kc->slots[j].err == RD_KAFKA_RESP_ERR_NO_ERROR &&
           recs[j]->seqno > recs[j - 1]->seqno)
        j++;
    if (j > bad + 1) {
        kc->skip_valid = true;
        kc->skip_first = recs[bad + 1]->seqno;
        kc->skip_last = recs[j - 1]->seqno;
    }
}

/* *acked = the delivered prefix; err describes the record after it. The
 * local failure (if any) happened at `local`, explained by detail. */
static int kafka_verdict(struct kafka_conn *kc, struct export_record *const *recs, size_t n,
                         size_t *acked, size_t local, const char *detail, char *err, size_t errlen)
{
    size_t a = 0;
    while (a < n && kc->slots[a].reported && kc->slots[a].err == RD_KAFKA_RESP_ERR_NO_ERROR)
        a++;
    *acked = a;
    if (a == n)
        return CONNECTOR_OK;
    rd_kafka_resp_err_t e = kc->slots[a].reported ? kc->slots[a].err : RD_KAFKA_RESP_ERR__TIMED_OUT;
    const struct export_record *rec = recs[a];
    if (a != local || detail == NULL)
        detail = kc->slots[a].reported ? "" : "no delivery report in time";
    snprintf(err, errlen, "kafka '%s': record %zu (rule '%s', client '%s'): %s%s%s", kc->name, a,
             rec->rule ? rec->rule->name : "?", rec->client_id ? rec->client_id : "",
             rd_kafka_err2str(e), *detail ? ": " : "", detail);
    if (!kafka_err_permanent(e))
        return CONNECTOR_RETRY;
    kafka_skip_remember(kc, recs, n, a);
    return CONNECTOR_REJECT;
}

static int kafka_export(struct connector *c, struct export_record *const *recs, size_t n,
                        size_t *acked, char *err, size_t errlen)
{
    struct kafka_conn *kc = kafka_of(c);
    const char *detail = NULL;
    char why[256];
    *acked = 0;
    if (kc->rk != NULL && rd_kafka_fatal_error(kc->rk, why, sizeof why)) {
        snprintf(err, errlen, "kafka '%s': producer failed: %s", kc->name, why);
        kafka_close(c);
        return CONNECTOR_RETRY;
    }
    if (kc->rk == NULL) {
        snprintf(err, errlen, "kafka '%s': not connected", kc->name);
        return CONNECTOR_RETRY;
    }
    if (n == 0)
        return CONNECTOR_OK;
    if (kafka_batch_begin(kc, n) != 0) {
        snprintf(err, errlen, "kafka '%s': out of memory", kc->name);
        return CONNECTOR_RETRY;
    }
    int64_t deadline = kafka_now_ms() + kc->report_wait_ms;
    size_t local = n;
    for (size_t i = kafka_skip_leading(kc, recs, n); i < n; i++) {
        rd_kafka_resp_err_t e = kafka_send(kc, recs[i], i, deadline, &detail);
        if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
            kc->slots[i].reported = true;
            kc->slots[i].err = e;
            local = i;
            break;
        }
        kc->outstanding++;
    }
    kafka_batch_wait(kc, deadline);
    int rc = kafka_verdict(kc, recs, n, acked, local, detail, err, errlen);
    kc->batch_n = 0;
    return rc;
}

const struct connector_ops kafka_connector = {
    .type = "kafka",
    .settings = kafka_settings,
    .create = kafka_create,
    .destroy = kafka_destroy,
    .compile = kafka_compile,
    .release = kafka_release,
    .open = kafka_open,
    .close = kafka_close,
    .export = kafka_export,
};
