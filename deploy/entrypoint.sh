#!/bin/sh
# Trusts the cluster's CA (the service account's ca.crt) for the API server calls, then runs
# vfio-kubelet-plugin with the container's arguments (dra or device-plugin).
set -e
ca=/var/run/secrets/kubernetes.io/serviceaccount/ca.crt
if [ -f "$ca" ]; then
    cp "$ca" /usr/local/share/ca-certificates/kubernetes-cluster.crt
    update-ca-certificates >/dev/null 2>&1 || true
fi
exec /usr/local/bin/vfio-kubelet-plugin "$@"
