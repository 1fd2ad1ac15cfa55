"""The benchmark harness: `python -m bench.run` measures the connector against docs/design.md §5.

Every scenario runs the real pieces as separate processes: a Kafka broker (devbroker), the
BuildingMinds emulator (`python -m connector emulate buildingminds`) and the connector
(`python -m connector run`). See `bench/README.md` for the scenarios, targets and numbers.
"""
