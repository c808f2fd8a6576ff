loraroute model eval --scorecard --typo-copies 3 --threads 1 --json scorecard.json
