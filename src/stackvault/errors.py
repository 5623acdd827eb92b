"""One exception hierarchy for StackVault; each error carries its documented exit code."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit statuses, documented in docs/exit-codes.md. Never renumber."""

    OK = 0
    ERROR = 1  # fatal error, or `check` found damage
    USAGE = 2  # bad flags, bad config, bad input
    PARTIAL = 3  # finished, but some source data could not be read / some items failed
    NO_REPOSITORY = 10  # the repository does not exist
    LOCKED = 11  # the repository is locked by another process
    WRONG_PASSWORD = 12  # no key could be opened with the password
    STORAGE_UNAVAILABLE = 13  # storage unreachable or refusing requests after retries
    STORAGE_FULL = 14  # no space left on the storage
    INTEGRITY_WARNING = 20  # `integrity check`: the worst finding is a warning
    INTEGRITY_CRITICAL = 21  # `integrity check`: a critical finding (or a rule could not run)
    INTERRUPTED = 130  # SIGINT / SIGTERM


class StackVaultError(Exception):
    """Base of every error meant for the user. The message says what to do next."""

    exit_code: ExitCode = ExitCode.ERROR

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:
        base = super().__str__()
        return f"{base}\n  hint: {self.hint}" if self.hint else base


class UsageError(StackVaultError):
    exit_code = ExitCode.USAGE


class ConfigError(UsageError):
    """The configuration is invalid; the message lists every problem with its path."""


class PartialFailure(StackVaultError):
    exit_code = ExitCode.PARTIAL


class IntegrityWarning(StackVaultError):
    exit_code = ExitCode.INTEGRITY_WARNING


class IntegrityCritical(StackVaultError):
    exit_code = ExitCode.INTEGRITY_CRITICAL


class Interrupted(StackVaultError):
    exit_code = ExitCode.INTERRUPTED


# --- storage -----------------------------------------------------------------------------


class StorageError(StackVaultError):
    """A storage operation failed permanently."""

    exit_code = ExitCode.STORAGE_UNAVAILABLE


class TransientStorageError(StorageError):
    """A storage operation failed in a way that may succeed when retried (timeouts, 5xx)."""


class StorageUnavailable(StorageError):
    """The storage could not be reached (after retries)."""


class StorageFull(StorageError):
    exit_code = ExitCode.STORAGE_FULL


class ObjectNotFound(StorageError):
    """The named object does not exist."""

    exit_code = ExitCode.ERROR


class ObjectExists(StorageError):
    """put-if-absent found the object already there."""

    exit_code = ExitCode.ERROR


class ReadOnlyStorage(StorageError):
    exit_code = ExitCode.USAGE


# --- repository --------------------------------------------------------------------------


class RepositoryError(StackVaultError):
    exit_code = ExitCode.ERROR


class RepositoryNotFound(RepositoryError):
    exit_code = ExitCode.NO_REPOSITORY


class RepositoryExists(RepositoryError):
    exit_code = ExitCode.USAGE


class WrongPassword(RepositoryError):
    exit_code = ExitCode.WRONG_PASSWORD


class RepositoryLocked(RepositoryError):
    exit_code = ExitCode.LOCKED


class IntegrityError(RepositoryError):
    """Data read from the repository failed authentication or did not match its id."""


class UnsupportedFormat(RepositoryError):
    """The repository was written by a newer format version than this program knows."""


class SnapshotNotFound(RepositoryError):
    exit_code = ExitCode.USAGE


# --- data sources ------------------------------------------------------------------------


class SourceError(StackVaultError):
    """A data source (database, folder, service) could not be read, backed up or restored."""


class SourceUnavailable(SourceError):
    """The store could not be reached or opened (missing file, server down, no permission)."""


class SourceInUse(SourceError):
    """A restore target is in use by another process; stop it first, or force the restore."""


class SourceCorrupt(SourceError):
    """Data failed a store-native check (e.g. PRAGMA integrity_check) or its artifact's
    SHA-256; nothing was written from it."""
