"""The Thorax gateway (FastAPI, onnxruntime, S3 storage).

It reads only exported artifacts from `model_store/` and never imports torch or the training code.
The gateway itself arrives with the serving work; this package already exists so that the import
boundary is tested from the start.
"""
