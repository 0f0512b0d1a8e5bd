#!/bin/sh
# Creates the node agent's signing key and the Secret the DaemonSet mounts
# for kernel.yaml's signing_key. Run it once, from the repository's root:
#
#   deploy/kubernetes/create-signing-key.sh [KEY_FILE]
#
# KEY_FILE (default chio-signing.key) is written by `chio-agent keygen` (mode
# 0600, never overwritten): bin/chio-agent (`make build`) if it is there,
# else the chio-agent on PATH, else the image the README builds, run by
# docker. The kernel_key it prints is the public key every receipt carries:
# keep it to verify the nodes' logs. Then keep KEY_FILE offline, or delete
# it: the Secret holds the key. A new key is not a rotation: a node's receipt
# log refuses to open with another key (docs/kubernetes.md).
set -eu

key=${1:-chio-signing.key}
here=$(dirname "$0")

if [ -x bin/chio-agent ]; then
	bin/chio-agent keygen --out "$key"
elif command -v chio-agent >/dev/null 2>&1; then
	chio-agent keygen --out "$key"
else
	dir=$(cd "$(dirname "$key")" && pwd)
	docker run --rm --user "$(id -u):$(id -g)" -v "$dir:/out" chio-node-agent:dev \
		keygen --out "/out/$(basename "$key")"
fi
kubectl apply -f "$here/namespace.yaml"
kubectl -n chio-system create secret generic chio-node-agent-key --from-file=seed="$key"
