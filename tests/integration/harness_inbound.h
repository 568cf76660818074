/* Integration tests of inbound rules with real sources: the parts shared by
 * it_inbound_{kafka,redis,postgres}.c.
 *
 * A source test describes its source once (struct in_source: the YAML of
 * its connector and of the rule's `source`, how to add records with the
 * server's own client library, how to read its dead letters back) and runs
 * the same scenarios against it, each on names of its own (topic, stream,
 * table) and against the real mqbridge binary:
 *   in_scenario_offline    300 records added while a persistent subscriber
 *                          (cleanSession=0, Commands/# at QoS 1) is offline
 *                          and mqbridge is stopped all arrive once, in
 *                          order, byte for byte, after both come back;
 *   in_scenario_online     records added while running reach the online
 *                          subscribers on Commands/<subtopic> at the QoS of
 *                          their qoslevel (1 when absent), and a record with
 *                          clientId goes to that client only, without a
 *                          subscription, on Commands/p2p/<clientId>;
 *   in_scenario_kill9      mqbridge killed with -9 while records flow to a
 *                          persistent subscriber, records added while it is
 *                          down, restarted: every record arrives (repeats
 *                          are allowed, counted and printed);
 *   in_scenario_malformed  bad qoslevel, a subtopic over the level limit or
 *                          with bad characters, a payload over 64 KB, a P2P
 *                          target of an undeclared group: each is skipped
 *                          and counted by reason (SIGUSR1 stats), the good
 *                          records around them arrive (one of exactly
 *                          64 KB), and each skipped record is in the
 *                          source's dead letters once, with its reason;
 *   in_scenario_source_down the source's server is stopped before mqbridge
 *                          starts: MQTT is served meanwhile; once the
 *                          server is started again, records flow.
 *   in_scenario_slow_subscriber  flow control: 20,000 records added at once
 *                          while two QoS 1 subscribers of Commands/# are
 *                          online, with limits max_inflight 5 and
 *                          max_queued 20: a persistent one (raw client)
 *                          that acknowledges only a full window at a time
 *                          and a libmosquitto one. Each gets every record,
 *                          first arrivals in order (repeats allowed,
 *                          counted); the broker drops nothing, the rule
 *                          waited for room (waits, inject_busy > 0), and
 *                          the source is drained: lag 0 and, where the
 *                          source can tell (unacked), nothing unacknowledged;
 *   in_scenario_stuck_subscriber  a subscriber that never acknowledges holds
 *                          the rule after its window and queue (25) are
 *                          full: a warning names it, the other subscriber
 *                          gets those 25 only, waits/blocked_ms show it;
 *                          once it disconnects the other gets all 200.
 *   in_scenario_reload     5,000 records to the slow subscriber while the
 *                          rules are reloaded (SIGHUP) 4 times: the loop
 *                          answers MQTT at once after each (the old
 *                          readers stop on their own), every record
 *                          arrives, first arrivals in order, the source is
 *                          drained and the counters survive the reloads.
 *   in_scenario_source_restart  4,000 records to the slow subscriber; the
 *                          source's server is stopped mid-stream (with a
 *                          batch in delivery and, for a source read ahead,
 *                          the next one queued behind it) and started
 *                          again once the rule noticed (a failed
 *                          acknowledgement or fetch); 1,000 more are added
 *                          then: every record arrives, first arrivals in
 *                          order (repeats allowed, counted), the rule
 *                          reconnected and the source is drained.
 *
 * Only in_scenario_malformed gives the rule a dead-letter target (Kafka and
 * Redis sources are then not read ahead: see "Import" in
 * docs/ARCHITECTURE.md); the other scenarios run the way most rules do.
 *
 * Every record's payload names the scenario and the record's sequence
 * number and holds bytes that need care (NUL, 0xff, a quote, a newline),
 * so a delivered message identifies itself.
 *
 * The servers come from tests/services (MQB_KAFKA_BROKERS, MQB_REDIS_URL,
 * MQB_PG_CONNINFO, MQB_SERVICES_DIR); a test whose server is not given
 * fails saying how to start one (ex_env). */
#ifndef MQB_IT_HARNESS_INBOUND_H
#define MQB_IT_HARNESS_INBOUND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../../common/buf.h"
#include "harness.h"

/* The instance every inbound test runs: managed naming, one parent topic,
 * one group, the managed service's 64 KB message limit. */
#define IN_INSTANCE "{ naming: managed, parent_topics: [Commands], groups: [GID_dev] }"
#define IN_LIMITS "max_message_size: 65536"
#define IN_PARENT "Commands"
#define IN_GROUP "GID_dev"
#define IN_CONNECTOR "src"
#define IN_RULE "cmds"
/* Short reconnect delays, so a source outage ends quickly in the tests. */
#define IN_EXPORT_YAML "export: { retry_initial_ms: 100, retry_max_ms: 1000 }\n"

#define IN_FLOW_MS 60000  /* deadline for records to reach the subscribers */
#define IN_PAYLOAD_MAX 96 /* the payloads of in_payload */

/* One record to add to a source. NULL fields are absent (no header, no
 * field, SQL NULL). */
struct in_rec {
    const char *sub_topic; /* Kafka header / Redis field mqttSecondTopic; PG column topic */
    const char *qos;       /* qoslevel; PG column qos */
    const char *client_id; /* clientId; PG column client_id */
    const uint8_t *payload;
    size_t len;
};

/* A dead letter read back from the source: the skipped record's payload
 * and the reason given. */
struct in_dead {
    uint8_t *payload;
    size_t len;
    char *reason;
};

struct in_deads {
    struct in_dead *v;
    size_t n, cap;
};

/* Append a dead letter (copies of payload and reason; reason may be NULL). */
void in_deads_add(struct in_deads *l, const void *payload, size_t len, const char *reason);
/* Free the items; the list may be reused. Accepts a zeroed list. */
void in_deads_clear(struct in_deads *l);

struct in_source {
    const char *type;    /* "kafka", "redis", "postgres" */
    const char *service; /* tests/services name: "kafka", "redis", "pg" */
    /* mqbridge reads this source one batch ahead when the rule has no
     * dead-letter target (checked at each start). */
    bool reads_ahead;
    /* The scenario wants the rule's dead-letter target (write_source adds
     * it); set by in_scenario_malformed, cleared for every other one. A
     * source that always has one (PostgreSQL) may ignore it. */
    bool dead_letter;
    /* New names (topic, consumer group, stream, table) for one scenario;
     * the server is up. ordered: the scenario needs one order over all
     * records (a Kafka topic of one partition). */
    void (*prepare)(struct in_source *s, bool ordered);
    /* Append the inside of connector IN_CONNECTOR's mapping ("type: kafka,
     * brokers: ...") and the inside of the rule's source mapping after
     * "connector: src, " ("topic: ..., group: ..."). */
    void (*write_connector)(struct in_source *s, struct buf *yaml);
    void (*write_source)(struct in_source *s, struct buf *yaml);
    /* Add recs[0..n) in this order; returns once the server has them all. */
    void (*produce)(struct in_source *s, const struct in_rec *recs, size_t n);
    /* The dead letters of the current scenario so far (cleared first);
     * NULL when the source keeps none. */
    void (*read_dead)(struct in_source *s, struct in_deads *out);
    /* Records of the current scenario the rule has not acknowledged, as
     * the source's server tells (Kafka: end offset - the group's committed
     * offset; Redis: the group's pending entries and lag; PostgreSQL: rows
     * left in the outbox). NULL when the test cannot ask. */
    int64_t (*unacked)(struct in_source *s);
    void *ctx;
};

void in_scenario_offline(struct in_source *s);
void in_scenario_online(struct in_source *s);
void in_scenario_kill9(struct in_source *s);
void in_scenario_malformed(struct in_source *s);
void in_scenario_source_down(struct in_source *s);
void in_scenario_slow_subscriber(struct in_source *s);
void in_scenario_stuck_subscriber(struct in_source *s);
void in_scenario_reload(struct in_source *s);
void in_scenario_source_restart(struct in_source *s);

/* The payload of record seq of a scenario (tag: a word): text naming it,
 * then NUL, 0xff and other bytes that need care, then a tail whose length
 * varies with seq. Returns its length (at most IN_PAYLOAD_MAX). */
size_t in_payload(const char *tag, uint32_t seq, uint8_t *out, size_t cap);

#endif
