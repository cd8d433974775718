"""The replay Lambda function (entry point: ``services.replay.handler.handler``)."""
