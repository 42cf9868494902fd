#!/usr/bin/env bash
# Provision certificates for a first deployment: the owner's CA and server certificate, and one
# client certificate per consumer organisation. Usage:
#   deploy/bootstrap-pki.sh PKI_DIR SERVER_HOSTNAME CONSUMER_NAME [CONSUMER_NAME...]
# For a first, single-site trial only: this makes the consumers' keys here. Between two
# organisations use `fair4free-consumer pki request` + `fair4free-owner pki sign` instead, so each
# consumer's key never leaves it (docs/security.md). Also writes a starting policy.toml.
set -euo pipefail
if [ $# -lt 3 ]; then
  sed -n '2,7p' "$0" >&2
  exit 2
fi
pki_dir=$1 hostname=$2
shift 2
fair4free-owner pki init --dir "$pki_dir" --hostname "$hostname" --hostname localhost
clients=()
for name in "$@"; do
  fair4free-owner pki issue-client --dir "$pki_dir" --name "$name"
  clients+=(--client "$name")
done
fair4free-owner policy init --out "$pki_dir/../policy.toml" "${clients[@]}"
