/* mqbench: MQTT load generator (a built-in MQTT 3.1.1 client, or
 * libmosquitto with --client mosquitto; see bench.h).
 *
 * Load mode: subscribers connect and subscribe to PREFIX/# first; once every
 * SUBACK is in, each publisher publishes --count messages to PREFIX/<n> as
 * fast as the broker takes them: QoS 0 paced by TCP back pressure only,
 * QoS 1/2 with a window of --inflight unacknowledged messages per publisher,
 * pausing while subscribers lag more than --backlog messages. (A broker
 * acknowledges on receipt: without the backlog limit a broker that takes
 * messages in faster than it delivers them fills its per-client queue and
 * then drops QoS 1 messages, as MQTT allows, instead of showing the rate it
 * can sustain.) Every payload starts with (publisher, seq, send time), so
 * subscribers measure latency and detect loss, duplicates and reordering.
 * Expected deliveries = publishers * count * subscribers.
 *
 *   mqbench --port 1883 --qos 1 --count 100000              1 -> 1
 *   mqbench --fan-in 100 --qos 1 --count 2000                100 -> 1
 *   mqbench --fan-out 100 --qos 0 --count 2000 --json        1 -> 100
 *
 * Offline mode (--offline N): N persistent subscribers (cleanSession=0),
 * each subscribed at QoS 1 to its own topic PREFIX/o/<n>, go offline; the
 * publishers publish publishers * count messages spread round-robin over
 * them (stored by the broker), then the subscribers reconnect and receive
 * them all. Reports the publish rate while storing, the same rate with the
 * subscribers online on clean sessions (nothing stored), the replay rate
 * and, with --store-dir, the size of the broker's store (see offline.c).
 *
 *   mqbench --offline 10000 --publishers 10 --count 100000 --qos 1
 *
 * Idle mode (--idle N): opens N connections, prints "idle N ready" once
 * every CONNACK is in, keeps them alive until stdin reaches EOF (or for
 * --hold SEC), then exits. Used to measure the broker's memory per
 * connection.
 *
 * Exit status: 0 success; 1 a client failed, or a message was lost at
 * QoS 1/2, duplicated at QoS 2, or malformed (offline mode: also
 * misrouted or out of order); 2 usage error. Loss at QoS 0 is
 * reported but is not a failure. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>

#include "bench.h"
#include "inbound.h"

/* ---- options: one table drives parsing and --help ---- */

enum opt_kind {
    OPT_INT,
    OPT_LONG,
    OPT_STR,
    OPT_FLAG,
    OPT_FAN_IN,
    OPT_FAN_OUT,
    OPT_SELFTEST,
    OPT_HELP
};

struct opt_spec {
    const char *name;
    const char *arg;
    enum opt_kind kind;
    size_t off;
    long min, max;
    const char *help;
};

#define OFF(f) offsetof(struct bench_opts, f)
static const struct opt_spec opt_specs[] = {
    {"host", "HOST", OPT_STR, OFF(host), 0, 0, "broker address (127.0.0.1)"},
    {"port", "PORT", OPT_INT, OFF(port), 1, 65535, "broker port (1883)"},
    {"publishers", "N", OPT_INT, OFF(publishers), 0, 100000, "publishing clients (1)"},
    {"subscribers", "N", OPT_INT, OFF(subscribers), 0, 100000, "subscribing clients (1)"},
    {"fan-in", "N", OPT_FAN_IN, 0, 1, 100000, "N publishers -> 1 subscriber"},
    {"fan-out", "N", OPT_FAN_OUT, 0, 1, 100000, "1 publisher -> N subscribers"},
    {"qos", "0|1|2", OPT_INT, OFF(qos), 0, 2, "QoS of publishes and subscriptions (0)"},
    {"size", "BYTES", OPT_INT, OFF(size), BENCH_HEADER_SIZE, 256 * 1024 * 1024,
     "payload size, at least 24 (64)"},
    {"count", "N", OPT_LONG, OFF(count), 1, 4000000000L, "messages per publisher (10000)"},
    {"topic", "PREFIX", OPT_STR, OFF(topic), 0, 0, "topic prefix (mqbench)"},
    {"id-prefix", "TEXT", OPT_STR, OFF(id_prefix), 0, 0,
     "client IDs are TEXT<pid>-<s|p|i><n> (mqbench-)"},
    {"timeout", "SEC", OPT_INT, OFF(timeout_s), 1, 86400, "give up after this long (60)"},
    {"inflight", "N", OPT_INT, OFF(inflight), 1, 65535, "QoS 1/2 window per publisher (100)"},
    {"threads", "N", OPT_INT, OFF(threads), 1, 256, "worker threads (1)"},
    {"keepalive", "SEC", OPT_INT, OFF(keepalive), 5, 65535, "MQTT keepalive (60)"},
    {"drain-ms", "MS", OPT_INT, OFF(drain_ms), 1, 600000,
     "QoS 0: stop waiting after this long without a delivery (1000)"},
    {"backlog", "N", OPT_LONG, OFF(backlog), 0, 4000000000L,
     "QoS 1/2: publishers pause while subscribers lag this many messages, 0 = never (50000)"},
    {"idle", "N", OPT_INT, OFF(idle), 1, 1000000, "open N idle connections and hold them"},
    {"hold", "SEC", OPT_INT, OFF(hold_s), 1, 86400,
     "idle: hold this long instead of until stdin EOF"},
    {"client", "raw|mosquitto", OPT_STR, OFF(client), 0, 0,
     "built-in MQTT client or libmosquitto (raw)"},
    {"offline", "N", OPT_INT, OFF(offline), 1, 1000000,
     "store and replay: N persistent subscribers, publishers * count messages (QoS 1)"},
    {"no-baseline", NULL, OPT_FLAG, OFF(no_baseline), 0, 0,
     "offline: skip the no-subscriber and in-memory runs"},
    {"store-dir", "DIR", OPT_STR, OFF(store_dir), 0, 0,
     "offline: the broker's storage directory, measured after storing"},
    {"broker-pid", "PID", OPT_INT, OFF(broker_pid), 1, 1 << 30,
     "offline: sample this process's CPU, writes and memory per phase"},
    {"json", NULL, OPT_FLAG, OFF(json), 0, 0, "print one JSON line"},
    {"self-test", NULL, OPT_SELFTEST, 0, 0, 0, "check the tool's MQTT codec and histogram, exit"},
    {"help", NULL, OPT_HELP, 0, 0, 0, "this text"},
};
#define N_OPTS (sizeof opt_specs / sizeof opt_specs[0])

static void opts_usage(FILE *f)
{
    fprintf(f, "usage: mqbench [options]\n");
    for (size_t i = 0; i < N_OPTS; i++) {
        const struct opt_spec *s = &opt_specs[i];
        char left[48];
        snprintf(left, sizeof left, "--%s%s%s", s->name, s->arg ? " " : "", s->arg ? s->arg : "");
        fprintf(f, "  %-24s %s\n", left, s->help);
    }
}

static void opts_defaults(struct bench_opts *o)
{
    *o = (struct bench_opts){.host = "127.0.0.1",
                             .port = 1883,
                             .publishers = 1,
                             .subscribers = 1,
                             .size = 64,
                             .count = 10000,
                             .topic = "mqbench",
                             .id_prefix = "mqbench-",
                             .timeout_s = 60,
                             .threads = 1,
                             .inflight = 100,
                             .keepalive = 60,
                             .drain_ms = 1000,
                             .backlog = 50000,
                             .client = "raw"};
}

static int opts_number(const struct opt_spec *s, const char *text, long *out, char *err,
                       size_t errlen)
{
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno || end == text || *end || v < s->min || v > s->max) {
        snprintf(err, errlen, "--%s: '%s' is not a number in %ld..%ld", s->name, text, s->min,
                 s->max);
        return -1;
    }
    *out = v;
    return 0;
}

static int opts_apply(struct bench_opts *o, const struct opt_spec *s, const char *arg, char *err,
                      size_t errlen)
{
    char *field = (char *)o + s->off;
    long v = 0;

    if (s->kind == OPT_STR) {
        *(const char **)(void *)field = arg;
        return 0;
    }
    if (s->kind == OPT_FLAG) {
        *(bool *)(void *)field = true;
        return 0;
    }
    if (opts_number(s, arg, &v, err, errlen) < 0)
        return -1;
    switch (s->kind) {
    case OPT_INT:
        *(int *)(void *)field = (int)v;
        break;
    case OPT_LONG:
        *(long *)(void *)field = v;
        break;
    case OPT_FAN_IN:
        o->publishers = (int)v;
        o->subscribers = 1;
        break;
    case OPT_FAN_OUT:
        o->publishers = 1;
        o->subscribers = (int)v;
        break;
    default:
        break;
    }
    return 0;
}

/* Checks between options, and the engine named by --client. */
static int opts_check(struct bench_opts *o, char *err, size_t errlen)
{
    if (strcmp(o->client, "raw") == 0) {
        o->engine = ENGINE_RAW;
    } else if (strcmp(o->client, "mosquitto") == 0) {
        o->engine = ENGINE_MOSQ;
    } else {
        snprintf(err, errlen, "--client: '%s' is neither raw nor mosquitto", o->client);
        return -1;
    }
    if (strlen(o->id_prefix) > 48) {
        snprintf(err, errlen, "--id-prefix: at most 48 characters");
        return -1;
    }
    if (!o->idle && o->publishers == 0) {
        snprintf(err, errlen, "need at least one publisher (or --idle N)");
        return -1;
    }
    if (o->offline && (o->idle || o->qos != 1 || o->engine != ENGINE_RAW)) {
        snprintf(err, errlen, "--offline needs --qos 1 and --client raw, and excludes --idle");
        return -1;
    }
    /* each subscriber keeps a bitmap of publishers * count bits */
    if ((uint64_t)o->publishers * (uint64_t)o->count > UINT32_MAX) {
        snprintf(err, errlen, "publishers * count is above 2^32");
        return -1;
    }
    return 0;
}

/* 0 = run, 1 = done (--help printed; *selftest set for --self-test),
 * -1 = usage error (err filled). */
static int opts_parse(int argc, char **argv, struct bench_opts *o, bool *selftest, char *err,
                      size_t errlen)
{
    struct option longopts[N_OPTS + 1];
    memset(longopts, 0, sizeof longopts);
    for (size_t i = 0; i < N_OPTS; i++) {
        longopts[i].name = opt_specs[i].name;
        longopts[i].has_arg = opt_specs[i].arg ? required_argument : no_argument;
        longopts[i].val = 256 + (int)i;
    }
    opts_defaults(o);
    opterr = 0;
    int ch;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        if (ch < 256 || ch >= 256 + (int)N_OPTS) {
            snprintf(err, errlen, "unknown or incomplete option '%s'", argv[optind - 1]);
            return -1;
        }
        const struct opt_spec *s = &opt_specs[ch - 256];
        if (s->kind == OPT_HELP || s->kind == OPT_SELFTEST) {
            if (s->kind == OPT_HELP)
                opts_usage(stdout);
            *selftest = s->kind == OPT_SELFTEST;
            return 1;
        }
        if (opts_apply(o, s, optarg, err, errlen) < 0)
            return -1;
    }
    if (optind < argc) {
        snprintf(err, errlen, "unexpected argument '%s'", argv[optind]);
        return -1;
    }
    return opts_check(o, err, errlen);
}

int main(int argc, char **argv)
{
    struct bench_opts o;
    char err[256];
    bool selftest = false;

    if (inbound_wanted(argc, argv)) {
        signal(SIGPIPE, SIG_IGN);
        return inbound_main(argc, argv);
    }
    int rc = opts_parse(argc, argv, &o, &selftest, err, sizeof err);
    if (rc < 0) {
        fprintf(stderr, "mqbench: %s (try --help)\n", err);
        return 2;
    }
    if (rc > 0)
        return selftest ? bench_selftest() : 0;
    /* a broker closing a socket must show up as an error, not kill us */
    signal(SIGPIPE, SIG_IGN);
    mosquitto_lib_init();
    int status = bench_run(&o);
    mosquitto_lib_cleanup();
    return status;
}
