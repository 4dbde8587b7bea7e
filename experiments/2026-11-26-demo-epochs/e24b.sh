# seeds 1 and 2 from a worktree pinned at 03f644c (the preprocessing the 16-epoch runs used)
while kill -0 11227 2>/dev/null; do sleep 10; done
cd /work/wt-e24
for s in 1 2; do
  timeout 2400 .venv/bin/python benchmarks/results/localisation-2026-11-26c/run.py conv-local /tmp/loc4/e24s$s $s 24 > /tmp/loc4/e24s$s.log 2>&1
done
echo done > /tmp/loc4/e24.done
