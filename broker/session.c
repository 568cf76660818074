/* Session state machines; the rules are stated in session.h. In short:
 *
 *   enqueue(QoS 1), online, window free -> stored, PUBLISH(pid)      WAIT_PUBACK
 *   enqueue(QoS 2), online, window free -> stored, PUBLISH(pid)      WAIT_PUBREC
 *   enqueue(any), window full or queued -> (stored), queue tail      QUEUED
 *   PUBACK(pid)  on WAIT_PUBACK          -> removed, pump
 *   PUBREC(pid)  on WAIT_PUBREC          -> updated, PUBREL(pid)     WAIT_PUBCOMP
 *   PUBREC(pid)  on WAIT_PUBCOMP         -> PUBREL(pid) again (a resent PUBREC)
 *   PUBCOMP(pid) on WAIT_PUBCOMP         -> removed, pump
 *
 * Invariants kept here: every inflight entry has a distinct non-zero packet
 * id and QoS > 0; every queued entry has packet id 0; inflight entries are
 * older (lower seq) than queued ones, since the queue is only ever drained
 * from its head and nothing is sent directly while it is non-empty.
 *
 * The ops callbacks must not re-enter this session, except that they may
 * call session_set_offline (a failed write): sending loops re-check
 * s->online after every callback and stop. */
#include "session.h"

#include <stdlib.h>
#include <string.h>

#define PACKET_ID_MAX 65535u

/* ---- ops wrappers: persistence hooks are optional, and so is the table ---- */

static void ops_send_publish(struct session *s, const struct out_msg *om, bool dup)
{
    if (s->ops && s->ops->send_publish)
        s->ops->send_publish(s->ops_ctx, s, om, dup);
}

static void ops_send_pubrel(struct session *s, uint16_t packet_id)
{
    if (s->ops && s->ops->send_pubrel)
        s->ops->send_pubrel(s->ops_ctx, s, packet_id);
}

static void ops_stored(struct session *s, const struct out_msg *om)
{
    if (om->qos > 0 && s->ops && s->ops->stored)
        s->ops->stored(s->ops_ctx, s, om);
}

static void ops_updated(struct session *s, const struct out_msg *om)
{
    if (om->qos > 0 && s->ops && s->ops->updated)
        s->ops->updated(s->ops_ctx, s, om);
}

static void ops_removed(struct session *s, const struct out_msg *om)
{
    if (om->qos > 0 && s->ops && s->ops->removed)
        s->ops->removed(s->ops_ctx, s, om);
}

/* ---- out_msg and out_list ---- */

/* Takes a reference on m. The entry starts OUT_QUEUED without a packet id. */
static struct out_msg *out_msg_new(struct session *s, struct message *m, uint64_t seq, uint8_t qos,
                                   bool retain)
{
    struct out_msg *om = calloc(1, sizeof *om);
    if (!om)
        return NULL;
    om->session = s;
    om->msg = message_ref(m);
    om->seq = seq;
    om->qos = qos;
    om->state = OUT_QUEUED;
    om->retain = retain;
    return om;
}

static void out_msg_free(struct out_msg *om)
{
    if (!om)
        return;
    message_unref(om->msg);
    free(om);
}

static void out_list_append(struct out_list *l, struct out_msg *om)
{
    om->next = NULL;
    om->prev = l->tail;
    if (l->tail)
        l->tail->next = om;
    else
        l->head = om;
    l->tail = om;
    l->count++;
}

static void out_list_unlink(struct out_list *l, struct out_msg *om)
{
    if (om->prev)
        om->prev->next = om->next;
    else
        l->head = om->next;
    if (om->next)
        om->next->prev = om->prev;
    else
        l->tail = om->prev;
    om->prev = om->next = NULL;
    l->count--;
}

static void out_list_clear(struct out_list *l)
{
    struct out_msg *om = l->head;
    while (om) {
        struct out_msg *next = om->next;
        out_msg_free(om);
        om = next;
    }
    l->head = l->tail = NULL;
    l->count = 0;
}

/* Linear: the inflight list is bounded by max_inflight. */
static struct out_msg *out_list_find_id(const struct out_list *l, uint16_t packet_id)
{
    for (struct out_msg *om = l->head; om; om = om->next)
        if (om->packet_id == packet_id)
            return om;
    return NULL;
}

/* ---- outgoing state machine ---- */

/* The next id after last_packet_id that no inflight message uses, wrapping
 * 65535 -> 1 and skipping 0 [MQTT-2.3.1-1]; 0 when all 65535 are taken.
 * Ids are handed out in order, so the ids in use are mostly the ones just
 * behind last_packet_id and the first candidate is nearly always free. */
static uint16_t session_alloc_packet_id(struct session *s)
{
    uint16_t id = s->last_packet_id;
    if (s->inflight.count >= PACKET_ID_MAX)
        return 0;
    for (uint32_t tries = 0; tries < PACKET_ID_MAX; tries++) {
        id = id >= PACKET_ID_MAX ? 1 : (uint16_t)(id + 1);
        if (!out_list_find_id(&s->inflight, id)) {
            s->last_packet_id = id;
            return id;
        }
    }
    return 0;
}

static bool session_window_free(const struct session *s)
{
    return s->inflight.count < s->max_inflight;
}

/* Gives a QoS > 0 entry its packet id and first wait state. -1 when no id
 * is free (only possible with 65535 messages inflight). */
static int out_msg_start(struct session *s, struct out_msg *om)
{
    uint16_t id = session_alloc_packet_id(s);
    if (!id)
        return -1;
    om->packet_id = id;
    om->state = om->qos == 1 ? OUT_WAIT_PUBACK : OUT_WAIT_PUBREC;
    return 0;
}

/* Sends queued messages, oldest first, while online and a slot is free.
 * A QoS 0 message at the head needs no slot and is forgotten once sent. */
static void session_pump(struct session *s)
{
    struct out_msg *om;
    while (s->online && (om = s->queue.head) != NULL) {
        if (om->qos == 0) {
            out_list_unlink(&s->queue, om);
            ops_send_publish(s, om, false);
            out_msg_free(om);
            continue;
        }
        if (!session_window_free(s) || out_msg_start(s, om) != 0)
            break;
        out_list_unlink(&s->queue, om);
        out_list_append(&s->inflight, om);
        ops_updated(s, om);
        ops_send_publish(s, om, false);
    }
}

/* The entry is acknowledged for good: forget it and use its slot. */
static void session_finish(struct session *s, struct out_msg *om)
{
    out_list_unlink(&s->inflight, om);
    ops_removed(s, om);
    out_msg_free(om);
    session_pump(s);
}

void session_drop(struct session *s, struct out_msg *om)
{
    if (om->state == OUT_QUEUED) {
        out_list_unlink(&s->queue, om);
        ops_removed(s, om);
        out_msg_free(om);
        return;
    }
    session_finish(s, om);
}

/* ---- lifecycle ---- */

struct session *session_new(const char *client_id, bool clean_session, uint16_t max_inflight,
                            uint32_t max_queued, const struct session_ops *ops, void *ops_ctx)
{
    /* One allocation with the client id behind the struct: thousands of
     * idle sessions are the common case. */
    const char *id = client_id ? client_id : "";
    size_t idlen = strlen(id) + 1;
    struct session *s = calloc(1, sizeof *s + idlen);
    if (!s)
        return NULL;
    s->client_id = memcpy((char *)(s + 1), id, idlen);
    s->clean_session = clean_session;
    s->ops = ops;
    s->ops_ctx = ops_ctx;
    /* 0 means "no limit of our own": the packet id space still bounds it. */
    s->max_inflight = max_inflight ? max_inflight : (uint16_t)PACKET_ID_MAX;
    s->max_queued = max_queued;
    /* seq 0 is never used, so a QoS 0 message sent without an entry can
     * carry seq 0 to mean "not tracked". */
    s->next_seq = 1;
    return s;
}

void session_free(struct session *s)
{
    if (!s)
        return;
    out_list_clear(&s->inflight);
    out_list_clear(&s->queue);
    for (uint32_t i = 0; i < s->sub_count; i++)
        free(s->subs[i].filter);
    free(s->subs);
    free(s->qos2_in);
    free(s);
}

/* ---- outgoing API ---- */

bool session_has_room(const struct session *s)
{
    /* the same test as session_enqueue's drop below */
    return (s->queue.count == 0 && session_window_free(s)) || s->queue.count < s->max_queued;
}

static int session_offer(struct session *s, struct message *m, uint8_t qos, bool retain,
                         bool bounded)
{
    if (!s || !m)
        return -1;
    if (qos > 2)
        qos = 2; /* callers pass min(published, granted); keep the machine sane */
    if (!s->online && qos == 0)
        return 1;
    bool direct = s->online && s->queue.count == 0;
    if (direct && qos == 0) {
        /* Untracked: no entry, no seq, no persistence. */
        struct out_msg tmp = {.msg = m, .qos = 0, .state = OUT_QUEUED, .retain = retain};
        ops_send_publish(s, &tmp, false);
        return 0;
    }
    direct = direct && session_window_free(s);
    if (bounded && !direct && s->queue.count >= s->max_queued) {
        s->dropped++;
        return 1;
    }
    struct out_msg *om = out_msg_new(s, m, s->next_seq, qos, retain);
    if (!om)
        return -1;
    s->next_seq++;
    if (direct && out_msg_start(s, om) == 0) {
        out_list_append(&s->inflight, om);
        ops_stored(s, om);
        ops_send_publish(s, om, false);
        return 0;
    }
    out_list_append(&s->queue, om);
    ops_stored(s, om);
    return 0;
}

int session_enqueue(struct session *s, struct message *m, uint8_t qos, bool retain)
{
    return session_offer(s, m, qos, retain, true);
}

int session_enqueue_kept(struct session *s, struct message *m, uint8_t qos)
{
    return session_offer(s, m, qos, false, false);
}

int session_on_puback(struct session *s, uint16_t packet_id)
{
    struct out_msg *om = out_list_find_id(&s->inflight, packet_id);
    if (!om || om->state != OUT_WAIT_PUBACK)
        return 1;
    session_finish(s, om);
    return 0;
}

int session_on_pubrec(struct session *s, uint16_t packet_id)
{
    struct out_msg *om = out_list_find_id(&s->inflight, packet_id);
    if (!om)
        return 1;
    if (om->state == OUT_WAIT_PUBREC) {
        om->state = OUT_WAIT_PUBCOMP;
        ops_updated(s, om);
    } else if (om->state != OUT_WAIT_PUBCOMP) {
        return 1;
    }
    /* [MQTT-4.3.3-1] answer PUBREC with PUBREL; a resent PUBREC means our
     * PUBREL may have been lost, so send it again. */
    ops_send_pubrel(s, packet_id);
    return 0;
}

int session_on_pubcomp(struct session *s, uint16_t packet_id)
{
    struct out_msg *om = out_list_find_id(&s->inflight, packet_id);
    if (!om || om->state != OUT_WAIT_PUBCOMP)
        return 1;
    session_finish(s, om);
    return 0;
}

void session_resume(struct session *s)
{
    s->online = true;
    /* [MQTT-4.4.0-1] resend unacknowledged PUBLISH (DUP=1) and PUBREL in
     * their original order, before anything new [MQTT-4.6.0-1]. */
    for (struct out_msg *om = s->inflight.head; om && s->online; om = om->next) {
        if (om->state == OUT_WAIT_PUBCOMP)
            ops_send_pubrel(s, om->packet_id);
        else
            ops_send_publish(s, om, true);
    }
    session_pump(s);
}

void session_set_offline(struct session *s)
{
    s->online = false;
}

/* Whether a loaded entry can stand in the inflight list as it is: a QoS > 0
 * wait state that fits its QoS and a packet id not already taken. Anything
 * else (a damaged store) is re-queued and goes out again as a new send. */
static bool session_restore_inflight(const struct session *s, uint8_t qos, uint16_t packet_id,
                                     uint8_t state)
{
    bool state_ok = (qos == 1 && state == OUT_WAIT_PUBACK) ||
                    (qos == 2 && (state == OUT_WAIT_PUBREC || state == OUT_WAIT_PUBCOMP));
    return state_ok && packet_id != 0 && !out_list_find_id(&s->inflight, packet_id);
}

int session_restore_out(struct session *s, struct message *m, uint64_t seq, uint8_t qos,
                        uint16_t packet_id, uint8_t state, bool retain)
{
    if (!s || !m)
        return -1;
    if (qos > 2)
        qos = 2;
    struct out_msg *om = out_msg_new(s, m, seq, qos, retain);
    if (!om)
        return -1;
    /* Restored entries are not limited by max_queued or max_inflight: they
     * were accepted before, and dropping them here would bypass removed(). */
    if (session_restore_inflight(s, qos, packet_id, state)) {
        om->packet_id = packet_id;
        om->state = state;
        out_list_append(&s->inflight, om);
        if (packet_id > s->last_packet_id)
            s->last_packet_id = packet_id;
    } else {
        out_list_append(&s->queue, om);
    }
    if (seq >= s->next_seq)
        s->next_seq = seq + 1;
    return 0;
}

/* ---- incoming QoS 2 ids: a small array, bounded by the client's window ---- */

static int u16_array_reserve(uint16_t **arr, uint32_t *cap, uint32_t need)
{
    if (need <= *cap)
        return 0;
    uint32_t ncap = *cap ? *cap * 2 : 8;
    while (ncap < need)
        ncap *= 2;
    uint16_t *n = realloc(*arr, (size_t)ncap * sizeof *n);
    if (!n)
        return -1;
    *arr = n;
    *cap = ncap;
    return 0;
}

static int session_qos2_in_index(const struct session *s, uint16_t packet_id)
{
    for (uint32_t i = 0; i < s->qos2_in_count; i++)
        if (s->qos2_in[i] == packet_id)
            return (int)i;
    return -1;
}

int session_qos2_in_add(struct session *s, uint16_t packet_id)
{
    if (session_qos2_in_index(s, packet_id) >= 0)
        return 0;
    if (u16_array_reserve(&s->qos2_in, &s->qos2_in_cap, s->qos2_in_count + 1) != 0)
        return -1;
    s->qos2_in[s->qos2_in_count++] = packet_id;
    return 1;
}

int session_qos2_in_release(struct session *s, uint16_t packet_id)
{
    int i = session_qos2_in_index(s, packet_id);
    if (i < 0)
        return 1;
    /* Order does not matter: move the last id into the hole. */
    s->qos2_in[i] = s->qos2_in[--s->qos2_in_count];
    return 0;
}

/* ---- subscriptions: kept in the order they were first added ---- */

static int session_sub_index(const struct session *s, const char *filter)
{
    for (uint32_t i = 0; i < s->sub_count; i++)
        if (strcmp(s->subs[i].filter, filter) == 0)
            return (int)i;
    return -1;
}

int session_sub_set(struct session *s, const char *filter, uint8_t qos)
{
    int i = session_sub_index(s, filter);
    if (i >= 0) {
        s->subs[i].qos = qos;
        return 0;
    }
    if (s->sub_count == s->sub_cap) {
        uint32_t ncap = s->sub_cap ? s->sub_cap * 2 : 4;
        struct session_sub *n = realloc(s->subs, (size_t)ncap * sizeof *n);
        if (!n)
            return -1;
        s->subs = n;
        s->sub_cap = ncap;
    }
    char *copy = strdup(filter);
    if (!copy)
        return -1;
    s->subs[s->sub_count].filter = copy;
    s->subs[s->sub_count].qos = qos;
    s->sub_count++;
    return 1;
}

int session_sub_del(struct session *s, const char *filter)
{
    int i = session_sub_index(s, filter);
    if (i < 0)
        return 1;
    free(s->subs[i].filter);
    memmove(&s->subs[i], &s->subs[i + 1],
            (size_t)(s->sub_count - (uint32_t)i - 1) * sizeof *s->subs);
    s->sub_count--;
    return 0;
}

const struct session_sub *session_sub_find(const struct session *s, const char *filter)
{
    int i = session_sub_index(s, filter);
    return i < 0 ? NULL : &s->subs[i];
}
