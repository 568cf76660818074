/* The importer (see import.h). Thread side: fetch, hand over, wait until
 * the batch (or, when stopping or failing, a prefix of it) is committed,
 * acknowledge once. A source that allows it is read one batch ahead: the
 * thread fetches batch N+1 while the loop delivers batch N and queues it
 * behind N; the loop goes on with N+1 as soon as N is all handled, while
 * the thread waits for N's commit and acknowledges N (two batches at most,
 * acknowledged in order). Loop side: validate, broker_inject with flow
 * control, stop at the first record a receiver has no room for and offer
 * it again when the broker signals room; note in on_flush how far the
 * store has committed. One mutex per importer thread guards its hand-over
 * state. */
#include "import.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/kv.h"
#include "../common/log.h"

#define FETCH_TIMEOUT_MS 500
#define LAG_EVERY_MS 5000
/* A rule waiting for room retries at least this often, even when the
 * broker signalled nothing (a safety net: every event that frees room
 * moves broker_room_gen). */
#define RETRY_MS 1000
/* A wait this long is a stall: logged as a warning, then at most once per
 * STALL_LOG_EVERY_MS while it lasts. Shorter waits are normal flow
 * control (a subscriber slower than the source). */
#define STALL_WARN_MS 10000
#define STALL_LOG_EVERY_MS 60000

enum skip_reason { SKIP_QOS, SKIP_SIZE, SKIP_TOPIC, SKIP_CLIENT, SKIP_REASONS };
static const char *const skip_names[SKIP_REASONS] = {"bad_qos", "too_large", "bad_topic",
                                                     "bad_client_id"};

struct import_stats {
    uint64_t received, published, skipped[SKIP_REASONS], ack_failed, reconnects;
    uint64_t waits;      /* times the rule waited for a receiver's room */
    uint64_t blocked_ms; /* time spent waiting, ended waits */
    int64_t lag;
};

/* A batch handed to the loop. */
struct slot {
    struct import_record **recs;
    size_t n;
    size_t next;      /* loop: recs[0, next) handled (published or skipped) */
    size_t committed; /* recs[0, committed) is in a committed store iteration */
    bool counted;     /* the batch is in st.received */
};

/* One inbound rule's thread and its hand-over with the loop. */
struct feeder {
    struct importer *im;
    const struct rule *rule;
    const struct connector_ops *ops;
    struct connector *impl;
    uv_thread_t thread;
    bool started;
    bool ahead; /* the source is read one batch ahead (feeder_reads_ahead) */

    uv_mutex_t lock; /* guards everything below */
    uv_cond_t cond;
    /* The batches handed to the loop, in source order: the loop delivers
     * q[1] only once q[0] is all handled; the thread takes q[0] out once it
     * is all committed, and acknowledges it. Two at most. */
    struct slot q[2];
    unsigned q_len;
    bool failed; /* the loop cannot go on with the batches (out of memory) */
    bool stop;
    bool exited; /* the thread is done with this struct */
    struct import_stats st;
    /* Waiting for room (loop side, under the lock too for the stats). A
     * wait starts when a record is refused and ends when the queued
     * batches are all handed over (records may trickle meanwhile, one per
     * freed slot). */
    bool blocked;
    bool stalled;           /* a stall warning was logged for this wait */
    uint64_t blocked_since; /* uv_now */
    uint64_t progress_at;   /* uv_now of the last record that went through */
    uint64_t blocked_gen;   /* broker_room_gen at the last refusal */
    uint64_t retry_at;      /* uv_now of the next unconditional retry */
    uint64_t warn_at;       /* uv_now of the next stall warning */
    char blocker[160];      /* why of the last INJECT_BUSY */
};

/* The feeders of one rule set. A reload stops the current generation and
 * makes a new one; the new one's threads start once every stopped thread
 * has exited (so two readers of one source never overlap: order and
 * locks stay as with one reader), without the loop waiting for them. */
struct generation {
    struct generation *next; /* in importer.retiring */
    struct feeder *feeders;
    unsigned count;
    void *hold; /* the rule set the feeders use */
    bool started;
};

struct importer {
    uv_loop_t *loop;
    struct broker *broker;
    struct exporter *x;
    struct export_settings settings;
    struct generation *current;
    struct generation *retiring; /* stopped; their threads are finishing */
    uv_async_t async;
    bool async_inited;
};

/* Sources read one batch ahead: the fetch of batch N+1 may come before the
 * acknowledgement of batch N (acknowledgements stay in order, one per
 * batch).
 * - Kafka: offsets are positions; committing N's after fetching N+1 is what
 *   committing them before would have been.
 * - Redis: XREADGROUP hands N+1 out while N is pending; XACK takes ids.
 *   Pub/Sub has nothing to acknowledge.
 * Not PostgreSQL: a batch is one transaction holding its rows' locks,
 * committed by its acknowledgement, so the next fetch waits for it.
 * Not with a dead-letter target (`unless`): the connector keeps the
 * originals of the last fetch only, to copy the skipped records of the
 * batch it acknowledges; a fetch ahead would lose them. */
static const struct {
    const char *type;   /* connector_ops.type */
    const char *unless; /* a rule source option that turns it off */
} read_ahead[] = {
    {"kafka", "dead_letter_topic"},
    {"redis", "dead_letter_stream"},
};

static bool feeder_reads_ahead(const struct rule *r, const struct connector_ops *ops)
{
    for (size_t i = 0; i < sizeof read_ahead / sizeof read_ahead[0]; i++)
        if (strcmp(ops->type, read_ahead[i].type) == 0)
            return kv_find(r->options, read_ahead[i].unless) == NULL;
    return false;
}

/* ---- loop side ---- */

/* Validate one record and publish it. 0 when handled (published or
 * skipped: outcome and reason set), 1 when a receiver has no room (nothing
 * delivered, offer it again later), -1 when the batch cannot go on. */
static int import_one(struct feeder *f, struct import_record *rec)
{
    const struct rule *r = f->rule;
    char topic[512], why[160];
    uint8_t qos = 1; /* the managed service's default */
    enum skip_reason reason;
    if (rec->qos) {
        if (strlen(rec->qos) != 1 || rec->qos[0] < '0' || rec->qos[0] > '2') {
            snprintf(why, sizeof why, "qoslevel '%.16s' is not 0, 1 or 2", rec->qos);
            reason = SKIP_QOS;
            goto skip;
        }
        qos = (uint8_t)(rec->qos[0] - '0');
    }
    int n = rec->sub_topic && rec->sub_topic[0]
                ? snprintf(topic, sizeof topic, "%s/%s", r->resource, rec->sub_topic)
                : snprintf(topic, sizeof topic, "%s", r->resource);
    if (n < 0 || (size_t)n >= sizeof topic) {
        snprintf(why, sizeof why, "topic too long");
        reason = SKIP_TOPIC;
        goto skip;
    }
    int rc = broker_inject(f->im->broker, topic, (size_t)n, rec->payload, rec->payload_len, qos,
                           rec->client_id && rec->client_id[0] ? rec->client_id : NULL,
                           INJECT_FLOW_CONTROL, why, sizeof why);
    if (rc == INJECT_BUSY) {
        snprintf(f->blocker, sizeof f->blocker, "%s", why);
        return 1;
    }
    if (rc == INJECT_NO_MEMORY) {
        /* Not the record's fault: it and the ones after it are not
         * acknowledged, the source delivers them again. */
        log_error("inbound rule %s: out of memory, records from %s on will be read again", r->name,
                  rec->id ? rec->id : "?");
        return -1;
    }
    if (rc < 0) {
        reason = rc == INJECT_TOO_LARGE    ? SKIP_SIZE
                 : rc == INJECT_BAD_TARGET ? SKIP_CLIENT
                                           : SKIP_TOPIC;
        goto skip;
    }
    rec->outcome = IMPORT_PUBLISHED;
    f->st.published++;
    return 0;
skip:
    rec->outcome = IMPORT_SKIPPED;
    snprintf(rec->reason, sizeof rec->reason, "%.95s", why);
    f->st.skipped[reason]++;
    log_warn("inbound rule %s: record %s skipped: %s", r->name, rec->id ? rec->id : "?", why);
    return 0;
}

/* The batches are handed over (or taken back, or the rule stops): the wait
 * ends; lock held. */
static void feeder_unblock(struct feeder *f, uint64_t now)
{
    if (!f->blocked)
        return;
    f->blocked = false;
    f->st.blocked_ms += now - f->blocked_since;
    if (f->stalled)
        log_notice("inbound rule %s: records go on after %" PRIu64 " s without room", f->rule->name,
                   (now - f->progress_at) / 1000);
    f->stalled = false;
}

/* A record was refused for want of room; lock held. A wait starts, or goes
 * on (made progress when went records went through since the last try). */
static void feeder_refused(struct feeder *f, uint64_t now, size_t went)
{
    if (!f->blocked) {
        f->blocked = true;
        f->blocked_since = f->progress_at = now;
        f->warn_at = now + STALL_WARN_MS;
        f->st.waits++;
        log_debug("inbound rule %s: waiting for room: %s", f->rule->name, f->blocker);
    } else if (went > 0) {
        if (f->stalled)
            log_notice("inbound rule %s: records go on after %" PRIu64 " s without room",
                       f->rule->name, (now - f->progress_at) / 1000);
        f->stalled = false;
        f->progress_at = now;
        f->warn_at = now + STALL_WARN_MS;
    }
    f->blocked_gen = broker_room_gen(f->im->broker);
    f->retry_at = now + RETRY_MS;
}

/* Publish the queued batches in order, from where the loop stopped, until
 * a receiver has no room; lock held. */
static void feeder_pump(struct feeder *f)
{
    if (f->stop || f->failed)
        return;
    uint64_t now = uv_now(f->im->loop);
    size_t went = 0; /* records handled in this call */
    for (unsigned i = 0; i < f->q_len; i++) {
        struct slot *s = &f->q[i];
        if (s->next < s->n && !s->counted) {
            f->st.received += s->n;
            s->counted = true;
        }
        for (; s->next < s->n; s->next++, went++) {
            int rc = import_one(f, s->recs[s->next]);
            if (rc > 0) {
                feeder_refused(f, now, went);
                return;
            }
            if (rc < 0) {
                f->failed = true; /* the thread takes the batches back */
                break;
            }
        }
        if (f->failed)
            break;
    }
    feeder_unblock(f, now);
}

/* The threads of a stopped generation that are done: joined and freed
 * once all are; the current generation starts when none is left. */
static void importer_reap(struct importer *im)
{
    struct generation **pp = &im->retiring;
    while (*pp) {
        struct generation *g = *pp;
        bool done = true;
        for (unsigned i = 0; i < g->count && done; i++) {
            struct feeder *f = &g->feeders[i];
            uv_mutex_lock(&f->lock);
            done = !f->started || f->exited;
            uv_mutex_unlock(&f->lock);
        }
        if (!done) {
            pp = &g->next;
            continue;
        }
        *pp = g->next;
        for (unsigned i = 0; i < g->count; i++) {
            struct feeder *f = &g->feeders[i];
            if (f->started)
                uv_thread_join(&f->thread); /* it has returned or is returning */
            uv_mutex_destroy(&f->lock);
            uv_cond_destroy(&f->cond);
        }
        free(g->feeders);
        exporter_release_rules(im->x, g->hold);
        free(g);
    }
}

static void feeder_main(void *arg);

static void generation_start(struct generation *g)
{
    g->started = true;
    for (unsigned i = 0; i < g->count; i++) {
        struct feeder *f = &g->feeders[i];
        f->started = uv_thread_create(&f->thread, feeder_main, f) == 0;
        if (!f->started)
            log_error("inbound rule %s: cannot start its thread", f->rule->name);
    }
}

static void on_import_async(uv_async_t *a)
{
    struct importer *im = a->data;
    importer_reap(im);
    struct generation *g = im->current;
    if (!g)
        return;
    if (!g->started) {
        if (im->retiring)
            return; /* the threads of the old rules are still finishing */
        generation_start(g);
    }
    for (unsigned i = 0; i < g->count; i++) {
        struct feeder *f = &g->feeders[i];
        uv_mutex_lock(&f->lock);
        if (f->q_len == 0)
            feeder_unblock(f, uv_now(im->loop)); /* its thread took the batches back */
        feeder_pump(f);
        uv_mutex_unlock(&f->lock);
    }
}

void importer_on_flush(struct importer *im)
{
    if (!im || !im->current)
        return;
    struct generation *g = im->current;
    uint64_t now = uv_now(im->loop), gen = broker_room_gen(im->broker);
    bool retry = false;
    for (unsigned i = 0; i < g->count; i++) {
        struct feeder *f = &g->feeders[i];
        uv_mutex_lock(&f->lock);
        bool moved = false;
        for (unsigned k = 0; k < f->q_len; k++) {
            /* what the loop handled so far is in the store's commit */
            moved |= f->q[k].committed < f->q[k].next;
            f->q[k].committed = f->q[k].next;
        }
        if (moved || (f->q_len && f->failed))
            uv_cond_signal(&f->cond);
        if (f->blocked && !f->stop) {
            retry |= gen != f->blocked_gen || now >= f->retry_at;
            if (now >= f->warn_at) {
                log_warn("inbound rule %s: no record went through for %" PRIu64
                         " s: %s; the records from there on wait, unacknowledged at the source",
                         f->rule->name, (now - f->progress_at) / 1000, f->blocker);
                f->stalled = true;
                f->warn_at = now + STALL_LOG_EVERY_MS;
            }
        }
        uv_mutex_unlock(&f->lock);
    }
    if (retry)
        uv_async_send(&im->async); /* on the next iteration, not inside the flush */
}

/* ---- thread side ---- */

/* Wait ms or until stopped; lock held. true when stopping. */
static bool feeder_wait(struct feeder *f, uint64_t ms)
{
    uint64_t deadline = uv_hrtime() + ms * 1000000u;
    while (!f->stop && uv_hrtime() < deadline)
        uv_cond_timedwait(&f->cond, &f->lock, deadline - uv_hrtime());
    return f->stop;
}

static bool feeder_open(struct feeder *f, struct source **src, uint64_t *backoff)
{
    const struct export_settings *set = &f->im->settings;
    char err[256];
    for (;;) {
        if (f->ops->source_open(f->impl, f->rule, src, err, sizeof err) == 0) {
            /* the backoff goes back to its start after a good fetch only: a
             * source that opens but fails every fetch is not hammered */
            log_notice("inbound rule %s: reading from %s%s", f->rule->name, f->rule->connector,
                       f->ahead ? " (one batch ahead)" : "");
            return true;
        }
        log_warn("inbound rule %s: cannot open the source (retrying in %" PRIu64 " ms): %s",
                 f->rule->name, *backoff, err);
        uv_mutex_lock(&f->lock);
        f->st.reconnects++;
        bool stop = feeder_wait(f, *backoff);
        uv_mutex_unlock(&f->lock);
        if (stop)
            return false;
        *backoff = *backoff * 2 > set->retry_max_ms ? set->retry_max_ms : *backoff * 2;
    }
}

/* Measure the source's lag every LAG_EVERY_MS. in_batch: a batch is in
 * hand; a source that cannot tell then (-1: a PostgreSQL source inside the
 * batch's transaction) keeps the last value. */
static void feeder_update_lag(struct feeder *f, struct source *src, uint64_t *last_lag,
                              bool in_batch)
{
    if (!src || !f->ops->source_lag || uv_hrtime() / 1000000u - *last_lag < LAG_EVERY_MS)
        return;
    int64_t lag = f->ops->source_lag(src);
    *last_lag = uv_hrtime() / 1000000u;
    if (lag < 0 && in_batch)
        return;
    uv_mutex_lock(&f->lock);
    f->st.lag = lag;
    uv_mutex_unlock(&f->lock);
}

/* Whether the rule is stopping (the loop sets it). */
static bool feeder_stopping(struct feeder *f)
{
    uv_mutex_lock(&f->lock);
    bool stop = f->stop;
    uv_mutex_unlock(&f->lock);
    return stop;
}

/* A batch the thread holds, from its fetch to its acknowledgement. */
struct held {
    struct import_record **recs; /* batch_max slots */
    size_t n;                    /* records in it; 0: none */
};

static void held_clear(struct held *h)
{
    for (size_t i = 0; i < h->n; i++)
        import_record_free(h->recs[i]);
    h->n = 0;
}

/* Queue h for the loop after the batches it has: the loop delivers it
 * once those are all handled. The thread keeps h's records until it has
 * acknowledged them (or taken them back). */
static void feeder_hand(struct feeder *f, const struct held *h)
{
    uv_mutex_lock(&f->lock);
    if (f->q_len == 0)
        f->failed = false;
    f->q[f->q_len++] = (struct slot){.recs = h->recs, .n = h->n};
    uv_mutex_unlock(&f->lock);
    uv_async_send(&f->im->async);
}

/* Take every batch back from the loop: it publishes nothing more of them
 * (and ends a wait for room). Returns how many records of the second one
 * the loop had handled. */
static size_t feeder_take_back(struct feeder *f)
{
    uv_mutex_lock(&f->lock);
    size_t second = f->q_len > 1 ? f->q[1].next : 0;
    f->q_len = 0;
    f->failed = false;
    uv_mutex_unlock(&f->lock);
    uv_async_send(&f->im->async);
    return second;
}

/* Wait until the loop's first batch is all committed, or the loop failed
 * (and what it handled of that batch is committed), or the rule stops.
 * Returns how many records from its start are committed (published or
 * skipped): the ones to acknowledge. When that is all of it, the batch is
 * taken out of the loop's queue (the next one, if any, goes on). */
static size_t feeder_wait_first(struct feeder *f, struct source *src, uint64_t *last_lag)
{
    uv_mutex_lock(&f->lock);
    struct slot *s = &f->q[0];
    while (!f->stop && s->committed < s->n && !(f->failed && s->committed == s->next)) {
        /* a long wait (a slow subscriber) keeps the lag counter fresh */
        uv_cond_timedwait(&f->cond, &f->lock, (uint64_t)LAG_EVERY_MS * 1000000u);
        if (f->stop || s->committed == s->n || (f->failed && s->committed == s->next))
            break;
        uv_mutex_unlock(&f->lock);
        feeder_update_lag(f, src, last_lag, true);
        uv_mutex_lock(&f->lock);
    }
    size_t done = s->committed;
    if (done == s->n) {
        f->q[0] = f->q[1];
        f->q_len--;
    }
    uv_mutex_unlock(&f->lock);
    return done;
}

/* Acknowledge h->recs[0, done) at the source. false when that failed: they
 * are counted and come again. */
static bool feeder_ack(struct feeder *f, struct source *src, const struct held *h, size_t done)
{
    char err[256];
    if (done == 0 || f->ops->source_ack(src, h->recs, done, err, sizeof err) == CONNECTOR_OK)
        return true;
    log_warn("inbound rule %s: %zu records not acknowledged (they come again): %s", f->rule->name,
             done, err);
    uv_mutex_lock(&f->lock);
    f->st.ack_failed += done;
    uv_mutex_unlock(&f->lock);
    return false;
}

/* Finish the loop's first batch (first; next: the one queued after it, or
 * NULL or empty): wait until it is committed and acknowledge it, all of it
 * or, when stopping or failing, its committed prefix, once; free it. The
 * loop goes on with next meanwhile. Returns false when the source must be
 * reopened: first could not be all published (the loop failed), or its
 * acknowledgement failed. *kept: next is still in the loop (first was all
 * committed and acknowledged); else it was taken back and must not be
 * acknowledged (what it published comes again: repeats, never a skip). */
static bool feeder_settle(struct feeder *f, struct source *src, struct held *first,
                          const struct held *next, uint64_t *last_lag, bool *kept)
{
    size_t n = first->n, done = feeder_wait_first(f, src, last_lag), sent = 0;
    bool stop = feeder_stopping(f);
    if (done < n)
        sent = feeder_take_back(f);
    bool ok = feeder_ack(f, src, first, done);
    if (ok && done < n && !stop) {
        log_warn("inbound rule %s: %zu of %zu records not published (they come again)",
                 f->rule->name, n - done, n);
        ok = false;
    }
    if (!ok && done == n)
        sent = feeder_take_back(f);
    *kept = ok && done == n;
    if (!ok && next && next->n)
        log_warn("inbound rule %s: the next batch is dropped from memory after %zu of its %zu "
                 "records (they come again with the unacknowledged ones)",
                 f->rule->name, sent, next->n);
    held_clear(first);
    return ok;
}

static void feeder_main(void *arg)
{
    struct feeder *f = arg;
    struct importer *im = f->im;
    size_t max = im->settings.batch_max;
    struct held b[2] = {{calloc(max, sizeof(struct import_record *)), 0},
                        {calloc(max, sizeof(struct import_record *)), 0}};
    /* first: the loop's first batch (n > 0) or none; then: the one fetched
     * after it, queued behind it in the loop, or none */
    struct held *first = &b[0], *then = &b[1];
    struct source *src = NULL;
    uint64_t backoff = im->settings.retry_initial_ms, last_lag = 0;
    char err[256];
    bool kept;
    if (!b[0].recs || !b[1].recs)
        log_error("inbound rule %s: out of memory, the rule does not run", f->rule->name);
    while (b[0].recs && b[1].recs && !feeder_stopping(f)) {
        if (!src && !feeder_open(f, &src, &backoff))
            break;
        /* Ahead of a batch in the loop, only what the source has at hand:
         * waiting for more would hold back that batch's acknowledgement. */
        struct held *into = first->n ? then : first;
        int rc = f->ops->source_fetch(src, into->recs, max, &into->n,
                                      first->n ? 0 : FETCH_TIMEOUT_MS, err, sizeof err);
        bool ok = rc == CONNECTOR_OK;
        if (!ok)
            log_warn("inbound rule %s: fetch failed: %s", f->rule->name, err);
        if (ok && into->n && !feeder_stopping(f))
            feeder_hand(f, into);
        else
            held_clear(into);
        /* One acknowledgement per fetch, in order. A source read ahead
         * acknowledges the loop's first batch after fetching the next one;
         * the others (a PostgreSQL source commits its transaction with the
         * acknowledgement) before the next fetch. A failed fetch does not
         * keep the batch in the loop from being acknowledged. */
        if (first->n && (into == then || !f->ahead)) {
            ok &= feeder_settle(f, src, first, then, &last_lag, &kept);
            if (kept) {
                struct held *t = first;
                first = then;
                then = t;
            } else {
                held_clear(then); /* taken back: the source has it again */
            }
        }
        if (ok) {
            backoff = im->settings.retry_initial_ms;
        } else if (!feeder_stopping(f)) {
            /* nothing is in the loop now (settled or taken back); a new
             * reader gets what was not acknowledged again, after the
             * backoff */
            f->ops->source_close(src);
            src = NULL;
            uv_mutex_lock(&f->lock);
            f->st.reconnects++;
            bool stop = feeder_wait(f, backoff);
            uv_mutex_unlock(&f->lock);
            if (stop)
                break;
            const struct export_settings *set = &im->settings;
            backoff = backoff * 2 > set->retry_max_ms ? set->retry_max_ms : backoff * 2;
        }
        feeder_update_lag(f, src, &last_lag, first->n > 0);
    }
    /* Stopping: the committed prefix of what is in the loop is
     * acknowledged, in order; the rest is read again at the next start. */
    if (first->n && feeder_settle(f, src, first, then, &last_lag, &kept) && kept && then->n)
        feeder_settle(f, src, then, NULL, &last_lag, &kept);
    feeder_take_back(f);
    held_clear(first);
    held_clear(then);
    if (src)
        f->ops->source_close(src);
    free(b[0].recs);
    free(b[1].recs);
    uv_mutex_lock(&f->lock);
    f->exited = true;
    uv_mutex_unlock(&f->lock);
    /* f may be freed from here on: the loop joins and frees it */
    uv_async_send(&im->async);
}

/* ---- life cycle ---- */

static void generation_signal_stop(struct importer *im, struct generation *g)
{
    uint64_t now = uv_now(im->loop);
    for (unsigned i = 0; i < g->count; i++) {
        struct feeder *f = &g->feeders[i];
        uv_mutex_lock(&f->lock);
        f->stop = true;
        feeder_unblock(f, now);
        uv_cond_broadcast(&f->cond);
        uv_mutex_unlock(&f->lock);
    }
}

/* The counters of the rule of the same name in old (a reload keeps them;
 * the lag is measured again). */
static void feeder_inherit(struct feeder *f, const struct generation *old)
{
    for (unsigned i = 0; old && i < old->count; i++) {
        struct feeder *o = &old->feeders[i];
        if (strcmp(o->rule->name, f->rule->name) != 0)
            continue;
        uv_mutex_lock(&o->lock);
        f->st = o->st;
        uv_mutex_unlock(&o->lock);
        f->st.lag = 0;
        return;
    }
}

/* The feeders of the exporter's current rules, threads not started. */
static struct generation *generation_new(struct importer *im, const struct generation *old)
{
    struct generation *g = calloc(1, sizeof *g);
    if (!g) {
        log_error("importer: out of memory, inbound rules not started");
        return NULL;
    }
    const struct rule_set *set = exporter_hold_rules(im->x, &g->hold);
    unsigned n = set ? rules_count(set) : 0;
    g->feeders = calloc(n ? n : 1, sizeof *g->feeders);
    if (!g->feeders) {
        log_error("importer: out of memory, inbound rules not started");
        exporter_release_rules(im->x, g->hold);
        free(g);
        return NULL;
    }
    for (unsigned i = 0; i < n; i++) {
        const struct rule *r = rules_at(set, i);
        if (r->type != RULE_INBOUND || !r->enabled)
            continue;
        struct feeder *f = &g->feeders[g->count];
        f->im = im;
        f->rule = r;
        if (exporter_connector(im->x, r->connector, &f->ops, &f->impl) < 0 ||
            !f->ops->source_open) {
            log_error("inbound rule %s: connector %s cannot be a source", r->name, r->connector);
            memset(f, 0, sizeof *f);
            continue;
        }
        f->ahead = feeder_reads_ahead(r, f->ops);
        uv_mutex_init(&f->lock);
        uv_cond_init(&f->cond);
        feeder_inherit(f, old);
        g->count++;
    }
    return g;
}

/* Stop every thread and wait for it (importer_stop, importer_free). */
static void importer_join_all(struct importer *im)
{
    if (im->current) {
        generation_signal_stop(im, im->current);
        im->current->next = im->retiring;
        im->retiring = im->current;
        im->current = NULL;
    }
    for (struct generation *g = im->retiring; g; g = g->next) {
        generation_signal_stop(im, g);
        for (unsigned i = 0; i < g->count; i++) {
            struct feeder *f = &g->feeders[i];
            if (!f->started)
                continue;
            uv_thread_join(&f->thread);
            f->started = false;
        }
    }
    importer_reap(im);
}

int importer_new(uv_loop_t *loop, struct broker *b, struct exporter *x,
                 const struct export_settings *settings, struct importer **out, char *err,
                 size_t errlen)
{
    struct importer *im = calloc(1, sizeof *im);
    if (!im) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    im->loop = loop;
    im->broker = b;
    im->x = x;
    im->settings = *settings;
    uv_async_init(loop, &im->async, on_import_async);
    im->async.data = im;
    im->async_inited = true;
    uv_unref((uv_handle_t *)&im->async);
    im->current = generation_new(im, NULL);
    if (im->current)
        generation_start(im->current);
    *out = im;
    return 0;
}

void importer_rules_changed(struct importer *im)
{
    if (!im)
        return;
    struct generation *old = im->current;
    if (old) {
        generation_signal_stop(im, old);
        old->next = im->retiring;
        im->retiring = old;
    }
    im->current = generation_new(im, old);
    /* the new threads start from on_import_async once the old ones exited */
    uv_async_send(&im->async);
}

void importer_stop(struct importer *im)
{
    if (im)
        importer_join_all(im);
}

static void on_async_closed(uv_handle_t *h)
{
    struct importer *im = h->data;
    im->async_inited = false;
}

void importer_free(struct importer *im)
{
    if (!im)
        return;
    importer_join_all(im);
    if (im->async_inited) {
        /* libuv must be done with the handle before its memory goes */
        uv_close((uv_handle_t *)&im->async, on_async_closed);
        while (im->async_inited)
            uv_run(im->loop, UV_RUN_NOWAIT);
    }
    free(im);
}

void importer_log_stats(const struct importer *im)
{
    if (!im || !im->current)
        return;
    uint64_t now = uv_now(im->loop);
    for (unsigned i = 0; i < im->current->count; i++) {
        struct feeder *f = &im->current->feeders[i];
        uv_mutex_lock(&f->lock);
        struct import_stats st = f->st;
        if (f->blocked)
            st.blocked_ms += now - f->blocked_since; /* the wait going on */
        bool blocked = f->blocked;
        char blocker[sizeof f->blocker];
        memcpy(blocker, f->blocker, sizeof blocker);
        uv_mutex_unlock(&f->lock);
        uint64_t skipped = 0;
        for (int k = 0; k < SKIP_REASONS; k++)
            skipped += st.skipped[k];
        log_notice("stats: inbound rule %s connector=%s received=%" PRIu64 " published=%" PRIu64
                   " skipped=%" PRIu64 " (%s=%" PRIu64 " %s=%" PRIu64 " %s=%" PRIu64 " %s=%" PRIu64
                   ") not_acked=%" PRIu64 " reconnects=%" PRIu64 " waits=%" PRIu64
                   " blocked_ms=%" PRIu64 " lag=%" PRId64 "%s%s",
                   f->rule->name, f->rule->connector, st.received, st.published, skipped,
                   skip_names[0], st.skipped[0], skip_names[1], st.skipped[1], skip_names[2],
                   st.skipped[2], skip_names[3], st.skipped[3], st.ack_failed, st.reconnects,
                   st.waits, st.blocked_ms, st.lag, blocked ? " waiting: " : "",
                   blocked ? blocker : "");
    }
}
