#!/usr/bin/env bash
# Installs the Debian packages encimap's demo and tests need, only where missing.
# Daemons are never started by the packages: policy-rc.d refuses (exit 101) while we install.
set -euo pipefail

runtime=(openssl gnupg)  # gnupg: `encimap key generate` and the demo's OpenPGP key
testing=(postfix swaks libnet-ssleay-perl libio-socket-ssl-perl isync fetchmail getmail6 offlineimap3 mutt dovecot-imapd fail2ban patroni etcd-server etcd-client pgbouncer sq rnp)
want=("${runtime[@]}")
[ "${1:-}" = "--runtime" ] || want+=("${testing[@]}")

missing=()
for pkg in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    echo "missing Debian packages (install them, or run as root): ${missing[*]}" >&2
    exit 0
fi

policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod 755 "$policy"
    created_policy=1
fi
trap '[ $created_policy -eq 1 ] && rm -f "$policy"' EXIT

export DEBIAN_FRONTEND=noninteractive
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
apt-get update -qq >/dev/null || true
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "installed: ${missing[*]}"
