"""Dataset folders: Decathlon (MSD) and nnU-Net v2 raw layouts, listed and checked before training.

A :class:`Dataset` knows its cases (image file(s) + label file), channel names, class names and
evaluation regions. :func:`check_geometry` reads only NIfTI headers and collects *every* problem
(missing file, shape or affine mismatch between channels and label, wrong channel count) into one
:class:`DatasetError`, so a user fixes a broken dataset in one pass instead of one error per run.
Arrays are read through :func:`napari_autofocus.io.nifti.load_nifti`, i.e. in the axis order the
napari plugin uses, so a trained model sees volumes the way the plugin will feed them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_autofocus.errors import DatasetError, NiftiError
from napari_autofocus.io.datasets import read_dataset_json
from napari_autofocus.io.nifti import NiftiGeometry, load_nifti, open_image
from napari_autofocus.nets.card import MAX_CLASSES

MAX_LABEL_VALUE = MAX_CLASSES - 1  # the network has one output per value up to the largest
AFFINE_TOLERANCE = (
    1e-3  # mm / direction-cosine units; headers written by different tools differ in float noise
)


@dataclass
class Case:
    """One case: its name, image file(s) (one 4D file or one 3D file per channel) and label file."""

    name: str
    images: list[Path]
    label: Path | None


@dataclass
class Dataset:
    root: Path
    layout: str  # "msd" or "nnunet"
    name: str
    modalities: list[str]
    class_names: dict[int, str]
    regions: dict[str, list[int]] = field(default_factory=dict)
    cases: list[Case] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return max(self.class_names) + 1

    @property
    def label_values(self) -> set[int]:
        return set(self.class_names)

    def case(self, name: str) -> Case:
        for case in self.cases:
            if case.name == name:
                return case
        raise DatasetError(f"{self.root}: no case named {name!r}")


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise DatasetError(
            f"{path.parent}: no dataset.json; expected a Decathlon or nnU-Net v2 raw dataset folder"
        )
    return read_dataset_json(path)


def _labels(meta: dict, path: Path) -> tuple[dict[int, str], dict[str, list[int]]]:
    """Class names (value -> name) and regions from ``labels``, given as name->value or value->name."""
    raw = meta.get("labels")
    if not isinstance(raw, dict) or not raw:
        raise DatasetError(
            f"{path}: 'labels' must be a non-empty object mapping names to values or values to names"
        )
    classes: dict[int, str] = {}
    regions: dict[str, list[int]] = {}
    for key, value in raw.items():
        if isinstance(value, list):  # nnU-Net region: name -> [values]
            regions[str(key)] = [_label_value(v, path, key) for v in value]
        elif str(key).lstrip("-").isdigit():
            classes[_label_value(key, path, key)] = str(value)
        elif (isinstance(value, int) and not isinstance(value, bool)) or str(value).lstrip("-").isdigit():
            classes[_label_value(value, path, key)] = str(key)
        else:
            raise DatasetError(
                f"{path}: label entry {key!r}: {value!r} is neither 'name: value' nor 'value: name'"
            )
    if 0 not in classes:
        classes[0] = "background"
    for value in range(max(classes) + 1):
        classes.setdefault(value, f"class {value}")
    extra = meta.get("regions")
    if isinstance(extra, dict):
        for key, values in extra.items():
            if not isinstance(values, list):
                raise DatasetError(f"{path}: region {key!r} must be a list of label values, got {values!r}")
            regions[str(key)] = [_label_value(v, path, key) for v in values]
    return dict(sorted(classes.items())), regions


def _label_value(value, path: Path, entry) -> int:
    """One label value, checked before anything is sized by it (the network's outputs, metrics)."""
    text = str(value).strip()
    if isinstance(value, bool) or not text.lstrip("-").isdigit():
        raise DatasetError(f"{path}: label entry {entry!r}: {value!r} is not an integer label value")
    if len(text) > 12 or not 0 <= int(text) <= MAX_LABEL_VALUE:
        raise DatasetError(
            f"{path}: label entry {entry!r}: value {text[:20]} is outside 0..{MAX_LABEL_VALUE} (the network "
            "has one output per value up to the largest); renumber the labels"
        )
    return int(text)


def _resolve(root: Path, ref: str) -> Path:
    return (root / ref).resolve() if not Path(ref).is_absolute() else Path(ref)


def _case_name(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def open_dataset(root: str | Path) -> Dataset:
    """List a dataset folder; the layout is detected from dataset.json (``channel_names`` = nnU-Net v2)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such dataset folder")
    meta_path = root / "dataset.json"
    meta = _read_json(meta_path)
    class_names, regions = _labels(meta, meta_path)
    ending = str(meta.get("file_ending", ".nii.gz"))
    # nnU-Net v2 raw: channel_names and one file per channel; the Decathlon has modality + 4D files.
    per_channel = any((root / "imagesTr").glob(f"*_0000{ending}"))
    if "channel_names" in meta and (per_channel or "training" not in meta):
        layout, names = "nnunet", meta["channel_names"]
    else:
        layout, names = "msd", meta.get("modality") or meta.get("channel_names")
    if not isinstance(names, dict) or not names:
        raise DatasetError(
            f"{meta_path}: needs 'modality' (Decathlon) or 'channel_names' (nnU-Net) naming the channels"
        )
    not_numbers = [k for k in names if not str(k).strip().isdigit()]
    if not_numbers:
        raise DatasetError(
            f'{meta_path}: channel keys must be channel numbers ("0", "1", ...), got {not_numbers[:5]}'
        )
    if sorted(int(k) for k in names) != list(range(len(names))):
        raise DatasetError(f"{meta_path}: channels must be numbered 0..{len(names) - 1}, got {sorted(names)}")
    modalities = [str(names[k]) for k in sorted(names, key=int)]
    if layout == "msd":
        cases = _msd_cases(root, meta, meta_path)
    else:
        cases = _nnunet_cases(root, len(modalities), ending, meta_path)
    if not cases:
        raise DatasetError(f"{root}: dataset.json lists no training cases")
    return Dataset(root, layout, str(meta.get("name", root.name)), modalities, class_names, regions, cases)


def case_fingerprint(cases: list[Case]) -> str:
    """A digest of cases' names and file sizes: which dataset a model was trained on, by content
    rather than by its name alone (another dataset may share the name and some case names)."""
    import hashlib

    digest = hashlib.sha256()
    for case in sorted(cases, key=lambda c: c.name):
        files = [*case.images, *([case.label] if case.label else [])]
        sizes = [f.stat().st_size if f.is_file() else -1 for f in files]
        digest.update(f"{case.name}\0{sizes}\n".encode())
    return digest.hexdigest()[:32]


def _msd_cases(root: Path, meta: dict, meta_path: Path) -> list[Case]:
    training = meta.get("training")
    if not isinstance(training, list):
        raise DatasetError(f"{meta_path}: 'training' must be a list of {{'image', 'label'}} entries")
    cases = []
    for i, entry in enumerate(training):
        if not isinstance(entry, dict) or "image" not in entry:
            raise DatasetError(f"{meta_path}: training entry {i} has no 'image'")
        refs = [entry["image"], *([entry["label"]] if entry.get("label") else [])]
        if not all(isinstance(ref, str) and ref for ref in refs):
            raise DatasetError(f"{meta_path}: training entry {i}: 'image' and 'label' must be file paths")
        image = _resolve(root, entry["image"])
        if image.name.startswith(("._", ".")):  # macOS resource forks in the Decathlon tarballs
            continue
        label = _resolve(root, entry["label"]) if entry.get("label") else None
        cases.append(Case(_case_name(image), [image], label))
    refuse_duplicate_names(cases, meta_path)
    return cases


def refuse_duplicate_names(cases: list[Case], meta_path: Path) -> None:
    """Case names key outputs, splits and metrics: two images of one name would overwrite each other."""
    first: dict[str, Case] = {}
    for case in cases:
        if case.name in first:
            raise DatasetError(
                f"{meta_path}: two training entries are both named {case.name!r} "
                f"({first[case.name].images[0]} and {case.images[0]}); case names must be unique: "
                "rename one of the files"
            )
        first[case.name] = case


def _nnunet_cases(root: Path, n_channels: int, ending: str, meta_path: Path) -> list[Case]:
    images_dir = root / "imagesTr"
    if not images_dir.is_dir():
        raise DatasetError(f"{root}: no imagesTr folder")
    names = sorted(
        {p.name[: -len(ending) - 5] for p in images_dir.glob(f"*_[0-9][0-9][0-9][0-9]{ending}")} - {""}
    )
    cases = []
    for name in names:
        if name.startswith(("._", ".")):
            continue
        images = [images_dir / f"{name}_{c:04d}{ending}" for c in range(n_channels)]
        cases.append(Case(name, images, root / "labelsTr" / f"{name}{ending}"))
    return cases


def _header(path: Path) -> tuple[tuple[int, ...], np.ndarray]:
    img = open_image(path)
    return tuple(int(s) for s in img.shape), np.asarray(img.affine, dtype=float)


def check_geometry(dataset: Dataset, cases: list[Case] | None = None, need_labels: bool = True) -> None:
    """Raise one DatasetError listing every missing file and every shape/affine/channel mismatch."""
    problems = []
    n_channels = len(dataset.modalities)
    for case in cases if cases is not None else dataset.cases:
        files = list(case.images) + ([case.label] if case.label is not None else [])
        if need_labels and case.label is None:
            problems.append(f"case {case.name}: no label file listed")
        headers = {}
        for path in files:
            if not path.is_file():
                problems.append(f"case {case.name}: missing file {path}")
                continue
            try:
                headers[path] = _header(path)
            except NiftiError as exc:
                problems.append(f"case {case.name}: {exc}")
        if case.images[0] in headers:
            shape, affine = headers[case.images[0]]
            if len(case.images) == 1 and n_channels > 1:
                got = shape[3] if len(shape) == 4 else 1
                if got != n_channels:
                    problems.append(
                        f"case {case.name}: {case.images[0].name} has {got} channel(s), "
                        f"dataset.json declares {n_channels}"
                    )
            for path, (other_shape, other_affine) in headers.items():
                if path == case.images[0]:
                    continue
                if tuple(other_shape[:3]) != tuple(shape[:3]):
                    problems.append(
                        f"case {case.name}: {path.name} has shape {other_shape[:3]}, "
                        f"{case.images[0].name} has {shape[:3]}"
                    )
                elif not np.allclose(other_affine, affine, atol=AFFINE_TOLERANCE):
                    problems.append(
                        f"case {case.name}: {path.name} has a different affine (voxel-to-world "
                        f"geometry) than {case.images[0].name}"
                    )
    if problems:
        raise DatasetError(f"{dataset.root}: {len(problems)} problem(s):\n  " + "\n  ".join(problems))


@dataclass
class RawCase:
    """Arrays of one case in napari axis order, with the geometry of its first image file."""

    name: str
    image: np.ndarray  # (C, D, H, W) float32
    label: np.ndarray | None  # (D, H, W) integer
    geometry: NiftiGeometry

    @property
    def spacing(self) -> tuple[float, float, float]:
        return self.geometry.spacing


def read_case(case: Case, n_channels: int) -> RawCase:
    """Read a case's image(s) and label; NIfTI errors become DatasetErrors that name the case."""
    try:
        volumes = [load_nifti(p) for p in case.images]
        label = load_nifti(case.label) if case.label is not None else None
    except NiftiError as exc:
        raise DatasetError(f"case {case.name}: {exc}") from None
    arrays = [v.data[None] if v.data.ndim == 3 else v.data for v in volumes]
    image = np.concatenate(arrays).astype(np.float32, copy=False)
    if image.shape[0] != n_channels:
        raise DatasetError(
            f"case {case.name}: {image.shape[0]} channel(s), dataset.json declares {n_channels}"
        )
    labels = None
    if label is not None:
        data = label.data
        if data.ndim != 3:
            raise DatasetError(
                f"case {case.name}: {case.label.name} has shape {data.shape}; a label map is one 3D volume"
            )
        if not np.allclose(data, np.round(data)):
            raise DatasetError(f"case {case.name}: {case.label.name} holds non-integer values")
        labels = np.round(data).astype(np.int16)
    return RawCase(case.name, image, labels, volumes[0].geometry)


def check_label_values(name: str, label_path: Path, labels: np.ndarray, allowed: set[int]) -> str | None:
    """A problem description when ``labels`` holds values outside ``allowed``, else None."""
    values = set(np.unique(labels).tolist())
    extra = sorted(values - allowed)
    if extra:
        declared = sorted(allowed)
        return (
            f"case {name}: {label_path.name} holds label value(s) {extra} "
            f"not declared in dataset.json {declared}"
        )
    return None
