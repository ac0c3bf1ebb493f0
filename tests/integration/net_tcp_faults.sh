#!/usr/bin/env bash
# Both directions again through fault injection (2% drop, 1% reorder,
# 0.5% duplicate on RX and TX): every byte intact, nothing hangs.
d=$(dirname "$0")
MX_FAULTS=1 MX_NET=14 bash "$d/net_tcp_linux_clients.sh" || exit 1
MX_FAULTS=1 MX_NET=15 bash "$d/net_tcp_active_open.sh" || exit 1
