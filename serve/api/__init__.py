"""The HTTP search service: app, settings, state, loading, schemas, one router per resource."""
