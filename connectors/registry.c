/* The connector types this build knows. The one place listing them. */
#include <string.h>

#include "connector.h"

extern const struct connector_ops kafka_connector;
extern const struct connector_ops redis_connector;
extern const struct connector_ops postgres_connector;
extern const struct connector_ops sqlite_connector;

static const struct connector_ops *const registry[] = {
    &kafka_connector,
    &redis_connector,
    &postgres_connector,
    &sqlite_connector,
};

const struct connector_ops *connector_find(const char *type)
{
    for (size_t i = 0; i < sizeof registry / sizeof registry[0]; i++)
        if (strcmp(registry[i]->type, type) == 0)
            return registry[i];
    return NULL;
}

const char *connector_types(void)
{
    return "kafka, redis, postgres, sqlite";
}
