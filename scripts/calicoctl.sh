#!/usr/bin/env bash
# Builds the real calicoctl v3.30.1 from Calico's Go module, fetched through the Go module
# proxy, and caches the binary so a second run is instant. The interoperability suite
# (lab/calicointerop) runs it against tabby's datastore.
#
# Calico's monorepo has no /v3 in its module path, so the v3.30.1 commit is fetched by its
# pseudo-version. Its go.mod replaces three nested modules by relative paths the module zip
# does not carry: ./api and ./lib/std are pointed at their own published versions, and
# ./lib/httpmachinery (which calicoctl does not import) needs only a go.mod naming it.
#
# Prints the binary's path as its last line. Fails, saying why, when the proxy refuses.
set -euo pipefail

GO=${GO:-go}
CACHE=${CALICOCTL_CACHE:-/var/cache/tabby-calicoctl}
CALICO_VERSION=v3.30.1
CALICO_MODULE=github.com/projectcalico/calico
CALICO_PSEUDO=v0.0.0-20250529224300-393b14e729a6
API_MODULE=github.com/projectcalico/api
API_PSEUDO=v0.0.0-20250617202239-c3be7477438e
STD_MODULE=github.com/projectcalico/calico/lib/std
STD_PSEUDO=v0.0.0-20250529224300-393b14e729a6
HTTPMACHINERY_MODULE=github.com/projectcalico/calico/lib/httpmachinery

bin="$CACHE/calicoctl-$CALICO_VERSION"
# `calicoctl version` exits non-zero when it finds no cluster to ask; its first line counts.
if [[ -x "$bin" ]] && { "$bin" version 2>/dev/null || true; } | grep -q "^Client Version: *$CALICO_VERSION\$"; then
	echo "$bin"
	exit 0
fi

mkdir -p "$CACHE"
src=$(mktemp -d "$CACHE/src.XXXXXX")
trap 'chmod -R u+w "$src" 2>/dev/null; rm -rf "$src"' EXIT

echo "calicoctl: fetching $CALICO_MODULE@$CALICO_PSEUDO ($CALICO_VERSION) through the module proxy" >&2
if ! dir=$(cd "$src" && GOFLAGS=-mod=mod "$GO" mod download -json "$CALICO_MODULE@$CALICO_PSEUDO" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p') || [[ -z "$dir" ]]; then
	echo "calicoctl: the module proxy did not deliver $CALICO_MODULE@$CALICO_PSEUDO (GOPROXY=$("$GO" env GOPROXY))" >&2
	exit 1
fi

# The module cache is read-only: build in a writable copy.
cp -r "$dir/." "$src/calico"
chmod -R u+w "$src/calico"
cd "$src/calico"

mkdir -p lib/httpmachinery
printf 'module %s\n\ngo 1.24\n' "$HTTPMACHINERY_MODULE" >lib/httpmachinery/go.mod
"$GO" mod edit \
	-replace "$API_MODULE=$API_MODULE@$API_PSEUDO" \
	-replace "$STD_MODULE=$STD_MODULE@$STD_PSEUDO"

echo "calicoctl: building ./calicoctl/calicoctl (several minutes on a cold build cache)" >&2
ldflags="-X $CALICO_MODULE/calicoctl/calicoctl/commands.VERSION=$CALICO_VERSION"
ldflags+=" -X $CALICO_MODULE/calicoctl/calicoctl/commands/common.VERSION=$CALICO_VERSION"
ldflags+=" -X $CALICO_MODULE/calicoctl/calicoctl/commands.GIT_REVISION=${CALICO_PSEUDO##*-}"
if ! CGO_ENABLED=0 GOFLAGS=-mod=mod "$GO" build -trimpath -ldflags "$ldflags" -o "$bin.tmp" ./calicoctl/calicoctl; then
	echo "calicoctl: the build of $CALICO_MODULE@$CALICO_PSEUDO failed (see above; GOPROXY=$("$GO" env GOPROXY))" >&2
	rm -f "$bin.tmp"
	exit 1
fi
mv "$bin.tmp" "$bin"
echo "$bin"
