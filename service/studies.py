"""Reader studies: people tell generated radiographs from real ones, as in the paper's reader study.

An operator creates a study from the gateway's folder of real radiographs (`THORAX_STUDY_IMAGES`, never
copied into storage, shards or the model store) and a model. Each resolution block holds N real and N
generated images in a seeded random order, the blocks in increasing resolution. Every image is blinded
the same way: a square greyscale crop, area-resampled to the block's resolution, encoded by the one PNG
encoder with no metadata, under a random name.

Each reader joins with their own token and answers the images in order, one at a time: only the current
image can be fetched, an answer is taken only for it, and the time runs from its first fetch. Storage
keeps the study (`reader-studies/<id>/study.json`, reader tokens as hashes only) and one object per
answer (`answers/<reader>/<position>.json`), so that an answer once written is never replaced.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import random
import secrets
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image
from pydantic import BaseModel
from thoraxclient.schemas import (
    ReaderAnswer,
    ReaderState,
    Study,
    StudyReader,
    StudyRequest,
    StudyResultRow,
)

from service import labels as label_rules
from service.access import Caller
from service.catalog import Catalog, LoadedModel
from service.imaging import downsample, png_bytes
from service.problems import ApiProblem, FieldProblem, LimitProblem
from service.settings import Settings
from service.storage import Storage, StorageError
from thorax.reader_stats import GENERATED, REAL, group_kappa, mean_and_error, scores
from thorax.store import StoreError

log = logging.getLogger("thorax.gateway")
FOLDER = "reader-studies"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
GRACE_S = 3.0  # an answer this late past the time limit still counts (the network, the page drawing)
MAX_IMAGES = 6000  # per reader: every block's real and generated images
_ORDER_STREAM, _REAL_STREAM = 0x0DE5, 0x5EA1  # keep the study's random draws apart
ALL_READERS = "all readers"


class _Item(BaseModel):
    name: str  # random, shown to readers
    kind: str  # "generated" or "real"
    source: str | None = None  # real: the file, relative to the study folder
    index: int | None = None  # generated: the image index under the study's seed


class _Block(BaseModel):
    resolution: int
    items: list[_Item]


class _Reader(BaseModel):
    id: str
    name: str
    group: str
    token_sha256: str


class StudyRecord(BaseModel):
    """study.json: what a study is; the truth of every image is here, never in what readers get."""

    id: str
    name: str
    model_name: str
    model_version: str
    model_card_sha256: str
    created: datetime
    seed: int
    per_block: int
    seconds_per_image: float
    label_vector: list[float] | None = None
    label_prior_fixed: dict[str, float] | None = None
    blocks: list[_Block]
    readers: list[_Reader]
    owner: str | None = None

    @property
    def items(self) -> list[tuple[int, _Item]]:
        """(block, item) in the order every reader sees them."""
        return [(b, item) for b, block in enumerate(self.blocks) for item in block.items]


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _square_pixels(path: Path) -> np.ndarray:
    """uint8 [s, s]: a radiograph file as greyscale, centre-cropped to a square."""
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("I") if image.mode.startswith("I") else image.convert("L"))
    if pixels.dtype != np.uint8:  # 16-bit greyscale: spread its range over 8 bits
        top = max(int(pixels.max()), 1)
        pixels = np.round(pixels.astype(np.float64) * 255.0 / top).astype(np.uint8)
    h, w = pixels.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return np.ascontiguousarray(pixels[top : top + side, left : left + side])


def blinded_png(pixels: np.ndarray, resolution: int) -> bytes:
    """The one way every study image reaches a reader: uint8 [s, s] area-resampled to `resolution` and
    encoded as greyscale PNG with no metadata."""
    assert pixels.ndim == 2 and pixels.shape[0] == pixels.shape[1] >= resolution, pixels.shape
    return png_bytes(downsample(pixels[None], resolution)[0])


class StudyManager:
    def __init__(self, settings: Settings, storage: Storage, catalog: Catalog) -> None:
        self.settings, self.storage, self.catalog = settings, storage, catalog
        self.root = "/".join(p for p in (settings.storage_prefix.strip("/"), FOLDER) if p)
        self.studies: dict[str, StudyRecord] = {}
        self.by_token: dict[str, tuple[str, str]] = {}  # token hash -> (study id, reader id)
        self.shown: dict[tuple[str, str, int], float] = {}  # (study, reader, position) -> first fetch
        self.images: dict[tuple[str, str], bytes] = {}  # (study, image name) -> blinded PNG, a few kept
        self.lock = threading.RLock()
        self.loaded_at: float | None = None

    # ---- the study folder and storage -----------------------------------------------------------

    def folder(self) -> Path:
        folder = self.settings.study_images
        if folder is None:
            raise ApiProblem(
                409, "Conflict", "reader studies need a folder of real radiographs: set THORAX_STUDY_IMAGES"
            )
        if not folder.is_dir():
            raise ApiProblem(409, "Conflict", "THORAX_STUDY_IMAGES is not a folder on the gateway")
        return folder.resolve()

    def real_files(self) -> list[str]:
        folder = self.folder()
        files = [p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        return sorted(p.relative_to(folder).as_posix() for p in files)

    def _key(self, study_id: str, name: str) -> str:
        return f"{self.root}/{study_id}/{name}"

    def _answers_folder(self, study_id: str, reader_id: str) -> str:
        return self._key(study_id, f"answers/{reader_id}/")

    def _storage(self, what: str, call, *args):
        try:
            return call(*args)
        except StorageError as exc:
            raise ApiProblem(503, "Storage unavailable", f"{what}: {exc}") from exc

    def _load(self, force: bool = False) -> None:
        """Read every study in storage (again, when `force` and the last read is over a second old:
        another gateway may have created one)."""
        with self.lock:
            if self.loaded_at is not None and not (force and time.monotonic() - self.loaded_at > 1.0):
                return
            keys = self._storage("listing the studies", self.storage.list, f"{self.root}/")
            for key in keys:
                if not key.endswith("/study.json") or key.count("/") != self.root.count("/") + 2:
                    continue
                data = self._storage("reading a study", self.storage.get_bytes, key)
                try:
                    record = StudyRecord.model_validate_json(data or b"")
                except ValueError as exc:
                    log.warning("skipping %s: unreadable (%s)", key, exc)
                    continue
                self._remember(record)
            self.loaded_at = time.monotonic()

    def _remember(self, record: StudyRecord) -> None:
        self.studies[record.id] = record
        for reader in record.readers:
            self.by_token[reader.token_sha256] = (record.id, reader.id)

    def _answers(self, record: StudyRecord, reader_id: str) -> list[dict]:
        """The reader's answers so far, in order."""
        keys = self._storage(
            "reading answers", self.storage.list_folder, self._answers_folder(record.id, reader_id)
        )
        out = []
        for key in keys:
            data = self._storage("reading an answer", self.storage.get_bytes, key)
            out.append(json.loads(data or b"{}"))
        return sorted(out, key=lambda a: a["position"])

    # ---- the operator ---------------------------------------------------------------------------

    def create(self, request: StudyRequest, caller: Caller, reader_url: str) -> Study:
        """A new study; its answer alone carries each reader's token and link (storage keeps hashes)."""
        model = self._model(request.model)
        resolutions = list(request.resolutions)
        for i, resolution in enumerate(resolutions):
            if resolution > model.resolution:
                raise FieldProblem(f"resolutions.{i}", f"at most the model's {model.resolution} px")
        if len(set(resolutions)) != len(resolutions):
            raise FieldProblem("resolutions", "each resolution makes one block: name each once")
        resolutions.sort()  # the paper's order: low resolutions first, so no artefact learnt at a high one
        names = [reader.name for reader in request.readers]
        for i, name in enumerate(names):
            if names.index(name) != i:
                raise FieldProblem(f"readers.{i}.name", f"{name!r} is named twice; give each reader a name")
        per_reader = 2 * request.per_block * len(resolutions)
        if per_reader > MAX_IMAGES:
            raise LimitProblem(
                f"per_block: {per_reader} images per reader; at most {MAX_IMAGES}", "per_block"
            )
        if request.labels is None:
            resolved = {"label_prior_fixed": {}}  # the model card's prior: the training set's label mix
        else:
            resolved = label_rules.resolve(request.labels, model.label_names, 1)

        files = self.real_files()
        needed = request.per_block * len(resolutions)
        if len(files) < needed:
            raise FieldProblem(
                "per_block",
                f"{len(resolutions)} blocks of {request.per_block} real images need {needed} different "
                f"radiographs; the study folder has {len(files)}",
            )
        seed = request.seed if request.seed is not None else random.SystemRandom().randrange(2**63)
        chosen = [
            files[i] for i in np.random.default_rng([seed, _REAL_STREAM]).permutation(len(files))[:needed]
        ]
        folder = self.folder()
        blocks = []
        for b, resolution in enumerate(resolutions):
            real = chosen[b * request.per_block : (b + 1) * request.per_block]
            for source in real:
                with Image.open(folder / source) as image:
                    if min(image.size) < resolution:
                        raise FieldProblem(
                            f"resolutions.{b}",
                            f"a real radiograph of the study folder is {min(image.size)} px; the block needs "
                            f"{resolution} px without upsampling",
                        )
            first = b * request.per_block  # generated image indices differ across blocks too
            items = [_Item(name="", kind=REAL, source=s) for s in real] + [
                _Item(name="", kind=GENERATED, index=first + i) for i in range(request.per_block)
            ]
            order = np.random.default_rng([seed, b, _ORDER_STREAM]).permutation(len(items))
            items = [items[i] for i in order]
            for item in items:
                item.name = secrets.token_hex(8)
            blocks.append(_Block(resolution=resolution, items=items))

        tokens = {}
        readers = []
        for reader in request.readers:
            reader_id, token = secrets.token_hex(4), secrets.token_urlsafe(24)
            tokens[reader_id] = token
            readers.append(
                _Reader(id=reader_id, name=reader.name, group=reader.group, token_sha256=_token_hash(token))
            )
        record = StudyRecord(
            id=uuid.uuid4().hex,
            name=request.name,
            model_name=model.stored.name,
            model_version=model.stored.version,
            model_card_sha256=model.card_sha256,
            created=datetime.now(UTC),
            seed=seed,
            per_block=request.per_block,
            seconds_per_image=request.seconds_per_image,
            blocks=blocks,
            readers=readers,
            owner=caller.key_id,
            **resolved,
        )
        self._load()
        self._storage(
            "recording the study",
            self.storage.put_bytes,
            self._key(record.id, "study.json"),
            record.model_dump_json(indent=1).encode(),
        )
        with self.lock:
            self._remember(record)
        study = self.summary(record, url="")  # the route knows its URL
        for reader in study.readers:
            reader.token = tokens[reader.id]
            reader.url = reader_url + reader.token
        return study

    def _model(self, ref: str | None) -> LoadedModel:
        try:
            return self.catalog.get(ref)
        except StoreError as exc:
            raise FieldProblem("model", str(exc)) from None

    def get(self, study_id: str, caller: Caller) -> StudyRecord:
        self._load()
        record = self.studies.get(study_id)
        if record is None:
            self._load(force=True)
            record = self.studies.get(study_id)
        if record is None or not caller.may_see(record.owner):
            raise ApiProblem(404, "Not found", f"no study {study_id!r}")
        return record

    def list(self, caller: Caller) -> list[StudyRecord]:
        self._load(force=True)
        with self.lock:
            records = [r for r in self.studies.values() if caller.may_see(r.owner)]
        return sorted(records, key=lambda r: r.created, reverse=True)

    def summary(self, record: StudyRecord, url: str) -> Study:
        """The study as its operator sees it (no tokens: only the answer that creates it has them)."""
        return Study(
            id=record.id,
            url=url,
            name=record.name,
            model=f"{record.model_name}/{record.model_version}",
            created=record.created,
            seed=record.seed,
            resolutions=[b.resolution for b in record.blocks],
            per_block=record.per_block,
            images_per_reader=len(record.items),
            seconds_per_image=record.seconds_per_image,
            readers=[
                StudyReader(
                    id=r.id,
                    name=r.name,
                    group=r.group,
                    answered=len(
                        self._storage(
                            "reading answers", self.storage.list_folder, self._answers_folder(record.id, r.id)
                        )
                    ),
                )
                for r in record.readers
            ],
        )

    # ---- a reader ---------------------------------------------------------------------------------

    def _reader(self, token: str) -> tuple[StudyRecord, _Reader]:
        hashed = _token_hash(token)
        self._load()
        found = self.by_token.get(hashed)
        if found is None:
            self._load(force=True)
            found = self.by_token.get(hashed)
        if found is None:
            raise ApiProblem(
                404, "Not found", "no reader has this token; ask the study's operator for your link"
            )
        record = self.studies[found[0]]
        return record, next(r for r in record.readers if r.id == found[1])

    def state(self, token: str, image_url: str) -> ReaderState:
        """Where the reader is: the current image's random name, or done."""
        record, reader = self._reader(token)
        position = len(self._answers(record, reader.id))
        items = record.items
        done = position >= len(items)
        block = items[position][0] if not done else len(record.blocks) - 1
        shown = self.shown.get((record.id, reader.id, position))
        left = None
        if shown is not None:
            left = max(0.0, record.seconds_per_image - (time.monotonic() - shown))
        name = None if done else items[position][1].name
        return ReaderState(
            study=record.name,
            reader=reader.name,
            position=position,
            images_total=len(items),
            block=block,
            blocks=len(record.blocks),
            resolution=None if done else record.blocks[block].resolution,
            seconds_per_image=record.seconds_per_image,
            seconds_left=left,
            image=name,
            image_url=None if done else image_url + name,
            done=done,
        )

    def image(self, token: str, name: str) -> bytes:
        """The current image's blinded PNG; no other image of the study (none before, none after)."""
        record, reader = self._reader(token)
        with self.lock:
            position = len(self._answers(record, reader.id))
            items = record.items
            if position >= len(items) or items[position][1].name != name:
                raise ApiProblem(
                    404, "Not found", f"{name!r} is not your current image; no image is shown twice"
                )
            self.shown.setdefault((record.id, reader.id, position), time.monotonic())
        block, item = items[position]
        return self._render(record, record.blocks[block].resolution, item)

    def answer(self, token: str, given: ReaderAnswer, image_url: str) -> ReaderState:
        """Record the answer to the current image (None: the time ran out); an answer to any other image
        is refused, so nobody goes back."""
        record, reader = self._reader(token)
        with self.lock:
            position = len(self._answers(record, reader.id))
            items = record.items
            if position >= len(items):
                raise ApiProblem(409, "Conflict", "every image is answered: the study is finished for you")
            if given.position != position:
                what = "is answered and closed" if given.position < position else "is not shown yet"
                raise ApiProblem(
                    409, "Conflict", f"position: image {given.position} {what}; the current one is {position}"
                )
            if items[position][1].name != given.image:
                raise FieldProblem("image", "is not the current image")
            shown = self.shown.get((record.id, reader.id, position))
            if shown is None:
                raise ApiProblem(409, "Conflict", "image: answer it once it is shown (fetch it first)")
            seconds = time.monotonic() - shown
            late = seconds > record.seconds_per_image + GRACE_S
            answer = None if late else given.answer
            entry = {
                "position": position,
                "image": given.image,
                "answer": answer,
                "seconds": round(seconds, 3),
                "late": late,
                "answered_at": datetime.now(UTC).isoformat(),
            }
            key = self._key(record.id, f"answers/{reader.id}/{position:05d}.json")
            self._storage("recording the answer", self.storage.put_bytes, key, json.dumps(entry).encode())
            self.shown.pop((record.id, reader.id, position), None)
        return self.state(token, image_url)

    def _render(self, record: StudyRecord, resolution: int, item: _Item) -> bytes:
        cached = self.images.get((record.id, item.name))
        if cached is not None:
            return cached
        if item.kind == REAL:
            folder = self.folder()
            path = (folder / (item.source or "")).resolve()
            if not path.is_relative_to(folder) or not path.is_file():
                raise ApiProblem(
                    409, "Conflict", "a real radiograph of this study is gone from the study folder"
                )
            pixels = _square_pixels(path)
        else:
            model = self._model(f"{record.model_name}/{record.model_version}")
            if model.card_sha256 != record.model_card_sha256:
                raise ApiProblem(409, "Conflict", "the study's model changed since the study was created")
            plan = label_rules.LabelPlan(
                model.label_names,
                record.seed,
                model.prior_patterns,
                label_vector=record.label_vector,
                label_prior_fixed=record.label_prior_fixed,
            )
            index = item.index or 0
            pixels = model.backend.generate(record.seed, [index], plan([index]))[0]  # [H, W] at the model's
        data = blinded_png(pixels, resolution)
        with self.lock:
            while len(self.images) >= 256:
                self.images.pop(next(iter(self.images)))
            self.images[(record.id, item.name)] = data
        return data

    # ---- results ----------------------------------------------------------------------------------

    def answers_table(self, record: StudyRecord) -> list[dict]:
        """Every answer of every reader, with the image's truth: the answers CSV."""
        items = record.items
        rows = []
        for reader in record.readers:
            for entry in self._answers(record, reader.id):
                block, item = items[entry["position"]]
                rows.append(
                    {
                        "reader": reader.name,
                        "group": reader.group,
                        "position": entry["position"],
                        "block": block,
                        "resolution": record.blocks[block].resolution,
                        "image": item.name,
                        "truth": item.kind,
                        "answer": entry["answer"] or "",
                        "correct": int(entry["answer"] == item.kind),
                        "seconds": entry["seconds"],
                        "late": int(entry["late"]),
                    }
                )
        return rows

    def results(self, record: StudyRecord) -> list[StudyResultRow]:
        """Per reader and per group, per block and over every block."""
        items = record.items
        truth = [item.kind for _, item in items]
        answers = {r.id: [a["answer"] for a in self._answers(record, r.id)] for r in record.readers}
        scopes: list[tuple[int | None, list[int]]] = [
            (block.resolution, [i for i, (b, _) in enumerate(items) if b == n])
            for n, block in enumerate(record.blocks)
        ]
        scopes.append((None, list(range(len(items)))))
        groups = sorted({r.group for r in record.readers})
        members = {g: [r for r in record.readers if r.group == g] for g in groups}
        if len(groups) > 1:
            members[ALL_READERS] = list(record.readers)
        rows = []
        for resolution, positions in scopes:
            per_reader = {}
            for reader in record.readers:
                reached = [p for p in positions if p < len(answers[reader.id])]
                s = scores([truth[p] for p in reached], [answers[reader.id][p] for p in reached])
                per_reader[reader.id] = s
                rows.append(
                    StudyResultRow(
                        kind="reader",
                        name=reader.name,
                        group=reader.group,
                        resolution=resolution,
                        readers=1,
                        images=s.images,
                        answered=s.answered,
                        accuracy=s.accuracy,
                        sensitivity=s.sensitivity,
                        specificity=s.specificity,
                    )  # fmt: skip
                )
            for group, readers in members.items():
                common = [p for p in positions if all(p < len(answers[r.id]) for r in readers)]
                kappa, kappa_images = group_kappa([[answers[r.id][p] for p in common] for r in readers])
                accuracy, accuracy_se = mean_and_error([per_reader[r.id].accuracy for r in readers])
                rows.append(
                    StudyResultRow(
                        kind="group",
                        name=group,
                        group=group,
                        resolution=resolution,
                        readers=len(readers),
                        images=sum(per_reader[r.id].images for r in readers),
                        answered=sum(per_reader[r.id].answered for r in readers),
                        accuracy=accuracy,
                        accuracy_se=accuracy_se,
                        sensitivity=mean_and_error([per_reader[r.id].sensitivity for r in readers])[0],
                        specificity=mean_and_error([per_reader[r.id].specificity for r in readers])[0],
                        kappa=kappa,
                        kappa_images=kappa_images if len(readers) > 1 else None,
                    )  # fmt: skip
                )
        return rows


def csv_text(rows: list[dict], columns: list[str]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: "" if row.get(c) is None else row[c] for c in columns})
    return out.getvalue()
