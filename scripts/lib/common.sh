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
    local install=(env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}")
    # Package lists may be stale or missing on a fresh machine: refresh them once and retry.
    as_root "${install[@]}" >/dev/null || { as_root apt-get update -qq && as_root "${install[@]}" >/dev/null; }
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
