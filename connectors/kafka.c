/* Kafka connector (librdkafka producer).
 *
 * Rule: export() produces every record of the batch, then flushes and
 * serves delivery reports until librdkafka is done with every record (or
 * a deadline of message.timeout.ms plus a margin passes: the rest is then
 * purged, and its reports waited for), and acknowledges the longest prefix
 * whose reports say "delivered" (acks=all by default). Values are produced
 * in place, not copied: the engine keeps the records alive until export()
 * returns, and export() never returns while librdkafka may still read
 * one. Examples, for a batch of 4:
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
 * Per record, the connector itself allocates nothing: a literal topic and
 * a literal key are rendered once by compile(), the default key is the
 * client ID as it is, topic handles are kept, header numbers are
 * formatted by hand. (librdkafka still allocates the message and each of
 * its 5 headers.)
 *
 * Source (inbound rules): one consumer per rule, in the rule's group, with
 * automatic commits and offset stores off, a 10 s session (a crashed
 * mqbridge's partitions go to the group's next member after at most that)
 * or, with `instance_id`, static membership (its restart takes them over
 * at once). Offsets are committed only by source_ack(), i.e. after the
 * engine published the batch and the broker's store committed it, never
 * before (LANDSCAPE.md P-4). The commit for a partition is the offset of
 * the batch's last record there plus one.
 * Examples, for a batch 0@5 2@9 0@6 (partition@offset):
 *   all PUBLISHED                      -> commit {0: 7, 2: 10}, OK
 *   0@5 SKIPPED, dead_letter_topic set -> a copy of 0@5 with header `reason`
 *                                         is delivered there, then the commit
 *   dead-letter topic not reachable    -> RETRY, nothing committed: the
 *                                         whole batch comes again
 *   partition 2 revoked meanwhile      -> commit {0: 7}; 2@9 goes again to
 *                                         the partition's new owner
 *   crash before the ack               -> nothing committed: all comes again
 *
 * Threads: create/compile run on the engine loop and do no network I/O
 * (create and compile build throwaway clients without brokers only to
 * validate the librdkafka configuration). open/export/close run on the
 * connector thread; delivery reports are served there too (rd_kafka_poll),
 * so the batch state needs no lock. Each source lives on its rule's import
 * thread with its own consumer and dead-letter producer, whose callbacks
 * (rebalance, delivery reports) are served on that thread; the connector
 * is only read there (its configurations, name and timeouts). */
#include "connector.h"

#include <inttypes.h>
#include <librdkafka/rdkafka.h>
#include <pthread.h>
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
    KAFKA_GROUP_MAX = 255,
    KAFKA_INSTANCE_ID_MAX = 128,  /* + "." + a rule name (64): within Kafka's 249 */
    KAFKA_COMMIT_WAIT_MS = 10000, /* for the answer to an offset commit */
    KAFKA_CLOSE_WAIT_MS = 5000,   /* for a consumer to leave its group */
    KAFKA_LAG_WAIT_MS = 1000,     /* per query made by source_lag() */
    KAFKA_TOPIC_HANDLES = 16,     /* topic handles kept by the producer */
    KAFKA_POLL_EVERY = 1024,      /* records produced between two report polls */
};

static const struct kv_key kafka_settings[] = {
    {"brokers", KV_SCALAR, KV_REQUIRED, "bootstrap brokers: host:port[,host:port...]"},
    {"options", KV_MAP, 0,
     "librdkafka properties, applied after the defaults (producer-only ones are left out of "
     "the source's consumers)"},
    {"connect_timeout_ms", KV_SCALAR, 0,
     "how long open() waits for the cluster's metadata (default 5000)"},
    {"instance_id", KV_SCALAR, 0,
     "static group membership of the inbound rules' consumers: a name unique to this mqbridge "
     "among the members of their groups (group.instance.id = <instance_id>.<rule name>)"},
    {NULL, KV_SCALAR, 0, NULL},
};

static const struct kv_key kafka_target_keys[] = {
    {"topic", KV_SCALAR, KV_REQUIRED, "Kafka topic: a name or a template (\"iot-${group}\")"},
    {"key", KV_SCALAR, 0, "record key template (default \"${clientid}\")"},
    {NULL, KV_SCALAR, 0, NULL},
};

/* An inbound rule's `source` (besides `connector`). */
static const struct kv_key kafka_source_keys[] = {
    {"topic", KV_SCALAR, KV_REQUIRED, "the Kafka topic to read: a literal name"},
    {"group", KV_SCALAR, KV_REQUIRED, "the consumer group (group.id) that owns the offsets"},
    {"dead_letter_topic", KV_SCALAR, 0, "where records the engine skipped are copied"},
    {"offset_reset", KV_SCALAR, 0,
     "where a group without committed offsets starts: earliest (default) or latest"},
    {NULL, KV_SCALAR, 0, NULL},
};

/* An inbound rule's `target` has nothing for Kafka besides `topic`. */
static const struct kv_key kafka_no_keys[] = {
    {NULL, KV_SCALAR, 0, NULL},
};

/* librdkafka's producer-only properties (scope P): the source's consumers
 * leave them out of the defaults and of `options`. */
static const char *const kafka_producer_only[] = {
    "transactional.id",
    "transaction.timeout.ms",
    "enable.idempotence",
    "enable.gapless.guarantee",
    "queue.buffering.max.messages",
    "queue.buffering.max.kbytes",
    "queue.buffering.max.ms",
    "linger.ms",
    "message.send.max.retries",
    "retries",
    "retry.backoff.ms",
    "queue.buffering.backpressure.threshold",
    "compression.codec",
    "compression.type",
    "compression.level",
    "batch.num.messages",
    "batch.size",
    "delivery.report.only.error",
    "sticky.partitioning.linger.ms",
    "request.required.acks",
    "acks",
    "request.timeout.ms",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "queuing.strategy",
    "produce.offset.report",
    "partitioner",
};

/* Consumer properties the source sets itself: refused in `options`. */
static const struct {
    const char *name, *value, *why;
} kafka_source_fixed[] = {
    {"enable.auto.commit", "false", "offsets are committed after the broker stored the batch"},
    {"enable.auto.offset.store", "false",
     "offsets are committed after the broker stored the batch"},
    {"isolation.level", "read_committed", "records of aborted transactions are never read"},
    {"enable.partition.eof", "false", "the end of a partition is not an event"},
    {"group.id", NULL, "set `group` in the inbound rule's source"},
    {"auto.offset.reset", NULL, "set `offset_reset` in the inbound rule's source"},
    {"group.instance.id", NULL,
     "set `instance_id` in the connector's settings (each rule's consumer gets its own id)"},
};

/* The consumers' own defaults, applied after kafka_defaults and before the
 * user's `options`. A consumer that vanished without leaving its group (a
 * crash, kill -9) keeps its partitions until the session times out:
 * librdkafka's 45 s would hold the records back that long, 10 s is the
 * Java client's former default (the broker allows 6 s at least). The
 * heartbeat stays at a third of it. */
static const struct {
    const char *name, *value;
} kafka_source_defaults[] = {
    {"session.timeout.ms", "10000"},
    {"heartbeat.interval.ms", "3000"},
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

/* The delivery state of one record of the current batch: a report came
 * (err says how it went), or none (yet). */
struct kafka_slot {
    rd_kafka_resp_err_t err;
    bool reported;
};

/* A topic handle of the producer, kept so that a record does not pay for
 * librdkafka's look-up of the topic by name (a lock and a scan). */
struct kafka_topic_ref {
    char *name;
    rd_kafka_topic_t *rkt;
};

struct kafka_conn {
    char *name;
    char *brokers;
    char *instance_id;         /* static membership of the consumers; NULL: dynamic */
    rd_kafka_conf_t *conf;     /* validated; duplicated by each open() and dead-letter producer */
    rd_kafka_conf_t *src_conf; /* the consumers' base; completed per rule by compile() */
    int connect_timeout_ms;
    int report_wait_ms; /* message.timeout.ms + margin */
    rd_kafka_t *rk;     /* NULL while closed */
    /* Handles of rk's topics, most recently made last; destroyed before
     * rk (connector thread only). */
    struct kafka_topic_ref topics[KAFKA_TOPIC_HANDLES];
    size_t topics_n;
    /* The batch being exported (connector thread only). */
    struct kafka_slot *slots;
    size_t slots_cap, batch_n;
    size_t batch_sent;  /* records [0, batch_sent) were produced (or skipped) */
    bool batch_settled; /* librdkafka is done with every one of them */
    /* Records after a rejected one that were delivered already: a re-offer
     * starting at skip_first (seqno) is acknowledged up to skip_last
     * without producing them again. */
    bool skip_valid;
    uint64_t skip_first, skip_last;
    struct buf topic, key; /* rendering scratch, NUL-terminated */
};

/* An inbound rule's source, compiled: read-only once made. */
struct kafka_inbound {
    char *topic, *group;
    char *dead_letter;     /* NULL: skipped records are only committed */
    bool earliest;         /* offset_reset */
    rd_kafka_conf_t *conf; /* the consumer's, validated; duplicated by source_open() */
};

/* How a target's key is made per record. */
enum kafka_key_kind {
    KAFKA_KEY_CLIENT_ID, /* "${clientid}" (the default): the record's client ID as it is */
    KAFKA_KEY_FIXED,     /* a literal: rendered once (empty: no key) */
    KAFKA_KEY_TEMPLATE,  /* anything else: rendered per record */
};

/* What compile() makes of a rule: an export target (outbound, status) or
 * an inbound source (in != NULL, templates NULL). What does not depend on
 * the record is rendered here, once. */
struct kafka_target {
    enum rule_type type;
    struct template *topic;
    struct template *key;
    char *topic_name; /* a literal topic (checked); NULL: rendered per record */
    enum kafka_key_kind key_kind;
    char *key_fixed; /* KAFKA_KEY_FIXED */
    size_t key_fixed_len;
    struct kafka_inbound *in;
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

/* level: syslog levels as librdkafka uses them; who names the client. */
static void kafka_log(int level, const char *who, const char *fac, const char *text)
{
    enum log_level l = level <= 3   ? LOG_ERROR
                       : level == 4 ? LOG_WARN
                       : level == 5 ? LOG_NOTICE
                       : level == 6 ? LOG_INFO
                                    : LOG_DEBUG;
    if (l == LOG_DEBUG && log_get_level() > LOG_DEBUG)
        return;
    log_msg(l, "%s: %s: %s", who, fac, text);
}

static void kafka_on_log(const rd_kafka_t *rk, int level, const char *fac, const char *text)
{
    const struct kafka_conn *kc = rd_kafka_opaque(rk);
    char who[160];
    snprintf(who, sizeof who, "kafka '%s'", kc ? kc->name : "?");
    kafka_log(level, who, fac, text);
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

static bool kafka_producer_only_prop(const char *name)
{
    for (size_t i = 0; i < sizeof kafka_producer_only / sizeof kafka_producer_only[0]; i++)
        if (strcmp(name, kafka_producer_only[i]) == 0)
            return true;
    return false;
}

/* The source consumers' base: the defaults and `options` that are not
 * producer-only, and the brokers (all checked by kafka_conf_build already).
 * Properties the source sets itself are refused at their position. */
static int kafka_src_conf_build(struct kafka_conn *kc, const struct kvmap *settings, char *err,
                                size_t errlen)
{
    char why[512];
    const struct kv *o = kv_find(settings, "options");
    const struct kvmap *opts = o ? o->map : NULL;
    kc->src_conf = rd_kafka_conf_new();
    for (size_t i = 0; i < sizeof kafka_defaults / sizeof kafka_defaults[0]; i++)
        if (!kafka_producer_only_prop(kafka_defaults[i].name) &&
            kafka_conf_put(kc->src_conf, kafka_defaults[i].name, kafka_defaults[i].value, why,
                           sizeof why) != 0)
            return kv_error(err, errlen, settings, NULL, "kafka default %s: %s",
                            kafka_defaults[i].name, why);
    for (size_t i = 0; i < sizeof kafka_source_defaults / sizeof kafka_source_defaults[0]; i++)
        if (kafka_conf_put(kc->src_conf, kafka_source_defaults[i].name,
                           kafka_source_defaults[i].value, why, sizeof why) != 0)
            return kv_error(err, errlen, settings, NULL, "kafka default %s: %s",
                            kafka_source_defaults[i].name, why);
    if (kafka_conf_put(kc->src_conf, "bootstrap.servers", kc->brokers, why, sizeof why) != 0)
        return kv_error(err, errlen, settings, NULL, "brokers: %s", why);
    for (unsigned i = 0; opts != NULL && i < opts->count; i++) {
        const struct kv *it = &opts->items[i];
        for (size_t k = 0; k < sizeof kafka_source_fixed / sizeof kafka_source_fixed[0]; k++)
            if (strcmp(it->key, kafka_source_fixed[k].name) == 0)
                return kv_error(err, errlen, opts, it, "kafka option '%s': %s", it->key,
                                kafka_source_fixed[k].why);
        if (!kafka_producer_only_prop(it->key) &&
            kafka_conf_put(kc->src_conf, it->key, it->value, why, sizeof why) != 0)
            return kv_error(err, errlen, opts, it, "kafka option '%s': %s", it->key, why);
    }
    return 0;
}

static void kafka_destroy(struct connector *c);
static bool kafka_topic_valid(const char *s, size_t len);

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
    const struct kv *inst = kv_find(settings, "instance_id");
    if (inst != NULL && (strlen(inst->value) > KAFKA_INSTANCE_ID_MAX ||
                         !kafka_topic_valid(inst->value, strlen(inst->value)))) {
        kv_error(err, errlen, settings, inst,
                 "instance_id: expected 1..%d of A-Z a-z 0-9 . _ - (not \".\" or \"..\")",
                 KAFKA_INSTANCE_ID_MAX);
        goto fail;
    }
    if (inst != NULL && (kc->instance_id = strdup(inst->value)) == NULL) {
        kv_error(err, errlen, settings, NULL, "%s: out of memory", where);
        goto fail;
    }
    if (kafka_conf_build(kc, settings, err, errlen) != 0 ||
        kafka_src_conf_build(kc, settings, err, errlen) != 0)
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
    if (kc->src_conf != NULL)
        rd_kafka_conf_destroy(kc->src_conf);
    free(kc->slots);
    buf_free(&kc->topic);
    buf_free(&kc->key);
    free(kc->brokers);
    free(kc->instance_id);
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
    if (item) {
        char where[96];
        snprintf(where, sizeof where, "rule '%s'", r->name);
        return template_compile_kv(item, where, out, err, errlen);
    }
    /* the default template: an error would be ours, not the user's */
    if (template_compile(def, out, why, sizeof why) != 0)
        return kv_error(err, errlen, r->options, NULL, "rule '%s': %s: %s", r->name, key, why);
    return 0;
}

/* The rendering of a literal template: a NUL-terminated copy in *out,
 * its length in *len. 0, or -1 when out of memory. */
static int kafka_render_literal(const struct template *t, char **out, size_t *len)
{
    struct buf b = {0};
    const struct template_input none = {.client_id = "", .topic = ""};
    *out = NULL;
    if (template_render(t, &none, &b) != 0 || buf_append_u8(&b, 0) != 0) {
        buf_free(&b);
        return -1;
    }
    *len = b.len - 1;
    *out = (char *)b.data; /* the buffer's memory, handed over */
    return 0;
}

/* A literal topic is checked and kept now; a templated one is rendered
 * and checked per record. The key: the client ID as it is, a literal kept
 * now, or rendered per record. */
static int kafka_target_fixed(const struct rule *r, struct kafka_target *t, char *err,
                              size_t errlen)
{
    size_t len = 0;
    const struct kv *key = kv_find(r->options, "key");
    if (template_is_literal(t->topic)) {
        if (kafka_render_literal(t->topic, &t->topic_name, &len) != 0)
            return kv_error(err, errlen, r->options, NULL, "rule '%s': out of memory", r->name);
        if (!kafka_topic_valid(t->topic_name, len))
            return kv_error(err, errlen, r->options, kv_find(r->options, "topic"),
                            "rule '%s': topic '%s' is not a valid Kafka topic name "
                            "(1..249 of A-Z a-z 0-9 . _ -)",
                            r->name, t->topic_name);
    }
    if (key == NULL || strcmp(key->value, "${clientid}") == 0) {
        t->key_kind = KAFKA_KEY_CLIENT_ID;
    } else if (template_is_literal(t->key)) {
        t->key_kind = KAFKA_KEY_FIXED;
        if (kafka_render_literal(t->key, &t->key_fixed, &t->key_fixed_len) != 0)
            return kv_error(err, errlen, r->options, NULL, "rule '%s': out of memory", r->name);
    } else {
        t->key_kind = KAFKA_KEY_TEMPLATE;
    }
    return 0;
}

/* ---- inbound rules (engine loop) ----------------------------------------- */

/* Any group name librdkafka and the brokers take, without control
 * characters (it appears in logs). */
static bool kafka_group_valid(const char *s)
{
    size_t len = strlen(s);
    if (len == 0 || len > KAFKA_GROUP_MAX)
        return false;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return false;
    return true;
}

/* The source's consumer configuration: the connector's base, the rule's
 * group and reset, the fixed properties. A consumer without brokers is
 * built (no network I/O) to find clashes now rather than at open. */
static int kafka_inbound_conf(const struct kafka_conn *kc, const struct rule *r,
                              struct kafka_inbound *in, char *err, size_t errlen)
{
    char why[512], member[KAFKA_INSTANCE_ID_MAX + 80];
    in->conf = rd_kafka_conf_dup(kc->src_conf);
    if (in->conf == NULL)
        return kv_error(err, errlen, r->options, NULL, "rule '%s': out of memory", r->name);
    if (kc->instance_id != NULL) /* rule names are 1..64 of A-Z a-z 0-9 . _ - */
        snprintf(member, sizeof member, "%s.%s", kc->instance_id, r->name);
    for (size_t i = 0; i < sizeof kafka_source_fixed / sizeof kafka_source_fixed[0]; i++) {
        const char *name = kafka_source_fixed[i].name, *value = kafka_source_fixed[i].value;
        if (strcmp(name, "group.id") == 0)
            value = in->group;
        else if (strcmp(name, "auto.offset.reset") == 0)
            value = in->earliest ? "earliest" : "latest";
        else if (strcmp(name, "group.instance.id") == 0)
            value = kc->instance_id != NULL ? member : NULL;
        if (value != NULL && kafka_conf_put(in->conf, name, value, why, sizeof why) != 0)
            return kv_error(err, errlen, r->options, NULL, "rule '%s': %s: %s", r->name, name, why);
    }
    rd_kafka_conf_t *probe = rd_kafka_conf_dup(in->conf);
    rd_kafka_t *rk = NULL;
    if (probe != NULL) {
        rd_kafka_conf_set_log_cb(probe, kafka_on_log_quiet);
        if (kafka_conf_put(probe, "bootstrap.servers", "", why, sizeof why) == 0)
            rk = rd_kafka_new(RD_KAFKA_CONSUMER, probe, why, sizeof why);
        if (rk == NULL)
            rd_kafka_conf_destroy(probe);
    } else {
        snprintf(why, sizeof why, "out of memory");
    }
    if (rk == NULL)
        return kv_error(err, errlen, r->options, NULL, "rule '%s': kafka consumer: %s", r->name,
                        why);
    rd_kafka_destroy_flags(rk, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
    return 0;
}

static void kafka_inbound_free(struct kafka_inbound *in)
{
    if (in == NULL)
        return;
    if (in->conf != NULL)
        rd_kafka_conf_destroy(in->conf);
    free(in->topic);
    free(in->group);
    free(in->dead_letter);
    free(in);
}

/* The source keys and their values; the target must be empty. */
static int kafka_inbound_check(const struct rule *r, char *err, size_t errlen)
{
    char where[128];
    snprintf(where, sizeof where, "rule '%s'", r->name);
    if (kv_check(r->options, kafka_source_keys, where, err, errlen) != 0 ||
        kv_check(r->target_options, kafka_no_keys, where, err, errlen) != 0)
        return -1;
    const struct kv *topic = kv_find(r->options, "topic"), *group = kv_find(r->options, "group");
    const struct kv *dead = kv_find(r->options, "dead_letter_topic");
    const struct kv *reset = kv_find(r->options, "offset_reset");
    const struct kv *names[] = {topic, dead};
    for (int i = 0; i < 2; i++)
        if (names[i] != NULL && !kafka_topic_valid(names[i]->value, strlen(names[i]->value)))
            return kv_error(err, errlen, r->options, names[i],
                            "%s: %s '%s' is not a valid Kafka topic name "
                            "(1..249 of A-Z a-z 0-9 . _ -)",
                            where, names[i]->key, names[i]->value);
    if (dead != NULL && strcmp(dead->value, topic->value) == 0)
        return kv_error(err, errlen, r->options, dead,
                        "%s: dead_letter_topic must not be the topic it reads "
                        "(skipped records would come back forever)",
                        where);
    if (!kafka_group_valid(group->value))
        return kv_error(err, errlen, r->options, group,
                        "%s: group: expected 1..255 characters, no control characters", where);
    if (reset != NULL && strcmp(reset->value, "earliest") != 0 &&
        strcmp(reset->value, "latest") != 0)
        return kv_error(err, errlen, r->options, reset,
                        "%s: offset_reset: expected earliest or latest", where);
    return 0;
}

static int kafka_compile_inbound(const struct kafka_conn *kc, const struct rule *r,
                                 struct kafka_inbound **out, char *err, size_t errlen)
{
    struct kafka_inbound *in = NULL;
    if (kafka_inbound_check(r, err, errlen) != 0)
        goto fail;
    const char *dead = kv_str(r->options, "dead_letter_topic", NULL);
    in = calloc(1, sizeof *in);
    if (in == NULL || (in->topic = strdup(kv_str(r->options, "topic", ""))) == NULL ||
        (in->group = strdup(kv_str(r->options, "group", ""))) == NULL ||
        (dead != NULL && (in->dead_letter = strdup(dead)) == NULL)) {
        kv_error(err, errlen, r->options, NULL, "rule '%s': out of memory", r->name);
        goto fail;
    }
    in->earliest = strcmp(kv_str(r->options, "offset_reset", "earliest"), "earliest") == 0;
    if (kafka_inbound_conf(kc, r, in, err, errlen) != 0)
        goto fail;
    *out = in;
    return 0;
fail:
    kafka_inbound_free(in);
    return -1;
}

/* ---- compile and release (engine loop) ----------------------------------- */

static void kafka_release(struct connector *c, void *compiled);

static int kafka_compile(struct connector *c, const struct rule *r, void **compiled, char *err,
                         size_t errlen)
{
    char where[128];
    struct kafka_target *t = NULL;
    *compiled = NULL;
    if (r->type == RULE_INBOUND) {
        if ((t = calloc(1, sizeof *t)) == NULL) {
            kv_error(err, errlen, r->options, NULL, "rule '%s': out of memory", r->name);
            goto fail;
        }
        t->type = r->type;
        if (kafka_compile_inbound(kafka_of(c), r, &t->in, err, errlen) != 0)
            goto fail;
        *compiled = t;
        return 0;
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
        kafka_template(r, "key", "${clientid}", &t->key, err, errlen) != 0 ||
        kafka_target_fixed(r, t, err, errlen) != 0)
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
    free(t->topic_name);
    free(t->key_fixed);
    kafka_inbound_free(t->in);
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

/* Topic handles go before their producer. */
static void kafka_topics_drop(struct kafka_conn *kc)
{
    for (size_t i = 0; i < kc->topics_n; i++) {
        rd_kafka_topic_destroy(kc->topics[i].rkt);
        free(kc->topics[i].name);
    }
    kc->topics_n = 0;
}

/* Every export waits for or purges its own records, so nothing of a batch
 * is left here; the flush is for a close in the middle of nowhere. */
static void kafka_close(struct connector *c)
{
    struct kafka_conn *kc = kafka_of(c);
    if (kc == NULL || kc->rk == NULL)
        return;
    kc->batch_n = 0; /* late reports belong to no batch */
    kafka_topics_drop(kc);
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

/* The producer's handle of topic `name`. Kept handles are searched newest
 * first (one literal topic: one comparison); a new one replaces the
 * oldest when KAFKA_TOPIC_HANDLES are kept. NULL when out of memory. */
static rd_kafka_topic_t *kafka_topic_handle(struct kafka_conn *kc, const char *name)
{
    for (size_t i = kc->topics_n; i-- > 0;)
        if (strcmp(kc->topics[i].name, name) == 0)
            return kc->topics[i].rkt;
    char *copy = strdup(name);
    rd_kafka_topic_t *rkt = copy != NULL ? rd_kafka_topic_new(kc->rk, name, NULL) : NULL;
    if (rkt == NULL) {
        free(copy);
        return NULL;
    }
    if (kc->topics_n == KAFKA_TOPIC_HANDLES) {
        /* records already queued keep their own reference to the topic */
        rd_kafka_topic_destroy(kc->topics[0].rkt);
        free(kc->topics[0].name);
        memmove(kc->topics, kc->topics + 1, (KAFKA_TOPIC_HANDLES - 1) * sizeof kc->topics[0]);
        kc->topics_n--;
    }
    kc->topics[kc->topics_n++] = (struct kafka_topic_ref){.name = copy, .rkt = rkt};
    return rkt;
}

/* Header values, without snprintf: decimal (out: 20 bytes at least),
 * and 16 lowercase hex digits (out: 16 bytes). Return the length. */
static size_t kafka_fmt_u64(char *out, uint64_t v)
{
    char rev[20];
    size_t n = 0;
    do {
        rev[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    for (size_t i = 0; i < n; i++)
        out[i] = rev[n - 1 - i];
    return n;
}

static size_t kafka_fmt_i64(char *out, int64_t v)
{
    if (v >= 0)
        return kafka_fmt_u64(out, (uint64_t)v);
    out[0] = '-';
    return 1 + kafka_fmt_u64(out + 1, 0 - (uint64_t)v);
}

static size_t kafka_fmt_hex16(char *out, uint64_t v)
{
    static const char digits[] = "0123456789abcdef";
    for (int i = 15; i >= 0; i--, v >>= 4)
        out[i] = digits[v & 15];
    return 16;
}

/* Where one record goes and under which key. */
struct kafka_out {
    rd_kafka_topic_t *rkt;
    const void *key; /* NULL: no key */
    size_t key_len;
};

/* Topic and key of rec: what compile() prepared, else rendered into the
 * connector's scratch buffers (valid until the next record). NO_ERROR, or
 * the error that stops the batch at rec with *detail saying why. */
static rd_kafka_resp_err_t kafka_out_make(struct kafka_conn *kc, const struct kafka_target *t,
                                          const struct export_record *rec, struct kafka_out *o,
                                          const char **detail)
{
    struct template_input in;
    const char *topic = t->topic_name;
    *o = (struct kafka_out){.key = NULL};
    if (topic == NULL || t->key_kind == KAFKA_KEY_TEMPLATE)
        kafka_input(rec, &in);
    if (topic == NULL) {
        if (kafka_render(&kc->topic, t->topic, &in) != 0) {
            *detail = "out of memory";
            return RD_KAFKA_RESP_ERR__FAIL;
        }
        topic = (const char *)kc->topic.data;
        if (!kafka_topic_valid(topic, kc->topic.len)) {
            *detail = "the rendered topic is not a valid Kafka topic name";
            return RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION;
        }
    }
    switch (t->key_kind) {
    case KAFKA_KEY_CLIENT_ID:
        o->key = rec->client_id;
        o->key_len = rec->client_id ? strlen(rec->client_id) : 0;
        break;
    case KAFKA_KEY_FIXED:
        o->key = t->key_fixed;
        o->key_len = t->key_fixed_len;
        break;
    case KAFKA_KEY_TEMPLATE:
        if (kafka_render(&kc->key, t->key, &in) != 0) {
            *detail = "out of memory";
            return RD_KAFKA_RESP_ERR__FAIL;
        }
        o->key = kc->key.data;
        o->key_len = kc->key.len;
        break;
    }
    if (o->key_len == 0)
        o->key = NULL; /* an empty rendering sends no key */
    if ((o->rkt = kafka_topic_handle(kc, topic)) == NULL) {
        *detail = "out of memory";
        return RD_KAFKA_RESP_ERR__FAIL;
    }
    return RD_KAFKA_RESP_ERR_NO_ERROR;
}

/* One produce call. The value is NOT copied: librdkafka reads it in place
 * until it is done with the record, which kafka_batch_wait makes sure of
 * before export() returns (the engine keeps the records alive until then).
 * Key and headers are copied. */
static rd_kafka_resp_err_t kafka_produce_rec(struct kafka_conn *kc, const struct export_record *rec,
                                             const struct kafka_out *o, size_t index)
{
    char num[24], ts[24];
    const char *cid = rec->client_id ? rec->client_id : "";
    void *value = (void *)(uintptr_t)rec->payload; /* read only, librdkafka's API is not const */
    void *opaque = (void *)(uintptr_t)index;
    ssize_t ts_len = (ssize_t)kafka_fmt_i64(ts, rec->time_ms);
    if (rec->kind == RECORD_STATUS) {
        const char *ev = rec->event_type ? rec->event_type : "";
        ssize_t seq_len = (ssize_t)kafka_fmt_u64(num, rec->msg_id);
        return rd_kafka_producev(
            kc->rk, RD_KAFKA_V_RKT(o->rkt), RD_KAFKA_V_KEY(o->key, o->key_len),
            RD_KAFKA_V_VALUE(value, rec->payload_len), RD_KAFKA_V_TIMESTAMP(rec->time_ms),
            RD_KAFKA_V_HEADER("tag", ev, -1), RD_KAFKA_V_HEADER("eventType", ev, -1),
            RD_KAFKA_V_HEADER("seq", num, seq_len), RD_KAFKA_V_HEADER("clientId", cid, -1),
            RD_KAFKA_V_HEADER("timestamp", ts, ts_len), RD_KAFKA_V_OPAQUE(opaque), RD_KAFKA_V_END);
    }
    char qos[4];
    ssize_t qos_len = (ssize_t)kafka_fmt_u64(qos, rec->qos);
    kafka_fmt_hex16(num, rec->msg_id);
    return rd_kafka_producev(
        kc->rk, RD_KAFKA_V_RKT(o->rkt), RD_KAFKA_V_KEY(o->key, o->key_len),
        RD_KAFKA_V_VALUE(value, rec->payload_len), RD_KAFKA_V_TIMESTAMP(rec->time_ms),
        RD_KAFKA_V_HEADER("msgid", num, 16),
        RD_KAFKA_V_HEADER("mqttTopic", rec->topic ? rec->topic : "", -1),
        RD_KAFKA_V_HEADER("clientId", cid, -1), RD_KAFKA_V_HEADER("qos", qos, qos_len),
        RD_KAFKA_V_HEADER("timestamp", ts, ts_len), RD_KAFKA_V_OPAQUE(opaque), RD_KAFKA_V_END);
}

/* Produces recs[i]. A full local queue is back-pressure: serve reports
 * and try again until the deadline. Returns the error that stops the
 * batch at i (NO_ERROR when produced); *detail names a local cause. */
static rd_kafka_resp_err_t kafka_send(struct kafka_conn *kc, const struct export_record *rec,
                                      size_t i, int64_t deadline, const char **detail)
{
    const struct kafka_target *t = rec->rule ? rec->rule->compiled : NULL;
    struct kafka_out o;
    *detail = NULL;
    if (t == NULL || t->in != NULL || (rec->kind == RECORD_STATUS) != (t->type == RULE_STATUS)) {
        *detail = "the record does not match its rule's target";
        return RD_KAFKA_RESP_ERR__INVALID_ARG;
    }
    rd_kafka_resp_err_t e = kafka_out_make(kc, t, rec, &o, detail);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR)
        return e;
    for (;;) {
        e = kafka_produce_rec(kc, rec, &o, i);
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
    kc->batch_sent = n;
    kc->batch_settled = false;
    return 0;
}

/* Flushes (sends at once, ignoring linger.ms: the batch is complete) and
 * serves reports until librdkafka holds no record any more or the deadline
 * passes. true when it holds none. */
static bool kafka_drain(struct kafka_conn *kc, int64_t deadline)
{
    int64_t now;
    while (rd_kafka_outq_len(kc->rk) > 0 && (now = kafka_now_ms()) < deadline)
        rd_kafka_flush(kc->rk, deadline - now < 100 ? (int)(deadline - now) : 100);
    return rd_kafka_outq_len(kc->rk) == 0;
}

/* export() returns only once librdkafka holds no record of the batch: it
 * reads their values in place, and no report of this batch may arrive
 * during the next one. A record is done when its report has been served
 * (rd_kafka_outq_len counts it until then); records left at the deadline
 * are purged, their reports say PURGE_* (a retry), and are waited for.
 * Sets batch_settled: every record produced is done, so one without a
 * report was delivered (delivery.report.only.error reports failures
 * only). If librdkafka still holds records after the purge (its contract
 * rules that out), the producer is destroyed, which releases them; the
 * records without a report then count as not delivered. */
static void kafka_batch_wait(struct kafka_conn *kc, int64_t deadline)
{
    if (kafka_drain(kc, deadline)) {
        kc->batch_settled = true;
        return;
    }
    rd_kafka_purge(kc->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    if (kafka_drain(kc, kafka_now_ms() + KAFKA_PURGE_WAIT_MS)) {
        kc->batch_settled = true;
        return;
    }
    log_error("kafka '%s': %d records still held %d ms after a purge; recreating the producer",
              kc->name, rd_kafka_outq_len(kc->rk), KAFKA_PURGE_WAIT_MS);
    kc->batch_n = 0;
    kafka_topics_drop(kc);
    rd_kafka_destroy(kc->rk);
    kc->rk = NULL;
}

/* Record i of the batch is in Kafka: its report said so, or it was
 * produced and librdkafka is done with it without a failure report. */
static bool kafka_delivered(const struct kafka_conn *kc, size_t i)
{
    const struct kafka_slot *s = &kc->slots[i];
    if (s->reported)
        return s->err == RD_KAFKA_RESP_ERR_NO_ERROR;
    return kc->batch_settled && i < kc->batch_sent;
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
    while (j < n && kafka_delivered(kc, j) && recs[j]->seqno > recs[j - 1]->seqno)
        j++;
    if (j > bad + 1) {
        kc->skip_valid = true;
        kc->skip_first = recs[bad + 1]->seqno;
        kc->skip_last = recs[j - 1]->seqno;
    }
}

/* *acked = the delivered prefix; err describes the record after it. The
 * local failure (if any) happened at batch_sent, explained by detail. */
static int kafka_verdict(struct kafka_conn *kc, struct export_record *const *recs, size_t n,
                         size_t *acked, const char *detail, char *err, size_t errlen)
{
    size_t a = 0;
    while (a < n && kafka_delivered(kc, a))
        a++;
    *acked = a;
    if (a == n)
        return CONNECTOR_OK;
    const struct kafka_slot *s = &kc->slots[a];
    rd_kafka_resp_err_t e = s->reported ? s->err : RD_KAFKA_RESP_ERR__TIMED_OUT;
    const struct export_record *rec = recs[a];
    if (a != kc->batch_sent || detail == NULL)
        detail = s->reported ? "" : "no delivery report in time";
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
    for (size_t i = kafka_skip_leading(kc, recs, n); i < n; i++) {
        rd_kafka_resp_err_t e = kafka_send(kc, recs[i], i, deadline, &detail);
        if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
            kc->slots[i].reported = true;
            kc->slots[i].err = e;
            kc->batch_sent = i;
            break;
        }
        /* reports of records sent already (linger.ms passed): served
         * now, so their memory is reused within the batch */
        if (i % KAFKA_POLL_EVERY == KAFKA_POLL_EVERY - 1)
            rd_kafka_poll(kc->rk, 0);
    }
    kafka_batch_wait(kc, deadline);
    int rc = kafka_verdict(kc, recs, n, acked, detail, err, errlen);
    kc->batch_n = 0;
    return rc;
}

/* ---- source: state and callbacks (import thread) ------------------------- */

/* One inbound rule's reading state. Everything here runs on the rule's
 * import thread, librdkafka's callbacks included (they are served by the
 * polls made below), so it needs no lock. */
struct kafka_source {
    const struct kafka_conn *kc;    /* read only */
    const struct kafka_inbound *in; /* the rule's compiled source; read only */
    char label[192];                /* "kafka 'events' rule 'commands'" */
    rd_kafka_t *rk;                 /* the consumer */
    rd_kafka_t *dlq;                /* the dead-letter producer, NULL without one */
    rd_kafka_resp_err_t assign_err; /* a failed (un)assign: the next fetch says RETRY */
    /* From the error callback, for the next fetch: `broken` says RETRY,
     * `transport` makes it check that the cluster still answers. */
    rd_kafka_resp_err_t broken, transport;
    char error_text[256];
    /* The messages fetched since the last ack, kept (only with a
     * dead-letter topic) to copy key, headers and timestamp of the skipped
     * ones. The engine acknowledges each batch before fetching again. */
    rd_kafka_message_t **held;
    size_t held_n, held_cap;
    /* The dead-letter copies of the current ack. Reports of an earlier ack
     * (purged after its deadline) carry an older generation: ignored. */
    uintptr_t dlq_gen;
    size_t dlq_outstanding;
    rd_kafka_resp_err_t dlq_err; /* the first failure worth a retry */
    struct buf scratch;          /* mapped header values, NUL-terminated */
};

static struct kafka_source *kafka_src_of(struct source *s)
{
    return (struct kafka_source *)(void *)s;
}

static void kafka_src_on_log(const rd_kafka_t *rk, int level, const char *fac, const char *text)
{
    const struct kafka_source *ks = rd_kafka_opaque(rk);
    kafka_log(level, ks ? ks->label : "kafka source", fac, text);
}

/* Nothing is committed here: what the engine has not acknowledged stays
 * uncommitted and is read again by the partition's next owner (at least
 * once). source_ack() leaves out partitions no longer assigned. */
static void kafka_src_on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t why,
                                   rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    struct kafka_source *ks = opaque;
    bool coop = strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE") == 0;
    bool assign = why == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS;
    rd_kafka_error_t *e = NULL;
    rd_kafka_resp_err_t err = RD_KAFKA_RESP_ERR_NO_ERROR;
    if (!assign && why != RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS)
        log_warn("%s: rebalance failed (%s): dropping the assignment", ks->label,
                 rd_kafka_err2str(why));
    else if (!assign && rd_kafka_assignment_lost(rk))
        log_warn("%s: assignment lost (session timed out?): unacknowledged records of %d "
                 "partition(s) go again to their next owner",
                 ks->label, parts->cnt);
    if (coop)
        e = assign ? rd_kafka_incremental_assign(rk, parts)
                   : rd_kafka_incremental_unassign(rk, parts);
    else
        err = rd_kafka_assign(rk, assign ? parts : NULL);
    if (e != NULL) {
        err = rd_kafka_error_code(e);
        rd_kafka_error_destroy(e);
    }
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        log_warn("%s: cannot %s partitions: %s", ks->label, assign ? "assign" : "unassign",
                 rd_kafka_err2str(err));
        ks->assign_err = err;
        return;
    }
    log_info("%s: %s %d partition(s)", ks->label, assign ? "assigned" : "revoked", parts->cnt);
}

/* Client-wide errors, served by rd_kafka_consumer_poll. Most are
 * librdkafka's to recover from; these are not (the source is reopened):
 * a fatal error, failed authentication, and a cluster that does not
 * answer, which a lost connection or all brokers down make fetch check. */
static void kafka_src_on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    struct kafka_source *ks = opaque;
    switch (err) {
    case RD_KAFKA_RESP_ERR__FATAL:
    case RD_KAFKA_RESP_ERR__AUTHENTICATION:
    case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED:
        if (err == RD_KAFKA_RESP_ERR__FATAL)
            rd_kafka_fatal_error(rk, ks->error_text, sizeof ks->error_text);
        else
            snprintf(ks->error_text, sizeof ks->error_text, "%s", reason);
        ks->broken = err;
        break;
    case RD_KAFKA_RESP_ERR__TRANSPORT:
    case RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN:
    case RD_KAFKA_RESP_ERR__RESOLVE:
        if (ks->broken == RD_KAFKA_RESP_ERR_NO_ERROR)
            snprintf(ks->error_text, sizeof ks->error_text, "%s", reason);
        ks->transport = err;
        break;
    default:
        break;
    }
    log_info("%s: %s: %s", ks->label, rd_kafka_err2name(err), reason);
}

/* Dead-letter delivery reports, served by rd_kafka_flush/poll in ack. */
static void kafka_src_on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    struct kafka_source *ks = opaque;
    if ((uintptr_t)m->_private != ks->dlq_gen || ks->dlq_outstanding == 0)
        return;
    ks->dlq_outstanding--;
    if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR)
        return;
    if (kafka_err_permanent(m->err))
        log_error("%s: a dead-letter copy was refused for good (%s); its record is committed "
                  "without it",
                  ks->label, rd_kafka_err2str(m->err));
    else if (ks->dlq_err == RD_KAFKA_RESP_ERR_NO_ERROR)
        ks->dlq_err = m->err;
}

/* ---- source: open and close (import thread) ------------------------------ */

/* Leaves the group without committing anything (no offset was ever
 * stored), serving the revocation here. true when the consumer is gone;
 * false when the close did not finish within KAFKA_CLOSE_WAIT_MS: a
 * commit stuck on a coordinator that is down keeps librdkafka busy up to
 * session.timeout.ms, and no one should wait that long. */
static bool kafka_src_consumer_close(struct kafka_source *ks)
{
    rd_kafka_queue_t *q = rd_kafka_queue_new(ks->rk);
    rd_kafka_error_t *e = rd_kafka_consumer_close_queue(ks->rk, q);
    int64_t deadline = kafka_now_ms() + KAFKA_CLOSE_WAIT_MS;
    if (e != NULL) {
        log_warn("%s: consumer close: %s", ks->label, rd_kafka_error_string(e));
        rd_kafka_error_destroy(e);
    }
    /* The close queue also gets fetched messages and errors: events, of
     * which only the revocation needs an answer. */
    while (e == NULL && !rd_kafka_consumer_closed(ks->rk) && kafka_now_ms() < deadline) {
        rd_kafka_event_t *ev = rd_kafka_queue_poll(q, 100);
        if (ev != NULL && rd_kafka_event_type(ev) == RD_KAFKA_EVENT_REBALANCE)
            kafka_src_on_rebalance(ks->rk, rd_kafka_event_error(ev),
                                   rd_kafka_event_topic_partition_list(ev), ks);
        rd_kafka_event_destroy(ev);
    }
    rd_kafka_queue_destroy(q);
    if (!rd_kafka_consumer_closed(ks->rk))
        return false;
    rd_kafka_destroy_flags(ks->rk, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
    ks->rk = NULL;
    return true;
}

static void kafka_src_release_held(struct kafka_source *ks)
{
    for (size_t i = 0; i < ks->held_n; i++)
        rd_kafka_message_destroy(ks->held[i]);
    ks->held_n = 0;
}

/* Frees what is left: the consumer (waiting as long as librdkafka takes)
 * and the struct. */
static void kafka_src_free(struct kafka_source *ks)
{
    if (ks->rk != NULL)
        rd_kafka_destroy_flags(ks->rk, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
    buf_free(&ks->scratch);
    free(ks->held);
    free(ks);
}

static void *kafka_src_reaper(void *arg)
{
    kafka_src_free(arg);
    return NULL;
}

/* A consumer that would not close in time is destroyed on a detached
 * thread, which then frees ks (its log callback still names it): nothing
 * of the connector or the rule is used there. */
static void kafka_src_reap(struct kafka_source *ks)
{
    pthread_attr_t attr;
    pthread_t t;
    bool started = false;
    log_notice("%s: the consumer did not close within %d ms (cluster down?); it finishes in "
               "the background",
               ks->label, KAFKA_CLOSE_WAIT_MS);
    if (pthread_attr_init(&attr) == 0) {
        started = pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED) == 0 &&
                  pthread_create(&t, &attr, kafka_src_reaper, ks) == 0;
        pthread_attr_destroy(&attr);
    }
    if (!started)
        kafka_src_free(ks); /* no thread: wait here */
}

/* Accepts NULL and half-opened sources. Unacknowledged records are not
 * committed: they come again at the next open. */
static void kafka_source_close(struct source *s)
{
    struct kafka_source *ks = kafka_src_of(s);
    if (ks == NULL)
        return;
    kafka_src_release_held(ks); /* messages go before their consumer */
    if (ks->dlq != NULL) {
        rd_kafka_purge(ks->dlq, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
        rd_kafka_destroy(ks->dlq);
        ks->dlq = NULL;
    }
    if (ks->rk != NULL && !kafka_src_consumer_close(ks))
        kafka_src_reap(ks);
    else
        kafka_src_free(ks);
}

/* Asks the cluster for its brokers, waiting at most connect_timeout_ms:
 * 0 when it answers, else -1 with why. */
static int kafka_src_reachable(struct kafka_source *ks, char *why, size_t whylen)
{
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t e = rd_kafka_metadata(ks->rk, 0, NULL, &md, ks->kc->connect_timeout_ms);
    bool up = e == RD_KAFKA_RESP_ERR_NO_ERROR && md->broker_cnt > 0;
    if (md != NULL)
        rd_kafka_metadata_destroy(md);
    if (up)
        return 0;
    snprintf(why, whylen, "brokers %s unreachable within %d ms: %s", ks->kc->brokers,
             ks->kc->connect_timeout_ms, e ? rd_kafka_err2str(e) : "no broker in the metadata");
    return -1;
}

/* The consumer: created, the cluster asked for its brokers (so that a down
 * cluster is a quick RETRY, as in kafka_open), subscribed. */
static int kafka_src_consumer(struct kafka_source *ks, char *why, size_t whylen)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_dup(ks->in->conf);
    if (conf == NULL) {
        snprintf(why, whylen, "out of memory");
        return -1;
    }
    rd_kafka_conf_set_opaque(conf, ks);
    rd_kafka_conf_set_log_cb(conf, kafka_src_on_log);
    rd_kafka_conf_set_rebalance_cb(conf, kafka_src_on_rebalance);
    rd_kafka_conf_set_error_cb(conf, kafka_src_on_error);
    ks->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, why, whylen);
    if (ks->rk == NULL) {
        rd_kafka_conf_destroy(conf);
        return -1;
    }
    rd_kafka_poll_set_consumer(ks->rk); /* callbacks are served by consumer_poll */
    if (kafka_src_reachable(ks, why, whylen) != 0)
        return -1;
    rd_kafka_topic_partition_list_t *topics = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(topics, ks->in->topic, RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t e = rd_kafka_subscribe(ks->rk, topics);
    rd_kafka_topic_partition_list_destroy(topics);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
        snprintf(why, whylen, "subscribe to %s: %s", ks->in->topic, rd_kafka_err2str(e));
        return -1;
    }
    return 0;
}

/* The dead-letter producer: the connector's producer configuration (the
 * sink's defaults and options), with this source's callbacks. */
static int kafka_src_producer(struct kafka_source *ks, char *why, size_t whylen)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_dup(ks->kc->conf);
    if (conf == NULL) {
        snprintf(why, whylen, "out of memory");
        return -1;
    }
    rd_kafka_conf_set_opaque(conf, ks);
    rd_kafka_conf_set_log_cb(conf, kafka_src_on_log);
    rd_kafka_conf_set_dr_msg_cb(conf, kafka_src_on_delivery);
    ks->dlq = rd_kafka_new(RD_KAFKA_PRODUCER, conf, why, whylen);
    if (ks->dlq == NULL) {
        rd_kafka_conf_destroy(conf);
        return -1;
    }
    return 0;
}

static int kafka_source_open(struct connector *c, const struct rule *r, struct source **out,
                             char *err, size_t errlen)
{
    struct kafka_conn *kc = kafka_of(c);
    const struct kafka_target *t = r->compiled;
    struct kafka_source *ks = NULL;
    char why[512];
    *out = NULL;
    if (t == NULL || t->in == NULL) {
        snprintf(err, errlen, "kafka '%s': rule '%s' is not a compiled inbound rule", kc->name,
                 r->name);
        return CONNECTOR_RETRY;
    }
    if ((ks = calloc(1, sizeof *ks)) == NULL) {
        snprintf(err, errlen, "kafka '%s': out of memory", kc->name);
        return CONNECTOR_RETRY;
    }
    ks->kc = kc;
    ks->in = t->in;
    snprintf(ks->label, sizeof ks->label, "kafka '%.64s' rule '%.64s'", kc->name, r->name);
    if (kafka_src_consumer(ks, why, sizeof why) != 0 ||
        (ks->in->dead_letter != NULL && kafka_src_producer(ks, why, sizeof why) != 0)) {
        snprintf(err, errlen, "%s: %s", ks->label, why);
        kafka_source_close((struct source *)(void *)ks);
        return CONNECTOR_RETRY;
    }
    *out = (struct source *)(void *)ks;
    return 0;
}

/* ---- source: fetch (import thread) --------------------------------------- */

/* Appends the last value of header `name` to the scratch buffer,
 * NUL-terminated, at *at. A NUL byte inside the value becomes '#', which
 * no MQTT topic name (and so no subtopic or P2P target) may hold and which
 * makes a qoslevel two characters long: the engine then skips the record
 * instead of reading a shorter value than was sent. 1 when copied, 0 when
 * absent (or a null header), -1 when out of memory. */
static int kafka_src_header(struct kafka_source *ks, rd_kafka_headers_t *h, const char *name,
                            size_t *at)
{
    const void *v = NULL;
    size_t len = 0;
    if (h == NULL || rd_kafka_header_get_last(h, name, &v, &len) != RD_KAFKA_RESP_ERR_NO_ERROR ||
        v == NULL)
        return 0;
    *at = ks->scratch.len;
    if (buf_append(&ks->scratch, v, len) != 0 || buf_append_u8(&ks->scratch, 0) != 0)
        return -1;
    for (size_t i = *at; i < *at + len; i++)
        if (ks->scratch.data[i] == '\0')
            ks->scratch.data[i] = '#';
    return 1;
}

/* The record for message m (copies: m may go right after). NULL when out
 * of memory. */
static struct import_record *kafka_src_record(struct kafka_source *ks, const rd_kafka_message_t *m)
{
    static const char *const names[3] = {"mqttSecondTopic", "qoslevel", "clientId"};
    rd_kafka_headers_t *h = NULL;
    const char *val[3] = {NULL, NULL, NULL};
    size_t at[3];
    int got[3];
    char id[KAFKA_TOPIC_MAX + 48];
    if (rd_kafka_message_headers(m, &h) != RD_KAFKA_RESP_ERR_NO_ERROR)
        h = NULL;
    buf_reset(&ks->scratch);
    for (int i = 0; i < 3; i++)
        if ((got[i] = kafka_src_header(ks, h, names[i], &at[i])) < 0)
            return NULL;
    for (int i = 0; i < 3; i++) /* after the appends: the buffer may have moved */
        if (got[i] == 1)
            val[i] = (const char *)ks->scratch.data + at[i];
    snprintf(id, sizeof id, "%s[%" PRId32 "]@%" PRId64, ks->in->topic, m->partition, m->offset);
    /* m->len < 2^31: Kafka's own limit on a record */
    struct import_record *rec =
        import_record_new(id, val[0], val[1], val[2], m->payload, (uint32_t)m->len);
    if (rec != NULL) {
        rec->partition = m->partition;
        rec->offset = m->offset;
    }
    return rec;
}

/* Keeps m for a dead-letter copy (with a dead-letter topic), else frees
 * it. Takes m in any case. 0, or -1 when out of memory. */
static int kafka_src_hold(struct kafka_source *ks, rd_kafka_message_t *m)
{
    if (ks->in->dead_letter == NULL) {
        rd_kafka_message_destroy(m);
        return 0;
    }
    if (ks->held_n == ks->held_cap) {
        size_t cap = ks->held_cap ? ks->held_cap * 2 : 64;
        rd_kafka_message_t **h = realloc(ks->held, cap * sizeof *h);
        if (h == NULL) {
            rd_kafka_message_destroy(m);
            return -1;
        }
        ks->held = h;
        ks->held_cap = cap;
    }
    ks->held[ks->held_n++] = m;
    return 0;
}

/* A consumer error in place of a record. 0 to go on, -1 with err when the
 * source must be reopened: the topic cannot be read (it does not exist,
 * or reading it is not allowed) or the consumer failed for good. */
static int kafka_src_event(struct kafka_source *ks, const rd_kafka_message_t *m, char *err,
                           size_t errlen)
{
    switch (m->err) {
    case RD_KAFKA_RESP_ERR__PARTITION_EOF:
        return 0;
    case RD_KAFKA_RESP_ERR__FATAL:
    case RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC:
    case RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART:
    case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED:
        snprintf(err, errlen, "%s: %s", ks->label, rd_kafka_message_errstr(m));
        return -1;
    default:
        log_notice("%s: %s (librdkafka recovers)", ks->label, rd_kafka_message_errstr(m));
        return 0;
    }
}

/* What the callbacks reported since the last fetch. 0 to go on, -1 with
 * err (RETRY): the assignment failed, the consumer is broken, or a lost
 * connection turns out to be a cluster that does not answer. */
static int kafka_src_health(struct kafka_source *ks, char *err, size_t errlen)
{
    char why[384];
    if (ks->assign_err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        snprintf(err, errlen, "%s: partition assignment failed: %s", ks->label,
                 rd_kafka_err2str(ks->assign_err));
        return -1;
    }
    if (ks->broken != RD_KAFKA_RESP_ERR_NO_ERROR) {
        snprintf(err, errlen, "%s: %s: %s", ks->label, rd_kafka_err2name(ks->broken),
                 ks->error_text);
        return -1;
    }
    if (ks->transport == RD_KAFKA_RESP_ERR_NO_ERROR)
        return 0;
    ks->transport = RD_KAFKA_RESP_ERR_NO_ERROR;
    if (kafka_src_reachable(ks, why, sizeof why) == 0)
        return 0;
    snprintf(err, errlen, "%s: %s (after: %s)", ks->label, why, ks->error_text);
    return -1;
}

/* Up to max records in the order the consumer hands them out (Kafka's
 * per-partition order), waiting at most timeout_ms for the first; after
 * it, only what is already there. */
static int kafka_source_fetch(struct source *s, struct import_record **recs, size_t max, size_t *n,
                              int timeout_ms, char *err, size_t errlen)
{
    struct kafka_source *ks = kafka_src_of(s);
    int64_t deadline = kafka_now_ms() + timeout_ms;
    *n = 0;
    while (*n < max) {
        if (kafka_src_health(ks, err, errlen) != 0)
            goto fail;
        int64_t left = *n > 0 ? 0 : deadline - kafka_now_ms();
        rd_kafka_message_t *m = rd_kafka_consumer_poll(ks->rk, left > 0 ? (int)left : 0);
        if (m == NULL) {
            if (*n > 0 || left <= 0)
                break;
            continue;
        }
        if (m->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
            int rc = kafka_src_event(ks, m, err, errlen);
            rd_kafka_message_destroy(m);
            if (rc != 0)
                goto fail;
            continue;
        }
        struct import_record *rec = kafka_src_record(ks, m);
        if (rec == NULL || kafka_src_hold(ks, m) != 0) {
            if (rec == NULL)
                rd_kafka_message_destroy(m);
            import_record_free(rec);
            snprintf(err, errlen, "%s: out of memory", ks->label);
            goto fail;
        }
        recs[(*n)++] = rec;
    }
    return CONNECTOR_OK;
fail:
    for (size_t i = 0; i < *n; i++)
        import_record_free(recs[i]);
    *n = 0;
    kafka_src_release_held(ks);
    return CONNECTOR_RETRY;
}

/* ---- source: acknowledge (import thread) --------------------------------- */

/* The held message of recs[i]: usually held[i] (one fetch, one ack), else
 * found by partition and offset; NULL when not held (then the copy is made
 * from the record alone). */
static const rd_kafka_message_t *kafka_src_held(const struct kafka_source *ks, size_t i,
                                                const struct import_record *rec)
{
    if (i < ks->held_n && ks->held[i]->partition == rec->partition &&
        ks->held[i]->offset == rec->offset)
        return ks->held[i];
    for (size_t k = 0; k < ks->held_n; k++)
        if (ks->held[k]->partition == rec->partition && ks->held[k]->offset == rec->offset)
            return ks->held[k];
    return NULL;
}

/* Produces the dead-letter copy of rec: value, key, timestamp and headers
 * of the original (m) when held, else the value and the mapped fields;
 * plus header `reason`. */
static rd_kafka_resp_err_t kafka_src_produce_dead(struct kafka_source *ks,
                                                  const struct import_record *rec,
                                                  const rd_kafka_message_t *m)
{
    rd_kafka_headers_t *orig = NULL, *h;
    if (m != NULL && rd_kafka_message_headers(m, &orig) == RD_KAFKA_RESP_ERR_NO_ERROR) {
        h = rd_kafka_headers_copy(orig);
    } else {
        h = rd_kafka_headers_new(4);
        const char *names[3] = {"mqttSecondTopic", "qoslevel", "clientId"};
        const char *vals[3] = {rec->sub_topic, rec->qos, rec->client_id};
        for (int i = 0; i < 3; i++)
            if (vals[i] != NULL)
                rd_kafka_header_add(h, names[i], -1, vals[i], -1);
    }
    rd_kafka_header_remove(h, "reason");
    rd_kafka_header_add(h, "reason", -1, rec->reason, -1);
    rd_kafka_resp_err_t e = rd_kafka_producev(
        ks->dlq, RD_KAFKA_V_TOPIC(ks->in->dead_letter),
        RD_KAFKA_V_KEY(m ? m->key : NULL, m ? m->key_len : 0),
        RD_KAFKA_V_VALUE(rec->payload, rec->payload_len), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
        RD_KAFKA_V_TIMESTAMP(m ? rd_kafka_message_timestamp(m, NULL) : 0), RD_KAFKA_V_HEADERS(h),
        RD_KAFKA_V_OPAQUE((void *)ks->dlq_gen), RD_KAFKA_V_END);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR)
        rd_kafka_headers_destroy(h); /* librdkafka owns them only once produced */
    return e;
}

/* Waits for the reports of the copies produced; purges what is left at the
 * deadline (its reports are then ignored: see dlq_gen). */
static void kafka_src_dead_wait(struct kafka_source *ks, int64_t deadline)
{
    int64_t now;
    while (ks->dlq_outstanding > 0 && (now = kafka_now_ms()) < deadline)
        rd_kafka_flush(ks->dlq, deadline - now < 100 ? (int)(deadline - now) : 100);
    if (ks->dlq_outstanding > 0)
        rd_kafka_purge(ks->dlq, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
}

/* Copies the SKIPPED records to the dead-letter topic and waits until
 * Kafka has them. 0 when done (copies Kafka refuses for good are logged
 * and left out: a record that cannot be copied must not stop the rule),
 * -1 with err when worth a retry (nothing is committed then). */
static int kafka_src_dead_letter(struct kafka_source *ks, struct import_record *const *recs,
                                 size_t n, char *err, size_t errlen)
{
    int64_t deadline = kafka_now_ms() + ks->kc->report_wait_ms;
    if (ks->dlq == NULL)
        return 0;
    ks->dlq_gen++;
    ks->dlq_outstanding = 0;
    ks->dlq_err = RD_KAFKA_RESP_ERR_NO_ERROR;
    for (size_t i = 0; i < n; i++) {
        if (recs[i]->outcome != IMPORT_SKIPPED)
            continue;
        const rd_kafka_message_t *m = kafka_src_held(ks, i, recs[i]);
        rd_kafka_resp_err_t e;
        while ((e = kafka_src_produce_dead(ks, recs[i], m)) == RD_KAFKA_RESP_ERR__QUEUE_FULL &&
               kafka_now_ms() < deadline)
            rd_kafka_poll(ks->dlq, 50);
        if (e == RD_KAFKA_RESP_ERR_NO_ERROR)
            ks->dlq_outstanding++;
        else if (kafka_err_permanent(e))
            log_error("%s: record %s: dead-letter copy refused (%s); committed without it",
                      ks->label, recs[i]->id ? recs[i]->id : "?", rd_kafka_err2str(e));
        else if (ks->dlq_err == RD_KAFKA_RESP_ERR_NO_ERROR)
            ks->dlq_err = e;
    }
    kafka_src_dead_wait(ks, deadline);
    if (ks->dlq_outstanding == 0 && ks->dlq_err == RD_KAFKA_RESP_ERR_NO_ERROR)
        return 0;
    snprintf(err, errlen, "%s: dead-letter topic %s: %s", ks->label, ks->in->dead_letter,
             ks->dlq_outstanding > 0 ? "no delivery report in time"
                                     : rd_kafka_err2str(ks->dlq_err));
    return -1;
}

/* Offset of the last record per partition, plus one. */
static rd_kafka_topic_partition_list_t *
kafka_src_offsets(const struct kafka_source *ks, struct import_record *const *recs, size_t n)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(4);
    for (size_t i = 0; i < n; i++) {
        rd_kafka_topic_partition_t *p =
            rd_kafka_topic_partition_list_find(l, ks->in->topic, recs[i]->partition);
        if (p == NULL)
            p = rd_kafka_topic_partition_list_add(l, ks->in->topic, recs[i]->partition);
        p->offset = recs[i]->offset + 1;
    }
    return l;
}

/* Leaves out the partitions this consumer no longer owns (revoked during
 * the fetch): their new owner reads those records again. */
static int kafka_src_keep_assigned(struct kafka_source *ks,
                                   rd_kafka_topic_partition_list_t *offsets, char *err,
                                   size_t errlen)
{
    rd_kafka_topic_partition_list_t *mine = NULL;
    rd_kafka_resp_err_t e = rd_kafka_assignment(ks->rk, &mine);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
        snprintf(err, errlen, "%s: assignment: %s", ks->label, rd_kafka_err2str(e));
        return -1;
    }
    for (int i = offsets->cnt - 1; i >= 0; i--) {
        const rd_kafka_topic_partition_t *p = &offsets->elems[i];
        if (rd_kafka_topic_partition_list_find(mine, p->topic, p->partition) != NULL)
            continue;
        log_notice("%s: partition %" PRId32 " was revoked before the ack: not committed, its "
                   "records up to offset %" PRId64 " are read again by its new owner",
                   ks->label, p->partition, p->offset - 1);
        rd_kafka_topic_partition_list_del_by_idx(offsets, i);
    }
    rd_kafka_topic_partition_list_destroy(mine);
    return 0;
}

/* Commits offsets and waits for the answer, at most KAFKA_COMMIT_WAIT_MS.
 * 0 only when the commit of every partition succeeded. A commit still
 * under way at the deadline may land later: harmless, its records were
 * published. */
static int kafka_src_commit(struct kafka_source *ks, const rd_kafka_topic_partition_list_t *offsets,
                            char *err, size_t errlen)
{
    rd_kafka_queue_t *q = rd_kafka_queue_new(ks->rk);
    rd_kafka_event_t *ev = NULL;
    int64_t deadline = kafka_now_ms() + KAFKA_COMMIT_WAIT_MS, left;
    rd_kafka_resp_err_t e = rd_kafka_commit_queue(ks->rk, offsets, q, NULL, NULL);
    int32_t part = -1;
    while (e == RD_KAFKA_RESP_ERR_NO_ERROR && ev == NULL) {
        if ((left = deadline - kafka_now_ms()) <= 0) {
            e = RD_KAFKA_RESP_ERR__TIMED_OUT;
            break;
        }
        ev = rd_kafka_queue_poll(q, (int)left);
        if (ev != NULL && rd_kafka_event_type(ev) != RD_KAFKA_EVENT_OFFSET_COMMIT) {
            rd_kafka_event_destroy(ev);
            ev = NULL;
        }
    }
    if (ev != NULL) {
        const rd_kafka_topic_partition_list_t *res = rd_kafka_event_topic_partition_list(ev);
        e = rd_kafka_event_error(ev);
        for (int i = 0; res != NULL && e == RD_KAFKA_RESP_ERR_NO_ERROR && i < res->cnt; i++)
            if ((e = res->elems[i].err) != RD_KAFKA_RESP_ERR_NO_ERROR)
                part = res->elems[i].partition;
        rd_kafka_event_destroy(ev);
    }
    rd_kafka_queue_destroy(q);
    if (e == RD_KAFKA_RESP_ERR_NO_ERROR)
        return 0;
    if (part >= 0)
        snprintf(err, errlen, "%s: offset commit of partition %" PRId32 " failed: %s", ks->label,
                 part, rd_kafka_err2str(e));
    else
        snprintf(err, errlen, "%s: offset commit failed: %s", ks->label, rd_kafka_err2str(e));
    return -1;
}

/* Dead letters first, then the commit: a crash in between copies the
 * skipped records twice, never loses one. */
static int kafka_source_ack(struct source *s, struct import_record *const *recs, size_t n,
                            char *err, size_t errlen)
{
    struct kafka_source *ks = kafka_src_of(s);
    rd_kafka_topic_partition_list_t *offsets = NULL;
    int rc = CONNECTOR_RETRY;
    if (n == 0)
        return CONNECTOR_OK;
    if (kafka_src_dead_letter(ks, recs, n, err, errlen) != 0)
        goto done;
    offsets = kafka_src_offsets(ks, recs, n);
    if (kafka_src_keep_assigned(ks, offsets, err, errlen) != 0 ||
        (offsets->cnt > 0 && kafka_src_commit(ks, offsets, err, errlen) != 0))
        goto done;
    rc = CONNECTOR_OK;
done:
    if (offsets != NULL)
        rd_kafka_topic_partition_list_destroy(offsets);
    kafka_src_release_held(ks);
    return rc;
}

/* ---- source: lag (import thread) ----------------------------------------- */

/* Partitions without a position (nothing read from them yet) get the
 * group's committed offset (which may be none). */
static int kafka_src_fill_committed(struct kafka_source *ks, rd_kafka_topic_partition_list_t *parts)
{
    rd_kafka_topic_partition_list_t *ask = rd_kafka_topic_partition_list_new(parts->cnt);
    int rc = 0;
    for (int i = 0; i < parts->cnt; i++)
        if (parts->elems[i].offset < 0)
            rd_kafka_topic_partition_list_add(ask, parts->elems[i].topic,
                                              parts->elems[i].partition);
    if (ask->cnt > 0 &&
        rd_kafka_committed(ks->rk, ask, KAFKA_LAG_WAIT_MS) != RD_KAFKA_RESP_ERR_NO_ERROR)
        rc = -1;
    for (int i = 0; rc == 0 && i < ask->cnt; i++)
        rd_kafka_topic_partition_list_find(parts, ask->elems[i].topic, ask->elems[i].partition)
            ->offset = ask->elems[i].offset;
    rd_kafka_topic_partition_list_destroy(ask);
    return rc;
}

/* Records of partition p after its position (p->offset), or after where
 * offset_reset starts when it has none. -1 when the watermarks are
 * unknown. */
static int64_t kafka_src_lag_partition(struct kafka_source *ks, const rd_kafka_topic_partition_t *p)
{
    int64_t lo = -1, hi = -1;
    if ((rd_kafka_get_watermark_offsets(ks->rk, p->topic, p->partition, &lo, &hi) !=
             RD_KAFKA_RESP_ERR_NO_ERROR ||
         hi < 0 || (p->offset < 0 && lo < 0)) &&
        rd_kafka_query_watermark_offsets(ks->rk, p->topic, p->partition, &lo, &hi,
                                         KAFKA_LAG_WAIT_MS) != RD_KAFKA_RESP_ERR_NO_ERROR)
        return -1;
    int64_t at = p->offset >= 0 ? p->offset : ks->in->earliest ? lo : hi;
    return hi > at ? hi - at : 0;
}

/* Sum over the assigned partitions of (high watermark - position): the
 * records not yet acknowledged. -1 while nothing is assigned or when an
 * answer is missing. */
static int64_t kafka_source_lag(struct source *s)
{
    struct kafka_source *ks = kafka_src_of(s);
    rd_kafka_topic_partition_list_t *parts = NULL;
    int64_t lag = -1;
    if (ks == NULL || rd_kafka_assignment(ks->rk, &parts) != RD_KAFKA_RESP_ERR_NO_ERROR)
        return -1;
    if (parts->cnt > 0 && rd_kafka_position(ks->rk, parts) == RD_KAFKA_RESP_ERR_NO_ERROR &&
        kafka_src_fill_committed(ks, parts) == 0) {
        lag = 0;
        for (int i = 0; i < parts->cnt && lag >= 0; i++) {
            int64_t behind = kafka_src_lag_partition(ks, &parts->elems[i]);
            lag = behind < 0 ? -1 : lag + behind;
        }
    }
    rd_kafka_topic_partition_list_destroy(parts);
    return lag;
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
    .source_open = kafka_source_open,
    .source_close = kafka_source_close,
    .source_fetch = kafka_source_fetch,
    .source_ack = kafka_source_ack,
    .source_lag = kafka_source_lag,
};
