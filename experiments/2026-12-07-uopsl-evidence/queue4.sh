#!/bin/bash
while pgrep -f /tmp/i26/headline.sh > /dev/null; do sleep 30; done
NEW=/tmp/i26/code-f3e2031
/tmp/i26/grid.sh $NEW /tmp/i26/hard0 /tmp/i26/grid0 0,1,2 no_matrix,no_site_oct,fundus_sites,random_sites,mean_pool,scratch,coda,paired
/tmp/i26/grid.sh /tmp/i26/code-fdf0367 /tmp/i26/hard0 /tmp/i26/grid0 0,1,2 full_local,full_local8
nice -n 15 /work/wt/method/.venv/bin/predilect phantom --preset hard --seed 1 --out /tmp/i26/hard1 --workers 2 > /tmp/i26/phantom1.log 2>&1
/tmp/i26/grid.sh $NEW /tmp/i26/hard1 /tmp/i26/grid1 0,1,2 full,shuffled,no_oct
