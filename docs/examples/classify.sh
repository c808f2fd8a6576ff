loraroute classify "Can I take ibuprofen with amoxicillin?"
loraroute classify --config config/config.yaml --json "How do I undo a git rebase?"
loraroute classify --model models/loraroute-mmlu-pro --top 5 "What is a Turing machine?"
