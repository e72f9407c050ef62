# shellcheck shell=bash
# Helpers for the provisioners: each step changes the machine only when it differs from what we want,
# and says so. A second `vagrant provision` must print "0 changes" for every script.

CHANGES=0

say() { printf 'labctl-provision: %s\n' "$*"; }

changed() {
    CHANGES=$((CHANGES + 1))
    say "changed: $*"
}

finish() { say "$(basename "$0"): ${CHANGES} changes"; }

need_env() {
    local name
    for name in "$@"; do
        if [ -z "${!name:-}" ]; then
            say "error: ${name} is not set (run me through the Vagrantfile)" >&2
            exit 2
        fi
    done
}

# Install the packages that are missing, and only those (a VM without internet has them in its box).
ensure_packages() {
    local pkg missing=()
    for pkg in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$pkg")
        fi
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        apt-get install -y -q --no-install-recommends "${missing[@]}"
        changed "installed ${missing[*]}"
    fi
}

# install_file SOURCE DEST MODE: copy when the content or the mode differs.
install_file() {
    local src=$1 dest=$2 mode=$3
    if ! cmp -s "$src" "$dest" || [ "$(stat -c %a "$dest")" != "$mode" ]; then
        install -D -m "$mode" "$src" "$dest"
        changed "$dest"
        return 0
    fi
    return 1
}

# write_file DEST MODE < CONTENT: like install_file, the content from standard input.
write_file() {
    local dest=$1 mode=$2 tmp rc=0
    tmp=$(mktemp)
    cat > "$tmp"
    install_file "$tmp" "$dest" "$mode" || rc=$?
    rm -f "$tmp"
    return "$rc"
}
