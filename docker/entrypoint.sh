#!/bin/sh
# Container entrypoint: runs `lattice` with the configuration file at
# $LATTICE_CONFIG (default /config/lattice.toml) when it exists; settings may
# also come from LATTICE__… environment variables. Lattice itself waits for a
# database that comes up late (database.startup_timeout_secs).
set -eu
config="${LATTICE_CONFIG:-/config/lattice.toml}"
if [ -f "$config" ]; then
  exec lattice --config "$config" "$@"
fi
exec lattice "$@"
