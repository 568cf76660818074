/* The instance configuration file (YAML):
 *
 *   instance: { id: mqb-local }
 *   listeners:
 *     - { host: 0.0.0.0, port: 1883 }
 *   storage: { path: ./data, sync: normal }
 *   limits: { max_inflight: 20, max_queued: 1000, max_packet_size: 268435460,
 *             max_connections: 0, max_keepalive: 0 }
 *   log: { level: info }
 *
 * Every key is declared once in a schema table (config.c) that validation,
 * defaults and docs/CONFIG.md follow. Unknown keys, wrong types and values
 * out of range are errors naming file:line:column. */
#ifndef MQB_CONFIG_H
#define MQB_CONFIG_H

#include <stddef.h>

#include "../broker/broker.h"
#include "../common/log.h"

struct instance_config {
    char *source;      /* file name (or "<embedded>") for messages */
    char *instance_id; /* default "mqbridge" */
    enum log_level log_level;
    struct broker_config broker;
};

/* Parse YAML text. name is used in error messages ("file.yaml:3:5: ...").
 * On success fills *out (free with config_free) and returns 0; on failure
 * returns -1, writes the reason into err, and *out needs no freeing. */
int config_load_string(const char *text, size_t len, const char *name, struct instance_config *out,
                       char *err, size_t errlen);
int config_load_file(const char *path, struct instance_config *out, char *err, size_t errlen);
/* Accepts a zeroed or half-built config. */
void config_free(struct instance_config *cfg);

#endif
