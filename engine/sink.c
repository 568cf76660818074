/* The connector threads. Each sink's thread takes batches from its todo
 * list, hands them to the connector's export() and returns every record,
 * acknowledged or rejected, on the done list, in order. While the sink is
 * down it keeps the current batch, reconnects with exponential backoff and
 * offers the unacknowledged part again: nothing is skipped and the order
 * holds. It never frees records (the loop does). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/log.h"
#include "export_internal.h"

void record_list_push(struct record_list *l, struct export_record *rec)
{
    rec->next = NULL;
    if (l->tail)
        l->tail->next = rec;
    else
        l->head = rec;
    l->tail = rec;
    l->count++;
}

struct export_record *record_list_pop(struct record_list *l)
{
    struct export_record *rec = l->head;
    if (rec) {
        l->head = rec->next;
        if (!l->head)
            l->tail = NULL;
        l->count--;
        rec->next = NULL;
    }
    return rec;
}

const char *sink_state_name(enum sink_state s)
{
    static const char *const names[] = {"idle", "connecting", "connected", "reconnecting",
                                        "stopped"};
    return (unsigned)s < sizeof names / sizeof names[0] ? names[s] : "unknown";
}

void sink_push_list(struct sink *sk, struct record_list *l)
{
    if (!l->head)
        return;
    uv_mutex_lock(&sk->lock);
    if (sk->todo.tail)
        sk->todo.tail->next = l->head;
    else
        sk->todo.head = l->head;
    sk->todo.tail = l->tail;
    sk->todo.count += l->count;
    uv_cond_signal(&sk->cond);
    uv_mutex_unlock(&sk->lock);
    *l = (struct record_list){0};
}

/* Hand records back to the loop. */
static void sink_done(struct sink *sk, struct export_record *const *recs, size_t n,
                      enum record_outcome outcome)
{
    if (!n)
        return;
    uv_mutex_lock(&sk->lock);
    for (size_t i = 0; i < n; i++) {
        recs[i]->outcome = (uint8_t)outcome;
        record_list_push(&sk->done, recs[i]);
    }
    uv_mutex_unlock(&sk->lock);
    uv_async_send(&sk->done_async);
}

/* Wait up to ms, or until stopped. Called and returns with the lock held.
 * true when the sink must stop. */
static bool sink_wait(struct sink *sk, uint64_t ms)
{
    uint64_t deadline = uv_hrtime() + ms * 1000000u;
    while (!sk->stop) {
        uint64_t now = uv_hrtime();
        if (now >= deadline)
            break;
        uv_cond_timedwait(&sk->cond, &sk->lock, deadline - now);
    }
    return sk->stop;
}

static void sink_set_state(struct sink *sk, enum sink_state st, const char *error)
{
    uv_mutex_lock(&sk->lock);
    sk->state = st;
    if (error)
        snprintf(sk->last_error, sizeof sk->last_error, "%s", error);
    uv_mutex_unlock(&sk->lock);
}

/* Connect, retrying with backoff. false when stopped meanwhile. */
static bool sink_connect(struct sink *sk, uint64_t *backoff_ms)
{
    const struct export_settings *set = &sk->x->settings;
    char err[256];
    bool first = true;
    for (;;) {
        sink_set_state(sk, first ? SINK_CONNECTING : SINK_RECONNECTING, NULL);
        if (sk->ops->open(sk->impl, err, sizeof err) == 0) {
            sink_set_state(sk, SINK_CONNECTED, NULL);
            log_notice("connector %s: connected", sk->name);
            *backoff_ms = set->retry_initial_ms;
            return true;
        }
        log_warn("connector %s: cannot connect (retrying in %" PRIu64 " ms): %s", sk->name,
                 *backoff_ms, err);
        sink_set_state(sk, SINK_RECONNECTING, err);
        uv_mutex_lock(&sk->lock);
        sk->reconnects++;
        bool stop = sink_wait(sk, *backoff_ms);
        uv_mutex_unlock(&sk->lock);
        if (stop)
            return false;
        *backoff_ms = *backoff_ms * 2 > set->retry_max_ms ? set->retry_max_ms : *backoff_ms * 2;
        first = false;
    }
}

/* Take up to max records; waits while there are none. 0 when stopping (or
 * draining and empty). Lock held on entry and exit. */
static size_t sink_take(struct sink *sk, struct export_record **batch, size_t max)
{
    while (!sk->stop && !sk->todo.head && !sk->draining)
        uv_cond_wait(&sk->cond, &sk->lock);
    if (sk->stop)
        return 0;
    size_t n = 0;
    while (n < max && sk->todo.head)
        batch[n++] = record_list_pop(&sk->todo);
    return n;
}

/* Export batch[0..n) until all are done; false when stopped first. */
static bool sink_export_batch(struct sink *sk, struct export_record **batch, size_t n,
                              bool *connected, uint64_t *backoff_ms)
{
    size_t off = 0;
    char err[512];
    while (off < n) {
        if (!*connected && !(*connected = sink_connect(sk, backoff_ms)))
            return false;
        for (size_t i = off; i < n; i++)
            batch[i]->attempts++;
        size_t acked = 0;
        err[0] = '\0';
        int rc = sk->ops->export(sk->impl, batch + off, n - off, &acked, err, sizeof err);
        if (acked > n - off)
            acked = n - off; /* a connector bug must not make us skip */
        sink_done(sk, batch + off, acked, OUTCOME_ACKED);
        off += acked;
        if (rc == CONNECTOR_OK && off == n)
            break;
        uv_mutex_lock(&sk->lock);
        sk->exports_failed++;
        uv_mutex_unlock(&sk->lock);
        if (rc == CONNECTOR_REJECT && off < n) {
            log_warn("connector %s: record %" PRIu64 " (rule %s, client %s) refused by the sink, "
                     "dropped: %s",
                     sk->name, batch[off]->seqno, batch[off]->rule ? batch[off]->rule->name : "-",
                     batch[off]->client_id ? batch[off]->client_id : "-", err);
            uv_mutex_lock(&sk->lock);
            sk->records_rejected++;
            uv_mutex_unlock(&sk->lock);
            sink_done(sk, batch + off, 1, OUTCOME_REJECTED);
            off++;
            continue;
        }
        /* RETRY (or a connector that returned OK without finishing): the
         * connection is suspect; reconnect and offer the rest again. */
        log_warn("connector %s: export failed, %zu records will be retried: %s", sk->name, n - off,
                 err[0] ? err : "incomplete batch");
        sink_set_state(sk, SINK_RECONNECTING, err);
        uv_mutex_lock(&sk->lock);
        sk->records_retried += n - off;
        bool stop = sink_wait(sk, *backoff_ms);
        uv_mutex_unlock(&sk->lock);
        sk->ops->close(sk->impl);
        *connected = false;
        if (stop)
            return false;
    }
    return true;
}

void sink_thread_main(void *arg)
{
    struct sink *sk = arg;
    size_t max = sk->x->settings.batch_max;
    struct export_record **batch = malloc(max * sizeof *batch);
    uint64_t backoff_ms = sk->x->settings.retry_initial_ms;
    bool connected = false;
    if (!batch) {
        log_error("connector %s: out of memory, export stopped", sk->name);
        goto out;
    }
    for (;;) {
        uv_mutex_lock(&sk->lock);
        size_t n = sink_take(sk, batch, max);
        uv_mutex_unlock(&sk->lock);
        if (n == 0)
            break;
        if (!sink_export_batch(sk, batch, n, &connected, &backoff_ms)) {
            /* Stopped with records in hand: give them back unexported;
             * spooled ones are exported after the restart. */
            uv_mutex_lock(&sk->lock);
            for (size_t i = 0; i < n; i++)
                if (batch[i]->outcome == OUTCOME_PENDING)
                    record_list_push(&sk->done, batch[i]);
            uv_mutex_unlock(&sk->lock);
            break;
        }
    }
out:
    if (connected)
        sk->ops->close(sk->impl);
    free(batch);
    uv_mutex_lock(&sk->lock);
    sk->state = SINK_STOPPED;
    sk->finished = true;
    uv_cond_broadcast(&sk->cond);
    uv_mutex_unlock(&sk->lock);
    uv_async_send(&sk->done_async);
}
