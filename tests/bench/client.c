/* Engine-independent client logic: life cycle, the payload header written
 * by publishers and the checks subscribers apply to every delivery.
 *
 * A delivery of (publisher p, seq s) is a duplicate if bit p * count + s of
 * the subscriber's bitmap is already set, and out of order if the
 * subscriber already had a higher seq from p (MQTT keeps the order of one
 * publisher's messages to one subscriber at one QoS). In offline mode a
 * subscriber gets only its own messages, numbered by round (see
 * offline_rounds()), and the bitmap and the order are by round. Latency is
 * the delivery time minus the send time in the header, both
 * CLOCK_MONOTONIC. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"

struct bench_header {
    uint32_t magic;
    uint32_t pub;
    uint32_t seq;
    uint32_t reserved;
    int64_t sent_ns;
};
_Static_assert(sizeof(struct bench_header) == BENCH_HEADER_SIZE, "payload header layout");

int64_t bench_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Subscription filter and delivery bookkeeping of a subscriber: PREFIX/#
 * and a bit per (publisher, seq), or in offline mode its own topic
 * PREFIX/o/<index> and a bit per round. */
static int client_init_sub(struct client *c, const struct bench_opts *o)
{
    uint64_t bits =
        o->offline ? offline_rounds(o, c->index) : (uint64_t)o->publishers * (uint64_t)o->count;
    size_t words = (size_t)((bits + 63) / 64);
    c->seen = calloc(words ? words : 1, sizeof *c->seen);
    c->next_expected = calloc((size_t)o->publishers + 1, sizeof *c->next_expected);
    if (o->offline)
        snprintf(c->topic, c->topic_cap, "%s/o/%d", o->topic, c->index);
    else
        snprintf(c->topic, c->topic_cap, "%s/#", o->topic);
    return c->seen && c->next_expected ? 0 : -1;
}

static int client_init_role(struct client *c, const struct bench_opts *o)
{
    if (c->role == ROLE_IDLE)
        return 0;
    /* room for "/o/" and a client number */
    c->topic_cap = strlen(o->topic) + 16;
    c->topic = malloc(c->topic_cap);
    if (!c->topic)
        return -1;
    if (c->role == ROLE_SUB)
        return client_init_sub(c, o);
    c->payload = malloc((size_t)o->size);
    if (!c->payload)
        return -1;
    memset(c->payload, 'x', (size_t)o->size);
    snprintf(c->topic, c->topic_cap, "%s/%d", o->topic, c->index);
    return 0;
}

struct client *client_create(const struct bench_opts *o, enum client_role role, int index)
{
    struct client *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->role = role;
    c->index = index;
    c->fd = -1;
    c->next_id = 1;
    c->clean = true;
    c->subscribe = true;
    snprintf(c->id, sizeof c->id, "%s%ld-%c%d", o->id_prefix, (long)getpid(), "spi"[role], index);
    if (client_init_role(c, o) < 0)
        goto fail;
    if (o->engine == ENGINE_MOSQ && engine_mosq_client_init(c, o) < 0)
        goto fail;
    return c;
fail:
    client_destroy(c);
    return NULL;
}

void client_destroy(struct client *c)
{
    if (!c)
        return;
    engine_mosq_client_free(c);
    if (c->fd >= 0)
        close(c->fd);
    bbuf_free(&c->in);
    bbuf_free(&c->out);
    free(c->payload);
    free(c->topic);
    free(c->seen);
    free(c->next_expected);
    free(c);
}

void client_reset(struct client *c, const struct bench_opts *o)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    c->state = CL_NEW;
    c->polled = c->want_out = c->dirty = false;
    c->in.off = c->in.len = 0;
    c->out.off = c->out.len = 0;
    c->next_seq = 0;
    c->completed = 0;
    c->next_id = 1;
    c->done = false;
    if (c->role == ROLE_SUB) {
        uint64_t bits =
            o->offline ? offline_rounds(o, c->index) : (uint64_t)o->publishers * (uint64_t)o->count;
        memset(c->seen, 0, (size_t)((bits + 63) / 64) * sizeof *c->seen);
        memset(c->next_expected, 0, ((size_t)o->publishers + 1) * sizeof *c->next_expected);
    }
    c->w = NULL;
}

void client_fail(struct client *c, const char *why, int errnum)
{
    struct worker *w = c->w;
    if (c->state == CL_DEAD)
        return;
    if (c->state == CL_CONNECTING || c->state == CL_SUBSCRIBING)
        w->pending--;
    c->state = CL_DEAD;
    if (!w->error)
        w->error = why;
    if (atomic_fetch_add(&w->shared->failed, 1) < 5)
        fprintf(stderr, "mqbench: client %s: %s%s%s%s\n", c->id, why, errnum ? " (" : "",
                errnum ? strerror(errnum) : "", errnum ? ")" : "");
}

void client_set_ready(struct client *c)
{
    c->state = CL_READY;
    c->w->pending--;
    c->w->st.last_ready_ns = bench_now_ns();
    atomic_fetch_add(&c->w->shared->ready, 1);
}

void client_check_done(struct client *c)
{
    struct worker *w = c->w;
    if (c->done || c->next_seq < (uint64_t)w->opts->count || c->completed < c->next_seq)
        return;
    c->done = true;
    w->st.last_pub_ns = bench_now_ns();
    atomic_fetch_add(&w->shared->pubs_done, 1);
}

void client_stamp_next(struct client *c)
{
    struct worker *w = c->w;
    struct bench_header h = {.magic = BENCH_MAGIC, .pub = (uint32_t)c->index, .seq = c->next_seq};

    h.sent_ns = bench_now_ns();
    memcpy(c->payload, &h, sizeof h);
    if (w->opts->offline) {
        uint64_t g = (uint64_t)c->index + (uint64_t)c->next_seq * (uint64_t)w->opts->publishers;
        snprintf(c->topic, c->topic_cap, "%s/o/%u", w->opts->topic,
                 (unsigned)(g % (uint64_t)w->opts->offline));
    }
    if (w->st.first_pub_ns == 0)
        w->st.first_pub_ns = h.sent_ns;
    c->next_seq++;
    w->st.published++;
}

/* The bit of the seen bitmap for delivery h to subscriber c, and the
 * position that must increase per publisher: the seq, or in offline mode
 * the round. False for a message that is not c's (malformed). */
static bool client_delivery_slot(const struct client *c, const struct bench_opts *o,
                                 const struct bench_header *h, uint64_t *bit, uint32_t *pos)
{
    if (h->magic != BENCH_MAGIC || h->pub >= (uint32_t)o->publishers || h->seq >= o->count)
        return false;
    if (!o->offline) {
        *bit = (uint64_t)h->pub * (uint64_t)o->count + h->seq;
        *pos = h->seq;
        return true;
    }
    uint64_t g = (uint64_t)h->pub + (uint64_t)h->seq * (uint64_t)o->publishers;
    if (g % (uint64_t)o->offline != (uint64_t)c->index)
        return false; /* routed to the wrong client */
    *bit = g / (uint64_t)o->offline;
    *pos = (uint32_t)*bit;
    return true;
}

void client_record_delivery(struct client *c, const void *payload, size_t len, int64_t now)
{
    struct worker *w = c->w;
    struct bench_header h;
    uint64_t bit;
    uint32_t pos;

    if (len < BENCH_HEADER_SIZE) {
        w->st.malformed++;
        return;
    }
    memcpy(&h, payload, sizeof h);
    if (!client_delivery_slot(c, w->opts, &h, &bit, &pos)) {
        w->st.malformed++;
        return;
    }
    uint64_t mask = 1ull << (bit & 63);
    if (c->seen[bit >> 6] & mask) {
        w->st.duplicates++;
        return;
    }
    c->seen[bit >> 6] |= mask;
    w->st.unique++;
    if (pos < c->next_expected[h.pub])
        w->st.out_of_order++;
    else
        c->next_expected[h.pub] = pos + 1;
    hist_record(&w->st.latency, now > h.sent_ns ? (uint64_t)(now - h.sent_ns) : 0);
    w->st.last_recv_ns = now;
}

bool worker_backlog_full(const struct worker *w)
{
    const struct bench_opts *o = w->opts;
    /* QoS 0 may lose messages by design: lost ones would never be delivered
     * and would stall the publishers for good */
    if (o->backlog == 0 || o->subscribers == 0 || o->qos == 0 || o->offline)
        return false;
    uint64_t subs = (uint64_t)o->subscribers;
    uint64_t published = atomic_load_explicit(&w->shared->published, memory_order_relaxed) +
                         (w->st.published - w->flushed_published);
    uint64_t delivered = atomic_load_explicit(&w->shared->unique, memory_order_relaxed) +
                         (w->st.unique - w->flushed_unique);
    /* another worker may count a delivery before its publisher is flushed */
    if (delivered >= published * subs)
        return false;
    return published * subs - delivered > (uint64_t)o->backlog * subs;
}

void worker_flush(struct worker *w)
{
    if (w->st.published != w->flushed_published) {
        atomic_fetch_add(&w->shared->published, w->st.published - w->flushed_published);
        w->flushed_published = w->st.published;
    }
    if (w->st.unique != w->flushed_unique) {
        atomic_fetch_add(&w->shared->unique, w->st.unique - w->flushed_unique);
        w->flushed_unique = w->st.unique;
    }
}
