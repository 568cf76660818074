/* The export spool: every record that must not be lost (QoS >= 1 messages,
 * status events, and anything that waits while a sink is behind) is written
 * here before the publisher's acknowledgement leaves, and deleted once its
 * sink acknowledged it. SQLite (WAL) in its own file next to the broker's
 * store; writes are grouped into one transaction per loop iteration and
 * committed by spool_commit() from the broker's on_flush hook.
 * Keys: (connector, seqno), seqno increasing per connector. */
#ifndef MQB_SPOOL_H
#define MQB_SPOOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../broker/store.h"
#include "../connectors/connector.h"

struct spool;

/* path NULL: an in-memory database (not durable; for storage-less runs). */
int spool_open(const char *path, enum store_sync sync, struct spool **out, char *err,
               size_t errlen);
void spool_close(struct spool *sp); /* commits; accepts NULL */
int spool_commit(struct spool *sp);

/* Store rec under (connector, rec->seqno) with the rule's name and the
 * generation it was made in. */
int spool_put(struct spool *sp, const char *connector, const struct export_record *rec,
              const char *rule_name, uint64_t generation);
/* Delete every record of connector with seqno <= upto. */
int spool_ack(struct spool *sp, const char *connector, uint64_t upto);
/* Delete the n oldest records of connector (overflow policy drop_oldest);
 * *deleted tells how many went. */
int spool_drop_oldest(struct spool *sp, const char *connector, uint64_t n, uint64_t *deleted);

/* Delete the records of connector with first <= seqno <= last. */
int spool_delete_range(struct spool *sp, const char *connector, uint64_t first, uint64_t last);

/* Load records of connector with seqno >= from, in order, at most max.
 * fn gets a record made with export_record_new (rule unset) and owns it. */
typedef int (*spool_load_fn)(void *ctx, struct export_record *rec, const char *rule_name,
                             uint64_t generation);
int spool_load(struct spool *sp, const char *connector, uint64_t from, unsigned max,
               spool_load_fn fn, void *ctx, unsigned *loaded);
/* Count and seqno range of connector's records (0s when none). */
int spool_range(struct spool *sp, const char *connector, uint64_t *count, uint64_t *first,
                uint64_t *last);

/* One allocation holding the record and copies of its strings and
 * payload. Any string may be NULL. */
struct export_record *export_record_new(enum record_kind kind, uint64_t msg_id, int64_t time_ms,
                                        uint8_t qos, const char *client_id, const char *topic,
                                        const uint8_t *payload, uint32_t payload_len,
                                        const char *event_type, const char *channel_id,
                                        const char *client_ip);
void export_record_free(struct export_record *rec);

#endif
