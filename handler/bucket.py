"""Where the output bucket lives: the endpoint URL forms RunPod documents, parsed and checked once.

- a bare endpoint plus a bucket name: `https://s3.eu-west-1.amazonaws.com` and `BUCKET_NAME=my-bucket`
  (no endpoint at all: AWS);
- the bucket in the host: `https://my-bucket.s3.eu-west-1.amazonaws.com` (RunPod's own example),
  `https://my-bucket.s3.us-west-004.backblazeb2.com`, `https://my-bucket.nyc3.digitaloceanspaces.com`;
- the bucket in the path: `https://s3.eu-west-1.amazonaws.com/my-bucket`, `http://minio:9000/my-bucket`.

The operator's bucket comes from the environment (checked at worker start); a job's own `s3Config`
comes from the caller (checked when the job is parsed, and its address guarded before rendering).
"""

from __future__ import annotations

import dataclasses
import re
import urllib.parse

from handler.client_text import shown_value

# botocore's own rule for a bucket name, so that every name accepted here is one it sends.
BUCKET_NAME_PATTERN = re.compile(r"^[A-Za-z0-9.\-_]{1,255}$")
DEFAULT_REGION = "us-east-1"


class BucketAddressError(ValueError):
    """The endpoint URL or bucket name cannot address a bucket; the message names the field and the fix."""


@dataclasses.dataclass(frozen=True)
class BucketFields:
    """What the user calls each part of a bucket, for error messages."""

    endpoint: str
    bucket: str
    keys: str


ENV_FIELDS = BucketFields("BUCKET_ENDPOINT_URL", "BUCKET_NAME", "BUCKET_ACCESS_KEY_ID and BUCKET_SECRET_ACCESS_KEY")
JOB_FIELDS = BucketFields("s3Config.endpointUrl", "s3Config.bucketName", "s3Config.accessId and s3Config.accessSecret")


@dataclasses.dataclass(frozen=True)
class BucketSettings:
    """A bucket and the keys to it. `endpoint_url` None means AWS's own endpoint."""

    endpoint_url: str | None
    access_key_id: str
    secret_access_key: str
    bucket_name: str
    region: str = DEFAULT_REGION
    #: "virtual" (bucket in the host, AWS) or "path" (bucket in the path, most other stores)
    addressing: str = "path"
    #: the bucket came from a job's s3Config (the caller), not from the endpoint's environment
    from_job: bool = False

    @property
    def fields(self) -> BucketFields:
        return JOB_FIELDS if self.from_job else ENV_FIELDS

    @property
    def host(self) -> str:
        """The endpoint's host name, for messages ("AWS S3" for the default endpoint)."""
        if self.endpoint_url is None:
            return "AWS S3"
        return urllib.parse.urlsplit(self.endpoint_url).hostname or self.endpoint_url

    def __repr__(self) -> str:  # never print the secret
        return f"BucketSettings(endpoint_url={self.endpoint_url!r}, bucket_name={self.bucket_name!r})"


def make_bucket(
    endpoint_url: str | None, bucket_name: str | None, access_key_id: str, secret_access_key: str,
    fields: BucketFields,
) -> BucketSettings:
    """The bucket an endpoint URL (any documented form) and an optional name address.

    Raises BucketAddressError naming `fields.endpoint` or `fields.bucket`.
    """
    if endpoint_url:
        endpoint, named, region, is_aws = _split_endpoint(endpoint_url, bucket_name, fields)
    else:
        endpoint, named, region, is_aws = None, None, DEFAULT_REGION, True
    if named and bucket_name and named != bucket_name:
        raise BucketAddressError(
            f"{fields.endpoint} names the bucket {shown_value(named)} but {fields.bucket} is "
            f"{shown_value(bucket_name)}; "
            "name the bucket in one place, or make them agree."
        )
    bucket = bucket_name or named
    if not bucket:
        raise BucketAddressError(
            f"no bucket is named: set {fields.bucket}, or put the bucket in {fields.endpoint} "
            "(https://my-bucket.s3.eu-west-1.amazonaws.com or https://s3.eu-west-1.amazonaws.com/my-bucket)."
        )
    if not BUCKET_NAME_PATTERN.match(bucket):
        raise BucketAddressError(
            f"{fields.bucket} {bucket[:80]!r} is not a bucket name; use letters, digits, '.', '-' and '_' only."
        )
    # AWS serves buckets from their own host name; a dotted name would break its TLS certificate.
    addressing = "virtual" if is_aws and "." not in bucket else "path"
    return BucketSettings(
        endpoint_url=endpoint, access_key_id=access_key_id, secret_access_key=secret_access_key,
        bucket_name=bucket, region=region, addressing=addressing, from_job=fields is JOB_FIELDS,
    )


def _split_endpoint(url: str, bucket_name: str | None, fields: BucketFields) -> tuple[str, str | None, str, bool]:
    """(endpoint without the bucket, the bucket it names or None, the region, whether it is AWS)."""
    field = fields.endpoint
    try:
        parsed = urllib.parse.urlsplit(url.strip())
        port = parsed.port
    except ValueError:
        raise BucketAddressError(f"{field} is not a valid URL; use e.g. https://s3.eu-west-1.amazonaws.com.") from None
    if parsed.username is not None or parsed.password is not None:
        # the URL is not echoed: it carries a credential
        raise BucketAddressError(f"{field} must not carry credentials; put the keys in {fields.keys}.")
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise BucketAddressError(
            f"{field} {url[:200]!r} is not an http(s) URL with a host; use e.g. https://s3.eu-west-1.amazonaws.com."
        )
    if parsed.query or parsed.fragment:
        raise BucketAddressError(
            f"{field} {url[:200]!r} has a query or fragment; give only scheme, host, port and bucket."
        )
    host = parsed.hostname.rstrip(".").lower()
    service_host, host_bucket = _bucket_in_host(host)
    if host_bucket and bucket_name and host_bucket != bucket_name and not service_host.endswith(".amazonaws.com"):
        # Outside AWS a host such as `files.s3.example.net` may be the store's own name, not a
        # bucket: with the bucket named apart, the whole host is the endpoint.
        service_host, host_bucket = host, None
    path_bucket = _bucket_in_path(parsed.path, url, field)
    if host_bucket and path_bucket:
        raise BucketAddressError(f"{field} {url[:200]!r} names a bucket in its host and in its path; keep one.")
    netloc = service_host if port is None else f"{service_host}:{port}"
    if ":" in service_host:  # an IPv6 literal keeps its brackets
        netloc = f"[{service_host}]" + ("" if port is None else f":{port}")
    is_aws = service_host.endswith(".amazonaws.com")
    return f"{parsed.scheme}://{netloc}", host_bucket or path_bucket, _region(service_host), is_aws


def _bucket_in_host(host: str) -> tuple[str, str | None]:
    """(the service host, the bucket) for `<bucket>.s3[-...].<...>` and `<bucket>.<region>.digitaloceanspaces.com`."""
    labels = host.split(".")
    for index in range(1, len(labels) - 1):
        if labels[index] == "s3" or labels[index].startswith("s3-"):
            return ".".join(labels[index:]), ".".join(labels[:index])
    if host.endswith(".digitaloceanspaces.com") and len(labels) == 4:
        return ".".join(labels[1:]), labels[0]
    return host, None


def _bucket_in_path(path: str, url: str, field: str) -> str | None:
    segments = [segment for segment in path.split("/") if segment]
    if len(segments) > 1:
        raise BucketAddressError(
            f"{field} {url[:200]!r} has a path beyond the bucket; give only the endpoint and the bucket."
        )
    return urllib.parse.unquote(segments[0]) if segments else None


def _region(service_host: str) -> str:
    """The region an endpoint's host names.

    s3.<region>.…, s3-<region>.amazonaws.com, <region>.digitaloceanspaces.com
    """
    labels = service_host.split(".")
    if service_host.endswith(".digitaloceanspaces.com") and len(labels) == 3:
        return labels[0]
    if labels[0].startswith("s3-") and labels[0] not in ("s3-accelerate", "s3-external-1"):
        return labels[0][3:]
    if labels[0] == "s3" and len(labels) >= 4:
        region = labels[2] if labels[1] == "dualstack" else labels[1]
        if region not in ("amazonaws", "dualstack"):
            return region
    return DEFAULT_REGION
