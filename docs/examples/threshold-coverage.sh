python loadtest/threshold_coverage.py --model models/loraroute-domain --threshold 0.6 --out coverage.png
