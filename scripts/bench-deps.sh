#!/bin/sh
# Install what `make bench` needs beyond scripts/deps.sh: nginx with its stream module,
# the reference relay derpd is compared with. Debian packages only; does nothing when all
# is present. No nginx service is started or left running: the bench runs its own nginx
# as a child with a private prefix and configuration.
set -eu
PKGS="nginx-light libnginx-mod-stream"
missing=""
for p in $PKGS; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
		missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
	echo "bench-deps: missing Debian packages:$missing (run as root, or install them);" \
		"the reference relay is skipped" >&2
	exit 1
fi
echo "bench-deps: installing$missing"
export DEBIAN_FRONTEND=noninteractive
# Keep the package's own service from starting (the Debian policy-rc.d idiom), unless
# the machine already has a policy of its own.
policy=/usr/sbin/policy-rc.d
ours=""
if [ ! -e "$policy" ]; then
	printf '#!/bin/sh\nexit 101\n' >"$policy"
	chmod 0755 "$policy"
	ours=1
	trap 'rm -f "$policy"' EXIT INT TERM
fi
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing
[ -n "$ours" ] && rm -f "$policy"
exit 0
