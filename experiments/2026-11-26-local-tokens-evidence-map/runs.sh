cd /work/main
for spec in "conv-local local0e16 0 16" "conv-local local1 1 8"; do
  set -- $spec
  timeout 1500 .venv/bin/python /tmp/loc3/run.py $1 /tmp/loc3/$2 $3 $4 > /tmp/loc3/$2.log 2>&1
  for split in val test; do
    timeout 900 .venv/bin/predilect bench localisation-variants --checkpoint /tmp/loc3/$2/checkpoint/model.safetensors --phantom artifacts/phantom --split $split --report /tmp/loc3/$2/var-$split.md > /tmp/loc3/$2/var-$split.log 2>&1
  done
done
echo done > /tmp/loc3/many.done
cd /work/main
for spec in "conv conv0e16 0 16" "conv-local local1e16 1 16" "conv conv1e16 1 16" "conv-local local2e16 2 16"; do
  set -- $spec
  timeout 1500 .venv/bin/python /tmp/loc3/run.py $1 /tmp/loc3/$2 $3 $4 > /tmp/loc3/$2.log 2>&1
  for split in val test; do
    timeout 900 .venv/bin/predilect bench localisation-variants --checkpoint /tmp/loc3/$2/checkpoint/model.safetensors --phantom artifacts/phantom --split $split --report /tmp/loc3/$2/var-$split.md > /tmp/loc3/$2/var-$split.log 2>&1
  done
done
echo done > /tmp/loc3/grid2.done
cd /work/main
for spec in "conv-aligned al0e16 0 16" "conv-aligned al1e16 1 16" "conv-aligned al2e16 2 16"; do
  set -- $spec
  timeout 1500 .venv/bin/python /tmp/loc3/run.py $1 /tmp/loc3/$2 $3 $4 > /tmp/loc3/$2.log 2>&1
  for split in val test; do
    timeout 900 .venv/bin/predilect bench localisation-variants --checkpoint /tmp/loc3/$2/checkpoint/model.safetensors --phantom artifacts/phantom --split $split --report /tmp/loc3/$2/var-$split.md > /tmp/loc3/$2/var-$split.log 2>&1
  done
done
echo done > /tmp/loc3/grid3.done
