/* Quality of service, both directions: packet ids and the PUBACK / PUBREC
 * / PUBREL / PUBCOMP exchanges, DUP on redelivery, the inflight window,
 * the bounded per-client queue, QoS 2 exactly once against a duplicated
 * PUBLISH, and per-topic order. */
#include <check.h>
#include <stdio.h>
#include <string.h>

#include "../unit/check_main.h"
#include "harness.h"

/* The next packet on r must be a PUBLISH of topic and payload at qos with
 * the given DUP flag; returns its packet id (non-zero for QoS > 0
 * [MQTT-2.3.1-1]). */
static uint16_t expect_publish(struct it_raw *r, const char *topic, const char *payload, int qos,
                               bool dup)
{
    struct it_pkt p;
    int got = it_raw_next(r, &p, IT_WAIT_MS);
    ck_assert_msg(got == 3, "want PUBLISH '%s' on %s, got %d", payload, topic, got);
    ck_assert_str_eq(p.topic, topic);
    ck_assert_msg(p.payload_len == strlen(payload) && !memcmp(p.payload, payload, p.payload_len),
                  "on %s: payload '%.*s', want '%s'", topic, (int)p.payload_len,
                  (const char *)p.payload, payload);
    ck_assert_msg(p.qos == qos, "'%s': QoS %d, want %d", payload, p.qos, qos);
    ck_assert_msg(p.dup == dup, "'%s': DUP %d, want %d", payload, p.dup, dup);
    ck_assert_msg(!p.retain, "'%s': RETAIN set on a live delivery [MQTT-3.3.1-9]", payload);
    ck_assert_msg(qos == 0 || p.pid != 0, "'%s': packet id 0 [MQTT-2.3.1-1]", payload);
    uint16_t pid = p.pid;
    it_pkt_clear(&p);
    return pid;
}

/* The next packet on r must be an ack of type with packet id pid. */
static void expect_ack(struct it_raw *r, int type, uint16_t pid)
{
    struct it_pkt p;
    int got = it_raw_next(r, &p, IT_WAIT_MS);
    ck_assert_msg(got == type, "want packet type %d for id %u, got %d", type, pid, got);
    ck_assert_msg(p.pid == pid, "type %d: packet id %u, want %u", type, p.pid, pid);
    it_pkt_clear(&p);
}

static void raw_connect(struct it_raw *r, uint16_t port, const char *id, bool clean, bool want_sp)
{
    struct it_connect_opts o = {.client_id = id, .clean = clean};
    bool sp = false;
    ck_assert_msg(it_raw_connect(r, port, &o, &sp) == 0, "%s: CONNECT refused", id);
    ck_assert_msg(sp == want_sp, "%s: session present %d, want %d", id, sp, want_sp);
}

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
    raw_connect(&pub, b.port, "it-qm-pub", true, false);
    raw_connect(&sub, b.port, "it-qm-sub", true, false);
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
                expect_ack(&pub, 4, pid); /* PUBACK [MQTT-4.3.2-2] */
            if (p == 2) {
                expect_ack(&pub, 5, pid); /* PUBREC [MQTT-4.3.3-2] */
                ck_assert_int_eq(it_raw_ack(&pub, 6, pid), 0);
                expect_ack(&pub, 7, pid); /* PUBCOMP */
            }
            int q = p < s ? p : s;
            uint16_t dpid = expect_publish(&sub, topic, payload, q, false);
            if (q == 1)
                ck_assert_int_eq(it_raw_ack(&sub, 4, dpid), 0);
            if (q == 2) {
                ck_assert_int_eq(it_raw_ack(&sub, 5, dpid), 0);
                expect_ack(&sub, 6, dpid); /* PUBREL, flags 0x2 checked by the decoder */
                ck_assert_int_eq(it_raw_ack(&sub, 7, dpid), 0);
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
    raw_connect(&sub, b.port, "it-dup1", false, false);
    ck_assert_int_eq(it_raw_sub1(&sub, "dup/1", 1), 1);
    client_connect(&pub, b.port, "it-dup1-pub", true);
    ck_assert_int_eq(it_client_publish(&pub, "dup/1", "m1", 1, false), 0);
    ck_assert(it_client_wait_published(&pub, 1, IT_WAIT_MS));

    uint16_t pid = expect_publish(&sub, "dup/1", "m1", 1, false);
    ck_assert_int_eq(it_raw_leave(&sub), 0); /* without PUBACK */
    raw_connect(&sub, b.port, "it-dup1", false, true);
    ck_assert_uint_eq(expect_publish(&sub, "dup/1", "m1", 1, true), pid);
    ck_assert_int_eq(it_raw_ack(&sub, 4, pid), 0);
    ck_assert_int_eq(it_raw_leave(&sub), 0);

    raw_connect(&sub, b.port, "it-dup1", false, true);
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
    raw_connect(&sub, b.port, "it-dup2", false, false);
    ck_assert_int_eq(it_raw_sub1(&sub, "dup/2", 2), 2);
    client_connect(&pub, b.port, "it-dup2-pub", true);
    ck_assert_int_eq(it_client_publish(&pub, "dup/2", "m2", 2, false), 0);
    ck_assert(it_client_wait_published(&pub, 1, IT_WAIT_MS));

    uint16_t pid = expect_publish(&sub, "dup/2", "m2", 2, false);
    ck_assert_int_eq(it_raw_leave(&sub), 0); /* without PUBREC */
    raw_connect(&sub, b.port, "it-dup2", false, true);
    ck_assert_uint_eq(expect_publish(&sub, "dup/2", "m2", 2, true), pid);
    ck_assert_int_eq(it_raw_ack(&sub, 5, pid), 0);
    expect_ack(&sub, 6, pid);
    ck_assert_int_eq(it_raw_leave(&sub), 0); /* without PUBCOMP */

    raw_connect(&sub, b.port, "it-dup2", false, true);
    expect_ack(&sub, 6, pid); /* PUBREL again */
    ck_assert_int_eq(it_raw_ack(&sub, 7, pid), 0);
    ck_assert_int_eq(it_raw_leave(&sub), 0);

    raw_connect(&sub, b.port, "it-dup2", false, true);
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
    raw_connect(&sub, b.port, "it-win", true, false);
    ck_assert_int_eq(it_raw_sub1(&sub, "win/t", 1), 1);
    client_connect(&pub, b.port, "it-win-pub", true);
    const char *payloads[] = {"0", "1", "2", "3", "4"};
    for (int i = 0; i < 5; i++)
        ck_assert_int_eq(it_client_publish(&pub, "win/t", payloads[i], 1, false), 0);
    ck_assert(it_client_wait_published(&pub, 5, IT_WAIT_MS));

    uint16_t pids[5];
    pids[0] = expect_publish(&sub, "win/t", "0", 1, false);
    pids[1] = expect_publish(&sub, "win/t", "1", 1, false);
    ck_assert_msg(it_raw_next(&sub, NULL, IT_QUIET_MS) == IT_RAW_TIMEOUT,
                  "a third message while two are unacknowledged");
    ck_assert_int_eq(it_raw_ack(&sub, 4, pids[0]), 0);
    pids[2] = expect_publish(&sub, "win/t", "2", 1, false);
    if (it_mode_mosquitto()) /* it releases two per PUBACK here: its bug */
        it_note_skip("one more message per PUBACK", "mosquitto 2.0 sends two");
    else
        ck_assert_msg(it_raw_next(&sub, NULL, IT_QUIET_MS) == IT_RAW_TIMEOUT,
                      "more than one message for one PUBACK");
    ck_assert_int_eq(it_raw_ack(&sub, 4, pids[1]), 0);
    ck_assert_int_eq(it_raw_ack(&sub, 4, pids[2]), 0);
    pids[3] = expect_publish(&sub, "win/t", "3", 1, false);
    pids[4] = expect_publish(&sub, "win/t", "4", 1, false);
    ck_assert_int_eq(it_raw_ack(&sub, 4, pids[3]), 0);
    ck_assert_int_eq(it_raw_ack(&sub, 4, pids[4]), 0);
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
    raw_connect(&sub, b.port, "it-queue", false, false);
    ck_assert_int_eq(it_raw_sub1(&sub, "queue/t", 1), 1);
    ck_assert_int_eq(it_raw_leave(&sub), 0);

    client_connect(&pub, b.port, "it-queue-pub", true);
    for (int i = 0; i < 10; i++) {
        char payload[32];
        snprintf(payload, sizeof payload, "%d", i);
        ck_assert_int_eq(it_client_publish(&pub, "queue/t", payload, 1, false), 0);
    }
    ck_assert(it_client_wait_published(&pub, 10, IT_WAIT_MS));

    raw_connect(&sub, b.port, "it-queue", false, true);
    for (int i = 0; i < 3; i++) {
        char payload[32];
        snprintf(payload, sizeof payload, "%d", i);
        ck_assert_int_eq(it_raw_ack(&sub, 4, expect_publish(&sub, "queue/t", payload, 1, false)),
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
    raw_connect(&pub, b.port, "it-eo-pub", true, false);

    ck_assert_int_eq(it_raw_publish(&pub, "eo/t", "once", 4, 2, false, false, 7), 0);
    expect_ack(&pub, 5, 7);
    ck_assert_int_eq(it_raw_publish(&pub, "eo/t", "once", 4, 2, false, true, 7), 0);
    expect_ack(&pub, 5, 7);
    ck_assert_int_eq(it_raw_ack(&pub, 6, 7), 0);
    expect_ack(&pub, 7, 7);
    ck_assert(it_client_wait_msgs(&sub, 1, IT_WAIT_MS));
    ck_assert_msg(it_client_quiet(&sub, 1, IT_QUIET_MS), "QoS 2 message delivered twice");
    ck_assert_str_eq(it_client_msg(&sub, 0).payload, "once");
    ck_assert_int_eq(it_client_msg(&sub, 0).qos, 2);

    ck_assert_int_eq(it_raw_publish(&pub, "eo/t", "again", 5, 2, false, false, 7), 0);
    expect_ack(&pub, 5, 7);
    ck_assert_int_eq(it_raw_ack(&pub, 6, 7), 0);
    expect_ack(&pub, 7, 7);
    ck_assert(it_client_wait_msgs(&sub, 2, IT_WAIT_MS));
    ck_assert(it_client_quiet(&sub, 2, IT_QUIET_MS));
    ck_assert_str_eq(it_client_msg(&sub, 1).payload, "again");
    it_raw_close(&pub);
    it_client_close(&sub);
    it_broker_cleanup(&b);
}
END_TEST

/* [MQTT-4.6.0-6] one publisher, one topic, 2000 numbered messages: the
 * subscriber receives all, in order, at QoS 1 and (on loopback) at QoS 0. */
static void check_order(int qos)
{
    enum { N = 2000 };
    struct it_broker b;
    it_broker_start(&b, NULL);
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

START_TEST(test_order_qos1) { check_order(1); }
END_TEST

START_TEST(test_order_qos0) { check_order(0); }
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
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(qos_suite)
