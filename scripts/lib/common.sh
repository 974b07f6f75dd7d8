# Shared by the scripts in scripts/: run as root (or through sudo), install Debian packages
# without starting their services, and create the checkout's virtual environment (.venv).
# Source it; it defines functions only.

# Run a command as root: directly when we are root, else through sudo when it exists.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "$(basename "$0"): this step needs root: run it as root or install sudo" >&2
        return 1
    fi
}

# Whether every package named is installed.
packages_installed() {
    local package
    for package in "$@"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || return 1
    done
}

# Install Debian packages (those not yet installed), quietly and without recommends.
apt_install() {
    local missing=() package
    for package in "$@"; do
        packages_installed "$package" || missing+=("$package")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local before after
    before=$(enabled_units)
    # In a subshell, so that its EXIT trap puts policy-rc.d back however the install ends.
    (
        trap restore_policy_rc_d EXIT
        trap 'exit 130' INT TERM
        forbid_service_starts
        local install=(env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}")
        # Package lists may be stale or missing on a fresh machine: refresh them once and retry.
        as_root "${install[@]}" >/dev/null || { as_root apt-get update -qq && as_root "${install[@]}" >/dev/null; }
    )
    after=$(enabled_units)
    disable_units $(comm -13 <(echo "$before") <(echo "$after"))
}

# The units enabled in /etc/systemd/system (symlinks in *.wants/ and *.requires/), sorted.
# Read from the file system, so it works without a running systemd (in a chroot, a container).
enabled_units() {
    find /etc/systemd/system -mindepth 2 -maxdepth 2 \( -path '*.wants/*' -o -path '*.requires/*' \) \
        -printf '%f\n' 2>/dev/null | sort -u
}

# Disable the units named (and stop them when systemd runs): packages enable their services
# on install, and none of the tests' services may run or start at boot on their own.
disable_units() {
    [ $# -eq 0 ] && return 0
    local now=()
    [ -d /run/systemd/system ] && now=(--now)
    echo "$(basename "$0"): disabling what the packages enabled: $*" >&2
    as_root systemctl disable "${now[@]}" --quiet "$@"
}

# While packages install, /usr/sbin/policy-rc.d exits 101: "action forbidden", so their
# maintainer scripts start no service (invoke-rc.d and deb-systemd-invoke ask it).
# An existing policy-rc.d is kept aside and put back by restore_policy_rc_d.
POLICY_RC_D=/usr/sbin/policy-rc.d
forbid_service_starts() {
    if as_root test -e "$POLICY_RC_D"; then
        as_root mv "$POLICY_RC_D" "$POLICY_RC_D.angosd-saved"
    fi
    printf '#!/bin/sh\n# Written by angosd scripts/lib/common.sh during apt-get install.\nexit 101\n' |
        as_root tee "$POLICY_RC_D" >/dev/null
    as_root chmod 0755 "$POLICY_RC_D"
}

restore_policy_rc_d() {
    as_root rm -f "$POLICY_RC_D"
    if as_root test -e "$POLICY_RC_D.angosd-saved"; then
        as_root mv "$POLICY_RC_D.angosd-saved" "$POLICY_RC_D"
    fi
}

# Create .venv in the current directory with python3 (Debian's python3-venv is installed
# first when python3 lacks the venv module or ensurepip), unless a working one is there.
ensure_venv() {
    if [ -x .venv/bin/python ] && .venv/bin/python -m pip --version >/dev/null 2>&1; then
        return 0
    fi
    if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
        if command -v apt-get >/dev/null 2>&1; then
            apt_install python3-venv
        else
            echo "$(basename "$0"): python3 with the venv module is needed" >&2
            return 1
        fi
    fi
    python3 -m venv --clear .venv
}
