python loadtest/soak.py --duration 1800 --rate 30 --json soak.json
