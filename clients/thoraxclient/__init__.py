"""thoraxclient: the Python SDK for Thorax.

Installable on its own (httpx, pydantic, numpy): it never imports torch, onnxruntime or the
training code. The HTTP client and dataset builder arrive with the client work; the package exists
now so that its import boundary is tested from the start.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
