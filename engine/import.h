/* The importer: inbound rules, from a source (Kafka, Redis, PostgreSQL) to
 * MQTT clients.
 *
 * Each enabled inbound rule has one thread that fetches batches from its
 * source in order and hands them to the broker loop. The loop validates
 * every record (QoS, subtopic and P2P target within the naming rules,
 * payload size) and publishes it with broker_inject(); a malformed record is
 * skipped, logged and counted. Once the broker's store has committed the
 * iteration that published the batch (the on_flush hook), the thread
 * acknowledges the whole batch at the source (Kafka offsets commit, Redis
 * XACK, outbox rows deleted) and fetches the next one. A crash before the
 * acknowledgement means the source delivers the batch again: at least once,
 * never a skip. The thread reconnects with backoff while the source is
 * down; the broker serves MQTT meanwhile. */
#ifndef MQB_IMPORT_H
#define MQB_IMPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

#include "../broker/broker.h"
#include "export.h"

struct importer;

/* Starts one thread per enabled inbound rule of the exporter's current
 * rules (the exporter owns the connectors and the rule sets). */
int importer_new(uv_loop_t *loop, struct broker *b, struct exporter *x,
                 const struct export_settings *settings, struct importer **out, char *err,
                 size_t errlen);
/* After a rules reload: stop the threads of rules that went away or
 * changed, start new ones. */
void importer_rules_changed(struct importer *im);
/* From the broker's on_flush hook: batches published in this iteration are
 * committed; let their threads acknowledge them. */
void importer_on_flush(struct importer *im);
/* Stop and join the threads (batches not yet acknowledged are fetched again
 * at the next start). Blocks for at most the fetch timeout. */
void importer_stop(struct importer *im);
void importer_free(struct importer *im); /* accepts NULL */
void importer_log_stats(const struct importer *im);

#endif
