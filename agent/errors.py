"""Errors of the agent, classified by what should happen next.

::

    AgentError (reason)
    ├── ConfigError        a human must fix the agent's config (stalled)
    │   └── AlreadyRunning another agent holds the state directory's lock
    ├── ServerError        the reconciler answered badly or not at all (transient: back off)
    │   └── AuthError      401/403: re-register with the join token
    └── WorkloadError      converging one workload failed (reported as Failed)
        ├── DownloadError  fetching the artifact failed for good (4xx: the release's URL)
        │   ├── Unreachable the artifact server could not be reached, answered 5xx/408/429,
        │   │              or the disk is full: transient, retried with backoff, never Failed
        │   └── Superseded a newer desired generation arrived: the download was dropped
        ├── VerifyError    size or SHA-256 mismatch: nothing was touched
        ├── UnpackError    the archive is unsafe or unreadable
        ├── SupervisorError a process could not be started, stopped or verified as new
        └── ProveError     the restarted version could not be proven to run
"""

from __future__ import annotations


class AgentError(Exception):
    """Base of every agent error; ``reason`` is a short CamelCase code for reports."""

    reason = "AgentError"


class ConfigError(AgentError):
    reason = "ConfigInvalid"


class AlreadyRunning(ConfigError):
    reason = "AgentAlreadyRunning"


class ServerError(AgentError):
    reason = "ServerUnreachable"


class AuthError(ServerError):
    reason = "Unauthorized"


class WorkloadError(AgentError):
    reason = "WorkloadFailed"


class DownloadError(WorkloadError):
    reason = "DownloadFailed"


class Unreachable(DownloadError):
    """Not a failure of the version: the network, the artifact server or the disk is not
    ready yet (a node that just booted). Retried with backoff; reported as Downloading."""

    reason = "DownloadRetrying"


class Superseded(DownloadError):
    """Not a failure: the document being converged is no longer the latest one."""

    reason = "Superseded"


class VerifyError(WorkloadError):
    reason = "VerifyFailed"


class UnpackError(WorkloadError):
    reason = "UnsafeArchive"


class ProveError(WorkloadError):
    reason = "ProveFailed"


class SupervisorError(WorkloadError):
    reason = "StartFailed"
