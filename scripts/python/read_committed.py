"""Reads a whole topic with librdkafka (confluent-kafka), isolation.level=read_committed.

An independent reader for the chaos verifier: it shares no code with kafkajs (nor with its
read_committed patch). Prints one JSON line per record, {"p": partition, "o": offset, "v": value
as hex or null}, ordered by partition and offset, once every partition reached its end (EOF at
the last stable offset). Exits 1 after the timeout.

    python read_committed.py BROKERS TOPIC [TIMEOUT_SECONDS]
"""

import json
import sys
import time
import uuid

from confluent_kafka import Consumer, KafkaError, TopicPartition


def main() -> int:
    brokers, topic = sys.argv[1], sys.argv[2]
    timeout = float(sys.argv[3]) if len(sys.argv) > 3 else 60.0
    consumer = Consumer(
        {
            "bootstrap.servers": brokers,
            "group.id": f"kwa-verify-{uuid.uuid4()}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=timeout)
        partitions = sorted(metadata.topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        pending = set(partitions)
        records = []
        deadline = time.monotonic() + timeout
        while pending:
            if time.monotonic() > deadline:
                print(f"read_committed: timed out, partitions {sorted(pending)} not at their end", file=sys.stderr)
                return 1
            message = consumer.poll(0.5)
            if message is None:
                continue
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    pending.discard(message.partition())
                    continue
                print(f"read_committed: {error}", file=sys.stderr)
                return 1
            value = message.value()
            records.append((message.partition(), message.offset(), None if value is None else value.hex()))
        for partition, offset, value in sorted(records):
            print(json.dumps({"p": partition, "o": offset, "v": value}))
        return 0
    finally:
        consumer.close()


if __name__ == "__main__":
    sys.exit(main())
