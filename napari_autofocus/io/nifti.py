"""NIfTI volumes with their geometry, in the axis order napari shows best.

nibabel gives voxel arrays in the file's own axis order (often x, y, z in RAS or LPS). napari
draws axis 0 as the slider, axis 1 as rows (top to bottom) and axis 2 as columns. We reorient
every volume to (S, P, L): slices go up, anterior is at the top of the screen and the
patient's right is on the screen's left (the radiological convention). Volumes stored in
different orientations then line up, and :func:`to_source_orientation` undoes the reorientation
exactly, so a written file gets back the source affine and header.

World coordinates in napari are millimetres along (S, P, L), i.e. (z, -y, -x) in RAS.
No torch, no Qt: the reader and writer use this module directly.
"""

from __future__ import annotations

import functools
import gzip
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.orientations import (
    apply_orientation,
    axcodes2ornt,
    inv_ornt_aff,
    io_orientation,
    ornt_transform,
)
from nibabel.spatialimages import HeaderDataError

from napari_autofocus.errors import NiftiError
from napari_autofocus.io.atomic import atomic_path
from napari_autofocus.io.scratch import BIG_ARRAY_BYTES, is_scratch, release, slabs

NIFTI_SUFFIXES = (".nii", ".nii.gz")
# Voxel-axis codes of the reoriented array before the final transpose to napari's (S, P, L).
_LPS_ORNT = axcodes2ornt(("L", "P", "S"))
# Layer names that mark an integer volume as a label map rather than an intensity image.
# NIfTI ``descrip`` of generated phantoms: the predictor warns when a phantom model meets anything else.
PHANTOM_MARK = "napari-autofocus synthetic phantom"
_LABEL_HINTS = ("label", "seg", "mask", "gt", "truth", "annot")


def is_nifti_path(path: str | os.PathLike) -> bool:
    name = str(path).lower()
    return name.endswith(NIFTI_SUFFIXES)


def strip_nifti_suffix(path: str | os.PathLike) -> str:
    name = Path(path).name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


@dataclass
class NiftiGeometry:
    """Everything needed to show a volume in napari and to write it back in its source geometry."""

    source_affine: np.ndarray  # 4x4 voxel -> RAS mm of the file as stored
    source_shape: tuple[int, ...]  # spatial shape of the file as stored
    header: nib.Nifti1Header | nib.Nifti2Header | None = None
    path: str | None = None

    @property
    def to_display(self) -> np.ndarray:
        """Orientation transform from the source voxel axes to (L, P, S)."""
        return ornt_transform(io_orientation(self.source_affine), _LPS_ORNT)

    @property
    def display_affine(self) -> np.ndarray:
        """voxel (L, P, S order, before the transpose) -> RAS mm."""
        return self.source_affine @ inv_ornt_aff(self.to_display, self.source_shape[:3])

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along napari's axes (S, P, L)."""
        zooms = np.sqrt((self.display_affine[:3, :3] ** 2).sum(axis=0))
        return tuple(float(z) for z in zooms[::-1])

    @property
    def origin(self) -> tuple[float, float, float]:
        """World position (mm, napari axes S, P, L) of the first voxel."""
        x, y, z = self.display_affine[:3, 3]
        return (float(z), float(-y), float(-x))

    @property
    def display_shape(self) -> tuple[int, int, int]:
        """Shape of the volume in napari's (S, P, L) order."""
        axes = self.to_display[:, 0].astype(int)  # source axis i goes to display axis axes[i]
        lps = [0, 0, 0]
        for source_axis, display_axis in enumerate(axes):
            lps[display_axis] = self.source_shape[source_axis]
        return (lps[2], lps[1], lps[0])

    @property
    def oblique(self) -> bool:
        """Whether the voxel axes are rotated against the world's (napari shows them axis-aligned)."""
        return is_oblique(self.source_affine)

    @property
    def description(self) -> str:
        """The header's free-text ``descrip`` field ("" when there is none)."""
        try:
            raw = self.header["descrip"] if self.header is not None else b""
            return bytes(np.asarray(raw).item()).decode("utf-8", "replace").strip("\x00 ")
        except (KeyError, ValueError, TypeError):
            return ""

    @property
    def source_axcodes(self) -> tuple[str, str, str]:
        return nib.aff2axcodes(self.source_affine)

    def layer_kwargs(self) -> dict:
        """scale/translate/metadata for a napari layer that shows a volume of this geometry."""
        return {
            "scale": self.spacing,
            "translate": self.origin,
            "metadata": {"nifti": self},
        }


@dataclass
class NiftiVolume:
    """A volume in napari order: (S, P, L) or (C, S, P, L), plus its geometry."""

    data: np.ndarray
    geometry: NiftiGeometry
    is_label: bool = False
    channel_names: list[str] = field(default_factory=list)

    @property
    def channels(self) -> list[np.ndarray]:
        return [self.data] if self.data.ndim == 3 else list(self.data)


def to_display_orientation(array: np.ndarray, geometry: NiftiGeometry) -> np.ndarray:
    """Source-ordered (X, Y, Z[, C]) array -> napari-ordered (S, P, L) or (C, S, P, L)."""
    reoriented = apply_orientation(array, geometry.to_display)
    if reoriented.ndim == 3:
        out = np.ascontiguousarray(reoriented.transpose(2, 1, 0))
    else:
        out = np.ascontiguousarray(np.moveaxis(reoriented, 3, 0).transpose(0, 3, 2, 1))
    # numpy calls a flipped view contiguous when an axis has one voxel: its strides stay negative
    return out.copy() if any(s < 0 for s in out.strides) else out


def to_source_orientation(array: np.ndarray, geometry: NiftiGeometry) -> np.ndarray:
    """Inverse of :func:`to_display_orientation` for a 3D (S, P, L) array."""
    if array.ndim != 3:
        raise NiftiError(f"expected a 3D array to write, got shape {array.shape}")
    return np.ascontiguousarray(source_view(array, geometry))


def source_view(array: np.ndarray, geometry: NiftiGeometry) -> np.ndarray:
    """A (S, P, L) array seen in the source file's voxel order: a view, nothing is copied."""
    lps = array.transpose(2, 1, 0)
    back = ornt_transform(_LPS_ORNT, io_orientation(geometry.source_affine))
    return apply_orientation(lps, back)


def check_nifti_file(path: str | os.PathLike) -> None:
    """Raise a NiftiError that says what is wrong when ``path`` is not a readable NIfTI file."""
    path = Path(path)
    if not path.exists():
        raise NiftiError(f"{path}: no such file")
    if path.is_dir():
        raise NiftiError(f"{path}: is a folder, expected a .nii or .nii.gz file")
    try:
        if path.name.lower().endswith(".gz"):
            with gzip.open(path, "rb") as fh:
                head = fh.read(348)
        else:
            with open(path, "rb") as fh:
                head = fh.read(348)
    except (OSError, EOFError, zlib.error) as exc:
        raise NiftiError(
            f"{path}: cannot decompress ({exc}); expected a gzip-compressed NIfTI file. "
            "The file is probably truncated or damaged."
        ) from None
    if len(head) < 348:
        raise NiftiError(f"{path}: only {len(head)} bytes of header; a NIfTI header has 348 or 540 bytes")
    sizeof_hdr_le = int.from_bytes(head[:4], "little")
    sizeof_hdr_be = int.from_bytes(head[:4], "big")
    if {sizeof_hdr_le, sizeof_hdr_be}.isdisjoint({348, 540}):
        raise NiftiError(f"{path}: not a NIfTI file (header size field is not 348 or 540)")
    order = "little" if sizeof_hdr_le in (348, 540) else "big"
    at = 70 if int.from_bytes(head[:4], order) == 348 else 12  # NIfTI-1 / NIfTI-2 datatype field
    check_datatype(path, int.from_bytes(head[at : at + 2], order, signed=True))


def check_datatype(path: Path, code: int) -> None:
    """Refuse voxel types that are not real numbers (nibabel would fail or drop a part of them)."""
    if code not in SUPPORTED_DATATYPES:
        name = OTHER_DATATYPES.get(code, "an unknown code")
        raise NiftiError(
            f"{path}: datatype {code} ({name}) is not supported; expected real-valued voxels: "
            + ", ".join(SUPPORTED_DATATYPES.values())
        )


# NIfTI datatype codes of real-valued voxels; the rest (binary, complex, RGB, float128) are refused.
SUPPORTED_DATATYPES = {2: "uint8", 4: "int16", 8: "int32", 16: "float32", 64: "float64", 256: "int8",
                       512: "uint16", 768: "uint32", 1024: "int64", 1280: "uint64"}  # fmt: skip
OTHER_DATATYPES = {1: "binary (1 bit)", 32: "complex64", 128: "RGB24", 1536: "float128", 1792: "complex128",
                   2048: "complex256", 2304: "RGBA32"}  # fmt: skip
MAX_VOXELS = 2**31  # 8 GiB as float32: far above any scan, and a bound before anything is allocated
DEFLATE_MAX_RATIO = 1032  # deflate cannot compress better than this: a gzip file holds at most that much
VOXEL_SIZE_RANGE_MM = (1e-6, 1e6)


def open_image(path: str | os.PathLike):
    """The nibabel image of a NIfTI file whose header is usable, before any voxel is read.

    One place checks what a header can get wrong (datatype, dimensions against the file's size,
    affine, scaling) and says it as a :class:`NiftiError`, for the reader, ``predict``, ``train``
    and ``evaluate`` alike.
    """
    path = Path(path)
    check_nifti_file(path)
    try:
        img = nib.load(str(path), keep_file_open=True)
    except (OSError, EOFError, zlib.error, ImageFileError) as exc:
        raise NiftiError(
            f"{path}: cannot read the header ({exc}); the file is truncated or damaged"
        ) from None
    except (ValueError, TypeError, KeyError, OverflowError, np.linalg.LinAlgError, HeaderDataError) as exc:
        raise NiftiError(f"{path}: the header is not usable ({exc})") from None
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise NiftiError(f"{path}: {type(img).__name__} is not a NIfTI image")
    check_header(path, img)
    return img


def check_header(path: Path, img) -> None:
    """Datatype, dimensions, affine and scaling of a loaded header, each with its own message."""
    header = img.header
    code = int(header["datatype"])  # a supported code: check_nifti_file refused the others
    shape = tuple(int(n) for n in img.shape)
    if not 3 <= len(shape) <= 5 or min(shape) < 1:
        raise NiftiError(f"{path}: expected a 3D volume or a 4D multi-channel volume, got shape {shape}")
    voxels = 1
    for n in shape:
        voxels *= n
    if voxels > MAX_VOXELS:
        raise NiftiError(
            f"{path}: the header says {'x'.join(map(str, shape))} = {voxels:.3g} voxels; at most "
            f"{MAX_VOXELS:.3g} are read (8 GiB as float32)"
        )
    needed = int(header.get_data_offset()) + voxels * np.dtype(SUPPORTED_DATATYPES[code]).itemsize
    size = path.stat().st_size
    holds = size * DEFLATE_MAX_RATIO if path.name.lower().endswith(".gz") else size
    if needed > holds:
        raise NiftiError(
            f"{path}: the header says {'x'.join(map(str, shape))} voxels ({needed / 2**20:.1f} MiB), but a "
            f"{size}-byte file can hold at most {holds / 2**20:.1f} MiB; the file is truncated or its header "
            "is wrong"
        )
    affine = np.asarray(img.affine, dtype=float)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise NiftiError(f"{path}: the affine (sform/qform) holds NaN or infinite values")
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    low, high = VOXEL_SIZE_RANGE_MM
    if not ((zooms >= low) & (zooms <= high)).all() or abs(np.linalg.det(affine[:3, :3])) < low**3:
        raise NiftiError(
            f"{path}: the affine (sform/qform) gives voxel sizes {', '.join(f'{z:.3g}' for z in zooms)} mm "
            f"(or collapses an axis); expected voxel sizes between {low:g} and {high:g} mm"
        )
    slope, inter = (float(np.asarray(header[key]).item()) for key in ("scl_slope", "scl_inter"))
    if np.isfinite(slope) and slope != 0 and not np.isfinite(inter):
        raise NiftiError(
            f"{path}: the header's intensity offset scl_inter is {inter}; expected a finite number"
        )
    if np.isinf(slope):
        raise NiftiError(
            f"{path}: the header's intensity scale scl_slope is {slope}; expected a finite number"
        )


def load_nifti(path: str | os.PathLike) -> NiftiVolume:
    """Read a 3D or 4D (multi-channel, channel last) NIfTI file into napari order.

    Raises NiftiError with the file name and the problem for anything that is not a readable
    3D/4D NIfTI volume; never returns partial data.
    """
    path = Path(path)
    img = open_image(path)
    try:
        if _read_by_slabs(img):  # a big image: straight into display order, one slab at a time
            return _load_big_image(path, img)
        raw = np.asanyarray(img.dataobj)
    except NiftiError:
        raise
    except (
        OSError,
        EOFError,
        zlib.error,
        ValueError,
        HeaderDataError,
        nib.filebasedimages.ImageFileError,
    ) as exc:
        raise NiftiError(
            f"{path}: cannot read the voxel data ({exc}); the file is truncated or damaged"
        ) from None

    if raw.ndim == 5 and raw.shape[3] == 1:  # NIfTI vector images store channels in the 5th dim
        raw = raw[:, :, :, 0, :]
    if raw.ndim == 4 and raw.shape[3] == 1:
        raw = raw[..., 0]
    if raw.ndim not in (3, 4):
        raise NiftiError(f"{path}: expected a 3D volume or a 4D multi-channel volume, got shape {raw.shape}")
    geometry = NiftiGeometry(
        source_affine=np.asarray(img.affine, dtype=float),
        source_shape=tuple(int(s) for s in raw.shape[:3]),
        header=img.header.copy(),
        path=str(path),
    )
    is_label = _looks_like_labels(path, img, raw)
    if not is_label and not np.issubdtype(raw.dtype, np.floating) or raw.dtype == np.float64:
        raw = raw.astype(np.float32)
    data = to_display_orientation(raw, geometry)
    return NiftiVolume(
        data=data, geometry=geometry, is_label=is_label, channel_names=_channel_names(path, data)
    )


def _read_by_slabs(img) -> bool:
    """Big intensity images (float data, or 4D) are read a slab at a time (no second full copy)."""
    shape, dtype = img.shape, img.get_data_dtype()
    big = int(np.prod(shape)) * 4 > BIG_ARRAY_BYTES
    return big and len(shape) in (3, 4) and (len(shape) == 4 or dtype.kind == "f")


def _load_big_image(path: Path, img) -> NiftiVolume:
    """The image as float32 in napari order, filled through a source-ordered view of the result
    a few source planes at a time: memory peaks at the result plus one slab, not twice the image."""
    shape = img.shape
    geometry = NiftiGeometry(
        source_affine=np.asarray(img.affine, dtype=float),
        source_shape=tuple(int(s) for s in shape[:3]),
        header=img.header.copy(),
        path=str(path),
    )
    channels = shape[3] if len(shape) == 4 else 1
    display = np.empty((channels, *geometry.display_shape), dtype=np.float32)
    proxy = img.dataobj
    try:
        for c in range(channels):  # the file's order: channel, then source planes
            target = source_view(display[c], geometry)
            for planes in slabs(shape[2]):
                index = (slice(None), slice(None), planes) + ((c,) if len(shape) == 4 else ())
                target[:, :, planes] = np.asanyarray(proxy[index])
    except (OSError, EOFError, zlib.error, ValueError, HeaderDataError) as exc:
        raise NiftiError(
            f"{path}: cannot read the voxel data ({exc}); the file is truncated or damaged"
        ) from None
    data = display if len(shape) == 4 else display[0]
    return NiftiVolume(data=data, geometry=geometry, is_label=False, channel_names=_channel_names(path, data))


LABEL_MAX_VALUES = 32  # at most this many distinct values: a label map whatever its name
NAMED_LABEL_MAX_VALUES = 1000  # ... or this many when its name or folder says it holds labels


def _looks_like_labels(path: Path, img, raw: np.ndarray) -> bool:
    """A 3D volume of few distinct non-negative integers (by content; the name only decides the
    ambiguous middle): an int16 T1 named 'T1_brain_masked' stays an image, a 0/1 mask named
    'brain' is a label map."""
    if raw.ndim != 3 or not np.issubdtype(raw.dtype, np.integer) or raw.size == 0:
        return False
    if int(raw.min()) < 0:
        return False
    values = distinct_values(raw, NAMED_LABEL_MAX_VALUES + 1)
    if values <= LABEL_MAX_VALUES:
        return True
    name = path.name.lower()
    named = path.parent.name.lower().startswith("labels") or any(hint in name for hint in _LABEL_HINTS)
    return named and values <= NAMED_LABEL_MAX_VALUES


def distinct_values(data: np.ndarray, stop_at: int) -> int:
    """How many distinct values an integer array holds, counting at most to ``stop_at``."""
    low, high = int(data.min()), int(data.max())
    if high - low < 1 << 16:
        return min(int(np.count_nonzero(np.bincount((data - low).ravel().astype(np.int64)))), stop_at)
    return min(len(np.unique(data)), stop_at)


def is_oblique(affine: np.ndarray, tolerance: float = 1e-3) -> bool:
    """Whether the voxel axes are rotated against the world axes (not a permutation with flips)."""
    columns = np.asarray(affine, dtype=float)[:3, :3]
    unit = columns / np.maximum(np.linalg.norm(columns, axis=0), 1e-12)
    return bool(np.abs(np.abs(unit).max(axis=0) - 1).max() > tolerance)


def _channel_names(path: Path, data: np.ndarray) -> list[str]:
    """Channel names from a Decathlon/nnU-Net ``dataset.json`` next to the images folder, if any."""
    from napari_autofocus.io.datasets import channel_names_for

    n = data.shape[0] if data.ndim == 4 else 1
    names = channel_names_for(path, n)
    return names or ([f"channel {i}" for i in range(n)] if n > 1 else [])


def geometry_from_layer(scale, translate, shape) -> NiftiGeometry:
    """Geometry for a layer that was not read from a NIfTI file: built from napari scale/translate."""
    s, p, l = (float(v) for v in scale[-3:])
    ts, tp, tl = (float(v) for v in translate[-3:])
    # source axes are written as (L, P, S) -> RAS affine with negative x and y.
    affine = np.array(
        [[-l, 0, 0, -tl], [0, -p, 0, -tp], [0, 0, s, ts], [0, 0, 0, 1]],
        dtype=float,
    )
    return NiftiGeometry(source_affine=affine, source_shape=tuple(int(v) for v in shape[::-1]))


def save_nifti(
    path: str | os.PathLike,
    data: np.ndarray,
    geometry: NiftiGeometry,
    *,
    is_label: bool = False,
    overwrite: bool = True,
) -> str:
    """Write a napari-ordered 3D (or channel-first 4D) array in the source geometry, atomically.

    The affine, orientation and header of the source come back; a 4D array becomes a 4D file with
    channels last (the Decathlon convention). The file appears complete or not at all.
    """
    path = Path(path)
    if not is_nifti_path(path):
        path = path.with_name(path.name + ".nii.gz")
    if path.exists() and not overwrite:
        raise NiftiError(f"{path} exists; refusing to overwrite it")
    data = np.asarray(data)
    expected = tuple(geometry.source_shape[:3])
    channels = list(data) if data.ndim == 4 else [data]  # (C, S, P, L) -> a 4D file, channels last
    views = [source_view(channel, geometry) for channel in channels]
    if any(v.ndim != 3 for v in views) or views[0].shape != expected:
        raise NiftiError(
            f"cannot write {path.name}: the array has shape {data.shape} but its geometry is for a "
            f"{expected} volume"
        )
    if is_label:
        low, high = _min_max(data)
        dtype = np.dtype(np.uint8 if high < 256 and low >= 0 else np.int16)
    elif data.dtype in (np.float64, np.float16):
        dtype = np.dtype(np.float32)
    else:
        dtype = data.dtype
    shape = (*expected, len(channels)) if data.ndim == 4 else expected
    header = geometry.header.copy() if geometry.header is not None else None
    streamed = data.nbytes > BIG_ARRAY_BYTES or is_scratch(data)
    if streamed:  # a stand-in array for the header; the voxels are written slab by slab below
        img = nib.Nifti1Image(np.zeros((1,) * len(shape), dtype), geometry.source_affine, header=header)
    else:
        source = np.stack(views, axis=-1) if data.ndim == 4 else views[0]
        img = nib.Nifti1Image(source.astype(dtype, copy=False), geometry.source_affine, header=header)
    img.set_data_dtype(dtype)
    if header is not None:
        img.header.set_slope_inter(1.0, 0.0)
        img.set_qform(geometry.source_affine, code=int(header["qform_code"]) or 1)
        img.set_sform(geometry.source_affine, code=int(header["sform_code"]) or 1)
    with atomic_path(path, suffix=".nii.gz" if path.name.endswith(".gz") else ".nii") as tmp:
        if streamed:
            img.header.set_data_shape(shape)
            _write_streamed(tmp, img.header, views, dtype, data)
        else:
            nib.save(img, tmp)
    return str(path)


def _min_max(data: np.ndarray) -> tuple[float, float]:
    low, high = 0.0, 0.0
    for planes in slabs(data.shape[-3]):
        chunk = data[..., planes, :, :]
        if chunk.size:
            low, high = min(low, float(chunk.min())), max(high, float(chunk.max()))
        release(data)
    return low, high


def _write_streamed(path: Path, header, views: list[np.ndarray], dtype, data: np.ndarray) -> None:
    """The header, then the voxels in the file's (Fortran) order, a few source planes at a time:
    memory stays at one slab whatever the volume's size (scratch arrays hand their pages back)."""
    header["vox_offset"] = 0  # nibabel sets it for a single file, after the extensions
    opener = functools.partial(gzip.open, compresslevel=1) if str(path).endswith(".gz") else open
    with opener(path, "wb") as fh:
        header.write_to(fh)
        offset = int(header["vox_offset"])
        written = 348 + 4 + int(header.extensions.get_sizeondisk())
        fh.write(b"\0" * int(max(offset - written, 0)))
        for view in views:  # channels are the slowest axis of the file
            for planes in slabs(view.shape[2]):
                fh.write(view[:, :, planes].astype(dtype).tobytes(order="F"))
                release(data)


def load_multichannel(paths: list[str | os.PathLike]) -> tuple[np.ndarray, NiftiGeometry]:
    """One 4D file, or one 3D file per channel, as a (C, S, P, L) float32 array plus geometry.

    Per-channel files must share shape and affine (checked, with the offending file named).
    """
    if not paths:
        raise NiftiError("no input image given")
    volumes = [load_nifti(p) for p in paths]
    if len(volumes) == 1:
        volume = volumes[0]
        data = volume.data if volume.data.ndim == 4 else volume.data[None]
        return data.astype(np.float32, copy=False), volume.geometry
    first = volumes[0]
    for path, volume in zip(paths[1:], volumes[1:], strict=True):
        if volume.data.ndim != 3:
            raise NiftiError(f"{path}: expected one 3D file per channel, got a {volume.data.ndim}D volume")
        if volume.data.shape != first.data.shape:
            raise NiftiError(
                f"{path}: shape {volume.data.shape} differs from {paths[0]} ({first.data.shape})"
            )
        if not np.allclose(volume.geometry.source_affine, first.geometry.source_affine, atol=1e-3):
            raise NiftiError(f"{path}: its affine differs from {paths[0]}'s; the channels are not aligned")
    data = np.stack([v.data for v in volumes]).astype(np.float32, copy=False)
    return data, first.geometry
