/* mqbench's inbound modes (--count-only, --produce-kafka): inbound.c. */
#ifndef MQB_BENCH_INBOUND_H
#define MQB_BENCH_INBOUND_H

#include <stdbool.h>

/* True when argv selects an inbound mode. */
bool inbound_wanted(int argc, char **argv);

/* Runs the inbound mode argv selects; returns the exit status. */
int inbound_main(int argc, char **argv);

#endif
