"""Applications built on the library: benchmarks, the demo, system info, random-weight checkpoints."""
