"""The storage seam on local paths and on a real S3 server (Ceph RGW):
the same calls, the same answers; commit markers; conditional creates;
the S3 settings derived from AWS_*."""

from __future__ import annotations

import concurrent.futures
import os

import pytest

from ckptflow.base import s3, storage
from ckptflow.base.errors import CkptflowError


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path) -> str:
  """An empty root: a local directory, or a prefix in a fresh RGW bucket."""
  if request.param == "local":
    return str(tmp_path / "root")
  bucket = request.getfixturevalue("bucket")
  return f"s3://{bucket}/root"


# --- form of a root (nothing contacted) ---------------------------------------


def test_check_uri_keeps_paths_and_bucket_uris(tmp_path):
  assert storage.check_uri(str(tmp_path / "a"), "pipeline root") == str(tmp_path / "a")
  assert storage.check_uri("s3://my-bucket/p/q/", "pipeline root") == "s3://my-bucket/p/q"
  assert storage.check_uri("gs://my-bucket", "serving directory") == "gs://my-bucket"


@pytest.mark.parametrize("uri, words", [
    ("ftp://host/x", "unsupported scheme 'ftp'"),
    ("hdfs://nn/x", "unsupported scheme 'hdfs'"),
    ("s3://", "names no valid bucket"),
    ("s3://UPPER/x", "names no valid bucket"),
    ("s3://ab/x", "names no valid bucket"),
])
def test_check_uri_rejects_unknown_schemes_and_bad_buckets(uri, words):
  with pytest.raises(CkptflowError, match=words) as e:
    storage.check_uri(uri, "pipeline root")
  assert "pipeline root" in str(e.value) and "\n" not in str(e.value)


# --- S3 settings -----------------------------------------------------------------


ENV = {"AWS_ACCESS_KEY_ID": "AKID", "AWS_SECRET_ACCESS_KEY": "sekrit-value",
       "AWS_REGION": "eu-west-1", "AWS_ENDPOINT_URL": "http://127.0.0.1:7480/"}


def test_settings_derive_tensorflow_io_and_beam_options_without_keys():
  s = s3.settings(ENV)
  assert s.endpoint_url == "http://127.0.0.1:7480" and not s.use_https
  assert s3.tensorflow_io_environment(s) == {
      "AWS_REGION": "eu-west-1", "S3_ENDPOINT": "http://127.0.0.1:7480",
      "S3_USE_HTTPS": "0", "S3_VERIFY_SSL": "0"}
  args = s3.beam_args(s)
  assert args == ["--s3_region_name=eu-west-1", "--s3_endpoint_url=http://127.0.0.1:7480",
                  "--s3_disable_ssl"]
  assert "sekrit-value" not in repr(s) + " ".join(args)


def test_settings_for_aws_itself_use_https_and_no_endpoint():
  s = s3.settings({k: v for k, v in ENV.items() if k not in ("AWS_ENDPOINT_URL", "AWS_REGION")})
  assert s.use_https and s.region == "us-east-1"
  assert s3.tensorflow_io_environment(s) == {"AWS_REGION": "us-east-1"}
  assert s3.beam_args(s) == ["--s3_region_name=us-east-1"]


@pytest.mark.parametrize("drop", ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"])
def test_settings_without_a_key_name_the_missing_variable(drop):
  env = {k: v for k, v in ENV.items() if k != drop}
  with pytest.raises(CkptflowError, match=f"no S3 credentials: {drop} not set"):
    s3.settings(env)


def test_settings_reject_an_endpoint_that_is_not_a_url():
  with pytest.raises(CkptflowError, match="AWS_ENDPOINT_URL '127.0.0.1:7480' is not an"):
    s3.settings(ENV | {"AWS_ENDPOINT_URL": "127.0.0.1:7480"})


# --- the same operations on a path and a bucket ----------------------------------


def test_write_read_list_exists_delete(root):
  storage.write_bytes(storage.join(root, "a", "one.txt"), b"1")
  storage.write_bytes(storage.join(root, "a", "b", "two.txt"), "two")
  assert storage.read_bytes(storage.join(root, "a", "b", "two.txt")) == b"two"
  assert storage.exists(storage.join(root, "a", "one.txt"))
  assert not storage.exists(storage.join(root, "a", "nope"))
  assert storage.list_names(storage.join(root, "a")) == ["b", "one.txt"]
  assert storage.list_files(root) == ["a/b/two.txt", "a/one.txt"]
  assert storage.list_names(storage.join(root, "missing")) == []
  with pytest.raises(FileNotFoundError):
    storage.read_bytes(storage.join(root, "missing"))
  storage.delete_tree(storage.join(root, "a"))
  assert storage.list_files(root) == []
  storage.delete_tree(storage.join(root, "a"))  # nothing there: no error


def test_commit_marker_lists_digests_and_verify_finds_changes(root):
  prefix = storage.join(root, "step-1")
  storage.write_bytes(storage.join(prefix, "ckpt.index"), b"index")
  storage.write_bytes(storage.join(prefix, "ckpt.data"), b"data" * 1000)
  assert storage.committed(prefix) is None
  assert storage.verify_committed(prefix) == [f"{prefix}: no commit marker"]
  files = storage.commit(prefix)
  assert files["ckpt.data"]["size"] == 4000
  assert storage.committed(prefix) == files
  assert storage.verify_committed(prefix) == []
  storage.write_bytes(storage.join(prefix, "ckpt.data"), b"changed")
  assert storage.verify_committed(prefix) == [
      f"{storage.join(prefix, 'ckpt.data')}: content differs from its commit marker"]
  storage.delete_tree(storage.join(prefix, "ckpt.index"))
  assert f"{storage.join(prefix, 'ckpt.index')}: missing" in storage.verify_committed(prefix)


def test_copy_file_between_disk_and_bucket(root, tmp_path):
  src = tmp_path / "src.bin"
  src.write_bytes(os.urandom(3 << 20))
  storage.copy_file(str(src), storage.join(root, "x", "copy.bin"))
  back = tmp_path / "back" / "copy.bin"
  storage.copy_file(storage.join(root, "x", "copy.bin"), str(back))
  assert back.read_bytes() == src.read_bytes()
  assert storage.file_digest(storage.join(root, "x", "copy.bin")) == storage.file_digest(str(src))


def test_create_if_absent_lets_exactly_one_of_many_racers_win(root):
  claim = storage.join(root, "claims", "7")
  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    results = list(pool.map(lambda i: storage.create_if_absent(claim, f"racer {i}"), range(8)))
  assert results.count(True) == 1
  winner = results.index(True)
  assert storage.read_bytes(claim) == f"racer {winner}".encode()
  assert storage.create_if_absent(claim, "late") is False


# --- what the S3 server says to bad settings -----------------------------------


def test_check_bucket_names_a_missing_bucket(bucket):
  with pytest.raises(CkptflowError, match="bucket 'no-such-bucket-x' does not exist"):
    s3.check_bucket("s3://no-such-bucket-x/p", "pipeline root")
  s3.check_bucket(f"s3://{bucket}/p", "pipeline root")


def test_check_bucket_names_refused_keys_without_printing_them(bucket, monkeypatch):
  monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-123")
  with pytest.raises(CkptflowError, match="refused the keys") as e:
    s3.check_bucket(f"s3://{bucket}/p", "pipeline root")
  assert "wrong-secret-123" not in str(e.value)
  assert os.environ["AWS_ACCESS_KEY_ID"] not in str(e.value)


def test_check_bucket_names_an_unreachable_endpoint(bucket, monkeypatch):
  monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
  with pytest.raises(CkptflowError, match="cannot reach the S3 endpoint http://127.0.0.1:9"):
    s3.check_bucket(f"s3://{bucket}/p", "pipeline root")
