/* The rules engine's model: what a rule is, how a set of rules is built and
 * validated from settings trees (struct kvmap, see common/kv.h, produced by
 * rules_file_read() or by the instance-config loader), and the lookup index
 * the engine uses on the hot path. No I/O beyond reading rule files, no
 * threads.
 *
 * Rule shapes (YAML):
 *   - name: telemetry-to-kafka          # 1..64 of [A-Za-z0-9_.-], unique
 *     type: outbound                    # outbound | status | inbound
 *     enabled: true                     # optional, default true
 *     source: { topic: SensorData }     # outbound: a parent topic
 *     target: { connector: events-kafka, topic: sensor-telemetry, key: "${clientid}" }
 *   - name: sensors-status
 *     type: status
 *     source: { group: GID_sensors }    # status: a group ID
 *     target: { connector: main-pg, table: device_status, events_table: device_events }
 *   - name: commands-from-kafka
 *     type: inbound
 *     source: { connector: events-kafka, topic: device-commands, group: mqbridge-commands }
 *     target: { topic: Commands }       # inbound: a parent topic
 * The connector-specific keys (everything in target/source except
 * `connector`, and for inbound target except `topic`) are validated and
 * compiled by the connector through rules_context.compile.
 *
 * Limits (SEMANTICS.md "Rules"): at most max_rules rules; one rule of each
 * type per resource: one outbound and one inbound rule per parent topic, one
 * status rule per group. A violation names file:line:column and both rules:
 *   rules/b.yaml:3:5: rule 'b': a second outbound rule for parent topic
 *   'SensorData' (rule 'a' at rules/a.yaml:7:5 has it)  */
#ifndef MQB_RULES_H
#define MQB_RULES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../common/kv.h"

enum rule_type { RULE_OUTBOUND = 0, RULE_STATUS = 1, RULE_INBOUND = 2 };

struct rule {
    char *name;
    enum rule_type type;
    bool enabled;
    const char *file; /* position of the rule's mapping */
    int line, col;
    char *resource;  /* outbound: source parent topic; status: group ID;
                        inbound: target parent topic */
    char *connector; /* outbound/status: target.connector; inbound: source.connector */
    /* The connector-specific options: outbound/status: target without
     * `connector`; inbound: source without `connector`. Never NULL. */
    struct kvmap *options;
    /* Inbound only: target without `topic` (may be empty). Never NULL. */
    struct kvmap *target_options;
    void *compiled; /* what rules_context.compile produced */
    unsigned index; /* position in the set */
};

struct rule_set;

struct rules_context {
    /* Declared resources. With check_declared false (naming: mqtt) any
     * valid single-level topic is a parent topic and any group ID is
     * accepted. */
    bool check_declared;
    char *const *parent_topics;
    unsigned parent_topic_count;
    char *const *groups;
    unsigned group_count;
    unsigned max_rules; /* 100 */
    /* The declared connectors, owned by the engine. */
    void *connectors;
    /* The connector's type ("kafka", ...) or NULL when no such connector. */
    const char *(*connector_type)(void *connectors, const char *name);
    /* Validate and compile r->options (and r->target_options) for the rule's
     * connector; on error return -1 with "file:line:col: ..." in err (use
     * kv_error). *compiled is stored in r->compiled. May be NULL (nothing is
     * compiled, e.g. in unit tests). */
    int (*compile)(void *connectors, const struct rule *r, void **compiled, char *err,
                   size_t errlen);
    /* Release a compiled object; called when the set is freed. */
    void (*release)(void *connectors, const struct rule *r, void *compiled);
};

/* Read a rule file: a YAML mapping whose only key is `rules`, a sequence of
 * mappings; each is appended to out as a kvmap with positions (the file
 * name string is interned in files, which must outlive out). 0 or -1 with
 * "file:line:col: ..." in err. */
struct rules_files {
    char **names;
    unsigned count;
};
int rules_file_read(const char *path, struct rules_files *files, struct kvlist *out, char *err,
                    size_t errlen);
/* The same for text[0..len) already in memory; name stands for the file in
 * positions and is interned in files. On error out is as it was. */
int rules_text_read(const char *text, size_t len, const char *name, struct rules_files *files,
                    struct kvlist *out, char *err, size_t errlen);
void rules_files_clear(struct rules_files *files);

/* Build and validate a rule set from the rule mappings in items (in order:
 * inline rules of the instance file first, then each rule file). Checks
 * keys and types, names (unique), the declared resources, the connectors,
 * the limits above, and compiles each rule through ctx. On success *out is
 * a new set (free with rules_set_free); on error -1 and nothing leaks.
 * Disabled rules are validated and counted but not indexed. */
int rules_build(const struct kvlist *items, const struct rules_context *ctx, struct rule_set **out,
                char *err, size_t errlen);
/* Releases compiled objects through the context given to rules_build (which
 * must still be alive). Accepts NULL. */
void rules_set_free(struct rule_set *set);

unsigned rules_count(const struct rule_set *set);
const struct rule *rules_at(const struct rule_set *set, unsigned i);
/* The enabled outbound rule for the parent topic of topic[0..len) (its first
 * level), or NULL. O(1) average, no allocation: called on every publish. */
const struct rule *rules_outbound_for(const struct rule_set *set, const char *topic, size_t len);
/* The enabled status rule for a group ID (group[0..len)), or NULL. */
const struct rule *rules_status_for(const struct rule_set *set, const char *group, size_t len);

const char *rule_type_name(enum rule_type t);

#endif
