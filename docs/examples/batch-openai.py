"""A batch through the official OpenAI client: upload, create, wait, read the output file.

Usage: python batch-openai.py [BASE_URL] [INPUT.jsonl]
"""

import json
import sys
import time

from openai import OpenAI

base_url = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080/v1"
path = sys.argv[2] if len(sys.argv) > 2 else "docs/examples/batch-input.jsonl"
client = OpenAI(base_url=base_url, api_key="unused")

with open(path, "rb") as f:
    uploaded = client.files.create(file=f, purpose="batch")
batch = client.batches.create(
    input_file_id=uploaded.id,
    endpoint="/v1/chat/completions",
    completion_window="24h",
    metadata={"job": "docs-example"},
)
while batch.status not in ("completed", "failed", "expired", "cancelled"):
    time.sleep(1)
    batch = client.batches.retrieve(batch.id)
print(batch.id, batch.status, batch.request_counts)
if batch.output_file_id:
    for line in client.files.content(batch.output_file_id).text.splitlines():
        row = json.loads(line)
        body = row["response"]["body"]  # vLLM's answer; its model is the adapter that wrote it
        print(row["custom_id"], body["model"], body["choices"][0]["message"]["content"][:60])
