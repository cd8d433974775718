"""The serialize Lambda function (entry point: ``services.serialize.handler.handler``)."""
