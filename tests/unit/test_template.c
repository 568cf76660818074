/* template_suite: rule target templates (rules/template.c). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../common/buf.h"
#include "../../rules/template.h"
#include "check_main.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

#define JSON_DOC \
    "{\"t\": 21.5, \"n\": 42, \"neg\": -7, \"big\": 9007199254740993, \"exp\": 1e300," \
    " \"small\": 0.1, \"s\": \"hi \\\"you\\\" \\u00e9\", \"ok\": true, \"no\": false," \
    " \"nil\": null, \"arr\": [1, \"two\", {\"x\": 3}], \"meta\": {\"room\": \"k1\"," \
    " \"pos\": {\"x\": 1, \"y\": 2}}, \"empty\": {}, \"dot.key\": 5, \"dup\": 1, \"dup\": 2}"

/* An error row and its messages. */
#define ERR(name, text, msg) \
    { \
        name, text, NULL, -1, msg, false, false \
    }
#define DOLLAR(at) "'$' at character " at " must start '${field}' or '$$' (a literal '$')"
#define UNKNOWN(f) \
    "unknown field '" f "' (fields: clientid, group, device, topic, qos, msgid, timestamp, " \
    "payload, payload.<key>...)"
#define EMPTY_KEY(f) "field '" f "' has an empty key (write ${payload.a.b})"

struct render_case {
    const char *name;
    const char *text;
    const char *payload; /* NULL: JSON_DOC */
    int rc;
    const char *want; /* rendering, or the exact compile error */
    bool uses_json, literal;
};

static const struct render_case render_cases[] = {
    /* Literals. */
    {"empty template", "", NULL, 0, "", false, true},
    {"plain text", "sensor-telemetry", NULL, 0, "sensor-telemetry", false, true},
    {"dollar dollar", "cost: 5$$", NULL, 0, "cost: 5$", false, true},
    {"only dollars", "$$$$", NULL, 0, "$$", false, true},
    {"dollar dollar brace", "$${clientid}", NULL, 0, "${clientid}", false, true},
    {"braces alone", "{x} }", NULL, 0, "{x} }", false, true},
    {"utf-8 text", "caf\xc3\xa9-${qos}", NULL, 0, "caf\xc3\xa9-1", false, false},

    /* Message fields. */
    {"client id", "${clientid}", NULL, 0, "GID_s@@@dev-1", false, false},
    {"group", "${group}", NULL, 0, "GID_s", false, false},
    {"device", "dev-${device}", NULL, 0, "dev-dev-1", false, false},
    {"topic", "${topic}", NULL, 0, "SensorData/room1/t", false, false},
    {"qos", "q${qos}", NULL, 0, "q1", false, false},
    {"msgid 16 hex digits", "${msgid}", NULL, 0, "000000001234abcd", false, false},
    {"timestamp ms", "${timestamp}", NULL, 0, "1700000000123", false, false},
    {"fields side by side", "${group}/${device}/${qos}", NULL, 0, "GID_s/dev-1/1", false, false},
    {"raw payload", "<${payload}>", "not json {", 0, "<not json {>", false, false},
    {"field then dollar", "${qos}$$", NULL, 0, "1$", false, false},

    /* Payload fields. */
    {"string without quotes", "${payload.meta.room}", NULL, 0, "k1", true, false},
    {"string escapes decoded", "${payload.s}", NULL, 0, "hi \"you\" \xc3\xa9", true, false},
    {"nested object compact", "${payload.meta}", NULL, 0,
     "{\"room\":\"k1\",\"pos\":{\"x\":1,\"y\":2}}", true, false},
    {"array compact", "${payload.arr}", NULL, 0, "[1,\"two\",{\"x\":3}]", true, false},
    {"empty object", "${payload.empty}", NULL, 0, "{}", true, false},
    {"deep number", "${payload.meta.pos.y}", NULL, 0, "2", true, false},
    {"integer", "${payload.n}", NULL, 0, "42", true, false},
    {"negative integer", "${payload.neg}", NULL, 0, "-7", true, false},
    {"fraction", "${payload.t}", NULL, 0, "21.5", true, false},
    {"shortest fraction", "${payload.small}", NULL, 0, "0.1", true, false},
    {"above 2^53", "${payload.big}", NULL, 0, "9007199254740992", true, false},
    {"exponent", "${payload.exp}", NULL, 0, "1e+300", true, false},
    {"true", "${payload.ok}", NULL, 0, "true", true, false},
    {"false", "${payload.no}", NULL, 0, "false", true, false},
    {"null", "${payload.nil}", NULL, 0, "null", true, false},
    {"first of duplicate keys", "${payload.dup}", NULL, 0, "1", true, false},
    {"missing key", "[${payload.nope}]", NULL, 0, "[]", true, false},
    {"missing nested key", "[${payload.meta.nope.deeper}]", NULL, 0, "[]", true, false},
    {"key under a string", "[${payload.s.x}]", NULL, 0, "[]", true, false},
    {"no array indexes", "[${payload.arr.0}]", NULL, 0, "[]", true, false},
    {"keys cannot hold dots", "[${payload.dot.key}]", NULL, 0, "[]", true, false},
    {"case-sensitive keys", "[${payload.META}]", NULL, 0, "[]", true, false},
    {"payload not JSON", "[${payload.a}]", "{\"a\": 1", 0, "[]", true, false},
    {"trailing garbage", "[${payload.a}]", "{\"a\": 1} x", 0, "[]", true, false},
    {"surrounding whitespace", "[${payload.a}]", " \n{\"a\": \"v\"}\r\n\t", 0, "[v]", true, false},
    {"root is an array", "[${payload.a}]", "[1]", 0, "[]", true, false},
    {"root is a string", "[${payload.a}]", "\"a\"", 0, "[]", true, false},
    {"empty payload", "[${payload.a}]", "", 0, "[]", true, false},
    {"whole and field", "${payload}|${payload.a}", "{\"a\":2}", 0, "{\"a\":2}|2", true, false},
    {"key with spaces", "${payload.my key}", "{\"my key\": \"v\"}", 0, "v", true, false},
    {"dollar in key", "${payload.$x}", "{\"$x\": 1}", 0, "1", true, false},
    {"nested too deep is not JSON", "[${payload.a}]", NULL, 0, "[]", true, false},

    /* Errors (no position: the caller adds it). */
    ERR("lone dollar", "a$b", DOLLAR("2")),
    ERR("dollar at the end", "abc$", DOLLAR("4")),
    ERR("odd dollars", "$$$", DOLLAR("3")),
    ERR("dollar paren", "$(clientid)", DOLLAR("1")),
    ERR("unterminated", "x-${clientid", "'${' at character 3 has no closing '}'"),
    ERR("unterminated at the end", "${", "'${' at character 1 has no closing '}'"),
    ERR("empty field", "a${}", "empty field '${}' at character 2"),
    ERR("unknown field, case", "${clientId}", UNKNOWN("clientId")),
    ERR("unknown field", "${user}", UNKNOWN("user")),
    ERR("spaces around the name", "${ qos }", UNKNOWN(" qos ")),
    ERR("nested braces", "${a${qos}}", UNKNOWN("a${qos")),
    ERR("long unknown name cut", "${abcdefghijabcdefghijabcdefghijabcdefghijabcdefghij}",
        UNKNOWN("abcdefghijabcdefghijabcdefghijabcdefghij...")),
    ERR("control byte in name", "${a\tb}", UNKNOWN("a?b")),
    ERR("payload dot only", "${payload.}", EMPTY_KEY("payload.")),
    ERR("empty key inside", "${payload.a..b}", EMPTY_KEY("payload.a..b")),
    ERR("empty first key", "${payload..b}", EMPTY_KEY("payload..b")),
    ERR("empty last key", "${payload.a.}", EMPTY_KEY("payload.a.")),
    ERR("payloads", "${payloads}", UNKNOWN("payloads")),
    ERR("error after good fields", "${qos}-${nope}", UNKNOWN("nope")),
};

static char *deep_json(void)
{
    /* Nested deeper than cJSON accepts (1000 levels): not JSON. */
    size_t n = 1100;
    char *s = malloc(2 * n + 16);
    ck_assert_ptr_nonnull(s);
    strcpy(s, "{\"a\":");
    size_t len = strlen(s);
    for (size_t i = 0; i < n; i++)
        s[len++] = '[';
    for (size_t i = 0; i < n; i++)
        s[len++] = ']';
    strcpy(s + len, "}");
    return s;
}

static struct template_input fixed_input(const char *payload)
{
    struct template_input in = {
        .client_id = "GID_s@@@dev-1",
        .topic = "SensorData/room1/t",
        .qos = 1,
        .msg_id = 0x1234abcd,
        .time_ms = 1700000000123,
        .payload = (const uint8_t *)payload,
        .payload_len = (uint32_t)strlen(payload),
    };
    return in;
}

START_TEST(test_render_table)
{
    const struct render_case *c = &render_cases[_i];
    struct template *t = (struct template *)&t;
    char err[256] = "";
    int rc = template_compile(c->text, &t, err, sizeof err);
    ck_assert_msg(rc == c->rc, "%s: rc %d (%s)", c->name, rc, err);
    if (rc < 0) {
        ck_assert_ptr_null(t);
        ck_assert_msg(!strcmp(err, c->want), "%s: got '%s'\n want '%s'", c->name, err, c->want);
        return;
    }
    char *deep = strstr(c->name, "too deep") ? deep_json() : NULL;
    struct template_input in = fixed_input(deep ? deep : c->payload ? c->payload : JSON_DOC);
    struct buf out = {0};
    ck_assert_int_eq(buf_append(&out, "pre:", 4), 0); /* rendering appends */
    ck_assert_int_eq(template_render(t, &in, &out), 0);
    ck_assert_msg(out.len == 4 + strlen(c->want) && !memcmp(out.data, "pre:", 4) &&
                      !memcmp(out.data + 4, c->want, strlen(c->want)),
                  "%s: got '%.*s'\n want 'pre:%s'", c->name, (int)out.len, (char *)out.data,
                  c->want);
    ck_assert_msg(template_uses_json(t) == c->uses_json, "%s: uses_json", c->name);
    ck_assert_msg(template_is_literal(t) == c->literal, "%s: literal", c->name);
    buf_free(&out);
    free(deep);
    template_free(t);
}
END_TEST

/* Inputs with missing parts render those fields empty. */
START_TEST(test_render_sparse_input)
{
    static const struct {
        const char *client_id;
        const char *want;
    } rows[] = {
        {NULL, "[||||0|0000000000000000|0]"},
        {"plain", "[plain||||0|0000000000000000|0]"},
        {"@@@d", "[@@@d||d||0|0000000000000000|0]"},
        {"G@@@", "[G@@@|G|||0|0000000000000000|0]"},
        {"G@@@a@@@b", "[G@@@a@@@b|G|a@@@b||0|0000000000000000|0]"},
    };
    struct template *t;
    char err[128];
    ck_assert_int_eq(template_compile("[${clientid}|${group}|${device}|${topic}${payload}"
                                      "${payload.a}|${qos}|${msgid}|${timestamp}]",
                                      &t, err, sizeof err),
                     0);
    for (size_t i = 0; i < ARRAY_LEN(rows); i++) {
        struct template_input in = {.client_id = rows[i].client_id};
        struct buf out = {0};
        ck_assert_int_eq(template_render(t, &in, &out), 0);
        ck_assert_int_eq((int)out.len, (int)strlen(rows[i].want));
        ck_assert_msg(!memcmp(out.data, rows[i].want, out.len), "row %zu: '%.*s'", i, (int)out.len,
                      (char *)out.data);
        buf_free(&out);
    }
    template_free(t);
}
END_TEST

START_TEST(test_render_extremes)
{
    struct template *t;
    struct buf out = {0};
    ck_assert_int_eq(template_compile("${qos}|${msgid}|${timestamp}", &t, NULL, 0), 0);
    struct template_input in = {.qos = 255, .msg_id = UINT64_MAX, .time_ms = INT64_MIN};
    ck_assert_int_eq(template_render(t, &in, &out), 0);
    const char *want = "255|ffffffffffffffff|-9223372036854775808";
    ck_assert_int_eq((int)out.len, (int)strlen(want));
    ck_assert(!memcmp(out.data, want, out.len));
    buf_free(&out);
    template_free(t);
}
END_TEST

/* The raw payload may hold any bytes, NUL included. */
START_TEST(test_render_binary_payload)
{
    static const uint8_t bytes[] = {0, 1, 0xff, '$', '{', 0};
    struct template *t;
    struct buf out = {0};
    ck_assert_int_eq(template_compile("${payload}${payload.x}", &t, NULL, 0), 0);
    struct template_input in = {.payload = bytes, .payload_len = sizeof bytes};
    ck_assert_int_eq(template_render(t, &in, &out), 0);
    ck_assert_uint_eq(out.len, sizeof bytes);
    ck_assert(!memcmp(out.data, bytes, sizeof bytes));
    buf_free(&out);
    template_free(t);
}
END_TEST

START_TEST(test_compile_null_and_errors)
{
    struct template *t = (struct template *)&t;
    char err[64] = "";
    ck_assert_int_eq(template_compile(NULL, &t, err, sizeof err), -1);
    ck_assert_ptr_null(t);
    ck_assert_str_eq(err, "no template text");
    ck_assert_int_eq(template_compile("${x}", &t, NULL, 0), -1); /* no buffer: still fails */
    char tiny[8];
    ck_assert_int_eq(template_compile("${x}", &t, tiny, sizeof tiny), -1);
    ck_assert_str_eq(tiny, "unknown");
    template_free(NULL);
    ck_assert(!template_uses_json(NULL));
}
END_TEST

START_TEST(test_compile_long_template)
{
    struct buf text = {0};
    for (int i = 0; i < 2000; i++)
        ck_assert_int_eq(buf_append(&text, "a$$${qos}${payload.k}", 21), 0);
    ck_assert_int_eq(buf_append_u8(&text, 0), 0);
    struct template *t;
    char err[128];
    ck_assert_int_eq(template_compile((const char *)text.data, &t, err, sizeof err), 0);
    struct template_input in = fixed_input("{\"k\":\"v\"}");
    struct buf out = {0};
    ck_assert_int_eq(template_render(t, &in, &out), 0);
    ck_assert_uint_eq(out.len, 2000 * 4);
    ck_assert(!memcmp(out.data, "a$1va$1v", 8));
    buf_free(&out);
    buf_free(&text);
    template_free(t);
}
END_TEST

struct kv_case {
    const char *value; /* NULL: a mapping */
    const char *where;
    int rc;
    const char *err;
};

static const struct kv_case kv_cases[] = {
    {"${clientid}", "rule 'r'", 0, NULL},
    {"${clientId}", "rule 'r'", -1,
     "r.yaml:9:7: rule 'r': key 'key': unknown field 'clientId' (fields: clientid, group, "
     "device, topic, qos, msgid, timestamp, payload, payload.<key>...)"},
    {"a$", NULL, -1,
     "r.yaml:9:7: key 'key': '$' at character 2 must start '${field}' or '$$' (a literal '$')"},
    {NULL, "rule 'r'", -1, "r.yaml:9:7: rule 'r': key 'key': expected a template, got a mapping"},
};

START_TEST(test_compile_kv)
{
    const struct kv_case *c = &kv_cases[_i];
    struct kvmap sub = {0};
    struct kv item = {
        .key = "key", .value = (char *)c->value, .file = "r.yaml", .line = 9, .col = 7};
    struct template *t = (struct template *)&t;
    char err[256] = "";
    if (!c->value)
        item.map = &sub;
    ck_assert_int_eq(template_compile_kv(&item, c->where, &t, err, sizeof err), c->rc);
    if (c->rc < 0) {
        ck_assert_ptr_null(t);
        ck_assert_str_eq(err, c->err);
    }
    template_free(t);
}
END_TEST

/* Rendering is thread-safe: threads render the same template at once. */
struct thread_arg {
    const struct template *t;
    int failures;
};

static void *render_thread(void *p)
{
    struct thread_arg *a = p;
    struct template_input in = fixed_input(JSON_DOC);
    struct buf out = {0};
    for (int i = 0; i < 2000; i++) {
        buf_reset(&out);
        if (template_render(a->t, &in, &out) < 0 || out.len != 11 ||
            memcmp(out.data, "dev-1/k1/42", 11) != 0)
            a->failures++;
    }
    buf_free(&out);
    return NULL;
}

START_TEST(test_render_threads)
{
    struct template *t;
    pthread_t th[4];
    struct thread_arg args[4];
    ck_assert_int_eq(template_compile("${device}/${payload.meta.room}/${payload.n}", &t, NULL, 0),
                     0);
    for (int i = 0; i < 4; i++) {
        args[i] = (struct thread_arg){t, 0};
        ck_assert_int_eq(pthread_create(&th[i], NULL, render_thread, &args[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        ck_assert_int_eq(pthread_join(th[i], NULL), 0);
        ck_assert_int_eq(args[i].failures, 0);
    }
    template_free(t);
}
END_TEST

static Suite *template_suite(void)
{
    Suite *s = suite_create("template");
    TCase *tc = tcase_create("template");
    tcase_add_loop_test(tc, test_render_table, 0, (int)ARRAY_LEN(render_cases));
    tcase_add_test(tc, test_render_sparse_input);
    tcase_add_test(tc, test_render_extremes);
    tcase_add_test(tc, test_render_binary_payload);
    tcase_add_test(tc, test_compile_null_and_errors);
    tcase_add_test(tc, test_compile_long_template);
    tcase_add_loop_test(tc, test_compile_kv, 0, (int)ARRAY_LEN(kv_cases));
    tcase_add_test(tc, test_render_threads);
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(template_suite)
