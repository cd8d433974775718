"""The Lambda functions: one thin handler per workflow step, over the logic in ``bayroute.steps``."""
