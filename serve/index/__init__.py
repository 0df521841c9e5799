"""The FAISS index on disk: build, choose, tune, store, metadata, evaluate and query offline."""
