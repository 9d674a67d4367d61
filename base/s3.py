"""S3-compatible object storage: settings from the standard AWS environment.

ckptflow reads credentials and the endpoint from the environment only, as
the AWS SDKs do:

  AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY   the keys (both required)
  AWS_REGION                                 default us-east-1
  AWS_ENDPOINT_URL                           a non-AWS endpoint, e.g.
                                             http://127.0.0.1:7480 (Ceph RGW)

and derives what each client needs from them: tensorflow-io's S3 file system
(`S3_ENDPOINT`, `S3_USE_HTTPS`, `S3_VERIFY_SSL`, set in this process's
environment, which Beam workers and executors inherit), Beam's S3 file
system (`beam_args`: endpoint, region, `--s3_disable_ssl`; the keys are not
passed as arguments, boto3 reads them from the environment, so they never
land in a pipeline definition, a compiled spec or MLMD), and botocore for
the one request tensorflow-io cannot make, a conditional create
(`create_if_absent`, `PUT` with `If-None-Match: *`).

The secret key is never part of a message or a repr. Imports neither
TensorFlow nor TFX; botocore is imported only when a request is made.
"""

from __future__ import annotations

import dataclasses
import os
import urllib.parse

from ckptflow.base.errors import CkptflowError

ACCESS_KEY_ENV = "AWS_ACCESS_KEY_ID"
SECRET_KEY_ENV = "AWS_SECRET_ACCESS_KEY"
REGION_ENV = "AWS_REGION"
ENDPOINT_ENV = "AWS_ENDPOINT_URL"
DEFAULT_REGION = "us-east-1"

# Seconds to wait for a connection / a response before giving up: a wrong
# endpoint fails in seconds, not after the SDKs' minutes of retries.
CONNECT_TIMEOUT = 5
READ_TIMEOUT = 60


@dataclasses.dataclass(frozen=True)
class S3Settings:
  """Where the S3 API is and who calls it. `secret_access_key` is left out
  of the repr."""

  access_key_id: str
  secret_access_key: str = dataclasses.field(repr=False)
  region: str = DEFAULT_REGION
  endpoint_url: str | None = None  # None: AWS itself

  @property
  def use_https(self) -> bool:
    return self.endpoint_url is None or self.endpoint_url.startswith("https://")


def settings(environ: os._Environ | dict | None = None) -> S3Settings:
  """The S3 settings in `environ` (default: this process's environment).

  Raises:
    CkptflowError: a key is missing, or AWS_ENDPOINT_URL is not an http(s)
      URL with a host.
  """
  env = os.environ if environ is None else environ
  missing = [name for name in (ACCESS_KEY_ENV, SECRET_KEY_ENV) if not env.get(name)]
  if missing:
    raise CkptflowError(f"no S3 credentials: {' and '.join(missing)} not set. Expected "
                        f"{ACCESS_KEY_ENV} and {SECRET_KEY_ENV} (and {ENDPOINT_ENV} for a "
                        "non-AWS endpoint) in the environment")
  endpoint = env.get(ENDPOINT_ENV) or None
  if endpoint is not None:
    parsed = urllib.parse.urlsplit(endpoint)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
      raise CkptflowError(f"{ENDPOINT_ENV} {endpoint!r} is not an endpoint URL. "
                          "Expected http://HOST:PORT or https://HOST[:PORT]")
    endpoint = endpoint.rstrip("/")
  return S3Settings(access_key_id=env[ACCESS_KEY_ENV], secret_access_key=env[SECRET_KEY_ENV],
                    region=env.get(REGION_ENV) or DEFAULT_REGION, endpoint_url=endpoint)


def tensorflow_io_environment(s: S3Settings) -> dict[str, str]:
  """The variables tensorflow-io's S3 file system reads (it takes the keys
  and region from AWS_* itself)."""
  env = {REGION_ENV: s.region}
  if s.endpoint_url is not None:
    env["S3_ENDPOINT"] = s.endpoint_url
    env["S3_USE_HTTPS"] = "1" if s.use_https else "0"
    env["S3_VERIFY_SSL"] = "1" if s.use_https else "0"
  return env


def apply_tensorflow_io_environment(s: S3Settings) -> None:
  """Sets `tensorflow_io_environment(s)` in this process's environment
  (children inherit it). Must run before tensorflow-io's S3 client is
  created, i.e. before the first s3:// path is touched."""
  os.environ.update(tensorflow_io_environment(s))


def beam_args(s: S3Settings) -> list[str]:
  """Beam's S3 options for these settings. No keys: Beam's boto3 client
  reads AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY from the environment."""
  args = [f"--s3_region_name={s.region}"]
  if s.endpoint_url is not None:
    args.append(f"--s3_endpoint_url={s.endpoint_url}")
    if not s.use_https:
      args.append("--s3_disable_ssl")
  return args


def split(uri: str) -> tuple[str, str]:
  """`s3://bucket/key` -> ("bucket", "key")."""
  parsed = urllib.parse.urlsplit(uri)
  return parsed.netloc, parsed.path.lstrip("/")


_clients: dict[S3Settings, object] = {}


def client(s: S3Settings | None = None):
  """A botocore S3 client for `s` (default: `settings()`), made once per
  process and settings."""
  s = s or settings()
  if s not in _clients:
    import botocore.config
    import botocore.session
    session = botocore.session.get_session()
    _clients[s] = session.create_client(
        "s3", region_name=s.region, endpoint_url=s.endpoint_url,
        aws_access_key_id=s.access_key_id, aws_secret_access_key=s.secret_access_key,
        config=botocore.config.Config(
            connect_timeout=CONNECT_TIMEOUT, read_timeout=READ_TIMEOUT,
            retries={"max_attempts": 3, "mode": "standard"},
            s3={"addressing_style": "path"},
            # RGW (and most S3 servers but AWS) reject the flexible
            # checksums newer SDKs add by default.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required"))
  return _clients[s]


def describe_error(e: Exception) -> str:
  """A short reason for a botocore error, naming no secret: the S3 error
  code ("NoSuchBucket", "SignatureDoesNotMatch", ...) or the connection
  failure."""
  response = getattr(e, "response", None)
  if isinstance(response, dict):
    code = response.get("Error", {}).get("Code") or str(
        response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
    return code or type(e).__name__
  return type(e).__name__


def check_bucket(uri: str, what: str) -> None:
  """Checks that the bucket of `uri` exists and these credentials may use
  it (one HEAD request), creating nothing.

  Raises:
    CkptflowError: no credentials, a bad endpoint, the endpoint does not
      answer, the bucket is missing, or the keys are refused; one line
      naming `what`, the URI and the reason (never a key).
  """
  import botocore.exceptions
  s = settings()
  bucket, _ = split(uri)
  where = s.endpoint_url or "AWS"
  try:
    client(s).head_bucket(Bucket=bucket)
  except botocore.exceptions.EndpointConnectionError as e:
    raise CkptflowError(f"{what} {uri!r}: cannot reach the S3 endpoint {where} "
                        f"({ENDPOINT_ENV}). Expected a reachable S3 endpoint") from e
  except botocore.exceptions.ClientError as e:
    status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    code = describe_error(e)
    if status == 404 or code in ("NoSuchBucket", "404"):
      raise CkptflowError(f"{what} {uri!r}: bucket {bucket!r} does not exist at {where}. "
                          "Expected an existing bucket") from e
    if status == 403 or code in ("403", "AccessDenied", "SignatureDoesNotMatch",
                                 "InvalidAccessKeyId"):
      raise CkptflowError(f"{what} {uri!r}: the S3 endpoint {where} refused the keys in "
                          f"{ACCESS_KEY_ENV}/{SECRET_KEY_ENV} ({code}). Expected keys "
                          f"that may use bucket {bucket!r}") from e
    raise CkptflowError(f"{what} {uri!r}: S3 error {code} at {where}") from e
  except botocore.exceptions.BotoCoreError as e:
    raise CkptflowError(f"{what} {uri!r}: S3 request to {where} failed "
                        f"({type(e).__name__})") from e


def create_if_absent(uri: str, data: bytes) -> bool:
  """Creates the object `uri` holding `data` unless it exists: one `PUT`
  with `If-None-Match: *`, which the server decides atomically. Returns
  True if this call created it, False if it existed (HTTP 412).

  Raises:
    OSError: any other failure (the object may or may not exist).
  """
  import botocore.exceptions
  bucket, key = split(uri)
  try:
    client().put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
  except botocore.exceptions.ClientError as e:
    status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if status == 412 or describe_error(e) == "PreconditionFailed":
      return False
    raise OSError(f"conditional create of {uri} failed: {describe_error(e)}") from e
  except botocore.exceptions.BotoCoreError as e:
    raise OSError(f"conditional create of {uri} failed: {type(e).__name__}") from e
  return True


__all__ = [
    "S3Settings", "apply_tensorflow_io_environment", "beam_args", "check_bucket", "client",
    "create_if_absent", "describe_error", "settings", "split", "tensorflow_io_environment",
]
