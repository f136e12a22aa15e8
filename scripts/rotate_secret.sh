#!/usr/bin/env bash
# Rotate AUTH_CODE_HASH_KEY or AUTH_SIGNING_KEY_SECRET without a moment where two
# instances disagree (docs/deploy.md "Rotating the two secrets").
#
#   scripts/rotate_secret.sh code-hash-key|signing-key-secret start    # phases 1 and 2
#   scripts/rotate_secret.sh code-hash-key|signing-key-secret finish   # phase 3, later
#
# Needs: az (logged in), python3 with this repository's requirements, curl, openssl,
# and RG, APP, KV in the environment (docs/deploy.md shows how to read them from the
# deployment outputs). ADMIN_KEY (the Function App's master key) is read with az when unset.
#
# Why app settings and versioned references: App Service refetches an unversioned Key Vault
# reference only on a configuration change, every 24 hours, or through the refresh endpoint;
# a restart is not documented to refetch. Changing the app setting itself to a reference that
# names the secret *version* is a configuration change (every instance restarts with it) and
# says exactly which value is meant. Each phase then waits until the readiness report
# (GET /api/health/detail) shows the new fingerprint on 20 answers in a row (requests land
# on different instances), so the next phase starts only when every instance has it.
#
#   1. the new value is *accepted* everywhere (codes and signing keys made with it can be read);
#   2. the new value becomes current, the old one accepted (things made before still read);
#   3. (finish, after codes expired / old signing keys retired: the doctor says when) the old
#      value is dropped and the setting goes back to the unversioned reference.
set -euo pipefail

name="${1:?code-hash-key or signing-key-secret}"
phase="${2:?start or finish}"
case "$name" in
  code-hash-key) setting=AUTH_CODE_HASH_KEY ;;
  signing-key-secret) setting=AUTH_SIGNING_KEY_SECRET ;;
  *) echo "unknown secret: $name" >&2; exit 2 ;;
esac
secret="auth-$name"
: "${RG:?set RG}" "${APP:?set APP}" "${KV:?set KV}"
vault="https://$KV.vault.azure.net/secrets"
host="$(az functionapp show -g "$RG" -n "$APP" --query defaultHostName -o tsv)"
ADMIN_KEY="${ADMIN_KEY:-$(az functionapp keys list -g "$RG" -n "$APP" --query masterKey -o tsv)}"
here="$(cd "$(dirname "$0")/.." && pwd)"

fingerprint() {  # the public fingerprint of a secret value (shared/storage/maintenance.py), read from stdin
  (cd "$here" && python3 -c 'import sys
from shared.settings import _secret
from shared.maintenance import fingerprint
print(fingerprint(_secret(sys.stdin.read().strip(), "value")))')
}

wait_for() {  # wait until 20 answers in a row show $1 in the "secrets" check
  local want="$1" streak=0 tries=0
  echo "waiting for every instance to show fingerprint $want ..."
  while [ "$streak" -lt 20 ]; do
    tries=$((tries + 1))
    if [ "$tries" -gt 600 ]; then echo "gave up after 600 answers" >&2; exit 1; fi
    detail="$(curl -fsS -H "x-functions-key: $ADMIN_KEY" "https://$host/api/health/detail" || true)"
    if printf '%s' "$detail" | grep -q "$want"; then streak=$((streak + 1)); else streak=0; sleep 3; fi
  done
  echo "every instance has it"
}

version_of() { az keyvault secret show --vault-name "$KV" --name "$1" --query id -o tsv | awk -F/ '{print $NF}'; }

if [ "$phase" = start ]; then
  old_version="$(version_of "$secret")"
  new="$(openssl rand -base64 48)"
  fp="$(printf '%s' "$new" | fingerprint)"
  next_version="$(az keyvault secret set --vault-name "$KV" --name "$secret-next" --value "$new" --query id -o tsv | awk -F/ '{print $NF}')"
  echo "phase 1: $setting accepts the new value (fingerprint $fp)"
  az functionapp config appsettings set -g "$RG" -n "$APP" -o none --settings \
    "${setting}_ACCEPTED=@Microsoft.KeyVault(SecretUri=$vault/$secret-next/$next_version)"
  wait_for "also accepted.*$fp"
  echo "phase 2: the new value is current, the old one accepted"
  new_version="$(az keyvault secret set --vault-name "$KV" --name "$secret" --value "$new" --query id -o tsv | awk -F/ '{print $NF}')"
  az functionapp config appsettings set -g "$RG" -n "$APP" -o none --settings \
    "$setting=@Microsoft.KeyVault(SecretUri=$vault/$secret/$new_version)" \
    "${setting}_ACCEPTED=@Microsoft.KeyVault(SecretUri=$vault/$secret/$old_version)"
  wait_for "$(echo "$setting" | sed 's/AUTH_CODE_HASH_KEY/code hash key/; s/AUTH_SIGNING_KEY_SECRET/signing key secret/') $fp"
  if command -v azd >/dev/null 2>&1; then azd env set "$setting" "$new" >/dev/null && echo "azd env updated"; fi
  echo "done. Store the new value where you keep the deployment's copy (the next deployment writes it back)."
  echo "Later: scripts/rotate_secret.sh $name finish  (codes and sign-in tokens: after 15 minutes; signing keys: when"
  echo "python -m admin doctor / GET /api/health/detail no longer lists keys under an accepted secret)."
elif [ "$phase" = finish ]; then
  echo "phase 3: drop the old value"
  az functionapp config appsettings delete -g "$RG" -n "$APP" -o none --setting-names "${setting}_ACCEPTED"
  az functionapp config appsettings set -g "$RG" -n "$APP" -o none --settings \
    "$setting=@Microsoft.KeyVault(SecretUri=$vault/$secret)"
  az keyvault secret delete --vault-name "$KV" --name "$secret-next" -o none || true
  echo "done"
else
  echo "phase must be start or finish" >&2; exit 2
fi
