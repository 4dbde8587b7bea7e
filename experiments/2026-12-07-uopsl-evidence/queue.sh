#!/bin/bash
# queue.sh: the second sitting of grid0 (one process, cells in this order, each skipped when done).
# Headline seeds 3,4 from the tree that trained seeds 0-2 (headline.sh); then the controls, one seed at
# a time, from the tree that has them. The paired B-scans were redrawn first from seed stream 6:
#   predilect phantom --preset hard --out /tmp/i26/hard0 --only-paired-oct
here=$(dirname "$(readlink -f "$0")")
G=$here/grid.sh; P=/tmp/i26/hard0; O=/tmp/i26/grid0
$G "$("$here/snap.sh" ba1c985)" $P $O 3,4 full,shuffled_redrawn,shuffled,no_oct
NEW=$("$here/snap.sh" 3f1d65e)
for s in 0 1 2; do
  $G "$NEW" $P $O $s no_site_oct,fundus_sites,random_sites,mean_pool,coda,paired,scratch,no_matrix
done
