#!/usr/bin/env bash
# Prints the Debian version of the working tree, made from `git describe`:
#   tag v1.2.3, 4 commits on, at abc1234  → 1.2.3+4.gabc1234
#   no tag, 287 commits, at abc1234       → 0.0+git287.gabc1234
# A changed working tree adds ".dirty". Debian versions must start with a digit and sort
# in build order; the commit count keeps untagged builds in order.
set -euo pipefail
cd "$(dirname "$0")/../.."
dirty=""
if ! git diff --quiet HEAD -- 2>/dev/null; then
	dirty=".dirty"
fi
if d=$(git describe --tags --long --match 'v[0-9]*' 2>/dev/null); then
	# v1.2.3-4-gabc1234
	tag=${d%-*-g*}
	rest=${d#"$tag"-}
	echo "${tag#v}+${rest%%-*}.${rest#*-}${dirty}"
else
	echo "0.0+git$(git rev-list --count HEAD).g$(git rev-parse --short=7 HEAD)${dirty}"
fi
