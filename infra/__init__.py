"""Deployment tooling: the AWS SAM template generator, its IAM checks and the Lambda packager."""
