#!/usr/bin/env bash
# lab/vm/run.sh — run tabby's code inside a qemu VM booted on Debian's stock kernel.
#
# Why: the machines tabby is built on run a kernel without the ipip module, so tabby's IPIP
# code paths (tunl0, onlink routes through it, real encapsulated packets) cannot be exercised
# there. Debian's stock kernel has ipip and boots under qemu in seconds, with no disk and no
# network device: an initramfs carries busybox, the needed kernel modules, tabby's static
# binaries and test binaries, the host's ip/iptables/ipset/bird with their libraries, an
# /init (lab/vm/init) and the test plan (lab/vm/plan).
#
# What it does, idempotently: installs the host tools it lacks (apt-get); resolves the kernel
# package through its metapackage (the ABI number changes with every security update) and
# downloads it and busybox-static with `apt-get download` into VM_CACHE, unpacking the kernel
# once; builds tabby with CGO_ENABLED=0; packs the initramfs; boots qemu under a time limit;
# streams the serial console; and exits 0 only on "TABBY-VM-RESULT: PASS".
#
# The VM has no NIC (-nic none): nothing leaves it and nothing on the host's network changes.
#
# Settings (environment):
#   VM_CACHE         downloads and unpacked kernels           (/var/cache/tabby-vm)
#   VM_FLAVOUR       cloud (linux-image-cloud-amd64) | generic (linux-image-amd64)   (cloud)
#   VM_ACCEL         tcg | kvm; kvm only where the CPU shows vmx/svm AND /dev/kvm runs stock
#                    kernels (on the build machines it hangs them)                    (tcg)
#   VM_PLAN          the guest test plan                       (lab/vm/plan)
#   VM_TIMEOUT       seconds for the whole VM run               (300)
#   VM_STEP_TIMEOUT  seconds for one plan step                 (240)
#   VM_MEM, VM_SMP   guest memory in MiB and CPUs              (2048, 2)
#   VM_MODULES       kernel modules to load, dependencies added from modules.dep
#   VM_HOST_TOOLS    host commands copied into the VM with their libraries
#   VM_HOST_FILES    host files and directories copied too (iptables plugins, iproute2 tables)
#   VM_CMDS          tabby's main packages to put on the guest's PATH      (./cmd/...)
#   VM_KEEP=1        keep the work directory (initramfs, serial log) and print its path
#   GO, LDFLAGS      the Go command and the link flags of `make build`
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)

VM_CACHE=${VM_CACHE:-/var/cache/tabby-vm}
VM_FLAVOUR=${VM_FLAVOUR:-cloud}
VM_ACCEL=${VM_ACCEL:-tcg}
VM_PLAN=${VM_PLAN:-$here/plan}
VM_TIMEOUT=${VM_TIMEOUT:-300}
VM_STEP_TIMEOUT=${VM_STEP_TIMEOUT:-240}
VM_MEM=${VM_MEM:-2048}
VM_SMP=${VM_SMP:-2}
VM_KEEP=${VM_KEEP:-0}
VM_CMDS=${VM_CMDS-./cmd/...}
GO=${GO:-go}
LDFLAGS=${LDFLAGS:-}
# Tunnels and their helpers, the underlay (veth, bridge, dummy), and what iptables-legacy,
# iptables-nft and ipset need for tabby's MASQUERADE rules (SPEC §6).
VM_MODULES=${VM_MODULES:-"ipip tunnel4 ip_tunnel vxlan udp_tunnel ip6_udp_tunnel veth bridge dummy
 x_tables ip_tables iptable_nat iptable_filter iptable_mangle nf_nat nf_conntrack nf_defrag_ipv4
 nf_defrag_ipv6 xt_MASQUERADE xt_nat xt_set xt_comment xt_addrtype xt_conntrack xt_mark xt_tcpudp
 nfnetlink ip_set ip_set_hash_net nf_tables nft_compat nft_chain_nat nft_nat nft_masq nft_ct
 nft_meta_bridge"}

# bash runs the plan's steps: busybox's sh prefers its own applets to PATH, its `ip` included;
# env serves scripts' `#!/usr/bin/env bash`.
VM_HOST_TOOLS=${VM_HOST_TOOLS:-"bash env ip nsenter iptables iptables-save iptables-restore iptables-legacy
 iptables-legacy-save iptables-legacy-restore iptables-nft iptables-nft-save iptables-nft-restore
 ipset bird birdc ping nft"}
VM_HOST_FILES=${VM_HOST_FILES:-"/usr/lib/x86_64-linux-gnu/xtables /etc/iproute2 /usr/share/iproute2
 /etc/protocols /etc/services /etc/ethertypes"}

log() { printf 'vm: [%3ds] %s\n' "$SECONDS" "$*" >&2; }
die() {
	printf 'vm: FAIL: %s\n' "$*" >&2
	exit 1
}

case $VM_FLAVOUR in
cloud) meta=linux-image-cloud-amd64 ;;
generic) meta=linux-image-amd64 ;;
*) die "VM_FLAVOUR=$VM_FLAVOUR: want cloud or generic" ;;
esac
case $VM_ACCEL in
tcg) accel=(-accel tcg) ;;
kvm)
	grep -qE '\b(vmx|svm)\b' /proc/cpuinfo ||
		die "VM_ACCEL=kvm: this CPU shows no vmx/svm; its /dev/kvm only runs specially built guests and hangs a stock kernel; use VM_ACCEL=tcg"
	accel=(-accel kvm -cpu host)
	;;
*) die "VM_ACCEL=$VM_ACCEL: want tcg or kvm" ;;
esac
[[ -f $VM_PLAN ]] || die "no plan file $VM_PLAN"

work=""
vm_pid=""
tail_pid=""
cleanup() {
	local rc=$?
	if [[ -n $tail_pid ]]; then kill "$tail_pid" 2>/dev/null || true; fi
	if [[ -n $vm_pid ]] && kill -0 "$vm_pid" 2>/dev/null; then
		log "stopping the VM (pid $vm_pid)"
		kill "$vm_pid" 2>/dev/null || true # timeout(1) passes the signal on to qemu
		wait "$vm_pid" 2>/dev/null || true
	fi
	if [[ -n $work ]]; then
		if [[ $VM_KEEP == 1 ]]; then log "kept $work"; else rm -rf "$work"; fi
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- host tools ---------------------------------------------------------------------------

apt_updated=0
apt_update() {
	((apt_updated)) && return 0
	[[ $(id -u) == 0 ]] || die "apt-get update needs root"
	log "apt-get update"
	apt-get update -qq
	apt_updated=1
}

# need_tools installs the Debian package of every "command:package" pair whose command is missing.
need_tools() {
	local pair missing=()
	for pair in "$@"; do
		command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
	done
	((${#missing[@]})) || return 0
	[[ $(id -u) == 0 ]] || die "missing packages ${missing[*]}: run as root or install them"
	apt_update
	log "installing ${missing[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

need_tools qemu-system-x86_64:qemu-system-x86 cpio:cpio depmod:kmod dpkg-deb:dpkg tar:tar \
	timeout:coreutils apt-get:apt

# --- downloads ------------------------------------------------------------------------------

# resolve sets kernel_pkg, kernel_ver and busybox_ver from apt's local lists. Two apt-cache runs
# only: with no package cache configured (as here), each one parses every list.
resolve() {
	local name ver
	kernel_pkg=$(apt-cache depends "$meta" 2>/dev/null |
		awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }')
	kernel_ver="" busybox_ver=""
	[[ -n $kernel_pkg ]] || return 1
	while read -r name ver; do
		case $name in
		"$kernel_pkg") kernel_ver=$ver ;;
		busybox-static) busybox_ver=$ver ;;
		esac
	done < <(apt-cache policy "$kernel_pkg" busybox-static 2>/dev/null |
		awk '/^[^ ].*:$/ { name = substr($1, 1, length($1) - 1) } $1 == "Candidate:" && $2 != "(none)" { print name, $2 }')
	[[ -n $kernel_ver && -n $busybox_ver ]]
}

# fetch_deb prints the cached path of version $2 of package $1, downloading it if needed.
fetch_deb() {
	local pkg=$1 ver=$2 deb dl
	deb="$VM_CACHE/debs/${pkg}_${ver//:/%3a}_amd64.deb"
	if [[ ! -s $deb ]]; then
		mkdir -p "$VM_CACHE/debs"
		# apt-get download runs as the unprivileged _apt user where it can: give it a directory.
		dl=$(mktemp -d "$VM_CACHE/debs/.dl.XXXXXX")
		chmod 0777 "$dl"
		log "downloading $pkg $ver"
		if ! (cd "$dl" && apt-get download -qq "$pkg=$ver" >&2); then
			rm -rf "$dl"
			return 1
		fi
		mv "$dl"/*.deb "$deb"
		rm -rf "$dl"
	fi
	echo "$deb"
}

fetch_all() {
	resolve &&
		kernel_deb=$(fetch_deb "$kernel_pkg" "$kernel_ver") &&
		busybox_deb=$(fetch_deb busybox-static "$busybox_ver")
}

kernel_pkg="" kernel_ver="" busybox_ver="" kernel_deb="" busybox_deb=""
# Missing or stale lists (the mirror dropped the version they name) get one apt-get update.
if ! fetch_all; then
	apt_update
	fetch_all || die "cannot resolve or download $meta's kernel and busybox-static from the Debian mirror"
fi

# The kernel is unpacked once per package version, with depmod run on it so that modules.dep
# (Debian generates it at install time, it is not in the package) gives the dependencies.
kdir="$VM_CACHE/kernels/$(basename "$kernel_deb" .deb)"
if [[ ! -e $kdir/.ready ]]; then
	log "unpacking $(basename "$kernel_deb")"
	rm -rf "$kdir"
	mkdir -p "$kdir"
	dpkg-deb -x "$kernel_deb" "$kdir"
	kver=$(basename "$(find "$kdir/lib/modules" -mindepth 1 -maxdepth 1 -type d)")
	depmod -b "$kdir" "$kver"
	touch "$kdir/.ready"
fi
kver=$(basename "$(find "$kdir/lib/modules" -mindepth 1 -maxdepth 1 -type d)")
vmlinuz="$kdir/boot/vmlinuz-$kver"
[[ -f $vmlinuz ]] || die "no $vmlinuz in $(basename "$kernel_deb")"
log "kernel: $kernel_pkg $kernel_ver"

bbdir="$VM_CACHE/busybox/$(basename "$busybox_deb" .deb)"
if [[ ! -x $bbdir/bin/busybox ]]; then
	rm -rf "$bbdir"
	mkdir -p "$bbdir"
	dpkg-deb -x "$busybox_deb" "$bbdir"
	[[ -x $bbdir/bin/busybox ]] || die "no bin/busybox in $(basename "$busybox_deb")"
fi

# --- initramfs tree -------------------------------------------------------------------------

work=$(mktemp -d "${TMPDIR:-/tmp}/tabby-vm.XXXXXX")
stage="$work/root"
# The top level mirrors the host's (merged /usr on Debian: /bin -> usr/bin, ...) so that host
# tools and their libraries land where their symlinks and ELF interpreters expect them.
for d in bin sbin lib lib64; do
	if [[ -L /$d ]]; then
		mkdir -p "$stage/$(readlink "/$d")"
		ln -s "$(readlink "/$d")" "$stage/$d"
	fi
done
mkdir -p "$stage"/{bin,sbin,lib,usr/bin,usr/sbin,busybox,dev,etc,proc,root,run,sys,tmp,var} \
	"$stage"/{tabby/bin,tabby/pkg,lib/modules/"$kver"}
ln -s ../run "$stage/var/run"
cp "$bbdir/bin/busybox" "$stage/bin/busybox"
install -m 0755 "$here/init" "$stage/init"
# Guest-side check scripts go on the guest's PATH next to tabby's binaries.
install -m 0755 "$here"/checks/* "$stage/tabby/bin/"
cp "$VM_PLAN" "$stage/tabby/plan"
printf 'TABBY_STEP_TIMEOUT=%s\n' "$VM_STEP_TIMEOUT" >"$stage/tabby/vm.env"
# Go resolves "localhost" from /etc/hosts; the guest has no DNS.
printf '127.0.0.1 localhost\n::1 localhost ip6-localhost\n' >"$stage/etc/hosts"
printf 'hosts: files\n' >"$stage/etc/nsswitch.conf"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$stage/etc/passwd"
printf 'root:x:0:\n' >"$stage/etc/group"

# Host tools: tabby's code and its tests run ip, nsenter, iptables-{legacy,nft}[-save|-restore],
# ipset and bird, which busybox lacks or only half has (no `ip netns`). They are copied from
# this host with their symlink chains (multi-call binaries dispatch on the name; `iptables`
# goes through /etc/alternatives), and so is every library ldd names for them.
ldd_in=()
# copy_tree copies host paths (tar options first) to the same places in the stage, through
# the stage's top-level symlinks. (cp --parents -a trips over existing parents in coreutils 9.1.)
copy_tree() {
	local opts=()
	while [[ $1 == -* ]]; do
		opts+=("$1")
		shift
	done
	tar -C / "${opts[@]}" -cf - "${@#/}" | tar -C "$stage" --keep-directory-symlink -xf -
}
# copy_host_path copies host path $1 to the same place in the stage, symlinks as symlinks.
copy_host_path() {
	local p=$1 target
	while [[ ! -e $stage$p && ! -L $stage$p ]]; do
		mkdir -p "$stage$(dirname "$p")"
		if [[ ! -L $p ]]; then
			cp "$p" "$stage$p"
			ldd_in+=("$p")
			return 0
		fi
		target=$(readlink "$p")
		ln -s "$target" "$stage$p"
		[[ $target == /* ]] || target="$(dirname "$p")/$target"
		p=$target
	done
}
absent=()
for tool in $VM_HOST_TOOLS; do
	if path=$(command -v "$tool"); then copy_host_path "$path"; else absent+=("$tool"); fi
done
((${#absent[@]} == 0)) || log "not on this host, so not in the VM either: ${absent[*]}"
for extra in $VM_HOST_FILES; do
	[[ -e $extra ]] || continue
	copy_tree "$extra"
	if [[ -d $extra ]]; then mapfile -t -O "${#ldd_in[@]}" ldd_in < <(find "$extra" -type f -name '*.so*'); fi
done
if ((${#ldd_in[@]})); then
	# One ldd for all ("lib => /path (addr)", and the interpreter's "/path (addr)"); libraries
	# are copied dereferenced: the loader looks them up by their soname only.
	mapfile -t libs < <(ldd "${ldd_in[@]}" 2>/dev/null |
		awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// && $2 ~ /^\(0x/ { print $1 }' | sort -u)
	if ((${#libs[@]})); then copy_tree -h "${libs[@]}"; fi
fi

# Modules: each one's dependencies, from modules.dep, are loaded first. depmod lists them so
# that loading the list backwards works, as modprobe does. A module built into this kernel
# needs nothing; one that exists in neither form is an error, not a silent gap. Soft
# dependencies ("softdep libcrc32c pre: crc32c", names that may be aliases) are loaded first
# too, but marked optional with a leading "?": an alias can name several modules, and some
# cannot load here (crc32c_intel needs SSE4.2, which TCG's CPU lacks), as with modprobe.
moddir="$kdir/lib/modules/$kver"
mapfile -t order < <(awk -v want="$VM_MODULES" '
	function norm(p) { sub(/.*\//, "", p); sub(/\.ko(\.(xz|zst|gz))?$/, "", p); gsub(/-/, "_", p); return p }
	# add prints module m after what it needs; opt marks it optional.
	function add(m, opt,    k, f, j, n, s, t, a) {
		if (m in seen || !(m in line)) return
		seen[m] = 1
		n = split(pre[m], s, " ")
		for (j = 1; j <= n; j++) {
			if (s[j] in line) { add(s[j], 1); continue }
			a = split(aliases[s[j]], t, " ")
			for (k = 1; k <= a; k++) add(t[k], 1)
		}
		k = split(line[m], f, /[ \t]+/) # f[1] is "module:", f[2..k] its dependencies
		for (j = k; j >= 2; j--) add(norm(f[j]), opt)
		print (opt ? "?" : "") path[m]
	}
	FILENAME ~ /modules\.builtin$/ { builtin[norm($1)] = 1; next }
	FILENAME ~ /modules\.alias$/ { a = $2; gsub(/-/, "_", a); aliases[a] = aliases[a] " " $3; next }
	FILENAME ~ /modules\.softdep$/ {
		if ($1 != "softdep") next
		for (i = 3; i <= NF && $i != "pre:"; i++) {}
		o = $2; gsub(/-/, "_", o)
		for (i++; i <= NF && $i != "post:"; i++) { d = $i; gsub(/-/, "_", d); pre[o] = pre[o] " " d }
		next
	}
	{ key = $1; sub(/:$/, "", key); m = norm(key); line[m] = $0; path[m] = key }
	END {
		n = split(want, ws, /[ \t\n]+/)
		for (i = 1; i <= n; i++) {
			m = ws[i]; gsub(/-/, "_", m)
			if (m == "" || (!(m in line) && (m in builtin))) continue
			if (!(m in line)) { print "MISSING " m; continue }
			add(m, 0)
		}
	}' "$moddir/modules.builtin" "$moddir/modules.alias" "$moddir/modules.softdep" "$moddir/modules.dep")
nomod=$(printf '%s\n' "${order[@]}" | awk '$1 == "MISSING" { printf " %s", $2 }')
[[ -z $nomod ]] || die "kernel $kver has no module (neither loadable nor built in):$nomod"
plain=()
for entry in "${order[@]}"; do
	ko=${entry#\?}
	case $ko in
	*.xz | *.zst | *.gz)
		out="$stage/lib/modules/$kver/${ko%.*}"
		mkdir -p "$(dirname "$out")"
		case $ko in
		*.xz) need_tools xz:xz-utils && xz -dc "$moddir/$ko" >"$out" ;;
		*.zst) need_tools zstd:zstd && zstd -qdc "$moddir/$ko" >"$out" ;;
		*.gz) gzip -dc "$moddir/$ko" >"$out" ;;
		esac
		;;
	*) plain+=("$ko") ;;
	esac
done
if ((${#plain[@]})); then tar -C "$moddir" -cf - "${plain[@]}" | tar -C "$stage/lib/modules/$kver" -xf -; fi
printf '%s\n' "${order[@]%.xz}" | sed -E 's/\.(zst|gz)$//' >"$stage/lib/modules/tabby-load-order"

# --- Go builds ----------------------------------------------------------------------------

# plan_packages prints the PKG of every `guestcheck gotest [flags] PKG REGEXP` in the plan.
# xargs splits the line as the guest's shell will (quotes included) without running anything.
plan_packages() {
	local line i words
	while IFS= read -r line; do
		[[ $line =~ ^[[:space:]]*(#|$) ]] && continue
		[[ $line == *"guestcheck gotest"* ]] || continue
		mapfile -d '' -t words < <(xargs printf '%s\0' <<<"$line") ||
			die "cannot split the plan line: $line"
		for ((i = 0; i < ${#words[@]} - 1; i++)); do
			[[ ${words[i]} == guestcheck && ${words[i + 1]} == gotest ]] && break
		done
		for ((i += 2; i < ${#words[@]}; i++)); do
			case ${words[i]} in
			-timeout | -root | -allow-skip | --timeout | --root | --allow-skip) ((i++)) || true ;;
			-*) ;;
			*)
				echo "${words[i]}"
				break
				;;
			esac
		done
	done <"$VM_PLAN"
}

cd "$root"
export CGO_ENABLED=0
mains=(./lab/vm/guestcheck)
# ./cmd/... matches nothing until the first command lands; go build would then warn.
for pattern in $VM_CMDS; do
	if [[ -n $("$GO" list "$pattern" 2>/dev/null) ]]; then mains+=("$pattern"); fi
done
log "building ${mains[*]} (static)"
# -s -w: no symbol table or DWARF, a third less to link and pack; panics keep file:line.
"$GO" build -ldflags "$LDFLAGS -s -w" -o "$stage/tabby/bin/" "${mains[@]}"
while IFS= read -r pkg; do
	rel=${pkg#./}
	[[ -d $root/$rel ]] || die "the plan runs the tests of $pkg, which does not exist"
	out="$stage/tabby/pkg/$rel/$(basename "$rel").test"
	log "building the tests of $pkg (static)"
	mkdir -p "$(dirname "$out")"
	"$GO" test -c -ldflags "-s -w" -o "$out" "./$rel"
	[[ -x $out ]] || die "$pkg has no test files, yet the plan runs its tests"
	if [[ -d $root/$rel/testdata ]]; then cp -a "$root/$rel/testdata" "$(dirname "$out")/"; fi
done < <(plan_packages | sort -u)

# --- boot -----------------------------------------------------------------------------------

# Uncompressed on purpose: measured here, gzip -1 cost 4 s on the host and 3 s of inflating in
# the TCG guest for a ~170 MB tree, and zstd hung the guest; a raw cpio costs neither.
initrd="$work/initramfs.cpio"
(cd "$stage" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc -R 0:0 --quiet) >"$initrd"
log "initramfs: $(du -h "$initrd" | cut -f1) with ${#order[@]} modules; booting (${VM_ACCEL}, timeout ${VM_TIMEOUT}s)"

serial="$work/serial.log"
: >"$serial"
started=$SECONDS
timeout -k 10 "$VM_TIMEOUT" qemu-system-x86_64 "${accel[@]}" -M pc -nodefaults -nic none -no-reboot \
	-m "$VM_MEM" -smp "$VM_SMP" -display none -monitor none -serial "file:$serial" \
	-kernel "$vmlinuz" -initrd "$initrd" -append "console=ttyS0 panic=-1 quiet" \
	</dev/null >"$work/qemu.log" 2>&1 &
vm_pid=$!
tail -n +1 -s 0.2 -f --pid="$vm_pid" "$serial" &
tail_pid=$!
vm_rc=0
wait "$vm_pid" || vm_rc=$?
vm_pid=""
wait "$tail_pid" || true
tail_pid=""
took=$((SECONDS - started))

result=$(tr -d '\r' <"$serial" | grep -a '^TABBY-VM-RESULT: ' | tail -n 1 || true)
if [[ -z $result ]]; then
	[[ -s $work/qemu.log ]] && sed 's/^/qemu: /' "$work/qemu.log" >&2
	if ((vm_rc == 124 || vm_rc == 137)); then
		die "the VM gave no verdict within VM_TIMEOUT=${VM_TIMEOUT}s (killed)"
	fi
	panic=$(tr -d '\r' <"$serial" | grep -a -m 1 'Kernel panic' || true)
	[[ -n $panic ]] && die "the guest kernel panicked after ${took}s: $panic"
	die "qemu exited with status $vm_rc after ${took}s without a verdict"
fi
case $result in
"TABBY-VM-RESULT: PASS")
	((vm_rc == 0)) || die "the guest passed but qemu exited with status $vm_rc"
	log "PASS: the VM ran for ${took}s (kernel $kernel_pkg $kernel_ver)"
	;;
*)
	reason=${result#TABBY-VM-RESULT: }
	die "${reason#FAIL } (after ${took}s)"
	;;
esac
