"""The monitor Lambda function (entry point: ``services.monitor.handler.handler``)."""
