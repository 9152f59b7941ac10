"""session.toml: the document (schema, validation, paths) and its one writer, the store."""
