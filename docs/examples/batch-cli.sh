# submit prints the batch id on stdout and, with --wait, follows it to the end on stderr
batch=$(loraroute batch submit docs/examples/batch-input.jsonl --wait)
loraroute batch status "$batch"
loraroute batch results "$batch" -o answers.jsonl --errors errors.jsonl
