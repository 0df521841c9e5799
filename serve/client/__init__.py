"""Code that talks to a running service: HTTP client, recall through the API, background server."""
