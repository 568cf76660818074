/* session_suite: the outgoing QoS 1/2 state machines, the inflight window,
 * the bounded queue, incoming QoS 2 ids and the subscription list.
 *
 * A recording fake of session_ops logs every callback as an event; the tests
 * compare the log with the exact expected sequence, so both what is sent and
 * when it is persisted are pinned down. */
#include <stdio.h>
#include <string.h>

#include "../../broker/session.h"
#include "check_main.h"

enum ev_kind { EV_PUBLISH = 1, EV_PUBREL, EV_STORED, EV_UPDATED, EV_REMOVED };

struct event {
    enum ev_kind kind;
    uint16_t packet_id;
    bool dup;
    uint64_t seq;
    uint8_t state;
    uint8_t qos;
};

#define MAX_EVENTS 512

struct recorder {
    struct event ev[MAX_EVENTS];
    size_t n;
    const struct message *msg[MAX_EVENTS]; /* the message of each PUBLISH event */
    bool retain[MAX_EVENTS];
    int offline_after_publishes; /* > 0: go offline after this many PUBLISHes */
    int publishes;
};

static void rec_push(struct recorder *r, enum ev_kind kind, const struct out_msg *om,
                     uint16_t packet_id, bool dup)
{
    ck_assert_uint_lt(r->n, MAX_EVENTS);
    struct event *e = &r->ev[r->n];
    *e = (struct event){.kind = kind, .packet_id = packet_id, .dup = dup};
    if (om) {
        e->seq = om->seq;
        e->state = om->state;
        e->qos = om->qos;
        r->msg[r->n] = om->msg;
        r->retain[r->n] = om->retain;
    }
    r->n++;
}

static void rec_send_publish(void *ctx, struct session *s, const struct out_msg *om, bool dup)
{
    struct recorder *r = ctx;
    rec_push(r, EV_PUBLISH, om, om->packet_id, dup);
    r->publishes++;
    if (r->offline_after_publishes && r->publishes == r->offline_after_publishes)
        session_set_offline(s);
}

static void rec_send_pubrel(void *ctx, struct session *s, uint16_t packet_id)
{
    rec_push(ctx, EV_PUBREL, NULL, packet_id, false);
}

static void rec_stored(void *ctx, struct session *s, const struct out_msg *om)
{
    rec_push(ctx, EV_STORED, om, om->packet_id, false);
}

static void rec_updated(void *ctx, struct session *s, const struct out_msg *om)
{
    rec_push(ctx, EV_UPDATED, om, om->packet_id, false);
}

static void rec_removed(void *ctx, struct session *s, const struct out_msg *om)
{
    rec_push(ctx, EV_REMOVED, om, om->packet_id, false);
}

static const struct session_ops rec_ops = {
    .send_publish = rec_send_publish,
    .send_pubrel = rec_send_pubrel,
    .stored = rec_stored,
    .updated = rec_updated,
    .removed = rec_removed,
};

static const struct session_ops rec_ops_no_hooks = {
    .send_publish = rec_send_publish,
    .send_pubrel = rec_send_pubrel,
};

static const char *ev_name(enum ev_kind k)
{
    static const char *names[] = {"?", "PUBLISH", "PUBREL", "STORED", "UPDATED", "REMOVED"};
    return k >= EV_PUBLISH && k <= EV_REMOVED ? names[k] : names[0];
}

/* Compares the events recorded since index `from` with want[0..n). For
 * PUBREL only the packet id is compared (it carries no entry). */
static void expect_events_at(const struct recorder *r, size_t from, const struct event *want,
                             size_t n, int line)
{
    ck_assert_msg(r->n - from == n, "line %d: %zu events, want %zu", line, r->n - from, n);
    for (size_t i = 0; i < n; i++) {
        const struct event *got = &r->ev[from + i], *w = &want[i];
        ck_assert_msg(got->kind == w->kind && got->packet_id == w->packet_id &&
                          got->dup == w->dup &&
                          (w->kind == EV_PUBREL || (got->seq == w->seq && got->state == w->state)),
                      "line %d: event %zu is %s pid=%u dup=%d seq=%llu state=%u, want %s pid=%u "
                      "dup=%d seq=%llu state=%u",
                      line, i, ev_name(got->kind), got->packet_id, got->dup,
                      (unsigned long long)got->seq, got->state, ev_name(w->kind), w->packet_id,
                      w->dup, (unsigned long long)w->seq, w->state);
    }
}

#define EXPECT_EVENTS(r, from, ...) \
    do { \
        const struct event want_[] = {__VA_ARGS__}; \
        expect_events_at((r), (from), want_, sizeof want_ / sizeof want_[0], __LINE__); \
    } while (0)
#define EXPECT_NO_EVENTS(r, from) expect_events_at((r), (from), NULL, 0, __LINE__)

/* Event constructors: kind, packet id, seq, state (dup only for PUBLISH). */
#define PUB(pid, seq, st) \
    { \
        EV_PUBLISH, (pid), false, (seq), (st), 0 \
    }
#define PUBDUP(pid, seq, st) \
    { \
        EV_PUBLISH, (pid), true, (seq), (st), 0 \
    }
#define REL(pid) \
    { \
        EV_PUBREL, (pid), false, 0, 0, 0 \
    }
#define STO(pid, seq, st) \
    { \
        EV_STORED, (pid), false, (seq), (st), 0 \
    }
#define UPD(pid, seq, st) \
    { \
        EV_UPDATED, (pid), false, (seq), (st), 0 \
    }
#define REM(pid, seq, st) \
    { \
        EV_REMOVED, (pid), false, (seq), (st), 0 \
    }

#define Q OUT_QUEUED
#define WACK OUT_WAIT_PUBACK
#define WREC OUT_WAIT_PUBREC
#define WCOMP OUT_WAIT_PUBCOMP

static struct recorder rec;

static struct message *msg_make(const char *payload)
{
    struct message *m =
        message_new("a/b", 3, (const uint8_t *)payload, (uint32_t)strlen(payload), 2, false);
    ck_assert_ptr_nonnull(m);
    return m;
}

static struct session *session_make(uint16_t max_inflight, uint32_t max_queued, bool online)
{
    memset(&rec, 0, sizeof rec);
    struct session *s = session_new("client-1", false, max_inflight, max_queued, &rec_ops, &rec);
    ck_assert_ptr_nonnull(s);
    if (online)
        session_resume(s);
    ck_assert_uint_eq(rec.n, 0);
    return s;
}

/* ---- lifecycle ---- */

START_TEST(test_new_starts_offline_and_empty)
{
    struct session *s = session_make(10, 100, false);
    ck_assert_str_eq(s->client_id, "client-1");
    ck_assert(!s->online);
    ck_assert(!s->clean_session);
    ck_assert_uint_eq(s->max_inflight, 10);
    ck_assert_uint_eq(s->max_queued, 100);
    ck_assert_uint_eq(s->inflight.count, 0);
    ck_assert_uint_eq(s->queue.count, 0);
    ck_assert_uint_eq(s->sub_count, 0);
    ck_assert_uint_eq(s->qos2_in_count, 0);
    ck_assert_uint_eq(s->dropped, 0);
    session_set_offline(s);
    ck_assert(!s->online);
    session_resume(s);
    ck_assert(s->online);
    ck_assert_uint_eq(rec.n, 0);
    session_free(s);
}
END_TEST

START_TEST(test_free_accepts_null)
{
    session_free(NULL);
    ck_assert_uint_eq(rec.n, 0);
}
END_TEST

START_TEST(test_free_releases_messages_without_ops)
{
    struct session *s = session_make(1, 10, true);
    struct message *a = msg_make("a"), *b = msg_make("b"), *c = msg_make("c");
    ck_assert_int_eq(session_enqueue(s, a, 1, false), 0);
    ck_assert_int_eq(session_enqueue(s, b, 2, false), 0);
    ck_assert_int_eq(session_enqueue(s, c, 0, false), 0);
    ck_assert_uint_eq(a->refcount, 2);
    ck_assert_uint_eq(b->refcount, 2);
    ck_assert_uint_eq(c->refcount, 2);
    size_t before = rec.n;
    session_free(s);
    ck_assert_uint_eq(rec.n, before);
    ck_assert_uint_eq(a->refcount, 1);
    ck_assert_uint_eq(b->refcount, 1);
    ck_assert_uint_eq(c->refcount, 1);
    message_unref(a);
    message_unref(b);
    message_unref(c);
}
END_TEST

/* ---- QoS 0 ---- */

START_TEST(test_qos0_online_sent_untracked)
{
    struct session *s = session_make(10, 10, true);
    struct message *m = msg_make("x");
    ck_assert_int_eq(session_enqueue(s, m, 0, true), 0);
    EXPECT_EVENTS(&rec, 0, PUB(0, 0, Q));
    ck_assert_ptr_eq(rec.msg[0], m);
    ck_assert(rec.retain[0]);
    ck_assert_uint_eq(s->inflight.count + s->queue.count, 0);
    ck_assert_uint_eq(m->refcount, 1);
    session_free(s);
    message_unref(m);
}
END_TEST

START_TEST(test_qos0_offline_dropped_not_counted)
{
    struct session *s = session_make(10, 10, false);
    struct message *m = msg_make("x");
    ck_assert_int_eq(session_enqueue(s, m, 0, false), 1);
    EXPECT_NO_EVENTS(&rec, 0);
    ck_assert_uint_eq(s->dropped, 0);
    ck_assert_uint_eq(s->queue.count, 0);
    ck_assert_uint_eq(m->refcount, 1);
    session_free(s);
    message_unref(m);
}
END_TEST

/* ---- QoS 1 / 2 flows ---- */

START_TEST(test_qos1_send_and_puback)
{
    struct session *s = session_make(10, 10, true);
    struct message *m = msg_make("x");
    ck_assert_int_eq(session_enqueue(s, m, 1, false), 0);
    EXPECT_EVENTS(&rec, 0, STO(1, 1, WACK), PUB(1, 1, WACK));
    ck_assert_ptr_eq(rec.msg[1], m);
    ck_assert_uint_eq(s->inflight.count, 1);
    ck_assert_uint_eq(m->refcount, 2);

    ck_assert_int_eq(session_on_puback(s, 1), 0);
    EXPECT_EVENTS(&rec, 2, REM(1, 1, WACK));
    ck_assert_uint_eq(s->inflight.count, 0);
    ck_assert_uint_eq(m->refcount, 1);

    ck_assert_int_eq(session_on_puback(s, 1), 1); /* a second PUBACK is unknown */
    EXPECT_EVENTS(&rec, 2, REM(1, 1, WACK));
    session_free(s);
    message_unref(m);
}
END_TEST

START_TEST(test_qos2_full_flow)
{
    struct session *s = session_make(10, 10, true);
    struct message *m = msg_make("x");
    ck_assert_int_eq(session_enqueue(s, m, 2, false), 0);
    EXPECT_EVENTS(&rec, 0, STO(1, 1, WREC), PUB(1, 1, WREC));

    ck_assert_int_eq(session_on_pubrec(s, 1), 0);
    EXPECT_EVENTS(&rec, 2, UPD(1, 1, WCOMP), REL(1));
    ck_assert_uint_eq(s->inflight.head->state, OUT_WAIT_PUBCOMP);
    ck_assert_uint_eq(m->refcount, 2);

    ck_assert_int_eq(session_on_pubcomp(s, 1), 0);
    EXPECT_EVENTS(&rec, 4, REM(1, 1, WCOMP));
    ck_assert_uint_eq(s->inflight.count, 0);
    ck_assert_uint_eq(m->refcount, 1);
    session_free(s);
    message_unref(m);
}
END_TEST

START_TEST(test_qos2_duplicate_pubrec_resends_pubrel)
{
    struct session *s = session_make(10, 10, true);
    struct message *m = msg_make("x");
    ck_assert_int_eq(session_enqueue(s, m, 2, false), 0);
    ck_assert_int_eq(session_on_pubrec(s, 1), 0);
    ck_assert_int_eq(session_on_pubrec(s, 1), 0);
    /* The resent PUBREC changes no state: no second UPDATED. */
    EXPECT_EVENTS(&rec, 0, STO(1, 1, WREC), PUB(1, 1, WREC), UPD(1, 1, WCOMP), REL(1), REL(1));
    ck_assert_int_eq(session_on_pubcomp(s, 1), 0);
    ck_assert_int_eq(session_on_pubcomp(s, 1), 1);
    ck_assert_uint_eq(m->refcount, 1);
    session_free(s);
    message_unref(m);
}
END_TEST

/* Acks that do not match an inflight entry in the right state change
 * nothing and return 1. */
enum ack_kind { ACK_PUBACK, ACK_PUBREC, ACK_PUBCOMP };

static int ack_send(struct session *s, enum ack_kind k, uint16_t id)
{
    switch (k) {
    case ACK_PUBACK:
        return session_on_puback(s, id);
    case ACK_PUBREC:
        return session_on_pubrec(s, id);
    case ACK_PUBCOMP:
        return session_on_pubcomp(s, id);
    }
    return -2;
}

static const struct {
    const char *name;
    uint8_t qos;       /* of the one inflight message, packet id 1 */
    bool pubrec_first; /* move a QoS 2 message to WAIT_PUBCOMP first */
    enum ack_kind ack;
    uint16_t id;
} bad_acks[] = {
    {"PUBACK unknown id", 1, false, ACK_PUBACK, 2},
    {"PUBACK id 0", 1, false, ACK_PUBACK, 0},
    {"PUBREC unknown id", 2, false, ACK_PUBREC, 7},
    {"PUBCOMP unknown id", 2, true, ACK_PUBCOMP, 65535},
    {"PUBACK on QoS 2 WAIT_PUBREC", 2, false, ACK_PUBACK, 1},
    {"PUBACK on QoS 2 WAIT_PUBCOMP", 2, true, ACK_PUBACK, 1},
    {"PUBREC on QoS 1 WAIT_PUBACK", 1, false, ACK_PUBREC, 1},
    {"PUBCOMP on QoS 1 WAIT_PUBACK", 1, false, ACK_PUBCOMP, 1},
    {"PUBCOMP on QoS 2 WAIT_PUBREC", 2, false, ACK_PUBCOMP, 1},
};

START_TEST(test_bad_ack_ignored)
{
    struct session *s = session_make(10, 10, true);
    struct message *m = msg_make("x");
    ck_assert_int_eq(session_enqueue(s, m, bad_acks[_i].qos, false), 0);
    if (bad_acks[_i].pubrec_first)
        ck_assert_int_eq(session_on_pubrec(s, 1), 0);
    uint8_t state = s->inflight.head->state;
    size_t before = rec.n;

    ck_assert_msg(ack_send(s, bad_acks[_i].ack, bad_acks[_i].id) == 1, "%s", bad_acks[_i].name);
    ck_assert_msg(rec.n == before, "%s: events emitted", bad_acks[_i].name);
    ck_assert_uint_eq(s->inflight.count, 1);
    ck_assert_uint_eq(s->inflight.head->state, state);
    ck_assert_uint_eq(s->inflight.head->packet_id, 1);
    ck_assert_uint_eq(m->refcount, 2);
    session_free(s);
    ck_assert_uint_eq(m->refcount, 1);
    message_unref(m);
}
END_TEST

START_TEST(test_out_of_order_acks)
{
    struct session *s = session_make(3, 10, true);
    struct message *m = msg_make("x");
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(session_enqueue(s, m, 1, false), 0);
    ck_assert_int_eq(session_on_puback(s, 2), 0);
    ck_assert_int_eq(session_on_puback(s, 3), 0);
    ck_assert_int_eq(session_on_puback(s, 1), 0);
    EXPECT_EVENTS(&rec, 6, REM(2, 2, WACK), REM(3, 3, WACK), REM(1, 1, WACK));
    ck_assert_uint_eq(m->refcount, 1);
    session_free(s);
    message_unref(m);
}
END_TEST

/* ---- inflight window and queue ---- */

START_TEST(test_window_full_queues_then_ack_pumps_in_order)
{
    struct session *s = session_make(2, 10, true);
    struct message *m[4];
    for (int i = 0; i < 4; i++) {
        m[i] = msg_make("x");
        ck_assert_int_eq(session_enqueue(s, m[i], 1, false), 0);
    }
    EXPECT_EVENTS(&rec, 0, STO(1, 1, WACK), PUB(1, 1, WACK), STO(2, 2, WACK), PUB(2, 2, WACK),
                  STO(0, 3, Q), STO(0, 4, Q));
    ck_assert_uint_eq(s->inflight.count, 2);
    ck_assert_uint_eq(s->queue.count, 2);

    ck_assert_int_eq(session_on_puback(s, 1), 0);
    EXPECT_EVENTS(&rec, 6, REM(1, 1, WACK), UPD(3, 3, WACK), PUB(3, 3, WACK));
    ck_assert_ptr_eq(rec.msg[8], m[2]);
    ck_assert_uint_eq(s->queue.count, 1);

    ck_assert_int_eq(session_on_puback(s, 3), 0);
    ck_assert_int_eq(session_on_puback(s, 2), 0);
    EXPECT_EVENTS(&rec, 9, REM(3, 3, WACK), UPD(4, 4, WACK), PUB(4, 4, WACK), REM(2, 2, WACK));
    ck_assert_int_eq(session_on_puback(s, 4), 0);
    ck_assert_uint_eq(s->inflight.count + s->queue.count, 0);
    for (int i = 0; i < 4; i++) {
        ck_assert_uint_eq(m[i]->refcount, 1);
        message_unref(m[i]);
    }
    session_free(s);
}
END_TEST

START_TEST(test_qos0_waits_behind_queued_qos1)
{
    struct session *s = session_make(1, 10, true);
    struct message *a = msg_make("a"), *b = msg_make("b"), *c = msg_make("c");
    ck_assert_int_eq(session_enqueue(s, a, 1, false), 0); /* sent */
    ck_assert_int_eq(session_enqueue(s, b, 1, false), 0); /* queued: window full */
    ck_assert_int_eq(session_enqueue(s, c, 0, false), 0); /* queued behind b */
    EXPECT_EVENTS(&rec, 0, STO(1, 1, WACK), PUB(1, 1, WACK), STO(0, 2, Q));
    ck_assert_uint_eq(s->queue.count, 2);
    ck_assert_uint_eq(s->queue.tail->seq, 3); /* queued QoS 0 entries get a seq too */
    ck_assert_uint_eq(c->refcount, 2);

    ck_assert_int_eq(session_on_puback(s, 1), 0);
    /* b takes the slot, then c needs none and follows at once, untracked. */
    EXPECT_EVENTS(&rec, 3, REM(1, 1, WACK), UPD(2, 2, WACK), PUB(2, 2, WACK), PUB(0, 3, Q));
    ck_assert_ptr_eq(rec.msg[6], c);
    ck_assert_uint_eq(s->queue.count, 0);
    ck_assert_uint_eq(c->refcount, 1);
    ck_assert_int_eq(session_on_puback(s, 2), 0);
    ck_assert_uint_eq(a->refcount, 1);
    ck_assert_uint_eq(b->refcount, 1);
    session_free(s);
    message_unref(a);
    message_unref(b);
    message_unref(c);
}
END_TEST

START_TEST(test_qos0_sent_directly_while_window_full)
{
    /* An empty queue means nothing is waiting: QoS 0 needs no slot. */
    struct session *s = session_make(1, 10, true);
    struct message *m = msg_make("x");
    ck_assert_int_eq(session_enqueue(s, m, 1, false), 0);
    ck_assert_int_eq(session_enqueue(s, m, 0, false), 0);
    EXPECT_EVENTS(&rec, 0, STO(1, 1, WACK), PUB(1, 1, WACK), PUB(0, 0, Q));
    ck_assert_uint_eq(s->queue.count, 0);
    session_free(s);
    ck_assert_uint_eq(m->refcount, 1);
    message_unref(m);
}
END_TEST

START_TEST(test_queue_full_drops_and_counts)
{
    struct session *s = session_make(1, 2, true);
    struct message *m = msg_make("x");
    ck_assert_int_eq(session_enqueue(s, m, 1, false), 0); /* inflight */
    ck_assert_int_eq(session_enqueue(s, m, 1, false), 0); /* queued */
    ck_assert_int_eq(session_enqueue(s, m, 2, false), 0); /* queued */
    ck_assert_int_eq(session_enqueue(s, m, 1, false), 1); /* dropped */
    ck_assert_int_eq(session_enqueue(s, m, 0, false), 1); /* dropped: QoS 0 queues too */
    ck_assert_uint_eq(s->dropped, 2);
    ck_assert_uint_eq(s->queue.count, 2);
    ck_assert_uint_eq(m->refcount, 4);
    /* Dropped messages are not stored and use no seq. */
    EXPECT_EVENTS(&rec, 0, STO(1, 1, WACK), PUB(1, 1, WACK), STO(0, 2, Q), STO(0, 3, Q));
    ck_assert_uint_eq(s->next_seq, 4);

    ck_assert_int_eq(session_on_puback(s, 1), 0); /* a slot frees: room again */
    ck_assert_int_eq(session_enqueue(s, m, 1, false), 0);
    ck_assert_uint_eq(s->queue.count, 2);
    ck_assert_uint_eq(s->dropped, 2);
    session_free(s);
    ck_assert_uint_eq(m->refcount, 1);
    message_unref(m);
}
END_TEST

START_TEST(test_queue_full_offline)
{
    struct session *s = session_make(5, 3, false);
    struct message *m = msg_make("x");
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(session_enqueue(s, m, 1, false), 0);
    for (int i = 0; i < 4; i++)
        ck_assert_int_eq(session_enqueue(s, m, 1, false), 1);
    ck_assert_uint_eq(s->dropped, 4);
    ck_assert_uint_eq(s->queue.count, 3);
    ck_assert_uint_eq(m->refcount, 4);
    session_free(s);
    ck_assert_uint_eq(m->refcount, 1);
    message_unref(m);
}
END_TEST

START_TEST(test_zero_max_queued_drops_when_busy)
{
    struct session *s = session_make(1, 0, true);
    struct message *m = msg_make("x");
    ck_assert_int_eq(session_enqueue(s, m, 1, false), 0);
    ck_assert_int_eq(session_enqueue(s, m, 1, false), 1);
    ck_assert_uint_eq(s->dropped, 1);
    session_free(s);
    message_unref(m);
}
END_TEST

START_TEST(test_zero_max_inflight_means_unlimited)
{
    struct session *s = session_make(0, 0, true);
    struct message *m = msg_make("x");
    for (int i = 0; i < 100; i++)
        ck_assert_int_eq(session_enqueue(s, m, 1, false), 0);
    ck_assert_uint_eq(s->inflight.count, 100);
    ck_assert_uint_eq(s->dropped, 0);
    session_free(s);
    ck_assert_uint_eq(m->refcount, 1);
    message_unref(m);
}
END_TEST

/* ---- offline and resume ---- */

START_TEST(test_offline_queued_then_resume_sends_in_order)
{
    struct session *s = session_make(10, 10, false);
    struct message *m[3];
    for (int i = 0; i < 3; i++) {
        m[i] = msg_make("x");
        ck_assert_int_eq(session_enqueue(s, m[i], i == 1 ? 2 : 1, i == 2), 0);
    }
    EXPECT_EVENTS(&rec, 0, STO(0, 1, Q), STO(0, 2, Q), STO(0, 3, Q));
    session_resume(s);
    EXPECT_EVENTS(&rec, 3, UPD(1, 1, WACK), PUB(1, 1, WACK), UPD(2, 2, WREC), PUB(2, 2, WREC),
                  UPD(3, 3, WACK), PUB(3, 3, WACK));
    ck_assert_ptr_eq(rec.msg[4], m[0]);
    ck_assert_ptr_eq(rec.msg[6], m[1]);
    ck_assert_ptr_eq(rec.msg[8], m[2]);
    ck_assert(rec.retain[8]);
    ck_assert_uint_eq(s->queue.count, 0);
    ck_assert_uint_eq(s->inflight.count, 3);
    session_free(s);
    for (int i = 0; i < 3; i++) {
        ck_assert_uint_eq(m[i]->refcount, 1);
        message_unref(m[i]);
    }
}
END_TEST

START_TEST(test_resume_resends_inflight_in_order)
{
    struct session *s = session_make(3, 10, true);
    struct message *m = msg_make("x");
    ck_assert_int_eq(session_enqueue(s, m, 1, false), 0); /* pid 1 */
    ck_assert_int_eq(session_enqueue(s, m, 2, false), 0); /* pid 2 */
    ck_assert_int_eq(session_enqueue(s, m, 2, false), 0); /* pid 3 */
    ck_assert_int_eq(session_enqueue(s, m, 1, false), 0); /* queued */
    ck_assert_int_eq(session_on_pubrec(s, 2), 0);
    session_set_offline(s);
    ck_assert_int_eq(session_enqueue(s, m, 0, false), 1); /* QoS 0 offline */
    ck_assert_int_eq(session_enqueue(s, m, 2, false), 0); /* queued */
    size_t mark = rec.n;

    session_resume(s);
    /* Window still full: the resends go, the queue waits. */
    EXPECT_EVENTS(&rec, mark, PUBDUP(1, 1, WACK), REL(2), PUBDUP(3, 3, WREC));
    ck_assert_uint_eq(s->queue.count, 2);

    ck_assert_int_eq(session_on_pubcomp(s, 2), 0);
    EXPECT_EVENTS(&rec, mark + 3, REM(2, 2, WCOMP), UPD(4, 4, WACK), PUB(4, 4, WACK));
    session_free(s);
    ck_assert_uint_eq(m->refcount, 1);
    message_unref(m);
}
END_TEST

START_TEST(test_resume_resends_then_pumps_free_slots)
{
    struct session *s = session_make(2, 10, true);
    struct message *m = msg_make("x");
    ck_assert_int_eq(session_enqueue(s, m, 1, false), 0); /* pid 1 */
    session_set_offline(s);
    ck_assert_int_eq(session_enqueue(s, m, 2, false), 0);
    ck_assert_int_eq(session_enqueue(s, m, 1, false), 0);
    size_t mark = rec.n;
    session_resume(s);
    EXPECT_EVENTS(&rec, mark, PUBDUP(1, 1, WACK), UPD(2, 2, WREC), PUB(2, 2, WREC));
    ck_assert_uint_eq(s->queue.count, 1);
    session_free(s);
    ck_assert_uint_eq(m->refcount, 1);
    message_unref(m);
}
END_TEST

START_TEST(test_offline_during_send_stops_pump)
{
    struct session *s = session_make(10, 10, false);
    struct message *m = msg_make("x");
    for (int i = 0; i < 4; i++)
        ck_assert_int_eq(session_enqueue(s, m, 1, false), 0);
    rec.offline_after_publishes = 2; /* the write of the 2nd PUBLISH fails */
    session_resume(s);
    ck_assert(!s->online);
    EXPECT_EVENTS(&rec, 4, UPD(1, 1, WACK), PUB(1, 1, WACK), UPD(2, 2, WACK), PUB(2, 2, WACK));
    ck_assert_uint_eq(s->inflight.count, 2);
    ck_assert_uint_eq(s->queue.count, 2);

    rec.offline_after_publishes = 0;
    session_resume(s);
    EXPECT_EVENTS(&rec, 8, PUBDUP(1, 1, WACK), PUBDUP(2, 2, WACK), UPD(3, 3, WACK), PUB(3, 3, WACK),
                  UPD(4, 4, WACK), PUB(4, 4, WACK));
    session_free(s);
    ck_assert_uint_eq(m->refcount, 1);
    message_unref(m);
}
END_TEST

/* ---- packet ids ---- */

START_TEST(test_packet_id_wraps_to_1)
{
    struct session *s = session_make(10, 10, true);
    struct message *m = msg_make("x");
    s->last_packet_id = 65534;
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(session_enqueue(s, m, 1, false), 0);
    EXPECT_EVENTS(&rec, 0, STO(65535, 1, WACK), PUB(65535, 1, WACK), STO(1, 2, WACK),
                  PUB(1, 2, WACK), STO(2, 3, WACK), PUB(2, 3, WACK));
    ck_assert_uint_eq(s->last_packet_id, 2);
    session_free(s);
    message_unref(m);
}
END_TEST

START_TEST(test_packet_id_skips_ids_in_use)
{
    struct session *s = session_make(10, 10, false);
    struct message *m = msg_make("x");
    ck_assert_int_eq(session_restore_out(s, m, 1, 1, 1, OUT_WAIT_PUBACK, false), 0);
    ck_assert_int_eq(session_restore_out(s, m, 2, 2, 2, OUT_WAIT_PUBCOMP, false), 0);
    ck_assert_int_eq(session_restore_out(s, m, 3, 1, 4, OUT_WAIT_PUBACK, false), 0);
    s->last_packet_id = 65535; /* next candidates: 1, 2 in use, 3 free, 4 in use, 5 */
    session_resume(s);
    ck_assert_int_eq(session_enqueue(s, m, 1, false), 0);
    ck_assert_int_eq(session_enqueue(s, m, 1, false), 0);
    EXPECT_EVENTS(&rec, 3, STO(3, 4, WACK), PUB(3, 4, WACK), STO(5, 5, WACK), PUB(5, 5, WACK));
    session_free(s);
    ck_assert_uint_eq(m->refcount, 1);
    message_unref(m);
}
END_TEST

START_TEST(test_packet_id_reused_after_ack)
{
    struct session *s = session_make(10, 10, true);
    struct message *m = msg_make("x");
    s->last_packet_id = 65535;
    ck_assert_int_eq(session_enqueue(s, m, 1, false), 0); /* 1 */
    ck_assert_int_eq(session_on_puback(s, 1), 0);
    s->last_packet_id = 65535;
    ck_assert_int_eq(session_enqueue(s, m, 1, false), 0); /* 1 again: free now */
    EXPECT_EVENTS(&rec, 3, STO(1, 2, WACK), PUB(1, 2, WACK));
    session_free(s);
    message_unref(m);
}
END_TEST

/* ---- restore from the store ---- */

START_TEST(test_restore_out_order_and_continuity)
{
    struct session *s = session_make(3, 10, false);
    struct message *m[4];
    for (int i = 0; i < 4; i++)
        m[i] = msg_make("x");
    ck_assert_int_eq(session_restore_out(s, m[0], 5, 1, 7, OUT_WAIT_PUBACK, false), 0);
    ck_assert_int_eq(session_restore_out(s, m[1], 6, 2, 9, OUT_WAIT_PUBCOMP, false), 0);
    ck_assert_int_eq(session_restore_out(s, m[2], 8, 2, 0, OUT_QUEUED, true), 0);
    ck_assert_int_eq(session_restore_out(s, m[3], 11, 1, 0, OUT_QUEUED, false), 0);
    EXPECT_NO_EVENTS(&rec, 0);
    ck_assert_uint_eq(s->inflight.count, 2);
    ck_assert_uint_eq(s->queue.count, 2);
    ck_assert_uint_eq(s->last_packet_id, 9);
    ck_assert_uint_eq(s->next_seq, 12);
    for (int i = 0; i < 4; i++)
        ck_assert_uint_eq(m[i]->refcount, 2);

    session_resume(s);
    EXPECT_EVENTS(&rec, 0, PUBDUP(7, 5, WACK), REL(9), UPD(10, 8, WREC), PUB(10, 8, WREC));
    ck_assert(rec.retain[3]);
    ck_assert_uint_eq(s->queue.count, 1);

    ck_assert_int_eq(session_on_pubcomp(s, 9), 0);
    ck_assert_int_eq(session_enqueue(s, m[0], 1, false), 0); /* behind seq 11 */
    EXPECT_EVENTS(&rec, 4, REM(9, 6, WCOMP), UPD(11, 11, WACK), PUB(11, 11, WACK), STO(0, 12, Q));
    ck_assert_int_eq(session_on_puback(s, 7), 0);
    EXPECT_EVENTS(&rec, 8, REM(7, 5, WACK), UPD(12, 12, WACK), PUB(12, 12, WACK));
    session_free(s);
    for (int i = 0; i < 4; i++) {
        ck_assert_uint_eq(m[i]->refcount, 1);
        message_unref(m[i]);
    }
}
END_TEST

START_TEST(test_restore_out_keeps_next_seq_when_higher)
{
    struct session *s = session_make(3, 10, false);
    struct message *m = msg_make("x");
    s->next_seq = 100;
    ck_assert_int_eq(session_restore_out(s, m, 4, 1, 0, OUT_QUEUED, false), 0);
    ck_assert_uint_eq(s->next_seq, 100);
    s->last_packet_id = 500;
    ck_assert_int_eq(session_restore_out(s, m, 5, 1, 20, OUT_WAIT_PUBACK, false), 0);
    ck_assert_uint_eq(s->last_packet_id, 500);
    session_free(s);
    ck_assert_uint_eq(m->refcount, 1);
    message_unref(m);
}
END_TEST

/* Entries the inflight list cannot hold as loaded go to the queue and are
 * sent afresh; they never break the id-uniqueness of the window. Each case
 * restores (seq 1, pid 1, WAIT_PUBACK) and then the case's entry as seq 2;
 * `want` is what resume sends for the case's entry. */
static const struct {
    const char *name;
    uint8_t qos;
    uint16_t packet_id;
    uint8_t state;
    bool inflight;
    struct event want[2];
    size_t nwant;
} restore_cases[] = {
    {"QoS 1 WAIT_PUBACK", 1, 3, OUT_WAIT_PUBACK, true, {PUBDUP(3, 2, WACK)}, 1},
    {"QoS 2 WAIT_PUBREC", 2, 3, OUT_WAIT_PUBREC, true, {PUBDUP(3, 2, WREC)}, 1},
    {"QoS 2 WAIT_PUBCOMP", 2, 3, OUT_WAIT_PUBCOMP, true, {REL(3)}, 1},
    {"QoS 1 queued, stale id", 1, 3, OUT_QUEUED, false, {UPD(2, 2, WACK), PUB(2, 2, WACK)}, 2},
    {"QoS 2 queued", 2, 0, OUT_QUEUED, false, {UPD(2, 2, WREC), PUB(2, 2, WREC)}, 2},
    {"QoS 0 queued", 0, 0, OUT_QUEUED, false, {PUB(0, 2, Q)}, 1},
    {"QoS 0 in a wait state", 0, 3, OUT_WAIT_PUBACK, false, {PUB(0, 2, Q)}, 1},
    {"wait state without id", 1, 0, OUT_WAIT_PUBACK, false, {UPD(2, 2, WACK), PUB(2, 2, WACK)}, 2},
    {"QoS 1 in WAIT_PUBREC", 1, 3, OUT_WAIT_PUBREC, false, {UPD(2, 2, WACK), PUB(2, 2, WACK)}, 2},
    {"QoS 2 in WAIT_PUBACK", 2, 3, OUT_WAIT_PUBACK, false, {UPD(2, 2, WREC), PUB(2, 2, WREC)}, 2},
    {"unknown state", 2, 3, 9, false, {UPD(2, 2, WREC), PUB(2, 2, WREC)}, 2},
    {"id already inflight", 1, 1, OUT_WAIT_PUBACK, false, {UPD(2, 2, WACK), PUB(2, 2, WACK)}, 2},
};

START_TEST(test_restore_out_placement)
{
    struct session *s = session_make(10, 10, false);
    struct message *m = msg_make("x");
    ck_assert_int_eq(session_restore_out(s, m, 1, 1, 1, OUT_WAIT_PUBACK, false), 0);
    ck_assert_int_eq(session_restore_out(s, m, 2, restore_cases[_i].qos,
                                         restore_cases[_i].packet_id, restore_cases[_i].state,
                                         false),
                     0);
    const struct out_msg *om = restore_cases[_i].inflight ? s->inflight.tail : s->queue.tail;
    ck_assert_msg(om && om->seq == 2, "%s: wrong list", restore_cases[_i].name);
    ck_assert_uint_eq(s->inflight.count + s->queue.count, 2);
    if (restore_cases[_i].inflight) {
        ck_assert_uint_eq(om->packet_id, restore_cases[_i].packet_id);
        ck_assert_uint_eq(om->state, restore_cases[_i].state);
        ck_assert_uint_eq(s->last_packet_id, restore_cases[_i].packet_id);
    } else {
        ck_assert_uint_eq(om->packet_id, 0);
        ck_assert_uint_eq(om->state, OUT_QUEUED);
        ck_assert_uint_eq(s->last_packet_id, 1);
    }
    ck_assert_uint_eq(s->next_seq, 3);
    EXPECT_NO_EVENTS(&rec, 0);

    session_resume(s);
    struct event want[3] = {PUBDUP(1, 1, WACK)};
    memcpy(&want[1], restore_cases[_i].want, restore_cases[_i].nwant * sizeof want[0]);
    expect_events_at(&rec, 0, want, 1 + restore_cases[_i].nwant, __LINE__);
    ck_assert_uint_eq(s->queue.count, 0);
    session_free(s);
    ck_assert_uint_eq(m->refcount, 1);
    message_unref(m);
}
END_TEST

START_TEST(test_restore_qos0_sent_on_resume)
{
    struct session *s = session_make(10, 10, false);
    struct message *m = msg_make("x");
    ck_assert_int_eq(session_restore_out(s, m, 3, 0, 0, OUT_QUEUED, false), 0);
    session_resume(s);
    EXPECT_EVENTS(&rec, 0, PUB(0, 3, Q));
    ck_assert_uint_eq(s->queue.count, 0);
    ck_assert_uint_eq(m->refcount, 1);
    session_free(s);
    message_unref(m);
}
END_TEST

/* ---- ops table variants ---- */

START_TEST(test_without_persistence_hooks)
{
    memset(&rec, 0, sizeof rec);
    struct session *s = session_new("c", true, 1, 10, &rec_ops_no_hooks, &rec);
    ck_assert_ptr_nonnull(s);
    struct message *m = msg_make("x");
    session_resume(s);
    ck_assert_int_eq(session_enqueue(s, m, 2, false), 0);
    ck_assert_int_eq(session_enqueue(s, m, 1, false), 0);
    ck_assert_int_eq(session_on_pubrec(s, 1), 0);
    ck_assert_int_eq(session_on_pubcomp(s, 1), 0);
    EXPECT_EVENTS(&rec, 0, PUB(1, 1, WREC), REL(1), PUB(2, 2, WACK));
    session_free(s);
    ck_assert_uint_eq(m->refcount, 1);
    message_unref(m);
}
END_TEST

START_TEST(test_null_ops_table)
{
    struct session *s = session_new("c", true, 1, 10, NULL, NULL);
    ck_assert_ptr_nonnull(s);
    struct message *m = msg_make("x");
    session_resume(s);
    ck_assert_int_eq(session_enqueue(s, m, 0, false), 0);
    ck_assert_int_eq(session_enqueue(s, m, 1, false), 0);
    ck_assert_int_eq(session_enqueue(s, m, 1, false), 0);
    ck_assert_int_eq(session_on_puback(s, 1), 0);
    ck_assert_uint_eq(s->inflight.count, 1);
    ck_assert_uint_eq(s->inflight.head->packet_id, 2);
    session_free(s);
    ck_assert_uint_eq(m->refcount, 1);
    message_unref(m);
}
END_TEST

/* ---- incoming QoS 2 ---- */

START_TEST(test_qos2_in_add_dup_release)
{
    struct session *s = session_make(10, 10, false);
    ck_assert_int_eq(session_qos2_in_add(s, 10), 1);
    ck_assert_int_eq(session_qos2_in_add(s, 11), 1);
    ck_assert_int_eq(session_qos2_in_add(s, 10), 0); /* resent PUBLISH */
    ck_assert_uint_eq(s->qos2_in_count, 2);
    ck_assert_int_eq(session_qos2_in_release(s, 10), 0);
    ck_assert_int_eq(session_qos2_in_release(s, 10), 1); /* resent PUBREL */
    ck_assert_int_eq(session_qos2_in_release(s, 12), 1);
    ck_assert_int_eq(session_qos2_in_add(s, 10), 1); /* id reused by the client */
    ck_assert_int_eq(session_qos2_in_add(s, 11), 0);
    ck_assert_uint_eq(s->qos2_in_count, 2);
    session_free(s);
}
END_TEST

START_TEST(test_qos2_in_many)
{
    struct session *s = session_make(10, 10, false);
    for (uint32_t id = 1; id <= 1000; id++)
        ck_assert_int_eq(session_qos2_in_add(s, (uint16_t)id), 1);
    for (uint32_t id = 1; id <= 1000; id++)
        ck_assert_int_eq(session_qos2_in_add(s, (uint16_t)id), 0);
    ck_assert_uint_eq(s->qos2_in_count, 1000);
    for (uint32_t id = 1; id <= 1000; id += 2)
        ck_assert_int_eq(session_qos2_in_release(s, (uint16_t)id), 0);
    for (uint32_t id = 1; id <= 1000; id++)
        ck_assert_int_eq(session_qos2_in_release(s, (uint16_t)id), id % 2 ? 1 : 0);
    ck_assert_uint_eq(s->qos2_in_count, 0);
    session_free(s);
}
END_TEST

/* ---- subscriptions ---- */

START_TEST(test_subs_set_replace_del_find)
{
    struct session *s = session_make(10, 10, false);
    ck_assert_ptr_null(session_sub_find(s, "a/#"));
    ck_assert_int_eq(session_sub_set(s, "a/#", 1), 1);
    ck_assert_int_eq(session_sub_set(s, "b/+/c", 0), 1);
    ck_assert_int_eq(session_sub_set(s, "a/#", 2), 0);
    ck_assert_uint_eq(s->sub_count, 2);

    const struct session_sub *sub = session_sub_find(s, "a/#");
    ck_assert_ptr_nonnull(sub);
    ck_assert_str_eq(sub->filter, "a/#");
    ck_assert_uint_eq(sub->qos, 2);
    ck_assert_ptr_null(session_sub_find(s, "a/"));
    ck_assert_ptr_null(session_sub_find(s, "a/#/x"));

    ck_assert_int_eq(session_sub_del(s, "a/#"), 0);
    ck_assert_int_eq(session_sub_del(s, "a/#"), 1);
    ck_assert_ptr_null(session_sub_find(s, "a/#"));
    sub = session_sub_find(s, "b/+/c");
    ck_assert_ptr_nonnull(sub);
    ck_assert_uint_eq(sub->qos, 0);
    ck_assert_uint_eq(s->sub_count, 1);
    session_free(s);
}
END_TEST

START_TEST(test_subs_filter_copied)
{
    struct session *s = session_make(10, 10, false);
    char filter[] = "x/y";
    ck_assert_int_eq(session_sub_set(s, filter, 1), 1);
    filter[0] = 'z';
    ck_assert_ptr_nonnull(session_sub_find(s, "x/y"));
    ck_assert_ptr_null(session_sub_find(s, "z/y"));
    session_free(s);
}
END_TEST

START_TEST(test_subs_many_keep_order)
{
    struct session *s = session_make(10, 10, false);
    char f[16];
    for (int i = 0; i < 50; i++) {
        snprintf(f, sizeof f, "t/%d", i);
        ck_assert_int_eq(session_sub_set(s, f, (uint8_t)(i % 3)), 1);
    }
    for (int i = 0; i < 50; i += 5) {
        snprintf(f, sizeof f, "t/%d", i);
        ck_assert_int_eq(session_sub_del(s, f), 0);
    }
    ck_assert_uint_eq(s->sub_count, 40);
    /* The survivors are still in insertion order. */
    int prev = -1;
    for (uint32_t i = 0; i < s->sub_count; i++) {
        int n = atoi(s->subs[i].filter + 2);
        ck_assert_int_gt(n, prev);
        ck_assert_int_ne(n % 5, 0);
        ck_assert_uint_eq(s->subs[i].qos, (unsigned)(n % 3));
        prev = n;
    }
    session_free(s);
}
END_TEST

Suite *session_suite(void)
{
    Suite *su = suite_create("session");
    TCase *tc = tcase_create("lifecycle");
    tcase_add_test(tc, test_new_starts_offline_and_empty);
    tcase_add_test(tc, test_free_accepts_null);
    tcase_add_test(tc, test_free_releases_messages_without_ops);
    suite_add_tcase(su, tc);

    tc = tcase_create("flows");
    tcase_add_test(tc, test_qos0_online_sent_untracked);
    tcase_add_test(tc, test_qos0_offline_dropped_not_counted);
    tcase_add_test(tc, test_qos1_send_and_puback);
    tcase_add_test(tc, test_qos2_full_flow);
    tcase_add_test(tc, test_qos2_duplicate_pubrec_resends_pubrel);
    tcase_add_loop_test(tc, test_bad_ack_ignored, 0, (int)(sizeof bad_acks / sizeof bad_acks[0]));
    tcase_add_test(tc, test_out_of_order_acks);
    suite_add_tcase(su, tc);

    tc = tcase_create("window");
    tcase_add_test(tc, test_window_full_queues_then_ack_pumps_in_order);
    tcase_add_test(tc, test_qos0_waits_behind_queued_qos1);
    tcase_add_test(tc, test_qos0_sent_directly_while_window_full);
    tcase_add_test(tc, test_queue_full_drops_and_counts);
    tcase_add_test(tc, test_queue_full_offline);
    tcase_add_test(tc, test_zero_max_queued_drops_when_busy);
    tcase_add_test(tc, test_zero_max_inflight_means_unlimited);
    suite_add_tcase(su, tc);

    tc = tcase_create("resume");
    tcase_add_test(tc, test_offline_queued_then_resume_sends_in_order);
    tcase_add_test(tc, test_resume_resends_inflight_in_order);
    tcase_add_test(tc, test_resume_resends_then_pumps_free_slots);
    tcase_add_test(tc, test_offline_during_send_stops_pump);
    suite_add_tcase(su, tc);

    tc = tcase_create("packet_id");
    tcase_add_test(tc, test_packet_id_wraps_to_1);
    tcase_add_test(tc, test_packet_id_skips_ids_in_use);
    tcase_add_test(tc, test_packet_id_reused_after_ack);
    suite_add_tcase(su, tc);

    tc = tcase_create("restore");
    tcase_add_test(tc, test_restore_out_order_and_continuity);
    tcase_add_test(tc, test_restore_out_keeps_next_seq_when_higher);
    tcase_add_loop_test(tc, test_restore_out_placement, 0,
                        (int)(sizeof restore_cases / sizeof restore_cases[0]));
    tcase_add_test(tc, test_restore_qos0_sent_on_resume);
    suite_add_tcase(su, tc);

    tc = tcase_create("ops");
    tcase_add_test(tc, test_without_persistence_hooks);
    tcase_add_test(tc, test_null_ops_table);
    suite_add_tcase(su, tc);

    tc = tcase_create("incoming_and_subs");
    tcase_add_test(tc, test_qos2_in_add_dup_release);
    tcase_add_test(tc, test_qos2_in_many);
    tcase_add_test(tc, test_subs_set_replace_del_find);
    tcase_add_test(tc, test_subs_filter_copied);
    tcase_add_test(tc, test_subs_many_keep_order);
    suite_add_tcase(su, tc);
    return su;
}

CHECK_MAIN(session_suite)
