/* netjson.h - lib/net counters as a JSON member for mxgen and mxsink results. */
#ifndef MX_BENCH_NETJSON_H
#define MX_BENCH_NETJSON_H

#include <stdio.h>

#include "net.h"

/** Write `  "net": {...},` summed over the stacks (NULL entries skipped). */
void bench_json_net(FILE *f, struct net_stack *const *stacks, unsigned n);

#endif
