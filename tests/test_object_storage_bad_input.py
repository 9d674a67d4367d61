"""Bad object-storage input to `ckptflow run`: an unknown scheme, a missing
bucket, wrong keys, an unreachable endpoint, no credentials. Each ends with
one `ckptflow: error:` line naming the problem, exit 2, and nothing written:
no home, no object in the bucket. Against the real RGW server."""

from __future__ import annotations

import pytest

from ckptflow.base import storage
from support import ckptflow

pytestmark = pytest.mark.heavy  # one CLI process per case

CASES = {
    "unknown scheme": (
        lambda b: ["--pipeline-root", "ftp://host/p"], {},
        "run.pipeline_root: pipeline root 'ftp://host/p' has an unsupported scheme 'ftp'"),
    "unknown serving scheme": (
        lambda b: ["--serving-dir", "hdfs://nn/serving"], {},
        "serving.serving_dir: serving directory 'hdfs://nn/serving' has an unsupported "
        "scheme 'hdfs'"),
    "missing bucket": (
        lambda b: ["--pipeline-root", "s3://no-such-bucket-ckptflow/p"], {},
        "bucket 'no-such-bucket-ckptflow' does not exist"),
    "wrong keys": (
        lambda b: ["--pipeline-root", f"s3://{b}/p"],
        {"AWS_SECRET_ACCESS_KEY": "not-the-secret-4711"},
        "refused the keys in AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"),
    "unreachable endpoint": (
        lambda b: ["--serving-dir", f"s3://{b}/serving"],
        {"AWS_ENDPOINT_URL": "http://127.0.0.1:9"},
        "cannot reach the S3 endpoint http://127.0.0.1:9"),
    "no credentials": (
        lambda b: ["--pipeline-root", f"s3://{b}/p"],
        {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""},
        "no S3 credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY not set"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_object_storage_input_fails_with_one_line_exit_2_and_writes_nothing(
    case, bucket, tmp_path, penguins_dir):
  flags, env, words = CASES[case]
  home = tmp_path / "home"
  result = ckptflow("run", "--home", str(home), "--data", str(penguins_dir),
                    "--train-steps", "20", *flags(bucket), env=env, check=False)
  assert result.returncode == 2, result.stderr[-3000:]
  lines = result.stderr.strip().splitlines()
  assert lines[-1].startswith("ckptflow: error: "), result.stderr[-3000:]
  assert words in lines[-1]
  assert sum(line.startswith("ckptflow: error:") for line in lines) == 1
  assert "not-the-secret-4711" not in result.stderr + result.stdout
  assert not home.exists()
  assert storage.list_files(f"s3://{bucket}") == []
