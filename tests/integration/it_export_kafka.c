/* Outbound and status rules into Kafka (connectors/kafka.c), read back
 * with a librdkafka consumer from the broker of tests/services
 * (MQB_KAFKA_BROKERS). The test creates its two topics (4 partitions) and
 * reads every partition from the beginning, without a consumer group:
 *   - 4 clients x 250 QoS 1 messages: one record each, value = payload,
 *     key = client id (so one client's records share a partition and keep
 *     their order), headers msgid, mqttTopic, clientId, qos, timestamp (=
 *     the record's timestamp);
 *   - status events: value = the JSON body, key = client id, headers tag =
 *     eventType, seq, clientId, timestamp. Kafka keeps no state: the state
 *     rule applied to the events must give the client's state;
 *   - the broker stopped mid-stream (tests/services/ctl stop kafka) while
 *     publishing goes on, then started again: nothing lost, order per
 *     client kept (a repeat after a retry is allowed: at least once);
 *   - kill -9 of mqbridge mid-stream: every PUBACKed message (repeats
 *     allowed: the idempotent producer dedups its own retries only).
 * See harness_export.h for the scenarios. */
#include <check.h>
#include <inttypes.h>
#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../unit/check_main.h"
#include "harness_export.h"

#define KF_PARTITIONS 4
#define KF_ADMIN_MS 30000

struct kf_sink {
    const char *brokers;
    rd_kafka_t *rk;
    char msgs[96], events[96];
    struct ex_msgs got_msgs;
    struct ex_events got_events;
};

static void kf_write_yaml(struct ex_sink *s, struct buf *yaml)
{
    struct kf_sink *k = s->ctx;
    char text[2048];
    int n = snprintf(text, sizeof text,
                     "connectors:\n"
                     "  " EX_CONNECTOR ": { type: kafka, brokers: \"%s\" }\n"
                     "rules:\n"
                     "  - name: " EX_RULE_MSGS "\n"
                     "    type: outbound\n"
                     "    source: { topic: " EX_PARENT " }\n"
                     "    target: { connector: " EX_CONNECTOR ", topic: %s,"
                     " key: \"${clientid}\" }\n"
                     "  - name: " EX_RULE_STATUS "\n"
                     "    type: status\n"
                     "    source: { group: " EX_GROUP " }\n"
                     "    target: { connector: " EX_CONNECTOR ", topic: %s }\n",
                     k->brokers, k->msgs, k->events);
    ck_assert(n > 0 && (size_t)n < sizeof text);
    buf_append(yaml, text, (size_t)n);
}

/* A header's value as a string, or NULL. */
static char *kf_header(rd_kafka_headers_t *hdrs, const char *name)
{
    const void *v;
    size_t n;
    if (!hdrs || rd_kafka_header_get_last(hdrs, name, &v, &n) != RD_KAFKA_RESP_ERR_NO_ERROR)
        return NULL;
    return ex_strndup(v ? v : "", n);
}

static long long kf_header_num(rd_kafka_headers_t *hdrs, const char *name)
{
    char *v = kf_header(hdrs, name);
    long long n = v ? strtoll(v, NULL, 10) : -1;
    free(v);
    return n;
}

static void kf_add_msg(struct kf_sink *k, rd_kafka_message_t *m, rd_kafka_headers_t *hdrs)
{
    struct ex_msg *x = ex_msgs_add(&k->got_msgs);
    rd_kafka_timestamp_type_t tt;
    x->msg_id = kf_header(hdrs, "msgid");
    x->topic = kf_header(hdrs, "mqttTopic");
    x->client_id = kf_header(hdrs, "clientId");
    x->qos = (int)kf_header_num(hdrs, "qos");
    x->time_ms = kf_header_num(hdrs, "timestamp");
    x->key = ex_strndup(m->key ? m->key : "", m->key_len);
    x->payload = (uint8_t *)ex_strndup(m->payload ? m->payload : "", m->len);
    x->len = m->len;
    int64_t ts = rd_kafka_message_timestamp(m, &tt);
    ck_assert_msg(ts == x->time_ms, "%s: record timestamp %" PRId64 ", header timestamp %" PRId64,
                  x->topic ? x->topic : "(no mqttTopic)", ts, x->time_ms);
}

static void kf_add_event(struct kf_sink *k, rd_kafka_message_t *m, rd_kafka_headers_t *hdrs)
{
    struct ex_event *e = ex_events_add(&k->got_events);
    char field[128];
    e->body = ex_strndup(m->payload ? m->payload : "", m->len);
    e->key = ex_strndup(m->key ? m->key : "", m->key_len);
    e->event_type = kf_header(hdrs, "tag");
    e->client_id = kf_header(hdrs, "clientId");
    e->seq = (uint64_t)kf_header_num(hdrs, "seq");
    e->time_ms = kf_header_num(hdrs, "timestamp");
    char *ev = kf_header(hdrs, "eventType");
    ck_assert_msg(ev && e->event_type && !strcmp(ev, e->event_type),
                  "event seq %" PRIu64 ": header eventType '%s', tag '%s'", e->seq,
                  ev ? ev : "(missing)", e->event_type ? e->event_type : "(missing)");
    free(ev);
    /* no headers for these two: they are in the body only */
    if (ex_json_field(e->body, "channelId", field, sizeof field))
        e->channel_id = ex_strndup(field, strlen(field));
    if (ex_json_field(e->body, "clientIp", field, sizeof field))
        e->client_ip = ex_strndup(field, strlen(field));
}

/* Take whatever the consumer has fetched. */
static void kf_poll(struct kf_sink *k)
{
    rd_kafka_message_t *m;
    for (int wait = 10; (m = rd_kafka_consumer_poll(k->rk, wait)) != NULL; wait = 0) {
        if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
            rd_kafka_headers_t *hdrs = NULL;
            rd_kafka_message_headers(m, &hdrs);
            const char *topic = rd_kafka_topic_name(m->rkt);
            if (!strcmp(topic, k->msgs))
                kf_add_msg(k, m, hdrs);
            else if (!strcmp(topic, k->events))
                kf_add_event(k, m, hdrs);
        }
        /* errors (the broker away during an outage) are retried inside */
        rd_kafka_message_destroy(m);
    }
}

static const struct ex_msgs *kf_read_msgs(struct ex_sink *s)
{
    struct kf_sink *k = s->ctx;
    kf_poll(k);
    return &k->got_msgs;
}

static const struct ex_events *kf_read_events(struct ex_sink *s)
{
    struct kf_sink *k = s->ctx;
    kf_poll(k);
    return &k->got_events;
}

static void kf_quiet_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    /* the broker restarts during a test: connection errors are expected */
}

static void kf_conf(rd_kafka_conf_t *conf, const char *name, const char *value)
{
    char err[256];
    ck_assert_msg(rd_kafka_conf_set(conf, name, value, err, sizeof err) == RD_KAFKA_CONF_OK,
                  "%s=%s: %s", name, value, err);
}

/* CreateTopics for the two topics; one that exists already is fine. */
static void kf_create_topics(struct kf_sink *k)
{
    char err[256];
    const char *names[2] = {k->msgs, k->events};
    rd_kafka_NewTopic_t *nt[2];
    for (int i = 0; i < 2; i++) {
        nt[i] = rd_kafka_NewTopic_new(names[i], KF_PARTITIONS, 1, err, sizeof err);
        ck_assert_msg(nt[i] != NULL, "%s: %s", names[i], err);
    }
    rd_kafka_queue_t *q = rd_kafka_queue_new(k->rk);
    rd_kafka_AdminOptions_t *opt = rd_kafka_AdminOptions_new(k->rk, RD_KAFKA_ADMIN_OP_CREATETOPICS);
    rd_kafka_AdminOptions_set_operation_timeout(opt, KF_ADMIN_MS, err, sizeof err);
    rd_kafka_CreateTopics(k->rk, nt, 2, opt, q);
    rd_kafka_event_t *ev = rd_kafka_queue_poll(q, KF_ADMIN_MS + 5000);
    ck_assert_msg(ev != NULL, "CreateTopics: no answer from %s", k->brokers);
    ck_assert_msg(rd_kafka_event_error(ev) == RD_KAFKA_RESP_ERR_NO_ERROR, "CreateTopics: %s",
                  rd_kafka_event_error_string(ev));
    size_t n = 0;
    const rd_kafka_topic_result_t **tr =
        rd_kafka_CreateTopics_result_topics(rd_kafka_event_CreateTopics_result(ev), &n);
    ck_assert_uint_eq(n, 2);
    for (size_t i = 0; i < n; i++) {
        rd_kafka_resp_err_t e = rd_kafka_topic_result_error(tr[i]);
        ck_assert_msg(
            e == RD_KAFKA_RESP_ERR_NO_ERROR || e == RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS,
            "create topic %s: %s", rd_kafka_topic_result_name(tr[i]), rd_kafka_err2str(e));
    }
    rd_kafka_event_destroy(ev);
    rd_kafka_AdminOptions_destroy(opt);
    rd_kafka_NewTopic_destroy_array(nt, 2);
    rd_kafka_queue_destroy(q);
}

/* Every partition of both topics, from the first record. */
static void kf_assign(struct kf_sink *k)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(2 * KF_PARTITIONS);
    for (int p = 0; p < KF_PARTITIONS; p++) {
        rd_kafka_topic_partition_list_add(l, k->msgs, p)->offset = RD_KAFKA_OFFSET_BEGINNING;
        rd_kafka_topic_partition_list_add(l, k->events, p)->offset = RD_KAFKA_OFFSET_BEGINNING;
    }
    rd_kafka_resp_err_t e = rd_kafka_assign(k->rk, l);
    ck_assert_msg(e == RD_KAFKA_RESP_ERR_NO_ERROR, "assign: %s", rd_kafka_err2str(e));
    rd_kafka_topic_partition_list_destroy(l);
}

static void kf_sink_init(struct ex_sink *s, struct kf_sink *k)
{
    char err[256], name[64];
    memset(k, 0, sizeof *k);
    k->brokers = ex_env("MQB_KAFKA_BROKERS");
    ex_unique_name(name, sizeof name, "mqb_it");
    snprintf(k->msgs, sizeof k->msgs, "%s_telemetry", name);
    snprintf(k->events, sizeof k->events, "%s_events", name);
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    kf_conf(conf, "bootstrap.servers", k->brokers);
    kf_conf(conf, "group.id", name); /* required by the API; never joined */
    kf_conf(conf, "enable.auto.commit", "false");
    kf_conf(conf, "enable.partition.eof", "false");
    kf_conf(conf, "fetch.wait.max.ms", "20");
    kf_conf(conf, "reconnect.backoff.max.ms", "500");
    rd_kafka_conf_set_log_cb(conf, kf_quiet_log);
    k->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err);
    ck_assert_msg(k->rk != NULL, "consumer: %s", err);
    kf_create_topics(k);
    kf_assign(k);
    *s = (struct ex_sink){
        .type = "kafka",
        .dedups = false,
        .service = "kafka",
        .write_yaml = kf_write_yaml,
        .read_msgs = kf_read_msgs,
        .read_events = kf_read_events,
        .read_state = NULL, /* derived from the events */
        .ctx = k,
    };
}

static void kf_sink_free(struct kf_sink *k)
{
    rd_kafka_consumer_close(k->rk);
    rd_kafka_destroy(k->rk);
    ex_msgs_clear(&k->got_msgs);
    ex_events_clear(&k->got_events);
    free(k->got_msgs.v);
    free(k->got_events.v);
}

START_TEST(test_kafka_messages)
{
    struct ex_sink s;
    struct kf_sink k;
    kf_sink_init(&s, &k);
    ex_scenario_messages(&s);
    kf_sink_free(&k);
}
END_TEST

START_TEST(test_kafka_status)
{
    struct ex_sink s;
    struct kf_sink k;
    kf_sink_init(&s, &k);
    ex_scenario_status(&s);
    kf_sink_free(&k);
}
END_TEST

START_TEST(test_kafka_restarted_mid_stream)
{
    struct ex_sink s;
    struct kf_sink k;
    ex_env("MQB_SERVICES_DIR");
    kf_sink_init(&s, &k);
    ex_scenario_outage(&s);
    kf_sink_free(&k);
}
END_TEST

START_TEST(test_kafka_kill9_mid_stream)
{
    struct ex_sink s;
    struct kf_sink k;
    kf_sink_init(&s, &k);
    ex_scenario_kill9(&s);
    kf_sink_free(&k);
}
END_TEST

static Suite *export_kafka_suite(void)
{
    Suite *s = suite_create("it_export_kafka");
    TCase *tc = tcase_create("kafka");
    tcase_set_timeout(tc, 150);
    if (it_mode_mosquitto()) {
        it_note_skip("it_export_kafka", "the rules engine is mqbridge behaviour");
    } else {
        tcase_add_test(tc, test_kafka_messages);
        tcase_add_test(tc, test_kafka_status);
        tcase_add_test(tc, test_kafka_restarted_mid_stream);
        tcase_add_test(tc, test_kafka_kill9_mid_stream);
    }
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(export_kafka_suite)
