/* config_suite: the instance configuration loader (engine/config.c). */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../common/buf.h"
#include "../../engine/config.h"
#include "check_main.h"

struct load_case {
    const char *name;
    const char *yaml;
    int rc;
    const char *err; /* expected substring of the message ("" = none checked) */
};

/* Lists of parent topics: P25 is 25 items, P26 26. */
#define P5(p) p "1, " p "2, " p "3, " p "4, " p "5"
#define P25 "[" P5("a") ", " P5("b") ", " P5("c") ", " P5("d") ", " P5("e") "]"
#define P26 "[" P5("a") ", " P5("b") ", " P5("c") ", " P5("d") ", " P5("e") ", f1]"
#define S64 "abcdefghijabcdefghijabcdefghijabcdefghijabcdefghijabcdefghijabcd"

static const struct load_case load_cases[] = {
    /* Valid documents. */
    {"empty document", "", 0, ""},
    {"comments only", "# nothing here\n", 0, ""},
    {"explicit empty document", "---\n", 0, ""},
    {"null top level", "~\n", 0, ""},
    {"document end marker", "log: {level: warn}\n...\n", 0, ""},
    {"section with no content", "limits:\n", 0, ""},
    {"flow style", "limits: {max_inflight: 1, max_queued: 0}\n", 0, ""},
    {"limits at their maxima",
     "limits:\n  max_inflight: 65535\n  max_queued: 10000000\n  max_packet_size: 268435460\n"
     "  max_connections: 10000000\n  max_keepalive: 65535\n",
     0, ""},
    {"limits at their minima",
     "limits: {max_inflight: 1, max_queued: 0, max_packet_size: 16, max_connections: 0,"
     " max_keepalive: 0}\n",
     0, ""},
    {"IPv6 listener", "listeners:\n  - host: '::1'\n    port: 8883\n", 0, ""},
    {"localhost listener", "listeners: [{host: localhost}]\n", 0, ""},
    {"eight listeners",
     "listeners: [{port: 1}, {port: 2}, {port: 3}, {port: 4}, {port: 5}, {port: 6},"
     " {port: 7}, {port: 8}]\n",
     0, ""},
    {"same port on two hosts", "listeners: [{host: 127.0.0.1}, {host: '::1'}]\n", 0, ""},
    {"quoted string id", "instance: {id: \"a-b_C9\"}\n", 0, ""},
    {"sync full", "storage: {path: /tmp/x, sync: full}\n", 0, ""},
    {"alias reused", "listeners:\n  - &l {host: 127.0.0.1}\nlimits: {}\n", 0, ""},

    /* Naming: valid declarations. */
    {"naming mqtt", "instance: {naming: mqtt}\n", 0, ""},
    {"naming managed", "instance: {naming: managed}\n", 0, ""},
    {"reject duplicate client ids", "instance: {on_duplicate_client_id: reject}\n", 0, ""},
    {"takeover duplicate client ids", "instance: {on_duplicate_client_id: takeover}\n", 0, ""},
    {"lists in flow style",
     "instance: {parent_topics: [SensorData, Commands], groups: [GID_sensors, GID-app]}\n", 0, ""},
    {"lists in block style",
     "instance:\n  parent_topics:\n    - SensorData\n    - 'Commands'\n  groups:\n"
     "    - \"GID_sensors\"\n",
     0, ""},
    {"empty lists", "instance: {parent_topics: [], groups: []}\n", 0, ""},
    {"lists with no content", "instance:\n  parent_topics:\n  groups:\n", 0, ""},
    {"groups unique by exact case", "instance: {groups: [GID_abc, GID_ABC, GID-abc]}\n", 0, ""},
    {"scalars that look typed are names", "instance: {parent_topics: [123, 'true', yes]}\n", 0, ""},
    {"64-character names",
     "instance: {parent_topics: [" S64 "], groups: [GID_abcdefghijabcdefghijabcdefghijabcdefghij"
     "abcdefghijabcdefghij]}\n",
     0, ""},
    {"25 parent topics", "instance: {parent_topics: " P25 "}\n", 0, ""},
    {"26 parent topics, limit raised after",
     "instance: {parent_topics: " P26 "}\nlimits: {max_parent_topics: 26}\n", 0, ""},
    {"26 parent topics, limit raised before",
     "limits: {max_parent_topics: 26}\n"
     "instance: {parent_topics: " P26 "}\n",
     0, ""},
    {"parent as long as max_topic_length",
     "instance: {parent_topics: [abcde]}\n"
     "limits: {max_topic_length: 5}\n",
     0, ""},
    {"managed limits at their maxima",
     "limits:\n  max_message_size: 268435455\n  max_subscriptions_per_client: 65535\n"
     "  max_wildcard_subscriptions_per_parent: 65535\n  max_parent_topics: 1000\n"
     "  offline_message_ttl: 315360000\n  max_offline_messages: 4294967295\n"
     "  max_topic_length: 65535\n  max_topic_levels: 64\n  max_client_id_length: 65535\n",
     0, ""},
    {"managed limits at their minima",
     "limits: {max_message_size: 1, max_subscriptions_per_client: 1,"
     " max_wildcard_subscriptions_per_parent: 1, max_parent_topics: 1, offline_message_ttl: 1,"
     " max_offline_messages: 1, max_topic_length: 1, max_topic_levels: 1,"
     " max_client_id_length: 1}\n",
     0, ""},

    /* Unknown, duplicate and missing keys. */
    {"unknown key with hint", "limits:\n    max_inflite: 5\n", -1,
     "t.yaml:2:5: limits: unknown key 'max_inflite' (did you mean 'max_inflight'?)"},
    {"unknown key without hint", "log:\n  colour: yes\n", -1,
     "t.yaml:2:3: log: unknown key 'colour'"},
    {"unknown section", "limit: {}\n", -1,
     "t.yaml:1:1: unknown section 'limit' (did you mean 'limits'?)"},
    {"unknown section near a new one", "rule_file: []\n", -1,
     "t.yaml:1:1: unknown section 'rule_file' (did you mean 'rule_files'?)"},
    {"duplicate key", "listeners:\n  - port: 1\n    port: 2\n", -1,
     "t.yaml:3:5: listeners[0]: duplicate key 'port'"},
    {"duplicate section", "limits: {}\nlog: {}\nlimits: {}\n", -1,
     "t.yaml:3:1: top level: duplicate section 'limits'"},
    {"storage without path", "storage:\n  sync: full\n", -1,
     "t.yaml:2:3: storage: missing required key 'path'"},
    {"storage with no content", "storage:\n", -1, "storage: missing required key 'path'"},
    {"key is a sequence", "? [a]\n: 1\n", -1,
     "t.yaml:1:3: top level: expected a key name, got a sequence"},

    /* Integers. */
    {"integer not a number", "limits:\n  max_inflight: abc\n", -1,
     "t.yaml:2:17: limits.max_inflight: expected an integer 1..65535, got 'abc'"},
    {"integer below range", "limits: {max_inflight: 0}\n", -1,
     "limits.max_inflight: expected an integer 1..65535, got '0'"},
    {"integer above range", "limits: {max_keepalive: 65536}\n", -1,
     "limits.max_keepalive: expected an integer 0..65535, got '65536'"},
    {"packet size below 16", "limits: {max_packet_size: 15}\n", -1,
     "limits.max_packet_size: expected an integer 16..268435460, got '15'"},
    {"integer fraction", "limits: {max_queued: 1.5}\n", -1,
     "limits.max_queued: expected an integer 0..10000000, got '1.5'"},
    {"integer empty", "limits:\n  max_queued:\n", -1,
     "t.yaml:2:14: limits.max_queued: expected an integer 0..10000000, got nothing"},
    {"integer null", "limits: {max_queued: ~}\n", -1, "got null"},
    {"integer hex", "limits: {max_queued: 0x10}\n", -1, "got '0x10'"},
    {"integer negative", "limits: {max_connections: -1}\n", -1, "got '-1'"},
    {"integer plus sign", "limits: {max_connections: +5}\n", -1, "got '+5'"},
    {"integer leading zero", "limits: {max_connections: 010}\n", -1, "got '010'"},
    {"integer separator", "limits: {max_queued: 1_000}\n", -1, "got '1_000'"},
    {"integer overflow", "limits: {max_queued: 99999999999999999999999}\n", -1,
     "got '99999999999999999999999'"},
    {"integer quoted", "limits: {max_inflight: \"20\"}\n", -1,
     "limits.max_inflight: expected an integer 1..65535, got the quoted string '20'"},
    {"integer is a mapping", "limits: {max_queued: {a: 1}}\n", -1,
     "limits.max_queued: expected an integer 0..10000000, got a mapping"},
    {"integer with tag", "limits:\n  max_inflight: !!int 20\n", -1,
     "t.yaml:2:17: limits.max_inflight: unexpected tag 'tag:yaml.org,2002:int'"},

    /* Strings and enums. */
    {"local tag", "instance: {id: !custom x}\n", -1, "instance.id: unexpected tag '!custom'"},
    {"id bad character", "instance: {id: a.b}\n", -1,
     "instance.id: expected 1..64 characters of A-Z a-z 0-9 _ -, got 'a.b'"},
    {"id too long",
     "instance: {id: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa}\n", -1,
     "instance.id: expected 1..64 characters"},
    {"id with NUL", "instance: {id: \"a\\0b\"}\n", -1,
     "instance.id: expected 1..64 characters of A-Z a-z 0-9 _ -, got the quoted string 'a?b'"},
    {"path empty", "storage: {path: ''}\n", -1,
     "storage.path: expected a string of 1..4095 bytes, got the quoted string ''"},
    {"path null", "storage: {path: ~}\n", -1,
     "storage.path: expected a string of 1..4095 bytes, got null"},
    {"sync unknown", "storage:\n  path: d\n  sync: sometimes\n", -1,
     "t.yaml:3:9: storage.sync: expected one of off, normal, full, got 'sometimes'"},
    {"sync wrong case", "storage: {path: d, sync: Normal}\n", -1, "got 'Normal'"},
    {"log level unknown", "log: {level: verbose}\n", -1,
     "log.level: expected one of debug, info, notice, warn, error, got 'verbose'"},
    {"section is a scalar", "instance: foo\n", -1,
     "t.yaml:1:11: instance: expected a mapping, got 'foo'"},

    /* Naming: refused declarations. */
    {"naming unknown", "instance:\n  naming: strict\n", -1,
     "t.yaml:2:11: instance.naming: expected one of managed, mqtt, got 'strict'"},
    {"naming wrong case", "instance: {naming: MQTT}\n", -1, "got 'MQTT'"},
    {"duplicate policy unknown", "instance: {on_duplicate_client_id: kick}\n", -1,
     "instance.on_duplicate_client_id: expected one of takeover, reject, got 'kick'"},
    {"parent topics duplicate ignoring case",
     "instance:\n  id: x\n  naming: managed\n  parent_topics: [SensorData, sensordata]\n", -1,
     "t.yaml:4:31: instance.parent_topics[1]: 'sensordata' duplicates 'SensorData' (parent "
     "topics are unique ignoring case)"},
    {"parent topics duplicate exactly", "instance:\n  parent_topics:\n    - a\n    - b\n    - a\n",
     -1, "t.yaml:5:7: instance.parent_topics[2]: 'a' duplicates 'a'"},
    {"parent topic duplicated through an alias", "instance: {parent_topics: [&p x, *p]}\n", -1,
     "instance.parent_topics[1]: 'x' duplicates 'x'"},
    {"group too short", "instance:\n  groups: [GID_ab]\n", -1,
     "t.yaml:2:12: instance.groups[0]: 'GID_ab': 7..64 characters"},
    {"group too long", "instance: {groups: [GID_" S64 "x]}\n", -1, "': 7..64 characters"},
    {"group bad prefix", "instance: {groups: [GID_sensors, gid_sensors]}\n", -1,
     "instance.groups[1]: 'gid_sensors': must start with GID_ or GID-"},
    {"group bad character", "instance: {groups: [GID_a.b.c]}\n", -1,
     "instance.groups[0]: 'GID_a.b.c': letters, digits, - and _ only"},
    {"group duplicate", "instance: {groups: [GID_abc, GID_xyz, GID_abc]}\n", -1,
     "t.yaml:1:39: instance.groups[2]: 'GID_abc' duplicates 'GID_abc' (group IDs are unique)"},
    {"parent topic two levels", "instance: {parent_topics: [Sensor/Data]}\n", -1,
     "t.yaml:1:28: instance.parent_topics[0]: 'Sensor/Data': one level: '/' not allowed"},
    {"parent topic space", "instance: {parent_topics: ['Sensor Data']}\n", -1,
     "instance.parent_topics[0]: 'Sensor Data': letters, digits, - and _ only"},
    {"parent topic wildcard", "instance: {parent_topics: ['#']}\n", -1,
     "instance.parent_topics[0]: '#': letters, digits, - and _ only"},
    {"parent topic empty", "instance: {parent_topics: ['']}\n", -1,
     "instance.parent_topics[0]: '': 1..64 characters"},
    {"parent topic 65 characters", "instance: {parent_topics: [" S64 "x]}\n", -1,
     "': 1..64 characters"},
    {"parent topic null", "instance: {parent_topics: [a, ~]}\n", -1,
     "t.yaml:1:31: instance.parent_topics[1]: expected a parent topic, got null"},
    {"parent topic empty item", "instance:\n  parent_topics:\n    -\n", -1,
     "instance.parent_topics[0]: expected a parent topic, got nothing"},
    {"group is a mapping", "instance: {groups: [{GID_abc: 1}]}\n", -1,
     "t.yaml:1:21: instance.groups[0]: expected a group ID, got a mapping"},
    {"group is a sequence", "instance: {groups: [[GID_abc]]}\n", -1,
     "instance.groups[0]: expected a group ID, got a sequence"},
    {"parent topic with NUL", "instance: {parent_topics: [\"a\\0b\"]}\n", -1,
     "instance.parent_topics[0]: expected a parent topic, got the quoted string 'a?b'"},
    {"parent topic with tag", "instance: {parent_topics: [!!binary YQ==]}\n", -1,
     "instance.parent_topics[0]: unexpected tag 'tag:yaml.org,2002:binary'"},
    {"parent topic with the default tag", "instance: {parent_topics: [!!str a]}\n", 0, ""},
    {"list with tag", "instance: {groups: !ids [GID_abc]}\n", -1,
     "instance.groups: unexpected tag '!ids'"},
    {"list is a scalar", "instance:\n  parent_topics: SensorData\n", -1,
     "t.yaml:2:18: instance.parent_topics: expected a sequence of parent topics, got "
     "'SensorData'"},
    {"list is a mapping", "instance: {groups: {GID_abc: 1}}\n", -1,
     "instance.groups: expected a sequence of group IDs, got a mapping"},
    {"list key duplicated", "instance: {groups: [], groups: []}\n", -1,
     "t.yaml:1:24: instance: duplicate key 'groups'"},
    {"list key misspelt", "instance: {parent_topic: [a]}\n", -1,
     "instance: unknown key 'parent_topic' (did you mean 'parent_topics'?)"},
    {"26 parent topics", "instance: {parent_topics: " P26 "}\n", -1,
     "t.yaml:1:27: instance.parent_topics: 26 parent topics, limits.max_parent_topics is 25"},
    {"parent topics over a limit given before",
     "limits: {max_parent_topics: 2}\n"
     "instance:\n  parent_topics:\n    - a\n    - b\n    - c\n",
     -1, "t.yaml:4:5: instance.parent_topics: 3 parent topics, limits.max_parent_topics is 2"},
    {"parent topics over a limit given after",
     "instance: {parent_topics: [a, b]}\n"
     "limits: {max_parent_topics: 1}\n",
     -1, "t.yaml:1:27: instance.parent_topics: 2 parent topics, limits.max_parent_topics is 1"},
    {"parent topic longer than max_topic_length",
     "instance: {parent_topics: [abc, abcdef]}\n"
     "limits: {max_topic_length: 5}\n",
     -1,
     "t.yaml:1:33: instance.parent_topics[1]: 'abcdef' is 6 characters, longer than "
     "limits.max_topic_length (5)"},

    /* The managed limits' ranges. */
    {"message size 0", "limits: {max_message_size: 0}\n", -1,
     "limits.max_message_size: expected an integer 1..268435455, got '0'"},
    {"message size above MQTT", "limits: {max_message_size: 268435456}\n", -1, "got '268435456'"},
    {"subscriptions per client 0", "limits: {max_subscriptions_per_client: 0}\n", -1,
     "limits.max_subscriptions_per_client: expected an integer 1..65535, got '0'"},
    {"wildcard subscriptions 65536", "limits: {max_wildcard_subscriptions_per_parent: 65536}\n", -1,
     "limits.max_wildcard_subscriptions_per_parent: expected an integer 1..65535"},
    {"parent topics limit 1001", "limits: {max_parent_topics: 1001}\n", -1,
     "limits.max_parent_topics: expected an integer 1..1000, got '1001'"},
    {"ttl 0", "limits: {offline_message_ttl: 0}\n", -1,
     "limits.offline_message_ttl: expected an integer 1..315360000, got '0'"},
    {"ttl above ten years", "limits: {offline_message_ttl: 315360001}\n", -1, "got '315360001'"},
    {"offline messages above uint32", "limits: {max_offline_messages: 4294967296}\n", -1,
     "limits.max_offline_messages: expected an integer 1..4294967295, got '4294967296'"},
    {"topic length 0", "limits: {max_topic_length: 0}\n", -1,
     "limits.max_topic_length: expected an integer 1..65535, got '0'"},
    {"topic levels 65", "limits: {max_topic_levels: 65}\n", -1,
     "limits.max_topic_levels: expected an integer 1..64, got '65'"},
    {"client id length 65536", "limits: {max_client_id_length: 65536}\n", -1,
     "limits.max_client_id_length: expected an integer 1..65535, got '65536'"},

    /* Listeners. */
    {"listeners is a mapping", "listeners:\n  host: 0.0.0.0\n", -1,
     "t.yaml:2:3: listeners: expected a sequence of 1..8 listeners, got a mapping"},
    {"listeners is a scalar", "listeners: 1883\n", -1, "listeners: expected a sequence"},
    {"listeners empty", "listeners: []\n", -1,
     "t.yaml:1:12: listeners: expected 1..8 listeners, got 0"},
    {"listeners with no content", "listeners:\n", -1, "listeners: expected 1..8 listeners, got 0"},
    {"nine listeners",
     "listeners: [{port: 1}, {port: 2}, {port: 3}, {port: 4}, {port: 5}, {port: 6},"
     " {port: 7}, {port: 8}, {port: 9}]\n",
     -1, "listeners: expected 1..8 listeners, got 9"},
    {"listener not a mapping", "listeners: [1883]\n", -1,
     "t.yaml:1:13: listeners[0]: expected a mapping, got '1883'"},
    {"listener port 0", "listeners:\n  - port: 0\n", -1,
     "t.yaml:2:11: listeners[0].port: expected an integer 1..65535, got '0'"},
    {"listener host name", "listeners: [{port: 1}, {host: example.com}]\n", -1,
     "listeners[1].host: expected an IPv4 or IPv6 address or localhost, got 'example.com'"},
    {"listener host with port", "listeners: [{host: '127.0.0.1:1883'}]\n", -1,
     "listeners[0].host: expected an IPv4 or IPv6 address"},
    {"listeners on the same address", "listeners:\n  - port: 1\n  - {port: 2}\n  - port: 1\n", -1,
     "t.yaml:4:5: listeners[2]: same host and port as listeners[0] (0.0.0.0:1)"},

    /* Rules engine: valid sections. */
    {"connectors empty", "connectors: {}\n", 0, ""},
    {"connectors with no content", "connectors:\n", 0, ""},
    {"connectors of each kind",
     "connectors:\n"
     "  events-kafka: { type: kafka, brokers: \"127.0.0.1:9092\", options: { linger.ms: \"5\" } }\n"
     "  local:        { type: sqlite, path: ./data/export.db }\n"
     "  cache: {type: redis, url: 'redis://127.0.0.1:6379/0'}\n",
     0, ""},
    {"connector name of every allowed character", "connectors: {A.z-0_9: {type: x}}\n", 0, ""},
    {"connector name of 64 characters", "connectors: {" S64 ": {type: x}}\n", 0, ""},
    {"connector of type only", "connectors: {a: {type: sqlite}}\n", 0, ""},
    {"connector type not checked here", "connectors: {a: {type: carrier-pigeon}}\n", 0, ""},
    {"connector names differ by case", "connectors: {pg: {type: x}, PG: {type: x}}\n", 0, ""},
    {"rules empty", "log: {}\nrules: []\n", 0, ""},
    {"rules with no content", "rules:\n", 0, ""},
    {"inline rules are not validated here",
     "rules:\n  - name: telemetry-to-sqlite\n    type: outbound\n    source: { topic: demo }\n"
     "    target: { connector: local, table: messages, create_table: true }\n"
     "  - { whatever: 1 }\n",
     0, ""},
    {"rule_files", "rule_files: [ \"rules/*.yaml\", extra.yaml, /etc/mqb/r.yaml ]\n", 0, ""},
    {"rule_files empty", "rule_files: []\n", 0, ""},
    {"rule_files with no content", "rule_files:\n", 0, ""},
    {"export with no content", "export:\n", 0, ""},
    {"export at its minima",
     "export: {memory_queue: 1, spool_max: 1, batch_max: 1, retry_initial_ms: 1,"
     " retry_max_ms: 1, drain_timeout_ms: 0}\n",
     0, ""},
    {"export at its maxima",
     "export: {memory_queue: 100000000, spool_max: 1000000000000, batch_max: 100000,"
     " retry_initial_ms: 3600000, retry_max_ms: 86400000, drain_timeout_ms: 600000}\n",
     0, ""},
    {"export drop_newest", "export: {overflow: drop_newest}\n", 0, ""},
    {"retry_max_ms equal to retry_initial_ms",
     "export: {retry_initial_ms: 500, retry_max_ms: 500}\n", 0, ""},
    {"retry_max_ms raised before retry_initial_ms",
     "export: {retry_max_ms: 90000, retry_initial_ms: 60000}\n", 0, ""},
    {"every section, rules engine first",
     "export: {batch_max: 10}\nrule_files: [a.yaml]\nrules: [{name: r}]\n"
     "connectors: {c: {type: sqlite}}\nlog: {level: warn}\ninstance: {id: x}\n",
     0, ""},

    /* Rules engine: refused sections. */
    {"export unknown key", "export:\n  retry_max: 5\n", -1,
     "t.yaml:2:3: export: unknown key 'retry_max' (did you mean 'retry_max_ms'?)"},
    {"export not a mapping", "export: [1]\n", -1,
     "t.yaml:1:9: export: expected a mapping, got a sequence"},
    {"export bad overflow", "export:\n  overflow: block\n", -1,
     "t.yaml:2:13: export.overflow: expected one of drop_oldest, drop_newest, got 'block'"},
    {"export memory_queue 0", "export: {memory_queue: 0}\n", -1,
     "export.memory_queue: expected an integer 1..100000000, got '0'"},
    {"export spool_max above 10^12", "export: {spool_max: 1000000000001}\n", -1,
     "export.spool_max: expected an integer 1..1000000000000, got '1000000000001'"},
    {"export batch_max above range", "export: {batch_max: 100001}\n", -1,
     "export.batch_max: expected an integer 1..100000, got '100001'"},
    {"export retry_initial_ms 0", "export: {retry_initial_ms: 0}\n", -1,
     "export.retry_initial_ms: expected an integer 1..3600000, got '0'"},
    {"export drain_timeout_ms above range", "export: {drain_timeout_ms: 600001}\n", -1,
     "export.drain_timeout_ms: expected an integer 0..600000, got '600001'"},
    {"retry_max_ms less than retry_initial_ms",
     "export:\n  retry_initial_ms: 500\n  retry_max_ms: 100\n", -1,
     "t.yaml:3:17: export.retry_max_ms: 100 is less than export.retry_initial_ms (500)"},
    {"retry_max_ms less than the default retry_initial_ms", "export: {retry_max_ms: 100}\n", -1,
     "t.yaml:1:24: export.retry_max_ms: 100 is less than export.retry_initial_ms (200)"},
    {"retry_initial_ms greater than the default retry_max_ms",
     "export: {retry_initial_ms: 60000}\n", -1,
     "t.yaml:1:28: export.retry_initial_ms: 60000 is greater than export.retry_max_ms (30000)"},
    {"connectors not a mapping", "connectors: [events-kafka]\n", -1,
     "t.yaml:1:13: connectors: expected a mapping of connector names, got a sequence"},
    {"connectors a scalar", "connectors: kafka\n", -1,
     "connectors: expected a mapping of connector names, got 'kafka'"},
    {"connectors with tag", "connectors: !c {}\n", -1, "connectors: unexpected tag '!c'"},
    {"connector without type", "connectors:\n  pg:\n    dsn: x\n", -1,
     "t.yaml:3:5: connectors.pg: missing required key 'type'"},
    {"connector of no settings in flow style", "connectors: {pg: {}}\n", -1,
     "t.yaml:1:18: connectors.pg: missing required key 'type'"},
    {"connector type a mapping", "connectors: {pg: {type: {a: b}}}\n", -1,
     "t.yaml:1:19: connectors.pg.type: expected a connector type, got a mapping"},
    {"connector type empty", "connectors: {pg: {type: ''}}\n", -1,
     "connectors.pg.type: expected a connector type, got ''"},
    {"connector type null", "connectors: {pg: {type: ~}}\n", -1,
     "t.yaml:1:25: type: expected a value, got null"},
    {"connector name invalid", "connectors:\n  'pg main': {type: postgres}\n", -1,
     "t.yaml:2:3: connectors: 'pg main': expected 1..64 characters of A-Z a-z 0-9 _ . -"},
    {"connector name with a slash", "connectors: {a/b: {type: x}}\n", -1,
     "connectors: 'a/b': expected 1..64 characters"},
    {"connector name of 65 characters", "connectors: {" S64 "x: {type: x}}\n", -1,
     "connectors: 'abcdefghijabcdefghijabcdefghijabcdefghij...': expected 1..64 characters"},
    {"connector name empty", "connectors: {'': {type: x}}\n", -1,
     "connectors: '': expected 1..64 characters"},
    {"connector name with NUL", "connectors: {\"a\\0b\": {type: x}}\n", -1,
     "connectors: 'a?b': expected 1..64 characters"},
    {"connector name null", "connectors: {~: {type: x}}\n", -1,
     "t.yaml:1:14: connectors: expected a connector name, got null"},
    {"connector name a sequence", "connectors: {[a]: {type: x}}\n", -1,
     "connectors: expected a connector name, got a sequence"},
    {"connector name with tag", "connectors: {!n a: {type: x}}\n", -1,
     "connectors: unexpected tag '!n'"},
    {"duplicate connector", "connectors:\n  pg: {type: postgres}\n  pg: {type: sqlite}\n", -1,
     "t.yaml:3:3: connectors: duplicate connector 'pg'"},
    {"connector not a mapping", "connectors:\n  pg: postgres\n", -1,
     "t.yaml:2:7: connectors.pg: expected a mapping of settings, got 'postgres'"},
    {"connector with no content", "connectors:\n  pg:\n", -1,
     "connectors.pg: expected a mapping of settings, got nothing"},
    {"connector with tag", "connectors: {pg: !x {type: p}}\n", -1,
     "t.yaml:1:18: connectors.pg: unexpected tag '!x'"},
    {"connector setting a sequence", "connectors: {k: {type: kafka, brokers: [a, b]}}\n", -1,
     "t.yaml:1:40: brokers: sequences are not supported here"},
    {"connector setting duplicated", "connectors: {k: {type: kafka, type: redis}}\n", -1,
     "t.yaml:1:31: duplicate key 'type'"},
    {"rules not a sequence", "rules:\n  name: x\n", -1,
     "t.yaml:2:3: rules: expected a sequence of rules, got a mapping"},
    {"rules a scalar", "rules: all\n", -1, "rules: expected a sequence of rules, got 'all'"},
    {"rules with tag", "rules: !r []\n", -1, "rules: unexpected tag '!r'"},
    {"rule item not a mapping", "rules:\n  - {name: a}\n  - telemetry\n", -1,
     "t.yaml:3:5: rules[1]: expected a mapping, got 'telemetry'"},
    {"rule item a sequence", "rules: [[a]]\n", -1,
     "t.yaml:1:9: rules[0]: expected a mapping, got a sequence"},
    {"rule item empty", "rules:\n  -\n", -1, "rules[0]: expected a mapping, got"},
    {"rule item with a sequence value", "rules: [{name: a, source: [x]}]\n", -1,
     "t.yaml:1:27: rules[0].source: sequences are not supported here"},
    {"rule item with tag", "rules: [!r {name: a}]\n", -1,
     "t.yaml:1:9: rules[0]: unexpected tag '!r'"},
    {"rule_files not a sequence", "rule_files: rules/*.yaml\n", -1,
     "t.yaml:1:13: rule_files: expected a sequence of rule file patterns, got 'rules/*.yaml'"},
    {"rule_files a mapping", "rule_files: {a: b}\n", -1,
     "rule_files: expected a sequence of rule file patterns, got a mapping"},
    {"rule_files item a mapping", "rule_files: [a.yaml, {b: c}]\n", -1,
     "t.yaml:1:22: rule_files[1]: expected a rule file pattern, got a mapping"},
    {"rule_files item a sequence", "rule_files: [[a.yaml]]\n", -1,
     "rule_files[0]: expected a rule file pattern, got a sequence"},
    {"rule_files item null", "rule_files: [a.yaml, ~]\n", -1,
     "rule_files[1]: expected a rule file pattern, got null"},
    {"rule_files item empty", "rule_files: ['']\n", -1, "rule_files[0]: '': 1..4095 bytes"},
    {"rule_files duplicate", "rule_files: [a.yaml, b.yaml, a.yaml]\n", -1,
     "rule_files[2]: 'a.yaml' duplicates 'a.yaml' (rule file patterns are unique)"},
    {"rule_files duplicated section", "rule_files: []\nrule_files: []\n", -1,
     "t.yaml:2:1: top level: duplicate section 'rule_files'"},

    /* Document structure and syntax. */
    {"top level sequence", "- a\n- b\n", -1,
     "t.yaml:1:1: top level: expected a mapping, got a sequence"},
    {"top level scalar", "hello\n", -1, "t.yaml:1:1: top level: expected a mapping, got 'hello'"},
    {"two documents", "log: {level: info}\n---\nlog: {level: debug}\n", -1,
     "t.yaml:3:1: only one YAML document is allowed"},
    {"syntax: unclosed flow", "limits:\n  max_inflight: [1, 2\n", -1,
     "t.yaml:3:1: did not find expected ',' or ']' (while parsing a flow sequence at 2:17)"},
    {"syntax: mapping in scalar", "log: level: info\n", -1,
     "t.yaml:1:11: mapping values are not allowed in this context"},
    {"syntax: tab indentation", "log:\n\tlevel: info\n", -1,
     "t.yaml:2:1: found character that cannot start any token"},
    {"syntax: undefined alias", "log: *nothing\n", -1, "t.yaml:1:6: found undefined alias"},
    {"invalid UTF-8", "log: {level: \xff}\n", -1, "t.yaml:1:14: invalid leading UTF-8 octet"},
};

START_TEST(test_load_table)
{
    const struct load_case *t = &load_cases[_i];
    struct instance_config cfg;
    char err[512] = "untouched";
    int rc = config_load_string(t->yaml, strlen(t->yaml), "t.yaml", &cfg, err, sizeof err);
    ck_assert_msg(rc == t->rc, "%s: rc %d, want %d (%s)", t->name, rc, t->rc, err);
    if (rc < 0) {
        ck_assert_msg(strstr(err, t->err) != NULL, "%s: err '%s' lacks '%s'", t->name, err, t->err);
        ck_assert_msg(
            cfg.source == NULL && cfg.instance_id == NULL && cfg.broker.storage_dir == NULL &&
                cfg.broker.listener_count == 0 && cfg.broker.naming.parent_topics == NULL &&
                cfg.broker.naming.parent_topic_count == 0 && cfg.broker.naming.groups == NULL &&
                cfg.broker.naming.group_count == 0 && cfg.base_dir == NULL &&
                cfg.connectors == NULL && cfg.connector_count == 0 && cfg.rules.items == NULL &&
                cfg.rules.count == 0 && cfg.rule_files == NULL && cfg.rule_file_count == 0,
            "%s: failed load left data in *out", t->name);
    } else {
        ck_assert_str_eq(cfg.source, "t.yaml");
        ck_assert_str_eq(cfg.base_dir, ".");
        ck_assert_uint_ge(cfg.broker.listener_count, 1);
        ck_assert_uint_ge(cfg.export.retry_max_ms, cfg.export.retry_initial_ms);
        for (unsigned i = 0; i < cfg.connector_count; i++) {
            ck_assert_ptr_nonnull(cfg.connectors[i].settings);
            ck_assert_ptr_null(kv_find(cfg.connectors[i].settings, "type"));
            ck_assert_ptr_eq(cfg.connectors[i].settings->file, cfg.source);
        }
        for (unsigned i = 0; i < cfg.rules.count; i++)
            ck_assert_ptr_eq(cfg.rules.items[i]->file, cfg.source);
    }
    config_free(&cfg);
}
END_TEST

static const char full_yaml[] = "instance:\n"
                                "  id: edge-7\n"
                                "  naming: mqtt\n"
                                "  on_duplicate_client_id: reject\n"
                                "  parent_topics: [SensorData, Commands]\n"
                                "  groups:\n"
                                "    - GID_sensors\n"
                                "    - GID-app\n"
                                "listeners:\n"
                                "  - host: 127.0.0.1\n"
                                "    port: 1884\n"
                                "  - host: '::'\n"
                                "    port: 8883\n"
                                "storage:\n"
                                "  path: /var/lib/mqb\n"
                                "  sync: full\n"
                                "limits:\n"
                                "  max_inflight: 7\n"
                                "  max_queued: 12345\n"
                                "  max_packet_size: 4096\n"
                                "  max_connections: 500\n"
                                "  max_keepalive: 600\n"
                                "  max_message_size: 1024\n"
                                "  max_subscriptions_per_client: 5\n"
                                "  max_wildcard_subscriptions_per_parent: 7\n"
                                "  max_parent_topics: 2\n"
                                "  offline_message_ttl: 60\n"
                                "  max_offline_messages: 99\n"
                                "  max_topic_length: 100\n"
                                "  max_topic_levels: 5\n"
                                "  max_client_id_length: 128\n"
                                "log:\n"
                                "  level: debug\n";

START_TEST(test_full_file_fields)
{
    struct instance_config cfg;
    char err[256];
    ck_assert_int_eq(
        config_load_string(full_yaml, strlen(full_yaml), "full.yaml", &cfg, err, sizeof err), 0);
    ck_assert_str_eq(cfg.source, "full.yaml");
    ck_assert_str_eq(cfg.instance_id, "edge-7");
    ck_assert_uint_eq(cfg.broker.listener_count, 2);
    ck_assert_str_eq(cfg.broker.listeners[0].host, "127.0.0.1");
    ck_assert_uint_eq(cfg.broker.listeners[0].port, 1884);
    ck_assert_str_eq(cfg.broker.listeners[1].host, "::");
    ck_assert_uint_eq(cfg.broker.listeners[1].port, 8883);
    ck_assert_ptr_null(cfg.broker.listeners[2].host);
    ck_assert_str_eq(cfg.broker.storage_dir, "/var/lib/mqb");
    ck_assert_int_eq(cfg.broker.sync, STORE_SYNC_FULL);
    ck_assert_uint_eq(cfg.broker.limits.max_inflight, 7);
    ck_assert_uint_eq(cfg.broker.limits.max_queued, 12345);
    ck_assert_uint_eq(cfg.broker.limits.max_packet_size, 4096);
    ck_assert_uint_eq(cfg.broker.limits.max_connections, 500);
    ck_assert_uint_eq(cfg.broker.limits.max_keepalive, 600);
    ck_assert_uint_eq(cfg.broker.limits.max_message_size, 1024);
    ck_assert_uint_eq(cfg.broker.limits.max_subscriptions_per_client, 5);
    ck_assert_uint_eq(cfg.broker.limits.max_wildcard_subscriptions_per_parent, 7);
    ck_assert_uint_eq(cfg.broker.limits.max_parent_topics, 2);
    ck_assert_uint_eq(cfg.broker.limits.offline_message_ttl, 60);
    ck_assert_uint_eq(cfg.broker.limits.max_offline_messages, 99);
    ck_assert_uint_eq(cfg.broker.naming.limits.max_topic_length, 100);
    ck_assert_uint_eq(cfg.broker.naming.limits.max_topic_levels, 5);
    ck_assert_uint_eq(cfg.broker.naming.limits.max_client_id_length, 128);
    ck_assert_int_eq(cfg.broker.naming_mode, NAMING_MQTT);
    ck_assert_int_eq(cfg.broker.on_duplicate_client_id, DUPLICATE_REJECT);
    ck_assert_uint_eq(cfg.broker.naming.parent_topic_count, 2);
    ck_assert_str_eq(cfg.broker.naming.parent_topics[0], "SensorData");
    ck_assert_str_eq(cfg.broker.naming.parent_topics[1], "Commands");
    ck_assert_uint_eq(cfg.broker.naming.group_count, 2);
    ck_assert_str_eq(cfg.broker.naming.groups[0], "GID_sensors");
    ck_assert_str_eq(cfg.broker.naming.groups[1], "GID-app");
    ck_assert_int_eq(cfg.log_level, LOG_DEBUG);
    config_free(&cfg);
    ck_assert_ptr_null(cfg.source);
    config_free(&cfg); /* freeing twice is harmless: the config was zeroed */
}
END_TEST

/* The schema's defaults and broker_config_defaults() must agree. */
START_TEST(test_empty_document_defaults)
{
    struct instance_config cfg;
    struct broker_config def;
    char err[256];
    ck_assert_int_eq(config_load_string("", 0, "<embedded>", &cfg, err, sizeof err), 0);
    broker_config_defaults(&def);
    ck_assert_str_eq(cfg.instance_id, "mqbridge");
    ck_assert_int_eq(cfg.log_level, LOG_INFO);
    ck_assert_uint_eq(cfg.broker.listener_count, def.listener_count);
    ck_assert_uint_eq(cfg.broker.listener_count, 1);
    ck_assert_str_eq(cfg.broker.listeners[0].host, def.listeners[0].host);
    ck_assert_str_eq(cfg.broker.listeners[0].host, "0.0.0.0");
    ck_assert_uint_eq(cfg.broker.listeners[0].port, def.listeners[0].port);
    ck_assert_uint_eq(cfg.broker.listeners[0].port, 1883);
    ck_assert_str_eq(cfg.broker.storage_dir, def.storage_dir);
    ck_assert_str_eq(cfg.broker.storage_dir, "./data");
    ck_assert_int_eq(cfg.broker.sync, def.sync);
    ck_assert_int_eq(cfg.broker.sync, STORE_SYNC_NORMAL);
    ck_assert_int_eq(memcmp(&cfg.broker.limits, &def.limits, sizeof def.limits), 0);
    ck_assert_uint_eq(cfg.broker.limits.max_packet_size, 268435460);
    ck_assert_uint_eq(cfg.broker.limits.max_inflight, 20);
    ck_assert_uint_eq(cfg.broker.limits.max_queued, 1000);
    ck_assert_uint_eq(cfg.broker.limits.max_connections, 0);
    ck_assert_uint_eq(cfg.broker.limits.max_keepalive, 0);
    ck_assert_uint_eq(cfg.broker.limits.max_message_size, 65536);
    ck_assert_uint_eq(cfg.broker.limits.max_subscriptions_per_client, 30);
    ck_assert_uint_eq(cfg.broker.limits.max_wildcard_subscriptions_per_parent, 100);
    ck_assert_uint_eq(cfg.broker.limits.max_parent_topics, 25);
    ck_assert_uint_eq(cfg.broker.limits.offline_message_ttl, 259200);
    ck_assert_uint_eq(cfg.broker.limits.max_offline_messages, 1000000);
    ck_assert_int_eq(cfg.broker.naming_mode, def.naming_mode);
    ck_assert_int_eq(cfg.broker.naming_mode, NAMING_MANAGED);
    ck_assert_int_eq(cfg.broker.on_duplicate_client_id, def.on_duplicate_client_id);
    ck_assert_int_eq(cfg.broker.on_duplicate_client_id, DUPLICATE_TAKEOVER);
    ck_assert_int_eq(
        memcmp(&cfg.broker.naming.limits, &def.naming.limits, sizeof def.naming.limits), 0);
    ck_assert_uint_eq(cfg.broker.naming.limits.max_topic_length, 64);
    ck_assert_uint_eq(cfg.broker.naming.limits.max_topic_levels, 3);
    ck_assert_uint_eq(cfg.broker.naming.limits.max_client_id_length, 64);
    ck_assert_ptr_null(cfg.broker.naming.parent_topics);
    ck_assert_uint_eq(cfg.broker.naming.parent_topic_count, 0);
    ck_assert_ptr_null(cfg.broker.naming.groups);
    ck_assert_uint_eq(cfg.broker.naming.group_count, 0);
    ck_assert_ptr_null(def.naming.parent_topics);
    ck_assert_uint_eq(def.naming.parent_topic_count, 0);
    ck_assert_ptr_null(def.naming.groups);
    ck_assert_uint_eq(def.naming.group_count, 0);
    broker_config_free(&def);
    ck_assert_ptr_null(def.storage_dir);
    config_free(&cfg);
}
END_TEST

/* A listener item starts from the listener defaults; a section replaces
 * only the keys it names. */
START_TEST(test_partial_sections_keep_defaults)
{
    static const char yaml[] = "listeners: [{port: 1884}, {host: '::'}]\n"
                               "storage: {path: here}\n"
                               "limits: {max_queued: 5}\n";
    struct instance_config cfg;
    char err[256];
    ck_assert_int_eq(config_load_string(yaml, strlen(yaml), "p.yaml", &cfg, err, sizeof err), 0);
    ck_assert_uint_eq(cfg.broker.listener_count, 2);
    ck_assert_str_eq(cfg.broker.listeners[0].host, "0.0.0.0");
    ck_assert_uint_eq(cfg.broker.listeners[0].port, 1884);
    ck_assert_str_eq(cfg.broker.listeners[1].host, "::");
    ck_assert_uint_eq(cfg.broker.listeners[1].port, 1883);
    ck_assert_str_eq(cfg.broker.storage_dir, "here");
    ck_assert_int_eq(cfg.broker.sync, STORE_SYNC_NORMAL);
    ck_assert_uint_eq(cfg.broker.limits.max_queued, 5);
    ck_assert_uint_eq(cfg.broker.limits.max_inflight, 20);
    ck_assert_str_eq(cfg.instance_id, "mqbridge");
    config_free(&cfg);
}
END_TEST

/* Read a whole file into a NUL-terminated heap string, or NULL. */
static char *read_text(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *text = NULL;
    long size;
    if (!f)
        return NULL;
    if (fseek(f, 0, SEEK_END) == 0 && (size = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0 &&
        (text = malloc((size_t)size + 1)) != NULL) {
        *len = fread(text, 1, (size_t)size, f);
        text[*len] = '\0';
    }
    fclose(f);
    return text;
}

/* ctest runs from the source dir (or MQB_SOURCE_DIR names it); a build
 * directory one or two levels down works too. Returns a static path. */
static const char *find_file(const char *rel)
{
    static char path[4096];
    static const char *const roots[] = {
#ifdef MQB_SOURCE_DIR
        MQB_SOURCE_DIR,
#endif
        ".",
        "..",
        "../..",
    };
    for (size_t i = 0; i < sizeof roots / sizeof roots[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", roots[i], rel);
        if (access(path, R_OK) == 0)
            return path;
    }
    return NULL;
}

START_TEST(test_quickstart_example_loads)
{
    const char *path = find_file("examples/quickstart.yaml");
    ck_assert_msg(path != NULL, "examples/quickstart.yaml not found from %s",
                  getcwd((char[4096]){0}, 4096));
    size_t len = 0;
    char *text = read_text(path, &len);
    ck_assert_ptr_nonnull(text);
    struct instance_config cfg;
    char err[256] = "";
    ck_assert_msg(config_load_string(text, len, "<embedded>", &cfg, err, sizeof err) == 0, "%s",
                  err);
    ck_assert_uint_eq(cfg.broker.listener_count, 1);
    ck_assert_str_eq(cfg.broker.listeners[0].host, "127.0.0.1");
    ck_assert_uint_eq(cfg.broker.listeners[0].port, 1883);
    ck_assert_str_eq(cfg.broker.storage_dir, "./data/quickstart");
    ck_assert_int_eq(cfg.broker.sync, STORE_SYNC_NORMAL);
    ck_assert_int_eq(cfg.log_level, LOG_INFO);
    ck_assert_uint_eq(cfg.broker.limits.max_inflight, 20);
    ck_assert_uint_eq(cfg.broker.limits.max_packet_size, 268435460);
    ck_assert_int_eq(cfg.broker.naming_mode, NAMING_MANAGED);
    ck_assert_uint_eq(cfg.broker.naming.parent_topic_count, 2);
    ck_assert_str_eq(cfg.broker.naming.parent_topics[0], "demo");
    ck_assert_str_eq(cfg.broker.naming.parent_topics[1], "SensorData");
    ck_assert_uint_eq(cfg.broker.naming.group_count, 2);
    ck_assert_str_eq(cfg.broker.naming.groups[0], "GID_demo");
    ck_assert_str_eq(cfg.broker.naming.groups[1], "GID_sensors");
    /* The managed limits are written out with their default values. */
    struct broker_config def;
    broker_config_defaults(&def);
    ck_assert_int_eq(memcmp(&cfg.broker.limits, &def.limits, sizeof def.limits), 0);
    ck_assert_int_eq(
        memcmp(&cfg.broker.naming.limits, &def.naming.limits, sizeof def.naming.limits), 0);
    broker_config_free(&def);
    static const char *const keys[] = {
        "max_message_size:",     "max_subscriptions_per_client:",
        "max_parent_topics:",    "max_wildcard_subscriptions_per_parent:",
        "offline_message_ttl:",  "max_offline_messages:",
        "max_topic_length:",     "max_topic_levels:",
        "max_client_id_length:", "on_duplicate_client_id:",
    };
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        ck_assert_msg(strstr(text, keys[i]) != NULL, "quickstart lacks %s", keys[i]);
    /* The connect example uses names the file declares. */
    ck_assert_ptr_nonnull(strstr(text, "mosquitto_sub -i GID_demo@@@viewer -t 'demo/#' -q 1 -v"));
    ck_assert_ptr_nonnull(
        strstr(text, "mosquitto_pub -i GID_demo@@@dev1 -t demo/hello -m world -q 1"));
    /* The rules engine: one SQLite connector, an outbound and a status rule
     * on the names the file declares, and how to look at the rows. */
    ck_assert_uint_eq(cfg.connector_count, 1);
    ck_assert_str_eq(cfg.connectors[0].name, "local");
    ck_assert_str_eq(cfg.connectors[0].type, "sqlite");
    ck_assert_str_eq(kv_str(cfg.connectors[0].settings, "path", ""), "./data/quickstart/export.db");
    ck_assert_uint_eq(cfg.rules.count, 2);
    const struct kvmap *out = cfg.rules.items[0], *status = cfg.rules.items[1];
    ck_assert_str_eq(kv_str(out, "name", ""), "demo-to-sqlite");
    ck_assert_str_eq(kv_str(out, "type", ""), "outbound");
    ck_assert_str_eq(kv_str(kv_find(out, "source")->map, "topic", ""), "demo");
    const struct kvmap *target = kv_find(out, "target")->map;
    ck_assert_str_eq(kv_str(target, "connector", ""), "local");
    ck_assert_str_eq(kv_str(target, "table", ""), "messages");
    ck_assert_str_eq(kv_str(target, "create_table", ""), "true");
    ck_assert_str_eq(kv_str(status, "name", ""), "demo-status");
    ck_assert_str_eq(kv_str(status, "type", ""), "status");
    ck_assert_str_eq(kv_str(kv_find(status, "source")->map, "group", ""), "GID_demo");
    target = kv_find(status, "target")->map;
    ck_assert_str_eq(kv_str(target, "connector", ""), "local");
    ck_assert_str_eq(kv_str(target, "table", ""), "device_status");
    ck_assert_str_eq(kv_str(target, "events_table", ""), "device_events");
    ck_assert_str_eq(kv_str(target, "create_table", ""), "true");
    ck_assert_uint_eq(cfg.rule_file_count, 0);
    ck_assert_ptr_nonnull(
        strstr(text, "sqlite3 ./data/quickstart/export.db 'SELECT * FROM messages'"));
    ck_assert_ptr_nonnull(
        strstr(text, "sqlite3 ./data/quickstart/export.db 'SELECT * FROM device_status'"));
    config_free(&cfg);
    free(text);
}
END_TEST

/* ---- docs/CONFIG.md agrees with the loader ----------------------------- */

static int load_quiet(const char *yaml, struct instance_config *cfg)
{
    char err[256];
    return config_load_string(yaml, strlen(yaml), "doc.yaml", cfg, err, sizeof err);
}

static int names_equal(char **a, unsigned na, char **b, unsigned nb)
{
    if (na != nb)
        return 0;
    for (unsigned i = 0; i < na; i++)
        if (strcmp(a[i], b[i]) != 0)
            return 0;
    return 1;
}

static int configs_equal(const struct instance_config *a, const struct instance_config *b)
{
    const struct broker_config *x = &a->broker, *y = &b->broker;
    if (strcmp(a->instance_id, b->instance_id) || a->log_level != b->log_level ||
        x->listener_count != y->listener_count || strcmp(x->storage_dir, y->storage_dir) ||
        x->sync != y->sync || memcmp(&x->limits, &y->limits, sizeof x->limits) ||
        x->naming_mode != y->naming_mode ||
        x->on_duplicate_client_id != y->on_duplicate_client_id ||
        memcmp(&x->naming.limits, &y->naming.limits, sizeof x->naming.limits) ||
        !names_equal(x->naming.parent_topics, x->naming.parent_topic_count, y->naming.parent_topics,
                     y->naming.parent_topic_count) ||
        !names_equal(x->naming.groups, x->naming.group_count, y->naming.groups,
                     y->naming.group_count))
        return 0;
    const struct export_settings *e = &a->export, *f = &b->export;
    if (e->memory_queue != f->memory_queue || e->spool_max != f->spool_max ||
        e->overflow != f->overflow || e->batch_max != f->batch_max ||
        e->retry_initial_ms != f->retry_initial_ms || e->retry_max_ms != f->retry_max_ms ||
        e->drain_timeout_ms != f->drain_timeout_ms)
        return 0;
    for (unsigned i = 0; i < x->listener_count; i++)
        if (strcmp(x->listeners[i].host, y->listeners[i].host) ||
            x->listeners[i].port != y->listeners[i].port)
            return 0;
    return 1;
}

/* A one-key document setting section.key to value. With range set, the
 * other retry key is moved out of the way so that the range's ends pass
 * the retry_max_ms >= retry_initial_ms check. */
static void doc_yaml(char *out, size_t outlen, const char *section, const char *key,
                     const char *value, bool range)
{
    const char *other = "";
    if (range && !strcmp(section, "export") && !strcmp(key, "retry_initial_ms"))
        other = ", retry_max_ms: 86400000";
    else if (range && !strcmp(section, "export") && !strcmp(key, "retry_max_ms"))
        other = ", retry_initial_ms: 1";
    if (!strcmp(section, "listeners"))
        snprintf(out, outlen, "listeners: [{%s: %s}]\n", key, value);
    else if (!strcmp(section, "storage") && strcmp(key, "path") != 0)
        snprintf(out, outlen, "storage: {path: ./data, %s: %s}\n", key, value);
    else
        snprintf(out, outlen, "%s: {%s: %s%s}\n", section, key, value, other);
}

/* Copy a table cell without spaces and backticks. */
static void cell_text(const char *cell, size_t len, char *out, size_t outlen)
{
    size_t n = 0;
    for (size_t i = 0; i < len && n + 1 < outlen; i++)
        if (cell[i] != '`' && cell[i] != ' ')
            out[n++] = cell[i];
    out[n] = '\0';
}

/* Split "| `key` | type | `default` | range | meaning |" into its first four cells. */
static int doc_row(const char *line, char cells[4][64])
{
    const char *p = line + 1;
    for (int i = 0; i < 4; i++) {
        const char *bar = strchr(p, '|');
        if (!bar)
            return -1;
        cell_text(p, (size_t)(bar - p), cells[i], sizeof cells[i]);
        p = bar + 1;
    }
    return 0;
}

/* The default of the row loads into exactly the built-in defaults; an
 * integer range's ends load and the values just outside it do not. */
static void check_doc_row(const struct instance_config *defaults, const char *section,
                          char cells[4][64])
{
    struct instance_config cfg;
    char yaml[256], num[32];
    doc_yaml(yaml, sizeof yaml, section, cells[0], cells[2], false);
    ck_assert_msg(load_quiet(yaml, &cfg) == 0, "docs default does not load: %s", yaml);
    ck_assert_msg(configs_equal(defaults, &cfg), "docs default is not the default: %s", yaml);
    config_free(&cfg);
    unsigned long long lo, hi;
    if (strcmp(cells[1], "integer") != 0 || sscanf(cells[3], "%llu..%llu", &lo, &hi) != 2)
        return;
    for (int i = 0; i < 4; i++) {
        unsigned long long v = i == 0 ? lo : i == 1 ? hi : i == 2 ? lo - 1 : hi + 1;
        if (i == 2 && lo == 0)
            continue;
        snprintf(num, sizeof num, "%llu", v);
        doc_yaml(yaml, sizeof yaml, section, cells[0], num, true);
        ck_assert_msg((load_quiet(yaml, &cfg) == 0) == (i < 2), "docs range wrong: %s", yaml);
        config_free(&cfg);
    }
}

START_TEST(test_docs_match_loader)
{
    const char *path = find_file("docs/CONFIG.md");
    ck_assert_msg(path != NULL, "docs/CONFIG.md not found");
    /* Every section has its "## `name`" heading; those of keys with
     * scalar values have a table whose rows are checked. */
    static const char *const sections[] = {"instance", "listeners",  "storage", "limits",    "log",
                                           "export",   "connectors", "rules",   "rule_files"};
    const size_t tabled = 6;
    size_t len = 0, rows = 0, headings = 0;
    char *text = read_text(path, &len), section[32] = "", cells[4][64];
    ck_assert_ptr_nonnull(text);
    struct instance_config defaults;
    ck_assert_int_eq(load_quiet("", &defaults), 0);
    bool checked = false;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        if (!strncmp(line, "## ", 3)) { /* "## `limits`" opens a section */
            cell_text(line + 3, strlen(line + 3), section, sizeof section);
            checked = false;
            for (size_t i = 0; i < sizeof sections / sizeof sections[0]; i++) {
                if (!strcmp(section, sections[i])) {
                    headings |= (size_t)1 << i;
                    checked = i < tabled;
                }
            }
        } else if (checked && !strncmp(line, "| `", 3) && doc_row(line, cells) == 0 &&
                   rows++ < 100) {
            check_doc_row(&defaults, section, cells);
        }
    }
    ck_assert_uint_eq(headings, ((size_t)1 << (sizeof sections / sizeof sections[0])) - 1);
    /* One row per schema key: update when a key is added (and document it). */
    ck_assert_uint_eq(rows, 32);
    config_free(&defaults);
    free(text);
}
END_TEST

START_TEST(test_load_file_names_path)
{
    char path[] = "/tmp/mqb_config_test_XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    static const char yaml[] = "log:\n  level: loud\n";
    ck_assert_int_eq(write(fd, yaml, sizeof yaml - 1), (int)(sizeof yaml - 1));
    close(fd);
    struct instance_config cfg;
    char err[512], want[600];
    ck_assert_int_eq(config_load_file(path, &cfg, err, sizeof err), -1);
    snprintf(want, sizeof want, "%s:2:10: log.level: expected one of", path);
    ck_assert_msg(strncmp(err, want, strlen(want)) == 0, "err '%s'", err);
    unlink(path);
}
END_TEST

START_TEST(test_load_file_missing)
{
    struct instance_config cfg;
    char err[256];
    ck_assert_int_eq(config_load_file("/nonexistent/mqb.yaml", &cfg, err, sizeof err), -1);
    ck_assert_str_eq(err, "cannot read /nonexistent/mqb.yaml: No such file or directory");
    ck_assert_int_eq(config_load_file("/", &cfg, err, sizeof err), -1);
    ck_assert_str_eq(err, "cannot read /: Is a directory");
    ck_assert_ptr_null(cfg.source);
}
END_TEST

START_TEST(test_load_file_ok)
{
    char path[] = "/tmp/mqb_config_test_XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, full_yaml, sizeof full_yaml - 1), (int)(sizeof full_yaml - 1));
    close(fd);
    struct instance_config cfg;
    char err[256];
    ck_assert_int_eq(config_load_file(path, &cfg, err, sizeof err), 0);
    ck_assert_str_eq(cfg.source, path);
    ck_assert_str_eq(cfg.instance_id, "edge-7");
    config_free(&cfg);
    unlink(path);
}
END_TEST

/* Uniqueness is checked in linear time: a duplicate at the end of a long
 * list is found and named with its index and line. */
START_TEST(test_long_group_list)
{
    enum { N = 20000 };
    struct buf yaml = {0};
    char line[64];
    static const char head[] = "instance:\n  groups:\n";
    ck_assert_int_eq(buf_append(&yaml, head, sizeof head - 1), 0);
    for (int i = 0; i < N; i++) {
        int n = snprintf(line, sizeof line, "    - GID_g%05d\n", i);
        ck_assert_int_eq(buf_append(&yaml, line, (size_t)n), 0);
    }
    struct instance_config cfg;
    char err[256];
    ck_assert_int_eq(
        config_load_string((const char *)yaml.data, yaml.len, "t.yaml", &cfg, err, sizeof err), 0);
    ck_assert_uint_eq(cfg.broker.naming.group_count, N);
    ck_assert_str_eq(cfg.broker.naming.groups[N - 1], "GID_g19999");
    config_free(&cfg);
    static const char dup[] = "    - GID_g00007\n";
    ck_assert_int_eq(buf_append(&yaml, dup, sizeof dup - 1), 0);
    ck_assert_int_eq(
        config_load_string((const char *)yaml.data, yaml.len, "t.yaml", &cfg, err, sizeof err), -1);
    ck_assert_str_eq(err, "t.yaml:20003:7: instance.groups[20000]: 'GID_g00007' duplicates "
                          "'GID_g00007' (group IDs are unique)");
    buf_free(&yaml);
}
END_TEST

/* Messages are cut to the buffer; no buffer at all is allowed. */
START_TEST(test_small_error_buffers)
{
    static const char yaml[] = "limits: {max_inflight: 0}\n";
    struct instance_config cfg;
    char err[12];
    memset(err, 'x', sizeof err);
    ck_assert_int_eq(config_load_string(yaml, strlen(yaml), "t.yaml", &cfg, err, sizeof err), -1);
    ck_assert_str_eq(err, "t.yaml:1:24");
    ck_assert_int_eq(config_load_string(yaml, strlen(yaml), "t.yaml", &cfg, NULL, 0), -1);
    ck_assert_int_eq(config_load_file("/nonexistent", &cfg, NULL, 0), -1);
}
END_TEST

/* Text need not be NUL-terminated: only len bytes are read. */
START_TEST(test_length_bounds_input)
{
    static const char yaml[] = "log: {level: debug}\nbogus: 1\n";
    struct instance_config cfg;
    char err[256];
    size_t len = strlen("log: {level: debug}\n");
    ck_assert_int_eq(config_load_string(yaml, len, "t.yaml", &cfg, err, sizeof err), 0);
    ck_assert_int_eq(cfg.log_level, LOG_DEBUG);
    config_free(&cfg);
}
END_TEST

START_TEST(test_free_accepts_null_and_zeroed)
{
    struct instance_config cfg;
    memset(&cfg, 0, sizeof cfg);
    config_free(&cfg);
    config_free(NULL);
    broker_config_free(NULL);
    /* Half-built: a host past listener_count is still freed (ASan checks). */
    cfg.broker.listeners[3].host = strdup("::");
    cfg.instance_id = strdup("x");
    /* Half-built lists: entries past the count are never written. */
    cfg.broker.naming.parent_topics = calloc(3, sizeof(char *));
    cfg.broker.naming.parent_topics[0] = strdup("SensorData");
    cfg.broker.naming.parent_topic_count = 1;
    cfg.broker.naming.groups = calloc(2, sizeof(char *));
    /* Half-built connectors: the last one counted has only its name. */
    cfg.connectors = calloc(3, sizeof *cfg.connectors);
    cfg.connectors[0].name = strdup("a");
    cfg.connectors[0].type = strdup("sqlite");
    cfg.connectors[0].settings = calloc(1, sizeof(struct kvmap));
    cfg.connectors[1].name = strdup("b");
    cfg.connector_count = 2;
    ck_assert_int_eq(kvlist_push(&cfg.rules, calloc(1, sizeof(struct kvmap))), 0);
    cfg.rule_files = calloc(2, sizeof(char *));
    cfg.rule_files[0] = strdup("x.yaml");
    cfg.rule_file_count = 1;
    cfg.base_dir = strdup(".");
    config_free(&cfg);
    ck_assert_ptr_null(cfg.connectors);
    ck_assert_uint_eq(cfg.rules.count, 0);
    ck_assert_ptr_null(cfg.rule_files);
    ck_assert_ptr_null(cfg.broker.listeners[3].host);
    ck_assert_ptr_null(cfg.instance_id);
    ck_assert_ptr_null(cfg.broker.naming.parent_topics);
    ck_assert_ptr_null(cfg.broker.naming.groups);
}
END_TEST

/* ---- Rules-engine sections ------------------------------------------- */

static const char rules_yaml[] =
    "connectors:\n"
    "  events-kafka: { type: kafka, brokers: \"127.0.0.1:9092\", options: { linger.ms: \"5\" } }\n"
    "  local:\n"
    "    path: ./data/export.db\n"
    "    type: sqlite\n"
    "rules:\n"
    "  - name: telemetry-to-sqlite\n"
    "    type: outbound\n"
    "    source: { topic: demo }\n"
    "    target: { connector: local, table: messages, create_table: true }\n"
    "  - { name: second, enabled: false }\n"
    "rule_files: [ \"rules/*.yaml\", extra.yaml ]\n"
    "export:\n"
    "  memory_queue: 7\n"
    "  spool_max: 1000000000000\n"
    "  overflow: drop_newest\n"
    "  batch_max: 9\n"
    "  retry_initial_ms: 10\n"
    "  retry_max_ms: 20\n"
    "  drain_timeout_ms: 0\n";

/* A kv's scalar and position. */
static void assert_kv(const struct kvmap *m, const char *key, const char *value, int line, int col)
{
    const struct kv *item = kv_find(m, key);
    ck_assert_msg(item != NULL, "no key '%s'", key);
    ck_assert_str_eq(item->value, value);
    ck_assert_int_eq(item->line, line);
    ck_assert_int_eq(item->col, col);
}

START_TEST(test_rules_sections_fields)
{
    struct instance_config cfg;
    char err[256];
    ck_assert_msg(
        config_load_string(rules_yaml, strlen(rules_yaml), "r.yaml", &cfg, err, sizeof err) == 0,
        "%s", err);
    ck_assert_str_eq(cfg.base_dir, ".");
    /* Connectors in file order, `type` taken out of the settings. */
    ck_assert_uint_eq(cfg.connector_count, 2);
    const struct connector_decl *k = &cfg.connectors[0], *l = &cfg.connectors[1];
    ck_assert_str_eq(k->name, "events-kafka");
    ck_assert_str_eq(k->type, "kafka");
    ck_assert_uint_eq(k->settings->count, 2);
    ck_assert_ptr_eq(k->settings->file, cfg.source);
    ck_assert_int_eq(k->settings->line, 2);
    ck_assert_int_eq(k->settings->col, 17);
    assert_kv(k->settings, "brokers", "127.0.0.1:9092", 2, 32);
    const struct kv *options = kv_find(k->settings, "options");
    ck_assert_ptr_nonnull(options);
    ck_assert_ptr_null(options->value);
    assert_kv(options->map, "linger.ms", "5", 2, 70);
    ck_assert_str_eq(l->name, "local");
    ck_assert_str_eq(l->type, "sqlite");
    ck_assert_uint_eq(l->settings->count, 1);
    assert_kv(l->settings, "path", "./data/export.db", 4, 5);
    ck_assert_ptr_eq(l->settings->items[0].file, cfg.source);
    /* Inline rules as written, for rules_build. */
    ck_assert_uint_eq(cfg.rules.count, 2);
    const struct kvmap *r = cfg.rules.items[0];
    ck_assert_ptr_eq(r->file, cfg.source);
    ck_assert_int_eq(r->line, 7);
    ck_assert_int_eq(r->col, 5);
    assert_kv(r, "name", "telemetry-to-sqlite", 7, 5);
    assert_kv(r, "type", "outbound", 8, 5);
    assert_kv(kv_find(r, "target")->map, "create_table", "true", 10, 50);
    assert_kv(cfg.rules.items[1], "enabled", "false", 11, 21);
    /* Patterns as written. */
    ck_assert_uint_eq(cfg.rule_file_count, 2);
    ck_assert_str_eq(cfg.rule_files[0], "rules/*.yaml");
    ck_assert_str_eq(cfg.rule_files[1], "extra.yaml");
    ck_assert_uint_eq(cfg.export.memory_queue, 7);
    ck_assert_uint_eq(cfg.export.spool_max, 1000000000000ULL);
    ck_assert_int_eq(cfg.export.overflow, OVERFLOW_DROP_NEWEST);
    ck_assert_uint_eq(cfg.export.batch_max, 9);
    ck_assert_uint_eq(cfg.export.retry_initial_ms, 10);
    ck_assert_uint_eq(cfg.export.retry_max_ms, 20);
    ck_assert_uint_eq(cfg.export.drain_timeout_ms, 0);
    config_free(&cfg);
    ck_assert_ptr_null(cfg.connectors);
    ck_assert_ptr_null(cfg.rules.items);
    ck_assert_ptr_null(cfg.rule_files);
    ck_assert_ptr_null(cfg.base_dir);
}
END_TEST

/* The export defaults are export_settings_defaults()'s (engine/export.c,
 * not linked here): the values documented in engine/export.h. An empty
 * document declares no connectors, rules or rule files. */
START_TEST(test_export_defaults)
{
    struct instance_config cfg;
    char err[256];
    ck_assert_int_eq(config_load_string("", 0, "<embedded>", &cfg, err, sizeof err), 0);
    ck_assert_uint_eq(cfg.export.memory_queue, 100000);
    ck_assert_uint_eq(cfg.export.spool_max, 10000000);
    ck_assert_int_eq(cfg.export.overflow, OVERFLOW_DROP_OLDEST);
    ck_assert_uint_eq(cfg.export.batch_max, 1000);
    ck_assert_uint_eq(cfg.export.retry_initial_ms, 200);
    ck_assert_uint_eq(cfg.export.retry_max_ms, 30000);
    ck_assert_uint_eq(cfg.export.drain_timeout_ms, 5000);
    ck_assert_ptr_null(cfg.connectors);
    ck_assert_uint_eq(cfg.connector_count, 0);
    ck_assert_uint_eq(cfg.rules.count, 0);
    ck_assert_ptr_null(cfg.rule_files);
    ck_assert_uint_eq(cfg.rule_file_count, 0);
    ck_assert_str_eq(cfg.base_dir, ".");
    config_free(&cfg);
}
END_TEST

/* Aliases cannot blow the connectors up: one anchored mapping of 11110
 * keys used by ten connectors passes one conversion's bound each time, but
 * their sum is refused at the connector that crosses 100000 keys (each
 * connector is 11112 keys: the ninth crosses). */
START_TEST(test_alias_expansion_bounded)
{
    struct buf y = {0};
    char line[256];
    static const char head[] = "connectors:\n  c0:\n    type: t\n    x: &x3\n";
    ck_assert_int_eq(buf_append(&y, head, sizeof head - 1), 0);
    /* x3 = {k0: x2, k1..k9: *x2}, ..., x0 = {v0..v9: 1}: 10+100+1000+10000 keys. */
    for (int level = 2; level >= 0; level--) {
        int n = snprintf(line, sizeof line, "%*sk0: &x%d\n", 6 + 2 * (2 - level), "", level);
        ck_assert_int_eq(buf_append(&y, line, (size_t)n), 0);
    }
    for (int v = 0; v < 10; v++) {
        int n = snprintf(line, sizeof line, "%*sv%d: 1\n", 12, "", v);
        ck_assert_int_eq(buf_append(&y, line, (size_t)n), 0);
    }
    for (int level = 0; level <= 2; level++) {
        for (int i = 1; i < 10; i++) {
            int n =
                snprintf(line, sizeof line, "%*sk%d: *x%d\n", 6 + 2 * (2 - level), "", i, level);
            ck_assert_int_eq(buf_append(&y, line, (size_t)n), 0);
        }
    }
    size_t eight = 0; /* the length of the text up to c8 */
    for (int c = 1; c < 10; c++) {
        if (c == 8)
            eight = y.len;
        int n = snprintf(line, sizeof line, "  c%d: {type: t, x: *x3}\n", c);
        ck_assert_int_eq(buf_append(&y, line, (size_t)n), 0);
    }
    struct instance_config cfg;
    char err[256];
    /* Eight connectors load (88896 keys)... */
    ck_assert_msg(
        config_load_string((const char *)y.data, eight, "a.yaml", &cfg, err, sizeof err) == 0, "%s",
        err);
    ck_assert_uint_eq(cfg.connector_count, 8);
    ck_assert_uint_eq(cfg.connectors[7].settings->count, 1);
    config_free(&cfg);
    /* ...the ninth crosses the bound. */
    ck_assert_int_eq(
        config_load_string((const char *)y.data, y.len, "a.yaml", &cfg, err, sizeof err), -1);
    ck_assert_str_eq(err, "a.yaml:52:7: connectors.c8: connectors and rules hold more than "
                          "100000 keys (aliases expanded)");
    buf_free(&y);
}
END_TEST

/* A scratch directory for rule files. */
#define GLOBBY_DIR "/tmp/mqb cfg[1]*XXXXXX" /* base_dir must be escaped in patterns */
#define PLAIN_DIR "/tmp/mqb_cfg_XXXXXX"     /* for patterns holding the directory */
struct scratch {
    char dir[64];
    char paths[16][128]; /* created, removed in reverse order */
    int count;
};

static const char *scratch_path(struct scratch *t, const char *rel)
{
    char path[sizeof t->paths[0]];
    ck_assert_int_lt(t->count, 16);
    ck_assert_int_lt(snprintf(path, sizeof path, "%s/%s", t->dir, rel), (int)sizeof path);
    return memcpy(t->paths[t->count++], path, sizeof path);
}

static void scratch_mkdir(struct scratch *t, const char *rel)
{
    ck_assert_int_eq(mkdir(scratch_path(t, rel), 0700), 0);
}

static void scratch_write(struct scratch *t, const char *rel, const char *text)
{
    FILE *f = fopen(scratch_path(t, rel), "w");
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(fputs(text, f) >= 0, 1);
    ck_assert_int_eq(fclose(f), 0);
}

/* template: a mkdtemp template. */
static void scratch_open(struct scratch *t, const char *template)
{
    memset(t, 0, sizeof *t);
    snprintf(t->dir, sizeof t->dir, "%s", template);
    ck_assert_ptr_nonnull(mkdtemp(t->dir));
}

static void scratch_close(struct scratch *t)
{
    while (t->count > 0)
        ck_assert_int_eq(remove(t->paths[--t->count]), 0);
    ck_assert_int_eq(rmdir(t->dir), 0);
}

/* The rule names in items[from..), joined with spaces. */
static const char *rule_names(const struct kvlist *items, unsigned from, char *buf, size_t len)
{
    size_t n = 0;
    buf[0] = '\0';
    for (unsigned i = from; i < items->count && n < len; i++)
        n += (size_t)snprintf(buf + n, len - n, "%s%s", n ? " " : "",
                              kv_str(items->items[i], "name", "?"));
    return buf;
}

static struct kvmap *sentinel_map(void)
{
    struct kvmap *m = calloc(1, sizeof *m);
    ck_assert_ptr_nonnull(m);
    return m;
}

START_TEST(test_gather_rules)
{
    struct scratch t;
    struct instance_config cfg;
    struct rules_files files = {0};
    struct kvlist out = {0};
    char err[512], names[256], path[256];
    scratch_open(&t, GLOBBY_DIR);
    scratch_write(&t, "mqb.yaml",
                  "rules: [{name: inline-1}, {name: inline-2}]\n"
                  "rule_files: [\"rules/*.yaml\", extra.yaml, \"none/*.yaml\"]\n");
    scratch_mkdir(&t, "rules");
    scratch_write(&t, "rules/b.yaml", "rules:\n  - name: b1\n  - name: b2\n");
    scratch_write(&t, "rules/a.yaml", "rules: [{name: a1}]\n");
    scratch_write(&t, "rules/.hidden.yaml", "rules: [{name: hidden}]\n");
    scratch_write(&t, "rules/notes.txt", "not yaml: [\n");
    scratch_mkdir(&t, "rules/dir.yaml"); /* a directory matched by the glob */
    scratch_write(&t, "extra.yaml", "# nothing but\nrules:\n  - {name: e1}\n");
    snprintf(path, sizeof path, "%s/mqb.yaml", t.dir);
    ck_assert_msg(config_load_file(path, &cfg, err, sizeof err) == 0, "%s", err);
    ck_assert_str_eq(cfg.base_dir, t.dir);
    /* Appended after what the list held; inline first, then file by file. */
    ck_assert_int_eq(kvlist_push(&out, sentinel_map()), 0);
    ck_assert_msg(config_gather_rules(&cfg, &out, &files, err, sizeof err) == 0, "%s", err);
    ck_assert_str_eq(rule_names(&out, 1, names, sizeof names), "inline-1 inline-2 a1 b1 b2 e1");
    ck_assert_uint_eq(out.items[0]->count, 0);
    ck_assert_ptr_eq(out.items[1]->file, cfg.source);
    ck_assert_ptr_ne(out.items[1], cfg.rules.items[0]); /* a copy */
    snprintf(path, sizeof path, "%s/rules/b.yaml", t.dir);
    ck_assert_str_eq(out.items[4]->file, path);
    ck_assert_int_eq(out.items[5]->line, 3);
    ck_assert_int_eq(out.items[5]->col, 5);
    ck_assert_uint_eq(files.count, 3);
    /* SIGHUP: gathered again, the files are interned once. */
    struct kvlist again = {0};
    ck_assert_int_eq(config_gather_rules(&cfg, &again, &files, err, sizeof err), 0);
    ck_assert_str_eq(rule_names(&again, 0, names, sizeof names), "inline-1 inline-2 a1 b1 b2 e1");
    ck_assert_uint_eq(files.count, 3);
    ck_assert_ptr_eq(again.items[4]->file, out.items[4]->file);
    kvlist_clear(&again);
    kvlist_clear(&out);
    rules_files_clear(&files);
    config_free(&cfg);
    scratch_close(&t);
}
END_TEST

/* A rule file's error is passed through with its file, line and column;
 * out is left as it was, whatever was read before the bad file. */
START_TEST(test_gather_rules_file_errors)
{
    static const struct {
        const char *name, *text, *err; /* err follows "<dir>/rules/b.yaml" */
    } cases[] = {
        {"syntax", "rules:\n  - {name: b1\n", ":3:1: did not find expected ',' or '}'"},
        {"item not a mapping", "rules:\n  - b1\n", ":2:5: rules[0]: expected a mapping, got 'b1'"},
        {"unknown top-level key", "rule:\n  - {name: b1}\n", ":1:1: unknown key 'rule'"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct scratch t;
        struct instance_config cfg;
        struct rules_files files = {0};
        struct kvlist out = {0};
        char err[512], want[256], path[256];
        scratch_open(&t, GLOBBY_DIR);
        scratch_write(&t, "mqb.yaml", "rules: [{name: inline}]\nrule_files: [\"rules/*\"]\n");
        scratch_mkdir(&t, "rules");
        scratch_write(&t, "rules/a.yaml", "rules: [{name: a1}]\n");
        scratch_write(&t, "rules/b.yaml", cases[i].text);
        snprintf(path, sizeof path, "%s/mqb.yaml", t.dir);
        ck_assert_int_eq(config_load_file(path, &cfg, err, sizeof err), 0);
        ck_assert_int_eq(kvlist_push(&out, sentinel_map()), 0);
        ck_assert_int_eq(config_gather_rules(&cfg, &out, &files, err, sizeof err), -1);
        snprintf(want, sizeof want, "%s/rules/b.yaml%s", t.dir, cases[i].err);
        ck_assert_msg(strncmp(err, want, strlen(want)) == 0, "%s: err '%s', want '%s'",
                      cases[i].name, err, want);
        ck_assert_uint_eq(out.count, 1);
        ck_assert_uint_eq(out.items[0]->count, 0);
        kvlist_clear(&out);
        rules_files_clear(&files);
        config_free(&cfg);
        scratch_close(&t);
    }
}
END_TEST

/* A literal path must exist; a glob matching nothing is fine; absolute
 * patterns are not joined to base_dir (here "." from a string). */
START_TEST(test_gather_rules_paths)
{
    struct scratch t;
    struct instance_config cfg;
    struct rules_files files = {0};
    struct kvlist out = {0};
    char err[512], yaml[512], want[256], names[64];
    scratch_open(&t, PLAIN_DIR);
    scratch_write(&t, "abs.yaml", "rules: [{name: abs}]\n");
    snprintf(yaml, sizeof yaml, "rule_files: ['%s/abs.yaml', 'no-such-dir-mqb/*.yaml']\n", t.dir);
    ck_assert_int_eq(config_load_string(yaml, strlen(yaml), "s.yaml", &cfg, err, sizeof err), 0);
    ck_assert_msg(config_gather_rules(&cfg, &out, &files, err, sizeof err) == 0, "%s", err);
    ck_assert_str_eq(rule_names(&out, 0, names, sizeof names), "abs");
    config_free(&cfg);
    kvlist_clear(&out);
    /* From a file: a missing literal is an error naming the path tried. */
    scratch_write(&t, "mqb.yaml", "rule_files: [abs.yaml, missing.yaml]\n");
    snprintf(yaml, sizeof yaml, "%s/mqb.yaml", t.dir);
    ck_assert_int_eq(config_load_file(yaml, &cfg, err, sizeof err), 0);
    ck_assert_int_eq(config_gather_rules(&cfg, &out, &files, err, sizeof err), -1);
    snprintf(want, sizeof want, "cannot read %s/missing.yaml: No such file or directory", t.dir);
    ck_assert_str_eq(err, want);
    ck_assert_uint_eq(out.count, 0);
    /* No buffer for the message is allowed. */
    ck_assert_int_eq(config_gather_rules(&cfg, &out, &files, NULL, 0), -1);
    config_free(&cfg);
    kvlist_clear(&out);
    rules_files_clear(&files);
    scratch_close(&t);
}
END_TEST

/* base_dir is the directory part of the path as given. */
START_TEST(test_load_file_base_dir)
{
    struct scratch t;
    struct instance_config cfg;
    char err[256], path[256];
    scratch_open(&t, GLOBBY_DIR);
    scratch_write(&t, "mqb.yaml", "log: {level: warn}\n");
    snprintf(path, sizeof path, "%s//mqb.yaml", t.dir);
    ck_assert_int_eq(config_load_file(path, &cfg, err, sizeof err), 0);
    ck_assert_str_eq(cfg.base_dir, t.dir);
    ck_assert_str_eq(cfg.source, path);
    config_free(&cfg);
    scratch_close(&t);
}
END_TEST

static Suite *config_suite(void)
{
    Suite *s = suite_create("config");
    TCase *tc = tcase_create("load");
    tcase_add_loop_test(tc, test_load_table, 0, (int)(sizeof load_cases / sizeof load_cases[0]));
    tcase_add_test(tc, test_full_file_fields);
    tcase_add_test(tc, test_empty_document_defaults);
    tcase_add_test(tc, test_partial_sections_keep_defaults);
    tcase_add_test(tc, test_quickstart_example_loads);
    tcase_add_test(tc, test_docs_match_loader);
    tcase_add_test(tc, test_load_file_names_path);
    tcase_add_test(tc, test_load_file_missing);
    tcase_add_test(tc, test_load_file_ok);
    tcase_add_test(tc, test_small_error_buffers);
    tcase_add_test(tc, test_length_bounds_input);
    tcase_add_test(tc, test_long_group_list);
    tcase_add_test(tc, test_free_accepts_null_and_zeroed);
    tcase_add_test(tc, test_rules_sections_fields);
    tcase_add_test(tc, test_export_defaults);
    tcase_add_test(tc, test_alias_expansion_bounded);
    tcase_add_test(tc, test_load_file_base_dir);
    tcase_add_test(tc, test_gather_rules);
    tcase_add_test(tc, test_gather_rules_file_errors);
    tcase_add_test(tc, test_gather_rules_paths);
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(config_suite)
