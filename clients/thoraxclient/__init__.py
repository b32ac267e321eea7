"""thoraxclient: the Python SDK for Thorax.

Installable on its own (httpx, pydantic, numpy, tqdm): it never imports torch, onnxruntime, minio or
the training and service code. `Client` / `AsyncClient` speak the gateway's API; `build_dataset` tops a
dataset up to per-label counts from one or several sites' generators; `SyntheticDataset` reads the
result. The errors form one tree, drawn in `thoraxclient.errors`.
"""

__version__ = "0.1.0"

from thoraxclient.client import AsyncClient, Client  # noqa: E402
from thoraxclient.dataset import DatasetCard, SyntheticDataset, build_dataset  # noqa: E402
from thoraxclient.errors import (  # noqa: E402
    ApiError,
    AuthenticationError,
    ConflictError,
    DatasetError,
    IntegrityError,
    JobError,
    NotFoundError,
    RateLimitError,
    RequestError,
    ServerError,
    ThoraxError,
    TransportError,
)
from thoraxclient.shards import Sample  # noqa: E402

__all__ = [
    "__version__",
    "Client",
    "AsyncClient",
    "build_dataset",
    "SyntheticDataset",
    "DatasetCard",
    "Sample",
    "ThoraxError",
    "TransportError",
    "ApiError",
    "AuthenticationError",
    "NotFoundError",
    "ConflictError",
    "RequestError",
    "RateLimitError",
    "ServerError",
    "JobError",
    "IntegrityError",
    "DatasetError",
]
