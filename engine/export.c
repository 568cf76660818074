/* The exporter's loop side: the broker hooks, rule generations, the spool,
 * per-rule counters and the hand-off to the connector threads (sink.c).
 * See export.h for the delivery guarantee. */
#include "export.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/buf.h"
#include "../common/log.h"
#include "export_internal.h"

/* Per rule name; survives reloads. matched = exported + queued + dropped. */
struct rule_stats {
    char *name;
    uint64_t matched, exported, queued, spilled, retried;
    uint64_t dropped_rejected, dropped_overflow, dropped_no_rule;
};

/* A rule set and what refers to it. Records hold a reference; a retired
 * generation is freed when no record in memory refers to it and every
 * sink's backlog has moved past the seqnos it handed out. */
struct generation {
    uint64_t id;
    struct rules_context ctx; /* the set refers to it until freed */
    struct rule_set *set;
    struct sink **sink_of;        /* by rule index */
    struct rule_stats **stats_of; /* by rule index */
    uint64_t refs;
    uint64_t *last_seqno;    /* per sink, set when retired */
    struct generation *next; /* in the retired list */
};

void export_settings_defaults(struct export_settings *s)
{
    s->memory_queue = 100000;
    s->spool_max = 10000000;
    s->overflow = OVERFLOW_DROP_OLDEST;
    s->batch_max = 1000;
    s->retry_initial_ms = 200;
    s->retry_max_ms = 30000;
    s->drain_timeout_ms = 5000;
}

/* ---- connectors as seen by the rules ---- */

static struct sink *sink_by_name(const struct exporter *x, const char *name)
{
    for (unsigned i = 0; i < x->sink_count; i++)
        if (strcmp(x->sinks[i].name, name) == 0)
            return &x->sinks[i];
    return NULL;
}

static const char *rctx_connector_type(void *ctx, const char *name)
{
    struct sink *sk = sink_by_name(ctx, name);
    return sk ? sk->ops->type : NULL;
}

static int rctx_compile(void *ctx, const struct rule *r, void **compiled, char *err, size_t errlen)
{
    struct sink *sk = sink_by_name(ctx, r->connector);
    if (!sk)
        return kv_error(err, errlen, r->options, NULL, "rule '%s': unknown connector '%s'", r->name,
                        r->connector);
    return sk->ops->compile(sk->impl, r, compiled, err, errlen);
}

static void rctx_release(void *ctx, const struct rule *r, void *compiled)
{
    struct sink *sk = sink_by_name(ctx, r->connector);
    if (sk && compiled)
        sk->ops->release(sk->impl, compiled);
}

/* ---- creation ---- */

static void on_done_async(uv_async_t *a);
static void sinks_close_handles(struct exporter *x);

static int sink_init(struct exporter *x, struct sink *sk, const struct connector_decl *d, char *err,
                     size_t errlen)
{
    sk->x = x;
    sk->ops = connector_find(d->type);
    if (!sk->ops)
        return kv_error(err, errlen, d->settings, NULL,
                        "connector '%s': unknown type '%s' (types: %s)", d->name, d->type,
                        connector_types());
    sk->name = strdup(d->name);
    if (!sk->name)
        return kv_error(err, errlen, d->settings, NULL, "out of memory");
    char where[128];
    snprintf(where, sizeof where, "connectors.%s", d->name);
    if (kv_check(d->settings, sk->ops->settings, where, err, errlen) < 0 ||
        sk->ops->create(d->name, d->settings, &sk->impl, err, errlen) < 0)
        return -1;
    uv_mutex_init(&sk->lock);
    uv_cond_init(&sk->cond);
    uv_async_init(x->loop, &sk->done_async, on_done_async);
    sk->done_async.data = sk;
    /* The broker's handles keep the loop running; this one must not keep it
     * from ending at shutdown (exporter_stop collects the rest). */
    uv_unref((uv_handle_t *)&sk->done_async);
    sk->state = SINK_IDLE;
    return 0;
}

int exporter_new(uv_loop_t *loop, const struct export_settings *settings,
                 const struct connector_decl *decls, unsigned ndecls, const char *spool_path,
                 enum store_sync sync, struct exporter **out, char *err, size_t errlen)
{
    struct exporter *x = calloc(1, sizeof *x);
    if (!x) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    x->loop = loop;
    x->settings = *settings;
    /* Generation ids are stored with spooled records: they must not repeat
     * across runs, or a record of an earlier run would pass for one counted
     * in this run. Start from the clock (ms << 16). */
    uv_timeval64_t tv;
    uv_gettimeofday(&tv);
    x->last_generation_id = ((uint64_t)tv.tv_sec * 1000 + (uint64_t)tv.tv_usec / 1000) << 16;
    x->sinks = calloc(ndecls ? ndecls : 1, sizeof *x->sinks);
    if (!x->sinks) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    for (unsigned i = 0; i < ndecls; i++) {
        x->sink_count = i + 1;
        if (sink_init(x, &x->sinks[i], &decls[i], err, errlen) < 0)
            goto fail;
    }
    char serr[256];
    if (spool_open(spool_path, sync, &x->spool, serr, sizeof serr) < 0) {
        snprintf(err, errlen, "export spool %s: %s", spool_path ? spool_path : ":memory:", serr);
        goto fail;
    }
    x->rctx.connectors = x;
    x->rctx.connector_type = rctx_connector_type;
    x->rctx.compile = rctx_compile;
    x->rctx.release = rctx_release;
    *out = x;
    return 0;
fail:
    exporter_free(x);
    return -1;
}

/* ---- generations ---- */

static struct rule_stats *stats_for(struct exporter *x, const char *name)
{
    struct rule_stats *st = hmap_get(&x->rule_stats, name);
    if (st)
        return st;
    st = calloc(1, sizeof *st);
    if (!st || !(st->name = strdup(name)) || hmap_put(&x->rule_stats, st->name, st) < 0) {
        if (st)
            free(st->name);
        free(st);
        return NULL;
    }
    return st;
}

static void generation_free(struct exporter *x, struct generation *g)
{
    if (!g)
        return;
    rules_set_free(g->set);
    free(g->sink_of);
    free(g->stats_of);
    free(g->last_seqno);
    free(g);
}

static int build_generation(struct exporter *x, const struct kvlist *items,
                            const struct export_resources *res, struct generation **out, char *err,
                            size_t errlen)
{
    struct generation *g = calloc(1, sizeof *g);
    if (!g) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    g->ctx = x->rctx;
    g->ctx.check_declared = res->check_declared;
    g->ctx.parent_topics = res->parent_topics;
    g->ctx.parent_topic_count = res->parent_topic_count;
    g->ctx.groups = res->groups;
    g->ctx.group_count = res->group_count;
    g->ctx.max_rules = res->max_rules;
    if (rules_build(items, &g->ctx, &g->set, err, errlen) < 0) {
        free(g);
        return -1;
    }
    unsigned n = rules_count(g->set);
    g->sink_of = calloc(n + 1, sizeof *g->sink_of);
    g->stats_of = calloc(n + 1, sizeof *g->stats_of);
    g->last_seqno = calloc(x->sink_count + 1, sizeof *g->last_seqno);
    if (!g->sink_of || !g->stats_of || !g->last_seqno)
        goto oom;
    for (unsigned i = 0; i < n; i++) {
        const struct rule *r = rules_at(g->set, i);
        g->sink_of[i] = sink_by_name(x, r->connector);
        if (!(g->stats_of[i] = stats_for(x, r->name)))
            goto oom;
    }
    *out = g;
    return 0;
oom:
    snprintf(err, errlen, "out of memory");
    generation_free(x, g);
    return -1;
}

int exporter_check_rules(struct exporter *x, const struct kvlist *items,
                         const struct export_resources *res, char *err, size_t errlen)
{
    struct generation *g;
    if (build_generation(x, items, res, &g, err, errlen) < 0)
        return -1;
    generation_free(x, g);
    return 0;
}

/* Free retired generations nothing refers to any more. */
static void generations_collect(struct exporter *x)
{
    struct generation **pp = &x->retired;
    while (*pp) {
        struct generation *g = *pp;
        bool busy = g->refs > 0;
        for (unsigned i = 0; i < x->sink_count && !busy; i++)
            busy = x->sinks[i].backlog && x->sinks[i].load_cursor <= g->last_seqno[i];
        if (busy) {
            pp = &g->next;
            continue;
        }
        *pp = g->next;
        log_info("rules generation %" PRIu64 " released", g->id);
        generation_free(x, g);
    }
}

int exporter_set_rules(struct exporter *x, const struct kvlist *items,
                       const struct export_resources *res, char *err, size_t errlen)
{
    struct generation *g;
    if (build_generation(x, items, res, &g, err, errlen) < 0)
        return -1;
    g->id = ++x->last_generation_id;
    struct generation *old = x->current;
    x->current = g;
    if (old) {
        for (unsigned i = 0; i < x->sink_count; i++)
            old->last_seqno[i] = x->sinks[i].next_seqno;
        old->next = x->retired;
        x->retired = old;
        generations_collect(x);
    }
    log_notice("rules: %u rules in force (generation %" PRIu64 ")", rules_count(g->set), g->id);
    return 0;
}

const struct rule_set *exporter_hold_rules(struct exporter *x, void **hold)
{
    struct generation *g = x->current;
    *hold = g;
    if (!g)
        return NULL;
    g->refs++;
    return g->set;
}

void exporter_release_rules(struct exporter *x, void *hold)
{
    struct generation *g = hold;
    if (!g)
        return;
    g->refs--;
    if (x->retired)
        generations_collect(x);
}

int exporter_connector(const struct exporter *x, const char *name, const struct connector_ops **ops,
                       struct connector **impl)
{
    struct sink *sk = sink_by_name(x, name);
    if (!sk)
        return -1;
    *ops = sk->ops;
    *impl = sk->impl;
    return 0;
}

/* ---- records in and out ---- */

static struct generation *generation_by_id(struct exporter *x, uint64_t id)
{
    if (x->current && x->current->id == id)
        return x->current;
    for (struct generation *g = x->retired; g; g = g->next)
        if (g->id == id)
            return g;
    return NULL;
}

static void record_release(struct exporter *x, struct export_record *rec)
{
    struct generation *g = rec->engine_ref;
    if (g)
        g->refs--;
    export_record_free(rec);
}

static struct rule_stats *record_stats(const struct export_record *rec)
{
    const struct generation *g = rec->engine_ref;
    return g && rec->rule ? g->stats_of[rec->rule->index] : NULL;
}

struct dropped_ctx {
    struct exporter *x;
    uint64_t seqno; /* of the record dropped */
};

/* The record pushed out of a full backlog: count it against its own rule. */
static int on_dropped_record(void *ctx, struct export_record *rec, const char *rule_name,
                             uint64_t generation)
{
    struct dropped_ctx *dc = ctx;
    struct rule_stats *st = stats_for(dc->x, rule_name ? rule_name : "-");
    dc->seqno = rec->seqno;
    if (st) {
        st->dropped_overflow++;
        if (generation_by_id(dc->x, generation))
            st->queued--; /* matched in this run */
        else
            st->matched++;
    }
    export_record_free(rec);
    return 0;
}

/* Backlog overflow: make room for one more record in the spool. false when
 * the new record is to be dropped instead. */
static bool backlog_make_room(struct exporter *x, struct sink *sk, struct rule_stats *st)
{
    if (sk->backlog < x->settings.spool_max)
        return true;
    if (x->settings.overflow == OVERFLOW_DROP_NEWEST) {
        st->dropped_overflow++;
        log_warn("connector %s: backlog full (%" PRIu64 "), new record dropped", sk->name,
                 x->settings.spool_max);
        return false;
    }
    struct dropped_ctx dc = {x, 0};
    unsigned loaded = 0;
    if (spool_load(x->spool, sk->name, sk->load_cursor, 1, on_dropped_record, &dc, &loaded) < 0 ||
        loaded == 0) {
        log_warn("connector %s: %" PRIu64 " backlog records not found in the spool", sk->name,
                 sk->backlog);
        sk->backlog = 0;
        return true;
    }
    /* Seqnos between the cursor and the record dropped have no record in
     * the spool (the load passed them): one range keeps the spool's list of
     * deleted ranges short. */
    spool_delete_range(x->spool, sk->name, sk->load_cursor, dc.seqno);
    sk->load_cursor = dc.seqno + 1;
    sk->backlog--;
    log_warn("connector %s: backlog full (%" PRIu64 "), oldest record dropped", sk->name,
             x->settings.spool_max);
    return true;
}

/* Queue a matched record for its sink; takes ownership of rec. */
static void submit(struct exporter *x, struct generation *g, const struct rule *r,
                   struct export_record *rec, bool durable)
{
    struct sink *sk = g->sink_of[r->index];
    struct rule_stats *st = g->stats_of[r->index];
    rec->rule = r;
    rec->engine_ref = g;
    rec->seqno = ++sk->next_seqno;
    st->matched++;
    st->queued++;
    g->refs++;
    bool to_memory = sk->backlog == 0 && sk->in_memory < x->settings.memory_queue;
    if (durable || !to_memory) {
        if (!to_memory && !backlog_make_room(x, sk, st)) {
            st->queued--;
            record_release(x, rec);
            return;
        }
        if (spool_put(x->spool, sk->name, rec, r->name, g->id) < 0)
            log_error("connector %s: spool write failed; record %" PRIu64 " is held in memory only",
                      sk->name, rec->seqno);
        else
            rec->spooled = true;
    }
    if (to_memory || !rec->spooled) {
        sk->in_memory++;
        record_list_push(&sk->outbox, rec); /* to the thread at on_flush */
        return;
    }
    /* Only in the spool: loaded back when the sink catches up. */
    if (sk->backlog++ == 0)
        sk->load_cursor = rec->seqno;
    st->spilled++;
    record_release(x, rec);
}

void exporter_on_message(void *ctx, const struct message *m, const char *client_id)
{
    struct exporter *x = ctx;
    struct generation *g = x->current;
    if (!g)
        return;
    const struct rule *r = rules_outbound_for(g->set, m->topic, m->topic_len);
    if (!r)
        return; /* the common case: no payload touched, nothing allocated */
    struct export_record *rec =
        export_record_new(RECORD_MESSAGE, m->id, m->time_ms, m->qos, client_id, m->topic,
                          m->payload, m->payload_len, NULL, NULL, NULL);
    if (!rec) {
        log_error("rule %s: out of memory, message %016" PRIx64 " not exported", r->name, m->id);
        return;
    }
    submit(x, g, r, rec, m->qos > 0);
}

/* JSON string with the escapes RFC 8259 requires. */
static void json_string(struct buf *b, const char *s)
{
    buf_append_u8(b, '"');
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') {
            buf_append_u8(b, '\\');
            buf_append_u8(b, ch);
        } else if (ch < 0x20) {
            char esc[8];
            snprintf(esc, sizeof esc, "\\u%04x", ch);
            buf_append(b, esc, 6);
        } else {
            buf_append_u8(b, ch);
        }
    }
    buf_append_u8(b, '"');
}

/* {"clientId":...,"time":...,"eventType":...,"channelId":...,"clientIp":...,"seq":...} */
static int status_body(struct buf *b, const struct client_event *ev)
{
    char num[32];
    buf_append(b, "{\"clientId\":", 12);
    json_string(b, ev->client_id);
    snprintf(num, sizeof num, ",\"time\":%" PRId64, ev->time_ms);
    buf_append(b, num, strlen(num));
    buf_append(b, ",\"eventType\":", 13);
    json_string(b, client_event_name(ev->type));
    buf_append(b, ",\"channelId\":", 13);
    json_string(b, ev->channel_id);
    buf_append(b, ",\"clientIp\":", 12);
    json_string(b, ev->client_ip);
    snprintf(num, sizeof num, ",\"seq\":%" PRIu64 "}", ev->seq);
    return buf_append(b, num, strlen(num));
}

void exporter_on_client_event(void *ctx, const struct client_event *ev)
{
    struct exporter *x = ctx;
    struct generation *g = x->current;
    if (!g)
        return;
    const char *sep = strstr(ev->client_id, "@@@");
    if (!sep)
        return; /* no group, no status rule */
    const struct rule *r = rules_status_for(g->set, ev->client_id, (size_t)(sep - ev->client_id));
    if (!r)
        return;
    struct buf body = {0};
    struct export_record *rec = NULL;
    if (status_body(&body, ev) == 0)
        rec = export_record_new(RECORD_STATUS, ev->seq, ev->time_ms, 0, ev->client_id, NULL,
                                body.data, (uint32_t)body.len, client_event_name(ev->type),
                                ev->channel_id, ev->client_ip);
    buf_free(&body);
    if (!rec) {
        log_error("rule %s: out of memory, %s event of %s not exported", r->name,
                  client_event_name(ev->type), ev->client_id);
        return;
    }
    submit(x, g, r, rec, true);
}

/* Once per loop iteration: the spool's commit, then the iteration's
 * records to the threads, one hand-over per connector. */
void exporter_on_flush(void *ctx)
{
    struct exporter *x = ctx;
    if (spool_commit(x->spool) < 0)
        log_error("export spool commit failed");
    for (unsigned i = 0; i < x->sink_count; i++)
        sink_push_list(&x->sinks[i], &x->sinks[i].outbox);
}

/* ---- back from the threads ---- */

struct load_ctx {
    struct exporter *x;
    struct sink *sk;
};

static const struct rule *rule_by_name(const struct rule_set *set, const char *name)
{
    for (unsigned i = 0; i < rules_count(set); i++)
        if (strcmp(rules_at(set, i)->name, name) == 0)
            return rules_at(set, i);
    return NULL;
}

/* A record loaded from the spool: find its rule (in the generation it was
 * matched in, or after a restart in the current one by name). */
static int on_spool_record(void *ctx, struct export_record *rec, const char *rule_name,
                           uint64_t generation)
{
    struct load_ctx *lc = ctx;
    struct exporter *x = lc->x;
    struct sink *sk = lc->sk;
    uint64_t passed = sk->load_cursor; /* from here to rec: no record */
    sk->load_cursor = rec->seqno + 1;
    sk->backlog--;
    struct generation *g = generation_by_id(x, generation);
    /* A record of an earlier run was not counted as matched in this one:
     * count it now, so that matched = exported + queued + dropped holds. */
    bool earlier_run = g == NULL;
    if (!g)
        g = x->current;
    const struct rule *r = g && rule_name ? rule_by_name(g->set, rule_name) : NULL;
    if (r && earlier_run) {
        g->stats_of[r->index]->matched++;
        g->stats_of[r->index]->queued++;
    }
    if (!r || g->sink_of[r->index] != sk) {
        struct rule_stats *st = stats_for(x, rule_name ? rule_name : "-");
        if (st) {
            st->dropped_no_rule++;
            if (earlier_run)
                st->matched++;
            else
                st->queued--;
        }
        log_warn("connector %s: record %" PRIu64 " of rule '%s' dropped: the rule no longer "
                 "exists for this connector",
                 sk->name, rec->seqno, rule_name ? rule_name : "?");
        spool_delete_range(x->spool, sk->name, passed, rec->seqno);
        export_record_free(rec);
        return 0;
    }
    rec->rule = r;
    rec->engine_ref = g;
    rec->spooled = true;
    g->refs++;
    sk->in_memory++;
    record_list_push(&sk->outbox, rec);
    return 0;
}

/* Load backlog records from the spool into the outbox as room allows. */
static void sink_fill(struct exporter *x, struct sink *sk)
{
    while (sk->backlog && sk->in_memory < x->settings.memory_queue) {
        uint64_t room = x->settings.memory_queue - sk->in_memory;
        unsigned max = room > 1000 ? 1000 : (unsigned)room;
        struct load_ctx lc = {x, sk};
        unsigned loaded = 0;
        if (spool_load(x->spool, sk->name, sk->load_cursor, max, on_spool_record, &lc, &loaded) <
            0) {
            log_error("connector %s: cannot read the spool", sk->name);
            return;
        }
        if (loaded == 0) {
            /* records went missing (files deleted by hand?): forget them */
            log_warn("connector %s: %" PRIu64 " backlog records not found in the spool", sk->name,
                     sk->backlog);
            sk->backlog = 0;
        }
    }
}

/* Move backlog records from the spool into memory as room allows, and
 * hand them (behind what the outbox holds) to the thread. */
static void sink_refill(struct exporter *x, struct sink *sk)
{
    sink_fill(x, sk);
    sink_push_list(sk, &sk->outbox);
}

static void on_done_async(uv_async_t *a)
{
    struct sink *sk = a->data;
    struct exporter *x = sk->x;
    uv_mutex_lock(&sk->lock);
    struct record_list done = sk->done;
    sk->done.head = sk->done.tail = NULL;
    sk->done.count = 0;
    uv_mutex_unlock(&sk->lock);
    uint64_t ack_upto = 0;
    struct export_record *rec;
    while ((rec = record_list_pop(&done)) != NULL) {
        sk->in_memory--;
        struct rule_stats *st = record_stats(rec);
        if (rec->outcome == OUTCOME_PENDING) {
            /* stopped before export: it stays in the spool if it was there */
            record_release(x, rec);
            continue;
        }
        if (st) {
            st->queued--;
            st->retried += rec->attempts > 1 ? rec->attempts - 1u : 0u;
            if (rec->outcome == OUTCOME_ACKED)
                st->exported++;
            else
                st->dropped_rejected++;
        }
        if (rec->spooled && rec->seqno > ack_upto)
            ack_upto = rec->seqno;
        record_release(x, rec);
    }
    if (ack_upto && spool_ack(x->spool, sk->name, ack_upto) < 0)
        log_error("connector %s: spool delete failed (records may be exported twice)", sk->name);
    sink_refill(x, sk);
    if (x->retired)
        generations_collect(x);
}

/* ---- start, stop ---- */

int exporter_start(struct exporter *x, char *err, size_t errlen)
{
    for (unsigned i = 0; i < x->sink_count; i++) {
        struct sink *sk = &x->sinks[i];
        uint64_t count, first, high;
        if (spool_range(x->spool, sk->name, &count, &first, NULL) < 0 ||
            spool_seqno_high(x->spool, sk->name, &high) < 0) {
            snprintf(err, errlen, "connector %s: cannot read the export spool", sk->name);
            return -1;
        }
        sk->backlog = count;
        sk->load_cursor = first;
        sk->next_seqno = high; /* seqnos never repeat, also across runs */
        if (count)
            log_notice("connector %s: %" PRIu64 " records from the spool to export", sk->name,
                       count);
        sink_refill(x, sk);
        if (uv_thread_create(&sk->thread, sink_thread_main, sk) != 0) {
            snprintf(err, errlen, "connector %s: cannot start its thread", sk->name);
            return -1;
        }
        sk->thread_started = true;
    }
    x->started = true;
    return 0;
}

void exporter_stop(struct exporter *x)
{
    if (!x || !x->started)
        return;
    uint64_t deadline = uv_hrtime() + (uint64_t)x->settings.drain_timeout_ms * 1000000u;
    for (unsigned i = 0; i < x->sink_count; i++) {
        struct sink *sk = &x->sinks[i];
        sink_push_list(sk, &sk->outbox);
        uv_mutex_lock(&sk->lock);
        sk->draining = true;
        uv_cond_broadcast(&sk->cond);
        while (!sk->finished && uv_hrtime() < deadline)
            uv_cond_timedwait(&sk->cond, &sk->lock, 50000000u);
        sk->stop = true;
        uv_cond_broadcast(&sk->cond);
        uv_mutex_unlock(&sk->lock);
    }
    for (unsigned i = 0; i < x->sink_count; i++) {
        struct sink *sk = &x->sinks[i];
        if (sk->thread_started)
            uv_thread_join(&sk->thread);
        sk->thread_started = false;
        on_done_async(&sk->done_async); /* account for what came back */
    }
    spool_commit(x->spool);
    x->started = false;
}

static void free_stats(const char *key, void *value, void *ctx)
{
    struct rule_stats *st = value;
    free(st->name);
    free(st);
}

static void sink_drain_lists(struct sink *sk)
{
    struct export_record *rec;
    while ((rec = record_list_pop(&sk->outbox)) != NULL)
        record_release(sk->x, rec);
    while ((rec = record_list_pop(&sk->todo)) != NULL)
        record_release(sk->x, rec);
    while ((rec = record_list_pop(&sk->done)) != NULL)
        record_release(sk->x, rec);
}

static void on_async_closed(uv_handle_t *h)
{
    struct sink *sk = h->data;
    sk->x->closing--;
}

/* Close the sinks' async handles and let libuv finish with them before
 * their memory goes (the loop has ended; nothing else runs on it). */
static void sinks_close_handles(struct exporter *x)
{
    for (unsigned i = 0; i < x->sink_count; i++) {
        struct sink *sk = &x->sinks[i];
        if (sk->done_async.loop && !uv_is_closing((uv_handle_t *)&sk->done_async)) {
            x->closing++;
            uv_close((uv_handle_t *)&sk->done_async, on_async_closed);
        }
    }
    while (x->closing)
        uv_run(x->loop, UV_RUN_NOWAIT);
}

static void sink_free(struct sink *sk)
{
    if (sk->ops && sk->impl)
        sk->ops->destroy(sk->impl);
    if (sk->ops && sk->name && sk->done_async.loop) {
        uv_mutex_destroy(&sk->lock);
        uv_cond_destroy(&sk->cond);
    }
    free(sk->name);
}

void exporter_free(struct exporter *x)
{
    if (!x)
        return;
    exporter_stop(x);
    /* Records first (they refer to rules), then the rule sets (they release
     * compiled targets through the connectors), then the connectors. */
    for (unsigned i = 0; i < x->sink_count; i++)
        sink_drain_lists(&x->sinks[i]);
    generation_free(x, x->current);
    while (x->retired) {
        struct generation *g = x->retired;
        x->retired = g->next;
        generation_free(x, g);
    }
    sinks_close_handles(x);
    for (unsigned i = 0; i < x->sink_count; i++)
        sink_free(&x->sinks[i]);
    free(x->sinks);
    spool_close(x->spool);
    hmap_foreach(&x->rule_stats, free_stats, NULL);
    hmap_free(&x->rule_stats);
    free(x);
}

void exporter_log_stats(const struct exporter *x)
{
    for (unsigned i = 0; i < x->sink_count; i++) {
        struct sink *sk = &x->sinks[i];
        uv_mutex_lock(&sk->lock);
        log_notice("stats: connector %s type=%s state=%s queued_memory=%" PRIu64 " backlog=%" PRIu64
                   " exports_failed=%" PRIu64 " records_retried=%" PRIu64
                   " records_rejected=%" PRIu64 " reconnects=%" PRIu64 "%s%s",
                   sk->name, sk->ops->type, sink_state_name(sk->state), sk->in_memory, sk->backlog,
                   sk->exports_failed, sk->records_retried, sk->records_rejected, sk->reconnects,
                   sk->last_error[0] ? " last_error=" : "", sk->last_error);
        uv_mutex_unlock(&sk->lock);
    }
    if (!x->current)
        return;
    for (unsigned i = 0; i < rules_count(x->current->set); i++) {
        const struct rule *r = rules_at(x->current->set, i);
        const struct rule_stats *st = x->current->stats_of[i];
        log_notice("stats: rule %s type=%s connector=%s matched=%" PRIu64 " exported=%" PRIu64
                   " queued=%" PRIu64 " dropped=%" PRIu64 " (rejected=%" PRIu64 " overflow=%" PRIu64
                   " no_rule=%" PRIu64 ") retried=%" PRIu64 " spilled=%" PRIu64,
                   r->name, rule_type_name(r->type), r->connector, st->matched, st->exported,
                   st->queued, st->dropped_rejected + st->dropped_overflow + st->dropped_no_rule,
                   st->dropped_rejected, st->dropped_overflow, st->dropped_no_rule, st->retried,
                   st->spilled);
    }
}
