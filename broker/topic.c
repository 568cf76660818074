/* Topic names and filters, the subscription tree and the retained store.
 *
 * The rules (MQTT 3.1.1 section 4.7), with examples:
 *   "sport/#"  matches "sport", "sport/" and "sport/a/b"         [MQTT-4.7.1-2]
 *   "sport/+"  matches "sport/" and "sport/a", not "sport/a/b"  [MQTT-4.7.1-3]
 *   "+/+"      matches "/a" and "/"; "#" matches "/"
 *   "#", "+/x" do not match "$SYS/x"; "$SYS/#" does              [MQTT-4.7.2-1]
 *
 * Layout. Subscriptions and retained messages live in two tries of the same
 * node type, one node per level. A subscription node has its exact-level
 * children in a table plus dedicated '+' and '#' child pointers, and a table
 * of (subscriber, qos) entries; a retained node holds one message reference.
 * Nodes know their parent, so every walk below (match, retained match,
 * teardown) is an iterative depth-first search that backtracks through the
 * parent pointers and re-derives its position in the topic string by
 * scanning back to the previous '/'. Nothing is allocated on the match path
 * and the C stack use does not depend on the depth of a topic (a valid topic
 * can have 32 768 levels).
 *
 * Tables. Most levels of a real tree have a handful of children (fixed words)
 * and most filters a handful of subscribers, but some levels have very many
 * children (device ids) and some filters very many subscribers (a broadcast
 * topic). A table with at most SMALL_CAP slots is a packed array scanned
 * linearly: for a few entries a length check and a memcmp beat hashing the
 * level. Above that it is an open-addressing hash table (linear probing, load
 * at most 3/4, backward-shift deletion, so no tombstones). Levels are hashed
 * with SipHash-1-3 under a per-tree random key, so clients choosing topic
 * names cannot force collisions; subscribers are hashed by address. A sorted
 * array was rejected: inserting the 100 000th device id would move 800 KB, and
 * (un)subscribing one of 100 000 clients of a filter must not scan them all. */
#include "topic.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define SMALL_CAP 8u
#define CAP_LIMIT (1u << 30)

/* ---- open-addressing tables ---------------------------------------------- */

/* A table of fixed-size slots; an all-zero slot is free. cap is 0 or a power
 * of two. While cap <= SMALL_CAP the used slots are exactly [0, n). */
struct table {
    void *slots;
    uint32_t n;
    uint32_t cap;
};

/* What a table stores: the slot size and how to tell a used slot and hash it. */
struct table_type {
    size_t slot_size;
    bool (*used)(const void *slot);
    uint32_t (*hash)(const void *slot);
};

static inline bool table_small(const struct table *tb)
{
    return tb->cap <= SMALL_CAP;
}

static inline char *table_at(const struct table *tb, const struct table_type *ty, uint32_t i)
{
    return (char *)tb->slots + (size_t)i * ty->slot_size;
}

static bool table_fits(uint32_t cap, uint32_t n)
{
    return cap <= SMALL_CAP ? n <= cap : (uint64_t)n * 4 <= (uint64_t)cap * 3;
}

/* Smallest capacity holding n entries; 0 when n is 0 or too large. */
static uint32_t table_cap_for(uint32_t n)
{
    uint32_t cap = 1;
    if (n == 0)
        return 0;
    while (cap < CAP_LIMIT && !table_fits(cap, n))
        cap <<= 1;
    return table_fits(cap, n) ? cap : 0;
}

/* Copy slot into a free slot; the table has room and does not hold the key. */
static void table_put(struct table *tb, const struct table_type *ty, const void *slot)
{
    uint32_t i = tb->n;
    if (!table_small(tb)) {
        uint32_t mask = tb->cap - 1;
        for (i = ty->hash(slot) & mask; ty->used(table_at(tb, ty, i)); i = (i + 1) & mask)
            ;
    }
    memcpy(table_at(tb, ty, i), slot, ty->slot_size);
    tb->n++;
}

/* Rebuild with cap slots (cap fits n, or is 0 when n is 0). 0 or -1. */
static int table_resize(struct table *tb, const struct table_type *ty, uint32_t cap)
{
    struct table old = *tb;
    struct table fresh = {NULL, 0, cap};
    if (cap) {
        fresh.slots = calloc(cap, ty->slot_size);
        if (!fresh.slots)
            return -1;
    }
    for (uint32_t i = 0; i < old.cap; i++)
        if (ty->used(table_at(&old, ty, i)))
            table_put(&fresh, ty, table_at(&old, ty, i));
    free(old.slots);
    *tb = fresh;
    return 0;
}

/* Make room for one more entry. 0 or -1 (the table is unchanged). */
static int table_reserve_one(struct table *tb, const struct table_type *ty)
{
    if (table_fits(tb->cap, tb->n + 1))
        return 0;
    uint32_t cap = table_cap_for(tb->n + 1);
    return cap ? table_resize(tb, ty, cap) : -1;
}

/* Free slot i. Never fails: shrinking a sparse table is best effort. */
static void table_remove(struct table *tb, const struct table_type *ty, uint32_t i)
{
    uint32_t hole = i;
    if (table_small(tb)) {
        hole = tb->n - 1;
        if (i != hole)
            memcpy(table_at(tb, ty, i), table_at(tb, ty, hole), ty->slot_size);
    } else {
        /* Backward shift: pull later entries of the probe run into the hole
         * when the hole lies between their home slot and where they sit. */
        uint32_t mask = tb->cap - 1;
        for (uint32_t j = (i + 1) & mask; ty->used(table_at(tb, ty, j)); j = (j + 1) & mask) {
            uint32_t home = ty->hash(table_at(tb, ty, j)) & mask;
            if (((j - home) & mask) >= ((j - hole) & mask)) {
                memcpy(table_at(tb, ty, hole), table_at(tb, ty, j), ty->slot_size);
                hole = j;
            }
        }
    }
    memset(table_at(tb, ty, hole), 0, ty->slot_size);
    tb->n--;
    if (tb->n == 0 || (!table_small(tb) && tb->n < tb->cap / 8))
        (void)table_resize(tb, ty, table_cap_for(tb->n));
}

/* ---- nodes ----------------------------------------------------------------- */

struct topic_sub {
    void *subscriber;
    uint8_t qos;
    bool used;
};

struct topic_node {
    struct topic_node *parent; /* NULL for a root */
    struct topic_node *plus;   /* the "+" child */
    struct topic_node *hash;   /* the "#" child; never descended into */
    struct table kids;         /* struct kid_slot slots: exact levels */
    struct table subs;         /* struct topic_sub slots */
    struct message *retained;  /* retained trie only; holds one reference */
    uint32_t level_hash;       /* keyed hash of level, for the parent's table */
    uint32_t len;
    char level[]; /* len bytes, not NUL-terminated */
};

struct topic_tree {
    struct topic_node *subs_root;
    struct topic_node *retain_root;
    size_t nsubs;
    size_t nretained;
    uint64_t key[2]; /* SipHash key for level hashes */
};

/* A child slot keeps the level hash next to the pointer so that probing a
 * hashed table touches only the table, not every node it passes. */
struct kid_slot {
    struct topic_node *node;
    uint32_t hash;
};
static bool kid_used(const void *slot)
{
    return ((const struct kid_slot *)slot)->node != NULL;
}
static uint32_t kid_hash(const void *slot)
{
    return ((const struct kid_slot *)slot)->hash;
}
static const struct table_type kid_type = {sizeof(struct kid_slot), kid_used, kid_hash};

static uint32_t ptr_hash(const void *p)
{
    /* Fibonacci hashing: the high bits of the product mix all address bits. */
    return (uint32_t)(((uint64_t)(uintptr_t)p * 0x9e3779b97f4a7c15ull) >> 32);
}
static bool sub_used(const void *slot)
{
    return ((const struct topic_sub *)slot)->used;
}
static uint32_t sub_hash(const void *slot)
{
    return ptr_hash(((const struct topic_sub *)slot)->subscriber);
}
static const struct table_type sub_type = {sizeof(struct topic_sub), sub_used, sub_hash};

static inline uint64_t rotl64(uint64_t x, int b)
{
    return (x << b) | (x >> (64 - b));
}

static inline void sip_round(uint64_t v[4])
{
    v[0] += v[1];
    v[1] = rotl64(v[1], 13) ^ v[0];
    v[0] = rotl64(v[0], 32);
    v[2] += v[3];
    v[3] = rotl64(v[3], 16) ^ v[2];
    v[0] += v[3];
    v[3] = rotl64(v[3], 21) ^ v[0];
    v[2] += v[1];
    v[1] = rotl64(v[1], 17) ^ v[2];
    v[2] = rotl64(v[2], 32);
}

/* SipHash-1-3 (one compression round, three finalisation rounds). */
static uint64_t siphash13(const uint64_t key[2], const char *data, size_t len)
{
    const unsigned char *in = (const unsigned char *)data;
    uint64_t v[4] = {key[0] ^ 0x736f6d6570736575ull, key[1] ^ 0x646f72616e646f6dull,
                     key[0] ^ 0x6c7967656e657261ull, key[1] ^ 0x7465646279746573ull};
    size_t blocks = len / 8;
    for (size_t b = 0; b < blocks; b++, in += 8) {
        uint64_t m = 0;
        for (int i = 7; i >= 0; i--)
            m = m << 8 | in[i];
        v[3] ^= m;
        sip_round(v);
        v[0] ^= m;
    }
    uint64_t last = (uint64_t)len << 56;
    for (size_t i = 0; i < len % 8; i++)
        last |= (uint64_t)in[i] << (8 * i);
    v[3] ^= last;
    sip_round(v);
    v[0] ^= last;
    v[2] ^= 0xff;
    sip_round(v);
    sip_round(v);
    sip_round(v);
    return v[0] ^ v[1] ^ v[2] ^ v[3];
}

static uint32_t level_hash(const struct topic_tree *t, const char *lvl, size_t len)
{
    return (uint32_t)siphash13(t->key, lvl, len);
}

/* Levels of a string [s, e), e at its NUL: a level starts at p and runs to the
 * next '/' or to e. The level after the last one starts at e + 1 (the string
 * is exhausted), one past the NUL, which is never dereferenced. */
static const char *level_end(const char *p, const char *e)
{
    const char *slash = memchr(p, '/', (size_t)(e - p));
    return slash ? slash : e;
}

/* Start of the level before the one starting at p (p > s). */
static const char *level_prev(const char *s, const char *p)
{
    const char *q = p - 1; /* the '/' or NUL that ended the previous level */
    while (q > s && q[-1] != '/')
        q--;
    return q;
}

static bool level_is(const char *lvl, size_t len, char c)
{
    return len == 1 && lvl[0] == c;
}

static struct topic_node *node_new(const struct topic_tree *t, struct topic_node *parent,
                                   const char *lvl, size_t len)
{
    if (len > UINT32_MAX)
        return NULL;
    struct topic_node *n = calloc(1, sizeof *n + len);
    if (!n)
        return NULL;
    n->parent = parent;
    n->len = (uint32_t)len;
    memcpy(n->level, lvl, len);
    n->level_hash = level_hash(t, lvl, len);
    return n;
}

/* The node must have no children left. */
static void node_free(struct topic_node *n)
{
    message_unref(n->retained);
    free(n->kids.slots);
    free(n->subs.slots);
    free(n);
}

static bool node_empty(const struct topic_node *n)
{
    return !n->plus && !n->hash && n->kids.n == 0 && n->subs.n == 0 && !n->retained;
}

static struct topic_node *kids_find(const struct topic_tree *t, const struct topic_node *n,
                                    const char *lvl, size_t len)
{
    const struct kid_slot *slots = n->kids.slots;
    if (table_small(&n->kids)) {
        for (uint32_t i = 0; i < n->kids.n; i++)
            if (slots[i].node->len == len && memcmp(slots[i].node->level, lvl, len) == 0)
                return slots[i].node;
        return NULL;
    }
    uint32_t h = level_hash(t, lvl, len), mask = n->kids.cap - 1;
    for (uint32_t i = h & mask; slots[i].node; i = (i + 1) & mask)
        if (slots[i].hash == h && slots[i].node->len == len &&
            memcmp(slots[i].node->level, lvl, len) == 0)
            return slots[i].node;
    return NULL;
}

/* Slot of kid in n->kids; kid must be there. */
static uint32_t kids_index_of(const struct topic_node *n, const struct topic_node *kid)
{
    const struct kid_slot *slots = n->kids.slots;
    uint32_t mask = n->kids.cap - 1;
    uint32_t i = table_small(&n->kids) ? 0 : kid->level_hash & mask;
    while (slots[i].node != kid)
        i = (i + 1) & mask;
    return i;
}

/* Index of subscriber's entry in n->subs, or UINT32_MAX. */
static uint32_t subs_index_of(const struct topic_node *n, const void *subscriber)
{
    const struct topic_sub *slots = n->subs.slots;
    if (table_small(&n->subs)) {
        for (uint32_t i = 0; i < n->subs.n; i++)
            if (slots[i].subscriber == subscriber)
                return i;
        return UINT32_MAX;
    }
    uint32_t mask = n->subs.cap - 1;
    for (uint32_t i = ptr_hash(subscriber) & mask; slots[i].used; i = (i + 1) & mask)
        if (slots[i].subscriber == subscriber)
            return i;
    return UINT32_MAX;
}

/* The child of n for one level ('+' and '#' are the wildcard children),
 * created when create is set. NULL when absent or out of memory. */
static struct topic_node *node_child(const struct topic_tree *t, struct topic_node *n,
                                     const char *lvl, size_t len, bool create)
{
    struct topic_node **wild = level_is(lvl, len, '+')   ? &n->plus
                               : level_is(lvl, len, '#') ? &n->hash
                                                         : NULL;
    if (wild) {
        if (!*wild && create)
            *wild = node_new(t, n, lvl, len);
        return *wild;
    }
    struct topic_node *kid = kids_find(t, n, lvl, len);
    if (kid || !create || table_reserve_one(&n->kids, &kid_type) < 0)
        return kid;
    kid = node_new(t, n, lvl, len);
    if (kid)
        table_put(&n->kids, &kid_type, &(struct kid_slot){kid, kid->level_hash});
    return kid;
}

/* Unlink and free n and then each ancestor left empty, up to the root. */
static void node_prune(struct topic_node *n)
{
    while (n->parent && node_empty(n)) {
        struct topic_node *p = n->parent;
        if (p->plus == n)
            p->plus = NULL;
        else if (p->hash == n)
            p->hash = NULL;
        else
            table_remove(&p->kids, &kid_type, kids_index_of(p, n));
        node_free(n);
        n = p;
    }
}

/* The node for topic [s, s + len) below root, or NULL when absent (or, with
 * create, out of memory: nodes created on the way are pruned again). */
static struct topic_node *node_walk(const struct topic_tree *t, struct topic_node *root,
                                    const char *s, size_t len, bool create)
{
    const char *e = s + len, *p = s;
    struct topic_node *n = root;
    for (;;) {
        const char *end = level_end(p, e);
        struct topic_node *c = node_child(t, n, p, (size_t)(end - p), create);
        if (!c) {
            if (create)
                node_prune(n);
            return NULL;
        }
        n = c;
        if (end == e)
            return n;
        p = end + 1;
    }
}

/* Detach and return one child of n, for teardown. Consumes kids.cap as a
 * cursor so a wide node is scanned once in all; n is unusable as a table. */
static struct topic_node *node_take_child(struct topic_node *n)
{
    struct topic_node *c = n->plus ? n->plus : n->hash;
    if (c) {
        if (c == n->plus)
            n->plus = NULL;
        else
            n->hash = NULL;
        return c;
    }
    const struct kid_slot *slots = n->kids.slots;
    while (n->kids.cap > 0)
        if ((c = slots[--n->kids.cap].node))
            return c;
    return NULL;
}

static void trie_free(struct topic_node *root)
{
    struct topic_node *n = root;
    while (n) {
        struct topic_node *c = node_take_child(n);
        if (c) {
            n = c;
            continue;
        }
        struct topic_node *p = n->parent;
        node_free(n);
        n = p;
    }
}

/* ---- names and filters ----------------------------------------------------- */

bool topic_name_valid(const char *name, size_t len)
{
    /* [MQTT-4.7.3-1] at least one character; [MQTT-3.3.2-2] no wildcards.
     * NUL is refused too ([MQTT-1.5.3-2]): the tree takes C strings. */
    if (!name || len == 0)
        return false;
    for (size_t i = 0; i < len; i++)
        if (name[i] == '+' || name[i] == '#' || name[i] == '\0')
            return false;
    return true;
}

bool topic_filter_valid(const char *filter, size_t len)
{
    if (!filter || len == 0) /* [MQTT-4.7.3-1] */
        return false;
    for (size_t i = 0; i < len; i++) {
        bool starts = i == 0 || filter[i - 1] == '/';
        bool ends = i + 1 == len || filter[i + 1] == '/';
        if (filter[i] == '\0')
            return false;
        if (filter[i] == '+' && !(starts && ends)) /* [MQTT-4.7.1-3] */
            return false;
        if (filter[i] == '#' && !(starts && i + 1 == len)) /* [MQTT-4.7.1-2] */
            return false;
    }
    return true;
}

bool topic_filter_has_wildcard(const char *filter, size_t len)
{
    return filter && (memchr(filter, '+', len) || memchr(filter, '#', len));
}

/* The reference matcher: plain level-by-level comparison. The tree walks
 * below must agree with it (the unit tests cross-check them). */
bool topic_matches(const char *filter, const char *name)
{
    if (name[0] == '$' && (filter[0] == '+' || filter[0] == '#')) /* [MQTT-4.7.2-1] */
        return false;
    bool name_done = false;
    for (;;) {
        size_t flen = strcspn(filter, "/"), nlen = strcspn(name, "/");
        if (level_is(filter, flen, '#')) /* also matches the parent level */
            return true;
        if (name_done)
            return false;
        if (!level_is(filter, flen, '+') && (flen != nlen || memcmp(filter, name, flen) != 0))
            return false;
        if (filter[flen] == '\0')
            return name[nlen] == '\0';
        filter += flen + 1;
        if (name[nlen] == '\0')
            name_done = true;
        else
            name += nlen + 1;
    }
}

/* ---- the tree ---------------------------------------------------------------- */

struct topic_tree *topic_tree_new(void)
{
    struct topic_tree *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    if (getentropy(t->key, sizeof t->key) != 0) {
        /* A weaker key only weakens resistance to collision flooding;
         * correctness never depends on it. */
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        t->key[0] = (uint64_t)ts.tv_nsec ^ (uint64_t)(uintptr_t)t;
        t->key[1] = (uint64_t)ts.tv_sec * UINT64_C(0x9e3779b97f4a7c15) ^ (uint64_t)getpid();
    }
    t->subs_root = node_new(t, NULL, "", 0);
    t->retain_root = node_new(t, NULL, "", 0);
    if (!t->subs_root || !t->retain_root) {
        topic_tree_free(t);
        return NULL;
    }
    return t;
}

void topic_tree_free(struct topic_tree *t)
{
    if (!t)
        return;
    trie_free(t->subs_root);
    trie_free(t->retain_root);
    free(t);
}

size_t topic_tree_count(const struct topic_tree *t)
{
    return t->nsubs;
}
size_t topic_retain_count(const struct topic_tree *t)
{
    return t->nretained;
}

int topic_tree_subscribe(struct topic_tree *t, const char *filter, void *subscriber, uint8_t qos)
{
    size_t len = strlen(filter);
    if (!topic_filter_valid(filter, len))
        return -1;
    struct topic_node *n = node_walk(t, t->subs_root, filter, len, true);
    if (!n)
        return -1;
    uint32_t i = subs_index_of(n, subscriber);
    if (i != UINT32_MAX) {
        ((struct topic_sub *)n->subs.slots)[i].qos = qos; /* [MQTT-3.8.4-3] */
        return 0;
    }
    struct topic_sub entry = {subscriber, qos, true};
    if (table_reserve_one(&n->subs, &sub_type) < 0) {
        node_prune(n);
        return -1;
    }
    table_put(&n->subs, &sub_type, &entry);
    t->nsubs++;
    return 1;
}

int topic_tree_unsubscribe(struct topic_tree *t, const char *filter, void *subscriber)
{
    struct topic_node *n = node_walk(t, t->subs_root, filter, strlen(filter), false);
    uint32_t i = n ? subs_index_of(n, subscriber) : UINT32_MAX;
    if (i == UINT32_MAX)
        return 1;
    table_remove(&n->subs, &sub_type, i);
    t->nsubs--;
    node_prune(n);
    return 0;
}

/* ---- matching a name against the subscriptions ------------------------------ */

static void subs_report(const struct topic_node *n, topic_match_fn fn, void *ctx)
{
    const struct topic_sub *slots = n->subs.slots;
    for (uint32_t i = 0; i < n->subs.cap; i++)
        if (slots[i].used)
            fn(slots[i].subscriber, slots[i].qos, ctx);
}

struct name_walk {
    const struct topic_tree *t;
    const char *s, *e; /* the name */
    bool dollar;       /* starts with '$': no wildcard at the root [MQTT-4.7.2-1] */
    topic_match_fn fn;
    void *ctx;
};

static const struct topic_node *plus_child(const struct name_walk *w, const struct topic_node *n)
{
    return w->dollar && n == w->t->subs_root ? NULL : n->plus;
}

/* Report what matches at n, whose children consume the level at p; returns
 * the first child to descend into (the exact one before '+'), or NULL, and
 * sets *next to the level below that child. */
static const struct topic_node *match_enter(const struct name_walk *w, const struct topic_node *n,
                                            const char *p, const char **next)
{
    if (n->hash && !(w->dollar && n == w->t->subs_root))
        subs_report(n->hash, w->fn, w->ctx); /* "a/#" matches "a" too */
    if (p > w->e) {
        subs_report(n, w->fn, w->ctx);
        return NULL;
    }
    const char *end = level_end(p, w->e);
    const struct topic_node *c = kids_find(w->t, n, p, (size_t)(end - p));
    *next = end + 1;
    return c ? c : plus_child(w, n);
}

/* Climb from n to the next unexplored alternative: the '+' sibling of an
 * exact child. Moves *p back one level per step up. NULL when done. */
static const struct topic_node *match_backtrack(const struct name_walk *w,
                                                const struct topic_node *n, const char **p)
{
    while (n->parent) {
        const struct topic_node *parent = n->parent;
        const struct topic_node *plus = plus_child(w, parent);
        if (plus && n != plus)
            return plus; /* a sibling: the level below it is *p as well */
        n = parent;
        *p = level_prev(w->s, *p);
    }
    return NULL;
}

void topic_tree_match(const struct topic_tree *t, const char *name, topic_match_fn fn, void *ctx)
{
    struct name_walk w = {t, name, name + strlen(name), name[0] == '$', fn, ctx};
    const struct topic_node *n = t->subs_root;
    const char *p = name;
    while (n) {
        const char *next;
        const struct topic_node *c = match_enter(&w, n, p, &next);
        if (c) {
            n = c;
            p = next;
        } else {
            n = match_backtrack(&w, n, &p);
        }
    }
}

/* ---- retained messages --------------------------------------------------------- */

int topic_retain_set(struct topic_tree *t, struct message *m)
{
    if (!topic_name_valid(m->topic, m->topic_len))
        return -1;
    bool clear = m->payload_len == 0; /* [MQTT-3.3.1-10] [MQTT-3.3.1-11] */
    struct topic_node *n = node_walk(t, t->retain_root, m->topic, m->topic_len, !clear);
    if (!n)
        return clear ? 0 : -1;
    struct message *old = n->retained;
    n->retained = clear ? NULL : message_ref(m);
    if (old)
        message_unref(old);
    if (old && !n->retained)
        t->nretained--;
    else if (!old && n->retained)
        t->nretained++;
    if (clear)
        node_prune(n);
    return 0;
}

/* First child of n at slot >= i, for a wildcard: at the root, levels
 * starting with '$' are skipped [MQTT-4.7.2-1]. */
static const struct topic_node *wild_kid_from(const struct topic_tree *t,
                                              const struct topic_node *n, uint32_t i)
{
    const struct kid_slot *slots = n->kids.slots;
    bool root = n == t->retain_root;
    for (; i < n->kids.cap; i++) {
        const struct topic_node *c = slots[i].node;
        if (c && !(root && c->len > 0 && c->level[0] == '$'))
            return c;
    }
    return NULL;
}

/* The node after n in a preorder walk of top's subtree, or NULL. */
static const struct topic_node *
preorder_next(const struct topic_tree *t, const struct topic_node *top, const struct topic_node *n)
{
    const struct topic_node *c = wild_kid_from(t, n, 0);
    while (!c && n != top) {
        const struct topic_node *p = n->parent;
        c = wild_kid_from(t, p, kids_index_of(p, n) + 1);
        n = p;
    }
    return c;
}

struct filter_walk {
    const struct topic_tree *t;
    const char *s, *e; /* the filter */
    topic_retain_fn fn;
    void *ctx;
};

/* Report what matches at n, whose children are selected by the filter level
 * at p; returns the first child to descend into, or NULL, and sets *next to
 * the filter level below that child. */
static const struct topic_node *retain_enter(const struct filter_walk *w,
                                             const struct topic_node *n, const char *p,
                                             const char **next)
{
    if (p > w->e) {
        if (n->retained)
            w->fn(n->retained, w->ctx);
        return NULL;
    }
    const char *end = level_end(p, w->e);
    size_t len = (size_t)(end - p);
    *next = end + 1;
    if (level_is(p, len, '#')) {
        /* n itself ("a/#" matches "a") and everything below it */
        for (const struct topic_node *d = n; d; d = preorder_next(w->t, n, d))
            if (d->retained)
                w->fn(d->retained, w->ctx);
        return NULL;
    }
    if (level_is(p, len, '+'))
        return wild_kid_from(w->t, n, 0);
    return kids_find(w->t, n, p, len);
}

/* Climb from n to its next sibling when the level that chose n was '+'.
 * Moves *p back one level per step up. NULL when done. */
static const struct topic_node *retain_backtrack(const struct filter_walk *w,
                                                 const struct topic_node *n, const char **p)
{
    while (n->parent) {
        const struct topic_node *parent = n->parent;
        const char *q = level_prev(w->s, *p); /* the level that chose n */
        if (q[0] == '+') {
            const struct topic_node *sib =
                wild_kid_from(w->t, parent, kids_index_of(parent, n) + 1);
            if (sib)
                return sib;
        }
        n = parent;
        *p = q;
    }
    return NULL;
}

void topic_retain_match(const struct topic_tree *t, const char *filter, topic_retain_fn fn,
                        void *ctx)
{
    struct filter_walk w = {t, filter, filter + strlen(filter), fn, ctx};
    const struct topic_node *n = t->retain_root;
    const char *p = filter;
    while (n) {
        const char *next;
        const struct topic_node *c = retain_enter(&w, n, p, &next);
        if (c) {
            n = c;
            p = next;
        } else {
            n = retain_backtrack(&w, n, &p);
        }
    }
}
