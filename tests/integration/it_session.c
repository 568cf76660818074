/* Sessions: take-over by a second connection with the same client id,
 * persistent sessions (cleanSession=0) keeping subscriptions and queued
 * QoS 1/2 messages while away and across a SIGTERM restart or a kill -9,
 * and cleanSession=1 discarding a persistent session. */
#include <check.h>
#include <stdio.h>
#include <string.h>

#include "../unit/check_main.h"
#include "harness.h"

/* Receive n PUBLISHes on r (any order), acknowledge each at its QoS, and
 * check that topic topics[i] came with payloads[i] at qos[i]. */
static void receive_and_ack(struct it_raw *r, size_t n, const char *const *topics,
                            const char *const *payloads, const int *qos)
{
    bool seen[8] = {false};
    for (size_t k = 0; k < n; k++) {
        struct it_pkt p;
        int got = it_raw_next(r, &p, IT_WAIT_MS);
        ck_assert_msg(got == MQTT_PUBLISH, "message %zu of %zu: got %d, want PUBLISH", k + 1, n,
                      got);
        size_t i = 0;
        while (i < n && strcmp(p.topic, topics[i]) != 0)
            i++;
        ck_assert_msg(i < n && !seen[i], "unexpected or repeated message on '%s'", p.topic);
        seen[i] = true;
        ck_assert_msg(p.payload_len == strlen(payloads[i]) &&
                          !memcmp(p.payload, payloads[i], p.payload_len),
                      "%s: wrong payload", topics[i]);
        ck_assert_msg(p.qos == qos[i], "%s: QoS %d, want %d", topics[i], p.qos, qos[i]);
        uint16_t pid = p.pid;
        it_pkt_clear(&p);
        if (qos[i] == 1)
            ck_assert_int_eq(it_raw_ack(r, MQTT_PUBACK, pid), 0);
        if (qos[i] == 2) {
            ck_assert_int_eq(it_raw_ack(r, MQTT_PUBREC, pid), 0);
            struct it_pkt rel;
            ck_assert_int_eq(it_raw_next(r, &rel, IT_WAIT_MS), MQTT_PUBREL);
            ck_assert_uint_eq(rel.pid, pid);
            it_pkt_clear(&rel);
            ck_assert_int_eq(it_raw_ack(r, MQTT_PUBCOMP, pid), 0);
        }
    }
}

/* [MQTT-3.1.4-2] the second connection with a client id takes over: the
 * first is closed, the second accepted, with cleanSession=1 and =0. */
START_TEST(test_takeover_closes_first)
{
    struct it_broker b;
    it_broker_start(&b, NULL);
    for (int clean = 1; clean >= 0; clean--) {
        const char *id = clean ? "it-take-clean" : "it-take-persistent";
        struct it_raw first, second;
        it_raw_connect_ok(&first, b.port, id, clean, false);
        it_raw_connect_ok(&second, b.port, id, clean, !clean);
        ck_assert_msg(it_raw_wait_eof(&first, IT_WAIT_MS) == IT_RAW_EOF,
                      "%s: first connection still open", id);
        ck_assert_int_eq(it_raw_pingreq(&second), 0);
        ck_assert_int_eq(it_raw_next(&second, NULL, IT_WAIT_MS), MQTT_PINGRESP);
        it_raw_close(&first);
        it_raw_close(&second);
    }
    it_broker_cleanup(&b);
}
END_TEST

/* cleanSession=0 take-over: session_present=1 [MQTT-3.2.2-2]; the QoS 1
 * message the first connection had not acknowledged comes again on the
 * second with DUP=1 and the same packet id, and the subscription of the
 * first connection keeps delivering to the second. */
START_TEST(test_takeover_keeps_session)
{
    struct it_broker b;
    it_broker_start(&b, NULL);
    struct it_raw first, second, pub;
    it_raw_connect_ok(&first, b.port, "it-take-sess", false, false);
    ck_assert_int_eq(it_raw_sub1(&first, "take/#", 1), 1);
    it_raw_connect_ok(&pub, b.port, "it-take-pub", true, false);
    ck_assert_int_eq(it_raw_publish(&pub, "take/x", "inflight", 8, 1, false, false, 1), 0);
    it_raw_expect_ack(&pub, MQTT_PUBACK, 1);
    uint16_t pid = it_raw_expect_publish(&first, "take/x", "inflight", 1, false);

    it_raw_connect_ok(&second, b.port, "it-take-sess", false, true);
    ck_assert_int_eq(it_raw_wait_eof(&first, IT_WAIT_MS), IT_RAW_EOF);
    ck_assert_uint_eq(it_raw_expect_publish(&second, "take/x", "inflight", 1, true), pid);
    ck_assert_int_eq(it_raw_ack(&second, MQTT_PUBACK, pid), 0);

    ck_assert_int_eq(it_raw_publish(&pub, "take/x", "hello", 5, 1, false, false, 2), 0);
    it_raw_expect_ack(&pub, MQTT_PUBACK, 2);
    const char *topics[] = {"take/x"}, *payloads[] = {"hello"};
    const int qos[] = {1};
    receive_and_ack(&second, 1, topics, payloads, qos);
    ck_assert_int_eq(it_raw_next(&second, NULL, IT_QUIET_MS), IT_RAW_TIMEOUT);
    it_raw_close(&pub);
    it_raw_close(&first);
    it_raw_close(&second);
    it_broker_cleanup(&b);
}
END_TEST

/* Subscribe at QoS 1 and 2 with cleanSession=0, leave, get one message on
 * each topic published while away. */
static void subscribe_and_leave(uint16_t port, const char *id)
{
    struct it_raw sub;
    it_raw_connect_ok(&sub, port, id, false, false);
    ck_assert_int_eq(it_raw_sub1(&sub, "keep/1", 1), 1);
    ck_assert_int_eq(it_raw_sub1(&sub, "keep/2", 2), 2);
    ck_assert_int_eq(it_raw_leave(&sub), 0);
}

static void publish_while_away(uint16_t port)
{
    struct it_client pub;
    struct it_connect_opts o = {.client_id = "it-keep-pub", .clean = true};
    ck_assert_int_eq(it_client_open(&pub, port, &o), 0);
    /* QoS 0 is not kept for an offline client (SEMANTICS.md) */
    ck_assert_int_eq(it_client_publish(&pub, "keep/1", "zero", 0, false), 0);
    ck_assert_int_eq(it_client_publish(&pub, "keep/1", "one", 1, false), 0);
    ck_assert_int_eq(it_client_publish(&pub, "keep/2", "two", 2, false), 0);
    ck_assert(it_client_wait_published(&pub, 3, IT_WAIT_MS));
    it_client_close(&pub);
}

static const char *const keep_topics[] = {"keep/1", "keep/2"};
static const char *const keep_payloads[] = {"one", "two"};
static const int keep_qos[] = {1, 2};

/* [MQTT-3.1.2-4] [MQTT-3.1.2-5] subscriptions and QoS 1/2 messages are
 * kept while the client is away. */
START_TEST(test_persistent_session_while_away)
{
    struct it_broker b;
    it_broker_start(&b, NULL);
    subscribe_and_leave(b.port, "it-keep");
    publish_while_away(b.port);
    struct it_raw sub;
    it_raw_connect_ok(&sub, b.port, "it-keep", false, true);
    receive_and_ack(&sub, 2, keep_topics, keep_payloads, keep_qos);
    ck_assert_int_eq(it_raw_next(&sub, NULL, IT_QUIET_MS), IT_RAW_TIMEOUT);
    it_raw_close(&sub);
    it_broker_cleanup(&b);
}
END_TEST

/* The same across SIGTERM (exit status 0) and a restart on the same port
 * and folder; the subscriptions still route new messages afterwards. */
START_TEST(test_persistent_session_survives_restart)
{
    struct it_broker b;
    it_broker_start(&b, NULL);
    subscribe_and_leave(b.port, "it-keep-rs");
    publish_while_away(b.port);
    ck_assert_int_eq(it_broker_stop(&b), 0);
    it_broker_restart(&b);

    struct it_raw sub;
    it_raw_connect_ok(&sub, b.port, "it-keep-rs", false, true);
    receive_and_ack(&sub, 2, keep_topics, keep_payloads, keep_qos);
    ck_assert_int_eq(it_raw_next(&sub, NULL, IT_QUIET_MS), IT_RAW_TIMEOUT);
    ck_assert_int_eq(it_raw_leave(&sub), 0);

    publish_while_away(b.port);
    it_raw_connect_ok(&sub, b.port, "it-keep-rs", false, true);
    receive_and_ack(&sub, 2, keep_topics, keep_payloads, keep_qos);
    it_raw_close(&sub);
    ck_assert_int_eq(it_broker_stop(&b), 0);
    it_broker_cleanup(&b);
}
END_TEST

/* Messages sent but not acknowledged before a SIGTERM restart come again
 * afterwards: QoS 1 as a PUBLISH with DUP=1 and QoS 2 after PUBREC as a
 * PUBREL, both with their packet ids [MQTT-4.4.0-1]. */
START_TEST(test_unacked_survive_restart)
{
    struct it_broker b;
    it_broker_start(&b, NULL);
    subscribe_and_leave(b.port, "it-unacked");
    struct it_raw sub;
    it_raw_connect_ok(&sub, b.port, "it-unacked", false, true);
    publish_while_away(b.port); /* "while away" is now while online */
    uint16_t pid1 = 0, pid2 = 0;
    for (int k = 0; k < 3; k++) { /* "zero" at QoS 0, "one" at 1, "two" at 2 */
        struct it_pkt p;
        ck_assert_int_eq(it_raw_next(&sub, &p, IT_WAIT_MS), MQTT_PUBLISH);
        if (p.qos == 1)
            pid1 = p.pid;
        if (p.qos == 2)
            pid2 = p.pid;
        it_pkt_clear(&p);
    }
    ck_assert_msg(pid1 && pid2, "want one QoS 1 and one QoS 2 delivery");
    ck_assert_int_eq(it_raw_ack(&sub, MQTT_PUBREC, pid2), 0);
    it_raw_expect_ack(&sub, MQTT_PUBREL, pid2);
    ck_assert_int_eq(it_broker_stop(&b), 0);
    it_raw_close(&sub);
    it_broker_restart(&b);

    it_raw_connect_ok(&sub, b.port, "it-unacked", false, true);
    for (int k = 0; k < 2; k++) {
        struct it_pkt p;
        int got = it_raw_next(&sub, &p, IT_WAIT_MS);
        if (got == MQTT_PUBREL) {
            ck_assert_uint_eq(p.pid, pid2);
            ck_assert_int_eq(it_raw_ack(&sub, MQTT_PUBCOMP, pid2), 0);
        } else {
            ck_assert_msg(got == MQTT_PUBLISH, "got %d, want PUBLISH or PUBREL", got);
            ck_assert_str_eq(p.topic, "keep/1");
            ck_assert_msg(p.dup && p.pid == pid1, "QoS 1 redelivery: DUP %d id %u, want 1 %u",
                          p.dup, p.pid, pid1);
            ck_assert_int_eq(it_raw_ack(&sub, MQTT_PUBACK, pid1), 0);
        }
        it_pkt_clear(&p);
    }
    ck_assert_int_eq(it_raw_next(&sub, NULL, IT_QUIET_MS), IT_RAW_TIMEOUT);
    it_raw_close(&sub);
    it_broker_cleanup(&b);
}
END_TEST

/* A QoS 1 message PUBACKed to its publisher survives kill -9 of the broker
 * and reaches the persistent subscriber after the restart. */
START_TEST(test_acked_message_survives_kill9)
{
    struct it_broker b;
    it_broker_start(&b, NULL);
    struct it_raw sub, pub;
    it_raw_connect_ok(&sub, b.port, "it-k9", false, false);
    ck_assert_int_eq(it_raw_sub1(&sub, "k9/t", 1), 1);
    ck_assert_int_eq(it_raw_leave(&sub), 0);
    it_raw_connect_ok(&pub, b.port, "it-k9-pub", true, false);
    ck_assert_int_eq(it_raw_publish(&pub, "k9/t", "durable", 7, 1, false, false, 1), 0);
    ck_assert_int_eq(it_raw_next(&pub, NULL, IT_WAIT_MS),
                     MQTT_PUBACK); /* PUBACK: now it must be safe */
    it_broker_kill9(&b);
    it_raw_close(&pub);
    it_broker_restart(&b);

    it_raw_connect_ok(&sub, b.port, "it-k9", false, true);
    const char *topics[] = {"k9/t"}, *payloads[] = {"durable"};
    const int qos[] = {1};
    receive_and_ack(&sub, 1, topics, payloads, qos);
    it_raw_close(&sub);
    it_broker_cleanup(&b);
}
END_TEST

/* [MQTT-3.1.2-6] cleanSession=1 after a persistent session discards it:
 * session_present=0, no old message, no old subscription, and a later
 * cleanSession=0 connection starts empty. */
START_TEST(test_clean_session_discards_persistent)
{
    struct it_broker b;
    it_broker_start(&b, NULL);
    struct it_raw sub;
    it_raw_connect_ok(&sub, b.port, "it-discard", false, false);
    ck_assert_int_eq(it_raw_sub1(&sub, "discard/t", 1), 1);
    ck_assert_int_eq(it_raw_leave(&sub), 0);
    struct it_client pub;
    struct it_connect_opts po = {.client_id = "it-discard-pub", .clean = true};
    ck_assert_int_eq(it_client_open(&pub, b.port, &po), 0);
    ck_assert_int_eq(it_client_publish(&pub, "discard/t", "old", 1, false), 0);
    ck_assert(it_client_wait_published(&pub, 1, IT_WAIT_MS));

    it_raw_connect_ok(&sub, b.port, "it-discard", true, false);
    ck_assert_msg(it_raw_next(&sub, NULL, IT_QUIET_MS) == IT_RAW_TIMEOUT,
                  "a message of the discarded session arrived");
    ck_assert_int_eq(it_client_publish(&pub, "discard/t", "new", 1, false), 0);
    ck_assert(it_client_wait_published(&pub, 2, IT_WAIT_MS));
    ck_assert_msg(it_raw_next(&sub, NULL, IT_QUIET_MS) == IT_RAW_TIMEOUT,
                  "the discarded subscription still delivers");
    ck_assert_int_eq(it_raw_leave(&sub), 0);

    it_raw_connect_ok(&sub, b.port, "it-discard", false, false);
    ck_assert_int_eq(it_raw_next(&sub, NULL, IT_QUIET_MS), IT_RAW_TIMEOUT);
    it_raw_close(&sub);
    it_client_close(&pub);
    it_broker_cleanup(&b);
}
END_TEST

static Suite *session_suite(void)
{
    Suite *s = suite_create("it_session");
    TCase *tc = tcase_create("session");
    tcase_set_timeout(tc, 90);
    tcase_add_test(tc, test_takeover_closes_first);
    tcase_add_test(tc, test_takeover_keeps_session);
    tcase_add_test(tc, test_persistent_session_while_away);
    tcase_add_test(tc, test_persistent_session_survives_restart);
    tcase_add_test(tc, test_unacked_survive_restart);
    if (!it_mode_mosquitto())
        tcase_add_test(tc, test_acked_message_survives_kill9);
    else
        it_note_skip("test_acked_message_survives_kill9",
                     "mosquitto writes its state only every autosave_interval");
    tcase_add_test(tc, test_clean_session_discards_persistent);
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(session_suite)
