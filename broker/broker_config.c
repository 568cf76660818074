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
    cfg->limits.max_message_size = 65536;
    cfg->limits.max_subscriptions_per_client = 30;
    cfg->limits.max_wildcard_subscriptions_per_parent = 100;
    cfg->limits.max_parent_topics = 25;
    cfg->limits.max_rules = 100;
    cfg->limits.offline_message_ttl = 259200; /* 3 days */
    cfg->limits.max_offline_messages = 1000000;
    cfg->naming_mode = NAMING_MANAGED;
    cfg->on_duplicate_client_id = DUPLICATE_TAKEOVER;
    /* No parent topics or groups declared: NULL arrays, zero counts. */
    cfg->naming.limits.max_topic_length = 64;
    cfg->naming.limits.max_topic_levels = 3;
    cfg->naming.limits.max_client_id_length = 64;
}

/* Free an array of count heap strings (NULL entries allowed) and the array. */
static void strings_free(char **v, unsigned count)
{
    for (unsigned i = 0; i < count; i++)
        free(v[i]);
    free(v);
}

/* Frees every listener slot, not only the first listener_count: a
 * half-built config may hold hosts past the count. Slots never written
 * must be NULL (as after broker_config_defaults or zero initialisation).
 * The declared parent topics and groups are freed up to their counts.
 * Leaves cfg zeroed. Accepts NULL. */
void broker_config_free(struct broker_config *cfg)
{
    if (!cfg)
        return;
    for (size_t i = 0; i < BROKER_MAX_LISTENERS; i++)
        free(cfg->listeners[i].host);
    free(cfg->storage_dir);
    strings_free(cfg->naming.parent_topics, cfg->naming.parent_topic_count);
    strings_free(cfg->naming.groups, cfg->naming.group_count);
    memset(cfg, 0, sizeof *cfg);
}
