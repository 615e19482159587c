"""User-facing errors of the pipelines, importable without Ray or MLflow (the ``arinv`` command
catches them and prints one line, exit status 2)."""


class RegistryError(ValueError):
    """A model URI does not resolve to a usable arinv model; the message names the URI, the
    store searched and what to do."""


class TrackingUnreachable(ConnectionError):
    """The MLflow tracking server did not answer; the message names its URI."""


class TrackingRefused(PermissionError):
    """The MLflow tracking server answered 401 (no or wrong credentials) or 403 (no permission);
    the message names its URI and the variables that carry the credentials."""


class ModelNotFound(RegistryError):
    """The registry answered but holds no such model, alias or version (as opposed to a model
    of the wrong kind): a command that can train what it needs may do so."""
