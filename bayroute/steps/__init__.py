"""The workflow steps' logic: ingest, serialize, infer, threshold.

Each step takes its collaborators (the adapters in :mod:`bayroute.adapters`) in its constructor and its input
as the plain JSON document that its Lambda handler receives, so the handlers in ``services/`` stay thin and
the unit tests pass in-memory fakes. Failures are :mod:`bayroute.errors` classes: their names are the
workflow's error names.
"""
