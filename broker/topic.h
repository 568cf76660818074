/* Topic names and filters (MQTT 3.1.1 section 4.7), the subscription tree
 * and the retained-message store.
 *
 * Rules, with examples:
 *   - a topic name has no wildcards and is at least one character
 *     [MQTT-4.7.3-1] [MQTT-3.3.2-2]: "a/b", "/a", "a//b" are valid;
 *   - '#' is last and alone in its level [MQTT-4.7.1-2]: "a/#", "#" valid,
 *     "a#", "a/#/b" invalid; '+' is alone in its level [MQTT-4.7.1-3]:
 *     "+/a/+" valid, "a+" invalid;
 *   - a filter starting with a wildcard does not match names starting with
 *     '$' [MQTT-4.7.2-1]: "#" does not match "$SYS/x", "$SYS/#" does;
 *   - "a/#" also matches "a" (the parent level) [MQTT-4.7.1-2];
 *   - "+" matches an empty level: "a/+/c" matches "a//c".
 * Lengths are byte lengths of UTF-8 strings (validated by the codec).
 *
 * The tree holds (subscriber, filter, qos) entries; subscriber is an opaque
 * pointer owned by the caller. Matching is O(levels) in the tree, not in the
 * number of subscriptions. Not thread-safe: the broker loop owns it. */
#ifndef MQB_TOPIC_H
#define MQB_TOPIC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "message.h"

bool topic_name_valid(const char *name, size_t len);
bool topic_filter_valid(const char *filter, size_t len);
bool topic_filter_has_wildcard(const char *filter, size_t len);
/* Both NUL-terminated and already valid. */
bool topic_matches(const char *filter, const char *name);

struct topic_tree;

struct topic_tree *topic_tree_new(void);
/* Frees the tree and every retained message reference it holds.
 * Accepts NULL. Subscribers are not touched (the caller owns them). */
void topic_tree_free(struct topic_tree *t);

/* Add or update a subscription. Returns 1 when added, 0 when an existing
 * (subscriber, filter) entry only had its qos replaced [MQTT-3.8.4-3],
 * -1 when out of memory. filter is NUL-terminated and valid. */
int topic_tree_subscribe(struct topic_tree *t, const char *filter, void *subscriber, uint8_t qos);
/* Returns 0 when removed, 1 when there was no such entry. Empty nodes are
 * pruned. */
int topic_tree_unsubscribe(struct topic_tree *t, const char *filter, void *subscriber);

/* Called once per matching (subscriber, filter) entry: a subscriber with
 * two overlapping filters is reported twice; the caller merges them. */
/* fn must not modify the tree (matching reads the live tables). */
typedef void (*topic_match_fn)(void *subscriber, uint8_t qos, void *ctx);
void topic_tree_match(const struct topic_tree *t, const char *name, topic_match_fn fn, void *ctx);

/* Number of subscription entries in the tree (for stats and tests). */
size_t topic_tree_count(const struct topic_tree *t);

/* Retained messages, keyed by topic name. topic_retain_set() takes a new
 * reference on m; a message with an empty payload clears the entry
 * [MQTT-3.3.1-10] [MQTT-3.3.1-11] and is not stored. Returns 0 or -1. */
int topic_retain_set(struct topic_tree *t, struct message *m);
/* Calls fn for each retained message whose topic matches filter (same
 * '$' rule as subscriptions). fn must not modify the tree. */
typedef void (*topic_retain_fn)(struct message *m, void *ctx);
void topic_retain_match(const struct topic_tree *t, const char *filter, topic_retain_fn fn,
                        void *ctx);
size_t topic_retain_count(const struct topic_tree *t);

#endif
