/* The importer: inbound rules, from a source (Kafka, Redis, PostgreSQL) to
 * MQTT clients.
 *
 * Each enabled inbound rule has one thread that fetches batches (up to
 * export.batch_max records) from its source in order and hands them to the
 * broker loop. The loop validates every record (QoS, subtopic and P2P
 * target within the naming rules, payload size) and publishes it with
 * broker_inject(INJECT_FLOW_CONTROL); a malformed record is skipped,
 * logged and counted. When a receiver of a record is online with a full
 * inflight window and queue, the broker refuses it (INJECT_BUSY, nothing
 * delivered): the loop stops at that record, keeps the rest of the batch
 * and goes on when broker_room_gen() moved (checked in on_flush; at least
 * once a second). Nothing is ever dropped for a slow client; a client that
 * never acknowledges stalls its rule, which is counted (waits, blocked_ms)
 * and logged naming the client. Once the broker's store has committed the
 * whole batch (the on_flush hook), the thread acknowledges it at the
 * source, once (Kafka offsets commit, Redis XACK, outbox rows deleted).
 * Kafka and Redis sources (without a dead-letter target) are read one
 * batch ahead: the thread fetches batch N+1 while the loop delivers N and
 * queues it behind N; the loop goes on with N+1 as soon as N is all
 * handled, while the thread acknowledges N once it is committed (two
 * batches at most, acknowledged in order); a PostgreSQL source fetches the
 * next batch only after the acknowledgement. A crash
 * before the acknowledgement means the source delivers the batch again: at
 * least once, never a skip. The thread reconnects with backoff while the
 * source is down; the broker serves MQTT meanwhile. See
 * docs/ARCHITECTURE.md, "Import". */
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
/* After a rules reload: tell the current threads to stop and return at
 * once (the loop does not wait for a source to close); each acknowledges
 * its committed records, exits and is joined from the loop when it has.
 * The threads of the new rules start once every old one has exited. A
 * rule's counters carry over by name. */
void importer_rules_changed(struct importer *im);
/* From the broker's on_flush hook: records published in this iteration
 * are committed, let their threads acknowledge them; rules waiting for
 * room retry when the broker says some may have appeared. */
void importer_on_flush(struct importer *im);
/* Stop and join the threads: each acknowledges the committed part of its
 * batch in delivery; the rest, and a batch fetched ahead, are fetched
 * again at the next start. Blocks for the fetch timeout plus that
 * acknowledgement and the source's close. */
void importer_stop(struct importer *im);
void importer_free(struct importer *im); /* accepts NULL */
void importer_log_stats(const struct importer *im);

#endif
