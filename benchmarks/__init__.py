"""Speed and quality benchmarks of asen; run one from the repository root as
`python -m benchmarks.<name> --help`. They share benchmarks.harness."""
