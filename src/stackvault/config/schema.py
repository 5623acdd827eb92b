"""The schema of stackvault.yaml (pydantic v2): the one source of validation, example and docs."""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

from stackvault.config.base import (  # noqa: F401 - re-exported: the schema's API
    _DURATION,
    _DURATION_HINT,
    _ENV_RE,
    _HEADER_RE,
    _LOCATION_FORMS,
    _SCHEME,
    _UNITS,
    _USERINFO,
    CONFIG_VERSION,
    DEFAULT_PASSWORD_ENV,
    NAME_RE,
    SECRET_WORDS,
    Command,
    ConfigPath,
    Duration,
    EnvName,
    HeaderName,
    Loc,
    Location,
    Name,
    NonEmptyStr,
    TypeDoc,
    _command,
    _duration,
    _env_name,
    _error,
    _from_file,
    _given,
    _header_name,
    _location,
    _looks_secret,
    _Model,
    _name,
    _non_empty,
    _path_text,
    _problems_error,
    _redetail,
    _resolve_path,
    format_duration,
    parse_duration,
)
from stackvault.config.integrity_schema import IntegrityConfig
from stackvault.config.notify_schema import NotificationsConfig
from stackvault.config.schedule_schema import ScheduleConfig
from stackvault.errors import ConfigError

# --------------------------------------------------------------------------- hooks, targets


def _http_url(value: str) -> str:
    if not re.match(r"^https?://[^/\s]+", value):
        raise _error("url", "must be an http:// or https:// URL")
    if _USERINFO.search(value):
        raise _error("secret_in_config", "credentials do not belong in the URL: send them in "
                     "a header named in headers_env")
    return value


class HttpCall(_Model):
    """An HTTP request made by a hook, e.g. to pause the writers of a store."""

    secret_advice: ClassVar[str] = ("secrets are never written in stackvault.yaml: send them "
                                    "in headers read from environment variables (headers_env)")

    url: Annotated[str, AfterValidator(_http_url), TypeDoc("URL")] = Field(
        description="The URL to call (http or https; no credentials in it).",
        examples=["http://127.0.0.1:8080/admin/pause-ingest"])
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = Field(
        "POST", description="The HTTP method.")
    headers_env: dict[HeaderName, EnvName] = Field(
        default_factory=dict,
        description="Request headers whose values are read from environment variables: "
                    "header name -> variable name (e.g. Authorization: APP_ADMIN_TOKEN).",
        examples=[{"Authorization": "APP_ADMIN_TOKEN"}])
    timeout: Duration = Field(
        30, description="How long to wait for the answer; no answer or a status of 400 or "
                        "more fails the hook.")


class Hook(_Model):
    """One hook: a command or an HTTP call. A failing pre hook skips what it guards."""

    command: Command | None = Field(
        None, description="A command: a string runs in the shell, a list runs the program "
                          "directly. Exit status 0 is success.",
        examples=["systemctl stop app-worker"])
    http: HttpCall | None = Field(None, description="An HTTP call (instead of `command`).")
    timeout: Duration = Field(
        300, description="With `command`: how long it may run before it is stopped and "
                         "the hook fails.")

    @classmethod
    def raw_checks(cls, data: dict[str, Any]) -> list[tuple[Loc, str]]:
        given = _given(data, "command", "http")
        if len(given) != 1:
            return [((), "a hook has exactly one of `command` or `http`")]
        if given == ["http"] and "timeout" in data:
            return [(("timeout",), "the timeout of an http hook goes inside `http`")]
        return []


class Hooks(_Model):
    """Hooks run before and after a backup (of one component, or of the whole stack)."""

    pre: list[Hook] = Field(default_factory=list,
                            description="Run in order before the backup; the first failure "
                                        "stops and fails it.")
    post: list[Hook] = Field(default_factory=list,
                             description="Run in order after the backup, also when it failed "
                                         "(e.g. to resume writers).")


class Targets(_Model):
    """Recovery objectives that drills and reports check this component against."""

    rto: Duration | None = Field(
        default=None,
        description="Recovery time objective: the longest a restore of this component may take.",
        examples=["1h"])
    rpo: Duration | None = Field(
        default=None,
        description="Recovery point objective: the most data, in time, that may be lost (the "
                    "longest gap between successful backups).",
        examples=["24h"])


# --------------------------------------------------------------------------- components


_PASSWORD_ADVICE = ("the password is never written in stackvault.yaml: use password_env (the "
                    "name of an environment variable) or password_file (a file holding it)")


class ComponentBase(_Model):
    """Fields every component has, whatever its type."""

    depends_on: list[Name] = Field(
        default_factory=list,
        description="Components that must be restored before this one (restore order and "
                    "the critical path follow these).")
    hooks: Hooks = Field(default_factory=Hooks,
                         description="Hooks around this component's backup.")
    targets: Targets = Field(default_factory=Targets,
                             description="RTO/RPO targets for this component; none by default.")


class PostgresComponent(ComponentBase):
    """A PostgreSQL server: one or more databases, optionally the roles (globals)."""

    secret_advice: ClassVar[str] = _PASSWORD_ADVICE

    type: Literal["postgres"] = Field(description="postgres: a PostgreSQL server; one or "
                                      "more databases, optionally its roles (globals).")
    host: NonEmptyStr = Field("localhost", description="Server host name, IP address, or the "
                              "folder of its Unix socket.")
    port: int = Field(5432, ge=1, le=65535, description="Server port.")
    user: NonEmptyStr = Field("postgres", description="User to connect as; needs to read every "
                              "table backed up (and to create databases, to restore).")
    password_env: EnvName | None = Field(
        None, description="Environment variable holding the password. Leave out both "
                          "password settings for peer/trust authentication or ~/.pgpass.",
        examples=["PGPASSWORD"])
    password_file: ConfigPath | None = Field(
        None, description="File holding the password (its first line).",
        examples=["/run/secrets/pg_password"])
    databases: list[NonEmptyStr] = Field(
        min_length=1, description="Databases to back up.", examples=[["app"]])
    globals: bool = Field(False, description="Also back up roles and tablespaces "
                          "(pg_dumpall --globals-only).")
    format: Literal["custom", "directory"] = Field(
        "custom", description="Dump format (uncompressed; the repository compresses): "
                              "`custom` is one stream, `directory` allows parallel jobs.")
    jobs: int = Field(1, ge=1, le=64, description="Parallel dump and restore jobs; more than "
                      "1 needs `format: directory`.")
    pg_bin_dir: ConfigPath | None = Field(
        None, description="Folder with pg_dump/pg_restore; default: the ones matching the "
                          "server's major version found on this machine.",
        examples=["/usr/lib/postgresql/16/bin"])
    tables: list[NonEmptyStr] | None = Field(
        None, description="Only these tables (`schema.table`, or `table` in schema public); "
                          "default: every table.", examples=[["public.documents"]])
    checksums: bool = Field(
        True, description="Record a content checksum per table (read in the dump's snapshot, "
                          "checked after every restore). `false` keeps exact row counts only: "
                          "a cheaper scan, for servers short of CPU.")

    @classmethod
    def raw_checks(cls, data: dict[str, Any]) -> list[tuple[Loc, str]]:
        out: list[tuple[Loc, str]] = []
        if len(_given(data, "password_env", "password_file")) > 1:
            out.append(((), "give at most one of password_env and password_file"))
        jobs = data.get("jobs")
        if (isinstance(jobs, int) and not isinstance(jobs, bool) and jobs > 1
                and data.get("format", "custom") != "directory"):
            out.append((("jobs",), "parallel jobs need `format: directory`"))
        return out


class SqliteComponent(ComponentBase):
    """A SQLite database file, copied consistently while the application writes."""

    type: Literal["sqlite"] = Field(description="sqlite: a SQLite database file, copied "
                                    "consistently while the application writes.")
    path: ConfigPath = Field(description="The database file.",
                             examples=["/srv/app/data/jobs.sqlite3"])
    force_restore: bool = Field(False, description="Restore over the database even when "
                                "another process has it open (otherwise refused).")


class FilesComponent(ComponentBase):
    """Folders and single files (configuration, .env, uploads)."""

    type: Literal["files"] = Field(description="files: folders and single files "
                                   "(configuration, .env, uploads).")
    paths: list[ConfigPath] = Field(min_length=1, description="Files and folders to back up.",
                                    examples=[["/srv/app/config"]])
    exclude: list[NonEmptyStr] = Field(default_factory=list,
                                       description="Glob patterns of paths to leave out.",
                                       examples=[["*.tmp", "cache/"]])


_S3_LOCATION_RE = re.compile(r"(s3://)?[A-Za-z0-9][A-Za-z0-9._-]{0,254}(/.*)?", re.DOTALL)


def _s3_location(value: str) -> str:
    if not _S3_LOCATION_RE.fullmatch(value):
        raise _error("s3_location", "write BUCKET or BUCKET/PREFIX, e.g. media or "
                     "media/uploads (a prefix is a folder: a '/' is added if missing)")
    return value


S3Location = Annotated[str, AfterValidator(_s3_location), TypeDoc("BUCKET[/PREFIX]")]


class S3Component(ComponentBase):
    """Buckets, or prefixes of buckets, of S3 or an S3-compatible store (MinIO, SeaweedFS)."""

    secret_advice: ClassVar[str] = ("S3 keys are never written in stackvault.yaml: name the "
                                    "environment variables that hold them (access_key_env, "
                                    "secret_key_env), or leave both out for the usual AWS "
                                    "credential chain")

    type: Literal["s3"] = Field(description="s3: buckets or prefixes of S3 or an "
                                "S3-compatible store (MinIO, SeaweedFS, Ceph RGW): objects "
                                "with content type, user metadata and tags.")
    buckets: list[S3Location] = Field(
        min_length=1, description="What to back up: `BUCKET` (every object) or "
                                  "`BUCKET/PREFIX` (the objects under that folder).",
        examples=[["media", "documents/uploads"]])
    endpoint_url: Annotated[str, AfterValidator(_http_url), TypeDoc("URL")] | None = Field(
        None, description="The S3 endpoint (no credentials in it); default: AWS.",
        examples=["http://127.0.0.1:9000"])
    region: NonEmptyStr | None = Field(
        None, description="The region; default: AWS_REGION, else us-east-1.",
        examples=["eu-central-1"])
    access_key_env: EnvName | None = Field(
        None, description="Environment variable holding the access key id. Leave out both "
                          "key settings for the usual AWS chain (AWS_ACCESS_KEY_ID, "
                          "profiles, instance roles).", examples=["MINIO_ACCESS_KEY"])
    secret_key_env: EnvName | None = Field(
        None, description="Environment variable holding the secret access key.",
        examples=["MINIO_SECRET_KEY"])
    verify_tls: bool = Field(True, description="Check the endpoint's TLS certificate.")
    mirror: bool = Field(False, description="On restore, also delete the objects under the "
                         "restored buckets/prefixes that the snapshot does not have "
                         "(otherwise they are kept).")

    @classmethod
    def raw_checks(cls, data: dict[str, Any]) -> list[tuple[Loc, str]]:
        if len(_given(data, "access_key_env", "secret_key_env")) == 1:
            return [((), "give both access_key_env and secret_key_env, or neither")]
        return []


_REDIS_URL = re.compile(r"rediss?://(\[[0-9A-Fa-f:.]+\]|[^/:@\[\]?#]+)(:\d{1,5})?(/\d+)?/?")


def _redis_url(value: str) -> str:
    # Never echo the value: it may hold a password.
    if _USERINFO.search(value):
        raise _error("secret_in_config", "credentials do not belong in the URL: give "
                     "`username` and `password_env` (or `password_file`) instead")
    if not _REDIS_URL.fullmatch(value):
        raise _error("url", "must look like redis://HOST[:PORT][/DB] or rediss://HOST[:PORT]"
                     "[/DB] (TLS)")
    return value


RedisUrl = Annotated[str, AfterValidator(_redis_url), TypeDoc("URL")]


class RedisComponent(ComponentBase):
    """A Redis server (standalone): its databases, every type, with TTLs."""

    secret_advice: ClassVar[str] = _PASSWORD_ADVICE

    type: Literal["redis"] = Field(description="redis: a Redis server (standalone, not "
                                   "Cluster); every type, TTLs kept.")
    url: RedisUrl = Field("redis://localhost:6379", description="The server: "
                          "redis://HOST[:PORT][/DB], or rediss:// for TLS. A database number "
                          "here means only that database. No credentials in it.",
                          examples=["redis://127.0.0.1:6379"])
    username: NonEmptyStr | None = Field(None, description="ACL user name (Redis 6+); "
                                         "default: the `default` user.",
                                         examples=["backup"])
    password_env: EnvName | None = Field(
        None, description="Environment variable holding the password. Leave out both "
                          "password settings for a server without one.",
        examples=["REDIS_PASSWORD"])
    password_file: ConfigPath | None = Field(
        None, description="File holding the password (its first line).",
        examples=["/run/secrets/redis_password"])
    databases: list[Annotated[int, Field(ge=0)]] | None = Field(
        None, description="Database numbers to back up; default: every non-empty one.",
        examples=[[0, 1]])
    mode: Literal["logical", "rdb"] = Field(
        "logical", description="`logical`: SCAN + DUMP of every key, streamed (any Redis, "
                               "managed ones too; not one point in time across keys). `rdb`: "
                               "the server's own point-in-time snapshot via `redis-cli --rdb` "
                               "(needs SYNC permission, redis-cli and redis-server here).")
    redis_bin_dir: ConfigPath | None = Field(
        None, description="Folder with redis-cli and redis-server (rdb mode and restoring "
                          "an rdb backup); default: the ones on PATH.",
        examples=["/usr/bin"])
    force_restore: bool = Field(False, description="Restore into databases that hold keys "
                                "(emptying them first) without --force.")

    @classmethod
    def raw_checks(cls, data: dict[str, Any]) -> list[tuple[Loc, str]]:
        out: list[tuple[Loc, str]] = []
        if len(_given(data, "password_env", "password_file")) > 1:
            out.append(((), "give at most one of password_env and password_file"))
        url = data.get("url")
        if (isinstance(url, str) and re.search(r"^rediss?://[^/]+/\d+/?$", url)
                and data.get("databases") is not None):
            out.append((("databases",), "the url already names a database: give the "
                        "database in one place only"))
        return out


_CHROMA_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,510}[A-Za-z0-9]")


def _chroma_name(value: str) -> str:
    if not _CHROMA_NAME.fullmatch(value):
        raise _error("collection_name", "a ChromaDB collection name has 3-512 characters "
                     "from a-z, A-Z, 0-9, '.', '_' and '-', and starts and ends with a letter "
                     "or digit")
    return value


ChromaName = Annotated[str, AfterValidator(_chroma_name), TypeDoc("collection name")]


class ChromaComponent(ComponentBase):
    """ChromaDB collections: a PersistentClient folder or a ChromaDB server."""

    secret_advice: ClassVar[str] = ("the ChromaDB token is never written in stackvault.yaml: "
                                    "name the environment variable that holds it (token_env)")

    type: Literal["chroma"] = Field(description="chroma: ChromaDB collections (metadata, "
                                    "configuration, ids, embeddings, documents, metadatas, "
                                    "uris) of a PersistentClient folder or a server. Needs "
                                    "`pip install 'stackvault[chroma]'`.")
    path: ConfigPath | None = Field(
        None, description="The PersistentClient folder (the one holding chroma.sqlite3). "
                          "Give `path` or `host`, not both.",
        examples=["/srv/app/chroma"])
    host: NonEmptyStr | None = Field(
        None, description="A ChromaDB server's host name or address (instead of `path`).",
        examples=["127.0.0.1"])
    port: int = Field(8000, ge=1, le=65535, description="The server's port.")
    ssl: bool = Field(False, description="Connect to the server over HTTPS.")
    token_env: EnvName | None = Field(
        None, description="Environment variable holding the server's auth token (sent as a "
                          "bearer token); leave out for a server without auth.",
        examples=["CHROMA_TOKEN"])
    tenant: NonEmptyStr = Field("default_tenant", description="The ChromaDB tenant.")
    database: NonEmptyStr = Field("default_database", description="The ChromaDB database.")
    collections: list[ChromaName] | None = Field(
        None, description="Collections to back up; default: every collection.",
        examples=[["documents"]])
    batch_size: int = Field(500, ge=1, le=100_000, description="Records per page read or "
                            "written (memory holds one page).")
    force_restore: bool = Field(False, description="Restore over collections that hold "
                                "records (replacing them) without --force.")

    @classmethod
    def raw_checks(cls, data: dict[str, Any]) -> list[tuple[Loc, str]]:
        given = _given(data, "path", "host")
        if len(given) != 1:
            return [((), "give exactly one of `path` (a PersistentClient folder) and `host` "
                         "(a ChromaDB server)")]
        if given == ["path"] and data.get("token_env") is not None:
            return [(("token_env",), "token_env is for a server (`host`), not a folder")]
        return []


class QdrantComponent(ComponentBase):
    """Qdrant collections: a Qdrant server or a local-mode folder (QdrantClient(path=...))."""

    secret_advice: ClassVar[str] = ("the Qdrant API key is never written in stackvault.yaml: "
                                    "name the environment variable that holds it "
                                    "(api_key_env)")

    type: Literal["qdrant"] = Field(description="qdrant: Qdrant collections (configuration, "
                                    "payload indexes, aliases, points with every vector and "
                                    "payload) of a server or a local-mode folder. Needs "
                                    "`pip install 'stackvault[qdrant]'`.")
    url: Annotated[str, AfterValidator(_http_url), TypeDoc("URL")] | None = Field(
        None, description="A Qdrant server's REST URL (no credentials in it). Give `url` or "
                          "`path`, not both.", examples=["http://127.0.0.1:6333"])
    path: ConfigPath | None = Field(
        None, description="A local-mode folder (what QdrantClient(path=...) opens). Only one "
                          "process may open it at a time: stop the application for backups "
                          "and restores (e.g. with hooks).", examples=["/srv/app/qdrant"])
    api_key_env: EnvName | None = Field(
        None, description="Environment variable holding the server's API key; leave out "
                          "for a server without one.", examples=["QDRANT_API_KEY"])
    collections: list[NonEmptyStr] | None = Field(
        None, description="Collections to back up; default: every collection.",
        examples=[["chunks"]])
    batch_size: int = Field(256, ge=1, le=100_000, description="Points per scroll or upsert "
                            "request (memory holds one batch).")
    sample_queries: int = Field(3, ge=0, le=20, description="Points per collection whose "
                                "search results (top 5 for each of their vectors) are "
                                "recorded at backup time and must come back after a restore.")
    force_restore: bool = Field(False, description="Restore over collections and aliases "
                                "that already exist (replacing them) without --force.")

    @classmethod
    def raw_checks(cls, data: dict[str, Any]) -> list[tuple[Loc, str]]:
        given = _given(data, "url", "path")
        if len(given) != 1:
            return [((), "give exactly one of `url` (a Qdrant server) and `path` (a "
                         "local-mode folder)")]
        if given == ["path"] and data.get("api_key_env") is not None:
            return [(("api_key_env",), "api_key_env is for a server (`url`), not a folder")]
        return []


# One member per component type, told apart by `type`.
Component = Annotated[PostgresComponent | SqliteComponent | FilesComponent | S3Component
                      | RedisComponent | ChromaComponent | QdrantComponent,
                      Field(discriminator="type")]
COMPONENT_TYPES: dict[str, type[ComponentBase]] = {
    "postgres": PostgresComponent, "sqlite": SqliteComponent, "files": FilesComponent,
    "s3": S3Component, "redis": RedisComponent, "chroma": ChromaComponent,
    "qdrant": QdrantComponent}


# --------------------------------------------------------------------------- the stack


class RepositoryConfig(_Model):
    """Where the stack's snapshots go, and where its password comes from."""

    secret_advice: ClassVar[str] = ("the repository password is never written in "
                                    "stackvault.yaml: use password_env, password_file or "
                                    "password_command")

    location: Location = Field(
        description="The repository: a folder (/srv/backup/stackvault, local:PATH), "
                    "s3:http(s)://HOST[:PORT]/BUCKET[/PREFIX] (MinIO, SeaweedFS, Ceph) or "
                    "s3://BUCKET[/PREFIX] (AWS; endpoint from AWS_ENDPOINT_URL).",
        examples=["/srv/backup/stackvault"])
    password_env: EnvName | None = Field(
        None, description="Environment variable holding the repository password. "
                          "Give at most one of the three password settings.",
        json_schema_extra={"doc_default": DEFAULT_PASSWORD_ENV})
    password_file: ConfigPath | None = Field(
        None, description="File holding the repository password (its first line).",
        examples=["/etc/stackvault/password"])
    password_command: Command | None = Field(
        None, description="Command whose output is the repository password.",
        examples=["pass show backup/stackvault"])

    @classmethod
    def raw_checks(cls, data: dict[str, Any]) -> list[tuple[Loc, str]]:
        if len(_given(data, "password_env", "password_file", "password_command")) > 1:
            return [((), "give at most one of password_env, password_file and "
                         "password_command")]
        return []

    @model_validator(mode="after")
    def _default_password(self) -> RepositoryConfig:
        if self.password_file is None and self.password_command is None \
                and self.password_env is None:
            self.password_env = DEFAULT_PASSWORD_ENV
        return self


class SearchProbe(_Model):
    """A vector search that must find a given point or record."""

    collection: NonEmptyStr = Field(description="The collection to search.",
                                    examples=["chunks"])
    near_id: str | int = Field(description="Search with the stored vector of this point or "
                               "record (so no model is needed).", examples=[17])
    top: int = Field(5, ge=1, le=100, description="How many results to look at.")


class Probe(_Model):
    """A check a restore drill runs against the restored copy (never the live store). The
    probe passes when what it finds equals `expect` (as text), or, without `expect`, when it
    finds anything."""

    name: NonEmptyStr | None = Field(None, description="A name for reports.",
                                     examples=["documents are there"])
    component: Name = Field(description="The component it checks.", examples=["app_db"])
    sql: NonEmptyStr | None = Field(
        None, description="postgres, sqlite: a query; it finds the first column of the first "
                          "row.", examples=["SELECT count(*) FROM documents"])
    database: NonEmptyStr | None = Field(
        None, description="postgres: which of the component's databases `sql` runs in "
                          "(default: the first).")
    key: NonEmptyStr | None = Field(
        None, description="redis: a key that must exist; it finds the key's type. s3: an "
                          "object key (below the first bucket/prefix); it finds its size.",
        examples=["config:model"])
    file: NonEmptyStr | None = Field(None, description="files: a file (its absolute path as "
                                     "backed up) that must exist; it finds its SHA-256.",
                                     examples=["/srv/rag/config/settings.yaml"])
    search: SearchProbe | None = Field(
        None, description="qdrant, chroma: a search; it finds the ids of the results, "
                          "comma-separated, and passes when `expect` is among them.")
    expect: str | int | None = Field(None, description="What the probe must find.",
                                     examples=["42"])

    @classmethod
    def raw_checks(cls, data: dict[str, Any]) -> list[tuple[Loc, str]]:
        if len(_given(data, "sql", "key", "file", "search")) != 1:
            return [((), "a probe has exactly one of `sql`, `key`, `file` or `search`")]
        return []


class DrillConfig(_Model):
    """Restore drills (`stackvault drill`): where to restore, and what to check."""

    targets: dict[Name, NonEmptyStr] = Field(
        default_factory=dict,
        description="Per component, the scratch target to restore into (as `--to` takes it); "
                    "default: one the component's type picks (a temporary file or folder, a "
                    "scratch database, a collection prefix). Never the live store.",
        examples=[{"app_db": "/var/tmp/drill/app.db"}])
    probes: list[Probe] = Field(default_factory=list,
                                description="Checks run against the restored copies.")


class StackConfig(_Model):
    """A stack: its repository, its components and hooks around the whole backup."""

    version: Literal[1] = Field(description="Version of this file's format: 1.")
    repository: RepositoryConfig = Field(description="Where snapshots are stored.")
    hooks: Hooks = Field(default_factory=Hooks,
                         description="Hooks around the backup of the whole stack (before the "
                                     "first component, after the last).")
    components: dict[Name, Component] = Field(
        min_length=1, description="The stack's components, by name; `type` says which kind "
                                  "each is.")
    drill: DrillConfig = Field(default_factory=DrillConfig,
                               description="Restore drills: scratch targets and probes.")
    integrity: IntegrityConfig = Field(
        default_factory=lambda: IntegrityConfig(),
        description="Rules across stores for `stackvault integrity check|fix`.")
    notifications: NotificationsConfig = Field(
        default_factory=NotificationsConfig,
        description="Where the outcome of backups, restores, drills and integrity checks "
                    "is reported (webhook, Slack, Discord, email, ping URLs).")
    schedule: ScheduleConfig = Field(
        default_factory=ScheduleConfig,
        description="When backup, forget+prune, check, drill and integrity run (`stackvault "
                    "serve`, `stackvault schedule install`).")

    _source: Path | None = PrivateAttr(None)
    _sha256: str = PrivateAttr("")

    @field_validator("version", mode="before")
    @classmethod
    def _version(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool) and value > CONFIG_VERSION:
            raise _error("version", f"this StackVault reads config version {CONFIG_VERSION}; "
                         f"version {value} needs a newer StackVault")
        return value

    @classmethod
    def raw_checks(cls, data: dict[str, Any]) -> list[tuple[Loc, str]]:
        from stackvault.config.integrity_schema import integrity_problems

        return (graph_problems(data.get("components"))
                + drill_problems(data.get("components"), data.get("drill"))
                + integrity_problems(data.get("components"), data.get("integrity")))

    @property
    def source(self) -> Path | None:
        """The file this config was loaded from (None when built in code)."""
        return self._source

    @property
    def sha256(self) -> str:
        """SHA-256 of the file's bytes ('' when built in code): recorded in stack manifests."""
        return self._sha256


# --------------------------------------------------------------------------- dependencies


def drill_problems(components: Any, drill: Any) -> list[tuple[Loc, str]]:
    """Drill targets and probes that name components the config does not have."""
    if not isinstance(components, dict) or not isinstance(drill, dict):
        return []
    known = ", ".join(sorted(k for k in components if isinstance(k, str)))
    out: list[tuple[Loc, str]] = []
    targets = drill.get("targets")
    for name in targets if isinstance(targets, dict) else []:
        if name not in components:
            out.append((("drill", "targets", name),
                        f"unknown component '{name}' (the config has: {known})"))
    probes = drill.get("probes")
    for i, probe in enumerate(probes if isinstance(probes, list) else []):
        name = probe.get("component") if isinstance(probe, dict) else None
        if isinstance(name, str) and name not in components:
            out.append((("drill", "probes", i, "component"),
                        f"unknown component '{name}' (the config has: {known})"))
    return out


def graph_problems(components: Any) -> list[tuple[Loc, str]]:
    """Unknown `depends_on` names and dependency cycles, from raw (unvalidated) components."""
    if not isinstance(components, dict):
        return []
    names = sorted(k for k in components if isinstance(k, str) and NAME_RE.fullmatch(k))
    deps: dict[str, list[str]] = {}
    out: list[tuple[Loc, str]] = []
    for name in names:
        comp = components[name]
        raw = comp.get("depends_on") if isinstance(comp, dict) else None
        if not isinstance(raw, list):
            deps[name] = []
            continue
        deps[name] = []
        for i, dep in enumerate(raw):
            if not isinstance(dep, str) or not NAME_RE.fullmatch(dep):
                continue  # the name check reports it
            if dep in components:
                deps[name].append(dep)
            else:
                out.append((("components", name, "depends_on", i),
                            f"unknown component '{dep}' (the config has: {', '.join(names)})"))
    for cycle in find_cycles(deps):
        text = (f"{cycle[0]} depends on itself" if len(cycle) == 1 else
                " -> ".join([*cycle, cycle[0]]) + " (each depends on the next)")
        out.append((("components", cycle[0], "depends_on"), f"dependency cycle: {text}"))
    return out


def find_cycles(deps: Mapping[str, list[str]]) -> list[list[str]]:
    """One cycle per strongly connected component that has one, each starting at its
    smallest name; in name order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    sccs: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan; stacks are as deep as the dependency chains
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(set(deps.get(v, []))):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                scc.append(w)
                if w == v:
                    break
            sccs.append(scc)

    for v in sorted(deps):
        if v not in index:
            visit(v)
    cycles = []
    for scc in sccs:
        members = set(scc)
        start = min(scc)
        if len(scc) == 1 and start not in deps.get(start, []):
            continue
        cycles.append(_cycle_through(start, members, deps))
    return sorted(cycles)


def _cycle_through(start: str, members: set[str], deps: Mapping[str, list[str]]) -> list[str]:
    """A shortest cycle from ``start`` back to it inside one strongly connected component."""
    prev: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(set(deps.get(v, []))):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(prev[path[-1]])
                    return path[::-1]
                if w in members and w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    return [start]  # unreachable for a real cycle


def _dependencies(config: StackConfig) -> dict[str, list[str]]:
    return {name: sorted(set(c.depends_on)) for name, c in config.components.items()}


def restore_order(config: StackConfig) -> list[list[str]]:
    """Components in restore order, as layers: each component comes after everything it
    depends on; the components of one layer are independent and may run concurrently."""
    deps = _dependencies(config)
    done: set[str] = set()
    layers: list[list[str]] = []
    while len(done) < len(deps):
        layer = sorted(n for n, d in deps.items() if n not in done and done.issuperset(d))
        if not layer:
            left = sorted(set(deps) - done)
            raise ConfigError(f"dependency cycle among: {', '.join(left)}",
                              hint="run `stackvault config validate`")
        layers.append(layer)
        done.update(layer)
    return layers


def critical_path(config: StackConfig, durations: Mapping[str, float] | None = None
                  ) -> list[str]:
    """The chain of dependent components that takes longest to restore, first to last.

    ``durations`` gives each component's restore time (e.g. measured in a drill; missing
    ones count 0); without it every component counts 1, i.e. the longest chain. Ties go to
    the longer chain, then to the alphabetically first.
    """
    deps = _dependencies(config)

    def weight(name: str) -> float:
        return 1.0 if durations is None else float(durations.get(name, 0.0))

    def best(paths: list[tuple[float, list[str]]]) -> tuple[float, list[str]]:
        return min(paths, key=lambda p: (-p[0], -len(p[1]), p[1]))

    longest: dict[str, tuple[float, list[str]]] = {}
    for layer in restore_order(config):
        for name in layer:
            before = best([longest[d] for d in deps[name]] or [(0.0, [])])
            longest[name] = (before[0] + weight(name), [*before[1], name])
    return best(list(longest.values()))[1] if longest else []


# --------------------------------------------------------------------------- introspection
# For the loader (error paths), the example and the reference, which walk the models.


def strip_optional(ann: Any) -> Any:
    """X | None -> X (X keeps its Annotated metadata)."""
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return ann


def unwrap(ann: Any) -> Any:
    """Strip Annotated and Optional: Annotated[X, ...] | None -> X."""
    while True:
        if typing.get_origin(ann) is typing.Annotated:
            ann = typing.get_args(ann)[0]
            continue
        stripped = strip_optional(ann)
        if stripped is ann:
            return ann
        ann = stripped


def union_members(ann: Any) -> dict[str, type[BaseModel]]:
    """Tag -> model for a union of models told apart by `type` (the components), else {}."""
    ann = unwrap(ann)
    if typing.get_origin(ann) not in (typing.Union, types.UnionType):
        return {}
    out: dict[str, type[BaseModel]] = {}
    for member in typing.get_args(ann):
        if isinstance(member, type) and issubclass(member, BaseModel) \
                and "type" in member.model_fields:
            tag = typing.get_args(member.model_fields["type"].annotation)
            if tag:
                out[str(tag[0])] = member
    return out

