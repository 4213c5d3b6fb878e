#!/bin/sh
# Entrypoint of the offline Prometheus image. With host networking every replica has its own
# admin port, so the scrape targets come from the environment: /etc/prometheus/prometheus.yml
# (offline/prometheus.yml) is a template whose @TOLLGATE_TARGETS@ becomes
# "host:port", "host:port" from TOLLGATE_TARGETS (comma-separated). Arguments go to prometheus.
set -eu
: "${TOLLGATE_TARGETS:?set TOLLGATE_TARGETS, e.g. 127.0.0.1:19901,127.0.0.1:19902}"
targets=$(printf '%s' "$TOLLGATE_TARGETS" | sed 's/[^,][^,]*/"&"/g; s/,/, /g')
mkdir -p /tmp/prometheus
sed "s|@TOLLGATE_TARGETS@|$targets|" /etc/prometheus/prometheus.yml > /tmp/prometheus/prometheus.yml
exec prometheus --config.file=/tmp/prometheus/prometheus.yml "$@"
