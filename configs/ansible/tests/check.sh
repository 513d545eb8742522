#!/usr/bin/env bash
# Checks the Ansible role without contacting any host (`make check-ansible`):
#   1. ansible-playbook --syntax-check of site.yml against the example inventory;
#   2. tests/render.yml: the config template rendered for every example host and compared
#      with configs/tabbyd.yaml.
# Installs Debian's ansible-core (ansible-playbook and the ansible.builtin modules, all the
# role uses) when ansible-playbook is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v ansible-playbook >/dev/null 2>&1; then
	if [[ $(id -u) -ne 0 ]]; then
		echo "check-ansible: ansible-playbook is not installed, and installing Debian's ansible-core needs root" >&2
		exit 1
	fi
	# The package list first: a fresh machine has none, and apt-cache knows nothing then.
	echo "check-ansible: installing ansible-core from apt"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ansible-core >/dev/null
fi

export ANSIBLE_NOCOLOR=1 ANSIBLE_RETRY_FILES_ENABLED=0 ANSIBLE_LOCALHOST_WARNING=0
ansible-playbook --syntax-check -i inventory.example.ini site.yml

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
{
	echo "all:"
	echo "  vars:"
	sed -e '/^#/d' -e '/^$/d' -e 's/^/    /' roles/tabby/defaults/main.yml
} >"$scratch/role-defaults.yml"
TABBY_RENDER_DIR=$scratch ansible-playbook -i "$scratch/role-defaults.yml" -i inventory.example.ini tests/render.yml
echo "check-ansible: ok"
