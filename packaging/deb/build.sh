#!/usr/bin/env bash
# Builds tabby_<version>_amd64.deb from binaries already built (`make deb` builds them and
# calls this). Environment:
#   BIN_DIR    tabbyd, tabbyctl and tabby-cni (static, linux/amd64)
#   VERSION    the Debian version (packaging/deb/version.sh)
#   OUT_DIR    where the .deb goes
#   DEB_CACHE  cache of built and lintian-checked packages, keyed by their content;
#              empty: no cache
#   LINTIAN    0 skips lintian (the package is then not cached)
# Prints the path of the .deb. The package is checked with lintian, and lintian must find
# nothing but what lintian-overrides explains.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
: "${BIN_DIR:?BIN_DIR must name the directory of the built binaries}"
: "${VERSION:?VERSION must be the Debian version}"
: "${OUT_DIR:?OUT_DIR must name the output directory}"
DEB_CACHE=${DEB_CACHE-/var/cache/tabby-deb}
LINTIAN=${LINTIAN:-1}
if ! [[ $VERSION =~ ^[0-9][A-Za-z0-9.+~]*$ ]]; then
	echo "build.sh: VERSION $VERSION is not a Debian version (a digit first, then [A-Za-z0-9.+~])" >&2
	exit 2
fi
for b in tabbyd tabbyctl tabby-cni; do
	[[ -x $BIN_DIR/$b ]] || { echo "build.sh: $BIN_DIR/$b is missing: build the binaries first" >&2; exit 2; }
done

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root=$stage/root
# Every timestamp in the package is the commit's, so the same tree builds the same bytes.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct 2>/dev/null || date +%s)}

install -d -m 0755 "$root/usr/bin" "$root/usr/lib/cni" "$root/lib/systemd/system" \
	"$root/usr/lib/tmpfiles.d" "$root/etc/tabby" "$root/etc/iproute2/rt_protos.d" \
	"$root/usr/share/doc/tabby/examples" "$root/usr/share/lintian/overrides" "$root/DEBIAN"
install -m 0755 "$BIN_DIR/tabbyd" "$BIN_DIR/tabbyctl" "$root/usr/bin/"
install -m 0755 "$BIN_DIR/tabby-cni" "$root/usr/lib/cni/"
install -m 0644 "$repo/systemd/tabbyd.service" "$root/lib/systemd/system/"
install -m 0644 "$repo/systemd/tabby.tmpfiles.conf" "$root/usr/lib/tmpfiles.d/tabby.conf"
# The example configuration, every key with its default: a conffile, so the operator's
# (or the Ansible role's) version is kept on upgrade.
# Both may hold the etcd password (etcd.password, TABBY_ETCD_PASSWORD): root only.
install -m 0600 "$repo/configs/tabbyd.yaml" "$root/etc/tabby/tabbyd.yaml"
install -m 0600 "$repo/systemd/tabbyd.env" "$root/etc/tabby/tabbyd.env"
# The route protocol name, as tabbyd itself writes it for the default protocol number.
printf '95\ttabby\n' >"$root/etc/iproute2/rt_protos.d/tabby.conf"
chmod 0644 "$root/etc/iproute2/rt_protos.d/tabby.conf"
install -m 0644 "$repo/configs/cni/10-tabby.conflist" "$repo"/configs/examples/*.yaml \
	"$root/usr/share/doc/tabby/examples/"
install -m 0644 "$here/copyright" "$root/usr/share/doc/tabby/copyright"
install -m 0644 "$here/lintian-overrides" "$root/usr/share/lintian/overrides/tabby"
{
	echo "tabby ($VERSION) unstable; urgency=medium"
	echo
	echo "  * Built from commit $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)."
	echo
	echo " -- tabby maintainers <tabby@tabby-net.github.io>  $(date -u -R -d "@$SOURCE_DATE_EPOCH")"
} | gzip -9n >"$root/usr/share/doc/tabby/changelog.gz"
chmod 0644 "$root/usr/share/doc/tabby/changelog.gz"

(cd "$root" && find etc -type f | sort | sed 's|^|/|') >"$root/DEBIAN/conffiles"
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) >"$root/DEBIAN/md5sums"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$VERSION/" -e "s/@SIZE@/$size/" "$here/control.in" >"$root/DEBIAN/control"
install -m 0755 "$here/postinst" "$here/prerm" "$here/postrm" "$root/DEBIAN/"
chmod 0644 "$root/DEBIAN/control" "$root/DEBIAN/conffiles" "$root/DEBIAN/md5sums"
find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

name=tabby_${VERSION}_amd64.deb
mkdir -p "$OUT_DIR"
key=""
if [[ -n $DEB_CACHE && $LINTIAN != 0 ]]; then
	# The package's whole content, metadata and maintainer scripts included.
	key=$( (cd "$root" && find . -printf '%P %m %y\n' | sort && find . -type f -printf '%P\0' | sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-32)
	if [[ -f $DEB_CACHE/$key/$name ]]; then
		cp "$DEB_CACHE/$key/$name" "$OUT_DIR/$name"
		echo "$OUT_DIR/$name"
		exit 0
	fi
fi
dpkg-deb --root-owner-group -Zgzip --build "$root" "$stage/$name" >/dev/null
if [[ $LINTIAN != 0 ]]; then
	command -v lintian >/dev/null || { echo "build.sh: lintian is not installed" >&2; exit 1; }
	# Any error or warning lintian-overrides does not explain fails the build.
	lintian --fail-on error,warning --tag-display-limit 0 "$stage/$name" >&2
fi
if [[ -n $key ]]; then
	mkdir -p "$DEB_CACHE/$key"
	cp "$stage/$name" "$DEB_CACHE/$key/$name.tmp"
	mv "$DEB_CACHE/$key/$name.tmp" "$DEB_CACHE/$key/$name"
fi
mv "$stage/$name" "$OUT_DIR/$name"
echo "$OUT_DIR/$name"
