/* The managed-service naming rules (SEMANTICS.md "Resources of an
 * instance"), as pure functions over a declared set of parent topics and
 * group IDs. The broker calls them on CONNECT, PUBLISH and SUBSCRIBE; the
 * config loader calls the *_valid ones to refuse bad declarations.
 *
 * Rules, with examples (defaults; the numbers come from struct naming_limits):
 *   - Group ID: 7..64 chars of [A-Za-z0-9_-], prefix "GID_" or "GID-":
 *     "GID_sensors" ok, "GID_ab" too short (6), "gid_sensors" bad prefix.
 *   - Parent topic: one level, 1..64 chars of [A-Za-z0-9_-]:
 *     "SensorData" ok, "Sensor/Data" and "Sensor Data" bad. Unique
 *     ignoring case (checked by the config loader).
 *   - Client ID: "<GroupID>@@@<DeviceID>", at most 64 chars; the group must
 *     be declared; DeviceID is 1+ chars of [A-Za-z0-9_-]:
 *     "GID_sensors@@@dev-1" ok; "dev-1", "GID_sensors@@@", "GID_x@@@a@@@b",
 *     "GID_undeclared@@@d" refused.
 *   - Topic name: starts with a declared parent topic (exact case), at most
 *     3 levels, at most 64 chars, levels of [A-Za-z0-9_-], no empty level:
 *     "SensorData/room1/t" ok; "SensorData/a/b/c" (4 levels),
 *     "Other/x" (undeclared), "SensorData//x", "SensorData/a b" refused.
 *   - P2P topic: "<Parent>/p2p/<TargetClientId>" is delivered to that client
 *     only; the target keeps its "@@@" and is not counted in the 64-char
 *     limit (a client ID alone may be 64 chars): "SensorData/p2p/GID_x@@@d1".
 *   - Topic filter: like a topic name where a level may be "+" or a last
 *     "#": "SensorData/#", "SensorData/+/t" ok; "#", "+/x" refused (outside
 *     every parent topic); "SensorData/+/+/+" refused (4 levels).
 * In `naming: mqtt` mode the broker does not call these checks at all. */
#ifndef MQB_NAMING_H
#define MQB_NAMING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct naming_limits {
    uint16_t max_topic_length;     /* 64 */
    uint16_t max_topic_levels;     /* 3 */
    uint16_t max_client_id_length; /* 64 */
};

struct naming {
    char **parent_topics; /* declared parent topics */
    unsigned parent_topic_count;
    char **groups; /* declared group IDs */
    unsigned group_count;
    struct naming_limits limits;
};

/* Declaration checks for the config loader. On false, *why names the rule
 * broken ("must start with GID_ or GID-", "7..64 characters", ...). */
bool naming_group_id_valid(const char *gid, const char **why);
bool naming_parent_topic_valid(const char *topic, const char **why);

/* Index of the declared group, or -1. len = byte length. */
int naming_find_group(const struct naming *n, const char *gid, size_t len);
/* Index of the declared parent topic equal (exact case) to the first level
 * of topic[0..len), or -1. */
int naming_find_parent(const struct naming *n, const char *topic, size_t len);

/* Check a client ID. 0 when valid (and *group_index set), -1 with the
 * reason in why. */
int naming_check_client_id(const struct naming *n, const char *cid, size_t len, int *group_index,
                           char *why, size_t whylen);

/* What a valid topic name is. */
struct naming_topic {
    int parent_index;       /* index into n->parent_topics */
    const char *p2p_target; /* points into the topic; NULL when not P2P */
    size_t p2p_target_len;
};
/* Check a PUBLISH topic name. 0 valid (out filled), -1 with why. A P2P
 * topic's target must itself be a valid client ID (format and declared
 * group). */
int naming_check_topic(const struct naming *n, const char *topic, size_t len,
                       struct naming_topic *out, char *why, size_t whylen);
/* Check a SUBSCRIBE filter (already valid MQTT filter syntax). 0 valid with
 * *parent_index set and *wildcard telling whether it holds + or #; -1 with
 * why. */
int naming_check_filter(const struct naming *n, const char *filter, size_t len, int *parent_index,
                        bool *wildcard, char *why, size_t whylen);

#endif
