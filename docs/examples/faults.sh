python loadtest/faults.py --json faults.json
