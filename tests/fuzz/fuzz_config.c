/* libFuzzer target: the instance configuration loader. Any input must
 * either load into a config that satisfies the schema's invariants or fail
 * with a message; nothing may leak either way (run under ASan). */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../../engine/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Settings trees point at the config's file name and hold either a value
 * or a nested map per key. */
static void check_kvmap(const struct instance_config *cfg, const struct kvmap *m, int depth)
{
    if (!m || m->file != cfg->source || m->line < 1 || m->col < 1 || depth > 32)
        __builtin_trap();
    for (unsigned i = 0; i < m->count; i++) {
        const struct kv *item = &m->items[i];
        if (!item->key || !!item->value == !!item->map || item->file != cfg->source)
            __builtin_trap();
        if (item->map)
            check_kvmap(cfg, item->map, depth + 1);
    }
}

static void check_rules_sections(const struct instance_config *cfg)
{
    const struct export_settings *e = &cfg->export;
    if (!cfg->base_dir || strcmp(cfg->base_dir, ".") != 0)
        __builtin_trap();
    for (unsigned i = 0; i < cfg->connector_count; i++) {
        const struct connector_decl *d = &cfg->connectors[i];
        if (!d->name || !d->type || !*d->type || kv_find(d->settings, "type"))
            __builtin_trap();
        check_kvmap(cfg, d->settings, 0);
        for (unsigned j = 0; j < i; j++)
            if (!strcmp(cfg->connectors[j].name, d->name))
                __builtin_trap();
    }
    for (unsigned i = 0; i < cfg->rules.count; i++)
        check_kvmap(cfg, cfg->rules.items[i], 0);
    for (unsigned i = 0; i < cfg->rule_file_count; i++)
        if (!cfg->rule_files[i] || !*cfg->rule_files[i])
            __builtin_trap();
    if (e->memory_queue < 1 || e->memory_queue > 100000000 || e->spool_max < 1 ||
        e->spool_max > 1000000000000ULL || e->batch_max < 1 || e->batch_max > 100000 ||
        e->retry_initial_ms < 1 || e->retry_max_ms < e->retry_initial_ms ||
        e->retry_max_ms > 86400000 || e->drain_timeout_ms > 600000 ||
        (e->overflow != OVERFLOW_DROP_OLDEST && e->overflow != OVERFLOW_DROP_NEWEST))
        __builtin_trap();
}

static void check_loaded(const struct instance_config *cfg)
{
    const struct broker_config *b = &cfg->broker;
    if (!cfg->source || !cfg->instance_id || !b->storage_dir || !*b->storage_dir)
        __builtin_trap();
    if (b->listener_count < 1 || b->listener_count > BROKER_MAX_LISTENERS)
        __builtin_trap();
    for (unsigned i = 0; i < b->listener_count; i++)
        if (!b->listeners[i].host || b->listeners[i].port == 0)
            __builtin_trap();
    if (b->limits.max_inflight == 0 || b->limits.max_packet_size < 16 ||
        b->limits.max_packet_size > 268435460)
        __builtin_trap();
    check_rules_sections(cfg);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct instance_config cfg;
    char err[256];
    if (config_load_string((const char *)data, size, "fuzz.yaml", &cfg, err, sizeof err) == 0)
        check_loaded(&cfg);
    else if (strncmp(err, "fuzz.yaml", 9) != 0) /* every failure says where */
        __builtin_trap();
    config_free(&cfg);
    return 0;
}
