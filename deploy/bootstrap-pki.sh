#!/usr/bin/env bash
# Provision certificates for a first deployment: the owner's CA and server certificate, and one
# client certificate per consumer organisation. Usage:
#   deploy/bootstrap-pki.sh PKI_DIR SERVER_HOSTNAME CONSUMER_NAME [CONSUMER_NAME...]
# Hand each consumer ca.crt plus its clients/NAME.crt and clients/NAME.key over a secure channel.
# (Issuing from a consumer's own CSR, so its key never leaves it, comes with the trust-boundary work.)
set -euo pipefail
if [ $# -lt 3 ]; then
  sed -n '2,7p' "$0" >&2
  exit 2
fi
pki_dir=$1 hostname=$2
shift 2
fair4free-owner pki init --dir "$pki_dir" --hostname "$hostname" --hostname localhost
for name in "$@"; do
  fair4free-owner pki issue-client --dir "$pki_dir" --name "$name"
done
