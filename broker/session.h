/* Session state of one client ID, independent of any socket: its
 * subscriptions, the outgoing QoS state machines and the incoming QoS 2
 * packet ids. The broker drives it and implements session_ops (writing
 * packets, persisting); this module decides what is sent when.
 *
 * Outgoing delivery (server -> client), MQTT 3.1.1 section 4.3:
 *   QoS 1: PUBLISH(pid) -> wait PUBACK -> done            [MQTT-4.3.2-1]
 *   QoS 2: PUBLISH(pid) -> wait PUBREC -> send PUBREL(pid)
 *          -> wait PUBCOMP -> done                         [MQTT-4.3.3-1]
 * At most max_inflight QoS>0 messages are unacknowledged; further messages
 * wait in a FIFO queue of at most max_queued entries (past that they are
 * dropped and counted). A QoS 0 message also waits behind queued messages,
 * so that messages of one topic keep their order [MQTT-4.6.0-6].
 * Offline, QoS 0 messages are not kept; QoS 1/2 are queued for sessions with
 * clean_session = 0 only (the broker does not call enqueue otherwise).
 * On resume, unacknowledged PUBLISHes are resent with DUP=1 and unacknowledged
 * PUBRELs resent, in their original order [MQTT-4.4.0-1] [MQTT-4.6.0-1].
 *
 * Incoming QoS 2 (client -> server), method B of [MQTT-4.3.3-2]: the packet
 * id is remembered from PUBLISH until PUBREL, so a resent PUBLISH with the
 * same id is acknowledged but not delivered twice. */
#ifndef MQB_SESSION_H
#define MQB_SESSION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "message.h"

enum out_state {
    OUT_QUEUED = 0,       /* waiting for an inflight slot (or for the client) */
    OUT_WAIT_PUBACK = 1,  /* QoS 1 sent */
    OUT_WAIT_PUBREC = 2,  /* QoS 2 sent */
    OUT_WAIT_PUBCOMP = 3, /* QoS 2, PUBREL sent */
};

struct session;

struct out_msg {
    struct out_msg *prev, *next; /* in the session's inflight or queue list */
    /* The broker's instance-wide list of stored entries, oldest first
     * (persist.c); session.c never touches these two. */
    struct out_msg *gprev, *gnext;
    struct session *session; /* the session holding this entry */
    struct message *msg;     /* one reference held */
    uint64_t seq;            /* increasing per session; the store's key */
    uint16_t packet_id;      /* 0 while OUT_QUEUED or for QoS 0 */
    uint8_t qos;             /* delivered QoS = min(published, granted) */
    uint8_t state;           /* enum out_state */
    bool retain;             /* RETAIN flag to send (retained-on-subscribe only) */
};

struct out_list {
    struct out_msg *head, *tail;
    uint32_t count;
};

struct session_ops {
    /* Write a PUBLISH for om; om->packet_id is set for QoS > 0. */
    void (*send_publish)(void *ctx, struct session *s, const struct out_msg *om, bool dup);
    void (*send_pubrel)(void *ctx, struct session *s, uint16_t packet_id);
    /* Persistence hooks (each may be NULL); called only for QoS > 0 entries:
     * a new entry, an entry whose state or packet id changed, an entry
     * done or dropped. */
    void (*stored)(void *ctx, struct session *s, const struct out_msg *om);
    void (*updated)(void *ctx, struct session *s, const struct out_msg *om);
    void (*removed)(void *ctx, struct session *s, const struct out_msg *om);
};

struct session_sub {
    char *filter;
    uint8_t qos;
};

struct session {
    char *client_id;
    bool clean_session;
    bool online;
    const struct session_ops *ops;
    void *ops_ctx;
    void *owner; /* the broker's per-session data (current connection) */

    uint16_t max_inflight;
    uint32_t max_queued;
    struct out_list inflight; /* sent, unacknowledged, in send order */
    struct out_list queue;    /* not yet sent, FIFO */
    uint16_t last_packet_id;
    uint64_t next_seq;

    uint16_t *qos2_in; /* incoming QoS 2 ids awaiting PUBREL */
    uint32_t qos2_in_count, qos2_in_cap;

    struct session_sub *subs;
    uint32_t sub_count, sub_cap;

    uint64_t dropped; /* messages dropped because the queue was full */

    /* Scratch for the broker's per-publish de-duplication of overlapping
     * subscriptions: the publish generation this session was last matched
     * in, and the best QoS seen in it. */
    uint64_t match_gen;
    uint8_t match_qos;
};

/* NULL when out of memory. The session starts offline. */
struct session *session_new(const char *client_id, bool clean_session, uint16_t max_inflight,
                            uint32_t max_queued, const struct session_ops *ops, void *ops_ctx);
/* Frees all state and drops message references without calling ops.
 * Accepts NULL. */
void session_free(struct session *s);

/* Offer a message to the session at the delivered qos. Sends at once when
 * online and a slot is free, else queues. Returns 0 when sent or queued,
 * 1 when dropped (queue full, or QoS 0 while offline), -1 out of memory. */
int session_enqueue(struct session *s, struct message *m, uint8_t qos, bool retain);

/* As session_enqueue, but a full queue does not drop the message: it is
 * queued beyond max_queued. For messages the engine injects (inbound
 * rules) into a persistent session that is offline: what bounds them is
 * the broker's instance-wide max_offline_messages (oldest evicted), not
 * the client's queue. 0 when sent or queued, 1 for QoS 0 while offline,
 * -1 out of memory. */
int session_enqueue_kept(struct session *s, struct message *m, uint8_t qos);
/* Whether session_enqueue would keep a message now rather than drop it: a
 * free inflight slot with nothing queued, or a queue below max_queued. */
bool session_has_room(const struct session *s);

/* The client acknowledged packet_id with PUBACK / PUBREC / PUBCOMP.
 * Returns 0 when it matched an inflight message in the right state, 1 when
 * unknown (ignored, as the spec allows), and pumps the queue as slots free.
 * PUBREC answers with PUBREL via ops->send_pubrel. */
int session_on_puback(struct session *s, uint16_t packet_id);
int session_on_pubrec(struct session *s, uint16_t packet_id);
int session_on_pubcomp(struct session *s, uint16_t packet_id);

/* Remove one entry (queued or inflight) for good: expiry or eviction by the
 * broker. Calls ops->removed (QoS > 0), frees it, and refills the inflight
 * window when a slot was freed. */
void session_drop(struct session *s, struct out_msg *om);

/* The client is connected again (or for the first time): resend the
 * inflight window (DUP / PUBREL) in order, then send queued messages while
 * slots are free. */
void session_resume(struct session *s);
/* The connection is gone; the session keeps its state. */
void session_set_offline(struct session *s);

/* Re-insert an entry loaded from the store (no ops->stored call).
 * Entries must be restored in increasing seq order. state OUT_QUEUED goes to
 * the queue, the others to the inflight list. Takes a reference on m.
 * 0 or -1 (out of memory). */
int session_restore_out(struct session *s, struct message *m, uint64_t seq, uint8_t qos,
                        uint16_t packet_id, uint8_t state, bool retain);

/* Incoming QoS 2. add: 1 when new (deliver it), 0 when already known (a
 * resend: acknowledge, do not deliver), -1 out of memory. release: 0 when
 * it was known, 1 when not. */
int session_qos2_in_add(struct session *s, uint16_t packet_id);
int session_qos2_in_release(struct session *s, uint16_t packet_id);

/* Subscriptions of this session (mirrored by the broker into the topic
 * tree and the store). set: 1 when added, 0 when the qos was replaced,
 * -1 out of memory. del: 0 when removed, 1 when absent. */
int session_sub_set(struct session *s, const char *filter, uint8_t qos);
int session_sub_del(struct session *s, const char *filter);
const struct session_sub *session_sub_find(const struct session *s, const char *filter);

#endif
