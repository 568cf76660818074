/* The connector interface: one external system (Kafka, Redis, PostgreSQL,
 * SQLite) behind one table of functions. Each connector file keeps
 * everything static except its `const struct connector_ops xxx_connector`
 * (registry.c lists them). Connector settings and rule options are declared
 * as data (struct kv_key schemas) and checked with kv_check().
 *
 * Threads: create/destroy/compile/release run on the engine's main loop
 * (configuration time, no I/O). open/close/export run on the connector's
 * own thread, which the engine owns: they may block (network I/O), and the
 * engine does the retrying (with backoff), the batching and the ordering.
 *
 * Delivery contract: export() writes records in order and reports how many
 * of them, from the first, the sink has durably acknowledged (Kafka
 * delivery report with acks=all, Redis reply, PostgreSQL commit, SQLite
 * commit). Records after that prefix are offered again, so sinks must
 * tolerate a repeat (idempotent writes where the sink allows it: Kafka's
 * idempotent producer, `ON CONFLICT DO NOTHING` on the message id, ...). */
#ifndef MQB_CONNECTOR_H
#define MQB_CONNECTOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../common/kv.h"
#include "../rules/rules.h"
#include "../rules/template.h"

enum record_kind { RECORD_MESSAGE = 1, RECORD_STATUS = 2 };

/* One export: an outbound message or a client status event. Created and
 * freed on the engine's loop; read-only for the connector thread. */
struct export_record {
    struct export_record *next; /* the engine's queue link */
    uint64_t seqno;             /* per-connector order and spool key */
    enum record_kind kind;
    const struct rule *rule; /* rule->compiled is this connector's target */
    uint64_t msg_id;         /* message id; for status: the event's seq */
    int64_t time_ms;         /* when the message was accepted / the event happened */
    uint8_t qos;             /* message QoS (0 for status) */
    const char *client_id;
    const char *topic;      /* message topic; NULL for status */
    const uint8_t *payload; /* message payload; for status: the JSON event */
    uint32_t payload_len;
    /* status events only (NULL for messages) */
    const char *event_type; /* "connect" | "disconnect" | "tcpclean" */
    const char *channel_id; /* 32 hex digits, unique per TCP connection */
    const char *client_ip;  /* "ip:port" */
    /* The engine's bookkeeping; connectors neither read nor write these. */
    void *engine_ref;
    uint16_t attempts;
    uint8_t outcome;
    bool spooled;
};

/* What rec's templates (topic, key, column values) render from: its client
 * ID, topic, QoS, message id, time and payload, pointing into rec (valid
 * while rec is). A NULL client ID or topic (status events have no topic)
 * stays NULL, which template_render renders as empty. */
struct template_input export_record_input(const struct export_record *rec);

enum connector_rc {
    CONNECTOR_OK = 0,
    CONNECTOR_RETRY = -1,  /* transient (connection lost, timeout, sink
                              restarting): the engine reconnects with backoff
                              and offers recs[acked..] again */
    CONNECTOR_REJECT = -2, /* recs[acked] is refused for good (e.g. too large
                              for the sink, constraint violation): the engine
                              drops it, counted, and goes on with the next */
};

/* One record read from a source for an inbound rule (Kafka message, Redis
 * stream entry or Pub/Sub message, PostgreSQL outbox row). The connector
 * fills the raw fields; the engine validates them (one place for the
 * rules) and publishes. Made by the connector with import_record_new(),
 * freed by the engine with import_record_free(). */
struct import_record {
    struct import_record *next; /* the engine's queue link */
    /* Where it came from, for acknowledging and logs: Kafka partition and
     * offset; Redis stream entry id (in `id`); PostgreSQL row id. */
    int32_t partition;
    int64_t offset;
    char *id;         /* textual id (Redis "1700000000000-0", PG "42"); may be NULL */
    char *sub_topic;  /* mqttSecondTopic / field / column; NULL when absent */
    char *qos;        /* qoslevel as text ("0", "1", "2"); NULL when absent (= 1) */
    char *client_id;  /* P2P target (header clientId / field / column); NULL when absent */
    uint8_t *payload; /* Kafka value / `payload` field / `payload` column, byte for byte */
    uint32_t payload_len;
    /* The engine's bookkeeping. */
    uint8_t outcome;
    char reason[96];
};

/* One allocation for the record and copies of everything; any pointer may
 * be NULL. */
struct import_record *import_record_new(const char *id, const char *sub_topic, const char *qos,
                                        const char *client_id, const void *payload,
                                        uint32_t payload_len);
void import_record_free(struct import_record *rec);

enum import_outcome {
    IMPORT_PENDING = 0,
    IMPORT_PUBLISHED = 1, /* accepted by the broker: acknowledge at the source */
    IMPORT_SKIPPED = 2,   /* malformed: acknowledge (and dead-letter where possible) */
};

struct connector; /* each connector's own state */
struct source;    /* a connector's reading state for one inbound rule */

struct connector_ops {
    const char *type;              /* "kafka", "redis", "postgres", "sqlite" */
    const struct kv_key *settings; /* schema of the settings in `connectors:` */

    /* Main loop, configuration time. */
    int (*create)(const char *name, const struct kvmap *settings, struct connector **out, char *err,
                  size_t errlen);
    void (*destroy)(struct connector *c); /* accepts NULL */
    /* Validate and compile a rule's options (r->options; for inbound rules
     * also r->target_options) into what export/import need. Errors name
     * file:line:col via kv_error. */
    int (*compile)(struct connector *c, const struct rule *r, void **compiled, char *err,
                   size_t errlen);
    void (*release)(struct connector *c, void *compiled);

    /* Connector thread. open connects (and creates tables when a rule asks
     * for it: every compiled target of the current rule set is reachable
     * through the records, so table creation happens lazily on first use of
     * a target, or in open for targets passed via prepare below). */
    int (*open)(struct connector *c, char *err, size_t errlen);
    void (*close)(struct connector *c);
    /* Write recs[0..n) in order. Sets *acked to the number acknowledged from
     * the start, returns CONNECTOR_OK when *acked == n, else RETRY or
     * REJECT as above, with the reason in err. */
    int (*export)(struct connector *c, struct export_record *const *recs, size_t n, size_t *acked,
                  char *err, size_t errlen);

    /* Inbound (NULL when the connector cannot be a source). All on the
     * rule's own import thread. A source delivers records in order and
     * redelivers, after a crash or reconnect, everything not acknowledged
     * (at least once). */
    /* Connect and subscribe (Kafka consumer group, Redis XGROUP CREATE
     * MKSTREAM, PostgreSQL LISTEN + create_table). RETRY on failure. */
    int (*source_open)(struct connector *c, const struct rule *r, struct source **out, char *err,
                       size_t errlen);
    void (*source_close)(struct source *s); /* accepts NULL */
    /* Up to max records, waiting at most timeout_ms for the first. *n = 0 on
     * timeout. RETRY when the connection is lost. */
    int (*source_fetch)(struct source *s, struct import_record **recs, size_t max, size_t *n,
                        int timeout_ms, char *err, size_t errlen);
    /* Acknowledge recs[0..n) (every one PUBLISHED or SKIPPED, in fetch
     * order): commit offsets / XACK / delete or mark rows; SKIPPED records
     * also go to the dead-letter stream or table when the source has one
     * (rec->reason says why). RETRY when it could not: they are redelivered
     * later, which is the at-least-once case. */
    int (*source_ack)(struct source *s, struct import_record *const *recs, size_t n, char *err,
                      size_t errlen);
    /* Backlog: Kafka consumer lag, Redis pending + unread, outbox rows. -1
     * when unknown. */
    int64_t (*source_lag)(struct source *s);
};

/* registry.c */
const struct connector_ops *connector_find(const char *type);
/* "kafka, redis, postgres, sqlite" for messages. */
const char *connector_types(void);

#endif
