# Sourced by the other scripts: `apt_install WHY PACKAGE...` installs Debian packages when run as
# root where apt-get exists, each without its recommends, with services kept from starting (a
# temporary /usr/sbin/policy-rc.d that exits 101, unless one is there already: the postinsts of knot,
# unbound, etcd-server and docker.io would start them); returns apt-get's status. Elsewhere it only
# says what is missing and why.
apt_install() {
    local why=$1
    shift
    [ $# -gt 0 ] || return 0
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "missing $*: $why" >&2
        return 0
    fi
    echo "installing $* from Debian (--no-install-recommends, services kept from starting)" >&2
    local policy=/usr/sbin/policy-rc.d created= status=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\n# written by geotm scripts/apt.sh during apt-get install; removed after\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        created=1
    fi
    { apt-get -o DPkg::Lock::Timeout=600 update -qq \
        && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
            --no-install-recommends "$@" >/dev/null; } || status=$?
    [ -z "$created" ] || rm -f "$policy"
    return "$status"
}
