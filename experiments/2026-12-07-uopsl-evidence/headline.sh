#!/bin/bash
# headline.sh: the first sitting of grid0, the headline variants (stopped after seed 2; queue.sh goes on)
#   predilect phantom --preset hard --out /tmp/i26/hard0   # then --only-paired-oct (queue.sh)
here=$(dirname "$(readlink -f "$0")")
"$here/grid.sh" "$("$here/snap.sh" ba1c985)" /tmp/i26/hard0 /tmp/i26/grid0 0,1,2,3,4 full,shuffled,shuffled_redrawn,no_oct
