# Helpers for provisioning hooks; sourced, not run.
set -eu
VM=${1:?usage: hook VM-NAME VIEW-PATH}
VIEW=${2:?usage: hook VM-NAME VIEW-PATH}

# Resolves a path inside the VM's view, refusing anything that would leave it (a symlink in the
# template pointing at /etc on the host, for instance).
inview() {
    local resolved
    resolved=$(cd "$VIEW" && realpath -m --relative-base="$VIEW" -- "$VIEW/$1")
    case "$resolved" in
        /*) echo "hook: $1 leads outside the VM's view" >&2; exit 1 ;;
    esac
    printf '%s/%s\n' "$VIEW" "$resolved"
}
