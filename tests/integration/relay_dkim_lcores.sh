#!/usr/bin/env bash
# relay_dkim.sh with the signatures made on a signer lcore ([dkim]
# sign_lcores = 1): lcore 0 controls, lcore 1 is the worker (CPU 1),
# lcore 2 signs (CPU 0).  The same messages, the same verifiers.
export MX_DKIM_SIGN_LCORES=1 MX_DKIM_NET=79 MX_LCORES="--lcores=0@0,1@1,2@0"
exec bash "$(dirname "$0")/relay_dkim.sh"
