python loadtest/fuzz_api.py --requests 10000 --timeout 20 --seed 0 --json fuzz.json
