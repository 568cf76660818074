/* The importer (see import.h). Thread side: fetch, hand over, wait for the
 * commit, acknowledge. Loop side: validate, broker_inject, mark committed
 * in on_flush. One mutex per importer thread guards its hand-over state. */
#include "import.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/log.h"

#define FETCH_TIMEOUT_MS 500
#define LAG_EVERY_MS 5000

enum skip_reason { SKIP_QOS, SKIP_SIZE, SKIP_TOPIC, SKIP_CLIENT, SKIP_REASONS };
static const char *const skip_names[SKIP_REASONS] = {"bad_qos", "too_large", "bad_topic",
                                                     "bad_client_id"};

struct import_stats {
    uint64_t received, published, skipped[SKIP_REASONS], ack_failed, reconnects;
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
    struct import_record **batch; /* handed to the loop */
    size_t batch_n;
    bool handed;    /* batch waits for the loop */
    bool published; /* the loop published it; waits for the commit */
    bool committed; /* the store committed: acknowledge */
    bool failed;    /* the loop could not take the batch: do not acknowledge */
    bool stop;
    struct import_stats st;
};

struct importer {
    uv_loop_t *loop;
    struct broker *broker;
    struct exporter *x;
    struct export_settings settings;
    void *hold; /* the rule generation the feeders use */
    struct feeder *feeders;
    unsigned feeder_count;
    uv_async_t async;
    bool async_inited;
    uint32_t max_message_size;
};

/* ---- loop side ---- */

/* Validate one record and publish it; sets outcome and reason. */
static void import_one(struct feeder *f, struct import_record *rec)
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
    int rc =
        broker_inject(f->im->broker, topic, (size_t)n, rec->payload, rec->payload_len, qos,
                      rec->client_id && rec->client_id[0] ? rec->client_id : NULL, why, sizeof why);
    if (rc == INJECT_NO_MEMORY) {
        /* Not the record's fault: do not acknowledge the batch, the source
         * delivers it again. */
        f->failed = true;
        log_error("inbound rule %s: out of memory, batch will be read again", r->name);
        return;
    }
    if (rc < 0) {
        reason = rc == INJECT_TOO_LARGE    ? SKIP_SIZE
                 : rc == INJECT_BAD_TARGET ? SKIP_CLIENT
                                           : SKIP_TOPIC;
        goto skip;
    }
    rec->outcome = IMPORT_PUBLISHED;
    f->st.published++;
    return;
skip:
    rec->outcome = IMPORT_SKIPPED;
    snprintf(rec->reason, sizeof rec->reason, "%.95s", why);
    f->st.skipped[reason]++;
    log_warn("inbound rule %s: record %s skipped: %s", r->name, rec->id ? rec->id : "?", why);
}

static void on_import_async(uv_async_t *a)
{
    struct importer *im = a->data;
    for (unsigned i = 0; i < im->feeder_count; i++) {
        struct feeder *f = &im->feeders[i];
        uv_mutex_lock(&f->lock);
        if (f->handed && !f->published) {
            f->st.received += f->batch_n;
            for (size_t k = 0; k < f->batch_n; k++)
                import_one(f, f->batch[k]);
            f->published = true;
        }
        uv_mutex_unlock(&f->lock);
    }
}

void importer_on_flush(struct importer *im)
{
    if (!im)
        return;
    for (unsigned i = 0; i < im->feeder_count; i++) {
        struct feeder *f = &im->feeders[i];
        uv_mutex_lock(&f->lock);
        if (f->published && !f->committed) {
            f->committed = true;
            uv_cond_signal(&f->cond);
        }
        uv_mutex_unlock(&f->lock);
    }
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
            log_notice("inbound rule %s: reading from %s", f->rule->name, f->rule->connector);
            *backoff = set->retry_initial_ms;
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

/* Hand the batch to the loop and wait until it is committed. false when
 * stopped first (the batch is then not acknowledged). */
static bool feeder_hand_over(struct feeder *f, struct import_record **recs, size_t n)
{
    uv_mutex_lock(&f->lock);
    f->batch = recs;
    f->batch_n = n;
    f->handed = true;
    f->published = f->committed = f->failed = false;
    uv_mutex_unlock(&f->lock);
    uv_async_send(&f->im->async);
    uv_mutex_lock(&f->lock);
    while (!f->stop && !f->committed)
        uv_cond_wait(&f->cond, &f->lock);
    bool ok = f->committed && !f->failed;
    f->handed = f->published = f->committed = false;
    f->batch = NULL;
    f->batch_n = 0;
    uv_mutex_unlock(&f->lock);
    return ok;
}

static void feeder_main(void *arg)
{
    struct feeder *f = arg;
    size_t max = f->im->settings.batch_max;
    struct import_record **recs = calloc(max, sizeof *recs);
    struct source *src = NULL;
    uint64_t backoff = f->im->settings.retry_initial_ms, last_lag = 0;
    char err[256];
    while (recs && !f->stop) {
        if (!src && !feeder_open(f, &src, &backoff))
            break;
        size_t n = 0;
        int rc = f->ops->source_fetch(src, recs, max, &n, FETCH_TIMEOUT_MS, err, sizeof err);
        bool ok = rc == CONNECTOR_OK;
        if (ok && n)
            ok = feeder_hand_over(f, recs, n) &&
                 f->ops->source_ack(src, recs, n, err, sizeof err) == CONNECTOR_OK;
        else if (!ok)
            log_warn("inbound rule %s: fetch failed: %s", f->rule->name, err);
        if (!ok && n && !f->stop) {
            log_warn("inbound rule %s: %zu records not acknowledged (they come again): %s",
                     f->rule->name, n, err);
            uv_mutex_lock(&f->lock);
            f->st.ack_failed += n;
            uv_mutex_unlock(&f->lock);
        }
        for (size_t i = 0; i < n; i++)
            import_record_free(recs[i]);
        if (!ok && !f->stop) {
            f->ops->source_close(src);
            src = NULL;
        }
        if (src && f->ops->source_lag && uv_hrtime() / 1000000u - last_lag >= LAG_EVERY_MS) {
            int64_t lag = f->ops->source_lag(src);
            last_lag = uv_hrtime() / 1000000u;
            uv_mutex_lock(&f->lock);
            f->st.lag = lag;
            uv_mutex_unlock(&f->lock);
        }
    }
    if (src)
        f->ops->source_close(src);
    free(recs);
}

/* ---- life cycle ---- */

static void feeders_stop(struct importer *im)
{
    for (unsigned i = 0; i < im->feeder_count; i++) {
        struct feeder *f = &im->feeders[i];
        uv_mutex_lock(&f->lock);
        f->stop = true;
        uv_cond_broadcast(&f->cond);
        uv_mutex_unlock(&f->lock);
    }
    for (unsigned i = 0; i < im->feeder_count; i++) {
        struct feeder *f = &im->feeders[i];
        if (f->started)
            uv_thread_join(&f->thread);
        uv_mutex_destroy(&f->lock);
        uv_cond_destroy(&f->cond);
    }
    free(im->feeders);
    im->feeders = NULL;
    im->feeder_count = 0;
    exporter_release_rules(im->x, im->hold);
    im->hold = NULL;
}

static void feeders_start(struct importer *im)
{
    const struct rule_set *set = exporter_hold_rules(im->x, &im->hold);
    unsigned n = set ? rules_count(set) : 0;
    im->feeders = calloc(n ? n : 1, sizeof *im->feeders);
    if (!im->feeders) {
        log_error("importer: out of memory, inbound rules not started");
        return;
    }
    for (unsigned i = 0; i < n; i++) {
        const struct rule *r = rules_at(set, i);
        if (r->type != RULE_INBOUND || !r->enabled)
            continue;
        struct feeder *f = &im->feeders[im->feeder_count];
        f->im = im;
        f->rule = r;
        if (exporter_connector(im->x, r->connector, &f->ops, &f->impl) < 0 ||
            !f->ops->source_open) {
            log_error("inbound rule %s: connector %s cannot be a source", r->name, r->connector);
            continue;
        }
        uv_mutex_init(&f->lock);
        uv_cond_init(&f->cond);
        im->feeder_count++;
        f->started = uv_thread_create(&f->thread, feeder_main, f) == 0;
        if (!f->started)
            log_error("inbound rule %s: cannot start its thread", r->name);
    }
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
    feeders_start(im);
    *out = im;
    return 0;
}

void importer_rules_changed(struct importer *im)
{
    if (!im)
        return;
    feeders_stop(im);
    feeders_start(im);
}

void importer_stop(struct importer *im)
{
    if (im)
        feeders_stop(im);
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
    feeders_stop(im);
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
    if (!im)
        return;
    for (unsigned i = 0; i < im->feeder_count; i++) {
        struct feeder *f = &im->feeders[i];
        uv_mutex_lock(&f->lock);
        struct import_stats st = f->st;
        uv_mutex_unlock(&f->lock);
        uint64_t skipped = 0;
        for (int k = 0; k < SKIP_REASONS; k++)
            skipped += st.skipped[k];
        log_notice("stats: inbound rule %s connector=%s received=%" PRIu64 " published=%" PRIu64
                   " skipped=%" PRIu64 " (%s=%" PRIu64 " %s=%" PRIu64 " %s=%" PRIu64 " %s=%" PRIu64
                   ") not_acked=%" PRIu64 " reconnects=%" PRIu64 " lag=%" PRId64,
                   f->rule->name, f->rule->connector, st.received, st.published, skipped,
                   skip_names[0], st.skipped[0], skip_names[1], st.skipped[1], skip_names[2],
                   st.skipped[2], skip_names[3], st.skipped[3], st.ack_failed, st.reconnects,
                   st.lag);
    }
}
