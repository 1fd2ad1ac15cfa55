"""Sinks: one module per platform, each turning a closed request into one HTTP call.

The contract every sink keeps (`Sink` protocol in `connector.sinks.base`): `submit` returns a
`SubmitResult` for an answer the pipeline can act on record by record, and raises one of the
`connector.errors.ApiError` classes for everything else, so retry, split and dead-letter logic
branch on types and flags, never on message text.
"""
