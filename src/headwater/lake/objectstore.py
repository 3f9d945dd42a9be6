"""Object-store lake roots: the settings as delta-rs storage options and as a pyarrow filesystem.

A lake whose root is ``s3://bucket/prefix`` (AWS S3 or an S3-compatible store: MinIO, Ceph,
R2, moto) is reached by two clients, configured from the same ``lake.s3_*`` settings:

* delta-rs (every commit, log read, OPTIMIZE, VACUUM) through :func:`storage_options`, the
  ``object_store`` crate's configuration keys (``AWS_ENDPOINT_URL``, ``AWS_REGION``,
  ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ALLOW_HTTP``, ``conditional_put``;
  https://docs.rs/object_store/latest/object_store/aws/enum.AmazonS3ConfigKey.html). What a
  setting leaves empty, delta-rs takes from the ``AWS_*`` environment and the AWS profile.
* pyarrow (data files read by DuckDB through :meth:`headwater.lake.store.Lake.dataset`, files
  written by Spark executors) through :func:`s3_filesystem`, a ``pyarrow.fs.S3FileSystem``
  built from those same options; what they leave empty comes from the AWS SDK's default
  credential chain and region (``AWS_*`` variables, profile, instance role).

Concurrent writers (:data:`COMMIT_MODES`). A Delta commit must create its log file only if
absent (Delta protocol, "Delta Log Entries": mutual exclusion of a version). S3 offers that
as a conditional write (``PUT`` with ``If-None-Match: *``, AWS since 2024-08; moto, MinIO,
R2 too), which delta-rs uses with ``conditional_put=etag``: the default mode. Stores without
conditional writes need ``unsafe_rename``, which is safe for one writer process only.
delta-rs 1.x dropped its DynamoDB lock (``AWS_S3_LOCKING_PROVIDER=dynamodb``: it logs "no
longer supports S3DynamoDBLogStores" and commits by conditional put anyway), so there is no
such mode here; docs/object-storage.md says what that means next to Spark's own Delta writer.

Failures (:func:`failure`): the object store's errors (unreachable endpoint, refused
credentials, missing bucket) become one-line :mod:`headwater.errors` naming the setting to
check, instead of the clients' multi-line chains.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import pyarrow.fs as pafs

from headwater.errors import HeadwaterError, InvalidInputError, TransientError

if TYPE_CHECKING:
    from headwater.settings import Settings

S3_SCHEMES = ("s3://", "s3a://")  # both spellings name S3 for delta-rs (object_store)

# lake.s3_commit -> the delta-rs options that select it.
COMMIT_MODES: dict[str, dict[str, str]] = {
    "conditional_put": {"conditional_put": "etag"},
    "unsafe_rename": {"AWS_S3_ALLOW_UNSAFE_RENAME": "true"},
}
# Option names (lower case, without ``aws_``) that declare how commits are made safe, in the
# forms object_store / delta-rs accept them.
_COMMIT_KEYS = {"conditional_put", "s3_conditional_put", "s3_allow_unsafe_rename"}


def is_s3(root: str) -> bool:
    """Whether ``root`` (a lake root) is an S3 URI."""
    return root.startswith(S3_SCHEMES)


def storage_options(settings: Settings) -> dict[str, str] | None:
    """The delta-rs storage options of ``settings.lake_root``: ``None`` for a local root or a
    store other than S3 (delta-rs then reads that store's own environment variables)."""
    if not is_s3(settings.lake_root):
        return None
    lake = settings.lake
    options = dict(COMMIT_MODES[lake.s3_commit])
    endpoint = settings.lake_s3_endpoint
    if endpoint:
        options["AWS_ENDPOINT_URL"] = endpoint
        if endpoint.startswith("http://"):  # an endpoint given as plain HTTP is meant so (object_store refuses it otherwise)
            options["AWS_ALLOW_HTTP"] = "true"
    if lake.s3_region:
        options["AWS_REGION"] = lake.s3_region
    if lake.s3_access_key_id is not None:
        options["AWS_ACCESS_KEY_ID"] = lake.s3_access_key_id.get_secret_value()
    if lake.s3_secret_access_key is not None:
        options["AWS_SECRET_ACCESS_KEY"] = lake.s3_secret_access_key.get_secret_value()
    return options


def _normalised(options: dict[str, str] | None) -> dict[str, str]:
    """``options`` keyed as object_store parses them: case-insensitive, ``aws_`` optional."""
    return {k.lower().removeprefix("aws_"): v for k, v in (options or {}).items()}


def check_commit_mode(root: str, options: dict[str, str] | None) -> None:
    """:class:`InvalidInputError` naming ``lake.s3_commit`` if the options of the S3 root
    ``root`` do not say how concurrent commits are kept apart (options built by
    :func:`storage_options` always do)."""
    if not _COMMIT_KEYS & _normalised(options).keys():
        raise InvalidInputError(
            f"lake.s3_commit: the S3 lake {root} has no commit mode for concurrent writers: "
            f"set it to conditional_put (S3 conditional writes, the default) or unsafe_rename (one writer only)",
            field="lake.s3_commit",
        )


def s3_filesystem(options: dict[str, str] | None) -> pafs.S3FileSystem:
    """A pyarrow ``S3FileSystem`` configured like delta-rs by ``options`` (:func:`storage_options`,
    or any delta-rs S3 options using object_store's key names): endpoint (its ``http://``
    scheme kept), region, access key, secret, session token. Picklable: it carries them to
    Spark executors (secrets included, as Spark's own s3a configuration does)."""
    o = _normalised(options)
    kwargs: dict[str, str] = {}
    endpoint = o.get("endpoint_url") or o.get("endpoint")
    if endpoint:
        kwargs["endpoint_override"] = endpoint
    region = o.get("region") or o.get("default_region")
    if region:
        kwargs["region"] = region
    if o.get("access_key_id") and o.get("secret_access_key"):
        kwargs["access_key"] = o["access_key_id"]
        kwargs["secret_key"] = o["secret_access_key"]
        token = o.get("session_token") or o.get("token")
        if token:
            kwargs["session_token"] = token
    return pafs.S3FileSystem(**kwargs)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# An object-store client's error: object_store (delta-rs) says "Generic S3 error" or "Error
# performing GET <url>", pyarrow (the AWS C++ SDK) "AWS Error <CODE>". Errors about data or
# local files have neither, whatever text the data holds.
_REMOTE = re.compile(r"Generic \w+ error|Error performing (GET|PUT|POST|HEAD|DELETE|list)|AWS Error")
# (pattern, error class, setting to check, what it means), first match wins. delta-rs and
# pyarrow word the same failures differently. Without credentials the SDKs ask the instance
# metadata service (169.254.169.254) last: its failure means "no credentials", not a network fault.
_FAILURES: list[tuple[re.Pattern[str], type[HeadwaterError], str, str]] = [
    (re.compile(r"NoSuchBucket|NO_SUCH_BUCKET|bucket does not exist", re.I), InvalidInputError, "lake.root",
     "the bucket of lake.root does not exist"),
    (re.compile(r"169\.254\.169\.254|/latest/(api/token|meta-data)|IMDS|instance metadata|credential", re.I), InvalidInputError, "lake.s3_access_key_id",
     "no credentials for the object store (set lake.s3_access_key_id and lake.s3_secret_access_key, or AWS_ACCESS_KEY_ID, a profile or an instance role)"),
    (re.compile(r"InvalidAccessKeyId|SignatureDoesNotMatch|AccessDenied|ACCESS_DENIED|lacked the necessary privileges|\b403\b", re.I),
     InvalidInputError, "lake.s3_access_key_id",
     "the object store refused the credentials (check lake.s3_access_key_id, lake.s3_secret_access_key or the AWS_* credentials)"),
    (re.compile(r"error sending request|connect|NETWORK_CONNECTION|dns error|resolve host|timed out|timeout", re.I),
     TransientError, "lake.s3_endpoint", "the object store of lake.root cannot be reached (check lake.s3_endpoint and the network)"),
]


def failure(what: str, error: BaseException) -> HeadwaterError | None:
    """``error`` (raised by delta-rs or pyarrow on an object-store root) as a one-line
    :mod:`headwater.errors` instance about ``what`` (a table or the lake root), naming the
    setting to check; ``None`` if it is not one of the recognised object-store failures."""
    text = _ANSI.sub("", str(error))
    if not _REMOTE.search(text):
        return None
    for pattern, cls, setting, meaning in _FAILURES:
        if pattern.search(text):
            if cls is TransientError:
                return TransientError(f"{what}: {meaning}", field=setting, retry_after_s=5.0)
            return cls(f"{what}: {meaning}", field=setting)
    return None
