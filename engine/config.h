/* The instance configuration file (YAML):
 *
 *   instance: { id: mqb-local, naming: managed, on_duplicate_client_id: takeover,
 *               parent_topics: [SensorData], groups: [GID_sensors] }
 *   listeners:
 *     - { host: 0.0.0.0, port: 1883 }
 *   storage: { path: ./data, sync: normal }
 *   limits: { max_inflight: 20, max_queued: 1000, max_packet_size: 268435460,
 *             max_connections: 0, max_keepalive: 0, max_message_size: 65536, ... }
 *   log: { level: info }
 *   connectors:                       # name (1..64 of A-Z a-z 0-9 _ . -) -> settings
 *     events-kafka: { type: kafka, brokers: "127.0.0.1:9092" }
 *     local: { type: sqlite, path: ./data/export.db }
 *   rules:                            # inline rules (see rules/rules.h)
 *     - { name: t, type: outbound, source: { topic: SensorData },
 *         target: { connector: local, table: messages } }
 *   rule_files: [ "rules-*.yaml", extra/more.yaml ]  # relative to the instance file
 *   export: { memory_queue: 100000, spool_max: 10000000, overflow: drop_oldest,
 *             batch_max: 1000, retry_initial_ms: 200, retry_max_ms: 30000,
 *             drain_timeout_ms: 5000 }
 *
 * Every key is declared once in a schema table (config.c) that validation,
 * defaults and docs/CONFIG.md follow. Unknown keys, wrong types and values
 * out of range are errors naming file:line:column. The loader reads only
 * the instance text: connector settings and rules are kept as settings
 * trees (struct kvmap) and checked later by the exporter and rules_build,
 * and rule files are read by config_gather_rules. */
#ifndef MQB_CONFIG_H
#define MQB_CONFIG_H

#include <stddef.h>

#include "../broker/broker.h"
#include "../common/kv.h"
#include "../common/log.h"
#include "../rules/rules.h"
#include "export.h"

struct instance_config {
    char *source;      /* file name (or "<embedded>") for messages; every kv
                          position of connectors and rules points at it */
    char *base_dir;    /* directory of the instance file; "." for a string */
    char *instance_id; /* default "mqbridge" */
    enum log_level log_level;
    struct broker_config broker;
    /* connectors: in file order, names unique; settings without `type`
     * (never NULL). Whether type names a known connector is the
     * exporter's check. */
    struct connector_decl *connectors;
    unsigned connector_count;
    struct kvlist rules; /* inline rule mappings, unvalidated (rules_build) */
    char **rule_files;   /* patterns as written, unique */
    unsigned rule_file_count;
    struct export_settings export;
};

/* Parse YAML text. name is used in error messages ("file.yaml:3:5: ...").
 * On success fills *out (free with config_free) and returns 0; on failure
 * returns -1, writes the reason into err, and *out needs no freeing.
 * base_dir is ".". */
int config_load_string(const char *text, size_t len, const char *name, struct instance_config *out,
                       char *err, size_t errlen);
/* As config_load_string, with base_dir the directory part of path. */
int config_load_file(const char *path, struct instance_config *out, char *err, size_t errlen);
/* Accepts a zeroed or half-built config. */
void config_free(struct instance_config *cfg);

/* All rule mappings for rules_build, in order: copies of the inline rules,
 * then the rules of every file of rule_files, pattern by pattern. A pattern
 * with a glob character (* ? [) is expanded with glob(3) and its matches
 * read in byte order (directories and dot files are skipped; no match is
 * logged and fine); a pattern without one names a file that must exist.
 * Relative patterns are taken from cfg->base_dir. File names are interned
 * in files, which (like cfg, which the inline copies point into) must
 * outlive the items. Appends to out and returns 0; on failure returns -1
 * with "file:line:col: ..." (rules_file_read's message) in err, and out
 * holds what it held before the call. Reads files: called at start and on
 * SIGHUP, on the main loop. */
int config_gather_rules(const struct instance_config *cfg, struct kvlist *out,
                        struct rules_files *files, char *err, size_t errlen);

#endif
