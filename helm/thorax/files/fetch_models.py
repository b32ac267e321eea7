"""Copy a model store from S3 into MODELS_DIR (the fetch-models init container, gateway image).

Every object under MODELS_S3_PREFIX lands at its path relative to the prefix: PREFIX/default,
PREFIX/cxr64/1/SHA256SUMS, ... The verify-models init container then checks every checksum
(`thorax models verify`), so a damaged or partial copy stops the pod before anything loads it.
Settings come from MODELS_S3_* variables that the chart sets.
"""

import os
import sys
from pathlib import Path, PurePosixPath

from minio import Minio


def main() -> int:
    env = os.environ
    client = Minio(
        endpoint=env["MODELS_S3_ENDPOINT"],
        access_key=env.get("MODELS_S3_ACCESS_KEY") or None,
        secret_key=env.get("MODELS_S3_SECRET_KEY") or None,
        secure=env.get("MODELS_S3_SECURE", "true").lower() in ("1", "true", "yes"),
        region=env.get("MODELS_S3_REGION") or None,
    )
    bucket, prefix = env["MODELS_S3_BUCKET"], env.get("MODELS_S3_PREFIX", "").lstrip("/")
    root = Path(env["MODELS_DIR"]).resolve()
    count = 0
    for obj in client.list_objects(bucket_name=bucket, prefix=prefix, recursive=True):
        relative = PurePosixPath(obj.object_name[len(prefix) :].lstrip("/"))
        if obj.is_dir or not relative.parts:
            continue
        target = (root / relative).resolve()
        if root not in target.parents:  # a key with ".." must not write outside the store
            print(f"fetch-models: skipping {obj.object_name}: outside the store", file=sys.stderr)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        client.fget_object(bucket_name=bucket, object_name=obj.object_name, file_path=str(target))
        count += 1
    if count == 0:
        print(f"fetch-models: no objects under s3://{bucket}/{prefix}", file=sys.stderr)
        return 1
    print(f"fetch-models: copied {count} files from s3://{bucket}/{prefix} to {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
