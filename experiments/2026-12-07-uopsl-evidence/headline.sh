#!/bin/bash
while ! grep -q "OCT manifest" /tmp/i26/phantom0.log; do sleep 20; done
sleep 5
/tmp/i26/grid.sh /tmp/i26/code-ba1c985 /tmp/i26/hard0 /tmp/i26/grid0 0,1,2,3,4 full,shuffled,shuffled_redrawn,no_oct
