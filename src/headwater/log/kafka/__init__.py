"""The event log on a Kafka-protocol broker (``kafka://``): :class:`KafkaLog` (:mod:`.log`),
its message value encoding (:mod:`.codec`). Needs the ``kafka`` extra (confluent-kafka)."""

from headwater.log.kafka.log import KafkaLog

__all__ = ["KafkaLog"]
