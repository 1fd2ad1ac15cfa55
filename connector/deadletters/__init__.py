"""Working with the dead-letter topic: `dead-letters list`, `dead-letters replay` and `story`.

- `scan`: reads a topic from a time range to the end offsets captured at start, without a
  consumer group, and parses dead letters from their headers (`Letter`), with the filters of
  the commands (`Filters`);
- `edit`: the edits a replay may apply to a record (RFC 6902 JSON Patch, a JMESPath
  expression);
- `replay`: re-drives dead letters with their history headers, idempotent per replay ID;
- `story`: what the connector can tell about one external ID.

Must not: write to the dead-letter topic. It is read, never rewritten: a dead letter stays
where it is whatever a replay does with it.
"""
