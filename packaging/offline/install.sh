#!/usr/bin/env bash
# Install angosd from this bundle, without any network: a virtual environment at /opt/angosd
# (or the directory given) with angosd and every dependency from wheels/.
#   sudo ./install.sh [PREFIX]
# Needs Debian 12's python3 with the venv module (package python3-venv). When it is missing,
# the .debs in debs/ are installed (those of python3-venv and what it depends on, as on a
# minimal Debian 12); they fit a Debian 12 whose python3.11 has the same version.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
prefix=${1:-/opt/angosd}
[ "$(id -u)" -eq 0 ] || { echo "install.sh: run it as root (sudo ./install.sh)" >&2; exit 1; }
if [ -e "$prefix" ]; then
    echo "install.sh: $prefix exists; install into a new directory (./install.sh $prefix-new) and swap" \
         "them as docs/operations.md, \"Upgrade\", shows" >&2
    exit 1
fi

if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    missing=()
    for deb in "$here"/debs/*.deb; do
        package=$(dpkg-deb -f "$deb" Package)
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$deb")
    done
    echo "install.sh: installing python3-venv from the bundle (${#missing[@]} packages)"
    # apt orders them (Pre-Depends); with no sources configured it takes nothing from a mirror.
    if [ ${#missing[@]} -eq 0 ] || ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            -o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts=/dev/null \
            --no-install-recommends "${missing[@]}" >/dev/null; then
        echo "install.sh: python3-venv could not be installed from debs/ (its versions must match this" \
             "system's python3); install python3-venv from your Debian 12 mirror or DVD, then run this again" >&2
        exit 1
    fi
fi

python3 -m venv "$prefix"
"$prefix/bin/pip" install -q --no-index --find-links "$here/wheels" 'angosd[s3]'
"$prefix/bin/twistd" --help >/dev/null    # Twisted's plugin cache, written now: a service cannot write there
echo "Installed $("$prefix/bin/angosd" --version) in $prefix."
cat <<EOT

Try it on its embedded default (storage in ./registry-data, 127.0.0.1:5000, anonymous access):
    $prefix/bin/twistd -n angosd
Check a configuration (example: $here/angosd.toml, every key explained):
    $prefix/bin/angosd check-config -c /etc/angosd/angosd.toml
Run it as a systemd service with the units in $here/systemd/: follow
$here/docs/operations.md, "Install as a systemd service" (steps 2 to 4).
EOT
