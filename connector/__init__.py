"""building-twin-connector: Kafka change events onboarded into building digital-twin platforms.

The package is laid out in the order a record travels (see docs/design.md §2):
config → source → intake (decode) → window → delivery → sinks (each platform one package
with its budget, auth and, for BuildingMinds, the batch tracker) → commits, with deadletter,
outcomes, receipts, metrics, logs and errors beside them, and `app` wiring them together.
"""

__version__ = "0.1.0"
