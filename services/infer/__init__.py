"""The infer Lambda function (entry point: ``services.infer.handler.handler``)."""
