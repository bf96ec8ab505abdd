"""Vector embeddings: the ANN index engine, its builds on the offline store, pushed updates
and the checks of the index asset (see docs/architecture.md, "Vector embeddings")."""
