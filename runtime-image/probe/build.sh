#!/bin/sh
# Builds the static security probe: build.sh [OUT] (default ./kiln-probe).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
exec gcc -static -O2 -Wall -Wextra -o "${1:-kiln-probe}" "$here/probe.c"
