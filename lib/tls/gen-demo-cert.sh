#!/usr/bin/env bash
# gen-demo-cert.sh - make a self-signed demo certificate for the relay's TLS
# listeners (STARTTLS on 25/587, implicit TLS on 465).  For demos and tests
# only: production uses the operator's own certificate and key.
#
#   lib/tls/gen-demo-cert.sh [OUTDIR [HOSTNAME]]     (OUTDIR relative to the repo root)
#
# Writes OUTDIR/relay.crt and OUTDIR/relay.key (ECDSA P-256, 90 days,
# SAN = HOSTNAME and 10.77.0.2), defaults config/tls and relay.mxrelay.test,
# the paths and name config/mxrelay.conf uses.  An existing pair is kept
# unless it expires within a day (or FORCE=1).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-config/tls}
host=${2:-relay.mxrelay.test}
crt=$out/relay.crt
key=$out/relay.key

mkdir -p "$out"
if [ "${FORCE:-0}" != 1 ] && [ -s "$crt" ] && [ -s "$key" ] &&
	openssl x509 -in "$crt" -noout -checkend 86400 >/dev/null 2>&1; then
	echo "$crt: still valid, kept (FORCE=1 to replace)"
	exit 0
fi
umask 077
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 90 \
	-subj "/CN=$host" -addext "subjectAltName=DNS:$host,IP:10.77.0.2" \
	-addext "keyUsage=critical,digitalSignature" -addext "extendedKeyUsage=serverAuth" \
	-keyout "$tmp/relay.key" -out "$tmp/relay.crt" 2>/dev/null
mv "$tmp/relay.key" "$key"
chmod 644 "$tmp/relay.crt"
mv "$tmp/relay.crt" "$crt"
echo "wrote $crt and $key for $host"
