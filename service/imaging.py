"""Pixels to bytes: area downsampling, deterministic PNG and DICOM encoders, and the preview grid.

Every encoder is a pure function of its inputs (fixed compression settings, no timestamps, UIDs derived
from a hash), so that the same job spec gives the same shard bytes.
"""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_file_meta_info
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

# zlib level 4, not Pillow's 6: on generated radiographs (nih64/2, 64 images, one thread) level 6 encoded
# 86 images/s at 256 px and 10 at 1024 px, level 4 217 and 23, for files 3 % and 10 % larger (at 64 px
# the same size and faster). Level 1 is faster again but 18-39 % larger. Bytes depend on the level, so
# it is fixed: the same spec and backend give the same shards.
PNG_COMPRESS_LEVEL = 4


def downsample(images: np.ndarray, resolution: int) -> np.ndarray:
    """uint8 [N, H, W] -> uint8 [N, r, r] by area averaging (Pillow's box filter, exact for any ratio)."""
    if images.shape[-1] == resolution:
        return images
    out = np.empty((len(images), resolution, resolution), np.uint8)
    for i, image in enumerate(images):
        out[i] = np.asarray(
            Image.fromarray(image, "L").resize((resolution, resolution), Image.Resampling.BOX)
        )
    return out


def png_bytes(image: np.ndarray) -> bytes:
    """uint8 [H, W] -> 8-bit greyscale PNG; uint8 [H, W, 3] -> 8-bit RGB PNG."""
    buf = io.BytesIO()
    mode = "RGB" if image.ndim == 3 else "L"
    Image.fromarray(image, mode).save(buf, "PNG", compress_level=PNG_COMPRESS_LEVEL, optimize=False)
    return buf.getvalue()


def uid_from(*parts: str) -> str:
    """A DICOM UID under the 2.25 root (an integer made from a hash): unique per (model, job, image) and the
    same each time the same image is written."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return "2.25." + str(int.from_bytes(digest[:16], "big"))


def _dicom_meta(sop_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = "2.25.87245931052318733096367329424364624451"
    meta.ImplementationVersionName = "THORAX_0_1"
    return meta


def _dicom_job_elements(ds: Dataset, *, model: str, model_sha: str, spec_sha: str) -> None:
    """The elements that are the same for every image of a job."""
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.StudyDate = ""
    ds.StudyTime = ""
    ds.AccessionNumber = ""
    ds.Modality = "OT"
    ds.ConversionType = "SYN"
    ds.Manufacturer = "Thorax"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "Synthetic chest radiographs"
    ds.SeriesDescription = f"Thorax generator {model}"
    ds.ManufacturerModelName = model[:64]
    ds.PatientName = "Synthetic^Image"
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "synthetic image: generated, never acquired from a patient"
    ds.BodyPartExamined = "CHEST"
    ds.StudyInstanceUID = uid_from(model_sha, spec_sha, "study")
    ds.SeriesInstanceUID = uid_from(model_sha, spec_sha, "series")
    ds.StudyID = ""
    ds.SeriesNumber = 1
    ds.PatientOrientation = ""
    ds.BurnedInAnnotation = "NO"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.LossyImageCompression = "00"


def _dicom_image_elements(
    ds: Dataset, image: np.ndarray, *, model_sha: str, spec_sha: str, index: int, labels: dict[str, float]
) -> str:
    """The elements of one image; returns its SOP Instance UID."""
    sop_uid = uid_from(model_sha, spec_sha, str(index), "instance")
    ds.SOPInstanceUID = sop_uid
    ds.PatientID = f"SYN{index:09d}"
    ds.InstanceNumber = index + 1
    positives = [name for name, value in labels.items() if value >= 0.5] or ["No_Finding"]
    ds.ImageComments = "labels: " + ", ".join(f"{name}={value:g}" for name, value in labels.items())
    ds.DerivationDescription = "synthesized by a conditional PGGAN; findings: " + ", ".join(positives)
    ds.Rows, ds.Columns = image.shape
    ds.add_new(PIXEL_DATA, "OB", np.ascontiguousarray(image).tobytes() + (b"\0" if image.size % 2 else b""))
    return sop_uid


PIXEL_DATA = 0x7FE00010
IMAGE_TAGS = frozenset(  # the elements _dicom_image_elements sets
    Tag(keyword) for keyword in ("SOPInstanceUID", "PatientID", "InstanceNumber", "ImageComments",
                                 "DerivationDescription", "Rows", "Columns", "PixelData")
)  # fmt: skip


def dicom_bytes(
    image: np.ndarray, *, model: str, model_sha: str, spec_sha: str, index: int, labels: dict[str, float]
) -> bytes:
    """uint8 [H, W] -> a DICOM Secondary Capture (Conversion Type SYN) that records its labels, written
    by pydicom. `DicomEncoder` writes the same bytes faster for the many images of one job."""
    ds = Dataset()
    _dicom_job_elements(ds, model=model, model_sha=model_sha, spec_sha=spec_sha)
    sop_uid = _dicom_image_elements(
        ds, image, model_sha=model_sha, spec_sha=spec_sha, index=index, labels=labels
    )
    ds.file_meta = _dicom_meta(sop_uid)
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def _element_bytes(element: DataElement) -> bytes:
    """One element in Explicit VR Little Endian, as pydicom writes it."""
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    write_data_element(out, element)
    return out.getvalue()


class DicomEncoder:
    """`dicom_bytes` for the images of one job, byte for byte, about ten times faster: the elements that
    every image shares are encoded once, and only the image's own are encoded per image. (pydicom
    spends most of a small image's time building and writing the ~40 shared elements.)"""

    def __init__(self, *, model: str, model_sha: str, spec_sha: str) -> None:
        self.model_sha, self.spec_sha = model_sha, spec_sha
        shared = Dataset()
        _dicom_job_elements(shared, model=model, model_sha=model_sha, spec_sha=spec_sha)
        self.shared = [(element.tag, _element_bytes(element)) for element in shared]
        meta = _dicom_meta(uid_from(model_sha, spec_sha, "template"))
        write_file_meta_info(DicomBytesIO(), meta, enforce_standard=True)  # completes the meta, as dcmwrite
        self.meta = [(e.tag, _element_bytes(e)) for e in meta if e.tag not in (GROUP_LENGTH, MEDIA_SOP_UID)]

    def __call__(self, image: np.ndarray, *, index: int, labels: dict[str, float]) -> bytes:
        own = Dataset()
        sop_uid = _dicom_image_elements(
            own, image, model_sha=self.model_sha, spec_sha=self.spec_sha, index=index, labels=labels
        )
        meta = sorted(
            [*self.meta, (MEDIA_SOP_UID, _element_bytes(DataElement(MEDIA_SOP_UID, "UI", sop_uid)))]
        )
        meta_bytes = b"".join(data for _, data in meta)
        length = _element_bytes(DataElement(GROUP_LENGTH, "UL", len(meta_bytes)))
        elements = sorted([*self.shared, *((e.tag, _element_bytes(e)) for e in own)])
        return b"\0" * 128 + b"DICM" + length + meta_bytes + b"".join(data for _, data in elements)


GROUP_LENGTH, MEDIA_SOP_UID = 0x00020000, 0x00020003


def grid_png(images: np.ndarray) -> bytes:
    """uint8 [N, H, W] -> one PNG with the images in a near-square grid (1 px gaps)."""
    n, h, w = images.shape
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    canvas = np.zeros((rows * (h + 1) - 1, cols * (w + 1) - 1), np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        canvas[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = image
    return png_bytes(canvas)
