/* Shared by export.c (the loop side) and sink.c (the connector threads). */
#ifndef MQB_EXPORT_INTERNAL_H
#define MQB_EXPORT_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "../common/hmap.h"
#include "../connectors/connector.h"
#include "export.h"
#include "spool.h"

enum record_outcome { OUTCOME_PENDING = 0, OUTCOME_ACKED = 1, OUTCOME_REJECTED = 2 };

enum sink_state { SINK_IDLE, SINK_CONNECTING, SINK_CONNECTED, SINK_RECONNECTING, SINK_STOPPED };

struct record_list {
    struct export_record *head, *tail;
    size_t count;
};

/* One declared connector: its state, its thread and the two queues between
 * the loop and the thread. */
struct sink {
    struct exporter *x;
    char *name;
    const struct connector_ops *ops;
    struct connector *impl;

    /* Shared with the thread, under lock. */
    uv_mutex_t lock;
    uv_cond_t cond;
    struct record_list todo; /* loop -> thread */
    struct record_list done; /* thread -> loop */
    bool stop, draining, finished;
    enum sink_state state;
    uint64_t exports_failed, records_retried, records_rejected, reconnects;
    char last_error[256];

    uv_thread_t thread;
    bool thread_started;
    uv_async_t done_async;

    /* Loop only. */
    struct record_list outbox; /* for todo: moved over in one piece by
                                  exporter_on_flush (and after a refill) */
    uint64_t next_seqno;       /* last seqno handed out */
    uint64_t in_memory;        /* records in the outbox, queued or in the thread */
    uint64_t backlog;          /* records only in the spool */
    uint64_t load_cursor;      /* first backlog seqno */
};

/* sink.c */
void sink_thread_main(void *arg);
/* Move every record of l (in order) to the end of todo and wake the
 * thread: one lock and one signal for all of them. l is left empty. */
void sink_push_list(struct sink *sk, struct record_list *l);
const char *sink_state_name(enum sink_state s);

void record_list_push(struct record_list *l, struct export_record *rec);
struct export_record *record_list_pop(struct record_list *l);

/* export.c */
struct exporter {
    uv_loop_t *loop;
    struct export_settings settings;
    struct sink *sinks;
    unsigned sink_count;
    struct spool *spool;
    struct generation *current; /* the rules in force; NULL before any */
    struct generation *retired; /* older generations still referenced */
    struct hmap rule_stats;     /* rule name -> struct rule_stats */
    struct rules_context rctx;  /* callbacks into the sinks */
    uint64_t last_generation_id;
    unsigned closing; /* handles being closed */
    bool started;
};

#endif
