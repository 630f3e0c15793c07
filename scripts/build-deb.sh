#!/usr/bin/env bash
# Builds the Debian package from an already built binary, with dpkg-deb:
#   bash scripts/build-deb.sh [BINARY] [OUTPUT_DIR]
# BINARY defaults to target/release/waxwing (`cargo build --release
# --features gssapi` first: the package takes Kerberos logins; a binary built
# without the feature gives a package without the libgssapi dependency),
# OUTPUT_DIR to target/debian. Prints the path of the .deb.
#
# Contents: /usr/bin/waxwing (stripped), /etc/waxwing/waxwing.toml (a
# conffile: the reference configuration with data_dir = /var/lib/waxwing),
# the systemd unit, the operator guide; maintainer scripts from
# contrib/debian create the `waxwing` system user and /var/lib/waxwing.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-$root/target/release/waxwing}
out=${2:-$root/target/debian}
[ -x "$bin" ] || { echo "build-deb: no binary at $bin" >&2; exit 1; }

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/Cargo.toml" | head -n1)
arch=$(dpkg --print-architecture)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
pkg=$stage/pkg

install -d "$pkg/DEBIAN" "$pkg/usr/bin" "$pkg/etc/waxwing" \
    "$pkg/lib/systemd/system" "$pkg/usr/share/doc/waxwing"
# Stripped while copied: no full-size copy of a debug binary on the way.
strip --strip-unneeded --remove-section=.comment --remove-section=.note \
    -o "$pkg/usr/bin/waxwing" "$bin"
chmod 0755 "$pkg/usr/bin/waxwing"
sed -e 's|^data_dir = .*|data_dir = "/var/lib/waxwing"|' \
    "$root/waxwing.example.toml" > "$pkg/etc/waxwing/waxwing.toml"
chmod 0644 "$pkg/etc/waxwing/waxwing.toml"
install -m 0644 "$root/contrib/systemd/waxwing.service" "$pkg/lib/systemd/system/waxwing.service"
install -m 0644 "$root/docs/operating.md" "$pkg/usr/share/doc/waxwing/operating.md"
gzip -9n "$pkg/usr/share/doc/waxwing/operating.md"
cat > "$pkg/usr/share/doc/waxwing/copyright" <<COPYRIGHT
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: waxwing
Source: https://example.invalid/waxwing

Files: *
Copyright: 2026 The Waxwing authors
License: Apache-2.0
 On Debian systems, the full text of the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
COPYRIGHT
date=$(date -u -R -d "@${SOURCE_DATE_EPOCH:-$(date +%s)}")
printf 'waxwing (%s) unstable; urgency=medium\n\n  * Package built from the waxwing source tree.\n\n -- Waxwing maintainers <maintainers@example.invalid>  %s\n' \
    "$version" "$date" | gzip -9n > "$pkg/usr/share/doc/waxwing/changelog.gz"

for s in postinst prerm postrm; do
    install -m 0755 "$root/contrib/debian/$s" "$pkg/DEBIAN/$s"
done
echo /etc/waxwing/waxwing.toml > "$pkg/DEBIAN/conffiles"
size=$(du -k -s --exclude=DEBIAN "$pkg" | cut -f1)
# A binary built with the `gssapi` feature links MIT's GSS-API library.
depends="libc6 (>= 2.34), libgcc-s1, adduser"
if readelf -d "$bin" 2>/dev/null | grep -q 'libgssapi_krb5'; then
    depends="$depends, libgssapi-krb5-2"
fi
cat > "$pkg/DEBIAN/control" <<CONTROL
Package: waxwing
Version: $version
Architecture: $arch
Maintainer: Waxwing maintainers <maintainers@example.invalid>
Installed-Size: $size
Depends: $depends
Section: net
Priority: optional
Homepage: https://example.invalid/waxwing
Description: XMPP server
 Waxwing is an XMPP (Jabber) server: client and server connections, group
 chat, publish-subscribe, message archives, push, federation with other
 servers, automatic certificates and Prometheus metrics.
CONTROL
(cd "$pkg" && find . -type f ! -path './DEBIAN/*' -printf '%P\0' | sort -z | xargs -0 md5sum) > "$pkg/DEBIAN/md5sums"

mkdir -p "$out"
deb="$out/waxwing_${version}_${arch}.deb"
dpkg-deb --root-owner-group "-Z${DEB_COMPRESSION:-xz}" --build "$pkg" "$deb" >/dev/null
echo "$deb"
