/* kv_suite: settings trees and their schema checks (common/kv.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../common/kv.h"
#include "check_main.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* ---- Building maps from a compact spec ---------------------------------
 * "dsn=x table=t pool{size=4 idle=1}": items separated by spaces, a value
 * after '=', a nested map in braces. Positions are deterministic: the map
 * spec is at 1:1, the n-th item met (in text order, nested ones included)
 * is on line n + 1, at column 1 + 2 * depth; a nested map is at its key's
 * line, 2 columns further. */

struct spec {
    const char *p;
    int line;
};

static struct kvmap *spec_map(struct spec *s, int line, int col, int depth);

static char *spec_word(struct spec *s, const char *stops)
{
    size_t n = strcspn(s->p, stops);
    char *w = strndup(s->p, n);
    ck_assert_ptr_nonnull(w);
    s->p += n;
    return w;
}

static void spec_item(struct spec *s, struct kvmap *m, int depth)
{
    struct kv *it = &m->items[m->count++];
    it->key = spec_word(s, "={ }");
    it->file = "t.yaml";
    it->line = ++s->line;
    it->col = 1 + 2 * depth;
    if (*s->p == '=') {
        s->p++;
        it->value = spec_word(s, " }");
    } else {
        ck_assert_int_eq(*s->p, '{');
        s->p++;
        it->map = spec_map(s, it->line, it->col + 2, depth + 1);
        ck_assert_int_eq(*s->p, '}');
        s->p++;
    }
}

static struct kvmap *spec_map(struct spec *s, int line, int col, int depth)
{
    struct kvmap *m = calloc(1, sizeof *m);
    ck_assert_ptr_nonnull(m);
    m->items = calloc(32, sizeof *m->items);
    ck_assert_ptr_nonnull(m->items);
    m->file = "t.yaml";
    m->line = line;
    m->col = col;
    while (*s->p == ' ')
        s->p++;
    while (*s->p && *s->p != '}') {
        spec_item(s, m, depth);
        while (*s->p == ' ')
            s->p++;
    }
    return m;
}

static struct kvmap *map_from(const char *text)
{
    struct spec s = {text, 1};
    return spec_map(&s, 1, 1, 0);
}

/* ---- kv_check ---------------------------------------------------------- */

static const struct kv_key pg_schema[] = {
    {"dsn", KV_SCALAR, KV_REQUIRED, "connection string"},
    {"table", KV_SCALAR, 0, "table name"},
    {"pool", KV_MAP, 0, "pool settings"},
    {"max_batch_size", KV_SCALAR, 0, "rows per batch"},
    {"tls", KV_MAP, KV_REQUIRED, "TLS settings"},
    {NULL, 0, 0, NULL},
};

static const struct kv_key empty_schema[] = {{NULL, 0, 0, NULL}};

struct check_case {
    const char *name;
    const char *spec;
    const struct kv_key *schema;
    const char *where;
    int rc;
    const char *err; /* exact message when rc < 0 */
};

static const struct check_case check_cases[] = {
    {"all keys", "dsn=x table=t pool{size=4} max_batch_size=10 tls{}", pg_schema, "c", 0, NULL},
    {"required keys only", "tls{ca=x} dsn=postgres://", pg_schema, "c", 0, NULL},
    {"empty value is a value", "dsn= tls{}", pg_schema, "c", 0, NULL},
    {"empty map and schema", "", empty_schema, "c", 0, NULL},
    {"unknown key, 1 edit", "dsn=x tabel=t tls{}", pg_schema, "connector 'pg'", -1,
     "t.yaml:3:1: connector 'pg': unknown key 'tabel' (did you mean 'table'?)"},
    {"unknown key, no near name", "dsn=x colour=red tls{}", pg_schema, "connector 'pg'", -1,
     "t.yaml:3:1: connector 'pg': unknown key 'colour'"},
    {"unknown short key, 2 edits: no hint", "dsn=x tbl=t tls{}", pg_schema, "c", -1,
     "t.yaml:3:1: c: unknown key 'tbl'"},
    {"unknown long key, 3 edits", "dsn=x max_bitch_sz=1 tls{}", pg_schema, "c", -1,
     "t.yaml:3:1: c: unknown key 'max_bitch_sz' (did you mean 'max_batch_size'?)"},
    {"unknown long key, 4 edits: no hint", "dsn=x mix_bitch_sz=1 tls{}", pg_schema, "c", -1,
     "t.yaml:3:1: c: unknown key 'mix_bitch_sz'"},
    {"case matters", "DSN=x tls{}", pg_schema, "c", -1,
     "t.yaml:2:1: c: unknown key 'DSN' (did you mean 'dsn'?)"},
    {"unknown key in an empty schema", "a=1", empty_schema, "c", -1,
     "t.yaml:2:1: c: unknown key 'a'"},
    {"duplicate key", "dsn=x tls{} dsn=y", pg_schema, "c", -1,
     "t.yaml:4:1: c: duplicate key 'dsn'"},
    {"missing required key", "table=t tls{}", pg_schema, "connector 'pg'", -1,
     "t.yaml:1:1: connector 'pg': missing required key 'dsn'"},
    {"missing second required key", "dsn=x", pg_schema, "c", -1,
     "t.yaml:1:1: c: missing required key 'tls'"},
    {"empty map, required keys", "", pg_schema, "c", -1,
     "t.yaml:1:1: c: missing required key 'dsn'"},
    {"map where a value is expected", "dsn{a=1} tls{}", pg_schema, "c", -1,
     "t.yaml:2:1: c: key 'dsn': expected a value, got a mapping"},
    {"value where a map is expected", "dsn=x pool=big tls{}", pg_schema, "c", -1,
     "t.yaml:3:1: c: key 'pool': expected a mapping, got 'big'"},
    {"unknown key reported before missing ones", "colour=red", pg_schema, "c", -1,
     "t.yaml:2:1: c: unknown key 'colour'"},
    {"first bad item wins", "dsn=x pool=a tabel=b", pg_schema, "c", -1,
     "t.yaml:3:1: c: key 'pool': expected a mapping, got 'a'"},
    {"no where: no prefix", "dsn=x", pg_schema, NULL, -1, "t.yaml:1:1: missing required key 'tls'"},
    {"empty where: no prefix", "zz=1", empty_schema, "", -1, "t.yaml:2:1: unknown key 'zz'"},
    {"long key is cut", "dsn=x tls{} abcdefghijabcdefghijabcdefghijabcdefghijXYZ=1", pg_schema, "c",
     -1, "t.yaml:4:1: c: unknown key 'abcdefghijabcdefghijabcdefghijabcdefghij...'"},
    {"nested maps are not checked", "dsn=x tls{anything=1 deeper{x=y}}", pg_schema, "c", 0, NULL},
};

START_TEST(test_check_table)
{
    const struct check_case *c = &check_cases[_i];
    struct kvmap *m = map_from(c->spec);
    char err[256] = "untouched";
    int rc = kv_check(m, c->schema, c->where, err, sizeof err);
    ck_assert_msg(rc == c->rc, "%s: rc %d, err '%s'", c->name, rc, err);
    if (c->rc < 0)
        ck_assert_msg(!strcmp(err, c->err), "%s: got '%s'\n want '%s'", c->name, err, c->err);
    kvmap_free(m);
}
END_TEST

START_TEST(test_check_null_map)
{
    char err[64] = "";
    ck_assert_int_eq(kv_check(NULL, pg_schema, "c", err, sizeof err), 0);
}
END_TEST

START_TEST(test_check_control_bytes_quoted)
{
    struct kvmap *m = map_from("a=1");
    char err[128];
    m->items[0].key[0] = '\n';
    ck_assert_int_eq(kv_check(m, empty_schema, "c", err, sizeof err), -1);
    ck_assert_str_eq(err, "t.yaml:2:1: c: unknown key '?'");
    kvmap_free(m);
}
END_TEST

/* ---- kv_uint, kv_bool ---------------------------------------------------- */

struct uint_case {
    const char *text;
    uint64_t min, max;
    int rc;
    uint64_t want;
};

static const struct uint_case uint_cases[] = {
    {"0", 0, 10, 0, 0},
    {"10", 0, 10, 0, 10},
    {"11", 0, 10, -1, 0},
    {"4", 5, 10, -1, 0},
    {"5", 5, 10, 0, 5},
    {"18446744073709551615", 0, UINT64_MAX, 0, UINT64_MAX},
    {"18446744073709551616", 0, UINT64_MAX, -1, 0},
    {"99999999999999999999999", 0, UINT64_MAX, -1, 0},
    {"", 0, 10, -1, 0},
    {"01", 0, 10, -1, 0},
    {"00", 0, 10, -1, 0},
    {"+1", 0, 10, -1, 0},
    {"-1", 0, 10, -1, 0},
    {"1.5", 0, 10, -1, 0},
    {"1e3", 0, 10000, -1, 0},
    {"0x10", 0, 100, -1, 0},
    {" 1", 0, 10, -1, 0},
    {"1 ", 0, 10, -1, 0},
    {"1_000", 0, 10000, -1, 0},
    {"abc", 0, 10, -1, 0},
};

START_TEST(test_uint_table)
{
    const struct uint_case *c = &uint_cases[_i];
    struct kv item = {.key = "k", .value = (char *)c->text};
    uint64_t v = 12345;
    int rc = kv_uint(&item, c->min, c->max, &v);
    ck_assert_msg(rc == c->rc, "'%s': rc %d", c->text, rc);
    ck_assert_msg(v == (rc == 0 ? c->want : 12345), "'%s': value %llu", c->text,
                  (unsigned long long)v);
}
END_TEST

START_TEST(test_uint_of_mapping_or_null)
{
    struct kvmap sub = {0};
    struct kv item = {.key = "k", .map = &sub};
    uint64_t v = 7;
    ck_assert_int_eq(kv_uint(&item, 0, 10, &v), -1);
    ck_assert_int_eq(kv_uint(NULL, 0, 10, &v), -1);
    ck_assert_uint_eq(v, 7);
}
END_TEST

struct bool_case {
    const char *text;
    int rc;
    bool want;
};

static const struct bool_case bool_cases[] = {
    {"true", 0, true}, {"yes", 0, true}, {"false", 0, false}, {"no", 0, false},
    {"True", -1, 0},   {"YES", -1, 0},   {"1", -1, 0},        {"0", -1, 0},
    {"", -1, 0},       {"on", -1, 0},    {"off", -1, 0},      {"true ", -1, 0},
};

START_TEST(test_bool_table)
{
    const struct bool_case *c = &bool_cases[_i];
    struct kv item = {.key = "k", .value = (char *)c->text};
    bool v = !c->want;
    int rc = kv_bool(&item, &v);
    ck_assert_msg(rc == c->rc, "'%s': rc %d", c->text, rc);
    if (rc == 0)
        ck_assert_msg(v == c->want, "'%s'", c->text);
    ck_assert_int_eq(kv_bool(NULL, &v), -1);
}
END_TEST

/* ---- kv_error ---------------------------------------------------------- */

START_TEST(test_error_positions)
{
    struct kvmap *m = map_from("a=1 b{c=2}");
    char err[128];
    ck_assert_int_eq(kv_error(err, sizeof err, m, &m->items[0], "bad %s %d", "value", 7), -1);
    ck_assert_str_eq(err, "t.yaml:2:1: bad value 7");
    ck_assert_int_eq(kv_error(err, sizeof err, m, NULL, "bad map"), -1);
    ck_assert_str_eq(err, "t.yaml:1:1: bad map");
    ck_assert_int_eq(kv_error(err, sizeof err, m->items[1].map, NULL, "inner"), -1);
    ck_assert_str_eq(err, "t.yaml:3:3: inner");
    ck_assert_int_eq(kv_error(err, sizeof err, NULL, &m->items[1].map->items[0], "deep"), -1);
    ck_assert_str_eq(err, "t.yaml:4:3: deep");
    ck_assert_int_eq(kv_error(err, sizeof err, NULL, NULL, "nowhere"), -1);
    ck_assert_str_eq(err, "nowhere");
    kvmap_free(m);
}
END_TEST

START_TEST(test_error_small_buffers)
{
    struct kvmap *m = map_from("a=1");
    char err[8];
    memset(err, 'x', sizeof err);
    ck_assert_int_eq(kv_error(err, sizeof err, m, &m->items[0], "message"), -1);
    ck_assert_str_eq(err, "t.yaml:");
    ck_assert_int_eq(kv_error(err, 3, m, NULL, "message"), -1);
    ck_assert_str_eq(err, "t.");
    ck_assert_int_eq(kv_error(NULL, 0, m, NULL, "message"), -1);
    memset(err, 'x', sizeof err);
    ck_assert_int_eq(kv_error(err, 0, m, NULL, "message"), -1);
    ck_assert_int_eq(err[0], 'x');
    struct kvmap *q = map_from("q=1");
    ck_assert_int_eq(kv_check(q, empty_schema, "c", err, 1), -1);
    ck_assert_str_eq(err, "");
    kvmap_free(q);
    kvmap_free(m);
}
END_TEST

/* ---- Lookup, copies, lists --------------------------------------------- */

START_TEST(test_find_and_str)
{
    struct kvmap *m = map_from("a=1 b{c=2} e=");
    ck_assert_ptr_eq(kv_find(m, "a"), &m->items[0]);
    ck_assert_ptr_eq(kv_find(m, "b"), &m->items[1]);
    ck_assert_ptr_null(kv_find(m, "c"));
    ck_assert_ptr_null(kv_find(NULL, "a"));
    ck_assert_str_eq(kv_str(m, "a", "def"), "1");
    ck_assert_str_eq(kv_str(m, "e", "def"), "");
    ck_assert_str_eq(kv_str(m, "zz", "def"), "def");
    ck_assert_str_eq(kv_str(m, "b", "def"), "def");
    ck_assert_ptr_null(kv_str(m, "zz", NULL));
    ck_assert_str_eq(kv_str(NULL, "a", "def"), "def");
    kvmap_free(m);
}
END_TEST

static void assert_same_map(const struct kvmap *a, const struct kvmap *b)
{
    ck_assert_ptr_ne(a, b);
    ck_assert_uint_eq(a->count, b->count);
    ck_assert_ptr_eq(a->file, b->file);
    ck_assert_int_eq(a->line, b->line);
    ck_assert_int_eq(a->col, b->col);
    for (unsigned i = 0; i < a->count; i++) {
        const struct kv *x = &a->items[i], *y = &b->items[i];
        ck_assert_str_eq(x->key, y->key);
        ck_assert_ptr_ne(x->key, y->key);
        ck_assert_int_eq(x->line, y->line);
        ck_assert_int_eq(x->col, y->col);
        ck_assert_ptr_eq(x->file, y->file);
        ck_assert_int_eq(!x->value, !y->value);
        if (x->value)
            ck_assert_str_eq(x->value, y->value);
        else
            assert_same_map(x->map, y->map);
    }
}

START_TEST(test_dup)
{
    struct kvmap *m = map_from("a=1 b{c=2 d{e=3}} f=");
    struct kvmap *d = kvmap_dup(m);
    ck_assert_ptr_nonnull(d);
    assert_same_map(m, d);
    kvmap_free(m);
    ck_assert_str_eq(d->items[1].map->items[1].map->items[0].value, "3"); /* independent */
    kvmap_free(d);
    ck_assert_ptr_null(kvmap_dup(NULL));
    kvmap_free(NULL);
}
END_TEST

START_TEST(test_dup_without)
{
    struct kvmap *m = map_from("connector=pg table=t key{x=1}");
    struct kvmap *d = kvmap_dup_without(m, "connector");
    ck_assert_uint_eq(d->count, 2);
    ck_assert_ptr_null(kv_find(d, "connector"));
    ck_assert_str_eq(kv_str(d, "table", ""), "t");
    ck_assert_int_eq(d->line, 1);
    ck_assert_int_eq(kv_find(d, "key")->line, 4);
    kvmap_free(d);
    d = kvmap_dup_without(m, "absent");
    assert_same_map(m, d);
    kvmap_free(d);
    struct kvmap *only = map_from("connector=pg");
    d = kvmap_dup_without(only, "connector");
    ck_assert_uint_eq(d->count, 0);
    kvmap_free(d);
    kvmap_free(only);
    kvmap_free(m);
}
END_TEST

START_TEST(test_list_push_clear)
{
    struct kvlist l = {0};
    for (unsigned i = 0; i < 1000; i++) {
        struct kvmap *m = map_from("a=1");
        m->line = (int)i;
        ck_assert_int_eq(kvlist_push(&l, m), 0);
    }
    ck_assert_uint_eq(l.count, 1000);
    for (unsigned i = 0; i < 1000; i++)
        ck_assert_int_eq(l.items[i]->line, (int)i);
    kvlist_clear(&l);
    ck_assert_uint_eq(l.count, 0);
    ck_assert_ptr_null(l.items);
    ck_assert_int_eq(kvlist_push(&l, map_from("b=2")), 0); /* reusable */
    ck_assert_str_eq(kv_str(l.items[0], "b", ""), "2");
    l.count = 0; /* an owner may truncate (after freeing what it drops) */
    kvmap_free(l.items[0]);
    for (unsigned i = 0; i < 9; i++)
        ck_assert_int_eq(kvlist_push(&l, map_from("c=3")), 0);
    ck_assert_uint_eq(l.count, 9);
    kvlist_clear(&l);
    kvlist_clear(&l);
    kvlist_clear(NULL);
}
END_TEST

static Suite *kv_suite(void)
{
    Suite *s = suite_create("kv");
    TCase *tc = tcase_create("kv");
    tcase_add_loop_test(tc, test_check_table, 0, (int)ARRAY_LEN(check_cases));
    tcase_add_test(tc, test_check_null_map);
    tcase_add_test(tc, test_check_control_bytes_quoted);
    tcase_add_loop_test(tc, test_uint_table, 0, (int)ARRAY_LEN(uint_cases));
    tcase_add_test(tc, test_uint_of_mapping_or_null);
    tcase_add_loop_test(tc, test_bool_table, 0, (int)ARRAY_LEN(bool_cases));
    tcase_add_test(tc, test_error_positions);
    tcase_add_test(tc, test_error_small_buffers);
    tcase_add_test(tc, test_find_and_str);
    tcase_add_test(tc, test_dup);
    tcase_add_test(tc, test_dup_without);
    tcase_add_test(tc, test_list_push_clear);
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(kv_suite)
