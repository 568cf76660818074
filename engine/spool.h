/* The export spool: every record that must not be lost (QoS >= 1 messages,
 * status events, and anything that waits while a sink is behind) is written
 * here before the publisher's acknowledgement leaves, and forgotten once its
 * sink acknowledged it. One append-only log per connector in its own
 * directory (format at the top of spool.c); records are encoded in memory by
 * spool_put and written with one write() per connector by spool_commit(),
 * which the broker's on_flush hook calls once per loop iteration.
 *
 * Keys: (connector, seqno). Per connector, seqnos only grow: a put must use
 * a seqno above spool_seqno_high() (gaps are fine).
 *
 * Not thread-safe: one thread (the engine's loop) owns a spool. Functions
 * return 0 on success and -1 on failure (logged, with the file and the
 * reason). */
#ifndef MQB_SPOOL_H
#define MQB_SPOOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../broker/store.h"
#include "../connectors/connector.h"

struct spool;

/* dir: the spool directory (created if missing; its parent must exist).
 * NULL: in memory only (not durable, nothing on disk; for --check-config
 * and storage-less runs). sync: STORE_SYNC_FULL adds an fdatasync to every
 * commit that wrote; OFF and NORMAL write to the OS only (survives kill -9,
 * not power loss). A connector's log is opened and recovered at its first
 * use. */
int spool_open(const char *dir, enum store_sync sync, struct spool **out, char *err, size_t errlen);
void spool_close(struct spool *sp); /* commits; accepts NULL */
/* A new segment starts when a write would take the current one past bytes
 * (default 64 MiB). For tests and tools; set before the first put. */
void spool_set_segment_max(struct spool *sp, uint64_t bytes);
/* Writes what was put since the last commit (and the acknowledged state
 * when it changed) to the OS, fdatasync'd with sync full. On failure the
 * records stay pending and the next commit tries again. */
int spool_commit(struct spool *sp);

/* Store rec under (connector, rec->seqno) with the rule's name (may be
 * NULL) and the generation it was made in. Copies what it needs. Refused
 * (-1) when rec->seqno is not above spool_seqno_high(). */
int spool_put(struct spool *sp, const char *connector, const struct export_record *rec,
              const char *rule_name, uint64_t generation);
/* Forget every record of connector with seqno <= upto (upto beyond the
 * last record put means all of them). */
int spool_ack(struct spool *sp, const char *connector, uint64_t upto);
/* Forget the records of connector with first <= seqno <= last. Seqnos in
 * the range that have no record are fine (and help merge ranges). */
int spool_delete_range(struct spool *sp, const char *connector, uint64_t first, uint64_t last);

/* Load records of connector with seqno >= from, in order, at most max,
 * including records put and not yet committed. fn gets a record made with
 * export_record_new (rule unset) and owns it; rule_name is valid only
 * during the call. fn returning non-zero stops the load (-1; the record it
 * was given is counted in *loaded). fn may put, ack, delete and commit;
 * whether the running load sees those changes is unspecified. Calling
 * spool_load from fn is refused. Repeated calls with from = the seqno after
 * the last record handed over continue where the previous one stopped. */
typedef int (*spool_load_fn)(void *ctx, struct export_record *rec, const char *rule_name,
                             uint64_t generation);
int spool_load(struct spool *sp, const char *connector, uint64_t from, unsigned max,
               spool_load_fn fn, void *ctx, unsigned *loaded);
/* Count and seqno range of connector's records (0s when none), including
 * records put and not yet committed; writes nothing. Known without reading
 * after the recovery and after puts; an ack or delete that cuts into the
 * range makes the next call read the log. Any output may be NULL. */
int spool_range(struct spool *sp, const char *connector, uint64_t *count, uint64_t *first,
                uint64_t *last);
/* The highest seqno connector's log has used (put, then acknowledged or
 * deleted or not; 0 when none): the next put must be above it, also after a
 * restart. */
int spool_seqno_high(struct spool *sp, const char *connector, uint64_t *high);

/* One allocation holding the record and copies of its strings and
 * payload. Any string may be NULL. */
struct export_record *export_record_new(enum record_kind kind, uint64_t msg_id, int64_t time_ms,
                                        uint8_t qos, const char *client_id, const char *topic,
                                        const uint8_t *payload, uint32_t payload_len,
                                        const char *event_type, const char *channel_id,
                                        const char *client_ip);
void export_record_free(struct export_record *rec);

#endif
