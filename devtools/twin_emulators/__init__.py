"""Emulators of the platforms the connector writes to, for tests, demos and benchmarks.

Each emulator is an aiohttp application that behaves as its platform documents (not as the
connector would like), with an admin API to inspect its state and inject faults. They run
in-process in tests (`aiohttp.test_utils.TestServer`) or as a server from the command line
(`python -m connector emulate buildingminds --port 8080`).
"""
