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
#include "../common/fs.h"
#include "../common/log.h"
#include "config.h"
#include "export.h"
#include "import.h"

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
    const struct options *opts;
    struct instance_config *cfg;
    struct broker *broker;
    struct exporter *exporter;
    struct importer *importer;
    /* Rule mappings point into the configs and files they were read from;
     * every config loaded by a reload stays until exit, as do rule files. */
    struct instance_config **reloaded;
    unsigned reloaded_count;
    struct rules_files files;
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

static struct export_resources resources_of(const struct instance_config *cfg)
{
    const struct broker_config *bc = &cfg->broker;
    return (struct export_resources){
        .check_declared = bc->naming_mode == NAMING_MANAGED,
        .parent_topics = bc->naming.parent_topics,
        .parent_topic_count = bc->naming.parent_topic_count,
        .groups = bc->naming.groups,
        .group_count = bc->naming.group_count,
        .max_rules = bc->limits.max_rules,
    };
}

/* Gather the rules of cfg (inline + rule files) and validate them: only
 * validate (check), or make them current. */
static int apply_rules(struct exporter *x, const struct instance_config *cfg,
                       struct rules_files *files, bool check, char *err, size_t errlen)
{
    struct kvlist items = {0};
    struct export_resources res = resources_of(cfg);
    int rc = config_gather_rules(cfg, &items, files, err, errlen);
    if (rc == 0)
        rc = check ? exporter_check_rules(x, &items, &res, err, errlen)
                   : exporter_set_rules(x, &items, &res, err, errlen);
    kvlist_clear(&items);
    return rc;
}

/* SIGHUP: read the instance file again and swap in its rules (inline and
 * rule files) when they are all valid. Other sections need a restart. */
static void reload_rules(struct daemon *d)
{
    char err[1024];
    if (!d->opts->config_path) {
        log_notice("SIGHUP: the embedded configuration has no files to reload");
        return;
    }
    struct instance_config *cfg = calloc(1, sizeof *cfg);
    struct instance_config **list =
        cfg ? realloc(d->reloaded, (d->reloaded_count + 1) * sizeof *list) : NULL;
    if (!list) {
        free(cfg);
        log_error("SIGHUP: out of memory; rules unchanged");
        return;
    }
    d->reloaded = list;
    if (config_load_file(d->opts->config_path, cfg, err, sizeof err) < 0 ||
        apply_rules(d->exporter, cfg, &d->files, false, err, sizeof err) < 0) {
        log_error("SIGHUP: rules not reloaded, the running rules stay: %s", err);
        config_free(cfg);
        free(cfg);
        return;
    }
    d->reloaded[d->reloaded_count++] = cfg;
    importer_rules_changed(d->importer);
    log_notice("SIGHUP: rules reloaded from %s", cfg->source);
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
        exporter_log_stats(d->exporter);
        importer_log_stats(d->importer);
        break;
    case SIGHUP:
        reload_rules(d);
        break;
    }
}

static void signal_watch(struct daemon *d, uv_signal_t *h, int signum)
{
    uv_signal_init(&d->loop, h);
    h->data = d;
    uv_signal_start(h, on_signal, signum);
}

/* The export spool's directory: <storage>/spool (one log per connector in
 * it, see engine/spool.c). An export-spool.db left by earlier builds is not
 * read, and not deleted. */
static char *spool_path_of(const struct instance_config *cfg)
{
    const char *dir = cfg->broker.storage_dir;
    if (!dir)
        return NULL;
    size_t n = strlen(dir) + sizeof "/spool";
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s/spool", dir);
    return p;
}

/* The exporter: connectors from the config, rules validated. check: an
 * in-memory spool and validation only. */
static int exporter_setup(struct daemon *d, bool check, char *err, size_t errlen)
{
    const struct instance_config *cfg = d->cfg;
    char *spool = check ? NULL : spool_path_of(cfg);
    if (!check && cfg->broker.storage_dir && !spool) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (!check && spool && fs_mkdirs(cfg->broker.storage_dir, err, errlen) < 0) {
        free(spool);
        return -1;
    }
    int rc = exporter_new(&d->loop, &cfg->export, cfg->connectors, cfg->connector_count, spool,
                          cfg->broker.sync, &d->exporter, err, errlen);
    free(spool);
    if (rc < 0)
        return -1;
    return apply_rules(d->exporter, cfg, &d->files, check, err, errlen);
}

static void daemon_cleanup(struct daemon *d)
{
    importer_free(d->importer);
    d->importer = NULL;
    exporter_free(d->exporter);
    d->exporter = NULL;
    broker_free(d->broker);
    d->broker = NULL;
    uv_run(&d->loop, UV_RUN_DEFAULT); /* let closed handles finish */
    uv_loop_close(&d->loop);
    for (unsigned i = 0; i < d->reloaded_count; i++) {
        config_free(d->reloaded[i]);
        free(d->reloaded[i]);
    }
    free(d->reloaded);
    rules_files_clear(&d->files);
}

/* Once per loop iteration, after the broker's store committed. */
static void on_flush(void *ctx)
{
    struct daemon *d = ctx;
    exporter_on_flush(d->exporter);
    importer_on_flush(d->importer);
}

static void on_message(void *ctx, const struct message *m, const char *client_id)
{
    exporter_on_message(((struct daemon *)ctx)->exporter, m, client_id);
}

static void on_client_event(void *ctx, const struct client_event *ev)
{
    exporter_on_client_event(((struct daemon *)ctx)->exporter, ev);
}

static int run(struct daemon *d)
{
    char err[1024];
    int rc = 1;
    const struct broker_hooks hooks = {
        .ctx = d,
        .on_message = on_message,
        .on_client_event = on_client_event,
        .on_flush = on_flush,
    };
    if (exporter_setup(d, false, err, sizeof err) < 0 ||
        exporter_start(d->exporter, err, sizeof err) < 0) {
        log_error("%s", err);
        goto done;
    }
    d->broker = broker_new(&d->loop, &d->cfg->broker, &hooks, err, sizeof err);
    if (!d->broker || broker_start(d->broker, err, sizeof err) < 0 ||
        importer_new(&d->loop, d->broker, d->exporter, &d->cfg->export, &d->importer, err,
                     sizeof err) < 0) {
        log_error("%s", err);
        if (d->broker) {
            broker_stop(d->broker, NULL, NULL);
            uv_run(&d->loop, UV_RUN_DEFAULT);
        }
        goto done;
    }
    signal_watch(d, &d->sig_term, SIGTERM);
    signal_watch(d, &d->sig_int, SIGINT);
    signal_watch(d, &d->sig_hup, SIGHUP);
    signal_watch(d, &d->sig_usr1, SIGUSR1);
    log_notice("mqbridge %s started (instance %s, config %s)", MQB_VERSION, d->cfg->instance_id,
               d->cfg->source);
    uv_run(&d->loop, UV_RUN_DEFAULT);
    /* The broker is closed: stop reading sources (what was not acknowledged
     * is read again at the next start), give the sinks their drain time,
     * keep the rest in the spool. */
    importer_stop(d->importer);
    exporter_stop(d->exporter);
    log_notice("stopped");
    rc = 0;
done:
    daemon_cleanup(d);
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
    struct daemon d = {.opts = &o, .cfg = &cfg};
    uv_loop_init(&d.loop);
    if (o.check_only) {
        /* Connectors and rules too: settings, rule limits, templates. */
        rc = exporter_setup(&d, true, err, sizeof err);
        if (rc < 0)
            fprintf(stderr, "%s\n", err);
        else
            printf("%s: configuration is valid\n", cfg.source);
        daemon_cleanup(&d);
        config_free(&cfg);
        return rc < 0 ? 1 : 0;
    }
    log_set_level(cfg.log_level);
    rc = run(&d);
    config_free(&cfg);
    return rc;
}
