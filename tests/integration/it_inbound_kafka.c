/* Inbound rules from Kafka (connectors/kafka.c as a source), against the
 * broker of tests/services (MQB_KAFKA_BROKERS). Each scenario gets its own
 * topic, consumer group and dead-letter topic (given to the rule in the
 * malformed scenario only: the others run read ahead); records are added with a
 * librdkafka producer: value = payload, headers mqttSecondTopic, qoslevel,
 * clientId when present. Scenarios that check one order over all records
 * use a topic of one partition; the kill -9 one uses 4 partitions
 * (completeness only). A skipped record must show up in the dead-letter
 * topic (read from the beginning, without a group) with its value and a
 * header `reason`. See harness_inbound.h for the scenarios. */
#include <check.h>
#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../unit/check_main.h"
#include "harness_export.h"
#include "harness_inbound.h"

#define KF_ADMIN_MS 30000
#define KF_FLUSH_MS 30000

struct kf_source {
    const char *brokers;
    rd_kafka_t *producer;
    rd_kafka_t *consumer; /* of the dead-letter topic; NULL until read */
    rd_kafka_t *offsets;  /* asks the rule's group for its commits; never joins */
    char topic[96], group[96], dead[96];
    int partitions;
    int failed;           /* delivery reports with an error */
    struct in_deads seen; /* dead letters consumed so far */
};

static void kf_conf(rd_kafka_conf_t *conf, const char *name, const char *value)
{
    char err[256];
    ck_assert_msg(rd_kafka_conf_set(conf, name, value, err, sizeof err) == RD_KAFKA_CONF_OK,
                  "%s=%s: %s", name, value, err);
}

static void kf_on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    struct kf_source *k = opaque;
    if (m->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        fprintf(stderr, "it_inbound_kafka: delivery failed: %s\n", rd_kafka_err2str(m->err));
        k->failed++;
    }
}

static void kf_quiet_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    /* the broker is stopped on purpose in one scenario */
}

/* CreateTopics for one topic with `partitions` partitions. */
static void kf_create_topic(struct kf_source *k, const char *topic, int partitions)
{
    char err[256];
    rd_kafka_NewTopic_t *nt = rd_kafka_NewTopic_new(topic, partitions, 1, err, sizeof err);
    ck_assert_msg(nt != NULL, "%s: %s", topic, err);
    rd_kafka_queue_t *q = rd_kafka_queue_new(k->producer);
    rd_kafka_AdminOptions_t *opt =
        rd_kafka_AdminOptions_new(k->producer, RD_KAFKA_ADMIN_OP_CREATETOPICS);
    rd_kafka_AdminOptions_set_operation_timeout(opt, KF_ADMIN_MS, err, sizeof err);
    rd_kafka_CreateTopics(k->producer, &nt, 1, opt, q);
    rd_kafka_event_t *ev = rd_kafka_queue_poll(q, KF_ADMIN_MS + 5000);
    ck_assert_msg(ev != NULL, "CreateTopics: no answer from %s", k->brokers);
    ck_assert_msg(rd_kafka_event_error(ev) == RD_KAFKA_RESP_ERR_NO_ERROR, "CreateTopics: %s",
                  rd_kafka_event_error_string(ev));
    size_t n = 0;
    const rd_kafka_topic_result_t **tr =
        rd_kafka_CreateTopics_result_topics(rd_kafka_event_CreateTopics_result(ev), &n);
    ck_assert_uint_eq(n, 1);
    ck_assert_msg(rd_kafka_topic_result_error(tr[0]) == RD_KAFKA_RESP_ERR_NO_ERROR,
                  "create topic %s: %s", topic, rd_kafka_topic_result_error_string(tr[0]));
    rd_kafka_event_destroy(ev);
    rd_kafka_AdminOptions_destroy(opt);
    rd_kafka_NewTopic_destroy(nt);
    rd_kafka_queue_destroy(q);
}

static void kf_prepare(struct in_source *s, bool ordered)
{
    struct kf_source *k = s->ctx;
    char name[64];
    ex_unique_name(name, sizeof name, "inb");
    snprintf(k->topic, sizeof k->topic, "%s_commands", name);
    snprintf(k->group, sizeof k->group, "mqb_%s", name);
    snprintf(k->dead, sizeof k->dead, "%s_dead", name);
    k->partitions = ordered ? 1 : 4;
    kf_create_topic(k, k->topic, k->partitions);
    if (k->offsets) { /* it asked another group */
        rd_kafka_destroy(k->offsets);
        k->offsets = NULL;
    }
    kf_create_topic(k, k->dead, 1);
}

static void kf_write_connector(struct in_source *s, struct buf *yaml)
{
    struct kf_source *k = s->ctx;
    char text[512];
    /* A consumer killed with -9 stays in its group until its session
     * times out (librdkafka's default: 45 s); the restarted one gets
     * partitions only then. The broker's minimum keeps the wait short. */
    int n = snprintf(text, sizeof text,
                     "type: kafka, brokers: \"%s\", options: { session.timeout.ms: 6000,"
                     " heartbeat.interval.ms: 1000 }",
                     k->brokers);
    ck_assert(n > 0 && (size_t)n < sizeof text);
    buf_append(yaml, text, (size_t)n);
}

static void kf_write_source(struct in_source *s, struct buf *yaml)
{
    struct kf_source *k = s->ctx;
    char text[512];
    int n = s->dead_letter
                ? snprintf(text, sizeof text, "topic: %s, group: %s, dead_letter_topic: %s",
                           k->topic, k->group, k->dead)
                : snprintf(text, sizeof text, "topic: %s, group: %s", k->topic, k->group);
    ck_assert(n > 0 && (size_t)n < sizeof text);
    buf_append(yaml, text, (size_t)n);
}

/* One header when the field is present. */
static void kf_header(rd_kafka_headers_t *h, const char *name, const char *value)
{
    if (value)
        ck_assert(rd_kafka_header_add(h, name, -1, value, -1) == RD_KAFKA_RESP_ERR_NO_ERROR);
}

static void kf_produce(struct in_source *s, const struct in_rec *recs, size_t n)
{
    struct kf_source *k = s->ctx;
    for (size_t i = 0; i < n; i++) {
        rd_kafka_headers_t *h = rd_kafka_headers_new(3);
        kf_header(h, "mqttSecondTopic", recs[i].sub_topic);
        kf_header(h, "qoslevel", recs[i].qos);
        kf_header(h, "clientId", recs[i].client_id);
        rd_kafka_resp_err_t e;
        while ((e = rd_kafka_producev(k->producer, RD_KAFKA_V_TOPIC(k->topic),
                                      RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                      RD_KAFKA_V_VALUE((void *)recs[i].payload, recs[i].len),
                                      RD_KAFKA_V_HEADERS(h), RD_KAFKA_V_END)) ==
               RD_KAFKA_RESP_ERR__QUEUE_FULL)
            rd_kafka_poll(k->producer, 10); /* serve delivery reports, then again */
        ck_assert_msg(e == RD_KAFKA_RESP_ERR_NO_ERROR, "produce to %s: %s", k->topic,
                      rd_kafka_err2str(e));
    }
    ck_assert_msg(rd_kafka_flush(k->producer, KF_FLUSH_MS) == RD_KAFKA_RESP_ERR_NO_ERROR,
                  "%d records not delivered to %s within %d ms", rd_kafka_outq_len(k->producer),
                  k->topic, KF_FLUSH_MS);
    ck_assert_msg(k->failed == 0, "%d records could not be added to %s", k->failed, k->topic);
}

/* A consumer of the dead-letter topic's partition, from its first record. */
static void kf_dead_consumer(struct kf_source *k)
{
    char err[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    kf_conf(conf, "bootstrap.servers", k->brokers);
    kf_conf(conf, "group.id", k->dead); /* required by the API; never joined */
    kf_conf(conf, "enable.auto.commit", "false");
    kf_conf(conf, "enable.partition.eof", "false");
    kf_conf(conf, "fetch.wait.max.ms", "20");
    rd_kafka_conf_set_log_cb(conf, kf_quiet_log);
    k->consumer = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err);
    ck_assert_msg(k->consumer != NULL, "consumer: %s", err);
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, k->dead, 0)->offset = RD_KAFKA_OFFSET_BEGINNING;
    rd_kafka_resp_err_t e = rd_kafka_assign(k->consumer, l);
    ck_assert_msg(e == RD_KAFKA_RESP_ERR_NO_ERROR, "assign %s: %s", k->dead, rd_kafka_err2str(e));
    rd_kafka_topic_partition_list_destroy(l);
}

/* Take what the dead-letter consumer fetched: value and header reason. */
static void kf_read_dead(struct in_source *s, struct in_deads *out)
{
    struct kf_source *k = s->ctx;
    rd_kafka_message_t *m;
    if (!k->consumer)
        kf_dead_consumer(k);
    for (int wait = 50; (m = rd_kafka_consumer_poll(k->consumer, wait)) != NULL; wait = 0) {
        if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
            rd_kafka_headers_t *h = NULL;
            const void *v = NULL;
            size_t n = 0;
            char *reason = NULL;
            if (rd_kafka_message_headers(m, &h) == RD_KAFKA_RESP_ERR_NO_ERROR &&
                rd_kafka_header_get_last(h, "reason", &v, &n) == RD_KAFKA_RESP_ERR_NO_ERROR)
                reason = ex_strndup(v ? v : "", n);
            in_deads_add(&k->seen, m->payload, m->len, reason);
            free(reason);
        }
        rd_kafka_message_destroy(m);
    }
    in_deads_clear(out);
    for (size_t i = 0; i < k->seen.n; i++)
        in_deads_add(out, k->seen.v[i].payload, k->seen.v[i].len, k->seen.v[i].reason);
}

/* Sum over the topic's partitions of end offset - the rule's group's
 * committed offset (the start when it committed none); -1 when an answer
 * is missing. */
static int64_t kf_unacked(struct in_source *s)
{
    struct kf_source *k = s->ctx;
    char err[256];
    if (!k->offsets) {
        rd_kafka_conf_t *conf = rd_kafka_conf_new();
        kf_conf(conf, "bootstrap.servers", k->brokers);
        kf_conf(conf, "group.id", k->group); /* only OffsetFetch: never joins */
        kf_conf(conf, "enable.auto.commit", "false");
        rd_kafka_conf_set_log_cb(conf, kf_quiet_log);
        k->offsets = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err);
        ck_assert_msg(k->offsets != NULL, "consumer: %s", err);
    }
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(k->partitions);
    for (int p = 0; p < k->partitions; p++)
        rd_kafka_topic_partition_list_add(l, k->topic, p);
    int64_t total = -1;
    if (rd_kafka_committed(k->offsets, l, KF_ADMIN_MS) == RD_KAFKA_RESP_ERR_NO_ERROR) {
        total = 0;
        for (int p = 0; p < k->partitions && total >= 0; p++) {
            int64_t lo = -1, hi = -1;
            if (l->elems[p].err != RD_KAFKA_RESP_ERR_NO_ERROR ||
                rd_kafka_query_watermark_offsets(k->producer, k->topic, p, &lo, &hi, KF_ADMIN_MS) !=
                    RD_KAFKA_RESP_ERR_NO_ERROR) {
                total = -1;
                break;
            }
            int64_t at = l->elems[p].offset >= 0 ? l->elems[p].offset : lo;
            total += hi > at ? hi - at : 0;
        }
    }
    rd_kafka_topic_partition_list_destroy(l);
    return total;
}

static void kf_source_init(struct in_source *s, struct kf_source *k)
{
    char err[256];
    memset(k, 0, sizeof *k);
    k->brokers = ex_env("MQB_KAFKA_BROKERS");
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    kf_conf(conf, "bootstrap.servers", k->brokers);
    kf_conf(conf, "enable.idempotence", "true"); /* order kept across retries */
    kf_conf(conf, "linger.ms", "2");
    kf_conf(conf, "reconnect.backoff.max.ms", "500");
    rd_kafka_conf_set_dr_msg_cb(conf, kf_on_delivery);
    rd_kafka_conf_set_log_cb(conf, kf_quiet_log);
    rd_kafka_conf_set_opaque(conf, k);
    k->producer = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
    ck_assert_msg(k->producer != NULL, "producer: %s", err);
    *s = (struct in_source){
        .type = "kafka",
        .service = "kafka",
        .reads_ahead = true,
        .prepare = kf_prepare,
        .write_connector = kf_write_connector,
        .write_source = kf_write_source,
        .produce = kf_produce,
        .read_dead = kf_read_dead,
        .unacked = kf_unacked,
        .ctx = k,
    };
}

static void kf_source_free(struct kf_source *k)
{
    rd_kafka_flush(k->producer, KF_FLUSH_MS);
    rd_kafka_destroy(k->producer);
    if (k->consumer) {
        rd_kafka_consumer_close(k->consumer);
        rd_kafka_destroy(k->consumer);
    }
    if (k->offsets)
        rd_kafka_destroy(k->offsets);
    in_deads_clear(&k->seen);
    free(k->seen.v);
}

/* One test per scenario, each with its own producer. */
#define KF_TEST(name, scenario) \
    START_TEST(name) \
    { \
        struct in_source s; \
        struct kf_source k; \
        kf_source_init(&s, &k); \
        scenario(&s); \
        kf_source_free(&k); \
    } \
    END_TEST

KF_TEST(test_kafka_offline_subscriber_and_stopped_broker, in_scenario_offline)
KF_TEST(test_kafka_online_subtopics_qos_p2p, in_scenario_online)
KF_TEST(test_kafka_kill9_mid_stream, in_scenario_kill9)
KF_TEST(test_kafka_malformed_skipped_counted_dead_lettered, in_scenario_malformed)
KF_TEST(test_kafka_down_at_start, in_scenario_source_down)
KF_TEST(test_kafka_slow_subscriber_no_loss, in_scenario_slow_subscriber)
KF_TEST(test_kafka_reload_mid_stream, in_scenario_reload)
KF_TEST(test_kafka_restarted_mid_stream, in_scenario_source_restart)

static Suite *inbound_kafka_suite(void)
{
    Suite *s = suite_create("it_inbound_kafka");
    TCase *tc = tcase_create("kafka");
    tcase_set_timeout(tc, 150);
    if (it_mode_mosquitto()) {
        it_note_skip("it_inbound_kafka", "the rules engine is mqbridge behaviour");
    } else {
        tcase_add_test(tc, test_kafka_offline_subscriber_and_stopped_broker);
        tcase_add_test(tc, test_kafka_online_subtopics_qos_p2p);
        tcase_add_test(tc, test_kafka_kill9_mid_stream);
        tcase_add_test(tc, test_kafka_malformed_skipped_counted_dead_lettered);
        tcase_add_test(tc, test_kafka_down_at_start);
        tcase_add_test(tc, test_kafka_slow_subscriber_no_loss);
        tcase_add_test(tc, test_kafka_reload_mid_stream);
        tcase_add_test(tc, test_kafka_restarted_mid_stream);
    }
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(inbound_kafka_suite)
