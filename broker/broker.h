/* The MQTT broker: listeners, connections, sessions, routing, retained
 * messages and persistence, driven by one libuv loop. It knows nothing of
 * rules or connectors; the engine plugs in through broker_hooks. */
#ifndef MQB_BROKER_H
#define MQB_BROKER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "message.h"
#include "naming.h"
#include "store.h"

#define BROKER_MAX_LISTENERS 8

struct broker_listener {
    char *host; /* "127.0.0.1", "0.0.0.0", "::" */
    uint16_t port;
};

struct broker_limits {
    uint32_t max_packet_size; /* whole packet, bytes; bigger closes the connection */
    uint16_t max_inflight;    /* unacknowledged QoS>0 messages per client */
    uint32_t max_queued;      /* queued messages per client, past which new ones drop */
    uint32_t max_connections; /* 0 = unlimited */
    uint16_t max_keepalive;   /* 0 = accept the client's value */
    /* The managed-service limits (SEMANTICS.md), enforced in both naming
     * modes. */
    uint32_t max_message_size;                      /* payload bytes; 65536; larger is discarded */
    uint16_t max_subscriptions_per_client;          /* 30; a wildcard filter counts as one */
    uint16_t max_wildcard_subscriptions_per_parent; /* 100, instance-wide */
    uint16_t max_parent_topics;                     /* 25 (checked when loading the config) */
    uint32_t max_rules;                             /* 100 (checked by the rules engine) */
    uint32_t offline_message_ttl;                   /* seconds; 259200 = 3 days */
    uint32_t max_offline_messages; /* 1000000 per instance; past it the oldest go */
};

enum naming_mode {
    NAMING_MANAGED = 0, /* client ID format, declared groups and parent topics, 3 levels */
    NAMING_MQTT = 1,    /* plain MQTT 3.1.1 names (conformance suites) */
};

enum duplicate_policy {
    DUPLICATE_TAKEOVER = 0, /* the old connection is closed [MQTT-3.1.4-2] */
    DUPLICATE_REJECT = 1,   /* the newcomer gets CONNACK 0x02 */
};

struct broker_config {
    struct broker_listener listeners[BROKER_MAX_LISTENERS];
    unsigned listener_count;
    char *storage_dir;    /* directory of the embedded store; NULL = memory only */
    enum store_sync sync; /* durability of the store */
    struct broker_limits limits;
    enum naming_mode naming_mode;
    enum duplicate_policy on_duplicate_client_id;
    struct naming naming; /* declared parent topics and groups, naming limits */
};

/* Fill cfg with the defaults (one listener 0.0.0.0:1883, storage "./data",
 * STORE_SYNC_NORMAL, max_packet_size 268435460, max_inflight 20,
 * max_queued 1000, max_connections 0, max_keepalive 0, max_message_size
 * 65536, max_subscriptions_per_client 30,
 * max_wildcard_subscriptions_per_parent 100, max_parent_topics 25, max_rules 100,
 * offline_message_ttl 259200, max_offline_messages 1000000, naming managed
 * with no parent topics or groups declared and naming limits 64/3/64,
 * on_duplicate_client_id takeover). Strings are heap copies freed by
 * broker_config_free(). */
void broker_config_defaults(struct broker_config *cfg);
void broker_config_free(struct broker_config *cfg);

/* A change of a client's connection, in the order it happened. For one
 * client: connect; then disconnect (only when it sent DISCONNECT); then
 * tcpclean when the TCP connection is gone (always, also after disconnect,
 * on keep-alive timeout, protocol error or takeover; a takeover gives the
 * old channel's tcpclean before the new channel's connect). */
enum client_event_type {
    CLIENT_CONNECT = 0,
    CLIENT_DISCONNECT = 1,
    CLIENT_TCPCLEAN = 2,
};

struct client_event {
    enum client_event_type type;
    const char *client_id;
    const char *channel_id; /* 32 hex digits, unique per TCP connection */
    const char *client_ip;  /* "ip:port" */
    int64_t time_ms;        /* epoch ms */
    uint64_t seq;           /* increasing: a later event has a larger seq */
};

const char *client_event_name(enum client_event_type t); /* "connect", ... */

/* What the engine is told. Called on the broker loop; must not block. */
struct broker_hooks {
    void *ctx;
    /* An accepted PUBLISH (or a will), after routing to local subscribers;
     * not called for messages the engine injected. The message's
     * QoS 1/2 acknowledgement leaves only after on_flush returned, so what
     * the hook stores durably before then is covered by the PUBACK. */
    void (*on_message)(void *ctx, const struct message *m, const char *client_id);
    void (*on_client_event)(void *ctx, const struct client_event *ev);
    /* Once per loop iteration, after the broker's store committed and before
     * any packet is written: the engine commits its own durable state. */
    void (*on_flush)(void *ctx);
};

struct broker_stats {
    uint64_t connections_current;
    uint64_t connections_total;
    uint64_t sessions;
    uint64_t subscriptions;
    uint64_t retained;
    uint64_t messages_received;
    uint64_t messages_sent;
    uint64_t messages_dropped; /* queue full */
    uint64_t bytes_received;
    uint64_t bytes_sent;
    uint64_t malformed_packets;
    /* offline messages (QoS 1/2 entries of persistent sessions) */
    uint64_t offline_messages; /* held now */
    uint64_t offline_stored;   /* ever stored */
    uint64_t offline_expired;  /* older than limits.offline_message_ttl */
    uint64_t offline_evicted;  /* oldest removed past limits.max_offline_messages */
    /* refusals, by reason */
    uint64_t discarded_oversize;        /* payload over limits.max_message_size */
    uint64_t p2p_no_target;             /* P2P to a client with no session */
    uint64_t publish_bad_topic;         /* connection closed: topic breaks the naming rules */
    uint64_t connect_bad_client_id;     /* CONNACK 0x02 */
    uint64_t connect_duplicate;         /* CONNACK 0x02, on_duplicate_client_id: reject */
    uint64_t connect_unavailable;       /* CONNACK 0x03 */
    uint64_t connect_bad_protocol;      /* CONNACK 0x01 */
    uint64_t subscribe_bad_filter;      /* SUBACK 0x80: invalid or outside parent topics */
    uint64_t subscribe_too_many;        /* SUBACK 0x80: max_subscriptions_per_client */
    uint64_t subscribe_wildcard_limit;  /* SUBACK 0x80: wildcard limit per parent topic */
    uint64_t subscribe_qos2_persistent; /* SUBACK 0x80: QoS 2 with cleanSession=0 */
    /* injected messages refused (INJECT_BUSY): a matched online session
     * had no room; nothing was delivered, the engine offers them again */
    uint64_t inject_busy;
};

struct broker;

/* Create a broker on loop. cfg is copied. NULL with err on failure. */
struct broker *broker_new(uv_loop_t *loop, const struct broker_config *cfg,
                          const struct broker_hooks *hooks, char *err, size_t errlen);
/* Open the store, load persistent state, bind and listen. 0 or -1 + err. */
int broker_start(struct broker *b, char *err, size_t errlen);
/* Stop accepting, close every connection (no will is published for them:
 * the broker, not the client, ends them... see broker.c), commit the
 * store and close the listeners. done(arg) is called once every handle is
 * closed; then broker_free() may be called. */
void broker_stop(struct broker *b, void (*done)(void *arg), void *arg);
/* Accepts NULL. */
void broker_free(struct broker *b);

/* Publish a message on behalf of the engine (inbound rules), checked like a
 * client's PUBLISH: the managed naming rules for topic (in naming: managed
 * mode) and max_message_size. With p2p_client_id the message goes to that
 * client only, on topic "<parent>/p2p/<client id>" where <parent> is the
 * first level of topic; else to the subscribers of topic. Retain is not
 * set. 0 when accepted (store writes join the current iteration and are
 * committed before on_flush is called); else a negative enum inject_error
 * with the reason in why.
 *
 * flags INJECT_FLOW_CONTROL: the message is delivered to every receiver or
 * to none. Before anything is delivered, every matched session that is
 * online and would get it at QoS 1 or 2 must have room (a free inflight
 * slot with nothing queued, or a queue below max_queued); when one has
 * not, the call returns INJECT_BUSY naming that client in why, delivers
 * nothing and counts stats.inject_busy. The engine offers the message again
 * once broker_room_gen() moved. Where it is delivered:
 *   online, QoS 1/2        queued or sent (there is room, checked above);
 *   online, QoS 0          as a client's PUBLISH: dropped and counted when
 *                          the queue is full (at most once: never refused);
 *   offline persistent,    kept even past max_queued (session_enqueue_kept):
 *   QoS 1/2                bounded by max_offline_messages, oldest evicted;
 *   offline, QoS 0         not kept (as for a client's PUBLISH).
 * Without the flag, full queues drop the message as for a client's PUBLISH. */
enum inject_error {
    INJECT_BAD_TOPIC = -1,  /* not a topic name, or outside the naming rules */
    INJECT_TOO_LARGE = -2,  /* payload over max_message_size */
    INJECT_BAD_TARGET = -3, /* P2P target is not a valid (declared) client ID */
    INJECT_NO_MEMORY = -4,
    INJECT_BUSY = -5, /* INJECT_FLOW_CONTROL: a receiver has no room; nothing delivered */
};
enum inject_flags {
    INJECT_FLOW_CONTROL = 1,
};
int broker_inject(struct broker *b, const char *topic, size_t topic_len, const uint8_t *payload,
                  uint32_t payload_len, uint8_t qos, const char *p2p_client_id, unsigned flags,
                  char *why, size_t whylen);
/* A counter that moves whenever a session may have made room: a delivery
 * was acknowledged, a stored message was dropped or expired, a session went
 * offline or unsubscribed. After INJECT_BUSY, retry once it differs from
 * its value at the refusal (loop thread only). */
uint64_t broker_room_gen(const struct broker *b);

void broker_get_stats(const struct broker *b, struct broker_stats *out);
/* Log the stats at NOTICE level (SIGUSR1). */
void broker_log_stats(const struct broker *b);

#endif
