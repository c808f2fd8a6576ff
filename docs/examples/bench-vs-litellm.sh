python loadtest/bench_vs_litellm.py --reps 3 --json vs-litellm.json --plots docs/img/vs-litellm
