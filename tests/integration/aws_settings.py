"""Pointing the standard AWS settings at the tests' S3-protocol server, for a test (the
``s3_env`` fixture) or for the nodes of a cluster a module starts."""

from __future__ import annotations

import pytest

# Settings that could redirect or re-credential the client away from the test server.
_AWS_VARS_TO_CLEAR = (
    "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL_S3", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE",
    "AWS_CA_BUNDLE", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy",
)


def point_aws_at(s3_server, mp: pytest.MonkeyPatch, tmp_path_factory) -> None:
    """Set the standard AWS settings (through ``mp``) to reach the test server only."""
    for name in _AWS_VARS_TO_CLEAR:
        mp.delenv(name, raising=False)
    nowhere = tmp_path_factory.mktemp("aws-home")
    mp.setenv("AWS_CONFIG_FILE", str(nowhere / "config"))            # absent files:
    mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(nowhere / "credentials"))  # no ~/.aws
    mp.setenv("NO_PROXY", "127.0.0.1,localhost")
    for name, value in s3_server.env.items():
        mp.setenv(name, value)
