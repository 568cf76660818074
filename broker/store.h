/* The embedded store: SQLite in WAL mode holding what must survive a
 * restart: persistent sessions (cleanSession = 0) with their subscriptions,
 * their queued and inflight QoS 1/2 messages and their incoming QoS 2 ids,
 * and the retained messages.
 *
 * Writes are grouped: the first write after a commit opens a transaction,
 * and store_commit() (called once per event-loop iteration, before any
 * acknowledgement leaves the broker) closes it. So one fsync covers every
 * change of an iteration. All strings are NUL-terminated. Not thread-safe:
 * the broker loop owns it. Every function returns 0 on success and -1 on a
 * database error, logged with the SQLite message. */
#ifndef MQB_STORE_H
#define MQB_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "message.h"

struct store;

enum store_sync {
    STORE_SYNC_OFF = 0,    /* PRAGMA synchronous=OFF: survives a process crash only */
    STORE_SYNC_NORMAL = 1, /* WAL + NORMAL: survives kill -9, not power loss */
    STORE_SYNC_FULL = 2,   /* fsync every commit: survives power loss */
};

/* Open (creating if needed) the database file at path, create the schema,
 * set WAL mode and the sync level. On failure returns -1 with a reason in
 * err. */
int store_open(const char *path, enum store_sync sync, struct store **out, char *err,
               size_t errlen);
/* Commits what is pending and closes. Accepts NULL. */
void store_close(struct store *st);
/* Commit the open transaction, if any. */
int store_commit(struct store *st);
/* True when a transaction is open (there are uncommitted writes). */
bool store_pending(const struct store *st);

/* Sessions. store_session_put creates or updates; store_session_del removes
 * the session with its subscriptions, messages and QoS 2 ids. */
int store_session_put(struct store *st, const char *client_id, int64_t last_seen_ms);
int store_session_del(struct store *st, const char *client_id);

int store_sub_put(struct store *st, const char *client_id, const char *filter, uint8_t qos);
int store_sub_del(struct store *st, const char *client_id, const char *filter);

/* Outgoing messages of a session, keyed by (client_id, seq). */
int store_out_put(struct store *st, const char *client_id, uint64_t seq, const struct message *m,
                  uint8_t qos, uint16_t packet_id, uint8_t state, bool retain);
int store_out_update(struct store *st, const char *client_id, uint64_t seq, uint16_t packet_id,
                     uint8_t state);
int store_out_del(struct store *st, const char *client_id, uint64_t seq);

int store_qos2_put(struct store *st, const char *client_id, uint16_t packet_id);
int store_qos2_del(struct store *st, const char *client_id, uint16_t packet_id);

/* Retained messages, keyed by topic; store_retain_put replaces. */
int store_retain_put(struct store *st, const struct message *m);
int store_retain_del(struct store *st, const char *topic);

/* Loading at start-up. Each callback may be NULL; a non-zero return from a
 * callback stops the load and store_load returns -1. Messages passed to the
 * callbacks have refcount 1 and belong to the callee (unref when done).
 * Strings passed to callbacks are valid only during the call.
 * Order: all sessions, then subscriptions, then messages by (client, seq),
 * then QoS 2 ids, then retained messages. */
struct store_loader {
    int (*session)(void *ctx, const char *client_id, int64_t last_seen_ms);
    int (*sub)(void *ctx, const char *client_id, const char *filter, uint8_t qos);
    int (*out)(void *ctx, const char *client_id, uint64_t seq, struct message *m, uint8_t qos,
               uint16_t packet_id, uint8_t state, bool retain);
    int (*qos2)(void *ctx, const char *client_id, uint16_t packet_id);
    int (*retain)(void *ctx, struct message *m);
};
int store_load(struct store *st, const struct store_loader *loader, void *ctx);

#endif
