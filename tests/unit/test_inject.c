/* inject_suite: broker_inject with INJECT_FLOW_CONTROL, the inbound rules'
 * way in. A broker without listeners or store; sessions made and
 * subscribed directly (broker_internal.h), "online" without a connection
 * (their PUBLISHes go nowhere, their state machines run as usual), so each
 * session's inflight window and queue can be filled exactly.
 *
 * The limits: max_inflight 2, max_queued 3, so a QoS 1 subscriber holds 5
 * messages before it has no room. */
#include <stdio.h>
#include <string.h>

#include "../../broker/broker_internal.h"
#include "check_main.h"

#define INFLIGHT 2
#define QUEUED 3
#define ROOM (INFLIGHT + QUEUED)

static uv_loop_t loop;

static struct broker *make_broker(uint32_t max_offline)
{
    struct broker_config cfg;
    char err[256];
    broker_config_defaults(&cfg);
    free(cfg.storage_dir);
    cfg.storage_dir = NULL; /* memory only */
    cfg.naming_mode = NAMING_MQTT;
    cfg.limits.max_inflight = INFLIGHT;
    cfg.limits.max_queued = QUEUED;
    if (max_offline)
        cfg.limits.max_offline_messages = max_offline;
    ck_assert_int_eq(uv_loop_init(&loop), 0);
    struct broker *b = broker_new(&loop, &cfg, NULL, err, sizeof err);
    ck_assert_msg(b != NULL, "%s", err);
    broker_config_free(&cfg);
    return b;
}

static void free_broker(struct broker *b)
{
    broker_free(b);
    ck_assert_int_eq(uv_loop_close(&loop), 0);
}

/* A session subscribed to filter at qos (filter NULL: none), online or
 * not. */
static struct session *client(struct broker *b, const char *id, bool clean, const char *filter,
                              uint8_t qos, bool online)
{
    struct session *s = broker_session_create(b, id, clean);
    ck_assert_ptr_nonnull(s);
    if (filter) {
        ck_assert_int_eq(session_sub_set(s, filter, qos), 1);
        ck_assert_int_eq(topic_tree_subscribe(b->topics, filter, s, qos), 1);
    }
    if (online)
        session_resume(s);
    return s;
}

/* Messages the session holds: sent and unacknowledged, and queued. */
static uint32_t held(const struct session *s)
{
    return s->inflight.count + s->queue.count;
}

static int inject(struct broker *b, const char *topic, uint8_t qos, const char *p2p, unsigned flags,
                  char *why, size_t whylen)
{
    static const uint8_t payload[] = "cmd";
    return broker_inject(b, topic, strlen(topic), payload, sizeof payload - 1, qos, p2p, flags, why,
                         whylen);
}

static struct broker_stats stats(const struct broker *b)
{
    struct broker_stats st;
    broker_get_stats(b, &st);
    return st;
}

/* A full online QoS 1 subscriber refuses the message for everyone: the
 * other subscriber does not get it either (never half delivered); once the
 * full one acknowledges, broker_room_gen moves and the same message goes
 * to both. */
START_TEST(test_full_online_subscriber_refuses_for_all)
{
    struct broker *b = make_broker(0);
    struct session *slow = client(b, "slow", true, "cmd/#", 1, true);
    struct session *fast = client(b, "fast", true, "cmd/+", 1, true);
    char why[160] = "";
    for (int i = 0; i < ROOM; i++)
        ck_assert_int_eq(inject(b, "cmd/a", 1, NULL, INJECT_FLOW_CONTROL, why, sizeof why), 0);
    ck_assert_uint_eq(slow->inflight.count, INFLIGHT);
    ck_assert_uint_eq(slow->queue.count, QUEUED);
    ck_assert_uint_eq(held(fast), ROOM);

    uint64_t gen = broker_room_gen(b);
    ck_assert_int_eq(inject(b, "cmd/a", 1, NULL, INJECT_FLOW_CONTROL, why, sizeof why),
                     INJECT_BUSY);
    ck_assert_msg(strstr(why, "client slow has no room") && strstr(why, "inflight 2/2") &&
                      strstr(why, "queued 3/3"),
                  "why: %s", why);
    ck_assert_uint_eq(held(slow), ROOM);
    ck_assert_uint_eq(held(fast), ROOM); /* nothing delivered to anyone */
    struct broker_stats st = stats(b);
    ck_assert_uint_eq(st.inject_busy, 1);
    ck_assert_uint_eq(st.messages_received, ROOM);
    ck_assert_uint_eq(st.messages_dropped, 0);
    ck_assert_uint_eq(slow->dropped, 0);
    ck_assert_uint_eq(broker_room_gen(b), gen);

    /* fast is full as well: its PUBACK alone is not enough */
    ck_assert_int_eq(session_on_puback(fast, fast->inflight.head->packet_id), 0);
    ck_assert_uint_gt(broker_room_gen(b), gen);
    gen = broker_room_gen(b);
    ck_assert_int_eq(inject(b, "cmd/a", 1, NULL, INJECT_FLOW_CONTROL, why, sizeof why),
                     INJECT_BUSY);
    ck_assert_uint_eq(held(fast), ROOM - 1);
    /* PUBACK of slow's first: a queued one moves to the window, one place
     * is free in the queue */
    ck_assert_int_eq(session_on_puback(slow, slow->inflight.head->packet_id), 0);
    ck_assert_uint_gt(broker_room_gen(b), gen);
    ck_assert_uint_eq(slow->queue.count, QUEUED - 1);
    ck_assert_int_eq(inject(b, "cmd/a", 1, NULL, INJECT_FLOW_CONTROL, why, sizeof why), 0);
    ck_assert_uint_eq(held(slow), ROOM);
    ck_assert_uint_eq(held(fast), ROOM);
    ck_assert_uint_eq(stats(b).inject_busy, 2);
    ck_assert_uint_eq(stats(b).messages_dropped, 0);
    free_broker(b);
}
END_TEST

/* Without the flag a full subscriber drops the message (counted), as for a
 * client's PUBLISH, and the others get it. */
START_TEST(test_without_flow_control_full_queue_drops)
{
    struct broker *b = make_broker(0);
    struct session *slow = client(b, "slow", true, "cmd/#", 1, true);
    struct session *fast = client(b, "fast", true, "cmd/#", 1, true);
    char why[160];
    for (int i = 0; i < ROOM + 2; i++)
        ck_assert_int_eq(inject(b, "cmd/a", 1, NULL, 0, why, sizeof why), 0);
    ck_assert_uint_eq(held(slow), ROOM);
    ck_assert_uint_eq(slow->dropped, 2);
    ck_assert_uint_eq(stats(b).messages_dropped, 4); /* fast is full too after ROOM */
    ck_assert_uint_eq(held(fast), ROOM);
    ck_assert_uint_eq(stats(b).inject_busy, 0);
    free_broker(b);
}
END_TEST

/* QoS 0 is at most once: a subscription granted QoS 0 never holds the
 * injection back, and neither does a QoS 0 message to a full QoS 1
 * subscriber (it is dropped and counted there). */
START_TEST(test_qos0_never_refused)
{
    struct broker *b = make_broker(0);
    struct session *q0 = client(b, "q0", true, "cmd/#", 0, true);
    struct session *q1 = client(b, "q1", true, "cmd/#", 1, true);
    char why[160];
    for (int i = 0; i < ROOM; i++)
        ck_assert_int_eq(inject(b, "cmd/a", 1, NULL, INJECT_FLOW_CONTROL, why, sizeof why), 0);
    ck_assert_uint_eq(held(q0), 0); /* sent at once, untracked */
    ck_assert_uint_eq(held(q1), ROOM);
    /* q1 is full: a QoS 1 message waits, a QoS 0 one goes (q1 drops it) */
    ck_assert_int_eq(inject(b, "cmd/a", 1, NULL, INJECT_FLOW_CONTROL, why, sizeof why),
                     INJECT_BUSY);
    ck_assert_int_eq(inject(b, "cmd/a", 0, NULL, INJECT_FLOW_CONTROL, why, sizeof why), 0);
    ck_assert_uint_eq(q1->dropped, 1);
    ck_assert_uint_eq(stats(b).messages_dropped, 1);
    ck_assert_uint_eq(stats(b).inject_busy, 1);
    free_broker(b);
}
END_TEST

/* An offline persistent subscriber keeps injected QoS 1 messages past
 * max_queued (the instance-wide max_offline_messages bounds them, oldest
 * evicted); it never holds the injection back. */
START_TEST(test_offline_persistent_kept_past_queue)
{
    struct broker *b = make_broker(8);
    struct session *off = client(b, "off", false, "cmd/#", 1, false);
    char why[160];
    for (int i = 0; i < 10; i++)
        ck_assert_int_eq(inject(b, "cmd/a", 1, NULL, INJECT_FLOW_CONTROL, why, sizeof why), 0);
    ck_assert_uint_eq(off->queue.count, 10);
    struct broker_stats st = stats(b);
    ck_assert_uint_eq(st.messages_dropped, 0);
    ck_assert_uint_eq(st.offline_stored, 10);
    ck_assert_uint_eq(st.inject_busy, 0);
    /* the instance-wide bound, at the next flush's housekeeping */
    broker_offline_housekeeping(b);
    ck_assert_uint_eq(off->queue.count, 8);
    ck_assert_uint_eq(stats(b).offline_evicted, 2);
    /* back online with 8 queued: 2 go to the window, the queue (6) is over
     * max_queued, so the next message waits until it drains */
    session_resume(off);
    ck_assert_uint_eq(off->inflight.count, INFLIGHT);
    ck_assert_int_eq(inject(b, "cmd/a", 1, NULL, INJECT_FLOW_CONTROL, why, sizeof why),
                     INJECT_BUSY);
    for (int i = 0; i < 4; i++)
        ck_assert_int_eq(session_on_puback(off, off->inflight.head->packet_id), 0);
    ck_assert_uint_eq(off->queue.count, 2);
    ck_assert_int_eq(inject(b, "cmd/a", 1, NULL, INJECT_FLOW_CONTROL, why, sizeof why), 0);
    ck_assert_uint_eq(off->queue.count, 3);
    free_broker(b);
}
END_TEST

/* P2P: the target alone decides; no subscription is needed. */
START_TEST(test_p2p_target_room)
{
    struct broker *b = make_broker(0);
    struct session *t = client(b, "t1", true, NULL, 0, true);
    struct session *off = client(b, "t2", false, NULL, 0, false);
    client(b, "bystander", true, "cmd/#", 1, true);
    char why[160];
    for (int i = 0; i < ROOM; i++)
        ck_assert_int_eq(inject(b, "cmd", 1, "t1", INJECT_FLOW_CONTROL, why, sizeof why), 0);
    ck_assert_uint_eq(held(t), ROOM);
    ck_assert_int_eq(inject(b, "cmd", 1, "t1", INJECT_FLOW_CONTROL, why, sizeof why), INJECT_BUSY);
    ck_assert_msg(strstr(why, "client t1 has no room"), "why: %s", why);
    ck_assert_uint_eq(held(t), ROOM);
    /* a full P2P target does not hold back messages to others */
    ck_assert_int_eq(inject(b, "cmd/x", 1, NULL, INJECT_FLOW_CONTROL, why, sizeof why), 0);
    /* an offline persistent target keeps them all */
    for (int i = 0; i < ROOM + 3; i++)
        ck_assert_int_eq(inject(b, "cmd", 1, "t2", INJECT_FLOW_CONTROL, why, sizeof why), 0);
    ck_assert_uint_eq(off->queue.count, ROOM + 3);
    /* no session: accepted and counted as before */
    ck_assert_int_eq(inject(b, "cmd", 1, "nobody", INJECT_FLOW_CONTROL, why, sizeof why), 0);
    struct broker_stats st = stats(b);
    ck_assert_uint_eq(st.p2p_no_target, 1);
    ck_assert_uint_eq(st.messages_dropped, 0);
    ck_assert_uint_eq(st.inject_busy, 1);
    free_broker(b);
}
END_TEST

/* A refused message is not half-checked: validation errors still come
 * first and are not INJECT_BUSY. */
START_TEST(test_validation_before_room)
{
    struct broker *b = make_broker(0);
    struct session *s = client(b, "s", true, "#", 1, true);
    char why[160];
    for (int i = 0; i < ROOM; i++)
        ck_assert_int_eq(inject(b, "cmd/a", 1, NULL, INJECT_FLOW_CONTROL, why, sizeof why), 0);
    ck_assert_int_eq(inject(b, "cmd/+", 1, NULL, INJECT_FLOW_CONTROL, why, sizeof why),
                     INJECT_BAD_TOPIC);
    ck_assert_uint_eq(held(s), ROOM);
    free_broker(b);
}
END_TEST

static Suite *inject_suite(void)
{
    Suite *s = suite_create("inject");
    TCase *tc = tcase_create("flow_control");
    tcase_add_test(tc, test_full_online_subscriber_refuses_for_all);
    tcase_add_test(tc, test_without_flow_control_full_queue_drops);
    tcase_add_test(tc, test_qos0_never_refused);
    tcase_add_test(tc, test_offline_persistent_kept_past_queue);
    tcase_add_test(tc, test_p2p_target_room);
    tcase_add_test(tc, test_validation_before_room);
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(inject_suite)
