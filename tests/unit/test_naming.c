/* naming_suite: the managed-service naming rules (broker/naming.c). */
#include <string.h>

#include "../../broker/naming.h"
#include "check_main.h"

/* Building blocks for boundary lengths. */
#define S10 "abcdefghij"
#define S50 S10 S10 S10 S10 S10
#define S60 S50 S10
#define G64 "GID_" S60             /* a 64-character group ID */
#define CID64 "GID_sensors@@@" S50 /* 14 + 50 = 64 characters */
#define P59 S50 "123456789"        /* "<P59>/p2p/" is 64 characters */
#define P60 S60                    /* "<P60>/p2p/" is 65 characters */

static char *parents[] = {"SensorData", "Commands", "P", P59, P60};
static char *groups[] = {"GID_sensors", "GID-app", G64};

static struct naming fixture(void)
{
    struct naming n = {
        .parent_topics = parents,
        .parent_topic_count = sizeof parents / sizeof parents[0],
        .groups = groups,
        .group_count = sizeof groups / sizeof groups[0],
        .limits = {.max_topic_length = 64, .max_topic_levels = 3, .max_client_id_length = 64},
    };
    return n;
}

/* ---- Declarations ------------------------------------------------------ */

struct decl_case {
    const char *name;
    bool group; /* naming_group_id_valid, else naming_parent_topic_valid */
    const char *text;
    bool valid;
    const char *why; /* exact reason when invalid */
};

static const struct decl_case decl_cases[] = {
    {"group ok", true, "GID_sensors", true, NULL},
    {"group dash prefix", true, "GID-app", true, NULL},
    {"group 7 chars", true, "GID_abc", true, NULL},
    {"group 6 chars", true, "GID_ab", false, "7..64 characters"},
    {"group 64 chars", true, G64, true, NULL},
    {"group 65 chars", true, G64 "x", false, "7..64 characters"},
    {"group empty", true, "", false, "7..64 characters"},
    {"group lower-case prefix", true, "gid_sensors", false, "must start with GID_ or GID-"},
    {"group no prefix", true, "sensors_group", false, "must start with GID_ or GID-"},
    {"group prefix without separator", true, "GIDsensors", false, "must start with GID_ or GID-"},
    {"group dot", true, "GID_a.b.c", false, "letters, digits, - and _ only"},
    {"group space", true, "GID_a bcd", false, "letters, digits, - and _ only"},
    {"group with @", true, "GID_ab@cd", false, "letters, digits, - and _ only"},
    {"parent ok", false, "SensorData", true, NULL},
    {"parent 1 char", false, "P", true, NULL},
    {"parent all classes", false, "a-Z_09", true, NULL},
    {"parent 64 chars", false, S60 "abcd", true, NULL},
    {"parent 65 chars", false, S60 "abcde", false, "1..64 characters"},
    {"parent empty", false, "", false, "1..64 characters"},
    {"parent two levels", false, "Sensor/Data", false, "one level: '/' not allowed"},
    {"parent space", false, "Sensor Data", false, "letters, digits, - and _ only"},
    {"parent wildcard", false, "Sensor#", false, "letters, digits, - and _ only"},
    {"parent UTF-8", false, "Caf\xc3\xa9", false, "letters, digits, - and _ only"},
};

START_TEST(test_decl_table)
{
    const struct decl_case *t = &decl_cases[_i];
    const char *why = "untouched";
    bool ok =
        t->group ? naming_group_id_valid(t->text, &why) : naming_parent_topic_valid(t->text, &why);
    ck_assert_msg(ok == t->valid, "%s: valid %d, want %d", t->name, ok, t->valid);
    if (t->valid)
        ck_assert_msg(why == NULL, "%s: why '%s' on a valid name", t->name, why);
    else
        ck_assert_msg(why && !strcmp(why, t->why), "%s: why '%s', want '%s'", t->name,
                      why ? why : "(null)", t->why);
    /* why is optional */
    ck_assert((t->group ? naming_group_id_valid(t->text, NULL)
                        : naming_parent_topic_valid(t->text, NULL)) == t->valid);
}
END_TEST

/* ---- Client IDs -------------------------------------------------------- */

struct cid_case {
    const char *name;
    const char *cid;
    int rc;
    int group;       /* group index when valid */
    const char *why; /* expected substring when refused */
};

static const struct cid_case cid_cases[] = {
    {"header example", "GID_sensors@@@dev-1", 0, 0, NULL},
    {"dash group", "GID-app@@@A_b-9", 0, 1, NULL},
    {"one-char device", "GID_sensors@@@x", 0, 0, NULL},
    {"64 characters", CID64, 0, 0, NULL},
    {"65 characters", CID64 "k", -1, 0, "client id is 65 characters (max 64)"},
    {"64-char group leaves no room", G64 "@@@d", -1, 0, "client id is 68 characters (max 64)"},
    {"no separator", "dev-1", -1, 0, "client id 'dev-1' must be <GroupID>@@@<DeviceID>"},
    {"brief example", "abc", -1, 0, "client id 'abc' must be <GroupID>@@@<DeviceID>"},
    {"empty", "", -1, 0, "client id '' must be <GroupID>@@@<DeviceID>"},
    {"two @ only", "GID_sensors@@dev", -1, 0, "must be <GroupID>@@@<DeviceID>"},
    {"empty group", "@@@dev", -1, 0, "client id '@@@dev' must be <GroupID>@@@<DeviceID>"},
    {"separator only", "@@@", -1, 0, "must be <GroupID>@@@<DeviceID>"},
    {"empty device", "GID_sensors@@@", -1, 0, "client id has an empty device ID after '@@@'"},
    {"second separator", "GID_sensors@@@a@@@b", -1, 0, "device ID 'a@@@b' must not contain '@'"},
    {"four @", "GID_sensors@@@@dev", -1, 0, "device ID '@dev' must not contain '@'"},
    {"six @", "GID_sensors@@@@@@", -1, 0, "device ID '@@@' must not contain '@'"},
    {"single @ in device", "GID_sensors@@@a@b", -1, 0, "device ID 'a@b' must not contain '@'"},
    {"undeclared group", "GID_undeclared@@@d", -1, 0, "group 'GID_undeclared' is not declared"},
    {"undeclared short group", "GID_x@@@d", -1, 0,
     "group 'GID_x' is not declared (group IDs: 7..64 characters)"},
    {"header example x@@@a@@@b", "GID_x@@@a@@@b", -1, 0, "group 'GID_x' is not declared"},
    {"group case differs", "gid_sensors@@@d", -1, 0,
     "group 'gid_sensors' is not declared (group IDs: must start with GID_ or GID-)"},
    {"group upper case", "GID_SENSORS@@@d", -1, 0, "group 'GID_SENSORS' is not declared"},
    {"space in device", "GID_sensors@@@dev 1", -1, 0,
     "character ' ' not allowed in device ID 'dev 1'"},
    {"dot in device", "GID_sensors@@@d.1", -1, 0, "character '.' not allowed in device ID"},
    {"slash in device", "GID_sensors@@@a/b", -1, 0, "character '/' not allowed in device ID"},
    {"control byte", "GID_sensors@@@d\x01", -1, 0,
     "client id has a non-printable byte 0x01 at position 16"},
    {"UTF-8 byte", "GID_sensors@@@d\xc3\xa9", -1, 0, "non-printable byte 0xC3 at position 16"},
    {"DEL byte", "GID_sensors@@@\x7f", -1, 0, "non-printable byte 0x7F at position 15"},
};

START_TEST(test_client_id_table)
{
    const struct cid_case *t = &cid_cases[_i];
    struct naming n = fixture();
    char why[256] = "untouched";
    int g = -7;
    int rc = naming_check_client_id(&n, t->cid, strlen(t->cid), &g, why, sizeof why);
    ck_assert_msg(rc == t->rc, "%s: rc %d, want %d (%s)", t->name, rc, t->rc, why);
    if (rc == 0) {
        ck_assert_msg(g == t->group, "%s: group %d, want %d", t->name, g, t->group);
        ck_assert_str_eq(why, "untouched");
    } else {
        ck_assert_msg(strstr(why, t->why) != NULL, "%s: why '%s' lacks '%s'", t->name, why, t->why);
        ck_assert_msg(g == -7, "%s: group index written on failure", t->name);
    }
}
END_TEST

/* ---- Topic names ------------------------------------------------------- */

struct topic_case {
    const char *name;
    const char *topic;
    int rc;
    int parent;
    const char *target; /* P2P target when valid, NULL when not P2P */
    const char *why;
};

static const struct topic_case topic_cases[] = {
    {"header example", "SensorData/room1/t", 0, 0, NULL, NULL},
    {"parent alone", "SensorData", 0, 0, NULL, NULL},
    {"two levels", "Commands/x", 0, 1, NULL, NULL},
    {"all classes", "P/a-Z_09/x", 0, 2, NULL, NULL},
    {"64 characters", "SensorData/" S50 "abc", 0, 0, NULL, NULL},
    {"65 characters", "SensorData/" S50 "abcd", -1, 0, NULL, "topic is 65 characters (max 64)"},
    {"4 levels", "SensorData/a/b/c", -1, 0, NULL, "topic 'SensorData/a/b/c' has 4 levels (max 3)"},
    {"trailing slash makes 4 levels", "P/a/b/", -1, 0, NULL, "has 4 levels (max 3)"},
    {"undeclared parent", "Other/x", -1, 0, NULL, "parent topic 'Other' is not declared"},
    {"parent case differs", "sensordata/x", -1, 0, NULL,
     "parent topic 'sensordata' is not declared"},
    {"parent upper case", "SENSORDATA", -1, 0, NULL, "parent topic 'SENSORDATA' is not declared"},
    {"parent prefix only", "Sensor/x", -1, 0, NULL, "parent topic 'Sensor' is not declared"},
    {"parent longer", "SensorDataX/x", -1, 0, NULL, "parent topic 'SensorDataX' is not declared"},
    {"empty level", "SensorData//x", -1, 0, NULL, "topic level 2 is empty"},
    {"trailing slash", "SensorData/", -1, 0, NULL, "topic level 2 is empty"},
    {"leading slash", "/SensorData", -1, 0, NULL, "topic level 1 is empty"},
    {"empty topic", "", -1, 0, NULL, "topic is empty"},
    {"space", "SensorData/a b", -1, 0, NULL, "character ' ' not allowed in topic level 2"},
    {"dot in level 3", "SensorData/a/b.c", -1, 0, NULL,
     "character '.' not allowed in topic level 3"},
    {"plus", "SensorData/+", -1, 0, NULL, "character '+' not allowed in topic level 2"},
    {"UTF-8", "SensorData/caf\xc3\xa9", -1, 0, NULL, "byte 0xC3 not allowed in topic level 2"},
    {"$SYS", "$SYS/broker", -1, 0, NULL, "parent topic '$SYS' is not declared"},
    /* P2P */
    {"p2p", "SensorData/p2p/GID_sensors@@@d1", 0, 0, "GID_sensors@@@d1", NULL},
    {"p2p to 64-char client id", "SensorData/p2p/" CID64, 0, 0, CID64, NULL},
    {"p2p to 65-char client id", "SensorData/p2p/" CID64 "k", -1, 0, NULL,
     "P2P target: client id is 65 characters (max 64)"},
    {"p2p prefix 64", P59 "/p2p/GID-app@@@d", 0, 3, "GID-app@@@d", NULL},
    {"p2p prefix 65", P60 "/p2p/GID-app@@@d", -1, 0, NULL,
     "P2P topic prefix '" P60 "/p2p...' is 65 characters (max 64)"},
    {"p2p undeclared target group", "P/p2p/GID_nobody@@@d", -1, 0, NULL,
     "P2P target: group 'GID_nobody' is not declared"},
    {"p2p target not a client id", "P/p2p/device7", -1, 0, NULL,
     "P2P target: client id 'device7' must be <GroupID>@@@<DeviceID>"},
    {"p2p without target", "P/p2p", -1, 0, NULL, "P2P topic 'P/p2p' must be"},
    {"p2p empty target", "P/p2p/", -1, 0, NULL, "must be <ParentTopic>/p2p/<ClientID>"},
    {"p2p 4 levels", "P/p2p/GID-app@@@d/x", -1, 0, NULL, "must be <ParentTopic>/p2p/<ClientID>"},
    {"p2p undeclared parent", "Other/p2p/GID-app@@@d", -1, 0, NULL,
     "parent topic 'Other' is not declared"},
    {"P2P upper case is a plain level", "P/P2P/x", 0, 2, NULL, NULL},
    {"p2p as level 3 is a plain level", "P/a/p2p", 0, 2, NULL, NULL},
    {"p2px is a plain level", "P/p2px/x", 0, 2, NULL, NULL},
};

START_TEST(test_topic_table)
{
    const struct topic_case *t = &topic_cases[_i];
    struct naming n = fixture();
    struct naming_topic out = {.parent_index = -7};
    char why[256] = "untouched";
    int rc = naming_check_topic(&n, t->topic, strlen(t->topic), &out, why, sizeof why);
    ck_assert_msg(rc == t->rc, "%s: rc %d, want %d (%s)", t->name, rc, t->rc, why);
    if (rc < 0) {
        ck_assert_msg(strstr(why, t->why) != NULL, "%s: why '%s' lacks '%s'", t->name, why, t->why);
        ck_assert_msg(out.parent_index == -7, "%s: out written on failure", t->name);
        return;
    }
    ck_assert_msg(out.parent_index == t->parent, "%s: parent %d, want %d", t->name,
                  out.parent_index, t->parent);
    if (!t->target) {
        ck_assert_ptr_null(out.p2p_target);
        return;
    }
    ck_assert_ptr_nonnull(out.p2p_target);
    ck_assert_uint_eq(out.p2p_target_len, strlen(t->target));
    ck_assert(memcmp(out.p2p_target, t->target, out.p2p_target_len) == 0);
    ck_assert_ptr_eq(out.p2p_target, t->topic + strlen(t->topic) - strlen(t->target));
}
END_TEST

/* ---- Topic filters ----------------------------------------------------- */

struct filter_case {
    const char *name;
    const char *filter;
    int rc;
    int parent;
    bool wildcard;
    const char *why;
};

static const struct filter_case filter_cases[] = {
    {"multi-level", "SensorData/#", 0, 0, true, NULL},
    {"single-level", "SensorData/+/t", 0, 0, true, NULL},
    {"plain", "SensorData/room1/t", 0, 0, false, NULL},
    {"parent alone", "Commands", 0, 1, false, NULL},
    {"+ then #: 3 levels", "P/+/#", 0, 2, true, NULL},
    {"two +", "P/+/+", 0, 2, true, NULL},
    {"# counts as a level", "P/a/b/#", -1, 0, false, "filter 'P/a/b/#' has 4 levels (max 3)"},
    {"4 levels of +", "SensorData/+/+/+", -1, 0, false, "has 4 levels (max 3)"},
    {"# alone", "#", -1, 0, false, "filter '#' is outside the declared parent topics"},
    {"+ first", "+/x", -1, 0, false, "filter '+/x' is outside the declared parent topics"},
    {"+ alone", "+", -1, 0, false, "outside the declared parent topics"},
    {"undeclared parent", "Other/#", -1, 0, false, "parent topic 'Other' is not declared"},
    {"parent case differs", "commands/#", -1, 0, false, "parent topic 'commands' is not declared"},
    {"p2p filter", "P/p2p/#", -1, 0, false, "P2P topics cannot be subscribed"},
    {"p2p exact filter", "P/p2p/GID-app@@@d", -1, 0, false, "P2P topics cannot be subscribed"},
    {"p2p level alone", "P/p2p", -1, 0, false, "P2P topics cannot be subscribed"},
    {"65 characters", "SensorData/" S50 "abc/", -1, 0, false, "filter is 65 characters (max 64)"},
    {"64 characters", "SensorData/" S50 "a/#", 0, 0, true, NULL},
    {"empty level", "SensorData//#", -1, 0, false, "filter level 2 is empty"},
    {"empty filter", "", -1, 0, false, "filter is empty"},
    {"leading slash", "/x", -1, 0, false, "filter level 1 is empty"},
    {"# not last", "P/#/x", -1, 0, false, "'#' must be the last level of a filter"},
    {"+ inside a level", "P/a+", -1, 0, false, "character '+' not allowed in filter level 2"},
    {"space", "P/a b/#", -1, 0, false, "character ' ' not allowed in filter level 2"},
};

START_TEST(test_filter_table)
{
    const struct filter_case *t = &filter_cases[_i];
    struct naming n = fixture();
    char why[256] = "untouched";
    int parent = -7;
    bool wildcard = !t->wildcard;
    int rc =
        naming_check_filter(&n, t->filter, strlen(t->filter), &parent, &wildcard, why, sizeof why);
    ck_assert_msg(rc == t->rc, "%s: rc %d, want %d (%s)", t->name, rc, t->rc, why);
    if (rc < 0) {
        ck_assert_msg(strstr(why, t->why) != NULL, "%s: why '%s' lacks '%s'", t->name, why, t->why);
        ck_assert_msg(parent == -7, "%s: parent written on failure", t->name);
        return;
    }
    ck_assert_msg(parent == t->parent, "%s: parent %d, want %d", t->name, parent, t->parent);
    ck_assert_msg(wildcard == t->wildcard, "%s: wildcard %d", t->name, wildcard);
}
END_TEST

/* ---- Lookups, lengths, limits and buffers ------------------------------ */

START_TEST(test_find_by_length)
{
    struct naming n = fixture();
    /* Only len bytes count: the text need not be NUL-terminated. */
    ck_assert_int_eq(naming_find_group(&n, "GID_sensors@@@d", 11), 0);
    ck_assert_int_eq(naming_find_group(&n, "GID-appX", 7), 1);
    ck_assert_int_eq(naming_find_group(&n, "GID-appX", 8), -1);
    ck_assert_int_eq(naming_find_group(&n, "GID-ap", 6), -1);
    ck_assert_int_eq(naming_find_group(&n, "", 0), -1);
    ck_assert_int_eq(naming_find_parent(&n, "Commands/x", 10), 1);
    ck_assert_int_eq(naming_find_parent(&n, "CommandsX", 8), 1);
    ck_assert_int_eq(naming_find_parent(&n, "P", 1), 2);
    ck_assert_int_eq(naming_find_parent(&n, "Pa/x", 4), -1);
    ck_assert_int_eq(naming_find_parent(&n, "commands", 8), -1);
    ck_assert_int_eq(naming_find_parent(&n, "", 0), -1);
    /* A bounded topic inside a longer buffer. */
    static const char buf[] = "SensorData/a/b/c/d";
    ck_assert_int_eq(naming_check_topic(&n, buf, 14, NULL, NULL, 0), 0);
    ck_assert_int_eq(naming_check_topic(&n, buf, 16, NULL, NULL, 0), -1);
    ck_assert_int_eq(naming_check_client_id(&n, "GID-app@@@d@", 11, NULL, NULL, 0), 0);
}
END_TEST

START_TEST(test_empty_declarations)
{
    struct naming n = {.limits = {64, 3, 64}};
    char why[128];
    ck_assert_int_eq(naming_check_topic(&n, "SensorData/x", 12, NULL, why, sizeof why), -1);
    ck_assert_str_eq(why, "parent topic 'SensorData' is not declared");
    ck_assert_int_eq(naming_check_client_id(&n, "GID_sensors@@@d", 15, NULL, why, sizeof why), -1);
    ck_assert_str_eq(why, "group 'GID_sensors' is not declared");
    ck_assert_int_eq(naming_check_filter(&n, "SensorData/#", 12, NULL, NULL, why, sizeof why), -1);
}
END_TEST

/* The limits come from struct naming_limits, not from constants. */
START_TEST(test_other_limits)
{
    struct naming n = fixture();
    char why[128];
    n.limits = (struct naming_limits){
        .max_topic_length = 10, .max_topic_levels = 4, .max_client_id_length = 12};
    ck_assert_int_eq(naming_check_filter(&n, "P/a/b/#", 7, NULL, NULL, why, sizeof why), 0);
    ck_assert_int_eq(naming_check_topic(&n, "P/a/b/c", 7, NULL, why, sizeof why), 0);
    ck_assert_int_eq(naming_check_topic(&n, "P/a/b/c/d", 9, NULL, why, sizeof why), -1);
    ck_assert_str_eq(why, "topic 'P/a/b/c/d' has 5 levels (max 4)");
    ck_assert_int_eq(naming_check_topic(&n, "P/abcdefghi", 11, NULL, why, sizeof why), -1);
    ck_assert_str_eq(why, "topic is 11 characters (max 10)");
    ck_assert_int_eq(naming_check_client_id(&n, "GID-app@@@de", 12, NULL, why, sizeof why), 0);
    ck_assert_int_eq(naming_check_client_id(&n, "GID-app@@@dev", 13, NULL, why, sizeof why), -1);
    ck_assert_str_eq(why, "client id is 13 characters (max 12)");
    /* P2P: the levels limit is met by definition, only "P/p2p/" is counted
     * against the topic length, the target against the client id length. */
    n.limits.max_topic_levels = 1;
    struct naming_topic out;
    ck_assert_int_eq(naming_check_topic(&n, "P/p2p/GID-app@@@de", 18, &out, why, sizeof why), 0);
    ck_assert_uint_eq(out.p2p_target_len, 12);
    ck_assert_int_eq(naming_check_topic(&n, "P/x", 3, NULL, why, sizeof why), -1);
    ck_assert_str_eq(why, "topic 'P/x' has 2 levels (max 1)");
    ck_assert_int_eq(naming_check_filter(&n, "P/#", 3, NULL, NULL, why, sizeof why), -1);
}
END_TEST

/* why may be NULL or short; a message is cut, still NUL-terminated. */
START_TEST(test_why_buffers)
{
    struct naming n = fixture();
    char why[8];
    memset(why, 'x', sizeof why);
    ck_assert_int_eq(naming_check_topic(&n, "Other/x", 7, NULL, why, sizeof why), -1);
    ck_assert_str_eq(why, "parent ");
    ck_assert_int_eq(naming_check_topic(&n, "Other/x", 7, NULL, NULL, 0), -1);
    ck_assert_int_eq(naming_check_topic(&n, "P/p2p/x", 7, NULL, NULL, 0), -1);
    ck_assert_int_eq(naming_check_topic(&n, "P/p2p/GID-app@@@", 16, NULL, why, 3), -1);
    ck_assert_str_eq(why, "P2");
    memset(why, 'x', sizeof why);
    ck_assert_int_eq(naming_check_topic(&n, "P/p2p/GID-app@@@", 16, NULL, why, 1), -1);
    ck_assert_str_eq(why, "");
    ck_assert_int_eq(naming_check_client_id(&n, "x", 1, NULL, why, 0), -1);
    ck_assert_int_eq(naming_check_filter(&n, "#", 1, NULL, NULL, NULL, 0), -1);
}
END_TEST

/* Long or binary names are repeated cut to 64 bytes, never raw. */
START_TEST(test_quoted_names)
{
    struct naming n = fixture();
    char why[256];
    n.limits.max_topic_length = 1000;
    n.limits.max_client_id_length = 1000;
    const char *long_cid = S60 S60 "@@@d";
    ck_assert_int_eq(naming_check_client_id(&n, long_cid, strlen(long_cid), NULL, why, sizeof why),
                     -1);
    ck_assert_str_eq(why, "group '" S60 "abcd...' is not declared (group IDs: 7..64 characters)");
    ck_assert_int_eq(naming_check_topic(&n, "Oth\ter/x", 8, NULL, why, sizeof why), -1);
    ck_assert_str_eq(why, "parent topic 'Oth?er' is not declared");
}
END_TEST

static Suite *naming_suite(void)
{
    Suite *s = suite_create("naming");
    TCase *tc = tcase_create("rules");
    tcase_add_loop_test(tc, test_decl_table, 0, (int)(sizeof decl_cases / sizeof decl_cases[0]));
    tcase_add_loop_test(tc, test_client_id_table, 0, (int)(sizeof cid_cases / sizeof cid_cases[0]));
    tcase_add_loop_test(tc, test_topic_table, 0, (int)(sizeof topic_cases / sizeof topic_cases[0]));
    tcase_add_loop_test(tc, test_filter_table, 0,
                        (int)(sizeof filter_cases / sizeof filter_cases[0]));
    tcase_add_test(tc, test_find_by_length);
    tcase_add_test(tc, test_empty_declarations);
    tcase_add_test(tc, test_other_limits);
    tcase_add_test(tc, test_why_buffers);
    tcase_add_test(tc, test_quoted_names);
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(naming_suite)
