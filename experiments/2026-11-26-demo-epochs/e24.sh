cd /work/main
for s in 0 1 2; do
  timeout 2400 .venv/bin/python benchmarks/results/localisation-2026-11-26c/run.py conv-local /tmp/loc4/e24s$s $s 24 > /tmp/loc4/e24s$s.log 2>&1
done
echo done > /tmp/loc4/e24.done
