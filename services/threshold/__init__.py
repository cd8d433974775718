"""The threshold Lambda function (entry point: ``services.threshold.handler.handler``)."""
