"""Speed, memory and accuracy measurements (`make bench`: benchmarks/bench.py) with JSON results and plots."""
