/* The importer (see import.h). Thread side: fetch, hand over, wait until
 * the batch (or, when stopping or failing, a prefix of it) is committed,
 * acknowledge once. Loop side: validate, broker_inject with flow control,
 * stop at the first record a receiver has no room for and offer it again
 * when the broker signals room; note in on_flush how far the store has
 * committed. One mutex per importer thread guards its hand-over state. */
#include "import.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

/* One inbound rule's thread and its hand-over with the loop. */
struct feeder {
    struct importer *im;
    const struct rule *rule;
    const struct connector_ops *ops;
    struct connector *impl;
    uv_thread_t thread;
    bool started;

    uv_mutex_t lock; /* guards everything below */
    uv_cond_t cond;
    struct import_record **batch; /* handed to the loop; NULL when none */
    size_t batch_n;
    size_t next;      /* loop: batch[0, next) handled (published or skipped) */
    size_t committed; /* batch[0, committed) is in a committed store iteration */
    bool counted;     /* the batch is in st.received */
    bool failed;      /* the loop cannot go on with the batch (out of memory) */
    bool stop;
    bool exited; /* the thread is done with this struct */
    struct import_stats st;
    /* Waiting for room (loop side, under the lock too for the stats). A
     * wait starts when a record is refused and ends when the batch is all
     * handed over (records may trickle meanwhile, one per freed slot). */
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

/* The batch is handed over (or the rule stops): the wait ends; lock held. */
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

/* Publish the handed batch from f->next on, until a receiver has no room;
 * lock held. */
static void feeder_pump(struct feeder *f)
{
    if (f->stop || f->failed || !f->batch || f->next >= f->batch_n)
        return;
    if (!f->counted) {
        f->st.received += f->batch_n;
        f->counted = true;
    }
    uint64_t now = uv_now(f->im->loop);
    size_t from = f->next;
    while (f->next < f->batch_n) {
        int rc = import_one(f, f->batch[f->next]);
        if (rc < 0) {
            f->failed = true;
            break;
        }
        if (rc > 0) {
            if (!f->blocked) {
                f->blocked = true;
                f->blocked_since = f->progress_at = now;
                f->warn_at = now + STALL_WARN_MS;
                f->st.waits++;
                log_debug("inbound rule %s: waiting for room: %s", f->rule->name, f->blocker);
            } else if (f->next > from) {
                if (f->stalled)
                    log_notice("inbound rule %s: records go on after %" PRIu64 " s without room",
                               f->rule->name, (now - f->progress_at) / 1000);
                f->stalled = false;
                f->progress_at = now;
                f->warn_at = now + STALL_WARN_MS;
            }
            f->blocked_gen = broker_room_gen(f->im->broker);
            f->retry_at = now + RETRY_MS;
            return;
        }
        f->next++;
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
        if (f->batch && (f->committed < f->next || f->failed)) {
            /* what the loop handled so far is in the store's commit */
            f->committed = f->next;
            uv_cond_signal(&f->cond);
        }
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
            log_notice("inbound rule %s: reading from %s", f->rule->name, f->rule->connector);
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

/* Hand the batch to the loop and wait until all of it is committed, or
 * the loop failed, or the rule stops. Returns how many records from the
 * start are committed (published or skipped): the ones to acknowledge. */
static size_t feeder_hand_over(struct feeder *f, struct source *src, struct import_record **recs,
                               size_t n, uint64_t *last_lag)
{
    uv_mutex_lock(&f->lock);
    f->batch = recs;
    f->batch_n = n;
    f->next = f->committed = 0;
    f->counted = f->failed = false;
    uv_mutex_unlock(&f->lock);
    uv_async_send(&f->im->async);
    uv_mutex_lock(&f->lock);
    while (!f->stop && f->committed < n && !(f->failed && f->committed == f->next)) {
        /* a long wait (a slow subscriber) keeps the lag counter fresh */
        uv_cond_timedwait(&f->cond, &f->lock, (uint64_t)LAG_EVERY_MS * 1000000u);
        if (f->stop || f->committed == n || (f->failed && f->committed == f->next))
            break;
        uv_mutex_unlock(&f->lock);
        feeder_update_lag(f, src, last_lag, true);
        uv_mutex_lock(&f->lock);
    }
    size_t done = f->committed;
    f->batch = NULL;
    f->batch_n = f->next = f->committed = 0;
    uv_mutex_unlock(&f->lock);
    return done;
}

static void feeder_main(void *arg)
{
    struct feeder *f = arg;
    struct importer *im = f->im;
    size_t max = im->settings.batch_max;
    struct import_record **recs = calloc(max, sizeof *recs);
    struct source *src = NULL;
    uint64_t backoff = im->settings.retry_initial_ms, last_lag = 0;
    char err[256];
    while (recs && !f->stop) {
        if (!src && !feeder_open(f, &src, &backoff))
            break;
        size_t n = 0, done = 0;
        int rc = f->ops->source_fetch(src, recs, max, &n, FETCH_TIMEOUT_MS, err, sizeof err);
        bool ok = rc == CONNECTOR_OK;
        if (!ok)
            log_warn("inbound rule %s: fetch failed: %s", f->rule->name, err);
        if (ok && n) {
            /* One acknowledgement per fetch (a PostgreSQL source commits
             * its transaction with it): all of the batch, or the committed
             * prefix when stopping or failing; the rest is read again. */
            done = feeder_hand_over(f, src, recs, n, &last_lag);
            if (done && f->ops->source_ack(src, recs, done, err, sizeof err) != CONNECTOR_OK) {
                log_warn("inbound rule %s: %zu records not acknowledged (they come again): %s",
                         f->rule->name, done, err);
                uv_mutex_lock(&f->lock);
                f->st.ack_failed += done;
                uv_mutex_unlock(&f->lock);
                ok = false;
            } else if (done < n && !f->stop) {
                log_warn("inbound rule %s: %zu of %zu records not published (they come again)",
                         f->rule->name, n - done, n);
                ok = false;
            }
        }
        for (size_t i = 0; i < n; i++)
            import_record_free(recs[i]);
        if (ok) {
            backoff = im->settings.retry_initial_ms;
        } else if (!f->stop) {
            /* a new reader gets what was not acknowledged again, after the
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
        feeder_update_lag(f, src, &last_lag, false);
    }
    if (src)
        f->ops->source_close(src);
    free(recs);
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
