/* Shared between the broker's own files (broker.c, conn.c, handle_*.c,
 * persist.c); nothing outside broker/ includes it. */
#ifndef MQB_BROKER_INTERNAL_H
#define MQB_BROKER_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "../common/buf.h"
#include "../common/hmap.h"
#include "broker.h"
#include "packet.h"
#include "session.h"
#include "store.h"
#include "topic.h"

/* A connection whose CONNECT does not arrive within this is closed. */
#define CONNECT_TIMEOUT_MS 10000
/* How often keep-alive and handshake deadlines are checked. */
#define TICK_MS 250
/* Past this much unsent output, QoS 0 deliveries to the connection are
 * dropped (QoS 1/2 are bounded by the inflight window and the queue). */
#define MAX_PENDING_OUT (16u << 20)

enum conn_state {
    CONN_NEW,     /* waiting for CONNECT */
    CONN_ACTIVE,  /* CONNACK 0 sent */
    CONN_CLOSING, /* uv_close issued; ignore everything */
};

struct listener {
    uv_tcp_t tcp;
    struct broker *b;
};

struct conn {
    uv_tcp_t tcp; /* first: the handle's address is the conn's */
    struct broker *b;
    struct conn *prev, *next; /* every connection */
    struct conn *flush_next;  /* pending-output list */
    bool in_flush_list;
    bool writing;          /* a uv_write is in flight */
    bool clean_disconnect; /* DISCONNECT received */
    uint8_t state;         /* enum conn_state */
    uint8_t protocol_level;
    uint16_t keepalive;      /* seconds, 0 = none */
    uint64_t last_recv_ms;   /* loop time of the last byte received */
    uint64_t channel;        /* unique per connection */
    struct session *session; /* NULL until CONNECT accepted */
    struct message *will;    /* NULL when none */
    struct buf in;           /* bytes of an incomplete packet */
    struct buf out;          /* encoded, not yet handed to the kernel */
    size_t writing_bytes;    /* handed to uv_write, in flight */
    char peer[56];           /* "ip:port"; IPv6 with port fits in 54 */
};

struct broker {
    uv_loop_t *loop;
    struct broker_config cfg;
    struct broker_hooks hooks;
    struct listener listeners[BROKER_MAX_LISTENERS];
    unsigned listener_count;
    uv_timer_t tick;
    uv_prepare_t prepare;
    uv_check_t check;
    unsigned open_handles; /* counts down to 0 during stop */
    bool stopping;
    bool timers_inited;
    void (*stop_done)(void *);
    void *stop_arg;
    int lock_fd;

    struct store *store; /* NULL when memory only */
    struct topic_tree *topics;
    struct hmap sessions;    /* client id -> struct session * */
    struct conn *conns;      /* list head */
    struct conn *flush_head; /* connections with pending output */
    uint64_t next_channel;
    uint64_t channel_nonce; /* random per run: channel ids differ across restarts */

    /* Routing scratch: sessions matched by the current publish. */
    struct session **hits;
    uint32_t hit_count, hit_cap;
    uint64_t match_gen;

    /* Message ids (broker.c): last millisecond used and sequence in it. */
    uint64_t id_last_ms;
    uint32_t id_seq;

    /* Offline messages: every QoS 1/2 entry of a persistent session, oldest
     * first, for expiry and the instance-wide bound. */
    struct out_msg *stored_head, *stored_tail;
    uint64_t stored_count;
    /* Wildcard subscriptions per declared parent topic (managed naming). */
    uint32_t *wildcards_per_parent;

    /* Moves when a session may have made room (broker_room_gen). */
    uint64_t room_gen;

    struct broker_stats stats;
    uint8_t rbuf[65536]; /* shared read buffer: one read at a time */
};

/* conn.c */
void conn_on_accept(uv_stream_t *server, int status);
/* Close the connection at a safe point: detaches the session, publishes the
 * will unless the client sent DISCONNECT (publish_will false skips it,
 * e.g. at shutdown), frees the conn when libuv is done. Idempotent. */
void conn_close(struct conn *c, const char *reason, bool publish_will);
/* Mark c as having pending output (flushed after the store commits). */
void conn_want_flush(struct conn *c);
/* Commit the store, then write every pending output buffer. */
void broker_flush(struct broker *b);
void conn_send_ack(struct conn *c, enum mqtt_type type, uint16_t packet_id);

/* handle_*.c: one function per packet type; return 0, or -1 to close the
 * connection as a protocol violation (the reason is logged by the handler). */
int handle_connect(struct conn *c, const struct mqtt_connect *p);
int handle_publish(struct conn *c, const struct mqtt_publish *p);
int handle_puback(struct conn *c, uint8_t type, uint16_t packet_id);
int handle_pubrel(struct conn *c, uint16_t packet_id);
int handle_subscribe(struct conn *c, const struct mqtt_subscribe *p);
int handle_unsubscribe(struct conn *c, const struct mqtt_subscribe *p);

/* handle_subscribe.c: count a wildcard subscription added (+1) or removed
 * (-1) against its parent topic (managed naming only). */
void broker_wildcards_adjust(struct broker *b, const char *filter, int delta);

/* handle_publish.c: deliver m to every matching subscriber, update the
 * retained store, tell the engine. from may be NULL (will, injected). */
void broker_route(struct broker *b, struct message *m, const char *from_client_id);
uint64_t broker_next_message_id(struct broker *b);
/* The epoch milliseconds an id was made at. */
int64_t broker_message_id_time(uint64_t id);

/* broker.c: tell the engine about a connection change of c. */
void broker_client_event(struct broker *b, const struct conn *c, enum client_event_type type);

/* persist.c: session_ops implementation and start-up loading. */
extern const struct session_ops broker_session_ops;
int broker_load_store(struct broker *b, char *err, size_t errlen);
struct session *broker_session_create(struct broker *b, const char *client_id, bool clean);
/* Remove a session: unsubscribe everything, drop its store rows, free. */
void broker_session_destroy(struct broker *b, struct session *s);
/* Expire offline messages older than the TTL and evict the oldest past the
 * instance-wide bound. Cheap when nothing is due (list heads only). */
void broker_offline_housekeeping(struct broker *b);
/* After loading: order the offline list by message time. */
void broker_offline_sort(struct broker *b);

#endif
