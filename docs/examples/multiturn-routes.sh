python loadtest/multiturn_routes.py --per-set 200 --json multiturn.json
python loadtest/multiturn_routes.py --per-set 100 --cost
