"""predilect.benchmarks: load generation, baselines and reports (the `bench` extra)."""
