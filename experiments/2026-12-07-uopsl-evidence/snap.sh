#!/bin/bash
# snap.sh COMMIT -> /tmp/i26/code-COMMIT (a frozen copy of the tree the grid runs from)
set -e
c=$(git -C /work/wt/method rev-parse --short "$1")
d=/tmp/i26/code-$c
if [ ! -d "$d" ]; then mkdir -p "$d" && git -C /work/wt/method archive "$c" | tar -x -C "$d"; fi
echo "$d"
