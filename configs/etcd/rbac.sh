#!/usr/bin/env bash
# rbac.sh: etcd users and roles for tabby, with etcdctl (v3 API), the way Calico documents
# them for its components in etcd mode ("Calico key and path prefixes"), made narrower
# where tabby needs less. etcdctl finds the cluster through its own variables:
# ETCDCTL_ENDPOINTS, ETCDCTL_CACERT, and, once auth is on, ETCDCTL_CERT/ETCDCTL_KEY of a
# certificate whose common name is root.
#
#   rbac.sh setup          roles tabbyd, tabby-cni and tabbyctl, the users root, tabby-cni
#                          and tabbyctl, then turns authentication on
#   rbac.sh node NODE      role and user tabbyd-NODE for the tabbyd of host NODE
#   rbac.sh user NAME ROLE a user with one of the roles above
# With --password-stdin after node or user, the user gets the password read from stdin
# (never from the command line: ps would show it), for a client that logs in with
# etcd.username/etcd.password; under --client-cert-auth it still needs a certificate of
# the CA, whose common name is then not used. A user made without a password logs in
# only by certificate, and cannot be given one later (etcd keeps it password-less).
#
# Roles (PREFIX is the key root, /calico unless set):
#   tabbyd        read PREFIX/ (its syncer lists and watches the whole root), readwrite
#                 PREFIX/ipam/v2/ (blocks, affinities, handles: its tunnel address and
#                 the garbage collection of leaked addresses)
#   tabbyd-NODE   readwrite the one key PREFIX/resources/v3/projectcalico.org/nodes/NODE:
#                 a host writes its own Node and no other one. etcd permissions are keys
#                 or prefixes, not patterns, so this takes a role per node; a prefix
#                 .../nodes/NODE would also cover NODE0, NODE-b, ...
#   tabby-cni     readwrite PREFIX/ipam/v2/ and .../workloadendpoints/; read .../ippools/,
#                 .../ipreservations/ (never assigned) and .../nodes/ (pool node
#                 selectors match Node labels)
#   tabbyctl      readwrite PREFIX/ (the operator's admin role)
# Users are the common names of the client certificates (make-certs.sh client DIR CN):
# root (role root), tabbyctl, tabby-cni, tabbyd-NODE. Every step is idempotent.
set -euo pipefail

PREFIX=${PREFIX:-/calico}
PREFIX=${PREFIX%/}
res=$PREFIX/resources/v3/projectcalico.org

usage() {
	awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0" >&2
	exit 2
}

ctl() { etcdctl "$@"; }

# role NAME: create the role unless it exists.
role() {
	ctl role get "$1" >/dev/null 2>&1 || ctl role add "$1" >/dev/null
}

# grant ROLE PERM KEY [--prefix]
grant() {
	local r=$1 perm=$2 key=$3
	shift 3
	ctl role grant-permission "$@" "$r" "$perm" "$key" >/dev/null
}

# user NAME ROLE...: a user with these roles; without a password (certificate common
# name) unless password_stdin is set, then with the password on stdin.
password_stdin=false
user() {
	local u=$1
	shift
	if $password_stdin; then
		local pw
		IFS= read -r pw || [ -n "${pw:-}" ] || { echo "rbac.sh: no password on stdin" >&2; exit 2; }
		[ -n "$pw" ] || { echo "rbac.sh: empty password on stdin" >&2; exit 2; }
		if ctl user get "$u" >/dev/null 2>&1; then
			printf '%s\n' "$pw" | ctl user passwd "$u" --interactive=false >/dev/null
		else
			printf '%s\n' "$pw" | ctl user add "$u" --interactive=false >/dev/null
		fi
	else
		ctl user get "$u" >/dev/null 2>&1 || ctl user add "$u" --no-password >/dev/null
	fi
	for r in "$@"; do
		ctl user grant-role "$u" "$r" >/dev/null
	done
}

# Options after the command.
args=()
for a in "$@"; do
	case $a in
	--password-stdin) password_stdin=true ;;
	*) args+=("$a") ;;
	esac
done
set -- "${args[@]}"

[ $# -ge 1 ] || usage
case $1 in
setup)
	[ $# -eq 1 ] && ! $password_stdin || usage
	role tabbyd
	grant tabbyd read "$PREFIX/" --prefix
	grant tabbyd readwrite "$PREFIX/ipam/v2/" --prefix
	role tabby-cni
	grant tabby-cni readwrite "$PREFIX/ipam/v2/" --prefix
	grant tabby-cni readwrite "$res/workloadendpoints/" --prefix
	grant tabby-cni read "$res/ippools/" --prefix
	grant tabby-cni read "$res/nodes/" --prefix
	grant tabby-cni read "$res/ipreservations/" --prefix
	role tabbyctl
	grant tabbyctl readwrite "$PREFIX/" --prefix
	user root root
	user tabbyctl tabbyctl
	user tabby-cni tabby-cni
	ctl auth enable >/dev/null 2>&1 || ctl auth status 2>/dev/null | grep -q 'Authentication Status: true'
	echo "etcd roles tabbyd, tabby-cni, tabbyctl ready; authentication enabled"
	;;
node)
	[ $# -eq 2 ] || usage
	node=$2
	[[ $node =~ ^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$ ]] || {
		echo "rbac.sh: $node is not a node name" >&2
		exit 2
	}
	role "tabbyd-$node"
	grant "tabbyd-$node" readwrite "$res/nodes/$node"
	user "tabbyd-$node" tabbyd "tabbyd-$node"
	echo "etcd user tabbyd-$node ready"
	;;
user)
	[ $# -eq 3 ] || usage
	case $3 in tabbyd | tabby-cni | tabbyctl) ;; *)
		echo "rbac.sh: role $3 is not one of tabbyd, tabby-cni, tabbyctl" >&2
		exit 2
		;;
	esac
	user "$2" "$3"
	echo "etcd user $2 ready"
	;;
*)
	usage
	;;
esac
