#!/usr/bin/env bash
# make-certs.sh: the certificates of a TLS etcd cluster with client-certificate
# authentication, made with openssl. One CA signs every certificate; a member certificate
# serves clients and peers; a client certificate's common name is the etcd user it logs
# in as (etcd --client-cert-auth), so the CN decides the RBAC role (see rbac.sh).
#
#   make-certs.sh ca     DIR                 DIR/ca.pem, DIR/ca-key.pem (kept if present)
#   make-certs.sh member DIR NAME SAN[,SAN]  DIR/NAME.pem, DIR/NAME-key.pem; SANs are
#                                            IP addresses or DNS names of the member
#   make-certs.sh client DIR CN              DIR/CN.pem, DIR/CN-key.pem for etcd user CN
#
# Private keys are created mode 0600 (the directory 0700): only root reads them. DAYS
# (default 825) sets the validity of new certificates.
set -euo pipefail
umask 077

usage() {
	awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0" >&2
	exit 2
}

[ $# -ge 2 ] || usage
cmd=$1 dir=$2
days=${DAYS:-825}
mkdir -p "$dir"
chmod 0700 "$dir"

# newkey FILE: an ECDSA P-256 key, readable by its owner only.
newkey() {
	openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
	chmod 0600 "$1"
}

# sign NAME SUBJECT EXTENSIONS: a certificate for DIR/NAME-key.pem signed by the CA.
sign() {
	local name=$1 subject=$2 ext=$3
	[ -f "$dir/ca.pem" ] && [ -f "$dir/ca-key.pem" ] || {
		echo "make-certs.sh: $dir has no CA: run '$0 ca $dir' first" >&2
		exit 1
	}
	newkey "$dir/$name-key.pem"
	openssl req -new -key "$dir/$name-key.pem" -subj "$subject" -out "$dir/$name.csr"
	openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca-key.pem" \
		-CAcreateserial -days "$days" -sha256 -extfile <(printf '%s\n' "$ext") \
		-out "$dir/$name.pem" 2>/dev/null
	rm -f "$dir/$name.csr"
	chmod 0644 "$dir/$name.pem"
}

case $cmd in
ca)
	[ $# -eq 2 ] || usage
	if [ -f "$dir/ca.pem" ] && [ -f "$dir/ca-key.pem" ]; then
		echo "make-certs.sh: keeping the CA in $dir" >&2
		exit 0
	fi
	newkey "$dir/ca-key.pem"
	openssl req -x509 -new -key "$dir/ca-key.pem" -subj "/CN=tabby etcd CA" -days "$days" \
		-sha256 -addext "basicConstraints=critical,CA:TRUE" \
		-addext "keyUsage=critical,keyCertSign,cRLSign" -out "$dir/ca.pem"
	chmod 0644 "$dir/ca.pem"
	;;
member)
	[ $# -eq 4 ] || usage
	name=$3 sans=""
	IFS=, read -ra list <<<"$4"
	for s in "${list[@]}"; do
		if [[ $s =~ ^[0-9.]+$ || $s == *:* ]]; then
			sans+="IP:$s,"
		else
			sans+="DNS:$s,"
		fi
	done
	# A member is a server to clients and peers and a client of its peers.
	sign "$name" "/CN=$name" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=${sans%,}"
	;;
client)
	[ $# -eq 3 ] || usage
	cn=$3
	sign "$cn" "/CN=$cn" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
	;;
*)
	usage
	;;
esac
