"""The raw queue: publish job lines straight to JetStream and collect their results (nats-py).

Usage: python raw-queue.py [NATS_URL] [JOB_ID]. Run it again after a crash, with the same job id:
lines already queued or answered are not run twice (JetStream drops a line whose `Nats-Msg-Id` it
has seen), and the results already stored are read back from the results stream.
"""

import asyncio
import json
import sys

import nats
from nats.js.api import DeliverPolicy

PREFIX = "loraroute"  # the config's nats.subject_prefix
QUESTIONS = {
    "q1": "What causes high blood pressure?",
    "q2": "How do I reverse a linked list in Python?",
    "q3": "What are the elements of a valid contract?",
}


async def main(url: str, job_id: str) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    # One message per line on <prefix>.jobs.lines.<job id>; the message id makes a resubmission
    # harmless. A job id of letters, digits, '-' and '_' is used in the subject as it is.
    for custom_id, question in QUESTIONS.items():
        line = {
            "type": "line",
            "v": 1,
            "job_id": job_id,
            "custom_id": custom_id,
            "body": {"model": "MoM", "messages": [{"role": "user", "content": question}]},
        }
        await js.publish(
            f"{PREFIX}.jobs.lines.{job_id}",
            json.dumps(line).encode(),
            headers={"Nats-Msg-Id": f"{job_id}:{custom_id}"},
        )
    # Results are kept in the results stream under <prefix>.jobs.results.<job id>.ok (status 200)
    # or .err; an ordered consumer from the start reads every one, however late it connects.
    sub = await js.subscribe(
        f"{PREFIX}.jobs.results.{job_id}.*",
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.ALL,
    )
    answers: dict[str, str] = {}
    while len(answers) < len(QUESTIONS):
        message = await sub.next_msg(timeout=120)
        line = json.loads(message.data)["line"]
        if line["response"] is not None:
            body = line["response"]["body"]
            answers[line["custom_id"]] = (
                f"{body['model']}: {body['choices'][0]['message']['content']}"
            )
        else:
            answers[line["custom_id"]] = (
                f"error {line['error']['code']}: {line['error']['message']}"
            )
    for custom_id in QUESTIONS:
        print(custom_id, answers[custom_id][:100])
    await nc.close()


if __name__ == "__main__":
    asyncio.run(
        main(
            sys.argv[1] if len(sys.argv) > 1 else "nats://127.0.0.1:4222",
            sys.argv[2] if len(sys.argv) > 2 else "raw-demo",
        )
    )
