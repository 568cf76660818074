/* Defaults of struct broker_config. The instance config loader
 * (engine/config.c) declares the same values in its schema table; the
 * config unit test checks that the two agree. */
#include <stdlib.h>
#include <string.h>

#include "broker.h"

void broker_config_defaults(struct broker_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->listeners[0].host = strdup("0.0.0.0"); /* NULL when out of memory */
    cfg->listeners[0].port = 1883;
    cfg->listener_count = 1;
    cfg->storage_dir = strdup("./data");
    cfg->sync = STORE_SYNC_NORMAL;
    cfg->limits.max_packet_size = 268435460;
    cfg->limits.max_inflight = 20;
    cfg->limits.max_queued = 1000;
    cfg->limits.max_connections = 0;
    cfg->limits.max_keepalive = 0;
}

/* Frees every listener slot, not only the first listener_count: a
 * half-built config may hold hosts past the count. Slots never written
 * must be NULL (as after broker_config_defaults or zero initialisation).
 * Leaves cfg zeroed. Accepts NULL. */
void broker_config_free(struct broker_config *cfg)
{
    if (!cfg)
        return;
    for (size_t i = 0; i < BROKER_MAX_LISTENERS; i++)
        free(cfg->listeners[i].host);
    free(cfg->storage_dir);
    memset(cfg, 0, sizeof *cfg);
}
