/* libFuzzer target: the instance configuration loader. Any input must
 * either load into a config that satisfies the schema's invariants or fail
 * with a message; nothing may leak either way (run under ASan). */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../../engine/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

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
