#!/usr/bin/env bash
# Builds (once) the root file system of the rollout suite's Debian hosts and prints its
# directory. The hosts are booted from it with systemd-nspawn, each on an overlay of its
# own, so the tree itself is never written after it is built.
#
# The tree is cached under ROOTFS_CACHE in a directory named after a hash of everything
# that shapes it (suite, mirror, package list, this script), so a second run returns at
# once and a changed package list builds a new tree beside the old one. A half-built tree
# is never used: debootstrap writes into a scratch directory renamed into place at the end.
set -euo pipefail

ROOTFS_CACHE=${ROOTFS_CACHE:-/var/cache/tabby-rootfs}
SUITE=${ROOTFS_SUITE:-bookworm}
MIRROR=${ROOTFS_MIRROR:-http://deb.debian.org/debian}
# systemd as PID 1 and what tabbyd runs (iproute2, iptables in both backends, ipset, kmod
# for legacy iptables' modprobe); openssh-server, sudo, python3 and python3-apt for Ansible
# (its apt module installs the .deb); iputils-ping for the workloads.
PACKAGES=(systemd systemd-sysv dbus iproute2 iptables ipset kmod openssh-server sudo
	python3 python3-apt iputils-ping procps)

packages=$(printf '%s\n' "${PACKAGES[@]}" | sort | paste -sd, -)
# Two layers, each cached: the debootstrap tree (minutes; keyed by suite, mirror and
# packages) and the tree set up for the lab (seconds; keyed by this script too), so a
# change below rebuilds only the second.
base=$ROOTFS_CACHE/base-$SUITE-$(echo "$SUITE $MIRROR $packages" | sha256sum | cut -c1-16)
dir=$ROOTFS_CACHE/$SUITE-$({ echo "$SUITE $MIRROR $packages"; cat "$0"; } | sha256sum | cut -c1-16)
if [[ -f $dir/.tabby-rootfs-complete ]]; then
	echo "$dir"
	exit 0
fi

mkdir -p "$ROOTFS_CACHE"
scratch=$(mktemp -d "$ROOTFS_CACHE/.build-XXXXXX")
trap 'rm -rf "$scratch"' EXIT
if [[ ! -d $base ]]; then
	command -v debootstrap >/dev/null || { echo "rootfs.sh: debootstrap is not installed" >&2; exit 1; }
	echo "rootfs.sh: debootstrap $SUITE with $packages into $base (once; a few minutes)" >&2
	debootstrap --variant=minbase --include="$packages" "$SUITE" "$scratch/base" "$MIRROR" >"$scratch/debootstrap.log" 2>&1 ||
		{ tail -20 "$scratch/debootstrap.log" >&2; exit 1; }
	chroot "$scratch/base" apt-get clean
	mv "$scratch/base" "$base"
fi
root=$scratch/root
cp -a --reflink=auto "$base" "$root"

# The operator account of the example inventory (ansible_user=ubuntu), with sudo as on a
# cloud image; each host gets its authorized_keys when it is booted.
chroot "$root" useradd --create-home --shell /bin/bash ubuntu
echo 'ubuntu ALL=(ALL) NOPASSWD:ALL' >"$root/etc/sudoers.d/90-ubuntu"
chmod 0440 "$root/etc/sudoers.d/90-ubuntu"
# Key-only SSH; sshd starts at boot.
printf 'PasswordAuthentication no\nUseDNS no\n' >"$root/etc/ssh/sshd_config.d/tabby-lab.conf"
chroot "$root" systemctl enable ssh.service >/dev/null 2>&1
# Each host makes its own host keys at first boot instead of sharing the tree's: before
# the unit's own `sshd -t`, which fails without them.
rm -f "$root"/etc/ssh/ssh_host_*
mkdir -p "$root/etc/systemd/system/ssh.service.d"
printf '[Service]\nExecStartPre=\nExecStartPre=/usr/bin/ssh-keygen -A\nExecStartPre=/usr/sbin/sshd -t\n' \
	>"$root/etc/systemd/system/ssh.service.d/hostkeys.conf"
# Nothing in the container needs a console login or time synchronisation.
chroot "$root" systemctl mask console-getty.service getty@tty1.service systemd-timesyncd.service >/dev/null 2>&1 || true
# Empty: nspawn's --machine sets the hostname.
: >"$root/etc/hostname"

touch "$root/.tabby-rootfs-complete"
mv "$root" "$dir"
echo "$dir"
