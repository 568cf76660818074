/* topic_suite: name/filter validation, the subscription tree, the retained
 * store (broker/topic.c).
 *
 * One matching table drives three implementations that must agree: the
 * reference topic_matches(), topic_tree_match() and topic_retain_match().
 * Randomised cross-checks then compare the tree walks with topic_matches()
 * over thousands of generated pairs, with narrow levels (deep backtracking)
 * and wide levels (hashed child tables). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../broker/topic.h"
#include "check_main.h"

/* ---- helpers ---------------------------------------------------------------- */

/* For hot loops: Check records every passing ck_assert, which would make the
 * randomised tests spend their time writing assertion locations. */
#define EXPECT(cond, ...) \
    do { \
        if (!(cond)) \
            ck_abort_msg(__VA_ARGS__); \
    } while (0)

#define MAX_HITS 256

struct hits {
    size_t n;
    void *sub[MAX_HITS];
    uint8_t qos[MAX_HITS];
};

static void on_hit(void *subscriber, uint8_t qos, void *ctx)
{
    struct hits *h = ctx;
    EXPECT(h->n < MAX_HITS, "more than %d hits", MAX_HITS);
    h->sub[h->n] = subscriber;
    h->qos[h->n++] = qos;
}

static struct hits match(const struct topic_tree *t, const char *name)
{
    struct hits h = {0};
    topic_tree_match(t, name, on_hit, &h);
    return h;
}

/* How many times subscriber was reported; its last qos in *qos. */
static size_t hits_of(const struct hits *h, const void *subscriber, uint8_t *qos)
{
    size_t n = 0;
    for (size_t i = 0; i < h->n; i++)
        if (h->sub[i] == subscriber) {
            n++;
            if (qos)
                *qos = h->qos[i];
        }
    return n;
}

static void on_retained_count(struct message *m, void *ctx)
{
    (void)m;
    (*(size_t *)ctx)++;
}

static size_t retained_count(const struct topic_tree *t, const char *filter)
{
    size_t n = 0;
    topic_retain_match(t, filter, on_retained_count, &n);
    return n;
}

struct topics {
    char buf[1024];
    const char *names[64];
    size_t n;
};

static void on_retained_topic(struct message *m, void *ctx)
{
    struct topics *r = ctx;
    ck_assert_uint_lt(r->n, 64);
    r->names[r->n++] = m->topic;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The matching retained topics, sorted, joined by spaces. */
static const char *retained_topics(const struct topic_tree *t, const char *filter, struct topics *r)
{
    r->n = 0;
    topic_retain_match(t, filter, on_retained_topic, r);
    qsort(r->names, r->n, sizeof r->names[0], cmp_str);
    r->buf[0] = '\0';
    for (size_t i = 0; i < r->n; i++) {
        ck_assert_uint_lt(strlen(r->buf) + strlen(r->names[i]) + 2, sizeof r->buf);
        strcat(r->buf, i ? " " : "");
        strcat(r->buf, r->names[i]);
    }
    return r->buf;
}

static struct message *msg_new(const char *topic, const char *payload)
{
    struct message *m = message_new(topic, (uint16_t)strlen(topic), (const uint8_t *)payload,
                                    (uint32_t)strlen(payload), 0, true);
    ck_assert_ptr_nonnull(m);
    return m;
}

/* Retain (or, with "", clear) topic; the tree keeps the only reference. */
static int retain_str(struct topic_tree *t, const char *topic, const char *payload)
{
    struct message *m = msg_new(topic, payload);
    int rc = topic_retain_set(t, m);
    message_unref(m);
    return rc;
}

/* Deterministic generator (xorshift64*): failures are reproducible. */
static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 0x2545f4914f6cdd1dull;
}

static uint32_t rng_below(uint64_t *s, uint32_t n)
{
    return (uint32_t)(rng_next(s) % n);
}

static void rng_shuffle(uint64_t *s, size_t *v, size_t n)
{
    for (size_t i = n; i > 1; i--) {
        size_t j = rng_below(s, (uint32_t)i), tmp = v[i - 1];
        v[i - 1] = v[j];
        v[j] = tmp;
    }
}

/* ---- validation ------------------------------------------------------------- */

struct valid_case {
    const char *what;
    const char *s;
    size_t len; /* 0: strlen(s) */
    bool valid;
};

static const struct valid_case name_cases[] = {
    {"one level", "a", 0, true},
    {"two levels", "a/b", 0, true},
    {"leading slash", "/a", 0, true},
    {"trailing slash", "a/", 0, true},
    {"empty middle level", "a//b", 0, true},
    {"only a slash", "/", 0, true},
    {"only slashes", "///", 0, true},
    {"$SYS topic", "$SYS/broker/load", 0, true},
    {"space is a character", " ", 0, true},
    {"UTF-8 level", "caf\xc3\xa9/\xe2\x82\xac", 0, true},
    {"dollar not first", "a/$b", 0, true},
    {"length shorter than string", "a/+", 2, true},
    {"empty [MQTT-4.7.3-1]", "", 0, false},
    {"plus alone [MQTT-3.3.2-2]", "+", 0, false},
    {"hash alone [MQTT-3.3.2-2]", "#", 0, false},
    {"plus level", "a/+", 0, false},
    {"hash level", "a/#", 0, false},
    {"plus inside a level", "a+b", 0, false},
    {"hash inside a level", "sport#", 0, false},
    {"NUL inside [MQTT-1.5.3-2]", "a\0b", 3, false},
};

static const struct valid_case filter_cases[] = {
    {"hash alone", "#", 0, true},
    {"plus alone", "+", 0, true},
    {"hash last [MQTT-4.7.1-2]", "a/#", 0, true},
    {"plus levels [MQTT-4.7.1-3]", "+/a/+", 0, true},
    {"two plus", "+/+", 0, true},
    {"hash after empty level", "/#", 0, true},
    {"plus after empty level", "/+", 0, true},
    {"plus then hash", "a/+/#", 0, true},
    {"plus hash", "+/#", 0, true},
    {"$SYS subtree", "$SYS/#", 0, true},
    {"no wildcard", "a/b/c", 0, true},
    {"empty levels", "a//b/", 0, true},
    {"only a slash", "/", 0, true},
    {"plus between empty levels", "/+/", 0, true},
    {"length cuts a bad tail", "a/#/b", 3, true},
    {"empty [MQTT-4.7.3-1]", "", 0, false},
    {"hash glued to text", "a#", 0, false},
    {"hash not last", "a/#/b", 0, false},
    {"hash first of two", "#/a", 0, false},
    {"hash followed by slash", "#/", 0, false},
    {"hash last then slash", "a/#/", 0, false},
    {"double hash", "##", 0, false},
    {"plus glued after", "a+", 0, false},
    {"plus glued before", "+a", 0, false},
    {"plus inside a level", "a/b+/c", 0, false},
    {"double plus", "++", 0, false},
    {"plus and hash in a level", "a/+#", 0, false},
    {"hash and plus in a level", "a/#+", 0, false},
    {"NUL inside", "a\0#", 3, false},
};

static void check_valid_table(const struct valid_case *cases, size_t n, bool filter)
{
    for (size_t i = 0; i < n; i++) {
        const struct valid_case *c = &cases[i];
        size_t len = c->len ? c->len : strlen(c->s);
        bool got = filter ? topic_filter_valid(c->s, len) : topic_name_valid(c->s, len);
        ck_assert_msg(got == c->valid, "%s %s: \"%s\" (len %zu) valid=%d, want %d",
                      filter ? "filter" : "name", c->what, c->s, len, got, c->valid);
    }
}

START_TEST(test_name_valid)
{
    check_valid_table(name_cases, sizeof name_cases / sizeof name_cases[0], false);
}
END_TEST

START_TEST(test_filter_valid)
{
    check_valid_table(filter_cases, sizeof filter_cases / sizeof filter_cases[0], true);
}
END_TEST

START_TEST(test_has_wildcard)
{
    static const struct valid_case cases[] = {
        {"plain", "a/b", 0, false}, {"plus", "a/+", 0, true},       {"hash", "#", 0, true},
        {"both", "+/#", 0, true},   {"cut off", "a/b/+", 4, false},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t len = cases[i].len ? cases[i].len : strlen(cases[i].s);
        ck_assert_msg(topic_filter_has_wildcard(cases[i].s, len) == cases[i].valid, "%s",
                      cases[i].what);
    }
}
END_TEST

/* ---- one matching table, three matchers ----------------------------------------- */

struct match_case {
    const char *filter;
    const char *name;
    bool match;
};

static const struct match_case match_cases[] = {
    {"a/b", "a/b", true},
    {"a/b", "a/c", false},
    {"a/b", "a/b/c", false},
    {"a/b/c", "a/b", false},
    {"A/b", "a/b", false}, /* case-sensitive */
    {"a/#", "a", true},    /* [MQTT-4.7.1-2] the parent level */
    {"a/#", "a/", true},
    {"a/#", "a/b/c", true},
    {"a/#", "b", false},
    {"a/#", "ab", false},
    {"a/b/#", "a/b", true},
    {"a/b/#", "a", false},
    {"#", "a", true},
    {"#", "/", true},
    {"#", "a/b/c", true},
    {"#", "x/$y", true},
    {"#", "$SYS", false}, /* [MQTT-4.7.2-1] */
    {"#", "$SYS/x", false},
    {"+", "a", true},
    {"+", "/a", false},
    {"+", "a/", false},
    {"+", "$", false},
    {"+/+", "/a", true},
    {"+/+", "/", true},
    {"+/+", "a", false},
    {"+/+", "a/b/c", false},
    {"+/+/+", "a/b/c", true},
    {"/+", "/", true},
    {"/+", "/a", true},
    {"/+", "a", false},
    {"/#", "/", true},
    {"/#", "/a/b", true},
    {"/#", "a", false},
    {"a/+/c", "a//c", true}, /* '+' matches an empty level */
    {"a/+/c", "a/b/c", true},
    {"a/+/c", "a/b/d", false},
    {"a/+/c", "a/b/x/c", false},
    {"a/+", "a/", true},
    {"a/+", "a", false},
    {"a/+/+", "a/b", false},
    {"+/#", "a", true},
    {"+/#", "a/b/c", true},
    {"+/#", "$SYS/x", false},
    {"+/x", "$SYS/x", false},
    {"+/+/#", "a", false},
    {"$SYS/#", "$SYS/x", true},
    {"$SYS/#", "$SYS", true},
    {"$SYS/#", "$SYSX", false},
    {"$SYS/+", "$SYS/x", true},
    {"$SYS/+", "$SYS/x/y", false},
    {"$SYS", "$SYS", true},
    {"$SYS/x", "$SYS/x", true},
    {"+/$SYS", "x/$SYS", true},
    {"x/+", "x/$y", true},
    {"//", "//", true},
    {"a//b", "a/b", false},
    {"a//#", "a/", true},
    {"a//#", "a", false},
    {"a/b", "a/b/", false},
    {"a/b/", "a/b", false},
    {"/a", "a", false},
    {"a", "/a", false},
};

START_TEST(test_match_table)
{
    for (size_t i = 0; i < sizeof match_cases / sizeof match_cases[0]; i++) {
        const struct match_case *c = &match_cases[i];
        ck_assert_msg(topic_filter_valid(c->filter, strlen(c->filter)), "%s", c->filter);
        ck_assert_msg(topic_name_valid(c->name, strlen(c->name)), "%s", c->name);
        ck_assert_msg(topic_matches(c->filter, c->name) == c->match,
                      "topic_matches(\"%s\", \"%s\") != %d", c->filter, c->name, c->match);

        struct topic_tree *t = topic_tree_new();
        ck_assert_ptr_nonnull(t);
        int sub = 0;
        ck_assert_int_eq(topic_tree_subscribe(t, c->filter, &sub, 1), 1);
        struct hits h = match(t, c->name);
        ck_assert_msg(h.n == (c->match ? 1u : 0u), "tree: \"%s\" vs \"%s\": %zu hits", c->filter,
                      c->name, h.n);

        struct message *m = msg_new(c->name, "x");
        ck_assert_int_eq(topic_retain_set(t, m), 0);
        ck_assert_msg(retained_count(t, c->filter) == (c->match ? 1u : 0u),
                      "retained: \"%s\" vs \"%s\"", c->filter, c->name);
        message_unref(m);
        topic_tree_free(t);
    }
}
END_TEST

/* Every filter of the table in one tree, every name in one retained store:
 * the walks must backtrack across all the overlapping branches. */
START_TEST(test_match_table_shared)
{
    enum { N = sizeof match_cases / sizeof match_cases[0] };
    struct topic_tree *t = topic_tree_new();
    char subs[N];
    for (size_t i = 0; i < N; i++) {
        ck_assert_int_ge(topic_tree_subscribe(t, match_cases[i].filter, &subs[i], 0), 0);
        ck_assert_int_eq(retain_str(t, match_cases[i].name, "x"), 0);
    }
    for (size_t i = 0; i < N; i++) {
        const char *name = match_cases[i].name;
        struct hits h = match(t, name);
        size_t want = 0;
        for (size_t f = 0; f < N; f++) {
            bool hit = topic_matches(match_cases[f].filter, name);
            want += hit;
            ck_assert_msg(hits_of(&h, &subs[f], NULL) == (size_t)hit, "\"%s\" vs \"%s\"",
                          match_cases[f].filter, name);
        }
        ck_assert_uint_eq(h.n, want);

        const char *filter = match_cases[i].filter;
        size_t want_retained = 0;
        for (size_t n = 0; n < N; n++) {
            bool first = true; /* names repeat in the table; the store holds each once */
            for (size_t k = 0; k < n; k++)
                first = first && strcmp(match_cases[k].name, match_cases[n].name) != 0;
            want_retained += first && topic_matches(filter, match_cases[n].name);
        }
        ck_assert_msg(retained_count(t, filter) == want_retained, "retained \"%s\"", filter);
    }
    topic_tree_free(t);
}
END_TEST

/* ---- subscriptions ------------------------------------------------------------ */

START_TEST(test_subscribe_qos_replace)
{
    struct topic_tree *t = topic_tree_new();
    int s1 = 0, s2 = 0;
    uint8_t qos = 9;
    ck_assert_int_eq(topic_tree_subscribe(t, "a/b", &s1, 0), 1);
    ck_assert_int_eq(topic_tree_subscribe(t, "a/b", &s1, 2), 0); /* [MQTT-3.8.4-3] */
    ck_assert_uint_eq(topic_tree_count(t), 1);
    struct hits h = match(t, "a/b");
    ck_assert_uint_eq(hits_of(&h, &s1, &qos), 1);
    ck_assert_uint_eq(qos, 2);
    ck_assert_int_eq(topic_tree_subscribe(t, "a/b", &s2, 1), 1);
    ck_assert_int_eq(topic_tree_subscribe(t, "a/b", &s1, 1), 0);
    ck_assert_uint_eq(topic_tree_count(t), 2);
    h = match(t, "a/b");
    ck_assert_uint_eq(h.n, 2);
    ck_assert_uint_eq(hits_of(&h, &s1, &qos), 1);
    ck_assert_uint_eq(qos, 1);
    topic_tree_free(t);
}
END_TEST

START_TEST(test_overlapping_filters)
{
    struct topic_tree *t = topic_tree_new();
    int s1 = 0, s2 = 0;
    uint8_t qos = 9;
    ck_assert_int_eq(topic_tree_subscribe(t, "a/b", &s1, 0), 1);
    ck_assert_int_eq(topic_tree_subscribe(t, "a/#", &s1, 1), 1);
    ck_assert_int_eq(topic_tree_subscribe(t, "a/+", &s1, 2), 1);
    ck_assert_int_eq(topic_tree_subscribe(t, "#", &s2, 0), 1);
    ck_assert_uint_eq(topic_tree_count(t), 4);
    struct hits h = match(t, "a/b");
    ck_assert_uint_eq(hits_of(&h, &s1, NULL), 3); /* once per filter; the caller merges */
    ck_assert_uint_eq(hits_of(&h, &s2, NULL), 1);
    uint8_t seen = 0;
    for (size_t i = 0; i < h.n; i++)
        if (h.sub[i] == &s1)
            seen |= (uint8_t)(1u << h.qos[i]);
    ck_assert_uint_eq(seen, 7); /* qos 0, 1 and 2: each filter its own qos */
    h = match(t, "a");
    ck_assert_uint_eq(hits_of(&h, &s1, &qos), 1);
    ck_assert_uint_eq(qos, 1); /* only a/# */
    topic_tree_free(t);
}
END_TEST

START_TEST(test_unsubscribe_and_prune)
{
    static const char *filters[] = {"a/b", "a/#", "a/+/c", "+/+", "#", "/", "a//", "$SYS/#"};
    static const char *names[] = {"a/b", "a", "a/x/c", "/a", "b", "/", "a//", "$SYS/x"};
    enum { N = sizeof filters / sizeof filters[0] };
    struct topic_tree *t = topic_tree_new();
    int s1 = 0, s2 = 0;
    for (size_t i = 0; i < N; i++) {
        ck_assert_int_eq(topic_tree_subscribe(t, filters[i], &s1, 1), 1);
        ck_assert_int_eq(topic_tree_subscribe(t, filters[i], &s2, 1), 1);
    }
    ck_assert_uint_eq(topic_tree_count(t), 2 * N);
    /* Unknown entries: other subscriber, unknown filter, inner node, wildcard twin. */
    int s3 = 0;
    ck_assert_int_eq(topic_tree_unsubscribe(t, "a/b", &s3), 1);
    ck_assert_int_eq(topic_tree_unsubscribe(t, "x/y", &s1), 1);
    ck_assert_int_eq(topic_tree_unsubscribe(t, "a", &s1), 1);
    ck_assert_int_eq(topic_tree_unsubscribe(t, "a/+", &s1), 1);
    ck_assert_int_eq(topic_tree_unsubscribe(t, "a/+/c/#", &s1), 1);
    ck_assert_uint_eq(topic_tree_count(t), 2 * N);

    for (size_t i = 0; i < N; i++) {
        ck_assert_int_eq(topic_tree_unsubscribe(t, filters[i], &s1), 0);
        ck_assert_int_eq(topic_tree_unsubscribe(t, filters[i], &s1), 1);
        ck_assert_uint_eq(topic_tree_count(t), 2 * N - 1 - 2 * i);
        ck_assert_int_eq(topic_tree_unsubscribe(t, filters[i], &s2), 0);
        ck_assert_uint_eq(topic_tree_count(t), 2 * N - 2 - 2 * i);
        for (size_t k = 0; k < N; k++) { /* only the filters still held match */
            size_t want = 0;
            for (size_t f = i + 1; f < N; f++)
                want += topic_matches(filters[f], names[k]);
            struct hits h = match(t, names[k]);
            ck_assert_msg(hits_of(&h, &s1, NULL) == want && hits_of(&h, &s2, NULL) == want,
                          "after removing %s: %s", filters[i], names[k]);
        }
    }
    ck_assert_uint_eq(topic_tree_count(t), 0);
    ck_assert_uint_eq(match(t, "a/b").n, 0);
    ck_assert_uint_eq(match(t, "/").n, 0);
    /* A pruned path is rebuilt from scratch. */
    ck_assert_int_eq(topic_tree_subscribe(t, "a/+/c", &s1, 2), 1);
    ck_assert_uint_eq(match(t, "a/x/c").n, 1);
    topic_tree_free(t); /* LeakSanitizer checks nothing else was left */
}
END_TEST

START_TEST(test_subscribe_invalid_filter)
{
    struct topic_tree *t = topic_tree_new();
    int s = 0;
    ck_assert_int_eq(topic_tree_subscribe(t, "a/#/b", &s, 0), -1);
    ck_assert_int_eq(topic_tree_subscribe(t, "", &s, 0), -1);
    ck_assert_uint_eq(topic_tree_count(t), 0);
    topic_tree_free(t);
    topic_tree_free(NULL);
}
END_TEST

/* Thousands of subscribers on one filter and thousands of sibling levels:
 * the tables switch to hashing and back as they grow and shrink. */
START_TEST(test_wide_tables)
{
    enum { N = 3000 };
    static char subs[N];
    static size_t order[N];
    uint64_t seed = 0x5eed0001;
    struct topic_tree *t = topic_tree_new();
    char filter[32];
    for (size_t i = 0; i < N; i++) {
        order[i] = i;
        ck_assert_int_eq(topic_tree_subscribe(t, "bcast/#", &subs[i], 0), 1);
        snprintf(filter, sizeof filter, "dev/%zu/cmd", i);
        ck_assert_int_eq(topic_tree_subscribe(t, filter, &subs[i], 1), 1);
    }
    for (size_t i = 0; i < N; i++)
        ck_assert_int_eq(topic_tree_subscribe(t, "bcast/#", &subs[i], 2), 0);
    ck_assert_uint_eq(topic_tree_count(t), 2 * N);

    rng_shuffle(&seed, order, N);
    for (size_t k = 0; k < N; k++) {
        size_t i = order[k];
        if (k % 97 == 0) {
            size_t count = 0;
            struct hits h;
            for (size_t j = 0; j < N; j++) { /* dev/<j>/cmd reaches exactly j */
                snprintf(filter, sizeof filter, "dev/%zu/cmd", j);
                h = match(t, filter);
                count += h.n;
                EXPECT(h.n <= 1 && (h.n == 0 || h.sub[0] == &subs[j]), "dev/%zu/cmd", j);
            }
            ck_assert_uint_eq(count, N - k);
        }
        snprintf(filter, sizeof filter, "dev/%zu/cmd", i);
        ck_assert_int_eq(topic_tree_unsubscribe(t, filter, &subs[i]), 0);
        ck_assert_int_eq(topic_tree_unsubscribe(t, "bcast/#", &subs[i]), 0);
        ck_assert_int_eq(topic_tree_unsubscribe(t, "bcast/#", &subs[i]), 1);
        ck_assert_uint_eq(topic_tree_count(t), 2 * (N - k - 1));
    }
    ck_assert_uint_eq(match(t, "bcast/x").n, 0);
    topic_tree_free(t);
}
END_TEST

START_TEST(test_broadcast_fanout)
{
    enum { N = 200 };
    static char subs[N];
    struct topic_tree *t = topic_tree_new();
    for (size_t i = 0; i < N; i++)
        ck_assert_int_eq(topic_tree_subscribe(t, "bcast/+", &subs[i], (uint8_t)(i % 3)), 1);
    struct hits h = match(t, "bcast/now");
    ck_assert_uint_eq(h.n, N);
    for (size_t i = 0; i < N; i++) {
        uint8_t qos = 9;
        ck_assert_uint_eq(hits_of(&h, &subs[i], &qos), 1);
        ck_assert_uint_eq(qos, i % 3);
    }
    topic_tree_free(t);
}
END_TEST

/* A topic may have 32 768 levels: nothing may recurse per level. */
START_TEST(test_long_topics)
{
    enum { LEVELS = 30000 };
    size_t cap = 2 * LEVELS + 8;
    char *name = malloc(cap), *plus = malloc(cap), *half = malloc(cap), *wide = malloc(cap);
    ck_assert(name && plus && half && wide);
    for (size_t i = 0; i < LEVELS; i++) {
        memcpy(name + 2 * i, "a/", 2);
        memcpy(plus + 2 * i, "+/", 2);
    }
    name[2 * LEVELS - 1] = plus[2 * LEVELS - 1] = '\0';
    memcpy(half, name, LEVELS);
    strcpy(half + LEVELS, "#"); /* a/a/.../a/# */
    memset(wide, 'w', 60000);   /* one level of 60 000 bytes */
    wide[60000] = '\0';

    struct topic_tree *t = topic_tree_new();
    int s[5] = {0};
    ck_assert_int_eq(topic_tree_subscribe(t, name, &s[0], 0), 1);
    ck_assert_int_eq(topic_tree_subscribe(t, plus, &s[1], 0), 1);
    ck_assert_int_eq(topic_tree_subscribe(t, half, &s[2], 0), 1);
    ck_assert_int_eq(topic_tree_subscribe(t, "#", &s[3], 0), 1);
    ck_assert_int_eq(topic_tree_subscribe(t, wide, &s[4], 0), 1);
    struct hits h = match(t, name);
    ck_assert_uint_eq(h.n, 4);
    ck_assert_uint_eq(hits_of(&h, &s[4], NULL), 0);
    h = match(t, wide);
    ck_assert_uint_eq(h.n, 2); /* wide and # */
    ck_assert_uint_eq(hits_of(&h, &s[4], NULL), 1);

    struct message *m = message_new(name, (uint16_t)strlen(name), (const uint8_t *)"p", 1, 0, 1);
    ck_assert_int_eq(topic_retain_set(t, m), 0);
    ck_assert_uint_eq(retained_count(t, name), 1);
    ck_assert_uint_eq(retained_count(t, plus), 1);
    ck_assert_uint_eq(retained_count(t, half), 1);
    ck_assert_uint_eq(retained_count(t, "#"), 1);
    ck_assert_uint_eq(retained_count(t, "a/+"), 0);
    ck_assert_int_eq(topic_tree_unsubscribe(t, plus, &s[1]), 0);
    ck_assert_uint_eq(match(t, name).n, 3);
    topic_tree_free(t); /* deep teardown */
    ck_assert_uint_eq(m->refcount, 1);
    message_unref(m);
    free(name);
    free(plus);
    free(half);
    free(wide);
}
END_TEST

/* ---- retained messages ------------------------------------------------------------ */

START_TEST(test_retain_refcounts)
{
    struct topic_tree *t = topic_tree_new();
    struct message *m1 = msg_new("a/b", "one");
    struct message *m2 = msg_new("a/b", "two");
    struct message *clear = msg_new("a/b", "");
    ck_assert_int_eq(topic_retain_set(t, m1), 0);
    ck_assert_uint_eq(m1->refcount, 2);
    ck_assert_uint_eq(topic_retain_count(t), 1);
    ck_assert_int_eq(topic_retain_set(t, m1), 0); /* the same message again */
    ck_assert_uint_eq(m1->refcount, 2);
    ck_assert_int_eq(topic_retain_set(t, m2), 0); /* replace */
    ck_assert_uint_eq(m1->refcount, 1);
    ck_assert_uint_eq(m2->refcount, 2);
    ck_assert_uint_eq(topic_retain_count(t), 1);
    struct topics r;
    ck_assert_str_eq(retained_topics(t, "a/b", &r), "a/b");
    ck_assert_int_eq(topic_retain_set(t, clear), 0); /* [MQTT-3.3.1-10] */
    ck_assert_uint_eq(m2->refcount, 1);
    ck_assert_uint_eq(clear->refcount, 1); /* [MQTT-3.3.1-11] not stored */
    ck_assert_uint_eq(topic_retain_count(t), 0);
    ck_assert_str_eq(retained_topics(t, "#", &r), "");
    ck_assert_int_eq(topic_retain_set(t, clear), 0); /* clearing nothing */
    ck_assert_uint_eq(topic_retain_count(t), 0);
    ck_assert_int_eq(retain_str(t, "a/+", "x"), -1); /* not a topic name */
    ck_assert_uint_eq(topic_retain_count(t), 0);

    ck_assert_int_eq(topic_retain_set(t, m1), 0);
    ck_assert_int_eq(retain_str(t, "a", "x"), 0);
    ck_assert_uint_eq(topic_retain_count(t), 2);
    ck_assert_str_eq(retained_topics(t, "a/#", &r), "a a/b");
    topic_tree_free(t); /* unrefs both: m1 back to 1, "a" freed (LSan) */
    ck_assert_uint_eq(m1->refcount, 1);
    message_unref(m1);
    message_unref(m2);
    message_unref(clear);
}
END_TEST

START_TEST(test_retain_match_wildcards)
{
    static const char *names[] = {"a",    "a/b", "a/c", "a/b/c", "$SYS", "$SYS/x",
                                  "b/$x", "/",   "a//", "$",     "x",    "x/y"};
    static const struct {
        const char *filter;
        const char *want; /* sorted, space separated */
    } cases[] = {
        {"#", "/ a a// a/b a/b/c a/c b/$x x x/y"},
        {"+", "a x"},
        {"+/+", "/ a/b a/c b/$x x/y"},
        {"+/+/+", "a// a/b/c"},
        {"a/#", "a a// a/b a/b/c a/c"},
        {"a/+", "a/b a/c"},
        {"a/+/#", "a// a/b a/b/c a/c"},
        {"a/+/c", "a/b/c"},
        {"$SYS/#", "$SYS $SYS/x"},
        {"$SYS/+", "$SYS/x"},
        {"$SYS", "$SYS"},
        {"$", "$"},
        {"+/x", ""},
        {"+/#", "/ a a// a/b a/b/c a/c b/$x x x/y"},
        {"+/$x", "b/$x"},
        {"/#", "/"},
        {"/+", "/"},
        {"a//+", "a//"},
        {"nope/#", ""},
        {"a/b/c/d", ""},
    };
    struct topic_tree *t = topic_tree_new();
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        ck_assert_int_eq(retain_str(t, names[i], "v"), 0);
    ck_assert_uint_eq(topic_retain_count(t), sizeof names / sizeof names[0]);
    struct topics r;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        ck_assert_msg(strcmp(retained_topics(t, cases[i].filter, &r), cases[i].want) == 0,
                      "\"%s\": got \"%s\", want \"%s\"", cases[i].filter, r.buf, cases[i].want);
    /* Clearing prunes: only x/y left under x, nothing under a. */
    for (size_t i = 0; i < 4; i++)
        ck_assert_int_eq(retain_str(t, names[i], ""), 0);
    ck_assert_str_eq(retained_topics(t, "#", &r), "/ a// b/$x x x/y");
    topic_tree_free(t);
}
END_TEST

START_TEST(test_retain_many)
{
    enum { N = 2000 };
    struct topic_tree *t = topic_tree_new();
    char name[32];
    for (size_t i = 0; i < N; i++) {
        snprintf(name, sizeof name, "dev/%zu/state", i);
        ck_assert_int_eq(retain_str(t, name, "on"), 0);
    }
    ck_assert_uint_eq(retained_count(t, "dev/+/state"), N);
    for (size_t i = 0; i < N; i += 2) {
        snprintf(name, sizeof name, "dev/%zu/state", i);
        ck_assert_int_eq(retain_str(t, name, ""), 0);
    }
    ck_assert_uint_eq(topic_retain_count(t), N / 2);
    ck_assert_uint_eq(retained_count(t, "dev/+/state"), N / 2);
    ck_assert_uint_eq(retained_count(t, "dev/#"), N / 2);
    ck_assert_uint_eq(retained_count(t, "+/+/+"), N / 2);
    ck_assert_uint_eq(retained_count(t, "dev/1/state"), 1);
    ck_assert_uint_eq(retained_count(t, "dev/2/state"), 0);
    topic_tree_free(t);
}
END_TEST

/* ---- randomised cross-check against topic_matches() ------------------------------ */

/* A random topic of 1..6 levels drawn from words[0..nwords); a filter also
 * gets '+' levels and a final '#'. Never the (invalid) empty string. */
static void random_topic(uint64_t *seed, char *out, size_t cap, const char *const *words,
                         uint32_t nwords, bool filter)
{
    do {
        uint32_t levels = 1 + rng_below(seed, 6);
        out[0] = '\0';
        for (uint32_t l = 0; l < levels; l++) {
            const char *w = words[rng_below(seed, nwords)];
            uint32_t r = rng_below(seed, 10);
            if (filter && r < 3)
                w = "+";
            else if (filter && r == 3 && l + 1 == levels)
                w = "#";
            EXPECT(strlen(out) + strlen(w) + 2 < cap, "topic too long");
            strcat(out, l ? "/" : "");
            strcat(out, w);
        }
    } while (out[0] == '\0');
}

enum { RND_FILTERS = 400, RND_NAMES = 3000, RND_RETAINED = 300 };

/* Subscriber i is &rnd.subscribers[i] and holds filters[i]; filters repeat. */
static struct {
    char subscribers[RND_FILTERS];
    char filters[RND_FILTERS][48];
    bool removed[RND_FILTERS];
    unsigned hits[RND_FILTERS];
    char names[RND_RETAINED][48]; /* distinct retained names */
    size_t nnames;
    unsigned seen[RND_RETAINED];
} rnd;

static void on_rnd_hit(void *subscriber, uint8_t qos, void *ctx)
{
    (void)qos;
    (void)ctx;
    rnd.hits[(char *)subscriber - rnd.subscribers]++;
}

static void on_rnd_retained(struct message *m, void *ctx)
{
    (void)ctx;
    for (size_t i = 0; i < rnd.nnames; i++)
        if (strcmp(rnd.names[i], m->topic) == 0) {
            rnd.seen[i]++;
            return;
        }
    ck_abort_msg("unknown retained topic %s", m->topic);
}

static void rnd_fill(struct topic_tree *t, uint64_t *seed, const char *const *words,
                     uint32_t nwords)
{
    char name[48];
    for (size_t i = 0; i < RND_FILTERS; i++) {
        random_topic(seed, rnd.filters[i], sizeof rnd.filters[i], words, nwords, true);
        rnd.removed[i] = false;
        ck_assert_int_eq(topic_tree_subscribe(t, rnd.filters[i], &rnd.subscribers[i], 0), 1);
    }
    rnd.nnames = 0;
    for (size_t i = 0; i < RND_RETAINED; i++) {
        random_topic(seed, name, sizeof name, words, nwords, false);
        bool dup = false;
        for (size_t k = 0; k < rnd.nnames; k++)
            dup = dup || strcmp(rnd.names[k], name) == 0;
        if (!dup)
            strcpy(rnd.names[rnd.nnames++], name);
        ck_assert_int_eq(retain_str(t, name, "r"), 0);
    }
    ck_assert_uint_eq(topic_retain_count(t), rnd.nnames);
}

static void rnd_compare(const struct topic_tree *t, uint64_t *seed, const char *const *words,
                        uint32_t nwords, uint64_t start)
{
    char name[48];
    for (size_t k = 0; k < RND_NAMES; k++) {
        random_topic(seed, name, sizeof name, words, nwords, false);
        memset(rnd.hits, 0, sizeof rnd.hits);
        topic_tree_match(t, name, on_rnd_hit, NULL);
        for (size_t i = 0; i < RND_FILTERS; i++)
            EXPECT(rnd.hits[i] == (!rnd.removed[i] && topic_matches(rnd.filters[i], name)),
                   "seed %llx: \"%s\" vs \"%s\": %u hits", (unsigned long long)start,
                   rnd.filters[i], name, rnd.hits[i]);
    }
    for (size_t i = 0; i < RND_FILTERS; i++) {
        memset(rnd.seen, 0, sizeof rnd.seen);
        topic_retain_match(t, rnd.filters[i], on_rnd_retained, NULL);
        for (size_t k = 0; k < rnd.nnames; k++)
            EXPECT(rnd.seen[k] == topic_matches(rnd.filters[i], rnd.names[k]),
                   "seed %llx: retained \"%s\" vs \"%s\": %u", (unsigned long long)start,
                   rnd.filters[i], rnd.names[k], rnd.seen[k]);
    }
}

/* Compare both walks with topic_matches(), drop about half of the
 * subscriptions (pruning, shrinking tables) and compare again. */
static void cross_check(uint64_t seed, const char *const *words, uint32_t nwords)
{
    uint64_t start = seed;
    struct topic_tree *t = topic_tree_new();
    rnd_fill(t, &seed, words, nwords);
    rnd_compare(t, &seed, words, nwords, start);
    for (size_t i = 0; i < RND_FILTERS; i += 1 + rng_below(&seed, 2)) {
        ck_assert_int_eq(topic_tree_unsubscribe(t, rnd.filters[i], &rnd.subscribers[i]), 0);
        rnd.removed[i] = true;
    }
    rnd_compare(t, &seed, words, nwords, start);
    for (size_t i = 0; i < RND_FILTERS; i++)
        if (!rnd.removed[i])
            ck_assert_int_eq(topic_tree_unsubscribe(t, rnd.filters[i], &rnd.subscribers[i]), 0);
    ck_assert_uint_eq(topic_tree_count(t), 0);
    topic_tree_free(t);
}

START_TEST(test_random_narrow)
{
    static const char *const words[] = {"a", "b", "", "$s", "ab"};
    cross_check(0x9e3779b97f4a7c15ull, words, 5);
}
END_TEST

START_TEST(test_random_wide)
{
    static const char *const words[] = {
        "a", "b", "c", "d", "e", "f", "g", "h",  "i",  "j",  "k",  "l",  "m",  "n",  "o",  "p",
        "q", "r", "s", "t", "u", "v", "",  "$x", "$y", "aa", "ab", "ba", "bb", "cc", "dd", "ee"};
    cross_check(0x0123456789abcdefull, words, 32);
}
END_TEST

Suite *topic_suite(void);
Suite *topic_suite(void)
{
    Suite *s = suite_create("topic");
    TCase *tc = tcase_create("validate");
    tcase_add_test(tc, test_name_valid);
    tcase_add_test(tc, test_filter_valid);
    tcase_add_test(tc, test_has_wildcard);
    suite_add_tcase(s, tc);

    tc = tcase_create("match");
    tcase_add_test(tc, test_match_table);
    tcase_add_test(tc, test_match_table_shared);
    suite_add_tcase(s, tc);

    tc = tcase_create("subscriptions");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_subscribe_qos_replace);
    tcase_add_test(tc, test_overlapping_filters);
    tcase_add_test(tc, test_unsubscribe_and_prune);
    tcase_add_test(tc, test_subscribe_invalid_filter);
    tcase_add_test(tc, test_wide_tables);
    tcase_add_test(tc, test_broadcast_fanout);
    tcase_add_test(tc, test_long_topics);
    suite_add_tcase(s, tc);

    tc = tcase_create("retained");
    tcase_add_test(tc, test_retain_refcounts);
    tcase_add_test(tc, test_retain_match_wildcards);
    tcase_add_test(tc, test_retain_many);
    suite_add_tcase(s, tc);

    tc = tcase_create("random");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_random_narrow);
    tcase_add_test(tc, test_random_wide);
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(topic_suite)
