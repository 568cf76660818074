/* The managed-service naming rules (SEMANTICS.md "Resources of an
 * instance"); naming.h states them with examples. In short:
 *
 *   group ID     "GID_sensors"                 7..64 of [A-Za-z0-9_-], GID_ or GID- prefix
 *   parent topic "SensorData"                  1..64 of [A-Za-z0-9_-]
 *   client ID    "GID_sensors@@@dev-1"         declared group, "@@@", device, <= 64
 *   topic        "SensorData/room1/t"          declared parent, <= 3 levels, <= 64
 *   P2P topic    "SensorData/p2p/GID_x@@@d1"   only "SensorData/p2p/" counts in the 64
 *   filter       "SensorData/+/t", "SensorData/#"
 *
 * The check functions run on the broker loop for every CONNECT, PUBLISH
 * and SUBSCRIBE: they never allocate, and a valid name costs one pass over
 * its bytes plus a linear lookup among the (at most a few dozen) declared
 * parent topics or groups. Only a refusal formats text (into the caller's
 * buffer). Lengths are byte lengths; a name is never assumed to be
 * NUL-terminated. */
#include "naming.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define NAMING_GROUP_MIN 7
#define NAMING_GROUP_MAX 64
#define NAMING_PARENT_MAX 64
#define NAMING_QUOTE_MAX 64    /* bytes of a name repeated in a message */
#define NAMING_SEPARATOR_LEN 3 /* "@@@" */
#define NAMING_P2P_LEVEL "p2p"

#if defined(__GNUC__)
#define NAMING_PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))
#else
#define NAMING_PRINTF(fmt, args)
#endif

/* ---- Characters and messages ------------------------------------------- */

static bool naming_class_char(unsigned char ch)
{
    return (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
           ch == '_' || ch == '-';
}

/* Offset of the first byte of s[0..len) outside [A-Za-z0-9_-], or len. */
static size_t naming_class_span(const char *s, size_t len)
{
    size_t i = 0;
    while (i < len && naming_class_char((unsigned char)s[i]))
        i++;
    return i;
}

/* Write the reason into why (which may be NULL or empty). Returns -1. */
static int naming_fail(char *why, size_t whylen, const char *fmt, ...) NAMING_PRINTF(3, 4);

static int naming_fail(char *why, size_t whylen, const char *fmt, ...)
{
    va_list ap;
    if (!why || !whylen)
        return -1;
    va_start(ap, fmt);
    vsnprintf(why, whylen, fmt, ap);
    va_end(ap);
    return -1;
}

/* A name as repeated in a message: at most NAMING_QUOTE_MAX bytes, bytes
 * outside printable ASCII as '?', "..." when cut. */
struct naming_quote {
    char text[NAMING_QUOTE_MAX + 4];
};

static const char *naming_quote(struct naming_quote *q, const char *s, size_t len)
{
    size_t i;
    for (i = 0; i < len && i < NAMING_QUOTE_MAX; i++)
        q->text[i] = (s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : '?';
    if (len > NAMING_QUOTE_MAX) {
        memcpy(q->text + i, "...", 3);
        i += 3;
    }
    q->text[i] = '\0';
    return q->text;
}

/* "character ' '" for printable ASCII, "byte 0xC3" otherwise. */
static const char *naming_char_text(unsigned char ch, char buf[16])
{
    if (ch >= 0x20 && ch < 0x7f)
        snprintf(buf, 16, "character '%c'", (char)ch);
    else
        snprintf(buf, 16, "byte 0x%02X", (unsigned)ch);
    return buf;
}

/* ---- Declarations ------------------------------------------------------ */

/* The group ID rule over s[0..len): NULL when valid, else why not. */
static const char *naming_group_rule(const char *s, size_t len)
{
    if (len < NAMING_GROUP_MIN || len > NAMING_GROUP_MAX)
        return "7..64 characters";
    if (memcmp(s, "GID_", 4) != 0 && memcmp(s, "GID-", 4) != 0)
        return "must start with GID_ or GID-";
    if (naming_class_span(s, len) != len)
        return "letters, digits, - and _ only";
    return NULL;
}

bool naming_group_id_valid(const char *gid, const char **why)
{
    const char *rule = gid ? naming_group_rule(gid, strlen(gid)) : "7..64 characters";
    if (why)
        *why = rule;
    return rule == NULL;
}

bool naming_parent_topic_valid(const char *topic, const char **why)
{
    size_t len = topic ? strlen(topic) : 0;
    const char *rule = NULL;
    if (len < 1 || len > NAMING_PARENT_MAX)
        rule = "1..64 characters";
    else if (memchr(topic, '/', len))
        rule = "one level: '/' not allowed";
    else if (naming_class_span(topic, len) != len)
        rule = "letters, digits, - and _ only";
    if (why)
        *why = rule;
    return rule == NULL;
}

int naming_find_group(const struct naming *n, const char *gid, size_t len)
{
    for (unsigned i = 0; i < n->group_count; i++)
        if (strlen(n->groups[i]) == len && memcmp(n->groups[i], gid, len) == 0)
            return (int)i;
    return -1;
}

/* Length of the first level of s[0..len). */
static size_t naming_first_level(const char *s, size_t len)
{
    const char *slash = len ? memchr(s, '/', len) : NULL;
    return slash ? (size_t)(slash - s) : len;
}

int naming_find_parent(const struct naming *n, const char *topic, size_t len)
{
    size_t first = naming_first_level(topic, len);
    for (unsigned i = 0; i < n->parent_topic_count; i++)
        if (strlen(n->parent_topics[i]) == first && memcmp(n->parent_topics[i], topic, first) == 0)
            return (int)i;
    return -1;
}

/* ---- Client IDs -------------------------------------------------------- */

/* Offset of the first "@@@" in s[0..len), or len. */
static size_t naming_find_separator(const char *s, size_t len)
{
    for (size_t i = 0; i + NAMING_SEPARATOR_LEN <= len; i++)
        if (s[i] == '@' && s[i + 1] == '@' && s[i + 2] == '@')
            return i;
    return len;
}

/* The device part: 1+ characters of the class, so no '@' (and no second
 * "@@@"). */
static int naming_check_device(const char *dev, size_t len, char *why, size_t whylen)
{
    struct naming_quote q;
    char ch[16];
    if (len == 0)
        return naming_fail(why, whylen, "client id has an empty device ID after '@@@'");
    if (memchr(dev, '@', len))
        return naming_fail(why, whylen, "device ID '%s' must not contain '@'",
                           naming_quote(&q, dev, len));
    size_t bad = naming_class_span(dev, len);
    if (bad < len)
        return naming_fail(why, whylen, "%s not allowed in device ID '%s'",
                           naming_char_text((unsigned char)dev[bad], ch),
                           naming_quote(&q, dev, len));
    return 0;
}

int naming_check_client_id(const struct naming *n, const char *cid, size_t len, int *group_index,
                           char *why, size_t whylen)
{
    struct naming_quote q;
    if (len > n->limits.max_client_id_length)
        return naming_fail(why, whylen, "client id is %zu characters (max %u)", len,
                           (unsigned)n->limits.max_client_id_length);
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)cid[i] < 0x20 || (unsigned char)cid[i] >= 0x7f)
            return naming_fail(why, whylen,
                               "client id has a non-printable byte 0x%02X at position %zu",
                               (unsigned)(unsigned char)cid[i], i + 1);
    size_t sep = naming_find_separator(cid, len);
    if (sep == len || sep == 0)
        return naming_fail(why, whylen, "client id '%s' must be <GroupID>@@@<DeviceID>",
                           naming_quote(&q, cid, len));
    int g = naming_find_group(n, cid, sep);
    if (g < 0) {
        const char *rule = naming_group_rule(cid, sep);
        return naming_fail(why, whylen, "group '%s' is not declared%s%s%s",
                           naming_quote(&q, cid, sep), rule ? " (group IDs: " : "",
                           rule ? rule : "", rule ? ")" : "");
    }
    if (naming_check_device(cid + sep + NAMING_SEPARATOR_LEN, len - sep - NAMING_SEPARATOR_LEN, why,
                            whylen) < 0)
        return -1;
    if (group_index)
        *group_index = g;
    return 0;
}

/* ---- Topic names and filters ------------------------------------------- */

/* Whether level 2 of s[0..len) (whose level 1 is first bytes long) is
 * exactly "p2p". */
static bool naming_is_p2p(const char *s, size_t len, size_t first)
{
    size_t l2 = first + 1, n = sizeof NAMING_P2P_LEVEL - 1;
    return len >= l2 + n && memcmp(s + l2, NAMING_P2P_LEVEL, n) == 0 &&
           (len == l2 + n || s[l2 + n] == '/');
}

/* The first level of a topic or filter: a declared parent topic. */
static int naming_check_parent(const struct naming *n, const char *what, const char *s, size_t len,
                               size_t first, char *why, size_t whylen)
{
    struct naming_quote q;
    if (len == 0)
        return naming_fail(why, whylen, "%s is empty", what);
    if (first == 0)
        return naming_fail(why, whylen, "%s level 1 is empty (it must be a parent topic)", what);
    int p = naming_find_parent(n, s, len);
    if (p < 0)
        return naming_fail(why, whylen, "parent topic '%s' is not declared",
                           naming_quote(&q, s, first));
    return p;
}

/* Check one level [b, e) of s, the level-th (1-based). In a filter a level
 * may be "+", and the last one "#"; *wildcard is set when one is. */
static int naming_check_level(const char *what, const char *s, size_t len, size_t b, size_t e,
                              unsigned level, bool filter, bool *wildcard, char *why, size_t whylen)
{
    char ch[16];
    if (e == b)
        return naming_fail(why, whylen, "%s level %u is empty", what, level);
    if (filter && e - b == 1 && (s[b] == '+' || s[b] == '#')) {
        if (s[b] == '#' && e != len)
            return naming_fail(why, whylen, "'#' must be the last level of a filter");
        *wildcard = true;
        return 0;
    }
    size_t bad = b + naming_class_span(s + b, e - b);
    if (bad < e)
        return naming_fail(why, whylen, "%s not allowed in %s level %u",
                           naming_char_text((unsigned char)s[bad], ch), what, level);
    return 0;
}

/* Length, level count and every level of a topic name or filter whose
 * first level is a declared parent. Levels are counted with '#'. */
static int naming_check_levels(const struct naming *n, const char *what, const char *s, size_t len,
                               bool filter, bool *wildcard, char *why, size_t whylen)
{
    struct naming_quote q;
    if (len > n->limits.max_topic_length)
        return naming_fail(why, whylen, "%s is %zu characters (max %u)", what, len,
                           (unsigned)n->limits.max_topic_length);
    size_t levels = 1;
    for (const char *p = s; (p = memchr(p, '/', len - (size_t)(p - s))) != NULL; p++)
        levels++;
    if (levels > n->limits.max_topic_levels)
        return naming_fail(why, whylen, "%s '%s' has %zu levels (max %u)", what,
                           naming_quote(&q, s, len), levels, (unsigned)n->limits.max_topic_levels);
    *wildcard = false;
    unsigned level = 1;
    for (size_t b = 0;; level++) {
        const char *slash = memchr(s + b, '/', len - b);
        size_t e = slash ? (size_t)(slash - s) : len;
        if (naming_check_level(what, s, len, b, e, level, filter, wildcard, why, whylen) < 0)
            return -1;
        if (!slash)
            return 0;
        b = e + 1;
    }
}

/* "<Parent>/p2p/<ClientId>": exactly three levels and a valid target
 * client ID. Only "<Parent>/p2p/" counts against max_topic_length; the
 * level limit does not apply. Sets the target in *out when valid. */
static int naming_check_p2p(const struct naming *n, const char *topic, size_t len, size_t first,
                            struct naming_topic *out, char *why, size_t whylen)
{
    size_t prefix = first + sizeof "/" NAMING_P2P_LEVEL "/" - 1;
    struct naming_quote q;
    if (len <= prefix || memchr(topic + prefix, '/', len - prefix))
        return naming_fail(why, whylen, "P2P topic '%s' must be <ParentTopic>/p2p/<ClientID>",
                           naming_quote(&q, topic, len));
    if (prefix > n->limits.max_topic_length)
        return naming_fail(why, whylen, "P2P topic prefix '%s' is %zu characters (max %u)",
                           naming_quote(&q, topic, prefix), prefix,
                           (unsigned)n->limits.max_topic_length);
    int pre = 0;
    if (why && whylen) {
        pre = snprintf(why, whylen, "P2P target: ");
        if (pre < 0 || (size_t)pre >= whylen)
            pre = (int)whylen - 1;
    }
    if (naming_check_client_id(n, topic + prefix, len - prefix, NULL, why ? why + pre : NULL,
                               whylen - (size_t)pre) < 0)
        return -1;
    out->p2p_target = topic + prefix;
    out->p2p_target_len = len - prefix;
    return 0;
}

int naming_check_topic(const struct naming *n, const char *topic, size_t len,
                       struct naming_topic *out, char *why, size_t whylen)
{
    bool wildcard;
    size_t first = naming_first_level(topic, len);
    int parent = naming_check_parent(n, "topic", topic, len, first, why, whylen);
    if (parent < 0)
        return -1;
    struct naming_topic t = {.parent_index = parent, .p2p_target = NULL, .p2p_target_len = 0};
    int rc = naming_is_p2p(topic, len, first)
                 ? naming_check_p2p(n, topic, len, first, &t, why, whylen)
                 : naming_check_levels(n, "topic", topic, len, false, &wildcard, why, whylen);
    if (rc == 0 && out)
        *out = t;
    return rc;
}

int naming_check_filter(const struct naming *n, const char *filter, size_t len, int *parent_index,
                        bool *wildcard, char *why, size_t whylen)
{
    struct naming_quote q;
    bool wild = false;
    size_t first = naming_first_level(filter, len);
    if (first == 1 && (filter[0] == '+' || filter[0] == '#'))
        return naming_fail(why, whylen, "filter '%s' is outside the declared parent topics",
                           naming_quote(&q, filter, len));
    int parent = naming_check_parent(n, "filter", filter, len, first, why, whylen);
    if (parent < 0)
        return -1;
    /* P2P messages reach their target without any subscription. */
    if (naming_is_p2p(filter, len, first))
        return naming_fail(why, whylen,
                           "filter '%s': P2P topics cannot be subscribed (P2P messages are "
                           "delivered without a subscription)",
                           naming_quote(&q, filter, len));
    if (naming_check_levels(n, "filter", filter, len, true, &wild, why, whylen) < 0)
        return -1;
    if (parent_index)
        *parent_index = parent;
    if (wildcard)
        *wildcard = wild;
    return 0;
}
