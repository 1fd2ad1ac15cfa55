"""Development tools of building-twin-connector: the local Kafka broker (`devbroker`) and
the demo (`demo`). Not part of the connector's wheel or image."""
