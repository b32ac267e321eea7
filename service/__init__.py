"""The Thorax gateway: FastAPI, onnxruntime or TorchServe, and a local folder or S3 (minio SDK).

It reads only exported artifacts from `model_store/` (through `thorax.store.open_model`) and never
imports torch or the training code. Start it with `thorax serve`; settings come from `THORAX_`
environment variables (`service/settings.py`). Layout:

    app.py          create_app(settings): routers, problem+json errors, request ids, lifespan
    routes/         health (healthz, readyz, metrics), jobs, models (cards, preview, visualize)
    jobs.py         JobManager: job bookkeeping (submit, look up, list, cancel, resume) from storage
    work.py         one unit of work: make shard i of job J (infer, encode, upload), and the manifest
    executors.py    where shards are made: this process's threads, or tasks on a Dask cluster
    layout.py       a job's keys in storage, and the index that finds a job from its id
    pipeline.py     the overlapping inference -> encoding stages of a shard
    labels.py       request labels -> one label vector per image (vectors, names, per image, prior)
    imaging.py      area downsampling, deterministic PNG and DICOM encoders, the preview grid
    shards.py       WebDataset tar members with fixed metadata
    backends/       onnxruntime (in-process, the default) and TorchServe (HTTP)
    storage/        a local folder (the default) and S3
    catalog.py      models opened and verified through the store, each with its backend
"""
