/* The exporter: from the broker's hooks to the sinks.
 *
 * Delivery guarantee (docs/ARCHITECTURE.md "Export"): a record that must not
 * be lost (a QoS >= 1 message matched by an outbound rule, every status
 * event) is written to the spool inside the loop iteration that accepted
 * it; the broker's on_flush hook commits the spool before any PUBACK of that
 * iteration leaves. So a PUBACKed message is exported even across kill -9.
 * Each connector has one thread and one ordered stream: records are exported
 * in the order they were matched (so per client in order), retried from the
 * first unacknowledged one with exponential backoff while the sink is down,
 * and deleted from the spool when the sink acknowledged them. At most
 * `memory_queue` records per connector are held in memory; past that they
 * wait only in the spool (backlog) and are loaded back in order as the sink
 * drains. Past `spool_max` backlog records the overflow policy applies
 * (drop_oldest | drop_newest), counted as dropped.
 *
 * Rules are swapped atomically by exporter_set_rules (SIGHUP): records
 * already queued keep the rule (and target) they were matched with; the old
 * rule set is freed when none of its records is left. */
#ifndef MQB_EXPORT_H
#define MQB_EXPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "../broker/broker.h"
#include "../common/kv.h"
#include "../connectors/connector.h"
#include "../rules/rules.h"

enum overflow_policy { OVERFLOW_DROP_OLDEST = 0, OVERFLOW_DROP_NEWEST = 1 };

struct export_settings {
    uint32_t memory_queue;     /* records in memory per connector; 100000 */
    uint64_t spool_max;        /* backlog records per connector; 10000000 */
    int overflow;              /* enum overflow_policy; drop_oldest */
    uint32_t batch_max;        /* records per export call; 1000 */
    uint32_t retry_initial_ms; /* first reconnect delay; 200 */
    uint32_t retry_max_ms;     /* longest reconnect delay; 30000 */
    uint32_t drain_timeout_ms; /* at shutdown, time given to empty the queues; 5000 */
};

void export_settings_defaults(struct export_settings *s);

/* A connector declared in the instance file. */
struct connector_decl {
    char *name;
    char *type;
    struct kvmap *settings; /* without `type` */
};

/* What rules are checked against (from the instance config). */
struct export_resources {
    bool check_declared;
    char *const *parent_topics;
    unsigned parent_topic_count;
    char *const *groups;
    unsigned group_count;
    unsigned max_rules;
};

struct exporter;

/* Create the connectors (validating their settings) and open the spool
 * (spool_path NULL: in memory). No thread runs yet. */
int exporter_new(uv_loop_t *loop, const struct export_settings *settings,
                 const struct connector_decl *decls, unsigned ndecls, const char *spool_path,
                 enum store_sync sync, struct exporter **out, char *err, size_t errlen);
/* Validate rule mappings (items) and, when valid, make them the current
 * rules. On error the current rules stay and err says why. */
int exporter_set_rules(struct exporter *x, const struct kvlist *items,
                       const struct export_resources *res, char *err, size_t errlen);
/* Only validate (for --check-config): build and free. */
int exporter_check_rules(struct exporter *x, const struct kvlist *items,
                         const struct export_resources *res, char *err, size_t errlen);
/* Recover the spool and start the connector threads. */
int exporter_start(struct exporter *x, char *err, size_t errlen);

/* The broker hooks (broker loop). */
void exporter_on_message(void *x, const struct message *m, const char *client_id);
void exporter_on_client_event(void *x, const struct client_event *ev);
void exporter_on_flush(void *x);

/* For the importer: the current rules, held (not freed by a reload) until
 * released; NULL when there are none. */
const struct rule_set *exporter_hold_rules(struct exporter *x, void **hold);
void exporter_release_rules(struct exporter *x, void *hold);
/* The connector a rule names. 0, or -1 when there is none. */
int exporter_connector(const struct exporter *x, const char *name, const struct connector_ops **ops,
                       struct connector **impl);

/* Give the threads drain_timeout_ms to export what is queued, then stop
 * and join them; what is left stays in the spool. Blocks. */
void exporter_stop(struct exporter *x);
void exporter_free(struct exporter *x); /* accepts NULL */
void exporter_log_stats(const struct exporter *x);

#endif
