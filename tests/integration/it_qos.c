/* Quality of service, both directions: packet ids and the PUBACK / PUBREC
 * / PUBREL / PUBCOMP exchanges, DUP on redelivery, the inflight window,
 * the bounded per-client queue, QoS 2 exactly once against a duplicated
 * PUBLISH, and per-topic order. */
#include <check.h>
#include <stdio.h>
#include <string.h>

#include "../unit/check_main.h"
#include "harness.h"

static void client_connect(struct it_client *c, uint16_t port, const char *id, bool clean)
{
    struct it_connect_opts o = {.client_id = id, .clean = clean};
    ck_assert_msg(it_client_open(c, port, &o) == 0, "%s: CONNECT refused", id);
}

/* Publisher QoS p x subscription QoS s, raw clients on both sides: the
 * delivery uses min(p, s) and each side completes its handshake with the
 * packet ids the other side chose. */
START_TEST(test_qos_matrix_packet_ids)
{
    struct it_broker b;
    it_broker_start(&b, NULL);
    struct it_raw pub, sub;
    it_raw_connect_ok(&pub, b.port, "it-qm-pub", true, false);
    it_raw_connect_ok(&sub, b.port, "it-qm-sub", true, false);
    for (int s = 0; s <= 2; s++) {
        char topic[32];
        snprintf(topic, sizeof topic, "qm/s%d", s);
        ck_assert_int_eq(it_raw_sub1(&sub, topic, (uint8_t)s), s);
        for (int p = 0; p <= 2; p++) {
            char payload[32];
            snprintf(payload, sizeof payload, "p%d-s%d", p, s);
            uint16_t pid = (uint16_t)(100 + 10 * s + p);
            ck_assert_int_eq(it_raw_publish(&pub, topic, payload, strlen(payload), (uint8_t)p,
                                            false, false, p ? pid : 0),
                             0);
            if (p == 1)
                it_raw_expect_ack(&pub, MQTT_PUBACK, pid); /* [MQTT-4.3.2-2] */
            if (p == 2) {
                it_raw_expect_ack(&pub, MQTT_PUBREC, pid); /* [MQTT-4.3.3-2] */
                ck_assert_int_eq(it_raw_ack(&pub, MQTT_PUBREL, pid), 0);
                it_raw_expect_ack(&pub, MQTT_PUBCOMP, pid);
            }
            int q = p < s ? p : s;
            uint16_t dpid = it_raw_expect_publish(&sub, topic, payload, q, false);
            if (q == 1)
                ck_assert_int_eq(it_raw_ack(&sub, MQTT_PUBACK, dpid), 0);
            if (q == 2) {
                ck_assert_int_eq(it_raw_ack(&sub, MQTT_PUBREC, dpid), 0);
                it_raw_expect_ack(&sub, MQTT_PUBREL, dpid); /* flags 0x2: decoder */
                ck_assert_int_eq(it_raw_ack(&sub, MQTT_PUBCOMP, dpid), 0);
            }
        }
    }
    ck_assert_int_eq(it_raw_next(&sub, NULL, IT_QUIET_MS), IT_RAW_TIMEOUT);
    ck_assert_int_eq(it_raw_next(&pub, NULL, 0), IT_RAW_TIMEOUT);
    it_raw_close(&pub);
    it_raw_close(&sub);
    it_broker_cleanup(&b);
}
END_TEST

/* A persistent subscriber that received a QoS 1 message without acking it
 * gets it again after reconnecting, with DUP=1 and the same packet id
 * [MQTT-4.4.0-1] [MQTT-3.3.1-1]; once acked, never again. */
START_TEST(test_qos1_redelivery_dup)
{
    struct it_broker b;
    it_broker_start(&b, NULL);
    struct it_raw sub;
    struct it_client pub;
    it_raw_connect_ok(&sub, b.port, "it-dup1", false, false);
    ck_assert_int_eq(it_raw_sub1(&sub, "dup/1", 1), 1);
    client_connect(&pub, b.port, "it-dup1-pub", true);
    ck_assert_int_eq(it_client_publish(&pub, "dup/1", "m1", 1, false), 0);
    ck_assert(it_client_wait_published(&pub, 1, IT_WAIT_MS));

    uint16_t pid = it_raw_expect_publish(&sub, "dup/1", "m1", 1, false);
    ck_assert_int_eq(it_raw_leave(&sub), 0); /* without PUBACK */
    it_raw_connect_ok(&sub, b.port, "it-dup1", false, true);
    ck_assert_uint_eq(it_raw_expect_publish(&sub, "dup/1", "m1", 1, true), pid);
    ck_assert_int_eq(it_raw_ack(&sub, MQTT_PUBACK, pid), 0);
    ck_assert_int_eq(it_raw_leave(&sub), 0);

    it_raw_connect_ok(&sub, b.port, "it-dup1", false, true);
    ck_assert_int_eq(it_raw_next(&sub, NULL, IT_QUIET_MS), IT_RAW_TIMEOUT);
    it_raw_close(&sub);
    it_client_close(&pub);
    it_broker_cleanup(&b);
}
END_TEST

/* QoS 2 towards a persistent subscriber, interrupted twice: before PUBREC
 * the PUBLISH comes again with DUP=1 and the same id; after PUBREC the
 * PUBREL comes again, not the PUBLISH [MQTT-4.4.0-1]. */
START_TEST(test_qos2_redelivery_dup_and_pubrel)
{
    struct it_broker b;
    it_broker_start(&b, NULL);
    struct it_raw sub;
    struct it_client pub;
    it_raw_connect_ok(&sub, b.port, "it-dup2", false, false);
    ck_assert_int_eq(it_raw_sub1(&sub, "dup/2", 2), 2);
    client_connect(&pub, b.port, "it-dup2-pub", true);
    ck_assert_int_eq(it_client_publish(&pub, "dup/2", "m2", 2, false), 0);
    ck_assert(it_client_wait_published(&pub, 1, IT_WAIT_MS));

    uint16_t pid = it_raw_expect_publish(&sub, "dup/2", "m2", 2, false);
    ck_assert_int_eq(it_raw_leave(&sub), 0); /* without PUBREC */
    it_raw_connect_ok(&sub, b.port, "it-dup2", false, true);
    ck_assert_uint_eq(it_raw_expect_publish(&sub, "dup/2", "m2", 2, true), pid);
    ck_assert_int_eq(it_raw_ack(&sub, MQTT_PUBREC, pid), 0);
    it_raw_expect_ack(&sub, MQTT_PUBREL, pid);
    ck_assert_int_eq(it_raw_leave(&sub), 0); /* without PUBCOMP */

    it_raw_connect_ok(&sub, b.port, "it-dup2", false, true);
    it_raw_expect_ack(&sub, MQTT_PUBREL, pid); /* PUBREL again */
    ck_assert_int_eq(it_raw_ack(&sub, MQTT_PUBCOMP, pid), 0);
    ck_assert_int_eq(it_raw_leave(&sub), 0);

    it_raw_connect_ok(&sub, b.port, "it-dup2", false, true);
    ck_assert_int_eq(it_raw_next(&sub, NULL, IT_QUIET_MS), IT_RAW_TIMEOUT);
    it_raw_close(&sub);
    it_client_close(&pub);
    it_broker_cleanup(&b);
}
END_TEST

/* max_inflight 2: a subscriber that does not ack gets exactly 2 of 5 QoS 1
 * messages; each PUBACK lets exactly one more through, in order. */
START_TEST(test_inflight_window)
{
    struct it_broker b;
    struct it_broker_opts opts = {.max_inflight = 2};
    it_broker_start(&b, &opts);
    struct it_raw sub;
    struct it_client pub;
    it_raw_connect_ok(&sub, b.port, "it-win", true, false);
    ck_assert_int_eq(it_raw_sub1(&sub, "win/t", 1), 1);
    client_connect(&pub, b.port, "it-win-pub", true);
    const char *payloads[] = {"0", "1", "2", "3", "4"};
    for (int i = 0; i < 5; i++)
        ck_assert_int_eq(it_client_publish(&pub, "win/t", payloads[i], 1, false), 0);
    ck_assert(it_client_wait_published(&pub, 5, IT_WAIT_MS));

    uint16_t pids[5];
    pids[0] = it_raw_expect_publish(&sub, "win/t", "0", 1, false);
    pids[1] = it_raw_expect_publish(&sub, "win/t", "1", 1, false);
    ck_assert_msg(it_raw_next(&sub, NULL, IT_QUIET_MS) == IT_RAW_TIMEOUT,
                  "a third message while two are unacknowledged");
    ck_assert_int_eq(it_raw_ack(&sub, MQTT_PUBACK, pids[0]), 0);
    pids[2] = it_raw_expect_publish(&sub, "win/t", "2", 1, false);
    if (it_mode_mosquitto()) /* it releases two per PUBACK here: its bug */
        it_note_skip("one more message per PUBACK", "mosquitto 2.0 sends two");
    else
        ck_assert_msg(it_raw_next(&sub, NULL, IT_QUIET_MS) == IT_RAW_TIMEOUT,
                      "more than one message for one PUBACK");
    ck_assert_int_eq(it_raw_ack(&sub, MQTT_PUBACK, pids[1]), 0);
    ck_assert_int_eq(it_raw_ack(&sub, MQTT_PUBACK, pids[2]), 0);
    pids[3] = it_raw_expect_publish(&sub, "win/t", "3", 1, false);
    pids[4] = it_raw_expect_publish(&sub, "win/t", "4", 1, false);
    ck_assert_int_eq(it_raw_ack(&sub, MQTT_PUBACK, pids[3]), 0);
    ck_assert_int_eq(it_raw_ack(&sub, MQTT_PUBACK, pids[4]), 0);
    ck_assert_int_eq(it_raw_next(&sub, NULL, IT_QUIET_MS), IT_RAW_TIMEOUT);
    it_raw_close(&sub);
    it_client_close(&pub);
    it_broker_cleanup(&b);
}
END_TEST

/* max_queued 3: an offline persistent subscriber misses 10 QoS 1 messages;
 * on reconnect it gets exactly the first 3, the rest were dropped. */
START_TEST(test_queue_bound_drops_newest)
{
    struct it_broker b;
    struct it_broker_opts opts = {.max_queued = 3};
    it_broker_start(&b, &opts);
    struct it_raw sub;
    struct it_client pub;
    it_raw_connect_ok(&sub, b.port, "it-queue", false, false);
    ck_assert_int_eq(it_raw_sub1(&sub, "queue/t", 1), 1);
    ck_assert_int_eq(it_raw_leave(&sub), 0);

    client_connect(&pub, b.port, "it-queue-pub", true);
    for (int i = 0; i < 10; i++) {
        char payload[32];
        snprintf(payload, sizeof payload, "%d", i);
        ck_assert_int_eq(it_client_publish(&pub, "queue/t", payload, 1, false), 0);
    }
    ck_assert(it_client_wait_published(&pub, 10, IT_WAIT_MS));

    it_raw_connect_ok(&sub, b.port, "it-queue", false, true);
    for (int i = 0; i < 3; i++) {
        char payload[32];
        snprintf(payload, sizeof payload, "%d", i);
        ck_assert_int_eq(it_raw_ack(&sub, MQTT_PUBACK,
                                    it_raw_expect_publish(&sub, "queue/t", payload, 1, false)),
                         0);
    }
    ck_assert_msg(it_raw_next(&sub, NULL, IT_QUIET_MS) == IT_RAW_TIMEOUT,
                  "more than max_queued messages were kept");
    it_raw_close(&sub);
    it_client_close(&pub);
    it_broker_cleanup(&b);
}
END_TEST

/* A QoS 2 PUBLISH sent twice (the second with DUP=1) before PUBREL is one
 * message: PUBREC both times, one delivery [MQTT-4.3.3-2]. After PUBCOMP
 * the packet id is free and the same id carries a new message. */
START_TEST(test_qos2_exactly_once_dup_publish)
{
    struct it_broker b;
    it_broker_start(&b, NULL);
    struct it_client sub;
    struct it_raw pub;
    client_connect(&sub, b.port, "it-eo-sub", true);
    ck_assert_int_eq(it_client_subscribe(&sub, "eo/t", 2), 2);
    it_raw_connect_ok(&pub, b.port, "it-eo-pub", true, false);

    ck_assert_int_eq(it_raw_publish(&pub, "eo/t", "once", 4, 2, false, false, 7), 0);
    it_raw_expect_ack(&pub, MQTT_PUBREC, 7);
    ck_assert_int_eq(it_raw_publish(&pub, "eo/t", "once", 4, 2, false, true, 7), 0);
    it_raw_expect_ack(&pub, MQTT_PUBREC, 7);
    ck_assert_int_eq(it_raw_ack(&pub, MQTT_PUBREL, 7), 0);
    it_raw_expect_ack(&pub, MQTT_PUBCOMP, 7);
    ck_assert(it_client_wait_msgs(&sub, 1, IT_WAIT_MS));
    ck_assert_msg(it_client_quiet(&sub, 1, IT_QUIET_MS), "QoS 2 message delivered twice");
    ck_assert_str_eq(it_client_msg(&sub, 0).payload, "once");
    ck_assert_int_eq(it_client_msg(&sub, 0).qos, 2);

    ck_assert_int_eq(it_raw_publish(&pub, "eo/t", "again", 5, 2, false, false, 7), 0);
    it_raw_expect_ack(&pub, MQTT_PUBREC, 7);
    ck_assert_int_eq(it_raw_ack(&pub, MQTT_PUBREL, 7), 0);
    it_raw_expect_ack(&pub, MQTT_PUBCOMP, 7);
    ck_assert(it_client_wait_msgs(&sub, 2, IT_WAIT_MS));
    ck_assert(it_client_quiet(&sub, 2, IT_QUIET_MS));
    ck_assert_str_eq(it_client_msg(&sub, 1).payload, "again");

    /* [MQTT-4.3.3-2] a PUBREL is answered by PUBCOMP, known id or not */
    ck_assert_int_eq(it_raw_ack(&pub, MQTT_PUBREL, 99), 0);
    it_raw_expect_ack(&pub, MQTT_PUBCOMP, 99);
    it_raw_close(&pub);
    it_client_close(&sub);
    it_broker_cleanup(&b);
}
END_TEST

/* [MQTT-4.6.0-6] one publisher, one topic, 2000 numbered messages: the
 * subscriber receives all, in order, at QoS 1 and (on loopback) at QoS 0.
 * The queue holds all of them: on a loaded machine the subscriber may fall
 * more than the default 1000 behind, and max_queued drops are tested on
 * their own (test_queue_bound_drops_newest). */
static void check_order(int qos)
{
    enum { N = 2000 };
    struct it_broker b;
    struct it_broker_opts opts = {.max_queued = 2 * N};
    it_broker_start(&b, &opts);
    struct it_client sub, pub;
    client_connect(&sub, b.port, "it-order-sub", true);
    ck_assert_int_eq(it_client_subscribe(&sub, "order/t", qos), qos);
    client_connect(&pub, b.port, "it-order-pub", true);
    for (int i = 0; i < N; i++) {
        char payload[32];
        snprintf(payload, sizeof payload, "%d", i);
        ck_assert_int_eq(it_client_publish(&pub, "order/t", payload, qos, false), 0);
    }
    ck_assert(it_client_wait_published(&pub, N, 30000));
    ck_assert_msg(it_client_wait_msgs(&sub, N, 30000), "QoS %d: %zu of %d received", qos,
                  it_client_count(&sub), N);
    for (int i = 0; i < N; i++) {
        struct it_msg m = it_client_msg(&sub, (size_t)i);
        char want[32];
        snprintf(want, sizeof want, "%d", i);
        ck_assert_msg(strcmp(m.payload, want) == 0, "QoS %d: message %d is '%s'", qos, i,
                      m.payload);
        ck_assert_int_eq(m.qos, qos);
    }
    ck_assert(it_client_quiet(&sub, N, IT_QUIET_MS));
    it_client_close(&pub);
    it_client_close(&sub);
    it_broker_cleanup(&b);
}

START_TEST(test_order_qos1)
{
    check_order(1);
}
END_TEST

START_TEST(test_order_qos0)
{
    check_order(0);
}
END_TEST

/* Publish "0".."n-1" (from first) on topic at qos without waiting. */
static void publish_numbered(struct it_client *pub, const char *topic, int first, int n, int qos)
{
    for (int i = first; i < first + n; i++) {
        char payload[32];
        snprintf(payload, sizeof payload, "%d", i);
        ck_assert_int_eq(it_client_publish(pub, topic, payload, qos, false), 0);
    }
}

/* A persistent subscriber comes back while its offline queue drains and
 * new messages keep coming: all 400 arrive, in order [MQTT-4.6.0-6]. */
START_TEST(test_order_offline_then_live)
{
    struct it_broker b;
    it_broker_start(&b, NULL);
    struct it_client sub, pub;
    client_connect(&sub, b.port, "it-ofl", false);
    ck_assert_int_eq(it_client_subscribe(&sub, "ofl/t", 1), 1);
    it_client_close(&sub);
    client_connect(&pub, b.port, "it-ofl-pub", true);
    publish_numbered(&pub, "ofl/t", 0, 200, 1);
    ck_assert(it_client_wait_published(&pub, 200, IT_WAIT_MS));

    client_connect(&sub, b.port, "it-ofl", false);
    ck_assert(sub.session_present);
    publish_numbered(&pub, "ofl/t", 200, 200, 1); /* races the queue drain */
    ck_assert_msg(it_client_wait_msgs(&sub, 400, 20000), "%zu of 400 received",
                  it_client_count(&sub));
    for (int i = 0; i < 400; i++) {
        char want[32];
        snprintf(want, sizeof want, "%d", i);
        ck_assert_msg(strcmp(it_client_msg(&sub, (size_t)i).payload, want) == 0,
                      "message %d is '%s'", i, it_client_msg(&sub, (size_t)i).payload);
    }
    ck_assert(it_client_quiet(&sub, 400, IT_QUIET_MS));
    it_client_close(&pub);
    it_client_close(&sub);
    it_broker_cleanup(&b);
}
END_TEST

/* max_inflight 2, persistent subscriber leaves with 2 unacknowledged and 3
 * queued: on return the 2 come again first (DUP=1, same ids), then the 3
 * queued, in publish order. */
START_TEST(test_redelivery_before_queue)
{
    struct it_broker b;
    struct it_broker_opts opts = {.max_inflight = 2};
    it_broker_start(&b, &opts);
    struct it_raw sub;
    struct it_client pub;
    it_raw_connect_ok(&sub, b.port, "it-rdq", false, false);
    ck_assert_int_eq(it_raw_sub1(&sub, "rdq/t", 1), 1);
    client_connect(&pub, b.port, "it-rdq-pub", true);
    publish_numbered(&pub, "rdq/t", 0, 5, 1);
    ck_assert(it_client_wait_published(&pub, 5, IT_WAIT_MS));
    uint16_t p0 = it_raw_expect_publish(&sub, "rdq/t", "0", 1, false);
    uint16_t p1 = it_raw_expect_publish(&sub, "rdq/t", "1", 1, false);
    ck_assert_int_eq(it_raw_leave(&sub), 0);

    it_raw_connect_ok(&sub, b.port, "it-rdq", false, true);
    ck_assert_uint_eq(it_raw_expect_publish(&sub, "rdq/t", "0", 1, true), p0);
    ck_assert_uint_eq(it_raw_expect_publish(&sub, "rdq/t", "1", 1, true), p1);
    ck_assert_int_eq(it_raw_ack(&sub, MQTT_PUBACK, p0), 0);
    ck_assert_int_eq(it_raw_ack(&sub, MQTT_PUBACK, p1), 0);
    const char *rest[] = {"2", "3", "4"};
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(
            it_raw_ack(&sub, MQTT_PUBACK, it_raw_expect_publish(&sub, "rdq/t", rest[i], 1, false)),
            0);
    ck_assert_int_eq(it_raw_next(&sub, NULL, IT_QUIET_MS), IT_RAW_TIMEOUT);
    it_raw_close(&sub);
    it_client_close(&pub);
    it_broker_cleanup(&b);
}
END_TEST

static Suite *qos_suite(void)
{
    Suite *s = suite_create("it_qos");
    TCase *tc = tcase_create("qos");
    tcase_set_timeout(tc, 90);
    tcase_add_test(tc, test_qos_matrix_packet_ids);
    tcase_add_test(tc, test_qos1_redelivery_dup);
    tcase_add_test(tc, test_qos2_redelivery_dup_and_pubrel);
    tcase_add_test(tc, test_inflight_window);
    tcase_add_test(tc, test_queue_bound_drops_newest);
    tcase_add_test(tc, test_qos2_exactly_once_dup_publish);
    tcase_add_test(tc, test_order_qos1);
    tcase_add_test(tc, test_order_qos0);
    tcase_add_test(tc, test_order_offline_then_live);
    tcase_add_test(tc, test_redelivery_before_queue);
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(qos_suite)
