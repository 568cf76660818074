/* mqbridge: the daemon. Parses the command line, loads the instance
 * configuration, runs the broker on one libuv loop, and handles signals:
 * SIGTERM/SIGINT stop gracefully (exit 0), SIGUSR1 logs the counters,
 * SIGHUP is reserved for reloading rule files. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "../broker/broker.h"
#include "../common/log.h"
#include "config.h"

#ifndef MQB_VERSION
#define MQB_VERSION "0.0.0"
#endif

extern const char mqb_quickstart_yaml[];
extern const size_t mqb_quickstart_yaml_len;

struct options {
    const char *config_path;
    const char *listen;
    const char *log_level;
    bool check_only;
};

struct daemon {
    uv_loop_t loop;
    struct broker *broker;
    uv_signal_t sig_term, sig_int, sig_hup, sig_usr1;
    bool stopping;
};

static void usage(FILE *out)
{
    fprintf(out, "Usage: mqbridge [-c FILE] [options]\n"
                 "MQTT broker with a rules engine.\n\n"
                 "  -c, --config FILE     instance configuration (YAML); without it the\n"
                 "                        embedded quick-start configuration is used\n"
                 "      --check-config    validate the configuration and exit (0 valid, 1 not)\n"
                 "      --listen HOST:PORT  override the first listener (IPv6: [::1]:1883)\n"
                 "      --log-level LEVEL debug, info, notice, warn or error\n"
                 "  -V, --version         print the version and exit\n"
                 "  -h, --help            print this help and exit\n\n"
                 "Signals: SIGTERM/SIGINT stop gracefully, SIGUSR1 logs counters,\n"
                 "SIGHUP is reserved for reloading rule files.\n");
}

/* 0, 1 = exit 0 now (help/version), 2 = usage error */
static int parse_args(int argc, char **argv, struct options *o)
{
    enum { OPT_CHECK = 256, OPT_LISTEN, OPT_LOG };
    static const struct option longopts[] = {
        {"config", required_argument, NULL, 'c'},
        {"check-config", no_argument, NULL, OPT_CHECK},
        {"listen", required_argument, NULL, OPT_LISTEN},
        {"log-level", required_argument, NULL, OPT_LOG},
        {"version", no_argument, NULL, 'V'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "c:Vh", longopts, NULL)) != -1) {
        switch (ch) {
        case 'c':
            o->config_path = optarg;
            break;
        case OPT_CHECK:
            o->check_only = true;
            break;
        case OPT_LISTEN:
            o->listen = optarg;
            break;
        case OPT_LOG:
            o->log_level = optarg;
            break;
        case 'V':
            printf("mqbridge %s\n", MQB_VERSION);
            return 1;
        case 'h':
            usage(stdout);
            return 1;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "mqbridge: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    return 0;
}

/* "HOST:PORT" or "[V6]:PORT" into the first listener. */
static int apply_listen(struct broker_config *bc, const char *arg, char *err, size_t errlen)
{
    const char *colon = strrchr(arg, ':');
    if (!colon || colon == arg) {
        snprintf(err, errlen, "--listen %s: expected HOST:PORT", arg);
        return -1;
    }
    char *end;
    errno = 0;
    unsigned long port = strtoul(colon + 1, &end, 10);
    if (errno || *end || colon[1] == '\0' || port == 0 || port > 65535) {
        snprintf(err, errlen, "--listen %s: port must be 1..65535", arg);
        return -1;
    }
    const char *host = arg;
    size_t hlen = (size_t)(colon - arg);
    if (arg[0] == '[' && colon[-1] == ']') {
        host++;
        hlen -= 2;
    }
    char *h = strndup(host, hlen);
    if (!h) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    free(bc->listeners[0].host);
    bc->listeners[0].host = h;
    bc->listeners[0].port = (uint16_t)port;
    if (bc->listener_count == 0)
        bc->listener_count = 1;
    return 0;
}

static int load_config(const struct options *o, struct instance_config *cfg, char *err,
                       size_t errlen)
{
    int rc = o->config_path ? config_load_file(o->config_path, cfg, err, errlen)
                            : config_load_string(mqb_quickstart_yaml, mqb_quickstart_yaml_len,
                                                 "<embedded quickstart.yaml>", cfg, err, errlen);
    if (rc < 0)
        return -1;
    if (o->listen && apply_listen(&cfg->broker, o->listen, err, errlen) < 0)
        return -1;
    if (o->log_level && log_level_parse(o->log_level, &cfg->log_level) < 0) {
        snprintf(err, errlen, "--log-level %s: expected debug, info, notice, warn or error",
                 o->log_level);
        return -1;
    }
    return 0;
}

static void on_stopped(void *arg)
{
    struct daemon *d = arg;
    uv_close((uv_handle_t *)&d->sig_term, NULL);
    uv_close((uv_handle_t *)&d->sig_int, NULL);
    uv_close((uv_handle_t *)&d->sig_hup, NULL);
    uv_close((uv_handle_t *)&d->sig_usr1, NULL);
}

static void on_signal(uv_signal_t *h, int signum)
{
    struct daemon *d = h->data;
    switch (signum) {
    case SIGTERM:
    case SIGINT:
        if (d->stopping)
            return;
        d->stopping = true;
        log_notice("received %s, shutting down", signum == SIGTERM ? "SIGTERM" : "SIGINT");
        broker_stop(d->broker, on_stopped, d);
        break;
    case SIGUSR1:
        broker_log_stats(d->broker);
        break;
    case SIGHUP:
        log_notice("SIGHUP: nothing to reload yet (reserved for rule files)");
        break;
    }
}

static void signal_watch(struct daemon *d, uv_signal_t *h, int signum)
{
    uv_signal_init(&d->loop, h);
    h->data = d;
    uv_signal_start(h, on_signal, signum);
}

static int run(const struct instance_config *cfg)
{
    struct daemon d = {0};
    char err[512];
    int rc = 1;
    uv_loop_init(&d.loop);
    d.broker = broker_new(&d.loop, &cfg->broker, NULL, err, sizeof err);
    if (!d.broker || broker_start(d.broker, err, sizeof err) < 0) {
        log_error("%s", err);
        if (d.broker) {
            broker_stop(d.broker, NULL, NULL);
            uv_run(&d.loop, UV_RUN_DEFAULT);
        }
        goto done;
    }
    signal_watch(&d, &d.sig_term, SIGTERM);
    signal_watch(&d, &d.sig_int, SIGINT);
    signal_watch(&d, &d.sig_hup, SIGHUP);
    signal_watch(&d, &d.sig_usr1, SIGUSR1);
    log_notice("mqbridge %s started (instance %s, config %s)", MQB_VERSION, cfg->instance_id,
               cfg->source);
    uv_run(&d.loop, UV_RUN_DEFAULT);
    log_notice("stopped");
    rc = 0;
done:
    broker_free(d.broker);
    uv_loop_close(&d.loop);
    return rc;
}

int main(int argc, char **argv)
{
    struct options o = {0};
    int rc = parse_args(argc, argv, &o);
    if (rc)
        return rc == 1 ? 0 : 2;
    signal(SIGPIPE, SIG_IGN);
    struct instance_config cfg = {0};
    char err[1024];
    if (load_config(&o, &cfg, err, sizeof err) < 0) {
        fprintf(stderr, "%s\n", err);
        config_free(&cfg);
        return 1;
    }
    if (o.check_only) {
        printf("%s: configuration is valid\n", cfg.source);
        config_free(&cfg);
        return 0;
    }
    log_set_level(cfg.log_level);
    rc = run(&cfg);
    config_free(&cfg);
    return rc;
}
