"""The ingest Lambda function (entry point: ``services.ingest.handler.handler``)."""
