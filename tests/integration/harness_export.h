/* Integration tests of the rules engine with real sinks: the parts shared
 * by it_export_{sqlite,postgres,redis,kafka}.c and it_rules_config.c.
 *
 * A sink test describes its sink once (struct ex_sink: the YAML of its
 * connector and rules, how to read the sink back with the sink's own client
 * library, how to take it away and bring it back) and runs the same
 * scenarios against it:
 *   ex_scenario_messages  4 clients x 250 QoS 1 messages: every one arrives
 *                         once, with its payload bytes, topic, client id,
 *                         QoS and message id, in per-client order; the rule
 *                         counters add up.
 *   ex_scenario_status    connect, clean disconnect, dropped TCP, takeover:
 *                         the events (fields of LANDSCAPE b.1 + seq) and the
 *                         state row/hash afterwards.
 *   ex_scenario_outage    the sink goes away mid-stream and comes back while
 *                         publishers keep getting PUBACKs: nothing lost,
 *                         order per client kept.
 *   ex_scenario_kill9     mqbridge killed with -9 mid-stream and restarted:
 *                         every PUBACKed message arrives (duplicates only
 *                         where the sink cannot dedup).
 *
 * Every message is published on its own topic SensorData/pub<c>/<seq> by
 * client GID_sensors@@@pub<c>; its payload is derived from (c, seq) and
 * holds binary bytes, so a message read back from a sink identifies itself
 * and its expected content. Message ids are taken from the broker's debug
 * line "<client>: PUBLISH <topic> qos=1 id=<16 hex>", written before the
 * PUBACK.
 *
 * The servers come from tests/services (MQB_PG_CONNINFO, MQB_REDIS_URL,
 * MQB_KAFKA_BROKERS, MQB_SERVICES_DIR); a test whose server is not given
 * fails saying how to start one. */
#ifndef MQB_IT_HARNESS_EXPORT_H
#define MQB_IT_HARNESS_EXPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../../common/buf.h"
#include "harness.h"

/* The instance every export test runs: managed naming, one parent topic,
 * one group. Rules: EX_RULE_MSGS (outbound SensorData) and EX_RULE_STATUS
 * (status GID_sensors), both to connector EX_CONNECTOR. */
#define EX_INSTANCE "{ naming: managed, parent_topics: [SensorData], groups: [GID_sensors] }"
#define EX_PARENT "SensorData"
#define EX_GROUP "GID_sensors"
#define EX_CONNECTOR "sink"
#define EX_RULE_MSGS "telemetry"
#define EX_RULE_STATUS "presence"
/* Short reconnect delays, so an outage ends quickly in the tests. */
#define EX_EXPORT_YAML "export: { retry_initial_ms: 100, retry_max_ms: 1000 }\n"

#define EX_CLIENTS_MAX 8
#define EX_SEQ_MAX 2048  /* messages per client and test */
#define EX_SINK_MS 30000 /* deadline for a sink to catch up */

/* ---- environment, services, names ---- */

/* getenv(name); fails the test, saying how to start the services, when it
 * is unset or empty. */
const char *ex_env(const char *name);
/* Run tests/services/ctl $MQB_SERVICES_DIR action service and require
 * exit 0. */
void ex_services_ctl(const char *action, const char *service);
/* Start the same in the background (for a stop while publishing goes on);
 * finish with ex_services_ctl_wait. */
void ex_services_ctl_spawn(struct it_proc *p, const char *action, const char *service);
void ex_services_ctl_wait(struct it_proc *p, const char *what);
/* A name unique to this process and call, of [a-z0-9_]: "<prefix>_<pid>_<n>". */
void ex_unique_name(char *out, size_t len, const char *prefix);
/* Wall clock in epoch milliseconds (event and message times). */
int64_t ex_wall_ms(void);

/* ---- the broker ---- */

/* it_broker_start with EX_INSTANCE and extra_yaml appended (connectors,
 * rules, export). */
void ex_broker_start(struct it_broker *b, const char *extra_yaml);
long ex_log_size(const struct it_broker *b);
/* Wait up to timeout_ms for a log line written after byte `from` that
 * holds a and (unless NULL) b2; copies it into line. true when found. */
bool ex_log_wait(const struct it_broker *b, long from, const char *a, const char *b2, char *line,
                 size_t len, int timeout_ms);

struct ex_rule_stats {
    uint64_t matched, exported, queued, dropped;
    char line[1024];
};
/* SIGUSR1, then the "stats: rule <name> " line it produced; fails the test
 * when none comes or a counter is missing. */
void ex_stats_rule(const struct it_broker *b, const char *rule, struct ex_rule_stats *out);
/* matched == exported + queued + dropped, no part larger than matched. */
bool ex_stats_add_up(const struct ex_rule_stats *st);
/* Poll the rule's counters until queued == 0, requiring on every reading
 * matched == exported + queued + dropped; at the end dropped == 0 and, when
 * want_matched >= 0, matched == exported == want_matched. */
void ex_stats_expect_settled(const struct it_broker *b, const char *rule, int64_t want_matched);
/* Poll until the connector's stats line says state=connected. */
void ex_stats_expect_connected(const struct it_broker *b, const char *connector);

/* ---- what a sink holds, read back ---- */

struct ex_msg {
    char *topic, *client_id, *msg_id;
    char *key; /* Kafka message key; NULL for other sinks */
    int qos;
    int64_t time_ms; /* 0 when the sink keeps no time */
    uint8_t *payload;
    size_t len;
};

struct ex_event {
    char *client_id, *event_type, *channel_id, *client_ip;
    char *body; /* the JSON document */
    char *key;  /* Kafka message key; NULL for other sinks */
    int64_t time_ms;
    uint64_t seq;
};

struct ex_state {
    bool found, online;
    char channel_id[64], client_ip[64], event_type[16];
    uint64_t seq;
    int64_t since;
};

struct ex_msgs {
    struct ex_msg *v;
    size_t n, cap;
};
struct ex_events {
    struct ex_event *v;
    size_t n, cap;
};

/* A new zeroed item at the end (fails the test when out of memory). */
struct ex_msg *ex_msgs_add(struct ex_msgs *l);
struct ex_event *ex_events_add(struct ex_events *l);
/* Free the items; the list may be reused. Accept a zeroed list. */
void ex_msgs_clear(struct ex_msgs *l);
void ex_events_clear(struct ex_events *l);
/* A NUL-terminated heap copy of n bytes (fails the test when out of memory);
 * NULL p gives NULL. */
char *ex_strndup(const void *p, size_t n);

/* The value of "key" in a flat JSON object (a status event body): a
 * string, copied without its quotes, or a number. false when absent. */
bool ex_json_field(const char *json, const char *key, char *out, size_t len);

/* ---- a sink under test ---- */

struct ex_sink {
    const char *type; /* "sqlite", "postgres", "redis", "kafka" */
    /* Holds each message at most once even after retries and crashes
     * (PRIMARY KEY msg_id); Kafka and Redis streams may repeat. */
    bool dedups;
    /* tests/services name of its server ("pg", "redis", "kafka"): the
     * outage is `ctl stop` / `ctl start`. NULL: outage_begin/outage_end. */
    const char *service;
    /* Append the `connectors:` and `rules:` sections: connector
     * EX_CONNECTOR, rules EX_RULE_MSGS and EX_RULE_STATUS. */
    void (*write_yaml)(struct ex_sink *s, struct buf *yaml);
    /* Everything the sink holds now, in the sink's order. The lists belong
     * to the sink (valid until the next call). A sink that cannot be
     * reached right now returns what it had. */
    const struct ex_msgs *(*read_msgs)(struct ex_sink *s);
    const struct ex_events *(*read_events)(struct ex_sink *s);
    /* The state row/hash of a client; NULL when the sink keeps none
     * (Kafka): the scenario then derives the state from the events. */
    void (*read_state)(struct ex_sink *s, const char *client_id, struct ex_state *out);
    /* Without a service: make the sink refuse writes / accept them again.
     * outage_holds_back: the sink can be read during the outage, and must
     * then show nothing published during it. */
    void (*outage_begin)(struct ex_sink *s);
    void (*outage_end)(struct ex_sink *s);
    bool outage_holds_back;
    void *ctx;
};

void ex_scenario_messages(struct ex_sink *s);
void ex_scenario_status(struct ex_sink *s);
void ex_scenario_outage(struct ex_sink *s);
void ex_scenario_kill9(struct ex_sink *s);

/* ---- publishers ---- */

enum { EX_UNSENT = 0, EX_SENT = 1, EX_ACKED = 2 };

struct ex_pub {
    const struct it_broker *b;
    unsigned clients;
    struct it_raw raw[EX_CLIENTS_MAX];
    uint32_t next[EX_CLIENTS_MAX]; /* next seq of each client */
    uint8_t *state;                /* [client * EX_SEQ_MAX + seq]: EX_* */
    char (*ids)[17];               /* message ids from the broker log */
    int64_t wall_start;
};

/* Connect clients GID_sensors@@@pub0.. (clean session). */
void ex_pub_open(struct ex_pub *p, const struct it_broker *b, unsigned clients);
/* Connect them again (after a broker restart). */
void ex_pub_reconnect(struct ex_pub *p);
/* Publish `count` more QoS 1 messages per client, `window` in flight per
 * client, interleaving the clients; every PUBACK must come. */
void ex_pub_run(struct ex_pub *p, unsigned count, unsigned window);
/* Like ex_pub_run, but once kill_after PUBACKs came in this call, send one
 * more window per client and SIGKILL the broker; then collect the PUBACKs
 * that had been sent before it died. */
void ex_pub_run_kill(struct ex_pub *p, struct it_broker *b, unsigned count, unsigned window,
                     unsigned kill_after);
/* Clean goodbye of every client, free everything. */
void ex_pub_close(struct ex_pub *p);
/* Read the message ids of every published message from the broker log. */
void ex_pub_load_ids(struct ex_pub *p);
unsigned ex_pub_acked(const struct ex_pub *p);

/* Check what a sink holds against the messages with seq in [lo, hi) of
 * every client: returns 1 when each PUBACKed one is there, 0 while some
 * are missing; fails the test at once on a wrong message (content, message
 * id, an unexpected one, order per client, a duplicate when no_dups).
 * *missing (may be NULL) gets the count still missing. */
int ex_msgs_check(struct ex_pub *p, const struct ex_msgs *got, uint32_t lo, uint32_t hi,
                  bool no_dups, unsigned *missing);
/* Poll read() until ex_msgs_check returns 1; fails the test after
 * EX_SINK_MS. Returns the count of duplicates seen. */
size_t ex_msgs_wait(struct ex_pub *p, const struct ex_msgs *(*read)(void *ctx), void *ctx,
                    uint32_t lo, uint32_t hi, bool no_dups);

/* ---- the SQLite sink file, read with sqlite3 ---- */

struct ex_sqlite;
/* Reader of the database at path (opened when it exists). */
struct ex_sqlite *ex_sqlite_new(const char *path);
void ex_sqlite_free(struct ex_sqlite *q); /* accepts NULL */
/* Rows of a default-schema message table (rowid order), of an events table
 * (seq order), the state row of a client. A missing file or table reads as
 * empty. */
const struct ex_msgs *ex_sqlite_msgs(struct ex_sqlite *q, const char *table);
const struct ex_events *ex_sqlite_events(struct ex_sqlite *q, const char *table);
void ex_sqlite_state(struct ex_sqlite *q, const char *table, const char *client_id,
                     struct ex_state *out);
/* BEGIN EXCLUSIVE on the file (waiting for the sink's transaction): the
 * sink cannot write until ex_sqlite_unlock (COMMIT). */
void ex_sqlite_lock(struct ex_sqlite *q);
void ex_sqlite_unlock(struct ex_sqlite *q);

#endif
